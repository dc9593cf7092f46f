//! Anthropic Messages API (`POST {api_base}/messages`) behind OpenAI's chat completions.
//!
//! Request: system messages become the top-level `system`; consecutive turns of the same
//! role are merged (Anthropic requires alternation); `tool` messages become
//! `tool_result` blocks in a user turn and assistant `tool_calls` become `tool_use`
//! blocks; `max_tokens` is always sent. Response: text and `tool_use` blocks become the
//! message content and `tool_calls`; stop reasons and usage are mapped. Streams are
//! translated event by event from Anthropic's named SSE events into OpenAI chunks.

use super::translate::{
    self as t, content_str, invalid, is_null, parse_data_url, raw_is_default, raw_max_tokens,
    raw_stop_list, secret_header, unsupported_all, ChatBody, ChunkWriter, Content, Delta,
    FunctionCall, FunctionDelta, InMessage, InTool, InToolCall, Lax, LaxList, MaybeRaw, Part,
    SseParser, ToolCall, ToolCallDelta, ToolChoiceIn, Usage,
};
use super::{Provider, StreamTranslator, UpstreamError};
use crate::config::ErrorClass;
use crate::error::ApiError;
use crate::request::{ClientRequest, Endpoint};
use crate::router::Deployment;
use axum::http::{HeaderMap, StatusCode};
use bytes::{Bytes, BytesMut};
use reqwest::header::{HeaderValue, CONTENT_TYPE};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::Value;
use std::borrow::Cow;

const NAME: &str = "anthropic";
/// The API version this translation follows.
pub const API_VERSION: &str = "2023-06-01";
/// `max_tokens` when neither the request nor the deployment sets one.
pub const DEFAULT_MAX_TOKENS: u64 = 4096;

/// The Anthropic Messages provider.
pub struct Anthropic;

impl Provider for Anthropic {
    fn build(
        &self,
        client: &reqwest::Client,
        dep: &Deployment,
        req: &ClientRequest,
    ) -> Result<reqwest::RequestBuilder, ApiError> {
        if req.endpoint != Endpoint::ChatCompletions {
            return Err(ApiError::bad_request(format!(
                "deployment {} (anthropic) serves only /v1/chat/completions, not /v1/{}",
                dep.id,
                req.endpoint.path()
            ))
            .with_code("unsupported_endpoint"));
        }
        let body = translate_request(dep, req)?;
        let mut rb = client
            .post(format!("{}/messages", dep.api_base))
            .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
            .header("anthropic-version", HeaderValue::from_static(API_VERSION))
            .body(body);
        if let Some(key) = &dep.api_key {
            rb = rb.header("x-api-key", secret_header(dep, key.expose())?);
        }
        Ok(rb)
    }

    fn passthrough(&self) -> bool {
        false
    }

    fn translate_body(
        &self,
        _dep: &Deployment,
        _req: &ClientRequest,
        body: Bytes,
    ) -> Result<Bytes, ApiError> {
        translate_response(&body)
    }

    fn stream_translator(
        &self,
        dep: &Deployment,
        req: &ClientRequest,
    ) -> Box<dyn StreamTranslator> {
        Box::new(AnthropicStream::new(dep.model.clone(), req.include_usage))
    }

    fn error(&self, status: StatusCode, headers: &HeaderMap, body: &[u8]) -> UpstreamError {
        map_error(status, headers, body)
    }
}

// ---------------------------------------------------------------------------------------
// Request
// ---------------------------------------------------------------------------------------

/// The Anthropic request body for an OpenAI chat completions request.
pub fn translate_request(dep: &Deployment, req: &ClientRequest) -> Result<Vec<u8>, ApiError> {
    let mut body = ChatBody::parse(req)?;
    let messages = body.messages()?;
    let (system, turns) = convert_messages(&messages)?;
    let max = raw_max_tokens(&mut body)?
        .or(dep.max_tokens)
        .unwrap_or(DEFAULT_MAX_TOKENS);
    let mut out = MessagesRequest {
        model: &dep.model,
        max_tokens: max,
        system,
        messages: turns
            .into_iter()
            .map(|(role, content)| Turn { role, content })
            .collect(),
        stream: false,
        temperature: None,
        top_p: None,
        top_k: None,
        stop_sequences: Vec::new(),
        tools: Vec::new(),
        metadata: None,
        tool_choice: None,
    };
    let tools = match &body.tools {
        Some(t) => convert_tools(dep, t)?,
        None => Vec::new(),
    };
    let has_tools = !tools.is_empty();
    out.tools = tools;
    let mut tool_choice: Option<ToolChoiceOut<'_>> = None;
    let mut parallel = true;
    let mut rejected = Vec::new();
    for (k, v) in &body.params {
        let v: &RawValue = v;
        match &**k {
            "model" | "stream_options" => {}
            "stream" => out.stream = v.get() == "true",
            "temperature" | "top_p" | "top_k" => {
                let v = (!is_null(v)).then_some(v);
                match &**k {
                    "temperature" => out.temperature = v,
                    "top_p" => out.top_p = v,
                    _ => out.top_k = v,
                }
            }
            "stop" => out.stop_sequences = raw_stop_list(v)?,
            "tool_choice" => {
                tool_choice = t::tool_choice(v)?.map(|c| {
                    let (kind, name) = match c {
                        ToolChoiceIn::Auto => ("auto", None),
                        ToolChoiceIn::None => ("none", None),
                        ToolChoiceIn::Required => ("any", None),
                        ToolChoiceIn::Function(n) => ("tool", Some(n)),
                    };
                    ToolChoiceOut {
                        kind,
                        name,
                        disable_parallel_tool_use: None,
                    }
                })
            }
            "parallel_tool_calls" => match v.get() {
                "true" => parallel = true,
                "false" => parallel = false,
                "null" => {}
                _ => return Err(invalid("parallel_tool_calls", "expected true or false")),
            },
            "user" => match v.get().as_bytes().first() {
                Some(b'"') => out.metadata = Some(Metadata { user_id: v }),
                Some(b'n') => {}
                _ => return Err(invalid("user", "expected a string")),
            },
            _ if raw_is_default(k, v) => {}
            _ => rejected.push(k.to_string()),
        }
    }
    unsupported_all(dep, NAME, &mut rejected)?;
    if !parallel && has_tools {
        let tc = tool_choice.get_or_insert(ToolChoiceOut {
            kind: "auto",
            name: None,
            disable_parallel_tool_use: None,
        });
        if tc.kind != "none" {
            tc.disable_parallel_tool_use = Some(true);
        }
    }
    out.tool_choice = tool_choice;
    t::to_body(&out, req.body.len() + 256)
}

/// The Messages request body, in the order the fields are written.
#[derive(Serialize)]
struct MessagesRequest<'a> {
    model: &'a str,
    max_tokens: u64,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    system: Vec<ReqBlock<'a>>,
    messages: Vec<Turn<'a>>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    stream: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_p: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_k: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    stop_sequences: Vec<&'a RawValue>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tools: Vec<ToolOut<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    metadata: Option<Metadata<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_choice: Option<ToolChoiceOut<'a>>,
}

#[derive(Serialize)]
struct Turn<'a> {
    role: &'static str,
    content: Vec<ReqBlock<'a>>,
}

#[derive(Serialize)]
struct Metadata<'a> {
    /// The client's `user` (a raw JSON string).
    user_id: &'a RawValue,
}

/// An Anthropic content block of a request.
#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum ReqBlock<'a> {
    Text {
        text: Cow<'a, str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        cache_control: Option<&'a RawValue>,
    },
    Image {
        source: ImageSource<'a>,
        #[serde(skip_serializing_if = "Option::is_none")]
        cache_control: Option<&'a RawValue>,
    },
    ToolUse {
        id: &'a str,
        name: &'a str,
        input: Box<RawValue>,
    },
    ToolResult {
        tool_use_id: &'a str,
        content: Cow<'a, str>,
    },
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum ImageSource<'a> {
    Base64 { media_type: &'a str, data: &'a str },
    Url { url: &'a str },
}

#[derive(Serialize)]
struct ToolOut<'a> {
    name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    description: Option<&'a str>,
    input_schema: &'a RawValue,
    #[serde(skip_serializing_if = "Option::is_none")]
    cache_control: Option<&'a RawValue>,
}

#[derive(Serialize)]
struct ToolChoiceOut<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<Cow<'a, str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    disable_parallel_tool_use: Option<bool>,
}

type TurnParts<'a> = (&'static str, Vec<ReqBlock<'a>>);

/// OpenAI messages → (system blocks, alternating user/assistant turns).
fn convert_messages<'a>(
    items: &'a [Lax<InMessage<'_>>],
) -> Result<(Vec<ReqBlock<'a>>, Vec<TurnParts<'a>>), ApiError> {
    let mut system = Vec::new();
    let mut turns: Vec<TurnParts<'a>> = Vec::with_capacity(items.len());
    for (i, msg) in items.iter().enumerate() {
        let msg = msg.object(|| format!("messages[{i}]"))?;
        let Some(role) = msg.role.as_str() else {
            return Err(invalid(
                format!("messages[{i}].role"),
                "missing or not a string",
            ));
        };
        let content = &msg.content;
        let param = || format!("messages[{i}].content");
        match role {
            "system" | "developer" => {
                let text = content_str(content, &param())?;
                if !text.is_empty() {
                    system.push(ReqBlock::Text {
                        text,
                        cache_control: None,
                    });
                }
            }
            "user" => push_turn(&mut turns, "user", user_blocks(content, i)?),
            "assistant" => {
                let mut blocks = text_blocks(content, &param())?;
                tool_use_blocks(&msg.tool_calls, i, &mut blocks)?;
                push_turn(&mut turns, "assistant", blocks);
            }
            "tool" => {
                let Some(id) = msg.tool_call_id.as_str() else {
                    return Err(invalid(
                        format!("messages[{i}].tool_call_id"),
                        "a tool message needs the tool_call_id it answers",
                    ));
                };
                let text = content_str(content, &param())?;
                push_turn(
                    &mut turns,
                    "user",
                    vec![ReqBlock::ToolResult {
                        tool_use_id: id,
                        content: text,
                    }],
                );
            }
            other => {
                return Err(invalid(
                    format!("messages[{i}].role"),
                    format_args!(
                        "role {other:?} is not supported (use system, user, assistant or tool)"
                    ),
                ))
            }
        }
    }
    Ok((system, turns))
}

/// Appends blocks to the last turn when it has the same role, else starts a turn.
fn push_turn<'a>(turns: &mut Vec<TurnParts<'a>>, role: &'static str, blocks: Vec<ReqBlock<'a>>) {
    if blocks.is_empty() {
        return;
    }
    match turns.last_mut() {
        Some((r, content)) if *r == role => content.extend(blocks),
        _ => turns.push((role, blocks)),
    }
}

fn text_block<'a>(text: &'a str, cache_control: MaybeRaw<'a>) -> ReqBlock<'a> {
    ReqBlock::Text {
        text: Cow::Borrowed(text),
        cache_control: cache_control.0,
    }
}

/// Assistant (or other text-only) content as text blocks; empty text is left out
/// because Anthropic rejects empty text blocks.
fn text_blocks<'a>(content: &'a Content<'_>, param: &str) -> Result<Vec<ReqBlock<'a>>, ApiError> {
    match content {
        Content::Null => Ok(Vec::new()),
        Content::Text(s) if s.is_empty() => Ok(Vec::new()),
        Content::Text(s) => Ok(vec![text_block(s, MaybeRaw(None))]),
        Content::Parts(parts) => {
            let mut out = Vec::with_capacity(parts.len());
            for (j, p) in parts.iter().enumerate() {
                let Part::Obj(p) = p else {
                    return Err(invalid(format!("{param}[{j}]"), "expected an object"));
                };
                let Some(text) = p.text_or_refusal() else {
                    return Err(invalid(
                        format!("{param}[{j}]"),
                        "only text parts are allowed here",
                    ));
                };
                if !text.is_empty() {
                    out.push(text_block(text, p.cache_control));
                }
            }
            Ok(out)
        }
        Content::Bad => Err(invalid(param, "expected a string or an array of parts")),
    }
}

/// User content: text and images.
fn user_blocks<'a>(content: &'a Content<'_>, i: usize) -> Result<Vec<ReqBlock<'a>>, ApiError> {
    let Content::Parts(parts) = content else {
        return text_blocks(content, &format!("messages[{i}].content"));
    };
    let mut out = Vec::with_capacity(parts.len());
    for (j, p) in parts.iter().enumerate() {
        let param = || format!("messages[{i}].content[{j}]");
        let Part::Obj(p) = p else {
            return Err(invalid(param(), "expected an object"));
        };
        match p.kind() {
            "text" => match p.text.as_str() {
                Some("") => {}
                Some(t) => out.push(text_block(t, p.cache_control)),
                None => return Err(invalid(param(), "a text part needs a string 'text'")),
            },
            "image_url" => {
                let url = p
                    .image_url
                    .0
                    .as_deref()
                    .ok_or_else(|| invalid(param(), "an image_url part needs image_url.url"))?;
                let source = if let Some((media, data)) = parse_data_url(url) {
                    ImageSource::Base64 {
                        media_type: media,
                        data,
                    }
                } else if url.starts_with("https://") || url.starts_with("http://") {
                    ImageSource::Url { url }
                } else {
                    return Err(invalid(
                        param(),
                        "image URLs must be http(s) or base64 data URLs",
                    ));
                };
                out.push(ReqBlock::Image {
                    source,
                    cache_control: p.cache_control.0,
                });
            }
            other => {
                return Err(invalid(
                    param(),
                    format_args!("content parts of type {other:?} are not supported by anthropic"),
                ))
            }
        }
    }
    Ok(out)
}

/// Assistant `tool_calls` → `tool_use` blocks (arguments JSON string → input object).
fn tool_use_blocks<'a>(
    calls: &'a LaxList<Lax<InToolCall<'_>>>,
    i: usize,
    out: &mut Vec<ReqBlock<'a>>,
) -> Result<(), ApiError> {
    for c in t::tool_calls(calls, i, true)? {
        let id = c.id.unwrap_or_default();
        out.push(ReqBlock::ToolUse {
            id,
            name: c.name,
            input: c.args,
        });
    }
    Ok(())
}

/// `{"type": "object", "properties": {}}`, for a tool without parameters.
fn empty_schema() -> &'static RawValue {
    static EMPTY: std::sync::OnceLock<Box<RawValue>> = std::sync::OnceLock::new();
    EMPTY.get_or_init(|| {
        RawValue::from_string(r#"{"type":"object","properties":{}}"#.to_string())
            .expect("valid JSON")
    })
}

fn convert_tools<'a>(
    dep: &Deployment,
    tools: &'a LaxList<Lax<InTool<'_>>>,
) -> Result<Vec<ToolOut<'a>>, ApiError> {
    let tools = t::function_tools(dep, NAME, tools)?;
    Ok(tools
        .into_iter()
        .map(|(tool, f, name)| ToolOut {
            name,
            description: f.description.as_str(),
            input_schema: match f.parameters.0 {
                Some(s) if t::is_object(s) => s,
                _ => empty_schema(),
            },
            cache_control: tool.cache_control.0,
        })
        .collect())
}

// ---------------------------------------------------------------------------------------
// Response
// ---------------------------------------------------------------------------------------

#[derive(Deserialize)]
struct MessageResponse {
    #[serde(default)]
    id: String,
    #[serde(default)]
    model: String,
    #[serde(default)]
    content: Vec<Block>,
    #[serde(default)]
    stop_reason: Option<String>,
    #[serde(default)]
    usage: AUsage,
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Block {
    Text {
        text: String,
    },
    ToolUse {
        id: String,
        name: String,
        #[serde(default)]
        input: Value,
    },
    Thinking {
        #[serde(default)]
        thinking: String,
    },
    #[serde(other)]
    Other,
}

/// Anthropic `usage`; in a stream, later events overwrite what they carry.
#[derive(Deserialize, Default, Debug, Clone)]
struct AUsage {
    #[serde(default)]
    input_tokens: Option<u64>,
    #[serde(default)]
    output_tokens: Option<u64>,
    #[serde(default)]
    cache_creation_input_tokens: Option<u64>,
    #[serde(default)]
    cache_read_input_tokens: Option<u64>,
}

impl AUsage {
    fn merge(&mut self, later: AUsage) {
        self.input_tokens = later.input_tokens.or(self.input_tokens);
        self.output_tokens = later.output_tokens.or(self.output_tokens);
        self.cache_creation_input_tokens = later
            .cache_creation_input_tokens
            .or(self.cache_creation_input_tokens);
        self.cache_read_input_tokens = later
            .cache_read_input_tokens
            .or(self.cache_read_input_tokens);
    }

    /// OpenAI counts cached prompt tokens inside `prompt_tokens`; Anthropic does not.
    fn openai(&self) -> Usage {
        let read = self.cache_read_input_tokens.unwrap_or(0);
        // Upstream numbers: saturate rather than overflow.
        let prompt = self
            .input_tokens
            .unwrap_or(0)
            .saturating_add(read)
            .saturating_add(self.cache_creation_input_tokens.unwrap_or(0));
        let completion = self.output_tokens.unwrap_or(0);
        Usage {
            prompt_tokens: prompt,
            completion_tokens: completion,
            total_tokens: prompt.saturating_add(completion),
            prompt_tokens_details: (self.cache_read_input_tokens.is_some()
                || self.cache_creation_input_tokens.is_some())
            .then_some(t::PromptDetails {
                cached_tokens: read,
            }),
            completion_tokens_details: None,
        }
    }
}

/// Anthropic `stop_reason` → OpenAI `finish_reason`.
pub fn finish_reason(stop: Option<&str>) -> &'static str {
    match stop {
        Some("max_tokens") | Some("model_context_window_exceeded") => "length",
        Some("tool_use") => "tool_calls",
        Some("refusal") => "content_filter",
        // end_turn, stop_sequence, pause_turn, unknown
        _ => "stop",
    }
}

/// A Messages response → an OpenAI `chat.completion`.
pub fn translate_response(body: &[u8]) -> Result<Bytes, ApiError> {
    let resp: MessageResponse = serde_json::from_slice(body).map_err(|e| t::bad_body(NAME, e))?;
    let mut text = String::new();
    let mut reasoning: Option<String> = None;
    let mut tool_calls = Vec::new();
    for block in resp.content {
        match block {
            Block::Text { text: s } => {
                if text.is_empty() {
                    text = s;
                } else {
                    text.push_str(&s);
                }
            }
            Block::ToolUse { id, name, input } => {
                let arguments = match input {
                    Value::Null => "{}".to_string(),
                    v => v.to_string(),
                };
                tool_calls.push(ToolCall {
                    id,
                    kind: "function",
                    function: FunctionCall { name, arguments },
                });
            }
            Block::Thinking { thinking } => reasoning
                .get_or_insert_with(String::new)
                .push_str(&thinking),
            Block::Other => {}
        }
    }
    let content = (!text.is_empty() || tool_calls.is_empty()).then_some(text);
    let completion = t::ChatCompletion {
        id: &resp.id,
        object: "chat.completion",
        created: t::now_secs(),
        model: &resp.model,
        choices: vec![t::Choice {
            index: 0,
            message: t::Message {
                role: "assistant",
                content,
                reasoning_content: reasoning,
                tool_calls,
                refusal: None,
            },
            logprobs: None,
            finish_reason: finish_reason(resp.stop_reason.as_deref()),
        }],
        usage: resp.usage.openai(),
    };
    serde_json::to_vec(&completion)
        .map(Bytes::from)
        .map_err(|e| ApiError::internal(format!("serialising: {e}")))
}

// ---------------------------------------------------------------------------------------
// Streaming
// ---------------------------------------------------------------------------------------
//
// Each event is read as the plain struct of its type (no internally tagged enum, which
// would make serde buffer and read every event twice), and strings borrow from the
// event's bytes. The type is found by comparing the data's start with the SSE `event:`
// name (Anthropic sends both, equal, `type` first), else by reading the `type` field.

#[derive(Deserialize)]
struct MessageStartEv<'a> {
    #[serde(borrow)]
    message: StartMessage<'a>,
}

#[derive(Deserialize)]
struct StartMessage<'a> {
    #[serde(default, borrow)]
    id: Cow<'a, str>,
    #[serde(default, borrow)]
    model: Cow<'a, str>,
    #[serde(default)]
    usage: AUsage,
}

#[derive(Deserialize)]
struct BlockStartEv<'a> {
    index: usize,
    #[serde(borrow)]
    content_block: StartBlock<'a>,
}

/// `content_block_start.content_block`: `text` (with `text`) or `tool_use` (with `id`
/// and `name`); other types are ignored.
#[derive(Deserialize)]
struct StartBlock<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(default, borrow)]
    text: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    id: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    name: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct BlockDeltaEv<'a> {
    index: usize,
    #[serde(borrow)]
    delta: BlockDelta<'a>,
}

/// `content_block_delta.delta`: `text_delta` (`text`), `input_json_delta`
/// (`partial_json`) or `thinking_delta` (`thinking`); other types are ignored.
#[derive(Deserialize)]
struct BlockDelta<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(default, borrow)]
    text: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    partial_json: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    thinking: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct MessageDeltaEv<'a> {
    #[serde(default, borrow)]
    delta: MessageDeltaBody<'a>,
    #[serde(default)]
    usage: Option<AUsage>,
}

#[derive(Deserialize, Default)]
struct MessageDeltaBody<'a> {
    #[serde(default, borrow)]
    stop_reason: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct ErrorEv {
    error: ErrorBody,
}

/// Any event: only its `type` (for events without a known `event:` name, and to check
/// that bodiless events are objects).
#[derive(Deserialize)]
struct TypeOnly<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
}

#[derive(Deserialize, Default)]
struct ErrorBody {
    #[serde(rename = "type", default)]
    kind: String,
    #[serde(default)]
    message: String,
}

#[derive(Clone, Copy)]
enum BlockKind {
    Text,
    Tool(u32),
    Other,
}

/// Anthropic SSE → OpenAI chunks, incrementally.
pub struct AnthropicStream {
    sse: SseParser,
    st: AnthropicState,
}

/// What an [`AnthropicStream`] knows besides its SSE buffer.
struct AnthropicState {
    writer: Option<ChunkWriter>,
    model: String,
    include_usage: bool,
    /// By Anthropic content block index.
    blocks: Vec<BlockKind>,
    tools: u32,
    usage: AUsage,
    stop_reason: Option<String>,
    /// The `role` chunk goes out with the first content, so that an error event right
    /// after `message_start` (e.g. overloaded) still counts as "nothing sent yet" and the
    /// router can retry elsewhere.
    role_sent: bool,
    done: bool,
}

impl AnthropicStream {
    pub fn new(model: String, include_usage: bool) -> Self {
        AnthropicStream {
            sse: SseParser::default(),
            st: AnthropicState {
                writer: None,
                model,
                include_usage,
                blocks: Vec::new(),
                tools: 0,
                usage: AUsage::default(),
                stop_reason: None,
                role_sent: false,
                done: false,
            },
        }
    }
}

/// True when `data` starts with `{"type":"<event>"`.
fn has_type_prefix(data: &[u8], event: &[u8]) -> bool {
    const OPEN: &[u8] = b"{\"type\":\"";
    !event.is_empty()
        && data.starts_with(OPEN)
        && data[OPEN.len()..].starts_with(event)
        && data.get(OPEN.len() + event.len()) == Some(&b'"')
}

fn read_event<'a, T: Deserialize<'a>>(data: &'a [u8]) -> Result<T, UpstreamError> {
    serde_json::from_slice(data).map_err(|e| {
        t::stream_error(format!(
            "anthropic sent a stream event llmgw cannot read: {e}"
        ))
    })
}

impl AnthropicState {
    /// The writer, after sending the `role` chunk if it has not gone out yet.
    fn started(&mut self, out: &mut BytesMut) -> &ChunkWriter {
        if !self.role_sent {
            self.role_sent = true;
            let role = Delta {
                role: Some("assistant"),
                content: Some(""),
                ..Delta::default()
            };
            self.writer().delta(out, 0, &role, None);
        }
        self.writer()
    }

    fn writer(&mut self) -> &ChunkWriter {
        let (model, include_usage) = (&self.model, self.include_usage);
        self.writer.get_or_insert_with(|| {
            ChunkWriter::new(t::random_id("chatcmpl-"), model.clone(), include_usage)
        })
    }

    fn set_block(&mut self, index: usize, kind: BlockKind) {
        if index >= self.blocks.len() {
            if index > 4096 {
                return;
            }
            self.blocks.resize(index + 1, BlockKind::Other);
        }
        self.blocks[index] = kind;
    }

    fn handle(
        &mut self,
        event: &[u8],
        data: &[u8],
        out: &mut BytesMut,
    ) -> Result<(), UpstreamError> {
        if self.done {
            return Ok(());
        }
        // The type is the data's `type`. Anthropic sends it first and equal to the SSE
        // `event:` name, so that is checked with a prefix comparison; anything else
        // (other spacing, other order, no name) reads the field.
        let data_kind;
        let kind: &[u8] = if has_type_prefix(data, event) {
            event
        } else {
            data_kind = read_event::<TypeOnly<'_>>(data)?.kind;
            data_kind.as_bytes()
        };
        match kind {
            b"message_start" => {
                let message = read_event::<MessageStartEv<'_>>(data)?.message;
                let model = if message.model.is_empty() {
                    self.model.clone()
                } else {
                    message.model.into_owned()
                };
                let id = if message.id.is_empty() {
                    t::random_id("chatcmpl-")
                } else {
                    message.id.into_owned()
                };
                self.usage.merge(message.usage);
                self.writer = Some(ChunkWriter::new(id, model, self.include_usage));
            }
            b"content_block_start" => {
                let ev: BlockStartEv<'_> = read_event(data)?;
                let (index, block) = (ev.index, ev.content_block);
                match &*block.kind {
                    "text" => {
                        self.set_block(index, BlockKind::Text);
                        if let Some(text) = block.text.as_deref().filter(|t| !t.is_empty()) {
                            let d = Delta {
                                content: Some(text),
                                ..Delta::default()
                            };
                            self.started(out).delta(out, 0, &d, None);
                        }
                    }
                    "tool_use" => {
                        let (Some(id), Some(name)) = (block.id, block.name) else {
                            return Err(t::stream_error(
                                "anthropic sent a tool_use block without id or name",
                            ));
                        };
                        let n = self.tools;
                        self.tools += 1;
                        self.set_block(index, BlockKind::Tool(n));
                        let d = Delta {
                            tool_calls: Some([ToolCallDelta {
                                index: n,
                                id: Some(&id),
                                kind: Some("function"),
                                function: FunctionDelta {
                                    name: Some(&name),
                                    arguments: Some(""),
                                },
                            }]),
                            ..Delta::default()
                        };
                        self.started(out).delta(out, 0, &d, None);
                    }
                    _ => self.set_block(index, BlockKind::Other),
                }
            }
            b"content_block_delta" => {
                let BlockDeltaEv { index, delta } = read_event(data)?;
                let kind = self.blocks.get(index).copied().unwrap_or(BlockKind::Text);
                let missing = |field: &str| {
                    t::stream_error(format!("anthropic sent a {} without {field}", delta.kind))
                };
                let d = match (&*delta.kind, kind) {
                    ("text_delta", _) => {
                        let text = delta.text.as_deref().ok_or_else(|| missing("text"))?;
                        if text.is_empty() {
                            return Ok(());
                        }
                        Delta {
                            content: Some(text),
                            ..Delta::default()
                        }
                    }
                    ("input_json_delta", kind) => {
                        let json = delta
                            .partial_json
                            .as_deref()
                            .ok_or_else(|| missing("partial_json"))?;
                        let BlockKind::Tool(n) = kind else {
                            return Ok(());
                        };
                        if json.is_empty() {
                            return Ok(());
                        }
                        Delta {
                            tool_calls: Some([ToolCallDelta {
                                index: n,
                                id: None,
                                kind: None,
                                function: FunctionDelta {
                                    name: None,
                                    arguments: Some(json),
                                },
                            }]),
                            ..Delta::default()
                        }
                    }
                    ("thinking_delta", _) => {
                        let thinking = delta
                            .thinking
                            .as_deref()
                            .ok_or_else(|| missing("thinking"))?;
                        if thinking.is_empty() {
                            return Ok(());
                        }
                        Delta {
                            reasoning_content: Some(thinking),
                            ..Delta::default()
                        }
                    }
                    _ => return Ok(()),
                };
                self.started(out).delta(out, 0, &d, None);
            }
            b"message_delta" => {
                let MessageDeltaEv { delta, usage } = read_event(data)?;
                if let Some(reason) = delta.stop_reason {
                    self.stop_reason = Some(reason.into_owned());
                }
                if let Some(u) = usage {
                    self.usage.merge(u);
                }
            }
            b"message_stop" => {
                read_event::<TypeOnly<'_>>(data)?;
                let finish = finish_reason(self.stop_reason.as_deref());
                let usage = self.usage.openai();
                let w = self.started(out);
                w.delta(out, 0, &Delta::default(), Some(finish));
                w.usage(out, &usage);
                w.done(out);
                self.done = true;
            }
            b"error" => {
                let ErrorEv { error } = read_event(data)?;
                return Err(error_from_type(
                    &error.kind,
                    error.message,
                    StatusCode::OK,
                    None,
                ));
            }
            // content_block_stop, ping and types added later
            _ => {
                read_event::<TypeOnly<'_>>(data)?;
            }
        }
        Ok(())
    }
}

impl StreamTranslator for AnthropicStream {
    fn feed(&mut self, chunk: &[u8], out: &mut BytesMut) -> Result<(), UpstreamError> {
        self.sse.push(chunk)?;
        while let Some(ev) = self.sse.next_ref() {
            self.st.handle(ev.event, &ev.data, out)?;
        }
        Ok(())
    }

    fn finish(&mut self, out: &mut BytesMut) -> Result<(), UpstreamError> {
        if let Some(ev) = self.sse.take_rest_ref() {
            self.st.handle(ev.event, &ev.data, out)?;
        }
        if !self.st.done {
            return Err(t::stream_error(
                "the anthropic stream ended before message_stop",
            ));
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------

#[derive(Deserialize)]
struct ErrorEnvelope {
    error: ErrorBody,
}

/// An Anthropic error response → error class and an OpenAI-shaped client error.
pub fn map_error(status: StatusCode, headers: &HeaderMap, body: &[u8]) -> UpstreamError {
    let retry_after = super::retry_after(headers);
    match serde_json::from_slice::<ErrorEnvelope>(body) {
        Ok(env) if !env.error.kind.is_empty() => {
            error_from_type(&env.error.kind, env.error.message, status, retry_after)
        }
        _ => {
            let mut e = super::openai_style_error(status, headers, body);
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
fn error_from_type(
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
                super::classify(status, message.as_bytes())
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
    use crate::config::ProviderKind;
    use crate::providers::translate::testing::{assemble, client, deployment, events, request};
    use serde_json::json;

    fn dep() -> Deployment {
        deployment(ProviderKind::Anthropic, "claude-test", false)
    }

    fn translate(dep: &Deployment, body: Value) -> Result<Value, ApiError> {
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
        let r = Anthropic
            .build(&client(), &d, &req)
            .unwrap()
            .build()
            .unwrap();
        assert_eq!(r.url().as_str(), "http://127.0.0.1:9/v1/messages");
        assert_eq!(r.headers()["anthropic-version"], "2023-06-01");
        assert!(r.headers()["x-api-key"].is_sensitive());
        assert!(!r.url().as_str().contains("sk-test"));
        let emb = request(Endpoint::Embeddings, json!({"model": "g", "input": "x"}));
        assert!(Anthropic.build(&client(), &d, &emb).is_err());
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
