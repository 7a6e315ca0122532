//! Accuracy against a baseline, with llama.cpp's `llama-perplexity` conventions.
//!
//! - The text is tokenized once (no BOS), cut into `ctx`-token chunks, each run from an empty
//!   cache; only the second half of each chunk is scored, so numbers compare across tools.
//! - Reported: both perplexities, the PPL change, KL(P_base ‖ P_model) over the full vocabulary
//!   per scored token (mean / median / p99 / max) and top-1 agreement.
//! - Baseline log-probabilities can be saved (f16) and reloaded (`compare`).

use crate::backend::Backend;
use crate::engine::sampler::argmax;
use crate::error::{Error, Result};
use crate::model::llama::{LlamaModel, Logits};
use crate::model::session::Session;
use half::f16;
use std::io::{Read, Write};
use std::path::Path;

/// log-softmax of `logits` into `out` (f64 for the sums).
pub fn log_softmax(logits: &[f32], out: &mut [f64]) {
    let max = logits.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64;
    let z: f64 = logits.iter().map(|&l| (l as f64 - max).exp()).sum();
    let lz = z.ln() + max;
    out.iter_mut()
        .zip(logits)
        .for_each(|(o, &l)| *o = l as f64 - lz);
}

/// KL(P ‖ Q) from log-probabilities.
pub fn kl_divergence(logp: &[f64], logq: &[f64]) -> f64 {
    logp.iter()
        .zip(logq)
        .map(|(&p, &q)| p.exp() * (p - q))
        .sum::<f64>()
        .max(0.0)
}

/// Per-token results of scoring a model against baseline log-probabilities.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TokenScores {
    pub nll_base: Vec<f64>,
    pub nll: Vec<f64>,
    pub kl: Vec<f64>,
    pub same_top: Vec<bool>,
}

#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct EvalSummary {
    pub chunks: usize,
    pub ctx: usize,
    pub scored_tokens: usize,
    pub ppl_base: f64,
    pub ppl: f64,
    pub ppl_change_pct: f64,
    pub kl_mean: f64,
    pub kl_median: f64,
    pub kl_p99: f64,
    pub kl_max: f64,
    pub top1_agreement_pct: f64,
}

impl EvalSummary {
    /// The one-row markdown table `ferroq eval` prints.
    pub fn table(&self) -> String {
        format!(
            "| PPL base | PPL | PPL change | KL mean | KL median | KL p99 | KL max | same top-1 |\n\
             |---|---|---|---|---|---|---|---|\n\
             | {:.4} | {:.4} | {:+.2}% | {:.6} | {:.6} | {:.6} | {:.4} | {:.2}% |\n",
            self.ppl_base,
            self.ppl,
            self.ppl_change_pct,
            self.kl_mean,
            self.kl_median,
            self.kl_p99,
            self.kl_max,
            self.top1_agreement_pct
        )
    }
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[i]
}

impl TokenScores {
    pub fn summary(&self, chunks: usize, ctx: usize) -> EvalSummary {
        let n = self.nll.len().max(1) as f64;
        let ppl_base = (self.nll_base.iter().sum::<f64>() / n).exp();
        let ppl = (self.nll.iter().sum::<f64>() / n).exp();
        let mut kl = self.kl.clone();
        kl.sort_by(|a, b| a.total_cmp(b));
        EvalSummary {
            chunks,
            ctx,
            scored_tokens: self.nll.len(),
            ppl_base,
            ppl,
            ppl_change_pct: (ppl / ppl_base - 1.0) * 100.0,
            kl_mean: kl.iter().sum::<f64>() / n,
            kl_median: percentile(&kl, 0.5),
            kl_p99: percentile(&kl, 0.99),
            kl_max: kl.last().copied().unwrap_or(f64::NAN),
            top1_agreement_pct: self.same_top.iter().filter(|&&b| b).count() as f64 / n * 100.0,
        }
    }
}

/// Baseline log-probabilities of the scored positions: (chunks × per_chunk, vocab), f16.
pub struct Baseline {
    pub ctx: usize,
    pub chunks: usize,
    pub vocab: usize,
    pub tokens: Vec<u32>,
    pub logp: Vec<f16>,
}

const MAGIC: &[u8; 8] = b"FRQBASE1";

impl Baseline {
    /// An empty baseline to be filled by `evaluate(.., save: Some(..))`.
    pub fn empty(ctx: usize, vocab: usize, tokens: &[u32], chunks: usize) -> Self {
        Baseline {
            ctx,
            chunks: 0,
            vocab,
            tokens: tokens[..(chunks * ctx).min(tokens.len())].to_vec(),
            logp: Vec::new(),
        }
    }

    pub fn per_chunk(&self) -> usize {
        self.ctx - 1 - self.ctx / 2
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        let io = |e| Error::io(path, e);
        let mut f = std::io::BufWriter::new(std::fs::File::create(path).map_err(io)?);
        f.write_all(MAGIC).map_err(io)?;
        for v in [self.ctx, self.chunks, self.vocab, self.tokens.len()] {
            f.write_all(&(v as u64).to_le_bytes()).map_err(io)?;
        }
        f.write_all(bytemuck::cast_slice(&self.tokens))
            .map_err(io)?;
        f.write_all(bytemuck::cast_slice(&self.logp)).map_err(io)?;
        f.flush().map_err(io)
    }

    pub fn load(path: &Path) -> Result<Self> {
        let io = |e| Error::io(path, e);
        let mut f = std::io::BufReader::new(std::fs::File::open(path).map_err(io)?);
        let mut magic = [0u8; 8];
        f.read_exact(&mut magic).map_err(io)?;
        if &magic != MAGIC {
            return Err(Error::InvalidArgument(format!(
                "{} is not a ferroq baseline file",
                path.display()
            )));
        }
        let mut hdr = [0u64; 4];
        for h in hdr.iter_mut() {
            let mut b = [0u8; 8];
            f.read_exact(&mut b).map_err(io)?;
            *h = u64::from_le_bytes(b);
        }
        let [ctx, chunks, vocab, nt] = hdr.map(|v| v as usize);
        let per = ctx.saturating_sub(1 + ctx / 2);
        let mut tb = vec![0u8; nt * 4];
        f.read_exact(&mut tb).map_err(io)?;
        let mut lb = vec![0u8; chunks * per * vocab * 2];
        f.read_exact(&mut lb).map_err(|e| {
            Error::InvalidArgument(format!("{}: truncated baseline ({e})", path.display()))
        })?;
        Ok(Baseline {
            ctx,
            chunks,
            vocab,
            tokens: bytemuck::pod_collect_to_vec(&tb),
            logp: bytemuck::pod_collect_to_vec(&lb),
        })
    }
}

/// How many chunks `tokens` allows (at most `max_chunks`).
pub fn n_chunks(tokens: usize, ctx: usize, max_chunks: usize) -> usize {
    (tokens / ctx).min(max_chunks)
}

/// Which code path the evaluated model's scored positions run through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EvalPath {
    /// The whole chunk in one forward pass (llama-perplexity; quantized activations take the
    /// prefill scheme, e.g. pd_mix's per-token dynamic scales).
    Prefill,
    /// The first half prefilled as a prompt, then every scored position fed as a single decoded
    /// token (teacher forcing): what generation runs, e.g. pd_mix's static decode scales.
    Decode,
}

/// Log-probabilities (f32) of chunk `c`'s scored positions under `model`: (per_chunk, vocab).
#[allow(clippy::too_many_arguments)]
fn chunk_logp<B: Backend>(
    model: &LlamaModel<B>,
    s: &mut Session<B>,
    tokens: &[u32],
    ctx: usize,
    c: usize,
    path: EvalPath,
    out: &mut [f32],
    row: &mut [f64],
) -> Result<()> {
    let vocab = model.config.vocab_size;
    let chunk = &tokens[c * ctx..(c + 1) * ctx];
    // row r is position ctx/2 + r, which predicts token ctx/2 + r + 1
    let per = ctx - 1 - ctx / 2;
    let mut emit = |r: usize, logits: &[f32]| {
        log_softmax(logits, row);
        out[r * vocab..(r + 1) * vocab]
            .iter_mut()
            .zip(row.iter())
            .for_each(|(o, &v)| *o = v as f32);
    };
    s.reset();
    match path {
        EvalPath::Prefill => {
            let logits = model.forward(s, chunk, Logits::From(ctx / 2))?;
            for r in 0..per {
                emit(r, &logits[r * vocab..(r + 1) * vocab]);
            }
        }
        EvalPath::Decode => {
            model.forward(s, &chunk[..ctx / 2], Logits::Last)?;
            for r in 0..per {
                let logits =
                    model.forward(s, &chunk[ctx / 2 + r..ctx / 2 + r + 1], Logits::Last)?;
                emit(r, logits);
            }
        }
    }
    Ok(())
}

/// The text must hold `chunks` whole chunks of at least 4 tokens.
fn check_chunks(tokens: &[u32], ctx: usize, chunks: usize) -> Result<()> {
    if ctx < 4 || chunks == 0 || tokens.len() < chunks * ctx {
        return Err(Error::InvalidArgument(format!(
            "need {chunks} chunks of {ctx} tokens (at least 4), the text has {} tokens",
            tokens.len()
        )));
    }
    Ok(())
}

/// Baseline log-probabilities of `model` on the chunks, without scoring anything.
pub fn baseline<B: Backend>(
    model: &LlamaModel<B>,
    tokens: &[u32],
    ctx: usize,
    chunks: usize,
    progress: &(dyn Fn(usize, usize) + Sync),
) -> Result<Baseline> {
    let vocab = model.config.vocab_size;
    check_chunks(tokens, ctx, chunks)?;
    let per = ctx - 1 - ctx / 2;
    let mut b = Baseline::empty(ctx, vocab, tokens, chunks);
    let mut p = vec![0f32; per * vocab];
    let mut row = vec![0f64; vocab];
    let mut s = model.new_session(ctx, ctx, true)?;
    model.backend.run_on_workers(|| -> Result<()> {
        for c in 0..chunks {
            chunk_logp(
                model,
                &mut s,
                tokens,
                ctx,
                c,
                EvalPath::Prefill,
                &mut p,
                &mut row,
            )?;
            b.logp
                .extend(p.iter().map(|&v| f16::from_f32(v.max(-65000.0))));
            b.chunks = c + 1;
            progress(c + 1, chunks);
        }
        Ok(())
    })?;
    Ok(b)
}

/// Where `compare` takes the baseline from.
pub enum BaselineInput<'a, B: Backend> {
    /// Log-probabilities saved by an earlier run (`--load-baseline`).
    Saved(&'a Path),
    /// A model run alongside, its log-probabilities optionally saved (`--save-baseline`).
    Model {
        model: &'a LlamaModel<B>,
        save_to: Option<&'a Path>,
    },
}

/// `evaluate` with the baseline read from a file, or run and (if asked) saved to one.
pub fn compare<B: Backend>(
    model: &LlamaModel<B>,
    base: BaselineInput<'_, B>,
    tokens: &[u32],
    ctx: usize,
    chunks: usize,
    path: EvalPath,
    progress: &(dyn Fn(usize, usize) + Sync),
) -> Result<TokenScores> {
    match base {
        BaselineInput::Saved(f) => {
            let b = Baseline::load(f)?;
            evaluate(
                model,
                BaseSource::File(&b),
                tokens,
                ctx,
                chunks,
                path,
                None,
                progress,
            )
        }
        BaselineInput::Model { model: bm, save_to } => {
            let mut save =
                save_to.map(|_| Baseline::empty(ctx, model.config.vocab_size, tokens, chunks));
            let s = evaluate(
                model,
                BaseSource::Model(bm),
                tokens,
                ctx,
                chunks,
                path,
                save.as_mut(),
                progress,
            )?;
            if let (Some(f), Some(b)) = (save_to, save) {
                b.save(f)?;
            }
            Ok(s)
        }
    }
}

/// Where the baseline distribution comes from.
pub enum BaseSource<'a, B: Backend> {
    /// Run the baseline model chunk by chunk alongside the evaluated one.
    Model(&'a LlamaModel<B>),
    /// Log-probabilities saved by an earlier run.
    File(&'a Baseline),
}

/// Score `model` (through `path`) against the baseline (always prefilled) on `chunks` chunks
/// of `ctx` tokens. With a model baseline, `save` receives the baseline's log-probabilities
/// for `--save-baseline`.
#[allow(clippy::too_many_arguments)]
pub fn evaluate<B: Backend>(
    model: &LlamaModel<B>,
    base: BaseSource<'_, B>,
    tokens: &[u32],
    ctx: usize,
    chunks: usize,
    path: EvalPath,
    mut save: Option<&mut Baseline>,
    progress: &(dyn Fn(usize, usize) + Sync),
) -> Result<TokenScores> {
    let vocab = model.config.vocab_size;
    check_chunks(tokens, ctx, chunks)?;
    if let BaseSource::File(b) = &base {
        if b.vocab != vocab
            || b.ctx != ctx
            || b.chunks < chunks
            || b.tokens[..] != tokens[..b.tokens.len().min(tokens.len())]
        {
            return Err(Error::InvalidArgument(format!(
                "the saved baseline (ctx {}, {} chunks, vocab {}) does not match this evaluation (ctx {ctx}, {chunks} chunks, vocab {vocab}, same text)",
                b.ctx, b.chunks, b.vocab
            )));
        }
    }
    let per = ctx - 1 - ctx / 2;
    let mut p = vec![0f32; per * vocab]; // (per, vocab) baseline log-probs
    let mut q = vec![0f32; per * vocab]; // (per, vocab) model log-probs
    let mut row = vec![0f64; vocab];
    let mut out = TokenScores::default();
    let mut s = model.new_session(ctx, ctx, true)?;
    // the baseline model's own session, when it runs alongside
    let mut state = match base {
        BaseSource::Model(m) => (Some((m, m.new_session(ctx, ctx, true)?)), None),
        BaseSource::File(b) => (None, Some(b)),
    };
    model.backend.run_on_workers(|| -> Result<()> {
        for c in 0..chunks {
            if let Some((m, sb)) = state.0.as_mut() {
                chunk_logp(m, sb, tokens, ctx, c, EvalPath::Prefill, &mut p, &mut row)?;
                if let Some(sv) = save.as_deref_mut() {
                    sv.logp
                        .extend(p.iter().map(|&v| f16::from_f32(v.max(-65000.0))));
                    sv.chunks = c + 1;
                }
            }
            if let Some(b) = state.1 {
                let off = c * per * vocab;
                p.iter_mut()
                    .zip(&b.logp[off..off + per * vocab])
                    .for_each(|(p, v)| *p = v.to_f32());
            }
            chunk_logp(model, &mut s, tokens, ctx, c, path, &mut q, &mut row)?;
            for r in 0..per {
                let (pr, qr) = (
                    &p[r * vocab..(r + 1) * vocab],
                    &q[r * vocab..(r + 1) * vocab],
                );
                let next = tokens[c * ctx + ctx / 2 + r + 1] as usize;
                out.nll_base.push(-(pr[next] as f64));
                out.nll.push(-(qr[next] as f64));
                let kl: f64 = pr
                    .iter()
                    .zip(qr)
                    .map(|(&a, &b)| (a as f64).exp() * (a as f64 - b as f64))
                    .sum();
                out.kl.push(kl.max(0.0));
                out.same_top.push(argmax(pr) == argmax(qr));
            }
            progress(c + 1, chunks);
        }
        Ok(())
    })?;
    Ok(out)
}
