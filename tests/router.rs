//! Router behaviour through the real gateway: strategies, retries, cooldowns, fallbacks,
//! timeouts and streaming failover, against mock deployments with injected faults.

// Test and benchmark code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod common;

use common::{
    chat_body, content_events, expect_openai_error, mock, openai_model, read_sse, Gateway,
};
use futures_util::stream::{self, StreamExt};
use llmgw::mock::{Behavior, Fault};
use std::collections::HashMap;
use std::time::{Duration, Instant};

fn fault(status: u16, rate: f64, retry_after: Option<&str>) -> Option<Fault> {
    Some(Fault {
        status,
        rate,
        retry_after: retry_after.map(str::to_string),
        message: format!("injected {status}"),
    })
}

/// Sends `n` requests with `concurrency` in flight; returns (status, headers, body) each.
async fn fire(
    gw: &Gateway,
    n: usize,
    concurrency: usize,
    body: String,
) -> Vec<(u16, reqwest::header::HeaderMap, String)> {
    let client = gw.client();
    let url = gw.url("/v1/chat/completions");
    stream::iter(0..n)
        .map(|_| {
            let (client, url, body) = (client.clone(), url.clone(), body.clone());
            async move {
                let r = client
                    .post(&url)
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await
                    .expect("send");
                let status = r.status().as_u16();
                let headers = r.headers().clone();
                (status, headers, r.text().await.expect("body"))
            }
        })
        .buffer_unordered(concurrency)
        .collect()
        .await
}

fn header<'a>(h: &'a reqwest::header::HeaderMap, name: &str) -> &'a str {
    h.get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
}

fn count_by_deployment(
    results: &[(u16, reqwest::header::HeaderMap, String)],
) -> HashMap<String, usize> {
    let mut m = HashMap::new();
    for (_, h, _) in results {
        *m.entry(header(h, "x-llmgw-deployment").to_string())
            .or_insert(0) += 1;
    }
    m
}

/// Groups arrival times into bursts (arrivals within `gap` of the burst's first one).
fn bursts(arrivals: &[Instant], gap: Duration) -> Vec<Instant> {
    let mut out: Vec<Instant> = Vec::new();
    for &t in arrivals {
        if out
            .last()
            .is_none_or(|&start| t.duration_since(start) > gap)
        {
            out.push(t);
        }
    }
    out
}

async fn flaky_three(stream: bool) {
    let flaky = mock(
        "flaky",
        Behavior {
            fault: fault(500, 0.5, None),
            first_byte_delay: Duration::from_millis(5),
            ..Behavior::default()
        },
    )
    .await;
    let limited = mock(
        "limited",
        Behavior {
            fault: fault(429, 1.0, Some("2")),
            ..Behavior::default()
        },
    )
    .await;
    let healthy = mock(
        "healthy",
        Behavior {
            first_byte_delay: Duration::from_millis(20),
            ..Behavior::default()
        },
    )
    .await;
    let config = format!(
        "[router]\nnum_retries = 2\n{}{}{}",
        openai_model("m", "x", &flaky.base_url(), "id = \"flaky\""),
        openai_model("m", "x", &limited.base_url(), "id = \"limited\""),
        openai_model("m", "x", &healthy.base_url(), "id = \"healthy\""),
    );
    let gw = Gateway::start(&config).await;
    let started = Instant::now();
    let results = fire(&gw, 1000, 8, chat_body("m", stream)).await;
    let took = started.elapsed();

    for (status, h, body) in &results {
        assert_eq!(
            *status, 200,
            "every request must succeed; got {status}: {body}"
        );
        if stream {
            assert!(body.contains("data: [DONE]"), "stream incomplete: {body}");
            assert!(
                !body.contains("\"error\""),
                "stream carried an error: {body}"
            );
        }
        assert!(!header(h, "x-llmgw-attempts").is_empty());
    }
    let retried = results
        .iter()
        .filter(|(_, h, _)| header(h, "x-llmgw-attempts") != "1")
        .count();
    assert!(
        retried > 0,
        "some requests must show more than one attempt in x-llmgw-attempts"
    );
    let by = count_by_deployment(&results);
    assert!(
        !by.contains_key("limited"),
        "the 429 deployment never answers successfully: {by:?}"
    );

    // The 429 deployment is cooled for Retry-After (2 s) each time: its requests come in
    // bursts (requests already on their way when the first 429 came back) at least ~2 s apart.
    let arrivals = limited.state.arrivals();
    let b = bursts(&arrivals, Duration::from_millis(300));
    for w in b.windows(2) {
        let gap = w[1].duration_since(w[0]);
        assert!(
            gap >= Duration::from_millis(1900),
            "429 deployment got a request {gap:?} into its 2 s cooldown"
        );
    }
    let max_bursts = (took.as_secs_f64() / 2.0).ceil() as usize + 1;
    assert!(b.len() <= max_bursts, "{} bursts in {took:?}", b.len());
    assert!(
        arrivals.len() < 100,
        "the 429 deployment was asked {} times",
        arrivals.len()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn failing_and_rate_limited_deployments_cost_no_request() {
    flaky_three(false).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn failing_and_rate_limited_deployments_cost_no_stream() {
    flaky_three(true).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn hung_deployment_costs_at_most_its_timeout() {
    let hung = mock(
        "hung",
        Behavior {
            hang: true,
            ..Behavior::default()
        },
    )
    .await;
    let ok = mock(
        "ok",
        Behavior {
            first_byte_delay: Duration::from_millis(50),
            ..Behavior::default()
        },
    )
    .await;
    let config = format!(
        "{}{}",
        openai_model(
            "m",
            "x",
            &hung.base_url(),
            "id = \"hung\"\ntimeout = \"500ms\""
        ),
        openai_model("m", "x", &ok.base_url(), "id = \"ok\"\ntimeout = \"20s\""),
    );
    let gw = Gateway::start(&config).await;
    for stream in [false, true] {
        for _ in 0..12 {
            let t = Instant::now();
            let r = gw
                .post_json("/v1/chat/completions", &chat_body("m", stream))
                .await;
            assert_eq!(r.status().as_u16(), 200);
            assert_eq!(header(r.headers(), "x-llmgw-deployment"), "ok");
            let _ = r.text().await;
            let took = t.elapsed();
            // Ended by the hung deployment's own timeout (500 ms, + 50 ms for the healthy
            // answer), not by a longer one: the other deployment's 20 s, the client's 60 s.
            // The bound sits far from both, so a loaded machine cannot cross it.
            assert!(took < Duration::from_secs(5), "request took {took:?}");
        }
    }
    assert!(
        hung.state.request_count() >= 1,
        "the hung deployment should have been tried"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn only_deployment_is_never_cooled_and_its_error_reaches_the_client() {
    let bad = mock(
        "bad",
        Behavior {
            fault: fault(500, 1.0, None),
            ..Behavior::default()
        },
    )
    .await;
    let config = format!(
        "[router]\nnum_retries = 2\nallowed_fails = 1\ncooldown = \"60s\"\n{}",
        openai_model("solo", "x", &bad.base_url(), "")
    );
    let gw = Gateway::start(&config).await;
    for i in 1..=3u64 {
        let r = gw
            .post_json("/v1/chat/completions", &chat_body("solo", false))
            .await;
        assert_eq!(header(r.headers(), "x-llmgw-attempts"), "3");
        let err = expect_openai_error(r, 500).await;
        assert_eq!(err["message"], "injected 500");
        // 1 try + 2 retries each time: the deployment was asked again although it failed.
        assert_eq!(bad.state.request_count(), 3 * i);
    }
    let health = common::json_body(gw.get("/health").await).await;
    assert_eq!(health["deployments"][0]["state"], "healthy", "{health}");

    // A 400 is the client's fault: passed through at once, never retried.
    bad.state.set_behavior(|b| b.fault = fault(400, 1.0, None));
    let before = bad.state.request_count();
    let r = gw
        .post_json("/v1/chat/completions", &chat_body("solo", false))
        .await;
    expect_openai_error(r, 400).await;
    assert_eq!(bad.state.request_count(), before + 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn all_cooling_gives_503_with_retry_after() {
    let a = mock(
        "a",
        Behavior {
            fault: fault(429, 1.0, Some("30")),
            ..Behavior::default()
        },
    )
    .await;
    let b = mock(
        "b",
        Behavior {
            fault: fault(429, 1.0, Some("30")),
            ..Behavior::default()
        },
    )
    .await;
    let config = format!(
        "[router]\nnum_retries = 0\n{}{}",
        openai_model("m", "x", &a.base_url(), ""),
        openai_model("m", "x", &b.base_url(), ""),
    );
    let gw = Gateway::start(&config).await;
    for _ in 0..2 {
        let _ = gw
            .post_json("/v1/chat/completions", &chat_body("m", false))
            .await
            .text()
            .await;
    }
    let asked = a.state.request_count() + b.state.request_count();
    let r = gw
        .post_json("/v1/chat/completions", &chat_body("m", false))
        .await;
    let retry_after: u64 = header(r.headers(), "retry-after")
        .parse()
        .expect("Retry-After header");
    assert!(
        (25..=30).contains(&retry_after),
        "retry-after {retry_after}"
    );
    let err = expect_openai_error(r, 503).await;
    assert!(
        err["message"].as_str().unwrap().contains("cooling"),
        "{err:?}"
    );
    assert_eq!(
        a.state.request_count() + b.state.request_count(),
        asked,
        "cooling deployments were called"
    );
    let health = common::json_body(gw.get("/health").await).await;
    assert_eq!(health["deployments"][0]["state"], "cooling", "{health}");
    assert!(
        health["deployments"][0]["cooling_reason"]
            .as_str()
            .unwrap()
            .contains("429"),
        "{health}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn fallback_chain_and_context_window_fallback() {
    let a = mock(
        "a",
        Behavior {
            fault: fault(500, 1.0, None),
            ..Behavior::default()
        },
    )
    .await;
    let b = mock(
        "b",
        Behavior {
            fault: fault(503, 1.0, None),
            ..Behavior::default()
        },
    )
    .await;
    let c = mock("c", Behavior::default()).await;
    let small = mock("small", Behavior::default()).await;
    let big = mock("big", Behavior::default()).await;
    let config = format!(
        "[router]\nnum_retries = 1\n[router.fallbacks]\na = [\"b\"]\nb = [\"c\"]\n[router.context_window_fallbacks]\nsmall = [\"big\"]\n{}{}{}{}{}",
        openai_model("a", "x", &a.base_url(), ""),
        openai_model("b", "x", &b.base_url(), ""),
        openai_model("c", "x", &c.base_url(), ""),
        openai_model("small", "x", &small.base_url(), "context_window = 200"),
        openai_model("big", "x", &big.base_url(), "context_window = 100000"),
    );
    let gw = Gateway::start(&config).await;
    let r = gw
        .post_json("/v1/chat/completions", &chat_body("a", false))
        .await;
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(header(r.headers(), "x-llmgw-fallback"), "c");
    assert_eq!(
        header(r.headers(), "x-llmgw-attempts"),
        "5",
        "a twice, b twice, c once"
    );
    assert!(
        common::json_body(r).await["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .contains("from c")
    );

    // Streams fall back the same way.
    let r = gw
        .post_json("/v1/chat/completions", &chat_body("a", true))
        .await;
    assert_eq!(header(r.headers(), "x-llmgw-fallback"), "c");
    assert!(read_sse(r).await.last().is_some_and(|e| e.is_done()));

    // disable_fallbacks: the client gets a's error.
    let body = serde_json::json!({"model": "a", "messages": [{"role": "user", "content": "hi"}], "disable_fallbacks": true});
    let r = gw
        .post_json("/v1/chat/completions", &body.to_string())
        .await;
    expect_openai_error(r, 500).await;
    let sent = a.state.last_body().unwrap();
    assert!(
        !String::from_utf8_lossy(&sent).contains("disable_fallbacks"),
        "llmgw's own keys must not go upstream"
    );

    // Per-request fallbacks replace the configured ones.
    let body = serde_json::json!({"model": "a", "messages": [{"role": "user", "content": "hi"}], "fallbacks": ["big"]});
    let r = gw
        .post_json("/v1/chat/completions", &body.to_string())
        .await;
    assert_eq!(header(r.headers(), "x-llmgw-fallback"), "big");

    // Too long for small's window: straight to big, small never called.
    let long = "lorem ipsum dolor sit amet ".repeat(200);
    let body =
        serde_json::json!({"model": "small", "messages": [{"role": "user", "content": long}]});
    let r = gw
        .post_json("/v1/chat/completions", &body.to_string())
        .await;
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(header(r.headers(), "x-llmgw-fallback"), "big");
    assert_eq!(small.state.request_count(), 0);
    // A short one stays on small.
    let r = gw
        .post_json("/v1/chat/completions", &chat_body("small", false))
        .await;
    assert_eq!(header(r.headers(), "x-llmgw-fallback"), "");
    assert_eq!(small.state.request_count(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn stream_cut_after_three_chunks_ends_with_an_error_event() {
    let m = mock(
        "cut",
        Behavior {
            chunks: 10,
            cut_after: Some(3),
            ..Behavior::default()
        },
    )
    .await;
    let gw = Gateway::start(&openai_model("m", "x", &m.base_url(), "")).await;
    let r = gw
        .post_json("/v1/chat/completions", &chat_body("m", true))
        .await;
    assert_eq!(r.status().as_u16(), 200);
    let events = tokio::time::timeout(Duration::from_secs(10), read_sse(r))
        .await
        .expect("stream must close, not hang");
    assert_eq!(content_events(&events).len(), 3, "{events:?}");
    let last = events.last().unwrap().json().expect("last event is JSON");
    assert!(
        last["error"]["message"].is_string(),
        "last event must be an OpenAI error: {last}"
    );
    assert!(
        !events.iter().any(|e| e.is_done()),
        "a cut stream must not pretend to be complete"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn stream_failing_before_first_byte_fails_over() {
    let broken = mock(
        "broken",
        Behavior {
            cut_after: Some(0),
            ..Behavior::default()
        },
    )
    .await;
    let ok = mock("ok", Behavior::default()).await;
    let config = format!(
        "[router]\nstrategy = \"least-busy\"\n{}{}",
        openai_model("m", "x", &broken.base_url(), "id = \"broken\""),
        openai_model("m", "x", &ok.base_url(), "id = \"ok\""),
    );
    let gw = Gateway::start(&config).await;
    for _ in 0..10 {
        let r = gw
            .post_json("/v1/chat/completions", &chat_body("m", true))
            .await;
        assert_eq!(header(r.headers(), "x-llmgw-deployment"), "ok");
        let events = read_sse(r).await;
        assert!(events.last().unwrap().is_done());
        assert!(events
            .iter()
            .all(|e| e.json().is_none_or(|v| v.get("error").is_none())));
    }
    assert!(broken.state.request_count() >= 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn simple_shuffle_follows_weights() {
    let a = mock("a", Behavior::default()).await;
    let b = mock("b", Behavior::default()).await;
    let config = format!(
        "{}{}",
        openai_model("m", "x", &a.base_url(), "id = \"a\"\nweight = 3"),
        openai_model("m", "x", &b.base_url(), "id = \"b\"\nweight = 1"),
    );
    let gw = Gateway::start(&config).await;
    let results = fire(&gw, 2000, 16, chat_body("m", false)).await;
    let by = count_by_deployment(&results);
    let share = by["a"] as f64 / 2000.0;
    // 3:1 → 75 %; binomial sd ≈ 1 %, so ±5 % never flakes.
    assert!(
        (0.70..=0.80).contains(&share),
        "a got {share:.3} of requests: {by:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn least_busy_avoids_a_slow_deployment() {
    let slow = mock(
        "slow",
        Behavior {
            first_byte_delay: Duration::from_millis(400),
            ..Behavior::default()
        },
    )
    .await;
    let fast = mock(
        "fast",
        Behavior {
            first_byte_delay: Duration::from_millis(10),
            ..Behavior::default()
        },
    )
    .await;
    let config = format!(
        "[router]\nstrategy = \"least-busy\"\n{}{}",
        openai_model("m", "x", &slow.base_url(), "id = \"slow\""),
        openai_model("m", "x", &fast.base_url(), "id = \"fast\""),
    );
    let gw = Gateway::start(&config).await;
    let results = fire(&gw, 200, 4, chat_body("m", false)).await;
    let by = count_by_deployment(&results);
    let slow_n = by.get("slow").copied().unwrap_or(0);
    assert!(
        slow_n < 40,
        "least-busy sent {slow_n} of 200 to the slow deployment: {by:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn latency_based_prefers_the_fast_deployment() {
    let slow = mock(
        "slow",
        Behavior {
            first_byte_delay: Duration::from_millis(80),
            ..Behavior::default()
        },
    )
    .await;
    let fast = mock("fast", Behavior::default()).await;
    let config = format!(
        "[router]\nstrategy = \"latency-based\"\n{}{}",
        openai_model("m", "x", &slow.base_url(), "id = \"slow\""),
        openai_model("m", "x", &fast.base_url(), "id = \"fast\""),
    );
    let gw = Gateway::start(&config).await;
    let results = fire(&gw, 100, 1, chat_body("m", false)).await;
    let by = count_by_deployment(&results);
    assert!(by.get("fast").copied().unwrap_or(0) >= 95, "{by:?}");
}

/// Waits until at least `secs` remain in the current wall-clock minute, so a test that
/// counts per-minute usage does not straddle a reset.
async fn away_from_minute_boundary(secs: u64) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let left = 60 - now % 60;
    if left < secs {
        tokio::time::sleep(Duration::from_secs(left + 1)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn usage_based_stops_at_rpm() {
    let a = mock("a", Behavior::default()).await;
    let b = mock("b", Behavior::default()).await;
    let config = format!(
        "[router]\nstrategy = \"usage-based\"\n{}{}",
        openai_model("m", "x", &a.base_url(), "id = \"a\"\nrpm = 5"),
        openai_model("m", "x", &b.base_url(), "id = \"b\"\nrpm = 10"),
    );
    let gw = Gateway::start(&config).await;
    away_from_minute_boundary(20).await;
    let results = fire(&gw, 20, 1, chat_body("m", false)).await;
    let ok = results.iter().filter(|(s, _, _)| *s == 200).count();
    assert_eq!(ok, 15, "rpm 5 + 10 allow 15 requests this minute");
    assert_eq!(a.state.request_count(), 5);
    assert_eq!(b.state.request_count(), 10);
    let (status, h, body) = results.iter().find(|(s, _, _)| *s != 200).unwrap();
    assert_eq!(*status, 429, "{body}");
    assert!(!header(h, "retry-after").is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn cost_based_uses_the_cheapest_within_limits() {
    let cheap = mock("cheap", Behavior::default()).await;
    let dear = mock("dear", Behavior::default()).await;
    let config = format!(
        "[router]\nstrategy = \"cost-based\"\n{}{}",
        openai_model(
            "m",
            "x",
            &dear.base_url(),
            "id = \"dear\"\ninput_cost_per_mtok = 5.0\noutput_cost_per_mtok = 15.0"
        ),
        openai_model(
            "m",
            "x",
            &cheap.base_url(),
            "id = \"cheap\"\ninput_cost_per_mtok = 0.1\noutput_cost_per_mtok = 0.4\nrpm = 8"
        ),
    );
    let gw = Gateway::start(&config).await;
    away_from_minute_boundary(20).await;
    let results = fire(&gw, 12, 1, chat_body("m", false)).await;
    assert!(results.iter().all(|(s, _, _)| *s == 200));
    assert_eq!(
        cheap.state.request_count(),
        8,
        "the cheap one until its rpm is used up"
    );
    assert_eq!(dear.state.request_count(), 4, "then the expensive one");
}

/// Plain-http upstreams go over hyper's client directly (issue 13), except while an HTTP
/// proxy is set in the gateway's environment: then reqwest sends them through it, as
/// before. The upstream's host does not resolve, so only the proxy can answer.
#[tokio::test(flavor = "multi_thread")]
async fn http_proxy_from_the_environment_still_carries_plain_http_upstreams() {
    let proxy = mock("proxy", Behavior::default()).await;
    let proxy_url = proxy.base_url().trim_end_matches("/v1").to_string();
    let cfg = openai_model("m", "mock-model", "http://upstream.invalid:9/v1", "");
    let gw = Gateway::builder(&cfg)
        .env("HTTP_PROXY", &proxy_url)
        .start()
        .await;
    for stream in [false, true] {
        let resp = gw
            .post_json("/v1/chat/completions", &chat_body("m", stream))
            .await;
        assert_eq!(resp.status(), 200, "stream={stream}");
        let text = resp.text().await.unwrap();
        assert!(text.contains("chat.completion"), "{text}");
    }
    assert_eq!(proxy.state.request_count(), 2);
}

/// A burst of events an upstream sends at once reaches the client whole and in order
/// (the gateway gathers queued events into one write, issue 13), and events the upstream
/// sends one at a time still arrive one by one as they come, not held back for a batch.
#[tokio::test(flavor = "multi_thread")]
async fn streamed_events_are_gathered_only_when_already_there() {
    let burst = mock("burst", Behavior::default()).await;
    burst.state.set_behavior(|b| b.chunks = 50);
    let gate = std::sync::Arc::new(tokio::sync::Semaphore::new(0));
    let spaced = mock("spaced", Behavior::default()).await;
    spaced.state.set_behavior(|b| {
        b.chunks = 4;
        b.chunk_gate = Some(gate.clone());
    });
    let cfg = openai_model("burst", "mock-model", &burst.base_url(), "")
        + &openai_model("spaced", "mock-model", &spaced.base_url(), "");
    let gw = Gateway::start(&cfg).await;
    let events = read_sse(
        gw.post_json("/v1/chat/completions", &chat_body("burst", true))
            .await,
    )
    .await;
    assert_eq!(content_events(&events).len(), 50);
    assert!(events.last().unwrap().is_done());
    let direct = read_sse(
        common::client()
            .post(format!("{}/chat/completions", burst.base_url()))
            .header("content-type", "application/json")
            .body(chat_body("mock-model", true))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        common::streamed_text(&events),
        common::streamed_text(&direct)
    );

    // Spaced: the upstream sends each event only once the one before it has reached the
    // client, which happens only if the gateway does not hold it back for a batch.
    let events = common::read_sse_released_one_by_one(
        gw.post_json("/v1/chat/completions", &chat_body("spaced", true))
            .await,
        &gate,
        4,
    )
    .await;
    let content = content_events(&events);
    assert_eq!(content.len(), 4);
    assert!(events.last().unwrap().is_done());
}

/// Plain-http upstream connections are pooled (issue 13): sequential requests, streamed
/// or not, share one upstream connection; a stream the client abandons half-read takes
/// its connection with it, and the next request gets its own whole answer on a new one.
#[tokio::test(flavor = "multi_thread")]
async fn upstream_connections_are_reused_and_an_abandoned_stream_does_not_poison_them() {
    use std::sync::atomic::Ordering;
    let up = mock("pooled", Behavior::default()).await;
    let cfg = openai_model("m", "mock-model", &up.base_url(), "");
    // One serving thread: one per-thread pool.
    let gw = Gateway::builder(&format!("[router]\nnum_retries = 0\n{cfg}"))
        .env("LLMGW_SERVE_THREADS", "1")
        .start()
        .await;
    let direct = common::json_body(
        common::client()
            .post(format!("{}/chat/completions", up.base_url()))
            .header("content-type", "application/json")
            .body(chat_body("mock-model", false))
            .send()
            .await
            .unwrap(),
    )
    .await;
    let before = up.state.connection_count();
    for i in 0..12 {
        let stream = i % 3 == 2;
        let resp = gw
            .post_json("/v1/chat/completions", &chat_body("m", stream))
            .await;
        assert_eq!(resp.status(), 200, "request {i}");
        if stream {
            let events = read_sse(resp).await;
            assert!(events.last().unwrap().is_done(), "request {i}");
        } else {
            let body = common::json_body(resp).await;
            assert_eq!(body["choices"], direct["choices"], "request {i}");
        }
    }
    assert_eq!(up.state.connection_count() - before, 1);

    // Abandoned after its first event, with more to come.
    up.state.set_behavior(|b| {
        b.chunks = 20;
        b.chunk_delay = Duration::from_millis(100);
    });
    let mut resp = gw
        .post_json("/v1/chat/completions", &chat_body("m", true))
        .await;
    assert_eq!(resp.status(), 200);
    assert!(resp.chunk().await.unwrap().is_some());
    drop(resp);
    common::wait_for(
        Duration::from_secs(5),
        "the upstream to see the cancel",
        || {
            let n = up.state.cancelled_streams.load(Ordering::SeqCst);
            async move { (n >= 1).then_some(()) }
        },
    )
    .await;
    up.state.set_behavior(|b| b.chunk_delay = Duration::ZERO);
    let resp = gw
        .post_json("/v1/chat/completions", &chat_body("m", false))
        .await;
    assert_eq!(resp.status(), 200);
    let body = common::json_body(resp).await;
    assert_eq!(body["choices"], direct["choices"]);
    assert_eq!(up.state.connection_count() - before, 2);
}

/// An upstream that closes idle keep-alive connections (uvicorn does after 5 s) fails no
/// request, even with retries off: the gateway does not send on the closed connection.
/// It also receives what the gateway has always sent: origin-form target, `Host`,
/// `Accept: */*`, the JSON content type and length, the key.
#[tokio::test(flavor = "multi_thread")]
async fn an_upstream_closing_idle_keep_alive_connections_fails_no_request() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (heads_tx, mut heads) = tokio::sync::mpsc::unbounded_channel::<String>();
    // The test says when to close (once the client has its whole answer, so the gateway
    // has put the connection back in its pool); the server says when the close has
    // reached the gateway's socket (its end is in CLOSE_WAIT: the connection is idle in
    // the pool and closed by the upstream, the case under test).
    let (close_tx, mut close_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let (closed_tx, mut closed) = tokio::sync::mpsc::unbounded_channel::<()>();
    // Answers each connection's first request with keep-alive, then closes it.
    let server = tokio::spawn(async move {
        loop {
            let (mut conn, _) = listener.accept().await.unwrap();
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            let head_end = loop {
                let n = conn.read(&mut chunk).await.unwrap();
                assert!(n > 0, "closed before a request");
                buf.extend_from_slice(&chunk[..n]);
                if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    break i + 4;
                }
            };
            let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
            let len: usize = head
                .lines()
                .find_map(|l| {
                    let l = l.to_ascii_lowercase();
                    l.strip_prefix("content-length: ")
                        .map(|v| v.trim().parse().unwrap())
                })
                .unwrap_or(0);
            while buf.len() < head_end + len {
                let n = conn.read(&mut chunk).await.unwrap();
                assert!(n > 0, "closed inside a request body");
                buf.extend_from_slice(&chunk[..n]);
            }
            heads_tx.send(head).unwrap();
            let body = r#"{"id":"c1","object":"chat.completion","created":0,"model":"up","choices":[{"index":0,"message":{"role":"assistant","content":"hello once"},"finish_reason":"stop"}],"usage":{"prompt_tokens":1,"completion_tokens":2,"total_tokens":3}}"#;
            let answer = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            );
            conn.write_all(answer.as_bytes()).await.unwrap();
            if close_rx.recv().await.is_none() {
                return;
            }
            let (ours, gateways) = (conn.local_addr().unwrap(), conn.peer_addr().unwrap());
            drop(conn);
            common::wait_for(
                Duration::from_secs(10),
                "the gateway's end of the upstream connection to see the close",
                || async move { gateway_saw_close(gateways, ours).then_some(()) },
            )
            .await;
            closed_tx.send(()).unwrap();
        }
    });
    let cfg = openai_model(
        "m",
        "up",
        &format!("http://{addr}/v1"),
        "api_key = \"sk-upstream-key\"",
    );
    let gw = Gateway::builder(&format!("[router]\nnum_retries = 0\n{cfg}"))
        .env("LLMGW_SERVE_THREADS", "1")
        .start()
        .await;
    for i in 0..3 {
        let resp = gw
            .post_json("/v1/chat/completions", &chat_body("m", false))
            .await;
        assert_eq!(resp.status(), 200, "request {i}");
        assert_eq!(
            header(resp.headers(), "x-llmgw-attempts"),
            "1",
            "request {i}"
        );
        assert!(resp.text().await.unwrap().contains("hello once"));
        // The upstream closes the connection while it is idle in the gateway's pool.
        close_tx.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(15), closed.recv())
            .await
            .expect("the upstream closed its connection")
            .expect("the upstream server is running");
    }
    let head = heads.recv().await.unwrap();
    assert!(
        head.starts_with("POST /v1/chat/completions HTTP/1.1\r\n"),
        "{head}"
    );
    let lower = head.to_ascii_lowercase();
    for line in [
        format!("host: {addr}"),
        "accept: */*".to_string(),
        "content-type: application/json".to_string(),
        "authorization: bearer sk-upstream-key".to_string(),
        "content-length: ".to_string(),
    ] {
        assert!(lower.contains(&format!("\r\n{line}")), "{line} in {head}");
    }
    server.abort();
}

/// True once the TCP socket `local` → `remote` (IPv4) has received its peer's FIN: it is
/// in CLOSE_WAIT or a later state, or gone, in `/proc/net/tcp`.
fn gateway_saw_close(local: std::net::SocketAddr, remote: std::net::SocketAddr) -> bool {
    let hex = |a: std::net::SocketAddr| match a {
        std::net::SocketAddr::V4(v4) => format!(
            "{:08X}:{:04X}",
            u32::from_le_bytes(v4.ip().octets()),
            v4.port()
        ),
        std::net::SocketAddr::V6(_) => panic!("an IPv4 address: {a}"),
    };
    let (local, remote) = (hex(local), hex(remote));
    let table = std::fs::read_to_string("/proc/net/tcp").expect("read /proc/net/tcp");
    // 01 ESTABLISHED: the FIN has not arrived yet.
    !table.lines().skip(1).any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.len() > 3 && f[1] == local && f[2] == remote && f[3] == "01"
    })
}
