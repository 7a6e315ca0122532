//! Models and checkpoints: the config, the loaders (GGUF, safetensors), the `Linear` layer and
//! the Llama-family model. `open` is the one entry point the commands use: it takes a GGUF file
//! or a Hugging Face model directory and returns the model on a backend plus its tokenizer.

pub mod config;
pub mod convert;
pub mod gguf;
pub mod hadamard;
pub mod kv;
pub mod linear;
pub mod llama;
pub mod safetensors_io;
pub mod session;

use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::quant::{ActSpec, QuantWeight};
use crate::tensor::{DType, HostTensor};
use crate::tokenizer::TokenizerBundle;
use config::ModelConfig;
use llama::LlamaModel;
use std::path::Path;

/// A checkpoint seen as tensors with Hugging Face names.
pub trait WeightSource {
    fn tensor_names(&self) -> Vec<String>;
    fn load(&self, name: &str) -> Result<HostTensor>;
    /// The quantized weight and activation policy of linear `name` (HF module name, e.g.
    /// `model.layers.0.self_attn.q_proj`), or None when it is dense.
    fn quant_linear(&self, _name: &str) -> Result<Option<(QuantWeight, ActSpec)>> {
        Ok(None)
    }
    /// The online rotation these weights were made for, when the source knows it (quantized
    /// models); loading checks it against the config so rotated weights never run unrotated.
    fn online_hadamard(&self) -> Option<hadamard::OnlineHadamard> {
        None
    }
}

/// A map of host tensors (HF names) is a weight source too.
impl WeightSource for std::collections::BTreeMap<String, HostTensor> {
    fn tensor_names(&self) -> Vec<String> {
        self.keys().cloned().collect()
    }
    fn load(&self, name: &str) -> Result<HostTensor> {
        self.get(name)
            .cloned()
            .ok_or_else(|| Error::MissingTensor(name.to_string()))
    }
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
            let mut config = read_hf_config(path)?;
            let tokenizer = TokenizerBundle::from_hf_dir(path, &config.eos_token_ids)?;
            let model = if compressed_config(path)?.is_some() {
                let src = crate::quant::ct::CompressedTensors::open(path, &config)?;
                config.hadamard = src.hadamard;
                config.lm_head = src.lm_head;
                LlamaModel::load(backend, config, &src, weight_dtype)?
            } else {
                let src = safetensors_io::SafetensorsWeights::open_dir(path)?;
                LlamaModel::load(backend, config, &src, weight_dtype)?
            };
            Ok(Loaded {
                model,
                tokenizer,
                format: Format::HfDir,
            })
        }
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
            let src = safetensors_io::SafetensorsWeights::open_dir(path)?;
            for n in src.tensor_names() {
                map.insert(n.clone(), src.load(&n)?);
            }
            Ok((config, tok, map))
        }
    }
}

/// The `quantization_config.format` of a compressed-tensors checkpoint, if the directory is one.
pub fn compressed_config(dir: &Path) -> Result<Option<String>> {
    let p = dir.join("config.json");
    let text = std::fs::read_to_string(&p).map_err(|e| Error::io(&p, e))?;
    let j: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| Error::Config(format!("config.json: {e}")))?;
    Ok(j.get("quantization_config").map(|q| {
        q.get("format")
            .and_then(|f| f.as_str())
            .unwrap_or("unknown format")
            .to_string()
    }))
}

/// Create the model directory `out` atomically: `fill` writes into a temporary sibling
/// directory, which is renamed to `out` only if it succeeds (and removed if it fails). An
/// existing non-empty `out` is refused, so nothing a user has is overwritten.
pub fn write_dir_atomically<T>(out: &Path, fill: impl FnOnce(&Path) -> Result<T>) -> Result<T> {
    if out.exists()
        && std::fs::read_dir(out)
            .map_err(|e| Error::io(out, e))?
            .next()
            .is_some()
    {
        return Err(Error::InvalidArgument(format!(
            "output directory {} exists and is not empty",
            out.display()
        )));
    }
    let parent = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model".into());
    let tmp = parent.join(format!(".{name}.partial"));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    }
    std::fs::create_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    match fill(&tmp) {
        Ok(v) => {
            if out.exists() {
                std::fs::remove_dir(out).map_err(|e| Error::io(out, e))?;
            }
            std::fs::rename(&tmp, out).map_err(|e| Error::io(out, e))?;
            Ok(v)
        }
        Err(e) => {
            let _ = std::fs::remove_dir_all(&tmp);
            Err(e)
        }
    }
}

/// Pretty JSON with a trailing newline.
pub fn write_json(path: &Path, v: &serde_json::Value) -> Result<()> {
    let text = serde_json::to_string_pretty(v).map_err(|e| Error::Json(e.to_string()))?;
    std::fs::write(path, text + "\n").map_err(|e| Error::io(path, e))
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
    let mut cj = config.to_hf_json(torch_dtype);
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
