//! Building the decoder from a checkpoint: every tensor by HF name, shape-checked, uploaded in
//! the requested dtype; the block's optional parts (norms, QK-norm, biases) as the
//! architecture declares them (`checkpoint::arch`).

use super::llama::{Layer, LlamaModel};
use crate::backend::linear::{Linear, LinearWeight};
use crate::backend::Backend;
use crate::checkpoint::arch::QkNorm;
use crate::checkpoint::config::{LmHead, ModelConfig};
use crate::checkpoint::site::layer_module;
use crate::checkpoint::WeightSource;
use crate::error::{Error, Result};
use crate::quant::hadamard;
use crate::quant::weight::{quantize_weight, WeightMethod, WeightQConfig, WeightScope};
use crate::quant::{ActQuant, ActSpec, QDType};
use crate::tensor::{DType, HostTensor};
use std::sync::Arc;

fn load_checked(src: &dyn WeightSource, name: &str, shape: &[usize]) -> Result<HostTensor> {
    let t = src.load(name)?;
    t.expect_shape(name, shape)?;
    Ok(t)
}

/// The LM head in int8 from its float weight `t` (vocab, dim): per-channel symmetric weights
/// of W·H and a per-token int8 input rotated by the same block Hadamard H (returned, for
/// `logits` to apply). QuaRot-style: unrotated, per-token int8 of the final norm's output cost
/// 0.0064 mean KL on wikitext-2 (40 chunks, w8a8 model; 0.0022 with a float head); rotated
/// 0.0031 (10 chunks; weight-only int8: 0.0028).
fn int8_lm_head<B: Backend>(
    backend: &B,
    t: &HostTensor,
    vocab: usize,
    dim: usize,
) -> Result<(Linear<B>, Option<usize>)> {
    let mut wf = t.to_f32_vec(); // (vocab, dim)
    let block = hadamard::block_for(dim);
    if let Some(b) = block {
        hadamard::fwht(&mut wf, b);
    }
    let cfg = WeightQConfig {
        dtype: QDType::Int8,
        scope: WeightScope::PerChannel,
        symmetric: true,
        method: WeightMethod::MinMax,
    };
    let q = quantize_weight(&wf, vocab, dim, &cfg)?;
    let head = Linear {
        name: "lm_head".into(),
        in_features: dim,
        out_features: vocab,
        weight: LinearWeight::Quant(backend.upload_quant(&q, vocab, dim)?),
        bias: None,
        // per-token asymmetric: the final norm's output is not centred
        act: ActSpec {
            policy: ActQuant::Dynamic,
            dtype: QDType::Int8,
            symmetric: false,
        },
    };
    Ok((head, block))
}

impl<B: Backend> LlamaModel<B> {
    /// Build the model from `src` (HF tensor names). `weight_dtype` None keeps each tensor's
    /// checkpoint dtype for the embedding's dtype and all matrices.
    pub fn load(
        backend: B,
        config: ModelConfig,
        src: &dyn WeightSource,
        weight_dtype: Option<DType>,
    ) -> Result<Self> {
        let c = &config;
        if let Some(h) = src.online_hadamard() {
            if h != c.hadamard {
                return Err(Error::Config(format!(
                    "the weights were made for online Hadamard rotation {:?} but the config asks for {:?}",
                    h.sites(),
                    c.hadamard.sites()
                )));
            }
        }
        for (site, block) in c.hadamard.sites() {
            if !c.site_dim(site).is_multiple_of(block) {
                return Err(Error::Config(format!(
                    "hadamard block {block} does not divide {} ({} channels)",
                    site.name(),
                    c.site_dim(site)
                )));
            }
        }
        // a checkpoint with more layers than the config says would run truncated without a word
        if let Some(extra) = src
            .tensor_names()
            .into_iter()
            .find(|n| layer_module(n).is_some_and(|(l, _)| l >= c.num_layers))
        {
            return Err(Error::Config(format!(
                "the checkpoint has tensor `{extra}` but the config says {} layers",
                c.num_layers
            )));
        }
        let (dim, qd, kvd, ffn) = (c.hidden_size, c.q_dim(), c.kv_dim(), c.intermediate_size);
        let embed_t = load_checked(src, "model.embed_tokens.weight", &[c.vocab_size, dim])?;
        let wdt = weight_dtype.unwrap_or(embed_t.dtype());
        let vector = |name: &str, n: usize| -> Result<B::Buf> {
            backend.upload(&load_checked(src, name, &[n])?.to_f32_vec())
        };
        let linear = |name: &str, out_f: usize, in_f: usize, bias: bool| -> Result<Linear<B>> {
            let bias = if bias {
                Some(vector(&format!("{name}.bias"), out_f)?)
            } else {
                None
            };
            let (weight, act) = match src.quant_linear(name)? {
                Some((q, act)) => {
                    let up = backend
                        .upload_quant(&q, out_f, in_f)
                        .map_err(|e| Error::Config(format!("{name}: {e}")))?;
                    (LinearWeight::Quant(up), act)
                }
                None => {
                    let w = load_checked(src, &format!("{name}.weight"), &[out_f, in_f])?;
                    (
                        LinearWeight::Dense(Arc::new(backend.upload_matrix(&w, wdt)?)),
                        ActSpec::NONE,
                    )
                }
            };
            Ok(Linear {
                name: name.to_string(),
                in_features: in_f,
                out_features: out_f,
                weight,
                bias,
                act,
            })
        };
        let spec = c.arch.spec();
        // Gemma's RMSNorm scales by (1 + w): the 1 is added here, once
        let offset = if spec.norms.unit_offset { 1.0 } else { 0.0 };
        let norm = |name: &str, n: usize| -> Result<B::Buf> {
            let mut w = load_checked(src, name, &[n])?.to_f32_vec();
            w.iter_mut().for_each(|v| *v += offset);
            backend.upload(&w)
        };
        let mut layers = Vec::with_capacity(c.num_layers);
        for l in 0..c.num_layers {
            let p = format!("model.layers.{l}");
            let block_norm = |which: Option<&str>| -> Result<Option<B::Buf>> {
                which
                    .map(|m| norm(&format!("{p}.{m}.weight"), dim))
                    .transpose()
            };
            let n = &spec.norms;
            let qk_norm = match spec.qk_norm {
                QkNorm::None => None,
                QkNorm::PerHead => Some((c.head_dim, c.head_dim)),
                QkNorm::Full => Some((qd, kvd)),
            };
            layers.push(Layer {
                attn_norm: block_norm(n.pre_attn)?,
                q: linear(&format!("{p}.self_attn.q_proj"), qd, dim, c.qkv_bias)?,
                k: linear(&format!("{p}.self_attn.k_proj"), kvd, dim, c.qkv_bias)?,
                v: linear(&format!("{p}.self_attn.v_proj"), kvd, dim, c.qkv_bias)?,
                o: linear(&format!("{p}.self_attn.o_proj"), dim, qd, c.o_bias)?,
                qk_norm: qk_norm
                    .map(|(qn, kn)| -> Result<_> {
                        Ok((
                            norm(&format!("{p}.self_attn.q_norm.weight"), qn)?,
                            norm(&format!("{p}.self_attn.k_norm.weight"), kn)?,
                        ))
                    })
                    .transpose()?,
                post_attn_norm: block_norm(n.post_attn)?,
                mlp_norm: block_norm(n.pre_mlp)?,
                gate: linear(&format!("{p}.mlp.gate_proj"), ffn, dim, c.mlp_bias)?,
                up: linear(&format!("{p}.mlp.up_proj"), ffn, dim, c.mlp_bias)?,
                down: linear(&format!("{p}.mlp.down_proj"), dim, ffn, c.mlp_bias)?,
                post_mlp_norm: block_norm(n.post_mlp)?,
            });
        }
        // transformers multiplies by √hidden_size cast to the embedding's dtype
        let embed_scale = spec.embed_scale.then(|| {
            let s = (dim as f32).sqrt();
            match embed_t.dtype() {
                DType::F32 => s,
                DType::BF16 => half::bf16::from_f32(s).to_f32(),
                DType::F16 => half::f16::from_f32(s).to_f32(),
            }
        });
        let embed = Arc::new(backend.upload_matrix(&embed_t, wdt)?);
        // An int8 head is built from the float weights (the tied embedding or lm_head.weight)
        // unless the checkpoint quantized lm_head itself.
        let int8_head = c.lm_head == LmHead::Int8
            && (c.tie_word_embeddings || src.quant_linear("lm_head")?.is_none());
        let (lm_head, lm_head_block) = if int8_head {
            let t = if c.tie_word_embeddings {
                embed_t
            } else {
                load_checked(src, "lm_head.weight", &[c.vocab_size, dim])?
            };
            int8_lm_head(&backend, &t, c.vocab_size, dim)?
        } else if c.tie_word_embeddings {
            let head = Linear {
                name: "lm_head".into(),
                in_features: dim,
                out_features: c.vocab_size,
                weight: LinearWeight::Dense(embed.clone()),
                bias: None,
                act: ActSpec::NONE,
            };
            (head, None)
        } else {
            let mut l = linear("lm_head", c.vocab_size, dim, false)?;
            l.name = "lm_head".into();
            (l, None)
        };
        let norm = norm("model.norm.weight", dim)?;
        Ok(LlamaModel {
            config,
            weight_dtype: wdt,
            embed,
            layers,
            norm,
            lm_head,
            lm_head_block,
            embed_scale,
            backend,
        })
    }
}
