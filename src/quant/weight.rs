//! Weight quantizers: minmax and msModelSlim's ssz (reference/quantization.md §5).
//!
//! - minmax: absmax or min / max per channel, group or tensor.
//! - ssz: from minmax, alternately re-quantize and solve the least-squares scale (and offset when
//!   asymmetric) with q fixed, keeping an update only when the MSE improves; at most 20
//!   iterations, stop below 1e-10 improvement, scale at least 1e-5.

use super::formats::{self, round_even, Fp8};
use super::{QDType, QuantWeight};
use crate::error::{Error, Result};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WeightMethod {
    MinMax,
    Ssz,
    /// GPTQ error compensation (int4; `gptq.rs`) over minmax group scales.
    Gptq,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WeightScope {
    PerTensor,
    PerChannel,
    PerGroup(usize),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WeightQConfig {
    pub dtype: QDType,
    pub scope: WeightScope,
    pub symmetric: bool,
    pub method: WeightMethod,
}

const SSZ_ITERS: usize = 20;
const SSZ_EPS: f64 = 1e-10;
const MIN_SCALE: f32 = 1e-5;

/// Integer grid of a dtype: (qmin, qmax) for symmetric / asymmetric use.
fn grid(dtype: QDType, symmetric: bool) -> (f32, f32) {
    match (dtype, symmetric) {
        (QDType::Int8, true) => (-127.0, 127.0),
        (QDType::Int8, false) => (-128.0, 127.0),
        (QDType::Int4, _) => (-8.0, 7.0),
        (QDType::Fp8E4M3, _) => (-448.0, 448.0),
    }
}

fn quant_err(x: &[f32], s: f32, z: f32, qmin: f32, qmax: f32) -> f64 {
    let inv = 1.0 / s;
    x.iter()
        .map(|&v| {
            let q = (round_even(v * inv) + z).clamp(qmin, qmax);
            let d = (q - z) * s - v;
            d as f64 * d as f64
        })
        .sum()
}

/// (scale, zero point) of one segment of weights on an integer grid.
pub(crate) fn int_params(
    x: &[f32],
    dtype: QDType,
    symmetric: bool,
    method: WeightMethod,
) -> (f32, f32) {
    let (qmin, qmax) = grid(dtype, symmetric);
    let (lo, hi) = x
        .iter()
        .fold((0f32, 0f32), |(l, h), &v| (l.min(v), h.max(v)));
    let (mut s, mut z) = if symmetric {
        let a = lo.abs().max(hi);
        ((a / qmax).max(MIN_SCALE), 0.0)
    } else {
        let s = ((hi - lo) / (qmax - qmin)).max(MIN_SCALE);
        (s, round_even(qmin - lo / s).clamp(qmin, qmax))
    };
    if method == WeightMethod::Ssz {
        let mut best = quant_err(x, s, z, qmin, qmax);
        for _ in 0..SSZ_ITERS {
            let inv = 1.0 / s;
            let q: Vec<f64> = x
                .iter()
                .map(|&v| ((round_even(v * inv) + z).clamp(qmin, qmax)) as f64)
                .collect();
            let (ns, nz) = if symmetric {
                let (sxq, sqq) = q.iter().zip(x).fold((0f64, 0f64), |(a, b), (&q, &v)| {
                    (a + q * v as f64, b + q * q)
                });
                if sqq == 0.0 {
                    break;
                }
                ((sxq / sqq) as f32, 0.0)
            } else {
                // x ≈ a·q + b  ⇒  scale a, zero point −b / a
                let n = q.len() as f64;
                let (mq, mx) = (
                    q.iter().sum::<f64>() / n,
                    x.iter().map(|&v| v as f64).sum::<f64>() / n,
                );
                let (cov, var) = q.iter().zip(x).fold((0f64, 0f64), |(c, v), (&q, &xv)| {
                    (c + (q - mq) * (xv as f64 - mx), v + (q - mq) * (q - mq))
                });
                if var == 0.0 || cov <= 0.0 {
                    break;
                }
                let a = cov / var;
                let b = mx - a * mq;
                (a as f32, round_even((-b / a) as f32).clamp(qmin, qmax))
            };
            let ns = ns.max(MIN_SCALE);
            let err = quant_err(x, ns, nz, qmin, qmax);
            if err < best {
                let gain = best - err;
                s = ns;
                z = nz;
                best = err;
                if gain < SSZ_EPS {
                    break;
                }
            } else {
                break;
            }
        }
    }
    (s, z)
}

/// Quantize a `[n, k]` f32 weight.
pub fn quantize_weight(w: &[f32], n: usize, k: usize, cfg: &WeightQConfig) -> Result<QuantWeight> {
    if w.len() != n * k {
        return Err(Error::InvalidArgument(format!(
            "weight of {} values is not [{n}, {k}]",
            w.len()
        )));
    }
    let bad = |m: &str| Err(Error::InvalidArgument(m.to_string()));
    match cfg.dtype {
        QDType::Int8 => {
            if !cfg.symmetric {
                return bad(
                    "int8 weights must be symmetric (the W8A8 GEMM has no weight zero point)",
                );
            }
            let segs = match cfg.scope {
                WeightScope::PerChannel => n,
                WeightScope::PerTensor => 1,
                WeightScope::PerGroup(_) => {
                    return bad("int8 weights are per_channel or per_tensor")
                }
            };
            let seg_len = n * k / segs;
            let scales: Vec<f32> = w
                .chunks(seg_len)
                .map(|c| int_params(c, QDType::Int8, true, cfg.method).0)
                .collect();
            let scale: Vec<f32> = (0..n).map(|j| scales[j * segs / n]).collect();
            let mut q = vec![0i8; n * k];
            let mut colsum = vec![0i32; n];
            for j in 0..n {
                let inv = 1.0 / scale[j];
                for t in 0..k {
                    let v = formats::quantize_i8(w[j * k + t], inv, 0, true);
                    q[j * k + t] = v;
                    colsum[j] += v as i32;
                }
            }
            Ok(QuantWeight::Int8 { q, scale, colsum })
        }
        QDType::Fp8E4M3 => {
            let per_row: Vec<f32> = w
                .chunks(k)
                .map(|r| r.iter().fold(0f32, |a, v| a.max(v.abs())))
                .collect();
            let scale: Vec<f32> = match cfg.scope {
                WeightScope::PerChannel => per_row
                    .iter()
                    .map(|a| (a / Fp8::E4M3.max()).max(MIN_SCALE))
                    .collect(),
                WeightScope::PerTensor => {
                    let a = per_row.iter().fold(0f32, |a, &v| a.max(v));
                    vec![(a / Fp8::E4M3.max()).max(MIN_SCALE); n]
                }
                WeightScope::PerGroup(_) => {
                    return bad("fp8 weights are per_channel or per_tensor")
                }
            };
            let codes = w
                .chunks(k)
                .zip(&scale)
                .flat_map(|(r, s)| r.iter().map(move |v| Fp8::E4M3.encode(v / s)))
                .collect();
            Ok(QuantWeight::Fp8 { codes, scale })
        }
        QDType::Int4 => {
            let g = match cfg.scope {
                WeightScope::PerGroup(g) => g,
                WeightScope::PerChannel => k,
                WeightScope::PerTensor => return bad("int4 weights are per_group or per_channel"),
            };
            // compressed-tensors allows a shorter last group (ceil(k / g) groups per row)
            if g == 0 || g % 2 != 0 || !k.is_multiple_of(2) {
                return Err(Error::InvalidArgument(format!(
                    "int4 needs an even group size and even in_features (group {g}, in_features {k})"
                )));
            }
            let groups = k.div_ceil(g);
            let mut scale = vec![0f32; n * groups];
            let mut zero = if cfg.symmetric {
                Vec::new()
            } else {
                vec![0i8; n * groups]
            };
            let mut vals = vec![0i8; n * k];
            for (j, (row, qrow)) in w.chunks_exact(k).zip(vals.chunks_exact_mut(k)).enumerate() {
                for (gi, (seg, qseg)) in row.chunks(g).zip(qrow.chunks_mut(g)).enumerate() {
                    let (s, z) = int_params(seg, QDType::Int4, cfg.symmetric, cfg.method);
                    scale[j * groups + gi] = s;
                    if !cfg.symmetric {
                        zero[j * groups + gi] = z as i8;
                    }
                    let inv = 1.0 / s;
                    for (o, &v) in qseg.iter_mut().zip(seg) {
                        *o = formats::quantize_i4(v, inv, z as i32);
                    }
                }
            }
            // stored offset-binary: keep q in [-8, 7] regardless of the zero point
            Ok(QuantWeight::Int4 {
                packed: formats::pack_i4_bytes(&vals),
                scale,
                zero,
                group: g,
            })
        }
    }
}
