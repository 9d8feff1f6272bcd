//! The trainable part: a dense softmax layer on the 1280-d embedding — where an embedding becomes
//! a label (`Head::predict`).
//!
//! Training is Keras' recipe written out with `ndarray`: optional standardisation of the
//! embedding, Adam on (optionally class-weighted) categorical cross-entropy plus L2 weight decay,
//! shuffled mini-batches, early stopping on validation loss with patience, best weights restored.
//! Everything random comes from the seed, so the same data and seed give the same head.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use ndarray::{Array1, Array2, ArrayView1, ArrayView2, Axis};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use thiserror::Error;

use crate::confidence;
use crate::fsutil;
use crate::models::InputSpec;
use crate::novelty::Novelty;
use crate::views::Views;

pub const HEAD_FORMAT: &str = "edge-mnv2-head";
/// Version 2 added the temperature, the views and the novelty model; version 1 heads still load
/// (temperature 1, one view, no novelty score).
pub const HEAD_VERSION: u32 = 2;
/// The file name of the head inside an output directory.
pub const HEAD_FILE: &str = "head.json";

#[derive(Debug, Error)]
pub enum HeadError {
    #[error("{path}: {reason}")]
    File { path: String, reason: String },
    #[error("interrupted")]
    Interrupted,
    #[error("no training samples")]
    NoData,
}

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

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EpochStats {
    pub epoch: usize,
    pub train_loss: f32,
    pub train_accuracy: f32,
    pub val_loss: Option<f32>,
    pub val_accuracy: Option<f32>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainSummary {
    pub epochs_run: usize,
    pub best_epoch: usize,
    pub best_val_loss: Option<f32>,
    pub stopped_early: bool,
    pub class_weights: Vec<f32>,
    pub history: Vec<EpochStats>,
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

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Head {
    pub backbone: BackboneRef,
    pub classes: Vec<String>,
    /// Standardisation statistics (identity when training did not standardise).
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
    /// Row-major [embedding_dim, classes].
    pub weights: Vec<f32>,
    pub bias: Vec<f32>,
    pub config: TrainConfig,
    /// Logits are divided by this before the softmax (fitted on validation; 1 = as trained).
    #[serde(default = "one")]
    pub temperature: f32,
    /// The fixed views the head was trained on; prediction averages over them by default.
    #[serde(default)]
    pub views: Views,
    /// The novelty score's prototypes and threshold; `None` for heads from before it existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub novelty: Option<Novelty>,
}

fn one() -> f32 {
    1.0
}

/// Header line of a head file; the payload (the [`Head`] as JSON) follows on the next line and
/// `payload_sha256` covers exactly its bytes.
#[derive(Debug, Serialize, Deserialize)]
struct FileHeader {
    format: String,
    version: u32,
    payload_sha256: String,
}

struct Params {
    w: Array2<f32>,
    b: Array1<f32>,
}

fn softmax_rows(logits: &mut Array2<f32>) {
    for mut row in logits.rows_mut() {
        let max = row.fold(f32::NEG_INFINITY, |m, &v| m.max(v));
        row.mapv_inplace(|v| (v - max).exp());
        let sum = row.sum();
        row /= sum;
    }
}

fn probabilities(x: &ArrayView2<f32>, p: &Params) -> Array2<f32> {
    let mut z = x.dot(&p.w) + &p.b;
    softmax_rows(&mut z);
    z
}

/// (weighted mean cross-entropy, accuracy) of `p` on `x`, `y`.
fn evaluate(x: &ArrayView2<f32>, y: &[usize], weights: &[f32], p: &Params) -> (f32, f32) {
    let probs = probabilities(x, p);
    let mut loss = 0.0f64;
    let mut wsum = 0.0f64;
    let mut correct = 0;
    for (i, row) in probs.rows().into_iter().enumerate() {
        let w = weights[y[i]] as f64;
        loss -= w * (row[y[i]].max(1e-12) as f64).ln();
        wsum += w;
        if argmax(row.as_slice().expect("standard layout")) == y[i] {
            correct += 1;
        }
    }
    (
        (loss / wsum.max(1e-12)) as f32,
        correct as f32 / y.len().max(1) as f32,
    )
}

/// The training objective on one batch: (1/batch) Σ w_y · −ln softmax(x·W + b)_y, plus
/// (weight_decay / 2)·|W|² (the L2 whose gradient is weight_decay·W). What
/// [`batch_gradients`] differentiates.
pub fn batch_loss(
    x: ArrayView2<f32>,
    y: &[usize],
    class_weights: &[f32],
    w: ArrayView2<f32>,
    b: ArrayView1<f32>,
    weight_decay: f32,
) -> f64 {
    let mut z = x.dot(&w) + b;
    softmax_rows(&mut z);
    let ce: f64 = y
        .iter()
        .enumerate()
        .map(|(i, &yi)| -(class_weights[yi] as f64) * (z[[i, yi]] as f64).ln())
        .sum();
    let l2: f64 = w.iter().map(|&v| (v as f64) * (v as f64)).sum();
    ce / y.len() as f64 + 0.5 * weight_decay as f64 * l2
}

/// The gradients of [`batch_loss`] with respect to W and b.
pub fn batch_gradients(
    x: ArrayView2<f32>,
    y: &[usize],
    class_weights: &[f32],
    w: ArrayView2<f32>,
    b: ArrayView1<f32>,
    weight_decay: f32,
) -> (Array2<f32>, Array1<f32>) {
    let mut g = x.dot(&w) + b;
    softmax_rows(&mut g);
    // d(loss)/d(logits) = w_y (softmax - onehot) / batch
    for (r, &yr) in y.iter().enumerate() {
        let cw = class_weights[yr] / y.len() as f32;
        let mut row = g.row_mut(r);
        row[yr] -= 1.0;
        row *= cw;
    }
    let gw = x.t().dot(&g) + &(&w * weight_decay);
    (gw, g.sum_axis(Axis(0)))
}

/// Adam's first- and second-moment decay rates and its denominator's epsilon (Keras' values).
pub const ADAM_BETA1: f32 = 0.9;
pub const ADAM_BETA2: f32 = 0.999;
pub const ADAM_EPS: f32 = 1e-7;

/// One Adam update (step numbers from 1) of `params` with `grads`, moments `m` and `v` updated
/// in place, bias-corrected.
pub fn adam_step(
    params: &mut [f32],
    m: &mut [f32],
    v: &mut [f32],
    grads: &[f32],
    lr: f32,
    step: i32,
) {
    let (b1, b2) = (ADAM_BETA1, ADAM_BETA2);
    let (c1, c2) = (1.0 - b1.powi(step), 1.0 - b2.powi(step));
    for (((w, m), v), &g) in params.iter_mut().zip(m).zip(v).zip(grads) {
        *m = b1 * *m + (1.0 - b1) * g;
        *v = b2 * *v + (1.0 - b2) * g * g;
        *w -= lr * (*m / c1) / ((*v / c2).sqrt() + ADAM_EPS);
    }
}

/// An owned array's elements as one slice (owned arrays here are in standard layout).
fn flat<D: ndarray::Dimension>(a: &mut ndarray::Array<f32, D>) -> &mut [f32] {
    a.as_slice_mut().expect("owned, standard layout")
}

pub fn argmax(v: &[f32]) -> usize {
    v.iter()
        .enumerate()
        .fold((0, f32::NEG_INFINITY), |(bi, bv), (i, &x)| {
            if x > bv {
                (i, x)
            } else {
                (bi, bv)
            }
        })
        .0
}

impl Head {
    /// Trains a head. `x_*` rows are raw embeddings; `on_epoch` sees each epoch's figures.
    #[allow(clippy::too_many_arguments)]
    pub fn train(
        backbone: BackboneRef,
        classes: Vec<String>,
        x_train: ArrayView2<f32>,
        y_train: &[usize],
        x_val: ArrayView2<f32>,
        y_val: &[usize],
        cfg: &TrainConfig,
        cancel: &AtomicBool,
        mut on_epoch: impl FnMut(&EpochStats),
    ) -> Result<(Head, TrainSummary), HeadError> {
        let (n, d) = x_train.dim();
        let c = classes.len();
        if n == 0 {
            return Err(HeadError::NoData);
        }
        let (mean, std) = if cfg.standardize {
            let mean = x_train.mean_axis(Axis(0)).expect("n > 0");
            let var = x_train.var_axis(Axis(0), 0.0);
            (mean, var.mapv(|v| (v + 1e-6).sqrt()))
        } else {
            (Array1::zeros(d), Array1::ones(d))
        };
        let norm = |x: ArrayView2<f32>| (&x - &mean) / &std;
        let xt = norm(x_train);
        let xv = norm(x_val);

        let mut counts = vec![0usize; c];
        for &y in y_train {
            counts[y] += 1;
        }
        let class_weights: Vec<f32> = if cfg.class_weighting {
            counts
                .iter()
                .map(|&k| {
                    if k == 0 {
                        0.0
                    } else {
                        n as f32 / (c as f32 * k as f32)
                    }
                })
                .collect()
        } else {
            vec![1.0; c]
        };

        let mut p = Params {
            w: Array2::zeros((d, c)),
            b: Array1::zeros(c),
        };
        let (mut mw, mut vw) = (Array2::<f32>::zeros((d, c)), Array2::<f32>::zeros((d, c)));
        let (mut mb, mut vb) = (Array1::<f32>::zeros(c), Array1::<f32>::zeros(c));
        let mut step = 0i32;
        let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
        let mut order: Vec<usize> = (0..n).collect();
        let has_val = !y_val.is_empty();
        let mut best = (f32::INFINITY, 0usize, p.w.clone(), p.b.clone());
        let mut history = Vec::new();
        let mut since_best = 0;
        let bs = cfg.batch_size.max(1);

        for epoch in 1..=cfg.epochs.max(1) {
            if cancel.load(Ordering::Relaxed) {
                return Err(HeadError::Interrupted);
            }
            order.shuffle(&mut rng);
            for chunk in order.chunks(bs) {
                let xb = xt.select(Axis(0), chunk);
                let yb: Vec<usize> = chunk.iter().map(|&i| y_train[i]).collect();
                let (gw, gb) = batch_gradients(
                    xb.view(),
                    &yb,
                    &class_weights,
                    p.w.view(),
                    p.b.view(),
                    cfg.weight_decay,
                );
                step += 1;
                let gw = gw.as_slice().expect("standard layout");
                let gb = gb.as_slice().expect("standard layout");
                adam_step(
                    flat(&mut p.w),
                    flat(&mut mw),
                    flat(&mut vw),
                    gw,
                    cfg.lr,
                    step,
                );
                adam_step(
                    flat(&mut p.b),
                    flat(&mut mb),
                    flat(&mut vb),
                    gb,
                    cfg.lr,
                    step,
                );
            }
            let (train_loss, train_accuracy) = evaluate(&xt.view(), y_train, &class_weights, &p);
            let (val_loss, val_accuracy) = if has_val {
                let (l, a) = evaluate(&xv.view(), y_val, &class_weights, &p);
                (Some(l), Some(a))
            } else {
                (None, None)
            };
            let stats = EpochStats {
                epoch,
                train_loss,
                train_accuracy,
                val_loss,
                val_accuracy,
            };
            on_epoch(&stats);
            history.push(stats);
            // Without validation data, the training loss is the only signal left.
            let monitored = val_loss.unwrap_or(train_loss);
            if monitored < best.0 {
                best = (monitored, epoch, p.w.clone(), p.b.clone());
                since_best = 0;
            } else {
                since_best += 1;
                if since_best >= cfg.patience.max(1) {
                    break;
                }
            }
        }
        let epochs_run = history.len();
        let (best_loss, best_epoch, w, b) = best;
        let head = Head {
            backbone,
            classes,
            mean: mean.to_vec(),
            std: std.to_vec(),
            weights: w.iter().copied().collect(),
            bias: b.to_vec(),
            config: cfg.clone(),
            temperature: 1.0,
            views: Views::ONE,
            novelty: None,
        };
        let summary = TrainSummary {
            epochs_run,
            best_epoch,
            best_val_loss: has_val.then_some(best_loss),
            stopped_early: epochs_run < cfg.epochs.max(1),
            class_weights,
            history,
        };
        Ok((head, summary))
    }

    fn params(&self) -> Params {
        let d = self.mean.len();
        let c = self.classes.len();
        Params {
            w: Array2::from_shape_vec((d, c), self.weights.clone()).expect("shape checked on load"),
            b: Array1::from(self.bias.clone()),
        }
    }

    /// Logits (before temperature) for each row of raw embeddings.
    pub fn logits_batch(&self, x: ArrayView2<f32>) -> Array2<f32> {
        let mean = Array1::from(self.mean.clone());
        let std = Array1::from(self.std.clone());
        let xn = (&x - &mean) / &std;
        let p = self.params();
        xn.dot(&p.w) + &p.b
    }

    /// Calibrated class probabilities for each row of raw embeddings.
    pub fn predict_batch(&self, x: ArrayView2<f32>) -> Array2<f32> {
        let mut z = self.logits_batch(x) / self.temperature;
        softmax_rows(&mut z);
        z
    }

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
        let d = self.mean.len();
        let flat: Vec<f32> = views.iter().flatten().copied().collect();
        let x = ArrayView2::from_shape((views.len(), d), &flat).expect("embedding_dim per view");
        self.logits_batch(x)
            .rows()
            .into_iter()
            .map(|r| r.to_vec())
            .collect()
    }

    /// The novelty score of an image (from its plain view), when the head has a novelty model.
    pub fn novelty(&self, plain: &[f32]) -> Option<f32> {
        self.novelty.as_ref().map(|n| n.score(plain))
    }

    pub fn save(&self, path: &Path) -> anyhow::Result<()> {
        fsutil::write_atomic(path, &self.to_file_bytes()?)
    }

    /// The head file's bytes: the header line, then the payload it checksums.
    pub fn to_file_bytes(&self) -> anyhow::Result<Vec<u8>> {
        let payload = serde_json::to_string(self)?;
        let header = FileHeader {
            format: HEAD_FORMAT.into(),
            version: HEAD_VERSION,
            payload_sha256: hex::encode(Sha256::digest(payload.as_bytes())),
        };
        Ok(format!("{}\n{payload}\n", serde_json::to_string(&header)?).into_bytes())
    }

    /// Loads a head file, or `DIR/head.json` when given a directory.
    pub fn load(path: &Path) -> Result<Head, HeadError> {
        Ok(Head::read(path)?.head)
    }

    /// As [`Head::load`], keeping where the head came from and its file's checksum.
    pub fn read(path: &Path) -> Result<HeadFile, HeadError> {
        let path = head_file_path(path);
        let fail = |reason: String| HeadError::File {
            path: path.display().to_string(),
            reason,
        };
        let bytes = std::fs::read(&path).map_err(|e| {
            fail(match e.kind() {
                std::io::ErrorKind::NotFound => {
                    "no such file (train one with `edge-mnv2 finetune`)".into()
                }
                _ => e.to_string(),
            })
        })?;
        Head::parse(bytes, path)
    }

    /// As [`Head::read`] on bytes already in memory; `path` is only named in errors and kept in
    /// the result. Every check the file reader makes is made here (the fuzz target's entry).
    pub fn parse(bytes: Vec<u8>, path: PathBuf) -> Result<HeadFile, HeadError> {
        let fail = |reason: String| HeadError::File {
            path: path.display().to_string(),
            reason,
        };
        let sha256 = hex::encode(Sha256::digest(&bytes));
        let text = String::from_utf8(bytes)
            .map_err(|_| fail("not an edge-mnv2 head file (not text)".into()))?;
        let (first, rest) = text.split_once('\n').unwrap_or((&text, ""));
        let header: FileHeader =
            serde_json::from_str(first).map_err(|_| fail("not an edge-mnv2 head file".into()))?;
        if header.format != HEAD_FORMAT {
            return Err(fail(format!(
                "not an edge-mnv2 head file (format '{}')",
                header.format
            )));
        }
        if header.version != HEAD_VERSION && header.version != 1 {
            return Err(fail(format!(
                "head file version {} is not supported by this edge-mnv2 (reads version {HEAD_VERSION})",
                header.version
            )));
        }
        let payload = rest.strip_suffix('\n').unwrap_or(rest);
        if hex::encode(Sha256::digest(payload.as_bytes())) != header.payload_sha256 {
            return Err(fail(
                "corrupt or truncated head file (checksum mismatch)".into(),
            ));
        }
        let head: Head =
            serde_json::from_str(payload).map_err(|e| fail(format!("corrupt head file: {e}")))?;
        let (d, c) = (head.mean.len(), head.classes.len());
        if head.std.len() != d
            || head.weights.len() != d * c
            || head.bias.len() != c
            || d != head.backbone.embedding_dim
            || c < 2
            || !(head.temperature.is_finite() && head.temperature > 0.0)
            || head
                .novelty
                .as_ref()
                .is_some_and(|n| n.per_class.len() != c || n.dim() != d)
        {
            return Err(fail(
                "inconsistent head file (array sizes do not match)".into(),
            ));
        }
        Ok(HeadFile { head, path, sha256 })
    }
}

/// A head as read from its file: where it came from and the checksum of the file's bytes (what
/// the service's health, logs and reloads name a head by).
#[derive(Debug, Clone)]
pub struct HeadFile {
    pub head: Head,
    pub path: PathBuf,
    pub sha256: String,
}

/// The head file a `--head` argument names: the file itself, or `DIR/head.json`.
pub fn head_file_path(path: &Path) -> PathBuf {
    if path.is_dir() {
        path.join(HEAD_FILE)
    } else {
        path.to_path_buf()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bref() -> BackboneRef {
        BackboneRef {
            name: "test".into(),
            sha256: "0".repeat(64),
            embedding_dim: 2,
            input: InputSpec {
                layout: crate::models::Layout::Nhwc,
                dtype: crate::models::InputDtype::U8,
                size: 224,
                mean: None,
                std: None,
            },
            preprocessing: "test".into(),
        }
    }

    /// Two Gaussian-ish blobs, deterministic.
    fn blobs(n: usize) -> (Array2<f32>, Vec<usize>) {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        use rand::Rng;
        let mut x = Array2::zeros((n, 2));
        let mut y = Vec::new();
        for i in 0..n {
            let c = i % 2;
            x[[i, 0]] = if c == 0 { -1.0 } else { 1.0 } + rng.random_range(-0.8..0.8);
            x[[i, 1]] = rng.random_range(-1.0..1.0);
            y.push(c);
        }
        (x, y)
    }

    #[test]
    fn learns_separable_data_deterministically_and_round_trips() {
        let (x, y) = blobs(200);
        let (xv, yv) = blobs(40);
        let cfg = TrainConfig {
            epochs: 50,
            ..Default::default()
        };
        let classes = vec!["a".to_string(), "b".to_string()];
        let no = AtomicBool::new(false);
        let train = || {
            Head::train(
                bref(),
                classes.clone(),
                x.view(),
                &y,
                xv.view(),
                &yv,
                &cfg,
                &no,
                |_| {},
            )
            .unwrap()
        };
        let (h1, s1) = train();
        let (h2, s2) = train();
        assert_eq!(h1.weights, h2.weights);
        assert_eq!(s1.history, s2.history);
        assert!(s1.history[s1.best_epoch - 1].val_accuracy.unwrap() > 0.9);
        assert_eq!(argmax(&h1.predict(&[-2.0, 0.0])), 0);
        assert_eq!(argmax(&h1.predict(&[2.0, 0.0])), 1);

        let d = tempfile::tempdir().unwrap();
        let p = d.path().join(HEAD_FILE);
        h1.save(&p).unwrap();
        let back = Head::load(d.path()).unwrap();
        assert_eq!(back.weights, h1.weights);
        assert_eq!(back.predict(&[0.3, 0.1]), h1.predict(&[0.3, 0.1]));

        let text = std::fs::read_to_string(&p).unwrap();
        std::fs::write(&p, &text[..text.len() - 40]).unwrap();
        let e = Head::load(&p).unwrap_err();
        assert!(e.to_string().contains("checksum mismatch"), "{e}");
        std::fs::write(&p, "hello\n").unwrap();
        assert!(Head::load(&p)
            .unwrap_err()
            .to_string()
            .contains("not an edge-mnv2 head file"));
    }

    #[test]
    fn cancel_stops_training() {
        let (x, y) = blobs(20);
        let yes = AtomicBool::new(true);
        let classes = vec!["a".to_string(), "b".to_string()];
        let r = Head::train(
            bref(),
            classes,
            x.view(),
            &y,
            x.view(),
            &y,
            &TrainConfig::default(),
            &yes,
            |_| {},
        );
        assert!(matches!(r, Err(HeadError::Interrupted)));
    }
}
