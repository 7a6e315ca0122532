//! ferroq's GPU linears on Llama-3.1-8B's projection shapes (and 8192³) for M ∈ {1, 16, 128,
//! 512, 2048, 8192} tokens: BF16, W8A8 int8 (dynamic per-token activations), FP8
//! (sm_89+; on Hopper both on wgmma and, for comparison, on mma.sync) and W4A16 (tensor cores
//! past M = 8). Each figure is the whole linear as the model runs it — activation
//! quantization included for W8A8 / FP8 — so it is what a forward pass pays; the PyTorch peers
//! (scripts/gpu/gemm_torch.py: torch._int_mm, torch._scaled_mm, torch.matmul) time the bare
//! GEMM on pre-quantized operands. Runs on the device (scripts/gpu-check.sh bench).
//!
//!   cargo run --release --example cuda_gemm_bench [-- ITERS]
//!
//! Prints a markdown table of microseconds per call and TOPS (2·M·N·K / time), then the fused
//! activation quantizers (RMSNorm after the residual add → int8, SiLU·up → int8, the same with
//! the online Hadamard rotation, and → E4M3) in GB/s of compulsory traffic against the copy
//! bandwidth measured in the same run.

use ferroq::backend::cuda::backend::CudaBackend;
use ferroq::backend::cuda::tiles::TensorCores;
use ferroq::backend::linear::{Linear, LinearWeight};
use ferroq::backend::prelude::*;
use ferroq::engine::sampler::Rng;
use ferroq::quant::weight::{quantize_weight, WeightMethod, WeightQConfig, WeightScope};
use ferroq::quant::{ActQuant, ActSpec, Phase, QDType};
use ferroq::tensor::HostTensor;
use std::sync::Arc;
use std::time::Instant;

/// Uniform values in [-0.5, 0.5) from the project's seeded generator.
fn random(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = Rng::new(seed);
    (0..n).map(|_| rng.next_f32() - 0.5).collect()
}

#[derive(Clone, Copy, Debug)]
enum Kind {
    /// cuBLAS where its library loads
    Bf16,
    /// ferroq's own tensor-core kernel (cuBLAS switched off)
    Bf16Own,
    W8a8,
    Fp8,
    /// on Hopper: the same on mma.sync instead of wgmma, for the comparison
    W8a8Mma,
    Fp8Mma,
    W4a16,
}

fn main() -> anyhow::Result<()> {
    let iters: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let mut b = CudaBackend::new(0)?;
    let hopper = b.set_wgmma(true) == TensorCores::Wgmma;
    println!("{}; {iters} iterations per point", b.describe());
    println!("| kind | M | N × K | µs | TOPS |");
    println!("|---|---|---|---|---|");
    // (N, K): q, kv (k and v each), o, gate/up (each), down; and a square
    let shapes = [
        (4096, 4096),
        (1024, 4096),
        (14336, 4096),
        (4096, 14336),
        (8192, 8192),
    ];
    for (n, k) in shapes {
        let w = random(n * k, (n * 31 + k) as u64);
        for kind in [
            Kind::Bf16,
            Kind::Bf16Own,
            Kind::W8a8,
            Kind::Fp8,
            Kind::W8a8Mma,
            Kind::Fp8Mma,
            Kind::W4a16,
        ] {
            let mma = matches!(kind, Kind::W8a8Mma | Kind::Fp8Mma);
            if mma && !hopper {
                continue; // mma.sync is what W8a8 / Fp8 already ran
            }
            b.set_wgmma(!mma);
            let cublas = b.set_cublas(!matches!(kind, Kind::Bf16Own))?;
            let label = match kind {
                Kind::Bf16 if cublas => "Bf16 (cuBLAS)".to_string(),
                Kind::Bf16 => "Bf16 (no cuBLAS: own)".to_string(),
                Kind::Bf16Own => "Bf16 (own)".to_string(),
                Kind::W8a8 | Kind::Fp8 if hopper => format!("{kind:?} (wgmma)"),
                Kind::W8a8Mma => "W8a8 (mma.sync)".to_string(),
                Kind::Fp8Mma => "Fp8 (mma.sync)".to_string(),
                other => format!("{other:?}"),
            };
            let int = |dtype, scope| WeightQConfig {
                dtype,
                scope,
                symmetric: true,
                method: WeightMethod::MinMax,
            };
            let (weight, act) = match kind {
                Kind::Bf16 | Kind::Bf16Own => (
                    LinearWeight::Dense(Arc::new(b.upload_matrix(
                        &HostTensor::from_f32(vec![n, k], w.clone())?,
                        ferroq::tensor::DType::BF16,
                    )?)),
                    ActSpec::NONE,
                ),
                Kind::W8a8 | Kind::Fp8 | Kind::W8a8Mma | Kind::Fp8Mma => {
                    let dtype = if matches!(kind, Kind::W8a8 | Kind::W8a8Mma) {
                        QDType::Int8
                    } else {
                        QDType::Fp8E4M3
                    };
                    let q = quantize_weight(&w, n, k, &int(dtype, WeightScope::PerChannel))?;
                    match b.upload_quant(&q, n, k) {
                        Ok(d) => (
                            LinearWeight::Quant(d),
                            ActSpec {
                                policy: ActQuant::Dynamic,
                                dtype,
                                symmetric: true,
                            },
                        ),
                        Err(e) => {
                            println!("| {label} | – | {n} × {k} | {e} | – |");
                            continue;
                        }
                    }
                }
                Kind::W4a16 => {
                    let q =
                        quantize_weight(&w, n, k, &int(QDType::Int4, WeightScope::PerGroup(128)))?;
                    (
                        LinearWeight::Quant(b.upload_quant(&q, n, k)?),
                        ActSpec::NONE,
                    )
                }
            };
            let lin = Linear {
                name: label.clone(),
                in_features: k,
                out_features: n,
                weight,
                bias: None,
                act,
            };
            for m in [1usize, 16, 128, 512, 2048, 8192] {
                if n == 8192 && m != 8192 {
                    continue; // the square is the large-M reference point only
                }
                let x = b.upload(&random(m * k, m as u64))?;
                let mut out = b.alloc(m * n)?;
                let phase = if m == 1 {
                    Phase::Decode
                } else {
                    Phase::Prefill
                };
                for _ in 0..3 {
                    b.linear(&mut out, &x, &lin, m, phase)?;
                }
                let mut host = [0f32; 1];
                b.read(&out, 0, &mut host)?; // synchronises
                let t = Instant::now();
                for _ in 0..iters {
                    b.linear(&mut out, &x, &lin, m, phase)?;
                }
                b.read(&out, 0, &mut host)?;
                let s = t.elapsed().as_secs_f64() / iters as f64;
                println!(
                    "| {label} | {m} | {n} × {k} | {:.1} | {:.1} |",
                    s * 1e6,
                    2.0 * (m * n * k) as f64 / s / 1e12
                );
            }
        }
    }
    quantizer_bandwidth(iters)
}

/// The fused quantizers on 4096 rows of Llama-3.1-8B's hidden (4096) and FFN (14336) widths.
/// Compulsory bytes per element: the two f32 inputs read, the updated f32 written back (the
/// residual stream, or SiLU·up), one code byte written — 13.
fn quantizer_bandwidth(iters: usize) -> anyhow::Result<()> {
    use cudarc::driver::{sys, LaunchConfig, PushKernelArg};
    use ferroq::backend::cuda::kernels::Kernel;
    use ferroq::backend::cuda::runtime::Gpu;
    let mut g = Gpu::new(0)?;
    let bw = g.copy_bandwidth()?;
    println!();
    println!("copy bandwidth (read + write): {bw:.0} GB/s");
    println!("| fused quantizer | rows × dim | µs | GB/s | % of copy |");
    println!("|---|---|---|---|---|");
    let fp8 = g.info.capability >= (8, 9);
    let rows = 4096usize;
    for dim in [4096usize, 14336] {
        let n = rows * dim;
        let mut x = g.stream.clone_htod(&random(n, 1))?;
        let y = g.stream.clone_htod(&random(n, 2))?;
        let w = g.stream.clone_htod(&random(dim, 3))?;
        let mut q = g.stream.alloc_zeros::<u8>(n)?;
        let mut scale = g.stream.alloc_zeros::<f32>(rows)?;
        let mut zp = g.stream.alloc_zeros::<i32>(rows)?;
        let block = 1i32 << dim.trailing_zeros().min(12);
        let (dim_i, eps, sym, st_s, st_z) = (dim as i32, 1e-5f32, 0i32, 0f32, 0i32);
        for kern in [
            Kernel::RmsNormQuantI8,
            Kernel::SiluMulQuantI8,
            Kernel::RotateQuantI8,
            Kernel::RmsNormQuantFp8,
        ] {
            if kern == Kernel::RmsNormQuantFp8 && !fp8 {
                continue;
            }
            let f = g.function(kern)?;
            let smem = if kern == Kernel::RotateQuantI8 {
                dim * 4
            } else {
                0
            };
            if smem > 0 {
                f.set_attribute(
                    sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                    smem as i32,
                )?;
            }
            let cfg = LaunchConfig {
                grid_dim: (rows as u32, 1, 1),
                block_dim: (if smem > 0 { 512 } else { 256 }, 1, 1),
                shared_mem_bytes: smem as u32,
            };
            let mode = 1i32; // rotate_quant: the norm after the residual add
            let mut run = || -> anyhow::Result<()> {
                let mut b = g.stream.launch_builder(&f);
                b.arg(&mut q).arg(&mut scale);
                if kern != Kernel::RmsNormQuantFp8 {
                    b.arg(&mut zp);
                }
                match kern {
                    Kernel::SiluMulQuantI8 => b.arg(&mut x).arg(&y).arg(&dim_i),
                    Kernel::RotateQuantI8 => b
                        .arg(&mut x)
                        .arg(&y)
                        .arg(&w)
                        .arg(&mode)
                        .arg(&dim_i)
                        .arg(&block)
                        .arg(&eps),
                    _ => b.arg(&mut x).arg(&y).arg(&w).arg(&dim_i).arg(&eps),
                };
                if kern != Kernel::RmsNormQuantFp8 {
                    b.arg(&sym);
                }
                b.arg(&st_s);
                if kern != Kernel::RmsNormQuantFp8 {
                    b.arg(&st_z);
                }
                // SAFETY: each kernel's argument list in quant.cu (q, scale, [zp], sources,
                // [mode], dim, [block], [eps], [symmetric], static scale, [static zp]) for
                // buffers of rows × dim, one block per row, the rotation's row in shared memory.
                unsafe { b.launch(cfg) }?;
                Ok(())
            };
            run()?;
            g.stream.synchronize()?;
            let t = Instant::now();
            for _ in 0..iters {
                run()?;
            }
            g.stream.synchronize()?;
            let s = t.elapsed().as_secs_f64() / iters as f64;
            let gbs = 13.0 * n as f64 / s / 1e9;
            println!(
                "| {kern:?} | {rows} × {dim} | {:.1} | {gbs:.0} | {:.0}% |",
                s * 1e6,
                100.0 * gbs / bw
            );
        }
    }
    Ok(())
}
