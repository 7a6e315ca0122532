//! W4A16 on AVX-512 BF16 CPUs (Zen 4, Cooper Lake, Sapphire Rapids) with `vdpbf16ps`.
//!
//! - W4A16's activations are BF16 on every path (`round_to_bf16`); taking them as bits makes each
//!   product exact, so only the f32 accumulation rounds.
//! - A nibble becomes its exact BF16 weight `q − 8 − zero` by one `vpermw` from a 32-entry table
//!   chosen by the group's zero point (Marlin's value-from-nibble trick as a lookup, since BF16
//!   has no vector subtract): per 64 weights one load, one shift, two lookups, two dots a token.
//! - The group scale is applied once per group (an f32 partial sum, then one FMA).
//! - The reduction order per (token, row) does not depend on the tile or the batch.

use super::Int4View;
use crate::backend::cpu::dense::{for_each_column_chunk, SendPtr};
use crate::quant::QuantWeight;

/// Rows per panel and per micro-tile: one 64-value block of 4 rows is two cache lines.
pub(crate) const PANEL: usize = 4;
/// Values per block: 32 bytes, the low nibble of byte u is value u, the high one u + 32.
pub(crate) const BLOCK: usize = 64;
/// Tokens per micro-tile (2 × 4 partial sums, 2 × 4 accumulators, 8 decoded vectors).
const MR: usize = 2;

/// Whether the kernel runs here.
pub fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512bf16")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// BF16 bits of `v`, round to nearest even (NaN stays a quiet NaN): what the kernels multiply.
#[inline]
pub fn bf16_bits(v: f32) -> u16 {
    let b = v.to_bits();
    if b & 0x7fff_ffff > 0x7f80_0000 {
        return ((b >> 16) | 0x40) as u16;
    }
    ((b + 0x7fff + ((b >> 16) & 1)) >> 16) as u16
}

/// out = BF16 bits of x, element by element (AVX-512BW where present, bit-identical to
/// `bf16_bits`).
///
/// # Panics
/// If `out` is shorter than `x`.
pub fn round_to_bf16(x: &[f32], out: &mut [u16]) {
    assert!(out.len() >= x.len(), "round_to_bf16: output too small");
    let mut done = 0;
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bw") {
        // SAFETY: features checked; out holds x.len() elements (asserted).
        done = unsafe { avx512::round(x, out) };
    }
    for (o, &v) in out[done..x.len()].iter_mut().zip(&x[done..]) {
        *o = bf16_bits(v);
    }
}

/// out = x rounded to BF16 and widened back: the activations the f32 W4A16 paths multiply,
/// so every CPU computes the same products.
pub fn round_through_bf16(x: &[f32], out: &mut [f32]) {
    for (o, &v) in out.iter_mut().zip(x) {
        *o = f32::from_bits((bf16_bits(v) as u32) << 16);
    }
}

/// BF16 bits of the small integer v (exact: |v| ≤ 15).
const fn bf16_int(v: i32) -> u16 {
    ((v as f32).to_bits() >> 16) as u16
}

/// `vpermw` tables: entry i of table z8 (= 8 + zero point) is q − 8 − zero for the nibble
/// q = i mod 16 (the index's bit 4 is the other nibble's low bit, so the table repeats).
#[repr(align(64))]
pub(crate) struct Tables(pub(crate) [[u16; 32]; 16]);

pub(crate) static TABLES: Tables = {
    let mut t = [[0u16; 32]; 16];
    let mut z8 = 0;
    while z8 < 16 {
        let mut i = 0;
        while i < 32 {
            t[z8][i] = bf16_int((i % 16) as i32 - z8 as i32);
            i += 1;
        }
        z8 += 1;
    }
    Tables(t)
};

/// An INT4 weight repacked for `gemm`: 64-value blocks of 32 bytes (low nibbles values
/// 0..32, high nibbles 32..64, so one widening load and one shift give both halves in
/// element order), blocks of 4 consecutive rows interleaved (panel, block, row).
#[derive(Clone, Debug)]
pub struct PackedI4Bf16 {
    pub n: usize,
    pub k: usize,
    pub(crate) group: usize,
    pub(crate) groups: usize,
    /// (n.div_ceil(4), k / 64, 4, 32), zero rows padding the last panel
    pub(crate) data: Vec<u8>,
    /// (n.div_ceil(4) · 4, groups), zero for padding rows
    pub(crate) scale: Vec<f32>,
    /// (n.div_ceil(4) · 4, groups): 8 + zero point, the row of `TABLES` to look up
    pub(crate) z8: Vec<u8>,
}

impl PackedI4Bf16 {
    /// Repack an INT4 `[n, k]` weight; None where the kernel cannot run it: no AVX-512 BF16,
    /// or what `Int4View::of` refuses for 64-value blocks.
    pub fn pack(w: &QuantWeight, n: usize, k: usize) -> Option<PackedI4Bf16> {
        if !available() {
            return None;
        }
        let Int4View {
            packed,
            scale,
            zero,
            group,
            groups,
        } = Int4View::of(w, n, k, BLOCK)?;
        let nib = |row: usize, t: usize| super::nibble(packed, k, row, t);
        let rows = n.div_ceil(PANEL) * PANEL;
        let blocks = k / BLOCK;
        let mut data = vec![0u8; rows * k / 2];
        for row in 0..n {
            for blk in 0..blocks {
                let at = ((row / PANEL * blocks + blk) * PANEL + row % PANEL) * 32;
                for u in 0..32 {
                    let t = blk * BLOCK + u;
                    data[at + u] = nib(row, t) | nib(row, t + 32) << 4;
                }
            }
        }
        let mut sc = vec![0f32; rows * groups];
        sc[..n * groups].copy_from_slice(&scale[..n * groups]);
        let mut z8 = vec![8u8; rows * groups];
        if !zero.is_empty() {
            for (d, &z) in z8.iter_mut().zip(&zero[..n * groups]) {
                *d = (8 + z) as u8;
            }
        }
        Some(PackedI4Bf16 {
            n,
            k,
            group,
            groups,
            data,
            scale: sc,
            z8,
        })
    }
}

/// out (m, n) = x (m, k) · Wᵀ with x given as BF16 bits (`round_to_bf16`).
///
/// # Panics
/// If the buffers are smaller than the shape says or the CPU lacks AVX-512 BF16.
pub fn gemm(out: &mut [f32], x: &[u16], m: usize, w: &PackedI4Bf16) {
    let (n, k) = (w.n, w.k);
    assert!(
        out.len() >= m * n && x.len() >= m * k,
        "int4 bf16 gemm: buffers too small"
    );
    assert!(available(), "AVX-512 BF16 int4 gemm on a CPU without it");
    let p = SendPtr(out.as_mut_ptr());
    for_each_column_chunk(m, n, k, PANEL, |n0, n1| {
        #[allow(clippy::redundant_locals)] // capture the Sync wrapper, not its raw pointer field
        let p = p;
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the features and operand sizes were asserted (the packing holds whole
        // panels covering n rows of k); n0 is a multiple of PANEL (chunks are rounded to it)
        // and this task writes only columns n0..n1 of out (m, n).
        unsafe {
            avx512::rows(p.0, x, m, w, n0, n1)
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = (p, n0, n1);
    });
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{PackedI4Bf16, BLOCK, MR, PANEL, TABLES};
    use std::arch::x86_64::*;

    /// 32 BF16 values held as integer lanes, retyped for the dot instruction.
    #[inline(always)]
    fn bh(v: __m512i) -> __m512bh {
        // SAFETY: both are plain 512-bit vectors; every bit pattern is a valid __m512bh.
        unsafe { std::mem::transmute::<__m512i, __m512bh>(v) }
    }

    /// Round x to BF16 bits, 16 at a time; returns how many were done.
    ///
    /// # Safety
    /// AVX-512 F/BW present; out holds x.len() elements.
    #[target_feature(enable = "avx512f,avx512bw")]
    pub unsafe fn round(x: &[f32], out: &mut [u16]) -> usize {
        let bias = _mm512_set1_epi32(0x7fff);
        let one = _mm512_set1_epi32(1);
        let quiet = _mm512_set1_epi32(0x40);
        let half = |v: __m512| {
            let b = _mm512_castps_si512(v);
            let lsb = _mm512_and_si512(_mm512_srli_epi32(b, 16), one);
            let r = _mm512_srli_epi32(_mm512_add_epi32(_mm512_add_epi32(b, bias), lsb), 16);
            let nan = _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
            let q = _mm512_or_si512(_mm512_srli_epi32(b, 16), quiet);
            _mm512_cvtepi32_epi16(_mm512_mask_blend_epi32(nan, r, q))
        };
        let mut e = 0;
        while e + 16 <= x.len() {
            let v = _mm512_loadu_ps(x.as_ptr().add(e));
            _mm256_storeu_si256(out.as_mut_ptr().add(e) as *mut __m256i, half(v));
            e += 16;
        }
        e
    }

    /// Panels of rows n0..n1 against every token.
    ///
    /// # Safety
    /// See `super::gemm`.
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    pub unsafe fn rows(out: *mut f32, x: &[u16], m: usize, w: &PackedI4Bf16, n0: usize, n1: usize) {
        let mut j = n0;
        while j < n1 {
            let mut i = 0;
            while i < m {
                if m - i >= MR {
                    tile::<MR>(out, x, w, i, j, n1);
                    i += MR;
                } else {
                    tile::<1>(out, x, w, i, j, n1);
                    i += 1;
                }
            }
            j += PANEL;
        }
    }

    /// Tokens i..i+R against the panel of rows j..j+4 (rows at or past `end` not stored).
    ///
    /// # Safety
    /// In bounds per `super::gemm`'s asserts; j is a multiple of PANEL; CPU has AVX-512 BF16.
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    #[inline]
    unsafe fn tile<const R: usize>(
        out: *mut f32,
        x: &[u16],
        w: &PackedI4Bf16,
        i: usize,
        j: usize,
        end: usize,
    ) {
        let (k, n, groups) = (w.k, w.n, w.groups);
        let blocks = k / BLOCK;
        let panel = w.data.as_ptr().add(j / PANEL * blocks * PANEL * 32);
        let mut acc = [[_mm512_setzero_ps(); PANEL]; R];
        for gi in 0..groups {
            let mut part = [[_mm512_setzero_ps(); PANEL]; R];
            let tab: [*const __m512i; PANEL] = std::array::from_fn(|c| {
                let z8 = *w.z8.get_unchecked((j + c) * groups + gi) as usize;
                TABLES.0[z8].as_ptr() as *const __m512i
            });
            let b1 = ((gi + 1) * w.group).min(k) / BLOCK;
            for b in gi * w.group / BLOCK..b1 {
                let src = panel.add(b * PANEL * 32);
                let mut lo = [_mm512_setzero_si512(); PANEL];
                let mut hi = [_mm512_setzero_si512(); PANEL];
                for c in 0..PANEL {
                    let v = _mm512_cvtepu8_epi16(_mm256_loadu_si256(src.add(c * 32) as *const _));
                    let t = _mm512_loadu_si512(tab[c]);
                    lo[c] = _mm512_permutexvar_epi16(v, t);
                    hi[c] = _mm512_permutexvar_epi16(_mm512_srli_epi16(v, 4), t);
                }
                for (r, pr) in part.iter_mut().enumerate() {
                    let xp = x.as_ptr().add((i + r) * k + b * BLOCK);
                    let x0 = bh(_mm512_loadu_si512(xp as *const _));
                    let x1 = bh(_mm512_loadu_si512(xp.add(32) as *const _));
                    for c in 0..PANEL {
                        pr[c] =
                            _mm512_dpbf16_ps(_mm512_dpbf16_ps(pr[c], x0, bh(lo[c])), x1, bh(hi[c]));
                    }
                }
            }
            for c in 0..PANEL {
                let s = _mm512_set1_ps(*w.scale.get_unchecked((j + c) * groups + gi));
                for r in 0..R {
                    acc[r][c] = _mm512_fmadd_ps(part[r][c], s, acc[r][c]);
                }
            }
        }
        for (r, row) in acc.iter().enumerate() {
            for (c, a) in row.iter().enumerate() {
                if j + c < end.min(n) {
                    *out.add((i + r) * n + j + c) = _mm512_reduce_add_ps(*a);
                }
            }
        }
    }
}
