//! Config reading for the architectures beyond the Llama block, as their transformers config
//! classes read them: Gemma 2's defaults (soft caps 50 / 30, `query_pre_attn_scalar` 256,
//! alternating windows), Gemma 3's legacy keys (`rope_local_base_freq`, `rope_scaling` for the
//! global layers, `sliding_window_pattern`), OLMo 2's norm epsilon, and refusals by name.

use ferroq::checkpoint::config::{ModelConfig, RopeScaling};
use ferroq::error::Error;

fn cfg(model_type: &str, extra: &str) -> Result<ModelConfig, Error> {
    ModelConfig::from_hf_json(&format!(
        r#"{{"model_type": "{model_type}", "hidden_size": 64, "intermediate_size": 96,
            "num_hidden_layers": 7, "num_attention_heads": 4, "num_key_value_heads": 2,
            "head_dim": 32, "vocab_size": 10{extra}}}"#
    ))
}

fn round_trip(c: &ModelConfig) {
    let back = c.to_hf_json("bfloat16").expect("to json").to_string();
    assert_eq!(
        &ModelConfig::from_hf_json(&back).expect("reparse"),
        c,
        "{back}"
    );
}

#[test]
fn gemma2_takes_its_class_defaults_and_explicit_nulls() {
    let c = cfg("gemma2", "").expect("gemma2");
    assert_eq!((c.attn_softcap, c.final_softcap), (Some(50.0), Some(30.0)));
    assert_eq!(c.query_pre_attn_scalar, Some(256.0));
    // written as the integer the config classes require
    let j = c.to_hf_json("bfloat16").expect("json");
    assert_eq!(j["query_pre_attn_scalar"].as_u64(), Some(256), "{j}");
    assert_eq!(c.attn_scale(), 1.0 / 16.0);
    assert_eq!(c.sliding_window, Some(4096));
    assert_eq!(
        c.sliding_layers,
        [true, false, true, false, true, false, true],
        "layer 0 slides, then every other"
    );
    assert!(!c.qkv_bias && c.local_rope.is_none());
    round_trip(&c);
    let c = cfg(
        "gemma2",
        r#", "attn_logit_softcapping": null, "final_logit_softcapping": null,
        "sliding_window": null"#,
    )
    .expect("nulls");
    assert_eq!((c.attn_softcap, c.final_softcap), (None, None));
    assert_eq!(c.window(0), None);
    round_trip(&c);
}

#[test]
fn gemma3_legacy_keys_give_a_rope_per_layer_type() {
    let c = cfg(
        "gemma3_text",
        r#", "rope_theta": 1000000.0, "rope_local_base_freq": 10000.0,
        "rope_scaling": {"rope_type": "linear", "factor": 8.0}, "sliding_window": 512,
        "query_pre_attn_scalar": 32"#,
    )
    .expect("gemma3");
    assert_eq!(c.rope_theta, 1e6);
    assert_eq!(c.rope_scaling, Some(RopeScaling::Linear { factor: 8.0 }));
    assert_eq!(c.local_rope, Some((1e4, None)));
    // five sliding layers to each global one, by default
    assert_eq!(
        c.sliding_layers,
        [true, true, true, true, true, false, true]
    );
    assert!(c.local_rope_at(0) && !c.local_rope_at(5));
    assert_eq!((c.attn_softcap, c.final_softcap), (None, None));
    round_trip(&c);
    // the same settings in transformers 5's per-layer-type form
    let v5 = cfg(
        "gemma3_text",
        r#", "sliding_window": 512, "query_pre_attn_scalar": 32,
        "layer_types": ["sliding_attention", "sliding_attention", "sliding_attention",
          "sliding_attention", "sliding_attention", "full_attention", "sliding_attention"],
        "rope_parameters": {
          "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1000000.0},
          "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0}}"#,
    )
    .expect("v5");
    assert_eq!(v5, c);
    // a pattern other than 6
    let p = cfg("gemma3_text", r#", "sliding_window_pattern": 2"#).expect("pattern");
    assert_eq!(p.sliding_layers[..4], [true, false, true, false]);
    // a flat rope_parameters is not Gemma 3's layout
    let flat = cfg(
        "gemma3_text",
        r#", "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0}"#,
    );
    assert!(matches!(flat, Err(Error::Config(m)) if m.contains("per layer type")));
}

#[test]
fn olmo2_defaults_and_shapes() {
    let c = cfg("olmo2", "").expect("olmo2");
    assert_eq!(c.rms_norm_eps, 1e-5);
    assert_eq!(
        c.expected_shape("model.layers.0.self_attn.q_norm.weight"),
        Some(vec![128])
    );
    assert_eq!(
        c.expected_shape("model.layers.0.self_attn.k_norm.weight"),
        Some(vec![64])
    );
    assert_eq!(
        c.expected_shape("model.layers.0.post_feedforward_layernorm.weight"),
        Some(vec![64])
    );
    // OLMo 2 has no pre-norms
    assert_eq!(
        c.expected_shape("model.layers.0.input_layernorm.weight"),
        None
    );
    let c = cfg("olmo2", r#", "attention_bias": true"#).expect("bias");
    assert!(c.qkv_bias && c.o_bias);
    round_trip(&c);
}

#[test]
fn gemma_keys_and_activations_are_checked() {
    for (model_type, extra, names) in [
        (
            "gemma2",
            r#", "hidden_activation": "gelu""#,
            "hidden_activation",
        ),
        (
            "gemma3_text",
            r#", "use_bidirectional_attention": true"#,
            "use_bidirectional_attention",
        ),
        (
            "olmo2",
            r#", "query_pre_attn_scalar": 64"#,
            "query_pre_attn_scalar",
        ),
        (
            "llama",
            r#", "attn_logit_softcapping": 50.0"#,
            "attn_logit_softcapping",
        ),
        (
            "gemma2",
            r#", "attn_logit_softcapping": -1.0"#,
            "attn_logit_softcapping",
        ),
        (
            "gemma2",
            r#", "query_pre_attn_scalar": "x""#,
            "query_pre_attn_scalar",
        ),
        ("gemma", "", "gemma2, gemma3_text, olmo2"),
    ] {
        match cfg(model_type, extra) {
            Err(Error::Config(m)) => assert!(m.contains(names), "{model_type} {extra}: {m}"),
            other => panic!("{model_type} {extra}: accepted or wrong error: {other:?}"),
        }
    }
    // Gemma's `hidden_act` is not what its modeling file reads: it stays free
    assert!(cfg("gemma2", r#", "hidden_act": "gelu""#).is_ok());
}
