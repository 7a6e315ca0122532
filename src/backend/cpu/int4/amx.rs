//! W4A16 prefill on the AMX tile unit (`tdpbf16ps`), on the weights `int4::bf16` packs.
//!
//! - The products are the ones every W4A16 path multiplies: BF16 activations times the exact
//!   BF16 integer q − 8 − zero (the `vpermw` lookup of `int4::bf16`); the group scale is applied
//!   once per group to the group's f32 tile sum, as there. Only the order of the f32 additions
//!   inside a group differs (the tile unit's), so results match within f32 accumulation error.
//! - Each task decodes the 16-column blocks it owns into B tiles once per call (64 k at a time:
//!   16 columns' nibbles looked up, then a 16 × 16 32-bit transpose), then sweeps token chunks
//!   that stay in L2 over them (`amx::Slots` says when the blocks are decoded up front); 2 × 2
//!   tiles inside, as in `dense::amx`.
//! - The backend runs prefill here and decode on `int4::bf16::gemm`, whatever the batch size,
//!   so a token's result does not depend on what it is batched with.

use super::bf16::{self as i4bf16, PackedI4Bf16};
use crate::backend::cpu::dense::{for_each_column_chunk, SendPtr};
use crate::backend::cpu::{amx, grow};

/// Columns per B tile.
const NB: usize = 16;

/// Whether this CPU and OS run the kernel.
pub fn available() -> bool {
    amx::has_bf16() && i4bf16::available()
}

thread_local! {
    /// (slots, k / 2, 16, 2) a task's decoded B tiles, and (slots, groups, 16) their scales
    /// (each worker thread).
    static WB: std::cell::RefCell<(Vec<u16>, Vec<f32>)> =
        const { std::cell::RefCell::new((Vec::new(), Vec::new())) };
}

/// out (m, n) = x (m, k) · Wᵀ with x as BF16 bits, on the tiles.
///
/// # Panics
/// If the buffers are smaller than the shape says or the CPU lacks AMX-BF16 / AVX-512 BF16.
pub fn gemm(out: &mut [f32], x: &[u16], m: usize, w: &PackedI4Bf16) {
    let (n, k, groups) = (w.n, w.k, w.groups);
    assert!(
        out.len() >= m * n && x.len() >= m * k,
        "int4 amx gemm: buffers too small"
    );
    assert!(
        available(),
        "AMX kernels requested on a CPU without AMX-BF16"
    );
    let fill = |xb: &mut [u16]| xb.copy_from_slice(&x[..m * k]);
    amx::with_bf16_rows(m, k, fill, |xb, mp| {
        let p = SendPtr(out.as_mut_ptr());
        for_each_column_chunk(m, n, k, 2 * NB, |n0, n1| {
            #[allow(clippy::redundant_locals)]
            // capture the Sync wrapper, not its raw pointer field
            let p = p;
            let (b0, b1) = (n0 / NB, n1.div_ceil(NB));
            let slots = amx::Slots::new(mp, 2 * k, b0);
            WB.with(|wb| {
                let (wb, sc) = &mut *wb.borrow_mut();
                let count = slots.count(b1);
                grow(wb, count * NB * k);
                grow(sc, count * groups * NB);
                #[cfg(target_arch = "x86_64")]
                // SAFETY: AMX-BF16 and AVX-512 BF16 presence was asserted; the packing holds
                // whole panels of n rows of k (k and the group whole 64-value blocks); xb is
                // (mp, k); wb and sc hold the task's slots; this task writes only columns
                // n0..n1 of out (m, n), which no other task touches.
                unsafe {
                    imp::columns(xb, m, mp, w, wb, sc, slots, b0, b1, p.0)
                }
                #[cfg(not(target_arch = "x86_64"))]
                let _ = (p, b1, wb, sc, slots);
            })
        });
    });
}

#[cfg(target_arch = "x86_64")]
mod imp {
    use super::super::bf16::{PackedI4Bf16, BLOCK, PANEL, TABLES};
    use super::NB;
    use crate::backend::cpu::amx::{
        bf16_tiles, store_tiles, transpose16, AccTiles, Slots, TileConfig, ROWS,
    };
    use std::arch::x86_64::*;

    /// k per tile step.
    const KT: usize = 32;

    /// Decode block `b` (columns 16b..16b+16) into B tiles: dst (k / 2, 16, 2) with
    /// dst[t][c][u] = q − 8 − zero of w[16b + c, 2t + u] as BF16, and sc (groups, 16) its
    /// scales; zero for columns past n.
    ///
    /// # Safety
    /// dst holds 16 · k values and sc 16 · groups; CPU has AVX-512 F/BW.
    #[target_feature(enable = "avx512f,avx512bw")]
    pub unsafe fn decode_block(w: &PackedI4Bf16, b: usize, dst: &mut [u16], sc: &mut [f32]) {
        let (n, k, groups) = (w.n, w.k, w.groups);
        let blocks = k / BLOCK;
        for g in 0..groups {
            for c in 0..NB {
                let j = b * NB + c;
                sc[g * NB + c] = if j < n { w.scale[j * groups + g] } else { 0.0 };
            }
        }
        let d = dst.as_mut_ptr();
        let mut lo = [_mm512_setzero_si512(); NB];
        let mut hi = [_mm512_setzero_si512(); NB];
        for blk in 0..blocks {
            let g = blk * BLOCK / w.group;
            for c in 0..NB {
                let j = b * NB + c;
                if j >= n {
                    lo[c] = _mm512_setzero_si512();
                    hi[c] = _mm512_setzero_si512();
                    continue;
                }
                let src = w
                    .data
                    .as_ptr()
                    .add(((j / PANEL * blocks + blk) * PANEL + j % PANEL) * 32);
                let v = _mm512_cvtepu8_epi16(_mm256_loadu_si256(src as *const _));
                let z8 = w.z8[j * groups + g] as usize;
                let t = _mm512_loadu_si512(TABLES.0[z8].as_ptr() as *const _);
                // values 0..32 of the block (pairs 0..16) and 32..64 (pairs 16..32)
                lo[c] = _mm512_permutexvar_epi16(v, t);
                hi[c] = _mm512_permutexvar_epi16(_mm512_srli_epi16(v, 4), t);
            }
            let row = |h: usize| d.add((blk * BLOCK / 2 + h) * 2 * NB) as *mut __m512i;
            for (h, v) in transpose16(&lo).iter().enumerate() {
                _mm512_storeu_si512(row(h), *v);
            }
            for (h, v) in transpose16(&hi).iter().enumerate() {
                _mm512_storeu_si512(row(16 + h), *v);
            }
        }
    }

    /// Every token against column blocks b0..b1, decoded into wb's slots with scales in sc's.
    ///
    /// # Safety
    /// See the call in `gemm`.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f")]
    pub unsafe fn columns(
        xb: &[u16],
        m: usize,
        mp: usize,
        w: &PackedI4Bf16,
        wb: &mut [u16],
        sc: &mut [f32],
        slots: Slots,
        b0: usize,
        b1: usize,
        out: *mut f32,
    ) {
        let (n, k, groups, group) = (w.n, w.k, w.groups, w.group);
        let lay_out = |b: usize, wb: &mut [u16], sc: &mut [f32]| {
            let s = slots.of(b);
            let (wd, sd) = (
                &mut wb[s * NB * k..(s + 1) * NB * k],
                &mut sc[s * groups * NB..(s + 1) * groups * NB],
            );
            // SAFETY: the caller's contract (AVX-512 F/BW); the slots were sized by
            // `slots.count`.
            unsafe { decode_block(w, b, wd, sd) };
        };
        if slots.whole {
            (b0..b1).for_each(|b| lay_out(b, wb, sc));
        }
        let _tiles = TileConfig::uniform(ROWS as u8).load();
        let mut part = AccTiles([[0.0; ROWS * NB]; 4]);
        let mut sum = AccTiles([[0.0; ROWS * NB]; 4]);
        let mut i0 = 0;
        while i0 < mp {
            let i1 = (i0 + slots.chunk).min(mp);
            let mut b = b0;
            while b < b1 {
                let cols = (b1 - b).min(2);
                if !slots.whole {
                    (b..b + cols).for_each(|b| lay_out(b, wb, sc));
                }
                // the pair's slots are consecutive: s and s + 1
                let wp = wb.as_ptr().add(slots.of(b) * NB * k);
                let sp = sc.as_ptr().add(slots.of(b) * groups * NB);
                let mut i = i0;
                while i < i1 {
                    let rows = ((i1 - i) / ROWS).min(2);
                    for t in sum.0.iter_mut() {
                        t.fill(0.0);
                    }
                    for g in 0..groups {
                        let (t0, t1) = (g * group, ((g + 1) * group).min(k));
                        let xp = xb.as_ptr().add(i * k + t0);
                        // k-pair t0 / 2 starts at element t0 / 2 · 32 = 16 t0
                        let steps = (t1 - t0) / KT;
                        bf16_tiles(xp, k, wp.add(t0 * NB), NB * k, steps, rows, cols, &mut part);
                        for r in 0..rows {
                            for c in 0..cols {
                                let s = _mm512_loadu_ps(sp.add((c * groups + g) * NB));
                                let (p, a) = (&part.0[2 * r + c], &mut sum.0[2 * r + c]);
                                for rr in 0..ROWS {
                                    let pv = _mm512_loadu_ps(p.as_ptr().add(rr * NB));
                                    let av = _mm512_loadu_ps(a.as_ptr().add(rr * NB));
                                    let y = _mm512_fmadd_ps(pv, s, av);
                                    _mm512_storeu_ps(a.as_mut_ptr().add(rr * NB), y);
                                }
                            }
                        }
                    }
                    store_tiles(&sum, (rows, cols), (i, b), (m, n), out);
                    i += rows * ROWS;
                }
                b += cols;
            }
            i0 = i1;
        }
    }
}
