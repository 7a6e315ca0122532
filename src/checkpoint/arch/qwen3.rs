//! Qwen3 (transformers `modeling_qwen3.py`): the shared block with RMSNorm over each head of q
//! and k before RoPE, `attention_bias` as Llama's, Qwen2's sliding-window rule.

use super::spec::{ArchSpec, Biases, Mlp, Norms, QkNorm, RopeLayout, Sliding};

pub const SPEC: ArchSpec = ArchSpec {
    model_type: "qwen3",
    hf_class: "Qwen3ForCausalLM",
    gguf: Some("qwen3"),
    norms: Norms::PRE,
    qk_norm: QkNorm::PerHead,
    mlp: Mlp::SwiGlu,
    act_key: "hidden_act",
    embed_scale: false,
    biases: Biases::AttentionKey,
    mlp_bias_key: false,
    sliding: Sliding::Qwen,
    rope: RopeLayout::Shared,
    gemma_keys: None,
    default_eps: 1e-6,
    fused: false,
    default_original_max: None,
};
