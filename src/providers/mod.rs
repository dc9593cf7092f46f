//! Upstream API families behind one trait, and the translation between client and
//! upstream formats.
//!
//! A provider builds its HTTP request for one attempt (URL, key header, body) and
//! classifies its error responses. Chat requests and their answers are translated through
//! the [`hub`]: a decoder per client format, an encoder per upstream format, and back for
//! the answer. When the client's format is the deployment's (OpenAI chat to an
//! OpenAI-compatible server, Anthropic Messages to Anthropic, Responses to a server that
//! has it) nothing is translated: bytes pass through with the model id spliced. Adding a
//! provider means one folder or file here and one line in [`for_kind`]; adding a wire
//! format means its decoder and encoder, and an arm in the functions below.

pub mod anthropic;
pub mod chat;
#[cfg(test)]
mod fuzz;
pub mod gemini;
pub mod hub;
pub mod openai;
pub mod responses;
pub mod translate;

use crate::config::{ErrorClass, ProviderKind};
use crate::error::ApiError;
use crate::request::ClientRequest;
use crate::router::Deployment;
use axum::http::{HeaderMap, StatusCode};
use bytes::{Bytes, BytesMut};
use hub::{Format, Target};
use std::sync::Arc;
use std::time::Duration;

/// One upstream API family.
pub trait Provider: Send + Sync + 'static {
    /// The wire format `dep` speaks for a request of `req`'s chat format.
    fn wire(&self, dep: &Deployment, req: &ClientRequest) -> Format;

    /// The request body for `dep`: the client's bytes with the model id spliced, or
    /// translated (see [`translates`]).
    fn body(&self, dep: &Deployment, req: &ClientRequest) -> Result<Bytes, ApiError> {
        chat_body(dep, req, self.wire(dep, req))
    }

    /// The HTTP request (URL, headers) around `body` for one attempt against `dep`.
    fn request(
        &self,
        client: &reqwest::Client,
        dep: &Deployment,
        req: &ClientRequest,
        body: Bytes,
    ) -> Result<reqwest::RequestBuilder, ApiError>;

    /// Builds the HTTP request for one attempt against `dep`.
    fn build(
        &self,
        client: &reqwest::Client,
        dep: &Deployment,
        req: &ClientRequest,
    ) -> Result<reqwest::RequestBuilder, ApiError> {
        let body = self.body(dep, req)?;
        self.request(client, dep, req, body)
    }

    /// Converts a complete successful non-streaming body to the client's format (the
    /// body itself when no translation is needed).
    fn translate_body(
        &self,
        dep: &Deployment,
        req: &ClientRequest,
        body: Bytes,
    ) -> Result<Bytes, ApiError> {
        translate_response(self.wire(dep, req), dep, req, body)
    }

    /// A converter for a successful streaming body; `None` when it passes through.
    fn stream_translator(
        &self,
        dep: &Deployment,
        req: &ClientRequest,
    ) -> Option<Box<dyn StreamTranslator>> {
        stream_translator(self.wire(dep, req), dep, req)
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

/// Converts an upstream event stream to the client's SSE format, chunk by chunk.
pub trait StreamTranslator: Send {
    /// Feeds raw upstream bytes; appends complete client SSE events to `out`.
    fn feed(&mut self, chunk: &[u8], out: &mut BytesMut) -> Result<(), UpstreamError>;
    /// Called at the end of the upstream stream; appends any final events.
    fn finish(&mut self, out: &mut BytesMut) -> Result<(), UpstreamError>;
}

/// True when `req` reaches `dep` in the client's own format (bytes pass through).
pub fn passthrough(dep: &Deployment, req: &ClientRequest) -> bool {
    match req.endpoint.chat_format() {
        Some(f) => f == dep.provider.wire(dep, req),
        // Completions, embeddings and token counts are never translated through the hub.
        None => true,
    }
}

/// True when `dep`'s body for `req` is translated rather than spliced.
pub fn translates(dep: &Deployment, req: &ClientRequest) -> bool {
    !passthrough(dep, req)
        || (req.endpoint == crate::request::Endpoint::Embeddings
            && dep.kind == ProviderKind::Gemini)
}

/// The body for one attempt. Translating a body larger than
/// [`crate::request::PARSE_INLINE_MAX`] runs on the low-priority pool (`heavy`), like
/// parsing it did, so that a long conversation never holds an async worker.
pub async fn attempt_body(dep: &Arc<Deployment>, req: &ClientRequest) -> Result<Bytes, ApiError> {
    if req.body.len() <= crate::request::PARSE_INLINE_MAX || !translates(dep, req) {
        return dep.provider.body(dep, req);
    }
    let (d, r) = (Arc::clone(dep), req.clone());
    crate::heavy::run(move || d.provider.body(&d, &r))
        .await
        .unwrap_or_else(|busy| {
            Err(ApiError::unavailable(format!(
                "{busy} (translating a request over {} KiB waits in a short queue); retry in \
                 a moment",
                crate::request::PARSE_INLINE_MAX / 1024
            ))
            .with_code("server_busy")
            .with_retry_after(1))
        })
}

/// The body of a chat request for an upstream speaking `wire`: the client's bytes with
/// the model id spliced when the formats match, else translated through the hub.
pub fn chat_body(dep: &Deployment, req: &ClientRequest, wire: Format) -> Result<Bytes, ApiError> {
    let Some(from) = req.endpoint.chat_format() else {
        return Ok(req.body_for_model(&dep.model));
    };
    if from == wire {
        return Ok(req.body_for_model(&dep.model));
    }
    let target = Target { dep, format: wire };
    let hub = match from {
        Format::OpenAiChat => chat::request::decode(req, &target)?,
        Format::Anthropic => anthropic::request::decode(req, &target)?,
        Format::Responses => responses::request::decode(req, &target)?,
        Format::Gemini => return Err(no_translation(from, wire)),
    };
    let hint = req.body.len();
    let body = match wire {
        Format::OpenAiChat => chat::request::encode(&hub, &target, hint)?,
        Format::Anthropic => anthropic::request::encode(&hub, &target, hint)?,
        Format::Gemini => gemini::request::encode(&hub, &target, hint)?,
        Format::Responses => return Err(no_translation(from, wire)),
    };
    Ok(Bytes::from(body))
}

fn no_translation(from: Format, to: Format) -> ApiError {
    ApiError::internal(format!(
        "llmgw cannot translate {} requests to {}",
        from.name(),
        to.name()
    ))
}

/// A complete answer from an upstream speaking `wire`, in the client's format.
pub fn translate_response(
    wire: Format,
    dep: &Deployment,
    req: &ClientRequest,
    body: Bytes,
) -> Result<Bytes, ApiError> {
    let Some(to) = req.endpoint.chat_format().filter(|&f| f != wire) else {
        return Ok(body);
    };
    let name = dep.kind.as_str();
    let hub = match wire {
        Format::OpenAiChat => chat::response::decode(&body, name)?,
        Format::Anthropic => anthropic::response::decode(&body)?,
        Format::Gemini => gemini::response::decode(&dep.model, &body)?,
        Format::Responses => return Err(no_translation(wire, to)),
    };
    match to {
        Format::OpenAiChat => chat::response::encode(hub),
        Format::Anthropic => anthropic::response::encode(&hub, name),
        Format::Responses => responses::response::encode(&hub, req, name),
        Format::Gemini => Err(no_translation(wire, to)),
    }
}

/// A translator for a stream from an upstream speaking `wire` to the client's format;
/// `None` when the formats match.
pub fn stream_translator(
    wire: Format,
    dep: &Deployment,
    req: &ClientRequest,
) -> Option<Box<dyn StreamTranslator>> {
    let to = req.endpoint.chat_format().filter(|&f| f != wire)?;
    let dec: Box<dyn hub::Decoder> = match wire {
        Format::OpenAiChat => Box::new(chat::stream::ChatDecoder::new(dep.kind.as_str())),
        Format::Anthropic => Box::<anthropic::stream::AnthropicDecoder>::default(),
        Format::Gemini => Box::<gemini::stream::GeminiDecoder>::default(),
        Format::Responses => return None,
    };
    let enc: Box<dyn hub::Encoder> = match to {
        Format::OpenAiChat => Box::new(chat::stream::ChatEncoder::new(
            dep.model.clone(),
            req.include_usage,
        )),
        Format::Anthropic => Box::new(anthropic::stream::AnthropicEncoder::new(dep.model.clone())),
        Format::Responses => Box::new(responses::stream::ResponsesEncoder::new(
            dep.model.clone(),
            req,
        )),
        Format::Gemini => return None,
    };
    Some(Box::new(hub::Translate { dec, enc }))
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
    fn wire(&self, _: &Deployment, _: &ClientRequest) -> Format {
        Format::OpenAiChat
    }
    fn unsupported(&self) -> Option<String> {
        Some(format!(
            "provider {} is not supported by this build yet",
            self.0.as_str()
        ))
    }
    fn request(
        &self,
        _: &reqwest::Client,
        _: &Deployment,
        _: &ClientRequest,
        _: Bytes,
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
