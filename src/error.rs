//! The library's one error type.
//!
//! - Every failure a user can cause (a truncated or foreign file, an unknown dtype, a shape that
//!   contradicts the config, a malformed template) is its own variant carrying the names needed
//!   to fix it, so tests can assert the kind and the binary prints one line.
//! - `anyhow` is used only in the binary (`main.rs`, `cli/`).

use std::path::PathBuf;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("not a GGUF file: magic is {found:?}, expected \"GGUF\"")]
    GgufBadMagic { found: [u8; 4] },

    #[error("unsupported GGUF version {0} (ferroq reads versions 2 and 3)")]
    GgufUnsupportedVersion(u32),

    #[error(
        "GGUF file is truncated: {what} needs bytes {start}..{end} but the file has {file_len}"
    )]
    GgufTruncated {
        what: String,
        start: u64,
        end: u64,
        file_len: u64,
    },

    #[error("GGUF metadata value type {0} is unknown")]
    GgufUnknownValueType(u32),

    #[error("tensor `{tensor}` has GGML type {type_id}, which ferroq cannot read")]
    GgufUnknownTensorType { tensor: String, type_id: u32 },

    #[error("GGUF metadata key `{0}` is missing")]
    GgufMissingKey(String),

    #[error("GGUF metadata key `{key}` should be {expected}")]
    GgufBadValue { key: String, expected: &'static str },

    #[error("GGUF: {0}")]
    GgufInvalid(String),

    #[error("tensor `{tensor}` has shape {actual:?} but the model config implies {expected:?}")]
    ShapeMismatch {
        tensor: String,
        expected: Vec<usize>,
        actual: Vec<usize>,
    },

    #[error("tensor `{0}` is missing from the checkpoint")]
    MissingTensor(String),

    #[error("tensor `{tensor}` has dtype {dtype}, which ferroq cannot load here")]
    UnsupportedDType { tensor: String, dtype: String },

    #[error("safetensors: {0}")]
    Safetensors(String),

    #[error("model config: {0}")]
    Config(String),

    #[error("tokenizer: {0}")]
    Tokenizer(String),

    #[error("chat template: {0}")]
    Template(String),

    #[error("sequence of {needed} tokens does not fit the context of {max} tokens")]
    ContextOverflow { needed: usize, max: usize },

    #[error("token id {id} is outside the vocabulary of {vocab} tokens")]
    TokenOutOfRange { id: u32, vocab: usize },

    #[error("invalid argument: {0}")]
    InvalidArgument(String),

    #[error("{0}")]
    Json(String),

    #[error("server: {0}")]
    Server(String),

    #[error("CUDA: {0}")]
    Cuda(String),
}

impl Error {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}
