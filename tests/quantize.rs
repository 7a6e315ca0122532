//! The quantization pipeline on the real model: presets keep greedy "Paris", smoothing leaves
//! the float function unchanged, calibration is batch- and thread-invariant.

mod common;

use ferroq::backend::cpu::CpuBackend;
use ferroq::engine::generate::{generate, GenerateOptions};
use ferroq::model::llama::{LlamaModel, Logits};
use ferroq::quant::pipeline::{quantize, QuantizeOptions, QuantizedModel};
use ferroq::quant::recipe::Recipe;

fn quantized(preset: &str, opts: &QuantizeOptions) -> QuantizedModel {
    let (c, tok, w) = ferroq::model::read_all(&common::real_gguf()).expect("read");
    let r = Recipe::load(preset).expect("recipe");
    quantize(c, tok, w, &r, opts, &|_, _, _| {}).expect("quantize")
}

fn complete(q: &QuantizedModel, prompt: &str) -> String {
    let m = LlamaModel::load(CpuBackend::new(), q.config.clone(), q, None).expect("load");
    let ids = q.tokenizer.encode(prompt).expect("encode");
    let opts = GenerateOptions {
        max_new_tokens: 6,
        ..Default::default()
    };
    generate(&m, &q.tokenizer, &ids, &opts, |_| {})
        .expect("gen")
        .text
}

#[test]
fn presets_keep_paris() {
    for preset in ["w8a8", "w8a8-dynamic", "fp8", "w4a16"] {
        let t = std::time::Instant::now();
        let q = quantized(preset, &QuantizeOptions::default());
        let text = complete(&q, "The capital of France is");
        eprintln!(
            "{preset}: {:?} ({} quantized, {:.1}s)",
            text,
            q.report.quantized,
            t.elapsed().as_secs_f64()
        );
        assert_eq!(q.report.quantized, 210);
        assert!(text.starts_with(" Paris"), "{preset}: {text:?}");
    }
}
