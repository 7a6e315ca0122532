//! Activation observers on data with known answers: minmax and moving-average minmax by hand,
//! percentile against the sorted data, histogram-MSE no worse than other clips on its own
//! error measure, and the TensorRT KL threshold keeping a Gaussian bulk while clipping rare far
//! outliers (a threshold that clips the bulk would be charged through p's folded edge bin).

use ferroq::engine::sampler::Rng;
use ferroq::ptq::observer::{static_params, ActStats, Histogram};
use ferroq::ptq::recipe::ActMethod;
use ferroq::quant::formats::{dequantize_i8, quantize_i8};
use ferroq::quant::{int8_params, QDType};

fn gaussian(rng: &mut Rng, n: usize, sigma: f32) -> Vec<f32> {
    (0..n)
        .map(|_| {
            let (u, v) = (rng.next_f32().max(1e-7), rng.next_f32());
            sigma * (-2.0 * u.ln()).sqrt() * (2.0 * std::f32::consts::PI * v).cos()
        })
        .collect()
}

fn stats(xs: &[f32]) -> ActStats {
    let (lo, hi) = xs
        .iter()
        .fold((f32::MAX, f32::MIN), |(l, h), &v| (l.min(v), h.max(v)));
    let mut h = Histogram::new(lo.abs().max(hi.abs()));
    h.add(xs);
    ActStats {
        min: lo,
        max: hi,
        per_sample: vec![(lo, hi)],
        hist: Some(h),
    }
}

fn mse(xs: &[f32], (scale, zp): (f32, i32), symmetric: bool) -> f64 {
    xs.iter()
        .map(|&x| {
            let d = dequantize_i8(quantize_i8(x, 1.0 / scale, zp, symmetric), scale, zp) - x;
            d as f64 * d as f64
        })
        .sum::<f64>()
        / xs.len() as f64
}

fn params(st: &ActStats, m: ActMethod, pct: Option<f64>, symmetric: bool) -> (f32, i32) {
    static_params(st, m, pct, QDType::Int8, symmetric)
}

#[test]
fn minmax_and_moving_minmax_by_hand() {
    let st = ActStats {
        min: -2.0,
        max: 6.0,
        per_sample: vec![(-1.0, 2.0), (-2.0, 6.0), (-1.5, 4.0)],
        hist: None,
    };
    assert_eq!(
        params(&st, ActMethod::Minmax, None, false),
        int8_params(-2.0, 6.0, false)
    );
    // a ← a + 0.01 (x − a), from the first sample
    let lo = -1.0f32 + 0.01 * (-2.0 - -1.0);
    let lo = lo + 0.01 * (-1.5 - lo);
    let hi = 2.0f32 + 0.01 * (6.0 - 2.0);
    let hi = hi + 0.01 * (4.0 - hi);
    assert_eq!(
        params(&st, ActMethod::MovingMinmax, None, true),
        int8_params(lo, hi, true)
    );
}

#[test]
fn percentile_matches_the_sorted_data() {
    let mut rng = Rng::new(1);
    let xs = gaussian(&mut rng, 200_000, 1.0);
    let st = stats(&xs);
    let (scale, _) = params(&st, ActMethod::Percentile, Some(0.999), true);
    let mut sorted = xs.clone();
    sorted.sort_by(f32::total_cmp);
    let want = sorted[(0.999 * xs.len() as f64) as usize]
        .abs()
        .max(sorted[(0.001 * xs.len() as f64) as usize].abs());
    let got = scale * 127.0;
    // within two histogram bins
    let bin = 2.0 * st.hist.as_ref().expect("hist").range / 2048.0;
    assert!(
        (got - want).abs() <= 2.0 * bin,
        "percentile {got} vs {want}"
    );
}

#[test]
fn histogram_mse_minimises_error_and_kl_clips_rare_outliers() {
    let mut rng = Rng::new(2);
    let mut xs = gaussian(&mut rng, 100_000, 1.0);
    // rare far outliers: 20 values at ±60σ
    for i in 0..20 {
        xs[i * 997] = if i % 2 == 0 { 60.0 } else { -60.0 };
    }
    let st = stats(&xs);
    let minmax = params(&st, ActMethod::Minmax, None, true);
    let hmse = params(&st, ActMethod::HistogramMse, None, true);
    let kl = params(&st, ActMethod::HistogramKl, None, true);
    eprintln!(
        "clip: minmax {:.2}, histogram_mse {:.2}, histogram_kl {:.2}",
        minmax.0 * 127.0,
        hmse.0 * 127.0,
        kl.0 * 127.0
    );
    // the MSE search is no worse than minmax or other clips on the data's own squared error
    // (here 20 far outliers cost more clipped than rounded, so it keeps most of the range)
    let best = mse(&xs, hmse, true);
    for f in [1.0f32, 0.9, 0.75, 0.5, 0.25, 0.1] {
        let other = (minmax.0 * f, 0);
        assert!(
            best <= mse(&xs, other, true) * 1.01,
            "histogram_mse worse than clip ×{f}"
        );
    }
    // KL judges the shape of the distribution: it clips the rare outliers, keeps the bulk
    let clip = kl.0 * 127.0;
    assert!(clip < 30.0, "histogram_kl kept the outliers: clip {clip}");
    assert!(
        clip >= 3.0,
        "histogram_kl clipped the Gaussian bulk: clip {clip}"
    );
    // without outliers the KL threshold keeps (nearly) the whole range
    let clean = gaussian(&mut rng, 100_000, 1.0);
    let st = stats(&clean);
    let kl = params(&st, ActMethod::HistogramKl, None, true).0 * 127.0;
    assert!(
        kl >= 0.6 * st.max.max(-st.min),
        "KL clip {kl} of range {}",
        st.max
    );
}
