//! Number-format codecs: all 256 FP8 codes both ways, halfway cases round to even, saturation,
//! int8 / int4 quantize-dequantize within the analytic bound (half a step), int4 packings.

mod common;

use common::randn;
use ferroq::engine::sampler::Rng;
use ferroq::quant::formats::{self, Fp8};
use ferroq::quant::weight::{quantize_weight, WeightMethod, WeightQConfig, WeightScope};
use ferroq::quant::{int8_params, QDType, QuantWeight};

#[test]
fn fp8_all_codes_round_trip() {
    for f in [Fp8::E4M3, Fp8::E5M2] {
        let mut finite = 0;
        for code in 0..=255u8 {
            let v = f.decode(code);
            if v.is_nan() {
                assert!(f.decode(f.encode(v)).is_nan());
                continue;
            }
            if v.is_infinite() {
                // E5M2 infinities saturate to the largest finite value when encoded
                assert_eq!(f.decode(f.encode(v)), v.signum() * f.max());
                continue;
            }
            finite += 1;
            assert_eq!(f.encode(v), code, "{f:?} code {code:#04x} value {v}");
        }
        let want = match f {
            Fp8::E4M3 => 254, // 2 NaNs
            Fp8::E5M2 => 248, // 2 inf + 6 NaN
        };
        assert_eq!(finite, want, "{f:?}");
    }
    assert_eq!(Fp8::E4M3.decode(0x7E), 448.0);
    assert!(Fp8::E4M3.decode(0x7F).is_nan());
    assert_eq!(Fp8::E4M3.decode(0x01), 2f32.powi(-9), "smallest subnormal");
    assert_eq!(Fp8::E5M2.decode(0x7B), 57344.0);
    assert_eq!(Fp8::E5M2.decode(0x7C), f32::INFINITY);
}

#[test]
fn fp8_halfway_rounds_to_even_and_saturates() {
    for f in [Fp8::E4M3, Fp8::E5M2] {
        // every pair of adjacent positive finite codes: the midpoint goes to the even code
        let max_code = f.encode(f.max());
        for c in 0..max_code {
            let (a, b) = (f.decode(c), f.decode(c + 1));
            let mid = (a as f64 + b as f64) / 2.0;
            let even = if c % 2 == 0 { c } else { c + 1 };
            assert_eq!(
                f.encode(mid as f32),
                even,
                "{f:?} midpoint of {c:#04x} and {:#04x}",
                c + 1
            );
            // just off the midpoint goes to the nearer one
            let eps = (b - a) as f64 / 64.0;
            assert_eq!(f.encode((mid - eps) as f32), c);
            assert_eq!(f.encode((mid + eps) as f32), c + 1);
            // negative side mirrors
            assert_eq!(f.encode(-(mid as f32)), even | 0x80);
        }
        assert_eq!(f.encode(f.max() * 4.0), max_code, "saturates");
        assert_eq!(f.encode(-1e30), max_code | 0x80);
        assert_eq!(f.encode(f32::INFINITY), max_code);
        assert!(f.decode(f.encode(f32::NAN)).is_nan());
    }
    // E4M3: 464 is halfway between 448 and the (nonexistent) 480 -> saturate to 448
    assert_eq!(Fp8::E4M3.decode(Fp8::E4M3.encode(464.0)), 448.0);
    assert_eq!(Fp8::E4M3.encode(-0.0), 0x80);
}

#[test]
fn int8_round_trip_within_half_step() {
    let mut rng = Rng::new(1);
    for symmetric in [true, false] {
        let x = randn(&mut rng, 1000, 3.0);
        let x: Vec<f32> = x.iter().map(|v| v + 0.7).collect(); // off-centre
        let (lo, hi) = x
            .iter()
            .fold((0f32, 0f32), |(l, h), &v| (l.min(v), h.max(v)));
        let (s, z) = int8_params(lo, hi, symmetric);
        for &v in &x {
            let q = formats::quantize_i8(v, 1.0 / s, z, symmetric);
            let back = formats::dequantize_i8(q, s, z);
            assert!(
                (back - v).abs() <= s / 2.0 * (1.0 + 1e-5),
                "sym {symmetric}: {v} -> {back} (s {s})"
            );
            if symmetric {
                assert!(q >= -127);
            }
        }
        // zero is exact
        assert_eq!(
            formats::dequantize_i8(formats::quantize_i8(0.0, 1.0 / s, z, symmetric), s, z),
            0.0
        );
    }
    // halfway rounds to even: 2.5 -> 2, 3.5 -> 4
    assert_eq!(formats::quantize_i8(2.5, 1.0, 0, true), 2);
    assert_eq!(formats::quantize_i8(3.5, 1.0, 0, true), 4);
    assert_eq!(formats::quantize_i8(-500.0, 1.0, 0, true), -127);
    assert_eq!(formats::quantize_i8(-500.0, 1.0, 0, false), -128);
}

#[test]
fn int4_packings_round_trip() {
    let v: Vec<i8> = (0..40).map(|i| ((i * 7) % 16) as i8 - 8).collect();
    assert_eq!(
        formats::unpack_i4_bytes(&formats::pack_i4_bytes(&v), v.len()),
        v
    );
    assert_eq!(
        formats::unpack_i4_int32(&formats::pack_i4_int32(&v), v.len()),
        v
    );
    // compressed-tensors layout: element i of each 8 at bits 4i, offset by 8
    let p = formats::pack_i4_int32(&[-8, -7, 0, 7, 1, 2, 3, 4]);
    assert_eq!(p, vec![0xCBA9_F810u32 as i32]);
    let b = formats::pack_i4_bytes(&[-8, 7, 0]);
    assert_eq!(b, vec![0xF0, 0x88]);
}

#[test]
fn weight_schemes_within_bounds() {
    let mut rng = Rng::new(2);
    let (n, k) = (6, 256);
    let w = randn(&mut rng, n * k, 0.5);
    let mut dec = vec![0.0; n * k];
    let cases = [
        (
            QDType::Int8,
            WeightScope::PerChannel,
            true,
            WeightMethod::MinMax,
        ),
        (
            QDType::Int8,
            WeightScope::PerTensor,
            true,
            WeightMethod::MinMax,
        ),
        (
            QDType::Int8,
            WeightScope::PerChannel,
            true,
            WeightMethod::Ssz,
        ),
        (
            QDType::Fp8E4M3,
            WeightScope::PerChannel,
            true,
            WeightMethod::MinMax,
        ),
        (
            QDType::Int4,
            WeightScope::PerGroup(32),
            true,
            WeightMethod::MinMax,
        ),
        (
            QDType::Int4,
            WeightScope::PerGroup(64),
            false,
            WeightMethod::MinMax,
        ),
        (
            QDType::Int4,
            WeightScope::PerGroup(128),
            true,
            WeightMethod::Ssz,
        ),
        (
            QDType::Int4,
            WeightScope::PerGroup(128),
            false,
            WeightMethod::Ssz,
        ),
    ];
    for (dtype, scope, symmetric, method) in cases {
        let cfg = WeightQConfig {
            dtype,
            scope,
            symmetric,
            method,
        };
        let q = quantize_weight(&w, n, k, &cfg).expect("quantize");
        q.decode_rows(k, 0, n, &mut dec);
        let mse: f64 = w
            .iter()
            .zip(&dec)
            .map(|(a, b)| ((a - b) as f64).powi(2))
            .sum::<f64>()
            / (n * k) as f64;
        for (i, (&a, &b)) in w.iter().zip(&dec).enumerate() {
            let j = i / k;
            let bound = match &q {
                QuantWeight::Int8 { scale, .. } => scale[j] / 2.0,
                // 3 mantissa bits: half an ulp is 2^-4 relative, or half the subnormal step
                QuantWeight::Fp8 { scale, .. } => (a.abs() / 16.0).max(scale[j] * 2f32.powi(-10)),
                QuantWeight::Int4 { scale, group, .. } => {
                    let s = scale[j * (k / group) + (i % k) / group];
                    // ssz may shrink the scale so the extremes clip: allow one extra step
                    if method == WeightMethod::Ssz {
                        s * 1.5
                    } else {
                        s / 2.0
                    }
                }
            };
            assert!(
                (a - b).abs() <= bound * 1.0001 + 1e-7,
                "{cfg:?} index {i}: {a} -> {b} (bound {bound})"
            );
        }
        assert!(mse < 1e-2, "{cfg:?} mse {mse}");
    }
}

#[test]
fn ssz_does_not_increase_error() {
    let mut rng = Rng::new(3);
    let (n, k) = (8, 256);
    // heavy-tailed rows, where minmax wastes range on outliers
    let w: Vec<f32> = randn(&mut rng, n * k, 1.0)
        .iter()
        .map(|v| v * v * v)
        .collect();
    let err = |method| {
        let cfg = WeightQConfig {
            dtype: QDType::Int4,
            scope: WeightScope::PerGroup(128),
            symmetric: true,
            method,
        };
        let q = quantize_weight(&w, n, k, &cfg).expect("q");
        let mut d = vec![0.0; n * k];
        q.decode_rows(k, 0, n, &mut d);
        w.iter()
            .zip(&d)
            .map(|(a, b)| ((a - b) as f64).powi(2))
            .sum::<f64>()
    };
    let (mm, ssz) = (err(WeightMethod::MinMax), err(WeightMethod::Ssz));
    assert!(ssz <= mm, "ssz {ssz} > minmax {mm}");
    assert!(
        ssz < mm * 0.95,
        "ssz should find a better scale on heavy tails: {ssz} vs {mm}"
    );
}

#[test]
fn int4_ragged_last_group() {
    // 80 = 64 + 16: the second group of each row is shorter, with its own scale
    let mut rng = Rng::new(4);
    let (n, k) = (3, 80);
    let mut w = randn(&mut rng, n * k, 0.1);
    w[70] = 5.0; // an outlier in the short group of row 0 must not affect the long group
    let cfg = WeightQConfig {
        dtype: QDType::Int4,
        scope: WeightScope::PerGroup(64),
        symmetric: true,
        method: WeightMethod::MinMax,
    };
    let q = quantize_weight(&w, n, k, &cfg).expect("q");
    let QuantWeight::Int4 { scale, .. } = &q else {
        panic!("int4")
    };
    assert_eq!(scale.len(), n * 2);
    assert!(
        scale[0] < 0.1 && (scale[1] - 5.0 / 7.0).abs() < 1e-6,
        "{scale:?}"
    );
    let mut d = vec![0.0; n * k];
    q.decode_rows(k, 0, n, &mut d);
    for (i, (a, b)) in w.iter().zip(&d).enumerate() {
        let s = scale[(i / k) * 2 + usize::from(i % k >= 64)];
        assert!((a - b).abs() <= s / 2.0 * 1.0001, "index {i}");
    }
}

#[test]
fn bad_weight_configs_are_errors() {
    let w = vec![0.5f32; 4 * 48];
    let cfg = |dtype, scope, symmetric| WeightQConfig {
        dtype,
        scope,
        symmetric,
        method: WeightMethod::MinMax,
    };
    assert!(
        quantize_weight(
            &w,
            4,
            48,
            &cfg(QDType::Int4, WeightScope::PerGroup(33), true)
        )
        .is_err(),
        "an odd group size"
    );
    assert!(quantize_weight(
        &w,
        4,
        48,
        &cfg(QDType::Int8, WeightScope::PerChannel, false)
    )
    .is_err());
    assert!(quantize_weight(
        &w,
        4,
        48,
        &cfg(QDType::Int8, WeightScope::PerGroup(16), true)
    )
    .is_err());
    assert!(
        quantize_weight(&w, 5, 48, &cfg(QDType::Int8, WeightScope::PerChannel, true)).is_err(),
        "wrong shape"
    );
}

#[test]
fn fast_round_matches_round_ties_even() {
    let mut rng = Rng::new(9);
    let mut xs: Vec<f32> = randn(&mut rng, 20000, 300.0);
    xs.extend((-600..600).map(|i| i as f32 * 0.5)); // every halfway case in range
    xs.extend([
        0.0, -0.0, 4194303.5, -4194303.5, 4194304.0, 1e9, -1e9, 8388609.0,
    ]);
    for x in xs {
        assert_eq!(formats::round_even(x), x.round_ties_even(), "{x}");
    }
}

#[test]
fn fp8_encode_is_the_nearest_code() {
    // brute force: the finite code nearest to x, ties to the even code, beyond max saturated
    let mut rng = Rng::new(10);
    for f in [Fp8::E4M3, Fp8::E5M2] {
        let finite: Vec<u8> = (0..0x80u8).filter(|&c| f.decode(c).is_finite()).collect();
        for _ in 0..20000 {
            let e = (rng.next_f32() * 40.0 - 24.0) as i32;
            let x = (rng.next_f32() * 2.0 - 1.0) * 2f32.powi(e);
            let a = x.abs().min(f.max());
            let mut best = finite[0];
            for &c in &finite {
                let (d, db) = ((f.decode(c) - a).abs(), (f.decode(best) - a).abs());
                if d < db || (d == db && c % 2 == 0) {
                    best = c;
                }
            }
            let want = best | if x.is_sign_negative() { 0x80 } else { 0 };
            assert_eq!(f.encode(x), want, "{f:?} {x}");
        }
    }
}

/// Row ranges of a quantized weight (Phi-3's fused projections cut apart at load) decode to the
/// same rows as the whole, and joining the ranges again gives the weight back exactly.
#[test]
fn row_ranges_cut_and_join_exactly() {
    let mut rng = Rng::new(41);
    let (n, k) = (24, 64);
    let w = randn(&mut rng, n * k, 1.0);
    for (dtype, scope, symmetric) in [
        (QDType::Int8, WeightScope::PerChannel, true),
        (QDType::Fp8E4M3, WeightScope::PerChannel, true),
        (QDType::Int4, WeightScope::PerGroup(32), true),
        (QDType::Int4, WeightScope::PerGroup(16), false),
    ] {
        let cfg = WeightQConfig {
            dtype,
            scope,
            symmetric,
            method: WeightMethod::MinMax,
        };
        let q = quantize_weight(&w, n, k, &cfg).expect("quantize");
        let mut whole = vec![0f32; n * k];
        q.decode_rows(k, 0, n, &mut whole);
        let cuts = [(0, 10), (10, 6), (16, 8)];
        let parts: Vec<QuantWeight> = cuts
            .iter()
            .map(|&(s, r)| q.rows(s, r, n, k).expect("rows"))
            .collect();
        for (p, &(s, r)) in parts.iter().zip(&cuts) {
            let mut got = vec![0f32; r * k];
            p.decode_rows(k, 0, r, &mut got);
            assert_eq!(got, whole[s * k..(s + r) * k], "{cfg:?} rows {s}..+{r}");
        }
        let refs: Vec<&QuantWeight> = parts.iter().collect();
        assert_eq!(QuantWeight::concat_rows(&refs).expect("join"), q, "{cfg:?}");
        // a range past the end, or parts of different formats, are errors
        assert!(q.rows(20, 8, n, k).is_err());
        assert!(
            q.rows(0, 8, n + 1, k).is_err(),
            "{cfg:?}: wrong row count accepted"
        );
    }
    let a = quantize_weight(
        &w,
        n,
        k,
        &WeightQConfig {
            dtype: QDType::Int8,
            scope: WeightScope::PerChannel,
            symmetric: true,
            method: WeightMethod::MinMax,
        },
    )
    .expect("int8");
    let b = quantize_weight(
        &w,
        n,
        k,
        &WeightQConfig {
            dtype: QDType::Fp8E4M3,
            scope: WeightScope::PerChannel,
            symmetric: true,
            method: WeightMethod::MinMax,
        },
    )
    .expect("fp8");
    assert!(QuantWeight::concat_rows(&[&a, &b]).is_err());
}
