//! Accuracy arithmetic: log-softmax / KL / perplexity against hand-computed values, a model
//! evaluated against itself (KL 0, full agreement, equal PPL), baselines saved and reloaded.

mod common;

use common::*;
use ferroq::backend::cpu::CpuBackend;
use ferroq::eval::{evaluate, kl_divergence, log_softmax, BaseSource, Baseline, TokenScores};
use ferroq::model::llama::LlamaModel;

#[test]
fn kl_and_ppl_by_hand() {
    // softmax([0, ln 3]) = [1/4, 3/4]
    let mut p = [0f64; 2];
    log_softmax(&[0.0, 3f32.ln()], &mut p);
    assert!((p[0] - 0.25f64.ln()).abs() < 1e-7 && (p[1] - 0.75f64.ln()).abs() < 1e-7);
    // KL([1/4, 3/4] || [1/2, 1/2]) = 1/4 ln(1/2) + 3/4 ln(3/2)
    let q = [0.5f64.ln(), 0.5f64.ln()];
    let want = 0.25 * (0.5f64).ln() + 0.75 * (1.5f64).ln();
    assert!((kl_divergence(&p, &q) - want).abs() < 1e-7);
    assert_eq!(kl_divergence(&p, &p), 0.0);
    // PPL = exp(mean NLL): NLLs ln 2 and ln 8 -> exp((ln 2 + ln 8) / 2) = 4
    let s = TokenScores {
        nll_base: vec![2f64.ln(), 8f64.ln()],
        nll: vec![4f64.ln(), 4f64.ln()],
        kl: vec![0.1, 0.3],
        same_top: vec![true, false],
    };
    let sum = s.summary(1, 6);
    assert!((sum.ppl_base - 4.0).abs() < 1e-12 && (sum.ppl - 4.0).abs() < 1e-12);
    assert!(sum.ppl_change_pct.abs() < 1e-9);
    assert!((sum.kl_mean - 0.2).abs() < 1e-12 && sum.kl_max == 0.3);
    assert_eq!(sum.top1_agreement_pct, 50.0);
}

fn tiny(seed: u64) -> LlamaModel<CpuBackend> {
    let c = tiny_config(false);
    LlamaModel::load(CpuBackend::new(), c.clone(), &tiny_weights(&c, seed), None).expect("load")
}

fn tokens(n: usize) -> Vec<u32> {
    let mut rng = ferroq::engine::sampler::Rng::new(5);
    (0..n).map(|_| (rng.next_u64() % 67) as u32).collect()
}

#[test]
fn self_evaluation_is_exact() {
    let m = tiny(1);
    let t = tokens(100);
    let s = evaluate(&m, BaseSource::Model(&m), &t, 16, 5, None, &|_, _| {}).expect("eval");
    assert_eq!(
        s.kl.len(),
        5 * 7,
        "second half of each 16-token chunk, minus the last position"
    );
    assert!(s.kl.iter().all(|&k| k == 0.0));
    assert!(s.same_top.iter().all(|&b| b));
    let sum = s.summary(5, 16);
    assert_eq!(sum.ppl, sum.ppl_base);
    assert_eq!(sum.top1_agreement_pct, 100.0);
}

#[test]
fn different_models_differ_and_saved_baseline_matches() {
    let (a, b) = (tiny(1), tiny(2));
    let t = tokens(100);
    let mut save = Baseline::empty(16, 67, &t, 5);
    let live = evaluate(
        &b,
        BaseSource::Model(&a),
        &t,
        16,
        5,
        Some(&mut save),
        &|_, _| {},
    )
    .expect("eval");
    assert!(
        live.summary(5, 16).kl_mean > 0.01,
        "two random models should disagree"
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let f = dir.path().join("base.bin");
    save.save(&f).expect("save");
    let loaded = Baseline::load(&f).expect("load");
    let again = evaluate(&b, BaseSource::File(&loaded), &t, 16, 5, None, &|_, _| {}).expect("eval");
    // f16 storage of the baseline log-probs: close, not bit-equal
    let (x, y) = (live.summary(5, 16), again.summary(5, 16));
    assert!(
        (x.kl_mean - y.kl_mean).abs() < 1e-3 * x.kl_mean.max(1e-3),
        "{} vs {}",
        x.kl_mean,
        y.kl_mean
    );
    assert!((x.ppl_base - y.ppl_base).abs() < 1e-2 * x.ppl_base);
    // a baseline for other text or context is refused
    let other = tokens(120)[20..].to_vec();
    assert!(evaluate(
        &b,
        BaseSource::File(&loaded),
        &other,
        16,
        5,
        None,
        &|_, _| {}
    )
    .is_err());
    assert!(evaluate(&b, BaseSource::File(&loaded), &t, 8, 5, None, &|_, _| {}).is_err());
    // truncated baseline file is an error
    let bytes = std::fs::read(&f).expect("read");
    std::fs::write(&f, &bytes[..bytes.len() / 2]).expect("write");
    assert!(Baseline::load(&f).is_err());
}
