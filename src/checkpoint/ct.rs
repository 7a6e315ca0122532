//! Reading compressed-tensors checkpoints (llm-compressor's format; reference/quantization.md §7).
//!
//! - ferroq's own and llm-compressor's W8A8 / FP8 / W4A16: targets `Linear`, exact module names
//!   or `re:` patterns; `ignore` by the same rules.
//! - pd_mix decode scales and online rotations come from ferroq's extra
//!   `quantization_config.ferroq` block; the writer is `ptq::ct_write`.

use crate::checkpoint::config::{LmHead, ModelConfig};
use crate::checkpoint::safetensors_io::SafetensorsWeights;
use crate::checkpoint::site::{decoder_linears, OnlineHadamard, Site};
use crate::checkpoint::WeightSource;
use crate::error::{Error, Result};
use crate::quant::{formats, ActQuant, ActSpec, QDType, QuantWeight};
use crate::tensor::HostTensor;
use safetensors::Dtype as St;
use serde_json::Value as Json;
use std::collections::BTreeMap;
use std::path::Path;

/// The `__metadata__` key of the safetensors files that records the weights' rotation.
pub const HADAMARD_MARKER: &str = "ferroq.hadamard";

/// A linear's scheme as read from config_groups.
#[derive(Clone, Debug)]
struct Scheme {
    weights: Json,
    acts: Option<Json>,
}

fn target_matches(t: &str, name: &str) -> Result<bool> {
    if t == "Linear" {
        return Ok(true);
    }
    if let Some(re) = t.strip_prefix("re:") {
        let r = regex::Regex::new(re)
            .map_err(|e| Error::Config(format!("quantization_config pattern `{t}`: {e}")))?;
        return Ok(r.is_match(name));
    }
    Ok(t == name || name.ends_with(&format!(".{t}")))
}

/// A compressed-tensors model directory as a weight source.
pub struct CompressedTensors {
    st: SafetensorsWeights,
    schemes: BTreeMap<String, Scheme>,
    pd_mix: BTreeMap<String, (f32, i32)>,
    /// The online rotation the weights were made for; the model must apply it.
    pub hadamard: OnlineHadamard,
    /// `ferroq.lm_head` (absent: dense).
    pub lm_head: LmHead,
}

/// Scales must be finite and positive: a NaN, zero or negative one would compute garbage
/// without a word.
fn check_scales(tensor: &str, v: &[f32]) -> Result<()> {
    match v.iter().position(|s| !(s.is_finite() && *s > 0.0)) {
        Some(i) => Err(Error::Config(format!(
            "`{tensor}` holds {} at index {i}: scales must be finite and positive",
            v[i]
        ))),
        None => Ok(()),
    }
}

/// An int8 activation zero point in [-128, 127].
fn check_zero_point(what: &str, z: i64) -> Result<i32> {
    if (-128..=127).contains(&z) {
        Ok(z as i32)
    } else {
        Err(Error::Config(format!(
            "{what} is {z}: an int8 zero point must be in [-128, 127]"
        )))
    }
}

fn get_u64(a: &Json, key: &str, what: &str) -> Result<u64> {
    a.get(key)
        .and_then(|v| v.as_u64())
        .ok_or_else(|| Error::Config(format!("{what}: `{key}` missing or not an integer")))
}

impl CompressedTensors {
    /// Open `dir` (whose config.json has a compressed-tensors `quantization_config`).
    pub fn open(dir: &Path, config: &ModelConfig) -> Result<Self> {
        let p = dir.join("config.json");
        let text = crate::checkpoint::read_text(&p, crate::checkpoint::MAX_CONFIG_BYTES, "config")?;
        let j: Json =
            serde_json::from_str(&text).map_err(|e| Error::Config(format!("config.json: {e}")))?;
        let qc = j
            .get("quantization_config")
            .ok_or_else(|| Error::Config("no quantization_config".into()))?;
        let method = qc
            .get("quant_method")
            .and_then(|m| m.as_str())
            .unwrap_or("");
        if method != "compressed-tensors" {
            return Err(Error::Config(format!(
                "quant_method `{method}` is not supported (compressed-tensors)"
            )));
        }
        if let Some(st) = qc.get("quantization_status").and_then(|s| s.as_str()) {
            if st != "compressed" && st != "frozen" {
                return Err(Error::Config(format!(
                    "quantization_status `{st}`: only compressed checkpoints load"
                )));
            }
        }
        let ignore: Vec<String> = qc
            .get("ignore")
            .and_then(|i| i.as_array())
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        let groups = qc
            .get("config_groups")
            .and_then(|g| g.as_object())
            .ok_or_else(|| Error::Config("quantization_config has no config_groups".into()))?;
        let mut schemes = BTreeMap::new();
        // the linears under their stored names (Phi-3's fused ones, cut apart by `fused`)
        let linears = if config.arch.spec().fused {
            crate::checkpoint::fused::stored_linears(config.num_layers)
        } else {
            decoder_linears(config.num_layers)
        };
        for name in linears {
            let mut ignored = false;
            for t in &ignore {
                ignored |= target_matches(t, &name)?;
            }
            if ignored {
                continue;
            }
            for (gname, g) in groups {
                let targets = g.get("targets").and_then(|t| t.as_array()).ok_or_else(|| {
                    Error::Config(format!("config group `{gname}` has no targets"))
                })?;
                let mut hit = false;
                for t in targets {
                    hit |= target_matches(t.as_str().unwrap_or(""), &name)?;
                }
                if hit {
                    let weights = g
                        .get("weights")
                        .filter(|w| !w.is_null())
                        .cloned()
                        .ok_or_else(|| {
                            Error::Config(format!("config group `{gname}` has no weights args"))
                        })?;
                    let acts = g.get("input_activations").filter(|a| !a.is_null()).cloned();
                    schemes.insert(name.clone(), Scheme { weights, acts });
                    break;
                }
            }
        }
        let mut pd_mix = BTreeMap::new();
        if let Some(pm) = qc
            .get("ferroq")
            .and_then(|f| f.get("pd_mix"))
            .and_then(|p| p.as_object())
        {
            for (n, v) in pm {
                let s = v
                    .get("input_scale")
                    .and_then(|s| s.as_f64())
                    .ok_or_else(|| Error::Config(format!("ferroq.pd_mix.{n}: no input_scale")))?;
                check_scales(&format!("ferroq.pd_mix.{n}.input_scale"), &[s as f32])?;
                let z = match v.get("input_zero_point").filter(|z| !z.is_null()) {
                    None => 0,
                    Some(z) => z.as_i64().ok_or_else(|| {
                        Error::Config(format!(
                            "ferroq.pd_mix.{n}.input_zero_point must be an integer"
                        ))
                    })?,
                };
                let z = check_zero_point(&format!("ferroq.pd_mix.{n}.input_zero_point"), z)?;
                pd_mix.insert(n.clone(), (s as f32, z));
            }
        }
        let mut hadamard = OnlineHadamard::NONE;
        if let Some(h) = qc.get("ferroq").and_then(|f| f.get("hadamard")) {
            let h = h.as_object().ok_or_else(|| {
                Error::Config("ferroq.hadamard must map input names to block sizes".into())
            })?;
            for (n, v) in h {
                let site = Site::from_name(n).ok_or_else(|| {
                    Error::Config(format!(
                        "ferroq.hadamard: unknown input `{n}` (attn_in, o_in, mlp_in, down_in)"
                    ))
                })?;
                let block = v.as_u64().ok_or_else(|| {
                    Error::Config(format!("ferroq.hadamard.{n}: block must be an integer"))
                })?;
                hadamard
                    .set(site, block as usize, config.site_dim(site))
                    .map_err(|e| Error::Config(format!("ferroq.hadamard: {e}")))?;
            }
        }
        let lm_head = match qc.get("ferroq").and_then(|f| f.get("lm_head")) {
            None => LmHead::Dense,
            Some(v) => serde_json::from_value(v.clone()).map_err(|_| {
                Error::Config(format!(
                    "ferroq.lm_head: expected \"dense\" or \"int8\", got {v}"
                ))
            })?,
        };
        let st = SafetensorsWeights::open_dir(dir)?;
        if let Some(m) = st.metadata(HADAMARD_MARKER) {
            if m != hadamard.marker() {
                return Err(Error::Config(format!(
                    "the weights were made for online Hadamard rotation `{m}`, but \
                     quantization_config.ferroq.hadamard says `{}`: the config lost or changed \
                     the record",
                    hadamard.marker()
                )));
            }
        }
        Ok(CompressedTensors {
            st,
            schemes,
            pd_mix,
            hadamard,
            lm_head,
        })
    }

    fn f32_tensor(&self, name: &str, allowed: &[Vec<usize>]) -> Result<Vec<f32>> {
        let (d, shape, bytes) = self.st.raw(name)?;
        if !allowed.contains(&shape) {
            return Err(Error::ShapeMismatch {
                tensor: name.into(),
                expected: allowed[0].clone(),
                actual: shape,
            });
        }
        Ok(match d {
            St::F32 => bytemuck::pod_collect_to_vec(bytes),
            St::F16 => bytemuck::pod_collect_to_vec::<u8, half::f16>(bytes)
                .iter()
                .map(|v| v.to_f32())
                .collect(),
            St::BF16 => bytemuck::pod_collect_to_vec::<u8, half::bf16>(bytes)
                .iter()
                .map(|v| v.to_f32())
                .collect(),
            other => {
                return Err(Error::UnsupportedDType {
                    tensor: name.into(),
                    dtype: format!("{other:?}"),
                })
            }
        })
    }

    /// A scale tensor (`f32_tensor`), every value finite and positive.
    fn scales(&self, name: &str, allowed: &[Vec<usize>]) -> Result<Vec<f32>> {
        let v = self.f32_tensor(name, allowed)?;
        check_scales(name, &v)?;
        Ok(v)
    }

    fn int_tensor(&self, name: &str, want: St, shape: &[usize]) -> Result<&[u8]> {
        let (d, s, bytes) = self.st.raw(name)?;
        if d != want {
            return Err(Error::UnsupportedDType {
                tensor: name.into(),
                dtype: format!("{d:?} (expected {want:?})"),
            });
        }
        if s != shape {
            return Err(Error::ShapeMismatch {
                tensor: name.into(),
                expected: shape.to_vec(),
                actual: s,
            });
        }
        Ok(bytes)
    }

    /// `NAME.weight_shape`, the unpacked (out, in) of an int4 weight: int64 as compressed-tensors
    /// writes it (`torch.tensor(weight.shape)`), or int32; both sizes positive.
    fn weight_shape(&self, name: &str) -> Result<(usize, usize)> {
        let t = format!("{name}.weight_shape");
        let (d, s, bytes) = self.st.raw(&t)?;
        let v: Vec<i64> = match d {
            St::I64 => bytemuck::pod_collect_to_vec(bytes),
            St::I32 => bytemuck::pod_collect_to_vec::<u8, i32>(bytes)
                .into_iter()
                .map(i64::from)
                .collect(),
            other => {
                return Err(Error::UnsupportedDType {
                    tensor: t,
                    dtype: format!("{other:?} (expected I64 or I32)"),
                })
            }
        };
        match (s.as_slice(), v.as_slice()) {
            ([2], &[rows, cols]) if rows > 0 && cols > 0 => Ok((rows as usize, cols as usize)),
            _ => Err(Error::Config(format!(
                "{t} must hold two positive sizes, got {v:?} of shape {s:?}"
            ))),
        }
    }

    fn linear_weight(&self, name: &str, sc: &Scheme, n: usize, k: usize) -> Result<QuantWeight> {
        let w = &sc.weights;
        let what = format!("{name} weights");
        let bits = get_u64(w, "num_bits", &what)?;
        let ty = w.get("type").and_then(|t| t.as_str()).unwrap_or("int");
        let strategy = w
            .get("strategy")
            .and_then(|s| s.as_str())
            .unwrap_or("channel");
        let scale_shapes = |groups: usize| -> Vec<Vec<usize>> {
            match strategy {
                "tensor" => vec![vec![1], vec![]],
                "group" => vec![vec![n, groups]],
                _ => vec![vec![n, 1], vec![n]],
            }
        };
        let broadcast = |s: Vec<f32>| if s.len() == 1 { vec![s[0]; n] } else { s };
        match (ty, bits) {
            ("int", 8) => {
                if w.get("symmetric").and_then(|s| s.as_bool()) == Some(false) {
                    return Err(Error::Config(format!(
                        "{what}: asymmetric int8 weights are not supported"
                    )));
                }
                let q: Vec<i8> = bytemuck::pod_collect_to_vec(self.int_tensor(
                    &format!("{name}.weight"),
                    St::I8,
                    &[n, k],
                )?);
                let scale =
                    broadcast(self.scales(&format!("{name}.weight_scale"), &scale_shapes(1))?);
                let colsum = q
                    .chunks_exact(k)
                    .map(|r| r.iter().map(|&v| v as i32).sum())
                    .collect();
                Ok(QuantWeight::Int8 { q, scale, colsum })
            }
            ("float", 8) => {
                let codes = self
                    .int_tensor(&format!("{name}.weight"), St::F8_E4M3, &[n, k])?
                    .to_vec();
                let scale =
                    broadcast(self.scales(&format!("{name}.weight_scale"), &scale_shapes(1))?);
                Ok(QuantWeight::Fp8 { codes, scale })
            }
            ("int", 4) => {
                let g = match strategy {
                    "group" => get_u64(w, "group_size", &what)? as usize,
                    "channel" => k,
                    other => {
                        return Err(Error::Config(format!(
                            "{what}: int4 strategy `{other}` is not supported"
                        )))
                    }
                };
                if !k.is_multiple_of(8) || g == 0 || g % 2 != 0 {
                    return Err(Error::Config(format!(
                        "{what}: int4 needs in_features % 8 == 0 and an even group size"
                    )));
                }
                let shape = self.weight_shape(name)?;
                if shape != (n, k) {
                    return Err(Error::ShapeMismatch {
                        tensor: format!("{name}.weight_shape"),
                        expected: vec![n, k],
                        actual: vec![shape.0, shape.1],
                    });
                }
                let packed: Vec<i32> = bytemuck::pod_collect_to_vec(self.int_tensor(
                    &format!("{name}.weight_packed"),
                    St::I32,
                    &[n, k / 8],
                )?);
                let groups = k.div_ceil(g);
                let scale = self.scales(&format!("{name}.weight_scale"), &scale_shapes(groups))?;
                let zname = format!("{name}.weight_zero_point");
                let zero: Vec<i8> = if self.st.contains(&zname) {
                    bytemuck::pod_collect_to_vec(self.int_tensor(&zname, St::I8, &[n, groups])?)
                } else {
                    Vec::new()
                };
                if let Some(z) = zero.iter().find(|z| !(-8..=7).contains(*z)) {
                    return Err(Error::Config(format!(
                        "`{zname}` holds {z}: an int4 zero point must be in [-8, 7]"
                    )));
                }
                let vals = formats::unpack_i4_int32(&packed, n * k);
                Ok(QuantWeight::Int4 {
                    packed: formats::pack_i4_bytes(&vals),
                    scale,
                    zero,
                    group: g,
                })
            }
            (t, b) => Err(Error::Config(format!(
                "{what}: num_bits {b} with type `{t}` is not supported (int 8, float 8, int 4)"
            ))),
        }
    }

    fn act_spec(&self, name: &str, sc: &Scheme, wdtype: QDType) -> Result<ActSpec> {
        let Some(a) = &sc.acts else {
            return Ok(ActSpec::NONE);
        };
        let what = format!("{name} input_activations");
        let bits = get_u64(a, "num_bits", &what)?;
        let float = a.get("type").and_then(|t| t.as_str()) == Some("float");
        let dtype = match (float, bits) {
            (false, 8) => QDType::Int8,
            (true, 8) => QDType::Fp8E4M3,
            (_, b) => {
                return Err(Error::Config(format!(
                    "{what}: num_bits {b} is not supported (8)"
                )))
            }
        };
        if dtype != wdtype {
            return Err(Error::Config(format!(
                "{what}: {dtype:?} activations with {wdtype:?} weights are not supported"
            )));
        }
        let symmetric = a.get("symmetric").and_then(|s| s.as_bool()).unwrap_or(true);
        let dynamic = a.get("dynamic").and_then(|d| d.as_bool()).unwrap_or(false);
        let policy = if dynamic {
            match self.pd_mix.get(name) {
                Some(&(scale, zp)) => ActQuant::PdMix { scale, zp },
                None => ActQuant::Dynamic,
            }
        } else {
            let sname = format!("{name}.input_scale");
            let scale = match self.scales(&sname, &[vec![1], vec![]])?[..] {
                [s] => s,
                _ => return Err(Error::Config(format!("`{sname}` must hold one value"))),
            };
            let zname = format!("{name}.input_zero_point");
            let zp = if !symmetric && self.st.contains(&zname) {
                let (d, shape, b) = self.st.raw(&zname)?;
                let z = match (d, b) {
                    (St::I8, [v]) => *v as i8 as i64,
                    (St::I32, &[a, b2, c, e]) => i32::from_le_bytes([a, b2, c, e]) as i64,
                    (St::I8 | St::I32, _) => {
                        return Err(Error::ShapeMismatch {
                            tensor: zname,
                            expected: vec![1],
                            actual: shape,
                        })
                    }
                    (other, _) => {
                        return Err(Error::UnsupportedDType {
                            tensor: zname,
                            dtype: format!("{other:?}"),
                        })
                    }
                };
                check_zero_point(&format!("`{zname}`"), z)?
            } else {
                0
            };
            ActQuant::Static { scale, zp }
        };
        Ok(ActSpec {
            policy,
            dtype,
            symmetric,
        })
    }
}

impl WeightSource for CompressedTensors {
    fn tensor_names(&self) -> Vec<String> {
        self.st.tensor_names()
    }
    fn online_hadamard(&self) -> Option<OnlineHadamard> {
        Some(self.hadamard)
    }
    fn load(&self, name: &str) -> Result<HostTensor> {
        self.st.load(name)
    }
    fn quant_linear(&self, name: &str) -> Result<Option<(QuantWeight, ActSpec)>> {
        let Some(sc) = self.schemes.get(name) else {
            return Ok(None);
        };
        // shape from the weight (int8/fp8) or weight_shape (int4)
        let (n, k) = match self.st.raw(&format!("{name}.weight")) {
            Ok((_, s, _)) if s.len() == 2 => (s[0], s[1]),
            _ => self.weight_shape(name)?,
        };
        let w = self.linear_weight(name, sc, n, k)?;
        let act = self.act_spec(name, sc, w.dtype())?;
        if w.dtype() == QDType::Int4 && act.policy != ActQuant::None {
            return Err(Error::Config(format!(
                "{name}: int4 weights with activation quantization are not supported"
            )));
        }
        // the weight is copied out: its file pages need not stay resident
        self.st.release(&format!("{name}.weight"));
        self.st.release(&format!("{name}.weight_packed"));
        Ok(Some((w, act)))
    }
}
