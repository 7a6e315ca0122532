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

/// Prefill-path scores, no saved baseline, no progress.
fn score(
    m: &LlamaModel<CpuBackend>,
    base: BaseSource<'_, CpuBackend>,
    t: &[u32],
    ctx: usize,
    chunks: usize,
) -> ferroq::Result<TokenScores> {
    evaluate(
        m,
        base,
        t,
        ctx,
        chunks,
        ferroq::eval::EvalPath::Prefill,
        None,
        &|_, _| {},
    )
}

fn tokens(n: usize) -> Vec<u32> {
    let mut rng = ferroq::engine::sampler::Rng::new(5);
    (0..n).map(|_| (rng.next_u64() % 67) as u32).collect()
}

#[test]
fn self_evaluation_is_exact() {
    let m = tiny(1);
    let t = tokens(100);
    let s = score(&m, BaseSource::Model(&m), &t, 16, 5).expect("eval");
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
        ferroq::eval::EvalPath::Prefill,
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
    let again = score(&b, BaseSource::File(&loaded), &t, 16, 5).expect("eval");
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
    assert!(score(&b, BaseSource::File(&loaded), &other, 16, 5).is_err());
    assert!(score(&b, BaseSource::File(&loaded), &t, 8, 5).is_err());
    // truncated baseline file is an error
    let bytes = std::fs::read(&f).expect("read");
    std::fs::write(&f, &bytes[..bytes.len() / 2]).expect("write");
    assert!(Baseline::load(&f).is_err());
}

#[test]
fn decode_path_matches_prefill_in_float_and_takes_pd_mix_static_scales() {
    use ferroq::eval::EvalPath;
    use std::sync::atomic::Ordering;
    let m = tiny(4);
    let t = tokens(100);
    let run = |model: &LlamaModel<CpuBackend>, path| {
        evaluate(
            model,
            BaseSource::Model(&m),
            &t,
            16,
            3,
            path,
            None,
            &|_, _| {},
        )
        .expect("eval")
        .summary(3, 16)
    };
    // a float model computes the same logits token by token as in one pass
    let s = run(&m, EvalPath::Decode);
    assert!(s.kl_max <= 1e-9, "decode vs prefill KL {}", s.kl_max);
    assert_eq!(s.top1_agreement_pct, 100.0);

    let q = tiny_w8a8(4);
    let qm = LlamaModel::load(CpuBackend::new(), q.config.clone(), &q, None).expect("load");
    let counts = |qm: &LlamaModel<CpuBackend>| {
        (
            qm.backend.counters.dynamic_rows.load(Ordering::Relaxed),
            qm.backend.counters.static_rows.load(Ordering::Relaxed),
        )
    };
    let pre = run(&qm, EvalPath::Prefill);
    let (dyn_rows, static_rows) = counts(&qm);
    assert!(
        dyn_rows > 0 && static_rows == 0,
        "prefill: {dyn_rows} dynamic, {static_rows} static"
    );
    let dec = run(&qm, EvalPath::Decode);
    let (dyn2, static2) = counts(&qm);
    // 3 chunks × 7 decoded positions × 5 pd_mix linears (q, k, v, gate, up; the preset keeps
    // o_proj and down_proj per-token) × 2 layers run static
    assert_eq!(static2, 3 * 7 * 5 * 2, "decode rows on the static path");
    assert!(
        dyn2 > dyn_rows,
        "the prompt halves still prefill dynamically"
    );
    assert!(pre.kl_mean > 0.0 && dec.kl_mean > 0.0);
    assert_ne!(
        pre.kl_mean, dec.kl_mean,
        "the two paths quantize differently"
    );
}
