//! Gemma 2 (transformers `modeling_gemma2.py`): norms before and after attention and the MLP,
//! all `(1 + w)`; embeddings scaled by √hidden_size; GeGLU; scores scaled by
//! `query_pre_attn_scalar`^-½ and soft-capped (`attn_logit_softcapping`), logits soft-capped
//! (`final_logit_softcapping`); sliding-window and global layers alternating.

use super::spec::{ArchSpec, Biases, GemmaKeys, Mlp, Norms, QkNorm, RopeLayout, Sliding};

/// Gemma's four norms per block (Gemma 2 and 3).
pub const GEMMA_NORMS: Norms = Norms {
    pre_attn: Some("input_layernorm"),
    post_attn: Some("post_attention_layernorm"),
    pre_mlp: Some("pre_feedforward_layernorm"),
    post_mlp: Some("post_feedforward_layernorm"),
    unit_offset: true,
};

pub const SPEC: ArchSpec = ArchSpec {
    model_type: "gemma2",
    hf_class: "Gemma2ForCausalLM",
    gguf: Some("gemma2"),
    norms: GEMMA_NORMS,
    qk_norm: QkNorm::None,
    mlp: Mlp::GeGlu,
    act_key: "hidden_activation",
    embed_scale: true,
    biases: Biases::None,
    mlp_bias_key: false,
    sliding: Sliding::Pattern {
        pattern: 2,
        gguf_window: Some(4096),
    },
    rope: RopeLayout::Shared,
    gemma_keys: Some(GemmaKeys {
        attn_softcap: Some(50.0),
        final_softcap: Some(30.0),
        query_pre_attn_scalar: 256.0,
        gguf_27b_layers: 46,
    }),
    default_eps: 1e-6,
    fused: false,
    default_original_max: None,
};
