//! The fused Conv2d + BN + ReLU op against the unfused f64 reference (conv, then BN, then
//! ReLU) across layouts, strides, padding, dilation, groups (depthwise included) and odd
//! sizes; BF16 and INT8 within their rounding bounds; BN folding; bad shapes; and a ResNet
//! basic-block stack loaded from torchvision-named safetensors.

mod common;

use common::randn;
use ferroq::engine::sampler::Rng;
use ferroq::error::Error;
use ferroq::tensor::HostTensor;
use ferroq::vision::conv::*;
use ferroq::vision::resnet::{ResNetStack, StackPrecision};

fn bn(rng: &mut Rng, c: usize) -> BatchNorm {
    BatchNorm {
        gamma: randn(rng, c, 1.0),
        beta: randn(rng, c, 0.5),
        mean: randn(rng, c, 0.5),
        var: randn(rng, c, 1.0).iter().map(|v| v * v + 0.05).collect(),
        eps: 1e-5,
    }
}

/// Σ |w| · |x| over each output's receptive field (the scale of its rounding error).
fn magnitude(x: &[f32], xd: Dims, layout: Layout, s: &ConvShape, w: &[f32]) -> Vec<f32> {
    let ax: Vec<f32> = x.iter().map(|v| v.abs()).collect();
    let aw: Vec<f32> = w.iter().map(|v| v.abs()).collect();
    conv2d_ref(&ax, xd, layout, s, &aw, None).expect("magnitude")
}

#[allow(clippy::too_many_arguments)]
fn unfused(
    x: &[f32],
    xd: Dims,
    layout: Layout,
    s: &ConvShape,
    w: &[f32],
    b: &[f32],
    norm: &BatchNorm,
    relu: bool,
) -> Vec<f32> {
    let od = s.out_dims(xd).expect("dims");
    let mut y = conv2d_ref(x, xd, layout, s, w, Some(b)).expect("conv");
    batch_norm_ref(&mut y, od, layout, norm);
    if relu {
        y.iter_mut().for_each(|v| *v = v.max(0.0));
    }
    y
}

fn worst(got: &[f32], want: &[f32], bound: impl Fn(usize) -> f32) -> (usize, f32) {
    assert_eq!(got.len(), want.len());
    let mut w = (0, f32::MIN);
    for i in 0..got.len() {
        let excess = (got[i] - want[i]).abs() - bound(i);
        if excess > w.1 {
            w = (i, excess);
        }
    }
    w
}

fn sweep() -> Vec<(ConvShape, Dims)> {
    let mut v = Vec::new();
    let d = |n, c, h, w| Dims { n, c, h, w };
    for &(k, s, p, dil) in &[
        (3, 1, 1, 1),
        (3, 2, 1, 1),
        (1, 1, 0, 1),
        (3, 1, 2, 2),
        (5, 2, 2, 1),
        (1, 2, 0, 1),
    ] {
        for &(in_c, out_c, groups) in &[(3, 8, 1), (6, 4, 2), (5, 5, 5), (4, 8, 4), (16, 13, 1)] {
            v.push((
                ConvShape {
                    dilation: (dil, dil),
                    groups,
                    ..ConvShape::square(in_c, out_c, k, s, p)
                },
                d(2, in_c, 9, 7),
            ));
        }
    }
    // rectangular kernel, uneven stride / padding, a single pixel out, batch 1
    v.push((
        ConvShape {
            in_c: 4,
            out_c: 6,
            kh: 1,
            kw: 3,
            stride: (1, 2),
            padding: (0, 1),
            dilation: (1, 1),
            groups: 1,
        },
        d(1, 4, 5, 11),
    ));
    v.push((ConvShape::square(7, 3, 3, 1, 0), d(1, 7, 3, 3)));
    v
}

#[test]
fn folded_conv_equals_conv_then_bn_in_float() {
    let mut rng = Rng::new(90);
    for (s, xd) in sweep() {
        for layout in [Layout::Nchw, Layout::Nhwc] {
            let x = randn(&mut rng, xd.len(), 1.0);
            let w = randn(&mut rng, s.weight_len(), 0.5);
            let b = randn(&mut rng, s.out_c, 0.5);
            let norm = bn(&mut rng, s.out_c);
            // folding alone, through the reference conv
            let (wf, bf) = fold_bn(&w, Some(&b), &norm, s.out_c).expect("fold");
            let folded = conv2d_ref(&x, xd, layout, &s, &wf, Some(&bf)).expect("conv");
            let want = unfused(&x, xd, layout, &s, &w, &b, &norm, false);
            let mag = magnitude(&x, xd, layout, &s, &wf);
            let (i, e) = worst(&folded, &want, |i| 1e-5 + 1e-5 * mag[i]);
            assert!(
                e <= 0.0,
                "{s:?} {layout:?}: folded {} vs {} at {i}",
                folded[i],
                want[i]
            );
            // and the fused op, with and without ReLU
            for relu in [false, true] {
                let f = FusedConv::from_conv_bn(s, &w, Some(&b), &norm, ConvPrecision::F32, relu)
                    .expect("fused");
                let (got, od) = f.forward(&x, xd, layout).expect("forward");
                assert_eq!(od, s.out_dims(xd).expect("dims"));
                let want = unfused(&x, xd, layout, &s, &w, &b, &norm, relu);
                let (i, e) = worst(&got, &want, |i| 1e-5 + 1e-5 * mag[i]);
                assert!(
                    e <= 0.0,
                    "{s:?} {layout:?} relu {relu}: {} vs {} at {i}",
                    got[i],
                    want[i]
                );
            }
        }
    }
}

#[test]
fn layouts_agree_with_each_other() {
    let mut rng = Rng::new(91);
    let (s, xd) = (
        ConvShape::square(6, 10, 3, 2, 1),
        Dims {
            n: 2,
            c: 6,
            h: 8,
            w: 9,
        },
    );
    let x = randn(&mut rng, xd.len(), 1.0);
    let f = FusedConv::from_conv_bn(
        s,
        &randn(&mut rng, s.weight_len(), 0.5),
        None,
        &bn(&mut rng, 10),
        ConvPrecision::F32,
        true,
    )
    .expect("fused");
    let od = s.out_dims(xd).expect("dims");
    let mut x_nhwc = vec![0.0; x.len()];
    for n in 0..xd.n {
        for c in 0..xd.c {
            for y in 0..xd.h {
                for w in 0..xd.w {
                    x_nhwc[xd.at(Layout::Nhwc, n, c, y, w)] = x[xd.at(Layout::Nchw, n, c, y, w)];
                }
            }
        }
    }
    let (a, _) = f.forward(&x, xd, Layout::Nchw).expect("nchw");
    let (b, _) = f.forward(&x_nhwc, xd, Layout::Nhwc).expect("nhwc");
    for n in 0..od.n {
        for c in 0..od.c {
            for y in 0..od.h {
                for w in 0..od.w {
                    assert_eq!(
                        a[od.at(Layout::Nchw, n, c, y, w)],
                        b[od.at(Layout::Nhwc, n, c, y, w)]
                    );
                }
            }
        }
    }
}

#[test]
fn bf16_weights_stay_within_their_rounding() {
    let mut rng = Rng::new(92);
    for (s, xd) in sweep() {
        let layout = Layout::Nhwc;
        let x = randn(&mut rng, xd.len(), 1.0);
        let w = randn(&mut rng, s.weight_len(), 0.5);
        let norm = bn(&mut rng, s.out_c);
        let f =
            FusedConv::from_conv_bn(s, &w, None, &norm, ConvPrecision::Bf16, true).expect("bf16");
        let (got, _) = f.forward(&x, xd, layout).expect("forward");
        let (wf, _) = fold_bn(&w, None, &norm, s.out_c).expect("fold");
        let want = unfused(&x, xd, layout, &s, &w, &[0.0; 16][..s.out_c], &norm, true);
        let mag = magnitude(&x, xd, layout, &s, &wf);
        // bf16 keeps 8 significant bits: rounding moves a weight by at most half an ulp,
        // 2^-8 of its value
        let (i, e) = worst(&got, &want, |i| 1e-5 + mag[i] / 256.0);
        assert!(e <= 0.0, "{s:?}: {} vs {} at {i}", got[i], want[i]);
    }
}

#[test]
fn int8_error_stays_within_the_quantization_bound() {
    let mut rng = Rng::new(93);
    for (s, xd) in sweep() {
        for layout in [Layout::Nchw, Layout::Nhwc] {
            let x = randn(&mut rng, xd.len(), 1.0);
            let w = randn(&mut rng, s.weight_len(), 0.5);
            let norm = bn(&mut rng, s.out_c);
            let act_scale = minmax_act_scale(&x);
            let f = FusedConv::from_conv_bn(
                s,
                &w,
                None,
                &norm,
                ConvPrecision::Int8 { act_scale },
                true,
            )
            .expect("int8");
            let ConvWeights::Int8 { w_scale, .. } = &f.weights else {
                panic!("not int8")
            };
            let (got, od) = f.forward(&x, xd, layout).expect("forward");
            let (wf, _) = fold_bn(&w, None, &norm, s.out_c).expect("fold");
            let want = unfused(&x, xd, layout, &s, &w, &[0.0; 16][..s.out_c], &norm, true);
            // |Δy| ≤ Σ (|Δw||x| + |w||Δx| + |Δw||Δx|) with |Δw| ≤ s_w/2, |Δx| ≤ s_x/2 (no
            // clipping: the scale covers x); ReLU does not increase it
            let ones_x = vec![1.0f32; x.len()];
            let ones_w = vec![1.0f32; wf.len()];
            let sum_x = magnitude(&x, xd, layout, &s, &ones_w);
            let sum_w = magnitude(&ones_x, xd, layout, &s, &wf);
            let taps = magnitude(&ones_x, xd, layout, &s, &ones_w);
            let bound = |i: usize| {
                let c = channel(od, layout, i);
                let (dw, dx) = (w_scale[c] / 2.0, act_scale / 2.0);
                (dw * sum_x[i] + dx * sum_w[i] + dw * dx * taps[i]) * 1.001 + 1e-5
            };
            let (i, e) = worst(&got, &want, bound);
            assert!(
                e <= 0.0,
                "{s:?} {layout:?}: {} vs {} at {i} (bound {})",
                got[i],
                want[i],
                bound(i)
            );
            // the requantizing epilogue: within half an output step of the float output
            let out_scale = minmax_act_scale(&got);
            let mut q = vec![0i8; od.len()];
            f.forward_into(
                &x,
                xd,
                layout,
                ConvOut::Int8 {
                    out: &mut q,
                    scale: out_scale,
                },
            )
            .expect("int8 out");
            for (j, (&qv, &g)) in q.iter().zip(&got).enumerate() {
                assert!(
                    (qv as f32 * out_scale - g).abs() <= out_scale * 0.5001,
                    "{s:?}: requantized {qv} vs {g} at {j}"
                );
            }
        }
    }
}

fn channel(d: Dims, layout: Layout, i: usize) -> usize {
    match layout {
        Layout::Nchw => (i / (d.h * d.w)) % d.c,
        Layout::Nhwc => i % d.c,
    }
}

#[test]
fn bad_shapes_are_named_errors() {
    let mut rng = Rng::new(94);
    let s = ConvShape::square(4, 6, 3, 1, 1);
    let norm = bn(&mut rng, 6);
    let w = randn(&mut rng, s.weight_len(), 0.5);
    // a weight of the wrong size
    let e = FusedConv::from_conv_bn(s, &w[1..], None, &norm, ConvPrecision::F32, true)
        .expect_err("short weight");
    assert!(e.to_string().contains("conv"), "{e}");
    // BN of the wrong width
    assert!(fold_bn(&w, None, &bn(&mut rng, 5), 6).is_err());
    // groups that do not divide the channels
    let g = ConvShape { groups: 3, ..s };
    assert!(g
        .validate()
        .expect_err("groups")
        .to_string()
        .contains("groups 3 must divide"));
    let f = FusedConv::from_conv_bn(s, &w, None, &norm, ConvPrecision::F32, true).expect("fused");
    // input channels that do not match
    let xd = Dims {
        n: 1,
        c: 5,
        h: 6,
        w: 6,
    };
    let e = f
        .forward(&vec![0.0; xd.len()], xd, Layout::Nchw)
        .expect_err("channels");
    assert!(matches!(e, Error::ShapeMismatch { .. }), "{e}");
    // an input smaller than the kernel
    let tiny = ConvShape::square(4, 6, 5, 1, 0);
    let xd = Dims {
        n: 1,
        c: 4,
        h: 3,
        w: 8,
    };
    assert!(tiny
        .out_dims(xd)
        .expect_err("small")
        .to_string()
        .contains("smaller than the dilated kernel"));
    // a buffer that does not hold the dims
    let xd = Dims {
        n: 1,
        c: 4,
        h: 6,
        w: 6,
    };
    assert!(f
        .forward(&vec![0.0; xd.len() - 1], xd, Layout::Nchw)
        .is_err());
    // a bad int8 scale
    assert!(FusedConv::from_conv_bn(
        s,
        &w,
        None,
        &norm,
        ConvPrecision::Int8 { act_scale: 0.0 },
        true
    )
    .is_err());
}

/// torchvision-named tensors of a small ResNet: stem, layer1 (2 blocks), layer2 (stride 2 with
/// a downsample).
fn tiny_resnet(rng: &mut Rng) -> Vec<(String, HostTensor)> {
    let mut t = Vec::new();
    let conv = |t: &mut Vec<(String, HostTensor)>,
                rng: &mut Rng,
                name: &str,
                o: usize,
                i: usize,
                k: usize| {
        let fan = (i * k * k) as f32;
        t.push((
            format!("{name}.weight"),
            HostTensor::from_f32(
                vec![o, i, k, k],
                randn(rng, o * i * k * k, (2.0 / fan).sqrt()),
            )
            .expect("t"),
        ));
    };
    let norm = |t: &mut Vec<(String, HostTensor)>, rng: &mut Rng, name: &str, c: usize| {
        let b = bn(rng, c);
        for (k, v) in [
            ("weight", b.gamma),
            ("bias", b.beta),
            ("running_mean", b.mean),
            ("running_var", b.var),
        ] {
            t.push((
                format!("{name}.{k}"),
                HostTensor::from_f32(vec![c], v).expect("t"),
            ));
        }
    };
    conv(&mut t, rng, "conv1", 8, 3, 7);
    norm(&mut t, rng, "bn1", 8);
    for (l, b, i, o, down) in [
        (1, 0, 8, 8, false),
        (1, 1, 8, 8, false),
        (2, 0, 8, 16, true),
        (2, 1, 16, 16, false),
    ] {
        let p = format!("layer{l}.{b}");
        conv(&mut t, rng, &format!("{p}.conv1"), o, i, 3);
        norm(&mut t, rng, &format!("{p}.bn1"), o);
        conv(&mut t, rng, &format!("{p}.conv2"), o, o, 3);
        norm(&mut t, rng, &format!("{p}.bn2"), o);
        if down {
            conv(&mut t, rng, &format!("{p}.downsample.0"), o, i, 1);
            norm(&mut t, rng, &format!("{p}.downsample.1"), o);
        }
    }
    t
}

#[test]
fn resnet_blocks_from_torchvision_names_match_the_unfused_graph() {
    use ferroq::checkpoint::safetensors_io::{write_safetensors, SafetensorsWeights};
    let mut rng = Rng::new(95);
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("resnet.safetensors");
    let tensors = tiny_resnet(&mut rng);
    write_safetensors(&path, &tensors, None).expect("write");
    let src = SafetensorsWeights::open_files(std::slice::from_ref(&path)).expect("open");
    let mut stack = ResNetStack::load(&src).expect("load");
    assert_eq!(stack.blocks.len(), 4);
    assert!(stack.blocks[2].downsample.is_some() && stack.blocks[2].conv1.shape.stride == (2, 2));
    let xd = Dims {
        n: 2,
        c: 3,
        h: 32,
        w: 30,
    };
    let x = randn(&mut rng, xd.len(), 1.0);
    for layout in [Layout::Nchw, Layout::Nhwc] {
        let (want, wd) = stack.forward_reference(&x, xd, layout).expect("reference");
        assert_eq!(
            wd,
            Dims {
                n: 2,
                c: 16,
                h: 4,
                w: 4
            }
        );
        let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
        for (p, tol) in [
            (StackPrecision::F32, 1e-4),
            (StackPrecision::Bf16, 0.03),
            (StackPrecision::Int8, 0.08),
        ] {
            stack.set_precision(p, &x, xd, layout).expect("precision");
            let (got, gd) = stack.forward(&x, xd, layout).expect("forward");
            assert_eq!(gd, wd);
            let err = got
                .iter()
                .zip(&want)
                .fold(0f32, |m, (g, w)| m.max((g - w).abs()));
            assert!(
                err <= tol * scale,
                "{p:?} {layout:?}: max error {err} vs output scale {scale}"
            );
        }
        stack
            .set_precision(StackPrecision::F32, &x, xd, layout)
            .expect("f32");
    }
    // a checkpoint missing a BN statistic is a named error
    let partial: Vec<_> = tensors
        .into_iter()
        .filter(|(n, _)| n != "layer2.0.bn2.running_var")
        .collect();
    let p2 = dir.path().join("partial.safetensors");
    write_safetensors(&p2, &partial, None).expect("write");
    let e = ResNetStack::load(&SafetensorsWeights::open_files(&[p2]).expect("open"))
        .expect_err("missing");
    assert!(e.to_string().contains("layer2.0.bn2.running_var"), "{e}");
}

/// The INT8 conv's VNNI path (groups of at least 16 output channels on AVX-512 VNNI CPUs)
/// gives the same bits as the AVX2 / portable path, float and requantized outputs alike.
#[test]
fn int8_vnni_path_is_bit_identical_to_the_portable_one() {
    if !ferroq::backend::cpu::int8::vnni::available() {
        eprintln!("no AVX-512 VNNI on this CPU: the VNNI conv path is not exercised");
        return;
    }
    let mut rng = Rng::new(95);
    let shape = |in_c, out_c, k, s, p, groups| ConvShape {
        groups,
        ..ConvShape::square(in_c, out_c, k, s, p)
    };
    for (s, xd) in [
        (
            shape(3, 16, 7, 2, 3, 1),
            Dims {
                n: 2,
                c: 3,
                h: 19,
                w: 17,
            },
        ),
        (
            shape(32, 48, 3, 1, 1, 1),
            Dims {
                n: 1,
                c: 32,
                h: 9,
                w: 8,
            },
        ),
        (
            shape(16, 32, 1, 2, 0, 1),
            Dims {
                n: 2,
                c: 16,
                h: 10,
                w: 10,
            },
        ),
        (
            shape(64, 64, 3, 1, 1, 2),
            Dims {
                n: 1,
                c: 64,
                h: 7,
                w: 6,
            },
        ),
    ] {
        for (layout, relu) in [(Layout::Nchw, true), (Layout::Nhwc, false)] {
            let x = randn(&mut rng, xd.len(), 1.0);
            let w = randn(&mut rng, s.weight_len(), 0.3);
            let b = randn(&mut rng, s.out_c, 0.2);
            let prec = ConvPrecision::Int8 {
                act_scale: minmax_act_scale(&x),
            };
            let fast = FusedConv::new(s, &w, &b, prec, relu).expect("conv");
            let ConvWeights::Int8 { vnni, .. } = &fast.weights else {
                panic!("not int8")
            };
            assert_eq!(vnni.len(), s.groups, "{s:?}: groups not packed for VNNI");
            let mut slow = fast.clone();
            if let ConvWeights::Int8 { vnni, .. } = &mut slow.weights {
                vnni.clear();
            }
            let (a, od) = fast.forward(&x, xd, layout).expect("vnni");
            let (b2, _) = slow.forward(&x, xd, layout).expect("portable");
            assert!(
                a.iter().zip(&b2).all(|(u, v)| u.to_bits() == v.to_bits()),
                "{s:?} {layout:?}: float outputs differ"
            );
            let scale = minmax_act_scale(&a);
            let (mut qa, mut qb) = (vec![0i8; od.len()], vec![0i8; od.len()]);
            for (f, q) in [(&fast, &mut qa), (&slow, &mut qb)] {
                f.forward_into(&x, xd, layout, ConvOut::Int8 { out: q, scale })
                    .expect("int8 out");
            }
            assert_eq!(qa, qb, "{s:?} {layout:?}: int8 outputs differ");
        }
    }
}
