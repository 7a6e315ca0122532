//! Per-forward metadata on the device without an upload per op.
//!
//! - Positions, KV slots, block tables and attention tiles are the same for every layer of one
//!   forward pass, so each kind keeps its last upload and identical contents reuse it: a decode
//!   token costs a handful of copies instead of ~300.
//! - A changed upload is written in place into the kind's grow-only buffer (stream-ordered after
//!   its readers), so decode allocates nothing and addresses stay fixed for replayed graphs.

use super::launch::{driver_error, Mode, RunState};
use crate::error::{Error, Result};
use cudarc::driver::{CudaSlice, CudaStream};
use std::sync::{Arc, Mutex};

/// What a metadata upload holds (one cache slot each).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Meta {
    /// (rows) position of each batch row (rope)
    Positions,
    /// (rows) cache slot of each batch row (KV write)
    Slots,
    /// (sequences, max_blocks) block tables (attention)
    Tables,
    /// (rows) sequence index of each batch row
    SeqOf,
    /// (rows) keys visible to each batch row
    NKeys,
    /// (selected rows) batch rows of the split-attention kernels
    RowIds,
    /// (tiles, 4) flash-attention tiles
    Tiles,
    /// (rows) token ids (embedding)
    Ids,
}

impl Meta {
    /// Cache slots: one per kind (`Ids` is the last variant).
    const COUNT: usize = Meta::Ids as usize + 1;
}

/// One kind's last upload: the host contents and the device buffer holding them (at least as
/// long).
type Upload = Option<(Vec<u32>, Arc<CudaSlice<u32>>)>;

#[derive(Default)]
struct State {
    slots: [Upload; Meta::COUNT],
    /// kinds whose contents the current staging pass changed
    staged: [bool; Meta::COUNT],
    /// where the next contents are built; swapped with a slot's host copy when they differ,
    /// so steady-state calls allocate nothing on the host either
    next: Vec<u32>,
}

#[derive(Default)]
pub(super) struct MetaCache {
    state: Mutex<State>,
}

impl MetaCache {
    fn lock(&self) -> Result<std::sync::MutexGuard<'_, State>> {
        self.state
            .lock()
            .map_err(|_| driver_error("metadata cache", "poisoned lock"))
    }

    /// A graph step's staging pass begins (see `graph.rs`).
    pub(super) fn begin_stage(&self) -> Result<()> {
        self.lock()?.staged = [false; Meta::COUNT];
        Ok(())
    }

    /// `v` on the device (the buffer may be longer): the cached upload of this kind when its
    /// contents are the same.
    pub(super) fn upload(
        &self,
        run: &RunState,
        stream: &Arc<CudaStream>,
        kind: Meta,
        v: &[u32],
    ) -> Result<Arc<CudaSlice<u32>>> {
        self.upload_with(run, stream, kind, v.len(), |d| d.copy_from_slice(v))
    }

    /// `fill`'s `len` values (it gets them zeroed) on the device, as `upload`, built in a
    /// reused host buffer. A graph's staging pass may change each kind once (a second change
    /// would overwrite what an earlier kernel of the replayed step reads), and a capture may
    /// change none.
    pub(super) fn upload_with(
        &self,
        run: &RunState,
        stream: &Arc<CudaStream>,
        kind: Meta,
        len: usize,
        fill: impl FnOnce(&mut [u32]),
    ) -> Result<Arc<CudaSlice<u32>>> {
        let mode = run.mode();
        let mut st = self.lock()?;
        let State {
            slots,
            staged,
            next,
        } = &mut *st;
        next.clear();
        next.resize(len, 0);
        fill(next);
        let slot = &mut slots[kind as usize];
        let same = matches!(slot, Some((host, _)) if host == next);
        if !same {
            match mode {
                Mode::Capture => {
                    return Err(Error::Cuda(format!(
                        "{kind:?} changed between staging and capture"
                    )))
                }
                Mode::Stage if staged[kind as usize] => {
                    return Err(Error::Cuda(format!(
                        "a graph step uploads two different {kind:?} contents"
                    )))
                }
                Mode::Stage | Mode::Eager => staged[kind as usize] = true,
            }
        }
        match slot {
            _ if same => {}
            Some((host, dev)) => {
                // callers drop their handle after the launch, so the buffer is ours again
                match Arc::get_mut(dev) {
                    Some(d) if d.len() >= len && len > 0 => {
                        let mut head = d.slice_mut(0..len);
                        stream
                            .memcpy_htod(next.as_slice(), &mut head)
                            .map_err(|e| driver_error("upload", e))?;
                    }
                    _ => *dev = Arc::new(upload_padded(run, stream, next)?),
                }
                std::mem::swap(host, next);
            }
            None => *slot = Some((next.clone(), Arc::new(upload_padded(run, stream, next)?))),
        }
        match slot {
            Some((_, dev)) => Ok(dev.clone()),
            None => Err(driver_error("metadata cache", "empty slot after upload")),
        }
    }
}

/// `v` in a new buffer of the next power of two (at least one) elements; a graph captured
/// before reads the old one, so the move is counted.
fn upload_padded(run: &RunState, stream: &Arc<CudaStream>, v: &[u32]) -> Result<CudaSlice<u32>> {
    run.count_move();
    let mut d = stream
        .alloc_zeros::<u32>(v.len().max(1).next_power_of_two())
        .map_err(|e| driver_error("alloc", e))?;
    if !v.is_empty() {
        let mut head = d.slice_mut(0..v.len());
        stream
            .memcpy_htod(v, &mut head)
            .map_err(|e| driver_error("upload", e))?;
    }
    Ok(d)
}
