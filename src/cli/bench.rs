//! `ferroq bench`: prefill (ppN) and decode (tgN) tok/s, llama-bench style.
//!
//! - One or more models, mean ± stddev over repetitions, on the CPU or a GPU.

use super::{open_model, progress_bar, resolve_model, DeviceArg, Global};
use anyhow::Result;
use ferroq::backend::{Backend, BackendJob};
use std::path::PathBuf;

#[derive(Clone, Copy, clap::ValueEnum)]
enum Format {
    Md,
    Json,
    Csv,
}

#[derive(clap::Args)]
pub struct Args {
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
    #[arg(short = 'o', long, value_enum, default_value_t = Format::Md)]
    output: Format,
    #[command(flatten)]
    device: DeviceArg,
}

struct Job {
    a: Args,
    models: Vec<PathBuf>,
    g: Global,
}

pub fn run(mut a: Args, g: &Global) -> Result<()> {
    let models = if a.model.is_empty() {
        vec![resolve_model(None)?]
    } else {
        std::mem::take(&mut a.model)
    };
    let spec = a.device.spec()?;
    spec.run(Job {
        a,
        models,
        g: g.clone(),
    })?
}

impl BackendJob for Job {
    type Output = Result<()>;
    fn run<B: Backend>(self, open: &dyn Fn() -> ferroq::Result<B>) -> Result<()> {
        let a = &self.a;
        let mut rows = Vec::new();
        for path in &self.models {
            let t = std::time::Instant::now();
            let m = open_model(open()?, path, None, self.g.act_scope)?;
            let load_s = t.elapsed().as_secs_f64();
            let size = ferroq::checkpoint::disk_size(path)?;
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            eprintln!(
                "loaded {name} in {load_s:.2}s{}; benchmarking on {} ...",
                ferroq::bench::peak_rss_note(),
                m.model.backend.describe()
            );
            rows.extend(ferroq::bench::bench(
                &m.model,
                &name,
                size,
                a.n_prompt,
                a.n_gen,
                a.reps,
                &progress_bar,
            )?);
        }
        match a.output {
            Format::Md => print!("{}", ferroq::bench::markdown(&rows)),
            Format::Json => println!("{}", serde_json::to_string_pretty(&rows)?),
            Format::Csv => print!("{}", ferroq::bench::csv(&rows)),
        }
        Ok(())
    }
}
