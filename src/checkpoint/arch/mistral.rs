//! Mistral (transformers `modeling_mistral.py`): the shared block with a sliding window on
//! every layer when `sliding_window` is set; no biases.

use super::spec::{ArchSpec, Biases, Mlp, Norms, QkNorm, RopeLayout, Sliding};

pub const SPEC: ArchSpec = ArchSpec {
    model_type: "mistral",
    hf_class: "MistralForCausalLM",
    gguf: None,
    norms: Norms::PRE,
    qk_norm: QkNorm::None,
    mlp: Mlp::SwiGlu,
    act_key: "hidden_act",
    embed_scale: false,
    biases: Biases::None,
    mlp_bias_key: false,
    sliding: Sliding::Every,
    rope: RopeLayout::Shared,
    gemma_keys: None,
    default_eps: 1e-6,
    fused: false,
    default_original_max: None,
};
