//! `Session`: the run state of one sequence (generate, eval, calibration, bench).
//!
//! - A `Workspace` plus a private KV cache of one block of max_seq positions: prefill and decode
//!   allocate nothing.
//! - It runs the scheduler's batched forward pass with a one-entry block table, so a prompt gives
//!   the same logits here and in the server.

use crate::backend::sampling::Draw;
use crate::backend::{Backend, KvSeq};
use crate::error::{Error, Result};
use crate::model::kv::KvCache;
use crate::model::llama::{ActivationHook, LlamaModel, Logits, Workspace};
use crate::quant::Phase;

/// The block table of a session's cache: one block of max_seq positions.
const ONE_BLOCK: [u32; 1] = [0];

/// Run state of one sequence: activations, KV cache, position.
pub struct Session<B: Backend> {
    pub max_batch: usize,
    pub max_seq: usize,
    /// Tokens already in the KV cache.
    pub pos: usize,
    all_logits: bool,
    ws: Workspace<B>,
    kv: KvCache<B>, // one block of (max_seq, kv_dim) per layer
}

impl<B: Backend> Session<B> {
    /// Forget the sequence (the cache is overwritten as new tokens arrive).
    pub fn reset(&mut self) {
        self.pos = 0;
    }

    /// The sequence of a forward call of `rows` tokens at the session's position.
    fn chunk_seq(&self, rows: usize) -> [KvSeq<'static>; 1] {
        [KvSeq {
            row0: 0,
            rows,
            start_pos: self.pos,
            blocks: &ONE_BLOCK,
        }]
    }
}

impl<B: Backend> LlamaModel<B> {
    /// Allocate the run state for sequences of up to `max_seq` tokens, fed at most `max_batch`
    /// tokens per forward call.
    pub fn new_session(
        &self,
        max_batch: usize,
        max_seq: usize,
        all_logits: bool,
    ) -> Result<Session<B>> {
        let logit_rows = if all_logits { max_batch } else { 1 };
        let ws = self.new_workspace(max_batch, max_seq, logit_rows)?;
        Ok(Session {
            max_batch,
            max_seq,
            pos: 0,
            all_logits,
            kv: self.kv_cache(1, max_seq)?,
            ws,
        })
    }

    /// Feed `tokens` at the session's position and return logits (`Logits::Last`: vocab;
    /// `Logits::All`: tokens.len() × vocab, which needs tokens.len() <= max_batch). Longer
    /// inputs are processed in chunks of max_batch.
    pub fn forward<'s>(
        &self,
        s: &'s mut Session<B>,
        tokens: &[u32],
        want: Logits,
    ) -> Result<&'s [f32]> {
        Self::check_room(s, tokens)?;
        let first = match want {
            Logits::Last => tokens.len() - 1,
            Logits::All => 0,
            Logits::From(k) => k,
        };
        if want != Logits::Last
            && (!s.all_logits || tokens.len() > s.max_batch || first >= tokens.len())
        {
            return Err(Error::InvalidArgument(format!(
                "logits of several tokens need a session made with all_logits, at most {} tokens and a start inside them",
                s.max_batch
            )));
        }
        let pick = (want != Logits::Last).then_some(first);
        let n = self.feed_head(s, tokens, pick)?;
        let n = self.read_logits(&mut s.ws, n)?;
        Ok(&s.ws.host_logits()[..n * self.config.vocab_size])
    }

    /// Feed `tokens` at the session's position and return the greedy next token (what
    /// `forward` + the sampler's argmax give), picked on the backend so that only the id, not
    /// the vocab-sized logits, crosses to the host.
    pub fn forward_greedy(&self, s: &mut Session<B>, tokens: &[u32]) -> Result<u32> {
        self.feed_last(s, tokens)?;
        let mut id = [0u32];
        self.greedy(&s.ws, &mut id)?;
        Ok(id[0])
    }

    /// Feed `tokens` at the session's position and return the next token drawn by `d` (what
    /// `forward` + `Sampler::sample` give for the same draw), on the backend: only the id
    /// crosses to the host.
    pub fn forward_sample(&self, s: &mut Session<B>, tokens: &[u32], d: &Draw<'_>) -> Result<u32> {
        self.feed_last(s, tokens)?;
        let mut id = [0u32];
        self.sample(&mut s.ws, std::slice::from_ref(d), &mut id)?;
        Ok(id[0])
    }

    /// Feed `tokens` with the last one's logits left in the backend's logits (row 0).
    fn feed_last(&self, s: &mut Session<B>, tokens: &[u32]) -> Result<()> {
        Self::check_room(s, tokens)?;
        match self.feed_head(s, tokens, None)? {
            1 => Ok(()),
            n => Err(Error::InvalidArgument(format!(
                "{n} rows of logits for one token"
            ))),
        }
    }

    /// `feed`, then the LM head on the rows it picks, into the backend's logits; returns how
    /// many rows. A decode token (one token after the prompt) is one replayable step of the
    /// blocks and the head (`Backend::replay_step`: a CUDA graph on the GPU), since its
    /// launches are the same every token.
    fn feed_head(&self, s: &mut Session<B>, tokens: &[u32], first: Option<usize>) -> Result<usize> {
        if Phase::of_chunk(tokens.len(), s.pos) != Phase::Decode {
            let (rows, ph) = self.feed(s, tokens, first)?;
            return self.lm_head_rows(&mut s.ws, std::slice::from_ref(&rows), ph);
        }
        self.check_tokens(tokens)?;
        let seq = s.chunk_seq(1);
        let last = 0..1;
        let n = self.rows_and_head(
            &mut s.ws,
            &mut s.kv,
            tokens,
            &seq,
            std::slice::from_ref(&last),
            Phase::Decode,
        )?;
        s.pos += 1;
        Ok(n)
    }

    /// A forward call needs at least one token and room for all of them in the session.
    fn check_room(s: &Session<B>, tokens: &[u32]) -> Result<()> {
        if tokens.is_empty() {
            return Err(Error::InvalidArgument(
                "forward needs at least one token".into(),
            ));
        }
        if s.pos + tokens.len() > s.max_seq {
            return Err(Error::ContextOverflow {
                needed: s.pos + tokens.len(),
                max: s.max_seq,
            });
        }
        Ok(())
    }

    /// Run `tokens` through the model in chunks of max_batch, advancing the position; returns
    /// the rows of the last chunk whose logits are wanted (from row `first`, or its last row)
    /// and that chunk's phase. The final residual stream stays in the workspace.
    fn feed(
        &self,
        s: &mut Session<B>,
        tokens: &[u32],
        first: Option<usize>,
    ) -> Result<(std::ops::Range<usize>, Phase)> {
        self.check_tokens(tokens)?;
        let mut last = (0..0, Phase::Prefill);
        for chunk in tokens.chunks(s.max_batch) {
            let ph = Phase::of_chunk(chunk.len(), s.pos);
            let seq = s.chunk_seq(chunk.len());
            self.forward_rows(&mut s.ws, &mut s.kv, chunk, &seq, ph, None)?;
            s.pos += chunk.len();
            last = (first.unwrap_or(chunk.len() - 1)..chunk.len(), ph);
        }
        Ok(last)
    }

    /// Feed `tokens` (prefill) and show every linear's input to `hook`; no logits.
    pub fn forward_observed(
        &self,
        s: &mut Session<B>,
        tokens: &[u32],
        hook: &mut dyn ActivationHook,
    ) -> Result<()> {
        if tokens.is_empty() || s.pos + tokens.len() > s.max_seq {
            return Err(Error::ContextOverflow {
                needed: s.pos + tokens.len(),
                max: s.max_seq,
            });
        }
        self.check_tokens(tokens)?;
        let c = &self.config;
        let width = c.hidden_size.max(c.q_dim()).max(c.intermediate_size);
        if s.ws.obs.len() < s.max_batch * width {
            s.ws.obs = vec![0f32; s.max_batch * width];
        }
        for chunk in tokens.chunks(s.max_batch) {
            let seq = s.chunk_seq(chunk.len());
            self.forward_rows(
                &mut s.ws,
                &mut s.kv,
                chunk,
                &seq,
                Phase::Prefill,
                Some(&mut *hook),
            )?;
            s.pos += chunk.len();
        }
        Ok(())
    }
}
