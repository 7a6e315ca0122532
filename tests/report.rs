//! HTML reports: self-contained, well-nested, every plot present with one mark per datum,
//! names escaped; and the clip range drawn for a static scheme is the range the quantizer
//! really represents. (Rendering in a browser is checked by scripts/report-check.sh.)

use ferroq::eval::TokenScores;
use ferroq::ptq::analyze::{AnalyzeReport, InputHistogram, LayerSensitivity};
use ferroq::quant::formats::{dequantize_i8, quantize_i8, Fp8};
use ferroq::quant::{ActQuant, ActSpec, QDType};

fn count(h: &str, needle: &str) -> usize {
    h.matches(needle).count()
}

/// Self-contained and balanced: no scripts or external resources, tags closed.
fn check_page(h: &str) {
    assert!(h.starts_with("<!DOCTYPE html>"));
    for bad in ["<script", "src=", "href=", "<link"] {
        assert!(!h.contains(bad), "page references {bad}");
    }
    for tag in ["svg", "table", "tr", "p", "h1"] {
        assert_eq!(
            count(h, &format!("<{tag}>")) + count(h, &format!("<{tag} ")),
            count(h, &format!("</{tag}>")),
            "unbalanced <{tag}>"
        );
    }
}

fn scores() -> TokenScores {
    let kl: Vec<f64> = (0..200).map(|i| 1e-5 * 1.05f64.powi(i)).collect();
    TokenScores {
        nll_base: vec![2.0; 200],
        nll: vec![2.1; 200],
        same_top: (0..200).map(|i| i % 10 != 0).collect(),
        kl,
    }
}

#[test]
fn eval_page_has_the_summary_and_kl_distribution() {
    let sc = scores();
    let s = sc.summary(4, 100);
    let h = ferroq::report::eval_page("m<odel>&", "base", &s, &sc);
    check_page(&h);
    assert!(h.contains("m&lt;odel&gt;&amp;"), "model name not escaped");
    assert!(!h.contains("m<odel>"));
    assert!(h.contains(&format!("{:.6}", s.kl_mean)));
    assert!(h.contains("90.00%"), "top-1 agreement");
    assert_eq!(count(&h, "<svg"), 1);
    // every token lands in a bin: bars cover the non-empty bins, markers for mean/median/p99
    assert!(count(&h, "fill=\"#6a9f58\"") >= 10);
    assert_eq!(count(&h, "stroke-dasharray"), 3);
}

fn analyze_report(clip: Option<(f32, f32)>) -> AnalyzeReport {
    let layers = (0..50)
        .map(|i| LayerSensitivity {
            name: format!("model.layers.{i}.mlp.down_proj"),
            kl: 1e-3 / (i + 1) as f64,
            kurtosis: 3.0 + i as f64,
            max_over_std: 5.0,
        })
        .collect();
    let sc = scores();
    let mut counts = vec![0u64; 2048];
    counts[1000] = 500;
    counts[1100] = 3;
    AnalyzeReport {
        layers,
        full_kl: 0.002,
        budget: None,
        full_summary: Some(sc.summary(4, 100)),
        full_token_kl: sc.kl,
        inputs: vec![InputHistogram {
            linears: vec!["model.layers.0.mlp.down_proj".into()],
            range: 4.0,
            counts,
            observed: (-3.5, 3.9),
            clip,
        }],
    }
}

#[test]
fn analyze_page_has_bars_histograms_and_table() {
    let h = ferroq::report::analyze_page("model", "w8a8", &analyze_report(Some((-5.0, 4.5))));
    check_page(&h);
    assert_eq!(
        count(&h, "<svg"),
        3,
        "sensitivity bars, KL distribution, one input"
    );
    assert_eq!(
        count(&h, "fill=\"#4a78c2\""),
        40,
        "one bar per linear, top 40"
    );
    assert!(h.contains("clip -5.000") && h.contains("clip 4.500"));
    assert!(h.contains("static clip range"));
    // the table lists every linear
    assert_eq!(count(&h, ".mlp.down_proj</td>"), 50);
    let dynamic = ferroq::report::analyze_page("model", "w8a8", &analyze_report(None));
    assert!(dynamic.contains("no static clip"));
    assert!(!dynamic.contains("clip -"));
}

#[test]
fn clip_range_is_what_the_quantizer_represents() {
    for (symmetric, zp) in [(true, 0), (false, -20), (false, 37)] {
        let scale = 0.013f32;
        let spec = ActSpec {
            policy: ActQuant::Static { scale, zp },
            dtype: QDType::Int8,
            symmetric,
        };
        let (lo, hi) = spec.clip_range().expect("static has a clip range");
        let round_trip =
            |x: f32| dequantize_i8(quantize_i8(x, 1.0 / scale, zp, symmetric), scale, zp);
        // the ends come back exactly; beyond them values clip to the ends
        assert!((round_trip(hi) - hi).abs() <= 1e-6 * hi.abs());
        assert!((round_trip(lo) - lo).abs() <= 1e-6 * lo.abs());
        assert_eq!(round_trip(hi + 10.0 * scale), round_trip(hi));
        assert_eq!(round_trip(lo - 10.0 * scale), round_trip(lo));
    }
    let fp8 = ActSpec {
        policy: ActQuant::PdMix { scale: 0.5, zp: 0 },
        dtype: QDType::Fp8E4M3,
        symmetric: true,
    };
    assert_eq!(fp8.clip_range(), Some((-224.0, 224.0)));
    assert_eq!(Fp8::E4M3.max(), 448.0);
    let dynamic = ActSpec {
        policy: ActQuant::Dynamic,
        ..fp8
    };
    assert_eq!(dynamic.clip_range(), None);
    assert_eq!(ActSpec::NONE.clip_range(), None);
}
