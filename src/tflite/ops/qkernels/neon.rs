//! The matrix product on aarch64 with baseline NEON (a Raspberry Pi 4's Cortex-A72 has no dot
//! product): a register-blocked micro-kernel of 4 pixels × 16 output channels whose 16 i32
//! accumulators never leave their registers. Each step multiplies one pixel's 16-bit value (a
//! lane) by 8 channels' 16-bit weights and adds the widened products (`smlal`/`smlal2` by
//! element), as XNNPACK's `mlal`-lane kernels do: 16 instructions for 64 multiply-adds, the 32
//! weights of a pair of input channels loaded once (four registers) for the 4 pixels.
//! The requantization runs in registers too, rounding as the f32 one does (ties to even).
//!
//! Where the CPU has ARMv8.2's dot product (a Raspberry Pi 5's Cortex-A76), `matmul_dot` does the
//! same product with `udot` by element: four pixel bytes by four weight bytes for each of 4
//! channels, 16 multiply-adds an instruction, on the weights packed as bytes (`Quads`).

use std::arch::aarch64::*;
use std::arch::asm;

use super::{PackedWeights, Quads, Requant, BLOCK_N, BLOCK_P};

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
            let bias = block_bias(r, block);
            let acc = unsafe { block_product(xs.as_ptr(), row_len, wb.as_ptr(), full, rest, bias) };
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
    bias: [int32x4_t; 4],
) -> [int32x4_t; 16] {
    let mut acc: [int32x4_t; 16] = std::array::from_fn(|i| bias[i % 4]);
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

/// `y[p][c] = requant(Σ_i x[p][i] × w[c][i])` with `udot`: `q` holds the weights as u8, each
/// channel shifted by `q.shift[c]`, added back as `shift × Σ pixels` before the requantization.
///
/// # Safety
/// The CPU has DotProd (`PackedWeights::pack` packs unsigned `Quads` only where it does).
#[target_feature(enable = "dotprod")]
pub(super) unsafe fn matmul_dot(
    x: &[u8],
    pixels: usize,
    w: &PackedWeights,
    q: &Quads,
    r: &Requant,
    y: &mut [u8],
) {
    assert!(x.len() >= pixels * w.k && y.len() >= pixels * w.n);
    assert_eq!(q.data.len(), w.blocks * q.k_quads * BLOCK_N * 4);
    assert!(q.shift.len() >= w.blocks * BLOCK_N);
    assert!(r.bias.len() >= w.blocks * BLOCK_N && r.multiplier.len() >= w.blocks * BLOCK_N);
    let (full, rest) = (q.k_quads / 4, q.k_quads % 4);
    // Each pixel's row zero-padded to whole registers of 16 bytes, so every load is whole.
    let row_len = q.k_quads.div_ceil(4) * 16;
    let mut xs = vec![0u8; BLOCK_P * row_len];
    let mut sums = [0i32; BLOCK_P];
    let block_len = q.k_quads * BLOCK_N * 4;
    for p0 in (0..pixels).step_by(BLOCK_P) {
        let rows = BLOCK_P.min(pixels - p0);
        // Rows past the last pixel keep the previous pass's values (or zeros): computed, not stored.
        for (row, sum) in sums.iter_mut().enumerate().take(rows) {
            let src = &x[(p0 + row) * w.k..][..w.k];
            xs[row * row_len..][..w.k].copy_from_slice(src);
            *sum = src.iter().map(|&v| v as i32).sum();
        }
        for block in 0..w.blocks {
            let wb = &q.data[block * block_len..][..block_len];
            // Safety: `xs` holds 4 rows of `row_len` = 16 × (full + (rest > 0)) bytes and `wb`
            // 64 bytes for each of the `k_quads` = 4 × full + rest quads: every load below stays
            // within them. The sums of `k` products of bytes fit i32 (`Quads::pack`).
            // The sums start at the bias: u32 arithmetic wraps as i32's, so the bits are the
            // exact i32 sum.
            let bias = block_bias(r, block).map(|b| vreinterpretq_u32_s32(b));
            let acc = unsafe { dot_block(xs.as_ptr(), row_len, wb.as_ptr(), full, rest, bias) };
            let mut acc = acc.map(|v| vreinterpretq_s32_u32(v));
            if q.any_shift {
                let shift: &[i32; BLOCK_N] =
                    q.shift[block * BLOCK_N..][..BLOCK_N].try_into().unwrap();
                // Safety: 4 lanes from each quarter of a 16-value array.
                let shift = [0, 4, 8, 12].map(|i| unsafe { vld1q_s32(shift.as_ptr().add(i)) });
                for (row, &sum) in sums.iter().enumerate() {
                    for (i, &s) in shift.iter().enumerate() {
                        acc[4 * row + i] = vmlaq_n_s32(acc[4 * row + i], s, sum);
                    }
                }
            }
            store(&acc, rows, p0, block, r, w.n, y);
        }
    }
}

/// The 4 × 16 sums of one block of output channels over all input quads, with `udot`.
#[inline(always)]
unsafe fn dot_block(
    xs: *const u8,
    row_len: usize,
    mut wp: *const u8,
    full: usize,
    rest: usize,
    bias: [uint32x4_t; 4],
) -> [uint32x4_t; 16] {
    let mut acc: [uint32x4_t; 16] = std::array::from_fn(|i| bias[i % 4]);
    let mut xp = xs;
    for _ in 0..full {
        let xv = load_byte_rows(xp, row_len);
        quad::<0>(&mut acc, &xv, wp);
        quad::<1>(&mut acc, &xv, wp.add(64));
        quad::<2>(&mut acc, &xv, wp.add(128));
        quad::<3>(&mut acc, &xv, wp.add(192));
        wp = wp.add(256);
        xp = xp.add(16);
    }
    if rest > 0 {
        let xv = load_byte_rows(xp, row_len);
        quad::<0>(&mut acc, &xv, wp);
        if rest > 1 {
            quad::<1>(&mut acc, &xv, wp.add(64));
        }
        if rest > 2 {
            quad::<2>(&mut acc, &xv, wp.add(128));
        }
    }
    acc
}

/// 16 input channels of each of the 4 pixel rows, as bytes.
#[inline(always)]
unsafe fn load_byte_rows(xp: *const u8, row_len: usize) -> [uint8x16_t; BLOCK_P] {
    [
        vld1q_u8(xp),
        vld1q_u8(xp.add(row_len)),
        vld1q_u8(xp.add(2 * row_len)),
        vld1q_u8(xp.add(3 * row_len)),
    ]
}

/// Input quad `L` of each row's register into all 64 sums: the 64 packed weight bytes are 16
/// channels × 4 inputs, 4 channels to a register.
#[inline(always)]
unsafe fn quad<const L: i32>(
    acc: &mut [uint32x4_t; 16],
    xv: &[uint8x16_t; BLOCK_P],
    wp: *const u8,
) {
    let wv = [
        vld1q_u8(wp),
        vld1q_u8(wp.add(16)),
        vld1q_u8(wp.add(32)),
        vld1q_u8(wp.add(48)),
    ];
    for (row, &x) in xv.iter().enumerate() {
        for (i, &w) in wv.iter().enumerate() {
            acc[4 * row + i] = udot_lane::<L>(acc[4 * row + i], w, x);
        }
    }
}

/// `acc[j] += Σ_t w[4j + t] × x[4L + t]` for the 4 lanes `j`: `udot` by element. Inline assembly:
/// the intrinsic (`vdotq_laneq_u32`) is not stable in this toolchain. Only called from
/// `matmul_dot`, whose target feature lets the assembler accept the instruction.
#[inline(always)]
unsafe fn udot_lane<const L: i32>(acc: uint32x4_t, w: uint8x16_t, x: uint8x16_t) -> uint32x4_t {
    let mut acc = acc;
    asm!(
        "udot {acc:v}.4s, {w:v}.16b, {x:v}.4b[{lane}]",
        acc = inout(vreg) acc,
        w = in(vreg) w,
        x = in(vreg) x,
        lane = const L,
        options(pure, nomem, nostack, preserves_flags),
    );
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
/// packed weights are the 16 channels' weights for the even input, then for the odd one
/// (`pair_slot`), four registers loaded from fixed offsets.
#[inline(always)]
unsafe fn pair<const E: i32, const O: i32>(
    acc: &mut [int32x4_t; 16],
    xv: &[int16x8_t; BLOCK_P],
    wp: *const i16,
) {
    let (even_lo, even_hi) = (vld1q_s16(wp), vld1q_s16(wp.add(8)));
    let (odd_lo, odd_hi) = (vld1q_s16(wp.add(16)), vld1q_s16(wp.add(24)));
    for (row, &x) in xv.iter().enumerate() {
        let a = &mut acc[4 * row..4 * row + 4];
        a[0] = vmlal_laneq_s16::<E>(a[0], vget_low_s16(even_lo), x);
        a[0] = vmlal_laneq_s16::<O>(a[0], vget_low_s16(odd_lo), x);
        a[1] = vmlal_high_laneq_s16::<E>(a[1], even_lo, x);
        a[1] = vmlal_high_laneq_s16::<O>(a[1], odd_lo, x);
        a[2] = vmlal_laneq_s16::<E>(a[2], vget_low_s16(even_hi), x);
        a[2] = vmlal_laneq_s16::<O>(a[2], vget_low_s16(odd_hi), x);
        a[3] = vmlal_high_laneq_s16::<E>(a[3], even_hi, x);
        a[3] = vmlal_high_laneq_s16::<O>(a[3], odd_hi, x);
    }
}

/// The block's 16 biases, the accumulators' start.
#[inline(always)]
fn block_bias(r: &Requant, block: usize) -> [int32x4_t; 4] {
    let bias: &[i32; BLOCK_N] = r.bias[block * BLOCK_N..][..BLOCK_N].try_into().unwrap();
    // Safety: 4 lanes from each quarter of a 16-value array.
    [0, 4, 8, 12].map(|i| unsafe { vld1q_s32(bias.as_ptr().add(i)) })
}

/// The requantization in registers, as `Requant::block` computes it (the sums hold the bias
/// already): to f32, × the multiplier, to the nearest integer with ties to even (`fcvtns`), + zero
/// point, clamped, as bytes. The zero point is added after a saturating narrowing to i16 and the
/// clamp done on bytes, 16 at a time: the same values as adding and clamping in i32 (a sum beyond
/// i16 saturates to a value beyond the byte range whichever way, and `lo`, `hi` lie within it).
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
    let m: &[f32; BLOCK_N] = r.multiplier[c0..c0 + BLOCK_N].try_into().unwrap();
    // Safety: 4 lanes from each quarter of a 16-value array.
    let m = [0, 4, 8, 12].map(|i| unsafe { vld1q_f32(m.as_ptr().add(i)) });
    // Safety (here and below): NEON is part of the aarch64 baseline, so its arithmetic
    // intrinsics are sound to call; the stores are bounded as noted. Zero point and bounds are
    // bytes (`Requant::new` checks the one, clamps the others).
    let (zp, lo, hi) = unsafe {
        (
            vdupq_n_s16(r.zero_point as i16),
            vdupq_n_u8(r.lo as u8),
            vdupq_n_u8(r.hi as u8),
        )
    };
    let width = BLOCK_N.min(n - c0);
    for row in 0..rows {
        let bytes = unsafe {
            let v: [int32x4_t; 4] = std::array::from_fn(|i| {
                vcvtnq_s32_f32(vmulq_f32(vcvtq_f32_s32(acc[4 * row + i]), m[i]))
            });
            let lo16 = vqaddq_s16(vqmovn_high_s32(vqmovn_s32(v[0]), v[1]), zp);
            let hi16 = vqaddq_s16(vqmovn_high_s32(vqmovn_s32(v[2]), v[3]), zp);
            vminq_u8(vmaxq_u8(vqmovun_high_s16(vqmovun_s16(lo16), hi16), lo), hi)
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
