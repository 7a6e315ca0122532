//! The decoder, written once against the `Backend` trait for every architecture in
//! `checkpoint::arch` (HF `LlamaForCausalLM` and the families that vary its block).
//!
//! - RMSNorm blocks (pre-norms, post-norms or both, as the architecture declares), RoPE
//!   (rotate_half; scaled as `checkpoint::rope` says, a second table for Gemma 3's local
//!   layers), QK-norm per head or over all of q and k, grouped-query attention over a paged KV
//!   cache (sliding windows, score scale and soft-capping per config), SwiGLU or GeGLU MLP,
//!   biases where the config puts them, final norm and LM head (tied or not, int8 when the
//!   checkpoint asks; logits soft-capped for Gemma 2).
//! - Loading lives in `load.rs`.
//! - `Workspace` holds every activation buffer once for (max_batch, max_seq), so prefill and
//!   decode allocate nothing; `forward_batch` runs several sequences in one pass.

use crate::backend::fused::replay_span;
use crate::backend::linear::Linear;
use crate::backend::sampling::Draw;
use crate::backend::{AttentionArgs, Backend, KvSeq, LinearInput, RopeKvArgs, StepKey};
use crate::checkpoint::arch::{Mlp, QkNorm};
use crate::checkpoint::config::ModelConfig;
use crate::checkpoint::site::Site;
use crate::error::{Error, Result};
use crate::model::kv::KvCache;
use crate::quant::{ActQuant, Phase};
use crate::tensor::DType;
use std::sync::Arc;

/// One decoder block's weights; norms are (1 + w) already where the architecture says so.
pub(super) struct Layer<B: Backend> {
    /// (dim) before attention; None: q/k/v read the residual stream (OLMo 2)
    pub(super) attn_norm: Option<B::Buf>,
    pub(super) q: Linear<B>, // (q_dim, dim)
    pub(super) k: Linear<B>, // (kv_dim, dim)
    pub(super) v: Linear<B>, // (kv_dim, dim)
    pub(super) o: Linear<B>, // (dim, q_dim)
    /// QK-norm weights: (head_dim) each per head, or (q_dim), (kv_dim) over all of q and k
    pub(super) qk_norm: Option<(B::Buf, B::Buf)>,
    /// (dim) on the attention output (Gemma, OLMo 2)
    pub(super) post_attn_norm: Option<B::Buf>,
    /// (dim) before the MLP
    pub(super) mlp_norm: Option<B::Buf>,
    pub(super) gate: Linear<B>, // (ffn, dim)
    pub(super) up: Linear<B>,   // (ffn, dim)
    pub(super) down: Linear<B>, // (dim, ffn)
    /// (dim) on the MLP output (Gemma, OLMo 2)
    pub(super) post_mlp_norm: Option<B::Buf>,
}

pub struct LlamaModel<B: Backend> {
    pub config: ModelConfig,
    pub backend: B,
    /// Dtype the dense weights are held in.
    pub weight_dtype: DType,
    pub(super) embed: Arc<B::Matrix>, // (vocab, dim)
    pub(super) layers: Vec<Layer<B>>,
    pub(super) norm: B::Buf,       // (dim)
    pub(super) lm_head: Linear<B>, // (vocab, dim)
    /// Hadamard block applied to the final norm's output when the int8 LM head was built
    /// from rotated weights (`LmHead::Int8`).
    pub(super) lm_head_block: Option<usize>,
    /// Factor on the token embeddings (Gemma: √hidden_size in the embedding's dtype).
    pub(super) embed_scale: Option<f32>,
}

/// Receives every linear input during an observed forward pass: x is (rows, dim) on the host.
pub trait ActivationHook {
    fn observe(&mut self, layer: usize, site: Site, x: &[f32], rows: usize, dim: usize);
}

/// Which logits a forward pass returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Logits {
    /// The last token's (vocab).
    Last,
    /// Every token's (rows, vocab); the session must have been created with `all_logits`.
    All,
    /// The tokens from index k on ((rows − k), vocab), as `All` requires; the LM head runs on
    /// those rows only (perplexity scores the second half of a chunk).
    From(usize),
}

/// Activation buffers for forward passes of up to `max_rows` tokens (from one or several
/// sequences) over sequences of up to `max_seq` positions: llama2.c's RunState without the KV
/// cache, which lives in a [`KvCache`] so that sequences can share one block pool.
pub struct Workspace<B: Backend> {
    /// process-unique: names these buffers to a backend's graph cache
    pub(crate) id: u64,
    pub max_rows: usize,
    pub max_seq: usize,
    /// Rows of logits one call can return.
    pub logit_rows: usize,
    x: B::Buf,        // (max_rows, dim) residual stream
    xb: B::Buf,       // (max_rows, dim) a block's normalized input
    proj: B::Buf,     // (max_rows, dim) a block's output, added at the next norm
    q: B::Buf,        // (max_rows, q_dim)
    k: B::Buf,        // (max_rows, kv_dim)
    v: B::Buf,        // (max_rows, kv_dim)
    att: B::Buf,      // (max_rows, q_dim)
    hb: B::Buf,       // (max_rows, ffn)
    hb2: B::Buf,      // (max_rows, ffn)
    logits: B::Buf,   // (logit_rows, vocab)
    scratch: B::Buf,  // (n_heads, ATTN_ROWS * max_seq) attention scores
    rope_cos: B::Buf, // (max_seq, head_dim / 2)
    rope_sin: B::Buf, // (max_seq, head_dim / 2)
    /// cos, sin (max_seq, head_dim / 2) of the sliding layers' own RoPE (Gemma 3)
    rope_local: Option<(B::Buf, B::Buf)>,
    host_logits: Vec<f32>,    // (logit_rows, vocab)
    tokens: Vec<u32>,         // (max_rows) the batch's tokens, concatenated
    pub(crate) obs: Vec<f32>, // (max_rows, max width) host copy for observers; empty unless observed
}

impl<B: Backend> Workspace<B> {
    /// The logits the last call copied to the host.
    pub(crate) fn host_logits(&self) -> &[f32] {
        &self.host_logits
    }
}

/// The positions a step's attention is shaped for (`replay_span` of its longest sequence):
/// the same on every path, and part of a replayed step's key, since its launch shapes follow it.
fn attention_span(seqs: &[KvSeq<'_>], max_seq: usize) -> usize {
    let end = seqs.iter().map(|s| s.start_pos + s.rows).max().unwrap_or(1);
    replay_span(end, max_seq)
}

/// One sequence's share of a batched forward pass ([`LlamaModel::forward_batch`]).
#[derive(Clone, Copy, Debug)]
pub struct BatchEntry<'a> {
    /// New tokens, fed at positions start_pos ..
    pub tokens: &'a [u32],
    pub start_pos: usize,
    /// The sequence's block table in the [`KvCache`]; must cover start_pos + tokens.len().
    pub blocks: &'a [u32],
    /// Return the logits of its last token.
    pub want_logits: bool,
}

impl<B: Backend> LlamaModel<B> {
    /// A paged KV cache for this model: `n_blocks` blocks of `block_size` positions per layer.
    pub fn kv_cache(&self, n_blocks: usize, block_size: usize) -> Result<KvCache<B>> {
        KvCache::new(
            &self.backend,
            self.config.num_layers,
            self.config.kv_dim(),
            n_blocks,
            block_size,
        )
    }

    /// Every linear of the model (decoder layers in order, then the LM head).
    pub fn linears(&self) -> impl Iterator<Item = &Linear<B>> {
        self.layers
            .iter()
            .flat_map(|l| [&l.q, &l.k, &l.v, &l.o, &l.gate, &l.up, &l.down])
            .chain(std::iter::once(&self.lm_head))
    }

    /// Every linear, mutably, in `linears`' order.
    fn linears_mut(&mut self) -> impl Iterator<Item = &mut Linear<B>> {
        self.layers
            .iter_mut()
            .flat_map(|l| {
                [
                    &mut l.q,
                    &mut l.k,
                    &mut l.v,
                    &mut l.o,
                    &mut l.gate,
                    &mut l.up,
                    &mut l.down,
                ]
            })
            .chain(std::iter::once(&mut self.lm_head))
    }

    /// The linear called `name` (HF module name, or `lm_head`), to swap its weight.
    pub fn linear_mut(&mut self, name: &str) -> Option<&mut Linear<B>> {
        self.linears_mut().find(|l| l.name == name)
    }

    /// Override every quantized linear's activation scope (`--act-scope`). Returns (linears
    /// now in the scope, linears left per-token because the checkpoint has no static scale
    /// for their input). Per-token drops the static scales, so apply it to a fresh model.
    pub fn set_act_scope(&mut self, scope: crate::quant::ActScope) -> (usize, usize) {
        let (mut applied, mut kept) = (0, 0);
        for l in self.linears_mut() {
            if l.act.policy == ActQuant::None {
                continue;
            }
            let (p, as_asked) = scope.apply(l.act.policy);
            l.act.policy = p;
            if as_asked {
                applied += 1;
            } else {
                kept += 1;
            }
        }
        (applied, kept)
    }

    /// Whether any linear computes differently in prefill and decode (pd_mix, or a backend's
    /// prefill kernel: `Ops::phase_dependent`): such a model must not run prefill and decode
    /// rows in one forward call.
    pub fn phase_sensitive(&self) -> bool {
        self.linears().any(|l| self.backend.phase_dependent(l))
    }

    /// Allocate activation buffers for `max_rows` tokens per call over sequences of up to
    /// `max_seq` positions, returning up to `logit_rows` rows of logits per call.
    pub fn new_workspace(
        &self,
        max_rows: usize,
        max_seq: usize,
        logit_rows: usize,
    ) -> Result<Workspace<B>> {
        let c = &self.config;
        if max_rows == 0 || max_seq == 0 || logit_rows == 0 {
            return Err(Error::InvalidArgument(
                "max_batch, max_seq and logit rows must be positive".into(),
            ));
        }
        if max_seq > c.max_position_embeddings {
            return Err(Error::ContextOverflow {
                needed: max_seq,
                max: c.max_position_embeddings,
            });
        }
        let b = &self.backend;
        // The RoPE table covers the context this workspace serves, not the model's advertised
        // limit: a 128k-position model run at 2k holds 2k rows.
        let table = |inv_freq: &[f64], mscale: f64| -> Result<(B::Buf, B::Buf)> {
            let (mut cos, mut sin) = (
                Vec::with_capacity(max_seq * inv_freq.len()),
                Vec::with_capacity(max_seq * inv_freq.len()),
            );
            for p in 0..max_seq {
                for f in inv_freq {
                    let a = p as f64 * f;
                    cos.push((a.cos() * mscale) as f32);
                    sin.push((a.sin() * mscale) as f32);
                }
            }
            Ok((b.upload(&cos)?, b.upload(&sin)?))
        };
        let (rope_cos, rope_sin) = table(&c.rope_inv_freq(max_seq), c.rope_attention_factor())?;
        let rope_local = c
            .local_rope_tables(max_seq)
            .map(|(inv, m)| table(&inv, m))
            .transpose()?;
        Ok(Workspace {
            id: crate::backend::next_buffer_id(),
            max_rows,
            max_seq,
            logit_rows,
            x: b.alloc(max_rows * c.hidden_size)?,
            xb: b.alloc(max_rows * c.hidden_size)?,
            proj: b.alloc(max_rows * c.hidden_size)?,
            q: b.alloc(max_rows * c.q_dim())?,
            k: b.alloc(max_rows * c.kv_dim())?,
            v: b.alloc(max_rows * c.kv_dim())?,
            att: b.alloc(max_rows * c.q_dim())?,
            hb: b.alloc(max_rows * c.intermediate_size)?,
            hb2: b.alloc(max_rows * c.intermediate_size)?,
            logits: b.alloc(logit_rows * c.vocab_size)?,
            scratch: b.alloc(c.num_heads * crate::backend::ATTN_ROWS * max_seq)?,
            rope_cos,
            rope_sin,
            rope_local,
            host_logits: vec![0f32; logit_rows * c.vocab_size],
            tokens: Vec::with_capacity(max_rows),
            obs: Vec::new(),
        })
    }

    /// Check token ids against the vocabulary.
    pub(crate) fn check_tokens(&self, tokens: &[u32]) -> Result<()> {
        let vocab = self.config.vocab_size;
        match tokens.iter().find(|&&id| id as usize >= vocab) {
            Some(&id) => Err(Error::TokenOutOfRange { id, vocab }),
            None => Ok(()),
        }
    }

    /// One forward pass over several sequences at once (continuous batching): their new
    /// tokens are stacked into one batch for the linears, attention reads each sequence's own
    /// blocks of `kv`. Returns (entries with want_logits, vocab) logits in entry order. Every
    /// kernel is batch-invariant, so a sequence gets the same logits bit for bit whatever else
    /// is in the batch, as long as `ph` is the phase it would run in alone ([`Phase::of_chunk`]).
    pub fn forward_batch<'w>(
        &self,
        ws: &'w mut Workspace<B>,
        kv: &mut KvCache<B>,
        entries: &[BatchEntry<'_>],
        ph: Phase,
    ) -> Result<&'w [f32]> {
        let n = self.forward_batch_head(ws, kv, entries, ph)?;
        let n = self.read_logits(ws, n)?;
        Ok(&ws.host_logits[..n * self.config.vocab_size])
    }

    /// `forward_batch`, then out[i] = the token draws[i] picks for the i-th entry with
    /// want_logits, drawn on the backend (only the ids cross to the host).
    pub fn forward_batch_sample(
        &self,
        ws: &mut Workspace<B>,
        kv: &mut KvCache<B>,
        entries: &[BatchEntry<'_>],
        ph: Phase,
        draws: &[Draw<'_>],
        out: &mut [u32],
    ) -> Result<()> {
        let n = self.forward_batch_head(ws, kv, entries, ph)?;
        if n != draws.len() || n != out.len() {
            return Err(Error::InvalidArgument(format!(
                "{n} sequences want a token, {} draws and {} ids given",
                draws.len(),
                out.len()
            )));
        }
        self.sample(ws, draws, out)
    }

    /// The blocks on the entries' tokens and the LM head on the rows that want logits, into
    /// the backend's logits; returns how many rows.
    fn forward_batch_head(
        &self,
        ws: &mut Workspace<B>,
        kv: &mut KvCache<B>,
        entries: &[BatchEntry<'_>],
        ph: Phase,
    ) -> Result<usize> {
        let rows: usize = entries.iter().map(|e| e.tokens.len()).sum();
        let n_logits = entries.iter().filter(|e| e.want_logits).count();
        if rows == 0 || entries.iter().any(|e| e.tokens.is_empty()) {
            return Err(Error::InvalidArgument(
                "forward needs at least one token per sequence".into(),
            ));
        }
        if rows > ws.max_rows || n_logits > ws.logit_rows {
            return Err(Error::InvalidArgument(format!(
                "a batch of {rows} tokens and {n_logits} logit rows exceeds the workspace ({} tokens, {} logit rows)",
                ws.max_rows, ws.logit_rows
            )));
        }
        let mut seqs = Vec::with_capacity(entries.len());
        let mut picks = Vec::with_capacity(n_logits);
        ws.tokens.clear();
        for e in entries {
            self.check_tokens(e.tokens)?;
            let row0 = ws.tokens.len();
            ws.tokens.extend_from_slice(e.tokens);
            if e.want_logits {
                picks.push(row0 + e.tokens.len() - 1..row0 + e.tokens.len());
            }
            seqs.push(KvSeq {
                row0,
                rows: e.tokens.len(),
                start_pos: e.start_pos,
                blocks: e.blocks,
            });
        }
        let tokens = std::mem::take(&mut ws.tokens);
        let run = self.rows_and_head(ws, kv, &tokens, &seqs, &picks, ph);
        ws.tokens = tokens;
        run
    }

    /// `forward_rows`, then the LM head on the rows `picks`; returns how many rows of logits.
    /// A decode step whose every sequence feeds one token and wants its logits launches the
    /// same kernels every time, so it runs as a replayable step (`Backend::replay_step`: a
    /// CUDA graph on the GPU) keyed by the buffers and the batch size.
    pub(crate) fn rows_and_head(
        &self,
        ws: &mut Workspace<B>,
        kv: &mut KvCache<B>,
        tokens: &[u32],
        seqs: &[KvSeq<'_>],
        picks: &[std::ops::Range<usize>],
        ph: Phase,
    ) -> Result<usize> {
        let replayable = ph == Phase::Decode
            && seqs.iter().all(|s| s.rows == 1)
            && picks.len() == tokens.len()
            && picks.iter().enumerate().all(|(i, r)| *r == (i..i + 1));
        if !replayable {
            self.forward_rows(ws, kv, tokens, seqs, ph, None)?;
            return self.lm_head_rows(ws, picks, ph);
        }
        let key = StepKey {
            workspace: ws.id,
            kv: kv.id,
            rows: tokens.len(),
            span: attention_span(seqs, ws.max_seq),
        };
        let mut n = 0;
        self.backend.replay_step(key, &mut || {
            self.forward_rows(ws, kv, tokens, seqs, ph, None)?;
            n = self.lm_head_rows(ws, picks, ph)?;
            Ok(())
        })?;
        Ok(n)
    }

    /// Run all blocks on `tokens` (the sequences `seqs` stacked), leaving the final residual
    /// stream in `ws.x`. `hook` sees every linear input (calibration).
    pub(crate) fn forward_rows(
        &self,
        ws: &mut Workspace<B>,
        kv: &mut KvCache<B>,
        tokens: &[u32],
        seqs: &[KvSeq<'_>],
        ph: Phase,
        mut hook: Option<&mut dyn ActivationHook>,
    ) -> Result<()> {
        let (b, c) = (&self.backend, &self.config);
        let rows = tokens.len();
        for sq in seqs {
            sq.check(kv.block_size, kv.n_blocks, ws.max_seq, rows)?;
        }
        let (dim, hd, eps) = (c.hidden_size, c.head_dim, c.rms_norm_eps);
        let span = attention_span(seqs, ws.max_seq);
        // The linears of a site on the input `$input` makes, rotated if the model says so (the
        // consumers' weights were rotated to match). The backend may fuse producer, rotation
        // and the activation quantization the linears share. Under a hook (calibration) the
        // input is made in float first (`$buf`) and copied to the host, so calibration sees
        // exactly what the linears quantize.
        macro_rules! project {
            ($l:expr, $site:expr, $input:expr, $buf:ident, $dim:expr, [$(($out:ident, $w:expr)),+]) => {
                let rotate = c.hadamard.block($site);
                if let Some(h) = hook.as_deref_mut() {
                    b.project($input, rotate, &mut [], rows, $dim, ph)?;
                    let n = rows * $dim;
                    b.read(&ws.$buf, 0, &mut ws.obs[..n])?;
                    h.observe($l, $site, &ws.obs[..n], rows, $dim);
                    let outs = &mut [$((&mut ws.$out, $w)),+];
                    b.project(LinearInput::Ready(&mut ws.$buf), None, outs, rows, $dim, ph)?;
                } else {
                    let outs = &mut [$((&mut ws.$out, $w)),+];
                    b.project($input, rotate, outs, rows, $dim, ph)?;
                }
            };
        }
        b.embed(&mut ws.x, &self.embed, tokens)?;
        if let Some(s) = self.embed_scale {
            b.scale(&mut ws.x, rows * dim, s)?;
        }
        let spec = c.arch.spec();
        let (qd, kvd) = (c.q_dim(), c.kv_dim());
        // A block input: the previous block's output (in proj) joins the residual stream, which
        // is then normalized into xb — or, without a pre-norm (OLMo 2), copied there as it is.
        macro_rules! block_input {
            ($norm:expr, $add:expr) => {
                match $norm {
                    Some(weight) => LinearInput::Norm {
                        res: &mut ws.x,
                        add: $add.then_some(&ws.proj),
                        weight,
                        eps,
                        x: &mut ws.xb,
                    },
                    None => {
                        if $add {
                            b.add_assign(&mut ws.x, &ws.proj, rows * dim)?;
                        }
                        b.copy(&mut ws.xb, 0, &ws.x, 0, rows * dim)?;
                        LinearInput::Ready(&mut ws.xb)
                    }
                }
            };
        }
        // A post-norm (Gemma, OLMo 2) on a block's output in proj, before it joins the stream.
        macro_rules! post_norm {
            ($norm:expr) => {
                if let Some(w) = $norm {
                    b.rms_norm(&mut ws.xb, &ws.proj, w, rows, dim, eps)?;
                    b.copy(&mut ws.proj, 0, &ws.xb, 0, rows * dim)?;
                }
            };
        }
        for (l, layer) in self.layers.iter().enumerate() {
            let input = block_input!(&layer.attn_norm, l > 0);
            project!(
                l,
                Site::AttnIn,
                input,
                xb,
                dim,
                [(q, &layer.q), (k, &layer.k), (v, &layer.v)]
            );
            if let Some((qn, kn)) = &layer.qk_norm {
                // q and k normalized per head ((rows · heads, hd)) or over all of their
                // width; att is free until attention writes it and holds q_dim ≥ kv_dim per row
                let ((nq, wq), (nk, wk)) = match spec.qk_norm {
                    QkNorm::Full => ((rows, qd), (rows, kvd)),
                    _ => ((rows * c.num_heads, hd), (rows * c.num_kv_heads, hd)),
                };
                b.rms_norm(&mut ws.att, &ws.q, qn, nq, wq, eps)?;
                b.copy(&mut ws.q, 0, &ws.att, 0, rows * qd)?;
                b.rms_norm(&mut ws.att, &ws.k, kn, nk, wk, eps)?;
                b.copy(&mut ws.k, 0, &ws.att, 0, rows * kvd)?;
            }
            let (cos, sin) = match &ws.rope_local {
                Some((cos, sin)) if c.local_rope_at(l) => (cos, sin),
                _ => (&ws.rope_cos, &ws.rope_sin),
            };
            b.rope_write_kv(RopeKvArgs {
                q: &mut ws.q,
                k: &mut ws.k,
                v: &ws.v,
                k_cache: &mut kv.k[l],
                v_cache: &mut kv.v[l],
                cos,
                sin,
                seqs,
                block_size: kv.block_size,
                n_heads: c.num_heads,
                n_kv_heads: c.num_kv_heads,
                head_dim: hd,
            })?;
            b.attention(AttentionArgs {
                out: &mut ws.att,
                q: &ws.q,
                k_cache: &kv.k[l],
                v_cache: &kv.v[l],
                scratch: &mut ws.scratch,
                seqs,
                block_size: kv.block_size,
                max_seq: span,
                n_heads: c.num_heads,
                n_kv_heads: c.num_kv_heads,
                head_dim: hd,
                window: c.window(l),
                scale: c.attn_scale(),
                softcap: c.attn_softcap.map(|v| v as f32),
            })?;
            let att = LinearInput::Ready(&mut ws.att);
            project!(l, Site::OIn, att, att, qd, [(proj, &layer.o)]);
            post_norm!(&layer.post_attn_norm);
            // MLP block
            let input = block_input!(&layer.mlp_norm, true);
            project!(
                l,
                Site::MlpIn,
                input,
                xb,
                dim,
                [(hb, &layer.gate), (hb2, &layer.up)]
            );
            let act = match spec.mlp {
                Mlp::SwiGlu => LinearInput::SiluMul {
                    gate: &mut ws.hb,
                    up: &ws.hb2,
                },
                Mlp::GeGlu => LinearInput::GeluMul {
                    gate: &mut ws.hb,
                    up: &ws.hb2,
                },
            };
            project!(
                l,
                Site::DownIn,
                act,
                hb,
                c.intermediate_size,
                [(proj, &layer.down)]
            );
            post_norm!(&layer.post_mlp_norm);
        }
        if !self.layers.is_empty() {
            b.add_assign(&mut ws.x, &ws.proj, rows * dim)?;
        }
        Ok(())
    }

    /// Copy the first `n` rows of the backend's logits to `ws.host_logits`; returns n.
    pub(crate) fn read_logits(&self, ws: &mut Workspace<B>, n: usize) -> Result<usize> {
        let vocab = self.config.vocab_size;
        if n > 0 {
            self.backend
                .read(&ws.logits, 0, &mut ws.host_logits[..n * vocab])?;
        }
        Ok(n)
    }

    /// out[r] = the token draws[r] picks from row r of the backend's logits, on the backend.
    pub(crate) fn sample(
        &self,
        ws: &mut Workspace<B>,
        draws: &[Draw<'_>],
        out: &mut [u32],
    ) -> Result<()> {
        self.backend
            .sample_rows(&mut ws.logits, self.config.vocab_size, draws, out)
    }

    /// The greedy next token of each of the first out.len() rows of the backend's logits,
    /// chosen on the backend: only the ids cross to the host.
    pub(crate) fn greedy(&self, ws: &Workspace<B>, out: &mut [u32]) -> Result<()> {
        self.backend
            .argmax_rows(&ws.logits, self.config.vocab_size, out)
    }

    /// Final norm + LM head on the rows `picks` of the last forward (in order) into
    /// `ws.logits` on the backend: returns how many rows it holds.
    pub(crate) fn lm_head_rows(
        &self,
        ws: &mut Workspace<B>,
        picks: &[std::ops::Range<usize>],
        ph: Phase,
    ) -> Result<usize> {
        let (b, c) = (&self.backend, &self.config);
        let dim = c.hidden_size;
        // Normalise only the rows whose logits are wanted: move them to the front of xb.
        let mut n = 0;
        for r in picks {
            b.copy(&mut ws.xb, n * dim, &ws.x, r.start * dim, r.len() * dim)?;
            n += r.len();
        }
        if n == 0 {
            return Ok(0);
        }
        let norm = LinearInput::Norm {
            res: &mut ws.xb,
            add: None,
            weight: &self.norm,
            eps: c.rms_norm_eps,
            x: &mut ws.x,
        };
        let head = &mut [(&mut ws.logits, &self.lm_head)];
        b.project(norm, self.lm_head_block, head, n, dim, ph)?;
        if let Some(cap) = c.final_softcap {
            b.softcap(&mut ws.logits, n * c.vocab_size, cap as f32)?;
        }
        Ok(n)
    }
}
