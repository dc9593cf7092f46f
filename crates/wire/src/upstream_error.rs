//! An upstream's failure as the router and the client see it: its class (for the retry
//! and cooldown policy), the client's error, and the upstream's `Retry-After`; the
//! OpenAI-shaped error handling every OpenAI-compatible upstream shares.

use axum::http::{HeaderMap, StatusCode};
use bytes::Bytes;
use llmgw_core::config::ErrorClass;
use llmgw_core::error::ApiError;
use llmgw_core::redact::Secrets;
use std::borrow::Cow;
use std::time::Duration;

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

impl UpstreamError {
    /// The client's error: the upstream's own OpenAI-shaped body when it had one.
    pub fn into_api_error(self) -> ApiError {
        let mut err = self.error;
        if err.retry_after.is_none() {
            err.retry_after = self.retry_after.map(|d| d.as_secs().max(1));
        }
        err
    }

    /// Masks `secrets` in everything that came from the upstream.
    pub fn scrub(&mut self, secrets: &Secrets) {
        if secrets.is_empty() {
            return;
        }
        let scrub = |s: &mut String| {
            if let Cow::Owned(clean) = secrets.scrub(s) {
                *s = clean;
            }
        };
        scrub(&mut self.error.message);
        self.error.param.as_mut().map(scrub);
        self.error.code.as_mut().map(scrub);
        if let Some(raw) = &self.raw_body {
            let text = String::from_utf8_lossy(raw);
            if let Cow::Owned(clean) = secrets.scrub(&text) {
                self.raw_body = Some(clean.into());
            }
        }
    }
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

/// Seconds or HTTP-date `Retry-After`, clamped to [`llmgw_core::duration::MAX`] (the router
/// bounds it further); `None` when absent or meaningless (negative, NaN, garbage).
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let v = headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    if let Ok(secs) = v.parse::<f64>() {
        return llmgw_core::duration::clamp_secs_f64(secs);
    }
    let when = httpdate::parse_http_date(v).ok()?;
    Some(
        when.duration_since(std::time::SystemTime::now())
            .unwrap_or_default()
            .min(llmgw_core::duration::MAX),
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
