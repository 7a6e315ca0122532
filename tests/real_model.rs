//! End-to-end on the real default model, SmolLM2-135M-Instruct (Q4_1 GGUF fetched by
//! models/fetch.sh): greedy completion, GGUF vs converted-directory logits, seeded sampling.

mod common;

use common::*;
use ferroq::backend::cpu::CpuBackend;
use ferroq::engine::generate::{generate, GenerateOptions};
use ferroq::engine::sampler::SamplingParams;
use ferroq::model::llama::Logits;
use ferroq::model::{convert, open};
use ferroq::tensor::DType;

fn greedy(path: &std::path::Path, dtype: Option<DType>, prompt: &str, n: usize) -> String {
    let m = open(CpuBackend::new(), path, dtype).expect("load");
    let ids = m.tokenizer.encode(prompt).expect("encode");
    let opts = GenerateOptions {
        max_new_tokens: n,
        ..Default::default()
    };
    generate(&m.model, &m.tokenizer, &ids, &opts, |_| {})
        .expect("generate")
        .text
}

#[test]
fn greedy_capital_of_france_is_paris() {
    let text = greedy(&real_gguf(), None, "The capital of France is", 8);
    assert!(text.starts_with(" Paris"), "continuation was {text:?}");
}

#[test]
fn converted_f32_directory_gives_identical_logits() {
    let gguf = real_gguf();
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("smollm-f32");
    let r = convert::gguf_to_hf(&gguf, &out, DType::F32).expect("convert");
    assert_eq!(r.n_tensors, 272);
    for f in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "generation_config.json",
    ] {
        assert!(out.join(f).exists(), "{f} missing");
    }
    let a = open(CpuBackend::new(), &gguf, None).expect("gguf");
    let b = open(CpuBackend::new(), &out, None).expect("dir");
    assert_eq!(a.model.config, b.model.config);
    let text = "Paris is the capital and largest city of France. 42 😀";
    let ids = a.tokenizer.encode(text).expect("encode");
    assert_eq!(
        ids,
        b.tokenizer.encode(text).expect("encode"),
        "tokenizers differ"
    );
    let mut sa = a.model.new_session(32, 64, true).expect("s");
    let mut sb = b.model.new_session(32, 64, true).expect("s");
    let la = a
        .model
        .forward(&mut sa, &ids, Logits::All)
        .expect("fwd")
        .to_vec();
    let lb = b
        .model
        .forward(&mut sb, &ids, Logits::All)
        .expect("fwd")
        .to_vec();
    assert_eq!(la.len(), ids.len() * 49152);
    assert!(
        la == lb,
        "logits differ between the GGUF and the converted f32 directory"
    );
    assert_eq!(
        a.tokenizer
            .apply_chat_template(&[ferroq::tokenizer::ChatMessage::user("hi")])
            .expect("a"),
        b.tokenizer
            .apply_chat_template(&[ferroq::tokenizer::ChatMessage::user("hi")])
            .expect("b")
    );

    // converting onto a non-empty directory is refused and leaves it intact
    let err = convert::gguf_to_hf(&gguf, &out, DType::F16);
    assert!(matches!(err, Err(ferroq::Error::InvalidArgument(_))));
    let again = open(CpuBackend::new(), &out, None).expect("still loads");
    assert_eq!(again.model.weight_dtype, DType::F32);
}

#[test]
fn f16_directory_completes_the_same() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("smollm-f16");
    convert::gguf_to_hf(&real_gguf(), &out, DType::F16).expect("convert");
    let text = greedy(&out, None, "The capital of France is", 8);
    assert!(text.starts_with(" Paris"), "continuation was {text:?}");
}

#[test]
fn seeded_sampling_is_reproducible() {
    let m = open(CpuBackend::new(), &real_gguf(), Some(DType::F16)).expect("load");
    let ids = m.tokenizer.encode("Once upon a time").expect("encode");
    let run = |seed| {
        let opts = GenerateOptions {
            max_new_tokens: 24,
            sampling: SamplingParams {
                temperature: 0.9,
                top_k: 40,
                top_p: 0.95,
                repetition_penalty: 1.1,
                seed,
            },
            stop_at_eos: false,
            ..Default::default()
        };
        generate(&m.model, &m.tokenizer, &ids, &opts, |_| {})
            .expect("generate")
            .tokens
    };
    let a = run(42);
    assert_eq!(a.len(), 24);
    assert_eq!(a, run(42));
}
