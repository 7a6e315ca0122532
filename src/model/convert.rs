//! `ferroq convert`: a GGUF model written out as a Hugging Face model directory
//! (config.json for `LlamaForCausalLM`, model.safetensors, tokenizer.json,
//! tokenizer_config.json with the chat template, generation_config.json), the form every
//! other ferroq command and the HF ecosystem read. Tensors are dequantized, un-permuted and
//! renamed by `GgufWeights`, then stored in the requested dtype. Files are written into a
//! temporary directory beside `out` and renamed into place at the end, so a failed conversion
//! leaves no half-written model behind.

use crate::error::{Error, Result};
use crate::model::config::ModelConfig;
use crate::model::gguf::{weights::GgufWeights, GgufFile};
use crate::model::WeightSource;
use crate::tensor::DType;
use crate::tokenizer::TokenizerBundle;
use std::collections::HashMap;
use std::path::Path;

fn write_json(path: &Path, v: &serde_json::Value) -> Result<()> {
    let text = serde_json::to_string_pretty(v).map_err(|e| Error::Json(e.to_string()))?;
    std::fs::write(path, text + "\n").map_err(|e| Error::io(path, e))
}

/// Summary of a conversion.
pub struct ConvertReport {
    pub n_tensors: usize,
    pub n_params: usize,
    pub bytes: u64,
}

pub fn gguf_to_hf(gguf_path: &Path, out: &Path, dtype: DType) -> Result<ConvertReport> {
    let file = GgufFile::open(gguf_path)?;
    let config = ModelConfig::from_gguf(&file)?;
    let tok = TokenizerBundle::from_gguf(&file)?;
    let src = GgufWeights::new(&file, config.clone())?;

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
    let tmp = parent.join(format!(".{name}.converting"));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    }
    std::fs::create_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;

    let result = (|| -> Result<ConvertReport> {
        let mut tensors = Vec::new();
        let mut n_params = 0;
        for name in src.tensor_names() {
            let t = src.load(&name)?.to_dtype(dtype);
            n_params += t.numel();
            tensors.push((name, t));
        }
        let n_tensors = tensors.len();
        let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
        let st = tmp.join("model.safetensors");
        super::safetensors_io::write_safetensors(&st, &tensors, Some(meta))?;
        let bytes = std::fs::metadata(&st).map_err(|e| Error::io(&st, e))?.len();

        write_json(
            &tmp.join("config.json"),
            &config.to_hf_json(dtype.hf_name()),
        )?;
        let tj = tmp.join("tokenizer.json");
        std::fs::write(&tj, &tok.json).map_err(|e| Error::io(&tj, e))?;
        write_json(
            &tmp.join("tokenizer_config.json"),
            &tok.tokenizer_config_json(),
        )?;
        let eos = match tok.eos_ids.as_slice() {
            [one] => serde_json::json!(one),
            many => serde_json::json!(many),
        };
        write_json(
            &tmp.join("generation_config.json"),
            &serde_json::json!({"bos_token_id": config.bos_token_id, "eos_token_id": eos}),
        )?;
        Ok(ConvertReport {
            n_tensors,
            n_params,
            bytes,
        })
    })();

    match result {
        Ok(r) => {
            if out.exists() {
                std::fs::remove_dir(out).map_err(|e| Error::io(out, e))?;
            }
            std::fs::rename(&tmp, out).map_err(|e| Error::io(out, e))?;
            Ok(r)
        }
        Err(e) => {
            let _ = std::fs::remove_dir_all(&tmp);
            Err(e)
        }
    }
}
