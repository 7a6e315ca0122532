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
/// `x.len()` must be a multiple of `block` (a power of two); callers check. AVX-512 where the
/// CPU has it (blocks of 16 or more), bit-identical to `fwht_portable`: the same butterflies in
/// the same stage order, float addition being commutative.
pub fn fwht(x: &mut [f32], block: usize) {
    #[cfg(target_arch = "x86_64")]
    if block >= 16 && is_x86_feature_detected!("avx512f") {
        // SAFETY: AVX-512F checked; block is a power of two ≥ 16, so whole 16-lane vectors
        // tile every block, and chunks_exact keeps every access inside x.
        unsafe { avx512::fwht(x, block) };
        return;
    }
    fwht_portable(x, block)
}

/// The scalar transform `fwht` is held to.
pub fn fwht_portable(x: &mut [f32], block: usize) {
    let norm = 1.0 / (block as f32).sqrt();
    for blk in x.chunks_exact_mut(block) {
        let mut h = 1;
        while h < block {
            // butterflies between the two halves of every 2h-span
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

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    /// `super::fwht` for blocks of 16 or more: stages h = 1, 2, 4, 8 inside each vector (the
    /// partner lane i ^ h brought over by a permute; lanes with bit h set keep the difference),
    /// then whole-vector butterflies.
    ///
    /// # Safety
    /// CPU has AVX-512F; block a power of two ≥ 16.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn fwht(x: &mut [f32], block: usize) {
        let norm = _mm512_set1_ps(1.0 / (block as f32).sqrt());
        for blk in x.chunks_exact_mut(block) {
            for c in blk.chunks_exact_mut(16) {
                let p = c.as_mut_ptr();
                let mut v = _mm512_loadu_ps(p);
                macro_rules! stage {
                    ($partner:expr, $mask:expr) => {{
                        let w = $partner;
                        // low lane: u + w; high lane: u − w with u the partner (the low one)
                        v = _mm512_mask_blend_ps($mask, _mm512_add_ps(v, w), _mm512_sub_ps(w, v));
                    }};
                }
                stage!(_mm512_permute_ps::<0b10_11_00_01>(v), 0xAAAA);
                stage!(_mm512_permute_ps::<0b01_00_11_10>(v), 0xCCCC);
                stage!(_mm512_shuffle_f32x4::<0b10_11_00_01>(v, v), 0xF0F0);
                stage!(_mm512_shuffle_f32x4::<0b01_00_11_10>(v, v), 0xFF00);
                _mm512_storeu_ps(p, v);
            }
            let mut h = 16;
            while h < block {
                for span in blk.chunks_exact_mut(2 * h) {
                    let p = span.as_mut_ptr();
                    for e in (0..h).step_by(16) {
                        let (a, b) = (_mm512_loadu_ps(p.add(e)), _mm512_loadu_ps(p.add(h + e)));
                        _mm512_storeu_ps(p.add(e), _mm512_add_ps(a, b));
                        _mm512_storeu_ps(p.add(h + e), _mm512_sub_ps(a, b));
                    }
                }
                h *= 2;
            }
            for c in blk.chunks_exact_mut(16) {
                let p = c.as_mut_ptr();
                _mm512_storeu_ps(p, _mm512_mul_ps(_mm512_loadu_ps(p), norm));
            }
        }
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
