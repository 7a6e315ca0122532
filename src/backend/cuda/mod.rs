//! The CUDA side of the backend, in progress (issue 5): device discovery through the driver
//! API loaded at run time (`device`), NVRTC compilation of `kernels/*.cu` straight to CUBIN
//! with a disk cache (`nvrtc`), and the typed kernel table (`kernels`). The `Backend`
//! implementation that launches these kernels has not been built yet; `--device cuda` probes
//! the device and then says so. Design after candle's CUDA backend (kernels compiled apart and
//! loaded lazily) and vLLM's csrc kernels.

pub mod backend;
pub mod device;
pub mod kernels;
pub mod nvrtc;
pub mod runtime;
