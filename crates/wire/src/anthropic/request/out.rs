//! The Anthropic Messages request written from the hub (`encode`): its shapes, content
//! blocks, tools and images.

use super::*;

// ---------------------------------------------------------------------------------------
// Encode
// ---------------------------------------------------------------------------------------

/// Writes the hub request as a Messages body for `target`.
pub fn encode(
    req: &hub::Request<'_>,
    target: &Target<'_>,
    hint: usize,
) -> Result<Vec<u8>, ApiError> {
    let dep = target.dep;
    let mut refused: Vec<&'static str> =
        set_params(&[req.seed, req.presence_penalty, req.frequency_penalty, req.n]).collect();
    if let Some(f) = req.response_format.as_ref() {
        if !matches!(f.kind, JsonMode::Text) {
            refused.push(f.param);
        }
    }
    let thinking = match &req.reasoning {
        Some(Reasoning {
            budget: Some(b), ..
        }) => Some(Thinking {
            kind: "enabled",
            budget_tokens: *b,
        }),
        Some(r) if r.effort.is_some() => {
            refused.push(r.param);
            None
        }
        _ => None,
    };
    let metadata = match req.user {
        None => None,
        Some(Param { name, value }) => match value.get().as_bytes().first() {
            Some(b'"') => Some(Metadata { user_id: value }),
            _ => return Err(invalid(name, "expected a string")),
        },
    };
    let mut turns: Vec<Turn<'_>> = Vec::with_capacity(req.messages.len());
    for m in &req.messages {
        let role = match m.role {
            Role::User => "user",
            Role::Assistant => "assistant",
        };
        let blocks = blocks(&m.content);
        if blocks.is_empty() {
            continue;
        }
        match turns.last_mut() {
            Some(t) if t.role == role => t.content.extend(blocks),
            _ => turns.push(Turn {
                role,
                content: blocks,
            }),
        }
    }
    req.refuse_unsupported(target, refused)?;
    let has_tools = !req.tools.is_empty();
    let mut tool_choice = req.tool_choice.as_ref().map(|c| {
        let (kind, name) = match c {
            ToolChoice::Auto => ("auto", None),
            ToolChoice::None => ("none", None),
            ToolChoice::Required => ("any", None),
            ToolChoice::Tool(n) => ("tool", Some(&**n)),
        };
        ToolChoiceOut {
            kind,
            name,
            disable_parallel_tool_use: None,
        }
    });
    if req.parallel_tool_calls == Some(false) && has_tools {
        let tc = tool_choice.get_or_insert(ToolChoiceOut {
            kind: "auto",
            name: None,
            disable_parallel_tool_use: None,
        });
        if tc.kind != "none" {
            tc.disable_parallel_tool_use = Some(true);
        }
    }
    let out = MessagesRequest {
        model: &dep.model,
        max_tokens: req
            .max_tokens
            .or(dep.max_tokens)
            .unwrap_or(DEFAULT_MAX_TOKENS),
        system: req
            .system
            .iter()
            .map(|t| ReqBlock::Text {
                text: &t.text,
                cache_control: t.cache_control,
            })
            .collect(),
        messages: turns,
        stream: req.stream,
        temperature: req.temperature,
        top_p: req.top_p,
        top_k: req.top_k,
        stop_sequences: &req.stop,
        tools: req.tools.iter().map(tool_out).collect(),
        metadata,
        tool_choice,
        thinking,
    };
    t::to_body(&out, hint + 256)
}

pub(crate) fn tool_out<'h>(t: &'h Tool<'_>) -> ToolOut<'h> {
    ToolOut {
        name: &t.name,
        description: t.description.as_deref(),
        input_schema: match t.parameters {
            Some(s) if t::is_object(s) => s,
            _ => crate::chat::request::empty_schema(),
        },
        cache_control: t.cache_control,
    }
}

pub(crate) fn image<'h>(img: &'h Image<'_>) -> ReqBlock<'h> {
    let source = match &img.source {
        ImageSource::Base64 { media_type, data } => ImageSourceOut::Base64 { media_type, data },
        ImageSource::Url(url) => match parse_data_url(url) {
            Some((media_type, data)) => ImageSourceOut::Base64 { media_type, data },
            None => ImageSourceOut::Url { url },
        },
    };
    ReqBlock::Image {
        source,
        cache_control: img.cache_control,
    }
}

pub(crate) fn blocks<'h>(content: &'h [Block<'_>]) -> Vec<ReqBlock<'h>> {
    let mut out = Vec::with_capacity(content.len());
    for b in content {
        match b {
            Block::Text(t) if t.text.is_empty() => {}
            Block::Text(t) => out.push(ReqBlock::Text {
                text: &t.text,
                cache_control: t.cache_control,
            }),
            Block::Image(img) => out.push(image(img)),
            Block::ToolCall(c) => out.push(ReqBlock::ToolUse {
                id: &c.id,
                name: &c.name,
                input: &c.input,
            }),
            Block::ToolResult(r) => out.push(ReqBlock::ToolResult {
                tool_use_id: &r.id,
                content: match r.text() {
                    Some(text) => ResultContent::Text(text),
                    None => ResultContent::Blocks(
                        r.content
                            .iter()
                            .filter_map(|c| match c {
                                Block::Text(t) => Some(ReqBlock::Text {
                                    text: &t.text,
                                    cache_control: t.cache_control,
                                }),
                                Block::Image(img) => Some(image(img)),
                                _ => None,
                            })
                            .collect(),
                    ),
                },
                is_error: r.is_error.then_some(true),
            }),
        }
    }
    out
}

/// The Messages request body, in the order the fields are written.
#[derive(Serialize)]
pub(crate) struct MessagesRequest<'h> {
    model: &'h str,
    max_tokens: u64,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    system: Vec<ReqBlock<'h>>,
    messages: Vec<Turn<'h>>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    stream: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<&'h RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_p: Option<&'h RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_k: Option<&'h RawValue>,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    stop_sequences: &'h [&'h RawValue],
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tools: Vec<ToolOut<'h>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    metadata: Option<Metadata<'h>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_choice: Option<ToolChoiceOut<'h>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    thinking: Option<Thinking>,
}

#[derive(Serialize)]
pub(crate) struct Turn<'h> {
    role: &'static str,
    content: Vec<ReqBlock<'h>>,
}

#[derive(Serialize)]
pub(crate) struct Metadata<'h> {
    /// The client's end-user id (a raw JSON string).
    user_id: &'h RawValue,
}

#[derive(Serialize)]
pub(crate) struct Thinking {
    #[serde(rename = "type")]
    kind: &'static str,
    budget_tokens: u64,
}

/// An Anthropic content block of a request.
#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub(crate) enum ReqBlock<'h> {
    Text {
        text: &'h str,
        #[serde(skip_serializing_if = "Option::is_none")]
        cache_control: Option<&'h RawValue>,
    },
    Image {
        source: ImageSourceOut<'h>,
        #[serde(skip_serializing_if = "Option::is_none")]
        cache_control: Option<&'h RawValue>,
    },
    ToolUse {
        id: &'h str,
        name: &'h str,
        input: &'h RawValue,
    },
    ToolResult {
        tool_use_id: &'h str,
        content: ResultContent<'h>,
        #[serde(skip_serializing_if = "Option::is_none")]
        is_error: Option<bool>,
    },
}

#[derive(Serialize)]
#[serde(untagged)]
pub(crate) enum ResultContent<'h> {
    Text(Cow<'h, str>),
    Blocks(Vec<ReqBlock<'h>>),
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub(crate) enum ImageSourceOut<'h> {
    Base64 { media_type: &'h str, data: &'h str },
    Url { url: &'h str },
}

#[derive(Serialize)]
pub(crate) struct ToolOut<'h> {
    name: &'h str,
    #[serde(skip_serializing_if = "Option::is_none")]
    description: Option<&'h str>,
    input_schema: &'h RawValue,
    #[serde(skip_serializing_if = "Option::is_none")]
    cache_control: Option<&'h RawValue>,
}

#[derive(Serialize)]
pub(crate) struct ToolChoiceOut<'h> {
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'h str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    disable_parallel_tool_use: Option<bool>,
}
