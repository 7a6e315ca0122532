//! Per-row int8 activation quantization on AVX-512, bit for bit `quant::quantize_rows_i8`.
//!
//! - The W8A8 linears' input side: the same exact min / max, `int8_params`, product x · (1/s),
//!   round-half-even, zero point added in float, clamp and truncating narrow as the reference.
//! - `vrndscaleps` equals the reference's magic-number rounding below 2²² and larger values
//!   saturate to the same clamp.
//! - A NaN input gives 0, as the reference's `NaN as i8`: the clamps are ordered so the NaN
//!   reaches the conversion, whose "integer indefinite" narrows to 0.

use crate::quant;

/// Whether the AVX-512 quantizer runs here.
pub fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bw")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// As `quant::quantize_rows_i8`, on AVX-512 where present.
#[allow(clippy::too_many_arguments)]
pub fn quantize_rows_i8(
    x: &[f32],
    m: usize,
    k: usize,
    symmetric: bool,
    fixed: Option<(f32, i32)>,
    q: &mut [i8],
    scale: &mut [f32],
    zp: &mut [i32],
) {
    if !available() {
        return quant::quantize_rows_i8(x, m, k, symmetric, fixed, q, scale, zp);
    }
    assert!(x.len() >= m * k && q.len() >= m * k && scale.len() >= m && zp.len() >= m);
    for i in 0..m {
        let row = &x[i * k..(i + 1) * k];
        #[cfg(target_arch = "x86_64")]
        // SAFETY: AVX-512 F/BW detected; row and q hold k elements at i·k.
        unsafe {
            let (s, z) = match fixed {
                Some(sz) => sz,
                None => {
                    let (lo, hi) = imp::min_max(row);
                    quant::int8_params(lo, hi, symmetric)
                }
            };
            let inv = if s > 0.0 { 1.0 / s } else { 0.0 };
            let qmin = if symmetric { -127.0 } else { -128.0 };
            imp::quantize(row, &mut q[i * k..(i + 1) * k], inv, z as f32, qmin);
            scale[i] = s;
            zp[i] = z;
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod imp {
    use std::arch::x86_64::*;

    /// (min(0, row), max(0, row)), as the reference's fold from 0.
    ///
    /// # Safety
    /// CPU has AVX-512F.
    #[target_feature(enable = "avx512f,avx512bw")]
    pub unsafe fn min_max(row: &[f32]) -> (f32, f32) {
        let (mut lo, mut hi) = (_mm512_setzero_ps(), _mm512_setzero_ps());
        let mut t = 0;
        while t < row.len() {
            let live = (row.len() - t).min(16);
            let mask: __mmask16 = if live == 16 { 0xffff } else { (1 << live) - 1 };
            // masked-off lanes read as 0, which the fold from 0 already includes
            let v = _mm512_maskz_loadu_ps(mask, row.as_ptr().add(t));
            lo = _mm512_min_ps(lo, v);
            hi = _mm512_max_ps(hi, v);
            t += 16;
        }
        (_mm512_reduce_min_ps(lo), _mm512_reduce_max_ps(hi))
    }

    /// q = clamp(round_even(x · inv) + zp, qmin, 127) as i8.
    ///
    /// # Safety
    /// CPU has AVX-512 F/BW; q.len() == row.len().
    #[target_feature(enable = "avx512f,avx512bw")]
    pub unsafe fn quantize(row: &[f32], q: &mut [i8], inv: f32, zp: f32, qmin: f32) {
        let (inv, zp) = (_mm512_set1_ps(inv), _mm512_set1_ps(zp));
        let (lo, hi) = (_mm512_set1_ps(qmin), _mm512_set1_ps(127.0));
        let mut t = 0;
        while t < row.len() {
            let live = (row.len() - t).min(16);
            let mask: __mmask16 = if live == 16 { 0xffff } else { (1 << live) - 1 };
            let v = _mm512_maskz_loadu_ps(mask, row.as_ptr().add(t));
            let r = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
                _mm512_mul_ps(v, inv),
            );
            // max/min return their second operand when either is NaN: keep the value second
            let c = _mm512_min_ps(hi, _mm512_max_ps(lo, _mm512_add_ps(r, zp)));
            let b = _mm512_cvtepi32_epi8(_mm512_cvttps_epi32(c));
            _mm_mask_storeu_epi8(q.as_mut_ptr().add(t), mask, b);
            t += 16;
        }
    }
}
