//! A tiny random Llama written to disk by the test: the loaded model's logits against a naive
//! straight-line reference, prefill vs token-by-token decode, GGUF vs safetensors sources, and
//! shard / shape error handling.

mod common;

use common::*;
use ferroq::backend::cpu::CpuBackend;
use ferroq::backend::prelude::*;
use ferroq::checkpoint::config::ModelConfig;
use ferroq::checkpoint::gguf::{weights::GgufWeights, GgufFile};
use ferroq::checkpoint::safetensors_io::SafetensorsWeights;
use ferroq::model::llama::{LlamaModel, Logits};
use ferroq::tensor::{DType, HostTensor};
use ferroq::Error;
use std::collections::BTreeMap;

/// Plain-loop forward pass over all tokens, returning every position's logits (f64 math).
fn reference_logits(
    c: &ModelConfig,
    w: &BTreeMap<String, HostTensor>,
    ids: &[u32],
) -> Vec<Vec<f64>> {
    let get = |n: &str| {
        w[n].to_f32_vec()
            .into_iter()
            .map(|x| x as f64)
            .collect::<Vec<f64>>()
    };
    let (d, hd, nh, nkv, f) = (
        c.hidden_size,
        c.head_dim,
        c.num_heads,
        c.num_kv_heads,
        c.intermediate_size,
    );
    let eps = c.rms_norm_eps as f64;
    let matvec = |m: &[f64], x: &[f64], rows: usize| -> Vec<f64> {
        let k = x.len();
        (0..rows)
            .map(|r| (0..k).map(|i| m[r * k + i] * x[i]).sum())
            .collect()
    };
    let rms = |x: &[f64], g: &[f64]| -> Vec<f64> {
        let ms = x.iter().map(|v| v * v).sum::<f64>() / x.len() as f64;
        let s = 1.0 / (ms + eps).sqrt();
        x.iter().zip(g).map(|(v, g)| v * s * g).collect()
    };
    let rope = |v: &mut [f64], pos: usize| {
        for i in 0..hd / 2 {
            let theta = pos as f64 / c.rope_theta.powf(2.0 * i as f64 / hd as f64);
            let (x0, x1) = (v[i], v[i + hd / 2]);
            v[i] = x0 * theta.cos() - x1 * theta.sin();
            v[i + hd / 2] = x1 * theta.cos() + x0 * theta.sin();
        }
    };
    let emb = get("model.embed_tokens.weight");
    let mut xs: Vec<Vec<f64>> = ids
        .iter()
        .map(|&t| emb[t as usize * d..(t as usize + 1) * d].to_vec())
        .collect();
    for l in 0..c.num_layers {
        let p = format!("model.layers.{l}");
        let bias = |n: &str, len: usize| {
            if c.qkv_bias {
                get(&format!("{p}.self_attn.{n}.bias"))
            } else {
                vec![0.0; len]
            }
        };
        let (wq, wk, wv, wo) = (
            get(&format!("{p}.self_attn.q_proj.weight")),
            get(&format!("{p}.self_attn.k_proj.weight")),
            get(&format!("{p}.self_attn.v_proj.weight")),
            get(&format!("{p}.self_attn.o_proj.weight")),
        );
        let (bq, bk, bv) = (
            bias("q_proj", nh * hd),
            bias("k_proj", nkv * hd),
            bias("v_proj", nkv * hd),
        );
        let g1 = get(&format!("{p}.input_layernorm.weight"));
        let (mut qs, mut ks, mut vs) = (vec![], vec![], vec![]);
        for (pos, x) in xs.iter().enumerate() {
            let h = rms(x, &g1);
            let add = |a: Vec<f64>, b: &[f64]| {
                a.into_iter()
                    .zip(b)
                    .map(|(a, b)| a + b)
                    .collect::<Vec<f64>>()
            };
            let mut q = add(matvec(&wq, &h, nh * hd), &bq);
            let mut k = add(matvec(&wk, &h, nkv * hd), &bk);
            for hh in 0..nh {
                rope(&mut q[hh * hd..(hh + 1) * hd], pos);
            }
            for hh in 0..nkv {
                rope(&mut k[hh * hd..(hh + 1) * hd], pos);
            }
            qs.push(q);
            ks.push(k);
            vs.push(add(matvec(&wv, &h, nkv * hd), &bv));
        }
        for t in 0..xs.len() {
            let mut att = vec![0.0; nh * hd];
            for hh in 0..nh {
                let g = hh / (nh / nkv);
                let q = &qs[t][hh * hd..(hh + 1) * hd];
                let scores: Vec<f64> = (0..=t)
                    .map(|j| {
                        q.iter()
                            .zip(&ks[j][g * hd..(g + 1) * hd])
                            .map(|(a, b)| a * b)
                            .sum::<f64>()
                            / (hd as f64).sqrt()
                    })
                    .collect();
                let m = scores.iter().cloned().fold(f64::MIN, f64::max);
                let e: Vec<f64> = scores.iter().map(|s| (s - m).exp()).collect();
                let z: f64 = e.iter().sum();
                for (j, ej) in e.iter().enumerate() {
                    for i in 0..hd {
                        att[hh * hd + i] += ej / z * vs[j][g * hd + i];
                    }
                }
            }
            let o = matvec(&wo, &att, d);
            xs[t].iter_mut().zip(o).for_each(|(x, o)| *x += o);
        }
        let g2 = get(&format!("{p}.post_attention_layernorm.weight"));
        let (wg, wu, wd) = (
            get(&format!("{p}.mlp.gate_proj.weight")),
            get(&format!("{p}.mlp.up_proj.weight")),
            get(&format!("{p}.mlp.down_proj.weight")),
        );
        for x in xs.iter_mut() {
            let h = rms(x, &g2);
            let (g, u) = (matvec(&wg, &h, f), matvec(&wu, &h, f));
            let a: Vec<f64> = g
                .iter()
                .zip(&u)
                .map(|(g, u)| g / (1.0 + (-g).exp()) * u)
                .collect();
            let o = matvec(&wd, &a, d);
            x.iter_mut().zip(o).for_each(|(x, o)| *x += o);
        }
    }
    let (gn, lm) = (get("model.norm.weight"), get("lm_head.weight"));
    xs.iter()
        .map(|x| matvec(&lm, &rms(x, &gn), c.vocab_size))
        .collect()
}

const IDS: [u32; 11] = [3, 17, 0, 66, 5, 5, 42, 1, 2, 30, 64];

fn load_tiny(
    qkv_bias: bool,
    seed: u64,
) -> (
    tempfile::TempDir,
    ModelConfig,
    BTreeMap<String, HostTensor>,
    LlamaModel<CpuBackend>,
) {
    let c = tiny_config(qkv_bias);
    let w = tiny_weights(&c, seed);
    let dir = tempfile::tempdir().expect("tempdir");
    write_hf_dir(dir.path(), &c, &w);
    let loaded_c = ferroq::checkpoint::read_hf_config(dir.path()).expect("config");
    assert_eq!(loaded_c, c);
    let src = SafetensorsWeights::open_dir(dir.path()).expect("open");
    let m = LlamaModel::load(CpuBackend::new(), loaded_c, &src, None).expect("load");
    (dir, c, w, m)
}

#[test]
fn forward_matches_naive_reference() {
    for qkv_bias in [false, true] {
        let (_d, c, w, m) = load_tiny(qkv_bias, 7 + qkv_bias as u64);
        let want = reference_logits(&c, &w, &IDS);
        let mut s = m.new_session(16, 32, true).expect("session");
        let got = m
            .forward(&mut s, &IDS, Logits::All)
            .expect("forward")
            .to_vec();
        for (t, row) in want.iter().enumerate() {
            assert_close(
                "logits",
                &got[t * c.vocab_size..(t + 1) * c.vocab_size],
                row,
                1e-4,
                1e-4,
            );
        }
    }
}

#[test]
fn prefill_equals_token_by_token_decode() {
    let (_d, _c, _w, m) = load_tiny(false, 11);
    let mut a = m.new_session(16, 32, false).expect("session");
    let batched = m
        .forward(&mut a, &IDS, Logits::Last)
        .expect("prefill")
        .to_vec();
    let mut b = m.new_session(1, 32, false).expect("session");
    let mut last = Vec::new();
    for &t in &IDS {
        last = m
            .forward(&mut b, &[t], Logits::Last)
            .expect("decode")
            .to_vec();
    }
    assert_eq!(batched, last, "prefill and decode logits differ");
    // chunked prefill (max_batch 4 < 11 tokens) too
    let mut c = m.new_session(4, 32, false).expect("session");
    assert_eq!(
        m.forward(&mut c, &IDS, Logits::Last)
            .expect("chunked")
            .to_vec(),
        batched
    );
}

/// `forward_greedy` (the argmax picked by the backend, only the id read back) gives the token
/// `forward` + the sampler's argmax give, through chunked prefill and 8 decode steps; the
/// backend's `argmax_rows` keeps the first index on ties and refuses short logits.
#[test]
fn greedy_on_the_backend_equals_argmax_of_the_logits() {
    use ferroq::engine::sampler::argmax;
    let (_d, _c, _w, m) = load_tiny(false, 13);
    let mut a = m.new_session(4, 32, false).expect("session");
    let mut b = m.new_session(4, 32, false).expect("session");
    let mut want = argmax(m.forward(&mut a, &IDS, Logits::Last).expect("prefill"));
    let mut got = m.forward_greedy(&mut b, &IDS).expect("greedy prefill");
    for step in 0..8 {
        assert_eq!(got, want, "step {step}");
        want = argmax(m.forward(&mut a, &[want], Logits::Last).expect("decode"));
        got = m.forward_greedy(&mut b, &[got]).expect("greedy decode");
    }
    assert_eq!(a.pos, b.pos);
    let cb = CpuBackend::new();
    let logits = vec![0.5, 2.0, -1.0, 2.0, /* row 1 */ -3.0, -2.0, -2.0, -5.0];
    let mut ids = [9u32; 2];
    cb.argmax_rows(&logits, 4, &mut ids).expect("argmax");
    assert_eq!(ids, [1, 1]);
    let e = cb.argmax_rows(&logits, 4, &mut [0u32; 3]).unwrap_err();
    assert!(e.to_string().contains("argmax logits"), "{e}");
}

/// `forward_sample` (the backend draws) against `forward` + `Sampler::sample` (the host draws
/// from the copied logits) with the same seed: the same tokens, with every cut and the penalty
/// on, and the history growing as generate grows it.
#[test]
fn sampling_on_the_backend_equals_the_host_sampler() {
    use ferroq::engine::sampler::{Sampler, SamplingParams};
    let (_d, c, _w, m) = load_tiny(false, 17);
    let params = SamplingParams {
        temperature: 0.9,
        top_k: 40,
        top_p: 0.8,
        repetition_penalty: 1.3,
        seed: 5,
    };
    let mut a = m.new_session(4, 40, false).expect("session");
    let mut b = m.new_session(4, 40, false).expect("session");
    let (mut sa, mut sb) = (
        Sampler::new(params.clone(), c.vocab_size),
        Sampler::new(params, c.vocab_size),
    );
    let mut history = IDS.to_vec();
    let mut feed = IDS.to_vec();
    let mut drawn = std::collections::BTreeSet::new();
    for step in 0..24 {
        let want = {
            let logits = m.forward(&mut a, &feed, Logits::Last).expect("forward");
            sa.sample(logits, &history)
        };
        let d = sb.next_draw(&history);
        let got = m.forward_sample(&mut b, &feed, &d).expect("forward_sample");
        assert_eq!(got, want, "step {step}");
        drawn.insert(got);
        history.push(got);
        feed = vec![got];
    }
    assert!(
        drawn.len() > 3,
        "temperature 0.9 should not be greedy: {drawn:?}"
    );
}

#[test]
fn half_precision_weights_stay_close() {
    let (_d, c, w, m) = load_tiny(false, 5);
    let dir = tempfile::tempdir().expect("tempdir");
    write_hf_dir(dir.path(), &c, &w);
    let want = {
        let mut s = m.new_session(16, 32, false).expect("session");
        m.forward(&mut s, &IDS, Logits::Last).expect("fwd").to_vec()
    };
    for dt in [DType::F16, DType::BF16] {
        let src = SafetensorsWeights::open_dir(dir.path()).expect("open");
        let mh = LlamaModel::load(CpuBackend::new(), c.clone(), &src, Some(dt)).expect("load");
        let mut s = mh.new_session(16, 32, false).expect("session");
        let got = mh.forward(&mut s, &IDS, Logits::Last).expect("fwd");
        let want64: Vec<f64> = want.iter().map(|&x| x as f64).collect();
        let tol = if dt == DType::F16 { 2e-2 } else { 1e-1 };
        assert_close("logits", got, &want64, tol, tol);
    }
}

/// llama.cpp's converter permutation (the inverse of what the loader undoes).
fn permute_rows(data: &[f32], rows: usize, cols: usize, n_head: usize) -> Vec<f32> {
    let hd = rows / n_head;
    let mut out = vec![0.0; data.len()];
    for h in 0..n_head {
        for j in 0..2 {
            for i in 0..hd / 2 {
                let src = h * hd + j * (hd / 2) + i;
                let dst = h * hd + 2 * i + j;
                out[dst * cols..(dst + 1) * cols]
                    .copy_from_slice(&data[src * cols..(src + 1) * cols]);
            }
        }
    }
    out
}

fn gguf_name(hf: &str) -> String {
    let fixed = [
        ("model.embed_tokens.weight", "token_embd.weight"),
        ("model.norm.weight", "output_norm.weight"),
        ("lm_head.weight", "output.weight"),
    ];
    if let Some((_, g)) = fixed.iter().find(|(h, _)| *h == hf) {
        return g.to_string();
    }
    let rest = hf.strip_prefix("model.layers.").expect("layer tensor");
    let (l, tail) = rest.split_once('.').expect("layer index");
    let map = [
        ("input_layernorm", "attn_norm"),
        ("post_attention_layernorm", "ffn_norm"),
        ("self_attn.q_proj", "attn_q"),
        ("self_attn.k_proj", "attn_k"),
        ("self_attn.v_proj", "attn_v"),
        ("self_attn.o_proj", "attn_output"),
        ("mlp.gate_proj", "ffn_gate"),
        ("mlp.up_proj", "ffn_up"),
        ("mlp.down_proj", "ffn_down"),
    ];
    let (module, kind) = tail.rsplit_once('.').expect("kind");
    let g = map
        .iter()
        .find(|(h, _)| *h == module)
        .expect("known module")
        .1;
    format!("blk.{l}.{g}.{kind}")
}

/// The tiny model as a GGUF file (f32 tensors, llama.cpp names and Q/K permutation).
fn tiny_gguf(c: &ModelConfig, w: &BTreeMap<String, HostTensor>, break_shape: bool) -> Vec<u8> {
    tiny_gguf_with(c, w, break_shape, Vec::new())
}

/// `tiny_gguf` with `extra` metadata appended (a vocabulary, for `convert`).
fn tiny_gguf_with(
    c: &ModelConfig,
    w: &BTreeMap<String, HostTensor>,
    break_shape: bool,
    extra: Vec<(&str, Meta)>,
) -> Vec<u8> {
    let mut meta = vec![
        ("general.architecture", Meta::Str("llama".into())),
        ("llama.block_count", Meta::U32(c.num_layers as u32)),
        (
            "llama.context_length",
            Meta::U32(c.max_position_embeddings as u32),
        ),
        ("llama.embedding_length", Meta::U32(c.hidden_size as u32)),
        (
            "llama.feed_forward_length",
            Meta::U32(c.intermediate_size as u32),
        ),
        ("llama.attention.head_count", Meta::U32(c.num_heads as u32)),
        (
            "llama.attention.head_count_kv",
            Meta::U32(c.num_kv_heads as u32),
        ),
        ("llama.rope.freq_base", Meta::F32(c.rope_theta as f32)),
        (
            "llama.attention.layer_norm_rms_epsilon",
            Meta::F32(c.rms_norm_eps),
        ),
        ("llama.vocab_size", Meta::U32(c.vocab_size as u32)),
    ];
    meta.extend(extra);
    let mut tensors = Vec::new();
    for (name, t) in w {
        let mut data = t.to_f32_vec();
        let rows = t.shape[0];
        let cols: usize = t.shape.iter().skip(1).product();
        if name.contains("q_proj") {
            data = permute_rows(&data, rows, cols, c.num_heads);
        } else if name.contains("k_proj") {
            data = permute_rows(&data, rows, cols, c.num_kv_heads);
        }
        let mut dims: Vec<u64> = t.shape.iter().rev().map(|&d| d as u64).collect();
        if break_shape && name == "model.layers.1.self_attn.o_proj.weight" {
            dims = vec![dims[1], dims[0] * 2 / 4, 2];
        }
        tensors.push(f32_tensor(&gguf_name(name), dims, &data));
    }
    gguf_bytes(&meta, &tensors)
}

#[test]
fn gguf_source_with_permuted_qk_matches_safetensors() {
    let (_d, c, w, m) = load_tiny(false, 3);
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("tiny.gguf");
    std::fs::write(&path, tiny_gguf(&c, &w, false)).expect("write");
    let file = GgufFile::open(&path).expect("open gguf");
    let gc = ModelConfig::from_gguf(&file).expect("config");
    assert_eq!(
        (gc.hidden_size, gc.num_kv_heads, gc.tie_word_embeddings),
        (c.hidden_size, c.num_kv_heads, false)
    );
    let src = GgufWeights::new(&file, gc.clone()).expect("weights");
    let mg = LlamaModel::load(CpuBackend::new(), gc, &src, None).expect("load");
    let mut s1 = m.new_session(16, 32, false).expect("s");
    let mut s2 = mg.new_session(16, 32, false).expect("s");
    let a = m.forward(&mut s1, &IDS, Logits::Last).expect("st").to_vec();
    let b = mg
        .forward(&mut s2, &IDS, Logits::Last)
        .expect("gguf")
        .to_vec();
    assert_eq!(a, b);
}

#[test]
fn shape_contradicting_config_is_a_named_error() {
    let c = tiny_config(false);
    let w = tiny_weights(&c, 1);
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("bad.gguf");
    std::fs::write(&path, tiny_gguf(&c, &w, true)).expect("write");
    let file = GgufFile::open(&path).expect("open gguf");
    let gc = ModelConfig::from_gguf(&file).expect("config");
    let src = GgufWeights::new(&file, gc.clone()).expect("weights");
    match LlamaModel::load(CpuBackend::new(), gc, &src, None) {
        Err(Error::ShapeMismatch {
            tensor,
            expected,
            actual,
        }) => {
            assert_eq!(tensor, "model.layers.1.self_attn.o_proj.weight");
            assert_eq!(expected, vec![32, 32]);
            assert_eq!(actual, vec![2, 16, 32]);
        }
        Err(e) => panic!("wrong error: {e}"),
        Ok(_) => panic!("a mis-shaped tensor loaded"),
    }
}

#[test]
fn sharded_checkpoint_and_missing_tensor() {
    let c = tiny_config(false);
    let w = tiny_weights(&c, 9);
    let dir = tempfile::tempdir().expect("tempdir");
    let (a, b): (Vec<_>, Vec<_>) = w
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .enumerate()
        .partition(|(i, _)| i % 2 == 0);
    let a: Vec<_> = a.into_iter().map(|(_, x)| x).collect();
    let b: Vec<_> = b.into_iter().map(|(_, x)| x).collect();
    use ferroq::checkpoint::safetensors_io::write_safetensors;
    write_safetensors(
        &dir.path().join("model-00001-of-00002.safetensors"),
        &a,
        None,
    )
    .expect("w");
    write_safetensors(
        &dir.path().join("model-00002-of-00002.safetensors"),
        &b,
        None,
    )
    .expect("w");
    let mut map = serde_json::Map::new();
    for (k, _) in &a {
        map.insert(k.clone(), "model-00001-of-00002.safetensors".into());
    }
    for (k, _) in &b {
        map.insert(k.clone(), "model-00002-of-00002.safetensors".into());
    }
    std::fs::write(
        dir.path().join("model.safetensors.index.json"),
        serde_json::json!({"weight_map": map}).to_string(),
    )
    .expect("w");
    std::fs::write(
        dir.path().join("config.json"),
        c.to_hf_json("float32").expect("config json").to_string(),
    )
    .expect("w");
    let src = SafetensorsWeights::open_dir(dir.path()).expect("open shards");
    let m = LlamaModel::load(CpuBackend::new(), c.clone(), &src, None).expect("load shards");
    let want = reference_logits(&c, &w, &IDS[..3]);
    let mut s = m.new_session(4, 8, true).expect("s");
    let got = m
        .forward(&mut s, &IDS[..3], Logits::All)
        .expect("fwd")
        .to_vec();
    assert_close("logits", &got[2 * c.vocab_size..], &want[2], 1e-4, 1e-4);

    // drop one tensor: the error names it
    std::fs::remove_file(dir.path().join("model.safetensors.index.json")).expect("rm");
    let partial: Vec<_> = w
        .iter()
        .filter(|(k, _)| !k.ends_with("layers.1.mlp.up_proj.weight"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    write_safetensors(&dir.path().join("model.safetensors"), &partial, None).expect("w");
    let src = SafetensorsWeights::open_dir(dir.path()).expect("open");
    match LlamaModel::load(CpuBackend::new(), c, &src, None) {
        Err(Error::MissingTensor(n)) => assert_eq!(n, "model.layers.1.mlp.up_proj.weight"),
        Err(e) => panic!("wrong error: {e}"),
        Ok(_) => panic!("loaded without a tensor"),
    }
}

#[test]
fn context_overflow_and_bad_token_are_errors() {
    let (_d, c, _w, m) = load_tiny(false, 2);
    let mut s = m.new_session(4, 8, false).expect("s");
    assert!(matches!(
        m.forward(&mut s, &[1; 9], Logits::Last),
        Err(Error::ContextOverflow { needed: 9, max: 8 })
    ));
    assert!(matches!(
        m.forward(&mut s, &[c.vocab_size as u32], Logits::Last),
        Err(Error::TokenOutOfRange { .. })
    ));
    assert_eq!(s.pos, 0, "a rejected call must not advance the session");
    assert!(matches!(
        m.new_session(4, 65, false),
        Err(Error::ContextOverflow { .. })
    ));
}

#[test]
fn logits_from_a_row_equal_the_tail_of_all_logits() {
    let (_d, c, _w, m) = load_tiny(false, 13);
    let v = c.vocab_size;
    let mut s = m.new_session(16, 32, true).expect("session");
    let all = m.forward(&mut s, &IDS, Logits::All).expect("all").to_vec();
    for k in [0, 4, IDS.len() - 1] {
        s.reset();
        let tail = m
            .forward(&mut s, &IDS, Logits::From(k))
            .expect("from")
            .to_vec();
        assert_eq!(tail, all[k * v..], "From({k})");
    }
    s.reset();
    assert!(
        m.forward(&mut s, &IDS, Logits::From(IDS.len())).is_err(),
        "start past the tokens"
    );
    s.reset();
    let last = m
        .forward(&mut s, &IDS, Logits::Last)
        .expect("last")
        .to_vec();
    assert_eq!(last, all[(IDS.len() - 1) * v..]);
}

/// `--act-scope`: every quantized linear switches to the requested scope, the run-time paths
/// follow it (counted by the backend), and pd_mix on a pd_mix checkpoint changes nothing.
/// Linears the w8a8 preset quantizes dynamically (no static scale) stay per-token and are
/// counted as such.
#[test]
fn act_scope_override_switches_every_quantized_linear() {
    use ferroq::quant::{ActQuant, ActScope};
    use std::sync::atomic::Ordering;
    let q = tiny_w8a8(3);
    let load = || LlamaModel::load(CpuBackend::new(), q.config.clone(), &q, None).expect("load");
    let ids = [5u32, 17, 33, 2, 9];
    // (logits of a prefill and one decode step, dynamic rows, static rows)
    let run = |m: &LlamaModel<CpuBackend>| {
        let mut s = m.new_session(8, 16, false).expect("session");
        let mut v = m
            .forward(&mut s, &ids, Logits::Last)
            .expect("prefill")
            .to_vec();
        v.extend_from_slice(m.forward(&mut s, &[7], Logits::Last).expect("decode"));
        let c = &m.backend.counters;
        (
            v,
            c.dynamic_rows.load(Ordering::SeqCst),
            c.static_rows.load(Ordering::SeqCst),
        )
    };
    let m = load();
    let (pd, pd_dyn, pd_st) = run(&m);
    assert!(pd_dyn > 0 && pd_st > 0, "pd_mix runs both paths");
    let count = |p: fn(&ActQuant) -> bool| m.linears().filter(|l| p(&l.act.policy)).count();
    let static_scaled = count(|p| matches!(p, ActQuant::PdMix { .. } | ActQuant::Static { .. }));
    let dynamic = count(|p| matches!(p, ActQuant::Dynamic));
    assert!(static_scaled > 0);

    let mut m = load();
    assert_eq!(m.set_act_scope(ActScope::PdMix), (static_scaled, dynamic));
    assert_eq!(
        run(&m).0,
        pd,
        "pd_mix on a pd_mix checkpoint changes nothing"
    );

    let mut m = load();
    assert_eq!(
        m.set_act_scope(ActScope::PerToken),
        (static_scaled + dynamic, 0)
    );
    assert!(m
        .linears()
        .all(|l| matches!(l.act.policy, ActQuant::Dynamic | ActQuant::None)));
    let (tok, tok_dyn, tok_st) = run(&m);
    assert_eq!((tok_dyn > 0, tok_st), (true, 0));
    assert_ne!(tok, pd, "the decode step quantizes differently per token");

    let mut m = load();
    assert_eq!(
        m.set_act_scope(ActScope::PerTensor),
        (static_scaled, dynamic)
    );
    assert!(m.linears().all(|l| matches!(
        l.act.policy,
        ActQuant::Static { .. } | ActQuant::Dynamic | ActQuant::None
    )));
    let (_, t_dyn, t_st) = run(&m);
    assert!(t_st > 0);
    if dynamic == 0 {
        assert_eq!(t_dyn, 0);
    }
    // after per-token no static scale is left: the static scopes leave every linear per-token
    m.set_act_scope(ActScope::PerToken);
    assert_eq!(
        m.set_act_scope(ActScope::PdMix),
        (0, static_scaled + dynamic)
    );
}

/// A config that says fewer layers than the checkpoint holds is refused, naming an extra
/// tensor, instead of running the model truncated.
#[test]
fn fewer_layers_in_the_config_than_in_the_weights_is_an_error() {
    let c = tiny_config(false);
    let w = tiny_weights(&c, 5);
    let mut short = c.clone();
    short.num_layers = 1;
    let e = match LlamaModel::load(CpuBackend::new(), short, &w, None) {
        Ok(_) => panic!("a 2-layer checkpoint loaded as 1 layer"),
        Err(e) => e.to_string(),
    };
    assert!(
        e.contains("model.layers.1.") && e.contains("1 layers"),
        "{e}"
    );
    assert!(LlamaModel::load(CpuBackend::new(), c, &w, None).is_ok());
}

/// `convert` checks every tensor's shape against the config before writing: a mis-shaped or
/// zero-sized tensor is an error naming it, and no directory is left for `generate` to refuse.
#[test]
fn convert_refuses_tensors_the_model_would_refuse() {
    let c = tiny_config(false);
    let w = tiny_weights(&c, 4);
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("bad.gguf");
    // the tiny GGUF plus a SentencePiece vocabulary of the model's size, so convert gets as far
    // as the tensors
    let mut bytes_meta: Vec<(&str, Meta)> = Vec::new();
    let tokens: Vec<String> = (0..c.vocab_size)
        .map(|i| match i {
            0 => "<unk>".to_string(),
            1 => "<s>".to_string(),
            2 => "</s>".to_string(),
            i => format!("t{i}"),
        })
        .collect();
    let types: Vec<i32> = (0..c.vocab_size as i32)
        .map(|i| if i < 3 { 3 } else { 1 })
        .collect();
    bytes_meta.push(("tokenizer.ggml.model", Meta::Str("llama".into())));
    bytes_meta.push(("tokenizer.ggml.tokens", Meta::StrArr(tokens)));
    bytes_meta.push((
        "tokenizer.ggml.scores",
        Meta::F32Arr(vec![0.0; c.vocab_size]),
    ));
    bytes_meta.push(("tokenizer.ggml.token_type", Meta::I32Arr(types)));
    let bytes = tiny_gguf_with(&c, &w, true, bytes_meta);
    std::fs::write(&path, bytes).expect("write");
    let out = dir.path().join("converted");
    match ferroq::model::convert::gguf_to_hf(&path, &out, ferroq::tensor::DType::F16) {
        Err(Error::ShapeMismatch { tensor, .. }) => {
            assert_eq!(tensor, "model.layers.1.self_attn.o_proj.weight")
        }
        Err(e) => panic!("wrong error: {e}"),
        Ok(_) => panic!("a mis-shaped tensor was converted"),
    }
    assert!(!out.exists(), "a failed conversion left {}", out.display());
}
