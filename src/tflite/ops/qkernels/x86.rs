//! The matrix product on x86: AVX2's `vpmaddwd` (16 multiply-adds an instruction) and, where the
//! CPU has it, AVX-512 VNNI's `vpdpbusd` (64).

pub(super) mod avx2 {
    use std::arch::x86_64::*;

    use super::super::*;

    #[target_feature(enable = "avx2")]
    pub(in super::super) fn matmul(
        x: &[u8],
        pixels: usize,
        w: &PackedWeights,
        r: &Requant,
        y: &mut [u8],
    ) {
        let row_len = w.k_pairs * 2;
        let mut xs = vec![0i16; BLOCK_P * row_len];
        for p0 in (0..pixels).step_by(BLOCK_P) {
            let rows = BLOCK_P.min(pixels - p0);
            widen_rows(x, w.k, p0, rows, row_len, &mut xs);
            for block in 0..w.blocks {
                let wb = &w.data[block * w.k_pairs * BLOCK_N * 2..][..w.k_pairs * BLOCK_N * 2];
                let mut acc = [_mm256_setzero_si256(); 2 * BLOCK_P];
                for (q, wq) in wb.chunks_exact(BLOCK_N * 2).enumerate() {
                    // Safety: `wq` holds 32 i16 (two 256-bit loads); unaligned loads.
                    let (w0, w1) = unsafe {
                        (
                            _mm256_loadu_si256(wq.as_ptr() as *const __m256i),
                            _mm256_loadu_si256(wq.as_ptr().add(16) as *const __m256i),
                        )
                    };
                    for row in 0..BLOCK_P {
                        let at = row * row_len + 2 * q;
                        // The pixel's two channels as one i32, broadcast: (x0, x1) in each lane.
                        let pair = (xs[at] as u16 as u32 | (xs[at + 1] as u16 as u32) << 16) as i32;
                        let xv = _mm256_set1_epi32(pair);
                        acc[2 * row] = _mm256_add_epi32(acc[2 * row], _mm256_madd_epi16(xv, w0));
                        acc[2 * row + 1] =
                            _mm256_add_epi32(acc[2 * row + 1], _mm256_madd_epi16(xv, w1));
                    }
                }
                let mut out = [[0i32; BLOCK_N]; BLOCK_P];
                for (row, out) in out.iter_mut().enumerate() {
                    // Safety: each row is 16 i32, two 256-bit stores.
                    unsafe {
                        _mm256_storeu_si256(out.as_mut_ptr() as *mut __m256i, acc[2 * row]);
                        _mm256_storeu_si256(
                            out.as_mut_ptr().add(8) as *mut __m256i,
                            acc[2 * row + 1],
                        );
                    }
                }
                store_block(&out, rows, p0, block, r, w.n, y);
            }
        }
    }
}

pub(super) mod avx512vnni {
    use std::arch::x86_64::*;

    use super::super::*;

    /// 16 channels to a register, `vpdpbusd` doing four u8 × i8 products and their sum into
    /// each i32 lane in one instruction (64 multiply-adds).
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub(in super::super) fn matmul_quads(
        x: &[u8],
        pixels: usize,
        w: &PackedWeights,
        quads: &Quads,
        r: &Requant,
        y: &mut [u8],
    ) {
        let row_len = quads.k_quads * 4;
        let mut xs = vec![0u8; BLOCK_P * row_len];
        let mut sums = [0i32; BLOCK_P];
        for p0 in (0..pixels).step_by(BLOCK_P) {
            let rows = BLOCK_P.min(pixels - p0);
            xs.fill(0);
            for row in 0..rows {
                let src = &x[(p0 + row) * w.k..][..w.k];
                xs[row * row_len..][..w.k].copy_from_slice(src);
                if quads.any_shift {
                    sums[row] = src.iter().map(|&v| v as i32).sum();
                }
            }
            for block in 0..w.blocks {
                let wb = &quads.data[block * quads.k_quads * BLOCK_N * 4..]
                    [..quads.k_quads * BLOCK_N * 4];
                let mut acc = [_mm512_setzero_si512(); BLOCK_P];
                for (q, wq) in wb.chunks_exact(BLOCK_N * 4).enumerate() {
                    // Safety: `wq` holds 64 bytes, one 512-bit unaligned load.
                    let wv = unsafe { _mm512_loadu_si512(wq.as_ptr() as *const __m512i) };
                    for (row, acc) in acc.iter_mut().enumerate() {
                        // Safety: the row holds whole quads; four pixel bytes as one i32.
                        let quad = unsafe {
                            (xs.as_ptr().add(row * row_len + 4 * q) as *const i32).read_unaligned()
                        };
                        *acc = _mm512_dpbusd_epi32(*acc, _mm512_set1_epi32(quad), wv);
                    }
                }
                if quads.any_shift {
                    // Safety: shifts are padded to whole blocks.
                    let shift = unsafe {
                        _mm512_loadu_si512(
                            quads.shift.as_ptr().add(block * BLOCK_N) as *const __m512i
                        )
                    };
                    for (acc, &sum) in acc.iter_mut().zip(&sums) {
                        *acc = _mm512_add_epi32(
                            *acc,
                            _mm512_mullo_epi32(_mm512_set1_epi32(sum), shift),
                        );
                    }
                }
                store(&acc, rows, p0, block, r, w.n, y);
            }
        }
    }

    /// The requantization in registers: + bias, × multiplier, to the nearest integer (ties to
    /// even: the conversion's rounding mode), + zero point, clamped, narrowed to bytes.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    fn store(
        acc: &[__m512i; BLOCK_P],
        rows: usize,
        p0: usize,
        block: usize,
        r: &Requant,
        n: usize,
        y: &mut [u8],
    ) {
        let c0 = block * BLOCK_N;
        // Safety: bias and multipliers are padded to whole blocks of 16.
        let (bias, m) = unsafe {
            (
                _mm512_loadu_si512(r.bias.as_ptr().add(c0) as *const __m512i),
                _mm512_loadu_ps(r.multiplier.as_ptr().add(c0)),
            )
        };
        let (zp, lo, hi) = (
            _mm512_set1_epi32(r.zero_point as i32),
            _mm512_set1_epi32(r.lo as i32),
            _mm512_set1_epi32(r.hi as i32),
        );
        let width = BLOCK_N.min(n - c0);
        for (row, &acc) in acc.iter().enumerate().take(rows) {
            let v = _mm512_cvtps_epi32(_mm512_mul_ps(
                _mm512_cvtepi32_ps(_mm512_add_epi32(acc, bias)),
                m,
            ));
            let v = _mm512_min_epi32(_mm512_max_epi32(_mm512_add_epi32(v, zp), lo), hi);
            let mut bytes = [0u8; BLOCK_N];
            // Safety: 16 bytes into a 16-byte array.
            unsafe {
                _mm_storeu_si128(
                    bytes.as_mut_ptr() as *mut __m128i,
                    _mm512_cvtusepi32_epi8(v),
                )
            };
            y[(p0 + row) * n + c0..][..width].copy_from_slice(&bytes[..width]);
        }
    }
}
