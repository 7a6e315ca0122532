//! The CUDA side of the backend (issues 5 and 6): device discovery through the driver API
//! loaded at run time (`device`), NVRTC compilation of `kernels/*.cu` straight to CUBIN with a
//! disk cache (`nvrtc`), the typed kernel table (`kernels`), the device and its lazily loaded
//! modules (`runtime`), cuBLAS when its library is present (`blas`), and the `Backend`
//! implementation (`backend`, quantized linears and the fused norm / SiLU·up → quantization in `qlinear`, paged
//! attention in `attention`, persistent device scratch in `scratch`). Design after candle's CUDA backend (kernels compiled apart and loaded lazily)
//! and vLLM's csrc kernels. Unvalidated on hardware until a GPU session runs the `--ignored`
//! CUDA tests (docs/GPU_RESULTS.md).

pub mod attention;
pub mod backend;
pub mod blas;
pub mod device;
pub mod graph;
pub mod kernels;
mod meta;
pub mod nvrtc;
pub mod qlinear;
pub mod runtime;
mod sample;
mod scratch;
pub mod tiles;
