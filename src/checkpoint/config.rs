//! Model hyper-parameters of the Llama family, from HF `config.json` or GGUF metadata.
//!
//! - Llama 1–3.3, Mistral, Qwen2 / 2.5, SmolLM; written back as `config.json` by `ferroq convert`.
//! - Read as transformers 5 reads them: `rope_parameters`, or the older `rope_theta` +
//!   `rope_scaling` (which win when both are there); RoPE types in [`super::rope`].
//! - Fields the model cannot honour are errors here, not silent misbehaviour later: a key that
//!   changes the math and is not implemented is refused by name.

use crate::checkpoint::gguf::GgufFile;
pub use crate::checkpoint::rope::{Llama3RopeScaling, RopeScaling};
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
    /// Llama block with RMSNorm over each head of q and k before RoPE (QK-norm).
    Qwen3,
    /// Llama block stored with fused `qkv_proj` and `gate_up_proj` (Phi-3 / 3.5 / 4), split at
    /// load (`checkpoint::fused`); a sliding window on every layer when the config sets one.
    Phi3,
}

impl Arch {
    fn hf_class(self) -> &'static str {
        match self {
            Arch::Llama => "LlamaForCausalLM",
            Arch::Mistral => "MistralForCausalLM",
            Arch::Qwen2 => "Qwen2ForCausalLM",
            Arch::Qwen3 => "Qwen3ForCausalLM",
            Arch::Phi3 => "Phi3ForCausalLM",
        }
    }
    fn model_type(self) -> &'static str {
        match self {
            Arch::Llama => "llama",
            Arch::Mistral => "mistral",
            Arch::Qwen2 => "qwen2",
            Arch::Qwen3 => "qwen3",
            Arch::Phi3 => "phi3",
        }
    }

    /// RMSNorm over each head of q and k after their projections (`self_attn.q_norm`, `k_norm`).
    pub fn qk_norm(self) -> bool {
        self == Arch::Qwen3
    }

    /// Whether `attention_bias` puts biases on q/k/v and o_proj (transformers' Llama and
    /// Qwen3; Mistral has none and Qwen2 fixed q/k/v ones, whatever the key says).
    fn reads_attention_bias(self) -> bool {
        matches!(self, Arch::Llama | Arch::Qwen3)
    }
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
    pub rope_scaling: Option<RopeScaling>,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    /// Bias on q_proj, k_proj, v_proj (Qwen2, or Llama with `attention_bias`).
    pub qkv_bias: bool,
    /// Bias on o_proj (Llama with `attention_bias`).
    pub o_bias: bool,
    /// Biases on gate_proj, up_proj, down_proj (Llama's `mlp_bias`).
    pub mlp_bias: bool,
    /// Sliding-window attention span (transformers' `sliding_window`) for the layers marked in
    /// `sliding_layers`; None: every layer attends to the whole context.
    pub sliding_window: Option<usize>,
    /// Per layer: whether it uses the sliding window (all false without one).
    pub sliding_layers: Vec<bool>,
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

/// A layer count, bounded before per-layer settings are allocated from it.
fn layer_count(n: usize) -> Result<usize> {
    if n == 0 || n > MAX_LAYERS {
        return Err(Error::Config(format!(
            "`num_hidden_layers` is {n}: it must be between 1 and {MAX_LAYERS}"
        )));
    }
    Ok(n)
}

/// Keys of HF configs (of any family) that change the math and are not implemented for
/// `arch`: (key, whether its value is the neutral one). A key present with a non-neutral value is
/// refused by name rather than ignored.
fn refuse_unimplemented(j: &Json, arch: Arch) -> Result<()> {
    /// The value of a key that leaves the math as the shared block computes it.
    enum Neutral {
        /// only absent or null
        Absent,
        False,
        One,
    }
    const KEYS: [(&str, Neutral); 10] = [
        ("attn_logit_softcapping", Neutral::Absent),
        ("final_logit_softcapping", Neutral::Absent),
        ("query_pre_attn_scalar", Neutral::Absent),
        ("use_qk_norm", Neutral::False),
        ("qk_norm", Neutral::False),
        ("embedding_multiplier", Neutral::One),
        ("logits_scaling", Neutral::One),
        ("residual_multiplier", Neutral::One),
        ("attention_multiplier", Neutral::Absent),
        ("no_rope_layers", Neutral::Absent),
    ];
    for (key, neutral) in KEYS {
        let Some(v) = j.get(key).filter(|v| !v.is_null()) else {
            continue;
        };
        let harmless = match neutral {
            Neutral::Absent => false,
            Neutral::False => v.as_bool() == Some(false),
            Neutral::One => v.as_f64() == Some(1.0),
        };
        if !harmless {
            return Err(Error::Config(format!(
                "config.json `{key}` = {v} changes the model's math and is not implemented for \
                 model_type `{}`",
                arch.model_type()
            )));
        }
    }
    // Llama's pretraining_tp > 1 splits its linears in pretraining only: the same math
    Ok(())
}

/// (rope_theta, scaling) as transformers 5 resolves them: `rope_scaling` if given (legacy,
/// with the top-level `rope_theta`), else `rope_parameters`; per-layer-type RoPE refused.
fn rope_settings(
    j: &Json,
    arch: Arch,
    head_dim: usize,
    max_pos: usize,
) -> Result<(f64, Option<RopeScaling>)> {
    let dict = |key: &str| -> Result<Option<serde_json::Map<String, Json>>> {
        match j.get(key) {
            None | Some(Json::Null) => Ok(None),
            Some(Json::Object(m)) if m.is_empty() => Ok(None),
            Some(Json::Object(m)) => Ok(Some(m.clone())),
            Some(v) => Err(Error::Config(format!(
                "config.json `{key}` must be an object, got {v}"
            ))),
        }
    };
    let mut rp = match dict("rope_scaling")? {
        Some(m) => m,
        None => dict("rope_parameters")?.unwrap_or_default(),
    };
    if rp.contains_key("full_attention") || rp.contains_key("sliding_attention") {
        return Err(Error::Config(
            "per-layer-type `rope_parameters` are not supported for this model_type".into(),
        ));
    }
    for key in ["rope_theta", "partial_rotary_factor"] {
        if let Some(v) = j.get(key).filter(|v| !v.is_null()) {
            rp.entry(key).or_insert_with(|| v.clone());
        }
    }
    // Phi3Config always has an original_max_position_embeddings (4096 when the file has none),
    // and transformers prefers it to the one inside the RoPE dict
    let mut top = j.clone();
    if arch == Arch::Phi3 && top.get("original_max_position_embeddings").is_none() {
        top["original_max_position_embeddings"] = json!(4096);
    }
    crate::checkpoint::rope::parse(&Json::Object(rp), &top, head_dim, max_pos)
}

/// (sliding_window, which layers use it). Mistral, Phi-3: every layer when `sliding_window` is set.
/// Qwen2 / Qwen3: only with `use_sliding_window`, on the layers `layer_types` marks (by default
/// those from `max_window_layers` on). Llama has none.
fn sliding(j: &Json, arch: Arch, layers: usize) -> Result<(Option<usize>, Vec<bool>)> {
    let window = opt_field(
        j,
        "sliding_window",
        None,
        |v| v.as_u64().map(Some),
        "an integer",
    )?;
    let window = match arch {
        Arch::Llama => None,
        Arch::Mistral | Arch::Phi3 => window,
        Arch::Qwen2 | Arch::Qwen3 => {
            let on = opt_field(
                j,
                "use_sliding_window",
                false,
                Json::as_bool,
                "true or false",
            )?;
            // their config classes default the window to 4096 when the key is absent (null: none)
            let absent = !j
                .as_object()
                .is_some_and(|m| m.contains_key("sliding_window"));
            let window = if absent { Some(4096) } else { window };
            window.filter(|_| on)
        }
    };
    let Some(w) = window else {
        return Ok((None, vec![false; layers]));
    };
    let w = usize::try_from(w).unwrap_or(usize::MAX);
    let kinds = match j.get("layer_types").filter(|v| !v.is_null()) {
        Some(v) => {
            let list = v.as_array().ok_or_else(|| {
                Error::Config(format!("config.json `layer_types` must be a list, got {v}"))
            })?;
            if list.len() != layers {
                return Err(Error::Config(format!(
                    "config.json `layer_types` lists {} layers, num_hidden_layers is {layers}",
                    list.len()
                )));
            }
            list.iter()
                .map(|t| match t.as_str() {
                    Some("full_attention") => Ok(false),
                    Some("sliding_attention") => Ok(true),
                    _ => Err(Error::Config(format!(
                        "layer type {t} is not supported (full_attention, sliding_attention)"
                    ))),
                })
                .collect::<Result<Vec<bool>>>()?
        }
        None if matches!(arch, Arch::Qwen2 | Arch::Qwen3) => {
            let from = opt_field(j, "max_window_layers", 28, Json::as_u64, "an integer")?;
            (0..layers).map(|l| l as u64 >= from).collect()
        }
        None => vec![true; layers],
    };
    // Mistral and Phi-3 apply their window to every layer whatever layer_types says
    let kinds = if matches!(arch, Arch::Mistral | Arch::Phi3) {
        vec![true; layers]
    } else {
        kinds
    };
    Ok((Some(w), kinds))
}

impl ModelConfig {
    /// The sliding window layer `l` attends within, if any.
    pub fn window(&self, layer: usize) -> Option<usize> {
        self.sliding_window
            .filter(|_| self.sliding_layers.get(layer).copied().unwrap_or(false))
    }

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
            "self_attn.q_norm.weight" | "self_attn.k_norm.weight" if self.arch.qk_norm() => {
                vec![self.head_dim]
            }
            "self_attn.q_proj.bias" => vec![qd],
            "self_attn.k_proj.bias" | "self_attn.v_proj.bias" => vec![kvd],
            "self_attn.o_proj.bias" | "mlp.down_proj.bias" => vec![dim],
            "mlp.gate_proj.weight" | "mlp.up_proj.weight" => vec![ffn, dim],
            "mlp.gate_proj.bias" | "mlp.up_proj.bias" => vec![ffn],
            // Phi-3's fused projections, as stored
            "self_attn.qkv_proj.weight" if self.arch == Arch::Phi3 => vec![qd + 2 * kvd, dim],
            "mlp.gate_up_proj.weight" if self.arch == Arch::Phi3 => vec![2 * ffn, dim],
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
        if c.sliding_window == Some(0) || c.sliding_layers.len() != c.num_layers {
            return Err(Error::Config(format!(
                "sliding_window {:?} over {} layer kinds for {} layers",
                c.sliding_window,
                c.sliding_layers.len(),
                c.num_layers
            )));
        }
        if let Some(RopeScaling::FreqFactors(f)) = &c.rope_scaling {
            if f.len() != c.head_dim / 2 || f.iter().any(|x| !(x.is_finite() && *x > 0.0)) {
                return Err(Error::Config(format!(
                    "rope_freqs holds {} factors; head_dim {} needs {} finite positive ones",
                    f.len(),
                    c.head_dim,
                    c.head_dim / 2
                )));
            }
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
            "qwen3" => Arch::Qwen3,
            "phi3" => Arch::Phi3,
            other => {
                return Err(Error::Config(format!(
                    "model_type `{other}` is not supported (llama, mistral, qwen2, qwen3, phi3)"
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
        refuse_unimplemented(&j, arch)?;
        let num_layers = layer_count(usize_field(&j, "num_hidden_layers")?)?;
        let max_position_embeddings: usize = opt_field(
            &j,
            "max_position_embeddings",
            4096,
            Json::as_u64,
            "a non-negative integer",
        )?
        .try_into()
        .unwrap_or(usize::MAX);
        let (rope_theta, rope_scaling) =
            rope_settings(&j, arch, head_dim, max_position_embeddings)?;
        let attention_bias =
            opt_field(&j, "attention_bias", false, Json::as_bool, "true or false")?;
        let mlp_bias = opt_field(&j, "mlp_bias", false, Json::as_bool, "true or false")?;
        let (sliding_window, sliding_layers) = sliding(&j, arch, num_layers)?;
        let attention_bias = arch.reads_attention_bias() && attention_bias;
        let qkv_bias = arch == Arch::Qwen2 || attention_bias;
        ModelConfig {
            arch,
            hidden_size,
            intermediate_size: usize_field(&j, "intermediate_size")?,
            num_layers,
            num_heads,
            num_kv_heads,
            head_dim,
            vocab_size: usize_field(&j, "vocab_size")?,
            rms_norm_eps: opt_field(&j, "rms_norm_eps", 1e-6, Json::as_f64, "a number")? as f32,
            rope_theta,
            rope_scaling,
            max_position_embeddings,
            tie_word_embeddings: opt_field(
                &j,
                "tie_word_embeddings",
                false,
                Json::as_bool,
                "true or false",
            )?,
            qkv_bias,
            // Qwen2's biases are q/k/v only; Llama's attention_bias covers o_proj too
            o_bias: attention_bias,
            mlp_bias: arch == Arch::Llama && mlp_bias,
            sliding_window,
            sliding_layers,
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
            "qwen3" => Arch::Qwen3,
            other => {
                return Err(Error::Config(format!(
                    "GGUF architecture `{other}` is not supported (llama, qwen2, qwen3)"
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
        // a window, or RoPE over part of the head, would change the math
        let refuse = |key: &str| {
            Err(Error::Config(format!(
                "GGUF key `{}` is not supported for `{arch_name}` (it changes the math)",
                k(key)
            )))
        };
        if g.get(&k("attention.sliding_window")).is_some() {
            return refuse("attention.sliding_window");
        }
        if get_or("rope.dimension_count", head_dim)? != head_dim {
            return refuse("rope.dimension_count");
        }
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
            sliding_window: None,
            sliding_layers: vec![false; num_layers],
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

    /// The Hugging Face `config.json` for this model: the keys transformers 4 and 5 both read
    /// (`rope_theta` + `rope_scaling`) and transformers 5's `rope_parameters`. An error where
    /// the model has no HF form (RoPE divisors that no Llama-3 setting reproduces, Llama q/k/v
    /// biases without an o_proj bias).
    pub fn to_hf_json(&self, torch_dtype: &str) -> Result<Json> {
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
            "torch_dtype": torch_dtype,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": match self.eos_token_ids.as_slice() {
                [one] => json!(one),
                many => json!(many),
            },
        });
        if self.arch.reads_attention_bias() {
            if self.qkv_bias != self.o_bias {
                return Err(Error::Config(format!(
                    "a {} config has one attention_bias for q/k/v and o_proj; this model has \
                     q/k/v biases {} and an o_proj bias {}",
                    self.arch.model_type(),
                    self.qkv_bias,
                    self.o_bias
                )));
            }
            j["attention_bias"] = json!(self.qkv_bias);
        }
        match self.arch {
            Arch::Llama => j["mlp_bias"] = json!(self.mlp_bias),
            Arch::Mistral => j["sliding_window"] = json!(self.sliding_window),
            Arch::Phi3 => {
                j["sliding_window"] = json!(self.sliding_window);
                // Phi3Config's own original_max_position_embeddings (default 4096) wins over
                // the one inside rope_scaling, so it is written where that class reads it
                if let Some(RopeScaling::LongRope(l)) = &self.rope_scaling {
                    j["original_max_position_embeddings"] =
                        json!(l.original_max_position_embeddings);
                }
            }
            Arch::Qwen2 | Arch::Qwen3 => {
                j["use_sliding_window"] = json!(self.sliding_window.is_some());
                j["sliding_window"] = json!(self.sliding_window);
                if self.sliding_window.is_some() {
                    let kinds: Vec<&str> = self
                        .sliding_layers
                        .iter()
                        .map(|&s| {
                            if s {
                                "sliding_attention"
                            } else {
                                "full_attention"
                            }
                        })
                        .collect();
                    j["layer_types"] = json!(kinds);
                    let first = self.sliding_layers.iter().position(|&s| s);
                    j["max_window_layers"] = json!(first.unwrap_or(self.num_layers));
                }
            }
        }
        let scaling = match &self.rope_scaling {
            Some(RopeScaling::FreqFactors(ff)) => {
                let s = crate::checkpoint::rope::llama3_from_factors(
                    self.rope_theta,
                    self.head_dim,
                    ff,
                )
                .ok_or_else(|| {
                    Error::Config(
                        "the GGUF's rope_freqs match no Llama-3 RoPE setting, so there is no \
                         config.json for them"
                            .into(),
                    )
                })?;
                RopeScaling::Llama3(s).to_hf()
            }
            Some(rs) => rs.to_hf(),
            None => None,
        };
        let mut params = json!({"rope_type": "default"});
        if let Some(rs) = scaling {
            params = rs.clone();
            j["rope_scaling"] = rs;
        }
        params["rope_theta"] = json!(self.rope_theta);
        j["rope_parameters"] = params;
        Ok(j)
    }

    /// RoPE inverse frequencies (head_dim / 2 of them) for a workspace of `context` positions.
    pub fn rope_inv_freq(&self, context: usize) -> Vec<f64> {
        crate::checkpoint::rope::inv_freq(
            self.rope_theta,
            self.head_dim,
            self.rope_scaling.as_ref(),
            context,
        )
    }

    /// Scale on the RoPE cos / sin tables (YaRN, LongRoPE; 1 otherwise).
    pub fn rope_attention_factor(&self) -> f64 {
        self.rope_scaling
            .as_ref()
            .map_or(1.0, RopeScaling::attention_factor)
    }
}
