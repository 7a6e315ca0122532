//! The backend abstraction: one trait per role, joined by `Backend`.
//!
//! - Roles: device memory (`memory.rs`), the LLM ops (`ops.rs`), fused seams with op-by-op
//!   defaults (`fused.rs`) and sampling (`sampling.rs`); `prelude` imports them all.
//! - The model is generic over `Backend`; `cpu` is the reference for every other backend.
//! - `DeviceSpec::run` is the one place a command picks its backend.

pub mod cpu;
pub mod cuda;
pub mod fused;
pub mod linear;
pub mod memory;
pub mod ops;
pub mod sampling;

pub use fused::{check_inputs, next_buffer_id, Fused, LinearInput, RopeKvArgs, StepKey};
pub use memory::DeviceMemory;
pub use ops::{AttentionArgs, KvSeq, Ops, ATTN_ROWS};
pub use sampling::Sampling;

use crate::error::Result;

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

/// A backend: every role, joined. The model is generic over it; `cpu` implements it as the
/// reference, `cuda` on a GPU.
pub trait Backend: DeviceMemory + Ops + Fused + Sampling {}

impl<T: DeviceMemory + Ops + Fused + Sampling> Backend for T {}

/// The backend traits, for code that calls ops on a concrete backend (`CpuBackend::new()
/// .rms_norm(..)`): generic code bounded by `Backend` sees every role's methods already.
pub mod prelude {
    pub use super::{Backend, DeviceMemory, Fused, Ops, Sampling};
}
