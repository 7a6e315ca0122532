//! The generation loop: one batched prefill over the prompt, then one decode step per token.
//!
//! - Samples from the last logits on the backend and streams text once it forms whole UTF-8
//!   characters.
//! - Times prefill and decode apart: the two numbers llama.cpp reports as prompt eval and eval.

use crate::backend::Backend;
use crate::engine::sampler::{Sampler, SamplingParams};
use crate::error::{Error, Result};
use crate::model::llama::LlamaModel;
use crate::model::session::Session;
use crate::tokenizer::{TextStream, TokenizerBundle};
use std::time::Instant;

#[derive(Clone, Debug)]
pub struct GenerateOptions {
    pub max_new_tokens: usize,
    pub sampling: SamplingParams,
    /// Stop at the model's end-of-sequence tokens.
    pub stop_at_eos: bool,
    /// Largest number of prompt tokens per forward call.
    pub max_batch: usize,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        GenerateOptions {
            max_new_tokens: 128,
            sampling: SamplingParams::default(),
            stop_at_eos: true,
            max_batch: 512,
        }
    }
}

#[derive(Clone, Debug, Default)]
pub struct GenerationStats {
    pub prompt_tokens: usize,
    pub generated_tokens: usize,
    /// Prompt forward pass plus the first sample.
    pub prefill_secs: f64,
    /// All later decode steps.
    pub decode_secs: f64,
}

impl GenerationStats {
    pub fn prefill_tok_s(&self) -> f64 {
        self.prompt_tokens as f64 / self.prefill_secs.max(1e-9)
    }
    /// Decode steps after the first token (which the prefill produced).
    pub fn decode_tok_s(&self) -> f64 {
        self.generated_tokens.saturating_sub(1) as f64 / self.decode_secs.max(1e-9)
    }
}

pub struct Generation {
    pub tokens: Vec<u32>,
    pub text: String,
    pub stats: GenerationStats,
}

/// Generate from `prompt` token ids; `on_text` receives each new piece of text.
pub fn generate<B: Backend>(
    model: &LlamaModel<B>,
    tok: &TokenizerBundle,
    prompt: &[u32],
    opts: &GenerateOptions,
    on_text: impl FnMut(&str) + Send,
) -> Result<Generation> {
    model
        .backend
        .run_on_workers(|| generate_here(model, tok, prompt, opts, on_text))
}

fn generate_here<B: Backend>(
    model: &LlamaModel<B>,
    tok: &TokenizerBundle,
    prompt: &[u32],
    opts: &GenerateOptions,
    mut on_text: impl FnMut(&str) + Send,
) -> Result<Generation> {
    if prompt.is_empty() {
        return Err(Error::InvalidArgument(
            "the prompt encodes to no tokens".into(),
        ));
    }
    opts.sampling.validate()?;
    let max_seq = prompt.len() + opts.max_new_tokens;
    let mut session = model.new_session(opts.max_batch.clamp(1, prompt.len()), max_seq, false)?;
    let mut sampler = Sampler::new(opts.sampling.clone(), model.config.vocab_size);
    let mut history = prompt.to_vec();
    let mut out = Vec::with_capacity(opts.max_new_tokens);
    let mut stream = TextStream::new();
    let mut stats = GenerationStats {
        prompt_tokens: prompt.len(),
        ..Default::default()
    };
    if opts.max_new_tokens == 0 {
        return Ok(Generation {
            tokens: out,
            text: String::new(),
            stats,
        });
    }

    // the backend picks the token (greedy or drawn), so only the id crosses to the host
    let greedy = opts.sampling.is_greedy();
    let mut step = |session: &mut Session<B>, tokens: &[u32], history: &[u32]| -> Result<u32> {
        if greedy {
            model.forward_greedy(session, tokens)
        } else {
            let d = sampler.next_draw(history);
            model.forward_sample(session, tokens, &d)
        }
    };
    let t0 = Instant::now();
    let mut next = step(&mut session, prompt, &history)?;
    stats.prefill_secs = t0.elapsed().as_secs_f64();

    let t1 = Instant::now();
    loop {
        if opts.stop_at_eos && tok.eos_ids.contains(&next) {
            break;
        }
        out.push(next);
        history.push(next);
        let piece = stream.push(tok, &out)?;
        if !piece.is_empty() {
            on_text(piece);
        }
        if out.len() >= opts.max_new_tokens {
            break;
        }
        next = step(&mut session, &[next], &history)?;
    }
    stats.decode_secs = t1.elapsed().as_secs_f64();
    stats.generated_tokens = out.len();
    let rest = stream.finish(tok, &out)?;
    if !rest.is_empty() {
        on_text(rest);
    }
    let final_text = stream.text().to_string();
    Ok(Generation {
        tokens: out,
        text: final_text,
        stats,
    })
}
