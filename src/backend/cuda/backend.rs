//! `CudaBackend`: the `Backend` trait on one CUDA device, launching `kernels/*.cu` through the
//! typed table. Activations are f32 device buffers (`CudaSlice<f32>`), dense weights BF16
//! (whatever dtype the checkpoint or `--dtype` asks for: the GEMMs read bf16), the KV cache
//! bf16 (pairs packed in f32 words, `alloc_kv`), accumulation f32.
//! Token ids go through the persistent scratch (`scratch.rs`), positions / KV slots / block
//! tables once per forward into fixed buffers (`meta.rs` reuses them across layers), so a
//! decode step allocates nothing on the device. Dense linears: the GEMV for decode rows, else
//! bf16-rounded activations into cuBLAS (`blas.rs`, when present) or the tensor-core
//! `gemm_bf16_tc`. Quantized linears (W8A8 int8, FP8, W4A16) and `project`'s fused norm /
//! SiLU·up → quantization are in `qlinear.rs`; the online Hadamard rotation has its kernel.
//! Decode steps are captured as CUDA graphs and replayed (`graph.rs`); every launch goes
//! through `go`, which a graph's staging pass turns off.
//! Unvalidated on hardware until a GPU session runs tests/cuda_model.rs (docs/GPU_RESULTS.md).

use super::blas::Blas;
use super::graph::Graphs;
use super::kernels::Kernel;
use super::meta::{Meta, MetaCache};
pub use super::qlinear::CudaQMatrix;
use super::qlinear::{arg_or_null, launch};
use super::runtime::Gpu;
use super::scratch::{Scratch, ScratchCell};
use super::tiles::{GemmKind, TensorCores, TC_BF16_128};
use crate::backend::{AttentionArgs, Backend, KvSeq, LinearInput, RopeKvArgs, StepKey};
use crate::engine::sampler::Draw;
use crate::error::{Error, Result};
use crate::model::linear::Linear;
use crate::quant::{Phase, QuantWeight};
use crate::tensor::{DType, HostTensor};
use cudarc::driver::{CudaFunction, CudaSlice, DevicePtr, DeviceRepr, LaunchConfig, PushKernelArg};
use half::bf16;
use std::sync::Arc;

/// A dense `[rows, cols]` weight in BF16 on the device.
pub struct CudaMatrix {
    pub rows: usize,
    pub cols: usize,
    data: CudaSlice<u16>, // (rows, cols) bf16 bits
}

pub struct CudaBackend {
    pub(super) gpu: Gpu,
    functions: Vec<CudaFunction>, // indexed by Kernel::index
    /// cuBLAS for the BF16 prefill GEMMs; None runs `gemm_bf16_tc`.
    blas: Option<Blas>,
    /// the last upload of each kind of per-forward metadata
    pub(super) meta: MetaCache,
    /// activation, attention and id scratch reused by every call
    pub(super) scratch: ScratchCell,
    /// captured decode steps and the staging / capture mode (`graph.rs`)
    pub(super) graphs: Graphs,
    /// dynamic shared memory a rotating quantizer's block may take (bytes)
    pub(super) row_smem: usize,
    /// the 8-bit GEMMs' tensor-core path on this device (`wgmma_wanted`)
    pub(super) tensor_cores: TensorCores,
    /// whether this device can run the wgmma tiles (sm_90 and their shared memory opted in)
    wgmma_ok: bool,
}

/// Whether the 8-bit GEMMs use wgmma where the device has it: unless FERROQ_WGMMA=0.
pub fn wgmma_wanted() -> bool {
    std::env::var("FERROQ_WGMMA").map_or(true, |v| v != "0")
}

pub(crate) fn drv(what: &str, e: impl std::fmt::Debug) -> Error {
    Error::Cuda(format!("{what}: {e:?}"))
}

/// A launch of an (x, y) grid of `block`-thread blocks with `shared_bytes` of dynamic shared
/// memory.
pub(super) fn grid(x: usize, y: usize, block: u32, shared_bytes: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (x as u32, y as u32, 1),
        block_dim: (block, 1, 1),
        shared_mem_bytes: shared_bytes as u32,
    }
}

pub(crate) fn grid1(n: usize, block: u32) -> LaunchConfig {
    grid(n, 1, block, 0)
}

pub(super) fn check(what: &str, have: usize, need: usize) -> Result<()> {
    if have < need {
        return Err(Error::InvalidArgument(format!(
            "{what}: device buffer holds {have} values, the op needs {need}"
        )));
    }
    Ok(())
}

/// bf16 values a KV pool (`Backend::alloc_kv`) holds: two per f32 word.
pub(super) fn kv_values(pool: &CudaSlice<f32>) -> usize {
    2 * pool.len()
}

pub(crate) fn i32_of(v: usize, what: &str) -> Result<i32> {
    i32::try_from(v).map_err(|_| Error::InvalidArgument(format!("{what} {v} exceeds i32")))
}

impl CudaBackend {
    /// Open device `ordinal` and load every kernel (compiled for its arch, or from the cache).
    pub fn new(ordinal: usize) -> Result<Self> {
        let mut gpu = Gpu::new(ordinal)?;
        let functions = Kernel::ALL
            .into_iter()
            .map(|k| gpu.function(k))
            .collect::<Result<Vec<_>>>()?;
        let blas = Blas::open(&gpu.stream)?;
        // the rotating quantizers hold a whole row in shared memory: allow what the device
        // allows a block (227 KiB on Hopper), not the default 48 KiB; static shared memory (the
        // reductions' few floats) comes out of the same budget
        let row_smem = gpu.smem_optin()?.saturating_sub(1024);
        for k in [Kernel::RotateQuantI8, Kernel::RotateQuantFp8] {
            Gpu::allow_smem(&functions[k.index()], row_smem)?;
        }
        let wgmma_ok = gpu.has_wgmma()?;
        let tensor_cores = if wgmma_ok && wgmma_wanted() {
            TensorCores::Wgmma
        } else {
            TensorCores::MmaSync
        };
        Ok(CudaBackend {
            gpu,
            functions,
            blas,
            meta: MetaCache::default(),
            scratch: ScratchCell::default(),
            graphs: Graphs::default(),
            row_smem,
            tensor_cores,
            wgmma_ok,
        })
    }

    /// Use cuBLAS for the BF16 GEMMs (when its library is present) or ferroq's own kernel;
    /// returns whether cuBLAS is now in use. The tests and benchmarks run both.
    pub fn set_cublas(&mut self, on: bool) -> Result<bool> {
        self.blas = if on {
            match self.blas.take() {
                Some(b) => Some(b),
                None => Blas::open_always(&self.gpu.stream)?, // None where cuBLAS is absent
            }
        } else {
            None
        };
        Ok(self.blas.is_some())
    }

    /// Run the 8-bit GEMMs on wgmma (where the device has it) or on `mma.sync`; returns what
    /// is now in use. The tests and benchmarks compare both on one device.
    pub fn set_wgmma(&mut self, on: bool) -> TensorCores {
        self.tensor_cores = if on && self.wgmma_ok {
            TensorCores::Wgmma
        } else {
            TensorCores::MmaSync
        };
        self.tensor_cores
    }

    pub fn tensor_cores(&self) -> TensorCores {
        self.tensor_cores
    }

    /// out (rows, n) += bias (n) broadcast over rows.
    fn add_bias(
        &self,
        out: &mut CudaSlice<f32>,
        bias: &CudaSlice<f32>,
        rows: usize,
        n: usize,
    ) -> Result<()> {
        let (mi, ni) = (i32_of(rows, "rows")?, i32_of(n, "n")?);
        let mut b = self.gpu.stream.launch_builder(self.f(Kernel::AddBias));
        b.arg(out).arg(bias).arg(&mi).arg(&ni);
        // SAFETY: matches add_bias; out holds rows × n (checked by the caller), bias n.
        unsafe {
            self.go(
                &mut b,
                grid1((rows * n).div_ceil(256).min(4096), 256),
                "bias",
            )
        }?;
        Ok(())
    }

    /// The first `len` values of x rounded to bf16 (nearest even) into the scratch: what the
    /// BF16 and W4A16 tensor-core GEMMs read.
    pub(super) fn cast_bf16<'s>(
        &self,
        sc: &'s mut Scratch,
        x: &CudaSlice<f32>,
        len: usize,
    ) -> Result<&'s CudaSlice<u16>> {
        check("bf16 cast input", x.len(), len)?;
        let xb = self.grow(&mut sc.bf16, len)?;
        let len_i = i32_of(len, "values to cast")?;
        let mut b = self.gpu.stream.launch_builder(self.f(Kernel::CastBf16));
        b.arg(&mut *xb).arg(x).arg(&len_i);
        // SAFETY: matches cast_bf16 (grid-stride); xb and x hold at least len values.
        unsafe {
            self.go(
                &mut b,
                grid1(len.div_ceil(256).min(4096), 256),
                "cast to bf16",
            )
        }?;
        Ok(xb)
    }

    /// The dense BF16 linear for more rows than the GEMV takes, k a multiple of 8: the rows
    /// rounded to bf16 once, then cuBLAS or `gemm_bf16_tc` (tensor cores, bias fused).
    fn linear_bf16_tc(
        &self,
        sc: &mut Scratch,
        out: &mut CudaSlice<f32>,
        x: &CudaSlice<f32>,
        m: &CudaMatrix,
        bias: Option<&CudaSlice<f32>>,
        rows: usize,
    ) -> Result<()> {
        let (n, k) = (m.rows, m.cols);
        let xb = self.cast_bf16(sc, x, rows * k)?; // (rows, k) bf16
        if let Some(blas) = &self.blas {
            if self.staging() {
                return Ok(());
            }
            blas.gemm_bf16(out, xb, &m.data, (rows, n, k))?;
            return match bias {
                Some(bias) => self.add_bias(out, bias, rows, n),
                None => Ok(()),
            };
        }
        let (mi, ni, ki) = (i32_of(rows, "rows")?, i32_of(n, "n")?, i32_of(k, "k")?);
        let null: u64 = 0;
        let cfg = launch(Kernel::GemmBf16Tc, rows, n)?;
        let mut b = self.gpu.stream.launch_builder(self.f(Kernel::GemmBf16Tc));
        b.arg(&mut *out).arg(xb).arg(&m.data);
        arg_or_null(&mut b, bias, &null);
        b.arg(&mi).arg(&ni).arg(&ki);
        // SAFETY: the argument list of gemm_bf16_tc (bias or a null pointer); k is a multiple
        // of 8, so its 16-byte cp.async rows stay aligned; buffers sized rows × k, n × k,
        // rows × n.
        unsafe { self.go(&mut b, cfg, "gemm_bf16_tc") }?;
        Ok(())
    }

    /// A dense BF16 linear: out (rows, n) = x (rows, k) · mᵀ + bias.
    pub(super) fn linear_dense(
        &self,
        sc: &mut Scratch,
        out: &mut CudaSlice<f32>,
        x: &CudaSlice<f32>,
        m: &CudaMatrix,
        bias: Option<&CudaSlice<f32>>,
        rows: usize,
    ) -> Result<()> {
        let (n, k) = (m.rows, m.cols);
        check("dense linear input", x.len(), rows * k)?;
        check("dense linear output", out.len(), rows * n)?;
        let tile = GemmKind::Bf16.pick(rows, k, self.tensor_cores);
        if tile == TC_BF16_128 {
            return self.linear_bf16_tc(sc, out, x, m, bias, rows);
        }
        // decode-sized rows (the weight-streaming GEMV), or k not a multiple of 8 (the
        // CUDA-core tile on f32 activations)
        let (mi, ni, ki) = (i32_of(rows, "rows")?, i32_of(n, "n")?, i32_of(k, "k")?);
        let kern = tile.kernel;
        let cfg = launch(kern, rows, n)?;
        let mut b = self.gpu.stream.launch_builder(self.f(kern));
        b.arg(&mut *out)
            .arg(x)
            .arg(&m.data)
            .arg(&mi)
            .arg(&ni)
            .arg(&ki);
        // SAFETY: (out, x, w, m, n, k) as both GEMM kernels take them; sizes checked; the
        // GEMV runs only for even k (its bf16-pair loads need 4-byte aligned rows).
        unsafe { self.go(&mut b, cfg, "dense linear") }?;
        match bias {
            Some(bias) => self.add_bias(out, bias, rows, n),
            None => Ok(()),
        }
    }

    /// Each batch row's position on the device (rope), checked against the rope tables.
    fn positions(
        &self,
        seqs: &[KvSeq<'_>],
        cos: &CudaSlice<f32>,
        sin: &CudaSlice<f32>,
        head_dim: usize,
    ) -> Result<Arc<CudaSlice<u32>>> {
        let last = seqs
            .iter()
            .map(|s| (s.start_pos + s.rows).saturating_sub(1))
            .max()
            .unwrap_or(0);
        check(
            "rope table",
            cos.len().min(sin.len()),
            (last + 1) * head_dim / 2,
        )?;
        self.up_meta_with(Meta::Positions, KvSeq::batch_rows(seqs), |pos| {
            for s in seqs {
                for r in 0..s.rows {
                    pos[s.row0 + r] = (s.start_pos + r) as u32;
                }
            }
        })
    }

    /// Each batch row's KV slot on the device, checked inside every one of `caches` (bf16
    /// pools of (n_blocks, block_size, kv_dim)) and the source of `src_len` values.
    fn slots(
        &self,
        caches: &[&CudaSlice<f32>],
        seqs: &[KvSeq<'_>],
        block_size: usize,
        kv_dim: usize,
        src_len: usize,
    ) -> Result<Arc<CudaSlice<u32>>> {
        let values = caches.iter().map(|c| kv_values(c)).min().unwrap_or(0);
        let n_blocks = values / (block_size * kv_dim).max(1);
        for s in seqs {
            s.check(block_size, n_blocks, usize::MAX, src_len / kv_dim.max(1))?;
        }
        self.up_meta_with(Meta::Slots, KvSeq::batch_rows(seqs), |slots| {
            for s in seqs {
                for r in 0..s.rows {
                    slots[s.row0 + r] = s.slot(s.start_pos + r, block_size) as u32;
                }
            }
        })
    }

    pub(super) fn f(&self, k: Kernel) -> &CudaFunction {
        &self.functions[k.index()]
    }

    /// Copy `src` (out.len() values) to the host and wait for it and everything queued before.
    fn download<T: DeviceRepr, S: DevicePtr<T>>(&self, src: &S, out: &mut [T]) -> Result<()> {
        self.gpu
            .stream
            .memcpy_dtoh(src, out)
            .map_err(|e| drv("download", e))?;
        self.gpu
            .stream
            .synchronize()
            .map_err(|e| drv("synchronize", e))
    }

    pub(super) fn up<T: DeviceRepr>(&self, v: &[T]) -> Result<CudaSlice<T>> {
        self.gpu.stream.clone_htod(v).map_err(|e| drv("upload", e))
    }
}

impl Backend for CudaBackend {
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
            .map_err(|e| drv("alloc", e))
    }

    fn upload(&self, data: &[f32]) -> Result<Self::Buf> {
        self.up(data)
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
        self.up(&words)
    }

    fn kv_value_bytes(&self) -> usize {
        2
    }

    fn read(&self, buf: &Self::Buf, offset: usize, out: &mut [f32]) -> Result<()> {
        check("read", buf.len(), offset + out.len())?;
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
            data: self.up(&bits)?,
        })
    }

    fn upload_quant(&self, w: &QuantWeight, rows: usize, cols: usize) -> Result<Self::QMatrix> {
        self.upload_q(w, rows, cols)
    }

    fn embed(&self, out: &mut Self::Buf, table: &Self::Matrix, ids: &[u32]) -> Result<()> {
        check("embed out", out.len(), ids.len() * table.cols)?;
        if ids.is_empty() {
            return Ok(());
        }
        let ids_d = self.up_meta(Meta::Ids, ids)?;
        let dim = i32_of(table.cols, "dim")?;
        let mut b = self.gpu.stream.launch_builder(self.f(Kernel::EmbedBf16));
        b.arg(out).arg(&table.data).arg(&*ids_d).arg(&dim);
        // SAFETY: (out, table, ids, dim) as embed_bf16 takes them; out holds ids × dim and every
        // id was range-checked by the model.
        unsafe { self.go(&mut b, grid1(ids.len(), 256), "embed") }?;
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
        check("rms_norm", out.len().min(x.len()), rows * dim)?;
        let d = i32_of(dim, "dim")?;
        let mut b = self.gpu.stream.launch_builder(self.f(Kernel::RmsNorm));
        b.arg(out).arg(x).arg(weight).arg(&d).arg(&eps);
        // SAFETY: matches rms_norm's signature; buffers hold rows × dim (checked).
        unsafe { self.go(&mut b, grid1(rows, 256), "rms_norm") }?;
        Ok(())
    }

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
        check(
            "add_rms_norm",
            out.len().min(res.len()).min(y.len()),
            rows * dim,
        )?;
        check("add_rms_norm weight", weight.len(), dim)?;
        let d = i32_of(dim, "dim")?;
        let mut b = self.gpu.stream.launch_builder(self.f(Kernel::AddRmsNorm));
        b.arg(out).arg(res).arg(y).arg(weight).arg(&d).arg(&eps);
        // SAFETY: matches add_rms_norm's signature; buffers hold rows × dim, weight dim
        // (checked); one block per row.
        unsafe { self.go(&mut b, grid1(rows, 256), "add_rms_norm") }?;
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
        check("copy src", src.len(), src_off + len)?;
        check("copy dst", dst.len(), dst_off + len)?;
        if self.staging() {
            return Ok(());
        }
        let s = src.slice(src_off..src_off + len);
        let mut d = dst.slice_mut(dst_off..dst_off + len);
        self.gpu
            .stream
            .memcpy_dtod(&s, &mut d)
            .map_err(|e| drv("copy", e))
    }

    fn add_assign(&self, x: &mut Self::Buf, y: &Self::Buf, len: usize) -> Result<()> {
        check("add", x.len().min(y.len()), len)?;
        let n = i32_of(len, "len")?;
        let mut b = self.gpu.stream.launch_builder(self.f(Kernel::AddAssign));
        b.arg(x).arg(y).arg(&n);
        // SAFETY: matches add_assign's signature; both hold len values (checked).
        unsafe { self.go(&mut b, grid1(len.div_ceil(256).min(4096), 256), "add") }?;
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
        check("rope", x.len(), rows * n_heads * head_dim)?;
        let pos_d = self.positions(seqs, cos, sin, head_dim)?;
        let (h, d) = (i32_of(n_heads, "heads")?, i32_of(head_dim, "head_dim")?);
        let mut b = self.gpu.stream.launch_builder(self.f(Kernel::Rope));
        b.arg(x).arg(cos).arg(sin).arg(&*pos_d).arg(&h).arg(&d);
        // SAFETY: matches rope's signature; x holds rows × heads × head_dim, every position is
        // inside the tables (checked).
        unsafe { self.go(&mut b, grid1(rows, 128), "rope") }?;
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
        let mut b = self.gpu.stream.launch_builder(self.f(Kernel::WriteKv));
        b.arg(cache).arg(src).arg(&*slots_d).arg(&kvd);
        // SAFETY: matches write_kv's signature (a bf16 cache); every slot is inside the cache
        // (checked against its bf16 length).
        unsafe { self.go(&mut b, grid1(rows, 128), "write_kv") }?;
        Ok(())
    }

    fn rope_write_kv(&self, a: RopeKvArgs<'_, Self>) -> Result<()> {
        let rows = KvSeq::batch_rows(a.seqs);
        if rows == 0 {
            return Ok(());
        }
        let kv_dim = a.n_kv_heads * a.head_dim;
        check("rope q", a.q.len(), rows * a.n_heads * a.head_dim)?;
        check("rope k / v", a.k.len().min(a.v.len()), rows * kv_dim)?;
        let pos_d = self.positions(a.seqs, a.cos, a.sin, a.head_dim)?;
        let caches = [&*a.k_cache, &*a.v_cache];
        let slots_d = self.slots(&caches, a.seqs, a.block_size, kv_dim, a.k.len())?;
        let ints = [a.n_heads, a.n_kv_heads, a.head_dim].map(|v| v as i32);
        let mut b = self.gpu.stream.launch_builder(self.f(Kernel::RopeWriteKv));
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
        unsafe { self.go(&mut b, grid1(rows, 128), "rope + KV write") }?;
        Ok(())
    }

    fn attention(&self, a: AttentionArgs<'_, Self>) -> Result<()> {
        self.attention_paged(a)
    }

    fn silu_mul(&self, gate: &mut Self::Buf, up: &Self::Buf, len: usize) -> Result<()> {
        check("silu", gate.len().min(up.len()), len)?;
        let n = i32_of(len, "len")?;
        let mut b = self.gpu.stream.launch_builder(self.f(Kernel::SiluMul));
        b.arg(gate).arg(up).arg(&n);
        // SAFETY: matches silu_mul's signature; both hold len values.
        unsafe { self.go(&mut b, grid1(len.div_ceil(256).min(4096), 256), "silu") }?;
        Ok(())
    }

    fn hadamard(&self, x: &mut Self::Buf, len: usize, block: usize) -> Result<()> {
        check("hadamard", x.len(), len)?;
        if !block.is_power_of_two() || block > 4096 || !len.is_multiple_of(block) {
            return Err(Error::InvalidArgument(format!(
                "hadamard block {block} must be a power of two <= 4096 dividing {len}"
            )));
        }
        let b_i = block as i32;
        let mut b = self.gpu.stream.launch_builder(self.f(Kernel::FwhtBlocks));
        b.arg(x).arg(&b_i);
        let cfg = grid(len / block, 1, 256, block * 4);
        // SAFETY: matches fwht_blocks; x holds len = whole blocks; shared memory holds one
        // block (at most 16 KiB).
        unsafe { self.go(&mut b, cfg, "hadamard") }?;
        Ok(())
    }

    fn replay_step(&self, key: StepKey, step: &mut dyn FnMut() -> Result<()>) -> Result<()> {
        self.replay(key, step)
    }

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
        check("argmax logits", logits.len(), out.len() * vocab)?;
        if out.is_empty() {
            return Ok(());
        }
        let mut sc = self.scratch()?;
        let ids = self.grow(&mut sc.ids, out.len())?; // (rows)
        let v = i32_of(vocab, "vocab")?;
        let mut b = self.gpu.stream.launch_builder(self.f(Kernel::ArgmaxRows));
        b.arg(&mut *ids).arg(logits).arg(&v);
        // SAFETY: matches argmax_rows (one block per row, a multiple of 32 threads); logits
        // hold out.len() × vocab values (checked), ids out.len().
        unsafe { self.go(&mut b, grid1(out.len(), 1024), "argmax") }?;
        self.download(&ids.slice(0..out.len()), out)
    }
}
