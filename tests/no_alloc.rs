//! A decode step allocates nothing: a counting global allocator watches `forward` on the real
//! model after warm-up (run state and KV cache are preallocated in the session).

mod common;

use ferroq::backend::cpu::CpuBackend;
use ferroq::backend::prelude::*;
use ferroq::model::llama::Logits;
use ferroq::tensor::DType;
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

struct Counting;
static ALLOCS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator unchanged, only counting calls.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        // SAFETY: p was allocated by System with layout l.
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(p, l, n) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Allocations made by 16 decode steps (after prefill and warm-up).
fn count_decode_allocs(m: &ferroq::model::Loaded<CpuBackend>) -> usize {
    let prompt = m
        .tokenizer
        .encode("The quick brown fox jumps over the lazy dog")
        .expect("encode");
    let mut s = m.model.new_session(16, 64, false).expect("session");
    // as `generate` does: prefill and the decode loop run on one of the backend's workers
    m.model.backend.run_on_workers(|| {
        m.model
            .forward(&mut s, &prompt, Logits::Last)
            .expect("prefill");
        let mut tok = 42u32;
        for _ in 0..3 {
            tok = ferroq::engine::sampler::argmax(
                m.model
                    .forward(&mut s, &[tok], Logits::Last)
                    .expect("warm-up"),
            );
        }
        let before = ALLOCS.load(Ordering::SeqCst);
        for _ in 0..16 {
            tok = ferroq::engine::sampler::argmax(
                m.model
                    .forward(&mut s, &[tok], Logits::Last)
                    .expect("decode"),
            );
        }
        ALLOCS.load(Ordering::SeqCst) - before
    })
}

#[test]
fn decode_steps_do_not_allocate() {
    let m = ferroq::model::open(CpuBackend::new(), &common::real_gguf(), Some(DType::F16))
        .expect("load");
    let n = count_decode_allocs(&m);
    assert_eq!(n, 0, "16 FP16 decode steps made {n} allocations");
    // W8A8 with pd_mix: the activation-quantization scratch is reused too
    let (c, tok, w) = ferroq::model::read_all(&common::real_gguf()).expect("read");
    let recipe = ferroq::ptq::recipe::Recipe::load("w8a8").expect("recipe");
    let opts = ferroq::ptq::pipeline::QuantizeOptions {
        n_samples: 2,
        seq_len: 32,
        ..Default::default()
    };
    let q = ferroq::ptq::pipeline::quantize(c, tok, w, &recipe, &opts, &|_, _, _| {})
        .expect("quantize");
    let dir = tempfile::tempdir().expect("tempdir");
    ferroq::ptq::ct_write::write(&q, dir.path()).expect("write");
    let m = ferroq::model::open(CpuBackend::new(), dir.path(), None).expect("load w8a8");
    let n = count_decode_allocs(&m);
    assert_eq!(n, 0, "16 W8A8 decode steps made {n} allocations");
}
