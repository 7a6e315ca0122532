//! Causal GQA attention over the paged KV cache: against an f64 reference, and bit for bit
//! against itself across block sizes, shuffled block tables, query blocks and batches of
//! sequences — the property continuous batching relies on (a sequence's output does not depend
//! on what else is in the batch or where its blocks are).

mod common;

use common::randn;
use ferroq::backend::cpu::attention;
use ferroq::backend::cpu::dense::{self, Isa};
use ferroq::backend::cpu::CpuBackend;
use ferroq::backend::prelude::*;
use ferroq::backend::{AttentionArgs, KvSeq, ATTN_ROWS};
use ferroq::engine::sampler::Rng;
use ferroq::error::Error;

/// Attention shape: heads, kv heads, head dim, and the sliding window if any.
#[derive(Clone, Copy)]
struct Heads {
    nh: usize,
    nkv: usize,
    hd: usize,
    win: Option<usize>,
}

impl Heads {
    fn qd(self) -> usize {
        self.nh * self.hd
    }
    fn kvd(self) -> usize {
        self.nkv * self.hd
    }
}

/// A sequence's full K and V history (positions, kv_dim) and its new queries.
struct Seq {
    k: Vec<f32>,
    v: Vec<f32>,
    q: Vec<f32>, // (rows, q_dim)
    start: usize,
    rows: usize,
}

impl Seq {
    fn random(rng: &mut Rng, h: Heads, start: usize, rows: usize) -> Seq {
        let n = start + rows;
        Seq {
            k: randn(rng, n * h.kvd(), 1.0),
            v: randn(rng, n * h.kvd(), 1.0),
            q: randn(rng, rows * h.qd(), 1.5),
            start,
            rows,
        }
    }
}

/// Run `seqs` as one batch over a pool of `n_blocks` blocks of `bs`, each sequence's table
/// taken from `tables`; K/V are written through `write_kv` (history first, then the new rows
/// as the model does). Returns the attention output (batch rows, q_dim).
fn run(
    b: &CpuBackend,
    h: Heads,
    seqs: &[&Seq],
    tables: &[Vec<u32>],
    bs: usize,
    n_blocks: usize,
    max_seq: usize,
) -> Result<Vec<f32>, Error> {
    let kvd = h.kvd();
    let mut kc = vec![f32::NAN; n_blocks * bs * kvd];
    let mut vc = vec![f32::NAN; n_blocks * bs * kvd];
    let mut q = Vec::new();
    let mut kv_seqs = Vec::new();
    for (s, t) in seqs.iter().zip(tables) {
        let hist = [KvSeq {
            row0: 0,
            rows: s.start + s.rows,
            start_pos: 0,
            blocks: t,
        }];
        b.write_kv(&mut kc, &s.k, &hist, bs, kvd)?;
        b.write_kv(&mut vc, &s.v, &hist, bs, kvd)?;
        kv_seqs.push(KvSeq {
            row0: q.len() / h.qd(),
            rows: s.rows,
            start_pos: s.start,
            blocks: t,
        });
        q.extend_from_slice(&s.q);
    }
    let mut out = vec![f32::NAN; q.len()];
    let mut scratch = vec![0.0; h.nh * ATTN_ROWS * max_seq];
    b.attention(AttentionArgs {
        out: &mut out,
        q: &q,
        k_cache: &kc,
        v_cache: &vc,
        scratch: &mut scratch,
        seqs: &kv_seqs,
        block_size: bs,
        max_seq,
        n_heads: h.nh,
        n_kv_heads: h.nkv,
        head_dim: h.hd,
        window: h.win,
        scale: 1.0 / (h.hd as f32).sqrt(),
        softcap: None,
    })?;
    Ok(out)
}

fn reference(h: Heads, s: &Seq) -> Vec<f64> {
    let (qd, kvd, hd) = (h.qd(), h.kvd(), h.hd);
    let mut want = vec![0.0; s.rows * qd];
    for r in 0..s.rows {
        for head in 0..h.nh {
            let g = head / (h.nh / h.nkv);
            let n_keys = s.start + r + 1;
            // transformers' sliding mask: key j seen when j > i - window
            let lo = h.win.map_or(0, |w| n_keys.saturating_sub(w));
            let sc: Vec<f64> = (lo..n_keys)
                .map(|j| {
                    (0..hd)
                        .map(|i| {
                            s.q[r * qd + head * hd + i] as f64 * s.k[j * kvd + g * hd + i] as f64
                        })
                        .sum::<f64>()
                        / (hd as f64).sqrt()
                })
                .collect();
            let mx = sc.iter().cloned().fold(f64::MIN, f64::max);
            let e: Vec<f64> = sc.iter().map(|v| (v - mx).exp()).collect();
            let z: f64 = e.iter().sum();
            for i in 0..hd {
                want[r * qd + head * hd + i] = (lo..n_keys)
                    .map(|j| e[j - lo] / z * s.v[j * kvd + g * hd + i] as f64)
                    .sum();
            }
        }
    }
    want
}

/// A random permutation of 0..n (Fisher–Yates).
fn shuffled(rng: &mut Rng, n: usize) -> Vec<u32> {
    let mut p: Vec<u32> = (0..n as u32).collect();
    for i in (1..n).rev() {
        p.swap(i, (rng.next_u64() % (i as u64 + 1)) as usize);
    }
    p
}

/// Every shape without a window, and with windows shorter than some of its sequences (3: a
/// query block's rows each see a different first key; 9: blocks wholly below the window).
fn with_windows() -> impl Iterator<Item = ((usize, usize, usize, usize, usize), Option<usize>)> {
    SHAPES
        .into_iter()
        .flat_map(|s| [None, Some(3), Some(9)].map(|w| (s, w)))
}

const SHAPES: [(usize, usize, usize, usize, usize); 6] = [
    // (nh, nkv, hd, rows, start)
    (4, 2, 8, 5, 3),
    (9, 3, 64, 1, 40),
    (6, 6, 4, 7, 0),
    (3, 1, 16, 2, 0),
    (4, 2, 8, 11, 3), // query blocks of ATTN_ROWS and a partial one
    (9, 3, 64, 9, 0),
];

#[test]
fn attention_matches_f64_reference_and_rows_alone() {
    let b = CpuBackend::new();
    let mut rng = Rng::new(6);
    for ((nh, nkv, hd, rows, start), win) in with_windows() {
        let h = Heads { nh, nkv, hd, win };
        let max_seq = start + rows + 2;
        let s = Seq::random(&mut rng, h, start, rows);
        // contiguous: one block of max_seq
        let out = run(&b, h, &[&s], &[vec![0]], max_seq, 1, max_seq).expect("attention");
        let want = reference(h, &s);
        for (i, (&g, &w)) in out.iter().zip(&want).enumerate() {
            assert!(
                (g as f64 - w).abs() <= 1e-5 + 1e-5 * w.abs(),
                "nh{nh} nkv{nkv} hd{hd} window {win:?}: index {i} got {g} want {w}"
            );
        }
        // a row computed alone (as in decode) gives the same bits as inside the block
        for r in 0..rows {
            let n = start + r + 1;
            let one = Seq {
                k: s.k[..n * h.kvd()].to_vec(),
                v: s.v[..n * h.kvd()].to_vec(),
                q: s.q[r * h.qd()..(r + 1) * h.qd()].to_vec(),
                start: start + r,
                rows: 1,
            };
            let got = run(&b, h, &[&one], &[vec![0]], max_seq, 1, max_seq).expect("attention");
            assert_eq!(
                got,
                out[r * h.qd()..(r + 1) * h.qd()],
                "row {r} alone differs"
            );
        }
    }
}

#[test]
fn paged_attention_equals_contiguous_bit_for_bit() {
    let b = CpuBackend::new();
    let mut rng = Rng::new(60);
    for ((nh, nkv, hd, rows, start), win) in with_windows() {
        let h = Heads { nh, nkv, hd, win };
        let max_seq = start + rows + 5;
        let s = Seq::random(&mut rng, h, start, rows);
        let contiguous = run(&b, h, &[&s], &[vec![0]], max_seq, 1, max_seq).expect("attention");
        for bs in [1, 3, ATTN_ROWS, 16] {
            let n_blocks = max_seq.div_ceil(bs) + 3;
            let table = shuffled(&mut rng, n_blocks);
            let paged = run(&b, h, &[&s], &[table], bs, n_blocks, max_seq).expect("paged");
            assert_eq!(
                paged.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                contiguous.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                "nh{nh} hd{hd} rows{rows} start{start} window {win:?}: block size {bs} differs"
            );
        }
    }
}

#[test]
fn sequences_in_one_batch_equal_their_solo_runs() {
    let b = CpuBackend::new();
    let mut rng = Rng::new(61);
    for win in [None, Some(6)] {
        batch_equals_solo(&b, &mut rng, win);
    }
}

fn batch_equals_solo(b: &CpuBackend, rng: &mut Rng, win: Option<usize>) {
    let h = Heads {
        nh: 9,
        nkv: 3,
        hd: 64,
        win,
    };
    let (bs, max_seq) = (4, 40);
    // a prefill chunk, decode steps at different depths, a fresh prompt
    let seqs = [
        Seq::random(rng, h, 5, 7),
        Seq::random(rng, h, 30, 1),
        Seq::random(rng, h, 0, 3),
        Seq::random(rng, h, 17, 1),
    ];
    // one pool, the sequences' blocks interleaved
    let need: Vec<usize> = seqs
        .iter()
        .map(|s| (s.start + s.rows).div_ceil(bs))
        .collect();
    let n_blocks = need.iter().sum::<usize>() + 2;
    let perm = shuffled(rng, n_blocks);
    let mut tables = Vec::new();
    let mut next = 0;
    for n in &need {
        tables.push(perm[next..next + n].to_vec());
        next += n;
    }
    let refs: Vec<&Seq> = seqs.iter().collect();
    let batched = run(b, h, &refs, &tables, bs, n_blocks, max_seq).expect("batch");
    let mut row = 0;
    for (i, s) in seqs.iter().enumerate() {
        let solo = run(b, h, &[s], &[vec![0]], max_seq, 1, max_seq).expect("solo");
        let got = &batched[row * h.qd()..(row + s.rows) * h.qd()];
        assert_eq!(
            got,
            &solo[..],
            "sequence {i} differs inside the batch (window {win:?})"
        );
        row += s.rows;
    }
}

#[test]
fn bad_block_tables_are_refused() {
    let b = CpuBackend::new();
    let mut rng = Rng::new(62);
    let h = Heads {
        nh: 4,
        nkv: 2,
        hd: 8,
        win: None,
    };
    let s = Seq::random(&mut rng, h, 6, 3); // 9 positions
    let bs = 4;
    // 9 positions need 3 blocks
    let short = run(&b, h, &[&s], &[vec![0, 1]], bs, 4, 16);
    assert!(
        matches!(&short, Err(Error::InvalidArgument(m)) if m.contains("need 3 blocks")),
        "{short:?}"
    );
    let outside = run(&b, h, &[&s], &[vec![0, 1, 7]], bs, 4, 16);
    assert!(
        matches!(&outside, Err(Error::InvalidArgument(m)) if m.contains("block 7 outside a cache of 4")),
        "{outside:?}"
    );
    let long = run(&b, h, &[&s], &[vec![0, 1, 2]], bs, 4, 8);
    assert!(
        matches!(long, Err(Error::ContextOverflow { needed: 9, max: 8 })),
        "{long:?}"
    );
}

#[test]
fn paged_weighted_rows_equal_contiguous_on_every_isa() {
    let mut rng = Rng::new(63);
    let mut isas = vec![Isa::Portable];
    if dense::has_avx2() {
        isas.push(Isa::Avx2);
    }
    for isa in isas {
        for (keys, d, bs) in [
            (1, 64, 1),
            (13, 64, 4),
            (37, 72, 5),
            (9, 5, 2),
            (16, 130, 16),
        ] {
            let ldv = d + 3;
            let p = randn(&mut rng, keys, 1.0);
            let v = randn(&mut rng, keys * ldv, 1.0);
            let mut want = vec![f32::NAN; d];
            attention::weighted_rows(isa, &mut want, &p, &v, ldv);
            // scatter the rows into shuffled blocks of a bigger pool
            let n_blocks = keys.div_ceil(bs) + 2;
            let table = shuffled(&mut rng, n_blocks);
            let mut pool = vec![f32::NAN; n_blocks * bs * ldv];
            for j in 0..keys {
                let slot = table[j / bs] as usize * bs + j % bs;
                pool[slot * ldv..slot * ldv + d].copy_from_slice(&v[j * ldv..j * ldv + d]);
            }
            let mut got = vec![f32::NAN; d];
            attention::weighted_rows_paged(isa, &mut got, &p, &pool, ldv, &table, bs);
            assert_eq!(got, want, "{isa:?} keys {keys} d {d} block {bs}");
        }
    }
}

#[test]
fn multi_row_weighted_rows_equal_the_avx2_rows_bit_for_bit() {
    if !(ferroq::backend::cpu::vmath::avx512() && dense::has_avx2()) {
        eprintln!("no AVX-512 on this CPU: the multi-row P·V is not exercised");
        return;
    }
    let mut rng = Rng::new(64);
    // rows of different key counts (causal rows, and a first row longer than the rest),
    // widths of one and several 64-column chunks and a 16-column tail, paged blocks
    for (lens, d, bs) in [
        (vec![5usize, 6, 7, 8], 64, 4),
        (vec![1, 2, 3], 16, 1),
        (vec![40, 41], 80, 16),
        (vec![30, 9, 17, 30], 128, 8),
        (vec![3], 48, 2),
    ] {
        let keys = *lens.iter().max().expect("rows");
        let ldv = d + 16;
        let n_blocks = keys.div_ceil(bs) + 2;
        let table = shuffled(&mut rng, n_blocks);
        let pool = randn(&mut rng, n_blocks * bs * ldv, 1.0);
        let ps: Vec<Vec<f32>> = lens.iter().map(|&l| randn(&mut rng, l, 1.0)).collect();
        let mut got: Vec<Vec<f32>> = lens.iter().map(|_| vec![f32::NAN; d]).collect();
        {
            let mut os: Vec<&mut [f32]> = got.iter_mut().map(|o| &mut o[..]).collect();
            let pr: Vec<&[f32]> = ps.iter().map(|p| &p[..]).collect();
            attention::weighted_rows_multi(&mut os, &pr, &pool, ldv, &table, bs);
        }
        for (i, p) in ps.iter().enumerate() {
            let mut want = vec![f32::NAN; d];
            attention::weighted_rows_paged(Isa::Avx2, &mut want, p, &pool, ldv, &table, bs);
            let same = got[i]
                .iter()
                .zip(&want)
                .all(|(a, b)| a.to_bits() == b.to_bits());
            assert!(same, "rows {lens:?} d {d} block {bs}: row {i} differs");
        }
    }
}

/// A replayed decode step's attention covers its longest sequence rounded up to a power of two
/// of at least 256 positions, never past the workspace's context.
#[test]
fn replay_spans_double_from_256_within_the_context() {
    use ferroq::backend::fused::replay_span;
    for (end, max_seq, want) in [
        (1, 8192, 256),
        (256, 8192, 256),
        (257, 8192, 512),
        (5000, 131072, 8192),
        (300, 384, 384),
        (10, 48, 48),
        (usize::MAX - 1, usize::MAX, usize::MAX),
    ] {
        assert_eq!(
            replay_span(end, max_seq),
            want,
            "end {end}, max_seq {max_seq}"
        );
    }
}
