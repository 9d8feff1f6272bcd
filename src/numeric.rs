//! The softmax and the argmax, once: the training loss, the head's calibrated probabilities, the
//! temperature fit and the backbone's ImageNet scores all normalise logits here, so they cannot
//! drift apart. `tests/layout.rs` refuses a softmax or an argmax anywhere else.
//!
//! One subtlety is kept on purpose: training has always added a row's exponentials up with
//! `ndarray`'s sum (eight interleaved partial sums once a row has eight or more classes), every
//! other caller in order. Both orders go through the one [`normalise`] below; unifying them would
//! change the last bits of every head trained on eight or more classes, and with them its file.

use ndarray::{Array2, ArrayView1, ArrayViewMut1};

/// Softmax of `values / temperature`, in place, the exponentials added up in order. The maximum
/// is subtracted before dividing by the temperature and exponentiating, so no logit overflows. At
/// temperature 1 the division is exact: the plain softmax.
pub fn softmax(values: &mut [f32], temperature: f32) {
    normalise(ArrayViewMut1::from(values), temperature, |e| e.iter().sum());
}

/// [`softmax`] (temperature 1) of each row of `logits`, each row's exponentials added up by
/// `ndarray`'s sum: one training batch's probabilities, as every head so far was trained with.
pub fn softmax_rows(logits: &mut Array2<f32>) {
    for row in logits.rows_mut() {
        normalise(row, 1.0, |e| e.sum());
    }
}

/// The one softmax body; `total` adds the exponentials up (the only thing its callers differ in).
fn normalise(mut values: ArrayViewMut1<f32>, temperature: f32, total: fn(ArrayView1<f32>) -> f32) {
    let max = values.fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    values.mapv_inplace(|v| ((v - max) / temperature).exp());
    let sum = total(values.view());
    values.mapv_inplace(|e| e / sum);
}

/// The index of the largest value; the first one on a tie, 0 for an empty slice. NaNs are never
/// chosen over a number.
pub fn argmax(values: &[f32]) -> usize {
    values
        .iter()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn softmax_sums_to_one_without_overflow() {
        let mut p = [1000.0, 1000.0, 0.0];
        softmax(&mut p, 1.0);
        assert!((p[0] - 0.5).abs() < 1e-6 && p[2] < 1e-6);
    }

    #[test]
    fn temperature_divides_the_shifted_logits() {
        // softmax([ln 3, 0] / 2) = [√3, 1] / (√3 + 1).
        let mut p = [3f32.ln(), 0.0];
        softmax(&mut p, 2.0);
        let want = 3f32.sqrt() / (3f32.sqrt() + 1.0);
        assert!((p[0] - want).abs() < 1e-6, "{p:?}");
    }

    #[test]
    fn rows_are_normalised_one_by_one() {
        let mut z = Array2::from_shape_vec((2, 2), vec![0.0, 0.0, 2.0, 0.0]).unwrap();
        softmax_rows(&mut z);
        let mut second = [2.0, 0.0];
        softmax(&mut second, 1.0);
        assert_eq!(z.row(0).to_vec(), vec![0.5, 0.5]);
        assert_eq!(z.row(1).to_vec(), second.to_vec());
        // A column-major array's rows are not contiguous: same result.
        use ndarray::ShapeBuilder;
        let mut f = Array2::from_shape_vec((2, 2).f(), vec![0.0, 2.0, 0.0, 0.0]).unwrap();
        softmax_rows(&mut f);
        assert_eq!(f, z);
    }

    /// Nine exponentials whose sum depends on the order they are added in: training's rows must
    /// keep `ndarray`'s order (eight partial sums over each full block of eight, added to the
    /// total as 0+4, 1+5, 2+6, 3+7, then the remainder in order), `softmax` the plain order.
    #[test]
    fn each_caller_keeps_its_summation_order() {
        let logits: Vec<f32> = vec![0.0, -16.7, -16.7, -16.7, -16.7, -16.7, -16.7, -16.7, -0.3];
        let e: Vec<f32> = logits.iter().map(|v| v.exp()).collect();
        let eight = (0.0 + (e[0] + e[4]) + (e[1] + e[5]) + (e[2] + e[6]) + (e[3] + e[7])) + e[8];
        let in_order: f32 = e.iter().sum();
        assert_ne!(eight, in_order, "the example must tell the orders apart");

        let mut rows = Array2::from_shape_vec((1, 9), logits.clone()).unwrap();
        softmax_rows(&mut rows);
        assert_eq!(
            rows.row(0).to_vec(),
            e.iter().map(|v| v / eight).collect::<Vec<_>>()
        );
        let mut one = logits;
        softmax(&mut one, 1.0);
        assert_eq!(one, e.iter().map(|v| v / in_order).collect::<Vec<_>>());
    }

    #[test]
    fn argmax_takes_the_first_of_equal_values() {
        assert_eq!(argmax(&[0.1, 0.7, 0.7, 0.2]), 1);
        assert_eq!(argmax(&[]), 0);
        assert_eq!(argmax(&[f32::NAN, 0.3]), 1);
    }
}
