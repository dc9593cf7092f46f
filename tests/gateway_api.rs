//! The gateway's OpenAI API, driven over loopback: the real `llmgw serve` binary in
//! front of in-process mock upstreams.

// Test and benchmark code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod common;

use common::{
    chat_body, closed_port, content_events, expect_openai_error, json_body, mock, openai_model,
    read_sse, wait_for, Gateway, GatewayBuilder,
};
use llmgw::mock::{Behavior, Fault};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const SEC: Duration = Duration::from_secs(1);

fn header(resp: &reqwest::Response, name: &str) -> Option<String> {
    resp.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

#[tokio::test(flavor = "multi_thread")]
async fn chat_completion_passes_body_through_with_model_swapped() {
    let up = mock("mock-a", Behavior::default()).await;
    let cfg = openai_model(
        "gpt-test",
        "upstream/model-x",
        &up.base_url(),
        "id = \"dep-a\"",
    );
    let gw = Gateway::start(&cfg).await;

    // Odd spacing, escapes and number formats: the upstream must see these exact bytes.
    let body = r#"{ "messages": [{"role":"user","content":"What's the weather in Z\u00fcrich?"}],
  "model" : "gpt-test",
  "tools": [{"type":"function","function":{"name":"get_weather","description":"Weather now","parameters":{"type":"object","properties":{"city":{"type":"string"}},"required":["city"]}}}],
  "tool_choice":"auto", "temperature": 0.50, "x_vendor_extension": {"nested": [1, 2.0e0, null, "\/"]} }"#;
    let resp = gw.post_json("/v1/chat/completions", body).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(
        header(&resp, "x-llmgw-deployment").as_deref(),
        Some("dep-a")
    );
    assert!(header(&resp, "content-type")
        .unwrap_or_default()
        .starts_with("application/json"));
    let v = json_body(resp).await;
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["choices"][0]["message"]["content"], "Hello from mock-a");
    assert_eq!(
        v["model"], "upstream/model-x",
        "the mock's answer is relayed"
    );
    assert!(v["id"].as_str().unwrap().starts_with("chatcmpl-mock-a"));
    assert_eq!(v["usage"]["prompt_tokens"], 9);

    let sent = up.state.last_body().expect("upstream got a request");
    let expected = body.replacen("\"gpt-test\"", "\"upstream/model-x\"", 1);
    assert_eq!(
        std::str::from_utf8(&sent).unwrap(),
        expected,
        "only the model value may change on the way upstream"
    );
    assert_eq!(up.state.request_count(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn streaming_chunks_arrive_one_by_one_with_usage_and_done() {
    let gate = std::sync::Arc::new(tokio::sync::Semaphore::new(0));
    let up = mock(
        "mock-s",
        Behavior {
            chunks: 5,
            chunk_gate: Some(gate.clone()),
            ..Behavior::default()
        },
    )
    .await;
    let gw = Gateway::start(&openai_model("m", "mock-model", &up.base_url(), "")).await;

    let body = serde_json::json!({
        "model": "m",
        "messages": [{"role": "user", "content": "hi"}],
        "stream": true,
        "stream_options": {"include_usage": true},
    })
    .to_string();
    let resp = gw.post_json("/v1/chat/completions", &body).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(header(&resp, "x-llmgw-deployment").as_deref(), Some("m-1"));
    assert!(header(&resp, "content-type")
        .unwrap_or_default()
        .starts_with("text/event-stream"));
    // Streamed, not buffered: the mock sends each content chunk only once the one before
    // it has reached the client (by order of events, not by time).
    let events = common::read_sse_released_one_by_one(resp, &gate, 5).await;

    let content = content_events(&events);
    assert_eq!(content.len(), 5, "five content chunks: {events:?}");
    let text: String = content.iter().map(|(_, c)| c.as_str()).collect();
    assert_eq!(text, "Hello from mock-s");
    let distinct: std::collections::BTreeSet<Instant> = content.iter().map(|(t, _)| *t).collect();
    assert_eq!(distinct.len(), 5, "each chunk in a read of its own");

    let usage = events
        .iter()
        .filter_map(|e| e.json())
        .find(|v| v["usage"].is_object())
        .expect("usage chunk");
    assert_eq!(usage["choices"].as_array().map(Vec::len), Some(0));
    assert_eq!(usage["usage"]["total_tokens"], 14);
    assert!(events.last().unwrap().is_done(), "ends with data: [DONE]");
    assert_eq!(events.iter().filter(|e| e.is_done()).count(), 1);
    let finish = events
        .iter()
        .filter_map(|e| e.json())
        .find(|v| v["choices"][0]["finish_reason"] == "stop");
    assert!(finish.is_some(), "a finish_reason chunk passes");
}

#[tokio::test(flavor = "multi_thread")]
async fn completions_embeddings_models_and_health() {
    let up = mock("mock-c", Behavior::default()).await;
    let cfg = format!(
        "{}{}",
        openai_model("alpha", "mock-model", &up.base_url(), ""),
        openai_model("beta", "embed-model", &up.base_url(), "id = \"beta-emb\"")
    );
    let gw = Gateway::start(&cfg).await;

    // /v1/completions
    let resp = gw
        .post_json(
            "/v1/completions",
            r#"{"model":"alpha","prompt":"Once upon","max_tokens":5}"#,
        )
        .await;
    assert_eq!(resp.status(), 200);
    let v = json_body(resp).await;
    assert_eq!(v["object"], "text_completion");
    assert_eq!(v["choices"][0]["text"], "Hello from mock-c");
    assert_eq!(
        &up.state.last_body().unwrap()[..],
        br#"{"model":"mock-model","prompt":"Once upon","max_tokens":5}"#
    );

    // streamed /v1/completions
    let resp = gw
        .post_json(
            "/v1/completions",
            r#"{"model":"alpha","prompt":"Once upon","stream":true}"#,
        )
        .await;
    assert_eq!(resp.status(), 200);
    let events = read_sse(resp).await;
    let text: String = events
        .iter()
        .filter_map(|e| e.json())
        .filter_map(|v| v["choices"][0]["text"].as_str().map(str::to_string))
        .collect();
    assert_eq!(text, "Hello from mock-c");
    assert!(events.last().unwrap().is_done());

    // /v1/embeddings
    let resp = gw
        .post_json(
            "/v1/embeddings",
            r#"{"model":"beta","input":["one","two"]}"#,
        )
        .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(
        header(&resp, "x-llmgw-deployment").as_deref(),
        Some("beta-emb")
    );
    let v = json_body(resp).await;
    assert_eq!(v["object"], "list");
    let data = v["data"].as_array().unwrap();
    assert_eq!(data.len(), 2);
    assert_eq!(data[1]["index"], 1);
    assert_eq!(data[0]["embedding"].as_array().unwrap().len(), 8);
    assert_eq!(v["model"], "embed-model");

    // /v1/models: the configured names, in config order (not the upstream ids).
    let resp = gw.get("/v1/models").await;
    assert_eq!(resp.status(), 200);
    let v = json_body(resp).await;
    assert_eq!(v["object"], "list");
    let ids: Vec<&str> = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["alpha", "beta"]);
    assert!(v["data"]
        .as_array()
        .unwrap()
        .iter()
        .all(|m| m["object"] == "model"));

    // health endpoints
    let resp = gw.get("/health/liveness").await;
    assert_eq!(resp.status(), 200);
    let resp = gw.get("/health/readiness").await;
    assert_eq!(resp.status(), 200);
    assert_eq!(json_body(resp).await["status"], "ready");
    let resp = gw.get("/health").await;
    assert_eq!(resp.status(), 200);
    let v = json_body(resp).await;
    assert_eq!(v["status"], "healthy");
    let deps = v["deployments"].as_array().unwrap();
    let ids: Vec<&str> = deps.iter().map(|d| d["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["alpha-1", "beta-emb"]);
    assert_eq!(deps[0]["model_group"], "alpha");
    assert_eq!(deps[1]["model"], "embed-model");
}

#[tokio::test(flavor = "multi_thread")]
async fn request_errors_have_openai_shape() {
    let up = mock("mock-e", Behavior::default()).await;
    let cfg = format!(
        "[server]\nmax_body_bytes = 2048\n\n{}{}",
        openai_model("alpha", "mock-model", &up.base_url(), ""),
        openai_model("beta", "mock-model", &up.base_url(), "")
    );
    let gw = Gateway::start(&cfg).await;

    // malformed JSON
    let resp = gw
        .post_json(
            "/v1/chat/completions",
            r#"{"model": "alpha", "messages": ["#,
        )
        .await;
    let e = expect_openai_error(resp, 400).await;
    assert_eq!(e["type"], "invalid_request_error");
    assert!(e["message"].as_str().unwrap().contains("JSON"), "{e:?}");

    // not an object
    let resp = gw.post_json("/v1/chat/completions", "[1, 2]").await;
    expect_openai_error(resp, 400).await;

    // missing model
    let resp = gw
        .post_json("/v1/chat/completions", r#"{"messages":[]}"#)
        .await;
    let e = expect_openai_error(resp, 400).await;
    assert_eq!(e["param"], "model");

    // unknown model: 404 listing the known names
    let resp = gw
        .post_json("/v1/embeddings", &chat_body("gamma", false))
        .await;
    let e = expect_openai_error(resp, 404).await;
    let msg = e["message"].as_str().unwrap();
    assert!(
        msg.contains("gamma") && msg.contains("alpha") && msg.contains("beta"),
        "{msg}"
    );
    assert_eq!(e["param"], "model");
    assert_eq!(e["code"], "model_not_found");

    // body over [server] max_body_bytes, with Content-Length …
    let big = format!(
        r#"{{"model":"alpha","messages":[{{"role":"user","content":"{}"}}]}}"#,
        "x".repeat(10_000)
    );
    let resp = gw.post_json("/v1/chat/completions", &big).await;
    let e = expect_openai_error(resp, 413).await;
    assert!(e["message"].as_str().unwrap().contains("2048"), "{e:?}");
    // … and chunked, without one
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> = big
        .as_bytes()
        .chunks(1000)
        .map(|c| Ok(c.to_vec()))
        .collect();
    let resp = gw
        .client()
        .post(gw.url("/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            chunks,
        )))
        .send()
        .await
        .unwrap();
    expect_openai_error(resp, 413).await;
    // A body under the limit still goes through, on the same client: the 413s must not
    // leave a half-read connection in its pool (they answer `Connection: close`).
    let resp = gw
        .post_json("/v1/chat/completions", &chat_body("alpha", false))
        .await;
    assert_eq!(resp.status(), 200);

    // unknown route, wrong method
    let resp = gw.get("/v1/nothing-here").await;
    let e = expect_openai_error(resp, 404).await;
    assert!(e["message"].as_str().unwrap().contains("/v1/nothing-here"));
    let resp = gw.post_json("/v2/chat/completions", "{}").await;
    expect_openai_error(resp, 404).await;
    let resp = gw
        .client()
        .delete(gw.url("/v1/models"))
        .send()
        .await
        .unwrap();
    expect_openai_error(resp, 405).await;

    // None of the rejected requests reached the upstream.
    assert_eq!(up.state.request_count(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn upstream_unreachable_is_502() {
    let base = format!("http://127.0.0.1:{}/v1", closed_port());
    let cfg = format!(
        "[router]\nnum_retries = 0\n\n{}",
        openai_model("m", "x", &base, "")
    );
    let gw = Gateway::start(&cfg).await;
    let resp = gw
        .post_json("/v1/chat/completions", &chat_body("m", false))
        .await;
    let e = expect_openai_error(resp, 502).await;
    assert!(e["message"].as_str().unwrap().contains("m-1"), "{e:?}");
    let resp = gw
        .post_json("/v1/chat/completions", &chat_body("m", true))
        .await;
    expect_openai_error(resp, 502).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn upstream_timeout_is_504() {
    let up = mock(
        "mock-hang",
        Behavior {
            hang: true,
            ..Behavior::default()
        },
    )
    .await;
    let cfg = format!(
        "[router]\nnum_retries = 0\n\n{}",
        openai_model("m", "x", &up.base_url(), "timeout = \"300ms\"")
    );
    let gw = Gateway::start(&cfg).await;
    for stream in [false, true] {
        let t = Instant::now();
        let resp = gw
            .post_json("/v1/chat/completions", &chat_body("m", stream))
            .await;
        let e = expect_openai_error(resp, 504).await;
        assert_eq!(e["type"], "timeout_error");
        // Bounded: the deployment's 300 ms, not the client's 60 s.
        assert!(t.elapsed() < 10 * SEC, "took {:?}", t.elapsed());
    }
    assert_eq!(up.state.request_count(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn server_request_timeout_bounds_the_whole_request() {
    let up = mock(
        "mock-slow",
        Behavior {
            hang: true,
            ..Behavior::default()
        },
    )
    .await;
    // The deployment would wait a minute; [server] request_timeout cuts it at 400 ms.
    let cfg = format!(
        "[server]\nrequest_timeout = \"400ms\"\n\n[router]\nnum_retries = 0\n\n{}",
        openai_model("m", "x", &up.base_url(), "timeout = \"60s\"")
    );
    let gw = Gateway::start(&cfg).await;
    let t = Instant::now();
    let resp = gw
        .post_json("/v1/chat/completions", &chat_body("m", false))
        .await;
    expect_openai_error(resp, 504).await;
    assert!(t.elapsed() < 10 * SEC, "took {:?}", t.elapsed());
}

#[tokio::test(flavor = "multi_thread")]
async fn upstream_error_status_is_passed_through() {
    let up = mock(
        "mock-429",
        Behavior {
            fault: Some(Fault {
                status: 429,
                rate: 1.0,
                retry_after: Some("7".into()),
                message: "slow down, mock is busy".into(),
            }),
            ..Behavior::default()
        },
    )
    .await;
    let cfg = format!(
        "[router]\nnum_retries = 0\n\n{}",
        openai_model("m", "x", &up.base_url(), "")
    );
    let gw = Gateway::start(&cfg).await;

    let resp = gw
        .post_json("/v1/chat/completions", &chat_body("m", false))
        .await;
    assert_eq!(header(&resp, "retry-after").as_deref(), Some("7"));
    let e = expect_openai_error(resp, 429).await;
    assert_eq!(e["message"], "slow down, mock is busy");

    up.state.set_behavior(|b| {
        b.fault = Some(Fault {
            status: 500,
            rate: 1.0,
            retry_after: None,
            message: "mock exploded".into(),
        })
    });
    for (path, body) in [
        ("/v1/chat/completions", chat_body("m", true)),
        ("/v1/embeddings", r#"{"model":"m","input":"x"}"#.to_string()),
    ] {
        let resp = gw.post_json(path, &body).await;
        let e = expect_openai_error(resp, 500).await;
        assert_eq!(e["message"], "mock exploded", "{path}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn stream_cut_by_upstream_ends_with_error_event() {
    let up = mock(
        "mock-cut",
        Behavior {
            chunks: 6,
            // A pause between chunks, so the head and the first chunks reach the gateway
            // before the connection is cut (without one the mock may abort before its
            // headers were flushed: then the gateway rightly answers 502).
            chunk_delay: Duration::from_millis(50),
            cut_after: Some(2),
            ..Behavior::default()
        },
    )
    .await;
    let cfg = format!(
        "[router]\nnum_retries = 0\n\n{}",
        openai_model("m", "x", &up.base_url(), "")
    );
    let gw = Gateway::start(&cfg).await;
    let resp = gw
        .post_json("/v1/chat/completions", &chat_body("m", true))
        .await;
    assert_eq!(resp.status(), 200);
    let events = tokio::time::timeout(20 * SEC, read_sse(resp))
        .await
        .expect("a cut stream must end, not hang");
    assert_eq!(content_events(&events).len(), 2, "{events:?}");
    let last = events.last().unwrap().json().expect("last event is JSON");
    let err = last["error"].as_object().expect("an OpenAI error event");
    for key in ["message", "type", "param", "code"] {
        assert!(err.contains_key(key), "{last}");
    }
    assert!(!events.iter().any(|e| e.is_done()), "no [DONE] after a cut");
}

#[tokio::test(flavor = "multi_thread")]
async fn client_disconnect_cancels_upstream_stream() {
    // The upstream sends its first event and then nothing (its gate never opens): only
    // the gateway dropping its request can end that stream.
    let gate = std::sync::Arc::new(tokio::sync::Semaphore::new(0));
    let up = mock(
        "mock-long",
        Behavior {
            chunks: 60,
            chunk_gate: Some(gate),
            ..Behavior::default()
        },
    )
    .await;
    let gw = Gateway::start(&openai_model("m", "x", &up.base_url(), "")).await;
    let mut resp = gw
        .post_json("/v1/chat/completions", &chat_body("m", true))
        .await;
    assert_eq!(resp.status(), 200);
    let first = resp.chunk().await.unwrap().expect("first chunk");
    assert!(first.starts_with(b"data: "));
    assert_eq!(up.state.cancelled_streams.load(Ordering::SeqCst), 0);
    drop(resp);

    // The gateway drops its upstream request (bounded poll: nothing else would end it).
    let state = up.state.clone();
    wait_for(10 * SEC, "the upstream stream to be cancelled", || {
        let n = state.cancelled_streams.load(Ordering::SeqCst);
        async move { (n >= 1).then_some(()) }
    })
    .await;
    let line = gw
        .wait_for_log(5 * SEC, "for the cut-short request", |l| {
            l.contains("complete=false")
        })
        .await;
    assert!(line.contains("deployment=m-1"), "{line}");
}

#[tokio::test(flavor = "multi_thread")]
async fn master_key_is_required_when_configured() {
    let up = mock("mock-k", Behavior::default()).await;
    let cfg = format!(
        "[server]\nmaster_key = \"env:LLMGW_TEST_MASTER_KEY\"\n\n{}",
        openai_model("m", "x", &up.base_url(), "")
    );
    let key = "sk-llmgw-master-3b1f";
    let gw = Gateway::builder(&cfg)
        .env("LLMGW_TEST_MASTER_KEY", key)
        .start()
        .await;
    let c = gw.client();
    let post = |auth: Option<String>| {
        let mut rb = c
            .post(gw.url("/v1/chat/completions"))
            .body(chat_body("m", false));
        if let Some(a) = auth {
            rb = rb.header("authorization", a);
        }
        rb.send()
    };

    let e = expect_openai_error(post(None).await.unwrap(), 401).await;
    assert_eq!(e["type"], "authentication_error");
    expect_openai_error(post(Some("Bearer sk-wrong".into())).await.unwrap(), 401).await;
    expect_openai_error(post(Some(format!("Bearer {key}x"))).await.unwrap(), 401).await;
    assert_eq!(up.state.request_count(), 0, "rejected before the upstream");

    let resp = post(Some(format!("Bearer {key}"))).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(up.state.request_count(), 1);

    expect_openai_error(gw.get("/v1/models").await, 401).await;
    let resp = c
        .get(gw.url("/v1/models"))
        .bearer_auth(key)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    // Probes stay open for schedulers and load balancers.
    assert_eq!(gw.get("/health/liveness").await.status(), 200);
    assert_eq!(gw.get("/health/readiness").await.status(), 200);
    // Deployment health and metrics need the key (README: "The API").
    for path in ["/health", "/metrics"] {
        expect_openai_error(gw.get(path).await, 401).await;
        let resp = c.get(gw.url(path)).bearer_auth(key).send().await.unwrap();
        assert_eq!(resp.status(), 200, "{path}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn refuses_non_loopback_host_without_master_key() {
    let cfg = "[server]\nhost = \"0.0.0.0\"\n\n[[models]]\nname = \"m\"\nprovider = \"openai\"\napi_base = \"http://127.0.0.1:9/v1\"\n";
    let out = GatewayBuilder::new(cfg).run_to_exit(10 * SEC).await;
    assert!(!out.status.success(), "must exit non-zero");
    let lines: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| !l.trim().is_empty())
        .collect();
    assert_eq!(lines.len(), 1, "one line on stderr: {:?}", out.stderr);
    assert!(lines[0].starts_with("llmgw: "), "{}", lines[0]);
    assert!(lines[0].contains("master key"), "{}", lines[0]);
    assert!(lines[0].contains("0.0.0.0"), "{}", lines[0]);
    assert!(
        !out.state_dir.join("endpoint.json").exists(),
        "no endpoint record for a gateway that never ran"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_lets_50_inflight_streams_finish() {
    const N: usize = 50;
    const CHUNKS: usize = 20;
    // Every stream stops after its first event until the test opens the gate, after
    // SIGTERM: all 50 are in flight when it comes, by construction.
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let up = mock(
        "mock-drain",
        Behavior {
            chunks: CHUNKS,
            chunk_delay: Duration::from_millis(50),
            chunk_gate: Some(gate.clone()),
            ..Behavior::default()
        },
    )
    .await;
    let cfg = format!(
        "[server]\nshutdown_grace = \"30s\"\n\n{}",
        openai_model("m", "x", &up.base_url(), "")
    );
    let mut gw = Gateway::start(&cfg).await;

    let started = Arc::new(AtomicUsize::new(0));
    let finished = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..N {
        let (c, url) = (gw.client(), gw.url("/v1/chat/completions"));
        let (started, finished) = (started.clone(), finished.clone());
        tasks.push(tokio::spawn(async move {
            let mut resp = c
                .post(url)
                .header("content-type", "application/json")
                .body(chat_body("m", true))
                .send()
                .await
                .map_err(|e| format!("send: {e}"))?;
            if resp.status() != 200 {
                return Err(format!("status {}", resp.status()));
            }
            let mut buf = Vec::new();
            let mut events = Vec::new();
            let mut counted = false;
            loop {
                let chunk = match resp.chunk().await {
                    Ok(Some(c)) => c,
                    Ok(None) => break,
                    Err(e) => {
                        let n = content_events(&events).len();
                        return Err(format!("stream broke after {n} chunks: {e:?}"));
                    }
                };
                buf.extend_from_slice(&chunk);
                common::drain_events(&mut buf, Instant::now(), &mut events);
                if !counted && !events.is_empty() {
                    counted = true;
                    started.fetch_add(1, Ordering::SeqCst);
                }
            }
            finished.fetch_add(1, Ordering::SeqCst);
            Ok::<_, String>(events)
        }));
    }
    let s = started.clone();
    wait_for(20 * SEC, "all 50 streams to start", || {
        let n = s.load(Ordering::SeqCst);
        async move { (n == N).then_some(()) }
    })
    .await;
    let done_before = finished.load(Ordering::SeqCst);
    gw.sigterm();
    assert_eq!(done_before, 0, "streams were over before SIGTERM");

    // Draining: no new work is accepted (readiness 503 or the listener gone).
    gw.wait_for_log(10 * SEC, "announcing the drain", |l| {
        l.contains("shutting down")
    })
    .await;
    match gw.client().get(gw.url("/health/readiness")).send().await {
        Ok(r) => assert_eq!(r.status(), 503, "readiness while draining"),
        Err(e) => assert!(e.is_connect(), "unexpected error: {e}"),
    }
    assert_eq!(
        finished.load(Ordering::SeqCst),
        0,
        "a stream ended before the upstream sent it all"
    );
    // The upstream goes on: every stream runs to its end during the drain.
    gate.add_permits(tokio::sync::Semaphore::MAX_PERMITS / 2);

    let mut failures = Vec::new();
    for t in tasks {
        match t.await.expect("stream task") {
            Ok(events)
                if content_events(&events).len() != CHUNKS
                    || common::streamed_text(&events) != "Hello from mock-drain" =>
            {
                failures.push(format!(
                    "{} content chunks: {:?}",
                    content_events(&events).len(),
                    common::streamed_text(&events)
                ))
            }
            Ok(events) if !events.last().is_some_and(|e| e.is_done()) => {
                failures.push("no [DONE] at the end".to_string())
            }
            Ok(_) => {}
            Err(e) => failures.push(e),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {N} streams did not finish: {failures:?}\ngateway log:\n{}",
        failures.len(),
        gw.stderr_text()
    );
    let status = gw.wait_exit(30 * SEC).await;
    assert!(status.success(), "exit status {status}");
    assert_eq!(status.code(), Some(0));
    assert_eq!(up.state.cancelled_streams.load(Ordering::SeqCst), 0);
    assert!(
        !gw.state_dir.join("endpoint.json").exists(),
        "endpoint.json is removed on a clean exit"
    );
}

/// Distinctive value of a deployment's api_key, which must never reach the logs.
const UPSTREAM_KEY: &str = "sk-llmgw-test-DO-NOT-LOG-5f3c9a77";

fn keyed_config(base: &str) -> String {
    openai_model(
        "alpha",
        "x",
        base,
        "api_key = \"env:LLMGW_TEST_UPSTREAM_KEY\"",
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn text_logs_one_line_per_request_without_keys() {
    let up = mock("mock-log", Behavior::default()).await;
    let mut gw = Gateway::builder(&keyed_config(&up.base_url()))
        .env("LLMGW_TEST_UPSTREAM_KEY", UPSTREAM_KEY)
        .start()
        .await;
    let resp = gw
        .post_json("/v1/chat/completions", &chat_body("alpha", false))
        .await;
    assert_eq!(resp.status(), 200);
    let resp = gw
        .post_json("/v1/chat/completions", &chat_body("alpha", true))
        .await;
    read_sse(resp).await;
    let resp = gw
        .post_json("/v1/chat/completions", &chat_body("nope", false))
        .await;
    assert_eq!(resp.status(), 404);

    let ok = gw
        .wait_for_log(5 * SEC, "for the JSON request", |l| {
            l.contains("stream=false") && l.contains("status=200")
        })
        .await;
    for field in [
        "model=alpha",
        "deployment=alpha-1",
        "latency_ms=",
        "/v1/chat/completions",
    ] {
        assert!(ok.contains(field), "{field} missing in {ok:?}");
    }
    let streamed = gw
        .wait_for_log(5 * SEC, "for the streamed request", |l| {
            l.contains("stream=true")
        })
        .await;
    assert!(streamed.contains("status=200") && streamed.contains("latency_ms="));
    let missing = gw
        .wait_for_log(5 * SEC, "for the 404", |l| l.contains("status=404"))
        .await;
    assert!(missing.contains("model=nope"), "{missing}");

    gw.sigterm();
    assert!(gw.wait_exit(10 * SEC).await.success());
    let log = gw.stderr_text();
    let request_lines = log.lines().filter(|l| l.contains("latency_ms=")).count();
    assert_eq!(request_lines, 3, "one line per request:\n{log}");
    assert!(
        !log.contains(UPSTREAM_KEY),
        "the api key leaked into the log:\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn json_logs_are_json_lines_without_keys() {
    let up = mock("mock-jlog", Behavior::default()).await;
    let mut gw = Gateway::builder(&keyed_config(&up.base_url()))
        .env("LLMGW_TEST_UPSTREAM_KEY", UPSTREAM_KEY)
        .args(["--log-format", "json"])
        .start()
        .await;
    let resp = gw
        .post_json("/v1/chat/completions", &chat_body("alpha", false))
        .await;
    assert_eq!(resp.status(), 200);
    gw.wait_for_log(5 * SEC, "for the request", |l| l.contains("latency_ms"))
        .await;
    gw.sigterm();
    assert!(gw.wait_exit(10 * SEC).await.success());

    let log = gw.stderr_text();
    let lines: Vec<serde_json::Value> = log
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l}")))
        .collect();
    assert!(lines.len() >= 3, "ready, request, shutdown lines:\n{log}");
    let req: Vec<&serde_json::Value> = lines
        .iter()
        .filter(|v| v.get("latency_ms").is_some())
        .collect();
    assert_eq!(req.len(), 1, "one line per request:\n{log}");
    let r = req[0];
    assert_eq!(r["model"], "alpha");
    assert_eq!(r["deployment"], "alpha-1");
    assert_eq!(r["status"], 200);
    assert!(r["level"].is_string() && r["timestamp"].is_string(), "{r}");
    assert!(
        !log.contains(UPSTREAM_KEY),
        "the api key leaked into the log"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn keys_stay_out_of_trace_logs_and_health() {
    let up = mock("mock-trace", Behavior::default()).await;
    let gw = Gateway::builder(&keyed_config(&up.base_url()))
        .env("LLMGW_TEST_UPSTREAM_KEY", UPSTREAM_KEY)
        .env("LLMGW_LOG", "trace")
        .start()
        .await;
    let resp = gw
        .post_json("/v1/chat/completions", &chat_body("alpha", false))
        .await;
    assert_eq!(resp.status(), 200);
    let resp = gw
        .post_json("/v1/chat/completions", &chat_body("alpha", true))
        .await;
    read_sse(resp).await;
    let health = gw.get("/health").await.text().await.unwrap();
    assert!(!health.contains(UPSTREAM_KEY), "/health shows the key");
    gw.wait_for_log(5 * SEC, "for the streamed request", |l| {
        l.contains("stream=true") && l.contains("latency_ms")
    })
    .await;
    let log = gw.stderr_text();
    assert!(
        !log.contains(UPSTREAM_KEY),
        "the api key leaked into the trace log"
    );
}
