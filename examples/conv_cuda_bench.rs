//! Fused Conv + BN + ReLU on CUDA against the unfused three-kernel sequence, on ResNet-50 layer
//! shapes at batch 1 and 32 (NHWC, f32 activations in and out, BF16 or INT8 weights). Runs on
//! the device machine (scripts/gpu-check.sh bench); scripts/gpu/conv_torch.py times PyTorch's
//! cuDNN on the same shapes there.
//!
//!   cargo run --release --example conv_cuda_bench [-- ITERS]
//!
//! Prints a markdown table: milliseconds per call (mean of ITERS after 3 warm-ups, the stream
//! synchronised around the loop) and effective GB/s (x read + weights read + output written,
//! once each).

use ferroq::backend::cuda::runtime::Gpu;
use ferroq::engine::sampler::Rng;
use ferroq::vision::conv::{
    minmax_act_scale, BatchNorm, ConvPrecision, ConvShape, Dims, FusedConv, Layout,
};
use ferroq::vision::cuda::{CudaConv, CudaConvOut, UnfusedBnRelu};
use std::time::Instant;

/// Mean seconds per call of `f` over `iters` calls after 3 warm-ups.
fn time(gpu: &Gpu, iters: usize, mut f: impl FnMut() -> ferroq::Result<()>) -> anyhow::Result<f64> {
    for _ in 0..3 {
        f()?;
    }
    gpu.stream.synchronize()?;
    let t = Instant::now();
    for _ in 0..iters {
        f()?;
    }
    gpu.stream.synchronize()?;
    Ok(t.elapsed().as_secs_f64() / iters as f64)
}

fn main() -> anyhow::Result<()> {
    let iters: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let mut gpu = Gpu::new(0)?;
    println!(
        "device: {} ({}), {iters} iterations",
        gpu.info.name, gpu.info.arch
    );
    println!("| conv (in→out, k, stride, H×W) | batch | fused bf16 ms | GB/s | fused int8 ms | GB/s | unfused bf16 ms | fused speed-up |");
    println!("|---|---|---|---|---|---|---|---|");
    // (in, out, k, stride, input size): ResNet-50's stem and one conv of each kind per stage
    let shapes = [
        (3, 64, 7, 2, 224),
        (64, 64, 1, 1, 56),
        (64, 64, 3, 1, 56),
        (64, 256, 1, 1, 56),
        (128, 128, 3, 2, 56),
        (256, 256, 3, 1, 14),
        (256, 1024, 1, 1, 14),
        (512, 512, 3, 1, 7),
        (512, 2048, 1, 1, 7),
    ];
    let mut rng = Rng::new(7);
    for (cin, cout, k, s, hw) in shapes {
        for batch in [1, 32] {
            let shape = ConvShape::square(cin, cout, k, s, k / 2);
            let xd = Dims {
                n: batch,
                c: cin,
                h: hw,
                w: hw,
            };
            let od = shape.out_dims(xd)?;
            let x = rng.normals(xd.len(), 1.0);
            let w = rng.normals(shape.weight_len(), 0.05);
            let b = rng.normals(cout, 0.1);
            let bn = BatchNorm {
                gamma: vec![1.1; cout],
                beta: vec![0.1; cout],
                mean: vec![0.05; cout],
                var: vec![0.9; cout],
                eps: 1e-5,
            };
            let fused_b =
                FusedConv::from_conv_bn(shape, &w, Some(&b), &bn, ConvPrecision::Bf16, true)?;
            let fused_q = FusedConv::from_conv_bn(
                shape,
                &w,
                Some(&b),
                &bn,
                ConvPrecision::Int8 {
                    act_scale: minmax_act_scale(&x),
                },
                true,
            )?;
            let plain = FusedConv::new(shape, &w, &b, ConvPrecision::Bf16, false)?;
            let (db, dq, dp) = (
                CudaConv::new(&mut gpu, &fused_b)?,
                CudaConv::new(&mut gpu, &fused_q)?,
                CudaConv::new(&mut gpu, &plain)?,
            );
            let post = UnfusedBnRelu::new(&mut gpu, &bn, true)?;
            let xdev = gpu.stream.clone_htod(&x)?;
            let mut out = gpu.stream.alloc_zeros::<f32>(od.len())?;
            let layout = Layout::Nhwc;
            let run = |c: &CudaConv, out: &mut _| {
                c.forward(&gpu, &xdev, xd, layout, CudaConvOut::F32(out))
                    .map(|_| ())
            };
            let tb = time(&gpu, iters, || run(&db, &mut out))?;
            let tq = time(&gpu, iters, || run(&dq, &mut out))?;
            let tu = time(&gpu, iters, || {
                run(&dp, &mut out)?;
                post.apply(&gpu, &mut out, od, layout)
            })?;
            let act_bytes = (xd.len() + od.len()) * 4;
            let gbs = |wbytes: usize, t: f64| (act_bytes + wbytes) as f64 / t / 1e9;
            println!(
                "| {cin}→{cout}, {k}×{k}, /{s}, {hw}×{hw} | {batch} | {:.3} | {:.0} | {:.3} | {:.0} | {:.3} | {:.2}× |",
                tb * 1e3,
                gbs(shape.weight_len() * 2, tb),
                tq * 1e3,
                gbs(shape.weight_len(), tq),
                tu * 1e3,
                tu / tb
            );
        }
    }
    Ok(())
}
