//! Every CPU op against a plain f64 reference on fresh random data, with tolerances that scale
//! with the values (atol + rtol * |ref|), over shapes that include 1, odd sizes and sizes that
//! are not multiples of the kernels' tiles.

mod common;

use common::{assert_close, randn};
use ferroq::backend::cpu::attention;
use ferroq::backend::cpu::dense::{self, Isa, WElem};
use ferroq::backend::cpu::CpuBackend;
use ferroq::backend::linear::{Linear, LinearWeight};
use ferroq::backend::prelude::*;
use ferroq::engine::sampler::Rng;
use ferroq::quant::Phase;
use ferroq::tensor::{DType, HostTensor};
use half::{bf16, f16};
use std::sync::Arc;

fn naive_matmul(x: &[f32], w: &[f32], m: usize, n: usize, k: usize) -> Vec<f64> {
    let mut out = vec![0.0; m * n];
    for i in 0..m {
        for j in 0..n {
            out[i * n + j] = (0..k)
                .map(|t| x[i * k + t] as f64 * w[j * k + t] as f64)
                .sum();
        }
    }
    out
}

fn isas() -> Vec<Isa> {
    let mut v = vec![Isa::Portable];
    if dense::has_avx2() {
        v.push(Isa::Avx2);
    }
    v
}

#[test]
fn matmul_all_dtypes_shapes_and_isas() {
    let mut rng = Rng::new(1);
    let shapes = [
        (1, 1, 1),
        (1, 7, 9),
        (3, 5, 8),
        (4, 3, 16),
        (5, 7, 33),
        (13, 29, 100),
        (64, 48, 64),
        (67, 97, 131),
        (1, 300, 576),
        (130, 40, 24),
    ];
    for &(m, n, k) in &shapes {
        let x = randn(&mut rng, m * k, 2.0);
        let w32 = randn(&mut rng, n * k, 1.0);
        let w16: Vec<f16> = w32.iter().map(|&v| f16::from_f32(v)).collect();
        let wb: Vec<bf16> = w32.iter().map(|&v| bf16::from_f32(v)).collect();
        // references on the weights as stored (the rounding to f16/bf16 is not the kernel's error)
        let r32 = naive_matmul(&x, &w32, m, n, k);
        let r16 = naive_matmul(
            &x,
            &w16.iter().map(|v| v.to_f32()).collect::<Vec<_>>(),
            m,
            n,
            k,
        );
        let rb = naive_matmul(
            &x,
            &wb.iter().map(|v| v.to_f32()).collect::<Vec<_>>(),
            m,
            n,
            k,
        );
        // f32 accumulation over k terms of size ~2: error grows like k * eps * |x||w|
        let atol = 1e-5 * k as f64;
        for isa in isas() {
            let mut out = vec![f32::NAN; m * n];
            dense::matmul_with(isa, &mut out, &x, &w32, m, n, k);
            assert_close(&format!("f32 {isa:?} {m}x{n}x{k}"), &out, &r32, 1e-5, atol);
            dense::matmul_with(isa, &mut out, &x, &w16, m, n, k);
            assert_close(&format!("f16 {isa:?} {m}x{n}x{k}"), &out, &r16, 1e-5, atol);
            dense::matmul_with(isa, &mut out, &x, &wb, m, n, k);
            assert_close(&format!("bf16 {isa:?} {m}x{n}x{k}"), &out, &rb, 1e-5, atol);
        }
    }
}

#[test]
fn panel_matmul_matches_reference_and_rows_do_not_depend_on_batch() {
    use ferroq::backend::cpu::dense::panels::{self, Panels};
    if !panels::available() {
        eprintln!("no AVX-512 F/BW/VL on this CPU: the panel kernels are not exercised");
        return;
    }
    let mut rng = Rng::new(4);
    for &(m, n, k) in &[
        (1, 1, 1),
        (1, 9, 17),
        (2, 8, 16),
        (3, 17, 33),
        (7, 97, 131),
        (70, 40, 576),
        (1, 300, 576),
    ] {
        let x = randn(&mut rng, m * k, 2.0);
        let w32 = randn(&mut rng, n * k, 1.0);
        let w16: Vec<f16> = w32.iter().map(|&v| f16::from_f32(v)).collect();
        let wb: Vec<bf16> = w32.iter().map(|&v| bf16::from_f32(v)).collect();
        let widen = |v: &dyn Fn(usize) -> f32| (0..n * k).map(v).collect::<Vec<f32>>();
        let atol = 1e-5 * k as f64;
        macro_rules! check {
            ($w:expr, $name:expr) => {{
                let p = Panels::pack(&$w, n, k);
                let wf = widen(&|e| WElem::to_f32($w[e]));
                let mut out = vec![f32::NAN; m * n + 3];
                panels::matmul(&mut out, &x, m, &p);
                assert!(
                    out[m * n..].iter().all(|v| v.is_nan()),
                    "{} wrote past the output",
                    $name
                );
                let want = naive_matmul(&x, &wf, m, n, k);
                assert_close(
                    &format!("{} panels {m}x{n}x{k}", $name),
                    &out[..m * n],
                    &want,
                    1e-5,
                    atol,
                );
                for i in 0..m {
                    let mut one = vec![0.0; n];
                    panels::matmul(&mut one, &x[i * k..(i + 1) * k], 1, &p);
                    assert_eq!(
                        one,
                        out[i * n..(i + 1) * n],
                        "{} {m}x{n}x{k} row {i}",
                        $name
                    );
                }
                let mut row = vec![0.0; k];
                for j in [0, n / 2, n - 1] {
                    p.row_into(j, &mut row);
                    assert_eq!(row, wf[j * k..(j + 1) * k], "{} row_into {j}", $name);
                }
            }};
        }
        check!(w32, "f32");
        check!(w16, "f16");
        check!(wb, "bf16");
    }
}

#[test]
fn amx_bf16_matmul_matches_references() {
    use ferroq::backend::cpu::dense::{
        amx,
        panels::{self, Panels},
    };
    if !amx::available() {
        eprintln!("no AMX-BF16 on this CPU (or the OS refused the tile state): not exercised");
        return;
    }
    let mut rng = Rng::new(5);
    // tile shapes (one / two row tiles and a ragged last one, a single token; one / two / odd
    // column blocks and a ragged last one; one to many k steps; more tokens than one L2 chunk,
    // so the task's blocks are laid out up front), then k not a multiple of 32, which takes
    // the panel kernel
    for &(m, n, k) in &[
        (16, 16, 32),
        (17, 33, 64),
        (32, 32, 32),
        (47, 80, 576),
        (64, 100, 1536),
        (100, 17, 96),
        (8, 32, 64),
        (1, 20, 128),
        (150, 40, 2048),
        (20, 47, 40),
    ] {
        let x = randn(&mut rng, m * k, 2.0);
        let wb: Vec<bf16> = randn(&mut rng, n * k, 1.0)
            .iter()
            .map(|&v| bf16::from_f32(v))
            .collect();
        let p = Panels::pack(&wb, n, k);
        let mut out = vec![f32::NAN; m * n + 3];
        amx::matmul(&mut out, &x, m, &p);
        assert!(
            out[m * n..].iter().all(|v| v.is_nan()),
            "{m}x{n}x{k} wrote past the output"
        );
        if !amx::takes(k) {
            let mut want = vec![0.0; m * n];
            panels::matmul(&mut want, &x, m, &p);
            assert_eq!(
                out[..m * n],
                want[..],
                "{m}x{n}x{k}: the panel kernel's result"
            );
            continue;
        }
        let xb: Vec<f64> = x.iter().map(|&v| bf16::from_f32(v).to_f64()).collect();
        for i in 0..m {
            for j in 0..n {
                let (mut exact, mut mag, mut f32_acts) = (0f64, 0f64, 0f64);
                for t in 0..k {
                    let wv = wb[j * k + t].to_f64();
                    exact += xb[i * k + t] * wv;
                    mag += (xb[i * k + t] * wv).abs();
                    f32_acts += x[i * k + t] as f64 * wv;
                }
                let got = out[i * n + j] as f64;
                // products of BF16 operands are exact in f32; any order of k f32 additions
                // errs by at most (k - 1) · 2^-24 · Σ|p|
                let acc_bound = (k as f64) * 2f64.powi(-24) * mag;
                assert!(
                    (got - exact).abs() <= acc_bound,
                    "{m}x{n}x{k} ({i}, {j}): {got} vs {exact} (bound {acc_bound:e})"
                );
                // against f32 activations: BF16 rounding errs by at most 2^-9 per activation
                let round_bound = 2f64.powi(-8) * mag + acc_bound;
                assert!(
                    (got - f32_acts).abs() <= round_bound,
                    "{m}x{n}x{k} ({i}, {j}) vs f32 activations: {got} vs {f32_acts}"
                );
            }
        }
    }
}

#[test]
fn matmul_rows_do_not_depend_on_batch() {
    // A row's result is bit-identical whether computed alone or inside a batch.
    let mut rng = Rng::new(2);
    let (m, n, k) = (9, 31, 77);
    let x = randn(&mut rng, m * k, 1.0);
    let w: Vec<f16> = randn(&mut rng, n * k, 1.0)
        .into_iter()
        .map(f16::from_f32)
        .collect();
    for isa in isas() {
        let mut all = vec![0.0; m * n];
        dense::matmul_with(isa, &mut all, &x, &w, m, n, k);
        for i in 0..m {
            let mut one = vec![0.0; n];
            dense::matmul_with(isa, &mut one, &x[i * k..(i + 1) * k], &w, 1, n, k);
            assert_eq!(one, all[i * n..(i + 1) * n], "{isa:?} row {i}");
        }
    }
}

/// `project` with the residual add and norm in front of two linears (the q/k/v shape of the
/// forward pass): the residual written back, the normalized input and both outputs against
/// f64; a linear whose in_features differ from the input is a named error.
#[test]
fn project_norm_after_residual_then_linears() {
    use ferroq::backend::LinearInput;
    let b = CpuBackend::new();
    let mut rng = Rng::new(9);
    let (m, k, ns) = (3, 40, [24, 8]);
    let lin = |rng: &mut Rng, n: usize, name: &str| {
        let w = randn(rng, n * k, 1.0);
        let t = HostTensor::from_f32(vec![n, k], w.clone()).expect("t");
        let lin = Linear {
            name: name.into(),
            in_features: k,
            out_features: n,
            weight: LinearWeight::Dense(Arc::new(b.upload_matrix(&t, DType::F32).expect("m"))),
            bias: None,
            act: ferroq::quant::ActSpec::NONE,
        };
        (lin, w)
    };
    let (l0, w0) = lin(&mut rng, ns[0], "q");
    let (l1, w1) = lin(&mut rng, ns[1], "k");
    let (res0, add, g) = (
        randn(&mut rng, m * k, 2.0),
        randn(&mut rng, m * k, 1.0),
        randn(&mut rng, k, 1.0),
    );
    let (mut res, mut x) = (res0.clone(), vec![0.0; m * k]);
    let (mut o0, mut o1) = (vec![0.0; m * ns[0]], vec![0.0; m * ns[1]]);
    let input = LinearInput::Norm {
        res: &mut res,
        add: Some(&add),
        weight: &g,
        eps: 1e-5,
        x: &mut x,
    };
    b.project(
        input,
        None,
        &mut [(&mut o0, &l0), (&mut o1, &l1)],
        m,
        k,
        Phase::Prefill,
    )
    .expect("project");
    let sum: Vec<f32> = res0.iter().zip(&add).map(|(a, b)| a + b).collect();
    assert_eq!(res, sum, "the residual stream after the add");
    let mut normed = vec![0f32; m * k];
    for r in 0..m {
        let row = &sum[r * k..(r + 1) * k];
        let ms = row.iter().map(|&v| v as f64 * v as f64).sum::<f64>() / k as f64;
        for i in 0..k {
            normed[r * k + i] = (row[i] as f64 / (ms + 1e-5).sqrt() * g[i] as f64) as f32;
        }
    }
    let wide = |v: &[f32]| v.iter().map(|&x| x as f64).collect::<Vec<_>>();
    assert_close("normalized input", &x, &wide(&normed), 1e-5, 1e-6);
    assert_close(
        "q",
        &o0,
        &naive_matmul(&normed, &w0, m, ns[0], k),
        1e-4,
        1e-4,
    );
    assert_close(
        "k",
        &o1,
        &naive_matmul(&normed, &w1, m, ns[1], k),
        1e-4,
        1e-4,
    );
    // a group member reading another width
    let (narrow, _) = {
        let (mut l, w) = lin(&mut rng, 4, "o");
        l.in_features = k - 1;
        (l, w)
    };
    let mut o2 = vec![0.0; m * 4];
    let e = b
        .project(
            LinearInput::Ready(&mut x),
            None,
            &mut [(&mut o0, &l0), (&mut o2, &narrow)],
            m,
            k,
            Phase::Prefill,
        )
        .expect_err("a width mismatch");
    assert!(e.to_string().contains("o: 39 input features"), "{e}");
}

#[test]
fn attention_helpers_match_reference_on_every_isa() {
    let mut rng = Rng::new(7);
    // Q·Kᵀ with row strides (heads inside token rows), odd sizes
    let (m, n, k, ldx, ldw, ldo) = (5, 11, 13, 40, 21, 17);
    let x = randn(&mut rng, (m - 1) * ldx + k, 1.0);
    let w = randn(&mut rng, (n - 1) * ldw + k, 1.0);
    // P·V with d not a multiple of 8 or 64
    let (keys, d, ldv) = (9, 70, 75);
    let p = randn(&mut rng, keys, 0.3);
    let v = randn(&mut rng, (keys - 1) * ldv + d, 1.0);
    for isa in isas() {
        let mut out = vec![f32::NAN; (m - 1) * ldo + n];
        attention::matmul_strided(isa, &mut out, ldo, &x, ldx, &w, ldw, m, n, k);
        for i in 0..m {
            let want: Vec<f64> = (0..n)
                .map(|j| {
                    (0..k)
                        .map(|t| x[i * ldx + t] as f64 * w[j * ldw + t] as f64)
                        .sum()
                })
                .collect();
            assert_close(
                &format!("{isa:?} strided row {i}"),
                &out[i * ldo..i * ldo + n],
                &want,
                1e-5,
                1e-5,
            );
            // the same bits as `dot`, which the decode path's single rows use
            for j in 0..n {
                let single = dense::dot(&x[i * ldx..i * ldx + k], &w[j * ldw..j * ldw + k]);
                if isa == Isa::detect() {
                    assert_eq!(
                        out[i * ldo + j].to_bits(),
                        single.to_bits(),
                        "{isa:?} ({i},{j})"
                    );
                }
            }
        }
        let mut o = vec![f32::NAN; d];
        attention::weighted_rows(isa, &mut o, &p, &v, ldv);
        let want: Vec<f64> = (0..d)
            .map(|c| (0..keys).map(|j| p[j] as f64 * v[j * ldv + c] as f64).sum())
            .collect();
        assert_close(&format!("{isa:?} weighted rows"), &o, &want, 1e-5, 1e-5);
    }
}

#[test]
fn exp_and_silu_match_f64_on_the_vector_and_scalar_paths() {
    use ferroq::backend::cpu::vmath;
    if !vmath::avx512() {
        eprintln!("no AVX-512F on this CPU: only the scalar exp path is exercised");
    }
    for vector in [true, false] {
        exp_and_silu_match_f64(vector);
    }
}

fn exp_and_silu_match_f64(vector: bool) {
    use ferroq::backend::cpu::vmath;
    let mut rng = Rng::new(9);
    // the whole useful range, the clamps' edges, zero, and lengths with a tail
    let mut x: Vec<f32> = (0..1000).map(|_| (rng.next_f32() - 0.5) * 200.0).collect();
    x[..8].copy_from_slice(&[0.0, -0.0, 88.7, -87.3, -103.9, 1e-8, -1e-8, 0.346_573_6]);
    let mut e = x.clone();
    vmath::exp_shifted_sum_on(&mut e, 0.0, vector);
    for (&v, &g) in x.iter().zip(&e) {
        let want = (v as f64).exp();
        if want > f32::MAX as f64 {
            assert!(g.is_infinite(), "exp({v}) = {g}, want inf");
        } else if want < f32::MIN_POSITIVE as f64 {
            assert!(
                g.abs() <= 2.0 * f32::MIN_POSITIVE,
                "exp({v}) = {g}, want ~{want}"
            );
        } else {
            assert!(
                ((g as f64 - want) / want).abs() <= 2.5e-7,
                "exp({v}) = {g}, want {want} (vector {vector})"
            );
        }
    }
    let mut inf = [f32::NEG_INFINITY, f32::INFINITY, f32::NAN];
    vmath::exp_shifted_sum_on(&mut inf, 0.0, vector);
    assert_eq!(inf[0], 0.0);
    assert!(inf[1].is_infinite() && inf[2].is_nan());
    // the returned sum is the sum of what was written, shifted
    for len in [1, 15, 16, 17, 100] {
        let input: Vec<f32> = x[..len].iter().map(|v| v / 20.0).collect();
        let mut s = input.clone();
        let sum = vmath::exp_shifted_sum_on(&mut s, 3.0, vector);
        // the shift is applied in f32, as softmax's (x − max) is
        let each: Vec<f64> = input.iter().map(|&v| ((v - 3.0) as f64).exp()).collect();
        let want: f64 = each.iter().sum();
        assert!(
            ((sum as f64 - want) / want).abs() < 1e-6,
            "len {len}: {sum} vs {want}"
        );
        for (g, w) in s.iter().zip(&each) {
            assert!(
                ((*g as f64 - w) / w).abs() <= 2.5e-7,
                "len {len}: {g} vs {w}"
            );
        }
    }
    for len in [1, 16, 37, 1000] {
        let mut g: Vec<f32> = x[..len].iter().map(|v| v / 10.0).collect();
        let up: Vec<f32> = (0..len).map(|_| rng.next_f32() * 4.0 - 2.0).collect();
        let gate = g.clone();
        vmath::silu_mul_on(&mut g, &up, vector);
        for i in 0..len {
            let (a, u) = (gate[i] as f64, up[i] as f64);
            let want = a / (1.0 + (-a).exp()) * u;
            assert!(
                (g[i] as f64 - want).abs() <= 1e-6 * want.abs() + 1e-30,
                "silu({a})·{u} = {}, want {want} (vector {vector})",
                g[i]
            );
        }
    }
}
