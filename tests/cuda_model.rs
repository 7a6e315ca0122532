//! Whole-model parity, CPU against CUDA, with the same BF16 weights: a tiny random model and an
//! 8-layer slice with Llama-3-8B shapes (hidden 4096, 32 heads over 8 KV heads of 128, FFN
//! 14336, vocab 128256). Prefill logits agree within BF16 tolerance, and 32 greedy decode steps
//! (both fed the CPU's token) pick the same token wherever the CPU's top two are not a near
//! tie. Needs a GPU: `#[ignore]`d, run on the device machine by scripts/gpu-check.sh.

mod common;

use common::{max_abs_diff, tiny_config, tiny_weights, w8a8_of};
use ferroq::backend::cpu::CpuBackend;
use ferroq::backend::cuda::backend::CudaBackend;
use ferroq::engine::sampler::{argmax, Rng};
use ferroq::model::config::ModelConfig;
use ferroq::model::llama::{LlamaModel, Logits};
use ferroq::model::WeightSource;
use ferroq::tensor::{DType, HostTensor};
use std::collections::BTreeMap;

fn compare(c: &ModelConfig, w: &dyn WeightSource, prompt: &[u32], steps: usize) {
    let cpu =
        LlamaModel::load(CpuBackend::new(), c.clone(), w, Some(DType::BF16)).expect("cpu model");
    let gpu_b = CudaBackend::new(0).unwrap_or_else(|e| panic!("needs a CUDA GPU: {e}"));
    let gpu = LlamaModel::load(gpu_b, c.clone(), w, Some(DType::BF16)).expect("gpu model");
    let max_seq = prompt.len() + steps + 1;
    let mut sc = cpu
        .new_session(prompt.len(), max_seq, true)
        .expect("cpu session");
    let mut sg = gpu
        .new_session(prompt.len(), max_seq, true)
        .expect("gpu session");
    let lc = cpu
        .forward(&mut sc, prompt, Logits::All)
        .expect("cpu")
        .to_vec();
    let lg = gpu
        .forward(&mut sg, prompt, Logits::All)
        .expect("gpu")
        .to_vec();
    let scale = lc.iter().fold(0f32, |m, v| m.max(v.abs())).max(1.0);
    assert!(lg.iter().all(|v| v.is_finite()), "non-finite GPU logits");
    let worst = max_abs_diff(&lc, &lg);
    assert!(
        worst <= 2e-2 * scale,
        "prefill logits differ by {worst} (scale {scale})"
    );
    let vocab = c.vocab_size;
    // a third session in lockstep picks each token on the device (forward_greedy): it must be
    // exactly the host argmax of the GPU's own logits for the same context
    let mut sd = gpu
        .new_session(prompt.len(), max_seq, false)
        .expect("gpu session");
    assert_eq!(
        gpu.forward_greedy(&mut sd, prompt).expect("gpu greedy"),
        argmax(&lg[lg.len() - vocab..]),
        "device argmax after prefill"
    );
    let mut next = argmax(&lc[lc.len() - vocab..]);
    let (mut compared, mut agreed) = (0, 0);
    for step in 0..steps {
        let lc = cpu
            .forward(&mut sc, &[next], Logits::Last)
            .expect("cpu")
            .to_vec();
        let lg = gpu
            .forward(&mut sg, &[next], Logits::Last)
            .expect("gpu")
            .to_vec();
        assert!(
            lg.iter().all(|v| v.is_finite()),
            "step {step}: non-finite GPU logits"
        );
        let worst = max_abs_diff(&lc, &lg);
        assert!(
            worst <= 2e-2 * scale,
            "step {step}: logits differ by {worst}"
        );
        let (tc, tg) = (argmax(&lc), argmax(&lg));
        assert_eq!(
            gpu.forward_greedy(&mut sd, &[next]).expect("gpu greedy"),
            tg,
            "step {step}: device argmax"
        );
        let mut sorted = lc.clone();
        sorted.sort_by(|a, b| b.total_cmp(a));
        if sorted[0] - sorted[1] > 1e-2 * scale {
            compared += 1;
            agreed += usize::from(tc == tg);
        }
        next = tc;
    }
    assert_eq!(
        agreed, compared,
        "greedy tokens differ ({agreed}/{compared} clear steps agree)"
    );
    assert!(
        compared >= steps / 2,
        "too many near ties to judge ({compared}/{steps})"
    );
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn quantized_w8a8_model_matches_the_cpu() {
    // the w8a8 preset: pd_mix int8 linears (per-token in prefill, static in decode), Hadamard
    // rotation of every linear input, int8 LM head; FFN 48 so every in_features is a multiple
    // of 16 (the int8 GEMM's k step)
    let c = ModelConfig::from_hf_json(
        r#"{"model_type": "llama", "hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 2,
            "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 67, "rms_norm_eps": 1e-5,
            "rope_theta": 10000.0, "max_position_embeddings": 64, "tie_word_embeddings": false}"#,
    )
    .expect("config");
    let q = w8a8_of(&c, 13);
    compare(&q.config, &q, &[3, 17, 42, 5, 9, 60, 1], 32);
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn tiny_model_matches_the_cpu() {
    for bias in [false, true] {
        let c = tiny_config(bias);
        compare(&c, &tiny_weights(&c, 11), &[3, 17, 42, 5, 9, 60, 1], 32);
    }
}

/// Random weights scaled by 1/sqrt(fan-in) so activations stay O(1) through deep stacks.
fn scaled_weights(c: &ModelConfig, seed: u64) -> BTreeMap<String, HostTensor> {
    let mut rng = Rng::new(seed);
    let mut w = BTreeMap::new();
    let mut add = |name: String, shape: Vec<usize>, ones: bool| {
        let n: usize = shape.iter().product();
        let s = 1.0 / (*shape.last().unwrap_or(&1) as f32).sqrt() * 1.7;
        let data = (0..n)
            .map(|_| {
                if ones {
                    1.0
                } else {
                    (rng.next_f32() * 2.0 - 1.0) * s
                }
            })
            .collect();
        w.insert(name, HostTensor::from_f32(shape, data).expect("shape"));
    };
    let (d, q, kv, f) = (c.hidden_size, c.q_dim(), c.kv_dim(), c.intermediate_size);
    add(
        "model.embed_tokens.weight".into(),
        vec![c.vocab_size, d],
        false,
    );
    add("model.norm.weight".into(), vec![d], true);
    add("lm_head.weight".into(), vec![c.vocab_size, d], false);
    for l in 0..c.num_layers {
        let p = format!("model.layers.{l}");
        add(format!("{p}.input_layernorm.weight"), vec![d], true);
        add(
            format!("{p}.post_attention_layernorm.weight"),
            vec![d],
            true,
        );
        add(format!("{p}.self_attn.q_proj.weight"), vec![q, d], false);
        add(format!("{p}.self_attn.k_proj.weight"), vec![kv, d], false);
        add(format!("{p}.self_attn.v_proj.weight"), vec![kv, d], false);
        add(format!("{p}.self_attn.o_proj.weight"), vec![d, q], false);
        add(format!("{p}.mlp.gate_proj.weight"), vec![f, d], false);
        add(format!("{p}.mlp.up_proj.weight"), vec![f, d], false);
        add(format!("{p}.mlp.down_proj.weight"), vec![d, f], false);
    }
    w
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn llama3_8b_shaped_slice_matches_the_cpu() {
    let c = ModelConfig::from_hf_json(
        r#"{"model_type": "llama", "hidden_size": 4096, "intermediate_size": 14336,
            "num_hidden_layers": 8, "num_attention_heads": 32, "num_key_value_heads": 8,
            "vocab_size": 128256, "rms_norm_eps": 1e-5, "rope_theta": 500000.0,
            "max_position_embeddings": 8192, "tie_word_embeddings": false}"#,
    )
    .expect("config");
    let prompt: Vec<u32> = (0..37u32).map(|i| i * 3001 % 128256).collect();
    compare(&c, &scaled_weights(&c, 12), &prompt, 32);
}
