//! OLMo 2 (transformers `modeling_olmo2.py`): no norm before attention or the MLP — each
//! reads the residual stream — but one on each output before it joins the stream; RMSNorm over
//! all of q and all of k (not per head) before RoPE.

use super::spec::{ArchSpec, Biases, Mlp, Norms, QkNorm, RopeLayout, Sliding};

pub const SPEC: ArchSpec = ArchSpec {
    model_type: "olmo2",
    hf_class: "Olmo2ForCausalLM",
    gguf: Some("olmo2"),
    norms: Norms {
        pre_attn: None,
        post_attn: Some("post_attention_layernorm"),
        pre_mlp: None,
        post_mlp: Some("post_feedforward_layernorm"),
        unit_offset: false,
    },
    qk_norm: QkNorm::Full,
    mlp: Mlp::SwiGlu,
    act_key: "hidden_act",
    embed_scale: false,
    biases: Biases::AttentionKey,
    mlp_bias_key: false,
    sliding: Sliding::None,
    rope: RopeLayout::Shared,
    gemma_keys: None,
    default_eps: 1e-5,
    fused: false,
    default_original_max: None,
};
