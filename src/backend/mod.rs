//! The backend abstraction: the handful of LLM operations the Llama forward pass needs (embed,
//! RMSNorm, linear, RoPE, KV-cache write, causal GQA attention, SiLU·up, residual add, argmax
//! and sampling), each over device buffers whose shapes are given in the argument comments,
//! plus the seams where a device backend fuses or batches them: `project` (a site's linears on
//! the input a norm, SiLU·up or rotation makes, so the activation quantization can be fused
//! and shared), `rope_write_kv`, and `replay_step` (a decode step a GPU records once as a graph
//! and replays). Those have op-by-op defaults, which is what the CPU backend runs. The model
//! is generic over `Backend`; the CPU backend is the first implementation and the reference
//! for every other one. Design after candle's per-device backend traits and llm.c's "one
//! function per layer op".

pub mod cpu;
pub mod cuda;
pub mod linear;
pub mod sampling;

use crate::backend::linear::Linear;
use crate::backend::sampling::Draw;
use crate::error::Result;
use crate::quant::{Phase, QuantWeight};
use crate::tensor::{DType, HostTensor};

/// Which backend a command should run on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceSpec {
    Cpu,
    /// CUDA device N.
    Cuda(usize),
}

impl DeviceSpec {
    /// `cpu`, `cuda`, `cuda:N` or `auto`. `auto` stays on the CPU until the CUDA backend has
    /// been validated on a GPU.
    pub fn parse(s: &str) -> crate::error::Result<Self> {
        match s {
            "cpu" | "auto" => Ok(DeviceSpec::Cpu),
            "cuda" => Ok(DeviceSpec::Cuda(0)),
            other => match other.strip_prefix("cuda:").map(str::parse::<usize>) {
                Some(Ok(n)) => Ok(DeviceSpec::Cuda(n)),
                _ => Err(crate::error::Error::InvalidArgument(format!(
                    "unknown device `{other}` (expected cpu, cuda, cuda:N or auto)"
                ))),
            },
        }
    }

    /// Printed when `--device cuda` runs: the CUDA backend compiles and its kernels build, but
    /// no GPU has run it yet.
    pub const CUDA_UNVALIDATED: &'static str = "the CUDA backend has not been validated on a GPU yet (docs/GPU_RESULTS.md); compare with --device cpu";

    /// Run `job` on this device: the one dispatch every command that runs a model goes
    /// through. A CUDA device is opened before the job starts, so a machine without a driver
    /// fails at once with the driver's error; the job may open more backends (a baseline
    /// model beside the evaluated one) through the same `open`.
    pub fn run<J: BackendJob>(self, job: J) -> Result<J::Output> {
        match self {
            DeviceSpec::Cpu => Ok(job.run(&|| Ok(cpu::CpuBackend::new()))),
            DeviceSpec::Cuda(n) => {
                let first = std::sync::Mutex::new(Some(cuda::backend::CudaBackend::new(n)?));
                tracing::warn!("{}", Self::CUDA_UNVALIDATED);
                Ok(
                    job.run(&|| match first.lock().ok().and_then(|mut b| b.take()) {
                        Some(b) => Ok(b),
                        None => cuda::backend::CudaBackend::new(n),
                    }),
                )
            }
        }
    }
}

/// Work that runs on whichever backend `--device` picks (`DeviceSpec::run`); `open` makes a
/// backend of the chosen kind each time it is called. The output is the job's own (a
/// command's result type), so only opening the device is this crate's error.
pub trait BackendJob {
    type Output;
    fn run<B: Backend>(self, open: &dyn Fn() -> Result<B>) -> Self::Output;
}

pub trait Backend: Send + Sync + Sized + 'static {
    /// A device buffer of f32 values.
    type Buf: Send + Sync;
    /// A dense `[rows, cols]` weight matrix stored in the dtype it was uploaded as.
    type Matrix: Send + Sync;
    /// A quantized `[rows, cols]` weight.
    type QMatrix: Send + Sync;

    /// Human-readable description ("cpu (2 threads, avx2+fma)").
    fn describe(&self) -> String;

    /// Run `f` where the backend's compute threads live. The CPU backend runs it on a rayon
    /// worker, so the ops' parallel loops use that worker's own queue instead of injecting
    /// jobs into the global one (which allocates): a decode loop run here allocates nothing.
    fn run_on_workers<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        f()
    }

    fn alloc(&self, len: usize) -> Result<Self::Buf>;
    fn upload(&self, data: &[f32]) -> Result<Self::Buf>;
    /// A zeroed KV-cache pool of `len` values in the backend's cache format (f32 on the CPU,
    /// bf16 on CUDA: `write_kv` rounds into it, `attention` reads it).
    fn alloc_kv(&self, len: usize) -> Result<Self::Buf> {
        self.alloc(len)
    }
    /// `data` as a KV-cache pool (tests that fill a cache directly).
    fn upload_kv(&self, data: &[f32]) -> Result<Self::Buf> {
        self.upload(data)
    }
    /// Bytes one cached key or value element takes.
    fn kv_value_bytes(&self) -> usize {
        4
    }
    /// Copy `buf[offset .. offset + out.len()]` to the host.
    fn read(&self, buf: &Self::Buf, offset: usize, out: &mut [f32]) -> Result<()>;
    /// Upload a 2-D tensor as a matrix of `dtype`.
    fn upload_matrix(&self, t: &HostTensor, dtype: DType) -> Result<Self::Matrix>;
    /// Upload a quantized weight of shape `[rows, cols]`.
    fn upload_quant(&self, w: &QuantWeight, rows: usize, cols: usize) -> Result<Self::QMatrix>;

    /// out (n, cols) = table[ids[i]] for each i. Ids were range-checked by the caller.
    fn embed(&self, out: &mut Self::Buf, table: &Self::Matrix, ids: &[u32]) -> Result<()>;
    /// out (rows, dim) = x / rms(x) * weight (dim)
    fn rms_norm(
        &self,
        out: &mut Self::Buf,
        x: &Self::Buf,
        weight: &Self::Buf,
        rows: usize,
        dim: usize,
        eps: f32,
    ) -> Result<()>;
    /// res (rows, dim) += add when given, then out = rms_norm(res) · weight: a block's output
    /// joining the residual stream before the next norm (a backend may fuse the two).
    #[allow(clippy::too_many_arguments)]
    fn add_rms_norm(
        &self,
        out: &mut Self::Buf,
        res: &mut Self::Buf,
        add: Option<&Self::Buf>,
        weight: &Self::Buf,
        rows: usize,
        dim: usize,
        eps: f32,
    ) -> Result<()> {
        if let Some(y) = add {
            self.add_assign(res, y, rows * dim)?;
        }
        self.rms_norm(out, res, weight, rows, dim, eps)
    }
    /// dst[dst_off .. dst_off + len] = src[src_off .. src_off + len]
    fn copy(
        &self,
        dst: &mut Self::Buf,
        dst_off: usize,
        src: &Self::Buf,
        src_off: usize,
        len: usize,
    ) -> Result<()>;
    /// x (len) += y (len)
    fn add_assign(&self, x: &mut Self::Buf, y: &Self::Buf, len: usize) -> Result<()>;
    /// out (rows, out_features) = x (rows, in_features) · Wᵀ + b. `phase` picks the pd_mix
    /// activation path (prefill: per-token dynamic, decode: per-tensor static).
    fn linear(
        &self,
        out: &mut Self::Buf,
        x: &Self::Buf,
        w: &Linear<Self>,
        rows: usize,
        phase: Phase,
    ) -> Result<()>;
    /// Make `input` (rows, cols) in float — the residual add then the norm, or SiLU·up — and
    /// return the buffer holding it; the default runs the ops one by one.
    fn make_input<'a>(
        &self,
        input: LinearInput<'a, Self>,
        rows: usize,
        cols: usize,
    ) -> Result<&'a mut Self::Buf> {
        Ok(match input {
            LinearInput::Ready(x) => x,
            LinearInput::Norm {
                res,
                add,
                weight,
                eps,
                x,
            } => {
                self.add_rms_norm(x, res, add, weight, rows, cols, eps)?;
                x
            }
            LinearInput::SiluMul { gate, up } => {
                self.silu_mul(gate, up, rows * cols)?;
                gate
            }
        })
    }

    /// The linears `outs` (each writes its out (rows, out_features)) on one shared input x
    /// (rows, cols) that `input` produces: the norm (after the residual add) before q/k/v or
    /// gate/up, SiLU·up before down_proj, or a ready buffer. A backend may fuse the producer
    /// with the activation quantization the linears share (issue 6: the norm output never
    /// stored in float, one quantization for q, k and v); the default runs the ops one by one.
    /// `rotate: Some(b)` applies the online Hadamard rotation blockdiag(H_b) (`model::hadamard`)
    /// to the input before the linears. With no linears, the input is produced (and rotated) in
    /// float all the same, to be observed before a second call with `Ready`.
    fn project(
        &self,
        input: LinearInput<'_, Self>,
        rotate: Option<usize>,
        outs: &mut [(&mut Self::Buf, &Linear<Self>)],
        rows: usize,
        cols: usize,
        phase: Phase,
    ) -> Result<()> {
        check_inputs(outs.iter().map(|(_, w)| *w), cols)?;
        let x = self.make_input(input, rows, cols)?;
        if let Some(block) = rotate {
            self.hadamard(x, rows * cols, block)?;
        }
        for (out, w) in outs.iter_mut() {
            self.linear(out, x, w, rows, phase)?;
        }
        Ok(())
    }
    /// Rotate x (rows, n_heads, head_dim) in place, HF rotate_half convention; each sequence's
    /// row row0 + r is at position start_pos + r; cos/sin are (max_pos, head_dim / 2).
    fn rope(
        &self,
        x: &mut Self::Buf,
        cos: &Self::Buf,
        sin: &Self::Buf,
        seqs: &[KvSeq<'_>],
        n_heads: usize,
        head_dim: usize,
    ) -> Result<()>;
    /// The attention block's steps between the projections and attention: RoPE on q and k,
    /// then k and v into their caches (a backend may fuse them; the default runs them one by
    /// one).
    fn rope_write_kv(&self, a: RopeKvArgs<'_, Self>) -> Result<()> {
        self.rope(a.q, a.cos, a.sin, a.seqs, a.n_heads, a.head_dim)?;
        self.rope(a.k, a.cos, a.sin, a.seqs, a.n_kv_heads, a.head_dim)?;
        let kv_dim = a.n_kv_heads * a.head_dim;
        self.write_kv(a.k_cache, a.k, a.seqs, a.block_size, kv_dim)?;
        self.write_kv(a.v_cache, a.v, a.seqs, a.block_size, kv_dim)
    }
    /// Store each sequence's new keys or values: cache (n_blocks, block_size, kv_dim) at the
    /// slots of positions start_pos .. start_pos + rows (through its block table) =
    /// src (rows, kv_dim) from row row0.
    fn write_kv(
        &self,
        cache: &mut Self::Buf,
        src: &Self::Buf,
        seqs: &[KvSeq<'_>],
        block_size: usize,
        kv_dim: usize,
    ) -> Result<()>;
    /// Causal grouped-query attention: each sequence's `rows` new queries at positions
    /// start_pos.. attend to its cached positions 0 ..= start_pos + r. out, q: (batch rows,
    /// n_heads * head_dim); k_cache, v_cache: (n_blocks, block_size, n_kv_heads * head_dim);
    /// scratch: (n_heads, ATTN_ROWS * max_seq). A sequence's results do not depend on the
    /// other sequences, its block table or block size (bit for bit).
    fn attention(&self, a: AttentionArgs<'_, Self>) -> Result<()>;
    /// gate (len) = silu(gate) * up
    fn silu_mul(&self, gate: &mut Self::Buf, up: &Self::Buf, len: usize) -> Result<()>;
    /// x (len) ← blockdiag(H_block) x: the online rotation of `model::hadamard`.
    fn hadamard(&self, x: &mut Self::Buf, len: usize, block: usize) -> Result<()>;
    /// Run `step`, the device work of one decode step whose launches are the same on every
    /// call with this `key` (only the contents of the token ids, positions and KV metadata
    /// change): a backend with graphs records it once and replays it (`cuda/graph.rs`). The
    /// default runs it.
    fn replay_step(&self, key: StepKey, step: &mut dyn FnMut() -> Result<()>) -> Result<()> {
        let _ = key;
        step()
    }
    /// out[r] = the greedy token of row r of logits (out.len(), vocab): the index of the
    /// largest value, the first on ties (the sampler's rule). A device backend picks on the
    /// device, so only the ids cross to the host, not rows × vocab logits.
    fn argmax_rows(&self, logits: &Self::Buf, vocab: usize, out: &mut [u32]) -> Result<()>;
    /// out[r] = the token draws[r] picks from row r of logits (draws.len(), vocab), by
    /// `engine::sampler::draw`'s rule after the repetition penalty (written into the logits).
    /// A device backend draws on the device, so only the ids cross to the host.
    fn sample_rows(
        &self,
        logits: &mut Self::Buf,
        vocab: usize,
        draws: &[Draw<'_>],
        out: &mut [u32],
    ) -> Result<()>;
}

/// What makes two decode steps replays of one another ([`Backend::replay_step`]): the buffers
/// they run on (a workspace and a KV cache, by their process-unique ids) and the batch rows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StepKey {
    pub workspace: u64,
    pub kv: u64,
    pub rows: usize,
}

/// A process-unique id for a buffer set a graph may bake in (workspaces, KV caches).
pub fn next_buffer_id() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// What produces the input (rows, cols) of [`Backend::project`]'s linears.
pub enum LinearInput<'a, B: Backend> {
    /// x, ready.
    Ready(&'a mut B::Buf),
    /// res (rows, cols) += add when given (the residual stream, updated in place), then
    /// x = rms_norm(res) * weight (cols). x holds the normalized (and rotated) rows afterwards
    /// unless every linear took a fused quantized input, in which case its contents are
    /// unspecified.
    Norm {
        res: &'a mut B::Buf,
        add: Option<&'a B::Buf>,
        weight: &'a B::Buf,
        eps: f32,
        x: &'a mut B::Buf,
    },
    /// gate (rows, cols) = silu(gate) · up, and x is gate.
    SiluMul {
        gate: &'a mut B::Buf,
        up: &'a B::Buf,
    },
}
// When the call rotates, the buffer that is x (Ready's, Norm's x, SiluMul's gate) holds the
// rotated rows afterwards, unless every linear took a fused quantized input: then its contents
// are unspecified (Norm's residual stream is always updated).

/// Every linear of a [`Backend::project`] group must read `cols` features.
pub fn check_inputs<'a, B: Backend>(
    ws: impl Iterator<Item = &'a Linear<B>>,
    cols: usize,
) -> Result<()> {
    for w in ws {
        if w.in_features != cols {
            return Err(crate::error::Error::InvalidArgument(format!(
                "{}: {} input features, but its input has {cols} columns",
                w.name, w.in_features
            )));
        }
    }
    Ok(())
}

/// Query rows an attention call scores together per head (its scratch holds this many score
/// rows per head).
pub const ATTN_ROWS: usize = 4;

/// One sequence inside a batched forward pass: batch rows row0 .. row0 + rows are its tokens
/// at positions start_pos ..; its KV cache lives in the physical blocks of `blocks` (vLLM's
/// block table: position p is slot p % block_size of block blocks[p / block_size]).
#[derive(Clone, Copy, Debug)]
pub struct KvSeq<'a> {
    pub row0: usize,
    pub rows: usize,
    pub start_pos: usize,
    pub blocks: &'a [u32],
}

impl KvSeq<'_> {
    /// The cache slot (row of the (n_blocks · block_size, kv_dim) pool) of position `p`; the
    /// table must cover it (see `check`).
    pub fn slot(&self, p: usize, block_size: usize) -> usize {
        self.blocks[p / block_size] as usize * block_size + p % block_size
    }

    /// Rows of the batch that `seqs` occupy (one past the last).
    pub fn batch_rows(seqs: &[KvSeq<'_>]) -> usize {
        seqs.iter().map(|s| s.row0 + s.rows).max().unwrap_or(0)
    }

    /// Check that the table covers every position up to start_pos + rows, inside a cache of
    /// n_blocks blocks, within max_seq positions and a batch of batch_rows rows.
    pub fn check(
        &self,
        block_size: usize,
        n_blocks: usize,
        max_seq: usize,
        batch_rows: usize,
    ) -> Result<()> {
        let end = self.start_pos + self.rows;
        if end > max_seq {
            return Err(crate::error::Error::ContextOverflow {
                needed: end,
                max: max_seq,
            });
        }
        let need = end.div_ceil(block_size.max(1));
        if block_size == 0 || self.blocks.len() < need || self.row0 + self.rows > batch_rows {
            return Err(crate::error::Error::InvalidArgument(format!(
                "kv sequence: rows {}..{} of {batch_rows}, positions up to {end} need {need} blocks of {block_size}, the table has {}",
                self.row0,
                self.row0 + self.rows,
                self.blocks.len()
            )));
        }
        if let Some(&b) = self.blocks[..need]
            .iter()
            .find(|&&b| b as usize >= n_blocks)
        {
            return Err(crate::error::Error::InvalidArgument(format!(
                "kv block {b} outside a cache of {n_blocks} blocks"
            )));
        }
        Ok(())
    }
}

/// Arguments of [`Backend::rope_write_kv`]: q (rows, n_heads, head_dim) and k (rows,
/// n_kv_heads, head_dim) rotated in place (HF rotate_half; cos / sin (max_pos, head_dim / 2));
/// k and v (rows, n_kv_heads · head_dim) stored at each sequence's slots of the caches.
pub struct RopeKvArgs<'a, B: Backend> {
    pub q: &'a mut B::Buf,
    pub k: &'a mut B::Buf,
    pub v: &'a B::Buf,
    pub k_cache: &'a mut B::Buf,
    pub v_cache: &'a mut B::Buf,
    pub cos: &'a B::Buf,
    pub sin: &'a B::Buf,
    pub seqs: &'a [KvSeq<'a>],
    pub block_size: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
}

/// Arguments of [`Backend::attention`], bundled because there are many.
pub struct AttentionArgs<'a, B: Backend> {
    pub out: &'a mut B::Buf,
    pub q: &'a B::Buf,
    pub k_cache: &'a B::Buf,
    pub v_cache: &'a B::Buf,
    pub scratch: &'a mut B::Buf,
    pub seqs: &'a [KvSeq<'a>],
    pub block_size: usize,
    /// Longest sequence the scratch has room for.
    pub max_seq: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
}
