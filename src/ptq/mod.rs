//! Post-training quantization: from a float model and a recipe to a quantized checkpoint.
//!
//! - `calib` (samples, statistics), `observer` (static scales), `smooth` (SmoothQuant family),
//!   `gptq`, `recipe`, `pipeline` (the quantize flow), `analyze` (sensitivity, KL-budget
//!   fallback), `ct_write` (compressed-tensors out).
//! - Terms and formulas follow reference/quantization.md.

pub mod analyze;
pub mod calib;
pub mod ct_write;
pub mod fuse;
pub mod gptq;
pub mod observer;
pub mod pipeline;
pub mod recipe;
pub mod smooth;
