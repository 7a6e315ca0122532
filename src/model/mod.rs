//! Models and checkpoints: the config, the loaders (GGUF, safetensors), the `Linear` layer and
//! the Llama-family model. `open` is the one entry point the commands use: it takes a GGUF file
//! or a Hugging Face model directory and returns the model on a backend plus its tokenizer.

pub mod config;
pub mod convert;
pub mod gguf;
pub mod linear;
pub mod llama;
pub mod safetensors_io;

use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::tensor::{DType, HostTensor};
use crate::tokenizer::TokenizerBundle;
use config::ModelConfig;
use llama::LlamaModel;
use std::path::Path;

/// A checkpoint seen as tensors with Hugging Face names.
pub trait WeightSource {
    fn tensor_names(&self) -> Vec<String>;
    fn load(&self, name: &str) -> Result<HostTensor>;
}

/// The checkpoint formats ferroq reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Gguf,
    HfDir,
}

impl Format {
    pub fn detect(path: &Path) -> Result<Self> {
        if path.is_dir() {
            Ok(Format::HfDir)
        } else if path.is_file() {
            Ok(Format::Gguf)
        } else {
            Err(Error::io(
                path,
                std::io::Error::new(std::io::ErrorKind::NotFound, "no such file or directory"),
            ))
        }
    }
}

/// A model ready to run, with its tokenizer.
pub struct Loaded<B: Backend> {
    pub model: LlamaModel<B>,
    pub tokenizer: TokenizerBundle,
    pub format: Format,
}

/// Read config.json (plus generation_config.json eos ids, which HF uses to stop generation).
pub fn read_hf_config(dir: &Path) -> Result<ModelConfig> {
    let p = dir.join("config.json");
    let text = std::fs::read_to_string(&p).map_err(|e| Error::io(&p, e))?;
    let mut config = ModelConfig::from_hf_json(&text)?;
    if let Ok(gen) = std::fs::read_to_string(dir.join("generation_config.json")) {
        if let Ok(j) = serde_json::from_str::<serde_json::Value>(&gen) {
            let ids: Vec<u32> = match j.get("eos_token_id") {
                Some(serde_json::Value::Number(n)) => {
                    n.as_u64().into_iter().map(|v| v as u32).collect()
                }
                Some(serde_json::Value::Array(a)) => a
                    .iter()
                    .filter_map(|v| v.as_u64())
                    .map(|v| v as u32)
                    .collect(),
                _ => Vec::new(),
            };
            for id in ids {
                if !config.eos_token_ids.contains(&id) {
                    config.eos_token_ids.push(id);
                }
            }
        }
    }
    Ok(config)
}

/// Open a GGUF file or an HF model directory on `backend`. `weight_dtype` None keeps the
/// checkpoint's dtype (f32 for dequantized GGUF weights).
pub fn open<B: Backend>(backend: B, path: &Path, weight_dtype: Option<DType>) -> Result<Loaded<B>> {
    match Format::detect(path)? {
        Format::Gguf => {
            let file = gguf::GgufFile::open(path)?;
            let config = ModelConfig::from_gguf(&file)?;
            let tokenizer = TokenizerBundle::from_gguf(&file)?;
            let src = gguf::weights::GgufWeights::new(&file, config.clone())?;
            let model = LlamaModel::load(backend, config, &src, weight_dtype)?;
            Ok(Loaded {
                model,
                tokenizer,
                format: Format::Gguf,
            })
        }
        Format::HfDir => {
            let config = read_hf_config(path)?;
            let tokenizer = TokenizerBundle::from_hf_dir(path, &config.eos_token_ids)?;
            let src = safetensors_io::SafetensorsWeights::open_dir(path)?;
            let model = LlamaModel::load(backend, config, &src, weight_dtype)?;
            Ok(Loaded {
                model,
                tokenizer,
                format: Format::HfDir,
            })
        }
    }
}
