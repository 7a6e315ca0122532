//! The sampling role of a backend, and the sampling rule every backend runs.
//!
//! - The HF repetition penalty once per distinct id, then a sort-free draw: top-k / top-p cuts as
//!   thresholds on the float order key (ties kept), the token as the first id in id order whose
//!   running weight passes u × the kept mass.
//! - Sort-free so one GPU block per row runs the CPU's rule exactly and only the id crosses back;
//!   the seeded generator of `u` lives with the host sampler (`engine::sampler`).

use super::memory::DeviceMemory;
use crate::error::Result;

/// Index of the largest value (first on ties).
pub fn argmax(x: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in x.iter().enumerate() {
        if v > x[best] {
            best = i;
        }
    }
    best as u32
}

/// The sampling of one token, as the CPU sampler and `Sampling::sample_rows` run it.
#[derive(Clone, Copy, Debug)]
pub struct Draw<'a> {
    /// 0: greedy (argmax after the penalty)
    pub temperature: f32,
    /// 0 disables
    pub top_k: usize,
    /// 1.0 disables
    pub top_p: f32,
    /// 1.0 disables
    pub penalty: f32,
    /// distinct ids the penalty applies to
    pub penalized: &'a [u32],
    /// the uniform in [0, 1) that picks the token
    pub u: f32,
}

/// a > b ⇔ order_key(a) > order_key(b) for non-NaN floats (the bits of a positive float order
/// as its value; a negative float's, inverted, order as its value below every positive one).
pub fn order_key(v: f32) -> u32 {
    let b = v.to_bits();
    if b & 0x8000_0000 != 0 {
        !b
    } else {
        b | 0x8000_0000
    }
}

/// The HF repetition penalty on `z` (divide positive logits, multiply negative ones), once per
/// distinct id.
pub fn penalize(z: &mut [f32], ids: &[u32], penalty: f32) {
    if penalty == 1.0 {
        return;
    }
    for &t in ids {
        if let Some(l) = z.get_mut(t as usize) {
            *l = if *l > 0.0 { *l / penalty } else { *l * penalty };
        }
    }
}

/// Draw a token from `z` (the penalty already applied), sort-free so that one GPU block can
/// run the same rule (`kernels/sampling.cu::sample_row`): the candidates are the values at or
/// above the k-th largest (ties kept); weights exp((z − max) / T); top-p keeps the candidates at
/// or above the largest threshold whose kept mass reaches top_p of the total; the token is the
/// first kept id, in id order, whose running weight sum exceeds u × the kept mass.
pub fn draw(z: &[f32], d: &Draw<'_>, keys: &mut Vec<u32>) -> u32 {
    if d.temperature == 0.0 || z.len() <= 1 {
        return argmax(z);
    }
    let n = z.len();
    let (max, inv_t) = (
        z.iter().copied().fold(f32::NEG_INFINITY, f32::max),
        1.0 / d.temperature,
    );
    let weight = |v: f32| ((v - max) * inv_t).exp();
    let mut cut = 0u32; // keep key >= cut
    if d.top_k > 0 && d.top_k < n {
        keys.clear();
        keys.extend(z.iter().map(|&v| order_key(v)));
        let (_, kth, _) = keys.select_nth_unstable_by(d.top_k - 1, |a, b| b.cmp(a));
        cut = *kth;
    }
    let total: f32 = z
        .iter()
        .filter(|&&v| order_key(v) >= cut)
        .map(|&v| weight(v))
        .sum();
    if d.top_p < 1.0 {
        // candidates by key, largest first: the key at which the running mass reaches
        // top_p × total is the largest threshold that keeps that much
        keys.clear();
        keys.extend(z.iter().map(|&v| order_key(v)).filter(|&k| k >= cut));
        keys.sort_unstable_by(|a, b| b.cmp(a));
        let target = d.top_p * total;
        let mut cum = 0f32;
        for &k in keys.iter() {
            cum += weight(from_key(k));
            if cum >= target {
                cut = cut.max(k);
                break;
            }
        }
    }
    let kept = |v: f32| order_key(v) >= cut;
    let mass: f32 = z.iter().filter(|&&v| kept(v)).map(|&v| weight(v)).sum();
    let mut r = d.u * mass;
    let mut last = 0;
    for (i, &v) in z.iter().enumerate() {
        if kept(v) {
            last = i;
            r -= weight(v);
            if r < 0.0 {
                return i as u32;
            }
        }
    }
    last as u32
}

/// The token `d` picks from `z`: the repetition penalty (written into z), then `draw`.
pub fn pick(z: &mut [f32], d: &Draw<'_>, keys: &mut Vec<u32>) -> u32 {
    penalize(z, d.penalized, d.penalty);
    draw(z, d, keys)
}

/// The float whose order key is `k`.
fn from_key(k: u32) -> f32 {
    f32::from_bits(if k & 0x8000_0000 != 0 {
        k & 0x7fff_ffff
    } else {
        !k
    })
}

/// The sampling role of a backend: the token of each logits row, picked where the logits live
/// so a device backend hands back ids, not rows × vocab floats.
pub trait Sampling: DeviceMemory {
    /// out[r] = the greedy token of row r of logits (out.len(), vocab): the index of the
    /// largest value, the first on ties (the sampler's rule). A device backend picks on the
    /// device, so only the ids cross to the host, not rows × vocab logits.
    fn argmax_rows(&self, logits: &Self::Buf, vocab: usize, out: &mut [u32]) -> Result<()>;
    /// out[r] = the token draws[r] picks from row r of logits (draws.len(), vocab), by
    /// `draw`'s rule after the repetition penalty (written into the logits).
    /// A device backend draws on the device, so only the ids cross to the host.
    fn sample_rows(
        &self,
        logits: &mut Self::Buf,
        vocab: usize,
        draws: &[Draw<'_>],
        out: &mut [u32],
    ) -> Result<()>;
}
