//! `ferroq info`: what this machine offers ferroq.
//!
//! - The CPU backend's kernels, the CUDA driver and devices (compute capability, memory, CUBIN
//!   arch), NVRTC, cuBLAS and the kernel cache.
//! - Every CUDA line reports absence as text instead of failing.

use anyhow::Result;
use ferroq::backend::cpu::CpuBackend;
use ferroq::backend::cuda::{blas, device, kernels::Module, nvrtc::KernelCache};
use ferroq::backend::prelude::*;

pub fn run() -> Result<()> {
    println!("ferroq {}", env!("CARGO_PKG_VERSION"));
    println!("cpu: {}", CpuBackend::new().describe());
    match device::device_count() {
        Ok(n) => {
            println!("cuda driver: loaded, {n} device(s)");
            for i in 0..n {
                match device::probe(i) {
                    Ok(d) => println!(
                        "  cuda:{i}: {} | compute {}.{} -> {} | {:.1} GiB | driver CUDA {}.{}",
                        d.name,
                        d.capability.0,
                        d.capability.1,
                        d.arch,
                        d.total_mem as f64 / (1u64 << 30) as f64,
                        d.driver_version / 1000,
                        d.driver_version % 1000 / 10
                    ),
                    Err(e) => println!("  cuda:{i}: {e}"),
                }
            }
        }
        Err(e) => println!("cuda driver: {e}"),
    }
    match device::nvrtc_version() {
        Ok((major, minor)) => println!("nvrtc: {major}.{minor}"),
        Err(e) => println!("nvrtc: {e}"),
    }
    println!(
        "cublas: {}",
        if !blas::cublas_present() {
            "not found (libcublas.so.13); BF16 GEMMs use ferroq's tensor-core kernel"
        } else if blas::cublas_wanted() {
            "loaded for the BF16 prefill GEMMs"
        } else {
            "present, switched off by FERROQ_CUBLAS=0"
        }
    );
    let cache = KernelCache::new(KernelCache::default_dir());
    let (files, bytes) = cache.usage();
    println!(
        "kernel cache: {} ({files} CUBINs, {:.1} MiB; {} modules per architecture)",
        cache.dir.display(),
        bytes as f64 / (1 << 20) as f64,
        Module::ALL.len()
    );
    println!(
        "cuda graphs: {}",
        if ferroq::backend::cuda::graph::graphs_wanted() {
            "decode steps captured once and replayed (FERROQ_CUDA_GRAPHS=0 to switch off)"
        } else {
            "off (FERROQ_CUDA_GRAPHS=0): decode launches every kernel"
        }
    );
    println!(
        "8-bit GEMMs: {}",
        if ferroq::backend::cuda::backend::wgmma_wanted() {
            "wgmma on Hopper (sm_90a), mma.sync elsewhere (FERROQ_WGMMA=0 for mma.sync everywhere)"
        } else {
            "mma.sync (FERROQ_WGMMA=0)"
        }
    );
    println!(
        "cuda backend: built (bf16 weights, bf16 KV cache); not yet validated on a GPU (docs/GPU_RESULTS.md)"
    );
    Ok(())
}
