//! The quantization pipeline on the real model: presets keep greedy "Paris", smoothing leaves
//! the float function unchanged, calibration is batch- and thread-invariant.

mod common;

use ferroq::backend::cpu::CpuBackend;
use ferroq::checkpoint::config::LmHead;
use ferroq::engine::generate::{generate, GenerateOptions};
use ferroq::model::llama::{LlamaModel, Logits};
use ferroq::ptq::pipeline::{quantize, QuantizeOptions, QuantizedModel};
use ferroq::ptq::recipe::Recipe;

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

fn float_logits(model: &LlamaModel<CpuBackend>, ids: &[u32]) -> Vec<f32> {
    let mut s = model.new_session(64, 64, true).expect("s");
    model
        .forward(&mut s, ids, Logits::All)
        .expect("fwd")
        .to_vec()
}

#[test]
fn smoothing_leaves_the_float_function_unchanged() {
    use ferroq::ptq::calib::{collect, load_samples, CollectOptions};
    use ferroq::ptq::smooth::{apply, Method};
    use ferroq::tensor::DType;
    let (c, tok, mut w) = ferroq::model::read_all(&common::real_gguf()).expect("read");
    let samples = load_samples(&tok, None, 4, 32).expect("samples");
    let ids = tok
        .encode("Smoothing moves activation outliers into the weights.")
        .expect("encode");
    let base = LlamaModel::load(CpuBackend::new(), c.clone(), &w, Some(DType::F32)).expect("load");
    let want = float_logits(&base, &ids);
    let mut stats = collect(
        &base,
        &samples,
        &CollectOptions {
            hist_ranges: None,
            keep_rows: 16,
        },
        2,
        &|_, _| {},
    )
    .expect("stats");
    drop(base);
    let all = vec!["*".to_string()];
    let mut total = 0;
    for m in [
        Method::Iterative { alpha: 0.9 },
        Method::SmoothQuant { alpha: 0.5 },
        Method::Flex,
    ] {
        total += apply(m, &c, &mut w, &mut stats, &all, &[]).expect("smooth");
    }
    assert_eq!(total, 120 + 60 + 120, "subgraphs smoothed");
    let smoothed = LlamaModel::load(CpuBackend::new(), c, &w, Some(DType::F32)).expect("load");
    let got = float_logits(&smoothed, &ids);
    let scale = common::max_abs(&want);
    let worst = common::max_abs_diff(&got, &want);
    eprintln!("max |logit| {scale}, worst difference {worst}");
    assert!(
        worst <= 1e-3 * scale,
        "smoothing changed the function: {worst} (max logit {scale})"
    );
    // the weights really changed
    let w0 = ferroq::model::read_all(&common::real_gguf())
        .expect("read")
        .2;
    let a = w0["model.layers.3.input_layernorm.weight"].to_f32_vec();
    let b = w["model.layers.3.input_layernorm.weight"].to_f32_vec();
    assert!(a
        .iter()
        .zip(&b)
        .any(|(x, y)| (x - y).abs() > 1e-3 * x.abs()));
}

/// Every observer, one per linear family, so each one's batch / thread invariance is checked.
const ALL_OBSERVERS: &str = "
processors:
  - type: iter_smooth
  - type: linear_quant
    include: ['*self_attn.q_proj', '*self_attn.k_proj', '*self_attn.v_proj']
    qconfig:
      act: {scope: per_tensor, dtype: int8, symmetric: false, method: histogram_mse}
      weight: {scope: per_channel, dtype: int8, method: ssz}
  - type: linear_quant
    include: ['*o_proj']
    qconfig:
      act: {scope: pd_mix, dtype: int8, method: percentile, percentile: 0.999}
      weight: {scope: per_channel, dtype: int8}
  - type: linear_quant
    include: ['*gate_proj', '*up_proj']
    qconfig:
      act: {scope: per_tensor, dtype: int8, symmetric: true, method: moving_minmax}
      weight: {scope: per_channel, dtype: int8}
  - type: linear_quant
    include: ['*down_proj']
    qconfig:
      act: {scope: per_tensor, dtype: int8, symmetric: true, method: histogram_kl}
      weight: {scope: per_channel, dtype: int8}
";

#[test]
fn calibration_is_batch_and_thread_invariant() {
    use ferroq::quant::QuantWeight;
    let recipe = Recipe::from_yaml(ALL_OBSERVERS).expect("recipe");
    let (c, tok, w) = ferroq::model::read_all(&common::real_gguf()).expect("read");
    let fingerprint = |batch: usize, threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .expect("pool");
        let opts = QuantizeOptions {
            calib_file: None,
            n_samples: 16,
            seq_len: 24,
            batch,
            keep_float: false,
        };
        let q = pool
            .install(|| {
                quantize(
                    c.clone(),
                    tok.clone(),
                    w.clone(),
                    &recipe,
                    &opts,
                    &|_, _, _| {},
                )
            })
            .expect("quantize");
        assert_eq!(q.report.calib_samples, 16);
        q.linears
            .iter()
            .map(|(n, l)| {
                let ws = match &l.weight {
                    QuantWeight::Int8 { scale, .. } => {
                        scale.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
                    }
                    _ => panic!("int8 expected"),
                };
                (n.clone(), ws, format!("{:?}", l.act))
            })
            .collect::<Vec<_>>()
    };
    let reference = fingerprint(1, 1);
    for (batch, threads) in [(4, 1), (16, 1), (1, 2), (4, 2), (16, 2)] {
        assert!(
            fingerprint(batch, threads) == reference,
            "scales differ with batch {batch}, {threads} threads"
        );
    }
    // the static scales are real numbers, not placeholders
    assert!(reference.iter().all(|(_, _, a)| a.contains("scale")));
}

#[test]
fn checkpoints_round_trip_and_fallback_stays_bf16() {
    use ferroq::backend::linear::LinearWeight;
    use ferroq::tensor::DType;
    let fallback_recipe = "
processors:
  - type: iter_smooth
  - type: linear_quant
    exclude: ['*mlp.down_proj*']
    qconfig:
      act: {scope: pd_mix, dtype: int8, symmetric: false}
      weight: {scope: per_channel, dtype: int8}
";
    let dir = tempfile::tempdir().expect("tempdir");
    for (i, recipe) in ["w8a8-static", "fp8", "w4a16", fallback_recipe]
        .iter()
        .enumerate()
    {
        let r = if recipe.contains('\n') {
            Recipe::from_yaml(recipe)
        } else {
            Recipe::load(recipe)
        }
        .expect("recipe");
        let (c, tok, w) = ferroq::model::read_all(&common::real_gguf()).expect("read");
        let q =
            quantize(c, tok, w, &r, &QuantizeOptions::default(), &|_, _, _| {}).expect("quantize");
        let out = dir.path().join(format!("q{i}"));
        ferroq::ptq::ct_write::write(&q, &out).expect("write");
        let mem =
            LlamaModel::load(CpuBackend::new(), q.config.clone(), &q, None).expect("in-memory");
        let disk = ferroq::model::open(CpuBackend::new(), &out, None).expect("open checkpoint");
        // prefill and a decode step (pd_mix's static path) agree exactly
        let ids = q.tokenizer.encode("The quick brown fox").expect("encode");
        let run = |m: &LlamaModel<CpuBackend>| {
            let mut s = m.new_session(8, 16, false).expect("s");
            let mut v = m
                .forward(&mut s, &ids, Logits::Last)
                .expect("prefill")
                .to_vec();
            v.extend_from_slice(m.forward(&mut s, &[42], Logits::Last).expect("decode"));
            v
        };
        assert!(
            run(&mem) == run(&disk.model),
            "{recipe}: checkpoint logits differ from the in-memory model"
        );
        // the presets but fp8 ask for an int8 LM head, built at load from the float one
        let head = disk.model.linears().last().expect("linears");
        assert_eq!(head.name, "lm_head");
        let int8_head = r.lm_head == LmHead::Int8;
        assert_eq!(int8_head, i == 0 || i == 2, "{recipe}");
        assert_eq!(
            matches!(head.weight, LinearWeight::Quant(_)),
            int8_head,
            "{recipe}"
        );
        if int8_head {
            // a value other than dense / int8 is refused, naming the field
            let cfg_path = out.join("config.json");
            let text = std::fs::read_to_string(&cfg_path).expect("cfg");
            assert!(text.contains("\"lm_head\": \"int8\""), "{text}");
            std::fs::write(
                &cfg_path,
                text.replace("\"lm_head\": \"int8\"", "\"lm_head\": \"int3\""),
            )
            .expect("write");
            let e = ferroq::model::open(CpuBackend::new(), &out, None)
                .err()
                .expect("refused");
            assert!(e.to_string().contains("ferroq.lm_head"), "{e}");
            std::fs::write(&cfg_path, text).expect("restore");
        }
        if i == 3 {
            assert_eq!(q.report.fallback.len(), 30);
            let cfg: serde_json::Value = serde_json::from_str(
                &std::fs::read_to_string(out.join("config.json")).expect("cfg"),
            )
            .expect("json");
            let ignore = cfg["quantization_config"]["ignore"]
                .as_array()
                .expect("ignore");
            assert!(ignore.iter().any(|v| v == "model.layers.7.mlp.down_proj"));
            let st =
                ferroq::checkpoint::safetensors_io::SafetensorsWeights::open_dir(&out).expect("st");
            assert_eq!(
                st.dtype_of("model.layers.7.mlp.down_proj.weight"),
                Some(safetensors::Dtype::BF16)
            );
            assert_eq!(
                st.dtype_of("model.layers.7.mlp.up_proj.weight"),
                Some(safetensors::Dtype::I8)
            );
            for l in disk.model.linears() {
                let dense = matches!(&l.weight, LinearWeight::Dense(m) if m.dtype() == DType::BF16);
                let want_dense = l.name.ends_with("down_proj") || l.name == "lm_head";
                assert_eq!(dense, want_dense, "{}", l.name);
            }
        }
    }
}

/// int4 groups tile every row: a preset's group 128 over widths of 64 and 96 becomes 32 (said
/// in the report), and widths no group of 32 / 64 / 128 divides are refused by name.
#[test]
fn int4_groups_divide_every_quantized_width() {
    use ferroq::checkpoint::config::ModelConfig;
    use ferroq::quant::QuantWeight;
    let config = |ffn: usize| {
        ModelConfig::from_hf_json(&format!(
            r#"{{"model_type": "llama", "hidden_size": 64, "intermediate_size": {ffn},
            "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
            "vocab_size": 67, "max_position_embeddings": 64}}"#
        ))
        .expect("config")
    };
    let q = common::quantized_of(&config(96), 3, "w4a16");
    assert_eq!(q.report.int4_group, Some((128, 32)));
    assert!(!q.linears.is_empty());
    for (name, l) in &q.linears {
        match &l.weight {
            QuantWeight::Int4 { group, .. } => assert_eq!(*group, 32, "{name}"),
            _ => panic!("{name} is not int4"),
        }
    }
    // widths 64 and 1536 take groups of 64
    let q = common::quantized_of(&config(1536), 3, "w4a16");
    assert_eq!(q.report.int4_group, Some((128, 64)));
    // widths 64 and 48: no group of 32 or more tiles both
    let r = Recipe::load("w4a16").expect("preset");
    let c = config(48);
    let w = common::tiny_weights(&c, 3);
    let opts = QuantizeOptions {
        n_samples: 2,
        seq_len: 8,
        ..Default::default()
    };
    let tok = common::byte_tokenizer();
    match quantize(c, tok, w, &r, &opts, &|_, _, _| {}) {
        Err(e) => assert!(e.to_string().contains("48 inputs"), "{e}"),
        Ok(_) => panic!("int4 groups that tile no row were accepted"),
    }
}
