//! Model hyper-parameters of the Llama family, from HF `config.json` or GGUF metadata.
//!
//! - Llama 2/3, Mistral, Qwen2, SmolLM; written back as `config.json` by `ferroq convert`.
//! - Llama-3 `rope_scaling` follows HF's `_compute_llama3_parameters`.
//! - Fields the model cannot honour are errors here, not silent misbehaviour later.

use crate::checkpoint::gguf::GgufFile;
use crate::checkpoint::site::{OnlineHadamard, Site};
use crate::error::{Error, Result};
use serde_json::{json, Value as Json};

/// Architectures that share the Llama block (pre-norm, RoPE, GQA, SwiGLU).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arch {
    Llama,
    Mistral,
    /// Llama block with biases on q/k/v.
    Qwen2,
}

impl Arch {
    fn hf_class(self) -> &'static str {
        match self {
            Arch::Llama => "LlamaForCausalLM",
            Arch::Mistral => "MistralForCausalLM",
            Arch::Qwen2 => "Qwen2ForCausalLM",
        }
    }
    fn model_type(self) -> &'static str {
        match self {
            Arch::Llama => "llama",
            Arch::Mistral => "mistral",
            Arch::Qwen2 => "qwen2",
        }
    }
}

/// Llama-3 style frequency-dependent RoPE scaling.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Llama3RopeScaling {
    pub factor: f64,
    pub low_freq_factor: f64,
    pub high_freq_factor: f64,
    pub original_max_position_embeddings: usize,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ModelConfig {
    pub arch: Arch,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub vocab_size: usize,
    pub rms_norm_eps: f32,
    pub rope_theta: f64,
    pub rope_scaling: Option<Llama3RopeScaling>,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    /// Bias on q_proj, k_proj, v_proj (Qwen2, or Llama with `attention_bias`).
    pub qkv_bias: bool,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
    /// Inputs rotated online (set by quantization recipes; kept in the checkpoint's
    /// `quantization_config`, not in the HF fields).
    pub hadamard: OnlineHadamard,
    /// How the LM head runs (set by recipes like `hadamard`, kept in `quantization_config`).
    pub lm_head: LmHead,
}

/// The LM head's format. A quantized checkpoint stores the head (usually tied to the token
/// embedding) in float and asks for int8 here, so the embedding keeps its precision and the
/// file stays loadable by other runtimes; `LlamaModel::load` quantizes it (per-channel
/// symmetric int8 weights, per-token dynamic int8 input).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LmHead {
    /// The checkpoint's float dtype.
    #[default]
    Dense,
    Int8,
}

fn field<'a>(j: &'a Json, key: &str) -> Result<&'a Json> {
    j.get(key)
        .filter(|v| !v.is_null())
        .ok_or_else(|| Error::Config(format!("config.json has no `{key}`")))
}

fn usize_field(j: &Json, key: &str) -> Result<usize> {
    field(j, key)?
        .as_u64()
        .map(|v| v as usize)
        .ok_or_else(|| Error::Config(format!("`{key}` must be a non-negative integer")))
}

fn f64_field(j: &Json, key: &str) -> Result<f64> {
    field(j, key)?
        .as_f64()
        .ok_or_else(|| Error::Config(format!("`{key}` must be a number")))
}

/// An optional field: absent or null gives `default`; present with another type is an error
/// naming it (a typo'd value must not silently become the default).
fn opt_field<'a, T>(
    j: &'a Json,
    key: &str,
    default: T,
    read: impl Fn(&'a Json) -> Option<T>,
    expected: &str,
) -> Result<T> {
    match j.get(key).filter(|v| !v.is_null()) {
        None => Ok(default),
        Some(v) => read(v).ok_or_else(|| {
            Error::Config(format!("config.json `{key}` must be {expected}, got {v}"))
        }),
    }
}

/// Sizes beyond these are not a model anyone runs but a corrupt or hostile file: refused before
/// anything is allocated from them.
const MAX_LAYERS: usize = 1024;
const MAX_WIDTH: usize = 1 << 20;
const MAX_VOCAB: usize = 1 << 24;
const MAX_POSITIONS: usize = 1 << 24;

fn token_ids(v: Option<&Json>) -> Vec<u32> {
    match v {
        Some(Json::Number(n)) => n.as_u64().map(|x| vec![x as u32]).unwrap_or_default(),
        Some(Json::Array(a)) => a
            .iter()
            .filter_map(|x| x.as_u64())
            .map(|x| x as u32)
            .collect(),
        _ => Vec::new(),
    }
}

impl ModelConfig {
    /// The shape (outermost first) the dense model's tensor `name` (an HF name) must have, or
    /// None for a name the model does not read.
    pub fn expected_shape(&self, name: &str) -> Option<Vec<usize>> {
        let (dim, qd, kvd, ffn, vocab) = (
            self.hidden_size,
            self.q_dim(),
            self.kv_dim(),
            self.intermediate_size,
            self.vocab_size,
        );
        match name {
            "model.embed_tokens.weight" | "lm_head.weight" => return Some(vec![vocab, dim]),
            "model.norm.weight" => return Some(vec![dim]),
            _ => {}
        }
        let (layer, module) = crate::checkpoint::site::layer_module(name)?;
        if layer >= self.num_layers {
            return None;
        }
        Some(match module {
            "input_layernorm.weight" | "post_attention_layernorm.weight" => vec![dim],
            "self_attn.q_proj.weight" => vec![qd, dim],
            "self_attn.k_proj.weight" | "self_attn.v_proj.weight" => vec![kvd, dim],
            "self_attn.o_proj.weight" => vec![dim, qd],
            "self_attn.q_proj.bias" => vec![qd],
            "self_attn.k_proj.bias" | "self_attn.v_proj.bias" => vec![kvd],
            "mlp.gate_proj.weight" | "mlp.up_proj.weight" => vec![ffn, dim],
            "mlp.down_proj.weight" => vec![dim, ffn],
            _ => return None,
        })
    }

    /// Channels of a decoder block's linear input `site`.
    pub fn site_dim(&self, site: Site) -> usize {
        match site {
            Site::AttnIn | Site::MlpIn => self.hidden_size,
            Site::OIn => self.q_dim(),
            Site::DownIn => self.intermediate_size,
        }
    }

    pub fn kv_dim(&self) -> usize {
        self.num_kv_heads * self.head_dim
    }
    pub fn q_dim(&self) -> usize {
        self.num_heads * self.head_dim
    }

    fn validate(self) -> Result<Self> {
        let c = &self;
        if c.num_heads == 0 || c.num_kv_heads == 0 || !c.num_heads.is_multiple_of(c.num_kv_heads) {
            return Err(Error::Config(format!(
                "num_attention_heads {} must be a positive multiple of num_key_value_heads {}",
                c.num_heads, c.num_kv_heads
            )));
        }
        if c.head_dim == 0 || !c.head_dim.is_multiple_of(2) {
            return Err(Error::Config(format!(
                "head_dim {} must be even and positive",
                c.head_dim
            )));
        }
        for (name, v, max) in [
            ("hidden_size", c.hidden_size, MAX_WIDTH),
            ("intermediate_size", c.intermediate_size, MAX_WIDTH),
            ("num_hidden_layers", c.num_layers, MAX_LAYERS),
            ("vocab_size", c.vocab_size, MAX_VOCAB),
            ("num_attention_heads", c.num_heads, MAX_WIDTH),
            ("head_dim", c.head_dim, MAX_WIDTH),
            (
                "max_position_embeddings",
                c.max_position_embeddings,
                MAX_POSITIONS,
            ),
        ] {
            if v == 0 || v > max {
                return Err(Error::Config(format!(
                    "`{name}` is {v}: it must be between 1 and {max}"
                )));
            }
        }
        if !(c.rms_norm_eps.is_finite() && c.rms_norm_eps >= 0.0) {
            return Err(Error::Config(format!(
                "`rms_norm_eps` {} must be a finite number ≥ 0",
                c.rms_norm_eps
            )));
        }
        if !(c.rope_theta.is_finite() && c.rope_theta > 0.0) {
            return Err(Error::Config(format!(
                "`rope_theta` {} must be a finite positive number",
                c.rope_theta
            )));
        }
        Ok(self)
    }

    /// Parse a Hugging Face `config.json`.
    pub fn from_hf_json(text: &str) -> Result<Self> {
        let j: Json = serde_json::from_str(text)
            .map_err(|e| Error::Config(format!("config.json is not valid JSON: {e}")))?;
        let model_type = field(&j, "model_type")?.as_str().unwrap_or("");
        let arch = match model_type {
            "llama" => Arch::Llama,
            "mistral" => Arch::Mistral,
            "qwen2" => Arch::Qwen2,
            other => {
                return Err(Error::Config(format!(
                    "model_type `{other}` is not supported (llama, mistral, qwen2)"
                )))
            }
        };
        let act = opt_field(&j, "hidden_act", "silu", Json::as_str, "a string")?;
        {
            if act != "silu" {
                return Err(Error::Config(format!(
                    "hidden_act `{act}` is not supported (silu)"
                )));
            }
        }
        let hidden_size = usize_field(&j, "hidden_size")?;
        let num_heads = usize_field(&j, "num_attention_heads")?;
        let num_kv_heads = match j.get("num_key_value_heads").filter(|v| !v.is_null()) {
            Some(_) => usize_field(&j, "num_key_value_heads")?,
            None => num_heads,
        };
        let head_dim = match j.get("head_dim").filter(|v| !v.is_null()) {
            Some(_) => usize_field(&j, "head_dim")?,
            None if num_heads > 0 => hidden_size / num_heads,
            None => 0,
        };
        let rope_scaling = match j.get("rope_scaling").filter(|v| !v.is_null()) {
            None => None,
            Some(rs) => {
                let ty = rs
                    .get("rope_type")
                    .or_else(|| rs.get("type"))
                    .and_then(|v| v.as_str())
                    .unwrap_or("");
                match ty {
                    "llama3" => Some(Llama3RopeScaling {
                        factor: f64_field(rs, "factor")?,
                        low_freq_factor: f64_field(rs, "low_freq_factor")?,
                        high_freq_factor: f64_field(rs, "high_freq_factor")?,
                        original_max_position_embeddings: usize_field(
                            rs,
                            "original_max_position_embeddings",
                        )?,
                    }),
                    "default" => None,
                    other => {
                        return Err(Error::Config(format!(
                            "rope_scaling type `{other}` is not supported (llama3)"
                        )))
                    }
                }
            }
        };
        let qkv_bias = arch == Arch::Qwen2
            || opt_field(&j, "attention_bias", false, Json::as_bool, "true or false")?;
        ModelConfig {
            arch,
            hidden_size,
            intermediate_size: usize_field(&j, "intermediate_size")?,
            num_layers: usize_field(&j, "num_hidden_layers")?,
            num_heads,
            num_kv_heads,
            head_dim,
            vocab_size: usize_field(&j, "vocab_size")?,
            rms_norm_eps: opt_field(&j, "rms_norm_eps", 1e-6, Json::as_f64, "a number")? as f32,
            rope_theta: opt_field(&j, "rope_theta", 10000.0, Json::as_f64, "a number")?,
            rope_scaling,
            max_position_embeddings: opt_field(
                &j,
                "max_position_embeddings",
                4096,
                Json::as_u64,
                "a non-negative integer",
            )?
            .try_into()
            .unwrap_or(usize::MAX),
            tie_word_embeddings: opt_field(
                &j,
                "tie_word_embeddings",
                false,
                Json::as_bool,
                "true or false",
            )?,
            qkv_bias,
            bos_token_id: token_ids(j.get("bos_token_id")).first().copied(),
            eos_token_ids: token_ids(j.get("eos_token_id")),
            hadamard: OnlineHadamard::NONE,
            lm_head: LmHead::Dense,
        }
        .validate()
    }

    /// Read the hyper-parameters from GGUF metadata. `tie_word_embeddings` is inferred from the
    /// absence of an `output.weight` tensor, as llama.cpp does.
    pub fn from_gguf(g: &GgufFile) -> Result<Self> {
        let arch_name = g.get_str("general.architecture")?;
        let arch = match arch_name {
            "llama" => Arch::Llama,
            "qwen2" => Arch::Qwen2,
            other => {
                return Err(Error::Config(format!(
                    "GGUF architecture `{other}` is not supported (llama, qwen2)"
                )))
            }
        };
        let k = |s: &str| format!("{arch_name}.{s}");
        let get = |s: &str| g.get_u64(&k(s)).map(|v| v as usize);
        let hidden_size = get("embedding_length")?;
        let num_heads = get("attention.head_count")?;
        // a key that is present must be read as what it claims; only absence takes a default
        let get_or = |s: &str, default: usize| match g.get(&k(s)) {
            Some(_) => get(s),
            None => Ok(default),
        };
        let num_kv_heads = get_or("attention.head_count_kv", num_heads)?;
        let head_dim = get_or("attention.key_length", hidden_size / num_heads.max(1))?;
        let vocab_size = match g.get(&k("vocab_size")) {
            Some(_) => get("vocab_size")?,
            None => g.get_str_array("tokenizer.ggml.tokens")?.len(),
        };
        let rope_scaling = match g.get(&k("rope.scaling.type")).and_then(|v| v.as_str()) {
            None | Some("none") => None,
            Some(other) => {
                return Err(Error::Config(format!(
                    "GGUF rope scaling `{other}` is not supported"
                )))
            }
        };
        let eos = g
            .get_u64("tokenizer.ggml.eos_token_id")
            .ok()
            .map(|v| v as u32);
        ModelConfig {
            arch,
            hidden_size,
            intermediate_size: get("feed_forward_length")?,
            num_layers: get("block_count")?,
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
            qkv_bias: arch == Arch::Qwen2,
            bos_token_id: g
                .get_u64("tokenizer.ggml.bos_token_id")
                .ok()
                .map(|v| v as u32),
            eos_token_ids: eos.into_iter().collect(),
            hadamard: OnlineHadamard::NONE,
            lm_head: LmHead::Dense,
        }
        .validate()
    }

    /// The Hugging Face `config.json` for this model.
    pub fn to_hf_json(&self, torch_dtype: &str) -> Json {
        let mut j = json!({
            "architectures": [self.arch.hf_class()],
            "model_type": self.arch.model_type(),
            "hidden_act": "silu",
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_kv_heads,
            "head_dim": self.head_dim,
            "vocab_size": self.vocab_size,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "max_position_embeddings": self.max_position_embeddings,
            "tie_word_embeddings": self.tie_word_embeddings,
            "attention_bias": self.qkv_bias,
            "torch_dtype": torch_dtype,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": match self.eos_token_ids.as_slice() {
                [one] => json!(one),
                many => json!(many),
            },
        });
        if let Some(rs) = self.rope_scaling {
            j["rope_scaling"] = json!({
                "rope_type": "llama3",
                "factor": rs.factor,
                "low_freq_factor": rs.low_freq_factor,
                "high_freq_factor": rs.high_freq_factor,
                "original_max_position_embeddings": rs.original_max_position_embeddings,
            });
        }
        j
    }

    /// RoPE inverse frequencies (head_dim / 2 of them), with Llama-3 scaling applied.
    pub fn rope_inv_freq(&self) -> Vec<f64> {
        let half = self.head_dim / 2;
        (0..half)
            .map(|i| {
                let f = 1.0 / self.rope_theta.powf(2.0 * i as f64 / self.head_dim as f64);
                match self.rope_scaling {
                    None => f,
                    Some(s) => {
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
                }
            })
            .collect()
    }
}
