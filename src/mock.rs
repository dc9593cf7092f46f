//! A mock LLM upstream that speaks OpenAI's wire format (JSON and SSE) and injects
//! faults. It is the only test double in the project: tests start it in-process on
//! 127.0.0.1:0, the benchmark and the SLURM demo run it as `llmgw mock-upstream` (a real
//! process, also usable as a stand-in for an SGLang server).

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use serde::Deserialize;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// An injected failure: answer `status` (with optional `Retry-After`) on a fraction of calls.
#[derive(Debug, Clone)]
pub struct Fault {
    pub status: u16,
    /// Fraction of requests that fail, 0.0–1.0.
    pub rate: f64,
    pub retry_after: Option<String>,
    /// Error message in the OpenAI error body.
    pub message: String,
}

/// How the mock answers; changeable while it runs.
#[derive(Debug, Clone)]
pub struct Behavior {
    /// Content chunks in a streamed answer (the text is split into this many pieces).
    pub chunks: usize,
    /// Pause before each streamed chunk after the first.
    pub chunk_delay: Duration,
    /// Pause before the response headers (slow first byte).
    pub first_byte_delay: Duration,
    pub fault: Option<Fault>,
    /// Accept the request and never answer.
    pub hang: bool,
    /// Break the stream (abort the connection) after this many content chunks.
    pub cut_after: Option<usize>,
    /// The assistant's reply text; `{name}` is replaced by the mock's name.
    pub reply: String,
    /// Model ids listed by `/v1/models`.
    pub models: Vec<String>,
    /// When the request declares tools and its last message is not a tool result,
    /// answer with a call of the first tool (arguments made up from its schema).
    pub tool_calls: bool,
    /// An injected fault's message quotes the request's headers, as some upstreams'
    /// debug errors do (the provider key included).
    pub echo_headers: bool,
    /// Pads each non-streamed body (fault or answer) with trailing spaces to this many
    /// bytes, generated as it is sent (a huge body costs the mock no memory).
    pub pad_bytes: u64,
    /// Require `Authorization: Bearer <key>` everywhere but `/health` (401 otherwise), as
    /// SGLang's `--api-key` does.
    pub api_key: Option<String>,
    /// Requests served at once; more wait in a queue (what `/get_load` reports, as
    /// SGLang's running batch and waiting queue). `None`: no limit.
    pub max_running: Option<u64>,
    /// The `finish_reason` of a text answer instead of `stop` (e.g. `length`).
    pub finish_reason: Option<String>,
    /// Before each streamed event after the first, take a permit from this semaphore (after
    /// `chunk_delay`): a test lets the events out one by one, so it can tell that each
    /// reached the client before the next was sent, by order rather than by time.
    pub chunk_gate: Option<Arc<tokio::sync::Semaphore>>,
}

impl Default for Behavior {
    fn default() -> Self {
        Behavior {
            chunks: 5,
            chunk_delay: Duration::ZERO,
            first_byte_delay: Duration::ZERO,
            fault: None,
            hang: false,
            cut_after: None,
            reply: "Hello from {name}".into(),
            models: vec!["mock-model".into()],
            tool_calls: false,
            echo_headers: false,
            pad_bytes: 0,
            api_key: None,
            max_running: None,
            finish_reason: None,
            chunk_gate: None,
        }
    }
}

/// Shared state of a running mock.
pub struct MockState {
    pub name: String,
    behavior: Mutex<Behavior>,
    /// Requests received on the three OpenAI POST endpoints.
    pub requests: AtomicU64,
    /// Bodies of the most recent requests (newest last, at most 64).
    bodies: Mutex<Vec<Bytes>>,
    /// False until the simulated model load is over: `/health` answers 503.
    pub loaded: AtomicBool,
    /// Client disconnects seen in the middle of a streamed answer.
    pub cancelled_streams: AtomicU64,
    /// When each POST request arrived (at most the last 10,000).
    arrivals: Mutex<Vec<std::time::Instant>>,
    /// Requests being answered, and requests waiting for one of `max_running` slots.
    pub running: AtomicU64,
    pub waiting: AtomicU64,
    slot_free: tokio::sync::Notify,
    /// TCP connections accepted (a client that pools its connections opens few).
    pub connections: AtomicU64,
}

impl MockState {
    pub fn behavior(&self) -> Behavior {
        self.behavior
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
    pub fn set_behavior(&self, f: impl FnOnce(&mut Behavior)) {
        f(&mut self.behavior.lock().unwrap_or_else(|e| e.into_inner()));
    }
    pub fn last_body(&self) -> Option<Bytes> {
        self.bodies
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .last()
            .cloned()
    }
    /// Arrival times of the POST requests, oldest first.
    pub fn arrivals(&self) -> Vec<std::time::Instant> {
        self.arrivals
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
    pub fn request_count(&self) -> u64 {
        self.requests.load(Ordering::SeqCst)
    }
    pub fn connection_count(&self) -> u64 {
        self.connections.load(Ordering::SeqCst)
    }
}

/// Serves `app` on `listener` in a tokio task, with TCP_NODELAY like a real server (or
/// every streamed event would wait for the client's delayed ACK).
pub(crate) fn serve_in_background(
    listener: tokio::net::TcpListener,
    app: axum::Router,
) -> tokio::task::JoinHandle<()> {
    serve_counting(listener, app, |_| {})
}

/// `serve_in_background`, calling `accepted` for every connection.
fn serve_counting(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    accepted: impl Fn(&tokio::net::TcpStream) + Send + 'static,
) -> tokio::task::JoinHandle<()> {
    use axum::serve::ListenerExt as _;
    let listener = listener.tap_io(move |tcp| {
        accepted(tcp);
        let _ = tcp.set_nodelay(true);
    });
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    })
}

/// A mock running on a tokio task; dropped = stopped.
pub struct MockUpstream {
    pub addr: SocketAddr,
    pub state: Arc<MockState>,
    task: tokio::task::JoinHandle<()>,
}

impl MockUpstream {
    /// Starts a mock on 127.0.0.1 with a free port.
    pub async fn start(name: &str, behavior: Behavior) -> std::io::Result<Self> {
        Self::start_on("127.0.0.1:0".parse().expect("valid addr"), name, behavior).await
    }

    pub async fn start_on(
        addr: SocketAddr,
        name: &str,
        behavior: Behavior,
    ) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(MockState {
            name: name.to_string(),
            behavior: Mutex::new(behavior),
            requests: AtomicU64::new(0),
            bodies: Mutex::new(Vec::new()),
            loaded: AtomicBool::new(true),
            cancelled_streams: AtomicU64::new(0),
            arrivals: Mutex::new(Vec::new()),
            running: AtomicU64::new(0),
            waiting: AtomicU64::new(0),
            slot_free: tokio::sync::Notify::new(),
            connections: AtomicU64::new(0),
        });
        let app = router(state.clone());
        // No Nagle: a streamed answer is many small writes; without TCP_NODELAY each one
        // after the first waits for the client's (delayed, ~40 ms) ACK.
        let counted = state.clone();
        let task = serve_counting(listener, app, move |_| {
            counted.connections.fetch_add(1, Ordering::SeqCst);
        });
        Ok(MockUpstream { addr, state, task })
    }

    /// `http://127.0.0.1:PORT/v1`
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }
}

impl Drop for MockUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn router(state: Arc<MockState>) -> axum::Router {
    axum::Router::new()
        .route("/v1/chat/completions", post(chat))
        .route("/v1/completions", post(completions))
        .route("/v1/embeddings", post(embeddings))
        .route("/v1/responses", post(responses))
        .route("/v1/models", get(models))
        .route("/health", get(health))
        .route("/get_model_info", get(model_info))
        .route("/get_load", get(get_load))
        // Any size the gateway lets through (its own limit is what tests exercise).
        .layer(axum::extract::DefaultBodyLimit::disable())
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            require_key,
        ))
        .with_state(state)
}

/// [`Behavior::api_key`]: a missing or wrong bearer token gets SGLang's 401.
async fn require_key(
    State(s): State<Arc<MockState>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let want = s
        .behavior
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .api_key
        .clone();
    if let Some(key) = want {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if !req.uri().path().starts_with("/health") && given != Some(key.as_str()) {
            let body = serde_json::json!({"error": "Unauthorized"});
            return (StatusCode::UNAUTHORIZED, body.to_string()).into_response();
        }
    }
    next.run(req).await
}

#[derive(Deserialize, Default)]
struct Req {
    #[serde(default)]
    model: String,
    #[serde(default)]
    stream: bool,
    #[serde(default)]
    stream_options: Option<StreamOpts>,
    #[serde(default)]
    input: Option<serde_json::Value>,
    #[serde(default)]
    encoding_format: Option<serde_json::Value>,
    #[serde(default)]
    tools: Option<Vec<serde_json::Value>>,
    #[serde(default)]
    messages: Option<Vec<serde_json::Value>>,
}

#[derive(Deserialize)]
struct StreamOpts {
    #[serde(default)]
    include_usage: bool,
}

/// A place among the requests being answered (`Behavior::max_running`); given back when
/// dropped (for a stream: when it ends).
pub struct Slot(Arc<MockState>);

impl Slot {
    /// Waits (counted as waiting) until fewer than `max_running` requests are answered.
    async fn take(s: &Arc<MockState>) -> Slot {
        struct Waiting<'a>(&'a MockState);
        impl Drop for Waiting<'_> {
            fn drop(&mut self) {
                self.0.waiting.fetch_sub(1, Ordering::SeqCst);
            }
        }
        let mut queued: Option<Waiting<'_>> = None;
        loop {
            let max = s.behavior().max_running.unwrap_or(u64::MAX);
            let cur = s.running.load(Ordering::SeqCst);
            if cur < max
                && s.running
                    .compare_exchange(cur, cur + 1, Ordering::SeqCst, Ordering::SeqCst)
                    .is_ok()
            {
                return Slot(s.clone());
            }
            if queued.is_none() {
                s.waiting.fetch_add(1, Ordering::SeqCst);
                queued = Some(Waiting(s));
            }
            // The limit may change meanwhile: look again now and then.
            tokio::select! {
                _ = s.slot_free.notified() => {}
                _ = tokio::time::sleep(Duration::from_millis(20)) => {}
            }
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.running.fetch_sub(1, Ordering::SeqCst);
        self.0.slot_free.notify_one();
    }
}

/// Records the request and applies delays and faults; `Err` is the response to send.
async fn admit(
    s: &Arc<MockState>,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<(Req, Behavior, Slot), Response> {
    s.requests.fetch_add(1, Ordering::SeqCst);
    {
        let mut a = s.arrivals.lock().unwrap_or_else(|e| e.into_inner());
        if a.len() < 10_000 {
            a.push(std::time::Instant::now());
        }
    }
    {
        let mut bodies = s.bodies.lock().unwrap_or_else(|e| e.into_inner());
        if bodies.len() >= 64 {
            bodies.remove(0);
        }
        bodies.push(body.clone());
    }
    let slot = Slot::take(s).await;
    let b = s.behavior();
    if b.hang {
        std::future::pending::<()>().await;
    }
    if !b.first_byte_delay.is_zero() {
        tokio::time::sleep(b.first_byte_delay).await;
    }
    if let Some(f) = &b.fault {
        if f.rate >= 1.0 || fastrand::f64() < f.rate {
            let status =
                StatusCode::from_u16(f.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let mut message = f.message.clone();
            if b.echo_headers {
                for (k, v) in headers {
                    message.push_str(&format!("\n{k}: {}", String::from_utf8_lossy(v.as_bytes())));
                }
            }
            let body = serde_json::json!({"error": {"message": message, "type": "mock_error", "param": null, "code": f.status.to_string()}});
            let mut r = padded(status, body.to_string(), b.pad_bytes);
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            if let Some(ra) = &f.retry_after {
                if let Ok(v) = HeaderValue::from_str(ra) {
                    r.headers_mut().insert(header::RETRY_AFTER, v);
                }
            }
            return Err(r);
        }
    }
    let req: Req = serde_json::from_slice(body).map_err(|e| {
        let body = serde_json::json!({"error": {"message": format!("mock: bad JSON: {e}"), "type": "invalid_request_error", "param": null, "code": null}});
        (StatusCode::BAD_REQUEST, body.to_string()).into_response()
    })?;
    Ok((req, b, slot))
}

/// `body` followed by spaces up to `total` bytes, produced chunk by chunk.
pub fn padded(status: StatusCode, body: String, total: u64) -> Response {
    let pad = total.saturating_sub(body.len() as u64);
    if pad == 0 {
        return (status, body).into_response();
    }
    const CHUNK: u64 = 64 * 1024;
    let spaces = Bytes::from(vec![b' '; CHUNK as usize]);
    let tail = futures_util::stream::unfold(pad, move |left| {
        let spaces = spaces.clone();
        async move {
            (left > 0).then(|| {
                let n = left.min(CHUNK);
                (
                    Ok::<_, std::io::Error>(spaces.slice(..n as usize)),
                    left - n,
                )
            })
        }
    });
    let head = futures_util::stream::once(async move { Ok(Bytes::from(body)) });
    let mut r = Response::new(Body::from_stream(futures_util::StreamExt::chain(
        head, tail,
    )));
    *r.status_mut() = status;
    r
}

fn json(body: String) -> Response {
    let mut r = Response::new(Body::from(body));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

fn split_reply(text: &str, chunks: usize) -> Vec<String> {
    let chunks = chunks.max(1);
    let chars: Vec<char> = text.chars().collect();
    let per = chars.len().div_ceil(chunks).max(1);
    let mut out: Vec<String> = chars.chunks(per).map(|c| c.iter().collect()).collect();
    while out.len() < chunks {
        out.push(String::new());
    }
    out
}

const PROMPT_TOKENS: u64 = 9;

async fn chat(State(s): State<Arc<MockState>>, headers: HeaderMap, body: Bytes) -> Response {
    let (req, b, slot) = match admit(&s, &headers, &body).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let reply = b.reply.replace("{name}", &s.name);
    let completion_tokens = b.chunks as u64;
    let id = format!("chatcmpl-{}-{}", s.name, s.requests.load(Ordering::Relaxed));
    if b.tool_calls {
        if let Some(r) = tool_call_answer(&req, &id, completion_tokens) {
            return match r {
                ToolAnswer::Json(body) => json(body),
                ToolAnswer::Stream(events) => sse(s, events, &b, slot),
            };
        }
    }
    let model = req.model;
    let finish = b.finish_reason.clone().unwrap_or_else(|| "stop".into());
    if !req.stream {
        let body = serde_json::json!({
            "id": id, "object": "chat.completion", "created": 1_700_000_000u64, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": reply}, "logprobs": null, "finish_reason": finish}],
            "usage": {"prompt_tokens": PROMPT_TOKENS, "completion_tokens": completion_tokens, "total_tokens": PROMPT_TOKENS + completion_tokens}
        });
        if b.pad_bytes > 0 {
            let mut r = padded(StatusCode::OK, body.to_string(), b.pad_bytes);
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            return r;
        }
        return json(body.to_string());
    }
    let include_usage = req.stream_options.map(|o| o.include_usage).unwrap_or(false);
    let chunk = |delta: serde_json::Value, finish: Option<&str>| -> Bytes {
        let mut v = serde_json::json!({
            "id": id, "object": "chat.completion.chunk", "created": 1_700_000_000u64, "model": model,
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}]
        });
        if include_usage {
            v["usage"] = serde_json::Value::Null;
        }
        Bytes::from(format!("data: {v}\n\n"))
    };
    let mut events: Vec<Bytes> = Vec::with_capacity(b.chunks + 4);
    let pieces = split_reply(&reply, b.chunks);
    for (i, piece) in pieces.iter().enumerate() {
        let delta = if i == 0 {
            serde_json::json!({"role": "assistant", "content": piece})
        } else {
            serde_json::json!({"content": piece})
        };
        events.push(chunk(delta, None));
    }
    events.push(chunk(serde_json::json!({}), Some(&finish)));
    if include_usage {
        let v = serde_json::json!({
            "id": id, "object": "chat.completion.chunk", "created": 1_700_000_000u64, "model": model,
            "choices": [], "usage": {"prompt_tokens": PROMPT_TOKENS, "completion_tokens": completion_tokens, "total_tokens": PROMPT_TOKENS + completion_tokens}
        });
        events.push(Bytes::from(format!("data: {v}\n\n")));
    }
    events.push(Bytes::from_static(b"data: [DONE]\n\n"));
    sse(s, events, &b, slot)
}

enum ToolAnswer {
    Json(String),
    Stream(Vec<Bytes>),
}

/// Made-up arguments for a JSON schema's properties (strings are "Paris").
pub fn tool_args_for(schema: Option<&serde_json::Value>) -> serde_json::Value {
    let mut out = serde_json::Map::new();
    if let Some(props) = schema
        .and_then(|s| s.get("properties"))
        .and_then(|p| p.as_object())
    {
        for (k, p) in props {
            let v = match p.get("type").and_then(|t| t.as_str()) {
                Some("integer") | Some("number") => serde_json::json!(1),
                Some("boolean") => serde_json::json!(true),
                Some("array") => serde_json::json!([]),
                Some("object") => serde_json::json!({}),
                _ => serde_json::json!("Paris"),
            };
            out.insert(k.clone(), v);
        }
    }
    serde_json::Value::Object(out)
}

/// The tool-call answer (`Behavior::tool_calls`), or `None` to answer with text.
fn tool_call_answer(req: &Req, id: &str, completion_tokens: u64) -> Option<ToolAnswer> {
    let tool = req.tools.as_ref()?.first()?;
    let last_is_tool = req
        .messages
        .as_ref()
        .and_then(|m| m.last())
        .is_some_and(|m| m["role"] == "tool");
    if last_is_tool {
        return None;
    }
    let name = tool["function"]["name"].as_str().unwrap_or("tool");
    let args = tool_args_for(tool["function"].get("parameters")).to_string();
    let call_id = format!("call_{id}");
    let usage = serde_json::json!({"prompt_tokens": PROMPT_TOKENS, "completion_tokens": completion_tokens, "total_tokens": PROMPT_TOKENS + completion_tokens});
    if !req.stream {
        let body = serde_json::json!({
            "id": id, "object": "chat.completion", "created": 1_700_000_000u64, "model": req.model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": null, "refusal": null,
                "tool_calls": [{"id": call_id, "type": "function", "function": {"name": name, "arguments": args}}]},
                "logprobs": null, "finish_reason": "tool_calls"}],
            "usage": usage
        });
        return Some(ToolAnswer::Json(body.to_string()));
    }
    let include_usage = req.stream_options.as_ref().is_some_and(|o| o.include_usage);
    let chunk = |delta: serde_json::Value, finish: Option<&str>| -> Bytes {
        let mut v = serde_json::json!({
            "id": id, "object": "chat.completion.chunk", "created": 1_700_000_000u64, "model": req.model,
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}]
        });
        if include_usage {
            v["usage"] = serde_json::Value::Null;
        }
        Bytes::from(format!("data: {v}\n\n"))
    };
    let mid = (0..=args.len() / 2)
        .rev()
        .find(|&i| args.is_char_boundary(i))
        .unwrap_or(0);
    let mut events = vec![chunk(
        serde_json::json!({"role": "assistant", "content": null, "tool_calls": [{"index": 0, "id": call_id, "type": "function", "function": {"name": name, "arguments": ""}}]}),
        None,
    )];
    for frag in [&args[..mid], &args[mid..]] {
        events.push(chunk(
            serde_json::json!({"tool_calls": [{"index": 0, "function": {"arguments": frag}}]}),
            None,
        ));
    }
    events.push(chunk(serde_json::json!({}), Some("tool_calls")));
    if include_usage {
        let v = serde_json::json!({"id": id, "object": "chat.completion.chunk", "created": 1_700_000_000u64,
            "model": req.model, "choices": [], "usage": usage});
        events.push(Bytes::from(format!("data: {v}\n\n")));
    }
    events.push(Bytes::from_static(b"data: [DONE]\n\n"));
    Some(ToolAnswer::Stream(events))
}

/// Streams `events` with `delay` between them; aborts the connection after `cut_after`.
fn sse(s: Arc<MockState>, events: Vec<Bytes>, b: &Behavior, slot: Slot) -> Response {
    let (delay, cut_after, gate) = (b.chunk_delay, b.cut_after, b.chunk_gate.clone());
    struct Guard {
        s: Arc<MockState>,
        finished: bool,
        _slot: Slot,
    }
    impl Drop for Guard {
        fn drop(&mut self) {
            if !self.finished {
                self.s.cancelled_streams.fetch_add(1, Ordering::SeqCst);
            }
        }
    }
    let guard = Guard {
        s,
        finished: false,
        _slot: slot,
    };
    let stream = futures_util::stream::unfold(
        (events.into_iter(), 0usize, guard),
        move |(mut it, i, mut guard)| {
            let gate = gate.clone();
            async move {
                if cut_after == Some(i) {
                    // Pause as before any chunk, so the chunks before the cut are flushed to
                    // the client first (otherwise the abort can overtake them).
                    if i > 0 {
                        tokio::time::sleep(delay.max(Duration::from_millis(50))).await;
                    }
                    guard.finished = true;
                    return Some((
                        Err(std::io::Error::other("mock: stream cut")),
                        (it, i + 1, guard),
                    ));
                }
                if cut_after.is_some_and(|c| i > c) {
                    return None;
                }
                let ev = match it.next() {
                    Some(ev) => ev,
                    None => {
                        guard.finished = true;
                        drop(guard);
                        return None;
                    }
                };
                if i > 0 && !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
                if let Some(gate) = gate.as_ref().filter(|_| i > 0) {
                    // A closed gate lets everything through.
                    if let Ok(permit) = gate.acquire().await {
                        permit.forget();
                    }
                }
                Some((Ok::<Bytes, std::io::Error>(ev), (it, i + 1, guard)))
            }
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

/// `POST /v1/responses`, for a deployment that serves OpenAI's Responses API itself: a
/// text answer, or (with [`Behavior::tool_calls`], when the request declares function
/// tools and its input does not end with a function call's output) a call of the first
/// tool; streamed as typed events when asked.
async fn responses(State(s): State<Arc<MockState>>, headers: HeaderMap, body: Bytes) -> Response {
    use serde_json::{json, Value};
    let (req, b, slot) = match admit(&s, &headers, &body).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let n = s.requests.load(Ordering::Relaxed);
    let id = format!("resp_mock_{}_{n}", s.name);
    let reply = b.reply.replace("{name}", &s.name);
    let answered = req
        .input
        .as_ref()
        .and_then(|i| i.as_array())
        .and_then(|items| items.last())
        .is_some_and(|it| it["type"] == "function_call_output");
    let tool = req
        .tools
        .as_ref()
        .and_then(|t| t.first())
        .filter(|t| b.tool_calls && !answered && t["type"] == "function");
    let usage = json!({"input_tokens": PROMPT_TOKENS, "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": b.chunks, "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": PROMPT_TOKENS + b.chunks as u64});
    let item = match tool {
        Some(t) => json!({"type": "function_call", "id": format!("fc_mock_{n}"),
            "call_id": format!("call_mock_{n}"), "name": t["name"],
            "arguments": tool_args_for(t.get("parameters")).to_string(), "status": "completed"}),
        None => json!({"type": "message", "id": format!("msg_mock_{n}"), "status": "completed",
            "role": "assistant", "content": [{"type": "output_text", "text": reply, "annotations": []}]}),
    };
    let response = |status: &str, output: Value, usage: Value| {
        json!({"id": id, "object": "response", "created_at": 1_700_000_000u64, "status": status,
            "error": null, "incomplete_details": null, "model": req.model, "output": output,
            "parallel_tool_calls": true, "tool_choice": "auto", "tools": [], "usage": usage})
    };
    if !req.stream {
        return json(response("completed", json!([item]), usage).to_string());
    }
    let mut seq = 0u64;
    let mut ev = |name: &str, mut data: Value| {
        data["type"] = json!(name);
        data["sequence_number"] = json!(seq);
        seq += 1;
        Bytes::from(format!("event: {name}\ndata: {data}\n\n"))
    };
    let mut events = vec![
        ev(
            "response.created",
            json!({"response": response("in_progress", json!([]), Value::Null)}),
        ),
        ev(
            "response.in_progress",
            json!({"response": response("in_progress", json!([]), Value::Null)}),
        ),
    ];
    let item_id = item["id"].clone();
    let mut added = item.clone();
    added["status"] = json!("in_progress");
    if tool.is_some() {
        let args = item["arguments"].as_str().unwrap_or("{}").to_string();
        added["arguments"] = json!("");
        events.push(ev(
            "response.output_item.added",
            json!({"output_index": 0, "item": added}),
        ));
        let mid = (0..=args.len() / 2)
            .rev()
            .find(|&i| args.is_char_boundary(i))
            .unwrap_or(0);
        for frag in [&args[..mid], &args[mid..]] {
            events.push(ev(
                "response.function_call_arguments.delta",
                json!({"item_id": item_id, "output_index": 0, "delta": frag}),
            ));
        }
        events.push(ev(
            "response.function_call_arguments.done",
            json!({"item_id": item_id, "output_index": 0, "arguments": args}),
        ));
    } else {
        added["content"] = json!([]);
        events.push(ev(
            "response.output_item.added",
            json!({"output_index": 0, "item": added}),
        ));
        let part = |text: &str| json!({"type": "output_text", "text": text, "annotations": []});
        events.push(ev(
            "response.content_part.added",
            json!({"item_id": item_id, "output_index": 0, "content_index": 0, "part": part("")}),
        ));
        for piece in split_reply(&reply, b.chunks) {
            events.push(ev("response.output_text.delta",
                json!({"item_id": item_id, "output_index": 0, "content_index": 0, "delta": piece, "logprobs": []})));
        }
        events.push(ev("response.output_text.done",
            json!({"item_id": item_id, "output_index": 0, "content_index": 0, "text": reply, "logprobs": []})));
        events.push(ev("response.content_part.done",
            json!({"item_id": item_id, "output_index": 0, "content_index": 0, "part": part(&reply)})));
    }
    events.push(ev(
        "response.output_item.done",
        json!({"output_index": 0, "item": item}),
    ));
    events.push(ev(
        "response.completed",
        json!({"response": response("completed", json!([item]), usage)}),
    ));
    sse(s, events, &b, slot)
}

async fn completions(State(s): State<Arc<MockState>>, headers: HeaderMap, body: Bytes) -> Response {
    let (req, b, slot) = match admit(&s, &headers, &body).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let reply = b.reply.replace("{name}", &s.name);
    let id = format!("cmpl-{}-{}", s.name, s.requests.load(Ordering::Relaxed));
    let usage = serde_json::json!({"prompt_tokens": PROMPT_TOKENS, "completion_tokens": b.chunks, "total_tokens": PROMPT_TOKENS + b.chunks as u64});
    if !req.stream {
        let body = serde_json::json!({
            "id": id, "object": "text_completion", "created": 1_700_000_000u64, "model": req.model,
            "choices": [{"index": 0, "text": reply, "logprobs": null, "finish_reason": "stop"}],
            "usage": usage
        });
        return json(body.to_string());
    }
    let mut events: Vec<Bytes> = split_reply(&reply, b.chunks)
        .into_iter()
        .map(|piece| {
            let v = serde_json::json!({"id": id, "object": "text_completion", "created": 1_700_000_000u64, "model": req.model,
                "choices": [{"index": 0, "text": piece, "logprobs": null, "finish_reason": null}]});
            Bytes::from(format!("data: {v}\n\n"))
        })
        .collect();
    let v = serde_json::json!({"id": id, "object": "text_completion", "created": 1_700_000_000u64, "model": req.model,
        "choices": [{"index": 0, "text": "", "logprobs": null, "finish_reason": "stop"}]});
    events.push(Bytes::from(format!("data: {v}\n\n")));
    events.push(Bytes::from_static(b"data: [DONE]\n\n"));
    sse(s, events, &b, slot)
}

async fn embeddings(State(s): State<Arc<MockState>>, headers: HeaderMap, body: Bytes) -> Response {
    let (req, _, _slot) = match admit(&s, &headers, &body).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let format = match crate::providers::translate::EmbeddingFormat::of_value(
        req.encoding_format.as_ref(),
    ) {
        Ok(f) => f,
        Err(e) => return e.into_response(),
    };
    let inputs: Vec<String> = match req.input {
        Some(serde_json::Value::String(t)) => vec![t],
        Some(serde_json::Value::Array(items)) => items.iter().map(|v| v.to_string()).collect(),
        _ => vec![String::new()],
    };
    let data: Vec<serde_json::Value> = inputs
        .iter()
        .enumerate()
        .map(|(i, text)| {
            // A deterministic unit-ish vector derived from the text.
            let seed = text
                .bytes()
                .fold(7u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b)));
            let v: Vec<f64> = (0..8)
                .map(|k| (((seed >> (k * 4)) & 0xf) as f64 - 7.5) / 7.5)
                .collect();
            serde_json::json!({"object": "embedding", "index": i, "embedding": format.encode(v)})
        })
        .collect();
    let tokens = inputs.iter().map(|t| t.len() as u64 / 4 + 1).sum::<u64>();
    json(serde_json::json!({"object": "list", "data": data, "model": req.model, "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}).to_string())
}

async fn models(State(s): State<Arc<MockState>>) -> Response {
    let b = s.behavior();
    let data: Vec<serde_json::Value> = b
        .models
        .iter()
        .map(|m| serde_json::json!({"id": m, "object": "model", "created": 1_700_000_000u64, "owned_by": "mock"}))
        .collect();
    json(serde_json::json!({"object": "list", "data": data}).to_string())
}

async fn health(State(s): State<Arc<MockState>>) -> Response {
    if s.loaded.load(Ordering::SeqCst) {
        StatusCode::OK.into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "loading").into_response()
    }
}

/// SGLang's `/get_load`: one data-parallel rank, `num_reqs` counting the waiting ones too.
async fn get_load(State(s): State<Arc<MockState>>) -> Response {
    let running = s.running.load(Ordering::SeqCst);
    let waiting = s.waiting.load(Ordering::SeqCst);
    json(
        serde_json::json!([{"dp_rank": 0, "num_reqs": running + waiting, "num_waiting_reqs": waiting,
            "num_tokens": running * (PROMPT_TOKENS + 5)}])
        .to_string(),
    )
}

async fn model_info(State(s): State<Arc<MockState>>) -> Response {
    let b = s.behavior();
    json(serde_json::json!({"model_path": b.models.first(), "is_generation": true}).to_string())
}

/// `llmgw mock-upstream`: run the mock as a process.
#[derive(clap::Args, Debug)]
pub struct MockArgs {
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// 0 picks a free port (printed on stdout).
    #[arg(long, default_value_t = 0)]
    pub port: u16,
    #[arg(long, default_value = "mock")]
    pub name: String,
    /// Model ids for /v1/models.
    #[arg(long = "model", default_value = "mock-model")]
    pub models: Vec<String>,
    #[arg(long, default_value_t = 5)]
    pub chunks: usize,
    #[arg(long, default_value_t = 0)]
    pub chunk_delay_ms: u64,
    #[arg(long, default_value_t = 0)]
    pub first_byte_delay_ms: u64,
    /// `/health` answers 503 for this long after start (simulated model load).
    #[arg(long, default_value_t = 0)]
    pub load_ms: u64,
    /// Exit with status 1 this long after start (simulated crash).
    #[arg(long)]
    pub crash_after_ms: Option<u64>,
    /// Fail requests with this HTTP status…
    #[arg(long)]
    pub fail_status: Option<u16>,
    /// …on this fraction of requests.
    #[arg(long, default_value_t = 1.0)]
    pub fail_rate: f64,
    /// Require `Authorization: Bearer $NAME` (like SGLang's --api-key, but read
    /// from the environment: `serve` passes a launched backend's key in
    /// LLMGW_BACKEND_API_KEY).
    #[arg(long, value_name = "NAME")]
    pub api_key_env: Option<String>,
    /// Answer at most this many requests at once; more wait (reported by /get_load).
    #[arg(long)]
    pub max_running: Option<u64>,
    /// A JSON file read every 100 ms while the mock runs, changing how it answers:
    /// `{"first_byte_delay_ms": 2000, "max_running": 1}` (a test makes one replica slow).
    #[arg(long, value_name = "PATH")]
    pub control_file: Option<std::path::PathBuf>,
    /// A multi-node server, as SGLang's flags say: rank 0 serves HTTP once every other
    /// rank has joined it at --dist-init-addr; the other ranks only join (and exit when
    /// rank 0 goes away, as a torch.distributed peer would).
    #[arg(long, default_value_t = 1)]
    pub nnodes: u32,
    #[arg(long, default_value_t = 0)]
    pub node_rank: u32,
    #[arg(long, value_name = "HOST:PORT")]
    pub dist_init_addr: Option<String>,
    /// Accepted for command-line compatibility with SGLang launch lines and ignored.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, hide = true)]
    pub ignored: Vec<String>,
}

pub fn main(args: MockArgs) -> anyhow::Result<ExitCode> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    if args.nnodes > 1 && args.node_rank > 0 {
        return rt.block_on(rendezvous::join(&args));
    }
    rt.block_on(async move {
        let addr: SocketAddr = format!("{}:{}", args.host, args.port).parse()?;
        let api_key =
            match &args.api_key_env {
                Some(name) => Some(std::env::var(name).map_err(|_| {
                    anyhow::anyhow!("--api-key-env {name}: the variable is not set")
                })?),
                None => None,
            };
        let behavior = Behavior {
            api_key,
            chunks: args.chunks,
            chunk_delay: Duration::from_millis(args.chunk_delay_ms),
            first_byte_delay: Duration::from_millis(args.first_byte_delay_ms),
            fault: args.fail_status.map(|status| Fault {
                status,
                rate: args.fail_rate,
                retry_after: None,
                message: format!("mock {} injected {status}", args.name),
            }),
            models: args.models.clone(),
            max_running: args.max_running,
            ..Behavior::default()
        };
        let mock = MockUpstream::start_on(addr, &args.name, behavior).await?;
        if let Some(path) = &args.control_file {
            tokio::spawn(follow_control_file(path.clone(), mock.state.clone()));
        }
        if args.nnodes > 1 {
            // Not ready (health 503) until every other rank has joined.
            mock.state.loaded.store(false, Ordering::SeqCst);
            tokio::spawn(rendezvous::host(
                args.dist_init_addr.clone().unwrap_or_default(),
                args.nnodes,
                mock.state.clone(),
            ));
        }
        if args.load_ms > 0 && args.nnodes <= 1 {
            mock.state.loaded.store(false, Ordering::SeqCst);
            let st = mock.state.clone();
            let load = Duration::from_millis(args.load_ms);
            tokio::spawn(async move {
                tokio::time::sleep(load).await;
                st.loaded.store(true, Ordering::SeqCst);
            });
        }
        println!(
            "mock upstream {} listening on http://{}/v1",
            args.name, mock.addr
        );
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate())?;
        let crash = async {
            match args.crash_after_ms {
                Some(ms) => tokio::time::sleep(Duration::from_millis(ms)).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = term.recv() => Ok(ExitCode::SUCCESS),
            _ = tokio::signal::ctrl_c() => Ok(ExitCode::SUCCESS),
            _ = crash => {
                eprintln!("mock upstream {}: simulated crash", args.name);
                Ok(ExitCode::from(1))
            }
        }
    })
}

/// Applies `{"first_byte_delay_ms", "chunk_delay_ms", "max_running"}` from `path` each
/// time it changes (checked every 100 ms).
async fn follow_control_file(path: std::path::PathBuf, state: Arc<MockState>) {
    #[derive(Deserialize)]
    struct Control {
        first_byte_delay_ms: Option<u64>,
        chunk_delay_ms: Option<u64>,
        #[serde(default, deserialize_with = "some_or_null")]
        max_running: Option<Option<u64>>,
    }
    fn some_or_null<'de, D: serde::Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Option<u64>>, D::Error> {
        Option::<u64>::deserialize(d).map(Some)
    }
    let mut seen: Option<std::time::SystemTime> = None;
    loop {
        let modified = std::fs::metadata(&path).and_then(|m| m.modified()).ok();
        if modified.is_some() && modified != seen {
            seen = modified;
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            match serde_json::from_str::<Control>(&text) {
                Ok(c) => {
                    println!("mock {}: control file {text}", state.name);
                    state.set_behavior(|b| {
                        if let Some(ms) = c.first_byte_delay_ms {
                            b.first_byte_delay = Duration::from_millis(ms);
                        }
                        if let Some(ms) = c.chunk_delay_ms {
                            b.chunk_delay = Duration::from_millis(ms);
                        }
                        if let Some(m) = c.max_running {
                            b.max_running = m;
                        }
                    });
                    state.slot_free.notify_waiters();
                }
                Err(e) => eprintln!("mock {}: control file: {e}", state.name),
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A multi-node server's rendezvous, the way torch.distributed's TCP store behaves
/// enough for tests: rank 0 listens at `--dist-init-addr`, the other ranks connect and
/// say who they are; a rank whose peer goes away exits.
mod rendezvous {
    use super::{MockArgs, MockState};
    use std::process::ExitCode;
    use std::sync::atomic::Ordering;
    use std::sync::Arc;
    use std::time::Duration;
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

    async fn resolve(addr: &str) -> anyhow::Result<std::net::SocketAddr> {
        tokio::net::lookup_host(addr)
            .await?
            .next()
            .ok_or_else(|| anyhow::anyhow!("--dist-init-addr {addr:?} resolves to nothing"))
    }

    /// Rank 0: accept the other ranks, then serve; exit when one leaves.
    pub async fn host(addr: String, nnodes: u32, state: Arc<MockState>) {
        let listener = match resolve(&addr).await {
            Ok(a) => tokio::net::TcpListener::bind(a).await,
            Err(e) => Err(std::io::Error::other(e.to_string())),
        };
        let listener = match listener {
            Ok(l) => l,
            Err(e) => {
                eprintln!("mock rank 0: cannot listen on --dist-init-addr {addr:?}: {e}");
                std::process::exit(1);
            }
        };
        println!("mock rank 0 of {nnodes}: waiting for the other ranks at {addr}");
        let mut joined = std::collections::BTreeSet::new();
        while joined.len() + 1 < nnodes as usize {
            let Ok((conn, from)) = listener.accept().await else {
                continue;
            };
            let mut lines = BufReader::new(conn);
            let mut line = String::new();
            if lines.read_line(&mut line).await.is_err() {
                continue;
            }
            let Some(rank) = line
                .trim()
                .strip_prefix("rank ")
                .and_then(|r| r.parse::<u32>().ok())
            else {
                continue;
            };
            println!("mock rank 0: rank {rank} joined from {from}");
            joined.insert(rank);
            tokio::spawn(async move {
                let mut buf = [0u8; 64];
                // Anything but more bytes (end of stream, an error) is the peer gone.
                while matches!(lines.read(&mut buf).await, Ok(n) if n > 0) {}
                eprintln!("mock rank 0: rank {rank} went away; exiting");
                std::process::exit(1);
            });
        }
        println!("mock rank 0: all {nnodes} ranks joined; serving");
        state.loaded.store(true, Ordering::SeqCst);
    }

    /// A rank other than 0: join rank 0 (retrying while it starts), stay until it goes.
    pub async fn join(args: &MockArgs) -> anyhow::Result<ExitCode> {
        let addr = args
            .dist_init_addr
            .clone()
            .ok_or_else(|| anyhow::anyhow!("--node-rank > 0 needs --dist-init-addr"))?;
        let target = resolve(&addr).await?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(600);
        let mut conn = loop {
            match tokio::net::TcpStream::connect(target).await {
                Ok(c) => break c,
                Err(_) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(200)).await
                }
                Err(e) => anyhow::bail!("cannot reach rank 0 at {addr}: {e}"),
            }
        };
        conn.write_all(format!("rank {}\n", args.node_rank).as_bytes())
            .await?;
        println!(
            "mock rank {} of {} joined {addr}",
            args.node_rank, args.nnodes
        );
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate())?;
        let mut buf = [0u8; 64];
        tokio::select! {
            _ = term.recv() => Ok(ExitCode::SUCCESS),
            _ = async { while matches!(conn.read(&mut buf).await, Ok(n) if n > 0) {} } => {
                eprintln!("mock rank {}: rank 0 went away; exiting", args.node_rank);
                Ok(ExitCode::from(1))
            }
        }
    }
}
