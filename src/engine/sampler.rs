//! Token sampling: greedy, temperature, top-k, top-p (nucleus) and the HF repetition penalty
//! (divide positive logits, multiply negative ones, for every token already in the context),
//! driven by a seeded xoshiro256** generator so a seed reproduces a run. Candidate buffers are
//! allocated once per sampler, not per token.

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
    /// (vocab) candidate ids
    idx: Vec<u32>,
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

impl Sampler {
    pub fn new(params: SamplingParams, vocab: usize) -> Self {
        Sampler {
            rng: Rng::new(params.seed),
            params,
            work: Vec::with_capacity(vocab),
            idx: Vec::with_capacity(vocab),
        }
    }

    /// Pick the next token from `logits` (vocab); `history` is the context so far.
    pub fn sample(&mut self, logits: &[f32], history: &[u32]) -> u32 {
        let p = &self.params;
        self.work.clear();
        self.work.extend_from_slice(logits);
        if p.repetition_penalty != 1.0 {
            for &t in history {
                if let Some(l) = self.work.get_mut(t as usize) {
                    *l = if *l > 0.0 {
                        *l / p.repetition_penalty
                    } else {
                        *l * p.repetition_penalty
                    };
                }
            }
        }
        if p.temperature == 0.0 {
            return argmax(&self.work);
        }
        let inv_t = 1.0 / p.temperature;
        self.idx.clear();
        self.idx.extend(0..self.work.len() as u32);
        let w = &self.work;
        let by_logit_desc =
            |a: &u32, b: &u32| w[*b as usize].total_cmp(&w[*a as usize]).then(a.cmp(b));
        let k = if p.top_k > 0 {
            p.top_k.min(self.idx.len())
        } else {
            self.idx.len()
        };
        if k < self.idx.len() {
            self.idx.select_nth_unstable_by(k - 1, by_logit_desc);
            self.idx.truncate(k);
        }
        self.idx.sort_unstable_by(by_logit_desc);
        // softmax over the candidates, written into work[] at the candidate ids
        let max = w[self.idx[0] as usize];
        let mut sum = 0f32;
        let probs: &mut Vec<f32> = &mut self.work;
        for &i in &self.idx {
            let e = ((probs[i as usize] - max) * inv_t).exp();
            probs[i as usize] = e;
            sum += e;
        }
        let mut keep = self.idx.len();
        if p.top_p < 1.0 {
            let mut cum = 0f32;
            for (n, &i) in self.idx.iter().enumerate() {
                cum += probs[i as usize] / sum;
                if cum >= p.top_p {
                    keep = n + 1;
                    break;
                }
            }
        }
        let total: f32 = self.idx[..keep].iter().map(|&i| probs[i as usize]).sum();
        let mut r = self.rng.next_f32() * total;
        for &i in &self.idx[..keep] {
            r -= probs[i as usize];
            if r <= 0.0 {
                return i;
            }
        }
        self.idx[keep - 1]
    }
}
