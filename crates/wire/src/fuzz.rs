//! Hostile input through every adapter pair: mutated client bodies (OpenAI chat,
//! Anthropic Messages, Responses) to every upstream format, mutated upstream answers and
//! streams (OpenAI chat, Anthropic, Gemini) to every client format, streams split at
//! every byte. Each gives an error or output, never a panic (issue 12, acceptance 7).
//!
//! Seeded, so a failure reproduces; sized to run in a few seconds in debug builds.

use crate::convert::chat_body;
use crate::convert::stream_translator;
use crate::convert::translate_response;
use crate::hub::Format;
use crate::request::{ClientRequest, Endpoint};
use crate::translate::testing::{deployment, mutate};
use crate::upstream::Upstream;
use bytes::{Bytes, BytesMut};
use llmgw_core::config::ProviderKind;

/// A Claude Code-like Messages body: system blocks, tools, thinking, a tool round trip
/// with an image in the result.
const ANTHROPIC_BODY: &str = r#"{"model":"m","max_tokens":64,"stream":true,"system":[{"type":"text","text":"S","cache_control":{"type":"ephemeral"}}],"metadata":{"user_id":"u"},"thinking":{"type":"enabled","budget_tokens":100},"tool_choice":{"type":"auto","disable_parallel_tool_use":true},"stop_sequences":["x"],"tools":[{"name":"f","description":"d","input_schema":{"type":"object","properties":{"a":{"type":"string"}}}}],"messages":[{"role":"user","content":"hi"},{"role":"assistant","content":[{"type":"thinking","thinking":"t","signature":"s"},{"type":"text","text":"ok"},{"type":"tool_use","id":"t1","name":"f","input":{"a":"b"}}]},{"role":"user","content":[{"type":"tool_result","tool_use_id":"t1","content":[{"type":"text","text":"r"},{"type":"image","source":{"type":"base64","media_type":"image/png","data":"AA"}}],"is_error":false},{"type":"text","text":"go"}]}]}"#;

/// A Responses body: instructions, items of every supported type, tools, text format.
const RESPONSES_BODY: &str = r#"{"model":"m","instructions":"S","stream":true,"max_output_tokens":64,"store":false,"reasoning":{"effort":"low"},"text":{"format":{"type":"json_schema","name":"n","schema":{"type":"object"}}},"tool_choice":{"type":"function","name":"f"},"tools":[{"type":"function","name":"f","parameters":{"type":"object"}}],"input":[{"role":"developer","content":"D"},{"type":"message","role":"user","content":[{"type":"input_text","text":"hi"},{"type":"input_image","image_url":"data:image/png;base64,AA"}]},{"type":"reasoning","id":"r","summary":[]},{"type":"function_call","call_id":"c","name":"f","arguments":"{\"a\":1}"},{"type":"function_call_output","call_id":"c","output":"out"},{"role":"assistant","content":[{"type":"output_text","text":"ok"}]}]}"#;

/// A Codex-like Responses body: `additional_tools` with namespaces and a custom
/// (freeform) tool, namespaced and custom calls and their outputs, `client_metadata`.
const CODEX_BODY: &str = r#"{"model":"m","stream":true,"store":false,"client_metadata":{"turn_id":"t"},"tools":[{"type":"function","name":"exec_command","parameters":{"type":"object"}},{"type":"namespace","name":"multi_agent_v1","description":"d","tools":[{"type":"function","name":"close_agent","parameters":{"type":"object"}}]}],"input":[{"type":"additional_tools","role":"developer","tools":[{"type":"namespace","name":"functions","tools":[{"type":"custom","name":"exec","format":{"type":"grammar","syntax":"lark","definition":"start: /.+/"}}]}]},{"role":"user","content":"go"},{"type":"function_call","namespace":"multi_agent_v1","name":"close_agent","call_id":"c","arguments":"{}"},{"type":"function_call_output","call_id":"c","output":"ok"},{"type":"custom_tool_call","namespace":"functions","name":"exec","call_id":"d","input":"1+1"},{"type":"custom_tool_call_output","call_id":"d","output":[{"type":"input_text","text":"2"}]}]}"#;

/// An OpenAI chat body with tools and a tool round trip.
const CHAT_BODY: &str = r#"{"model":"m","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"system","content":"S"},{"role":"user","content":[{"type":"text","text":"a"},{"type":"image_url","image_url":{"url":"data:image/png;base64,AA"}}]},{"role":"assistant","content":null,"tool_calls":[{"id":"c","type":"function","function":{"name":"f","arguments":"{\"x\":1}"}}]},{"role":"tool","tool_call_id":"c","content":"r"}],"tools":[{"type":"function","function":{"name":"f","parameters":{"type":"object"}}}],"tool_choice":"auto","max_tokens":5}"#;

const CHAT_STREAM: &str = "data: {\"id\":\"c\",\"model\":\"q\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\",\"reasoning_content\":\"r\"}}]}\n\ndata: {\"id\":\"c\",\"model\":\"q\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\"}}]}\n\ndata: {\"id\":\"c\",\"model\":\"q\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"id\":\"t\",\"function\":{\"name\":\"f\",\"arguments\":\"{\\\"a\\\"\"}}]}}]}\n\ndata: {\"id\":\"c\",\"model\":\"q\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\":1}\"}}]},\"finish_reason\":\"tool_calls\"}]}\n\ndata: {\"id\":\"c\",\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":2,\"total_tokens\":5}}\n\ndata: [DONE]\n\n";

const ANTHROPIC_STREAM: &str = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"m\",\"model\":\"c\",\"usage\":{\"input_tokens\":1}}}\n\nevent: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\nevent: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hi\"}}\n\nevent: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":1,\"content_block\":{\"type\":\"tool_use\",\"id\":\"t\",\"name\":\"f\",\"input\":{}}}\n\nevent: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"{\\\"a\\\":1}\"}}\n\nevent: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"tool_use\"},\"usage\":{\"output_tokens\":2}}\n\nevent: message_stop\ndata: {\"type\":\"message_stop\"}\n\n";

const GEMINI_STREAM: &str = "data: {\"candidates\":[{\"content\":{\"parts\":[{\"text\":\"Hi\"},{\"thought\":true,\"text\":\"t\"}]},\"index\":0}],\"modelVersion\":\"g\"}\r\n\r\ndata: {\"candidates\":[{\"content\":{\"parts\":[{\"functionCall\":{\"name\":\"f\",\"args\":{\"a\":1}}}]},\"finishReason\":\"STOP\",\"index\":0}],\"usageMetadata\":{\"promptTokenCount\":1,\"candidatesTokenCount\":2}}\r\n\r\n";

const CHAT_ANSWER: &str = r#"{"id":"c","model":"q","choices":[{"index":0,"message":{"role":"assistant","content":"Hi","reasoning_content":"r","tool_calls":[{"id":"t","type":"function","function":{"name":"f","arguments":"{\"a\":1}"}}]},"finish_reason":"tool_calls"}],"usage":{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5}}"#;

const ANTHROPIC_ANSWER: &str = r#"{"id":"m","type":"message","model":"c","content":[{"type":"thinking","thinking":"t"},{"type":"text","text":"Hi"},{"type":"tool_use","id":"t","name":"f","input":{"a":1}}],"stop_reason":"tool_use","stop_sequence":null,"usage":{"input_tokens":1,"output_tokens":2}}"#;

const GEMINI_ANSWER: &str = r#"{"candidates":[{"content":{"parts":[{"text":"Hi"},{"functionCall":{"name":"f","args":{"a":1}}}],"role":"model"},"finishReason":"STOP","index":0}],"usageMetadata":{"promptTokenCount":1,"candidatesTokenCount":2,"totalTokenCount":3}}"#;

/// A deployment of each upstream wire format.
fn deployments(drop_params: bool) -> [(Format, Upstream); 3] {
    [
        (
            Format::OpenAiChat,
            deployment(ProviderKind::Sglang, "q", drop_params),
        ),
        (
            Format::Anthropic,
            deployment(ProviderKind::Anthropic, "c", drop_params),
        ),
        (
            Format::Gemini,
            deployment(ProviderKind::Gemini, "g", drop_params),
        ),
    ]
}

/// A valid request of each client format (streamed).
fn clients() -> [(Endpoint, &'static str); 4] {
    [
        (Endpoint::ChatCompletions, CHAT_BODY),
        (Endpoint::Messages, ANTHROPIC_BODY),
        (Endpoint::Responses, RESPONSES_BODY),
        (Endpoint::Responses, CODEX_BODY),
    ]
}

fn parse(endpoint: Endpoint, body: &[u8]) -> Option<ClientRequest> {
    ClientRequest::parse(endpoint, Bytes::copy_from_slice(body)).ok()
}

#[test]
fn valid_bodies_translate_to_every_upstream() {
    for (endpoint, body) in clients() {
        let req = parse(endpoint, body.as_bytes()).expect("valid");
        // What a format cannot express (Responses' reasoning effort to Anthropic) is
        // dropped under drop_params.
        for (wire, dep) in deployments(true) {
            let out = chat_body(&dep, &req, wire)
                .unwrap_or_else(|e| panic!("{endpoint:?} → {wire:?}: {}", e.message));
            serde_json::from_slice::<serde_json::Value>(&out).expect("JSON body");
        }
    }
}

#[test]
fn mutated_bodies_never_panic() {
    let mut rng = fastrand::Rng::with_seed(12);
    for (endpoint, body) in clients() {
        let deps = deployments(rng.bool());
        for _ in 0..1500 {
            let b = mutate(&mut rng, body.as_bytes());
            if endpoint == Endpoint::Responses {
                let _ = crate::responses::prepare::prepare(&b, true);
            }
            let Some(req) = parse(endpoint, &b) else {
                continue;
            };
            for (wire, dep) in &deps {
                let _ = chat_body(dep, &req, *wire);
            }
        }
    }
}

/// Feeds `stream` in pieces cut at `cuts`, then finishes; any result but a panic is fine.
fn feed(dep: &Upstream, wire: Format, req: &ClientRequest, stream: &[u8], cuts: &[usize]) {
    let mut tr = stream_translator(wire, dep, req).expect("a translated pair");
    let mut out = BytesMut::new();
    let mut at = 0;
    for &c in cuts.iter().chain(std::iter::once(&stream.len())) {
        if tr.feed(&stream[at..c], &mut out).is_err() {
            return;
        }
        at = c;
    }
    let _ = tr.finish(&mut out);
}

#[test]
fn streams_split_at_every_byte_never_panic() {
    let mut rng = fastrand::Rng::with_seed(7);
    let streams = [
        (Format::OpenAiChat, CHAT_STREAM),
        (Format::Anthropic, ANTHROPIC_STREAM),
        (Format::Gemini, GEMINI_STREAM),
    ];
    for (endpoint, body) in clients() {
        let req = parse(endpoint, body.as_bytes()).expect("valid");
        for (wire, dep) in deployments(false) {
            if endpoint.chat_format() == Some(wire) {
                continue; // passed through, not translated
            }
            let stream = streams
                .iter()
                .find(|(f, _)| *f == wire)
                .unwrap()
                .1
                .as_bytes();
            // The valid stream and one mutation of it, each split at every byte.
            let mutated = mutate(&mut rng, stream);
            for s in [stream, &mutated[..]] {
                for cut in 0..=s.len() {
                    feed(&dep, wire, &req, s, &[cut]);
                }
            }
            // More mutations, split at random places.
            for _ in 0..200 {
                let s = mutate(&mut rng, stream);
                let mut cuts: Vec<usize> = (0..rng.usize(0..4))
                    .map(|_| rng.usize(..=s.len()))
                    .collect();
                cuts.sort_unstable();
                feed(&dep, wire, &req, &s, &cuts);
            }
        }
    }
}

#[test]
fn mutated_answers_never_panic() {
    let mut rng = fastrand::Rng::with_seed(9);
    let answers = [
        (Format::OpenAiChat, CHAT_ANSWER),
        (Format::Anthropic, ANTHROPIC_ANSWER),
        (Format::Gemini, GEMINI_ANSWER),
    ];
    for (endpoint, body) in clients() {
        let mut req = parse(endpoint, body.as_bytes()).expect("valid");
        req.stream = false;
        for (wire, dep) in deployments(false) {
            if endpoint.chat_format() == Some(wire) {
                continue;
            }
            let answer = answers
                .iter()
                .find(|(f, _)| *f == wire)
                .unwrap()
                .1
                .as_bytes();
            translate_response(wire, &dep, &req, Bytes::from_static(answer))
                .unwrap_or_else(|e| panic!("{wire:?} → {endpoint:?}: {}", e.message));
            for _ in 0..300 {
                let b = Bytes::from(mutate(&mut rng, answer));
                let _ = translate_response(wire, &dep, &req, b);
            }
        }
    }
}
