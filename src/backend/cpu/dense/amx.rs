//! Dense BF16 prefill on the AMX tile unit (`tdpbf16ps`: 16 × 32 BF16 by 32 × 16 into 16 × 16
//! f32), for BF16 weights in `panels` layout.
//!
//! - The activations are rounded to BF16 once per call, as PyTorch's and llama.cpp's BF16 CPU
//!   paths do; each product is then exact in f32 and only the accumulation rounds. The backend
//!   runs prefill here and decode on the panel kernel (f32 activations), whatever the batch
//!   size, so a token's result does not depend on what it is batched with; prefill and decode
//!   of the same token differ by the BF16 rounding of its activations (bounded in the tests:
//!   |Δ| ≤ 2⁻⁸ Σ|x·w|), and `Ops::phase_dependent` keeps the two phases in separate calls.
//! - Weights stay in the decode kernel's panel layout (one copy of the model); each task
//!   re-lays the 16-column blocks it owns into B tiles (k-pairs × 16 columns, a 16 × 16 32-bit
//!   transpose per 32 k) once per call, so the shuffle costs one pass over the weight.
//! - Blocked for L2: a chunk of tokens (about 1 MiB of activations) stays while every column
//!   pair of the task passes over it (`amx::Slots` says when the task's blocks are laid out up
//!   front); 2 × 2 tiles inside (32 tokens × 32 columns), as in `int8::amx`.

use super::panels::{self, Panels, PR};
use super::{for_each_column_chunk, SendPtr};
use crate::backend::cpu::{amx, grow};
use half::bf16;

/// Columns per B tile.
const NB: usize = 16;
/// k per tile step: 64 bytes of BF16.
const KT: usize = amx::ROW_BYTES / 2;

/// Whether this CPU and OS run the kernel.
pub fn available() -> bool {
    amx::has_bf16() && panels::available()
}

/// Whether `matmul` runs a product over k on the tiles (with BF16-rounded activations) rather
/// than handing it to the panel kernel.
pub fn takes(k: usize) -> bool {
    k.is_multiple_of(KT)
}

thread_local! {
    /// (slots, k / 2, 16, 2) the B tiles of a task's column blocks (each worker thread).
    static WB: std::cell::RefCell<Vec<u16>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// out (m, n) = bf16(x) (m, k) · Wᵀ on the tile unit where `takes(k)`, else `panels::matmul`
/// (f32 activations).
///
/// # Panics
/// If the buffers are smaller than the shape says or the CPU lacks AMX-BF16 / AVX-512.
pub fn matmul(out: &mut [f32], x: &[f32], m: usize, w: &Panels<bf16>) {
    let (n, k) = (w.n, w.k);
    if !takes(k) {
        return panels::matmul(out, x, m, w);
    }
    assert!(
        out.len() >= m * n && x.len() >= m * k,
        "amx matmul: buffers too small"
    );
    assert!(
        available(),
        "AMX kernels requested on a CPU without AMX-BF16"
    );
    let fill = |xb: &mut [u16]| crate::backend::cpu::int4::bf16::round_to_bf16(&x[..m * k], xb);
    amx::with_bf16_rows(m, k, fill, |xb, mp| {
        let p = SendPtr(out.as_mut_ptr());
        for_each_column_chunk(m, n, k, 2 * NB, |n0, n1| {
            #[allow(clippy::redundant_locals)]
            // capture the Sync wrapper, not its raw pointer field
            let p = p;
            let (b0, b1) = (n0 / NB, n1.div_ceil(NB));
            let slots = amx::Slots::new(mp, 2 * k, b0);
            WB.with(|wb| {
                let mut wb = wb.borrow_mut();
                grow(&mut wb, slots.count(b1) * NB * k);
                #[cfg(target_arch = "x86_64")]
                // SAFETY: AMX-BF16 presence was asserted (OS permission included); xb is
                // (mp, k) with k a multiple of 32, wb holds the task's slots of k · 16 values,
                // and this task writes only columns n0..n1 of out (m, n), which no other task
                // touches.
                unsafe {
                    imp::columns(xb, m, mp, w, &mut wb, slots, b0, b1, p.0)
                }
                #[cfg(not(target_arch = "x86_64"))]
                let _ = (p, b1, &mut wb, slots);
            })
        });
    });
}

#[cfg(target_arch = "x86_64")]
mod imp {
    use super::{Panels, KT, NB, PR};
    use crate::backend::cpu::amx::{
        bf16_tiles, store_tiles, transpose16, AccTiles, Slots, TileConfig, ROWS,
    };
    use half::bf16;
    use std::arch::x86_64::*;

    /// Lay the 16 columns of block `b` out as B tiles: dst (k / 2, 16, 2) with
    /// dst[t][c][u] = w[16b + c, 2t + u], zero for columns past n.
    ///
    /// # Safety
    /// k a multiple of 32 (so k16 = k); dst holds 16 · k values; CPU has AVX-512F.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn block_to_tiles(w: &Panels<bf16>, b: usize, dst: &mut [u16]) {
        let (n, k) = (w.n, w.k);
        let data = w.data().as_ptr() as *const u16;
        let step = PR * 16; // values per 16-k step of a panel
        let steps = k / 16;
        let d = dst.as_mut_ptr();
        let mut rows = [_mm512_setzero_si512(); 16];
        for s in (0..steps).step_by(2) {
            // row c: pairs 0..8 from step s, 8..16 from step s + 1 (each 8 pairs = 32 bytes)
            for (c, r) in rows.iter_mut().enumerate() {
                let j = b * NB + c;
                *r = if j < n {
                    let base = data.add((j / PR) * steps * step + (j % PR) * 16);
                    let lo = _mm256_loadu_si256(base.add(s * step) as *const __m256i);
                    let hi = _mm256_loadu_si256(base.add((s + 1) * step) as *const __m256i);
                    _mm512_inserti64x4::<1>(_mm512_castsi256_si512(lo), hi)
                } else {
                    _mm512_setzero_si512()
                };
            }
            // 32 k = 16 pairs: tile rows s / 2 · 16 .. + 16, 32 values each
            for (h, v) in transpose16(&rows).iter().enumerate() {
                _mm512_storeu_si512(d.add((s / 2 * 16 + h) * 2 * NB) as *mut _, *v);
            }
        }
    }

    /// Every token against column blocks b0..b1, laid out as B tiles into wb's slots.
    ///
    /// # Safety
    /// See the call in `matmul`.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f")]
    pub unsafe fn columns(
        xb: &[u16],
        m: usize,
        mp: usize,
        w: &Panels<bf16>,
        wb: &mut [u16],
        slots: Slots,
        b0: usize,
        b1: usize,
        out: *mut f32,
    ) {
        let (n, k) = (w.n, w.k);
        let lay_out = |b: usize, wb: &mut [u16]| {
            let s = slots.of(b);
            // SAFETY: the caller's contract (AVX-512, k a multiple of 32); the slot holds 16 · k
            // values (wb was sized by `slots.count`).
            unsafe { block_to_tiles(w, b, &mut wb[s * NB * k..(s + 1) * NB * k]) };
        };
        if slots.whole {
            (b0..b1).for_each(|b| lay_out(b, wb));
        }
        // tmm0..3 accumulators (row block r, column block c at 2r + c), tmm4/5 A, tmm6/7 B
        let _tiles = TileConfig::uniform(ROWS as u8).load();
        let mut acc = AccTiles([[0.0; ROWS * NB]; 4]);
        let mut i0 = 0;
        while i0 < mp {
            let i1 = (i0 + slots.chunk).min(mp);
            let mut b = b0;
            while b < b1 {
                let cols = (b1 - b).min(2);
                if !slots.whole {
                    (b..b + cols).for_each(|b| lay_out(b, wb));
                }
                // the pair's slots are consecutive: s and s + 1
                let wp = wb.as_ptr().add(slots.of(b) * NB * k);
                let mut i = i0;
                while i < i1 {
                    let rows = ((i1 - i) / ROWS).min(2);
                    bf16_tiles(
                        xb.as_ptr().add(i * k),
                        k,
                        wp,
                        NB * k,
                        k / KT,
                        rows,
                        cols,
                        &mut acc,
                    );
                    store_tiles(&acc, (rows, cols), (i, b), (m, n), out);
                    i += rows * ROWS;
                }
                b += cols;
            }
            i0 = i1;
        }
    }
}
