//! The trainable part: a dense softmax layer on the 1280-d embedding — where an embedding becomes
//! a label ([`Head::predict`]).
//!
//! A head is built whole, in one place: [`Head::train`] fits the layer, chooses the temperature and
//! fits the novelty model, and returns them together; [`Head::read`] checks a file before anything
//! sees its head. Nothing fills a field in afterwards.
//! - this file: the head's public API (what it does, whichever file does it), but training;
//! - `model`: the head itself, its dense layer's arrays used in place by every prediction;
//! - `file`: the head file, written and read (every version so far still reads);
//! - `train`: training, from embedded images to a complete head.

mod file;
mod model;
mod train;

pub use file::{head_file_path, HeadFile, HEAD_FILE, HEAD_FORMAT, HEAD_VERSION};
pub use model::{BackboneRef, Dense, Head, HeadError, TrainConfig};
pub use train::{
    adam_step, batch_gradients, batch_loss, EpochStats, Example, Recipe, TrainSummary, Trained,
    ADAM_BETA1, ADAM_BETA2, ADAM_EPS,
};

use std::path::{Path, PathBuf};

use crate::confidence;
use crate::fsutil;

impl Head {
    /// Calibrated class probabilities for one embedding.
    pub fn predict(&self, embedding: &[f32]) -> Vec<f32> {
        self.predict_views(std::slice::from_ref(&embedding.to_vec()))
    }

    /// Calibrated class probabilities of one image, averaged over its views' embeddings.
    pub fn predict_views(&self, views: &[Vec<f32>]) -> Vec<f32> {
        confidence::probs(&self.view_logits(views), self.temperature)
    }

    /// Each view's logits (before temperature).
    pub fn view_logits(&self, views: &[Vec<f32>]) -> Vec<Vec<f32>> {
        self.dense.view_logits(views)
    }

    pub fn save(&self, path: &Path) -> anyhow::Result<()> {
        fsutil::write_atomic(path, &self.to_file_bytes()?)
    }

    /// The head file's bytes: the header line, then the payload it checksums.
    pub fn to_file_bytes(&self) -> anyhow::Result<Vec<u8>> {
        file::to_bytes(self)
    }

    /// Loads a head file, or `DIR/head.json` when given a directory.
    pub fn load(path: &Path) -> Result<Head, HeadError> {
        Ok(Head::read(path)?.head)
    }

    /// As [`Head::load`], keeping where the head came from and its file's checksum.
    pub fn read(path: &Path) -> Result<HeadFile, HeadError> {
        file::read(path)
    }

    /// As [`Head::read`] on bytes already in memory; `path` is only named in errors and kept in
    /// the result. Every check the file reader makes is made here (the fuzz target's entry).
    pub fn parse(bytes: Vec<u8>, path: PathBuf) -> Result<HeadFile, HeadError> {
        file::parse(bytes, path)
    }
}
