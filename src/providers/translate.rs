//! Pieces shared by the translating providers (Anthropic, Gemini): an incremental SSE
//! parser, OpenAI response and chunk shapes, the `drop_params` policy and small helpers
//! for OpenAI message content.
//!
//! Everything here is provider-neutral; the provider files own their wire formats.

use super::UpstreamError;
use crate::config::ErrorClass;
use crate::error::ApiError;
use crate::router::Deployment;
use bytes::BytesMut;
use serde::Serialize;
use serde_json::{Map, Value};

// ---------------------------------------------------------------------------------------
// Server-sent events
// ---------------------------------------------------------------------------------------

/// One complete SSE event: its `event:` name (empty when absent) and its `data:` lines
/// joined by `\n`.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct SseEvent {
    pub event: String,
    pub data: Vec<u8>,
}

/// Splits a byte stream into SSE events, however the network cut it: bytes are buffered
/// until a blank line ends an event. Each byte is scanned once.
#[derive(Debug, Default)]
pub struct SseParser {
    buf: Vec<u8>,
    /// Start of the unconsumed part of `buf`.
    pos: usize,
    /// Where the search for the next blank line resumes.
    scan: usize,
}

/// Upper bound for one buffered event; an upstream that never ends an event is broken.
const MAX_EVENT_BYTES: usize = 16 * 1024 * 1024;

impl SseParser {
    /// Appends raw bytes from the network.
    pub fn push(&mut self, chunk: &[u8]) -> Result<(), UpstreamError> {
        if self.pos > 0 {
            self.buf.drain(..self.pos);
            self.scan -= self.pos;
            self.pos = 0;
        }
        if self.buf.len() + chunk.len() > MAX_EVENT_BYTES {
            return Err(stream_error(
                "the upstream sent an event larger than 16 MiB without ending it",
            ));
        }
        self.buf.extend_from_slice(chunk);
        Ok(())
    }

    /// The next complete event, if the buffer holds one.
    pub fn next_event(&mut self) -> Option<SseEvent> {
        loop {
            let (end, next) = self.find_blank_line()?;
            let raw = &self.buf[self.pos..end];
            self.pos = next;
            self.scan = next;
            let ev = parse_event(raw);
            if !ev.data.is_empty() || !ev.event.is_empty() {
                return Some(ev);
            }
        }
    }

    /// True when bytes of an unfinished event are buffered.
    pub fn has_partial(&self) -> bool {
        self.buf[self.pos..]
            .iter()
            .any(|b| !b.is_ascii_whitespace())
    }

    /// Takes what is left as a final event (a stream that ended without a blank line).
    pub fn take_rest(&mut self) -> Option<SseEvent> {
        let raw = &self.buf[self.pos..];
        let ev = parse_event(raw);
        self.pos = self.buf.len();
        self.scan = self.pos;
        (!ev.data.is_empty()).then_some(ev)
    }

    /// Finds `\n\n`, `\r\n\r\n` or `\r\r` from `scan`: (end of event, start of the next).
    fn find_blank_line(&mut self) -> Option<(usize, usize)> {
        let buf = &self.buf;
        let mut i = self.scan.max(self.pos);
        while let Some(off) = memchr2(b'\n', b'\r', &buf[i..]) {
            let at = i + off;
            // A line break at `at`; is the following line empty?
            let after = match (buf[at], buf.get(at + 1)) {
                (b'\r', Some(b'\n')) => at + 2,
                (b'\r', None) => {
                    // Cannot tell `\r` from `\r\n` yet.
                    self.scan = at;
                    return None;
                }
                _ => at + 1,
            };
            match buf.get(after) {
                Some(b'\n') => return Some((at, after + 1)),
                Some(b'\r') => match buf.get(after + 1) {
                    Some(b'\n') => return Some((at, after + 2)),
                    Some(_) => return Some((at, after + 1)),
                    None => {
                        self.scan = at;
                        return None;
                    }
                },
                Some(_) => i = after,
                None => {
                    self.scan = at;
                    return None;
                }
            }
        }
        self.scan = buf.len();
        None
    }
}

fn memchr2(a: u8, b: u8, hay: &[u8]) -> Option<usize> {
    hay.iter().position(|&c| c == a || c == b)
}

fn parse_event(raw: &[u8]) -> SseEvent {
    let mut ev = SseEvent::default();
    let mut first_data = true;
    for line in raw.split(|&c| c == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() || line[0] == b':' {
            continue;
        }
        let (field, value) = match line.iter().position(|&c| c == b':') {
            Some(p) => {
                let v = &line[p + 1..];
                (&line[..p], v.strip_prefix(b" ").unwrap_or(v))
            }
            None => (line, &b""[..]),
        };
        match field {
            b"data" => {
                if !first_data {
                    ev.data.push(b'\n');
                }
                first_data = false;
                ev.data.extend_from_slice(value);
            }
            b"event" => ev.event = String::from_utf8_lossy(value).into_owned(),
            _ => {}
        }
    }
    ev
}

/// An error for a broken or malformed upstream stream.
pub fn stream_error(message: impl Into<String>) -> UpstreamError {
    UpstreamError::new(
        ErrorClass::InternalServer,
        ApiError::bad_gateway(message).with_code("upstream_bad_stream"),
    )
}

/// An error for an upstream body that is not what its API documents.
pub fn bad_body(provider: &str, e: impl std::fmt::Display) -> ApiError {
    ApiError::bad_gateway(format!(
        "{provider} returned a response llmgw cannot read: {e}"
    ))
    .with_code("upstream_bad_response")
}

// ---------------------------------------------------------------------------------------
// OpenAI response shapes
// ---------------------------------------------------------------------------------------

/// OpenAI `usage`.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prompt_tokens_details: Option<PromptDetails>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub completion_tokens_details: Option<CompletionDetails>,
}

#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct PromptDetails {
    pub cached_tokens: u64,
}

#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct CompletionDetails {
    pub reasoning_tokens: u64,
}

/// A complete `chat.completion`.
#[derive(Serialize)]
pub struct ChatCompletion<'a> {
    pub id: &'a str,
    pub object: &'static str,
    pub created: u64,
    pub model: &'a str,
    pub choices: Vec<Choice>,
    pub usage: Usage,
}

#[derive(Serialize)]
pub struct Choice {
    pub index: u32,
    pub message: Message,
    pub logprobs: Option<()>,
    pub finish_reason: &'static str,
}

#[derive(Serialize)]
pub struct Message {
    pub role: &'static str,
    pub content: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reasoning_content: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCall>,
    pub refusal: Option<()>,
}

#[derive(Serialize)]
pub struct ToolCall {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub function: FunctionCall,
}

#[derive(Serialize)]
pub struct FunctionCall {
    pub name: String,
    pub arguments: String,
}

/// The `delta` of one streamed chunk; `Delta::default()` is `{}`.
#[derive(Serialize, Default)]
pub struct Delta<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reasoning_content: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<[ToolCallDelta<'a>; 1]>,
}

#[derive(Serialize)]
pub struct ToolCallDelta<'a> {
    pub index: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<&'a str>,
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<&'static str>,
    pub function: FunctionDelta<'a>,
}

#[derive(Serialize)]
pub struct FunctionDelta<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub arguments: Option<&'a str>,
}

#[derive(Serialize)]
struct Chunk<'a, C: Serialize> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    choices: C,
    /// Absent without `include_usage`; `null` on content chunks with it.
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<Option<&'a Usage>>,
}

#[derive(Serialize)]
struct ChunkChoice<'a> {
    index: u32,
    delta: &'a Delta<'a>,
    logprobs: Option<()>,
    finish_reason: Option<&'a str>,
}

/// Writes OpenAI `chat.completion.chunk` events for one streamed response.
#[derive(Debug, Clone)]
pub struct ChunkWriter {
    pub id: String,
    pub model: String,
    pub created: u64,
    pub include_usage: bool,
}

impl ChunkWriter {
    pub fn new(id: String, model: String, include_usage: bool) -> Self {
        ChunkWriter {
            id,
            model,
            created: now_secs(),
            include_usage,
        }
    }

    /// One chunk with one choice.
    pub fn delta(
        &self,
        out: &mut BytesMut,
        index: u32,
        delta: &Delta<'_>,
        finish_reason: Option<&str>,
    ) {
        let chunk = Chunk {
            id: &self.id,
            object: "chat.completion.chunk",
            created: self.created,
            model: &self.model,
            choices: [ChunkChoice {
                index,
                delta,
                logprobs: None,
                finish_reason,
            }],
            usage: self.include_usage.then_some(None),
        };
        write_event(out, &chunk);
    }

    /// The usage chunk (`choices: []`), only when the client asked for it.
    pub fn usage(&self, out: &mut BytesMut, usage: &Usage) {
        if !self.include_usage {
            return;
        }
        let chunk = Chunk {
            id: &self.id,
            object: "chat.completion.chunk",
            created: self.created,
            model: &self.model,
            choices: [(); 0],
            usage: Some(Some(usage)),
        };
        write_event(out, &chunk);
    }

    pub fn done(&self, out: &mut BytesMut) {
        out.extend_from_slice(b"data: [DONE]\n\n");
    }
}

fn write_event(out: &mut BytesMut, value: &impl Serialize) {
    out.extend_from_slice(b"data: ");
    let mut w = BytesMutWriter(out);
    // Serialising these plain structs cannot fail.
    let _ = serde_json::to_writer(&mut w, value);
    out.extend_from_slice(b"\n\n");
}

struct BytesMutWriter<'a>(&'a mut BytesMut);

impl std::io::Write for BytesMutWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A random id such as `call_3fZ…` (24 alphanumerics).
pub fn random_id(prefix: &str) -> String {
    let mut s = String::with_capacity(prefix.len() + 24);
    s.push_str(prefix);
    for _ in 0..24 {
        s.push(fastrand::alphanumeric());
    }
    s
}

// ---------------------------------------------------------------------------------------
// Request helpers
// ---------------------------------------------------------------------------------------

/// The request body as a JSON object, owned so that strings can be moved, not copied.
pub fn body_object(req: &crate::request::ClientRequest) -> Result<Map<String, Value>, ApiError> {
    match req.json()? {
        Value::Object(m) => Ok(m),
        _ => Err(ApiError::bad_request("request body must be a JSON object")),
    }
}

/// Applies `drop_params` to a parameter the provider cannot honour: dropped when the
/// deployment allows it, otherwise a 400 naming the parameter.
pub fn unsupported(dep: &Deployment, provider: &str, param: &str) -> Result<(), ApiError> {
    unsupported_all(dep, provider, &mut [param.to_string()])
}

/// [`unsupported`] for several parameters at once: the error names all of them (sorted).
pub fn unsupported_all(
    dep: &Deployment,
    provider: &str,
    params: &mut [String],
) -> Result<(), ApiError> {
    if params.is_empty() {
        return Ok(());
    }
    if dep.drop_params {
        tracing::debug!(deployment = %dep.id, params = ?params, "dropping parameters the provider does not support");
        return Ok(());
    }
    params.sort();
    let list = params
        .iter()
        .map(|p| format!("'{p}'"))
        .collect::<Vec<_>>()
        .join(", ");
    let (noun, verb) = if params.len() == 1 {
        ("parameter", "is")
    } else {
        ("parameters", "are")
    };
    Err(ApiError::bad_request(format!(
        "{noun} {list} {verb} not supported by {provider} (deployment {}); remove it, or set \
         drop_params = true on the deployment to drop unsupported parameters",
        dep.id
    ))
    .with_param(params[0].clone())
    .with_code("unsupported_parameter"))
}

/// True when a parameter's value asks for nothing beyond the default (so dropping it
/// changes nothing): `null`, `n: 1`, zero penalties, `logprobs: false`, text format, …
pub fn is_default(param: &str, v: &Value) -> bool {
    match (param, v) {
        (_, Value::Null) => true,
        ("n", v) => v.as_u64() == Some(1),
        ("presence_penalty" | "frequency_penalty", v) => v.as_f64() == Some(0.0),
        ("logprobs" | "store", Value::Bool(b)) => !*b,
        ("parallel_tool_calls", Value::Bool(b)) => *b,
        ("logit_bias" | "metadata", Value::Object(m)) => m.is_empty(),
        ("response_format", Value::Object(m)) => {
            m.get("type").and_then(Value::as_str) == Some("text")
        }
        ("encoding_format", Value::String(s)) => s == "float",
        _ => false,
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

/// A 400 for a malformed field, naming it.
pub fn invalid(param: impl Into<String>, what: impl std::fmt::Display) -> ApiError {
    let param = param.into();
    ApiError::bad_request(format!("invalid '{param}': {what}")).with_param(param)
}

/// `stop` as a list: a string or an array of strings.
pub fn stop_list(v: Value) -> Result<Vec<Value>, ApiError> {
    match v {
        Value::String(_) => Ok(vec![v]),
        Value::Array(items) if items.iter().all(Value::is_string) => Ok(items),
        Value::Null => Ok(Vec::new()),
        _ => Err(invalid("stop", "expected a string or an array of strings")),
    }
}

/// `max_completion_tokens`, else `max_tokens`, as a positive integer.
pub fn max_tokens(m: &mut Map<String, Value>) -> Result<Option<u64>, ApiError> {
    let a = m.remove("max_completion_tokens");
    let b = m.remove("max_tokens");
    for (name, v) in [("max_completion_tokens", a), ("max_tokens", b)] {
        match v {
            None | Some(Value::Null) => {}
            Some(v) => {
                return v
                    .as_u64()
                    .filter(|n| *n > 0)
                    .map(Some)
                    .ok_or_else(|| invalid(name, "expected a positive integer"))
            }
        }
    }
    Ok(None)
}

/// A `data:` URL split into (media type, base64 payload).
pub fn parse_data_url(url: &str) -> Option<(&str, &str)> {
    let rest = url.strip_prefix("data:")?;
    let (meta, data) = rest.split_once(',')?;
    let media = meta.strip_suffix(";base64")?;
    Some((if media.is_empty() { "image/png" } else { media }, data))
}

/// The URL of an OpenAI `image_url` part (`{"image_url": {"url": …}}` or a bare string).
pub fn image_url(part: &mut Map<String, Value>) -> Option<String> {
    match part.remove("image_url")? {
        Value::String(s) => Some(s),
        Value::Object(mut o) => match o.remove("url")? {
            Value::String(s) => Some(s),
            _ => None,
        },
        _ => None,
    }
}

/// The text of a string-or-parts content value (parts other than text are errors).
pub fn content_text(v: Value, param: &str) -> Result<String, ApiError> {
    match v {
        Value::String(s) => Ok(s),
        Value::Null => Ok(String::new()),
        Value::Array(parts) => {
            let mut out = String::new();
            for p in parts {
                match p {
                    Value::Object(mut o) => match o.remove("text") {
                        Some(Value::String(t)) => out.push_str(&t),
                        _ => return Err(invalid(param, "only text parts are allowed here")),
                    },
                    Value::String(t) => out.push_str(&t),
                    _ => return Err(invalid(param, "expected text parts")),
                }
            }
            Ok(out)
        }
        _ => Err(invalid(param, "expected a string or an array of parts")),
    }
}

/// A MIME type guessed from a URL's file extension (images only).
pub fn mime_from_url(url: &str) -> &'static str {
    let path = url
        .split(['?', '#'])
        .next()
        .unwrap_or(url)
        .to_ascii_lowercase();
    if path.ends_with(".png") {
        "image/png"
    } else if path.ends_with(".gif") {
        "image/gif"
    } else if path.ends_with(".webp") {
        "image/webp"
    } else if path.ends_with(".pdf") {
        "application/pdf"
    } else {
        "image/jpeg"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events(parts: &[&[u8]]) -> Vec<SseEvent> {
        let mut p = SseParser::default();
        let mut out = Vec::new();
        for part in parts {
            p.push(part).unwrap();
            while let Some(e) = p.next_event() {
                out.push(e);
            }
        }
        out
    }

    #[test]
    fn sse_events_split_anywhere() {
        let text = b"event: a\ndata: {\"x\":1}\n\n: comment\n\nevent: b\r\ndata: one\r\ndata: two\r\n\r\ndata:3\n\n";
        let whole = events(&[text]);
        assert_eq!(whole.len(), 3);
        assert_eq!(whole[0].event, "a");
        assert_eq!(whole[1].data, b"one\ntwo");
        assert_eq!(whole[2].data, b"3");
        for cut in 0..text.len() {
            for cut2 in cut..text.len() {
                let got = events(&[&text[..cut], &text[cut..cut2], &text[cut2..]]);
                assert_eq!(got, whole, "cut at {cut}/{cut2}");
            }
        }
        let bytewise: Vec<&[u8]> = text.chunks(1).collect();
        assert_eq!(events(&bytewise), whole);
    }

    #[test]
    fn chunk_writer_shapes() {
        let w = ChunkWriter::new("id1".into(), "m".into(), true);
        let mut out = BytesMut::new();
        w.delta(
            &mut out,
            0,
            &Delta {
                content: Some("hi"),
                ..Delta::default()
            },
            None,
        );
        w.usage(&mut out, &Usage::default());
        w.done(&mut out);
        let s = std::str::from_utf8(&out).unwrap();
        let lines: Vec<&str> = s.split("\n\n").filter(|l| !l.is_empty()).collect();
        let a: Value = serde_json::from_str(&lines[0][6..]).unwrap();
        assert_eq!(a["choices"][0]["delta"]["content"], "hi");
        assert!(a["usage"].is_null() && a.get("usage").is_some());
        let b: Value = serde_json::from_str(&lines[1][6..]).unwrap();
        assert_eq!(b["choices"], serde_json::json!([]));
        assert_eq!(b["usage"]["total_tokens"], 0);
        assert_eq!(lines[2], "data: [DONE]");
    }

    #[test]
    fn helpers() {
        assert_eq!(
            parse_data_url("data:image/png;base64,AAAA"),
            Some(("image/png", "AAAA"))
        );
        assert_eq!(parse_data_url("http://x/y.png"), None);
        assert!(is_default("n", &serde_json::json!(1)));
        assert!(!is_default("n", &serde_json::json!(2)));
        assert!(is_default("presence_penalty", &serde_json::json!(0)));
        assert!(!is_default("logprobs", &serde_json::json!(true)));
        assert_eq!(mime_from_url("https://a/b.PNG?x=1"), "image/png");
    }
}

/// Helpers for the providers' unit tests.
#[cfg(test)]
pub(crate) mod testing {
    use crate::config::ProviderKind;
    use crate::request::{ClientRequest, Endpoint};
    use crate::router::Deployment;
    use bytes::Bytes;
    use serde_json::Value;
    use std::time::Duration;

    pub fn deployment(kind: ProviderKind, model: &str, drop_params: bool) -> Deployment {
        let mut d = Deployment::standalone(kind, model, "http://127.0.0.1:9/v1");
        d.api_key = Some(crate::config::Secret::new("sk-test-secret"));
        d.timeout = Duration::from_secs(5);
        d.drop_params = drop_params;
        d
    }

    pub fn client() -> reqwest::Client {
        let _ = rustls::crypto::ring::default_provider().install_default();
        reqwest::Client::new()
    }

    pub fn request(endpoint: Endpoint, body: Value) -> ClientRequest {
        ClientRequest::parse(endpoint, Bytes::from(body.to_string())).expect("valid request")
    }

    /// The `data:` payloads of OpenAI SSE output; `[DONE]` as the string "[DONE]".
    pub fn events(out: &[u8]) -> Vec<Value> {
        let text = std::str::from_utf8(out).expect("utf-8");
        text.split("\n\n")
            .filter(|e| !e.trim().is_empty())
            .map(|e| {
                let data = e.strip_prefix("data: ").expect("data event");
                if data == "[DONE]" {
                    Value::String("[DONE]".into())
                } else {
                    serde_json::from_str(data).expect("JSON chunk")
                }
            })
            .collect()
    }

    /// Concatenated content and per-index tool calls (id, name, arguments) of chunks.
    pub fn assemble(events: &[Value]) -> (String, Vec<(String, String, String)>, Option<String>) {
        let mut text = String::new();
        let mut tools: Vec<(String, String, String)> = Vec::new();
        let mut finish = None;
        for e in events {
            let Some(choice) = e["choices"].get(0) else {
                continue;
            };
            let d = &choice["delta"];
            if let Some(s) = d["content"].as_str() {
                text.push_str(s);
            }
            if let Some(calls) = d["tool_calls"].as_array() {
                for c in calls {
                    let i = c["index"].as_u64().expect("index") as usize;
                    if i >= tools.len() {
                        tools.resize(i + 1, Default::default());
                    }
                    if let Some(id) = c["id"].as_str() {
                        tools[i].0 = id.into();
                    }
                    if let Some(n) = c["function"]["name"].as_str() {
                        tools[i].1 = n.into();
                    }
                    if let Some(a) = c["function"]["arguments"].as_str() {
                        tools[i].2.push_str(a);
                    }
                }
            }
            if let Some(f) = choice["finish_reason"].as_str() {
                finish = Some(f.to_string());
            }
        }
        (text, tools, finish)
    }
}
