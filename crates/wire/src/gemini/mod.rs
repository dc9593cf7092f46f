//! Google Gemini API (`{api_base}/models/{model}:generateContent`,
//! `:streamGenerateContent?alt=sse`, `:batchEmbedContents`) behind every client API.
//! The key travels in the `x-goog-api-key` header, never in the URL.
//!
//! Chat requests are encoded from the hub ([`request`]), answers decoded into it
//! ([`response`], [`stream`]). Embeddings are OpenAI's, translated here directly.

pub mod request;
pub mod response;
pub mod stream;

use crate::chat::stream::ChatEncoder;
use crate::hub::{Format, Target, Translate};
use crate::request::{ClientRequest, Endpoint};
use crate::translate::{
    self as t, body_object, invalid, is_default, secret_header, unsupported_all, EmbeddingFormat,
};
use crate::upstream::Provider;
use crate::upstream::Upstream;
use crate::upstream_error::UpstreamError;
use axum::http::{HeaderMap, StatusCode};
use bytes::Bytes;
use llmgw_core::config::ErrorClass;
use llmgw_core::error::ApiError;
use reqwest::header::{HeaderValue, CONTENT_TYPE};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use stream::GeminiDecoder;

const NAME: &str = "gemini";

/// The Gemini provider.
pub struct Gemini;

/// `models/{model}` unless the configured model is already a resource path
/// (`models/…`, `tunedModels/…`).
fn model_path(model: &str) -> String {
    if model.contains('/') {
        model.to_string()
    } else {
        format!("models/{model}")
    }
}

impl Provider for Gemini {
    fn wire(&self, _: &Upstream, _: &ClientRequest) -> Format {
        Format::Gemini
    }

    fn request(
        &self,
        client: &reqwest::Client,
        dep: &Upstream,
        req: &ClientRequest,
        body: Bytes,
    ) -> Result<reqwest::RequestBuilder, ApiError> {
        let path = model_path(&dep.model);
        let url = match req.endpoint {
            e if e.chat_format().is_some() => {
                if req.stream {
                    format!("{}/{path}:streamGenerateContent?alt=sse", dep.api_base)
                } else {
                    format!("{}/{path}:generateContent", dep.api_base)
                }
            }
            Endpoint::Embeddings => format!("{}/{path}:batchEmbedContents", dep.api_base),
            other => {
                return Err(ApiError::bad_request(format!(
                    "deployment {} (gemini) serves chat (/v1/chat/completions, /v1/messages, \
                     /v1/responses) and /v1/embeddings, not /v1/{}",
                    dep.id,
                    other.path()
                ))
                .with_code("unsupported_endpoint"))
            }
        };
        let mut rb = client
            .post(url)
            .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
            .body(body);
        if let Some(key) = &dep.api_key {
            rb = rb.header("x-goog-api-key", secret_header(dep, key.expose())?);
        }
        Ok(rb)
    }

    fn error(&self, status: StatusCode, headers: &HeaderMap, body: &[u8]) -> UpstreamError {
        map_error(status, headers, body)
    }
}

/// The `generateContent` body for an OpenAI chat completions request.
pub fn translate_request(dep: &Upstream, req: &ClientRequest) -> Result<Vec<u8>, ApiError> {
    let target = Target {
        dep,
        format: Format::Gemini,
    };
    let hub = crate::chat::request::decode(req, &target)?;
    request::encode(&hub, &target, req.body.len())
}

/// A `generateContent` response → an OpenAI `chat.completion`.
pub fn translate_response(model: &str, body: &[u8]) -> Result<Bytes, ApiError> {
    crate::chat::response::encode(response::decode(model, body)?)
}

/// Gemini SSE → OpenAI chunks.
pub type GeminiStream = Translate<GeminiDecoder, ChatEncoder>;

impl GeminiStream {
    pub fn new(model: String, include_usage: bool) -> Self {
        Translate {
            dec: GeminiDecoder::default(),
            enc: ChatEncoder::new(model, include_usage),
        }
    }
}

/// Gemini `finishReason` → OpenAI `finish_reason`.
pub fn finish_reason(reason: Option<&str>, tool_calls: bool) -> &'static str {
    crate::chat::response::finish_reason(response::stop_reason(reason, tool_calls))
}

/// The `batchEmbedContents` body for an OpenAI embeddings request.
pub fn translate_embeddings_request(
    dep: &Upstream,
    req: &ClientRequest,
) -> Result<Vec<u8>, ApiError> {
    let mut m = body_object(req)?;
    let inputs: Vec<String> = match m.remove("input") {
        Some(Value::String(s)) => vec![s],
        Some(Value::Array(items)) if !items.is_empty() => items
            .into_iter()
            .map(|v| match v {
                Value::String(s) => Ok(s),
                _ => Err(invalid(
                    "input",
                    "gemini embeds text only: expected a string or an array of strings",
                )),
            })
            .collect::<Result<_, _>>()?,
        _ => {
            return Err(invalid(
                "input",
                "expected a non-empty string or array of strings",
            ))
        }
    };
    m.remove("model");
    let mut dims: Option<Value> = None;
    let mut rejected = Vec::new();
    for (k, v) in m {
        match k.as_str() {
            "dimensions" => dims = (!v.is_null()).then_some(v),
            // Honoured when the response is translated.
            "encoding_format" => {
                EmbeddingFormat::of_value(Some(&v))?;
            }
            "user" => {}
            _ if is_default(&k, &v) => {}
            _ => rejected.push(k),
        }
    }
    unsupported_all(dep, NAME, &mut rejected)?;
    let model = model_path(&dep.model);
    let requests: Vec<Value> = inputs
        .into_iter()
        .map(|text| {
            let mut r = Map::new();
            r.insert("model".into(), Value::String(model.clone()));
            r.insert("content".into(), json!({ "parts": [{ "text": text }] }));
            if let Some(d) = &dims {
                r.insert("outputDimensionality".into(), d.clone());
            }
            Value::Object(r)
        })
        .collect();
    serde_json::to_vec(&json!({ "requests": requests }))
        .map_err(|e| ApiError::internal(format!("serialising: {e}")))
}

#[derive(Deserialize)]
struct EmbedResponse {
    #[serde(default)]
    embeddings: Vec<EmbedValues>,
}

#[derive(Deserialize)]
struct EmbedValues {
    #[serde(default)]
    values: Vec<f64>,
}

/// A `batchEmbedContents` response → an OpenAI embedding list, each vector in the
/// `encoding_format` the client asked for. Gemini reports no token counts for embeddings,
/// so usage is zero.
pub fn translate_embeddings_response(
    model: &str,
    body: &[u8],
    format: EmbeddingFormat,
) -> Result<Bytes, ApiError> {
    let resp: EmbedResponse = serde_json::from_slice(body).map_err(|e| t::bad_body(NAME, e))?;
    #[derive(serde::Serialize)]
    struct Item {
        object: &'static str,
        index: usize,
        embedding: Value,
    }
    let data: Vec<Item> = resp
        .embeddings
        .into_iter()
        .enumerate()
        .map(|(index, e)| Item {
            object: "embedding",
            index,
            embedding: format.encode(e.values),
        })
        .collect();
    serde_json::to_vec(&json!({
        "object": "list",
        "data": data,
        "model": model,
        "usage": { "prompt_tokens": 0, "total_tokens": 0 }
    }))
    .map(Bytes::from)
    .map_err(|e| ApiError::internal(format!("serialising: {e}")))
}

// ---------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------

#[derive(Deserialize, Default)]
pub(crate) struct GError {
    #[serde(default)]
    code: Option<u16>,
    #[serde(default)]
    message: String,
    #[serde(default)]
    status: String,
    #[serde(default)]
    details: Vec<Value>,
}

#[derive(Deserialize)]
struct GErrorEnvelope {
    error: GError,
}

/// A Gemini (Google API) error response → error class and an OpenAI-shaped error.
pub fn map_error(status: StatusCode, headers: &HeaderMap, body: &[u8]) -> UpstreamError {
    let retry_after = crate::upstream_error::retry_after(headers);
    match serde_json::from_slice::<GErrorEnvelope>(body) {
        Ok(env) => from_gerror(env.error, status, retry_after),
        Err(_) => {
            let mut e = crate::upstream_error::openai_style_error(status, headers, body);
            e.raw_body = None;
            e
        }
    }
}

/// `RetryInfo.retryDelay` ("30s", "1.5s") from a Google error's details.
fn retry_delay(details: &[Value]) -> Option<std::time::Duration> {
    details.iter().find_map(|d| {
        let kind = d.get("@type")?.as_str()?;
        if !kind.ends_with("RetryInfo") {
            return None;
        }
        let s = d.get("retryDelay")?.as_str()?.strip_suffix('s')?;
        llmgw_core::duration::clamp_secs_f64(s.parse().ok()?)
    })
}

pub(crate) fn from_gerror(
    err: GError,
    status: StatusCode,
    retry_after: Option<std::time::Duration>,
) -> UpstreamError {
    use ErrorClass as C;
    let http = err
        .code
        .filter(|c| (400..600).contains(c))
        .unwrap_or(status.as_u16());
    let lower = err.message.to_ascii_lowercase();
    let key_invalid = lower.contains("api key")
        || err
            .details
            .iter()
            .any(|d| d.get("reason").and_then(Value::as_str) == Some("API_KEY_INVALID"));
    let gstatus = if err.status.is_empty() {
        match http {
            400 => "INVALID_ARGUMENT",
            401 => "UNAUTHENTICATED",
            403 => "PERMISSION_DENIED",
            404 => "NOT_FOUND",
            429 => "RESOURCE_EXHAUSTED",
            503 => "UNAVAILABLE",
            504 => "DEADLINE_EXCEEDED",
            _ => "INTERNAL",
        }
    } else {
        err.status.as_str()
    };
    let (class, client, otype, code): (C, u16, &'static str, Option<&str>) = match gstatus {
        "INVALID_ARGUMENT" | "FAILED_PRECONDITION" | "OUT_OF_RANGE" if key_invalid => (
            C::Authentication,
            401,
            "authentication_error",
            Some("invalid_api_key"),
        ),
        "INVALID_ARGUMENT" | "FAILED_PRECONDITION" | "OUT_OF_RANGE"
            if lower.contains("exceeds the maximum number of tokens")
                || lower.contains("input token count")
                || lower.contains("context window")
                || lower.contains("context length") =>
        {
            (
                C::ContextWindow,
                400,
                "invalid_request_error",
                Some("context_length_exceeded"),
            )
        }
        "INVALID_ARGUMENT" | "FAILED_PRECONDITION" | "OUT_OF_RANGE" => {
            (C::BadRequest, 400, "invalid_request_error", None)
        }
        "UNAUTHENTICATED" => (
            C::Authentication,
            401,
            "authentication_error",
            Some("invalid_api_key"),
        ),
        "PERMISSION_DENIED" => (C::Authentication, 403, "permission_error", None),
        "NOT_FOUND" => (C::NotFound, 404, "invalid_request_error", None),
        "RESOURCE_EXHAUSTED" => (
            C::RateLimit,
            429,
            "rate_limit_error",
            Some("rate_limit_exceeded"),
        ),
        "UNAVAILABLE" => (C::ServiceUnavailable, 503, "service_unavailable", None),
        "DEADLINE_EXCEEDED" => (C::Timeout, 504, "timeout_error", Some("upstream_timeout")),
        _ => (
            C::InternalServer,
            if http >= 500 { http } else { 500 },
            "upstream_error",
            None,
        ),
    };
    let retry_after = retry_after.or_else(|| retry_delay(&err.details));
    let message = if err.message.is_empty() {
        format!("gemini returned {gstatus}")
    } else {
        format!("gemini: {}", err.message)
    };
    let status = StatusCode::from_u16(client).unwrap_or(StatusCode::BAD_GATEWAY);
    UpstreamError::mapped(class, status, otype, message, code, retry_after)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::translate::testing::{assemble, client, deployment, events, request};
    use crate::upstream::StreamTranslator;
    use bytes::BytesMut;
    use llmgw_core::config::ProviderKind;

    fn dep() -> Upstream {
        deployment(ProviderKind::Gemini, "gemini-test", false)
    }

    fn translate(dep: &Upstream, body: Value) -> Result<Value, ApiError> {
        let req = request(Endpoint::ChatCompletions, body);
        translate_request(dep, &req).map(|b| serde_json::from_slice(&b).unwrap())
    }

    #[test]
    fn plain_chat_request_and_urls() {
        let body = json!({"model": "g", "messages": [{"role": "user", "content": "Hi"}]});
        assert_eq!(
            translate(&dep(), body.clone()).unwrap(),
            json!({"contents": [{"role": "user", "parts": [{"text": "Hi"}]}]})
        );
        let d = dep();
        let r = crate::convert::request(&client(), &d, &request(Endpoint::ChatCompletions, body))
            .unwrap()
            .build()
            .unwrap();
        assert_eq!(
            r.url().as_str(),
            "http://127.0.0.1:9/v1/models/gemini-test:generateContent"
        );
        assert!(r.headers()["x-goog-api-key"].is_sensitive());
        let stream =
            json!({"model": "g", "stream": true, "messages": [{"role": "user", "content": "Hi"}]});
        let r = crate::convert::request(&client(), &d, &request(Endpoint::ChatCompletions, stream))
            .unwrap()
            .build()
            .unwrap();
        assert_eq!(
            r.url().as_str(),
            "http://127.0.0.1:9/v1/models/gemini-test:streamGenerateContent?alt=sse"
        );
        assert!(!r.url().as_str().contains("sk-test"));
        let completions = request(Endpoint::Completions, json!({"model": "g", "prompt": "x"}));
        assert!(crate::convert::request(&client(), &d, &completions).is_err());
    }

    #[test]
    fn multi_turn_with_system_prompt() {
        let out = translate(
            &dep(),
            json!({"model": "g", "temperature": 0.3, "top_p": 0.8, "max_tokens": 50,
            "stop": ["a", "b"], "n": 2, "seed": 5,
            "response_format": {"type": "json_object"},
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello!"},
                {"role": "user", "content": "Bye"},
                {"role": "user", "content": [{"type": "text", "text": "now"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBO"}}]}
            ]}),
        )
        .unwrap();
        assert_eq!(
            out["systemInstruction"],
            json!({"parts": [{"text": "Be brief."}]})
        );
        assert_eq!(
            out["generationConfig"],
            json!({"temperature": 0.3, "topP": 0.8, "maxOutputTokens": 50,
                "stopSequences": ["a", "b"], "candidateCount": 2, "seed": 5,
                "responseMimeType": "application/json"})
        );
        let c = out["contents"].as_array().unwrap();
        assert_eq!(c.len(), 3);
        assert_eq!(c[1]["role"], "model");
        assert_eq!(
            c[2]["parts"],
            json!([{"text": "Bye"}, {"text": "now"}, {"inlineData": {"mimeType": "image/png", "data": "iVBO"}}])
        );
    }

    #[test]
    fn tool_call_and_tool_result_request() {
        let out = translate(
            &dep(),
            json!({"model": "g",
                "tools": [{"type": "function", "function": {"name": "get_weather", "description": "Weather",
                    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "additionalProperties": false}}}],
                "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
                "messages": [
                    {"role": "user", "content": "Weather in Paris?"},
                    {"role": "assistant", "content": null, "tool_calls": [
                        {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}]},
                    {"role": "tool", "tool_call_id": "call_1", "content": "{\"temp\": 18}"},
                    {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}
                ]}),
        )
        .unwrap();
        assert_eq!(
            out["tools"],
            json!([{"functionDeclarations": [{"name": "get_weather", "description": "Weather",
                "parametersJsonSchema": {"type": "object", "properties": {"city": {"type": "string"}}, "additionalProperties": false}}]}])
        );
        assert_eq!(
            out["toolConfig"],
            json!({"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["get_weather"]}})
        );
        let c = out["contents"].as_array().unwrap();
        assert_eq!(
            c[1],
            json!({"role": "model", "parts": [{"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}}]})
        );
        assert_eq!(
            c[2],
            json!({"role": "user", "parts": [
                {"functionResponse": {"name": "get_weather", "response": {"temp": 18}}},
                {"functionResponse": {"name": "get_weather", "response": {"content": "sunny"}}}]})
        );
        let e = translate(
            &dep(),
            json!({"model": "g", "messages": [{"role": "tool", "tool_call_id": "nope", "content": "x"}]}),
        )
        .unwrap_err();
        assert_eq!(e.param.as_deref(), Some("messages[0].tool_call_id"));
        for (choice, mode) in [("auto", "AUTO"), ("none", "NONE"), ("required", "ANY")] {
            let out = translate(
                &dep(),
                json!({"model": "g", "tool_choice": choice, "messages": [{"role": "user", "content": "x"}]}),
            )
            .unwrap();
            assert_eq!(out["toolConfig"]["functionCallingConfig"]["mode"], mode);
        }
    }

    #[test]
    fn unsupported_params_rejected_or_dropped() {
        let body = json!({"model": "g", "logprobs": true, "top_logprobs": 2, "messages": [{"role": "user", "content": "x"}]});
        let e = translate(&dep(), body.clone()).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("logprobs"));
        assert!(e.message.contains("top_logprobs"));
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        let out = translate(&deployment(ProviderKind::Gemini, "m", true), body).unwrap();
        assert!(out.get("logprobs").is_none() && out.get("generationConfig").is_none());
        // logprobs: false asks for nothing and is accepted.
        translate(
            &dep(),
            json!({"model": "g", "logprobs": false, "messages": [{"role": "user", "content": "x"}]}),
        )
        .unwrap();
    }

    #[test]
    fn responses_and_finish_reasons() {
        let body = br#"{"candidates":[{"content":{"parts":[{"text":"Hello"},{"text":" there"}],"role":"model"},"finishReason":"STOP","index":0}],
            "usageMetadata":{"promptTokenCount":8,"candidatesTokenCount":6,"totalTokenCount":14,"cachedContentTokenCount":2},
            "modelVersion":"gemini-test-001","responseId":"resp-1"}"#;
        let v: Value =
            serde_json::from_slice(&translate_response("gemini-test", body).unwrap()).unwrap();
        assert_eq!(v["id"], "resp-1");
        assert_eq!(v["model"], "gemini-test-001");
        assert_eq!(v["choices"][0]["message"]["content"], "Hello there");
        assert_eq!(v["choices"][0]["finish_reason"], "stop");
        assert_eq!(
            v["usage"],
            json!({"prompt_tokens": 8, "completion_tokens": 6, "total_tokens": 14,
                "prompt_tokens_details": {"cached_tokens": 2}})
        );
        let body = br#"{"candidates":[{"content":{"parts":[{"functionCall":{"name":"get_weather","args":{"city":"Paris"}}}],"role":"model"},"finishReason":"STOP"}],
            "usageMetadata":{"promptTokenCount":3,"candidatesTokenCount":4,"totalTokenCount":7}}"#;
        let v: Value =
            serde_json::from_slice(&translate_response("gemini-test", body).unwrap()).unwrap();
        let m = &v["choices"][0]["message"];
        assert!(m["content"].is_null());
        assert_eq!(m["tool_calls"][0]["function"]["name"], "get_weather");
        assert_eq!(
            m["tool_calls"][0]["function"]["arguments"],
            "{\"city\":\"Paris\"}"
        );
        assert!(m["tool_calls"][0]["id"]
            .as_str()
            .unwrap()
            .starts_with("call_"));
        assert_eq!(v["choices"][0]["finish_reason"], "tool_calls");
        for (reason, want) in [
            ("STOP", "stop"),
            ("MAX_TOKENS", "length"),
            ("SAFETY", "content_filter"),
            ("RECITATION", "content_filter"),
            ("BLOCKLIST", "content_filter"),
            ("PROHIBITED_CONTENT", "content_filter"),
            ("SPII", "content_filter"),
            ("OTHER", "stop"),
        ] {
            let body = format!(
                r#"{{"candidates":[{{"content":{{"parts":[{{"text":"x"}}]}},"finishReason":"{reason}"}}]}}"#
            );
            let v: Value =
                serde_json::from_slice(&translate_response("m", body.as_bytes()).unwrap()).unwrap();
            assert_eq!(v["choices"][0]["finish_reason"], want, "{reason}");
        }
        let blocked = br#"{"promptFeedback":{"blockReason":"SAFETY"},"usageMetadata":{"promptTokenCount":3}}"#;
        let v: Value = serde_json::from_slice(&translate_response("m", blocked).unwrap()).unwrap();
        assert_eq!(v["choices"][0]["finish_reason"], "content_filter");
        assert!(translate_response("m", b"{oops").is_err());
    }

    const TEXT_STREAM: &str = "data: {\"candidates\": [{\"content\": {\"parts\": [{\"text\": \"Grüße\"}],\"role\": \"model\"},\"index\": 0}],\"usageMetadata\": {\"promptTokenCount\": 8,\"totalTokenCount\": 8},\"modelVersion\": \"gemini-test\"}\r\n\r\ndata: {\"candidates\": [{\"content\": {\"parts\": [{\"text\": \", quick brown 🦊\"}],\"role\": \"model\"},\"index\": 0}],\"usageMetadata\": {\"promptTokenCount\": 8,\"totalTokenCount\": 8},\"modelVersion\": \"gemini-test\"}\r\n\r\ndata: {\"candidates\": [{\"content\": {\"parts\": [{\"text\": \" jumps.\"}],\"role\": \"model\"},\"finishReason\": \"STOP\",\"index\": 0}],\"usageMetadata\": {\"promptTokenCount\": 8,\"candidatesTokenCount\": 6,\"totalTokenCount\": 14},\"modelVersion\": \"gemini-test\"}\r\n\r\n";

    const TOOL_STREAM: &str = "data: {\"candidates\": [{\"content\": {\"parts\": [{\"functionCall\": {\"name\": \"get_weather\",\"args\": {\"city\": \"Paris\"}}}],\"role\": \"model\"},\"finishReason\": \"STOP\",\"index\": 0}],\"usageMetadata\": {\"promptTokenCount\": 20,\"candidatesTokenCount\": 5,\"totalTokenCount\": 25}}\r\n\r\n";

    fn run(stream: &[u8], pieces: &[usize], include_usage: bool) -> Result<Vec<u8>, UpstreamError> {
        let mut tr = GeminiStream::new("gemini-test".into(), include_usage);
        let mut out = BytesMut::new();
        let mut at = 0;
        for &p in pieces.iter().chain(std::iter::once(&stream.len())) {
            tr.feed(&stream[at..p], &mut out)?;
            at = p;
        }
        tr.finish(&mut out)?;
        Ok(out.to_vec())
    }

    #[test]
    fn streaming_text_split_anywhere() {
        let s = TEXT_STREAM.as_bytes();
        let whole = events(&run(s, &[], false).unwrap());
        let (text, _, finish) = assemble(&whole);
        assert_eq!(text, "Grüße, quick brown 🦊 jumps.");
        assert_eq!(finish.as_deref(), Some("stop"));
        assert_eq!(whole[0]["choices"][0]["delta"]["role"], "assistant");
        assert_eq!(whole.last().unwrap(), "[DONE]");
        assert!(whole.iter().all(|e| e.get("usage").is_none()));
        for cut in 1..s.len() {
            let got = events(&run(s, &[cut], false).unwrap());
            assert_eq!(assemble(&got), assemble(&whole), "split at byte {cut}");
        }
        let bytewise: Vec<usize> = (1..s.len()).collect();
        assert_eq!(
            assemble(&events(&run(s, &bytewise, false).unwrap())),
            assemble(&whole)
        );
    }

    #[test]
    fn streaming_usage_with_include_usage() {
        let ev = events(&run(TEXT_STREAM.as_bytes(), &[], true).unwrap());
        let n = ev.len();
        assert_eq!(ev[n - 1], "[DONE]");
        assert_eq!(ev[n - 2]["choices"], json!([]));
        assert_eq!(
            ev[n - 2]["usage"],
            json!({"prompt_tokens": 8, "completion_tokens": 6, "total_tokens": 14})
        );
        assert!(ev[..n - 2].iter().all(|e| e["usage"].is_null()));
    }

    #[test]
    fn streaming_tool_call() {
        let ev = events(&run(TOOL_STREAM.as_bytes(), &[40], false).unwrap());
        let (text, tools, finish) = assemble(&ev);
        assert_eq!(text, "");
        assert_eq!(tools.len(), 1);
        assert!(tools[0].0.starts_with("call_"));
        assert_eq!(tools[0].1, "get_weather");
        assert_eq!(tools[0].2, "{\"city\":\"Paris\"}");
        assert_eq!(finish.as_deref(), Some("tool_calls"));
    }

    #[test]
    fn stream_errors() {
        let err = "data: {\"candidates\": [{\"content\": {\"parts\": [{\"text\": \"a\"}]}}]}\r\n\r\ndata: {\"error\": {\"code\": 503, \"message\": \"The model is overloaded.\", \"status\": \"UNAVAILABLE\"}}\r\n\r\n";
        let e = run(err.as_bytes(), &[], false).unwrap_err();
        assert_eq!(e.class, ErrorClass::ServiceUnavailable);
        // Ended without a finish reason.
        let cut = &TEXT_STREAM.as_bytes()[..TEXT_STREAM.len() - 200];
        assert!(run(cut, &[], false).is_err());
        assert!(run(b"", &[], false).is_err());
        assert!(run(b"data: {oops\n\n", &[], false).is_err());
    }

    #[test]
    fn request_details_kept() {
        let out = translate(
            &dep(),
            json!({"model": "g", "presence_penalty": 0.5, "frequency_penalty": -0.5, "top_k": 3,
                "n": 1, "user": 7, "stop": null, "max_tokens": null, "max_completion_tokens": 9,
                "response_format": {"type": "json_schema", "json_schema": {"name": "x",
                    "schema": {"type": "object", "properties": {"a": {"type": "integer"}}}}},
                "tools": [{"type": "function", "function": {"name": "f", "parameters": "none"}}],
                "messages": [
                    {"role": "developer", "content": [{"type": "text", "text": "Be"}, " brief"]},
                    {"role": "user", "content": [
                        {"type": "image_url", "image_url": "gs://bucket/a.webp"},
                        {"type": "image_url", "image_url": {"url": "data:;base64,AAAA"}},
                        {"type": "text", "text": ""}]},
                    {"role": "assistant", "content": [{"type": "text", "text": "a"}, {"type": "refusal", "refusal": "b"}],
                        "tool_calls": [{"id": "x1", "function": {"name": "g", "arguments": {"k": 1}}}]},
                    {"role": "tool", "tool_call_id": "x1", "content": [{"type": "text", "text": "[1]"}]},
                    {"role": "tool", "tool_call_id": "unknown", "name": "h", "content": "{\"ok\": true}"}
                ]}),
        )
        .unwrap();
        assert_eq!(
            out["generationConfig"],
            json!({"maxOutputTokens": 9, "presencePenalty": 0.5, "frequencyPenalty": -0.5,
                "topK": 3, "responseMimeType": "application/json",
                "responseJsonSchema": {"type": "object", "properties": {"a": {"type": "integer"}}}})
        );
        assert_eq!(
            out["tools"],
            json!([{"functionDeclarations": [{"name": "f"}]}])
        );
        assert_eq!(
            out["systemInstruction"],
            json!({"parts": [{"text": "Be brief"}]})
        );
        let c = out["contents"].as_array().unwrap();
        assert_eq!(
            c[0],
            json!({"role": "user", "parts": [
                {"fileData": {"mimeType": "image/webp", "fileUri": "gs://bucket/a.webp"}},
                {"inlineData": {"mimeType": "image/png", "data": "AAAA"}}]})
        );
        assert_eq!(
            c[1],
            json!({"role": "model", "parts": [{"text": "ab"},
                {"functionCall": {"name": "g", "args": {"k": 1}}}]})
        );
        assert_eq!(
            c[2],
            json!({"role": "user", "parts": [
                {"functionResponse": {"name": "g", "response": {"content": "[1]"}}},
                {"functionResponse": {"name": "h", "response": {"ok": true}}}]})
        );
        let out = translate(
            &dep(),
            json!({"model": "g", "response_format": {"type": "text"}, "messages": []}),
        )
        .unwrap();
        assert_eq!(out, json!({"contents": []}));
    }

    #[test]
    fn malformed_requests_name_the_field() {
        let cases = [
            (json!({"model": "g", "messages": "hi"}), "messages"),
            (
                json!({"model": "g", "messages": [{"role": "user", "content": true}]}),
                "messages[0].content",
            ),
            (
                json!({"model": "g", "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "file:///x"}}]}]}),
                "messages[0].content[0]",
            ),
            (
                json!({"model": "g", "messages": [{"role": "assistant", "content": ["x"]}]}),
                "messages[0].content[0]",
            ),
            (
                json!({"model": "g", "messages": [{"role": "assistant", "content": [{"type": "image_url"}]}]}),
                "messages[0].content[0]",
            ),
            (
                json!({"model": "g", "messages": [{"role": "assistant", "content": 1}]}),
                "messages[0].content",
            ),
            (
                json!({"model": "g", "messages": [{"role": "assistant", "tool_calls": [{"id": "a", "function": {"name": "f", "arguments": "{x"}}]}]}),
                "messages[0].tool_calls[0].function.arguments",
            ),
            (
                json!({"model": "g", "messages": [{"role": "tool", "tool_call_id": 5, "content": "x"}]}),
                "messages[0].tool_call_id",
            ),
            (json!({"model": "g", "n": 0, "messages": []}), "n"),
            (json!({"model": "g", "n": "2", "messages": []}), "n"),
            (
                json!({"model": "g", "response_format": "json", "messages": []}),
                "response_format",
            ),
            (
                json!({"model": "g", "response_format": {"type": "yaml"}, "messages": []}),
                "response_format",
            ),
            (
                json!({"model": "g", "response_format": {}, "messages": []}),
                "response_format",
            ),
            (
                json!({"model": "g", "tool_choice": "sometimes", "messages": []}),
                "tool_choice",
            ),
            (
                json!({"model": "g", "tool_choice": {"function": {"name": 1}}, "messages": []}),
                "tool_choice",
            ),
            (
                json!({"model": "g", "tools": [{"function": {"name": "f", "strict": true}}], "messages": []}),
                "tools[0].function.strict",
            ),
            (
                json!({"model": "g", "stop": [null], "messages": []}),
                "stop",
            ),
        ];
        for (body, param) in cases {
            let e = translate(&dep(), body.clone()).expect_err(&body.to_string());
            assert_eq!(e.status, StatusCode::BAD_REQUEST, "{body}");
            assert_eq!(e.param.as_deref(), Some(param), "{body}: {}", e.message);
        }
    }

    #[test]
    fn stream_thoughts_and_escapes() {
        let s = "data: {\"candidates\":[{\"content\":{\"parts\":[{\"text\":\"plan \\\"x\\\"\",\"thought\":true},{\"text\":\"A\\u00e9\\n\"}]},\"index\":0}],\"responseId\":\"r\\/1\"}\n\n\
            data: {\"candidates\":[{\"content\":{\"parts\":[]},\"finishReason\":\"MAX_TOKENS\",\"index\":0}],\"usageMetadata\":{\"promptTokenCount\":2,\"candidatesTokenCount\":3,\"thoughtsTokenCount\":1,\"totalTokenCount\":6}}\n\n\
            data: [DONE]\n\n";
        let ev = events(&run(s.as_bytes(), &[], true).unwrap());
        assert_eq!(ev[0]["id"], "r/1");
        assert_eq!(ev[0]["model"], "gemini-test");
        assert_eq!(
            ev[1]["choices"][0]["delta"]["reasoning_content"],
            "plan \"x\""
        );
        assert_eq!(ev[2]["choices"][0]["delta"]["content"], "Aé\n");
        assert_eq!(ev[3]["choices"][0]["finish_reason"], "length");
        assert_eq!(
            ev[4]["usage"],
            json!({"prompt_tokens": 2, "completion_tokens": 4, "total_tokens": 6,
                "completion_tokens_details": {"reasoning_tokens": 1}})
        );
        assert_eq!(ev[5], "[DONE]");
        // A blocked prompt ends the stream with content_filter.
        let blocked = "data: {\"promptFeedback\":{\"blockReason\":\"SAFETY\"}}\n\n";
        let ev = events(&run(blocked.as_bytes(), &[], false).unwrap());
        assert_eq!(ev[1]["choices"][0]["finish_reason"], "content_filter");
        assert!(run(b"data: {\"candidates\": 5}\n\n", &[], false).is_err());
    }

    #[test]
    fn error_mapping() {
        let h = HeaderMap::new();
        let e = map_error(
            StatusCode::TOO_MANY_REQUESTS,
            &h,
            br#"{"error":{"code":429,"message":"Resource has been exhausted (e.g. check quota).","status":"RESOURCE_EXHAUSTED",
              "details":[{"@type":"type.googleapis.com/google.rpc.RetryInfo","retryDelay":"21s"}]}}"#,
        );
        assert_eq!(e.class, ErrorClass::RateLimit);
        assert_eq!(e.error.status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(e.retry_after, Some(std::time::Duration::from_secs(21)));
        let e = map_error(
            StatusCode::BAD_REQUEST,
            &h,
            br#"{"error":{"code":400,"message":"API key not valid. Please pass a valid API key.","status":"INVALID_ARGUMENT",
              "details":[{"@type":"type.googleapis.com/google.rpc.ErrorInfo","reason":"API_KEY_INVALID"}]}}"#,
        );
        assert_eq!(e.class, ErrorClass::Authentication);
        assert_eq!(e.error.status, StatusCode::UNAUTHORIZED);
        for (status, gstatus, msg, class) in [
            (503, "UNAVAILABLE", "The model is overloaded.", ErrorClass::ServiceUnavailable),
            (400, "INVALID_ARGUMENT", "Invalid JSON payload received.", ErrorClass::BadRequest),
            (400, "INVALID_ARGUMENT", "The input token count (1200000) exceeds the maximum number of tokens allowed (1048576).", ErrorClass::ContextWindow),
            (403, "PERMISSION_DENIED", "denied", ErrorClass::Authentication),
            (404, "NOT_FOUND", "models/x is not found", ErrorClass::NotFound),
            (500, "INTERNAL", "An internal error has occurred.", ErrorClass::InternalServer),
            (504, "DEADLINE_EXCEEDED", "Deadline", ErrorClass::Timeout),
        ] {
            let body = format!(r#"{{"error":{{"code":{status},"message":"{msg}","status":"{gstatus}"}}}}"#);
            let e = map_error(StatusCode::from_u16(status).unwrap(), &h, body.as_bytes());
            assert_eq!(e.class, class, "{gstatus}");
            assert_eq!(e.error.status.as_u16(), status, "{gstatus}");
            assert!(e.raw_body.is_none());
        }
        let e = map_error(StatusCode::BAD_GATEWAY, &h, b"<html>bad gateway</html>");
        assert_eq!(e.class, ErrorClass::InternalServer);
    }

    #[test]
    fn embeddings_round_trip() {
        let d = dep();
        let req = request(
            Endpoint::Embeddings,
            json!({"model": "g", "input": ["a", "b"], "dimensions": 3, "encoding_format": "float"}),
        );
        let body: Value =
            serde_json::from_slice(&translate_embeddings_request(&d, &req).unwrap()).unwrap();
        assert_eq!(
            body,
            json!({"requests": [
                {"model": "models/gemini-test", "content": {"parts": [{"text": "a"}]}, "outputDimensionality": 3},
                {"model": "models/gemini-test", "content": {"parts": [{"text": "b"}]}, "outputDimensionality": 3}]})
        );
        let r = crate::convert::request(&client(), &d, &req)
            .unwrap()
            .build()
            .unwrap();
        assert!(r
            .url()
            .as_str()
            .ends_with("/models/gemini-test:batchEmbedContents"));
        let single = request(Endpoint::Embeddings, json!({"model": "g", "input": "a"}));
        let body: Value =
            serde_json::from_slice(&translate_embeddings_request(&d, &single).unwrap()).unwrap();
        assert_eq!(body["requests"].as_array().unwrap().len(), 1);
        let tokens = request(Endpoint::Embeddings, json!({"model": "g", "input": [1, 2]}));
        assert!(translate_embeddings_request(&d, &tokens).is_err());
        let out: Value = serde_json::from_slice(
            &translate_embeddings_response(
                "gemini-test",
                br#"{"embeddings":[{"values":[0.1,0.2]},{"values":[0.3,0.4]}]}"#,
                EmbeddingFormat::Float,
            )
            .unwrap(),
        )
        .unwrap();
        assert_eq!(out["object"], "list");
        assert_eq!(
            out["data"][1],
            json!({"object": "embedding", "index": 1, "embedding": [0.3, 0.4]})
        );
    }

    /// The OpenAI SDKs ask for base64 unless told otherwise: little-endian float32 bytes.
    #[test]
    fn embeddings_in_base64() {
        let d = dep();
        let req = request(
            Endpoint::Embeddings,
            json!({"model": "g", "input": "a", "encoding_format": "base64"}),
        );
        assert!(translate_embeddings_request(&d, &req).is_ok());
        let format = EmbeddingFormat::of_request(&req.body).unwrap();
        assert_eq!(format, EmbeddingFormat::Base64);
        let out: Value = serde_json::from_slice(
            &translate_embeddings_response(
                "gemini-test",
                br#"{"embeddings":[{"values":[1.0,-2.5,0.1]}]}"#,
                format,
            )
            .unwrap(),
        )
        .unwrap();
        use base64::Engine as _;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(out["data"][0]["embedding"].as_str().unwrap())
            .unwrap();
        let floats: Vec<f32> = bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        assert_eq!(floats, [1.0, -2.5, 0.1f32]);
        for bad in [json!("int8"), json!(1)] {
            let req = request(
                Endpoint::Embeddings,
                json!({"model": "g", "input": "a", "encoding_format": bad}),
            );
            let err = translate_embeddings_request(&d, &req).unwrap_err();
            assert_eq!(err.status.as_u16(), 400);
            assert_eq!(err.param.as_deref(), Some("encoding_format"), "{err:?}");
        }
    }
}
