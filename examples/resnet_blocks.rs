//! Run a ResNet basic-block stack with ferroq's fused Conv+BN+ReLU op.
//!
//!   cargo run --release --example resnet_blocks [-- WEIGHTS.safetensors [SIZE]]
//!
//! With a torchvision-named checkpoint (e.g. resnet18's state_dict saved with
//! `safetensors.torch.save_file`), the stem and every `layer*` block in it run; without one, a
//! random ResNet-18-style stem + layer1 + layer2 is written to a temporary file first. The
//! stack runs fused in f32, BF16 and INT8 (per-conv activation scales calibrated on the input)
//! against the unfused graph (conv, BN, ReLU as separate passes, f64 reference convolutions),
//! then times fused against unfused conv → bn → relu on ResNet-50 layer shapes at batch 1.

use ferroq::checkpoint::safetensors_io::{write_safetensors, SafetensorsWeights};
use ferroq::engine::sampler::Rng;
use ferroq::tensor::HostTensor;
use ferroq::vision::conv::{
    batch_norm_ref, BatchNorm, ConvPrecision, ConvShape, Dims, FusedConv, Layout,
};
use ferroq::vision::resnet::{ResNetStack, StackPrecision};
use std::path::PathBuf;
use std::time::Instant;

fn random_bn(rng: &mut Rng, c: usize) -> BatchNorm {
    BatchNorm {
        gamma: rng.normals(c, 0.5).iter().map(|v| 1.0 + v * 0.2).collect(),
        beta: rng.normals(c, 0.1),
        mean: rng.normals(c, 0.1),
        var: rng.normals(c, 0.3).iter().map(|v| 1.0 + v * v).collect(),
        eps: 1e-5,
    }
}

/// A random ResNet-18-style stem + layer1 + layer2 under torchvision's names.
fn random_resnet(rng: &mut Rng) -> Vec<(String, HostTensor)> {
    let mut t = Vec::new();
    let conv = |t: &mut Vec<(String, HostTensor)>,
                rng: &mut Rng,
                name: &str,
                o: usize,
                i: usize,
                k: usize| {
        let w = rng.normals(o * i * k * k, (2.0 / (i * k * k) as f32).sqrt());
        t.push((
            format!("{name}.weight"),
            HostTensor::from_f32(vec![o, i, k, k], w).expect("tensor"),
        ));
    };
    let norm = |t: &mut Vec<(String, HostTensor)>, rng: &mut Rng, name: &str, c: usize| {
        let b = random_bn(rng, c);
        for (k, v) in [
            ("weight", b.gamma),
            ("bias", b.beta),
            ("running_mean", b.mean),
            ("running_var", b.var),
        ] {
            t.push((
                format!("{name}.{k}"),
                HostTensor::from_f32(vec![c], v).expect("tensor"),
            ));
        }
    };
    conv(&mut t, rng, "conv1", 64, 3, 7);
    norm(&mut t, rng, "bn1", 64);
    for (l, b, i, o) in [
        (1, 0, 64, 64),
        (1, 1, 64, 64),
        (2, 0, 64, 128),
        (2, 1, 128, 128),
    ] {
        let p = format!("layer{l}.{b}");
        conv(&mut t, rng, &format!("{p}.conv1"), o, i, 3);
        norm(&mut t, rng, &format!("{p}.bn1"), o);
        conv(&mut t, rng, &format!("{p}.conv2"), o, o, 3);
        norm(&mut t, rng, &format!("{p}.bn2"), o);
        if i != o {
            conv(&mut t, rng, &format!("{p}.downsample.0"), o, i, 1);
            norm(&mut t, rng, &format!("{p}.downsample.1"), o);
        }
    }
    t
}

fn best_of(reps: usize, mut f: impl FnMut()) -> f64 {
    (0..reps)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min)
}

fn main() -> ferroq::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let size: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(112);
    let mut rng = Rng::new(2026);
    let _tmp;
    let path = match args.first() {
        Some(p) => PathBuf::from(p),
        None => {
            let dir = std::env::temp_dir().join(format!("ferroq-resnet-{}", std::process::id()));
            std::fs::create_dir_all(&dir).map_err(|e| ferroq::Error::io(&dir, e))?;
            let p = dir.join("resnet.safetensors");
            write_safetensors(&p, &random_resnet(&mut rng), None)?;
            _tmp = RemoveOnDrop(dir);
            p
        }
    };
    let src = SafetensorsWeights::open_files(std::slice::from_ref(&path))?;
    let mut stack = ResNetStack::load(&src)?;
    println!(
        "{}: stem + {} basic blocks",
        path.display(),
        stack.blocks.len()
    );
    let xd = Dims {
        n: 1,
        c: 3,
        h: size,
        w: size,
    };
    let x = rng.normals(xd.len(), 1.0);
    let layout = Layout::Nhwc;
    let t = Instant::now();
    let (want, od) = stack.forward_reference(&x, xd, layout)?;
    println!(
        "unfused reference (f64 direct conv): output {od:?} in {:.2}s",
        t.elapsed().as_secs_f64()
    );
    let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
    println!("| precision | fused stack ms | max error / max |output| |\n|---|---|---|");
    for p in [
        StackPrecision::F32,
        StackPrecision::Bf16,
        StackPrecision::Int8,
    ] {
        stack.set_precision(p, &x, xd, layout)?;
        let mut got = Vec::new();
        let secs = best_of(3, || {
            got = stack
                .forward(&x, xd, layout)
                .map(|r| r.0)
                .unwrap_or_default()
        });
        let err = got
            .iter()
            .zip(&want)
            .fold(0f32, |m, (g, w)| m.max((g - w).abs()));
        println!("| {p:?} | {:.1} | {:.2e} |", 1e3 * secs, err / scale);
    }

    // fused vs three passes on ResNet-50 shapes (batch 1, NHWC, f32)
    println!("\nResNet-50 layer shapes, batch 1, NHWC, f32 weights:");
    println!("| conv (in→out, k, stride, HxW) | fused ms | conv, bn, relu ms | speed-up |\n|---|---|---|---|");
    for (in_c, out_c, k, s, hw) in [
        (64, 64, 1, 1, 56),
        (64, 64, 3, 1, 56),
        (128, 128, 3, 1, 28),
        (256, 256, 3, 1, 14),
        (512, 512, 3, 1, 7),
        (256, 512, 1, 2, 56),
    ] {
        let shape = ConvShape::square(in_c, out_c, k, s, k / 2);
        let xd = Dims {
            n: 1,
            c: in_c,
            h: hw,
            w: hw,
        };
        let x = rng.normals(xd.len(), 1.0);
        let w = rng.normals(shape.weight_len(), 0.05);
        let bn = random_bn(&mut rng, out_c);
        let fused = FusedConv::from_conv_bn(shape, &w, None, &bn, ConvPrecision::F32, true)?;
        let plain = FusedConv::new(shape, &w, &vec![0.0; out_c], ConvPrecision::F32, false)?;
        let od = shape.out_dims(xd)?;
        let t_fused = best_of(5, || {
            let _ = fused.forward(&x, xd, layout);
        });
        let t_unfused = best_of(5, || {
            if let Ok((mut y, _)) = plain.forward(&x, xd, layout) {
                batch_norm_ref(&mut y, od, layout, &bn);
                y.iter_mut().for_each(|v| *v = v.max(0.0));
            }
        });
        println!(
            "| {in_c}→{out_c}, {k}x{k}, /{s}, {hw}x{hw} | {:.2} | {:.2} | {:.2}x |",
            1e3 * t_fused,
            1e3 * t_unfused,
            t_unfused / t_fused
        );
    }
    Ok(())
}

struct RemoveOnDrop(PathBuf);
impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
