//! Causal GQA attention over the paged KV cache on CUDA (`kernels/attention.cu`).
//!
//! - The path is chosen per sequence, so a sequence's result never depends on its batch-mates.
//! - A decode row takes the key-split flash-decoding pair `attn_partial` / `attn_combine` in f32
//!   (Dao et al., "Flash-Decoding", 2023).
//! - A prefill chunk of two or more rows with head dim 64 or 128 takes `attn_prefill_hd*`,
//!   FlashAttention-2 on bf16 tensor cores in tiles of 64 rows; other head dims run every row
//!   through the split kernels.

use super::backend::CudaBackend;
use super::kernels::Kernel;
use super::launch::{check_len, grid, kv_values};
use super::meta::Meta;
use crate::backend::{AttentionArgs, KvSeq};
use crate::error::{Error, Result};
use cudarc::driver::PushKernelArg;

/// Keys per attention split (attn_partial's shared score buffer holds 256).
const SPLIT_LEN: usize = 256;
/// Query rows per flash-attention tile (the kernel's FA_BQ: 4 warps of 16 rows).
const FA_ROWS: usize = 64;
/// A sequence with at least this many new rows is a prefill chunk (flash attention).
const FA_MIN_ROWS: usize = 2;

impl CudaBackend {
    pub(super) fn attention_paged(&self, a: AttentionArgs<'_, Self>) -> Result<()> {
        let (nh, nkv, hd, bs) = (a.n_heads, a.n_kv_heads, a.head_dim, a.block_size);
        if nkv == 0 || nh % nkv != 0 || hd > 256 || hd % 2 != 0 {
            return Err(Error::InvalidArgument(format!(
                "attention: {nh} heads over {nkv} kv heads of dim {hd} (the kernels take even head dims up to 256)"
            )));
        }
        let rows = KvSeq::batch_rows(a.seqs);
        check_len("attention q", a.q.len(), rows * nh * hd)?;
        check_len("attention out", a.out.len(), rows * nh * hd)?;
        let n_blocks = kv_values(a.k_cache).min(kv_values(a.v_cache)) / (bs * nkv * hd).max(1);
        // A graph step launches with fixed shapes: tables as wide and key splits as many as
        // its span needs (`a.max_seq` is the span there; `graph.rs`; the extra splits are
        // empty and add exact zeros).
        let graphing = self.graphing();
        let max_blocks = if graphing {
            a.max_seq.div_ceil(bs.max(1)).max(1)
        } else {
            a.seqs
                .iter()
                .map(|s| s.blocks.len())
                .max()
                .unwrap_or(1)
                .max(1)
        };
        let fa_kernel = match hd {
            64 => Some(Kernel::AttnPrefillHd64),
            128 => Some(Kernel::AttnPrefillHd128),
            _ => None,
        };
        for s in a.seqs {
            s.check(bs, n_blocks, a.max_seq, rows)?;
        }
        // a sequence's prefill chunk takes flash attention, its decode row the split kernels
        let flash = |s: &KvSeq<'_>| fa_kernel.is_some() && s.rows >= FA_MIN_ROWS;
        // the metadata is built in reused host buffers (`upload_meta_with`): no allocation per call
        let t_d = self.upload_meta_with(Meta::Tables, a.seqs.len() * max_blocks, |t| {
            for (i, s) in a.seqs.iter().enumerate() {
                // positions past max_seq are never read, nor their blocks
                let nb = s.blocks.len().min(max_blocks);
                t[i * max_blocks..i * max_blocks + nb].copy_from_slice(&s.blocks[..nb]);
            }
        })?;
        let ints = [max_blocks, bs, nh, nkv].map(|v| v as i32);
        // 0: no window (every earlier key); a window past i32 covers any context anyway
        let window = a
            .window
            .map_or(0, |w| i32::try_from(w.max(1)).unwrap_or(i32::MAX));
        // 0: no soft cap
        let softcap = a.softcap.unwrap_or(0.0);
        let n_tiles: usize = a
            .seqs
            .iter()
            .filter(|s| flash(s))
            .map(|s| s.rows.div_ceil(FA_ROWS))
            .sum();
        if let (Some(kern), true) = (fa_kernel, n_tiles > 0) {
            // (sequence, first batch row, rows, first position) per 64-row tile
            let tiles_d = self.upload_meta_with(Meta::Tiles, 4 * n_tiles, |t| {
                let mut tiles = t.chunks_exact_mut(4);
                for (i, s) in a.seqs.iter().enumerate().filter(|(_, s)| flash(s)) {
                    for r0 in (0..s.rows).step_by(FA_ROWS) {
                        let n = FA_ROWS.min(s.rows - r0);
                        if let Some(tile) = tiles.next() {
                            tile.copy_from_slice(
                                &[i, s.row0 + r0, n, s.start_pos + r0].map(|v| v as u32),
                            );
                        }
                    }
                }
            })?;
            let mut b = self.gpu.stream.launch_builder(self.function(kern));
            b.arg(&mut *a.out)
                .arg(a.q)
                .arg(a.k_cache)
                .arg(a.v_cache)
                .arg(&*t_d)
                .arg(&*tiles_d);
            for v in &ints {
                b.arg(v);
            }
            b.arg(&a.scale).arg(&window).arg(&softcap);
            // SAFETY: the argument list of attn_prefill_hd{64,128} for this head dim; every
            // tile's rows are inside q / out (rows × heads × hd, checked) and every table entry
            // a block inside the caches (checked); 128 threads, static shared memory.
            unsafe { self.launch(&mut b, grid(n_tiles, nh, 128, 0), "flash attention") }?;
        }
        let split_seqs = || a.seqs.iter().filter(|s| !flash(s));
        let sel: usize = split_seqs().map(|s| s.rows).sum();
        if sel == 0 {
            return Ok(());
        }
        let longest = split_seqs()
            .map(|s| s.start_pos + s.rows)
            .max()
            .unwrap_or(1);
        let splits = if graphing { a.max_seq } else { longest }
            .div_ceil(SPLIT_LEN)
            .max(1);
        let mut sc = self.scratch()?;
        // (sel, heads, splits, hd + 2)
        let part = self.grow(&mut sc.attn_part, sel * nh * splits * (hd + 2))?;
        let r_d = self.upload_meta_with(Meta::RowIds, sel, |ids| {
            let rows = split_seqs().flat_map(|s| s.row0..s.row0 + s.rows);
            for (d, r) in ids.iter_mut().zip(rows) {
                *d = r as u32;
            }
        })?;
        let s_d = self.upload_meta_with(Meta::SeqOf, rows, |seq_of| {
            for (i, s) in a.seqs.iter().enumerate() {
                seq_of[s.row0..s.row0 + s.rows].fill(i as u32);
            }
        })?;
        let n_d = self.upload_meta_with(Meta::NKeys, rows, |n_keys| {
            for s in a.seqs {
                for r in 0..s.rows {
                    n_keys[s.row0 + r] = (s.start_pos + r + 1) as u32;
                }
            }
        })?;
        let tail = [hd, SPLIT_LEN, splits].map(|v| v as i32);
        let mut b = self
            .gpu
            .stream
            .launch_builder(self.function(Kernel::AttnPartial));
        b.arg(&mut *part)
            .arg(a.q)
            .arg(a.k_cache)
            .arg(a.v_cache)
            .arg(&*t_d)
            .arg(&*r_d)
            .arg(&*s_d)
            .arg(&*n_d);
        for v in ints.iter().chain(&tail) {
            b.arg(v);
        }
        b.arg(&a.scale).arg(&window).arg(&softcap);
        // SAFETY: matches attn_partial's signature; part holds sel × heads × splits × (hd + 2),
        // every row id is a batch row, every table entry a block inside the caches (checked).
        unsafe { self.launch(&mut b, grid(sel * nh, splits, 128, 0), "attention") }?;
        let (nh_i, hd_i, sp_i) = (nh as i32, hd as i32, splits as i32);
        let mut b = self
            .gpu
            .stream
            .launch_builder(self.function(Kernel::AttnCombine));
        b.arg(a.out)
            .arg(&*part)
            .arg(&*r_d)
            .arg(&nh_i)
            .arg(&hd_i)
            .arg(&sp_i);
        // SAFETY: matches attn_combine's signature; out holds rows × heads × hd and every row id
        // is one of those rows.
        unsafe { self.launch(&mut b, grid(sel * nh, 1, 64, 0), "attention combine") }?;
        Ok(())
    }
}
