//! OpenAI chat completions requests: decoded into the hub (a client speaking OpenAI to a
//! non-OpenAI deployment) and encoded from it (an Anthropic or Responses client in front
//! of an OpenAI-compatible deployment).

use crate::hub::{
    self, Block, Image, ImageSource, JsonMode, Message, Param, Reasoning, ResponseFormat, Role,
    Target, Text, Tool, ToolCall, ToolChoice, ToolResult,
};
use crate::request::ClientRequest;
use crate::translate::{
    self as t, content_str, invalid, is_null, parse_data_url, raw_is_default, raw_max_tokens,
    raw_stop_list, ChatBody, Content, InMessage, InTool, Lax, LaxList, MaybeRaw, Part,
    ToolChoiceIn,
};
use crate::upstream::Upstream;
use llmgw_core::error::ApiError;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use std::borrow::Cow;

// ---------------------------------------------------------------------------------------
// Decode
// ---------------------------------------------------------------------------------------

/// Reads an OpenAI chat completions body into the hub form, checking it for `target`.
pub fn decode<'a>(
    req: &'a ClientRequest,
    target: &Target<'_>,
) -> Result<hub::Request<'a>, ApiError> {
    let mut body = ChatBody::parse(req)?;
    let messages = body.messages()?;
    let mut out = hub::Request {
        stream: req.stream,
        include_usage: req.include_usage,
        ..hub::Request::default()
    };
    convert_messages(&messages, target, &mut out)?;
    out.max_tokens = raw_max_tokens(&mut body)?;
    if let Some(tools) = &body.tools {
        out.tools = convert_tools(target, tools)?;
    }
    for (k, v) in &body.params {
        let v: &'a RawValue = v;
        if is_null(v) {
            continue;
        }
        let param = |name: &'static str| Some(Param { name, value: v });
        match &**k {
            "model" | "stream" | "stream_options" => {}
            "temperature" => out.temperature = Some(v),
            "top_p" => out.top_p = Some(v),
            "top_k" => out.top_k = Some(v),
            "stop" => out.stop = raw_stop_list(v)?,
            "tool_choice" => {
                out.tool_choice = t::tool_choice(v)?.map(|c| match c {
                    ToolChoiceIn::Auto => ToolChoice::Auto,
                    ToolChoiceIn::None => ToolChoice::None,
                    ToolChoiceIn::Required => ToolChoice::Required,
                    ToolChoiceIn::Function(n) => ToolChoice::Tool(n),
                })
            }
            "parallel_tool_calls" => match v.get() {
                "true" => out.parallel_tool_calls = Some(true),
                "false" => out.parallel_tool_calls = Some(false),
                _ => return Err(invalid("parallel_tool_calls", "expected true or false")),
            },
            "user" => out.user = param("user"),
            "n" if !raw_is_default(k, v) => out.n = param("n"),
            "seed" => out.seed = param("seed"),
            "presence_penalty" if !raw_is_default(k, v) => {
                out.presence_penalty = param("presence_penalty")
            }
            "frequency_penalty" if !raw_is_default(k, v) => {
                out.frequency_penalty = param("frequency_penalty")
            }
            "response_format" => out.response_format = Some(response_format(v)?),
            "reasoning_effort" => {
                out.reasoning = Some(Reasoning {
                    param: "reasoning_effort",
                    effort: Some(t::raw_str(v).ok_or_else(|| {
                        invalid("reasoning_effort", "expected a string such as \"low\"")
                    })?),
                    budget: None,
                })
            }
            _ if raw_is_default(k, v) => {}
            _ => out.unsupported.push(k.to_string()),
        }
    }
    Ok(out)
}

#[derive(Deserialize)]
struct ResponseFormatIn<'a> {
    #[serde(rename = "type", default, borrow)]
    kind: t::LStr<'a>,
    #[serde(default, borrow)]
    json_schema: Lax<JsonSchemaIn<'a>>,
}

#[derive(Deserialize)]
struct JsonSchemaIn<'a> {
    #[serde(default, borrow)]
    name: t::LStr<'a>,
    #[serde(default, borrow)]
    schema: MaybeRaw<'a>,
    #[serde(default)]
    strict: Option<bool>,
}

/// `response_format`: text, json_object or json_schema.
fn response_format<'a>(v: &'a RawValue) -> Result<ResponseFormat<'a>, ApiError> {
    if !t::is_object(v) {
        return Err(invalid("response_format", "expected an object"));
    }
    let bad = || {
        invalid(
            "response_format",
            "expected type text, json_object or json_schema",
        )
    };
    let o: ResponseFormatIn<'a> = serde_json::from_str(v.get()).map_err(|_| bad())?;
    let kind = match o.kind.as_str() {
        Some("text") => JsonMode::Text,
        Some("json_object") => JsonMode::JsonObject,
        Some("json_schema") => match o.json_schema {
            Lax::Ok(s) => JsonMode::JsonSchema {
                name: s.name.cow(),
                schema: s.schema.0,
                strict: s.strict,
            },
            _ => JsonMode::JsonSchema {
                name: None,
                schema: None,
                strict: None,
            },
        },
        _ => return Err(bad()),
    };
    Ok(ResponseFormat {
        param: "response_format",
        kind,
    })
}

/// OpenAI messages → system text and turns (empty turns left out).
fn convert_messages<'a>(
    items: &[Lax<InMessage<'a>>],
    target: &Target<'_>,
    out: &mut hub::Request<'a>,
) -> Result<(), ApiError> {
    out.messages.reserve(items.len());
    // tool_call id → function name, from the assistant turns seen so far.
    let mut names: Vec<(Cow<'a, str>, Cow<'a, str>)> = Vec::new();
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
        let (role, blocks) = match role {
            "system" | "developer" => {
                let text = content_str(content, &param())?;
                if !text.is_empty() {
                    out.system.push(Text::plain(text));
                }
                continue;
            }
            "user" => (Role::User, user_blocks(content, i, target)?),
            "assistant" => {
                let mut blocks = text_blocks(content, &param())?;
                for c in t::tool_calls(&msg.tool_calls, i, target.needs_tool_ids())? {
                    let id = c.id.unwrap_or_default();
                    if !id.is_empty() {
                        names.push((id.clone(), c.name.clone()));
                    }
                    blocks.push(Block::ToolCall(ToolCall {
                        id,
                        name: c.name,
                        input: Cow::Owned(c.args),
                    }));
                }
                (Role::Assistant, blocks)
            }
            "tool" => {
                let id = msg.tool_call_id.cow();
                if target.needs_tool_ids() && id.is_none() {
                    return Err(invalid(
                        format!("messages[{i}].tool_call_id"),
                        "a tool message needs the tool_call_id it answers",
                    ));
                }
                let name = id
                    .as_ref()
                    .and_then(|id| names.iter().rev().find(|(k, _)| k == id))
                    .map(|(_, n)| n.clone())
                    .or_else(|| msg.name.cow());
                if target.needs_tool_names() && name.is_none() {
                    return Err(invalid(
                        format!("messages[{i}].tool_call_id"),
                        format_args!(
                            "does not match a tool call of an earlier assistant message \
                             ({} needs the function name)",
                            target.name()
                        ),
                    ));
                }
                let text = content_str(content, &param())?;
                let block = Block::ToolResult(ToolResult {
                    id: id.unwrap_or_default(),
                    name,
                    content: vec![Block::Text(Text::plain(text))],
                    is_error: false,
                });
                (Role::User, vec![block])
            }
            other => {
                return Err(invalid(
                    format!("messages[{i}].role"),
                    format_args!(
                        "role {other:?} is not supported (use system, user, assistant or tool)"
                    ),
                ))
            }
        };
        if !blocks.is_empty() {
            out.messages.push(Message {
                role,
                content: blocks,
            });
        }
    }
    Ok(())
}

fn text_block<'a>(text: Cow<'a, str>, cache_control: MaybeRaw<'a>) -> Block<'a> {
    Block::Text(Text {
        text,
        cache_control: cache_control.0,
    })
}

/// Assistant (or other text-only) content as text blocks; empty text is left out.
fn text_blocks<'a>(content: &Content<'a>, param: &str) -> Result<Vec<Block<'a>>, ApiError> {
    match content {
        Content::Null => Ok(Vec::new()),
        Content::Text(s) if s.is_empty() => Ok(Vec::new()),
        Content::Text(s) => Ok(vec![text_block(s.clone(), MaybeRaw(None))]),
        Content::Parts(parts) => {
            let mut out = Vec::with_capacity(parts.len());
            for (j, p) in parts.iter().enumerate() {
                let Part::Obj(p) = p else {
                    return Err(invalid(format!("{param}[{j}]"), "expected an object"));
                };
                let Some(text) = p.text.cow().or_else(|| p.refusal.cow()) else {
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
fn user_blocks<'a>(
    content: &Content<'a>,
    i: usize,
    target: &Target<'_>,
) -> Result<Vec<Block<'a>>, ApiError> {
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
            "text" => match p.text.cow() {
                Some(t) if t.is_empty() => {}
                Some(t) => out.push(text_block(t, p.cache_control)),
                None => return Err(invalid(param(), "a text part needs a string 'text'")),
            },
            "image_url" => {
                let url = p
                    .image_url
                    .0
                    .clone()
                    .ok_or_else(|| invalid(param(), "an image_url part needs image_url.url"))?;
                if parse_data_url(&url).is_none() && !target.accepts_image_url(&url) {
                    return Err(invalid(param(), target.image_url_rule()));
                }
                out.push(Block::Image(Image {
                    source: ImageSource::Url(url),
                    cache_control: p.cache_control.0,
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

/// The request's `function` tools, checked: each entry must be an object with a named
/// `function`; other tool types and `strict` are unsupported (dropped or refused per
/// `drop_params`).
fn convert_tools<'a>(
    target: &Target<'_>,
    tools: &LaxList<Lax<InTool<'a>>>,
) -> Result<Vec<Tool<'a>>, ApiError> {
    let tools = match tools {
        LaxList::List(t) => t,
        LaxList::Null => return Ok(Vec::new()),
        LaxList::Bad => return Err(invalid("tools", "expected an array")),
    };
    let (dep, provider) = (target.dep, target.name());
    let mut out = Vec::with_capacity(tools.len());
    for (i, tool) in tools.iter().enumerate() {
        let Some(tool) = tool.as_ref() else {
            return Err(invalid(format!("tools[{i}]"), "expected an object"));
        };
        match tool.kind.as_str() {
            Some("function") | None => {}
            Some(_) => {
                t::unsupported(dep, provider, &format!("tools[{i}].type"))?;
                continue;
            }
        }
        let Some(f) = tool.function.as_ref() else {
            return Err(invalid(format!("tools[{i}].function"), "missing"));
        };
        let Some(name) = f.name.cow() else {
            return Err(invalid(format!("tools[{i}].function.name"), "missing"));
        };
        if f.strict.0.is_some_and(|s| s.get() == "true") {
            t::unsupported(dep, provider, &format!("tools[{i}].function.strict"))?;
        }
        out.push(Tool {
            name,
            description: f.description.cow(),
            parameters: f.parameters.0,
            strict: false,
            cache_control: tool.cache_control.0,
        });
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------
// Encode
// ---------------------------------------------------------------------------------------

/// Writes the hub request as an OpenAI chat completions body for `dep`.
pub fn encode(
    req: &hub::Request<'_>,
    target: &Target<'_>,
    hint: usize,
) -> Result<Vec<u8>, ApiError> {
    let dep = target.dep;
    req.refuse_unsupported(target, [])?;
    let mut messages = Vec::with_capacity(req.messages.len() + 2);
    if !req.system.is_empty() {
        messages.push(MsgOut::System {
            content: join_texts(req.system.iter().map(|t| &*t.text)),
        });
    }
    for m in &req.messages {
        match m.role {
            Role::Assistant => assistant(m, &mut messages),
            Role::User => user(m, &mut messages),
        }
    }
    let max = req.max_tokens.or(dep.max_tokens);
    let completion_tokens = prefers_max_completion_tokens(dep);
    let tools: Vec<ToolOut<'_>> = req
        .tools
        .iter()
        .map(|t| ToolOut {
            kind: "function",
            function: FunctionOut {
                name: &t.name,
                description: t.description.as_deref(),
                parameters: match t.parameters {
                    Some(p) if t::is_object(p) => p,
                    _ => empty_schema(),
                },
                strict: t.strict.then_some(true),
            },
        })
        .collect();
    let out = ChatOut {
        model: &dep.model,
        messages,
        max_tokens: max.filter(|_| !completion_tokens),
        max_completion_tokens: max.filter(|_| completion_tokens),
        stream: req.stream,
        // Usage at the end of a stream: Anthropic and Responses clients always get it.
        stream_options: req.stream.then_some(StreamOptions {
            include_usage: true,
        }),
        temperature: req.temperature,
        top_p: req.top_p,
        top_k: req.top_k,
        stop: &req.stop,
        parallel_tool_calls: req.parallel_tool_calls.filter(|_| !tools.is_empty()),
        tool_choice: req.tool_choice.as_ref().map(|c| match c {
            ToolChoice::Auto => ToolChoiceOut::Mode("auto"),
            ToolChoice::None => ToolChoiceOut::Mode("none"),
            ToolChoice::Required => ToolChoiceOut::Mode("required"),
            ToolChoice::Tool(name) => ToolChoiceOut::Function {
                kind: "function",
                function: NameOut { name },
            },
        }),
        tools,
        user: req.user.map(|p| p.value),
        seed: req.seed.map(|p| p.value),
        presence_penalty: req.presence_penalty.map(|p| p.value),
        frequency_penalty: req.frequency_penalty.map(|p| p.value),
        n: req.n.map(|p| p.value),
        response_format: req.response_format.as_ref().and_then(|f| match &f.kind {
            JsonMode::Text => None,
            JsonMode::JsonObject => Some(ResponseFormatOut {
                kind: "json_object",
                json_schema: None,
            }),
            JsonMode::JsonSchema {
                name,
                schema,
                strict,
            } => Some(ResponseFormatOut {
                kind: "json_schema",
                json_schema: Some(JsonSchemaOut {
                    name: name.as_deref().unwrap_or("response"),
                    schema: *schema,
                    strict: *strict,
                }),
            }),
        }),
        // Anthropic's thinking budget has no OpenAI equivalent that every
        // OpenAI-compatible server accepts: only an explicit effort goes on.
        reasoning_effort: req.reasoning.as_ref().and_then(|r| r.effort.as_deref()),
    };
    t::to_body(&out, hint + 256)
}

/// Real OpenAI and Azure want `max_completion_tokens` (reasoning models refuse
/// `max_tokens`); OpenAI-compatible servers all know `max_tokens`.
fn prefers_max_completion_tokens(dep: &Upstream) -> bool {
    use llmgw_core::config::ProviderKind;
    dep.kind == ProviderKind::Azure
        || (dep.kind == ProviderKind::Openai && dep.api_base.contains("://api.openai.com"))
}

fn join_texts<'t>(mut texts: impl Iterator<Item = &'t str>) -> Cow<'t, str> {
    let Some(first) = texts.next() else {
        return Cow::Borrowed("");
    };
    match texts.next() {
        None => Cow::Borrowed(first),
        Some(second) => {
            let mut s = String::with_capacity(first.len() + second.len() + 2);
            s.push_str(first);
            s.push_str("\n\n");
            s.push_str(second);
            for t in texts {
                s.push_str("\n\n");
                s.push_str(t);
            }
            Cow::Owned(s)
        }
    }
}

/// An assistant turn: its text joined, tool calls with their arguments as a JSON string
/// (thinking has no place in OpenAI's request and is left out).
fn assistant<'h>(m: &'h Message<'_>, out: &mut Vec<MsgOut<'h>>) {
    let mut text: Option<Cow<'h, str>> = None;
    let mut calls = Vec::new();
    for b in &m.content {
        match b {
            Block::Text(t) => match &mut text {
                None => text = Some(Cow::Borrowed(&t.text)),
                Some(s) => s.to_mut().push_str(&t.text),
            },
            Block::ToolCall(c) => calls.push(CallOut {
                id: &c.id,
                kind: "function",
                function: CallFunctionOut {
                    name: &c.name,
                    arguments: c.input.get(),
                },
            }),
            Block::Image(_) | Block::ToolResult(_) => {}
        }
    }
    if text.is_none() && calls.is_empty() {
        return;
    }
    out.push(MsgOut::Assistant {
        content: text,
        tool_calls: calls,
    });
}

/// A user turn: its tool results first, as `tool` messages (OpenAI wants them right
/// after the assistant's calls), then the rest as one user message. Images in tool
/// results go into that user message, since a tool message holds only text.
fn user<'h>(m: &'h Message<'_>, out: &mut Vec<MsgOut<'h>>) {
    let mut parts: Vec<PartOut<'h>> = Vec::new();
    for b in &m.content {
        match b {
            Block::ToolResult(r) => {
                let mut text = String::new();
                for c in &r.content {
                    match c {
                        Block::Text(t) => text.push_str(&t.text),
                        Block::Image(img) => parts.push(image_part(img)),
                        _ => {}
                    }
                }
                out.push(MsgOut::Tool {
                    tool_call_id: &r.id,
                    content: if r.is_error && !text.starts_with("Error") {
                        Cow::Owned(format!("Error: {text}"))
                    } else {
                        Cow::Owned(text)
                    },
                });
            }
            Block::Text(t) => parts.push(PartOut::Text { text: &t.text }),
            Block::Image(img) => parts.push(image_part(img)),
            Block::ToolCall(_) => {}
        }
    }
    match parts.as_slice() {
        [] => {}
        [PartOut::Text { text }] => out.push(MsgOut::User {
            content: UserContent::Text(text),
        }),
        _ => out.push(MsgOut::User {
            content: UserContent::Parts(parts),
        }),
    }
}

fn image_part<'h>(img: &'h Image<'_>) -> PartOut<'h> {
    let url = match &img.source {
        ImageSource::Url(u) => Cow::Borrowed(&**u),
        ImageSource::Base64 { media_type, data } => {
            Cow::Owned(format!("data:{media_type};base64,{data}"))
        }
    };
    PartOut::ImageUrl {
        image_url: UrlOut { url },
    }
}

/// `{"type": "object", "properties": {}}`, for a tool without parameters.
pub fn empty_schema() -> &'static RawValue {
    static EMPTY: std::sync::OnceLock<Box<RawValue>> = std::sync::OnceLock::new();
    EMPTY.get_or_init(|| {
        #[allow(clippy::expect_used)] // a constant that is valid JSON
        RawValue::from_string(r#"{"type":"object","properties":{}}"#.to_string())
            .expect("valid JSON")
    })
}

#[derive(Serialize)]
struct ChatOut<'h> {
    model: &'h str,
    messages: Vec<MsgOut<'h>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_tokens: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_completion_tokens: Option<u64>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    stream: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    stream_options: Option<StreamOptions>,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<&'h RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_p: Option<&'h RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_k: Option<&'h RawValue>,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    stop: &'h [&'h RawValue],
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tools: Vec<ToolOut<'h>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_choice: Option<ToolChoiceOut<'h>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    parallel_tool_calls: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    user: Option<&'h RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    seed: Option<&'h RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    presence_penalty: Option<&'h RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    frequency_penalty: Option<&'h RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    n: Option<&'h RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    response_format: Option<ResponseFormatOut<'h>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reasoning_effort: Option<&'h str>,
}

#[derive(Serialize)]
struct StreamOptions {
    include_usage: bool,
}

#[derive(Serialize)]
#[serde(tag = "role", rename_all = "lowercase")]
enum MsgOut<'h> {
    System {
        content: Cow<'h, str>,
    },
    User {
        content: UserContent<'h>,
    },
    Assistant {
        content: Option<Cow<'h, str>>,
        #[serde(skip_serializing_if = "Vec::is_empty")]
        tool_calls: Vec<CallOut<'h>>,
    },
    Tool {
        tool_call_id: &'h str,
        content: Cow<'h, str>,
    },
}

#[derive(Serialize)]
#[serde(untagged)]
enum UserContent<'h> {
    Text(&'h str),
    Parts(Vec<PartOut<'h>>),
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum PartOut<'h> {
    Text { text: &'h str },
    ImageUrl { image_url: UrlOut<'h> },
}

#[derive(Serialize)]
struct UrlOut<'h> {
    url: Cow<'h, str>,
}

#[derive(Serialize)]
struct CallOut<'h> {
    id: &'h str,
    #[serde(rename = "type")]
    kind: &'static str,
    function: CallFunctionOut<'h>,
}

#[derive(Serialize)]
struct CallFunctionOut<'h> {
    name: &'h str,
    /// The arguments object as a JSON string.
    arguments: &'h str,
}

#[derive(Serialize)]
struct ToolOut<'h> {
    #[serde(rename = "type")]
    kind: &'static str,
    function: FunctionOut<'h>,
}

#[derive(Serialize)]
struct FunctionOut<'h> {
    name: &'h str,
    #[serde(skip_serializing_if = "Option::is_none")]
    description: Option<&'h str>,
    parameters: &'h RawValue,
    #[serde(skip_serializing_if = "Option::is_none")]
    strict: Option<bool>,
}

#[derive(Serialize)]
#[serde(untagged)]
enum ToolChoiceOut<'h> {
    Mode(&'static str),
    Function {
        #[serde(rename = "type")]
        kind: &'static str,
        function: NameOut<'h>,
    },
}

#[derive(Serialize)]
struct NameOut<'h> {
    name: &'h str,
}

#[derive(Serialize)]
struct ResponseFormatOut<'h> {
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    json_schema: Option<JsonSchemaOut<'h>>,
}

#[derive(Serialize)]
struct JsonSchemaOut<'h> {
    name: &'h str,
    #[serde(skip_serializing_if = "Option::is_none")]
    schema: Option<&'h RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    strict: Option<bool>,
}

#[cfg(test)]
mod tests {
    use crate::hub::{Format, Target};
    use crate::request::Endpoint;
    use crate::translate::testing::{deployment, request};
    use llmgw_core::config::ProviderKind;
    use serde_json::{json, Value};

    /// A client body in `endpoint`'s format → the chat completions body for `dep`.
    fn to_chat(dep: &crate::upstream::Upstream, endpoint: Endpoint, body: Value) -> Value {
        let req = request(endpoint, body);
        let out = crate::convert::chat_body(dep, &req, Format::OpenAiChat).expect("translates");
        serde_json::from_slice(&out).expect("JSON")
    }

    #[test]
    fn anthropic_request_as_chat() {
        let dep = deployment(ProviderKind::Sglang, "Qwen/Qwen3-8B", false);
        let out = to_chat(
            &dep,
            Endpoint::Messages,
            json!({"model": "qwen", "max_tokens": 300, "stream": true,
            "system": [{"type": "text", "text": "You are Claude Code.", "cache_control": {"type": "ephemeral"}},
                {"type": "text", "text": "Be brief."}],
            "metadata": {"user_id": "user_abc"},
            "stop_sequences": ["END"], "temperature": 1,
            "thinking": {"type": "enabled", "budget_tokens": 1024},
            "output_config": {"effort": "high"},
            "cache_control": {"type": "ephemeral"},
            "tool_choice": {"type": "any", "disable_parallel_tool_use": true},
            "tools": [{"name": "Read", "description": "Read a file",
                "input_schema": {"type": "object", "properties": {"path": {"type": "string"}}},
                "cache_control": {"type": "ephemeral"}}],
            "messages": [
                {"role": "user", "content": "Read a.txt"},
                {"role": "assistant", "content": [
                    {"type": "thinking", "thinking": "hmm", "signature": "sig"},
                    {"type": "text", "text": "Reading."},
                    {"type": "tool_use", "id": "toolu_1", "name": "Read", "input": {"path": "a.txt"}}]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_1", "content": [
                        {"type": "text", "text": "hello"},
                        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBO"}}]},
                    {"type": "text", "text": "Summarise it."}]}
            ]}),
        );
        assert_eq!(
            out,
            json!({"model": "Qwen/Qwen3-8B",
                "messages": [
                    {"role": "system", "content": "You are Claude Code.\n\nBe brief."},
                    {"role": "user", "content": "Read a.txt"},
                    {"role": "assistant", "content": "Reading.", "tool_calls": [
                        {"id": "toolu_1", "type": "function", "function": {"name": "Read", "arguments": "{\"path\":\"a.txt\"}"}}]},
                    {"role": "tool", "tool_call_id": "toolu_1", "content": "hello"},
                    {"role": "user", "content": [
                        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBO"}},
                        {"type": "text", "text": "Summarise it."}]}
                ],
                "max_tokens": 300, "stream": true, "stream_options": {"include_usage": true},
                "temperature": 1, "stop": ["END"],
                "tools": [{"type": "function", "function": {"name": "Read", "description": "Read a file",
                    "parameters": {"type": "object", "properties": {"path": {"type": "string"}}}}}],
                "tool_choice": "required", "parallel_tool_calls": false, "user": "user_abc"})
        );
        // Real OpenAI gets max_completion_tokens; a named tool becomes a function choice;
        // an error result is marked; a JSON schema output becomes response_format.
        let mut dep = deployment(ProviderKind::Openai, "gpt-4o", false);
        dep.api_base = "https://api.openai.com/v1".into();
        let out = to_chat(
            &dep,
            Endpoint::Messages,
            json!({"model": "g", "max_tokens": 10,
                "tool_choice": {"type": "tool", "name": "f"},
                "output_config": {"format": {"type": "json_schema", "schema": {"type": "object"}}},
                "tools": [{"name": "f", "input_schema": {"type": "object"}}],
                "messages": [
                    {"role": "assistant", "content": [{"type": "tool_use", "id": "t", "name": "f", "input": {}}]},
                    {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t", "content": "boom", "is_error": true}]}]}),
        );
        assert_eq!(out["max_completion_tokens"], 10);
        assert!(out.get("max_tokens").is_none());
        assert_eq!(
            out["tool_choice"],
            json!({"type": "function", "function": {"name": "f"}})
        );
        assert_eq!(out["messages"][1]["content"], "Error: boom");
        assert_eq!(out["messages"][0]["content"], Value::Null);
        assert_eq!(
            out["response_format"],
            json!({"type": "json_schema", "json_schema": {"name": "response", "schema": {"type": "object"}, "strict": true}})
        );
    }

    #[test]
    fn responses_request_as_chat() {
        let dep = deployment(ProviderKind::Sglang, "qwen", false);
        let out = to_chat(
            &dep,
            Endpoint::Responses,
            json!({"model": "q", "instructions": "Be brief.", "max_output_tokens": 50,
            "store": false, "include": ["reasoning.encrypted_content"], "reasoning": {"effort": "low"},
            "text": {"format": {"type": "json_object"}}, "parallel_tool_calls": false,
            "tools": [{"type": "function", "name": "f", "parameters": {"type": "object"}, "strict": true}],
            "input": [
                {"role": "developer", "content": "Answer in French."},
                {"type": "message", "role": "user", "content": [
                    {"type": "input_text", "text": "Weather?"},
                    {"type": "input_image", "image_url": "https://x/cat.png", "detail": "auto"}]},
                {"type": "reasoning", "id": "rs_1", "summary": []},
                {"type": "function_call", "id": "fc_1", "call_id": "call_1", "name": "f", "arguments": "{\"a\":1}"},
                {"type": "function_call_output", "call_id": "call_1", "output": "sunny"},
                {"role": "assistant", "content": [{"type": "output_text", "text": "Il fait beau.", "annotations": []}]},
                {"role": "user", "content": "Merci"}
            ]}),
        );
        assert_eq!(
            out,
            json!({"model": "qwen", "messages": [
                    {"role": "system", "content": "Be brief.\n\nAnswer in French."},
                    {"role": "user", "content": [{"type": "text", "text": "Weather?"},
                        {"type": "image_url", "image_url": {"url": "https://x/cat.png"}}]},
                    {"role": "assistant", "content": null, "tool_calls": [
                        {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{\"a\":1}"}}]},
                    {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
                    {"role": "assistant", "content": "Il fait beau."},
                    {"role": "user", "content": "Merci"}],
                "max_tokens": 50,
                "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}, "strict": true}}],
                "parallel_tool_calls": false,
                "response_format": {"type": "json_object"}, "reasoning_effort": "low"})
        );
        // A string input is one user message.
        let out = to_chat(
            &dep,
            Endpoint::Responses,
            json!({"model": "q", "input": "Hi"}),
        );
        assert_eq!(out["messages"], json!([{"role": "user", "content": "Hi"}]));
        let target = Target {
            dep: &dep,
            format: Format::OpenAiChat,
        };
        let bad = [
            (json!({"model": "q"}), "input"),
            (json!({"model": "q", "input": 3}), "input"),
            (
                json!({"model": "q", "input": [{"role": "robot", "content": "x"}]}),
                "input[0].role",
            ),
            (
                json!({"model": "q", "input": [{"type": "item_reference", "id": "x"}]}),
                "input[0]",
            ),
            (
                json!({"model": "q", "input": [{"type": "function_call", "call_id": "c", "name": "f", "arguments": "[1]"}]}),
                "input[0].arguments",
            ),
            (
                json!({"model": "q", "input": "x", "tools": [{"type": "web_search"}]}),
                "tools[0].type",
            ),
            (
                json!({"model": "q", "input": "x", "tool_choice": "any"}),
                "tool_choice",
            ),
            (
                json!({"model": "q", "input": "x", "text": {"format": {"type": "yaml"}}}),
                "text.format",
            ),
            (
                json!({"model": "q", "input": "x", "top_logprobs": 2}),
                "top_logprobs",
            ),
        ];
        for (body, param) in bad {
            let req = request(Endpoint::Responses, body.clone());
            let e = crate::responses::request::decode(&req, &target)
                .and_then(|h| super::encode(&h, &target, 0).map(|_| ()))
                .expect_err(&body.to_string());
            assert_eq!(e.param.as_deref(), Some(param), "{body}: {}", e.message);
        }
    }
}
