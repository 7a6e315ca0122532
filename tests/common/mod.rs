//! Test helpers: a GGUF writer for hand-built files, a tiny random Llama written to disk, random
//! int8 / int4 operands, and the path of the real model fetched by `models/fetch.sh`.
#![allow(dead_code)]

use ferroq::checkpoint::config::ModelConfig;
use ferroq::engine::sampler::Rng;
use ferroq::tensor::HostTensor;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The real default model (see models/README.md). Tests that need it fail, loudly, without it.
pub fn real_gguf() -> PathBuf {
    let p = std::env::var_os("FERROQ_TEST_GGUF")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("models/cache/SmolLM2-135M-Instruct.Q4_1.gguf")
        });
    assert!(
        p.exists(),
        "{} is missing: run `bash models/fetch.sh` first",
        p.display()
    );
    p
}

/// GGUF metadata values for the writer.
pub enum Meta {
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    Str(String),
    U64(u64),
    StrArr(Vec<String>),
    I32Arr(Vec<i32>),
    F32Arr(Vec<f32>),
}

pub struct GgufTensor {
    pub name: String,
    /// GGML order: fastest-varying first
    pub dims: Vec<u64>,
    pub type_id: u32,
    pub data: Vec<u8>,
}

fn put_str(b: &mut Vec<u8>, s: &str) {
    b.extend((s.len() as u64).to_le_bytes());
    b.extend(s.as_bytes());
}

/// Serialise a GGUF v3 file (alignment 32).
pub fn gguf_bytes(meta: &[(&str, Meta)], tensors: &[GgufTensor]) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend(b"GGUF");
    b.extend(3u32.to_le_bytes());
    b.extend((tensors.len() as u64).to_le_bytes());
    b.extend((meta.len() as u64).to_le_bytes());
    for (k, v) in meta {
        put_str(&mut b, k);
        match v {
            Meta::U32(x) => {
                b.extend(4u32.to_le_bytes());
                b.extend(x.to_le_bytes());
            }
            Meta::I32(x) => {
                b.extend(5u32.to_le_bytes());
                b.extend(x.to_le_bytes());
            }
            Meta::F32(x) => {
                b.extend(6u32.to_le_bytes());
                b.extend(x.to_le_bytes());
            }
            Meta::Bool(x) => {
                b.extend(7u32.to_le_bytes());
                b.push(*x as u8);
            }
            Meta::Str(s) => {
                b.extend(8u32.to_le_bytes());
                put_str(&mut b, s);
            }
            Meta::U64(x) => {
                b.extend(10u32.to_le_bytes());
                b.extend(x.to_le_bytes());
            }
            Meta::StrArr(a) => {
                b.extend(9u32.to_le_bytes());
                b.extend(8u32.to_le_bytes());
                b.extend((a.len() as u64).to_le_bytes());
                a.iter().for_each(|s| put_str(&mut b, s));
            }
            Meta::I32Arr(a) => {
                b.extend(9u32.to_le_bytes());
                b.extend(5u32.to_le_bytes());
                b.extend((a.len() as u64).to_le_bytes());
                a.iter().for_each(|x| b.extend(x.to_le_bytes()));
            }
            Meta::F32Arr(a) => {
                b.extend(9u32.to_le_bytes());
                b.extend(6u32.to_le_bytes());
                b.extend((a.len() as u64).to_le_bytes());
                a.iter().for_each(|x| b.extend(x.to_le_bytes()));
            }
        }
    }
    let mut offset = 0u64;
    let mut offsets = Vec::new();
    for t in tensors {
        offsets.push(offset);
        offset += (t.data.len() as u64).div_ceil(32) * 32;
    }
    for (t, off) in tensors.iter().zip(&offsets) {
        put_str(&mut b, &t.name);
        b.extend((t.dims.len() as u32).to_le_bytes());
        t.dims.iter().for_each(|d| b.extend(d.to_le_bytes()));
        b.extend(t.type_id.to_le_bytes());
        b.extend(off.to_le_bytes());
    }
    while b.len() % 32 != 0 {
        b.push(0);
    }
    for t in tensors {
        b.extend(&t.data);
        while b.len() % 32 != 0 {
            b.push(0);
        }
    }
    b
}

pub fn f32_tensor(name: &str, dims: Vec<u64>, data: &[f32]) -> GgufTensor {
    GgufTensor {
        name: name.into(),
        dims,
        type_id: 0,
        data: data.iter().flat_map(|x| x.to_le_bytes()).collect(),
    }
}

/// The one closeness check of the suite: |got[i] − want[i]| ≤ atol + rtol·|want[i]| for
/// every i (a NaN fails); the message names the worst element.
pub fn assert_close(what: &str, got: &[f32], want: &[f64], rtol: f64, atol: f64) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let mut worst: Option<(f64, usize)> = None;
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let err = (g as f64 - w).abs();
        // written so that a NaN on either side counts as a failure
        let ok = err <= atol + rtol * w.abs();
        let excess = if ok {
            0.0
        } else if err.is_nan() {
            f64::INFINITY
        } else {
            err - (atol + rtol * w.abs())
        };
        if !ok && worst.is_none_or(|(e, _)| excess > e) {
            worst = Some((excess, i));
        }
    }
    if let Some((excess, i)) = worst {
        panic!(
            "{what}: index {i} got {} want {} (over the tolerance by {excess:e}; rtol {rtol:e}, atol {atol:e})",
            got[i], want[i]
        );
    }
}

/// max |v|: the scale that value-scaled tolerances multiply.
pub fn max_abs(v: &[f32]) -> f32 {
    v.iter().fold(0f32, |a, x| a.max(x.abs()))
}

/// max |a − b| over two equally long slices.
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max)
}

/// Uniform random values in [-scale, scale).
pub fn randn(rng: &mut Rng, n: usize, scale: f32) -> Vec<f32> {
    (0..n)
        .map(|_| (rng.next_f32() * 2.0 - 1.0) * scale)
        .collect()
}

/// A tiny Llama-block config: 2 layers, GQA 4/2 heads of 8, odd FFN and vocab sizes; with
/// q/k/v biases it is a Qwen2 (Llama's attention_bias also puts one on o_proj).
pub fn tiny_config(qkv_bias: bool) -> ModelConfig {
    let family = if qkv_bias { "qwen2" } else { "llama" };
    ModelConfig::from_hf_json(&format!(
        r#"{{"model_type": "{family}", "hidden_size": 32, "intermediate_size": 45, "num_hidden_layers": 2,
            "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 67, "rms_norm_eps": 1e-5,
            "rope_theta": 10000.0, "max_position_embeddings": 64, "tie_word_embeddings": false,
            "bos_token_id": 1, "eos_token_id": 2}}"#
    ))
    .expect("tiny config parses")
}

/// Random weights for `c`, by HF name (f32).
pub fn tiny_weights(c: &ModelConfig, seed: u64) -> BTreeMap<String, HostTensor> {
    let mut rng = Rng::new(seed);
    let mut w = BTreeMap::new();
    let mut add = |name: String, shape: Vec<usize>, scale: f32, offset: f32| {
        let n = shape.iter().product();
        let data = randn(&mut rng, n, scale)
            .into_iter()
            .map(|x| x + offset)
            .collect();
        w.insert(name, HostTensor::from_f32(shape, data).expect("shape"));
    };
    let (d, q, kv, f) = (c.hidden_size, c.q_dim(), c.kv_dim(), c.intermediate_size);
    add(
        "model.embed_tokens.weight".into(),
        vec![c.vocab_size, d],
        1.0,
        0.0,
    );
    add("model.norm.weight".into(), vec![d], 0.2, 1.0);
    add("lm_head.weight".into(), vec![c.vocab_size, d], 0.3, 0.0);
    for l in 0..c.num_layers {
        let p = format!("model.layers.{l}");
        add(format!("{p}.input_layernorm.weight"), vec![d], 0.2, 1.0);
        add(
            format!("{p}.post_attention_layernorm.weight"),
            vec![d],
            0.2,
            1.0,
        );
        add(format!("{p}.self_attn.q_proj.weight"), vec![q, d], 0.3, 0.0);
        add(
            format!("{p}.self_attn.k_proj.weight"),
            vec![kv, d],
            0.3,
            0.0,
        );
        add(
            format!("{p}.self_attn.v_proj.weight"),
            vec![kv, d],
            0.3,
            0.0,
        );
        add(format!("{p}.self_attn.o_proj.weight"), vec![d, q], 0.3, 0.0);
        add(format!("{p}.mlp.gate_proj.weight"), vec![f, d], 0.3, 0.0);
        add(format!("{p}.mlp.up_proj.weight"), vec![f, d], 0.3, 0.0);
        add(format!("{p}.mlp.down_proj.weight"), vec![d, f], 0.3, 0.0);
        if c.qkv_bias {
            add(format!("{p}.self_attn.q_proj.bias"), vec![q], 0.1, 0.0);
            add(format!("{p}.self_attn.k_proj.bias"), vec![kv], 0.1, 0.0);
            add(format!("{p}.self_attn.v_proj.bias"), vec![kv], 0.1, 0.0);
        }
    }
    w
}

/// Write `weights` + config.json into `dir` as an HF checkpoint (no tokenizer).
pub fn write_hf_dir(dir: &Path, c: &ModelConfig, weights: &BTreeMap<String, HostTensor>) {
    std::fs::create_dir_all(dir).expect("mkdir");
    let list: Vec<(String, HostTensor)> = weights
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    ferroq::checkpoint::safetensors_io::write_safetensors(
        &dir.join("model.safetensors"),
        &list,
        None,
    )
    .expect("write");
    std::fs::write(
        dir.join("config.json"),
        c.to_hf_json("float32").expect("config json").to_string(),
    )
    .expect("config");
}

/// A byte-level tokenizer is enough: the tiny model is fed ids directly, but the pipeline
/// wants a tokenizer to build calibration samples from text.
pub fn byte_tokenizer() -> ferroq::tokenizer::TokenizerBundle {
    let vocab: serde_json::Map<String, serde_json::Value> =
        (0..67u32).map(|i| (format!("<{i}>"), i.into())).collect();
    let mut v = vocab.clone();
    for (i, c) in "abcdefghijklmnopqrstuvwxyz .,".chars().enumerate() {
        v.insert(c.to_string(), serde_json::json!(10 + i));
    }
    let json = serde_json::json!({"version": "1.0", "added_tokens": [], "normalizer": null,
        "pre_tokenizer": {"type": "Split", "pattern": {"Regex": "."}, "behavior": "Isolated", "invert": false},
        "post_processor": null, "decoder": null,
        "model": {"type": "WordLevel", "vocab": v, "unk_token": "<0>"}});
    let json = json.to_string();
    ferroq::tokenizer::TokenizerBundle {
        tokenizer: ferroq::tokenizer::TokenizerBundle::from_json(json.clone()).expect("tokenizer"),
        json,
        chat_template: None,
        bos_token: None,
        eos_token: None,
        eos_ids: vec![],
    }
}

/// The tiny model quantized with the `w8a8` preset (pd_mix) on 4 samples of 16 tokens.
pub fn tiny_w8a8(seed: u64) -> ferroq::ptq::pipeline::QuantizedModel {
    w8a8_of(&tiny_config(false), seed)
}

/// Random weights for `c` quantized with the `w8a8` preset on 4 samples of 16 tokens.
pub fn w8a8_of(c: &ModelConfig, seed: u64) -> ferroq::ptq::pipeline::QuantizedModel {
    quantized_of(c, seed, "w8a8")
}

/// `tiny_weights(c, seed)` quantized by a preset recipe, calibrated on a few samples.
pub fn quantized_of(
    c: &ModelConfig,
    seed: u64,
    preset: &str,
) -> ferroq::ptq::pipeline::QuantizedModel {
    let r = ferroq::ptq::recipe::Recipe::load(preset).expect("preset");
    quantize_weights(c, tiny_weights(c, seed), &r)
}

/// `weights` quantized by `recipe`, calibrated on 4 samples of 16 tokens.
pub fn quantize_weights(
    c: &ModelConfig,
    weights: BTreeMap<String, HostTensor>,
    recipe: &ferroq::ptq::recipe::Recipe,
) -> ferroq::ptq::pipeline::QuantizedModel {
    use ferroq::ptq::pipeline::{quantize, QuantizeOptions};
    let opts = QuantizeOptions {
        n_samples: 4,
        seq_len: 16,
        ..Default::default()
    };
    quantize(
        c.clone(),
        byte_tokenizer(),
        weights,
        recipe,
        &opts,
        &|_, _, _| {},
    )
    .expect("quantize")
}

/// n random int8 values in lo..=127.
pub fn rand_i8(rng: &mut Rng, n: usize, lo: i32) -> Vec<i8> {
    (0..n)
        .map(|_| (lo + (rng.next_u64() % (128 - lo) as u64) as i32) as i8)
        .collect()
}

/// The dequantized (n, k) rows of a quantized weight.
pub fn decoded(q: &ferroq::quant::QuantWeight, n: usize, k: usize) -> Vec<f32> {
    let mut d = vec![0.0; n * k];
    q.decode_rows(k, 0, n, &mut d);
    d
}

/// Random nibbles and scales, and zero points cycling through all of -8..=7 so every lookup
/// table of the BF16 kernels is used.
pub fn random_int4(
    rng: &mut Rng,
    n: usize,
    k: usize,
    group: usize,
    symmetric: bool,
) -> ferroq::quant::QuantWeight {
    let groups = k.div_ceil(group);
    ferroq::quant::QuantWeight::Int4 {
        packed: (0..n * k / 2).map(|_| rng.next_u64() as u8).collect(),
        scale: (0..n * groups)
            .map(|_| 0.01 + (rng.next_u64() % 1000) as f32 * 1e-4)
            .collect(),
        zero: if symmetric {
            Vec::new()
        } else {
            (0..n * groups).map(|e| (e % 16) as i8 - 8).collect()
        },
        group,
    }
}
