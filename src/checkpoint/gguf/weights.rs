//! GGUF tensors seen through Hugging Face names.
//!
//! - llama.cpp's converter renames tensors (`blk.N.attn_q.weight`) and, for `llama`, permutes the
//!   rows of attn_q / attn_k for GGML's interleaved RoPE; both are undone here. Its norm names
//!   are roles (`attn_norm`, `ffn_norm`, `post_attention_norm`, `post_ffw_norm`), mapped to each
//!   architecture's HF names; Gemma's norms were stored as 1 + w and are given back as w.
//! - So the one model implementation uses HF's rotate_half RoPE for every source.

use super::GgufFile;
use crate::checkpoint::arch::ArchSpec;
use crate::checkpoint::config::{Arch, ModelConfig};
use crate::checkpoint::WeightSource;
use crate::error::{Error, Result};
use crate::tensor::HostTensor;
use std::collections::BTreeMap;

/// GGUF name -> HF name under the architecture `spec`, or None for a tensor ferroq does not use.
fn hf_name(gguf: &str, spec: &ArchSpec) -> Option<String> {
    let fixed = match gguf {
        "token_embd.weight" => Some("model.embed_tokens.weight"),
        "output_norm.weight" => Some("model.norm.weight"),
        "output.weight" => Some("lm_head.weight"),
        _ => None,
    };
    if let Some(f) = fixed {
        return Some(f.to_string());
    }
    let rest = gguf.strip_prefix("blk.")?;
    let (layer, tail) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let (module, kind) = tail.rsplit_once('.')?;
    let n = &spec.norms;
    let hf_module = match module {
        "attn_norm" => n.pre_attn?,
        "ffn_norm" => n.pre_mlp?,
        "post_attention_norm" => n.post_attn?,
        "post_ffw_norm" => n.post_mlp?,
        "attn_q" => "self_attn.q_proj",
        "attn_k" => "self_attn.k_proj",
        "attn_v" => "self_attn.v_proj",
        "attn_output" => "self_attn.o_proj",
        "attn_q_norm" => "self_attn.q_norm",
        "attn_k_norm" => "self_attn.k_norm",
        "ffn_gate" => "mlp.gate_proj",
        "ffn_up" => "mlp.up_proj",
        "ffn_down" => "mlp.down_proj",
        _ => return None,
    };
    Some(format!("model.layers.{layer}.{hf_module}.{kind}"))
}

/// Undo llama.cpp's `permute(w, n_head)`: GGUF row `h*hd + 2i + j` is HF row `h*hd + j*hd/2 + i`.
/// `data` is `[rows, cols]` row-major (a bias is `cols == 1`).
pub fn unpermute_rows(data: &[f32], rows: usize, cols: usize, n_head: usize) -> Result<Vec<f32>> {
    if n_head == 0
        || !rows.is_multiple_of(n_head)
        || !(rows / n_head).is_multiple_of(2)
        || data.len() != rows * cols
    {
        return Err(Error::GgufInvalid(format!(
            "cannot undo the RoPE permutation of a [{rows}, {cols}] tensor with {n_head} heads"
        )));
    }
    let hd = rows / n_head;
    let mut out = vec![0f32; data.len()];
    for h in 0..n_head {
        for i in 0..hd / 2 {
            for j in 0..2 {
                let src = h * hd + 2 * i + j;
                let dst = h * hd + j * (hd / 2) + i;
                out[dst * cols..(dst + 1) * cols]
                    .copy_from_slice(&data[src * cols..(src + 1) * cols]);
            }
        }
    }
    Ok(out)
}

/// A GGUF model file as a [`WeightSource`]; tensors are dequantized to f32 when loaded.
pub struct GgufWeights<'a> {
    file: &'a GgufFile,
    config: ModelConfig,
    /// HF name -> index into `file.tensors`
    names: BTreeMap<String, usize>,
}

impl<'a> GgufWeights<'a> {
    pub fn new(file: &'a GgufFile, config: ModelConfig) -> Result<Self> {
        let mut names = BTreeMap::new();
        for (i, t) in file.tensors.iter().enumerate() {
            if let Some(n) = hf_name(&t.name, config.arch.spec()) {
                names.insert(n, i);
            }
        }
        Ok(GgufWeights {
            file,
            config,
            names,
        })
    }
}

impl WeightSource for GgufWeights<'_> {
    fn tensor_names(&self) -> Vec<String> {
        self.names.keys().cloned().collect()
    }

    fn load(&self, name: &str) -> Result<HostTensor> {
        let &i = self
            .names
            .get(name)
            .ok_or_else(|| Error::MissingTensor(name.to_string()))?;
        let info = &self.file.tensors[i];
        let shape = info.shape();
        let data = self.file.dequantize(info)?;
        let permute_heads = match self.config.arch {
            Arch::Llama | Arch::Mistral if name.contains("self_attn.q_proj.") => {
                Some(self.config.num_heads)
            }
            Arch::Llama | Arch::Mistral if name.contains("self_attn.k_proj.") => {
                Some(self.config.num_kv_heads)
            }
            _ => None,
        };
        let data = match (permute_heads, &shape[..]) {
            // a matrix, or a bias (the converter permutes attn_q / attn_k biases the same way)
            (Some(n_head), [rows, rest @ ..]) => {
                unpermute_rows(&data, *rows, rest.iter().product(), n_head)?
            }
            (Some(_), []) => {
                return Err(Error::GgufInvalid(format!(
                    "tensor `{}` has no dimensions",
                    info.name
                )))
            }
            (None, _) => data,
        };
        let data = if self.config.arch.spec().norms.unit_offset && name.ends_with("norm.weight") {
            data.into_iter().map(|v| v - 1.0).collect()
        } else {
            data
        };
        HostTensor::from_f32(shape, data)
    }
}
