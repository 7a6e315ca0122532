//! The fused role of a backend: several ops a device may run as one.
//!
//! - The residual add with the next norm, a site's linears on one produced (rotated, quantized)
//!   input (`project`), RoPE with the KV writes, a decode step recorded once and replayed.
//! - Each has an op-by-op default, which is what the CPU runs: fusion is a device's choice, never
//!   a change of numerics the CPU reference cannot reproduce.

use super::linear::Linear;
use super::memory::DeviceMemory;
use super::ops::{KvSeq, Ops};
use crate::error::Result;
use crate::quant::Phase;

pub trait Fused: Ops {
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
    /// Make `input` (rows, cols) in float — the residual add then the norm, or the gated
    /// activation — and
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
            LinearInput::GeluMul { gate, up } => {
                self.gelu_mul(gate, up, rows * cols)?;
                gate
            }
        })
    }

    /// The linears `outs` (each writes its out (rows, out_features)) on one shared input x
    /// (rows, cols) that `input` produces: the norm (after the residual add) before q/k/v or
    /// gate/up, SiLU·up before down_proj, or a ready buffer. A backend may fuse the producer
    /// with the activation quantization the linears share (the norm output never
    /// stored in float, one quantization for q, k and v); the default runs the ops one by one.
    /// `rotate: Some(b)` applies the online Hadamard rotation blockdiag(H_b) (`quant::hadamard`)
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
    /// Run `step`, the device work of one decode step whose launches are the same on every
    /// call with this `key` (only the contents of the token ids, positions and KV metadata
    /// change): a backend with graphs records it once and replays it (`cuda/graph.rs`). The
    /// default runs it.
    fn replay_step(&self, key: StepKey, step: &mut dyn FnMut() -> Result<()>) -> Result<()> {
        let _ = key;
        step()
    }
}

/// What makes two decode steps replays of one another ([`Fused::replay_step`]): the buffers
/// they run on (a workspace and a KV cache, by their process-unique ids), the batch rows and
/// the attention span ([`replay_span`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StepKey {
    pub workspace: u64,
    pub kv: u64,
    pub rows: usize,
    pub span: usize,
}

/// The positions a replayed step's attention is shaped for, when its longest sequence ends at
/// `end`: `end` rounded up to a power of two of at least 256, within `max_seq`. A replay's
/// launch shapes are fixed, so they cover the span, not the sequences' lengths; sizing them to
/// the span rather than to `max_seq` keeps a short sequence under a 128k context from
/// launching work for 128k positions, at one graph per doubling.
pub fn replay_span(end: usize, max_seq: usize) -> usize {
    end.max(256)
        .checked_next_power_of_two()
        .unwrap_or(usize::MAX)
        .min(max_seq)
}

/// A process-unique id for a buffer set a graph may bake in (workspaces, KV caches).
pub fn next_buffer_id() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// What produces the input (rows, cols) of [`Fused::project`]'s linears.
pub enum LinearInput<'a, B: DeviceMemory> {
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
    /// gate (rows, cols) = gelu_tanh(gate) · up (GeGLU), and x is gate.
    GeluMul {
        gate: &'a mut B::Buf,
        up: &'a B::Buf,
    },
}
// When the call rotates, the buffer that is x (Ready's, Norm's x, the gate) holds the
// rotated rows afterwards, unless every linear took a fused quantized input: then its contents
// are unspecified (Norm's residual stream is always updated).

/// Every linear of a [`Fused::project`] group must read `cols` features.
pub fn check_inputs<'a, B: DeviceMemory>(
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

/// Arguments of [`Fused::rope_write_kv`]: q (rows, n_heads, head_dim) and k (rows,
/// n_kv_heads, head_dim) rotated in place (HF rotate_half; cos / sin (max_pos, head_dim / 2));
/// k and v (rows, n_kv_heads · head_dim) stored at each sequence's slots of the caches.
pub struct RopeKvArgs<'a, B: DeviceMemory> {
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
