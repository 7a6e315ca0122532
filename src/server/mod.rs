//! `ferroq serve`: an OpenAI-compatible HTTP server (axum on tokio) over the batching engine.
//!
//! - `/v1/completions`, `/v1/chat/completions` (SSE when `stream`), `/v1/models`, `/health`,
//!   `/metrics`.
//! - Requests are read under a size cap and a deadline, parsed and tokenized on the blocking
//!   pool (never on the async workers, which must keep answering), then handed to the scheduler
//!   thread; each response listens on its own channel, and dropping it (client gone) cancels
//!   the request.
//! - Every error, the router's 404 / 405 included, is an OpenAI-style JSON body.
//! - SIGINT / SIGTERM stop accepting, let running requests finish within a grace period and
//!   cancel the rest; `conn.rs` bounds the connections' part of the shutdown.

pub mod api;
pub mod client;
mod conn;
pub mod loadgen;

use crate::backend::Backend;
use crate::engine::metrics::Outcome;
use crate::engine::scheduler::{check_lengths, Event, Finish, Request, SchedulerConfig};
use crate::engine::service::{EngineHandle, Refusal, Ticket};
use crate::error::{Error, Result};
use crate::model::llama::LlamaModel;
use crate::tokenizer::TokenizerBundle;
use api::{BadRequest, Endpoint, GenRequest, Meta, Prompt};
use axum::body::{Body, Bytes};
use axum::extract::{Request as HttpRequest, State};
use axum::http::{header, StatusCode};
use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::{stream, StreamExt};
use serde_json::json;
use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};
use tokio::sync::Semaphore;

#[derive(Clone, Debug)]
pub struct ServeOptions {
    pub host: String,
    /// 0 picks a free port (printed on stderr).
    pub port: u16,
    /// Requests that may wait beyond the running batch before 429s.
    pub max_queue: usize,
    /// How long running requests may go on after SIGINT/SIGTERM.
    pub shutdown_grace: Duration,
    /// The id `/v1/models` lists and requests' `model` must match.
    pub model_name: String,
    pub scheduler: SchedulerConfig,
    /// A connection must send a whole request header within this of connecting or of its
    /// last response; idle keep-alive connections close after it too.
    pub header_timeout: Duration,
    /// A request body must arrive in full within this of its header.
    pub body_timeout: Duration,
    /// Larger request bodies get 413 (this bounds a prompt's size too).
    pub max_body_bytes: usize,
    /// Connections served at once; one more gets a 503 and is closed.
    pub max_connections: usize,
}

struct AppState {
    engine: EngineHandle,
    tok: Arc<TokenizerBundle>,
    model_name: String,
    vocab: usize,
    next_id: AtomicU64,
    started: u64,
    body_timeout: Duration,
    max_body_bytes: usize,
    /// Requests being parsed and tokenized on the blocking pool at once: no more than the
    /// cores, so a burst of huge prompts queues here instead of starving the engine.
    tokenize_slots: Arc<Semaphore>,
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Load-free part of serving: bind, start the engine and serve until a signal. Blocks.
pub fn run<B: Backend>(
    model: LlamaModel<B>,
    tok: TokenizerBundle,
    opts: ServeOptions,
) -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Error::Server(format!("cannot start the async runtime: {e}")))?;
    let served = rt.block_on(serve(model, tok, opts));
    // a prompt still tokenizing on the blocking pool is not waited for
    rt.shutdown_timeout(Duration::from_secs(1));
    served
}

async fn serve<B: Backend>(
    model: LlamaModel<B>,
    tok: TokenizerBundle,
    opts: ServeOptions,
) -> Result<()> {
    let addr = format!("{}:{}", opts.host, opts.port);
    let listener = tokio::net::TcpListener::bind(&addr)
        .await
        .map_err(|e| Error::Server(format!("cannot listen on {addr}: {e}")))?;
    let local = listener
        .local_addr()
        .map_err(|e| Error::Server(format!("listening socket: {e}")))?;
    let vocab = model.config.vocab_size;
    let tok = Arc::new(tok);
    let engine = EngineHandle::spawn(
        Arc::new(model),
        tok.clone(),
        opts.scheduler.clone(),
        opts.max_queue,
    )?;
    let c = &opts.scheduler;
    tracing::info!(
        "ferroq serve: model {} | max batch {} | max seq len {} | KV cache {} tokens in blocks of {} ({:.1} MiB) | queue {}",
        opts.model_name,
        c.max_batch,
        c.max_seq_len,
        c.kv_cache_tokens.div_ceil(c.block_size) * c.block_size,
        c.block_size,
        engine.kv_bytes as f64 / (1 << 20) as f64,
        opts.max_queue
    );
    let state = Arc::new(AppState {
        engine,
        tok,
        model_name: opts.model_name.clone(),
        vocab,
        next_id: AtomicU64::new(1),
        started: now_secs(),
        body_timeout: opts.body_timeout,
        max_body_bytes: opts.max_body_bytes,
        tokenize_slots: Arc::new(Semaphore::new(
            std::thread::available_parallelism().map_or(2, |n| n.get()),
        )),
    });
    let app = Router::new()
        .route("/v1/completions", post(completions))
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/models", get(models))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state.clone());
    // the line scripts and tests wait for: printed whatever the log level
    eprintln!("ferroq serve: listening on http://{local}");
    let grace = opts.shutdown_grace;
    let st = state.clone();
    let shutdown = async move {
        wait_for_signal().await;
        tracing::info!(
            "ferroq serve: shutting down: no new requests; running ones get {:.0}s to finish",
            grace.as_secs_f64()
        );
        st.engine.begin_shutdown(grace);
    };
    let limits = conn::ConnLimits {
        header_timeout: opts.header_timeout,
        max_connections: conn::fit_open_files(opts.max_connections),
    };
    conn::serve_until(listener, app, limits, shutdown, grace).await;
    state.engine.begin_shutdown(grace);
    let st = state.clone();
    let _ = tokio::task::spawn_blocking(move || st.engine.join()).await;
    tracing::info!("ferroq serve: stopped");
    Ok(())
}

async fn wait_for_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}

fn error_response(status: StatusCode, kind: &str, message: &str, param: Option<&str>) -> Response {
    (status, Json(api::error_body(message, kind, param))).into_response()
}

fn shutting_down() -> Response {
    error_response(
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
        "the server is shutting down",
        None,
    )
}

fn bad_request(st: &AppState, b: BadRequest) -> Response {
    st.engine.metrics.count(Outcome::BadRequest);
    error_response(
        StatusCode::BAD_REQUEST,
        "invalid_request_error",
        &b.message,
        b.param.as_deref(),
    )
}

async fn not_found(uri: axum::http::Uri) -> Response {
    error_response(
        StatusCode::NOT_FOUND,
        "invalid_request_error",
        &format!("no route for {}", uri.path()),
        None,
    )
}

async fn method_not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> Response {
    error_response(
        StatusCode::METHOD_NOT_ALLOWED,
        "invalid_request_error",
        &format!("{method} is not allowed on {}", uri.path()),
        None,
    )
}

/// The request body, read within the size cap and the body deadline.
async fn read_body(st: &AppState, req: HttpRequest) -> std::result::Result<Bytes, Response> {
    let limit = st.max_body_bytes;
    let too_large = |n: String| {
        error_response(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request_error",
            &format!(
                "the request body is {n} bytes; at most {limit} are accepted (--max-body-bytes)"
            ),
            None,
        )
    };
    let announced = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(n) = announced.filter(|&n| n > limit as u64) {
        return Err(too_large(n.to_string()));
    }
    let deadline = tokio::time::Instant::now() + st.body_timeout;
    let mut data = req.into_body().into_data_stream();
    let mut buf = Vec::new();
    loop {
        match tokio::time::timeout_at(deadline, data.next()).await {
            Err(_) => {
                return Err(error_response(
                    StatusCode::REQUEST_TIMEOUT,
                    "invalid_request_error",
                    &format!(
                        "the request body did not arrive within {:.0}s (--body-timeout)",
                        st.body_timeout.as_secs_f64()
                    ),
                    None,
                ))
            }
            Ok(None) => return Ok(Bytes::from(buf)),
            Ok(Some(Err(e))) => {
                return Err(error_response(
                    StatusCode::BAD_REQUEST,
                    "invalid_request_error",
                    &format!("reading the request body: {e}"),
                    None,
                ))
            }
            Ok(Some(Ok(chunk))) => {
                if buf.len() + chunk.len() > limit {
                    return Err(too_large(format!("more than {limit}")));
                }
                buf.extend_from_slice(&chunk);
            }
        }
    }
}

async fn health(State(st): State<Arc<AppState>>) -> Response {
    if st.engine.is_closing() {
        return error_response(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "shutting down",
            None,
        );
    }
    (StatusCode::OK, "ok\n").into_response()
}

async fn metrics(State(st): State<Arc<AppState>>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        st.engine.metrics.render(),
    )
        .into_response()
}

async fn models(State(st): State<Arc<AppState>>) -> Response {
    Json(json!({"object": "list", "data": [{
        "id": st.model_name, "object": "model", "created": st.started, "owned_by": "ferroq",
        "max_model_len": st.engine.config.max_seq_len,
    }]}))
    .into_response()
}

async fn completions(State(st): State<Arc<AppState>>, req: HttpRequest<Body>) -> Response {
    generation(st, Endpoint::Completions, req).await
}

async fn chat_completions(State(st): State<Arc<AppState>>, req: HttpRequest<Body>) -> Response {
    generation(st, Endpoint::Chat, req).await
}

/// Tokenize the prompt; errors name the field they come from.
fn prompt_ids(st: &AppState, req: &GenRequest) -> std::result::Result<Vec<u32>, BadRequest> {
    let field = |param: &str, e: Error| BadRequest {
        message: e.to_string(),
        param: Some(param.into()),
    };
    match &req.prompt {
        Prompt::Text(t) => st.tok.encode(t).map_err(|e| field("prompt", e)),
        Prompt::Tokens(ids) => match ids.iter().find(|&&i| i as usize >= st.vocab) {
            Some(&id) => Err(field(
                "prompt",
                Error::TokenOutOfRange {
                    id,
                    vocab: st.vocab,
                },
            )),
            None => Ok(ids.clone()),
        },
        Prompt::Chat(msgs) => {
            let text = st
                .tok
                .apply_chat_template(msgs)
                .map_err(|e| field("messages", e))?;
            st.tok.encode(&text).map_err(|e| field("messages", e))
        }
    }
}

/// Parse, check the model name, tokenize, check lengths and sampling: the CPU-heavy part of a
/// request, run on the blocking pool. Returns the request, its prompt ids and max tokens.
fn prepare(
    st: &AppState,
    ep: Endpoint,
    body: &[u8],
) -> std::result::Result<(GenRequest, Vec<u32>, usize), Box<Response>> {
    let req = match api::parse(ep, body) {
        Ok(r) => r,
        Err(b) => return Err(Box::new(bad_request(st, b))),
    };
    if let Some(m) = req.model.as_deref().filter(|m| *m != st.model_name) {
        st.engine.metrics.count(Outcome::BadRequest);
        return Err(Box::new(error_response(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            &format!(
                "the model `{m}` does not exist; this server serves `{}`",
                st.model_name
            ),
            Some("model"),
        )));
    }
    let ids = match prompt_ids(st, &req) {
        Ok(ids) => ids,
        Err(b) => return Err(Box::new(bad_request(st, b))),
    };
    let prompt_field = if ep == Endpoint::Chat {
        "messages"
    } else {
        "prompt"
    };
    let limit = st.engine.config.max_seq_len;
    let max_tokens = req.max_tokens.unwrap_or(limit.saturating_sub(ids.len()));
    let too_long = ids.len() >= limit || max_tokens == 0;
    if let Err(e) = check_lengths(limit, ids.len(), max_tokens.max(1)) {
        let param = if too_long || req.max_tokens.is_none() {
            prompt_field
        } else {
            "max_tokens"
        };
        return Err(Box::new(bad_request(
            st,
            BadRequest {
                message: e.to_string(),
                param: Some(param.into()),
            },
        )));
    }
    if let Err(e) = req.sampling.validate() {
        return Err(Box::new(bad_request(
            st,
            BadRequest {
                message: e.to_string(),
                param: None,
            },
        )));
    }
    Ok((req, ids, max_tokens))
}

async fn generation(st: Arc<AppState>, ep: Endpoint, http: HttpRequest<Body>) -> Response {
    let body = match read_body(&st, http).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    // the slot travels with the blocking job: a client that leaves does not free it early
    let Ok(slot) = st.tokenize_slots.clone().acquire_owned().await else {
        return shutting_down();
    };
    let job = st.clone();
    let prepared = tokio::task::spawn_blocking(move || {
        let _slot = slot;
        prepare(&job, ep, &body)
    })
    .await;
    let (req, ids, max_tokens) = match prepared {
        Ok(Ok(p)) => p,
        Ok(Err(r)) => return *r,
        Err(e) => {
            return error_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                &format!("preparing the request failed: {e}"),
                None,
            )
        }
    };
    let (tx, rx) = unbounded_channel();
    let submitted = st.engine.submit(Request {
        prompt: ids,
        max_tokens,
        sampling: req.sampling.clone(),
        stop: req.stop.clone(),
        stop_at_eos: !req.ignore_eos,
        events: tx,
        arrived: Instant::now(),
    });
    let ticket = match submitted {
        Ok(t) => t,
        Err(Refusal::QueueFull { limit }) => {
            return error_response(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limit_error",
                &format!(
                    "the server is full: {} requests are running and {limit} waiting (--max-batch, --max-queue); retry later",
                    st.engine.config.max_batch
                ),
                None,
            )
        }
        Err(Refusal::ShuttingDown) => return shutting_down(),
    };
    let prefix = if ep == Endpoint::Chat {
        "chatcmpl"
    } else {
        "cmpl"
    };
    let meta = Meta {
        id: format!("{prefix}-{}", st.next_id.fetch_add(1, Ordering::Relaxed)),
        created: now_secs(),
        model: st.model_name.clone(),
    };
    if req.stream {
        stream_response(ep, meta, rx, ticket, req.stream_usage)
    } else {
        whole_response(ep, meta, rx, ticket).await
    }
}

async fn whole_response(
    ep: Endpoint,
    meta: Meta,
    mut rx: UnboundedReceiver<Event>,
    _ticket: Ticket,
) -> Response {
    let mut text = String::new();
    while let Some(e) = rx.recv().await {
        match e {
            Event::Text(t) => text.push_str(&t),
            Event::Done(f) => return Json(api::response(ep, &meta, &text, &f)).into_response(),
            Event::Failed(m) => {
                return error_response(StatusCode::INTERNAL_SERVER_ERROR, "server_error", &m, None)
            }
        }
    }
    error_response(
        StatusCode::INTERNAL_SERVER_ERROR,
        "server_error",
        "the engine dropped the request",
        None,
    )
}

/// State of one SSE stream; the ticket lives (and the request stays admitted) as long as it.
struct Streaming {
    ep: Endpoint,
    meta: Meta,
    rx: UnboundedReceiver<Event>,
    _ticket: Ticket,
    usage: bool,
    first: bool,
    pending: VecDeque<String>,
    ended: bool,
}

fn stream_response(
    ep: Endpoint,
    meta: Meta,
    rx: UnboundedReceiver<Event>,
    ticket: Ticket,
    usage: bool,
) -> Response {
    let s = Streaming {
        ep,
        meta,
        rx,
        _ticket: ticket,
        usage,
        first: true,
        pending: VecDeque::new(),
        ended: false,
    };
    let events = stream::unfold(s, |mut s| async move {
        loop {
            if let Some(data) = s.pending.pop_front() {
                return Some((Ok::<_, Infallible>(SseEvent::default().data(data)), s));
            }
            if s.ended {
                return None;
            }
            let data = |v: serde_json::Value| v.to_string();
            match s.rx.recv().await {
                Some(Event::Text(t)) => {
                    let c = api::chunk(s.ep, &s.meta, Some(&t), None, s.first);
                    s.first = false;
                    s.pending.push_back(data(c));
                }
                Some(Event::Done(f)) => {
                    s.pending.push_back(data(finish_chunk(&s, &f)));
                    if s.usage {
                        s.pending
                            .push_back(data(api::usage_chunk(s.ep, &s.meta, &f)));
                    }
                    s.pending.push_back("[DONE]".into());
                    s.ended = true;
                }
                Some(Event::Failed(m)) => {
                    s.pending
                        .push_back(data(api::error_body(&m, "server_error", None)));
                    s.ended = true;
                }
                None => {
                    s.pending.push_back(data(api::error_body(
                        "the engine dropped the request",
                        "server_error",
                        None,
                    )));
                    s.ended = true;
                }
            }
        }
    });
    Sse::new(events).into_response()
}

fn finish_chunk(s: &Streaming, f: &Finish) -> serde_json::Value {
    // a chat stream that produced no text still announces the assistant role
    let text = if s.first && s.ep == Endpoint::Chat {
        Some("")
    } else {
        None
    };
    api::chunk(s.ep, &s.meta, text, Some(f), s.first)
}
