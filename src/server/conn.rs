//! The accept loop: connections served by hyper under ferroq's limits, and a shutdown that ends.
//!
//! - Each connection must send a whole request header within `header_timeout` of connecting or
//!   of its previous response (hyper's header-read timer, which also closes idle keep-alive
//!   connections); bodies have their own deadline in the handlers.
//! - At most `max_connections` are served at once; one more is answered with a JSON 503 and
//!   closed, so a crowd of idle sockets cannot starve new clients of descriptors or answers.
//! - On SIGINT / SIGTERM: stop accepting, let each connection finish the response it owes and
//!   close, and after the grace period abort whatever is left (a half-sent header, a body that
//!   never comes, a client that stopped reading), so shutdown is bounded connections included.

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;

/// The connection-level limits (`ferroq serve` flags).
#[derive(Clone, Copy, Debug)]
pub struct ConnLimits {
    pub header_timeout: Duration,
    pub max_connections: usize,
}

/// Descriptors kept for everything but client sockets (model files, the listener, logs).
const RESERVED_FILES: u64 = 64;

/// `cap` lowered to what the process's open-file limit leaves for client sockets: past it,
/// accept fails and new clients would wait unanswered instead of getting a 503.
pub fn fit_open_files(cap: usize) -> usize {
    let soft = std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| l.split_whitespace().nth(3))
                .and_then(|v| v.parse::<u64>().ok())
        });
    match soft {
        Some(n) if (cap as u64).saturating_add(RESERVED_FILES) > n => {
            let fit = n.saturating_sub(RESERVED_FILES).max(1) as usize;
            tracing::warn!(
                "--max-connections {cap} lowered to {fit}: the open-file limit is {n} (ulimit -n)"
            );
            fit
        }
        _ => cap,
    }
}

/// What one turn of the accept loop saw.
enum Step {
    Stop,
    Accepted(std::io::Result<(TcpStream, std::net::SocketAddr)>),
    Reaped,
}

/// Serve `app` on `listener` until `stop` resolves, then shut down within `grace`: the
/// connections' tasks are aborted at `grace` plus a second for the last bytes.
pub async fn serve_until(
    listener: TcpListener,
    app: Router,
    limits: ConnLimits,
    stop: impl Future<Output = ()>,
    grace: Duration,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let (closing_tx, closing) = watch::channel(false);
    let mut tasks = JoinSet::new();
    tokio::pin!(stop);
    loop {
        let step = tokio::select! {
            _ = &mut stop => Step::Stop,
            r = listener.accept() => Step::Accepted(r),
            Some(_) = tasks.join_next(), if !tasks.is_empty() => Step::Reaped,
        };
        match step {
            Step::Stop => break,
            Step::Reaped => {}
            Step::Accepted(Ok((stream, _))) => match slots.clone().try_acquire_owned() {
                Ok(permit) => {
                    let (app, closing) = (app.clone(), closing.clone());
                    tasks.spawn(async move {
                        connection(stream, app, limits.header_timeout, closing).await;
                        drop(permit);
                    });
                }
                Err(_) => {
                    tasks.spawn(refuse(stream, limits.max_connections));
                }
            },
            Step::Accepted(Err(e)) => {
                // out of descriptors or a connection reset before accept: not fatal; pause so
                // a persistent error does not spin
                tracing::warn!("accept: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    drop(listener);
    let _ = closing_tx.send(true);
    let deadline = tokio::time::Instant::now() + grace + Duration::from_secs(1);
    while let Ok(Some(_)) = tokio::time::timeout_at(deadline, tasks.join_next()).await {}
    if !tasks.is_empty() {
        tracing::info!(
            "ferroq serve: closing {} connections still open after the grace period",
            tasks.len()
        );
    }
    tasks.shutdown().await;
}

async fn connection(
    stream: TcpStream,
    app: Router,
    header_timeout: Duration,
    mut closing: watch::Receiver<bool>,
) {
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(header_timeout);
    let conn = http.serve_connection(TokioIo::new(stream), TowerToHyperService::new(app));
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                tracing::debug!("connection: {e}");
            }
        }
        _ = closing.changed() => {
            // finish the response in flight, then close; the caller's deadline bounds it
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

/// Answer one connection over the cap with a JSON 503 and close it.
async fn refuse(mut stream: TcpStream, cap: usize) {
    let body = super::api::error_body(
        &format!("the server has {cap} connections open (--max-connections); retry later"),
        "unavailable",
        None,
    )
    .to_string();
    let head = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        stream.write_all(head.as_bytes()).await?;
        stream.write_all(body.as_bytes()).await?;
        stream.shutdown().await?;
        // drain what the client sent so closing does not reset the answer away
        let mut sink = [0u8; 4096];
        while stream.read(&mut sink).await? > 0 {}
        Ok::<_, std::io::Error>(())
    })
    .await;
}
