//! `ModelConfig` from GGUF metadata, read as llama.cpp reads it (`src/llama-model.cpp` and
//! `src/models/*.cpp` of its tree).
//!
//! - `{arch}.*` keys under the names llama.cpp's converter writes; `tie_word_embeddings` from
//!   the absence of `output.weight`, biases from the presence of their tensors.
//! - What GGUF does not carry is what llama.cpp assumes: Gemma's `query_pre_attn_scalar`
//!   (head_dim, or hidden / heads for the 27B models), its default sliding-window pattern and
//!   local RoPE base.

use super::GgufFile;
use crate::checkpoint::arch::{Arch, ArchSpec, RopeLayout, Sliding};
use crate::checkpoint::config::{layer_count, LmHead, ModelConfig, RopeScaling};
use crate::checkpoint::site::OnlineHadamard;
use crate::error::{Error, Result};

/// (sliding_window, which layers use it) as llama.cpp's `load_swa_pattern` sets them: a
/// per-layer `attention.sliding_window_pattern` array, or a period n (layer l slides unless
/// (l + 1) is a multiple of n), by default the architecture's.
fn window(
    g: &GgufFile,
    k: &dyn Fn(&str) -> String,
    spec: &ArchSpec,
    layers: usize,
) -> Result<(Option<usize>, Vec<bool>)> {
    let key = k("attention.sliding_window");
    let window = match g.get(&key) {
        Some(_) => Some(g.get_u64(&key)? as usize).filter(|&w| w > 0),
        None => None,
    };
    let Sliding::Pattern {
        pattern,
        gguf_window,
    } = spec.sliding
    else {
        if window.is_some() {
            return Err(Error::Config(format!(
                "GGUF key `{key}` is not supported for `{}` (it changes the math)",
                spec.model_type
            )));
        }
        return Ok((None, vec![false; layers]));
    };
    let Some(w) = window.or(gguf_window) else {
        return Ok((None, vec![false; layers]));
    };
    let pkey = k("attention.sliding_window_pattern");
    let kinds = match g.get(&pkey) {
        Some(super::Value::Array(v)) => {
            let kinds: Option<Vec<bool>> = v
                .iter()
                .map(|x| match x {
                    super::Value::Bool(b) => Some(*b),
                    _ => None,
                })
                .collect();
            match kinds {
                Some(kinds) if kinds.len() == layers => kinds,
                _ => {
                    return Err(Error::Config(format!(
                        "GGUF `{pkey}` must hold {layers} booleans"
                    )))
                }
            }
        }
        Some(_) => {
            let n = g.get_u64(&pkey)? as usize;
            (0..layers).map(|l| n == 0 || l % n < n - 1).collect()
        }
        None => (0..layers).map(|l| l % pattern < pattern - 1).collect(),
    };
    Ok((Some(w), kinds))
}

impl ModelConfig {
    /// Read the hyper-parameters from GGUF metadata.
    pub fn from_gguf(g: &GgufFile) -> Result<Self> {
        let arch_name = g.get_str("general.architecture")?;
        let arch = Arch::from_gguf(arch_name).ok_or_else(|| {
            Error::Config(format!(
                "GGUF architecture `{arch_name}` is not supported ({})",
                Arch::gguf_names()
            ))
        })?;
        let k = |s: &str| format!("{arch_name}.{s}");
        let refuse = |key: &str| {
            Error::Config(format!(
                "GGUF key `{}` is not supported for `{arch_name}` (it changes the math)",
                k(key)
            ))
        };
        let get = |s: &str| g.get_u64(&k(s)).map(|v| v as usize);
        let hidden_size = get("embedding_length")?;
        let num_heads = get("attention.head_count")?;
        // a key that is present must be read as what it claims; only absence takes a default
        let get_or = |s: &str, default: usize| match g.get(&k(s)) {
            Some(_) => get(s),
            None => Ok(default),
        };
        let num_kv_heads = get_or("attention.head_count_kv", num_heads)?;
        let num_layers = layer_count(get("block_count")?)?;
        let head_dim = get_or("attention.key_length", hidden_size / num_heads.max(1))?;
        let vocab_size = match g.get(&k("vocab_size")) {
            Some(_) => get("vocab_size")?,
            None => g.get_str_array("tokenizer.ggml.tokens")?.len(),
        };
        let rope_scaling = match g.get(&k("rope.scaling.type")) {
            None => None,
            Some(v) => match v.as_str() {
                Some("none") => None,
                Some("linear") => Some(RopeScaling::Linear {
                    factor: g.get_f64(&k("rope.scaling.factor"))?,
                }),
                other => {
                    return Err(Error::Config(format!(
                        "GGUF rope scaling {other:?} is not supported (none, linear, or Llama-3 \
                         `rope_freqs`)"
                    )))
                }
            },
        };
        // llama.cpp's converter stores Llama-3 scaling as per-frequency divisors
        let rope_scaling = match g.tensor("rope_freqs.weight") {
            None => rope_scaling,
            Some(_) if rope_scaling.is_some() => {
                return Err(Error::Config(
                    "GGUF has both rope_freqs and a rope scaling type".into(),
                ))
            }
            Some(t) => Some(RopeScaling::FreqFactors(
                g.dequantize(t)?.into_iter().map(f64::from).collect(),
            )),
        };
        // RoPE over part of the head would change the math
        if get_or("rope.dimension_count", head_dim)? != head_dim {
            return Err(refuse("rope.dimension_count"));
        }
        let spec = arch.spec();
        let (sliding_window, sliding_layers) = window(g, &k, spec, num_layers)?;
        // llama.cpp runs the sliding layers at `rope.freq_base_swa` (default 10000) without
        // scaling where the architecture has a RoPE per layer type, else at the global one
        let local_base = match g.get(&k("rope.freq_base_swa")) {
            Some(_) => Some(g.get_f64(&k("rope.freq_base_swa"))?),
            None => None,
        };
        let local_rope = match (spec.rope, local_base) {
            (RopeLayout::PerLayerType, base) => Some((base.unwrap_or(10000.0), None)),
            (RopeLayout::Shared, None) => None,
            (RopeLayout::Shared, Some(_)) => return Err(refuse("rope.freq_base_swa")),
        };
        let (query_pre_attn_scalar, attn_softcap, final_softcap) = match &spec.gemma_keys {
            None => {
                for key in ["attn_logit_softcapping", "final_logit_softcapping"] {
                    if g.get(&k(key)).is_some() {
                        return Err(refuse(key));
                    }
                }
                (None, None, None)
            }
            Some(gk) => {
                let cap = |key: &str, default: Option<f64>| match g.get(&k(key)) {
                    Some(_) => g.get_f64(&k(key)).map(Some),
                    None => Ok(default),
                };
                let scalar = if num_layers == gk.gguf_27b_layers {
                    hidden_size / num_heads.max(1)
                } else {
                    head_dim
                };
                (
                    Some(scalar as f64),
                    cap("attn_logit_softcapping", gk.attn_softcap)?,
                    cap("final_logit_softcapping", gk.final_softcap)?,
                )
            }
        };
        // biases exist where the tensors do (llama.cpp loads them when present)
        let has = |t: &str| g.tensor(&format!("blk.0.{t}.bias")).is_some();
        let eos = g
            .get_u64("tokenizer.ggml.eos_token_id")
            .ok()
            .map(|v| v as u32);
        ModelConfig {
            arch,
            hidden_size,
            intermediate_size: get("feed_forward_length")?,
            num_layers,
            num_heads,
            num_kv_heads,
            head_dim,
            vocab_size,
            rms_norm_eps: g.get_f64(&k("attention.layer_norm_rms_epsilon"))? as f32,
            rope_theta: match g.get(&k("rope.freq_base")) {
                Some(_) => g.get_f64(&k("rope.freq_base"))?,
                None => 10000.0,
            },
            rope_scaling,
            max_position_embeddings: get_or("context_length", 4096)?,
            tie_word_embeddings: g.tensor("output.weight").is_none(),
            qkv_bias: arch == Arch::Qwen2 || has("attn_q"),
            o_bias: has("attn_output"),
            mlp_bias: has("ffn_up"),
            sliding_window,
            sliding_layers,
            local_rope,
            query_pre_attn_scalar,
            attn_softcap,
            final_softcap,
            bos_token_id: g
                .get_u64("tokenizer.ggml.bos_token_id")
                .ok()
                .map(|v| v as u32),
            eos_token_ids: eos.into_iter().collect(),
            pad_token_id: g
                .get_u64("tokenizer.ggml.padding_token_id")
                .ok()
                .map(|v| v as u32),
            hadamard: OnlineHadamard::NONE,
            lm_head: LmHead::Dense,
        }
        .validate()
    }
}
