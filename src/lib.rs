//! edge-mnv2: a frozen, ImageNet-pretrained MobileNetV2 (run by tract) turns images into
//! embeddings; a small softmax head trained on the device turns embeddings into labels.
//!
//! - [`models`]: the model manifest, lookup and checksum verification.
//! - [`fetch`]: `models fetch`, a verified, atomic model download into the user cache.
//! - [`preprocess`]: file or bytes → decoded, upright, resized RGB → model input tensor.
//! - [`backbone`]: image → 1280-d embedding (and ImageNet scores): `Backbone::embed`.
//! - [`augment`]: random flip / rotation / zoom views for training.
//! - [`dataset`]: a labelled folder and its deterministic splits.
//! - [`features`]: embeddings of a whole image set, in parallel, with the on-disk cache.
//! - [`head`]: embedding → label: `Head::predict`, `Head::train`, the head file.
//! - [`metrics`]: held-out accuracy, per-class precision/recall/F1, confusion matrix.
//! - [`classifier`]: backbone + head checked to belong together.
//! - [`finetune`]: the `finetune` / `evaluate` jobs and their reports.
//! - [`fsutil`]: atomic file writes.
//! - [`source`]: frame sources (folder, image, MJPEG stream file; V4L2 camera in `camera`) and
//!   the decode every frame goes through.
//! - [`serve`]: the classification service (capture → inference → JSON lines, HTTP in `http`).
//! - [`capture`]: saving frames as a labelled folder.

pub mod augment;
pub mod backbone;
pub mod calibration;
#[cfg(feature = "camera")]
pub mod camera;
pub mod capture;
pub mod classifier;
pub mod dataset;
pub mod features;
pub mod fetch;
pub mod finetune;
pub mod fsutil;
pub mod head;
pub mod metrics;
pub mod models;
pub mod preprocess;
pub mod serve;
pub mod source;
pub mod tflite;
