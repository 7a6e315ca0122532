//! Causal grouped-query attention over a paged KV cache (vLLM's block tables) on the CPU.
//!
//! - One rayon task per head; Q·Kᵀ as strided tile products in `dense::dot`'s reduction order,
//!   softmax row by row, P·V in key order across blocks (on AVX-512 four query rows at a time,
//!   sharing each V row's loads; every element still FMA-accumulated in key order from zero).
//! - A sliding window gives the keys before it weight 0 (skipping whole blocks below it), so
//!   P·V keeps one code path.
//! - So a row's output depends neither on its batch-mates nor on the block size or table (bit
//!   for bit): the basis of "same tokens alone or in a batch".

use super::dense::{self, Isa, SendPtr};
use super::{check_len, CpuBackend};
use crate::backend::{AttentionArgs, ATTN_ROWS};
use crate::error::{Error, Result};
use rayon::prelude::*;

/// `Ops::attention` on the CPU: causal GQA attention of each sequence's new rows over its
/// paged cache.
pub fn paged_attention(a: AttentionArgs<'_, CpuBackend>, isa: Isa, vector: bool) -> Result<()> {
    let (hd, nh, nkv) = (a.head_dim, a.n_heads, a.n_kv_heads);
    let (qd, kvd, bs) = (nh * hd, nkv * hd, a.block_size);
    if nkv == 0 || nh % nkv != 0 {
        return Err(Error::InvalidArgument(format!(
            "attention: {nh} query heads are not a multiple of {nkv} kv heads"
        )));
    }
    let batch_rows = a.q.len().min(a.out.len()) / qd.max(1);
    let n_blocks = a.k_cache.len().min(a.v_cache.len()) / (bs * kvd).max(1);
    for sq in a.seqs {
        sq.check(bs, n_blocks, a.max_seq, batch_rows)?;
    }
    check_len(
        "attention scratch",
        a.scratch.len(),
        nh * ATTN_ROWS * a.max_seq,
    )?;
    let group = nh / nkv;
    let (scale, softcap) = (a.scale, a.softcap);
    let (q, kc, vc) = (&a.q[..], &a.k_cache[..], &a.v_cache[..]);
    let out = SendPtr(a.out.as_mut_ptr());
    let (seqs, max_seq, window) = (a.seqs, a.max_seq, a.window);
    // P·V for several query rows at once shares each V load between them (AVX-512)
    let multi = vector && hd.is_multiple_of(16) && super::vmath::avx512();
    // One task per head; each owns ATTN_ROWS score rows of max_seq. Query rows go in
    // blocks: Q·Kᵀ as strided tile products, one per KV block (each score reduced in
    // `dot`'s order, so a row's scores depend neither on its query block nor on the block
    // table), then softmax and P·V row by row in key order.
    a.scratch
        .par_chunks_mut(ATTN_ROWS * max_seq)
        .take(nh)
        .enumerate()
        .for_each(|(h, scores)| {
            let g = h / group;
            for sq in seqs {
                let mut r0 = 0;
                while r0 < sq.rows {
                    let rb = ATTN_ROWS.min(sq.rows - r0);
                    let n_max = sq.start_pos + r0 + rb; // keys seen by the block's last row
                    let qrow = &q[(sq.row0 + r0) * qd + h * hd..];
                    // the first key row rr sees; blocks below the block's first row's window
                    // are skipped, the rest of a row's masked keys get weight 0 below
                    let lo = |rr: usize| match window {
                        Some(w) => (sq.start_pos + r0 + rr + 1).saturating_sub(w),
                        None => 0,
                    };
                    let b0 = lo(0) / bs;
                    for (b, &blk) in sq
                        .blocks
                        .iter()
                        .enumerate()
                        .take(n_max.div_ceil(bs))
                        .skip(b0)
                    {
                        let j0 = b * bs;
                        matmul_strided(
                            isa,
                            &mut scores[j0..],
                            max_seq,
                            qrow,
                            qd,
                            &kc[blk as usize * bs * kvd + g * hd..],
                            kvd,
                            rb,
                            bs.min(n_max - j0),
                            hd,
                        );
                    }
                    let keys = |rr: usize| sq.start_pos + r0 + rr + 1;
                    for rr in 0..rb {
                        let s = &mut scores[rr * max_seq..rr * max_seq + keys(rr)];
                        // keys outside the window weigh exactly 0: P·V adds 0·v, which
                        // leaves every sum as the windowed one
                        let (out, s) = s.split_at_mut(lo(rr));
                        out.fill(0.0);
                        match softcap {
                            None => s.iter_mut().for_each(|v| *v *= scale),
                            Some(cap) => s
                                .iter_mut()
                                .for_each(|v| *v = super::vmath::softcap(*v * scale, cap)),
                        }
                        softmax(s, vector);
                    }
                    let p = out;
                    // SAFETY: head h of row r is written by this task only (tasks are per
                    // head, sequences own disjoint rows), and r * qd + (h + 1) * hd <=
                    // batch_rows * qd, checked above.
                    let o_of = |rr: usize| unsafe {
                        std::slice::from_raw_parts_mut(
                            p.0.add((sq.row0 + r0 + rr) * qd + h * hd),
                            hd,
                        )
                    };
                    let v = &vc[g * hd..];
                    let mut rr = 0;
                    while rr < rb {
                        let take = if multi { PV_ROWS.min(rb - rr) } else { 1 };
                        if !multi {
                            let s = &scores[rr * max_seq..rr * max_seq + keys(rr)];
                            weighted_rows_paged(isa, o_of(rr), s, v, kvd, sq.blocks, bs);
                        } else {
                            let mut os: [&mut [f32]; PV_ROWS] = Default::default();
                            let mut ps: [&[f32]; PV_ROWS] = [&[]; PV_ROWS];
                            for i in 0..take {
                                os[i] = o_of(rr + i);
                                ps[i] =
                                    &scores[(rr + i) * max_seq..(rr + i) * max_seq + keys(rr + i)];
                            }
                            weighted_rows_multi(
                                &mut os[..take],
                                &ps[..take],
                                v,
                                kvd,
                                sq.blocks,
                                bs,
                            );
                        }
                        rr += take;
                    }
                    r0 += rb;
                }
            }
        });
    Ok(())
}

/// Softmax in place, max-subtracted.
fn softmax(x: &mut [f32], vector: bool) {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum = super::vmath::exp_shifted_sum_on(x, max, vector);
    let inv = 1.0 / sum;
    x.iter_mut().for_each(|v| *v *= inv);
}

/// out[i · ldo + j] = dot(x row i, w row j) for i < m, j < n on the calling thread, operands at
/// any row stride (attention's Q·Kᵀ over heads inside token rows). Each element is reduced in
/// `dot`'s order, whatever tile it falls in. Panics if `isa` is AVX2 on a CPU without it.
#[allow(clippy::too_many_arguments)]
pub fn matmul_strided(
    isa: Isa,
    out: &mut [f32],
    ldo: usize,
    x: &[f32],
    ldx: usize,
    w: &[f32],
    ldw: usize,
    m: usize,
    n: usize,
    k: usize,
) {
    if m == 0 || n == 0 {
        return;
    }
    assert!(
        out.len() >= (m - 1) * ldo + n
            && x.len() >= (m - 1) * ldx + k
            && w.len() >= (n - 1) * ldw + k,
        "matmul_strided: operands too small"
    );
    assert!(
        isa == Isa::Portable || dense::has_avx2(),
        "AVX2 kernels requested on a CPU without AVX2"
    );
    // SAFETY: x, w and out hold the rows and strides asserted above; AVX2 checked.
    unsafe { dense::block(isa, x, ldx, w, ldw, m, k, 0, n, out.as_mut_ptr(), ldo) }
}

/// Panics unless the table maps `keys` keys (bs per block) to rows of v holding d values each.
fn check_table(
    what: &str,
    v: &[f32],
    ldv: usize,
    d: usize,
    blocks: &[u32],
    bs: usize,
    keys: usize,
) {
    assert!(
        bs > 0 && blocks.len() * bs >= keys,
        "{what}: block table too short"
    );
    for (b, &blk) in blocks.iter().enumerate().take(keys.div_ceil(bs)) {
        let rows = bs.min(keys - b * bs);
        assert!(
            v.len() >= (blk as usize * bs + rows - 1) * ldv + d,
            "{what}: block {blk} outside v"
        );
    }
}

/// Query rows whose P·V `weighted_rows_multi` computes together.
pub const PV_ROWS: usize = 4;

/// `weighted_rows_paged` for up to `PV_ROWS` query rows at once (each o[i] from p[i], any
/// lengths): every V row is loaded once for all of them. Each element is FMA-accumulated in
/// key order from zero, as the AVX2 `weighted_rows` does, so results equal it bit for bit.
///
/// # Panics
/// If the CPU lacks AVX-512F, the rows' widths differ or are not a multiple of 16, more than
/// `PV_ROWS` rows are given, or a used block lies outside `v`.
pub fn weighted_rows_multi(
    o: &mut [&mut [f32]],
    p: &[&[f32]],
    v: &[f32],
    ldv: usize,
    blocks: &[u32],
    bs: usize,
) {
    let d = o.first().map_or(0, |r| r.len());
    let keys = p.iter().map(|r| r.len()).max().unwrap_or(0);
    assert!(
        o.len() == p.len() && o.len() <= PV_ROWS && o.iter().all(|r| r.len() == d),
        "weighted_rows_multi: {} output rows for {} weight rows",
        o.len(),
        p.len()
    );
    assert!(
        d.is_multiple_of(16),
        "weighted_rows_multi: width {d} not a multiple of 16"
    );
    assert!(
        super::vmath::avx512(),
        "AVX-512 P·V on a CPU without AVX-512"
    );
    check_table("weighted_rows_multi", v, ldv, d, blocks, bs, keys);
    #[cfg(target_arch = "x86_64")]
    // SAFETY: AVX-512F checked; every key row of every used block holds d values (asserted),
    // d is a multiple of 16 and each output row holds d values.
    unsafe {
        match o.len() {
            4 => pv::rows::<4>(o, p, v.as_ptr(), ldv, blocks, bs),
            3 => pv::rows::<3>(o, p, v.as_ptr(), ldv, blocks, bs),
            2 => pv::rows::<2>(o, p, v.as_ptr(), ldv, blocks, bs),
            1 => pv::rows::<1>(o, p, v.as_ptr(), ldv, blocks, bs),
            _ => {}
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod pv {
    use std::arch::x86_64::*;

    /// R rows of P·V, 64 columns (4 vectors) at a time, then 16.
    ///
    /// # Safety
    /// See `weighted_rows_multi`; o.len() == p.len() == R.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn rows<const R: usize>(
        o: &mut [&mut [f32]],
        p: &[&[f32]],
        v: *const f32,
        ldv: usize,
        blocks: &[u32],
        bs: usize,
    ) {
        let d = o[0].len();
        let mut c0 = 0;
        while c0 + 64 <= d {
            chunk::<R, 4>(o, p, v, ldv, blocks, bs, c0);
            c0 += 64;
        }
        while c0 < d {
            chunk::<R, 1>(o, p, v, ldv, blocks, bs, c0);
            c0 += 16;
        }
    }

    /// Columns c0 .. c0 + 16 W of R rows: keys every row has together, then each row's own.
    ///
    /// # Safety
    /// As `rows`; c0 + 16 W <= d.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn chunk<const R: usize, const W: usize>(
        o: &mut [&mut [f32]],
        p: &[&[f32]],
        v: *const f32,
        ldv: usize,
        blocks: &[u32],
        bs: usize,
        c0: usize,
    ) {
        let row =
            |j: usize| v.add((*blocks.get_unchecked(j / bs) as usize * bs + j % bs) * ldv + c0);
        let common = p.iter().map(|r| r.len()).min().unwrap_or(0);
        let mut acc = [[_mm512_setzero_ps(); W]; R];
        for j in 0..common {
            let r = row(j);
            let mut vv = [_mm512_setzero_ps(); W];
            for (u, x) in vv.iter_mut().enumerate() {
                *x = _mm512_loadu_ps(r.add(16 * u));
            }
            for (i, a) in acc.iter_mut().enumerate() {
                let pj = _mm512_set1_ps(*p[i].get_unchecked(j));
                for (x, y) in a.iter_mut().zip(&vv) {
                    *x = _mm512_fmadd_ps(pj, *y, *x);
                }
            }
        }
        for (i, a) in acc.iter_mut().enumerate() {
            for j in common..p[i].len() {
                let (r, pj) = (row(j), _mm512_set1_ps(*p[i].get_unchecked(j)));
                for (u, x) in a.iter_mut().enumerate() {
                    *x = _mm512_fmadd_ps(pj, _mm512_loadu_ps(r.add(16 * u)), *x);
                }
            }
            for (u, x) in a.iter().enumerate() {
                _mm512_storeu_ps(o[i].as_mut_ptr().add(c0 + 16 * u), *x);
            }
        }
    }
}

/// o (d) = Σ_j p[j] · v[j · ldv .. j · ldv + d] (attention's P·V for one query row), each
/// element accumulated in key order, so the result does not depend on other rows. Panics if
/// `isa` is AVX2 on a CPU without it.
pub fn weighted_rows(isa: Isa, o: &mut [f32], p: &[f32], v: &[f32], ldv: usize) {
    weighted_rows_paged(isa, o, p, v, ldv, &[0], p.len().max(1));
}

/// [`weighted_rows`] over a paged cache: row j is v[(blocks[j / bs] · bs + j % bs) · ldv ..]
/// (a vLLM-style block table). The accumulation order is the key order whatever the blocks, so
/// the result equals the contiguous one bit for bit. Panics if a block lies outside `v` or the
/// table is too short for p.len() keys.
pub fn weighted_rows_paged(
    isa: Isa,
    o: &mut [f32],
    p: &[f32],
    v: &[f32],
    ldv: usize,
    blocks: &[u32],
    bs: usize,
) {
    let d = o.len();
    if p.is_empty() {
        o.fill(0.0);
        return;
    }
    check_table("weighted_rows", v, ldv, d, blocks, bs, p.len());
    assert!(
        isa == Isa::Portable || dense::has_avx2(),
        "AVX2 kernels requested on a CPU without AVX2"
    );
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx2 {
        // SAFETY: AVX2+FMA detected; every row j < p.len() of every used block holds d values
        // (asserted above).
        unsafe { dense::avx2::weighted_rows(o, p, v.as_ptr(), ldv, blocks, bs) };
        return;
    }
    o.fill(0.0);
    for (pb, &blk) in p.chunks(bs).zip(blocks) {
        let base = blk as usize * bs * ldv;
        for (j, &pj) in pb.iter().enumerate() {
            o.iter_mut()
                .zip(&v[base + j * ldv..base + j * ldv + d])
                .for_each(|(o, x)| *o += pj * x);
        }
    }
}
