//! Calibration: the token samples and the statistics the float model produces on them.
//!
//! - Samples from `--calib FILE` (plain text or JSONL) or the built-in mixed-domain text.
//! - Statistics: per-channel |x| maxima (smoothing), min / max and per-sample ranges (minmax
//!   observers), fixed-range histograms (second pass), first rows of each input (Flex Smooth).
//! - Samples run `batch` at a time; per-sample results merge in sample order with exact
//!   operations (max, integer counts), so statistics are bit-identical for any batch and thread
//!   count.

use super::observer::{ActStats, Histogram};
use crate::backend::Backend;
use crate::checkpoint::site::Site;
use crate::error::{Error, Result};
use crate::model::llama::{ActivationHook, LlamaModel};
use crate::tokenizer::TokenizerBundle;
use rayon::prelude::*;
use std::collections::BTreeMap;
use std::path::Path;

/// The built-in calibration text used when no `--calib` file is given.
pub const DEFAULT_TEXT: &str = include_str!("data/calib_default.txt");

/// Token samples for calibration.
pub fn load_samples(
    tok: &TokenizerBundle,
    file: Option<&Path>,
    n_samples: usize,
    seq_len: usize,
) -> Result<Vec<Vec<u32>>> {
    if n_samples == 0 || seq_len < 2 {
        return Err(Error::InvalidArgument(
            "calibration needs at least 1 sample of at least 2 tokens".into(),
        ));
    }
    let (text, jsonl) = match file {
        None => (DEFAULT_TEXT.to_string(), false),
        Some(p) => {
            let t = crate::checkpoint::read_text(
                p,
                crate::checkpoint::MAX_CALIB_BYTES,
                "calibration file",
            )?;
            let jsonl = p.extension().is_some_and(|e| e == "jsonl");
            (t, jsonl)
        }
    };
    let mut samples = Vec::new();
    if jsonl {
        for (i, line) in text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
        {
            let v: serde_json::Value = serde_json::from_str(line).map_err(|e| {
                Error::InvalidArgument(format!("calibration file line {}: {e}", i + 1))
            })?;
            let t = v.get("text").and_then(|t| t.as_str()).ok_or_else(|| {
                Error::InvalidArgument(format!(
                    "calibration file line {}: no \"text\" string",
                    i + 1
                ))
            })?;
            let mut ids = tok.encode(t)?;
            ids.truncate(seq_len);
            if ids.len() >= 2 {
                samples.push(ids);
            }
            if samples.len() == n_samples {
                break;
            }
        }
    } else {
        let ids = tok.encode(&text)?;
        samples = ids
            .chunks(seq_len)
            .filter(|c| c.len() >= 2)
            .take(n_samples)
            .map(|c| c.to_vec())
            .collect();
    }
    if samples.is_empty() {
        return Err(Error::InvalidArgument(
            "calibration data holds no usable sample".into(),
        ));
    }
    Ok(samples)
}

/// Statistics of one linear input (a `Site` of one layer).
#[derive(Clone, Debug, PartialEq)]
pub struct SiteStats {
    /// max |x| per input channel
    pub chan_absmax: Vec<f32>,
    pub act: ActStats,
    /// first rows seen, (rows, dim), in sample order
    pub rows: Vec<f32>,
    /// [n, Σx, Σx², Σx³, Σx⁴] in f64, summed per sample then in sample order (deterministic)
    pub moments: [f64; 5],
}

impl SiteStats {
    /// Excess-free kurtosis E[(x−μ)⁴] / σ⁴ (3 for a Gaussian) and max|x| / σ.
    pub fn kurtosis_and_max_over_std(&self) -> (f64, f64) {
        let [n, s1, s2, s3, s4] = self.moments;
        if n < 2.0 {
            return (f64::NAN, f64::NAN);
        }
        let mu = s1 / n;
        let m2 = (s2 / n - mu * mu).max(1e-30);
        let m4 = s4 / n - 4.0 * mu * s3 / n + 6.0 * mu * mu * s2 / n - 3.0 * mu.powi(4);
        let amax = self.act.min.abs().max(self.act.max.abs()) as f64;
        (m4 / (m2 * m2), amax / m2.sqrt())
    }
}

pub type StatsMap = BTreeMap<(usize, Site), SiteStats>;

/// Histogram ranges for a second pass: each site's max |x| from a first pass.
pub fn hist_ranges(stats: &StatsMap) -> BTreeMap<(usize, Site), f32> {
    stats
        .iter()
        .map(|(k, s)| (*k, s.act.min.abs().max(s.act.max.abs())))
        .collect()
}

/// What to collect.
#[derive(Clone, Debug, Default)]
pub struct CollectOptions {
    /// Histogram range per site (from an earlier pass); None = no histograms.
    pub hist_ranges: Option<BTreeMap<(usize, Site), f32>>,
    /// Rows to keep per site for Flex Smooth.
    pub keep_rows: usize,
}

struct SampleHook<'a> {
    opts: &'a CollectOptions,
    stats: StatsMap,
}

impl ActivationHook for SampleHook<'_> {
    fn observe(&mut self, layer: usize, site: Site, x: &[f32], rows: usize, dim: usize) {
        let keep = self.opts.keep_rows;
        let e = self
            .stats
            .entry((layer, site))
            .or_insert_with(|| SiteStats {
                chan_absmax: vec![0.0; dim],
                act: ActStats {
                    min: 0.0,
                    max: 0.0,
                    per_sample: vec![(0.0, 0.0)],
                    hist: None,
                },
                rows: Vec::new(),
                moments: [0.0; 5],
            });
        for &v in &x[..rows * dim] {
            let v = v as f64;
            let v2 = v * v;
            e.moments[0] += 1.0;
            e.moments[1] += v;
            e.moments[2] += v2;
            e.moments[3] += v2 * v;
            e.moments[4] += v2 * v2;
        }
        for row in x[..rows * dim].chunks_exact(dim) {
            for (m, &v) in e.chan_absmax.iter_mut().zip(row) {
                *m = m.max(v.abs());
            }
        }
        let (lo, hi) = x[..rows * dim]
            .iter()
            .fold((e.act.min, e.act.max), |(l, h), &v| (l.min(v), h.max(v)));
        e.act.min = lo;
        e.act.max = hi;
        e.act.per_sample[0] = (lo, hi);
        if let Some(ranges) = &self.opts.hist_ranges {
            let h = e.act.hist.get_or_insert_with(|| {
                Histogram::new(ranges.get(&(layer, site)).copied().unwrap_or(1.0))
            });
            h.add(&x[..rows * dim]);
        }
        let have = e.rows.len() / dim;
        if have < keep {
            let take = (keep - have).min(rows);
            e.rows.extend_from_slice(&x[..take * dim]);
        }
    }
}

fn merge(into: &mut StatsMap, from: StatsMap, keep_rows: usize) {
    for (key, s) in from {
        match into.get_mut(&key) {
            None => {
                into.insert(key, s);
            }
            Some(t) => {
                t.chan_absmax
                    .iter_mut()
                    .zip(&s.chan_absmax)
                    .for_each(|(a, b)| *a = a.max(*b));
                t.act.min = t.act.min.min(s.act.min);
                t.act.max = t.act.max.max(s.act.max);
                t.act.per_sample.extend(s.act.per_sample);
                t.moments
                    .iter_mut()
                    .zip(&s.moments)
                    .for_each(|(a, b)| *a += b);
                if let (Some(a), Some(b)) = (&mut t.act.hist, &s.act.hist) {
                    a.merge(b);
                }
                let dim = t.chan_absmax.len();
                let have = t.rows.len() / dim;
                if have < keep_rows {
                    let take = (keep_rows - have).min(s.rows.len() / dim);
                    t.rows.extend_from_slice(&s.rows[..take * dim]);
                }
            }
        }
    }
}

/// Run every sample through `model` (prefill only) and gather the statistics, `batch`
/// samples at a time; `progress` is called after each sample with (done, total).
pub fn collect<B: Backend>(
    model: &LlamaModel<B>,
    samples: &[Vec<u32>],
    opts: &CollectOptions,
    batch: usize,
    progress: &(dyn Fn(usize, usize) + Sync),
) -> Result<StatsMap> {
    let batch = batch.max(1);
    let max_len = samples.iter().map(|s| s.len()).max().unwrap_or(1);
    let mut merged = StatsMap::new();
    let done = std::sync::atomic::AtomicUsize::new(0);
    for group in samples.chunks(batch) {
        let results: Vec<Result<StatsMap>> = group
            .par_iter()
            .map(|ids| {
                let mut s = model.new_session(ids.len().min(512), max_len, false)?;
                let mut hook = SampleHook {
                    opts,
                    stats: StatsMap::new(),
                };
                model.forward_observed(&mut s, ids, &mut hook)?;
                let d = done.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
                progress(d, samples.len());
                Ok(hook.stats)
            })
            .collect();
        for r in results {
            merge(&mut merged, r?, opts.keep_rows);
        }
    }
    Ok(merged)
}
