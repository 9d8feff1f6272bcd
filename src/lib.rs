//! edge-mnv2: a frozen, ImageNet-pretrained MobileNetV2 (run by tract) turns images into
//! embeddings; a small softmax head trained on the device turns embeddings into labels.
//!
//! Where a frame becomes an embedding: [`backbone::Backbone::embed`]. Where an embedding becomes
//! a label: [`head::Head::predict`] (with the backbone: [`classifier::Classifier::predict`]).
//! Where either is loaded: [`loader`].
//!
//! The modules, in layers: a module imports only from layers below its own (or beside it, without
//! a cycle). `tests/layout.rs` checks this on every test run.
//!
//! Clients:
//! - [`push`]: `push-head`, the client of head rollouts: signed commands to many boards over
//!   their MQTT broker or each one's HTTP API.
//!
//! The service:
//! - [`serve`]: the classification service: frame slot, capture and inference loops, typed
//!   results, Prometheus text, the config file, the API token, the HTTP API (feature `http`), MQTT
//!   publishing and Home Assistant discovery (feature `mqtt`), and head rollout (install, rollback,
//!   the signed commands and answers both sides use).
//!
//! Jobs:
//! - [`finetune`]: the `finetune` / `evaluate` jobs and their reports.
//! - [`calibrate`]: measures every precision × thread count here and picks this board's choice.
//! - [`capture`]: saving frames as a labelled folder.
//!
//! Loading:
//! - [`loader`]: model name or path + precision (or this board's calibration) → backbone; head
//!   file → head, checked against its backbone. The one way either is loaded.
//!
//! Inference and data:
//! - [`classifier`]: backbone + head checked to belong together; image → prediction.
//! - [`features`]: embeddings of a whole image set, in parallel, with the on-disk cache.
//! - [`backbone`]: image → 1280-d embedding (and ImageNet scores).
//! - [`source`]: frame sources (folder, image, MJPEG stream file; V4L2 camera with the `camera`
//!   feature) and the decode every frame goes through.
//!
//! Foundations:
//! - [`head`]: embedding → label: the softmax head (its dense layer as `ndarray` arrays), its
//!   file (every version still reads) and its training, which returns a complete head.
//! - [`numeric`]: the one softmax and the one argmax every probability goes through.
//! - [`dataset`]: a labelled folder and its deterministic splits (held-out copies of training
//!   images set aside).
//! - [`discover`]: which files are images and how folders are walked (hidden entries skipped,
//!   file links followed, folder links only inside the folder read and never to a folder twice),
//!   for every reader of image folders.
//! - [`augment`]: random flip / rotation / zoom views for training.
//! - [`views`]: the fixed views (plain, flip, centre crop, its flip) training and prediction share.
//! - [`novelty`]: how far an embedding is from the training data, and the `unknown` threshold.
//! - [`confidence`]: temperature scaling, expected calibration error, reliability bins.
//! - [`plots`] (feature `plots`): the reports' SVG pictures.
//! - [`tflite`]: reads a quantized TFLite MobileNet into a tract graph, in f32, int8 or f16, with
//!   operators of our own where tract has no fast kernel.
//! - [`preprocess`]: file or bytes → decoded, upright, resized RGB → model input tensor; the
//!   preprocessing version heads and cache entries record.
//! - [`models`]: the model manifest, lookup and checksums; [`models::ModelFormat`] and
//!   [`models::Precision`].
//! - [`calibration`]: this board's calibration file (which precision and threads to use).
//! - [`fetch`]: `models fetch`, a verified, atomic model download into the user cache.
//! - [`metrics`]: held-out accuracy, per-class precision/recall/F1, confusion matrix.
//! - [`fsutil`]: atomic file writes, with the mode the umask gives (not a temporary file's 0600).

pub mod augment;
pub mod backbone;
pub mod calibrate;
pub mod calibration;
pub mod capture;
pub mod classifier;
pub mod confidence;
pub mod dataset;
pub mod discover;
pub mod features;
pub mod fetch;
pub mod finetune;
pub mod fsutil;
pub mod head;
pub mod loader;
pub mod metrics;
pub mod models;
pub mod novelty;
pub mod numeric;
#[cfg(feature = "plots")]
pub mod plots;
pub mod preprocess;
pub mod push;
pub mod serve;
pub mod source;
pub mod tflite;
pub mod views;
