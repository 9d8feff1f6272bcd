//! The one way a backbone or a head is loaded: which model file, in which precision, on how many
//! threads, and which head goes with it.
//!
//! Every command and the service come through here, so the rules live once:
//! - the model is `--model` (a manifest name or a path), else the one a head was trained on,
//!   else the manifest's default;
//! - a TFLite backbone runs in the precision asked for, else the one this board's calibration
//!   chose for that very file (with its thread count), else int8 (`Precision::REFERENCE`) on
//!   one thread;
//! - a head is checked against the backbone it will run on before anything is classified, and its
//!   class names against the one rule for them (`classifier::check_class_names`).

use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context, Result};

use crate::backbone::Backbone;
use crate::calibration;
use crate::classifier::{check_class_names, check_compatible, Classifier};
use crate::head::{Head, HeadFile};
use crate::models::{self, Manifest, ModelFormat, Precision, ResolvedModel};

/// Which backbone to load: plain values, as a command line or a config file gives them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BackboneChoice {
    /// A manifest name or a path; `None`: the default model (or, for a head, its own).
    pub model: Option<String>,
    /// The arithmetic; `None`: this board's calibration, else int8 (LiteRT's own arithmetic, so
    /// the same numbers on every machine).
    pub precision: Option<Precision>,
}

/// The model file `model` names (a manifest name, a path, or `None` for the default), verified.
pub fn resolve(model: Option<&str>) -> Result<ResolvedModel> {
    Ok(models::resolve(&Manifest::builtin(), model)?)
}

/// Loads the backbone `choice` names. `with_scores` keeps the ImageNet classifier layers
/// (`classify`); without it the graph ends at the embedding.
pub fn backbone(choice: &BackboneChoice, with_scores: bool) -> Result<Backbone> {
    let resolved = resolve(choice.model.as_deref())?;
    let calibrated = match resolved.spec.format {
        ModelFormat::Tflite => calibration::board_choice(&resolved)?,
        ModelFormat::Onnx => None,
    };
    let (precision, threads) = pick_precision(choice.precision, calibrated.as_ref());
    let mut backbone = backbone_in(&resolved, precision, with_scores)?;
    if let Some(threads) = threads {
        backbone.set_threads(threads);
    }
    Ok(backbone)
}

/// The precision a backbone runs in: the one asked for, else the board's calibrated one, else
/// int8; and the calibrated thread count, if any applies (`None`: one thread). The thread count
/// was measured for its own precision only, so it goes with that precision and no other.
fn pick_precision(
    asked: Option<Precision>,
    calibrated: Option<&calibration::Choice>,
) -> (Precision, Option<usize>) {
    let precision = asked
        .or(calibrated.map(|c| c.precision))
        .unwrap_or(Precision::REFERENCE);
    let threads = calibrated
        .filter(|c| c.precision == precision)
        .map(|c| c.threads);
    (precision, threads)
}

/// Loads `model` in exactly `precision` on one thread, whatever the board's calibration says
/// (what `calibrate` measures with).
pub fn backbone_in(
    model: &ResolvedModel,
    precision: Precision,
    with_scores: bool,
) -> Result<Backbone> {
    Ok(Backbone::load_with_precision(
        model,
        with_scores,
        precision,
    )?)
}

/// A head and the backbone it was trained on (its recorded model unless `choice` names another),
/// checked to belong together.
pub fn classifier(head: &Path, choice: &BackboneChoice) -> Result<Classifier> {
    let (head, backbone) = head_and_backbone(head, choice)?;
    Ok(Classifier::new(backbone, head.head)?)
}

/// As [`classifier`], keeping the head's file and checksum (what the service names a head by);
/// the head file is read once.
pub fn head_and_backbone(head: &Path, choice: &BackboneChoice) -> Result<(HeadFile, Backbone)> {
    let head = self::head(head)?;
    let backbone = backbone(&for_head(&head, choice), false)?;
    check_compatible(&head.head, &backbone).with_context(|| format!("{}", head.path.display()))?;
    Ok((head, backbone))
}

/// `choice` with the model filled in from the head's record when it names none.
fn for_head(head: &HeadFile, choice: &BackboneChoice) -> BackboneChoice {
    BackboneChoice {
        model: Some(
            choice
                .model
                .clone()
                .unwrap_or_else(|| head.head.backbone.name.clone()),
        ),
        precision: choice.precision,
    }
}

/// Reads a head (a file, or the directory finetune wrote it to) for a backbone that is already
/// running: what a service reload swaps in.
pub fn head_for(path: &Path, backbone: &Backbone) -> Result<HeadFile> {
    let head = head(path)?;
    check_compatible(&head.head, backbone).with_context(|| format!("{}", head.path.display()))?;
    Ok(head)
}

/// Reads a head (a file, or the directory finetune wrote it to) with every check that does not
/// need its backbone: the file's own ([`Head::read`]) and its class names'.
pub fn head(path: &Path) -> Result<HeadFile> {
    let head = Head::read(path)?;
    check_class_names(&head.head.classes).with_context(|| format!("{}", head.path.display()))?;
    Ok(head)
}

/// A head delivered as bytes (a rollout) that is to live at `path`, for a backbone that is
/// already running: every check [`head_for`] makes, its errors naming what is wrong and not
/// where anything is kept (the service answers them to whoever sent the head).
pub fn head_from_bytes(bytes: Vec<u8>, path: PathBuf, backbone: &Backbone) -> Result<HeadFile> {
    let head = Head::parse(bytes, path).map_err(|e| anyhow!(e.reason()))?;
    check_class_names(&head.head.classes)?;
    check_compatible(&head.head, backbone)?;
    Ok(head)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::calibration::Choice;

    #[test]
    fn precision_is_the_asked_one_else_the_calibrated_one_else_int8() {
        let f32_on_two = Choice {
            precision: Precision::F32,
            threads: 2,
        };
        // Nothing asked, no calibration: LiteRT's own arithmetic, on one thread.
        assert_eq!(pick_precision(None, None), (Precision::Int8, None));
        // The board's calibration, with the thread count it measured.
        assert_eq!(
            pick_precision(None, Some(&f32_on_two)),
            (Precision::F32, Some(2))
        );
        // Asked for explicitly, it wins; the calibrated thread count goes with its own precision.
        assert_eq!(
            pick_precision(Some(Precision::Int8), Some(&f32_on_two)),
            (Precision::Int8, None)
        );
        assert_eq!(
            pick_precision(Some(Precision::F32), Some(&f32_on_two)),
            (Precision::F32, Some(2))
        );
        assert_eq!(
            pick_precision(Some(Precision::F16), None),
            (Precision::F16, None)
        );
    }
}
