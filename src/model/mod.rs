//! Opening a model: a GGUF file or an HF directory, with its tokenizer, on a backend.
//!
//! - `open` is the one entry point the commands use; `read_all` gives the quantizer every tensor
//!   in host memory; `write_model_files` writes config and tokenizer files beside weights.
//! - The model itself is `llama.rs` (built by `load.rs`), its cache `kv.rs`, one sequence's run state `session.rs`.

pub mod convert;
pub mod kv;
pub mod llama;
mod load;
pub mod session;

use crate::backend::Backend;
use crate::checkpoint::config::ModelConfig;
use crate::checkpoint::fused::FusedSplit;
use crate::checkpoint::{
    compressed_config, gguf, read_hf_config, safetensors_io, write_json, Format, WeightSource,
};
use crate::error::{Error, Result};
use crate::tensor::{DType, HostTensor};
use crate::tokenizer::TokenizerBundle;
use llama::LlamaModel;
use std::path::Path;

/// A model ready to run, with its tokenizer.
pub struct Loaded<B: Backend> {
    pub model: LlamaModel<B>,
    pub tokenizer: TokenizerBundle,
    pub format: Format,
}

/// Open a GGUF file or an HF model directory on `backend`. `weight_dtype` None keeps the
/// checkpoint's dtype (f32 for dequantized GGUF weights).
pub fn open<B: Backend>(backend: B, path: &Path, weight_dtype: Option<DType>) -> Result<Loaded<B>> {
    let format = Format::detect(path)?;
    tracing::debug!(
        "opening {} ({format:?}) on {}",
        path.display(),
        backend.describe()
    );
    match format {
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
            let mut config = read_hf_config(path)?;
            let tokenizer = TokenizerBundle::from_hf_dir(path, &config.eos_token_ids)?;
            let model = if compressed_config(path)?.is_some() {
                let src = crate::checkpoint::ct::CompressedTensors::open(path, &config)?;
                config.hadamard = src.hadamard;
                config.lm_head = src.lm_head;
                let src = split(&src, &config);
                LlamaModel::load(backend, config, &*src, weight_dtype)?
            } else {
                let src = safetensors_io::SafetensorsWeights::open_dir(path)?;
                let src = split(&src, &config);
                LlamaModel::load(backend, config, &*src, weight_dtype)?
            };
            Ok(Loaded {
                model,
                tokenizer,
                format: Format::HfDir,
            })
        }
    }
}

/// `src` under the shared block's names: fused projections split where the family fuses them.
fn split<'a>(src: &'a dyn WeightSource, config: &ModelConfig) -> Box<dyn WeightSource + 'a> {
    if config.arch.spec().fused {
        Box::new(FusedSplit::new(src, config.clone()))
    } else {
        Box::new(src)
    }
}

/// Every tensor of a GGUF file or HF directory in host memory (HF names, checkpoint dtype;
/// GGUF tensors dequantized to f32), with the config and tokenizer. The quantizer works on this.
pub fn read_all(
    path: &Path,
) -> Result<(
    ModelConfig,
    TokenizerBundle,
    std::collections::BTreeMap<String, HostTensor>,
)> {
    let mut map = std::collections::BTreeMap::new();
    match Format::detect(path)? {
        Format::Gguf => {
            let file = gguf::GgufFile::open(path)?;
            let config = ModelConfig::from_gguf(&file)?;
            let tok = TokenizerBundle::from_gguf(&file)?;
            let src = gguf::weights::GgufWeights::new(&file, config.clone())?;
            for n in src.tensor_names() {
                map.insert(n.clone(), src.load(&n)?);
            }
            Ok((config, tok, map))
        }
        Format::HfDir => {
            let config = read_hf_config(path)?;
            if let Some(q) = compressed_config(path)? {
                return Err(Error::Config(format!(
                    "{} is already quantized ({q}); quantize the float model instead",
                    path.display()
                )));
            }
            let tok = TokenizerBundle::from_hf_dir(path, &config.eos_token_ids)?;
            let st = safetensors_io::SafetensorsWeights::open_dir(path)?;
            // the quantizer works on the shared block's names; `ptq::fuse` joins them again
            let src = split(&st, &config);
            for n in src.tensor_names() {
                map.insert(n.clone(), src.load(&n)?);
            }
            Ok((config, tok, map))
        }
    }
}

/// config.json (with `quantization_config` if given), tokenizer.json, tokenizer_config.json
/// and generation_config.json of an HF model directory.
pub fn write_model_files(
    dir: &Path,
    config: &ModelConfig,
    torch_dtype: &str,
    quantization: Option<serde_json::Value>,
    tok: &TokenizerBundle,
) -> Result<()> {
    let mut cj = config.to_hf_json(torch_dtype)?;
    if let Some(q) = quantization {
        cj["quantization_config"] = q;
    }
    write_json(&dir.join("config.json"), &cj)?;
    let tj = dir.join("tokenizer.json");
    std::fs::write(&tj, &tok.json).map_err(|e| Error::io(&tj, e))?;
    write_json(
        &dir.join("tokenizer_config.json"),
        &tok.tokenizer_config_json(),
    )?;
    let eos = match tok.eos_ids.as_slice() {
        [one] => serde_json::json!(one),
        many => serde_json::json!(many),
    };
    write_json(
        &dir.join("generation_config.json"),
        &serde_json::json!({"bos_token_id": config.bos_token_id, "eos_token_id": eos}),
    )
}
