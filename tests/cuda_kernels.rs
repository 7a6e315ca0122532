//! Every CUDA kernel against the CPU reference on random data (odd sizes, GQA head counts,
//! paged block tables, several key splits). These need a GPU: they are `#[ignore]`d and run on
//! the device machine with `--ignored` (scripts/gpu-check.sh builds them here and runs them
//! there). Without a GPU they are not run — and not reported as passing.

mod common;

use common::randn;
use cudarc::driver::{CudaSlice, LaunchConfig, PushKernelArg};
use ferroq::backend::cpu::CpuBackend;
use ferroq::backend::cuda::kernels::Kernel;
use ferroq::backend::cuda::runtime::Gpu;
use ferroq::backend::prelude::*;
use ferroq::backend::{AttentionArgs, KvSeq, ATTN_ROWS};
use ferroq::engine::sampler::{argmax, Rng};
use half::bf16;

fn gpu() -> Gpu {
    Gpu::new(0).unwrap_or_else(|e| panic!("these tests need a CUDA GPU: {e}"))
}

fn cfg(grid: (u32, u32), block: u32) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (grid.0, grid.1, 1),
        block_dim: (block, 1, 1),
        shared_mem_bytes: 0,
    }
}

fn up<T: cudarc::driver::DeviceRepr>(g: &Gpu, v: &[T]) -> CudaSlice<T> {
    g.stream.clone_htod(v).expect("upload")
}

fn down(g: &Gpu, d: &CudaSlice<f32>) -> Vec<f32> {
    g.stream.clone_dtoh(d).expect("download")
}

/// `common::assert_close` with an f32 reference (the CPU's result) and this file's argument
/// order (atol before rtol).
fn assert_close(what: &str, got: &[f32], want: &[f32], atol: f32, rtol: f32) {
    let want: Vec<f64> = want.iter().map(|&v| v as f64).collect();
    common::assert_close(what, got, &want, rtol as f64, atol as f64);
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn norms_match_the_cpu() {
    let mut g = gpu();
    let cpu = CpuBackend::new();
    let mut rng = Rng::new(1);
    for (rows, dim) in [(1, 576), (7, 1000), (33, 4096), (3, 33)] {
        let (x, y, w) = (
            randn(&mut rng, rows * dim, 2.0),
            randn(&mut rng, rows * dim, 1.0),
            randn(&mut rng, dim, 1.0),
        );
        let mut want = vec![0.0; rows * dim];
        cpu.rms_norm(&mut want, &x, &w, rows, dim, 1e-5)
            .expect("cpu");
        let (xd, wd) = (up(&g, &x), up(&g, &w));
        let mut od = g.stream.alloc_zeros::<f32>(rows * dim).expect("alloc");
        let (f, dim_i, eps) = (
            g.function(Kernel::RmsNorm).expect("kernel"),
            dim as i32,
            1e-5f32,
        );
        let mut b = g.stream.launch_builder(&f);
        b.arg(&mut od).arg(&xd).arg(&wd).arg(&dim_i).arg(&eps);
        // SAFETY: argument types and order match rms_norm's signature; buffers hold rows * dim.
        unsafe { b.launch(cfg((rows as u32, 1), 256)) }.expect("launch");
        assert_close(
            &format!("rms_norm {rows}x{dim}"),
            &down(&g, &od),
            &want,
            1e-5,
            1e-5,
        );
        // fused residual add: x += y, out = norm(x)
        let mut xs: Vec<f32> = x.iter().zip(&y).map(|(a, b)| a + b).collect();
        cpu.rms_norm(&mut want, &xs, &w, rows, dim, 1e-5)
            .expect("cpu");
        let (mut xd, yd) = (up(&g, &x), up(&g, &y));
        let f = g.function(Kernel::AddRmsNorm).expect("kernel");
        let mut b = g.stream.launch_builder(&f);
        b.arg(&mut od)
            .arg(&mut xd)
            .arg(&yd)
            .arg(&wd)
            .arg(&dim_i)
            .arg(&eps);
        // SAFETY: matches add_rms_norm's signature.
        unsafe { b.launch(cfg((rows as u32, 1), 256)) }.expect("launch");
        assert_close("add_rms_norm out", &down(&g, &od), &want, 1e-5, 1e-5);
        xs.truncate(rows * dim);
        assert_close("add_rms_norm residual", &down(&g, &xd), &xs, 0.0, 0.0);
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn gemm_and_gemv_match_f64() {
    let mut g = gpu();
    let mut rng = Rng::new(2);
    for (m, n, k) in [
        (1, 49152, 576),
        (3, 1536, 576),
        (8, 576, 1536),
        (37, 100, 130),
        (130, 67, 64),
        (5, 7, 33),
        // the GEMV's bf16-pair path (k even, not a multiple of 8)
        (4, 33, 70),
        // tensor-core tiles: m, n not multiples of 128, k not of 32 (partial 64-byte stage)
        (200, 300, 584),
        (129, 4096, 1024),
        (9, 257, 8),
    ] {
        let x = randn(&mut rng, m * k, 1.0);
        let w: Vec<bf16> = randn(&mut rng, n * k, 0.1)
            .into_iter()
            .map(bf16::from_f32)
            .collect();
        let mut want = vec![0f32; m * n];
        for i in 0..m {
            for j in 0..n {
                want[i * n + j] = (0..k)
                    .map(|t| x[i * k + t] as f64 * w[j * k + t].to_f64())
                    .sum::<f64>() as f32;
            }
        }
        let (xd, wd) = (
            up(&g, &x),
            up(&g, &w.iter().map(|v| v.to_bits()).collect::<Vec<u16>>()),
        );
        let (mi, ni, ki) = (m as i32, n as i32, k as i32);
        let mut kernels = vec![Kernel::GemmBf16];
        if m <= 8 && k % 2 == 0 {
            kernels.push(Kernel::GemvBf16);
        }
        let scale = (k as f32).sqrt() * 0.1;
        for kern in kernels {
            let mut od = g.stream.alloc_zeros::<f32>(m * n).expect("alloc");
            let f = g.function(kern).expect("kernel");
            let mut b = g.stream.launch_builder(&f);
            b.arg(&mut od).arg(&xd).arg(&wd).arg(&mi).arg(&ni).arg(&ki);
            // SAFETY: (out, x, w, m, n, k) as both GEMM kernels take them.
            unsafe { b.launch(kern.gemm_launch(m, n).expect("geometry")) }.expect("launch");
            assert_close(
                &format!("{kern:?} {m}x{n}x{k}"),
                &down(&g, &od),
                &want,
                1e-4 * scale,
                1e-4,
            );
        }
        if k % 8 != 0 {
            continue;
        }
        // the tensor-core path: x rounded to bf16 on the device (cast_bf16 must round as
        // `half` does, bit for bit), then bf16 x bf16 with f32 accumulation against f64 on
        // the same rounded operands, plus the fused bias
        let mut xb = g.stream.alloc_zeros::<u16>(m * k).expect("alloc");
        let f = g.function(Kernel::CastBf16).expect("kernel");
        let len = (m * k) as i32;
        let mut b = g.stream.launch_builder(&f);
        b.arg(&mut xb).arg(&xd).arg(&len);
        // SAFETY: matches cast_bf16 (grid-stride); both hold m × k.
        unsafe { b.launch(cfg((7, 1), 64)) }.expect("launch");
        let got_xb: Vec<u16> = g.stream.clone_dtoh(&xb).expect("download");
        let want_xb: Vec<u16> = x.iter().map(|&v| bf16::from_f32(v).to_bits()).collect();
        assert_eq!(got_xb, want_xb, "cast_bf16 {m}x{k}");
        let bias = randn(&mut rng, n, 1.0);
        let mut want_tc = vec![0f32; m * n];
        for i in 0..m {
            for j in 0..n {
                want_tc[i * n + j] = ((0..k)
                    .map(|t| bf16::from_bits(want_xb[i * k + t]).to_f64() * w[j * k + t].to_f64())
                    .sum::<f64>()
                    + bias[j] as f64) as f32;
            }
        }
        let bd = up(&g, &bias);
        let mut od = g.stream.alloc_zeros::<f32>(m * n).expect("alloc");
        let f = g.function(Kernel::GemmBf16Tc).expect("kernel");
        let mut b = g.stream.launch_builder(&f);
        b.arg(&mut od)
            .arg(&xb)
            .arg(&wd)
            .arg(&bd)
            .arg(&mi)
            .arg(&ni)
            .arg(&ki);
        let lc = Kernel::GemmBf16Tc.gemm_launch(m, n).expect("geometry");
        // SAFETY: the argument list of gemm_bf16_tc; k % 8 == 0; buffers m × k, n × k, m × n.
        unsafe { b.launch(lc) }.expect("launch");
        assert_close(
            &format!("gemm_bf16_tc {m}x{n}x{k}"),
            &down(&g, &od),
            &want_tc,
            1e-4 * scale,
            1e-4,
        );
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn argmax_matches_the_sampler_including_ties() {
    let mut g = gpu();
    let mut rng = Rng::new(3);
    let (rows, vocab) = (5, 49152);
    let mut logits = randn(&mut rng, rows * vocab, 3.0);
    logits[2 * vocab + 100] = 50.0; // a tie in row 2: the lower index wins
    logits[2 * vocab + 40000] = 50.0;
    // nothing above -inf: index 0, as the CPU picks, never an id outside the vocabulary
    logits[4 * vocab..5 * vocab].fill(f32::NEG_INFINITY);
    let ld = up(&g, &logits);
    let mut od = g.stream.alloc_zeros::<u32>(rows).expect("alloc");
    let (f, v) = (
        g.function(Kernel::ArgmaxRows).expect("kernel"),
        vocab as i32,
    );
    let mut b = g.stream.launch_builder(&f);
    b.arg(&mut od).arg(&ld).arg(&v);
    // SAFETY: matches argmax_rows's signature.
    unsafe { b.launch(cfg((rows as u32, 1), 1024)) }.expect("launch");
    let got: Vec<u32> = g.stream.clone_dtoh(&od).expect("download");
    let want: Vec<u32> = logits.chunks(vocab).map(argmax).collect();
    assert_eq!(got, want);
    assert_eq!(got[2], 100);
    assert_eq!(got[4], 0);
}

/// Sampling on the device (`CudaBackend::sample_rows`: penalty, top-k / top-p cuts by
/// bisection, the block-scan draw, argmax at temperature 0) against the CPU backend's rule on
/// the same logits and uniforms, every parameter set a row of one batched call: the penalized
/// logits bit for bit, and the same token unless u sits within 1e-4 of a boundary of the CPU's
/// cumulative distribution (then the GPU's token must be the CPU's at u ± 1e-4), at most 2% of
/// the draws. Vocabularies odd and Llama-3-sized; greedy with a penalty, plain temperature,
/// top-k with ties, top-p, both cuts, top-k 1.
#[test]
#[ignore = "needs a CUDA GPU"]
fn sampling_on_the_device_matches_the_cpu_rule() {
    use ferroq::backend::cuda::backend::CudaBackend;
    use ferroq::backend::sampling::Draw;
    let gb = CudaBackend::new(0).unwrap_or_else(|e| panic!("these tests need a CUDA GPU: {e}"));
    let cb = CpuBackend::new();
    let mut rng = Rng::new(29);
    let sets = [
        (0.0, 0, 1.0, 1.3),
        (1.0, 0, 1.0, 1.0),
        (0.7, 50, 1.0, 1.0),
        (1.2, 0, 0.9, 1.2),
        (0.8, 40, 0.7, 1.0),
        (1.0, 1, 1.0, 1.0),
    ];
    for vocab in [1001usize, 128_256] {
        let rows = sets.len();
        let mut logits = randn(&mut rng, rows * vocab, 2.5);
        for r in 0..rows {
            logits[r * vocab + 7] = logits[r * vocab + 3]; // a tie in every row
        }
        let penalized: Vec<u32> = (0..vocab as u32).step_by(97).collect();
        let draw = |set: usize, u: f32| {
            let (temperature, top_k, top_p, penalty) = sets[set];
            Draw {
                temperature,
                top_k,
                top_p,
                penalty,
                penalized: &penalized,
                u: u.clamp(0.0, 0.999_999),
            }
        };
        let n = 200;
        let mut near = [0usize; 6];
        for i in 0..n {
            let us: Vec<f32> = (0..rows)
                .map(|_| (i as f32 + rng.next_f32()) / n as f32)
                .collect();
            let draws: Vec<Draw<'_>> = (0..rows).map(|r| draw(r, us[r])).collect();
            let mut lc = logits.clone();
            let mut want = vec![0u32; rows];
            cb.sample_rows(&mut lc, vocab, &draws, &mut want)
                .expect("cpu");
            let mut ld = gb.upload(&logits).expect("up");
            let mut got = vec![0u32; rows];
            gb.sample_rows(&mut ld, vocab, &draws, &mut got)
                .expect("gpu");
            let mut back = vec![0f32; rows * vocab];
            gb.read(&ld, 0, &mut back).expect("read");
            assert!(
                back.iter()
                    .zip(&lc)
                    .all(|(a, b)| a.to_bits() == b.to_bits()),
                "penalized logits differ"
            );
            for r in 0..rows {
                if got[r] == want[r] {
                    continue;
                }
                let row = &logits[r * vocab..(r + 1) * vocab];
                let at = |u: f32| {
                    let mut l = row.to_vec();
                    let mut id = [0u32];
                    cb.sample_rows(&mut l, vocab, &[draw(r, u)], &mut id)
                        .expect("cpu");
                    id[0]
                };
                let (lo, hi) = (at(us[r] - 1e-4), at(us[r] + 1e-4));
                assert!(
                    got[r] == lo || got[r] == hi,
                    "vocab {vocab} set {:?} u {}: gpu {}, cpu {} ({lo}, {hi} at u ± 1e-4)",
                    sets[r],
                    us[r],
                    got[r],
                    want[r]
                );
                near[r] += 1;
            }
        }
        for (r, &k) in near.iter().enumerate() {
            assert!(
                k * 50 <= n,
                "set {:?}: {k} of {n} draws at a boundary",
                sets[r]
            );
        }
    }
}

/// `CudaBackend::rope_write_kv` (one kernel: RoPE on q and k, k and v rounded into the bf16
/// caches) against the CPU's four ops: q and k to float rounding, every cache slot within one
/// bf16 step of the CPU's f32 value (untouched slots stay zero), for two sequences with
/// scattered block tables and GQA heads.
#[test]
#[ignore = "needs a CUDA GPU"]
fn rope_and_kv_write_fused_match_the_cpu() {
    use ferroq::backend::cuda::backend::CudaBackend;
    use ferroq::backend::RopeKvArgs;
    let gb = CudaBackend::new(0).unwrap_or_else(|e| panic!("these tests need a CUDA GPU: {e}"));
    let cb = CpuBackend::new();
    let mut rng = Rng::new(37);
    let (nh, nkv, hd, bs, n_blocks, max_pos) = (6, 2, 64, 4, 8, 16);
    let (kvd, rows) = (nkv * hd, 4);
    let tables: [&[u32]; 2] = [&[5, 1], &[7, 0, 3]];
    let seqs = [
        KvSeq {
            row0: 0,
            rows: 3,
            start_pos: 5,
            blocks: tables[0],
        },
        KvSeq {
            row0: 3,
            rows: 1,
            start_pos: 9,
            blocks: tables[1],
        },
    ];
    let (q, k, v) = (
        randn(&mut rng, rows * nh * hd, 1.0),
        randn(&mut rng, rows * kvd, 1.0),
        randn(&mut rng, rows * kvd, 1.0),
    );
    let angles: Vec<f32> = randn(&mut rng, max_pos * hd / 2, 3.0);
    let (cos, sin): (Vec<f32>, Vec<f32>) = angles.iter().map(|a| (a.cos(), a.sin())).unzip();
    let pool = n_blocks * bs * kvd;
    // CPU: the trait's op-by-op default
    let (mut cq, mut ck) = (q.clone(), k.clone());
    let (mut ckc, mut cvc) = (cb.alloc_kv(pool).expect("k"), cb.alloc_kv(pool).expect("v"));
    cb.rope_write_kv(RopeKvArgs {
        q: &mut cq,
        k: &mut ck,
        v: &v,
        k_cache: &mut ckc,
        v_cache: &mut cvc,
        cos: &cos,
        sin: &sin,
        seqs: &seqs,
        block_size: bs,
        n_heads: nh,
        n_kv_heads: nkv,
        head_dim: hd,
    })
    .expect("cpu");
    // GPU: the fused kernel
    let (mut gq, mut gk, gv) = (
        gb.upload(&q).expect("q"),
        gb.upload(&k).expect("k"),
        gb.upload(&v).expect("v"),
    );
    let (gcos, gsin) = (gb.upload(&cos).expect("cos"), gb.upload(&sin).expect("sin"));
    let (mut gkc, mut gvc) = (gb.alloc_kv(pool).expect("k"), gb.alloc_kv(pool).expect("v"));
    gb.rope_write_kv(RopeKvArgs {
        q: &mut gq,
        k: &mut gk,
        v: &gv,
        k_cache: &mut gkc,
        v_cache: &mut gvc,
        cos: &gcos,
        sin: &gsin,
        seqs: &seqs,
        block_size: bs,
        n_heads: nh,
        n_kv_heads: nkv,
        head_dim: hd,
    })
    .expect("gpu");
    let read = |d: &CudaSlice<f32>, n: usize| {
        let mut out = vec![0f32; n];
        gb.read(d, 0, &mut out).expect("read");
        out
    };
    assert_close("rope q", &read(&gq, q.len()), &cq, 1e-5, 1e-5);
    assert_close("rope k", &read(&gk, k.len()), &ck, 1e-5, 1e-5);
    for (name, dev, want) in [("k cache", &gkc, &ckc), ("v cache", &gvc, &cvc)] {
        // bf16 pairs, the lower value in the low half of each word
        let got: Vec<f32> = read(dev, pool / 2)
            .iter()
            .flat_map(|w| {
                let b = w.to_bits();
                [f32::from_bits(b << 16), f32::from_bits(b & 0xffff_0000)]
            })
            .collect();
        for (i, (g, w)) in got.iter().zip(want.iter()).enumerate() {
            assert!(
                (g - w).abs() <= w.abs() / 128.0,
                "{name}[{i}]: gpu {g}, cpu {w}"
            );
        }
    }
}

/// Paged causal GQA attention through `CudaBackend::attention` against the CPU backend, on
/// both paths in one batch: prefill chunks (flash attention on bf16 tensor cores: a 100-row
/// chunk continuing at position 37, so a partial 64-row tile and key tiles across the
/// diagonal; a 2-row chunk) and decode rows (the f32 key-split kernels, several splits), with
/// reversed block tables, for head dims 64 and 128 (flash attention) and 48 (split kernels
/// only). q, K and V are bf16 values on both sides, so the flash path differs from the CPU only
/// by P rounded to bf16 and summation order: within 2⁻⁸ of the output scale. Decode rows must
/// match the f32 CPU closely, and each sequence must get the same bits when run alone.
#[test]
#[ignore = "needs a CUDA GPU"]
fn paged_attention_both_paths_match_the_cpu() {
    use ferroq::backend::cuda::backend::CudaBackend;
    let gb = CudaBackend::new(0).unwrap_or_else(|e| panic!("these tests need a CUDA GPU: {e}"));
    let cpu = CpuBackend::new();
    let mut rng = Rng::new(4);
    let bf =
        |v: Vec<f32>| -> Vec<f32> { v.into_iter().map(|x| bf16::from_f32(x).to_f32()).collect() };
    // a sliding window of 30 masks inside the flash tiles, skips their first key step (the tile
    // at position 101) and starts the split kernels' keys past 0
    let shapes = [(8usize, 2usize, 128usize), (9, 3, 64), (4, 4, 48)];
    for ((nh, nkv, hd), window) in shapes
        .into_iter()
        .flat_map(|s| [None, Some(30)].map(|w| (s, w)))
    {
        let bs = 16usize;
        let (qd, kvd) = (nh * hd, nkv * hd);
        // (start position, new rows): prefill chunk, decode row, 2-row chunk, long decode row
        let spec = [(37usize, 100usize), (77, 1), (5, 2), (700, 1)];
        let max_blocks = 48usize;
        let n_blocks = spec.len() * max_blocks;
        let kc = bf(randn(&mut rng, n_blocks * bs * kvd, 1.0));
        let vc = bf(randn(&mut rng, n_blocks * bs * kvd, 1.0));
        let tables: Vec<Vec<u32>> = (0..spec.len())
            .map(|i| {
                let b0 = (i * max_blocks) as u32;
                (b0..b0 + max_blocks as u32).rev().collect()
            })
            .collect();
        let rows: usize = spec.iter().map(|s| s.1).sum();
        let q = bf(randn(&mut rng, rows * qd, 1.0));
        let mut seqs = Vec::new();
        let mut row0 = 0;
        for (i, &(start, r)) in spec.iter().enumerate() {
            seqs.push(KvSeq {
                row0,
                rows: r,
                start_pos: start,
                blocks: &tables[i],
            });
            row0 += r;
        }
        let max_seq = max_blocks * bs;
        let mut want = vec![0f32; rows * qd];
        let mut scratch = vec![0f32; nh * ATTN_ROWS * max_seq];
        cpu.attention(AttentionArgs {
            out: &mut want,
            q: &q,
            k_cache: &kc,
            v_cache: &vc,
            scratch: &mut scratch,
            seqs: &seqs,
            block_size: bs,
            max_seq,
            n_heads: nh,
            n_kv_heads: nkv,
            head_dim: hd,
            window,
            scale: 1.0 / (hd as f32).sqrt(),
            softcap: None,
        })
        .expect("cpu attention");
        let (qg, kg, vg) = (
            gb.upload(&q).expect("q"),
            gb.upload_kv(&kc).expect("k"),
            gb.upload_kv(&vc).expect("v"),
        );
        let run = |seqs: &[KvSeq<'_>], q: &CudaSlice<f32>, n: usize| -> Vec<f32> {
            let mut od = gb.alloc(n * qd).expect("out");
            let mut sd = gb.alloc(1).expect("scratch");
            gb.attention(AttentionArgs {
                out: &mut od,
                q,
                k_cache: &kg,
                v_cache: &vg,
                scratch: &mut sd,
                seqs,
                block_size: bs,
                max_seq,
                n_heads: nh,
                n_kv_heads: nkv,
                head_dim: hd,
                window,
                scale: 1.0 / (hd as f32).sqrt(),
                softcap: None,
            })
            .expect("gpu attention");
            let mut got = vec![0f32; n * qd];
            gb.read(&od, 0, &mut got).expect("read");
            got
        };
        let got = run(&seqs, &qg, rows);
        let flash_hd = hd == 64 || hd == 128;
        for s in &seqs {
            let flash = flash_hd && s.rows >= 2;
            let (atol, rtol) = if flash { (4e-3, 8e-3) } else { (1e-5, 1e-4) };
            let span = s.row0 * qd..(s.row0 + s.rows) * qd;
            assert_close(
                &format!(
                    "attention hd {hd} seq at {} ({} rows, flash {flash}, window {window:?})",
                    s.start_pos, s.rows
                ),
                &got[span.clone()],
                &want[span.clone()],
                atol,
                rtol,
            );
            // alone in the batch (at row 0) the sequence gets the same bits
            let alone = [KvSeq { row0: 0, ..*s }];
            let q1 = gb.upload(&q[span.clone()]).expect("q");
            let got1 = run(&alone, &q1, s.rows);
            assert!(
                got1.iter()
                    .zip(&got[span])
                    .all(|(a, b)| a.to_bits() == b.to_bits()),
                "hd {hd}: the sequence at {} changed with its batch-mates",
                s.start_pos
            );
        }
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn elementwise_kernels_match_the_cpu() {
    let mut g = gpu();
    let cpu = CpuBackend::new();
    let mut rng = Rng::new(5);
    // silu_mul and add_assign on an odd length
    let n = 100_003;
    let (gate, upv) = (randn(&mut rng, n, 3.0), randn(&mut rng, n, 1.0));
    let mut want = gate.clone();
    cpu.silu_mul(&mut want, &upv, n).expect("cpu");
    let (mut gd, ud, ni) = (up(&g, &gate), up(&g, &upv), n as i32);
    let f = g.function(Kernel::SiluMul).expect("kernel");
    let mut b = g.stream.launch_builder(&f);
    b.arg(&mut gd).arg(&ud).arg(&ni);
    // SAFETY: matches silu_mul's signature.
    unsafe { b.launch(cfg((256, 1), 256)) }.expect("launch");
    assert_close("silu_mul", &down(&g, &gd), &want, 1e-6, 1e-5);
    let mut sum = gate.clone();
    cpu.add_assign(&mut sum, &upv, n).expect("cpu");
    let mut xd = up(&g, &gate);
    let f = g.function(Kernel::AddAssign).expect("kernel");
    let mut b = g.stream.launch_builder(&f);
    b.arg(&mut xd).arg(&ud).arg(&ni);
    // SAFETY: matches add_assign's signature.
    unsafe { b.launch(cfg((256, 1), 256)) }.expect("launch");
    assert_close("add_assign", &down(&g, &xd), &sum, 0.0, 0.0);

    // rope at per-row positions (two sequences)
    let (heads, hd, max_pos) = (9usize, 64usize, 512usize);
    let half = hd / 2;
    let (cos, sin): (Vec<f32>, Vec<f32>) = (0..max_pos * half)
        .map(|t| {
            let a = (t / half) as f32 * 10000f32.powf(-2.0 * (t % half) as f32 / hd as f32);
            (a.cos(), a.sin())
        })
        .unzip();
    let x = randn(&mut rng, 6 * heads * hd, 1.0);
    let seqs = [
        KvSeq {
            row0: 0,
            rows: 4,
            start_pos: 100,
            blocks: &[],
        },
        KvSeq {
            row0: 4,
            rows: 2,
            start_pos: 7,
            blocks: &[],
        },
    ];
    let mut want = x.clone();
    cpu.rope(&mut want, &cos, &sin, &seqs, heads, hd)
        .expect("cpu");
    let pos: Vec<u32> = vec![100, 101, 102, 103, 7, 8];
    let (mut xd, cd, sd, pd) = (up(&g, &x), up(&g, &cos), up(&g, &sin), up(&g, &pos));
    let (hi, di) = (heads as i32, hd as i32);
    let f = g.function(Kernel::Rope).expect("kernel");
    let mut b = g.stream.launch_builder(&f);
    b.arg(&mut xd).arg(&cd).arg(&sd).arg(&pd).arg(&hi).arg(&di);
    // SAFETY: matches rope's signature.
    unsafe { b.launch(cfg((6, 1), 128)) }.expect("launch");
    assert_close("rope", &down(&g, &xd), &want, 1e-5, 1e-5);

    // embedding from bf16 and the paged KV write
    let (vocab, dim) = (1000usize, 576usize);
    let table: Vec<bf16> = randn(&mut rng, vocab * dim, 1.0)
        .into_iter()
        .map(bf16::from_f32)
        .collect();
    let ids: Vec<u32> = vec![0, 999, 17, 17, 512];
    let want: Vec<f32> = ids
        .iter()
        .flat_map(|&i| {
            table[i as usize * dim..(i as usize + 1) * dim]
                .iter()
                .map(|v| v.to_f32())
        })
        .collect();
    let (td, idd, dim_i) = (
        up(&g, &table.iter().map(|v| v.to_bits()).collect::<Vec<u16>>()),
        up(&g, &ids),
        dim as i32,
    );
    let mut od = g.stream.alloc_zeros::<f32>(ids.len() * dim).expect("alloc");
    let f = g.function(Kernel::EmbedBf16).expect("kernel");
    let mut b = g.stream.launch_builder(&f);
    b.arg(&mut od).arg(&td).arg(&idd).arg(&dim_i);
    // SAFETY: matches embed_bf16's signature.
    unsafe { b.launch(cfg((ids.len() as u32, 1), 256)) }.expect("launch");
    assert_close("embed_bf16", &down(&g, &od), &want, 0.0, 0.0);
    // the KV write rounds into the bf16 cache: bit-exact to `half`'s round-to-nearest-even
    let (kvd, n_slots) = (192usize, 64usize);
    let src = randn(&mut rng, 3 * kvd, 1.0);
    let slots: Vec<u32> = vec![63, 0, 17];
    let mut want = vec![0u16; n_slots * kvd];
    for (r, &s) in slots.iter().enumerate() {
        for (d, &v) in want[s as usize * kvd..(s as usize + 1) * kvd]
            .iter_mut()
            .zip(&src[r * kvd..(r + 1) * kvd])
        {
            *d = bf16::from_f32(v).to_bits();
        }
    }
    let mut cache = g.stream.alloc_zeros::<u16>(n_slots * kvd).expect("alloc");
    let (sd, sl, kv_i) = (up(&g, &src), up(&g, &slots), kvd as i32);
    let f = g.function(Kernel::WriteKv).expect("kernel");
    let mut b = g.stream.launch_builder(&f);
    b.arg(&mut cache).arg(&sd).arg(&sl).arg(&kv_i);
    // SAFETY: matches write_kv's signature (a bf16 cache); every slot < n_slots.
    unsafe { b.launch(cfg((3, 1), 128)) }.expect("launch");
    let got: Vec<u16> = g.stream.clone_dtoh(&cache).expect("download");
    assert_eq!(got, want, "write_kv");
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn hadamard_rotation_is_bit_identical_to_the_cpu() {
    let mut g = gpu();
    let mut rng = Rng::new(6);
    for (len, block) in [(576, 64), (1536 * 3, 512), (4096, 4096), (48, 16)] {
        let x = randn(&mut rng, len, 1.0);
        let mut want = x.clone();
        ferroq::quant::hadamard::fwht(&mut want, block);
        let mut xd = up(&g, &x);
        let (f, b_i) = (
            g.function(Kernel::FwhtBlocks).expect("kernel"),
            block as i32,
        );
        let mut b = g.stream.launch_builder(&f);
        b.arg(&mut xd).arg(&b_i);
        let cfg = LaunchConfig {
            grid_dim: ((len / block) as u32, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: (block * 4) as u32,
        };
        // SAFETY: matches fwht_blocks; len is whole blocks; shared memory holds one block.
        unsafe { b.launch(cfg) }.expect("launch");
        assert_eq!(down(&g, &xd), want, "fwht {len} in blocks of {block}");
    }
}

/// The dense linear through `CudaBackend` on every path it has — the GEMV (decode rows),
/// cuBLAS and ferroq's own tensor-core GEMM (bf16-rounded activations), the CUDA-core tile
/// (k not a multiple of 8) — against the CPU backend on the same bf16 weights, with bias. The
/// GPU rounds activations to bf16 where the CPU keeps f32, so the bound is 2⁻⁸ of Σ|x·w| per
/// output. cuBLAS must be loadable on the device (scripts/gpu-check.sh puts PyTorch's
/// libcublas on the library path); a missing one fails here instead of passing untested.
#[test]
#[ignore = "needs a CUDA GPU"]
fn dense_linear_paths_match_the_cpu() {
    use ferroq::backend::cuda::backend::CudaBackend;
    use ferroq::backend::linear::{Linear, LinearWeight};
    use ferroq::quant::{ActSpec, Phase};
    use ferroq::tensor::{DType, HostTensor};
    use std::sync::Arc;
    let mut gb = CudaBackend::new(0).unwrap_or_else(|e| panic!("these tests need a CUDA GPU: {e}"));
    let cb = CpuBackend::new();
    let mut rng = Rng::new(41);
    for &(m, n, k) in &[
        (1, 77, 576),
        (37, 130, 384),
        (200, 300, 584),
        (20, 30, 36),
        (513, 256, 128),
    ] {
        let w = randn(&mut rng, n * k, 0.2);
        let x = randn(&mut rng, m * k, 1.0);
        let bias = randn(&mut rng, n, 0.5);
        let t = HostTensor::from_f32(vec![n, k], w.clone()).expect("tensor");
        let cpu_lin = Linear {
            name: "dense".into(),
            in_features: k,
            out_features: n,
            weight: LinearWeight::Dense(Arc::new(
                cb.upload_matrix(&t, DType::BF16).expect("cpu upload"),
            )),
            bias: Some(bias.clone()),
            act: ActSpec::NONE,
        };
        let gpu_lin = Linear {
            name: "dense".into(),
            in_features: k,
            out_features: n,
            weight: LinearWeight::Dense(Arc::new(
                gb.upload_matrix(&t, DType::BF16).expect("gpu upload"),
            )),
            bias: Some(gb.upload(&bias).expect("bias")),
            act: ActSpec::NONE,
        };
        let mut want = vec![0f32; m * n];
        cb.linear(&mut want, &x, &cpu_lin, m, Phase::Prefill)
            .expect("cpu linear");
        let wb: Vec<f32> = w.iter().map(|&v| bf16::from_f32(v).to_f32()).collect();
        let tc_path = m > 8 && k % 8 == 0;
        for blas in [true, false] {
            let on = gb.set_cublas(blas).expect("cublas");
            assert_eq!(
                on, blas,
                "cuBLAS (libcublas.so.13) must be loadable on the device"
            );
            if !blas && !tc_path {
                continue; // the same kernel as with cuBLAS on
            }
            let xd = gb.upload(&x).expect("x");
            let mut od = gb.alloc(m * n).expect("out");
            gb.linear(&mut od, &xd, &gpu_lin, m, Phase::Prefill)
                .expect("gpu linear");
            let mut got = vec![0f32; m * n];
            gb.read(&od, 0, &mut got).expect("read");
            for i in 0..m {
                for j in 0..n {
                    let mag: f32 = (0..k).map(|t| (x[i * k + t] * wb[j * k + t]).abs()).sum();
                    let (g, c) = (got[i * n + j], want[i * n + j]);
                    assert!(
                        (g - c).abs() <= mag / 256.0 + 1e-5,
                        "{m}x{n}x{k} cublas={blas} [{i},{j}]: gpu {g} cpu {c}"
                    );
                }
            }
        }
    }
}
