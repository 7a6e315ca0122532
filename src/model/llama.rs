//! The Llama-family decoder, written once against the `Backend` trait (HF `LlamaForCausalLM`).
//!
//! - Pre-RMSNorm blocks, RoPE (rotate_half; scaled as `checkpoint::rope` says), QK-norm where
//!   the family has it (Qwen3), grouped-query attention over a paged KV cache (a sliding window
//!   on the layers the config marks), SwiGLU MLP, biases where the config puts them, final norm
//!   and LM head (tied or not, int8 when the checkpoint asks).
//! - `Workspace` holds every activation buffer once for (max_batch, max_seq), so prefill and
//!   decode allocate nothing; `forward_batch` runs several sequences in one pass.

use crate::backend::fused::replay_span;
use crate::backend::linear::{Linear, LinearWeight};
use crate::backend::sampling::Draw;
use crate::backend::{AttentionArgs, Backend, KvSeq, LinearInput, RopeKvArgs, StepKey};
use crate::checkpoint::config::{LmHead, ModelConfig};
use crate::checkpoint::site::{layer_module, Site};
use crate::checkpoint::WeightSource;
use crate::error::{Error, Result};
use crate::model::kv::KvCache;
use crate::quant::hadamard;
use crate::quant::weight::{quantize_weight, WeightMethod, WeightQConfig, WeightScope};
use crate::quant::{ActQuant, ActSpec, Phase, QDType};
use crate::tensor::{DType, HostTensor};
use std::sync::Arc;

struct Layer<B: Backend> {
    attn_norm: B::Buf, // (dim)
    q: Linear<B>,      // (q_dim, dim)
    k: Linear<B>,      // (kv_dim, dim)
    v: Linear<B>,      // (kv_dim, dim)
    o: Linear<B>,      // (dim, q_dim)
    /// QK-norm weights (head_dim each; Qwen3)
    qk_norm: Option<(B::Buf, B::Buf)>,
    mlp_norm: B::Buf, // (dim)
    gate: Linear<B>,  // (ffn, dim)
    up: Linear<B>,    // (ffn, dim)
    down: Linear<B>,  // (dim, ffn)
}

pub struct LlamaModel<B: Backend> {
    pub config: ModelConfig,
    pub backend: B,
    /// Dtype the dense weights are held in.
    pub weight_dtype: DType,
    embed: Arc<B::Matrix>, // (vocab, dim)
    layers: Vec<Layer<B>>,
    norm: B::Buf,       // (dim)
    lm_head: Linear<B>, // (vocab, dim)
    /// Hadamard block applied to the final norm's output when the int8 LM head was built
    /// from rotated weights (`LmHead::Int8`).
    lm_head_block: Option<usize>,
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
    x: B::Buf,                // (max_rows, dim) residual stream
    xb: B::Buf,               // (max_rows, dim) a block's normalized input
    proj: B::Buf,             // (max_rows, dim) a block's output, added at the next norm
    q: B::Buf,                // (max_rows, q_dim)
    k: B::Buf,                // (max_rows, kv_dim)
    v: B::Buf,                // (max_rows, kv_dim)
    att: B::Buf,              // (max_rows, q_dim)
    hb: B::Buf,               // (max_rows, ffn)
    hb2: B::Buf,              // (max_rows, ffn)
    logits: B::Buf,           // (logit_rows, vocab)
    scratch: B::Buf,          // (n_heads, ATTN_ROWS * max_seq) attention scores
    rope_cos: B::Buf,         // (max_seq, head_dim / 2)
    rope_sin: B::Buf,         // (max_seq, head_dim / 2)
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

fn load_checked(src: &dyn WeightSource, name: &str, shape: &[usize]) -> Result<HostTensor> {
    let t = src.load(name)?;
    t.expect_shape(name, shape)?;
    Ok(t)
}

/// The LM head in int8 from its float weight `t` (vocab, dim): per-channel symmetric weights
/// of W·H and a per-token int8 input rotated by the same block Hadamard H (returned, for
/// `logits` to apply). QuaRot-style: unrotated, per-token int8 of the final norm's output cost
/// 0.0064 mean KL on wikitext-2 (40 chunks, w8a8 model; 0.0022 with a float head); rotated
/// 0.0031 (10 chunks; weight-only int8: 0.0028).
fn int8_lm_head<B: Backend>(
    backend: &B,
    t: &HostTensor,
    vocab: usize,
    dim: usize,
) -> Result<(Linear<B>, Option<usize>)> {
    let mut wf = t.to_f32_vec(); // (vocab, dim)
    let block = hadamard::block_for(dim);
    if let Some(b) = block {
        hadamard::fwht(&mut wf, b);
    }
    let cfg = WeightQConfig {
        dtype: QDType::Int8,
        scope: WeightScope::PerChannel,
        symmetric: true,
        method: WeightMethod::MinMax,
    };
    let q = quantize_weight(&wf, vocab, dim, &cfg)?;
    let head = Linear {
        name: "lm_head".into(),
        in_features: dim,
        out_features: vocab,
        weight: LinearWeight::Quant(backend.upload_quant(&q, vocab, dim)?),
        bias: None,
        // per-token asymmetric: the final norm's output is not centred
        act: ActSpec {
            policy: ActQuant::Dynamic,
            dtype: QDType::Int8,
            symmetric: false,
        },
    };
    Ok((head, block))
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

    /// Build the model from `src` (HF tensor names). `weight_dtype` None keeps each tensor's
    /// checkpoint dtype for the embedding's dtype and all matrices.
    pub fn load(
        backend: B,
        config: ModelConfig,
        src: &dyn WeightSource,
        weight_dtype: Option<DType>,
    ) -> Result<Self> {
        let c = &config;
        if let Some(h) = src.online_hadamard() {
            if h != c.hadamard {
                return Err(Error::Config(format!(
                    "the weights were made for online Hadamard rotation {:?} but the config asks for {:?}",
                    h.sites(),
                    c.hadamard.sites()
                )));
            }
        }
        for (site, block) in c.hadamard.sites() {
            if !c.site_dim(site).is_multiple_of(block) {
                return Err(Error::Config(format!(
                    "hadamard block {block} does not divide {} ({} channels)",
                    site.name(),
                    c.site_dim(site)
                )));
            }
        }
        // a checkpoint with more layers than the config says would run truncated without a word
        if let Some(extra) = src
            .tensor_names()
            .into_iter()
            .find(|n| layer_module(n).is_some_and(|(l, _)| l >= c.num_layers))
        {
            return Err(Error::Config(format!(
                "the checkpoint has tensor `{extra}` but the config says {} layers",
                c.num_layers
            )));
        }
        let (dim, qd, kvd, ffn) = (c.hidden_size, c.q_dim(), c.kv_dim(), c.intermediate_size);
        let embed_t = load_checked(src, "model.embed_tokens.weight", &[c.vocab_size, dim])?;
        let wdt = weight_dtype.unwrap_or(embed_t.dtype());
        let vector = |name: &str, n: usize| -> Result<B::Buf> {
            backend.upload(&load_checked(src, name, &[n])?.to_f32_vec())
        };
        let linear = |name: &str, out_f: usize, in_f: usize, bias: bool| -> Result<Linear<B>> {
            let bias = if bias {
                Some(vector(&format!("{name}.bias"), out_f)?)
            } else {
                None
            };
            let (weight, act) = match src.quant_linear(name)? {
                Some((q, act)) => {
                    let up = backend
                        .upload_quant(&q, out_f, in_f)
                        .map_err(|e| Error::Config(format!("{name}: {e}")))?;
                    (LinearWeight::Quant(up), act)
                }
                None => {
                    let w = load_checked(src, &format!("{name}.weight"), &[out_f, in_f])?;
                    (
                        LinearWeight::Dense(Arc::new(backend.upload_matrix(&w, wdt)?)),
                        ActSpec::NONE,
                    )
                }
            };
            Ok(Linear {
                name: name.to_string(),
                in_features: in_f,
                out_features: out_f,
                weight,
                bias,
                act,
            })
        };
        let mut layers = Vec::with_capacity(c.num_layers);
        for l in 0..c.num_layers {
            let p = format!("model.layers.{l}");
            layers.push(Layer {
                attn_norm: vector(&format!("{p}.input_layernorm.weight"), dim)?,
                q: linear(&format!("{p}.self_attn.q_proj"), qd, dim, c.qkv_bias)?,
                k: linear(&format!("{p}.self_attn.k_proj"), kvd, dim, c.qkv_bias)?,
                v: linear(&format!("{p}.self_attn.v_proj"), kvd, dim, c.qkv_bias)?,
                o: linear(&format!("{p}.self_attn.o_proj"), dim, qd, c.o_bias)?,
                qk_norm: if c.arch.qk_norm() {
                    Some((
                        vector(&format!("{p}.self_attn.q_norm.weight"), c.head_dim)?,
                        vector(&format!("{p}.self_attn.k_norm.weight"), c.head_dim)?,
                    ))
                } else {
                    None
                },
                mlp_norm: vector(&format!("{p}.post_attention_layernorm.weight"), dim)?,
                gate: linear(&format!("{p}.mlp.gate_proj"), ffn, dim, c.mlp_bias)?,
                up: linear(&format!("{p}.mlp.up_proj"), ffn, dim, c.mlp_bias)?,
                down: linear(&format!("{p}.mlp.down_proj"), dim, ffn, c.mlp_bias)?,
            });
        }
        let embed = Arc::new(backend.upload_matrix(&embed_t, wdt)?);
        // An int8 head is built from the float weights (the tied embedding or lm_head.weight)
        // unless the checkpoint quantized lm_head itself.
        let int8_head = c.lm_head == LmHead::Int8
            && (c.tie_word_embeddings || src.quant_linear("lm_head")?.is_none());
        let (lm_head, lm_head_block) = if int8_head {
            let t = if c.tie_word_embeddings {
                embed_t
            } else {
                load_checked(src, "lm_head.weight", &[c.vocab_size, dim])?
            };
            int8_lm_head(&backend, &t, c.vocab_size, dim)?
        } else if c.tie_word_embeddings {
            let head = Linear {
                name: "lm_head".into(),
                in_features: dim,
                out_features: c.vocab_size,
                weight: LinearWeight::Dense(embed.clone()),
                bias: None,
                act: ActSpec::NONE,
            };
            (head, None)
        } else {
            let mut l = linear("lm_head", c.vocab_size, dim, false)?;
            l.name = "lm_head".into();
            (l, None)
        };
        let norm = vector("model.norm.weight", dim)?;
        Ok(LlamaModel {
            config,
            weight_dtype: wdt,
            embed,
            layers,
            norm,
            lm_head,
            lm_head_block,
            backend,
        })
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
        let inv_freq = c.rope_inv_freq(max_seq);
        let mscale = c.rope_attention_factor();
        let (mut cos, mut sin) = (
            Vec::with_capacity(max_seq * inv_freq.len()),
            Vec::with_capacity(max_seq * inv_freq.len()),
        );
        for p in 0..max_seq {
            for f in &inv_freq {
                let a = p as f64 * f;
                cos.push((a.cos() * mscale) as f32);
                sin.push((a.sin() * mscale) as f32);
            }
        }
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
            rope_cos: b.upload(&cos)?,
            rope_sin: b.upload(&sin)?,
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
        let (cos, sin) = (&ws.rope_cos, &ws.rope_sin);
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
        for (l, layer) in self.layers.iter().enumerate() {
            // attention block; the previous block's output joins the residual in this norm
            let norm = LinearInput::Norm {
                res: &mut ws.x,
                add: (l > 0).then_some(&ws.proj),
                weight: &layer.attn_norm,
                eps,
                x: &mut ws.xb,
            };
            project!(
                l,
                Site::AttnIn,
                norm,
                xb,
                dim,
                [(q, &layer.q), (k, &layer.k), (v, &layer.v)]
            );
            if let Some((qn, kn)) = &layer.qk_norm {
                // each head of q and k normalized over head_dim (rows as (rows · heads, hd));
                // att is free until attention writes it and holds q_dim ≥ kv_dim per row
                let (nq, nk) = (rows * c.num_heads, rows * c.num_kv_heads);
                b.rms_norm(&mut ws.att, &ws.q, qn, nq, hd, eps)?;
                b.copy(&mut ws.q, 0, &ws.att, 0, nq * hd)?;
                b.rms_norm(&mut ws.att, &ws.k, kn, nk, hd, eps)?;
                b.copy(&mut ws.k, 0, &ws.att, 0, nk * hd)?;
            }
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
            })?;
            let att = LinearInput::Ready(&mut ws.att);
            project!(l, Site::OIn, att, att, c.q_dim(), [(proj, &layer.o)]);
            // MLP block
            let norm = LinearInput::Norm {
                res: &mut ws.x,
                add: Some(&ws.proj),
                weight: &layer.mlp_norm,
                eps,
                x: &mut ws.xb,
            };
            project!(
                l,
                Site::MlpIn,
                norm,
                xb,
                dim,
                [(hb, &layer.gate), (hb2, &layer.up)]
            );
            let act = LinearInput::SiluMul {
                gate: &mut ws.hb,
                up: &ws.hb2,
            };
            project!(
                l,
                Site::DownIn,
                act,
                hb,
                c.intermediate_size,
                [(proj, &layer.down)]
            );
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
        Ok(n)
    }
}
