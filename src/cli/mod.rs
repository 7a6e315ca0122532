//! The commands of the `ferroq` binary, one file each: its arguments and a `run`.
//!
//! - Shared here: the global flags, `--device`, the default model, opening a model with
//!   `--act-scope`, the progress bar.
//! - Library work stays in the library; these files parse, dispatch through `DeviceSpec::run`
//!   and print.

pub mod analyze;
pub mod bench;
pub mod convert;
pub mod eval;
pub mod generate;
pub mod info;
pub mod loadgen;
pub mod quantize;
pub mod serve;

use anyhow::{bail, Context, Result};
use ferroq::backend::{Backend, DeviceSpec};
use ferroq::quant::ActScope;
use ferroq::tensor::DType;
use std::path::{Path, PathBuf};

/// Where `bash models/fetch.sh` puts the default model (SmolLM2-135M-Instruct, FP16).
pub const DEFAULT_MODEL: &str = "models/SmolLM2-135M-Instruct-f16";

/// Flags every command takes.
#[derive(clap::Args, Clone)]
pub struct Global {
    /// Worker threads for CPU ops (default: all cores).
    #[arg(long, global = true)]
    pub threads: Option<usize>,
    /// Override every quantized linear's activation scope (generate, eval, bench, analyze,
    /// serve): per_token (dynamic in prefill and decode), per_tensor (the calibrated static
    /// scale in both) or pd_mix (per-token prefill, static decode).
    #[arg(long, global = true, value_enum)]
    pub act_scope: Option<ActScopeArg>,
    /// More log output (-v: debug, -vv: trace); RUST_LOG takes precedence.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

/// `--device` of the commands that run a model.
#[derive(clap::Args, Clone)]
pub struct DeviceArg {
    /// cpu, cuda[:N] or auto.
    #[arg(long, default_value = "auto")]
    pub device: String,
}

impl DeviceArg {
    pub fn spec(&self) -> Result<DeviceSpec> {
        Ok(DeviceSpec::parse(&self.device)?)
    }
}

/// The float model, recipe and calibration text `quantize` and `analyze` share.
#[derive(clap::Args)]
pub struct RecipeArgs {
    /// Float model: a .gguf file or a Hugging Face directory (default: the fetched SmolLM2).
    #[arg(short, long)]
    pub model: Option<PathBuf>,
    /// Preset (w8a8, w8a8-dynamic, w8a8-static, fp8, w4a16, w4a16-gptq) or a recipe YAML file.
    #[arg(long, default_value = "w8a8")]
    pub recipe: String,
    /// Calibration text: plain text (cut into windows) or JSONL with a "text" field.
    /// Default: ferroq's built-in mixed-domain text.
    #[arg(long)]
    pub calib: Option<PathBuf>,
}

#[derive(Clone, Copy, clap::ValueEnum)]
#[value(rename_all = "snake_case")]
pub enum ActScopeArg {
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

/// The model path, or the fetched default; an absent path is an error that says what to do.
pub fn resolve_model(m: Option<PathBuf>) -> Result<PathBuf> {
    let p = m.unwrap_or_else(|| PathBuf::from(DEFAULT_MODEL));
    if !p.exists() {
        bail!(
            "model {} not found; run `bash models/fetch.sh` for the default model or pass -m",
            p.display()
        );
    }
    Ok(p)
}

/// `--dtype` as a dtype.
pub fn parse_dtype(d: Option<&str>) -> Result<Option<DType>> {
    Ok(d.map(DType::parse).transpose()?)
}

/// Open a model and apply `--act-scope` to it.
pub fn open_model<B: Backend>(
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
        tracing::info!("act scope {scope:?} on {applied} quantized-activation linears");
        if kept > 0 {
            tracing::warn!(
                "{kept} linears quantize their input dynamically in this checkpoint (no \
                 calibrated static scale) and stay per-token"
            );
        }
        if applied + kept == 0 {
            tracing::warn!("no linear quantizes its activations: --act-scope changes nothing");
        }
    }
    Ok(loaded)
}

/// Read a text input (prompt, evaluation or calibration text) of at most 256 MiB, naming it on
/// failure: `/dev/zero` or an endless pipe is refused at the bound.
pub fn read_text(p: &Path, what: &str) -> Result<String> {
    Ok(ferroq::checkpoint::read_text(
        p,
        ferroq::checkpoint::MAX_CALIB_BYTES,
        what,
    )?)
}

/// A one-line progress bar on stderr: `stage [#####.....] done/total`.
pub fn progress_bar(stage: &str, done: usize, total: usize) {
    use std::io::IsTerminal;
    // Redrawing only makes sense on a terminal; logs get the finished line.
    if !std::io::stderr().is_terminal() && done != total {
        return;
    }
    let width = 30;
    let filled = (done * width)
        .checked_div(total)
        .unwrap_or(width)
        .min(width);
    eprint!(
        "\r{stage:<22} [{}{}] {done}/{total}   ",
        "#".repeat(filled),
        ".".repeat(width - filled)
    );
    if done == total {
        eprintln!();
    }
}
