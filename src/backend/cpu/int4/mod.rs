//! W4A16 on the CPU: INT4 group-quantized weights against BF16-rounded activations.
//!
//! - Weights as GPTQ / compressed-tensors `pack_quantized` store them: offset-binary nibbles,
//!   value (q − 8 − zero) · scale.
//! - `gemm` (AVX-512; groups and k multiples of 32; weights repacked into `PackedI4`) decodes 16
//!   weights at a time in registers and feeds up to eight tokens' FMAs, so decoded weights never
//!   touch memory: batch-1 decode is bandwidth-bound, not decode-bound.
//! - Its reduction order per token does not depend on the tile or the batch.
//! - `bf16` is the AVX-512 BF16 variant; other shapes and CPUs decode rows with
//!   `QuantWeight::decode_rows` into `dense::matmul_decoded`.

pub mod amx;
pub mod bf16;

use crate::backend::cpu::dense::{for_each_column_chunk, SendPtr};
use crate::quant::QuantWeight;

/// Whether the AVX-512 kernel runs here.
pub fn has_avx512() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{PackedI4, MR, NR, NR_FEW};
    use std::arch::x86_64::*;

    /// Rows n0..n1 of W against every token.
    ///
    /// # Safety
    /// See `super::gemm`.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn rows(out: *mut f32, x: &[f32], m: usize, w: &PackedI4, n0: usize, n1: usize) {
        // Few tokens: more weight rows per tile keep enough independent FMA chains in flight.
        // Each (token, row) accumulates alone, so the tile shape never changes a result.
        let nr = if m <= 2 { NR_FEW } else { NR };
        let mut j = n0;
        while j < n1 {
            let c = nr.min(n1 - j);
            let mut i = 0;
            while i < m {
                let r = MR.min(m - i);
                macro_rules! t {
                    ($r:expr) => {
                        match c {
                            NR_FEW => tile::<$r, NR_FEW>(out, x, w, i, j),
                            NR => tile::<$r, NR>(out, x, w, i, j),
                            _ => (0..c).for_each(|jj| tile::<$r, 1>(out, x, w, i, j + jj)),
                        }
                    };
                }
                match r {
                    8 => t!(8),
                    7 => t!(7),
                    6 => t!(6),
                    5 => t!(5),
                    4 => t!(4),
                    3 => t!(3),
                    2 => t!(2),
                    _ => t!(1),
                }
                i += r;
            }
            j += c;
        }
    }

    /// Tokens i..i+R against weight rows j..j+C.
    ///
    /// # Safety
    /// In bounds per `super::gemm`'s asserts; CPU has AVX-512F.
    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn tile<const R: usize, const C: usize>(
        out: *mut f32,
        x: &[f32],
        w: &PackedI4,
        i: usize,
        j: usize,
    ) {
        let (k, g, n) = (w.k, w.group, w.n);
        let low = _mm_set1_epi8(0x0f);
        let mut acc = [[_mm512_setzero_ps(); C]; R];
        for gi in 0..w.groups {
            let mut s = [_mm512_setzero_ps(); C];
            let mut zz = [_mm_setzero_si128(); C];
            for c in 0..C {
                let e = (j + c) * w.groups + gi;
                s[c] = _mm512_set1_ps(w.scale[e]);
                zz[c] = _mm_set1_epi8(w.zz[e]);
            }
            let end = ((gi + 1) * g).min(k);
            let mut t = gi * g;
            while t < end {
                let mut wv = [[_mm512_setzero_ps(); 2]; C];
                for c in 0..C {
                    let b = _mm_loadu_si128(
                        w.data.as_ptr().add(w.offset(j + c, t / 32)) as *const __m128i
                    );
                    // values t..t+16 in the low nibbles, t+16..t+32 in the high ones
                    let lo = _mm_sub_epi8(_mm_and_si128(b, low), zz[c]);
                    let hi = _mm_sub_epi8(_mm_and_si128(_mm_srli_epi16(b, 4), low), zz[c]);
                    wv[c][0] = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(lo)), s[c]);
                    wv[c][1] = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(hi)), s[c]);
                }
                for (r, row) in acc.iter_mut().enumerate() {
                    let xp = x.as_ptr().add((i + r) * k + t);
                    let (x0, x1) = (_mm512_loadu_ps(xp), _mm512_loadu_ps(xp.add(16)));
                    for (a, v) in row.iter_mut().zip(wv.iter()) {
                        *a = _mm512_fmadd_ps(x1, v[1], _mm512_fmadd_ps(x0, v[0], *a));
                    }
                }
                t += 32;
            }
        }
        for (r, row) in acc.iter().enumerate() {
            for (c, a) in row.iter().enumerate() {
                *out.add((i + r) * n + j + c) = _mm512_reduce_add_ps(*a);
            }
        }
    }
}

/// Nibble t of row `row` in the checkpoint's packing (value t of a row in the low nibble of
/// byte t / 2 when t is even, the high one when odd).
#[inline]
pub(crate) fn nibble(packed: &[u8], k: usize, row: usize, t: usize) -> u8 {
    let b = packed[(row * k + t) / 2];
    if t.is_multiple_of(2) {
        b & 15
    } else {
        b >> 4
    }
}

/// The parts of an INT4 `[n, k]` weight that the repacking kernels read.
pub(crate) struct Int4View<'a> {
    pub packed: &'a [u8],
    pub scale: &'a [f32],
    /// empty for symmetric weights
    pub zero: &'a [i8],
    pub group: usize,
    pub groups: usize,
}

impl<'a> Int4View<'a> {
    /// None where a kernel working in `block`-value blocks cannot take `w`: not INT4, groups
    /// or k not whole blocks, zero points outside int4 range (so q − 8 − zero fits the
    /// kernels' arithmetic), or data shorter than the shape.
    pub(crate) fn of(w: &'a QuantWeight, n: usize, k: usize, block: usize) -> Option<Self> {
        let QuantWeight::Int4 {
            packed,
            scale,
            zero,
            group,
        } = w
        else {
            return None;
        };
        let group = *group;
        if group == 0 || !group.is_multiple_of(block) || !k.is_multiple_of(block) {
            return None;
        }
        let groups = k.div_ceil(group);
        let ok = zero.iter().all(|z| (-8..=7).contains(z))
            && packed.len() >= n * k / 2
            && scale.len() >= n * groups
            && (zero.is_empty() || zero.len() >= n * groups);
        ok.then_some(Int4View {
            packed,
            scale,
            zero,
            group,
            groups,
        })
    }
}

/// Tokens per micro-tile.
const MR: usize = 8;
/// Weight rows per micro-tile (16 accumulators + 4 decoded vectors at MR = 8).
const NR: usize = 2;
/// Weight rows per micro-tile when a call has at most 2 tokens.
const NR_FEW: usize = 4;

/// Rows per panel: one 32-value block of 4 rows is one 64-byte cache line.
const PANEL: usize = 4;

/// An INT4 weight repacked for `gemm`: each 32-value block of a row is 16 bytes whose low
/// nibbles are values 0..16 and high nibbles values 16..32 (llama.cpp's Q4_0 order), so one
/// mask and one shift give both halves in element order; the blocks of 4 consecutive rows
/// are interleaved (panel, block, row), so a tile streams memory in order.
#[derive(Clone, Debug)]
pub struct PackedI4 {
    pub n: usize,
    pub k: usize,
    group: usize,
    groups: usize,
    /// (n.div_ceil(4), k / 32, 4, 16), zero rows padding the last panel
    data: Vec<u8>,
    /// (n, groups)
    scale: Vec<f32>,
    /// (n, groups): 8 + zero, what the kernel subtracts from a nibble
    zz: Vec<i8>,
}

impl PackedI4 {
    /// Byte offset of 32-value block `blk` of row `row`.
    #[inline(always)]
    fn offset_of(k: usize, row: usize, blk: usize) -> usize {
        ((row / PANEL * (k / 32) + blk) * PANEL + row % PANEL) * 16
    }

    #[inline(always)]
    fn offset(&self, row: usize, blk: usize) -> usize {
        Self::offset_of(self.k, row, blk)
    }

    /// Repack an INT4 `[n, k]` weight for `gemm`; None where it cannot run it: no AVX-512F, or
    /// what `Int4View::of` refuses for 32-value blocks.
    pub fn pack(w: &QuantWeight, n: usize, k: usize) -> Option<PackedI4> {
        if !has_avx512() {
            return None;
        }
        let Int4View {
            packed,
            scale,
            zero,
            group,
            groups,
        } = Int4View::of(w, n, k, 32)?;
        let nib = |row: usize, t: usize| nibble(packed, k, row, t);
        let mut data = vec![0u8; n.div_ceil(PANEL) * PANEL * k / 2];
        for row in 0..n {
            for blk in 0..k / 32 {
                for u in 0..16 {
                    let t = blk * 32 + u;
                    data[Self::offset_of(k, row, blk) + u] = nib(row, t) | nib(row, t + 16) << 4;
                }
            }
        }
        let zz = (0..n * groups)
            .map(|e| 8 + if zero.is_empty() { 0 } else { zero[e] })
            .collect();
        Some(PackedI4 {
            n,
            k,
            group,
            groups,
            data,
            scale: scale[..n * groups].to_vec(),
            zz,
        })
    }
}

/// out (m, n) = x (m, k) · Wᵀ, decoding W in registers.
///
/// # Panics
/// If the buffers are smaller than the shape says or the CPU lacks AVX-512F.
pub fn gemm(out: &mut [f32], x: &[f32], m: usize, w: &PackedI4) {
    let (n, k) = (w.n, w.k);
    assert!(
        out.len() >= m * n && x.len() >= m * k,
        "int4 gemm: buffers too small"
    );
    assert!(has_avx512(), "AVX-512 int4 gemm on a CPU without AVX-512F");
    let p = SendPtr(out.as_mut_ptr());
    for_each_column_chunk(m, n, k, NR, |n0, n1| {
        #[allow(clippy::redundant_locals)] // capture the Sync wrapper, not its raw pointer field
        let p = p;
        #[cfg(target_arch = "x86_64")]
        // SAFETY: AVX-512F presence and the operand sizes were asserted (PackedI4 holds n rows
        // of k by construction); this task writes only columns n0..n1 of out (m, n).
        unsafe {
            avx512::rows(p.0, x, m, w, n0, n1)
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = (p, n0, n1);
    });
}
