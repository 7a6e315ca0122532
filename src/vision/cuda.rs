//! `FusedConv` on CUDA: one implicit-GEMM kernel (`kernels/conv.cu`).
//!
//! - BF16 on `mma.m16n8k16`, INT8 on `mma.m16n8k32` with the requantize epilogue, built from a
//!   CPU `FusedConv`, so both run the same weights and INT8 outputs are bit-identical.
//! - Also the unfused sequence (conv, BN kernel, ReLU kernel) the benchmark compares against.

use super::conv::{BatchNorm, ConvShape, ConvWeights, Dims, FusedConv, Layout};
use crate::backend::cuda::kernels::Kernel;
use crate::backend::cuda::launch::{driver_error, grid_1d, i32_of};
use crate::backend::cuda::runtime::Gpu;
use crate::error::{Error, Result};
use cudarc::driver::{CudaFunction, CudaSlice, DeviceRepr, LaunchConfig, PushKernelArg};
use half::bf16;

/// The kernels' `ConvGeom` (kernels/conv.cu), field for field.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct ConvGeom {
    n: i32,
    c: i32,
    h: i32,
    w: i32,
    oc: i32,
    oh: i32,
    ow: i32,
    kh: i32,
    kw: i32,
    sh: i32,
    sw: i32,
    ph: i32,
    pw: i32,
    dh: i32,
    dw: i32,
    groups: i32,
    cin_g: i32,
    cout_g: i32,
    k: i32,
    kp: i32,
    nhwc: i32,
}

// SAFETY: a #[repr(C)] struct of i32s, passed by value as the kernels' ConvGeom.
unsafe impl DeviceRepr for ConvGeom {}

/// Weight rows are padded to a multiple of this many columns (one 8-word k step of int8).
const KPAD: usize = 32;

enum DevWeights {
    /// (out_c, kp) int8, per-channel scales, the static input scale
    Int8 {
        q: CudaSlice<i8>,
        w_scale: CudaSlice<f32>,
        act_scale: f32,
    },
    /// (out_c, kp) bf16 bits
    Bf16(CudaSlice<u16>),
}

/// Where the fused epilogue writes on the device.
pub enum CudaConvOut<'a> {
    F32(&'a mut CudaSlice<f32>),
    /// Requantized to int8 with this per-tensor scale.
    Int8 {
        out: &'a mut CudaSlice<i8>,
        scale: f32,
    },
}

/// A fused Conv2d + folded BN + ReLU resident on the device.
pub struct CudaConv {
    pub shape: ConvShape,
    weights: DevWeights,
    bias: CudaSlice<f32>, // (out_c)
    relu: bool,
    kp: usize,
    kernel: CudaFunction,
}

/// Rows of `k` padded with zeros to `kp` columns.
fn pad_rows<T: Copy + Default>(w: &[T], rows: usize, k: usize, kp: usize) -> Vec<T> {
    let mut out = vec![T::default(); rows * kp];
    for (dst, src) in out.chunks_exact_mut(kp).zip(w.chunks_exact(k)) {
        dst[..k].copy_from_slice(src);
    }
    out
}

/// A grid-stride launch over `len` elements (kernels loop, so the grid is capped).
fn launch_1d(len: usize) -> LaunchConfig {
    grid_1d(len.div_ceil(256).clamp(1, 65_535), 256)
}

impl CudaConv {
    /// Upload a CPU-prepared fused conv. BF16 and INT8 run on the device; an f32 `FusedConv`
    /// is refused (the tensor-core kernels take bf16 or int8 operands: prepare it with
    /// `ConvPrecision::Bf16` or `Int8`).
    pub fn new(gpu: &mut Gpu, conv: &FusedConv) -> Result<CudaConv> {
        let s = conv.shape;
        let (k, out_c) = (s.k(), s.out_c);
        let kp = k.div_ceil(KPAD) * KPAD;
        let up_err = |e| driver_error("conv upload", e);
        let (weights, kernel) = match &conv.weights {
            ConvWeights::F32(_) => {
                return Err(Error::InvalidArgument(
                    "the CUDA conv runs BF16 or INT8 weights; prepare the FusedConv with \
                     ConvPrecision::Bf16 or ConvPrecision::Int8"
                        .into(),
                ))
            }
            ConvWeights::Bf16(w) => {
                let bits: Vec<u16> = w.iter().map(|v: &bf16| v.to_bits()).collect();
                let d = gpu
                    .stream
                    .clone_htod(&pad_rows(&bits, out_c, k, kp))
                    .map_err(up_err)?;
                (DevWeights::Bf16(d), gpu.function(Kernel::ConvBf16)?)
            }
            ConvWeights::Int8 {
                q,
                w_scale,
                act_scale,
                ..
            } => (
                DevWeights::Int8 {
                    q: gpu
                        .stream
                        .clone_htod(&pad_rows(q, out_c, k, kp))
                        .map_err(up_err)?,
                    w_scale: gpu.stream.clone_htod(w_scale).map_err(up_err)?,
                    act_scale: *act_scale,
                },
                gpu.function(Kernel::ConvInt8)?,
            ),
        };
        Ok(CudaConv {
            shape: s,
            weights,
            bias: gpu.stream.clone_htod(&conv.bias).map_err(up_err)?,
            relu: conv.relu,
            kp,
            kernel,
        })
    }

    fn geom(&self, xd: Dims, od: Dims, layout: Layout) -> Result<ConvGeom> {
        let s = &self.shape;
        Ok(ConvGeom {
            n: i32_of(xd.n, "conv batch")?,
            c: i32_of(xd.c, "conv channels")?,
            h: i32_of(xd.h, "conv height")?,
            w: i32_of(xd.w, "conv width")?,
            oc: i32_of(od.c, "conv out channels")?,
            oh: i32_of(od.h, "conv out height")?,
            ow: i32_of(od.w, "conv out width")?,
            kh: i32_of(s.kh, "conv kernel")?,
            kw: i32_of(s.kw, "conv kernel")?,
            sh: i32_of(s.stride.0, "conv stride")?,
            sw: i32_of(s.stride.1, "conv stride")?,
            ph: i32_of(s.padding.0, "conv padding")?,
            pw: i32_of(s.padding.1, "conv padding")?,
            dh: i32_of(s.dilation.0, "conv dilation")?,
            dw: i32_of(s.dilation.1, "conv dilation")?,
            groups: i32_of(s.groups, "conv groups")?,
            cin_g: i32_of(s.cin_g(), "conv channels per group")?,
            cout_g: i32_of(s.cout_g(), "conv channels per group")?,
            k: i32_of(s.k(), "conv columns")?,
            kp: i32_of(self.kp, "conv columns")?,
            nhwc: i32::from(layout == Layout::Nhwc),
        })
    }

    /// y = relu(conv(x) + b') into `out` (same layout as x); returns the output dims.
    pub fn forward(
        &self,
        gpu: &Gpu,
        x: &CudaSlice<f32>,
        xd: Dims,
        layout: Layout,
        out: CudaConvOut<'_>,
    ) -> Result<Dims> {
        let od = self.shape.out_dims(xd)?;
        if x.len() < xd.len() {
            return Err(Error::InvalidArgument(format!(
                "conv input holds {} values, {xd:?} needs {}",
                x.len(),
                xd.len()
            )));
        }
        let g = self.geom(xd, od, layout)?;
        let (out_len, out_inv) = match &out {
            CudaConvOut::F32(o) => (o.len(), 0.0f32),
            CudaConvOut::Int8 { out, scale } => {
                if !(*scale > 0.0 && scale.is_finite()) {
                    return Err(Error::InvalidArgument(format!(
                        "int8 conv output scale {scale} must be positive"
                    )));
                }
                (out.len(), 1.0 / scale)
            }
        };
        if out_len < od.len() {
            return Err(Error::InvalidArgument(format!(
                "conv output holds {out_len} values, {od:?} needs {}",
                od.len()
            )));
        }
        let cfg = LaunchConfig {
            grid_dim: (
                self.shape.cout_g().div_ceil(64) as u32,
                (xd.n * od.h * od.w).div_ceil(64) as u32,
                self.shape.groups as u32,
            ),
            block_dim: (128, 1, 1),
            shared_mem_bytes: 0,
        };
        let relu = i32::from(self.relu);
        let null: u64 = 0;
        let mut b = gpu.stream.launch_builder(&self.kernel);
        match out {
            CudaConvOut::F32(o) => b.arg(o).arg(&null),
            CudaConvOut::Int8 { out, .. } => b.arg(&null).arg(out),
        };
        b.arg(x);
        let in_inv;
        match &self.weights {
            DevWeights::Int8 {
                q,
                w_scale,
                act_scale,
            } => {
                in_inv = 1.0 / act_scale;
                b.arg(q)
                    .arg(w_scale)
                    .arg(&self.bias)
                    .arg(&g)
                    .arg(&in_inv)
                    .arg(act_scale)
                    .arg(&out_inv)
                    .arg(&relu);
            }
            DevWeights::Bf16(w) => {
                b.arg(w).arg(&self.bias).arg(&g).arg(&out_inv).arg(&relu);
            }
        }
        // SAFETY: the argument lists of conv_int8 / conv_bf16 (exactly one output pointer
        // non-null); x holds xd.len() values and the output od.len() (checked), the weights
        // out_c rows of kp (padded at upload), the scales and bias out_c.
        unsafe { b.launch(cfg) }.map_err(|e| driver_error("conv", e))?;
        Ok(od)
    }
}

/// The unfused sequence's BatchNorm (eval) and ReLU as two more kernels, each reading and
/// writing the whole activation: what the fused op saves.
pub struct UnfusedBnRelu {
    scale: CudaSlice<f32>, // (c) γ / √(σ² + ε)
    shift: CudaSlice<f32>, // (c) β − μ · scale
    channels: usize,
    relu: bool,
    affine: CudaFunction,
    relu_f: CudaFunction,
}

impl UnfusedBnRelu {
    pub fn new(gpu: &mut Gpu, bn: &BatchNorm, relu: bool) -> Result<Self> {
        let c = bn.gamma.len();
        if [bn.beta.len(), bn.mean.len(), bn.var.len()] != [c; 3] {
            return Err(Error::InvalidArgument(
                "batch norm parameters of different lengths".into(),
            ));
        }
        let scale: Vec<f32> = (0..c)
            .map(|i| bn.gamma[i] / (bn.var[i] + bn.eps).sqrt())
            .collect();
        let shift: Vec<f32> = (0..c).map(|i| bn.beta[i] - bn.mean[i] * scale[i]).collect();
        let up_err = |e| driver_error("bn upload", e);
        Ok(UnfusedBnRelu {
            scale: gpu.stream.clone_htod(&scale).map_err(up_err)?,
            shift: gpu.stream.clone_htod(&shift).map_err(up_err)?,
            channels: c,
            relu,
            affine: gpu.function(Kernel::ChannelAffine)?,
            relu_f: gpu.function(Kernel::ReluInplace)?,
        })
    }

    /// y (od, layout) = relu(bn(y)).
    pub fn apply(&self, gpu: &Gpu, y: &mut CudaSlice<f32>, od: Dims, layout: Layout) -> Result<()> {
        if od.c != self.channels || y.len() < od.len() {
            return Err(Error::InvalidArgument(format!(
                "bn over {} channels on an activation of {} values, {od:?}",
                self.channels,
                y.len()
            )));
        }
        let len = od.len() as i64;
        let inner = i32_of(
            match layout {
                Layout::Nchw => od.h * od.w,
                Layout::Nhwc => 1,
            },
            "plane",
        )?;
        let channels = i32_of(od.c, "conv channels")?;
        let mut b = gpu.stream.launch_builder(&self.affine);
        b.arg(&mut *y)
            .arg(&self.scale)
            .arg(&self.shift)
            .arg(&len)
            .arg(&channels)
            .arg(&inner);
        // SAFETY: matches channel_affine; y holds len values, scale and shift od.c.
        unsafe { b.launch(launch_1d(od.len())) }.map_err(|e| driver_error("batch norm", e))?;
        if self.relu {
            let mut b = gpu.stream.launch_builder(&self.relu_f);
            b.arg(&mut *y).arg(&len);
            // SAFETY: matches relu_inplace; y holds len values.
            unsafe { b.launch(launch_1d(od.len())) }.map_err(|e| driver_error("relu", e))?;
        }
        Ok(())
    }
}
