//! Writing compressed-tensors checkpoints (llm-compressor's format; reference/quantization.md §7).
//!
//! - `quantization_config` (format, config_groups of QuantizationArgs, the ignore list of
//!   fallback layers); per linear `X.weight` (int8 / float8_e4m3fn) or `X.weight_packed` (int4,
//!   eight per int32) + `X.weight_shape`, `X.weight_scale`, and static `X.input_scale` /
//!   `X.input_zero_point`.
//! - pd_mix is written as vLLM's dynamic per-token W8A8 (what vLLM runs); its decode scale, which
//!   vLLM has no field for, goes in `quantization_config.ferroq.pd_mix`, which vLLM ignores.
//! - Online rotations (`ferroq.hadamard`) have no compressed-tensors field: such a checkpoint runs
//!   correctly only in ferroq. Everything else is BF16. The reader is `checkpoint::ct`.

use super::pipeline::QuantizedModel;
use super::recipe::ActScope;
use crate::checkpoint::ct::HADAMARD_MARKER;
use crate::checkpoint::safetensors_io::{write_raw_safetensors, RawTensor};
use crate::error::{Error, Result};
use crate::quant::weight::WeightScope;
use crate::quant::{formats, ActQuant, QDType, QuantWeight};
use crate::tensor::DType;
use safetensors::Dtype as St;
use serde_json::{json, Value as Json};
use std::collections::HashMap;
use std::path::Path;

fn format_name(d: QDType) -> &'static str {
    match d {
        QDType::Int8 => "int-quantized",
        QDType::Fp8E4M3 => "float-quantized",
        QDType::Int4 => "pack-quantized",
    }
}

fn args(
    num_bits: u32,
    float: bool,
    symmetric: bool,
    strategy: &str,
    group: Option<usize>,
    dynamic: bool,
    observer: &str,
) -> Json {
    json!({"num_bits": num_bits, "type": if float { "float" } else { "int" }, "symmetric": symmetric,
           "group_size": group, "strategy": strategy, "block_structure": null, "dynamic": dynamic,
           "actorder": null, "observer": observer, "observer_kwargs": {}})
}

fn weight_args(q: &super::pipeline::QLinear) -> Json {
    let (bits, float) = match q.wcfg.dtype {
        QDType::Int8 => (8, false),
        QDType::Fp8E4M3 => (8, true),
        QDType::Int4 => (4, false),
    };
    let (strategy, group) = match q.wcfg.scope {
        WeightScope::PerTensor => ("tensor", None),
        WeightScope::PerChannel => ("channel", None),
        WeightScope::PerGroup(g) => ("group", Some(g)),
    };
    let observer = match q.wcfg.method {
        // GPTQ changes the rounding, not the observer (llm-compressor records minmax too)
        crate::quant::weight::WeightMethod::MinMax | crate::quant::weight::WeightMethod::Gptq => {
            "minmax"
        }
        crate::quant::weight::WeightMethod::Ssz => "ssz",
    };
    args(
        bits,
        float,
        q.wcfg.symmetric,
        strategy,
        group,
        false,
        observer,
    )
}

fn act_args(q: &super::pipeline::QLinear) -> Json {
    match &q.act_cfg {
        None => Json::Null,
        Some(a) => {
            let float = a.qdtype() == QDType::Fp8E4M3;
            let (strategy, dynamic) = match a.scope {
                ActScope::PerToken | ActScope::PdMix => ("token", true),
                ActScope::PerTensor => ("tensor", false),
            };
            args(8, float, a.symmetric, strategy, None, dynamic, "minmax")
        }
    }
}

/// `X.weight_scale` of a per-channel ([n, 1]) or per-tensor ([1]) int8 / fp8 weight; `scale`
/// holds one value per output channel (a per-tensor scale broadcast).
fn channel_scale(name: &str, scale: &[f32], per_tensor: bool) -> (String, St, Vec<usize>, Vec<u8>) {
    let (values, shape) = if per_tensor {
        (&scale[..1], vec![1])
    } else {
        (scale, vec![scale.len(), 1])
    };
    (
        format!("{name}.weight_scale"),
        St::F32,
        shape,
        bytes_of(values),
    )
}

fn bytes_of<T: bytemuck::Pod>(v: &[T]) -> Vec<u8> {
    bytemuck::cast_slice(v).to_vec()
}

/// Write `q` as a compressed-tensors model directory at `out` (must not exist or be empty);
/// written into a temporary directory and renamed into place.
pub fn write(q: &QuantizedModel, out: &Path) -> Result<()> {
    crate::checkpoint::write_dir_atomically(out, |tmp| write_into(q, tmp))
}

fn write_into(q: &QuantizedModel, dir: &Path) -> Result<()> {
    // owned byte buffers first, then views over them
    let mut owned: Vec<(String, St, Vec<usize>, Vec<u8>)> = Vec::new();
    // under the names the architecture stores (Phi-3's fused projections joined again)
    let (dense, linears, fallback) = super::fuse::stored(q)?;
    for (name, t) in &dense {
        let st = match t.dtype() {
            DType::F32 => St::F32,
            DType::F16 => St::F16,
            DType::BF16 => St::BF16,
        };
        owned.push((name.clone(), st, t.shape.clone(), t.as_le_bytes().to_vec()));
    }
    let mut pd_mix = serde_json::Map::new();
    let mut groups: Vec<(Json, Json, &'static str, Vec<String>)> = Vec::new();
    for (name, ql) in &linears {
        let [n, k] = ql.shape;
        let per_tensor = ql.wcfg.scope == WeightScope::PerTensor;
        match &ql.weight {
            QuantWeight::Int8 { q: w, scale, .. } => {
                owned.push((format!("{name}.weight"), St::I8, vec![n, k], bytes_of(w)));
                owned.push(channel_scale(name, scale, per_tensor));
            }
            QuantWeight::Fp8 { codes, scale } => {
                owned.push((
                    format!("{name}.weight"),
                    St::F8_E4M3,
                    vec![n, k],
                    codes.clone(),
                ));
                owned.push(channel_scale(name, scale, per_tensor));
            }
            QuantWeight::Int4 {
                packed,
                scale,
                zero,
                group,
            } => {
                if k % 8 != 0 {
                    return Err(Error::InvalidArgument(format!(
                        "{name}: in_features {k} is not a multiple of 8 (int32 packing)"
                    )));
                }
                let vals = formats::unpack_i4_bytes(packed, n * k);
                owned.push((
                    format!("{name}.weight_packed"),
                    St::I32,
                    vec![n, k / 8],
                    bytes_of(&formats::pack_i4_int32(&vals)),
                ));
                owned.push((
                    format!("{name}.weight_shape"),
                    St::I64,
                    vec![2],
                    bytes_of(&[n as i64, k as i64]),
                ));
                owned.push((
                    format!("{name}.weight_scale"),
                    St::F32,
                    vec![n, k.div_ceil(*group)],
                    bytes_of(scale),
                ));
                if !zero.is_empty() {
                    owned.push((
                        format!("{name}.weight_zero_point"),
                        St::I8,
                        vec![n, k.div_ceil(*group)],
                        bytes_of(zero),
                    ));
                }
            }
        }
        match ql.act.policy {
            ActQuant::Static { scale, zp } => {
                owned.push((
                    format!("{name}.input_scale"),
                    St::F32,
                    vec![1],
                    bytes_of(&[scale]),
                ));
                if !ql.act.symmetric {
                    owned.push((
                        format!("{name}.input_zero_point"),
                        St::I8,
                        vec![1],
                        bytes_of(&[zp as i8]),
                    ));
                }
            }
            ActQuant::PdMix { scale, zp } => {
                pd_mix.insert(
                    name.clone(),
                    json!({"input_scale": scale, "input_zero_point": zp}),
                );
            }
            ActQuant::None | ActQuant::Dynamic => {}
        }
        let (wa, aa) = (weight_args(ql), act_args(ql));
        match groups.iter_mut().find(|g| g.0 == wa && g.1 == aa) {
            Some(g) => g.3.push(name.clone()),
            None => groups.push((wa, aa, format_name(ql.wcfg.dtype), vec![name.clone()])),
        }
    }
    let raw: Vec<(String, RawTensor)> = owned
        .iter()
        .map(|(n, d, s, b)| {
            (
                n.clone(),
                RawTensor {
                    dtype: *d,
                    shape: s.clone(),
                    bytes: b,
                },
            )
        })
        .collect();
    // the rotation travels with the weights too: a tool that drops `quantization_config.ferroq`
    // must not turn rotated weights into silently unrotated ones
    let meta = HashMap::from([
        ("format".to_string(), "pt".to_string()),
        (HADAMARD_MARKER.to_string(), q.config.hadamard.marker()),
    ]);
    write_raw_safetensors(&dir.join("model.safetensors"), &raw, Some(meta))?;

    let single = groups.len() == 1;
    let mut cg = serde_json::Map::new();
    for (i, (wa, aa, fmt, names)) in groups.iter().enumerate() {
        let targets = if single {
            json!(["Linear"])
        } else {
            json!(names)
        };
        cg.insert(
            format!("group_{i}"),
            json!({"targets": targets, "weights": wa, "input_activations": aa,
            "output_activations": null, "format": fmt}),
        );
    }
    let mut ignore: Vec<String> = fallback;
    ignore.push("lm_head".into());
    let format = if single {
        groups[0].2
    } else {
        "mixed-precision"
    };
    let hadamard: serde_json::Map<String, Json> = q
        .config
        .hadamard
        .sites()
        .into_iter()
        .map(|(site, block)| (site.name().to_string(), json!(block)))
        .collect();
    let quantization = json!({
        "quant_method": "compressed-tensors",
        "format": format,
        "quantization_status": "compressed",
        "global_compression_ratio": null,
        "kv_cache_scheme": null,
        "ignore": ignore,
        "config_groups": cg,
        "ferroq": {"version": 1, "pd_mix": pd_mix, "hadamard": hadamard, "lm_head": q.config.lm_head},
    });
    crate::model::write_model_files(dir, &q.config, "bfloat16", Some(quantization), &q.tokenizer)
}
