//! Int8 GEMM for W8A8 batches on the AMX tile unit (`tdpbssd`: s8 × s8, 16 × 16 int32 per tile).
//!
//! - Reads the VNNI-packed weight (`vnni::PackedI8`) as it is: a 16-column block's k-groups of
//!   4 bytes are exactly the B-tile layout, so one tile is 16 k-groups (64 k) of one block at a
//!   64-byte stride, and W8A8 weights are packed once for both kernels.
//! - 2 × 2 register blocking: two A tiles (32 tokens) × two B tiles (32 columns) into four
//!   accumulator tiles; the weight panel of a column pair stays in L2 while every token block
//!   passes over it.
//! - Both operands signed, so the sums are Σ qa · w exactly and the epilogue subtracts
//!   z_a · colsum: the same integer as the VNNI and portable paths, fed to the same float
//!   expression (`vnni::imp::store_row`): outputs bit-identical to them.
//! - Short batches (decode) and k not a multiple of 64 run the VNNI kernel instead.

use super::vnni::{self, PackedI8, NB};
use crate::backend::cpu::dense::{for_each_column_chunk, SendPtr};
use crate::backend::cpu::{amx, grow};

/// Fewest tokens worth a tile pass; fewer run the VNNI kernel (a tile always holds 16 rows).
pub const MIN_M: usize = 16;
/// k per tile step: 64 bytes of int8.
const KT: usize = amx::ROW_BYTES;

/// Whether this CPU and OS run the AMX int8 kernel (needs VNNI too, for the fallbacks).
pub fn available() -> bool {
    amx::has_int8() && vnni::available()
}

thread_local! {
    /// (m rounded up to 16, k4) activations, zero padded.
    static XA: std::cell::RefCell<Vec<i8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// out (m, n) = s_a[i] · s_w[j] · (Σ_t qa[i, t] · w[j, t] − z_a[i] · colsum[j]) + b[j], as
/// `vnni::gemm` computes it, on the tile unit where the shape suits it.
///
/// # Panics
/// If the buffers are smaller than the shape says, k > MAX_K, or the CPU lacks AMX.
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
    if m < MIN_M || k4 % KT != 0 {
        return vnni::gemm(out, qa, a_scale, a_zp, w, bias, m);
    }
    vnni::check_operands(out, qa, a_scale, a_zp, w, bias, m, "amx");
    assert!(
        available(),
        "AMX kernels requested on a CPU without AMX-INT8"
    );
    let mp = m.div_ceil(amx::ROWS) * amx::ROWS;
    XA.with(|xa| {
        let mut xa = xa.borrow_mut();
        grow(&mut xa, mp * k4);
        for (dst, src) in xa.chunks_exact_mut(k4).zip(qa.chunks_exact(k)).take(m) {
            dst[..k].copy_from_slice(src);
            dst[k..].fill(0);
        }
        xa[m * k4..mp * k4].fill(0);
        let xa = &xa[..mp * k4];
        let p = SendPtr(out.as_mut_ptr());
        for_each_column_chunk(m, n, k, NB * 2, |n0, n1| {
            #[allow(clippy::redundant_locals)]
            // capture the Sync wrapper, not its raw pointer field
            let p = p;
            let (b0, b1) = (n0 / NB, n1.div_ceil(NB));
            let e = Epi {
                a_scale,
                a_zp,
                bias,
                out: p.0,
                m,
            };
            #[cfg(target_arch = "x86_64")]
            // SAFETY: AMX presence was asserted (which includes the OS permission); xa is
            // (mp, k4) with k4 a multiple of 64, w.data holds every block b0..b1, and this task
            // writes only columns 16·b0 .. min(16·b1, n) of out (m, n), which no other task
            // touches.
            unsafe {
                imp::blocks(xa, w, &e, mp, b0, b1)
            }
            #[cfg(not(target_arch = "x86_64"))]
            let _ = (e, b0, b1);
        });
    });
}

/// The epilogue's operands.
struct Epi<'a> {
    a_scale: &'a [f32],
    a_zp: &'a [i32],
    bias: Option<&'a [f32]>,
    out: *mut f32,
    /// Live tokens (rows past m are padding).
    m: usize,
}

#[cfg(target_arch = "x86_64")]
mod imp {
    use super::{Epi, KT, NB};
    use crate::backend::cpu::amx::{int8_tiles, AccTiles, TileConfig, ROWS};
    use crate::backend::cpu::int8::vnni::{imp::store_row, PackedI8};
    use std::arch::x86_64::*;

    /// Every token block against column blocks b0..b1.
    ///
    /// # Safety
    /// See the call in `gemm`.
    #[target_feature(enable = "avx512f,avx512bw")]
    pub unsafe fn blocks(xa: &[i8], w: &PackedI8, e: &Epi<'_>, mp: usize, b0: usize, b1: usize) {
        // tmm0..3 accumulators (row block r, column block c at 2r + c), tmm4/5 A, tmm6/7 B
        let _tiles = TileConfig::uniform(ROWS as u8).load();
        let k4 = w.k4;
        let blk = k4 * NB; // bytes per column block
        let mut acc = AccTiles([[0i32; ROWS * NB]; 4]);
        let mut b = b0;
        while b < b1 {
            let cols = (b1 - b).min(2);
            let wp = w.data.as_ptr().add(b * blk);
            let mut i = 0;
            while i < mp {
                let rows = ((mp - i) / ROWS).min(2);
                let xp = xa.as_ptr().add(i * k4);
                int8_tiles(xp, k4, wp, blk, k4 / KT, rows, cols, &mut acc);
                for r in 0..rows {
                    for c in 0..cols {
                        epilogue(&acc.0[2 * r + c], w, e, i + r * ROWS, (b + c) * NB);
                    }
                }
                i += rows * ROWS;
            }
            b += cols;
        }
    }

    /// The epilogue of one accumulator tile: tokens i..i+16 (the live ones), columns j..j+16.
    ///
    /// # Safety
    /// As `blocks`; j < w.n is a multiple of 16.
    #[target_feature(enable = "avx512f,avx512bw")]
    #[inline]
    unsafe fn epilogue(acc: &[i32; ROWS * NB], w: &PackedI8, e: &Epi<'_>, i: usize, j: usize) {
        for r in 0..ROWS.min(e.m.saturating_sub(i)) {
            let ii = i + r;
            let a = _mm512_loadu_si512(acc.as_ptr().add(r * NB) as *const _);
            let out = e.out.add(ii * w.n);
            store_row(a, e.a_zp[ii], e.a_scale[ii], w, j, e.bias, out);
        }
    }
}
