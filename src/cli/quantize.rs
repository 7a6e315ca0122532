//! `ferroq quantize`: calibrate and quantize a float model, write a compressed-tensors checkpoint.
//!
//! - A preset or a YAML recipe; the calibration passes run on `--device` (the CPU by default).

use super::{progress_bar, resolve_model, DeviceArg, RecipeArgs};
use anyhow::{Context, Result};
use ferroq::backend::{Backend, BackendJob};
use ferroq::checkpoint::config::LmHead;
use ferroq::ptq::pipeline::{quantize_on, QuantizeOptions, QuantizedModel};
use ferroq::ptq::recipe::Recipe;
use std::path::PathBuf;

#[derive(Clone, Copy, clap::ValueEnum)]
enum LmHeadArg {
    Dense,
    Int8,
}

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    src: RecipeArgs,
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
    /// Where the calibration passes run (cpu, the reference, by default; a GPU observes its
    /// bf16 weights, so its scales can differ in the last bits).
    #[command(flatten)]
    device: DeviceArg,
}

/// The calibration and quantization, on the chosen backend.
struct Job<'a> {
    config: ferroq::checkpoint::config::ModelConfig,
    tok: ferroq::tokenizer::TokenizerBundle,
    weights: std::collections::BTreeMap<String, ferroq::tensor::HostTensor>,
    recipe: &'a Recipe,
    opts: QuantizeOptions,
}

impl BackendJob for Job<'_> {
    type Output = ferroq::Result<QuantizedModel>;
    fn run<B: Backend>(self, open: &dyn Fn() -> ferroq::Result<B>) -> Self::Output {
        quantize_on(
            open,
            self.config,
            self.tok,
            self.weights,
            self.recipe,
            &self.opts,
            &progress_bar,
        )
    }
}

pub fn run(a: Args) -> Result<()> {
    let spec = a.device.spec()?;
    ferroq::checkpoint::check_output_dir(&a.out)?;
    let model = resolve_model(a.src.model)?;
    let mut recipe = Recipe::load(&a.src.recipe)?;
    if let Some(h) = a.lm_head {
        recipe.lm_head = match h {
            LmHeadArg::Dense => LmHead::Dense,
            LmHeadArg::Int8 => LmHead::Int8,
        };
    }
    let t = std::time::Instant::now();
    let (config, tok, weights) =
        ferroq::model::read_all(&model).with_context(|| format!("reading {}", model.display()))?;
    let opts = QuantizeOptions {
        calib_file: a.src.calib,
        n_samples: a.calib_samples,
        seq_len: a.calib_len,
        batch: a.calib_batch,
        keep_float: false,
    };
    let job = Job {
        config,
        tok,
        weights,
        recipe: &recipe,
        opts,
    };
    let q = spec.run(job)??;
    eprintln!();
    ferroq::ptq::ct_write::write(&q, &a.out)
        .with_context(|| format!("writing {}", a.out.display()))?;
    let r = &q.report;
    eprintln!(
        "quantized {} with `{}` in {:.1}s: {} linears quantized, {} fallback (BF16), {} subgraphs smoothed, calibration {} samples / {} tokens -> {}",
        model.display(),
        a.src.recipe,
        t.elapsed().as_secs_f64(),
        r.quantized,
        r.fallback.len(),
        r.smoothed_subgraphs,
        r.calib_samples,
        r.calib_tokens,
        a.out.display()
    );
    let rotated = q.config.hadamard.sites();
    if !rotated.is_empty() {
        let list: Vec<String> = rotated
            .iter()
            .map(|(s, b)| format!("{} (block {b})", s.name()))
            .collect();
        eprintln!("online Hadamard rotation of {}", list.join(", "));
    }
    if let Some((asked, used)) = r.int4_group {
        eprintln!(
            "int4 groups of {used} (the recipe asked for {asked}, which does not divide every \
             quantized width)"
        );
    }
    for s in &r.hadamard_skipped {
        tracing::warn!(
            "{} not rotated: its width has no power-of-two block of at least {}",
            s.name(),
            ferroq::quant::hadamard::MIN_BLOCK
        );
    }
    Ok(())
}
