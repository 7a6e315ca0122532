//! The generation engine: the sampler, the single-request prefill-then-decode loop with
//! streaming text, and the serving side: the continuous-batching scheduler, its thread and
//! its metrics.

pub mod generate;
pub mod metrics;
pub mod sampler;
pub mod scheduler;
pub mod service;
