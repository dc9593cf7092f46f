//! OpenAI `chat.completion.chunk` streams: written from hub events (for an OpenAI client
//! of a translated deployment) and read into them (from an OpenAI-compatible deployment
//! answering an Anthropic or Responses client).

use super::response::{finish_reason, stop_from, usage, UsageIn};
use crate::hub::{self, Encoder, Event};
use crate::translate::{
    self as t, stream_error, ChunkWriter, Delta, FunctionDelta, SseParser, ToolCallDelta,
};
use crate::upstream_error::UpstreamError;
use bytes::BytesMut;
use serde::Deserialize;
use serde_json::value::RawValue;
use std::borrow::Cow;

// ---------------------------------------------------------------------------------------
// Encode
// ---------------------------------------------------------------------------------------

/// Hub events → OpenAI chunks. The `role` chunk goes out with a choice's first content,
/// so that an upstream error right after the upstream's first event still counts as
/// "nothing sent yet" and the router can retry elsewhere.
pub struct ChatEncoder {
    writer: Option<ChunkWriter>,
    /// The model named when the upstream names none.
    model: String,
    include_usage: bool,
    /// Per choice: the role chunk went out.
    started: Vec<bool>,
    usage: Option<hub::Usage>,
}

impl ChatEncoder {
    pub fn new(model: String, include_usage: bool) -> Self {
        ChatEncoder {
            writer: None,
            model,
            include_usage,
            started: Vec::new(),
            usage: None,
        }
    }

    fn writer(&mut self) -> &ChunkWriter {
        let (model, include_usage) = (&self.model, self.include_usage);
        self.writer.get_or_insert_with(|| {
            ChunkWriter::new(t::random_id("chatcmpl-"), model.clone(), include_usage)
        })
    }

    /// The writer, after sending `choice`'s role chunk if it has not gone out yet.
    fn started(&mut self, choice: u32, out: &mut BytesMut) -> &ChunkWriter {
        let i = choice as usize;
        if i >= self.started.len() {
            self.started.resize(i + 1, false);
        }
        if !self.started[i] {
            self.started[i] = true;
            let role = Delta {
                role: Some("assistant"),
                content: Some(""),
                ..Delta::default()
            };
            self.writer().delta(out, choice, &role, None);
        }
        self.writer()
    }
}

/// Choices beyond this are ignored (a request asks for at most a few).
const MAX_CHOICES: u32 = 64;

impl Encoder for ChatEncoder {
    fn event(&mut self, ev: Event<'_>, out: &mut BytesMut) -> Result<(), UpstreamError> {
        let delta = match ev {
            Event::Start { id, model } => {
                if self.writer.is_none() {
                    let id = if id.is_empty() {
                        t::random_id("chatcmpl-")
                    } else {
                        id.to_string()
                    };
                    let model = if model.is_empty() {
                        self.model.clone()
                    } else {
                        model.to_string()
                    };
                    self.writer = Some(ChunkWriter::new(id, model, self.include_usage));
                }
                return Ok(());
            }
            Event::Usage(u) => {
                self.usage = Some(u);
                return Ok(());
            }
            Event::Done => {
                let u = usage(&self.usage.unwrap_or_default());
                let w = self.writer();
                w.usage(out, &u);
                w.done(out);
                return Ok(());
            }
            Event::Finish { choice, reason, .. } if choice < MAX_CHOICES => {
                self.started(choice, out).delta(
                    out,
                    choice,
                    &Delta::default(),
                    Some(finish_reason(reason)),
                );
                return Ok(());
            }
            Event::Text { choice, text } if choice < MAX_CHOICES && !text.is_empty() => (
                choice,
                Delta {
                    content: Some(text),
                    ..Delta::default()
                },
            ),
            Event::Reasoning { choice, text } if choice < MAX_CHOICES && !text.is_empty() => (
                choice,
                Delta {
                    reasoning_content: Some(text),
                    ..Delta::default()
                },
            ),
            Event::ToolStart {
                choice,
                index,
                id,
                name,
            } if choice < MAX_CHOICES => (
                choice,
                Delta {
                    tool_calls: Some([ToolCallDelta {
                        index,
                        id: Some(id),
                        kind: Some("function"),
                        function: FunctionDelta {
                            name: Some(name),
                            arguments: Some(""),
                        },
                    }]),
                    ..Delta::default()
                },
            ),
            Event::ToolArgs {
                choice,
                index,
                json,
            } if choice < MAX_CHOICES && !json.is_empty() => (
                choice,
                Delta {
                    tool_calls: Some([ToolCallDelta {
                        index,
                        id: None,
                        kind: None,
                        function: FunctionDelta {
                            name: None,
                            arguments: Some(json),
                        },
                    }]),
                    ..Delta::default()
                },
            ),
            _ => return Ok(()),
        };
        let (choice, d) = delta;
        self.started(choice, out).delta(out, choice, &d, None);
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------
// Decode
// ---------------------------------------------------------------------------------------

#[derive(Deserialize)]
struct ChunkIn<'a> {
    #[serde(default, borrow)]
    id: Cow<'a, str>,
    #[serde(default, borrow)]
    model: Cow<'a, str>,
    #[serde(default, borrow)]
    choices: Few<ChunkChoiceIn<'a>>,
    #[serde(default, borrow)]
    usage: Option<&'a RawValue>,
    #[serde(default, borrow)]
    error: Option<&'a RawValue>,
}

/// A JSON array that almost always holds one element, read without allocating for it
/// (a chunk has one choice).
struct Few<T> {
    first: Option<T>,
    rest: Vec<T>,
}

impl<T> Default for Few<T> {
    fn default() -> Self {
        Few {
            first: None,
            rest: Vec::new(),
        }
    }
}

impl<T> Few<T> {
    /// The elements, in order, by reference (nothing moved).
    fn iter(&self) -> impl Iterator<Item = &T> {
        self.first.iter().chain(&self.rest)
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Few<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>> serde::de::Visitor<'de> for V<T> {
            type Value = Few<T>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an array or null")
            }
            fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
                Ok(Few::default())
            }
            fn visit_none<E: serde::de::Error>(self) -> Result<Self::Value, E> {
                Ok(Few::default())
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Self::Value, A::Error> {
                let mut few = Few {
                    first: seq.next_element()?,
                    rest: Vec::new(),
                };
                while let Some(x) = seq.next_element()? {
                    few.rest.push(x);
                }
                Ok(few)
            }
        }
        d.deserialize_any(V(std::marker::PhantomData))
    }
}

/// One choice of a chunk. Kept small (rare fields raw or boxed): serde moves it a few
/// times per event.
#[derive(Deserialize)]
struct ChunkChoiceIn<'a> {
    #[serde(default)]
    index: Option<u32>,
    #[serde(default, borrow)]
    delta: crate::translate::Lax<DeltaIn<'a>>,
    #[serde(default, borrow)]
    finish_reason: Option<Cow<'a, str>>,
    /// vLLM's `stop_reason`, SGLang's `matched_stop`: the stop string that matched.
    #[serde(default, borrow)]
    stop_reason: Option<&'a RawValue>,
    #[serde(default, borrow)]
    matched_stop: Option<&'a RawValue>,
}

#[derive(Deserialize, Default)]
struct DeltaIn<'a> {
    #[serde(default, borrow)]
    content: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    reasoning_content: Option<Cow<'a, str>>,
    /// vLLM's newer name (it may send both).
    #[serde(default, borrow)]
    reasoning: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    refusal: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    tool_calls: Option<Vec<ToolDeltaIn<'a>>>,
}

#[derive(Deserialize)]
struct ToolDeltaIn<'a> {
    #[serde(default)]
    index: Option<u32>,
    #[serde(default, borrow)]
    id: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    function: Option<FunctionDeltaIn<'a>>,
}

#[derive(Deserialize, Default)]
struct FunctionDeltaIn<'a> {
    #[serde(default, borrow)]
    name: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    arguments: Option<Cow<'a, str>>,
}

#[derive(Default, Clone)]
struct ChoiceState {
    /// Upstream tool call index → ours (in order of appearance).
    tools: Vec<u32>,
    finished: bool,
}

/// OpenAI chunks → hub events.
pub struct ChatDecoder {
    sse: SseParser,
    st: ChatState,
}

/// What a [`ChatDecoder`] knows besides its SSE buffer.
struct ChatState {
    started: bool,
    choices: Vec<ChoiceState>,
    done: bool,
    provider: &'static str,
}

impl ChatDecoder {
    pub fn new(provider: &'static str) -> Self {
        ChatDecoder {
            sse: SseParser::default(),
            st: ChatState {
                started: false,
                choices: Vec::new(),
                done: false,
                provider,
            },
        }
    }
}

impl ChatState {
    fn handle(
        &mut self,
        data: &[u8],
        enc: &mut dyn Encoder,
        out: &mut BytesMut,
    ) -> Result<(), UpstreamError> {
        if self.done {
            return Ok(());
        }
        let trimmed = data.trim_ascii();
        if trimmed == b"[DONE]" {
            self.done = true;
            return enc.event(Event::Done, out);
        }
        if trimmed.is_empty() {
            return Ok(());
        }
        let unreadable = |e: &dyn std::fmt::Display| {
            stream_error(format!(
                "{} sent a stream event llmgw cannot read: {e}",
                self.provider
            ))
        };
        // One UTF-8 check for the whole event instead of one per string.
        let text = std::str::from_utf8(data).map_err(|e| unreadable(&e))?;
        let chunk: ChunkIn<'_> = serde_json::from_str(text).map_err(|e| unreadable(&e))?;
        if let Some(err) = chunk.error {
            let mut e = crate::upstream_error::openai_style_error(
                axum::http::StatusCode::BAD_GATEWAY,
                &axum::http::HeaderMap::new(),
                format!("{{\"error\":{}}}", err.get()).as_bytes(),
            );
            e.class = llmgw_core::config::ErrorClass::InternalServer;
            e.raw_body = None;
            return Err(e);
        }
        if !self.started {
            self.started = true;
            enc.event(
                Event::Start {
                    id: &chunk.id,
                    model: &chunk.model,
                },
                out,
            )?;
        }
        for (pos, c) in chunk.choices.iter().enumerate() {
            let choice = c.index.unwrap_or(pos as u32);
            if choice >= 64 {
                continue;
            }
            let i = choice as usize;
            if i >= self.choices.len() {
                self.choices.resize(i + 1, ChoiceState::default());
            }
            if let Some(d) = c.delta.as_ref() {
                if let Some(r) = d.reasoning_content.as_deref().or(d.reasoning.as_deref()) {
                    if !r.is_empty() {
                        enc.event(Event::Reasoning { choice, text: r }, out)?;
                    }
                }
                if let Some(text) = d.content.as_deref().or(d.refusal.as_deref()) {
                    if !text.is_empty() {
                        enc.event(Event::Text { choice, text }, out)?;
                    }
                }
                for (k, call) in d.tool_calls.iter().flatten().enumerate() {
                    let up = call.index.unwrap_or(k as u32);
                    let st = &mut self.choices[i];
                    let no_function = FunctionDeltaIn::default();
                    let f = call.function.as_ref().unwrap_or(&no_function);
                    let index = match st.tools.iter().position(|&u| u == up) {
                        Some(n) => n as u32,
                        None => {
                            if st.tools.len() >= 4096 {
                                continue;
                            }
                            st.tools.push(up);
                            let n = (st.tools.len() - 1) as u32;
                            let id = match call.id.as_deref() {
                                Some(id) if !id.is_empty() => Cow::Borrowed(id),
                                _ => Cow::Owned(t::random_id("call_")),
                            };
                            enc.event(
                                Event::ToolStart {
                                    choice,
                                    index: n,
                                    id: &id,
                                    name: f.name.as_deref().unwrap_or(""),
                                },
                                out,
                            )?;
                            n
                        }
                    };
                    if let Some(args) = f.arguments.as_deref().filter(|a| !a.is_empty()) {
                        enc.event(
                            Event::ToolArgs {
                                choice,
                                index,
                                json: args,
                            },
                            out,
                        )?;
                    }
                }
            }
            if let Some(reason) = c.finish_reason.as_deref() {
                let st = &mut self.choices[i];
                if !st.finished {
                    st.finished = true;
                    let stop = stop_from(Some(reason), c.stop_reason.or(c.matched_stop));
                    enc.event(
                        Event::Finish {
                            choice,
                            reason: stop.reason,
                            sequence: stop.sequence.as_deref(),
                        },
                        out,
                    )?;
                }
            }
        }
        if let Some(u) = chunk.usage.filter(|u| u.get() != "null") {
            let u: UsageIn = serde_json::from_str(u.get()).map_err(|e| {
                stream_error(format!(
                    "{} sent usage llmgw cannot read: {e}",
                    self.provider
                ))
            })?;
            enc.event(Event::Usage(u.hub()), out)?;
        }
        Ok(())
    }
}

impl hub::Decoder for ChatDecoder {
    fn feed(
        &mut self,
        chunk: &[u8],
        enc: &mut dyn Encoder,
        out: &mut BytesMut,
    ) -> Result<(), UpstreamError> {
        self.sse.push(chunk)?;
        while let Some(ev) = self.sse.next_ref() {
            self.st.handle(&ev.data, enc, out)?;
        }
        Ok(())
    }

    fn finish(&mut self, enc: &mut dyn Encoder, out: &mut BytesMut) -> Result<(), UpstreamError> {
        if let Some(ev) = self.sse.take_rest_ref() {
            self.st.handle(&ev.data, enc, out)?;
        }
        if !self.st.done {
            return Err(stream_error(format!(
                "the {} stream ended without data: [DONE]; the answer may be incomplete",
                self.st.provider
            )));
        }
        Ok(())
    }
}
