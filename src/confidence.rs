//! Calibrated confidence: the temperature that divides the head's logits (fitted on the
//! validation split by minimising its negative log-likelihood, as Guo et al. 2017), and the
//! expected calibration error and reliability diagram that show whether it worked.

use serde::Serialize;

use crate::numeric::{argmax, softmax};

/// Bins of the expected calibration error and the reliability diagram.
pub const ECE_BINS: usize = 15;

/// Softmax of `logits / t`, averaged over the views (rows of `logits` are one image's views).
pub fn probs(logits: &[Vec<f32>], t: f32) -> Vec<f32> {
    let c = logits.first().map_or(0, Vec::len);
    let mut avg = vec![0f32; c];
    for l in logits {
        let mut p = l.clone();
        softmax(&mut p, t);
        for (a, v) in avg.iter_mut().zip(p) {
            *a += v / logits.len() as f32;
        }
    }
    avg
}

fn nll(logits: &[Vec<Vec<f32>>], y: &[usize], t: f32) -> f64 {
    logits
        .iter()
        .zip(y)
        .map(|(l, &y)| -(probs(l, t)[y].max(1e-12) as f64).ln())
        .sum::<f64>()
        / y.len().max(1) as f64
}

/// The temperature minimising the negative log-likelihood of `y` (each image's per-view logits),
/// searched on log t in [1/20, 20] by golden section; 1 when there is nothing to fit on.
pub fn fit_temperature(logits: &[Vec<Vec<f32>>], y: &[usize]) -> f32 {
    if y.is_empty() {
        return 1.0;
    }
    let f = |lt: f64| nll(logits, y, lt.exp() as f32);
    let (mut a, mut b) = ((0.05f64).ln(), 20f64.ln());
    let g = (5f64.sqrt() - 1.0) / 2.0;
    let (mut c, mut d) = (b - g * (b - a), a + g * (b - a));
    let (mut fc, mut fd) = (f(c), f(d));
    for _ in 0..60 {
        if fc < fd {
            b = d;
            d = c;
            fd = fc;
            c = b - g * (b - a);
            fc = f(c);
        } else {
            a = c;
            c = d;
            fc = fd;
            d = a + g * (b - a);
            fd = f(d);
        }
    }
    (((a + b) / 2.0).exp()) as f32
}

/// Folds of the cross-validated check of a fitted temperature.
pub const TEMPERATURE_FOLDS: usize = 10;

/// How the head's temperature was chosen: the NLL fit on the whole validation split, and whether
/// it held up on validation images it was not fitted on.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TemperatureChoice {
    /// The temperature the head uses: `fitted` when it held up, else 1.
    pub temperature: f32,
    /// The NLL-minimising temperature on the whole validation split.
    pub fitted: f32,
    /// Mean out-of-fold NLL per validation image at temperature 1 and at each fold's fit.
    pub cv_nll_plain: f64,
    pub cv_nll_scaled: f64,
    /// Standard error of the per-image NLL gain.
    pub cv_gain_se: f64,
    /// Why no temperature was fitted (validation too small to fit one on), when it was not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub not_fitted: Option<String>,
}

/// Fewer validation images than this fit no temperature: on a handful of images the fit follows
/// the sample (a temperature of 0.05 fitted on 2 images once made the test ECE 0.34 → 0.50).
pub const MIN_TEMPERATURE_IMAGES: usize = 20;

/// Why `y` (validation labels of `classes` classes) is too small to fit a temperature on.
fn too_small_to_fit(y: &[usize], classes: usize) -> Option<String> {
    if y.len() < MIN_TEMPERATURE_IMAGES {
        return Some(format!(
            "validation has {} image(s), fewer than {MIN_TEMPERATURE_IMAGES}: temperature kept at 1",
            y.len()
        ));
    }
    let missing = (0..classes).filter(|c| !y.contains(c)).count();
    (missing > 0)
        .then(|| format!("{missing} class(es) have no validation image: temperature kept at 1"))
}

/// Fits the temperature on validation logits, and keeps it only if it generalises: fitted on
/// nine tenths and scored on the tenth left out, it must lower the NLL by more than one standard
/// error of the per-image gain. A validation split of a few dozen images can make a fitted
/// temperature chase noise (sharpening on validation, worse on test); then 1 is the honest choice.
/// A validation split too small to judge (see [`MIN_TEMPERATURE_IMAGES`], or a class with no
/// image) keeps 1 without a fit, and says why.
pub fn choose_temperature(logits: &[Vec<Vec<f32>>], y: &[usize]) -> TemperatureChoice {
    let classes = logits.first().and_then(|l| l.first()).map_or(0, Vec::len);
    if let Some(why) = too_small_to_fit(y, classes) {
        return TemperatureChoice {
            temperature: 1.0,
            fitted: 1.0,
            cv_nll_plain: 0.0,
            cv_nll_scaled: 0.0,
            cv_gain_se: 0.0,
            not_fitted: Some(why),
        };
    }
    let fitted = fit_temperature(logits, y);
    let folds = TEMPERATURE_FOLDS.min(y.len());
    let mut gains = Vec::with_capacity(y.len());
    let (mut plain, mut scaled) = (0f64, 0f64);
    if folds >= 2 {
        for k in 0..folds {
            let (fit_l, fit_y): (Vec<_>, Vec<_>) = logits
                .iter()
                .zip(y)
                .enumerate()
                .filter(|(i, _)| i % folds != k)
                .map(|(_, (l, &y))| (l.clone(), y))
                .unzip();
            let t = fit_temperature(&fit_l, &fit_y);
            for (_, (l, &y)) in logits
                .iter()
                .zip(y)
                .enumerate()
                .filter(|(i, _)| i % folds == k)
            {
                let at = |t: f32| -(probs(l, t)[y].max(1e-12) as f64).ln();
                let (p, s) = (at(1.0), at(t));
                plain += p;
                scaled += s;
                gains.push(p - s);
            }
        }
    }
    let n = gains.len().max(1) as f64;
    let mean = gains.iter().sum::<f64>() / n;
    let var = gains.iter().map(|g| (g - mean).powi(2)).sum::<f64>() / (n - 1.0).max(1.0);
    let se = (var / n).sqrt();
    let holds = gains.len() >= 2 && mean > se;
    TemperatureChoice {
        temperature: if holds { fitted } else { 1.0 },
        fitted,
        cv_nll_plain: plain / n,
        cv_nll_scaled: scaled / n,
        cv_gain_se: se,
        not_fitted: None,
    }
}

/// One bin of a reliability diagram: the images whose confidence falls in [lo, hi).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Bin {
    pub lo: f64,
    pub hi: f64,
    pub count: usize,
    pub confidence: f64,
    pub accuracy: f64,
}

/// Reliability bins of (confidence, correct) pairs; empty bins included (count 0).
pub fn reliability(preds: &[(f32, bool)]) -> Vec<Bin> {
    let mut bins: Vec<Bin> = (0..ECE_BINS)
        .map(|i| Bin {
            lo: i as f64 / ECE_BINS as f64,
            hi: (i + 1) as f64 / ECE_BINS as f64,
            count: 0,
            confidence: 0.0,
            accuracy: 0.0,
        })
        .collect();
    for &(conf, ok) in preds {
        let i = ((conf as f64 * ECE_BINS as f64) as usize).min(ECE_BINS - 1);
        bins[i].count += 1;
        bins[i].confidence += conf as f64;
        bins[i].accuracy += f64::from(u8::from(ok));
    }
    for b in &mut bins {
        if b.count > 0 {
            b.confidence /= b.count as f64;
            b.accuracy /= b.count as f64;
        }
    }
    bins
}

/// Expected calibration error: the count-weighted mean gap between confidence and accuracy.
pub fn ece(bins: &[Bin]) -> f64 {
    let n: usize = bins.iter().map(|b| b.count).sum();
    bins.iter()
        .map(|b| b.count as f64 * (b.confidence - b.accuracy).abs())
        .sum::<f64>()
        / n.max(1) as f64
}

/// The calibration part of a report (on the test split).
#[derive(Debug, Clone, Serialize)]
pub struct CalibrationReport {
    pub temperature: f32,
    pub ece_before: f64,
    pub ece_after: f64,
    pub bins_before: Vec<Bin>,
    pub bins_after: Vec<Bin>,
}

impl CalibrationReport {
    /// From each test image's per-view logits and true class, with the fitted temperature.
    pub fn new(logits: &[Vec<Vec<f32>>], y: &[usize], temperature: f32) -> CalibrationReport {
        let pairs = |t: f32| -> Vec<(f32, bool)> {
            logits
                .iter()
                .zip(y)
                .map(|(l, &y)| {
                    let p = probs(l, t);
                    let top = argmax(&p);
                    (p[top], top == y)
                })
                .collect()
        };
        let (before, after) = (reliability(&pairs(1.0)), reliability(&pairs(temperature)));
        CalibrationReport {
            temperature,
            ece_before: ece(&before),
            ece_after: ece(&after),
            bins_before: before,
            bins_after: after,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temperature_undoes_overconfidence() {
        // Logits 4× too sharp for a 75%-right classifier: the fit finds t ≈ 4·(ln 3 / 4)⁻¹... i.e.
        // the t at which softmax gives the 0.75 the data shows.
        let mut logits = Vec::new();
        let mut y = Vec::new();
        for i in 0..400 {
            logits.push(vec![vec![4.0, 0.0]]);
            y.push(usize::from(i % 4 == 0));
        }
        let t = fit_temperature(&logits, &y);
        // softmax(4/t) = 0.75  ⇔  4/t = ln 3.
        assert!((t - 4.0 / 3f32.ln()).abs() < 0.01, "{t}");
        let r = CalibrationReport::new(&logits, &y, t);
        assert!(r.ece_after < 0.01 && r.ece_before > 0.2, "{r:?}");
        assert_eq!(r.bins_after.len(), ECE_BINS);
        let choice = choose_temperature(&logits, &y);
        assert_eq!(choice.temperature, choice.fitted, "{choice:?}");
    }

    #[test]
    fn temperature_fitted_to_noise_is_not_kept() {
        // A calibrated classifier (logit gap ln 3: confidence 0.75, right 3 times in 4) on a small
        // validation split: any fitted temperature only chases the sample, so 1 is kept.
        let mut logits = Vec::new();
        let mut y = Vec::new();
        for i in 0..36 {
            logits.push(vec![vec![3f32.ln(), 0.0]]);
            y.push(usize::from(i % 4 == 1 || i == 6));
        }
        let choice = choose_temperature(&logits, &y);
        assert_ne!(choice.fitted, 1.0);
        assert_eq!(choice.temperature, 1.0, "{choice:?}");
        assert_eq!(choice.not_fitted, None);
    }

    #[test]
    fn no_temperature_is_fitted_on_too_few_images_or_with_a_class_missing() {
        // Logits 4× too sharp, as in the test above, where 400 images fit and keep t ≈ 3.6.
        let sharp = |n: usize, classes: usize| {
            let mut logits = Vec::new();
            let mut y = Vec::new();
            for i in 0..n {
                let mut l = vec![0.0; classes];
                l[0] = 4.0;
                logits.push(vec![l]);
                y.push(usize::from(i % 4 == 0));
            }
            (logits, y)
        };
        let (logits, y) = sharp(MIN_TEMPERATURE_IMAGES - 1, 2);
        let choice = choose_temperature(&logits, &y);
        assert_eq!(choice.temperature, 1.0);
        assert!(
            choice
                .not_fitted
                .as_deref()
                .unwrap()
                .starts_with("validation has 19 image(s)"),
            "{choice:?}"
        );
        // Enough images, but a third class never seen in validation.
        let (logits, y) = sharp(400, 3);
        let choice = choose_temperature(&logits, &y);
        assert_eq!(choice.temperature, 1.0);
        assert_eq!(
            choice.not_fitted.as_deref(),
            Some("1 class(es) have no validation image: temperature kept at 1")
        );
        let (logits, y) = sharp(400, 2);
        assert_eq!(choose_temperature(&logits, &y).not_fitted, None);
    }
}
