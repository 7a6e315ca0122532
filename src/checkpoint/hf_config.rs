//! `ModelConfig` from and to a Hugging Face `config.json`, read as transformers 5 reads it.
//!
//! - Each architecture's quirks come from its declaration (`super::arch`): which keys it reads,
//!   their class defaults, its sliding-window rule and RoPE layout.
//! - `rope_scaling` beats `rope_parameters` when both are there, as in transformers 5; Gemma 3
//!   keeps one RoPE per layer type.
//! - A key that changes the math and is not implemented for the architecture is refused by
//!   name; `to_hf_json` writes what the architecture's config class reads back unchanged.

use crate::checkpoint::arch::{Arch, Biases, RopeLayout, Sliding};
use crate::checkpoint::config::{layer_count, LmHead, ModelConfig, RopeScaling};
use crate::checkpoint::site::OnlineHadamard;
use crate::error::{Error, Result};
use serde_json::{json, Map, Value as Json};

fn field<'a>(j: &'a Json, key: &str) -> Result<&'a Json> {
    j.get(key)
        .filter(|v| !v.is_null())
        .ok_or_else(|| Error::Config(format!("config.json has no `{key}`")))
}

fn usize_field(j: &Json, key: &str) -> Result<usize> {
    field(j, key)?
        .as_u64()
        .map(|v| v as usize)
        .ok_or_else(|| Error::Config(format!("`{key}` must be a non-negative integer")))
}

/// An optional field: absent or null gives `default`; present with another type is an error
/// naming it (a typo'd value must not silently become the default).
fn opt_field<'a, T>(
    j: &'a Json,
    key: &str,
    default: T,
    read: impl Fn(&'a Json) -> Option<T>,
    expected: &str,
) -> Result<T> {
    match j.get(key).filter(|v| !v.is_null()) {
        None => Ok(default),
        Some(v) => read(v).ok_or_else(|| {
            Error::Config(format!("config.json `{key}` must be {expected}, got {v}"))
        }),
    }
}

/// A key whose class default applies when it is absent, while an explicit null means none
/// (Gemma's soft-capping, the sliding window).
fn defaulted_f64(j: &Json, key: &str, default: Option<f64>) -> Result<Option<f64>> {
    match j.get(key) {
        None => Ok(default),
        Some(Json::Null) => Ok(None),
        Some(v) => v
            .as_f64()
            .map(Some)
            .ok_or_else(|| Error::Config(format!("config.json `{key}` must be a number, got {v}"))),
    }
}

fn token_ids(v: Option<&Json>) -> Vec<u32> {
    match v {
        Some(Json::Number(n)) => n.as_u64().map(|x| vec![x as u32]).unwrap_or_default(),
        Some(Json::Array(a)) => a
            .iter()
            .filter_map(|x| x.as_u64())
            .map(|x| x as u32)
            .collect(),
        _ => Vec::new(),
    }
}

/// Keys of HF configs (of any family) that change the math and are not implemented for
/// `arch`: (key, its neutral value). A key present with a non-neutral value is refused by name
/// rather than ignored.
fn refuse_unimplemented(j: &Json, arch: Arch) -> Result<()> {
    /// The value of a key that leaves the math as the shared block computes it.
    enum Neutral {
        /// only absent or null
        Absent,
        False,
        One,
    }
    const GEMMA_KEYS: [&str; 3] = [
        "attn_logit_softcapping",
        "final_logit_softcapping",
        "query_pre_attn_scalar",
    ];
    const KEYS: [(&str, Neutral); 11] = [
        ("attn_logit_softcapping", Neutral::Absent),
        ("final_logit_softcapping", Neutral::Absent),
        ("query_pre_attn_scalar", Neutral::Absent),
        ("use_qk_norm", Neutral::False),
        ("qk_norm", Neutral::False),
        ("embedding_multiplier", Neutral::One),
        ("logits_scaling", Neutral::One),
        ("residual_multiplier", Neutral::One),
        ("attention_multiplier", Neutral::Absent),
        ("no_rope_layers", Neutral::Absent),
        ("use_bidirectional_attention", Neutral::False),
    ];
    let spec = arch.spec();
    for (key, neutral) in KEYS {
        if spec.gemma_keys.is_some() && GEMMA_KEYS.contains(&key) {
            continue;
        }
        let Some(v) = j.get(key).filter(|v| !v.is_null()) else {
            continue;
        };
        let harmless = match neutral {
            Neutral::Absent => false,
            Neutral::False => v.as_bool() == Some(false),
            Neutral::One => v.as_f64() == Some(1.0),
        };
        if !harmless {
            return Err(Error::Config(format!(
                "config.json `{key}` = {v} changes the model's math and is not implemented for \
                 model_type `{}`",
                spec.model_type
            )));
        }
    }
    // Llama's pretraining_tp > 1 splits its linears in pretraining only: the same math
    Ok(())
}

fn dict(j: &Json, key: &str) -> Result<Option<Map<String, Json>>> {
    match j.get(key) {
        None | Some(Json::Null) => Ok(None),
        Some(Json::Object(m)) if m.is_empty() => Ok(None),
        Some(Json::Object(m)) => Ok(Some(m.clone())),
        Some(v) => Err(Error::Config(format!(
            "config.json `{key}` must be an object, got {v}"
        ))),
    }
}

/// RoPE settings, resolved as transformers 5 does: (rope_theta, scaling) of every layer (of the
/// full-attention layers where the layout is per layer type), and the sliding layers' own.
type RopeSettings = (
    (f64, Option<RopeScaling>),
    Option<(f64, Option<RopeScaling>)>,
);

fn rope_settings(j: &Json, arch: Arch, head_dim: usize, max_pos: usize) -> Result<RopeSettings> {
    let spec = arch.spec();
    // the config class's own original_max_position_embeddings wins over the RoPE dict's
    let mut top = j.clone();
    if let Some(orig) = spec.default_original_max {
        if top.get("original_max_position_embeddings").is_none() {
            top["original_max_position_embeddings"] = json!(orig);
        }
    }
    let parse = |rp: Map<String, Json>| {
        crate::checkpoint::rope::parse(&Json::Object(rp), &top, head_dim, max_pos)
    };
    let set_default =
        |rp: &mut Map<String, Json>, key: &str, from: &str, default: Option<f64>| match j
            .get(from)
            .filter(|v| !v.is_null())
        {
            Some(v) => {
                rp.entry(key).or_insert_with(|| v.clone());
            }
            None => {
                if let Some(d) = default {
                    rp.entry(key).or_insert_with(|| json!(d));
                }
            }
        };
    let rope_params = dict(j, "rope_parameters")?;
    let per_type = rope_params
        .as_ref()
        .is_some_and(|m| m.contains_key("full_attention") || m.contains_key("sliding_attention"));
    match spec.rope {
        RopeLayout::Shared => {
            if per_type {
                return Err(Error::Config(format!(
                    "per-layer-type `rope_parameters` are not supported for model_type `{}`",
                    spec.model_type
                )));
            }
            let mut rp = match dict(j, "rope_scaling")? {
                Some(m) => m,
                None => rope_params.unwrap_or_default(),
            };
            set_default(&mut rp, "rope_theta", "rope_theta", None);
            set_default(
                &mut rp,
                "partial_rotary_factor",
                "partial_rotary_factor",
                None,
            );
            Ok((parse(rp)?, None))
        }
        RopeLayout::PerLayerType => {
            // Gemma3TextConfig: rope_scaling updates the full-attention set; rope_theta (1e6)
            // and rope_local_base_freq (1e4) fill in missing thetas
            let sub = |key: &str| -> Result<Map<String, Json>> {
                match rope_params.as_ref().and_then(|m| m.get(key)) {
                    None | Some(Json::Null) => Ok(Map::new()),
                    Some(Json::Object(m)) => Ok(m.clone()),
                    Some(v) => Err(Error::Config(format!(
                        "config.json `rope_parameters.{key}` must be an object, got {v}"
                    ))),
                }
            };
            if rope_params.is_some() && !per_type {
                return Err(Error::Config(format!(
                    "model_type `{}` keeps `rope_parameters` per layer type (full_attention, \
                     sliding_attention)",
                    spec.model_type
                )));
            }
            let mut full = sub("full_attention")?;
            if let Some(rs) = dict(j, "rope_scaling")? {
                full.extend(rs);
            }
            set_default(&mut full, "rope_theta", "rope_theta", Some(1e6));
            let mut local = sub("sliding_attention")?;
            set_default(&mut local, "rope_theta", "rope_local_base_freq", Some(1e4));
            Ok((parse(full)?, Some(parse(local)?)))
        }
    }
}

/// Per layer: whether `layer_types` marks it `sliding_attention`.
fn layer_types(j: &Json, layers: usize) -> Result<Option<Vec<bool>>> {
    let Some(v) = j.get("layer_types").filter(|v| !v.is_null()) else {
        return Ok(None);
    };
    let list = v.as_array().ok_or_else(|| {
        Error::Config(format!("config.json `layer_types` must be a list, got {v}"))
    })?;
    if list.len() != layers {
        return Err(Error::Config(format!(
            "config.json `layer_types` lists {} layers, num_hidden_layers is {layers}",
            list.len()
        )));
    }
    list.iter()
        .map(|t| match t.as_str() {
            Some("full_attention") => Ok(false),
            Some("sliding_attention") => Ok(true),
            _ => Err(Error::Config(format!(
                "layer type {t} is not supported (full_attention, sliding_attention)"
            ))),
        })
        .collect::<Result<Vec<bool>>>()
        .map(Some)
}

/// (sliding_window, which layers are sliding-attention layers), by the architecture's rule
/// (`arch::Sliding`).
fn sliding(j: &Json, arch: Arch, layers: usize) -> Result<(Option<usize>, Vec<bool>)> {
    let window = |class_default: Option<f64>| -> Result<Option<usize>> {
        let w = defaulted_f64(j, "sliding_window", class_default)?;
        match w {
            Some(w) if w.fract() != 0.0 || w < 0.0 => Err(Error::Config(format!(
                "config.json `sliding_window` must be a non-negative integer, got {w}"
            ))),
            Some(w) => Ok(Some(if w >= usize::MAX as f64 {
                usize::MAX
            } else {
                w as usize
            })),
            None => Ok(None),
        }
    };
    let none = (None, vec![false; layers]);
    Ok(match arch.spec().sliding {
        Sliding::None => none,
        // every layer, whatever layer_types says
        Sliding::Every => match window(None)? {
            Some(w) => (Some(w), vec![true; layers]),
            None => none,
        },
        Sliding::Qwen => {
            let on = opt_field(
                j,
                "use_sliding_window",
                false,
                Json::as_bool,
                "true or false",
            )?;
            match window(Some(4096.0))?.filter(|_| on) {
                None => none,
                Some(w) => {
                    let kinds = match layer_types(j, layers)? {
                        Some(k) => k,
                        None => {
                            let from =
                                opt_field(j, "max_window_layers", 28, Json::as_u64, "an integer")?;
                            (0..layers).map(|l| l as u64 >= from).collect()
                        }
                    };
                    (Some(w), kinds)
                }
            }
        }
        Sliding::Pattern { pattern, .. } => {
            let pattern = opt_field(
                j,
                "sliding_window_pattern",
                pattern as u64,
                Json::as_u64,
                "a positive integer",
            )?
            .max(1);
            let kinds = match layer_types(j, layers)? {
                Some(k) => k,
                None => (0..layers)
                    .map(|i| !(i as u64 + 1).is_multiple_of(pattern))
                    .collect(),
            };
            // the layer kinds also pick the RoPE of each layer, so they stay without a window
            (window(Some(4096.0))?, kinds)
        }
    })
}

impl ModelConfig {
    /// Parse a Hugging Face `config.json`.
    pub fn from_hf_json(text: &str) -> Result<Self> {
        let j: Json = serde_json::from_str(text)
            .map_err(|e| Error::Config(format!("config.json is not valid JSON: {e}")))?;
        let model_type = field(&j, "model_type")?.as_str().unwrap_or("");
        let arch = Arch::from_model_type(model_type).ok_or_else(|| {
            Error::Config(format!(
                "model_type `{model_type}` is not supported ({})",
                Arch::model_types()
            ))
        })?;
        let spec = arch.spec();
        let want = spec.mlp.hf_name();
        let act = opt_field(&j, spec.act_key, want, Json::as_str, "a string")?;
        if act != want {
            return Err(Error::Config(format!(
                "{} `{act}` is not supported for model_type `{model_type}` ({want})",
                spec.act_key
            )));
        }
        let hidden_size = usize_field(&j, "hidden_size")?;
        let num_heads = usize_field(&j, "num_attention_heads")?;
        let num_kv_heads = match j.get("num_key_value_heads").filter(|v| !v.is_null()) {
            Some(_) => usize_field(&j, "num_key_value_heads")?,
            None => num_heads,
        };
        let head_dim = match j.get("head_dim").filter(|v| !v.is_null()) {
            Some(_) => usize_field(&j, "head_dim")?,
            None if num_heads > 0 => hidden_size / num_heads,
            None => 0,
        };
        refuse_unimplemented(&j, arch)?;
        let num_layers = layer_count(usize_field(&j, "num_hidden_layers")?)?;
        let max_position_embeddings: usize = opt_field(
            &j,
            "max_position_embeddings",
            4096,
            Json::as_u64,
            "a non-negative integer",
        )?
        .try_into()
        .unwrap_or(usize::MAX);
        let ((rope_theta, rope_scaling), local_rope) =
            rope_settings(&j, arch, head_dim, max_position_embeddings)?;
        let attention_bias =
            opt_field(&j, "attention_bias", false, Json::as_bool, "true or false")?;
        let mlp_bias = opt_field(&j, "mlp_bias", false, Json::as_bool, "true or false")?;
        let (sliding_window, sliding_layers) = sliding(&j, arch, num_layers)?;
        let (qkv_bias, o_bias) = match spec.biases {
            Biases::None => (false, false),
            Biases::AttentionKey => (attention_bias, attention_bias),
            Biases::Qkv => (true, false),
        };
        let (query_pre_attn_scalar, attn_softcap, final_softcap) = match &spec.gemma_keys {
            None => (None, None, None),
            Some(g) => (
                defaulted_f64(&j, "query_pre_attn_scalar", Some(g.query_pre_attn_scalar))?,
                defaulted_f64(&j, "attn_logit_softcapping", g.attn_softcap)?,
                defaulted_f64(&j, "final_logit_softcapping", g.final_softcap)?,
            ),
        };
        ModelConfig {
            arch,
            hidden_size,
            intermediate_size: usize_field(&j, "intermediate_size")?,
            num_layers,
            num_heads,
            num_kv_heads,
            head_dim,
            vocab_size: usize_field(&j, "vocab_size")?,
            rms_norm_eps: opt_field(
                &j,
                "rms_norm_eps",
                spec.default_eps,
                Json::as_f64,
                "a number",
            )? as f32,
            rope_theta,
            rope_scaling,
            max_position_embeddings,
            tie_word_embeddings: opt_field(
                &j,
                "tie_word_embeddings",
                false,
                Json::as_bool,
                "true or false",
            )?,
            qkv_bias,
            o_bias,
            mlp_bias: spec.mlp_bias_key && mlp_bias,
            sliding_window,
            sliding_layers,
            local_rope,
            query_pre_attn_scalar,
            attn_softcap,
            final_softcap,
            bos_token_id: token_ids(j.get("bos_token_id")).first().copied(),
            eos_token_ids: token_ids(j.get("eos_token_id")),
            pad_token_id: token_ids(j.get("pad_token_id")).first().copied(),
            hadamard: OnlineHadamard::NONE,
            lm_head: LmHead::Dense,
        }
        .validate()
    }

    /// The Hugging Face `config.json` for this model: the keys transformers 4 and 5 both read
    /// (`rope_theta` + `rope_scaling`) and transformers 5's `rope_parameters`. An error where
    /// the model has no HF form (RoPE divisors that no Llama-3 setting reproduces, Llama q/k/v
    /// biases without an o_proj bias).
    pub fn to_hf_json(&self, torch_dtype: &str) -> Result<Json> {
        let spec = self.arch.spec();
        let mut j = json!({
            "architectures": [spec.hf_class],
            "model_type": spec.model_type,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_kv_heads,
            "head_dim": self.head_dim,
            "vocab_size": self.vocab_size,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "max_position_embeddings": self.max_position_embeddings,
            "tie_word_embeddings": self.tie_word_embeddings,
            "torch_dtype": torch_dtype,
            "bos_token_id": self.bos_token_id,
            // written even when unknown: a class default may lie outside a small vocabulary
            "pad_token_id": self.pad_token_id,
            "eos_token_id": match self.eos_token_ids.as_slice() {
                [one] => json!(one),
                many => json!(many),
            },
        });
        j[spec.act_key] = json!(spec.mlp.hf_name());
        if spec.biases == Biases::AttentionKey {
            if self.qkv_bias != self.o_bias {
                return Err(Error::Config(format!(
                    "a {} config has one attention_bias for q/k/v and o_proj; this model has \
                     q/k/v biases {} and an o_proj bias {}",
                    spec.model_type, self.qkv_bias, self.o_bias
                )));
            }
            j["attention_bias"] = json!(self.qkv_bias);
        }
        if spec.mlp_bias_key {
            j["mlp_bias"] = json!(self.mlp_bias);
        }
        if spec.gemma_keys.is_some() {
            // the config classes type it as an integer (and refuse 48.0)
            j["query_pre_attn_scalar"] = match self.query_pre_attn_scalar {
                Some(v) if v.fract() == 0.0 && v < u64::MAX as f64 => json!(v as u64),
                v => json!(v),
            };
            j["attn_logit_softcapping"] = json!(self.attn_softcap);
            j["final_logit_softcapping"] = json!(self.final_softcap);
        }
        let kinds = || -> Json {
            let k: Vec<&str> = self
                .sliding_layers
                .iter()
                .map(|&s| {
                    if s {
                        "sliding_attention"
                    } else {
                        "full_attention"
                    }
                })
                .collect();
            json!(k)
        };
        match spec.sliding {
            Sliding::None => {}
            Sliding::Every => j["sliding_window"] = json!(self.sliding_window),
            Sliding::Qwen => {
                j["use_sliding_window"] = json!(self.sliding_window.is_some());
                j["sliding_window"] = json!(self.sliding_window);
                if self.sliding_window.is_some() {
                    j["layer_types"] = kinds();
                    let first = self.sliding_layers.iter().position(|&s| s);
                    j["max_window_layers"] = json!(first.unwrap_or(self.num_layers));
                }
            }
            Sliding::Pattern { .. } => {
                j["sliding_window"] = json!(self.sliding_window);
                j["layer_types"] = kinds();
            }
        }
        if let (Some(_), Some(RopeScaling::LongRope(l))) =
            (spec.default_original_max, &self.rope_scaling)
        {
            // Phi3Config's own original_max_position_embeddings wins over the one inside
            // rope_scaling, so it is written where that class reads it
            j["original_max_position_embeddings"] = json!(l.original_max_position_embeddings);
        }
        let scaling = self.hf_rope_scaling(self.rope_scaling.as_ref())?;
        let mut params = json!({"rope_type": "default"});
        if let Some(rs) = scaling {
            params = rs.clone();
            j["rope_scaling"] = rs;
        }
        params["rope_theta"] = json!(self.rope_theta);
        match (&self.local_rope, spec.rope) {
            (Some((theta, local)), RopeLayout::PerLayerType) => {
                let mut lp = self
                    .hf_rope_scaling(local.as_ref())?
                    .unwrap_or_else(|| json!({"rope_type": "default"}));
                lp["rope_theta"] = json!(theta);
                j["rope_local_base_freq"] = json!(theta);
                j["rope_parameters"] = json!({"full_attention": params, "sliding_attention": lp});
            }
            (None, RopeLayout::Shared) => j["rope_parameters"] = params,
            _ => {
                return Err(Error::Config(format!(
                    "model_type `{}` has no config.json form for this RoPE layout",
                    spec.model_type
                )))
            }
        }
        Ok(j)
    }

    /// A scaling's HF dict (GGUF `rope_freqs` as the Llama-3 setting that produces them).
    fn hf_rope_scaling(&self, s: Option<&RopeScaling>) -> Result<Option<Json>> {
        Ok(match s {
            Some(RopeScaling::FreqFactors(ff)) => {
                let s = crate::checkpoint::rope::llama3_from_factors(
                    self.rope_theta,
                    self.head_dim,
                    ff,
                )
                .ok_or_else(|| {
                    Error::Config(
                        "the GGUF's rope_freqs match no Llama-3 RoPE setting, so there is no \
                         config.json for them"
                            .into(),
                    )
                })?;
                RopeScaling::Llama3(s).to_hf()
            }
            Some(rs) => rs.to_hf(),
            None => None,
        })
    }
}
