//! Host-side token sampling: parameters, the seeded generator and the per-request sampler.
//!
//! - Greedy, temperature, top-k, top-p and the HF repetition penalty once per distinct id.
//! - A seeded xoshiro256** makes a seed reproduce a run; one uniform per token, the same on
//!   every backend, since the draw rule itself is the backend's (`backend::sampling`).
//! - Candidate buffers are allocated once per sampler.

pub use crate::backend::sampling::{argmax, draw, order_key, penalize, pick, Draw};

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
