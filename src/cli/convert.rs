//! `ferroq convert`: a GGUF model into a Hugging Face model directory.

use anyhow::{Context, Result};
use ferroq::tensor::DType;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// Input .gguf file.
    model: PathBuf,
    /// Output directory (must not exist or be empty).
    #[arg(long)]
    out: PathBuf,
    /// Weight dtype: f16, bf16 or f32.
    #[arg(long, default_value = "f16")]
    dtype: String,
}

pub fn run(a: Args) -> Result<()> {
    let dtype = DType::parse(&a.dtype)?;
    let t = std::time::Instant::now();
    let r = ferroq::model::convert::gguf_to_hf(&a.model, &a.out, dtype)
        .with_context(|| format!("converting {}", a.model.display()))?;
    eprintln!(
        "wrote {} ({} tensors, {:.1}M parameters, {:.1} MB {dtype}) in {:.1}s",
        a.out.display(),
        r.n_tensors,
        r.n_params as f64 / 1e6,
        r.bytes as f64 / 1e6,
        t.elapsed().as_secs_f64()
    );
    Ok(())
}
