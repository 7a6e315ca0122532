//! The fused Conv + BN + ReLU kernel on CUDA against the CPU op: INT8 outputs (f32
//! and requantized int8) bit-identical to `FusedConv`'s INT8 path, BF16 within f32-summation
//! tolerance of the f64 reference on the same bf16 operands, and the unfused three-kernel
//! sequence equal to the fused op. Shapes sweep NCHW / NHWC, stride, padding, dilation, groups
//! (depthwise included), K not a multiple of the tile, output channels not a multiple of 64.
//! Needs a GPU: `#[ignore]`d, run by scripts/gpu-check.sh.

mod common;

use common::randn;
use ferroq::backend::cuda::runtime::Gpu;
use ferroq::engine::sampler::Rng;
use ferroq::vision::conv::{
    conv2d_ref, fold_bn, minmax_act_scale, BatchNorm, ConvOut, ConvPrecision, ConvShape, Dims,
    FusedConv, Layout,
};
use ferroq::vision::cuda::{CudaConv, CudaConvOut, UnfusedBnRelu};

fn gpu() -> Gpu {
    Gpu::new(0).unwrap_or_else(|e| panic!("these tests need a CUDA GPU: {e}"))
}

/// (shape, layout, input dims, relu)
fn cases() -> Vec<(ConvShape, Layout, Dims, bool)> {
    let shape = |in_c, out_c, k, s, p, d, groups| ConvShape {
        dilation: (d, d),
        groups,
        ..ConvShape::square(in_c, out_c, k, s, p)
    };
    let dims = |n, c, h, w| Dims { n, c, h, w };
    vec![
        // the ResNet stem: K = 147
        (
            shape(3, 16, 7, 2, 3, 1, 1),
            Layout::Nchw,
            dims(2, 3, 23, 19),
            true,
        ),
        (
            shape(16, 24, 3, 1, 1, 2, 1),
            Layout::Nhwc,
            dims(1, 16, 9, 11),
            false,
        ),
        (
            shape(32, 64, 3, 2, 1, 1, 2),
            Layout::Nchw,
            dims(1, 32, 15, 15),
            true,
        ),
        // depthwise
        (
            shape(24, 24, 3, 1, 1, 1, 24),
            Layout::Nhwc,
            dims(2, 24, 8, 8),
            true,
        ),
        (
            shape(64, 130, 1, 1, 0, 1, 1),
            Layout::Nhwc,
            dims(3, 64, 7, 7),
            true,
        ),
    ]
}

fn setup(rng: &mut Rng, s: &ConvShape, xd: Dims) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    (
        randn(rng, xd.len(), 1.0),
        randn(rng, s.weight_len(), 0.2),
        randn(rng, s.out_c, 0.5),
    )
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn int8_fused_conv_is_bit_identical_to_the_cpu() {
    let mut g = gpu();
    let mut rng = Rng::new(41);
    for (s, layout, xd, relu) in cases() {
        let (x, w, b) = setup(&mut rng, &s, xd);
        let conv = FusedConv::new(
            s,
            &w,
            &b,
            ConvPrecision::Int8 {
                act_scale: minmax_act_scale(&x),
            },
            relu,
        )
        .expect("conv");
        let od = s.out_dims(xd).expect("dims");
        let mut want = vec![0f32; od.len()];
        conv.forward_into(&x, xd, layout, ConvOut::F32(&mut want))
            .expect("cpu");
        let out_scale = minmax_act_scale(&want);
        let mut want_q = vec![0i8; od.len()];
        conv.forward_into(
            &x,
            xd,
            layout,
            ConvOut::Int8 {
                out: &mut want_q,
                scale: out_scale,
            },
        )
        .expect("cpu int8");

        let dc = CudaConv::new(&mut g, &conv).expect("upload");
        let xdev = g.stream.clone_htod(&x).expect("x");
        let mut of = g.stream.alloc_zeros::<f32>(od.len()).expect("out");
        let mut oq = g.stream.alloc_zeros::<i8>(od.len()).expect("out");
        dc.forward(&g, &xdev, xd, layout, CudaConvOut::F32(&mut of))
            .expect("gpu");
        dc.forward(
            &g,
            &xdev,
            xd,
            layout,
            CudaConvOut::Int8 {
                out: &mut oq,
                scale: out_scale,
            },
        )
        .expect("gpu int8");
        let got: Vec<f32> = g.stream.clone_dtoh(&of).expect("read");
        let got_q: Vec<i8> = g.stream.clone_dtoh(&oq).expect("read");
        let bad = got.iter().zip(&want).filter(|(a, b)| a != b).count();
        assert_eq!(
            bad, 0,
            "{s:?} {layout:?}: {bad} f32 outputs differ from the CPU"
        );
        assert_eq!(got_q, want_q, "{s:?} {layout:?}: int8 outputs differ");
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn bf16_fused_conv_matches_the_reference_and_the_unfused_sequence() {
    let mut g = gpu();
    let mut rng = Rng::new(42);
    let round = |v: &[f32]| -> Vec<f32> {
        v.iter()
            .map(|&a| half::bf16::from_f32(a).to_f32())
            .collect()
    };
    for (s, layout, xd, relu) in cases() {
        let (x, w, b) = setup(&mut rng, &s, xd);
        let c = s.out_c;
        let bn = BatchNorm {
            gamma: randn(&mut rng, c, 0.5).iter().map(|v| 1.0 + v).collect(),
            beta: randn(&mut rng, c, 0.3),
            mean: randn(&mut rng, c, 0.3),
            var: randn(&mut rng, c, 0.5)
                .iter()
                .map(|v| 0.5 + v.abs())
                .collect(),
            eps: 1e-5,
        };
        let fused =
            FusedConv::from_conv_bn(s, &w, Some(&b), &bn, ConvPrecision::Bf16, relu).expect("conv");
        // reference: the same bf16 operands (x rounded, folded weights rounded), f64 sums
        let (wf, bf) = fold_bn(&w, Some(&b), &bn, c).expect("fold");
        let (xr, wr) = (round(&x), round(&wf));
        let mut want = conv2d_ref(&xr, xd, layout, &s, &wr, Some(&bf)).expect("ref");
        if relu {
            want.iter_mut().for_each(|v| *v = v.max(0.0));
        }
        let abs = |v: &[f32]| v.iter().map(|a| a.abs()).collect::<Vec<_>>();
        let mag = conv2d_ref(&abs(&xr), xd, layout, &s, &abs(&wr), None).expect("mag");

        let od = s.out_dims(xd).expect("dims");
        let dc = CudaConv::new(&mut g, &fused).expect("upload");
        let xdev = g.stream.clone_htod(&x).expect("x");
        let mut of = g.stream.alloc_zeros::<f32>(od.len()).expect("out");
        dc.forward(&g, &xdev, xd, layout, CudaConvOut::F32(&mut of))
            .expect("gpu");
        let got: Vec<f32> = g.stream.clone_dtoh(&of).expect("read");
        for (e, ((&gv, &r), &m)) in got.iter().zip(&want).zip(&mag).enumerate() {
            assert!(
                (gv - r).abs() <= 1e-5 * m + 1e-6,
                "{s:?} {layout:?} [{e}]: gpu {gv} ref {r}"
            );
        }

        // unfused: conv with the unfolded weights and bias, then BN, then ReLU as kernels;
        // the weights round to bf16 before folding here, after it in the fused op
        let plain = FusedConv::new(s, &w, &b, ConvPrecision::Bf16, false).expect("plain");
        let dp = CudaConv::new(&mut g, &plain).expect("upload");
        let post = UnfusedBnRelu::new(&mut g, &bn, relu).expect("bn");
        let mut ou = g.stream.alloc_zeros::<f32>(od.len()).expect("out");
        dp.forward(&g, &xdev, xd, layout, CudaConvOut::F32(&mut ou))
            .expect("conv");
        post.apply(&g, &mut ou, od, layout).expect("bn relu");
        let unfused: Vec<f32> = g.stream.clone_dtoh(&ou).expect("read");
        // both sides' bf16 weight roundings are within 2^-8 of the folded weights, whose
        // magnitudes `mag` sums
        for (e, ((&u, &f), &m)) in unfused.iter().zip(&got).zip(&mag).enumerate() {
            assert!(
                (u - f).abs() <= 8e-3 * m + 1e-4,
                "{s:?} {layout:?} [{e}]: unfused {u} fused {f}"
            );
        }
    }
    // an f32 conv is refused with a clear error
    let (s, _, xd, _) = cases()[0];
    let (_, w, b) = setup(&mut rng, &s, xd);
    let f32_conv = FusedConv::new(s, &w, &b, ConvPrecision::F32, true).expect("conv");
    let e = CudaConv::new(&mut g, &f32_conv)
        .err()
        .expect("f32 must be refused");
    assert!(e.to_string().contains("Bf16"), "{e}");
}
