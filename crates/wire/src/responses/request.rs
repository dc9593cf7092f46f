//! OpenAI Responses requests decoded into the hub (a Responses client in front of a
//! deployment that does not serve `/responses` itself).
//!
//! llmgw keeps no state: `store: true`, `previous_response_id`, `conversation` and item
//! references are refused with a clear 400 ([`check_stateless`], for every deployment,
//! passed through or not).

use crate::hub::{
    self, Block, Image, ImageSource, JsonMode, Message, Param, Reasoning, ResponseFormat, Role,
    Target, Text, Tool, ToolCall, ToolChoice, ToolResult,
};
use crate::request::ClientRequest;
use crate::translate::{
    self as t, invalid, is_null, parse_data_url, raw_arguments, raw_is_default, Body, BodyKeys,
    LBool, LStr, Lax, LaxList, MaybeRaw, StrOrList,
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
    arguments: MaybeRaw<'a>,
    #[serde(default, borrow)]
    output: StrOrList<'a, Lax<PartIn<'a>>>,
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

#[derive(Deserialize, Default)]
pub struct ToolIn<'a> {
    #[serde(rename = "type", default, borrow)]
    kind: LStr<'a>,
    #[serde(default, borrow)]
    name: LStr<'a>,
    #[serde(default, borrow)]
    description: LStr<'a>,
    #[serde(default, borrow)]
    parameters: MaybeRaw<'a>,
    #[serde(default)]
    strict: LBool,
}

#[derive(Deserialize)]
struct ToolChoiceIn<'a> {
    #[serde(rename = "type", default, borrow)]
    kind: LStr<'a>,
    #[serde(default, borrow)]
    name: LStr<'a>,
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

/// Parameters that change nothing about the answer (or are checked by
/// [`check_stateless`]): left out when translating.
const IGNORED: [&str; 10] = [
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
];

/// The stateful parts of the API, which llmgw does not offer.
#[derive(Deserialize)]
struct Stateful<'a> {
    #[serde(default)]
    store: LBool,
    #[serde(default, borrow)]
    previous_response_id: MaybeRaw<'a>,
    #[serde(default, borrow)]
    conversation: MaybeRaw<'a>,
    #[serde(default)]
    background: LBool,
    #[serde(default, borrow)]
    prompt: MaybeRaw<'a>,
}

/// Refuses what needs server-side state: llmgw's Responses API is stateless.
pub fn check_stateless(body: &[u8]) -> Result<(), ApiError> {
    let s: Stateful<'_> = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("request body is not valid JSON: {e}")))?;
    let stateless = |param: &str, what: &str| {
        ApiError::bad_request(format!(
            "{what}: llmgw's /v1/responses is stateless and keeps no responses; send the \
             whole conversation in 'input' and set store to false (or leave it out)"
        ))
        .with_param(param)
        .with_code("unsupported_parameter")
    };
    let set = |v: MaybeRaw<'_>| v.0.is_some_and(|r| !is_null(r));
    match s.store {
        LBool::Is(true) => return Err(stateless("store", "store: true is not supported")),
        LBool::Bad => return Err(invalid("store", "expected true or false")),
        _ => {}
    }
    if set(s.previous_response_id) {
        return Err(stateless(
            "previous_response_id",
            "previous_response_id is not supported",
        ));
    }
    if set(s.conversation) {
        return Err(stateless("conversation", "conversation is not supported"));
    }
    if s.background == LBool::Is(true) {
        return Err(stateless("background", "background: true is not supported"));
    }
    if set(s.prompt) {
        return Err(stateless(
            "prompt",
            "stored prompts ('prompt') are not supported",
        ));
    }
    Ok(())
}

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
    match body.list.take() {
        None => return Err(invalid("input", "this parameter is required")),
        Some(StrOrList::Str(s)) => out.messages.push(Message {
            role: Role::User,
            content: vec![Block::Text(Text::plain(s))],
        }),
        Some(StrOrList::List(items)) => convert_items(&items, target, &mut out)?,
        Some(_) => return Err(invalid("input", "expected a string or an array of items")),
    }
    if let Some(tools) = &body.tools {
        out.tools = convert_tools(target, tools)?;
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
            "tool_choice" => out.tool_choice = Some(tool_choice(v)?),
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

fn tool_choice(v: &RawValue) -> Result<ToolChoice<'_>, ApiError> {
    let bad = || {
        invalid(
            "tool_choice",
            "expected \"auto\", \"none\", \"required\" or {\"type\": \"function\", \"name\": ...}",
        )
    };
    if let Some(s) = t::raw_str(v) {
        return match &*s {
            "auto" => Ok(ToolChoice::Auto),
            "none" => Ok(ToolChoice::None),
            "required" => Ok(ToolChoice::Required),
            _ => Err(bad()),
        };
    }
    let c: ToolChoiceIn<'_> = serde_json::from_str(v.get()).map_err(|_| bad())?;
    match (c.kind.as_str(), c.name.cow()) {
        (Some("function"), Some(name)) => Ok(ToolChoice::Tool(name)),
        _ => Err(bad()),
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
    target: &Target<'_>,
    out: &mut hub::Request<'a>,
) -> Result<(), ApiError> {
    out.messages.reserve(items.len());
    // call_id → function name, from the calls seen so far.
    let mut names: Vec<(Cow<'a, str>, Cow<'a, str>)> = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let param = |f: &str| format!("input[{i}]{f}");
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
            "function_call" => {
                let (Some(id), Some(name)) = (item.call_id.cow(), item.name.cow()) else {
                    return Err(invalid(
                        param(""),
                        "a function_call item needs call_id and name",
                    ));
                };
                let input =
                    raw_arguments(item.arguments).map_err(|e| invalid(param(".arguments"), e))?;
                names.push((id.clone(), name.clone()));
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
            "function_call_output" => {
                let Some(id) = item.call_id.cow() else {
                    return Err(invalid(param(".call_id"), "missing"));
                };
                let name = names
                    .iter()
                    .rev()
                    .find(|(k, _)| *k == id)
                    .map(|(_, n)| n.clone());
                if target.needs_tool_names() && name.is_none() {
                    return Err(invalid(
                        param(".call_id"),
                        format_args!(
                            "does not match a function_call item before it ({} needs the \
                             function's name)",
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
            // Earlier reasoning only means something to the model that wrote it.
            "reasoning" => {}
            "item_reference" => {
                return Err(invalid(
                    param(""),
                    "item references need stored responses; llmgw's /v1/responses is \
                     stateless: send the items themselves",
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

fn convert_tools<'a>(
    target: &Target<'_>,
    tools: &LaxList<Lax<ToolIn<'a>>>,
) -> Result<Vec<Tool<'a>>, ApiError> {
    let tools = match tools {
        LaxList::List(t) => t,
        LaxList::Null => return Ok(Vec::new()),
        LaxList::Bad => return Err(invalid("tools", "expected an array")),
    };
    let chat = target.format == hub::Format::OpenAiChat;
    let mut out = Vec::with_capacity(tools.len());
    for (i, tool) in tools.iter().enumerate() {
        let tool = tool.object(|| format!("tools[{i}]"))?;
        match tool.kind.as_str() {
            Some("function") => {}
            // Hosted tools (web search, file search, code interpreter, …) run at OpenAI.
            _ => {
                t::unsupported(target.dep, target.name(), &format!("tools[{i}].type"))?;
                continue;
            }
        }
        let Some(name) = tool.name.cow() else {
            return Err(invalid(format!("tools[{i}].name"), "missing"));
        };
        let strict = match tool.strict {
            LBool::Is(s) => s,
            LBool::None => false,
            LBool::Bad => {
                return Err(invalid(
                    format!("tools[{i}].strict"),
                    "expected true or false",
                ))
            }
        };
        if strict && !chat {
            t::unsupported(target.dep, target.name(), &format!("tools[{i}].strict"))?;
        }
        out.push(Tool {
            name,
            description: tool.description.cow(),
            parameters: tool.parameters.0,
            strict: strict && chat,
            cache_control: None,
        });
    }
    Ok(out)
}
