//! Errors the gateway returns to clients, in the shape of the client's API with a
//! matching HTTP status, so that SDKs raise their usual exception classes: OpenAI's
//! `{"error":{"message","type","param","code"}}` (chat, completions, embeddings and
//! Responses), Anthropic's `{"type":"error","error":{"type","message"}}`.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde::Serialize;

/// The API family a client speaks: decides the shape of its errors and of its streams'
/// framing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Api {
    OpenAi,
    Anthropic,
    Responses,
}

/// An error answered to the client.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{status}: {message}")]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub kind: &'static str,
    pub param: Option<String>,
    pub code: Option<String>,
    /// Seconds for a `Retry-After` header (429/503).
    pub retry_after: Option<u64>,
}

#[derive(Serialize)]
struct Body<'a> {
    error: Inner<'a>,
}

#[derive(Serialize)]
struct Inner<'a> {
    message: &'a str,
    #[serde(rename = "type")]
    kind: &'a str,
    param: Option<&'a str>,
    code: Option<&'a str>,
}

impl ApiError {
    pub fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
            kind,
            param: None,
            code: None,
            retry_after: None,
        }
    }

    pub fn with_code(mut self, code: impl Into<String>) -> Self {
        self.code = Some(code.into());
        self
    }

    pub fn with_param(mut self, param: impl Into<String>) -> Self {
        self.param = Some(param.into());
        self
    }

    pub fn with_retry_after(mut self, secs: u64) -> Self {
        self.retry_after = Some(secs);
        self
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", message)
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "authentication_error", message)
            .with_code("invalid_api_key")
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "invalid_request_error", message)
    }

    pub fn too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request_error",
            format!("request body is larger than the gateway's limit of {limit} bytes ([server] max_body_bytes)"),
        )
        .with_code("request_too_large")
    }

    pub fn bad_gateway(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_GATEWAY, "upstream_error", message)
            .with_code("upstream_unreachable")
    }

    pub fn gateway_timeout(message: impl Into<String>) -> Self {
        Self::new(StatusCode::GATEWAY_TIMEOUT, "timeout_error", message)
            .with_code("upstream_timeout")
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "service_unavailable",
            message,
        )
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", message)
    }

    /// The JSON body, `{"error":{...}}`.
    pub fn body(&self) -> Bytes {
        let body = Body {
            error: Inner {
                message: &self.message,
                kind: self.kind,
                param: self.param.as_deref(),
                code: self.code.as_deref(),
            },
        };
        Bytes::from(serde_json::to_vec(&body).unwrap_or_default())
    }

    /// The same error as one SSE event, for failures after a stream has started.
    pub fn sse_event(&self) -> Bytes {
        let mut out = Vec::with_capacity(self.message.len() + 96);
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(&self.body());
        out.extend_from_slice(b"\n\n");
        Bytes::from(out)
    }
}

#[derive(Serialize)]
struct AnthropicBody<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    error: AnthropicInner<'a>,
}

#[derive(Serialize)]
struct AnthropicInner<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    message: &'a str,
}

/// The Responses API's in-stream `error` event, with the OpenAI error object as well so
/// that OpenAI SDKs raise it.
#[derive(Serialize)]
struct ResponsesErrorEvent<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    code: Option<&'a str>,
    message: &'a str,
    param: Option<&'a str>,
    sequence_number: u64,
    error: Inner<'a>,
}

impl ApiError {
    /// Anthropic's error type for this error.
    pub fn anthropic_type(&self) -> &'static str {
        match self.status.as_u16() {
            401 => "authentication_error",
            402 => "billing_error",
            403 => "permission_error",
            404 => "not_found_error",
            408 | 504 => "timeout_error",
            413 => "request_too_large",
            429 => "rate_limit_error",
            503 | 529 => "overloaded_error",
            400..=499 => "invalid_request_error",
            _ => "api_error",
        }
    }

    /// The JSON body in `api`'s shape.
    pub fn body_for(&self, api: Api) -> Bytes {
        match api {
            Api::OpenAi | Api::Responses => self.body(),
            Api::Anthropic => Bytes::from(
                serde_json::to_vec(&AnthropicBody {
                    kind: "error",
                    error: AnthropicInner {
                        kind: self.anthropic_type(),
                        message: &self.message,
                    },
                })
                .unwrap_or_default(),
            ),
        }
    }

    /// The error as one SSE event in `api`'s stream format.
    pub fn sse_event_for(&self, api: Api) -> Bytes {
        let mut out = Vec::with_capacity(self.message.len() + 160);
        match api {
            Api::OpenAi => return self.sse_event(),
            Api::Anthropic => {
                out.extend_from_slice(b"event: error\ndata: ");
                out.extend_from_slice(&self.body_for(Api::Anthropic));
            }
            Api::Responses => {
                out.extend_from_slice(b"event: error\ndata: ");
                let inner = Inner {
                    message: &self.message,
                    kind: self.kind,
                    param: self.param.as_deref(),
                    code: self.code.as_deref(),
                };
                let ev = ResponsesErrorEvent {
                    kind: "error",
                    code: self.code.as_deref().or(Some(self.kind)),
                    message: &self.message,
                    param: self.param.as_deref(),
                    sequence_number: 0,
                    error: inner,
                };
                let _ = serde_json::to_writer(&mut out, &ev);
            }
        }
        out.extend_from_slice(b"\n\n");
        Bytes::from(out)
    }

    /// The response for this error, in `api`'s shape.
    pub fn into_response_for(self, api: Api) -> Response {
        let body = self.body_for(api);
        let mut resp = self.into_response();
        if api == Api::Anthropic {
            *resp.body_mut() = axum::body::Body::from(body);
        }
        resp
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = (self.status, self.body()).into_response();
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if let Some(secs) = self.retry_after {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if matches!(
            self.status,
            StatusCode::PAYLOAD_TOO_LARGE | StatusCode::REQUEST_TIMEOUT
        ) {
            // The rest of the body was never read, so the server closes the connection
            // after this response; say so, or a client reuses it and its next request
            // fails with a connection error instead of reaching us.
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_has_openai_shape() {
        let e = ApiError::not_found("no such model")
            .with_code("model_not_found")
            .with_param("model");
        let v: serde_json::Value = serde_json::from_slice(&e.body()).unwrap();
        assert_eq!(v["error"]["message"], "no such model");
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert_eq!(v["error"]["param"], "model");
        assert_eq!(v["error"]["code"], "model_not_found");
    }

    #[test]
    fn anthropic_and_responses_shapes() {
        let e = ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "service_unavailable",
            "busy",
        );
        let v: serde_json::Value = serde_json::from_slice(&e.body_for(Api::Anthropic)).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"type": "error", "error": {"type": "overloaded_error", "message": "busy"}})
        );
        let ev = e.sse_event_for(Api::Anthropic);
        assert!(ev.starts_with(b"event: error\ndata: {\"type\":\"error\""));
        assert!(ev.ends_with(b"\n\n"));
        let ev = ApiError::bad_request("no").sse_event_for(Api::Responses);
        let text = std::str::from_utf8(&ev).unwrap();
        let data: serde_json::Value =
            serde_json::from_str(text.trim().strip_prefix("event: error\ndata: ").unwrap())
                .unwrap();
        assert_eq!(data["type"], "error");
        assert_eq!(data["message"], "no");
        assert_eq!(data["error"]["type"], "invalid_request_error");
        for (status, kind) in [
            (400, "invalid_request_error"),
            (401, "authentication_error"),
            (404, "not_found_error"),
            (413, "request_too_large"),
            (429, "rate_limit_error"),
            (502, "api_error"),
            (504, "timeout_error"),
        ] {
            let e = ApiError::new(StatusCode::from_u16(status).unwrap(), "x", "m");
            assert_eq!(e.anthropic_type(), kind, "{status}");
        }
        let resp = ApiError::not_found("gone").into_response_for(Api::Anthropic);
        assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    }

    #[test]
    fn null_param_and_code_are_present() {
        let v: serde_json::Value = serde_json::from_slice(&ApiError::internal("x").body()).unwrap();
        assert!(v["error"].as_object().unwrap().contains_key("param"));
        assert!(v["error"]["code"].is_null());
    }
}
