//! OpenAI `chat.completion` bodies: decoded into the hub (from an OpenAI-compatible
//! deployment answering an Anthropic or Responses client) and encoded from it (for an
//! OpenAI client of a translated deployment).

use crate::hub::{self, Stop, StopReason, ToolCallOut};
use crate::translate::{self as t, FunctionCall, ToolCall};
use bytes::Bytes;
use llmgw_core::error::ApiError;
use serde::Deserialize;
use serde_json::value::RawValue;

// ---------------------------------------------------------------------------------------
// Decode
// ---------------------------------------------------------------------------------------

#[derive(Deserialize)]
struct Completion {
    #[serde(default)]
    id: String,
    #[serde(default)]
    model: String,
    #[serde(default)]
    created: Option<u64>,
    #[serde(default)]
    choices: Vec<ChoiceIn>,
    #[serde(default)]
    usage: Option<UsageIn>,
}

#[derive(Deserialize)]
struct ChoiceIn {
    #[serde(default)]
    index: Option<u32>,
    #[serde(default)]
    message: MessageIn,
    #[serde(default)]
    finish_reason: Option<String>,
    /// vLLM: the stop string that ended the answer.
    #[serde(default)]
    stop_reason: Option<Box<RawValue>>,
    /// SGLang: the same.
    #[serde(default)]
    matched_stop: Option<Box<RawValue>>,
}

#[derive(Deserialize, Default)]
struct MessageIn {
    #[serde(default)]
    content: Option<String>,
    #[serde(default)]
    reasoning_content: Option<String>,
    /// vLLM's newer name (it may send both).
    #[serde(default)]
    reasoning: Option<String>,
    #[serde(default)]
    refusal: Option<String>,
    #[serde(default)]
    tool_calls: Option<Vec<CallIn>>,
}

#[derive(Deserialize)]
struct CallIn {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    function: FunctionIn,
}

#[derive(Deserialize, Default)]
struct FunctionIn {
    #[serde(default)]
    name: String,
    #[serde(default)]
    arguments: Option<String>,
}

/// OpenAI `usage`, as OpenAI-compatible servers send it.
#[derive(Deserialize, Default, Clone, Copy)]
pub(super) struct UsageIn {
    #[serde(default)]
    prompt_tokens: u64,
    #[serde(default)]
    completion_tokens: u64,
    #[serde(default)]
    total_tokens: Option<u64>,
    #[serde(default)]
    prompt_tokens_details: Option<PromptDetailsIn>,
    #[serde(default)]
    completion_tokens_details: Option<CompletionDetailsIn>,
}

#[derive(Deserialize, Default, Clone, Copy)]
struct PromptDetailsIn {
    #[serde(default)]
    cached_tokens: Option<u64>,
}

#[derive(Deserialize, Default, Clone, Copy)]
struct CompletionDetailsIn {
    #[serde(default)]
    reasoning_tokens: Option<u64>,
}

impl UsageIn {
    pub(super) fn hub(self) -> hub::Usage {
        hub::Usage {
            input: self.prompt_tokens,
            output: self.completion_tokens,
            cache_read: self.prompt_tokens_details.and_then(|d| d.cached_tokens),
            cache_write: None,
            reasoning: self
                .completion_tokens_details
                .and_then(|d| d.reasoning_tokens),
            total: self.total_tokens,
        }
    }
}

/// OpenAI `finish_reason` (and the matched stop string, if the server says) → hub.
pub fn stop_from(finish: Option<&str>, matched: Option<&RawValue>) -> Stop {
    let reason = match finish {
        Some("length") => StopReason::MaxTokens,
        Some("tool_calls" | "function_call") => StopReason::ToolUse,
        Some("content_filter") => StopReason::ContentFilter,
        _ => StopReason::End,
    };
    // A matched stop *string* (servers give a token id when an EOS token stopped it).
    let sequence = matched
        .filter(|_| reason == StopReason::End)
        .and_then(t::raw_str)
        .map(|s| s.into_owned());
    match sequence {
        Some(s) => Stop {
            reason: StopReason::StopSequence,
            sequence: Some(s),
        },
        None => Stop::new(reason),
    }
}

/// A `chat.completion` body → the hub form.
pub fn decode(body: &[u8], provider: &str) -> Result<hub::Response, ApiError> {
    let resp: Completion = serde_json::from_slice(body).map_err(|e| t::bad_body(provider, e))?;
    let choices = resp
        .choices
        .into_iter()
        .enumerate()
        .map(|(pos, c)| {
            let m = c.message;
            let matched = c.stop_reason.as_deref().or(c.matched_stop.as_deref());
            hub::Choice {
                index: c.index.unwrap_or(pos as u32),
                text: m.content.or(m.refusal).unwrap_or_default(),
                reasoning: m
                    .reasoning_content
                    .or(m.reasoning)
                    .filter(|r| !r.is_empty()),
                tool_calls: m
                    .tool_calls
                    .unwrap_or_default()
                    .into_iter()
                    .map(|call| ToolCallOut {
                        id: call.id.unwrap_or_else(|| t::random_id("call_")),
                        name: call.function.name,
                        arguments: call.function.arguments.unwrap_or_default(),
                    })
                    .collect(),
                stop: stop_from(c.finish_reason.as_deref(), matched),
            }
        })
        .collect();
    Ok(hub::Response {
        id: resp.id,
        model: resp.model,
        created: resp.created,
        choices,
        usage: resp.usage.unwrap_or_default().hub(),
    })
}

// ---------------------------------------------------------------------------------------
// Encode
// ---------------------------------------------------------------------------------------

/// Hub → OpenAI `finish_reason`.
pub fn finish_reason(reason: StopReason) -> &'static str {
    match reason {
        StopReason::End | StopReason::StopSequence => "stop",
        StopReason::MaxTokens => "length",
        StopReason::ToolUse => "tool_calls",
        StopReason::ContentFilter => "content_filter",
    }
}

/// Hub usage → OpenAI `usage`.
pub fn usage(u: &hub::Usage) -> t::Usage {
    t::Usage {
        prompt_tokens: u.input,
        completion_tokens: u.output,
        total_tokens: u.total(),
        prompt_tokens_details: u.cache_read.map(|c| t::PromptDetails { cached_tokens: c }),
        completion_tokens_details: u.reasoning.map(|r| t::CompletionDetails {
            reasoning_tokens: r,
        }),
    }
}

/// The hub form → an OpenAI `chat.completion` body.
pub fn encode(resp: hub::Response) -> Result<Bytes, ApiError> {
    let mut choices = Vec::with_capacity(resp.choices.len().max(1));
    for c in resp.choices {
        let tool_calls: Vec<ToolCall> = c
            .tool_calls
            .into_iter()
            .map(|call| ToolCall {
                id: call.id,
                kind: "function",
                function: FunctionCall {
                    name: call.name,
                    arguments: if call.arguments.is_empty() {
                        "{}".to_string()
                    } else {
                        call.arguments
                    },
                },
            })
            .collect();
        let content = (!c.text.is_empty() || tool_calls.is_empty()).then_some(c.text);
        choices.push(t::Choice {
            index: c.index,
            message: t::Message {
                role: "assistant",
                content,
                reasoning_content: c.reasoning,
                tool_calls,
                refusal: None,
            },
            logprobs: None,
            finish_reason: finish_reason(c.stop.reason),
        });
    }
    let id = if resp.id.is_empty() {
        t::random_id("chatcmpl-")
    } else {
        resp.id
    };
    let completion = t::ChatCompletion {
        id: &id,
        object: "chat.completion",
        created: resp.created.unwrap_or_else(t::now_secs),
        model: &resp.model,
        choices,
        usage: usage(&resp.usage),
    };
    serde_json::to_vec(&completion)
        .map(Bytes::from)
        .map_err(|e| ApiError::internal(format!("serialising: {e}")))
}
