//! Throughput of the CPU matmul kernels on SmolLM2-135M's projection shapes, to see how far
//! each is from the machine's FMA peak without the rest of the model around it.
//!
//!   cargo run --release --example cpu_kernels [-- TOKENS]
//!
//! Prints GMAC/s (multiply-adds per second, all threads) per kernel and shape, best of 5, and
//! the single-thread peak of a register-only FMA loop for reference.

use ferroq::backend::cpu::dense::panels;
use ferroq::backend::cpu::int4::bf16;
use ferroq::engine::sampler::Rng;
use ferroq::quant::weight::{quantize_weight, WeightMethod, WeightQConfig, WeightScope};
use ferroq::quant::QDType;
use half::f16;
use std::time::Instant;

fn best_of(reps: usize, mut f: impl FnMut()) -> f64 {
    f();
    (0..reps)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min)
}

fn main() {
    let m: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(512);
    let mut rng = Rng::new(1);
    let mut randn = |n: usize| -> Vec<f32> { (0..n).map(|_| rng.next_f32() - 0.5).collect() };
    println!("tokens {m}, {} threads", rayon::current_num_threads());
    println!("| kernel | n × k | ms | GMAC/s |");
    println!("|---|---|---:|---:|");
    for (n, k) in [
        (576, 576),
        (192, 576),
        (1536, 576),
        (576, 1536),
        (49152, 576),
    ] {
        let w = randn(n * k);
        let x = randn(m * k);
        let mut out = vec![0f32; m * n];
        let macs = (m * n * k) as f64;
        let row = |name: &str, s: f64| {
            println!(
                "| {name} | {n} × {k} | {:.2} | {:.1} |",
                s * 1e3,
                macs / s / 1e9
            )
        };
        if panels::available() {
            let wf: Vec<f16> = w.iter().map(|&v| f16::from_f32(v)).collect();
            let p = panels::Panels::pack(&wf, n, k);
            row(
                "f16 panel",
                best_of(5, || panels::matmul(&mut out, &x, m, &p)),
            );
        }
        if bf16::available() {
            let cfg = WeightQConfig {
                dtype: QDType::Int4,
                scope: WeightScope::PerGroup(128),
                symmetric: true,
                method: WeightMethod::MinMax,
            };
            let q = quantize_weight(&w, n, k, &cfg).expect("quantize");
            if let Some(p) = bf16::PackedI4Bf16::pack(&q, n, k) {
                let mut xb = vec![0u16; m * k];
                bf16::round_to_bf16(&x, &mut xb);
                row("int4 bf16", best_of(5, || bf16::gemm(&mut out, &xb, m, &p)));
            }
        }
    }
}
