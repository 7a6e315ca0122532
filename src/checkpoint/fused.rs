//! Fused projections (Phi-3's `qkv_proj` and `gate_up_proj`) seen as the separate linears of
//! the shared block.
//!
//! - transformers' Phi3 slices q, k, v from one [q_dim + 2 kv_dim, dim] matrix in that order and
//!   gate, up from one [2 ffn, dim] matrix (`chunk(2)`: gate first); the rows are cut the same
//!   way here, in the stored dtype (`HostTensor::rows`: an exact copy).
//! - Quantized fused projections are cut the same way: every format keeps its scales per output
//!   row (`QuantWeight::rows`).

use crate::checkpoint::config::ModelConfig;
use crate::checkpoint::site::{layer_module, OnlineHadamard};
use crate::checkpoint::WeightSource;
use crate::error::{Error, Result};
use crate::quant::{ActSpec, QuantWeight};
use crate::tensor::HostTensor;

/// The linears of `num_layers` blocks as a fused checkpoint stores them, in layer order.
pub fn stored_linears(num_layers: usize) -> Vec<String> {
    (0..num_layers)
        .flat_map(|l| {
            [
                "self_attn.qkv_proj",
                "self_attn.o_proj",
                "mlp.gate_up_proj",
                "mlp.down_proj",
            ]
            .map(|m| format!("model.layers.{l}.{m}"))
        })
        .collect()
}

/// `inner` under the shared block's names: `self_attn.{q,k,v}_proj.weight` and
/// `mlp.{gate,up}_proj.weight` are row ranges of the fused tensors.
pub struct FusedSplit<'a> {
    inner: &'a dyn WeightSource,
    config: ModelConfig,
}

impl<'a> FusedSplit<'a> {
    pub fn new(inner: &'a dyn WeightSource, config: ModelConfig) -> Self {
        FusedSplit { inner, config }
    }

    /// (fused tensor, its rows, first row, rows) holding the split tensor `name`, if it is one.
    fn source(&self, name: &str) -> Option<(String, usize, usize, usize)> {
        let c = &self.config;
        let (layer, module) = layer_module(name)?;
        let (qd, kvd, ffn) = (c.q_dim(), c.kv_dim(), c.intermediate_size);
        let p = format!("model.layers.{layer}");
        let (qkv, gate_up) = ("self_attn.qkv_proj.weight", "mlp.gate_up_proj.weight");
        let (fused, total, start, rows) = match module {
            "self_attn.q_proj.weight" => (qkv, qd + 2 * kvd, 0, qd),
            "self_attn.k_proj.weight" => (qkv, qd + 2 * kvd, qd, kvd),
            "self_attn.v_proj.weight" => (qkv, qd + 2 * kvd, qd + kvd, kvd),
            "mlp.gate_proj.weight" => (gate_up, 2 * ffn, 0, ffn),
            "mlp.up_proj.weight" => (gate_up, 2 * ffn, ffn, ffn),
            _ => return None,
        };
        Some((format!("{p}.{fused}"), total, start, rows))
    }
}

impl WeightSource for FusedSplit<'_> {
    fn tensor_names(&self) -> Vec<String> {
        let mut names = Vec::new();
        for n in self.inner.tensor_names() {
            let split: &[&str] = match layer_module(&n) {
                Some((_, "self_attn.qkv_proj.weight")) => &["q_proj", "k_proj", "v_proj"],
                Some((_, "mlp.gate_up_proj.weight")) => &["gate_proj", "up_proj"],
                _ => {
                    names.push(n);
                    continue;
                }
            };
            let prefix = n.rsplit_once('.').and_then(|(m, _)| m.rsplit_once('.'));
            if let Some((parent, _)) = prefix {
                names.extend(split.iter().map(|s| format!("{parent}.{s}.weight")));
            }
        }
        names
    }

    fn load(&self, name: &str) -> Result<HostTensor> {
        let Some((fused, total, start, rows)) = self.source(name) else {
            return self.inner.load(name);
        };
        let t = self.inner.load(&fused)?;
        // the whole fused matrix must be what the config says, or the slices would be wrong
        if !matches!(t.shape[..], [n, _] if n == total) {
            return Err(Error::ShapeMismatch {
                tensor: fused,
                expected: vec![total, self.config.hidden_size],
                actual: t.shape.clone(),
            });
        }
        t.rows(start, rows)
    }

    fn quant_linear(&self, name: &str) -> Result<Option<(QuantWeight, ActSpec)>> {
        let Some((fused, total, start, rows)) = self.source(&format!("{name}.weight")) else {
            return self.inner.quant_linear(name);
        };
        let module = fused.trim_end_matches(".weight");
        // the parts share the fused module's activation policy: they read one input
        match self.inner.quant_linear(module)? {
            None => Ok(None),
            Some((q, act)) => {
                let part = q
                    .rows(start, rows, total, self.config.hidden_size)
                    .map_err(|e| Error::Config(format!("`{module}`: {e}")))?;
                Ok(Some((part, act)))
            }
        }
    }

    fn online_hadamard(&self) -> Option<OnlineHadamard> {
        self.inner.online_hadamard()
    }
}
