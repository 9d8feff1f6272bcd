//! The `edge-mnv2` command line: parses arguments, calls the library, prints results.
//! Exit codes: 0 success, 1 any error (a one-line message on stderr), 2 never used.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use serde_json::json;

use edge_mnv2::augment::AugmentParams;
use edge_mnv2::backbone::Backbone;
use edge_mnv2::classifier::Classifier;
use edge_mnv2::dataset::SplitFractions;
use edge_mnv2::finetune::{self, FinetuneOptions};
use edge_mnv2::head::{Head, TrainConfig};
use edge_mnv2::models::{self, Manifest};
use edge_mnv2::serve::{self, ServeConfig, ServeOptions};
use edge_mnv2::source::{CameraSettings, SourceSpec};
use edge_mnv2::tflite::Precision;
use edge_mnv2::{calibration, capture, features, fetch, fsutil, preprocess};

mod progress;

#[derive(Parser)]
#[command(
    name = "edge-mnv2",
    version,
    about = "A trainable MobileNetV2 image classifier for Linux boards"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Args)]
struct ModelArg {
    /// Model name from `edge-mnv2 models`, or a path to a model file
    #[arg(long, short = 'm', value_name = "PATH|NAME")]
    model: Option<String>,
    /// Arithmetic for TFLite models (default: this board's calibration, else f32)
    #[arg(long, value_enum)]
    precision: Option<Precision>,
}

#[derive(Args)]
struct RunArgs {
    /// Worker threads for embedding (default: all cores)
    #[arg(long)]
    threads: Option<usize>,
    /// Embedding cache directory (default: $EDGE_MNV2_CACHE or ~/.cache/edge-mnv2/embeddings)
    #[arg(long, value_name = "DIR")]
    cache: Option<PathBuf>,
    /// Do not read or write the embedding cache
    #[arg(long)]
    no_cache: bool,
}

impl RunArgs {
    fn threads(&self) -> usize {
        self.threads
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
            .max(1)
    }

    fn cache_dir(&self) -> Option<PathBuf> {
        if self.no_cache {
            None
        } else {
            self.cache.clone().or_else(features::default_cache_dir)
        }
    }
}

#[derive(Subcommand)]
enum Command {
    /// Print the top-K ImageNet classes of each image
    Classify {
        #[command(flatten)]
        model: ModelArg,
        /// How many classes to print per image
        #[arg(long, short = 'k', default_value_t = 5)]
        top: usize,
        /// One JSON object per image on stdout
        #[arg(long)]
        json: bool,
        #[arg(required = true, value_name = "IMAGE")]
        images: Vec<PathBuf>,
    },
    /// Write the 1280-d MobileNetV2 embedding of each image
    ///
    /// Output: one line per image. Default format is tab-separated: the image path, then the 1280
    /// values separated by spaces. With --json, JSON lines: {"file", "model", "embedding": [...]}.
    Embed {
        #[command(flatten)]
        model: ModelArg,
        /// JSON lines instead of tab-separated text
        #[arg(long)]
        json: bool,
        /// Write to FILE (atomically) instead of stdout
        #[arg(long, short = 'o', value_name = "FILE")]
        out: Option<PathBuf>,
        #[arg(required = true, value_name = "IMAGE")]
        images: Vec<PathBuf>,
    },
    /// Train a classifier head on a folder of labelled images and evaluate it on a held-out split
    ///
    /// DATA is either DATA/<class>/<image> (split 70/15/15 by a hash of each path) or
    /// DATA/{train,val,test}/<class>/<image>. Writes head.json, report.json and report.md to --out.
    Finetune {
        /// The labelled image folder
        data: PathBuf,
        /// Output directory for head.json, report.json and report.md
        #[arg(long, short = 'o', default_value = "edge-mnv2-out")]
        out: PathBuf,
        #[command(flatten)]
        model: ModelArg,
        /// Maximum number of epochs
        #[arg(long, default_value_t = TrainConfig::default().epochs)]
        epochs: usize,
        /// Stop after this many epochs without a better validation loss
        #[arg(long, default_value_t = TrainConfig::default().patience)]
        patience: usize,
        /// Adam learning rate
        #[arg(long, default_value_t = TrainConfig::default().lr)]
        lr: f32,
        #[arg(long, default_value_t = TrainConfig::default().batch_size)]
        batch_size: usize,
        /// L2 weight decay on the head's weights
        #[arg(long, default_value_t = TrainConfig::default().weight_decay)]
        weight_decay: f32,
        /// Augmented views per training image (0 turns augmentation off)
        #[arg(long, default_value_t = 2)]
        augment: usize,
        /// Maximum rotation of an augmented view, in degrees
        #[arg(long, default_value_t = AugmentParams::default().rotate_deg)]
        rotate: f32,
        /// Maximum zoom of an augmented view (0.15 = ±15%)
        #[arg(long, default_value_t = AugmentParams::default().zoom)]
        zoom: f32,
        /// Never flip augmented views horizontally
        #[arg(long)]
        no_flip: bool,
        /// Do not weight classes by inverse frequency
        #[arg(long)]
        no_class_weights: bool,
        /// Do not standardise embeddings before the head
        #[arg(long)]
        no_standardize: bool,
        /// Split for DATA/<class>/<image>: train/val/test percentages
        #[arg(long, default_value = "70/15/15")]
        split: SplitFractions,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        #[command(flatten)]
        run: RunArgs,
        /// Print report.json to stdout
        #[arg(long)]
        json: bool,
    },
    /// Evaluate a trained head on a <class>/<image> folder
    Evaluate {
        /// head.json, or the directory finetune wrote it to
        #[arg(long, value_name = "DIR|FILE")]
        head: PathBuf,
        #[command(flatten)]
        model: ModelArg,
        /// Folder of <class>/<image> with the head's class names
        testdir: PathBuf,
        #[command(flatten)]
        run: RunArgs,
        /// Print the metrics as JSON
        #[arg(long)]
        json: bool,
    },
    /// Label images with a trained head
    Predict {
        /// head.json, or the directory finetune wrote it to
        #[arg(long, value_name = "DIR|FILE")]
        head: PathBuf,
        #[command(flatten)]
        model: ModelArg,
        /// One JSON object per image on stdout
        #[arg(long)]
        json: bool,
        #[arg(required = true, value_name = "IMAGE")]
        images: Vec<PathBuf>,
    },
    /// Measure each precision × thread count on this board and pick the fastest that agrees with f32
    ///
    /// Writes calibration/<board>.json (atomically); classify, embed, finetune, predict and serve
    /// then use its choice unless --precision is given. $EDGE_MNV2_CALIBRATION names another file.
    Calibrate {
        /// A model name or path (default: the default model); must be a TFLite file
        #[arg(long, short = 'm', value_name = "PATH|NAME")]
        model: Option<String>,
        /// Images to measure on: a folder of images, or a folder with an images.txt list
        #[arg(long, value_name = "DIR", default_value = "calibration")]
        images: PathBuf,
        /// Thread counts to try, comma-separated (default: 1, 2, 4, ... up to the core count;
        /// 1 only without the `threads` feature)
        #[arg(long, value_delimiter = ',')]
        threads: Vec<usize>,
        /// Timed frames per precision and thread count
        #[arg(long, default_value_t = 20)]
        runs: usize,
        /// Least share of images whose ImageNet top-1 must equal f32's
        #[arg(long, default_value_t = 0.99)]
        min_agreement: f64,
        /// Output file (default: $EDGE_MNV2_CALIBRATION or calibration/<board>.json)
        #[arg(long, short = 'o', value_name = "FILE")]
        out: Option<PathBuf>,
        /// Print the calibration as JSON
        #[arg(long)]
        json: bool,
    },
    /// Classify frames from a camera or files continuously: JSON lines on stdout, HTTP API
    ///
    /// Every key can also come from --config (TOML, same names; flags win). SIGHUP or
    /// POST /reload reloads the head; SIGTERM/SIGINT stop.
    Serve(ServeArgs),
    /// Save frames from a camera or files as JPEGs into DATA/<class>/ for finetune
    Capture(CaptureArgs),
    /// List the known models (default), or fetch one: `models list`, `models fetch [NAME]`
    Models {
        #[command(subcommand)]
        action: Option<ModelsAction>,
        /// JSON instead of a table (for the default `list`)
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum ModelsAction {
    /// List the known models, where each was found, and whether its checksum matches
    List {
        /// JSON instead of a table
        #[arg(long)]
        json: bool,
    },
    /// Download a model into the user cache (~/.cache/edge-mnv2/models), verified by its sha256
    ///
    /// Nothing is downloaded when a copy with the right checksum is already in a search
    /// directory. A failed, cut or wrong download leaves no file behind. Only https:// URLs,
    /// plus http:// to this machine (127.0.0.1, localhost) for a local mirror or tests.
    Fetch {
        /// Model name from `edge-mnv2 models` (default: the manifest's default model)
        #[arg(conflicts_with = "all")]
        name: Option<String>,
        /// Every model that has a download URL and a pinned checksum
        #[arg(long)]
        all: bool,
        /// Download from this URL instead of the manifest's (the checksum is still the manifest's)
        #[arg(long, value_name = "URL", conflicts_with = "all")]
        url: Option<String>,
        /// Download again even if a verified copy exists
        #[arg(long)]
        force: bool,
    },
}

#[derive(Args)]
struct SourceArgs {
    /// Frame source: a V4L2 device (/dev/videoN), a folder of images (sorted, looped), one image
    /// (repeated), or an MJPEG stream file (.mjpeg/.mjpg) [default: /dev/video0]
    #[arg(long, value_name = "DEVICE|DIR|FILE")]
    source: Option<String>,
    /// Camera width in pixels [default: 640]
    #[arg(long)]
    width: Option<u32>,
    /// Camera height in pixels [default: 480]
    #[arg(long)]
    height: Option<u32>,
    /// Camera frame rate; for file sources, replay at this rate (dropping frames under load)
    /// instead of as fast as inference takes them [camera default: 15]
    #[arg(long)]
    fps: Option<f64>,
    /// TOML file with any of these options' long names as keys
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
}

#[derive(Args)]
struct ServeArgs {
    /// head.json, or the directory finetune wrote it to
    #[arg(long, value_name = "DIR|FILE")]
    head: Option<PathBuf>,
    #[command(flatten)]
    model: ModelArg,
    #[command(flatten)]
    source: SourceArgs,
    /// HTTP address to listen on; port 0 picks a free port [default: 127.0.0.1:8080]
    #[arg(long, value_name = "ADDR:PORT")]
    listen: Option<String>,
    /// No HTTP server: JSON lines on stdout only
    #[arg(long)]
    no_http: bool,
    /// Below this confidence the label is `unknown` [default: 0]
    #[arg(long, value_name = "X")]
    threshold: Option<f32>,
    /// Stop after this many classified frames (bounded runs, tests)
    #[arg(long, value_name = "N")]
    frames: Option<u64>,
}

#[derive(Args)]
struct CaptureArgs {
    #[command(flatten)]
    source: SourceArgs,
    /// Class name: the frames go to DATA/<class>/
    #[arg(long)]
    class: String,
    /// How many frames to save
    #[arg(long, default_value_t = 20)]
    count: usize,
    /// Seconds between saved frames from a camera (so samples differ)
    #[arg(long, default_value_t = 0.5)]
    interval: f64,
    /// The labelled image folder (as given to finetune)
    data: PathBuf,
}

/// glibc grows its mmap threshold as large blocks are freed, after which every worker's
/// multi-megabyte activation and image buffers stay in its heap arena: peak RSS was 155 MB
/// instead of 98 MB for a two-thread `finetune`. A fixed 1 MiB threshold hands them back.
fn limit_heap_growth() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only tunes allocator parameters; called before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
    }
}

fn main() -> ExitCode {
    limit_heap_growth();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() { 1 } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    init_logging(&cli.command);
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("edge-mnv2: error: {}", one_line(&e));
            ExitCode::from(1)
        }
    }
}

/// Long-running commands log what they do (info); the others only warnings. Under systemd
/// (JOURNAL_STREAM set) lines carry a `<N>` syslog priority prefix, which journald turns into the
/// entry's priority, and no timestamp or colour (journald adds its own).
fn init_logging(command: &Command) {
    let default = match command {
        Command::Serve(_) | Command::Capture(_) => "info",
        _ => "warn",
    };
    let mut builder =
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(default));
    builder.format_target(false);
    if std::env::var_os("JOURNAL_STREAM").is_some() {
        builder.format(|f, record| {
            let priority = match record.level() {
                log::Level::Error => 3,
                log::Level::Warn => 4,
                log::Level::Info => 6,
                log::Level::Debug | log::Level::Trace => 7,
            };
            writeln!(f, "<{priority}>{}", record.args())
        });
    }
    builder.init();
}

/// anyhow's `{:#}` joins the causes with ": "; tract errors may still carry newlines.
fn one_line(e: &anyhow::Error) -> String {
    format!("{e:#}")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Classify {
            model,
            top,
            json,
            images,
        } => classify(&model, top, json, &images),
        Command::Embed {
            model,
            json,
            out,
            images,
        } => embed(&model, json, out.as_deref(), &images),
        Command::Models { action, json } => match action {
            None => list_models(json),
            Some(ModelsAction::List { json: list_json }) => list_models(json || list_json),
            Some(ModelsAction::Fetch {
                name,
                all,
                url,
                force,
            }) => fetch_models(name.as_deref(), all, url, force),
        },
        Command::Calibrate {
            model,
            images,
            threads,
            runs,
            min_agreement,
            out,
            json,
        } => calibrate_cmd(
            model.as_deref(),
            &images,
            threads,
            runs,
            min_agreement,
            out,
            json,
        ),
        Command::Finetune {
            data,
            out,
            model,
            epochs,
            patience,
            lr,
            batch_size,
            weight_decay,
            augment,
            rotate,
            zoom,
            no_flip,
            no_class_weights,
            no_standardize,
            split,
            seed,
            run,
            json,
        } => {
            let opts = FinetuneOptions {
                data,
                out,
                split,
                train: TrainConfig {
                    epochs,
                    patience,
                    lr,
                    batch_size,
                    weight_decay,
                    class_weighting: !no_class_weights,
                    standardize: !no_standardize,
                    seed,
                },
                augment,
                augment_params: AugmentParams {
                    flip: !no_flip,
                    rotate_deg: rotate,
                    zoom,
                },
                threads: run.threads(),
                cache_dir: run.cache_dir(),
            };
            finetune_cmd(&model, &opts, json)
        }
        Command::Evaluate {
            head,
            model,
            testdir,
            run,
            json,
        } => evaluate_cmd(&head, &model, &testdir, &run, json),
        Command::Predict {
            head,
            model,
            json,
            images,
        } => predict_cmd(&head, &model, json, &images),
        Command::Serve(args) => serve_cmd(args),
        Command::Capture(args) => capture_cmd(args),
    }
}

/// The config file (if any) with the flags laid over it.
fn serve_config(source: &SourceArgs, flags: ServeConfig) -> Result<ServeConfig> {
    let flags = ServeConfig {
        source: source.source.clone(),
        fps: source.fps,
        width: source.width,
        height: source.height,
        ..flags
    };
    Ok(match &source.config {
        Some(path) => ServeConfig::load(path)?.overridden_by(flags),
        None => flags,
    })
}

fn camera_settings(cfg: &ServeConfig) -> Result<CameraSettings> {
    let default = CameraSettings::default();
    let fps = cfg.fps.unwrap_or(default.fps as f64);
    if !(fps.is_finite() && fps > 0.0 && fps <= 1000.0) {
        anyhow::bail!("--fps {fps}: must be a number of frames per second in (0, 1000]");
    }
    let settings = CameraSettings {
        width: cfg.width.unwrap_or(default.width),
        height: cfg.height.unwrap_or(default.height),
        fps: fps.round().max(1.0) as u32,
    };
    for (name, v) in [("--width", settings.width), ("--height", settings.height)] {
        if !(16..=8192).contains(&v) {
            anyhow::bail!("{name} {v}: must be between 16 and 8192 pixels");
        }
    }
    Ok(settings)
}

fn serve_cmd(args: ServeArgs) -> Result<ExitCode> {
    let flags = ServeConfig {
        head: args.head,
        model: args.model.model,
        precision: args.model.precision,
        listen: args.listen,
        threshold: args.threshold,
        frames: args.frames,
        no_http: args.no_http.then_some(true),
        ..ServeConfig::default()
    };
    let cfg = serve_config(&args.source, flags)?;
    let camera = camera_settings(&cfg)?;
    let threshold = cfg.threshold.unwrap_or(0.0);
    if !(0.0..=1.0).contains(&threshold) {
        anyhow::bail!("--threshold {threshold}: must be between 0 and 1");
    }
    let head = cfg
        .head
        .clone()
        .context("no head: give --head DIR (or `head` in the config file)")?;
    let opts = ServeOptions {
        source: SourceSpec::parse(cfg.source.as_deref().unwrap_or("/dev/video0")),
        camera,
        fps: cfg.fps,
        threshold,
        max_frames: cfg.frames,
        listen: if cfg.no_http == Some(true) {
            None
        } else {
            Some(
                cfg.listen
                    .clone()
                    .unwrap_or_else(|| "127.0.0.1:8080".into()),
            )
        },
        head,
    };
    // The backbone the head was trained on, as `predict` loads it; reloads replace only the head.
    let head_backbone = Head::load(&opts.head)?.backbone.name;
    let backbone = load_backbone(
        &ModelArg {
            model: Some(cfg.model.clone().unwrap_or(head_backbone)),
            precision: cfg.precision,
        },
        false,
    )?;
    serve::run(backbone, &opts)?;
    Ok(ExitCode::SUCCESS)
}

fn capture_cmd(args: CaptureArgs) -> Result<ExitCode> {
    let cfg = serve_config(&args.source, ServeConfig::default())?;
    let camera = camera_settings(&cfg)?;
    if !(args.interval.is_finite() && args.interval >= 0.0) {
        anyhow::bail!(
            "--interval {}: must be a number of seconds >= 0",
            args.interval
        );
    }
    let spec = SourceSpec::parse(cfg.source.as_deref().unwrap_or("/dev/video0"));
    let cancel = progress::cancel_on_ctrl_c();
    let saved = capture::capture(
        &spec,
        camera,
        &args.class,
        args.count,
        &args.data,
        std::time::Duration::from_secs_f64(args.interval),
        cancel,
    )?;
    println!(
        "saved {} frames to {}",
        saved.len(),
        args.data.join(&args.class).display()
    );
    Ok(if saved.len() == args.count {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn finetune_cmd(model: &ModelArg, opts: &FinetuneOptions, json: bool) -> Result<ExitCode> {
    let started = std::time::Instant::now();
    let cancel = progress::cancel_on_ctrl_c();
    let backbone = load_backbone(model, false)?;
    let progress = progress::Terminal::new();
    let report = finetune::finetune(&backbone, opts, started, cancel, &progress)?;
    if json {
        writeln!(
            std::io::stdout().lock(),
            "{}",
            serde_json::to_string_pretty(&report)?
        )?;
    } else {
        let mut out = std::io::stdout().lock();
        match &report.test {
            Some(t) => writeln!(
                out,
                "test accuracy {:.4}, balanced accuracy {:.4}, macro F1 {:.4} on {} held-out images",
                t.accuracy, t.balanced_accuracy, t.macro_f1, t.samples
            )?,
            None => writeln!(out, "no held-out test images: no test metrics")?,
        }
        writeln!(
            out,
            "{} epochs (best {}), {:.1} s total; wrote {}",
            report.training.epochs_run,
            report.training.best_epoch,
            report.timings.total_s,
            opts.out.join("head.json").display()
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Loads a head and the backbone it was trained on (its recorded name unless --model says otherwise).
fn load_classifier(head_path: &Path, model: &ModelArg) -> Result<Classifier> {
    let head = Head::load(head_path)?;
    let model = ModelArg {
        model: Some(
            model
                .model
                .clone()
                .unwrap_or_else(|| head.backbone.name.clone()),
        ),
        precision: model.precision,
    };
    let backbone = load_backbone(&model, false)?;
    Ok(Classifier::new(backbone, head)?)
}

fn evaluate_cmd(
    head: &Path,
    model: &ModelArg,
    testdir: &Path,
    run: &RunArgs,
    json: bool,
) -> Result<ExitCode> {
    let cancel = progress::cancel_on_ctrl_c();
    let c = load_classifier(head, model)?;
    let progress = progress::Terminal::new();
    let (eval, unreadable) = finetune::evaluate_folder(
        &c.backbone,
        &c.head,
        testdir,
        run.cache_dir(),
        run.threads(),
        cancel,
        &progress,
    )?;
    for u in &unreadable {
        eprintln!("edge-mnv2: error: {}", u.reason);
    }
    let mut out = std::io::stdout().lock();
    if json {
        let v = json!({"head": head, "data": testdir, "test": eval, "unreadable": unreadable});
        writeln!(out, "{}", serde_json::to_string_pretty(&v)?)?;
    } else {
        writeln!(out, "{}", eval.to_markdown(50))?;
    }
    Ok(if unreadable.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn predict_cmd(head: &Path, model: &ModelArg, json: bool, images: &[PathBuf]) -> Result<ExitCode> {
    let c = load_classifier(head, model)?;
    let stdout = std::io::stdout();
    Ok(for_each_image(images, |path| {
        let img = preprocess::load_rgb(path)?;
        let p = c.predict(&img)?;
        let mut out = stdout.lock();
        if json {
            let probs: serde_json::Map<String, serde_json::Value> = c
                .head
                .classes
                .iter()
                .zip(&p.probs)
                .map(|(k, v)| (k.clone(), json!(v)))
                .collect();
            writeln!(
                out,
                "{}",
                json!({"file": path, "label": p.label, "confidence": p.confidence, "probs": probs})
            )?;
        } else {
            writeln!(out, "{}\t{}\t{:.4}", path.display(), p.label, p.confidence)?;
        }
        Ok(())
    }))
}

/// Loads the backbone in the precision `--precision` names, else the one this board's
/// calibration chose for this very file (with its thread count), else f32 on one thread.
fn load_backbone(model: &ModelArg, with_scores: bool) -> Result<Backbone> {
    let resolved = models::resolve(&Manifest::builtin(), model.model.as_deref())?;
    let calibrated = if resolved.spec.format == "tflite" {
        calibrated_choice(&resolved)?
    } else {
        None
    };
    let precision = model
        .precision
        .or(calibrated.as_ref().map(|c| c.precision))
        .unwrap_or(Precision::F32);
    let mut backbone = Backbone::load_with_precision(&resolved, with_scores, precision)?;
    if let Some(c) = calibrated.filter(|c| c.precision == precision) {
        backbone.set_threads(c.threads);
    }
    Ok(backbone)
}

/// The calibration file's choice for this model file, if there is a file made with it.
fn calibrated_choice(model: &models::ResolvedModel) -> Result<Option<calibration::Choice>> {
    let path = calibration::default_path();
    let explicit = std::env::var_os(calibration::CALIBRATION_ENV).is_some_and(|v| !v.is_empty());
    if !explicit && !path.is_file() {
        return Ok(None);
    }
    let cal = calibration::Calibration::load(&path)?;
    match cal.choice_for(model) {
        Some(choice) => {
            log::info!(
                "{}: {} on {} thread(s)",
                path.display(),
                choice.precision,
                choice.threads
            );
            Ok(Some(choice.clone()))
        }
        None => {
            log::warn!(
                "{}: made with another model file ({}); not used for {}",
                path.display(),
                cal.model,
                model.spec.name
            );
            Ok(None)
        }
    }
}

fn calibrate_cmd(
    model: Option<&str>,
    images: &Path,
    threads: Vec<usize>,
    runs: usize,
    min_agreement: f64,
    out: Option<PathBuf>,
    json: bool,
) -> Result<ExitCode> {
    anyhow::ensure!(
        (0.0..=1.0).contains(&min_agreement),
        "--min-agreement must be between 0 and 1, got {min_agreement}"
    );
    let resolved = models::resolve(&Manifest::builtin(), model)?;
    calibration::check_calibratable(&resolved)?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads = if threads.is_empty() && !cfg!(feature = "threads") {
        vec![1]
    } else if threads.is_empty() {
        std::iter::successors(Some(1usize), |t| Some(t * 2))
            .take_while(|&t| t <= cores)
            .collect()
    } else {
        threads
    };
    let opts = calibration::CalibrateOptions {
        images: calibration::images_in(images)?,
        threads,
        runs,
        min_top1_agreement: min_agreement,
    };
    eprintln!(
        "calibrating {} on {} image(s), {} timed frames per setting ({})",
        resolved.spec.name,
        opts.images.len(),
        runs,
        calibration::board_id()
    );
    let cal = calibration::calibrate(&resolved, &opts, |m| {
        eprintln!(
            "  {} x{}: median {:.2} ms, top-1 agreement {:.1}%",
            m.precision,
            m.threads,
            m.median_ms,
            m.top1_agreement * 100.0
        )
    })?;
    let path = out.unwrap_or_else(calibration::default_path);
    cal.save(&path)?;
    let mut stdout = std::io::stdout().lock();
    if json {
        writeln!(stdout, "{}", serde_json::to_string_pretty(&cal)?)?;
    } else {
        write!(stdout, "{}", cal.to_table())?;
        writeln!(
            stdout,
            "chosen: {} on {} thread(s); written to {}",
            cal.choice.precision,
            cal.choice.threads,
            path.display()
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Runs `f` on every image, reporting failures one line each on stderr and going on;
/// the exit code is 1 if any image failed.
fn for_each_image(images: &[PathBuf], mut f: impl FnMut(&Path) -> Result<()>) -> ExitCode {
    let mut failed = 0;
    for path in images {
        if let Err(e) = f(path) {
            eprintln!("edge-mnv2: error: {}", one_line(&e));
            failed += 1;
        }
    }
    if failed > 0 {
        eprintln!("edge-mnv2: {failed} of {} images failed", images.len());
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

fn classify(model: &ModelArg, top: usize, json: bool, images: &[PathBuf]) -> Result<ExitCode> {
    let backbone = load_backbone(model, true)?;
    let stdout = std::io::stdout();
    Ok(for_each_image(images, |path| {
        let img = preprocess::load_rgb(path)?;
        let best = backbone.classify(&img, top)?;
        let mut out = stdout.lock();
        if json {
            let top: Vec<_> = best
                .iter()
                .map(|(i, l, p)| json!({"index": i, "label": l, "score": p}))
                .collect();
            let line = json!({
                "file": path,
                "model": backbone.name(),
                "precision": backbone.precision(),
                "threads": backbone.threads(),
                "top": top
            });
            writeln!(out, "{line}")?;
        } else {
            writeln!(out, "{}", path.display())?;
            for (i, label, p) in &best {
                writeln!(out, "  {p:.4}  {i:>4}  {label}")?;
            }
        }
        Ok(())
    }))
}

fn embed(model: &ModelArg, json: bool, out: Option<&Path>, images: &[PathBuf]) -> Result<ExitCode> {
    if let Some(out) = out {
        if out.is_dir() {
            anyhow::bail!("{}: is a directory, expected an output file", out.display());
        }
    }
    let backbone = load_backbone(model, false)?;
    let mut text = String::new();
    let stdout = std::io::stdout();
    let code = for_each_image(images, |path| {
        let img = preprocess::load_rgb(path)?;
        let embedding = backbone.embed(&img)?;
        let line = if json {
            json!({"file": path, "model": backbone.name(), "embedding": embedding}).to_string()
        } else {
            let values: Vec<String> = embedding.iter().map(|v| v.to_string()).collect();
            format!("{}\t{}", path.display(), values.join(" "))
        };
        match out {
            Some(_) => {
                text.push_str(&line);
                text.push('\n');
            }
            None => writeln!(stdout.lock(), "{line}")?,
        }
        Ok(())
    });
    if let Some(out) = out {
        fsutil::write_atomic(out, text.as_bytes())?;
    }
    Ok(code)
}

/// `models fetch`: one model (or all downloadable ones with --all); exit 1 if any failed.
fn fetch_models(
    name: Option<&str>,
    all: bool,
    url: Option<String>,
    force: bool,
) -> Result<ExitCode> {
    let manifest = Manifest::builtin();
    let specs: Vec<&models::ModelSpec> = if all {
        manifest
            .models
            .iter()
            .filter(|m| !m.url.is_empty() && !m.sha256.is_empty())
            .collect()
    } else {
        let name = name.unwrap_or(&manifest.default);
        vec![manifest
            .get(name)
            .ok_or_else(|| models::ModelError::UnknownName {
                name: name.to_string(),
                known: manifest.known_names(),
            })?]
    };
    if let [spec] = specs[..] {
        if spec.url.is_empty() && url.is_none() {
            let downloadable: Vec<&str> = manifest
                .models
                .iter()
                .filter(|m| !m.url.is_empty() && !m.sha256.is_empty())
                .map(|m| m.name.as_str())
                .collect();
            anyhow::bail!(
                "model '{}' is converted locally and has no download URL; downloadable: {}",
                spec.name,
                downloadable.join(", ")
            );
        }
    }
    let opts = fetch::FetchOptions { url, force };
    let cancel = progress::cancel_on_ctrl_c();
    let bar = progress::Download::new();
    let mut failed = 0;
    let report = |what: &str, fetched: Result<Option<fetch::Fetched>, fetch::FetchError>| {
        let mut out = std::io::stdout().lock();
        match fetched {
            Ok(None) => Ok(true),
            Ok(Some(fetch::Fetched::AlreadyPresent { path })) => writeln!(
                out,
                "{what}: already present at {} (sha256 ok); --force downloads it again",
                path.display()
            )
            .map(|_| true),
            Ok(Some(fetch::Fetched::Downloaded { path, url, bytes })) => writeln!(
                out,
                "{what}: downloaded {url} to {} ({bytes} bytes, sha256 ok)",
                path.display()
            )
            .map(|_| true),
            Err(e) => {
                eprintln!("edge-mnv2: error: {}", one_line(&e.into()));
                Ok(false)
            }
        }
    };
    for spec in &specs {
        let fetched = fetch::fetch(spec, &opts, &bar, cancel).map(Some);
        // The label file only after the model: a failed model download leaves nothing at all.
        let ok = report(&spec.name, fetched)?
            && report(
                &format!("{} labels", spec.name),
                fetch::fetch_labels(&manifest, spec, &opts, &bar, cancel),
            )?;
        if !ok {
            failed += 1;
        }
    }
    Ok(if failed > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

fn list_models(json: bool) -> Result<ExitCode> {
    let manifest = Manifest::builtin();
    let mut rows = Vec::new();
    for spec in &manifest.models {
        let (path, status) = match models::locate(spec) {
            None => (None, "not found".to_string()),
            Some((path, _)) => {
                let status = match models::sha256_file(&path) {
                    Err(e) => format!("unreadable: {e}"),
                    Ok(_) if spec.sha256.is_empty() => "found (checksum not pinned)".into(),
                    Ok(sum) if sum == spec.sha256 => "ok".into(),
                    Ok(sum) => format!("CHECKSUM MISMATCH (sha256 {sum})"),
                };
                (Some(path), status)
            }
        };
        rows.push((spec, path, status));
    }
    let mut out = std::io::stdout().lock();
    if json {
        let list: Vec<_> = rows
            .iter()
            .map(|(spec, path, status)| {
                json!({
                    "name": spec.name, "default": spec.name == manifest.default,
                    "file": spec.file, "path": path, "status": status,
                    "sha256": spec.sha256, "url": spec.url,
                    "embedding": true, "scores": spec.has_scores(),
                    "description": spec.description, "licence": spec.licence,
                })
            })
            .collect();
        writeln!(out, "{}", serde_json::to_string_pretty(&list)?)?;
    } else {
        for (spec, path, status) in &rows {
            let mark = if spec.name == manifest.default {
                " (default)"
            } else {
                ""
            };
            let kind = if spec.has_scores() {
                "classifier+embedding"
            } else {
                "embedding"
            };
            writeln!(out, "{}{mark}  [{kind}]", spec.name)?;
            writeln!(out, "    {}", spec.description)?;
            match path {
                Some(p) => writeln!(out, "    {}: {status}", p.display())?,
                None => writeln!(out, "    {}: {status}", spec.file)?,
            }
        }
        let dirs: Vec<String> = models::search_dirs()
            .iter()
            .map(|d| d.display().to_string())
            .collect();
        writeln!(out, "searched: {}", dirs.join(", ")).context("writing to stdout")?;
    }
    Ok(ExitCode::SUCCESS)
}
