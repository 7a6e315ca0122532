//! Quantized linears on CUDA, with the same semantics as the CPU backend's (`backend/cpu`):
//! W8A8 int8 (activations quantized on the device per token, per tensor or pd_mix by phase,
//! then the `mma.sync` s8 GEMM or the dp4a GEMV with the scale / zero-point / bias epilogue),
//! FP8 E4M3 W8A8 (e4m3 activations per token or static, `mma.sync` e4m3 GEMM; sm_89+), and
//! W4A16 int4 groups against BF16-rounded activations (GEMV for decode, dequantize-in-tile GEMM
//! otherwise). Kernels in `kernels/gemm_int8.cu`, `quant.cu`, `gemm_fp8.cu`, `gemm_int4.cu`.

use super::backend::{check, drv, grid1, i32_of, CudaBackend};
use super::kernels::Kernel;
use crate::error::{Error, Result};
use crate::model::linear::Linear;
use crate::quant::{ActQuant, Phase, QDType, QuantWeight};
use cudarc::driver::{
    CudaSlice, DeviceRepr, LaunchArgs, LaunchConfig, PushKernelArg, ValidAsZeroBits,
};

/// A quantized `[rows, cols]` weight on the device; each kind's linear takes its own struct.
pub enum CudaQMatrix {
    Int8(Int8Weight),
    Fp8(Fp8Weight),
    Int4(Int4Weight),
}

pub struct Int8Weight {
    q: CudaSlice<i8>,       // (rows, cols)
    scale: CudaSlice<f32>,  // (rows) per output channel
    colsum: CudaSlice<i32>, // (rows) Σ_k q[j, k], for asymmetric activations' zero point
}

pub struct Fp8Weight {
    codes: CudaSlice<u8>,  // (rows, cols) e4m3
    scale: CudaSlice<f32>, // (rows) per output channel
}

pub struct Int4Weight {
    packed: CudaSlice<u8>, // (rows, cols / 2) two offset-binary nibbles per byte
    scale: CudaSlice<f32>, // (rows, groups)
    /// (rows, groups) zero points; None for symmetric weights
    zero: Option<CudaSlice<i8>>,
    group: usize,
}

/// Rows at most for the weight-streaming GEMVs (int8: `gemv_w8a8`, fp8: `gemv_fp8`, int4:
/// `gemv_w4a16`).
const GEMV_MAX_M_I8: usize = 16;
const GEMV_MAX_M_FP8: usize = 8;
const GEMV_MAX_M_I4: usize = 8;

/// The launch of a GEMM-shaped kernel (its geometry lives in `Kernel::gemm_launch`).
pub(super) fn launch(kern: Kernel, m: usize, n: usize) -> Result<LaunchConfig> {
    kern.gemm_launch(m, n)
        .ok_or_else(|| Error::Cuda(format!("{kern:?} has no GEMM launch geometry")))
}

/// Push an optional device pointer argument: the buffer, or null (`null` holds 0).
pub(super) fn arg_or_null<'a, T>(b: &mut LaunchArgs<'a>, v: Option<&'a CudaSlice<T>>, null: &'a u64)
where
    LaunchArgs<'a>: PushKernelArg<&'a CudaSlice<T>> + PushKernelArg<&'a u64>,
{
    match v {
        Some(s) => <LaunchArgs<'a> as PushKernelArg<&'a CudaSlice<T>>>::arg(b, s),
        None => <LaunchArgs<'a> as PushKernelArg<&'a u64>>::arg(b, null),
    };
}

/// The static (scale, zero point) a linear's activations use in `phase`, None for per-token
/// dynamic scales (pd_mix: dynamic in prefill, static in decode), as the CPU's `act_params`.
fn fixed_params(w: &Linear<CudaBackend>, phase: Phase) -> Option<(f32, i32)> {
    match w.act.policy {
        ActQuant::None | ActQuant::Dynamic => None,
        ActQuant::Static { scale, zp } => Some((scale, zp)),
        ActQuant::PdMix { scale, zp } => match phase {
            Phase::Prefill => None,
            Phase::Decode => Some((scale, zp)),
        },
    }
}

impl CudaBackend {
    /// A zeroed device buffer of `len` elements (activation-quantization scratch).
    fn zeros<T: DeviceRepr + ValidAsZeroBits>(&self, len: usize) -> Result<CudaSlice<T>> {
        self.gpu
            .stream
            .alloc_zeros::<T>(len)
            .map_err(|e| drv("alloc", e))
    }

    /// Upload a quantized weight in the layout its kernels read; a clear error where no CUDA
    /// kernel runs it.
    pub(super) fn upload_q(
        &self,
        w: &QuantWeight,
        rows: usize,
        cols: usize,
    ) -> Result<CudaQMatrix> {
        let unsupported = |why: &str| {
            Err(Error::Cuda(format!(
                "{:?} weights of {rows}x{cols}: {why}; use --device cpu",
                w.dtype()
            )))
        };
        match w {
            QuantWeight::Int8 { .. } if !cols.is_multiple_of(16) => {
                unsupported("the int8 GEMM needs in_features a multiple of 16")
            }
            QuantWeight::Int8 { q, scale, colsum } => Ok(CudaQMatrix::Int8(Int8Weight {
                q: self.up(q)?,
                scale: self.up(scale)?,
                colsum: self.up(colsum)?,
            })),
            // Ampere has no FP8 tensor cores. A weight-only dequantizing path would quietly
            // change the checkpoint's W8A8 numerics and run slower than BF16, so FP8 on sm_80
            // is an error; the CPU backend runs the checkpoint exactly.
            QuantWeight::Fp8 { .. } if self.gpu.info.capability < (8, 9) => unsupported(&format!(
                "FP8 tensor cores need compute capability 8.9+ (Ada, Hopper), this GPU is {}.{}",
                self.gpu.info.capability.0, self.gpu.info.capability.1
            )),
            QuantWeight::Fp8 { .. } if !cols.is_multiple_of(16) => {
                unsupported("the FP8 GEMM needs in_features a multiple of 16")
            }
            QuantWeight::Fp8 { codes, scale } => Ok(CudaQMatrix::Fp8(Fp8Weight {
                codes: self.up(codes)?,
                scale: self.up(scale)?,
            })),
            QuantWeight::Int4 { group, .. } if *group == 0 || !group.is_multiple_of(2) => {
                unsupported("int4 groups must be even")
            }
            QuantWeight::Int4 {
                packed,
                scale,
                zero,
                group,
            } if packed.len() < rows * cols / 2
                || scale.len() < rows * cols.div_ceil(*group)
                || !(zero.is_empty() || zero.len() >= rows * cols.div_ceil(*group)) =>
            {
                unsupported("packed data, scales or zero points shorter than the shape needs")
            }
            QuantWeight::Int4 {
                packed,
                scale,
                zero,
                group,
            } => Ok(CudaQMatrix::Int4(Int4Weight {
                packed: self.up(packed)?,
                scale: self.up(scale)?,
                zero: if zero.is_empty() {
                    None
                } else {
                    Some(self.up(zero)?)
                },
                group: *group,
            })),
        }
    }

    /// A quantized linear: out (rows, n) = x (rows, k) · Wᵀ (+ bias).
    pub(super) fn linear_quant(
        &self,
        out: &mut CudaSlice<f32>,
        x: &CudaSlice<f32>,
        w: &Linear<Self>,
        qm: &CudaQMatrix,
        rows: usize,
        phase: Phase,
    ) -> Result<()> {
        let (n, k) = (w.out_features, w.in_features);
        check(&w.name, x.len(), rows * k)?;
        check(&w.name, out.len(), rows * n)?;
        let act = (w.act.dtype, w.act.policy == ActQuant::None);
        match (qm, act) {
            (CudaQMatrix::Int8(wq), (QDType::Int8, false)) => {
                self.linear_w8a8(out, x, w, wq, rows, phase)
            }
            (CudaQMatrix::Fp8(wq), (QDType::Fp8E4M3, false)) => {
                self.linear_fp8(out, x, w, wq, rows, phase)
            }
            (CudaQMatrix::Int4(wq), (_, true)) => self.linear_w4a16(out, x, w, wq, rows),
            _ => Err(Error::Cuda(format!(
                "{}: {:?} activations ({:?}) with these weights have no CUDA kernel",
                w.name, w.act.dtype, w.act.policy
            ))),
        }
    }

    /// W8A8: quantize the input per the linear's activation policy, then the int8 GEMM (GEMV
    /// for ≤ 16 rows) with the scale / zero-point / bias epilogue.
    fn linear_w8a8(
        &self,
        out: &mut CudaSlice<f32>,
        x: &CudaSlice<f32>,
        w: &Linear<Self>,
        wq: &Int8Weight,
        rows: usize,
        phase: Phase,
    ) -> Result<()> {
        let Int8Weight { q, scale, colsum } = wq;
        let (n, k) = (w.out_features, w.in_features);
        let stream = &self.gpu.stream;
        let (mut qa, mut a_scale, mut a_zp) = (
            self.zeros::<i8>(rows * k)?,
            self.zeros::<f32>(rows)?,
            self.zeros::<i32>(rows)?,
        );
        let (k_i, sym) = (i32_of(k, "k")?, i32::from(w.act.symmetric));
        let (st_scale, st_zp) = fixed_params(w, phase).unwrap_or((0.0, 0));
        let mut b = stream.launch_builder(self.f(Kernel::QuantRowsI8));
        b.arg(&mut qa)
            .arg(&mut a_scale)
            .arg(&mut a_zp)
            .arg(x)
            .arg(&k_i)
            .arg(&sym)
            .arg(&st_scale)
            .arg(&st_zp);
        // SAFETY: matches quant_rows_i8; qa holds rows × k, the scales rows.
        unsafe { b.launch(grid1(rows, 256)) }.map_err(|e| drv("quantize activations", e))?;
        let (m_i, n_i) = (i32_of(rows, "rows")?, i32_of(n, "n")?);
        let kern = if rows <= GEMV_MAX_M_I8 {
            Kernel::GemvW8a8
        } else {
            Kernel::GemmW8a8
        };
        let cfg = launch(kern, rows, n)?;
        // a null device pointer for the kernels' optional pointer parameters
        let null: u64 = 0;
        let mut b = stream.launch_builder(self.f(kern));
        b.arg(&mut *out)
            .arg(&null)
            .arg(&qa)
            .arg(q)
            .arg(&a_scale)
            .arg(&a_zp)
            .arg(scale)
            .arg(colsum);
        arg_or_null(&mut b, w.bias.as_ref(), &null);
        b.arg(&m_i).arg(&n_i).arg(&k_i);
        // SAFETY: the argument list of gemm_w8a8 / gemv_w8a8 (null acc_out; bias or null);
        // k is a multiple of 16 (checked at upload); buffers sized rows × k, n × k, rows × n.
        unsafe { b.launch(cfg) }.map_err(|e| drv(&w.name, e))?;
        Ok(())
    }

    /// FP8 W8A8: e4m3 activations (per-token scales, or the static one), then the e4m3
    /// tensor-core GEMM (the GEMV for ≤ 8 rows) with the per-token × per-channel scale and bias
    /// epilogue.
    fn linear_fp8(
        &self,
        out: &mut CudaSlice<f32>,
        x: &CudaSlice<f32>,
        w: &Linear<Self>,
        wq: &Fp8Weight,
        rows: usize,
        phase: Phase,
    ) -> Result<()> {
        let Fp8Weight { codes, scale } = wq;
        let (n, k) = (w.out_features, w.in_features);
        let stream = &self.gpu.stream;
        let (mut qa, mut a_scale) = (self.zeros::<u8>(rows * k)?, self.zeros::<f32>(rows)?);
        let k_i = i32_of(k, "k")?;
        // quant_rows_fp8 uses the static scale when it is > 0
        let st_scale = fixed_params(w, phase).map_or(0.0, |(s, _)| s);
        let mut b = stream.launch_builder(self.f(Kernel::QuantRowsFp8));
        b.arg(&mut qa)
            .arg(&mut a_scale)
            .arg(x)
            .arg(&k_i)
            .arg(&st_scale);
        // SAFETY: matches quant_rows_fp8 (one block per row); qa holds rows × k, the scales
        // rows; k is even (a multiple of 16, checked at upload).
        unsafe { b.launch(grid1(rows, 256)) }.map_err(|e| drv("quantize activations", e))?;
        let (m_i, n_i) = (i32_of(rows, "rows")?, i32_of(n, "n")?);
        let null: u64 = 0;
        let kern = if rows <= GEMV_MAX_M_FP8 {
            Kernel::GemvFp8
        } else {
            Kernel::GemmFp8
        };
        let cfg = launch(kern, rows, n)?;
        let mut b = stream.launch_builder(self.f(kern));
        b.arg(&mut *out)
            .arg(&qa)
            .arg(codes)
            .arg(&a_scale)
            .arg(scale);
        arg_or_null(&mut b, w.bias.as_ref(), &null);
        b.arg(&m_i).arg(&n_i).arg(&k_i);
        // SAFETY: the argument list of gemm_fp8 / gemv_fp8 (bias or null); k a multiple of 16
        // and the device sm_89+ (checked at upload); buffers sized rows × k, n × k, rows × n.
        unsafe { b.launch(cfg) }.map_err(|e| drv(&w.name, e))?;
        Ok(())
    }

    /// W4A16: the int4 GEMV for up to 8 rows where k and the group are whole 32-value steps,
    /// the dequantize-in-tile GEMM otherwise.
    fn linear_w4a16(
        &self,
        out: &mut CudaSlice<f32>,
        x: &CudaSlice<f32>,
        w: &Linear<Self>,
        wq: &Int4Weight,
        rows: usize,
    ) -> Result<()> {
        let Int4Weight {
            packed,
            scale,
            zero,
            group,
        } = wq;
        let (n, k) = (w.out_features, w.in_features);
        let (m_i, n_i, k_i, g_i) = (
            i32_of(rows, "rows")?,
            i32_of(n, "n")?,
            i32_of(k, "k")?,
            i32_of(*group, "group")?,
        );
        let gemv = rows <= GEMV_MAX_M_I4 && k.is_multiple_of(32) && group.is_multiple_of(32);
        let kern = if gemv {
            Kernel::GemvW4a16
        } else {
            Kernel::GemmW4a16
        };
        let cfg = launch(kern, rows, n)?;
        let null: u64 = 0;
        let mut b = self.gpu.stream.launch_builder(self.f(kern));
        b.arg(&mut *out).arg(x).arg(packed).arg(scale);
        arg_or_null(&mut b, zero.as_ref(), &null);
        arg_or_null(&mut b, w.bias.as_ref(), &null);
        b.arg(&m_i).arg(&n_i).arg(&k_i).arg(&g_i);
        // SAFETY: the argument list of gemv_w4a16 / gemm_w4a16 (zero and bias or null);
        // packed holds n × k / 2 bytes, scale and zero n × ceil(k / group); the GEMV runs
        // only with k and group multiples of 32 (its 16-byte loads stay in a row and a group).
        unsafe { b.launch(cfg) }.map_err(|e| drv(&w.name, e))?;
        Ok(())
    }
}
