//! Quantization formats and schemes: the leaf every other layer builds on.
//!
//! - `formats` (codecs), this file (`QuantWeight`, the activation policies `ActSpec` / `ActQuant`,
//!   `Phase`, row quantizers), `weight` (minmax and msModelSlim's ssz), `hadamard` (the transform).
//! - Calibration and the algorithms that choose scales live in `ptq`; terms and formulas follow
//!   reference/quantization.md.

pub mod formats;
pub mod hadamard;
mod rows;
pub mod weight;

use formats::Fp8;

/// Element type of quantized data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QDType {
    Int8,
    Int4,
    Fp8E4M3,
}

/// A quantized weight matrix `[n, k]` (out_features × in_features).
#[derive(Clone, Debug, PartialEq)]
pub enum QuantWeight {
    /// Symmetric int8, one scale per output channel (a per-tensor scale is stored broadcast).
    /// `colsum[j] = Σ_k q[j, k]` serves the asymmetric-activation zero-point correction.
    Int8 {
        q: Vec<i8>,
        scale: Vec<f32>,
        colsum: Vec<i32>,
    },
    /// FP8 E4M3 codes with one scale per output channel.
    Fp8 { codes: Vec<u8>, scale: Vec<f32> },
    /// Int4 in groups of `group` input elements: value = (q − zero) · scale. `packed` holds two
    /// offset-binary nibbles per byte (n × k/2); `scale` and `zero` are (n, ceil(k / group)),
    /// the last group of a row possibly shorter; `zero` is empty for symmetric weights.
    Int4 {
        packed: Vec<u8>,
        scale: Vec<f32>,
        zero: Vec<i8>,
        group: usize,
    },
}

impl QuantWeight {
    pub fn dtype(&self) -> QDType {
        match self {
            QuantWeight::Int8 { .. } => QDType::Int8,
            QuantWeight::Fp8 { .. } => QDType::Fp8E4M3,
            QuantWeight::Int4 { .. } => QDType::Int4,
        }
    }

    /// Decode rows j..j+r into `out` (r × k) as f32 (dequantized values).
    pub fn decode_rows(&self, k: usize, j: usize, r: usize, out: &mut [f32]) {
        match self {
            QuantWeight::Int8 { q, scale, .. } => {
                for (jj, row) in out.chunks_exact_mut(k).take(r).enumerate() {
                    let s = scale[j + jj];
                    let src = &q[(j + jj) * k..(j + jj + 1) * k];
                    row.iter_mut()
                        .zip(src)
                        .for_each(|(o, &v)| *o = v as f32 * s);
                }
            }
            QuantWeight::Fp8 { codes, scale } => {
                let lut = fp8_table();
                for (jj, row) in out.chunks_exact_mut(k).take(r).enumerate() {
                    let s = scale[j + jj];
                    let src = &codes[(j + jj) * k..(j + jj + 1) * k];
                    row.iter_mut()
                        .zip(src)
                        .for_each(|(o, &c)| *o = lut[c as usize] * s);
                }
            }
            QuantWeight::Int4 {
                packed,
                scale,
                zero,
                group,
            } => {
                let g = *group;
                let groups = k.div_ceil(g);
                for (jj, row) in out.chunks_exact_mut(k).take(r).enumerate() {
                    let jr = j + jj;
                    let bytes = &packed[jr * k / 2..(jr + 1) * k / 2];
                    for (gi, chunk) in row.chunks_mut(g).enumerate() {
                        let s = scale[jr * groups + gi];
                        let z = if zero.is_empty() {
                            0.0
                        } else {
                            zero[jr * groups + gi] as f32
                        };
                        // the group's 16 values once, then a lookup per nibble
                        let lut: [f32; 16] =
                            std::array::from_fn(|q| ((q as i32 - 8) as f32 - z) * s);
                        let b = &bytes[gi * g / 2..gi * g / 2 + chunk.len() / 2];
                        for (pair, &byte) in chunk.chunks_exact_mut(2).zip(b) {
                            pair[0] = lut[(byte & 15) as usize];
                            pair[1] = lut[(byte >> 4) as usize];
                        }
                    }
                }
            }
        }
    }
}

/// The E4M3 decode table, built once.
pub fn fp8_table() -> &'static [f32; 256] {
    static T: std::sync::OnceLock<[f32; 256]> = std::sync::OnceLock::new();
    T.get_or_init(|| Fp8::E4M3.table())
}

/// How a linear's input activations are quantized at run time.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ActQuant {
    /// Not quantized (weight-only schemes such as W4A16).
    None,
    /// Per-token scales computed at run time.
    Dynamic,
    /// One calibrated per-tensor scale (and zero point for asymmetric int8).
    Static { scale: f32, zp: i32 },
    /// msModelSlim pd_mix: per-token dynamic in prefill, the static per-tensor scale in decode.
    PdMix { scale: f32, zp: i32 },
}

/// Activation quantization of one linear: policy, element type and symmetry.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ActSpec {
    pub policy: ActQuant,
    pub dtype: QDType,
    /// Symmetric (zero point 0) or asymmetric int8; FP8 is always symmetric.
    pub symmetric: bool,
}

impl ActSpec {
    pub const NONE: ActSpec = ActSpec {
        policy: ActQuant::None,
        dtype: QDType::Int8,
        symmetric: true,
    };

    /// The input range a calibrated static scale represents (values outside are clipped):
    /// None for dynamic or unquantized inputs, whose range is each token's own.
    pub fn clip_range(&self) -> Option<(f32, f32)> {
        let (ActQuant::Static { scale, zp } | ActQuant::PdMix { scale, zp }) = self.policy else {
            return None;
        };
        Some(match (self.dtype, self.symmetric) {
            (QDType::Fp8E4M3, _) => {
                let m = formats::Fp8::E4M3.max() * scale;
                (-m, m)
            }
            (_, true) => (-127.0 * scale, 127.0 * scale),
            (_, false) => ((-128 - zp) as f32 * scale, (127 - zp) as f32 * scale),
        })
    }
}

/// An override of every quantized linear's activation scope, for experiments (`--act-scope`):
/// how much of a pd_mix model's accuracy or speed comes from the per-token prefill path or the
/// static decode path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ActScope {
    /// Per-token dynamic scales in prefill and decode.
    PerToken,
    /// The calibrated per-tensor scale in prefill and decode.
    PerTensor,
    /// Per-token in prefill, per-tensor in decode.
    PdMix,
}

impl ActScope {
    /// `policy` under this scope, and whether it is what the scope asked for. Unquantized
    /// inputs stay unquantized; an input the checkpoint quantizes dynamically has no
    /// calibrated static scale, so under the per-tensor and pd_mix scopes it stays per-token
    /// (false).
    pub fn apply(self, policy: ActQuant) -> (ActQuant, bool) {
        let fixed = match policy {
            ActQuant::None => return (ActQuant::None, true),
            ActQuant::Static { scale, zp } | ActQuant::PdMix { scale, zp } => Some((scale, zp)),
            ActQuant::Dynamic => None,
        };
        match (self, fixed) {
            (ActScope::PerToken, _) => (ActQuant::Dynamic, true),
            (ActScope::PerTensor, Some((scale, zp))) => (ActQuant::Static { scale, zp }, true),
            (ActScope::PdMix, Some((scale, zp))) => (ActQuant::PdMix { scale, zp }, true),
            (_, None) => (ActQuant::Dynamic, false),
        }
    }
}

/// Which pass a forward call is: the prompt (prefill) or one generated token (decode).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    Prefill,
    Decode,
}

impl Phase {
    /// The phase of `rows` tokens of one sequence fed at position `start_pos`: a single token
    /// after the prompt is a decode step, everything else prefill. Every caller (generate,
    /// eval, the serving scheduler) uses this rule, so a pd_mix model takes the same path for
    /// the same tokens whoever feeds them.
    pub fn of_chunk(rows: usize, start_pos: usize) -> Phase {
        if rows == 1 && start_pos > 0 {
            Phase::Decode
        } else {
            Phase::Prefill
        }
    }
}

/// Quantize activation rows to int8. Dynamic: one (scale, zp) per row from the row's range;
/// static: the given pair. x is (m, k); q (m, k); scale, zp (m).
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
    for i in 0..m {
        let row = &x[i * k..(i + 1) * k];
        let (s, z) = match fixed {
            Some(sz) => sz,
            None => dynamic_i8_params(row, symmetric),
        };
        let inv = if s > 0.0 { 1.0 / s } else { 0.0 };
        for (o, &v) in q[i * k..(i + 1) * k].iter_mut().zip(row) {
            *o = formats::quantize_i8(v, inv, z, symmetric);
        }
        scale[i] = s;
        zp[i] = z;
    }
}

/// (scale, zero point) covering `row` (always including 0.0 so it stays exact).
pub fn dynamic_i8_params(row: &[f32], symmetric: bool) -> (f32, i32) {
    let (mut lo, mut hi) = (0f32, 0f32);
    for &v in row {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    int8_params(lo, hi, symmetric)
}

/// (scale, zero point) for the range [lo, hi]: symmetric absmax / 127, or asymmetric
/// (hi − lo) / 255 with zp = round(−128 − lo / scale).
pub fn int8_params(lo: f32, hi: f32, symmetric: bool) -> (f32, i32) {
    let (lo, hi) = (lo.min(0.0), hi.max(0.0));
    if symmetric {
        let a = lo.abs().max(hi);
        (if a > 0.0 { a / 127.0 } else { 1.0 }, 0)
    } else {
        let s = (hi - lo) / 255.0;
        if s <= 0.0 {
            return (1.0, 0);
        }
        let zp = formats::round_even(-128.0 - lo / s).clamp(-128.0, 127.0) as i32;
        (s, zp)
    }
}

/// Quantize activation rows to FP8 E4M3 and write back the decoded grid values (unscaled),
/// so the GEMM multiplies exact FP8 values; scale (m) receives each row's scale.
pub fn quantize_rows_fp8(
    x: &[f32],
    m: usize,
    k: usize,
    fixed: Option<f32>,
    out: &mut [f32],
    scale: &mut [f32],
) {
    let lut = fp8_table();
    for i in 0..m {
        let row = &x[i * k..(i + 1) * k];
        let s = fixed.unwrap_or_else(|| {
            let a = row.iter().fold(0f32, |a, v| a.max(v.abs()));
            if a > 0.0 {
                a / Fp8::E4M3.max()
            } else {
                1.0
            }
        });
        let inv = 1.0 / s;
        for (o, &v) in out[i * k..(i + 1) * k].iter_mut().zip(row) {
            *o = lut[Fp8::E4M3.encode(v * inv) as usize];
        }
        scale[i] = s;
    }
}
