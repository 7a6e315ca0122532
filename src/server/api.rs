//! The OpenAI API surface: request parsing field by field, response and chunk JSON.
//!
//! - A wrong type is a 400 naming the field; unknown fields clients send are ignored.
//! - vLLM's extensions (`top_k`, `repetition_penalty`, `ignore_eos`) and defaults are followed:
//!   without `max_tokens` a request may run to the context limit; without `seed` it gets a fresh
//!   one.

use crate::engine::sampler::SamplingParams;
use crate::engine::scheduler::Finish;
use crate::tokenizer::ChatMessage;
use serde_json::{json, Map, Value};

/// A 400 with the offending field (OpenAI's `param`).
#[derive(Debug, Clone, PartialEq)]
pub struct BadRequest {
    pub message: String,
    pub param: Option<String>,
}

impl BadRequest {
    fn field(param: &str, message: String) -> Self {
        BadRequest {
            message,
            param: Some(param.to_string()),
        }
    }
}

type Parsed<T> = std::result::Result<T, BadRequest>;

/// Which endpoint a request came to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    Completions,
    Chat,
}

/// The prompt as the client gave it.
#[derive(Clone, Debug, PartialEq)]
pub enum Prompt {
    Text(String),
    Tokens(Vec<u32>),
    Chat(Vec<ChatMessage>),
}

/// A parsed generation request.
#[derive(Clone, Debug, PartialEq)]
pub struct GenRequest {
    pub endpoint: Endpoint,
    pub model: Option<String>,
    pub prompt: Prompt,
    pub max_tokens: Option<usize>,
    pub sampling: SamplingParams,
    pub stop: Vec<String>,
    pub stream: bool,
    /// Send a last chunk with usage (`stream_options.include_usage`).
    pub stream_usage: bool,
    pub ignore_eos: bool,
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Field accessors: absent or null means "not given".
struct Body<'a>(&'a Map<String, Value>);

impl Body<'_> {
    fn get(&self, k: &str) -> Option<&Value> {
        self.0.get(k).filter(|v| !v.is_null())
    }
    fn number(&self, k: &str, lo: f64, hi: f64) -> Parsed<Option<f64>> {
        let Some(v) = self.get(k) else {
            return Ok(None);
        };
        match v.as_f64() {
            Some(x) if x >= lo && x <= hi => Ok(Some(x)),
            Some(x) => Err(BadRequest::field(
                k,
                format!("`{k}` must be in [{lo}, {hi}], got {x}"),
            )),
            None => Err(BadRequest::field(
                k,
                format!("`{k}` must be a number, got {}", kind(v)),
            )),
        }
    }
    fn uint(&self, k: &str, min: u64) -> Parsed<Option<u64>> {
        let Some(v) = self.get(k) else {
            return Ok(None);
        };
        match v.as_u64() {
            Some(x) if x >= min => Ok(Some(x)),
            _ => Err(BadRequest::field(
                k,
                format!("`{k}` must be an integer >= {min}, got {v}"),
            )),
        }
    }
    fn boolean(&self, k: &str) -> Parsed<bool> {
        match self.get(k) {
            None => Ok(false),
            Some(Value::Bool(b)) => Ok(*b),
            Some(v) => Err(BadRequest::field(
                k,
                format!("`{k}` must be a boolean, got {}", kind(v)),
            )),
        }
    }
    fn string(&self, k: &str) -> Parsed<Option<String>> {
        match self.get(k) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(v) => Err(BadRequest::field(
                k,
                format!("`{k}` must be a string, got {}", kind(v)),
            )),
        }
    }
}

fn token_ids(k: &str, items: &[Value]) -> Parsed<Vec<u32>> {
    items
        .iter()
        .map(|t| {
            t.as_u64()
                .and_then(|x| u32::try_from(x).ok())
                .ok_or_else(|| {
                    BadRequest::field(k, format!("`{k}` token ids must be integers >= 0, got {t}"))
                })
        })
        .collect()
}

fn completion_prompt(b: &Body) -> Parsed<Prompt> {
    let k = "prompt";
    let bad = |v: &Value| {
        BadRequest::field(
            k,
            format!("`prompt` must be a string, an array of one string or an array of token ids, got {}", kind(v)),
        )
    };
    let Some(v) = b.get(k) else {
        return Err(BadRequest::field(k, "`prompt` is required".into()));
    };
    match v {
        Value::String(s) => Ok(Prompt::Text(s.clone())),
        Value::Array(a) => match a.as_slice() {
            [Value::String(s)] => Ok(Prompt::Text(s.clone())),
            [Value::Array(ids)] => Ok(Prompt::Tokens(token_ids(k, ids)?)),
            [Value::Number(_), ..] => Ok(Prompt::Tokens(token_ids(k, a)?)),
            [] => Err(BadRequest::field(k, "`prompt` is empty".into())),
            [_, _, ..] if a.iter().all(|x| x.is_string()) => Err(BadRequest::field(
                k,
                "batched prompts are not supported: send one prompt per request".into(),
            )),
            _ => Err(bad(v)),
        },
        _ => Err(bad(v)),
    }
}

fn chat_messages(b: &Body) -> Parsed<Prompt> {
    let k = "messages";
    let Some(v) = b.get(k) else {
        return Err(BadRequest::field(k, "`messages` is required".into()));
    };
    let Value::Array(items) = v else {
        return Err(BadRequest::field(
            k,
            format!("`messages` must be an array, got {}", kind(v)),
        ));
    };
    if items.is_empty() {
        return Err(BadRequest::field(k, "`messages` is empty".into()));
    }
    let mut out = Vec::with_capacity(items.len());
    for (i, m) in items.iter().enumerate() {
        let at = format!("messages[{i}]");
        let Value::Object(o) = m else {
            return Err(BadRequest::field(
                &at,
                format!("`{at}` must be an object, got {}", kind(m)),
            ));
        };
        let role = match o.get("role") {
            Some(Value::String(r)) => r.clone(),
            _ => {
                return Err(BadRequest::field(
                    &format!("{at}.role"),
                    format!("`{at}.role` must be a string"),
                ))
            }
        };
        let content = match o.get("content") {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Null) | None => String::new(),
            // content parts: only text parts carry anything a text model can read
            Some(Value::Array(parts)) => {
                let mut s = String::new();
                for (j, p) in parts.iter().enumerate() {
                    match (
                        p.get("type").and_then(Value::as_str),
                        p.get("text").and_then(Value::as_str),
                    ) {
                        (Some("text"), Some(t)) => s.push_str(t),
                        _ => {
                            let f = format!("{at}.content[{j}]");
                            return Err(BadRequest::field(&f, format!("`{f}` must be a text part ({{\"type\": \"text\", \"text\": ...}})")));
                        }
                    }
                }
                s
            }
            Some(v) => {
                let f = format!("{at}.content");
                return Err(BadRequest::field(
                    &f,
                    format!(
                        "`{f}` must be a string or an array of text parts, got {}",
                        kind(v)
                    ),
                ));
            }
        };
        out.push(ChatMessage { role, content });
    }
    Ok(Prompt::Chat(out))
}

fn stop_strings(b: &Body) -> Parsed<Vec<String>> {
    let k = "stop";
    let list = match b.get(k) {
        None => vec![],
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) if a.iter().all(Value::is_string) => a
            .iter()
            .filter_map(|s| s.as_str().map(str::to_string))
            .collect(),
        Some(v) => {
            return Err(BadRequest::field(
                k,
                format!(
                    "`stop` must be a string or an array of strings, got {}",
                    kind(v)
                ),
            ))
        }
    };
    if list.iter().any(String::is_empty) {
        return Err(BadRequest::field(
            k,
            "`stop` strings must not be empty".into(),
        ));
    }
    Ok(list)
}

/// A seed for a request that gave none: the clock mixed with a process-wide counter.
fn unseeded() -> u64 {
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    (t ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15)).rotate_left(17)
}

/// Parse a request body for `endpoint`.
pub fn parse(endpoint: Endpoint, body: &[u8]) -> Parsed<GenRequest> {
    let v: Value = serde_json::from_slice(body).map_err(|e| BadRequest {
        message: format!("the request body is not valid JSON: {e}"),
        param: None,
    })?;
    let Value::Object(map) = &v else {
        return Err(BadRequest {
            message: format!("the request body must be a JSON object, got {}", kind(&v)),
            param: None,
        });
    };
    let b = Body(map);
    let prompt = match endpoint {
        Endpoint::Completions => completion_prompt(&b)?,
        Endpoint::Chat => chat_messages(&b)?,
    };
    if let Some(n) = b.uint("n", 1)? {
        if n != 1 {
            return Err(BadRequest::field(
                "n",
                format!("`n` must be 1 (one completion per request), got {n}"),
            ));
        }
    }
    if b.boolean("echo")? {
        return Err(BadRequest::field("echo", "`echo` is not supported".into()));
    }
    let max_tokens = match endpoint {
        Endpoint::Chat => match b.uint("max_completion_tokens", 1)? {
            Some(n) => Some(n),
            None => b.uint("max_tokens", 1)?,
        },
        Endpoint::Completions => b.uint("max_tokens", 1)?,
    };
    let sampling = SamplingParams {
        temperature: b.number("temperature", 0.0, 2.0)?.unwrap_or(1.0) as f32,
        top_p: match b.number("top_p", 0.0, 1.0)? {
            Some(0.0) => return Err(BadRequest::field("top_p", "`top_p` must be > 0".into())),
            p => p.unwrap_or(1.0) as f32,
        },
        top_k: match b.get("top_k") {
            // vLLM: -1 (or 0) disables
            Some(v) if v.as_i64() == Some(-1) => 0,
            _ => b.uint("top_k", 0)?.unwrap_or(0) as usize,
        },
        repetition_penalty: b.number("repetition_penalty", 1e-3, 100.0)?.unwrap_or(1.0) as f32,
        seed: match b.get("seed") {
            Some(v) => v
                .as_i64()
                .map(|s| s as u64)
                .or_else(|| v.as_u64())
                .ok_or_else(|| {
                    BadRequest::field("seed", format!("`seed` must be an integer, got {v}"))
                })?,
            // without a seed every request samples differently (as OpenAI and vLLM do)
            None => unseeded(),
        },
    };
    let stream_usage = match b.get("stream_options") {
        None => false,
        Some(Value::Object(o)) => o
            .get("include_usage")
            .and_then(Value::as_bool)
            .unwrap_or(false),
        Some(v) => {
            return Err(BadRequest::field(
                "stream_options",
                format!("`stream_options` must be an object, got {}", kind(v)),
            ))
        }
    };
    Ok(GenRequest {
        endpoint,
        model: b.string("model")?,
        prompt,
        max_tokens: max_tokens.map(|n| n as usize),
        sampling,
        stop: stop_strings(&b)?,
        stream: b.boolean("stream")?,
        stream_usage,
        ignore_eos: b.boolean("ignore_eos")?,
    })
}

/// OpenAI's error body.
pub fn error_body(message: &str, kind: &str, param: Option<&str>) -> Value {
    json!({"error": {"message": message, "type": kind, "param": param, "code": null}})
}

/// Identity of one response: id, creation time, model name.
#[derive(Clone, Debug)]
pub struct Meta {
    pub id: String,
    pub created: u64,
    pub model: String,
}

fn usage(f: &Finish) -> Value {
    json!({
        "prompt_tokens": f.prompt_tokens,
        "completion_tokens": f.completion_tokens,
        "total_tokens": f.prompt_tokens + f.completion_tokens,
    })
}

/// The whole (non-streamed) response.
pub fn response(ep: Endpoint, m: &Meta, text: &str, f: &Finish) -> Value {
    let choice = match ep {
        Endpoint::Completions => {
            json!({"index": 0, "text": text, "logprobs": null, "finish_reason": f.reason.openai()})
        }
        Endpoint::Chat => {
            json!({"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": null, "finish_reason": f.reason.openai()})
        }
    };
    let object = match ep {
        Endpoint::Completions => "text_completion",
        Endpoint::Chat => "chat.completion",
    };
    json!({"id": m.id, "object": object, "created": m.created, "model": m.model, "choices": [choice], "usage": usage(f)})
}

/// One streamed chunk: a text delta (`first` adds the chat role), the finish, or — with
/// neither — the usage chunk (`choices` empty), as OpenAI sends them.
pub fn chunk(
    ep: Endpoint,
    m: &Meta,
    text: Option<&str>,
    finish: Option<&Finish>,
    first: bool,
) -> Value {
    let reason = finish.map(|f| f.reason.openai());
    let choices = match (text, finish) {
        (None, None) => json!([]),
        _ => match ep {
            Endpoint::Completions => {
                json!([{"index": 0, "text": text.unwrap_or(""), "logprobs": null, "finish_reason": reason}])
            }
            Endpoint::Chat => {
                let mut delta = Map::new();
                if first {
                    delta.insert("role".into(), "assistant".into());
                }
                if let Some(t) = text {
                    delta.insert("content".into(), t.into());
                }
                json!([{"index": 0, "delta": delta, "logprobs": null, "finish_reason": reason}])
            }
        },
    };
    let object = match ep {
        Endpoint::Completions => "text_completion",
        Endpoint::Chat => "chat.completion.chunk",
    };
    json!({"id": m.id, "object": object, "created": m.created, "model": m.model, "choices": choices})
}

/// The usage chunk sent last when `stream_options.include_usage` is set.
pub fn usage_chunk(ep: Endpoint, m: &Meta, f: &Finish) -> Value {
    let mut v = chunk(ep, m, None, None, false);
    v["usage"] = usage(f);
    v
}
