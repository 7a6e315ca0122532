//! Quantized linears on CUDA, with the CPU backend's semantics.
//!
//! - W8A8 int8: activations quantized on the device per token, per tensor or pd_mix by phase,
//!   then the s8 tensor-core GEMM (wgmma on Hopper) or the dp4a GEMV, the CPU's epilogue.
//! - FP8 E4M3 (sm_89+): e4m3 activations per token or static, the e4m3 GEMM or decode GEMV.
//! - W4A16: int4 groups against BF16-rounded activations (GEMV for decode, tensor-core GEMM).
//! - `Fused::project` lands here: linears that quantize a shared input the same way (`ActKey`)
//!   quantize it once, fused with the norm or SiLU·up that makes it and the online rotation.

use super::backend::CudaBackend;
use super::kernels::Kernel;
use super::launch::{arg_or_null, check_len, gemm_grid, grid, grid_1d, i32_of};
use super::scratch::Scratch;
use super::tiles::GemmKind;
use crate::backend::linear::{Linear, LinearWeight};
use crate::backend::{check_inputs, Fused, LinearInput, Ops};
use crate::error::{Error, Result};
use crate::quant::{ActQuant, Phase, QDType, QuantWeight};
use cudarc::driver::{CudaSlice, PushKernelArg};

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

/// How a linear's input is quantized in one phase: linears that agree share one quantized
/// input (q, k and v read the same norm output).
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) enum ActKey {
    Int8 {
        symmetric: bool,
        fixed: Option<(f32, i32)>,
    },
    Fp8 {
        fixed: Option<f32>,
    },
}

impl ActKey {
    /// The key of an activation-quantized linear (W8A8 int8 or FP8); None for dense and
    /// weight-only linears, which read the float input, and for weight / activation pairs
    /// without a kernel (their linear reports it).
    fn of(w: &Linear<CudaBackend>, phase: Phase) -> Option<ActKey> {
        let LinearWeight::Quant(qm) = &w.weight else {
            return None;
        };
        if w.act.policy == ActQuant::None {
            return None;
        }
        let fixed = fixed_params(w, phase);
        match (qm, w.act.dtype) {
            (CudaQMatrix::Int8(_), QDType::Int8) => Some(ActKey::Int8 {
                symmetric: w.act.symmetric,
                fixed,
            }),
            (CudaQMatrix::Fp8(_), QDType::Fp8E4M3) => Some(ActKey::Fp8 {
                fixed: fixed.map(|(s, _)| s),
            }),
            _ => None,
        }
    }

    /// The key all of `ws` have, when there is at least one and they agree.
    fn shared<'a>(
        mut ws: impl Iterator<Item = &'a Linear<CudaBackend>>,
        phase: Phase,
    ) -> Option<ActKey> {
        let first = ActKey::of(ws.next()?, phase)?;
        ws.all(|w| ActKey::of(w, phase) == Some(first))
            .then_some(first)
    }
}

/// What a quantization kernel reads: rows as they are, or the producer it fuses.
enum QuantSrc<'a> {
    /// x (rows, k)
    Rows(&'a CudaSlice<f32>),
    /// res (rows, k) [+= add, written back], then rms_norm(res) · weight (k)
    Norm {
        res: &'a mut CudaSlice<f32>,
        add: Option<&'a CudaSlice<f32>>,
        weight: &'a CudaSlice<f32>,
        eps: f32,
    },
    /// gate (rows, k) = silu(gate) · up, written back
    SiluMul {
        gate: &'a mut CudaSlice<f32>,
        up: &'a CudaSlice<f32>,
    },
}

impl CudaBackend {
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
                q: self.upload_slice(q)?,
                scale: self.upload_slice(scale)?,
                colsum: self.upload_slice(colsum)?,
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
                codes: self.upload_slice(codes)?,
                scale: self.upload_slice(scale)?,
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
                packed: self.upload_slice(packed)?,
                scale: self.upload_slice(scale)?,
                zero: if zero.is_empty() {
                    None
                } else {
                    Some(self.upload_slice(zero)?)
                },
                group: *group,
            })),
        }
    }

    /// The linears `outs` on the float input x (rows, k), in order; each distinct activation
    /// quantization (`ActKey`) runs once while consecutive linears share it.
    pub(super) fn linears_on(
        &self,
        x: &CudaSlice<f32>,
        outs: &mut [(&mut CudaSlice<f32>, &Linear<Self>)],
        rows: usize,
        phase: Phase,
    ) -> Result<()> {
        let mut sc = self.scratch()?;
        let mut held: Option<ActKey> = None;
        for (out, w) in outs.iter_mut() {
            check_len(&w.name, x.len(), rows * w.in_features)?;
            match ActKey::of(w, phase) {
                Some(key) => {
                    if held != Some(key) {
                        let src = QuantSrc::Rows(x);
                        self.quantize(&mut sc, key, src, None, rows, w.in_features)?;
                        held = Some(key);
                    }
                    self.gemm_quant(out, &sc, w, key, rows)?;
                }
                None => self.linear_float(&mut sc, out, x, w, rows)?,
            }
        }
        Ok(())
    }

    /// `Backend::project`: when every linear of the group quantizes its input the same way,
    /// one kernel makes the input (norm after the residual add, SiLU·up, or as it is), rotates
    /// it if asked and quantizes it: the float row is never stored. Otherwise the producer
    /// alone (the residual add fused into the norm), the rotation, then the linears sharing
    /// their quantizations.
    pub(super) fn project_on(
        &self,
        input: LinearInput<'_, Self>,
        rotate: Option<usize>,
        outs: &mut [(&mut CudaSlice<f32>, &Linear<Self>)],
        rows: usize,
        cols: usize,
        phase: Phase,
    ) -> Result<()> {
        check_inputs(outs.iter().map(|(_, w)| *w), cols)?;
        let key = ActKey::shared(outs.iter().map(|(_, w)| *w), phase);
        let fuse = match (key, &input, rotate) {
            (None, ..) | (_, LinearInput::Ready(_), None) => None,
            (Some(key), _, None) => Some(key),
            (Some(key), _, Some(b)) => self.rotation_fits(b, cols).then_some(key),
        };
        let Some(key) = fuse else {
            let x = self.make_input(input, rows, cols)?;
            if let Some(block) = rotate {
                self.hadamard(x, rows * cols, block)?;
            }
            return self.linears_on(x, outs, rows, phase);
        };
        let src = match input {
            LinearInput::Ready(x) => QuantSrc::Rows(x),
            // GeGLU has no fused quantizer: made in float, then quantized as it is
            LinearInput::GeluMul { gate, up } => {
                self.gelu_mul(gate, up, rows * cols)?;
                QuantSrc::Rows(gate)
            }
            LinearInput::Norm {
                res,
                add,
                weight,
                eps,
                ..
            } => QuantSrc::Norm {
                res,
                add,
                weight,
                eps,
            },
            LinearInput::SiluMul { gate, up } => QuantSrc::SiluMul { gate, up },
        };
        let mut sc = self.scratch()?;
        self.quantize(&mut sc, key, src, rotate, rows, cols)?;
        for (out, w) in outs.iter_mut() {
            self.gemm_quant(out, &sc, w, key, rows)?;
        }
        Ok(())
    }

    /// Whether rotate_quant_* can rotate rows of `cols` in blocks of `block`: a power of two
    /// up to 4096 (the Hadamard kernels' limit) dividing cols, the row in shared memory.
    fn rotation_fits(&self, block: usize, cols: usize) -> bool {
        block.is_power_of_two()
            && (2..=4096).contains(&block)
            && cols.is_multiple_of(block)
            && cols * 4 <= self.row_smem
    }

    /// A linear on float activations: dense BF16, or W4A16; the error for a quantized weight
    /// whose activation spec has no CUDA kernel.
    fn linear_float(
        &self,
        sc: &mut Scratch,
        out: &mut CudaSlice<f32>,
        x: &CudaSlice<f32>,
        w: &Linear<Self>,
        rows: usize,
    ) -> Result<()> {
        check_len(&w.name, out.len(), rows * w.out_features)?;
        match &w.weight {
            LinearWeight::Dense(m) => self.linear_dense(sc, out, x, m, w.bias.as_ref(), rows),
            LinearWeight::Quant(CudaQMatrix::Int4(wq)) if w.act.policy == ActQuant::None => {
                self.linear_w4a16(sc, out, x, w, wq, rows)
            }
            LinearWeight::Quant(_) => Err(Error::Cuda(format!(
                "{}: {:?} activations ({:?}) with these weights have no CUDA kernel",
                w.name, w.act.dtype, w.act.policy
            ))),
        }
    }

    /// Quantize `src` (rows, k), rotated by blockdiag(H_b) when `rotate` is Some(b), as `key`
    /// says into the scratch's act_q / act_scale / act_zp: one block per row of quant_rows_*,
    /// rms_norm_quant_*, silu_mul_quant_* or rotate_quant_*.
    fn quantize(
        &self,
        sc: &mut Scratch,
        key: ActKey,
        src: QuantSrc<'_>,
        rotate: Option<usize>,
        rows: usize,
        k: usize,
    ) -> Result<()> {
        let n = rows * k;
        match &src {
            QuantSrc::Rows(x) => check_len("quantized input", x.len(), n)?,
            QuantSrc::Norm {
                res, add, weight, ..
            } => {
                check_len("norm input", res.len().min(add.map_or(n, |a| a.len())), n)?;
                check_len("norm weight", weight.len(), k)?;
            }
            QuantSrc::SiluMul { gate, up } => check_len("silu·up", gate.len().min(up.len()), n)?,
        }
        let stream = &self.gpu.stream;
        let Scratch {
            act_q,
            act_scale,
            act_zp,
            ..
        } = sc;
        let (q, scale, zp) = (
            self.grow(act_q, n)?,
            self.grow(act_scale, rows)?,
            self.grow(act_zp, rows)?,
        );
        let k_i = i32_of(k, "k")?;
        let null: u64 = 0;
        let (int8, sym, st_scale, st_zp) = match key {
            ActKey::Int8 { symmetric, fixed } => {
                let (s, z) = fixed.unwrap_or((0.0, 0));
                (true, i32::from(symmetric), s, z)
            }
            ActKey::Fp8 { fixed } => (false, 0, fixed.unwrap_or(0.0), 0),
        };
        // the rotating kernels take every source's pointers and a mode (quant.cu::source_row)
        let (mode, eps) = match &src {
            QuantSrc::Rows(_) => (0i32, 0f32),
            QuantSrc::Norm { eps, .. } => (1, *eps),
            QuantSrc::SiluMul { .. } => (2, 0.0),
        };
        let block_i = i32_of(rotate.unwrap_or(0), "hadamard block")?;
        let kern = match (&src, int8, rotate.is_some()) {
            (_, true, true) => Kernel::RotateQuantI8,
            (_, false, true) => Kernel::RotateQuantFp8,
            (QuantSrc::Rows(_), true, false) => Kernel::QuantRowsI8,
            (QuantSrc::Norm { .. }, true, false) => Kernel::RmsNormQuantI8,
            (QuantSrc::SiluMul { .. }, true, false) => Kernel::SiluMulQuantI8,
            (QuantSrc::Rows(_), false, false) => Kernel::QuantRowsFp8,
            (QuantSrc::Norm { .. }, false, false) => Kernel::RmsNormQuantFp8,
            (QuantSrc::SiluMul { .. }, false, false) => Kernel::SiluMulQuantFp8,
        };
        let mut b = stream.launch_builder(self.function(kern));
        b.arg(q).arg(scale);
        if int8 {
            b.arg(zp);
        }
        match (src, rotate.is_some()) {
            (QuantSrc::Rows(x), true) => {
                b.arg(x).arg(&null).arg(&null);
            }
            (QuantSrc::Rows(x), false) => {
                b.arg(x);
            }
            (
                QuantSrc::Norm {
                    res, add, weight, ..
                },
                _,
            ) => {
                b.arg(res);
                arg_or_null(&mut b, add, &null);
                b.arg(weight);
            }
            (QuantSrc::SiluMul { gate, up }, r) => {
                b.arg(gate).arg(up);
                if r {
                    b.arg(&null);
                }
            }
        }
        if rotate.is_some() {
            b.arg(&mode).arg(&k_i).arg(&block_i).arg(&eps);
        } else {
            b.arg(&k_i);
            if mode == 1 {
                b.arg(&eps);
            }
        }
        if int8 {
            b.arg(&sym);
        }
        b.arg(&st_scale);
        if int8 {
            b.arg(&st_zp);
        }
        let cfg = match rotate {
            // the whole row in shared memory (fits: checked by `rotation_fits`)
            Some(_) => grid(rows, 1, 512, k * 4),
            None => grid_1d(rows, 256),
        };
        // SAFETY: the argument list of `kern` (quant.cu: q, scale, [zp,] the source's pointers
        // — x, y, w with nulls for the rotating kernels — [mode,] dim, [block,] [eps,]
        // [symmetric,] static scale [, static zp]); one block per row; q holds rows × k, the
        // scales rows, the sources rows × k and the norm weight k (checked above); for e4m3, k
        // is even (a multiple of 16, checked at upload, and the linears' in_features equal k);
        // a rotation's block is a power of two <= 4096 dividing k and its k × 4 bytes of shared
        // memory are within the opt-in limit (`rotation_fits`).
        unsafe { self.launch(&mut b, cfg, "quantize activations") }?;
        Ok(())
    }

    /// The W8A8 int8 or FP8 GEMM (a GEMV for decode-sized rows) of `w` on the activations the
    /// scratch holds for `key`, with the scale / zero-point / bias epilogue.
    fn gemm_quant(
        &self,
        out: &mut CudaSlice<f32>,
        sc: &Scratch,
        w: &Linear<Self>,
        key: ActKey,
        rows: usize,
    ) -> Result<()> {
        let (n, k) = (w.out_features, w.in_features);
        check_len(&w.name, out.len(), rows * n)?;
        let (qa, a_scale, a_zp) = (sc.act_q.cur()?, sc.act_scale.cur()?, sc.act_zp.cur()?);
        check_len(&w.name, qa.len(), rows * k)?;
        let (m_i, n_i, k_i) = (i32_of(rows, "rows")?, i32_of(n, "n")?, i32_of(k, "k")?);
        // a null device pointer for the kernels' optional pointer parameters
        let null: u64 = 0;
        let stream = &self.gpu.stream;
        match (&w.weight, key) {
            (LinearWeight::Quant(CudaQMatrix::Int8(wq)), ActKey::Int8 { .. }) => {
                let kern = GemmKind::W8a8.pick(rows, k, self.tensor_cores).kernel;
                let cfg = gemm_grid(kern, rows, n)?;
                let mut b = stream.launch_builder(self.function(kern));
                b.arg(&mut *out)
                    .arg(&null)
                    .arg(qa)
                    .arg(&wq.q)
                    .arg(a_scale)
                    .arg(a_zp)
                    .arg(&wq.scale)
                    .arg(&wq.colsum);
                arg_or_null(&mut b, w.bias.as_ref(), &null);
                b.arg(&m_i).arg(&n_i).arg(&k_i);
                // SAFETY: the argument list of gemm_w8a8 / gemv_w8a8 (null acc_out; bias or
                // null); k is a multiple of 16 (checked at upload); buffers sized rows × k,
                // n × k, rows × n (checked).
                unsafe { self.launch(&mut b, cfg, &w.name) }?;
            }
            (LinearWeight::Quant(CudaQMatrix::Fp8(wq)), ActKey::Fp8 { .. }) => {
                let kern = GemmKind::Fp8.pick(rows, k, self.tensor_cores).kernel;
                let cfg = gemm_grid(kern, rows, n)?;
                let mut b = stream.launch_builder(self.function(kern));
                b.arg(&mut *out)
                    .arg(qa)
                    .arg(&wq.codes)
                    .arg(a_scale)
                    .arg(&wq.scale);
                arg_or_null(&mut b, w.bias.as_ref(), &null);
                b.arg(&m_i).arg(&n_i).arg(&k_i);
                // SAFETY: the argument list of gemm_fp8 / gemv_fp8 (bias or null); k a
                // multiple of 16 and the device sm_89+ (checked at upload); buffers sized
                // rows × k, n × k, rows × n (checked).
                unsafe { self.launch(&mut b, cfg, &w.name) }?;
            }
            _ => {
                return Err(Error::Cuda(format!(
                    "{}: its weights do not take {key:?} activations",
                    w.name
                )))
            }
        }
        Ok(())
    }

    /// W4A16: the int4 GEMV for up to 8 rows and the tensor-core GEMM on bf16-rounded rows
    /// beyond, where k and the group are whole 32-value steps; the CUDA-core dequantize-in-tile
    /// GEMM otherwise.
    fn linear_w4a16(
        &self,
        sc: &mut Scratch,
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
        check_len(&w.name, x.len(), rows * k)?;
        let (m_i, n_i, k_i, g_i) = (
            i32_of(rows, "rows")?,
            i32_of(n, "n")?,
            i32_of(k, "k")?,
            i32_of(*group, "group")?,
        );
        let kern = GemmKind::W4a16 { group: *group }
            .pick(rows, k, self.tensor_cores)
            .kernel;
        let cfg = gemm_grid(kern, rows, n)?;
        let null: u64 = 0;
        let xb = match kern {
            // both read the rows rounded to bf16 once, as the CPU multiplies them
            Kernel::GemmW4a16Tc | Kernel::GemvW4a16 => Some(self.cast_bf16(sc, x, rows * k)?),
            _ => None,
        };
        let mut b = self.gpu.stream.launch_builder(self.function(kern));
        b.arg(&mut *out);
        match xb {
            Some(xb) => b.arg(xb),
            None => b.arg(x),
        };
        b.arg(packed).arg(scale);
        arg_or_null(&mut b, zero.as_ref(), &null);
        arg_or_null(&mut b, w.bias.as_ref(), &null);
        b.arg(&m_i).arg(&n_i).arg(&k_i).arg(&g_i);
        // SAFETY: the argument list of gemv_w4a16 / gemm_w4a16 / gemm_w4a16_tc (the GEMV and the
        // tensor-core kernel read the bf16 rows, the fallback the f32 ones; zero and bias or
        // null); packed
        // holds n × k / 2 bytes, scale and zero n × ceil(k / group); the GEMV and the
        // tensor-core GEMM run only with k and group multiples of 32 (their 16-byte loads stay
        // in a row and their 32-value steps in a group).
        unsafe { self.launch(&mut b, cfg, &w.name) }?;
        Ok(())
    }
}
