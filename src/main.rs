//! The `ferroq` command line: parse, set up threads and logging, hand over to `cli/`.
//!
//! - Errors print as one line; `RUST_BACKTRACE=1` adds the backtrace.

mod cli;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "ferroq", version, about = "Quantized-LLM inference runtime")]
struct Cli {
    #[command(flatten)]
    global: cli::Global,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Convert a GGUF model into a Hugging Face model directory.
    Convert(cli::convert::Args),
    /// Quantize a float model with calibration and write a compressed-tensors checkpoint.
    Quantize(cli::quantize::Args),
    /// Accuracy against a baseline: perplexity, KL divergence, top-1 agreement
    /// (llama-perplexity conventions: ctx-token chunks, second half scored, no BOS).
    Eval(cli::eval::Args),
    /// Prefill (ppN) and decode (tgN) tok/s, mean ± stddev over repetitions (llama-bench style).
    Bench(cli::bench::Args),
    /// Per-layer quantization sensitivity (KL caused by quantizing one linear alone), with an
    /// optional KL budget that picks the BF16 fallback layers and writes the recipe.
    Analyze(cli::analyze::Args),
    /// Generate text from a prompt, streaming it to stdout; speed goes to stderr.
    Generate(cli::generate::Args),
    /// Show the CPU kernels, CUDA driver, devices, NVRTC and kernel cache of this machine.
    Info,
    /// Serve the model over an OpenAI-compatible HTTP API with continuous batching.
    Serve(cli::serve::ServeArgs),
    /// Measure a running server: throughput and time to first token at several concurrencies.
    Loadgen(cli::loadgen::Args),
}

/// Log events to stderr: ferroq's at info (debug with -v, trace with -vv), other crates' at
/// warn; RUST_LOG, when set, decides instead.
fn init_logging(verbose: u8) {
    let level = match verbose {
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(format!("warn,ferroq={level}")));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(verbose > 0)
        .without_time()
        .init();
}

fn run(cli: Cli) -> anyhow::Result<()> {
    if let Some(n) = cli.global.threads {
        rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build_global()
            .map_err(|e| anyhow::anyhow!("configuring {n} threads: {e}"))?;
    }
    let g = &cli.global;
    match cli.cmd {
        Cmd::Convert(a) => cli::convert::run(a),
        Cmd::Quantize(a) => cli::quantize::run(a),
        Cmd::Eval(a) => cli::eval::run(a, g),
        Cmd::Bench(a) => cli::bench::run(a, g),
        Cmd::Analyze(a) => cli::analyze::run(a),
        Cmd::Generate(a) => cli::generate::run(a, g),
        Cmd::Info => cli::info::run(),
        Cmd::Serve(a) => cli::serve::run(a, g),
        Cmd::Loadgen(a) => cli::loadgen::run(a),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.global.verbose);
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // `{:#}` joins the context chain into one line
            eprintln!("error: {e:#}");
            let wanted = std::env::var("RUST_BACKTRACE").is_ok_and(|v| v != "0" && !v.is_empty());
            if wanted {
                eprintln!("{}", e.backtrace());
            }
            ExitCode::FAILURE
        }
    }
}
