//! Vectorised `exp` and SiLU for the CPU backend's softmax and MLP.
//!
//! - Cephes' `expf` on AVX-512: range reduction by ln 2 in two parts, a degree-5 minimax
//!   polynomial for exp(r) − 1 − r, scaling by 2ⁿ; within 2 ulp of the correctly rounded value.
//! - libm's scalar `expf` was 4% of a 512-token FP16 prefill, and softmax and SiLU are all that
//!   call it; machines without AVX-512 use `f32::exp`.

/// x[i] = exp(x[i] − shift); returns the sum of the results (softmax's numerator and
/// denominator in one pass).
pub fn exp_shifted_sum(x: &mut [f32], shift: f32) -> f32 {
    exp_shifted_sum_on(x, shift, avx512())
}

/// `exp_shifted_sum` on the vector path where `vector` and the CPU allow it, the scalar one
/// otherwise (tests force the scalar path).
pub fn exp_shifted_sum_on(x: &mut [f32], shift: f32, vector: bool) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if vector && avx512() {
        // SAFETY: AVX-512F present (checked).
        return unsafe { imp::exp_shifted_sum(x, shift) };
    }
    let mut sum = 0f32;
    for v in x.iter_mut() {
        *v = (*v - shift).exp();
        sum += *v;
    }
    sum
}

/// gate[i] = silu(gate[i]) · up[i] = gate / (1 + exp(−gate)) · up.
///
/// # Panics
/// If `up` is shorter than `gate`.
pub fn silu_mul(gate: &mut [f32], up: &[f32]) {
    silu_mul_on(gate, up, avx512())
}

/// `silu_mul` on the vector path where `vector` and the CPU allow it, the scalar one otherwise.
///
/// # Panics
/// If `up` is shorter than `gate`.
pub fn silu_mul_on(gate: &mut [f32], up: &[f32], vector: bool) {
    assert!(up.len() >= gate.len(), "silu_mul: up shorter than gate");
    #[cfg(target_arch = "x86_64")]
    if vector && avx512() {
        // SAFETY: AVX-512F present (checked); up holds gate.len() elements (asserted).
        return unsafe { imp::silu_mul(gate, up) };
    }
    for (g, u) in gate.iter_mut().zip(up) {
        *g = *g / (1.0 + (-*g).exp()) * u;
    }
}

/// gate = gelu_tanh(gate) · up, PyTorch's `gelu(approximate="tanh")` in f32:
/// 0.5 · g · (1 + tanh(√(2/π) · (g + 0.044715 g³))).
///
/// # Panics
/// If `up` is shorter than `gate`.
pub fn gelu_mul(gate: &mut [f32], up: &[f32]) {
    assert!(up.len() >= gate.len(), "gelu_mul: up shorter than gate");
    const K: f32 = 0.797_884_6; // √(2/π)
    for (g, u) in gate.iter_mut().zip(up) {
        let x = *g;
        let inner = K * (x + 0.044715 * x * x * x);
        *g = 0.5 * x * (1.0 + inner.tanh()) * u;
    }
}

/// cap · tanh(x / cap): tanh soft-capping as transformers' Gemma 2 writes it (divide, tanh,
/// multiply).
pub fn softcap(x: f32, cap: f32) -> f32 {
    (x / cap).tanh() * cap
}

/// Whether the vector paths run here.
pub fn avx512() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

#[cfg(target_arch = "x86_64")]
mod imp {
    use std::arch::x86_64::*;

    /// exp of 16 lanes. Inputs are clamped to [−104, 89] first (exp underflows to 0 below and
    /// overflows to ∞ above, as the scaling by 2ⁿ then does); NaN passes through.
    ///
    /// # Safety
    /// CPU has AVX-512F.
    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn exp16(x: __m512) -> __m512 {
        // max/min return their second operand when either is NaN: x second keeps a NaN
        let x = _mm512_min_ps(
            _mm512_set1_ps(89.0),
            _mm512_max_ps(_mm512_set1_ps(-104.0), x),
        );
        let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
            _mm512_mul_ps(x, _mm512_set1_ps(std::f32::consts::LOG2_E)),
        );
        // r = x − n·ln2 with ln2 split so n·ln2_hi is exact
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693_359_4), x);
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.121_944_4e-4), r);
        let mut p = _mm512_set1_ps(1.987_569_1e-4);
        for c in [
            1.398_199_9e-3,
            8.333_452e-3,
            4.166_579_6e-2,
            0.166_666_65,
            0.5,
        ] {
            p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(c));
        }
        // 1 + r + r²·p
        let e = _mm512_fmadd_ps(
            _mm512_mul_ps(r, r),
            p,
            _mm512_add_ps(r, _mm512_set1_ps(1.0)),
        );
        _mm512_scalef_ps(e, n)
    }

    /// # Safety
    /// CPU has AVX-512F.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn exp_shifted_sum(x: &mut [f32], shift: f32) -> f32 {
        let s = _mm512_set1_ps(shift);
        let mut acc = _mm512_setzero_ps();
        for c in x.chunks_mut(16) {
            // a masked load/store for the tail keeps one code path and one summation order
            let mask: __mmask16 = if c.len() == 16 {
                0xffff
            } else {
                (1u16 << c.len()) - 1
            };
            let v = _mm512_maskz_loadu_ps(mask, c.as_ptr());
            let e = _mm512_maskz_mov_ps(mask, exp16(_mm512_sub_ps(v, s)));
            _mm512_mask_storeu_ps(c.as_mut_ptr(), mask, e);
            acc = _mm512_add_ps(acc, e);
        }
        _mm512_reduce_add_ps(acc)
    }

    /// # Safety
    /// CPU has AVX-512F; up holds gate.len() elements.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn silu_mul(gate: &mut [f32], up: &[f32]) {
        let one = _mm512_set1_ps(1.0);
        for (c, u) in gate.chunks_mut(16).zip(up.chunks(16)) {
            let mask: __mmask16 = if c.len() == 16 {
                0xffff
            } else {
                (1u16 << c.len()) - 1
            };
            let g = _mm512_maskz_loadu_ps(mask, c.as_ptr());
            let uv = _mm512_maskz_loadu_ps(mask, u.as_ptr());
            let e = exp16(_mm512_sub_ps(_mm512_setzero_ps(), g));
            let y = _mm512_mul_ps(_mm512_div_ps(g, _mm512_add_ps(one, e)), uv);
            _mm512_mask_storeu_ps(c.as_mut_ptr(), mask, y);
        }
    }
}
