//! Phi-3 / 3.5 / 4 (transformers `modeling_phi3.py`): the shared block stored with fused
//! `qkv_proj` and `gate_up_proj` (split at load, `checkpoint::fused`), LongRoPE with the
//! config class's default `original_max_position_embeddings` of 4096, a sliding window on every
//! layer when set.

use super::spec::{ArchSpec, Biases, Mlp, Norms, QkNorm, RopeLayout, Sliding};

pub const SPEC: ArchSpec = ArchSpec {
    model_type: "phi3",
    hf_class: "Phi3ForCausalLM",
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
    fused: true,
    default_original_max: Some(4096),
};
