//! Anthropic Messages API (`POST {api_base}/messages`, `/messages/count_tokens`).
//!
//! An Anthropic client's request goes up as its own bytes with only the model id
//! spliced, with its `anthropic-version` and `anthropic-beta` headers; its answer comes
//! back untouched. Other clients' requests are translated through the hub
//! ([`request`]: system messages become the top-level `system`, turns of the same role
//! are merged, tool calls and results become `tool_use`/`tool_result` blocks,
//! `max_tokens` is always sent) and so are the answers ([`response`], and [`stream`]
//! for Anthropic's named SSE events).

pub mod request;
pub mod response;
pub mod stream;

use crate::chat::stream::ChatEncoder;
use crate::hub::{Format, Target, Translate};
use crate::request::{ClientRequest, Endpoint};
use crate::translate::secret_header;
use crate::upstream::Provider;
use crate::upstream::Upstream;
use crate::upstream_error::UpstreamError;
use axum::http::{HeaderMap, StatusCode};
use bytes::Bytes;
use llmgw_core::config::ErrorClass;
use llmgw_core::error::ApiError;
use reqwest::header::{HeaderValue, CONTENT_TYPE};
use serde::Deserialize;
use stream::AnthropicDecoder;

const NAME: &str = "anthropic";
/// The API version this translation follows (and sent when the client names none).
pub const API_VERSION: &str = "2023-06-01";
/// `max_tokens` when neither the request nor the deployment sets one.
pub const DEFAULT_MAX_TOKENS: u64 = 4096;

/// The Anthropic Messages provider.
pub struct Anthropic;

impl Provider for Anthropic {
    fn wire(&self, _: &Upstream, _: &ClientRequest) -> Format {
        Format::Anthropic
    }

    fn request(
        &self,
        client: &reqwest::Client,
        dep: &Upstream,
        req: &ClientRequest,
        body: Bytes,
    ) -> Result<reqwest::RequestBuilder, ApiError> {
        let path = match req.endpoint {
            Endpoint::CountTokens => "count_tokens",
            e if e.chat_format().is_some() => "",
            _ => {
                return Err(ApiError::bad_request(format!(
                    "deployment {} (anthropic) serves chat (/v1/chat/completions, /v1/messages, \
                     /v1/responses) and /v1/messages/count_tokens, not /v1/{}",
                    dep.id,
                    req.endpoint.path()
                ))
                .with_code("unsupported_endpoint"))
            }
        };
        let url = if path.is_empty() {
            format!("{}/messages", dep.api_base)
        } else {
            format!("{}/messages/{path}", dep.api_base)
        };
        let version = req
            .forwarded
            .anthropic_version
            .clone()
            .unwrap_or(HeaderValue::from_static(API_VERSION));
        let mut rb = client
            .post(url)
            .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
            .header("anthropic-version", version)
            .body(body);
        if let Some(beta) = &req.forwarded.anthropic_beta {
            rb = rb.header("anthropic-beta", beta.clone());
        }
        if let Some(key) = &dep.api_key {
            rb = rb.header("x-api-key", secret_header(dep, key.expose())?);
        }
        Ok(rb)
    }

    fn error(&self, status: StatusCode, headers: &HeaderMap, body: &[u8]) -> UpstreamError {
        map_error(status, headers, body)
    }
}

/// The Anthropic request body for an OpenAI chat completions request.
pub fn translate_request(dep: &Upstream, req: &ClientRequest) -> Result<Vec<u8>, ApiError> {
    let target = Target {
        dep,
        format: Format::Anthropic,
    };
    let hub = crate::chat::request::decode(req, &target)?;
    request::encode(&hub, &target, req.body.len())
}

/// A Messages response → an OpenAI `chat.completion`.
pub fn translate_response(body: &[u8]) -> Result<Bytes, ApiError> {
    crate::chat::response::encode(response::decode(body)?)
}

/// Anthropic SSE → OpenAI chunks.
pub type AnthropicStream = Translate<AnthropicDecoder, ChatEncoder>;

impl AnthropicStream {
    pub fn new(model: String, include_usage: bool) -> Self {
        Translate {
            dec: AnthropicDecoder::default(),
            enc: ChatEncoder::new(model, include_usage),
        }
    }
}

/// Anthropic `stop_reason` → OpenAI `finish_reason`.
pub fn finish_reason(stop: Option<&str>) -> &'static str {
    crate::chat::response::finish_reason(response::stop_reason(stop))
}

// ---------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------

#[derive(Deserialize)]
struct ErrorEnvelope {
    error: ErrorBody,
}

/// Anthropic's `error` object.
#[derive(Deserialize, Default)]
pub(crate) struct ErrorBody {
    #[serde(rename = "type", default)]
    pub kind: String,
    #[serde(default)]
    pub message: String,
}

/// An Anthropic error response → error class and an OpenAI-shaped client error.
pub fn map_error(status: StatusCode, headers: &HeaderMap, body: &[u8]) -> UpstreamError {
    let retry_after = crate::upstream_error::retry_after(headers);
    match serde_json::from_slice::<ErrorEnvelope>(body) {
        Ok(env) if !env.error.kind.is_empty() => {
            error_from_type(&env.error.kind, env.error.message, status, retry_after)
        }
        _ => {
            let mut e = crate::upstream_error::openai_style_error(status, headers, body);
            e.raw_body = None;
            if status.as_u16() == 529 {
                e.class = ErrorClass::ServiceUnavailable;
                e.error.status = StatusCode::SERVICE_UNAVAILABLE;
                e.error.kind = "service_unavailable";
            }
            e
        }
    }
}

fn is_context_message(m: &str) -> bool {
    let m = m.to_ascii_lowercase();
    m.contains("prompt is too long")
        || m.contains("context window")
        || m.contains("context length")
        || m.contains("too many tokens")
}

/// Maps an Anthropic error type (HTTP or in-stream) to class and client error.
pub(crate) fn error_from_type(
    kind: &str,
    message: String,
    status: StatusCode,
    retry_after: Option<std::time::Duration>,
) -> UpstreamError {
    use ErrorClass as C;
    let (class, code, otype, client_status): (C, Option<&str>, &'static str, u16) = match kind {
        "invalid_request_error" if is_context_message(&message) => (
            C::ContextWindow,
            Some("context_length_exceeded"),
            "invalid_request_error",
            400,
        ),
        "invalid_request_error" => (C::BadRequest, None, "invalid_request_error", 400),
        "authentication_error" => (
            C::Authentication,
            Some("invalid_api_key"),
            "authentication_error",
            401,
        ),
        "permission_error" => (C::Authentication, None, "permission_error", 403),
        "billing_error" => (
            C::Authentication,
            Some("billing_error"),
            "billing_error",
            402,
        ),
        "not_found_error" => (C::NotFound, None, "invalid_request_error", 404),
        "request_too_large" => (
            C::BadRequest,
            Some("request_too_large"),
            "invalid_request_error",
            413,
        ),
        "rate_limit_error" => (
            C::RateLimit,
            Some("rate_limit_exceeded"),
            "rate_limit_error",
            429,
        ),
        "overloaded_error" => (
            C::ServiceUnavailable,
            Some("overloaded"),
            "service_unavailable",
            503,
        ),
        "timeout_error" => (C::Timeout, Some("upstream_timeout"), "timeout_error", 504),
        // api_error and anything new
        _ => {
            let s = status.as_u16();
            let class = if (400..600).contains(&s) && s != 200 {
                crate::upstream_error::classify(status, message.as_bytes())
            } else {
                C::InternalServer
            };
            (
                class,
                None,
                "upstream_error",
                if s >= 400 { s } else { 502 },
            )
        }
    };
    let client_status = StatusCode::from_u16(client_status).unwrap_or(StatusCode::BAD_GATEWAY);
    let message = if message.is_empty() {
        format!("anthropic returned {kind}")
    } else {
        format!("anthropic: {message}")
    };
    UpstreamError::mapped(class, client_status, otype, message, code, retry_after)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::translate::testing::{assemble, client, deployment, events, request};
    use crate::upstream::StreamTranslator;
    use bytes::BytesMut;
    use llmgw_core::config::ProviderKind;
    use serde_json::json;
    use serde_json::Value;

    fn dep() -> Upstream {
        deployment(ProviderKind::Anthropic, "claude-test", false)
    }

    fn translate(dep: &Upstream, body: Value) -> Result<Value, ApiError> {
        let req = request(Endpoint::ChatCompletions, body);
        translate_request(dep, &req).map(|b| serde_json::from_slice(&b).unwrap())
    }

    #[test]
    fn plain_chat_request() {
        let out = translate(
            &dep(),
            json!({"model": "group", "messages": [{"role": "user", "content": "Hi"}]}),
        )
        .unwrap();
        assert_eq!(
            out,
            json!({
                "model": "claude-test",
                "max_tokens": 4096,
                "messages": [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}]
            })
        );
    }

    #[test]
    fn multi_turn_with_system_prompt() {
        let mut d = dep();
        d.max_tokens = Some(1000);
        let out = translate(
            &d,
            json!({"model": "group", "stream": true, "stream_options": {"include_usage": true},
            "temperature": 0.2, "top_p": 0.9, "stop": "END", "user": "u1", "n": 1,
            "presence_penalty": 0,
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Hi"},
                {"role": "user", "content": [{"type": "text", "text": "there"}]},
                {"role": "assistant", "content": "Hello!"},
                {"role": "developer", "content": "Use English."},
                {"role": "user", "content": "Bye"}
            ]}),
        )
        .unwrap();
        assert_eq!(
            out["system"],
            json!([{"type": "text", "text": "Be brief."}, {"type": "text", "text": "Use English."}])
        );
        assert_eq!(out["max_tokens"], 1000);
        assert_eq!(out["stream"], true);
        assert_eq!(out["temperature"], 0.2);
        assert_eq!(out["top_p"], 0.9);
        assert_eq!(out["stop_sequences"], json!(["END"]));
        assert_eq!(out["metadata"], json!({"user_id": "u1"}));
        let msgs = out["messages"].as_array().unwrap();
        assert_eq!(msgs.len(), 3, "consecutive user turns merged: {msgs:?}");
        assert_eq!(msgs[0]["role"], "user");
        assert_eq!(msgs[0]["content"].as_array().unwrap().len(), 2);
        assert_eq!(msgs[1]["role"], "assistant");
        assert_eq!(msgs[2]["content"][0]["text"], "Bye");
        // The request's own limit wins over the deployment's.
        let out = translate(
            &d,
            json!({"model": "g", "max_completion_tokens": 7, "messages": [{"role": "user", "content": "x"}]}),
        )
        .unwrap();
        assert_eq!(out["max_tokens"], 7);
    }

    #[test]
    fn tool_call_and_tool_result_request() {
        let out = translate(
            &dep(),
            json!({"model": "g",
                "tools": [{"type": "function", "function": {"name": "get_weather", "description": "Weather",
                    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}],
                "tool_choice": "required",
                "parallel_tool_calls": false,
                "messages": [
                    {"role": "user", "content": "Weather in Paris?"},
                    {"role": "assistant", "content": null, "tool_calls": [
                        {"id": "toolu_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}]},
                    {"role": "tool", "tool_call_id": "toolu_1", "content": "18C"},
                    {"role": "user", "content": "Thanks"}
                ]}),
        )
        .unwrap();
        assert_eq!(
            out["tools"],
            json!([{"name": "get_weather", "description": "Weather",
                "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}])
        );
        assert_eq!(
            out["tool_choice"],
            json!({"type": "any", "disable_parallel_tool_use": true})
        );
        let msgs = out["messages"].as_array().unwrap();
        assert_eq!(msgs.len(), 3);
        assert_eq!(
            msgs[1]["content"],
            json!([{"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}}])
        );
        assert_eq!(msgs[2]["role"], "user");
        assert_eq!(
            msgs[2]["content"][0],
            json!({"type": "tool_result", "tool_use_id": "toolu_1", "content": "18C"})
        );
        assert_eq!(msgs[2]["content"][1]["text"], "Thanks");

        for (choice, want) in [
            (json!("auto"), json!({"type": "auto"})),
            (json!("none"), json!({"type": "none"})),
            (
                json!({"type": "function", "function": {"name": "f"}}),
                json!({"type": "tool", "name": "f"}),
            ),
        ] {
            let out = translate(
                &dep(),
                json!({"model": "g", "tool_choice": choice, "messages": [{"role": "user", "content": "x"}]}),
            )
            .unwrap();
            assert_eq!(out["tool_choice"], want);
        }
    }

    #[test]
    fn images_become_image_blocks() {
        let out = translate(
            &dep(),
            json!({"model": "g", "messages": [{"role": "user", "content": [
                {"type": "text", "text": "What is this?"},
                {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,/9j/4AAQ"}},
                {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}
            ]}]}),
        )
        .unwrap();
        let c = &out["messages"][0]["content"];
        assert_eq!(
            c[1],
            json!({"type": "image", "source": {"type": "base64", "media_type": "image/jpeg", "data": "/9j/4AAQ"}})
        );
        assert_eq!(
            c[2],
            json!({"type": "image", "source": {"type": "url", "url": "https://example.com/cat.png"}})
        );
    }

    #[test]
    fn unsupported_params_rejected_or_dropped() {
        let body = json!({"model": "g", "logit_bias": {"50256": -100}, "messages": [{"role": "user", "content": "x"}]});
        let e = translate(&dep(), body.clone()).unwrap_err();
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        assert_eq!(e.param.as_deref(), Some("logit_bias"));
        assert!(e.message.contains("logit_bias") && e.message.contains("drop_params"));
        let e = translate(
            &dep(),
            json!({"model": "g", "presence_penalty": 0.5, "messages": [{"role": "user", "content": "x"}]}),
        )
        .unwrap_err();
        assert_eq!(e.param.as_deref(), Some("presence_penalty"));
        let dropping = deployment(ProviderKind::Anthropic, "claude-test", true);
        let out = translate(&dropping, body).unwrap();
        assert!(out.get("logit_bias").is_none());
        // Bad tool arguments are named, not passed on.
        let e = translate(
            &dep(),
            json!({"model": "g", "messages": [{"role": "assistant", "tool_calls": [
                {"id": "a", "type": "function", "function": {"name": "f", "arguments": "{not json"}}]}]}),
        )
        .unwrap_err();
        assert_eq!(
            e.param.as_deref(),
            Some("messages[0].tool_calls[0].function.arguments")
        );
    }

    #[test]
    fn build_sets_url_and_headers() {
        let d = dep();
        let req = request(
            Endpoint::ChatCompletions,
            json!({"model": "g", "messages": [{"role": "user", "content": "x"}]}),
        );
        let r = crate::convert::request(&client(), &d, &req)
            .unwrap()
            .build()
            .unwrap();
        assert_eq!(r.url().as_str(), "http://127.0.0.1:9/v1/messages");
        assert_eq!(r.headers()["anthropic-version"], "2023-06-01");
        assert!(r.headers()["x-api-key"].is_sensitive());
        assert!(!r.url().as_str().contains("sk-test"));
        let emb = request(Endpoint::Embeddings, json!({"model": "g", "input": "x"}));
        assert!(crate::convert::request(&client(), &d, &emb).is_err());
    }

    #[test]
    fn plain_response() {
        let body = br#"{"id":"msg_01","type":"message","role":"assistant","model":"claude-test",
            "content":[{"type":"text","text":"Hello"},{"type":"text","text":" world"}],
            "stop_reason":"end_turn","stop_sequence":null,
            "usage":{"input_tokens":10,"output_tokens":5,"cache_read_input_tokens":4,"cache_creation_input_tokens":2}}"#;
        let v: Value = serde_json::from_slice(&translate_response(body).unwrap()).unwrap();
        assert_eq!(v["object"], "chat.completion");
        assert_eq!(v["id"], "msg_01");
        assert_eq!(v["choices"][0]["message"]["content"], "Hello world");
        assert_eq!(v["choices"][0]["message"]["role"], "assistant");
        assert_eq!(v["choices"][0]["finish_reason"], "stop");
        assert_eq!(
            v["usage"],
            json!({"prompt_tokens": 16, "completion_tokens": 5, "total_tokens": 21,
                "prompt_tokens_details": {"cached_tokens": 4}})
        );
    }

    #[test]
    fn tool_use_response() {
        let body = br#"{"id":"msg_02","type":"message","role":"assistant","model":"claude-test",
            "content":[{"type":"tool_use","id":"toolu_9","name":"get_weather","input":{"city":"Paris"}}],
            "stop_reason":"tool_use","usage":{"input_tokens":3,"output_tokens":4}}"#;
        let v: Value = serde_json::from_slice(&translate_response(body).unwrap()).unwrap();
        let m = &v["choices"][0]["message"];
        assert!(m["content"].is_null());
        assert_eq!(m["tool_calls"][0]["id"], "toolu_9");
        assert_eq!(m["tool_calls"][0]["type"], "function");
        assert_eq!(m["tool_calls"][0]["function"]["name"], "get_weather");
        let args: Value = serde_json::from_str(
            m["tool_calls"][0]["function"]["arguments"]
                .as_str()
                .unwrap(),
        )
        .unwrap();
        assert_eq!(args, json!({"city": "Paris"}));
        assert_eq!(v["choices"][0]["finish_reason"], "tool_calls");
        assert!(v["usage"].get("prompt_tokens_details").is_none());
    }

    #[test]
    fn each_stop_reason() {
        for (stop, want) in [
            ("end_turn", "stop"),
            ("stop_sequence", "stop"),
            ("max_tokens", "length"),
            ("tool_use", "tool_calls"),
            ("refusal", "content_filter"),
        ] {
            let body = format!(
                r#"{{"id":"m","model":"c","content":[{{"type":"text","text":"x"}}],"stop_reason":"{stop}","usage":{{"input_tokens":1,"output_tokens":1}}}}"#
            );
            let v: Value =
                serde_json::from_slice(&translate_response(body.as_bytes()).unwrap()).unwrap();
            assert_eq!(v["choices"][0]["finish_reason"], want, "{stop}");
        }
        assert!(translate_response(b"{not json").is_err());
        assert!(translate_response(b"[1,2]").is_err());
    }

    /// The documented text stream, with multi-byte characters.
    const TEXT_STREAM: &str = "event: message_start\ndata: {\"type\": \"message_start\", \"message\": {\"id\": \"msg_1nZdL29xx5MUA1yADyHTEsnR8uuvGzszyY\", \"type\": \"message\", \"role\": \"assistant\", \"content\": [], \"model\": \"claude-test\", \"stop_reason\": null, \"stop_sequence\": null, \"usage\": {\"input_tokens\": 25, \"output_tokens\": 1}}}\n\nevent: content_block_start\ndata: {\"type\": \"content_block_start\", \"index\": 0, \"content_block\": {\"type\": \"text\", \"text\": \"\"}}\n\nevent: ping\ndata: {\"type\": \"ping\"}\n\nevent: content_block_delta\ndata: {\"type\": \"content_block_delta\", \"index\": 0, \"delta\": {\"type\": \"text_delta\", \"text\": \"Grüße\"}}\n\nevent: content_block_delta\ndata: {\"type\": \"content_block_delta\", \"index\": 0, \"delta\": {\"type\": \"text_delta\", \"text\": \", Welt 👋\"}}\n\nevent: content_block_stop\ndata: {\"type\": \"content_block_stop\", \"index\": 0}\n\nevent: message_delta\ndata: {\"type\": \"message_delta\", \"delta\": {\"stop_reason\": \"end_turn\", \"stop_sequence\":null}, \"usage\": {\"output_tokens\": 15}}\n\nevent: message_stop\ndata: {\"type\": \"message_stop\"}\n\n";

    const TOOL_STREAM: &str = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_014p7gG3wDgGV9EUtLvnow3U\",\"type\":\"message\",\"role\":\"assistant\",\"model\":\"claude-test\",\"stop_sequence\":null,\"usage\":{\"input_tokens\":472,\"output_tokens\":2},\"content\":[],\"stop_reason\":null}}\n\nevent: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\nevent: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Let me check.\"}}\n\nevent: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\nevent: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":1,\"content_block\":{\"type\":\"tool_use\",\"id\":\"toolu_01T1x1fJ34qAmk2tNTrN7Up6\",\"name\":\"get_weather\",\"input\":{}}}\n\nevent: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"\"}}\n\nevent: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"{\\\"location\\\":\"}}\n\nevent: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\" \\\"San Francisco, CA\\\"}\"}}\n\nevent: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":1}\n\nevent: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"tool_use\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":89}}\n\nevent: message_stop\ndata: {\"type\":\"message_stop\"}\n\n";

    fn run(stream: &[u8], pieces: &[usize], include_usage: bool) -> Result<Vec<u8>, UpstreamError> {
        let mut tr = AnthropicStream::new("claude-test".into(), include_usage);
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
        let (text, tools, finish) = assemble(&whole);
        assert_eq!(text, "Grüße, Welt 👋");
        assert!(tools.is_empty());
        assert_eq!(finish.as_deref(), Some("stop"));
        assert_eq!(whole[0]["choices"][0]["delta"]["role"], "assistant");
        assert_eq!(whole[0]["object"], "chat.completion.chunk");
        assert_eq!(whole[0]["id"], "msg_1nZdL29xx5MUA1yADyHTEsnR8uuvGzszyY");
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
        let usage_chunk = &ev[n - 2];
        assert_eq!(usage_chunk["choices"], json!([]));
        assert_eq!(
            usage_chunk["usage"],
            json!({"prompt_tokens": 25, "completion_tokens": 15, "total_tokens": 40})
        );
        assert_eq!(ev[n - 3]["choices"][0]["finish_reason"], "stop");
        assert!(ev[..n - 2].iter().all(|e| e["usage"].is_null()));
    }

    #[test]
    fn streaming_tool_call() {
        let s = TOOL_STREAM.as_bytes();
        for cut in [0, 7, 400, 811, s.len() - 3] {
            let ev = events(&run(s, &[cut], false).unwrap());
            let (text, tools, finish) = assemble(&ev);
            assert_eq!(text, "Let me check.");
            assert_eq!(
                tools,
                vec![(
                    "toolu_01T1x1fJ34qAmk2tNTrN7Up6".to_string(),
                    "get_weather".to_string(),
                    "{\"location\": \"San Francisco, CA\"}".to_string()
                )]
            );
            assert_eq!(finish.as_deref(), Some("tool_calls"));
            // The first tool delta carries id, type and name; later ones only arguments.
            let first = ev
                .iter()
                .find(|e| e["choices"][0]["delta"].get("tool_calls").is_some())
                .unwrap();
            let tc = &first["choices"][0]["delta"]["tool_calls"][0];
            assert_eq!(tc["index"], 0);
            assert_eq!(tc["type"], "function");
            assert_eq!(tc["function"]["arguments"], "");
        }
    }

    #[test]
    fn stream_errors() {
        let err = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"m\",\"model\":\"c\",\"usage\":{\"input_tokens\":1}}}\n\nevent: error\ndata: {\"type\": \"error\", \"error\": {\"type\": \"overloaded_error\", \"message\": \"Overloaded\"}}\n\n";
        let e = run(err.as_bytes(), &[], false).unwrap_err();
        assert_eq!(e.class, ErrorClass::ServiceUnavailable);
        assert_eq!(e.error.status, StatusCode::SERVICE_UNAVAILABLE);
        // Cut before message_stop.
        let cut = &TEXT_STREAM.as_bytes()[..TEXT_STREAM.len() - 60];
        assert!(run(cut, &[], false).is_err());
        // Garbage is an error, not a panic.
        assert!(run(b"event: x\ndata: {oops\n\n", &[], false).is_err());
        assert!(run(b"data: [1,2,3]\n\n", &[], false).is_err());
    }

    #[test]
    fn request_details_kept() {
        let out = translate(
            &dep(),
            json!({"model": "g", "stream": false, "top_k": 5, "user": "u\"2",
                "parallel_tool_calls": false, "tool_choice": "none",
                "tools": [{"type": "function", "cache_control": {"type": "ephemeral"},
                    "function": {"name": "f"}}],
                "messages": [
                    {"role": "system", "content": [{"type": "text", "text": "A"}, "B"]},
                    {"role": "user", "content": [
                        {"type": "text", "text": "look\n", "cache_control": null},
                        {"type": "image_url", "image_url": "https://x/y.gif", "cache_control": {"type": "ephemeral"}}]},
                    {"role": "assistant", "content": [{"type": "refusal", "refusal": "no"}, {"type": "text", "text": ""}],
                        "tool_calls": [
                            {"id": "c1", "type": "function", "function": {"name": "f", "arguments": {"a": [1, 2.5]}}},
                            {"id": "c2", "type": "function", "function": {"name": "f", "arguments": "  "}},
                            {"id": "c3", "type": "function", "function": {"name": "f"}}]},
                    {"role": "tool", "tool_call_id": "c1", "content": [{"type": "text", "text": "r1"}, {"type": "text", "text": "r2"}]},
                    {"role": "tool", "tool_call_id": "c2", "content": null}
                ]}),
        )
        .unwrap();
        assert!(out.get("stream").is_none());
        assert_eq!(out["top_k"], 5);
        assert_eq!(out["metadata"], json!({"user_id": "u\"2"}));
        // tool_choice none keeps parallel tool use as it is.
        assert_eq!(out["tool_choice"], json!({"type": "none"}));
        assert_eq!(
            out["tools"],
            json!([{"name": "f", "input_schema": {"type": "object", "properties": {}},
                "cache_control": {"type": "ephemeral"}}])
        );
        assert_eq!(out["system"], json!([{"type": "text", "text": "AB"}]));
        let m = out["messages"].as_array().unwrap();
        assert_eq!(
            m[0]["content"],
            json!([{"type": "text", "text": "look\n", "cache_control": null},
                {"type": "image", "source": {"type": "url", "url": "https://x/y.gif"},
                    "cache_control": {"type": "ephemeral"}}])
        );
        assert_eq!(
            m[1]["content"],
            json!([{"type": "text", "text": "no"},
                {"type": "tool_use", "id": "c1", "name": "f", "input": {"a": [1, 2.5]}},
                {"type": "tool_use", "id": "c2", "name": "f", "input": {}},
                {"type": "tool_use", "id": "c3", "name": "f", "input": {}}])
        );
        assert_eq!(
            m[2]["content"],
            json!([{"type": "tool_result", "tool_use_id": "c1", "content": "r1r2"},
                {"type": "tool_result", "tool_use_id": "c2", "content": ""}])
        );
        // parallel_tool_calls: false without tool_choice → auto, parallel use disabled.
        let out = translate(
            &dep(),
            json!({"model": "g", "parallel_tool_calls": false,
                "tools": [{"type": "function", "function": {"name": "f"}}],
                "messages": [{"role": "user", "content": "x"}]}),
        )
        .unwrap();
        assert_eq!(
            out["tool_choice"],
            json!({"type": "auto", "disable_parallel_tool_use": true})
        );
    }

    #[test]
    fn malformed_requests_name_the_field() {
        let cases = [
            (json!({"model": "g"}), "messages"),
            (json!({"model": "g", "messages": null}), "messages"),
            (
                json!({"model": "g", "messages": {"role": "user"}}),
                "messages",
            ),
            (json!({"model": "g", "messages": [1]}), "messages[0]"),
            (
                json!({"model": "g", "messages": [{"content": "x"}]}),
                "messages[0].role",
            ),
            (
                json!({"model": "g", "messages": [{"role": 5, "content": "x"}]}),
                "messages[0].role",
            ),
            (
                json!({"model": "g", "messages": [{"role": "robot", "content": "x"}]}),
                "messages[0].role",
            ),
            (
                json!({"model": "g", "messages": [{"role": "user", "content": 5}]}),
                "messages[0].content",
            ),
            (
                json!({"model": "g", "messages": [{"role": "user", "content": {"text": "x"}}]}),
                "messages[0].content",
            ),
            (
                json!({"model": "g", "messages": [{"role": "user", "content": ["x"]}]}),
                "messages[0].content[0]",
            ),
            (
                json!({"model": "g", "messages": [{"role": "user", "content": [{"type": "text", "text": 1}]}]}),
                "messages[0].content[0]",
            ),
            (
                json!({"model": "g", "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": 1}}]}]}),
                "messages[0].content[0]",
            ),
            (
                json!({"model": "g", "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "ftp://x"}}]}]}),
                "messages[0].content[0]",
            ),
            (
                json!({"model": "g", "messages": [{"role": "user", "content": [{"type": "audio"}]}]}),
                "messages[0].content[0]",
            ),
            (
                json!({"model": "g", "messages": [{"role": "system", "content": [{"type": "image_url"}]}]}),
                "messages[0].content",
            ),
            (
                json!({"model": "g", "messages": [{"role": "system", "content": [3]}]}),
                "messages[0].content",
            ),
            (
                json!({"model": "g", "messages": [{"role": "assistant", "content": [{"type": "text"}]}]}),
                "messages[0].content[0]",
            ),
            (
                json!({"model": "g", "messages": [{"role": "assistant", "tool_calls": {}}]}),
                "messages[0].tool_calls",
            ),
            (
                json!({"model": "g", "messages": [{"role": "assistant", "tool_calls": [7]}]}),
                "messages[0].tool_calls[0]",
            ),
            (
                json!({"model": "g", "messages": [{"role": "assistant", "tool_calls": [{"function": {"name": "f"}}]}]}),
                "messages[0].tool_calls[0].id",
            ),
            (
                json!({"model": "g", "messages": [{"role": "assistant", "tool_calls": [{"id": "a", "function": "f"}]}]}),
                "messages[0].tool_calls[0].function",
            ),
            (
                json!({"model": "g", "messages": [{"role": "assistant", "tool_calls": [{"id": "a", "function": {}}]}]}),
                "messages[0].tool_calls[0].function.name",
            ),
            (
                json!({"model": "g", "messages": [{"role": "assistant", "tool_calls": [{"id": "a", "function": {"name": "f", "arguments": 3}}]}]}),
                "messages[0].tool_calls[0].function.arguments",
            ),
            (
                json!({"model": "g", "messages": [{"role": "assistant", "tool_calls": [{"id": "a", "function": {"name": "f", "arguments": "[1]"}}]}]}),
                "messages[0].tool_calls[0].function.arguments",
            ),
            (
                json!({"model": "g", "messages": [{"role": "tool", "content": "x"}]}),
                "messages[0].tool_call_id",
            ),
            (
                json!({"model": "g", "max_tokens": 0, "messages": []}),
                "max_tokens",
            ),
            (
                json!({"model": "g", "max_tokens": 1.5, "messages": []}),
                "max_tokens",
            ),
            (
                json!({"model": "g", "max_completion_tokens": "9", "messages": []}),
                "max_completion_tokens",
            ),
            (json!({"model": "g", "stop": [1], "messages": []}), "stop"),
            (json!({"model": "g", "stop": {}, "messages": []}), "stop"),
            (json!({"model": "g", "tools": {}, "messages": []}), "tools"),
            (
                json!({"model": "g", "tools": [1], "messages": []}),
                "tools[0]",
            ),
            (
                json!({"model": "g", "tools": [{"type": "function"}], "messages": []}),
                "tools[0].function",
            ),
            (
                json!({"model": "g", "tools": [{"function": {"description": "d"}}], "messages": []}),
                "tools[0].function.name",
            ),
            (
                json!({"model": "g", "tools": [{"type": "web_search"}], "messages": []}),
                "tools[0].type",
            ),
            (
                json!({"model": "g", "tools": [{"function": {"name": "f", "strict": true}}], "messages": []}),
                "tools[0].function.strict",
            ),
            (
                json!({"model": "g", "tool_choice": "any", "messages": []}),
                "tool_choice",
            ),
            (
                json!({"model": "g", "tool_choice": {"type": "function"}, "messages": []}),
                "tool_choice",
            ),
            (
                json!({"model": "g", "tool_choice": 1, "messages": []}),
                "tool_choice",
            ),
            (
                json!({"model": "g", "parallel_tool_calls": "no", "messages": []}),
                "parallel_tool_calls",
            ),
            (json!({"model": "g", "user": 1, "messages": []}), "user"),
        ];
        for (body, param) in cases {
            let e = translate(&dep(), body.clone()).expect_err(&body.to_string());
            assert_eq!(e.status, StatusCode::BAD_REQUEST, "{body}");
            assert_eq!(e.param.as_deref(), Some(param), "{body}: {}", e.message);
        }
        // With drop_params, unsupported tool types and strict are dropped, not rejected.
        let dropping = deployment(ProviderKind::Anthropic, "claude-test", true);
        let out = translate(
            &dropping,
            json!({"model": "g", "messages": [], "tools": [{"type": "web_search"},
                {"function": {"name": "f", "strict": true, "parameters": {"type": "object"}}}]}),
        )
        .unwrap();
        assert_eq!(
            out["tools"],
            json!([{"name": "f", "input_schema": {"type": "object"}}])
        );
    }

    #[test]
    fn stream_without_event_names_and_with_thinking() {
        let s = "data: {\"type\":\"message_start\",\"message\":{\"id\":\"m1\",\"model\":\"c\",\"usage\":{\"input_tokens\":3}}}\n\n\
            data: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"thinking\",\"thinking\":\"\"}}\n\n\
            data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"thinking_delta\",\"thinking\":\"hmm \\\"q\\\"\"}}\n\n\
            data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"signature_delta\",\"signature\":\"x\"}}\n\n\
            event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":1,\"content_block\":{\"type\":\"text\",\"text\":\"A\\nB\"}}\n\n\
            event: some_future_event\ndata: {\"type\":\"some_future_event\"}\n\n\
            event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"max_tokens\"},\"usage\":{\"output_tokens\":4}}\n\n\
            data: {\"type\":\"message_stop\"}";
        let ev = events(&run(s.as_bytes(), &[], true).unwrap());
        assert_eq!(ev[0]["id"], "m1");
        assert_eq!(ev[0]["model"], "c");
        assert_eq!(ev[0]["choices"][0]["delta"]["role"], "assistant");
        assert_eq!(
            ev[1]["choices"][0]["delta"]["reasoning_content"],
            "hmm \"q\""
        );
        assert_eq!(ev[2]["choices"][0]["delta"]["content"], "A\nB");
        assert_eq!(ev[3]["choices"][0]["finish_reason"], "length");
        assert_eq!(
            ev[4]["usage"],
            json!({"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7})
        );
        assert_eq!(ev[5], "[DONE]");
        // A tool_use block without its id, or an event that is not an object, is an error.
        let bad = "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"tool_use\",\"name\":\"f\"}}\n\n";
        assert!(run(bad.as_bytes(), &[], false).is_err());
        assert!(run(b"event: ping\ndata: 3\n\n", &[], false).is_err());
        assert!(run(
            b"event: content_block_delta\ndata: {\"index\":0}\n\n",
            &[],
            false
        )
        .is_err());
    }

    #[test]
    fn error_mapping() {
        let h = HeaderMap::new();
        let body = |t: &str, m: &str| {
            format!(
                r#"{{"type":"error","error":{{"type":"{t}","message":"{m}"}},"request_id":"req_1"}}"#
            )
        };
        let cases = [
            (
                529,
                "overloaded_error",
                "Overloaded",
                ErrorClass::ServiceUnavailable,
                503,
            ),
            (
                429,
                "rate_limit_error",
                "slow down",
                ErrorClass::RateLimit,
                429,
            ),
            (
                401,
                "authentication_error",
                "invalid x-api-key",
                ErrorClass::Authentication,
                401,
            ),
            (
                403,
                "permission_error",
                "no",
                ErrorClass::Authentication,
                403,
            ),
            (
                404,
                "not_found_error",
                "model: x",
                ErrorClass::NotFound,
                404,
            ),
            (
                400,
                "invalid_request_error",
                "prompt is too long: 250000 tokens > 200000 maximum",
                ErrorClass::ContextWindow,
                400,
            ),
            (
                400,
                "invalid_request_error",
                "messages: field required",
                ErrorClass::BadRequest,
                400,
            ),
            (
                500,
                "api_error",
                "Internal server error",
                ErrorClass::InternalServer,
                500,
            ),
        ];
        for (status, t, m, class, client) in cases {
            let e = map_error(
                StatusCode::from_u16(status).unwrap(),
                &h,
                body(t, m).as_bytes(),
            );
            assert_eq!(e.class, class, "{t}");
            assert_eq!(e.error.status.as_u16(), client, "{t}");
            assert!(e.raw_body.is_none());
            assert!(e.error.message.contains(m));
        }
        let mut h = HeaderMap::new();
        h.insert("retry-after", HeaderValue::from_static("7"));
        let e = map_error(
            StatusCode::TOO_MANY_REQUESTS,
            &h,
            body("rate_limit_error", "x").as_bytes(),
        );
        assert_eq!(e.retry_after, Some(std::time::Duration::from_secs(7)));
        assert_eq!(e.error.retry_after, Some(7));
        let e = map_error(
            StatusCode::from_u16(529).unwrap(),
            &HeaderMap::new(),
            b"<html>",
        );
        assert_eq!(e.class, ErrorClass::ServiceUnavailable);
        let e = map_error(StatusCode::BAD_GATEWAY, &HeaderMap::new(), b"");
        assert_eq!(e.class, ErrorClass::InternalServer);
    }
}
