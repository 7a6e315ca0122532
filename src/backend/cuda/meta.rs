//! Per-forward metadata on the device without an upload per op: token positions, KV slots,
//! block tables and attention tiles are the same for every layer of one forward pass (32 rope,
//! 64 KV-write and 32 attention calls for an 8B model), so each kind keeps its last upload and a
//! call with identical contents reuses it. A decode token then costs a handful of host→device
//! copies instead of ~300. Entries are replaced (never written in place), so a kernel still
//! reading an older upload keeps its buffer alive through the stream-ordered free.

use super::backend::{drv, CudaBackend};
use crate::error::Result;
use cudarc::driver::CudaSlice;
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
}

impl Meta {
    /// Cache slots: one per kind (`Tiles` is the last variant).
    const COUNT: usize = Meta::Tiles as usize + 1;
}

/// One kind's last upload: the host contents and the device copy.
type Upload = Option<(Vec<u32>, Arc<CudaSlice<u32>>)>;

#[derive(Default)]
pub(super) struct MetaCache {
    slots: Mutex<[Upload; Meta::COUNT]>,
}

impl CudaBackend {
    /// `v` on the device: the cached upload of this kind when its contents are the same.
    pub(super) fn up_meta(&self, kind: Meta, v: &[u32]) -> Result<Arc<CudaSlice<u32>>> {
        let mut slots = self
            .meta
            .slots
            .lock()
            .map_err(|_| drv("metadata cache", "poisoned lock"))?;
        let slot = &mut slots[kind as usize];
        if let Some((host, dev)) = slot.as_ref() {
            if host.as_slice() == v {
                return Ok(dev.clone());
            }
        }
        let dev = Arc::new(self.up(v)?);
        *slot = Some((v.to_vec(), dev.clone()));
        Ok(dev)
    }
}
