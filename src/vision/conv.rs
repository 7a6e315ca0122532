//! Conv2d with BatchNorm folded in and a fused ReLU: PyTorch's `ConvBnReLU2d` after fusion.
//!
//! - Unfused, conv → bn → relu reads and writes the activation three times; fused, once.
//!   BN folding: w' = w · γ/√(σ²+ε), b' = (b − μ) · γ/√(σ²+ε) + β.
//! - CPU path: im2col in PyTorch's (c, ky, kx) order (weights keep their layout), the backend
//!   GEMMs with a bias + ReLU (+ int8 requantize) epilogue into NCHW or NHWC; depthwise runs a
//!   direct loop.
//! - Precisions: f32, BF16 weights, INT8 (per-channel weights, a static per-tensor activation
//!   scale: PyTorch's x86 scheme). `conv2d_ref` / `batch_norm_ref` are the unfused reference.

use crate::backend::cpu::dense::{self, Isa, WElem};
use crate::backend::cpu::int8::{self, vnni};
use crate::error::{Error, Result};
use crate::quant::formats::{quantize_i8, round_even};
use half::bf16;
use rayon::prelude::*;

/// Memory order of an activation tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// (n, c, h, w): PyTorch's default.
    Nchw,
    /// (n, h, w, c): channels_last.
    Nhwc,
}

/// An activation's dimensions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dims {
    pub n: usize,
    pub c: usize,
    pub h: usize,
    pub w: usize,
}

impl Dims {
    pub fn len(&self) -> usize {
        self.n * self.c * self.h * self.w
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Flat index of (n, c, y, x) in `layout`.
    #[inline]
    pub fn at(&self, layout: Layout, n: usize, c: usize, y: usize, x: usize) -> usize {
        match layout {
            Layout::Nchw => ((n * self.c + c) * self.h + y) * self.w + x,
            Layout::Nhwc => ((n * self.h + y) * self.w + x) * self.c + c,
        }
    }
}

/// A Conv2d's hyper-parameters (PyTorch's names).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvShape {
    pub in_c: usize,
    pub out_c: usize,
    pub kh: usize,
    pub kw: usize,
    pub stride: (usize, usize),
    pub padding: (usize, usize),
    pub dilation: (usize, usize),
    pub groups: usize,
}

impl ConvShape {
    /// A k×k convolution with stride s, padding p, dilation 1, one group.
    pub fn square(in_c: usize, out_c: usize, k: usize, s: usize, p: usize) -> Self {
        ConvShape {
            in_c,
            out_c,
            kh: k,
            kw: k,
            stride: (s, s),
            padding: (p, p),
            dilation: (1, 1),
            groups: 1,
        }
    }

    pub fn validate(&self) -> Result<()> {
        let zero = [
            self.in_c,
            self.out_c,
            self.kh,
            self.kw,
            self.stride.0,
            self.stride.1,
        ]
        .contains(&0)
            || self.dilation.0 == 0
            || self.dilation.1 == 0
            || self.groups == 0;
        if zero {
            return Err(Error::InvalidArgument(format!(
                "conv {self:?}: channels, kernel, stride, dilation and groups must be positive"
            )));
        }
        if !self.in_c.is_multiple_of(self.groups) || !self.out_c.is_multiple_of(self.groups) {
            return Err(Error::InvalidArgument(format!(
                "conv groups {} must divide in_channels {} and out_channels {}",
                self.groups, self.in_c, self.out_c
            )));
        }
        Ok(())
    }

    /// Input channels per group.
    pub fn cin_g(&self) -> usize {
        self.in_c / self.groups
    }
    /// Output channels per group.
    pub fn cout_g(&self) -> usize {
        self.out_c / self.groups
    }
    /// Weight columns: cin_g · kh · kw.
    pub fn k(&self) -> usize {
        self.cin_g() * self.kh * self.kw
    }
    pub fn weight_len(&self) -> usize {
        self.out_c * self.k()
    }

    /// Output dimensions for input `x`, or an error naming the mismatch.
    pub fn out_dims(&self, x: Dims) -> Result<Dims> {
        self.validate()?;
        if x.c != self.in_c {
            return Err(Error::ShapeMismatch {
                tensor: "conv input".into(),
                expected: vec![x.n, self.in_c, x.h, x.w],
                actual: vec![x.n, x.c, x.h, x.w],
            });
        }
        let span = |k: usize, d: usize| d * (k - 1) + 1;
        let (ph, pw) = (x.h + 2 * self.padding.0, x.w + 2 * self.padding.1);
        let (sh, sw) = (
            span(self.kh, self.dilation.0),
            span(self.kw, self.dilation.1),
        );
        if ph < sh || pw < sw {
            return Err(Error::InvalidArgument(format!(
                "conv input {}x{} (padded {ph}x{pw}) is smaller than the dilated kernel {sh}x{sw}",
                x.h, x.w
            )));
        }
        Ok(Dims {
            n: x.n,
            c: self.out_c,
            h: (ph - sh) / self.stride.0 + 1,
            w: (pw - sw) / self.stride.1 + 1,
        })
    }

    /// The input position read by output (oy, ox) at kernel tap (ky, kx), if inside.
    #[inline]
    fn source(
        &self,
        x: Dims,
        oy: usize,
        ox: usize,
        ky: usize,
        kx: usize,
    ) -> Option<(usize, usize)> {
        let iy = (oy * self.stride.0 + ky * self.dilation.0).checked_sub(self.padding.0)?;
        let ix = (ox * self.stride.1 + kx * self.dilation.1).checked_sub(self.padding.1)?;
        (iy < x.h && ix < x.w).then_some((iy, ix))
    }
}

/// BatchNorm2d in eval mode: running statistics and the affine parameters.
#[derive(Clone, Debug, PartialEq)]
pub struct BatchNorm {
    pub gamma: Vec<f32>,
    pub beta: Vec<f32>,
    pub mean: Vec<f32>,
    pub var: Vec<f32>,
    pub eps: f32,
}

/// Fold `bn` into a convolution's weight (out_c, k) and optional bias: (w', b').
pub fn fold_bn(
    w: &[f32],
    bias: Option<&[f32]>,
    bn: &BatchNorm,
    out_c: usize,
) -> Result<(Vec<f32>, Vec<f32>)> {
    let lens = [bn.gamma.len(), bn.beta.len(), bn.mean.len(), bn.var.len()];
    if lens.iter().any(|&l| l != out_c)
        || bias.is_some_and(|b| b.len() != out_c)
        || !w.len().is_multiple_of(out_c.max(1))
    {
        return Err(Error::InvalidArgument(format!(
            "batch norm of {lens:?} channels (bias {:?}) does not match a conv of {out_c} output channels",
            bias.map(<[f32]>::len)
        )));
    }
    let k = w.len() / out_c;
    let mut wf = vec![0f32; w.len()];
    let mut bf = vec![0f32; out_c];
    for c in 0..out_c {
        // in f64: γ/√(σ²+ε) can be large when σ² is tiny
        let s = bn.gamma[c] as f64 / (bn.var[c] as f64 + bn.eps as f64).sqrt();
        for (o, &v) in wf[c * k..(c + 1) * k]
            .iter_mut()
            .zip(&w[c * k..(c + 1) * k])
        {
            *o = (v as f64 * s) as f32;
        }
        let b = bias.map_or(0.0, |b| b[c] as f64);
        bf[c] = ((b - bn.mean[c] as f64) * s + bn.beta[c] as f64) as f32;
    }
    Ok((wf, bf))
}

/// Reference convolution: direct loops, f64 accumulation. w (out_c, cin_g, kh, kw).
pub fn conv2d_ref(
    x: &[f32],
    xd: Dims,
    layout: Layout,
    s: &ConvShape,
    w: &[f32],
    bias: Option<&[f32]>,
) -> Result<Vec<f32>> {
    let od = s.out_dims(xd)?;
    check_lens(x, xd, s, w, bias)?;
    let mut out = vec![0f32; od.len()];
    let (cin_g, cout_g) = (s.cin_g(), s.cout_g());
    for n in 0..xd.n {
        for oc in 0..s.out_c {
            let g = oc / cout_g;
            for oy in 0..od.h {
                for ox in 0..od.w {
                    let mut acc = bias.map_or(0.0, |b| b[oc] as f64);
                    for ci in 0..cin_g {
                        for ky in 0..s.kh {
                            for kx in 0..s.kw {
                                if let Some((iy, ix)) = s.source(xd, oy, ox, ky, kx) {
                                    let xv = x[xd.at(layout, n, g * cin_g + ci, iy, ix)];
                                    let wv = w[((oc * cin_g + ci) * s.kh + ky) * s.kw + kx];
                                    acc += xv as f64 * wv as f64;
                                }
                            }
                        }
                    }
                    out[od.at(layout, n, oc, oy, ox)] = acc as f32;
                }
            }
        }
    }
    Ok(out)
}

/// Reference eval-mode BatchNorm over channels, in place.
pub fn batch_norm_ref(y: &mut [f32], d: Dims, layout: Layout, bn: &BatchNorm) {
    for n in 0..d.n {
        for c in 0..d.c {
            let s = bn.gamma[c] as f64 / (bn.var[c] as f64 + bn.eps as f64).sqrt();
            for yy in 0..d.h {
                for xx in 0..d.w {
                    let i = d.at(layout, n, c, yy, xx);
                    y[i] = ((y[i] as f64 - bn.mean[c] as f64) * s + bn.beta[c] as f64) as f32;
                }
            }
        }
    }
}

fn check_lens(x: &[f32], xd: Dims, s: &ConvShape, w: &[f32], bias: Option<&[f32]>) -> Result<()> {
    if x.len() != xd.len() {
        return Err(Error::InvalidArgument(format!(
            "conv input holds {} values, {xd:?} needs {}",
            x.len(),
            xd.len()
        )));
    }
    if w.len() != s.weight_len() || bias.is_some_and(|b| b.len() != s.out_c) {
        return Err(Error::ShapeMismatch {
            tensor: "conv weight".into(),
            expected: vec![s.out_c, s.cin_g(), s.kh, s.kw],
            actual: vec![w.len()],
        });
    }
    Ok(())
}

/// How the fused op holds its (folded) weights.
#[derive(Clone, Debug)]
pub enum ConvWeights {
    F32(Vec<f32>),
    Bf16(Vec<bf16>),
    /// Per-output-channel symmetric int8 and the static per-tensor input scale; `vnni` holds
    /// each group's weights repacked for the AVX-512 VNNI GEMM where the CPU has it and the
    /// groups are wide enough to fill its 16-column blocks (empty otherwise).
    Int8 {
        q: Vec<i8>,
        w_scale: Vec<f32>,
        act_scale: f32,
        vnni: Vec<vnni::PackedI8>,
    },
}

/// Which precision [`FusedConv::new`] prepares.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ConvPrecision {
    F32,
    Bf16,
    /// INT8 with this static per-tensor activation scale (e.g. [`minmax_act_scale`]).
    Int8 {
        act_scale: f32,
    },
}

/// The per-tensor symmetric int8 scale that covers every value of `x`.
pub fn minmax_act_scale(x: &[f32]) -> f32 {
    let m = x.iter().fold(0f32, |m, v| m.max(v.abs()));
    if m > 0.0 {
        m / 127.0
    } else {
        1.0
    }
}

/// Conv2d (+ folded BN) (+ ReLU) as one op.
#[derive(Clone, Debug)]
pub struct FusedConv {
    pub shape: ConvShape,
    pub weights: ConvWeights,
    /// (out_c): the folded bias.
    pub bias: Vec<f32>,
    pub relu: bool,
}

/// Where the fused epilogue writes: float, or int8 requantized with a per-tensor scale.
pub enum ConvOut<'a> {
    F32(&'a mut [f32]),
    Int8 { out: &'a mut [i8], scale: f32 },
}

/// Raw output pointers for the int8 GEMM epilogue, which writes from several tasks.
#[derive(Clone, Copy)]
struct OutPtr {
    f: *mut f32,
    q: *mut i8,
    inv_scale: f32,
}
// SAFETY: every task writes distinct elements (one output pixel × channel each, see gemm_i8).
unsafe impl Send for OutPtr {}
// SAFETY: as above.
unsafe impl Sync for OutPtr {}

impl OutPtr {
    fn new(out: &mut ConvOut<'_>) -> Self {
        match out {
            ConvOut::F32(o) => OutPtr {
                f: o.as_mut_ptr(),
                q: std::ptr::null_mut(),
                inv_scale: 0.0,
            },
            ConvOut::Int8 { out, scale } => OutPtr {
                f: std::ptr::null_mut(),
                q: out.as_mut_ptr(),
                inv_scale: 1.0 / *scale,
            },
        }
    }

    /// # Safety
    /// `i` is inside the output and no other task writes it.
    #[inline]
    unsafe fn store(self, i: usize, v: f32) {
        if self.f.is_null() {
            *self.q.add(i) = quantize_i8(v, self.inv_scale, 0, true);
        } else {
            *self.f.add(i) = v;
        }
    }
}

/// One group's receptive fields of image n as rows: a (pixels, cin_g · kh · kw).
#[allow(clippy::too_many_arguments)]
fn im2col<T: Copy + Default + Send + Sync>(
    x: &[T],
    xd: Dims,
    layout: Layout,
    s: &ConvShape,
    od: Dims,
    n: usize,
    g: usize,
    a: &mut [T],
) {
    let cin_g = s.cin_g();
    a.par_chunks_mut(s.k()).enumerate().for_each(|(p, row)| {
        let (oy, ox) = (p / od.w, p % od.w);
        for ci in 0..cin_g {
            for ky in 0..s.kh {
                for kx in 0..s.kw {
                    row[(ci * s.kh + ky) * s.kw + kx] = match s.source(xd, oy, ox, ky, kx) {
                        Some((iy, ix)) => x[xd.at(layout, n, g * cin_g + ci, iy, ix)],
                        None => T::default(),
                    };
                }
            }
        }
    });
}

impl FusedConv {
    /// Prepare already-folded weights w (out_c, cin_g, kh, kw) and bias (out_c).
    pub fn new(
        shape: ConvShape,
        w: &[f32],
        bias: &[f32],
        precision: ConvPrecision,
        relu: bool,
    ) -> Result<Self> {
        shape.validate()?;
        if w.len() != shape.weight_len() || bias.len() != shape.out_c {
            return Err(Error::ShapeMismatch {
                tensor: "conv weight".into(),
                expected: vec![shape.out_c, shape.cin_g(), shape.kh, shape.kw],
                actual: vec![w.len()],
            });
        }
        let weights = match precision {
            ConvPrecision::F32 => ConvWeights::F32(w.to_vec()),
            ConvPrecision::Bf16 => {
                ConvWeights::Bf16(w.iter().map(|&v| bf16::from_f32(v)).collect())
            }
            ConvPrecision::Int8 { act_scale } => {
                if !(act_scale > 0.0 && act_scale.is_finite()) {
                    return Err(Error::InvalidArgument(format!(
                        "int8 conv: activation scale {act_scale} must be positive and finite"
                    )));
                }
                let k = shape.k();
                let mut q = vec![0i8; w.len()];
                let mut w_scale = vec![1f32; shape.out_c];
                for (c, (row, qrow)) in w.chunks(k).zip(q.chunks_mut(k)).enumerate() {
                    let m = row.iter().fold(0f32, |m, v| m.max(v.abs()));
                    if m > 0.0 {
                        w_scale[c] = m / 127.0;
                    }
                    let inv = 1.0 / w_scale[c];
                    qrow.iter_mut()
                        .zip(row)
                        .for_each(|(q, &v)| *q = quantize_i8(v, inv, 0, true));
                }
                let (cout_g, groups) = (shape.cout_g(), shape.groups);
                let packed = if vnni::available() && cout_g >= vnni::NB && k <= vnni::MAX_K {
                    (0..groups)
                        .map(|g| {
                            let rows = g * cout_g..(g + 1) * cout_g;
                            let qg = &q[rows.start * k..rows.end * k];
                            let colsum: Vec<i32> = qg
                                .chunks(k)
                                .map(|r| r.iter().map(|&v| v as i32).sum())
                                .collect();
                            vnni::PackedI8::pack(qg, &w_scale[rows], &colsum, cout_g, k)
                        })
                        .collect()
                } else {
                    Vec::new()
                };
                ConvWeights::Int8 {
                    q,
                    w_scale,
                    act_scale,
                    vnni: packed,
                }
            }
        };
        Ok(FusedConv {
            shape,
            weights,
            bias: bias.to_vec(),
            relu,
        })
    }

    /// Fold `bn` into the convolution (w, bias) and prepare it.
    pub fn from_conv_bn(
        shape: ConvShape,
        w: &[f32],
        bias: Option<&[f32]>,
        bn: &BatchNorm,
        precision: ConvPrecision,
        relu: bool,
    ) -> Result<Self> {
        let (wf, bf) = fold_bn(w, bias, bn, shape.out_c)?;
        FusedConv::new(shape, &wf, &bf, precision, relu)
    }

    /// y = relu(conv(x) + b') as a new tensor in `layout`.
    pub fn forward(&self, x: &[f32], xd: Dims, layout: Layout) -> Result<(Vec<f32>, Dims)> {
        let od = self.shape.out_dims(xd)?;
        let mut out = vec![0f32; od.len()];
        self.forward_into(x, xd, layout, ConvOut::F32(&mut out))?;
        Ok((out, od))
    }

    /// The fused op into `out` (same layout as x); returns the output dims.
    pub fn forward_into(
        &self,
        x: &[f32],
        xd: Dims,
        layout: Layout,
        mut out: ConvOut<'_>,
    ) -> Result<Dims> {
        let s = &self.shape;
        let od = s.out_dims(xd)?;
        if x.len() != xd.len() {
            return Err(Error::InvalidArgument(format!(
                "conv input holds {} values, {xd:?} needs {}",
                x.len(),
                xd.len()
            )));
        }
        let out_len = match &out {
            ConvOut::F32(o) => o.len(),
            ConvOut::Int8 { out, scale } => {
                if !(*scale > 0.0 && scale.is_finite()) {
                    return Err(Error::InvalidArgument(format!(
                        "int8 conv output scale {scale} must be positive"
                    )));
                }
                out.len()
            }
        };
        if out_len != od.len() {
            return Err(Error::InvalidArgument(format!(
                "conv output holds {out_len} values, {od:?} needs {}",
                od.len()
            )));
        }
        let ptr = OutPtr::new(&mut out);
        let (relu, bias) = (self.relu, &self.bias[..]);
        let finish = move |v: f32, c: usize| {
            let v = v + bias[c];
            if relu {
                v.max(0.0)
            } else {
                v
            }
        };
        let depthwise = s.cin_g() == 1 && s.groups == s.in_c;
        match &self.weights {
            ConvWeights::F32(w) if depthwise => {
                self.depthwise(x, xd, layout, od, |i| w[i], ptr, &finish)
            }
            ConvWeights::Bf16(w) if depthwise => {
                self.depthwise(x, xd, layout, od, |i| w[i].to_f32(), ptr, &finish)
            }
            ConvWeights::F32(w) => self.im2col_gemm(w, x, xd, layout, od, ptr, &finish),
            ConvWeights::Bf16(w) => self.im2col_gemm(w, x, xd, layout, od, ptr, &finish),
            ConvWeights::Int8 {
                q,
                w_scale,
                act_scale,
                vnni: packed,
            } => {
                let (pixels, k, cout_g) = (od.h * od.w, s.k(), s.cout_g());
                let inv = 1.0 / act_scale;
                let qx: Vec<i8> = x
                    .par_iter()
                    .map(|&v| quantize_i8(v, inv, 0, true))
                    .collect();
                let mut a = vec![0i8; pixels * k]; // (pixels, k)
                                                   // the VNNI GEMM's epilogue is (s_a · s_w) · acc + b, the same float expression
                                                   // as the closure below, so both paths give the same bits
                let (a_scale, a_zp) = (vec![*act_scale; pixels], vec![0i32; pixels]);
                let mut tmp = vec![
                    0f32;
                    if packed.is_empty() {
                        0
                    } else {
                        pixels * cout_g
                    }
                ];
                for n in 0..xd.n {
                    for g in 0..s.groups {
                        im2col(&qx, xd, layout, s, od, n, g, &mut a);
                        if let Some(pg) = packed.get(g) {
                            let bias_g = &bias[g * cout_g..(g + 1) * cout_g];
                            vnni::gemm(&mut tmp, &a, &a_scale, &a_zp, pg, Some(bias_g), pixels);
                            tmp.par_chunks(cout_g).enumerate().for_each(|(p, row)| {
                                for (j, &v) in row.iter().enumerate() {
                                    let c = g * cout_g + j;
                                    let v = if relu { v.max(0.0) } else { v };
                                    // SAFETY: (n, c, pixel p) is inside out and this task owns
                                    // pixel p.
                                    unsafe { ptr.store(od.at(layout, n, c, p / od.w, p % od.w), v) }
                                }
                            });
                            continue;
                        }
                        let qw = &q[g * cout_g * k..(g + 1) * cout_g * k];
                        int8::gemm_i8(Isa::detect(), &a, qw, pixels, cout_g, k, |p, j, acc| {
                            let c = g * cout_g + j;
                            let v = acc as f32 * (act_scale * w_scale[c]);
                            // SAFETY: (n, c, pixel p) is inside out; gemm_i8 hands each (p, j)
                            // to exactly one task.
                            unsafe {
                                ptr.store(od.at(layout, n, c, p / od.w, p % od.w), finish(v, c))
                            }
                        });
                    }
                }
            }
        }
        Ok(od)
    }

    /// Float weights: im2col per (image, group), the backend GEMM, the epilogue scattering
    /// into the output layout.
    #[allow(clippy::too_many_arguments)]
    fn im2col_gemm<W: WElem>(
        &self,
        w: &[W],
        x: &[f32],
        xd: Dims,
        layout: Layout,
        od: Dims,
        ptr: OutPtr,
        finish: &(impl Fn(f32, usize) -> f32 + Sync),
    ) {
        let s = &self.shape;
        let (pixels, k, cout_g) = (od.h * od.w, s.k(), s.cout_g());
        let mut a = vec![0f32; pixels * k]; // (pixels, k)
        let mut tmp = vec![0f32; pixels * cout_g]; // (pixels, cout_g)
        for n in 0..xd.n {
            for g in 0..s.groups {
                im2col(x, xd, layout, s, od, n, g, &mut a);
                let wg = &w[g * cout_g * k..(g + 1) * cout_g * k];
                dense::matmul(&mut tmp, &a, wg, pixels, cout_g, k);
                tmp.par_chunks(cout_g).enumerate().for_each(|(p, row)| {
                    for (j, &v) in row.iter().enumerate() {
                        let c = g * cout_g + j;
                        // SAFETY: (n, c, pixel p) is inside out and this task owns pixel p.
                        unsafe { ptr.store(od.at(layout, n, c, p / od.w, p % od.w), finish(v, c)) }
                    }
                });
            }
        }
    }

    /// Depthwise (one input channel per group): direct loops, one task per (image, channel).
    #[allow(clippy::too_many_arguments)]
    fn depthwise(
        &self,
        x: &[f32],
        xd: Dims,
        layout: Layout,
        od: Dims,
        w: impl Fn(usize) -> f32 + Sync,
        ptr: OutPtr,
        finish: &(impl Fn(f32, usize) -> f32 + Sync),
    ) {
        let s = &self.shape;
        let per = s.cout_g();
        (0..xd.n * s.out_c).into_par_iter().for_each(|t| {
            let (n, c) = (t / s.out_c, t % s.out_c);
            let ci = c / per;
            for oy in 0..od.h {
                for ox in 0..od.w {
                    let mut acc = 0f32;
                    for ky in 0..s.kh {
                        for kx in 0..s.kw {
                            if let Some((iy, ix)) = s.source(xd, oy, ox, ky, kx) {
                                acc += x[xd.at(layout, n, ci, iy, ix)]
                                    * w((c * s.kh + ky) * s.kw + kx);
                            }
                        }
                    }
                    // SAFETY: (n, c, oy, ox) is inside out and only task (n, c) writes channel c.
                    unsafe { ptr.store(od.at(layout, n, c, oy, ox), finish(acc, c)) }
                }
            }
        });
    }
}

/// Round to the int8 grid and back (tests' view of what the INT8 path feeds the GEMM).
pub fn fake_quant(x: f32, scale: f32) -> f32 {
    round_even(x / scale).clamp(-127.0, 127.0) * scale
}
