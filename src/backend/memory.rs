//! The memory role of a backend: buffer and matrix types, moving data, the KV-cache format.
//!
//! - Every other role builds on this one, so `Linear` and the op arguments need only it.

use crate::error::Result;
use crate::quant::QuantWeight;
use crate::tensor::{DType, HostTensor};

pub trait DeviceMemory: Send + Sync + Sized + 'static {
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
}
