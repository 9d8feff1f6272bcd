//! The int8 graph's depthwise convolution on aarch64: integer multiply-adds of 16-bit offsets
//! into i32 (`usubl` takes the input zero point off 16 bytes in two instructions, `smlal`/
//! `smlal2` add 16 products in four), 16 channels at a time, then the f32 loop's own
//! requantization in registers. The f32 loop converts every tap's bytes to f32 and multiplies and
//! adds separately; here a tap of 16 channels costs 8 instructions.
//!
//! The same results as `kernels::depthwise::<u8, u8, true>`: its f32 sums of integers are exact
//! (`IntegerWeights::new` checks the bounds that make them so), so they equal these i32 ones; the
//! requantization is the same f32 product and rounding, then integer steps that give the same
//! bytes as its f32 clamps (`Requant`).

use std::arch::aarch64::*;

use super::kernels::{
    for_each_window, DepthwiseGeometry, DepthwiseParams, IntegerWeights, MAX_TAPS,
};

/// Channels one pass computes: 16 bytes of input, four registers of i32 sums.
const LANES: usize = 16;

/// One NHWC image of u8 values, `x` `[in_h, in_w, C]` into `y` `[out_h, out_w, C]`, as
/// `kernels::depthwise::<u8, u8, true>` computes it.
pub fn depthwise(
    g: &DepthwiseGeometry,
    p: &DepthwiseParams,
    w: &IntegerWeights,
    x: &[u8],
    y: &mut [u8],
) {
    let c = g.channels;
    assert!(g.kernel_h * g.kernel_w <= MAX_TAPS);
    assert_eq!(x.len(), g.in_h * g.in_w * c);
    assert_eq!(y.len(), g.out_h * g.out_w * c);
    assert_eq!(w.kernel.len(), g.kernel_h * g.kernel_w * c);
    assert!(w.bias.len() == c && p.multiplier.len() == c);
    let blocks = c / LANES;
    assert_eq!(w.blocked.len(), blocks * g.kernel_h * g.kernel_w * LANES);
    let xz = p.x_zero_point as u8;
    let q = Requant::new(p);
    // A 3×3 window wholly inside the map (most of them): its taps lie at fixed distances from its
    // first, so their offsets stay in registers, and a block's 9 × 16 weights are one run of
    // memory (`IntegerWeights::blocked`).
    let whole_3x3 = g.kernel_h == 3 && g.kernel_w == 3;
    let apart: [usize; 9] = std::array::from_fn(|t| ((t / 3) * g.in_w + t % 3) * c);
    for_each_window(g, |pixel, taps| {
        let out = pixel * c;
        if whole_3x3 && taps.len() == 9 {
            let first = taps[0].0;
            debug_assert!(taps.iter().zip(apart).all(|(&(xo, _), d)| xo == first + d));
            for block in 0..blocks {
                let at = block * LANES;
                // Safety: the window lies inside the map, so each tap's 16 channels from `at` (a
                // whole block) lie within `x`; the block's 144 weights within `w.blocked` (9
                // taps × 16 for each whole block); bias, multipliers and the output pixel's
                // channels as below.
                unsafe {
                    let mut acc = block_bias(&w.bias, at);
                    let xp = x.as_ptr().add(first + at);
                    let kp = w.blocked.as_ptr().add(block * 9 * LANES);
                    for (t, &d) in apart.iter().enumerate() {
                        tap(&mut acc, vld1q_u8(xp.add(d)), xz, kp.add(t * LANES));
                    }
                    let m = p.multiplier.as_ptr().add(at);
                    let bytes = q.apply(acc, std::array::from_fn(|i| vld1q_f32(m.add(4 * i))));
                    vst1q_u8(y.as_mut_ptr().add(out + at), bytes);
                }
            }
        } else {
            for block in 0..blocks {
                let at = block * LANES;
                // Safety: every tap's input offset is a pixel inside the map and its kernel
                // offset a tap of the kernel (asserted sizes above), so the 16 channels from `at`
                // (a whole block, `at + 16 <= c`) lie within `x` and `w.kernel`; likewise the
                // bias, the multipliers and the output pixel's channels.
                unsafe {
                    let mut acc = block_bias(&w.bias, at);
                    for &(xo, ko) in taps {
                        let kp = w.kernel.as_ptr().add(ko + at);
                        tap(&mut acc, vld1q_u8(x.as_ptr().add(xo + at)), xz, kp);
                    }
                    let m = p.multiplier.as_ptr().add(at);
                    let bytes = q.apply(acc, std::array::from_fn(|i| vld1q_f32(m.add(4 * i))));
                    vst1q_u8(y.as_mut_ptr().add(out + at), bytes);
                }
            }
        }
        for ch in blocks * LANES..c {
            let mut acc = w.bias[ch];
            for &(xo, ko) in taps {
                acc += (x[xo + ch] as i32 - xz as i32) * w.kernel[ko + ch] as i32;
            }
            let v = ((acc as f32 * p.multiplier[ch]).round_ties_even())
                .max(p.lo)
                .min(p.hi);
            // `as` saturates to 0..=255 as the narrowing above does.
            y[out + ch] = (v + p.y_zero_point) as u8;
        }
    });
}

/// The 16 biases of the block of channels from `at`.
///
/// # Safety
/// `bias` has 16 values from `at`.
#[inline(always)]
unsafe fn block_bias(bias: &[i32], at: usize) -> [int32x4_t; 4] {
    let b = bias.as_ptr().add(at);
    [
        vld1q_s32(b),
        vld1q_s32(b.add(4)),
        vld1q_s32(b.add(8)),
        vld1q_s32(b.add(12)),
    ]
}

/// One tap of 16 channels: the bytes minus the zero point (within ±255: exact as i16) times the
/// 16 weights at `kp`, added to the sums.
///
/// # Safety
/// `kp` points to 16 weights.
#[inline(always)]
unsafe fn tap(acc: &mut [int32x4_t; 4], xv: uint8x16_t, xz: u8, kp: *const i16) {
    let lo = vreinterpretq_s16_u16(vsubl_u8(vget_low_u8(xv), vdup_n_u8(xz)));
    let hi = vreinterpretq_s16_u16(vsubl_high_u8(xv, vdupq_n_u8(xz)));
    let kl = vld1q_s16(kp);
    let kh = vld1q_s16(kp.add(8));
    acc[0] = vmlal_s16(acc[0], vget_low_s16(lo), vget_low_s16(kl));
    acc[1] = vmlal_high_s16(acc[1], lo, kl);
    acc[2] = vmlal_s16(acc[2], vget_low_s16(hi), vget_low_s16(kh));
    acc[3] = vmlal_high_s16(acc[3], hi, kh);
}

/// The f32 loop's ending for 16 channels: × multiplier, rounded half to even, clamped to the
/// output range in offsets, + the output zero point, then clamped to 0..=255. Here in integers
/// after the rounding (`fcvtns`): + zero point after a saturating narrowing to i16, clamped as
/// bytes to the range moved by the zero point. The same values: the range's bounds are whole
/// steps of the output grid within 0..=255 once moved (`RequantizedDepthwise::range`), and a
/// value saturated in a narrowing lies beyond that range either way.
struct Requant {
    yz: int16x8_t,
    lo: uint8x16_t,
    hi: uint8x16_t,
}

impl Requant {
    fn new(p: &DepthwiseParams) -> Requant {
        let byte = |offset: f32| (offset + p.y_zero_point).clamp(0.0, 255.0) as u8;
        // Safety: NEON is part of the aarch64 baseline.
        unsafe {
            Requant {
                yz: vdupq_n_s16(p.y_zero_point as i16),
                lo: vdupq_n_u8(byte(p.lo)),
                hi: vdupq_n_u8(byte(p.hi)),
            }
        }
    }

    #[inline(always)]
    fn apply(&self, acc: [int32x4_t; 4], m: [float32x4_t; 4]) -> uint8x16_t {
        // Safety: NEON is part of the aarch64 baseline.
        unsafe {
            let v: [int32x4_t; 4] =
                std::array::from_fn(|i| vcvtnq_s32_f32(vmulq_f32(vcvtq_f32_s32(acc[i]), m[i])));
            let lo16 = vqaddq_s16(vqmovn_high_s32(vqmovn_s32(v[0]), v[1]), self.yz);
            let hi16 = vqaddq_s16(vqmovn_high_s32(vqmovn_s32(v[2]), v[3]), self.yz);
            vminq_u8(
                vmaxq_u8(vqmovun_high_s16(vqmovun_s16(lo16), hi16), self.lo),
                self.hi,
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tflite::ops::kernels;

    #[test]
    fn integer_depthwise_is_the_f32_loops_result() {
        // 40 channels (two blocks and a tail of 8), stride 1 and 2, SAME padding and none, on
        // u8 maps with zero points on both sides, a ReLU6-like range and ties in the rounding
        // (multipliers of 1/2 and 1/4 on odd sums).
        for (stride, in_hw, pad) in [(1, 7, 1), (2, 9, 1), (2, 8, 0)] {
            let c = 40;
            let out_hw = (in_hw + 2 * pad - 3) / stride + 1;
            let g = DepthwiseGeometry {
                in_h: in_hw,
                in_w: in_hw,
                channels: c,
                kernel_h: 3,
                kernel_w: 3,
                stride_h: stride,
                stride_w: stride,
                pad_top: pad,
                pad_left: pad,
                out_h: out_hw,
                out_w: out_hw,
            };
            let x: Vec<u8> = (0..in_hw * in_hw * c)
                .map(|i| ((i * 37) % 256) as u8)
                .collect();
            let k: Vec<f32> = (0..9 * c)
                .map(|i| ((i * 53) % 511) as f32 - 255.0)
                .collect();
            let bias: Vec<f32> = (0..c).map(|i| (i as f32 - 20.0) * 8001.0).collect();
            let m: Vec<f32> = (0..c)
                .map(|i| match i % 4 {
                    0 => 0.5,
                    1 => 0.25,
                    _ => 0.0002 + i as f32 * 1e-5,
                })
                .collect();
            let params = DepthwiseParams {
                kernel: &k,
                bias: &bias,
                multiplier: &m,
                lo: -3.0,
                hi: 200.0,
                x_zero_point: 131.0,
                y_zero_point: 3.0,
            };
            let mut expected = vec![0u8; out_hw * out_hw * c];
            kernels::depthwise::<u8, u8, true>(&g, &params, &x, &mut expected);
            assert!(expected.contains(&0) && expected.contains(&203));
            assert!(expected.iter().filter(|&&v| v > 0 && v < 203).count() > expected.len() / 4);
            let w = IntegerWeights::new(&params).expect("integer weights");
            let mut y = vec![0u8; expected.len()];
            depthwise(&g, &params, &w, &x, &mut y);
            assert_eq!(y, expected, "stride {stride}, {in_hw}x{in_hw}, pad {pad}");
        }
    }

    #[test]
    fn weights_the_f32_loop_would_not_sum_exactly_are_left_to_it() {
        let (k, bias, m) = ([1.0f32; 9], [0.0f32], [1.0f32]);
        let params = DepthwiseParams {
            kernel: &k,
            bias: &bias,
            multiplier: &m,
            lo: 0.0,
            hi: 255.0,
            x_zero_point: 0.0,
            y_zero_point: 0.0,
        };
        assert!(IntegerWeights::new(&params).is_some());
        let big = [(1 << 23) as f32 + 2.0];
        assert!(IntegerWeights::new(&DepthwiseParams {
            bias: &big,
            ..params
        })
        .is_none());
        let half = [0.5f32; 9];
        assert!(IntegerWeights::new(&DepthwiseParams {
            kernel: &half,
            ..params
        })
        .is_none());
    }
}
