//! A quantized model's tensors under the names its architecture stores: Phi-3's q/k/v and
//! gate/up joined again into `qkv_proj` and `gate_up_proj` (transformers' `Phi3` order: q, k, v;
//! gate, up), so the written checkpoint loads where Phi3ForCausalLM is read.
//!
//! - Parts that were quantized join when they share one weight and activation configuration
//!   (they read one input, so their calibrated activation scales agree); int8 per-tensor scales
//!   that differ become the per-channel scales they already are row by row.
//! - Parts left in float (fallback) join as float; a mix of the two has no stored form and is
//!   an error naming the module.

use super::pipeline::{QLinear, QuantizedModel};
use crate::error::{Error, Result};
use crate::quant::weight::WeightScope;
use crate::quant::QuantWeight;
use crate::tensor::HostTensor;
use std::collections::BTreeMap;

/// (dense tensors, quantized linears, fallback module names) as the checkpoint stores them.
pub type Stored = (
    BTreeMap<String, HostTensor>,
    BTreeMap<String, QLinear>,
    Vec<String>,
);

const GROUPS: [(&str, &[&str]); 2] = [
    (
        "self_attn.qkv_proj",
        &["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"],
    ),
    ("mlp.gate_up_proj", &["mlp.gate_proj", "mlp.up_proj"]),
];

/// `q`'s tensors as stored: unchanged unless the architecture fuses projections.
pub fn stored(q: &QuantizedModel) -> Result<Stored> {
    let (mut dense, mut linears, mut fallback) = (
        q.dense.clone(),
        q.linears.clone(),
        q.report.fallback.clone(),
    );
    if !q.config.arch.spec().fused {
        return Ok((dense, linears, fallback));
    }
    for l in 0..q.config.num_layers {
        for (fused, parts) in GROUPS {
            let name = format!("model.layers.{l}.{fused}");
            let parts: Vec<String> = parts
                .iter()
                .map(|p| format!("model.layers.{l}.{p}"))
                .collect();
            let quantized: Vec<QLinear> = parts.iter().filter_map(|p| linears.remove(p)).collect();
            if quantized.len() == parts.len() {
                linears.insert(name.clone(), join_quantized(&name, &quantized)?);
            } else if quantized.is_empty() {
                let ws = parts
                    .iter()
                    .map(|p| {
                        dense
                            .remove(&format!("{p}.weight"))
                            .ok_or_else(|| Error::MissingTensor(format!("{p}.weight")))
                    })
                    .collect::<Result<Vec<_>>>()?;
                dense.insert(format!("{name}.weight"), join_dense(&name, &ws)?);
                fallback.retain(|f| !parts.contains(f));
                fallback.push(name);
            } else {
                return Err(Error::Config(format!(
                    "`{name}` is stored fused: quantize all of {parts:?} or none of them"
                )));
            }
        }
    }
    Ok((dense, linears, fallback))
}

fn join_quantized(name: &str, parts: &[QLinear]) -> Result<QLinear> {
    let first = &parts[0];
    let k = first.shape[1];
    let same = parts.iter().all(|p| {
        p.shape[1] == k && p.wcfg == first.wcfg && p.act == first.act && p.act_cfg == first.act_cfg
    });
    if !same {
        return Err(Error::Config(format!(
            "`{name}` is stored fused: its parts must share one quantization configuration"
        )));
    }
    let weights: Vec<&QuantWeight> = parts.iter().map(|p| &p.weight).collect();
    let weight =
        QuantWeight::concat_rows(&weights).map_err(|e| Error::Config(format!("{name}: {e}")))?;
    let mut wcfg = first.wcfg;
    if wcfg.scope == WeightScope::PerTensor {
        let scale0 = |w: &QuantWeight| match w {
            QuantWeight::Int8 { scale, .. } | QuantWeight::Fp8 { scale, .. } => {
                scale.first().copied()
            }
            QuantWeight::Int4 { .. } => None,
        };
        if weights.iter().any(|w| scale0(w) != scale0(weights[0])) {
            wcfg.scope = WeightScope::PerChannel;
        }
    }
    Ok(QLinear {
        shape: [parts.iter().map(|p| p.shape[0]).sum(), k],
        weight,
        wcfg,
        act: first.act,
        act_cfg: first.act_cfg.clone(),
    })
}

fn join_dense(name: &str, parts: &[HostTensor]) -> Result<HostTensor> {
    let cols = match parts.first().map(|t| t.shape.as_slice()) {
        Some([_, c]) => *c,
        _ => return Err(Error::Config(format!("{name}: parts are not matrices"))),
    };
    let mut rows = 0;
    let mut data = Vec::new();
    for t in parts {
        match t.shape[..] {
            [r, c] if c == cols => rows += r,
            _ => return Err(Error::Config(format!("{name}: parts differ in width"))),
        }
        data.extend(t.to_f32_vec());
    }
    let dtype = parts[0].dtype();
    Ok(HostTensor::from_f32(vec![rows, cols], data)?.to_dtype(dtype))
}
