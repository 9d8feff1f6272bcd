//! Training: Keras' recipe written out with `ndarray` — optional standardisation of the
//! embedding, Adam on (optionally class-weighted) categorical cross-entropy plus L2 weight decay,
//! shuffled mini-batches, early stopping on validation loss with patience, best weights restored —
//! then what makes the head honest about itself, both chosen on the validation split: the
//! temperature and the novelty threshold. [`train`] returns all of it as one complete head.
//! Everything random comes from the seed, so the same data and seed give the same head.

use std::sync::atomic::{AtomicBool, Ordering};

use ndarray::{Array1, Array2, ArrayView1, ArrayView2, Axis};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::model::{BackboneRef, Dense, Head, HeadError, TrainConfig};
use crate::confidence::{self, TemperatureChoice};
use crate::novelty::Novelty;
use crate::numeric::{argmax, softmax_rows};
use crate::views::Views;

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

/// One embedded image: its class and each view's embedding (view 0 the plain image).
#[derive(Debug, Clone, Copy)]
pub struct Example<'a> {
    pub label: usize,
    pub views: &'a [Vec<f32>],
}

/// How a head is trained: the layer's settings, the fixed views it is trained on and predicts
/// with, and the share of known validation images its novelty threshold keeps.
#[derive(Debug, Clone)]
pub struct Recipe {
    pub config: TrainConfig,
    pub views: Views,
    pub keep_rate: f32,
}

/// A complete head, with what training measured on the way to it.
#[derive(Debug, Clone)]
pub struct Trained {
    pub head: Head,
    pub summary: TrainSummary,
    /// How the head's temperature was chosen on the validation split.
    pub temperature: TemperatureChoice,
}

impl Head {
    /// Trains a complete head: the layer on every view of the `train` images (early stopping
    /// watches the plain view of the `val` images), then the temperature chosen on all of `val`'s
    /// views (as prediction averages them) and the novelty model fitted on the plain training
    /// images, its threshold keeping `recipe.keep_rate` of the validation images; `on_epoch` sees
    /// each epoch's figures.
    pub fn train(
        backbone: BackboneRef,
        classes: Vec<String>,
        train: &[Example],
        val: &[Example],
        recipe: &Recipe,
        cancel: &AtomicBool,
        on_epoch: impl FnMut(&EpochStats),
    ) -> Result<Trained, HeadError> {
        let d = backbone.embedding_dim;
        let every_view = train.iter().flat_map(|e| e.views.iter().map(|v| &v[..]));
        let x_train = matrix(every_view.collect(), d);
        let y_train: Vec<usize> = train
            .iter()
            .flat_map(|e| std::iter::repeat_n(e.label, e.views.len()))
            .collect();
        let x_val = plain_rows(val, d);
        let y_val = labels(val);
        let split = |x, y| Split { x, y };
        let (dense, summary) = fit(
            split(x_train.view(), &y_train),
            split(x_val.view(), &y_val),
            classes.len(),
            &recipe.config,
            cancel,
            on_epoch,
        )?;

        let logits: Vec<Vec<Vec<f32>>> = val.iter().map(|e| dense.view_logits(e.views)).collect();
        let temperature = confidence::choose_temperature(&logits, &y_val);
        let mut novelty = Novelty::fit(
            &plain_rows(train, d),
            &labels(train),
            classes.len(),
            recipe.config.seed,
        );
        let known = novelty.scores(&x_val);
        novelty.set_threshold(&known, recipe.keep_rate);

        let head = Head {
            backbone,
            classes,
            dense,
            config: recipe.config.clone(),
            temperature: temperature.temperature,
            views: recipe.views,
            novelty: Some(novelty),
        };
        Ok(Trained {
            head,
            summary,
            temperature,
        })
    }
}

fn labels(examples: &[Example]) -> Vec<usize> {
    examples.iter().map(|e| e.label).collect()
}

/// The plain view of each image, one row each.
fn plain_rows(examples: &[Example], d: usize) -> Array2<f32> {
    matrix(examples.iter().map(|e| &e.views[0][..]).collect(), d)
}

fn matrix(rows: Vec<&[f32]>, d: usize) -> Array2<f32> {
    let mut x = Array2::zeros((rows.len(), d));
    for (i, r) in rows.into_iter().enumerate() {
        x.row_mut(i).assign(&ArrayView1::from(r));
    }
    x
}

struct Params {
    w: Array2<f32>,
    b: Array1<f32>,
}

/// softmax(x·W + b), one row per row of `x`: the forward pass that evaluation, the loss and its
/// gradients share.
fn probabilities(x: ArrayView2<f32>, w: ArrayView2<f32>, b: ArrayView1<f32>) -> Array2<f32> {
    let mut z = x.dot(&w) + b;
    softmax_rows(&mut z);
    z
}

/// (weighted mean cross-entropy, accuracy) of `p` on `x`, `y`.
fn evaluate(x: &ArrayView2<f32>, y: &[usize], weights: &[f32], p: &Params) -> (f32, f32) {
    let probs = probabilities(x.view(), p.w.view(), p.b.view());
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
    let z = probabilities(x, w, b);
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
    let mut g = probabilities(x, w, b);
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

/// The dense layer trained on `train`, with early stopping on `val` (on the training loss when
/// `val` is empty); `on_epoch` sees each epoch's figures. Rows of `x` are raw embeddings.
fn fit(
    train: Split,
    val: Split,
    c: usize,
    cfg: &TrainConfig,
    cancel: &AtomicBool,
    mut on_epoch: impl FnMut(&EpochStats),
) -> Result<(Dense, TrainSummary), HeadError> {
    let (x_train, y_train, x_val, y_val) = (train.x, train.y, val.x, val.y);
    let (n, d) = x_train.dim();
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
    let dense = Dense {
        mean,
        std,
        weights: w,
        bias: b,
    };
    let summary = TrainSummary {
        epochs_run,
        best_epoch,
        best_val_loss: has_val.then_some(best_loss),
        stopped_early: epochs_run < cfg.epochs.max(1),
        class_weights,
        history,
    };
    Ok((dense, summary))
}

/// One split's rows of raw embeddings and their classes.
#[derive(Clone, Copy)]
struct Split<'a> {
    x: ArrayView2<'a, f32>,
    y: &'a [usize],
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::head::HEAD_FILE;
    use crate::models::InputSpec;

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

    /// Two Gaussian-ish blobs, deterministic: each image's one view and its class.
    fn blobs(n: usize) -> (Vec<Vec<Vec<f32>>>, Vec<usize>) {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        use rand::Rng;
        let mut x = Vec::new();
        let mut y = Vec::new();
        for i in 0..n {
            let c = i % 2;
            let x0 = if c == 0 { -1.0 } else { 1.0 } + rng.random_range(-0.8..0.8);
            x.push(vec![vec![x0, rng.random_range(-1.0..1.0)]]);
            y.push(c);
        }
        (x, y)
    }

    fn examples<'a>(x: &'a [Vec<Vec<f32>>], y: &[usize]) -> Vec<Example<'a>> {
        x.iter()
            .zip(y)
            .map(|(views, &label)| Example { label, views })
            .collect()
    }

    fn recipe(config: TrainConfig) -> Recipe {
        Recipe {
            config,
            views: Views::ONE,
            keep_rate: 0.9,
        }
    }

    #[test]
    fn learns_separable_data_deterministically_and_round_trips() {
        let (x, y) = blobs(200);
        let (xv, yv) = blobs(40);
        let recipe = recipe(TrainConfig {
            epochs: 50,
            ..Default::default()
        });
        let classes = vec!["a".to_string(), "b".to_string()];
        let no = AtomicBool::new(false);
        let train = || {
            Head::train(
                bref(),
                classes.clone(),
                &examples(&x, &y),
                &examples(&xv, &yv),
                &recipe,
                &no,
                |_| {},
            )
            .unwrap()
        };
        let (t1, t2) = (train(), train());
        let (h1, s1) = (&t1.head, &t1.summary);
        assert_eq!(h1.dense.weights, t2.head.dense.weights);
        assert_eq!(s1.history, t2.summary.history);
        assert!(s1.history[s1.best_epoch - 1].val_accuracy.unwrap() > 0.9);
        assert_eq!(argmax(&h1.predict(&[-2.0, 0.0])), 0);
        assert_eq!(argmax(&h1.predict(&[2.0, 0.0])), 1);

        // Complete as returned: the temperature chosen and the novelty threshold set on `val`.
        assert_eq!(h1.temperature, t1.temperature.temperature);
        let novelty = h1.novelty.as_ref().expect("a novelty model");
        assert_eq!(novelty.threshold_from, "validation");
        assert_eq!(novelty.keep_rate, 0.9);
        assert!(novelty.threshold.is_finite());
        assert_eq!(novelty.per_class, [100, 100]);

        let d = tempfile::tempdir().unwrap();
        let p = d.path().join(HEAD_FILE);
        h1.save(&p).unwrap();
        let back = Head::load(d.path()).unwrap();
        assert_eq!(back.dense, h1.dense);
        assert_eq!(back.predict(&[0.3, 0.1]), h1.predict(&[0.3, 0.1]));
        assert_eq!(back.temperature, h1.temperature);
        assert_eq!(back.novelty.unwrap().threshold, novelty.threshold);
    }

    #[test]
    fn cancel_stops_training() {
        let (x, y) = blobs(20);
        let yes = AtomicBool::new(true);
        let classes = vec!["a".to_string(), "b".to_string()];
        let r = Head::train(
            bref(),
            classes,
            &examples(&x, &y),
            &examples(&x, &y),
            &recipe(TrainConfig::default()),
            &yes,
            |_| {},
        );
        assert!(matches!(r, Err(HeadError::Interrupted)));
    }
}
