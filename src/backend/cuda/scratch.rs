//! Device scratch that lives as long as the backend, so a decode step allocates nothing.
//!
//! - Quantized activations and scales, the bf16 copy of a GEMM's input, attention partials,
//!   sampled ids and the sampler's uploads.
//! - Buffers only grow (to the next power of two) and kernels take explicit sizes.
//! - One stream orders reuse; an op holds the lock from its first launch to its last, so two
//!   host threads cannot interleave their use of a buffer.

use super::launch::{driver_error, Mode, RunState};
use crate::error::{Error, Result};
use cudarc::driver::{CudaSlice, CudaStream, DeviceRepr, ValidAsZeroBits};
use std::sync::{Arc, Mutex, MutexGuard};

/// One grow-only device buffer.
pub(super) struct Grow<T>(Option<CudaSlice<T>>);

impl<T> Default for Grow<T> {
    fn default() -> Self {
        Grow(None)
    }
}

impl<T> Grow<T> {
    /// The buffer as the last `grow` left it.
    pub fn cur(&self) -> Result<&CudaSlice<T>> {
        self.0
            .as_ref()
            .ok_or_else(|| driver_error("scratch", "read before it was written"))
    }
}

/// The backend's scratch buffers (see the module comment).
#[derive(Default)]
pub(super) struct Scratch {
    pub act_q: Grow<u8>, // (rows, k) int8 or e4m3 activations of a quantized linear
    pub act_scale: Grow<f32>, // (rows) their per-row (or static) scales
    pub act_zp: Grow<i32>, // (rows) their zero points (int8)
    pub bf16: Grow<u16>, // (rows, k) bf16 activations of a tensor-core GEMM
    pub attn_part: Grow<f32>, // (rows, heads, splits, hd + 2) split-attention partials
    pub ids: Grow<u32>,  // (rows) greedy or sampled ids out
    pub penalized: Grow<u32>, // (n, 2) (flat index, penalty) under the repetition penalty
    pub sample_params: Grow<u32>, // (rows, 4) temperature, top_k, top_p, u as bits
    /// host-side staging for the sampling uploads, reused
    pub host: Vec<u32>,
}

/// `g`, at least `len` long: reallocated (zeroed) when shorter. A move is counted (a graph
/// captured before it reads the old buffer) and is an error while capturing.
pub(super) fn grow<'g, T: DeviceRepr + ValidAsZeroBits>(
    run: &RunState,
    stream: &Arc<CudaStream>,
    g: &'g mut Grow<T>,
    len: usize,
) -> Result<&'g mut CudaSlice<T>> {
    let buf = match g.0.take() {
        Some(b) if b.len() >= len => b,
        _ if run.mode() == Mode::Capture => {
            return Err(Error::Cuda("scratch grew while capturing a graph".into()))
        }
        // the old buffer (if any) is freed in stream order, after the ops that read it
        _ => {
            run.count_move();
            stream
                .alloc_zeros::<T>(len.max(1).next_power_of_two())
                .map_err(|e| driver_error("allocating scratch", e))?
        }
    };
    Ok(g.0.insert(buf))
}

/// The scratch buffers, held until the guard drops.
pub(super) fn lock(cell: &ScratchCell) -> Result<MutexGuard<'_, Scratch>> {
    cell.lock()
        .map_err(|_| driver_error("device scratch", "poisoned lock"))
}

/// The backend's field.
pub(super) type ScratchCell = Mutex<Scratch>;
