//! Qwen2 / 2.5 (transformers `modeling_qwen2.py`): the shared block with fixed biases on q/k/v
//! and optional sliding windows on the upper layers.

use super::spec::{ArchSpec, Biases, Mlp, Norms, QkNorm, RopeLayout, Sliding};

pub const SPEC: ArchSpec = ArchSpec {
    model_type: "qwen2",
    hf_class: "Qwen2ForCausalLM",
    gguf: Some("qwen2"),
    norms: Norms::PRE,
    qk_norm: QkNorm::None,
    mlp: Mlp::SwiGlu,
    act_key: "hidden_act",
    embed_scale: false,
    biases: Biases::Qkv,
    mlp_bias_key: false,
    sliding: Sliding::Qwen,
    rope: RopeLayout::Shared,
    gemma_keys: None,
    default_eps: 1e-6,
    fused: false,
    default_original_max: None,
};
