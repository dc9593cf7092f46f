//! The hub: one internal typed form of a chat request, a chat response and a stream
//! event, between every client API and every upstream API.
//!
//! Each wire format has adapters in its own file, one per direction: a *decoder* turns
//! that format into the hub form, an *encoder* turns the hub form into that format. A
//! request from client format A to an upstream speaking B goes A → hub → B; the answer
//! goes B → hub → A. N client formats and M upstream formats thus need N + M adapters per
//! direction, not N × M translators. When A and B are the same format nothing is
//! translated: the client's bytes go up with only the model id spliced, and the upstream's
//! bytes come back untouched (see `convert::passthrough`).
//!
//! ```text
//!   client formats                 hub                   upstream formats
//!   OpenAI chat   ─decode─┐                       ┌─encode─▶ OpenAI chat (OpenAI, SGLang, Azure)
//!   Anthropic     ─decode─┼──▶ hub::Request ──────┼─encode─▶ Anthropic Messages
//!   Responses     ─decode─┘                       └─encode─▶ Gemini
//!
//!   OpenAI chat   ◀encode─┐                       ┌─decode── OpenAI chat
//!   Anthropic     ◀encode─┼── hub::Response/Event ┼─decode── Anthropic Messages
//!   Responses     ◀encode─┘                       └─decode── Gemini
//! ```
//!
//! The request form borrows from the client's bytes (strings are `Cow`s that are borrowed
//! unless they contained escapes; schemas, `cache_control` and sampling values stay
//! `&RawValue` and are copied verbatim). Stream events borrow from the upstream event
//! being decoded, so a streamed token is never copied on its way through.

use crate::upstream::Upstream;
use llmgw_core::error::ApiError;
use serde_json::value::RawValue;
use std::borrow::Cow;

pub use crate::request::Format;

/// Where a decoded request is going: decoders check the few structural limits of the
/// target format themselves, so that an error names the client's own field
/// (`messages[2].tool_calls[0].id`), and apply the deployment's `drop_params`.
#[derive(Clone, Copy)]
pub struct Target<'d> {
    pub dep: &'d Upstream,
    pub format: Format,
}

impl Target<'_> {
    /// The provider name used in "not supported by …" messages.
    pub fn name(&self) -> &'static str {
        self.dep.kind.as_str()
    }

    /// Anthropic matches tool results to calls by id: every tool call needs one.
    pub fn needs_tool_ids(&self) -> bool {
        self.format == Format::Anthropic
    }

    /// Gemini matches tool results to calls by function name.
    pub fn needs_tool_names(&self) -> bool {
        self.format == Format::Gemini
    }

    /// Whether an image given by URL can be passed on as that URL.
    pub fn accepts_image_url(&self, url: &str) -> bool {
        match self.format {
            Format::Gemini => {
                url.starts_with("https://")
                    || url.starts_with("http://")
                    || url.starts_with("gs://")
            }
            _ => url.starts_with("https://") || url.starts_with("http://"),
        }
    }

    /// The error for an image URL the target cannot fetch.
    pub fn image_url_rule(&self) -> &'static str {
        match self.format {
            Format::Gemini => "image URLs must be http(s), gs:// or base64 data URLs",
            _ => "image URLs must be http(s) or base64 data URLs",
        }
    }
}

// ---------------------------------------------------------------------------------------
// Request
// ---------------------------------------------------------------------------------------

/// A chat request in the hub form.
#[derive(Debug, Default)]
pub struct Request<'a> {
    /// System prompt pieces (system/developer messages, `system`, `instructions`).
    pub system: Vec<Text<'a>>,
    pub messages: Vec<Message<'a>>,
    pub tools: Vec<Tool<'a>>,
    pub tool_choice: Option<ToolChoice<'a>>,
    /// `Some(false)`: at most one tool call per turn.
    pub parallel_tool_calls: Option<bool>,
    pub max_tokens: Option<u64>,
    pub stream: bool,
    /// The client wants usage at the end of a stream (OpenAI `include_usage`).
    pub include_usage: bool,
    pub temperature: Option<&'a RawValue>,
    pub top_p: Option<&'a RawValue>,
    pub top_k: Option<&'a RawValue>,
    /// Stop sequences, each a raw JSON string.
    pub stop: Vec<&'a RawValue>,
    /// An end-user id for abuse monitoring, as the client sent it (any JSON value;
    /// adapters that pass it on check that it is a string).
    pub user: Option<Param<'a>>,
    pub seed: Option<Param<'a>>,
    pub presence_penalty: Option<Param<'a>>,
    pub frequency_penalty: Option<Param<'a>>,
    /// Number of answers (OpenAI `n`), raw.
    pub n: Option<Param<'a>>,
    pub response_format: Option<ResponseFormat<'a>>,
    pub reasoning: Option<Reasoning<'a>>,
    /// Client parameters the hub has no field for (asking for something beyond the
    /// default): a target refuses them, or drops them under `drop_params`.
    pub unsupported: Vec<String>,
}

/// A top-level parameter kept raw, with the client's name for it (for errors).
#[derive(Debug, Clone, Copy)]
pub struct Param<'a> {
    pub name: &'static str,
    pub value: &'a RawValue,
}

/// A text block.
#[derive(Debug, Clone)]
pub struct Text<'a> {
    pub text: Cow<'a, str>,
    pub cache_control: Option<&'a RawValue>,
}

impl<'a> Text<'a> {
    pub fn plain(text: Cow<'a, str>) -> Self {
        Text {
            text,
            cache_control: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    User,
    Assistant,
}

/// One turn. Tool results are blocks of a user turn, tool calls blocks of an assistant
/// turn (as in Anthropic's form, which is the most general of the three).
#[derive(Debug)]
pub struct Message<'a> {
    pub role: Role,
    pub content: Vec<Block<'a>>,
}

#[derive(Debug)]
pub enum Block<'a> {
    Text(Text<'a>),
    Image(Image<'a>),
    ToolCall(ToolCall<'a>),
    ToolResult(ToolResult<'a>),
}

#[derive(Debug)]
pub struct Image<'a> {
    pub source: ImageSource<'a>,
    pub cache_control: Option<&'a RawValue>,
}

#[derive(Debug)]
pub enum ImageSource<'a> {
    /// An http(s) or gs:// URL, or a `data:` URL.
    Url(Cow<'a, str>),
    Base64 {
        media_type: Cow<'a, str>,
        data: Cow<'a, str>,
    },
}

#[derive(Debug)]
pub struct ToolCall<'a> {
    /// Empty when the client gave none (only targets that do not need ids get this).
    pub id: Cow<'a, str>,
    pub name: Cow<'a, str>,
    /// A JSON object.
    pub input: Cow<'a, RawValue>,
}

#[derive(Debug)]
pub struct ToolResult<'a> {
    pub id: Cow<'a, str>,
    /// The called function's name when known (Gemini needs it).
    pub name: Option<Cow<'a, str>>,
    /// Text and image blocks.
    pub content: Vec<Block<'a>>,
    pub is_error: bool,
}

impl ToolResult<'_> {
    /// The result's text blocks joined, when it has no other blocks.
    pub fn text(&self) -> Option<Cow<'_, str>> {
        match self.content.as_slice() {
            [] => Some(Cow::Borrowed("")),
            [Block::Text(t)] => Some(Cow::Borrowed(&t.text)),
            blocks => {
                let mut s = String::new();
                for b in blocks {
                    match b {
                        Block::Text(t) => s.push_str(&t.text),
                        _ => return None,
                    }
                }
                Some(Cow::Owned(s))
            }
        }
    }
}

/// A function the model may call.
#[derive(Debug)]
pub struct Tool<'a> {
    pub name: Cow<'a, str>,
    pub description: Option<Cow<'a, str>>,
    /// JSON Schema of the arguments, as the client sent it (targets check it is an object).
    pub parameters: Option<&'a RawValue>,
    /// OpenAI `strict` (structured outputs for the arguments).
    pub strict: bool,
    pub cache_control: Option<&'a RawValue>,
}

#[derive(Debug, Clone)]
pub enum ToolChoice<'a> {
    Auto,
    None,
    /// Some tool must be called.
    Required,
    /// This tool must be called.
    Tool(Cow<'a, str>),
}

/// Structured output.
#[derive(Debug)]
pub struct ResponseFormat<'a> {
    /// The client's name for it (`response_format`, `text.format`).
    pub param: &'static str,
    pub kind: JsonMode<'a>,
}

#[derive(Debug)]
pub enum JsonMode<'a> {
    Text,
    JsonObject,
    JsonSchema {
        name: Option<Cow<'a, str>>,
        schema: Option<&'a RawValue>,
        strict: Option<bool>,
    },
}

/// Extended thinking / reasoning effort.
#[derive(Debug, Clone)]
pub struct Reasoning<'a> {
    /// The client's name for it (`reasoning_effort`, `reasoning`, `thinking`).
    pub param: &'static str,
    /// OpenAI effort (`low`, `medium`, `high`, …).
    pub effort: Option<Cow<'a, str>>,
    /// Anthropic `budget_tokens`.
    pub budget: Option<u64>,
}

// ---------------------------------------------------------------------------------------
// Response
// ---------------------------------------------------------------------------------------

/// A complete (non-streamed) answer in the hub form.
#[derive(Debug, Default)]
pub struct Response {
    pub id: String,
    pub model: String,
    /// Unix seconds, when the upstream said.
    pub created: Option<u64>,
    pub choices: Vec<Choice>,
    pub usage: Usage,
}

/// One answer. Text blocks are joined (text, then tool calls, is how every format
/// orders them in practice).
#[derive(Debug, Default)]
pub struct Choice {
    pub index: u32,
    pub text: String,
    /// Thinking / reasoning text.
    pub reasoning: Option<String>,
    pub tool_calls: Vec<ToolCallOut>,
    pub stop: Stop,
}

#[derive(Debug, Clone)]
pub struct ToolCallOut {
    pub id: String,
    pub name: String,
    /// The arguments as JSON text (usually an object).
    pub arguments: String,
}

/// Why the model stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StopReason {
    #[default]
    End,
    /// One of the request's stop sequences.
    StopSequence,
    MaxTokens,
    ToolUse,
    /// A safety or content filter, or a refusal.
    ContentFilter,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stop {
    pub reason: StopReason,
    /// The stop sequence that matched, when the upstream says.
    pub sequence: Option<String>,
}

impl Stop {
    pub fn new(reason: StopReason) -> Self {
        Stop {
            reason,
            sequence: None,
        }
    }
}

/// Token counts. `input` counts every prompt token (cached ones included, OpenAI's
/// meaning); `output` every generated one (reasoning included).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub input: u64,
    pub output: u64,
    /// Prompt tokens read from a prompt cache (part of `input`).
    pub cache_read: Option<u64>,
    /// Prompt tokens written to a prompt cache (part of `input`; Anthropic).
    pub cache_write: Option<u64>,
    /// Reasoning tokens (part of `output`).
    pub reasoning: Option<u64>,
    /// When the upstream states a total.
    pub total: Option<u64>,
}

impl Usage {
    pub fn total(&self) -> u64 {
        self.total
            .unwrap_or_else(|| self.input.saturating_add(self.output))
    }
}

// ---------------------------------------------------------------------------------------
// Stream events
// ---------------------------------------------------------------------------------------

/// One step of a streamed answer, borrowed from the upstream event it came from.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Event<'a> {
    /// The answer's id and model (empty when the upstream did not say); at most once,
    /// before anything else.
    Start {
        id: &'a str,
        model: &'a str,
    },
    Text {
        choice: u32,
        text: &'a str,
    },
    Reasoning {
        choice: u32,
        text: &'a str,
    },
    /// A tool call begins; `index` counts the choice's calls from 0.
    ToolStart {
        choice: u32,
        index: u32,
        id: &'a str,
        name: &'a str,
    },
    /// A piece of a tool call's JSON arguments.
    ToolArgs {
        choice: u32,
        index: u32,
        json: &'a str,
    },
    /// The choice is complete.
    Finish {
        choice: u32,
        reason: StopReason,
        sequence: Option<&'a str>,
    },
    /// Token counts so far (later ones replace earlier ones).
    Usage(Usage),
    /// The upstream finished the answer.
    Done,
}

/// Writes hub events in a client's stream format.
pub trait Encoder: Send {
    fn event(
        &mut self,
        ev: Event<'_>,
        out: &mut bytes::BytesMut,
    ) -> Result<(), crate::upstream_error::UpstreamError>;
}

/// Reads an upstream's stream format into hub events.
pub trait Decoder: Send {
    /// Feeds raw upstream bytes, handing complete events to `enc`.
    fn feed(
        &mut self,
        chunk: &[u8],
        enc: &mut dyn Encoder,
        out: &mut bytes::BytesMut,
    ) -> Result<(), crate::upstream_error::UpstreamError>;
    /// The upstream stream ended: emits what is left (ending with [`Event::Done`]) or
    /// fails when the answer is incomplete.
    fn finish(
        &mut self,
        enc: &mut dyn Encoder,
        out: &mut bytes::BytesMut,
    ) -> Result<(), crate::upstream_error::UpstreamError>;
}

impl Encoder for Box<dyn Encoder> {
    fn event(
        &mut self,
        ev: Event<'_>,
        out: &mut bytes::BytesMut,
    ) -> Result<(), crate::upstream_error::UpstreamError> {
        (**self).event(ev, out)
    }
}

impl Decoder for Box<dyn Decoder> {
    fn feed(
        &mut self,
        chunk: &[u8],
        enc: &mut dyn Encoder,
        out: &mut bytes::BytesMut,
    ) -> Result<(), crate::upstream_error::UpstreamError> {
        (**self).feed(chunk, enc, out)
    }
    fn finish(
        &mut self,
        enc: &mut dyn Encoder,
        out: &mut bytes::BytesMut,
    ) -> Result<(), crate::upstream_error::UpstreamError> {
        (**self).finish(enc, out)
    }
}

/// A decoder and an encoder joined: an upstream stream in one format out in another.
pub struct Translate<D, E> {
    pub dec: D,
    pub enc: E,
}

impl<D: Decoder, E: Encoder> crate::upstream::StreamTranslator for Translate<D, E> {
    fn feed(
        &mut self,
        chunk: &[u8],
        out: &mut bytes::BytesMut,
    ) -> Result<(), crate::upstream_error::UpstreamError> {
        self.dec.feed(chunk, &mut self.enc, out)
    }
    fn finish(
        &mut self,
        out: &mut bytes::BytesMut,
    ) -> Result<(), crate::upstream_error::UpstreamError> {
        self.dec.finish(&mut self.enc, out)
    }
}

// ---------------------------------------------------------------------------------------
// Shared checks
// ---------------------------------------------------------------------------------------

impl Request<'_> {
    /// Refuses (or drops, under `drop_params`) what `target` cannot do: the decoder's
    /// unknown parameters plus `more`, named together in one error.
    pub fn refuse_unsupported(
        &self,
        target: &Target<'_>,
        more: impl IntoIterator<Item = &'static str>,
    ) -> Result<(), ApiError> {
        let mut all: Vec<String> = self.unsupported.clone();
        all.extend(more.into_iter().map(str::to_string));
        crate::translate::unsupported_all(target.dep, target.name(), &mut all)
    }
}

/// Names of the parameters in `params` that are set (for [`Request::refuse_unsupported`]).
pub fn set_params<'p>(params: &'p [Option<Param<'_>>]) -> impl Iterator<Item = &'static str> + 'p {
    params.iter().flatten().map(|p| p.name)
}

/// A tool call's arguments (JSON text) as a JSON object for formats that need one:
/// empty text is `{}`; anything but an object is `None`.
pub fn arguments_object(text: &str) -> Option<Cow<'_, RawValue>> {
    let t = text.trim();
    if t.is_empty() {
        return Some(Cow::Owned(empty_object()));
    }
    let raw: &RawValue = serde_json::from_str(t).ok()?;
    raw.get().starts_with('{').then_some(Cow::Borrowed(raw))
}

/// `{}`.
pub fn empty_object() -> Box<RawValue> {
    #[allow(clippy::expect_used)] // a constant that is valid JSON
    RawValue::from_string("{}".to_string()).expect("valid JSON")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::anthropic::stream::{AnthropicDecoder, AnthropicEncoder};
    use crate::chat::stream::{ChatDecoder, ChatEncoder};
    use crate::gemini::stream::GeminiDecoder;
    use crate::request::{ClientRequest, Endpoint};
    use crate::responses::stream::ResponsesEncoder;
    use crate::upstream::StreamTranslator;
    use bytes::BytesMut;
    use serde_json::{json, Value};

    /// An OpenAI-compatible stream: reasoning, text, a tool call in pieces, usage.
    const CHAT: &str = concat!(
        "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"model\":\"q\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"finish_reason\":null}]}\n\n",
        "data: {\"id\":\"c1\",\"model\":\"q\",\"choices\":[{\"index\":0,\"delta\":{\"reasoning_content\":\"think\"}}]}\n\n",
        "data: {\"id\":\"c1\",\"model\":\"q\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hel\"}}]}\n\n",
        "data: {\"id\":\"c1\",\"model\":\"q\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"lo \\\"x\\\"\"}}]}\n\n",
        "data: {\"id\":\"c1\",\"model\":\"q\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"id\":\"call_1\",\"type\":\"function\",\"function\":{\"name\":\"f\",\"arguments\":\"\"}}]}}]}\n\n",
        "data: {\"id\":\"c1\",\"model\":\"q\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\"{\\\"a\\\":\"}}]}}]}\n\n",
        "data: {\"id\":\"c1\",\"model\":\"q\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\"1}\"}}]}}]}\n\n",
        "data: {\"id\":\"c1\",\"model\":\"q\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"tool_calls\"}]}\n\n",
        "data: {\"id\":\"c1\",\"model\":\"q\",\"choices\":[],\"usage\":{\"prompt_tokens\":7,\"completion_tokens\":3,\"total_tokens\":10,\"prompt_tokens_details\":{\"cached_tokens\":2}}}\n\n",
        "data: [DONE]\n\n",
    );

    fn run(mut t: impl StreamTranslator, stream: &[u8], cuts: &[usize]) -> Vec<u8> {
        let mut out = BytesMut::new();
        let mut at = 0;
        for &c in cuts.iter().chain(std::iter::once(&stream.len())) {
            t.feed(&stream[at..c], &mut out).expect("feeds");
            at = c;
        }
        t.finish(&mut out).expect("complete");
        out.to_vec()
    }

    /// `(event name, data)` of named SSE output.
    fn named(out: &[u8]) -> Vec<(String, Value)> {
        std::str::from_utf8(out)
            .unwrap()
            .split("\n\n")
            .filter(|e| !e.is_empty())
            .map(|e| {
                let (name, data) = e.split_once('\n').unwrap();
                let name = name.strip_prefix("event: ").unwrap().to_string();
                let data: Value =
                    serde_json::from_str(data.strip_prefix("data: ").unwrap()).unwrap();
                assert_eq!(data["type"], name.as_str(), "type matches the event name");
                (name, data)
            })
            .collect()
    }

    fn anthropic(stream: &[u8], cuts: &[usize]) -> Vec<u8> {
        run(
            Translate {
                dec: ChatDecoder::new("sglang"),
                enc: AnthropicEncoder::new("dep-model".into()),
            },
            stream,
            cuts,
        )
    }

    #[test]
    fn chat_stream_as_anthropic_events() {
        let out = anthropic(CHAT.as_bytes(), &[]);
        let ev = named(&out);
        let names: Vec<&str> = ev.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "message_start",
                "content_block_start",
                "content_block_delta",
                "content_block_stop",
                "content_block_start",
                "content_block_delta",
                "content_block_delta",
                "content_block_stop",
                "content_block_start",
                "content_block_delta",
                "content_block_delta",
                "content_block_stop",
                "message_delta",
                "message_stop"
            ]
        );
        assert_eq!(
            ev[0].1,
            json!({"type": "message_start", "message": {"id": "msg_c1", "type": "message",
                "role": "assistant", "model": "q", "content": [], "stop_reason": null,
                "stop_sequence": null, "usage": {"input_tokens": 0, "output_tokens": 0}}})
        );
        assert_eq!(ev[1].1["content_block"]["type"], "thinking");
        assert_eq!(
            ev[2].1["delta"],
            json!({"type": "thinking_delta", "thinking": "think"})
        );
        assert_eq!(ev[4].1["index"], 1);
        assert_eq!(
            ev[6].1["delta"],
            json!({"type": "text_delta", "text": "lo \"x\""})
        );
        assert_eq!(
            ev[8].1["content_block"],
            json!({"type": "tool_use", "id": "call_1", "name": "f", "input": {}})
        );
        let args: String = ev[9..11]
            .iter()
            .map(|(_, d)| d["delta"]["partial_json"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(args, "{\"a\":1}");
        assert_eq!(ev[11].1, json!({"type": "content_block_stop", "index": 2}));
        assert_eq!(
            ev[12].1,
            json!({"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": null},
                "usage": {"input_tokens": 5, "output_tokens": 3, "cache_read_input_tokens": 2}})
        );
        // However the network cuts the upstream bytes, the output is the same.
        let bytes = CHAT.as_bytes();
        for cut in 0..bytes.len() {
            assert_eq!(anthropic(bytes, &[cut]), out, "cut at {cut}");
        }
        let every: Vec<usize> = (1..bytes.len()).collect();
        assert_eq!(anthropic(bytes, &every), out);
    }

    #[test]
    fn servers_sending_both_reasoning_names_are_read() {
        // vLLM sends `reasoning` and the older `reasoning_content` side by side, and
        // SGLang `matched_stop` where vLLM has `stop_reason`.
        let s = "data: {\"id\":\"c\",\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"reasoning\":\"r\",\"reasoning_content\":\"r\"}}]}\n\n\
                 data: {\"id\":\"c\",\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\",\"stop_reason\":null,\"matched_stop\":\"##\"}]}\n\ndata: [DONE]\n\n";
        let ev = named(&anthropic(s.as_bytes(), &[]));
        assert_eq!(
            ev[2].1["delta"],
            json!({"type": "thinking_delta", "thinking": "r"})
        );
        let delta = &ev[ev.len() - 2].1;
        assert_eq!(
            delta["delta"],
            json!({"stop_reason": "stop_sequence", "stop_sequence": "##"})
        );
        let body = br#"{"id":"c","model":"m","choices":[{"index":0,"message":{"content":"a","reasoning":"r","reasoning_content":"r"},"finish_reason":"stop"}]}"#;
        let r = crate::chat::response::decode(body, "vllm").unwrap();
        assert_eq!(r.choices[0].reasoning.as_deref(), Some("r"));
    }

    #[test]
    fn stop_sequences_and_errors_reach_anthropic_clients() {
        // vLLM names the stop string that ended the answer.
        let s = "data: {\"id\":\"c\",\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"a\"}}]}\n\n\
                 data: {\"id\":\"c\",\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\",\"stop_reason\":\"END\"}]}\n\ndata: [DONE]\n\n";
        let ev = named(&anthropic(s.as_bytes(), &[]));
        let delta = &ev[ev.len() - 2].1;
        assert_eq!(
            delta["delta"],
            json!({"stop_reason": "stop_sequence", "stop_sequence": "END"})
        );
        // An in-band error, and a stream without [DONE], are errors, not answers.
        let mut t = Translate {
            dec: ChatDecoder::new("sglang"),
            enc: AnthropicEncoder::new("m".into()),
        };
        let mut out = BytesMut::new();
        let e = t
            .feed(
                b"data: {\"error\":{\"message\":\"boom\",\"type\":\"x\"}}\n\n",
                &mut out,
            )
            .unwrap_err();
        assert!(e.error.message.contains("boom"));
        let mut t = Translate {
            dec: ChatDecoder::new("sglang"),
            enc: AnthropicEncoder::new("m".into()),
        };
        t.feed(&CHAT.as_bytes()[..200], &mut out).unwrap();
        assert!(t.finish(&mut out).is_err());
    }

    fn responses(dec: impl Decoder, stream: &[u8], cuts: &[usize]) -> Vec<(String, Value)> {
        let req = ClientRequest::parse(
            Endpoint::Responses,
            bytes::Bytes::from_static(b"{\"model\":\"g\",\"input\":\"x\",\"stream\":true}"),
        )
        .unwrap();
        let out = run(
            Translate {
                dec,
                enc: ResponsesEncoder::new("dep-model".into(), &req),
            },
            stream,
            cuts,
        );
        named(&out)
    }

    /// What a Responses stream says, without its random ids.
    fn summary(ev: &[(String, Value)]) -> Vec<String> {
        ev.iter()
            .map(|(n, d)| {
                let detail = d
                    .get("delta")
                    .or(d.get("text"))
                    .or(d.get("arguments"))
                    .or(d.pointer("/item/type"))
                    .map(|v| v.to_string())
                    .unwrap_or_default();
                format!("{n} {detail}")
            })
            .collect()
    }

    #[test]
    fn chat_stream_as_responses_events() {
        let ev = responses(ChatDecoder::new("sglang"), CHAT.as_bytes(), &[]);
        assert_eq!(
            summary(&ev),
            [
                "response.created ",
                "response.in_progress ",
                "response.output_item.added \"reasoning\"",
                "response.reasoning_text.delta \"think\"",
                "response.reasoning_text.done \"think\"",
                "response.output_item.done \"reasoning\"",
                "response.output_item.added \"message\"",
                "response.content_part.added ",
                "response.output_text.delta \"Hel\"",
                "response.output_text.delta \"lo \\\"x\\\"\"",
                "response.output_text.done \"Hello \\\"x\\\"\"",
                "response.content_part.done ",
                "response.output_item.done \"message\"",
                "response.output_item.added \"function_call\"",
                "response.function_call_arguments.delta \"{\\\"a\\\":\"",
                "response.function_call_arguments.delta \"1}\"",
                "response.function_call_arguments.done \"{\\\"a\\\":1}\"",
                "response.output_item.done \"function_call\"",
                "response.completed ",
            ]
            .map(String::from)
        );
        let seq: Vec<u64> = ev
            .iter()
            .map(|(_, d)| d["sequence_number"].as_u64().unwrap())
            .collect();
        assert_eq!(seq, (0..ev.len() as u64).collect::<Vec<_>>());
        let done = &ev.last().unwrap().1["response"];
        assert_eq!(done["status"], "completed");
        assert_eq!(done["model"], "q");
        assert_eq!(
            done["usage"],
            json!({"input_tokens": 7, "input_tokens_details": {"cached_tokens": 2},
                "output_tokens": 3, "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 10})
        );
        let output = done["output"].as_array().unwrap();
        assert_eq!(output.len(), 3);
        assert_eq!(output[1]["content"][0]["text"], "Hello \"x\"");
        assert_eq!(output[2]["call_id"], "call_1");
        assert_eq!(output[2]["arguments"], "{\"a\":1}");
        // Items announced and finished under the same id and index.
        assert_eq!(ev[6].1["item"]["id"], ev[12].1["item"]["id"]);
        assert_eq!(ev[8].1["item_id"], ev[6].1["item"]["id"]);
        assert_eq!(ev[13].1["output_index"], 2);
        let want = summary(&ev);
        let bytes = CHAT.as_bytes();
        for cut in 0..bytes.len() {
            let got = responses(ChatDecoder::new("sglang"), bytes, &[cut]);
            assert_eq!(summary(&got), want, "cut at {cut}");
        }
    }

    #[test]
    fn anthropic_and_gemini_streams_as_responses_events() {
        let ant = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"m\",\"model\":\"claude\",\"usage\":{\"input_tokens\":4}}}\n\n\
            event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n\
            event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hi\"}}\n\n\
            event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"max_tokens\"},\"usage\":{\"output_tokens\":2}}\n\n\
            event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n";
        let ev = responses(AnthropicDecoder::default(), ant.as_bytes(), &[]);
        let last = &ev.last().unwrap();
        assert_eq!(last.0, "response.incomplete");
        assert_eq!(last.1["response"]["status"], "incomplete");
        assert_eq!(
            last.1["response"]["incomplete_details"],
            json!({"reason": "max_output_tokens"})
        );
        assert_eq!(last.1["response"]["usage"]["total_tokens"], 6);
        let gem = "data: {\"candidates\":[{\"content\":{\"parts\":[{\"functionCall\":{\"name\":\"f\",\"args\":{\"k\":1}}}]},\"finishReason\":\"STOP\",\"index\":0}],\"usageMetadata\":{\"promptTokenCount\":3,\"candidatesTokenCount\":1,\"totalTokenCount\":4}}\r\n\r\n";
        let ev = responses(GeminiDecoder::default(), gem.as_bytes(), &[]);
        let done = &ev.last().unwrap().1["response"];
        assert_eq!(done["output"][0]["type"], "function_call");
        assert_eq!(done["output"][0]["arguments"], "{\"k\":1}");
        assert_eq!(done["usage"]["total_tokens"], 4);
    }

    #[test]
    fn gemini_stream_as_anthropic_events() {
        let gem = "data: {\"candidates\":[{\"content\":{\"parts\":[{\"text\":\"Hi \"}]},\"index\":0}],\"modelVersion\":\"gemini-x\"}\r\n\r\n\
            data: {\"candidates\":[{\"content\":{\"parts\":[{\"text\":\"there\"}]},\"finishReason\":\"SAFETY\",\"index\":0}],\"usageMetadata\":{\"promptTokenCount\":3,\"candidatesTokenCount\":2,\"totalTokenCount\":5}}\r\n\r\n";
        let out = run(
            Translate {
                dec: GeminiDecoder::default(),
                enc: AnthropicEncoder::new("g".into()),
            },
            gem.as_bytes(),
            &[],
        );
        let ev = named(&out);
        assert_eq!(ev[0].1["message"]["model"], "gemini-x");
        let text: String = ev
            .iter()
            .filter_map(|(_, d)| d.pointer("/delta/text").and_then(Value::as_str))
            .collect();
        assert_eq!(text, "Hi there");
        assert_eq!(ev[ev.len() - 2].1["delta"]["stop_reason"], "refusal");
        assert_eq!(
            ev[ev.len() - 2].1["usage"],
            json!({"input_tokens": 3, "output_tokens": 2})
        );
    }

    #[test]
    fn anthropic_stream_as_chat_chunks_is_unchanged_by_the_hub() {
        // The pre-hub translator's output for the same stream (role chunk first, content,
        // finish, usage, [DONE]).
        let ant = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"m\",\"model\":\"claude\",\"usage\":{\"input_tokens\":4}}}\n\n\
            event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hi\"}}\n\n\
            event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":2}}\n\n\
            event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n";
        let out = run(
            Translate {
                dec: AnthropicDecoder::default(),
                enc: ChatEncoder::new("x".into(), true),
            },
            ant.as_bytes(),
            &[],
        );
        let ev = crate::translate::testing::events(&out);
        assert_eq!(ev.len(), 5);
        assert_eq!(
            ev[0]["choices"][0]["delta"],
            json!({"role": "assistant", "content": ""})
        );
        assert_eq!(ev[1]["choices"][0]["delta"], json!({"content": "Hi"}));
        assert_eq!(ev[2]["choices"][0]["finish_reason"], "stop");
        assert_eq!(ev[3]["usage"]["total_tokens"], 6);
        assert_eq!(ev[4], "[DONE]");
        assert!(ev[..4]
            .iter()
            .all(|e| e["id"] == "m" && e["model"] == "claude"));
    }
}
