//! Config parsing (Llama / Mistral / Qwen2, Llama-3 rope scaling, bad input) and the sampler.

use ferroq::checkpoint::config::{Arch, ModelConfig, RopeScaling};
use ferroq::checkpoint::rope;
use ferroq::engine::sampler::{argmax, Sampler, SamplingParams};
use ferroq::Error;

const LLAMA31: &str = r#"{"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 4096,
  "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
  "vocab_size": 128256, "rms_norm_eps": 1e-05, "rope_theta": 500000.0, "max_position_embeddings": 131072,
  "tie_word_embeddings": false, "hidden_act": "silu", "bos_token_id": 128000, "eos_token_id": [128001, 128008, 128009],
  "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                   "original_max_position_embeddings": 8192, "rope_type": "llama3"}}"#;

#[test]
fn llama31_config_and_rope_scaling() {
    let c = ModelConfig::from_hf_json(LLAMA31).expect("parse");
    assert_eq!((c.arch, c.head_dim, c.num_kv_heads), (Arch::Llama, 128, 8));
    assert_eq!(c.eos_token_ids, vec![128001, 128008, 128009]);
    let Some(RopeScaling::Llama3(rs)) = &c.rope_scaling else {
        panic!("llama3 scaling expected, got {:?}", c.rope_scaling)
    };
    assert_eq!(rs.factor, 8.0);
    let f = c.rope_inv_freq(4096);
    assert_eq!(f.len(), 64);
    let plain = |i: usize| 1.0 / 500000f64.powf(2.0 * i as f64 / 128.0);
    // high frequencies (wavelength < 8192 / 4) are untouched
    assert_eq!(f[0], plain(0));
    // the lowest frequency (wavelength > 8192) is divided by the factor
    assert!((f[63] - plain(63) / 8.0).abs() < 1e-18);
    // the band in between is interpolated: strictly between the two
    let mid = (0..64).find(|&i| {
        let wl = 2.0 * std::f64::consts::PI / plain(i);
        wl > 2048.0 && wl < 8192.0
    });
    let i = mid.expect("a mid-band frequency");
    assert!(f[i] < plain(i) && f[i] > plain(i) / 8.0);
    // round trip through config.json
    let back =
        ModelConfig::from_hf_json(&c.to_hf_json("bfloat16").expect("config json").to_string())
            .expect("reparse");
    assert_eq!(back, c);
}

#[test]
fn qwen2_and_mistral() {
    let q = ModelConfig::from_hf_json(r#"{"model_type": "qwen2", "hidden_size": 896, "intermediate_size": 4864,
        "num_hidden_layers": 24, "num_attention_heads": 14, "num_key_value_heads": 2, "vocab_size": 151936,
        "rope_theta": 1000000.0, "tie_word_embeddings": true, "rms_norm_eps": 1e-6}"#)
    .expect("qwen2");
    assert!(q.qkv_bias && q.tie_word_embeddings);
    assert_eq!(q.head_dim, 64);
    let m = ModelConfig::from_hf_json(r#"{"model_type": "mistral", "hidden_size": 4096, "intermediate_size": 14336,
        "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 32000,
        "head_dim": 128, "rope_theta": 1000000.0}"#)
    .expect("mistral");
    assert_eq!(
        (m.arch, m.qkv_bias, m.rms_norm_eps),
        (Arch::Mistral, false, 1e-6)
    );
}

#[test]
fn bad_configs_name_the_problem() {
    let err = |s: &str| match ModelConfig::from_hf_json(s) {
        Err(Error::Config(m)) => m,
        Err(e) => panic!("wrong error {e}"),
        Ok(_) => panic!("accepted {s}"),
    };
    assert!(err("{not json").contains("not valid JSON"));
    assert!(err(r#"{"model_type": "gpt_neox"}"#).contains("gpt_neox"));
    let e = err(
        r#"{"model_type": "llama", "hidden_size": 64, "num_hidden_layers": 1,
        "num_attention_heads": 4, "vocab_size": 10}"#,
    );
    assert!(e.contains("no `intermediate_size`"), "{e}");
    let e = err(
        r#"{"model_type": "llama", "hidden_size": 64, "intermediate_size": 1, "num_hidden_layers": 1,
        "num_attention_heads": 4, "num_key_value_heads": 3, "vocab_size": 10}"#,
    );
    assert!(e.contains("num_key_value_heads"), "{e}");
    let e = err(r#"{"model_type": "llama", "hidden_size": "big"}"#);
    assert!(e.contains("hidden_size"), "{e}");
    let e = err(
        r#"{"model_type": "llama", "hidden_size": 64, "intermediate_size": 1, "num_hidden_layers": 1,
        "num_attention_heads": 4, "vocab_size": 10, "rope_scaling": {"rope_type": "mrope", "factor": 4.0}}"#,
    );
    assert!(e.contains("mrope"), "{e}");
}

/// A present field of the wrong type is an error naming it, never the default; sizes a
/// corrupt file advertises are refused before anything is allocated from them.
#[test]
fn wrong_typed_fields_and_absurd_sizes_are_errors() {
    let base = r#""model_type": "llama", "hidden_size": 64, "intermediate_size": 128,
        "num_attention_heads": 4, "vocab_size": 10"#;
    let with =
        |extra: &str, layers: &str| format!("{{{base}, \"num_hidden_layers\": {layers}{extra}}}");
    let err = |s: String| match ModelConfig::from_hf_json(&s) {
        Err(Error::Config(m)) => m,
        Err(e) => panic!("wrong error {e}"),
        Ok(_) => panic!("accepted {s}"),
    };
    assert!(ModelConfig::from_hf_json(&with("", "2")).is_ok());
    for (extra, layers, names) in [
        (r#", "rope_theta": "x""#, "2", "rope_theta"),
        (r#", "rms_norm_eps": [1]"#, "2", "rms_norm_eps"),
        (
            r#", "tie_word_embeddings": "yes""#,
            "2",
            "tie_word_embeddings",
        ),
        (r#", "attention_bias": 1"#, "2", "attention_bias"),
        (r#", "hidden_act": 7"#, "2", "hidden_act"),
        (
            r#", "max_position_embeddings": -5"#,
            "2",
            "max_position_embeddings",
        ),
        (
            r#", "max_position_embeddings": 1099511627776"#,
            "2",
            "max_position_embeddings",
        ),
        (r#", "rope_theta": 0"#, "2", "rope_theta"),
        ("", "4294967295", "num_hidden_layers"),
    ] {
        let e = err(with(extra, layers));
        assert!(e.contains(names), "{extra} {layers}: {e}");
    }
}

/// A small config with `extra` keys merged in.
fn with(extra: &str) -> Result<ModelConfig, Error> {
    ModelConfig::from_hf_json(&format!(
        r#"{{"model_type": "llama", "hidden_size": 64, "intermediate_size": 96,
            "num_hidden_layers": 3, "num_attention_heads": 4, "vocab_size": 10{extra}}}"#
    ))
}

/// transformers 5 writes `rope_parameters`; older files `rope_theta` + `rope_scaling`, which
/// transformers 5 still prefers when both are there.
#[test]
fn rope_parameters_and_legacy_keys_read_as_transformers_reads_them() {
    let v5 = with(
        r#", "rope_parameters": {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
        "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 32}"#,
    )
    .expect("v5");
    let v4 = with(
        r#", "rope_theta": 500000.0, "rope_scaling": {"type": "llama3", "factor": 8.0,
        "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 32}"#,
    )
    .expect("v4");
    assert_eq!(v5, v4);
    assert_eq!(v5.rope_theta, 500000.0);
    assert!(matches!(v5.rope_scaling, Some(RopeScaling::Llama3(_))));
    // both present: rope_scaling and the top-level theta win
    let both = with(
        r#", "rope_theta": 5.0, "rope_parameters": {"rope_type": "default", "rope_theta": 7.0},
        "rope_scaling": {"rope_type": "linear", "factor": 2.0}"#,
    )
    .expect("both");
    assert_eq!(both.rope_theta, 5.0);
    assert_eq!(both.rope_scaling, Some(RopeScaling::Linear { factor: 2.0 }));
    // rope_parameters alone carries its own theta
    let own = with(r#", "rope_parameters": {"rope_type": "default", "rope_theta": 7.0}"#);
    assert_eq!(own.expect("own").rope_theta, 7.0);
}

#[test]
fn biases_and_sliding_windows_follow_each_family() {
    let l = with(r#", "attention_bias": true, "mlp_bias": true"#).expect("llama");
    assert!(l.qkv_bias && l.o_bias && l.mlp_bias);
    let m = ModelConfig::from_hf_json(
        r#"{"model_type": "mistral", "hidden_size": 64, "intermediate_size": 96,
        "num_hidden_layers": 3, "num_attention_heads": 4, "vocab_size": 10, "sliding_window": 8,
        "attention_bias": true}"#,
    )
    .expect("mistral");
    // transformers' Mistral has no biases whatever the key says, and windows every layer
    assert!(!m.qkv_bias && !m.o_bias);
    assert_eq!(
        (0..3).map(|l| m.window(l)).collect::<Vec<_>>(),
        [Some(8); 3]
    );
    let qwen = |extra: &str| {
        ModelConfig::from_hf_json(&format!(
            r#"{{"model_type": "qwen2", "hidden_size": 64, "intermediate_size": 96,
            "num_hidden_layers": 3, "num_attention_heads": 4, "vocab_size": 10{extra}}}"#
        ))
    };
    let q = qwen(r#", "sliding_window": 8"#).expect("qwen2");
    assert!(q.qkv_bias && !q.o_bias);
    assert_eq!(q.window(2), None, "use_sliding_window is off by default");
    let q = qwen(r#", "use_sliding_window": true, "sliding_window": 8, "max_window_layers": 1"#)
        .expect("qwen2 windowed");
    assert_eq!(
        (0..3).map(|l| q.window(l)).collect::<Vec<_>>(),
        [None, Some(8), Some(8)]
    );
    let q = qwen(
        r#", "use_sliding_window": true, "sliding_window": 8,
        "layer_types": ["sliding_attention", "full_attention", "sliding_attention"]"#,
    )
    .expect("qwen2 layer_types");
    assert_eq!(
        (0..3).map(|l| q.window(l)).collect::<Vec<_>>(),
        [Some(8), None, Some(8)]
    );
}

/// A key that changes the math and is not implemented is refused by name, never ignored.
#[test]
fn unimplemented_math_keys_are_refused_by_name() {
    for (extra, names) in [
        (r#", "partial_rotary_factor": 0.5"#, "partial_rotary_factor"),
        (
            r#", "rope_parameters": {"rope_type": "default", "partial_rotary_factor": 0.5}"#,
            "partial_rotary_factor",
        ),
        (
            r#", "attn_logit_softcapping": 50.0"#,
            "attn_logit_softcapping",
        ),
        (
            r#", "final_logit_softcapping": 30.0"#,
            "final_logit_softcapping",
        ),
        (r#", "use_qk_norm": true"#, "use_qk_norm"),
        (
            r#", "rope_scaling": {"rope_type": "su", "factor": 2.0}"#,
            "su",
        ),
        (
            r#", "rope_parameters": {"full_attention": {"rope_type": "default"},
            "sliding_attention": {"rope_type": "default"}}"#,
            "per-layer-type",
        ),
        (r#", "rope_scaling": {"rope_type": "linear"}"#, "factor"),
        (
            r#", "rope_scaling": {"rope_type": "linear", "factor": -2}"#,
            "factor",
        ),
    ] {
        match with(extra) {
            Err(Error::Config(m)) => assert!(m.contains(names), "{extra}: {m}"),
            other => panic!("{extra}: accepted or wrong error: {other:?}"),
        }
    }
    // the neutral values are fine
    assert!(with(r#", "partial_rotary_factor": 1.0, "use_qk_norm": false"#).is_ok());
    let bad_types = ModelConfig::from_hf_json(
        r#"{"model_type": "qwen2", "hidden_size": 64, "intermediate_size": 96,
        "num_hidden_layers": 2, "num_attention_heads": 4, "vocab_size": 10,
        "use_sliding_window": true, "sliding_window": 4, "layer_types": ["chunked_attention", "full_attention"]}"#,
    );
    assert!(matches!(bad_types, Err(Error::Config(m)) if m.contains("chunked_attention")));
}

/// llama.cpp's converter turns Llama-3 RoPE into `rope_freqs` divisors; written back as a
/// config they become the llama3 settings that reproduce them, or an error.
#[test]
fn gguf_rope_freqs_write_back_as_llama3_settings() {
    let c = ModelConfig::from_hf_json(LLAMA31).expect("parse");
    let plain = rope::inv_freq(c.rope_theta, c.head_dim, None, 0);
    let scaled = c.rope_inv_freq(0);
    let ff: Vec<f64> = plain.iter().zip(&scaled).map(|(p, s)| p / s).collect();
    let mut g = c.clone();
    g.rope_scaling = Some(RopeScaling::FreqFactors(ff.clone()));
    for (a, b) in g.rope_inv_freq(0).iter().zip(&scaled) {
        assert!((a - b).abs() <= 1e-15 * b, "{a} vs {b}");
    }
    let back = ModelConfig::from_hf_json(&g.to_hf_json("bfloat16").expect("json").to_string())
        .expect("reparse");
    assert_eq!(back.rope_scaling, c.rope_scaling);
    // divisors no Llama-3 setting makes have no config.json
    let mut odd = ff;
    odd[5] *= 1.5;
    g.rope_scaling = Some(RopeScaling::FreqFactors(odd));
    assert!(matches!(g.to_hf_json("bfloat16"), Err(Error::Config(m)) if m.contains("rope_freqs")));
}

fn logits() -> Vec<f32> {
    vec![0.5, 3.0, -1.0, 2.9, 0.0, 1.0]
}

#[test]
fn greedy_is_argmax() {
    let mut s = Sampler::new(SamplingParams::default(), 6);
    assert_eq!(s.sample(&logits(), &[]), 1);
    assert_eq!(argmax(&[1.0, 5.0, 5.0]), 1, "first index wins ties");
}

#[test]
fn top_k_one_and_tiny_top_p_are_greedy() {
    for seed in 0..20 {
        let mut s = Sampler::new(
            SamplingParams {
                temperature: 1.5,
                top_k: 1,
                seed,
                ..Default::default()
            },
            6,
        );
        assert_eq!(s.sample(&logits(), &[]), 1);
        let mut s = Sampler::new(
            SamplingParams {
                temperature: 1.5,
                top_p: 1e-6,
                seed,
                ..Default::default()
            },
            6,
        );
        assert_eq!(s.sample(&logits(), &[]), 1);
    }
}

#[test]
fn top_k_restricts_the_candidates() {
    let mut s = Sampler::new(
        SamplingParams {
            temperature: 5.0,
            top_k: 2,
            seed: 3,
            ..Default::default()
        },
        6,
    );
    let mut seen = [0usize; 6];
    for _ in 0..2000 {
        seen[s.sample(&logits(), &[]) as usize] += 1;
    }
    assert_eq!(seen[0] + seen[2] + seen[4] + seen[5], 0, "{seen:?}");
    assert!(
        seen[1] > 500 && seen[3] > 500,
        "both top-2 tokens are drawn: {seen:?}"
    );
}

#[test]
fn sampling_follows_softmax() {
    // two tokens with logits ln(3) and 0 at temperature 1: frequencies 3/4 and 1/4
    let l = [3f32.ln(), 0.0];
    let mut s = Sampler::new(
        SamplingParams {
            temperature: 1.0,
            seed: 11,
            ..Default::default()
        },
        2,
    );
    let n = 20000;
    let zeros = (0..n).filter(|_| s.sample(&l, &[]) == 0).count();
    let p = zeros as f64 / n as f64;
    assert!((p - 0.75).abs() < 0.02, "p = {p}");
}

#[test]
fn repetition_penalty_demotes_seen_tokens() {
    let mut s = Sampler::new(
        SamplingParams {
            repetition_penalty: 1.5,
            ..Default::default()
        },
        6,
    );
    // token 1 (3.0 -> 2.0) falls below token 3 (2.9)
    assert_eq!(s.sample(&logits(), &[1]), 3);
    // negative logits are multiplied, so a seen negative token gets less likely, not more
    let l = [-1.0f32, -1.2];
    assert_eq!(s.sample(&l, &[0]), 1);
}

#[test]
fn order_keys_order_floats_and_draw_keeps_ties_at_the_cuts() {
    use ferroq::engine::sampler::{draw, order_key, Draw};
    let vals = [
        f32::NEG_INFINITY,
        -3.5,
        -1e-30,
        -0.0,
        0.0,
        1e-30,
        2.0,
        7.25,
        f32::INFINITY,
    ];
    for w in vals.windows(2) {
        assert!(order_key(w[0]) <= order_key(w[1]), "{} {}", w[0], w[1]);
    }
    // top-k 2 with a tie for second place keeps all three; u near 1 picks the last kept id
    let z = [1.0f32, 3.0, 2.0, 0.5, 2.0];
    let d = |u, top_k, top_p| Draw {
        temperature: 1.0,
        top_k,
        top_p,
        penalty: 1.0,
        penalized: &[],
        u,
    };
    let mut keys = Vec::new();
    assert_eq!(draw(&z, &d(0.0, 2, 1.0), &mut keys), 1);
    assert_eq!(draw(&z, &d(0.999_999, 2, 1.0), &mut keys), 4);
    // top-p: e^0 / (e^0 + 2 e^-1 + ...) = 0.53 of the mass is token 1 alone, so p = 0.5 keeps
    // it alone and p = 0.6 adds both tied seconds
    assert_eq!(draw(&z, &d(0.999_999, 0, 0.5), &mut keys), 1);
    assert_eq!(draw(&z, &d(0.999_999, 0, 0.6), &mut keys), 4);
    // id order: u just past token 1's share of the kept mass lands on token 2, not 4
    let share = 1.0 / (1.0 + 2.0 * (-1f32).exp());
    assert_eq!(draw(&z, &d(share + 1e-4, 2, 1.0), &mut keys), 2);
}

#[test]
fn same_seed_same_draws() {
    let draw = |seed| {
        let mut s = Sampler::new(
            SamplingParams {
                temperature: 1.0,
                seed,
                ..Default::default()
            },
            6,
        );
        (0..50)
            .map(|_| s.sample(&logits(), &[]))
            .collect::<Vec<_>>()
    };
    assert_eq!(draw(9), draw(9));
    assert_ne!(draw(9), draw(10));
}

#[test]
fn invalid_params_rejected() {
    for p in [
        SamplingParams {
            temperature: -1.0,
            ..Default::default()
        },
        SamplingParams {
            top_p: 0.0,
            ..Default::default()
        },
        SamplingParams {
            repetition_penalty: 0.0,
            ..Default::default()
        },
    ] {
        assert!(matches!(p.validate(), Err(Error::InvalidArgument(_))));
    }
}
