//! OpenAI Responses' typed stream events, written from hub events: `response.created`,
//! `response.in_progress`, per output item `response.output_item.added`, its deltas
//! (`response.output_text.delta`, `response.function_call_arguments.delta`,
//! `response.reasoning_text.delta`) and their `…done` events, `response.output_item.done`,
//! and finally `response.completed` (or `response.incomplete`) with the whole response.
//!
//! The protocol repeats every item's full text in its `…done` events and in the final
//! response, so the encoder keeps the text it has sent (at most [`MAX_KEPT`] bytes).

use super::response::{
    custom_input, names, status, stored, Item, OutputText, ReasoningText, ResponseOut, UsageOut,
};
use crate::hub::{self, Encoder, Event, StopReason};
use crate::prepared::{Kind as ToolKind, ToolNames};
use crate::request::ClientRequest;
use crate::translate::{self as t, stream_error};
use crate::upstream_error::UpstreamError;
use bytes::BytesMut;
use serde::Serialize;

/// Most text kept for the `…done` events and the final response.
pub const MAX_KEPT: usize = 16 * 1024 * 1024;

enum Kind {
    Message,
    Reasoning,
    /// A function call, or (`custom`) a custom tool call, whose input is sent when it is
    /// complete (it arrives as the JSON arguments of the function offered upstream).
    Call {
        call_id: String,
        name: String,
        namespace: Option<String>,
        custom: bool,
    },
}

struct ItemState {
    id: String,
    kind: Kind,
    /// Text, reasoning text or arguments sent so far.
    text: String,
    done: bool,
    /// What the item's delta events have between `sequence_number` and the delta:
    /// `,"item_id":"…","output_index":N,…"delta":`, rendered once.
    mid: Vec<u8>,
}

/// Hub events → Responses events (the first choice only). `response.created` goes out
/// with the first content, so an upstream error before any still lets the router retry.
pub struct ResponsesEncoder {
    id: String,
    created: u64,
    model: String,
    seq: u64,
    started: bool,
    items: Vec<ItemState>,
    /// The item receiving deltas.
    open: Option<usize>,
    /// Hub tool index → item.
    tool_items: Vec<usize>,
    stop: StopReason,
    usage: Option<hub::Usage>,
    kept: usize,
    /// The request's namespaced and custom tools.
    names: ToolNames,
    store: bool,
    previous_response_id: Option<String>,
}

impl ResponsesEncoder {
    pub fn new(model: String, req: &ClientRequest) -> Self {
        let (store, previous) = stored(req);
        ResponsesEncoder {
            names: names(req).into_owned(),
            store,
            previous_response_id: previous.map(str::to_string),
            id: t::random_id("resp_"),
            created: t::now_secs(),
            model,
            seq: 0,
            started: false,
            items: Vec::new(),
            open: None,
            tool_items: Vec::new(),
            stop: StopReason::End,
            usage: None,
            kept: 0,
        }
    }

    /// Writes one event and counts it.
    fn write<T: Serialize>(&mut self, out: &mut BytesMut, name: &'static str, body: T) {
        write_raw(out, name, self.seq, body);
        self.seq += 1;
    }

    fn response_event(&mut self, out: &mut BytesMut, name: &'static str, last: bool) {
        let items: Vec<Item<'_>> = if last {
            self.items.iter().map(item).collect()
        } else {
            Vec::new()
        };
        let mut resp = ResponseOut::new(&self.id, self.created, &self.model, &items);
        resp.store = self.store;
        resp.previous_response_id = self.previous_response_id.as_deref();
        if last {
            let (st, incomplete) = status(self.stop);
            resp.status = st;
            resp.incomplete_details = incomplete;
            resp.usage = Some(UsageOut::of(&self.usage.unwrap_or_default()));
        }
        #[derive(Serialize)]
        struct Body<'r> {
            response: ResponseOut<'r>,
        }
        write_raw(out, name, self.seq, Body { response: resp });
        self.seq += 1;
    }

    fn start(&mut self, out: &mut BytesMut) {
        if !self.started {
            self.started = true;
            self.response_event(out, "response.created", false);
            self.response_event(out, "response.in_progress", false);
        }
    }

    /// Closes the open item (its `…done` events).
    fn close(&mut self, out: &mut BytesMut) {
        let Some(i) = self.open.take() else {
            return;
        };
        self.items[i].done = true;
        let (id, text) = (
            self.items[i].id.clone(),
            std::mem::take(&mut self.items[i].text),
        );
        match &self.items[i].kind {
            Kind::Message => {
                self.write(
                    out,
                    "response.output_text.done",
                    TextDone {
                        item_id: &id,
                        output_index: i,
                        content_index: 0,
                        text: &text,
                        logprobs: [],
                    },
                );
                self.write(
                    out,
                    "response.content_part.done",
                    PartEv {
                        item_id: &id,
                        output_index: i,
                        content_index: 0,
                        part: OutputText::new(&text),
                    },
                );
            }
            Kind::Reasoning => self.write(
                out,
                "response.reasoning_text.done",
                TextDone {
                    item_id: &id,
                    output_index: i,
                    content_index: 0,
                    text: &text,
                    logprobs: [],
                },
            ),
            Kind::Call { custom: true, .. } => {
                let input = custom_input(&text);
                self.write(
                    out,
                    "response.custom_tool_call_input.delta",
                    InputDelta {
                        item_id: &id,
                        output_index: i,
                        delta: &input,
                    },
                );
                self.write(
                    out,
                    "response.custom_tool_call_input.done",
                    InputDone {
                        item_id: &id,
                        output_index: i,
                        input: &input,
                    },
                );
                self.items[i].text = input;
                write_raw(
                    out,
                    "response.output_item.done",
                    self.seq,
                    ItemEv {
                        output_index: i,
                        item: item(&self.items[i]),
                    },
                );
                self.seq += 1;
                return;
            }
            Kind::Call { name, .. } => {
                let name = name.clone();
                self.write(
                    out,
                    "response.function_call_arguments.done",
                    ArgsDone {
                        item_id: &id,
                        output_index: i,
                        name: &name,
                        arguments: if text.is_empty() { "{}" } else { &text },
                    },
                )
            }
        }
        self.items[i].text = text;
        write_raw(
            out,
            "response.output_item.done",
            self.seq,
            ItemEv {
                output_index: i,
                item: item(&self.items[i]),
            },
        );
        self.seq += 1;
    }

    /// Opens a new item of `kind` and announces it.
    fn open(&mut self, kind: Kind, out: &mut BytesMut) -> usize {
        self.start(out);
        self.close(out);
        let id = match kind {
            Kind::Message => t::random_id("msg_"),
            Kind::Reasoning => t::random_id("rs_"),
            Kind::Call { custom: true, .. } => t::random_id("ctc_"),
            Kind::Call { .. } => t::random_id("fc_"),
        };
        let i = self.items.len();
        let mut mid = Vec::with_capacity(id.len() + 64);
        mid.extend_from_slice(b",\"item_id\":");
        let _ = serde_json::to_writer(&mut mid, &id);
        mid.extend_from_slice(b",\"output_index\":");
        let _ = serde_json::to_writer(&mut mid, &i);
        if !matches!(kind, Kind::Call { .. }) {
            mid.extend_from_slice(b",\"content_index\":0");
        }
        mid.extend_from_slice(b",\"delta\":");
        self.items.push(ItemState {
            id,
            kind,
            text: String::new(),
            done: false,
            mid,
        });
        self.open = Some(i);
        write_raw(
            out,
            "response.output_item.added",
            self.seq,
            ItemEv {
                output_index: i,
                item: item(&self.items[i]),
            },
        );
        self.seq += 1;
        if let Kind::Message = self.items[i].kind {
            let id = self.items[i].id.clone();
            self.write(
                out,
                "response.content_part.added",
                PartEv {
                    item_id: &id,
                    output_index: i,
                    content_index: 0,
                    part: OutputText::new(""),
                },
            );
        }
        i
    }

    /// One delta event of item `i` (the event sent per token), written from the item's
    /// pre-rendered middle part around the escaped text; the text is kept.
    fn delta(
        &mut self,
        i: usize,
        name: &'static str,
        text: &str,
        tail: &[u8],
        out: &mut BytesMut,
    ) -> Result<(), UpstreamError> {
        self.keep(i, text)?;
        let mid = &self.items[i].mid;
        out.reserve(2 * name.len() + mid.len() + 64 + text.len() + text.len() / 8);
        out.extend_from_slice(b"event: ");
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b"\ndata: {\"type\":\"");
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b"\",\"sequence_number\":");
        let _ = serde_json::to_writer(t::BytesMutWriter(out), &self.seq);
        out.extend_from_slice(mid);
        // Serialising a string cannot fail.
        let _ = serde_json::to_writer(t::BytesMutWriter(out), text);
        out.extend_from_slice(tail);
        self.seq += 1;
        Ok(())
    }

    fn keep(&mut self, i: usize, text: &str) -> Result<(), UpstreamError> {
        self.kept += text.len();
        if self.kept > MAX_KEPT {
            return Err(stream_error(
                "the answer is longer than the 16 MiB a Responses stream can repeat",
            ));
        }
        self.items[i].text.push_str(text);
        Ok(())
    }
}

/// An item as the API shows it (in progress or done).
fn item(s: &ItemState) -> Item<'_> {
    let status = if s.done { "completed" } else { "in_progress" };
    match &s.kind {
        Kind::Message => Item::Message {
            id: &s.id,
            status,
            role: "assistant",
            content: if s.done {
                vec![OutputText::new(&s.text)]
            } else {
                Vec::new()
            },
        },
        Kind::Reasoning => Item::Reasoning {
            id: &s.id,
            summary: [],
            content: [ReasoningText {
                kind: "reasoning_text",
                text: if s.done { &s.text } else { "" },
            }],
            status,
        },
        Kind::Call {
            call_id,
            name,
            namespace,
            custom: true,
        } => Item::CustomToolCall {
            id: &s.id,
            call_id,
            name,
            namespace: namespace.as_deref(),
            input: if s.done { &s.text } else { "" },
            status,
        },
        Kind::Call {
            call_id,
            name,
            namespace,
            ..
        } => Item::FunctionCall {
            id: &s.id,
            call_id,
            name,
            namespace: namespace.as_deref(),
            arguments: if !s.done {
                ""
            } else if s.text.is_empty() {
                "{}"
            } else {
                &s.text
            },
            status,
        },
    }
}

/// Writes one named event: `{"type": name, "sequence_number": seq, ...body}`.
fn write_raw<T: Serialize>(out: &mut BytesMut, name: &'static str, seq: u64, body: T) {
    #[derive(Serialize)]
    struct Ev<T> {
        #[serde(rename = "type")]
        kind: &'static str,
        sequence_number: u64,
        #[serde(flatten)]
        body: T,
    }
    out.reserve(name.len() + 128);
    out.extend_from_slice(b"event: ");
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"\ndata: ");
    // Serialising these plain structs cannot fail.
    let _ = serde_json::to_writer(
        t::BytesMutWriter(out),
        &Ev {
            kind: name,
            sequence_number: seq,
            body,
        },
    );
    out.extend_from_slice(b"\n\n");
}

#[derive(Serialize)]
struct ItemEv<'e> {
    output_index: usize,
    item: Item<'e>,
}

#[derive(Serialize)]
struct PartEv<'e> {
    item_id: &'e str,
    output_index: usize,
    content_index: u32,
    part: OutputText<'e>,
}

#[derive(Serialize)]
struct TextDone<'e> {
    item_id: &'e str,
    output_index: usize,
    content_index: u32,
    text: &'e str,
    logprobs: [(); 0],
}

#[derive(Serialize)]
struct InputDelta<'e> {
    item_id: &'e str,
    output_index: usize,
    delta: &'e str,
}

#[derive(Serialize)]
struct InputDone<'e> {
    item_id: &'e str,
    output_index: usize,
    input: &'e str,
}

#[derive(Serialize)]
struct ArgsDone<'e> {
    item_id: &'e str,
    output_index: usize,
    name: &'e str,
    arguments: &'e str,
}

impl Encoder for ResponsesEncoder {
    fn event(&mut self, ev: Event<'_>, out: &mut BytesMut) -> Result<(), UpstreamError> {
        match ev {
            Event::Start { model, .. } if !self.started && !model.is_empty() => {
                self.model = model.to_string();
            }
            Event::Text { choice: 0, text } if !text.is_empty() => {
                let i = match self.open {
                    Some(i) if matches!(self.items[i].kind, Kind::Message) => i,
                    _ => self.open(Kind::Message, out),
                };
                self.delta(
                    i,
                    "response.output_text.delta",
                    text,
                    b",\"logprobs\":[]}\n\n",
                    out,
                )?;
            }
            Event::Reasoning { choice: 0, text } if !text.is_empty() => {
                let i = match self.open {
                    Some(i) if matches!(self.items[i].kind, Kind::Reasoning) => i,
                    _ => self.open(Kind::Reasoning, out),
                };
                self.delta(i, "response.reasoning_text.delta", text, b"}\n\n", out)?;
            }
            Event::ToolStart {
                choice: 0,
                index,
                id,
                name,
            } => {
                let kind = match self.names.client(name) {
                    Some(e) => Kind::Call {
                        call_id: id.to_string(),
                        name: e.name.clone(),
                        namespace: e.namespace.clone(),
                        custom: e.kind == ToolKind::Custom,
                    },
                    None => Kind::Call {
                        call_id: id.to_string(),
                        name: name.to_string(),
                        namespace: None,
                        custom: false,
                    },
                };
                let i = self.open(kind, out);
                let k = index as usize;
                if k < 4096 {
                    if k >= self.tool_items.len() {
                        self.tool_items.resize(k + 1, usize::MAX);
                    }
                    self.tool_items[k] = i;
                }
            }
            Event::ToolArgs {
                choice: 0,
                index,
                json,
            } if !json.is_empty() => {
                let i = match self.tool_items.get(index as usize) {
                    Some(&i) if i != usize::MAX => i,
                    _ => return Ok(()),
                };
                if let Kind::Call { custom: true, .. } = self.items[i].kind {
                    // Sent whole when the call is complete.
                    return self.keep(i, json);
                }
                self.delta(
                    i,
                    "response.function_call_arguments.delta",
                    json,
                    b"}\n\n",
                    out,
                )?;
            }
            Event::Finish {
                choice: 0, reason, ..
            } => self.stop = reason,
            Event::Usage(u) => self.usage = Some(u),
            Event::Done => {
                self.start(out);
                self.close(out);
                let name = match status(self.stop).0 {
                    "incomplete" => "response.incomplete",
                    _ => "response.completed",
                };
                self.response_event(out, name, true);
            }
            _ => {}
        }
        Ok(())
    }
}
