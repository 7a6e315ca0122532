//! Model hyper-parameters of every architecture in [`super::arch`], from HF `config.json`
//! (`super::hf_config`) or GGUF metadata (here).
//!
//! - Read as transformers 5 reads them; RoPE types in [`super::rope`].
//! - Fields the model cannot honour are errors, not silent misbehaviour later: a key that
//!   changes the math and is not implemented is refused by name.

pub use crate::checkpoint::arch::Arch;
use crate::checkpoint::arch::QkNorm;
pub use crate::checkpoint::rope::{Llama3RopeScaling, RopeScaling};
use crate::checkpoint::site::{OnlineHadamard, Site};
use crate::error::{Error, Result};

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
    /// RoPE of the sliding-window layers where it differs from the others' (Gemma 3's
    /// `rope_local_base_freq`): (theta, scaling).
    pub local_rope: Option<(f64, Option<RopeScaling>)>,
    /// Gemma's `query_pre_attn_scalar`: scores are scaled by its inverse square root instead of
    /// head_dim's.
    pub query_pre_attn_scalar: Option<f64>,
    /// Attention-score soft-capping (Gemma 2's `attn_logit_softcapping`).
    pub attn_softcap: Option<f64>,
    /// Logit soft-capping (Gemma 2's `final_logit_softcapping`).
    pub final_softcap: Option<f64>,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
    /// Kept for the config written back (the embedding's padding row; no effect on the math).
    pub pad_token_id: Option<u32>,
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

/// Sizes beyond these are not a model anyone runs but a corrupt or hostile file: refused before
/// anything is allocated from them.
const MAX_LAYERS: usize = 1024;
const MAX_WIDTH: usize = 1 << 20;
const MAX_VOCAB: usize = 1 << 24;
const MAX_POSITIONS: usize = 1 << 24;

/// A layer count, bounded before per-layer settings are allocated from it.
pub(crate) fn layer_count(n: usize) -> Result<usize> {
    if n == 0 || n > MAX_LAYERS {
        return Err(Error::Config(format!(
            "`num_hidden_layers` is {n}: it must be between 1 and {MAX_LAYERS}"
        )));
    }
    Ok(n)
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
        let spec = self.arch.spec();
        let n = &spec.norms;
        let is_norm = |m: &str| {
            [n.pre_attn, n.post_attn, n.pre_mlp, n.post_mlp]
                .into_iter()
                .flatten()
                .any(|norm| m.strip_suffix(".weight") == Some(norm))
        };
        if is_norm(module) {
            return Some(vec![dim]);
        }
        Some(match module {
            "self_attn.q_proj.weight" => vec![qd, dim],
            "self_attn.k_proj.weight" | "self_attn.v_proj.weight" => vec![kvd, dim],
            "self_attn.o_proj.weight" => vec![dim, qd],
            "self_attn.q_norm.weight" | "self_attn.k_norm.weight" => {
                let full = if module.contains("q_norm") { qd } else { kvd };
                match spec.qk_norm {
                    QkNorm::None => return None,
                    QkNorm::PerHead => vec![self.head_dim],
                    QkNorm::Full => vec![full],
                }
            }
            "self_attn.q_proj.bias" => vec![qd],
            "self_attn.k_proj.bias" | "self_attn.v_proj.bias" => vec![kvd],
            "self_attn.o_proj.bias" | "mlp.down_proj.bias" => vec![dim],
            "mlp.gate_proj.weight" | "mlp.up_proj.weight" => vec![ffn, dim],
            "mlp.gate_proj.bias" | "mlp.up_proj.bias" => vec![ffn],
            // Phi-3's fused projections, as stored
            "self_attn.qkv_proj.weight" if spec.fused => vec![qd + 2 * kvd, dim],
            "mlp.gate_up_proj.weight" if spec.fused => vec![2 * ffn, dim],
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

    pub(crate) fn validate(self) -> Result<Self> {
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
        let positive = |v: Option<f64>| v.is_none_or(|x| x.is_finite() && x > 0.0);
        for (name, v) in [
            ("query_pre_attn_scalar", c.query_pre_attn_scalar),
            ("attn_logit_softcapping", c.attn_softcap),
            ("final_logit_softcapping", c.final_softcap),
            ("rope_local_base_freq", c.local_rope.as_ref().map(|r| r.0)),
        ] {
            if !positive(v) {
                return Err(Error::Config(format!(
                    "`{name}` {v:?} must be a finite positive number"
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

    /// The factor on q·k before the softmax: 1/√query_pre_attn_scalar (Gemma) or 1/√head_dim.
    pub fn attn_scale(&self) -> f32 {
        (1.0 / self
            .query_pre_attn_scalar
            .unwrap_or(self.head_dim as f64)
            .sqrt()) as f32
    }

    /// Whether layer `l` uses `local_rope` (a sliding-attention layer of a model with one).
    pub fn local_rope_at(&self, layer: usize) -> bool {
        self.local_rope.is_some() && self.sliding_layers.get(layer).copied().unwrap_or(false)
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

    /// `rope_inv_freq` and `rope_attention_factor` of the sliding-window layers' own RoPE
    /// (`local_rope`), if the model has one.
    pub fn local_rope_tables(&self, context: usize) -> Option<(Vec<f64>, f64)> {
        let (theta, scaling) = self.local_rope.as_ref()?;
        let inv =
            crate::checkpoint::rope::inv_freq(*theta, self.head_dim, scaling.as_ref(), context);
        Some((
            inv,
            scaling.as_ref().map_or(1.0, RopeScaling::attention_factor),
        ))
    }
}
