//! `ferroq eval`: accuracy of a model against a baseline, on the CPU or a GPU.
//!
//! - Perplexity, KL divergence and top-1 agreement with llama-perplexity's conventions (ctx-token
//!   chunks, second half scored, no BOS); both models run on `--device`.

use super::{open_model, progress_bar, read_text, resolve_model, DeviceArg, Global, DEFAULT_MODEL};
use anyhow::{bail, Context, Result};
use ferroq::backend::{Backend, BackendJob};
use ferroq::eval::{compare, n_chunks, BaselineInput, EvalPath};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
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
    /// Both models run here: cpu, cuda[:N] or auto.
    #[command(flatten)]
    device: DeviceArg,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum PathArg {
    Prefill,
    Decode,
}

struct Job {
    a: Args,
    g: Global,
}

pub fn run(a: Args, g: &Global) -> Result<()> {
    let spec = a.device.spec()?;
    spec.run(Job { a, g: g.clone() })?
}

impl BackendJob for Job {
    type Output = Result<()>;
    fn run<B: Backend>(self, open: &dyn Fn() -> ferroq::Result<B>) -> Result<()> {
        let a = self.a;
        let path = match a.path {
            PathArg::Prefill => EvalPath::Prefill,
            PathArg::Decode => EvalPath::Decode,
        };
        let m = open_model(open()?, &a.model, None, self.g.act_scope)?;
        let text = read_text(&a.data, "evaluation text")?;
        let tokens = m.tokenizer.encode_plain(&text)?;
        let chunks = n_chunks(tokens.len(), a.ctx, a.chunks);
        if chunks == 0 {
            bail!(
                "{} has {} tokens, fewer than one chunk of {}",
                a.data.display(),
                tokens.len(),
                a.ctx
            );
        }
        let t = std::time::Instant::now();
        let progress = |d: usize, n: usize| progress_bar("scoring chunks", d, n);
        let (baseline_name, scores) = match &a.load_baseline {
            Some(f) => {
                let s = compare(
                    &m.model,
                    BaselineInput::Saved(f),
                    &tokens,
                    a.ctx,
                    chunks,
                    path,
                    &progress,
                )?;
                (format!("saved log-probabilities {}", f.display()), s)
            }
            None => {
                let bpath = resolve_model(a.baseline.clone())?;
                let b = ferroq::model::open(open()?, &bpath, None)
                    .with_context(|| format!("loading {}", bpath.display()))?;
                let base = BaselineInput::Model {
                    model: &b.model,
                    save_to: a.save_baseline.as_deref(),
                };
                let s = compare(&m.model, base, &tokens, a.ctx, chunks, path, &progress)?;
                if let Some(f) = &a.save_baseline {
                    eprintln!("saved baseline log-probabilities to {}", f.display());
                }
                let name = match &a.baseline {
                    Some(p) => p.display().to_string(),
                    None => DEFAULT_MODEL.to_string(),
                };
                (name, s)
            }
        };
        let sum = scores.summary(chunks, a.ctx);
        if let Some(out) = &a.report {
            let html = ferroq::report::eval_page(
                &a.model.display().to_string(),
                &baseline_name,
                &sum,
                &scores,
            );
            std::fs::write(out, html).with_context(|| format!("writing {}", out.display()))?;
            eprintln!("wrote {}", out.display());
        }
        if a.json {
            println!("{}", serde_json::to_string_pretty(&sum)?);
        } else {
            println!(
                "model: {} on {} ({} chunks x {} tokens, {} scored, {:.1}s)",
                a.model.display(),
                m.model.backend.describe(),
                sum.chunks,
                sum.ctx,
                sum.scored_tokens,
                t.elapsed().as_secs_f64()
            );
            print!("{}", sum.table());
        }
        Ok(())
    }
}
