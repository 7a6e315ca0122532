//! The architectures ferroq runs. Each is one file declaring how its decoder block differs
//! from the shared one ([`spec::ArchSpec`]); the model, the config reader and the quantizer
//! read the declaration instead of matching on the architecture.

pub mod gemma2;
pub mod gemma3;
pub mod llama;
pub mod mistral;
pub mod olmo2;
pub mod phi3;
pub mod qwen2;
pub mod qwen3;
pub mod spec;

pub use spec::{ArchSpec, Biases, GemmaKeys, Mlp, Norms, QkNorm, RopeLayout, Sliding};

/// The architectures, one per HF `model_type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arch {
    Llama,
    Mistral,
    Qwen2,
    Qwen3,
    Phi3,
    Gemma2,
    Gemma3,
    Olmo2,
}

impl Arch {
    pub const ALL: [Arch; 8] = [
        Arch::Llama,
        Arch::Mistral,
        Arch::Qwen2,
        Arch::Qwen3,
        Arch::Phi3,
        Arch::Gemma2,
        Arch::Gemma3,
        Arch::Olmo2,
    ];

    pub fn spec(self) -> &'static ArchSpec {
        match self {
            Arch::Llama => &llama::SPEC,
            Arch::Mistral => &mistral::SPEC,
            Arch::Qwen2 => &qwen2::SPEC,
            Arch::Qwen3 => &qwen3::SPEC,
            Arch::Phi3 => &phi3::SPEC,
            Arch::Gemma2 => &gemma2::SPEC,
            Arch::Gemma3 => &gemma3::SPEC,
            Arch::Olmo2 => &olmo2::SPEC,
        }
    }

    /// The architecture of HF `model_type`.
    pub fn from_model_type(t: &str) -> Option<Arch> {
        Arch::ALL.into_iter().find(|a| a.spec().model_type == t)
    }

    /// The architecture of GGUF `general.architecture`, where ferroq reads that GGUF.
    pub fn from_gguf(t: &str) -> Option<Arch> {
        Arch::ALL.into_iter().find(|a| a.spec().gguf == Some(t))
    }

    /// Model types, for messages.
    pub fn model_types() -> String {
        let names: Vec<&str> = Arch::ALL.iter().map(|a| a.spec().model_type).collect();
        names.join(", ")
    }

    /// GGUF architectures read, for messages.
    pub fn gguf_names() -> String {
        let names: Vec<&str> = Arch::ALL.iter().filter_map(|a| a.spec().gguf).collect();
        names.join(", ")
    }

    pub fn model_type(self) -> &'static str {
        self.spec().model_type
    }
}
