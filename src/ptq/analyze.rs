//! `ferroq analyze`: per-layer quantization sensitivity and automatic BF16 fallback.
//!
//! - Each quantized linear is swapped, alone, into the smoothed float model and the KL it causes
//!   is measured (msModelSlim's "fall back the most sensitive layers first"), with its input's
//!   kurtosis and max/std beside it.
//! - With a KL budget, the smallest most-sensitive-first prefix to keep in BF16 is searched
//!   (doubling, then bisection) and verified by re-quantizing from scratch.
//! - Calibration and scoring run on whichever backend `open` makes.

use super::calib::{self, CollectOptions};
use super::pipeline::{quantize_on, QuantizeOptions, QuantizedModel};
use super::recipe::Recipe;
use crate::backend::linear::LinearWeight;
use crate::backend::Backend;
use crate::checkpoint::site::Site;
use crate::error::{Error, Result};
use crate::eval::{self, BaseSource, Baseline, EvalSummary, TokenScores};
use crate::model::llama::LlamaModel;
use crate::tensor::{DType, HostTensor};
use crate::tokenizer::TokenizerBundle;
use std::collections::BTreeMap;

#[derive(Clone, Debug, serde::Serialize)]
pub struct LayerSensitivity {
    pub name: String,
    /// Mean KL caused by quantizing this linear alone.
    pub kl: f64,
    pub kurtosis: f64,
    pub max_over_std: f64,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct BudgetResult {
    pub budget: f64,
    /// Linears kept in BF16, most sensitive first.
    pub fallback: Vec<String>,
    /// Mean KL of the re-quantized model with that fallback (verified).
    pub kl: f64,
}

/// The evaluation-set histogram of one input (for the HTML report).
#[derive(Clone, Debug, serde::Serialize)]
pub struct InputHistogram {
    /// The linears reading this input.
    pub linears: Vec<String>,
    /// Bins cover [-range, range].
    pub range: f32,
    pub counts: Vec<u64>,
    /// (min, max) seen.
    pub observed: (f32, f32),
    /// The static range the recipe's observer chose, when the scheme has one.
    pub clip: Option<(f32, f32)>,
}

/// Inputs drawn in the report: those of the most sensitive linears.
const REPORT_INPUTS: usize = 6;

#[derive(Clone, Debug, serde::Serialize)]
pub struct AnalyzeReport {
    /// Most sensitive first.
    pub layers: Vec<LayerSensitivity>,
    /// Mean KL with every selected linear quantized.
    pub full_kl: f64,
    pub budget: Option<BudgetResult>,
    /// Summary and per-token KL of the fully quantized model (report only).
    #[serde(skip)]
    pub full_summary: Option<EvalSummary>,
    #[serde(skip)]
    pub full_token_kl: Vec<f64>,
    #[serde(skip)]
    pub inputs: Vec<InputHistogram>,
}

impl AnalyzeReport {
    /// The ranking table `ferroq analyze` prints, headed by the full-model KL.
    pub fn table(&self, recipe: &str, chunks: usize, ctx: usize) -> String {
        let mut t = format!(
            "full-model mean KL with `{recipe}`: {:.6} ({chunks} chunks x {ctx} tokens)\n\
             | rank | linear | KL alone | input kurtosis | max/std |\n|---:|---|---:|---:|---:|\n",
            self.full_kl
        );
        for (i, l) in self.layers.iter().enumerate() {
            t += &format!(
                "| {} | {} | {:.6} | {:.1} | {:.1} |\n",
                i + 1,
                l.name,
                l.kl,
                l.kurtosis,
                l.max_over_std
            );
        }
        t
    }
}

pub struct AnalyzeOptions {
    pub quant: QuantizeOptions,
    pub ctx: usize,
    pub chunks: usize,
    pub kl_budget: Option<f64>,
}

fn scores<B: Backend>(
    model: &LlamaModel<B>,
    base: &Baseline,
    tokens: &[u32],
) -> Result<TokenScores> {
    eval::evaluate(
        model,
        BaseSource::File(base),
        tokens,
        base.ctx,
        base.chunks,
        eval::EvalPath::Prefill,
        None,
        &|_, _| {},
    )
}

/// Mean KL of `model` against the baseline.
fn mean_kl<B: Backend>(model: &LlamaModel<B>, base: &Baseline, tokens: &[u32]) -> Result<f64> {
    Ok(scores(model, base, tokens)?
        .summary(base.chunks, base.ctx)
        .kl_mean)
}

/// Put the quantized weights of `names` into the float model (and dense weights back for the rest).
fn set_quantized<B: Backend>(
    m: &mut LlamaModel<B>,
    q: &QuantizedModel,
    float: &BTreeMap<String, HostTensor>,
    names: &[&String],
) -> Result<()> {
    for (name, ql) in &q.linears {
        let weight = if names.contains(&name) {
            LinearWeight::Quant(
                m.backend
                    .upload_quant(&ql.weight, ql.shape[0], ql.shape[1])?,
            )
        } else {
            let w = float
                .get(&format!("{name}.weight"))
                .ok_or_else(|| Error::MissingTensor(format!("{name}.weight")))?;
            LinearWeight::Dense(std::sync::Arc::new(m.backend.upload_matrix(w, DType::F32)?))
        };
        let lin = m
            .linear_mut(name)
            .ok_or_else(|| Error::InvalidArgument(format!("no linear `{name}`")))?;
        lin.act = if names.contains(&name) {
            ql.act
        } else {
            crate::quant::ActSpec::NONE
        };
        lin.weight = weight;
    }
    Ok(())
}

/// Rank the linears of `recipe` by sensitivity on `tokens` (ctx × chunks of them). The
/// calibration and scoring passes (one per linear, then the budget search) run on the
/// backends `open` makes.
#[allow(clippy::too_many_arguments)]
pub fn analyze<B: Backend>(
    open: &dyn Fn() -> Result<B>,
    config: crate::checkpoint::config::ModelConfig,
    tokenizer: &TokenizerBundle,
    weights: BTreeMap<String, HostTensor>,
    recipe: &Recipe,
    tokens: &[u32],
    opts: &AnalyzeOptions,
    progress: &(dyn Fn(&str, usize, usize) + Sync),
) -> Result<AnalyzeReport> {
    let qopts = QuantizeOptions {
        keep_float: true,
        ..opts.quant.clone()
    };
    let q = quantize_on(
        open,
        config.clone(),
        tokenizer.clone(),
        weights.clone(),
        recipe,
        &qopts,
        progress,
    )?;
    let float = q
        .float
        .as_ref()
        .ok_or_else(|| Error::InvalidArgument("quantize kept no float weights".into()))?;
    // q.config carries the recipe's online rotation, which the float weights already have
    let mut m = LlamaModel::load(open()?, q.config.clone(), float, Some(DType::F32))?;
    let base = eval::baseline(&m, tokens, opts.ctx, opts.chunks, &|d, n| {
        progress("float baseline", d, n)
    })?;

    // cheap statistics of each input, from the evaluation chunks
    let samples: Vec<Vec<u32>> = tokens
        .chunks(opts.ctx)
        .take(opts.chunks)
        .map(|c| c.to_vec())
        .collect();
    let stats = calib::collect(&m, &samples, &CollectOptions::default(), 1, &|_, _| {})?;
    // and their histograms (second pass: the ranges come from the first), for the report
    let hist = calib::collect(
        &m,
        &samples,
        &CollectOptions {
            hist_ranges: Some(calib::hist_ranges(&stats)),
            keep_rows: 0,
        },
        1,
        &|_, _| {},
    )?;

    let names: Vec<String> = q.linears.keys().cloned().collect();
    let mut layers = Vec::with_capacity(names.len());
    for (i, name) in names.iter().enumerate() {
        set_quantized(&mut m, &q, float, &[name])?;
        let kl = mean_kl(&m, &base, tokens)?;
        let (kurtosis, max_over_std) = Site::of_linear(name)
            .and_then(|k| stats.get(&k))
            .map(|s| s.kurtosis_and_max_over_std())
            .unwrap_or((f64::NAN, f64::NAN));
        layers.push(LayerSensitivity {
            name: name.clone(),
            kl,
            kurtosis,
            max_over_std,
        });
        progress("layer sensitivity", i + 1, names.len());
    }
    layers.sort_by(|a, b| b.kl.total_cmp(&a.kl).then(a.name.cmp(&b.name)));
    let all: Vec<&String> = names.iter().collect();
    set_quantized(&mut m, &q, float, &all)?;
    let full = scores(&m, &base, tokens)?;
    let full_summary = full.summary(base.chunks, base.ctx);
    let full_kl = full_summary.kl_mean;
    let inputs = input_histograms(&hist, &layers, &q);

    let budget = match opts.kl_budget {
        None => None,
        Some(budget) => {
            // KL with the k most sensitive layers in BF16, from the swapped model
            let kl_at = |k: usize, m: &mut LlamaModel<B>| -> Result<f64> {
                let keep: Vec<&String> = names
                    .iter()
                    .filter(|n| !layers[..k].iter().any(|l| &l.name == *n))
                    .collect();
                set_quantized(m, &q, float, &keep)?;
                mean_kl(m, &base, tokens)
            };
            let n = layers.len();
            let (mut lo, mut hi) = (0usize, None);
            if full_kl <= budget {
                hi = Some(0);
            } else {
                let mut k = 1;
                while k <= n {
                    if kl_at(k, &mut m)? <= budget {
                        hi = Some(k);
                        break;
                    }
                    lo = k;
                    k *= 2;
                }
                if hi.is_none() && kl_at(n, &mut m)? <= budget {
                    hi = Some(n);
                }
            }
            let mut k = hi.ok_or_else(|| {
                Error::InvalidArgument(format!(
                    "even with every linear in BF16 the KL stays above {budget}"
                ))
            })?;
            while lo + 1 < k {
                let mid = (lo + k) / 2;
                if kl_at(mid, &mut m)? <= budget {
                    k = mid;
                } else {
                    lo = mid;
                }
            }
            // verify by re-quantizing with the fallback recipe; widen the fallback if needed
            loop {
                let fallback: Vec<String> = layers[..k].iter().map(|l| l.name.clone()).collect();
                let r = recipe.with_fallback(&fallback);
                let q2 = quantize_on(
                    open,
                    config.clone(),
                    tokenizer.clone(),
                    weights.clone(),
                    &r,
                    &opts.quant,
                    &|_, _, _| {},
                )?;
                let m2 = LlamaModel::load(open()?, q2.config.clone(), &q2, Some(DType::F32))?;
                let kl = mean_kl(&m2, &base, tokens)?;
                progress("verifying budget", k, n);
                if kl <= budget || k == n {
                    if kl > budget {
                        return Err(Error::InvalidArgument(format!(
                            "the budget {budget} could not be met (KL {kl})"
                        )));
                    }
                    break Some(BudgetResult {
                        budget,
                        fallback,
                        kl,
                    });
                }
                k += 1;
            }
        }
    };
    Ok(AnalyzeReport {
        layers,
        full_kl,
        budget,
        full_summary: Some(full_summary),
        full_token_kl: full.kl,
        inputs,
    })
}

/// Histograms of the inputs of the most sensitive linears (from the float model's evaluation
/// pass), with the clip range their static activation scheme chose.
fn input_histograms(
    hist: &calib::StatsMap,
    ranked: &[LayerSensitivity],
    q: &QuantizedModel,
) -> Vec<InputHistogram> {
    let mut sites: Vec<(usize, Site)> = Vec::new();
    for l in ranked {
        if let Some(k) = Site::of_linear(&l.name) {
            if !sites.contains(&k) && sites.len() < REPORT_INPUTS {
                sites.push(k);
            }
        }
    }
    let mut out = Vec::new();
    for (l, site) in sites {
        let Some(st) = hist.get(&(l, site)) else {
            continue;
        };
        let Some(h) = &st.act.hist else { continue };
        let linears: Vec<String> = site
            .linears()
            .iter()
            .map(|m| format!("model.layers.{l}.{m}"))
            .collect();
        let clip = linears
            .iter()
            .find_map(|n| q.linears.get(n).and_then(|ql| ql.act.clip_range()));
        out.push(InputHistogram {
            linears,
            range: h.range,
            counts: h.counts.clone(),
            observed: (st.act.min, st.act.max),
            clip,
        });
    }
    out
}
