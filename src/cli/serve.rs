//! `ferroq serve` and `ferroq loadgen`: their arguments and the glue from them to
//! `ferroq::server` (kept out of main.rs so the command front stays readable).

use anyhow::{bail, Context, Result};
use ferroq::backend::cpu::CpuBackend;
use ferroq::backend::cuda::backend::CudaBackend;
use ferroq::backend::{Backend, DeviceSpec};
use ferroq::engine::scheduler::{SchedulerConfig, PREFILL_CHUNK};
use ferroq::server::loadgen::{self, LoadOptions};
use ferroq::server::ServeOptions;
use ferroq::tensor::DType;
use std::path::PathBuf;
use std::time::Duration;

#[derive(clap::Args)]
pub struct ServeArgs {
    /// Model: a .gguf file, a Hugging Face directory or a quantized checkpoint (default: the
    /// fetched SmolLM2).
    #[arg(short, long)]
    pub model: Option<PathBuf>,
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
    /// Seconds running requests may go on after SIGINT/SIGTERM before they are cancelled.
    #[arg(long, default_value_t = 30.0)]
    shutdown_grace: f64,
    /// The model id clients use (default: the model's file or directory name).
    #[arg(long)]
    served_model_name: Option<String>,
    /// Hold weights as f32, f16 or bf16 (default: the checkpoint's dtype).
    #[arg(long)]
    dtype: Option<String>,
    /// cpu, cuda[:N] or auto.
    #[arg(long, default_value = "auto")]
    device: String,
}

pub fn serve(a: ServeArgs, model: PathBuf, scope: Option<super::ActScopeArg>) -> Result<()> {
    match DeviceSpec::parse(&a.device)? {
        DeviceSpec::Cpu => serve_on(CpuBackend::new(), a, model, scope),
        DeviceSpec::Cuda(n) => {
            let b = CudaBackend::new(n)?;
            eprintln!("{}", DeviceSpec::CUDA_UNVALIDATED);
            serve_on(b, a, model, scope)
        }
    }
}

fn serve_on<B: Backend>(
    backend: B,
    a: ServeArgs,
    model: PathBuf,
    scope: Option<super::ActScopeArg>,
) -> Result<()> {
    let dtype = a.dtype.as_deref().map(DType::parse).transpose()?;
    if !(a.shutdown_grace >= 0.0 && a.shutdown_grace.is_finite()) {
        bail!("--shutdown-grace must be a number of seconds >= 0");
    }
    let t = std::time::Instant::now();
    let loaded = super::open_model(backend, &model, dtype, scope)?;
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
        scheduler: SchedulerConfig {
            max_batch: a.max_batch,
            max_seq_len,
            kv_cache_tokens: a.kv_cache_tokens.unwrap_or(8 * max_seq_len),
            block_size: a.block_size,
            prefill_chunk: PREFILL_CHUNK,
        },
    };
    ferroq::server::run(loaded.model, loaded.tokenizer, opts)?;
    Ok(())
}

#[derive(clap::Args)]
pub struct LoadgenArgs {
    /// The server, host:port (loopback only).
    #[arg(long, default_value = "127.0.0.1:8080")]
    addr: String,
    /// Concurrent clients per level, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,8,32")]
    concurrency: Vec<usize>,
    /// Requests per level (default: 2 × clients, at least 8).
    #[arg(long)]
    requests: Option<usize>,
    /// Tokens each request generates (EOS ignored).
    #[arg(long, default_value_t = 64)]
    max_tokens: usize,
    /// Words per prompt, varied ±50% across requests.
    #[arg(long, default_value_t = 32)]
    prompt_words: usize,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

pub fn loadgen(a: LoadgenArgs) -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let reports = rt.block_on(async {
        let (status, body) = ferroq::server::client::get(&a.addr, "/v1/models")
            .await
            .with_context(|| format!("reaching {}", a.addr))?;
        if status != 200 {
            bail!("GET /v1/models: HTTP {status}: {body}");
        }
        let v: serde_json::Value = serde_json::from_str(&body)?;
        let model = v["data"][0]["id"].as_str().unwrap_or_default().to_string();
        let mut out = Vec::new();
        for &c in &a.concurrency {
            let o = LoadOptions {
                addr: a.addr.clone(),
                concurrency: c,
                requests: a.requests.unwrap_or((2 * c).max(8)),
                max_tokens: a.max_tokens,
                prompt_words: a.prompt_words,
                model: model.clone(),
            };
            eprintln!("loadgen: {c} clients, {} requests ...", o.requests);
            out.push(loadgen::run(&o).await?);
        }
        anyhow::Ok(out)
    })?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&reports)?);
    } else {
        print!("{}", loadgen::table(&reports));
    }
    Ok(())
}
