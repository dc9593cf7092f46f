//! OpenAI's answer and chunk shapes as the translators write them, and the chunk writer.

use super::*;

// ---------------------------------------------------------------------------------------
// OpenAI response shapes
// ---------------------------------------------------------------------------------------

/// OpenAI `usage`.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prompt_tokens_details: Option<PromptDetails>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub completion_tokens_details: Option<CompletionDetails>,
}

#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct PromptDetails {
    pub cached_tokens: u64,
}

#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct CompletionDetails {
    pub reasoning_tokens: u64,
}

/// A complete `chat.completion`.
#[derive(Serialize)]
pub struct ChatCompletion<'a> {
    pub id: &'a str,
    pub object: &'static str,
    pub created: u64,
    pub model: &'a str,
    pub choices: Vec<Choice>,
    pub usage: Usage,
}

#[derive(Serialize)]
pub struct Choice {
    pub index: u32,
    pub message: Message,
    pub logprobs: Option<()>,
    pub finish_reason: &'static str,
}

#[derive(Serialize)]
pub struct Message {
    pub role: &'static str,
    pub content: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reasoning_content: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCall>,
    pub refusal: Option<()>,
}

#[derive(Serialize)]
pub struct ToolCall {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub function: FunctionCall,
}

#[derive(Serialize)]
pub struct FunctionCall {
    pub name: String,
    pub arguments: String,
}

/// The `delta` of one streamed chunk; `Delta::default()` is `{}`.
#[derive(Serialize, Default)]
pub struct Delta<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reasoning_content: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<[ToolCallDelta<'a>; 1]>,
}

#[derive(Serialize)]
pub struct ToolCallDelta<'a> {
    pub index: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<&'a str>,
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<&'static str>,
    pub function: FunctionDelta<'a>,
}

#[derive(Serialize)]
pub struct FunctionDelta<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub arguments: Option<&'a str>,
}

#[derive(Serialize)]
pub(crate) struct ChunkHead<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
}

#[derive(Serialize)]
pub(crate) struct ChunkChoice<'a> {
    index: u32,
    delta: &'a Delta<'a>,
    logprobs: Option<()>,
    finish_reason: Option<&'a str>,
}

/// Writes OpenAI `chat.completion.chunk` events for one streamed response.
///
/// The part every chunk shares (`data: {"id":…,"object":…,"created":…,"model":…,
/// "choices":[`) is rendered once; each chunk appends only its choice.
#[derive(Debug, Clone)]
pub struct ChunkWriter {
    pub id: String,
    pub model: String,
    pub created: u64,
    pub include_usage: bool,
    prefix: Vec<u8>,
}

/// What a chunk's choice usually needs beyond its text (a guess for `reserve`).
pub(crate) const CHOICE_BYTES: usize = 96;

impl ChunkWriter {
    pub fn new(id: String, model: String, include_usage: bool) -> Self {
        let created = now_secs();
        let mut prefix = Vec::with_capacity(96 + id.len() + model.len());
        prefix.extend_from_slice(b"data: ");
        let head = ChunkHead {
            id: &id,
            object: "chat.completion.chunk",
            created,
            model: &model,
        };
        // Serialising this plain struct into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut prefix, &head);
        // `{"id":…,"model":"…"}` → `{"id":…,"model":"…","choices":[`
        prefix.pop();
        prefix.extend_from_slice(b",\"choices\":[");
        ChunkWriter {
            id,
            model,
            created,
            include_usage,
            prefix,
        }
    }

    /// One chunk with one choice.
    pub fn delta(
        &self,
        out: &mut BytesMut,
        index: u32,
        delta: &Delta<'_>,
        finish_reason: Option<&str>,
    ) {
        let text = delta.content.map_or(0, str::len)
            + delta.reasoning_content.map_or(0, str::len)
            + delta.tool_calls.as_ref().map_or(0, |[c]| {
                c.id.map_or(0, str::len)
                    + c.function.name.map_or(0, str::len)
                    + c.function.arguments.map_or(0, str::len)
                    + 64
            });
        out.reserve(self.prefix.len() + CHOICE_BYTES + text + text / 8);
        out.extend_from_slice(&self.prefix);
        let choice = ChunkChoice {
            index,
            delta,
            logprobs: None,
            finish_reason,
        };
        // Serialising these plain structs cannot fail.
        let _ = serde_json::to_writer(BytesMutWriter(out), &choice);
        if self.include_usage {
            out.extend_from_slice(b"],\"usage\":null}\n\n");
        } else {
            out.extend_from_slice(b"]}\n\n");
        }
    }

    /// The usage chunk (`choices: []`), only when the client asked for it.
    pub fn usage(&self, out: &mut BytesMut, usage: &Usage) {
        if !self.include_usage {
            return;
        }
        out.reserve(self.prefix.len() + 192);
        out.extend_from_slice(&self.prefix);
        out.extend_from_slice(b"],\"usage\":");
        let _ = serde_json::to_writer(BytesMutWriter(out), usage);
        out.extend_from_slice(b"}\n\n");
    }

    pub fn done(&self, out: &mut BytesMut) {
        out.extend_from_slice(b"data: [DONE]\n\n");
    }
}

pub struct BytesMutWriter<'a>(pub &'a mut BytesMut);

impl std::io::Write for BytesMutWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        self.0.extend_from_slice(buf);
        Ok(())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A random id such as `call_3fZ…` (24 alphanumerics).
pub fn random_id(prefix: &str) -> String {
    let mut s = String::with_capacity(prefix.len() + 24);
    s.push_str(prefix);
    for _ in 0..24 {
        s.push(fastrand::alphanumeric());
    }
    s
}
