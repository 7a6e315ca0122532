//! Activation observers: calibration statistics to a static per-tensor (scale, zero point).
//!
//! - minmax, moving-average minmax (PyTorch's constant 0.01, folded per sample in sample order),
//!   percentile, histogram + MSE clip search (msModelSlim) and histogram + KL clip search
//!   (TensorRT entropy calibration).
//! - Every statistic is order-independent by construction (exact min / max, integer counts over
//!   a range fixed before counting), so scales are bit-identical for any batch and thread count.

use super::recipe::ActMethod;
use crate::quant::formats::{self, Fp8};
use crate::quant::{int8_params, QDType};

pub const HIST_BINS: usize = 2048;
const MOVING_AVG_C: f32 = 0.01;

/// A histogram of values over [-range, range] (integer counts).
#[derive(Clone, Debug, PartialEq)]
pub struct Histogram {
    pub range: f32,
    pub counts: Vec<u64>,
}

impl Histogram {
    pub fn new(range: f32) -> Self {
        Histogram {
            range: range.max(1e-30),
            counts: vec![0; HIST_BINS],
        }
    }

    pub fn add(&mut self, xs: &[f32]) {
        let scale = HIST_BINS as f32 / (2.0 * self.range);
        for &x in xs {
            let b = ((x + self.range) * scale) as isize;
            self.counts[b.clamp(0, HIST_BINS as isize - 1) as usize] += 1;
        }
    }

    pub fn merge(&mut self, o: &Histogram) {
        self.counts
            .iter_mut()
            .zip(&o.counts)
            .for_each(|(a, b)| *a += b);
    }

    fn bin_center(&self, i: usize) -> f32 {
        -self.range + (i as f32 + 0.5) * 2.0 * self.range / HIST_BINS as f32
    }

    /// Value below which a fraction `q` of the mass lies.
    fn quantile(&self, q: f64) -> f32 {
        let total: u64 = self.counts.iter().sum();
        let target = (q * total as f64).ceil() as u64;
        let mut acc = 0;
        for (i, &c) in self.counts.iter().enumerate() {
            acc += c;
            if acc >= target.max(1) {
                return -self.range + (i + 1) as f32 * 2.0 * self.range / HIST_BINS as f32;
            }
        }
        self.range
    }
}

/// Everything the observers need about one linear's input.
#[derive(Clone, Debug, PartialEq)]
pub struct ActStats {
    pub min: f32,
    pub max: f32,
    /// (min, max) of each calibration sample, in sample order.
    pub per_sample: Vec<(f32, f32)>,
    pub hist: Option<Histogram>,
}

fn quant_scale(dtype: QDType, lo: f32, hi: f32, symmetric: bool) -> (f32, i32) {
    match dtype {
        QDType::Fp8E4M3 => {
            let a = lo.abs().max(hi.abs());
            (if a > 0.0 { a / Fp8::E4M3.max() } else { 1.0 }, 0)
        }
        _ => int8_params(lo, hi, symmetric),
    }
}

/// Squared quantize-dequantize error of the histogram's mass for a (scale, zp).
fn hist_error(h: &Histogram, dtype: QDType, scale: f32, zp: i32, symmetric: bool) -> f64 {
    let inv = 1.0 / scale;
    h.counts
        .iter()
        .enumerate()
        .filter(|(_, &c)| c > 0)
        .map(|(i, &c)| {
            let v = h.bin_center(i);
            let back = match dtype {
                QDType::Fp8E4M3 => Fp8::E4M3.decode(Fp8::E4M3.encode(v * inv)) * scale,
                _ => formats::dequantize_i8(formats::quantize_i8(v, inv, zp, symmetric), scale, zp),
            };
            c as f64 * ((back - v) as f64).powi(2)
        })
        .sum()
}

/// TensorRT-style KL search over |x| (symmetric threshold), 128 quantized levels.
fn kl_threshold(h: &Histogram) -> f32 {
    // fold to |x|: bins HIST_BINS/2.. hold the positive half
    let half = HIST_BINS / 2;
    let abs: Vec<f64> = (0..half)
        .map(|i| (h.counts[half + i] + h.counts[half - 1 - i]) as f64)
        .collect();
    let levels = 128;
    let mut best = (f64::INFINITY, half);
    let mut i = levels;
    while i <= half {
        let mut p: Vec<f64> = abs[..i].to_vec();
        p[i - 1] += abs[i..].iter().sum::<f64>();
        let total: f64 = p.iter().sum();
        if total == 0.0 {
            i += 16;
            continue;
        }
        // quantize the histogram below the threshold into `levels` buckets, spread each back
        // over its non-empty bins; the clipped mass stays out of q (TensorRT's candidate
        // distribution), so p's folded edge bin is what charges a threshold for clipping
        let mut q = vec![0f64; i];
        for l in 0..levels {
            let (a, b) = (
                l * i / levels,
                ((l + 1) * i / levels).max(l * i / levels + 1),
            );
            let mass: f64 = abs[a..b].iter().sum::<f64>();
            let nonzero = abs[a..b].iter().filter(|&&v| v > 0.0).count();
            if nonzero > 0 {
                for t in a..b {
                    if abs[t] > 0.0 {
                        q[t] = mass / nonzero as f64;
                    }
                }
            }
        }
        let qt: f64 = q.iter().sum();
        let kl: f64 = p
            .iter()
            .zip(&q)
            .filter(|(&pv, _)| pv > 0.0)
            .map(|(&pv, &qv)| {
                let (pn, qn) = (pv / total, (qv / qt).max(1e-12));
                pn * (pn / qn).ln()
            })
            .sum();
        if kl < best.0 {
            best = (kl, i);
        }
        i += 16;
    }
    best.1 as f32 * h.range / half as f32
}

/// The static (scale, zero point) an observer picks.
pub fn static_params(
    stats: &ActStats,
    method: ActMethod,
    percentile: Option<f64>,
    dtype: QDType,
    symmetric: bool,
) -> (f32, i32) {
    let (lo, hi) = (stats.min, stats.max);
    match method {
        ActMethod::Minmax => quant_scale(dtype, lo, hi, symmetric),
        ActMethod::MovingMinmax => {
            let mut it = stats.per_sample.iter();
            let Some(&(mut a, mut b)) = it.next() else {
                return quant_scale(dtype, lo, hi, symmetric);
            };
            for &(l, h) in it {
                a += MOVING_AVG_C * (l - a);
                b += MOVING_AVG_C * (h - b);
            }
            quant_scale(dtype, a, b, symmetric)
        }
        ActMethod::Percentile | ActMethod::HistogramMse | ActMethod::HistogramKl => {
            let Some(h) = &stats.hist else {
                return quant_scale(dtype, lo, hi, symmetric);
            };
            match method {
                ActMethod::Percentile => {
                    let p = percentile.unwrap_or(0.9999);
                    quant_scale(
                        dtype,
                        h.quantile(1.0 - p).min(0.0),
                        h.quantile(p).max(0.0),
                        symmetric,
                    )
                }
                ActMethod::HistogramKl => {
                    let t = kl_threshold(h);
                    quant_scale(dtype, lo.max(-t), hi.min(t), symmetric)
                }
                _ => {
                    // shrink [lo, hi] by a common factor; keep the factor with the least error
                    let mut best = (f64::INFINITY, quant_scale(dtype, lo, hi, symmetric));
                    for step in 0..=100 {
                        let f = 1.0 - step as f32 * 0.009;
                        let (s, z) = quant_scale(dtype, lo * f, hi * f, symmetric);
                        let e = hist_error(h, dtype, s, z, symmetric);
                        if e < best.0 {
                            best = (e, (s, z));
                        }
                    }
                    best.1
                }
            }
        }
    }
}
