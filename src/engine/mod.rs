//! The generation engine: sampling, the single-request loop, and the serving side.
//!
//! - `sampler` (host side of sampling), `generate` (prefill then decode, streamed text),
//!   `scheduler` (continuous batching), `service` (its thread), `metrics`.

pub mod generate;
pub mod metrics;
pub mod sampler;
pub mod scheduler;
pub mod service;
