//! OpenTelemetry traces (issue 25, acceptance 2): an OTLP/HTTP receiver in the test decodes
//! what the gateway exports with the official `opentelemetry-proto` definitions and checks
//! the spans of JSON and streamed answers, a fallback (two attempt spans), `/v1/messages`
//! and `/v1/responses`, the client's `traceparent` continued to the upstream, no prompt
//! text unless `capture_content`, and requests unaffected when the receiver is down.

// Test and benchmark code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod common;

use axum::body::Bytes;
use common::{chat_body, closed_port, mock, openai_model, wait_for, Gateway};
use llmgw::mock::{Behavior, Fault};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as Any;
use opentelemetry_proto::tonic::trace::v1::{span::SpanKind, Span};
use prost::Message;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The spans a receiver got, with their resource's `service.name`.
#[derive(Clone, Default)]
struct Received(Arc<Mutex<Vec<(String, Span)>>>);

impl Received {
    fn spans(&self) -> Vec<Span> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .map(|(_, s)| s.clone())
            .collect()
    }
    fn services(&self) -> Vec<String> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .map(|(n, _)| n.clone())
            .collect()
    }
    /// The SERVER span of the trace `trace_id` (and its CLIENT children).
    fn trace(&self, trace_id: &[u8]) -> (Option<Span>, Vec<Span>) {
        let spans: Vec<Span> = self
            .spans()
            .into_iter()
            .filter(|s| s.trace_id == trace_id)
            .collect();
        let server = spans
            .iter()
            .find(|s| s.kind == SpanKind::Server as i32)
            .cloned();
        let clients = spans
            .into_iter()
            .filter(|s| s.kind == SpanKind::Client as i32)
            .collect();
        (server, clients)
    }
}

/// An OTLP/HTTP receiver on 127.0.0.1: `POST /v1/traces` with a protobuf body.
async fn receiver() -> (String, Received) {
    let got = Received::default();
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post({
            let got = got.clone();
            move |headers: axum::http::HeaderMap, body: Bytes| {
                let got = got.clone();
                async move {
                    assert_eq!(
                        headers.get("content-type").unwrap(),
                        "application/x-protobuf"
                    );
                    assert_eq!(headers.get("x-test-auth").unwrap(), "Bearer otlp-secret");
                    let req = ExportTraceServiceRequest::decode(body).expect("valid OTLP protobuf");
                    let mut g = got.0.lock().unwrap();
                    for rs in req.resource_spans {
                        let service = rs
                            .resource
                            .iter()
                            .flat_map(|r| r.attributes.iter())
                            .find(|kv| kv.key == "service.name")
                            .and_then(|kv| str_of(kv.value.as_ref()?.value.as_ref()?))
                            .unwrap_or_default();
                        for ss in rs.scope_spans {
                            for s in ss.spans {
                                g.push((service.clone(), s));
                            }
                        }
                    }
                    ""
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}"), got)
}

fn str_of(v: &Any) -> Option<String> {
    match v {
        Any::StringValue(s) => Some(s.clone()),
        _ => None,
    }
}

/// A span's attributes by key.
fn attrs(s: &Span) -> HashMap<String, Any> {
    s.attributes
        .iter()
        .filter_map(|kv| Some((kv.key.clone(), kv.value.clone()?.value?)))
        .collect()
}

fn s(a: &HashMap<String, Any>, k: &str) -> String {
    match a.get(k) {
        Some(Any::StringValue(v)) => v.clone(),
        other => panic!("{k}: {other:?} in {a:?}"),
    }
}

fn i(a: &HashMap<String, Any>, k: &str) -> i64 {
    match a.get(k) {
        Some(Any::IntValue(v)) => *v,
        other => panic!("{k}: {other:?} in {a:?}"),
    }
}

fn traceparent(trace: &[u8; 16], span: &[u8; 8]) -> String {
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    format!("00-{}-{}-01", hex(trace), hex(span))
}

/// Trace ids of the header the mock received last.
fn upstream_traceparent(m: &llmgw::mock::MockUpstream) -> String {
    m.state
        .received_headers()
        .last()
        .and_then(|h| h.get("traceparent"))
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default()
}

async fn post(gw: &Gateway, path: &str, body: serde_json::Value, tp: &str) -> reqwest::Response {
    gw.client()
        .post(gw.url(path))
        .header("content-type", "application/json")
        .header("traceparent", tp)
        .body(body.to_string())
        .send()
        .await
        .unwrap()
}

/// Waits until the receiver has the SERVER span of `trace`.
async fn server_span(got: &Received, trace: &[u8; 16]) -> (Span, Vec<Span>) {
    wait_for(Duration::from_secs(15), "the request span", || async {
        match got.trace(trace) {
            (Some(s), c) => Some((s, c)),
            _ => None,
        }
    })
    .await
}

fn config(otlp: &str, extra: &str, m: &str, a: &str, b: &str) -> String {
    format!(
        "[router]\nnum_retries = 0\n[router.fallbacks]\na = [\"b\"]\n\
         [telemetry]\notlp_endpoint = \"{otlp}\"\nservice_name = \"llmgw-test\"\n\
         headers = {{ x-test-auth = \"env:LLMGW_TEST_OTLP_AUTH\" }}\n{extra}\n{}{}{}",
        openai_model(
            "m",
            "up-m",
            m,
            "api_key = \"sk-provider-secret-0123456789abcdef\""
        ),
        openai_model("a", "up-a", a, ""),
        openai_model("b", "up-b", b, ""),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_span_per_request_with_attempts_and_the_clients_trace() {
    let (otlp, got) = receiver().await;
    let m = mock("m", Behavior::default()).await;
    let a = mock(
        "a",
        Behavior {
            fault: Some(Fault {
                status: 503,
                rate: 1.0,
                retry_after: None,
                message: "injected 503".into(),
            }),
            ..Behavior::default()
        },
    )
    .await;
    let b = mock("b", Behavior::default()).await;
    let gw = Gateway::builder(&config(
        &otlp,
        "",
        &m.base_url(),
        &a.base_url(),
        &b.base_url(),
    ))
    .env("LLMGW_TEST_OTLP_AUTH", "Bearer otlp-secret")
    .start()
    .await;

    // A JSON answer, continuing the client's trace.
    let (trace, parent) = ([0x11u8; 16], [0x22u8; 8]);
    let body = serde_json::json!({"model": "m", "messages": [{"role": "user", "content": "Say hello secretly"}],
        "max_tokens": 20, "temperature": 0.25});
    let r = post(
        &gw,
        "/v1/chat/completions",
        body,
        &traceparent(&trace, &parent),
    )
    .await;
    assert_eq!(r.status(), 200);
    r.text().await.unwrap();
    let (span, attempts) = server_span(&got, &trace).await;
    assert_eq!(span.name, "chat m");
    assert_eq!(
        span.parent_span_id,
        parent.to_vec(),
        "the client's span is the parent"
    );
    let at = attrs(&span);
    assert_eq!(s(&at, "gen_ai.operation.name"), "chat");
    assert_eq!(s(&at, "gen_ai.provider.name"), "openai");
    assert_eq!(s(&at, "gen_ai.request.model"), "m");
    assert_eq!(s(&at, "gen_ai.response.model"), "up-m");
    assert_eq!(i(&at, "gen_ai.request.max_tokens"), 20);
    assert_eq!(
        at.get("gen_ai.request.temperature"),
        Some(&Any::DoubleValue(0.25))
    );
    assert_eq!(
        at.get("gen_ai.request.stream"),
        Some(&Any::BoolValue(false))
    );
    assert!(i(&at, "gen_ai.usage.input_tokens") > 0, "{at:?}");
    assert!(i(&at, "gen_ai.usage.output_tokens") > 0, "{at:?}");
    assert!(
        matches!(at.get("gen_ai.response.finish_reasons"), Some(Any::ArrayValue(v)) if !v.values.is_empty()),
        "{at:?}"
    );
    assert_eq!(s(&at, "server.address"), "127.0.0.1");
    assert_eq!(s(&at, "llmgw.deployment"), "m-1");
    assert_eq!(i(&at, "llmgw.attempts"), 1);
    assert_eq!(i(&at, "llmgw.queue_ms"), 0);
    assert!(!at.contains_key("error.type"), "{at:?}");
    assert!(span.end_time_unix_nano >= span.start_time_unix_nano);
    // One attempt span, whose id the upstream got in its traceparent.
    assert_eq!(attempts.len(), 1, "{attempts:?}");
    assert_eq!(attempts[0].parent_span_id, span.span_id);
    assert_eq!(attempts[0].name, "chat up-m");
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    assert_eq!(
        upstream_traceparent(&m),
        format!("00-{}-{}-01", hex(&trace), hex(&attempts[0].span_id))
    );
    assert_eq!(got.services()[0], "llmgw-test");

    // A streamed answer: time to first chunk, usage from the usage chunk.
    let trace = [0x33u8; 16];
    let body = serde_json::json!({"model": "m", "messages": [{"role": "user", "content": "Say hello secretly"}],
        "stream": true, "stream_options": {"include_usage": true}});
    let r = post(
        &gw,
        "/v1/chat/completions",
        body,
        &traceparent(&trace, &parent),
    )
    .await;
    assert_eq!(r.status(), 200);
    assert!(r.text().await.unwrap().contains("[DONE]"));
    let (span, attempts) = server_span(&got, &trace).await;
    let at = attrs(&span);
    assert_eq!(at.get("gen_ai.request.stream"), Some(&Any::BoolValue(true)));
    assert!(
        matches!(at.get("gen_ai.response.time_to_first_chunk"), Some(Any::DoubleValue(t)) if *t > 0.0),
        "{at:?}"
    );
    assert!(i(&at, "gen_ai.usage.output_tokens") > 0, "{at:?}");
    assert_eq!(s(&at, "gen_ai.response.model"), "up-m");
    assert!(
        matches!(at.get("gen_ai.response.finish_reasons"), Some(Any::ArrayValue(v)) if !v.values.is_empty())
    );
    assert_eq!(attempts.len(), 1);
    assert!(attempts[0].end_time_unix_nano <= span.end_time_unix_nano);

    // Through a fallback: two attempt spans, the first failed.
    let trace = [0x44u8; 16];
    let r = post(
        &gw,
        "/v1/chat/completions",
        serde_json::from_str(&chat_body("a", false)).unwrap(),
        &traceparent(&trace, &parent),
    )
    .await;
    assert_eq!(r.status(), 200);
    r.text().await.unwrap();
    let (span, mut attempts) = server_span(&got, &trace).await;
    let at = attrs(&span);
    assert_eq!(s(&at, "llmgw.fallback"), "b");
    assert_eq!(i(&at, "llmgw.attempts"), 2);
    assert_eq!(s(&at, "llmgw.deployment"), "b-1");
    assert_eq!(attempts.len(), 2, "{attempts:?}");
    attempts.sort_by_key(|s| s.start_time_unix_nano);
    let first = attrs(&attempts[0]);
    assert_eq!(s(&first, "llmgw.deployment"), "a-1");
    assert_eq!(s(&first, "error.type"), "service_unavailable");
    assert_eq!(i(&first, "http.response.status_code"), 503);
    let second = attrs(&attempts[1]);
    assert_eq!(s(&second, "llmgw.deployment"), "b-1");
    assert!(!second.contains_key("error.type"));

    // Anthropic's Messages and OpenAI's Responses, JSON and streamed.
    for (n, path, body) in [
        (
            0x55u8,
            "/v1/messages",
            serde_json::json!({"model": "m", "max_tokens": 30,
            "messages": [{"role": "user", "content": "Say hello secretly"}]}),
        ),
        (
            0x56,
            "/v1/messages",
            serde_json::json!({"model": "m", "max_tokens": 30, "stream": true,
            "messages": [{"role": "user", "content": "Say hello secretly"}]}),
        ),
        (
            0x66,
            "/v1/responses",
            serde_json::json!({"model": "m", "input": "Say hello secretly", "store": false}),
        ),
        (
            0x67,
            "/v1/responses",
            serde_json::json!({"model": "m", "input": "Say hello secretly",
            "store": false, "stream": true}),
        ),
    ] {
        let trace = [n; 16];
        let r = post(&gw, path, body, &traceparent(&trace, &parent)).await;
        assert_eq!(r.status(), 200, "{path}");
        r.text().await.unwrap();
        let (span, attempts) = server_span(&got, &trace).await;
        let at = attrs(&span);
        assert_eq!(span.name, "chat m", "{path}");
        assert_eq!(s(&at, "http.route"), path);
        assert_eq!(s(&at, "gen_ai.response.model"), "up-m", "{path}: {at:?}");
        assert!(i(&at, "gen_ai.usage.input_tokens") > 0, "{path}: {at:?}");
        assert!(i(&at, "gen_ai.usage.output_tokens") > 0, "{path}: {at:?}");
        assert!(
            matches!(at.get("gen_ai.response.finish_reasons"), Some(Any::ArrayValue(v)) if !v.values.is_empty()),
            "{path}: {at:?}"
        );
        assert_eq!(attempts.len(), 1, "{path}");
    }

    // A request without traceparent starts its own trace; a malformed one is ignored.
    let before = got.spans().len();
    let r = post(
        &gw,
        "/v1/chat/completions",
        serde_json::from_str(&chat_body("m", false)).unwrap(),
        "00-zz-not-a-trace",
    )
    .await;
    assert_eq!(r.status(), 200);
    wait_for(Duration::from_secs(15), "a new trace", || async {
        (got.spans().len() >= before + 2).then_some(())
    })
    .await;

    // No prompt or answer text without capture_content, no key anywhere.
    for sp in got.spans() {
        let text = format!("{sp:?}");
        assert!(!text.contains("secretly"), "{text}");
        assert!(!text.contains("Hello from"), "{text}");
        assert!(!text.contains("sk-provider-secret"), "{text}");
    }
    let metrics = gw.get("/metrics").await.text().await.unwrap();
    let exported = metric(&metrics, "llmgw_telemetry_spans_exported_total");
    // 8 requests: 8 request spans and 9 attempt spans.
    assert!(exported >= 17.0, "{metrics}");
    assert_eq!(metric(&metrics, "llmgw_telemetry_spans_dropped_total"), 0.0);
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("{name} missing in {text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_only_when_captured_and_masked_and_the_key_named() {
    use common::keys::{admin, new_key, PRICED};
    let (otlp, got) = receiver().await;
    let m = mock("m", Behavior::default()).await;
    let models = format!(
        "[telemetry]\notlp_endpoint = \"{otlp}\"\ncapture_content = true\n\
         headers = {{ x-test-auth = \"env:LLMGW_TEST_OTLP_AUTH\" }}\n{}",
        openai_model(
            "m",
            "up-m",
            &m.base_url(),
            &format!("api_key = \"sk-provider-secret-0123456789abcdef\"\n{PRICED}")
        ),
    );
    let gw = common::keys::gateway(&models, "")
        .env("LLMGW_TEST_OTLP_AUTH", "Bearer otlp-secret")
        .start()
        .await;
    let base = gw.url("");
    let (status, team) = admin(
        &base,
        reqwest::Method::POST,
        "/team/new",
        Some(serde_json::json!({"team_id": "physics", "team_alias": "Physics lab"})),
    )
    .await;
    assert_eq!(status, 200, "{team}");
    let (key, _) = new_key(
        &base,
        serde_json::json!({"key_alias": "alice-notebook", "team_id": "physics"}),
    )
    .await;
    for stream in [false, true] {
        let trace = [if stream { 0x78 } else { 0x77 }; 16];
        let body = serde_json::json!({"model": "m", "stream": stream, "messages": [{"role": "user",
            "content": "my keys: sk-provider-secret-0123456789abcdef and sk-llmgw-0123456789abcdefghij"}]});
        let r = gw
            .client()
            .post(gw.url("/v1/chat/completions"))
            .header("content-type", "application/json")
            .header("traceparent", traceparent(&trace, &[1; 8]))
            .bearer_auth(&key)
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        r.text().await.unwrap();
        let (span, _) = server_span(&got, &trace).await;
        let at = attrs(&span);
        let input = s(&at, "gen_ai.input.messages");
        assert!(input.contains("my keys:"), "{input}");
        assert!(!input.contains("sk-provider-secret"), "{input}");
        assert!(!input.contains("sk-llmgw-0123"), "{input}");
        let output = s(&at, "gen_ai.output.messages");
        assert!(output.contains("Hello from"), "{stream}: {output}");
        assert_eq!(s(&at, "llmgw.key_alias"), "alice-notebook");
        assert_eq!(s(&at, "llmgw.team"), "physics");
        assert!(
            matches!(at.get("llmgw.cost_usd"), Some(Any::DoubleValue(c)) if *c > 0.0),
            "{stream}: {at:?}"
        );
        // Whatever the span holds, never the caller's key.
        assert!(!format!("{span:?}").contains(&key[10..]), "{span:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_succeed_while_the_receiver_is_down() {
    let m = mock("m", Behavior::default()).await;
    let otlp = format!("http://127.0.0.1:{}", closed_port());
    let gw = Gateway::builder(&config(
        &otlp,
        "export_timeout = \"1s\"",
        &m.base_url(),
        &m.base_url(),
        &m.base_url(),
    ))
    .env("LLMGW_TEST_OTLP_AUTH", "Bearer otlp-secret")
    .start()
    .await;
    for stream in [false, true, false, true] {
        let r = gw
            .post_json("/v1/chat/completions", &chat_body("m", stream))
            .await;
        assert_eq!(r.status(), 200);
        r.text().await.unwrap();
    }
    wait_for(
        Duration::from_secs(15),
        "failed exports counted",
        || async {
            let metrics = gw.get("/metrics").await.text().await.unwrap();
            let lost = metric(&metrics, "llmgw_telemetry_spans_failed_total")
                + metric(&metrics, "llmgw_telemetry_spans_dropped_total");
            (lost >= 4.0).then_some(())
        },
    )
    .await;
}
