//! The op role of a backend: the LLM operations the Llama forward pass needs.
//!
//! - Embed, RMSNorm, linear, RoPE, paged KV write, causal GQA attention over block tables,
//!   SiLU·up and GELU·up, residual add, scaling and tanh soft-capping, copy, block Hadamard —
//!   shapes in each method's comment.
//! - Design after candle's per-device backend traits and llm.c's one function per layer op.

use super::linear::Linear;
use super::memory::DeviceMemory;
use crate::error::Result;
use crate::quant::Phase;

pub trait Ops: DeviceMemory {
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
    /// activation path (prefill: per-token dynamic, decode: per-tensor static), and on some
    /// backends the kernel (see `phase_dependent`).
    fn linear(
        &self,
        out: &mut Self::Buf,
        x: &Self::Buf,
        w: &Linear<Self>,
        rows: usize,
        phase: Phase,
    ) -> Result<()>;
    /// Whether `linear` on `w` may give a row different values in prefill and in decode: pd_mix
    /// scales, or a backend whose prefill kernel rounds differently (the CPU's AMX tiles take
    /// BF16 activations). Callers keep such phases in separate calls, so a token's result does
    /// not depend on what it was batched with.
    fn phase_dependent(&self, w: &Linear<Self>) -> bool {
        matches!(w.act.policy, crate::quant::ActQuant::PdMix { .. })
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
    /// gate (len) = gelu_tanh(gate) * up (GeGLU: PyTorch's `gelu(approximate="tanh")`)
    fn gelu_mul(&self, gate: &mut Self::Buf, up: &Self::Buf, len: usize) -> Result<()>;
    /// x (len) = x · s (Gemma's embedding scale)
    fn scale(&self, x: &mut Self::Buf, len: usize, s: f32) -> Result<()>;
    /// x (len) = cap · tanh(x / cap) (Gemma 2's final-logit soft-capping)
    fn softcap(&self, x: &mut Self::Buf, len: usize, cap: f32) -> Result<()>;
    /// x (len) ← blockdiag(H_block) x: the online rotation of `quant::hadamard`.
    fn hadamard(&self, x: &mut Self::Buf, len: usize, block: usize) -> Result<()>;
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
        let end = self.start_pos.saturating_add(self.rows);
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

/// Arguments of [`Ops::attention`], bundled because there are many.
pub struct AttentionArgs<'a, B: DeviceMemory> {
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
    /// Sliding-window attention (Mistral, Gemma's local layers): the query at position i sees
    /// keys i − window < j ≤ i, as transformers' `sliding_window` mask. None: all of 0..=i.
    pub window: Option<usize>,
    /// Factor on q·k before the softmax: 1/√head_dim, or Gemma's 1/√query_pre_attn_scalar.
    pub scale: f32,
    /// Gemma 2's attention soft-capping: scores become cap · tanh(q·k · scale / cap).
    pub softcap: Option<f32>,
}
