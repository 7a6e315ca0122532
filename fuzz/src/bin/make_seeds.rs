//! Writes the starting corpus of every fuzz target into `seeds/<target>/` (beside Cargo.toml).
//!
//! - GGUF: a tiny Llama with a byte-level BPE vocabulary, f32 / f16 / q8_0 tensors.
//! - HF directory: the same model as safetensors with a plain config, and with a
//!   compressed-tensors int8 config in llm-compressor's layout.
//! - Recipes: every built-in preset. Requests: completions and chat bodies.

#[path = "../../../tests/common/mod.rs"]
#[allow(dead_code, unused_imports)]
mod common;

use common::*;
use ferroq::checkpoint::config::ModelConfig;
use ferroq::ptq::recipe::preset;
use ferroq::tensor::HostTensor;
use half::f16;
use std::collections::BTreeMap;
use std::path::Path;

fn put(dir: &Path, name: &str, data: &[u8]) {
    std::fs::create_dir_all(dir).expect("mkdir seeds");
    std::fs::write(dir.join(name), data).expect("write seed");
}

/// A GGUF tensor of `t` (GGML order dims) as f16 (type 1) or q8_0 (type 8, blocks of 32).
fn typed_tensor(name: &str, t: &HostTensor, type_id: u32) -> GgufTensor {
    let data = t.to_f32_vec();
    let bytes: Vec<u8> = match type_id {
        1 => data.iter().flat_map(|x| f16::from_f32(*x).to_le_bytes()).collect(),
        8 => data
            .chunks(32)
            .flat_map(|b| {
                let amax = b.iter().fold(0f32, |m, x| m.max(x.abs()));
                let d = amax / 127.0;
                let inv = if d > 0.0 { 1.0 / d } else { 0.0 };
                let mut out = f16::from_f32(d).to_le_bytes().to_vec();
                out.extend(b.iter().map(|x| (x * inv).round() as i8 as u8));
                out
            })
            .collect(),
        _ => return f32_tensor(name, t.shape.iter().rev().map(|&d| d as u64).collect(), &data),
    };
    GgufTensor {
        name: name.into(),
        dims: t.shape.iter().rev().map(|&d| d as u64).collect(),
        type_id,
        data: bytes,
    }
}

fn gguf_name(hf: &str) -> String {
    hf.replace("model.layers.", "blk.")
        .replace("model.embed_tokens", "token_embd")
        .replace("model.norm", "output_norm")
        .replace("lm_head", "output")
        .replace("self_attn.q_proj", "attn_q")
        .replace("self_attn.k_proj", "attn_k")
        .replace("self_attn.v_proj", "attn_v")
        .replace("self_attn.o_proj", "attn_output")
        .replace("mlp.gate_proj", "ffn_gate")
        .replace("mlp.up_proj", "ffn_up")
        .replace("mlp.down_proj", "ffn_down")
        .replace("input_layernorm", "attn_norm")
        .replace("post_attention_layernorm", "ffn_norm")
}

fn gguf_seed(c: &ModelConfig, w: &BTreeMap<String, HostTensor>) -> Vec<u8> {
    // 67 tokens: 64 printable bytes in GPT-2's byte-to-unicode map, a merge, two specials
    let mut tokens: Vec<String> = ('!'..='`').map(|ch| ch.to_string()).collect();
    tokens.extend(["HI".to_string(), "<|endoftext|>".into(), "<|im_start|>".into()]);
    let types: Vec<i32> = (0..tokens.len()).map(|i| if i >= 65 { 3 } else { 1 }).collect();
    let meta = vec![
        ("general.architecture", Meta::Str("llama".into())),
        ("general.alignment", Meta::U32(32)),
        ("llama.block_count", Meta::U32(c.num_layers as u32)),
        ("llama.context_length", Meta::U32(64)),
        ("llama.embedding_length", Meta::U32(c.hidden_size as u32)),
        ("llama.feed_forward_length", Meta::U32(c.intermediate_size as u32)),
        ("llama.attention.head_count", Meta::U32(c.num_heads as u32)),
        ("llama.attention.head_count_kv", Meta::U32(c.num_kv_heads as u32)),
        ("llama.rope.freq_base", Meta::F32(10000.0)),
        ("llama.attention.layer_norm_rms_epsilon", Meta::F32(1e-5)),
        ("llama.vocab_size", Meta::U32(c.vocab_size as u32)),
        ("tokenizer.ggml.model", Meta::Str("gpt2".into())),
        ("tokenizer.ggml.pre", Meta::Str("smollm".into())),
        ("tokenizer.ggml.tokens", Meta::StrArr(tokens)),
        ("tokenizer.ggml.token_type", Meta::I32Arr(types)),
        ("tokenizer.ggml.merges", Meta::StrArr(vec!["H I".into()])),
        ("tokenizer.ggml.eos_token_id", Meta::U32(65)),
        (
            "tokenizer.chat_template",
            Meta::Str("{% for m in messages %}{{ m.content }}{% endfor %}".into()),
        ),
    ];
    let tensors: Vec<GgufTensor> = w
        .iter()
        .enumerate()
        .map(|(i, (name, t))| {
            let ty = if t.shape.len() < 2 { 0 } else { [0, 1, 8][i % 3] };
            typed_tensor(&gguf_name(name), t, ty)
        })
        .collect();
    gguf_bytes(&meta, &tensors)
}

fn framed(config: &str, weights: &[u8]) -> Vec<u8> {
    let mut out = (config.len() as u32).to_le_bytes().to_vec();
    out.extend(config.as_bytes());
    out.extend(weights);
    out
}

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("seeds");
    let c = tiny_config(false);
    let w = tiny_weights(&c, 5);
    put(&root.join("gguf"), "tiny-llama", &gguf_seed(&c, &w));

    // the HF seeds are smaller still: every execution writes and loads the whole directory
    let mut small = c.to_hf_json("float32");
    for (k, v) in [
        ("hidden_size", 16),
        ("intermediate_size", 16),
        ("num_hidden_layers", 1),
        ("num_attention_heads", 2),
        ("num_key_value_heads", 1),
        ("vocab_size", 17),
    ] {
        small[k] = serde_json::json!(v);
    }
    let c = ModelConfig::from_hf_json(&small.to_string()).expect("small config");
    let w = tiny_weights(&c, 5);
    let dir = tempfile::tempdir().expect("tempdir");
    write_hf_dir(dir.path(), &c, &w);
    let st = std::fs::read(dir.path().join("model.safetensors")).expect("read");
    let plain = c.to_hf_json("float32").to_string();
    put(&root.join("hf_dir"), "plain", &framed(&plain, &st));
    // compressed-tensors int8: one linear stored as int8 with a per-channel scale
    let mut ct_w = w.clone();
    let q = "model.layers.0.mlp.up_proj.weight";
    let wq = ct_w.remove(q).expect("up_proj");
    let (rows, cols) = (wq.shape[0], wq.shape[1]);
    let data = wq.to_f32_vec();
    let scales: Vec<f32> = data
        .chunks(cols)
        .map(|r| r.iter().fold(0f32, |m, x| m.max(x.abs())) / 127.0)
        .collect();
    let ints: Vec<u8> = data
        .iter()
        .enumerate()
        .map(|(i, x)| (x / scales[i / cols]).round() as i8 as u8)
        .collect();
    let mut raw: Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)> = ct_w
        .iter()
        .map(|(n, t)| {
            let b: Vec<u8> = t.to_f32_vec().iter().flat_map(|x| x.to_le_bytes()).collect();
            (n.clone(), safetensors::Dtype::F32, t.shape.clone(), b)
        })
        .collect();
    raw.push((q.into(), safetensors::Dtype::I8, vec![rows, cols], ints));
    raw.push((
        q.replace("weight", "weight_scale"),
        safetensors::Dtype::F32,
        vec![rows, 1],
        scales.iter().flat_map(|x| x.to_le_bytes()).collect(),
    ));
    let views: Vec<(String, safetensors::tensor::TensorView)> = raw
        .iter()
        .map(|(n, d, s, b)| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(*d, s.clone(), b).expect("view"),
            )
        })
        .collect();
    let ct_st = safetensors::serialize(views, &None).expect("serialize");
    let mut cj = c.to_hf_json("float32");
    cj["quantization_config"] = serde_json::json!({
        "quant_method": "compressed-tensors", "format": "int-quantized",
        "quantization_status": "compressed", "ignore": ["lm_head"],
        "config_groups": {"group_0": {"targets": ["re:.*layers\\.0\\.mlp\\.up_proj$"],
            "weights": {"num_bits": 8, "type": "int", "symmetric": true, "strategy": "channel", "dynamic": false},
            "input_activations": {"num_bits": 8, "type": "int", "symmetric": true, "strategy": "token", "dynamic": true}}}
    });
    put(&root.join("hf_dir"), "ct_int8", &framed(&cj.to_string(), &ct_st));

    for name in ["w8a8", "w8a8-static", "fp8", "w4a16", "w4a16-gptq"] {
        let y = preset(name).expect("preset");
        put(&root.join("recipe"), name, y.as_bytes());
    }
    let reqs: [(u8, &str); 4] = [
        (0, r#"{"model": "m", "prompt": "Hello", "max_tokens": 8, "temperature": 0.7, "top_p": 0.9, "stop": ["\n"], "seed": 3}"#),
        (0, r#"{"prompt": [1, 2, 3], "stream": true, "stream_options": {"include_usage": true}, "top_k": 5, "ignore_eos": true}"#),
        (1, r#"{"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}], "max_tokens": 4}"#),
        (1, r#"{"messages": [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}], "repetition_penalty": 1.1, "stop": "x"}"#),
    ];
    for (i, (ep, body)) in reqs.iter().enumerate() {
        let mut b = vec![*ep];
        b.extend(body.as_bytes());
        put(&root.join("request"), &format!("r{i}"), &b);
    }
    println!("seeds written under {}", root.display());
}
