//! The paged KV cache of vLLM's PagedAttention (Kwon et al., SOSP 2023).
//!
//! - Per layer one pool of fixed-size blocks of keys (and values); per sequence a block table
//!   from logical to physical blocks. Memory is taken as a sequence grows, so a server holds
//!   what its sequences use, not max_seq per request.
//! - `BlockAllocator` is the host-side free list; a `Session` uses one block of max_seq.

use crate::backend::Backend;
use crate::error::{Error, Result};

/// The block pool of every layer's keys and values.
pub struct KvCache<B: Backend> {
    pub block_size: usize,
    pub n_blocks: usize,
    /// process-unique: names these buffers to a backend's graph cache
    pub(crate) id: u64,
    /// bytes the pool holds (keys and values, all layers)
    bytes: usize,
    pub(crate) k: Vec<B::Buf>, // layers × (n_blocks, block_size, kv_dim)
    pub(crate) v: Vec<B::Buf>, // layers × (n_blocks, block_size, kv_dim)
}

impl<B: Backend> KvCache<B> {
    /// `layers` pools of `n_blocks` × `block_size` positions of `kv_dim` keys and values.
    pub fn new(
        backend: &B,
        layers: usize,
        kv_dim: usize,
        n_blocks: usize,
        block_size: usize,
    ) -> Result<Self> {
        if n_blocks == 0 || block_size == 0 {
            return Err(Error::InvalidArgument(
                "a KV cache needs at least one block of at least one position".into(),
            ));
        }
        let len = n_blocks
            .checked_mul(block_size)
            .and_then(|n| n.checked_mul(kv_dim))
            .ok_or_else(|| {
                Error::InvalidArgument(format!(
                    "a KV cache of {n_blocks} blocks × {block_size} positions × {kv_dim} overflows"
                ))
            })?;
        let (mut k, mut v) = (Vec::with_capacity(layers), Vec::with_capacity(layers));
        for _ in 0..layers {
            k.push(backend.alloc_kv(len)?);
            v.push(backend.alloc_kv(len)?);
        }
        Ok(KvCache {
            block_size,
            n_blocks,
            id: crate::backend::next_buffer_id(),
            bytes: 2 * layers * len * backend.kv_value_bytes(),
            k,
            v,
        })
    }

    /// Bytes the pool holds (keys and values, all layers).
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

/// Free list of a [`KvCache`]'s blocks.
#[derive(Clone, Debug)]
pub struct BlockAllocator {
    free: Vec<u32>,
    n_blocks: usize,
    block_size: usize,
}

impl BlockAllocator {
    pub fn new(n_blocks: usize, block_size: usize) -> Self {
        // popped from the end: hand out low block ids first
        BlockAllocator {
            free: (0..n_blocks as u32).rev().collect(),
            n_blocks,
            block_size,
        }
    }

    pub fn block_size(&self) -> usize {
        self.block_size
    }
    pub fn total(&self) -> usize {
        self.n_blocks
    }
    pub fn free_blocks(&self) -> usize {
        self.free.len()
    }
    pub fn used(&self) -> usize {
        self.n_blocks - self.free.len()
    }

    /// Blocks needed to hold `positions` positions.
    pub fn blocks_for(&self, positions: usize) -> usize {
        positions.div_ceil(self.block_size)
    }

    /// Grow `table` to cover `positions` positions; false (and `table` unchanged) when the
    /// pool has too few free blocks.
    pub fn grow(&mut self, table: &mut Vec<u32>, positions: usize) -> bool {
        let need = self.blocks_for(positions).saturating_sub(table.len());
        if need > self.free.len() {
            return false;
        }
        for _ in 0..need {
            if let Some(b) = self.free.pop() {
                table.push(b);
            }
        }
        true
    }

    /// Return every block of `table` to the pool and empty it.
    pub fn release(&mut self, table: &mut Vec<u32>) {
        self.free.extend(table.drain(..).rev());
    }
}
