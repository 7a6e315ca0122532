//! A bounded loopback load generator for `ferroq serve`, reporting like vLLM's benchmark_serving.
//!
//! - `requests` streamed completions per level, at most `concurrency` in flight, each timed to
//!   its first text event (TTFT) and its end; tokens from the usage chunk.
//! - `ignore_eos` makes every request generate `max_tokens`, so levels compare.

use super::client;
use serde_json::{json, Value};
use std::io;
use std::net::ToSocketAddrs;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// host:port of the server; must be a loopback address.
    pub addr: String,
    pub concurrency: usize,
    pub requests: usize,
    pub max_tokens: usize,
    /// Words per prompt (varied ±50% across requests).
    pub prompt_words: usize,
    /// The served model id.
    pub model: String,
}

#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct LoadReport {
    pub concurrency: usize,
    pub requests: usize,
    pub failed: usize,
    pub wall_secs: f64,
    pub prompt_tokens: usize,
    pub output_tokens: usize,
    pub output_tok_s: f64,
    pub requests_per_s: f64,
    pub ttft_p50_ms: f64,
    pub ttft_p99_ms: f64,
    /// Mean time between tokens within a request, median over requests.
    pub itl_p50_ms: f64,
}

/// One finished request: time to first token, total time, prompt and output tokens.
struct Sample {
    ttft: f64,
    total: f64,
    prompt: usize,
    output: usize,
}

const WORDS: &[&str] = &[
    "the",
    "history",
    "of",
    "rivers",
    "and",
    "mountains",
    "shaped",
    "every",
    "city",
    "that",
    "grew",
    "along",
    "their",
    "banks",
    "while",
    "traders",
    "carried",
    "salt",
    "wine",
    "and",
    "stories",
    "from",
    "one",
    "valley",
    "to",
    "the",
    "next",
];

fn prompt(i: usize, words: usize) -> String {
    let n = (words / 2 + (i * 7919) % (words + 1)).max(1);
    let body: Vec<&str> = (0..n).map(|j| WORDS[(i + j * 3) % WORDS.len()]).collect();
    format!("Request {i}: {}", body.join(" "))
}

/// The `q` quantile (0..=1) of `v`, nearest rank.
pub fn quantile(v: &mut [f64], q: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let i = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1;
    v[i]
}

async fn one(addr: &str, body: &str) -> io::Result<Sample> {
    let t0 = Instant::now();
    let mut r = client::send(addr, "POST", "/v1/completions", Some(body)).await?;
    if r.status != 200 {
        let status = r.status;
        let b = r.body().await.unwrap_or_default();
        return Err(io::Error::other(format!("HTTP {status}: {b}")));
    }
    let mut ttft = None;
    let (mut prompt, mut output) = (0, 0);
    while let Some(d) = r.next_event().await? {
        if d == "[DONE]" {
            break;
        }
        let v: Value = serde_json::from_str(&d)
            .map_err(|e| io::Error::other(format!("bad chunk {d}: {e}")))?;
        if let Some(e) = v.get("error") {
            return Err(io::Error::other(format!("stream error: {e}")));
        }
        let has_text = v["choices"][0]["text"]
            .as_str()
            .is_some_and(|t| !t.is_empty());
        if has_text && ttft.is_none() {
            ttft = Some(t0.elapsed().as_secs_f64());
        }
        if let Some(u) = v.get("usage").filter(|u| !u.is_null()) {
            prompt = u["prompt_tokens"].as_u64().unwrap_or(0) as usize;
            output = u["completion_tokens"].as_u64().unwrap_or(0) as usize;
        }
    }
    let total = t0.elapsed().as_secs_f64();
    Ok(Sample {
        ttft: ttft.unwrap_or(total),
        total,
        prompt,
        output,
    })
}

/// Run one load level.
pub async fn run(o: &LoadOptions) -> io::Result<LoadReport> {
    let loopback = o.addr.to_socket_addrs()?.all(|a| a.ip().is_loopback());
    if !loopback {
        return Err(io::Error::other(format!(
            "{} is not a loopback address: the load generator only targets this machine",
            o.addr
        )));
    }
    let next = Arc::new(AtomicUsize::new(0));
    let t0 = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..o.concurrency.max(1) {
        let (next, o) = (next.clone(), o.clone());
        workers.push(tokio::spawn(async move {
            let mut out = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= o.requests {
                    break;
                }
                let body = json!({
                    "model": o.model, "prompt": prompt(i, o.prompt_words), "max_tokens": o.max_tokens,
                    "temperature": 0, "stream": true, "ignore_eos": true,
                    "stream_options": {"include_usage": true},
                })
                .to_string();
                out.push(one(&o.addr, &body).await);
            }
            out
        }));
    }
    let mut samples = Vec::new();
    let mut failed = 0;
    for w in workers {
        for s in w.await.map_err(io::Error::other)? {
            match s {
                Ok(s) => samples.push(s),
                Err(e) => {
                    tracing::warn!("loadgen: request failed: {e}");
                    failed += 1;
                }
            }
        }
    }
    let wall = t0.elapsed().as_secs_f64();
    let output: usize = samples.iter().map(|s| s.output).sum();
    let mut ttft: Vec<f64> = samples.iter().map(|s| s.ttft).collect();
    let mut itl: Vec<f64> = samples
        .iter()
        .filter(|s| s.output > 1)
        .map(|s| (s.total - s.ttft) / (s.output - 1) as f64)
        .collect();
    Ok(LoadReport {
        concurrency: o.concurrency,
        requests: samples.len(),
        failed,
        wall_secs: wall,
        prompt_tokens: samples.iter().map(|s| s.prompt).sum(),
        output_tokens: output,
        output_tok_s: output as f64 / wall,
        requests_per_s: samples.len() as f64 / wall,
        ttft_p50_ms: 1e3 * quantile(&mut ttft, 0.5),
        ttft_p99_ms: 1e3 * quantile(&mut ttft, 0.99),
        itl_p50_ms: 1e3 * quantile(&mut itl, 0.5),
    })
}

/// Markdown table of several levels.
pub fn table(rows: &[LoadReport]) -> String {
    let mut s = String::from(
        "| clients | requests | failed | output tok/s | req/s | TTFT p50 ms | TTFT p99 ms | ITL p50 ms |\n|---|---|---|---|---|---|---|---|\n",
    );
    for r in rows {
        s.push_str(&format!(
            "| {} | {} | {} | {:.1} | {:.2} | {:.0} | {:.0} | {:.1} |\n",
            r.concurrency,
            r.requests,
            r.failed,
            r.output_tok_s,
            r.requests_per_s,
            r.ttft_p50_ms,
            r.ttft_p99_ms,
            r.itl_p50_ms
        ));
    }
    s
}
