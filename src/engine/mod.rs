//! The generation engine: the sampler and the prefill-then-decode loop with streaming text.

pub mod generate;
pub mod sampler;
