//! Quantized CPU kernels against references: the int8 GEMM bit-exact against an i64
//! reference, the fused epilogue within float tolerance, FP8 and INT4 linears against f64
//! references on decoded operands, and pd_mix choosing the dynamic path in prefill and the
//! static one in decode.

mod common;

use common::{decoded, rand_i8, randn, random_int4};
use ferroq::backend::cpu::dense::{has_avx2, Isa};
use ferroq::backend::cpu::int4::bf16 as int4_bf16;
use ferroq::backend::cpu::int8 as qgemm;
use ferroq::backend::cpu::{CpuBackend, Int8Isa};
use ferroq::backend::linear::{Linear, LinearWeight};
use ferroq::backend::prelude::*;
use ferroq::engine::sampler::Rng;
use ferroq::quant::weight::{quantize_weight, WeightMethod, WeightQConfig, WeightScope};
use ferroq::quant::{self, ActQuant, ActSpec, Phase, QDType, QuantWeight};
use std::sync::atomic::Ordering;

fn isas() -> Vec<Isa> {
    if has_avx2() {
        vec![Isa::Portable, Isa::Avx2]
    } else {
        vec![Isa::Portable]
    }
}

#[test]
fn int8_gemm_exact_against_i64() {
    let mut rng = Rng::new(1);
    for &(m, n, k) in &[
        (1, 1, 1),
        (1, 7, 33),
        (7, 33, 1),
        (5, 3, 17),
        (33, 7, 4097),
        (4, 2, 16),
        (13, 64, 576),
    ] {
        let qa = rand_i8(&mut rng, m * k, -128);
        let qw = rand_i8(&mut rng, n * k, -127);
        let want: Vec<i64> = (0..m * n)
            .map(|e| {
                (0..k)
                    .map(|t| qa[(e / n) * k + t] as i64 * qw[(e % n) * k + t] as i64)
                    .sum()
            })
            .collect();
        for isa in isas() {
            let got = qgemm::gemm_i8_i32(isa, &qa, &qw, m, n, k);
            let got: Vec<i64> = got.into_iter().map(|v| v as i64).collect();
            assert_eq!(got, want, "{isa:?} {m}x{n}x{k}");
        }
    }
}

#[test]
fn int8_epilogue_with_zero_point_and_bias() {
    let mut rng = Rng::new(2);
    let (m, n, k) = (7, 33, 129);
    let qa = rand_i8(&mut rng, m * k, -128);
    let qw = rand_i8(&mut rng, n * k, -127);
    let a_scale: Vec<f32> = (0..m).map(|i| 0.01 + i as f32 * 0.003).collect();
    let a_zp: Vec<i32> = (0..m).map(|i| i as i32 * 9 - 30).collect();
    let w_scale: Vec<f32> = (0..n).map(|j| 0.02 + j as f32 * 0.001).collect();
    let colsum: Vec<i32> = (0..n)
        .map(|j| qw[j * k..(j + 1) * k].iter().map(|&v| v as i32).sum())
        .collect();
    let bias = randn(&mut rng, n, 1.0);
    for isa in isas() {
        let mut out = vec![f32::NAN; m * n];
        qgemm::gemm_i8_f32(
            isa,
            &mut out,
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
        for i in 0..m {
            for j in 0..n {
                // dequantize both operands and multiply in f64
                let r: f64 = (0..k)
                    .map(|t| {
                        (qa[i * k + t] as f64 - a_zp[i] as f64)
                            * a_scale[i] as f64
                            * qw[j * k + t] as f64
                            * w_scale[j] as f64
                    })
                    .sum::<f64>()
                    + bias[j] as f64;
                let g = out[i * n + j] as f64;
                assert!(
                    (g - r).abs() <= 1e-5 * r.abs() + 1e-4,
                    "{isa:?} ({i},{j}) {g} vs {r}"
                );
            }
        }
    }
}

fn quant_linear(
    b: &CpuBackend,
    w: &[f32],
    n: usize,
    k: usize,
    cfg: WeightQConfig,
    act: ActSpec,
) -> (Linear<CpuBackend>, QuantWeight) {
    let q = quantize_weight(w, n, k, &cfg).expect("quantize");
    let lin = Linear {
        name: "test".into(),
        in_features: k,
        out_features: n,
        weight: LinearWeight::Quant(b.upload_quant(&q, n, k).expect("upload")),
        bias: None,
        act,
    };
    (lin, q)
}

/// out (m, n) within 1e-5 relative + 1e-4 of xa (m, k) · wd (n, k)ᵀ computed in f64.
fn assert_matches_f64(
    what: &str,
    out: &[f32],
    xa: &[f64],
    wd: &[f32],
    m: usize,
    n: usize,
    k: usize,
) {
    let want: Vec<f64> = (0..m * n)
        .map(|e| {
            let (i, j) = (e / n, e % n);
            (0..k).map(|t| xa[i * k + t] * wd[j * k + t] as f64).sum()
        })
        .collect();
    common::assert_close(what, &out[..m * n], &want, 1e-5, 1e-4);
}

#[test]
fn w8a8_linear_matches_reference_for_each_policy() {
    let mut per_isa = Vec::new();
    for isa in Int8Isa::all_available() {
        // k a multiple of 64, which the AMX tiles take (its weight-only output dropped), then
        // n, k not multiples of any tile
        let mut outs = w8a8_linear_matches_reference(isa, (37, 40, 128));
        outs.pop();
        outs.extend(w8a8_linear_matches_reference(isa, (37, 37, 99)));
        per_isa.push((isa, outs));
    }
    // every int8 kernel family computes the same integers and the same float epilogue (the
    // last output, weight-only, goes through float kernels whose FMA rounding differs)
    let (_, portable) = &per_isa[0];
    let int8 = portable.len() - 1;
    for (isa, outs) in &per_isa[1..] {
        assert!(
            outs[..int8] == portable[..int8],
            "{isa:?} differs from the portable path"
        );
    }
}

/// Checks `isa`'s W8A8 linear against an f64 reference and returns its outputs.
fn w8a8_linear_matches_reference(isa: Int8Isa, (m, n, k): (usize, usize, usize)) -> Vec<Vec<f32>> {
    let mut outs = Vec::new();
    let b = CpuBackend::with_int8_isa(isa);
    let mut rng = Rng::new(3);
    // m > 32 takes the parallel activation quantization
    let w = randn(&mut rng, n * k, 0.3);
    let x = randn(&mut rng, m * k, 2.0);
    let cfg = WeightQConfig {
        dtype: QDType::Int8,
        scope: WeightScope::PerChannel,
        symmetric: true,
        method: WeightMethod::MinMax,
    };
    for symmetric in [true, false] {
        for policy in [
            ActQuant::Dynamic,
            ActQuant::Static {
                scale: 2.0 / 127.0,
                zp: 0,
            },
        ] {
            let act = ActSpec {
                policy,
                dtype: QDType::Int8,
                symmetric,
            };
            let (lin, q) = quant_linear(&b, &w, n, k, cfg, act);
            let wd = decoded(&q, n, k);
            let mut out = vec![0.0; m * n];
            b.linear(&mut out, &x, &lin, m, Phase::Prefill)
                .expect("linear");
            outs.push(out.clone());
            // the activations as the kernel sees them: quantized per row, dequantized
            let xa: Vec<f64> = x
                .chunks_exact(k)
                .flat_map(|row| {
                    let (s, z) = match policy {
                        ActQuant::Static { scale, zp } => (scale, zp),
                        _ => quant::dynamic_i8_params(row, symmetric),
                    };
                    row.iter().map(move |&v| {
                        quant::formats::dequantize_i8(
                            quant::formats::quantize_i8(v, 1.0 / s, z, symmetric),
                            s,
                            z,
                        ) as f64
                    })
                })
                .collect();
            let what = format!("{isa:?} sym {symmetric} {policy:?}");
            assert_matches_f64(&what, &out, &xa, &wd, m, n, k);
        }
    }
    // weight-only int8 (no activation quantization) decodes the weight, whatever its layout
    let (lin, q) = quant_linear(&b, &w, n, k, cfg, ActSpec::NONE);
    let wd = decoded(&q, n, k);
    let mut out = vec![0.0; m * n];
    b.linear(&mut out, &x, &lin, m, Phase::Prefill)
        .expect("linear");
    let xa: Vec<f64> = x.iter().map(|&v| v as f64).collect();
    assert_matches_f64(&format!("{isa:?} W8A16"), &out, &xa, &wd, m, n, k);
    outs.push(out);
    outs
}

#[test]
fn fp8_and_int4_linears_match_reference() {
    let b = CpuBackend::new();
    let mut rng = Rng::new(4);
    let (m, n, k) = (6, 29, 256);
    let w = randn(&mut rng, n * k, 0.3);
    let x = randn(&mut rng, m * k, 2.0);
    // FP8 W8A8 with dynamic per-token activations: decode both to f32, multiply in f64
    let cfg = WeightQConfig {
        dtype: QDType::Fp8E4M3,
        scope: WeightScope::PerChannel,
        symmetric: true,
        method: WeightMethod::MinMax,
    };
    let (lin, q) = quant_linear(
        &b,
        &w,
        n,
        k,
        cfg,
        ActSpec {
            policy: ActQuant::Dynamic,
            dtype: QDType::Fp8E4M3,
            symmetric: true,
        },
    );
    let wd = decoded(&q, n, k);
    let mut out = vec![0.0; m * n];
    b.linear(&mut out, &x, &lin, m, Phase::Prefill)
        .expect("fp8 linear");
    let mut xq = vec![0.0; m * k];
    let mut xs = vec![0.0; m];
    quant::quantize_rows_fp8(&x, m, k, None, &mut xq, &mut xs);
    let xa: Vec<f64> = (0..m * k)
        .map(|e| xq[e] as f64 * xs[e / k] as f64)
        .collect();
    assert_matches_f64("fp8", &out, &xa, &wd, m, n, k);
    // W4A16: BF16 activations, int4 weights. Group 128 takes the BF16-dot kernel where the
    // CPU has it, 32 the f32 register-decode kernel, 16 the row-decode fallback: all three
    // multiply the same BF16-rounded activations.
    let xa: Vec<f64> = x
        .iter()
        .map(|&v| f32::from_bits((int4_bf16::bf16_bits(v) as u32) << 16) as f64)
        .collect();
    for group in [128, 32, 16] {
        for symmetric in [true, false] {
            let cfg = WeightQConfig {
                dtype: QDType::Int4,
                scope: WeightScope::PerGroup(group),
                symmetric,
                method: WeightMethod::Ssz,
            };
            let (lin, q) = quant_linear(&b, &w, n, k, cfg, ActSpec::NONE);
            let wd = decoded(&q, n, k);
            b.linear(&mut out, &x, &lin, m, Phase::Decode)
                .expect("int4 linear");
            assert_matches_f64(&format!("int4 g{group}"), &out, &xa, &wd, m, n, k);
        }
    }
}

#[test]
fn pd_mix_uses_dynamic_in_prefill_and_static_in_decode() {
    let b = CpuBackend::new();
    let mut rng = Rng::new(5);
    let (n, k) = (16, 64);
    let w = randn(&mut rng, n * k, 0.3);
    let cfg = WeightQConfig {
        dtype: QDType::Int8,
        scope: WeightScope::PerChannel,
        symmetric: true,
        method: WeightMethod::MinMax,
    };
    // a deliberately coarse static scale, so the two paths give visibly different results
    let act = ActSpec {
        policy: ActQuant::PdMix { scale: 0.5, zp: 0 },
        dtype: QDType::Int8,
        symmetric: true,
    };
    let (lin, _) = quant_linear(&b, &w, n, k, cfg, act);
    let x = randn(&mut rng, k, 1.0);
    let mut pre = vec![0.0; n];
    let mut dec = vec![0.0; n];
    b.linear(&mut pre, &x, &lin, 1, Phase::Prefill)
        .expect("prefill");
    assert_eq!(b.counters.dynamic_rows.load(Ordering::SeqCst), 1);
    assert_eq!(b.counters.static_rows.load(Ordering::SeqCst), 0);
    b.linear(&mut dec, &x, &lin, 1, Phase::Decode)
        .expect("decode");
    assert_eq!(b.counters.static_rows.load(Ordering::SeqCst), 1);
    assert_ne!(
        pre, dec,
        "static scale 0.5 must quantize differently from the per-token scale"
    );
    // the static path equals an explicit Static policy with the same scale
    let (lin_s, _) = quant_linear(
        &b,
        &w,
        n,
        k,
        cfg,
        ActSpec {
            policy: ActQuant::Static { scale: 0.5, zp: 0 },
            ..act
        },
    );
    let mut st = vec![0.0; n];
    b.linear(&mut st, &x, &lin_s, 1, Phase::Prefill)
        .expect("static");
    assert_eq!(st, dec);
    // and the prefill path equals an explicit Dynamic policy
    let (lin_d, _) = quant_linear(
        &b,
        &w,
        n,
        k,
        cfg,
        ActSpec {
            policy: ActQuant::Dynamic,
            ..act
        },
    );
    let mut dy = vec![0.0; n];
    b.linear(&mut dy, &x, &lin_d, 1, Phase::Decode)
        .expect("dynamic");
    assert_eq!(dy, pre);
}

#[test]
fn mismatched_activation_dtype_is_an_error() {
    let b = CpuBackend::new();
    let w = vec![0.1f32; 8 * 16];
    let cfg = WeightQConfig {
        dtype: QDType::Int8,
        scope: WeightScope::PerChannel,
        symmetric: true,
        method: WeightMethod::MinMax,
    };
    let (lin, _) = quant_linear(
        &b,
        &w,
        8,
        16,
        cfg,
        ActSpec {
            policy: ActQuant::Dynamic,
            dtype: QDType::Fp8E4M3,
            symmetric: true,
        },
    );
    let mut out = vec![0.0; 8];
    assert!(b
        .linear(&mut out, &vec![0.5; 16], &lin, 1, Phase::Prefill)
        .is_err());
    let bad = QuantWeight::Int8 {
        q: vec![0; 10],
        scale: vec![1.0; 8],
        colsum: vec![0; 8],
    };
    assert!(b.upload_quant(&bad, 8, 16).is_err());
}

/// A random (n, k) weight quantized to int4 minmax groups.
fn int4_weight(rng: &mut Rng, n: usize, k: usize, group: usize, symmetric: bool) -> QuantWeight {
    let cfg = WeightQConfig {
        dtype: QDType::Int4,
        scope: WeightScope::PerGroup(group),
        symmetric,
        method: WeightMethod::MinMax,
    };
    quantize_weight(&randn(rng, n * k, 0.5), n, k, &cfg).expect("quantize")
}

#[test]
fn int4_row_decode_is_the_dequantization_formula() {
    let mut rng = Rng::new(12);
    // groups that are and are not multiples of the vector steps; k not a multiple of the group
    // (short last group); symmetric and asymmetric
    for &(n, k, group, symmetric) in &[
        (3, 128, 128, true),
        (5, 576, 128, false),
        (2, 100, 32, false),
        (4, 70, 6, true),
        (7, 1536, 64, true),
        (1, 18, 18, false),
    ] {
        let q = int4_weight(&mut rng, n, k, group, symmetric);
        let QuantWeight::Int4 {
            packed,
            scale,
            zero,
            group: g,
        } = &q
        else {
            panic!("not int4")
        };
        assert_eq!(zero.is_empty(), symmetric);
        let groups = k.div_ceil(*g);
        // value t of row j: ((nibble − 8) − zero) · scale, element by element
        let want = |j: usize, t: usize| {
            let byte = packed[(j * k + t) / 2];
            let nib = if t.is_multiple_of(2) {
                byte & 15
            } else {
                byte >> 4
            };
            let e = j * groups + t / g;
            let z = if zero.is_empty() { 0.0 } else { zero[e] as f32 };
            ((nib as i32 - 8) as f32 - z) * scale[e]
        };
        for (j, r) in [(0, n), (n - 1, 1), (n / 2, n - n / 2)] {
            let mut got = vec![f32::NAN; r * k];
            q.decode_rows(k, j, r, &mut got);
            for (e, v) in got.iter().enumerate() {
                let (jj, t) = (j + e / k, e % k);
                assert_eq!(
                    v.to_bits(),
                    want(jj, t).to_bits(),
                    "n {n} k {k} group {group} ({jj},{t})"
                );
            }
        }
    }
}

/// An int4 GEMM's output for all m tokens (`gemm(out, first token, rows)`) within 1e-6 of
/// Σ|x·w| of the f64 product of `xa` (the activations it multiplies) and the decoded weights,
/// and every token alone bit-identical to the batch.
fn check_int4_gemm(
    what: &str,
    xa: &[f64],
    wd: &[f32],
    m: usize,
    n: usize,
    k: usize,
    gemm: impl Fn(&mut [f32], usize, usize),
) {
    let mut out = vec![f32::NAN; m * n];
    gemm(&mut out, 0, m);
    for i in 0..m {
        for j in 0..n {
            let terms = (0..k).map(|t| xa[i * k + t] * wd[j * k + t] as f64);
            let r: f64 = terms.clone().sum();
            let mag: f64 = terms.map(f64::abs).sum();
            let g = out[i * n + j] as f64;
            assert!(
                (g - r).abs() <= 1e-6 * mag + 1e-6,
                "{what} ({i},{j}) {g} vs {r}"
            );
        }
    }
    for i in 0..m {
        let mut one = vec![f32::NAN; n];
        gemm(&mut one, i, 1);
        assert!(
            one.iter()
                .zip(&out[i * n..(i + 1) * n])
                .all(|(a, b)| a.to_bits() == b.to_bits()),
            "{what}: token {i} alone differs from the batch"
        );
    }
}

#[test]
fn int4_register_decode_gemm_matches_reference_and_is_batch_invariant() {
    use ferroq::backend::cpu::int4::{gemm, has_avx512, PackedI4};
    if !has_avx512() {
        eprintln!("no AVX-512F on this CPU: the register-decode int4 GEMM is not exercised");
        return;
    }
    let mut rng = Rng::new(13);
    for &(m, n, k, group, symmetric) in &[
        (1, 5, 576, 128, true),
        (2, 9, 576, 128, false),
        (3, 4, 64, 32, false),
        (9, 7, 1536, 64, true),
        (17, 3, 192, 96, false),
    ] {
        let x = randn(&mut rng, m * k, 1.0);
        let q = int4_weight(&mut rng, n, k, group, symmetric);
        let p = PackedI4::pack(&q, n, k).expect("supported shape");
        let wd = decoded(&q, n, k);
        let xa: Vec<f64> = x.iter().map(|&v| v as f64).collect();
        let what = format!("{m}x{n}x{k} g{group}");
        check_int4_gemm(&what, &xa, &wd, m, n, k, |o: &mut [f32], i0, rows| {
            gemm(o, &x[i0 * k..(i0 + rows) * k], rows, &p)
        });
    }
    // shapes the kernel does not take fall back to the decode path
    let q = int4_weight(&mut rng, 2, 48, 16, true);
    assert!(PackedI4::pack(&q, 2, 48).is_none());
}

#[test]
fn bf16_rounding_is_round_to_nearest_even_on_every_path() {
    let mut rng = Rng::new(15);
    let mut x = randn(&mut rng, 1000, 3.0);
    // ties both ways, values just past a tie, a denormal, the largest finite (rounds to inf),
    // infinities, zeros of both signs and NaNs
    let special = [
        f32::from_bits(0x3f80_8000),
        f32::from_bits(0x3f81_8000),
        f32::from_bits(0x3f80_8001),
        f32::from_bits(0x0000_0123),
        f32::MAX,
        f32::INFINITY,
        f32::NEG_INFINITY,
        0.0,
        -0.0,
        f32::NAN,
        f32::from_bits(0x7f80_0001),
    ];
    x[..special.len()].copy_from_slice(&special);
    for (i, &v) in x.iter().enumerate() {
        let got = int4_bf16::bf16_bits(v);
        if v.is_nan() {
            assert!(
                f32::from_bits((got as u32) << 16).is_nan(),
                "NaN {i} became {got:#x}"
            );
        } else {
            assert_eq!(
                got,
                half::bf16::from_f32(v).to_bits(),
                "element {i} = {v:e}"
            );
        }
    }
    // the vector path (whole blocks of 16) and the scalar tail agree bit for bit
    for len in [0, 5, 16, 33, 1000] {
        let mut out = vec![0xdead_u16; len];
        int4_bf16::round_to_bf16(&x[..len], &mut out);
        let want: Vec<u16> = x[..len].iter().map(|&v| int4_bf16::bf16_bits(v)).collect();
        assert_eq!(out, want, "len {len}");
    }
}

#[test]
fn int4_bf16_gemm_matches_reference_and_is_batch_invariant() {
    use int4_bf16::{available, bf16_bits, gemm, round_to_bf16, PackedI4Bf16};
    if !available() {
        eprintln!("no AVX-512 BF16 on this CPU: the BF16-dot int4 GEMM is not exercised");
        return;
    }
    let mut rng = Rng::new(16);
    // rows not a multiple of the 4-row panel, odd token counts, k with a short last group,
    // groups of one, two and three blocks, symmetric and asymmetric
    for &(m, n, k, group, symmetric) in &[
        (1, 5, 576, 128, true),
        (2, 9, 576, 128, false),
        (3, 4, 64, 64, false),
        (5, 7, 1536, 64, true),
        (17, 3, 384, 192, false),
        (1, 1, 128, 128, false),
        (4, 16, 256, 64, false),
    ] {
        let x = randn(&mut rng, m * k, 1.0);
        let q = random_int4(&mut rng, n, k, group, symmetric);
        let p = PackedI4Bf16::pack(&q, n, k).expect("supported shape");
        let wd = decoded(&q, n, k);
        let mut xb = vec![0u16; m * k];
        round_to_bf16(&x, &mut xb);
        let xa: Vec<f64> = x
            .iter()
            .map(|&v| f32::from_bits((bf16_bits(v) as u32) << 16) as f64)
            .collect();
        let what = format!("{m}x{n}x{k} g{group}");
        check_int4_gemm(&what, &xa, &wd, m, n, k, |o: &mut [f32], i0, rows| {
            gemm(o, &xb[i0 * k..(i0 + rows) * k], rows, &p)
        });
    }
    // groups or k that are not whole 64-value blocks are left to the other kernels
    let q = int4_weight(&mut rng, 2, 96, 32, true);
    assert!(PackedI4Bf16::pack(&q, 2, 96).is_none());
    let q = int4_weight(&mut rng, 2, 96, 96, true);
    assert!(PackedI4Bf16::pack(&q, 2, 96).is_none());
}

#[test]
fn avx512_activation_quantizer_is_bit_identical_to_the_reference() {
    use ferroq::backend::cpu::act_quant;
    if !act_quant::available() {
        eprintln!("no AVX-512 F/BW on this CPU: the vector quantizer is not exercised");
        return;
    }
    let mut rng = Rng::new(14);
    for &(m, k) in &[(1, 1), (3, 17), (5, 576), (2, 1537), (4, 33)] {
        let mut x = randn(&mut rng, m * k, 3.0);
        // rounding ties, an all-zero row, huge values (clamped) and an outlier
        x[0] = 0.5;
        if m > 2 {
            x[2 * k..3 * k].fill(0.0);
        }
        if k > 3 {
            x[1] = 1e30;
            x[2] = -7.5;
            x[3] = f32::INFINITY;
        }
        for symmetric in [true, false] {
            for fixed in [None, Some((0.05f32, 0)), Some((0.02f32, -3))] {
                let (mut q0, mut s0, mut z0) = (vec![0i8; m * k], vec![0f32; m], vec![0i32; m]);
                let (mut q1, mut s1, mut z1) = (vec![1i8; m * k], vec![1f32; m], vec![1i32; m]);
                quant::quantize_rows_i8(&x, m, k, symmetric, fixed, &mut q0, &mut s0, &mut z0);
                act_quant::quantize_rows_i8(&x, m, k, symmetric, fixed, &mut q1, &mut s1, &mut z1);
                assert_eq!(q0, q1, "{m}x{k} sym {symmetric} {fixed:?}");
                assert_eq!(
                    s0.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                    s1.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
                );
                assert_eq!(z0, z1);
            }
        }
    }
}
