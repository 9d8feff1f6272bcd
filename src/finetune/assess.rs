//! After training: the held-out assessment `finetune` and `evaluate` share — closed-set metrics,
//! calibration before and after, known images rejected, and known against unknown images.

use std::path::Path;

use serde::Serialize;

use crate::backbone::EMBEDDING_DIM;
use crate::classifier::{self, Prediction, NO_THRESHOLD};
use crate::confidence::{self, CalibrationReport};
use crate::dataset::Sample;
use crate::head::Head;
use crate::metrics::{self, Evaluation};
use crate::novelty::UnknownReport;

/// Samples with every view's embedding (view 0 the plain image).
pub type Embedded = [(Sample, Vec<Vec<f32>>)];

fn plain_rows(embedded: &Embedded) -> ndarray::Array2<f32> {
    let mut x = ndarray::Array2::zeros((embedded.len(), EMBEDDING_DIM));
    for (i, (_, v)) in embedded.iter().enumerate() {
        x.row_mut(i).assign(&ndarray::ArrayView1::from(&v[0][..]));
    }
    x
}

/// What the head's novelty model is, for the report.
#[derive(Debug, Clone, Serialize)]
pub struct NoveltySummary {
    pub score: &'static str,
    pub prototypes: usize,
    pub threshold: f32,
    pub keep_rate: f32,
    pub threshold_from: String,
}

impl NoveltySummary {
    pub fn of(head: &Head) -> Option<NoveltySummary> {
        head.novelty.as_ref().map(|n| NoveltySummary {
            score: "1 - cosine similarity to the nearest training image",
            prototypes: n.prototypes(),
            threshold: n.threshold,
            keep_rate: n.keep_rate,
            threshold_from: n.threshold_from.clone(),
        })
    }
}

/// A held-out assessment: closed-set metrics (with the known images' rejection rate beside them),
/// calibration, and the unknown images' separation when there were any.
#[derive(Debug, Clone)]
pub struct Assessment {
    pub test: Evaluation,
    pub calibration: CalibrationReport,
    pub unknown: Option<UnknownReport>,
    /// Novelty of each known test image, then of each unknown image (for the histograms).
    pub known_novelty: Vec<f32>,
    pub unknown_novelty: Vec<f32>,
}

/// Assesses `head` on labelled `test` images and, optionally, `unknown` ones (no labels).
pub fn assess(head: &Head, test: &Embedded, unknown: Option<(&Path, &Embedded)>) -> Assessment {
    let logits: Vec<Vec<Vec<f32>>> = test.iter().map(|(_, v)| head.view_logits(v)).collect();
    let predictions: Vec<(usize, f32)> = logits
        .iter()
        .map(|l| {
            let p = Prediction::from_probs(head, confidence::probs(l, head.temperature));
            (p.index, p.confidence)
        })
        .collect();
    let actual: Vec<usize> = test.iter().map(|(s, _)| s.label).collect();
    let files: Vec<String> = test
        .iter()
        .map(|(s, _)| s.path.display().to_string())
        .collect();
    let mut eval = metrics::evaluate(&head.classes, &actual, &predictions, &files);
    let calibration = CalibrationReport::new(&logits, &actual, head.temperature);
    let (known_novelty, unknown_novelty, unknown_report) = match &head.novelty {
        Some(n) => {
            let known = n.scores(&plain_rows(test));
            // The serve and predict rule, without a confidence threshold (evaluate has none).
            let rejected = predictions
                .iter()
                .zip(&known)
                .filter(|&(&(_, conf), &score)| {
                    classifier::is_rejected(conf, n.is_unknown(score), NO_THRESHOLD)
                })
                .count();
            eval.rejected_rate = Some(rejected as f64 / known.len().max(1) as f64);
            let (unknown_scores, report) = match unknown {
                Some((dir, u)) => {
                    let s = n.scores(&plain_rows(u));
                    let r = UnknownReport::new(dir.display().to_string(), &known, &s, n.threshold);
                    (s, Some(r))
                }
                None => (Vec::new(), None),
            };
            (known, unknown_scores, report)
        }
        None => (Vec::new(), Vec::new(), None),
    };
    Assessment {
        test: eval,
        calibration,
        unknown: unknown_report,
        known_novelty,
        unknown_novelty,
    }
}

/// The Markdown of an assessment's calibration, rejection and unknown sections.
pub fn markdown(a: &Assessment, head: &Head) -> String {
    let mut s = String::new();
    let c = &a.calibration;
    s.push_str(&format!(
        "\n## Calibration\n\nTemperature {:.3} (fitted on the validation split by NLL, kept only if it lowers the cross-validated NLL there by more than one standard error; else 1). Expected calibration error on the test split ({} bins): {:.4} before, {:.4} after.\n",
        c.temperature,
        confidence::ECE_BINS,
        c.ece_before,
        c.ece_after
    ));
    if let Some(n) = &head.novelty {
        s.push_str(&format!(
            "\n## Unknown images\n\nNovelty: 1 − cosine similarity to the nearest of {} training images; above {:.4} (keeps {:.0}% of the known images of the {} split) an image is `unknown`. Accuracy and F1 above are closed-set (the most probable class, rejection aside).\n\n- known test images rejected: {:.1}%\n",
            n.prototypes(),
            n.threshold,
            n.keep_rate * 100.0,
            n.threshold_from,
            a.test.rejected_rate.unwrap_or(0.0) * 100.0
        ));
        if let Some(u) = &a.unknown {
            s.push_str(&format!(
                "- unknown images (`{}`, {}): AUROC known vs unknown {}, accepted at the threshold {:.1}%\n",
                u.dir,
                u.images,
                u.auroc.map_or("n/a".into(), |v| format!("{v:.4}")),
                u.accepted_rate * 100.0
            ));
        }
    }
    s
}

/// The SVG plots of a report, as (file name, SVG text): training curves when there was training,
/// and the held-out assessment's. A plot that cannot be drawn is left out with a warning: the
/// figures are all in report.json too.
#[cfg(feature = "plots")]
pub fn plots(
    training: Option<&crate::head::TrainSummary>,
    assessment: Option<&Assessment>,
    head: &Head,
) -> Vec<(String, String)> {
    use crate::plots;
    let mut out = Vec::new();
    let mut add = |name: &str, svg: Result<String, plots::PlotError>| match svg {
        Ok(svg) => out.push((name.to_string(), svg)),
        Err(e) => log::warn!("{e}; {name} not written"),
    };
    if let Some(t) = training {
        add("training.svg", plots::training(&t.history, t.best_epoch));
    }
    if let Some(a) = assessment {
        add(
            "confusion.svg",
            plots::confusion(&head.classes, &a.test.confusion_matrix),
        );
        let c = &a.calibration;
        add(
            "reliability.svg",
            plots::reliability(&c.bins_before, &c.bins_after, c.temperature),
        );
        if let (Some(n), Some(_)) = (&head.novelty, &a.unknown) {
            add(
                "novelty.svg",
                plots::novelty(&a.known_novelty, &a.unknown_novelty, n.threshold),
            );
        }
    }
    out
}

/// Without the `plots` feature, reports have no pictures.
#[cfg(not(feature = "plots"))]
pub fn plots(
    _training: Option<&crate::head::TrainSummary>,
    _assessment: Option<&Assessment>,
    _head: &Head,
) -> Vec<(String, String)> {
    Vec::new()
}
