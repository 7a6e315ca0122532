//! ferroq: a quantized-LLM inference runtime.
//!
//! - Layers, bottom up: `error`, `tensor`, `quant` (formats), `backend` (op traits, CPU, CUDA),
//!   `checkpoint` (readers), `tokenizer`, `model`, `engine`, `eval`, `ptq` (calibration and
//!   quantization), then `server` / `bench` / `report` / `vision`.
//! - `tests/layering.rs` enforces the order; ARCHITECTURE.md describes the data flow.

pub mod backend;
pub mod bench;
pub mod checkpoint;
pub mod engine;
pub mod error;
pub mod eval;
pub mod model;
pub mod ptq;
pub mod quant;
pub mod report;
pub mod server;
pub mod tensor;
pub mod tokenizer;
pub mod vision;

pub use error::{Error, Result};
