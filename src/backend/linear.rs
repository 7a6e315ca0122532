//! `Linear`: one projection of the model, its weight a closed enum the backend dispatches on.
//!
//! - Dense and quantized weights go through the same model code (design.md: "a `Linear` owns a
//!   weight enum ... no `quantized_llama.rs` twin").
//! - The quantized variant's format (INT8 / FP8 / INT4) is `quant::QuantWeight`; `act` says how
//!   the input is quantized (none, static, dynamic, pd_mix).

use super::memory::DeviceMemory;
use crate::quant::ActSpec;
use std::sync::Arc;

/// The weight of a linear layer, `[out_features, in_features]`.
pub enum LinearWeight<B: DeviceMemory> {
    /// Dense float weight in F32, F16 or BF16. Shared (`Arc`) so a tied LM head and the token
    /// embedding are one copy.
    Dense(Arc<B::Matrix>),
    /// INT8 / FP8 / INT4 weight (`quant::QuantWeight`) in the backend's layout.
    Quant(B::QMatrix),
}

pub struct Linear<B: DeviceMemory> {
    /// HF module name, e.g. `model.layers.3.self_attn.q_proj` (used by recipes and errors).
    pub name: String,
    pub in_features: usize,
    pub out_features: usize,
    pub weight: LinearWeight<B>,
    /// (out_features)
    pub bias: Option<B::Buf>,
    /// How the input is quantized (ignored by dense weights).
    pub act: ActSpec,
}
