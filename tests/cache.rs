//! Response cache and Redis-backed shared state through the real gateway: hits without
//! calling the upstream (JSON and streams, in-memory and Redis), per-request controls,
//! opt-in mode, two gateways sharing one Redis (cache, cooldowns, rpm usage), and Redis
//! outages (killed under load, down at start) that never fail a request.

// Test and benchmark code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod common;

use common::redis::RedisServer;
use common::{mock, openai_model, Gateway};
use futures_util::stream::{self, StreamExt};
use llmgw::mock::{Behavior, Fault};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// What one response looked like.
#[derive(Debug, Clone)]
struct Got {
    status: u16,
    cache: String,
    key: String,
    deployment: String,
    body: String,
}

async fn send(gw: &Gateway, path: &str, body: &str) -> Got {
    let r = gw.post_json(path, body).await;
    let h = |n: &str| {
        r.headers()
            .get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    let (status, cache, key, deployment) = (
        r.status().as_u16(),
        h("x-llmgw-cache"),
        h("x-llmgw-cache-key"),
        h("x-llmgw-deployment"),
    );
    Got {
        status,
        cache,
        key,
        deployment,
        body: r.text().await.expect("read body"),
    }
}

async fn chat(gw: &Gateway, body: &str) -> Got {
    send(gw, "/v1/chat/completions", body).await
}

/// A chat request; `extra` is spliced into the JSON object (e.g. `"cache":{...}`).
fn ask(prompt: &str, stream: bool, extra: &str) -> String {
    let mut v = serde_json::json!({
        "model": "m",
        "messages": [{"role": "user", "content": prompt}],
        "stream": stream,
    });
    if !extra.is_empty() {
        let more: serde_json::Value =
            serde_json::from_str(&format!("{{{extra}}}")).expect("extra is JSON members");
        for (k, x) in more.as_object().expect("object") {
            v[k] = x.clone();
        }
    }
    v.to_string()
}

fn memory_cache(extra: &str) -> String {
    format!("[cache]\nenabled = true\n{extra}\n")
}

fn redis_cache(url: &str, extra: &str) -> String {
    // A generous command timeout: a loaded test machine must not turn hits into skips.
    format!("[cache]\nenabled = true\nbackend = \"redis\"\nredis_url = \"{url}\"\nredis_timeout = \"200ms\"\n{extra}\n")
}

fn stream_ok(body: &str) {
    assert!(
        body.trim_end().ends_with("data: [DONE]"),
        "stream must end with [DONE]: {body}"
    );
    assert!(
        !body.contains("\"error\""),
        "stream carried an error: {body}"
    );
}

/// The concatenated `delta.content` of a chat stream body.
fn streamed_text(body: &str) -> String {
    let mut buf = body.as_bytes().to_vec();
    let mut events = Vec::new();
    common::drain_events(&mut buf, Instant::now(), &mut events);
    common::streamed_text(&events)
}

/// Acceptance 1: the second identical request is a hit, byte-identical, upstream not called.
async fn second_request_hits(gw: &Gateway, upstream: &llmgw::mock::MockUpstream, stream: bool) {
    let before = upstream.state.request_count();
    let body = ask(&format!("hit twice, stream={stream}"), stream, "");
    let a = chat(gw, &body).await;
    assert_eq!((a.status, a.cache.as_str()), (200, "miss"), "{a:?}");
    let b = chat(gw, &body).await;
    assert_eq!((b.status, b.cache.as_str()), (200, "hit"), "{b:?}");
    assert_eq!(
        a.body, b.body,
        "a hit must be byte-identical to the stored answer"
    );
    assert_eq!(a.key, b.key);
    assert!(
        a.key.starts_with("llmgw:") && a.key.len() == "llmgw:".len() + 64,
        "{}",
        a.key
    );
    assert_eq!(
        upstream.state.request_count(),
        before + 1,
        "the hit must not reach the upstream"
    );
    if stream {
        stream_ok(&b.body);
        assert_eq!(streamed_text(&b.body), "Hello from up");
    } else {
        let v: serde_json::Value = serde_json::from_str(&b.body).expect("JSON");
        assert_eq!(v["choices"][0]["message"]["content"], "Hello from up");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn identical_requests_hit_in_memory_json_and_stream() {
    let up = mock("up", Behavior::default()).await;
    let gw = Gateway::start(&format!(
        "{}{}",
        memory_cache(""),
        openai_model("m", "x", &up.base_url(), "")
    ))
    .await;
    second_request_hits(&gw, &up, false).await;
    second_request_hits(&gw, &up, true).await;
    let metrics = gw.get("/metrics").await.text().await.expect("metrics");
    for line in [
        "llmgw_cache_hits_total 2",
        "llmgw_cache_misses_total 2",
        "llmgw_cache_stores_total 2",
    ] {
        assert!(
            metrics.contains(line),
            "/metrics lacks {line:?}:\n{metrics}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn identical_requests_hit_in_redis_json_and_stream() {
    let redis = RedisServer::start();
    let up = mock("up", Behavior::default()).await;
    let gw = Gateway::start(&format!(
        "{}{}",
        redis_cache(&redis.url(), ""),
        openai_model("m", "x", &up.base_url(), "")
    ))
    .await;
    second_request_hits(&gw, &up, false).await;
    second_request_hits(&gw, &up, true).await;
    assert!(redis.dbsize() >= 2, "entries live in Redis");
}

#[tokio::test(flavor = "multi_thread")]
async fn stream_request_replays_a_stored_json_answer() {
    let up = mock("up", Behavior::default()).await;
    let gw = Gateway::start(&format!(
        "{}{}",
        memory_cache(""),
        openai_model("m", "x", &up.base_url(), "")
    ))
    .await;
    let json = chat(&gw, &ask("json first", false, "")).await;
    assert_eq!(json.cache, "miss");
    let streamed = chat(
        &gw,
        &ask(
            "json first",
            true,
            r#""stream_options":{"include_usage":true}"#,
        ),
    )
    .await;
    assert_eq!(
        (streamed.status, streamed.cache.as_str()),
        (200, "hit"),
        "{streamed:?}"
    );
    assert_eq!(
        streamed.key, json.key,
        "stream and JSON requests share one key"
    );
    stream_ok(&streamed.body);
    assert_eq!(streamed_text(&streamed.body), "Hello from up");
    let mut buf = streamed.body.as_bytes().to_vec();
    let mut events = Vec::new();
    common::drain_events(&mut buf, Instant::now(), &mut events);
    let usage = events
        .iter()
        .rev()
        .nth(1)
        .and_then(|e| e.json())
        .expect("usage chunk before [DONE]");
    assert_eq!(usage["usage"]["total_tokens"], 14, "{usage}");
    assert_eq!(up.state.request_count(), 1);

    // A stored stream does not answer a JSON request: miss, and the JSON answer replaces it.
    let s = chat(&gw, &ask("stream first", true, "")).await;
    assert_eq!(s.cache, "miss");
    let j = chat(&gw, &ask("stream first", false, "")).await;
    assert_eq!(j.cache, "miss");
    assert_eq!(
        chat(&gw, &ask("stream first", false, "")).await.cache,
        "hit"
    );
    assert_eq!(chat(&gw, &ask("stream first", true, "")).await.cache, "hit");
}

#[tokio::test(flavor = "multi_thread")]
async fn completions_and_embeddings_are_cached() {
    let up = mock("up", Behavior::default()).await;
    let gw = Gateway::start(&format!(
        "{}{}",
        memory_cache(""),
        openai_model("m", "x", &up.base_url(), "")
    ))
    .await;
    let c = r#"{"model":"m","prompt":"Once upon"}"#;
    let e = r#"{"model":"m","input":"embed me"}"#;
    for (path, body) in [("/v1/completions", c), ("/v1/embeddings", e)] {
        let a = send(&gw, path, body).await;
        let b = send(&gw, path, body).await;
        assert_eq!(
            (a.cache.as_str(), b.cache.as_str()),
            ("miss", "hit"),
            "{path}"
        );
        assert_eq!(a.body, b.body);
    }
    // Same body on another endpoint: another key.
    assert_eq!(send(&gw, "/v1/completions", e).await.cache, "miss");
    assert_eq!(up.state.request_count(), 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn errors_and_broken_streams_are_not_cached() {
    let up = mock(
        "up",
        Behavior {
            fault: Some(Fault {
                status: 500,
                rate: 1.0,
                retry_after: None,
                message: "boom".into(),
            }),
            ..Behavior::default()
        },
    )
    .await;
    let gw = Gateway::start(&format!(
        "[router]\nnum_retries = 0\n{}{}",
        memory_cache(""),
        openai_model("m", "x", &up.base_url(), "")
    ))
    .await;
    let failed = chat(&gw, &ask("fails", false, "")).await;
    assert_ne!(failed.status, 200, "{failed:?}");
    up.state.set_behavior(|b| b.fault = None);
    assert_eq!(
        chat(&gw, &ask("fails", false, "")).await.cache,
        "miss",
        "an error must not be stored"
    );

    up.state.set_behavior(|b| b.cut_after = Some(2));
    let cut = chat(&gw, &ask("cut", true, "")).await;
    assert_eq!(cut.status, 200);
    assert!(
        cut.body.contains("\"error\""),
        "a cut stream ends with an error event: {}",
        cut.body
    );
    up.state.set_behavior(|b| b.cut_after = None);
    let again = chat(&gw, &ask("cut", true, "")).await;
    assert_eq!(again.cache, "miss", "a partial stream must never be stored");
    stream_ok(&again.body);
    assert_eq!(chat(&gw, &ask("cut", true, "")).await.cache, "hit");
}

#[tokio::test(flavor = "multi_thread")]
async fn per_request_controls() {
    let up = mock("up", Behavior::default()).await;
    let gw = Gateway::start(&format!(
        "{}{}",
        memory_cache(""),
        openai_model("m", "x", &up.base_url(), "")
    ))
    .await;

    // no-store: answered and looked up, never stored.
    let ns = ask("no-store", false, r#""cache":{"no-store":true}"#);
    assert_eq!(chat(&gw, &ns).await.cache, "miss");
    assert_eq!(chat(&gw, &ns).await.cache, "miss");

    // no-cache: not looked up (skip), but the fresh answer is stored.
    let plain = ask("no-cache", false, "");
    assert_eq!(chat(&gw, &plain).await.cache, "miss");
    let before = up.state.request_count();
    let fresh = chat(&gw, &ask("no-cache", false, r#""cache":{"no-cache":true}"#)).await;
    assert_eq!((fresh.status, fresh.cache.as_str()), (200, "skip"));
    assert_eq!(
        up.state.request_count(),
        before + 1,
        "no-cache must call the upstream"
    );
    let hit = chat(&gw, &plain).await;
    assert_eq!(hit.cache, "hit");
    assert_eq!(hit.body, fresh.body, "no-cache refreshed the stored answer");

    // namespace: a separate key space.
    let spaced = chat(
        &gw,
        &ask("no-cache", false, r#""cache":{"namespace":"team-x"}"#),
    )
    .await;
    assert_eq!(spaced.cache, "miss");
    assert!(spaced.key.starts_with("llmgw:team-x:"), "{}", spaced.key);
    assert_eq!(
        spaced.key["llmgw:team-x:".len()..],
        hit.key["llmgw:".len()..]
    );
    assert_eq!(
        chat(
            &gw,
            &ask("no-cache", false, r#""cache":{"namespace":"team-x"}"#)
        )
        .await
        .cache,
        "hit"
    );

    // ttl: a short-lived entry expires while the default-TTL one stays.
    let short = ask("short ttl", false, r#""cache":{"ttl":1.5}"#);
    assert_eq!(chat(&gw, &short).await.cache, "miss");
    assert_eq!(
        chat(
            &gw,
            &ask("short ttl", false, r#""cache":{"no-store":true}"#)
        )
        .await
        .cache,
        "hit"
    );
    common::wait_for(
        Duration::from_secs(10),
        "the 1.5 s entry to expire",
        || async {
            let r = chat(
                &gw,
                &ask("short ttl", false, r#""cache":{"no-store":true}"#),
            )
            .await;
            (r.cache == "miss").then_some(())
        },
    )
    .await;
    assert_eq!(
        chat(&gw, &plain).await.cache,
        "hit",
        "the default TTL (1 h) entry is still there"
    );

    // Malformed controls are the client's error.
    let bad = gw
        .post_json(
            "/v1/chat/completions",
            &ask("bad", false, r#""cache":{"ttl":"soon"}"#),
        )
        .await;
    let err = common::expect_openai_error(bad, 400).await;
    assert_eq!(err["param"], "cache");
}

#[tokio::test(flavor = "multi_thread")]
async fn opt_in_mode_caches_only_requests_that_ask() {
    let up = mock("up", Behavior::default()).await;
    let gw = Gateway::start(&format!(
        "{}{}",
        memory_cache("mode = \"opt-in\""),
        openai_model("m", "x", &up.base_url(), "")
    ))
    .await;
    let plain = ask("opt in", false, "");
    assert_eq!(chat(&gw, &plain).await.cache, "skip");
    assert_eq!(chat(&gw, &plain).await.cache, "skip");
    assert_eq!(up.state.request_count(), 2);
    let asks = ask("opt in", false, r#""cache":{}"#);
    assert_eq!(chat(&gw, &asks).await.cache, "miss");
    assert_eq!(chat(&gw, &asks).await.cache, "hit");
    assert_eq!(
        chat(&gw, &ask("opt in", false, r#""cache":{"ttl":60}"#))
            .await
            .cache,
        "hit"
    );
    assert_eq!(up.state.request_count(), 3);
}

/// Acceptance 2: two gateways, one Redis: a miss on one is a hit on the other; a
/// deployment cooled by one is skipped by the other.
#[tokio::test(flavor = "multi_thread")]
async fn two_gateways_share_cache_and_cooldowns() {
    let redis = RedisServer::start();
    let ok = mock("ok", Behavior::default()).await;
    let limited = mock(
        "limited",
        Behavior {
            fault: Some(Fault {
                status: 429,
                rate: 1.0,
                retry_after: Some("30".into()),
                message: "slow down".into(),
            }),
            ..Behavior::default()
        },
    )
    .await;
    let config = format!(
        "[router]\nnum_retries = 2\n{}{}{}{}",
        redis_cache(&redis.url(), ""),
        openai_model("m", "x", &ok.base_url(), "id = \"only\""),
        openai_model("c", "x", &limited.base_url(), "id = \"limited\""),
        openai_model("c", "x", &ok.base_url(), "id = \"healthy\""),
    );
    let (gw1, gw2) = (Gateway::start(&config).await, Gateway::start(&config).await);

    let q = ask("shared between replicas", false, "");
    let a = chat(&gw1, &q).await;
    let b = chat(&gw2, &q).await;
    assert_eq!((a.cache.as_str(), b.cache.as_str()), ("miss", "hit"));
    assert_eq!(a.body, b.body);
    assert_eq!(ok.state.request_count(), 1);

    // Cool `limited` on gw1 (429, Retry-After 30): requests until it has been tried once.
    let no_cache = |i: usize| {
        serde_json::json!({"model": "c", "messages": [{"role": "user", "content": format!("q{i}")}], "cache": false}).to_string()
    };
    for i in 0..100 {
        if limited.state.request_count() > 0 {
            break;
        }
        let r = chat(&gw1, &no_cache(i)).await;
        assert_eq!((r.status, r.deployment.as_str()), (200, "healthy"), "{r:?}");
    }
    assert_eq!(
        limited.state.request_count(),
        1,
        "the shuffle never picked `limited`"
    );
    let cooling = |gw: &Gateway| {
        let url = gw.url("/health");
        let client = gw.client();
        async move {
            let text = client.get(url).send().await.ok()?.text().await.ok()?;
            let v: serde_json::Value = serde_json::from_str(&text).ok()?;
            let d = v["deployments"]
                .as_array()?
                .iter()
                .find(|d| d["id"] == "limited")?
                .clone();
            (d["state"] == "cooling").then_some(d)
        }
    };
    common::wait_for(Duration::from_secs(10), "gw1 to cool `limited`", || {
        cooling(&gw1)
    })
    .await;
    let seen = common::wait_for(Duration::from_secs(10), "gw2 to see gw1's cooldown", || {
        cooling(&gw2)
    })
    .await;
    assert!(
        seen["cooling_seconds_left"]
            .as_u64()
            .is_some_and(|s| s > 20),
        "{seen}"
    );
    for i in 100..130 {
        let r = chat(&gw2, &no_cache(i)).await;
        assert_eq!((r.status, r.deployment.as_str()), (200, "healthy"), "{r:?}");
    }
    assert_eq!(
        limited.state.request_count(),
        1,
        "gw2 must skip the deployment gw1 cooled"
    );
}

fn minute_now() -> (u64, u64) {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_millis() as u64;
    (ms / 60_000, 60_000 - ms % 60_000)
}

/// Two gateways, one Redis: an rpm limit is one limit across both.
#[tokio::test(flavor = "multi_thread")]
async fn two_gateways_share_rpm_usage() {
    let redis = RedisServer::start();
    let up = mock("up", Behavior::default()).await;
    let config = format!(
        "{}{}",
        redis_cache(&redis.url(), ""),
        openai_model("r", "x", &up.base_url(), "id = \"rl\"\nrpm = 4")
    );
    let (gw1, gw2) = (Gateway::start(&config).await, Gateway::start(&config).await);
    let monitor = redis.monitor();
    // Per-minute counters: do not straddle a minute boundary.
    let (_, left_ms) = minute_now();
    if left_ms < 15_000 {
        tokio::time::sleep(Duration::from_millis(left_ms + 50)).await;
    }
    let (minute, _) = minute_now();
    let body = |i: usize| {
        serde_json::json!({"model": "r", "messages": [{"role": "user", "content": format!("u{i}")}], "cache": false}).to_string()
    };
    for i in 0..4 {
        assert_eq!(chat(&gw1, &body(i)).await.status, 200);
    }
    let key = format!("GET llmgw:usage:rl:{minute}:req");
    common::wait_for(
        Duration::from_secs(5),
        "gw1 to publish its usage",
        || async {
            let reply = redis.command(&key)?;
            let n: u64 = reply.lines().nth(1)?.trim().parse().ok()?;
            (n >= 4).then_some(())
        },
    )
    .await;
    // gw2 has sent nothing itself; once it read the shared count it must refuse. It has
    // read (and folded in) the count once its second MGET after that moment reaches Redis:
    // a round's MGET is sent only after the round before was merged.
    let seen = monitor.lines().len();
    let gw2_ports = common::tcp_local_ports(gw2.pid());
    common::wait_for(
        Duration::from_secs(10),
        "gw2 to read the shared usage from Redis twice",
        || {
            let n = monitor.count_from(seen, &gw2_ports, "MGET");
            async move { (n >= 2).then_some(()) }
        },
    )
    .await;
    let r = chat(&gw2, &body(10)).await;
    assert_eq!(
        r.status, 429,
        "gw2 accepted a request past the shared rpm limit of 4: {r:?}"
    );
}

/// Acceptance 3: Redis killed during 2,000 requests: none fails; caching resumes when
/// Redis returns, without restarting the gateway.
#[tokio::test(flavor = "multi_thread")]
async fn redis_killed_under_load_fails_nothing_and_caching_resumes() {
    let redis = Arc::new(Mutex::new(RedisServer::start()));
    let url = redis.lock().expect("lock").url();
    let up = mock("up", Behavior::default()).await;
    // A command timeout above the production default (5 ms): this test is about the
    // outage, and a loaded CI machine (the long renewal test runs beside it) can make a
    // healthy Redis miss 5 ms often enough to open the breaker before the kill.
    let config = format!(
        "[cache]\nenabled = true\nbackend = \"redis\"\nredis_url = \"{url}\"\nredis_timeout = \"50ms\"\n{}",
        openai_model("m", "x", &up.base_url(), "")
    );
    let gw = Gateway::start(&config).await;
    // Every prompt of the load is stored once before it starts, so the requests before
    // the outage can be hits.
    for i in 0..40 {
        let r = gw
            .client()
            .post(gw.url("/v1/chat/completions"))
            .header("content-type", "application/json")
            .body(ask(&format!("load {i}"), false, ""))
            .send()
            .await
            .expect("send");
        assert_eq!(r.status(), 200);
    }

    const N: usize = 2000;
    let done = Arc::new(AtomicUsize::new(0));
    let killer = {
        let (done, redis) = (done.clone(), redis.clone());
        tokio::spawn(async move {
            while done.load(Ordering::Relaxed) < N / 4 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            redis.lock().expect("lock").kill();
        })
    };
    let client = gw.client();
    let url = gw.url("/v1/chat/completions");
    let results: Vec<(u16, String, String, bool)> = stream::iter(0..N)
        .map(|i| {
            let (client, url, done) = (client.clone(), url.clone(), done.clone());
            let stream = i % 4 == 0;
            let body = ask(&format!("load {}", i % 40), stream, "");
            async move {
                let r = client
                    .post(&url)
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await
                    .expect("send");
                let status = r.status().as_u16();
                let cache = r
                    .headers()
                    .get("x-llmgw-cache")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_string();
                let text = r.text().await.expect("body");
                done.fetch_add(1, Ordering::Relaxed);
                (status, cache, text, stream)
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    killer.await.expect("killer task");
    for (status, cache, body, stream) in &results {
        assert_eq!(
            *status, 200,
            "request failed during the Redis outage ({cache}): {body}"
        );
        if *stream {
            stream_ok(body);
        }
    }
    let count = |c: &str| results.iter().filter(|r| r.1 == c).count();
    assert!(count("hit") > 0, "hits before the outage");
    assert!(
        count("skip") > 0,
        "requests served uncached during the outage"
    );
    gw.wait_for_log(Duration::from_secs(5), "the breaker to open", |l| {
        l.contains("circuit breaker open")
    })
    .await;

    // Redis returns on the same port: the breaker's probe picks it up.
    redis.lock().expect("lock").restart();
    let q = ask("after the outage", false, "");
    common::wait_for(
        Duration::from_secs(15),
        "caching to resume after Redis returned",
        || async {
            let r = chat(&gw, &q).await;
            assert_eq!(r.status, 200);
            (r.cache == "hit").then_some(())
        },
    )
    .await;
    gw.wait_for_log(Duration::from_secs(5), "the breaker to close", |l| {
        l.contains("circuit breaker closed")
    })
    .await;
}

/// Acceptance 4: a gateway started while Redis is down serves at once, then uses Redis
/// when it appears.
#[tokio::test(flavor = "multi_thread")]
async fn starts_with_redis_down_and_picks_it_up() {
    let mut redis = RedisServer::not_started();
    let up = mock("up", Behavior::default()).await;
    let gw = Gateway::start(&format!(
        "{}{}",
        redis_cache(&redis.url(), ""),
        openai_model("m", "x", &up.base_url(), "")
    ))
    .await;
    for stream in [false, true] {
        let r = chat(&gw, &ask("redis down", stream, "")).await;
        assert_eq!((r.status, r.cache.as_str()), (200, "skip"), "{r:?}");
    }
    gw.wait_for_log(Duration::from_secs(5), "warning that Redis is down", |l| {
        l.contains("Redis is not reachable")
    })
    .await;

    redis.restart();
    let q = ask("redis back", false, "");
    common::wait_for(
        Duration::from_secs(15),
        "the gateway to start using Redis",
        || async {
            let r = chat(&gw, &q).await;
            assert_eq!(r.status, 200);
            (r.cache == "hit").then_some(())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_password_is_never_logged() {
    let port = common::closed_port();
    let up = mock("up", Behavior::default()).await;
    let gw = Gateway::builder(&format!(
        "{}{}",
        redis_cache("env:TEST_REDIS_URL", ""),
        openai_model("m", "x", &up.base_url(), "")
    ))
    .env(
        "TEST_REDIS_URL",
        format!("redis://:hunter2-secret@127.0.0.1:{port}/0"),
    )
    .start()
    .await;
    assert_eq!(chat(&gw, &ask("pw", false, "")).await.status, 200);
    gw.wait_for_log(Duration::from_secs(5), "warning that Redis is down", |l| {
        l.contains("Redis")
    })
    .await;
    assert!(
        !gw.stderr_text().contains("hunter2"),
        "the Redis password leaked into the log"
    );
}

/// A hung Redis (SIGSTOP: connections stay open, nothing answers) costs timeouts, not
/// failures; the breaker opens, and caching resumes after SIGCONT.
#[tokio::test(flavor = "multi_thread")]
async fn hung_redis_is_served_around_and_picked_up_again() {
    let redis = RedisServer::start();
    let up = mock("up", Behavior::default()).await;
    let gw = Gateway::start(&format!(
        "[cache]\nenabled = true\nbackend = \"redis\"\nredis_url = \"{}\"\nredis_timeout = \"20ms\"\n{}",
        redis.url(),
        openai_model("m", "x", &up.base_url(), "")
    ))
    .await;
    let q = ask("before the hang", false, "");
    assert_eq!(chat(&gw, &q).await.cache, "miss");
    redis.pause();
    for i in 0..30 {
        let r = chat(&gw, &ask(&format!("hung {i}"), i % 2 == 0, "")).await;
        assert_eq!(r.status, 200, "{r:?}");
        assert_ne!(r.cache, "hit");
    }
    gw.wait_for_log(Duration::from_secs(5), "the breaker to open", |l| {
        l.contains("circuit breaker open")
    })
    .await;
    redis.resume();
    common::wait_for(
        Duration::from_secs(15),
        "caching to resume after SIGCONT",
        || async {
            let r = chat(&gw, &q).await;
            assert_eq!(r.status, 200);
            (r.cache == "hit").then_some(())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn invalid_redis_url_is_a_clear_startup_error() {
    let up = mock("up", Behavior::default()).await;
    let done = Gateway::builder(&format!(
        "{}{}",
        redis_cache("env:TEST_REDIS_URL", ""),
        openai_model("m", "x", &up.base_url(), "")
    ))
    .env("TEST_REDIS_URL", "http://:hunter2-secret@127.0.0.1:1")
    .run_to_exit(Duration::from_secs(10))
    .await;
    assert!(!done.status.success());
    assert!(
        done.stderr.contains("redis_url is not a valid Redis URL"),
        "{}",
        done.stderr
    );
    assert!(
        !done.stderr.contains("hunter2"),
        "the password leaked: {}",
        done.stderr
    );
}
