//! The backend role traits on `CudaBackend`.
//!
//! - Each op checks its buffers and launches its kernel through the typed table; quantized
//!   linears and the fused producers are `qlinear.rs`, attention `attention.rs`, sampling
//!   `sample.rs`, device state and dense helpers `backend.rs`.

use super::backend::{CudaBackend, CudaMatrix};
use super::kernels::Kernel;
use super::launch::{check_len, driver_error, grid, grid_1d, i32_of};
use super::meta::Meta;
use super::qlinear::CudaQMatrix;
use super::tiles::TensorCores;
use crate::backend::linear::Linear;
use crate::backend::sampling::Draw;
use crate::backend::{
    AttentionArgs, DeviceMemory, Fused, KvSeq, LinearInput, Ops, RopeKvArgs, Sampling, StepKey,
};
use crate::error::{Error, Result};
use crate::quant::{Phase, QuantWeight};
use crate::tensor::{DType, HostTensor};
use cudarc::driver::{CudaSlice, PushKernelArg};
use half::bf16;

impl DeviceMemory for CudaBackend {
    type Buf = CudaSlice<f32>;
    type Matrix = CudaMatrix;
    type QMatrix = CudaQMatrix;

    fn describe(&self) -> String {
        let d = &self.gpu.info;
        format!(
            "cuda:{} ({}, {}, {:.0} GiB, bf16 weights, {} BF16 GEMMs, 8-bit GEMMs on {})",
            d.ordinal,
            d.name,
            d.arch,
            d.total_mem as f64 / (1u64 << 30) as f64,
            if self.blas.is_some() { "cuBLAS" } else { "own" },
            match self.tensor_cores {
                TensorCores::Wgmma => "wgmma",
                TensorCores::MmaSync => "mma.sync",
            }
        )
    }

    fn alloc(&self, len: usize) -> Result<Self::Buf> {
        self.gpu
            .stream
            .alloc_zeros::<f32>(len.max(1))
            .map_err(|e| driver_error("alloc", e))
    }

    fn upload(&self, data: &[f32]) -> Result<Self::Buf> {
        self.upload_slice(data)
    }

    // the cache is bf16: a pool of len values is len / 2 f32 words of bf16 pairs
    fn alloc_kv(&self, len: usize) -> Result<Self::Buf> {
        self.alloc(len.div_ceil(2))
    }

    fn upload_kv(&self, data: &[f32]) -> Result<Self::Buf> {
        let words: Vec<f32> = data
            .chunks(2)
            .map(|p| {
                let lo = bf16::from_f32(p[0]).to_bits() as u32;
                let hi = p.get(1).map_or(0, |&v| bf16::from_f32(v).to_bits() as u32);
                f32::from_bits(lo | hi << 16)
            })
            .collect();
        self.upload_slice(&words)
    }

    fn kv_value_bytes(&self) -> usize {
        2
    }

    fn read(&self, buf: &Self::Buf, offset: usize, out: &mut [f32]) -> Result<()> {
        check_len("read", buf.len(), offset + out.len())?;
        let view = buf.slice(offset..offset + out.len());
        self.download(&view, out)
    }

    fn upload_matrix(&self, t: &HostTensor, _dtype: DType) -> Result<Self::Matrix> {
        let [rows, cols] = t.shape[..] else {
            return Err(Error::InvalidArgument(format!(
                "a matrix must be 2-D, got shape {:?}",
                t.shape
            )));
        };
        let bits: Vec<u16> = t
            .to_f32_vec()
            .into_iter()
            .map(|v| bf16::from_f32(v).to_bits())
            .collect();
        Ok(CudaMatrix {
            rows,
            cols,
            data: self.upload_slice(&bits)?,
        })
    }

    fn upload_quant(&self, w: &QuantWeight, rows: usize, cols: usize) -> Result<Self::QMatrix> {
        self.upload_q(w, rows, cols)
    }
}

impl Ops for CudaBackend {
    fn embed(&self, out: &mut Self::Buf, table: &Self::Matrix, ids: &[u32]) -> Result<()> {
        check_len("embed out", out.len(), ids.len() * table.cols)?;
        if ids.is_empty() {
            return Ok(());
        }
        let ids_d = self.upload_meta(Meta::Ids, ids)?;
        let dim = i32_of(table.cols, "dim")?;
        let mut b = self
            .gpu
            .stream
            .launch_builder(self.function(Kernel::EmbedBf16));
        b.arg(out).arg(&table.data).arg(&*ids_d).arg(&dim);
        // SAFETY: (out, table, ids, dim) as embed_bf16 takes them; out holds ids × dim and every
        // id was range-checked by the model.
        unsafe { self.launch(&mut b, grid_1d(ids.len(), 256), "embed") }?;
        Ok(())
    }

    fn rms_norm(
        &self,
        out: &mut Self::Buf,
        x: &Self::Buf,
        weight: &Self::Buf,
        rows: usize,
        dim: usize,
        eps: f32,
    ) -> Result<()> {
        check_len("rms_norm", out.len().min(x.len()), rows * dim)?;
        let d = i32_of(dim, "dim")?;
        let mut b = self
            .gpu
            .stream
            .launch_builder(self.function(Kernel::RmsNorm));
        b.arg(out).arg(x).arg(weight).arg(&d).arg(&eps);
        // SAFETY: matches rms_norm's signature; buffers hold rows × dim (checked).
        unsafe { self.launch(&mut b, grid_1d(rows, 256), "rms_norm") }?;
        Ok(())
    }

    fn copy(
        &self,
        dst: &mut Self::Buf,
        dst_off: usize,
        src: &Self::Buf,
        src_off: usize,
        len: usize,
    ) -> Result<()> {
        check_len("copy src", src.len(), src_off + len)?;
        check_len("copy dst", dst.len(), dst_off + len)?;
        if self.staging() {
            return Ok(());
        }
        let s = src.slice(src_off..src_off + len);
        let mut d = dst.slice_mut(dst_off..dst_off + len);
        self.gpu
            .stream
            .memcpy_dtod(&s, &mut d)
            .map_err(|e| driver_error("copy", e))
    }

    fn add_assign(&self, x: &mut Self::Buf, y: &Self::Buf, len: usize) -> Result<()> {
        check_len("add", x.len().min(y.len()), len)?;
        let n = i32_of(len, "len")?;
        let mut b = self
            .gpu
            .stream
            .launch_builder(self.function(Kernel::AddAssign));
        b.arg(x).arg(y).arg(&n);
        // SAFETY: matches add_assign's signature; both hold len values (checked).
        unsafe { self.launch(&mut b, grid_1d(len.div_ceil(256).min(4096), 256), "add") }?;
        Ok(())
    }

    fn linear(
        &self,
        out: &mut Self::Buf,
        x: &Self::Buf,
        w: &Linear<Self>,
        rows: usize,
        phase: Phase,
    ) -> Result<()> {
        self.linears_on(x, &mut [(out, w)], rows, phase)
    }

    fn rope(
        &self,
        x: &mut Self::Buf,
        cos: &Self::Buf,
        sin: &Self::Buf,
        seqs: &[KvSeq<'_>],
        n_heads: usize,
        head_dim: usize,
    ) -> Result<()> {
        let rows = KvSeq::batch_rows(seqs);
        check_len("rope", x.len(), rows * n_heads * head_dim)?;
        let pos_d = self.positions(seqs, cos, sin, head_dim)?;
        let (h, d) = (i32_of(n_heads, "heads")?, i32_of(head_dim, "head_dim")?);
        let mut b = self.gpu.stream.launch_builder(self.function(Kernel::Rope));
        b.arg(x).arg(cos).arg(sin).arg(&*pos_d).arg(&h).arg(&d);
        // SAFETY: matches rope's signature; x holds rows × heads × head_dim, every position is
        // inside the tables (checked).
        unsafe { self.launch(&mut b, grid_1d(rows, 128), "rope") }?;
        Ok(())
    }

    fn write_kv(
        &self,
        cache: &mut Self::Buf,
        src: &Self::Buf,
        seqs: &[KvSeq<'_>],
        block_size: usize,
        kv_dim: usize,
    ) -> Result<()> {
        let rows = KvSeq::batch_rows(seqs);
        if rows == 0 {
            return Ok(());
        }
        let slots_d = self.slots(&[&*cache], seqs, block_size, kv_dim, src.len())?;
        let kvd = i32_of(kv_dim, "kv_dim")?;
        let mut b = self
            .gpu
            .stream
            .launch_builder(self.function(Kernel::WriteKv));
        b.arg(cache).arg(src).arg(&*slots_d).arg(&kvd);
        // SAFETY: matches write_kv's signature (a bf16 cache); every slot is inside the cache
        // (checked against its bf16 length).
        unsafe { self.launch(&mut b, grid_1d(rows, 128), "write_kv") }?;
        Ok(())
    }

    fn attention(&self, a: AttentionArgs<'_, Self>) -> Result<()> {
        self.attention_paged(a)
    }

    fn silu_mul(&self, gate: &mut Self::Buf, up: &Self::Buf, len: usize) -> Result<()> {
        check_len("silu", gate.len().min(up.len()), len)?;
        let n = i32_of(len, "len")?;
        let mut b = self
            .gpu
            .stream
            .launch_builder(self.function(Kernel::SiluMul));
        b.arg(gate).arg(up).arg(&n);
        // SAFETY: matches silu_mul's signature; both hold len values.
        unsafe { self.launch(&mut b, grid_1d(len.div_ceil(256).min(4096), 256), "silu") }?;
        Ok(())
    }

    fn gelu_mul(&self, gate: &mut Self::Buf, up: &Self::Buf, len: usize) -> Result<()> {
        check_len("gelu", gate.len().min(up.len()), len)?;
        let n = i32_of(len, "len")?;
        let mut b = self
            .gpu
            .stream
            .launch_builder(self.function(Kernel::GeluMul));
        b.arg(gate).arg(up).arg(&n);
        // SAFETY: matches gelu_mul's signature; both hold len values.
        unsafe { self.launch(&mut b, grid_1d(len.div_ceil(256).min(4096), 256), "gelu") }?;
        Ok(())
    }

    fn scale(&self, x: &mut Self::Buf, len: usize, s: f32) -> Result<()> {
        self.pointwise(x, len, 0, s)
    }

    fn softcap(&self, x: &mut Self::Buf, len: usize, cap: f32) -> Result<()> {
        self.pointwise(x, len, 1, cap)
    }

    fn hadamard(&self, x: &mut Self::Buf, len: usize, block: usize) -> Result<()> {
        check_len("hadamard", x.len(), len)?;
        if !block.is_power_of_two() || block > 4096 || !len.is_multiple_of(block) {
            return Err(Error::InvalidArgument(format!(
                "hadamard block {block} must be a power of two <= 4096 dividing {len}"
            )));
        }
        let b_i = block as i32;
        let mut b = self
            .gpu
            .stream
            .launch_builder(self.function(Kernel::FwhtBlocks));
        b.arg(x).arg(&b_i);
        let cfg = grid(len / block, 1, 256, block * 4);
        // SAFETY: matches fwht_blocks; x holds len = whole blocks; shared memory holds one
        // block (at most 16 KiB).
        unsafe { self.launch(&mut b, cfg, "hadamard") }?;
        Ok(())
    }
}

impl Fused for CudaBackend {
    // the residual add fused into the norm that follows it (one pass over the row)
    fn add_rms_norm(
        &self,
        out: &mut CudaSlice<f32>,
        res: &mut CudaSlice<f32>,
        add: Option<&CudaSlice<f32>>,
        weight: &CudaSlice<f32>,
        rows: usize,
        dim: usize,
        eps: f32,
    ) -> Result<()> {
        let Some(y) = add else {
            return self.rms_norm(out, res, weight, rows, dim, eps);
        };
        check_len(
            "add_rms_norm",
            out.len().min(res.len()).min(y.len()),
            rows * dim,
        )?;
        check_len("add_rms_norm weight", weight.len(), dim)?;
        let d = i32_of(dim, "dim")?;
        let mut b = self
            .gpu
            .stream
            .launch_builder(self.function(Kernel::AddRmsNorm));
        b.arg(out).arg(res).arg(y).arg(weight).arg(&d).arg(&eps);
        // SAFETY: matches add_rms_norm's signature; buffers hold rows × dim, weight dim
        // (checked); one block per row.
        unsafe { self.launch(&mut b, grid_1d(rows, 256), "add_rms_norm") }?;
        Ok(())
    }

    fn project(
        &self,
        input: LinearInput<'_, Self>,
        rotate: Option<usize>,
        outs: &mut [(&mut Self::Buf, &Linear<Self>)],
        rows: usize,
        cols: usize,
        phase: Phase,
    ) -> Result<()> {
        self.project_on(input, rotate, outs, rows, cols, phase)
    }

    fn rope_write_kv(&self, a: RopeKvArgs<'_, Self>) -> Result<()> {
        let rows = KvSeq::batch_rows(a.seqs);
        if rows == 0 {
            return Ok(());
        }
        let kv_dim = a.n_kv_heads * a.head_dim;
        check_len("rope q", a.q.len(), rows * a.n_heads * a.head_dim)?;
        check_len("rope k / v", a.k.len().min(a.v.len()), rows * kv_dim)?;
        let pos_d = self.positions(a.seqs, a.cos, a.sin, a.head_dim)?;
        let caches = [&*a.k_cache, &*a.v_cache];
        let slots_d = self.slots(&caches, a.seqs, a.block_size, kv_dim, a.k.len())?;
        let ints = [a.n_heads, a.n_kv_heads, a.head_dim].map(|v| v as i32);
        let mut b = self
            .gpu
            .stream
            .launch_builder(self.function(Kernel::RopeWriteKv));
        b.arg(a.q)
            .arg(&mut *a.k)
            .arg(a.v)
            .arg(a.k_cache)
            .arg(a.v_cache)
            .arg(a.cos)
            .arg(a.sin)
            .arg(&*pos_d)
            .arg(&*slots_d);
        for v in &ints {
            b.arg(v);
        }
        // SAFETY: matches rope_write_kv's signature; q and k / v hold rows × heads × head_dim
        // (checked), every position is inside the rope tables and every slot inside both bf16
        // caches (checked).
        unsafe { self.launch(&mut b, grid_1d(rows, 128), "rope + KV write") }?;
        Ok(())
    }

    fn replay_step(&self, key: StepKey, step: &mut dyn FnMut() -> Result<()>) -> Result<()> {
        self.replay(key, step)
    }
}

impl Sampling for CudaBackend {
    fn sample_rows(
        &self,
        logits: &mut Self::Buf,
        vocab: usize,
        draws: &[Draw<'_>],
        out: &mut [u32],
    ) -> Result<()> {
        self.sample_on_device(logits, vocab, draws, out)
    }

    fn argmax_rows(&self, logits: &Self::Buf, vocab: usize, out: &mut [u32]) -> Result<()> {
        check_len("argmax logits", logits.len(), out.len() * vocab)?;
        if out.is_empty() {
            return Ok(());
        }
        let mut sc = self.scratch()?;
        let ids = self.grow(&mut sc.ids, out.len())?; // (rows)
        let v = i32_of(vocab, "vocab")?;
        let mut b = self
            .gpu
            .stream
            .launch_builder(self.function(Kernel::ArgmaxRows));
        b.arg(&mut *ids).arg(logits).arg(&v);
        // SAFETY: matches argmax_rows (one block per row, a multiple of 32 threads); logits
        // hold out.len() × vocab values (checked), ids out.len().
        unsafe { self.launch(&mut b, grid_1d(out.len(), 1024), "argmax") }?;
        self.download(&ids.slice(0..out.len()), out)
    }
}
