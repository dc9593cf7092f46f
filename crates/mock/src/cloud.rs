//! Mock upstreams that speak the Anthropic Messages and Google Gemini wire formats (JSON
//! and streaming), built from the providers' documented examples, for tests on loopback.
//!
//! They take the same [`Behavior`] as the OpenAI mock (reply text, chunking, delays,
//! faults with `Retry-After`, hang, cut mid-stream) plus [`CloudExtra`] (an in-stream
//! error event, a forced stop reason). When the request declares tools and the
//! conversation does not end with a tool result, they answer with a call of the first
//! tool, arguments made up from its schema, so a streamed tool call can be tested. Each
//! records the last request body exactly as received and its headers. The Anthropic mock
//! also counts tokens (`/v1/messages/count_tokens`: one per whitespace-separated word of
//! the request's text, plus one per message).

use crate::{Behavior, Fault};
use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use bytes::Bytes;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Which API a [`CloudMock`] speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloudKind {
    Anthropic,
    Gemini,
}

/// Cloud-specific knobs on top of [`Behavior`].
#[derive(Debug, Clone, Default)]
pub struct CloudExtra {
    /// In a stream, send the provider's error event after this many content chunks and
    /// end the stream (Anthropic `overloaded_error`, Gemini `UNAVAILABLE`).
    pub stream_error_after: Option<usize>,
    /// The stop reason to report instead of the natural one (Anthropic `max_tokens`,
    /// `stop_sequence`, …; Gemini `MAX_TOKENS`, `SAFETY`, …).
    pub stop_reason: Option<String>,
    /// Gemini: a fault's error carries `RetryInfo` with this `retryDelay` (e.g. "30s").
    pub retry_delay: Option<String>,
}

/// Shared state of a running cloud mock.
pub struct CloudState {
    pub name: String,
    pub kind: CloudKind,
    behavior: Mutex<Behavior>,
    extra: Mutex<CloudExtra>,
    pub requests: AtomicU64,
    last_body: Mutex<Option<Bytes>>,
    last_key: Mutex<Option<String>>,
    /// Path and query of the last request.
    last_uri: Mutex<Option<String>>,
    last_headers: Mutex<HeaderMap>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl CloudState {
    pub fn behavior(&self) -> Behavior {
        lock(&self.behavior).clone()
    }
    pub fn set_behavior(&self, f: impl FnOnce(&mut Behavior)) {
        f(&mut lock(&self.behavior));
    }
    pub fn set_extra(&self, f: impl FnOnce(&mut CloudExtra)) {
        f(&mut lock(&self.extra));
    }
    /// The last request body, as received.
    pub fn last_body(&self) -> Option<Bytes> {
        lock(&self.last_body).clone()
    }
    /// The last request body as JSON.
    pub fn last_json(&self) -> Option<Value> {
        self.last_body()
            .and_then(|b| serde_json::from_slice(&b).ok())
    }
    /// The key header of the last request (`x-api-key` / `x-goog-api-key`).
    pub fn last_key(&self) -> Option<String> {
        lock(&self.last_key).clone()
    }
    /// Path and query of the last request.
    pub fn last_uri(&self) -> Option<String> {
        lock(&self.last_uri).clone()
    }
    /// A header of the last request.
    pub fn last_header(&self, name: &str) -> Option<String> {
        lock(&self.last_headers)
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    }
    pub fn request_count(&self) -> u64 {
        self.requests.load(Ordering::SeqCst)
    }
}

/// A cloud mock running on a tokio task; dropped = stopped.
pub struct CloudMock {
    pub addr: SocketAddr,
    pub state: Arc<CloudState>,
    task: tokio::task::JoinHandle<()>,
}

impl CloudMock {
    /// An Anthropic mock on 127.0.0.1 with a free port.
    pub async fn anthropic(name: &str, behavior: Behavior) -> std::io::Result<Self> {
        Self::start(CloudKind::Anthropic, name, behavior).await
    }

    /// A Gemini mock on 127.0.0.1 with a free port.
    pub async fn gemini(name: &str, behavior: Behavior) -> std::io::Result<Self> {
        Self::start(CloudKind::Gemini, name, behavior).await
    }

    pub async fn start(kind: CloudKind, name: &str, behavior: Behavior) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(CloudState {
            name: name.to_string(),
            kind,
            behavior: Mutex::new(behavior),
            extra: Mutex::new(CloudExtra::default()),
            requests: AtomicU64::new(0),
            last_body: Mutex::new(None),
            last_key: Mutex::new(None),
            last_uri: Mutex::new(None),
            last_headers: Mutex::new(HeaderMap::new()),
        });
        let app = match kind {
            CloudKind::Anthropic => axum::Router::new()
                .route("/v1/messages", post(anthropic))
                .route("/v1/messages/count_tokens", post(anthropic_count)),
            CloudKind::Gemini => axum::Router::new().route("/v1beta/models/{action}", post(gemini)),
        }
        .with_state(state.clone());
        let task = crate::serve_in_background(listener, app);
        Ok(CloudMock { addr, state, task })
    }

    /// The `api_base` to configure: `http://127.0.0.1:PORT/v1` (Anthropic) or
    /// `http://127.0.0.1:PORT/v1beta` (Gemini).
    pub fn base_url(&self) -> String {
        match self.state.kind {
            CloudKind::Anthropic => format!("http://{}/v1", self.addr),
            CloudKind::Gemini => format!("http://{}/v1beta", self.addr),
        }
    }
}

impl Drop for CloudMock {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn json_response(status: StatusCode, body: Value) -> Response {
    let mut r = (status, body.to_string()).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// The provider's error body for an injected status.
fn error_body(kind: CloudKind, status: u16, message: &str) -> Value {
    match kind {
        CloudKind::Anthropic => {
            let t = match status {
                400 => "invalid_request_error",
                401 => "authentication_error",
                403 => "permission_error",
                404 => "not_found_error",
                413 => "request_too_large",
                429 => "rate_limit_error",
                529 => "overloaded_error",
                _ => "api_error",
            };
            json!({"type": "error", "error": {"type": t, "message": message}, "request_id": "req_mock"})
        }
        CloudKind::Gemini => {
            let s = match status {
                400 => "INVALID_ARGUMENT",
                401 => "UNAUTHENTICATED",
                403 => "PERMISSION_DENIED",
                404 => "NOT_FOUND",
                429 => "RESOURCE_EXHAUSTED",
                503 => "UNAVAILABLE",
                504 => "DEADLINE_EXCEEDED",
                _ => "INTERNAL",
            };
            json!({"error": {"code": status, "message": message, "status": s}})
        }
    }
}

fn fault_response(kind: CloudKind, f: &Fault, extra: &CloudExtra) -> Response {
    let status = StatusCode::from_u16(f.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut body = error_body(kind, f.status, &f.message);
    if let (CloudKind::Gemini, Some(delay)) = (kind, &extra.retry_delay) {
        body["error"]["details"] = json!([{
            "@type": "type.googleapis.com/google.rpc.RetryInfo",
            "retryDelay": delay
        }]);
    }
    let mut r = json_response(status, body);
    if let Some(ra) = &f.retry_after {
        if let Ok(v) = HeaderValue::from_str(ra) {
            r.headers_mut().insert(header::RETRY_AFTER, v);
        }
    }
    r
}

/// Records the request, applies hang, delay and fault; `Err` is the response to send.
async fn admit(
    s: &CloudState,
    key_header: &str,
    headers: &HeaderMap,
    uri: String,
    body: &Bytes,
) -> Result<(Behavior, CloudExtra, Value), Response> {
    s.requests.fetch_add(1, Ordering::SeqCst);
    *lock(&s.last_body) = Some(body.clone());
    let key = headers
        .get(key_header)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    *lock(&s.last_key) = key.clone();
    *lock(&s.last_uri) = Some(uri);
    *lock(&s.last_headers) = headers.clone();
    let b = s.behavior();
    let extra = lock(&s.extra).clone();
    if key.is_none() {
        let (status, msg) = match s.kind {
            CloudKind::Anthropic => (401, "x-api-key header is required"),
            CloudKind::Gemini => (403, "Method doesn't allow unregistered callers"),
        };
        return Err(json_response(
            StatusCode::from_u16(status).unwrap_or(StatusCode::UNAUTHORIZED),
            error_body(s.kind, status, msg),
        ));
    }
    if b.hang {
        std::future::pending::<()>().await;
    }
    if !b.first_byte_delay.is_zero() {
        tokio::time::sleep(b.first_byte_delay).await;
    }
    if let Some(f) = &b.fault {
        if f.rate >= 1.0 || fastrand::f64() < f.rate {
            return Err(fault_response(s.kind, f, &extra));
        }
    }
    let req: Value = serde_json::from_slice(body).map_err(|e| {
        json_response(
            StatusCode::BAD_REQUEST,
            error_body(s.kind, 400, &format!("mock: invalid JSON: {e}")),
        )
    })?;
    Ok((b, extra, req))
}

fn split_reply(text: &str, chunks: usize) -> Vec<String> {
    let chars: Vec<char> = text.chars().collect();
    let per = chars.len().div_ceil(chunks.max(1)).max(1);
    chars.chunks(per).map(|c| c.iter().collect()).collect()
}

fn args_for(schema: Option<&Value>) -> Value {
    crate::tool_args_for(schema)
}

/// Streams `events`, aborting after `cut_after` of them.
fn stream_response(events: Vec<Bytes>, delay: Duration, cut_after: Option<usize>) -> Response {
    let stream = futures_util::stream::unfold(
        (events.into_iter(), 0usize),
        move |(mut it, i)| async move {
            if cut_after == Some(i) {
                if i > 0 {
                    tokio::time::sleep(delay.max(Duration::from_millis(50))).await;
                }
                return Some((
                    Err(std::io::Error::other("mock: stream cut")),
                    (it, usize::MAX),
                ));
            }
            if i == usize::MAX {
                return None;
            }
            let ev = it.next()?;
            if i > 0 && !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            Some((Ok::<Bytes, std::io::Error>(ev), (it, i + 1)))
        },
    );
    let mut r = Response::new(Body::from_stream(stream));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}

const INPUT_TOKENS: u64 = 9;

// ---------------------------------------------------------------------------------------
// Anthropic
// ---------------------------------------------------------------------------------------

async fn anthropic(State(s): State<Arc<CloudState>>, headers: HeaderMap, body: Bytes) -> Response {
    let (b, extra, req) = match admit(&s, "x-api-key", &headers, "/v1/messages".into(), &body).await
    {
        Ok(x) => x,
        Err(r) => return r,
    };
    if headers.get("anthropic-version").is_none() {
        return json_response(
            StatusCode::BAD_REQUEST,
            error_body(
                CloudKind::Anthropic,
                400,
                "anthropic-version header is required",
            ),
        );
    }
    if req.get("max_tokens").and_then(Value::as_u64).is_none() {
        return json_response(
            StatusCode::BAD_REQUEST,
            error_body(CloudKind::Anthropic, 400, "max_tokens: Field required"),
        );
    }
    let Some(messages) = req.get("messages").and_then(Value::as_array) else {
        return json_response(
            StatusCode::BAD_REQUEST,
            error_body(CloudKind::Anthropic, 400, "messages: Field required"),
        );
    };
    let answered_tool = messages.last().is_some_and(|m| {
        m["content"]
            .as_array()
            .is_some_and(|c| c.iter().any(|b| b["type"] == "tool_result"))
    });
    let tool = req
        .get("tools")
        .and_then(|t| t.get(0))
        .filter(|_| !answered_tool && req["tool_choice"]["type"] != "none");
    let n = s.requests.load(Ordering::Relaxed);
    let id = format!("msg_mock_{}_{n}", s.name);
    let model = req["model"].as_str().unwrap_or("claude-mock").to_string();
    let reply = b.reply.replace("{name}", &s.name);
    let tool_call = tool.map(|t| {
        (
            format!("toolu_mock_{n}"),
            t["name"].as_str().unwrap_or("tool").to_string(),
            args_for(t.get("input_schema")),
        )
    });
    let natural = if tool_call.is_some() {
        "tool_use"
    } else {
        "end_turn"
    };
    let stop = extra.stop_reason.clone().unwrap_or_else(|| natural.into());
    let output_tokens = b.chunks as u64;
    if req["stream"] != true {
        let mut content = vec![json!({"type": "text", "text": reply})];
        if let Some((tid, name, input)) = &tool_call {
            content.push(json!({"type": "tool_use", "id": tid, "name": name, "input": input}));
        }
        return json_response(
            StatusCode::OK,
            json!({"id": id, "type": "message", "role": "assistant", "model": model,
                "content": content, "stop_reason": stop, "stop_sequence": null,
                "usage": {"input_tokens": INPUT_TOKENS, "output_tokens": output_tokens,
                    "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}}),
        );
    }
    let ev = |name: &str, data: Value| Bytes::from(format!("event: {name}\ndata: {data}\n\n"));
    let mut events = vec![
        ev(
            "message_start",
            json!({"type": "message_start", "message": {"id": id, "type": "message", "role": "assistant",
                "content": [], "model": model, "stop_reason": null, "stop_sequence": null,
                "usage": {"input_tokens": INPUT_TOKENS, "output_tokens": 1,
                    "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}}}),
        ),
        ev(
            "content_block_start",
            json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
        ),
        ev("ping", json!({"type": "ping"})),
    ];
    for (i, piece) in split_reply(&reply, b.chunks).into_iter().enumerate() {
        if extra.stream_error_after == Some(i) {
            events.push(ev(
                "error",
                json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}),
            ));
            return stream_response(events, b.chunk_delay, b.cut_after);
        }
        events.push(ev(
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": piece}}),
        ));
    }
    if extra.stream_error_after.is_some() {
        events.push(ev(
            "error",
            json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}),
        ));
        return stream_response(events, b.chunk_delay, b.cut_after);
    }
    events.push(ev(
        "content_block_stop",
        json!({"type": "content_block_stop", "index": 0}),
    ));
    if let Some((tid, name, input)) = &tool_call {
        events.push(ev(
            "content_block_start",
            json!({"type": "content_block_start", "index": 1,
                "content_block": {"type": "tool_use", "id": tid, "name": name, "input": {}}}),
        ));
        let text = input.to_string();
        let mid = text.len() / 2;
        let cut = (0..=mid)
            .rev()
            .find(|&i| text.is_char_boundary(i))
            .unwrap_or(0);
        for frag in ["", &text[..cut], &text[cut..]] {
            events.push(ev(
                "content_block_delta",
                json!({"type": "content_block_delta", "index": 1,
                    "delta": {"type": "input_json_delta", "partial_json": frag}}),
            ));
        }
        events.push(ev(
            "content_block_stop",
            json!({"type": "content_block_stop", "index": 1}),
        ));
    }
    events.push(ev(
        "message_delta",
        json!({"type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": null},
            "usage": {"output_tokens": output_tokens}}),
    ));
    events.push(ev("message_stop", json!({"type": "message_stop"})));
    stream_response(events, b.chunk_delay, b.cut_after)
}

/// The mock's token count of a Messages request: one per whitespace-separated word of
/// every string in `system`, `messages` and `tools`, plus one per message.
pub fn mock_token_count(req: &Value) -> u64 {
    fn words(v: &Value) -> u64 {
        match v {
            Value::String(s) => s.split_whitespace().count() as u64,
            Value::Array(a) => a.iter().map(words).sum(),
            Value::Object(o) => o.values().map(words).sum(),
            _ => 0,
        }
    }
    let messages = req["messages"].as_array().map_or(0, |m| m.len() as u64);
    words(&req["system"]) + words(&req["messages"]) + words(&req["tools"]) + messages
}

async fn anthropic_count(
    State(s): State<Arc<CloudState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let uri = "/v1/messages/count_tokens".to_string();
    let (_, _, req) = match admit(&s, "x-api-key", &headers, uri, &body).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    if headers.get("anthropic-version").is_none() || req.get("messages").is_none() {
        return json_response(
            StatusCode::BAD_REQUEST,
            error_body(
                CloudKind::Anthropic,
                400,
                "messages: Field required (and the anthropic-version header)",
            ),
        );
    }
    json_response(
        StatusCode::OK,
        json!({"input_tokens": mock_token_count(&req)}),
    )
}

// ---------------------------------------------------------------------------------------
// Gemini
// ---------------------------------------------------------------------------------------

async fn gemini(
    State(s): State<Arc<CloudState>>,
    Path(action): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let uri = match &query {
        Some(q) => format!("/v1beta/models/{action}?{q}"),
        None => format!("/v1beta/models/{action}"),
    };
    let (b, extra, req) = match admit(&s, "x-goog-api-key", &headers, uri, &body).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let Some((model, method)) = action.split_once(':') else {
        return json_response(
            StatusCode::NOT_FOUND,
            error_body(CloudKind::Gemini, 404, "no such method"),
        );
    };
    let model = model.to_string();
    match method {
        "generateContent" => gemini_generate(&s, b, extra, req, model, false),
        "streamGenerateContent" => {
            if query.as_deref() != Some("alt=sse") {
                return json_response(
                    StatusCode::BAD_REQUEST,
                    error_body(CloudKind::Gemini, 400, "mock: only alt=sse streams"),
                );
            }
            gemini_generate(&s, b, extra, req, model, true)
        }
        "batchEmbedContents" => gemini_embed(req),
        _ => json_response(
            StatusCode::NOT_FOUND,
            error_body(CloudKind::Gemini, 404, "no such method"),
        ),
    }
}

fn gemini_generate(
    s: &CloudState,
    b: Behavior,
    extra: CloudExtra,
    req: Value,
    model: String,
    stream: bool,
) -> Response {
    let Some(contents) = req.get("contents").and_then(Value::as_array) else {
        return json_response(
            StatusCode::BAD_REQUEST,
            error_body(
                CloudKind::Gemini,
                400,
                "* GenerateContentRequest.contents: contents is not specified",
            ),
        );
    };
    let answered_tool = contents.last().is_some_and(|c| {
        c["parts"]
            .as_array()
            .is_some_and(|p| p.iter().any(|p| p.get("functionResponse").is_some()))
    });
    let decl = req["tools"][0]["functionDeclarations"]
        .get(0)
        .filter(|_| !answered_tool && req["toolConfig"]["functionCallingConfig"]["mode"] != "NONE");
    let reply = b.reply.replace("{name}", &s.name);
    let n = s.requests.load(Ordering::Relaxed);
    let response_id = format!("mock-{}-{n}", s.name);
    let finish = extra.stop_reason.clone().unwrap_or_else(|| "STOP".into());
    let candidates_tokens = b.chunks as u64;
    let usage = json!({"promptTokenCount": INPUT_TOKENS, "candidatesTokenCount": candidates_tokens,
        "totalTokenCount": INPUT_TOKENS + candidates_tokens});
    let call = decl.map(|d| {
        json!({"functionCall": {"name": d["name"].as_str().unwrap_or("tool"),
            "args": args_for(d.get("parametersJsonSchema").or_else(|| d.get("parameters")))}})
    });
    if !stream {
        let parts = match &call {
            Some(c) => vec![c.clone()],
            None => vec![json!({"text": reply})],
        };
        return json_response(
            StatusCode::OK,
            json!({"candidates": [{"content": {"parts": parts, "role": "model"}, "finishReason": finish, "index": 0}],
                "usageMetadata": usage, "modelVersion": model, "responseId": response_id}),
        );
    }
    let ev = |v: Value| Bytes::from(format!("data: {v}\r\n\r\n"));
    let mut events = Vec::new();
    if let Some(c) = call {
        events.push(ev(
            json!({"candidates": [{"content": {"parts": [c], "role": "model"},
            "finishReason": finish, "index": 0}], "usageMetadata": usage,
            "modelVersion": model, "responseId": response_id}),
        ));
        return stream_response(events, b.chunk_delay, b.cut_after);
    }
    let pieces = split_reply(&reply, b.chunks);
    let last = pieces.len().saturating_sub(1);
    for (i, piece) in pieces.into_iter().enumerate() {
        if extra.stream_error_after == Some(i) {
            events.push(ev(json!({"error": {"code": 503, "message": "The model is overloaded. Please try again later.", "status": "UNAVAILABLE"}})));
            return stream_response(events, b.chunk_delay, b.cut_after);
        }
        let mut cand =
            json!({"content": {"parts": [{"text": piece}], "role": "model"}, "index": 0});
        let mut v = json!({"modelVersion": model, "responseId": response_id,
            "usageMetadata": {"promptTokenCount": INPUT_TOKENS, "totalTokenCount": INPUT_TOKENS}});
        if i == last && extra.stream_error_after.is_none() {
            cand["finishReason"] = json!(finish);
            v["usageMetadata"] = usage.clone();
        }
        v["candidates"] = json!([cand]);
        events.push(ev(v));
    }
    if extra.stream_error_after.is_some() {
        events.push(ev(json!({"error": {"code": 503, "message": "The model is overloaded. Please try again later.", "status": "UNAVAILABLE"}})));
    }
    stream_response(events, b.chunk_delay, b.cut_after)
}

fn gemini_embed(req: Value) -> Response {
    let Some(requests) = req.get("requests").and_then(Value::as_array) else {
        return json_response(
            StatusCode::BAD_REQUEST,
            error_body(CloudKind::Gemini, 400, "requests is required"),
        );
    };
    let embeddings: Vec<Value> = requests
        .iter()
        .map(|r| {
            let text = r["content"]["parts"][0]["text"].as_str().unwrap_or("");
            let dims = r["outputDimensionality"].as_u64().unwrap_or(8).min(64) as usize;
            let seed = text
                .bytes()
                .fold(7u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b)));
            let values: Vec<f64> = (0..dims)
                .map(|k| (((seed >> ((k % 16) * 4)) & 0xf) as f64 - 7.5) / 7.5)
                .collect();
            json!({"values": values})
        })
        .collect();
    json_response(StatusCode::OK, json!({"embeddings": embeddings}))
}
