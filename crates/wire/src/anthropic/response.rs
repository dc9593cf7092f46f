//! Anthropic `message` bodies: decoded into the hub (from an Anthropic deployment
//! answering a non-Anthropic client) and encoded from it (for an Anthropic client of any
//! other deployment).

use super::NAME;
use crate::hub::{self, Stop, StopReason, ToolCallOut};
use crate::translate as t;
use bytes::Bytes;
use llmgw_core::error::ApiError;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::Value;
use std::borrow::Cow;

// ---------------------------------------------------------------------------------------
// Decode
// ---------------------------------------------------------------------------------------

#[derive(Deserialize)]
struct MessageResponse {
    #[serde(default)]
    id: String,
    #[serde(default)]
    model: String,
    #[serde(default)]
    content: Vec<ResBlock>,
    #[serde(default)]
    stop_reason: Option<String>,
    #[serde(default)]
    stop_sequence: Option<String>,
    #[serde(default)]
    usage: AUsage,
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum ResBlock {
    Text {
        text: String,
    },
    ToolUse {
        id: String,
        name: String,
        #[serde(default)]
        input: Value,
    },
    Thinking {
        #[serde(default)]
        thinking: String,
    },
    #[serde(other)]
    Other,
}

/// Anthropic `usage`; in a stream, later events overwrite what they carry.
#[derive(Deserialize, Serialize, Default, Debug, Clone, Copy)]
pub struct AUsage {
    #[serde(default)]
    pub input_tokens: Option<u64>,
    #[serde(default)]
    pub output_tokens: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_creation_input_tokens: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_read_input_tokens: Option<u64>,
}

impl AUsage {
    pub fn merge(&mut self, later: AUsage) {
        self.input_tokens = later.input_tokens.or(self.input_tokens);
        self.output_tokens = later.output_tokens.or(self.output_tokens);
        self.cache_creation_input_tokens = later
            .cache_creation_input_tokens
            .or(self.cache_creation_input_tokens);
        self.cache_read_input_tokens = later
            .cache_read_input_tokens
            .or(self.cache_read_input_tokens);
    }

    /// The hub's meaning: OpenAI counts cached prompt tokens inside the prompt;
    /// Anthropic does not.
    pub fn hub(&self) -> hub::Usage {
        let read = self.cache_read_input_tokens;
        let write = self.cache_creation_input_tokens;
        // Upstream numbers: saturate rather than overflow.
        let input = self
            .input_tokens
            .unwrap_or(0)
            .saturating_add(read.unwrap_or(0))
            .saturating_add(write.unwrap_or(0));
        hub::Usage {
            input,
            output: self.output_tokens.unwrap_or(0),
            cache_read: (read.is_some() || write.is_some()).then_some(read.unwrap_or(0)),
            cache_write: write,
            reasoning: None,
            total: None,
        }
    }

    /// From the hub's meaning back to Anthropic's.
    pub fn from_hub(u: &hub::Usage) -> AUsage {
        let cached = u
            .cache_read
            .unwrap_or(0)
            .saturating_add(u.cache_write.unwrap_or(0));
        AUsage {
            input_tokens: Some(u.input.saturating_sub(cached)),
            output_tokens: Some(u.output),
            cache_creation_input_tokens: u.cache_write,
            cache_read_input_tokens: u.cache_read,
        }
    }
}

/// Anthropic `stop_reason` → hub.
pub fn stop_reason(stop: Option<&str>) -> StopReason {
    match stop {
        Some("max_tokens") | Some("model_context_window_exceeded") => StopReason::MaxTokens,
        Some("tool_use") => StopReason::ToolUse,
        Some("refusal") => StopReason::ContentFilter,
        Some("stop_sequence") => StopReason::StopSequence,
        // end_turn, pause_turn, unknown
        _ => StopReason::End,
    }
}

/// A Messages response → the hub form.
pub fn decode(body: &[u8]) -> Result<hub::Response, ApiError> {
    let resp: MessageResponse = serde_json::from_slice(body).map_err(|e| t::bad_body(NAME, e))?;
    let mut choice = hub::Choice::default();
    for block in resp.content {
        match block {
            ResBlock::Text { text } => {
                if choice.text.is_empty() {
                    choice.text = text;
                } else {
                    choice.text.push_str(&text);
                }
            }
            ResBlock::ToolUse { id, name, input } => choice.tool_calls.push(ToolCallOut {
                id,
                name,
                arguments: match input {
                    Value::Null => "{}".to_string(),
                    v => v.to_string(),
                },
            }),
            ResBlock::Thinking { thinking } => choice
                .reasoning
                .get_or_insert_with(String::new)
                .push_str(&thinking),
            ResBlock::Other => {}
        }
    }
    choice.stop = Stop {
        reason: stop_reason(resp.stop_reason.as_deref()),
        sequence: resp.stop_sequence,
    };
    Ok(hub::Response {
        id: resp.id,
        model: resp.model,
        created: None,
        choices: vec![choice],
        usage: resp.usage.hub(),
    })
}

// ---------------------------------------------------------------------------------------
// Encode
// ---------------------------------------------------------------------------------------

/// Hub → Anthropic `stop_reason`.
pub fn stop_reason_name(reason: StopReason) -> &'static str {
    match reason {
        StopReason::End => "end_turn",
        StopReason::StopSequence => "stop_sequence",
        StopReason::MaxTokens => "max_tokens",
        StopReason::ToolUse => "tool_use",
        StopReason::ContentFilter => "refusal",
    }
}

/// An Anthropic message id (`msg_…`) for an upstream id: kept when it has that form,
/// else `msg_` and the id's letters and digits (so logs still match), else random.
pub fn message_id(upstream: &str) -> String {
    if upstream.starts_with("msg_") && upstream.len() <= 128 {
        return upstream.to_string();
    }
    let mut id = String::with_capacity(4 + upstream.len().min(60));
    id.push_str("msg_");
    id.extend(
        upstream
            .chars()
            .filter(char::is_ascii_alphanumeric)
            .take(60),
    );
    if id.len() == 4 {
        return t::random_id("msg_");
    }
    id
}

#[derive(Serialize)]
struct MessageOut<'r> {
    id: String,
    #[serde(rename = "type")]
    kind: &'static str,
    role: &'static str,
    model: &'r str,
    content: Vec<BlockOut<'r>>,
    stop_reason: &'static str,
    stop_sequence: Option<&'r str>,
    usage: AUsage,
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum BlockOut<'r> {
    Thinking {
        thinking: &'r str,
        signature: &'static str,
    },
    Text {
        text: &'r str,
    },
    ToolUse {
        id: &'r str,
        name: &'r str,
        input: Cow<'r, RawValue>,
    },
}

/// The hub form → an Anthropic `message` body (the first choice).
pub fn encode(resp: &hub::Response, provider: &str) -> Result<Bytes, ApiError> {
    let empty = hub::Choice::default();
    let c = resp.choices.first().unwrap_or(&empty);
    let mut content = Vec::with_capacity(c.tool_calls.len() + 2);
    if let Some(r) = c.reasoning.as_deref().filter(|r| !r.is_empty()) {
        content.push(BlockOut::Thinking {
            thinking: r,
            signature: "",
        });
    }
    if !c.text.is_empty() {
        content.push(BlockOut::Text { text: &c.text });
    }
    for call in &c.tool_calls {
        let input = hub::arguments_object(&call.arguments).ok_or_else(|| {
            t::bad_body(
                provider,
                format_args!(
                    "the arguments of its call of {:?} are not a JSON object",
                    call.name
                ),
            )
        })?;
        content.push(BlockOut::ToolUse {
            id: &call.id,
            name: &call.name,
            input,
        });
    }
    let out = MessageOut {
        id: message_id(&resp.id),
        kind: "message",
        role: "assistant",
        model: &resp.model,
        content,
        stop_reason: stop_reason_name(c.stop.reason),
        stop_sequence: c.stop.sequence.as_deref(),
        usage: AUsage::from_hub(&resp.usage),
    };
    serde_json::to_vec(&out)
        .map(Bytes::from)
        .map_err(|e| ApiError::internal(format!("serialising: {e}")))
}
