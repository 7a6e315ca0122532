//! A CUDA device ready to launch ferroq's kernels: context, stream and lazily loaded modules.
//!
//! - A module's CUBIN comes from the disk cache (compiled by NVRTC for the device's arch on first
//!   use) and is loaded once; tiles above 48 KiB of shared memory are opted in as they load.
//! - The GPU tests launch kernels through this; `CudaBackend` sits on it.

use super::device::{probe, DeviceInfo};
use super::kernels::{Kernel, Module};
use super::nvrtc::KernelCache;
use crate::error::{Error, Result};
use cudarc::driver::{sys, CudaContext, CudaFunction, CudaModule, CudaStream};
use std::collections::HashMap;
use std::sync::Arc;

pub struct Gpu {
    pub info: DeviceInfo,
    pub ctx: Arc<CudaContext>,
    pub stream: Arc<CudaStream>,
    cache: KernelCache,
    modules: HashMap<Module, Arc<CudaModule>>,
}

fn driver_error(what: &str, e: impl std::fmt::Debug) -> Error {
    Error::Cuda(format!("{what}: {e:?}"))
}

impl Gpu {
    /// Open device `ordinal` (probing first, so a missing driver is an error, not a panic).
    pub fn new(ordinal: usize) -> Result<Self> {
        let info = probe(ordinal)?;
        let ctx = CudaContext::new(ordinal).map_err(|e| driver_error("creating the context", e))?;
        // SAFETY: all of a Gpu's work goes to its one stream, so cudarc's cross-stream event
        // tracking (an event record per buffer per launch) has nothing to order; host reads
        // synchronize the stream.
        unsafe { ctx.disable_event_tracking() };
        // an owned stream, not the legacy default one, which cannot be captured into a graph
        let stream = ctx
            .new_stream()
            .map_err(|e| driver_error("creating a stream", e))?;
        Ok(Gpu {
            info,
            ctx,
            stream,
            cache: KernelCache::new(KernelCache::default_dir()),
            modules: HashMap::new(),
        })
    }

    /// Device-to-device copy bandwidth, counting bytes read and written (GB/s): the ceiling
    /// the benchmarks put memory-bound figures against (1 GiB copied 20 times).
    pub fn copy_bandwidth(&self) -> Result<f64> {
        let n = 1usize << 28; // 1 GiB of f32
        let d = |e| driver_error("copy bandwidth", e);
        let src = self.stream.alloc_zeros::<f32>(n).map_err(d)?;
        let mut dst = self.stream.alloc_zeros::<f32>(n).map_err(d)?;
        self.stream.memcpy_dtod(&src, &mut dst).map_err(d)?;
        self.stream.synchronize().map_err(d)?;
        let iters = 20;
        let t = std::time::Instant::now();
        for _ in 0..iters {
            self.stream.memcpy_dtod(&src, &mut dst).map_err(d)?;
        }
        self.stream.synchronize().map_err(d)?;
        Ok(2.0 * (n * 4 * iters) as f64 / t.elapsed().as_secs_f64() / 1e9)
    }

    /// The kernel's function, compiling and loading its module on first use.
    pub fn function(&mut self, k: Kernel) -> Result<CudaFunction> {
        let m = k.module();
        if !self.modules.contains_key(&m) {
            let c = self
                .cache
                .get_or_compile(&m.source(), m.name(), &self.info.arch)?;
            let module = self
                .ctx
                .load_module(cudarc::nvrtc::Ptx::from_binary(c.cubin))
                .map_err(|e| driver_error(&format!("loading module {}", m.name()), e))?;
            self.modules.insert(m, module);
        }
        let module = self
            .modules
            .get(&m)
            .ok_or_else(|| Error::Cuda(format!("module {} not loaded", m.name())))?;
        let f = module
            .load_function(k.symbol())
            .map_err(|e| driver_error(&format!("kernel {}", k.symbol()), e))?;
        // a tile staging more than the default 48 KiB of shared memory gets it opted in where
        // the device allows it (elsewhere its launch fails with the driver's error, and the
        // backend never picks it: `has_wgmma`)
        if let Some(t) = super::tiles::TILES.iter().find(|t| t.kernel == k) {
            if t.smem > 48 * 1024 && t.smem <= self.smem_optin()? {
                Self::allow_smem(&f, t.smem)?;
            }
        }
        Ok(f)
    }

    /// The most dynamic shared memory a block may opt in to (bytes; 227 KiB on Hopper).
    pub fn smem_optin(&self) -> Result<usize> {
        let v = self
            .ctx
            .attribute(
                sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN,
            )
            .map_err(|e| driver_error("shared memory limit", e))?;
        Ok(v.max(0) as usize)
    }

    /// Let blocks of `f` take `bytes` of dynamic shared memory.
    pub fn allow_smem(f: &CudaFunction, bytes: usize) -> Result<()> {
        let b = i32::try_from(bytes)
            .map_err(|_| Error::InvalidArgument(format!("{bytes} bytes of shared memory")))?;
        f.set_attribute(
            sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
            b,
        )
        .map_err(|e| driver_error("shared memory opt-in", e))
    }

    /// Whether the wgmma GEMM tiles run here: real code only in the sm_90a build (a trap in
    /// the others), and their shared memory within what a block may opt in to.
    pub fn has_wgmma(&self) -> Result<bool> {
        Ok(self.info.arch == "sm_90a" && super::tiles::WG_SMEM <= self.smem_optin()?)
    }
}
