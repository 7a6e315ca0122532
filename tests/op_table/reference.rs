//! The f64 references of the op table and the two cases that take the most building: a
//! linear of each weight kind and paged attention.

use super::{read, Outcome, W};
use crate::common::randn;
use ferroq::backend::linear::{Linear, LinearWeight};
use ferroq::backend::prelude::*;
use ferroq::backend::{AttentionArgs, KvSeq};
use ferroq::engine::sampler::Rng;
use ferroq::quant::weight::{quantize_weight, WeightMethod, WeightQConfig, WeightScope};
use ferroq::quant::{fp8_table, quantize_rows_fp8, quantize_rows_i8};
use ferroq::quant::{ActQuant, ActSpec, QDType, QuantWeight};
use ferroq::tensor::{DType, HostTensor};
use std::sync::Arc;

/// Σ over k, in f64, of a (m, k) by (n, k) product, with each element's Σ|products|.
pub fn reference_matmul(x: &[f64], w: &[f64], m: usize, n: usize, k: usize) -> (Vec<f64>, f64) {
    let (mut out, mut scale) = (vec![0.0; m * n], 0f64);
    for i in 0..m {
        for j in 0..n {
            let (xr, wr) = (&x[i * k..(i + 1) * k], &w[j * k..(j + 1) * k]);
            out[i * n + j] = xr.iter().zip(wr).map(|(a, b)| a * b).sum();
            scale = scale.max(xr.iter().zip(wr).map(|(a, b)| (a * b).abs()).sum());
        }
    }
    (out, scale)
}

pub fn to64(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

pub fn max_abs64(v: &[f64]) -> f64 {
    v.iter().fold(0f64, |a, x| a.max(x.abs()))
}

/// The linear of a case and its f64 reference output.
pub fn linear_case<B: Backend>(
    b: &B,
    rng: &mut Rng,
    w: W,
    (m, n, k): (usize, usize, usize),
    bias: bool,
    bf16_acts: bool,
) -> (Linear<B>, Vec<f32>, Vec<f64>, f64) {
    let wf = randn(rng, n * k, 0.5);
    let x = randn(rng, m * k, 2.0);
    let bias_v = bias.then(|| randn(rng, n, 1.0));
    let q = |dtype, scope| {
        let cfg = WeightQConfig {
            dtype,
            scope,
            symmetric: true,
            method: WeightMethod::MinMax,
        };
        quantize_weight(&wf, n, k, &cfg).expect("quantize")
    };
    let decoded = |qw: &QuantWeight| {
        let mut d = vec![0f32; n * k];
        qw.decode_rows(k, 0, n, &mut d);
        to64(&d)
    };
    let (weight, act, xr, wr, row_scale): (_, _, Vec<f64>, Vec<f64>, Vec<f64>) = match w {
        W::F32 | W::F16 | W::Bf16 => {
            let dtype = match w {
                W::F32 => DType::F32,
                W::F16 => DType::F16,
                _ => DType::BF16,
            };
            let t = HostTensor::from_f32(vec![n, k], wf.clone())
                .expect("tensor")
                .to_dtype(dtype);
            let wr = to64(&t.to_f32_vec());
            let m_ = b.upload_matrix(&t, dtype).expect("upload");
            let mut xr = x.clone();
            if bf16_acts {
                ferroq::backend::cpu::int4::bf16::round_through_bf16(&x, &mut xr);
            }
            (
                LinearWeight::Dense(Arc::new(m_)),
                ActSpec::NONE,
                to64(&xr),
                wr,
                vec![1.0; m],
            )
        }
        W::Int8 { symmetric, fixed } => {
            let qw = q(QDType::Int8, WeightScope::PerChannel);
            let policy = if fixed {
                let (s, z) = ferroq::quant::int8_params(-2.0, 2.0, symmetric);
                ActQuant::Static { scale: s, zp: z }
            } else {
                ActQuant::Dynamic
            };
            let fx = match policy {
                ActQuant::Static { scale, zp } => Some((scale, zp)),
                _ => None,
            };
            let (mut qa, mut sa, mut za) = (vec![0i8; m * k], vec![0f32; m], vec![0i32; m]);
            quantize_rows_i8(&x, m, k, symmetric, fx, &mut qa, &mut sa, &mut za);
            // the dequantized activations: (q − zp) · s, exactly representable in f64
            let xr = (0..m * k)
                .map(|i| (qa[i] as f64 - za[i / k] as f64) * sa[i / k] as f64)
                .collect();
            let act = ActSpec {
                policy,
                dtype: QDType::Int8,
                symmetric,
            };
            let wr = decoded(&qw);
            let m_ = b.upload_quant(&qw, n, k).expect("upload");
            (LinearWeight::Quant(m_), act, xr, wr, vec![1.0; m])
        }
        W::Fp8 => {
            let qw = q(QDType::Fp8E4M3, WeightScope::PerChannel);
            let (mut xq, mut sa) = (vec![0f32; m * k], vec![0f32; m]);
            quantize_rows_fp8(&x, m, k, None, &mut xq, &mut sa);
            let QuantWeight::Fp8 { codes, scale } = &qw else {
                panic!("fp8 weight expected")
            };
            let lut = fp8_table();
            let wr = (0..n * k)
                .map(|i| lut[codes[i] as usize] as f64 * scale[i / k] as f64)
                .collect();
            let act = ActSpec {
                policy: ActQuant::Dynamic,
                dtype: QDType::Fp8E4M3,
                symmetric: true,
            };
            let m_ = b.upload_quant(&qw, n, k).expect("upload");
            (LinearWeight::Quant(m_), act, to64(&xq), wr, to64(&sa))
        }
        W::Int4 { group } => {
            let qw = q(QDType::Int4, WeightScope::PerGroup(group));
            let mut xb = vec![0f32; m * k];
            ferroq::backend::cpu::int4::bf16::round_through_bf16(&x, &mut xb);
            let wr = decoded(&qw);
            let m_ = b.upload_quant(&qw, n, k).expect("upload");
            (
                LinearWeight::Quant(m_),
                ActSpec::NONE,
                to64(&xb),
                wr,
                vec![1.0; m],
            )
        }
    };
    let (mut want, scale) = reference_matmul(&xr, &wr, m, n, k);
    for i in 0..m {
        for j in 0..n {
            let o = &mut want[i * n + j];
            *o = *o * row_scale[i] + bias_v.as_ref().map_or(0.0, |bv| bv[j] as f64);
        }
    }
    let scale = scale * row_scale.iter().fold(1f64, |a, s| a.max(*s));
    let lin = Linear {
        name: format!("case.{w:?}"),
        in_features: k,
        out_features: n,
        weight,
        bias: bias_v.map(|v| b.upload(&v).expect("upload")),
        act,
    };
    (lin, x, want, scale)
}

pub fn rms_ref(x: &[f32], w: &[f32], rows: usize, dim: usize) -> Vec<f64> {
    let mut out = vec![0.0; rows * dim];
    for r in 0..rows {
        let row = &x[r * dim..(r + 1) * dim];
        let ms = row.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / dim as f64;
        let inv = 1.0 / (ms + 1e-5).sqrt();
        for i in 0..dim {
            out[r * dim + i] = row[i] as f64 * inv * w[i] as f64;
        }
    }
    out
}

pub fn attention_case<B: Backend>(
    b: &B,
    rng: &mut Rng,
    (heads, kv, hd): (usize, usize, usize),
    past: usize,
    rows: usize,
    bs: usize,
    gemma: Option<(f64, f64)>,
) -> Outcome {
    let (qd, kvd, total) = (heads * hd, kv * hd, past + rows);
    let n_blocks = total.div_ceil(bs) + 2;
    // a shuffled block table: logical block i lives in physical block table[i]
    let table: Vec<u32> = (0..total.div_ceil(bs))
        .map(|i| ((i * 3 + 1) % n_blocks) as u32)
        .collect();
    let q = randn(rng, rows * qd, 1.0);
    let (kc, vc) = (
        randn(rng, n_blocks * bs * kvd, 1.0),
        randn(rng, n_blocks * bs * kvd, 1.0),
    );
    let slot = |p: usize| table[p / bs] as usize * bs + p % bs;
    // (score scale, soft cap): Gemma 2's, or the usual 1/√hd uncapped
    let (scale, cap) = match gemma {
        Some((s, c)) => (s, Some(c)),
        None => (1.0 / (hd as f64).sqrt(), None),
    };
    let mut want = vec![0f64; rows * qd];
    for r in 0..rows {
        let keys = past + r + 1;
        for h in 0..heads {
            let g = h / (heads / kv);
            let qh = &q[r * qd + h * hd..r * qd + (h + 1) * hd];
            let s: Vec<f64> = (0..keys)
                .map(|p| {
                    let kr = &kc[slot(p) * kvd + g * hd..slot(p) * kvd + (g + 1) * hd];
                    qh.iter()
                        .zip(kr)
                        .map(|(a, c)| *a as f64 * *c as f64)
                        .sum::<f64>()
                        * scale
                })
                .map(|v| cap.map_or(v, |c| (v / c).tanh() * c))
                .collect();
            let mx = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let e: Vec<f64> = s.iter().map(|v| (v - mx).exp()).collect();
            let z: f64 = e.iter().sum();
            for d in 0..hd {
                want[r * qd + h * hd + d] = (0..keys)
                    .map(|p| e[p] / z * vc[slot(p) * kvd + g * hd + d] as f64)
                    .sum();
            }
        }
    }
    let (qb, kb, vb) = (
        b.upload(&q).expect("up"),
        b.upload_kv(&kc).expect("up"),
        b.upload_kv(&vc).expect("up"),
    );
    let mut out = b.alloc(rows * qd).expect("alloc");
    let max_seq = total.div_ceil(bs) * bs;
    let mut scratch = b
        .alloc(heads * ferroq::backend::ATTN_ROWS * max_seq)
        .expect("alloc");
    let seqs = [KvSeq {
        row0: 0,
        rows,
        start_pos: past,
        blocks: &table,
    }];
    b.attention(AttentionArgs {
        out: &mut out,
        q: &qb,
        k_cache: &kb,
        v_cache: &vb,
        scratch: &mut scratch,
        seqs: &seqs,
        block_size: bs,
        max_seq,
        n_heads: heads,
        n_kv_heads: kv,
        head_dim: hd,
        window: None,
        scale: scale as f32,
        softcap: cap.map(|c| c as f32),
    })
    .expect("attention");
    let rel = 64.0 * f32::EPSILON as f64 * (hd as f64).sqrt();
    Outcome {
        got: read(b, &out, rows * qd),
        want,
        scale: 1.0,
        rel,
    }
}
