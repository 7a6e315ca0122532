//! `ferroq generate`: stream a completion of a prompt to stdout.
//!
//! - Load time and prefill / decode speed go to stderr, so stdout is the text alone.

use super::{open_model, parse_dtype, read_text, resolve_model, DeviceArg, Global};
use anyhow::{bail, Result};
use ferroq::backend::{Backend, BackendJob};
use ferroq::engine::generate::{generate, GenerateOptions};
use ferroq::engine::sampler::SamplingParams;
use ferroq::tensor::DType;
use std::io::Write;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
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
    #[command(flatten)]
    device: DeviceArg,
    /// Hold weights as f32, f16 or bf16 (default: the checkpoint's dtype).
    #[arg(long)]
    dtype: Option<String>,
    /// Keep generating past end-of-sequence tokens (for speed measurements).
    #[arg(long)]
    ignore_eos: bool,
}

struct Job {
    model: PathBuf,
    prompt: String,
    chat: bool,
    system: Option<String>,
    opts: GenerateOptions,
    dtype: Option<DType>,
    g: Global,
}

pub fn run(a: Args, g: &Global) -> Result<()> {
    let model = resolve_model(a.model)?;
    let prompt = match (a.prompt, a.prompt_file) {
        (Some(p), _) => p,
        (None, Some(f)) => read_text(&f, "prompt file")?,
        (None, None) => bail!("give --prompt or --prompt-file"),
    };
    let opts = GenerateOptions {
        max_new_tokens: a.max_tokens,
        sampling: SamplingParams {
            temperature: a.temperature,
            top_k: a.top_k,
            top_p: a.top_p,
            repetition_penalty: a.repeat_penalty,
            seed: a.seed,
        },
        stop_at_eos: !a.ignore_eos,
        ..Default::default()
    };
    let job = Job {
        model,
        prompt,
        chat: a.chat,
        system: a.system,
        opts,
        dtype: parse_dtype(a.dtype.as_deref())?,
        g: g.clone(),
    };
    a.device.spec()?.run(job)?
}

impl BackendJob for Job {
    type Output = Result<()>;
    fn run<B: Backend>(self, open: &dyn Fn() -> ferroq::Result<B>) -> Result<()> {
        let t = std::time::Instant::now();
        let loaded = open_model(open()?, &self.model, self.dtype, self.g.act_scope)?;
        eprintln!(
            "loaded {} ({:?}, {} layers, weights {}) on {} in {:.2}s{}",
            self.model.display(),
            loaded.format,
            loaded.model.config.num_layers,
            loaded.model.weight_dtype,
            loaded.model.backend.describe(),
            t.elapsed().as_secs_f64(),
            ferroq::bench::peak_rss_note()
        );
        let tok = &loaded.tokenizer;
        let text = tok.render_prompt(&self.prompt, self.chat, self.system.as_deref())?;
        let ids = tok.encode(&text)?;
        let mut stdout = std::io::stdout();
        if !self.chat {
            print!("{}", self.prompt);
        }
        let out = generate(&loaded.model, tok, &ids, &self.opts, |piece| {
            print!("{piece}");
            let _ = stdout.flush();
        })?;
        println!();
        let s = &out.stats;
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
}
