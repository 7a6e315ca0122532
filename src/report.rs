//! Self-contained HTML reports for `eval --report` and `analyze --report`.
//!
//! - One file, no scripts or external assets: plots are inline SVG, so the page opens anywhere
//!   and renders the same headless (`scripts/report-check.sh` screenshots it).
//! - Plots: per-linear sensitivity bars, activation histograms with the clip range marked, and
//!   the per-token KL distribution on a log axis.

use crate::eval::{EvalSummary, TokenScores};
use crate::ptq::analyze::{AnalyzeReport, InputHistogram};
use std::fmt::Write;

const WIDTH: f64 = 900.0;
/// Bins the 2048-bin calibration histograms are summed into for drawing.
const DRAW_BINS: usize = 128;
/// Per-token KL is drawn as log10(KL) over this range (values below go in the first bin).
const KL_LOG_RANGE: (f64, f64) = (-6.0, 1.0);
const KL_BINS: usize = 70;

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A horizontal bar per (label, value), longest bar = largest value.
pub fn bar_chart(title: &str, unit: &str, bars: &[(String, f64)]) -> String {
    let (label_w, row_h, top) = (330.0, 16.0, 28.0);
    let h = top + row_h * bars.len() as f64 + 10.0;
    let max = bars.iter().map(|b| b.1).fold(0f64, f64::max).max(1e-30);
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{h}" font-family="sans-serif" font-size="11"><text x="0" y="16" font-size="13" font-weight="bold">{}</text>"#,
        esc(title)
    );
    let span = WIDTH - label_w - 90.0;
    for (i, (label, v)) in bars.iter().enumerate() {
        let y = top + row_h * i as f64;
        let w = (v / max).max(0.0) * span;
        let _ = write!(
            s,
            r##"<text x="{:.1}" y="{:.1}" text-anchor="end">{}</text><rect x="{label_w}" y="{:.1}" width="{w:.1}" height="{:.1}" fill="#4a78c2"/><text x="{:.1}" y="{:.1}">{v:.3e} {}</text>"##,
            label_w - 6.0,
            y + 11.0,
            esc(label),
            y + 2.0,
            row_h - 4.0,
            label_w + w + 4.0,
            y + 11.0,
            esc(unit)
        );
    }
    s.push_str("</svg>");
    s
}

/// A histogram of `counts` (equal bins over `bins`), log-scaled counts, drawn on the x axis
/// `domain` (which contains `bins`), with labelled vertical markers at x positions.
pub fn histogram(
    title: &str,
    x_label: &str,
    bins: (f64, f64),
    domain: (f64, f64),
    counts: &[f64],
    markers: &[(f64, String, &str)],
) -> String {
    let (lo, hi) = domain;
    let (h, left, bottom, top) = (240.0, 50.0, 40.0, 28.0);
    let (pw, ph) = (WIDTH - left - 20.0, h - top - bottom);
    let ymax = counts
        .iter()
        .map(|c| (1.0 + c).log10())
        .fold(0f64, f64::max)
        .max(1e-9);
    let xpos = |x: f64| left + (x - lo) / (hi - lo).max(1e-30) * pw;
    let mut s = String::new();
    let _ = write!(
        s,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{h}" font-family="sans-serif" font-size="11"><text x="0" y="16" font-size="13" font-weight="bold">{}</text><rect x="{left}" y="{top}" width="{pw:.1}" height="{ph:.1}" fill="none" stroke="#999"/>"##,
        esc(title)
    );
    let bw = (xpos(bins.1) - xpos(bins.0)) / counts.len().max(1) as f64;
    for (i, &c) in counts.iter().enumerate() {
        if c <= 0.0 {
            continue;
        }
        let bh = (1.0 + c).log10() / ymax * ph;
        let _ = write!(
            s,
            r##"<rect x="{:.2}" y="{:.2}" width="{:.2}" height="{bh:.2}" fill="#6a9f58"/>"##,
            xpos(bins.0) + bw * i as f64,
            top + ph - bh,
            bw.max(0.5)
        );
    }
    for t in 0..=4 {
        let x = lo + (hi - lo) * t as f64 / 4.0;
        let _ = write!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
            xpos(x),
            top + ph + 14.0,
            fmt_tick(x)
        );
    }
    let _ = write!(
        s,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text><text x="12" y="{:.1}" transform="rotate(-90 12 {:.1})" text-anchor="middle">log10(1 + count)</text>"#,
        left + pw / 2.0,
        h - 6.0,
        esc(x_label),
        top + ph / 2.0,
        top + ph / 2.0
    );
    for (i, (x, label, color)) in markers.iter().enumerate() {
        let px = xpos(x.clamp(lo, hi));
        // labels near the right edge grow leftwards so they stay inside the plot
        let (tx, anchor) = if px > left + 0.8 * pw {
            (px - 3.0, "end")
        } else {
            (px + 3.0, "start")
        };
        let _ = write!(
            s,
            r#"<line x1="{px:.1}" y1="{top}" x2="{px:.1}" y2="{:.1}" stroke="{color}" stroke-width="2" stroke-dasharray="5,3"/><text x="{tx:.1}" y="{:.1}" fill="{color}" text-anchor="{anchor}">{}</text>"#,
            top + ph,
            top + 12.0 + 12.0 * i as f64,
            esc(label)
        );
    }
    s.push_str("</svg>");
    s
}

fn fmt_tick(x: f64) -> String {
    if x != 0.0 && (x.abs() >= 1e4 || x.abs() < 1e-2) {
        format!("{x:.1e}")
    } else {
        format!("{x:.2}")
    }
}

/// The distribution of per-token KL on a log10 axis, with mean / median / p99 marked.
pub fn kl_distribution(kl: &[f64], summary: &EvalSummary) -> String {
    let (lo, hi) = KL_LOG_RANGE;
    let mut counts = vec![0f64; KL_BINS];
    for &v in kl {
        let x = v.max(1e-30).log10();
        let b = ((x - lo) / (hi - lo) * KL_BINS as f64).floor();
        counts[b.clamp(0.0, KL_BINS as f64 - 1.0) as usize] += 1.0;
    }
    let mark = |v: f64, name: &str, c| (v.max(1e-30).log10(), format!("{name} {v:.2e}"), c);
    histogram(
        &format!("Per-token KL(base ‖ model), {} tokens", kl.len()),
        "log10 KL (nats)",
        (lo, hi),
        (lo, hi),
        &counts,
        &[
            mark(summary.kl_mean, "mean", "#c0392b"),
            mark(summary.kl_median, "median", "#2c3e50"),
            mark(summary.kl_p99, "p99", "#8e44ad"),
        ],
    )
}

/// An input's calibration histogram (2048 bins) summed into `DRAW_BINS`, with its observed
/// range and the static clip range (when the scheme has one) marked.
pub fn input_histogram(h: &InputHistogram) -> String {
    let per = h.counts.len().div_ceil(DRAW_BINS).max(1);
    let counts: Vec<f64> = h
        .counts
        .chunks(per)
        .map(|c| c.iter().sum::<u64>() as f64)
        .collect();
    let mut markers = vec![
        (
            h.observed.0 as f64,
            format!("min {:.3}", h.observed.0),
            "#2c3e50",
        ),
        (
            h.observed.1 as f64,
            format!("max {:.3}", h.observed.1),
            "#2c3e50",
        ),
    ];
    let note = match h.clip {
        Some((a, b)) => {
            markers.push((a as f64, format!("clip {a:.3}"), "#c0392b"));
            markers.push((b as f64, format!("clip {b:.3}"), "#c0392b"));
            "static clip range in red".to_string()
        }
        None => "dynamic per-token scales: no static clip".to_string(),
    };
    // wide enough for the clip markers too, which may lie outside the observed range
    let r = h.range as f64;
    let reach = h
        .clip
        .map_or(r, |(a, b)| r.max(a.abs() as f64).max(b.abs() as f64));
    histogram(
        &format!("Input of {} ({note})", h.linears.join(", ")),
        "activation value",
        (-r, r),
        (-1.03 * reach, 1.03 * reach),
        &counts,
        &markers,
    )
}

fn page(title: &str, body: &str) -> String {
    format!(
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{t}</title><style>body{{font-family:sans-serif;margin:24px;max-width:960px}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}}th{{background:#eee}}td:first-child{{text-align:left}}svg{{display:block;margin:12px 0}}</style></head><body><h1>{t}</h1>\n{body}\n</body></html>\n",
        t = esc(title)
    )
}

fn table(head: &[&str], rows: &[Vec<String>]) -> String {
    let mut s = String::from("<table><tr>");
    for h in head {
        let _ = write!(s, "<th>{}</th>", esc(h));
    }
    s.push_str("</tr>");
    for r in rows {
        s.push_str("<tr>");
        for c in r {
            let _ = write!(s, "<td>{}</td>", esc(c));
        }
        s.push_str("</tr>");
    }
    s.push_str("</table>");
    s
}

fn summary_table(s: &EvalSummary) -> String {
    table(
        &[
            "PPL base",
            "PPL",
            "PPL change",
            "KL mean",
            "KL median",
            "KL p99",
            "KL max",
            "same top-1",
        ],
        &[vec![
            format!("{:.4}", s.ppl_base),
            format!("{:.4}", s.ppl),
            format!("{:+.2}%", s.ppl_change_pct),
            format!("{:.6}", s.kl_mean),
            format!("{:.6}", s.kl_median),
            format!("{:.6}", s.kl_p99),
            format!("{:.4}", s.kl_max),
            format!("{:.2}%", s.top1_agreement_pct),
        ]],
    )
}

/// `ferroq eval --report`: the summary and the KL distribution.
pub fn eval_page(model: &str, baseline: &str, s: &EvalSummary, scores: &TokenScores) -> String {
    let body = format!(
        "<p>Model <b>{}</b> against baseline <b>{}</b>: {} chunks of {} tokens, second half of each scored ({} tokens).</p>{}{}",
        esc(model),
        esc(baseline),
        s.chunks,
        s.ctx,
        s.scored_tokens,
        summary_table(s),
        kl_distribution(&scores.kl, s)
    );
    page(&format!("ferroq eval: {model}"), &body)
}

/// `ferroq analyze --report`: ranked sensitivity, input histograms, full-model KL.
pub fn analyze_page(model: &str, recipe: &str, r: &AnalyzeReport) -> String {
    let mut body = format!(
        "<p>Model <b>{}</b>, recipe <b>{}</b>. Each quantized linear was swapped alone into the float model; bars show the mean KL it causes. Full-model mean KL with every selected linear quantized: <b>{:.6}</b>.</p>",
        esc(model),
        esc(recipe),
        r.full_kl
    );
    if let Some(b) = &r.budget {
        let _ = write!(
            body,
            "<p>KL budget {}: {} linears kept in BF16 ({}), verified mean KL {:.6}.</p>",
            b.budget,
            b.fallback.len(),
            esc(&b.fallback.join(", ")),
            b.kl
        );
    }
    let top: Vec<(String, f64)> = r
        .layers
        .iter()
        .take(40)
        .map(|l| (l.name.trim_start_matches("model.").to_string(), l.kl))
        .collect();
    body.push_str(&bar_chart(
        &format!(
            "Sensitivity: mean KL caused alone (top {} of {})",
            top.len(),
            r.layers.len()
        ),
        "",
        &top,
    ));
    if let Some(s) = &r.full_summary {
        body.push_str(&kl_distribution(&r.full_token_kl, s));
    }
    body.push_str("<h2>Inputs of the most sensitive linears</h2>");
    for h in &r.inputs {
        body.push_str(&input_histogram(h));
    }
    body.push_str("<h2>All linears</h2>");
    let rows: Vec<Vec<String>> = r
        .layers
        .iter()
        .enumerate()
        .map(|(i, l)| {
            vec![
                format!("{} {}", i + 1, l.name),
                format!("{:.6}", l.kl),
                format!("{:.1}", l.kurtosis),
                format!("{:.1}", l.max_over_std),
            ]
        })
        .collect();
    body.push_str(&table(
        &["rank, linear", "KL alone", "input kurtosis", "max/std"],
        &rows,
    ));
    page(&format!("ferroq analyze: {model}"), &body)
}
