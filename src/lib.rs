//! edge-mnv2: a frozen, ImageNet-pretrained MobileNetV2 (run by tract) turns images into
//! embeddings; a small softmax head trained on the device turns embeddings into labels.
//!
//! - [`models`]: the model manifest, lookup and checksum verification.
//! - [`preprocess`]: file or bytes → decoded, upright, resized RGB → model input tensor.
//! - [`backbone`]: image → 1280-d embedding (and ImageNet scores) — `Backbone::embed`.
//! - [`fsutil`]: atomic file writes.

pub mod backbone;
pub mod fsutil;
pub mod models;
pub mod preprocess;
