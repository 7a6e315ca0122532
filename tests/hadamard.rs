//! Online Hadamard rotation: the fast transform equals the explicit Sylvester matrix, the
//! rotated float model computes the same function, rotation survives the checkpoint, and bad
//! recipes / configs / blocks are refused with errors that name the problem.

mod common;

use common::*;
use ferroq::backend::cpu::CpuBackend;
use ferroq::backend::prelude::*;
use ferroq::checkpoint::site::OnlineHadamard;
use ferroq::checkpoint::site::Site;
use ferroq::model::llama::{LlamaModel, Logits};
use ferroq::ptq::pipeline::{quantize, QuantizeOptions};
use ferroq::ptq::recipe::Recipe;
use ferroq::quant::hadamard;
use ferroq::tensor::DType;
use serde_json::json;

/// Sylvester Hadamard of order b (b a power of two), unnormalised, row-major.
fn sylvester(b: usize) -> Vec<f32> {
    let mut h = vec![1f32];
    let mut n = 1;
    while n < b {
        let mut next = vec![0f32; 4 * n * n];
        for i in 0..n {
            for j in 0..n {
                let v = h[i * n + j];
                next[i * 2 * n + j] = v;
                next[i * 2 * n + j + n] = v;
                next[(i + n) * 2 * n + j] = v;
                next[(i + n) * 2 * n + j + n] = -v;
            }
        }
        h = next;
        n *= 2;
    }
    h
}

#[test]
fn fwht_equals_the_explicit_matrix_and_is_its_own_inverse() {
    let mut rng = ferroq::engine::sampler::Rng::new(3);
    for block in [2usize, 8, 64, 512] {
        let blocks = 3;
        let x = randn(&mut rng, block * blocks, 10.0);
        let mut y = x.clone();
        hadamard::fwht(&mut y, block);
        let h = sylvester(block);
        let norm = 1.0 / (block as f64).sqrt();
        for bi in 0..blocks {
            let xs = &x[bi * block..(bi + 1) * block];
            for i in 0..block {
                let want: f64 = (0..block)
                    .map(|j| h[i * block + j] as f64 * xs[j] as f64)
                    .sum::<f64>()
                    * norm;
                let got = y[bi * block + i] as f64;
                // f32 butterflies: error grows with log2(block) and the values' magnitude
                let tol = 1e-6 * 10.0 * (block as f64).sqrt() * (block as f64).log2().max(1.0);
                assert!(
                    (got - want).abs() <= tol,
                    "block {block}: row {i}: {got} vs {want}"
                );
            }
        }
        hadamard::fwht(&mut y, block);
        let worst = max_abs_diff(&y, &x);
        assert!(
            worst <= 1e-4,
            "block {block}: H·H·x differs from x by {worst}"
        );
    }
}

#[test]
fn fwht_vector_path_is_bit_identical_to_the_portable_one() {
    let mut rng = ferroq::engine::sampler::Rng::new(4);
    for block in [8usize, 16, 32, 64, 512, 4096] {
        let x = randn(&mut rng, block * 3, 10.0);
        let (mut fast, mut slow) = (x.clone(), x.clone());
        hadamard::fwht(&mut fast, block);
        hadamard::fwht_portable(&mut slow, block);
        let same = fast
            .iter()
            .zip(&slow)
            .all(|(a, b)| a.to_bits() == b.to_bits());
        assert!(
            same,
            "block {block}: the dispatched transform differs from the portable one"
        );
    }
}

#[test]
fn backend_op_checks_its_block() {
    let b = CpuBackend::new();
    let mut x = b.upload(&[1.0f32; 48]).expect("upload");
    assert!(b.hadamard(&mut x, 48, 16).is_ok());
    for (len, block) in [(48usize, 12usize), (48, 32), (64, 16)] {
        let e = b
            .hadamard(&mut x, len, block)
            .expect_err("bad block or length");
        eprintln!("{e}");
    }
}

/// A tiny config whose four inputs all have power-of-two blocks (hidden 32, FFN 48 → 16).
fn config() -> ferroq::checkpoint::config::ModelConfig {
    let mut j = tiny_config(false)
        .to_hf_json("float32")
        .expect("config json");
    j["intermediate_size"] = json!(48);
    ferroq::checkpoint::config::ModelConfig::from_hf_json(&j.to_string()).expect("config")
}

fn logits(m: &LlamaModel<CpuBackend>, ids: &[u32]) -> Vec<f32> {
    let mut s = m.new_session(32, 32, true).expect("session");
    m.forward(&mut s, ids, Logits::All)
        .expect("forward")
        .to_vec()
}

#[test]
fn rotated_float_model_computes_the_same_function() {
    let c = config();
    let w = tiny_weights(&c, 5);
    let base = LlamaModel::load(CpuBackend::new(), c.clone(), &w, Some(DType::F32)).expect("base");
    let mut rc = c.clone();
    let mut rw = w.clone();
    for site in Site::ALL {
        let block = hadamard::block_for(c.site_dim(site)).expect("power-of-two block");
        rc.hadamard.set(site, block, c.site_dim(site)).expect("set");
        for l in 0..c.num_layers {
            for m in site.linears() {
                let t = rw
                    .get_mut(&format!("model.layers.{l}.{m}.weight"))
                    .expect("weight");
                hadamard::rotate_columns(t, block).expect("rotate");
            }
        }
    }
    assert_eq!(rc.hadamard.sites().len(), 4);
    let rot = LlamaModel::load(CpuBackend::new(), rc, &rw, Some(DType::F32)).expect("rotated");
    let ids: Vec<u32> = (0..20).map(|i| (i * 7 + 3) % 67).collect();
    let (want, got) = (logits(&base, &ids), logits(&rot, &ids));
    let scale = max_abs(&want);
    let worst = max_abs_diff(&got, &want);
    assert!(
        worst <= 1e-4 * scale,
        "rotation changed the function by {worst} (max {scale})"
    );
    // the rotated weights alone (model not told to rotate) compute something else
    let wrong = LlamaModel::load(CpuBackend::new(), c, &rw, Some(DType::F32)).expect("unrotated");
    let off = max_abs_diff(&logits(&wrong, &ids), &want);
    assert!(off > 1e-2 * scale, "rotation had no effect ({off})");
}

/// Calibration that fits the tiny model's 64-token context.
fn small_calib() -> QuantizeOptions {
    QuantizeOptions {
        n_samples: 4,
        seq_len: 16,
        ..Default::default()
    }
}

const ROTATED_W8A8: &str = "
processors:
  - type: iter_smooth
    alpha: 0.5
  - type: hadamard
  - type: linear_quant
    exclude: ['model.layers.1.mlp.down_proj']
    qconfig:
      act: {scope: pd_mix, dtype: int8, symmetric: false}
      weight: {scope: per_channel, dtype: int8}
";

#[test]
fn rotation_survives_the_checkpoint_and_is_checked_at_load() {
    let c = config();
    let w = tiny_weights(&c, 9);
    let tok = byte_tokenizer();
    let r = Recipe::from_yaml(ROTATED_W8A8).expect("recipe");
    let q = quantize(c.clone(), tok, w, &r, &small_calib(), &|_, _, _| {}).expect("quantize");
    assert_eq!(
        q.config.hadamard.sites(),
        vec![
            (Site::AttnIn, 32),
            (Site::OIn, 32),
            (Site::MlpIn, 32),
            (Site::DownIn, 16)
        ]
    );
    let mem = LlamaModel::load(CpuBackend::new(), q.config.clone(), &q, None).expect("in memory");
    let dir = tempfile::tempdir().expect("tmp");
    let out = dir.path().join("q");
    ferroq::ptq::ct_write::write(&q, &out).expect("write");
    let loaded = ferroq::model::open(CpuBackend::new(), &out, None).expect("open");
    assert_eq!(loaded.model.config.hadamard, q.config.hadamard);
    let ids: Vec<u32> = (0..12).map(|i| (i * 5 + 1) % 67).collect();
    let (a, b) = (logits(&mem, &ids), logits(&loaded.model, &ids));
    let scale = max_abs(&a);
    let worst = max_abs_diff(&a, &b);
    // the fallback down_proj is BF16 on disk, f32 in memory
    assert!(
        worst <= 2e-2 * scale,
        "checkpoint differs by {worst} (max {scale})"
    );

    // quantized weights with the rotation dropped from the config: refused, not run wrong
    match LlamaModel::load(CpuBackend::new(), c.clone(), &q, None) {
        Err(e) => assert!(e.to_string().contains("Hadamard"), "{e}"),
        Ok(_) => panic!("rotated weights loaded into an unrotated model"),
    }

    // a config.json with a malformed rotation names it
    let cfg_path = out.join("config.json");
    let good = std::fs::read_to_string(&cfg_path).expect("config");
    for (bad, needle) in [
        (json!({"down_in": 24}), "power of two"),
        (json!({"up_in": 16}), "unknown input `up_in`"),
        (json!({"o_in": "x"}), "integer"),
        (json!([16]), "map input names"),
    ] {
        let mut j: serde_json::Value = serde_json::from_str(&good).expect("json");
        j["quantization_config"]["ferroq"]["hadamard"] = bad;
        std::fs::write(&cfg_path, j.to_string()).expect("write");
        match ferroq::model::open(CpuBackend::new(), &out, None) {
            Err(e) => assert!(e.to_string().contains(needle), "{e} lacks {needle:?}"),
            Ok(_) => panic!("malformed hadamard accepted: {needle}"),
        }
    }

    // the record deleted from config.json (as a tool that drops unknown keys would): the
    // marker stored with the weights refuses the load instead of running unrotated
    for strip in ["hadamard", "ferroq"] {
        let mut j: serde_json::Value = serde_json::from_str(&good).expect("json");
        let qc = j["quantization_config"]
            .as_object_mut()
            .expect("quantization_config");
        match strip {
            "ferroq" => {
                qc.remove("ferroq");
            }
            _ => {
                qc["ferroq"]
                    .as_object_mut()
                    .expect("ferroq")
                    .remove("hadamard");
            }
        }
        std::fs::write(&cfg_path, j.to_string()).expect("write");
        match ferroq::model::open(CpuBackend::new(), &out, None) {
            Err(e) => assert!(e.to_string().contains("attn_in:32"), "{e}"),
            Ok(_) => panic!("rotated weights loaded with the `{strip}` record deleted"),
        }
    }
}

#[test]
fn sites_without_a_block_are_skipped_and_reported() {
    let c = tiny_config(false); // FFN 45: no power-of-two block for down_in
    let w = tiny_weights(&c, 2);
    let r = Recipe::from_yaml(ROTATED_W8A8).expect("recipe");
    let q = quantize(c, byte_tokenizer(), w, &r, &small_calib(), &|_, _, _| {}).expect("quantize");
    assert_eq!(q.report.hadamard_skipped, vec![Site::DownIn]);
    assert_eq!(q.config.hadamard.block(Site::DownIn), None);
    assert_eq!(q.config.hadamard.block(Site::AttnIn), Some(32));
}

#[test]
fn recipes_put_rotation_after_smoothing_and_name_sites() {
    let before = "
processors:
  - type: hadamard
  - type: iter_smooth
  - type: linear_quant
    qconfig:
      weight: {scope: per_channel, dtype: int8}
";
    let e = Recipe::from_yaml(before).expect_err("rotation before smoothing");
    assert!(e.to_string().contains("after every smoothing"), "{e}");
    let unknown = "
processors:
  - type: hadamard
    sites: [down_in, gate_in]
  - type: linear_quant
    qconfig:
      weight: {scope: per_channel, dtype: int8}
";
    let e = Recipe::from_yaml(unknown).expect_err("unknown site");
    assert!(e.to_string().contains("gate_in"), "{e}");
    let mut h = OnlineHadamard::NONE;
    assert!(
        h.set(Site::DownIn, 32, 48).is_err(),
        "32 does not divide 48"
    );
    assert!(h.set(Site::DownIn, 16, 48).is_ok());
}
