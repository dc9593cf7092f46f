//! Upstream API families behind one trait.
//!
//! A provider turns the client's OpenAI-shaped request into its own HTTP request and its
//! response back into OpenAI's shape. OpenAI-compatible providers pass bytes through
//! untouched (the fast path); translating providers (Anthropic, Gemini) buffer a JSON
//! response or convert a stream event by event. Adding a provider means one file here and
//! one line in [`for_kind`].

pub mod anthropic;
pub mod gemini;
pub mod openai;
pub mod translate;

use crate::config::{ErrorClass, ProviderKind};
use crate::error::ApiError;
use crate::request::ClientRequest;
use crate::router::Deployment;
use axum::http::{HeaderMap, StatusCode};
use bytes::{Bytes, BytesMut};
use std::sync::Arc;
use std::time::Duration;

/// One upstream API family.
pub trait Provider: Send + Sync + 'static {
    /// Builds the HTTP request for one attempt against `dep`.
    fn build(
        &self,
        client: &reqwest::Client,
        dep: &Deployment,
        req: &ClientRequest,
    ) -> Result<reqwest::RequestBuilder, ApiError>;

    /// True when successful responses are already OpenAI-shaped and pass through as bytes.
    fn passthrough(&self) -> bool {
        true
    }

    /// Converts a complete successful non-streaming body to OpenAI's shape.
    fn translate_body(
        &self,
        _dep: &Deployment,
        _req: &ClientRequest,
        body: Bytes,
    ) -> Result<Bytes, ApiError> {
        Ok(body)
    }

    /// A converter for a successful streaming body (only called when not passthrough).
    fn stream_translator(
        &self,
        _dep: &Deployment,
        _req: &ClientRequest,
    ) -> Box<dyn StreamTranslator> {
        Box::new(Identity)
    }

    /// `Some(reason)` when this build cannot serve the provider (checked at startup).
    fn unsupported(&self) -> Option<String> {
        None
    }

    /// Classifies an error response and builds the client's error from it.
    fn error(&self, status: StatusCode, headers: &HeaderMap, body: &[u8]) -> UpstreamError {
        openai_style_error(status, headers, body)
    }
}

/// Converts an upstream event stream to OpenAI SSE bytes, chunk by chunk.
pub trait StreamTranslator: Send {
    /// Feeds raw upstream bytes; appends complete OpenAI SSE events to `out`.
    fn feed(&mut self, chunk: &[u8], out: &mut BytesMut) -> Result<(), UpstreamError>;
    /// Called at the end of the upstream stream; appends any final events.
    fn finish(&mut self, out: &mut BytesMut) -> Result<(), UpstreamError>;
}

struct Identity;

impl StreamTranslator for Identity {
    fn feed(&mut self, chunk: &[u8], out: &mut BytesMut) -> Result<(), UpstreamError> {
        out.extend_from_slice(chunk);
        Ok(())
    }
    fn finish(&mut self, _out: &mut BytesMut) -> Result<(), UpstreamError> {
        Ok(())
    }
}

/// An upstream failure: its class (for retry/cooldown policy) and what the client sees.
#[derive(Debug, Clone)]
pub struct UpstreamError {
    pub class: ErrorClass,
    pub error: ApiError,
    /// The upstream's own error body when it was already OpenAI-shaped (passed through).
    pub raw_body: Option<Bytes>,
    /// From the upstream's `Retry-After` header.
    pub retry_after: Option<Duration>,
}

impl UpstreamError {
    /// A provider's error mapped for the router (`class`, `retry_after`) and the client
    /// (`status`, `kind`, `message`, `code`; Retry-After passed on).
    pub fn mapped(
        class: ErrorClass,
        status: StatusCode,
        kind: &'static str,
        message: String,
        code: Option<&str>,
        retry_after: Option<Duration>,
    ) -> Self {
        let mut error = ApiError::new(status, kind, message);
        if let Some(code) = code {
            error = error.with_code(code);
        }
        error.retry_after = retry_after.map(|ra| ra.as_secs());
        UpstreamError {
            class,
            error,
            raw_body: None,
            retry_after,
        }
    }

    pub fn new(class: ErrorClass, error: ApiError) -> Self {
        UpstreamError {
            class,
            error,
            raw_body: None,
            retry_after: None,
        }
    }
}

/// The provider for a deployment kind.
pub fn for_kind(kind: ProviderKind) -> Arc<dyn Provider> {
    match kind {
        ProviderKind::Openai | ProviderKind::Sglang => Arc::new(openai::OpenAi),
        ProviderKind::Azure => Arc::new(openai::Azure),
        ProviderKind::Anthropic => Arc::new(anthropic::Anthropic),
        ProviderKind::Gemini => Arc::new(gemini::Gemini),
    }
}

/// Placeholder that `Router::new` refuses, so a config never half-works.
pub struct Unsupported(pub ProviderKind);

impl Provider for Unsupported {
    fn unsupported(&self) -> Option<String> {
        Some(format!(
            "provider {} is not supported by this build yet",
            self.0.as_str()
        ))
    }
    fn build(
        &self,
        _: &reqwest::Client,
        _: &Deployment,
        _: &ClientRequest,
    ) -> Result<reqwest::RequestBuilder, ApiError> {
        Err(ApiError::internal(format!(
            "provider {} is not supported yet",
            self.0.as_str()
        )))
    }
}

/// A header value holding a key: marked sensitive so that it never shows up in debug
/// output of the request; an invalid value is reported without echoing it.
pub fn secret_header(
    dep: &Deployment,
    value: &str,
) -> Result<reqwest::header::HeaderValue, ApiError> {
    let mut v = reqwest::header::HeaderValue::try_from(value).map_err(|_| {
        ApiError::internal(format!(
            "api_key of deployment {} is not a valid header value",
            dep.id
        ))
    })?;
    v.set_sensitive(true);
    Ok(v)
}

/// The error class of an HTTP status (and, for 400s, the body's hints).
pub fn classify(status: StatusCode, body: &[u8]) -> ErrorClass {
    match status.as_u16() {
        408 => ErrorClass::Timeout,
        429 => ErrorClass::RateLimit,
        503 | 529 => ErrorClass::ServiceUnavailable,
        401 | 403 => ErrorClass::Authentication,
        404 => ErrorClass::NotFound,
        400 | 413 | 422 => {
            let text = String::from_utf8_lossy(&body[..body.len().min(4096)]).to_ascii_lowercase();
            if text.contains("context_length")
                || text.contains("context length")
                || text.contains("maximum context")
            {
                ErrorClass::ContextWindow
            } else if text.contains("content_filter")
                || text.contains("content_policy")
                || text.contains("safety")
            {
                ErrorClass::ContentPolicy
            } else {
                ErrorClass::BadRequest
            }
        }
        500..=599 => ErrorClass::InternalServer,
        _ => ErrorClass::Default,
    }
}

/// Seconds or HTTP-date `Retry-After`, clamped to [`crate::duration::MAX`] (the router
/// bounds it further); `None` when absent or meaningless (negative, NaN, garbage).
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let v = headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    if let Ok(secs) = v.parse::<f64>() {
        return crate::duration::clamp_secs_f64(secs);
    }
    let when = httpdate::parse_http_date(v).ok()?;
    Some(
        when.duration_since(std::time::SystemTime::now())
            .unwrap_or_default()
            .min(crate::duration::MAX),
    )
}

/// OpenAI-compatible error handling: keep an OpenAI-shaped body as is, wrap anything else.
pub fn openai_style_error(status: StatusCode, headers: &HeaderMap, body: &[u8]) -> UpstreamError {
    let class = classify(status, body);
    let parsed: Option<serde_json::Value> = serde_json::from_slice(body).ok();
    let inner = parsed.as_ref().and_then(|v| v.get("error"));
    let message = match inner {
        Some(serde_json::Value::Object(o)) => o
            .get("message")
            .and_then(|m| m.as_str())
            .unwrap_or("upstream error")
            .to_string(),
        Some(serde_json::Value::String(s)) => s.clone(),
        _ => {
            let snippet = String::from_utf8_lossy(&body[..body.len().min(300)]);
            let snippet = snippet.trim();
            if snippet.is_empty() {
                format!("upstream returned HTTP {status}")
            } else {
                format!("upstream returned HTTP {status}: {snippet}")
            }
        }
    };
    let kind = match class {
        ErrorClass::RateLimit => "rate_limit_error",
        ErrorClass::Authentication => "authentication_error",
        ErrorClass::ServiceUnavailable => "service_unavailable",
        ErrorClass::InternalServer | ErrorClass::Default => "upstream_error",
        _ => "invalid_request_error",
    };
    let mut error = ApiError::new(status, kind, message);
    if let Some(code) = inner.and_then(|i| i.get("code")).and_then(|c| c.as_str()) {
        error = error.with_code(code);
    }
    let raw_body =
        matches!(inner, Some(serde_json::Value::Object(_))).then(|| Bytes::copy_from_slice(body));
    UpstreamError {
        class,
        error,
        raw_body,
        retry_after: retry_after(headers),
    }
}
