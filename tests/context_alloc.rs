//! A model that advertises a huge context allocates only for the context it is run at.
//!
//! - Its own test binary: the counting global allocator sees this test's allocations alone.

mod common;

use common::*;
use ferroq::backend::cpu::CpuBackend;
use ferroq::checkpoint::safetensors_io::SafetensorsWeights;
use ferroq::model::llama::{LlamaModel, Logits};
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is forwarded to the system allocator unchanged; the counters only watch.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        let live = LIVE.fetch_add(l.size(), Ordering::Relaxed) + l.size();
        PEAK.fetch_max(live, Ordering::Relaxed);
        // SAFETY: the caller's layout is passed on as given.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size(), Ordering::Relaxed);
        // SAFETY: `p` came from `alloc` above with this layout.
        unsafe { System.dealloc(p, l) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[test]
fn huge_advertised_context_allocates_for_the_context_used() {
    let mut c = tiny_config(false);
    let w = tiny_weights(&c, 3);
    let dir = tempfile::tempdir().expect("tempdir");
    write_hf_dir(dir.path(), &c, &w);
    // the config bound's limit: a RoPE table for all of it would be 2^24 × 4 × 2 f32 = 512 MiB
    c.max_position_embeddings = 1 << 24;
    let src = SafetensorsWeights::open_dir(dir.path()).expect("open");
    let base = LIVE.load(Ordering::Relaxed);
    PEAK.store(base, Ordering::Relaxed);
    let m = LlamaModel::load(CpuBackend::new(), c, &src, None).expect("load");
    let mut s = m.new_session(8, 32, false).expect("session");
    let logits = m
        .forward(&mut s, &[1, 5, 9], Logits::Last)
        .expect("forward");
    assert!(logits.iter().all(|x| x.is_finite()));
    let grew = PEAK.load(Ordering::Relaxed).saturating_sub(base);
    assert!(
        grew < 16 << 20,
        "loading and running a tiny model at 32 positions allocated {grew} bytes at peak"
    );
}
