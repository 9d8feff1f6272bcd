//! A trained head on its backbone: image in, label out. What `predict`, `evaluate` and the
//! service run for every image or frame, and what makes an image `unknown` ([`UNKNOWN_LABEL`],
//! [`is_rejected`]) for all three alike.

use std::collections::BTreeMap;

use image::RgbImage;
use serde::Serialize;
use thiserror::Error;

use crate::backbone::{self, Backbone, BackboneError, EMBEDDING_DIM};
use crate::head::{BackboneRef, Head};
use crate::numeric::argmax;
use crate::preprocess::{self, PREPROCESS_ACCEPTED, PREPROCESS_VERSION};
use crate::views::{self, Views};

#[derive(Debug, Error)]
pub enum MismatchError {
    #[error("head was trained on backbone '{head_name}' (sha256 {head_sha}…) but the model in use is '{model_name}' (sha256 {model_sha}…); use the same --model as for finetune, or retrain")]
    Backbone {
        head_name: String,
        head_sha: String,
        model_name: String,
        model_sha: String,
    },
    #[error(
        "head was trained with different preprocessing ('{0}'); retrain it with this edge-mnv2"
    )]
    Preprocessing(String),
}

/// What the head records about the backbone it is trained on.
pub fn backbone_ref(backbone: &Backbone) -> BackboneRef {
    BackboneRef {
        name: backbone.name().to_string(),
        sha256: backbone.sha256().to_string(),
        embedding_dim: EMBEDDING_DIM,
        input: backbone.spec().input.clone(),
        preprocessing: PREPROCESS_VERSION.to_string(),
    }
}

/// Refuses a head trained on another backbone file or with other preprocessing.
pub fn check_compatible(head: &Head, backbone: &Backbone) -> Result<(), MismatchError> {
    let b = &head.backbone;
    if b.sha256 != backbone.sha256() {
        return Err(MismatchError::Backbone {
            head_name: b.name.clone(),
            head_sha: b.sha256.chars().take(12).collect(),
            model_name: backbone.name().to_string(),
            model_sha: backbone.sha256().chars().take(12).collect(),
        });
    }
    if !PREPROCESS_ACCEPTED.contains(&b.preprocessing.as_str()) || b.input != backbone.spec().input
    {
        return Err(MismatchError::Preprocessing(b.preprocessing.clone()));
    }
    Ok(())
}

/// The label an image gets when it is rejected: of none of the classes, or too uncertain.
pub const UNKNOWN_LABEL: &str = "unknown";

/// No confidence threshold: only novelty rejects (`predict` and `evaluate`, and `serve` without
/// `--threshold`). A probability is never below it.
pub const NO_THRESHOLD: f32 = 0.0;

/// The one rule for `unknown`: the top class's probability is below `threshold`, or the image's
/// novelty is above the head's threshold (`novel`).
pub fn is_rejected(confidence: f32, novel: bool, threshold: f32) -> bool {
    confidence < threshold || novel
}

/// A training class that would read as [`UNKNOWN_LABEL`] in results and metrics. Any case:
/// `Unknown` beside rejected frames' `unknown` cannot be told apart by a reader, by a client
/// that matches labels without case, or as folders on a case-insensitive file system.
pub fn is_reserved_class(name: &str) -> bool {
    name.eq_ignore_ascii_case(UNKNOWN_LABEL)
}

/// The longest class name, in bytes. A name is written into every result (each JSON line's
/// `probs` names every class), every metric series and every MQTT message, so its length
/// multiplies; 64 bytes holds any descriptive label (ImageNet's are under 40) and keeps a
/// 100-class line under 10 KB, well below Home Assistant's 255-character state.
pub const MAX_CLASS_NAME_BYTES: usize = 64;

/// Why a name cannot be a class's: [`check_class_name`].
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ClassNameError {
    #[error("is empty")]
    Empty,
    #[error("is {0} bytes long (at most {MAX_CLASS_NAME_BYTES})")]
    TooLong(usize),
    #[error("contains a newline")]
    Newline,
    #[error("contains the control character U+{0:04X}")]
    Control(u32),
    #[error("contains '/' (a class is one folder)")]
    Slash,
    #[error("'{0}' is not a folder name")]
    Dots(String),
    #[error("'{0}' is reserved: rejected images are labelled '{UNKNOWN_LABEL}'")]
    Reserved(String),
}

/// The one rule for class names, for the folders `finetune` trains on and the heads every
/// command loads: a name that prints as one line in results, metrics and logs, can be a folder
/// (`capture` and the training layout make it one), is not empty, not over
/// [`MAX_CLASS_NAME_BYTES`], and is not [`UNKNOWN_LABEL`] ([`is_reserved_class`]).
pub fn check_class_name(name: &str) -> Result<(), ClassNameError> {
    if name.is_empty() {
        return Err(ClassNameError::Empty);
    }
    if name.len() > MAX_CLASS_NAME_BYTES {
        return Err(ClassNameError::TooLong(name.len()));
    }
    if name.contains('\n') {
        return Err(ClassNameError::Newline);
    }
    if let Some(c) = name.chars().find(|c| c.is_control()) {
        return Err(ClassNameError::Control(u32::from(c)));
    }
    if name.contains('/') {
        return Err(ClassNameError::Slash);
    }
    if name == "." || name == ".." {
        return Err(ClassNameError::Dots(name.into()));
    }
    if is_reserved_class(name) {
        return Err(ClassNameError::Reserved(name.into()));
    }
    Ok(())
}

/// Why a head's list of class names is refused, naming the class by its index in the list.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ClassNamesError {
    #[error("class {index}'s name {error}")]
    Name { index: usize, error: ClassNameError },
    /// Two results, metric series or MQTT states would be indistinguishable.
    #[error("class {index}'s name is also class {first}'s ('{name}')")]
    Duplicate {
        index: usize,
        first: usize,
        name: String,
    },
}

/// Every name passes [`check_class_name`], and no two are the same.
pub fn check_class_names(classes: &[String]) -> Result<(), ClassNamesError> {
    for (index, name) in classes.iter().enumerate() {
        check_class_name(name).map_err(|error| ClassNamesError::Name { index, error })?;
        if let Some(first) = classes[..index].iter().position(|c| c == name) {
            return Err(ClassNamesError::Duplicate {
                index,
                first,
                name: name.clone(),
            });
        }
    }
    Ok(())
}

#[derive(Debug, Clone, Serialize)]
pub struct Prediction {
    pub label: String,
    pub index: usize,
    pub confidence: f32,
    pub probs: Vec<f32>,
    /// How far the image is from the training images (when the head has a novelty model).
    pub novelty: Option<f32>,
    /// The novelty is above the head's threshold: the image is of none of the classes.
    pub novel: bool,
}

impl Prediction {
    /// Each class's probability by class name, in name order (as every JSON output lists them).
    pub fn probs_by_class<T>(
        &self,
        classes: &[String],
        value: impl Fn(f32) -> T,
    ) -> BTreeMap<String, T> {
        classes
            .iter()
            .zip(&self.probs)
            .map(|(class, &p)| (class.clone(), value(p)))
            .collect()
    }

    pub fn from_probs(head: &Head, probs: Vec<f32>) -> Prediction {
        let index = argmax(&probs);
        Prediction {
            label: head.classes[index].clone(),
            index,
            confidence: probs[index],
            probs,
            novelty: None,
            novel: false,
        }
    }

    /// Adds the novelty score of the image's plain-view embedding.
    pub fn with_novelty(mut self, head: &Head, plain: &[f32]) -> Prediction {
        if let Some(n) = &head.novelty {
            let score = n.score(plain);
            self.novelty = Some(score);
            self.novel = n.is_unknown(score);
        }
        self
    }

    /// [`is_rejected`] for this prediction.
    pub fn is_rejected(&self, threshold: f32) -> bool {
        is_rejected(self.confidence, self.novel, threshold)
    }

    /// The label to report: the top class, or [`UNKNOWN_LABEL`] when the image is rejected.
    pub fn reported_label(&self, threshold: f32) -> &str {
        if self.is_rejected(threshold) {
            UNKNOWN_LABEL
        } else {
            &self.label
        }
    }
}

/// Classifies `img` with `head`, averaging its probabilities over `views` (the head's own when
/// `None`), with the novelty score of the plain view.
pub fn classify(
    backbone: &Backbone,
    head: &Head,
    img: &RgbImage,
    views: Option<Views>,
) -> Result<Prediction, BackboneError> {
    let n = views.unwrap_or(head.views).count();
    let fitted = preprocess::fit(img, backbone.input_size());
    let embeddings = embed_views(backbone, &fitted, n, view_threads(n))?;
    Ok(
        Prediction::from_probs(head, head.predict_views(&embeddings))
            .with_novelty(head, &embeddings[0]),
    )
}

/// How many threads the `n` views of one frame run on: up to one per core. Views are whole
/// frames that need nothing from each other, and a thread costs tens of microseconds against
/// milliseconds a view, so, unlike a frame's rows, they pay from the second view on (a 4-view
/// frame on a 4-core Pi takes one view's time, not four). One where the caller already runs
/// frames side by side (`finetune`'s workers).
pub fn view_threads(n: usize) -> usize {
    if !backbone::frames_may_spread() {
        return 1;
    }
    cores().min(n).max(1)
}

/// The cores this process may use, read once: `available_parallelism` reads the cgroup's CPU quota
/// from files on every call, work a frame should not repeat.
fn cores() -> usize {
    static CORES: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *CORES.get_or_init(|| std::thread::available_parallelism().map_or(1, |c| c.get()))
}

/// The embeddings of the `n` views of `fitted` (already at the input size), in view order, on
/// `threads` threads. On one, a single view may still split its rows ([`Backbone::set_threads`]).
pub fn embed_views(
    backbone: &Backbone,
    fitted: &RgbImage,
    n: usize,
    threads: usize,
) -> Result<Vec<Vec<f32>>, BackboneError> {
    if threads <= 1 {
        return (0..n)
            .map(|v| backbone.embed(&views::view(fitted, v)))
            .collect();
    }
    // Thread t embeds views t, t + threads, …; the calling thread is thread 0.
    let share = |t: usize| {
        backbone::one_thread_per_frame(|| {
            (t..n)
                .step_by(threads)
                .map(|v| (v, backbone.embed(&views::view(fitted, v))))
                .collect::<Vec<_>>()
        })
    };
    let mut embedded = std::thread::scope(|s| {
        let others: Vec<_> = (1..threads).map(|t| s.spawn(move || share(t))).collect();
        let mut all = share(0);
        for other in others {
            all.extend(
                other
                    .join()
                    .unwrap_or_else(|p| std::panic::resume_unwind(p)),
            );
        }
        all
    });
    embedded.sort_by_key(|(v, _)| *v);
    embedded.into_iter().map(|(_, e)| e).collect()
}

pub struct Classifier {
    pub backbone: Backbone,
    pub head: Head,
}

impl Classifier {
    pub fn new(backbone: Backbone, head: Head) -> Result<Classifier, MismatchError> {
        check_compatible(&head, &backbone)?;
        Ok(Classifier { backbone, head })
    }

    /// Classifies `img` over `views` (the head's own when `None`).
    pub fn predict(
        &self,
        img: &RgbImage,
        views: Option<Views>,
    ) -> Result<Prediction, BackboneError> {
        classify(&self.backbone, &self.head, img, views)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prediction(confidence: f32, novel: bool) -> Prediction {
        Prediction {
            label: "ants".into(),
            index: 0,
            confidence,
            probs: vec![confidence, 1.0 - confidence],
            novelty: None,
            novel,
        }
    }

    #[test]
    fn an_image_is_unknown_below_the_threshold_or_when_novel() {
        assert_eq!(prediction(0.6, false).reported_label(0.5), "ants");
        assert_eq!(prediction(0.4, false).reported_label(0.5), UNKNOWN_LABEL);
        assert_eq!(prediction(0.9, true).reported_label(0.5), UNKNOWN_LABEL);
        // At the threshold the class is kept, as `serve --threshold` always did.
        assert_eq!(prediction(0.5, false).reported_label(0.5), "ants");
        // Without a threshold only novelty rejects, even a probability of 0.
        assert_eq!(prediction(0.0, false).reported_label(NO_THRESHOLD), "ants");
        assert_eq!(
            prediction(0.0, true).reported_label(NO_THRESHOLD),
            UNKNOWN_LABEL
        );
    }

    #[test]
    fn a_class_named_like_the_unknown_label_is_reserved_in_any_case() {
        for name in ["unknown", "Unknown", "UNKNOWN"] {
            assert!(is_reserved_class(name), "{name}");
        }
        for name in ["unknowns", "not unknown", "ants"] {
            assert!(!is_reserved_class(name), "{name}");
        }
    }

    #[test]
    fn class_names_print_as_one_line_fit_a_folder_and_are_unique() {
        let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let refused = |v: &[&str]| check_class_names(&names(v)).unwrap_err().to_string();
        assert_eq!(refused(&["ants", ""]), "class 1's name is empty");
        assert_eq!(
            refused(&["ants", "bees\nedge_mnv2_frames_total 1e9"]),
            "class 1's name contains a newline"
        );
        assert_eq!(
            refused(&["ants", "bees", "ants"]),
            "class 2's name is also class 0's ('ants')"
        );
        let long = "x".repeat(1 << 20);
        assert_eq!(
            refused(&["ants", &long]),
            "class 1's name is 1048576 bytes long (at most 64)"
        );
        assert_eq!(
            refused(&["unknown", "bees"]),
            "class 0's name 'unknown' is reserved: rejected images are labelled 'unknown'"
        );
        assert_eq!(
            refused(&["ants", "../../etc/passwd"]),
            "class 1's name contains '/' (a class is one folder)"
        );
        assert_eq!(
            refused(&["..", "bees"]),
            "class 0's name '..' is not a folder name"
        );
        assert_eq!(
            refused(&["ants", "be\tes"]),
            "class 1's name contains the control character U+0009"
        );
        let longest = "é".repeat(MAX_CLASS_NAME_BYTES / 2);
        for ok in [
            &["ants", "bees"][..],
            &["n01440764", "golden retriever", "café \"quoted\""],
            &["Ants", "ants", &longest],
        ] {
            assert_eq!(check_class_names(&names(ok)), Ok(()), "{ok:?}");
        }
    }
}
