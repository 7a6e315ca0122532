//! `Linear`: one projection of the model, owning its weight as a closed enum so dense and
//! quantized weights go through the same model code and the backend dispatches on the variant
//! (design.md: "a `Linear` owns a weight enum ... no `quantized_llama.rs` twin"). Today the enum
//! has the dense variant; the quantization engine adds INT8 / FP8 / INT4 variants here.

use crate::backend::Backend;
use std::sync::Arc;

/// The weight of a linear layer, `[out_features, in_features]`.
pub enum LinearWeight<B: Backend> {
    /// Dense float weight in F32, F16 or BF16. Shared (`Arc`) so a tied LM head and the token
    /// embedding are one copy.
    Dense(Arc<B::Matrix>),
}

pub struct Linear<B: Backend> {
    /// HF module name, e.g. `model.layers.3.self_attn.q_proj` (used by recipes and errors).
    pub name: String,
    pub in_features: usize,
    pub out_features: usize,
    pub weight: LinearWeight<B>,
    /// (out_features)
    pub bias: Option<B::Buf>,
}
