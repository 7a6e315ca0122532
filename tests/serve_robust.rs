//! `ferroq serve` against clients that misbehave, over loopback with bounded counts and time:
//! half-sent headers, idle sockets, bodies that never come or are too large, unknown routes,
//! garbage, more connections than the cap, and SIGTERM under load with slow clients holding
//! connections. Every refusal is OpenAI-style JSON; the server stays up, and stops in bounded
//! time when told.

mod common;
#[path = "common/server.rs"]
mod server;

use ferroq::server::client;
use serde_json::{json, Value};
use server::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// Longest any single read here waits: a server that never answers fails the test instead of
/// hanging it.
const READ_BOUND: Duration = Duration::from_secs(20);

fn connect(addr: &str, sent: &[u8]) -> TcpStream {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(READ_BOUND)).expect("timeout");
    s.write_all(sent).expect("send");
    s
}

/// Read until the server closes the connection; false if it is still open after READ_BOUND.
fn closed_by_server(s: &mut TcpStream) -> bool {
    let t = Instant::now();
    let mut buf = [0u8; 4096];
    while t.elapsed() < READ_BOUND {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
    false
}

/// One response read off `s`: status and JSON body (Content-Length framed).
fn response(s: &mut TcpStream) -> (u16, Value) {
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = s.read(&mut buf).expect("read a response head");
        assert!(
            n > 0,
            "closed without a response: {:?}",
            String::from_utf8_lossy(&raw)
        );
        raw.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8_lossy(&raw[..head_end]).to_ascii_lowercase();
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("status");
    assert!(head.contains("content-type: application/json"), "{head}");
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no content-length: {head}"));
    while raw.len() < head_end + len {
        let n = s.read(&mut buf).expect("read a response body");
        assert!(n > 0, "body cut short");
        raw.extend_from_slice(&buf[..n]);
    }
    let body = serde_json::from_slice(&raw[head_end..head_end + len]).expect("a JSON body");
    (status, body)
}

fn message(v: &Value) -> &str {
    v["error"]["message"]
        .as_str()
        .unwrap_or_else(|| panic!("not an OpenAI error: {v}"))
}

#[test]
fn half_sent_headers_and_idle_connections_are_closed() {
    let srv = Server::start(&["--header-timeout", "1"]);
    let mut half = connect(&srv.addr, b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n");
    let mut idle = connect(&srv.addr, b"");
    let mut kept = connect(&srv.addr, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(
        closed_by_server(&mut half),
        "a half-sent header is kept open"
    );
    assert!(
        closed_by_server(&mut idle),
        "a silent connection is kept open"
    );
    // answered, then idle on keep-alive: closed after the timeout as well
    assert!(
        closed_by_server(&mut kept),
        "an idle keep-alive connection is kept open"
    );
}

#[test]
fn bad_bodies_routes_and_garbage_get_json_errors_and_the_server_stays_up() {
    let srv = Server::start(&["--body-timeout", "1", "--max-body-bytes", "65536"]);
    let post = |len: &str| {
        format!("POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {len}\r\n\r\n")
    };
    // an announced body that never arrives
    let mut s = connect(&srv.addr, format!("{}{{\"prompt\"", post("100")).as_bytes());
    let (status, v) = response(&mut s);
    assert_eq!(status, 408, "{v}");
    assert!(message(&v).contains("--body-timeout"), "{v}");
    // an absurd announced length is refused before any of it is read
    let mut s = connect(&srv.addr, post("10000000000").as_bytes());
    let (status, v) = response(&mut s);
    assert_eq!(status, 413, "{v}");
    assert!(message(&v).contains("--max-body-bytes"), "{v}");
    // a chunked body past the cap (no length announced)
    let mut big =
        b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for _ in 0..20 {
        big.extend_from_slice(format!("{:x}\r\n{}\r\n", 4096, "a".repeat(4096)).as_bytes());
    }
    let mut s = connect(&srv.addr, &big);
    let (status, v) = response(&mut s);
    assert_eq!(status, 413, "{v}");
    // unknown route, wrong method
    let mut s = connect(&srv.addr, b"GET /v2/nothing HTTP/1.1\r\nHost: x\r\n\r\n");
    let (status, v) = response(&mut s);
    assert_eq!(status, 404, "{v}");
    assert!(message(&v).contains("/v2/nothing"), "{v}");
    let mut s = connect(
        &srv.addr,
        b"GET /v1/completions HTTP/1.1\r\nHost: x\r\n\r\n",
    );
    let (status, v) = response(&mut s);
    assert_eq!(status, 405, "{v}");
    // garbage and a header past hyper's buffer: refused or closed, never a crash
    for junk in [
        b"\x00\x01\x02 garbage\r\n\r\n".to_vec(),
        [b"GET / HTTP/1.1\r\nX: ".as_slice(), &[b'a'; 1 << 20]].concat(),
    ] {
        let mut s = TcpStream::connect(&srv.addr).expect("connect");
        s.set_read_timeout(Some(READ_BOUND)).expect("timeout");
        let _ = s.write_all(&junk);
        assert!(
            closed_by_server(&mut s),
            "a garbage connection is kept open"
        );
    }
    let mut s = connect(
        &srv.addr,
        b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_cap_get_a_json_503_until_others_leave() {
    let srv = Server::start(&["--max-connections", "4", "--header-timeout", "600"]);
    let idle: Vec<TcpStream> = (0..4).map(|_| connect(&srv.addr, b"")).collect();
    // the four were accepted first (the listener takes connections in order)
    let mut s = connect(&srv.addr, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n");
    let (status, v) = response(&mut s);
    assert_eq!(status, 503, "{v}");
    assert!(message(&v).contains("--max-connections"), "{v}");
    drop(idle);
    let t = Instant::now();
    loop {
        match client::get(&srv.addr, "/health").await {
            Ok((200, _)) => break,
            other => assert!(
                t.elapsed() < READ_BOUND,
                "no slot came back after the idle connections left: {other:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_with_slow_clients_stops_within_the_grace_period() {
    let mut srv = Server::start(&[
        "--shutdown-grace",
        "2",
        "--header-timeout",
        "600",
        "--body-timeout",
        "600",
    ]);
    // clients that hold connections and never finish a request
    let _slow = [
        connect(&srv.addr, b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n"),
        connect(
            &srv.addr,
            b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 50\r\n\r\n{",
        ),
        connect(&srv.addr, b""),
    ];
    let body =
        json!({"prompt": "The river", "max_tokens": 1500, "ignore_eos": true, "stream": true});
    let mut streams = Vec::new();
    for i in 0..6 {
        let mut r = open_stream(&srv.addr, &body).await;
        r.next_event().await.expect("read").expect("first event");
        // two clients walk away mid-stream
        if i % 3 != 2 {
            streams.push(r);
        }
    }
    srv.signal("-TERM");
    for r in &mut streams {
        let s = read_stream(r).await;
        assert_eq!(
            s.finish.as_deref(),
            Some("abort"),
            "cut at the grace period"
        );
    }
    let status = srv.wait_exit(Duration::from_secs(30));
    assert!(status.success(), "exit {status:?}:\n{}", srv.log());
}
