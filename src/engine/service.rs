//! The serving thread and its thread-safe front (`EngineHandle`) for the HTTP layer.
//!
//! - Owns a `Scheduler`, takes requests over a channel and alternates admitting them with
//!   forward steps, sleeping while idle.
//! - Admission is bounded (beyond max_batch + max_queue a request is refused: a 429); shutdown
//!   lets running requests finish within a grace period, then cancels the rest.

use crate::backend::Backend;
use crate::engine::metrics::{Metrics, Outcome};
use crate::engine::scheduler::{Request, Scheduler, SchedulerConfig};
use crate::error::{Error, Result};
use crate::model::llama::LlamaModel;
use crate::tokenizer::TokenizerBundle;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

enum Command {
    Submit(Request),
    Shutdown { grace: Duration },
}

/// Why a request was not taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// max_batch running and max_queue waiting already.
    QueueFull {
        limit: usize,
    },
    ShuttingDown,
}

/// Held while a request is in the engine; dropping it (the response finished or the client
/// went away) frees its place in the admission count.
pub struct Ticket {
    in_flight: Arc<AtomicUsize>,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

pub struct EngineHandle {
    tx: Mutex<mpsc::Sender<Command>>,
    in_flight: Arc<AtomicUsize>,
    capacity: usize,
    closing: AtomicBool,
    pub metrics: Arc<Metrics>,
    pub config: SchedulerConfig,
    /// Bytes of the KV block pool.
    pub kv_bytes: usize,
    join: Mutex<Option<JoinHandle<()>>>,
}

impl EngineHandle {
    /// Start the serving thread. `max_queue` requests may wait beyond the running batch.
    pub fn spawn<B: Backend>(
        model: Arc<LlamaModel<B>>,
        tok: Arc<TokenizerBundle>,
        cfg: SchedulerConfig,
        max_queue: usize,
    ) -> Result<EngineHandle> {
        let metrics = Arc::new(Metrics::default());
        let sched = Scheduler::new(model, tok, cfg.clone(), metrics.clone())?;
        let kv_bytes = sched.kv_bytes();
        let (tx, rx) = mpsc::channel();
        let join = std::thread::Builder::new()
            .name("ferroq-scheduler".into())
            .spawn(move || serve_loop(sched, rx))
            .map_err(|e| Error::Server(format!("cannot start the scheduler thread: {e}")))?;
        Ok(EngineHandle {
            tx: Mutex::new(tx),
            in_flight: Arc::new(AtomicUsize::new(0)),
            capacity: cfg.max_batch.saturating_add(max_queue),
            closing: AtomicBool::new(false),
            metrics,
            config: cfg,
            kv_bytes,
            join: Mutex::new(Some(join)),
        })
    }

    /// Hand a request to the scheduler, or refuse it when the queue is full or the server is
    /// shutting down. The ticket must live as long as the response.
    pub fn submit(&self, req: Request) -> std::result::Result<Ticket, Refusal> {
        if self.closing.load(Ordering::Acquire) {
            return Err(Refusal::ShuttingDown);
        }
        let cap = self.capacity;
        let taken = self
            .in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < cap).then_some(n + 1)
            });
        if taken.is_err() {
            self.metrics.count(Outcome::QueueFull);
            return Err(Refusal::QueueFull {
                limit: cap - self.config.max_batch,
            });
        }
        let ticket = Ticket {
            in_flight: self.in_flight.clone(),
        };
        let sent = self
            .tx
            .lock()
            .map_err(|_| Refusal::ShuttingDown)?
            .send(Command::Submit(req));
        match sent {
            Ok(()) => Ok(ticket),
            Err(_) => Err(Refusal::ShuttingDown),
        }
    }

    /// Refuse new requests from now on and tell the thread to let running ones finish for up
    /// to `grace`, then cancel the rest. Returns at once; [`EngineHandle::join`] waits.
    pub fn begin_shutdown(&self, grace: Duration) {
        self.closing.store(true, Ordering::Release);
        if let Ok(tx) = self.tx.lock() {
            let _ = tx.send(Command::Shutdown { grace });
        }
    }

    /// Wait for the scheduler thread to end (after `begin_shutdown`). Blocking.
    pub fn join(&self) {
        let join = self.join.lock().ok().and_then(|mut j| j.take());
        if let Some(j) = join {
            let _ = j.join();
        }
    }

    pub fn is_closing(&self) -> bool {
        self.closing.load(Ordering::Acquire)
    }
}

fn serve_loop<B: Backend>(mut sched: Scheduler<B>, rx: mpsc::Receiver<Command>) {
    let mut deadline: Option<Instant> = None;
    loop {
        // sleep while idle; otherwise take whatever arrived since the last step
        let first = if sched.is_idle() && deadline.is_none() {
            match rx.recv() {
                Ok(c) => Some(c),
                Err(_) => break,
            }
        } else {
            None
        };
        for cmd in first
            .into_iter()
            .chain(std::iter::from_fn(|| rx.try_recv().ok()))
        {
            match cmd {
                Command::Submit(r) => sched.submit(r),
                Command::Shutdown { grace } => deadline = Some(Instant::now() + grace),
            }
        }
        if let Some(d) = deadline {
            if sched.is_idle() {
                break;
            }
            if Instant::now() >= d {
                sched.cancel_all();
                break;
            }
        }
        if let Err(e) = sched.step() {
            sched.fail_all(&format!("forward step failed: {e}"));
        }
    }
}
