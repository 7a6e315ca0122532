//! Whole-model speed on the GPU with Llama-3.1-8B's shapes and random weights:
//! prefill (ppN) and batch-1 decode (tgN) tok/s through `ferroq::bench`, next to the device's
//! memory-bandwidth ceiling measured in the same run (a device-to-device copy) and the decode
//! rate that ceiling allows for the bytes of weights read per token. Runs on the device
//! machine (scripts/gpu-check.sh bench); scripts/gpu/hf_decode.py times transformers there.
//!
//!   cargo run --release --example cuda_decode_bench -- [--quant bf16|w8a8|fp8|w4a16]
//!       [--layers 32] [-p 2048] [-n 128] [-r 3] [--no-graphs]
//!
//! Quantized variants replace every decoder linear with freshly quantized random weights (W8A8:
//! int8 per channel, dynamic per-token int8 activations; FP8: e4m3 per channel, dynamic
//! activations; W4A16: int4 groups of 128); embeddings, norms and the LM head stay BF16.

use clap::Parser;
use ferroq::backend::cuda::backend::CudaBackend;
use ferroq::backend::cuda::runtime::Gpu;
use ferroq::backend::linear::LinearWeight;
use ferroq::backend::prelude::*;
use ferroq::checkpoint::config::ModelConfig;
use ferroq::engine::sampler::Rng;
use ferroq::model::llama::LlamaModel;
use ferroq::quant::weight::{quantize_weight, WeightMethod, WeightQConfig, WeightScope};
use ferroq::quant::{ActQuant, ActSpec, QDType};
use ferroq::tensor::{DType, HostData, HostTensor};
use half::bf16;
use rayon::prelude::*;
use std::collections::BTreeMap;
use std::time::Instant;

#[derive(Clone, Copy, PartialEq, clap::ValueEnum)]
enum Quant {
    Bf16,
    W8a8,
    Fp8,
    W4a16,
}

#[derive(Parser)]
struct Args {
    #[arg(long, value_enum, default_value_t = Quant::Bf16)]
    quant: Quant,
    /// Decoder layers (32 in Llama-3.1-8B; fewer for a quick slice).
    #[arg(long, default_value_t = 32)]
    layers: usize,
    #[arg(short = 'p', default_value_t = 2048)]
    n_prompt: usize,
    #[arg(short = 'n', default_value_t = 128)]
    n_gen: usize,
    #[arg(short = 'r', default_value_t = 3)]
    reps: usize,
    /// Decode eagerly instead of replaying CUDA graphs (to measure what the graphs save).
    #[arg(long)]
    no_graphs: bool,
}

/// Uniform random values in ±scale·√3 (unit variance × scale): the project's seeded generator,
/// one stream per parallel chunk (8B values must not take minutes).
fn random(n: usize, scale: f32, seed: u64) -> Vec<f32> {
    let mut v = vec![0f32; n];
    v.par_chunks_mut(1 << 16)
        .enumerate()
        .for_each(|(c, chunk)| {
            let mut rng = Rng::new(seed.wrapping_mul(1 << 32) ^ c as u64);
            for x in chunk {
                *x = (rng.next_f32() * 2.0 - 1.0) * scale * 1.732;
            }
        });
    v
}

fn bf16_tensor(shape: Vec<usize>, scale: f32, offset: f32, seed: u64) -> HostTensor {
    let n = shape.iter().product();
    let data = random(n, scale, seed)
        .into_par_iter()
        .map(|v| bf16::from_f32(v + offset))
        .collect();
    HostTensor {
        shape,
        data: HostData::BF16(data),
    }
}

fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    let config = ModelConfig::from_hf_json(&format!(
        r#"{{"model_type": "llama", "hidden_size": 4096, "intermediate_size": 14336,
            "num_hidden_layers": {}, "num_attention_heads": 32, "num_key_value_heads": 8,
            "vocab_size": 128256, "rms_norm_eps": 1e-5, "rope_theta": 500000.0,
            "max_position_embeddings": 8192, "tie_word_embeddings": false,
            "bos_token_id": 128000, "eos_token_id": 128001}}"#,
        a.layers
    ))?;
    let (d, q, kv, f) = (
        config.hidden_size,
        config.q_dim(),
        config.kv_dim(),
        config.intermediate_size,
    );
    let gpu = Gpu::new(0)?;
    let bw = gpu.copy_bandwidth()?;
    println!(
        "device: {} ({}); device-to-device copy {:.0} GB/s (read + write)",
        gpu.info.name, gpu.info.arch, bw
    );
    drop(gpu);

    let t = Instant::now();
    let mut w = BTreeMap::new();
    let mut seed = 1u64;
    let mut add = |name: String, shape: Vec<usize>, scale: f32, offset: f32| {
        seed += 1;
        w.insert(name, bf16_tensor(shape, scale, offset, seed));
    };
    add(
        "model.embed_tokens.weight".into(),
        vec![config.vocab_size, d],
        1.0,
        0.0,
    );
    add("model.norm.weight".into(), vec![d], 0.1, 1.0);
    add(
        "lm_head.weight".into(),
        vec![config.vocab_size, d],
        0.02,
        0.0,
    );
    let linears = |l: usize| {
        let p = format!("model.layers.{l}");
        [
            (format!("{p}.self_attn.q_proj"), q, d),
            (format!("{p}.self_attn.k_proj"), kv, d),
            (format!("{p}.self_attn.v_proj"), kv, d),
            (format!("{p}.self_attn.o_proj"), d, q),
            (format!("{p}.mlp.gate_proj"), f, d),
            (format!("{p}.mlp.up_proj"), f, d),
            (format!("{p}.mlp.down_proj"), d, f),
        ]
    };
    for l in 0..config.num_layers {
        let p = format!("model.layers.{l}");
        add(format!("{p}.input_layernorm.weight"), vec![d], 0.1, 1.0);
        add(
            format!("{p}.post_attention_layernorm.weight"),
            vec![d],
            0.1,
            1.0,
        );
        for (name, rows, cols) in linears(l) {
            add(format!("{name}.weight"), vec![rows, cols], 0.02, 0.0);
        }
    }
    let backend = CudaBackend::new(0)?;
    backend.set_graphs(!a.no_graphs);
    let mut m = LlamaModel::load(backend, config.clone(), &w, Some(DType::BF16))?;
    drop(w);
    eprintln!(
        "random BF16 model on the device in {:.1}s",
        t.elapsed().as_secs_f64()
    );

    let (wcfg, act) = match a.quant {
        Quant::Bf16 => (None, ActSpec::NONE),
        Quant::W8a8 => (
            Some((QDType::Int8, WeightScope::PerChannel)),
            ActSpec {
                policy: ActQuant::Dynamic,
                dtype: QDType::Int8,
                symmetric: true,
            },
        ),
        Quant::Fp8 => (
            Some((QDType::Fp8E4M3, WeightScope::PerChannel)),
            ActSpec {
                policy: ActQuant::Dynamic,
                dtype: QDType::Fp8E4M3,
                symmetric: true,
            },
        ),
        Quant::W4a16 => (
            Some((QDType::Int4, WeightScope::PerGroup(128))),
            ActSpec::NONE,
        ),
    };
    // bytes of weights a decode step reads: every linear and the LM head (one embedding row)
    let per_weight = match a.quant {
        Quant::Bf16 => 2.0,
        Quant::W8a8 | Quant::Fp8 => 1.0,
        Quant::W4a16 => 0.5 + 4.0 / 128.0,
    };
    let linear_params = (config.num_layers * (2 * q * d + 2 * kv * d + 3 * f * d)) as f64;
    let step_bytes = linear_params * per_weight + (config.vocab_size * d * 2) as f64;
    if let Some((dtype, scope)) = wcfg {
        let t = Instant::now();
        let cfg = WeightQConfig {
            dtype,
            scope,
            symmetric: true,
            method: WeightMethod::MinMax,
        };
        for l in 0..config.num_layers {
            for (i, (name, rows, cols)) in linears(l).into_iter().enumerate() {
                let wf = random(rows * cols, 0.02, 1000 + (l * 7 + i) as u64);
                let qw = quantize_weight(&wf, rows, cols, &cfg)?;
                let dev = m.backend.upload_quant(&qw, rows, cols)?;
                let lin = m
                    .linear_mut(&name)
                    .ok_or_else(|| anyhow::anyhow!("no linear {name}"))?;
                lin.weight = LinearWeight::Quant(dev);
                lin.act = act;
            }
        }
        eprintln!(
            "quantized the decoder linears in {:.1}s",
            t.elapsed().as_secs_f64()
        );
    }
    let name = format!(
        "llama-3.1-8b-shaped {}L {}{}",
        config.num_layers,
        match a.quant {
            Quant::Bf16 => "bf16",
            Quant::W8a8 => "w8a8",
            Quant::Fp8 => "fp8",
            Quant::W4a16 => "w4a16",
        },
        if a.no_graphs { " eager" } else { "" }
    );
    let rows = ferroq::bench::bench(
        &m,
        &name,
        step_bytes as u64,
        a.n_prompt,
        a.n_gen,
        a.reps,
        &|_, _, _| {},
    )?;
    print!("{}", ferroq::bench::markdown(&rows));
    let (graphs_on, captured) = m.backend.graph_stats();
    println!(
        "CUDA graphs: {}, {captured} captured",
        if graphs_on { "on" } else { "off" }
    );
    let ceiling = bw * 1e9 / step_bytes;
    for r in rows.iter().filter(|r| r.n_gen > 0) {
        println!(
            "decode: {:.1} tok/s = {:.0}% of the {:.1} tok/s the copy bandwidth allows for {:.2} GB of weights per token",
            r.avg_ts,
            100.0 * r.avg_ts / ceiling,
            ceiling,
            step_bytes / 1e9
        );
    }
    Ok(())
}
