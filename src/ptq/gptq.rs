//! GPTQ (Frantar et al., 2022) for int4 group weights.
//!
//! - Columns are quantized left to right; each column's rounding error, weighted by the inverse
//!   Hessian of the layer's inputs (H = XᵀX over calibration tokens), is pushed onto the columns
//!   not yet quantized: minimising ‖W X − Q X‖ instead of ‖W − Q‖.
//! - Group scales (minmax) are chosen when a group's first column is reached, from the updated
//!   weights, as the reference does; no activation reordering.
//! - Dampening λ = 1% of mean(diag H); inputs that never fire get H_ii = 1 and zero weights.

use crate::backend::cpu::dense::dot;
use crate::error::{Error, Result};
use crate::quant::formats;
use crate::quant::weight::{int_params, WeightMethod, WeightQConfig, WeightScope};
use crate::quant::{QDType, QuantWeight};
use rayon::prelude::*;

const DAMP: f64 = 0.01;

/// H = XᵀX / rows for calibration rows `x` (rows, k), in f64: (k, k), row-major.
pub fn hessian(x: &[f32], k: usize) -> Vec<f64> {
    let rows = x.len() / k.max(1);
    // columns of X, contiguous, so each entry is one dot product
    let mut xt = vec![0f32; k * rows]; // (k, rows)
    for (t, row) in x.chunks_exact(k).enumerate() {
        for (i, &v) in row.iter().enumerate() {
            xt[i * rows + t] = v;
        }
    }
    let mut h = vec![0f64; k * k];
    h.par_chunks_mut(k).enumerate().for_each(|(i, hrow)| {
        let a = &xt[i * rows..(i + 1) * rows];
        for (j, o) in hrow.iter_mut().enumerate().skip(i) {
            *o = dot(a, &xt[j * rows..(j + 1) * rows]) as f64 / rows.max(1) as f64;
        }
    });
    for i in 0..k {
        for j in 0..i {
            h[i * k + j] = h[j * k + i];
        }
    }
    h
}

/// In place: lower Cholesky factor L of a symmetric positive definite (k, k) matrix.
fn cholesky(a: &mut [f64], k: usize) -> Result<()> {
    for j in 0..k {
        let mut d = a[j * k + j];
        for p in 0..j {
            d -= a[j * k + p] * a[j * k + p];
        }
        if d <= 0.0 || !d.is_finite() {
            return Err(Error::InvalidArgument(format!(
                "GPTQ: the input Hessian is not positive definite at column {j}"
            )));
        }
        let d = d.sqrt();
        a[j * k + j] = d;
        let (head, tail) = a.split_at_mut((j + 1) * k);
        let rj = &head[j * k..j * k + j];
        tail.par_chunks_mut(k).for_each(|ri| {
            let s: f64 = ri[..j].iter().zip(rj).map(|(x, y)| x * y).sum();
            ri[j] = (ri[j] - s) / d;
        });
        for p in j + 1..k {
            a[j * k + p] = 0.0;
        }
    }
    Ok(())
}

/// The upper Cholesky factor U of H⁻¹ (H⁻¹ = UᵀU), the form GPTQ's updates use.
fn inverse_upper_factor(mut h: Vec<f64>, k: usize) -> Result<Vec<f64>> {
    cholesky(&mut h, k)?; // H = L Lᵀ
                          // L⁻¹ by forward substitution, one column of the identity per task
    let mut linv_t = vec![0f64; k * k]; // row c = column c of L⁻¹
    linv_t.par_chunks_mut(k).enumerate().for_each(|(c, col)| {
        for i in c..k {
            let mut s = if i == c { 1.0 } else { 0.0 };
            for p in c..i {
                s -= h[i * k + p] * col[p];
            }
            col[i] = s / h[i * k + i];
        }
    });
    // H⁻¹ = L⁻ᵀ L⁻¹: entry (i, j) = Σ_p L⁻¹[p][i] L⁻¹[p][j] = dot of columns i and j of L⁻¹
    let mut hinv = vec![0f64; k * k];
    hinv.par_chunks_mut(k).enumerate().for_each(|(i, row)| {
        let ci = &linv_t[i * k..(i + 1) * k];
        for (j, o) in row.iter_mut().enumerate() {
            let cj = &linv_t[j * k..(j + 1) * k];
            let from = i.max(j);
            *o = ci[from..].iter().zip(&cj[from..]).map(|(a, b)| a * b).sum();
        }
    });
    cholesky(&mut hinv, k)?; // H⁻¹ = M Mᵀ, so U = Mᵀ
    let mut u = vec![0f64; k * k];
    for i in 0..k {
        for j in 0..=i {
            u[j * k + i] = hinv[i * k + j];
        }
    }
    Ok(u)
}

/// Everything GPTQ needs from one input: U = chol(H⁻¹)ᵀ and the dead columns.
pub struct InputFactor {
    k: usize,
    u: Vec<f64>,
    dead: Vec<bool>,
}

impl InputFactor {
    /// From calibration rows (rows, k) of the input that the linears read.
    pub fn new(x: &[f32], k: usize) -> Result<Self> {
        if k == 0 || x.is_empty() || !x.len().is_multiple_of(k) {
            return Err(Error::InvalidArgument(format!(
                "GPTQ: {} calibration values are not rows of {k}",
                x.len()
            )));
        }
        let mut h = hessian(x, k);
        let dead: Vec<bool> = (0..k).map(|i| h[i * k + i] == 0.0).collect();
        let mean_diag = (0..k).map(|i| h[i * k + i]).sum::<f64>() / k as f64;
        let damp = DAMP * mean_diag.max(1e-12);
        for (i, &d) in dead.iter().enumerate() {
            if d {
                h[i * k + i] = 1.0;
            }
            h[i * k + i] += damp;
        }
        Ok(InputFactor {
            k,
            u: inverse_upper_factor(h, k)?,
            dead,
        })
    }
}

/// Quantize a (n, k) weight to int4 groups with GPTQ error compensation.
pub fn gptq_int4(
    w: &[f32],
    n: usize,
    k: usize,
    f: &InputFactor,
    cfg: &WeightQConfig,
) -> Result<QuantWeight> {
    let g = match cfg.scope {
        WeightScope::PerGroup(g) => g,
        WeightScope::PerChannel => k,
        WeightScope::PerTensor => {
            return Err(Error::InvalidArgument(
                "GPTQ int4 weights are per_group or per_channel".into(),
            ))
        }
    };
    if cfg.dtype != QDType::Int4
        || f.k != k
        || w.len() != n * k
        || g == 0
        || !g.is_multiple_of(2)
        || !k.is_multiple_of(2)
    {
        return Err(Error::InvalidArgument(format!(
            "GPTQ: needs int4 weights [{n}, {k}] with an even group, inputs of {k} (got {} values, inputs of {}, group {g})",
            w.len(),
            f.k
        )));
    }
    let groups = k.div_ceil(g);
    // column-major working copy: column i contiguous over the n output rows
    let mut wt = vec![0f32; k * n]; // (k, n)
    for (j, row) in w.chunks_exact(k).enumerate() {
        for (i, &v) in row.iter().enumerate() {
            wt[i * n + j] = if f.dead[i] { 0.0 } else { v };
        }
    }
    let mut scale = vec![0f32; n * groups];
    let mut zero = vec![0i32; n * groups];
    let mut q = vec![0i8; n * k];
    let mut err = vec![0f32; n];
    let mut seg = vec![0f32; g];
    for i in 0..k {
        let gi = i / g;
        if i % g == 0 {
            let end = (i + g).min(k);
            for j in 0..n {
                let s = &mut seg[..end - i];
                for (c, o) in s.iter_mut().enumerate() {
                    *o = wt[(i + c) * n + j];
                }
                let (sc, z) = int_params(s, QDType::Int4, cfg.symmetric, WeightMethod::MinMax);
                scale[j * groups + gi] = sc;
                zero[j * groups + gi] = z as i32;
            }
        }
        let d = f.u[i * k + i] as f32;
        let col = &wt[i * n..(i + 1) * n];
        for j in 0..n {
            let (s, z) = (scale[j * groups + gi], zero[j * groups + gi]);
            let v = formats::quantize_i4(col[j], 1.0 / s, z);
            q[j * k + i] = v;
            err[j] = (col[j] - (v as i32 - z) as f32 * s) / d;
        }
        // push this column's error onto the later columns: W[:, c] -= err · U[i, c]
        let (_, rest) = wt.split_at_mut((i + 1) * n);
        let urow = &f.u[i * k..(i + 1) * k];
        rest.par_chunks_mut(n).enumerate().for_each(|(off, c)| {
            let coef = urow[i + 1 + off] as f32;
            if coef != 0.0 {
                c.iter_mut().zip(&err).for_each(|(x, e)| *x -= e * coef);
            }
        });
    }
    Ok(QuantWeight::Int4 {
        packed: formats::pack_i4_bytes(&q),
        scale,
        zero: if cfg.symmetric {
            Vec::new()
        } else {
            zero.iter().map(|&z| z as i8).collect()
        },
        group: g,
    })
}
