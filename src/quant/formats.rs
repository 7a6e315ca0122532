//! Exact codecs for the number formats ferroq quantizes to (reference/quantization.md §1).
//!
//! - INT8 symmetric [-127, 127] and asymmetric [-128, 127]; INT4 [-8, 7], packed two per byte or
//!   eight per int32 in compressed-tensors' offset-binary layout.
//! - OCP FP8 E4M3FN (bias 7, ±448, no infinities) and E5M2 (bias 15, ±57344, IEEE-style); encoding
//!   rounds to nearest even and saturates like PTX `cvt.rn.satfinite`.
//! - Integer rounding is round-half-to-even (`torch.round`, CUDA `nearbyint`).

/// Round half to even, as `torch.round` and `cvt.rni` do. Adding and subtracting 1.5 · 2^23
/// makes the FPU round to an integer in its default round-to-nearest-even mode: exact for
/// |x| < 2^22, and larger floats are already integers. (`f32::round_ties_even` is a libm call
/// on baseline x86-64, which has no SSE4.1 `roundps`, and this sits in per-element loops.)
#[inline(always)]
pub fn round_even(x: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0;
    if x.abs() < 4_194_304.0 {
        (x + MAGIC) - MAGIC
    } else {
        x
    }
}

/// q = clamp(round(x / scale) + zp, qmin, qmax) with qmin = -127 (symmetric) or -128.
#[inline]
pub fn quantize_i8(x: f32, inv_scale: f32, zp: i32, symmetric: bool) -> i8 {
    let qmin = if symmetric { -127.0 } else { -128.0 };
    (round_even(x * inv_scale) + zp as f32).clamp(qmin, 127.0) as i8
}

#[inline]
pub fn dequantize_i8(q: i8, scale: f32, zp: i32) -> f32 {
    (q as i32 - zp) as f32 * scale
}

/// q = clamp(round(x / scale) + zp, -8, 7) (symmetric int4 keeps zp = 0).
#[inline]
pub fn quantize_i4(x: f32, inv_scale: f32, zp: i32) -> i8 {
    (round_even(x * inv_scale) + zp as f32).clamp(-8.0, 7.0) as i8
}

/// Pack int4 values (each in [-8, 7]) two per byte, offset-binary (v + 8): element 2i in the
/// low nibble of byte i, 2i+1 in the high nibble. An odd count leaves the last high nibble 8 (0).
pub fn pack_i4_bytes(v: &[i8]) -> Vec<u8> {
    v.chunks(2)
        .map(|c| {
            let lo = (c[0] + 8) as u8 & 15;
            let hi = c.get(1).map_or(8, |&h| (h + 8) as u8 & 15);
            lo | (hi << 4)
        })
        .collect()
}

pub fn unpack_i4_bytes(b: &[u8], n: usize) -> Vec<i8> {
    (0..n)
        .map(|i| {
            let byte = b[i / 2];
            let nib = if i % 2 == 0 { byte & 15 } else { byte >> 4 };
            nib as i8 - 8
        })
        .collect()
}

/// compressed-tensors `pack_to_int32`: eight offset-binary nibbles per int32, element i of
/// each group of eight at bits 4i. `v.len()` must be a multiple of 8.
pub fn pack_i4_int32(v: &[i8]) -> Vec<i32> {
    v.chunks(8)
        .map(|c| {
            c.iter().enumerate().fold(0u32, |acc, (i, &x)| {
                acc | ((((x + 8) as u32) & 15) << (4 * i))
            }) as i32
        })
        .collect()
}

pub fn unpack_i4_int32(p: &[i32], n: usize) -> Vec<i8> {
    (0..n)
        .map(|i| ((p[i / 8] as u32 >> (4 * (i % 8))) & 15) as i8 - 8)
        .collect()
}

/// The two OCP 8-bit float formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Fp8 {
    E4M3,
    E5M2,
}

impl Fp8 {
    const fn man_bits(self) -> i32 {
        match self {
            Fp8::E4M3 => 3,
            Fp8::E5M2 => 2,
        }
    }
    const fn bias(self) -> i32 {
        match self {
            Fp8::E4M3 => 7,
            Fp8::E5M2 => 15,
        }
    }
    /// Largest finite magnitude.
    pub const fn max(self) -> f32 {
        match self {
            Fp8::E4M3 => 448.0,
            Fp8::E5M2 => 57344.0,
        }
    }
    const fn max_code(self) -> u8 {
        match self {
            Fp8::E4M3 => 0x7E,
            Fp8::E5M2 => 0x7B,
        }
    }
    const fn nan_code(self) -> u8 {
        0x7F
    }

    /// Decode one code (exact).
    pub fn decode(self, code: u8) -> f32 {
        let sign = if code & 0x80 != 0 { -1.0f32 } else { 1.0 };
        let (mb, bias) = (self.man_bits(), self.bias());
        let e = ((code & 0x7F) >> mb) as i32;
        let m = (code & ((1 << mb) - 1)) as i32;
        let emax_field = (1 << (7 - mb)) - 1;
        match self {
            Fp8::E4M3 if e == emax_field && m == (1 << mb) - 1 => return f32::NAN,
            Fp8::E5M2 if e == emax_field => {
                return if m == 0 {
                    sign * f32::INFINITY
                } else {
                    f32::NAN
                }
            }
            _ => {}
        }
        let mag = if e == 0 {
            m as f32 * 2f32.powi(1 - bias - mb)
        } else {
            (1.0 + m as f32 / (1 << mb) as f32) * 2f32.powi(e - bias)
        };
        sign * mag
    }

    /// Encode with round-to-nearest-even and saturation to ±max; NaN stays NaN. Works on the
    /// f32 bit pattern: subnormal targets scale exactly by a power of two and round; normal
    /// targets round the 23-bit mantissa to `man_bits` (ties to even) and rebias the exponent.
    pub fn encode(self, x: f32) -> u8 {
        let sign = if x.is_sign_negative() { 0x80u8 } else { 0 };
        if x.is_nan() {
            return sign | self.nan_code();
        }
        let a = x.abs();
        if a >= self.max() {
            return sign | self.max_code();
        }
        let (mb, bias) = (self.man_bits(), self.bias());
        let code = if a < f32::from_bits(((1 - bias + 127) as u32) << 23) {
            // subnormal grid: multiples of 2^(1 - bias - mb); q == 2^mb lands on the min normal
            round_even(a * f32::from_bits(((bias - 1 + mb + 127) as u32) << 23)) as u32
        } else {
            let bits = a.to_bits();
            let shift = 23 - mb as u32;
            let mant = bits & 0x7F_FFFF;
            let half = 1u32 << (shift - 1);
            let rounded = mant + half - 1 + ((mant >> shift) & 1);
            let exp = (bits >> 23) as i32 - 127 + bias + (rounded >> 23) as i32;
            (((exp as u32) << mb) | ((rounded & 0x7F_FFFF) >> shift)).min(self.max_code() as u32)
        };
        sign | code as u8
    }

    /// 256-entry decode table.
    pub fn table(self) -> [f32; 256] {
        let mut t = [0f32; 256];
        for (i, v) in t.iter_mut().enumerate() {
            *v = self.decode(i as u8);
        }
        t
    }
}
