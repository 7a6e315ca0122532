//! CUDA graphs for the decode step: captured once per step shape, replayed every token.
//!
//! - A decode token launches the same kernels every step (only the metadata they read changes),
//!   so one `cuGraphLaunch` replaces ~500 launches on an 8B model — how vLLM and TensorRT-LLM run
//!   decode.
//! - A step runs its host code in a *staging* pass that uploads the metadata into `meta.rs`'s
//!   fixed buffers and launches nothing, then the replay or, the first time, a *capture* pass.
//! - Attention is shaped for the step's span while staging and capturing (`replay_span`: the
//!   longest sequence rounded up to a power of two; empty key splits add exact zeros), so
//!   replays equal eager steps bit for bit and a longer span is another graph.
//! - A graph is keyed by the caller's `StepKey` and the count of moved buffers; a failed capture
//!   warns once and decodes eagerly; a replay that fails drops its graph and runs the step
//!   eagerly with a warning; `FERROQ_CUDA_GRAPHS=0` never captures.
//! - The run mode is the backend's: one thread drives a backend (generate, the server's engine).

use super::launch::{driver_error, Mode, RunState};
use super::meta::MetaCache;
use crate::backend::StepKey;
use crate::error::{Error, Result};
use cudarc::driver::{sys, CudaGraph, CudaStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Graphs kept at most (a server's decode batch sizes, sessions); the oldest goes first.
const MAX_GRAPHS: usize = 64;

/// A captured step. `CudaGraph` holds raw driver handles and is not `Send`.
struct Captured {
    key: StepKey,
    moves: u64,
    graph: CudaGraph,
}

// SAFETY: a `Captured` is only touched under `Graphs::cache`'s lock, which serialises every
// driver call on its graph (the driver's rule for graph objects); the handles stay valid on any
// thread of the process, which shares the one context.
unsafe impl Send for Captured {}

pub(super) struct Graphs {
    enabled: AtomicBool,
    /// graphs captured so far
    captures: AtomicU64,
    /// the captured steps; held for a whole step, which serialises steps
    cache: Mutex<Vec<Captured>>,
}

/// Whether decode steps are captured as graphs: unless FERROQ_CUDA_GRAPHS=0.
pub fn graphs_wanted() -> bool {
    std::env::var("FERROQ_CUDA_GRAPHS").map_or(true, |v| v != "0")
}

impl Default for Graphs {
    fn default() -> Self {
        Graphs {
            enabled: AtomicBool::new(graphs_wanted()),
            captures: AtomicU64::new(0),
            cache: Mutex::new(Vec::new()),
        }
    }
}

impl Graphs {
    /// Capture and replay decode steps (on by default unless FERROQ_CUDA_GRAPHS=0); the tests
    /// compare both.
    pub(super) fn set_enabled(&self, on: bool) {
        self.enabled.store(on, Ordering::Relaxed);
    }

    /// Whether decode steps are captured (false after `set_graphs(false)`, FERROQ_CUDA_GRAPHS=0
    /// or a failed capture), and how many graphs have been captured.
    pub(super) fn stats(&self) -> (bool, u64) {
        (
            self.enabled.load(Ordering::Relaxed),
            self.captures.load(Ordering::Relaxed),
        )
    }

    /// `Backend::replay_step`: stage, then replay the step's graph (capturing it the first
    /// time); eager where graphs are off or capture failed.
    pub(super) fn replay(
        &self,
        run: &RunState,
        meta: &MetaCache,
        stream: &Arc<CudaStream>,
        key: StepKey,
        step: &mut dyn FnMut() -> Result<()>,
    ) -> Result<()> {
        if !self.enabled.load(Ordering::Relaxed) {
            return step();
        }
        let mut cache = self
            .cache
            .lock()
            .map_err(|_| driver_error("graph cache", "poisoned lock"))?;
        meta.begin_stage()?;
        run.set_mode(Mode::Stage);
        let staged = step();
        run.set_mode(Mode::Eager);
        if let Err(e) = staged {
            // the same error eagerly means bad input; success means staging is what failed
            step()?;
            tracing::warn!("staging a CUDA graph step failed ({e}); decoding without graphs");
            self.set_enabled(false);
            return Ok(());
        }
        let moves = run.moves();
        if let Some(i) = cache.iter().position(|c| c.key == key && c.moves == moves) {
            return match cache[i].graph.launch() {
                Ok(()) => Ok(()),
                Err(e) => {
                    // a graph the driver no longer runs: forget it, and the step still runs
                    tracing::warn!(
                        "replaying a CUDA graph failed ({e:?}); dropped, running the step eagerly"
                    );
                    cache.remove(i);
                    step()
                }
            };
        }
        match capture(run, stream, step, moves) {
            Ok(graph) => {
                self.captures.fetch_add(1, Ordering::Relaxed);
                if let Err(e) = graph.launch() {
                    tracing::warn!(
                        "launching a new CUDA graph failed ({e:?}); running the step eagerly"
                    );
                    return step();
                }
                cache.retain(|c| c.key != key && c.moves == moves);
                if cache.len() >= MAX_GRAPHS {
                    cache.remove(0);
                }
                cache.push(Captured { key, moves, graph });
                Ok(())
            }
            Err(e) => {
                tracing::warn!("CUDA graph capture failed ({e}); decoding without graphs");
                self.set_enabled(false);
                step()
            }
        }
    }
}

/// Record `step`'s launches (its metadata already staged) as an instantiated graph.
fn capture(
    run: &RunState,
    stream: &Arc<CudaStream>,
    step: &mut dyn FnMut() -> Result<()>,
    moves: u64,
) -> Result<CudaGraph> {
    stream
        .begin_capture(sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
        .map_err(|e| driver_error("begin capture", e))?;
    run.set_mode(Mode::Capture);
    let ran = step();
    run.set_mode(Mode::Eager);
    // end the capture whatever happened, so the stream leaves capture mode
    let graph = stream.end_capture(sys::CUgraphInstantiate_flags(0));
    ran?;
    let graph = graph
        .map_err(|e| driver_error("end capture", e))?
        .ok_or_else(|| Error::Cuda("the capture recorded no graph".into()))?;
    if run.moves() != moves {
        return Err(Error::Cuda("a buffer moved while capturing".into()));
    }
    Ok(graph)
}
