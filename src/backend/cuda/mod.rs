//! The CUDA side of the backend: device discovery through the driver API
//! loaded at run time (`device`), NVRTC compilation of `kernels/*.cu` straight to CUBIN with a
//! disk cache (`nvrtc`), the typed kernel table (`kernels`) and GEMM tiles with their dispatch
//! by M (`tiles`), the device and its lazily loaded modules (`runtime`), cuBLAS when its
//! library is present (`blas`), and the `Backend` implementation (`backend`; quantized linears
//! and the fused norm / SiLU·up / rotation → quantization in `qlinear`, paged attention in
//! `attention`, device sampling in `sample`, persistent scratch in `scratch`, per-forward
//! metadata in `meta`, decode steps as CUDA graphs in `graph`). Design after candle's CUDA
//! backend (kernels compiled apart and loaded lazily) and vLLM's csrc kernels. Unvalidated on
//! hardware until a GPU session runs the `--ignored` CUDA tests (docs/GPU_RESULTS.md).

pub mod attention;
pub mod backend;
pub mod blas;
pub mod device;
pub mod graph;
pub mod kernels;
pub mod launch;
mod meta;
pub mod nvrtc;
mod ops;
pub mod qlinear;
pub mod runtime;
mod sample;
mod scratch;
pub mod tiles;
