//! `ferroq convert`: a GGUF model written out as a Hugging Face model directory.
//!
//! - config.json (`LlamaForCausalLM`), model.safetensors, tokenizer.json, tokenizer_config.json
//!   with the chat template, generation_config.json: what every other command and the HF
//!   ecosystem read.
//! - Tensors are dequantized, un-permuted and renamed by `GgufWeights`, stored in the asked dtype.
//! - Written into a temporary directory and renamed at the end, so a failure leaves nothing.

use crate::checkpoint::config::ModelConfig;
use crate::checkpoint::gguf::{weights::GgufWeights, GgufFile};
use crate::checkpoint::WeightSource;
use crate::error::{Error, Result};
use crate::tensor::DType;
use crate::tokenizer::TokenizerBundle;
use std::collections::HashMap;
use std::path::Path;

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

    crate::checkpoint::write_dir_atomically(out, |tmp| {
        let mut tensors = Vec::new();
        let mut n_params = 0;
        for name in src.tensor_names() {
            let t = src.load(&name)?.to_dtype(dtype);
            // what `generate` would refuse later is refused now, before anything is written
            let want = config.expected_shape(&name);
            if t.shape.contains(&0) || want.as_ref().is_some_and(|w| *w != t.shape) {
                return Err(Error::ShapeMismatch {
                    tensor: name,
                    expected: want.unwrap_or_default(),
                    actual: t.shape,
                });
            }
            n_params += t.numel();
            tensors.push((name, t));
        }
        let n_tensors = tensors.len();
        let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
        let st = tmp.join("model.safetensors");
        super::safetensors_io::write_safetensors(&st, &tensors, Some(meta))?;
        let bytes = std::fs::metadata(&st).map_err(|e| Error::io(&st, e))?.len();
        super::write_model_files(tmp, &config, dtype.hf_name(), None, &tok)?;
        Ok(ConvertReport {
            n_tensors,
            n_params,
            bytes,
        })
    })
}
