//! The CPU backend: the reference implementation of every op, and the default without a GPU.
//!
//! - Buffers are `Vec<f32>`; weights keep their checkpoint dtype (f32 / f16 / bf16), are widened
//!   inside the kernels, and are repacked at load where a faster kernel reads another layout.
//! - Kernel files are named for what they compute (`dense`, `int8`, `int4`, `act_quant`,
//!   `attention`, `norm`, `vmath`); ISA paths are variants inside, chosen by `CpuIsa`.
//! - Ops over rows or heads run on rayon's pool, and nothing here allocates per call, so a decode
//!   step allocates nothing.

pub mod act_quant;
pub mod amx;
pub mod attention;
pub mod dense;
pub mod int4;
pub mod int8;
pub mod isa;
pub mod norm;
pub mod vmath;

pub use isa::{CpuIsa, DenseIsa, Int4Isa, Int8Isa};

use super::{AttentionArgs, DeviceMemory, Fused, KvSeq, Ops, Sampling};
use crate::backend::linear::{Linear, LinearWeight};
use crate::backend::sampling::{self, Draw};
use crate::error::{Error, Result};
use crate::quant::{self, ActQuant, ActSpec, Phase, QDType, QuantWeight};
use crate::tensor::{DType, HostData, HostTensor};
use half::{bf16, f16};
use rayon::prelude::*;
use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering};

/// Dense matrix data in its storage dtype.
#[derive(Debug)]
pub enum MatrixData {
    F32(Vec<f32>),
    F16(Vec<f16>),
    BF16(Vec<bf16>),
    /// Repacked for the AVX-512 panel kernels (`dense::panels`) where the CPU has them.
    PanelF32(dense::panels::Panels<f32>),
    PanelF16(dense::panels::Panels<f16>),
    PanelBF16(dense::panels::Panels<bf16>),
}

/// A `[rows, cols]` row-major weight matrix.
#[derive(Debug)]
pub struct CpuMatrix {
    pub rows: usize,
    pub cols: usize,
    pub data: MatrixData,
}

impl CpuMatrix {
    pub fn dtype(&self) -> DType {
        match self.data {
            MatrixData::F32(_) | MatrixData::PanelF32(_) => DType::F32,
            MatrixData::F16(_) | MatrixData::PanelF16(_) => DType::F16,
            MatrixData::BF16(_) | MatrixData::PanelBF16(_) => DType::BF16,
        }
    }

    /// Widen row `r` into `out` (cols).
    fn row_into(&self, r: usize, out: &mut [f32]) {
        let s = r * self.cols..(r + 1) * self.cols;
        match &self.data {
            MatrixData::F32(v) => out.copy_from_slice(&v[s]),
            MatrixData::F16(v) => out.iter_mut().zip(&v[s]).for_each(|(o, x)| *o = x.to_f32()),
            MatrixData::BF16(v) => out.iter_mut().zip(&v[s]).for_each(|(o, x)| *o = x.to_f32()),
            MatrixData::PanelF32(p) => p.row_into(r, out),
            MatrixData::PanelF16(p) => p.row_into(r, out),
            MatrixData::PanelBF16(p) => p.row_into(r, out),
        }
    }
}

/// Rows of activations quantized per path, for observing pd_mix (tests, diagnostics).
#[derive(Debug, Default)]
pub struct QuantCounters {
    pub dynamic_rows: AtomicU64,
    pub static_rows: AtomicU64,
}

#[derive(Debug)]
pub struct CpuBackend {
    pub counters: QuantCounters,
    isa: CpuIsa,
}

impl Default for CpuBackend {
    fn default() -> Self {
        CpuBackend {
            counters: QuantCounters::default(),
            isa: CpuIsa::detect(),
        }
    }
}

impl CpuBackend {
    pub fn new() -> Self {
        CpuBackend::default()
    }

    /// A backend whose W8A8 linears use `isa` (tests and benchmarks force the slower paths).
    /// Panics if the CPU cannot run it.
    pub fn with_int8_isa(isa: Int8Isa) -> Self {
        assert!(
            Int8Isa::all_available().contains(&isa),
            "{isa:?} int8 kernels requested on a CPU without them"
        );
        CpuBackend::with_isa(CpuIsa {
            int8: isa,
            ..CpuIsa::detect()
        })
    }

    /// A backend running the kernel families `isa` names. Panics if the CPU cannot run one.
    pub fn with_isa(isa: CpuIsa) -> Self {
        let ok = DenseIsa::available().contains(&isa.dense)
            && Int8Isa::all_available().contains(&isa.int8)
            && Int4Isa::available().contains(&isa.int4)
            && (!isa.vector || (act_quant::available() && vmath::avx512()));
        assert!(ok, "{isa:?} requested on a CPU without those kernels");
        CpuBackend {
            counters: QuantCounters::default(),
            isa,
        }
    }

    /// The kernel families this backend runs.
    pub fn isa(&self) -> CpuIsa {
        self.isa
    }
}

/// A quantized weight in the layout this backend's kernels read.
#[derive(Clone, Debug)]
pub enum CpuQMatrix {
    /// Row-major, as `quant::QuantWeight` stores it.
    Plain(QuantWeight),
    /// INT8 repacked for the VNNI and AMX kernels (only built when the backend runs them).
    Vnni(int8::vnni::PackedI8),
    /// INT4 repacked for the AVX-512 W4A16 kernel (where the CPU and the shape allow).
    Int4(int4::PackedI4),
    /// INT4 repacked for the AVX-512 BF16 W4A16 kernel (preferred where it runs).
    Int4Bf16(int4::bf16::PackedI4Bf16),
}

/// Per-thread scratch for quantized activations, grown to the largest (rows × k) seen.
#[derive(Default)]
struct ActScratch {
    q: Vec<i8>,      // (rows, k) int8 activations
    xf: Vec<f32>,    // (rows, k) FP8- or BF16-rounded activations
    xb: Vec<u16>,    // (rows, k) BF16 activations (W4A16), as bits
    scale: Vec<f32>, // (rows)
    zp: Vec<i32>,    // (rows)
}

thread_local! {
    static SCRATCH: RefCell<ActScratch> = RefCell::new(ActScratch::default());
    /// `sampling::draw`'s (vocab) keys
    static KEYS: RefCell<Vec<u32>> = const { RefCell::new(Vec::new()) };
}

/// Grow a scratch buffer to at least n elements (never shrinks, so steady calls allocate nothing).
pub(crate) fn grow<T: Clone + Default>(v: &mut Vec<T>, n: usize) {
    if v.len() < n {
        v.resize(n, T::default());
    }
}

impl CpuBackend {
    /// Which activation scale to use: None = per-token dynamic, Some = static per-tensor.
    fn act_params(&self, act: &ActSpec, phase: Phase, rows: usize) -> Option<(f32, i32)> {
        let fixed = match act.policy {
            ActQuant::None | ActQuant::Dynamic => None,
            ActQuant::Static { scale, zp } => Some((scale, zp)),
            ActQuant::PdMix { scale, zp } => match phase {
                Phase::Prefill => None,
                Phase::Decode => Some((scale, zp)),
            },
        };
        let c = if fixed.is_some() {
            &self.counters.static_rows
        } else {
            &self.counters.dynamic_rows
        };
        c.fetch_add(rows as u64, Ordering::Relaxed);
        fixed
    }

    /// Whether a dense BF16 linear over k runs on the AMX tiles in `phase`.
    fn bf16_tiles(&self, phase: Phase, k: usize) -> bool {
        self.isa.dense == DenseIsa::Amx && phase == Phase::Prefill && dense::amx::takes(k)
    }

    /// Quantize the input (m, in_features) as `w.act` says and run `gemm` on the scratch.
    fn with_int8_act(
        &self,
        w: &Linear<CpuBackend>,
        x: &[f32],
        m: usize,
        phase: Phase,
        gemm: impl FnOnce(&ActScratch),
    ) -> Result<()> {
        if w.act.dtype != QDType::Int8 {
            return Err(Error::InvalidArgument(format!(
                "{}: int8 weights need int8 activations",
                w.name
            )));
        }
        let fixed = self.act_params(&w.act, phase, m);
        SCRATCH.with(|sc| {
            let sc = &mut *sc.borrow_mut();
            quantize_act_i8(
                sc,
                x,
                m,
                w.in_features,
                w.act.symmetric,
                fixed,
                self.isa.vector,
            );
            gemm(sc);
        });
        Ok(())
    }

    fn quant_linear(
        &self,
        out: &mut [f32],
        x: &[f32],
        w: &Linear<CpuBackend>,
        qm: &CpuQMatrix,
        m: usize,
        phase: Phase,
    ) -> Result<()> {
        let (n, k) = (w.out_features, w.in_features);
        let isa = self.isa.dense.tiles();
        let bias = w.bias.as_deref();
        if w.act.policy == ActQuant::None {
            // W4A16's activations are BF16 on every path, so every CPU multiplies the same
            // products (the BF16 kernel takes them as bits, the others widened back to f32)
            SCRATCH.with(|sc| {
                let sc = &mut *sc.borrow_mut();
                match qm {
                    CpuQMatrix::Plain(qw @ QuantWeight::Int4 { .. }) => {
                        grow(&mut sc.xf, m * k);
                        int4::bf16::round_through_bf16(&x[..m * k], &mut sc.xf);
                        dense::matmul_decoded(isa, out, &sc.xf, m, n, k, &|j, r, buf| {
                            qw.decode_rows(k, j, r, buf)
                        })
                    }
                    CpuQMatrix::Plain(qw) => {
                        dense::matmul_decoded(isa, out, x, m, n, k, &|j, r, buf| {
                            qw.decode_rows(k, j, r, buf)
                        })
                    }
                    CpuQMatrix::Vnni(p) => {
                        dense::matmul_decoded(isa, out, x, m, n, k, &|j, r, buf| {
                            p.decode_rows(j, r, buf)
                        })
                    }
                    CpuQMatrix::Int4(p) => {
                        grow(&mut sc.xf, m * k);
                        int4::bf16::round_through_bf16(&x[..m * k], &mut sc.xf);
                        int4::gemm(out, &sc.xf, m, p)
                    }
                    CpuQMatrix::Int4Bf16(p) => {
                        grow(&mut sc.xb, m * k);
                        int4::bf16::round_to_bf16(&x[..m * k], &mut sc.xb);
                        if self.isa.int4 == Int4Isa::Amx && phase == Phase::Prefill {
                            int4::amx::gemm(out, &sc.xb, m, p)
                        } else {
                            int4::bf16::gemm(out, &sc.xb, m, p)
                        }
                    }
                }
            });
            add_bias(out, bias, m, n);
            return Ok(());
        }
        let qw = match qm {
            CpuQMatrix::Vnni(p) => {
                return self.with_int8_act(w, x, m, phase, |sc| {
                    if self.isa.int8 == Int8Isa::Amx {
                        int8::amx::gemm(out, &sc.q, &sc.scale, &sc.zp, p, bias, m)
                    } else {
                        int8::vnni::gemm(out, &sc.q, &sc.scale, &sc.zp, p, bias, m)
                    }
                })
            }
            CpuQMatrix::Int4(_) | CpuQMatrix::Int4Bf16(_) => return Err(int4_needs_weight_only(w)),
            CpuQMatrix::Plain(qw) => qw,
        };
        match qw {
            QuantWeight::Int8 { q, scale, colsum } => {
                self.with_int8_act(w, x, m, phase, |sc| {
                    int8::gemm_i8_f32(
                        self.isa.int8.gemm_isa(),
                        out,
                        &sc.q,
                        &sc.scale,
                        &sc.zp,
                        q,
                        scale,
                        colsum,
                        bias,
                        m,
                        n,
                        k,
                    )
                })?;
            }
            QuantWeight::Fp8 { codes, scale } => {
                if w.act.dtype != QDType::Fp8E4M3 {
                    return Err(Error::InvalidArgument(format!(
                        "{}: fp8 weights need fp8 activations",
                        w.name
                    )));
                }
                let fixed = self.act_params(&w.act, phase, m).map(|(s, _)| s);
                let lut = quant::fp8_table();
                SCRATCH.with(|sc| {
                    let sc = &mut *sc.borrow_mut();
                    grow(&mut sc.xf, m * k);
                    grow(&mut sc.scale, m);
                    quant::quantize_rows_fp8(x, m, k, fixed, &mut sc.xf, &mut sc.scale);
                    dense::matmul_decoded(isa, out, &sc.xf, m, n, k, &|j, r, buf| {
                        for (jj, row) in buf.chunks_exact_mut(k).take(r).enumerate() {
                            let src = &codes[(j + jj) * k..(j + jj + 1) * k];
                            row.iter_mut()
                                .zip(src)
                                .for_each(|(o, &c)| *o = lut[c as usize]);
                        }
                    });
                    for (i, row) in out[..m * n].chunks_exact_mut(n).enumerate() {
                        let sa = sc.scale[i];
                        for (j, o) in row.iter_mut().enumerate() {
                            *o = *o * sa * scale[j] + bias.map_or(0.0, |b| b[j]);
                        }
                    }
                });
            }
            QuantWeight::Int4 { .. } => return Err(int4_needs_weight_only(w)),
        }
        Ok(())
    }
}

fn int4_needs_weight_only(w: &Linear<CpuBackend>) -> Error {
    Error::InvalidArgument(format!(
        "{}: int4 weights run weight-only (W4A16); activation quantization is not supported",
        w.name
    ))
}

/// Quantize the (m, k) activations into the scratch's q / scale / zp, rows in parallel when
/// there are enough of them to pay for the tasks.
fn quantize_act_i8(
    sc: &mut ActScratch,
    x: &[f32],
    m: usize,
    k: usize,
    symmetric: bool,
    fixed: Option<(f32, i32)>,
    vector: bool,
) {
    grow(&mut sc.q, m * k);
    let quantize = if vector {
        act_quant::quantize_rows_i8
    } else {
        quant::quantize_rows_i8
    };
    grow(&mut sc.scale, m);
    grow(&mut sc.zp, m);
    const ROWS: usize = 16;
    let (q, scale, zp) = (&mut sc.q[..m * k], &mut sc.scale[..m], &mut sc.zp[..m]);
    if m < 2 * ROWS {
        quantize(x, m, k, symmetric, fixed, q, scale, zp);
        return;
    }
    q.par_chunks_mut(ROWS * k)
        .zip(scale.par_chunks_mut(ROWS))
        .zip(zp.par_chunks_mut(ROWS))
        .zip(x[..m * k].par_chunks(ROWS * k))
        .for_each(|(((q, s), z), x)| quantize(x, s.len(), k, symmetric, fixed, q, s, z));
}

fn add_bias(out: &mut [f32], bias: Option<&[f32]>, m: usize, n: usize) {
    if let Some(b) = bias {
        for row in out[..m * n].chunks_exact_mut(n) {
            row.iter_mut().zip(b.iter()).for_each(|(o, b)| *o += b);
        }
    }
}

/// `what` is formatted only on failure, so the hot path does not allocate.
fn check_len(what: impl std::fmt::Display, have: usize, need: usize) -> Result<()> {
    if have < need {
        return Err(Error::InvalidArgument(format!(
            "{what}: buffer of {have} elements, op needs {need}"
        )));
    }
    Ok(())
}

impl DeviceMemory for CpuBackend {
    type Buf = Vec<f32>;
    type Matrix = CpuMatrix;
    type QMatrix = CpuQMatrix;

    fn describe(&self) -> String {
        let dense = match self.isa.dense {
            DenseIsa::Amx => "avx512 + amx-bf16",
            DenseIsa::Avx512Panels => "avx512",
            DenseIsa::Avx2 => "avx2+fma+f16c",
            DenseIsa::Portable => "portable",
        };
        let isa = match self.isa.int8 {
            Int8Isa::Amx => format!("{dense}, int8 amx"),
            Int8Isa::Avx512Vnni => format!("{dense}, int8 avx512-vnni"),
            Int8Isa::Avx2 => format!("{dense}, int8 avx2"),
            Int8Isa::Portable => format!("{dense}, int8 portable"),
        };
        format!("cpu ({} threads, {isa})", rayon::current_num_threads())
    }

    fn run_on_workers<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        rayon::scope(|_| f())
    }

    fn alloc(&self, len: usize) -> Result<Vec<f32>> {
        // an allocation the machine cannot hold is an error the caller can report, not an
        // abort; the probe is given back and `vec!` takes zeroed pages lazily, as before
        let mut probe: Vec<f32> = Vec::new();
        probe.try_reserve_exact(len).map_err(|_| {
            Error::InvalidArgument(format!(
                "cannot allocate a buffer of {len} floats ({:.1} GiB)",
                len as f64 * 4.0 / (1u64 << 30) as f64
            ))
        })?;
        drop(probe);
        Ok(vec![0f32; len])
    }

    fn upload(&self, data: &[f32]) -> Result<Vec<f32>> {
        Ok(data.to_vec())
    }

    fn read(&self, buf: &Vec<f32>, offset: usize, out: &mut [f32]) -> Result<()> {
        check_len("read", buf.len(), offset + out.len())?;
        out.copy_from_slice(&buf[offset..offset + out.len()]);
        Ok(())
    }

    fn upload_matrix(&self, t: &HostTensor, dtype: DType) -> Result<CpuMatrix> {
        let [rows, cols] = t.shape[..] else {
            return Err(Error::InvalidArgument(format!(
                "matrix must be 2-D, got shape {:?}",
                t.shape
            )));
        };
        let packed = self.isa.dense.panels();
        // a tensor already in the weight dtype is packed straight from its storage: loading
        // holds one extra copy of one tensor at most
        let converted;
        let src = if t.dtype() == dtype {
            t
        } else {
            converted = t.to_dtype(dtype);
            &converted
        };
        let data = match &src.data {
            HostData::F32(v) if packed => {
                MatrixData::PanelF32(dense::panels::Panels::pack(v, rows, cols))
            }
            HostData::F16(v) if packed => {
                MatrixData::PanelF16(dense::panels::Panels::pack(v, rows, cols))
            }
            HostData::BF16(v) if packed => {
                MatrixData::PanelBF16(dense::panels::Panels::pack(v, rows, cols))
            }
            HostData::F32(v) => MatrixData::F32(v.clone()),
            HostData::F16(v) => MatrixData::F16(v.clone()),
            HostData::BF16(v) => MatrixData::BF16(v.clone()),
        };
        Ok(CpuMatrix { rows, cols, data })
    }

    fn upload_quant(&self, w: &QuantWeight, rows: usize, cols: usize) -> Result<CpuQMatrix> {
        let ok = match w {
            QuantWeight::Int8 { q, scale, colsum } => {
                q.len() == rows * cols && scale.len() == rows && colsum.len() == rows
            }
            QuantWeight::Fp8 { codes, scale } => codes.len() == rows * cols && scale.len() == rows,
            QuantWeight::Int4 {
                packed,
                scale,
                zero,
                group,
            } => {
                *group > 0
                    && group % 2 == 0
                    && packed.len() * 2 == rows * cols
                    && scale.len() == rows * cols.div_ceil(*group)
                    && (zero.is_empty() || zero.len() == scale.len())
            }
        };
        if !ok {
            return Err(Error::InvalidArgument(format!(
                "quantized weight does not match shape [{rows}, {cols}]"
            )));
        }
        Ok(match w {
            QuantWeight::Int8 { q, scale, colsum }
                if matches!(self.isa.int8, Int8Isa::Avx512Vnni | Int8Isa::Amx)
                    && cols <= int8::vnni::MAX_K =>
            {
                CpuQMatrix::Vnni(int8::vnni::PackedI8::pack(q, scale, colsum, rows, cols))
            }
            QuantWeight::Int4 { .. } => {
                // the chosen kernel where the shape allows it, else the next one down
                let bf16 = matches!(self.isa.int4, Int4Isa::Amx | Int4Isa::Avx512Bf16)
                    .then(|| int4::bf16::PackedI4Bf16::pack(w, rows, cols))
                    .flatten();
                let f32 = (self.isa.int4 != Int4Isa::Decoded)
                    .then(|| int4::PackedI4::pack(w, rows, cols))
                    .flatten();
                match (bf16, f32) {
                    (Some(p), _) => CpuQMatrix::Int4Bf16(p),
                    (None, Some(p)) => CpuQMatrix::Int4(p),
                    (None, None) => CpuQMatrix::Plain(w.clone()),
                }
            }
            _ => CpuQMatrix::Plain(w.clone()),
        })
    }
}

impl Ops for CpuBackend {
    fn embed(&self, out: &mut Vec<f32>, table: &CpuMatrix, ids: &[u32]) -> Result<()> {
        let d = table.cols;
        check_len("embed", out.len(), ids.len() * d)?;
        for (row, &id) in out.chunks_exact_mut(d).zip(ids) {
            if id as usize >= table.rows {
                return Err(Error::TokenOutOfRange {
                    id,
                    vocab: table.rows,
                });
            }
            table.row_into(id as usize, row);
        }
        Ok(())
    }

    fn rms_norm(
        &self,
        out: &mut Vec<f32>,
        x: &Vec<f32>,
        weight: &Vec<f32>,
        rows: usize,
        dim: usize,
        eps: f32,
    ) -> Result<()> {
        check_len("rms_norm out", out.len(), rows * dim)?;
        check_len("rms_norm x", x.len(), rows * dim)?;
        check_len("rms_norm weight", weight.len(), dim)?;
        let (out, x) = (&mut out[..rows * dim], &x[..rows * dim]);
        if rows > 1 {
            out.par_chunks_mut(dim)
                .zip(x.par_chunks(dim))
                .for_each(|(o, xr)| norm::rms_norm_row(o, xr, weight, eps));
        } else {
            norm::rms_norm_row(out, x, weight, eps);
        }
        Ok(())
    }

    fn copy(
        &self,
        dst: &mut Vec<f32>,
        dst_off: usize,
        src: &Vec<f32>,
        src_off: usize,
        len: usize,
    ) -> Result<()> {
        check_len("copy dst", dst.len(), dst_off + len)?;
        check_len("copy src", src.len(), src_off + len)?;
        dst[dst_off..dst_off + len].copy_from_slice(&src[src_off..src_off + len]);
        Ok(())
    }

    fn add_assign(&self, x: &mut Vec<f32>, y: &Vec<f32>, len: usize) -> Result<()> {
        check_len("add x", x.len(), len)?;
        check_len("add y", y.len(), len)?;
        x[..len]
            .iter_mut()
            .zip(&y[..len])
            .for_each(|(a, b)| *a += b);
        Ok(())
    }

    fn phase_dependent(&self, w: &Linear<CpuBackend>) -> bool {
        let tiles = match &w.weight {
            LinearWeight::Dense(m) => {
                matches!(m.data, MatrixData::PanelBF16(_))
                    && self.bf16_tiles(Phase::Prefill, m.cols)
            }
            LinearWeight::Quant(CpuQMatrix::Int4Bf16(_)) => self.isa.int4 == Int4Isa::Amx,
            LinearWeight::Quant(_) => false,
        };
        tiles || matches!(w.act.policy, ActQuant::PdMix { .. })
    }

    fn linear(
        &self,
        out: &mut Vec<f32>,
        x: &Vec<f32>,
        w: &Linear<CpuBackend>,
        rows: usize,
        phase: Phase,
    ) -> Result<()> {
        let (n, k) = (w.out_features, w.in_features);
        check_len(format_args!("{} out", w.name), out.len(), rows * n)?;
        check_len(format_args!("{} x", w.name), x.len(), rows * k)?;
        match &w.weight {
            LinearWeight::Dense(m) => match &m.data {
                MatrixData::F32(v) => {
                    dense::matmul_with(self.isa.dense.tiles(), out, x, v, rows, n, k)
                }
                MatrixData::F16(v) => {
                    dense::matmul_with(self.isa.dense.tiles(), out, x, v, rows, n, k)
                }
                MatrixData::BF16(v) => {
                    dense::matmul_with(self.isa.dense.tiles(), out, x, v, rows, n, k)
                }
                MatrixData::PanelF32(p) => dense::panels::matmul(out, x, rows, p),
                MatrixData::PanelF16(p) => dense::panels::matmul(out, x, rows, p),
                MatrixData::PanelBF16(p) if self.bf16_tiles(phase, k) => {
                    dense::amx::matmul(out, x, rows, p)
                }
                MatrixData::PanelBF16(p) => dense::panels::matmul(out, x, rows, p),
            },
            LinearWeight::Quant(q) => return self.quant_linear(out, x, w, q, rows, phase),
        }
        add_bias(out, w.bias.as_deref(), rows, n);
        Ok(())
    }

    fn rope(
        &self,
        x: &mut Vec<f32>,
        cos: &Vec<f32>,
        sin: &Vec<f32>,
        seqs: &[KvSeq<'_>],
        n_heads: usize,
        head_dim: usize,
    ) -> Result<()> {
        let (half, width) = (head_dim / 2, n_heads * head_dim);
        for sq in seqs {
            check_len("rope x", x.len(), (sq.row0 + sq.rows) * width)?;
            check_len(
                "rope table",
                cos.len().min(sin.len()),
                (sq.start_pos + sq.rows) * half,
            )?;
            let rows = &mut x[sq.row0 * width..(sq.row0 + sq.rows) * width];
            for (r, row) in rows.chunks_exact_mut(width).enumerate() {
                let p = sq.start_pos + r;
                let (c, s) = (
                    &cos[p * half..(p + 1) * half],
                    &sin[p * half..(p + 1) * half],
                );
                for head in row.chunks_exact_mut(head_dim) {
                    let (lo, hi) = head.split_at_mut(half);
                    for i in 0..half {
                        let (x0, x1) = (lo[i], hi[i]);
                        lo[i] = x0 * c[i] - x1 * s[i];
                        hi[i] = x1 * c[i] + x0 * s[i];
                    }
                }
            }
        }
        Ok(())
    }

    fn write_kv(
        &self,
        cache: &mut Vec<f32>,
        src: &Vec<f32>,
        seqs: &[KvSeq<'_>],
        block_size: usize,
        kv_dim: usize,
    ) -> Result<()> {
        let n_blocks = cache.len() / (block_size * kv_dim).max(1);
        for sq in seqs {
            sq.check(block_size, n_blocks, usize::MAX, src.len() / kv_dim.max(1))?;
            for r in 0..sq.rows {
                let p = sq.start_pos + r;
                let slot = sq.slot(p, block_size);
                cache[slot * kv_dim..(slot + 1) * kv_dim]
                    .copy_from_slice(&src[(sq.row0 + r) * kv_dim..(sq.row0 + r + 1) * kv_dim]);
            }
        }
        Ok(())
    }

    fn attention(&self, a: AttentionArgs<'_, CpuBackend>) -> Result<()> {
        attention::paged_attention(a, self.isa.dense.tiles(), self.isa.vector)
    }

    fn silu_mul(&self, gate: &mut Vec<f32>, up: &Vec<f32>, len: usize) -> Result<()> {
        check_len("silu gate", gate.len(), len)?;
        check_len("silu up", up.len(), len)?;
        vmath::silu_mul_on(&mut gate[..len], &up[..len], self.isa.vector);
        Ok(())
    }
    fn gelu_mul(&self, gate: &mut Vec<f32>, up: &Vec<f32>, len: usize) -> Result<()> {
        check_len("gelu gate", gate.len(), len)?;
        check_len("gelu up", up.len(), len)?;
        vmath::gelu_mul(&mut gate[..len], &up[..len]);
        Ok(())
    }
    fn scale(&self, x: &mut Vec<f32>, len: usize, s: f32) -> Result<()> {
        check_len("scale input", x.len(), len)?;
        x[..len].iter_mut().for_each(|v| *v *= s);
        Ok(())
    }
    fn softcap(&self, x: &mut Vec<f32>, len: usize, cap: f32) -> Result<()> {
        check_len("softcap input", x.len(), len)?;
        x[..len]
            .iter_mut()
            .for_each(|v| *v = vmath::softcap(*v, cap));
        Ok(())
    }
    fn hadamard(&self, x: &mut Vec<f32>, len: usize, block: usize) -> Result<()> {
        check_len("hadamard input", x.len(), len)?;
        if !block.is_power_of_two() || !len.is_multiple_of(block) {
            return Err(Error::InvalidArgument(format!(
                "hadamard block {block} must be a power of two dividing the input length {len}"
            )));
        }
        // whole blocks per task; the transform is per block, so the split changes nothing
        let x = &mut x[..len];
        if len >= 64 * block {
            x.par_chunks_mut(16 * block)
                .for_each(|c| crate::quant::hadamard::fwht(c, block));
        } else {
            crate::quant::hadamard::fwht(x, block);
        }
        Ok(())
    }
}

impl Fused for CpuBackend {}

impl Sampling for CpuBackend {
    fn sample_rows(
        &self,
        logits: &mut Vec<f32>,
        vocab: usize,
        draws: &[Draw<'_>],
        out: &mut [u32],
    ) -> Result<()> {
        check_len("sample logits", logits.len(), draws.len() * vocab.max(1))?;
        check_len("sampled ids", out.len(), draws.len())?;
        KEYS.with(|k| {
            let keys = &mut k.borrow_mut();
            for ((z, d), id) in logits.chunks_exact_mut(vocab.max(1)).zip(draws).zip(out) {
                *id = sampling::pick(z, d, keys);
            }
        });
        Ok(())
    }

    fn argmax_rows(&self, logits: &Vec<f32>, vocab: usize, out: &mut [u32]) -> Result<()> {
        check_len("argmax logits", logits.len(), out.len() * vocab)?;
        for (row, id) in logits.chunks_exact(vocab.max(1)).zip(out.iter_mut()) {
            *id = sampling::argmax(row);
        }
        Ok(())
    }
}
