//! Pieces shared by the translating providers (Anthropic, Gemini): an incremental SSE
//! parser, OpenAI response and chunk shapes, borrowed OpenAI request shapes, the
//! `drop_params` policy and small helpers for OpenAI message content.
//!
//! Everything here is provider-neutral; the provider files own their wire formats.

use crate::upstream::Upstream;
use crate::upstream_error::UpstreamError;
use bytes::BytesMut;
use llmgw_core::config::ErrorClass;
use llmgw_core::error::ApiError;
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use std::borrow::Cow;

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

/// One complete SSE event borrowed from the parser's buffer: the `event:` name (empty
/// when absent) and the `data:` lines joined by `\n` (borrowed when there is one line).
#[derive(Debug, PartialEq, Eq)]
pub struct SseRef<'a> {
    pub event: &'a [u8],
    pub data: Cow<'a, [u8]>,
}

impl SseRef<'_> {
    fn into_owned(self) -> SseEvent {
        SseEvent {
            event: String::from_utf8_lossy(self.event).into_owned(),
            data: self.data.into_owned(),
        }
    }
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
            if self.pos == self.buf.len() {
                self.buf.clear();
            } else {
                self.buf.drain(..self.pos);
            }
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
        self.next_ref().map(SseRef::into_owned)
    }

    /// The next complete event, borrowed from the buffer, if the buffer holds one.
    pub fn next_ref(&mut self) -> Option<SseRef<'_>> {
        let (start, end, fields) = loop {
            let (end, next) = self.find_blank_line()?;
            let start = self.pos;
            self.pos = next;
            self.scan = next;
            let fields = scan_event(&self.buf[start..end]);
            if !fields.is_empty() {
                break (start, end, fields);
            }
        };
        Some(fields.event_ref(&self.buf[start..end]))
    }

    /// True when bytes of an unfinished event are buffered.
    pub fn has_partial(&self) -> bool {
        self.buf[self.pos..]
            .iter()
            .any(|b| !b.is_ascii_whitespace())
    }

    /// Takes what is left as a final event (a stream that ended without a blank line).
    pub fn take_rest(&mut self) -> Option<SseEvent> {
        self.take_rest_ref().map(SseRef::into_owned)
    }

    /// [`take_rest`](Self::take_rest), borrowed.
    pub fn take_rest_ref(&mut self) -> Option<SseRef<'_>> {
        let start = self.pos;
        self.pos = self.buf.len();
        self.scan = self.pos;
        let raw = &self.buf[start..];
        let ev = scan_event(raw).event_ref(raw);
        (!ev.data.is_empty()).then_some(ev)
    }

    /// Finds `\n\n`, `\r\n\r\n` or `\r\r` from `scan`: (end of event, start of the next).
    fn find_blank_line(&mut self) -> Option<(usize, usize)> {
        let buf = &self.buf;
        let mut i = self.scan.max(self.pos);
        while let Some(off) = memchr::memchr2(b'\n', b'\r', &buf[i..]) {
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

/// Where an event's name and data sit in its raw bytes.
#[derive(Default)]
struct EventFields {
    event: std::ops::Range<usize>,
    /// The first `data:` value.
    data: std::ops::Range<usize>,
    /// More than one `data:` line: the data must be joined.
    multi: bool,
    has_data: bool,
}

impl EventFields {
    fn is_empty(&self) -> bool {
        self.event.is_empty() && !self.multi && self.data.is_empty()
    }

    fn event_ref(self, raw: &[u8]) -> SseRef<'_> {
        let event = &raw[self.event.clone()];
        if !self.multi {
            return SseRef {
                event,
                data: Cow::Borrowed(&raw[self.data]),
            };
        }
        let mut data = Vec::with_capacity(raw.len());
        let mut first = true;
        for_each_field(raw, |field, value| {
            if field == b"data" {
                if !first {
                    data.push(b'\n');
                }
                first = false;
                data.extend_from_slice(value);
            }
        });
        SseRef {
            event,
            data: Cow::Owned(data),
        }
    }
}

/// Calls `f(field, value)` for each field line of a raw event (comments skipped).
fn for_each_field<'a>(raw: &'a [u8], mut f: impl FnMut(&'a [u8], &'a [u8])) {
    let mut rest = raw;
    while !rest.is_empty() {
        let line = match memchr::memchr(b'\n', rest) {
            Some(n) => {
                let line = &rest[..n];
                rest = &rest[n + 1..];
                line
            }
            None => std::mem::take(&mut rest),
        };
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() || line[0] == b':' {
            continue;
        }
        match memchr::memchr(b':', line) {
            Some(p) => {
                let v = &line[p + 1..];
                f(&line[..p], v.strip_prefix(b" ").unwrap_or(v))
            }
            // An empty slice inside `raw`, so that its position is meaningful.
            None => f(line, &line[line.len()..]),
        }
    }
}

fn scan_event(raw: &[u8]) -> EventFields {
    let base = raw.as_ptr() as usize;
    let range = |v: &[u8]| {
        let at = v.as_ptr() as usize - base;
        at..at + v.len()
    };
    let mut ev = EventFields::default();
    for_each_field(raw, |field, value| match field {
        b"data" => {
            if ev.has_data {
                ev.multi = true;
            } else {
                ev.has_data = true;
                ev.data = range(value);
            }
        }
        b"event" => ev.event = range(value),
        _ => {}
    });
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
struct ChunkHead<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
}

#[derive(Serialize)]
struct ChunkChoice<'a> {
    index: u32,
    delta: &'a Delta<'a>,
    logprobs: Option<()>,
    finish_reason: Option<&'a str>,
}

/// Writes OpenAI `chat.completion.chunk` events for one streamed response.
///
/// The part every chunk shares (`data: {"id":…,"object":…,"created":…,"model":…,
/// "choices":[`) is rendered once; each chunk appends only its choice.
#[derive(Debug, Clone)]
pub struct ChunkWriter {
    pub id: String,
    pub model: String,
    pub created: u64,
    pub include_usage: bool,
    prefix: Vec<u8>,
}

/// What a chunk's choice usually needs beyond its text (a guess for `reserve`).
const CHOICE_BYTES: usize = 96;

impl ChunkWriter {
    pub fn new(id: String, model: String, include_usage: bool) -> Self {
        let created = now_secs();
        let mut prefix = Vec::with_capacity(96 + id.len() + model.len());
        prefix.extend_from_slice(b"data: ");
        let head = ChunkHead {
            id: &id,
            object: "chat.completion.chunk",
            created,
            model: &model,
        };
        // Serialising this plain struct into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut prefix, &head);
        // `{"id":…,"model":"…"}` → `{"id":…,"model":"…","choices":[`
        prefix.pop();
        prefix.extend_from_slice(b",\"choices\":[");
        ChunkWriter {
            id,
            model,
            created,
            include_usage,
            prefix,
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
        let text = delta.content.map_or(0, str::len)
            + delta.reasoning_content.map_or(0, str::len)
            + delta.tool_calls.as_ref().map_or(0, |[c]| {
                c.id.map_or(0, str::len)
                    + c.function.name.map_or(0, str::len)
                    + c.function.arguments.map_or(0, str::len)
                    + 64
            });
        out.reserve(self.prefix.len() + CHOICE_BYTES + text + text / 8);
        out.extend_from_slice(&self.prefix);
        let choice = ChunkChoice {
            index,
            delta,
            logprobs: None,
            finish_reason,
        };
        // Serialising these plain structs cannot fail.
        let _ = serde_json::to_writer(BytesMutWriter(out), &choice);
        if self.include_usage {
            out.extend_from_slice(b"],\"usage\":null}\n\n");
        } else {
            out.extend_from_slice(b"]}\n\n");
        }
    }

    /// The usage chunk (`choices: []`), only when the client asked for it.
    pub fn usage(&self, out: &mut BytesMut, usage: &Usage) {
        if !self.include_usage {
            return;
        }
        out.reserve(self.prefix.len() + 192);
        out.extend_from_slice(&self.prefix);
        out.extend_from_slice(b"],\"usage\":");
        let _ = serde_json::to_writer(BytesMutWriter(out), usage);
        out.extend_from_slice(b"}\n\n");
    }

    pub fn done(&self, out: &mut BytesMut) {
        out.extend_from_slice(b"data: [DONE]\n\n");
    }
}

pub struct BytesMutWriter<'a>(pub &'a mut BytesMut);

impl std::io::Write for BytesMutWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        self.0.extend_from_slice(buf);
        Ok(())
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
pub fn unsupported(dep: &Upstream, provider: &str, param: &str) -> Result<(), ApiError> {
    unsupported_all(dep, provider, &mut [param.to_string()])
}

/// [`unsupported`] for several parameters at once: the error names all of them (sorted).
pub fn unsupported_all(
    dep: &Upstream,
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

pub use crate::upstream::secret_header;

/// OpenAI's `encoding_format` for embeddings: the vectors as JSON numbers, or as base64 of
/// their little-endian float32 bytes (what the OpenAI SDKs ask for unless told otherwise).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EmbeddingFormat {
    #[default]
    Float,
    Base64,
}

impl EmbeddingFormat {
    /// An `encoding_format` value: absent or null is `float`; anything but `"float"` or
    /// `"base64"` is a 400, as OpenAI answers it.
    pub fn of_value(v: Option<&Value>) -> Result<Self, ApiError> {
        match v.and_then(|v| if v.is_null() { None } else { Some(v) }) {
            None => Ok(Self::Float),
            Some(Value::String(s)) if s == "float" => Ok(Self::Float),
            Some(Value::String(s)) if s == "base64" => Ok(Self::Base64),
            Some(_) => Err(invalid(
                "encoding_format",
                "expected \"float\" or \"base64\"",
            )),
        }
    }

    /// The format a request body asks for (only that field is read).
    pub fn of_request(body: &[u8]) -> Result<Self, ApiError> {
        #[derive(Deserialize)]
        struct Only {
            #[serde(default)]
            encoding_format: Option<Value>,
        }
        let only: Only = serde_json::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("request body is not valid JSON: {e}")))?;
        Self::of_value(only.encoding_format.as_ref())
    }

    /// One embedding, as the `embedding` value of OpenAI's response.
    pub fn encode(self, values: Vec<f64>) -> Value {
        match self {
            Self::Float => Value::from(values),
            Self::Base64 => {
                use base64::Engine as _;
                let bytes: Vec<u8> = values
                    .iter()
                    .flat_map(|v| (*v as f32).to_le_bytes())
                    .collect();
                Value::String(base64::engine::general_purpose::STANDARD.encode(bytes))
            }
        }
    }
}

/// One assistant `tool_calls` entry, checked: its id (when present), function name and
/// arguments as a JSON object.
pub struct CheckedCall<'a> {
    pub id: Option<Cow<'a, str>>,
    pub name: Cow<'a, str>,
    pub args: Box<RawValue>,
}

/// Checks message `i`'s `tool_calls` the same way for every provider; `require_id`
/// makes a missing `id` an error (checked first, as Anthropic needs it).
pub fn tool_calls<'a>(
    calls: &LaxList<Lax<InToolCall<'a>>>,
    i: usize,
    require_id: bool,
) -> Result<Vec<CheckedCall<'a>>, ApiError> {
    let calls = match calls {
        LaxList::List(c) => c,
        LaxList::Null => return Ok(Vec::new()),
        LaxList::Bad => {
            return Err(invalid(
                format!("messages[{i}].tool_calls"),
                "expected an array",
            ))
        }
    };
    let mut out = Vec::with_capacity(calls.len());
    for (j, call) in calls.iter().enumerate() {
        let param = |f: &str| format!("messages[{i}].tool_calls[{j}]{f}");
        let Some(call) = call.as_ref() else {
            return Err(invalid(param(""), "expected an object"));
        };
        let id = call.id.cow();
        if require_id && id.is_none() {
            return Err(invalid(param(".id"), "missing"));
        }
        let Some(f) = call.function.as_ref() else {
            return Err(invalid(param(".function"), "missing"));
        };
        let Some(name) = f.name.cow() else {
            return Err(invalid(param(".function.name"), "missing"));
        };
        let args =
            raw_arguments(f.arguments).map_err(|e| invalid(param(".function.arguments"), e))?;
        out.push(CheckedCall { id, name, args });
    }
    Ok(out)
}

/// A 400 for a malformed field, naming it.
pub fn invalid(param: impl Into<String>, what: impl std::fmt::Display) -> ApiError {
    let param = param.into();
    ApiError::bad_request(format!("invalid '{param}': {what}")).with_param(param)
}

/// A `data:` URL split into (media type, base64 payload).
pub fn parse_data_url(url: &str) -> Option<(&str, &str)> {
    let rest = url.strip_prefix("data:")?;
    let (meta, data) = rest.split_once(',')?;
    let media = meta.strip_suffix(";base64")?;
    Some((if media.is_empty() { "image/png" } else { media }, data))
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

// ---------------------------------------------------------------------------------------
// OpenAI request shapes (borrowed, lenient)
// ---------------------------------------------------------------------------------------
//
// The chat request is read once, straight from the client's bytes, into these types:
// strings borrow from the body unless they contain escapes, and opaque JSON (schemas,
// `cache_control`, sampling values) stays a `&RawValue` that is copied verbatim into the
// upstream body. The types are lenient: a field of the wrong JSON type does not fail the
// parse but becomes a "bad" variant, so that the providers can name the offending field
// in a 400 exactly as they validate it. Only malformed JSON fails the parse itself.

/// A JSON string borrowed from the body where possible; `Null` when absent or `null`,
/// `Bad` for any other JSON type.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub enum LStr<'a> {
    #[default]
    Null,
    Str(Cow<'a, str>),
    Bad,
}

impl<'a> LStr<'a> {
    /// The string, if it is one.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            LStr::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The string with the body's lifetime (a copy only when it had escapes).
    pub fn cow(&self) -> Option<Cow<'a, str>> {
        match self {
            LStr::Str(s) => Some(s.clone()),
            _ => None,
        }
    }
}

/// Consumes whatever value the visitor was handed.
fn skip_seq<'de, A: SeqAccess<'de>>(mut seq: A) -> Result<(), A::Error> {
    while seq.next_element::<IgnoredAny>()?.is_some() {}
    Ok(())
}

fn skip_map<'de, A: MapAccess<'de>>(mut map: A) -> Result<(), A::Error> {
    while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
    Ok(())
}

/// Implements the non-matching `visit_*` methods of a lenient visitor as `$bad`.
macro_rules! lenient_scalars {
    ($bad:expr) => {
        fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
            Ok($bad)
        }
        fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
            Ok($bad)
        }
        fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
            Ok($bad)
        }
        fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
            Ok($bad)
        }
    };
}

impl<'de: 'a, 'a> Deserialize<'de> for LStr<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = LStr<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_borrowed_str<E: de::Error>(self, s: &'de str) -> Result<Self::Value, E> {
                Ok(LStr::Str(Cow::Borrowed(s)))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Self::Value, E> {
                Ok(LStr::Str(Cow::Owned(s.to_owned())))
            }
            fn visit_string<E: de::Error>(self, s: String) -> Result<Self::Value, E> {
                Ok(LStr::Str(Cow::Owned(s)))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(LStr::Null)
            }
            fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(LStr::Null)
            }
            lenient_scalars!(LStr::Bad);
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
                skip_seq(seq).map(|_| LStr::Bad)
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                skip_map(map).map(|_| LStr::Bad)
            }
        }
        d.deserialize_any(V)
    }
}

/// A JSON object read as `T`; `Null` when absent or `null`, `Bad` for other JSON types.
#[derive(Debug, Default)]
pub enum Lax<T> {
    #[default]
    Null,
    Ok(T),
    Bad,
}

impl<T> Lax<T> {
    /// The object, or a 400 naming `param` when the value is not an object.
    pub fn object(&self, param: impl FnOnce() -> String) -> Result<&T, ApiError> {
        self.as_ref()
            .ok_or_else(|| invalid(param(), "expected an object"))
    }

    pub fn ok(self) -> Option<T> {
        match self {
            Lax::Ok(t) => Some(t),
            _ => None,
        }
    }
    pub fn as_ref(&self) -> Option<&T> {
        match self {
            Lax::Ok(t) => Some(t),
            _ => None,
        }
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Lax<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for V<T> {
            type Value = Lax<T>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                T::deserialize(de::value::MapAccessDeserializer::new(map)).map(Lax::Ok)
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(Lax::Null)
            }
            fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(Lax::Null)
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
                Ok(Lax::Bad)
            }
            lenient_scalars!(Lax::Bad);
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
                skip_seq(seq).map(|_| Lax::Bad)
            }
        }
        d.deserialize_any(V(std::marker::PhantomData))
    }
}

/// A JSON array of `T`; `Null` when absent or `null`, `Bad` for other JSON types.
#[derive(Debug, Default)]
pub enum LaxList<T> {
    #[default]
    Null,
    List(Vec<T>),
    Bad,
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for LaxList<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for V<T> {
            type Value = LaxList<T>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut v = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(64));
                while let Some(x) = seq.next_element()? {
                    v.push(x);
                }
                Ok(LaxList::List(v))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(LaxList::Null)
            }
            fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(LaxList::Null)
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
                Ok(LaxList::Bad)
            }
            lenient_scalars!(LaxList::Bad);
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                skip_map(map).map(|_| LaxList::Bad)
            }
        }
        d.deserialize_any(V(std::marker::PhantomData))
    }
}

/// A field kept as raw JSON when present, `null` included (`Option<&RawValue>` would
/// turn `null` into `None`).
#[derive(Debug, Default, Clone, Copy)]
pub struct MaybeRaw<'a>(pub Option<&'a RawValue>);

impl<'de: 'a, 'a> Deserialize<'de> for MaybeRaw<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        <&'a RawValue>::deserialize(d).map(|r| MaybeRaw(Some(r)))
    }
}

/// True when a raw JSON value is an object.
pub fn is_object(raw: &RawValue) -> bool {
    raw.get().starts_with('{')
}

/// A raw JSON value that is a string, unescaped; `None` for other types.
pub fn raw_str(raw: &RawValue) -> Option<Cow<'_, str>> {
    match LStr::deserialize(&mut serde_json::Deserializer::from_str(raw.get())) {
        Ok(LStr::Str(s)) => Some(s),
        _ => None,
    }
}

/// OpenAI message content: a string, `null`, or an array of parts.
#[derive(Debug, Default)]
pub enum Content<'a> {
    #[default]
    Null,
    Text(Cow<'a, str>),
    Parts(Vec<Part<'a>>),
    Bad,
}

impl<'de: 'a, 'a> Deserialize<'de> for Content<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Content<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_borrowed_str<E: de::Error>(self, s: &'de str) -> Result<Self::Value, E> {
                Ok(Content::Text(Cow::Borrowed(s)))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Self::Value, E> {
                Ok(Content::Text(Cow::Owned(s.to_owned())))
            }
            fn visit_string<E: de::Error>(self, s: String) -> Result<Self::Value, E> {
                Ok(Content::Text(Cow::Owned(s)))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(Content::Null)
            }
            fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(Content::Null)
            }
            lenient_scalars!(Content::Bad);
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut v = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(64));
                while let Some(x) = seq.next_element()? {
                    v.push(x);
                }
                Ok(Content::Parts(v))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                skip_map(map).map(|_| Content::Bad)
            }
        }
        d.deserialize_any(V)
    }
}

/// A string, `null`/absent, an array of `T`, or anything else (Anthropic `content` and
/// `system`, Responses `input` and `output`).
#[derive(Debug, Default)]
pub enum StrOrList<'a, T> {
    #[default]
    Null,
    Str(Cow<'a, str>),
    List(Vec<T>),
    Bad,
}

impl<'de: 'a, 'a, T: Deserialize<'de>> Deserialize<'de> for StrOrList<'a, T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for V<T> {
            type Value = StrOrList<'de, T>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_borrowed_str<E: de::Error>(self, s: &'de str) -> Result<Self::Value, E> {
                Ok(StrOrList::Str(Cow::Borrowed(s)))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Self::Value, E> {
                Ok(StrOrList::Str(Cow::Owned(s.to_owned())))
            }
            fn visit_string<E: de::Error>(self, s: String) -> Result<Self::Value, E> {
                Ok(StrOrList::Str(Cow::Owned(s)))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(StrOrList::Null)
            }
            fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(StrOrList::Null)
            }
            lenient_scalars!(StrOrList::Bad);
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut v = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(64));
                while let Some(x) = seq.next_element()? {
                    v.push(x);
                }
                Ok(StrOrList::List(v))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                skip_map(map).map(|_| StrOrList::Bad)
            }
        }
        d.deserialize_any(V(std::marker::PhantomData))
    }
}

/// A JSON boolean; anything else is `Bad` (absent and `null` are `None`).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub enum LBool {
    #[default]
    None,
    Is(bool),
    Bad,
}

impl<'de> Deserialize<'de> for LBool {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = LBool;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_bool<E: de::Error>(self, b: bool) -> Result<Self::Value, E> {
                Ok(LBool::Is(b))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(LBool::None)
            }
            fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(LBool::None)
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
                Ok(LBool::Bad)
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
                Ok(LBool::Bad)
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
                Ok(LBool::Bad)
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
                Ok(LBool::Bad)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
                skip_seq(seq).map(|_| LBool::Bad)
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                skip_map(map).map(|_| LBool::Bad)
            }
        }
        d.deserialize_any(V)
    }
}

/// One element of a content array: an object, a bare string, or something else.
#[derive(Debug)]
pub enum Part<'a> {
    Obj(PartObj<'a>),
    Text(Cow<'a, str>),
    Bad,
}

impl<'de: 'a, 'a> Deserialize<'de> for Part<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Part<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                PartObj::deserialize(de::value::MapAccessDeserializer::new(map)).map(Part::Obj)
            }
            fn visit_borrowed_str<E: de::Error>(self, s: &'de str) -> Result<Self::Value, E> {
                Ok(Part::Text(Cow::Borrowed(s)))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Self::Value, E> {
                Ok(Part::Text(Cow::Owned(s.to_owned())))
            }
            fn visit_string<E: de::Error>(self, s: String) -> Result<Self::Value, E> {
                Ok(Part::Text(Cow::Owned(s)))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(Part::Bad)
            }
            fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(Part::Bad)
            }
            lenient_scalars!(Part::Bad);
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
                skip_seq(seq).map(|_| Part::Bad)
            }
        }
        d.deserialize_any(V)
    }
}

/// A content part object (`text`, `refusal` or `image_url`).
#[derive(Debug, Default, Deserialize)]
pub struct PartObj<'a> {
    #[serde(rename = "type", default, borrow)]
    pub kind: LStr<'a>,
    #[serde(default, borrow)]
    pub text: LStr<'a>,
    #[serde(default, borrow)]
    pub refusal: LStr<'a>,
    #[serde(default, borrow)]
    pub image_url: ImageUrl<'a>,
    #[serde(default, borrow)]
    pub cache_control: MaybeRaw<'a>,
}

impl PartObj<'_> {
    /// The part's `type`; a missing or non-string type counts as text.
    pub fn kind(&self) -> &str {
        self.kind.as_str().unwrap_or("text")
    }

    /// `text`, else `refusal` (assistant content).
    pub fn text_or_refusal(&self) -> Option<&str> {
        self.text.as_str().or(self.refusal.as_str())
    }
}

/// `image_url`: `{"url": …}` or a bare string.
#[derive(Debug, Default)]
pub struct ImageUrl<'a>(pub Option<Cow<'a, str>>);

#[derive(Deserialize)]
struct UrlObj<'a> {
    #[serde(default, borrow)]
    url: LStr<'a>,
}

impl<'de: 'a, 'a> Deserialize<'de> for ImageUrl<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(match LStrOr::<UrlObj<'a>>::deserialize(d)? {
            LStrOr::Str(s) => ImageUrl(Some(s)),
            LStrOr::Obj(UrlObj { url: LStr::Str(s) }) => ImageUrl(Some(s)),
            _ => ImageUrl(None),
        })
    }
}

/// A string, an object read as `T`, or anything else.
enum LStrOr<'a, T> {
    Str(Cow<'a, str>),
    Obj(T),
    Other,
}

impl<'de: 'a, 'a, T: Deserialize<'de>> Deserialize<'de> for LStrOr<'a, T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for V<T> {
            type Value = LStrOr<'de, T>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                T::deserialize(de::value::MapAccessDeserializer::new(map)).map(LStrOr::Obj)
            }
            fn visit_borrowed_str<E: de::Error>(self, s: &'de str) -> Result<Self::Value, E> {
                Ok(LStrOr::Str(Cow::Borrowed(s)))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Self::Value, E> {
                Ok(LStrOr::Str(Cow::Owned(s.to_owned())))
            }
            fn visit_string<E: de::Error>(self, s: String) -> Result<Self::Value, E> {
                Ok(LStrOr::Str(Cow::Owned(s)))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(LStrOr::Other)
            }
            fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(LStrOr::Other)
            }
            lenient_scalars!(LStrOr::Other);
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
                skip_seq(seq).map(|_| LStrOr::Other)
            }
        }
        d.deserialize_any(V(std::marker::PhantomData))
    }
}

/// One OpenAI chat message.
#[derive(Debug, Default, Deserialize)]
pub struct InMessage<'a> {
    #[serde(default, borrow)]
    pub role: LStr<'a>,
    #[serde(default, borrow)]
    pub content: Content<'a>,
    #[serde(default, borrow)]
    pub tool_calls: LaxList<Lax<InToolCall<'a>>>,
    #[serde(default, borrow)]
    pub tool_call_id: LStr<'a>,
    #[serde(default, borrow)]
    pub name: LStr<'a>,
}

/// An assistant message's tool call.
#[derive(Debug, Default, Deserialize)]
pub struct InToolCall<'a> {
    #[serde(default, borrow)]
    pub id: LStr<'a>,
    #[serde(default, borrow)]
    pub function: Lax<InFunctionCall<'a>>,
}

#[derive(Debug, Default, Deserialize)]
pub struct InFunctionCall<'a> {
    #[serde(default, borrow)]
    pub name: LStr<'a>,
    #[serde(default, borrow)]
    pub arguments: MaybeRaw<'a>,
}

/// One entry of `tools`.
#[derive(Debug, Default, Deserialize)]
pub struct InTool<'a> {
    #[serde(rename = "type", default, borrow)]
    pub kind: LStr<'a>,
    #[serde(default, borrow)]
    pub function: Lax<InFunction<'a>>,
    #[serde(default, borrow)]
    pub cache_control: MaybeRaw<'a>,
}

#[derive(Debug, Default, Deserialize)]
pub struct InFunction<'a> {
    #[serde(default, borrow)]
    pub name: LStr<'a>,
    #[serde(default, borrow)]
    pub description: LStr<'a>,
    #[serde(default, borrow)]
    pub parameters: MaybeRaw<'a>,
    #[serde(default, borrow)]
    pub strict: MaybeRaw<'a>,
}

/// The key names a [`Body`] reads typed: its list of turns and its tools.
pub trait BodyKeys {
    /// `messages` (chat, Anthropic) or `input` (Responses).
    const LIST: &'static str;
    const TOOLS: &'static str = "tools";
}

/// A request body: the list of turns (`L`) and the tools (`T`) typed, every other
/// top-level parameter as (name, raw value) in body order. A repeated key keeps its last
/// value, as a JSON object map would.
pub struct Body<'a, K, L, T> {
    /// `None` when absent.
    pub list: Option<L>,
    /// `None` when absent.
    pub tools: Option<T>,
    pub params: Vec<(Cow<'a, str>, &'a RawValue)>,
    keys: std::marker::PhantomData<K>,
}

impl<K, L, T> Default for Body<'_, K, L, T> {
    fn default() -> Self {
        Body {
            list: None,
            tools: None,
            params: Vec::new(),
            keys: std::marker::PhantomData,
        }
    }
}

struct Key<'a>(Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for Key<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match LStr::deserialize(d)? {
            LStr::Str(s) => Ok(Key(s)),
            _ => Err(de::Error::custom("expected a string key")),
        }
    }
}

impl<'de: 'a, 'a, K: BodyKeys, L: Deserialize<'de>, T: Deserialize<'de>> Deserialize<'de>
    for Body<'a, K, L, T>
{
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<K, L, T>(std::marker::PhantomData<(K, L, T)>);
        impl<'de, K: BodyKeys, L: Deserialize<'de>, T: Deserialize<'de>> Visitor<'de> for V<K, L, T> {
            type Value = Body<'de, K, L, T>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut body = Body {
                    params: Vec::with_capacity(16),
                    ..Body::default()
                };
                while let Some(Key(k)) = map.next_key()? {
                    if k == K::LIST {
                        body.list = Some(map.next_value()?);
                    } else if k == K::TOOLS {
                        body.tools = Some(map.next_value()?);
                    } else {
                        let v: &'de RawValue = map.next_value()?;
                        match body.params.iter_mut().find(|(n, _)| *n == k) {
                            Some(slot) => slot.1 = v,
                            None => body.params.push((k, v)),
                        }
                    }
                }
                Ok(body)
            }
        }
        d.deserialize_map(V(std::marker::PhantomData))
    }
}

impl<'a, K, L, T> Body<'a, K, L, T> {
    /// Removes a parameter, returning its raw value.
    pub fn take(&mut self, name: &str) -> Option<&'a RawValue> {
        let at = self.params.iter().position(|(k, _)| k == name)?;
        Some(self.params.remove(at).1)
    }
}

impl<'a, K: BodyKeys, L: Deserialize<'a>, T: Deserialize<'a>> Body<'a, K, L, T> {
    /// Reads a body from the client's bytes.
    pub fn parse(req: &'a crate::request::ClientRequest) -> Result<Self, ApiError> {
        serde_json::from_slice(&req.body)
            .map_err(|e| ApiError::bad_request(format!("request body is not valid JSON: {e}")))
    }
}

/// Chat completions' keys.
pub struct ChatKeys;

impl BodyKeys for ChatKeys {
    const LIST: &'static str = "messages";
}

/// A chat completions body: `messages` and `tools` typed.
pub type ChatBody<'a> = Body<'a, ChatKeys, LaxList<Lax<InMessage<'a>>>, LaxList<Lax<InTool<'a>>>>;

impl<'a, K, L, T> Body<'a, K, LaxList<L>, T> {
    /// The list of turns (each element checked by the caller, in order); a 400 naming
    /// `name` when it is missing or not an array.
    pub fn required_list(&mut self, name: &str) -> Result<Vec<L>, ApiError> {
        match self.list.take() {
            None => Err(invalid(name, "this parameter is required")),
            Some(LaxList::List(l)) => Ok(l),
            Some(_) => Err(invalid(name, "expected an array of messages")),
        }
    }
}

impl<'a> ChatBody<'a> {
    /// The messages array (each element checked by the caller, in order).
    pub fn messages(&mut self) -> Result<Vec<Lax<InMessage<'a>>>, ApiError> {
        self.required_list("messages")
    }
}

/// True when a raw value is `null`.
pub fn is_null(raw: &RawValue) -> bool {
    raw.get() == "null"
}

/// [`is_default`] for a raw value (only called for parameters a provider does not map).
pub fn raw_is_default(param: &str, raw: &RawValue) -> bool {
    match serde_json::from_str::<Value>(raw.get()) {
        Ok(v) => is_default(param, &v),
        Err(_) => false,
    }
}

/// `stop` as a list of raw JSON strings: a string or an array of strings.
pub fn raw_stop_list(raw: &RawValue) -> Result<Vec<&RawValue>, ApiError> {
    let bad = || invalid("stop", "expected a string or an array of strings");
    match raw.get().as_bytes().first() {
        Some(b'"') => Ok(vec![raw]),
        Some(b'n') => Ok(Vec::new()),
        Some(b'[') => {
            let items: Vec<&RawValue> = serde_json::from_str(raw.get()).map_err(|_| bad())?;
            if items.iter().all(|s| s.get().starts_with('"')) {
                Ok(items)
            } else {
                Err(bad())
            }
        }
        _ => Err(bad()),
    }
}

/// `max_completion_tokens`, else `max_tokens`, as a positive integer.
pub fn raw_max_tokens<K, L, T>(body: &mut Body<'_, K, L, T>) -> Result<Option<u64>, ApiError> {
    let a = body.take("max_completion_tokens");
    let b = body.take("max_tokens");
    for (name, v) in [("max_completion_tokens", a), ("max_tokens", b)] {
        match v {
            None => {}
            Some(v) if is_null(v) => {}
            Some(v) => {
                return serde_json::from_str::<u64>(v.get())
                    .ok()
                    .filter(|n| *n > 0)
                    .map(Some)
                    .ok_or_else(|| invalid(name, "expected a positive integer"))
            }
        }
    }
    Ok(None)
}

/// The text of a string-or-parts content value (parts other than text are errors).
pub fn content_str<'a>(v: &Content<'a>, param: &str) -> Result<Cow<'a, str>, ApiError> {
    match v {
        Content::Text(s) => Ok(s.clone()),
        Content::Null => Ok(Cow::Borrowed("")),
        Content::Parts(parts) => {
            let mut out = String::new();
            for p in parts {
                match p {
                    Part::Obj(o) => match o.text.as_str() {
                        Some(t) => out.push_str(t),
                        None => return Err(invalid(param, "only text parts are allowed here")),
                    },
                    Part::Text(t) => out.push_str(t),
                    Part::Bad => return Err(invalid(param, "expected text parts")),
                }
            }
            Ok(Cow::Owned(out))
        }
        Content::Bad => Err(invalid(param, "expected a string or an array of parts")),
    }
}

/// A tool call's `arguments` (a JSON string, an object or absent) as a JSON object.
pub fn raw_arguments(v: MaybeRaw<'_>) -> Result<Box<RawValue>, String> {
    let empty = || RawValue::from_string("{}".to_string()).map_err(|e| e.to_string());
    let Some(raw) = v.0 else {
        return empty();
    };
    match raw.get().as_bytes().first() {
        Some(b'n') => empty(),
        Some(b'{') => Ok(raw.to_owned()),
        Some(b'"') => {
            let s = raw_str(raw).ok_or_else(|| "expected a JSON string".to_string())?;
            if s.trim().is_empty() {
                return empty();
            }
            let parsed: &RawValue =
                serde_json::from_str(&s).map_err(|e| format!("not valid JSON ({e})"))?;
            if is_object(parsed) {
                Ok(parsed.to_owned())
            } else {
                Err("the arguments must encode a JSON object".into())
            }
        }
        _ => Err("expected a JSON string".into()),
    }
}

/// `tool_choice`: a string or `{"type": "function", "function": {"name": …}}`.
pub enum ToolChoiceIn<'a> {
    Auto,
    None,
    Required,
    Function(Cow<'a, str>),
}

#[derive(Deserialize)]
struct ChoiceObj<'a> {
    #[serde(default, borrow)]
    function: Lax<ChoiceFn<'a>>,
}

#[derive(Deserialize)]
struct ChoiceFn<'a> {
    #[serde(default, borrow)]
    name: LStr<'a>,
}

/// Reads `tool_choice`; `None` for `null`.
pub fn tool_choice(raw: &RawValue) -> Result<Option<ToolChoiceIn<'_>>, ApiError> {
    match raw.get().as_bytes().first() {
        Some(b'n') => Ok(None),
        Some(b'"') => match raw_str(raw).as_deref() {
            Some("auto") => Ok(Some(ToolChoiceIn::Auto)),
            Some("none") => Ok(Some(ToolChoiceIn::None)),
            Some("required") => Ok(Some(ToolChoiceIn::Required)),
            _ => Err(invalid(
                "tool_choice",
                "expected \"auto\", \"none\", \"required\" or a function",
            )),
        },
        Some(b'{') => {
            let o: ChoiceObj<'_> = serde_json::from_str(raw.get()).map_err(|_| {
                invalid(
                    "tool_choice",
                    "expected {\"type\":\"function\",\"function\":{\"name\":...}}",
                )
            })?;
            match o.function {
                Lax::Ok(ChoiceFn { name: LStr::Str(n) }) => Ok(Some(ToolChoiceIn::Function(n))),
                _ => Err(invalid(
                    "tool_choice",
                    "expected {\"type\":\"function\",\"function\":{\"name\":...}}",
                )),
            }
        }
        _ => Err(invalid("tool_choice", "expected a string or an object")),
    }
}

/// Writes a value as JSON into a new buffer of about `hint` bytes.
pub fn to_body(value: &impl Serialize, hint: usize) -> Result<Vec<u8>, ApiError> {
    let mut out = Vec::with_capacity(hint);
    serde_json::to_writer(&mut out, value)
        .map_err(|e| ApiError::internal(format!("serialising: {e}")))?;
    Ok(out)
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

    /// Mutated client bodies and upstream streams give errors or output, never panics.
    #[test]
    fn mutations_never_panic() {
        use crate::anthropic;
        use crate::gemini;
        use crate::request::{ClientRequest, Endpoint};
        use crate::upstream::StreamTranslator;
        use llmgw_core::config::ProviderKind;
        let body = br#"{"model":"m","messages":[{"role":"system","content":"S"},{"role":"user","content":[{"type":"text","text":"a\n"},{"type":"image_url","image_url":{"url":"data:image/png;base64,AA"}}]},{"role":"assistant","content":null,"tool_calls":[{"id":"c","type":"function","function":{"name":"f","arguments":"{\"x\":1}"}}]},{"role":"tool","tool_call_id":"c","content":"{\"y\":2}"}],"tools":[{"type":"function","function":{"name":"f","parameters":{"type":"object"}}}],"tool_choice":{"type":"function","function":{"name":"f"}},"stop":["x"],"max_tokens":5,"response_format":{"type":"json_object"},"parallel_tool_calls":false}"#;
        let ant = testing::deployment(ProviderKind::Anthropic, "c", true);
        let gem = testing::deployment(ProviderKind::Gemini, "g", true);
        let astream = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"m\",\"model\":\"c\",\"usage\":{\"input_tokens\":1}}}\n\nevent: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":1,\"content_block\":{\"type\":\"tool_use\",\"id\":\"t\",\"name\":\"f\",\"input\":{}}}\n\nevent: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"{\\\"a\\\"\"}}\n\nevent: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"tool_use\"},\"usage\":{\"output_tokens\":2}}\n\nevent: message_stop\ndata: {\"type\":\"message_stop\"}\n\n";
        let gstream = "data: {\"candidates\":[{\"content\":{\"parts\":[{\"text\":\"hi\"},{\"functionCall\":{\"name\":\"f\",\"args\":{\"a\":1}}}]},\"finishReason\":\"STOP\",\"index\":0}],\"usageMetadata\":{\"promptTokenCount\":1}}\r\n\r\n";
        let mut rng = fastrand::Rng::with_seed(6);
        let mutate = testing::mutate;
        for _ in 0..3000 {
            let b = mutate(&mut rng, body);
            if let Ok(req) = ClientRequest::parse(Endpoint::ChatCompletions, b.into()) {
                let _ = anthropic::translate_request(&ant, &req);
                let _ = gemini::translate_request(&gem, &req);
            }
            let s = mutate(&mut rng, astream.as_bytes());
            let mut tr = anthropic::AnthropicStream::new("c".into(), true);
            let mut out = BytesMut::new();
            let cut = rng.usize(..s.len());
            let _ = tr
                .feed(&s[..cut], &mut out)
                .and_then(|_| tr.feed(&s[cut..], &mut out))
                .and_then(|_| tr.finish(&mut out));
            let s = mutate(&mut rng, gstream.as_bytes());
            let mut tr = gemini::GeminiStream::new("g".into(), true);
            let _ = tr.feed(&s, &mut out).and_then(|_| tr.finish(&mut out));
        }
    }

    #[test]
    fn chunk_writer_bytes() {
        let w = ChunkWriter::new("i\"d".into(), "m".into(), false);
        let mut out = BytesMut::new();
        let d = Delta {
            content: Some("a\nb"),
            ..Delta::default()
        };
        w.delta(&mut out, 2, &d, Some("stop"));
        let want = format!(
            "data: {{\"id\":\"i\\\"d\",\"object\":\"chat.completion.chunk\",\"created\":{},\"model\":\"m\",\"choices\":[{{\"index\":2,\"delta\":{{\"content\":\"a\\nb\"}},\"logprobs\":null,\"finish_reason\":\"stop\"}}]}}\n\n",
            w.created
        );
        assert_eq!(std::str::from_utf8(&out).unwrap(), want);
        // Nothing is written for usage without include_usage.
        w.usage(&mut out, &Usage::default());
        assert_eq!(out.len(), want.len());
    }
}

/// Helpers for the providers' unit tests.
#[cfg(test)]
pub(crate) mod testing {
    use crate::request::{ClientRequest, Endpoint};
    use crate::upstream::Upstream;
    use bytes::Bytes;
    use llmgw_core::config::ProviderKind;
    use serde_json::Value;

    pub fn deployment(kind: ProviderKind, model: &str, drop_params: bool) -> Upstream {
        let mut d = Upstream::new(
            "dep-1",
            "group",
            kind,
            model,
            "http://127.0.0.1:9/v1",
            crate::providers::for_kind(kind),
        );
        d.api_key = Some(llmgw_core::config::Secret::new("sk-test-secret"));
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

    /// `src` with one to three bytes replaced, removed or inserted (JSON and SSE
    /// punctuation, mostly).
    pub fn mutate(rng: &mut fastrand::Rng, src: &[u8]) -> Vec<u8> {
        const JUNK: &[u8] = b"{}[]\",:\\0a-\n\r ";
        let mut b = src.to_vec();
        for _ in 0..rng.usize(1..4) {
            if b.is_empty() {
                b.push(JUNK[rng.usize(..JUNK.len())]);
                continue;
            }
            let at = rng.usize(..b.len());
            match rng.u8(..3) {
                0 => b[at] = JUNK[rng.usize(..JUNK.len())],
                1 => {
                    b.remove(at);
                }
                _ => b.insert(at, JUNK[rng.usize(..JUNK.len())]),
            }
        }
        b
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
