//! RMSNorm on the CPU (Zhang & Sennrich 2019, as HF's LlamaRMSNorm).
//!
//! - The sum of squares runs in the dense kernels' `dot` order, so a row's result does not depend
//!   on its batch.

use super::dense;

/// One RMSNorm row: out = x * rsqrt(mean(x²) + eps) * w.
pub fn rms_norm_row(out: &mut [f32], x: &[f32], w: &[f32], eps: f32) {
    let ss = dense::dot(x, x);
    let scale = 1.0 / (ss / x.len() as f32 + eps).sqrt();
    for ((o, &v), &g) in out.iter_mut().zip(x).zip(w) {
        *o = v * scale * g;
    }
}
