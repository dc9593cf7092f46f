//! The client's request, parsed only as far as routing needs.
//!
//! The body is kept as the client's bytes. We read `model`, `stream` and
//! `stream_options.include_usage` and remember where the `model` value sits, so a
//! passthrough provider can swap in the upstream's model id by splicing bytes instead of
//! re-serialising the whole document. Everything else (tools, unknown fields, …) passes
//! through untouched.

use bytes::{Bytes, BytesMut};
use llmgw_core::error::ApiError;
use serde::Deserialize;
use serde_json::value::RawValue;
use std::ops::Range;

mod scan;

/// The endpoints the gateway proxies: OpenAI's, Anthropic's Messages and OpenAI's
/// Responses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Endpoint {
    ChatCompletions,
    Completions,
    Embeddings,
    /// Anthropic `POST /v1/messages`.
    Messages,
    /// Anthropic `POST /v1/messages/count_tokens`.
    CountTokens,
    /// OpenAI `POST /v1/responses`.
    Responses,
}

impl Endpoint {
    /// Path below the API base, e.g. `chat/completions`.
    pub fn path(self) -> &'static str {
        match self {
            Endpoint::ChatCompletions => "chat/completions",
            Endpoint::Completions => "completions",
            Endpoint::Embeddings => "embeddings",
            Endpoint::Messages => "messages",
            Endpoint::CountTokens => "messages/count_tokens",
            Endpoint::Responses => "responses",
        }
    }

    /// The chat format of a chat endpoint (translated through the hub when a deployment
    /// speaks another); `None` for the others, which only pass through.
    pub fn chat_format(self) -> Option<Format> {
        match self {
            Endpoint::ChatCompletions => Some(Format::OpenAiChat),
            Endpoint::Messages => Some(Format::Anthropic),
            Endpoint::Responses => Some(Format::Responses),
            Endpoint::Completions | Endpoint::Embeddings | Endpoint::CountTokens => None,
        }
    }

    /// The API family whose shapes the client expects (errors, streams).
    pub fn api(self) -> Api {
        match self {
            Endpoint::Messages | Endpoint::CountTokens => Api::Anthropic,
            Endpoint::Responses => Api::Responses,
            _ => Api::OpenAi,
        }
    }
}

pub use llmgw_core::error::Api;

/// A wire format: what a client speaks, or what a deployment speaks upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    /// OpenAI chat completions (OpenAI, SGLang, vLLM, Azure).
    OpenAiChat,
    /// Anthropic Messages.
    Anthropic,
    /// Google Gemini `generateContent` (upstream only).
    Gemini,
    /// OpenAI Responses.
    Responses,
}

impl Format {
    /// The name used in error messages.
    pub fn name(self) -> &'static str {
        match self {
            Format::OpenAiChat => "OpenAI chat completions",
            Format::Anthropic => "Anthropic Messages",
            Format::Gemini => "Gemini",
            Format::Responses => "OpenAI Responses",
        }
    }
}

/// Client headers passed on to an upstream that speaks the client's own API.
#[derive(Debug, Clone, Default)]
pub struct Forwarded {
    /// Anthropic's `anthropic-version`.
    pub anthropic_version: Option<axum::http::HeaderValue>,
    /// Anthropic's `anthropic-beta` (comma-separated feature names).
    pub anthropic_beta: Option<axum::http::HeaderValue>,
}

impl Forwarded {
    /// The headers of `headers` an upstream of `endpoint`'s API may see.
    pub fn from_headers(endpoint: Endpoint, headers: &axum::http::HeaderMap) -> Self {
        if endpoint.api() != Api::Anthropic {
            return Forwarded::default();
        }
        Forwarded {
            anthropic_version: headers.get("anthropic-version").cloned(),
            anthropic_beta: headers.get("anthropic-beta").cloned(),
        }
    }
}

/// A parsed client request: the original bytes plus the few fields routing reads.
#[derive(Debug, Clone)]
pub struct ClientRequest {
    pub endpoint: Endpoint,
    pub body: Bytes,
    /// The model group asked for.
    pub model: String,
    pub stream: bool,
    pub include_usage: bool,
    /// The most output tokens the client allows (`max_tokens`, `max_completion_tokens`
    /// or `max_output_tokens` at the top level, as a whole number; the largest when
    /// several are given): what the gateway reserves against a key's budget and tpm
    /// before the answer is known. `None` when absent (a configured default is used).
    pub max_tokens: Option<u64>,
    /// The end user the request is for: the top-level `user` string (OpenAI's chat
    /// completions, completions, embeddings, responses), else `metadata.user_id`
    /// (Anthropic's Messages); the last one when repeated. Read by the same pass that
    /// finds `model`.
    pub end_user: Option<String>,
    /// Which model groups this request may reach by any fallback path (set by the
    /// gateway for a virtual key; `None`: every group).
    pub access: Option<std::sync::Arc<dyn GroupAccess>>,
    /// llmgw's own per-request fields (removed from `body` before it goes upstream).
    pub options: RequestOptions,
    /// Client headers for an upstream of the client's own API.
    pub forwarded: Forwarded,
    /// Who it is for the fair queue (set by the gateway; the default otherwise).
    pub flow: Flow,
    /// A Responses request's tool names and stored conversation (`apis::prepare` in the
    /// gateway sets it before routing; `None` elsewhere).
    pub prepared: Option<std::sync::Arc<crate::prepared::Prepared>>,
    /// Byte range of the `model` value (quotes included) in `body`.
    model_span: Range<usize>,
}

/// Which model groups a request may be answered by: a virtual key's (and its team's and
/// user's) allowed models. The router asks it before trying a fallback group, so no path
/// (the request's own `fallbacks`, configured or default fallbacks, context-window
/// fallbacks, spillover) leaves what the caller may use.
pub trait GroupAccess: Send + Sync + std::fmt::Debug {
    fn allows_group(&self, group: &str) -> bool;
}

/// A JSON number token that is a whole non-negative number fitting `u64`, else `None`.
pub(crate) fn whole_number(token: &[u8]) -> Option<u64> {
    if token.is_empty() || !token.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(token).ok()?.parse().ok()
}

/// The raw value of the last field `name` of a JSON object (`None` for anything else).
fn last_field<'a>(text: &'a str, name: &str) -> Option<&'a RawValue> {
    struct Last<'n>(&'n str);
    impl<'de> serde::de::Visitor<'de> for Last<'_> {
        type Value = Option<&'de RawValue>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("an object")
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(
            self,
            mut map: A,
        ) -> Result<Option<&'de RawValue>, A::Error> {
            let mut found = None;
            while let Some(k) = map.next_key::<std::borrow::Cow<'de, str>>()? {
                if k == self.0 {
                    found = Some(map.next_value::<&'de RawValue>()?);
                } else {
                    map.next_value::<serde::de::IgnoredAny>()?;
                }
            }
            Ok(found)
        }
    }
    let mut de = serde_json::Deserializer::from_str(text);
    serde::Deserializer::deserialize_map(&mut de, Last(name))
        .ok()
        .flatten()
}

/// The end user of a valid JSON object (the full parse's counterpart of the fast scan's):
/// `user` when it is a string, else `metadata.user_id` when that is one.
fn end_user_of(text: &str) -> Option<String> {
    let string = |v: &RawValue| serde_json::from_str::<String>(v.get()).ok();
    last_field(text, "user").and_then(string).or_else(|| {
        last_field(text, "metadata")
            .and_then(|m| last_field(m.get(), "user_id"))
            .and_then(string)
    })
}

/// The largest top-level `max_tokens`/`max_completion_tokens`/`max_output_tokens` of a
/// valid JSON object (the full parse's counterpart of the fast scan's).
fn output_cap(text: &str) -> Option<u64> {
    struct Cap;
    impl<'de> serde::de::Visitor<'de> for Cap {
        type Value = Option<u64>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("an object")
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(
            self,
            mut map: A,
        ) -> Result<Option<u64>, A::Error> {
            let mut cap: Option<u64> = None;
            while let Some(k) = map.next_key::<std::borrow::Cow<'de, str>>()? {
                if matches!(
                    &*k,
                    "max_tokens" | "max_completion_tokens" | "max_output_tokens"
                ) {
                    let v = map.next_value::<&'de RawValue>()?;
                    if let Some(n) = whole_number(v.get().as_bytes()) {
                        cap = Some(cap.map_or(n, |c| c.max(n)));
                    }
                } else {
                    map.next_value::<serde::de::IgnoredAny>()?;
                }
            }
            Ok(cap)
        }
    }
    let mut de = serde_json::Deserializer::from_str(text);
    serde::Deserializer::deserialize_map(&mut de, Cap)
        .ok()
        .flatten()
}

/// Per-request controls that llmgw reads and no upstream sees.
#[derive(Debug, Clone, Default)]
pub struct RequestOptions {
    /// Replaces the configured fallbacks of the requested model.
    pub fallbacks: Option<Vec<String>>,
    pub disable_fallbacks: bool,
    /// Overall time limit for this request (seconds in the body).
    pub timeout: Option<std::time::Duration>,
    /// The raw `cache` controls object, for the response cache.
    pub cache: Option<Box<RawValue>>,
    /// The priority class the request asks for (`"priority"` in the body), before the
    /// key's cap and default apply.
    pub priority: Option<u8>,
    /// Only the group's local deployments may serve it (a batch line without
    /// `[batches] allow_cloud`); set by the gateway, never read from the body.
    pub local_only: bool,
}

/// Who a request belongs to for the gateway's fair queue, and how it ranks: set by the
/// gateway after admission (the key, team or user; their weight; the priority class).
#[derive(Debug, Clone)]
pub struct Flow {
    /// Requests with the same id share one fair share ("" for the master key or a gateway
    /// without keys).
    pub id: std::sync::Arc<str>,
    /// Relative share against other flows (1 to [`priority::MAX_WEIGHT`]).
    pub weight: u32,
    /// Higher classes are served first: [`priority::BATCH`], [`priority::DEFAULT`],
    /// [`priority::INTERACTIVE`], or any number in between.
    pub priority: u8,
}

impl Default for Flow {
    fn default() -> Self {
        Flow {
            id: std::sync::Arc::from(""),
            weight: 1,
            priority: priority::DEFAULT,
        }
    }
}

/// Priority classes: a name (`interactive`, `default`, `batch`) or a number 0–255.
pub mod priority {
    use llmgw_core::error::ApiError;

    pub const BATCH: u8 = 10;
    pub const DEFAULT: u8 = 100;
    pub const INTERACTIVE: u8 = 200;
    /// Largest weight a flow may have.
    pub const MAX_WEIGHT: u32 = 1000;

    /// A class from its name or number (the `x-llmgw-priority` header, config values).
    pub fn parse(s: &str) -> Result<u8, ApiError> {
        match s.trim() {
            "interactive" => Ok(INTERACTIVE),
            "default" => Ok(DEFAULT),
            "batch" => Ok(BATCH),
            n => n.parse::<u8>().map_err(|_| invalid(n)),
        }
    }

    /// A class from the body's `"priority"`: a name or an integer 0–255.
    pub fn from_json(v: &serde_json::Value) -> Result<u8, ApiError> {
        match v {
            serde_json::Value::String(s) => parse(s),
            serde_json::Value::Number(n) => n
                .as_u64()
                .and_then(|n| u8::try_from(n).ok())
                .ok_or_else(|| invalid(&n.to_string())),
            other => Err(invalid(&other.to_string())),
        }
    }

    fn invalid(got: &str) -> ApiError {
        let got: String = got.chars().take(40).collect();
        ApiError::bad_request(format!(
            "priority must be \"interactive\", \"default\", \"batch\" or a number from 0 to 255 (higher first); got {got:?}"
        ))
    }

    /// The class's name when it has one, else its number.
    pub fn name(p: u8) -> String {
        match p {
            INTERACTIVE => "interactive".into(),
            DEFAULT => "default".into(),
            BATCH => "batch".into(),
            n => n.to_string(),
        }
    }
}

/// Most model groups a request's own `fallbacks` may list: more is never useful (each one
/// is tried in turn) and would let one request make the router walk a huge list.
pub const MAX_FALLBACKS: usize = 32;

/// Body keys that are llmgw's, not the upstream's.
const OWN_KEYS: [&str; 5] = [
    "fallbacks",
    "disable_fallbacks",
    "timeout",
    "cache",
    "priority",
];

#[derive(Deserialize)]
struct Head<'a> {
    #[serde(borrow)]
    model: Option<&'a RawValue>,
    #[serde(default)]
    stream: Option<serde_json::Value>,
    #[serde(default)]
    stream_options: Option<StreamOptions>,
    #[serde(default)]
    fallbacks: Option<Fallbacks>,
    #[serde(default)]
    disable_fallbacks: Option<bool>,
    #[serde(default)]
    timeout: Option<serde_json::Value>,
    #[serde(default, borrow)]
    cache: Option<&'a RawValue>,
    #[serde(default)]
    priority: Option<serde_json::Value>,
}

/// The request's `fallbacks`: at most [`MAX_FALLBACKS`] distinct names are kept (in
/// order, duplicates dropped); the rest are only counted, so a huge list costs no memory.
struct Fallbacks {
    names: Vec<String>,
    total: usize,
}

impl<'de> Deserialize<'de> for Fallbacks {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = Fallbacks;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a list of model group names")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Fallbacks, A::Error> {
                let mut names: Vec<String> = Vec::new();
                let mut seen = std::collections::HashSet::new();
                let mut total = 0;
                while total < MAX_FALLBACKS {
                    let Some(name) = seq.next_element::<String>()? else {
                        return Ok(Fallbacks { names, total });
                    };
                    total += 1;
                    if seen.insert(name.clone()) {
                        names.push(name);
                    }
                }
                while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {
                    total += 1;
                }
                Ok(Fallbacks { names, total })
            }
        }
        d.deserialize_seq(Visit)
    }
}

#[derive(Deserialize)]
struct StreamOptions {
    #[serde(default)]
    include_usage: Option<bool>,
}

/// Bodies up to this size are parsed on the async worker (well under a millisecond);
/// larger ones on the low-priority [`llmgw_core::heavy`] pool, so multi-megabyte bodies cannot
/// stall other requests.
pub const PARSE_INLINE_MAX: usize = 256 * 1024;

impl ClientRequest {
    /// [`ClientRequest::parse`], off the async workers when the body is large. A 503
    /// with Retry-After when too many large bodies are already waiting.
    pub async fn parse_bounded(endpoint: Endpoint, body: Bytes) -> Result<Self, ApiError> {
        if body.len() <= PARSE_INLINE_MAX {
            return Self::parse(endpoint, body);
        }
        llmgw_core::heavy::run(move || Self::parse(endpoint, body))
            .await
            .unwrap_or_else(|busy| {
                Err(ApiError::unavailable(format!(
                    "{busy} (bodies over {} KiB wait in a short queue); retry in a moment",
                    PARSE_INLINE_MAX / 1024
                ))
                .with_code("server_busy")
                .with_retry_after(1))
            })
    }

    /// Parses the routing fields; errors are OpenAI-shaped 400s.
    pub fn parse(endpoint: Endpoint, body: Bytes) -> Result<Self, ApiError> {
        match Self::parse_fast(endpoint, &body) {
            Some(req) => Ok(req),
            None => Self::parse_full(endpoint, body),
        }
    }

    /// The common case through [`scan::scan`]: a valid body with a string `model`, a bool
    /// `stream` and none of llmgw's own keys. `None` hands the body to [`Self::parse_full`],
    /// which decides everything else (and words every error).
    fn parse_fast(endpoint: Endpoint, body: &Bytes) -> Option<Self> {
        let text = std::str::from_utf8(body).ok()?;
        let fast = scan::scan(text.as_bytes())?;
        let raw = &text[fast.model.clone()];
        let model = if fast.model_escaped {
            serde_json::from_str(raw).ok()?
        } else {
            raw[1..raw.len() - 1].to_owned()
        };
        let end_user = match &fast.end_user {
            None => None,
            Some((span, true)) => Some(serde_json::from_str(&text[span.clone()]).ok()?),
            Some((span, false)) => Some(text[span.start + 1..span.end - 1].to_owned()),
        };
        Some(ClientRequest {
            endpoint,
            body: body.clone(),
            model,
            stream: fast.stream,
            include_usage: fast.include_usage,
            max_tokens: fast.max_tokens,
            end_user,
            access: None,
            options: RequestOptions::default(),
            forwarded: Forwarded::default(),
            flow: Flow::default(),
            prepared: None,
            model_span: fast.model,
        })
    }

    /// The full serde_json parse: everything [`Self::parse_fast`] leaves, and the wording
    /// of every error.
    fn parse_full(endpoint: Endpoint, body: Bytes) -> Result<Self, ApiError> {
        let text = std::str::from_utf8(&body)
            .map_err(|_| ApiError::bad_request("request body is not valid UTF-8 JSON"))?;
        let first = text.trim_start().as_bytes().first().copied();
        if first != Some(b'{') {
            return Err(ApiError::bad_request(
                "request body must be a JSON object, e.g. {\"model\": \"...\", \"messages\": [...]}",
            ));
        }
        let head: Head<'_> = serde_json::from_str(text)
            .map_err(|e| ApiError::bad_request(format!("request body is not valid JSON: {e}")))?;
        let raw = head.model.ok_or_else(|| {
            ApiError::bad_request("you must provide a model parameter").with_param("model")
        })?;
        let model: String = serde_json::from_str(raw.get())
            .map_err(|_| ApiError::bad_request("model must be a string").with_param("model"))?;
        if model.is_empty() {
            return Err(ApiError::bad_request("model must not be empty").with_param("model"));
        }
        let start = raw.get().as_ptr() as usize - text.as_ptr() as usize;
        let model_span = start..start + raw.get().len();
        let stream = match head.stream {
            None | Some(serde_json::Value::Null) => false,
            Some(serde_json::Value::Bool(b)) => b,
            Some(_) => {
                return Err(
                    ApiError::bad_request("stream must be true or false").with_param("stream")
                )
            }
        };
        let include_usage = head
            .stream_options
            .and_then(|o| o.include_usage)
            .unwrap_or(false);
        let has_own = head.fallbacks.is_some()
            || head.disable_fallbacks.is_some()
            || head.timeout.is_some()
            || head.cache.is_some()
            || head.priority.is_some();
        if let Some(f) = head.fallbacks.as_ref().filter(|f| f.total > MAX_FALLBACKS) {
            return Err(ApiError::bad_request(format!(
                "fallbacks lists {} model groups; at most {MAX_FALLBACKS} are allowed",
                f.total
            ))
            .with_param("fallbacks"));
        }
        let options = RequestOptions {
            fallbacks: head.fallbacks.map(|f| f.names),
            disable_fallbacks: head.disable_fallbacks.unwrap_or(false),
            timeout: match head.timeout {
                Some(v) => match v
                    .as_f64()
                    .map(|t| (t, llmgw_core::duration::from_secs_f64(t)))
                {
                    Some((t, Ok(d))) if t > 0.0 => Some(d),
                    _ => {
                        return Err(ApiError::bad_request(format!(
                            "timeout must be a number of seconds greater than 0 and at most \
                             {} (365 days); got {v}",
                            llmgw_core::duration::MAX.as_secs()
                        ))
                        .with_param("timeout"))
                    }
                },
                None => None,
            },
            cache: head.cache.map(|c| c.to_owned()),
            priority: match &head.priority {
                None | Some(serde_json::Value::Null) => None,
                Some(v) => Some(priority::from_json(v).map_err(|e| e.with_param("priority"))?),
            },
            local_only: false,
        };
        let mut req = ClientRequest {
            endpoint,
            body: body.clone(),
            model,
            stream,
            include_usage,
            max_tokens: output_cap(text),
            end_user: end_user_of(text),
            access: None,
            options,
            forwarded: Forwarded::default(),
            flow: Flow::default(),
            prepared: None,
            model_span,
        };
        if has_own {
            // Rare path: rebuild the body without llmgw's own keys.
            let mut map: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(&body)
                .map_err(|e| {
                    ApiError::bad_request(format!("request body is not valid JSON: {e}"))
                })?;
            for k in OWN_KEYS {
                map.remove(k);
            }
            let cleaned = Bytes::from(serde_json::to_vec(&map).unwrap_or_default());
            let reparsed = ClientRequest::parse(endpoint, cleaned)?;
            req.body = reparsed.body;
            req.model_span = reparsed.model_span;
        }
        Ok(req)
    }

    /// The body with `model` replaced by `upstream_model`; shares the bytes when equal.
    pub fn body_for_model(&self, upstream_model: &str) -> Bytes {
        if upstream_model == self.model {
            return self.body.clone();
        }
        let quoted = serde_json::to_string(upstream_model).unwrap_or_default();
        let mut out = BytesMut::with_capacity(self.body.len() + quoted.len());
        out.extend_from_slice(&self.body[..self.model_span.start]);
        out.extend_from_slice(quoted.as_bytes());
        out.extend_from_slice(&self.body[self.model_span.end..]);
        out.freeze()
    }

    /// The same request asking the upstream for a usage chunk at the end of the stream
    /// (`stream_options.include_usage`), so a streamed answer can be charged. Unchanged
    /// when it is not a stream or already asks. The client's own `include_usage` is
    /// remembered by the caller, which removes the chunk again (`spend::meter`).
    /// Only OpenAI's API needs asking: Anthropic and Responses streams always carry usage
    /// (and their bodies have no `stream_options`).
    pub fn with_usage_requested(self) -> ClientRequest {
        if !self.stream
            || self.include_usage
            || self.endpoint == Endpoint::Embeddings
            || self.endpoint.api() != Api::OpenAi
        {
            return self;
        }
        let has_options = memchr::memmem::find(&self.body, b"\"stream_options\"").is_some();
        let body = if has_options {
            // Rare: the client sent stream_options without include_usage; rebuild.
            let Ok(serde_json::Value::Object(mut map)) =
                serde_json::from_slice::<serde_json::Value>(&self.body)
            else {
                return self;
            };
            let opts = map
                .entry("stream_options")
                .or_insert_with(|| serde_json::json!({}));
            if let serde_json::Value::Object(o) = opts {
                o.insert("include_usage".into(), serde_json::Value::Bool(true));
            } else {
                *opts = serde_json::json!({"include_usage": true});
            }
            Bytes::from(serde_json::to_vec(&map).unwrap_or_default())
        } else {
            // Splice the field in right after the opening brace.
            const FIELD: &[u8] = b"\"stream_options\":{\"include_usage\":true},";
            let open = self.body.iter().position(|&b| b == b'{').unwrap_or(0);
            let mut out = BytesMut::with_capacity(self.body.len() + FIELD.len());
            out.extend_from_slice(&self.body[..=open]);
            out.extend_from_slice(FIELD);
            out.extend_from_slice(&self.body[open + 1..]);
            out.freeze()
        };
        match ClientRequest::parse(self.endpoint, body) {
            Ok(mut r) if r.include_usage => {
                r.options = self.options;
                r
            }
            _ => self,
        }
    }

    /// The whole body as a JSON value, for providers that translate it.
    pub fn json(&self) -> Result<serde_json::Value, ApiError> {
        serde_json::from_slice(&self.body)
            .map_err(|e| ApiError::bad_request(format!("request body is not valid JSON: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<ClientRequest, ApiError> {
        ClientRequest::parse(Endpoint::ChatCompletions, Bytes::from(s.to_string()))
    }

    #[test]
    fn reads_routing_fields() {
        let r = parse(
            r#"{"model":"m","stream":true,"stream_options":{"include_usage":true},"messages":[]}"#,
        )
        .unwrap();
        assert_eq!(r.model, "m");
        assert!(r.stream && r.include_usage);
    }

    #[test]
    fn splices_model_keeping_everything_else() {
        let src = r#"{"messages":[{"role":"user","content":"hi"}], "model" : "group", "tools":[{"x":1}],"weird":{"a":[1,2]}}"#;
        let r = parse(src).unwrap();
        let out = r.body_for_model("org/real-model");
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            src.replace("\"group\"", "\"org/real-model\"")
        );
    }

    #[test]
    fn escaped_model_names_round_trip() {
        let r = parse(r#"{"model":"a\"b"}"#).unwrap();
        assert_eq!(r.model, "a\"b");
        let out = r.body_for_model("c");
        assert_eq!(&out[..], br#"{"model":"c"}"#);
    }

    #[test]
    fn own_keys_are_read_and_removed() {
        let r = parse(r#"{"model":"m","fallbacks":["b"],"disable_fallbacks":false,"timeout":2.5,"cache":{"no-cache":true},"messages":[]}"#).unwrap();
        assert_eq!(r.options.fallbacks.as_deref(), Some(&["b".to_string()][..]));
        assert_eq!(
            r.options.timeout,
            Some(std::time::Duration::from_millis(2500))
        );
        assert!(r.options.cache.is_some());
        assert_eq!(&r.body[..], br#"{"model":"m","messages":[]}"#);
        assert_eq!(
            &r.body_for_model("x")[..],
            br#"{"model":"x","messages":[]}"#
        );
    }

    #[test]
    fn output_cap_is_read_on_both_paths() {
        let fast = parse(r#"{"model":"m","max_tokens":50,"messages":[]}"#).unwrap();
        assert_eq!(fast.max_tokens, Some(50));
        // llmgw's own keys send the body through the full parse.
        let full = parse(
            r#"{"model":"m","timeout":3,"max_completion_tokens":70,"max_tokens":5,"messages":[]}"#,
        )
        .unwrap();
        assert_eq!(full.max_tokens, Some(70));
        // Not a whole number, or nested: no cap (the configured default applies).
        for body in [
            r#"{"model":"m","max_tokens":1.5}"#,
            r#"{"model":"m","max_tokens":"9"}"#,
            r#"{"model":"m","tools":[{"max_tokens":1}]}"#,
        ] {
            assert_eq!(parse(body).unwrap().max_tokens, None, "{body}");
        }
    }

    #[test]
    fn usage_is_requested_for_streams_only() {
        let r = parse(r#"{"model":"m","stream":true,"messages":[]}"#)
            .unwrap()
            .with_usage_requested();
        assert!(r.include_usage);
        assert_eq!(
            &r.body[..],
            br#"{"stream_options":{"include_usage":true},"model":"m","stream":true,"messages":[]}"#
        );
        assert_eq!(
            &r.body_for_model("x")[..],
            br#"{"stream_options":{"include_usage":true},"model":"x","stream":true,"messages":[]}"#
        );
        let r = parse(r#"{"model":"m","stream":true,"stream_options":{"include_usage":false}}"#)
            .unwrap()
            .with_usage_requested();
        assert!(r.include_usage);
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(v["stream_options"]["include_usage"], true);
        let plain = parse(r#"{"model":"m"}"#).unwrap().with_usage_requested();
        assert_eq!(&plain.body[..], br#"{"model":"m"}"#);
        // Anthropic and Responses bodies are left alone: their streams carry usage.
        for endpoint in [Endpoint::Messages, Endpoint::Responses] {
            let body = Bytes::from_static(br#"{"model":"m","stream":true}"#);
            let r = ClientRequest::parse(endpoint, body.clone())
                .unwrap()
                .with_usage_requested();
            assert_eq!(r.body, body);
        }
    }

    #[test]
    fn fallbacks_are_deduplicated_and_capped() {
        let r = parse(r#"{"model":"m","fallbacks":["a","b","a","c","b"]}"#).unwrap();
        assert_eq!(r.options.fallbacks.unwrap(), ["a", "b", "c"]);
        let many: Vec<String> = (0..=MAX_FALLBACKS).map(|i| format!("n{i}")).collect();
        let body = serde_json::json!({"model": "m", "fallbacks": many}).to_string();
        let e = parse(&body).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("fallbacks"));
        assert!(e.message.contains("at most 32"), "{}", e.message);
        assert!(parse(r#"{"model":"m","fallbacks":[1]}"#).is_err());
        assert!(parse(r#"{"model":"m","fallbacks":"a"}"#).is_err());
    }

    #[test]
    fn timeouts_are_checked() {
        for bad in [
            "0",
            "-0",
            "-1",
            "1e300",
            "31536001",
            "18446744073709551616",
            "\"5s\"",
        ] {
            let e = parse(&format!(r#"{{"model":"m","timeout":{bad}}}"#)).unwrap_err();
            assert_eq!(e.param.as_deref(), Some("timeout"), "{bad}");
        }
        let r = parse(r#"{"model":"m","timeout":31536000}"#).unwrap();
        assert_eq!(r.options.timeout, Some(llmgw_core::duration::MAX));
    }

    /// What a parse yields, for comparing the fast path with the full parse.
    fn outcome(r: &Result<ClientRequest, ApiError>) -> String {
        match r {
            Ok(r) => format!(
                "ok model={:?} stream={} usage={} max_tokens={:?} span={:?} body={:?} fallbacks={:?} \
                 disable={} timeout={:?} cache={:?} end_user={:?}",
                r.model,
                r.stream,
                r.include_usage,
                r.max_tokens,
                r.model_span,
                r.body,
                r.options.fallbacks,
                r.options.disable_fallbacks,
                r.options.timeout,
                r.options.cache.as_ref().map(|c| c.get()),
                r.end_user,
            ),
            Err(e) => format!("err {:?} param={:?}", e.message, e.param),
        }
    }

    /// `parse` (fast path first) gives exactly what the full serde_json parse gives, and
    /// the fast scan only accepts what serde_json accepts as a JSON value. True when the
    /// fast path took the body.
    fn check_same(body: &[u8]) -> bool {
        let bytes = Bytes::copy_from_slice(body);
        let new = ClientRequest::parse(Endpoint::ChatCompletions, bytes.clone());
        let old = ClientRequest::parse_full(Endpoint::ChatCompletions, bytes);
        let shown = String::from_utf8_lossy(body);
        assert_eq!(outcome(&new), outcome(&old), "body: {shown}");
        let fast = std::str::from_utf8(body).is_ok() && scan::scan(body).is_some();
        if fast {
            if let Err(e) = serde_json::from_slice::<serde_json::Value>(body) {
                // serde_json's Value refuses numbers beyond f64, unpaired surrogate
                // escapes and deep nesting; its ignore path, and so the routing parse
                // (then and now), skips over all three.
                let e = e.to_string();
                assert!(
                    [
                        "number out of range",
                        "recursion limit",
                        "hex escape",
                        "surrogate"
                    ]
                    .iter()
                    .any(|known| e.contains(known)),
                    "fast path accepted invalid JSON ({e}): {shown}"
                );
            }
        }
        fast
    }

    /// A random JSON value, with random spacing; `depth` bounds the nesting.
    fn gen_value(rng: &mut fastrand::Rng, depth: u32, out: &mut String) {
        let ws = |rng: &mut fastrand::Rng, out: &mut String| {
            for _ in 0..rng.usize(0..3).saturating_sub(1) {
                out.push([' ', '\n', '\t', '\r'][rng.usize(0..4)]);
            }
        };
        ws(rng, out);
        match rng.u32(0..if depth == 0 { 6 } else { 8 }) {
            0 => out.push_str(["true", "false", "null"][rng.usize(0..3)]),
            1 | 2 => {
                let n = [
                    "0",
                    "-0",
                    "1",
                    "-12",
                    "3.25",
                    "1e5",
                    "2E-3",
                    "-0.5e+10",
                    "1e400",
                    "7",
                    "123456789012345678901234567890",
                ];
                out.push_str(n[rng.usize(0..n.len())]);
            }
            3..=5 => gen_string(rng, out),
            6 => {
                out.push('[');
                for i in 0..rng.usize(0..4) {
                    if i > 0 {
                        out.push(',');
                    }
                    gen_value(rng, depth - 1, out);
                }
                ws(rng, out);
                out.push(']');
            }
            _ => {
                out.push('{');
                for i in 0..rng.usize(0..4) {
                    if i > 0 {
                        out.push(',');
                    }
                    ws(rng, out);
                    gen_string(rng, out);
                    ws(rng, out);
                    out.push(':');
                    gen_value(rng, depth - 1, out);
                }
                ws(rng, out);
                out.push('}');
            }
        }
        ws(rng, out);
    }

    fn gen_string(rng: &mut fastrand::Rng, out: &mut String) {
        let parts = [
            "a",
            "role",
            "user",
            "hello world ",
            "é",
            "日本",
            "😀",
            r#"\""#,
            r"\\",
            r"\/",
            r"\n",
            r"\t",
            r"\u0041",
            r"\u00e9",
            r"\ud83d\ude00",
            r"\ud800",
            "'",
            "x y z",
            "model",
            "0123456789abcdef",
        ];
        out.push('"');
        for _ in 0..rng.usize(0..6) {
            out.push_str(parts[rng.usize(0..parts.len())]);
        }
        out.push('"');
    }

    /// A request-like top-level object: routing keys with good and bad values, llmgw's
    /// own keys, escaped and repeated keys, and random other fields.
    fn gen_body(rng: &mut fastrand::Rng) -> String {
        let mut fields: Vec<(String, String)> = Vec::new();
        if rng.u32(0..10) > 0 {
            let m = [
                r#""group""#,
                r#""org/m-1""#,
                r#""qwen3""#,
                r#""gpt-4o""#,
                r#""""#,
                r#""a\"b""#,
                r#""\u00e9""#,
                r#""\ud800""#,
                "3",
                "null",
                r#"["m"]"#,
            ];
            fields.push(("model".into(), m[rng.usize(0..m.len())].into()));
        }
        for _ in 0..rng.usize(0..4) {
            let keys = [
                "messages",
                "tools",
                "temperature",
                "x",
                "max_tokens",
                "model",
            ];
            let n = if rng.u32(0..4) == 0 { 6 } else { 5 };
            let key = keys[rng.usize(0..n)];
            let mut v = String::new();
            gen_value(rng, 4, &mut v);
            fields.push((key.into(), v));
        }
        if rng.bool() {
            let v = ["true", "false", "null", "true", "1", r#""yes""#, "[]"][rng.usize(0..7)];
            fields.push(("stream".into(), v.into()));
        }
        if rng.u32(0..3) == 0 {
            let v = [
                r#"{"include_usage":true}"#,
                r#"{ "x": [1, {"include_usage": 3}], "include_usage" : false }"#,
                r#"{"include_usage":null}"#,
                r#"{"include_usage":true,"include_usage":true}"#,
                r#"{"include_\u0075sage":true}"#,
                "{}",
                "null",
                "[true]",
                r#"{"include_usage":1}"#,
            ];
            fields.push(("stream_options".into(), v[rng.usize(0..v.len())].into()));
        }
        if rng.u32(0..3) == 0 {
            let (k, v) = [
                ("user", r#""alice""#),
                ("user", r#""\u00e9\"x""#),
                ("user", "3"),
                ("user", "null"),
                ("user", r#""\ud800""#),
                ("metadata", r#"{"user_id":"bob"}"#),
                ("metadata", r#"{"x":[1],"user_id":"a","user_id":"b"}"#),
                ("metadata", r#"{"user_id":7}"#),
                ("metadata", r#"{"user_\u0069d":"c"}"#),
                ("metadata", "[]"),
            ][rng.usize(0..10)];
            fields.push((k.into(), v.into()));
        }
        if rng.u32(0..8) == 0 {
            let (k, v) = [
                ("fallbacks", r#"["a","b","a"]"#),
                ("disable_fallbacks", "true"),
                ("timeout", "2.5"),
                ("cache", r#"{"no-cache":true}"#),
                (r"mod\u0065l", r#""other""#),
                ("stream", "true"),
            ][rng.usize(0..6)];
            fields.push((k.into(), v.into()));
        }
        rng.shuffle(&mut fields);
        let mut out = String::from(if rng.bool() { "{" } else { " \n{ " });
        for (i, (k, v)) in fields.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            let colon = if rng.bool() { ":" } else { " : " };
            out.push_str(&format!("\"{k}\"{colon}{v}"));
        }
        out.push_str(if rng.bool() { "}" } else { "} \n" });
        out
    }

    /// Random and mutated bodies: the fast path and the full parse agree on every one
    /// (valid or not, same fields, same error), and the fast path takes most valid ones.
    #[test]
    fn fast_path_agrees_with_serde_json() {
        let mut rng = fastrand::Rng::with_seed(13);
        // valid: requests the gateway takes; invalid: mutants that are not even JSON.
        let (mut valid, mut valid_fast, mut mutated_fast, mut invalid) = (0, 0, 0, 0);
        for _ in 0..20_000 {
            let body = gen_body(&mut rng);
            let fast = check_same(body.as_bytes());
            if parse(&body).is_ok() {
                valid += 1;
                valid_fast += usize::from(fast);
            }
            // Mutations: a byte changed, inserted or removed, or the body cut short.
            let mut b = body.into_bytes();
            for _ in 0..rng.usize(1..3) {
                let alphabet = b"{}[]\":,\\ \n0123456789-+.eEtrufalsn\x01\x1f\x7fu\xc3";
                let c = alphabet[rng.usize(0..alphabet.len())];
                match rng.u32(0..4) {
                    _ if b.is_empty() => b.push(c),
                    0 => {
                        let i = rng.usize(0..b.len());
                        b[i] = c;
                    }
                    1 => b.insert(rng.usize(0..=b.len()), c),
                    2 => {
                        b.remove(rng.usize(0..b.len()));
                    }
                    _ => b.truncate(rng.usize(0..b.len())),
                }
            }
            mutated_fast += usize::from(check_same(&b));
            invalid += usize::from(serde_json::from_slice::<serde_json::Value>(&b).is_err());
        }
        // Not vacuous: most requests took the fast path, many mutants were invalid.
        assert!(
            valid_fast * 4 > valid * 3,
            "{valid_fast} of {valid} valid took the fast path"
        );
        assert!(
            valid > 5_000 && invalid > 5_000,
            "{valid} valid, {invalid} invalid"
        );
        assert!(
            mutated_fast > 1_000,
            "{mutated_fast} mutants took the fast path"
        );
    }

    #[test]
    fn end_users_are_read_on_both_paths() {
        for (body, want) in [
            (
                r#"{"model":"m","user":"alice","messages":[]}"#,
                Some("alice"),
            ),
            (
                r#"{"model":"m","metadata":{"user_id":"u-42"}}"#,
                Some("u-42"),
            ),
            (
                r#"{"model":"m","metadata":{"user_id":"b"},"user":"a"}"#,
                Some("a"),
            ),
            (r#"{"model":"m","user":"\u00e9","timeout":3}"#, Some("é")),
            (r#"{"model":"m","user":3}"#, None),
            (r#"{"model":"m"}"#, None),
        ] {
            assert_eq!(parse(body).unwrap().end_user.as_deref(), want, "{body}");
            check_same(body.as_bytes());
        }
    }

    /// Hand-picked edge cases of the JSON grammar and of serde_json's struct rules.
    #[test]
    fn fast_path_edge_cases_agree() {
        for body in [
            r#"{"model":"m"}"#,
            r#"{"model":"m"} x"#,
            r#"{"model":"m"}}"#,
            r#"{"model":"m",}"#,
            r#"{"model":"m","model":"n"}"#,
            r#"{"model":"m","stream":true,"stream":true}"#,
            r#"{"model":"m","stream":null,"stream":true}"#,
            r#"{"model":"m","x":1,"x":2}"#,
            r#"{"mod\u0065l":"m"}"#,
            r#"{"model":"m","stream":1}"#,
            r#"{"model":"m","stream":null}"#,
            r#"{"model":"m","stream_options":[true]}"#,
            r#"{"model":"m","stream_options":{"include_usage":true,"include_usage":false}}"#,
            r#"{"model":"m","x":01}"#,
            r#"{"model":"m","x":-01}"#,
            r#"{"model":"m","x":1.}"#,
            r#"{"model":"m","x":.5}"#,
            r#"{"model":"m","x":-}"#,
            r#"{"model":"m","x":1e}"#,
            r#"{"model":"m","x":1e+}"#,
            r#"{"model":"m","x":+1}"#,
            r#"{"model":"m","x":1x}"#,
            r#"{"model":"m","x":tru}"#,
            r#"{"model":"m","x":truee}"#,
            r#"{"model":"m","x":"\x"}"#,
            r#"{"model":"m","x":"\u12"}"#,
            r#"{"model":"m","x":"\u12g4"}"#,
            r#"{"model":"m","x":"\ud800"}"#,
            r#"{"model":"m","x":{"\ud800":1}}"#,
            r#"{"model":"m","x":[1,]}"#,
            r#"{"model":"m","x":[,1]}"#,
            r#"{"model":"m","x":{"a":1,}}"#,
            r#"{"model":"m","x":{"a" 1}}"#,
            r#"{"model":"m","x":{1:1}}"#,
            r#"{"model":"m","x":[}"#,
            r#"{"model":"m","x":{]}"#,
            r#"{"model":"\ud800"}"#,
            r#"{"model":"\u0000"}"#,
            r#"{"model":""}"#,
            r#"{"model":"a\/b"}"#,
            "{\"model\":\"m\",\"x\":\"a\u{1}b\"}",
            "{\"model\":\"m\",\"x\":\"tab\there\"}",
            "{\"model\":\"m\",\"x\":\"\u{7f}\"}",
            "\u{a0}{\"model\":\"m\"}",
            "\u{c}{\"model\":\"m\"}",
            "{\"model\":\"m\"}\u{0}",
            r#"{"model":"m","x":"unterminated}"#,
            r#"{"model":"m","x":"ends in backslash\"#,
            r#"{"model":"m","x":"\u00"#,
            r#"{"model":"m","user":"a","user":"b"}"#,
            r#"{"model":"m","user":"a","user":1}"#,
            r#"{"model":"m","metadata":{"user_id":"b"},"user":"a"}"#,
            r#"{"model":"m","metadata":{"user_id":"b"},"user":null}"#,
            r#"{"model":"m","metadata":{"user_id":"b",}}"#,
            r#"{"model":"m","metadata":{}}"#,
            r#"{"model":"m","user":"\u00e9"}"#,
        ] {
            check_same(body.as_bytes());
        }
        assert!(check_same(br#"{"model":"a\/b","x":{"\ud800":[1e400]}}"#));
        check_same(b"{\"model\":\"m\",\"x\":\"\xff\"}");
    }

    /// Nesting: the fast path follows [`scan::MAX_DEPTH`] levels without recursion;
    /// deeper bodies go to serde_json, whose skipping is iterative too, so a megabyte of
    /// `[` neither blows the stack nor changes the answer.
    #[test]
    fn deep_nesting_is_bounded_and_agrees() {
        let nested = |n: usize, close: bool| {
            let mut s = String::from(r#"{"model":"m","messages":"#);
            s.push_str(&"[".repeat(n));
            if close {
                s.push_str(&"]".repeat(n));
                s.push('}');
            }
            s
        };
        assert!(check_same(nested(scan::MAX_DEPTH, true).as_bytes()));
        assert!(!check_same(nested(scan::MAX_DEPTH + 1, true).as_bytes()));
        let deep = nested(1 << 20, false);
        assert!(!check_same(deep.as_bytes()));
        let e = parse(&deep).unwrap_err();
        assert!(e.message.contains("not valid JSON"), "{}", e.message);
        // On a small stack, so recursion anywhere would show.
        std::thread::Builder::new()
            .stack_size(256 * 1024)
            .spawn(move || {
                let r = parse(&nested(1 << 20, true));
                assert_eq!(r.map(|r| r.model).ok().as_deref(), Some("m"));
            })
            .unwrap()
            .join()
            .unwrap();
    }

    #[test]
    fn errors_are_clear() {
        assert!(parse("{").unwrap_err().message.contains("not valid JSON"));
        assert_eq!(parse("{}").unwrap_err().param.as_deref(), Some("model"));
        assert!(parse("[1]").unwrap_err().message.contains("JSON object"));
        assert!(parse(r#"{"model":3}"#)
            .unwrap_err()
            .message
            .contains("string"));
    }
}
