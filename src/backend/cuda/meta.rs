//! Per-forward metadata on the device without an upload per op: token positions, KV slots,
//! block tables and attention tiles are the same for every layer of one forward pass (32 rope,
//! 64 KV-write and 32 attention calls for an 8B model), so each kind keeps its last upload and a
//! call with identical contents reuses it. A decode token then costs a handful of host→device
//! copies instead of ~300. A changed upload is written in place into the kind's grow-only
//! buffer (stream-ordered after the kernels that read the old contents), so a decode step
//! allocates nothing and the buffers keep their addresses.

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

/// One kind's last upload: the host contents and the device buffer holding them (at least as
/// long).
type Upload = Option<(Vec<u32>, Arc<CudaSlice<u32>>)>;

#[derive(Default)]
pub(super) struct MetaCache {
    slots: Mutex<[Upload; Meta::COUNT]>,
}

impl CudaBackend {
    /// `v` on the device (the buffer may be longer): the cached upload of this kind when its
    /// contents are the same.
    pub(super) fn up_meta(&self, kind: Meta, v: &[u32]) -> Result<Arc<CudaSlice<u32>>> {
        let mut slots = self
            .meta
            .slots
            .lock()
            .map_err(|_| drv("metadata cache", "poisoned lock"))?;
        let slot = &mut slots[kind as usize];
        match slot {
            Some((host, _)) if host.as_slice() == v => {}
            Some((host, dev)) => {
                // callers drop their handle after the launch, so the buffer is ours again
                match Arc::get_mut(dev) {
                    Some(d) if d.len() >= v.len() && !v.is_empty() => {
                        let mut head = d.slice_mut(0..v.len());
                        self.gpu
                            .stream
                            .memcpy_htod(v, &mut head)
                            .map_err(|e| drv("upload", e))?;
                    }
                    _ => *dev = Arc::new(self.up_padded(v)?),
                }
                host.clear();
                host.extend_from_slice(v);
            }
            None => *slot = Some((v.to_vec(), Arc::new(self.up_padded(v)?))),
        }
        match slot {
            Some((_, dev)) => Ok(dev.clone()),
            None => Err(drv("metadata cache", "empty slot after upload")),
        }
    }

    /// `v` in a new buffer of the next power of two (at least one) elements.
    fn up_padded(&self, v: &[u32]) -> Result<CudaSlice<u32>> {
        let mut d = self
            .gpu
            .stream
            .alloc_zeros::<u32>(v.len().max(1).next_power_of_two())
            .map_err(|e| drv("alloc", e))?;
        if !v.is_empty() {
            let mut head = d.slice_mut(0..v.len());
            self.gpu
                .stream
                .memcpy_htod(v, &mut head)
                .map_err(|e| drv("upload", e))?;
        }
        Ok(d)
    }
}
