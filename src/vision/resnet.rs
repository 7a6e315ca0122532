//! A stack of ResNet basic blocks (He et al., CVPR 2016) from torchvision-named safetensors.
//!
//! - Names: `conv1` / `bn1` stem, `layer{L}.{B}.conv{1,2}` / `bn{1,2}`, `downsample.{0,1}`;
//!   BatchNorm `weight` / `bias` / `running_mean` / `running_var`.
//! - Run with the fused op: stem conv+bn+relu, 3×3/2 max pool, then per block
//!   relu(bn2(conv2(relu(bn1(conv1 x)))) + identity); `forward_reference` runs it unfused.

use super::conv::{
    batch_norm_ref, conv2d_ref, minmax_act_scale, BatchNorm, ConvPrecision, ConvShape, Dims,
    FusedConv, Layout,
};
use crate::checkpoint::WeightSource;
use crate::error::{Error, Result};

/// torchvision's BatchNorm2d eps.
const BN_EPS: f32 = 1e-5;

/// One conv + BN (+ ReLU): the checkpoint's tensors and the fused op built from them.
#[derive(Clone, Debug)]
pub struct ConvBn {
    pub name: String,
    pub shape: ConvShape,
    w: Vec<f32>, // (out_c, in_c / groups, kh, kw)
    bn: BatchNorm,
    relu: bool,
    pub fused: FusedConv,
}

impl ConvBn {
    fn load(
        src: &dyn WeightSource,
        conv: &str,
        bn: &str,
        stride: usize,
        relu: bool,
    ) -> Result<Self> {
        let t = src.load(&format!("{conv}.weight"))?;
        let [out_c, in_c, kh, kw] = t.shape[..] else {
            return Err(Error::ShapeMismatch {
                tensor: format!("{conv}.weight"),
                expected: vec![0, 0, 0, 0],
                actual: t.shape.clone(),
            });
        };
        let shape = ConvShape {
            in_c,
            out_c,
            kh,
            kw,
            stride: (stride, stride),
            padding: (kh / 2, kw / 2),
            dilation: (1, 1),
            groups: 1,
        };
        let vec = |n: &str| -> Result<Vec<f32>> {
            let name = format!("{bn}.{n}");
            let t = src.load(&name)?;
            t.expect_shape(&name, &[out_c])?;
            Ok(t.to_f32_vec())
        };
        let bn = BatchNorm {
            gamma: vec("weight")?,
            beta: vec("bias")?,
            mean: vec("running_mean")?,
            var: vec("running_var")?,
            eps: BN_EPS,
        };
        let w = t.to_f32_vec();
        let fused = FusedConv::from_conv_bn(shape, &w, None, &bn, ConvPrecision::F32, relu)?;
        Ok(ConvBn {
            name: conv.to_string(),
            shape,
            w,
            bn,
            relu,
            fused,
        })
    }

    fn reference(&self, x: &[f32], xd: Dims, layout: Layout) -> Result<(Vec<f32>, Dims)> {
        let od = self.shape.out_dims(xd)?;
        let mut y = conv2d_ref(x, xd, layout, &self.shape, &self.w, None)?;
        batch_norm_ref(&mut y, od, layout, &self.bn);
        if self.relu {
            y.iter_mut().for_each(|v| *v = v.max(0.0));
        }
        Ok((y, od))
    }

    fn rebuild(&mut self, precision: ConvPrecision) -> Result<()> {
        self.fused =
            FusedConv::from_conv_bn(self.shape, &self.w, None, &self.bn, precision, self.relu)?;
        Ok(())
    }
}

#[derive(Clone, Debug)]
pub struct BasicBlock {
    pub conv1: ConvBn,
    pub conv2: ConvBn,
    pub downsample: Option<ConvBn>,
}

/// The stem and the basic blocks found in a checkpoint, in order.
#[derive(Clone, Debug)]
pub struct ResNetStack {
    pub stem: ConvBn,
    pub blocks: Vec<BasicBlock>,
}

/// Which precision [`ResNetStack::set_precision`] runs in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StackPrecision {
    F32,
    Bf16,
    /// INT8 with per-conv activation scales calibrated (min/max) on the given input.
    Int8,
}

/// Max pool 3×3, stride 2, padding 1 (the ResNet stem's).
pub fn max_pool_3x3s2(x: &[f32], xd: Dims, layout: Layout) -> (Vec<f32>, Dims) {
    let od = Dims {
        n: xd.n,
        c: xd.c,
        h: (xd.h + 2 - 3) / 2 + 1,
        w: (xd.w + 2 - 3) / 2 + 1,
    };
    let mut out = vec![f32::NEG_INFINITY; od.len()];
    for n in 0..xd.n {
        for c in 0..xd.c {
            for oy in 0..od.h {
                for ox in 0..od.w {
                    let mut m = f32::NEG_INFINITY;
                    for iy in (2 * oy).saturating_sub(1)..(2 * oy + 2).min(xd.h) {
                        for ix in (2 * ox).saturating_sub(1)..(2 * ox + 2).min(xd.w) {
                            m = m.max(x[xd.at(layout, n, c, iy, ix)]);
                        }
                    }
                    out[od.at(layout, n, c, oy, ox)] = m;
                }
            }
        }
    }
    (out, od)
}

impl ResNetStack {
    /// Find the stem and every `layer{L}.{B}` block in `src` (f32 precision).
    pub fn load(src: &dyn WeightSource) -> Result<Self> {
        let stem = ConvBn::load(src, "conv1", "bn1", 2, true)?;
        let mut ids: Vec<(usize, usize)> = src
            .tensor_names()
            .iter()
            .filter_map(|n| {
                let rest = n.strip_prefix("layer")?.strip_suffix(".conv1.weight")?;
                let (l, b) = rest.split_once('.')?;
                Some((l.parse().ok()?, b.parse().ok()?))
            })
            .collect();
        ids.sort_unstable();
        let mut blocks = Vec::with_capacity(ids.len());
        for (l, b) in ids {
            let p = format!("layer{l}.{b}");
            let has_down = src
                .tensor_names()
                .contains(&format!("{p}.downsample.0.weight"));
            // torchvision: the first block of layer2..4 halves the resolution
            let stride = if has_down && l > 1 { 2 } else { 1 };
            let downsample = if has_down {
                Some(ConvBn::load(
                    src,
                    &format!("{p}.downsample.0"),
                    &format!("{p}.downsample.1"),
                    stride,
                    false,
                )?)
            } else {
                None
            };
            blocks.push(BasicBlock {
                conv1: ConvBn::load(
                    src,
                    &format!("{p}.conv1"),
                    &format!("{p}.bn1"),
                    stride,
                    true,
                )?,
                conv2: ConvBn::load(src, &format!("{p}.conv2"), &format!("{p}.bn2"), 1, false)?,
                downsample,
            });
        }
        if blocks.is_empty() {
            return Err(Error::MissingTensor("layer1.0.conv1.weight".into()));
        }
        Ok(ResNetStack { stem, blocks })
    }

    fn convs_mut(&mut self) -> impl Iterator<Item = &mut ConvBn> {
        std::iter::once(&mut self.stem).chain(self.blocks.iter_mut().flat_map(|b| {
            [
                Some(&mut b.conv1),
                Some(&mut b.conv2),
                b.downsample.as_mut(),
            ]
            .into_iter()
            .flatten()
        }))
    }

    /// Rebuild every fused conv in `p`; INT8 calibrates each conv's input scale on `calib`.
    pub fn set_precision(
        &mut self,
        p: StackPrecision,
        calib: &[f32],
        xd: Dims,
        layout: Layout,
    ) -> Result<()> {
        let scales = match p {
            StackPrecision::Int8 => {
                let mut inputs = Vec::new();
                self.run(calib, xd, layout, false, &mut |x| {
                    inputs.push(minmax_act_scale(x))
                })?;
                inputs
            }
            _ => Vec::new(),
        };
        let mut scales = scales.into_iter();
        for c in self.convs_mut() {
            let prec = match p {
                StackPrecision::F32 => ConvPrecision::F32,
                StackPrecision::Bf16 => ConvPrecision::Bf16,
                StackPrecision::Int8 => ConvPrecision::Int8 {
                    act_scale: scales.next().ok_or_else(|| {
                        Error::InvalidArgument(
                            "calibration saw fewer convs than the stack has".into(),
                        )
                    })?,
                },
            };
            c.rebuild(prec)?;
        }
        Ok(())
    }

    /// The fused forward pass.
    pub fn forward(&self, x: &[f32], xd: Dims, layout: Layout) -> Result<(Vec<f32>, Dims)> {
        self.run(x, xd, layout, false, &mut |_| {})
    }

    /// The same graph unfused: conv, then BN, then ReLU, each a separate pass.
    pub fn forward_reference(
        &self,
        x: &[f32],
        xd: Dims,
        layout: Layout,
    ) -> Result<(Vec<f32>, Dims)> {
        self.run(x, xd, layout, true, &mut |_| {})
    }

    /// Run the graph; `seen` gets every conv's input in order (stem, then per block conv1,
    /// conv2, downsample — `convs_mut`'s order).
    fn run(
        &self,
        x: &[f32],
        xd: Dims,
        layout: Layout,
        reference: bool,
        seen: &mut dyn FnMut(&[f32]),
    ) -> Result<(Vec<f32>, Dims)> {
        let mut conv = |c: &ConvBn, x: &[f32], xd: Dims| {
            seen(x);
            if reference {
                c.reference(x, xd, layout)
            } else {
                c.fused.forward(x, xd, layout)
            }
        };
        let (y, yd) = conv(&self.stem, x, xd)?;
        let (mut h, mut hd) = max_pool_3x3s2(&y, yd, layout);
        for b in &self.blocks {
            let (t, td) = conv(&b.conv1, &h, hd)?;
            let (mut u, ud) = conv(&b.conv2, &t, td)?;
            let identity = match &b.downsample {
                Some(d) => conv(d, &h, hd)?.0,
                None => h,
            };
            if identity.len() != u.len() {
                return Err(Error::ShapeMismatch {
                    tensor: format!("{} residual", b.conv2.name),
                    expected: vec![ud.n, ud.c, ud.h, ud.w],
                    actual: vec![identity.len()],
                });
            }
            u.iter_mut()
                .zip(&identity)
                .for_each(|(u, i)| *u = (*u + i).max(0.0));
            (h, hd) = (u, ud);
        }
        Ok((h, hd))
    }
}
