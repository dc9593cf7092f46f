//! `llmgw serve`: the gateway in the foreground.
//!
//! Binds (the configured port, or a free one when it is taken), serves the OpenAI API
//! through the [`Router`], reports readiness, writes `endpoint.json` when ready, and on
//! SIGTERM/SIGINT drains: stop accepting, readiness 503, let in-flight requests (streams
//! included) finish within the grace period, exit 0.

use crate::cli::ServeArgs;
use crate::config::{Config, LoadedConfig, LogFormat, Secret};
use crate::error::ApiError;
use crate::request::{ClientRequest, Endpoint};
use crate::router::{RequestLog, Router};
use crate::state::{self, EndpointRecord};
use anyhow::Context as _;
use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Everything a request handler needs; shared read-only across tasks.
pub struct AppState {
    pub router: Router,
    master_key: Option<Secret>,
    max_body: usize,
    request_timeout: Duration,
    /// Readiness: false while starting (backends loading) and while draining.
    pub ready: AtomicBool,
    pub draining: AtomicBool,
    models_body: Bytes,
    /// Supervised local backends, for `/health`.
    backends: crate::supervise::Monitor,
    /// The response cache (disabled unless `[cache] enabled`).
    pub cache: crate::cache::Cache,
    /// Virtual keys, budgets, spend and the admin API (only with a master key).
    pub keys: Option<Arc<crate::keys::KeyService>>,
}

/// `llmgw serve` entry: config, logs, runtime.
pub fn main(args: ServeArgs, log_format: Option<LogFormat>) -> anyhow::Result<ExitCode> {
    let cfg = match &args.config {
        Some(p) => Config::load(p)?,
        None => Config::quickstart()?,
    };
    let _log_guard = crate::logging::init(log_format.unwrap_or(cfg.config.server.log_format));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(run(args, cfg, CancellationToken::new()))?;
    Ok(ExitCode::SUCCESS)
}

/// A bound, not yet serving gateway; `run` drives it.
pub struct Bound {
    pub listener: tokio::net::TcpListener,
    pub addr: SocketAddr,
}

/// Binds `host:port`, or a free port on `host` when that one is taken.
pub async fn bind(host: &str, port: u16) -> anyhow::Result<Bound> {
    let ip: std::net::IpAddr = host.parse().with_context(|| {
        format!("[server] host {host:?} is not an IP address (use e.g. 127.0.0.1 or 0.0.0.0)")
    })?;
    let want = SocketAddr::new(ip, port);
    let listener = match tokio::net::TcpListener::bind(want).await {
        Ok(l) => l,
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && port != 0 => {
            let l = tokio::net::TcpListener::bind(SocketAddr::new(ip, 0))
                .await
                .with_context(|| format!("cannot bind {ip}:0"))?;
            tracing::warn!(
                wanted = port,
                port = l.local_addr()?.port(),
                "port {port} is taken on this node; using a free port instead"
            );
            l
        }
        Err(e) => return Err(e).with_context(|| format!("cannot listen on {want}")),
    };
    let addr = listener.local_addr()?;
    Ok(Bound { listener, addr })
}

/// How long closing the connections left at the end of the grace period may take.
const KILL_SETTLE: std::time::Duration = std::time::Duration::from_secs(3);

/// Runs the gateway until `shutdown` is cancelled or SIGTERM/SIGINT arrives.
pub async fn run(
    args: ServeArgs,
    mut cfg: LoadedConfig,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    // A copy: `cfg` changes below (replicas are written out).
    let server = &cfg.config.server.clone();
    let host = args.host.clone().unwrap_or_else(|| server.host.clone());
    let port = args.port.unwrap_or(server.port);
    let master_key = match &args.master_key_file {
        Some(path) => Some(read_key_file(path)?),
        None => cfg.master_key.clone(),
    };
    let loopback = host
        .parse::<std::net::IpAddr>()
        .map(|ip| ip.is_loopback())
        .unwrap_or(false);
    if !loopback && master_key.is_none() {
        anyhow::bail!(
            "refusing to listen on {host} without a master key: anyone on the network could use \
             your models and keys; set [server] master_key = \"env:LLMGW_MASTER_KEY\" (or use \
             --master-key-file), or listen on 127.0.0.1"
        );
    }
    // A SLURM job with a state directory is one generation of a chain of jobs (renewal,
    // handover: see renew.rs).
    let member = crate::renew::Member::join(
        args.state_dir.as_deref(),
        &cfg.config.slurm,
        server.shutdown_grace.0,
    )
    .map(Arc::new);
    // Before anything opens files: the default connection cap depends on the limit.
    let limits = crate::conn::Limits::from_config(server);
    // Local backends get their ports before the router is built (it needs their URLs).
    // Replicas are placed over the job's GPUs and nodes; `cfg` gets one entry each.
    let mut backends =
        crate::supervise::Backends::plan(&mut cfg, args.state_dir.as_deref()).await?;
    let monitor = backends.monitor();
    if let Some(m) = member.as_ref().filter(|m| m.is_successor()) {
        monitor.set_status_file(Some(m.loading_status_file()));
    }
    // …and their keys: a launched backend requires the one the gateway sends.
    for (i, key) in backends.api_keys() {
        cfg.model_keys[i] = Some(key);
    }
    let mut router = Router::new(&cfg, &backends.api_bases()).map_err(anyhow::Error::msg)?;
    if let Some(key) = &master_key {
        router.redact_also(key);
    }
    backends.attach(&router);
    // Local backends' queues, read every 250 ms for load-based and local-first routing.
    crate::router::load::Poller::spawn(router.deployments().cloned().collect(), shutdown.clone());
    // Connects to Redis when configured (starting anyway if it is down) and starts the
    // replicas' shared-state sync.
    let cache = crate::cache::Cache::start(&cfg, router.deployments().cloned().collect()).await?;
    let keys = match &master_key {
        Some(_) => {
            Some(crate::keys::KeyService::start(&cfg, args.state_dir.as_deref(), &router).await?)
        }
        None => None,
    };
    let bound = bind(&host, port).await?;
    let state = Arc::new(AppState {
        models_body: models_body(router.model_names()),
        router,
        master_key,
        max_body: server.max_body_bytes,
        request_timeout: server.request_timeout.0,
        ready: AtomicBool::new(false),
        draining: AtomicBool::new(false),
        backends: monitor.clone(),
        cache,
        keys,
    });
    let relay = match &member {
        Some(_) => Some(crate::renew::Relay::new(server.max_body_bytes)?),
        None => None,
    };
    let mut app = app(state.clone());
    if let Some(r) = &relay {
        app = app.layer(axum::middleware::from_fn_with_state(
            r.clone(),
            crate::renew::relay,
        ));
    }
    let grace = server.shutdown_grace.0;

    spawn_signal_listener(shutdown.clone());
    // While this job relays to a successor (renewal), every request passes the relay layer.
    let hot = relay.is_none().then(|| state.clone());
    let kill = CancellationToken::new();
    let serve = crate::conn::serve(
        bound.listener,
        app,
        hot,
        limits,
        {
            let shutdown = shutdown.clone();
            let state = state.clone();
            async move {
                shutdown.cancelled().await;
                state.draining.store(true, Ordering::SeqCst);
                state.ready.store(false, Ordering::SeqCst);
                tracing::info!(grace = ?grace, "shutting down: no new connections; in-flight requests may finish");
            }
        },
        kill.clone(),
    );

    // Serve (readiness 503) while the local backends load; ready once each is ready or failed.
    let mut server = tokio::spawn(serve);
    backends.start()?;
    tokio::select! {
        r = backends.settled() => if let Err(e) = r {
            backends.shutdown().await;
            return Err(e.into());
        },
        _ = shutdown.cancelled() => {}
    }
    state
        .ready
        .store(!shutdown.is_cancelled(), Ordering::SeqCst);
    let record = match &args.state_dir {
        Some(_) if shutdown.is_cancelled() => None,
        Some(dir) => {
            state::ensure_dir(dir)
                .with_context(|| format!("cannot create state directory {}", dir.display()))?;
            let rec = EndpointRecord {
                host: node_hostname(),
                bind: bound.addr.ip().to_string(),
                port: bound.addr.port(),
                pid: std::process::id(),
                job_id: std::env::var("SLURM_JOB_ID").ok(),
                started_at: state::now_rfc3339(),
                generation: 1,
                predecessor_job_id: None,
                ready_unix_ms: state::now_unix_ms(),
            };
            match &member {
                Some(m) => publish(m, rec, &monitor, dir, &shutdown),
                None => rec.write(dir).with_context(|| {
                    format!("cannot write {}", dir.join(state::ENDPOINT_FILE).display())
                })?,
            }
            Some(dir.clone())
        }
        None => None,
    };
    let backends: crate::renew::SharedBackends = Arc::new(tokio::sync::Mutex::new(Some(backends)));
    if let (Some(m), Some(r), false) = (&member, &relay, shutdown.is_cancelled()) {
        tokio::spawn(
            m.clone()
                .watch(r.clone(), backends.clone(), shutdown.clone()),
        );
    }
    tracing::info!(
        addr = %bound.addr,
        models = ?state.router.model_names(),
        config = %cfg.source_name,
        "llmgw ready on http://{}/v1",
        bound.addr
    );
    if let Some(hint) = cfg.unreachable_hint {
        tracing::warn!("no config given (-c): {hint}");
    }

    let grace_timer = {
        let shutdown = shutdown.clone();
        async move {
            shutdown.cancelled().await;
            tokio::time::sleep(grace).await;
        }
    };
    let result = tokio::select! {
        r = &mut server => r.context("server task failed"),
        _ = grace_timer => {
            let left: u64 = state.router.deployments().map(|d| d.stats.in_flight.load(Ordering::Relaxed)).sum();
            tracing::warn!(in_flight = left, "grace period over; closing remaining connections");
            // Cut what is still open, so each cut request records its spend row before
            // the writer's last flush; bounded in case a connection does not end.
            kill.cancel();
            let _ = tokio::time::timeout(KILL_SETTLE, &mut server).await;
            Ok(())
        }
    };
    let left = backends.lock().await.take();
    if let Some(b) = left {
        b.shutdown().await;
    }
    if let Some(keys) = &state.keys {
        keys.shutdown().await; // writes the spend rows it still holds
    }
    match (&member, record) {
        (Some(m), _) => m.finish(relay.as_deref()),
        (None, Some(dir)) => {
            let _ = std::fs::remove_file(dir.join(state::ENDPOINT_FILE));
        }
        (None, None) => {}
    }
    tracing::info!("stopped");
    result
}

/// Makes a chain member the current generation; when it may not (the gateway is being
/// stopped, or a newer generation is current) it shuts down instead.
fn publish(
    m: &crate::renew::Member,
    rec: EndpointRecord,
    monitor: &crate::supervise::Monitor,
    dir: &std::path::Path,
    shutdown: &CancellationToken,
) {
    match m.publish(rec) {
        Ok(()) => {
            if m.is_successor() {
                monitor.set_status_file(Some(dir.join(crate::supervise::BACKENDS_FILE)));
                let _ = std::fs::remove_file(m.loading_status_file());
            }
            tracing::info!(
                generation = m.generation(),
                "this job is now the gateway's current generation"
            );
        }
        Err(e) => {
            tracing::warn!(error = %e, "not taking over: {e}; exiting");
            m.note_end(format!("did not take over: {e}"));
            shutdown.cancel();
        }
    }
}

fn read_key_file(path: &PathBuf) -> anyhow::Result<Secret> {
    let key = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read master key file {}", path.display()))?;
    let key = key.trim();
    if key.is_empty() {
        anyhow::bail!("master key file {} is empty", path.display());
    }
    Ok(Secret::new(key))
}

/// The node's short host name, as other nodes and ssh address it.
pub fn node_hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "localhost".into())
}

fn spawn_signal_listener(shutdown: CancellationToken) {
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            tracing::error!("cannot install signal handlers");
            return;
        };
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received"),
            _ = int.recv() => tracing::info!("SIGINT received"),
            _ = shutdown.cancelled() => return,
        }
        shutdown.cancel();
    });
}

/// The HTTP routes.
pub fn app(state: Arc<AppState>) -> axum::Router {
    let mut api = axum::Router::new()
        .route("/v1/chat/completions", post(chat_completions))
        .route("/chat/completions", post(chat_completions))
        .route("/v1/completions", post(completions))
        .route("/completions", post(completions))
        .route("/v1/embeddings", post(embeddings))
        .route("/embeddings", post(embeddings))
        .route("/v1/models", get(models))
        .route("/models", get(models));
    api = crate::apis::routes(api);
    if state.master_key.is_none() {
        api = api.route_layer(axum::middleware::from_fn(crate::access::local_only));
    }
    api.route("/health", get(health))
        .route("/health/liveness", get(liveness))
        .route("/health/readiness", get(readiness))
        .route("/metrics", get(metrics))
        .merge(crate::admin::routes())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
}

async fn chat_completions(
    State(s): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    proxy(
        s,
        Endpoint::ChatCompletions,
        "/v1/chat/completions",
        headers,
        body,
    )
    .await
}

async fn completions(State(s): State<Arc<AppState>>, headers: HeaderMap, body: Body) -> Response {
    proxy(s, Endpoint::Completions, "/v1/completions", headers, body).await
}

async fn embeddings(State(s): State<Arc<AppState>>, headers: HeaderMap, body: Body) -> Response {
    proxy(s, Endpoint::Embeddings, "/v1/embeddings", headers, body).await
}

/// The proxied endpoints' handlers, for a POST to `path` (as `app` routes them).
pub(crate) fn hot_route(method: &Method, path: &str) -> Option<(Endpoint, &'static str)> {
    if method != Method::POST {
        return None;
    }
    match path {
        "/v1/chat/completions" | "/chat/completions" => {
            Some((Endpoint::ChatCompletions, "/v1/chat/completions"))
        }
        "/v1/completions" | "/completions" => Some((Endpoint::Completions, "/v1/completions")),
        "/v1/embeddings" | "/embeddings" => Some((Endpoint::Embeddings, "/v1/embeddings")),
        _ => None,
    }
}

/// A request `hot_route` found, served as `app` would serve it (the keyless gateway's
/// local-only rule, then the handler) without going through axum's router: `conn` calls
/// this for the hot endpoints so that their per-request cost stays low (issue 13).
pub(crate) async fn serve_hot<B>(
    s: Arc<AppState>,
    endpoint: Endpoint,
    path: &'static str,
    req: axum::http::Request<B>,
) -> Response
where
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<axum::BoxError>,
{
    if s.master_key.is_none() {
        if let Err(refused) = crate::access::check_local_request(&req) {
            return refused;
        }
    }
    let (parts, body) = req.into_parts();
    proxy(s, endpoint, path, parts.headers, Body::new(body)).await
}

/// The request path shared by the proxied endpoints.
pub(crate) async fn proxy(
    s: Arc<AppState>,
    endpoint: Endpoint,
    path: &'static str,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let mut log = RequestLog::default();
    log.path = path;
    // Virtual keys: admitted after parsing, charged once the answer is known.
    let mut ticket: Option<crate::keys::Ticket> = None;
    let result = async {
        let caller = s.caller(&headers)?;
        let bytes = read_body(body, &headers, s.max_body).await?;
        let mut req = ClientRequest::parse_bounded(endpoint, bytes).await?;
        crate::apis::prepare(&mut req, &headers).await?;
        log.model = req.model.clone();
        log.stream = req.stream;
        if let Some(keys) = &s.keys {
            ticket = Some(keys.admit(&caller, &req)?);
        }
        if endpoint == Endpoint::CountTokens {
            // Counting costs no model: the ticket is closed at no charge.
            let resp = crate::apis::count_tokens(&s.router, &req, &mut log).await;
            if let Some(t) = ticket.take() {
                t.finish(crate::keys::enforce::Outcome {
                    deployment: log.deployment.clone(),
                    status: resp
                        .as_ref()
                        .map_or_else(|e| e.status.as_u16(), |r| r.status().as_u16()),
                    ..Default::default()
                });
            }
            return resp;
        }
        let pending = match s.cache.lookup(&req, &mut log).await? {
            crate::cache::Outcome::Hit(resp) => {
                return Ok(match ticket.take() {
                    Some(t) => crate::spend::meter(t, false, resp).await,
                    None => resp,
                })
            }
            crate::cache::Outcome::Continue(pending) => pending,
        };
        let client_usage = req.include_usage;
        let req = if ticket.is_some() {
            req.with_usage_requested()
        } else {
            req
        };
        let budget = req
            .options
            .timeout
            .map_or(s.request_timeout, |t| t.min(s.request_timeout));
        let deadline = crate::duration::deadline(std::time::Instant::now(), budget);
        // Boxed: the router's future is large, and `timeout` would copy it whole.
        let serving = Box::pin(s.router.serve(req, deadline, &mut log));
        let until = tokio::time::Instant::from_std(deadline);
        match tokio::time::timeout_at(until, serving).await {
            Ok(Ok(resp)) => {
                let resp = match ticket.take() {
                    Some(t) => crate::spend::meter(t, !client_usage, resp).await,
                    None => resp,
                };
                Ok(pending.finish(resp).await)
            }
            Ok(Err(e)) => Err(e),
            Err(_) => Err(ApiError::gateway_timeout(format!(
                "the request did not finish within its time limit of {budget:?} \
                 ([server] request_timeout, or the request's own timeout)"
            ))),
        }
    }
    .await;
    match result {
        Ok(resp) => resp,
        Err(e) => {
            log.status = e.status.as_u16();
            if let Some(t) = ticket.take() {
                t.finish(crate::keys::enforce::Outcome {
                    deployment: log.deployment.clone(),
                    status: log.status,
                    ..Default::default()
                });
            }
            let mut resp = e.into_response_for(endpoint.api());
            if log.attempts > 0 {
                let h = resp.headers_mut();
                h.insert(
                    crate::router::names::ATTEMPTS,
                    HeaderValue::from(log.attempts),
                );
                if let Ok(v) = HeaderValue::from_str(&log.deployment) {
                    h.insert(crate::router::names::DEPLOYMENT, v);
                }
            }
            resp
        }
    }
}

/// Reads the body up to `limit` bytes; 413 beyond it.
pub(crate) async fn read_body(
    body: Body,
    headers: &HeaderMap,
    limit: usize,
) -> Result<Bytes, ApiError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(ApiError::too_large(limit));
    }
    let e = match collect_capped(body, limit).await {
        Ok(Some(b)) => return Ok(b),
        Ok(None) => return Err(ApiError::too_large(limit)),
        Err(e) => e,
    };
    // The cause sits a few `source()`s down: axum and hyper wrap it.
    let mut causes = std::iter::successors(Some(&e as &dyn std::error::Error), |c| c.source());
    Err(
        match causes.find_map(|c| c.downcast_ref::<crate::conn::BodyStopped>()) {
            Some(why @ crate::conn::BodyStopped::Timeout(_)) => ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "invalid_request_error",
                why.to_string(),
            )
            .with_code("request_timeout"),
            Some(why) => ApiError::unavailable(why.to_string()),
            None => ApiError::bad_request(format!("could not read the request body: {e}")),
        },
    )
}

/// The body's bytes, or `None` when there are more than `limit`. A body that arrives in
/// one piece (the common case) is returned as it came, without a copy; `axum::body::to_bytes`
/// cost ~1.2k instructions a request more (issue 13).
async fn collect_capped(mut body: Body, limit: usize) -> Result<Option<Bytes>, axum::Error> {
    use http_body_util::BodyExt as _;
    let mut whole: Option<Bytes> = None;
    let mut more = bytes::BytesMut::new();
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame?.into_data() else {
            continue; // trailers
        };
        let so_far = whole.as_ref().map_or(0, Bytes::len) + more.len();
        if data.len() > limit.saturating_sub(so_far) {
            return Ok(None);
        }
        match whole.take() {
            None if more.is_empty() => whole = Some(data),
            first => {
                if let Some(first) = first {
                    more.extend_from_slice(&first);
                }
                more.extend_from_slice(&data);
            }
        }
    }
    Ok(Some(match whole {
        Some(b) => b,
        None => more.freeze(),
    }))
}

impl AppState {
    /// The master key, else a virtual key ([`crate::keys`]).
    fn caller(&self, headers: &HeaderMap) -> Result<crate::keys::Caller, ApiError> {
        match (self.authorize(headers), &self.keys) {
            (Ok(()), _) => Ok(crate::keys::Caller::Master),
            (Err(e), Some(keys)) => keys.authenticate(headers, e),
            (Err(e), None) => Err(e),
        }
    }

    /// Checks the master key, when one is set (see `access`).
    pub(crate) fn authorize(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        crate::access::check_key(self.master_key.as_ref(), headers)
    }
}

/// The model groups, readable by OpenAI's and Anthropic's SDKs alike (each entry carries
/// both APIs' fields, the list Anthropic's paging fields).
fn models_body(names: &[String]) -> Bytes {
    let data: Vec<serde_json::Value> = names
        .iter()
        .map(|n| {
            serde_json::json!({"id": n, "object": "model", "created": 0, "owned_by": "llmgw",
                "type": "model", "display_name": n, "created_at": "1970-01-01T00:00:00Z"})
        })
        .collect();
    let body = serde_json::json!({"object": "list", "data": data, "has_more": false,
        "first_id": names.first(), "last_id": names.last()});
    Bytes::from(serde_json::to_vec(&body).unwrap_or_default())
}

fn json_response(status: StatusCode, body: impl Into<Body>) -> Response {
    let mut r = Response::new(body.into());
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

async fn models(State(s): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    match (s.caller(&headers), &s.keys) {
        (Err(e), _) => e.into_response(),
        (Ok(caller @ crate::keys::Caller::Key(_)), Some(keys)) => {
            let names = s.router.model_names();
            let visible: Vec<String> = keys
                .visible_models(&caller, names)
                .into_iter()
                .cloned()
                .collect();
            json_response(StatusCode::OK, models_body(&visible))
        }
        (Ok(_), _) => json_response(StatusCode::OK, s.models_body.clone()),
    }
}

async fn metrics(State(s): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    if let Err(e) = s.authorize(&headers) {
        return e.into_response();
    }
    let mut extra = crate::cache::metrics_text() + &crate::renew::metrics_text();
    if let Some(keys) = &s.keys {
        extra.push_str(&keys.metrics_text());
    }
    let text = crate::metrics::render(
        &s.router,
        s.ready.load(Ordering::Relaxed),
        s.draining.load(Ordering::Relaxed),
        &extra,
    );
    let mut r = Response::new(Body::from(text));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    r
}

async fn liveness() -> Response {
    json_response(StatusCode::OK, r#"{"status":"alive"}"#)
}

async fn readiness(State(s): State<Arc<AppState>>) -> Response {
    if s.draining.load(Ordering::Relaxed) {
        json_response(StatusCode::SERVICE_UNAVAILABLE, r#"{"status":"draining"}"#)
    } else if !s.ready.load(Ordering::Relaxed) {
        json_response(StatusCode::SERVICE_UNAVAILABLE, r#"{"status":"starting"}"#)
    } else {
        json_response(StatusCode::OK, r#"{"status":"ready"}"#)
    }
}

async fn health(State(s): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    if let Err(e) = s.authorize(&headers) {
        return e.into_response();
    }
    let deployments: Vec<serde_json::Value> = s
        .router
        .deployments()
        .map(|d| deployment_health(d))
        .collect();
    // Per group: healthy when every deployment is, unhealthy when none is (nothing can
    // answer now), degraded in between; overall the same over the groups.
    let mut groups = serde_json::Map::new();
    let mut counts = [0usize; 3];
    for name in s.router.model_names() {
        let states = deployments.iter().filter(|d| d["model_group"] == **name);
        let (ok, all) = states.fold((0, 0), |(ok, all), d| {
            (ok + usize::from(d["state"] == "healthy"), all + 1)
        });
        let level = usize::from(ok < all) + usize::from(ok == 0 && all > 0);
        counts[level] += 1;
        let spill = s.router.spillover().find(|(g, ..)| g == name);
        groups.insert(
            name.clone(),
            serde_json::json!({"status": HEALTH[level], "healthy": ok, "deployments": all,
                "spillover": spill.map(|(_, cloud, fallback)| serde_json::json!({"cloud": cloud, "fallback": fallback}))}),
        );
    }
    let overall = if counts[1] + counts[2] == 0 {
        HEALTH[0]
    } else if counts[0] + counts[1] == 0 {
        HEALTH[2]
    } else {
        HEALTH[1]
    };
    let status = if s.draining.load(Ordering::Relaxed) {
        "draining"
    } else if s.ready.load(Ordering::Relaxed) {
        overall
    } else {
        "starting"
    };
    let body = serde_json::json!({"status": status, "health": overall, "groups": groups, "deployments": deployments, "backends": s.backends.snapshot()});
    json_response(
        StatusCode::OK,
        serde_json::to_vec(&body).unwrap_or_default(),
    )
}

/// `/health` levels, best first.
const HEALTH: [&str; 3] = ["healthy", "degraded", "unhealthy"];

/// One deployment's entry in `/health`.
fn deployment_health(d: &crate::router::Deployment) -> serde_json::Value {
    use crate::router::DeploymentState;
    let (state, until, reason) = match d.state() {
        DeploymentState::Healthy => ("healthy", None, None),
        DeploymentState::Cooling { until_ms, reason } => ("cooling", Some(until_ms), Some(reason)),
        DeploymentState::Unreachable => ("unreachable", None, None),
        DeploymentState::Unavailable => ("unavailable", None, None),
    };
    let now = crate::router::now_ms();
    serde_json::json!({
        "id": d.id,
        "model_group": d.group,
        "provider": d.kind.as_str(),
        "model": d.model,
        "api_base": d.api_base_shown(),
        "state": state,
        "cooling_until": until.map(|ms| crate::state::rfc3339(ms / 1000)),
        "cooling_seconds_left": until.map(|ms| ms.saturating_sub(now).div_ceil(1000)),
        "cooling_reason": reason,
        "in_flight": d.stats.in_flight.load(Ordering::Relaxed),
        "requests": d.stats.requests.load(Ordering::Relaxed),
        "failures": d.stats.failures.load(Ordering::Relaxed),
        "latency_ms": d.latency_us() as f64 / 1000.0,
        "local": d.load.is_local(),
        "queue": d.load.is_local().then(|| {
            let q = d.queue();
            serde_json::json!({"running": q.running, "waiting": q.waiting, "tokens": q.tokens, "polled": q.polled})
        }),
    })
}

async fn not_found(uri: axum::http::Uri) -> Response {
    ApiError::not_found(format!(
        "no route {}; the gateway serves /v1/chat/completions, /v1/completions, /v1/embeddings, /v1/messages, /v1/messages/count_tokens, /v1/responses, /v1/models and /health",
        uri.path()
    ))
    .into_response()
}

async fn method_not_allowed() -> Response {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "invalid_request_error",
        "method not allowed on this path",
    )
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body_of(pieces: &[&'static str]) -> Body {
        let frames: Vec<Result<Bytes, std::io::Error>> = pieces
            .iter()
            .map(|p| Ok(Bytes::from_static(p.as_bytes())))
            .collect();
        Body::from_stream(futures_util::stream::iter(frames))
    }

    #[tokio::test]
    async fn a_body_in_pieces_is_joined_in_order_and_capped_at_its_limit() {
        let got = collect_capped(body_of(&["{\"a\":", "1,\"b\"", ":2}"]), 100).await;
        assert_eq!(got.unwrap().unwrap(), "{\"a\":1,\"b\":2}");
        // One piece comes back as it is.
        let one = collect_capped(body_of(&["{}"]), 2).await;
        assert_eq!(one.unwrap().unwrap(), "{}");
        // Exactly at the limit, and one byte over it.
        let at = collect_capped(body_of(&["12345", "67890"]), 10).await;
        assert_eq!(at.unwrap().unwrap(), "1234567890");
        let over = collect_capped(body_of(&["12345", "678901"]), 10).await;
        assert_eq!(over.unwrap(), None);
        let empty = collect_capped(body_of(&[]), 10).await;
        assert_eq!(empty.unwrap().unwrap(), "");
    }
}
