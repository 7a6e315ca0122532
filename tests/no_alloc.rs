//! A decode step allocates nothing: a counting global allocator watches `forward` on the real
//! model after warm-up (run state and KV cache are preallocated in the session).

mod common;

use ferroq::backend::cpu::CpuBackend;
use ferroq::backend::Backend;
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

#[test]
fn decode_steps_do_not_allocate() {
    let m = ferroq::model::open(CpuBackend::new(), &common::real_gguf(), Some(DType::F16))
        .expect("load");
    let prompt = m
        .tokenizer
        .encode("The quick brown fox jumps over the lazy dog")
        .expect("encode");
    let mut s = m.model.new_session(16, 64, false).expect("session");
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
    // as `generate` does: the decode loop runs on the backend's worker threads
    let n = m.model.backend.run_on_workers(|| {
        let before = ALLOCS.load(Ordering::SeqCst);
        for _ in 0..16 {
            tok = ferroq::engine::sampler::argmax(
                m.model
                    .forward(&mut s, &[tok], Logits::Last)
                    .expect("decode"),
            );
        }
        ALLOCS.load(Ordering::SeqCst) - before
    });
    assert_eq!(n, 0, "16 decode steps made {n} allocations");
}
