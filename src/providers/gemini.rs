//! Google Gemini API (`{api_base}/models/{model}:generateContent`,
//! `:streamGenerateContent?alt=sse`, `:batchEmbedContents`) behind OpenAI's chat
//! completions and embeddings. The key travels in the `x-goog-api-key` header, never in
//! the URL.
//!
//! Request: `contents`/`parts` with roles `user`/`model`, system messages in
//! `systemInstruction`, sampling in `generationConfig`, tools as `functionDeclarations`,
//! assistant `tool_calls` as `functionCall` parts and `tool` messages as
//! `functionResponse` parts (Gemini matches responses by function name, so tool call ids
//! are mapped back to names from the conversation). Response: candidates → choices,
//! finish reasons and `usageMetadata` mapped; streams translated event by event.

use super::translate::{
    self as t, body_object, content_str, invalid, is_default, is_null, mime_from_url,
    parse_data_url, raw_is_default, raw_max_tokens, raw_stop_list, secret_header, unsupported_all,
    ChatBody, ChunkWriter, Content, Delta, EmbeddingFormat, FunctionCall, FunctionDelta, InMessage,
    InTool, InToolCall, LStr, Lax, LaxList, MaybeRaw, Part, SseParser, ToolCall, ToolCallDelta,
    ToolChoiceIn, Usage,
};
use super::{Provider, StreamTranslator, UpstreamError};
use crate::config::ErrorClass;
use crate::error::ApiError;
use crate::request::{ClientRequest, Endpoint};
use crate::router::Deployment;
use axum::http::{HeaderMap, StatusCode};
use bytes::{Bytes, BytesMut};
use reqwest::header::{HeaderValue, CONTENT_TYPE};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{json, Map, Value};
use std::borrow::Cow;

const NAME: &str = "gemini";

/// The Gemini provider.
pub struct Gemini;

/// `models/{model}` unless the configured model is already a resource path
/// (`models/…`, `tunedModels/…`).
fn model_path(model: &str) -> String {
    if model.contains('/') {
        model.to_string()
    } else {
        format!("models/{model}")
    }
}

impl Provider for Gemini {
    fn build(
        &self,
        client: &reqwest::Client,
        dep: &Deployment,
        req: &ClientRequest,
    ) -> Result<reqwest::RequestBuilder, ApiError> {
        let path = model_path(&dep.model);
        let (url, body) = match req.endpoint {
            Endpoint::ChatCompletions => {
                let body = translate_request(dep, req)?;
                let url = if req.stream {
                    format!("{}/{path}:streamGenerateContent?alt=sse", dep.api_base)
                } else {
                    format!("{}/{path}:generateContent", dep.api_base)
                };
                (url, body)
            }
            Endpoint::Embeddings => (
                format!("{}/{path}:batchEmbedContents", dep.api_base),
                translate_embeddings_request(dep, req)?,
            ),
            Endpoint::Completions => {
                return Err(ApiError::bad_request(format!(
                    "deployment {} (gemini) serves /v1/chat/completions and /v1/embeddings, \
                     not /v1/completions",
                    dep.id
                ))
                .with_code("unsupported_endpoint"))
            }
        };
        let mut rb = client
            .post(url)
            .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
            .body(body);
        if let Some(key) = &dep.api_key {
            rb = rb.header("x-goog-api-key", secret_header(dep, key.expose())?);
        }
        Ok(rb)
    }

    fn passthrough(&self) -> bool {
        false
    }

    fn translate_body(
        &self,
        dep: &Deployment,
        req: &ClientRequest,
        body: Bytes,
    ) -> Result<Bytes, ApiError> {
        match req.endpoint {
            Endpoint::Embeddings => translate_embeddings_response(
                &dep.model,
                &body,
                EmbeddingFormat::of_request(&req.body)?,
            ),
            _ => translate_response(&dep.model, &body),
        }
    }

    fn stream_translator(
        &self,
        dep: &Deployment,
        req: &ClientRequest,
    ) -> Box<dyn StreamTranslator> {
        Box::new(GeminiStream::new(dep.model.clone(), req.include_usage))
    }

    fn error(&self, status: StatusCode, headers: &HeaderMap, body: &[u8]) -> UpstreamError {
        map_error(status, headers, body)
    }
}

// ---------------------------------------------------------------------------------------
// Request
// ---------------------------------------------------------------------------------------

/// The `generateContent` body for an OpenAI chat completions request.
pub fn translate_request(dep: &Deployment, req: &ClientRequest) -> Result<Vec<u8>, ApiError> {
    let mut body = ChatBody::parse(req)?;
    let messages = body.messages()?;
    let (system, contents) = convert_messages(&messages)?;
    let mut gc = GenerationConfig {
        max_output_tokens: raw_max_tokens(&mut body)?.or(dep.max_tokens),
        ..GenerationConfig::default()
    };
    let mut out = GenerateRequest {
        tools: None,
        tool_config: None,
        contents: contents
            .into_iter()
            .map(|(role, parts)| GContentOut { role, parts })
            .collect(),
        system_instruction: (!system.is_empty()).then_some(SystemOut { parts: system }),
        generation_config: None,
    };
    if let Some(tools) = &body.tools {
        let decls = convert_tools(dep, tools)?;
        out.tools = (!decls.is_empty()).then_some([ToolsOut {
            function_declarations: decls,
        }]);
    }
    let mut rejected = Vec::new();
    for (k, v) in &body.params {
        let v: &RawValue = v;
        if is_null(v) {
            continue;
        }
        match &**k {
            "model" | "stream" | "stream_options" => {}
            "temperature" => gc.temperature = Some(v),
            "top_p" => gc.top_p = Some(v),
            "top_k" => gc.top_k = Some(v),
            "presence_penalty" => gc.presence_penalty = Some(v),
            "frequency_penalty" => gc.frequency_penalty = Some(v),
            "seed" => gc.seed = Some(v),
            "n" => match serde_json::from_str::<u64>(v.get()).ok() {
                Some(1) => {}
                Some(n) if n > 1 => gc.candidate_count = Some(n),
                _ => return Err(invalid("n", "expected a positive integer")),
            },
            "stop" => gc.stop_sequences = raw_stop_list(v)?,
            "response_format" => response_format(v, &mut gc)?,
            "tool_choice" => {
                if let Some(c) = t::tool_choice(v)? {
                    let (mode, name) = match c {
                        ToolChoiceIn::Auto => ("AUTO", None),
                        ToolChoiceIn::None => ("NONE", None),
                        ToolChoiceIn::Required => ("ANY", None),
                        ToolChoiceIn::Function(n) => ("ANY", Some([n])),
                    };
                    out.tool_config = Some(ToolConfig {
                        function_calling_config: FunctionCallingConfig {
                            mode,
                            allowed_function_names: name,
                        },
                    });
                }
            }
            // An end-user id for abuse monitoring; Gemini has no such field.
            "user" => {}
            _ if raw_is_default(k, v) => {}
            _ => rejected.push(k.to_string()),
        }
    }
    unsupported_all(dep, NAME, &mut rejected)?;
    if !gc.is_empty() {
        out.generation_config = Some(gc);
    }
    t::to_body(&out, req.body.len() + 256)
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct GenerateRequest<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    tools: Option<[ToolsOut<'a>; 1]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_config: Option<ToolConfig<'a>>,
    contents: Vec<GContentOut<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    system_instruction: Option<SystemOut<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    generation_config: Option<GenerationConfig<'a>>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ToolsOut<'a> {
    function_declarations: Vec<FunctionDeclaration<'a>>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct FunctionDeclaration<'a> {
    name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    description: Option<&'a str>,
    /// Full JSON Schema, passed as is (`parameters` takes only an OpenAPI subset).
    #[serde(skip_serializing_if = "Option::is_none")]
    parameters_json_schema: Option<&'a RawValue>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ToolConfig<'a> {
    function_calling_config: FunctionCallingConfig<'a>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct FunctionCallingConfig<'a> {
    mode: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    allowed_function_names: Option<[Cow<'a, str>; 1]>,
}

#[derive(Serialize)]
struct GContentOut<'a> {
    role: &'static str,
    parts: Vec<GPartOut<'a>>,
}

#[derive(Serialize)]
struct SystemOut<'a> {
    parts: Vec<GPartOut<'a>>,
}

/// A request part: `{"text": …}`, `{"inlineData": …}`, ….
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
enum GPartOut<'a> {
    Text(Cow<'a, str>),
    InlineData(Blob<'a>),
    FileData(FileData<'a>),
    FunctionCall(FunctionCallOut<'a>),
    FunctionResponse(FunctionResponseOut<'a>),
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Blob<'a> {
    mime_type: &'a str,
    data: &'a str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct FileData<'a> {
    mime_type: &'a str,
    file_uri: &'a str,
}

#[derive(Serialize)]
struct FunctionCallOut<'a> {
    name: &'a str,
    args: Box<RawValue>,
}

#[derive(Serialize)]
struct FunctionResponseOut<'a> {
    name: &'a str,
    response: ToolResponse<'a>,
}

/// A tool message's content: its JSON object, else `{"content": text}`.
#[derive(Serialize)]
#[serde(untagged)]
enum ToolResponse<'a> {
    Object(Box<RawValue>),
    Text { content: Cow<'a, str> },
}

#[derive(Serialize, Default)]
#[serde(rename_all = "camelCase")]
struct GenerationConfig<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    max_output_tokens: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_p: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_k: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    presence_penalty: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    frequency_penalty: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    seed: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    candidate_count: Option<u64>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    stop_sequences: Vec<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    response_mime_type: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    response_json_schema: Option<&'a RawValue>,
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
    }
}

#[derive(Deserialize)]
struct ResponseFormatIn<'a> {
    #[serde(rename = "type", default, borrow)]
    kind: LStr<'a>,
    #[serde(default, borrow)]
    json_schema: Lax<JsonSchemaIn<'a>>,
}

#[derive(Deserialize)]
struct JsonSchemaIn<'a> {
    #[serde(default, borrow)]
    schema: MaybeRaw<'a>,
}

fn response_format<'a>(v: &'a RawValue, gc: &mut GenerationConfig<'a>) -> Result<(), ApiError> {
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
    match o.kind.as_str() {
        Some("text") => {}
        Some("json_object") => gc.response_mime_type = Some("application/json"),
        Some("json_schema") => {
            gc.response_mime_type = Some("application/json");
            if let Lax::Ok(JsonSchemaIn {
                schema: MaybeRaw(Some(schema)),
            }) = o.json_schema
            {
                gc.response_json_schema = Some(schema);
            }
        }
        _ => return Err(bad()),
    }
    Ok(())
}

type Contents<'a> = Vec<(&'static str, Vec<GPartOut<'a>>)>;

/// OpenAI messages → (system parts, contents with alternating roles).
fn convert_messages<'a>(
    items: &'a [Lax<InMessage<'_>>],
) -> Result<(Vec<GPartOut<'a>>, Contents<'a>), ApiError> {
    let mut system = Vec::new();
    let mut contents: Contents<'a> = Vec::with_capacity(items.len());
    // tool_call id → function name, from the assistant turns seen so far.
    let mut names: Vec<(&'a str, &'a str)> = Vec::new();
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
        match role {
            "system" | "developer" => {
                let text = content_str(content, &param())?;
                if !text.is_empty() {
                    system.push(GPartOut::Text(text));
                }
            }
            "user" => push(&mut contents, "user", user_parts(content, i)?),
            "assistant" => {
                let text = match content {
                    Content::Parts(parts) => {
                        let mut s = String::new();
                        for (j, p) in parts.iter().enumerate() {
                            let Part::Obj(p) = p else {
                                return Err(invalid(
                                    format!("messages[{i}].content[{j}]"),
                                    "expected an object",
                                ));
                            };
                            match p.text_or_refusal() {
                                Some(t) => s.push_str(t),
                                None => {
                                    return Err(invalid(
                                        format!("messages[{i}].content[{j}]"),
                                        "only text parts are allowed here",
                                    ))
                                }
                            }
                        }
                        Cow::Owned(s)
                    }
                    other => content_str(other, &param())?,
                };
                let mut parts = Vec::new();
                if !text.is_empty() {
                    parts.push(GPartOut::Text(text));
                }
                function_calls(&msg.tool_calls, i, &mut parts, &mut names)?;
                push(&mut contents, "model", parts);
            }
            "tool" => {
                let id = msg.tool_call_id.as_str();
                let name = id
                    .and_then(|id| names.iter().rev().find(|(k, _)| *k == id))
                    .map(|(_, n)| *n)
                    .or_else(|| msg.name.as_str())
                    .ok_or_else(|| {
                        invalid(
                            format!("messages[{i}].tool_call_id"),
                            "does not match a tool call of an earlier assistant message \
                             (gemini needs the function name)",
                        )
                    })?;
                let text = content_str(content, &param())?;
                let response = match serde_json::from_str::<&RawValue>(&text) {
                    Ok(v) if t::is_object(v) => ToolResponse::Object(v.to_owned()),
                    _ => ToolResponse::Text { content: text },
                };
                push(
                    &mut contents,
                    "user",
                    vec![GPartOut::FunctionResponse(FunctionResponseOut {
                        name,
                        response,
                    })],
                );
            }
            other => {
                return Err(invalid(
                    format!("messages[{i}].role"),
                    format_args!(
                        "role {other:?} is not supported (use system, user, assistant or tool)"
                    ),
                ))
            }
        }
    }
    Ok((system, contents))
}

fn push<'a>(contents: &mut Contents<'a>, role: &'static str, parts: Vec<GPartOut<'a>>) {
    if parts.is_empty() {
        return;
    }
    match contents.last_mut() {
        Some((r, p)) if *r == role => p.extend(parts),
        _ => contents.push((role, parts)),
    }
}

fn user_parts<'a>(content: &'a Content<'_>, i: usize) -> Result<Vec<GPartOut<'a>>, ApiError> {
    let parts = match content {
        Content::Text(s) if s.is_empty() => return Ok(Vec::new()),
        Content::Text(s) => return Ok(vec![GPartOut::Text(Cow::Borrowed(s))]),
        Content::Null => return Ok(Vec::new()),
        Content::Parts(p) => p,
        Content::Bad => {
            return Err(invalid(
                format!("messages[{i}].content"),
                "expected a string or an array of parts",
            ))
        }
    };
    let mut out = Vec::with_capacity(parts.len());
    for (j, p) in parts.iter().enumerate() {
        let param = || format!("messages[{i}].content[{j}]");
        let Part::Obj(p) = p else {
            return Err(invalid(param(), "expected an object"));
        };
        match p.kind() {
            "text" => match p.text.as_str() {
                Some("") => {}
                Some(t) => out.push(GPartOut::Text(Cow::Borrowed(t))),
                None => return Err(invalid(param(), "a text part needs a string 'text'")),
            },
            "image_url" => {
                let url = p
                    .image_url
                    .0
                    .as_deref()
                    .ok_or_else(|| invalid(param(), "an image_url part needs image_url.url"))?;
                if let Some((mime, data)) = parse_data_url(url) {
                    out.push(GPartOut::InlineData(Blob {
                        mime_type: mime,
                        data,
                    }));
                } else if url.starts_with("https://")
                    || url.starts_with("http://")
                    || url.starts_with("gs://")
                {
                    out.push(GPartOut::FileData(FileData {
                        mime_type: mime_from_url(url),
                        file_uri: url,
                    }));
                } else {
                    return Err(invalid(
                        param(),
                        "image URLs must be http(s), gs:// or base64 data URLs",
                    ));
                }
            }
            other => {
                return Err(invalid(
                    param(),
                    format_args!("content parts of type {other:?} are not supported by gemini"),
                ))
            }
        }
    }
    Ok(out)
}

fn function_calls<'a>(
    calls: &'a LaxList<Lax<InToolCall<'_>>>,
    i: usize,
    parts: &mut Vec<GPartOut<'a>>,
    names: &mut Vec<(&'a str, &'a str)>,
) -> Result<(), ApiError> {
    for c in t::tool_calls(calls, i, false)? {
        if let Some(id) = c.id {
            names.push((id, c.name));
        }
        parts.push(GPartOut::FunctionCall(FunctionCallOut {
            name: c.name,
            args: c.args,
        }));
    }
    Ok(())
}

fn convert_tools<'a>(
    dep: &Deployment,
    tools: &'a LaxList<Lax<InTool<'_>>>,
) -> Result<Vec<FunctionDeclaration<'a>>, ApiError> {
    let tools = t::function_tools(dep, NAME, tools)?;
    Ok(tools
        .into_iter()
        .map(|(_, f, name)| FunctionDeclaration {
            name,
            description: f.description.as_str(),
            parameters_json_schema: f.parameters.0.filter(|p| t::is_object(p)),
        })
        .collect())
}

/// The `batchEmbedContents` body for an OpenAI embeddings request.
pub fn translate_embeddings_request(
    dep: &Deployment,
    req: &ClientRequest,
) -> Result<Vec<u8>, ApiError> {
    let mut m = body_object(req)?;
    let inputs: Vec<String> = match m.remove("input") {
        Some(Value::String(s)) => vec![s],
        Some(Value::Array(items)) if !items.is_empty() => items
            .into_iter()
            .map(|v| match v {
                Value::String(s) => Ok(s),
                _ => Err(invalid(
                    "input",
                    "gemini embeds text only: expected a string or an array of strings",
                )),
            })
            .collect::<Result<_, _>>()?,
        _ => {
            return Err(invalid(
                "input",
                "expected a non-empty string or array of strings",
            ))
        }
    };
    m.remove("model");
    let mut dims: Option<Value> = None;
    let mut rejected = Vec::new();
    for (k, v) in m {
        match k.as_str() {
            "dimensions" => dims = (!v.is_null()).then_some(v),
            // Honoured when the response is translated.
            "encoding_format" => {
                EmbeddingFormat::of_value(Some(&v))?;
            }
            "user" => {}
            _ if is_default(&k, &v) => {}
            _ => rejected.push(k),
        }
    }
    unsupported_all(dep, NAME, &mut rejected)?;
    let model = model_path(&dep.model);
    let requests: Vec<Value> = inputs
        .into_iter()
        .map(|text| {
            let mut r = Map::new();
            r.insert("model".into(), Value::String(model.clone()));
            r.insert("content".into(), json!({ "parts": [{ "text": text }] }));
            if let Some(d) = &dims {
                r.insert("outputDimensionality".into(), d.clone());
            }
            Value::Object(r)
        })
        .collect();
    serde_json::to_vec(&json!({ "requests": requests }))
        .map_err(|e| ApiError::internal(format!("serialising: {e}")))
}

// ---------------------------------------------------------------------------------------
// Response
// ---------------------------------------------------------------------------------------

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct GenResponse {
    #[serde(default)]
    candidates: Vec<Candidate>,
    #[serde(default)]
    usage_metadata: Option<GUsage>,
    #[serde(default)]
    model_version: Option<String>,
    #[serde(default)]
    response_id: Option<String>,
    #[serde(default)]
    prompt_feedback: Option<PromptFeedback>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct Candidate {
    #[serde(default)]
    content: Option<GContent>,
    #[serde(default)]
    finish_reason: Option<String>,
    #[serde(default)]
    index: Option<u32>,
}

#[derive(Deserialize, Default)]
struct GContent {
    #[serde(default)]
    parts: Vec<GPart>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct GPart {
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    thought: Option<bool>,
    #[serde(default)]
    function_call: Option<GFunctionCall>,
}

#[derive(Deserialize)]
struct GFunctionCall {
    name: String,
    #[serde(default)]
    args: Option<Value>,
    #[serde(default)]
    id: Option<String>,
}

#[derive(Deserialize, Default, Clone)]
#[serde(rename_all = "camelCase")]
struct GUsage {
    #[serde(default)]
    prompt_token_count: u64,
    #[serde(default)]
    candidates_token_count: u64,
    #[serde(default)]
    total_token_count: Option<u64>,
    #[serde(default)]
    cached_content_token_count: Option<u64>,
    #[serde(default)]
    thoughts_token_count: Option<u64>,
}

impl GUsage {
    fn openai(&self) -> Usage {
        let thoughts = self.thoughts_token_count.unwrap_or(0);
        // Upstream numbers: saturate rather than overflow.
        let completion = self.candidates_token_count.saturating_add(thoughts);
        Usage {
            prompt_tokens: self.prompt_token_count,
            completion_tokens: completion,
            total_tokens: self
                .total_token_count
                .unwrap_or(self.prompt_token_count.saturating_add(completion)),
            prompt_tokens_details: self
                .cached_content_token_count
                .map(|c| t::PromptDetails { cached_tokens: c }),
            completion_tokens_details: self.thoughts_token_count.map(|r| t::CompletionDetails {
                reasoning_tokens: r,
            }),
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct PromptFeedback {
    #[serde(default)]
    block_reason: Option<String>,
}

/// Gemini `finishReason` → OpenAI `finish_reason`.
pub fn finish_reason(reason: Option<&str>, tool_calls: bool) -> &'static str {
    match reason {
        Some("MAX_TOKENS") => "length",
        Some(
            "SAFETY" | "RECITATION" | "BLOCKLIST" | "PROHIBITED_CONTENT" | "SPII" | "IMAGE_SAFETY",
        ) => "content_filter",
        _ if tool_calls => "tool_calls",
        // STOP, LANGUAGE, OTHER, MALFORMED_FUNCTION_CALL, unspecified
        _ => "stop",
    }
}

fn arguments_string(args: Option<Value>) -> String {
    match args {
        None | Some(Value::Null) => "{}".to_string(),
        Some(v) => v.to_string(),
    }
}

/// A `generateContent` response → an OpenAI `chat.completion`.
pub fn translate_response(model: &str, body: &[u8]) -> Result<Bytes, ApiError> {
    let resp: GenResponse = serde_json::from_slice(body).map_err(|e| t::bad_body(NAME, e))?;
    let mut choices = Vec::with_capacity(resp.candidates.len().max(1));
    for (pos, cand) in resp.candidates.into_iter().enumerate() {
        let mut text = String::new();
        let mut reasoning: Option<String> = None;
        let mut tool_calls = Vec::new();
        for part in cand.content.map(|c| c.parts).unwrap_or_default() {
            if let Some(fc) = part.function_call {
                tool_calls.push(ToolCall {
                    id: fc.id.unwrap_or_else(|| t::random_id("call_")),
                    kind: "function",
                    function: FunctionCall {
                        name: fc.name,
                        arguments: arguments_string(fc.args),
                    },
                });
            } else if let Some(s) = part.text {
                if part.thought == Some(true) {
                    reasoning.get_or_insert_with(String::new).push_str(&s);
                } else if text.is_empty() {
                    text = s;
                } else {
                    text.push_str(&s);
                }
            }
        }
        let finish = finish_reason(cand.finish_reason.as_deref(), !tool_calls.is_empty());
        let content = (!text.is_empty() || tool_calls.is_empty()).then_some(text);
        choices.push(t::Choice {
            index: cand.index.unwrap_or(pos as u32),
            message: t::Message {
                role: "assistant",
                content,
                reasoning_content: reasoning,
                tool_calls,
                refusal: None,
            },
            logprobs: None,
            finish_reason: finish,
        });
    }
    if choices.is_empty() {
        // The prompt itself was blocked (promptFeedback.blockReason).
        let blocked = resp
            .prompt_feedback
            .as_ref()
            .and_then(|p| p.block_reason.as_ref())
            .is_some();
        choices.push(t::Choice {
            index: 0,
            message: t::Message {
                role: "assistant",
                content: Some(String::new()),
                reasoning_content: None,
                tool_calls: Vec::new(),
                refusal: None,
            },
            logprobs: None,
            finish_reason: if blocked { "content_filter" } else { "stop" },
        });
    }
    let id = resp
        .response_id
        .unwrap_or_else(|| t::random_id("chatcmpl-"));
    let completion = t::ChatCompletion {
        id: &id,
        object: "chat.completion",
        created: t::now_secs(),
        model: resp.model_version.as_deref().unwrap_or(model),
        choices,
        usage: resp.usage_metadata.unwrap_or_default().openai(),
    };
    serde_json::to_vec(&completion)
        .map(Bytes::from)
        .map_err(|e| ApiError::internal(format!("serialising: {e}")))
}

#[derive(Deserialize)]
struct EmbedResponse {
    #[serde(default)]
    embeddings: Vec<EmbedValues>,
}

#[derive(Deserialize)]
struct EmbedValues {
    #[serde(default)]
    values: Vec<f64>,
}

/// A `batchEmbedContents` response → an OpenAI embedding list, each vector in the
/// `encoding_format` the client asked for. Gemini reports no token counts for embeddings,
/// so usage is zero.
pub fn translate_embeddings_response(
    model: &str,
    body: &[u8],
    format: EmbeddingFormat,
) -> Result<Bytes, ApiError> {
    let resp: EmbedResponse = serde_json::from_slice(body).map_err(|e| t::bad_body(NAME, e))?;
    #[derive(serde::Serialize)]
    struct Item {
        object: &'static str,
        index: usize,
        embedding: Value,
    }
    let data: Vec<Item> = resp
        .embeddings
        .into_iter()
        .enumerate()
        .map(|(index, e)| Item {
            object: "embedding",
            index,
            embedding: format.encode(e.values),
        })
        .collect();
    serde_json::to_vec(&json!({
        "object": "list",
        "data": data,
        "model": model,
        "usage": { "prompt_tokens": 0, "total_tokens": 0 }
    }))
    .map(Bytes::from)
    .map_err(|e| ApiError::internal(format!("serialising: {e}")))
}

// ---------------------------------------------------------------------------------------
// Streaming
// ---------------------------------------------------------------------------------------

/// One streamed `GenerateContentResponse`, strings borrowed from the event.
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct StreamResponse<'a> {
    #[serde(default, borrow)]
    candidates: Vec<StreamCandidate<'a>>,
    #[serde(default)]
    usage_metadata: Option<GUsage>,
    #[serde(default, borrow)]
    model_version: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    response_id: Option<Cow<'a, str>>,
    #[serde(default)]
    prompt_feedback: Option<PromptFeedback>,
    /// An error inside a stream.
    #[serde(default)]
    error: Option<GError>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct StreamCandidate<'a> {
    #[serde(default, borrow)]
    content: Option<StreamContent<'a>>,
    #[serde(default, borrow)]
    finish_reason: Option<Cow<'a, str>>,
    #[serde(default)]
    index: Option<u32>,
}

#[derive(Deserialize, Default)]
struct StreamContent<'a> {
    #[serde(default, borrow)]
    parts: Vec<StreamPart<'a>>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct StreamPart<'a> {
    #[serde(default, borrow)]
    text: Option<Cow<'a, str>>,
    #[serde(default)]
    thought: Option<bool>,
    #[serde(default)]
    function_call: Option<GFunctionCall>,
}

#[derive(Default, Clone)]
struct CandidateState {
    started: bool,
    tools: u32,
    finished: bool,
}

/// Gemini SSE (`alt=sse`: one `GenerateContentResponse` per event) → OpenAI chunks.
pub struct GeminiStream {
    sse: SseParser,
    st: GeminiState,
}

/// What a [`GeminiStream`] knows besides its SSE buffer.
struct GeminiState {
    writer: Option<ChunkWriter>,
    model: String,
    include_usage: bool,
    candidates: Vec<CandidateState>,
    usage: Option<GUsage>,
}

impl GeminiStream {
    pub fn new(model: String, include_usage: bool) -> Self {
        GeminiStream {
            sse: SseParser::default(),
            st: GeminiState {
                writer: None,
                model,
                include_usage,
                candidates: Vec::new(),
                usage: None,
            },
        }
    }
}

fn candidate_state(
    candidates: &mut Vec<CandidateState>,
    index: u32,
) -> Option<&mut CandidateState> {
    let i = index as usize;
    if i >= 64 {
        return None;
    }
    if i >= candidates.len() {
        candidates.resize(i + 1, CandidateState::default());
    }
    Some(&mut candidates[i])
}

impl GeminiState {
    fn handle(&mut self, data: &[u8], out: &mut BytesMut) -> Result<(), UpstreamError> {
        if data.trim_ascii() == b"[DONE]" {
            return Ok(());
        }
        let resp: StreamResponse<'_> = serde_json::from_slice(data).map_err(|e| {
            t::stream_error(format!("gemini sent a stream event llmgw cannot read: {e}"))
        })?;
        if let Some(err) = resp.error {
            return Err(from_gerror(err, StatusCode::OK, None));
        }
        let w = match &mut self.writer {
            Some(w) => w,
            None => {
                let id = match resp.response_id {
                    Some(id) => id.into_owned(),
                    None => t::random_id("chatcmpl-"),
                };
                let model = match resp.model_version {
                    Some(m) => m.into_owned(),
                    None => self.model.clone(),
                };
                self.writer
                    .insert(ChunkWriter::new(id, model, self.include_usage))
            }
        };
        emit(
            &mut self.candidates,
            w,
            resp.candidates,
            resp.prompt_feedback,
            out,
        );
        if let Some(u) = resp.usage_metadata {
            self.usage = Some(u);
        }
        Ok(())
    }
}

fn emit(
    states: &mut Vec<CandidateState>,
    w: &ChunkWriter,
    candidates: Vec<StreamCandidate<'_>>,
    feedback: Option<PromptFeedback>,
    out: &mut BytesMut,
) {
    if candidates.is_empty() {
        if feedback.and_then(|f| f.block_reason).is_some() {
            if let Some(st) = candidate_state(states, 0) {
                if !st.finished {
                    st.finished = true;
                    let role = Delta {
                        role: Some("assistant"),
                        content: Some(""),
                        ..Delta::default()
                    };
                    w.delta(out, 0, &role, None);
                    w.delta(out, 0, &Delta::default(), Some("content_filter"));
                }
            }
        }
        return;
    }
    for (pos, cand) in candidates.into_iter().enumerate() {
        let index = cand.index.unwrap_or(pos as u32);
        let Some(st) = candidate_state(states, index) else {
            continue;
        };
        if st.finished {
            continue;
        }
        if !st.started {
            st.started = true;
            let role = Delta {
                role: Some("assistant"),
                content: Some(""),
                ..Delta::default()
            };
            w.delta(out, index, &role, None);
        }
        for part in cand.content.map(|c| c.parts).unwrap_or_default() {
            if let Some(fc) = part.function_call {
                let n = st.tools;
                st.tools += 1;
                let id = fc.id.unwrap_or_else(|| t::random_id("call_"));
                let first = Delta {
                    tool_calls: Some([ToolCallDelta {
                        index: n,
                        id: Some(&id),
                        kind: Some("function"),
                        function: FunctionDelta {
                            name: Some(&fc.name),
                            arguments: Some(""),
                        },
                    }]),
                    ..Delta::default()
                };
                w.delta(out, index, &first, None);
                let args = arguments_string(fc.args);
                let rest = Delta {
                    tool_calls: Some([ToolCallDelta {
                        index: n,
                        id: None,
                        kind: None,
                        function: FunctionDelta {
                            name: None,
                            arguments: Some(&args),
                        },
                    }]),
                    ..Delta::default()
                };
                w.delta(out, index, &rest, None);
            } else if let Some(text) = part.text {
                if text.is_empty() {
                    continue;
                }
                let d = if part.thought == Some(true) {
                    Delta {
                        reasoning_content: Some(&text),
                        ..Delta::default()
                    }
                } else {
                    Delta {
                        content: Some(&text),
                        ..Delta::default()
                    }
                };
                w.delta(out, index, &d, None);
            }
        }
        if let Some(reason) = cand.finish_reason.as_deref() {
            st.finished = true;
            let finish = finish_reason(Some(reason), st.tools > 0);
            w.delta(out, index, &Delta::default(), Some(finish));
        }
    }
}

impl StreamTranslator for GeminiStream {
    fn feed(&mut self, chunk: &[u8], out: &mut BytesMut) -> Result<(), UpstreamError> {
        self.sse.push(chunk)?;
        while let Some(ev) = self.sse.next_ref() {
            self.st.handle(&ev.data, out)?;
        }
        Ok(())
    }

    fn finish(&mut self, out: &mut BytesMut) -> Result<(), UpstreamError> {
        if let Some(ev) = self.sse.take_rest_ref() {
            self.st.handle(&ev.data, out)?;
        }
        let st = &self.st;
        let all_done =
            !st.candidates.is_empty() && st.candidates.iter().all(|c| c.finished || !c.started);
        let Some(w) = st.writer.as_ref().filter(|_| all_done) else {
            return Err(t::stream_error(
                "the gemini stream ended before a finish reason",
            ));
        };
        if let Some(u) = &st.usage {
            w.usage(out, &u.openai());
        } else {
            w.usage(out, &Usage::default());
        }
        w.done(out);
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------

#[derive(Deserialize, Default)]
struct GError {
    #[serde(default)]
    code: Option<u16>,
    #[serde(default)]
    message: String,
    #[serde(default)]
    status: String,
    #[serde(default)]
    details: Vec<Value>,
}

#[derive(Deserialize)]
struct GErrorEnvelope {
    error: GError,
}

/// A Gemini (Google API) error response → error class and an OpenAI-shaped error.
pub fn map_error(status: StatusCode, headers: &HeaderMap, body: &[u8]) -> UpstreamError {
    let retry_after = super::retry_after(headers);
    match serde_json::from_slice::<GErrorEnvelope>(body) {
        Ok(env) => from_gerror(env.error, status, retry_after),
        Err(_) => {
            let mut e = super::openai_style_error(status, headers, body);
            e.raw_body = None;
            e
        }
    }
}

/// `RetryInfo.retryDelay` ("30s", "1.5s") from a Google error's details.
fn retry_delay(details: &[Value]) -> Option<std::time::Duration> {
    details.iter().find_map(|d| {
        let kind = d.get("@type")?.as_str()?;
        if !kind.ends_with("RetryInfo") {
            return None;
        }
        let s = d.get("retryDelay")?.as_str()?.strip_suffix('s')?;
        crate::duration::clamp_secs_f64(s.parse().ok()?)
    })
}

fn from_gerror(
    err: GError,
    status: StatusCode,
    retry_after: Option<std::time::Duration>,
) -> UpstreamError {
    use ErrorClass as C;
    let http = err
        .code
        .filter(|c| (400..600).contains(c))
        .unwrap_or(status.as_u16());
    let lower = err.message.to_ascii_lowercase();
    let key_invalid = lower.contains("api key")
        || err
            .details
            .iter()
            .any(|d| d.get("reason").and_then(Value::as_str) == Some("API_KEY_INVALID"));
    let gstatus = if err.status.is_empty() {
        match http {
            400 => "INVALID_ARGUMENT",
            401 => "UNAUTHENTICATED",
            403 => "PERMISSION_DENIED",
            404 => "NOT_FOUND",
            429 => "RESOURCE_EXHAUSTED",
            503 => "UNAVAILABLE",
            504 => "DEADLINE_EXCEEDED",
            _ => "INTERNAL",
        }
    } else {
        err.status.as_str()
    };
    let (class, client, otype, code): (C, u16, &'static str, Option<&str>) = match gstatus {
        "INVALID_ARGUMENT" | "FAILED_PRECONDITION" | "OUT_OF_RANGE" if key_invalid => (
            C::Authentication,
            401,
            "authentication_error",
            Some("invalid_api_key"),
        ),
        "INVALID_ARGUMENT" | "FAILED_PRECONDITION" | "OUT_OF_RANGE"
            if lower.contains("exceeds the maximum number of tokens")
                || lower.contains("input token count")
                || lower.contains("context window")
                || lower.contains("context length") =>
        {
            (
                C::ContextWindow,
                400,
                "invalid_request_error",
                Some("context_length_exceeded"),
            )
        }
        "INVALID_ARGUMENT" | "FAILED_PRECONDITION" | "OUT_OF_RANGE" => {
            (C::BadRequest, 400, "invalid_request_error", None)
        }
        "UNAUTHENTICATED" => (
            C::Authentication,
            401,
            "authentication_error",
            Some("invalid_api_key"),
        ),
        "PERMISSION_DENIED" => (C::Authentication, 403, "permission_error", None),
        "NOT_FOUND" => (C::NotFound, 404, "invalid_request_error", None),
        "RESOURCE_EXHAUSTED" => (
            C::RateLimit,
            429,
            "rate_limit_error",
            Some("rate_limit_exceeded"),
        ),
        "UNAVAILABLE" => (C::ServiceUnavailable, 503, "service_unavailable", None),
        "DEADLINE_EXCEEDED" => (C::Timeout, 504, "timeout_error", Some("upstream_timeout")),
        _ => (
            C::InternalServer,
            if http >= 500 { http } else { 500 },
            "upstream_error",
            None,
        ),
    };
    let retry_after = retry_after.or_else(|| retry_delay(&err.details));
    let message = if err.message.is_empty() {
        format!("gemini returned {gstatus}")
    } else {
        format!("gemini: {}", err.message)
    };
    let status = StatusCode::from_u16(client).unwrap_or(StatusCode::BAD_GATEWAY);
    UpstreamError::mapped(class, status, otype, message, code, retry_after)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ProviderKind;
    use crate::providers::translate::testing::{assemble, client, deployment, events, request};

    fn dep() -> Deployment {
        deployment(ProviderKind::Gemini, "gemini-test", false)
    }

    fn translate(dep: &Deployment, body: Value) -> Result<Value, ApiError> {
        let req = request(Endpoint::ChatCompletions, body);
        translate_request(dep, &req).map(|b| serde_json::from_slice(&b).unwrap())
    }

    #[test]
    fn plain_chat_request_and_urls() {
        let body = json!({"model": "g", "messages": [{"role": "user", "content": "Hi"}]});
        assert_eq!(
            translate(&dep(), body.clone()).unwrap(),
            json!({"contents": [{"role": "user", "parts": [{"text": "Hi"}]}]})
        );
        let d = dep();
        let r = Gemini
            .build(&client(), &d, &request(Endpoint::ChatCompletions, body))
            .unwrap()
            .build()
            .unwrap();
        assert_eq!(
            r.url().as_str(),
            "http://127.0.0.1:9/v1/models/gemini-test:generateContent"
        );
        assert!(r.headers()["x-goog-api-key"].is_sensitive());
        let stream =
            json!({"model": "g", "stream": true, "messages": [{"role": "user", "content": "Hi"}]});
        let r = Gemini
            .build(&client(), &d, &request(Endpoint::ChatCompletions, stream))
            .unwrap()
            .build()
            .unwrap();
        assert_eq!(
            r.url().as_str(),
            "http://127.0.0.1:9/v1/models/gemini-test:streamGenerateContent?alt=sse"
        );
        assert!(!r.url().as_str().contains("sk-test"));
        let completions = request(Endpoint::Completions, json!({"model": "g", "prompt": "x"}));
        assert!(Gemini.build(&client(), &d, &completions).is_err());
    }

    #[test]
    fn multi_turn_with_system_prompt() {
        let out = translate(
            &dep(),
            json!({"model": "g", "temperature": 0.3, "top_p": 0.8, "max_tokens": 50,
            "stop": ["a", "b"], "n": 2, "seed": 5,
            "response_format": {"type": "json_object"},
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello!"},
                {"role": "user", "content": "Bye"},
                {"role": "user", "content": [{"type": "text", "text": "now"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBO"}}]}
            ]}),
        )
        .unwrap();
        assert_eq!(
            out["systemInstruction"],
            json!({"parts": [{"text": "Be brief."}]})
        );
        assert_eq!(
            out["generationConfig"],
            json!({"temperature": 0.3, "topP": 0.8, "maxOutputTokens": 50,
                "stopSequences": ["a", "b"], "candidateCount": 2, "seed": 5,
                "responseMimeType": "application/json"})
        );
        let c = out["contents"].as_array().unwrap();
        assert_eq!(c.len(), 3);
        assert_eq!(c[1]["role"], "model");
        assert_eq!(
            c[2]["parts"],
            json!([{"text": "Bye"}, {"text": "now"}, {"inlineData": {"mimeType": "image/png", "data": "iVBO"}}])
        );
    }

    #[test]
    fn tool_call_and_tool_result_request() {
        let out = translate(
            &dep(),
            json!({"model": "g",
                "tools": [{"type": "function", "function": {"name": "get_weather", "description": "Weather",
                    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "additionalProperties": false}}}],
                "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
                "messages": [
                    {"role": "user", "content": "Weather in Paris?"},
                    {"role": "assistant", "content": null, "tool_calls": [
                        {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}]},
                    {"role": "tool", "tool_call_id": "call_1", "content": "{\"temp\": 18}"},
                    {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}
                ]}),
        )
        .unwrap();
        assert_eq!(
            out["tools"],
            json!([{"functionDeclarations": [{"name": "get_weather", "description": "Weather",
                "parametersJsonSchema": {"type": "object", "properties": {"city": {"type": "string"}}, "additionalProperties": false}}]}])
        );
        assert_eq!(
            out["toolConfig"],
            json!({"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["get_weather"]}})
        );
        let c = out["contents"].as_array().unwrap();
        assert_eq!(
            c[1],
            json!({"role": "model", "parts": [{"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}}]})
        );
        assert_eq!(
            c[2],
            json!({"role": "user", "parts": [
                {"functionResponse": {"name": "get_weather", "response": {"temp": 18}}},
                {"functionResponse": {"name": "get_weather", "response": {"content": "sunny"}}}]})
        );
        let e = translate(
            &dep(),
            json!({"model": "g", "messages": [{"role": "tool", "tool_call_id": "nope", "content": "x"}]}),
        )
        .unwrap_err();
        assert_eq!(e.param.as_deref(), Some("messages[0].tool_call_id"));
        for (choice, mode) in [("auto", "AUTO"), ("none", "NONE"), ("required", "ANY")] {
            let out = translate(
                &dep(),
                json!({"model": "g", "tool_choice": choice, "messages": [{"role": "user", "content": "x"}]}),
            )
            .unwrap();
            assert_eq!(out["toolConfig"]["functionCallingConfig"]["mode"], mode);
        }
    }

    #[test]
    fn unsupported_params_rejected_or_dropped() {
        let body = json!({"model": "g", "logprobs": true, "top_logprobs": 2, "messages": [{"role": "user", "content": "x"}]});
        let e = translate(&dep(), body.clone()).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("logprobs"));
        assert!(e.message.contains("top_logprobs"));
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        let out = translate(&deployment(ProviderKind::Gemini, "m", true), body).unwrap();
        assert!(out.get("logprobs").is_none() && out.get("generationConfig").is_none());
        // logprobs: false asks for nothing and is accepted.
        translate(
            &dep(),
            json!({"model": "g", "logprobs": false, "messages": [{"role": "user", "content": "x"}]}),
        )
        .unwrap();
    }

    #[test]
    fn responses_and_finish_reasons() {
        let body = br#"{"candidates":[{"content":{"parts":[{"text":"Hello"},{"text":" there"}],"role":"model"},"finishReason":"STOP","index":0}],
            "usageMetadata":{"promptTokenCount":8,"candidatesTokenCount":6,"totalTokenCount":14,"cachedContentTokenCount":2},
            "modelVersion":"gemini-test-001","responseId":"resp-1"}"#;
        let v: Value =
            serde_json::from_slice(&translate_response("gemini-test", body).unwrap()).unwrap();
        assert_eq!(v["id"], "resp-1");
        assert_eq!(v["model"], "gemini-test-001");
        assert_eq!(v["choices"][0]["message"]["content"], "Hello there");
        assert_eq!(v["choices"][0]["finish_reason"], "stop");
        assert_eq!(
            v["usage"],
            json!({"prompt_tokens": 8, "completion_tokens": 6, "total_tokens": 14,
                "prompt_tokens_details": {"cached_tokens": 2}})
        );
        let body = br#"{"candidates":[{"content":{"parts":[{"functionCall":{"name":"get_weather","args":{"city":"Paris"}}}],"role":"model"},"finishReason":"STOP"}],
            "usageMetadata":{"promptTokenCount":3,"candidatesTokenCount":4,"totalTokenCount":7}}"#;
        let v: Value =
            serde_json::from_slice(&translate_response("gemini-test", body).unwrap()).unwrap();
        let m = &v["choices"][0]["message"];
        assert!(m["content"].is_null());
        assert_eq!(m["tool_calls"][0]["function"]["name"], "get_weather");
        assert_eq!(
            m["tool_calls"][0]["function"]["arguments"],
            "{\"city\":\"Paris\"}"
        );
        assert!(m["tool_calls"][0]["id"]
            .as_str()
            .unwrap()
            .starts_with("call_"));
        assert_eq!(v["choices"][0]["finish_reason"], "tool_calls");
        for (reason, want) in [
            ("STOP", "stop"),
            ("MAX_TOKENS", "length"),
            ("SAFETY", "content_filter"),
            ("RECITATION", "content_filter"),
            ("BLOCKLIST", "content_filter"),
            ("PROHIBITED_CONTENT", "content_filter"),
            ("SPII", "content_filter"),
            ("OTHER", "stop"),
        ] {
            let body = format!(
                r#"{{"candidates":[{{"content":{{"parts":[{{"text":"x"}}]}},"finishReason":"{reason}"}}]}}"#
            );
            let v: Value =
                serde_json::from_slice(&translate_response("m", body.as_bytes()).unwrap()).unwrap();
            assert_eq!(v["choices"][0]["finish_reason"], want, "{reason}");
        }
        let blocked = br#"{"promptFeedback":{"blockReason":"SAFETY"},"usageMetadata":{"promptTokenCount":3}}"#;
        let v: Value = serde_json::from_slice(&translate_response("m", blocked).unwrap()).unwrap();
        assert_eq!(v["choices"][0]["finish_reason"], "content_filter");
        assert!(translate_response("m", b"{oops").is_err());
    }

    const TEXT_STREAM: &str = "data: {\"candidates\": [{\"content\": {\"parts\": [{\"text\": \"Grüße\"}],\"role\": \"model\"},\"index\": 0}],\"usageMetadata\": {\"promptTokenCount\": 8,\"totalTokenCount\": 8},\"modelVersion\": \"gemini-test\"}\r\n\r\ndata: {\"candidates\": [{\"content\": {\"parts\": [{\"text\": \", quick brown 🦊\"}],\"role\": \"model\"},\"index\": 0}],\"usageMetadata\": {\"promptTokenCount\": 8,\"totalTokenCount\": 8},\"modelVersion\": \"gemini-test\"}\r\n\r\ndata: {\"candidates\": [{\"content\": {\"parts\": [{\"text\": \" jumps.\"}],\"role\": \"model\"},\"finishReason\": \"STOP\",\"index\": 0}],\"usageMetadata\": {\"promptTokenCount\": 8,\"candidatesTokenCount\": 6,\"totalTokenCount\": 14},\"modelVersion\": \"gemini-test\"}\r\n\r\n";

    const TOOL_STREAM: &str = "data: {\"candidates\": [{\"content\": {\"parts\": [{\"functionCall\": {\"name\": \"get_weather\",\"args\": {\"city\": \"Paris\"}}}],\"role\": \"model\"},\"finishReason\": \"STOP\",\"index\": 0}],\"usageMetadata\": {\"promptTokenCount\": 20,\"candidatesTokenCount\": 5,\"totalTokenCount\": 25}}\r\n\r\n";

    fn run(stream: &[u8], pieces: &[usize], include_usage: bool) -> Result<Vec<u8>, UpstreamError> {
        let mut tr = GeminiStream::new("gemini-test".into(), include_usage);
        let mut out = BytesMut::new();
        let mut at = 0;
        for &p in pieces.iter().chain(std::iter::once(&stream.len())) {
            tr.feed(&stream[at..p], &mut out)?;
            at = p;
        }
        tr.finish(&mut out)?;
        Ok(out.to_vec())
    }

    #[test]
    fn streaming_text_split_anywhere() {
        let s = TEXT_STREAM.as_bytes();
        let whole = events(&run(s, &[], false).unwrap());
        let (text, _, finish) = assemble(&whole);
        assert_eq!(text, "Grüße, quick brown 🦊 jumps.");
        assert_eq!(finish.as_deref(), Some("stop"));
        assert_eq!(whole[0]["choices"][0]["delta"]["role"], "assistant");
        assert_eq!(whole.last().unwrap(), "[DONE]");
        assert!(whole.iter().all(|e| e.get("usage").is_none()));
        for cut in 1..s.len() {
            let got = events(&run(s, &[cut], false).unwrap());
            assert_eq!(assemble(&got), assemble(&whole), "split at byte {cut}");
        }
        let bytewise: Vec<usize> = (1..s.len()).collect();
        assert_eq!(
            assemble(&events(&run(s, &bytewise, false).unwrap())),
            assemble(&whole)
        );
    }

    #[test]
    fn streaming_usage_with_include_usage() {
        let ev = events(&run(TEXT_STREAM.as_bytes(), &[], true).unwrap());
        let n = ev.len();
        assert_eq!(ev[n - 1], "[DONE]");
        assert_eq!(ev[n - 2]["choices"], json!([]));
        assert_eq!(
            ev[n - 2]["usage"],
            json!({"prompt_tokens": 8, "completion_tokens": 6, "total_tokens": 14})
        );
        assert!(ev[..n - 2].iter().all(|e| e["usage"].is_null()));
    }

    #[test]
    fn streaming_tool_call() {
        let ev = events(&run(TOOL_STREAM.as_bytes(), &[40], false).unwrap());
        let (text, tools, finish) = assemble(&ev);
        assert_eq!(text, "");
        assert_eq!(tools.len(), 1);
        assert!(tools[0].0.starts_with("call_"));
        assert_eq!(tools[0].1, "get_weather");
        assert_eq!(tools[0].2, "{\"city\":\"Paris\"}");
        assert_eq!(finish.as_deref(), Some("tool_calls"));
    }

    #[test]
    fn stream_errors() {
        let err = "data: {\"candidates\": [{\"content\": {\"parts\": [{\"text\": \"a\"}]}}]}\r\n\r\ndata: {\"error\": {\"code\": 503, \"message\": \"The model is overloaded.\", \"status\": \"UNAVAILABLE\"}}\r\n\r\n";
        let e = run(err.as_bytes(), &[], false).unwrap_err();
        assert_eq!(e.class, ErrorClass::ServiceUnavailable);
        // Ended without a finish reason.
        let cut = &TEXT_STREAM.as_bytes()[..TEXT_STREAM.len() - 200];
        assert!(run(cut, &[], false).is_err());
        assert!(run(b"", &[], false).is_err());
        assert!(run(b"data: {oops\n\n", &[], false).is_err());
    }

    #[test]
    fn request_details_kept() {
        let out = translate(
            &dep(),
            json!({"model": "g", "presence_penalty": 0.5, "frequency_penalty": -0.5, "top_k": 3,
                "n": 1, "user": 7, "stop": null, "max_tokens": null, "max_completion_tokens": 9,
                "response_format": {"type": "json_schema", "json_schema": {"name": "x",
                    "schema": {"type": "object", "properties": {"a": {"type": "integer"}}}}},
                "tools": [{"type": "function", "function": {"name": "f", "parameters": "none"}}],
                "messages": [
                    {"role": "developer", "content": [{"type": "text", "text": "Be"}, " brief"]},
                    {"role": "user", "content": [
                        {"type": "image_url", "image_url": "gs://bucket/a.webp"},
                        {"type": "image_url", "image_url": {"url": "data:;base64,AAAA"}},
                        {"type": "text", "text": ""}]},
                    {"role": "assistant", "content": [{"type": "text", "text": "a"}, {"type": "refusal", "refusal": "b"}],
                        "tool_calls": [{"id": "x1", "function": {"name": "g", "arguments": {"k": 1}}}]},
                    {"role": "tool", "tool_call_id": "x1", "content": [{"type": "text", "text": "[1]"}]},
                    {"role": "tool", "tool_call_id": "unknown", "name": "h", "content": "{\"ok\": true}"}
                ]}),
        )
        .unwrap();
        assert_eq!(
            out["generationConfig"],
            json!({"maxOutputTokens": 9, "presencePenalty": 0.5, "frequencyPenalty": -0.5,
                "topK": 3, "responseMimeType": "application/json",
                "responseJsonSchema": {"type": "object", "properties": {"a": {"type": "integer"}}}})
        );
        assert_eq!(
            out["tools"],
            json!([{"functionDeclarations": [{"name": "f"}]}])
        );
        assert_eq!(
            out["systemInstruction"],
            json!({"parts": [{"text": "Be brief"}]})
        );
        let c = out["contents"].as_array().unwrap();
        assert_eq!(
            c[0],
            json!({"role": "user", "parts": [
                {"fileData": {"mimeType": "image/webp", "fileUri": "gs://bucket/a.webp"}},
                {"inlineData": {"mimeType": "image/png", "data": "AAAA"}}]})
        );
        assert_eq!(
            c[1],
            json!({"role": "model", "parts": [{"text": "ab"},
                {"functionCall": {"name": "g", "args": {"k": 1}}}]})
        );
        assert_eq!(
            c[2],
            json!({"role": "user", "parts": [
                {"functionResponse": {"name": "g", "response": {"content": "[1]"}}},
                {"functionResponse": {"name": "h", "response": {"ok": true}}}]})
        );
        let out = translate(
            &dep(),
            json!({"model": "g", "response_format": {"type": "text"}, "messages": []}),
        )
        .unwrap();
        assert_eq!(out, json!({"contents": []}));
    }

    #[test]
    fn malformed_requests_name_the_field() {
        let cases = [
            (json!({"model": "g", "messages": "hi"}), "messages"),
            (
                json!({"model": "g", "messages": [{"role": "user", "content": true}]}),
                "messages[0].content",
            ),
            (
                json!({"model": "g", "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "file:///x"}}]}]}),
                "messages[0].content[0]",
            ),
            (
                json!({"model": "g", "messages": [{"role": "assistant", "content": ["x"]}]}),
                "messages[0].content[0]",
            ),
            (
                json!({"model": "g", "messages": [{"role": "assistant", "content": [{"type": "image_url"}]}]}),
                "messages[0].content[0]",
            ),
            (
                json!({"model": "g", "messages": [{"role": "assistant", "content": 1}]}),
                "messages[0].content",
            ),
            (
                json!({"model": "g", "messages": [{"role": "assistant", "tool_calls": [{"id": "a", "function": {"name": "f", "arguments": "{x"}}]}]}),
                "messages[0].tool_calls[0].function.arguments",
            ),
            (
                json!({"model": "g", "messages": [{"role": "tool", "tool_call_id": 5, "content": "x"}]}),
                "messages[0].tool_call_id",
            ),
            (json!({"model": "g", "n": 0, "messages": []}), "n"),
            (json!({"model": "g", "n": "2", "messages": []}), "n"),
            (
                json!({"model": "g", "response_format": "json", "messages": []}),
                "response_format",
            ),
            (
                json!({"model": "g", "response_format": {"type": "yaml"}, "messages": []}),
                "response_format",
            ),
            (
                json!({"model": "g", "response_format": {}, "messages": []}),
                "response_format",
            ),
            (
                json!({"model": "g", "tool_choice": "sometimes", "messages": []}),
                "tool_choice",
            ),
            (
                json!({"model": "g", "tool_choice": {"function": {"name": 1}}, "messages": []}),
                "tool_choice",
            ),
            (
                json!({"model": "g", "tools": [{"function": {"name": "f", "strict": true}}], "messages": []}),
                "tools[0].function.strict",
            ),
            (
                json!({"model": "g", "stop": [null], "messages": []}),
                "stop",
            ),
        ];
        for (body, param) in cases {
            let e = translate(&dep(), body.clone()).expect_err(&body.to_string());
            assert_eq!(e.status, StatusCode::BAD_REQUEST, "{body}");
            assert_eq!(e.param.as_deref(), Some(param), "{body}: {}", e.message);
        }
    }

    #[test]
    fn stream_thoughts_and_escapes() {
        let s = "data: {\"candidates\":[{\"content\":{\"parts\":[{\"text\":\"plan \\\"x\\\"\",\"thought\":true},{\"text\":\"A\\u00e9\\n\"}]},\"index\":0}],\"responseId\":\"r\\/1\"}\n\n\
            data: {\"candidates\":[{\"content\":{\"parts\":[]},\"finishReason\":\"MAX_TOKENS\",\"index\":0}],\"usageMetadata\":{\"promptTokenCount\":2,\"candidatesTokenCount\":3,\"thoughtsTokenCount\":1,\"totalTokenCount\":6}}\n\n\
            data: [DONE]\n\n";
        let ev = events(&run(s.as_bytes(), &[], true).unwrap());
        assert_eq!(ev[0]["id"], "r/1");
        assert_eq!(ev[0]["model"], "gemini-test");
        assert_eq!(
            ev[1]["choices"][0]["delta"]["reasoning_content"],
            "plan \"x\""
        );
        assert_eq!(ev[2]["choices"][0]["delta"]["content"], "Aé\n");
        assert_eq!(ev[3]["choices"][0]["finish_reason"], "length");
        assert_eq!(
            ev[4]["usage"],
            json!({"prompt_tokens": 2, "completion_tokens": 4, "total_tokens": 6,
                "completion_tokens_details": {"reasoning_tokens": 1}})
        );
        assert_eq!(ev[5], "[DONE]");
        // A blocked prompt ends the stream with content_filter.
        let blocked = "data: {\"promptFeedback\":{\"blockReason\":\"SAFETY\"}}\n\n";
        let ev = events(&run(blocked.as_bytes(), &[], false).unwrap());
        assert_eq!(ev[1]["choices"][0]["finish_reason"], "content_filter");
        assert!(run(b"data: {\"candidates\": 5}\n\n", &[], false).is_err());
    }

    #[test]
    fn error_mapping() {
        let h = HeaderMap::new();
        let e = map_error(
            StatusCode::TOO_MANY_REQUESTS,
            &h,
            br#"{"error":{"code":429,"message":"Resource has been exhausted (e.g. check quota).","status":"RESOURCE_EXHAUSTED",
              "details":[{"@type":"type.googleapis.com/google.rpc.RetryInfo","retryDelay":"21s"}]}}"#,
        );
        assert_eq!(e.class, ErrorClass::RateLimit);
        assert_eq!(e.error.status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(e.retry_after, Some(std::time::Duration::from_secs(21)));
        let e = map_error(
            StatusCode::BAD_REQUEST,
            &h,
            br#"{"error":{"code":400,"message":"API key not valid. Please pass a valid API key.","status":"INVALID_ARGUMENT",
              "details":[{"@type":"type.googleapis.com/google.rpc.ErrorInfo","reason":"API_KEY_INVALID"}]}}"#,
        );
        assert_eq!(e.class, ErrorClass::Authentication);
        assert_eq!(e.error.status, StatusCode::UNAUTHORIZED);
        for (status, gstatus, msg, class) in [
            (503, "UNAVAILABLE", "The model is overloaded.", ErrorClass::ServiceUnavailable),
            (400, "INVALID_ARGUMENT", "Invalid JSON payload received.", ErrorClass::BadRequest),
            (400, "INVALID_ARGUMENT", "The input token count (1200000) exceeds the maximum number of tokens allowed (1048576).", ErrorClass::ContextWindow),
            (403, "PERMISSION_DENIED", "denied", ErrorClass::Authentication),
            (404, "NOT_FOUND", "models/x is not found", ErrorClass::NotFound),
            (500, "INTERNAL", "An internal error has occurred.", ErrorClass::InternalServer),
            (504, "DEADLINE_EXCEEDED", "Deadline", ErrorClass::Timeout),
        ] {
            let body = format!(r#"{{"error":{{"code":{status},"message":"{msg}","status":"{gstatus}"}}}}"#);
            let e = map_error(StatusCode::from_u16(status).unwrap(), &h, body.as_bytes());
            assert_eq!(e.class, class, "{gstatus}");
            assert_eq!(e.error.status.as_u16(), status, "{gstatus}");
            assert!(e.raw_body.is_none());
        }
        let e = map_error(StatusCode::BAD_GATEWAY, &h, b"<html>bad gateway</html>");
        assert_eq!(e.class, ErrorClass::InternalServer);
    }

    #[test]
    fn embeddings_round_trip() {
        let d = dep();
        let req = request(
            Endpoint::Embeddings,
            json!({"model": "g", "input": ["a", "b"], "dimensions": 3, "encoding_format": "float"}),
        );
        let body: Value =
            serde_json::from_slice(&translate_embeddings_request(&d, &req).unwrap()).unwrap();
        assert_eq!(
            body,
            json!({"requests": [
                {"model": "models/gemini-test", "content": {"parts": [{"text": "a"}]}, "outputDimensionality": 3},
                {"model": "models/gemini-test", "content": {"parts": [{"text": "b"}]}, "outputDimensionality": 3}]})
        );
        let r = Gemini.build(&client(), &d, &req).unwrap().build().unwrap();
        assert!(r
            .url()
            .as_str()
            .ends_with("/models/gemini-test:batchEmbedContents"));
        let single = request(Endpoint::Embeddings, json!({"model": "g", "input": "a"}));
        let body: Value =
            serde_json::from_slice(&translate_embeddings_request(&d, &single).unwrap()).unwrap();
        assert_eq!(body["requests"].as_array().unwrap().len(), 1);
        let tokens = request(Endpoint::Embeddings, json!({"model": "g", "input": [1, 2]}));
        assert!(translate_embeddings_request(&d, &tokens).is_err());
        let out: Value = serde_json::from_slice(
            &translate_embeddings_response(
                "gemini-test",
                br#"{"embeddings":[{"values":[0.1,0.2]},{"values":[0.3,0.4]}]}"#,
                EmbeddingFormat::Float,
            )
            .unwrap(),
        )
        .unwrap();
        assert_eq!(out["object"], "list");
        assert_eq!(
            out["data"][1],
            json!({"object": "embedding", "index": 1, "embedding": [0.3, 0.4]})
        );
    }

    /// The OpenAI SDKs ask for base64 unless told otherwise: little-endian float32 bytes.
    #[test]
    fn embeddings_in_base64() {
        let d = dep();
        let req = request(
            Endpoint::Embeddings,
            json!({"model": "g", "input": "a", "encoding_format": "base64"}),
        );
        assert!(translate_embeddings_request(&d, &req).is_ok());
        let format = EmbeddingFormat::of_request(&req.body).unwrap();
        assert_eq!(format, EmbeddingFormat::Base64);
        let out: Value = serde_json::from_slice(
            &translate_embeddings_response(
                "gemini-test",
                br#"{"embeddings":[{"values":[1.0,-2.5,0.1]}]}"#,
                format,
            )
            .unwrap(),
        )
        .unwrap();
        use base64::Engine as _;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(out["data"][0]["embedding"].as_str().unwrap())
            .unwrap();
        let floats: Vec<f32> = bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        assert_eq!(floats, [1.0, -2.5, 0.1f32]);
        for bad in [json!("int8"), json!(1)] {
            let req = request(
                Endpoint::Embeddings,
                json!({"model": "g", "input": "a", "encoding_format": bad}),
            );
            let err = translate_embeddings_request(&d, &req).unwrap_err();
            assert_eq!(err.status.as_u16(), 400);
            assert_eq!(err.param.as_deref(), Some("encoding_format"), "{err:?}");
        }
    }
}
