//! Property tests (proptest): the head's gradients against finite differences, Adam against the
//! formula and a step worked by hand, the metrics against confusion matrices counted by hand, and
//! the hash split as a partition that adding files does not disturb. A failing case is shrunk to a
//! small one and kept in `tests/properties.proptest-regressions`, replayed first on every run.

use std::collections::BTreeMap;
use std::path::Path;

use edge_mnv2::dataset::{path_hash_unit, Dataset, SplitFractions};
use edge_mnv2::head::{adam_step, batch_gradients, batch_loss, ADAM_BETA1, ADAM_BETA2, ADAM_EPS};
use edge_mnv2::metrics;
use ndarray::{Array1, Array2};
use proptest::collection::vec;
use proptest::prelude::*;

fn close(analytic: f32, numeric: f64) -> bool {
    (analytic as f64 - numeric).abs() <= 2e-3 + 1e-2 * numeric.abs()
}

/// A small batch and head: (x n×d, labels, class weights, W d×c, b, L2).
#[allow(clippy::type_complexity)]
fn batch_and_head() -> impl Strategy<
    Value = (
        Array2<f32>,
        Vec<usize>,
        Vec<f32>,
        Array2<f32>,
        Array1<f32>,
        f32,
    ),
> {
    (1usize..5, 1usize..5, 2usize..5).prop_flat_map(|(n, d, c)| {
        (
            vec(-2.0f32..2.0, n * d),
            vec(0..c, n),
            vec(0.25f32..3.0, c),
            vec(-1.0f32..1.0, d * c),
            vec(-1.0f32..1.0, c),
            prop_oneof![Just(0.0f32), 0.0f32..0.1],
        )
            .prop_map(move |(x, y, cw, w, b, l2)| {
                (
                    Array2::from_shape_vec((n, d), x).unwrap(),
                    y,
                    cw,
                    Array2::from_shape_vec((d, c), w).unwrap(),
                    Array1::from(b),
                    l2,
                )
            })
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// Softmax cross-entropy (class-weighted, with L2): every partial derivative matches a
    /// central difference of the loss.
    #[test]
    fn gradients_match_finite_differences((x, y, cw, w, b, l2) in batch_and_head()) {
        let (gw, gb) = batch_gradients(x.view(), &y, &cw, w.view(), b.view(), l2);
        let h = 1e-2f32;
        let loss = |w: &Array2<f32>, b: &Array1<f32>| {
            batch_loss(x.view(), &y, &cw, w.view(), b.view(), l2)
        };
        for idx in 0..w.len() {
            let (mut wp, mut wm) = (w.clone(), w.clone());
            wp.as_slice_mut().unwrap()[idx] += h;
            wm.as_slice_mut().unwrap()[idx] -= h;
            let numeric = (loss(&wp, &b) - loss(&wm, &b)) / (2.0 * h as f64);
            let analytic = gw.as_slice().unwrap()[idx];
            prop_assert!(close(analytic, numeric), "dW[{}] {} vs {}", idx, analytic, numeric);
        }
        for k in 0..b.len() {
            let (mut bp, mut bm) = (b.clone(), b.clone());
            bp[k] += h;
            bm[k] -= h;
            let numeric = (loss(&w, &bp) - loss(&w, &bm)) / (2.0 * h as f64);
            prop_assert!(close(gb[k], numeric), "db[{}] {} vs {}", k, gb[k], numeric);
        }
    }
}

/// Adam's state before a step: (p, m, v, g), one length.
#[allow(clippy::type_complexity)]
fn adam_state() -> impl Strategy<Value = (Vec<f32>, Vec<f32>, Vec<f32>, Vec<f32>)> {
    (1usize..6).prop_flat_map(|len| {
        (
            vec(-2.0f32..2.0, len),
            vec(-1.0f32..1.0, len),
            vec(0.0f32..1.0, len),
            vec(-3.0f32..3.0, len),
        )
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(500))]

    /// Adam from random states: the moments and the bias-corrected step as the paper writes
    /// them, computed here in f64.
    #[test]
    fn adam_matches_the_formula(
        (p0, m0, v0, g) in adam_state(),
        lr in 1e-4f32..0.1,
        step in 1i32..50,
    ) {
        let (mut p, mut m, mut v) = (p0.clone(), m0.clone(), v0.clone());
        adam_step(&mut p, &mut m, &mut v, &g, lr, step);
        let (b1, b2, eps) = (ADAM_BETA1 as f64, ADAM_BETA2 as f64, ADAM_EPS as f64);
        for i in 0..p0.len() {
            let gi = g[i] as f64;
            let m1 = b1 * m0[i] as f64 + (1.0 - b1) * gi;
            let v1 = b2 * v0[i] as f64 + (1.0 - b2) * gi * gi;
            let mhat = m1 / (1.0 - b1.powi(step));
            let vhat = v1 / (1.0 - b2.powi(step));
            let p1 = p0[i] as f64 - lr as f64 * mhat / (vhat.sqrt() + eps);
            prop_assert!((m[i] as f64 - m1).abs() <= 1e-6 * (1.0 + m1.abs()), "m {} vs {}", m[i], m1);
            prop_assert!((v[i] as f64 - v1).abs() <= 1e-6 * (1.0 + v1.abs()), "v {} vs {}", v[i], v1);
            prop_assert!((p[i] as f64 - p1).abs() <= 1e-5 * (1.0 + p1.abs()), "p {} vs {}", p[i], p1);
        }
    }
}

/// Class count and (actual, predicted, confidence) triples.
fn predictions() -> impl Strategy<Value = (usize, Vec<(usize, usize, f32)>)> {
    (2usize..6).prop_flat_map(|c| (Just(c), vec((0..c, 0..c, 0.0f32..1.0), 0..60)))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// The metrics of random predictions against the confusion matrix and the per-class counts
    /// made here from the pairs, one by one.
    #[test]
    fn metrics_match_counts_by_hand((c, pairs) in predictions()) {
        let classes: Vec<String> = (0..c).map(|k| format!("class{k}")).collect();
        let actual: Vec<usize> = pairs.iter().map(|p| p.0).collect();
        let predicted: Vec<(usize, f32)> = pairs.iter().map(|p| (p.1, p.2)).collect();
        let files: Vec<String> = (0..pairs.len()).map(|i| format!("f{i}.jpg")).collect();
        let e = metrics::evaluate(&classes, &actual, &predicted, &files);
        let n = pairs.len();
        let mut cm = vec![vec![0usize; c]; c];
        for &(a, p, _) in &pairs {
            cm[a][p] += 1;
        }
        prop_assert_eq!(&e.confusion_matrix, &cm);
        prop_assert_eq!(e.samples, n);
        let correct = pairs.iter().filter(|p| p.0 == p.1).count();
        prop_assert_eq!(e.misclassified.len(), n - correct);
        prop_assert!(e
            .misclassified
            .windows(2)
            .all(|w| w[0].confidence >= w[1].confidence));
        let ratio = |a: usize, b: usize| if b == 0 { 0.0 } else { a as f64 / b as f64 };
        prop_assert!((e.accuracy - ratio(correct, n)).abs() < 1e-12);
        let (mut recalls, mut precisions, mut f1s) = (Vec::new(), Vec::new(), Vec::new());
        let (mut wp, mut wr, mut wf) = (0.0, 0.0, 0.0);
        for k in 0..c {
            let tp = pairs.iter().filter(|p| p.0 == k && p.1 == k).count();
            let support = pairs.iter().filter(|p| p.0 == k).count();
            let predicted_k = pairs.iter().filter(|p| p.1 == k).count();
            let (pr, rc) = (ratio(tp, predicted_k), ratio(tp, support));
            let f1 = if pr + rc > 0.0 { 2.0 * pr * rc / (pr + rc) } else { 0.0 };
            let m = &e.per_class[k];
            prop_assert_eq!(m.support, support);
            prop_assert!((m.precision - pr).abs() < 1e-12 && (m.recall - rc).abs() < 1e-12);
            prop_assert!((m.f1 - f1).abs() < 1e-12);
            if support > 0 {
                recalls.push(rc);
                precisions.push(pr);
                f1s.push(f1);
            }
            wp += pr * support as f64;
            wr += rc * support as f64;
            wf += f1 * support as f64;
        }
        let mean = |v: &[f64]| if v.is_empty() { 0.0 } else { v.iter().sum::<f64>() / v.len() as f64 };
        prop_assert!((e.balanced_accuracy - mean(&recalls)).abs() < 1e-12);
        prop_assert!((e.macro_precision - mean(&precisions)).abs() < 1e-12);
        prop_assert!((e.macro_f1 - mean(&f1s)).abs() < 1e-12);
        let nn = n.max(1) as f64;
        prop_assert!((e.weighted_precision - wp / nn).abs() < 1e-12);
        prop_assert!((e.weighted_recall - wr / nn).abs() < 1e-12);
        prop_assert!((e.weighted_f1 - wf / nn).abs() < 1e-12);
        // Weighted recall is accuracy, whatever the predictions.
        prop_assert!((e.weighted_recall - e.accuracy).abs() < 1e-12);
    }
}

/// One step by hand: p = 1, g = 0.5, lr = 0.1. m = 0.05, v = 0.00025, m̂ = 0.5, v̂ = 0.25,
/// p' = 1 − 0.1·0.5/(0.5 + 1e−7). Then g = −0.25 at step 2: m = 0.02, v = 0.00031225,
/// m̂ = 0.02/0.19, v̂ = 0.00031225/0.001999, p'' = p' − 0.1·m̂/(√v̂ + 1e−7) = 0.873366…
#[test]
fn adam_two_steps_by_hand() {
    let (mut p, mut m, mut v) = ([1.0f32], [0.0f32], [0.0f32]);
    adam_step(&mut p, &mut m, &mut v, &[0.5], 0.1, 1);
    // To 5e-8: 1 − 0.9 and 1 − 0.999 are 0.10000002 and 0.00100005 in f32.
    assert!(
        (m[0] - 0.05).abs() < 5e-8 && (v[0] - 0.00025).abs() < 5e-8,
        "{m:?} {v:?}"
    );
    assert!((p[0] - 0.900_000_02).abs() < 1e-6, "{}", p[0]);
    adam_step(&mut p, &mut m, &mut v, &[-0.25], 0.1, 2);
    assert!(
        (m[0] - 0.02).abs() < 1e-7 && (v[0] - 0.000_312_25).abs() < 5e-8,
        "{m:?} {v:?}"
    );
    assert!((p[0] - 0.873_366).abs() < 1e-5, "{}", p[0]);
}

/// A 3-class case counted on paper: actual a a a b b c, predicted a a b b c c.
/// cm = [[2,1,0],[0,1,1],[0,0,1]]; precision a 1, b 1/2, c 1/2; recall a 2/3, b 1/2, c 1.
#[test]
fn metrics_on_a_case_counted_by_hand() {
    let classes: Vec<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
    let e = metrics::evaluate(
        &classes,
        &[0, 0, 0, 1, 1, 2],
        &[(0, 0.9), (0, 0.8), (1, 0.7), (1, 0.6), (2, 0.95), (2, 0.5)],
        &[],
    );
    assert_eq!(
        e.confusion_matrix,
        vec![vec![2, 1, 0], vec![0, 1, 1], vec![0, 0, 1]]
    );
    assert!((e.accuracy - 4.0 / 6.0).abs() < 1e-12);
    let p: Vec<f64> = e.per_class.iter().map(|m| m.precision).collect();
    let r: Vec<f64> = e.per_class.iter().map(|m| m.recall).collect();
    assert_eq!(p, [1.0, 0.5, 0.5]);
    assert!((r[0] - 2.0 / 3.0).abs() < 1e-12 && r[1] == 0.5 && r[2] == 1.0);
    assert!((e.balanced_accuracy - (2.0 / 3.0 + 0.5 + 1.0) / 3.0).abs() < 1e-12);
    assert!((e.per_class[0].f1 - 0.8).abs() < 1e-12);
    assert_eq!(e.misclassified[0].confidence, 0.95);
    assert_eq!(
        (
            e.misclassified[0].actual.as_str(),
            e.misclassified[0].predicted.as_str()
        ),
        ("b", "c")
    );
}

/// Where each file of a flat dataset landed: relative path → 0 train, 1 val, 2 test.
fn splits(root: &Path) -> BTreeMap<String, u8> {
    let ds = Dataset::open(root, SplitFractions::default()).unwrap();
    let mut m = BTreeMap::new();
    for (k, split) in [&ds.train, &ds.val, &ds.test].iter().enumerate() {
        for s in split.iter() {
            assert!(
                m.insert(s.rel.clone(), k as u8).is_none(),
                "{} in two splits",
                s.rel
            );
        }
    }
    m
}

fn by_hash(rel: &str) -> u8 {
    let fr = SplitFractions::default();
    let u = path_hash_unit(rel);
    if u < fr.train {
        0
    } else if u < fr.train + fr.val {
        1
    } else {
        2
    }
}

/// Up to 29 image files, each (class 0-2, a file name).
fn names() -> impl Strategy<Value = Vec<(usize, String)>> {
    vec((0usize..3, "[a-z0-9_]{1,11}"), 1..30)
}

fn add(root: &Path, files: &[(usize, String)]) {
    for (class, name) in files {
        let dir = root.join(format!("class{class}"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("{name}.jpg")), b"").unwrap();
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Every image lands in exactly one split, the one its path hash names (a class the hash left
    /// without a training image lends one), and adding images moves no existing image, except
    /// such a loan, which goes back to its hash's split once the class has its own training image.
    #[test]
    fn the_hash_split_is_a_stable_partition(first in names(), added in names()) {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        // Every class gets two images, so a dataset opens; the hash decides the rest.
        add(
            root,
            &[
                (0, "base0".into()),
                (0, "base1".into()),
                (1, "base0".into()),
                (1, "base1".into()),
            ],
        );
        add(root, &first);
        let before = splits(root);
        prop_assert_eq!(
            before.len(),
            walk_count(root),
            "a partition of every image"
        );
        let loans = |m: &BTreeMap<String, u8>| -> Vec<String> {
            m.iter()
                .filter(|(rel, &k)| k != by_hash(rel))
                .map(|(rel, _)| rel.clone())
                .collect()
        };
        let loaned = loans(&before);
        for rel in &loaned {
            prop_assert_eq!(
                before[rel], 0,
                "{} moved but not into training", rel
            );
            let class = rel.split('/').next().unwrap();
            let trained = before
                .iter()
                .filter(|(r, &k)| r.starts_with(&format!("{class}/")) && k == 0)
                .count();
            prop_assert_eq!(
                trained, 1,
                "a loan only where the class had no training image"
            );
        }
        add(root, &added);
        let after = splits(root);
        prop_assert_eq!(after.len(), walk_count(root));
        for (rel, k) in &before {
            if loaned.contains(rel) {
                prop_assert!(
                    after[rel] == 0 || after[rel] == by_hash(rel),
                    "{}", rel
                );
            } else {
                prop_assert_eq!(
                    after[rel], *k,
                    "{} moved from split {} when files were added", rel, k
                );
            }
        }
    }
}

fn walk_count(root: &Path) -> usize {
    std::fs::read_dir(root)
        .unwrap()
        .map(|c| std::fs::read_dir(c.unwrap().path()).unwrap().count())
        .sum()
}
