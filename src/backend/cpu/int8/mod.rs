//! Integer GEMM for W8A8 on the CPU: int8 operands, exact int32 sums, a float epilogue.
//!
//! - `acc (m, n) = qa (m, k) · qw (n, k)ᵀ`, then the dequantizing scale product, the asymmetric
//!   zero-point correction and the bias, per element.
//! - AVX2: 16 int8 lanes sign-extended to int16 and `vpmaddwd` pairs into 8 int32 lanes (exact:
//!   |pair sum| ≤ 2 · 128 · 127); portable: plain i32 arithmetic. Parallel over weight rows.
//! - `vnni` is the AVX-512 VNNI variant on weights repacked at load, `amx` the tile-unit one on
//!   the same packed weights; `Int8Isa` picks one. All four feed the same integers to the same float expression: bit-identical outputs.

pub mod amx;
pub mod vnni;

use super::dense::{for_each_column_chunk, has_avx2, Isa, SendPtr};

const MR: usize = 4;
const NR: usize = 3;

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    unsafe fn hsum_i32(v: __m256i) -> i32 {
        let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
        let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b01_00_11_10));
        let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b10_11_00_01));
        _mm_cvtsi128_si32(s)
    }

    /// acc[i][j] = Σ_t qa[i, t] · qw[j, t] for i < R, j < C.
    ///
    /// # Safety
    /// qa: R rows of k at stride k; qw: C rows of k at stride k; CPU has AVX2.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    pub unsafe fn tile<const R: usize, const C: usize>(
        qa: *const i8,
        qw: *const i8,
        k: usize,
        acc_out: &mut [[i32; C]; R],
    ) {
        let mut acc = [[_mm256_setzero_si256(); C]; R];
        let k16 = k / 16 * 16;
        let mut t = 0;
        while t < k16 {
            let mut wv = [_mm256_setzero_si256(); C];
            for (j, v) in wv.iter_mut().enumerate() {
                *v = _mm256_cvtepi8_epi16(_mm_loadu_si128(qw.add(j * k + t) as *const __m128i));
            }
            for (i, row) in acc.iter_mut().enumerate() {
                let xv = _mm256_cvtepi8_epi16(_mm_loadu_si128(qa.add(i * k + t) as *const __m128i));
                for (a, w) in row.iter_mut().zip(wv.iter()) {
                    *a = _mm256_add_epi32(*a, _mm256_madd_epi16(xv, *w));
                }
            }
            t += 16;
        }
        for i in 0..R {
            for j in 0..C {
                let mut s = hsum_i32(acc[i][j]);
                for u in k16..k {
                    s += *qa.add(i * k + u) as i32 * *qw.add(j * k + u) as i32;
                }
                acc_out[i][j] = s;
            }
        }
    }
}

/// Portable version of the AVX2 tile.
///
/// # Safety
/// As for the AVX2 tile, without the CPU requirement.
#[inline(always)]
unsafe fn tile_portable<const R: usize, const C: usize>(
    qa: *const i8,
    qw: *const i8,
    k: usize,
    acc_out: &mut [[i32; C]; R],
) {
    for (i, row) in acc_out.iter_mut().enumerate() {
        for (j, a) in row.iter_mut().enumerate() {
            let (x, w) = (
                std::slice::from_raw_parts(qa.add(i * k), k),
                std::slice::from_raw_parts(qw.add(j * k), k),
            );
            *a = x.iter().zip(w).map(|(&x, &w)| x as i32 * w as i32).sum();
        }
    }
}

/// Run the int8 GEMM and hand every (i, j, acc) to `epi`, which must only write element (i, j)
/// of an output that the caller owns. Tasks own disjoint column ranges j.
pub fn gemm_i8(
    isa: Isa,
    qa: &[i8],
    qw: &[i8],
    m: usize,
    n: usize,
    k: usize,
    epi: impl Fn(usize, usize, i32) + Sync,
) {
    assert!(
        qa.len() >= m * k && qw.len() >= n * k,
        "gemm_i8: operands too small"
    );
    assert!(
        isa == Isa::Portable || has_avx2(),
        "AVX2 kernels requested on a CPU without AVX2"
    );
    for_each_column_chunk(m, n, k, NR, |n0, n1| {
        macro_rules! t {
            ($r:expr, $c:expr, $i:expr, $j:expr) => {{
                let mut acc = [[0i32; $c]; $r];
                // SAFETY: rows i..i+R of qa and j..j+C of qw are in bounds (checked above and
                // by the loop limits below); AVX2 presence was asserted.
                unsafe {
                    let (pa, pw) = (qa.as_ptr().add($i * k), qw.as_ptr().add($j * k));
                    #[cfg(target_arch = "x86_64")]
                    if isa != Isa::Portable {
                        avx2::tile::<$r, $c>(pa, pw, k, &mut acc);
                    } else {
                        tile_portable::<$r, $c>(pa, pw, k, &mut acc);
                    }
                    #[cfg(not(target_arch = "x86_64"))]
                    tile_portable::<$r, $c>(pa, pw, k, &mut acc);
                }
                for (di, row) in acc.iter().enumerate() {
                    for (dj, &a) in row.iter().enumerate() {
                        epi($i + di, $j + dj, a);
                    }
                }
            }};
        }
        let mut j = n0;
        while j + NR <= n1 {
            let mut i = 0;
            while i + MR <= m {
                t!(MR, NR, i, j);
                i += MR;
            }
            while i < m {
                t!(1, NR, i, j);
                i += 1;
            }
            j += NR;
        }
        while j < n1 {
            for i in 0..m {
                t!(1, 1, i, j);
            }
            j += 1;
        }
    });
}

/// acc (m, n) as exact int32 (for tests and references).
pub fn gemm_i8_i32(isa: Isa, qa: &[i8], qw: &[i8], m: usize, n: usize, k: usize) -> Vec<i32> {
    let mut out = vec![0i32; m * n];
    let p = SendPtrI32(out.as_mut_ptr());
    gemm_i8(isa, qa, qw, m, n, k, |i, j, a| {
        #[allow(clippy::redundant_locals)] // capture the Sync wrapper, not its raw pointer field
        let p = p;
        // SAFETY: (i, j) is inside the m × n buffer and written by exactly one task.
        unsafe { *p.0.add(i * n + j) = a }
    });
    out
}

#[derive(Clone, Copy)]
struct SendPtrI32(*mut i32);
// SAFETY: each element is written by one task only (see gemm_i8).
unsafe impl Send for SendPtrI32 {}
// SAFETY: as above.
unsafe impl Sync for SendPtrI32 {}

/// The fused W8A8 epilogue into f32: y = s_a[i] · s_w[j] · (acc − z_a[i] · colsum[j]) + b[j].
#[allow(clippy::too_many_arguments)]
pub fn gemm_i8_f32(
    isa: Isa,
    out: &mut [f32],
    qa: &[i8],
    a_scale: &[f32],
    a_zp: &[i32],
    qw: &[i8],
    w_scale: &[f32],
    colsum: &[i32],
    bias: Option<&[f32]>,
    m: usize,
    n: usize,
    k: usize,
) {
    assert!(
        out.len() >= m * n
            && a_scale.len() >= m
            && a_zp.len() >= m
            && w_scale.len() >= n
            && colsum.len() >= n
    );
    let p = SendPtr(out.as_mut_ptr());
    gemm_i8(isa, qa, qw, m, n, k, |i, j, acc| {
        #[allow(clippy::redundant_locals)] // capture the Sync wrapper, not its raw pointer field
        let p = p;
        let corrected = acc as i64 - a_zp[i] as i64 * colsum[j] as i64;
        let y = a_scale[i] * w_scale[j] * corrected as f32 + bias.map_or(0.0, |b| b[j]);
        // SAFETY: (i, j) is inside out (asserted) and written by exactly one task.
        unsafe { *p.0.add(i * n + j) = y }
    });
}
