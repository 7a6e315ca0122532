//! `analyze` on the tiny model: a linear with a planted outlier input channel ranks first, and
//! the KL-budget recipe meets the budget when re-quantized from scratch, with the smallest
//! most-sensitive-first fallback.

mod common;

use common::*;
use ferroq::backend::cpu::CpuBackend;
use ferroq::eval::{evaluate, BaseSource};
use ferroq::model::llama::LlamaModel;
use ferroq::ptq::analyze::{analyze, AnalyzeOptions};
use ferroq::ptq::pipeline::{quantize, QuantizeOptions};
use ferroq::ptq::recipe::Recipe;
use ferroq::tensor::{DType, HostData};

const RECIPE: &str = "
processors:
  - type: linear_quant
    qconfig:
      act: {scope: per_token, dtype: int8, symmetric: true}
      weight: {scope: per_channel, dtype: int8}
";

#[test]
fn planted_outlier_ranks_first_and_budget_is_met() {
    let c = tiny_config(false);
    let mut w = tiny_weights(&c, 31);
    // an outlier input channel in one weight: its per-channel int8 scales blow up
    let broken = "model.layers.1.mlp.gate_proj";
    if let HostData::F32(v) = &mut w.get_mut(&format!("{broken}.weight")).expect("w").data {
        for row in v.chunks_mut(c.hidden_size) {
            row[5] *= 60.0;
        }
    }
    let tok = byte_tokenizer();
    let mut rng = ferroq::engine::sampler::Rng::new(8);
    let ids: Vec<u32> = (0..3 * 32).map(|_| (rng.next_u64() % 67) as u32).collect();
    let recipe = Recipe::from_yaml(RECIPE).expect("recipe");
    let quant = QuantizeOptions {
        n_samples: 4,
        seq_len: 16,
        ..Default::default()
    };
    let opts = AnalyzeOptions {
        quant: quant.clone(),
        ctx: 32,
        chunks: 3,
        kl_budget: None,
    };
    let run = |opts: &AnalyzeOptions| {
        analyze(
            &|| Ok(CpuBackend::new()),
            c.clone(),
            &tok,
            w.clone(),
            &recipe,
            &ids,
            opts,
            &|_, _, _| {},
        )
        .expect("analyze")
    };
    let r = run(&opts);
    assert_eq!(r.layers.len(), 14);
    assert_eq!(
        r.layers[0].name,
        broken,
        "ranking: {:?}",
        r.layers.iter().map(|l| (&l.name, l.kl)).collect::<Vec<_>>()
    );
    assert!(r.layers[0].kl > 2.0 * r.layers[1].kl);
    assert!(
        r.full_kl > 0.0
            && r.layers
                .iter()
                .all(|l| l.kl.is_finite() && l.kurtosis.is_finite())
    );

    // budget: halfway between the full model and the model without the broken layer
    let budget = r.full_kl * 0.5;
    let opts = AnalyzeOptions {
        kl_budget: Some(budget),
        ..opts
    };
    let r = run(&opts);
    let b = r.budget.expect("budget result");
    assert!(b.kl <= budget, "{} > {budget}", b.kl);
    assert_eq!(b.fallback[0], broken);
    // verify independently: quantize with the written recipe, evaluate against the float model
    let recipe2 = Recipe::from_yaml(&recipe.with_fallback(&b.fallback).to_yaml().expect("yaml"))
        .expect("round trip");
    let q = quantize(
        c.clone(),
        tok.clone(),
        w.clone(),
        &recipe2,
        &quant,
        &|_, _, _| {},
    )
    .expect("quantize");
    let (mut got, mut want) = (q.report.fallback.clone(), b.fallback.clone());
    got.sort();
    want.sort();
    assert_eq!(got, want);
    let float =
        LlamaModel::load(CpuBackend::new(), c.clone(), &w, Some(DType::F32)).expect("float");
    // mean KL of a model quantized from scratch, against the float model
    let kl_of = |q: &ferroq::ptq::pipeline::QuantizedModel| {
        let qm = LlamaModel::load(CpuBackend::new(), c.clone(), q, Some(DType::F32)).expect("q");
        evaluate(
            &qm,
            BaseSource::Model(&float),
            &ids,
            32,
            3,
            ferroq::eval::EvalPath::Prefill,
            None,
            &|_, _| {},
        )
        .expect("eval")
        .summary(3, 32)
        .kl_mean
    };
    let kl = kl_of(&q);
    assert!(kl <= budget * 1.01, "independent check: {kl} > {budget}");
    // smallest: one fewer fallback layer misses the budget
    if b.fallback.len() > 1 {
        let fewer = &b.fallback[..b.fallback.len() - 1];
        let r = recipe.with_fallback(fewer);
        let q = quantize(c.clone(), tok.clone(), w.clone(), &r, &quant, &|_, _, _| {})
            .expect("quantize");
        let kl = kl_of(&q);
        assert!(kl > budget, "a smaller fallback already meets the budget");
    }
}
