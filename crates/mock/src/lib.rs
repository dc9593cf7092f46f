//! A mock LLM upstream that speaks OpenAI's wire format (JSON and SSE) and injects
//! faults. It is the only test double in the project: tests start it in-process on
//! 127.0.0.1:0, the benchmark and the SLURM demo run it as `llmgw mock-upstream` (a real
//! process, also usable as a stand-in for an SGLang server). [`cloud`] adds the other
//! providers' wire formats (Anthropic, Gemini).

mod answers;
mod cli;
pub use answers::*;
pub use cli::*;

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

pub mod cloud;
pub mod prefix_cache;

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
    /// With `tool_calls`: call the first declared tool whose name contains this (else
    /// the first tool), with these arguments (JSON text) instead of made-up ones.
    pub tool_pick: Option<(String, Option<String>)>,
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
    /// Prompt chunks the modelled prefix cache holds (0: no model; see `prefix_cache`).
    pub prefix_cache_chunks: usize,
    /// Prefill time per prompt chunk that is not cached, before the first byte.
    pub prefill_per_chunk: Duration,
    /// Count requests by the text of their last message (or `input`): tests that must
    /// see each of thousands of requests exactly once ([`MockState::content_counts`]).
    pub count_contents: bool,
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
            tool_pick: None,
            echo_headers: false,
            pad_bytes: 0,
            api_key: None,
            max_running: None,
            finish_reason: None,
            chunk_gate: None,
            prefix_cache_chunks: 0,
            prefill_per_chunk: Duration::ZERO,
            count_contents: false,
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
    /// Headers of the most recent requests (newest last, at most 64).
    headers: Mutex<Vec<HeaderMap>>,
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
    /// The modelled prefix cache (`Behavior::prefix_cache_chunks`).
    pub prefix: prefix_cache::PrefixCache,
    /// Requests by content (`Behavior::count_contents`; at most 1,000,000 texts).
    contents: Mutex<std::collections::HashMap<String, u64>>,
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
    /// The most recent request bodies (at most 64), oldest first.
    pub fn bodies(&self) -> Vec<Bytes> {
        self.bodies
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
    /// The headers of the most recent requests (at most 64), oldest first: what a test
    /// checks the gateway sent upstream (e.g. `traceparent`).
    pub fn received_headers(&self) -> Vec<HeaderMap> {
        self.headers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
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
    /// How many requests carried each text (`Behavior::count_contents`).
    pub fn content_counts(&self) -> std::collections::HashMap<String, u64> {
        self.contents
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
        Self::start_on(SocketAddr::from(([127, 0, 0, 1], 0)), name, behavior).await
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
            headers: Mutex::new(Vec::new()),
            loaded: AtomicBool::new(true),
            cancelled_streams: AtomicU64::new(0),
            arrivals: Mutex::new(Vec::new()),
            running: AtomicU64::new(0),
            waiting: AtomicU64::new(0),
            slot_free: tokio::sync::Notify::new(),
            connections: AtomicU64::new(0),
            prefix: Default::default(),
            contents: Mutex::new(std::collections::HashMap::new()),
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
        .route("/v1/loads", get(v1_loads))
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

/// Counts the request under its last message's text (or its `input`).
fn count_content(s: &MockState, body: &Bytes) {
    let v: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    let text = v["messages"]
        .as_array()
        .and_then(|m| m.last())
        .and_then(|m| m["content"].as_str())
        .or_else(|| v["input"].as_str())
        .unwrap_or("")
        .to_string();
    let mut c = s.contents.lock().unwrap_or_else(|e| e.into_inner());
    if c.len() < 1_000_000 || c.contains_key(&text) {
        *c.entry(text).or_insert(0) += 1;
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
    {
        let mut h = s.headers.lock().unwrap_or_else(|e| e.into_inner());
        if h.len() >= 64 {
            h.remove(0);
        }
        h.push(headers.clone());
    }
    if s.behavior().count_contents {
        count_content(s, body);
    }
    let slot = Slot::take(s).await;
    let b = s.behavior();
    if b.hang {
        std::future::pending::<()>().await;
    }
    if !b.first_byte_delay.is_zero() {
        tokio::time::sleep(b.first_byte_delay).await;
    }
    if b.prefix_cache_chunks > 0 {
        let keys = llmgw_wire::prefix::keys(body);
        let prefill = s.prefix.serve(&keys, b.prefix_cache_chunks);
        let wait = b
            .prefill_per_chunk
            .saturating_mul(u32::try_from(prefill).unwrap_or(u32::MAX));
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
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
