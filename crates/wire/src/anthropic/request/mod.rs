//! Anthropic Messages requests: encoded from the hub (any client in front of an Anthropic
//! deployment) and decoded into it (an Anthropic client, such as Claude Code, in front of
//! any other deployment).
//!
//! Encoding: system pieces become the top-level `system`; consecutive turns of the same
//! role are merged (Anthropic requires alternation); `max_tokens` is always sent.

mod out;
pub use out::*;

use super::DEFAULT_MAX_TOKENS;
use crate::hub::{
    self, set_params, Block, Image, ImageSource, JsonMode, Message, Param, Reasoning, Role, Target,
    Text, Tool, ToolCall, ToolChoice, ToolResult,
};
use crate::request::ClientRequest;
use crate::translate::{
    self as t, invalid, is_null, parse_data_url, raw_is_default, Body, BodyKeys, LBool, LStr, Lax,
    LaxList, MaybeRaw, StrOrList,
};
use llmgw_core::error::ApiError;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use std::borrow::Cow;

// ---------------------------------------------------------------------------------------
// Decode
// ---------------------------------------------------------------------------------------

/// Messages' keys.
pub struct MessagesKeys;

impl BodyKeys for MessagesKeys {
    const LIST: &'static str = "messages";
}

/// A Messages body: `messages` and `tools` typed.
pub type MessagesBody<'a> =
    Body<'a, MessagesKeys, LaxList<Lax<MsgIn<'a>>>, LaxList<Lax<ToolIn<'a>>>>;

#[derive(Deserialize, Default)]
pub struct MsgIn<'a> {
    #[serde(default, borrow)]
    role: LStr<'a>,
    #[serde(default, borrow)]
    content: StrOrList<'a, Lax<BlockIn<'a>>>,
}

/// Any content block, with the fields of every type it may be.
#[derive(Deserialize, Default)]
pub struct BlockIn<'a> {
    #[serde(rename = "type", default, borrow)]
    kind: LStr<'a>,
    #[serde(default, borrow)]
    text: LStr<'a>,
    #[serde(default, borrow)]
    cache_control: MaybeRaw<'a>,
    #[serde(default, borrow)]
    source: Lax<SourceIn<'a>>,
    #[serde(default, borrow)]
    id: LStr<'a>,
    #[serde(default, borrow)]
    name: LStr<'a>,
    #[serde(default, borrow)]
    input: MaybeRaw<'a>,
    #[serde(default, borrow)]
    tool_use_id: LStr<'a>,
    #[serde(default, borrow)]
    content: StrOrList<'a, Lax<BlockIn<'a>>>,
    #[serde(default)]
    is_error: LBool,
}

#[derive(Deserialize, Default)]
struct SourceIn<'a> {
    #[serde(rename = "type", default, borrow)]
    kind: LStr<'a>,
    #[serde(default, borrow)]
    media_type: LStr<'a>,
    #[serde(default, borrow)]
    data: LStr<'a>,
    #[serde(default, borrow)]
    url: LStr<'a>,
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
    input_schema: MaybeRaw<'a>,
    #[serde(default, borrow)]
    cache_control: MaybeRaw<'a>,
}

#[derive(Deserialize)]
struct ToolChoiceIn<'a> {
    #[serde(rename = "type", default, borrow)]
    kind: LStr<'a>,
    #[serde(default, borrow)]
    name: LStr<'a>,
    #[serde(default)]
    disable_parallel_tool_use: LBool,
}

#[derive(Deserialize)]
struct ThinkingIn<'a> {
    #[serde(rename = "type", default, borrow)]
    kind: LStr<'a>,
    #[serde(default)]
    budget_tokens: Option<u64>,
}

#[derive(Deserialize)]
struct OutputConfigIn<'a> {
    #[serde(default, borrow)]
    format: Lax<FormatIn<'a>>,
}

#[derive(Deserialize, Default)]
struct FormatIn<'a> {
    #[serde(rename = "type", default, borrow)]
    kind: LStr<'a>,
    #[serde(default, borrow)]
    schema: MaybeRaw<'a>,
}

#[derive(Deserialize)]
struct MetadataIn<'a> {
    #[serde(default, borrow)]
    user_id: MaybeRaw<'a>,
}

/// Parameters that only steer Anthropic's own service (or Claude's effort) and have no
/// meaning elsewhere: left out when translating, so that Claude Code works against any
/// model group.
const ANTHROPIC_ONLY: [&str; 9] = [
    "service_tier",
    "context_management",
    "container",
    "cache_control",
    "inference_geo",
    "speed",
    "diagnostics",
    "user_profile_id",
    "workspace_id",
];

/// Reads a Messages body into the hub form, checking it for `target`.
pub fn decode<'a>(
    req: &'a ClientRequest,
    target: &Target<'_>,
) -> Result<hub::Request<'a>, ApiError> {
    let mut body = MessagesBody::parse(req)?;
    let messages = body.required_list("messages")?;
    let mut out = hub::Request {
        stream: req.stream,
        ..hub::Request::default()
    };
    convert_messages(&messages, target, &mut out)?;
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
            "max_tokens" => {
                out.max_tokens = Some(
                    serde_json::from_str::<u64>(v.get())
                        .ok()
                        .filter(|n| *n > 0)
                        .ok_or_else(|| invalid("max_tokens", "expected a positive integer"))?,
                )
            }
            "system" => out.system = system(v)?,
            "temperature" => out.temperature = Some(v),
            "top_p" => out.top_p = Some(v),
            "top_k" => out.top_k = Some(v),
            "stop_sequences" => out.stop = stop_sequences(v)?,
            "metadata" => {
                let m: MetadataIn<'a> = serde_json::from_str(v.get())
                    .map_err(|_| invalid("metadata", "expected an object"))?;
                out.user = m.user_id.0.filter(|u| !is_null(u)).map(|value| Param {
                    name: "metadata.user_id",
                    value,
                });
            }
            "tool_choice" => {
                let bad = || {
                    invalid(
                        "tool_choice",
                        "expected {\"type\": \"auto\" | \"any\" | \"none\"} or {\"type\": \"tool\", \"name\": ...}",
                    )
                };
                let c: ToolChoiceIn<'a> = serde_json::from_str(v.get()).map_err(|_| bad())?;
                out.tool_choice = Some(match (c.kind.as_str(), c.name.cow()) {
                    (Some("auto"), _) => ToolChoice::Auto,
                    (Some("any"), _) => ToolChoice::Required,
                    (Some("none"), _) => ToolChoice::None,
                    (Some("tool"), Some(name)) => ToolChoice::Tool(name),
                    _ => return Err(bad()),
                });
                match c.disable_parallel_tool_use {
                    LBool::Is(true) => out.parallel_tool_calls = Some(false),
                    LBool::Bad => {
                        return Err(invalid(
                            "tool_choice.disable_parallel_tool_use",
                            "expected true or false",
                        ))
                    }
                    _ => {}
                }
            }
            "thinking" => {
                let bad = || {
                    invalid(
                        "thinking",
                        "expected {\"type\": \"enabled\", \"budget_tokens\": N}, or type \
                         adaptive, between_tools or disabled",
                    )
                };
                let th: ThinkingIn<'a> = serde_json::from_str(v.get()).map_err(|_| bad())?;
                match th.kind.as_str() {
                    Some("enabled") => {
                        out.reasoning = Some(Reasoning {
                            param: "thinking",
                            effort: None,
                            budget: Some(th.budget_tokens.ok_or_else(bad)?),
                        })
                    }
                    // Thinking as the model sees fit: nothing to ask of another model.
                    Some("adaptive" | "between_tools" | "disabled") => {}
                    _ => return Err(bad()),
                }
            }
            "output_config" => {
                // `effort` steers Claude only; a JSON schema `format` is structured output.
                let c: OutputConfigIn<'a> = serde_json::from_str(v.get())
                    .map_err(|_| invalid("output_config", "expected an object"))?;
                match c.format {
                    Lax::Null => {}
                    Lax::Ok(FormatIn {
                        kind,
                        schema: MaybeRaw(Some(schema)),
                    }) if kind.as_str() == Some("json_schema") => {
                        out.response_format = Some(hub::ResponseFormat {
                            param: "output_config.format",
                            kind: JsonMode::JsonSchema {
                                name: None,
                                schema: Some(schema),
                                strict: Some(true),
                            },
                        })
                    }
                    _ => {
                        return Err(invalid(
                            "output_config.format",
                            "expected {\"type\": \"json_schema\", \"schema\": {...}}",
                        ))
                    }
                }
            }
            k if ANTHROPIC_ONLY.contains(&k) => {}
            _ if raw_is_default(k, v) => {}
            _ => out.unsupported.push(k.to_string()),
        }
    }
    Ok(out)
}

/// `system`: a string or an array of text blocks.
fn system(v: &RawValue) -> Result<Vec<Text<'_>>, ApiError> {
    let s: StrOrList<'_, Lax<BlockIn<'_>>> = serde_json::from_str(v.get())
        .map_err(|_| invalid("system", "expected a string or an array of text blocks"))?;
    match s {
        StrOrList::Null => Ok(Vec::new()),
        StrOrList::Str(s) if s.is_empty() => Ok(Vec::new()),
        StrOrList::Str(s) => Ok(vec![Text::plain(s)]),
        StrOrList::List(blocks) => {
            let mut out = Vec::with_capacity(blocks.len());
            for (i, b) in blocks.iter().enumerate() {
                let b = b.object(|| format!("system[{i}]"))?;
                match (b.kind.as_str(), b.text.cow()) {
                    (Some("text") | None, Some(text)) => out.push(Text {
                        text,
                        cache_control: b.cache_control.0,
                    }),
                    _ => {
                        return Err(invalid(
                            format!("system[{i}]"),
                            "expected a text block with a string 'text'",
                        ))
                    }
                }
            }
            Ok(out)
        }
        StrOrList::Bad => Err(invalid(
            "system",
            "expected a string or an array of text blocks",
        )),
    }
}

/// `stop_sequences`: an array of strings, each kept as raw JSON.
fn stop_sequences(v: &RawValue) -> Result<Vec<&RawValue>, ApiError> {
    let bad = || invalid("stop_sequences", "expected an array of strings");
    let items: Vec<&RawValue> = serde_json::from_str(v.get()).map_err(|_| bad())?;
    if items.iter().all(|s| s.get().starts_with('"')) {
        Ok(items)
    } else {
        Err(bad())
    }
}

fn convert_messages<'a>(
    items: &[Lax<MsgIn<'a>>],
    target: &Target<'_>,
    out: &mut hub::Request<'a>,
) -> Result<(), ApiError> {
    out.messages.reserve(items.len());
    // tool_use id → name, from the assistant turns seen so far.
    let mut names: Vec<(Cow<'a, str>, Cow<'a, str>)> = Vec::new();
    for (i, msg) in items.iter().enumerate() {
        let msg = msg.object(|| format!("messages[{i}]"))?;
        let role = match msg.role.as_str() {
            Some("user") => Role::User,
            Some("assistant") => Role::Assistant,
            _ => {
                return Err(invalid(
                    format!("messages[{i}].role"),
                    "expected \"user\" or \"assistant\"",
                ))
            }
        };
        let param = format!("messages[{i}].content");
        let content = content_blocks(&msg.content, &param, role, target, &mut names)?;
        if !content.is_empty() {
            out.messages.push(Message { role, content });
        }
    }
    Ok(())
}

/// A message's (or a tool result's) content as hub blocks.
fn content_blocks<'a>(
    content: &StrOrList<'a, Lax<BlockIn<'a>>>,
    param: &str,
    role: Role,
    target: &Target<'_>,
    names: &mut Vec<(Cow<'a, str>, Cow<'a, str>)>,
) -> Result<Vec<Block<'a>>, ApiError> {
    let blocks = match content {
        StrOrList::Null => return Ok(Vec::new()),
        StrOrList::Str(s) if s.is_empty() => return Ok(Vec::new()),
        StrOrList::Str(s) => return Ok(vec![Block::Text(Text::plain(s.clone()))]),
        StrOrList::List(b) => b,
        StrOrList::Bad => {
            return Err(invalid(
                param,
                "expected a string or an array of content blocks",
            ))
        }
    };
    let mut out = Vec::with_capacity(blocks.len());
    for (j, b) in blocks.iter().enumerate() {
        let param = || format!("{param}[{j}]");
        let b = b.object(param)?;
        let kind = b.kind.as_str().unwrap_or("");
        match (kind, role) {
            ("text", _) => match b.text.cow() {
                Some(t) if t.is_empty() => {}
                Some(text) => out.push(Block::Text(Text {
                    text,
                    cache_control: b.cache_control.0,
                })),
                None => return Err(invalid(param(), "a text block needs a string 'text'")),
            },
            ("image", _) => out.push(Block::Image(image_in(b, &param(), target)?)),
            ("tool_use", Role::Assistant) => {
                let (Some(id), Some(name)) = (b.id.cow(), b.name.cow()) else {
                    return Err(invalid(param(), "a tool_use block needs an id and a name"));
                };
                let input = match b.input.0 {
                    None => Cow::Owned(hub::empty_object()),
                    Some(raw) if is_null(raw) => Cow::Owned(hub::empty_object()),
                    Some(raw) if t::is_object(raw) => Cow::Borrowed(raw),
                    Some(_) => return Err(invalid(param(), "'input' must be an object")),
                };
                names.push((id.clone(), name.clone()));
                out.push(Block::ToolCall(ToolCall { id, name, input }));
            }
            ("tool_result", Role::User) => {
                let Some(id) = b.tool_use_id.cow() else {
                    return Err(invalid(
                        param(),
                        "a tool_result block needs the tool_use_id it answers",
                    ));
                };
                let name = names
                    .iter()
                    .rev()
                    .find(|(k, _)| *k == id)
                    .map(|(_, n)| n.clone());
                if target.needs_tool_names() && name.is_none() {
                    return Err(invalid(
                        format!("{}.tool_use_id", param()),
                        format_args!(
                            "does not match a tool_use block of an earlier assistant message \
                             ({} needs the tool's name)",
                            target.name()
                        ),
                    ));
                }
                let content = content_blocks(
                    &b.content,
                    &format!("{}.content", param()),
                    Role::User,
                    target,
                    names,
                )?;
                if content
                    .iter()
                    .any(|c| !matches!(c, Block::Text(_) | Block::Image(_)))
                {
                    return Err(invalid(
                        param(),
                        "a tool result holds only text and image blocks",
                    ));
                }
                let is_error = match b.is_error {
                    LBool::Is(e) => e,
                    LBool::None => false,
                    LBool::Bad => {
                        return Err(invalid(
                            format!("{}.is_error", param()),
                            "expected true or false",
                        ))
                    }
                };
                out.push(Block::ToolResult(ToolResult {
                    id,
                    name,
                    content,
                    is_error,
                }));
            }
            // Earlier thinking only means something to Anthropic itself.
            ("thinking" | "redacted_thinking", Role::Assistant) => {}
            (kind, _) => {
                return Err(invalid(
                    param(),
                    format_args!(
                        "content blocks of type {kind:?} are not supported here (model \
                         group served by {})",
                        target.name()
                    ),
                ))
            }
        }
    }
    Ok(out)
}

fn image_in<'a>(b: &BlockIn<'a>, param: &str, target: &Target<'_>) -> Result<Image<'a>, ApiError> {
    let bad = |what: &str| invalid(param, what.to_string());
    let src = b
        .source
        .as_ref()
        .ok_or_else(|| bad("an image block needs a 'source' object"))?;
    let source = match src.kind.as_str() {
        Some("base64") => match (src.media_type.cow(), src.data.cow()) {
            (Some(media_type), Some(data)) => ImageSource::Base64 { media_type, data },
            _ => return Err(bad("a base64 image source needs 'media_type' and 'data'")),
        },
        Some("url") => match src.url.cow() {
            Some(url) if target.accepts_image_url(&url) => ImageSource::Url(url),
            Some(_) => return Err(bad(target.image_url_rule())),
            None => return Err(bad("a url image source needs 'url'")),
        },
        _ => {
            return Err(bad(
                "image sources other than base64 and url are not supported here",
            ))
        }
    };
    Ok(Image {
        source,
        cache_control: b.cache_control.0,
    })
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
    let mut out = Vec::with_capacity(tools.len());
    for (i, tool) in tools.iter().enumerate() {
        let tool = tool.object(|| format!("tools[{i}]"))?;
        match tool.kind.as_str() {
            None | Some("custom") => {}
            // Anthropic's server tools (web search, code execution, …) run at Anthropic.
            Some(_) => {
                t::unsupported(target.dep, target.name(), &format!("tools[{i}].type"))?;
                continue;
            }
        }
        let Some(name) = tool.name.cow() else {
            return Err(invalid(format!("tools[{i}].name"), "missing"));
        };
        out.push(Tool {
            name,
            description: tool.description.cow(),
            parameters: tool.input_schema.0,
            strict: false,
            cache_control: tool.cache_control.0,
        });
    }
    Ok(out)
}
