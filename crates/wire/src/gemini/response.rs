//! Gemini `generateContent` answers decoded into the hub: candidates → choices, finish
//! reasons and `usageMetadata` mapped.

use super::NAME;
use crate::hub::{self, Stop, StopReason, ToolCallOut};
use crate::translate as t;
use llmgw_core::error::ApiError;
use serde::Deserialize;
use serde_json::Value;

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
pub(super) struct GFunctionCall {
    pub name: String,
    #[serde(default)]
    pub args: Option<Value>,
    #[serde(default)]
    pub id: Option<String>,
}

/// Gemini `usageMetadata`.
#[derive(Deserialize, Default, Clone, Copy)]
#[serde(rename_all = "camelCase")]
pub(super) struct GUsage {
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
    pub(super) fn hub(&self) -> hub::Usage {
        // Upstream numbers: saturate rather than overflow.
        hub::Usage {
            input: self.prompt_token_count,
            output: self
                .candidates_token_count
                .saturating_add(self.thoughts_token_count.unwrap_or(0)),
            cache_read: self.cached_content_token_count,
            cache_write: None,
            reasoning: self.thoughts_token_count,
            total: self.total_token_count,
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub(super) struct PromptFeedback {
    #[serde(default)]
    pub block_reason: Option<String>,
}

/// Gemini `finishReason` → hub (`tool_calls`: the candidate called a function).
pub fn stop_reason(reason: Option<&str>, tool_calls: bool) -> StopReason {
    match reason {
        Some("MAX_TOKENS") => StopReason::MaxTokens,
        Some(
            "SAFETY" | "RECITATION" | "BLOCKLIST" | "PROHIBITED_CONTENT" | "SPII" | "IMAGE_SAFETY",
        ) => StopReason::ContentFilter,
        _ if tool_calls => StopReason::ToolUse,
        // STOP, LANGUAGE, OTHER, MALFORMED_FUNCTION_CALL, unspecified
        _ => StopReason::End,
    }
}

/// A function call's `args` as JSON text (`{}` when absent).
pub(super) fn arguments_string(args: Option<Value>) -> String {
    match args {
        None | Some(Value::Null) => "{}".to_string(),
        Some(v) => v.to_string(),
    }
}

/// A `generateContent` response → the hub form.
pub fn decode(model: &str, body: &[u8]) -> Result<hub::Response, ApiError> {
    let resp: GenResponse = serde_json::from_slice(body).map_err(|e| t::bad_body(NAME, e))?;
    let mut choices = Vec::with_capacity(resp.candidates.len().max(1));
    for (pos, cand) in resp.candidates.into_iter().enumerate() {
        let mut c = hub::Choice {
            index: cand.index.unwrap_or(pos as u32),
            ..hub::Choice::default()
        };
        for part in cand.content.map(|c| c.parts).unwrap_or_default() {
            if let Some(fc) = part.function_call {
                c.tool_calls.push(ToolCallOut {
                    id: fc.id.unwrap_or_else(|| t::random_id("call_")),
                    name: fc.name,
                    arguments: arguments_string(fc.args),
                });
            } else if let Some(s) = part.text {
                if part.thought == Some(true) {
                    c.reasoning.get_or_insert_with(String::new).push_str(&s);
                } else if c.text.is_empty() {
                    c.text = s;
                } else {
                    c.text.push_str(&s);
                }
            }
        }
        c.stop = Stop::new(stop_reason(
            cand.finish_reason.as_deref(),
            !c.tool_calls.is_empty(),
        ));
        choices.push(c);
    }
    if choices.is_empty() {
        // The prompt itself was blocked (promptFeedback.blockReason).
        let blocked = resp
            .prompt_feedback
            .as_ref()
            .and_then(|p| p.block_reason.as_ref())
            .is_some();
        choices.push(hub::Choice {
            stop: Stop::new(if blocked {
                StopReason::ContentFilter
            } else {
                StopReason::End
            }),
            ..hub::Choice::default()
        });
    }
    Ok(hub::Response {
        id: resp
            .response_id
            .unwrap_or_else(|| t::random_id("chatcmpl-")),
        model: resp.model_version.unwrap_or_else(|| model.to_string()),
        created: None,
        choices,
        usage: resp.usage_metadata.unwrap_or_default().hub(),
    })
}
