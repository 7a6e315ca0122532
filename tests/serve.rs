//! `ferroq serve` end to end: the binary is started on a free loopback port with the real
//! model and driven over HTTP — by the official OpenAI Python client (same text as
//! `ferroq generate`), by 32 concurrent streams (same text as their solo runs, KV blocks back
//! to zero), and by clients that disconnect, overfill the queue or send bad requests; SIGTERM
//! lets running requests finish (or cancels them after the grace period) and exits cleanly.

mod common;
#[path = "common/server.rs"]
mod server;

use common::real_gguf;
use ferroq::server::client;
use serde_json::{json, Value};
use server::*;
use std::process::Command;
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_ferroq");

/// `ferroq generate`'s stdout for a greedy request.
fn cli_generate(args: &[&str]) -> String {
    let out = Command::new(BIN)
        .arg("generate")
        .arg("-m")
        .arg(real_gguf())
        .args(args)
        .output()
        .expect("ferroq generate");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

fn python() -> String {
    if let Some(p) = std::env::var_os("FERROQ_PYTHON") {
        return p.to_string_lossy().into_owned();
    }
    let venv = concat!(env!("CARGO_MANIFEST_DIR"), "/models/cache/venv/bin/python");
    if std::path::Path::new(venv).exists() {
        venv.into()
    } else {
        "python3".into()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_python_client_gets_the_same_text_as_generate() {
    let py = python();
    let has = Command::new(&py).args(["-c", "import openai"]).status();
    assert!(
        has.is_ok_and(|s| s.success()),
        "{py} cannot import the openai package: run `bash scripts/test.sh` (it installs it into models/cache/venv) or set FERROQ_PYTHON"
    );
    let srv = Server::start(&["--served-model-name", "smollm2"]);
    let (prompt, chat_prompt, n) = (
        "The capital of France is",
        "What is the capital of France?",
        "24",
    );
    let out = Command::new(&py)
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/openai_client.py"
        ))
        .args([
            &format!("http://{}/v1", srv.addr),
            "smollm2",
            prompt,
            chat_prompt,
            n,
        ])
        .output()
        .expect("python");
    assert!(
        out.status.success(),
        "openai client failed:\n{}\nserver log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        srv.log()
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("client JSON");
    // `generate` prints the prompt, the completion and a newline; with --chat only the reply
    let plain = cli_generate(&["-p", prompt, "-n", n]);
    let chat = cli_generate(&["--chat", "-p", chat_prompt, "-n", n]);
    assert_eq!(
        format!(
            "{prompt}{}\n",
            v["completion"]["text"].as_str().expect("text")
        ),
        plain
    );
    assert_eq!(
        format!("{}\n", v["chat"]["text"].as_str().expect("text")),
        chat
    );
    assert_eq!(
        v["chat_stream"]["text"], v["chat"]["text"],
        "streamed and whole chat differ"
    );
    assert_eq!(v["chat"]["role"], "assistant");
    assert_eq!(
        v["chat_stream"]["completion_tokens"],
        v["chat"]["completion_tokens"]
    );
    assert!(
        v["chat_stream"]["chunks"].as_u64().expect("chunks") >= 3,
        "{v}"
    );
    assert_eq!(v["completion"]["prompt_tokens"], 5);
    for k in ["completion", "chat", "chat_stream"] {
        let f = v[k]["finish_reason"].as_str().expect("finish");
        let toks = v[k]["completion_tokens"].as_u64().expect("usage");
        assert!(
            f == "length" && toks == 24 || f == "stop" && toks < 24,
            "{k}: {f} after {toks}"
        );
    }
    assert_eq!(v["models"], json!(["smollm2"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_two_concurrent_streams_equal_their_solo_runs_and_free_the_cache() {
    let srv = Server::start(&["--max-batch", "32", "--max-seq-len", "256"]);
    let words = "a small boat crossed the grey sea at dawn carrying letters for the lighthouse keeper and his two dogs";
    let w: Vec<&str> = words.split(' ').collect();
    let bodies: Vec<Value> = (0..32)
        .map(|i| {
            let n = 1 + (i * 5) % (w.len() - 1);
            json!({"prompt": format!("{i}. {}", w[..n].join(" ")), "max_tokens": 4 + (i * 7) % 24,
                   "temperature": 0, "stream": true})
        })
        .collect();
    let mut solo = Vec::new();
    for b in &bodies {
        solo.push(stream_completion(&srv.addr, b.clone()).await);
    }
    let tasks: Vec<_> = bodies
        .iter()
        .map(|b| {
            let (addr, b) = (srv.addr.clone(), b.clone());
            tokio::spawn(async move { stream_completion(&addr, b).await })
        })
        .collect();
    for (i, (t, s)) in tasks.into_iter().zip(&solo).enumerate() {
        let got = t.await.expect("task");
        assert_eq!(
            got.text, s.text,
            "request {i}: concurrent text differs from its solo run"
        );
        assert_eq!(got.finish, s.finish, "request {i}");
        assert!(got.finish.is_some());
    }
    srv.wait_metric("ferroq_kv_blocks_used", 0.0).await;
    srv.wait_metric("ferroq_running_sequences", 0.0).await;
    assert_eq!(
        srv.metric("ferroq_requests_total{outcome=\"finished\"}")
            .await,
        64.0
    );
    assert_eq!(
        srv.metric("ferroq_requests_total{outcome=\"cancelled\"}")
            .await,
        0.0
    );
    // the concurrent burst really was batched
    let steps_le_1 = srv.metric("ferroq_batch_size_bucket{le=\"1\"}").await;
    let steps = srv.metric("ferroq_batch_size_count").await;
    assert!(steps > steps_le_1, "no step ran more than one sequence");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnect_frees_blocks_and_a_full_queue_gives_429() {
    let srv = Server::start(&["--max-batch", "1", "--max-queue", "1"]);
    let long = json!({"prompt": "Once upon a time", "max_tokens": 1000, "ignore_eos": true, "stream": true});
    let mut a = open_stream(&srv.addr, &long).await;
    for _ in 0..2 {
        a.next_event().await.expect("read").expect("event");
    }
    assert!(srv.metric("ferroq_kv_blocks_used").await > 0.0);
    // b waits behind a; c finds the queue full
    let short = json!({"prompt": "Hello", "max_tokens": 5, "ignore_eos": true, "stream": true});
    let mut b = open_stream(&srv.addr, &short).await;
    srv.wait_metric("ferroq_queue_depth", 1.0).await;
    let (status, body) = client::post(&srv.addr, "/v1/completions", &short.to_string())
        .await
        .expect("c");
    assert_eq!(status, 429, "{body}");
    let v: Value = serde_json::from_str(&body).expect("error JSON");
    assert!(
        v["error"]["message"]
            .as_str()
            .expect("message")
            .contains("the server is full"),
        "{v}"
    );
    // a's client goes away mid-stream: a is cancelled, b runs
    drop(a);
    let got = read_stream(&mut b).await;
    assert_eq!(got.finish.as_deref(), Some("length"));
    assert!(!got.text.is_empty());
    srv.wait_metric("ferroq_kv_blocks_used", 0.0).await;
    assert_eq!(
        srv.metric("ferroq_requests_total{outcome=\"cancelled\"}")
            .await,
        1.0
    );
    assert_eq!(
        srv.metric("ferroq_requests_total{outcome=\"queue_full\"}")
            .await,
        1.0
    );
    assert_eq!(
        srv.metric("ferroq_requests_total{outcome=\"finished\"}")
            .await,
        1.0
    );
    // a non-streamed request whose client gives up is cancelled too: the response head only
    // comes at the end, so dropping the pending send closes the connection mid-generation
    let whole = json!({"prompt": "Once upon a time", "max_tokens": 1000, "ignore_eos": true});
    let body = whole.to_string();
    let pending = client::send(&srv.addr, "POST", "/v1/completions", Some(&body));
    assert!(
        tokio::time::timeout(Duration::from_millis(700), pending)
            .await
            .is_err(),
        "1000 tokens came back in 0.7 s"
    );
    srv.wait_metric("ferroq_requests_total{outcome=\"cancelled\"}", 2.0)
        .await;
    srv.wait_metric("ferroq_kv_blocks_used", 0.0).await;
    // the freed place takes new requests again
    let (status, _) = client::post(
        &srv.addr,
        "/v1/completions",
        &json!({"prompt": "Hi", "max_tokens": 2}).to_string(),
    )
    .await
    .expect("d");
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_400s_that_name_the_field() {
    let srv = Server::start(&["--max-seq-len", "64"]);
    let long_prompt = "word ".repeat(100);
    let cases: Vec<(&str, String, u16, Option<&str>, &str)> = vec![
        (
            "completions",
            r#"{"prompt":"#.into(),
            400,
            None,
            "not valid JSON",
        ),
        (
            "completions",
            "[1,2]".into(),
            400,
            None,
            "must be a JSON object",
        ),
        (
            "completions",
            r#"{"max_tokens":3}"#.into(),
            400,
            Some("prompt"),
            "`prompt` is required",
        ),
        (
            "completions",
            r#"{"prompt":"hi","max_tokens":"a"}"#.into(),
            400,
            Some("max_tokens"),
            "integer",
        ),
        (
            "completions",
            r#"{"prompt":"hi","temperature":"hot"}"#.into(),
            400,
            Some("temperature"),
            "must be a number",
        ),
        (
            "completions",
            r#"{"prompt":"hi","temperature":3}"#.into(),
            400,
            Some("temperature"),
            "[0, 2]",
        ),
        (
            "completions",
            r#"{"prompt":"hi","n":2}"#.into(),
            400,
            Some("n"),
            "must be 1",
        ),
        (
            "completions",
            r#"{"prompt":"hi","stop":5}"#.into(),
            400,
            Some("stop"),
            "strings",
        ),
        (
            "completions",
            r#"{"prompt":"hi","stream":"yes"}"#.into(),
            400,
            Some("stream"),
            "boolean",
        ),
        (
            "completions",
            r#"{"prompt":[999999]}"#.into(),
            400,
            Some("prompt"),
            "outside the vocabulary",
        ),
        (
            "completions",
            json!({"prompt": long_prompt}).to_string(),
            400,
            Some("prompt"),
            "context limit (--max-seq-len) is 64",
        ),
        (
            "completions",
            r#"{"prompt":"hi","max_tokens":100}"#.into(),
            400,
            Some("max_tokens"),
            "context limit (--max-seq-len) is 64",
        ),
        (
            "completions",
            r#"{"prompt":"hi","model":"gpt-4"}"#.into(),
            404,
            Some("model"),
            "does not exist",
        ),
        (
            "chat/completions",
            r#"{"messages":"hi"}"#.into(),
            400,
            Some("messages"),
            "must be an array",
        ),
        (
            "chat/completions",
            r#"{"messages":[{"role":"user","content":5}]}"#.into(),
            400,
            Some("messages[0].content"),
            "string",
        ),
        (
            "chat/completions",
            r#"{"messages":[{"content":"x"}]}"#.into(),
            400,
            Some("messages[0].role"),
            "string",
        ),
    ];
    for (ep, body, want_status, param, msg) in &cases {
        let (status, text) = client::post(&srv.addr, &format!("/v1/{ep}"), body)
            .await
            .expect("post");
        assert_eq!(status, *want_status, "{body}: {text}");
        let v: Value = serde_json::from_str(&text).expect("error JSON");
        let m = v["error"]["message"].as_str().expect("message");
        assert!(m.contains(msg), "{body}: message {m:?} lacks {msg:?}");
        assert_eq!(v["error"]["param"].as_str(), *param, "{body}: {v}");
    }
    let (status, text) = client::get(&srv.addr, "/health").await.expect("health");
    assert_eq!((status, text.as_str()), (200, "ok\n"));
    let (_, models) = client::get(&srv.addr, "/v1/models").await.expect("models");
    let v: Value = serde_json::from_str(&models).expect("json");
    assert_eq!(v["data"][0]["max_model_len"], 64);
    assert_eq!(
        srv.metric("ferroq_requests_total{outcome=\"bad_request\"}")
            .await,
        cases.len() as f64
    );
    // a good request still works after all that
    let (status, text) = client::post(
        &srv.addr,
        "/v1/completions",
        r#"{"prompt":"hi","max_tokens":3}"#,
    )
    .await
    .expect("post");
    assert_eq!(status, 200, "{text}");
    // sampling: the same seed gives the same text
    let sampled = r#"{"prompt":"Once upon a time","max_tokens":12,"temperature":1.0,"seed":7}"#;
    let text_of = |body: String| -> String {
        let v: Value = serde_json::from_str(&body).expect("json");
        v["choices"][0]["text"].as_str().expect("text").to_string()
    };
    let (_, a) = client::post(&srv.addr, "/v1/completions", sampled)
        .await
        .expect("a");
    let (_, b) = client::post(&srv.addr, "/v1/completions", sampled)
        .await
        .expect("b");
    assert_eq!(
        text_of(a),
        text_of(b),
        "seeded sampling is not reproducible"
    );
}

/// Start a stream of `max_tokens`, send `sig` after its first event, and return how the stream
/// ended; the server must then exit cleanly.
async fn signal_mid_stream(grace: &str, max_tokens: usize, sig: &str) -> Option<String> {
    let mut srv = Server::start(&["--shutdown-grace", grace]);
    let body = json!({"prompt": "The river", "max_tokens": max_tokens, "ignore_eos": true, "stream": true});
    let mut r = open_stream(&srv.addr, &body).await;
    r.next_event().await.expect("read").expect("first event");
    srv.signal(sig);
    let rest = read_stream(&mut r).await;
    let status = srv.wait_exit(Duration::from_secs(60));
    assert!(status.success(), "exit {status:?}:\n{}", srv.log());
    assert!(srv.log().contains("ferroq serve: stopped"));
    assert!(
        client::get(&srv.addr, "/health").await.is_err(),
        "still accepting"
    );
    rest.finish
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_running_requests_then_exits() {
    let finish = signal_mid_stream("60", 30, "-TERM").await;
    assert_eq!(
        finish.as_deref(),
        Some("length"),
        "the running request finishes"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_past_the_grace_period_cancels_running_requests() {
    let finish = signal_mid_stream("0.3", 1500, "-INT").await;
    assert_eq!(
        finish.as_deref(),
        Some("abort"),
        "cancelled at the deadline"
    );
}

/// Operator flags outside what a server can hold are one-line errors naming the flag, before
/// the model loads: no panic on a huge grace period, no allocation abort, no wrapped capacity.
#[test]
fn absurd_operator_flags_are_refused() {
    let gguf = common::real_gguf();
    for (flag, value) in [
        ("--shutdown-grace", "1e300"),
        ("--shutdown-grace", "-1"),
        ("--max-batch", "1000000000"),
        ("--kv-cache-tokens", "1000000000000"),
        ("--max-queue", "18446744073709551615"),
        ("--block-size", "0"),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_ferroq"))
            .args(["serve", "-m", gguf.to_str().expect("path"), "--port", "0"])
            .arg(format!("{flag}={value}"))
            .env_remove("RUST_BACKTRACE")
            .output()
            .expect("run ferroq");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{flag} {value}: {err}");
        assert!(
            err.contains(&flag[2..]) && err.contains("out of range"),
            "{flag} {value}: {err}"
        );
        assert_eq!(err.lines().count(), 1, "{flag} {value}: {err}");
    }
}
