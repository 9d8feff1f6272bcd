//! The loops behind our operators, written so the compiler vectorises them, and compiled a second
//! time with AVX2 for x86 CPUs that have it (picked at run time: the shipped binary targets the
//! x86-64 baseline, where `f32::round` is a call into libm per element, which is what made the
//! per-layer rounding of the exact graph cost 60% of a frame). On aarch64 the baseline already
//! has NEON's round-half-away (`frinta`), so one build serves every board.
//!
//! Every value here is an integer stored in f32 (8-bit offsets, their products and sums), so the
//! order of the additions does not change a result: these loops give exactly what tract's own
//! convolution and element-wise ops gave in the graph they replace.

use std::ops::Range;

/// Where a depthwise window sits: the input map, the kernel and the output map, NHWC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DepthwiseGeometry {
    pub in_h: usize,
    pub in_w: usize,
    pub channels: usize,
    pub kernel_h: usize,
    pub kernel_w: usize,
    pub stride_h: usize,
    pub stride_w: usize,
    pub pad_top: usize,
    pub pad_left: usize,
    pub out_h: usize,
    pub out_w: usize,
}

impl DepthwiseGeometry {
    /// Output rows `rows` alone, as a geometry of their own, and the input rows their windows
    /// read: the band a thread computes from its slice of the input into its slice of the output
    /// (the windows of the band's first rows start in the input or its top padding, as before).
    pub fn band(&self, rows: Range<usize>) -> (DepthwiseGeometry, Range<usize>) {
        let top = (rows.start * self.stride_h) as isize - self.pad_top as isize;
        let first = top.max(0) as usize;
        let bottom = match rows.end.checked_sub(1) {
            Some(last) => (last * self.stride_h + self.kernel_h) as isize - self.pad_top as isize,
            None => top,
        };
        let end = (bottom.max(0) as usize).clamp(first, self.in_h.max(first));
        let band = DepthwiseGeometry {
            in_h: end - first,
            pad_top: (first as isize - top) as usize,
            out_h: rows.len(),
            ..*self
        };
        (band, first..end)
    }
}

/// TFLite's requantization of a layer's accumulators, in place: `round(acc × m)` (half away from
/// zero), clamped to `[lo, hi]`. `m` has one multiplier per channel; `acc` is whole rows of them.
pub fn requantize(acc: &mut [f32], m: &[f32], lo: f32, hi: f32) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // Safety: the CPU has AVX2 (checked just above).
        return unsafe { requantize_avx2(acc, m, lo, hi) };
    }
    requantize_body(acc, m, lo, hi)
}

/// Two requantized maps brought to the output's grid and summed, rounded once, clamped: TFLite's
/// 8-bit ADD. Writes into `a`.
pub fn add(a: &mut [f32], b: &[f32], ma: f32, mb: f32, lo: f32, hi: f32) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // Safety: the CPU has AVX2 (checked just above).
        return unsafe { add_avx2(a, b, ma, mb, lo, hi) };
    }
    add_body(a, b, ma, mb, lo, hi)
}

/// A map's element as the depthwise loop reads and writes it: f32 offsets (the f32 graph) or u8
/// values with a zero point (the int8 graph), converted in registers.
pub trait Sample: Copy {
    fn to_offset(self, zero_point: f32) -> f32;
    fn from_offset(offset: f32, zero_point: f32) -> Self;
}

impl Sample for f32 {
    #[inline(always)]
    fn to_offset(self, _: f32) -> f32 {
        self
    }
    #[inline(always)]
    fn from_offset(offset: f32, _: f32) -> f32 {
        offset
    }
}

impl Sample for u8 {
    #[inline(always)]
    fn to_offset(self, zero_point: f32) -> f32 {
        self as f32 - zero_point
    }
    #[inline(always)]
    // Not `clamp`: it passes NaN through, which the unchecked conversion must never see.
    #[allow(clippy::manual_clamp)]
    fn from_offset(offset: f32, zero_point: f32) -> u8 {
        // `max`/`min` never return NaN and bound the value to 0..=255 whatever the caller passed
        // (the layer's own range already does; this keeps the conversion sound on its own).
        let v = clamp_to(offset + zero_point, 0.0, 255.0);
        // Safety: `v` is finite and within i32. Unchecked, the conversion is one instruction a
        // lane rather than a saturating sequence (+50% on the whole depthwise loop).
        unsafe { v.to_int_unchecked::<i32>() as u8 }
    }
}

/// A depthwise layer's weights and ending: `kernel` is `[kernel_h, kernel_w, C]` offsets, `bias`
/// (accumulator units) and `multiplier` have `C` values, `[lo, hi]` is the output range in
/// offsets. Zero points apply to u8 maps only.
#[derive(Debug, Clone, Copy)]
pub struct DepthwiseParams<'a> {
    pub kernel: &'a [f32],
    pub bias: &'a [f32],
    pub multiplier: &'a [f32],
    pub lo: f32,
    pub hi: f32,
    pub x_zero_point: f32,
    pub y_zero_point: f32,
}

/// The layer's weights and bias as integers, or `None` where one is not an integer the f32 loop
/// holds exactly (never for a model's 8-bit offsets and int32 bias below 2^24).
#[derive(Debug, Clone, PartialEq)]
pub struct IntegerWeights {
    pub kernel: Vec<i16>,
    /// The whole blocks of 16 channels of `kernel`, block by block: each block's taps one after
    /// the other, so a block's weights are one run of memory.
    pub blocked: Vec<i16>,
    pub bias: Vec<i32>,
}

// Only aarch64 sums in integers (`depthwise_neon`).
#[cfg_attr(not(target_arch = "aarch64"), allow(dead_code))]
impl IntegerWeights {
    pub fn new(p: &DepthwiseParams) -> Option<IntegerWeights> {
        let exact = |v: f32, lo: f32, hi: f32| v.fract() == 0.0 && (lo..=hi).contains(&v);
        let kernel = p.kernel.iter().all(|&k| exact(k, -255.0, 255.0));
        // With |bias| ≤ 2^23, every partial sum of up to 25 taps of ±255 × ±255 stays below
        // 2^24, where f32 holds every integer.
        let limit = (1 << 23) as f32;
        let bias = p.bias.iter().all(|&b| exact(b, -limit, limit));
        let zero_point = exact(p.x_zero_point, 0.0, 255.0);
        let channels = p.bias.len();
        (kernel && bias && zero_point && channels > 0).then(|| {
            let kernel: Vec<i16> = p.kernel.iter().map(|&k| k as i16).collect();
            let taps = kernel.len() / channels;
            let mut blocked = Vec::with_capacity(channels / LANES * LANES * taps);
            for block in 0..channels / LANES {
                for tap in 0..taps {
                    blocked.extend_from_slice(&kernel[tap * channels + block * LANES..][..LANES]);
                }
            }
            IntegerWeights {
                kernel,
                blocked,
                bias: p.bias.iter().map(|&b| b as i32).collect(),
            }
        })
    }
}

/// A depthwise convolution (depth multiplier 1) of one NHWC image with its requantization fused
/// (rounding half away from zero, or with `TIES_EVEN` half to even): `x` is `[in_h, in_w, C]`,
/// `y` is `[out_h, out_w, C]`. Taps outside the map are skipped: the padding is the zero point,
/// whose offset is zero. Sums of at most 25 products of 8-bit offsets are exact in f32.
pub fn depthwise<X: Sample, Y: Sample, const TIES_EVEN: bool>(
    g: &DepthwiseGeometry,
    p: &DepthwiseParams,
    x: &[X],
    y: &mut [Y],
) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // Safety: the CPU has AVX2 (checked just above).
        return unsafe { depthwise_avx2::<X, Y, TIES_EVEN>(g, p, x, y) };
    }
    depthwise_body::<X, Y, TIES_EVEN>(g, p, x, y)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn requantize_avx2(acc: &mut [f32], m: &[f32], lo: f32, hi: f32) {
    requantize_body(acc, m, lo, hi)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn add_avx2(a: &mut [f32], b: &[f32], ma: f32, mb: f32, lo: f32, hi: f32) {
    add_body(a, b, ma, mb, lo, hi)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn depthwise_avx2<X: Sample, Y: Sample, const TIES_EVEN: bool>(
    g: &DepthwiseGeometry,
    p: &DepthwiseParams,
    x: &[X],
    y: &mut [Y],
) {
    depthwise_body::<X, Y, TIES_EVEN>(g, p, x, y)
}

#[inline(always)]
fn requantize_body(acc: &mut [f32], m: &[f32], lo: f32, hi: f32) {
    for row in acc.chunks_exact_mut(m.len()) {
        for (v, &m) in row.iter_mut().zip(m) {
            *v = clamp_to(round_half_away(*v * m), lo, hi);
        }
    }
}

#[inline(always)]
fn add_body(a: &mut [f32], b: &[f32], ma: f32, mb: f32, lo: f32, hi: f32) {
    for (a, &b) in a.iter_mut().zip(b) {
        // The same two products and one sum as the Mul, Mul, Add chain this replaces.
        *a = clamp_to(round_half_away(*a * ma + b * mb), lo, hi);
    }
}

/// TFLite's reference rounding (half away from zero), or XNNPACK's (half to even).
#[inline(always)]
fn round<const TIES_EVEN: bool>(v: f32) -> f32 {
    if TIES_EVEN {
        round_ties_even(v)
    } else {
        round_half_away(v)
    }
}

// 32-bit ARM (VFP and NEON) has no rounding-to-integral instruction and no IEEE min/max, so the
// std functions are calls into libm (`rintf`, `roundf`, `fmaxf`, `fminf`): a call per element in
// every requantizing loop. These give the same results from adds, compares and selects. Every
// other target keeps the std functions, which are single instructions there.

/// `v.round_ties_even()`, the same value for every input (sign of zero, NaN and infinities too).
#[inline(always)]
pub fn round_ties_even(v: f32) -> f32 {
    #[cfg(target_arch = "arm")]
    {
        // Below 2^23, adding 2^23 leaves no fraction bits: the add itself rounds to nearest even,
        // and subtracting 2^23 back is exact. From 2^23 up every f32 is an integer already (NaN
        // fails the compare and passes through).
        const TWO_23: f32 = 8_388_608.0;
        let a = v.abs();
        let r = if a < TWO_23 { (a + TWO_23) - TWO_23 } else { a };
        r.copysign(v)
    }
    #[cfg(not(target_arch = "arm"))]
    v.round_ties_even()
}

/// `v.round()` (half away from zero), the same value for every input.
#[inline(always)]
pub fn round_half_away(v: f32) -> f32 {
    #[cfg(target_arch = "arm")]
    {
        let a = v.abs();
        let r = round_ties_even(a);
        // Only a tie rounded down to even is half away from where `round` goes; `a - r` is exact.
        let r = if a - r == 0.5 { r + 1.0 } else { r };
        r.copysign(v)
    }
    #[cfg(not(target_arch = "arm"))]
    v.round()
}

/// `v.max(lo).min(hi)` for `lo <= hi`: NaN gives `lo`, as `max` does.
#[inline(always)]
// Not `clamp`: it passes NaN through, and callers convert the result unchecked.
#[allow(clippy::manual_clamp)]
pub fn clamp_to(v: f32, lo: f32, hi: f32) -> f32 {
    #[cfg(target_arch = "arm")]
    {
        let v = if v >= lo { v } else { lo };
        if v <= hi {
            v
        } else {
            hi
        }
    }
    #[cfg(not(target_arch = "arm"))]
    v.max(lo).min(hi)
}

/// Channels accumulated together in registers: every MobileNet width is a multiple of 16.
const LANES: usize = 16;

/// The largest depthwise window read (MobileNets use 3×3; EfficientNet-Lite's 5×5 fits too).
pub const MAX_TAPS: usize = 25;

#[inline(always)]
fn depthwise_body<X: Sample, Y: Sample, const TIES_EVEN: bool>(
    g: &DepthwiseGeometry,
    p: &DepthwiseParams,
    x: &[X],
    y: &mut [Y],
) {
    let (k, bias, m, lo, hi) = (p.kernel, p.bias, p.multiplier, p.lo, p.hi);
    let (xz, yz) = (p.x_zero_point, p.y_zero_point);
    let c = g.channels;
    let blocks = c / LANES;
    // Inlined, the window's body is compiled with the caller's target features (AVX2): left a
    // function of its own, it is baseline x86-64, where rounding is a libm call per lane.
    for_each_window(
        g,
        #[inline(always)]
        |pixel, taps| {
            let out = &mut y[pixel * c..][..c];
            for block in 0..blocks {
                let at = block * LANES;
                let mut acc: [f32; LANES] = bias[at..at + LANES].try_into().unwrap();
                for &(xo, ko) in taps {
                    let xs: &[X; LANES] = x[xo + at..xo + at + LANES].try_into().unwrap();
                    let ks: &[f32; LANES] = k[ko + at..ko + at + LANES].try_into().unwrap();
                    for l in 0..LANES {
                        acc[l] += xs[l].to_offset(xz) * ks[l];
                    }
                }
                let ms: &[f32; LANES] = m[at..at + LANES].try_into().unwrap();
                let dst: &mut [Y; LANES] = (&mut out[at..at + LANES]).try_into().unwrap();
                for l in 0..LANES {
                    let v = clamp_to(round::<TIES_EVEN>(acc[l] * ms[l]), lo, hi);
                    dst[l] = Y::from_offset(v, yz);
                }
            }
            for ch in blocks * LANES..c {
                let mut acc = bias[ch];
                for &(xo, ko) in taps {
                    acc += x[xo + ch].to_offset(xz) * k[ko + ch];
                }
                let v = clamp_to(round::<TIES_EVEN>(acc * m[ch]), lo, hi);
                out[ch] = Y::from_offset(v, yz);
            }
        },
    );
}

/// Calls `each(pixel, taps)` for every output pixel (`pixel` = `oy * out_w + ox`) with the (input
/// offset, kernel offset) of each tap of its window that lands inside the input: the window walk
/// of both depthwise loops (this file's and `depthwise_neon`'s).
#[inline(always)]
pub fn for_each_window(g: &DepthwiseGeometry, mut each: impl FnMut(usize, &[(usize, usize)])) {
    let c = g.channels;
    let mut taps = [(0usize, 0usize); MAX_TAPS];
    for oy in 0..g.out_h {
        let top = (oy * g.stride_h) as isize - g.pad_top as isize;
        let ky_from = (-top).max(0) as usize;
        let ky_to = ((g.in_h as isize - top).min(g.kernel_h as isize)).max(0) as usize;
        for ox in 0..g.out_w {
            let left = (ox * g.stride_w) as isize - g.pad_left as isize;
            let kx_from = (-left).max(0) as usize;
            let kx_to = ((g.in_w as isize - left).min(g.kernel_w as isize)).max(0) as usize;
            let mut n = 0;
            for ky in ky_from..ky_to {
                let iy = (top + ky as isize) as usize;
                for kx in kx_from..kx_to {
                    let ix = (left + kx as isize) as usize;
                    taps[n] = ((iy * g.in_w + ix) * c, (ky * g.kernel_w + kx) * c);
                    n += 1;
                }
            }
            each(oy * g.out_w + ox, &taps[..n]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The plain definition, one multiply-add at a time.
    fn depthwise_reference(g: &DepthwiseGeometry, x: &[f32], k: &[f32], bias: &[f32]) -> Vec<f32> {
        let c = g.channels;
        let mut y = vec![0.0; g.out_h * g.out_w * c];
        for oy in 0..g.out_h {
            for ox in 0..g.out_w {
                for ch in 0..c {
                    let mut acc = bias[ch];
                    for ky in 0..g.kernel_h {
                        for kx in 0..g.kernel_w {
                            let iy = (oy * g.stride_h + ky) as isize - g.pad_top as isize;
                            let ix = (ox * g.stride_w + kx) as isize - g.pad_left as isize;
                            if iy < 0 || ix < 0 || iy >= g.in_h as isize || ix >= g.in_w as isize {
                                continue;
                            }
                            let (iy, ix) = (iy as usize, ix as usize);
                            acc +=
                                x[(iy * g.in_w + ix) * c + ch] * k[(ky * g.kernel_w + kx) * c + ch];
                        }
                    }
                    y[(oy * g.out_w + ox) * c + ch] = acc;
                }
            }
        }
        y
    }

    #[test]
    fn depthwise_matches_the_definition_with_padding_strides_and_odd_channels() {
        // 40 channels: two register blocks and a tail of 8; stride 2 with SAME padding on an odd
        // map, as MobileNet's downsampling layers have.
        let (mut clamped_low, mut clamped_high) = (false, false);
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
            let x: Vec<f32> = (0..in_hw * in_hw * c)
                .map(|i| ((i * 37) % 255) as f32 - 127.0)
                .collect();
            let k: Vec<f32> = (0..9 * c)
                .map(|i| ((i * 53) % 255) as f32 - 100.0)
                .collect();
            let bias: Vec<f32> = (0..c).map(|i| (i as f32 - 20.0) * 8000.0).collect();
            let m: Vec<f32> = (0..c).map(|i| 0.002 + i as f32 * 1e-5).collect();
            let mut expected = depthwise_reference(&g, &x, &k, &bias);
            requantize(&mut expected, &m, -10.0, 245.0);
            let mut y = vec![f32::NAN; expected.len()];
            let params = DepthwiseParams {
                kernel: &k,
                bias: &bias,
                multiplier: &m,
                lo: -10.0,
                hi: 245.0,
                x_zero_point: 0.0,
                y_zero_point: 0.0,
            };
            depthwise::<f32, f32, false>(&g, &params, &x, &mut y);
            // The same layer on u8 maps (zero points 127 and 10): the same values, shifted.
            let xu: Vec<u8> = x.iter().map(|&v| (v + 127.0) as u8).collect();
            let mut yu = vec![0u8; expected.len()];
            let u8_params = DepthwiseParams {
                x_zero_point: 127.0,
                y_zero_point: 10.0,
                ..params
            };
            depthwise::<u8, u8, false>(&g, &u8_params, &xu, &mut yu);
            let shifted: Vec<f32> = yu.iter().map(|&v| v as f32 - 10.0).collect();
            assert_eq!(shifted, expected);
            assert_eq!(y, expected, "stride {stride}, {in_hw}x{in_hw}, pad {pad}");
            // Any band of output rows, from its own input rows, gives those rows (how a frame
            // is split over threads).
            let (in_row, out_row) = (in_hw * c, out_hw * c);
            for start in 0..out_hw {
                for end in start + 1..=out_hw {
                    let (band, rows) = g.band(start..end);
                    let mut part = vec![f32::NAN; (end - start) * out_row];
                    let x = &x[rows.start * in_row..rows.end * in_row];
                    depthwise::<f32, f32, false>(&band, &params, x, &mut part);
                    assert_eq!(
                        part,
                        y[start * out_row..end * out_row],
                        "rows {start}..{end}"
                    );
                }
            }
            // The data reach both ends of the range, so the clamps are exercised too.
            clamped_low |= y.contains(&-10.0);
            clamped_high |= y.contains(&245.0);
        }
        assert!(clamped_low && clamped_high);
    }

    #[test]
    fn requantize_rounds_half_away_from_zero_and_clamps() {
        let mut acc = vec![2.5, -2.5, 0.49999997, -7.5, 1000.0, -1000.0];
        requantize(&mut acc, &[1.0; 6], -128.0, 127.0);
        assert_eq!(acc, [3.0, -3.0, 0.0, -8.0, 127.0, -128.0]);
        let mut a = vec![1.0, -3.0];
        add(&mut a, &[2.0, 1.0], 0.5, 0.25, -2.0, 2.0);
        assert_eq!(a, [1.0, -1.0]);
    }

    /// Values where a rounding or clamping written by hand goes wrong: ties on both sides of
    /// even, the edges of the exact-integer range, zeros, infinities, NaN, subnormals, and a
    /// spread of bit patterns. (Only 32-bit ARM compiles the hand-written versions; elsewhere
    /// these are the std functions themselves.)
    fn awkward_values() -> Vec<f32> {
        let mut v: Vec<f32> = (-2000..=2000).map(|k| k as f32 / 4.0).collect();
        for e in [22, 23, 24, 30] {
            let p = (1u32 << e) as f32;
            for x in [
                p,
                f32::from_bits(p.to_bits() - 1),
                f32::from_bits(p.to_bits() + 1),
            ] {
                v.extend([x, -x, x + 0.5, -x - 0.5]);
            }
        }
        v.extend([
            0.0,
            -0.0,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
            f32::MAX,
            f32::MIN,
        ]);
        v.extend([
            f32::MIN_POSITIVE,
            -f32::MIN_POSITIVE,
            f32::from_bits(1),
            0.49999997,
        ]);
        v.extend([
            -0.49999997,
            0.50000006,
            8_388_607.5,
            -8_388_607.5,
            4_194_303.5,
        ]);
        let mut bits = 0x1234_5678u32;
        for _ in 0..20_000 {
            bits = bits.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            v.push(f32::from_bits(bits));
            // Mostly the requantizers' range, where the results matter.
            v.push(f32::from_bits(bits) % 600.0);
        }
        v
    }

    fn same(a: f32, b: f32) -> bool {
        a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan())
    }

    #[test]
    fn rounding_and_clamping_equal_the_std_functions_bit_for_bit() {
        for v in awkward_values() {
            let (even, away) = (round_ties_even(v), round_half_away(v));
            assert!(same(even, v.round_ties_even()), "{v:e}: {even:e}");
            assert!(same(away, v.round()), "{v:e}: {away:e}");
            for (lo, hi) in [(0.0, 255.0), (-128.0, 127.0), (-10.0, 245.0)] {
                let c = clamp_to(v, lo, hi);
                let expected = v.max(lo).min(hi);
                // `max` may return either zero for a zero bound; the value is what matters. On
                // 32-bit ARM std's `max` flushes a subnormal to zero; both convert to 0.
                let flushed = v.is_subnormal() && expected == 0.0 && c == v;
                assert!(
                    (c == expected || flushed) && !c.is_nan(),
                    "{v:e} in [{lo}, {hi}]: {c:e}"
                );
            }
        }
    }
}
