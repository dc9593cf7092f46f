//! Anthropic's named SSE events: read into hub events (from an Anthropic deployment) and
//! written from them (for an Anthropic client of any other deployment).
//!
//! Reading: each event is read as the plain struct of its type (no internally tagged
//! enum, which would make serde buffer and read every event twice), and strings borrow
//! from the event's bytes. The type is found by comparing the data's start with the SSE
//! `event:` name (Anthropic sends both, equal, `type` first), else by reading the `type`
//! field.

use super::response::{message_id, stop_reason, stop_reason_name, AUsage};
use super::{error_from_type, ErrorBody};
use crate::hub::{self, Encoder, Event, StopReason};
use crate::translate::{self as t, SseParser};
use crate::upstream_error::UpstreamError;
use axum::http::StatusCode;
use bytes::BytesMut;
use serde::{Deserialize, Serialize};
use std::borrow::Cow;

// ---------------------------------------------------------------------------------------
// Decode
// ---------------------------------------------------------------------------------------

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
    #[serde(default, borrow)]
    stop_sequence: Option<Cow<'a, str>>,
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

#[derive(Clone, Copy)]
enum BlockKind {
    Text,
    Tool(u32),
    Other,
}

/// Anthropic SSE → hub events, incrementally.
#[derive(Default)]
pub struct AnthropicDecoder {
    sse: SseParser,
    st: DecodeState,
}

/// What an [`AnthropicDecoder`] knows besides its SSE buffer.
#[derive(Default)]
struct DecodeState {
    /// By Anthropic content block index.
    blocks: Vec<BlockKind>,
    tools: u32,
    usage: AUsage,
    stop_reason: Option<String>,
    stop_sequence: Option<String>,
    done: bool,
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

impl DecodeState {
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
        enc: &mut dyn Encoder,
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
                self.usage.merge(message.usage);
                enc.event(
                    Event::Start {
                        id: &message.id,
                        model: &message.model,
                    },
                    out,
                )?;
            }
            b"content_block_start" => {
                let ev: BlockStartEv<'_> = read_event(data)?;
                let (index, block) = (ev.index, ev.content_block);
                match &*block.kind {
                    "text" => {
                        self.set_block(index, BlockKind::Text);
                        if let Some(text) = block.text.as_deref().filter(|t| !t.is_empty()) {
                            enc.event(Event::Text { choice: 0, text }, out)?;
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
                        enc.event(
                            Event::ToolStart {
                                choice: 0,
                                index: n,
                                id: &id,
                                name: &name,
                            },
                            out,
                        )?;
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
                let ev = match (&*delta.kind, kind) {
                    ("text_delta", _) => Event::Text {
                        choice: 0,
                        text: delta.text.as_deref().ok_or_else(|| missing("text"))?,
                    },
                    ("input_json_delta", kind) => {
                        let json = delta
                            .partial_json
                            .as_deref()
                            .ok_or_else(|| missing("partial_json"))?;
                        let BlockKind::Tool(n) = kind else {
                            return Ok(());
                        };
                        Event::ToolArgs {
                            choice: 0,
                            index: n,
                            json,
                        }
                    }
                    ("thinking_delta", _) => Event::Reasoning {
                        choice: 0,
                        text: delta
                            .thinking
                            .as_deref()
                            .ok_or_else(|| missing("thinking"))?,
                    },
                    _ => return Ok(()),
                };
                enc.event(ev, out)?;
            }
            b"message_delta" => {
                let MessageDeltaEv { delta, usage } = read_event(data)?;
                if let Some(reason) = delta.stop_reason {
                    self.stop_reason = Some(reason.into_owned());
                }
                if let Some(seq) = delta.stop_sequence {
                    self.stop_sequence = Some(seq.into_owned());
                }
                if let Some(u) = usage {
                    self.usage.merge(u);
                }
            }
            b"message_stop" => {
                read_event::<TypeOnly<'_>>(data)?;
                self.done = true;
                enc.event(
                    Event::Finish {
                        choice: 0,
                        reason: stop_reason(self.stop_reason.as_deref()),
                        sequence: self.stop_sequence.as_deref(),
                    },
                    out,
                )?;
                enc.event(Event::Usage(self.usage.hub()), out)?;
                enc.event(Event::Done, out)?;
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

impl hub::Decoder for AnthropicDecoder {
    fn feed(
        &mut self,
        chunk: &[u8],
        enc: &mut dyn Encoder,
        out: &mut BytesMut,
    ) -> Result<(), UpstreamError> {
        self.sse.push(chunk)?;
        while let Some(ev) = self.sse.next_ref() {
            self.st.handle(ev.event, &ev.data, enc, out)?;
        }
        Ok(())
    }

    fn finish(&mut self, enc: &mut dyn Encoder, out: &mut BytesMut) -> Result<(), UpstreamError> {
        if let Some(ev) = self.sse.take_rest_ref() {
            self.st.handle(ev.event, &ev.data, enc, out)?;
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
// Encode
// ---------------------------------------------------------------------------------------

/// The content block open in an [`AnthropicEncoder`].
#[derive(Clone, Copy, PartialEq, Eq)]
enum Open {
    None,
    Text,
    Thinking,
    /// A tool call (its hub index).
    Tool(u32),
}

/// Hub events → Anthropic's event sequence: `message_start`, then per block
/// `content_block_start`/`_delta`/`_stop`, then `message_delta` (stop reason, usage) and
/// `message_stop`. `message_start` goes out with the first content, so an upstream error
/// before any still lets the router retry elsewhere. Only the first choice is written.
pub struct AnthropicEncoder {
    id: String,
    model: String,
    started: bool,
    open: Open,
    /// Index of the next content block.
    next_block: u32,
    /// Hub tool index → content block index.
    tool_blocks: Vec<u32>,
    stop: Option<(StopReason, Option<String>)>,
    usage: hub::Usage,
}

impl AnthropicEncoder {
    pub fn new(model: String) -> Self {
        AnthropicEncoder {
            id: String::new(),
            model,
            started: false,
            open: Open::None,
            next_block: 0,
            tool_blocks: Vec::new(),
            stop: None,
            usage: hub::Usage::default(),
        }
    }

    fn start(&mut self, out: &mut BytesMut) {
        if self.started {
            return;
        }
        self.started = true;
        let usage = AUsage::from_hub(&self.usage);
        write(
            out,
            "message_start",
            &MessageStart {
                kind: "message_start",
                message: StartOut {
                    id: &message_id(&self.id),
                    kind: "message",
                    role: "assistant",
                    model: &self.model,
                    content: [],
                    stop_reason: None,
                    stop_sequence: None,
                    usage: UsageOut {
                        input_tokens: usage.input_tokens.unwrap_or(0),
                        output_tokens: 0,
                        cache_creation_input_tokens: usage.cache_creation_input_tokens,
                        cache_read_input_tokens: usage.cache_read_input_tokens,
                    },
                },
            },
        );
    }

    fn close(&mut self, out: &mut BytesMut) {
        if self.open != Open::None {
            self.open = Open::None;
            write(
                out,
                "content_block_stop",
                &BlockStop {
                    kind: "content_block_stop",
                    index: self.next_block - 1,
                },
            );
        }
    }

    /// Opens a block of `kind` unless it is the one open.
    fn open(&mut self, kind: Open, block: BlockOut<'_>, out: &mut BytesMut) -> u32 {
        self.start(out);
        if self.open == kind {
            return self.next_block - 1;
        }
        self.close(out);
        let index = self.next_block;
        self.next_block += 1;
        self.open = kind;
        write(
            out,
            "content_block_start",
            &BlockStart {
                kind: "content_block_start",
                index,
                content_block: block,
            },
        );
        index
    }

    /// One `content_block_delta`, written from constant pieces around the escaped
    /// text: this is the event sent per token.
    fn delta(&mut self, index: u32, kind: DeltaKind, text: &str, out: &mut BytesMut) {
        const HEAD: &[u8] =
            b"event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":";
        let mid: &[u8] = match kind {
            DeltaKind::Text => b",\"delta\":{\"type\":\"text_delta\",\"text\":",
            DeltaKind::Thinking => b",\"delta\":{\"type\":\"thinking_delta\",\"thinking\":",
            DeltaKind::InputJson => b",\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":",
        };
        out.reserve(HEAD.len() + mid.len() + 16 + text.len() + text.len() / 8);
        out.extend_from_slice(HEAD);
        let _ = serde_json::to_writer(t::BytesMutWriter(out), &index);
        out.extend_from_slice(mid);
        // Serialising a string cannot fail.
        let _ = serde_json::to_writer(t::BytesMutWriter(out), text);
        out.extend_from_slice(b"}}\n\n");
    }
}

impl Encoder for AnthropicEncoder {
    fn event(&mut self, ev: Event<'_>, out: &mut BytesMut) -> Result<(), UpstreamError> {
        match ev {
            Event::Start { id, model } if !self.started => {
                self.id = id.to_string();
                if !model.is_empty() {
                    self.model = model.to_string();
                }
            }
            Event::Text { choice: 0, text } if !text.is_empty() => {
                let i = self.open(Open::Text, BlockOut::Text { text: "" }, out);
                self.delta(i, DeltaKind::Text, text, out);
            }
            Event::Reasoning { choice: 0, text } if !text.is_empty() => {
                let i = self.open(
                    Open::Thinking,
                    BlockOut::Thinking {
                        thinking: "",
                        signature: "",
                    },
                    out,
                );
                self.delta(i, DeltaKind::Thinking, text, out);
            }
            Event::ToolStart {
                choice: 0,
                index,
                id,
                name,
            } => {
                let block = self.open(
                    Open::Tool(index),
                    BlockOut::ToolUse {
                        id,
                        name,
                        input: Empty {},
                    },
                    out,
                );
                let i = index as usize;
                if i < 4096 {
                    if i >= self.tool_blocks.len() {
                        self.tool_blocks.resize(i + 1, u32::MAX);
                    }
                    self.tool_blocks[i] = block;
                }
            }
            Event::ToolArgs {
                choice: 0,
                index,
                json,
            } if !json.is_empty() => {
                let block = match self.tool_blocks.get(index as usize) {
                    Some(&b) if b != u32::MAX => b,
                    _ => return Ok(()),
                };
                self.delta(block, DeltaKind::InputJson, json, out);
            }
            Event::Finish {
                choice: 0,
                reason,
                sequence,
            } => self.stop = Some((reason, sequence.map(str::to_string))),
            Event::Usage(u) => self.usage = u,
            Event::Done => {
                self.start(out);
                self.close(out);
                let (reason, sequence) = self.stop.take().unwrap_or((StopReason::End, None));
                let usage = AUsage::from_hub(&self.usage);
                write(
                    out,
                    "message_delta",
                    &MessageDelta {
                        kind: "message_delta",
                        delta: MessageDeltaOut {
                            stop_reason: stop_reason_name(reason),
                            stop_sequence: sequence.as_deref(),
                        },
                        usage: UsageOut {
                            input_tokens: usage.input_tokens.unwrap_or(0),
                            output_tokens: usage.output_tokens.unwrap_or(0),
                            cache_creation_input_tokens: usage.cache_creation_input_tokens,
                            cache_read_input_tokens: usage.cache_read_input_tokens,
                        },
                    },
                );
                write(
                    out,
                    "message_stop",
                    &TypeOut {
                        kind: "message_stop",
                    },
                );
            }
            _ => {}
        }
        Ok(())
    }
}

/// Writes one named event.
fn write(out: &mut BytesMut, name: &str, data: &impl Serialize) {
    out.reserve(name.len() + 96);
    out.extend_from_slice(b"event: ");
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"\ndata: ");
    // Serialising these plain structs cannot fail.
    let _ = serde_json::to_writer(t::BytesMutWriter(out), data);
    out.extend_from_slice(b"\n\n");
}

#[derive(Serialize)]
struct TypeOut {
    #[serde(rename = "type")]
    kind: &'static str,
}

#[derive(Serialize)]
struct MessageStart<'e> {
    #[serde(rename = "type")]
    kind: &'static str,
    message: StartOut<'e>,
}

#[derive(Serialize)]
struct StartOut<'e> {
    id: &'e str,
    #[serde(rename = "type")]
    kind: &'static str,
    role: &'static str,
    model: &'e str,
    content: [(); 0],
    stop_reason: Option<()>,
    stop_sequence: Option<()>,
    usage: UsageOut,
}

#[derive(Serialize)]
struct UsageOut {
    input_tokens: u64,
    output_tokens: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    cache_creation_input_tokens: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cache_read_input_tokens: Option<u64>,
}

#[derive(Serialize)]
struct Empty {}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum BlockOut<'e> {
    Text {
        text: &'static str,
    },
    Thinking {
        thinking: &'static str,
        signature: &'static str,
    },
    ToolUse {
        id: &'e str,
        name: &'e str,
        input: Empty,
    },
}

#[derive(Serialize)]
struct BlockStart<'e> {
    #[serde(rename = "type")]
    kind: &'static str,
    index: u32,
    content_block: BlockOut<'e>,
}

/// The kind of a `content_block_delta`.
#[derive(Clone, Copy)]
enum DeltaKind {
    Text,
    Thinking,
    InputJson,
}

#[derive(Serialize)]
struct BlockStop {
    #[serde(rename = "type")]
    kind: &'static str,
    index: u32,
}

#[derive(Serialize)]
struct MessageDelta<'e> {
    #[serde(rename = "type")]
    kind: &'static str,
    delta: MessageDeltaOut<'e>,
    usage: UsageOut,
}

#[derive(Serialize)]
struct MessageDeltaOut<'e> {
    stop_reason: &'static str,
    stop_sequence: Option<&'e str>,
}
