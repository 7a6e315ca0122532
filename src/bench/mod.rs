//! Throughput in the manner of llama.cpp's `llama-bench`: ppN and tgN tokens per second.
//!
//! - `ppN` runs an N-token prompt through a fresh session in one prefill; `tgN` generates N tokens
//!   one decode step at a time from an empty context.
//! - Seeded random ids (content does not matter for speed); one warm-up, then `reps` runs,
//!   mean ± sample standard deviation.

use crate::backend::linear::LinearWeight;
use crate::backend::Backend;
use crate::engine::sampler::Rng;
use crate::error::{Error, Result};
use crate::model::llama::{LlamaModel, Logits};
use crate::quant::QDType;
use std::time::Instant;

/// This process's peak resident set size (`VmHWM` in /proc/self/status), where the OS
/// reports one.
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// "peak RSS 672 MiB", or nothing where the OS does not say.
pub fn peak_rss_note() -> String {
    peak_rss_bytes()
        .map(|b| format!(", peak RSS {} MiB", b >> 20))
        .unwrap_or_default()
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct BenchRow {
    pub model: String,
    pub size_bytes: u64,
    pub n_params: u64,
    pub backend: String,
    pub threads: usize,
    /// Weight formats, e.g. "f16" or "int8 x210 + bf16".
    pub weights: String,
    /// "pp512" or "tg128"
    pub test: String,
    pub n_prompt: usize,
    pub n_gen: usize,
    pub avg_ts: f64,
    pub stddev_ts: f64,
    pub samples_ts: Vec<f64>,
}

/// Parameters of the model (embedding, blocks, untied LM head).
pub fn n_params<B: Backend>(m: &LlamaModel<B>) -> u64 {
    let c = &m.config;
    let (d, q, kv, f) = (
        c.hidden_size as u64,
        c.q_dim() as u64,
        c.kv_dim() as u64,
        c.intermediate_size as u64,
    );
    let per_layer = d * q + 2 * d * kv + q * d + 3 * d * f + 2 * d;
    let embed = c.vocab_size as u64 * d;
    embed + c.num_layers as u64 * per_layer + d + if c.tie_word_embeddings { 0 } else { embed }
}

/// "int8 x210 + bf16" style summary of the linear weight formats.
pub fn weight_summary<B: Backend>(m: &LlamaModel<B>) -> String {
    let (mut i8n, mut f8n, mut i4n) = (0, 0, 0);
    for l in m.linears() {
        match (&l.weight, l.act.dtype) {
            (LinearWeight::Quant(_), _) if l.act.policy == crate::quant::ActQuant::None => i4n += 1,
            (LinearWeight::Quant(_), QDType::Fp8E4M3) => f8n += 1,
            (LinearWeight::Quant(_), _) => i8n += 1,
            (LinearWeight::Dense(_), _) => {}
        }
    }
    let mut parts = Vec::new();
    for (name, n) in [("int8", i8n), ("fp8", f8n), ("weight-only", i4n)] {
        if n > 0 {
            parts.push(format!("{name} x{n}"));
        }
    }
    parts.push(m.weight_dtype.to_string());
    parts.join(" + ")
}

fn stats(xs: &[f64]) -> (f64, f64) {
    let n = xs.len() as f64;
    let mean = xs.iter().sum::<f64>() / n;
    let var = if xs.len() > 1 {
        xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0)
    } else {
        0.0
    };
    (mean, var.sqrt())
}

/// Run the pp and tg tests on one model.
pub fn bench<B: Backend>(
    m: &LlamaModel<B>,
    name: &str,
    size_bytes: u64,
    n_prompt: usize,
    n_gen: usize,
    reps: usize,
    progress: &(dyn Fn(&str, usize, usize) + Sync),
) -> Result<Vec<BenchRow>> {
    if reps == 0 {
        return Err(Error::InvalidArgument(
            "repetitions must be at least 1".into(),
        ));
    }
    let vocab = m.config.vocab_size as u64;
    let mut rng = Rng::new(1234);
    let mut rows = Vec::new();
    let row = |test: String, np: usize, ng: usize, samples: Vec<f64>| {
        let (avg, sd) = stats(&samples);
        BenchRow {
            model: name.to_string(),
            size_bytes,
            n_params: n_params(m),
            backend: m.backend.describe(),
            threads: rayon::current_num_threads(),
            weights: weight_summary(m),
            test,
            n_prompt: np,
            n_gen: ng,
            avg_ts: avg,
            stddev_ts: sd,
            samples_ts: samples,
        }
    };
    if n_prompt > 0 {
        let prompt: Vec<u32> = (0..n_prompt)
            .map(|_| (rng.next_u64() % vocab) as u32)
            .collect();
        let mut s = m.new_session(n_prompt.min(512), n_prompt, false)?;
        let mut samples = Vec::new();
        m.backend.run_on_workers(|| -> Result<()> {
            for rep in 0..=reps {
                s.reset();
                let t = Instant::now();
                m.forward(&mut s, &prompt, Logits::Last)?;
                if rep > 0 {
                    samples.push(n_prompt as f64 / t.elapsed().as_secs_f64());
                }
                progress(&format!("pp{n_prompt} (1 warm-up)"), rep + 1, reps + 1);
            }
            Ok(())
        })?;
        rows.push(row(format!("pp{n_prompt}"), n_prompt, 0, samples));
    }
    if n_gen > 0 {
        let mut s = m.new_session(1, n_gen, false)?;
        let first = (rng.next_u64() % vocab) as u32;
        let mut samples = Vec::new();
        m.backend.run_on_workers(|| -> Result<()> {
            for rep in 0..=reps {
                s.reset();
                let mut tok = first;
                let t = Instant::now();
                for _ in 0..n_gen {
                    tok = m.forward_greedy(&mut s, &[tok])?;
                }
                if rep > 0 {
                    samples.push(n_gen as f64 / t.elapsed().as_secs_f64());
                }
                progress(&format!("tg{n_gen} (1 warm-up)"), rep + 1, reps + 1);
            }
            Ok(())
        })?;
        rows.push(row(format!("tg{n_gen}"), 0, n_gen, samples));
    }
    Ok(rows)
}

/// Markdown table in llama-bench's layout.
pub fn markdown(rows: &[BenchRow]) -> String {
    let mut s = String::from("| model | size | params | backend | threads | weights | test | t/s |\n|---|---:|---:|---|---:|---|---:|---:|\n");
    for r in rows {
        s += &format!(
            "| {} | {:.1} MiB | {:.1} M | {} | {} | {} | {} | {:.2} ± {:.2} |\n",
            r.model,
            r.size_bytes as f64 / (1024.0 * 1024.0),
            r.n_params as f64 / 1e6,
            r.backend,
            r.threads,
            r.weights,
            r.test,
            r.avg_ts,
            r.stddev_ts
        );
    }
    s
}

pub fn csv(rows: &[BenchRow]) -> String {
    let mut s = String::from(
        "model,size_bytes,n_params,backend,threads,weights,test,n_prompt,n_gen,avg_ts,stddev_ts\n",
    );
    for r in rows {
        s += &format!(
            "\"{}\",{},{},\"{}\",{},\"{}\",{},{},{},{:.4},{:.4}\n",
            r.model,
            r.size_bytes,
            r.n_params,
            r.backend,
            r.threads,
            r.weights,
            r.test,
            r.n_prompt,
            r.n_gen,
            r.avg_ts,
            r.stddev_ts
        );
    }
    s
}
