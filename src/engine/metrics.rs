//! Serving metrics in the Prometheus text exposition format (0.0.4).
//!
//! - Counters of requests by outcome and tokens in and out; gauges of queue depth, running
//!   sequences and KV blocks; histograms of time to first token, inter-token latency, batch size.
//! - The scheduler thread writes them, `GET /metrics` renders them; names follow vLLM's
//!   `vllm:*` with a `ferroq_` prefix.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// How a request ended, as counted in `ferroq_requests_total{outcome=...}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Finished (stop, end of sequence or length).
    Finished,
    /// The client went away, or shutdown cancelled it.
    Cancelled,
    /// Refused with 429: the queue was full.
    QueueFull,
    /// Refused with 400.
    BadRequest,
}

impl Outcome {
    const ALL: [Outcome; 4] = [
        Outcome::Finished,
        Outcome::Cancelled,
        Outcome::QueueFull,
        Outcome::BadRequest,
    ];
    fn label(self) -> &'static str {
        match self {
            Outcome::Finished => "finished",
            Outcome::Cancelled => "cancelled",
            Outcome::QueueFull => "queue_full",
            Outcome::BadRequest => "bad_request",
        }
    }
}

/// A cumulative histogram with fixed upper bounds.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    counts: Vec<u64>, // (bounds.len() + 1): the last is +Inf
    sum: f64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Histogram {
            bounds,
            counts: vec![0; bounds.len() + 1],
            sum: 0.0,
        }
    }
    fn observe(&mut self, v: f64) {
        let i = self
            .bounds
            .iter()
            .position(|&b| v <= b)
            .unwrap_or(self.bounds.len());
        self.counts[i] += 1;
        self.sum += v;
    }
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }
    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut acc = 0;
        for (b, c) in self.bounds.iter().zip(&self.counts) {
            acc += c;
            let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {acc}");
        }
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", self.count());
        let _ = writeln!(
            out,
            "{name}_sum {}\n{name}_count {}",
            self.sum,
            self.count()
        );
    }
}

const LATENCY_BOUNDS: &[f64] = &[
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 20.0,
    40.0, 80.0,
];
const BATCH_BOUNDS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0];

#[derive(Debug)]
struct Histograms {
    ttft: Histogram,
    itl: Histogram,
    batch: Histogram,
}

/// Every serving metric; shared between the scheduler and the HTTP front.
#[derive(Debug)]
pub struct Metrics {
    requests: [AtomicU64; 4], // by Outcome::ALL
    prompt_tokens: AtomicU64,
    generation_tokens: AtomicU64,
    preemptions: AtomicU64,
    queue_depth: AtomicU64,
    running: AtomicU64,
    kv_used: AtomicU64,
    kv_total: AtomicU64,
    hist: Mutex<Histograms>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            requests: Default::default(),
            prompt_tokens: AtomicU64::new(0),
            generation_tokens: AtomicU64::new(0),
            preemptions: AtomicU64::new(0),
            queue_depth: AtomicU64::new(0),
            running: AtomicU64::new(0),
            kv_used: AtomicU64::new(0),
            kv_total: AtomicU64::new(0),
            hist: Mutex::new(Histograms {
                ttft: Histogram::new(LATENCY_BOUNDS),
                itl: Histogram::new(LATENCY_BOUNDS),
                batch: Histogram::new(BATCH_BOUNDS),
            }),
        }
    }
}

impl Metrics {
    pub fn count(&self, o: Outcome) {
        self.requests[o as usize].fetch_add(1, Ordering::Relaxed);
    }
    pub fn requests(&self, o: Outcome) -> u64 {
        self.requests[o as usize].load(Ordering::Relaxed)
    }
    pub fn add_tokens(&self, prompt: usize, generated: usize) {
        self.prompt_tokens
            .fetch_add(prompt as u64, Ordering::Relaxed);
        self.generation_tokens
            .fetch_add(generated as u64, Ordering::Relaxed);
    }
    pub fn count_preemption(&self) {
        self.preemptions.fetch_add(1, Ordering::Relaxed);
    }
    pub fn preemptions(&self) -> u64 {
        self.preemptions.load(Ordering::Relaxed)
    }
    pub fn set_state(&self, queue: usize, running: usize, kv_used: usize, kv_total: usize) {
        self.queue_depth.store(queue as u64, Ordering::Relaxed);
        self.running.store(running as u64, Ordering::Relaxed);
        self.kv_used.store(kv_used as u64, Ordering::Relaxed);
        self.kv_total.store(kv_total as u64, Ordering::Relaxed);
    }
    pub fn kv_used(&self) -> u64 {
        self.kv_used.load(Ordering::Relaxed)
    }
    pub fn queue_depth(&self) -> u64 {
        self.queue_depth.load(Ordering::Relaxed)
    }
    fn with_hist(&self, f: impl FnOnce(&mut Histograms)) {
        // a poisoned lock only means a panic elsewhere mid-update: the counts are still usable
        let mut h = self.hist.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut h)
    }
    pub fn observe_ttft(&self, secs: f64) {
        self.with_hist(|h| h.ttft.observe(secs));
    }
    pub fn observe_itl(&self, secs: f64) {
        self.with_hist(|h| h.itl.observe(secs));
    }
    /// Sequences in one forward step.
    pub fn observe_batch(&self, seqs: usize) {
        self.with_hist(|h| h.batch.observe(seqs as f64));
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        s.push_str("# HELP ferroq_requests_total Requests by outcome.\n# TYPE ferroq_requests_total counter\n");
        for o in Outcome::ALL {
            let _ = writeln!(
                s,
                "ferroq_requests_total{{outcome=\"{}\"}} {}",
                o.label(),
                self.requests(o)
            );
        }
        let scalar = |s: &mut String, name: &str, kind: &str, help: &str, v: u64| {
            let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}");
        };
        scalar(
            &mut s,
            "ferroq_prompt_tokens_total",
            "counter",
            "Prompt tokens prefilled.",
            load(&self.prompt_tokens),
        );
        scalar(
            &mut s,
            "ferroq_generation_tokens_total",
            "counter",
            "Tokens generated.",
            load(&self.generation_tokens),
        );
        scalar(
            &mut s,
            "ferroq_preemptions_total",
            "counter",
            "Sequences preempted (KV blocks freed, recomputed later).",
            load(&self.preemptions),
        );
        scalar(
            &mut s,
            "ferroq_queue_depth",
            "gauge",
            "Requests waiting to be scheduled.",
            load(&self.queue_depth),
        );
        scalar(
            &mut s,
            "ferroq_running_sequences",
            "gauge",
            "Sequences in the running batch.",
            load(&self.running),
        );
        scalar(
            &mut s,
            "ferroq_kv_blocks_used",
            "gauge",
            "KV-cache blocks held by sequences.",
            load(&self.kv_used),
        );
        scalar(
            &mut s,
            "ferroq_kv_blocks_total",
            "gauge",
            "KV-cache blocks in the pool.",
            load(&self.kv_total),
        );
        let total = load(&self.kv_total).max(1) as f64;
        let _ = writeln!(
            s,
            "# HELP ferroq_kv_usage_ratio Fraction of KV-cache blocks in use.\n# TYPE ferroq_kv_usage_ratio gauge\nferroq_kv_usage_ratio {}",
            load(&self.kv_used) as f64 / total
        );
        self.with_hist(|h| {
            h.ttft.render(
                &mut s,
                "ferroq_time_to_first_token_seconds",
                "Arrival to first generated token.",
            );
            h.itl.render(
                &mut s,
                "ferroq_inter_token_latency_seconds",
                "Time between consecutive generated tokens of a request.",
            );
            h.batch
                .render(&mut s, "ferroq_batch_size", "Sequences per forward step.");
        });
        s
    }
}

/// The value of an unlabelled sample `name` in a Prometheus text exposition.
pub fn scrape(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}
