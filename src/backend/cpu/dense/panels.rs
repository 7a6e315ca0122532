//! Dense matmul on AVX-512 for F32 / F16 / BF16 weights repacked at load into 8 × 16 panels.
//!
//! - The packed-B layout of BLIS-style GEMMs: one k-step of a panel is 8 × 16 contiguous values,
//!   so a tile streams memory strictly in order and the prefetcher sees one stream per task
//!   instead of eight strided rows — what batch-1 decode needs to reach memory bandwidth.
//! - Rows pad to a multiple of 8 and k to a multiple of 16 with zeros.
//! - Every (token, row) accumulates in 16 lanes over k and ends in one `_mm512_reduce_add_ps`
//!   whatever the tile's token count, so a token's output is bit-identical batched or alone.

use super::{for_each_column_chunk, has_avx512, SendPtr, WElem};

/// Weight rows per panel.
pub const PR: usize = 8;
/// k per step.
const KS: usize = 16;
/// Tokens per tile (24 accumulators + 3 activations + 1 weight of 32 registers).
const MR: usize = 3;
/// Tokens per cache block (their activations stay in L2 while a panel sweeps them).
const MC: usize = 64;

/// Whether this CPU runs the panel kernels.
pub fn available() -> bool {
    has_avx512()
}

/// A `[n, k]` weight in panels.
#[derive(Clone, Debug)]
pub struct Panels<W> {
    pub n: usize,
    pub k: usize,
    /// k rounded up to 16
    k16: usize,
    /// (n.div_ceil(8), k16 / 16, 8, 16): panel p, step s, row r, lane e = w[8p + r, 16s + e]
    data: Vec<W>,
}

impl<W: WElem + Default> Panels<W> {
    /// Repack a row-major `w (n, k)`.
    pub fn pack(w: &[W], n: usize, k: usize) -> Panels<W> {
        let k16 = k.div_ceil(KS) * KS;
        let mut data = vec![W::default(); n.div_ceil(PR) * PR * k16];
        for (j, row) in w.chunks_exact(k).take(n).enumerate() {
            for (s, chunk) in row.chunks(KS).enumerate() {
                let at = ((j / PR * (k16 / KS) + s) * PR + j % PR) * KS;
                data[at..at + chunk.len()].copy_from_slice(chunk);
            }
        }
        Panels { n, k, k16, data }
    }

    /// The packed values: (n.div_ceil(8), k16 / 16, 8, 16).
    pub fn data(&self) -> &[W] {
        &self.data
    }

    /// k rounded up to 16: the packed row length.
    pub fn k16(&self) -> usize {
        self.k16
    }

    /// Row `r` widened into out (k).
    pub fn row_into(&self, r: usize, out: &mut [f32]) {
        for (s, chunk) in out[..self.k].chunks_mut(KS).enumerate() {
            let at = ((r / PR * (self.k16 / KS) + s) * PR + r % PR) * KS;
            let len = chunk.len();
            chunk
                .iter_mut()
                .zip(&self.data[at..at + len])
                .for_each(|(o, v)| *o = v.to_f32());
        }
    }
}

/// out (m, n) = x (m, k) · Wᵀ.
///
/// # Panics
/// If the buffers are smaller than the shape says or the CPU lacks AVX-512 F/BW/VL.
pub fn matmul<W: WElem>(out: &mut [f32], x: &[f32], m: usize, w: &Panels<W>) {
    let (n, k) = (w.n, w.k);
    assert!(
        out.len() >= m * n && x.len() >= m * k,
        "panel matmul: buffers too small"
    );
    assert!(
        available(),
        "AVX-512 panel kernels on a CPU without AVX-512 F/BW/VL"
    );
    let p = SendPtr(out.as_mut_ptr());
    for_each_column_chunk(m, n, k, PR, |n0, n1| {
        #[allow(clippy::redundant_locals)] // capture the Sync wrapper, not its raw pointer field
        let p = p;
        #[cfg(target_arch = "x86_64")]
        // SAFETY: AVX-512 presence and buffer sizes asserted above; chunks are whole panels
        // (n0 a multiple of 8) and this task writes only columns n0..n1 of out.
        unsafe {
            imp::panels(p.0, x, m, w, n0 / PR, n1.div_ceil(PR), n1)
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = (p, n0, n1);
    });
}

#[cfg(target_arch = "x86_64")]
mod imp {
    use super::{Panels, KS, MC, MR, PR};
    use crate::backend::cpu::dense::WElem;
    use std::arch::x86_64::*;

    /// Panels p0..p1 (output columns below n_end) against every token.
    ///
    /// # Safety
    /// See `super::matmul`.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    pub unsafe fn panels<W: WElem>(
        out: *mut f32,
        x: &[f32],
        m: usize,
        w: &Panels<W>,
        p0: usize,
        p1: usize,
        n_end: usize,
    ) {
        let mut i0 = 0;
        while i0 < m {
            let i1 = (i0 + MC).min(m);
            for p in p0..p1 {
                let live = (n_end - p * PR).min(PR);
                let mut i = i0;
                while i < i1 {
                    match i1 - i {
                        1 => tile::<1, W>(out, x, w, i, p, live),
                        2 => tile::<2, W>(out, x, w, i, p, live),
                        _ => tile::<MR, W>(out, x, w, i, p, live),
                    }
                    i += (i1 - i).min(MR);
                }
            }
            i0 = i1;
        }
    }

    /// Tokens i..i+R against panel p; stores the first `live` of its 8 rows.
    ///
    /// # Safety
    /// i + R <= m, p a panel of w, CPU has AVX-512 F/BW/VL.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    #[inline]
    unsafe fn tile<const R: usize, W: WElem>(
        out: *mut f32,
        x: &[f32],
        w: &Panels<W>,
        i: usize,
        p: usize,
        live: usize,
    ) {
        let (n, k) = (w.n, w.k);
        let steps = w.k16 / KS;
        let mut wp = w.data.as_ptr().add(p * steps * PR * KS);
        let mut acc = [[_mm512_setzero_ps(); PR]; R];
        for s in 0..steps {
            let t = s * KS;
            let valid = (k - t).min(KS);
            let mut xv = [_mm512_setzero_ps(); R];
            for (r, v) in xv.iter_mut().enumerate() {
                *v = f32::load16(x.as_ptr().add((i + r) * k + t), valid);
            }
            for c in 0..PR {
                let wv = W::load16(wp.add(c * KS), KS);
                for (r, row) in acc.iter_mut().enumerate() {
                    row[c] = _mm512_fmadd_ps(xv[r], wv, row[c]);
                }
            }
            wp = wp.add(PR * KS);
        }
        let keep = ((1u16 << live) - 1) as u8;
        for (r, row) in acc.iter().enumerate() {
            _mm256_mask_storeu_ps(out.add((i + r) * n + p * PR), keep, reduce8(row));
        }
    }

    /// The lane sums of 8 accumulators as one vector (sum c in lane c), by a transpose-and-add
    /// tree: about 20 shuffles and adds where 8 separate reductions take ~64, which at k = 576
    /// was a fifth of the FMA work. The order of additions is fixed, so a result does not
    /// depend on the tile.
    ///
    /// # Safety
    /// CPU has AVX-512F.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    #[inline]
    unsafe fn reduce8(a: &[__m512; PR]) -> __m256 {
        // pairs (c, c+1): 512 → 256 lanes each, row c in the low half, c+1 in the high one
        // (macros, not closures: a closure would not inherit the target features)
        macro_rules! fold {
            ($lo:literal, $hi:literal, $x:expr, $y:expr) => {
                _mm512_add_ps(
                    _mm512_shuffle_f32x4::<$lo>($x, $y),
                    _mm512_shuffle_f32x4::<$hi>($x, $y),
                )
            };
        }
        let s01 = fold!(0b01_00_01_00, 0b11_10_11_10, a[0], a[1]);
        let s23 = fold!(0b01_00_01_00, 0b11_10_11_10, a[2], a[3]);
        let s45 = fold!(0b01_00_01_00, 0b11_10_11_10, a[4], a[5]);
        let s67 = fold!(0b01_00_01_00, 0b11_10_11_10, a[6], a[7]);
        // quads: 128-bit quarter q holds 4 partial sums of row q (of 0..4, or 4..8)
        let t0 = fold!(0b10_00_10_00, 0b11_01_11_01, s01, s23);
        let t4 = fold!(0b10_00_10_00, 0b11_01_11_01, s45, s67);
        // within each quarter: lane 0 the sum of row q, lane 1 of row q + 4
        let u = _mm512_add_ps(_mm512_unpacklo_ps(t0, t4), _mm512_unpackhi_ps(t0, t4));
        let v = _mm512_add_ps(u, _mm512_permute_ps::<0b01_00_11_10>(u));
        let order = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 0, 0, 0, 0, 0, 0, 0, 0);
        _mm512_castps512_ps256(_mm512_permutexvar_ps(order, v))
    }
}
