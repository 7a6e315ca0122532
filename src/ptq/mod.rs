//! Post-training quantization: calibration (`calib`: samples, per-site statistics), activation
//! observers (`observer`), outlier suppression (`smooth`: SmoothQuant and its iterative and
//! flexible variants), GPTQ (`gptq`), recipes (`recipe`), the quantize flow (`pipeline`),
//! per-layer sensitivity and KL-budget fallback (`analyze`) and the compressed-tensors writer
//! (`ct_write`). Terms and formulas follow reference/quantization.md.

pub mod analyze;
pub mod calib;
pub mod ct_write;
pub mod gptq;
pub mod observer;
pub mod pipeline;
pub mod recipe;
pub mod smooth;
