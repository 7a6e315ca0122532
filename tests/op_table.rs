//! One table of op cases for every backend. Each case (an op and its shapes: sizes of 1, odd
//! sizes and sizes that are no tile's multiple) is run through the `Backend` trait and checked
//! against an f64 reference computed here, with a tolerance scaled to the values (a fraction
//! of the largest Σ|products| of a reduction, or of the largest output):
//! - on every CPU kernel configuration this machine has (`CpuIsa::all_available`: AVX-512
//!   panels / VNNI / BF16, AVX2, portable);
//! - on CUDA against the CPU's result with the device's own tolerance (bf16 weights and KV
//!   cache), `#[ignore]`d without a GPU.

mod common;
#[path = "op_table/reference.rs"]
mod reference;

use common::{assert_close, randn};
use ferroq::backend::cpu::{CpuBackend, CpuIsa, DenseIsa};
use ferroq::backend::prelude::*;
use ferroq::backend::KvSeq;
use ferroq::engine::sampler::Rng;
use ferroq::quant::Phase;
use ferroq::tensor::{DType, HostTensor};
use reference::{attention_case, linear_case, max_abs64, rms_ref, to64};

/// A linear's weight kind.
#[derive(Clone, Copy, Debug)]
enum W {
    F32,
    F16,
    Bf16,
    /// int8 per-channel weights; activations per token (dynamic) or static, sym or asym
    Int8 {
        symmetric: bool,
        fixed: bool,
    },
    Fp8,
    /// int4 symmetric groups of this size
    Int4 {
        group: usize,
    },
}

#[derive(Clone, Copy, Debug)]
enum Op {
    RmsNorm {
        rows: usize,
        dim: usize,
    },
    AddRmsNorm {
        rows: usize,
        dim: usize,
    },
    Linear {
        w: W,
        m: usize,
        n: usize,
        k: usize,
        bias: bool,
    },
    SiluMul {
        len: usize,
    },
    GeluMul {
        len: usize,
    },
    /// x · 1.7
    Scale {
        len: usize,
    },
    /// 3 · tanh(x / 3)
    Softcap {
        len: usize,
    },
    AddAssign {
        len: usize,
    },
    Embed {
        vocab: usize,
        dim: usize,
        dtype: DType,
    },
    /// `rows` keys of width `kv_dim` written at positions start.. through a block table
    WriteKv {
        rows: usize,
        kv_dim: usize,
        start: usize,
        bs: usize,
    },
    /// dst[dst_off ..][..len] = src[src_off ..][..len]
    Copy {
        len: usize,
        src_off: usize,
        dst_off: usize,
    },
    Rope {
        rows: usize,
        heads: usize,
        hd: usize,
        start: usize,
    },
    Hadamard {
        rows: usize,
        dim: usize,
        block: usize,
    },
    /// one sequence: `past` cached positions, then `rows` new queries, blocks of `bs`
    Attention {
        heads: usize,
        kv: usize,
        hd: usize,
        past: usize,
        rows: usize,
        bs: usize,
        /// Gemma 2's scores: scaled by 0.2 instead of 1/√hd, soft-capped at 1.5
        capped: bool,
    },
    Argmax {
        rows: usize,
        vocab: usize,
    },
}

// short constructors keep the table one case per line
const fn norm(rows: usize, dim: usize) -> Op {
    Op::RmsNorm { rows, dim }
}
const fn lin(w: W, m: usize, n: usize, k: usize, bias: bool) -> Op {
    Op::Linear { w, m, n, k, bias }
}
const fn w8(symmetric: bool, fixed: bool) -> W {
    W::Int8 { symmetric, fixed }
}
const fn w4(group: usize) -> W {
    W::Int4 { group }
}
const fn rope(rows: usize, heads: usize, hd: usize, start: usize) -> Op {
    Op::Rope {
        rows,
        heads,
        hd,
        start,
    }
}
const fn attn(heads: usize, kv: usize, hd: usize, past: usize, rows: usize, bs: usize) -> Op {
    Op::Attention {
        heads,
        kv,
        hd,
        past,
        rows,
        bs,
        capped: false,
    }
}
const fn embed(vocab: usize, dim: usize, dtype: DType) -> Op {
    Op::Embed { vocab, dim, dtype }
}
const fn copy(len: usize, src_off: usize, dst_off: usize) -> Op {
    Op::Copy {
        len,
        src_off,
        dst_off,
    }
}

const CASES: &[Op] = &[
    norm(1, 1),
    norm(1, 576),
    norm(3, 33),
    norm(7, 1000),
    Op::AddRmsNorm { rows: 2, dim: 65 },
    lin(W::F32, 1, 1, 1, false),
    lin(W::F32, 6, 29, 70, true),
    lin(W::F16, 1, 17, 33, false),
    lin(W::F16, 13, 40, 129, false),
    lin(W::Bf16, 1, 9, 16, false),
    lin(W::Bf16, 5, 33, 100, true),
    lin(W::Bf16, 20, 40, 96, true),
    lin(w8(true, false), 1, 1, 1, false),
    lin(w8(true, false), 1, 17, 33, true),
    lin(w8(false, false), 9, 31, 70, false),
    lin(w8(false, true), 3, 20, 64, false),
    lin(w8(true, false), 33, 40, 128, false),
    lin(W::Fp8, 1, 7, 19, false),
    lin(W::Fp8, 4, 21, 96, true),
    lin(w4(32), 1, 7, 64, false),
    lin(w4(32), 5, 13, 96, true),
    lin(w4(32), 3, 9, 50, false),
    lin(w4(128), 2, 16, 256, false),
    lin(w4(128), 20, 40, 384, true),
    Op::SiluMul { len: 1 },
    Op::SiluMul { len: 17 },
    Op::SiluMul { len: 1000 },
    Op::GeluMul { len: 1 },
    Op::GeluMul { len: 1000 },
    Op::Scale { len: 37 },
    Op::Softcap { len: 1000 },
    Op::AddAssign { len: 1 },
    Op::AddAssign { len: 33 },
    embed(11, 7, DType::F32),
    embed(5, 3, DType::F16),
    embed(64, 33, DType::BF16),
    copy(1, 0, 0),
    Op::WriteKv {
        rows: 1,
        kv_dim: 8,
        start: 0,
        bs: 4,
    },
    Op::WriteKv {
        rows: 7,
        kv_dim: 24,
        start: 3,
        bs: 4,
    },
    copy(37, 3, 5),
    rope(1, 3, 64, 0),
    rope(3, 2, 8, 5),
    Op::Hadamard {
        rows: 3,
        dim: 64,
        block: 8,
    },
    Op::Hadamard {
        rows: 1,
        dim: 96,
        block: 32,
    },
    attn(1, 1, 8, 0, 1, 4),
    attn(4, 2, 16, 5, 3, 4),
    attn(6, 2, 64, 0, 9, 16),
    Op::Attention {
        heads: 4,
        kv: 2,
        hd: 64,
        past: 40,
        rows: 1,
        bs: 16,
        capped: true,
    },
    Op::Attention {
        heads: 4,
        kv: 2,
        hd: 128,
        past: 0,
        rows: 80,
        bs: 16,
        capped: true,
    },
    Op::Argmax { rows: 3, vocab: 50 },
    // zero rows (an empty prefill chunk, a batch with nothing to decode): a no-op everywhere,
    // where a zero-sized CUDA grid would be a launch error
    norm(0, 33),
    Op::AddRmsNorm { rows: 0, dim: 65 },
    lin(W::Bf16, 0, 9, 16, false),
    lin(w8(true, false), 0, 17, 33, true),
    lin(W::Fp8, 0, 7, 19, false),
    lin(w4(32), 0, 7, 64, false),
    rope(0, 2, 8, 5),
    Op::Hadamard {
        rows: 0,
        dim: 64,
        block: 8,
    },
];

/// What a case produced, and the reference it is held to.
struct Outcome {
    got: Vec<f32>,
    want: Vec<f64>,
    /// the value scale the tolerance multiplies: max Σ|products| of a reduction, or max |want|
    scale: f64,
    /// the fraction of `scale` this op may be off by on the CPU
    rel: f64,
}

fn read<B: Backend>(b: &B, buf: &B::Buf, len: usize) -> Vec<f32> {
    let mut out = vec![0f32; len];
    b.read(buf, 0, &mut out).expect("read");
    out
}

/// Run one case on `b`; `bf16_tiles`: the backend runs BF16 weights' prefill batches on the AMX
/// tiles, which round the activations to BF16 (`dense::amx::takes` says which shapes).
fn run<B: Backend>(b: &B, op: Op, seed: u64, bf16_tiles: bool) -> Outcome {
    let mut rng = Rng::new(seed);
    let f32eps = f32::EPSILON as f64;
    match op {
        Op::RmsNorm { rows, dim } | Op::AddRmsNorm { rows, dim } => {
            let (x, add, w) = (
                randn(&mut rng, rows * dim, 3.0),
                randn(&mut rng, rows * dim, 1.0),
                randn(&mut rng, dim, 1.0),
            );
            let (xb, wb) = (b.upload(&x).expect("up"), b.upload(&w).expect("up"));
            let mut out = b.alloc(rows * dim).expect("alloc");
            let want = if let Op::AddRmsNorm { .. } = op {
                let mut res = xb;
                let ab = b.upload(&add).expect("up");
                b.add_rms_norm(&mut out, &mut res, Some(&ab), &wb, rows, dim, 1e-5)
                    .expect("add_rms_norm");
                let sum: Vec<f32> = x.iter().zip(&add).map(|(a, c)| a + c).collect();
                rms_ref(&sum, &w, rows, dim)
            } else {
                b.rms_norm(&mut out, &xb, &wb, rows, dim, 1e-5)
                    .expect("rms_norm");
                rms_ref(&x, &w, rows, dim)
            };
            let scale = max_abs64(&want);
            Outcome {
                got: read(b, &out, rows * dim),
                want,
                scale,
                rel: 16.0 * f32eps,
            }
        }
        Op::Linear { w, m, n, k, bias } => {
            // (the table runs every linear as prefill)
            let bf16_acts =
                bf16_tiles && matches!(w, W::Bf16) && ferroq::backend::cpu::dense::amx::takes(k);
            let (lin, x, want, scale) = linear_case(b, &mut rng, w, (m, n, k), bias, bf16_acts);
            let xb = b.upload(&x).expect("up");
            let mut out = b.alloc(m * n).expect("alloc");
            b.linear(&mut out, &xb, &lin, m, Phase::Prefill)
                .expect("linear");
            // f32 sums over k terms, in blocks: a few units of k·eps of Σ|products| at most
            let rel = 4.0 * (k as f64).sqrt().max(4.0) * f32eps;
            Outcome {
                got: read(b, &out, m * n),
                want,
                scale,
                rel,
            }
        }
        Op::SiluMul { len } => {
            let (g, u) = (randn(&mut rng, len, 8.0), randn(&mut rng, len, 2.0));
            let (mut gb, ub) = (b.upload(&g).expect("up"), b.upload(&u).expect("up"));
            b.silu_mul(&mut gb, &ub, len).expect("silu_mul");
            let want: Vec<f64> = g
                .iter()
                .zip(&u)
                .map(|(&g, &u)| {
                    let g = g as f64;
                    g / (1.0 + (-g).exp()) * u as f64
                })
                .collect();
            let scale = max_abs64(&want);
            Outcome {
                got: read(b, &gb, len),
                want,
                scale,
                rel: 8.0 * f32eps,
            }
        }
        Op::GeluMul { len } => {
            let (g, u) = (randn(&mut rng, len, 4.0), randn(&mut rng, len, 2.0));
            let (mut gb, ub) = (b.upload(&g).expect("up"), b.upload(&u).expect("up"));
            b.gelu_mul(&mut gb, &ub, len).expect("gelu_mul");
            let k = (2.0 / std::f64::consts::PI).sqrt();
            let want: Vec<f64> = g
                .iter()
                .zip(&u)
                .map(|(&g, &u)| {
                    let g = g as f64;
                    0.5 * g * (1.0 + (k * (g + 0.044715 * g.powi(3))).tanh()) * u as f64
                })
                .collect();
            let scale = max_abs64(&want);
            Outcome {
                got: read(b, &gb, len),
                want,
                scale,
                rel: 8.0 * f32eps,
            }
        }
        Op::Scale { len } | Op::Softcap { len } => {
            let x = randn(&mut rng, len, 6.0);
            let mut xb = b.upload(&x).expect("up");
            let want: Vec<f64> = if matches!(op, Op::Scale { .. }) {
                b.scale(&mut xb, len, 1.7).expect("scale");
                x.iter().map(|&v| v as f64 * 1.7f32 as f64).collect()
            } else {
                b.softcap(&mut xb, len, 3.0).expect("softcap");
                x.iter().map(|&v| (v as f64 / 3.0).tanh() * 3.0).collect()
            };
            let scale = max_abs64(&want);
            Outcome {
                got: read(b, &xb, len),
                want,
                scale,
                rel: 4.0 * f32eps,
            }
        }
        Op::AddAssign { len } => {
            let (x, y) = (randn(&mut rng, len, 1.0), randn(&mut rng, len, 1.0));
            let (mut xb, yb) = (b.upload(&x).expect("up"), b.upload(&y).expect("up"));
            b.add_assign(&mut xb, &yb, len).expect("add");
            let want: Vec<f64> = x.iter().zip(&y).map(|(a, c)| (a + c) as f64).collect();
            Outcome {
                got: read(b, &xb, len),
                want,
                scale: 1.0,
                rel: 0.0,
            }
        }
        Op::Embed { vocab, dim, dtype } => {
            let t = HostTensor::from_f32(vec![vocab, dim], randn(&mut rng, vocab * dim, 1.0))
                .expect("tensor")
                .to_dtype(dtype);
            let table = t.to_f32_vec();
            let tb = b.upload_matrix(&t, dtype).expect("upload");
            let ids = [0u32, (vocab - 1) as u32, 3];
            let mut out = b.alloc(ids.len() * dim).expect("alloc");
            b.embed(&mut out, &tb, &ids).expect("embed");
            let want: Vec<f64> = ids
                .iter()
                .flat_map(|&i| to64(&table[i as usize * dim..(i as usize + 1) * dim]))
                .collect();
            // a device may hold the table in bf16
            Outcome {
                got: read(b, &out, ids.len() * dim),
                want,
                scale: 1.0,
                rel: 0.0,
            }
        }
        Op::WriteKv {
            rows,
            kv_dim,
            start,
            bs,
        } => {
            let n_blocks = (start + rows).div_ceil(bs) + 1;
            // logical block i in physical block n_blocks − 1 − i
            let table: Vec<u32> = (0..n_blocks - 1)
                .map(|i| (n_blocks - 1 - i) as u32)
                .collect();
            let pool = randn(&mut rng, n_blocks * bs * kv_dim, 1.0);
            let src = randn(&mut rng, rows * kv_dim, 1.0);
            let (mut cb, sb) = (b.upload_kv(&pool).expect("up"), b.upload(&src).expect("up"));
            let seqs = [KvSeq {
                row0: 0,
                rows,
                start_pos: start,
                blocks: &table,
            }];
            b.write_kv(&mut cb, &sb, &seqs, bs, kv_dim)
                .expect("write_kv");
            let mut want = to64(&pool);
            for r in 0..rows {
                let slot = seqs[0].slot(start + r, bs);
                for d in 0..kv_dim {
                    want[slot * kv_dim + d] = src[r * kv_dim + d] as f64;
                }
            }
            // an f32 pool (the CPU's) reads back as values; a bf16 one (CUDA's) is skipped there
            let got = read(b, &cb, pool.len());
            Outcome {
                got,
                want,
                scale: 1.0,
                rel: 0.0,
            }
        }
        Op::Copy {
            len,
            src_off,
            dst_off,
        } => {
            let src = randn(&mut rng, src_off + len, 1.0);
            let dst = randn(&mut rng, dst_off + len + 2, 1.0);
            let (sb, mut db) = (b.upload(&src).expect("up"), b.upload(&dst).expect("up"));
            b.copy(&mut db, dst_off, &sb, src_off, len).expect("copy");
            let mut want = to64(&dst);
            for i in 0..len {
                want[dst_off + i] = src[src_off + i] as f64;
            }
            Outcome {
                got: read(b, &db, dst.len()),
                want,
                scale: 1.0,
                rel: 0.0,
            }
        }
        Op::Rope {
            rows,
            heads,
            hd,
            start,
        } => {
            let half = hd / 2;
            let x = randn(&mut rng, rows * heads * hd, 1.0);
            let positions = start + rows;
            let (mut cos, mut sin) = (vec![0f32; positions * half], vec![0f32; positions * half]);
            for p in 0..positions {
                for i in 0..half {
                    let a = p as f64 / 10000f64.powf(2.0 * i as f64 / hd as f64);
                    cos[p * half + i] = a.cos() as f32;
                    sin[p * half + i] = a.sin() as f32;
                }
            }
            let mut xb = b.upload(&x).expect("up");
            let (cb, sb) = (b.upload(&cos).expect("up"), b.upload(&sin).expect("up"));
            // two sequences in one batch when there are rows for both: row 0 at position 1,
            // the others from `start`
            let blocks = [0u32];
            let (first, rest) = if rows > 1 { (1, rows - 1) } else { (0, rows) };
            let seq = |row0, rows, start_pos| KvSeq {
                row0,
                rows,
                start_pos,
                blocks: &blocks,
            };
            let seqs = [seq(0, first, 1), seq(first, rest, start)];
            b.rope(&mut xb, &cb, &sb, &seqs, heads, hd).expect("rope");
            let mut want = to64(&x);
            for r in 0..rows {
                let p = if r < first { 1 } else { start + r - first };
                for h in 0..heads {
                    let o = (r * heads + h) * hd;
                    for i in 0..half {
                        let (c, s) = (cos[p * half + i] as f64, sin[p * half + i] as f64);
                        let (x0, x1) = (x[o + i] as f64, x[o + half + i] as f64);
                        want[o + i] = x0 * c - x1 * s;
                        want[o + half + i] = x1 * c + x0 * s;
                    }
                }
            }
            Outcome {
                got: read(b, &xb, x.len()),
                want,
                scale: 1.0,
                rel: 4.0 * f32eps,
            }
        }
        Op::Hadamard { rows, dim, block } => {
            let x = randn(&mut rng, rows * dim, 1.0);
            let mut xb = b.upload(&x).expect("up");
            b.hadamard(&mut xb, rows * dim, block).expect("hadamard");
            // explicit Sylvester matrix: H[i][j] = (−1)^popcount(i & j) / √block
            let norm = 1.0 / (block as f64).sqrt();
            let mut want = vec![0.0; rows * dim];
            for (blk, out) in x.chunks(block).zip(want.chunks_mut(block)) {
                for (i, o) in out.iter_mut().enumerate() {
                    *o = (0..block)
                        .map(|j| {
                            let sign = if (i & j).count_ones() % 2 == 0 {
                                1.0
                            } else {
                                -1.0
                            };
                            sign * blk[j] as f64
                        })
                        .sum::<f64>()
                        * norm;
                }
            }
            let scale = x.iter().map(|v| v.abs() as f64).sum::<f64>() * norm;
            let rel = 4.0 * (block as f64).log2() * f32eps;
            Outcome {
                got: read(b, &xb, x.len()),
                want,
                scale,
                rel,
            }
        }
        Op::Attention {
            heads,
            kv,
            hd,
            past,
            rows,
            bs,
            capped,
        } => {
            let gemma = capped.then_some((0.2, 1.5));
            attention_case(b, &mut rng, (heads, kv, hd), past, rows, bs, gemma)
        }
        Op::Argmax { rows, vocab } => {
            let mut logits = randn(&mut rng, rows * vocab, 4.0);
            // a tie at the maximum of row 1: the first index wins
            logits[vocab + 7] = 100.0;
            logits[vocab + 9] = 100.0;
            let lb = b.upload(&logits).expect("up");
            let mut ids = vec![0u32; rows];
            b.argmax_rows(&lb, vocab, &mut ids).expect("argmax");
            let want: Vec<f64> = logits
                .chunks(vocab)
                .map(|r| ferroq::backend::sampling::argmax(r) as f64)
                .collect();
            assert_eq!(want[1], 7.0, "the reference picks the first of a tie");
            let got = ids.iter().map(|&i| i as f32).collect();
            Outcome {
                got,
                want,
                scale: 1.0,
                rel: 0.0,
            }
        }
    }
}

fn name(op: &Op) -> String {
    format!("{op:?}")
}

#[test]
fn every_op_matches_the_f64_reference_on_every_cpu_path() {
    let configs = CpuIsa::all_available();
    assert!(!configs.is_empty());
    for isa in configs {
        let b = CpuBackend::with_isa(isa);
        for (i, op) in CASES.iter().enumerate() {
            let o = run(&b, *op, 1000 + i as u64, isa.dense == DenseIsa::Amx);
            let atol = o.rel * o.scale;
            assert_close(&format!("{isa:?} {}", name(op)), &o.got, &o.want, 0.0, atol);
        }
    }
}

/// The same table on the GPU, held to the CPU's result: bf16 weights and activations in the
/// dense GEMMs and a bf16 KV cache allow 2⁻⁷ of the value scale; the quantized linears and the
/// elementwise ops are computed as the CPU computes them.
#[test]
#[ignore = "needs a CUDA GPU"]
fn every_op_on_cuda_matches_the_cpu() {
    let gpu = ferroq::backend::cuda::backend::CudaBackend::new(0).expect("a CUDA device");
    let cpu = CpuBackend::new();
    for (i, op) in CASES.iter().enumerate() {
        let (c, g) = (
            run(&cpu, *op, 1000 + i as u64, false),
            run(&gpu, *op, 1000 + i as u64, false),
        );
        let rel = match op {
            Op::Linear {
                w: W::F32 | W::F16 | W::Bf16,
                ..
            }
            | Op::Attention { .. }
            | Op::Embed { .. } => 1.0 / 128.0,
            Op::Linear { .. } => 1e-4,
            _ => 1e-5,
        };
        assert_close(
            &format!("cuda {}", name(op)),
            &g.got,
            &to64(&c.got),
            0.0,
            rel * c.scale.max(1e-30),
        );
    }
}

/// Bad shapes and ids are named errors on the CPU, never a panic or a silent result.
#[test]
fn ops_refuse_what_does_not_fit() {
    let b = CpuBackend::new();
    let mut rng = Rng::new(9);
    let (lin, x, _, _) = linear_case(&b, &mut rng, W::F32, (5, 11, 19), true, false);
    let mut out = vec![0.0; 5 * 11];
    assert!(b
        .linear(&mut out, &x[..19].to_vec(), &lin, 5, Phase::Prefill)
        .is_err());
    let (cos, sin) = (vec![1f32; 16 * 4], vec![0f32; 16 * 4]);
    let mut q = randn(&mut rng, 3 * 2 * 8, 1.0);
    let late = [KvSeq {
        row0: 0,
        rows: 3,
        start_pos: 14,
        blocks: &[],
    }];
    assert!(
        b.rope(&mut q, &cos, &sin, &late, 2, 8).is_err(),
        "positions past the table are an error"
    );
    let t = HostTensor::from_f32(vec![5, 3], randn(&mut rng, 15, 1.0)).expect("tensor");
    let m = b.upload_matrix(&t, DType::F32).expect("upload");
    let mut e = vec![0.0; 3];
    assert!(matches!(
        b.embed(&mut e, &m, &[5]),
        Err(ferroq::Error::TokenOutOfRange { id: 5, vocab: 5 })
    ));
    let (mut d, s) = (vec![0f32; 4], vec![1f32; 3]);
    assert!(b.copy(&mut d, 3, &s, 0, 2).is_err());
}
