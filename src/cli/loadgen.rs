//! `ferroq loadgen`: measure a running server at several concurrencies.
//!
//! - Throughput and time to first token through `ferroq::server::loadgen`.

use anyhow::{bail, Context, Result};
use ferroq::server::loadgen::{self, LoadOptions};

#[derive(clap::Args)]
pub struct Args {
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

pub fn run(a: Args) -> Result<()> {
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
