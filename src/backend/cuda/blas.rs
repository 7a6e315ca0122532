//! cuBLAS for the dense BF16 GEMMs of prefill, loaded at run time like the driver.
//!
//! - Where libcublas.so.13 is present (the CUDA toolkit, or PyTorch's wheels) `cublasGemmEx`
//!   computes the bf16 × bf16 → f32 product ferroq's own `gemm_bf16_tc` computes; where it is
//!   absent (or `FERROQ_CUBLAS=0`) the backend runs its own kernel.
//! - cudarc panics when it has to load an absent library, so presence is checked first.
//! - Row-major out (m, n) is column-major outᵀ (n, m) = W (n, k) · xᵀ, as every engine maps it.
//! - The handle gets a workspace of the backend's own before any graph capture: without one,
//!   cuBLAS allocates its workspace on first use, which a stream capture refuses.

use super::launch::driver_error;
use crate::error::Result;
use cudarc::cublas::{result as blas, sys as bsys, CudaBlas};
use cudarc::driver::{CudaSlice, CudaStream, DevicePtr, DevicePtrMut};
use std::sync::Arc;

/// Whether libcublas can be loaded.
pub fn cublas_present() -> bool {
    // SAFETY: only tries to dlopen the library by its candidate names.
    unsafe { bsys::is_culib_present() }
}

/// Whether the backend should use cuBLAS: present, and not switched off by `FERROQ_CUBLAS=0`
/// (the GPU tests and benchmarks run both paths).
pub fn cublas_wanted() -> bool {
    std::env::var("FERROQ_CUBLAS").map_or(true, |v| v != "0") && cublas_present()
}

/// The cuBLAS workspace (NVIDIA's recommendation for Hopper; ample for Ampere and Ada).
const WORKSPACE_BYTES: usize = 32 << 20;

pub struct Blas {
    handle: CudaBlas,
    stream: Arc<CudaStream>, // the one the handle is bound to
    /// set as the handle's workspace; dropped after the handle (field order)
    _workspace: CudaSlice<u8>, // (WORKSPACE_BYTES)
}

impl Blas {
    /// A cuBLAS handle on `stream`, or None where cuBLAS is absent or switched off.
    pub fn open(stream: &Arc<CudaStream>) -> Result<Option<Self>> {
        if !cublas_wanted() {
            return Ok(None);
        }
        Self::open_always(stream)
    }

    /// A cuBLAS handle on `stream` whatever `FERROQ_CUBLAS` says (None where it is absent).
    pub fn open_always(stream: &Arc<CudaStream>) -> Result<Option<Self>> {
        if !cublas_present() {
            return Ok(None);
        }
        let handle = CudaBlas::new(stream.clone()).map_err(|e| driver_error("cublasCreate", e))?;
        let mut workspace = stream
            .alloc_zeros::<u8>(WORKSPACE_BYTES)
            .map_err(|e| driver_error("cuBLAS workspace", e))?;
        {
            let (wp, _sync) = workspace.device_ptr_mut(stream);
            // SAFETY: the handle is live and bound to `stream`, where the buffer was allocated;
            // the buffer holds WORKSPACE_BYTES and outlives the handle (dropped after it).
            let status = unsafe {
                bsys::cublasSetWorkspace_v2(*handle.handle(), wp as *mut _, WORKSPACE_BYTES)
            };
            if status != bsys::cublasStatus_t::CUBLAS_STATUS_SUCCESS {
                return Err(driver_error("cublasSetWorkspace", status));
            }
        }
        Ok(Some(Blas {
            handle,
            stream: stream.clone(),
            _workspace: workspace,
        }))
    }

    /// out (m, n) f32 = xb (m, k) · w (n, k)ᵀ, both bf16 (u16 bits), f32 accumulation.
    pub fn gemm_bf16(
        &self,
        out: &mut CudaSlice<f32>,
        xb: &CudaSlice<u16>,
        w: &CudaSlice<u16>,
        (m, n, k): (usize, usize, usize),
    ) -> Result<()> {
        let dim = |v: usize| i32::try_from(v).map_err(|e| driver_error("cuBLAS dimension", e));
        let (mi, ni, ki) = (dim(m)?, dim(n)?, dim(k)?);
        let stream = &self.stream;
        let (alpha, beta) = (1.0f32, 0.0f32);
        let (wp, _w_sync) = w.device_ptr(stream);
        let (xp, _x_sync) = xb.device_ptr(stream);
        let (op, _o_sync) = out.device_ptr_mut(stream);
        // SAFETY: the handle is bound to `stream`, on which the three buffers are used; w holds
        // n × k, xb m × k and out m × n elements (the caller checked); alpha / beta are host
        // f32 as CUBLAS_COMPUTE_32F and the default host pointer mode expect.
        unsafe {
            blas::gemm_ex(
                *self.handle.handle(),
                bsys::cublasOperation_t::CUBLAS_OP_T,
                bsys::cublasOperation_t::CUBLAS_OP_N,
                ni,
                mi,
                ki,
                (&alpha as *const f32).cast(),
                wp as *const _,
                bsys::cudaDataType_t::CUDA_R_16BF,
                ki,
                xp as *const _,
                bsys::cudaDataType_t::CUDA_R_16BF,
                ki,
                (&beta as *const f32).cast(),
                op as *mut _,
                bsys::cudaDataType_t::CUDA_R_32F,
                ni,
                bsys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
                bsys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
            )
        }
        .map_err(|e| driver_error("cublasGemmEx", e))
    }
}
