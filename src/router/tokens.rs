//! Token counting for context-window routing.
//!
//! Counting is only done when it can matter: a request whose body is shorter (in bytes)
//! than the smallest context window in its group cannot exceed it, since every token is
//! at least one byte. Larger ones are counted with tiktoken's o200k/cl100k encodings, an
//! estimate that is close for most open models too.

use crate::request::ClientRequest;
use std::sync::OnceLock;

static BPE: OnceLock<Option<tiktoken_rs::CoreBPE>> = OnceLock::new();

fn bpe() -> Option<&'static tiktoken_rs::CoreBPE> {
    BPE.get_or_init(|| tiktoken_rs::cl100k_base().ok()).as_ref()
}

/// A cheap upper bound on the request's tokens: its byte length.
pub fn upper_bound(req: &ClientRequest) -> u64 {
    req.body.len() as u64
}

/// A rough estimate for rate limiting (≈ 4 bytes per token), with no tokenizer call.
pub fn rough(req: &ClientRequest) -> u64 {
    (req.body.len() as u64 / 4).max(1)
}

/// Counts the prompt's tokens: every string in `messages`, `prompt`, `input`, `tools`
/// and `system`, plus a few tokens of framing per message.
pub fn count(req: &ClientRequest) -> u64 {
    let Ok(v) = req.json() else {
        return rough(req);
    };
    let mut text = String::new();
    let mut framing = 0u64;
    for key in [
        "messages",
        "prompt",
        "input",
        "tools",
        "system",
        "functions",
    ] {
        if let Some(part) = v.get(key) {
            if let Some(msgs) = part.as_array() {
                framing += 4 * msgs.len() as u64;
            }
            collect_strings(part, &mut text);
        }
    }
    match bpe() {
        Some(bpe) => bpe.encode_ordinary(&text).len() as u64 + framing,
        None => rough(req),
    }
}

fn collect_strings(v: &serde_json::Value, out: &mut String) {
    match v {
        serde_json::Value::String(s) => {
            out.push_str(s);
            out.push(' ');
        }
        serde_json::Value::Array(a) => a.iter().for_each(|x| collect_strings(x, out)),
        serde_json::Value::Object(o) => o.values().for_each(|x| collect_strings(x, out)),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::Endpoint;

    #[test]
    fn counts_message_text() {
        let words = "hello world ".repeat(500);
        let body =
            serde_json::json!({"model": "m", "messages": [{"role": "user", "content": words}]});
        let req = ClientRequest::parse(Endpoint::ChatCompletions, body.to_string().into()).unwrap();
        let n = count(&req);
        assert!((900..1200).contains(&n), "{n}");
        assert!(n <= upper_bound(&req));
    }
}
