//! Gemma 3 text (transformers `modeling_gemma3.py`, `Gemma3ForCausalLM`): Gemma 2's block
//! with `(1 + w)` RMSNorm over each head of q and k, five sliding-window layers to each global
//! one (`sliding_window_pattern`), and a RoPE base per layer type (`rope_local_base_freq` for
//! the sliding layers); soft-capping only where the config sets it.

use super::gemma2::GEMMA_NORMS;
use super::spec::{ArchSpec, Biases, GemmaKeys, Mlp, QkNorm, RopeLayout, Sliding};

pub const SPEC: ArchSpec = ArchSpec {
    model_type: "gemma3_text",
    hf_class: "Gemma3ForCausalLM",
    gguf: Some("gemma3"),
    norms: GEMMA_NORMS,
    qk_norm: QkNorm::PerHead,
    mlp: Mlp::GeGlu,
    act_key: "hidden_activation",
    embed_scale: true,
    biases: Biases::None,
    mlp_bias_key: false,
    sliding: Sliding::Pattern {
        pattern: 6,
        gguf_window: None,
    },
    rope: RopeLayout::PerLayerType,
    gemma_keys: Some(GemmaKeys {
        attn_softcap: None,
        final_softcap: None,
        query_pre_attn_scalar: 256.0,
        gguf_27b_layers: 62,
    }),
    default_eps: 1e-6,
    fused: false,
    default_original_max: None,
};
