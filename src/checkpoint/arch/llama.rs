//! Llama 1–3.3 and SmolLM (transformers `modeling_llama.py`): the shared block itself, with
//! `attention_bias` (q/k/v and o_proj) and `mlp_bias`.

use super::spec::{ArchSpec, Biases, Mlp, Norms, QkNorm, RopeLayout, Sliding};

pub const SPEC: ArchSpec = ArchSpec {
    model_type: "llama",
    hf_class: "LlamaForCausalLM",
    gguf: Some("llama"),
    norms: Norms::PRE,
    qk_norm: QkNorm::None,
    mlp: Mlp::SwiGlu,
    act_key: "hidden_act",
    embed_scale: false,
    biases: Biases::AttentionKey,
    mlp_bias_key: true,
    sliding: Sliding::None,
    rope: RopeLayout::Shared,
    gemma_keys: None,
    default_eps: 1e-6,
    fused: false,
    default_original_max: None,
};
