//! Gemini `generateContent` requests, encoded from the hub: `contents`/`parts` with roles
//! `user`/`model`, the system prompt in `systemInstruction`, sampling in
//! `generationConfig`, tools as `functionDeclarations`, tool calls as `functionCall`
//! parts and tool results as `functionResponse` parts (matched by function name, which
//! the decoders looked up from the conversation).

use crate::hub::{self, Block, ImageSource, JsonMode, Role, Target, ToolChoice};
use crate::translate::{self as t, invalid, mime_from_url, parse_data_url};
use llmgw_core::error::ApiError;
use serde::Serialize;
use serde_json::value::RawValue;
use std::borrow::Cow;

/// Writes the hub request as a `generateContent` body for `target`.
pub fn encode(
    req: &hub::Request<'_>,
    target: &Target<'_>,
    hint: usize,
) -> Result<Vec<u8>, ApiError> {
    let dep = target.dep;
    let mut refused: Vec<&'static str> = Vec::new();
    let mut gc = GenerationConfig {
        max_output_tokens: req.max_tokens.or(dep.max_tokens),
        temperature: req.temperature,
        top_p: req.top_p,
        top_k: req.top_k,
        presence_penalty: req.presence_penalty.map(|p| p.value),
        frequency_penalty: req.frequency_penalty.map(|p| p.value),
        seed: req.seed.map(|p| p.value),
        stop_sequences: &req.stop,
        ..GenerationConfig::default()
    };
    if let Some(n) = req.n {
        match serde_json::from_str::<u64>(n.value.get()).ok() {
            Some(1) => {}
            Some(k) if k > 1 => gc.candidate_count = Some(k),
            _ => return Err(invalid(n.name, "expected a positive integer")),
        }
    }
    if let Some(f) = &req.response_format {
        match &f.kind {
            JsonMode::Text => {}
            JsonMode::JsonObject => gc.response_mime_type = Some("application/json"),
            JsonMode::JsonSchema { schema, .. } => {
                gc.response_mime_type = Some("application/json");
                gc.response_json_schema = *schema;
            }
        }
    }
    match &req.reasoning {
        Some(hub::Reasoning {
            budget: Some(b), ..
        }) => {
            gc.thinking_config = Some(ThinkingConfig {
                thinking_budget: *b,
                include_thoughts: true,
            })
        }
        Some(r) if r.effort.is_some() => refused.push(r.param),
        _ => {}
    }
    req.refuse_unsupported(target, refused)?;
    let mut contents: Vec<GContentOut<'_>> = Vec::with_capacity(req.messages.len());
    for m in &req.messages {
        let (role, parts) = match m.role {
            Role::User => ("user", user_parts(&m.content)),
            Role::Assistant => ("model", model_parts(&m.content)),
        };
        if parts.is_empty() {
            continue;
        }
        match contents.last_mut() {
            Some(c) if c.role == role => c.parts.extend(parts),
            _ => contents.push(GContentOut { role, parts }),
        }
    }
    let decls: Vec<FunctionDeclaration<'_>> = req
        .tools
        .iter()
        .map(|t| FunctionDeclaration {
            name: &t.name,
            description: t.description.as_deref(),
            parameters_json_schema: t.parameters.filter(|p| t::is_object(p)),
        })
        .collect();
    let out = GenerateRequest {
        tools: (!decls.is_empty()).then_some([ToolsOut {
            function_declarations: decls,
        }]),
        tool_config: req.tool_choice.as_ref().map(|c| {
            let (mode, name) = match c {
                ToolChoice::Auto => ("AUTO", None),
                ToolChoice::None => ("NONE", None),
                ToolChoice::Required => ("ANY", None),
                ToolChoice::Tool(n) => ("ANY", Some([&**n])),
            };
            ToolConfig {
                function_calling_config: FunctionCallingConfig {
                    mode,
                    allowed_function_names: name,
                },
            }
        }),
        contents,
        system_instruction: (!req.system.is_empty()).then(|| SystemOut {
            parts: req
                .system
                .iter()
                .map(|t| GPartOut::Text(Cow::Borrowed(&t.text)))
                .collect(),
        }),
        generation_config: (!gc.is_empty()).then_some(gc),
    };
    t::to_body(&out, hint + 256)
}

fn image<'h>(source: &'h ImageSource<'_>) -> GPartOut<'h> {
    match source {
        ImageSource::Base64 { media_type, data } => GPartOut::InlineData(Blob {
            mime_type: media_type,
            data,
        }),
        ImageSource::Url(url) => match parse_data_url(url) {
            Some((mime, data)) => GPartOut::InlineData(Blob {
                mime_type: mime,
                data,
            }),
            None => GPartOut::FileData(FileData {
                mime_type: mime_from_url(url),
                file_uri: url,
            }),
        },
    }
}

fn user_parts<'h>(content: &'h [Block<'_>]) -> Vec<GPartOut<'h>> {
    let mut out = Vec::with_capacity(content.len());
    for b in content {
        match b {
            Block::Text(t) if t.text.is_empty() => {}
            Block::Text(t) => out.push(GPartOut::Text(Cow::Borrowed(&t.text))),
            Block::Image(img) => out.push(image(&img.source)),
            Block::ToolResult(r) => {
                let text = r.text().unwrap_or_else(|| {
                    // Images in a tool result: only its text is passed on.
                    Cow::Owned(
                        r.content
                            .iter()
                            .filter_map(|c| match c {
                                Block::Text(t) => Some(&*t.text),
                                _ => None,
                            })
                            .collect(),
                    )
                });
                let response = match serde_json::from_str::<&RawValue>(&text) {
                    Ok(v) if t::is_object(v) => ToolResponse::Object(v.to_owned()),
                    _ => ToolResponse::Text { content: text },
                };
                out.push(GPartOut::FunctionResponse(FunctionResponseOut {
                    name: r.name.as_deref().unwrap_or_default(),
                    response,
                }));
            }
            Block::ToolCall(_) => {}
        }
    }
    out
}

/// An assistant turn: its text joined into one part, then its function calls.
fn model_parts<'h>(content: &'h [Block<'_>]) -> Vec<GPartOut<'h>> {
    let mut text: Option<Cow<'h, str>> = None;
    let mut calls = Vec::new();
    for b in content {
        match b {
            Block::Text(t) => match &mut text {
                None => text = Some(Cow::Borrowed(&t.text)),
                Some(s) => s.to_mut().push_str(&t.text),
            },
            Block::ToolCall(c) => calls.push(GPartOut::FunctionCall(FunctionCallOut {
                name: &c.name,
                args: &c.input,
            })),
            Block::Image(_) | Block::ToolResult(_) => {}
        }
    }
    let mut parts = Vec::with_capacity(calls.len() + 1);
    if let Some(text) = text.filter(|t| !t.is_empty()) {
        parts.push(GPartOut::Text(text));
    }
    parts.extend(calls);
    parts
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct GenerateRequest<'h> {
    #[serde(skip_serializing_if = "Option::is_none")]
    tools: Option<[ToolsOut<'h>; 1]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_config: Option<ToolConfig<'h>>,
    contents: Vec<GContentOut<'h>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    system_instruction: Option<SystemOut<'h>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    generation_config: Option<GenerationConfig<'h>>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ToolsOut<'h> {
    function_declarations: Vec<FunctionDeclaration<'h>>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct FunctionDeclaration<'h> {
    name: &'h str,
    #[serde(skip_serializing_if = "Option::is_none")]
    description: Option<&'h str>,
    /// Full JSON Schema, passed as is (`parameters` takes only an OpenAPI subset).
    #[serde(skip_serializing_if = "Option::is_none")]
    parameters_json_schema: Option<&'h RawValue>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ToolConfig<'h> {
    function_calling_config: FunctionCallingConfig<'h>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct FunctionCallingConfig<'h> {
    mode: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    allowed_function_names: Option<[&'h str; 1]>,
}

#[derive(Serialize)]
struct GContentOut<'h> {
    role: &'static str,
    parts: Vec<GPartOut<'h>>,
}

#[derive(Serialize)]
struct SystemOut<'h> {
    parts: Vec<GPartOut<'h>>,
}

/// A request part: `{"text": …}`, `{"inlineData": …}`, ….
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
enum GPartOut<'h> {
    Text(Cow<'h, str>),
    InlineData(Blob<'h>),
    FileData(FileData<'h>),
    FunctionCall(FunctionCallOut<'h>),
    FunctionResponse(FunctionResponseOut<'h>),
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Blob<'h> {
    mime_type: &'h str,
    data: &'h str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct FileData<'h> {
    mime_type: &'h str,
    file_uri: &'h str,
}

#[derive(Serialize)]
struct FunctionCallOut<'h> {
    name: &'h str,
    args: &'h RawValue,
}

#[derive(Serialize)]
struct FunctionResponseOut<'h> {
    name: &'h str,
    response: ToolResponse<'h>,
}

/// A tool result: its JSON object, else `{"content": text}`.
#[derive(Serialize)]
#[serde(untagged)]
enum ToolResponse<'h> {
    Object(Box<RawValue>),
    Text { content: Cow<'h, str> },
}

#[derive(Serialize, Default)]
#[serde(rename_all = "camelCase")]
struct GenerationConfig<'h> {
    #[serde(skip_serializing_if = "Option::is_none")]
    max_output_tokens: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<&'h RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_p: Option<&'h RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_k: Option<&'h RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    presence_penalty: Option<&'h RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    frequency_penalty: Option<&'h RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    seed: Option<&'h RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    candidate_count: Option<u64>,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    stop_sequences: &'h [&'h RawValue],
    #[serde(skip_serializing_if = "Option::is_none")]
    response_mime_type: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    response_json_schema: Option<&'h RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    thinking_config: Option<ThinkingConfig>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ThinkingConfig {
    thinking_budget: u64,
    include_thoughts: bool,
}

impl GenerationConfig<'_> {
    fn is_empty(&self) -> bool {
        self.max_output_tokens.is_none()
            && self.temperature.is_none()
            && self.top_p.is_none()
            && self.top_k.is_none()
            && self.presence_penalty.is_none()
            && self.frequency_penalty.is_none()
            && self.seed.is_none()
            && self.candidate_count.is_none()
            && self.stop_sequences.is_empty()
            && self.response_mime_type.is_none()
            && self.response_json_schema.is_none()
            && self.thinking_config.is_none()
    }
}
