//! Micro-benchmarks of the CPU work the gateway does itself on every request, apart from
//! HTTP and the upstream: reading the routing fields out of the client's body, splicing
//! the upstream's model id into it, rendering an OpenAI-shaped error, and what tracing
//! (`[telemetry]`) adds to a request, on and off in the same run.
//!
//!   cargo bench --bench hot_path              # full run
//!   cargo bench --bench hot_path -- --quick   # a few seconds (what scripts/bench.sh runs)
//!
//! The end-to-end cost (HTTP in and out, the pooled upstream call, logging) is measured by
//! `scripts/bench.sh`; see BENCHMARKS.md.

// Test and benchmark code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use llmgw::error::ApiError;
use llmgw::request::{ClientRequest, Endpoint};
use std::hint::black_box;

/// A typical agent request: system prompt, a short conversation, two tools, sampling
/// parameters, streaming with usage. About 1.9 KB.
const CHAT_WITH_TOOLS: &str = include_str!("data/chat_with_tools.json");

/// The request `/work/prof`'s callgrind profile sends (issue 13): system prompt, one user
/// turn, one tool. About 750 bytes.
const CHAT_AGENT: &str = r#"{"model":"bench","stream":false,"messages":[{"role":"system","content":"You are a careful research assistant. Answer briefly and call a tool when you need data you do not have."},{"role":"user","content":"What is the mean of column 'energy' in runs/2024-06-01/results.csv?"}],"tools":[{"type":"function","function":{"name":"read_csv","description":"Read selected columns of a CSV file under the project directory.","parameters":{"type":"object","properties":{"path":{"type":"string"},"columns":{"type":"array","items":{"type":"string"}}},"required":["path"]}}}],"temperature":0.2,"max_tokens":256}"#;

/// The smallest useful request.
const CHAT_SMALL: &str =
    r#"{"model":"qwen3","messages":[{"role":"user","content":"Say hello."}],"max_tokens":16}"#;

fn parse(c: &mut Criterion) {
    let mut g = c.benchmark_group("ClientRequest::parse");
    for (name, body) in [
        ("chat_with_tools", CHAT_WITH_TOOLS),
        ("chat_agent", CHAT_AGENT),
        ("chat_small", CHAT_SMALL),
    ] {
        let bytes = Bytes::from_static(body.as_bytes());
        g.throughput(Throughput::Bytes(bytes.len() as u64));
        g.bench_function(name, |b| {
            b.iter(|| {
                // Cloning `Bytes` is a refcount bump, as in the server (it owns the body).
                ClientRequest::parse(Endpoint::ChatCompletions, black_box(bytes.clone()))
                    .expect("valid request")
            })
        });
    }
    g.finish();
}

fn body_for_model(c: &mut Criterion) {
    let req = ClientRequest::parse(
        Endpoint::ChatCompletions,
        Bytes::from_static(CHAT_WITH_TOOLS.as_bytes()),
    )
    .expect("valid request");
    let mut g = c.benchmark_group("ClientRequest::body_for_model");
    g.throughput(Throughput::Bytes(req.body.len() as u64));
    g.bench_function("splice_new_model", |b| {
        b.iter(|| req.body_for_model(black_box("Qwen/Qwen3-0.6B")))
    });
    g.bench_function("same_model_shares_bytes", |b| {
        b.iter(|| req.body_for_model(black_box("qwen3")))
    });
    g.finish();
}

fn error_body(c: &mut Criterion) {
    let e = ApiError::not_found(
        "model \"gpt-5\" is not served by this gateway; available models: qwen3, gpt-4o-mini",
    )
    .with_param("model")
    .with_code("model_not_found");
    let mut g = c.benchmark_group("ApiError");
    g.bench_function("body", |b| b.iter(|| black_box(&e).body()));
    g.bench_function("sse_event", |b| b.iter(|| black_box(&e).sse_event()));
    g.finish();
}

/// `prefix-aware` routing's decision for a 32 KB prompt (issue 28: ≤ 5 µs): the prompt's
/// prefix keys, then the longest cached prefix among four replicas (one holds it).
fn prefix_route(c: &mut Criterion) {
    use llmgw::config::ProviderKind;
    use llmgw::router::{prefix, Deployment};
    use std::sync::Arc;
    let mut body = String::from(r#"{"model":"m","messages":[{"role":"system","content":""#);
    while body.len() < 32 * 1024 {
        body.push_str("You are a careful assistant; cite your sources. ");
    }
    body.push_str(r#""}]}"#);
    let deps: Vec<Arc<Deployment>> = (0..4)
        .map(|_| {
            let d = Deployment::standalone(ProviderKind::Sglang, "m", "http://127.0.0.1:9/v1");
            d.enable_prefix_index(prefix::DEFAULT_INDEX_CHUNKS);
            Arc::new(d)
        })
        .collect();
    deps[2]
        .prefix_index()
        .unwrap()
        .insert(&prefix::keys(body.as_bytes()));
    let cands: Vec<&Arc<Deployment>> = deps.iter().collect();
    let mut g = c.benchmark_group("prefix");
    g.throughput(Throughput::Bytes(body.len() as u64));
    g.bench_function("route_32k", |b| {
        b.iter(|| {
            let keys = prefix::keys(black_box(body.as_bytes()));
            prefix::pick(&cands, &keys, |_| 3)
        })
    });
    g.finish();
}

/// What `/metrics`' histograms add to one streamed request with virtual keys on (issue
/// 25): its duration and time to first token, one attempt, its tokens and time per
/// output token — on a series shared with other threads, as in the gateway.
fn histograms(c: &mut Criterion) {
    use llmgw::router::histograms::Series;
    use std::time::Duration;
    let s = std::sync::Arc::new(Series::new("local", "local-1"));
    c.bench_function("histograms: one streamed request recorded", |b| {
        b.iter(|| {
            let s = black_box(&s);
            s.attempt(200, black_box(Duration::from_millis(40)));
            s.request(
                200,
                black_box(Duration::from_millis(900)),
                Some(Duration::from_millis(40)),
            );
            s.tokens(200, 350, 120, Some(Duration::from_millis(7)));
        })
    });
}

/// What tracing costs one JSON request (issue 25: ≤ 3 µs on, nothing measurable off): the
/// span started from the client's `traceparent`, the request's attributes, the answer
/// read for usage, model and finish reasons, the span handed to the exporter's channel and
/// encoded as OTLP protobuf. Not counted: the router's record of each attempt (a lock and a
/// push); `scripts/instructions.sh --traces` measures the whole request.
fn telemetry(c: &mut Criterion) {
    use axum::http::{HeaderMap, HeaderValue};
    use llmgw::telemetry::bench::Bench;
    const ANSWER: &str = r#"{"id":"chatcmpl-1","object":"chat.completion","created":1700000000,"model":"mock-model","choices":[{"index":0,"message":{"role":"assistant","content":"The mean of column 'energy' is 42.7 over 1,204 runs."},"finish_reason":"stop"}],"usage":{"prompt_tokens":118,"completion_tokens":19,"total_tokens":137,"prompt_tokens_details":{"cached_tokens":64}}}"#;
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let req = ClientRequest::parse(
        Endpoint::ChatCompletions,
        Bytes::from_static(CHAT_AGENT.as_bytes()),
    )
    .unwrap();
    let mut headers = HeaderMap::new();
    headers.insert(
        "traceparent",
        HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
    );
    let answer = || {
        axum::response::Response::builder()
            .header("content-type", "application/json")
            .header("x-llmgw-deployment", "bench-1")
            .header("x-llmgw-attempts", "1")
            .header("x-llmgw-queue-ms", "0")
            .body(axum::body::Body::from(Bytes::from_static(
                ANSWER.as_bytes(),
            )))
            .unwrap()
    };
    let log = llmgw::router::RequestLog::default();
    let mut g = c.benchmark_group("telemetry");
    for (name, on) in [
        ("json_request_tracing_off", false),
        ("json_request_tracing_on", true),
    ] {
        let mut bench = Bench::new(on);
        g.bench_function(name, |b| {
            b.iter(|| rt.block_on(bench.request(black_box(&headers), &req, &log, answer())))
        });
    }
    g.finish();
}

criterion_group!(
    benches,
    parse,
    body_for_model,
    error_body,
    prefix_route,
    histograms,
    telemetry
);
criterion_main!(benches);
