//! The renewal relay: once this job has handed over to its successor, every new request
//! is forwarded there (the chain side, what a handover is and when, lives in
//! `llmgw_cluster::renew`). Installed only for SLURM jobs, so a gateway outside SLURM
//! pays nothing. It counts a request *before* looking at the target and the handover sets
//! the target *before* waiting for the count, so no request is lost between the two.
//! Until the handover is committed this job keeps its backends, and a request whose
//! connection the successor refuses (nothing reached it) is served here instead.

use arc_swap::ArcSwapOption;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use llmgw_cluster::renew::{counters, Forwarding, Probe};
use llmgw_core::state;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

/// Attempts to reach the successor for one request (only failures to connect are retried).
const FORWARD_ATTEMPTS: u32 = 3;
/// A probe of the successor's readiness waits at most this long.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// Where requests go once this job has handed over.
struct Target {
    base: String,
    job_id: HeaderValue,
}

/// Counts this job's own requests and the forwarded ones, and forwards once a target is set.
pub struct Relay {
    target: ArcSwapOption<Target>,
    /// Serve here what the successor refuses (until the handover is committed).
    fallback: AtomicBool,
    /// Forwarded requests whose connection the successor refused.
    refused: AtomicU64,
    local: AtomicU64,
    forwarding: AtomicU64,
    forwarded: AtomicU64,
    /// Unix ms of the last request that reached this job after the handover.
    last_forward_ms: AtomicU64,
    client: reqwest::Client,
    max_body: usize,
}

impl Relay {
    pub fn new(max_body: usize) -> anyhow::Result<Arc<Relay>> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::builder()
            .no_proxy()
            .connect_timeout(Duration::from_secs(5))
            .tcp_nodelay(true)
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        Ok(Arc::new(Relay {
            target: ArcSwapOption::empty(),
            fallback: AtomicBool::new(false),
            refused: AtomicU64::new(0),
            local: AtomicU64::new(0),
            forwarding: AtomicU64::new(0),
            forwarded: AtomicU64::new(0),
            last_forward_ms: AtomicU64::new(0),
            client,
            max_body,
        }))
    }

    pub fn forward_to(&self, base: String, job_id: &str) {
        let job_id = HeaderValue::from_str(job_id).unwrap_or(HeaderValue::from_static("?"));
        self.last_forward_ms
            .store(state::now_unix_ms(), Ordering::SeqCst);
        self.target.store(Some(Arc::new(Target { base, job_id })));
    }

    /// This job's own requests still running (response bodies not yet finished).
    pub fn local_in_flight(&self) -> u64 {
        self.local.load(Ordering::SeqCst)
    }

    /// True once requests go to a successor.
    pub fn handed_over(&self) -> bool {
        self.target.load().is_some()
    }

    /// Forwards `req` to the successor. `Err` with the request (body read) and its count
    /// when the successor refused the connection and this job may serve it instead.
    async fn forward(
        self: Arc<Self>,
        t: Arc<Target>,
        req: Request,
    ) -> Result<Response, (Request, InFlight)> {
        let guard = InFlight::new(self.clone(), Counter::Forwarding);
        self.forwarded.fetch_add(1, Ordering::Relaxed);
        counters::FORWARDED.fetch_add(1, Ordering::Relaxed);
        self.last_forward_ms
            .store(state::now_unix_ms(), Ordering::Relaxed);
        let (parts, body) = req.into_parts();
        let body = match crate::body::read_body(body, &parts.headers, self.max_body).await {
            Ok(b) => b,
            Err(e) => return Ok(e.into_response()),
        };
        let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        let mut t = t;
        let mut url = format!("{}{path}", t.base);
        let headers = end_to_end(&parts.headers);
        let mut attempt = 0;
        let resp = loop {
            attempt += 1;
            let sent = self
                .client
                .request(parts.method.clone(), &url)
                .headers(headers.clone())
                .body(body.clone())
                .send()
                .await;
            match sent {
                Ok(r) => break r,
                Err(e) if e.is_connect() => {
                    self.refused.fetch_add(1, Ordering::SeqCst);
                    // Nothing reached the successor: serve it here while this job still
                    // has its backends (during the grace, or because the endpoint was
                    // taken back since this request looked at the target), else try
                    // again, at the newest target.
                    let now = self.target.load_full();
                    if self.fallback.load(Ordering::SeqCst) || now.is_none() {
                        let local = InFlight::new(self.clone(), Counter::Local);
                        tracing::warn!(error = %e, successor = %t.base, "the successor refused a forwarded request; serving it here");
                        return Err((Request::from_parts(parts, Body::from(body)), local));
                    }
                    if attempt >= FORWARD_ATTEMPTS {
                        return Ok(self.unreachable(&t, &e));
                    }
                    if let Some(now) = now.filter(|now| !Arc::ptr_eq(now, &t)) {
                        url = format!("{}{path}", now.base);
                        t = now;
                    }
                    tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt))).await;
                }
                Err(e) => return Ok(self.unreachable(&t, &e)),
            }
        };
        let mut out = Response::builder().status(resp.status());
        if let Some(h) = out.headers_mut() {
            *h = end_to_end(resp.headers());
            h.insert("x-llmgw-forwarded-to", t.job_id.clone());
        }
        let body = Body::from_stream(resp.bytes_stream());
        let mut r = out
            .body(Body::new(Guarded {
                inner: body,
                _guard: guard,
            }))
            .unwrap_or_else(|_| Response::new(Body::empty()));
        close_after(&mut r);
        Ok(r)
    }

    fn unreachable(&self, t: &Target, e: &reqwest::Error) -> Response {
        counters::FORWARD_ERRORS.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(error = %e, successor = %t.base, "cannot forward a request to the successor");
        let mut r = llmgw_core::error::ApiError::bad_gateway(
            "this gateway job has handed over to its successor, which cannot be reached; \
             retry, or use the address in `llmgw status` / `llmgw connect`",
        )
        .into_response();
        close_after(&mut r);
        r
    }

    /// `GET /health/readiness` of the successor, bounded by [`PROBE_TIMEOUT`].
    async fn probe_target(&self) -> Probe {
        let Some(t) = self.target.load_full() else {
            return Probe::Silent;
        };
        let sent = self
            .client
            .get(format!("{}/health/readiness", t.base))
            .timeout(PROBE_TIMEOUT)
            .send()
            .await;
        match sent {
            Ok(r) if r.status().is_success() => Probe::Ready,
            Ok(_) => Probe::NotReady,
            Err(e) if e.is_connect() && !e.is_timeout() => Probe::Refused,
            Err(_) => Probe::Silent,
        }
    }
}

impl Forwarding for Relay {
    fn forward_to(&self, base: String, job_id: &str) {
        Relay::forward_to(self, base, job_id)
    }
    fn take_back(&self) {
        self.target.store(None);
    }
    fn set_fallback(&self, on: bool) {
        self.fallback.store(on, Ordering::SeqCst);
    }
    fn probe(&self) -> Pin<Box<dyn Future<Output = Probe> + Send + '_>> {
        Box::pin(self.probe_target())
    }
    fn refused(&self) -> u64 {
        self.refused.load(Ordering::SeqCst)
    }
    fn local_in_flight(&self) -> u64 {
        Relay::local_in_flight(self)
    }
    fn forwarding(&self) -> u64 {
        self.forwarding.load(Ordering::SeqCst)
    }
    fn forwarded(&self) -> u64 {
        self.forwarded.load(Ordering::Relaxed)
    }
    fn last_forward_ms(&self) -> u64 {
        self.last_forward_ms.load(Ordering::Relaxed)
    }
}

/// The middleware: this job's own requests are counted until their bodies finish; after
/// the handover every request but `/health*` and `/metrics` (which describe this job) is
/// forwarded, and every response closes its connection, so a client's next request opens
/// a new one (which `llmgw connect` sends to the successor).
pub async fn relay(State(relay): State<Arc<Relay>>, req: Request, next: Next) -> Response {
    let path = req.uri().path();
    if path.starts_with("/health") || path == "/metrics" {
        return next.run(req).await;
    }
    // Count first, then look: a handover sets the target, then waits for the count to
    // reach zero, so no request slips between the two.
    let mut guard = InFlight::new(relay.clone(), Counter::Local);
    let mut req = req;
    if let Some(t) = relay.target.load_full() {
        drop(guard);
        match relay.clone().forward(t, req).await {
            Ok(resp) => return resp,
            // The successor refused it and this job still has its backends.
            Err((back, local)) => (req, guard) = (back, local),
        }
    }
    let mut resp = next.run(req).await;
    if relay.handed_over() {
        close_after(&mut resp);
    }
    resp.map(|inner| {
        Body::new(Guarded {
            inner,
            _guard: guard,
        })
    })
}

fn close_after(r: &mut Response) {
    r.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
}

/// Headers without the hop-by-hop ones (RFC 9110 §7.6.1) and `host`.
fn end_to_end(h: &HeaderMap) -> HeaderMap {
    const HOP: [&str; 9] = [
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    ];
    let mut out = HeaderMap::with_capacity(h.len());
    for (k, v) in h {
        if k != header::HOST && !HOP.contains(&k.as_str()) {
            out.append(HeaderName::clone(k), v.clone());
        }
    }
    out
}

#[derive(Clone, Copy)]
enum Counter {
    Local,
    Forwarding,
}

/// One request in flight; counted down when dropped (with its response body).
struct InFlight {
    relay: Arc<Relay>,
    counter: Counter,
}

impl InFlight {
    fn new(relay: Arc<Relay>, counter: Counter) -> Self {
        relay.counter(counter).fetch_add(1, Ordering::SeqCst);
        InFlight { relay, counter }
    }
}

impl Relay {
    fn counter(&self, c: Counter) -> &AtomicU64 {
        match c {
            Counter::Local => &self.local,
            Counter::Forwarding => &self.forwarding,
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.relay
            .counter(self.counter)
            .fetch_sub(1, Ordering::SeqCst);
    }
}

/// A response body that holds its request's [`InFlight`] until it is finished or dropped.
struct Guarded {
    inner: Body,
    _guard: InFlight,
}

impl http_body::Body for Guarded {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

// ---------------------------------------------------------------------------------------
// Member: this job's place in the chain

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::get;

    async fn serve(app: axum::Router) -> String {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(l, app).await });
        format!("http://{addr}")
    }

    #[test]
    fn hop_by_hop_headers_are_not_forwarded() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("keep-alive"));
        h.insert(header::HOST, HeaderValue::from_static("old:4000"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer k"));
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        let out = end_to_end(&h);
        assert_eq!(out.len(), 2);
        assert!(out.contains_key(header::AUTHORIZATION) && out.contains_key(header::CONTENT_TYPE));
    }

    #[tokio::test]
    async fn requests_are_counted_then_forwarded_once_handed_over() {
        let successor = serve(axum::Router::new().route(
            "/v1/models",
            get(|headers: HeaderMap| async move {
                format!(
                    "successor saw {}",
                    headers
                        .get(header::AUTHORIZATION)
                        .unwrap()
                        .to_str()
                        .unwrap()
                )
            }),
        ))
        .await;
        let relay = Relay::new(1024).unwrap();
        // A slow local stream: counted until its body is finished.
        let app = axum::Router::new()
            .route("/v1/models", get(|| async { "local" }))
            .route(
                "/slow",
                get(|| async {
                    let chunks = futures_util::stream::iter(0..3).then(|i| async move {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        Ok::<_, std::io::Error>(Bytes::from(format!("{i}")))
                    });
                    Body::from_stream(chunks)
                }),
            )
            .route("/health", get(|| async { "own health" }))
            .layer(axum::middleware::from_fn_with_state(
                relay.clone(),
                relay_fn,
            ));
        let old = serve(app).await;
        let c = reqwest::Client::builder().no_proxy().build().unwrap();
        let get = |path: &str| c.get(format!("{old}{path}")).bearer_auth("k").send();

        assert_eq!(
            get("/v1/models").await.unwrap().text().await.unwrap(),
            "local"
        );
        let slow = get("/slow").await.unwrap();
        assert_eq!(
            relay.local_in_flight(),
            1,
            "a stream is in flight until its body ends"
        );
        relay.forward_to(successor, "42");
        let r = get("/v1/models").await.unwrap();
        assert_eq!(r.headers()["x-llmgw-forwarded-to"], "42");
        assert_eq!(r.headers()[header::CONNECTION], "close");
        assert_eq!(r.text().await.unwrap(), "successor saw Bearer k");
        assert_eq!(
            get("/health").await.unwrap().text().await.unwrap(),
            "own health"
        );
        assert_eq!(
            slow.text().await.unwrap(),
            "012",
            "the local stream finishes here"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(relay.local_in_flight(), 0);
        assert_eq!(relay.forwarded.load(Ordering::Relaxed), 1);
        assert_eq!(relay.forwarding.load(Ordering::SeqCst), 0);
    }

    // Issue 30: until the handover is committed, a request the successor refuses (its
    // gateway died) is served here instead of failing with 502; the probe tells a dead
    // successor (refused) from one that serves.
    #[tokio::test]
    async fn a_refused_forward_is_served_here_until_the_handover_commits() {
        let relay = Relay::new(1024).unwrap();
        let app = axum::Router::new()
            .route("/v1/models", get(|| async { "local" }))
            .layer(axum::middleware::from_fn_with_state(
                relay.clone(),
                relay_fn,
            ));
        let old = serve(app).await;
        let dead = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            format!("http://{}", l.local_addr().unwrap())
        };
        let c = reqwest::Client::builder().no_proxy().build().unwrap();
        relay.forward_to(dead.clone(), "43");
        relay.set_fallback(true);
        assert_eq!(relay.probe().await, Probe::Refused);
        let r = c.get(format!("{old}/v1/models")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()[header::CONNECTION], "close");
        assert_eq!(r.text().await.unwrap(), "local");
        assert_eq!(relay.refused(), 1);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(relay.local_in_flight(), 0);
        assert_eq!(relay.forwarding.load(Ordering::SeqCst), 0);
        // Committed: no backends here any more, so the client hears of it.
        relay.set_fallback(false);
        let r = c.get(format!("{old}/v1/models")).send().await.unwrap();
        assert_eq!(r.status(), 502);
        // Taken back: served here again, and the connection stays open.
        Forwarding::take_back(&*relay);
        let r = c.get(format!("{old}/v1/models")).send().await.unwrap();
        assert!(r.headers().get(header::CONNECTION).is_none());
        assert_eq!(r.text().await.unwrap(), "local");
        assert_eq!(relay.probe().await, Probe::Silent);
        let successor =
            serve(axum::Router::new().route("/health/readiness", get(|| async { "ready" }))).await;
        relay.forward_to(successor, "44");
        assert_eq!(relay.probe().await, Probe::Ready);
    }

    // Issue 30, the CI failure: a request that looked at the target just before the old
    // job took the endpoint back (successor dead) was refused by the dead successor after
    // the take-back had switched the fallback off, retried the dead address and got a
    // 502. Forced ordering: the first attempt is refused while no fallback is allowed,
    // the endpoint is taken back during the pause before the second attempt, and the
    // request must then be served here.
    #[tokio::test]
    async fn a_request_refused_across_a_take_back_is_served_here() {
        let relay = Relay::new(1024).unwrap();
        let app = axum::Router::new()
            .route("/v1/models", get(|| async { "local" }))
            .layer(axum::middleware::from_fn_with_state(
                relay.clone(),
                relay_fn,
            ));
        let old = serve(app).await;
        let dead = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            format!("http://{}", l.local_addr().unwrap())
        };
        relay.forward_to(dead, "45");
        relay.set_fallback(false);
        let c = reqwest::Client::builder().no_proxy().build().unwrap();
        let sent = tokio::spawn(c.get(format!("{old}/v1/models")).send());
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while relay.refused() == 0 {
            assert!(tokio::time::Instant::now() < deadline, "never forwarded");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        Forwarding::take_back(&*relay);
        let r = sent.await.unwrap().unwrap();
        assert_eq!(r.status(), 200, "{:?}", r.text().await);
        assert_eq!(r.text().await.unwrap(), "local");
        assert_eq!(relay.refused(), 2, "one retry, then served here");
    }

    // A retry after a refused connection goes to the newest successor (a `restart`
    // replaced the one that was refused).
    #[tokio::test]
    async fn a_retry_follows_a_newer_successor() {
        let relay = Relay::new(1024).unwrap();
        let app = axum::Router::new().layer(axum::middleware::from_fn_with_state(
            relay.clone(),
            relay_fn,
        ));
        let old = serve(app).await;
        let dead = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            format!("http://{}", l.local_addr().unwrap())
        };
        let newer = serve(axum::Router::new().route("/v1/models", get(|| async { "newer" }))).await;
        relay.forward_to(dead, "46");
        let c = reqwest::Client::builder().no_proxy().build().unwrap();
        let sent = tokio::spawn(c.get(format!("{old}/v1/models")).send());
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while relay.refused() == 0 {
            assert!(tokio::time::Instant::now() < deadline, "never forwarded");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        relay.forward_to(newer, "47");
        let r = sent.await.unwrap().unwrap();
        assert_eq!(r.headers()["x-llmgw-forwarded-to"], "47");
        assert_eq!(r.text().await.unwrap(), "newer");
    }

    use futures_util::StreamExt as _;
    use relay as relay_fn;
}
