//! `ferroq analyze`: per-linear quantization sensitivity, with an optional KL budget.
//!
//! - The budget picks the BF16 fallback layers and writes the recipe; calibration and scoring
//!   run on `--device`.

use super::{progress_bar, read_text, resolve_model, DeviceArg, RecipeArgs};
use anyhow::{bail, Context, Result};
use ferroq::backend::{Backend, BackendJob};
use ferroq::ptq::analyze::{analyze, AnalyzeOptions};
use ferroq::ptq::pipeline::QuantizeOptions;
use ferroq::ptq::recipe::Recipe;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    src: RecipeArgs,
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
    #[command(flatten)]
    device: DeviceArg,
}

struct Job {
    a: Args,
    model: PathBuf,
}

pub fn run(a: Args) -> Result<()> {
    let model = resolve_model(a.src.model.clone())?;
    let spec = a.device.spec()?;
    spec.run(Job { a, model })?
}

impl BackendJob for Job {
    type Output = Result<()>;
    fn run<B: Backend>(self, open: &dyn Fn() -> ferroq::Result<B>) -> Result<()> {
        let (a, model) = (self.a, self.model);
        let r = Recipe::load(&a.src.recipe)?;
        let (config, tok, weights) = ferroq::model::read_all(&model)
            .with_context(|| format!("reading {}", model.display()))?;
        let text = match &a.data {
            Some(p) => read_text(p, "calibration text")?,
            None => ferroq::ptq::calib::DEFAULT_TEXT.to_string(),
        };
        let ids = tok.encode_plain(&text)?;
        let chunks = ferroq::eval::n_chunks(ids.len(), a.ctx, a.chunks);
        if chunks == 0 {
            bail!(
                "the evaluation text has {} tokens, fewer than one chunk of {}",
                ids.len(),
                a.ctx
            );
        }
        let opts = AnalyzeOptions {
            quant: QuantizeOptions {
                calib_file: a.src.calib.clone(),
                ..Default::default()
            },
            ctx: a.ctx,
            chunks,
            kl_budget: a.kl_budget,
        };
        let rep = analyze(open, config, &tok, weights, &r, &ids, &opts, &progress_bar)?;
        if let Some(path) = &a.report {
            let html =
                ferroq::report::analyze_page(&model.display().to_string(), &a.src.recipe, &rep);
            std::fs::write(path, html).with_context(|| format!("writing {}", path.display()))?;
            eprintln!("wrote {}", path.display());
        }
        if a.json {
            println!("{}", serde_json::to_string_pretty(&rep)?);
        } else {
            print!("{}", rep.table(&a.src.recipe, chunks, a.ctx));
        }
        if let Some(b) = &rep.budget {
            eprintln!(
                "budget {}: {} linears in BF16, verified mean KL {:.6}",
                b.budget,
                b.fallback.len(),
                b.kl
            );
            let yaml = r.with_fallback(&b.fallback).to_yaml()?;
            match &a.out_recipe {
                Some(p) => {
                    std::fs::write(p, &yaml).with_context(|| format!("writing {}", p.display()))?;
                    eprintln!("wrote {}", p.display());
                }
                None => print!("{yaml}"),
            }
        }
        Ok(())
    }
}
