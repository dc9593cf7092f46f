//! The gateway holds the queue (issue 23): while a group's local backends are full, its
//! requests wait at the gateway and are let through in fair shares per key and by
//! priority; a client that hangs up leaves the queue at once; a full queue answers 429.
//! Orderings, not timings: each test holds the backend's slots with a slow first byte
//! and looks at what is let through next (the mock records the bodies it is sent).

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::keys::{admin, gateway_with_server, new_key, MASTER};
use common::mock;
use llmgw::mock::Behavior;
use reqwest::Method;
use serde_json::json;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A local (`sglang`) group `m` in front of `up` that runs 2 requests at once.
fn local_group(api_base: &str) -> String {
    format!(
        "[[models]]\nname = \"m\"\nprovider = \"sglang\"\nmodel = \"m\"\napi_base = \"{api_base}\"\nmax_parallel = 2\n"
    )
}

/// A chat request's body, marked with `tag` (the mock records it) and any extra fields.
fn body(tag: &str, extra: &str) -> String {
    format!(r#"{{"model":"m","messages":[{{"role":"user","content":"{tag}"}}]{extra}}}"#)
}

/// Sends `body` with `key`; records `tag` in `done` when the answer is whole.
fn send(
    base: &str,
    key: &str,
    tag: String,
    body: String,
    done: &Arc<Mutex<Vec<String>>>,
) -> tokio::task::JoinHandle<reqwest::Response> {
    let (url, key, done) = (
        format!("{base}/v1/chat/completions"),
        key.to_string(),
        done.clone(),
    );
    tokio::spawn(async move {
        let resp = reqwest::Client::new()
            .post(url)
            .bearer_auth(key)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .expect("request");
        done.lock().unwrap().push(tag);
        resp
    })
}

/// `llmgw_queue_waiting` of group `m` from `/metrics`.
async fn waiting(base: &str) -> u64 {
    let (_, m) = admin(base, Method::GET, "/metrics", None).await;
    let text = m.as_str().map(str::to_string).unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix("llmgw_queue_waiting{model_group=\"m\"} "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no queue gauge in /metrics:\n{text}"))
}

/// Waits (bounded) until `n` requests wait in the gateway's queue.
async fn until_waiting(base: &str, n: u64) {
    let until = Instant::now() + Duration::from_secs(20);
    loop {
        let w = waiting(base).await;
        if w == n {
            return;
        }
        assert!(Instant::now() < until, "{w} waiting, never {n}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

// Key A's flood waits at the gateway; key B's one request is let through next, not
// behind A's whole flood (as it was with the backend's first-come-first-served queue).
#[tokio::test(flavor = "multi_thread")]
async fn a_flood_does_not_stall_another_key() {
    let up = mock(
        "fair",
        Behavior {
            first_byte_delay: Duration::from_secs(1),
            ..Behavior::default()
        },
    )
    .await;
    let gw = gateway_with_server(&local_group(&up.base_url()), "", "")
        .start()
        .await;
    let base = gw.url("");
    let (a, _) = new_key(&base, json!({"key_alias": "flood"})).await;
    let (b, _) = new_key(&base, json!({"key_alias": "chat"})).await;
    let done = Arc::new(Mutex::new(Vec::new()));
    let mut flood = Vec::new();
    for i in 0..12 {
        let tag = format!("a{i}");
        flood.push(send(&base, &a, tag.clone(), body(&tag, ""), &done));
    }
    // Two run in the backend, ten wait at the gateway.
    until_waiting(&base, 10).await;
    let chat = send(&base, &b, "b".into(), body("b", ""), &done);
    // B waits too, before anything finished (each takes a second): the order below is
    // the gate's decision, not a race.
    until_waiting(&base, 11).await;
    assert!(
        done.lock().unwrap().is_empty(),
        "premise: nothing finished yet"
    );
    let resp = chat.await.unwrap();
    assert_eq!(resp.status(), 200);
    let queued_ms: u64 = resp.headers()["x-llmgw-queue-ms"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(queued_ms > 0, "B waited its turn at the gateway");
    let finished_before_b = done.lock().unwrap().len() - 1;
    // B came after the two running and at most one of A's waiting: fair, not 13th.
    assert!(
        finished_before_b <= 3,
        "B finished after {finished_before_b} of A's requests: {:?}",
        done.lock().unwrap()
    );
    for f in flood {
        assert_eq!(f.await.unwrap().status(), 200, "every request succeeds");
    }
    // The served shares are in /metrics, per key.
    let (_, m) = admin(&base, Method::GET, "/metrics", None).await;
    let text = m.as_str().unwrap_or_default().to_string();
    assert!(
        text.contains("llmgw_queue_served_total{model_group=\"m\",flow=\""),
        "{text}"
    );
    assert!(
        text.contains("llmgw_queue_wait_seconds_count{model_group=\"m\"}"),
        "{text}"
    );
}

// A higher class is let through first: batch floods, an interactive request goes next.
#[tokio::test(flavor = "multi_thread")]
async fn interactive_goes_before_batch() {
    let up = mock(
        "prio",
        Behavior {
            first_byte_delay: Duration::from_secs(1),
            ..Behavior::default()
        },
    )
    .await;
    let gw = gateway_with_server(&local_group(&up.base_url()), "", "")
        .start()
        .await;
    let base = gw.url("");
    let (a, _) = new_key(&base, json!({"key_alias": "sweep"})).await;
    let done = Arc::new(Mutex::new(Vec::new()));
    let mut flood = Vec::new();
    for i in 0..8 {
        let tag = format!("batch{i}");
        flood.push(send(
            &base,
            &a,
            tag.clone(),
            body(&tag, r#","priority":"batch""#),
            &done,
        ));
    }
    until_waiting(&base, 6).await;
    // The same key, asking for the interactive class in the header.
    let now = tokio::spawn({
        let base = base.clone();
        let a = a.clone();
        async move {
            reqwest::Client::new()
                .post(format!("{base}/v1/chat/completions"))
                .bearer_auth(&a)
                .header("content-type", "application/json")
                .header("x-llmgw-priority", "interactive")
                .body(body("now", ""))
                .send()
                .await
                .unwrap()
        }
    });
    until_waiting(&base, 7).await;
    assert!(
        done.lock().unwrap().is_empty(),
        "premise: nothing finished yet"
    );
    let resp = now.await.unwrap();
    assert_eq!(resp.status(), 200);
    for f in flood {
        assert_eq!(f.await.unwrap().status(), 200);
    }
    // The order the backend was sent them in: two batch requests held its two slots;
    // when they end together, "now" takes the first free slot and a batch request the
    // other, and those two may reach the backend in either order (so third or fourth).
    // Without priority it would be ninth, behind the whole sweep.
    let order: Vec<String> = up
        .state
        .bodies()
        .iter()
        .map(|b| {
            let v: serde_json::Value = serde_json::from_slice(b).unwrap();
            v["messages"][0]["content"].as_str().unwrap().to_string()
        })
        .collect();
    let at = order.iter().position(|t| t == "now").unwrap();
    assert!(
        at <= 3,
        "the interactive request reached the backend after {at} batch requests: {order:?}"
    );
    // llmgw's own key never reaches the upstream.
    assert!(up
        .state
        .bodies()
        .iter()
        .all(|b| !String::from_utf8_lossy(b).contains("priority")));
    // A bad class is a clear 400.
    let bad = reqwest::Client::new()
        .post(format!("{base}/v1/chat/completions"))
        .bearer_auth(MASTER)
        .header("content-type", "application/json")
        .body(body("x", r#","priority":"urgent""#))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    let v: serde_json::Value = serde_json::from_slice(&bad.bytes().await.unwrap()).unwrap();
    assert_eq!(v["error"]["param"], "priority", "{v}");
}

// A client that hangs up while queued leaves the queue at once — before anything in
// the backend has finished (the first byte takes 5 s), so not because the queue moved.
#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_leaves_leaves_the_queue() {
    use tokio::io::AsyncWriteExt;
    let up = mock(
        "leave",
        Behavior {
            first_byte_delay: Duration::from_secs(5),
            ..Behavior::default()
        },
    )
    .await;
    let gw = gateway_with_server(&local_group(&up.base_url()), "", "")
        .start()
        .await;
    let base = gw.url("");
    let done = Arc::new(Mutex::new(Vec::new()));
    let running: Vec<_> = (0..2)
        .map(|i| send(&base, MASTER, format!("r{i}"), body("r", ""), &done))
        .collect();
    let addr = base.trim_start_matches("http://").to_string();
    let b = body("leaver", "");
    let mut tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let req = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: {addr}\r\nauthorization: Bearer {MASTER}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{b}",
        b.len()
    );
    tcp.write_all(req.as_bytes()).await.unwrap();
    until_waiting(&base, 1).await;
    let left = Instant::now();
    drop(tcp);
    until_waiting(&base, 0).await;
    println!(
        "left the queue {:?} after the client closed",
        left.elapsed()
    );
    assert!(
        done.lock().unwrap().is_empty(),
        "it left before anything finished"
    );
    drop(running);
}

// A full queue answers at once: 429, saying how many wait and which limit.
#[tokio::test(flavor = "multi_thread")]
async fn a_full_queue_answers_429_at_once() {
    let up = mock(
        "full",
        Behavior {
            first_byte_delay: Duration::from_secs(3),
            ..Behavior::default()
        },
    )
    .await;
    let gw = gateway_with_server(
        &local_group(&up.base_url()),
        "",
        "[router]\nqueue = { max = 2 }\n",
    )
    .start()
    .await;
    let base = gw.url("");
    let done = Arc::new(Mutex::new(Vec::new()));
    let held: Vec<_> = (0..4)
        .map(|i| send(&base, MASTER, format!("h{i}"), body("h", ""), &done))
        .collect();
    until_waiting(&base, 2).await;
    let resp = reqwest::Client::new()
        .post(format!("{base}/v1/chat/completions"))
        .bearer_auth(MASTER)
        .header("content-type", "application/json")
        .body(body("over", ""))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 429);
    assert!(resp.headers().contains_key("retry-after"));
    let v: serde_json::Value = serde_json::from_slice(&resp.bytes().await.unwrap()).unwrap();
    assert_eq!(v["error"]["code"], "queue_full", "{v}");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("2 requests are already waiting") && msg.contains("queue.max"),
        "{msg}"
    );
    assert!(
        done.lock().unwrap().is_empty(),
        "refused before anything finished"
    );
    for h in held {
        assert_eq!(h.await.unwrap().status(), 200);
    }
}

// A key's own class and cap: `priority` is the class of requests that name none,
// `max_priority` lowers any ask above it; both shown by /key/info; bad values are 400s.
#[tokio::test(flavor = "multi_thread")]
async fn a_keys_priority_and_max_priority_decide_its_class() {
    let up = mock(
        "keyprio",
        Behavior {
            first_byte_delay: Duration::from_secs(1),
            ..Behavior::default()
        },
    )
    .await;
    let gw = gateway_with_server(&local_group(&up.base_url()), "", "")
        .start()
        .await;
    let base = gw.url("");
    let (flood_key, _) = new_key(&base, json!({"key_alias": "flood"})).await;
    let (high, _) = new_key(
        &base,
        json!({"key_alias": "high", "priority": "interactive"}),
    )
    .await;
    let (low, _) = new_key(&base, json!({"key_alias": "low", "priority": "batch"})).await;
    let (capped, info) = new_key(
        &base,
        json!({"key_alias": "capped", "max_priority": "batch", "weight": 3}),
    )
    .await;
    assert_eq!(info["max_priority"], "batch", "{info}");
    assert_eq!(info["weight"], 3, "{info}");
    let done = Arc::new(Mutex::new(Vec::new()));
    let mut all = Vec::new();
    for i in 0..8 {
        let tag = format!("flood{i}");
        all.push(send(&base, &flood_key, tag.clone(), body(&tag, ""), &done));
    }
    until_waiting(&base, 6).await;
    // Sent before "high", these two would go first if their keys did not lower them.
    all.push(send(&base, &low, "low".into(), body("low", ""), &done));
    until_waiting(&base, 7).await;
    all.push(send(
        &base,
        &capped,
        "capped".into(),
        body("capped", r#","priority":"interactive""#),
        &done,
    ));
    until_waiting(&base, 8).await;
    all.push(send(&base, &high, "high".into(), body("high", ""), &done));
    until_waiting(&base, 9).await;
    for r in all {
        assert_eq!(r.await.unwrap().status(), 200);
    }
    let order: Vec<String> = up
        .state
        .bodies()
        .iter()
        .map(|b| {
            let v: serde_json::Value = serde_json::from_slice(b).unwrap();
            v["messages"][0]["content"].as_str().unwrap().to_string()
        })
        .collect();
    let at = |t: &str| order.iter().position(|o| o == t).unwrap();
    assert!(at("high") <= 3, "the interactive key waited: {order:?}");
    // The batch-class requests go after the whole default-class flood.
    assert!(at("low") >= 9 && at("capped") >= 9, "{order:?}");
    // Bad values are clear 400s naming the field.
    for (field, v) in [
        ("priority", json!("urgent")),
        ("max_priority", json!(300)),
        ("weight", json!(0)),
    ] {
        let (status, v) = admin(
            &base,
            Method::POST,
            "/key/generate",
            Some(json!({ field: v })),
        )
        .await;
        assert_eq!(status, 400, "{field}: {v}");
        assert_eq!(v["error"]["param"], field, "{v}");
    }
}
