//! Launch plumbing of the CUDA backend, below every other host file.
//!
//! - Driver errors, grid shapes, argument checks, and the run state: eager, staging a graph step
//!   (upload metadata, launch nothing) or capturing one (launch, never upload or allocate).
//! - The count of moved device buffers lives here because the graph cache, the scratch and the
//!   metadata cache all read it: a graph captured before a move would read a freed buffer.

use super::kernels::Kernel;
use crate::error::{Error, Result};
use cudarc::driver::{CudaSlice, LaunchArgs, LaunchConfig, PushKernelArg};
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};

/// A driver / cuBLAS failure of `what` as ferroq's error.
pub(crate) fn driver_error(what: &str, e: impl std::fmt::Debug) -> Error {
    Error::Cuda(format!("{what}: {e:?}"))
}

/// A launch of an (x, y) grid of `block`-thread blocks with `shared_bytes` of dynamic shared
/// memory.
pub(crate) fn grid(x: usize, y: usize, block: u32, shared_bytes: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (x as u32, y as u32, 1),
        block_dim: (block, 1, 1),
        shared_mem_bytes: shared_bytes as u32,
    }
}

/// `n` blocks of `block` threads in one row.
pub(crate) fn grid_1d(n: usize, block: u32) -> LaunchConfig {
    grid(n, 1, block, 0)
}

/// A launch of `cfg` would run no block.
pub(crate) fn empty_grid(cfg: &LaunchConfig) -> bool {
    let (x, y, z) = cfg.grid_dim;
    x == 0 || y == 0 || z == 0
}

/// A device buffer of `have` values is long enough for an op that touches `need`.
pub(crate) fn check_len(what: &str, have: usize, need: usize) -> Result<()> {
    if have < need {
        return Err(Error::InvalidArgument(format!(
            "{what}: device buffer holds {have} values, the op needs {need}"
        )));
    }
    Ok(())
}

/// bf16 values a KV pool (`Backend::alloc_kv`) holds: two per f32 word.
pub(crate) fn kv_values(pool: &CudaSlice<f32>) -> usize {
    2 * pool.len()
}

/// A size as the i32 kernel parameter it becomes, or an error naming it.
pub(crate) fn i32_of(v: usize, what: &str) -> Result<i32> {
    i32::try_from(v).map_err(|_| Error::InvalidArgument(format!("{what} {v} exceeds i32")))
}

/// The launch of a GEMM-shaped kernel (its geometry lives in `Kernel::gemm_launch`).
pub(crate) fn gemm_grid(kern: Kernel, m: usize, n: usize) -> Result<LaunchConfig> {
    kern.gemm_launch(m, n)
        .ok_or_else(|| Error::Cuda(format!("{kern:?} has no GEMM launch geometry")))
}

/// Push an optional device pointer argument: the buffer, or null (`null` holds 0).
pub(crate) fn arg_or_null<'a, T>(b: &mut LaunchArgs<'a>, v: Option<&'a CudaSlice<T>>, null: &'a u64)
where
    LaunchArgs<'a>: PushKernelArg<&'a CudaSlice<T>> + PushKernelArg<&'a u64>,
{
    match v {
        Some(s) => <LaunchArgs<'a> as PushKernelArg<&'a CudaSlice<T>>>::arg(b, s),
        None => <LaunchArgs<'a> as PushKernelArg<&'a u64>>::arg(b, null),
    };
}

/// What the backend does with device work right now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Mode {
    /// Launch as usual.
    Eager = 0,
    /// Upload metadata only; launch nothing.
    Stage = 1,
    /// Launches are being recorded; nothing may upload or allocate.
    Capture = 2,
}

/// The backend's mode and moved-buffer count, shared by the files that launch, upload or grow.
#[derive(Default)]
pub(crate) struct RunState {
    mode: AtomicU8,
    moves: AtomicU64,
}

impl RunState {
    pub(crate) fn mode(&self) -> Mode {
        match self.mode.load(Ordering::Relaxed) {
            1 => Mode::Stage,
            2 => Mode::Capture,
            _ => Mode::Eager,
        }
    }

    pub(crate) fn set_mode(&self, m: Mode) {
        self.mode.store(m as u8, Ordering::Relaxed);
    }

    /// Whether this is a staging pass, which runs no device work: launches, copies and cuBLAS
    /// calls return at once, only metadata uploads happen.
    pub(crate) fn staging(&self) -> bool {
        self.mode() == Mode::Stage
    }

    /// Whether the step being run is staged or captured (attention then uses fixed maxima).
    pub(crate) fn graphing(&self) -> bool {
        self.mode() != Mode::Eager
    }

    /// Device buffers reallocated so far.
    pub(crate) fn moves(&self) -> u64 {
        self.moves.load(Ordering::Relaxed)
    }

    /// A scratch or metadata buffer was reallocated.
    pub(crate) fn count_move(&self) {
        self.moves.fetch_add(1, Ordering::Relaxed);
    }

    /// Launch `b` with `cfg`, unless this is a staging pass (which only uploads).
    ///
    /// # Safety
    /// As `LaunchArgs::launch`: the arguments must be the kernel's parameters, in order, and
    /// every buffer must hold what the kernel reads and writes at this geometry.
    pub(crate) unsafe fn launch(
        &self,
        b: &mut LaunchArgs<'_>,
        cfg: LaunchConfig,
        what: &str,
    ) -> Result<()> {
        // a grid with no blocks (zero rows: an empty chunk, nothing to decode) has no work, and
        // the driver refuses it as CUDA_ERROR_INVALID_VALUE
        if self.staging() || empty_grid(&cfg) {
            return Ok(());
        }
        // SAFETY: the caller's contract.
        unsafe { b.launch(cfg) }
            .map(|_| ())
            .map_err(|e| driver_error(what, e))
    }
}
