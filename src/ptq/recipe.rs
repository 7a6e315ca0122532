//! Quantization recipes: YAML in the style of msModelSlim's accuracy-tuning guide, and presets.
//!
//! - An ordered list of processors — outlier suppression (`iter_smooth`, `smooth_quant`,
//!   `flex_smooth`), `hadamard`, and `linear_quant` with `qconfig.act` / `qconfig.weight` —
//!   each selecting linears with `include` / `exclude` globs; unselected linears stay BF16.
//! - Unknown keys and values are errors that name them (serde `deny_unknown_fields`).
//! - Presets: w8a8 (pd_mix), w8a8-dynamic, w8a8-static, fp8, w4a16, w4a16-gptq.

use crate::checkpoint::config::LmHead;
use crate::checkpoint::site::Site;
use crate::error::{Error, Result};
use crate::quant::weight::{WeightMethod, WeightQConfig, WeightScope};
use crate::quant::QDType;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Recipe {
    pub processors: Vec<Processor>,
    /// `int8` quantizes the LM head at load (`checkpoint::config::LmHead`); default `dense`.
    #[serde(default, skip_serializing_if = "is_dense")]
    pub lm_head: LmHead,
}

fn is_dense(h: &LmHead) -> bool {
    *h == LmHead::Dense
}

fn all() -> Vec<String> {
    vec!["*".into()]
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Processor {
    /// msModelSlim Iterative Smooth over every subgraph (up→down, v→o, norm→linear).
    IterSmooth {
        #[serde(default = "default_iter_alpha")]
        alpha: f32,
        #[serde(default = "all")]
        include: Vec<String>,
        #[serde(default)]
        exclude: Vec<String>,
    },
    /// SmoothQuant (Xiao et al. 2023) on norm→linear subgraphs only.
    SmoothQuant {
        #[serde(default = "default_sq_alpha")]
        alpha: f32,
        #[serde(default = "all")]
        include: Vec<String>,
        #[serde(default)]
        exclude: Vec<String>,
    },
    /// Flex Smooth: two-stage grid search of (alpha, beta) per subgraph.
    FlexSmooth {
        #[serde(default = "all")]
        include: Vec<String>,
        #[serde(default)]
        exclude: Vec<String>,
    },
    /// Online Hadamard rotation (QuaRot) of the listed inputs of every layer, applied after
    /// any smoothing (`quant::hadamard`).
    Hadamard {
        #[serde(default = "all_sites")]
        sites: Vec<Site>,
    },
    LinearQuant {
        qconfig: QConfig,
        #[serde(default = "all")]
        include: Vec<String>,
        #[serde(default)]
        exclude: Vec<String>,
    },
}

impl Processor {
    /// SmoothQuant-family processors: they rescale weight columns channel by channel.
    pub fn is_smoother(&self) -> bool {
        matches!(
            self,
            Processor::IterSmooth { .. }
                | Processor::SmoothQuant { .. }
                | Processor::FlexSmooth { .. }
        )
    }
}

fn all_sites() -> Vec<Site> {
    Site::ALL.to_vec()
}

fn default_iter_alpha() -> f32 {
    0.9
}
fn default_sq_alpha() -> f32 {
    0.5
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct QConfig {
    #[serde(default)]
    pub act: Option<ActConfig>,
    pub weight: WeightConfig,
}

#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ActScope {
    PerTensor,
    PerToken,
    PdMix,
}

#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum DTypeName {
    Int8,
    Int4,
    #[serde(alias = "fp8")]
    Fp8E4m3,
}

impl DTypeName {
    fn qdtype(self) -> QDType {
        match self {
            DTypeName::Int8 => QDType::Int8,
            DTypeName::Int4 => QDType::Int4,
            DTypeName::Fp8E4m3 => QDType::Fp8E4M3,
        }
    }
}

/// Activation observers (`observer.rs`).
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum ActMethod {
    Minmax,
    MovingMinmax,
    Percentile,
    #[serde(alias = "histogram")]
    HistogramMse,
    HistogramKl,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ActConfig {
    pub scope: ActScope,
    pub dtype: DTypeName,
    #[serde(default)]
    pub symmetric: bool,
    #[serde(default = "default_act_method")]
    pub method: ActMethod,
    /// Kept fraction for `percentile` (e.g. 0.9999).
    #[serde(default)]
    pub percentile: Option<f64>,
}

fn default_act_method() -> ActMethod {
    ActMethod::Minmax
}

#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum WScope {
    PerTensor,
    PerChannel,
    PerGroup,
}

#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum WMethod {
    Minmax,
    Ssz,
    Gptq,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct WeightConfig {
    pub scope: WScope,
    pub dtype: DTypeName,
    #[serde(default = "yes")]
    pub symmetric: bool,
    #[serde(default = "default_w_method")]
    pub method: WMethod,
    #[serde(default)]
    pub group_size: Option<usize>,
}

fn yes() -> bool {
    true
}
fn default_w_method() -> WMethod {
    WMethod::Minmax
}

impl WeightConfig {
    pub fn to_qconfig(&self) -> Result<WeightQConfig> {
        let scope = match (self.scope, self.group_size) {
            (WScope::PerGroup, Some(g)) if [32, 64, 128].contains(&g) => WeightScope::PerGroup(g),
            (WScope::PerGroup, Some(g)) => {
                return Err(Error::InvalidArgument(format!(
                    "recipe: group_size {g} must be 32, 64 or 128"
                )))
            }
            (WScope::PerGroup, None) => {
                return Err(Error::InvalidArgument(
                    "recipe: per_group weights need `group_size`".into(),
                ))
            }
            (_, Some(_)) => {
                return Err(Error::InvalidArgument(
                    "recipe: `group_size` is only for per_group weights".into(),
                ))
            }
            (WScope::PerChannel, None) => WeightScope::PerChannel,
            (WScope::PerTensor, None) => WeightScope::PerTensor,
        };
        Ok(WeightQConfig {
            dtype: self.dtype.qdtype(),
            scope,
            symmetric: self.symmetric,
            method: match self.method {
                WMethod::Minmax => WeightMethod::MinMax,
                WMethod::Ssz => WeightMethod::Ssz,
                WMethod::Gptq if self.dtype.qdtype() == QDType::Int4 => WeightMethod::Gptq,
                WMethod::Gptq => {
                    return Err(Error::InvalidArgument(
                        "recipe: method gptq is for int4 weights".into(),
                    ))
                }
            },
        })
    }
}

impl ActConfig {
    pub fn qdtype(&self) -> QDType {
        self.dtype.qdtype()
    }
}

/// Glob match with `*` (any run, dots included) and `?` (one character).
pub fn glob_match(pattern: &str, name: &str) -> bool {
    let (p, n): (Vec<char>, Vec<char>) = (pattern.chars().collect(), name.chars().collect());
    let (mut pi, mut ni, mut star, mut mark) = (0, 0, None, 0);
    while ni < n.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == n[ni]) {
            pi += 1;
            ni += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ni;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ni = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

/// Whether `name` is selected by include/exclude globs.
pub fn selected(name: &str, include: &[String], exclude: &[String]) -> bool {
    include.iter().any(|p| glob_match(p, name)) && !exclude.iter().any(|p| glob_match(p, name))
}

impl Recipe {
    pub fn from_yaml(text: &str) -> Result<Self> {
        check_nesting(text)?;
        let r: Recipe = serde_yaml::from_str(text)
            .map_err(|e| Error::InvalidArgument(format!("recipe: {e}")))?;
        r.validate()?;
        Ok(r)
    }

    /// A built-in preset by name, or a YAML file path (at most `MAX_RECIPE_BYTES`).
    pub fn load(name_or_path: &str) -> Result<Self> {
        if let Some(y) = preset(name_or_path) {
            return Self::from_yaml(y);
        }
        let p = std::path::Path::new(name_or_path);
        if !p.exists() {
            return Err(Error::InvalidArgument(format!(
                "recipe `{name_or_path}` is neither a preset ({}) nor a file",
                PRESETS
                    .iter()
                    .map(|(n, _)| *n)
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        let text = crate::checkpoint::read_text(p, crate::checkpoint::MAX_RECIPE_BYTES, "recipe")?;
        Self::from_yaml(&text)
    }

    /// The recipe as YAML (what `from_yaml` reads back).
    pub fn to_yaml(&self) -> Result<String> {
        serde_yaml::to_string(self).map_err(|e| Error::InvalidArgument(format!("recipe: {e}")))
    }

    /// The same recipe with `names` added to every `linear_quant` exclude list (BF16 fallback).
    pub fn with_fallback(&self, names: &[String]) -> Recipe {
        let mut r = self.clone();
        for p in r.processors.iter_mut() {
            if let Processor::LinearQuant { exclude, .. } = p {
                exclude.extend(names.iter().cloned());
            }
        }
        r
    }

    fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::InvalidArgument(format!("recipe: {m}")));
        if !self
            .processors
            .iter()
            .any(|p| matches!(p, Processor::LinearQuant { .. }))
        {
            return bad("no `linear_quant` processor: nothing would be quantized".into());
        }
        // smoothing rescales weight columns channel by channel: it must see unrotated weights
        if let Some(h) = self
            .processors
            .iter()
            .position(|p| matches!(p, Processor::Hadamard { .. }))
        {
            if self.processors[h + 1..]
                .iter()
                .any(|p| p.is_smoother() || matches!(p, Processor::Hadamard { .. }))
            {
                return bad("`hadamard` must come once, after every smoothing processor".into());
            }
        }
        for p in &self.processors {
            match p {
                Processor::IterSmooth { alpha, .. } | Processor::SmoothQuant { alpha, .. } => {
                    if !(*alpha > 0.0 && *alpha < 1.0) {
                        return bad(format!("alpha {alpha} must be in (0, 1)"));
                    }
                }
                Processor::FlexSmooth { .. } | Processor::Hadamard { .. } => {}
                Processor::LinearQuant { qconfig, .. } => {
                    let w = qconfig.weight.to_qconfig()?;
                    match (w.dtype, &qconfig.act) {
                        (QDType::Int4, Some(_)) => {
                            return bad("int4 weights run weight-only: remove `act`".into())
                        }
                        (QDType::Int8, Some(a)) if a.dtype != DTypeName::Int8 => {
                            return bad("int8 weights need int8 activations".into())
                        }
                        (QDType::Fp8E4M3, Some(a)) if a.dtype != DTypeName::Fp8E4m3 => {
                            return bad("fp8_e4m3 weights need fp8_e4m3 activations".into())
                        }
                        (_, Some(a)) if a.dtype == DTypeName::Fp8E4m3 && !a.symmetric => {
                            return bad(
                                "fp8 activations are symmetric: set `symmetric: true`".into()
                            )
                        }
                        (_, Some(a)) if a.method == ActMethod::Percentile => match a.percentile {
                            Some(q) if q > 0.5 && q <= 1.0 => {}
                            _ => {
                                return bad(
                                    "method percentile needs `percentile` in (0.5, 1]".into()
                                )
                            }
                        },
                        _ => {}
                    }
                }
            }
        }
        Ok(())
    }
}

// Every int8 and int4 preset runs the LM head in int8 (rotated input, see `LlamaModel::load`):
// on this model it is a third of the int8 decode bytes; tg128 113 -> 155 tok/s for +0.001 KL.
// The int8 presets smooth with alpha 0.5, not msModelSlim's default 0.9: on SmolLM2-135M
// (wikitext-2, 3 chunks, `ferroq eval`) pd_mix W8A8 mean KL was 0.051 at 0.9, 0.015 at 0.7,
// 0.0099 at 0.5 and 0.017 at 0.3; flex_smooth's search reached 0.0117.
// pd_mix where a static decode scale is cheap: the norm outputs read by q/k/v and gate/up,
// with the KL observer (decode tokens never carry the prompt's massive first-token
// activations, so clipping for the bulk pays: 3 chunks, `eval --path decode`, all linears
// pd_mix: KL 0.0093 with minmax, 0.0071 with histogram_kl). o_proj's and down_proj's inputs
// stay per-token dynamic in decode too: making either dynamic took decode KL from 0.0071 to
// 0.0052 / 0.0050, both to 0.0029 (q/k/v 0.0069, gate/up no gain). A per-tensor scale that
// prefill also uses must keep the outliers instead (w8a8-static: 0.0103 minmax, 0.035 KL).
// Hadamard rotation of all four inputs took prefill-path KL from 0.0099 to 0.0024.
const W8A8: &str = "
lm_head: int8
processors:
  - type: iter_smooth
    alpha: 0.5
  - type: hadamard
  - type: linear_quant
    include: ['*o_proj', '*down_proj']
    qconfig:
      act: {scope: per_token, dtype: int8, symmetric: false}
      weight: {scope: per_channel, dtype: int8, symmetric: true, method: minmax}
  - type: linear_quant
    qconfig:
      act: {scope: pd_mix, dtype: int8, symmetric: false, method: histogram_kl}
      weight: {scope: per_channel, dtype: int8, symmetric: true, method: minmax}
";
const W8A8_DYNAMIC: &str = "
lm_head: int8
processors:
  - type: iter_smooth
    alpha: 0.5
  - type: linear_quant
    qconfig:
      act: {scope: per_token, dtype: int8, symmetric: true}
      weight: {scope: per_channel, dtype: int8, symmetric: true, method: minmax}
";
const W8A8_STATIC: &str = "
lm_head: int8
processors:
  - type: iter_smooth
    alpha: 0.5
  - type: hadamard
  - type: linear_quant
    qconfig:
      act: {scope: per_tensor, dtype: int8, symmetric: false, method: minmax}
      weight: {scope: per_channel, dtype: int8, symmetric: true, method: minmax}
";
const FP8: &str = "
processors:
  - type: linear_quant
    qconfig:
      act: {scope: per_token, dtype: fp8_e4m3, symmetric: true}
      weight: {scope: per_channel, dtype: fp8_e4m3, symmetric: true, method: minmax}
";
const W4A16: &str = "
lm_head: int8
processors:
  - type: linear_quant
    qconfig:
      weight: {scope: per_group, group_size: 128, dtype: int4, symmetric: true, method: ssz}
";

// GPTQ after rotation: 3 chunks KL 0.36 against 0.53 for w4a16 (RTN + ssz) and 0.62 for GPTQ
// without rotation, at ~50× the quantize time; the rotation makes it a ferroq-only checkpoint.
const W4A16_GPTQ: &str = "
lm_head: int8
processors:
  - type: hadamard
  - type: linear_quant
    qconfig:
      weight: {scope: per_group, group_size: 128, dtype: int4, symmetric: true, method: gptq}
";

pub const PRESETS: [(&str, &str); 6] = [
    ("w8a8", W8A8),
    ("w8a8-dynamic", W8A8_DYNAMIC),
    ("w8a8-static", W8A8_STATIC),
    ("fp8", FP8),
    ("w4a16", W4A16),
    ("w4a16-gptq", W4A16_GPTQ),
];

pub fn preset(name: &str) -> Option<&'static str> {
    PRESETS.iter().find(|(n, _)| *n == name).map(|(_, y)| *y)
}

/// Recipes nest a few levels deep; refuse a document nested past `MAX_NESTING` (flow brackets
/// or block indentation) before the YAML parser spends seconds on it.
fn check_nesting(text: &str) -> Result<()> {
    const MAX_NESTING: usize = 64;
    let (mut depth, mut deepest) = (0usize, 0usize);
    let mut quote: Option<char> = None;
    for ch in text.chars() {
        match (quote, ch) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '"' | '\'') => quote = Some(ch),
            (None, '[' | '{') => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            (None, ']' | '}') => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    let indent = text
        .lines()
        .map(|l| l.len() - l.trim_start_matches(' ').len())
        .max()
        .unwrap_or(0);
    if deepest > MAX_NESTING || indent > 2 * MAX_NESTING {
        return Err(Error::InvalidArgument(format!(
            "recipe: nested deeper than {MAX_NESTING} levels"
        )));
    }
    Ok(())
}
