//! The matrix product on aarch64 with baseline NEON (a Raspberry Pi 4's Cortex-A72 has no dot
//! product): a register-blocked micro-kernel of 4 pixels × 16 output channels whose 16 i32
//! accumulators never leave their registers. Each step multiplies one pixel's 16-bit value (a
//! lane) by 8 channels' 16-bit weights and adds the widened products (`smlal`/`smlal2` by
//! element), as XNNPACK's `mlal`-lane kernels do: 16 instructions for 64 multiply-adds, the 16
//! weights of a pair of input channels loaded once (de-interleaved by `ld2`) for the 4 pixels.
//! The requantization runs in registers too, rounding as the f32 one does (ties to even).

use std::arch::aarch64::*;

use super::{PackedWeights, Requant, BLOCK_N, BLOCK_P};

/// Input channels per step of the kernel: one 128-bit register of a pixel's 16-bit values.
const CHUNK: usize = 8;

/// `y[p][c] = requant(Σ_i x[p][i] × w[c][i])`, exactly as `matmul_portable` computes it.
pub(super) fn matmul(x: &[u8], pixels: usize, w: &PackedWeights, r: &Requant, y: &mut [u8]) {
    assert!(x.len() >= pixels * w.k && y.len() >= pixels * w.n);
    assert_eq!(w.data.len(), w.blocks * w.k_pairs * BLOCK_N * 2);
    assert!(r.bias.len() >= w.blocks * BLOCK_N && r.multiplier.len() >= w.blocks * BLOCK_N);
    let (full, rest) = (w.k_pairs / 4, w.k_pairs % 4);
    // Each pixel's row widened to i16 and zero-padded to whole chunks, so every load is whole.
    let row_len = w.k_pairs.div_ceil(4) * CHUNK;
    let mut xs = vec![0i16; BLOCK_P * row_len];
    let block_len = w.k_pairs * BLOCK_N * 2;
    for p0 in (0..pixels).step_by(BLOCK_P) {
        let rows = BLOCK_P.min(pixels - p0);
        // Rows past the last pixel keep the previous pass's values (or zeros): computed, not stored.
        for row in 0..rows {
            let src = &x[(p0 + row) * w.k..][..w.k];
            for (d, &s) in xs[row * row_len..][..w.k].iter_mut().zip(src) {
                *d = s as i16;
            }
        }
        for block in 0..w.blocks {
            let wb = &w.data[block * block_len..][..block_len];
            // Safety: `xs` holds 4 rows of `row_len` = 8 × (full + (rest > 0)) values and `wb`
            // 32 weights for each of the `k_pairs` = 4 × full + rest pairs: every load below
            // stays within them.
            let acc = unsafe { block_product(xs.as_ptr(), row_len, wb.as_ptr(), full, rest) };
            store(&acc, rows, p0, block, r, w.n, y);
        }
    }
}

/// The 4 × 16 accumulators of one block of output channels over all input channels.
#[inline(always)]
unsafe fn block_product(
    xs: *const i16,
    row_len: usize,
    mut wp: *const i16,
    full: usize,
    rest: usize,
) -> [int32x4_t; 16] {
    let mut acc = [vdupq_n_s32(0); 16];
    let mut xp = xs;
    for _ in 0..full {
        let xv = load_rows(xp, row_len);
        pair::<0, 1>(&mut acc, &xv, wp);
        pair::<2, 3>(&mut acc, &xv, wp.add(32));
        pair::<4, 5>(&mut acc, &xv, wp.add(64));
        pair::<6, 7>(&mut acc, &xv, wp.add(96));
        wp = wp.add(128);
        xp = xp.add(CHUNK);
    }
    if rest > 0 {
        let xv = load_rows(xp, row_len);
        pair::<0, 1>(&mut acc, &xv, wp);
        if rest > 1 {
            pair::<2, 3>(&mut acc, &xv, wp.add(32));
        }
        if rest > 2 {
            pair::<4, 5>(&mut acc, &xv, wp.add(64));
        }
    }
    acc
}

/// 8 input channels of each of the 4 pixel rows.
#[inline(always)]
unsafe fn load_rows(xp: *const i16, row_len: usize) -> [int16x8_t; BLOCK_P] {
    [
        vld1q_s16(xp),
        vld1q_s16(xp.add(row_len)),
        vld1q_s16(xp.add(2 * row_len)),
        vld1q_s16(xp.add(3 * row_len)),
    ]
}

/// One pair of input channels (lanes `E` and `O = E + 1` of each row) into all 64 sums: the 32
/// packed weights `[c0k0, c0k1, c1k0, c1k1, ...]` de-interleaved into even and odd inputs.
#[inline(always)]
unsafe fn pair<const E: i32, const O: i32>(
    acc: &mut [int32x4_t; 16],
    xv: &[int16x8_t; BLOCK_P],
    wp: *const i16,
) {
    let lo = vld2q_s16(wp);
    let hi = vld2q_s16(wp.add(16));
    for (row, &x) in xv.iter().enumerate() {
        let a = &mut acc[4 * row..4 * row + 4];
        a[0] = vmlal_laneq_s16::<E>(a[0], vget_low_s16(lo.0), x);
        a[0] = vmlal_laneq_s16::<O>(a[0], vget_low_s16(lo.1), x);
        a[1] = vmlal_high_laneq_s16::<E>(a[1], lo.0, x);
        a[1] = vmlal_high_laneq_s16::<O>(a[1], lo.1, x);
        a[2] = vmlal_laneq_s16::<E>(a[2], vget_low_s16(hi.0), x);
        a[2] = vmlal_laneq_s16::<O>(a[2], vget_low_s16(hi.1), x);
        a[3] = vmlal_high_laneq_s16::<E>(a[3], hi.0, x);
        a[3] = vmlal_high_laneq_s16::<O>(a[3], hi.1, x);
    }
}

/// The requantization in registers, as `Requant::block` computes it: + bias, to f32, × the
/// multiplier, to the nearest integer with ties to even (`fcvtns`), + zero point, clamped,
/// narrowed to bytes. In i32 rather than f32 after the rounding: the same values (a rounded
/// value beyond ±2^24 lands on a bound either way; one beyond i32 saturates, and so does the
/// zero point's addition).
#[inline(always)]
fn store(
    acc: &[int32x4_t; 16],
    rows: usize,
    p0: usize,
    block: usize,
    r: &Requant,
    n: usize,
    y: &mut [u8],
) {
    let c0 = block * BLOCK_N;
    let bias: &[i32; BLOCK_N] = r.bias[c0..c0 + BLOCK_N].try_into().unwrap();
    let m: &[f32; BLOCK_N] = r.multiplier[c0..c0 + BLOCK_N].try_into().unwrap();
    // Safety: 4 lanes from each quarter of 16-value arrays.
    let (bias, m) = unsafe {
        (
            [0, 4, 8, 12].map(|i| vld1q_s32(bias.as_ptr().add(i))),
            [0, 4, 8, 12].map(|i| vld1q_f32(m.as_ptr().add(i))),
        )
    };
    // Safety (here and below): NEON is part of the aarch64 baseline, so its arithmetic
    // intrinsics are sound to call; the stores are bounded as noted.
    let (zp, lo, hi) = unsafe {
        (
            vdupq_n_s32(r.zero_point as i32),
            vdupq_n_s32(r.lo as i32),
            vdupq_n_s32(r.hi as i32),
        )
    };
    let width = BLOCK_N.min(n - c0);
    for row in 0..rows {
        let bytes = unsafe {
            let v: [int32x4_t; 4] = std::array::from_fn(|i| {
                let v = vcvtq_f32_s32(vaddq_s32(acc[4 * row + i], bias[i]));
                let v = vcvtnq_s32_f32(vmulq_f32(v, m[i]));
                vminq_s32(vmaxq_s32(vqaddq_s32(v, zp), lo), hi)
            });
            let lo16 = vcombine_s16(vqmovn_s32(v[0]), vqmovn_s32(v[1]));
            let hi16 = vcombine_s16(vqmovn_s32(v[2]), vqmovn_s32(v[3]));
            vcombine_u8(vqmovun_s16(lo16), vqmovun_s16(hi16))
        };
        let at = (p0 + row) * n + c0;
        if width == BLOCK_N {
            let dst = &mut y[at..at + BLOCK_N];
            // Safety: 16 bytes into a 16-byte slice.
            unsafe { vst1q_u8(dst.as_mut_ptr(), bytes) };
        } else {
            let mut out = [0u8; BLOCK_N];
            // Safety: 16 bytes into a 16-byte array.
            unsafe { vst1q_u8(out.as_mut_ptr(), bytes) };
            y[at..at + width].copy_from_slice(&out[..width]);
        }
    }
}
