//! The continuous-batching scheduler without HTTP: many requests batched together give the same
//! greedy text as `generate` alone (real model; a pd_mix model whose steps split by phase;
//! preemption when the KV pool runs dry), stop strings and EOS end requests, a client that goes
//! away frees its blocks, and requests that cannot fit are refused naming the limit.

mod common;

use common::*;
use ferroq::backend::cpu::CpuBackend;
use ferroq::engine::generate::{generate, GenerateOptions};
use ferroq::engine::metrics::{Metrics, Outcome};
use ferroq::engine::sampler::SamplingParams;
use ferroq::engine::scheduler::{Event, FinishReason, Request, Scheduler, SchedulerConfig};
use ferroq::model::llama::LlamaModel;
use ferroq::tokenizer::TokenizerBundle;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

type Model = Arc<LlamaModel<CpuBackend>>;

fn request(prompt: Vec<u32>, max_tokens: usize) -> (Request, UnboundedReceiver<Event>) {
    let (tx, rx) = unbounded_channel();
    let r = Request {
        prompt,
        max_tokens,
        sampling: SamplingParams::default(),
        stop: vec![],
        stop_at_eos: true,
        events: tx,
        arrived: Instant::now(),
    };
    (r, rx)
}

/// What a request received: its text and how it finished.
#[derive(Debug, Default)]
struct Outcome_ {
    text: String,
    pieces: Vec<String>,
    done: Option<(FinishReason, usize)>,
}

fn drain(rx: &mut UnboundedReceiver<Event>, o: &mut Outcome_) {
    while let Ok(e) = rx.try_recv() {
        assert!(o.done.is_none(), "event after Done: {e:?}");
        match e {
            Event::Text(t) => {
                assert!(!t.is_empty(), "empty text event");
                o.text.push_str(&t);
                o.pieces.push(t);
            }
            Event::Done(f) => o.done = Some((f.reason, f.completion_tokens)),
            Event::Failed(m) => panic!("request failed: {m}"),
        }
    }
}

/// Submit everything, step until idle, return each request's outcome.
fn run_all(
    s: &mut Scheduler<CpuBackend>,
    reqs: Vec<Request>,
    rxs: &mut [UnboundedReceiver<Event>],
) -> Vec<Outcome_> {
    for r in reqs {
        s.submit(r);
    }
    let mut outs: Vec<Outcome_> = rxs.iter().map(|_| Outcome_::default()).collect();
    let mut steps = 0;
    while s.step().expect("step") {
        steps += 1;
        assert!(steps < 10_000, "scheduler does not finish");
        for (rx, o) in rxs.iter_mut().zip(outs.iter_mut()) {
            drain(rx, o);
        }
    }
    for (rx, o) in rxs.iter_mut().zip(outs.iter_mut()) {
        drain(rx, o);
    }
    outs
}

fn solo(
    m: &LlamaModel<CpuBackend>,
    tok: &TokenizerBundle,
    prompt: &[u32],
    n: usize,
) -> (String, usize) {
    let opts = GenerateOptions {
        max_new_tokens: n,
        ..Default::default()
    };
    let g = generate(m, tok, prompt, &opts, |_| {}).expect("generate");
    (g.text, g.tokens.len())
}

fn scheduler(
    m: &Model,
    tok: TokenizerBundle,
    cfg: SchedulerConfig,
) -> (Scheduler<CpuBackend>, Arc<Metrics>) {
    let metrics = Arc::new(Metrics::default());
    let s = Scheduler::new(m.clone(), Arc::new(tok), cfg, metrics.clone()).expect("scheduler");
    (s, metrics)
}

#[test]
fn thirty_two_batched_requests_equal_their_solo_runs_on_the_real_model() {
    let loaded = ferroq::model::open(CpuBackend::new(), &real_gguf(), None).expect("load");
    let tok = loaded.tokenizer;
    let m: Model = Arc::new(loaded.model);
    let words = "the quick brown fox jumps over a lazy dog while seven bakers sing about rivers and old maps of Paris";
    let w: Vec<&str> = words.split(' ').collect();
    let mut prompts = Vec::new();
    for i in 0..32 {
        let n = 2 + (i * 7) % (w.len() - 2);
        let text = format!("Story {i}: {}", w[..n].join(" "));
        prompts.push((tok.encode(&text).expect("encode"), 3 + (i * 5) % 29));
    }
    let (mut s, metrics) = scheduler(
        &m,
        tok.clone(),
        SchedulerConfig {
            max_batch: 32,
            max_seq_len: 256,
            kv_cache_tokens: 32 * 256,
            block_size: 16,
            ..Default::default()
        },
    );
    let (reqs, mut rxs): (Vec<_>, Vec<_>) =
        prompts.iter().map(|(p, n)| request(p.clone(), *n)).unzip();
    let outs = run_all(&mut s, reqs, &mut rxs);
    for (i, ((p, n), o)) in prompts.iter().zip(&outs).enumerate() {
        let (text, count) = solo(&m, &tok, p, *n);
        assert_eq!(
            o.text, text,
            "request {i}: batched text differs from generate"
        );
        let reason = if count < *n {
            FinishReason::Stop
        } else {
            FinishReason::Length
        };
        assert_eq!(o.done, Some((reason, count)), "request {i}");
    }
    assert_eq!(s.kv_blocks_used(), 0, "blocks still held");
    assert_eq!(metrics.kv_used(), 0);
    assert_eq!(metrics.requests(Outcome::Finished), 32);
    let text = metrics.render();
    let batch_count =
        ferroq::engine::metrics::scrape(&text, "ferroq_batch_size_count").expect("batch size");
    assert!(batch_count > 0.0);
    // every request ran in one batch at some point: far fewer steps than tokens
    let gen_total: usize = outs.iter().map(|o| o.done.map_or(0, |d| d.1)).sum();
    assert!(
        (batch_count as usize) < gen_total / 4,
        "{batch_count} steps for {gen_total} tokens"
    );
}

fn tiny_float() -> (Model, TokenizerBundle) {
    let c = tiny_config(false);
    let m =
        LlamaModel::load(CpuBackend::new(), c.clone(), &tiny_weights(&c, 7), None).expect("load");
    (Arc::new(m), byte_tokenizer())
}

/// Prompts of byte-tokenizer ids (the tiny model's vocabulary is 67).
fn tiny_prompts(n: usize) -> Vec<(Vec<u32>, usize)> {
    (0..n)
        .map(|i| {
            let len = 1 + (i * 5) % 23;
            (
                (0..len)
                    .map(|j| ((i * 13 + j * 7) % 60 + 3) as u32)
                    .collect(),
                4 + (i * 3) % 17,
            )
        })
        .collect()
}

fn check_against_solo(
    m: &Model,
    tok: &TokenizerBundle,
    cfg: SchedulerConfig,
    n: usize,
) -> Arc<Metrics> {
    let prompts = tiny_prompts(n);
    let (mut s, metrics) = scheduler(m, tok.clone(), cfg);
    let (reqs, mut rxs): (Vec<_>, Vec<_>) =
        prompts.iter().map(|(p, k)| request(p.clone(), *k)).unzip();
    let outs = run_all(&mut s, reqs, &mut rxs);
    for (i, ((p, k), o)) in prompts.iter().zip(&outs).enumerate() {
        let (text, count) = solo(m, tok, p, *k);
        assert_eq!(o.text, text, "request {i} differs from its solo run");
        assert_eq!(o.done, Some((FinishReason::Length, count)), "request {i}");
    }
    assert_eq!(s.kv_blocks_used(), 0);
    metrics
}

#[test]
fn preemption_when_the_pool_runs_dry_keeps_outputs() {
    let (m, tok) = tiny_float();
    // 12 requests of up to 40 positions in a pool of 64: decoders must preempt each other
    let metrics = check_against_solo(
        &m,
        &tok,
        SchedulerConfig {
            max_batch: 8,
            max_seq_len: 48,
            kv_cache_tokens: 64,
            block_size: 4,
            prefill_chunk: 8,
        },
        12,
    );
    assert!(metrics.preemptions() > 0, "the pool never ran dry");
}

#[test]
fn pd_mix_model_runs_decode_and_prefill_rows_apart_and_matches_solo() {
    use std::sync::atomic::Ordering;
    let q = tiny_w8a8(4);
    let m =
        Arc::new(LlamaModel::load(CpuBackend::new(), q.config.clone(), &q, None).expect("load"));
    assert!(m.phase_sensitive());
    check_against_solo(
        &m,
        &byte_tokenizer(),
        SchedulerConfig {
            max_batch: 6,
            max_seq_len: 64,
            kv_cache_tokens: 1024,
            block_size: 8,
            prefill_chunk: 16,
        },
        10,
    );
    assert!(
        m.backend.counters.static_rows.load(Ordering::Relaxed) > 0,
        "decode never took the static scales"
    );
}

#[test]
fn bf16_model_on_any_cpu_matches_solo_with_batches_past_a_tile() {
    use ferroq::tensor::DType;
    let c = tiny_config(false);
    let m = LlamaModel::load(
        CpuBackend::new(),
        c.clone(),
        &tiny_weights(&c, 7),
        Some(DType::BF16),
    )
    .expect("load");
    // on AMX CPUs BF16 prefill runs on the tiles with BF16 activations, decode on the panels:
    // the phases must run apart, whatever the batch size
    let tiles = ferroq::backend::cpu::dense::amx::available();
    assert_eq!(m.phase_sensitive(), tiles);
    // 20 decoders at once: more than a 16-row tile
    check_against_solo(
        &Arc::new(m),
        &byte_tokenizer(),
        SchedulerConfig {
            max_batch: 20,
            max_seq_len: 64,
            kv_cache_tokens: 2048,
            block_size: 8,
            prefill_chunk: 32,
        },
        24,
    );
}

#[test]
fn stop_strings_end_the_text_before_them_and_are_never_streamed() {
    let loaded = ferroq::model::open(CpuBackend::new(), &real_gguf(), None).expect("load");
    let tok = loaded.tokenizer;
    let m: Model = Arc::new(loaded.model);
    let prompt = tok.encode("The capital of France is").expect("encode");
    let (full, _) = solo(&m, &tok, &prompt, 24);
    // stop at the first "is" or "." after the first word of the continuation
    let stop = [" is", "."];
    let cut = stop
        .iter()
        .filter_map(|s| full[1..].find(s).map(|i| i + 1))
        .min()
        .expect("a stop in the text");
    let (mut s, _) = scheduler(&m, tok.clone(), SchedulerConfig::default());
    let (mut r, rx) = request(prompt, 24);
    r.stop = stop.iter().map(|s| s.to_string()).collect();
    let mut rxs = [rx];
    let outs = run_all(&mut s, vec![r], &mut rxs);
    assert_eq!(
        outs[0].text,
        full[..cut],
        "text ends right before the stop string"
    );
    assert_eq!(outs[0].done.map(|d| d.0), Some(FinishReason::Stop));
    assert!(
        !outs[0].pieces.iter().any(|p| p.contains('.')),
        "{:?}",
        outs[0].pieces
    );
}

#[test]
fn a_client_that_goes_away_frees_its_blocks() {
    let (m, tok) = tiny_float();
    let (mut s, metrics) = scheduler(
        &m,
        tok,
        SchedulerConfig {
            max_seq_len: 64,
            kv_cache_tokens: 256,
            block_size: 4,
            ..Default::default()
        },
    );
    let (a, rx_a) = request(vec![5, 6, 7, 8, 9], 40);
    let (b, mut rx_b) = request(vec![9, 8, 7], 10);
    s.submit(a);
    s.submit(b);
    for _ in 0..3 {
        assert!(s.step().expect("step"));
    }
    assert!(s.kv_blocks_used() > 0);
    drop(rx_a);
    let mut o = Outcome_::default();
    while s.step().expect("step") {
        drain(&mut rx_b, &mut o);
    }
    drain(&mut rx_b, &mut o);
    assert_eq!(
        o.done.map(|d| d.0),
        Some(FinishReason::Length),
        "the other request finishes"
    );
    assert_eq!(s.kv_blocks_used(), 0);
    assert_eq!(metrics.requests(Outcome::Cancelled), 1);
    assert_eq!(metrics.requests(Outcome::Finished), 1);
}

#[test]
fn requests_that_cannot_fit_are_refused_naming_the_limit() {
    let (m, tok) = tiny_float();
    let (mut s, metrics) = scheduler(
        &m,
        tok,
        SchedulerConfig {
            max_seq_len: 32,
            kv_cache_tokens: 64,
            ..Default::default()
        },
    );
    let e = s.check(20, 13).expect_err("too long");
    assert!(
        e.to_string()
            .contains("context limit (--max-seq-len) is 32 tokens"),
        "{e}"
    );
    assert!(
        e.to_string()
            .contains("33 (20 in the prompt, 13 to generate)"),
        "{e}"
    );
    assert!(s.check(0, 4).is_err());
    assert!(s.check(20, 12).is_ok());
    // an unchecked request that does not fit fails instead of running
    let (r, mut rx) = request(vec![3; 40], 1);
    s.submit(r);
    assert!(matches!(rx.try_recv(), Ok(Event::Failed(m)) if m.contains("context limit")));
    assert_eq!(metrics.requests(Outcome::BadRequest), 1);
    assert!(!s.step().expect("step"), "nothing to run");
    // a pool smaller than one sequence is a configuration error
    let (m2, tok2) = tiny_float();
    let bad = Scheduler::new(
        m2,
        Arc::new(tok2),
        SchedulerConfig {
            max_seq_len: 128,
            kv_cache_tokens: 64,
            ..Default::default()
        },
        Arc::new(Metrics::default()),
    );
    assert!(bad.is_err());
}

/// A request's length check cannot wrap: max_tokens of 2^64 − 1 is too long, not short.
#[test]
fn huge_max_tokens_is_too_long_not_wrapped() {
    use ferroq::engine::scheduler::check_lengths;
    let e = check_lengths(2048, 5, usize::MAX).expect_err("2^64 - 1 tokens fit 2048?");
    assert!(e.to_string().contains("context limit"), "{e}");
    assert!(check_lengths(2048, 5, 100).is_ok());
}
