//! The one log line per request ([`RequestLog`]), written when the request is really
//! over, and llmgw's response headers.

use super::*;

/// The one log line per request, written when the request is finished (for streams:
/// when the last byte went out or the client went away).
#[derive(Debug)]
pub struct RequestLog {
    pub start: Instant,
    pub path: &'static str,
    pub model: String,
    pub deployment: String,
    pub fallback: Option<String>,
    pub status: u16,
    pub attempts: u32,
    pub stream: bool,
    pub ttfb: Option<Duration>,
    /// Time spent waiting on upstreams (to compute the gateway's own overhead).
    pub upstream: Duration,
    /// Time spent in the gateway's queue for a place at a full group (`fair.rs`).
    pub queue: Duration,
    /// False when a stream ended early (client gone or upstream broke).
    pub complete: bool,
    pub client_gone: bool,
    /// Where its duration and time to first token are counted (`histograms`): the
    /// deployment's series once one is picked, else set by the gateway.
    pub hist: Option<Arc<crate::histograms::Series>>,
    /// Set by the gateway for a traced request: the router adds a span per attempt and
    /// sends each upstream a `traceparent` (`None`: not traced, nothing recorded).
    pub trace: Option<Arc<crate::trace::TraceLink>>,
}

impl Default for RequestLog {
    fn default() -> Self {
        RequestLog {
            start: Instant::now(),
            path: "",
            model: String::new(),
            deployment: String::new(),
            fallback: None,
            status: 0,
            attempts: 0,
            stream: false,
            ttfb: None,
            upstream: Duration::ZERO,
            queue: Duration::ZERO,
            complete: true,
            client_gone: false,
            hist: None,
            trace: None,
        }
    }
}

impl RequestLog {
    /// Moves the record out, leaving one that writes nothing.
    pub fn take(&mut self) -> RequestLog {
        std::mem::take(self)
    }

    /// Time spent in the gateway itself so far (elapsed minus upstream waits).
    pub fn overhead(&self) -> Duration {
        self.overhead_at(Instant::now())
    }

    /// Time spent in the gateway itself until `now` (elapsed minus upstream waits).
    pub fn overhead_at(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.start)
            .saturating_sub(self.upstream)
            .saturating_sub(self.queue)
    }
}

impl Drop for RequestLog {
    fn drop(&mut self) {
        if self.path.is_empty() {
            return;
        }
        let latency = self.start.elapsed();
        if let Some(h) = &self.hist {
            h.request(self.status, latency, self.ttfb.filter(|_| self.stream));
        }
        llmgw_core::logging::request(&llmgw_core::logging::RequestLine {
            path: self.path,
            model: &self.model,
            deployment: &self.deployment,
            fallback: self.fallback.as_deref(),
            status: self.status,
            attempts: self.attempts,
            stream: self.stream,
            complete: self.complete,
            client_gone: self.client_gone,
            latency,
            ttfb: self.ttfb,
        });
    }
}

/// llmgw's response headers, made once: a `&str` name is parsed again on every insert.
pub mod names {
    use axum::http::HeaderName;
    pub const DEPLOYMENT: HeaderName = HeaderName::from_static("x-llmgw-deployment");
    pub const ATTEMPTS: HeaderName = HeaderName::from_static("x-llmgw-attempts");
    pub const OVERHEAD_MS: HeaderName = HeaderName::from_static("x-llmgw-overhead-ms");
    pub const FALLBACK: HeaderName = HeaderName::from_static("x-llmgw-fallback");
    pub const QUEUE_MS: HeaderName = HeaderName::from_static("x-llmgw-queue-ms");
}

/// `x-llmgw-overhead-ms`: the gateway's own time, in milliseconds with three decimals.
pub fn overhead_header(d: Duration) -> HeaderValue {
    let mut ms = Vec::with_capacity(24);
    llmgw_core::logging::push_millis(&mut ms, d, 3);
    HeaderValue::from_maybe_shared(Bytes::from(ms)).unwrap_or(HeaderValue::from_static("0.000"))
}
