//! A traced request as the router sees it: the trace it belongs to, and one record per
//! upstream attempt (a CLIENT span for the gateway's telemetry to export). The router only
//! fills these in; sampling, the request span and the export are the gateway's.
//!
//! Nothing here exists for a request that is not traced: [`RequestLog::trace`] is `None`
//! and the router's only cost is that one check per attempt.

use super::*;
use std::sync::Mutex;
use std::time::SystemTime;

/// Most attempt spans kept for one request (retries and fallbacks are bounded anyway).
pub const MAX_ATTEMPT_SPANS: usize = 64;

/// The header that carries the W3C trace context.
pub const TRACEPARENT: axum::http::HeaderName = axum::http::HeaderName::from_static("traceparent");

/// The trace a request belongs to and its attempts so far (shared by the gateway's request
/// span and the router; the lock is the request's own, never contended in practice).
#[derive(Debug)]
pub struct TraceLink {
    pub trace_id: [u8; 16],
    /// The request span's id: the parent of every attempt span.
    pub span_id: [u8; 8],
    attempts: Mutex<Vec<AttemptSpan>>,
}

/// One attempt against one deployment.
#[derive(Debug, Clone)]
pub struct AttemptSpan {
    pub span_id: [u8; 8],
    pub start: SystemTime,
    /// `None` while a streamed answer is still flowing (it ends with the request).
    pub end: Option<SystemTime>,
    pub deployment: String,
    pub group: String,
    pub provider: ProviderKind,
    /// The upstream's own model id.
    pub upstream_model: String,
    /// Host and port of the deployment's `api_base` (never its credentials).
    pub address: String,
    pub port: Option<u16>,
    /// The upstream's HTTP status (0: no answer).
    pub status: u16,
    /// The failure's class (`timeout`, `rate_limit`, …) when the attempt failed.
    pub error: Option<&'static str>,
}

impl TraceLink {
    pub fn new(trace_id: [u8; 16], span_id: [u8; 8]) -> TraceLink {
        TraceLink {
            trace_id,
            span_id,
            attempts: Mutex::new(Vec::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<AttemptSpan>> {
        self.attempts.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts an attempt span for `dep`; `None` past [`MAX_ATTEMPT_SPANS`].
    pub(crate) fn begin(&self, dep: &Deployment) -> Option<[u8; 8]> {
        let mut a = self.lock();
        if a.len() >= MAX_ATTEMPT_SPANS {
            return None;
        }
        let span_id = new_span_id();
        let (address, port) = host_port(&dep.api_base);
        a.push(AttemptSpan {
            span_id,
            start: SystemTime::now(),
            end: None,
            deployment: dep.id.clone(),
            group: dep.group.clone(),
            provider: dep.kind,
            upstream_model: dep.model.clone(),
            address,
            port,
            status: 0,
            error: None,
        });
        Some(span_id)
    }

    /// Records how attempt `span_id` went; `ended` false leaves a stream's span open.
    pub(crate) fn finish(
        &self,
        span_id: [u8; 8],
        status: u16,
        error: Option<ErrorClass>,
        ended: bool,
    ) {
        let mut a = self.lock();
        if let Some(s) = a.iter_mut().rev().find(|s| s.span_id == span_id) {
            s.status = status;
            s.error = error.map(class_name);
            if ended {
                s.end = Some(SystemTime::now());
            }
        }
    }

    /// The `traceparent` naming the newest attempt span (what its upstream is sent).
    pub(crate) fn current_traceparent(&self) -> Option<HeaderValue> {
        let span = self.lock().last()?.span_id;
        Some(traceparent(&self.trace_id, &span, true))
    }

    /// The attempts so far (taken: a second call returns none).
    pub fn take_attempts(&self) -> Vec<AttemptSpan> {
        std::mem::take(&mut *self.lock())
    }
}

/// A random span id (never all zero).
pub fn new_span_id() -> [u8; 8] {
    let v = fastrand::u64(1..);
    v.to_be_bytes()
}

/// A random trace id (never all zero).
pub fn new_trace_id() -> [u8; 16] {
    let v = fastrand::u128(1..);
    v.to_be_bytes()
}

/// `00-{trace id}-{span id}-{flags}` (W3C Trace Context, version 00).
pub fn traceparent(trace_id: &[u8; 16], span_id: &[u8; 8], sampled: bool) -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = [0u8; 55];
    out[..3].copy_from_slice(b"00-");
    for (i, b) in trace_id.iter().enumerate() {
        out[3 + 2 * i] = HEX[usize::from(b >> 4)];
        out[4 + 2 * i] = HEX[usize::from(b & 15)];
    }
    out[35] = b'-';
    for (i, b) in span_id.iter().enumerate() {
        out[36 + 2 * i] = HEX[usize::from(b >> 4)];
        out[37 + 2 * i] = HEX[usize::from(b & 15)];
    }
    out[52..].copy_from_slice(if sampled { b"-01" } else { b"-00" });
    HeaderValue::from_bytes(&out).unwrap_or(HeaderValue::from_static(""))
}

/// The error class as the config and `error.type` spell it.
pub fn class_name(c: ErrorClass) -> &'static str {
    match c {
        ErrorClass::Timeout => "timeout",
        ErrorClass::RateLimit => "rate_limit",
        ErrorClass::InternalServer => "internal_server",
        ErrorClass::ServiceUnavailable => "service_unavailable",
        ErrorClass::BadRequest => "bad_request",
        ErrorClass::Authentication => "authentication",
        ErrorClass::NotFound => "not_found",
        ErrorClass::ContentPolicy => "content_policy",
        ErrorClass::ContextWindow => "context_window",
        ErrorClass::Connection => "connection",
        ErrorClass::Default => "error",
    }
}

/// Host and port of a base URL, without scheme, credentials or path.
fn host_port(base: &str) -> (String, Option<u16>) {
    let rest = base.split_once("://").map_or(base, |(_, r)| r);
    let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
    let hostport = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    // `[::1]:8000`, `host:8000`, `host`.
    let (host, port) = match hostport.rsplit_once(':') {
        Some((h, p)) if !p.contains(']') => (h, p.parse().ok()),
        _ => (hostport, None),
    };
    let port = port.or(if base.starts_with("https://") {
        Some(443)
    } else if base.starts_with("http://") {
        Some(80)
    } else {
        None
    });
    (host.trim_matches(['[', ']']).to_string(), port)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_and_host_port() {
        let tp = traceparent(&[0xab; 16], &[0x01; 8], true);
        assert_eq!(
            tp.to_str().unwrap(),
            "00-abababababababababababababababab-0101010101010101-01"
        );
        assert_eq!(
            host_port("http://user:pw@gpu1:8000/v1"),
            ("gpu1".into(), Some(8000))
        );
        assert_eq!(
            host_port("https://api.openai.com/v1"),
            ("api.openai.com".into(), Some(443))
        );
        assert_eq!(host_port("http://[::1]:9/v1"), ("::1".into(), Some(9)));
    }
}
