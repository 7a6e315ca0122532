//! Token sampling: greedy, temperature, top-k, top-p (nucleus) and the HF repetition penalty
//! (divide positive logits, multiply negative ones, once for every distinct token already in
//! the context), driven by a seeded xoshiro256** generator so a seed reproduces a run. The draw
//! rule (`draw`) is sort-free on the device side, so the GPU samples in one block per row with
//! the same rule (`Backend::sample`). Candidate buffers are allocated once per sampler.

/// xoshiro256** (Blackman & Vigna), seeded through splitmix64.
#[derive(Clone, Debug)]
pub struct Rng {
    s: [u64; 4],
}

impl Rng {
    pub fn new(seed: u64) -> Self {
        let mut z = seed;
        let mut next = || {
            z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut x = z;
            x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            x ^ (x >> 31)
        };
        Rng {
            s: [next(), next(), next(), next()],
        }
    }

    pub fn next_u64(&mut self) -> u64 {
        let r = self.s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = self.s[1] << 17;
        self.s[2] ^= self.s[0];
        self.s[3] ^= self.s[1];
        self.s[1] ^= self.s[2];
        self.s[0] ^= self.s[3];
        self.s[2] ^= t;
        self.s[3] = self.s[3].rotate_left(45);
        r
    }

    /// Uniform in [0, 1).
    pub fn next_f32(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }

    /// `n` normal values of standard deviation `scale` (Box–Muller, one pair of uniforms
    /// each): seeded random weights and activations for the examples and benchmarks.
    pub fn normals(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n)
            .map(|_| {
                let (u, v) = (self.next_f32().max(1e-7), self.next_f32());
                scale * (-2.0 * u.ln()).sqrt() * (std::f32::consts::TAU * v).cos()
            })
            .collect()
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct SamplingParams {
    /// 0 means greedy.
    pub temperature: f32,
    /// 0 disables.
    pub top_k: usize,
    /// 1.0 disables.
    pub top_p: f32,
    /// 1.0 disables.
    pub repetition_penalty: f32,
    pub seed: u64,
}

impl SamplingParams {
    /// Whether the next token is the plain argmax of the logits (no temperature, no
    /// repetition penalty), which a backend can pick on its own device.
    pub fn is_greedy(&self) -> bool {
        self.temperature == 0.0 && self.repetition_penalty == 1.0
    }
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            repetition_penalty: 1.0,
            seed: 0,
        }
    }
}

impl SamplingParams {
    pub fn validate(&self) -> crate::error::Result<()> {
        let bad = |m: String| Err(crate::error::Error::InvalidArgument(m));
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            return bad(format!("temperature {} must be >= 0", self.temperature));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad(format!("top_p {} must be in (0, 1]", self.top_p));
        }
        if !(self.repetition_penalty > 0.0 && self.repetition_penalty.is_finite()) {
            return bad(format!(
                "repetition_penalty {} must be > 0",
                self.repetition_penalty
            ));
        }
        Ok(())
    }
}

pub struct Sampler {
    pub params: SamplingParams,
    rng: Rng,
    /// (vocab) working copy of the logits
    work: Vec<f32>,
    /// (vocab) order keys or candidate (key, weight) pairs of `draw`
    keys: Vec<u32>,
    /// (vocab / 64) which ids `penalized` already holds
    seen: Vec<u64>,
    /// distinct ids of the context (the repetition penalty's targets)
    penalized: Vec<u32>,
    /// the uniform of the prepared draw
    u: f32,
}

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

/// The sampling of one token, as the CPU sampler and `Backend::sample` run it.
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

impl Sampler {
    pub fn new(params: SamplingParams, vocab: usize) -> Self {
        Sampler {
            rng: Rng::new(params.seed),
            params,
            work: Vec::with_capacity(vocab),
            keys: Vec::with_capacity(vocab),
            seen: vec![0; vocab.div_ceil(64)],
            penalized: Vec::new(),
            u: 0.0,
        }
    }

    /// The next token's draw: the parameters, the context's distinct ids (when a penalty
    /// applies) and the next uniform of the seeded generator (one per token either way).
    pub fn next_draw(&mut self, history: &[u32]) -> Draw<'_> {
        self.prepare(history);
        self.current()
    }

    /// Take the next token's uniform and the context's distinct ids; `current` then hands out
    /// the draw (a batch prepares every sequence's, then borrows them all at once).
    pub fn prepare(&mut self, history: &[u32]) {
        let p = &self.params;
        self.penalized.clear();
        if p.repetition_penalty != 1.0 {
            for &t in history {
                let (w, b) = (t as usize / 64, 1u64 << (t % 64));
                if let Some(word) = self.seen.get_mut(w) {
                    if *word & b == 0 {
                        *word |= b;
                        self.penalized.push(t);
                    }
                }
            }
            for &t in &self.penalized {
                self.seen[t as usize / 64] = 0;
            }
        }
        self.u = self.rng.next_f32();
    }

    /// The draw `prepare` set up.
    pub fn current(&self) -> Draw<'_> {
        let p = &self.params;
        Draw {
            temperature: p.temperature,
            top_k: p.top_k,
            top_p: p.top_p,
            penalty: p.repetition_penalty,
            penalized: &self.penalized,
            u: self.u,
        }
    }

    /// Pick the next token from `logits` (vocab); `history` is the context so far.
    pub fn sample(&mut self, logits: &[f32], history: &[u32]) -> u32 {
        let mut work = std::mem::take(&mut self.work);
        let mut keys = std::mem::take(&mut self.keys);
        work.clear();
        work.extend_from_slice(logits);
        let d = self.next_draw(history);
        let id = pick(&mut work, &d, &mut keys);
        (self.work, self.keys) = (work, keys);
        id
    }
}
