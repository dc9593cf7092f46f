//! OpenAI Responses requests decoded into the hub (a Responses client in front of a
//! deployment that does not serve `/responses` itself).
//!
//! Input items: messages, `function_call` (with its `namespace`, mapped to the tool's
//! flattened name) and `function_call_output`, `custom_tool_call` (a call of a freeform
//! tool: a function call with one string argument upstream) and its output,
//! `additional_tools` (merged into the tools), earlier `reasoning` (skipped). A request
//! that continues a stored response (`previous_response_id`) is decoded as its stored
//! conversation followed by its own input. Tools: [`super::tools`].

use super::tools::{convert_tools, tool_choice, ToolIn};
use crate::hub::{
    self, Block, Image, ImageSource, JsonMode, Message, Param, Reasoning, ResponseFormat, Role,
    Target, Text, ToolCall, ToolResult,
};
use crate::prepared::ToolNames;
use crate::request::ClientRequest;
use crate::translate::{
    self as t, invalid, is_null, parse_data_url, raw_arguments, raw_is_default, Body, BodyKeys,
    LStr, Lax, LaxList, MaybeRaw, StrOrList,
};
use llmgw_core::error::ApiError;
use serde::Deserialize;
use serde_json::value::RawValue;
use std::borrow::Cow;

/// Responses' keys.
pub struct ResponsesKeys;

impl BodyKeys for ResponsesKeys {
    const LIST: &'static str = "input";
}

/// A Responses body: `input` and `tools` typed.
pub type ResponsesBody<'a> =
    Body<'a, ResponsesKeys, StrOrList<'a, Lax<ItemIn<'a>>>, LaxList<Lax<ToolIn<'a>>>>;

/// One input item, with the fields of every type it may be.
#[derive(Deserialize, Default)]
pub struct ItemIn<'a> {
    #[serde(rename = "type", default, borrow)]
    kind: LStr<'a>,
    #[serde(default, borrow)]
    role: LStr<'a>,
    #[serde(default, borrow)]
    content: StrOrList<'a, Lax<PartIn<'a>>>,
    #[serde(default, borrow)]
    call_id: LStr<'a>,
    #[serde(default, borrow)]
    name: LStr<'a>,
    #[serde(default, borrow)]
    namespace: LStr<'a>,
    #[serde(default, borrow)]
    arguments: MaybeRaw<'a>,
    /// A custom tool call's input.
    #[serde(default, borrow)]
    input: LStr<'a>,
    #[serde(default, borrow)]
    output: StrOrList<'a, Lax<PartIn<'a>>>,
    /// An `additional_tools` item's tools.
    #[serde(default, borrow)]
    tools: LaxList<Lax<ToolIn<'a>>>,
}

#[derive(Deserialize, Default)]
pub struct PartIn<'a> {
    #[serde(rename = "type", default, borrow)]
    kind: LStr<'a>,
    #[serde(default, borrow)]
    text: LStr<'a>,
    #[serde(default, borrow)]
    image_url: LStr<'a>,
    #[serde(default, borrow)]
    refusal: LStr<'a>,
}

#[derive(Deserialize)]
struct TextIn<'a> {
    #[serde(default, borrow)]
    format: Lax<FormatIn<'a>>,
}

#[derive(Deserialize, Default)]
struct FormatIn<'a> {
    #[serde(rename = "type", default, borrow)]
    kind: LStr<'a>,
    #[serde(default, borrow)]
    name: LStr<'a>,
    #[serde(default, borrow)]
    schema: MaybeRaw<'a>,
    #[serde(default)]
    strict: Option<bool>,
}

#[derive(Deserialize)]
struct ReasoningIn<'a> {
    #[serde(default, borrow)]
    effort: LStr<'a>,
}

/// Parameters that change nothing about the answer (or were read by
/// [`super::prepare::prepare`]): left out when translating. `client_metadata` is the
/// client's own bookkeeping (Codex's turn and session ids), for OpenAI only.
const IGNORED: [&str; 11] = [
    "metadata",
    "include",
    "truncation",
    "service_tier",
    "prompt_cache_key",
    "safety_identifier",
    "stream_options",
    "store",
    "previous_response_id",
    "conversation",
    "client_metadata",
];

/// Reads a Responses body into the hub form, checking it for `target`.
pub fn decode<'a>(
    req: &'a ClientRequest,
    target: &Target<'_>,
) -> Result<hub::Request<'a>, ApiError> {
    let mut body = ResponsesBody::parse(req)?;
    let mut out = hub::Request {
        stream: req.stream,
        ..hub::Request::default()
    };
    let built;
    let names: &ToolNames = match &req.prepared {
        Some(p) => &p.tools,
        None => {
            built = super::prepare::tool_names(&req.body);
            &built
        }
    };
    let mut calls = Calls::default();
    if let Some(h) = req.prepared.as_ref().and_then(|p| p.history.as_ref()) {
        let items: Vec<Lax<ItemIn<'a>>> = serde_json::from_slice(&h.items).map_err(|e| {
            ApiError::internal(format!("the stored conversation cannot be read: {e}"))
        })?;
        convert_items(&items, true, target, names, &mut calls, &mut out)?;
    }
    match body.list.take() {
        None => return Err(invalid("input", "this parameter is required")),
        Some(StrOrList::Str(s)) => out.messages.push(Message {
            role: Role::User,
            content: vec![Block::Text(Text::plain(s))],
        }),
        Some(StrOrList::List(items)) => {
            convert_items(&items, false, target, names, &mut calls, &mut out)?;
            for (i, item) in items.iter().enumerate() {
                if let Lax::Ok(item) = item {
                    if item.kind.as_str() == Some("additional_tools") {
                        let param = format!("input[{i}].tools");
                        convert_tools(target, &param, &item.tools, names, &mut out.tools)?;
                    }
                }
            }
        }
        Some(_) => return Err(invalid("input", "expected a string or an array of items")),
    }
    if let Some(tools) = &body.tools {
        let mut own = Vec::new();
        convert_tools(target, "tools", tools, names, &mut own)?;
        // The request's own tools first, as the client listed them.
        own.append(&mut out.tools);
        out.tools = own;
    }
    for (k, v) in &body.params {
        let v: &'a RawValue = v;
        if is_null(v) {
            continue;
        }
        match &**k {
            "model" | "stream" => {}
            "instructions" => {
                let text =
                    t::raw_str(v).ok_or_else(|| invalid("instructions", "expected a string"))?;
                if !text.is_empty() {
                    out.system.insert(0, Text::plain(text));
                }
            }
            "max_output_tokens" => {
                out.max_tokens = Some(
                    serde_json::from_str::<u64>(v.get())
                        .ok()
                        .filter(|n| *n > 0)
                        .ok_or_else(|| {
                            invalid("max_output_tokens", "expected a positive integer")
                        })?,
                )
            }
            "temperature" => out.temperature = Some(v),
            "top_p" => out.top_p = Some(v),
            "parallel_tool_calls" => match v.get() {
                "true" => out.parallel_tool_calls = Some(true),
                "false" => out.parallel_tool_calls = Some(false),
                _ => return Err(invalid("parallel_tool_calls", "expected true or false")),
            },
            "tool_choice" => out.tool_choice = Some(tool_choice(v, names)?),
            "text" => {
                let bad = || {
                    invalid(
                        "text.format",
                        "expected type text, json_object or json_schema",
                    )
                };
                let text: TextIn<'a> = serde_json::from_str(v.get())
                    .map_err(|_| invalid("text", "expected an object"))?;
                out.response_format = match text.format {
                    Lax::Null => None,
                    Lax::Bad => return Err(bad()),
                    Lax::Ok(f) => Some(ResponseFormat {
                        param: "text.format",
                        kind: match f.kind.as_str() {
                            Some("text") => JsonMode::Text,
                            Some("json_object") => JsonMode::JsonObject,
                            Some("json_schema") => JsonMode::JsonSchema {
                                name: f.name.cow(),
                                schema: f.schema.0,
                                strict: f.strict,
                            },
                            _ => return Err(bad()),
                        },
                    }),
                };
            }
            "reasoning" => {
                let r: ReasoningIn<'a> = serde_json::from_str(v.get())
                    .map_err(|_| invalid("reasoning", "expected an object"))?;
                out.reasoning = r.effort.cow().map(|effort| Reasoning {
                    param: "reasoning",
                    effort: Some(effort),
                    budget: None,
                });
            }
            "user" => {
                out.user = Some(Param {
                    name: "user",
                    value: v,
                })
            }
            k if IGNORED.contains(&k) => {}
            _ if raw_is_default(k, v) => {}
            _ => out.unsupported.push(k.to_string()),
        }
    }
    Ok(out)
}

/// call_id → the called tool's upstream name, from the calls seen so far (Gemini
/// matches results to calls by name).
#[derive(Default)]
struct Calls<'a> {
    names: Vec<(Cow<'a, str>, Cow<'a, str>)>,
}

impl<'a> Calls<'a> {
    fn name_of(&self, id: &str) -> Option<Cow<'a, str>> {
        self.names
            .iter()
            .rev()
            .find(|(k, _)| *k == id)
            .map(|(_, n)| n.clone())
    }
}

/// A tool's upstream name, borrowed from the body when it is the client's own.
fn upstream_name<'a>(names: &ToolNames, namespace: &LStr<'a>, name: Cow<'a, str>) -> Cow<'a, str> {
    match names.upstream(namespace.as_str(), &name) {
        Cow::Borrowed(f) if f == name => name,
        f => Cow::Owned(f.into_owned()),
    }
}

/// Appends `block` to the last message when it has `role`, else starts a message.
fn push<'a>(out: &mut hub::Request<'a>, role: Role, block: Block<'a>) {
    match out.messages.last_mut() {
        Some(m) if m.role == role => m.content.push(block),
        _ => out.messages.push(Message {
            role,
            content: vec![block],
        }),
    }
}

fn convert_items<'a>(
    items: &[Lax<ItemIn<'a>>],
    history: bool,
    target: &Target<'_>,
    names: &ToolNames,
    calls: &mut Calls<'a>,
    out: &mut hub::Request<'a>,
) -> Result<(), ApiError> {
    out.messages.reserve(items.len());
    for (i, item) in items.iter().enumerate() {
        let param = |f: &str| {
            if history {
                format!("previous_response_id (stored item {i}{f})")
            } else {
                format!("input[{i}]{f}")
            }
        };
        let item = item.object(|| param(""))?;
        match item.kind.as_str().unwrap_or("message") {
            "message" => {
                let role = match item.role.as_str() {
                    Some("system" | "developer") => {
                        let text = parts_text(&item.content, &param(".content"))?;
                        if !text.is_empty() {
                            out.system.push(Text::plain(text));
                        }
                        continue;
                    }
                    Some("user") => Role::User,
                    Some("assistant") => Role::Assistant,
                    _ => {
                        return Err(invalid(
                            param(".role"),
                            "expected user, assistant, system or developer",
                        ))
                    }
                };
                for b in content_blocks(&item.content, &param(".content"), target)? {
                    push(out, role, b);
                }
            }
            kind @ ("function_call" | "custom_tool_call") => {
                let (Some(id), Some(name)) = (item.call_id.cow(), item.name.cow()) else {
                    return Err(invalid(
                        param(""),
                        format_args!("a {kind} item needs call_id and name"),
                    ));
                };
                let name = upstream_name(names, &item.namespace, name);
                let input = if kind == "custom_tool_call" {
                    let Some(text) = item.input.as_str() else {
                        return Err(invalid(param(".input"), "expected a string"));
                    };
                    #[derive(serde::Serialize)]
                    struct Input<'s> {
                        input: &'s str,
                    }
                    serde_json::value::to_raw_value(&Input { input: text })
                        .map_err(|e| invalid(param(".input"), e))?
                } else {
                    raw_arguments(item.arguments).map_err(|e| invalid(param(".arguments"), e))?
                };
                calls.names.push((id.clone(), name.clone()));
                push(
                    out,
                    Role::Assistant,
                    Block::ToolCall(ToolCall {
                        id,
                        name,
                        input: Cow::Owned(input),
                    }),
                );
            }
            kind @ ("function_call_output" | "custom_tool_call_output") => {
                let Some(id) = item.call_id.cow() else {
                    return Err(invalid(param(".call_id"), "missing"));
                };
                let name = calls.name_of(&id);
                if target.needs_tool_names() && name.is_none() {
                    return Err(invalid(
                        param(".call_id"),
                        format_args!(
                            "does not match a {} item before it ({} needs the function's name)",
                            kind.trim_end_matches("_output"),
                            target.name()
                        ),
                    ));
                }
                let content = content_blocks(&item.output, &param(".output"), target)?;
                push(
                    out,
                    Role::User,
                    Block::ToolResult(ToolResult {
                        id,
                        name,
                        content: if content.is_empty() {
                            vec![Block::Text(Text::plain(Cow::Borrowed("")))]
                        } else {
                            content
                        },
                        is_error: false,
                    }),
                );
            }
            // Earlier reasoning only means something to the model that wrote it; tools
            // are the current request's (an earlier request's are not carried over).
            "reasoning" | "additional_tools" => {}
            "item_reference" => {
                return Err(invalid(
                    param(""),
                    "item references are not supported: send the items themselves, or \
                     continue a stored response with previous_response_id",
                ))
            }
            other => {
                return Err(invalid(
                    param(".type"),
                    format_args!("input items of type {other:?} are not supported"),
                ))
            }
        }
    }
    Ok(())
}

/// The text of a string-or-parts content (text parts only).
fn parts_text<'a>(
    content: &StrOrList<'a, Lax<PartIn<'a>>>,
    param: &str,
) -> Result<Cow<'a, str>, ApiError> {
    match content {
        StrOrList::Null => Ok(Cow::Borrowed("")),
        StrOrList::Str(s) => Ok(s.clone()),
        StrOrList::List(parts) => {
            let mut s = String::new();
            for (j, p) in parts.iter().enumerate() {
                let p = p.object(|| format!("{param}[{j}]"))?;
                match p.text.as_str() {
                    Some(text) => s.push_str(text),
                    None => {
                        return Err(invalid(
                            format!("{param}[{j}]"),
                            "only text parts are allowed here",
                        ))
                    }
                }
            }
            Ok(Cow::Owned(s))
        }
        StrOrList::Bad => Err(invalid(param, "expected a string or an array of parts")),
    }
}

/// Message content (or a function call's output) as text and image blocks.
fn content_blocks<'a>(
    content: &StrOrList<'a, Lax<PartIn<'a>>>,
    param: &str,
    target: &Target<'_>,
) -> Result<Vec<Block<'a>>, ApiError> {
    let parts = match content {
        StrOrList::Null => return Ok(Vec::new()),
        StrOrList::Str(s) if s.is_empty() => return Ok(Vec::new()),
        StrOrList::Str(s) => return Ok(vec![Block::Text(Text::plain(s.clone()))]),
        StrOrList::List(p) => p,
        StrOrList::Bad => return Err(invalid(param, "expected a string or an array of parts")),
    };
    let mut out = Vec::with_capacity(parts.len());
    for (j, p) in parts.iter().enumerate() {
        let param = || format!("{param}[{j}]");
        let p = p.object(param)?;
        match p.kind.as_str().unwrap_or("input_text") {
            "input_text" | "output_text" | "text" | "summary_text" => match p.text.cow() {
                Some(t) if t.is_empty() => {}
                Some(text) => out.push(Block::Text(Text::plain(text))),
                None => return Err(invalid(param(), "a text part needs a string 'text'")),
            },
            "refusal" => {
                if let Some(text) = p.refusal.cow().filter(|t| !t.is_empty()) {
                    out.push(Block::Text(Text::plain(text)));
                }
            }
            "input_image" => {
                let Some(url) = p.image_url.cow() else {
                    return Err(invalid(
                        param(),
                        "an input_image part needs image_url (file_id needs stored files, \
                         which llmgw does not keep)",
                    ));
                };
                if parse_data_url(&url).is_none() && !target.accepts_image_url(&url) {
                    return Err(invalid(param(), target.image_url_rule()));
                }
                out.push(Block::Image(Image {
                    source: ImageSource::Url(url),
                    cache_control: None,
                }));
            }
            other => {
                return Err(invalid(
                    param(),
                    format_args!(
                        "content parts of type {other:?} are not supported by {}",
                        target.name()
                    ),
                ))
            }
        }
    }
    Ok(out)
}
