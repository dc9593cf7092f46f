//! Pieces shared by the translating providers (Anthropic, Gemini): an incremental SSE
//! parser, OpenAI response and chunk shapes, borrowed OpenAI request shapes, the
//! `drop_params` policy and small helpers for OpenAI message content.
//!
//! Everything here is provider-neutral; the provider files own their wire formats.

mod chat_in;
mod lenient;
mod openai_out;
mod params;
mod sse;
pub use chat_in::*;
pub use lenient::*;
pub use openai_out::*;
pub use params::*;
pub use sse::*;

pub use crate::upstream::secret_header;
use crate::upstream::Upstream;
use crate::upstream_error::UpstreamError;
use bytes::BytesMut;
use llmgw_core::config::ErrorClass;
use llmgw_core::error::ApiError;
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use std::borrow::Cow;

#[cfg(test)]
mod tests {
    use super::*;

    fn events(parts: &[&[u8]]) -> Vec<SseEvent> {
        let mut p = SseParser::default();
        let mut out = Vec::new();
        for part in parts {
            p.push(part).unwrap();
            while let Some(e) = p.next_event() {
                out.push(e);
            }
        }
        out
    }

    #[test]
    fn sse_events_split_anywhere() {
        let text = b"event: a\ndata: {\"x\":1}\n\n: comment\n\nevent: b\r\ndata: one\r\ndata: two\r\n\r\ndata:3\n\n";
        let whole = events(&[text]);
        assert_eq!(whole.len(), 3);
        assert_eq!(whole[0].event, "a");
        assert_eq!(whole[1].data, b"one\ntwo");
        assert_eq!(whole[2].data, b"3");
        for cut in 0..text.len() {
            for cut2 in cut..text.len() {
                let got = events(&[&text[..cut], &text[cut..cut2], &text[cut2..]]);
                assert_eq!(got, whole, "cut at {cut}/{cut2}");
            }
        }
        let bytewise: Vec<&[u8]> = text.chunks(1).collect();
        assert_eq!(events(&bytewise), whole);
    }

    #[test]
    fn chunk_writer_shapes() {
        let w = ChunkWriter::new("id1".into(), "m".into(), true);
        let mut out = BytesMut::new();
        w.delta(
            &mut out,
            0,
            &Delta {
                content: Some("hi"),
                ..Delta::default()
            },
            None,
        );
        w.usage(&mut out, &Usage::default());
        w.done(&mut out);
        let s = std::str::from_utf8(&out).unwrap();
        let lines: Vec<&str> = s.split("\n\n").filter(|l| !l.is_empty()).collect();
        let a: Value = serde_json::from_str(&lines[0][6..]).unwrap();
        assert_eq!(a["choices"][0]["delta"]["content"], "hi");
        assert!(a["usage"].is_null() && a.get("usage").is_some());
        let b: Value = serde_json::from_str(&lines[1][6..]).unwrap();
        assert_eq!(b["choices"], serde_json::json!([]));
        assert_eq!(b["usage"]["total_tokens"], 0);
        assert_eq!(lines[2], "data: [DONE]");
    }

    #[test]
    fn helpers() {
        assert_eq!(
            parse_data_url("data:image/png;base64,AAAA"),
            Some(("image/png", "AAAA"))
        );
        assert_eq!(parse_data_url("http://x/y.png"), None);
        assert!(is_default("n", &serde_json::json!(1)));
        assert!(!is_default("n", &serde_json::json!(2)));
        assert!(is_default("presence_penalty", &serde_json::json!(0)));
        assert!(!is_default("logprobs", &serde_json::json!(true)));
        assert_eq!(mime_from_url("https://a/b.PNG?x=1"), "image/png");
    }

    /// Mutated client bodies and upstream streams give errors or output, never panics.
    #[test]
    fn mutations_never_panic() {
        use crate::anthropic;
        use crate::gemini;
        use crate::request::{ClientRequest, Endpoint};
        use crate::upstream::StreamTranslator;
        use llmgw_core::config::ProviderKind;
        let body = br#"{"model":"m","messages":[{"role":"system","content":"S"},{"role":"user","content":[{"type":"text","text":"a\n"},{"type":"image_url","image_url":{"url":"data:image/png;base64,AA"}}]},{"role":"assistant","content":null,"tool_calls":[{"id":"c","type":"function","function":{"name":"f","arguments":"{\"x\":1}"}}]},{"role":"tool","tool_call_id":"c","content":"{\"y\":2}"}],"tools":[{"type":"function","function":{"name":"f","parameters":{"type":"object"}}}],"tool_choice":{"type":"function","function":{"name":"f"}},"stop":["x"],"max_tokens":5,"response_format":{"type":"json_object"},"parallel_tool_calls":false}"#;
        let ant = testing::deployment(ProviderKind::Anthropic, "c", true);
        let gem = testing::deployment(ProviderKind::Gemini, "g", true);
        let astream = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"m\",\"model\":\"c\",\"usage\":{\"input_tokens\":1}}}\n\nevent: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":1,\"content_block\":{\"type\":\"tool_use\",\"id\":\"t\",\"name\":\"f\",\"input\":{}}}\n\nevent: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"{\\\"a\\\"\"}}\n\nevent: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"tool_use\"},\"usage\":{\"output_tokens\":2}}\n\nevent: message_stop\ndata: {\"type\":\"message_stop\"}\n\n";
        let gstream = "data: {\"candidates\":[{\"content\":{\"parts\":[{\"text\":\"hi\"},{\"functionCall\":{\"name\":\"f\",\"args\":{\"a\":1}}}]},\"finishReason\":\"STOP\",\"index\":0}],\"usageMetadata\":{\"promptTokenCount\":1}}\r\n\r\n";
        let mut rng = fastrand::Rng::with_seed(6);
        let mutate = testing::mutate;
        for _ in 0..3000 {
            let b = mutate(&mut rng, body);
            if let Ok(req) = ClientRequest::parse(Endpoint::ChatCompletions, b.into()) {
                let _ = anthropic::translate_request(&ant, &req);
                let _ = gemini::translate_request(&gem, &req);
            }
            let s = mutate(&mut rng, astream.as_bytes());
            let mut tr = anthropic::AnthropicStream::new("c".into(), true);
            let mut out = BytesMut::new();
            let cut = rng.usize(..s.len());
            let _ = tr
                .feed(&s[..cut], &mut out)
                .and_then(|_| tr.feed(&s[cut..], &mut out))
                .and_then(|_| tr.finish(&mut out));
            let s = mutate(&mut rng, gstream.as_bytes());
            let mut tr = gemini::GeminiStream::new("g".into(), true);
            let _ = tr.feed(&s, &mut out).and_then(|_| tr.finish(&mut out));
        }
    }

    #[test]
    fn chunk_writer_bytes() {
        let w = ChunkWriter::new("i\"d".into(), "m".into(), false);
        let mut out = BytesMut::new();
        let d = Delta {
            content: Some("a\nb"),
            ..Delta::default()
        };
        w.delta(&mut out, 2, &d, Some("stop"));
        let want = format!(
            "data: {{\"id\":\"i\\\"d\",\"object\":\"chat.completion.chunk\",\"created\":{},\"model\":\"m\",\"choices\":[{{\"index\":2,\"delta\":{{\"content\":\"a\\nb\"}},\"logprobs\":null,\"finish_reason\":\"stop\"}}]}}\n\n",
            w.created
        );
        assert_eq!(std::str::from_utf8(&out).unwrap(), want);
        // Nothing is written for usage without include_usage.
        w.usage(&mut out, &Usage::default());
        assert_eq!(out.len(), want.len());
    }
}

/// Helpers for the providers' unit tests.
#[cfg(test)]
pub(crate) mod testing {
    use crate::request::{ClientRequest, Endpoint};
    use crate::upstream::Upstream;
    use bytes::Bytes;
    use llmgw_core::config::ProviderKind;
    use serde_json::Value;

    pub fn deployment(kind: ProviderKind, model: &str, drop_params: bool) -> Upstream {
        let mut d = Upstream::new(
            "dep-1",
            "group",
            kind,
            model,
            "http://127.0.0.1:9/v1",
            crate::providers::for_kind(kind),
        );
        d.api_key = Some(llmgw_core::config::Secret::new("sk-test-secret"));
        d.drop_params = drop_params;
        d
    }

    pub fn client() -> reqwest::Client {
        let _ = rustls::crypto::ring::default_provider().install_default();
        reqwest::Client::new()
    }

    pub fn request(endpoint: Endpoint, body: Value) -> ClientRequest {
        ClientRequest::parse(endpoint, Bytes::from(body.to_string())).expect("valid request")
    }

    /// `src` with one to three bytes replaced, removed or inserted (JSON and SSE
    /// punctuation, mostly).
    pub fn mutate(rng: &mut fastrand::Rng, src: &[u8]) -> Vec<u8> {
        const JUNK: &[u8] = b"{}[]\",:\\0a-\n\r ";
        let mut b = src.to_vec();
        for _ in 0..rng.usize(1..4) {
            if b.is_empty() {
                b.push(JUNK[rng.usize(..JUNK.len())]);
                continue;
            }
            let at = rng.usize(..b.len());
            match rng.u8(..3) {
                0 => b[at] = JUNK[rng.usize(..JUNK.len())],
                1 => {
                    b.remove(at);
                }
                _ => b.insert(at, JUNK[rng.usize(..JUNK.len())]),
            }
        }
        b
    }

    /// The `data:` payloads of OpenAI SSE output; `[DONE]` as the string "[DONE]".
    pub fn events(out: &[u8]) -> Vec<Value> {
        let text = std::str::from_utf8(out).expect("utf-8");
        text.split("\n\n")
            .filter(|e| !e.trim().is_empty())
            .map(|e| {
                let data = e.strip_prefix("data: ").expect("data event");
                if data == "[DONE]" {
                    Value::String("[DONE]".into())
                } else {
                    serde_json::from_str(data).expect("JSON chunk")
                }
            })
            .collect()
    }

    /// Concatenated content and per-index tool calls (id, name, arguments) of chunks.
    pub fn assemble(events: &[Value]) -> (String, Vec<(String, String, String)>, Option<String>) {
        let mut text = String::new();
        let mut tools: Vec<(String, String, String)> = Vec::new();
        let mut finish = None;
        for e in events {
            let Some(choice) = e["choices"].get(0) else {
                continue;
            };
            let d = &choice["delta"];
            if let Some(s) = d["content"].as_str() {
                text.push_str(s);
            }
            if let Some(calls) = d["tool_calls"].as_array() {
                for c in calls {
                    let i = c["index"].as_u64().expect("index") as usize;
                    if i >= tools.len() {
                        tools.resize(i + 1, Default::default());
                    }
                    if let Some(id) = c["id"].as_str() {
                        tools[i].0 = id.into();
                    }
                    if let Some(n) = c["function"]["name"].as_str() {
                        tools[i].1 = n.into();
                    }
                    if let Some(a) = c["function"]["arguments"].as_str() {
                        tools[i].2.push_str(a);
                    }
                }
            }
            if let Some(f) = choice["finish_reason"].as_str() {
                finish = Some(f.to_string());
            }
        }
        (text, tools, finish)
    }
}
