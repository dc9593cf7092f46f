//! Model groups and their deployments, and the execution of one client request against
//! them: pick a deployment, send, and turn the upstream response into the client's.
//!
//! A model group is every `[[models]]` entry with the same `name`; each entry is a
//! deployment. The router owns the one shared, pooled HTTP client.

use crate::config::{ErrorClass, LoadedConfig, ProviderKind, Secret};
use crate::error::ApiError;
use crate::providers::{self, Provider, StreamTranslator, UpstreamError};
use crate::request::ClientRequest;
use axum::body::Body;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::Response;
use bytes::{Bytes, BytesMut};
use futures_util::Stream;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// One upstream deployment of a model group.
pub struct Deployment {
    /// Position of its `[[models]]` entry in the config.
    pub index: usize,
    /// Unique id: configured, or `<name>-<n>` (1-based within the group).
    pub id: String,
    pub group: String,
    pub kind: ProviderKind,
    /// The upstream's own model id.
    pub model: String,
    /// Base URL without a trailing slash.
    pub api_base: String,
    pub api_key: Option<Secret>,
    pub api_version: Option<String>,
    pub timeout: Duration,
    pub weight: f64,
    pub max_tokens: Option<u64>,
    pub drop_params: bool,
    pub provider: Arc<dyn Provider>,
    pub stats: DeploymentStats,
    /// False while a supervised local backend is loading, restarting or has failed:
    /// the router sends it nothing.
    pub available: std::sync::atomic::AtomicBool,
}

/// Counters kept per deployment, lock-free.
#[derive(Default)]
pub struct DeploymentStats {
    pub in_flight: AtomicU64,
    pub requests: AtomicU64,
    pub failures: AtomicU64,
}

/// All model groups.
pub struct Router {
    groups: HashMap<String, Vec<Arc<Deployment>>>,
    /// Group names in config order, for `/v1/models` and error messages.
    names: Vec<String>,
    client: reqwest::Client,
}

/// How a request was served, for response headers and the request log.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    pub deployment: String,
    pub attempts: u32,
    pub fallback: Option<String>,
}

impl Router {
    /// Builds the groups from a loaded config. `api_bases` overrides a deployment's base
    /// URL by index (used for backends the gateway launches on a port it picked).
    pub fn new(cfg: &LoadedConfig, api_bases: &HashMap<usize, String>) -> Result<Self, String> {
        let mut groups: HashMap<String, Vec<Arc<Deployment>>> = HashMap::new();
        let mut names = Vec::new();
        for (i, m) in cfg.config.models.iter().enumerate() {
            let name = m.name.get_ref().clone();
            let provider = providers::for_kind(m.provider);
            if matches!(m.provider, ProviderKind::Anthropic | ProviderKind::Gemini) {
                return Err(format!(
                    "model {name:?}: provider {} is not supported by this build yet",
                    m.provider.as_str()
                ));
            }
            let api_base = api_bases
                .get(&i)
                .cloned()
                .or_else(|| m.api_base.as_ref().map(|b| b.get_ref().clone()))
                .or_else(|| default_base(m.provider).map(str::to_string))
                .ok_or_else(|| format!("model {name:?} has no api_base"))?;
            let group = groups.entry(name.clone()).or_default();
            if group.is_empty() {
                names.push(name.clone());
            }
            let id =
                m.id.clone()
                    .unwrap_or_else(|| format!("{}-{}", name, group.len() + 1));
            group.push(Arc::new(Deployment {
                index: i,
                id,
                group: name.clone(),
                kind: m.provider,
                model: m.model.clone().unwrap_or_else(|| name.clone()),
                api_base: api_base.trim_end_matches('/').to_string(),
                api_key: cfg.model_keys.get(i).cloned().flatten(),
                api_version: m.api_version.clone(),
                timeout: m.timeout.unwrap_or(cfg.config.router.timeout).0,
                weight: m.weight.unwrap_or(1.0),
                max_tokens: m.max_tokens,
                drop_params: m.drop_params,
                provider,
                stats: DeploymentStats::default(),
                available: std::sync::atomic::AtomicBool::new(true),
            }));
        }
        // TLS for cloud providers uses rustls with the ring backend (no C build step).
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(1024)
            .pool_idle_timeout(Duration::from_secs(90))
            .tcp_nodelay(true)
            .connect_timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
        Ok(Router {
            groups,
            names,
            client,
        })
    }

    /// The deployment made from `[[models]]` entry `index`.
    pub fn deployment_by_index(&self, index: usize) -> Option<&Arc<Deployment>> {
        self.deployments().find(|d| d.index == index)
    }

    /// Model group names in config order.
    pub fn model_names(&self) -> &[String] {
        &self.names
    }

    /// Every deployment, grouped in config order.
    pub fn deployments(&self) -> impl Iterator<Item = &Arc<Deployment>> {
        self.names.iter().flat_map(|n| self.groups[n].iter())
    }

    fn group(&self, model: &str) -> Result<&[Arc<Deployment>], ApiError> {
        self.groups.get(model).map(Vec::as_slice).ok_or_else(|| {
            ApiError::not_found(format!(
                "model {model:?} is not served by this gateway; available models: {}",
                self.names.join(", ")
            ))
            .with_param("model")
            .with_code("model_not_found")
        })
    }

    /// Serves one client request: pick a deployment, send, build the client response.
    /// `log` is filled in; a streamed response takes it over and writes it at the end.
    pub async fn serve(
        &self,
        req: ClientRequest,
        log: &mut RequestLog,
    ) -> Result<Response, ApiError> {
        let group = self.group(&req.model)?;
        let dep = pick_weighted(group);
        log.deployment = dep.id.clone();
        log.attempts = 1;
        match self.attempt(dep, &req, log).await {
            Ok(resp) => Ok(resp),
            Err(e) => {
                dep.stats.failures.fetch_add(1, Ordering::Relaxed);
                log.status = e.error.status.as_u16();
                Ok(error_response(e))
            }
        }
    }

    /// One attempt against one deployment.
    async fn attempt(
        &self,
        dep: &Arc<Deployment>,
        req: &ClientRequest,
        log: &mut RequestLog,
    ) -> Result<Response, UpstreamError> {
        dep.stats.requests.fetch_add(1, Ordering::Relaxed);
        let guard = InFlight::new(dep.clone());
        let rb = dep
            .provider
            .build(&self.client, dep, req)
            .map_err(|e| UpstreamError::new(ErrorClass::BadRequest, e))?;
        let sent = Instant::now();
        let overhead_before = sent.duration_since(log.start);
        let resp = match tokio::time::timeout(dep.timeout, rb.send()).await {
            Err(_) => return Err(timeout_error(dep)),
            Ok(Err(e)) => return Err(send_error(dep, &e)),
            Ok(Ok(r)) => r,
        };
        let status = resp.status();
        if !status.is_success() {
            let headers = resp.headers().clone();
            let body = match tokio::time::timeout(dep.timeout, resp.bytes()).await {
                Ok(Ok(b)) => b,
                _ => Bytes::new(),
            };
            return Err(dep.provider.error(status, &headers, &body));
        }
        let headers_at = Instant::now();
        log.ttfb = Some(headers_at.duration_since(log.start));
        let mut builder = Response::builder().status(StatusCode::OK);
        let h = builder.headers_mut().expect("fresh builder");
        h.insert("x-llmgw-deployment", header_value(&dep.id));
        h.insert("x-llmgw-attempts", HeaderValue::from(log.attempts));
        let resp = if req.stream {
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/event-stream"),
            );
            h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
            let translator =
                (!dep.provider.passthrough()).then(|| dep.provider.stream_translator(dep, req));
            let overhead = overhead_before + headers_at.elapsed();
            h.insert("x-llmgw-overhead-ms", overhead_header(overhead));
            log.status = 200;
            let stream = UpstreamStream {
                inner: Box::pin(resp.bytes_stream()),
                translator,
                idle_timeout: dep.timeout,
                idle: Box::pin(tokio::time::sleep(dep.timeout)),
                done: false,
                _guard: guard,
                log: Some(log.take()),
            };
            builder.body(Body::from_stream(stream))
        } else {
            let body = match tokio::time::timeout(dep.timeout, resp.bytes()).await {
                Err(_) => return Err(timeout_error(dep)),
                Ok(Err(e)) => return Err(send_error(dep, &e)),
                Ok(Ok(b)) => b,
            };
            let translated_at = Instant::now();
            let body = if dep.provider.passthrough() {
                body
            } else {
                dep.provider
                    .translate_body(dep, req, body)
                    .map_err(|e| UpstreamError::new(ErrorClass::InternalServer, e))?
            };
            let overhead = overhead_before + translated_at.elapsed();
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            h.insert("x-llmgw-overhead-ms", overhead_header(overhead));
            log.status = 200;
            drop(guard);
            builder.body(Body::from(body))
        };
        Ok(resp.unwrap_or_else(|_| {
            error_response(UpstreamError::new(
                ErrorClass::Default,
                ApiError::internal("bad response"),
            ))
        }))
    }
}

fn default_base(kind: ProviderKind) -> Option<&'static str> {
    match kind {
        ProviderKind::Openai => Some("https://api.openai.com/v1"),
        ProviderKind::Anthropic => Some("https://api.anthropic.com/v1"),
        ProviderKind::Gemini => Some("https://generativelanguage.googleapis.com/v1beta"),
        _ => None,
    }
}

/// Weighted random choice (uniform when all weights are equal).
fn pick_weighted(group: &[Arc<Deployment>]) -> &Arc<Deployment> {
    if group.len() == 1 {
        return &group[0];
    }
    let total: f64 = group.iter().map(|d| d.weight).sum();
    if total <= 0.0 {
        return &group[fastrand::usize(..group.len())];
    }
    let mut x = fastrand::f64() * total;
    for d in group {
        if x < d.weight {
            return d;
        }
        x -= d.weight;
    }
    &group[group.len() - 1]
}

fn header_value(s: &str) -> HeaderValue {
    HeaderValue::from_str(s).unwrap_or_else(|_| HeaderValue::from_static("invalid"))
}

fn overhead_header(d: Duration) -> HeaderValue {
    header_value(&format!("{:.3}", d.as_secs_f64() * 1000.0))
}

fn timeout_error(dep: &Deployment) -> UpstreamError {
    UpstreamError::new(
        ErrorClass::Timeout,
        ApiError::gateway_timeout(format!(
            "deployment {} did not answer within {:?}",
            dep.id, dep.timeout
        )),
    )
}

fn send_error(dep: &Deployment, e: &reqwest::Error) -> UpstreamError {
    if e.is_timeout() {
        return timeout_error(dep);
    }
    // reqwest's Display includes the URL; bases never carry keys, but say only what helps.
    let why = if e.is_connect() {
        "connection refused or unreachable"
    } else if e.is_body() || e.is_decode() {
        "the response body broke off"
    } else {
        "the request failed"
    };
    UpstreamError::new(
        ErrorClass::Connection,
        ApiError::bad_gateway(format!("deployment {} ({}): {why}", dep.id, dep.api_base)),
    )
}

/// The client's response for a failed request: the upstream's own OpenAI-shaped body
/// when it had one, else ours.
pub fn error_response(e: UpstreamError) -> Response {
    use axum::response::IntoResponse;
    match e.raw_body {
        Some(body) => {
            let mut r = (e.error.status, body).into_response();
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            if let Some(ra) = e.retry_after {
                r.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(ra.as_secs()));
            }
            r
        }
        None => {
            let mut err = e.error;
            if err.retry_after.is_none() {
                err.retry_after = e.retry_after.map(|d| d.as_secs());
            }
            err.into_response()
        }
    }
}

/// Counts a request as in flight on its deployment until dropped.
struct InFlight(Arc<Deployment>);

impl InFlight {
    fn new(dep: Arc<Deployment>) -> Self {
        dep.stats.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(dep)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.stats.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The one log line per request, written when the request is finished (for streams:
/// when the last byte went out or the client went away).
#[derive(Debug)]
pub struct RequestLog {
    pub start: Instant,
    pub method: &'static str,
    pub path: &'static str,
    pub model: String,
    pub deployment: String,
    pub status: u16,
    pub attempts: u32,
    pub stream: bool,
    pub ttfb: Option<Duration>,
    /// False when a stream ended early (client gone or upstream broke).
    pub complete: bool,
}

impl Default for RequestLog {
    fn default() -> Self {
        RequestLog {
            start: Instant::now(),
            method: "POST",
            path: "",
            model: String::new(),
            deployment: String::new(),
            status: 0,
            attempts: 0,
            stream: false,
            ttfb: None,
            complete: true,
        }
    }
}

impl RequestLog {
    /// Moves the record out, leaving one that writes nothing.
    pub fn take(&mut self) -> RequestLog {
        std::mem::take(self)
    }
}

impl Drop for RequestLog {
    fn drop(&mut self) {
        if self.path.is_empty() {
            return;
        }
        let latency_ms = self.start.elapsed().as_secs_f64() * 1000.0;
        let ttfb_ms = self.ttfb.map(|t| t.as_secs_f64() * 1000.0);
        tracing::info!(
            target: "llmgw::request",
            method = self.method,
            path = self.path,
            model = %self.model,
            deployment = %self.deployment,
            status = self.status,
            attempts = self.attempts,
            stream = self.stream,
            complete = self.complete,
            latency_ms = format_args!("{latency_ms:.2}"),
            ttfb_ms = ttfb_ms.map(|t| format!("{t:.2}")),
            "request"
        );
    }
}

type ByteStream = Pin<Box<dyn Stream<Item = reqwest::Result<Bytes>> + Send>>;

/// Streams the upstream body to the client as it arrives. An upstream that goes quiet
/// for longer than the deployment's timeout, or breaks off, ends the stream with an
/// OpenAI error event instead of a hang or a silent truncation.
struct UpstreamStream {
    inner: ByteStream,
    translator: Option<Box<dyn StreamTranslator>>,
    idle_timeout: Duration,
    idle: Pin<Box<tokio::time::Sleep>>,
    done: bool,
    _guard: InFlight,
    log: Option<RequestLog>,
}

impl UpstreamStream {
    fn fail(&mut self, err: ApiError) -> Poll<Option<Result<Bytes, std::io::Error>>> {
        self.done = true;
        if let Some(log) = self.log.as_mut() {
            log.complete = false;
        }
        Poll::Ready(Some(Ok(err.sse_event())))
    }
}

impl Stream for UpstreamStream {
    type Item = Result<Bytes, std::io::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        loop {
            match this.inner.as_mut().poll_next(cx) {
                Poll::Ready(Some(Ok(chunk))) => {
                    let deadline = tokio::time::Instant::now() + this.idle_timeout;
                    this.idle.as_mut().reset(deadline);
                    let Some(tr) = this.translator.as_mut() else {
                        return Poll::Ready(Some(Ok(chunk)));
                    };
                    let mut out = BytesMut::new();
                    if let Err(e) = tr.feed(&chunk, &mut out) {
                        return this.fail(e.error);
                    }
                    if !out.is_empty() {
                        return Poll::Ready(Some(Ok(out.freeze())));
                    }
                }
                Poll::Ready(Some(Err(_))) => {
                    return this.fail(ApiError::bad_gateway(
                        "the upstream stream broke off before it finished",
                    ));
                }
                Poll::Ready(None) => {
                    this.done = true;
                    if let Some(tr) = this.translator.as_mut() {
                        let mut out = BytesMut::new();
                        if let Err(e) = tr.finish(&mut out) {
                            return this.fail(e.error);
                        }
                        if !out.is_empty() {
                            return Poll::Ready(Some(Ok(out.freeze())));
                        }
                    }
                    return Poll::Ready(None);
                }
                Poll::Pending => {
                    if this.idle.as_mut().poll(cx).is_ready() {
                        return this.fail(ApiError::gateway_timeout(format!(
                            "the upstream sent nothing for {:?}; stream ended",
                            this.idle_timeout
                        )));
                    }
                    return Poll::Pending;
                }
            }
        }
    }
}

impl Drop for UpstreamStream {
    fn drop(&mut self) {
        if let Some(log) = self.log.as_mut() {
            if !self.done {
                // The client went away before the end: upstream is cancelled by this drop.
                log.complete = false;
            }
        }
    }
}
