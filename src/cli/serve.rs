//! `ferroq serve`: the model behind an OpenAI-compatible HTTP API with continuous batching.
//!
//! - On the CPU or a GPU; the server itself is `ferroq::server`.

use super::{open_model, parse_dtype, resolve_model, DeviceArg, Global};
use anyhow::{bail, Result};
use ferroq::backend::{Backend, BackendJob};
use ferroq::engine::scheduler::{SchedulerConfig, PREFILL_CHUNK};
use ferroq::server::ServeOptions;
use std::path::PathBuf;
use std::time::Duration;

#[derive(clap::Args)]
pub struct ServeArgs {
    /// Model: a .gguf file, a Hugging Face directory or a quantized checkpoint (default: the
    /// fetched SmolLM2).
    #[arg(short, long)]
    model: Option<PathBuf>,
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// 0 picks a free port (the chosen one is printed).
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Sequences in the running batch at most.
    #[arg(long, default_value_t = 32)]
    max_batch: usize,
    /// Context per request, prompt + generated (default: min(2048, the model's limit)).
    #[arg(long)]
    max_seq_len: Option<usize>,
    /// Positions in the shared paged KV cache (default: 8 × max-seq-len).
    #[arg(long)]
    kv_cache_tokens: Option<usize>,
    /// Positions per KV block.
    #[arg(long, default_value_t = 16)]
    block_size: usize,
    /// Requests that may wait beyond the running batch; more get 429.
    #[arg(long, default_value_t = 64)]
    max_queue: usize,
    /// Seconds running requests may go on after SIGINT/SIGTERM before they are cancelled;
    /// connections still open a second later are closed.
    #[arg(long, default_value_t = 30.0)]
    shutdown_grace: f64,
    /// Seconds a connection may take to send a request header, from connecting or from its
    /// last response (idle keep-alive connections close after it).
    #[arg(long, default_value_t = 15.0)]
    header_timeout: f64,
    /// Seconds a request body may take to arrive; slower ones get 408.
    #[arg(long, default_value_t = 60.0)]
    body_timeout: f64,
    /// Largest request body in bytes (it bounds the prompt); larger ones get 413.
    #[arg(long, default_value_t = 4 << 20)]
    max_body_bytes: usize,
    /// Connections served at once; more get 503 (lowered to fit the open-file limit).
    #[arg(long, default_value_t = 256)]
    max_connections: usize,
    /// The model id clients use (default: the model's file or directory name).
    #[arg(long)]
    served_model_name: Option<String>,
    /// Hold weights as f32, f16 or bf16 (default: the checkpoint's dtype).
    #[arg(long)]
    dtype: Option<String>,
    #[command(flatten)]
    device: DeviceArg,
}

struct Job {
    a: ServeArgs,
    model: PathBuf,
    g: Global,
}

/// The operator's flags within what a server can hold, checked before the model loads.
fn check_flags(a: &ServeArgs) -> Result<()> {
    let bad = |flag: &str, v: String, range: &str| {
        bail!("--{flag} {v} is out of range: it must be {range}")
    };
    if !(a.shutdown_grace >= 0.0 && a.shutdown_grace <= 86_400.0) {
        return bad(
            "shutdown-grace",
            a.shutdown_grace.to_string(),
            "between 0 and 86400 seconds",
        );
    }
    for (flag, v) in [
        ("header-timeout", a.header_timeout),
        ("body-timeout", a.body_timeout),
    ] {
        if !(v > 0.0 && v <= 86_400.0) {
            return bad(flag, v.to_string(), "above 0 and at most 86400 seconds");
        }
    }
    if !(1..=1 << 30).contains(&a.max_body_bytes) {
        return bad(
            "max-body-bytes",
            a.max_body_bytes.to_string(),
            "between 1 and 2^30",
        );
    }
    if !(1..=1 << 16).contains(&a.max_connections) {
        return bad(
            "max-connections",
            a.max_connections.to_string(),
            "between 1 and 65536",
        );
    }
    if !(1..=4096).contains(&a.max_batch) {
        return bad("max-batch", a.max_batch.to_string(), "between 1 and 4096");
    }
    if a.max_queue > 1 << 20 {
        return bad("max-queue", a.max_queue.to_string(), "at most 1048576");
    }
    if !(1..=1024).contains(&a.block_size) {
        return bad("block-size", a.block_size.to_string(), "between 1 and 1024");
    }
    if let Some(t) = a.kv_cache_tokens {
        if t < a.block_size || t > 1 << 30 {
            return bad(
                "kv-cache-tokens",
                t.to_string(),
                "between --block-size and 2^30",
            );
        }
    }
    if let Some(l) = a.max_seq_len {
        if l == 0 {
            return bad("max-seq-len", l.to_string(), "positive");
        }
    }
    Ok(())
}

pub fn run(mut a: ServeArgs, g: &Global) -> Result<()> {
    check_flags(&a)?;
    let model = resolve_model(a.model.take())?;
    let spec = a.device.spec()?;
    spec.run(Job {
        a,
        model,
        g: g.clone(),
    })?
}

impl BackendJob for Job {
    type Output = Result<()>;
    fn run<B: Backend>(self, open: &dyn Fn() -> ferroq::Result<B>) -> Result<()> {
        let Job { a, model, g } = self;
        let dtype = parse_dtype(a.dtype.as_deref())?;
        let t = std::time::Instant::now();
        let loaded = open_model(open()?, &model, dtype, g.act_scope)?;
        let limit = loaded.model.config.max_position_embeddings;
        let max_seq_len = a.max_seq_len.unwrap_or(limit.min(2048));
        if max_seq_len > limit {
            bail!("--max-seq-len {max_seq_len} exceeds the model's context of {limit} positions");
        }
        eprintln!(
            "loaded {} on {} in {:.2}s",
            model.display(),
            loaded.model.backend.describe(),
            t.elapsed().as_secs_f64()
        );
        let name = a.served_model_name.unwrap_or_else(|| {
            model
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| "ferroq".into())
        });
        let opts = ServeOptions {
            host: a.host,
            port: a.port,
            max_queue: a.max_queue,
            shutdown_grace: Duration::from_secs_f64(a.shutdown_grace),
            model_name: name,
            header_timeout: Duration::from_secs_f64(a.header_timeout),
            body_timeout: Duration::from_secs_f64(a.body_timeout),
            max_body_bytes: a.max_body_bytes,
            max_connections: a.max_connections,
            scheduler: SchedulerConfig {
                max_batch: a.max_batch,
                max_seq_len,
                kv_cache_tokens: a.kv_cache_tokens.unwrap_or(max_seq_len.saturating_mul(8)),
                block_size: a.block_size,
                prefill_chunk: PREFILL_CHUNK,
            },
        };
        ferroq::server::run(loaded.model, loaded.tokenizer, opts)?;
        Ok(())
    }
}
