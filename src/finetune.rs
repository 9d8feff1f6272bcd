//! `finetune` and `evaluate` from start to finish: dataset → embeddings (cached) → head → held-out
//! metrics → head file and reports, written atomically into the output directory.

mod assess;
mod markdown;
pub use assess::{assess, markdown as assessment_markdown, plots, Assessment, NoveltySummary};
pub use markdown::plot_links;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde::Serialize;

use crate::augment::AugmentParams;
use crate::backbone::Backbone;
use crate::classifier::{backbone_ref, check_class_name, ClassNameError, UNKNOWN_LABEL};
use crate::confidence::{CalibrationReport, TemperatureChoice};
use crate::dataset::{Dataset, Duplicate, Sample, SplitFractions};
use crate::discover::{self, Skipped};
use crate::features::{self, Cache, EmbedStats, ViewSpec};
use crate::fsutil;
use crate::head::{
    EpochStats, Example, Head, Recipe, TrainConfig, TrainSummary, Trained, HEAD_FILE,
};
use crate::metrics::Evaluation;
use crate::novelty::UnknownReport;
use crate::views::Views;

/// Fewer readable images than this in a class (train + validation) is refused: nothing honest
/// can be learned or measured from it.
pub const MIN_IMAGES_PER_CLASS: usize = 2;

/// How a long job reports what it is doing (a progress bar on a terminal, nothing in a pipe).
pub trait Progress {
    fn stage(&self, _msg: &str) {}
    fn start(&self, _total: usize, _what: &str) {}
    fn advance(&self, _done: usize) {}
    fn finish(&self) {}
    fn epoch(&self, _stats: &EpochStats) {}
}

/// A [`Progress`] that shows nothing.
pub struct Quiet;
impl Progress for Quiet {}

#[derive(Debug, Clone)]
pub struct FinetuneOptions {
    pub data: PathBuf,
    pub out: PathBuf,
    pub split: SplitFractions,
    pub train: TrainConfig,
    /// Augmented views per training image (0 = augmentation off).
    pub augment: usize,
    pub augment_params: AugmentParams,
    pub threads: usize,
    pub cache_dir: Option<PathBuf>,
    /// Fixed views per image, for training and (recorded in the head) for prediction.
    pub views: Views,
    /// Share of known validation images the novelty threshold keeps.
    pub keep_rate: f32,
    /// A folder of images of none of the classes, to measure rejection on.
    pub unknown: Option<PathBuf>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Counts {
    pub train: BTreeMap<String, usize>,
    pub val: BTreeMap<String, usize>,
    pub test: BTreeMap<String, usize>,
    pub train_views: usize,
    pub unreadable: usize,
    pub ignored_files: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct Timings {
    pub load_s: f64,
    pub embed_s: f64,
    pub train_s: f64,
    pub eval_s: f64,
    pub total_s: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ModelInfo {
    pub name: String,
    pub sha256: String,
    /// The arithmetic the embeddings were made with (TFLite files only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub precision: Option<crate::models::Precision>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Unreadable {
    pub file: String,
    pub reason: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub edge_mnv2_version: String,
    pub data: String,
    pub model: ModelInfo,
    pub classes: Vec<String>,
    pub counts: Counts,
    pub split_notes: Vec<String>,
    pub seed: u64,
    pub config: TrainConfig,
    pub augment: usize,
    pub augment_params: AugmentParams,
    /// epochs_run, best_epoch, best_val_loss, stopped_early, class_weights, history.
    #[serde(flatten)]
    pub training: TrainSummary,
    /// The fixed views each image was embedded with (training and test alike).
    pub views: Vec<&'static str>,
    /// Metrics on the held-out test split; `null` when the split is empty.
    pub test: Option<Evaluation>,
    /// Temperature and expected calibration error on the test split.
    pub calibration: Option<CalibrationReport>,
    /// How the temperature was chosen on the validation split.
    pub temperature_choice: TemperatureChoice,
    pub novelty: Option<NoveltySummary>,
    /// Known test images against `--unknown` images.
    pub unknown: Option<UnknownReport>,
    /// SVG plots written beside report.md.
    pub plots: Vec<String>,
    pub embeddings: EmbeddingCounts,
    pub unreadable: Vec<Unreadable>,
    /// Folder links not followed (data set and unknown-image folder).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub skipped_links: Vec<Skipped>,
    /// Validation and test images that were byte-for-byte training images, left out of both.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub duplicates: Vec<Duplicate>,
    /// Classes with no readable validation image, and with no test image.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub classes_without_validation: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub classes_without_test: Vec<String>,
    pub timings: Timings,
}

#[derive(Debug, Clone, Serialize)]
pub struct EmbeddingCounts {
    pub computed: usize,
    pub cached: usize,
    pub cache_dir: Option<String>,
}

/// The files a run writes into `--out`, replaced together (see [`fsutil::replace_files`]).
const OUT_FILES: [&str; 3] = ["report.json", "report.md", HEAD_FILE];

/// Checks up front that results can be written, so a long run never ends in a write error.
fn prepare_out_dir(out: &Path) -> Result<()> {
    std::fs::create_dir_all(out)
        .with_context(|| format!("{}: cannot create the output directory", out.display()))?;
    // The files are staged beside `out` and swapped in: what must be writable is its parent.
    fsutil::check_replaceable(out)?;
    for name in OUT_FILES {
        let p = out.join(name);
        if p.symlink_metadata().is_ok_and(|m| m.is_dir()) {
            bail!(
                "{}: is a directory, where the run would write a file",
                p.display()
            );
        }
    }
    Ok(())
}

fn class_counts(classes: &[String], samples: &[Sample]) -> BTreeMap<String, usize> {
    let mut m: BTreeMap<String, usize> = classes.iter().map(|c| (c.clone(), 0)).collect();
    for s in samples {
        *m.get_mut(&classes[s.label]).expect("label in range") += 1;
    }
    m
}

/// One job's embedding pass: what every split's embedding shares, and what it accumulates
/// (unreadable images, cache hits).
struct Embedder<'a> {
    backbone: &'a Backbone,
    cache: Cache,
    threads: usize,
    cancel: &'a AtomicBool,
    progress: &'a dyn Progress,
    unreadable: Vec<Unreadable>,
    /// Folder links the unknown-image folder's walk did not follow.
    skipped: Vec<Skipped>,
    stats: EmbedStats,
}

impl Embedder<'_> {
    /// Embeds every image under `dir` (plain view only: novelty is scored on it).
    fn embed_unknown(&mut self, dir: &Path) -> Result<Vec<(Sample, Vec<Vec<f32>>)>> {
        let found = discover::walk(dir)
            .map_err(|e| e.error)
            .with_context(|| format!("{}: cannot read the unknown-image folder", dir.display()))?;
        warn_skipped(&found.skipped);
        self.skipped.extend(found.skipped);
        let paths = found.images;
        if paths.is_empty() {
            bail!("{}: no images in the unknown-image folder", dir.display());
        }
        let samples = paths
            .into_iter()
            .map(|path| Sample {
                rel: path.display().to_string(),
                path,
                label: 0,
            })
            .collect();
        self.embed(samples, &ViewSpec::plain(), "embedding unknown")
    }

    /// Embeds `samples` (views per `views`), setting unreadable ones aside.
    /// Returns the readable samples with their embeddings.
    fn embed(
        &mut self,
        samples: Vec<Sample>,
        views: &ViewSpec,
        what: &str,
    ) -> Result<Vec<(Sample, Vec<Vec<f32>>)>> {
        let paths: Vec<&Path> = samples.iter().map(|s| s.path.as_path()).collect();
        let progress = self.progress;
        progress.start(paths.len(), what);
        let (results, st) = features::embed_all(
            self.backbone,
            &paths,
            views,
            &self.cache,
            self.threads,
            self.cancel,
            |d| progress.advance(d),
        )?;
        progress.finish();
        self.stats.computed += st.computed;
        self.stats.cached += st.cached;
        let mut kept = Vec::with_capacity(samples.len());
        for (s, r) in samples.into_iter().zip(results) {
            match r {
                Ok(e) => kept.push((s, e.views)),
                Err(reason) => {
                    log::warn!("skipping unreadable image: {reason}");
                    self.unreadable.push(Unreadable {
                        file: s.path.display().to_string(),
                        reason,
                    });
                }
            }
        }
        Ok(kept)
    }
}

/// One warning line per folder link not followed.
fn warn_skipped(skipped: &[Skipped]) {
    for s in skipped {
        log::warn!("{s}");
    }
}

/// The classes (in class order) with no sample in `split`.
fn classes_without(classes: &[String], split: &[(Sample, Vec<Vec<f32>>)]) -> Vec<String> {
    let counts = class_counts(
        classes,
        &split.iter().map(|(s, _)| s.clone()).collect::<Vec<_>>(),
    );
    classes
        .iter()
        .filter(|c| counts[*c] == 0)
        .cloned()
        .collect()
}

/// What training reads of an embedded split: each image's class and views.
fn examples(split: &[(Sample, Vec<Vec<f32>>)]) -> Vec<Example<'_>> {
    split
        .iter()
        .map(|(s, views)| Example {
            label: s.label,
            views,
        })
        .collect()
}

pub fn finetune(
    backbone: &Backbone,
    opts: &FinetuneOptions,
    started: Instant,
    cancel: &AtomicBool,
    progress: &dyn Progress,
) -> Result<Report> {
    let load_s = started.elapsed().as_secs_f64();
    if !(opts.keep_rate > 0.0 && opts.keep_rate <= 1.0) {
        bail!(
            "--keep-rate {}: must be above 0 and at most 1",
            opts.keep_rate
        );
    }
    let ds = Dataset::open(&opts.data, opts.split)?;
    for class in &ds.classes {
        match check_class_name(class) {
            Ok(()) => {}
            Err(ClassNameError::Reserved(_)) => bail!(
                "{}: a class cannot be named '{class}': rejected images are labelled '{UNKNOWN_LABEL}'; rename the folder",
                ds.class_dir(class).display()
            ),
            // Quoted: a name with a newline or a control character would break the line.
            Err(e) => bail!(
                "{}: the class folder {class:?} {e}; rename the folder",
                ds.class_dir(class)
                    .parent()
                    .unwrap_or(&ds.root)
                    .display()
            ),
        }
    }
    warn_skipped(&ds.skipped_links);
    if !ds.duplicates.is_empty() {
        log::warn!(
            "{} validation/test image(s) are byte for byte training images: left out of evaluation (listed in report.json)",
            ds.duplicates.len()
        );
    }
    prepare_out_dir(&opts.out)?;
    for note in &ds.notes {
        progress.stage(note);
    }
    let train_views = ViewSpec {
        fixed: opts.views,
        augment: opts.augment,
        params: opts.augment_params,
        seed: opts.train.seed,
    };
    let mut embedder = Embedder {
        backbone,
        cache: Cache::new(opts.cache_dir.clone()),
        threads: opts.threads,
        cancel,
        progress,
        unreadable: Vec::new(),
        skipped: Vec::new(),
        stats: EmbedStats::default(),
    };
    let t_embed = Instant::now();
    let train = embedder.embed(ds.train.clone(), &train_views, "embedding train")?;
    let eval_views = ViewSpec::fixed(opts.views);
    let val = embedder.embed(ds.val.clone(), &eval_views, "embedding val")?;
    let test = embedder.embed(ds.test.clone(), &eval_views, "embedding test")?;
    let unknown = match &opts.unknown {
        Some(dir) => Some(embedder.embed_unknown(dir)?),
        None => None,
    };
    let Embedder {
        unreadable,
        stats,
        skipped: unknown_skipped,
        ..
    } = embedder;
    let embed_s = t_embed.elapsed().as_secs_f64();
    if !unreadable.is_empty() {
        progress.stage(&format!(
            "{} unreadable image(s) skipped (listed in report.json)",
            unreadable.len()
        ));
    }

    let classes = ds.classes.clone();
    for (label, class) in classes.iter().enumerate() {
        let n_train = train.iter().filter(|(s, _)| s.label == label).count();
        let n_val = val.iter().filter(|(s, _)| s.label == label).count();
        if n_train == 0 || n_train + n_val < MIN_IMAGES_PER_CLASS {
            bail!(
                "{}: class '{class}' has {} readable training image(s); need at least {MIN_IMAGES_PER_CLASS}",
                ds.root.join(class).display(),
                n_train + n_val
            );
        }
    }
    if val.is_empty() {
        progress.stage("no validation images: early stopping watches the training loss instead");
    }
    let classes_without_validation = classes_without(&classes, &val);
    let classes_without_test = classes_without(&classes, &test);
    for (list, what) in [
        (&classes_without_validation, "validation"),
        (&classes_without_test, "test"),
    ] {
        if !list.is_empty() {
            log::warn!(
                "class(es) with no {what} image: {} (add images, or give a {what} folder)",
                list.join(", ")
            );
        }
    }

    let train_embeddings: usize = train.iter().map(|(_, views)| views.len()).sum();
    let t_train = Instant::now();
    progress.stage(&format!(
        "training the head on {} embeddings ({} images × {} views)",
        train_embeddings,
        train.len(),
        train_views.count()
    ));
    let recipe = Recipe {
        config: opts.train.clone(),
        views: opts.views,
        keep_rate: opts.keep_rate,
    };
    let Trained {
        head,
        summary,
        temperature,
    } = Head::train(
        backbone_ref(backbone),
        classes.clone(),
        &examples(&train),
        &examples(&val),
        &recipe,
        cancel,
        |e| progress.epoch(e),
    )?;
    let train_s = t_train.elapsed().as_secs_f64();
    if let Some(why) = &temperature.not_fitted {
        log::warn!("{why}");
    }

    let t_eval = Instant::now();
    let unknown_dir = opts.unknown.as_deref().zip(unknown.as_deref());
    let assessment = (!test.is_empty()).then(|| assess(&head, &test, unknown_dir));
    if test.is_empty() {
        progress.stage("the held-out test split is empty: no test metrics");
    }
    let eval_s = t_eval.elapsed().as_secs_f64();

    let samples =
        |v: &[(Sample, Vec<Vec<f32>>)]| v.iter().map(|(s, _)| s.clone()).collect::<Vec<_>>();
    let mut report = Report {
        edge_mnv2_version: env!("CARGO_PKG_VERSION").into(),
        data: ds.root.display().to_string(),
        model: ModelInfo {
            name: backbone.name().into(),
            sha256: backbone.sha256().into(),
            precision: backbone.precision(),
        },
        counts: Counts {
            train: class_counts(&classes, &samples(&train)),
            val: class_counts(&classes, &samples(&val)),
            test: class_counts(&classes, &samples(&test)),
            train_views: train_embeddings,
            unreadable: unreadable.len(),
            ignored_files: ds.ignored_files.len(),
        },
        classes,
        split_notes: ds.notes.clone(),
        seed: opts.train.seed,
        config: opts.train.clone(),
        augment: opts.augment,
        augment_params: opts.augment_params,
        views: opts.views.names(),
        novelty: NoveltySummary::of(&head),
        calibration: assessment.as_ref().map(|a| a.calibration.clone()),
        temperature_choice: temperature,
        unknown: assessment.as_ref().and_then(|a| a.unknown.clone()),
        plots: Vec::new(),
        training: summary,
        test: assessment.as_ref().map(|a| a.test.clone()),
        embeddings: EmbeddingCounts {
            computed: stats.computed,
            cached: stats.cached,
            cache_dir: opts.cache_dir.as_ref().map(|d| d.display().to_string()),
        },
        unreadable,
        skipped_links: ds
            .skipped_links
            .iter()
            .chain(&unknown_skipped)
            .cloned()
            .collect(),
        duplicates: ds.duplicates.clone(),
        classes_without_validation,
        classes_without_test,
        timings: Timings {
            load_s,
            embed_s,
            train_s,
            eval_s,
            total_s: started.elapsed().as_secs_f64(),
        },
    };
    if cancel.load(std::sync::atomic::Ordering::Relaxed) {
        bail!("interrupted");
    }
    let plots = assess::plots(Some(&report.training), assessment.as_ref(), &head);
    report.plots = plots.iter().map(|(name, _)| name.clone()).collect();
    let markdown = report.to_markdown()
        + &assessment.map_or(String::new(), |a| assess::markdown(&a, &head))
        + &plot_links(&report.plots);
    // All or nothing: a run that fails or is killed while writing leaves `--out` as it was.
    let mut files = final_files(&report, markdown, &head)?;
    files.extend(
        plots
            .into_iter()
            .map(|(name, svg)| (name, svg.into_bytes())),
    );
    let files: Vec<(&str, &[u8])> = files
        .iter()
        .map(|(n, b)| (n.as_str(), b.as_slice()))
        .collect();
    fsutil::replace_files(&opts.out, &files)?;
    Ok(report)
}

/// What a run writes into `--out` besides its plots, by file name: every file joins one
/// all-or-nothing replacement.
pub fn final_files(
    report: &Report,
    markdown: String,
    head: &Head,
) -> Result<Vec<(String, Vec<u8>)>> {
    let [json, md, head_file] = OUT_FILES;
    Ok(vec![
        (
            json.into(),
            serde_json::to_string_pretty(report)?.into_bytes(),
        ),
        (md.into(), markdown.into_bytes()),
        (head_file.into(), head.to_file_bytes()?),
    ])
}

/// Evaluates a trained head on a `<class>/<image>` folder (with `views`), and against the images
/// under `unknown` when given.
#[allow(clippy::too_many_arguments)]
pub fn evaluate_folder(
    backbone: &Backbone,
    head: &Head,
    dir: &Path,
    views: Views,
    unknown: Option<&Path>,
    cache_dir: Option<PathBuf>,
    threads: usize,
    cancel: &AtomicBool,
    progress: &dyn Progress,
) -> Result<(Assessment, Vec<Unreadable>, Vec<Skipped>)> {
    let labelled = crate::dataset::open_labelled_folder(dir, &head.classes)?;
    warn_skipped(&labelled.skipped_links);
    let mut embedder = Embedder {
        backbone,
        cache: Cache::new(cache_dir),
        threads,
        cancel,
        progress,
        unreadable: Vec::new(),
        skipped: Vec::new(),
        stats: EmbedStats::default(),
    };
    let embedded = embedder.embed(labelled.samples, &ViewSpec::fixed(views), "embedding")?;
    let unknown_embedded = match unknown {
        Some(u) => Some(embedder.embed_unknown(u)?),
        None => None,
    };
    let unreadable = embedder.unreadable;
    let mut skipped = labelled.skipped_links;
    skipped.extend(embedder.skipped);
    if embedded.is_empty() {
        bail!("{}: no readable images to evaluate", dir.display());
    }
    let assessment = assess(head, &embedded, unknown.zip(unknown_embedded.as_deref()));
    Ok((assessment, unreadable, skipped))
}
