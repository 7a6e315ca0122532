//! The `ferroq` command line: a thin clap front over the library. Errors are reported with
//! anyhow here and only here.

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use ferroq::backend::cpu::CpuBackend;
use ferroq::backend::cuda::backend::CudaBackend;
use ferroq::backend::{Backend, DeviceSpec};
use ferroq::checkpoint::config::LmHead;
use ferroq::engine::generate::{generate, GenerateOptions};
use ferroq::engine::sampler::SamplingParams;
use ferroq::quant::ActScope;
use ferroq::tensor::DType;
use ferroq::tokenizer::ChatMessage;
use std::io::Write;

#[path = "cli/info.rs"]
mod info_cmd;
#[path = "cli/serve.rs"]
mod serve_cmd;
use std::path::{Path, PathBuf};

/// Where `bash models/fetch.sh` puts the default model (SmolLM2-135M-Instruct, FP16).
const DEFAULT_MODEL: &str = "models/SmolLM2-135M-Instruct-f16";

#[derive(Parser)]
#[command(name = "ferroq", version, about = "Quantized-LLM inference runtime")]
struct Cli {
    /// Worker threads for CPU ops (default: all cores).
    #[arg(long, global = true)]
    threads: Option<usize>,
    /// Override every quantized linear's activation scope (generate, eval, bench, serve):
    /// per_token (dynamic in prefill and decode), per_tensor (the calibrated static scale in
    /// both) or pd_mix (per-token prefill, static decode).
    #[arg(long, global = true, value_enum)]
    act_scope: Option<ActScopeArg>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, Copy, clap::ValueEnum)]
#[value(rename_all = "snake_case")]
enum ActScopeArg {
    PerToken,
    PerTensor,
    PdMix,
}

impl From<ActScopeArg> for ActScope {
    fn from(a: ActScopeArg) -> ActScope {
        match a {
            ActScopeArg::PerToken => ActScope::PerToken,
            ActScopeArg::PerTensor => ActScope::PerTensor,
            ActScopeArg::PdMix => ActScope::PdMix,
        }
    }
}

/// Open a model and apply `--act-scope` to it.
fn open_model<B: Backend>(
    backend: B,
    path: &Path,
    dtype: Option<DType>,
    scope: Option<ActScopeArg>,
) -> Result<ferroq::model::Loaded<B>> {
    let mut loaded = ferroq::model::open(backend, path, dtype)
        .with_context(|| format!("loading {}", path.display()))?;
    if let Some(scope) = scope {
        let scope = ActScope::from(scope);
        let (applied, kept) = loaded.model.set_act_scope(scope);
        eprintln!("act scope {scope:?} on {applied} quantized-activation linears");
        if kept > 0 {
            eprintln!(
                "warning: {kept} linears quantize their input dynamically in this checkpoint (no \
                 calibrated static scale) and stay per-token"
            );
        }
        if applied + kept == 0 {
            eprintln!("warning: no linear quantizes its activations: --act-scope changes nothing");
        }
    }
    Ok(loaded)
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LmHeadArg {
    Dense,
    Int8,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum BenchFormat {
    Md,
    Json,
    Csv,
}

#[derive(clap::Args)]
struct EvalArgs {
    /// The model to evaluate (e.g. a quantized checkpoint).
    #[arg(short, long)]
    model: PathBuf,
    /// The reference model (default: the fetched FP16 baseline).
    #[arg(long)]
    baseline: Option<PathBuf>,
    /// Evaluation text (e.g. wikitext-2's wiki.test.raw).
    #[arg(long)]
    data: PathBuf,
    #[arg(long, default_value_t = 512)]
    ctx: usize,
    /// Chunks to score at most.
    #[arg(long, default_value_t = 40)]
    chunks: usize,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// Save the baseline's log-probabilities (f16) for later runs.
    #[arg(long)]
    save_baseline: Option<PathBuf>,
    /// Use saved baseline log-probabilities instead of running the baseline model.
    #[arg(long, conflicts_with_all = ["baseline", "save_baseline"])]
    load_baseline: Option<PathBuf>,
    /// Write a self-contained HTML report (summary and per-token KL distribution).
    #[arg(long)]
    report: Option<PathBuf>,
    /// How the evaluated model runs the scored positions: `prefill` (whole chunk in one pass,
    /// as llama-perplexity) or `decode` (first half as a prompt, then one token at a time, so
    /// pd_mix models use their static decode scales).
    #[arg(long, value_enum, default_value_t = PathArg::Prefill)]
    path: PathArg,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum PathArg {
    Prefill,
    Decode,
}

#[derive(Subcommand)]
enum Cmd {
    /// Convert a GGUF model into a Hugging Face model directory.
    Convert {
        /// Input .gguf file.
        model: PathBuf,
        /// Output directory (must not exist or be empty).
        #[arg(long)]
        out: PathBuf,
        /// Weight dtype: f16, bf16 or f32.
        #[arg(long, default_value = "f16")]
        dtype: String,
    },
    /// Quantize a float model with calibration and write a compressed-tensors checkpoint.
    Quantize {
        /// Float model: a .gguf file or a Hugging Face directory (default: the fetched SmolLM2).
        #[arg(short, long)]
        model: Option<PathBuf>,
        /// Preset (w8a8, w8a8-dynamic, w8a8-static, fp8, w4a16, w4a16-gptq) or a recipe YAML file.
        #[arg(long, default_value = "w8a8")]
        recipe: String,
        /// Calibration text: plain text (cut into windows) or JSONL with a "text" field.
        /// Default: ferroq's built-in mixed-domain text.
        #[arg(long)]
        calib: Option<PathBuf>,
        /// Calibration samples.
        #[arg(long, default_value_t = 8)]
        calib_samples: usize,
        /// Tokens per calibration sample.
        #[arg(long, default_value_t = 128)]
        calib_len: usize,
        /// Samples calibrated concurrently (the result does not depend on it).
        #[arg(long, default_value_t = 4)]
        calib_batch: usize,
        /// LM head format, overriding the recipe's `lm_head` (the presets say int8; `dense`
        /// keeps it in the checkpoint's float dtype).
        #[arg(long, value_enum)]
        lm_head: Option<LmHeadArg>,
        /// Output directory.
        #[arg(short, long)]
        out: PathBuf,
    },
    /// Accuracy against a baseline: perplexity, KL divergence, top-1 agreement
    /// (llama-perplexity conventions: ctx-token chunks, second half scored, no BOS).
    Eval(EvalArgs),
    /// Prefill (ppN) and decode (tgN) tok/s, mean ± stddev over repetitions (llama-bench style).
    Bench {
        /// Models to compare (GGUF files or HF directories); default: the fetched FP16 baseline.
        #[arg(short, long)]
        model: Vec<PathBuf>,
        /// Prompt tokens for the prefill test (0 skips it).
        #[arg(short = 'p', long, default_value_t = 512)]
        n_prompt: usize,
        /// Tokens for the decode test (0 skips it).
        #[arg(short = 'n', long, default_value_t = 128)]
        n_gen: usize,
        /// Repetitions (after one warm-up run).
        #[arg(short = 'r', long, default_value_t = 3)]
        reps: usize,
        /// Output format.
        #[arg(short = 'o', long, value_enum, default_value_t = BenchFormat::Md)]
        output: BenchFormat,
    },
    /// Per-layer quantization sensitivity (KL caused by quantizing one linear alone), with an
    /// optional KL budget that picks the BF16 fallback layers and writes the recipe.
    Analyze {
        /// Float model (default: the fetched FP16 baseline).
        #[arg(short, long)]
        model: Option<PathBuf>,
        #[arg(long, default_value = "w8a8")]
        recipe: String,
        /// Calibration text (as for quantize).
        #[arg(long)]
        calib: Option<PathBuf>,
        /// Evaluation text (default: the built-in calibration text).
        #[arg(long)]
        data: Option<PathBuf>,
        #[arg(long, default_value_t = 128)]
        ctx: usize,
        #[arg(long, default_value_t = 4)]
        chunks: usize,
        /// Mean-KL budget: fall back the most sensitive layers until the model meets it.
        #[arg(long)]
        kl_budget: Option<f64>,
        /// Where to write the recipe with the fallback list (default: stdout).
        #[arg(long)]
        out_recipe: Option<PathBuf>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Write a self-contained HTML report (sensitivity bars, input histograms with clip
        /// ranges, KL distribution).
        #[arg(long)]
        report: Option<PathBuf>,
    },
    /// Generate text from a prompt, streaming it to stdout; speed goes to stderr.
    Generate {
        /// Model: a .gguf file or a Hugging Face directory (default: the fetched SmolLM2).
        #[arg(short, long)]
        model: Option<PathBuf>,
        /// The prompt.
        #[arg(
            short,
            long,
            required_unless_present = "prompt_file",
            conflicts_with = "prompt_file"
        )]
        prompt: Option<String>,
        /// Read the prompt from a file instead.
        #[arg(long)]
        prompt_file: Option<PathBuf>,
        /// Apply the model's chat template (prompt as the user turn).
        #[arg(long)]
        chat: bool,
        /// System prompt for --chat.
        #[arg(long)]
        system: Option<String>,
        /// Tokens to generate at most.
        #[arg(short = 'n', long, default_value_t = 128)]
        max_tokens: usize,
        /// 0 = greedy.
        #[arg(long, default_value_t = 0.0)]
        temperature: f32,
        /// 0 = off.
        #[arg(long, default_value_t = 0)]
        top_k: usize,
        #[arg(long, default_value_t = 1.0)]
        top_p: f32,
        #[arg(long, default_value_t = 1.0)]
        repeat_penalty: f32,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// cpu, cuda[:N] or auto.
        #[arg(long, default_value = "auto")]
        device: String,
        /// Hold weights as f32, f16 or bf16 (default: the checkpoint's dtype).
        #[arg(long)]
        dtype: Option<String>,
        /// Keep generating past end-of-sequence tokens (for speed measurements).
        #[arg(long)]
        ignore_eos: bool,
    },
    /// Show the CPU kernels, CUDA driver, devices, NVRTC and kernel cache of this machine.
    Info,
    /// Serve the model over an OpenAI-compatible HTTP API with continuous batching.
    Serve(serve_cmd::ServeArgs),
    /// Measure a running server: throughput and time to first token at several concurrencies.
    Loadgen(serve_cmd::LoadgenArgs),
}

fn resolve_model(m: Option<PathBuf>) -> Result<PathBuf> {
    let p = m.unwrap_or_else(|| PathBuf::from(DEFAULT_MODEL));
    if !p.exists() {
        bail!(
            "model {} not found; run `bash models/fetch.sh` for the default model or pass -m",
            p.display()
        );
    }
    Ok(p)
}

#[allow(clippy::too_many_arguments)]
fn run_generate<B: Backend>(
    backend: B,
    model: &Path,
    prompt: &str,
    chat: bool,
    system: Option<String>,
    opts: GenerateOptions,
    dtype: Option<DType>,
    scope: Option<ActScopeArg>,
) -> Result<()> {
    let t = std::time::Instant::now();
    let loaded = open_model(backend, model, dtype, scope)?;
    eprintln!(
        "loaded {} ({:?}, {} layers, weights {}) on {} in {:.2}s",
        model.display(),
        loaded.format,
        loaded.model.config.num_layers,
        loaded.model.weight_dtype,
        loaded.model.backend.describe(),
        t.elapsed().as_secs_f64()
    );
    let tok = &loaded.tokenizer;
    let text = if chat {
        let mut msgs = Vec::new();
        if let Some(s) = system {
            msgs.push(ChatMessage::system(s));
        }
        msgs.push(ChatMessage::user(prompt));
        tok.apply_chat_template(&msgs)?
    } else {
        prompt.to_string()
    };
    let ids = tok.encode(&text)?;
    let mut stdout = std::io::stdout();
    if !chat {
        print!("{prompt}");
    }
    let g = generate(&loaded.model, tok, &ids, &opts, |piece| {
        print!("{piece}");
        let _ = stdout.flush();
    })?;
    println!();
    let s = &g.stats;
    eprintln!(
        "prefill: {} tokens in {:.3}s = {:.1} tok/s | decode: {} tokens in {:.3}s = {:.1} tok/s",
        s.prompt_tokens,
        s.prefill_secs,
        s.prefill_tok_s(),
        s.generated_tokens,
        s.decode_secs,
        s.decode_tok_s()
    );
    Ok(())
}

fn run_eval(a: EvalArgs, scope: Option<ActScopeArg>) -> Result<()> {
    let EvalArgs {
        model,
        baseline,
        data,
        ctx,
        chunks: max_chunks,
        json,
        save_baseline,
        load_baseline,
        report,
        path,
    } = a;
    let path = match path {
        PathArg::Prefill => ferroq::eval::EvalPath::Prefill,
        PathArg::Decode => ferroq::eval::EvalPath::Decode,
    };
    let (model, data) = (model.as_path(), data.as_path());
    use ferroq::eval::{evaluate, n_chunks, BaseSource, Baseline};
    let m = open_model(CpuBackend::new(), model, None, scope)?;
    let text =
        std::fs::read_to_string(data).with_context(|| format!("reading {}", data.display()))?;
    // llama-perplexity convention for these models: no BOS, the whole text tokenized at once
    let tokens: Vec<u32> = m
        .tokenizer
        .tokenizer
        .encode(text.as_str(), false)
        .map_err(|e| anyhow::anyhow!("tokenizing: {e}"))?
        .get_ids()
        .to_vec();
    let chunks = n_chunks(tokens.len(), ctx, max_chunks);
    if chunks == 0 {
        bail!(
            "{} has {} tokens, fewer than one chunk of {ctx}",
            data.display(),
            tokens.len()
        );
    }
    let t = std::time::Instant::now();
    let progress = |d: usize, n: usize| progress_bar("scoring chunks", d, n);
    let baseline_name = match (&load_baseline, &baseline) {
        (Some(f), _) => format!("saved log-probabilities {}", f.display()),
        (None, Some(b)) => b.display().to_string(),
        (None, None) => DEFAULT_MODEL.to_string(),
    };
    let scores = match load_baseline {
        Some(f) => {
            let b = Baseline::load(&f)?;
            evaluate(
                &m.model,
                BaseSource::File(&b),
                &tokens,
                ctx,
                chunks,
                path,
                None,
                &progress,
            )?
        }
        None => {
            let bpath = resolve_model(baseline)?;
            let b = ferroq::model::open(CpuBackend::new(), &bpath, None)
                .with_context(|| format!("loading {}", bpath.display()))?;
            let mut save = save_baseline
                .as_ref()
                .map(|_| Baseline::empty(ctx, m.model.config.vocab_size, &tokens, chunks));
            let s = evaluate(
                &m.model,
                BaseSource::Model(&b.model),
                &tokens,
                ctx,
                chunks,
                path,
                save.as_mut(),
                &progress,
            )?;
            if let (Some(f), Some(b)) = (save_baseline, save) {
                b.save(&f)?;
                eprintln!("saved baseline log-probabilities to {}", f.display());
            }
            s
        }
    };
    let sum = scores.summary(chunks, ctx);
    if let Some(path) = &report {
        let html =
            ferroq::report::eval_page(&model.display().to_string(), &baseline_name, &sum, &scores);
        std::fs::write(path, html).with_context(|| format!("writing {}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&sum)?);
    } else {
        println!(
            "model: {} ({} chunks x {} tokens, {} scored, {:.1}s)",
            model.display(),
            sum.chunks,
            sum.ctx,
            sum.scored_tokens,
            t.elapsed().as_secs_f64()
        );
        println!(
            "| PPL base | PPL | PPL change | KL mean | KL median | KL p99 | KL max | same top-1 |"
        );
        println!("|---|---|---|---|---|---|---|---|");
        println!(
            "| {:.4} | {:.4} | {:+.2}% | {:.6} | {:.6} | {:.6} | {:.4} | {:.2}% |",
            sum.ppl_base,
            sum.ppl,
            sum.ppl_change_pct,
            sum.kl_mean,
            sum.kl_median,
            sum.kl_p99,
            sum.kl_max,
            sum.top1_agreement_pct
        );
    }
    Ok(())
}

/// Bytes of a model file, or of the safetensors files of a model directory.
fn disk_size(p: &Path) -> Result<u64> {
    if p.is_file() {
        return Ok(std::fs::metadata(p)?.len());
    }
    let mut total = 0;
    for e in std::fs::read_dir(p)? {
        let e = e?;
        if e.path().extension().is_some_and(|x| x == "safetensors") {
            total += e.metadata()?.len();
        }
    }
    Ok(total)
}

/// A one-line progress bar on stderr: `stage [#####.....] done/total`.
fn progress_bar(stage: &str, done: usize, total: usize) {
    use std::io::IsTerminal;
    // Redrawing only makes sense on a terminal; logs get the finished line.
    if !std::io::stderr().is_terminal() && done != total {
        return;
    }
    let width = 30;
    let filled = (done * width).checked_div(total).unwrap_or(width);
    eprint!(
        "\r{stage:<22} [{}{}] {done}/{total}   ",
        "#".repeat(filled),
        ".".repeat(width - filled)
    );
    if done == total {
        eprintln!();
    }
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    if let Some(n) = cli.threads {
        rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build_global()
            .context("configuring threads")?;
    }
    match cli.cmd {
        Cmd::Convert { model, out, dtype } => {
            let dtype = DType::parse(&dtype)?;
            let t = std::time::Instant::now();
            let r = ferroq::model::convert::gguf_to_hf(&model, &out, dtype)
                .with_context(|| format!("converting {}", model.display()))?;
            eprintln!(
                "wrote {} ({} tensors, {:.1}M parameters, {:.1} MB {dtype}) in {:.1}s",
                out.display(),
                r.n_tensors,
                r.n_params as f64 / 1e6,
                r.bytes as f64 / 1e6,
                t.elapsed().as_secs_f64()
            );
        }
        Cmd::Quantize {
            model,
            recipe,
            calib,
            calib_samples,
            calib_len,
            calib_batch,
            lm_head,
            out,
        } => {
            let model = resolve_model(model)?;
            let mut recipe_v = ferroq::ptq::recipe::Recipe::load(&recipe)?;
            if let Some(h) = lm_head {
                recipe_v.lm_head = match h {
                    LmHeadArg::Dense => LmHead::Dense,
                    LmHeadArg::Int8 => LmHead::Int8,
                };
            }
            let t = std::time::Instant::now();
            let (config, tok, weights) = ferroq::model::read_all(&model)
                .with_context(|| format!("reading {}", model.display()))?;
            let opts = ferroq::ptq::pipeline::QuantizeOptions {
                calib_file: calib,
                n_samples: calib_samples,
                seq_len: calib_len,
                batch: calib_batch,
                keep_float: false,
            };
            let q = ferroq::ptq::pipeline::quantize(
                config,
                tok,
                weights,
                &recipe_v,
                &opts,
                &progress_bar,
            )?;
            eprintln!();
            ferroq::ptq::ct_write::write(&q, &out)
                .with_context(|| format!("writing {}", out.display()))?;
            let r = &q.report;
            eprintln!(
                "quantized {} with `{recipe}` in {:.1}s: {} linears quantized, {} fallback (BF16), {} subgraphs smoothed, calibration {} samples / {} tokens -> {}",
                model.display(),
                t.elapsed().as_secs_f64(),
                r.quantized,
                r.fallback.len(),
                r.smoothed_subgraphs,
                r.calib_samples,
                r.calib_tokens,
                out.display()
            );
            let rotated = q.config.hadamard.sites();
            if !rotated.is_empty() {
                let list: Vec<String> = rotated
                    .iter()
                    .map(|(s, b)| format!("{} (block {b})", s.name()))
                    .collect();
                eprintln!("online Hadamard rotation of {}", list.join(", "));
            }
            for s in &r.hadamard_skipped {
                eprintln!(
                    "warning: {} not rotated: its width has no power-of-two block of at least {}",
                    s.name(),
                    ferroq::quant::hadamard::MIN_BLOCK
                );
            }
        }
        Cmd::Eval(args) => run_eval(args, cli.act_scope)?,
        Cmd::Bench {
            model,
            n_prompt,
            n_gen,
            reps,
            output,
        } => {
            let models = if model.is_empty() {
                vec![resolve_model(None)?]
            } else {
                model
            };
            let mut rows = Vec::new();
            for path in &models {
                let m = open_model(CpuBackend::new(), path, None, cli.act_scope)?;
                let size = disk_size(path)?;
                let name = path
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                eprintln!("benchmarking {name} ...");
                rows.extend(ferroq::bench::bench(
                    &m.model,
                    &name,
                    size,
                    n_prompt,
                    n_gen,
                    reps,
                    &progress_bar,
                )?);
            }
            match output {
                BenchFormat::Md => print!("{}", ferroq::bench::markdown(&rows)),
                BenchFormat::Json => println!("{}", serde_json::to_string_pretty(&rows)?),
                BenchFormat::Csv => print!("{}", ferroq::bench::csv(&rows)),
            }
        }
        Cmd::Analyze {
            model,
            recipe,
            calib,
            data,
            ctx,
            chunks,
            kl_budget,
            out_recipe,
            json,
            report,
        } => {
            let model = resolve_model(model)?;
            let r = ferroq::ptq::recipe::Recipe::load(&recipe)?;
            let (config, tok, weights) = ferroq::model::read_all(&model)
                .with_context(|| format!("reading {}", model.display()))?;
            let text = match &data {
                Some(p) => std::fs::read_to_string(p)
                    .with_context(|| format!("reading {}", p.display()))?,
                None => ferroq::ptq::calib::DEFAULT_TEXT.to_string(),
            };
            let ids: Vec<u32> = tok
                .tokenizer
                .encode(text.as_str(), false)
                .map_err(|e| anyhow::anyhow!("tokenizing: {e}"))?
                .get_ids()
                .to_vec();
            let chunks = ferroq::eval::n_chunks(ids.len(), ctx, chunks);
            if chunks == 0 {
                bail!(
                    "the evaluation text has {} tokens, fewer than one chunk of {ctx}",
                    ids.len()
                );
            }
            let opts = ferroq::ptq::analyze::AnalyzeOptions {
                quant: ferroq::ptq::pipeline::QuantizeOptions {
                    calib_file: calib,
                    ..Default::default()
                },
                ctx,
                chunks,
                kl_budget,
            };
            let rep = ferroq::ptq::analyze::analyze(
                config,
                &tok,
                weights,
                &r,
                &ids,
                &opts,
                &progress_bar,
            )?;
            if let Some(path) = &report {
                let html =
                    ferroq::report::analyze_page(&model.display().to_string(), &recipe, &rep);
                std::fs::write(path, html)
                    .with_context(|| format!("writing {}", path.display()))?;
                eprintln!("wrote {}", path.display());
            }
            if json {
                println!("{}", serde_json::to_string_pretty(&rep)?);
            } else {
                println!(
                    "full-model mean KL with `{recipe}`: {:.6} ({chunks} chunks x {ctx} tokens)",
                    rep.full_kl
                );
                println!("| rank | linear | KL alone | input kurtosis | max/std |\n|---:|---|---:|---:|---:|");
                for (i, l) in rep.layers.iter().enumerate() {
                    println!(
                        "| {} | {} | {:.6} | {:.1} | {:.1} |",
                        i + 1,
                        l.name,
                        l.kl,
                        l.kurtosis,
                        l.max_over_std
                    );
                }
            }
            if let Some(b) = &rep.budget {
                eprintln!(
                    "budget {}: {} linears in BF16, verified mean KL {:.6}",
                    b.budget,
                    b.fallback.len(),
                    b.kl
                );
                let yaml = r.with_fallback(&b.fallback).to_yaml()?;
                match &out_recipe {
                    Some(p) => {
                        std::fs::write(p, &yaml)
                            .with_context(|| format!("writing {}", p.display()))?;
                        eprintln!("wrote {}", p.display());
                    }
                    None => print!("{yaml}"),
                }
            }
        }
        Cmd::Serve(a) => {
            let model = resolve_model(a.model.clone())?;
            serve_cmd::serve(a, model, cli.act_scope)?
        }
        Cmd::Loadgen(a) => serve_cmd::loadgen(a)?,
        Cmd::Info => info_cmd::info()?,
        Cmd::Generate {
            model,
            prompt,
            prompt_file,
            chat,
            system,
            max_tokens,
            temperature,
            top_k,
            top_p,
            repeat_penalty,
            seed,
            device,
            dtype,
            ignore_eos,
        } => {
            let model = resolve_model(model)?;
            let prompt = match (prompt, prompt_file) {
                (Some(p), _) => p,
                (None, Some(f)) => std::fs::read_to_string(&f)
                    .with_context(|| format!("reading prompt file {}", f.display()))?,
                (None, None) => bail!("give --prompt or --prompt-file"),
            };
            let dtype = dtype.as_deref().map(DType::parse).transpose()?;
            let opts = GenerateOptions {
                max_new_tokens: max_tokens,
                sampling: SamplingParams {
                    temperature,
                    top_k,
                    top_p,
                    repetition_penalty: repeat_penalty,
                    seed,
                },
                stop_at_eos: !ignore_eos,
                ..Default::default()
            };
            match DeviceSpec::parse(&device)? {
                DeviceSpec::Cpu => run_generate(
                    CpuBackend::new(),
                    &model,
                    &prompt,
                    chat,
                    system,
                    opts,
                    dtype,
                    cli.act_scope,
                )?,
                DeviceSpec::Cuda(n) => {
                    let b = CudaBackend::new(n)?;
                    eprintln!("{}", DeviceSpec::CUDA_UNVALIDATED);
                    let scope = cli.act_scope;
                    run_generate(b, &model, &prompt, chat, system, opts, dtype, scope)?
                }
            }
        }
    }
    Ok(())
}
