//! RoPE frequency scaling: the types transformers implements (`modeling_rope_utils.py`), read
//! from `rope_parameters` (transformers ≥ 5) or the older `rope_theta` + `rope_scaling` keys.
//!
//! - Each type gives head_dim / 2 inverse frequencies and a factor on cos / sin ("attention
//!   factor", YaRN and LongRoPE); the model multiplies positions by them as HF does.
//! - `dynamic` (NTK) equals `default` up to `max_position_embeddings`, and no workspace runs
//!   past that, so it is exact here. LongRoPE picks its short or long factors by the context the
//!   workspace serves (HF by the running length; the same for any sequence within
//!   `original_max_position_embeddings`).
//! - GGUF files made by llama.cpp's converter carry Llama-3 scaling as a `rope_freqs` tensor of
//!   per-frequency divisors: `FreqFactors`.

use crate::error::{Error, Result};
use serde_json::{json, Value as Json};

/// Llama-3 style frequency-dependent scaling (HF `_compute_llama3_parameters`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Llama3RopeScaling {
    pub factor: f64,
    pub low_freq_factor: f64,
    pub high_freq_factor: f64,
    pub original_max_position_embeddings: usize,
}

/// YaRN (HF `_compute_yarn_parameters`), with its defaults resolved.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct YarnRopeScaling {
    pub factor: f64,
    pub original_max_position_embeddings: usize,
    pub beta_fast: f64,
    pub beta_slow: f64,
    /// cos / sin scale (given, or from mscale / mscale_all_dim / factor as HF infers it)
    pub attention_factor: f64,
    pub truncate: bool,
}

/// LongRoPE (Phi-3): per-frequency extension factors for short and long contexts.
#[derive(Clone, Debug, PartialEq)]
pub struct LongRopeScaling {
    pub short_factor: Vec<f64>,
    pub long_factor: Vec<f64>,
    pub original_max_position_embeddings: usize,
    pub attention_factor: f64,
    /// as the config gave it (None: max_position_embeddings / original), for writing back
    pub factor: Option<f64>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum RopeScaling {
    /// Position interpolation: every frequency divided by `factor`.
    Linear {
        factor: f64,
    },
    /// NTK-aware dynamic scaling; identical to unscaled RoPE up to max_position_embeddings.
    Dynamic {
        factor: f64,
    },
    Llama3(Llama3RopeScaling),
    Yarn(YarnRopeScaling),
    LongRope(LongRopeScaling),
    /// Per-frequency divisors (GGUF `rope_freqs`), head_dim / 2 of them.
    FreqFactors(Vec<f64>),
}

fn num(rp: &Json, key: &str) -> Result<Option<f64>> {
    match rp.get(key).filter(|v| !v.is_null()) {
        None => Ok(None),
        Some(v) => v.as_f64().map(Some).ok_or_else(|| {
            Error::Config(format!("RoPE parameter `{key}` must be a number, got {v}"))
        }),
    }
}

fn need(rp: &Json, key: &str, ty: &str) -> Result<f64> {
    num(rp, key)?.ok_or_else(|| Error::Config(format!("RoPE type `{ty}` needs `{key}`")))
}

fn factors(rp: &Json, key: &str, half: usize) -> Result<Vec<f64>> {
    let bad = || {
        Error::Config(format!(
            "RoPE parameter `{key}` must be a list of {half} positive numbers (head_dim / 2)"
        ))
    };
    let list = rp.get(key).and_then(Json::as_array).ok_or_else(bad)?;
    let v: Vec<f64> = list.iter().filter_map(Json::as_f64).collect();
    if v.len() != half || list.len() != half || v.iter().any(|f| !(f.is_finite() && *f > 0.0)) {
        return Err(bad());
    }
    Ok(v)
}

/// HF's `yarn_get_mscale`.
fn yarn_mscale(scale: f64, mscale: f64) -> f64 {
    if scale <= 1.0 {
        1.0
    } else {
        0.1 * mscale * scale.ln() + 1.0
    }
}

/// The RoPE settings of one config: (theta, scaling). `rp` is the flat `rope_parameters` dict
/// (or the legacy `rope_scaling` with `rope_theta` merged in); `top` the whole config, for
/// `original_max_position_embeddings` kept outside it (Phi-3) and `max_position_embeddings`.
pub fn parse(
    rp: &Json,
    top: &Json,
    head_dim: usize,
    max_pos: usize,
) -> Result<(f64, Option<RopeScaling>)> {
    let theta = num(rp, "rope_theta")?.unwrap_or(10000.0);
    let ty = rp
        .get("rope_type")
        .or_else(|| rp.get("type"))
        .filter(|v| !v.is_null())
        .map(|v| {
            v.as_str().ok_or_else(|| {
                Error::Config(format!(
                    "RoPE parameter `rope_type` must be a string, got {v}"
                ))
            })
        })
        .transpose()?
        .unwrap_or("default");
    if let Some(p) = num(rp, "partial_rotary_factor")? {
        if p != 1.0 {
            return Err(Error::Config(format!(
                "partial_rotary_factor {p} is not supported (RoPE over the whole head only)"
            )));
        }
    }
    // HF gives a top-level original_max_position_embeddings priority (Phi-3 keeps it there)
    let orig = match num(top, "original_max_position_embeddings")? {
        Some(v) => Some(v),
        None => num(rp, "original_max_position_embeddings")?,
    };
    let orig_or = |default: usize| -> Result<usize> {
        match orig {
            None => Ok(default),
            Some(v) if v >= 1.0 && v.fract() == 0.0 && v <= u32::MAX as f64 => Ok(v as usize),
            Some(v) => Err(Error::Config(format!(
                "original_max_position_embeddings {v} must be a positive integer"
            ))),
        }
    };
    let positive = |name: &str, v: f64| -> Result<f64> {
        if v.is_finite() && v > 0.0 {
            Ok(v)
        } else {
            Err(Error::Config(format!(
                "RoPE `{ty}` parameter `{name}` {v} must be a finite positive number"
            )))
        }
    };
    let scaling = match ty {
        "default" => None,
        "linear" => Some(RopeScaling::Linear {
            factor: positive("factor", need(rp, "factor", ty)?)?,
        }),
        "dynamic" => Some(RopeScaling::Dynamic {
            factor: positive("factor", need(rp, "factor", ty)?)?,
        }),
        "llama3" => {
            let s = Llama3RopeScaling {
                factor: positive("factor", need(rp, "factor", ty)?)?,
                low_freq_factor: positive("low_freq_factor", need(rp, "low_freq_factor", ty)?)?,
                high_freq_factor: positive("high_freq_factor", need(rp, "high_freq_factor", ty)?)?,
                original_max_position_embeddings: orig_or(max_pos)?,
            };
            if s.high_freq_factor <= s.low_freq_factor {
                return Err(Error::Config(format!(
                    "llama3 RoPE: high_freq_factor {} must exceed low_freq_factor {}",
                    s.high_freq_factor, s.low_freq_factor
                )));
            }
            Some(RopeScaling::Llama3(s))
        }
        "yarn" => {
            let orig = orig_or(max_pos)?;
            let factor = match num(rp, "factor")? {
                Some(f) => f,
                None => max_pos as f64 / orig as f64,
            };
            let factor = positive("factor", factor)?;
            let attention_factor = match num(rp, "attention_factor")? {
                Some(a) => a,
                None => match (num(rp, "mscale")?, num(rp, "mscale_all_dim")?) {
                    (Some(m), Some(ma)) if m != 0.0 && ma != 0.0 => {
                        yarn_mscale(factor, m) / yarn_mscale(factor, ma)
                    }
                    _ => yarn_mscale(factor, 1.0),
                },
            };
            // HF: `get("beta_fast") or 32`, so 0 also means the default
            let or_default = |v: Option<f64>, d: f64| v.filter(|x| *x != 0.0).unwrap_or(d);
            let truncate = match rp.get("truncate").filter(|v| !v.is_null()) {
                None => true,
                Some(v) => v.as_bool().ok_or_else(|| {
                    Error::Config(format!("RoPE parameter `truncate` must be true or false, got {v}"))
                })?,
            };
            Some(RopeScaling::Yarn(YarnRopeScaling {
                factor,
                original_max_position_embeddings: orig,
                beta_fast: or_default(num(rp, "beta_fast")?, 32.0),
                beta_slow: or_default(num(rp, "beta_slow")?, 1.0),
                attention_factor: positive("attention_factor", attention_factor)?,
                truncate,
            }))
        }
        "longrope" => {
            let orig = orig_or(max_pos)?;
            let given = num(rp, "factor")?;
            let factor = given.unwrap_or(max_pos as f64 / orig as f64);
            let attention_factor = match num(rp, "attention_factor")? {
                Some(a) => a,
                None if factor <= 1.0 => 1.0,
                None => (1.0 + factor.ln() / (orig as f64).ln()).sqrt(),
            };
            Some(RopeScaling::LongRope(LongRopeScaling {
                short_factor: factors(rp, "short_factor", head_dim / 2)?,
                long_factor: factors(rp, "long_factor", head_dim / 2)?,
                original_max_position_embeddings: orig,
                attention_factor: positive("attention_factor", attention_factor)?,
                factor: given,
            }))
        }
        other => {
            return Err(Error::Config(format!(
                "RoPE type `{other}` is not supported (default, linear, dynamic, llama3, yarn, longrope)"
            )))
        }
    };
    Ok((theta, scaling))
}

impl RopeScaling {
    /// Scale on cos and sin (HF's `attention_scaling`).
    pub fn attention_factor(&self) -> f64 {
        match self {
            RopeScaling::Yarn(y) => y.attention_factor,
            RopeScaling::LongRope(l) => l.attention_factor,
            _ => 1.0,
        }
    }

    /// The legacy `rope_scaling` dict (transformers 4 reads it; 5 standardizes it into
    /// `rope_parameters`), or None where it has no HF form.
    pub fn to_hf(&self) -> Option<Json> {
        Some(match self {
            RopeScaling::Linear { factor } => json!({"rope_type": "linear", "factor": factor}),
            RopeScaling::Dynamic { factor } => json!({"rope_type": "dynamic", "factor": factor}),
            RopeScaling::Llama3(s) => json!({
                "rope_type": "llama3",
                "factor": s.factor,
                "low_freq_factor": s.low_freq_factor,
                "high_freq_factor": s.high_freq_factor,
                "original_max_position_embeddings": s.original_max_position_embeddings,
            }),
            RopeScaling::Yarn(y) => json!({
                "rope_type": "yarn",
                "factor": y.factor,
                "original_max_position_embeddings": y.original_max_position_embeddings,
                "beta_fast": y.beta_fast,
                "beta_slow": y.beta_slow,
                "attention_factor": y.attention_factor,
                "truncate": y.truncate,
            }),
            RopeScaling::LongRope(l) => {
                let mut j = json!({
                    "rope_type": "longrope",
                    "short_factor": l.short_factor,
                    "long_factor": l.long_factor,
                    "original_max_position_embeddings": l.original_max_position_embeddings,
                    "attention_factor": l.attention_factor,
                });
                if let Some(f) = l.factor {
                    j["factor"] = json!(f);
                }
                j
            }
            RopeScaling::FreqFactors(_) => return None,
        })
    }
}

/// Inverse frequencies (head_dim / 2 of them) for a workspace serving `context` positions.
pub fn inv_freq(
    theta: f64,
    head_dim: usize,
    scaling: Option<&RopeScaling>,
    context: usize,
) -> Vec<f64> {
    let half = head_dim / 2;
    let base = |i: usize| 1.0 / theta.powf(2.0 * i as f64 / head_dim as f64);
    (0..half)
        .map(|i| {
            let f = base(i);
            match scaling {
                None | Some(RopeScaling::Dynamic { .. }) => f,
                Some(RopeScaling::Linear { factor }) => f / factor,
                Some(RopeScaling::FreqFactors(ff)) => f / ff.get(i).copied().unwrap_or(1.0),
                Some(RopeScaling::Llama3(s)) => {
                    let old = s.original_max_position_embeddings as f64;
                    let low_wl = old / s.low_freq_factor;
                    let high_wl = old / s.high_freq_factor;
                    let wl = 2.0 * std::f64::consts::PI / f;
                    if wl < high_wl {
                        f
                    } else if wl > low_wl {
                        f / s.factor
                    } else {
                        let smooth = (old / wl - s.low_freq_factor)
                            / (s.high_freq_factor - s.low_freq_factor);
                        (1.0 - smooth) * f / s.factor + smooth * f
                    }
                }
                Some(RopeScaling::Yarn(y)) => {
                    let d = head_dim as f64;
                    let orig = y.original_max_position_embeddings as f64;
                    let corr = |rot: f64| {
                        d * (orig / (rot * 2.0 * std::f64::consts::PI)).ln() / (2.0 * theta.ln())
                    };
                    let (mut low, mut high) = (corr(y.beta_fast), corr(y.beta_slow));
                    if y.truncate {
                        low = low.floor();
                        high = high.ceil();
                    }
                    let (low, mut high) = (low.max(0.0), high.min(d - 1.0));
                    if low == high {
                        high += 0.001;
                    }
                    let ramp = ((i as f64 - low) / (high - low)).clamp(0.0, 1.0);
                    let extrapolate = 1.0 - ramp;
                    (f / y.factor) * (1.0 - extrapolate) + f * extrapolate
                }
                Some(RopeScaling::LongRope(l)) => {
                    let ext = if context > l.original_max_position_embeddings {
                        &l.long_factor
                    } else {
                        &l.short_factor
                    };
                    f / ext.get(i).copied().unwrap_or(1.0)
                }
            }
        })
        .collect()
}

/// Llama-3 parameters that reproduce GGUF `rope_freqs` divisors, if Meta's low / high
/// factors (1, 4) with some power-of-two original context do (Llama 3.1 / 3.2 / 3.3: 8192;
/// the factor is the largest divisor): how a GGUF's RoPE is written back as an HF config.
pub fn llama3_from_factors(theta: f64, head_dim: usize, ff: &[f64]) -> Option<Llama3RopeScaling> {
    let factor = ff.iter().copied().fold(f64::NAN, f64::max);
    let plain = inv_freq(theta, head_dim, None, 0);
    (4..=24).find_map(|log2| {
        let s = Llama3RopeScaling {
            factor,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position_embeddings: 1 << log2,
        };
        let want = inv_freq(theta, head_dim, Some(&RopeScaling::Llama3(s)), 0);
        let close = ff.len() == want.len()
            && ff
                .iter()
                .zip(want.iter().zip(&plain))
                .all(|(f, (w, p))| ((p / f) - w).abs() <= 1e-6 * w.abs());
        close.then_some(s)
    })
}
