//! The block Walsh–Hadamard transform behind online rotation (QuaRot; QuIP#'s incoherence).
//!
//! - For an orthonormal H, `W x = (W H)(Hᵀ x)`: weights rotate once offline, activations on the
//!   fly; exact in float, but a few outlier channels spread over a block, so per-token int8
//!   quantization of the rotated activation loses far less.
//! - H is block-diagonal with Sylvester blocks of a power-of-two size b, scaled by 1/√b: symmetric
//!   and its own inverse, so one fast transform (b·log2 b additions) serves activations and
//!   weight rows.
//! - Which inputs rotate, with which block, is `checkpoint::site::OnlineHadamard`.

use crate::error::{Error, Result};
use crate::tensor::HostTensor;

/// Largest block a site gets: past this the transform stops paying for itself in spreading.
pub const MAX_BLOCK: usize = 4096;
/// Smaller blocks spread an outlier too little to be worth a pass over the activations.
pub const MIN_BLOCK: usize = 8;

/// The block used for an input of `dim` channels: its largest power-of-two divisor, capped;
/// `None` when that is below `MIN_BLOCK`.
pub fn block_for(dim: usize) -> Option<usize> {
    if dim == 0 {
        return None;
    }
    let b = (1usize << dim.trailing_zeros()).min(MAX_BLOCK);
    (b >= MIN_BLOCK).then_some(b)
}

/// In place: x (rows of whole blocks) ← blockdiag(H_b) x, H_b = Sylvester Hadamard / √b.
/// `x.len()` must be a multiple of `block` (a power of two); callers check.
pub fn fwht(x: &mut [f32], block: usize) {
    let norm = 1.0 / (block as f32).sqrt();
    for blk in x.chunks_exact_mut(block) {
        let mut h = 1;
        while h < block {
            // butterflies between the two halves of every 2h-span; the inner loop vectorises
            for span in blk.chunks_exact_mut(2 * h) {
                let (a, b) = span.split_at_mut(h);
                for (u, v) in a.iter_mut().zip(b.iter_mut()) {
                    let (s, d) = (*u + *v, *u - *v);
                    *u = s;
                    *v = d;
                }
            }
            h *= 2;
        }
        blk.iter_mut().for_each(|v| *v *= norm);
    }
}

/// W ← W·H for a `[out, in]` weight (every row rotated), so that `(W H)(H x) = W x`.
pub fn rotate_columns(w: &mut HostTensor, block: usize) -> Result<()> {
    let [_, k] = w.shape[..] else {
        return Err(Error::InvalidArgument(format!(
            "hadamard: weight of shape {:?} is not 2-D",
            w.shape
        )));
    };
    if !block.is_power_of_two() || !k.is_multiple_of(block) {
        return Err(Error::InvalidArgument(format!(
            "hadamard block {block} does not divide in_features {k}"
        )));
    }
    let mut v = w.to_f32_vec();
    // rows are whole blocks, so one pass over the flat buffer rotates every row
    fwht(&mut v, block);
    let rotated = HostTensor::from_f32(w.shape.clone(), v)?;
    *w = rotated.to_dtype(w.dtype());
    Ok(())
}
