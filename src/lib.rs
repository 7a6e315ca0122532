//! ferroq: a quantized-LLM inference runtime. Layers, bottom up: `tensor` (dtypes, host
//! tensors), `backend` (the op trait and its CPU implementation), `model` (checkpoint loaders,
//! config, the Llama-family model), `tokenizer` (HF / GGUF tokenizers, chat templates),
//! `engine` (sampling and the generation loop). ARCHITECTURE.md describes the data flow.

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
