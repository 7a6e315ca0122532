//! What an architecture declares about itself: how its decoder block differs from the shared
//! one (pre-RMSNorm, RoPE, grouped-query attention, SwiGLU — Llama's), which config keys it
//! reads, and what it is called in HF configs and GGUF files.

/// An architecture's differences from the shared block ([`super::Arch::spec`]).
#[derive(Debug)]
pub struct ArchSpec {
    /// HF `model_type`.
    pub model_type: &'static str,
    /// HF `architectures[0]` written back into config.json.
    pub hf_class: &'static str,
    /// GGUF `general.architecture` as llama.cpp's converter writes it, where ferroq reads it.
    pub gguf: Option<&'static str>,
    pub norms: Norms,
    pub qk_norm: QkNorm,
    pub mlp: Mlp,
    /// The config key naming the MLP activation.
    pub act_key: &'static str,
    /// Token embeddings scaled by √hidden_size before the first block (Gemma).
    pub embed_scale: bool,
    pub biases: Biases,
    /// Whether `mlp_bias` puts biases on gate/up/down (Llama).
    pub mlp_bias_key: bool,
    pub sliding: Sliding,
    pub rope: RopeLayout,
    /// Reads `query_pre_attn_scalar`, `attn_logit_softcapping` and `final_logit_softcapping`
    /// with these defaults (Gemma 2 / 3); elsewhere those keys are refused.
    pub gemma_keys: Option<GemmaKeys>,
    /// `rms_norm_eps` when the config has none (the config class's default).
    pub default_eps: f64,
    /// Stored with fused `qkv_proj` / `gate_up_proj` (Phi-3), split at load.
    pub fused: bool,
    /// The `original_max_position_embeddings` the config class assumes when the file has none
    /// (Phi3Config: 4096).
    pub default_original_max: Option<usize>,
}

/// Defaults of Gemma's attention keys, as the config class sets them.
#[derive(Debug)]
pub struct GemmaKeys {
    pub attn_softcap: Option<f64>,
    pub final_softcap: Option<f64>,
    /// `query_pre_attn_scalar`: scores are scaled by its inverse square root
    pub query_pre_attn_scalar: f64,
    /// GGUF keeps no `query_pre_attn_scalar`: llama.cpp takes head_dim, except for the 27B
    /// model (this many layers), whose scalar is hidden_size / heads.
    pub gguf_27b_layers: usize,
}

/// The RMSNorms of a block, by HF module name under `model.layers.N.` (None: not there).
#[derive(Debug)]
pub struct Norms {
    /// On the residual stream before attention; None: q/k/v read the stream itself (OLMo 2).
    pub pre_attn: Option<&'static str>,
    /// On the attention output before it joins the stream (Gemma, OLMo 2).
    pub post_attn: Option<&'static str>,
    /// On the stream before the MLP.
    pub pre_mlp: Option<&'static str>,
    /// On the MLP output before it joins the stream.
    pub post_mlp: Option<&'static str>,
    /// The norm scales by (1 + w) instead of w (Gemma's RMSNorm); the model adds the 1 at load.
    pub unit_offset: bool,
}

impl Norms {
    /// Llama's two pre-norms.
    pub const PRE: Norms = Norms {
        pre_attn: Some("input_layernorm"),
        post_attn: None,
        pre_mlp: Some("post_attention_layernorm"),
        post_mlp: None,
        unit_offset: false,
    };
}

/// RMSNorm on q and k after their projections, before RoPE.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QkNorm {
    None,
    /// over each head (weights of head_dim: Qwen3, Gemma 3)
    PerHead,
    /// over all of q and all of k (weights of q_dim and kv_dim: OLMo 2)
    Full,
}

/// The gated MLP: down(act(gate(x)) · up(x)).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mlp {
    /// SiLU (`silu`): SwiGLU
    SwiGlu,
    /// PyTorch's tanh-approximated GELU (`gelu_pytorch_tanh`): GeGLU
    GeGlu,
}

impl Mlp {
    /// The activation's name in HF configs.
    pub fn hf_name(self) -> &'static str {
        match self {
            Mlp::SwiGlu => "silu",
            Mlp::GeGlu => "gelu_pytorch_tanh",
        }
    }
}

/// Where linear biases come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Biases {
    /// none, whatever the config says (Mistral, Gemma, Phi-3)
    None,
    /// `attention_bias` puts them on q/k/v and o_proj (Llama, Qwen3, OLMo 2)
    AttentionKey,
    /// always on q/k/v, never on o_proj (Qwen2)
    Qkv,
}

/// Which layers attend within `sliding_window`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sliding {
    /// none: the key is ignored, as the modeling file ignores it (Llama, OLMo 2)
    None,
    /// every layer when the window is set (Mistral, Phi-3)
    Every,
    /// with `use_sliding_window`, the layers `layer_types` marks, by default those from
    /// `max_window_layers` on; window 4096 when the key is absent (Qwen2 / Qwen3)
    Qwen,
    /// the layers `layer_types` marks, by default all but every `pattern`-th
    /// (Gemma 2: 2, Gemma 3: `sliding_window_pattern`, 6 when absent); window 4096 when absent.
    /// In a GGUF without `attention.sliding_window`, llama.cpp takes `gguf_window`.
    Pattern {
        pattern: usize,
        gguf_window: Option<usize>,
    },
}

/// How RoPE settings are laid out in the config.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RopeLayout {
    /// one set for every layer
    Shared,
    /// per layer type (Gemma 3): `rope_parameters.full_attention` / `sliding_attention`, or
    /// the legacy `rope_theta` (+ `rope_scaling`) for full layers and `rope_local_base_freq`
    /// for sliding ones
    PerLayerType,
}
