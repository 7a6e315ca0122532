//! compressed-tensors checkpoints written by hand the way llm-compressor writes them (BF16
//! scales, `targets: ["Linear"]`, `ignore: ["lm_head"]`) for a tiny random model: W8A8
//! dynamic, W4A16 group 16, FP8 static per-tensor. Each loads and runs exactly like the same
//! quantized weights given to the model directly; broken checkpoints and recipes give errors
//! that name the problem.

mod common;

use common::*;
use ferroq::backend::cpu::CpuBackend;
use ferroq::checkpoint::config::ModelConfig;
use ferroq::checkpoint::safetensors_io::{write_raw_safetensors, RawTensor};
use ferroq::checkpoint::site::decoder_linears;
use ferroq::checkpoint::WeightSource;
use ferroq::model::llama::{LlamaModel, Logits};
use ferroq::ptq::recipe::Recipe;
use ferroq::quant::formats::{self, Fp8};
use ferroq::quant::{ActQuant, ActSpec, QDType, QuantWeight};
use ferroq::tensor::{DType, HostTensor};
use ferroq::Error;
use half::bf16;
use safetensors::Dtype as St;
use serde_json::json;
use std::collections::BTreeMap;
use std::path::Path;

fn config() -> ModelConfig {
    let mut j = tiny_config(false)
        .to_hf_json("bfloat16")
        .expect("config json");
    j["intermediate_size"] = json!(48); // int4 packing needs in_features % 8 == 0
    ModelConfig::from_hf_json(&j.to_string()).expect("config")
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    W8A8,
    W4A16,
    Fp8Static,
}

/// In-memory weights for the direct-model reference.
struct Direct {
    dense: BTreeMap<String, HostTensor>,
    q: BTreeMap<String, (QuantWeight, ActSpec)>,
}

impl WeightSource for Direct {
    fn tensor_names(&self) -> Vec<String> {
        self.dense.keys().cloned().collect()
    }
    fn load(&self, n: &str) -> ferroq::Result<HostTensor> {
        self.dense
            .get(n)
            .cloned()
            .ok_or_else(|| Error::MissingTensor(n.into()))
    }
    fn quant_linear(&self, n: &str) -> ferroq::Result<Option<(QuantWeight, ActSpec)>> {
        Ok(self.q.get(n).cloned())
    }
}

fn bf16_bytes(v: &[f32]) -> Vec<u8> {
    v.iter()
        .flat_map(|x| bf16::from_f32(*x).to_le_bytes())
        .collect()
}
fn bf16_round(v: &[f32]) -> Vec<f32> {
    v.iter().map(|x| bf16::from_f32(*x).to_f32()).collect()
}

/// Write the checkpoint into `dir` and return the equivalent direct source.
fn write_checkpoint(dir: &Path, kind: Kind, c: &ModelConfig) -> Direct {
    let w = tiny_weights(c, 21);
    let linears = decoder_linears(c.num_layers);
    let mut files: Vec<(String, St, Vec<usize>, Vec<u8>)> = Vec::new();
    let mut direct = Direct {
        dense: BTreeMap::new(),
        q: BTreeMap::new(),
    };
    for (name, t) in &w {
        let module = name.trim_end_matches(".weight");
        if !linears.iter().any(|l| l == module) {
            let b = t.to_dtype(DType::BF16);
            files.push((
                name.clone(),
                St::BF16,
                t.shape.clone(),
                b.as_le_bytes().to_vec(),
            ));
            direct.dense.insert(name.clone(), b);
            continue;
        }
        let (n, k) = (t.shape[0], t.shape[1]);
        let v = t.to_f32_vec();
        match kind {
            Kind::W8A8 => {
                let scale: Vec<f32> =
                    bf16_round(&v.chunks(k).map(|r| max_abs(r) / 127.0).collect::<Vec<_>>());
                let q: Vec<i8> = v
                    .iter()
                    .enumerate()
                    .map(|(i, &x)| formats::quantize_i8(x, 1.0 / scale[i / k], 0, true))
                    .collect();
                files.push((
                    name.clone(),
                    St::I8,
                    vec![n, k],
                    bytemuck::cast_slice(&q).to_vec(),
                ));
                files.push((
                    format!("{module}.weight_scale"),
                    St::BF16,
                    vec![n, 1],
                    bf16_bytes(&scale),
                ));
                let colsum = q
                    .chunks(k)
                    .map(|r| r.iter().map(|&x| x as i32).sum())
                    .collect();
                let act = ActSpec {
                    policy: ActQuant::Dynamic,
                    dtype: QDType::Int8,
                    symmetric: true,
                };
                direct
                    .q
                    .insert(module.into(), (QuantWeight::Int8 { q, scale, colsum }, act));
            }
            Kind::W4A16 => {
                let g = 16;
                let groups = k / g;
                let scale: Vec<f32> =
                    bf16_round(&v.chunks(g).map(|s| max_abs(s) / 7.0).collect::<Vec<_>>());
                let q: Vec<i8> = v
                    .iter()
                    .enumerate()
                    .map(|(i, &x)| formats::quantize_i4(x, 1.0 / scale[i / g], 0))
                    .collect();
                files.push((
                    format!("{module}.weight_packed"),
                    St::I32,
                    vec![n, k / 8],
                    bytemuck::cast_slice(&formats::pack_i4_int32(&q)).to_vec(),
                ));
                // int64, as compressed-tensors writes `torch.tensor(weight.shape)`
                files.push((
                    format!("{module}.weight_shape"),
                    St::I64,
                    vec![2],
                    bytemuck::cast_slice(&[n as i64, k as i64]).to_vec(),
                ));
                files.push((
                    format!("{module}.weight_scale"),
                    St::BF16,
                    vec![n, groups],
                    bf16_bytes(&scale),
                ));
                let qw = QuantWeight::Int4 {
                    packed: formats::pack_i4_bytes(&q),
                    scale,
                    zero: Vec::new(),
                    group: g,
                };
                direct.q.insert(module.into(), (qw, ActSpec::NONE));
            }
            Kind::Fp8Static => {
                let s = max_abs(&v) / 448.0;
                let codes: Vec<u8> = v.iter().map(|x| Fp8::E4M3.encode(x / s)).collect();
                files.push((name.clone(), St::F8_E4M3, vec![n, k], codes.clone()));
                files.push((
                    format!("{module}.weight_scale"),
                    St::F32,
                    vec![1],
                    s.to_le_bytes().to_vec(),
                ));
                let input_scale = 4.0f32 / 448.0;
                files.push((
                    format!("{module}.input_scale"),
                    St::F32,
                    vec![1],
                    input_scale.to_le_bytes().to_vec(),
                ));
                let act = ActSpec {
                    policy: ActQuant::Static {
                        scale: input_scale,
                        zp: 0,
                    },
                    dtype: QDType::Fp8E4M3,
                    symmetric: true,
                };
                direct.q.insert(
                    module.into(),
                    (
                        QuantWeight::Fp8 {
                            codes,
                            scale: vec![s; n],
                        },
                        act,
                    ),
                );
            }
        }
    }
    let raw: Vec<(String, RawTensor)> = files
        .iter()
        .map(|(n, d, s, b)| {
            (
                n.clone(),
                RawTensor {
                    dtype: *d,
                    shape: s.clone(),
                    bytes: b,
                },
            )
        })
        .collect();
    write_raw_safetensors(&dir.join("model.safetensors"), &raw, None).expect("write");
    let (weights, acts, format) = match kind {
        Kind::W8A8 => (
            json!({"num_bits": 8, "type": "int", "symmetric": true, "strategy": "channel", "group_size": null, "dynamic": false, "observer": "minmax"}),
            json!({"num_bits": 8, "type": "int", "symmetric": true, "strategy": "token", "dynamic": true, "observer": null}),
            "int-quantized",
        ),
        Kind::W4A16 => (
            json!({"num_bits": 4, "type": "int", "symmetric": true, "strategy": "group", "group_size": 16, "dynamic": false, "actorder": null}),
            serde_json::Value::Null,
            "pack-quantized",
        ),
        Kind::Fp8Static => (
            json!({"num_bits": 8, "type": "float", "symmetric": true, "strategy": "tensor", "dynamic": false}),
            json!({"num_bits": 8, "type": "float", "symmetric": true, "strategy": "tensor", "dynamic": false}),
            "float-quantized",
        ),
    };
    let mut cfg = c.to_hf_json("bfloat16").expect("config json");
    cfg["quantization_config"] = json!({
        "quant_method": "compressed-tensors", "format": format, "quantization_status": "compressed",
        "ignore": ["lm_head"], "kv_cache_scheme": null,
        "config_groups": {"group_0": {"targets": ["Linear"], "weights": weights, "input_activations": acts}},
    });
    std::fs::write(dir.join("config.json"), cfg.to_string()).expect("config");
    direct
}

const IDS: [u32; 6] = [5, 9, 30, 2, 60, 11];

fn logits(m: &LlamaModel<CpuBackend>) -> Vec<f32> {
    let mut s = m.new_session(8, 16, false).expect("s");
    let mut v = m.forward(&mut s, &IDS, Logits::Last).expect("fwd").to_vec();
    v.extend_from_slice(m.forward(&mut s, &[7], Logits::Last).expect("decode"));
    v
}

#[test]
fn llm_compressor_style_checkpoints_load() {
    let c = config();
    let float =
        LlamaModel::load(CpuBackend::new(), c.clone(), &tiny_weights(&c, 21), None).expect("float");
    let fl = logits(&float);
    for kind in [Kind::W8A8, Kind::W4A16, Kind::Fp8Static] {
        let dir = tempfile::tempdir().expect("tempdir");
        let direct = write_checkpoint(dir.path(), kind, &c);
        let src = ferroq::checkpoint::ct::CompressedTensors::open(dir.path(), &c).expect("open");
        let loaded = LlamaModel::load(CpuBackend::new(), c.clone(), &src, None).expect("load");
        let reference =
            LlamaModel::load(CpuBackend::new(), c.clone(), &direct, None).expect("direct");
        assert!(
            logits(&loaded) == logits(&reference),
            "checkpoint and direct weights disagree"
        );
        assert_eq!(
            loaded
                .linears()
                .filter(|l| matches!(l.weight, ferroq::backend::linear::LinearWeight::Quant(_)))
                .count(),
            14
        );
        // and the quantized model stays near the float one
        let got = logits(&loaded);
        let scale = max_abs(&fl);
        let worst = max_abs_diff(&got, &fl);
        assert!(
            worst < 0.25 * scale,
            "quantized logits drift by {worst} (max {scale})"
        );
    }
}

fn rewrite(dir: &Path, edit: impl Fn(&mut Vec<(String, St, Vec<usize>, Vec<u8>)>)) {
    let st = ferroq::checkpoint::safetensors_io::SafetensorsWeights::open_dir(dir).expect("open");
    let mut files: Vec<(String, St, Vec<usize>, Vec<u8>)> = st
        .tensor_names()
        .into_iter()
        .map(|n| {
            let (d, s, b) = st.raw(&n).expect("raw");
            (n, d, s, b.to_vec())
        })
        .collect();
    drop(st);
    edit(&mut files);
    let raw: Vec<(String, RawTensor)> = files
        .iter()
        .map(|(n, d, s, b)| {
            (
                n.clone(),
                RawTensor {
                    dtype: *d,
                    shape: s.clone(),
                    bytes: b,
                },
            )
        })
        .collect();
    write_raw_safetensors(&dir.join("model.safetensors"), &raw, None).expect("write");
}

fn load_err(dir: &Path, c: &ModelConfig) -> Error {
    let r = ferroq::checkpoint::ct::CompressedTensors::open(dir, c)
        .and_then(|src| LlamaModel::load(CpuBackend::new(), c.clone(), &src, None));
    match r {
        Err(e) => e,
        Ok(_) => panic!("a broken checkpoint loaded"),
    }
}

#[test]
fn broken_checkpoints_name_the_problem() {
    let c = config();
    let target = "model.layers.1.self_attn.o_proj.weight_scale";
    // missing scale tensor
    let dir = tempfile::tempdir().expect("tempdir");
    write_checkpoint(dir.path(), Kind::W8A8, &c);
    rewrite(dir.path(), |f| f.retain(|t| t.0 != target));
    assert!(matches!(load_err(dir.path(), &c), Error::MissingTensor(n) if n == target));
    // wrong scale shape
    let dir = tempfile::tempdir().expect("tempdir");
    write_checkpoint(dir.path(), Kind::W8A8, &c);
    rewrite(dir.path(), |f| {
        for t in f.iter_mut().filter(|t| t.0 == target) {
            t.2 = vec![16, 2];
        }
    });
    match load_err(dir.path(), &c) {
        Error::ShapeMismatch { tensor, actual, .. } => {
            assert_eq!((tensor.as_str(), actual), (target, vec![16, 2]))
        }
        e => panic!("wrong error {e}"),
    }
    // unsupported num_bits
    let dir = tempfile::tempdir().expect("tempdir");
    write_checkpoint(dir.path(), Kind::W8A8, &c);
    let p = dir.path().join("config.json");
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&p).expect("read")).expect("json");
    cfg["quantization_config"]["config_groups"]["group_0"]["weights"]["num_bits"] = json!(3);
    let text = cfg.to_string();
    std::fs::write(&p, text).expect("write");
    match load_err(dir.path(), &c) {
        Error::Config(m) => assert!(m.contains("num_bits 3"), "{m}"),
        e => panic!("wrong error {e}"),
    }
    // int8 weight stored with the wrong dtype
    let dir = tempfile::tempdir().expect("tempdir");
    write_checkpoint(dir.path(), Kind::W8A8, &c);
    rewrite(dir.path(), |f| {
        for t in f
            .iter_mut()
            .filter(|t| t.0 == "model.layers.0.mlp.up_proj.weight")
        {
            t.1 = St::U8;
        }
    });
    assert!(
        matches!(load_err(dir.path(), &c), Error::UnsupportedDType { tensor, .. } if tensor == "model.layers.0.mlp.up_proj.weight")
    );
}

/// `weight_shape` loads as int64 (compressed-tensors) or int32 (older ferroq outputs); another
/// dtype or a wrong size is an error naming the tensor.
#[test]
fn int4_weight_shape_dtypes() {
    let c = config();
    let name = "model.layers.0.mlp.down_proj.weight_shape";
    let with = |d: St, bytes: Vec<u8>| {
        let dir = tempfile::tempdir().expect("tempdir");
        write_checkpoint(dir.path(), Kind::W4A16, &c);
        rewrite(dir.path(), |f| {
            for t in f.iter_mut().filter(|t| t.0 == name) {
                (t.1, t.3) = (d, bytes.clone());
            }
        });
        dir
    };
    let (n, k) = (c.hidden_size, c.intermediate_size);
    let i32s = with(
        St::I32,
        bytemuck::cast_slice(&[n as i32, k as i32]).to_vec(),
    );
    let src = ferroq::checkpoint::ct::CompressedTensors::open(i32s.path(), &c).expect("open");
    LlamaModel::load(CpuBackend::new(), c.clone(), &src, None).expect("int32 weight_shape loads");
    let f32s = with(
        St::F32,
        bytemuck::cast_slice(&[n as f32, k as f32]).to_vec(),
    );
    assert!(
        matches!(load_err(f32s.path(), &c), Error::UnsupportedDType { tensor, .. } if tensor == name)
    );
    // a wrong size disagrees with the packed tensor it describes
    let wrong = with(
        St::I64,
        bytemuck::cast_slice(&[n as i64, k as i64 + 8]).to_vec(),
    );
    match load_err(wrong.path(), &c) {
        Error::ShapeMismatch { tensor, .. } => {
            assert!(
                tensor.starts_with("model.layers.0.mlp.down_proj.weight_"),
                "{tensor}"
            )
        }
        e => panic!("wrong error {e}"),
    }
}

#[test]
fn bad_recipes_name_the_key_or_value() {
    let err = |y: &str| match Recipe::from_yaml(y) {
        Err(Error::InvalidArgument(m)) => m,
        Err(e) => panic!("wrong error {e}"),
        Ok(_) => panic!("accepted:\n{y}"),
    };
    let base = |extra: &str, act: &str, weight: &str| {
        format!("processors:\n  - type: iter_smooth\n    {extra}\n  - type: linear_quant\n    qconfig:\n      {act}\n      weight: {weight}\n")
    };
    let m = err(&format!(
        "lm_head: int3\n{}",
        base(
            "alpha: 0.5",
            "act: {scope: per_token, dtype: int8}",
            "{scope: per_channel, dtype: int8}"
        )
    ));
    assert!(m.contains("int3"), "{m}");
    let m = err(&base(
        "alpah: 0.5",
        "act: {scope: per_token, dtype: int8}",
        "{scope: per_channel, dtype: int8}",
    ));
    assert!(m.contains("alpah"), "{m}");
    let m = err(&base(
        "alpha: 0.5",
        "act: {scope: per_token, dtype: int3}",
        "{scope: per_channel, dtype: int8}",
    ));
    assert!(m.contains("int3"), "{m}");
    let m = err(&base(
        "alpha: 0.5",
        "act: {scope: per_token, dtype: int8}",
        "{scope: per_channel, dtype: int8, mehtod: ssz}",
    ));
    assert!(m.contains("mehtod"), "{m}");
    let m = err(&base(
        "alpha: 0.5",
        "act: {scope: per_token, dtype: int8}",
        "{scope: per_block, dtype: int8}",
    ));
    assert!(m.contains("per_block"), "{m}");
    let m = err(&base(
        "alpha: 1.5",
        "act: {scope: per_token, dtype: int8}",
        "{scope: per_channel, dtype: int8}",
    ));
    assert!(m.contains("alpha"), "{m}");
    let m = err(&base(
        "alpha: 0.5",
        "act: {scope: per_token, dtype: int8}",
        "{scope: per_group, dtype: int4}",
    ));
    assert!(m.contains("group_size"), "{m}");
    let m = err(&base(
        "alpha: 0.5",
        "act: {scope: per_token, dtype: int8}",
        "{scope: per_group, group_size: 128, dtype: int4}",
    ));
    assert!(m.contains("weight-only"), "{m}");
    let m = err("processors:\n  - type: quarot_x\n");
    assert!(m.contains("quarot_x"), "{m}");
    let m = err("processors:\n  - type: iter_smooth\n");
    assert!(m.contains("linear_quant"), "{m}");
    match Recipe::load("w9a9") {
        Err(Error::InvalidArgument(m)) => assert!(m.contains("w9a9") && m.contains("w8a8"), "{m}"),
        _ => panic!("unknown preset accepted"),
    }
    for (name, _) in ferroq::ptq::recipe::PRESETS {
        Recipe::load(name).expect("presets parse");
    }
}

/// NaN, zero or negative scales and out-of-range or empty zero points are errors naming the
/// tensor, not garbage and not a panic.
#[test]
fn hostile_scales_and_zero_points_are_errors() {
    let c = config();
    let target = "model.layers.1.self_attn.o_proj.weight_scale";
    let msg = |e: Error| e.to_string();
    for bits in [0x7fc0u16, 0x0000, 0xbf80] {
        // NaN, 0, -1 in bf16
        let dir = tempfile::tempdir().expect("tempdir");
        write_checkpoint(dir.path(), Kind::W8A8, &c);
        rewrite(dir.path(), |f| {
            for t in f.iter_mut().filter(|t| t.0 == target) {
                t.3[..2].copy_from_slice(&bits.to_le_bytes());
            }
        });
        let e = msg(load_err(dir.path(), &c));
        assert!(
            e.contains(target) && e.contains("finite and positive"),
            "{e}"
        );
    }
    // static asymmetric int8 activations: an empty and an out-of-range input_zero_point
    let linears = decoder_linears(c.num_layers);
    let zname = format!("{}.input_zero_point", linears[2]);
    for (dtype, bytes, want) in [
        (St::I8, vec![], "input_zero_point"),
        (St::I32, 300i32.to_le_bytes().to_vec(), "[-128, 127]"),
    ] {
        let dir = tempfile::tempdir().expect("tempdir");
        write_checkpoint(dir.path(), Kind::W8A8, &c);
        let p = dir.path().join("config.json");
        let mut cfg: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&p).expect("read")).expect("json");
        let acts = &mut cfg["quantization_config"]["config_groups"]["group_0"]["input_activations"];
        acts["dynamic"] = json!(false);
        acts["symmetric"] = json!(false);
        acts["strategy"] = json!("tensor");
        std::fs::write(&p, cfg.to_string()).expect("write");
        rewrite(dir.path(), |f| {
            for l in &linears {
                f.push((
                    format!("{l}.input_scale"),
                    St::F32,
                    vec![1],
                    0.05f32.to_le_bytes().to_vec(),
                ));
                let (d, b) = if format!("{l}.input_zero_point") == zname {
                    (dtype, bytes.clone())
                } else {
                    (St::I8, vec![3u8])
                };
                let shape = if b.is_empty() { vec![0] } else { vec![1] };
                f.push((format!("{l}.input_zero_point"), d, shape, b));
            }
        });
        let e = msg(load_err(dir.path(), &c));
        assert!(e.contains(&zname) && e.contains(want), "{e}");
    }
}

/// Inputs are read with a bound: a device that never ends, an oversized recipe or a recipe
/// nested thousands deep are refused at once instead of read or parsed for seconds.
#[test]
fn unbounded_and_deeply_nested_inputs_are_refused() {
    let e = ferroq::checkpoint::read_text(Path::new("/dev/zero"), 1 << 20, "recipe")
        .expect_err("/dev/zero read to the end?");
    assert!(e.to_string().contains("larger than 1048576 bytes"), "{e}");
    let tok = byte_tokenizer();
    let e = ferroq::ptq::calib::load_samples(&tok, Some(Path::new("/dev/zero")), 4, 16)
        .expect_err("calibration from /dev/zero");
    assert!(e.to_string().contains("calibration file"), "{e}");
    let dir = tempfile::tempdir().expect("tempdir");
    let big = dir.path().join("big.yaml");
    std::fs::write(&big, " ".repeat(2 << 20)).expect("write");
    let e = Recipe::load(big.to_str().expect("path")).expect_err("a 2 MiB recipe");
    assert!(e.to_string().contains("larger than"), "{e}");
    let deep = format!("processors: {}", "[".repeat(65_536));
    let e = Recipe::from_yaml(&deep).expect_err("64k-deep recipe");
    assert!(e.to_string().contains("nested deeper"), "{e}");
}
