//! The 8-bit loops behind the int8 graph: the convolution as a matrix product of u8 pixels by
//! 16-bit weight offsets, accumulated in i32, and the ADD, each ending in the requantization onto
//! the output's u8 grid. (The depthwise convolution runs on the f32 graph's loop, reading and
//! writing u8, except on aarch64, where `depthwise_neon` sums it in integers.)
//!
//! Arithmetic: LiteRT's own, as its default CPU path (XNNPACK) computes it. Every accumulator is
//! the exact integer sum, with the file's int32 bias as it is; each layer ends with XNNPACK's f32
//! requantization (round to nearest even) and the ADD with its integer multipliers. On the golden
//! frames the embeddings are LiteRT's (cosine 1.000000).
//!
//! The matrix product is written with AVX-512 VNNI intrinsics where the CPU has them (`vpdpbusd`:
//! 64 multiply-adds an instruction), AVX2 ones elsewhere on x86 (`vpmaddwd`: 16), both in
//! `x86`; on aarch64 with the dot product where the CPU has it (`udot` by element: 16, a Pi 5's
//! Cortex-A76) and baseline NEON elsewhere (`smlal` by element: 4, a Pi 4's Cortex-A72), both
//! register-blocked kernels in `neon`; and as plain loops on other CPUs.

use super::kernels::{clamp_to, round_ties_even};

#[cfg(target_arch = "aarch64")]
mod neon;
#[cfg(target_arch = "x86_64")]
mod x86;
#[cfg(target_arch = "x86_64")]
use x86::{avx2, avx512vnni};

/// Output channels one pass of the matrix product computes (two AVX2 registers of i32).
pub const BLOCK_N: usize = 16;
/// Pixels one pass of the matrix product computes, sharing each weight load.
const BLOCK_P: usize = 4;

/// 1×1 convolution weights as offsets from their zero points, packed for the product: for each
/// block of 16 output channels, for each pair of input channels, the 16 channels' two weights
/// (`pair_slot`), zero-padded to whole blocks and pairs.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PackedWeights {
    pub n: usize,
    pub k: usize,
    k_pairs: usize,
    blocks: usize,
    data: Vec<i16>,
    /// The same weights as bytes for a dot-product instruction, where the CPU has one: AVX-512
    /// VNNI's `vpdpbusd` (u8 × i8), ARMv8.2 DotProd's `udot` (u8 × u8).
    quads: Option<Quads>,
}

/// How a dot-product instruction reads the weight bytes.
#[cfg_attr(
    not(any(target_arch = "x86_64", target_arch = "aarch64")),
    allow(dead_code)
)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum WeightBytes {
    /// i8 (`vpdpbusd`).
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    Signed,
    /// u8 (`udot`).
    #[cfg_attr(not(target_arch = "aarch64"), allow(dead_code))]
    Unsigned,
}

/// Weights packed for a product of pixel bytes by weight bytes four input channels at a time: for
/// each block of 16 output channels, for each quad of input channels, the 16 channels' four
/// weights side by side. A channel whose offsets do not fit the byte (uint8 weights minus their
/// zero point lie anywhere in ±255, though one channel's span at most 256 values) is stored
/// shifted by `shift[c]`, and the product adds `shift[c] × Σ pixels` back.
// Packed and read only where a dot-product kernel exists.
#[cfg_attr(
    not(any(target_arch = "x86_64", target_arch = "aarch64")),
    allow(dead_code)
)]
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Quads {
    k_quads: usize,
    /// The shifted weights, as i8 or u8 bits (`WeightBytes`).
    data: Vec<u8>,
    /// Per channel, padded to whole blocks.
    shift: Vec<i32>,
    any_shift: bool,
}

#[cfg_attr(
    not(any(target_arch = "x86_64", target_arch = "aarch64")),
    allow(dead_code)
)]
impl Quads {
    /// `None` if a channel's offsets span more than 256 values (no 8-bit shift holds them), or
    /// if a sum of `k` products of two bytes could pass i32 (`udot` sums in u32).
    fn pack(w: &[i16], n: usize, k: usize, blocks: usize, bytes: WeightBytes) -> Option<Quads> {
        if k > i32::MAX as usize / (255 * 255) {
            return None;
        }
        let k_quads = k.div_ceil(4);
        let mut data = vec![0u8; blocks * k_quads * BLOCK_N * 4];
        let mut shift = vec![0i32; blocks * BLOCK_N];
        for c in 0..n {
            let row = &w[c * k..][..k];
            let (lo, hi) = row
                .iter()
                .fold((i16::MAX, i16::MIN), |(lo, hi), &v| (lo.min(v), hi.max(v)));
            if hi as i32 - lo as i32 > 255 {
                return None;
            }
            shift[c] = match bytes {
                WeightBytes::Signed if lo >= -128 && hi <= 127 => 0,
                WeightBytes::Signed => lo as i32 + 128,
                WeightBytes::Unsigned if lo >= 0 => 0,
                WeightBytes::Unsigned => lo as i32,
            };
            let (block, lane) = (c / BLOCK_N, c % BLOCK_N);
            for (i, &v) in row.iter().enumerate() {
                let at = (block * k_quads + i / 4) * BLOCK_N * 4 + lane * 4 + i % 4;
                // Within the byte's range by the choice of shift: the bits of an i8 or a u8.
                data[at] = (v as i32 - shift[c]) as u8;
            }
        }
        let any_shift = shift.iter().any(|&d| d != 0);
        Some(Quads {
            k_quads,
            data,
            shift,
            any_shift,
        })
    }
}

/// Where channel `lane`'s weight for the even (`parity` 0) or the odd input of a pair lies among
/// the pair's 32: interleaved (`[c0k0, c0k1, c1k0, c1k1, ...]`) for AVX2's `vpmaddwd` and the
/// portable loop; on aarch64 the 16 even ones, then the 16 odd ones, which NEON's kernel loads as
/// four whole registers at fixed offsets from one pointer (de-interleaving loads, `ld2`, take no
/// offset: each needed an address computed, 9 instructions in 151 per step).
#[inline(always)]
fn pair_slot(lane: usize, parity: usize) -> usize {
    if cfg!(target_arch = "aarch64") {
        parity * BLOCK_N + lane
    } else {
        lane * 2 + parity
    }
}

impl PackedWeights {
    /// `w` is `[n][k]` offsets (`q - zero_point`, within ±255).
    pub fn pack(w: &[i16], n: usize, k: usize) -> PackedWeights {
        assert_eq!(w.len(), n * k, "weights are [n][k]");
        let k_pairs = k.div_ceil(2);
        let blocks = n.div_ceil(BLOCK_N);
        let mut data = vec![0i16; blocks * k_pairs * BLOCK_N * 2];
        for c in 0..n {
            let (block, lane) = (c / BLOCK_N, c % BLOCK_N);
            for i in 0..k {
                let at = (block * k_pairs + i / 2) * BLOCK_N * 2 + pair_slot(lane, i % 2);
                data[at] = w[c * k + i];
            }
        }
        #[cfg(target_arch = "x86_64")]
        let quads = (std::arch::is_x86_feature_detected!("avx512vnni")
            && std::arch::is_x86_feature_detected!("avx512bw"))
        .then(|| Quads::pack(w, n, k, blocks, WeightBytes::Signed))
        .flatten();
        #[cfg(target_arch = "aarch64")]
        let quads = std::arch::is_aarch64_feature_detected!("dotprod")
            .then(|| Quads::pack(w, n, k, blocks, WeightBytes::Unsigned))
            .flatten();
        #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
        let quads = None;
        PackedWeights {
            n,
            k,
            k_pairs,
            blocks,
            data,
            quads,
        }
    }
}

/// The end of a layer on the u8 grid, as LiteRT's default CPU path (XNNPACK) ends it: `acc + bias`
/// times the channel's f32 multiplier (input scale × weight scale / output scale), rounded to
/// nearest even, plus the output zero point, clamped to `[lo, hi]` (the 8-bit range met with the
/// fused activation).
#[derive(Debug, Clone, PartialEq)]
pub struct Requant {
    /// Per output channel, in accumulator units, padded with zeros to whole blocks of
    /// [`BLOCK_N`]; for the matrix product it also holds `-x_zero_point × Σ weights`, so pixels
    /// enter as raw bytes.
    bias: Vec<i32>,
    /// Per output channel, padded as `bias`.
    multiplier: Vec<f32>,
    zero_point: f32,
    lo: f32,
    hi: f32,
}

// Multipliers are finite numbers from the model file, never NaN.
impl Eq for Requant {}

impl Requant {
    /// `zero_point` is the output's, a byte (the kernels' narrowings rely on it).
    pub fn new(bias: Vec<i32>, multiplier: Vec<f32>, zero_point: i32, lo: i32, hi: i32) -> Requant {
        assert!((0..=255).contains(&zero_point), "a u8 zero point");
        assert_eq!(
            bias.len(),
            multiplier.len(),
            "one bias and one multiplier per channel"
        );
        let padded = bias.len().div_ceil(BLOCK_N) * BLOCK_N;
        let (mut bias, mut multiplier) = (bias, multiplier);
        bias.resize(padded, 0);
        multiplier.resize(padded, 0.0);
        Requant {
            bias,
            multiplier,
            zero_point: zero_point as f32,
            // Within the u8 grid whatever the caller passes: the narrowing relies on it.
            lo: lo.clamp(0, 255) as f32,
            hi: hi.clamp(0, 255) as f32,
        }
    }

    /// Folds `-x_zero_point × Σ weights` of each channel into its bias.
    pub fn fold_input_zero_point(&mut self, x_zero_point: i32, weight_sums: &[i32]) {
        for (b, &sum) in self.bias.iter_mut().zip(weight_sums) {
            *b -= x_zero_point * sum;
        }
    }

    /// The 16 channels from `c0` (a multiple of 16), in one vectorisable pass.
    #[cfg_attr(target_arch = "aarch64", allow(dead_code))]
    #[inline(always)]
    fn block(&self, c0: usize, acc: &[i32; BLOCK_N], out: &mut [u8; BLOCK_N]) {
        let bias: &[i32; BLOCK_N] = self.bias[c0..c0 + BLOCK_N].try_into().unwrap();
        let m: &[f32; BLOCK_N] = self.multiplier[c0..c0 + BLOCK_N].try_into().unwrap();
        for l in 0..BLOCK_N {
            let v = round_ties_even((acc[l] + bias[l]) as f32 * m[l]);
            let v = clamp_to(v + self.zero_point, self.lo, self.hi);
            // Safety: clamped to [lo, hi] within 0..=255 (max/min never return NaN here).
            out[l] = unsafe { v.to_int_unchecked::<i32>() } as u8;
        }
    }
}

/// `y[p][c] = requant(Σ_i x[p][i] × w[c][i])` for `p` pixels of `k` channels each.
pub fn matmul(x: &[u8], pixels: usize, w: &PackedWeights, r: &Requant, y: &mut [u8]) {
    #[cfg(target_arch = "x86_64")]
    if let Some(quads) = &w.quads {
        // Safety: byte weights are packed only where the CPU has AVX-512 F, BW and VNNI.
        return unsafe { avx512vnni::matmul_quads(x, pixels, w, quads, r, y) };
    }
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // Safety: the CPU has AVX2 (checked just above).
        return unsafe { avx2::matmul(x, pixels, w, r, y) };
    }
    #[cfg(target_arch = "aarch64")]
    if let Some(quads) = &w.quads {
        // Safety: byte weights are packed only where the CPU has DotProd.
        return unsafe { neon::matmul_dot(x, pixels, w, quads, r, y) };
    }
    #[cfg(target_arch = "aarch64")]
    return neon::matmul(x, pixels, w, r, y);
    #[cfg(not(target_arch = "aarch64"))]
    matmul_portable(x, pixels, w, r, y)
}

/// Gathers each output pixel's window into one row, `[kernel_h][kernel_w][C]`, so a k×k
/// convolution becomes a product; taps outside the map take the input zero point, whose offset
/// is zero, as TFLite pads.
pub fn im2col(g: &super::kernels::DepthwiseGeometry, x: &[u8], zero_point: u8, out: &mut [u8]) {
    let c = g.channels;
    let row = g.kernel_h * g.kernel_w * c;
    for oy in 0..g.out_h {
        for ox in 0..g.out_w {
            let dst = &mut out[(oy * g.out_w + ox) * row..][..row];
            let left = (ox * g.stride_w) as isize - g.pad_left as isize;
            let inside_x = left >= 0 && left as usize + g.kernel_w <= g.in_w;
            for ky in 0..g.kernel_h {
                let iy = (oy * g.stride_h + ky) as isize - g.pad_top as isize;
                if inside_x && iy >= 0 && (iy as usize) < g.in_h {
                    // The window's row is contiguous in the map: one copy, not one per tap.
                    let width = g.kernel_w * c;
                    let from = (iy as usize * g.in_w + left as usize) * c;
                    dst[ky * width..][..width].copy_from_slice(&x[from..][..width]);
                    continue;
                }
                for kx in 0..g.kernel_w {
                    let ix = (ox * g.stride_w + kx) as isize - g.pad_left as isize;
                    let d = &mut dst[(ky * g.kernel_w + kx) * c..][..c];
                    if iy < 0 || ix < 0 || iy >= g.in_h as isize || ix >= g.in_w as isize {
                        d.fill(zero_point);
                    } else {
                        d.copy_from_slice(&x[(iy as usize * g.in_w + ix as usize) * c..][..c]);
                    }
                }
            }
        }
    }
}

/// Widens up to `BLOCK_P` rows of pixels into i16, zero-padded to whole pairs and whole blocks.
// On aarch64 only the portable loop, kept as the definition the NEON kernel is tested against,
// uses this and `store_block`.
#[cfg_attr(target_arch = "aarch64", allow(dead_code))]
#[inline(always)]
fn widen_rows(x: &[u8], k: usize, first: usize, rows: usize, row_len: usize, out: &mut [i16]) {
    out.fill(0);
    for r in 0..rows {
        let src = &x[(first + r) * k..][..k];
        for (d, &s) in out[r * row_len..][..k].iter_mut().zip(src) {
            *d = s as i16;
        }
    }
}

/// Writes a block's accumulators, requantized, into the rows and channels that exist.
#[cfg_attr(target_arch = "aarch64", allow(dead_code))]
#[inline(always)]
fn store_block(
    acc: &[[i32; BLOCK_N]; BLOCK_P],
    rows: usize,
    first_pixel: usize,
    block: usize,
    r: &Requant,
    n: usize,
    y: &mut [u8],
) {
    let c0 = block * BLOCK_N;
    let width = BLOCK_N.min(n - c0);
    for (row, acc) in acc.iter().enumerate().take(rows) {
        let mut out = [0u8; BLOCK_N];
        r.block(c0, acc, &mut out);
        y[(first_pixel + row) * n + c0..][..width].copy_from_slice(&out[..width]);
    }
}

#[cfg_attr(target_arch = "aarch64", allow(dead_code))]
fn matmul_portable(x: &[u8], pixels: usize, w: &PackedWeights, r: &Requant, y: &mut [u8]) {
    let row_len = w.k_pairs * 2;
    let mut xs = vec![0i16; BLOCK_P * row_len];
    for p0 in (0..pixels).step_by(BLOCK_P) {
        let rows = BLOCK_P.min(pixels - p0);
        widen_rows(x, w.k, p0, rows, row_len, &mut xs);
        for block in 0..w.blocks {
            let wb = &w.data[block * w.k_pairs * BLOCK_N * 2..][..w.k_pairs * BLOCK_N * 2];
            let mut acc = [[0i32; BLOCK_N]; BLOCK_P];
            for (q, wq) in wb.chunks_exact(BLOCK_N * 2).enumerate() {
                for (row, acc) in acc.iter_mut().enumerate() {
                    let x0 = xs[row * row_len + 2 * q] as i32;
                    let x1 = xs[row * row_len + 2 * q + 1] as i32;
                    for j in 0..BLOCK_N {
                        acc[j] += x0 * wq[pair_slot(j, 0)] as i32 + x1 * wq[pair_slot(j, 1)] as i32;
                    }
                }
            }
            store_block(&acc, rows, p0, block, r, w.n, y);
        }
    }
}

/// The 8-bit ADD as LiteRT's default CPU path (XNNPACK's `qu8_vadd`) computes it: each input's
/// scale over the output's as an integer multiplier of about 21 bits, one integer sum with the
/// zero points and the rounding folded into a bias, one arithmetic shift, clamped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddParams {
    pub bias: i32,
    pub a_multiplier: i32,
    pub b_multiplier: i32,
    pub shift: u32,
    pub zero_point: i32,
    /// The output range on the u8 grid.
    pub lo: i32,
    pub hi: i32,
}

impl AddParams {
    /// From the inputs' and the output's scales and zero points (`[a, b, output]`).
    pub fn new(scales: [f32; 3], zero_points: [i32; 3], lo: i32, hi: i32) -> AddParams {
        let [sa, sb, so] = scales;
        let (a_scale, b_scale) = (sa / so, sb / so);
        let max_scale = a_scale.abs().max(b_scale.abs());
        let exponent = (max_scale.to_bits() >> 23) as i32 - 127;
        // 20 bits for the larger multiplier, within XNNPACK's [12, 30] shifts.
        let shift = (20 - exponent).clamp(12, 30) as u32;
        let scaled = |s: f32| (s * (1u32 << shift) as f32).round_ties_even() as i32;
        let (a_multiplier, b_multiplier) = (scaled(a_scale), scaled(b_scale));
        let rounding = 1i32 << (shift - 1);
        AddParams {
            bias: rounding - a_multiplier * zero_points[0] - b_multiplier * zero_points[1],
            a_multiplier,
            b_multiplier,
            shift,
            zero_point: zero_points[2],
            lo,
            hi,
        }
    }

    #[inline(always)]
    fn apply(&self, a: u8, b: u8) -> u8 {
        let acc = self.bias + a as i32 * self.a_multiplier + b as i32 * self.b_multiplier;
        ((acc >> self.shift) + self.zero_point).clamp(self.lo, self.hi) as u8
    }
}

pub fn add(a: &[u8], b: &[u8], p: &AddParams, y: &mut [u8]) {
    for ((y, &a), &b) in y.iter_mut().zip(a).zip(b) {
        *y = p.apply(a, b);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The plain definition of a product, requantized to the output zero point 128 and clamped to
    /// `lo..=hi`.
    fn reference(
        x: &[u8],
        w: &[i16],
        r: (&[i32], &[f32]),
        shape: (usize, usize, usize),
        (lo, hi): (i32, i32),
    ) -> Vec<u8> {
        let (pixels, n, k) = shape;
        let (bias, m) = r;
        let mut expected = vec![0u8; pixels * n];
        for p in 0..pixels {
            for c in 0..n {
                let acc: i32 = (0..k)
                    .map(|i| x[p * k + i] as i32 * w[c * k + i] as i32)
                    .sum();
                let v = ((acc + bias[c]) as f32 * m[c]).round_ties_even() as i32;
                expected[p * n + c] = (v + 128).clamp(lo, hi) as u8;
            }
        }
        expected
    }

    #[test]
    fn matmul_is_the_exact_integer_product_requantized() {
        // 21 output channels (a block and a tail), 7 input channels (an odd one out of pairs and
        // quads), 6 pixels (a block of 4 and a tail). Weights as uint8 files have them (offsets
        // from a zero point of 100: some channels need the byte layout's shift) and as int8
        // files have them (within ±127).
        let (n, k, pixels) = (21, 7, 6);
        let x: Vec<u8> = (0..pixels * k).map(|i| ((i * 131) % 256) as u8).collect();
        let bias: Vec<i32> = (0..n as i32).map(|c| (c - 10) * 20_000).collect();
        for (zero_point, scale) in [(100i16, 0.001f32), (127, 0.002)] {
            let w: Vec<i16> = (0..n * k)
                .map(|i| ((i * 89) % if zero_point == 127 { 255 } else { 256 }) as i16 - zero_point)
                .collect();
            // Some channels' values far beyond i16 both ways, for the kernels' saturating
            // narrowings.
            let m: Vec<f32> = (0..n)
                .map(|c| {
                    if c % 7 == 3 {
                        50.0
                    } else {
                        scale + c as f32 * 1e-4
                    }
                })
                .collect();
            let r = Requant::new(bias.clone(), m.clone(), 128, 28, 248);
            let expected = reference(&x, &w, (&bias, &m), (pixels, n, k), (28, 248));
            assert!(
                expected.contains(&28) && expected.contains(&248),
                "clamps exercised"
            );
            assert!(
                expected.iter().any(|&v| v > 28 && v < 248),
                "not all clamped"
            );
            let packed = PackedWeights::pack(&w, n, k);
            let mut y = vec![0u8; pixels * n];
            matmul(&x, pixels, &packed, &r, &mut y);
            assert_eq!(y, expected);
            let mut portable = vec![0u8; pixels * n];
            matmul_portable(&x, pixels, &packed, &r, &mut portable);
            assert_eq!(portable, expected);
            #[cfg(target_arch = "x86_64")]
            if std::arch::is_x86_feature_detected!("avx2") {
                let mut avx2 = vec![0u8; pixels * n];
                // Safety: the CPU has AVX2 (checked just above).
                unsafe { avx2::matmul(&x, pixels, &packed, &r, &mut avx2) };
                assert_eq!(avx2, expected);
            }
            #[cfg(target_arch = "x86_64")]
            if let Some(quads) = &packed.quads {
                assert_eq!(quads.any_shift, zero_point == 100);
            }
            #[cfg(target_arch = "aarch64")]
            {
                // Under qemu's `max` core (CI) `matmul` took the dot product; the baseline
                // kernel must agree, whichever ran above.
                let mut baseline = vec![0u8; pixels * n];
                neon::matmul(&x, pixels, &packed, &r, &mut baseline);
                assert_eq!(baseline, expected);
                assert_eq!(
                    packed.quads.is_some(),
                    std::arch::is_aarch64_feature_detected!("dotprod")
                );
            }
        }
    }

    #[test]
    fn matmul_is_exact_for_every_count_of_input_channels() {
        // The kernels step through input channels 8 at a time (NEON), 4 (VNNI) or 2 (AVX2, the
        // portable loop): every remainder of each, whole steps before it or not, and 5 pixels
        // (a block of 4 and a tail of one) of 35 channels (two blocks and a tail).
        let (n, pixels) = (35, 5);
        for k in (1..=18).chain([27, 37, 64]) {
            let x: Vec<u8> = (0..pixels * k).map(|i| ((i * 173) % 256) as u8).collect();
            let w: Vec<i16> = (0..n * k).map(|i| ((i * 61) % 256) as i16 - 120).collect();
            let bias: Vec<i32> = (0..n as i32).map(|c| (c - 17) * 300).collect();
            let m: Vec<f32> = (0..n).map(|c| 0.02 / k as f32 + c as f32 * 1e-5).collect();
            let r = Requant::new(bias.clone(), m.clone(), 128, 0, 255);
            let expected = reference(&x, &w, (&bias, &m), (pixels, n, k), (0, 255));
            assert!(expected.iter().filter(|&&v| v > 0 && v < 255).count() > pixels * n / 2);
            let packed = PackedWeights::pack(&w, n, k);
            let mut y = vec![0u8; pixels * n];
            matmul(&x, pixels, &packed, &r, &mut y);
            assert_eq!(y, expected, "{k} input channels");
        }
    }
}
