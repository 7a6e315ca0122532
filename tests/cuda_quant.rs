//! The quantized CUDA kernels against the CPU reference: the W8A8 tensor-core GEMM and
//! the decode GEMV give int32 sums bit-identical to the CPU's before the epilogue, the same f32
//! after it, and agree with each other; the fused RMSNorm (+ residual) → int8 and SiLU·up → int8
//! kernels match `quant::quantize_rows_i8` except at rounding boundaries (counted, at most one
//! step), with scales within one ulp. Needs a GPU: `#[ignore]`d, run by scripts/gpu-check.sh.

mod common;

use common::randn;
use cudarc::driver::{CudaSlice, DeviceRepr, LaunchConfig, PushKernelArg};
use ferroq::backend::cpu::dense::Isa;
use ferroq::backend::cpu::int8 as qgemm;
use ferroq::backend::cpu::CpuBackend;
use ferroq::backend::cuda::kernels::Kernel;
use ferroq::backend::cuda::runtime::Gpu;
use ferroq::backend::prelude::*;
use ferroq::engine::sampler::Rng;
use ferroq::quant::quantize_rows_i8;

fn gpu() -> Gpu {
    Gpu::new(0).unwrap_or_else(|e| panic!("these tests need a CUDA GPU: {e}"))
}

fn up<T: DeviceRepr>(g: &Gpu, v: &[T]) -> CudaSlice<T> {
    g.stream.clone_htod(v).expect("upload")
}

/// Uniform int8 in [lo, 127].
fn i8s(rng: &mut Rng, n: usize, lo: i32) -> Vec<i8> {
    (0..n)
        .map(|_| (lo + (rng.next_u64() % (128 - lo) as u64) as i32) as i8)
        .collect()
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn w8a8_gemm_and_gemv_match_the_cpu_bit_for_bit() {
    let mut g = gpu();
    let mut rng = Rng::new(21);
    for (m, n, k) in [
        (1, 1536, 576),
        (5, 100, 64),
        (16, 576, 1536),
        (37, 64, 16),
        (130, 1000, 576),
        (64, 7, 1552),
        // several 128 x 128 tiles, partial in m and n, 16 bytes past the last 64-byte stage
        (300, 520, 1040),
        // more k stages than wgmma's pipeline is deep, the last one partial
        (256, 256, 4112),
    ] {
        // activations use the full asymmetric range, weights the symmetric one
        let (qa, qw) = (i8s(&mut rng, m * k, -128), i8s(&mut rng, n * k, -127));
        let a_scale: Vec<f32> = randn(&mut rng, m, 0.01)
            .iter()
            .map(|v| v.abs() + 1e-3)
            .collect();
        let a_zp: Vec<i32> = (0..m).map(|i| (i as i32 * 37) % 255 - 128).collect();
        let w_scale: Vec<f32> = randn(&mut rng, n, 0.01)
            .iter()
            .map(|v| v.abs() + 1e-3)
            .collect();
        let colsum: Vec<i32> = qw
            .chunks(k)
            .map(|r| r.iter().map(|&v| v as i32).sum())
            .collect();
        let bias = randn(&mut rng, n, 1.0);
        let want_acc = qgemm::gemm_i8_i32(Isa::detect(), &qa, &qw, m, n, k);
        let mut want = vec![0f32; m * n];
        qgemm::gemm_i8_f32(
            Isa::detect(),
            &mut want,
            &qa,
            &a_scale,
            &a_zp,
            &qw,
            &w_scale,
            &colsum,
            Some(&bias),
            m,
            n,
            k,
        );
        let (qad, qwd) = (up(&g, &qa), up(&g, &qw));
        let (asd, azd, wsd, csd, bd) = (
            up(&g, &a_scale),
            up(&g, &a_zp),
            up(&g, &w_scale),
            up(&g, &colsum),
            up(&g, &bias),
        );
        let (mi, ni, ki) = (m as i32, n as i32, k as i32);
        let mut kernels = vec![Kernel::GemmW8a8];
        if m <= 16 {
            kernels.push(Kernel::GemvW8a8);
        }
        if g.has_wgmma().expect("wgmma") {
            kernels.push(Kernel::GemmW8a8Wg);
        }
        for kern in kernels {
            let cfg = kern.gemm_launch(m, n).expect("geometry");
            let mut out = g.stream.alloc_zeros::<f32>(m * n).expect("alloc");
            let mut acc = g.stream.alloc_zeros::<i32>(m * n).expect("alloc");
            let f = g.function(kern).expect("kernel");
            let mut b = g.stream.launch_builder(&f);
            b.arg(&mut out)
                .arg(&mut acc)
                .arg(&qad)
                .arg(&qwd)
                .arg(&asd)
                .arg(&azd)
                .arg(&wsd)
                .arg(&csd)
                .arg(&bd);
            b.arg(&mi).arg(&ni).arg(&ki);
            // SAFETY: the argument list of gemm_w8a8 / gemv_w8a8 / gemm_w8a8_wg (the last only
            // on sm_90a, its shared memory opted in by Gpu::function); buffers sized m×k, n×k,
            // m×n; k is a multiple of 16.
            unsafe { b.launch(cfg) }.expect("launch");
            let got_acc: Vec<i32> = g.stream.clone_dtoh(&acc).expect("acc");
            assert_eq!(got_acc, want_acc, "{kern:?} {m}x{n}x{k}: int32 sums differ");
            let got: Vec<f32> = g.stream.clone_dtoh(&out).expect("out");
            for (i, (a, b)) in got.iter().zip(&want).enumerate() {
                assert!(
                    (a - b).abs() <= 1e-6 * b.abs().max(1.0),
                    "{kern:?} {m}x{n}x{k} at {i}: gpu {a} cpu {b}"
                );
            }
        }
    }
}

/// Launch a fused quant kernel over `rows` rows of `dim`; returns (q, scale, zp).
#[allow(clippy::too_many_arguments)]
fn run_quant(
    g: &mut Gpu,
    kern: Kernel,
    rows: usize,
    dim: usize,
    sym: bool,
    stat: (f32, i32),
    bufs: &mut [&mut CudaSlice<f32>],
    consts: &[&CudaSlice<f32>],
    eps: Option<f32>,
) -> (Vec<i8>, Vec<f32>, Vec<i32>) {
    let mut q = g.stream.alloc_zeros::<i8>(rows * dim).expect("alloc");
    let mut s = g.stream.alloc_zeros::<f32>(rows).expect("alloc");
    let mut z = g.stream.alloc_zeros::<i32>(rows).expect("alloc");
    let f = g.function(kern).expect("kernel");
    let (dim_i, sym_i) = (dim as i32, i32::from(sym));
    let mut b = g.stream.launch_builder(&f);
    b.arg(&mut q).arg(&mut s).arg(&mut z);
    for x in bufs.iter_mut() {
        b.arg(&mut **x);
    }
    for c in consts {
        b.arg(*c);
    }
    b.arg(&dim_i);
    let e = eps.unwrap_or(0.0);
    if eps.is_some() {
        b.arg(&e);
    }
    b.arg(&sym_i).arg(&stat.0).arg(&stat.1);
    let cfg = LaunchConfig {
        grid_dim: (rows as u32, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    };
    // SAFETY: the caller passes the kernel's pointer arguments in order.
    unsafe { b.launch(cfg) }.expect("launch");
    (
        g.stream.clone_dtoh(&q).expect("q"),
        g.stream.clone_dtoh(&s).expect("s"),
        g.stream.clone_dtoh(&z).expect("z"),
    )
}

/// Compare with the CPU's quantization of `want_rows`: equal except rounding-boundary cases
/// (at most one step, at most 0.1% of values); scales within one ulp, zero points equal or off
/// by one with the scale.
fn check_quant(
    what: &str,
    got: &(Vec<i8>, Vec<f32>, Vec<i32>),
    want_rows: &[f32],
    rows: usize,
    dim: usize,
    sym: bool,
    stat: Option<(f32, i32)>,
) {
    let (mut q, mut s, mut z) = (vec![0i8; rows * dim], vec![0f32; rows], vec![0i32; rows]);
    quantize_rows_i8(want_rows, rows, dim, sym, stat, &mut q, &mut s, &mut z);
    for r in 0..rows {
        let ulps = (got.1[r].to_bits() as i64 - s[r].to_bits() as i64).abs();
        assert!(ulps <= 1, "{what}: row {r} scale {} vs {}", got.1[r], s[r]);
        assert!(
            (got.2[r] - z[r]).abs() <= 1,
            "{what}: row {r} zp {} vs {}",
            got.2[r],
            z[r]
        );
    }
    let mut boundary = 0;
    for (i, (&a, &b)) in got.0.iter().zip(&q).enumerate() {
        if a != b {
            assert!(
                (a as i32 - b as i32).abs() <= 1,
                "{what}: value {i}: {a} vs {b}"
            );
            boundary += 1;
        }
    }
    println!(
        "{what}: {boundary} of {} values on a rounding boundary",
        q.len()
    );
    assert!(
        boundary * 1000 <= q.len(),
        "{what}: {boundary} mismatches of {}",
        q.len()
    );
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn fused_norm_and_silu_quant_match_the_cpu() {
    let mut g = gpu();
    let cpu = CpuBackend::new();
    let mut rng = Rng::new(22);
    for (rows, dim) in [(1, 576), (7, 4096), (33, 1536), (3, 1000)] {
        let (x, y, w) = (
            randn(&mut rng, rows * dim, 2.0),
            randn(&mut rng, rows * dim, 1.0),
            randn(&mut rng, dim, 1.0),
        );
        let sum: Vec<f32> = x.iter().zip(&y).map(|(a, b)| a + b).collect();
        let mut normed = vec![0f32; rows * dim];
        cpu.rms_norm(&mut normed, &sum, &w, rows, dim, 1e-5)
            .expect("cpu");
        for (sym, stat) in [(false, None), (true, None), (false, Some((0.02f32, 3i32)))] {
            let (mut xd, yd, wd) = (up(&g, &x), up(&g, &y), up(&g, &w));
            let st = stat.unwrap_or((0.0, 0));
            let got = run_quant(
                &mut g,
                Kernel::RmsNormQuantI8,
                rows,
                dim,
                sym,
                st,
                &mut [&mut xd],
                &[&yd, &wd],
                Some(1e-5),
            );
            let resid: Vec<f32> = g.stream.clone_dtoh(&xd).expect("x");
            assert_eq!(resid, sum, "the residual add");
            check_quant(
                &format!("norm+quant {rows}x{dim} sym {sym} static {stat:?}"),
                &got,
                &normed,
                rows,
                dim,
                sym,
                stat,
            );
        }
        // SiLU(gate) * up → int8
        let mut act = x.clone();
        cpu.silu_mul(&mut act, &y, rows * dim).expect("cpu");
        let (gd, ud) = (up(&g, &x), up(&g, &y));
        let got = run_quant(
            &mut g,
            Kernel::SiluMulQuantI8,
            rows,
            dim,
            false,
            (0.0, 0),
            &mut [],
            &[&gd, &ud],
            None,
        );
        check_quant(
            &format!("silu+quant {rows}x{dim}"),
            &got,
            &act,
            rows,
            dim,
            false,
            None,
        );
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn fp8_gemm_and_quant_match_the_cpu() {
    use ferroq::quant::formats::Fp8;
    use ferroq::quant::{fp8_table, quantize_rows_fp8};
    let mut g = gpu();
    assert!(
        g.info.capability >= (8, 9),
        "FP8 tensor cores need sm_89+, this is {}",
        g.info.arch
    );
    let lut = fp8_table();
    let mut rng = Rng::new(23);
    for (m, n, k) in [
        (1, 1536, 576),
        (37, 100, 64),
        (130, 33, 1552),
        (300, 70, 1040),
        (256, 136, 4112),
    ] {
        let codes = |rng: &mut Rng, len: usize| -> Vec<u8> {
            randn(rng, len, 300.0)
                .into_iter()
                .map(|v| Fp8::E4M3.encode(v))
                .collect()
        };
        let (qa, qw) = (codes(&mut rng, m * k), codes(&mut rng, n * k));
        let a_scale: Vec<f32> = randn(&mut rng, m, 0.01)
            .iter()
            .map(|v| v.abs() + 1e-3)
            .collect();
        let w_scale: Vec<f32> = randn(&mut rng, n, 0.01)
            .iter()
            .map(|v| v.abs() + 1e-3)
            .collect();
        let bias = randn(&mut rng, n, 1.0);
        let (mut want, mut mag) = (vec![0f64; m * n], vec![0f64; m * n]);
        for i in 0..m {
            for j in 0..n {
                for t in 0..k {
                    let p = lut[qa[i * k + t] as usize] as f64 * lut[qw[j * k + t] as usize] as f64;
                    want[i * n + j] += p;
                    mag[i * n + j] += p.abs();
                }
                let s = a_scale[i] as f64 * w_scale[j] as f64;
                want[i * n + j] = want[i * n + j] * s + bias[j] as f64;
                mag[i * n + j] *= s;
            }
        }
        let (qad, qwd, asd, wsd, bd) = (
            up(&g, &qa),
            up(&g, &qw),
            up(&g, &a_scale),
            up(&g, &w_scale),
            up(&g, &bias),
        );
        let (mi, ni, ki) = (m as i32, n as i32, k as i32);
        // (kernel, tolerance as a fraction of Σ|products|): products of e4m3 values are exact
        // in f32, so with f32 sums only the sums round (mma.sync: 1e-5 is ~100 f32 ulps).
        // Hopper's FP8 wgmma keeps about 14 significant bits while it accumulates (DeepSeek-V3
        // report, 3.3.2). Its bound: the kernel promotes to f32 every 128 values, that is
        // every 4 wgmma k32 steps; each step adds into the accumulator with an error of at most
        // one 14-bit ulp, 2^-13 of |accumulator| ≤ 2^-13 of the chunk's Σ|p| (truncation; half
        // that rounding to nearest), so a chunk is off by ≤ 4 · 2^-13 = 2^-11 of its Σ|p|, and
        // the f32 promotions add ~2^-24. The tolerance is twice that, 2^-10. A layout or
        // descriptor bug is off by the order of |Σp| itself, ≈ Σ|p| / √k for these random signs:
        // 2^-6 at k = 4112, 16× the tolerance, and more at smaller k.
        let mut kernels = vec![(Kernel::GemmFp8, 1e-5)];
        if g.has_wgmma().expect("wgmma") {
            kernels.push((Kernel::GemmFp8Wg, 2f64.powi(-10)));
        }
        for (kern, tol) in kernels {
            let mut out = g.stream.alloc_zeros::<f32>(m * n).expect("alloc");
            let f = g.function(kern).expect("kernel");
            let mut b = g.stream.launch_builder(&f);
            b.arg(&mut out)
                .arg(&qad)
                .arg(&qwd)
                .arg(&asd)
                .arg(&wsd)
                .arg(&bd)
                .arg(&mi)
                .arg(&ni)
                .arg(&ki);
            let cfg = kern.gemm_launch(m, n).expect("geometry");
            // SAFETY: the argument list of gemm_fp8 / gemm_fp8_wg (the latter only on sm_90a,
            // its shared memory opted in by Gpu::function); k is a multiple of 16; buffers
            // sized m×k, n×k, m×n.
            unsafe { b.launch(cfg) }.expect("launch");
            let got: Vec<f32> = g.stream.clone_dtoh(&out).expect("out");
            for (i, (&a, (&w, &mg))) in got.iter().zip(want.iter().zip(&mag)).enumerate() {
                assert!(
                    (a as f64 - w).abs() <= tol * mg + 1e-6,
                    "{kern:?} {m}x{n}x{k} at {i}: gpu {a} want {w}"
                );
            }
        }
    }
    // per-token quantization to e4m3 against quantize_rows_fp8
    let (rows, dim) = (9, 1536);
    let x = randn(&mut rng, rows * dim, 5.0);
    let (mut want, mut want_s) = (vec![0f32; rows * dim], vec![0f32; rows]);
    quantize_rows_fp8(&x, rows, dim, None, &mut want, &mut want_s);
    let xd = up(&g, &x);
    let mut q = g.stream.alloc_zeros::<u8>(rows * dim).expect("alloc");
    let mut s = g.stream.alloc_zeros::<f32>(rows).expect("alloc");
    let (dim_i, no_static) = (dim as i32, 0f32);
    let f = g.function(Kernel::QuantRowsFp8).expect("kernel");
    let mut b = g.stream.launch_builder(&f);
    b.arg(&mut q)
        .arg(&mut s)
        .arg(&xd)
        .arg(&dim_i)
        .arg(&no_static);
    // SAFETY: matches quant_rows_fp8; dim is even.
    unsafe {
        b.launch(LaunchConfig {
            grid_dim: (rows as u32, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        })
    }
    .expect("launch");
    let codes: Vec<u8> = g.stream.clone_dtoh(&q).expect("q");
    let scales: Vec<f32> = g.stream.clone_dtoh(&s).expect("s");
    assert_eq!(scales, want_s, "fp8 row scales");
    let decoded: Vec<f32> = codes.iter().map(|&c| lut[c as usize]).collect();
    assert_eq!(
        decoded, want,
        "fp8 codes (round to nearest even, saturating)"
    );
}

/// Every quantized linear kind through `CudaBackend::linear` against `CpuBackend::linear` with
/// the same weights: W8A8 (dynamic, static and pd_mix in both phases; GEMV and GEMM sizes),
/// FP8 (where the GPU has FP8 tensor cores; otherwise upload must refuse with a clear error),
/// and W4A16 (symmetric and asymmetric, groups that do and do not take the GEMV, odd rows),
/// with and without bias. Tolerance: value-scaled, 1e-4 of Σ|x·w| (the GPU and CPU sum in
/// different orders; the quantized operands are the same).
#[test]
#[ignore = "needs a CUDA GPU"]
fn quantized_linears_on_the_backend_match_the_cpu() {
    use ferroq::backend::cuda::backend::CudaBackend;
    use ferroq::backend::cuda::tiles::TensorCores;
    use ferroq::backend::linear::{Linear, LinearWeight};
    use ferroq::quant::weight::{quantize_weight, WeightMethod, WeightQConfig, WeightScope};
    use ferroq::quant::{ActQuant, ActSpec, Phase, QDType};
    let mut gb = CudaBackend::new(0).unwrap_or_else(|e| panic!("these tests need a CUDA GPU: {e}"));
    let cb = CpuBackend::new();
    let (fp8_ok, wgmma) = {
        let g = gpu();
        (g.info.capability >= (8, 9), g.has_wgmma().expect("wgmma"))
    };
    // Hopper runs every case on wgmma and again on mma.sync
    let modes: &[bool] = if wgmma { &[true, false] } else { &[false] };
    let mut rng = Rng::new(31);
    let int = |dtype, scope, symmetric| WeightQConfig {
        dtype,
        scope,
        symmetric,
        method: WeightMethod::MinMax,
    };
    let cases: Vec<(&str, WeightQConfig, ActSpec)> = vec![
        (
            "w8a8 dynamic",
            int(QDType::Int8, WeightScope::PerChannel, true),
            ActSpec {
                policy: ActQuant::Dynamic,
                dtype: QDType::Int8,
                symmetric: false,
            },
        ),
        (
            "w8a8 pd_mix",
            int(QDType::Int8, WeightScope::PerChannel, true),
            ActSpec {
                policy: ActQuant::PdMix { scale: 0.03, zp: 3 },
                dtype: QDType::Int8,
                symmetric: false,
            },
        ),
        (
            "fp8 dynamic",
            int(QDType::Fp8E4M3, WeightScope::PerChannel, true),
            ActSpec {
                policy: ActQuant::Dynamic,
                dtype: QDType::Fp8E4M3,
                symmetric: true,
            },
        ),
        (
            "fp8 static",
            int(QDType::Fp8E4M3, WeightScope::PerChannel, true),
            ActSpec {
                policy: ActQuant::Static { scale: 0.01, zp: 0 },
                dtype: QDType::Fp8E4M3,
                symmetric: true,
            },
        ),
        (
            "w4a16 g128",
            int(QDType::Int4, WeightScope::PerGroup(128), true),
            ActSpec::NONE,
        ),
        (
            "w4a16 g128 asym",
            int(QDType::Int4, WeightScope::PerGroup(128), false),
            ActSpec::NONE,
        ),
        (
            "w4a16 g48 asym",
            int(QDType::Int4, WeightScope::PerGroup(48), false),
            ActSpec::NONE,
        ),
    ];
    for (name, cfg, act) in cases {
        // the last shape: two tile rows, a partial tile column, k not a whole number of
        // 128-groups (the int4 tensor-core GEMM's last group is short)
        for &(m, n, k) in &[
            (1, 77, 576),
            (5, 130, 384),
            (37, 64, 1536),
            (130, 200, 1120),
        ] {
            let w = randn(&mut rng, n * k, 0.2);
            let x = randn(&mut rng, m * k, 1.0);
            let bias = randn(&mut rng, n, 0.5);
            let q = quantize_weight(&w, n, k, &cfg).expect("quantize");
            let gq = gb.upload_quant(&q, n, k);
            if cfg.dtype == QDType::Fp8E4M3 && !fp8_ok {
                let e = gq.err().expect("FP8 upload must fail below sm_89");
                assert!(e.to_string().contains("8.9"), "{e}");
                continue;
            }
            let cpu_lin = Linear {
                name: name.into(),
                in_features: k,
                out_features: n,
                weight: LinearWeight::Quant(cb.upload_quant(&q, n, k).expect("cpu upload")),
                bias: Some(bias.clone()),
                act,
            };
            let gpu_lin = Linear {
                name: name.into(),
                in_features: k,
                out_features: n,
                weight: LinearWeight::Quant(gq.expect("gpu upload")),
                bias: Some(gb.upload(&bias).expect("bias")),
                act,
            };
            let xd = gb.upload(&x).expect("x");
            for (&wg, phase) in modes
                .iter()
                .flat_map(|wg| [(wg, Phase::Prefill), (wg, Phase::Decode)])
            {
                let tc = gb.set_wgmma(wg);
                assert_eq!(tc == TensorCores::Wgmma, wg, "wgmma availability");
                let mut want = vec![0f32; m * n];
                cb.linear(&mut want, &x, &cpu_lin, m, phase)
                    .expect("cpu linear");
                let mut od = gb.alloc(m * n).expect("out");
                gb.linear(&mut od, &xd, &gpu_lin, m, phase)
                    .expect("gpu linear");
                let mut got = vec![0f32; m * n];
                gb.read(&od, 0, &mut got).expect("read");
                let mag: f32 = x.iter().map(|v| v.abs()).sum::<f32>() / m as f32
                    * w.iter().map(|v| v.abs()).fold(0f32, f32::max);
                for (e, (g, c)) in got.iter().zip(&want).enumerate() {
                    assert!(
                        (g - c).abs() <= 1e-4 * mag + 1e-5,
                        "{name} {m}x{n}x{k} {phase:?} {tc:?} [{e}]: gpu {g} cpu {c}"
                    );
                }
            }
        }
    }
}

/// The fused RMSNorm(+residual) → E4M3 and SiLU·up → E4M3 kernels against the CPU's
/// `quantize_rows_fp8` of the CPU's norm / SiLU output: scales within one ulp, codes equal
/// except rounding-boundary cases (at most 0.1%, one e4m3 step apart), dynamic and static.
#[test]
#[ignore = "needs a CUDA GPU"]
fn fused_norm_and_silu_quant_fp8_match_the_cpu() {
    use ferroq::quant::formats::Fp8;
    use ferroq::quant::{fp8_table, quantize_rows_fp8};
    let mut g = gpu();
    assert!(g.info.capability >= (8, 9), "E4M3 conversion needs sm_89+");
    let cpu = CpuBackend::new();
    let lut = fp8_table();
    let mut rng = Rng::new(24);
    // (kernel output, cpu rows, static scale, what)
    let check = |got: (Vec<u8>, Vec<f32>),
                 want_rows: &[f32],
                 rows: usize,
                 dim: usize,
                 stat: Option<f32>,
                 what: &str| {
        let (mut want, mut want_s) = (vec![0f32; rows * dim], vec![0f32; rows]);
        quantize_rows_fp8(want_rows, rows, dim, stat, &mut want, &mut want_s);
        for (r, (g, w)) in got.1.iter().zip(&want_s).enumerate() {
            let ulps = (g.to_bits() as i64 - w.to_bits() as i64).abs();
            assert!(ulps <= 1, "{what}: row {r} scale {g} vs {w}");
        }
        let mut boundary = 0;
        for (i, (&c, &w)) in got.0.iter().zip(&want).enumerate() {
            let v = lut[c as usize];
            if v != w {
                // neighbours on the e4m3 grid: magnitude codes one apart, same sign (or both
                // at zero / the smallest subnormal)
                let cw = Fp8::E4M3.encode(w);
                let (mg, mw) = ((c & 0x7f) as i32, (cw & 0x7f) as i32);
                let same_sign = c & 0x80 == cw & 0x80;
                assert!(
                    (mg - mw).abs() <= 1 && (same_sign || mg.max(mw) <= 1),
                    "{what}: value {i}: {v} vs {w}"
                );
                boundary += 1;
            }
        }
        assert!(
            boundary * 1000 <= got.0.len(),
            "{what}: {boundary} mismatches"
        );
    };
    for (rows, dim) in [(1, 576), (7, 4096), (33, 1536)] {
        let (x, y, w) = (
            randn(&mut rng, rows * dim, 2.0),
            randn(&mut rng, rows * dim, 1.0),
            randn(&mut rng, dim, 1.0),
        );
        let sum: Vec<f32> = x.iter().zip(&y).map(|(a, b)| a + b).collect();
        let mut normed = vec![0f32; rows * dim];
        cpu.rms_norm(&mut normed, &sum, &w, rows, dim, 1e-5)
            .expect("cpu");
        let mut act = x.clone();
        cpu.silu_mul(&mut act, &y, rows * dim).expect("cpu");
        for stat in [None, Some(0.01f32)] {
            let st = stat.unwrap_or(0.0);
            let cfg = LaunchConfig {
                grid_dim: (rows as u32, 1, 1),
                block_dim: (256, 1, 1),
                shared_mem_bytes: 0,
            };
            let (dim_i, eps) = (dim as i32, 1e-5f32);
            // norm: q, scale, x (+= y), y, w, dim, eps, static
            let (mut xd, yd, wd) = (up(&g, &x), up(&g, &y), up(&g, &w));
            let mut q = g.stream.alloc_zeros::<u8>(rows * dim).expect("alloc");
            let mut s = g.stream.alloc_zeros::<f32>(rows).expect("alloc");
            let f = g.function(Kernel::RmsNormQuantFp8).expect("kernel");
            let mut b = g.stream.launch_builder(&f);
            b.arg(&mut q)
                .arg(&mut s)
                .arg(&mut xd)
                .arg(&yd)
                .arg(&wd)
                .arg(&dim_i)
                .arg(&eps)
                .arg(&st);
            // SAFETY: matches rms_norm_quant_fp8; buffers rows × dim, w dim, dim even.
            unsafe { b.launch(cfg) }.expect("launch");
            let got = (
                g.stream.clone_dtoh(&q).expect("q"),
                g.stream.clone_dtoh(&s).expect("s"),
            );
            let resid: Vec<f32> = g.stream.clone_dtoh(&xd).expect("x");
            assert_eq!(resid, sum, "the residual add");
            check(
                got,
                &normed,
                rows,
                dim,
                stat,
                &format!("norm fp8 {rows}x{dim} {stat:?}"),
            );
            // silu: q, scale, gate, up, dim, static
            let (mut gd, ud) = (up(&g, &x), up(&g, &y));
            let f = g.function(Kernel::SiluMulQuantFp8).expect("kernel");
            let mut b = g.stream.launch_builder(&f);
            b.arg(&mut q)
                .arg(&mut s)
                .arg(&mut gd)
                .arg(&ud)
                .arg(&dim_i)
                .arg(&st);
            // SAFETY: matches silu_mul_quant_fp8; buffers rows × dim, dim even.
            unsafe { b.launch(cfg) }.expect("launch");
            let got = (
                g.stream.clone_dtoh(&q).expect("q"),
                g.stream.clone_dtoh(&s).expect("s"),
            );
            check(
                got,
                &act,
                rows,
                dim,
                stat,
                &format!("silu fp8 {rows}x{dim} {stat:?}"),
            );
        }
    }
}
