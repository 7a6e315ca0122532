//! `CudaBackend`: one CUDA device's state and the dense helpers the op files share.
//!
//! - Activations are f32 device buffers, dense weights BF16 (whatever the checkpoint's dtype: the
//!   GEMMs read bf16), the KV cache bf16 pairs in f32 words (`alloc_kv`), accumulation f32.
//! - Dense linears: the GEMV for decode rows, else bf16-rounded activations into cuBLAS
//!   (`blas.rs`, where present) or the tensor-core `gemm_bf16_tc`.
//! - Token ids go through persistent scratch (`scratch.rs`) and per-forward metadata through
//!   fixed buffers (`meta.rs`), so a decode step allocates nothing on the device.
//! - Every launch goes through `launch`, which a graph's staging pass turns off (`launch.rs`).
//! - Unvalidated on hardware until a GPU session runs the CUDA tests (docs/GPU_RESULTS.md).

use super::blas::Blas;
use super::graph::Graphs;
use super::kernels::Kernel;
use super::launch::{
    arg_or_null, check_len, driver_error, gemm_grid, grid_1d, i32_of, kv_values, RunState,
};
use super::meta::{Meta, MetaCache};
use super::runtime::Gpu;
use super::scratch::{self, Grow, Scratch, ScratchCell};
use super::tiles::{GemmKind, TensorCores, TC_BF16_128};
use crate::backend::{KvSeq, StepKey};
use crate::error::Result;
use cudarc::driver::{
    CudaFunction, CudaSlice, DevicePtr, DeviceRepr, LaunchArgs, LaunchConfig, PushKernelArg,
    ValidAsZeroBits,
};
use std::sync::{Arc, MutexGuard};

/// A dense `[rows, cols]` weight in BF16 on the device.
pub struct CudaMatrix {
    pub rows: usize,
    pub cols: usize,
    pub(super) data: CudaSlice<u16>, // (rows, cols) bf16 bits
}

pub struct CudaBackend {
    pub(super) gpu: Gpu,
    functions: Vec<CudaFunction>, // indexed by Kernel::index
    /// cuBLAS for the BF16 prefill GEMMs; None runs `gemm_bf16_tc`.
    pub(super) blas: Option<Blas>,
    /// the last upload of each kind of per-forward metadata
    pub(super) meta: MetaCache,
    /// activation, attention and id scratch reused by every call
    pub(super) scratch: ScratchCell,
    /// captured decode steps (`graph.rs`)
    pub(super) graphs: Graphs,
    /// eager, staging or capturing, and the count of moved buffers (`launch.rs`)
    pub(super) run: RunState,
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
            run: RunState::default(),
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
        let mut b = self
            .gpu
            .stream
            .launch_builder(self.function(Kernel::AddBias));
        b.arg(out).arg(bias).arg(&mi).arg(&ni);
        // SAFETY: matches add_bias; out holds rows × n (checked by the caller), bias n.
        unsafe {
            self.launch(
                &mut b,
                grid_1d((rows * n).div_ceil(256).min(4096), 256),
                "bias",
            )
        }?;
        Ok(())
    }

    /// x (len) = x · a (mode 0) or a · tanh(x / a) (mode 1): `activation.cu::pointwise`.
    pub(super) fn pointwise(
        &self,
        x: &mut CudaSlice<f32>,
        len: usize,
        mode: i32,
        a: f32,
    ) -> Result<()> {
        check_len("pointwise", x.len(), len)?;
        let n = i32_of(len, "len")?;
        let mut b = self
            .gpu
            .stream
            .launch_builder(self.function(Kernel::Pointwise));
        b.arg(x).arg(&n).arg(&mode).arg(&a);
        // SAFETY: matches pointwise's signature; x holds len values (checked).
        unsafe {
            self.launch(
                &mut b,
                grid_1d(len.div_ceil(256).min(4096), 256),
                "pointwise",
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
        check_len("bf16 cast input", x.len(), len)?;
        let xb = self.grow(&mut sc.bf16, len)?;
        let len_i = i32_of(len, "values to cast")?;
        let mut b = self
            .gpu
            .stream
            .launch_builder(self.function(Kernel::CastBf16));
        b.arg(&mut *xb).arg(x).arg(&len_i);
        // SAFETY: matches cast_bf16 (grid-stride); xb and x hold at least len values.
        unsafe {
            self.launch(
                &mut b,
                grid_1d(len.div_ceil(256).min(4096), 256),
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
        let cfg = gemm_grid(Kernel::GemmBf16Tc, rows, n)?;
        let mut b = self
            .gpu
            .stream
            .launch_builder(self.function(Kernel::GemmBf16Tc));
        b.arg(&mut *out).arg(xb).arg(&m.data);
        arg_or_null(&mut b, bias, &null);
        b.arg(&mi).arg(&ni).arg(&ki);
        // SAFETY: the argument list of gemm_bf16_tc (bias or a null pointer); k is a multiple
        // of 8, so its 16-byte cp.async rows stay aligned; buffers sized rows × k, n × k,
        // rows × n.
        unsafe { self.launch(&mut b, cfg, "gemm_bf16_tc") }?;
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
        check_len("dense linear input", x.len(), rows * k)?;
        check_len("dense linear output", out.len(), rows * n)?;
        let tile = GemmKind::Bf16.pick(rows, k, self.tensor_cores);
        if tile == TC_BF16_128 {
            return self.linear_bf16_tc(sc, out, x, m, bias, rows);
        }
        // decode-sized rows (the weight-streaming GEMV), or k not a multiple of 8 (the
        // CUDA-core tile on f32 activations)
        let (mi, ni, ki) = (i32_of(rows, "rows")?, i32_of(n, "n")?, i32_of(k, "k")?);
        let kern = tile.kernel;
        let cfg = gemm_grid(kern, rows, n)?;
        let mut b = self.gpu.stream.launch_builder(self.function(kern));
        b.arg(&mut *out)
            .arg(x)
            .arg(&m.data)
            .arg(&mi)
            .arg(&ni)
            .arg(&ki);
        // SAFETY: (out, x, w, m, n, k) as both GEMM kernels take them; sizes checked; the
        // GEMV runs only for even k (its bf16-pair loads need 4-byte aligned rows).
        unsafe { self.launch(&mut b, cfg, "dense linear") }?;
        match bias {
            Some(bias) => self.add_bias(out, bias, rows, n),
            None => Ok(()),
        }
    }

    /// Each batch row's position on the device (rope), checked against the rope tables.
    pub(super) fn positions(
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
        check_len(
            "rope table",
            cos.len().min(sin.len()),
            (last + 1) * head_dim / 2,
        )?;
        self.upload_meta_with(Meta::Positions, KvSeq::batch_rows(seqs), |pos| {
            for s in seqs {
                for r in 0..s.rows {
                    pos[s.row0 + r] = (s.start_pos + r) as u32;
                }
            }
        })
    }

    /// Each batch row's KV slot on the device, checked inside every one of `caches` (bf16
    /// pools of (n_blocks, block_size, kv_dim)) and the source of `src_len` values.
    pub(super) fn slots(
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
        self.upload_meta_with(Meta::Slots, KvSeq::batch_rows(seqs), |slots| {
            for s in seqs {
                for r in 0..s.rows {
                    slots[s.row0 + r] = s.slot(s.start_pos + r, block_size) as u32;
                }
            }
        })
    }

    /// The loaded function of kernel `k`.
    pub(super) fn function(&self, k: Kernel) -> &CudaFunction {
        &self.functions[k.index()]
    }

    /// Copy `src` (out.len() values) to the host and wait for it and everything queued before.
    pub(super) fn download<T: DeviceRepr, S: DevicePtr<T>>(
        &self,
        src: &S,
        out: &mut [T],
    ) -> Result<()> {
        self.gpu
            .stream
            .memcpy_dtoh(src, out)
            .map_err(|e| driver_error("download", e))?;
        self.gpu
            .stream
            .synchronize()
            .map_err(|e| driver_error("synchronize", e))
    }

    /// `v` in a new device buffer.
    pub(super) fn upload_slice<T: DeviceRepr>(&self, v: &[T]) -> Result<CudaSlice<T>> {
        self.gpu
            .stream
            .clone_htod(v)
            .map_err(|e| driver_error("upload", e))
    }

    /// Whether this is a graph step's staging pass (see `RunState::staging`).
    pub(super) fn staging(&self) -> bool {
        self.run.staging()
    }

    /// Whether the step being run is staged or captured (attention then uses fixed maxima).
    pub(super) fn graphing(&self) -> bool {
        self.run.graphing()
    }

    /// Launch `b` with `cfg`, unless this is a staging pass (which only uploads).
    ///
    /// # Safety
    /// As `LaunchArgs::launch`: the arguments must be the kernel's parameters, in order, and
    /// every buffer must hold what the kernel reads and writes at this geometry.
    pub(super) unsafe fn launch(
        &self,
        b: &mut LaunchArgs<'_>,
        cfg: LaunchConfig,
        what: &str,
    ) -> Result<()> {
        // SAFETY: the caller's contract.
        unsafe { self.run.launch(b, cfg, what) }
    }

    /// Capture and replay decode steps (on by default unless FERROQ_CUDA_GRAPHS=0); the tests
    /// compare both.
    pub fn set_graphs(&self, on: bool) {
        self.graphs.set_enabled(on);
    }

    /// Whether decode steps are captured (false after `set_graphs(false)`, FERROQ_CUDA_GRAPHS=0
    /// or a failed capture), and how many graphs have been captured.
    pub fn graph_stats(&self) -> (bool, u64) {
        self.graphs.stats()
    }

    /// `Backend::replay_step`: stage, then replay the step's graph (capturing it the first
    /// time); eager where graphs are off or capture failed.
    pub(super) fn replay(&self, key: StepKey, step: &mut dyn FnMut() -> Result<()>) -> Result<()> {
        self.graphs
            .replay(&self.run, &self.meta, &self.gpu.stream, key, step)
    }

    /// `v` on the device (the buffer may be longer): the cached upload of this kind when its
    /// contents are the same.
    pub(super) fn upload_meta(&self, kind: Meta, v: &[u32]) -> Result<Arc<CudaSlice<u32>>> {
        self.meta.upload(&self.run, &self.gpu.stream, kind, v)
    }

    /// `fill`'s `len` values on the device, as `upload_meta`, built in a reused host buffer.
    pub(super) fn upload_meta_with(
        &self,
        kind: Meta,
        len: usize,
        fill: impl FnOnce(&mut [u32]),
    ) -> Result<Arc<CudaSlice<u32>>> {
        self.meta
            .upload_with(&self.run, &self.gpu.stream, kind, len, fill)
    }

    /// `g`, at least `len` long (`scratch::grow`).
    pub(super) fn grow<'g, T: DeviceRepr + ValidAsZeroBits>(
        &self,
        g: &'g mut Grow<T>,
        len: usize,
    ) -> Result<&'g mut CudaSlice<T>> {
        scratch::grow(&self.run, &self.gpu.stream, g, len)
    }

    /// The scratch buffers, held until the guard drops.
    pub(super) fn scratch(&self) -> Result<MutexGuard<'_, Scratch>> {
        scratch::lock(&self.scratch)
    }
}
