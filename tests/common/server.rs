#![allow(dead_code)]

//! `ferroq serve` as a child process for the server tests: started on a free loopback port
//! with the real model, its log collected, signalled, and killed when dropped; a streamed
//! response reader.

use crate::common::real_gguf;
use ferroq::engine::metrics::scrape;
use ferroq::server::client;
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

/// A `ferroq serve` child process; killed when dropped.
pub struct Server {
    pub child: Child,
    pub addr: String,
    log: Arc<Mutex<String>>,
}

impl Server {
    pub fn start(extra: &[&str]) -> Server {
        let gguf = real_gguf();
        let mut child = Command::new(env!("CARGO_BIN_EXE_ferroq"))
            .args(["serve", "--port", "0", "--kv-cache-tokens", "4096", "-m"])
            .arg(&gguf)
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn ferroq serve");
        let stderr = child.stderr.take().expect("stderr");
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = mpsc::channel();
        let l = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(|l| l.ok()) {
                if let Some(a) = line.split("listening on http://").nth(1) {
                    let _ = tx.send(a.trim().to_string());
                }
                l.lock().expect("log").push_str(&(line + "\n"));
            }
        });
        let addr = match rx.recv_timeout(Duration::from_secs(120)) {
            Ok(a) => a,
            Err(_) => {
                let _ = child.kill();
                panic!("server did not start:\n{}", log.lock().expect("log"));
            }
        };
        Server { child, addr, log }
    }

    pub fn log(&self) -> String {
        self.log.lock().expect("log").clone()
    }

    pub async fn metric(&self, name: &str) -> f64 {
        let (status, text) = client::get(&self.addr, "/metrics").await.expect("metrics");
        assert_eq!(status, 200);
        scrape(&text, name).unwrap_or_else(|| panic!("{name} missing from /metrics:\n{text}"))
    }

    /// Poll a metric until it equals `want` (the scheduler publishes after its step).
    pub async fn wait_metric(&self, name: &str, want: f64) {
        let t = Instant::now();
        loop {
            let v = self.metric(name).await;
            if v == want {
                return;
            }
            assert!(
                t.elapsed() < Duration::from_secs(20),
                "{name} stays at {v}, expected {want}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(ok.success());
    }

    /// Wait for the process to exit; its status.
    pub fn wait_exit(&mut self, within: Duration) -> std::process::ExitStatus {
        let t = Instant::now();
        loop {
            if let Some(s) = self.child.try_wait().expect("wait") {
                return s;
            }
            assert!(
                t.elapsed() < within,
                "server still running:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A streamed request read to its end: text, finish reason, events.
#[derive(Debug)]
pub struct Streamed {
    pub text: String,
    pub finish: Option<String>,
    pub events: usize,
}

pub async fn read_stream(r: &mut client::Response) -> Streamed {
    let mut s = Streamed {
        text: String::new(),
        finish: None,
        events: 0,
    };
    loop {
        let d = r
            .next_event()
            .await
            .expect("read")
            .expect("stream ended before [DONE]");
        if d == "[DONE]" {
            return s;
        }
        s.events += 1;
        let v: Value = serde_json::from_str(&d).expect("chunk JSON");
        let c = &v["choices"][0];
        s.text.push_str(
            c["text"]
                .as_str()
                .or(c["delta"]["content"].as_str())
                .unwrap_or(""),
        );
        if let Some(f) = c["finish_reason"].as_str() {
            s.finish = Some(f.to_string());
        }
    }
}

/// A streamed completion opened: the response head read (200, SSE), the events still to come.
pub async fn open_stream(addr: &str, body: &Value) -> client::Response {
    let r = client::send(addr, "POST", "/v1/completions", Some(&body.to_string()))
        .await
        .expect("send");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("text/event-stream"));
    r
}

pub async fn stream_completion(addr: &str, body: Value) -> Streamed {
    let mut r = open_stream(addr, &body).await;
    read_stream(&mut r).await
}
