//! The packed CPU GEMMs against their references: VNNI and AMX INT8 bit for bit against the
//! portable W8A8 GEMM, AMX W4A16 against an f64 reference and the BF16-dot kernel with a
//! stated bound. Each test says so and passes trivially where the CPU lacks the unit.

mod common;

use common::{decoded, rand_i8, randn, random_int4};
use ferroq::backend::cpu::dense::Isa;
use ferroq::backend::cpu::int4::bf16 as int4_bf16;
use ferroq::backend::cpu::int8::{self as qgemm, amx as amx_i8, vnni};
use ferroq::engine::sampler::Rng;

/// The packed int8 kernel `gemm` must reproduce the portable W8A8 GEMM bit for bit.
fn packed_gemm_is_bit_identical(
    shapes: &[(usize, usize, usize, bool)],
    gemm: impl Fn(&mut [f32], &[i8], &[f32], &[i32], &vnni::PackedI8, Option<&[f32]>, usize),
) {
    let mut rng = Rng::new(11);
    for &(m, n, k, with_bias) in shapes {
        let qa = rand_i8(&mut rng, m * k, -128);
        let qw = rand_i8(&mut rng, n * k, -127);
        let a_scale: Vec<f32> = (0..m).map(|i| 0.01 + i as f32 * 0.003).collect();
        let a_zp: Vec<i32> = (0..m).map(|i| (i as i32 * 37) % 256 - 128).collect();
        let w_scale: Vec<f32> = (0..n).map(|j| 0.02 + j as f32 * 0.001).collect();
        let colsum: Vec<i32> = (0..n)
            .map(|j| qw[j * k..(j + 1) * k].iter().map(|&v| v as i32).sum())
            .collect();
        let bias = randn(&mut rng, n, 1.0);
        let bias = with_bias.then_some(&bias[..]);
        let mut want = vec![f32::NAN; m * n];
        qgemm::gemm_i8_f32(
            Isa::Portable,
            &mut want,
            &qa,
            &a_scale,
            &a_zp,
            &qw,
            &w_scale,
            &colsum,
            bias,
            m,
            n,
            k,
        );
        let packed = vnni::PackedI8::pack(&qw, &w_scale, &colsum, n, k);
        // guard values past the end must survive the masked stores
        let mut got = vec![f32::NAN; m * n + 5];
        gemm(&mut got, &qa, &a_scale, &a_zp, &packed, bias, m);
        for (e, (g, w)) in got.iter().zip(&want).enumerate() {
            assert_eq!(
                g.to_bits(),
                w.to_bits(),
                "{m}x{n}x{k} element {e}: {g} vs {w}"
            );
        }
        assert!(
            got[m * n..].iter().all(|v| v.is_nan()),
            "wrote past the output"
        );
        let mut dec = vec![0f32; 3 * k];
        let r = n.min(3);
        packed.decode_rows(n - r, r, &mut dec[..r * k]);
        for jj in 0..r {
            let j = n - r + jj;
            for t in 0..k {
                assert_eq!(dec[jj * k + t], qw[j * k + t] as f32 * w_scale[j]);
            }
        }
    }
}

#[test]
fn vnni_gemm_is_bit_identical_to_the_portable_path() {
    if !vnni::available() {
        eprintln!("no AVX-512 VNNI on this CPU: the VNNI path is not exercised here");
        return;
    }
    let shapes = [
        (1, 1, 1, false),
        (1, 17, 33, true),
        (3, 16, 4, false),
        (8, 32, 64, true),
        (13, 47, 131, true),
        (37, 100, 576, false),
        (2, 33, 1537, true),
    ];
    packed_gemm_is_bit_identical(&shapes, vnni::gemm);
}

#[test]
fn amx_gemm_is_bit_identical_to_the_portable_path() {
    if !amx_i8::available() {
        eprintln!("no AMX-INT8 on this CPU (or the OS refused the tile state): not exercised here");
        return;
    }
    // the tile path: m >= 16 (one and two row tiles, a ragged last one), k a multiple of 64
    // (one and many steps), one / two / odd column blocks, a ragged last block; and the shapes
    // that fall back to VNNI (m < 16, k not a multiple of 64)
    let shapes = [
        (16, 16, 64, false),
        (17, 33, 128, true),
        (32, 32, 64, true),
        (47, 80, 576, false),
        (64, 100, 1536, true),
        (100, 17, 192, true),
        (8, 32, 64, true),
        (20, 47, 131, false),
    ];
    packed_gemm_is_bit_identical(&shapes, amx_i8::gemm);
}

#[test]
fn int4_amx_gemm_matches_reference_and_the_bf16_dot_kernel() {
    use ferroq::backend::cpu::int4::amx;
    use int4_bf16::{gemm as dot_gemm, round_to_bf16, PackedI4Bf16};
    if !amx::available() {
        eprintln!("no AMX-BF16 on this CPU (or the OS refused the tile state): not exercised");
        return;
    }
    let mut rng = Rng::new(17);
    // one / two row tiles and a ragged last one, one / two / odd column blocks and a ragged
    // last one, groups of one to three 64-value blocks, a short last group, both symmetries,
    // a few tokens and a single one, more tokens than one L2 chunk (blocks decoded up front)
    for &(m, n, k, group, symmetric) in &[
        (16, 16, 128, 64, true),
        (17, 33, 576, 128, false),
        (40, 47, 1536, 64, true),
        (100, 20, 384, 192, false),
        (33, 5, 320, 128, false),
        (64, 64, 256, 256, true),
        (9, 18, 256, 128, false),
        (1, 33, 128, 64, true),
        (150, 40, 2048, 128, false),
    ] {
        let x = randn(&mut rng, m * k, 1.0);
        let q = random_int4(&mut rng, n, k, group, symmetric);
        let p = PackedI4Bf16::pack(&q, n, k).expect("supported shape");
        let wd = decoded(&q, n, k);
        let mut xb = vec![0u16; m * k];
        round_to_bf16(&x, &mut xb);
        let mut got = vec![f32::NAN; m * n + 3];
        amx::gemm(&mut got, &xb, m, &p);
        assert!(
            got[m * n..].iter().all(|v| v.is_nan()),
            "wrote past the output"
        );
        let mut dot = vec![f32::NAN; m * n];
        dot_gemm(&mut dot, &xb, m, &p);
        let groups = k.div_ceil(group) as f64;
        for i in 0..m {
            for j in 0..n {
                let terms = (0..k).map(|t| {
                    f32::from_bits((xb[i * k + t] as u32) << 16) as f64 * wd[j * k + t] as f64
                });
                let r: f64 = terms.clone().sum();
                let mag: f64 = terms.map(f64::abs).sum();
                // exact products; f32 sums inside a group in any order, one FMA per group:
                // at most (k + groups) roundings of 2^-24 of Σ|x·w|
                let bound = (k as f64 + groups) * 2f64.powi(-24) * mag;
                let (g, d) = (got[i * n + j] as f64, dot[i * n + j] as f64);
                assert!(
                    (g - r).abs() <= bound,
                    "{m}x{n}x{k} g{group} ({i},{j}) {g} vs {r}"
                );
                assert!(
                    (g - d).abs() <= 2.0 * bound,
                    "({i},{j}) {g} vs the dot kernel's {d}"
                );
            }
        }
    }
}
