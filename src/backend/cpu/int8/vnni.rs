//! Int8 GEMM for W8A8 on AVX-512 VNNI (`vpdpbusd`: u8 × s8, four products per int32 lane).
//!
//! - Weights repacked once at load into the outer-product layout of oneDNN and llama.cpp's Q8
//!   repacks: 16 output columns × 4 consecutive k per 64-byte block, so one load feeds 16 columns
//!   against a broadcast 4-byte activation group — no horizontal sums, a vector epilogue.
//! - `vpdpbusd` wants an unsigned operand: activations enter as u = q + 128 and the epilogue folds
//!   the 128 into the zero-point correction, y = s_a · s_w · (acc − (z_a + 128) · colsum) + b —
//!   the same integer the AVX2 / portable paths produce, so outputs are bit-identical.

use crate::backend::cpu::dense::{for_each_column_chunk, SendPtr};
use crate::backend::cpu::grow;

/// Output columns per packed block (one zmm of int32).
pub const NB: usize = 16;
/// Tokens per micro-tile.
const MR: usize = 8;
/// Column blocks per micro-tile (2 × 16 columns; 16 accumulators + 2 weights + 1 broadcast).
const CB: usize = 2;
/// Largest k for which the int32 epilogue cannot overflow: |acc| + 256·|colsum| < 2³¹.
pub const MAX_K: usize = 32768;

/// Whether this CPU runs the VNNI kernels (cached by std after the first call).
pub fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512vnni")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// An int8 `[n, k]` weight in the VNNI layout, with its epilogue vectors padded to whole blocks.
#[derive(Clone, Debug)]
pub struct PackedI8 {
    pub n: usize,
    pub k: usize,
    /// k rounded up to a multiple of 4.
    pub(crate) k4: usize,
    /// (n.div_ceil(16), k4 / 4, 16, 4): block b, k-group t, column c, byte u = w[16b + c, 4t + u];
    /// zero where the column or k is padding.
    pub(crate) data: Vec<i8>,
    /// (blocks · 16) weight scales, colsums, biases; zero padded.
    pub(crate) scale: Vec<f32>,
    pub(crate) colsum: Vec<i32>,
}

impl PackedI8 {
    /// Repack a row-major `q (n, k)` weight with its per-column `scale` and `colsum` (n).
    pub fn pack(q: &[i8], scale: &[f32], colsum: &[i32], n: usize, k: usize) -> PackedI8 {
        let k4 = k.div_ceil(4) * 4;
        let blocks = n.div_ceil(NB);
        let mut data = vec![0i8; blocks * k4 * NB];
        for j in 0..n {
            let (b, c) = (j / NB, j % NB);
            let base = b * k4 * NB;
            for (t, &v) in q[j * k..(j + 1) * k].iter().enumerate() {
                data[base + (t / 4) * NB * 4 + c * 4 + t % 4] = v;
            }
        }
        let pad = |v: &[f32]| {
            let mut p = vec![0f32; blocks * NB];
            p[..n].copy_from_slice(&v[..n]);
            p
        };
        let mut cs = vec![0i32; blocks * NB];
        cs[..n].copy_from_slice(&colsum[..n]);
        PackedI8 {
            n,
            k,
            k4,
            data,
            scale: pad(scale),
            colsum: cs,
        }
    }
}

impl PackedI8 {
    /// Dequantized rows j..j+r into out (r × k), for weight-only use of an int8 weight.
    pub fn decode_rows(&self, j: usize, r: usize, out: &mut [f32]) {
        for (jj, row) in out.chunks_exact_mut(self.k).take(r).enumerate() {
            let col = j + jj;
            let (b, c) = (col / NB, col % NB);
            let base = b * self.k4 * NB + c * 4;
            let s = self.scale[col];
            for (t, o) in row.iter_mut().enumerate() {
                *o = self.data[base + (t / 4) * NB * 4 + t % 4] as f32 * s;
            }
        }
    }
}

thread_local! {
    /// (m, k4) activations as u8 = q + 128, zero padded.
    static XU: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// The operand checks of the packed W8A8 GEMMs (this one and `amx::gemm`): buffers as large as
/// the shape says, k within the int32 epilogue's bound.
#[allow(clippy::too_many_arguments)]
pub(super) fn check_operands(
    out: &[f32],
    qa: &[i8],
    a_scale: &[f32],
    a_zp: &[i32],
    w: &PackedI8,
    bias: Option<&[f32]>,
    m: usize,
    what: &str,
) {
    let (n, k) = (w.n, w.k);
    assert!(out.len() >= m * n && qa.len() >= m * k && a_scale.len() >= m && a_zp.len() >= m);
    assert!(bias.is_none_or(|b| b.len() >= n));
    assert!(k <= MAX_K, "{what} gemm: k = {k} > {MAX_K}");
}

/// out (m, n) = s_a[i] · s_w[j] · (Σ_t qa[i, t] · w[j, t] − z_a[i] · colsum[j]) + b[j].
///
/// # Panics
/// If the buffers are smaller than the shape says, k > MAX_K, or the CPU lacks VNNI.
#[allow(clippy::too_many_arguments)]
pub fn gemm(
    out: &mut [f32],
    qa: &[i8],
    a_scale: &[f32],
    a_zp: &[i32],
    w: &PackedI8,
    bias: Option<&[f32]>,
    m: usize,
) {
    let (n, k, k4) = (w.n, w.k, w.k4);
    check_operands(out, qa, a_scale, a_zp, w, bias, m, "vnni");
    assert!(
        available(),
        "VNNI kernels requested on a CPU without AVX-512 VNNI"
    );
    XU.with(|xu| {
        let mut xu = xu.borrow_mut();
        grow(&mut xu, m * k4);
        for (dst, src) in xu.chunks_exact_mut(k4).zip(qa.chunks_exact(k)).take(m) {
            dst[..k]
                .iter_mut()
                .zip(src)
                .for_each(|(d, &s)| *d = (s as u8) ^ 0x80);
            dst[k..].fill(0);
        }
        let xu = &xu[..m * k4];
        let p = SendPtr(out.as_mut_ptr());
        // Chunks are whole 16-column blocks so no two tasks share a block.
        for_each_column_chunk(m, n, k, NB * CB, |n0, n1| {
            #[allow(clippy::redundant_locals)]
            // capture the Sync wrapper, not its raw pointer field
            let p = p;
            let (b0, b1) = (n0 / NB, n1.div_ceil(NB));
            #[cfg(target_arch = "x86_64")]
            // SAFETY: VNNI presence was asserted; xu is (m, k4), w.data holds every block
            // b0..b1, and this task writes only columns 16·b0 .. min(16·b1, n) of out (m, n),
            // which no other task touches.
            unsafe {
                imp::blocks(xu, w, a_scale, a_zp, bias, m, b0, b1, p.0)
            }
            #[cfg(not(target_arch = "x86_64"))]
            let _ = (p, b0, b1, a_scale, a_zp, bias);
        });
    });
}

#[cfg(target_arch = "x86_64")]
pub(super) mod imp {
    use super::{PackedI8, CB, MR, NB};
    use std::arch::x86_64::*;

    /// Every token against column blocks b0..b1.
    ///
    /// # Safety
    /// See the call in `gemm`.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub unsafe fn blocks(
        xu: &[u8],
        w: &PackedI8,
        a_scale: &[f32],
        a_zp: &[i32],
        bias: Option<&[f32]>,
        m: usize,
        b0: usize,
        b1: usize,
        out: *mut f32,
    ) {
        let e = Epi {
            a_scale,
            a_zp,
            bias,
            out,
        };
        let mut b = b0;
        while b < b1 {
            let cb = CB.min(b1 - b);
            let mut i = 0;
            macro_rules! run {
                ($r:expr) => {{
                    if cb == CB {
                        tile::<$r, CB>(xu, w, i, b, &e);
                    } else {
                        tile::<$r, 1>(xu, w, i, b, &e);
                    }
                    i += $r;
                }};
            }
            while i < m {
                match m - i {
                    left if left >= MR => run!(MR),
                    left if left >= 4 => run!(4),
                    left if left >= 2 => run!(2),
                    _ => run!(1),
                }
            }
            b += cb;
        }
    }

    /// The epilogue's operands.
    struct Epi<'a> {
        a_scale: &'a [f32],
        a_zp: &'a [i32],
        bias: Option<&'a [f32]>,
        out: *mut f32,
    }

    /// Tokens i..i+R against column blocks b..b+C, then the epilogue into out.
    ///
    /// # Safety
    /// i + R <= m; b + C <= number of blocks; CPU has AVX-512 VNNI.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    #[inline]
    unsafe fn tile<const R: usize, const C: usize>(
        xu: &[u8],
        w: &PackedI8,
        i: usize,
        b: usize,
        e: &Epi<'_>,
    ) {
        let k4 = w.k4;
        let blk = k4 * NB; // bytes per column block
        let wp = w.data.as_ptr().add(b * blk);
        let xp = xu.as_ptr().add(i * k4);
        let mut acc = [[_mm512_setzero_si512(); C]; R];
        let mut t = 0;
        while t < k4 {
            let mut wv = [_mm512_setzero_si512(); C];
            for (c, v) in wv.iter_mut().enumerate() {
                *v = _mm512_loadu_si512(wp.add(c * blk + t * NB) as *const _);
            }
            for (r, row) in acc.iter_mut().enumerate() {
                let x = _mm512_set1_epi32((xp.add(r * k4 + t) as *const i32).read_unaligned());
                for (a, v) in row.iter_mut().zip(wv.iter()) {
                    *a = _mm512_dpbusd_epi32(*a, x, *v);
                }
            }
            t += 4;
        }
        for (r, row) in acc.iter().enumerate() {
            let ii = i + r;
            for (c, a) in row.iter().enumerate() {
                let out = e.out.add(ii * w.n);
                store_row(
                    *a,
                    e.a_zp[ii] + 128,
                    e.a_scale[ii],
                    w,
                    (b + c) * NB,
                    e.bias,
                    out,
                );
            }
        }
    }

    /// The W8A8 epilogue for one token and the 16 columns j..j+16 (masked to n):
    /// out[j..] = (s_a · s_w) · (acc − zp · colsum) + b, in the scalar epilogue's order. `zp` is
    /// the activation zero point plus whatever offset the integer sums carry.
    ///
    /// # Safety
    /// j < w.n is a multiple of 16; out holds a row of w.n floats; CPU has AVX-512F/BW.
    #[target_feature(enable = "avx512f,avx512bw")]
    #[inline]
    pub(crate) unsafe fn store_row(
        acc: __m512i,
        zp: i32,
        a_scale: f32,
        w: &PackedI8,
        j: usize,
        bias: Option<&[f32]>,
        out: *mut f32,
    ) {
        let cs = _mm512_loadu_si512(w.colsum.as_ptr().add(j) as *const _);
        let corrected = _mm512_sub_epi32(acc, _mm512_mullo_epi32(_mm512_set1_epi32(zp), cs));
        let sw = _mm512_loadu_ps(w.scale.as_ptr().add(j));
        let sa = _mm512_set1_ps(a_scale);
        let mut y = _mm512_mul_ps(_mm512_mul_ps(sa, sw), _mm512_cvtepi32_ps(corrected));
        let live = (w.n - j).min(NB);
        let mask: __mmask16 = if live == NB {
            0xffff
        } else {
            (1u16 << live) - 1
        };
        let bv = match bias {
            Some(bs) => _mm512_maskz_loadu_ps(mask, bs.as_ptr().add(j)),
            None => _mm512_setzero_ps(),
        };
        y = _mm512_add_ps(y, bv);
        _mm512_mask_storeu_ps(out.add(j), mask, y);
    }
}
