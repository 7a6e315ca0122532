//! The quantize flow behind `ferroq quantize`.
//!
//! - Float weights → calibration → outlier suppression (recipe order) → online Hadamard rotation
//!   (QuaRot) → calibration on the smoothed, rotated model for static scales (plus histogram and
//!   GPTQ passes when asked) → weight quantization (round-to-nearest, ssz or GPTQ).
//! - The result (`QuantizedModel`) runs directly (it is a `WeightSource`) and `ct_write` stores it.
//! - Linears no `linear_quant` selects, embeddings, norms and the LM head stay BF16 (fallback).
//! - The calibration passes run on any backend (`quantize_on`); the CPU is the reference.

use super::calib::{self, CollectOptions, StatsMap};
use super::gptq;
use super::observer;
use super::recipe::{ActConfig, ActMethod, ActScope, Processor, Recipe};
use super::smooth::{self, Method};
use crate::backend::cpu::CpuBackend;
use crate::backend::Backend;
use crate::checkpoint::config::ModelConfig;
use crate::checkpoint::site::{decoder_linears, OnlineHadamard, Site};
use crate::checkpoint::WeightSource;
use crate::error::{Error, Result};
use crate::model::llama::LlamaModel;
use crate::quant::hadamard;
use crate::quant::weight::{quantize_weight, WeightMethod, WeightQConfig, WeightScope};
use crate::quant::{ActQuant, ActSpec, QDType, QuantWeight};
use crate::tensor::{DType, HostTensor};
use crate::tokenizer::TokenizerBundle;
use std::collections::btree_map::Entry;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

#[derive(Clone, Debug)]
pub struct QuantizeOptions {
    pub calib_file: Option<PathBuf>,
    pub n_samples: usize,
    pub seq_len: usize,
    /// Calibration samples run concurrently (does not change the result).
    pub batch: usize,
    /// Keep the smoothed float weights in `QuantizedModel::float` (for `analyze`).
    pub keep_float: bool,
}

impl Default for QuantizeOptions {
    fn default() -> Self {
        QuantizeOptions {
            calib_file: None,
            n_samples: 8,
            seq_len: 128,
            batch: 4,
            keep_float: false,
        }
    }
}

/// One quantized linear and how it was made.
#[derive(Clone, Debug)]
pub struct QLinear {
    /// [out_features, in_features]
    pub shape: [usize; 2],
    pub weight: QuantWeight,
    pub wcfg: WeightQConfig,
    pub act: ActSpec,
    pub act_cfg: Option<ActConfig>,
}

#[derive(Clone, Debug, Default)]
pub struct QuantReport {
    pub smoothed_subgraphs: usize,
    pub calib_samples: usize,
    pub calib_tokens: usize,
    pub quantized: usize,
    pub fallback: Vec<String>,
    /// Sites the recipe asked to rotate whose width has no power-of-two block ≥ 8.
    pub hadamard_skipped: Vec<Site>,
    /// (asked, used): an int4 group size the recipe asked for that does not divide every
    /// quantized input width, and the one used instead.
    pub int4_group: Option<(usize, usize)>,
    pub secs: f64,
}

/// int4 groups must tile every row: compressed-tensors checkpoints with a short last group
/// (group 128 over 576 inputs) neither load in transformers nor come out of llm-compressor.
/// When the asked group does not divide some quantized linear's input width, every int4
/// per-group entry takes the largest of 128 / 64 / 32 (not above the asked one) that divides
/// them all; none: an error naming the width. Returns (asked, used) when it changed.
fn fit_int4_groups(
    config: &ModelConfig,
    plan: &mut BTreeMap<String, (WeightQConfig, Option<ActConfig>)>,
) -> Result<Option<(usize, usize)>> {
    let in_features = |name: &str| {
        config
            .expected_shape(&format!("{name}.weight"))
            .and_then(|s| s.get(1).copied())
            .unwrap_or(0)
    };
    let grouped = |w: &WeightQConfig| match (w.dtype, w.scope) {
        (QDType::Int4, WeightScope::PerGroup(g)) => Some(g),
        _ => None,
    };
    let Some(asked) = plan.values().filter_map(|(w, _)| grouped(w)).max() else {
        return Ok(None);
    };
    let widths: Vec<(String, usize)> = plan
        .iter()
        .filter(|(_, (w, _))| grouped(w).is_some())
        .map(|(n, _)| (n.clone(), in_features(n)))
        .collect();
    let fits = |g: usize| widths.iter().all(|(_, k)| k.is_multiple_of(g));
    let groups_asked: Vec<usize> = plan.values().filter_map(|(w, _)| grouped(w)).collect();
    if groups_asked.iter().all(|&g| fits(g)) {
        return Ok(None);
    }
    let Some(used) = [128, 64, 32].into_iter().find(|&g| g <= asked && fits(g)) else {
        let (name, k) = widths
            .iter()
            .find(|(_, k)| !k.is_multiple_of(32))
            .cloned()
            .unwrap_or_default();
        return Err(Error::InvalidArgument(format!(
            "int4 groups of {asked} do not tile `{name}` ({k} inputs), and no group of 32, 64 or \
             128 divides every quantized width: quantize it per channel or leave it in float"
        )));
    };
    for (w, _) in plan.values_mut() {
        if grouped(w).is_some() {
            w.scope = WeightScope::PerGroup(used);
        }
    }
    Ok(Some((asked, used)))
}

pub struct QuantizedModel {
    pub config: ModelConfig,
    pub tokenizer: TokenizerBundle,
    /// Dense tensors (BF16): embeddings, norms, biases, fallback linears, LM head.
    pub dense: BTreeMap<String, HostTensor>,
    /// Quantized linears by module name.
    pub linears: BTreeMap<String, QLinear>,
    pub recipe: Recipe,
    pub report: QuantReport,
    /// The smoothed float weights (f32), when `QuantizeOptions::keep_float` asked for them.
    pub float: Option<BTreeMap<String, HostTensor>>,
}

impl WeightSource for QuantizedModel {
    fn tensor_names(&self) -> Vec<String> {
        self.dense.keys().cloned().collect()
    }
    fn load(&self, name: &str) -> Result<HostTensor> {
        self.dense
            .get(name)
            .cloned()
            .ok_or_else(|| Error::MissingTensor(name.to_string()))
    }
    fn quant_linear(&self, name: &str) -> Result<Option<(QuantWeight, ActSpec)>> {
        Ok(self.linears.get(name).map(|q| (q.weight.clone(), q.act)))
    }
    fn online_hadamard(&self) -> Option<OnlineHadamard> {
        Some(self.config.hadamard)
    }
}

fn to_f32(w: &mut BTreeMap<String, HostTensor>) {
    for t in w.values_mut() {
        if t.dtype() != DType::F32 {
            *t = t.to_dtype(DType::F32);
        }
    }
}

/// Progress callback: (stage, done, total).
pub type Progress<'a> = &'a (dyn Fn(&str, usize, usize) + Sync);

/// `quantize_on` with the calibration passes on the CPU (the reference: f32 weights).
pub fn quantize(
    config: ModelConfig,
    tokenizer: TokenizerBundle,
    weights: BTreeMap<String, HostTensor>,
    recipe: &Recipe,
    opts: &QuantizeOptions,
    progress: Progress<'_>,
) -> Result<QuantizedModel> {
    quantize_on(
        &|| Ok(CpuBackend::new()),
        config,
        tokenizer,
        weights,
        recipe,
        opts,
        progress,
    )
}

/// Quantize per `recipe`, running the calibration passes (smoothing statistics, static scales,
/// histograms, GPTQ inputs) on the backends `open` makes. A backend that holds weights in a
/// narrower type than f32 (CUDA: bf16) observes slightly different activations, so its scales
/// can differ from the CPU's in the last bits.
pub fn quantize_on<B: Backend>(
    open: &dyn Fn() -> Result<B>,
    config: ModelConfig,
    tokenizer: TokenizerBundle,
    mut weights: BTreeMap<String, HostTensor>,
    recipe: &Recipe,
    opts: &QuantizeOptions,
    progress: Progress<'_>,
) -> Result<QuantizedModel> {
    let t0 = Instant::now();
    to_f32(&mut weights);
    let samples = calib::load_samples(
        &tokenizer,
        opts.calib_file.as_deref(),
        opts.n_samples,
        opts.seq_len,
    )?;
    let mut report = QuantReport {
        calib_samples: samples.len(),
        calib_tokens: samples.iter().map(|s| s.len()).sum(),
        ..Default::default()
    };
    let float_model = |c: &ModelConfig, w: &BTreeMap<String, HostTensor>| {
        LlamaModel::load(open()?, c.clone(), w, Some(DType::F32))
    };
    let mut config = config;

    // 1. outlier suppression, in recipe order, on statistics of the current float model
    let smoothers: Vec<&Processor> = recipe
        .processors
        .iter()
        .filter(|p| p.is_smoother())
        .collect();
    if !smoothers.is_empty() {
        let keep_rows = if smoothers
            .iter()
            .any(|p| matches!(p, Processor::FlexSmooth { .. }))
        {
            32
        } else {
            0
        };
        let model = float_model(&config, &weights)?;
        let mut stats = calib::collect(
            &model,
            &samples,
            &CollectOptions {
                hist_ranges: None,
                keep_rows,
            },
            opts.batch,
            &|d, n| progress("smoothing statistics", d, n),
        )?;
        drop(model);
        for p in smoothers {
            let (method, inc, exc) = match p {
                Processor::IterSmooth {
                    alpha,
                    include,
                    exclude,
                } => (Method::Iterative { alpha: *alpha }, include, exclude),
                Processor::SmoothQuant {
                    alpha,
                    include,
                    exclude,
                } => (Method::SmoothQuant { alpha: *alpha }, include, exclude),
                Processor::FlexSmooth { include, exclude } => (Method::Flex, include, exclude),
                Processor::LinearQuant { .. } | Processor::Hadamard { .. } => continue,
            };
            report.smoothed_subgraphs +=
                smooth::apply(method, &config, &mut weights, &mut stats, inc, exc)?;
        }
    }

    // 1b. online rotation, on the smoothed weights (the recipe puts it after every smoother)
    if let Some(Processor::Hadamard { sites }) = recipe
        .processors
        .iter()
        .find(|p| matches!(p, Processor::Hadamard { .. }))
    {
        for &site in sites {
            let dim = config.site_dim(site);
            let Some(block) = hadamard::block_for(dim) else {
                report.hadamard_skipped.push(site);
                continue;
            };
            if config.hadamard.block(site).is_some() {
                continue; // listed twice
            }
            for l in 0..config.num_layers {
                for m in site.linears() {
                    let name = format!("model.layers.{l}.{m}.weight");
                    let w = weights
                        .get_mut(&name)
                        .ok_or_else(|| Error::MissingTensor(name.clone()))?;
                    hadamard::rotate_columns(w, block)?;
                }
            }
            config.hadamard.set(site, block, dim)?;
        }
    }

    // 2. which recipe entry quantizes each linear (first match wins)
    let mut plan: BTreeMap<String, (WeightQConfig, Option<ActConfig>)> = BTreeMap::new();
    for name in decoder_linears(config.num_layers) {
        let hit = recipe.processors.iter().find_map(|p| match p {
            Processor::LinearQuant {
                qconfig,
                include,
                exclude,
            } if super::recipe::selected(&name, include, exclude) => Some(qconfig),
            _ => None,
        });
        match hit {
            Some(q) => {
                plan.insert(name, (q.weight.to_qconfig()?, q.act.clone()));
            }
            None => report.fallback.push(name),
        }
    }
    report.int4_group = fit_int4_groups(&config, &mut plan)?;

    // 3. static activation scales from the smoothed float model
    let needs_static = plan
        .values()
        .any(|(_, a)| a.as_ref().is_some_and(|a| a.scope != ActScope::PerToken));
    let needs_hist = plan.values().any(|(_, a)| {
        a.as_ref().is_some_and(|a| {
            a.scope != ActScope::PerToken
                && matches!(
                    a.method,
                    ActMethod::Percentile | ActMethod::HistogramMse | ActMethod::HistogramKl
                )
        })
    });
    let mut act_stats: StatsMap = BTreeMap::new();
    if needs_static {
        let model = float_model(&config, &weights)?;
        act_stats = calib::collect(
            &model,
            &samples,
            &CollectOptions::default(),
            opts.batch,
            &|d, n| progress("activation ranges", d, n),
        )?;
        if needs_hist {
            act_stats = calib::collect(
                &model,
                &samples,
                &CollectOptions {
                    hist_ranges: Some(calib::hist_ranges(&act_stats)),
                    keep_rows: 0,
                },
                opts.batch,
                &|d, n| progress("histograms", d, n),
            )?;
        }
    }

    // 3b. GPTQ needs every calibration row of the inputs it quantizes against
    let needs_gptq = plan.values().any(|(w, _)| w.method == WeightMethod::Gptq);
    let mut gptq_rows: StatsMap = BTreeMap::new();
    if needs_gptq {
        let model = float_model(&config, &weights)?;
        gptq_rows = calib::collect(
            &model,
            &samples,
            &CollectOptions {
                hist_ranges: None,
                keep_rows: usize::MAX,
            },
            opts.batch,
            &|d, n| progress("GPTQ inputs", d, n),
        )?;
    }
    // H⁻¹ factors of the current layer's inputs (the plan is in name order, so a layer's
    // linears are contiguous and older factors can go)
    let mut factors: BTreeMap<(usize, Site), gptq::InputFactor> = BTreeMap::new();

    let float = opts.keep_float.then(|| weights.clone());
    // 4. quantize the weights
    let mut linears = BTreeMap::new();
    let total = plan.len();
    for (i, (name, (wcfg, act_cfg))) in plan.into_iter().enumerate() {
        let wname = format!("{name}.weight");
        let w = weights
            .remove(&wname)
            .ok_or_else(|| Error::MissingTensor(wname.clone()))?;
        let [n, k] = w.shape[..] else {
            return Err(Error::ShapeMismatch {
                tensor: wname,
                expected: vec![0, 0],
                actual: w.shape.clone(),
            });
        };
        let weight = if wcfg.method == WeightMethod::Gptq {
            let key = Site::of_linear(&name).ok_or_else(|| {
                Error::InvalidArgument(format!("{name}: GPTQ needs a decoder linear"))
            })?;
            factors.retain(|(l, _), _| *l == key.0);
            let factor = match factors.entry(key) {
                Entry::Occupied(e) => e.into_mut(),
                Entry::Vacant(e) => {
                    let rows = gptq_rows.get(&key).ok_or_else(|| {
                        Error::InvalidArgument(format!("{name}: no calibration rows for GPTQ"))
                    })?;
                    e.insert(gptq::InputFactor::new(&rows.rows, k)?)
                }
            };
            gptq::gptq_int4(&w.to_f32_vec(), n, k, factor, &wcfg)
                .map_err(|e| Error::InvalidArgument(format!("{name}: {e}")))?
        } else {
            quantize_weight(&w.to_f32_vec(), n, k, &wcfg)?
        };
        let act = match &act_cfg {
            None => ActSpec::NONE,
            Some(a) => {
                let policy = match a.scope {
                    ActScope::PerToken => ActQuant::Dynamic,
                    scope => {
                        let (l, site) = Site::of_linear(&name).ok_or_else(|| {
                            Error::InvalidArgument(format!("{name}: not a decoder linear"))
                        })?;
                        let st = act_stats.get(&(l, site)).ok_or_else(|| {
                            Error::InvalidArgument(format!("{name}: no calibration statistics"))
                        })?;
                        let (scale, zp) = observer::static_params(
                            &st.act,
                            a.method,
                            a.percentile,
                            a.qdtype(),
                            a.symmetric,
                        );
                        if scope == ActScope::PdMix {
                            ActQuant::PdMix { scale, zp }
                        } else {
                            ActQuant::Static { scale, zp }
                        }
                    }
                };
                ActSpec {
                    policy,
                    dtype: a.qdtype(),
                    symmetric: a.symmetric,
                }
            }
        };
        linears.insert(
            name,
            QLinear {
                shape: [n, k],
                weight,
                wcfg,
                act,
                act_cfg,
            },
        );
        progress("quantizing weights", i + 1, total);
    }
    report.quantized = linears.len();

    // 5. everything else stays dense, in BF16
    let dense = weights
        .into_iter()
        .map(|(k, t)| (k, t.to_dtype(DType::BF16)))
        .collect();
    report.secs = t0.elapsed().as_secs_f64();
    // set last: the float models built for calibration above keep a float head
    config.lm_head = recipe.lm_head;
    Ok(QuantizedModel {
        config,
        tokenizer,
        dense,
        linears,
        recipe: recipe.clone(),
        report,
        float,
    })
}
