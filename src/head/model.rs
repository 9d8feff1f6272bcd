//! The head as it is held in memory: the dense layer's arrays, the classes they score, and what
//! makes its answers honest (temperature, views, novelty model).

use ndarray::{Array1, Array2, ArrayView2};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::models::InputSpec;
use crate::novelty::Novelty;
use crate::views::Views;

#[derive(Debug, Error)]
pub enum HeadError {
    #[error("{path}: {reason}")]
    File { path: String, reason: String },
    #[error("interrupted")]
    Interrupted,
    #[error("no training samples")]
    NoData,
}

impl HeadError {
    /// What is wrong, without the file's path: for a head that arrived as bytes, where they were
    /// kept on their way in is nobody's business.
    pub fn reason(&self) -> String {
        match self {
            HeadError::File { reason, .. } => reason.clone(),
            other => other.to_string(),
        }
    }
}

/// What the head was trained on top of; a head only runs on the same backbone and preprocessing.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BackboneRef {
    pub name: String,
    pub sha256: String,
    pub embedding_dim: usize,
    pub input: InputSpec,
    pub preprocessing: String,
}

/// The dense layer: each embedding standardised, then `x·W + b`. The arrays are used where they
/// are: a prediction copies none of them.
#[derive(Debug, Clone, PartialEq)]
pub struct Dense {
    /// Standardisation statistics, [embedding_dim] (identity when training did not standardise).
    pub mean: Array1<f32>,
    pub std: Array1<f32>,
    /// [embedding_dim, classes].
    pub weights: Array2<f32>,
    /// [classes].
    pub bias: Array1<f32>,
}

impl Dense {
    /// A layer that has learnt nothing: identity standardisation, zero weights and bias (every
    /// class equally likely).
    pub fn untrained(embedding_dim: usize, classes: usize) -> Dense {
        Dense {
            mean: Array1::zeros(embedding_dim),
            std: Array1::ones(embedding_dim),
            weights: Array2::zeros((embedding_dim, classes)),
            bias: Array1::zeros(classes),
        }
    }

    /// Logits (before temperature) for each row of raw embeddings.
    pub fn logits(&self, x: ArrayView2<f32>) -> Array2<f32> {
        let xn = (&x - &self.mean) / &self.std;
        xn.dot(&self.weights) + &self.bias
    }

    /// Each view's logits (before temperature).
    pub fn view_logits(&self, views: &[Vec<f32>]) -> Vec<Vec<f32>> {
        let d = self.mean.len();
        let flat: Vec<f32> = views.iter().flatten().copied().collect();
        let x = ArrayView2::from_shape((views.len(), d), &flat).expect("embedding_dim per view");
        self.logits(x)
            .rows()
            .into_iter()
            .map(|r| r.to_vec())
            .collect()
    }
}

/// A trained head: the layer, the classes it names, and what makes its answers honest (the
/// temperature, the views it averages, the novelty model).
#[derive(Debug, Clone)]
pub struct Head {
    pub backbone: BackboneRef,
    pub classes: Vec<String>,
    pub dense: Dense,
    pub config: TrainConfig,
    /// Logits are divided by this before the softmax (fitted on validation; 1 = as trained).
    pub temperature: f32,
    /// The fixed views the head was trained on; prediction averages over them by default.
    pub views: Views,
    /// The novelty score's prototypes and threshold; `None` for heads from before it existed.
    pub novelty: Option<Novelty>,
}

/// How the dense layer is trained; the head records it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainConfig {
    pub epochs: usize,
    pub patience: usize,
    pub lr: f32,
    pub batch_size: usize,
    /// L2 penalty on the weights (coupled, as Keras' kernel_regularizer).
    pub weight_decay: f32,
    /// Weight each class by n / (classes × n_class) so a rare class counts as much as a common one.
    pub class_weighting: bool,
    /// Standardise each embedding dimension with the training mean and standard deviation.
    pub standardize: bool,
    pub seed: u64,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            epochs: 100,
            patience: 10,
            lr: 1e-3,
            batch_size: 32,
            weight_decay: 1e-4,
            class_weighting: true,
            standardize: true,
            seed: 0,
        }
    }
}
