//! The CUDA side of the backend, unvalidated on hardware until a GPU session runs its tests.
//!
//! - Files in layers: `device` / `nvrtc` / `kernels` / `tiles` (discovery, compilation to CUBIN,
//!   the kernel table, GEMM tiles), `runtime` (the device and its modules), `launch` (plumbing),
//!   `graph` / `meta` / `scratch` (graphs, metadata, scratch), `blas`, `backend` (state), then the
//!   op files `qlinear` / `attention` / `sample` and `ops` (the role traits).
//! - Design after candle's CUDA backend (kernels compiled apart, loaded lazily) and vLLM's csrc
//!   kernels; results go to docs/GPU_RESULTS.md.

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
