//! The `ferroq` binary end to end: bench JSON fields, quantize → generate, eval, and the error
//! messages for bad input.

mod common;

use std::process::Command;

fn ferroq(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_ferroq"))
        .args(args)
        .output()
        .expect("run ferroq")
}

#[test]
fn bench_json_has_the_documented_fields() {
    let gguf = common::real_gguf();
    let out = ferroq(&[
        "bench",
        "-m",
        gguf.to_str().expect("path"),
        "-p",
        "8",
        "-n",
        "4",
        "-r",
        "2",
        "-o",
        "json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).expect("bench prints JSON");
    let rows = rows.as_array().expect("an array of rows");
    assert_eq!(rows.len(), 2);
    for (row, test) in rows.iter().zip(["pp8", "tg4"]) {
        assert_eq!(row["test"], test);
        for f in [
            "model",
            "size_bytes",
            "n_params",
            "backend",
            "threads",
            "weights",
            "n_prompt",
            "n_gen",
            "avg_ts",
            "stddev_ts",
            "samples_ts",
        ] {
            assert!(!row[f].is_null(), "field {f} missing in {row}");
        }
        assert_eq!(row["samples_ts"].as_array().expect("samples").len(), 2);
        assert!(row["avg_ts"].as_f64().expect("avg") > 0.0);
        assert_eq!(row["size_bytes"], 98_362_432);
    }
}

#[test]
fn quantize_generate_eval_round_trip() {
    let gguf = common::real_gguf();
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("w8a8");
    let q = ferroq(&[
        "quantize",
        "-m",
        gguf.to_str().expect("p"),
        "--recipe",
        "w8a8",
        "--calib-samples",
        "2",
        "--calib-len",
        "64",
        "-o",
        out.to_str().expect("p"),
    ]);
    assert!(q.status.success(), "{}", String::from_utf8_lossy(&q.stderr));
    let g = ferroq(&[
        "generate",
        "-m",
        out.to_str().expect("p"),
        "-p",
        "The capital of France is",
        "-n",
        "4",
    ]);
    assert!(g.status.success(), "{}", String::from_utf8_lossy(&g.stderr));
    assert!(String::from_utf8_lossy(&g.stdout).starts_with("The capital of France is Paris"));
    assert!(String::from_utf8_lossy(&g.stderr).contains("decode:"));
    // eval of the baseline against itself: KL 0, full agreement
    let text = dir.path().join("t.txt");
    std::fs::write(
        &text,
        "The quick brown fox jumps over the lazy dog. ".repeat(40),
    )
    .expect("write");
    let e = ferroq(&[
        "eval",
        "-m",
        gguf.to_str().expect("p"),
        "--baseline",
        gguf.to_str().expect("p"),
        "--data",
        text.to_str().expect("p"),
        "--ctx",
        "64",
        "--chunks",
        "2",
        "--json",
    ]);
    assert!(e.status.success(), "{}", String::from_utf8_lossy(&e.stderr));
    let j: serde_json::Value = serde_json::from_slice(&e.stdout).expect("json");
    assert_eq!(j["kl_mean"], 0.0);
    assert_eq!(j["top1_agreement_pct"], 100.0);
    assert_eq!(j["scored_tokens"], 2 * 31);
}

#[test]
fn bad_input_gets_a_clear_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = ferroq(&["generate", "-m", "/nonexistent/model.gguf", "-p", "hi"]);
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("not found"));
    let junk = dir.path().join("junk.gguf");
    std::fs::write(&junk, b"this is not a model").expect("write");
    let bad = ferroq(&["generate", "-m", junk.to_str().expect("p"), "-p", "hi"]);
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("not a GGUF file"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
    let gguf = common::real_gguf();
    let r = ferroq(&[
        "quantize",
        "-m",
        gguf.to_str().expect("p"),
        "--recipe",
        "w3a3",
        "-o",
        dir.path().join("x").to_str().expect("p"),
    ]);
    assert!(String::from_utf8_lossy(&r.stderr).contains("w3a3"));
    assert!(
        !dir.path().join("x").exists(),
        "a failed quantize leaves no output"
    );
    let t = ferroq(&[
        "generate",
        "-p",
        "hi",
        "--temperature=-1",
        "-m",
        gguf.to_str().expect("p"),
    ]);
    assert!(String::from_utf8_lossy(&t.stderr).contains("temperature"));
    // an endless text input is refused at its bound, not read until memory runs out
    let z = ferroq(&[
        "generate",
        "--prompt-file",
        "/dev/zero",
        "-m",
        gguf.to_str().expect("p"),
    ]);
    let err = String::from_utf8_lossy(&z.stderr);
    assert!(
        err.contains("prompt file /dev/zero is larger than"),
        "{err}"
    );
}

/// A tokenizer.json that makes the tokenizers crate panic is one clean error line: the
/// caught panic is not reported on stderr as if the process had crashed.
#[test]
fn a_panicking_tokenizer_is_one_clean_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = common::tiny_config(false);
    common::write_hf_dir(dir.path(), &c, &common::tiny_weights(&c, 1));
    let mut j: serde_json::Value =
        serde_json::from_str(&common::byte_tokenizer().json).expect("json");
    j["post_processor"] = serde_json::json!({
        "type": "TemplateProcessing",
        "single": [{"SpecialToken": {"id": "<bos>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
        "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
        "special_tokens": {}
    });
    std::fs::write(dir.path().join("tokenizer.json"), j.to_string()).expect("write");
    let out = ferroq(&[
        "generate",
        "-m",
        dir.path().to_str().expect("p"),
        "-p",
        "abc",
        "-n",
        "1",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("tokenizer.json is malformed"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

/// Every command that runs a model takes `--device`; a CUDA device that cannot be opened (no
/// driver here, no 99th GPU on a GPU machine) is one line naming the problem, exit status 1,
/// and no backtrace unless RUST_BACKTRACE asks for one.
#[test]
fn device_flag_on_every_model_command_fails_in_one_line_without_a_gpu() {
    let gguf = common::real_gguf();
    let m = gguf.to_str().expect("path");
    let data = std::env::temp_dir().join("ferroq-device-flag.txt");
    std::fs::write(&data, "some text to score").expect("write");
    let d = data.to_str().expect("path");
    let out_dir = std::env::temp_dir().join("ferroq-device-flag-out");
    let o = out_dir.to_str().expect("path");
    let cmds: [&[&str]; 6] = [
        &["quantize", "-m", m, "-o", o],
        &["bench", "-m", m],
        &["eval", "-m", m, "--data", d],
        &["analyze", "-m", m],
        &["generate", "-m", m, "-p", "hi"],
        &["serve", "-m", m, "--port", "0"],
    ];
    for args in cmds {
        let out = Command::new(env!("CARGO_BIN_EXE_ferroq"))
            .args(args)
            .args(["--device", "cuda:99"])
            .env_remove("RUST_BACKTRACE")
            .env_remove("RUST_LIB_BACKTRACE")
            .output()
            .expect("run ferroq");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "{args:?}: {err}");
        assert!(lines[0].starts_with("error: CUDA"), "{args:?}: {err}");
        if !std::path::Path::new("/dev/nvidiactl").exists() {
            assert!(lines[0].contains("no CUDA driver"), "{args:?}: {err}");
        }
    }
    assert!(!out_dir.exists(), "a failed quantize wrote {o}");
    let bad = ferroq(&["bench", "-m", m, "--device", "tpu"]);
    assert!(String::from_utf8_lossy(&bad.stderr).contains("unknown device `tpu`"));
}

/// `quantize -o DIR` refuses a non-empty DIR before any work (here the calibration file it
/// would read later does not exist, and the output is what it names).
#[test]
fn quantize_refuses_a_non_empty_output_before_calibrating() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("full");
    std::fs::create_dir(&out).expect("mkdir");
    std::fs::write(out.join("keep.txt"), "mine").expect("write");
    let gguf = common::real_gguf();
    let r = ferroq(&[
        "quantize",
        "-m",
        gguf.to_str().expect("path"),
        "--calib",
        "/nonexistent/calib.txt",
        "-o",
        out.to_str().expect("path"),
    ]);
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(!r.status.success());
    assert!(err.contains("exists and is not empty"), "{err}");
    assert_eq!(
        std::fs::read_to_string(out.join("keep.txt")).expect("kept"),
        "mine"
    );
}

/// Atomic directory writes use a temporary directory of their own (another `.NAME.partial*`
/// survives) and refuse a second writer of the same output while one holds its lock.
#[test]
fn atomic_writes_leave_other_files_alone_and_refuse_a_concurrent_writer() {
    use ferroq::checkpoint::write_dir_atomically;
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("model");
    let foreign = dir.path().join(".model.partial");
    std::fs::create_dir(&foreign).expect("mkdir");
    std::fs::write(foreign.join("x"), "someone else's").expect("write");
    write_dir_atomically(&out, |tmp| {
        std::fs::write(tmp.join("a"), "1").map_err(|e| ferroq::Error::io(tmp, e))
    })
    .expect("write");
    assert!(out.join("a").exists());
    assert!(
        foreign.join("x").exists(),
        "a foreign partial directory was deleted"
    );
    assert!(
        !dir.path().join(".model.lock").exists(),
        "the lock outlived the write"
    );

    let out2 = dir.path().join("other");
    std::fs::write(dir.path().join(".other.lock"), "").expect("lock");
    let e = write_dir_atomically(&out2, |_| Ok(())).expect_err("a second writer");
    assert!(e.to_string().contains("another process is writing"), "{e}");
    assert!(!out2.exists());
}
