//! Continuous batching (iteration-level scheduling: Orca, OSDI 2022; vLLM's scheduler).
//!
//! - Between two forward steps new requests join the running batch and finished ones leave it.
//! - A step feeds each decoding sequence its token and each prefilling one its next prompt chunk
//!   (`generate`'s chunks), in one `forward_batch` — two for pd_mix models, whose prefill and
//!   decode rows take different activation scales.
//! - KV memory comes block by block from a shared pool; when it runs out the newest sequence is
//!   preempted and later recomputed from its tokens (vLLM's recompute preemption).
//! - Every kernel is batch-invariant and chunks and phases equal `generate`'s, so a request's
//!   greedy output is the same alone or batched.

use crate::backend::Backend;
use crate::engine::metrics::{Metrics, Outcome};
use crate::engine::sampler::{Draw, Sampler, SamplingParams};
use crate::error::{Error, Result};
use crate::model::kv::{BlockAllocator, KvCache};
use crate::model::llama::{BatchEntry, LlamaModel, Workspace};
use crate::quant::Phase;
use crate::tokenizer::{TextStream, TokenizerBundle};
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::mpsc::UnboundedSender;

/// Prompt tokens per forward call, as in `generate` (`GenerateOptions::max_batch`).
pub const PREFILL_CHUNK: usize = 512;

#[derive(Clone, Debug)]
pub struct SchedulerConfig {
    /// Sequences in the running batch at most.
    pub max_batch: usize,
    /// Positions per sequence (prompt + generated) at most.
    pub max_seq_len: usize,
    /// Positions the shared KV pool holds (rounded up to whole blocks).
    pub kv_cache_tokens: usize,
    /// Positions per KV block.
    pub block_size: usize,
    /// Prompt tokens per sequence per step.
    pub prefill_chunk: usize,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            max_batch: 32,
            max_seq_len: 2048,
            kv_cache_tokens: 32 * 1024,
            block_size: 16,
            prefill_chunk: PREFILL_CHUNK,
        }
    }
}

/// Whether a request of `prompt_tokens` and `max_tokens` fits a context of `max_seq_len`:
/// the error names the limit it breaks.
pub fn check_lengths(max_seq_len: usize, prompt_tokens: usize, max_tokens: usize) -> Result<()> {
    if prompt_tokens == 0 {
        return Err(Error::InvalidArgument(
            "the prompt encodes to no tokens".into(),
        ));
    }
    // saturating: a client's max_tokens of 2^64 − 1 must be "too long", not wrap to small
    let needed = prompt_tokens.saturating_add(max_tokens);
    if needed > max_seq_len {
        return Err(Error::InvalidArgument(format!(
            "this server's context limit (--max-seq-len) is {max_seq_len} tokens, but the request needs {} ({prompt_tokens} in the prompt, {max_tokens} to generate)",
            needed
        )));
    }
    Ok(())
}

/// What a request hears back, in order: text pieces, then one `Done` (or `Failed`).
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// New text (complete characters, never the start of a stop string).
    Text(String),
    Done(Finish),
    Failed(String),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FinishReason {
    /// End of sequence or a stop string.
    Stop,
    /// max_tokens or the context limit.
    Length,
    /// Shutdown cancelled it.
    Cancelled,
}

impl FinishReason {
    /// OpenAI's `finish_reason`.
    pub fn openai(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
            FinishReason::Cancelled => "abort",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Finish {
    pub reason: FinishReason,
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
}

/// A generation request, already tokenized and checked by [`Scheduler::check`].
#[derive(Debug)]
pub struct Request {
    pub prompt: Vec<u32>,
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    /// Stop strings: the text ends before the first one generated.
    pub stop: Vec<String>,
    pub stop_at_eos: bool,
    pub events: UnboundedSender<Event>,
    pub arrived: Instant,
}

/// A request inside the scheduler.
struct Seq {
    req: Request,
    /// Prompt then generated tokens; the last one may not be in the cache yet.
    tokens: Vec<u32>,
    /// Tokens whose keys and values are in the cache.
    cached: usize,
    blocks: Vec<u32>,
    sampler: Sampler,
    generated: usize,
    /// The completion detokenized incrementally (whole characters only).
    stream: TextStream,
    /// Bytes of the stream's text sent so far (the text only grows, so this prefix is fixed).
    sent: usize,
    last_token: Option<Instant>,
    /// `Done` (or `Failed`) was sent.
    done: bool,
}

/// One sequence's part of a step.
#[derive(Clone, Copy)]
struct Planned {
    seq: usize,
    start: usize,
    end: usize,
}

/// The continuous-batching scheduler. `submit` queues, `step` runs one forward pass over the
/// running batch; the serving thread alternates them.
pub struct Scheduler<B: Backend> {
    model: Arc<LlamaModel<B>>,
    tok: Arc<TokenizerBundle>,
    cfg: SchedulerConfig,
    ws: Workspace<B>,
    kv: KvCache<B>,
    alloc: BlockAllocator,
    waiting: VecDeque<Seq>,
    running: Vec<Seq>,
    metrics: Arc<Metrics>,
    phase_sensitive: bool,
}

impl<B: Backend> Scheduler<B> {
    pub fn new(
        model: Arc<LlamaModel<B>>,
        tok: Arc<TokenizerBundle>,
        cfg: SchedulerConfig,
        metrics: Arc<Metrics>,
    ) -> Result<Self> {
        if cfg.max_batch == 0 || cfg.prefill_chunk == 0 || cfg.block_size == 0 {
            return Err(Error::InvalidArgument(
                "max batch, prefill chunk and block size must be positive".into(),
            ));
        }
        let n_blocks = cfg.kv_cache_tokens.div_ceil(cfg.block_size);
        if n_blocks * cfg.block_size < cfg.max_seq_len {
            return Err(Error::InvalidArgument(format!(
                "a KV cache of {} tokens cannot hold one sequence of max_seq_len {}",
                cfg.kv_cache_tokens, cfg.max_seq_len
            )));
        }
        let ws = model.new_workspace(
            cfg.prefill_chunk + cfg.max_batch,
            cfg.max_seq_len,
            cfg.max_batch,
        )?;
        let kv = model.kv_cache(n_blocks, cfg.block_size)?;
        metrics.set_state(0, 0, 0, n_blocks);
        Ok(Scheduler {
            phase_sensitive: model.phase_sensitive(),
            alloc: BlockAllocator::new(n_blocks, cfg.block_size),
            model,
            tok,
            cfg,
            ws,
            kv,
            waiting: VecDeque::new(),
            running: Vec::new(),
            metrics,
        })
    }

    pub fn config(&self) -> &SchedulerConfig {
        &self.cfg
    }
    pub fn kv_bytes(&self) -> usize {
        self.kv.bytes()
    }

    /// Whether a request of `prompt_tokens` and `max_tokens` can ever run here.
    pub fn check(&self, prompt_tokens: usize, max_tokens: usize) -> Result<()> {
        check_lengths(self.cfg.max_seq_len, prompt_tokens, max_tokens)
    }

    /// Queue a request (checked with [`Scheduler::check`]; an unchecked one fails here).
    pub fn submit(&mut self, req: Request) {
        if let Err(e) = self.check(req.prompt.len(), req.max_tokens) {
            let _ = req.events.send(Event::Failed(e.to_string()));
            self.metrics.count(Outcome::BadRequest);
            return;
        }
        let sampler = Sampler::new(req.sampling.clone(), self.model.config.vocab_size);
        self.waiting.push_back(Seq {
            tokens: req.prompt.clone(),
            req,
            cached: 0,
            blocks: Vec::new(),
            sampler,
            generated: 0,
            stream: TextStream::new(),
            sent: 0,
            last_token: None,
            done: false,
        });
        self.metrics
            .add_tokens(self.waiting.back().map_or(0, |s| s.req.prompt.len()), 0);
        self.publish();
    }

    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }
    pub fn running(&self) -> usize {
        self.running.len()
    }
    pub fn is_idle(&self) -> bool {
        self.waiting.is_empty() && self.running.is_empty()
    }
    pub fn kv_blocks_used(&self) -> usize {
        self.alloc.used()
    }

    fn publish(&self) {
        self.metrics.set_state(
            self.waiting.len(),
            self.running.len(),
            self.alloc.used(),
            self.alloc.total(),
        );
    }

    /// End every request now (shutdown): each hears `Done` with reason Cancelled.
    pub fn cancel_all(&mut self) {
        let event = |s: &Seq| {
            Event::Done(Finish {
                reason: FinishReason::Cancelled,
                prompt_tokens: s.req.prompt.len(),
                completion_tokens: s.generated,
            })
        };
        self.end_all(event, Some(Outcome::Cancelled));
    }

    /// End every request with an error (a forward step failed).
    pub fn fail_all(&mut self, msg: &str) {
        self.end_all(|_| Event::Failed(msg.to_string()), None);
    }

    /// Release every request's blocks, send each its last event, count it under `outcome`.
    fn end_all(&mut self, event: impl Fn(&Seq) -> Event, outcome: Option<Outcome>) {
        for mut s in self.running.drain(..).chain(self.waiting.drain(..)) {
            self.alloc.release(&mut s.blocks);
            let _ = s.req.events.send(event(&s));
            if let Some(o) = outcome {
                self.metrics.count(o);
            }
        }
        self.publish();
    }

    /// Drop finished requests (their `Done` was sent) and abandoned ones (the client went
    /// away: counted as cancelled), freeing their blocks. Runs before a step, so an abandoned
    /// request costs no more compute, and after it, so finished ones leave at once.
    fn release_ended(&mut self) {
        let (alloc, metrics) = (&mut self.alloc, &self.metrics);
        let mut keep = |s: &mut Seq| {
            if !s.done && !s.req.events.is_closed() {
                return true;
            }
            if !s.done {
                metrics.count(Outcome::Cancelled);
            }
            alloc.release(&mut s.blocks);
            false
        };
        self.running.retain_mut(&mut keep);
        self.waiting.retain_mut(keep);
    }

    /// Move waiting requests into the batch while there is room and memory for their first
    /// chunk.
    fn admit(&mut self) {
        while self.running.len() < self.cfg.max_batch {
            let Some(mut s) = self.waiting.pop_front() else {
                break;
            };
            let first = s.tokens.len().min(self.cfg.prefill_chunk);
            if !self.alloc.grow(&mut s.blocks, first) {
                self.waiting.push_front(s);
                break;
            }
            self.running.push(s);
        }
    }

    /// Free the newest running sequence's blocks and put it back at the head of the queue.
    fn preempt_newest(&mut self) -> Option<usize> {
        let mut s = self.running.pop()?;
        self.alloc.release(&mut s.blocks);
        s.cached = 0;
        self.waiting.push_front(s);
        self.metrics.count_preemption();
        Some(self.running.len())
    }

    /// Which tokens each running sequence feeds this step: decoders first, then prompt chunks
    /// while the workspace has rows; blocks are taken here (preempting if the pool is dry).
    fn plan(&mut self) -> Vec<Planned> {
        let mut plan = Vec::with_capacity(self.running.len());
        let mut rows = 0;
        let chunk = self.cfg.prefill_chunk;
        let decoding = |s: &Seq| s.tokens.len() - s.cached == 1;
        for pass_decoders in [true, false] {
            let mut i = 0;
            while i < self.running.len() {
                let s = &self.running[i];
                if decoding(s) != pass_decoders {
                    i += 1;
                    continue;
                }
                let (start, end) = (s.cached, s.tokens.len().min(s.cached + chunk));
                if rows + end - start > self.ws.max_rows {
                    break;
                }
                if !self.alloc.grow(&mut self.running[i].blocks, end) {
                    // the newest sequence gives its blocks back; if that was this one, it is
                    // gone from the batch, otherwise retry it
                    match self.preempt_newest() {
                        Some(n) if n > i => continue,
                        _ => break,
                    }
                }
                plan.push(Planned { seq: i, start, end });
                rows += end - start;
                i += 1;
            }
        }
        // a preemption may have removed sequences planned earlier in the decoder pass
        plan.retain(|p| p.seq < self.running.len());
        plan
    }

    /// One forward step over the running batch. Returns false when there was nothing to do.
    pub fn step(&mut self) -> Result<bool> {
        self.release_ended();
        self.admit();
        let plan = self.plan();
        if plan.is_empty() {
            self.publish();
            return Ok(false);
        }
        self.metrics.observe_batch(plan.len());
        let groups: Vec<Vec<Planned>> = if self.phase_sensitive {
            let of = |p: &Planned| Phase::of_chunk(p.end - p.start, p.start);
            [Phase::Decode, Phase::Prefill]
                .iter()
                .map(|ph| plan.iter().copied().filter(|p| of(p) == *ph).collect())
                .filter(|g: &Vec<Planned>| !g.is_empty())
                .collect()
        } else {
            vec![plan]
        };
        for group in groups {
            self.run_group(&group)?;
        }
        self.release_ended();
        self.publish();
        Ok(true)
    }

    fn run_group(&mut self, group: &[Planned]) -> Result<()> {
        let ph = Phase::of_chunk(group[0].end - group[0].start, group[0].start);
        // each sequence that reaches its end takes its next uniform and penalized ids now, so
        // the backend draws every token where the logits are (only ids come back)
        let wants = |p: &Planned, s: &Seq| p.end == s.tokens.len();
        for p in group {
            let s = &mut self.running[p.seq];
            if wants(p, s) {
                s.sampler.prepare(&s.tokens);
            }
        }
        let draws: Vec<Draw<'_>> = group
            .iter()
            .map(|p| (p, &self.running[p.seq]))
            .filter(|(p, s)| wants(p, s))
            .map(|(_, s)| s.sampler.current())
            .collect();
        let entries: Vec<BatchEntry<'_>> = group
            .iter()
            .map(|p| {
                let s = &self.running[p.seq];
                BatchEntry {
                    tokens: &s.tokens[p.start..p.end],
                    start_pos: p.start,
                    blocks: &s.blocks,
                    want_logits: wants(p, s),
                }
            })
            .collect();
        let mut ids = vec![0u32; draws.len()];
        let model = &self.model;
        let (ws, kv) = (&mut self.ws, &mut self.kv);
        let out = &mut ids;
        model.backend.run_on_workers(move || {
            model.forward_batch_sample(ws, kv, &entries, ph, &draws, out)
        })?;
        let mut next = ids.into_iter();
        for p in group {
            let s = &mut self.running[p.seq];
            s.cached = p.end;
            if wants(p, s) {
                let id = next.next().ok_or_else(|| {
                    Error::InvalidArgument("fewer sampled ids than sequences".into())
                })?;
                accept(s, id, &self.tok, &self.cfg, &self.metrics);
            }
        }
        Ok(())
    }
}

/// Take the token sampled for `s`: end on EOS, a stop string or the length limit, otherwise
/// stream the new text that is whole characters and cannot be the start of a stop string.
fn accept(s: &mut Seq, next: u32, tok: &TokenizerBundle, cfg: &SchedulerConfig, metrics: &Metrics) {
    let now = Instant::now();
    match s.last_token {
        None => metrics.observe_ttft((now - s.req.arrived).as_secs_f64()),
        Some(t) => metrics.observe_itl((now - t).as_secs_f64()),
    }
    s.last_token = Some(now);
    if s.req.stop_at_eos && tok.eos_ids.contains(&next) {
        return s.finish(FinishReason::Stop, metrics);
    }
    s.tokens.push(next);
    s.generated += 1;
    metrics.add_tokens(0, 1);
    let limit = s.generated >= s.req.max_tokens || s.tokens.len() >= cfg.max_seq_len;
    let completion = &s.tokens[s.req.prompt.len()..];
    let advanced = if limit {
        s.stream.finish(tok, completion)
    } else {
        s.stream.push(tok, completion)
    };
    if let Err(e) = advanced {
        let _ = s.req.events.send(Event::Failed(e.to_string()));
        s.done = true;
        return;
    }
    // whole characters only, so a stop string found here is final; the search starts where
    // a stop string overlapping the unsent tail could begin
    let text = s.stream.text();
    let longest = s.req.stop.iter().map(String::len).max().unwrap_or(0);
    let mut from = s.sent.saturating_sub(longest);
    while !text.is_char_boundary(from) {
        from -= 1;
    }
    let cut = s
        .req
        .stop
        .iter()
        .filter_map(|st| text[from..].find(st.as_str()).map(|i| from + i))
        .min();
    let (all, clear) = (text.len(), text.len() - held_back(text, &s.req.stop));
    if let Some(cut) = cut {
        s.send_upto(cut);
        return s.finish(FinishReason::Stop, metrics);
    }
    s.send_upto(if limit { all } else { clear });
    if limit {
        s.finish(FinishReason::Length, metrics);
    }
}

/// Bytes at the end of `text` that could begin a stop string (held back until it is clear).
fn held_back(text: &str, stop: &[String]) -> usize {
    let mut hold = 0;
    for st in stop {
        for (i, _) in st.char_indices().skip(1) {
            if i > hold && text.ends_with(&st[..i]) {
                hold = i;
            }
        }
    }
    hold
}

impl Seq {
    /// Send the stream's text from what was sent up to byte `end` (nothing if `end` is not
    /// past it).
    fn send_upto(&mut self, end: usize) {
        if end > self.sent {
            let piece = self.stream.text()[self.sent..end].to_string();
            let _ = self.req.events.send(Event::Text(piece));
            self.sent = end;
        }
    }

    fn finish(&mut self, reason: FinishReason, metrics: &Metrics) {
        let _ = self.req.events.send(Event::Done(Finish {
            reason,
            prompt_tokens: self.req.prompt.len(),
            completion_tokens: self.generated,
        }));
        metrics.count(Outcome::Finished);
        self.done = true;
    }
}
