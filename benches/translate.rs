//! CPU cost per request of translating to and from Anthropic and Gemini, against the
//! OpenAI passthrough (issue 6, acceptance item 5).
//!
//!   cargo bench --bench translate              # full run
//!   cargo bench --bench translate -- --quick   # well under a minute
//!
//! One typical agent request (system prompt, 4 turns, 2 tools; the same body as
//! `benches/hot_path.rs`) and, per provider:
//! - `request/*`: `ClientRequest::parse` plus what the gateway does to build the upstream
//!   request. The baseline `openai_passthrough` is parse + `body_for_model` (the model
//!   splice); `openai_build` is parse + `OpenAi::build` (splice, URL, headers), which is
//!   what the passthrough path really runs and what `anthropic`/`gemini` compare with.
//!   `parse_and_json_value` (parse + a full `serde_json::Value` of the body, which the
//!   translations built before they read borrowed typed structs) is kept for comparison
//!   with earlier figures.
//! - `response/*`: `Provider::translate_body` of a typical non-streaming answer (text plus
//!   a tool call, usage). Passthrough does nothing here.
//! - `stream/*`: a typical 20-event streamed answer through `Provider::stream_translator`,
//!   fed one network chunk per event into a fresh buffer (as `router::stream` does), then
//!   `finish`. Passthrough forwards the chunks as they are.
//!
//! Upstream bodies follow `src/mock_cloud.rs` and the providers' documented examples.
//!
//! Times are the benchmark thread's CPU time (`CLOCK_THREAD_CPUTIME_ID` on Linux), not
//! wall time: the acceptance item is about CPU, and CPU time stays meaningful on a
//! machine shared with other builds, where wall time also counts waiting for a core.
//! The allocator is the server's (mimalloc).
//!
//! Issue 12 adds the other client APIs through the hub: an Anthropic Messages request
//! (`benches/data/messages_with_tools.json`, the same conversation as the chat fixture)
//! to an OpenAI-compatible (SGLang) deployment and, for comparison, passed through to
//! Anthropic; and an OpenAI-compatible answer and 20-event stream translated for an
//! Anthropic client and for a Responses client.
//!
//! Results and their reading: BENCHMARKS.md, "Provider translation cost".

// Test and benchmark code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
use bytes::{Bytes, BytesMut};
use criterion::measurement::{Measurement, ValueFormatter, WallTime};
use criterion::{criterion_group, criterion_main, Criterion};
use llmgw::config::{ProviderKind, Secret};
use llmgw::convert;
use llmgw::request::{ClientRequest, Endpoint};
use llmgw::router::Deployment;
use serde_json::{json, Value};
use std::hint::black_box;
use std::time::Duration;

/// The server's allocator (`src/main.rs`): these paths allocate a lot, so the system
/// allocator would overstate their cost.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Criterion measurement: CPU time consumed by the calling thread.
struct ThreadCpu;

/// Formats durations the way criterion's wall-time measurement does.
static DURATION_FORMAT: WallTime = WallTime;

#[cfg(target_os = "linux")]
fn thread_cpu_time() -> Duration {
    use std::os::raw::{c_int, c_long};
    #[repr(C)]
    struct Timespec {
        tv_sec: c_long,
        tv_nsec: c_long,
    }
    extern "C" {
        fn clock_gettime(clock: c_int, tp: *mut Timespec) -> c_int;
    }
    const CLOCK_THREAD_CPUTIME_ID: c_int = 3;
    let mut ts = Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; the clock id is a Linux constant.
    let rc = unsafe { clock_gettime(CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID) failed");
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Elsewhere: wall time since the first call.
#[cfg(not(target_os = "linux"))]
fn thread_cpu_time() -> Duration {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    START.get_or_init(std::time::Instant::now).elapsed()
}

impl Measurement for ThreadCpu {
    type Intermediate = Duration;
    type Value = Duration;
    fn start(&self) -> Duration {
        thread_cpu_time()
    }
    fn end(&self, start: Duration) -> Duration {
        thread_cpu_time().saturating_sub(start)
    }
    fn add(&self, a: &Duration, b: &Duration) -> Duration {
        *a + *b
    }
    fn zero(&self) -> Duration {
        Duration::ZERO
    }
    fn to_f64(&self, v: &Duration) -> f64 {
        v.as_nanos() as f64
    }
    fn formatter(&self) -> &dyn ValueFormatter {
        DURATION_FORMAT.formatter()
    }
}

/// The typical agent request of `benches/hot_path.rs`: system prompt, user, assistant
/// tool call, tool result, user; two tools; sampling parameters; streaming with usage.
const CHAT_WITH_TOOLS: &str = include_str!("data/chat_with_tools.json");

/// The same conversation as an Anthropic Messages request (Claude Code's shape: system
/// blocks and tools with `cache_control`, the tool result and the next question in one
/// user turn).
const MESSAGES_WITH_TOOLS: &str = include_str!("data/messages_with_tools.json");

/// The streamed answer: 16 text pieces of a few tokens each, like a real stream.
const ANSWER: [&str; 16] = [
    "The mean",
    " energy for",
    " 2024-05-25",
    " is -76.4",
    "012 (n = 5",
    "), versus -",
    "76.4022 for",
    " 2024-06-01",
    ". Welch's",
    " t-test gives",
    " t = 2.31,",
    " p = 0.050",
    ", so the",
    " difference is",
    " borderline, not",
    " significant at 5%.",
];

fn deployment(kind: ProviderKind, model: &str, api_base: &str) -> Deployment {
    let mut d = Deployment::standalone(kind, model, api_base);
    d.upstream.api_key = Some(Secret::new("sk-bench-0123456789abcdef0123456789abcdef"));
    d
}

fn client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
}

/// A non-streaming Messages answer: a sentence and a tool call (as the mock sends).
fn anthropic_response() -> Bytes {
    Bytes::from(
        json!({"id": "msg_01XFDUDYJgAACzvnptvVoYEL", "type": "message", "role": "assistant",
            "model": "claude-sonnet-4-5",
            "content": [
                {"type": "text", "text": "I'll read the energy column of the 2024-05-25 run first."},
                {"type": "tool_use", "id": "toolu_01A09q90qw90lq917835lq9", "name": "read_csv",
                    "input": {"path": "runs/2024-05-25/results.csv", "columns": ["energy"]}}
            ],
            "stop_reason": "tool_use", "stop_sequence": null,
            "usage": {"input_tokens": 412, "output_tokens": 58,
                "cache_creation_input_tokens": 0, "cache_read_input_tokens": 256}})
        .to_string(),
    )
}

/// The same answer from `generateContent`.
fn gemini_response() -> Bytes {
    Bytes::from(
        json!({"candidates": [{"content": {"parts": [
                {"text": "I'll read the energy column of the 2024-05-25 run first."},
                {"functionCall": {"name": "read_csv",
                    "args": {"path": "runs/2024-05-25/results.csv", "columns": ["energy"]}}}
            ], "role": "model"}, "finishReason": "STOP", "index": 0}],
            "usageMetadata": {"promptTokenCount": 412, "candidatesTokenCount": 58,
                "totalTokenCount": 470, "cachedContentTokenCount": 256},
            "modelVersion": "gemini-2.5-flash", "responseId": "mAitaJ2nJ8OqnvgPj5XkwQQ"})
        .to_string(),
    )
}

/// A Messages stream of 20 events: message_start, content_block_start, ping, 14 text
/// deltas, content_block_stop, message_delta, message_stop; one network chunk each.
fn anthropic_stream() -> Vec<Bytes> {
    let ev = |name: &str, data: Value| Bytes::from(format!("event: {name}\ndata: {data}\n\n"));
    let mut events = vec![
        ev(
            "message_start",
            json!({"type": "message_start", "message": {"id": "msg_01XFDUDYJgAACzvnptvVoYEL",
                "type": "message", "role": "assistant", "content": [], "model": "claude-sonnet-4-5",
                "stop_reason": null, "stop_sequence": null,
                "usage": {"input_tokens": 412, "output_tokens": 1,
                    "cache_creation_input_tokens": 0, "cache_read_input_tokens": 256}}}),
        ),
        ev(
            "content_block_start",
            json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
        ),
        ev("ping", json!({"type": "ping"})),
    ];
    for piece in &ANSWER[..14] {
        events.push(ev(
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": piece}}),
        ));
    }
    events.push(ev(
        "content_block_stop",
        json!({"type": "content_block_stop", "index": 0}),
    ));
    events.push(ev(
        "message_delta",
        json!({"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": null},
            "usage": {"output_tokens": 61}}),
    ));
    events.push(ev("message_stop", json!({"type": "message_stop"})));
    assert_eq!(events.len(), 20);
    events
}

/// A `streamGenerateContent?alt=sse` stream of 20 events, one text piece each, the last
/// with `finishReason` and full usage (as the mock and the API send).
fn gemini_stream() -> Vec<Bytes> {
    (0..20)
        .map(|i| {
            let mut cand = json!({"content": {"parts": [{"text": ANSWER[i % ANSWER.len()]}],
                "role": "model"}, "index": 0});
            let mut usage = json!({"promptTokenCount": 412, "totalTokenCount": 412});
            if i == 19 {
                cand["finishReason"] = json!("STOP");
                usage = json!({"promptTokenCount": 412, "candidatesTokenCount": 61,
                    "totalTokenCount": 473, "cachedContentTokenCount": 256});
            }
            let v = json!({"candidates": [cand], "usageMetadata": usage,
                "modelVersion": "gemini-2.5-flash", "responseId": "mAitaJ2nJ8OqnvgPj5XkwQQ"});
            Bytes::from(format!("data: {v}\r\n\r\n"))
        })
        .collect()
}

/// An OpenAI-compatible (SGLang) answer: a sentence and a tool call.
fn openai_response() -> Bytes {
    Bytes::from(
        json!({"id": "chatcmpl-8d2f", "object": "chat.completion", "created": 1_700_000_000u64,
            "model": "Qwen/Qwen3-8B",
            "choices": [{"index": 0, "message": {"role": "assistant",
                "content": "I'll read the energy column of the 2024-05-25 run first.",
                "tool_calls": [{"id": "call_0a1b2c", "type": "function", "function": {"name": "read_csv",
                    "arguments": "{\"path\": \"runs/2024-05-25/results.csv\", \"columns\": [\"energy\"]}"}}]},
                "finish_reason": "tool_calls"}],
            "usage": {"prompt_tokens": 412, "completion_tokens": 58, "total_tokens": 470}})
        .to_string(),
    )
}

/// An OpenAI-compatible stream of 20 events: the role chunk, 16 text pieces, the finish
/// chunk, the usage chunk and `[DONE]`, as SGLang sends them with `include_usage`.
fn openai_stream() -> Vec<Bytes> {
    openai_stream_of(ANSWER.len())
}

/// The same with `pieces` text events (the answer's pieces, repeated).
fn openai_stream_of(pieces: usize) -> Vec<Bytes> {
    let chunk = |delta: Value, finish: Value| {
        let v = json!({"id": "chatcmpl-8d2f", "object": "chat.completion.chunk",
            "created": 1_700_000_000u64, "model": "Qwen/Qwen3-8B",
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}],
            "usage": null});
        Bytes::from(format!("data: {v}\n\n"))
    };
    let mut events = vec![chunk(
        json!({"role": "assistant", "content": ""}),
        Value::Null,
    )];
    for piece in ANSWER.iter().cycle().take(pieces) {
        events.push(chunk(json!({"content": piece}), Value::Null));
    }
    events.push(chunk(json!({}), json!("stop")));
    let usage = json!({"id": "chatcmpl-8d2f", "object": "chat.completion.chunk",
        "created": 1_700_000_000u64, "model": "Qwen/Qwen3-8B", "choices": [],
        "usage": {"prompt_tokens": 412, "completion_tokens": 61, "total_tokens": 473}});
    events.push(Bytes::from(format!("data: {usage}\n\n")));
    events.push(Bytes::from_static(b"data: [DONE]\n\n"));
    assert_eq!(events.len(), pieces + 4);
    events
}

/// Translates a whole stream as `router::stream` does: a fresh buffer per network chunk.
fn translate_stream(
    dep: &Deployment,
    req: &ClientRequest,
    chunks: &[Bytes],
) -> (usize, Option<Bytes>) {
    let mut tr = convert::translator(dep, req).expect("a translated stream");
    let mut sent = 0;
    let mut last = None;
    for chunk in chunks {
        let mut out = BytesMut::new();
        tr.feed(chunk, &mut out).expect("valid stream");
        if !out.is_empty() {
            sent += out.len();
            last = Some(out.freeze());
        }
    }
    let mut out = BytesMut::new();
    tr.finish(&mut out).expect("complete stream");
    if !out.is_empty() {
        sent += out.len();
        last = Some(out.freeze());
    }
    (sent, last)
}

struct Setup {
    body: Bytes,
    messages: Bytes,
    client: reqwest::Client,
    openai: Deployment,
    sglang: Deployment,
    anthropic: Deployment,
    gemini: Deployment,
}

fn setup() -> Setup {
    let s = Setup {
        body: Bytes::from_static(CHAT_WITH_TOOLS.as_bytes()),
        messages: Bytes::from_static(MESSAGES_WITH_TOOLS.as_bytes()),
        client: client(),
        sglang: deployment(
            ProviderKind::Sglang,
            "Qwen/Qwen3-8B",
            "http://gpu113:30000/v1",
        ),
        openai: deployment(
            ProviderKind::Openai,
            "gpt-4o-mini",
            "https://api.openai.com/v1",
        ),
        anthropic: deployment(
            ProviderKind::Anthropic,
            "claude-sonnet-4-5",
            "https://api.anthropic.com/v1",
        ),
        gemini: deployment(
            ProviderKind::Gemini,
            "gemini-2.5-flash",
            "https://generativelanguage.googleapis.com/v1beta",
        ),
    };
    // Check once that every path does the real work and none takes an error shortcut.
    let req = parse(&s.body);
    for dep in [&s.openai, &s.anthropic, &s.gemini] {
        let r = convert::request(&s.client, dep, &req)
            .expect("request builds")
            .build()
            .expect("valid request");
        let out: Value = serde_json::from_slice(r.body().and_then(|b| b.as_bytes()).unwrap())
            .expect("JSON body");
        let turns = out
            .get("messages")
            .or_else(|| out.get("contents"))
            .and_then(Value::as_array)
            .expect("turns");
        assert!(turns.len() >= 3, "{}: {out}", dep.id);
    }
    for (dep, body) in [
        (&s.anthropic, anthropic_response()),
        (&s.gemini, gemini_response()),
    ] {
        let out = convert::translate_body(dep, &req, body).unwrap();
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["choices"][0]["finish_reason"], "tool_calls", "{v}");
    }
    for (dep, chunks) in [
        (&s.anthropic, anthropic_stream()),
        (&s.gemini, gemini_stream()),
    ] {
        let (_, last) = translate_stream(dep, &req, &chunks);
        let last = last.expect("output");
        assert!(last.ends_with(b"data: [DONE]\n\n"));
        assert!(std::str::from_utf8(&last)
            .unwrap()
            .contains("\"total_tokens\""));
    }
    // The other client APIs: an Anthropic request reaches SGLang as chat completions,
    // SGLang's answers reach Anthropic and Responses clients in their formats.
    let msg = parse_as(Endpoint::Messages, &s.messages);
    let r = convert::request(&s.client, &s.sglang, &msg)
        .unwrap()
        .build()
        .unwrap();
    let out: Value = serde_json::from_slice(r.body().and_then(|b| b.as_bytes()).unwrap()).unwrap();
    assert_eq!(out["messages"].as_array().unwrap().len(), 5, "{out}");
    assert_eq!(out["messages"][3]["role"], "tool", "{out}");
    let resp = responses_request();
    for (req, end) in [
        (
            &msg,
            &b"event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n"[..],
        ),
        (&resp, &b"}}\n\n"[..]),
    ] {
        let out = convert::translate_body(&s.sglang, req, openai_response()).unwrap();
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert!(v["content"].is_array() || v["output"].is_array(), "{v}");
        let (_, last) = translate_stream(&s.sglang, req, &openai_stream());
        let last = last.expect("output");
        assert!(last.ends_with(end), "{}", String::from_utf8_lossy(&last));
    }
    s
}

fn parse_as(endpoint: Endpoint, body: &Bytes) -> ClientRequest {
    ClientRequest::parse(endpoint, body.clone()).expect("valid request")
}

/// A streamed Responses request (only its endpoint matters for the answer's format).
fn responses_request() -> ClientRequest {
    parse_as(
        Endpoint::Responses,
        &Bytes::from_static(br#"{"model":"qwen3","input":"Hi","stream":true}"#),
    )
}

fn parse(body: &Bytes) -> ClientRequest {
    // Cloning `Bytes` is a refcount bump, as in the server (it owns the body).
    ClientRequest::parse(Endpoint::ChatCompletions, body.clone()).expect("valid request")
}

fn request(c: &mut Criterion<ThreadCpu>) {
    let s = setup();
    let mut g = c.benchmark_group("request");
    g.bench_function("openai_passthrough", |b| {
        b.iter(|| {
            let req = parse(black_box(&s.body));
            req.body_for_model(&s.openai.model)
        })
    });
    // Not a provider path: parse + the whole body as a `serde_json::Value`
    // (`ClientRequest::json`), where both translations used to start.
    g.bench_function("parse_and_json_value", |b| {
        b.iter(|| parse(black_box(&s.body)).json().expect("JSON"))
    });
    for (name, dep) in [
        ("openai_build", &s.openai),
        ("anthropic", &s.anthropic),
        ("gemini", &s.gemini),
    ] {
        g.bench_function(name, |b| {
            b.iter(|| {
                let req = parse(black_box(&s.body));
                convert::request(&s.client, dep, &req).expect("builds")
            })
        });
    }
    // Acceptance item 6 of issue 12: an Anthropic client's request to an
    // OpenAI-compatible deployment, through the hub (≤ 10 µs); the same request passed
    // through to Anthropic, for comparison.
    for (name, dep) in [
        ("anthropic_in_to_openai", &s.sglang),
        ("anthropic_in_passthrough", &s.anthropic),
    ] {
        g.bench_function(name, |b| {
            b.iter(|| {
                let req = parse_as(Endpoint::Messages, black_box(&s.messages));
                convert::request(&s.client, dep, &req).expect("builds")
            })
        });
    }
    g.finish();
}

fn response(c: &mut Criterion<ThreadCpu>) {
    let s = setup();
    let req = parse(&s.body);
    let mut g = c.benchmark_group("response");
    for (name, dep, body) in [
        ("anthropic", &s.anthropic, anthropic_response()),
        ("gemini", &s.gemini, gemini_response()),
    ] {
        g.bench_function(name, |b| {
            b.iter(|| {
                convert::translate_body(dep, &req, black_box(body.clone())).expect("translates")
            })
        });
    }
    let msg = parse_as(Endpoint::Messages, &s.messages);
    let resp = responses_request();
    for (name, req) in [
        ("openai_to_anthropic", &msg),
        ("openai_to_responses", &resp),
    ] {
        g.bench_function(name, |b| {
            b.iter(|| {
                convert::translate_body(&s.sglang, req, black_box(openai_response()))
                    .expect("translates")
            })
        });
    }
    g.finish();
}

fn stream(c: &mut Criterion<ThreadCpu>) {
    let s = setup();
    let req = parse(&s.body);
    let mut g = c.benchmark_group("stream");
    for (name, dep, chunks) in [
        ("anthropic_20_events", &s.anthropic, anthropic_stream()),
        ("gemini_20_events", &s.gemini, gemini_stream()),
    ] {
        g.bench_function(name, |b| {
            b.iter(|| translate_stream(dep, &req, black_box(&chunks)))
        });
    }
    let msg = parse_as(Endpoint::Messages, &s.messages);
    let resp = responses_request();
    // 20 events, and 200 (196 text pieces): the difference is the cost per event, the
    // rest the fixed cost of a response (Responses repeats the whole answer at its end).
    let (short, long) = (openai_stream(), openai_stream_of(196));
    for (name, req, chunks) in [
        ("openai_to_anthropic_20_events", &msg, &short),
        ("openai_to_anthropic_200_events", &msg, &long),
        ("openai_to_responses_20_events", &resp, &short),
        ("openai_to_responses_200_events", &resp, &long),
    ] {
        g.bench_function(name, |b| {
            b.iter(|| translate_stream(&s.sglang, req, black_box(chunks)))
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .with_measurement(ThreadCpu)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = request, response, stream
}
criterion_main!(benches);
