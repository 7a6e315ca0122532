//! Row ranges of quantized weights: the output channels of fused projections (Phi-3's
//! `qkv_proj`, `gate_up_proj`) cut apart at load and joined again on write. Every format keeps
//! its scales per output row, so a row range carries its own scales and an exact copy of its
//! codes.

use super::QuantWeight;
use crate::error::{Error, Result};

impl QuantWeight {
    /// Output rows `start .. start + n` of a weight of `rows` × `k`.
    pub fn rows(&self, start: usize, n: usize, rows: usize, k: usize) -> Result<QuantWeight> {
        let end = start.checked_add(n).filter(|&e| e <= rows).ok_or_else(|| {
            Error::InvalidArgument(format!("rows {start}..+{n} of a {rows}-row weight"))
        })?;
        let cut = |v_len: usize, per_row: usize, what: &str| -> Result<std::ops::Range<usize>> {
            if v_len != rows * per_row {
                return Err(Error::InvalidArgument(format!(
                    "{what} holds {v_len} values, {rows} rows of {per_row} expected"
                )));
            }
            Ok(start * per_row..end * per_row)
        };
        Ok(match self {
            QuantWeight::Int8 { q, scale, colsum } => QuantWeight::Int8 {
                q: q[cut(q.len(), k, "int8 codes")?].to_vec(),
                scale: scale[cut(scale.len(), 1, "int8 scales")?].to_vec(),
                colsum: colsum[cut(colsum.len(), 1, "int8 row sums")?].to_vec(),
            },
            QuantWeight::Fp8 { codes, scale } => QuantWeight::Fp8 {
                codes: codes[cut(codes.len(), k, "FP8 codes")?].to_vec(),
                scale: scale[cut(scale.len(), 1, "FP8 scales")?].to_vec(),
            },
            QuantWeight::Int4 {
                packed,
                scale,
                zero,
                group,
            } => {
                let groups = k.div_ceil((*group).max(1));
                if !k.is_multiple_of(2) {
                    return Err(Error::InvalidArgument(format!(
                        "int4 rows of odd width {k} share bytes"
                    )));
                }
                QuantWeight::Int4 {
                    packed: packed[cut(packed.len(), k / 2, "int4 codes")?].to_vec(),
                    scale: scale[cut(scale.len(), groups, "int4 scales")?].to_vec(),
                    zero: if zero.is_empty() {
                        Vec::new()
                    } else {
                        zero[cut(zero.len(), groups, "int4 zero points")?].to_vec()
                    },
                    group: *group,
                }
            }
        })
    }

    /// The weights `parts` (each rows × k, one format and group) stacked by rows.
    pub fn concat_rows(parts: &[&QuantWeight]) -> Result<QuantWeight> {
        let mismatch = || Error::InvalidArgument("fused parts differ in format".into());
        let first = parts.first().ok_or_else(mismatch)?;
        Ok(match first {
            QuantWeight::Int8 { .. } => {
                let (mut q, mut scale, mut colsum) = (Vec::new(), Vec::new(), Vec::new());
                for p in parts {
                    let QuantWeight::Int8 {
                        q: pq,
                        scale: ps,
                        colsum: pc,
                    } = p
                    else {
                        return Err(mismatch());
                    };
                    q.extend_from_slice(pq);
                    scale.extend_from_slice(ps);
                    colsum.extend_from_slice(pc);
                }
                QuantWeight::Int8 { q, scale, colsum }
            }
            QuantWeight::Fp8 { .. } => {
                let (mut codes, mut scale) = (Vec::new(), Vec::new());
                for p in parts {
                    let QuantWeight::Fp8 {
                        codes: pc,
                        scale: ps,
                    } = p
                    else {
                        return Err(mismatch());
                    };
                    codes.extend_from_slice(pc);
                    scale.extend_from_slice(ps);
                }
                QuantWeight::Fp8 { codes, scale }
            }
            QuantWeight::Int4 { group, zero, .. } => {
                let (g, asym) = (*group, !zero.is_empty());
                let (mut packed, mut scale, mut zeros) = (Vec::new(), Vec::new(), Vec::new());
                for p in parts {
                    match p {
                        QuantWeight::Int4 {
                            packed: pp,
                            scale: ps,
                            zero: pz,
                            group: pg,
                        } if *pg == g && pz.is_empty() != asym => {
                            packed.extend_from_slice(pp);
                            scale.extend_from_slice(ps);
                            zeros.extend_from_slice(pz);
                        }
                        _ => return Err(mismatch()),
                    }
                }
                QuantWeight::Int4 {
                    packed,
                    scale,
                    zero: zeros,
                    group: g,
                }
            }
        })
    }
}
