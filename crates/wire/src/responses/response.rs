//! OpenAI Responses `response` objects, encoded from the hub (for a Responses client of a
//! deployment that does not serve `/responses` itself).

use crate::hub::{self, StopReason};
use crate::request::ClientRequest;
use crate::translate as t;
use bytes::Bytes;
use llmgw_core::error::ApiError;
use serde::Serialize;

/// A `response` object as the API writes it. The fields that only echo the request
/// (tools, temperature, …) are left at their defaults: nothing reads them back.
#[derive(Serialize)]
pub(super) struct ResponseOut<'r> {
    pub id: &'r str,
    pub object: &'static str,
    pub created_at: u64,
    pub status: &'static str,
    pub error: Option<()>,
    pub incomplete_details: Option<Incomplete>,
    pub instructions: Option<()>,
    pub max_output_tokens: Option<()>,
    pub model: &'r str,
    pub output: &'r [Item<'r>],
    pub parallel_tool_calls: bool,
    pub previous_response_id: Option<&'r str>,
    pub reasoning: ReasoningOut,
    pub store: bool,
    pub temperature: Option<()>,
    pub text: TextOut,
    pub tool_choice: &'static str,
    pub tools: [(); 0],
    pub top_p: Option<()>,
    pub truncation: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<UsageOut>,
    pub user: Option<()>,
    pub metadata: Empty,
}

#[derive(Serialize)]
pub(super) struct Empty {}

#[derive(Serialize)]
pub(super) struct Incomplete {
    pub reason: &'static str,
}

#[derive(Serialize, Default)]
pub(super) struct ReasoningOut {
    pub effort: Option<()>,
    pub summary: Option<()>,
}

#[derive(Serialize)]
pub(super) struct TextOut {
    pub format: FormatOut,
}

#[derive(Serialize)]
pub(super) struct FormatOut {
    #[serde(rename = "type")]
    pub kind: &'static str,
}

impl TextOut {
    pub fn text() -> Self {
        TextOut {
            format: FormatOut { kind: "text" },
        }
    }
}

/// One output item.
#[derive(Serialize, Clone)]
#[serde(tag = "type", rename_all = "snake_case")]
pub(super) enum Item<'r> {
    Reasoning {
        id: &'r str,
        summary: [(); 0],
        content: [ReasoningText<'r>; 1],
        status: &'static str,
    },
    Message {
        id: &'r str,
        status: &'static str,
        role: &'static str,
        content: Vec<OutputText<'r>>,
    },
    FunctionCall {
        id: &'r str,
        call_id: &'r str,
        name: &'r str,
        #[serde(skip_serializing_if = "Option::is_none")]
        namespace: Option<&'r str>,
        arguments: &'r str,
        status: &'static str,
    },
    /// A call of a custom (freeform) tool.
    CustomToolCall {
        id: &'r str,
        call_id: &'r str,
        name: &'r str,
        #[serde(skip_serializing_if = "Option::is_none")]
        namespace: Option<&'r str>,
        input: &'r str,
        status: &'static str,
    },
}

/// A custom tool's input from the arguments of the function it was offered as:
/// `{"input": "…"}` (anything else is passed on as the text it is).
pub(super) fn custom_input(arguments: &str) -> String {
    #[derive(serde::Deserialize)]
    struct Input {
        input: String,
    }
    match serde_json::from_str::<Input>(arguments) {
        Ok(i) => i.input,
        Err(_) => {
            serde_json::from_str::<String>(arguments).unwrap_or_else(|_| arguments.to_string())
        }
    }
}

/// The request's tool name table (prepared by the gateway, else read from the body).
pub(super) fn names(req: &ClientRequest) -> std::borrow::Cow<'_, crate::prepared::ToolNames> {
    match &req.prepared {
        Some(p) => std::borrow::Cow::Borrowed(&p.tools),
        None => std::borrow::Cow::Owned(super::prepare::tool_names(&req.body)),
    }
}

/// `store` and `previous_response_id` as the request set them.
pub(super) fn stored(req: &ClientRequest) -> (bool, Option<&str>) {
    match &req.prepared {
        Some(p) => (p.store, p.previous_response_id.as_deref()),
        None => (false, None),
    }
}

#[derive(Serialize, Clone)]
pub(super) struct ReasoningText<'r> {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub text: &'r str,
}

#[derive(Serialize, Clone)]
pub(super) struct OutputText<'r> {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub text: &'r str,
    pub annotations: [(); 0],
    pub logprobs: [(); 0],
}

impl<'r> OutputText<'r> {
    pub fn new(text: &'r str) -> Self {
        OutputText {
            kind: "output_text",
            text,
            annotations: [],
            logprobs: [],
        }
    }
}

#[derive(Serialize, Clone, Copy)]
pub(super) struct UsageOut {
    pub input_tokens: u64,
    pub input_tokens_details: CachedOut,
    pub output_tokens: u64,
    pub output_tokens_details: ReasoningTokensOut,
    pub total_tokens: u64,
}

#[derive(Serialize, Clone, Copy)]
pub(super) struct CachedOut {
    pub cached_tokens: u64,
}

#[derive(Serialize, Clone, Copy)]
pub(super) struct ReasoningTokensOut {
    pub reasoning_tokens: u64,
}

impl UsageOut {
    pub fn of(u: &hub::Usage) -> Self {
        UsageOut {
            input_tokens: u.input,
            input_tokens_details: CachedOut {
                cached_tokens: u.cache_read.unwrap_or(0),
            },
            output_tokens: u.output,
            output_tokens_details: ReasoningTokensOut {
                reasoning_tokens: u.reasoning.unwrap_or(0),
            },
            total_tokens: u.total(),
        }
    }
}

/// `status` and `incomplete_details` for a stop reason.
pub(super) fn status(reason: StopReason) -> (&'static str, Option<Incomplete>) {
    match reason {
        StopReason::MaxTokens => (
            "incomplete",
            Some(Incomplete {
                reason: "max_output_tokens",
            }),
        ),
        StopReason::ContentFilter => (
            "incomplete",
            Some(Incomplete {
                reason: "content_filter",
            }),
        ),
        _ => ("completed", None),
    }
}

impl<'r> ResponseOut<'r> {
    pub fn new(id: &'r str, created_at: u64, model: &'r str, output: &'r [Item<'r>]) -> Self {
        ResponseOut {
            id,
            object: "response",
            created_at,
            status: "in_progress",
            error: None,
            incomplete_details: None,
            instructions: None,
            max_output_tokens: None,
            model,
            output,
            parallel_tool_calls: true,
            previous_response_id: None,
            reasoning: ReasoningOut::default(),
            store: false,
            temperature: None,
            text: TextOut::text(),
            tool_choice: "auto",
            tools: [],
            top_p: None,
            truncation: "disabled",
            usage: None,
            user: None,
            metadata: Empty {},
        }
    }
}

/// The hub form → a Responses `response` body (the first choice).
pub fn encode(
    resp: &hub::Response,
    req: &ClientRequest,
    provider: &str,
) -> Result<Bytes, ApiError> {
    let names = names(req);
    let empty = hub::Choice::default();
    let c = resp.choices.first().unwrap_or(&empty);
    let ids: Vec<String> = (0..c.tool_calls.len() + 2)
        .map(|i| match i {
            0 => t::random_id("rs_"),
            1 => t::random_id("msg_"),
            _ => t::random_id("fc_"),
        })
        .collect();
    let inputs: Vec<Option<String>> = c
        .tool_calls
        .iter()
        .map(|call| {
            names
                .client(&call.name)
                .filter(|e| e.kind == crate::prepared::Kind::Custom)
                .map(|_| custom_input(&call.arguments))
        })
        .collect();
    let mut output = Vec::with_capacity(c.tool_calls.len() + 2);
    if let Some(r) = c.reasoning.as_deref().filter(|r| !r.is_empty()) {
        output.push(Item::Reasoning {
            id: &ids[0],
            summary: [],
            content: [ReasoningText {
                kind: "reasoning_text",
                text: r,
            }],
            status: "completed",
        });
    }
    if !c.text.is_empty() || c.tool_calls.is_empty() {
        output.push(Item::Message {
            id: &ids[1],
            status: "completed",
            role: "assistant",
            content: vec![OutputText::new(&c.text)],
        });
    }
    for (k, call) in c.tool_calls.iter().enumerate() {
        let entry = names.client(&call.name);
        let (name, namespace) = match entry {
            Some(e) => (e.name.as_str(), e.namespace.as_deref()),
            None => (call.name.as_str(), None),
        };
        if let Some(input) = &inputs[k] {
            output.push(Item::CustomToolCall {
                id: &ids[2 + k],
                call_id: &call.id,
                name,
                namespace,
                input,
                status: "completed",
            });
            continue;
        }
        if hub::arguments_object(&call.arguments).is_none() {
            return Err(t::bad_body(
                provider,
                format_args!(
                    "the arguments of its call of {:?} are not a JSON object",
                    call.name
                ),
            ));
        }
        output.push(Item::FunctionCall {
            id: &ids[2 + k],
            call_id: &call.id,
            name,
            namespace,
            arguments: if call.arguments.is_empty() {
                "{}"
            } else {
                &call.arguments
            },
            status: "completed",
        });
    }
    let id = t::random_id("resp_");
    let mut out = ResponseOut::new(
        &id,
        resp.created.unwrap_or_else(t::now_secs),
        &resp.model,
        &output,
    );
    let (status, incomplete) = status(c.stop.reason);
    out.status = status;
    out.incomplete_details = incomplete;
    out.usage = Some(UsageOut::of(&resp.usage));
    (out.store, out.previous_response_id) = stored(req);
    serde_json::to_vec(&out)
        .map(Bytes::from)
        .map_err(|e| ApiError::internal(format!("serialising: {e}")))
}
