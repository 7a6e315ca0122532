//! Outlier suppression that leaves the float function unchanged (reference/quantization.md §4).
//!
//! - Channel j of a linear's input is divided by s_j and the matching weight columns multiplied
//!   by it, with 1/s_j folded into the producer: the RMSNorm weight (norm→linear; a `(1 + w)`
//!   norm keeps its form), the rows of v_proj (v→o, one scale per KV-head channel under GQA) or
//!   of up_proj (up→down). A linear input no norm produces (OLMo 2) is not smoothed.
//! - SmoothQuant (Xiao et al., 2023): s = A^α / W^(1−α), norm→linear only.
//! - Iterative Smooth (msModelSlim): the same, clamped at 1e-5, α 0.9 by default, every subgraph
//!   in priority order up→down, v→o, norm→linear.
//! - Flex Smooth (msModelSlim): s = A^α / W^β with (α, β) from a two-stage grid search that
//!   minimises the consumers' int8 output error on calibration rows.
//! - Statistics are rescaled with the activations, so later subgraphs see smoothed inputs.

use super::calib::{SiteStats, StatsMap};
use super::recipe::selected;
use crate::backend::cpu::dense;
use crate::checkpoint::config::ModelConfig;
use crate::checkpoint::site::Site;
use crate::error::{Error, Result};
use crate::tensor::{HostData, HostTensor};
use std::collections::BTreeMap;

/// Float weights by HF name; smoothing converts what it touches to f32.
pub type Weights = BTreeMap<String, HostTensor>;

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Method {
    SmoothQuant { alpha: f32 },
    Iterative { alpha: f32 },
    Flex,
}

const MIN_S: f32 = 1e-5;
const GRID: [f32; 9] = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9];

fn f32_mut<'a>(w: &'a mut Weights, name: &str) -> Result<&'a mut Vec<f32>> {
    let t = w
        .get_mut(name)
        .ok_or_else(|| Error::MissingTensor(name.to_string()))?;
    if !matches!(t.data, HostData::F32(_)) {
        *t = t.to_dtype(crate::tensor::DType::F32);
    }
    match &mut t.data {
        HostData::F32(v) => Ok(v),
        _ => Err(Error::InvalidArgument(format!(
            "{name}: not f32 after conversion"
        ))),
    }
}

/// Per input-channel max |w| of a `[rows, k]` weight.
fn col_absmax(w: &[f32], k: usize) -> Vec<f32> {
    let mut m = vec![0f32; k];
    for row in w.chunks_exact(k) {
        m.iter_mut().zip(row).for_each(|(m, v)| *m = m.max(v.abs()));
    }
    m
}

fn scales(a: &[f32], wmax: &[f32], alpha: f32, beta: f32) -> Vec<f32> {
    a.iter()
        .zip(wmax)
        .map(|(&a, &w)| {
            if a > 0.0 && w > 0.0 {
                (a.powf(alpha) / w.powf(beta)).max(MIN_S)
            } else {
                1.0
            }
        })
        .collect()
}

/// Relative int8 output error of consumers `ws` ([n, k] each) on rows x (r, k) after smoothing
/// with s (per-token symmetric activations, per-channel symmetric weights).
fn smoothed_error(x: &[f32], k: usize, ws: &[(&[f32], usize)], s: &[f32]) -> f64 {
    let r = x.len() / k;
    let mut xq: Vec<f32> = x.to_vec();
    for row in xq.chunks_exact_mut(k) {
        row.iter_mut().zip(s).for_each(|(v, s)| *v /= s);
        let (sc, _) = crate::quant::dynamic_i8_params(row, true);
        row.iter_mut().for_each(|v| {
            *v = crate::quant::formats::round_even(*v / sc).clamp(-127.0, 127.0) * sc
        });
    }
    let mut err = 0f64;
    let mut norm = 0f64;
    for &(w, n) in ws {
        let mut wq = w.to_vec();
        for row in wq.chunks_exact_mut(k) {
            row.iter_mut().zip(s).for_each(|(v, s)| *v *= s);
            let a = row.iter().fold(0f32, |a, v| a.max(v.abs()));
            let sc = if a > 0.0 { a / 127.0 } else { 1.0 };
            row.iter_mut().for_each(|v| {
                *v = crate::quant::formats::round_even(*v / sc).clamp(-127.0, 127.0) * sc
            });
        }
        let (mut y0, mut y1) = (vec![0f32; r * n], vec![0f32; r * n]);
        dense::matmul(&mut y0, x, w, r, n, k);
        dense::matmul(&mut y1, &xq, &wq, r, n, k);
        err += y0
            .iter()
            .zip(&y1)
            .map(|(a, b)| ((a - b) as f64).powi(2))
            .sum::<f64>();
        norm += y0.iter().map(|a| (*a as f64).powi(2)).sum::<f64>();
    }
    err / norm.max(1e-30)
}

/// One subgraph: producer fold target, consumer linears, and the observed input site.
struct Subgraph {
    layer: usize,
    site: Site,
    consumers: Vec<String>,
}

fn choose_scales(
    method: Method,
    st: &SiteStats,
    wmax: &[f32],
    consumers: &[(&[f32], usize)],
    k: usize,
) -> Vec<f32> {
    match method {
        Method::SmoothQuant { alpha } | Method::Iterative { alpha } => {
            scales(&st.chan_absmax, wmax, alpha, 1.0 - alpha)
        }
        Method::Flex => {
            if st.rows.is_empty() {
                return scales(&st.chan_absmax, wmax, 0.5, 0.5);
            }
            let eval = |a: f32, b: f32| {
                smoothed_error(&st.rows, k, consumers, &scales(&st.chan_absmax, wmax, a, b))
            };
            // stage 1: alpha with beta = 1 - alpha; stage 2: beta with the best alpha
            let mut best = (eval(0.5, 0.5), 0.5, 0.5);
            for &a in &GRID {
                let e = eval(a, 1.0 - a);
                if e < best.0 {
                    best = (e, a, 1.0 - a);
                }
            }
            let a = best.1;
            for &b in &GRID {
                let e = eval(a, b);
                if e < best.0 {
                    best = (e, a, b);
                }
            }
            // keep the identity if smoothing does not help
            let none = smoothed_error(&st.rows, k, consumers, &vec![1.0; k]);
            if none <= best.0 {
                return vec![1.0; k];
            }
            scales(&st.chan_absmax, wmax, best.1, best.2)
        }
    }
}

/// Apply `method` to every selected subgraph of every layer. Returns the number smoothed.
pub fn apply(
    method: Method,
    c: &ModelConfig,
    w: &mut Weights,
    stats: &mut StatsMap,
    include: &[String],
    exclude: &[String],
) -> Result<usize> {
    let mut done = 0;
    for l in 0..c.num_layers {
        let p = format!("model.layers.{l}");
        let mut graphs = Vec::new();
        if !matches!(method, Method::SmoothQuant { .. }) {
            graphs.push(Subgraph {
                layer: l,
                site: Site::DownIn,
                consumers: vec![format!("{p}.mlp.down_proj")],
            });
            graphs.push(Subgraph {
                layer: l,
                site: Site::OIn,
                consumers: vec![format!("{p}.self_attn.o_proj")],
            });
        }
        // norm→linear where the block has the norm (OLMo 2's q/k/v and gate/up read the
        // residual stream itself, which no weight produces)
        let norms = &c.arch.spec().norms;
        graphs.push(Subgraph {
            layer: l,
            site: Site::AttnIn,
            consumers: ["q_proj", "k_proj", "v_proj"]
                .iter()
                .map(|m| format!("{p}.self_attn.{m}"))
                .collect(),
        });
        graphs.push(Subgraph {
            layer: l,
            site: Site::MlpIn,
            consumers: ["gate_proj", "up_proj"]
                .iter()
                .map(|m| format!("{p}.mlp.{m}"))
                .collect(),
        });
        graphs.retain(|g| match g.site {
            Site::AttnIn => norms.pre_attn.is_some(),
            Site::MlpIn => norms.pre_mlp.is_some(),
            Site::OIn | Site::DownIn => true,
        });
        for g in graphs {
            if !g.consumers.iter().any(|n| selected(n, include, exclude)) {
                continue;
            }
            let Some(st) = stats.get(&(g.layer, g.site)) else {
                continue;
            };
            let k = st.chan_absmax.len();
            let s = {
                let ws: Vec<(&[f32], usize)> = g
                    .consumers
                    .iter()
                    .map(|n| {
                        let t = w
                            .get(&format!("{n}.weight"))
                            .ok_or_else(|| Error::MissingTensor(format!("{n}.weight")))?;
                        match &t.data {
                            HostData::F32(v) => match t.shape.as_slice() {
                                [rows, _] => Ok((v.as_slice(), *rows)),
                                other => Err(Error::InvalidArgument(format!(
                                    "{n}.weight has shape {other:?}; smoothing needs a matrix"
                                ))),
                            },
                            _ => Err(Error::InvalidArgument(format!(
                                "{n}: smoothing needs f32 weights"
                            ))),
                        }
                    })
                    .collect::<Result<_>>()?;
                let mut wmax = vec![0f32; k];
                for (wv, _) in &ws {
                    col_absmax(wv, k)
                        .iter()
                        .zip(wmax.iter_mut())
                        .for_each(|(a, m)| *m = m.max(*a));
                }
                let mut s = choose_scales(method, st, &wmax, &ws, k);
                if g.site == Site::OIn {
                    // GQA: one scale per KV-head channel, shared by the heads of its group
                    let (hd, group, nkv) =
                        (c.head_dim, c.num_heads / c.num_kv_heads, c.num_kv_heads);
                    for kv in 0..nkv {
                        for i in 0..hd {
                            let idx = |h: usize| (kv * group + h) * hd + i;
                            let shared = match method {
                                Method::SmoothQuant { alpha } | Method::Iterative { alpha } => {
                                    let a = (0..group)
                                        .map(|h| st.chan_absmax[idx(h)])
                                        .fold(0f32, f32::max);
                                    let wm = (0..group).map(|h| wmax[idx(h)]).fold(0f32, f32::max);
                                    scales(&[a], &[wm], alpha, 1.0 - alpha)[0]
                                }
                                // Flex already searched its exponents: the group shares the
                                // largest of its heads' scales
                                Method::Flex => (0..group).map(|h| s[idx(h)]).fold(0f32, f32::max),
                            };
                            (0..group).for_each(|h| s[idx(h)] = shared);
                        }
                    }
                }
                s
            };
            // fold 1/s into the producer
            match g.site {
                Site::AttnIn | Site::MlpIn => {
                    let n = &c.arch.spec().norms;
                    let norm = if g.site == Site::AttnIn {
                        n.pre_attn
                    } else {
                        n.pre_mlp
                    };
                    let norm = norm.ok_or_else(|| {
                        Error::InvalidArgument(format!("{}: no norm to fold into", g.site.name()))
                    })?;
                    let nw = f32_mut(w, &format!("model.layers.{l}.{norm}.weight"))?;
                    // a (1 + w) norm (Gemma) scales by 1 + w: that is what 1/s divides
                    let one = if n.unit_offset { 1.0 } else { 0.0 };
                    nw.iter_mut()
                        .zip(&s)
                        .for_each(|(v, s)| *v = (*v + one) / s - one);
                }
                Site::DownIn => {
                    let up = f32_mut(w, &format!("model.layers.{l}.mlp.up_proj.weight"))?;
                    for (row, s) in up.chunks_exact_mut(c.hidden_size).zip(&s) {
                        row.iter_mut().for_each(|v| *v /= s);
                    }
                    if c.mlp_bias {
                        let b = f32_mut(w, &format!("model.layers.{l}.mlp.up_proj.bias"))?;
                        b.iter_mut().zip(&s).for_each(|(x, s)| *x /= s);
                    }
                }
                Site::OIn => {
                    let (hd, group) = (c.head_dim, c.num_heads / c.num_kv_heads);
                    let kv_s: Vec<f32> = (0..c.num_kv_heads * hd)
                        .map(|r| s[(r / hd * group) * hd + r % hd])
                        .collect();
                    let v = f32_mut(w, &format!("model.layers.{l}.self_attn.v_proj.weight"))?;
                    for (row, s) in v.chunks_exact_mut(c.hidden_size).zip(&kv_s) {
                        row.iter_mut().for_each(|x| *x /= s);
                    }
                    if let Ok(b) = f32_mut(w, &format!("model.layers.{l}.self_attn.v_proj.bias")) {
                        b.iter_mut().zip(&kv_s).for_each(|(x, s)| *x /= s);
                    }
                }
            }
            // multiply consumer columns by s
            for n in &g.consumers {
                let wv = f32_mut(w, &format!("{n}.weight"))?;
                for row in wv.chunks_exact_mut(k) {
                    row.iter_mut().zip(&s).for_each(|(v, s)| *v *= s);
                }
            }
            // the input channels are now x / s
            if let Some(st) = stats.get_mut(&(g.layer, g.site)) {
                st.chan_absmax.iter_mut().zip(&s).for_each(|(a, s)| *a /= s);
                for row in st.rows.chunks_exact_mut(k) {
                    row.iter_mut().zip(&s).for_each(|(v, s)| *v /= s);
                }
            }
            done += 1;
        }
    }
    Ok(done)
}
