//! Issue 21: virtual keys under adversarial use, against the real binary and mock
//! upstreams. Parallel requests cannot overshoot a budget or tpm by more than one request
//! (reserve, then settle); no fallback path leaves a key's models, with or without the
//! cache; aliases that look like another key's id or hide text are refused.
//!
//! Every in-flight request here is held by the mock's `chunk_gate` (the upstream sends
//! its first event, then waits for a permit), so "all requests reached admission while
//! the first was still running" is a fact of the ordering, not of timing.

// Test and benchmark code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod common;

use common::keys::{admin, gateway, new_key, PRICED};
use common::{client, expect_openai_error, mock, openai_model};
use llmgw::mock::Behavior;
use reqwest::Method;
use serde_json::{json, Value};
use std::sync::Arc;
use tokio::sync::Semaphore;

/// One `local` request with the mock's 20 chunks: 9 × $100/M + 20 × $300/M.
const ONE_REQUEST_USD: f64 = 0.0069;

/// A streamed chat request with `key`, answered once its headers are in.
async fn stream_request(base: &str, key: &str, body: &Value) -> reqwest::Response {
    client()
        .post(format!("{base}/v1/chat/completions"))
        .bearer_auth(key)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .expect("chat request")
}

/// Sends `n` streams at once while the upstream holds every admitted one after its first
/// event; returns the admitted (200) responses, and checks that every other one is a 429
/// with `code`. Then lets the upstream finish and reads the admitted streams to the end.
async fn parallel_streams(base: &str, key: &str, n: usize, gate: &Semaphore, code: &str) -> usize {
    let body = json!({
        "model": "local",
        "messages": [{"role": "user", "content": "Say hello"}],
        "stream": true,
    });
    let all =
        futures_util::future::join_all((0..n).map(|_| stream_request(base, key, &body))).await;
    let mut served = Vec::new();
    for resp in all {
        if resp.status() == 200 {
            served.push(resp);
        } else {
            let e = expect_openai_error(resp, 429).await;
            assert_eq!(e["code"], code, "{e:?}");
        }
    }
    gate.add_permits(100_000);
    let admitted = served.len();
    for resp in served {
        let text = resp.text().await.unwrap();
        assert!(text.contains("[DONE]"), "{text}");
    }
    admitted
}

async fn key_spend(base: &str, alias: &str) -> f64 {
    let (_, info) = admin(base, Method::GET, &format!("/key/info?key={alias}"), None).await;
    info["info"]["spend"].as_f64().unwrap()
}

fn gated_upstream() -> (Behavior, Arc<Semaphore>) {
    let gate = Arc::new(Semaphore::new(0));
    (
        Behavior {
            chunks: 20,
            chunk_gate: Some(gate.clone()),
            ..Behavior::default()
        },
        gate,
    )
}

// Finding 2, acceptance 3: 30 parallel streams on a one-request budget. Each admitted
// request holds its estimate (prompt + 4096 output tokens) until it ends, so while one is
// in flight the others are refused; the budget is exceeded by at most one request.
#[tokio::test(flavor = "multi_thread")]
async fn parallel_streams_exceed_a_budget_by_at_most_one_request() {
    let (behavior, gate) = gated_upstream();
    let up = mock("budget", behavior).await;
    let gw = gateway(&openai_model("local", "m", &up.base_url(), PRICED), "")
        .start()
        .await;
    let base = gw.url("");
    let budget = 0.007;
    let (key, _) = new_key(&base, json!({"key_alias": "mallory", "max_budget": budget})).await;
    let served = parallel_streams(&base, &key, 30, &gate, "budget_exceeded").await;
    assert!(served >= 1, "no request was served");
    let spend = key_spend(&base, "mallory").await;
    assert!(
        spend <= budget + ONE_REQUEST_USD + 1e-9,
        "{served} of 30 served, spend ${spend} on a ${budget} budget"
    );
    // Settled: the estimate was released, the next request is judged on what was spent.
    let again = stream_request(
        &base,
        &key,
        &json!({"model": "local", "messages": [], "stream": true}),
    )
    .await;
    if spend >= budget {
        assert_eq!(
            expect_openai_error(again, 429).await["code"],
            "budget_exceeded"
        );
    } else {
        assert_eq!(again.status(), 200);
    }
}

// Finding 2 for tpm: 20 parallel requests on `tpm: 30` (one request uses 29 tokens).
#[tokio::test(flavor = "multi_thread")]
async fn parallel_streams_exceed_tpm_by_at_most_one_request() {
    let (behavior, gate) = gated_upstream();
    let up = mock("tpm", behavior).await;
    let gw = gateway(&openai_model("local", "m", &up.base_url(), PRICED), "")
        .start()
        .await;
    let base = gw.url("");
    let (key, _) = new_key(&base, json!({"key_alias": "trudy", "tpm_limit": 30})).await;
    let served = parallel_streams(&base, &key, 20, &gate, "rate_limit_exceeded").await;
    assert!(
        (1..=2).contains(&served),
        "{served} of 20 parallel requests served on tpm 30 (29 tokens each)"
    );
}

// Finding 2: the estimate is released when a request fails, so a failed request does not
// keep the key locked out.
#[tokio::test(flavor = "multi_thread")]
async fn a_failed_request_releases_its_estimate() {
    let up = mock(
        "fails",
        Behavior {
            fault: Some(llmgw::mock::Fault {
                status: 500,
                rate: 1.0,
                retry_after: None,
                message: "down".into(),
            }),
            ..Behavior::default()
        },
    )
    .await;
    let gw = gateway(&openai_model("local", "m", &up.base_url(), PRICED), "")
        .start()
        .await;
    let base = gw.url("");
    let (key, _) = new_key(
        &base,
        json!({"key_alias": "oscar", "max_budget": 0.007, "tpm_limit": 30}),
    )
    .await;
    for _ in 0..3 {
        let resp = stream_request(
            &base,
            &key,
            &json!({"model": "local", "messages": [], "stream": false}),
        )
        .await;
        assert_eq!(resp.status(), 500, "{}", resp.text().await.unwrap());
    }
    assert_eq!(key_spend(&base, "oscar").await, 0.0);
}

/// A gateway with a `small` group that cannot answer (`small_fails`: every call a 500;
/// else a context window of 5 tokens) and a `big` group that can, the response cache on,
/// `router` in `[router]`; a key limited to `small` sends `body` (without, then with the
/// cache), and must never get `big`'s answer, while the master key gets it (the path is
/// live).
async fn fallback_stays_inside_the_keys_models(router: &str, small_fails: bool, body: Value) {
    let small = mock(
        "small",
        Behavior {
            fault: small_fails.then(|| llmgw::mock::Fault {
                status: 500,
                rate: 1.0,
                retry_after: None,
                message: "small is down".into(),
            }),
            ..Behavior::default()
        },
    )
    .await;
    let big = mock("big", Behavior::default()).await;
    let window = if small_fails {
        ""
    } else {
        "context_window = 5"
    };
    let models = openai_model("small", "m", &small.base_url(), window)
        + &openai_model("big", "m", &big.base_url(), "");
    let extra = format!("[router]\n{router}\n\n[cache]\nenabled = true\n");
    let gw = gateway(&models, &extra).start().await;
    let base = gw.url("");
    let (key, _) = new_key(&base, json!({"key_alias": "eve", "models": ["small"]})).await;
    let send = |who: String, body: Value| {
        let base = base.clone();
        async move {
            client()
                .post(format!("{base}/v1/chat/completions"))
                .bearer_auth(who)
                .header("content-type", "application/json")
                .body(body.to_string())
                .send()
                .await
                .unwrap()
        }
    };
    // Without the cache: the router must not try `big` for this key.
    let mut uncached = body.clone();
    uncached["cache"] = json!({"no-cache": true, "no-store": true});
    let resp = send(key.clone(), uncached).await;
    let status = resp.status();
    let fallback = resp.headers().get("x-llmgw-fallback").cloned();
    let text = resp.text().await.unwrap();
    assert_ne!(
        status, 200,
        "a small-only key was answered by {fallback:?}: {text}"
    );
    assert!(text.contains("\"error\""), "{text}");
    assert_eq!(
        big.state.request_count(),
        0,
        "big was called for a small-only key"
    );
    // The master key reaches `big` by the same path (and the cache sees that answer).
    let resp = send(common::keys::MASTER.to_string(), body.clone()).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-llmgw-fallback"], "big");
    let called = big.state.request_count();
    // With the cache: the same request must not be answered from it with `big`'s answer.
    let resp = send(key.clone(), body).await;
    let status = resp.status();
    let cache = resp.headers().get("x-llmgw-cache").cloned();
    let text = resp.text().await.unwrap();
    assert_ne!(
        status, 200,
        "a small-only key got big's answer (cache {cache:?}): {text}"
    );
    assert_eq!(big.state.request_count(), called);
    // Asking for `big` itself stays refused.
    let resp = send(key, json!({"model": "big", "messages": []})).await;
    assert_eq!(
        expect_openai_error(resp, 403).await["code"],
        "model_not_allowed"
    );
}

fn chat(extra: Value) -> Value {
    let mut body = json!({
        "model": "small",
        "messages": [{"role": "user", "content": "Say hello to everyone in this room, slowly and twice"}],
    });
    if let (Some(b), Value::Object(e)) = (body.as_object_mut(), extra) {
        b.extend(e);
    }
    body
}

// Finding 3, acceptance 4: the request's own `fallbacks`.
#[tokio::test(flavor = "multi_thread")]
async fn a_keys_request_fallbacks_stay_inside_its_models() {
    fallback_stays_inside_the_keys_models(
        "num_retries = 0",
        true,
        chat(json!({"fallbacks": ["big"]})),
    )
    .await;
}

// Finding 3: configured `[router] fallbacks`.
#[tokio::test(flavor = "multi_thread")]
async fn configured_fallbacks_stay_inside_a_keys_models() {
    fallback_stays_inside_the_keys_models(
        "num_retries = 0\nfallbacks = { small = [\"big\"] }",
        true,
        chat(json!({})),
    )
    .await;
}

// Finding 3: `[router] default_fallbacks`.
#[tokio::test(flavor = "multi_thread")]
async fn default_fallbacks_stay_inside_a_keys_models() {
    fallback_stays_inside_the_keys_models(
        "num_retries = 0\ndefault_fallbacks = [\"big\"]",
        true,
        chat(json!({})),
    )
    .await;
}

// Finding 3: context-window fallbacks (the prompt does not fit `small`'s 5 tokens).
#[tokio::test(flavor = "multi_thread")]
async fn context_window_fallbacks_stay_inside_a_keys_models() {
    fallback_stays_inside_the_keys_models(
        "context_window_fallbacks = { small = [\"big\"] }",
        false,
        chat(json!({})),
    )
    .await;
}

// Findings 5 and 6: an alias shaped like another key's id (admin calls by that name
// would act on the other key), and aliases with invisible format characters (U+202E
// reverses the text after it in `keys list` and /metrics), are refused with a 400 that
// names the field.
#[tokio::test(flavor = "multi_thread")]
async fn aliases_that_impersonate_or_hide_text_are_refused() {
    let up = mock("alias", Behavior::default()).await;
    let gw = gateway(&openai_model("local", "m", &up.base_url(), ""), "")
        .start()
        .await;
    let base = gw.url("");
    let (_, alice) = new_key(&base, json!({"key_alias": "alice"})).await;
    let alice_id = alice["token"].as_str().unwrap().to_string();
    assert_eq!(alice_id.len(), 16, "{alice}");
    let refused = |body: Value, path: &'static str| {
        let base = base.clone();
        async move {
            let (status, v) = admin(&base, Method::POST, path, Some(body.clone())).await;
            assert_eq!(status, 400, "{body} -> {v}");
            assert!(v["error"]["message"].as_str().is_some(), "{v}");
            v["error"]["param"].as_str().unwrap_or_default().to_string()
        }
    };
    // A new key named like alice's id, or any 16 hex digits.
    for alias in [
        alice_id.clone(),
        alice_id.to_uppercase(),
        "0123456789abcdef".into(),
    ] {
        let p = refused(json!({"key_alias": alias}), "/key/generate").await;
        assert_eq!(p, "key_alias");
    }
    let (_, bob) = new_key(&base, json!({"key_alias": "bob"})).await;
    let p = refused(
        json!({"key": bob["token"], "key_alias": alice_id}),
        "/key/update",
    )
    .await;
    assert_eq!(p, "key_alias");
    // Blocking by alice's id still blocks alice, not a look-alike.
    let (status, _) = admin(
        &base,
        Method::POST,
        "/key/block",
        Some(json!({"key": alice_id})),
    )
    .await;
    assert_eq!(status, 200);
    let (_, info) = admin(&base, Method::GET, "/key/info?key=bob", None).await;
    assert_eq!(info["info"]["blocked"], false, "{info}");
    // Format characters: right-to-left override, zero-width space, a tag character.
    for alias in ["evil\u{202E}gpj.exe", "a\u{200B}b", "x\u{E0041}"] {
        let p = refused(json!({"key_alias": alias}), "/key/generate").await;
        assert_eq!(p, "key_alias");
        let p = refused(json!({"team_alias": alias}), "/team/new").await;
        assert_eq!(p, "team_alias");
    }
    // Plain non-ASCII text is fine.
    new_key(&base, json!({"key_alias": "zoë-αβ"})).await;
}

/// Sends a stream on a raw socket, reads until the last content event's
/// `"finish_reason":"` (the usage event comes after it), then leaves at once. Returns
/// the status line's code.
async fn stream_and_leave_at_finish(base: &str, key: &str) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = base.trim_start_matches("http://").trim_end_matches('/');
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let body = common::chat_body("local", true);
    let req = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: {addr}\r\nauthorization: Bearer {key}\r\n\
         content-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    tcp.write_all(req.as_bytes()).await.unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = tokio::time::timeout(std::time::Duration::from_secs(10), tcp.read(&mut buf))
            .await
            .expect("an answer within 10 s")
            .unwrap();
        seen.extend_from_slice(&buf[..n]);
        let status: u16 = std::str::from_utf8(seen.get(9..12).unwrap_or_default())
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        if n == 0 || (status != 0 && status != 200) {
            return status;
        }
        if memchr::memmem::find(&seen, b"\"finish_reason\":\"").is_some() {
            // Dropped on return: the connection closes right here.
            return status;
        }
    }
}

// Finding 1, acceptance 2: a client that always leaves between the last content event
// and the usage event, on a budget of about one request: at most two such streams are
// served, and each is charged for what passed.
#[tokio::test(flavor = "multi_thread")]
async fn abandoned_streams_on_a_one_request_budget() {
    let up = mock(
        "leaver",
        Behavior {
            chunks: 20,
            ..Behavior::default()
        },
    )
    .await;
    let gw = gateway(&openai_model("local", "m", &up.base_url(), PRICED), "")
        .start()
        .await;
    let base = gw.url("");
    let (key, _) = new_key(&base, json!({"key_alias": "leaver", "max_budget": 0.007})).await;
    let mut served = 0;
    for _ in 0..10 {
        match stream_and_leave_at_finish(&base, &key).await {
            200 => served += 1,
            429 => {}
            other => panic!("status {other}"),
        }
        // The next attempt is judged once this one was charged (its ticket settles when
        // the gateway sees the connection gone).
        common::wait_for(
            std::time::Duration::from_secs(10),
            "the stream to be charged",
            || {
                let base = base.clone();
                async move {
                    let (_, info) = admin(&base, Method::GET, "/key/info?key=leaver", None).await;
                    (info["info"]["spend"].as_f64().unwrap() >= f64::from(served) * 0.0063)
                        .then_some(())
                }
            },
        )
        .await;
    }
    assert!(
        (1..=2).contains(&served),
        "{served} abandoned streams served"
    );
    // Each was charged for its 20 content events at least (not 0, not just the prompt).
    let spend = key_spend(&base, "leaver").await;
    assert!(
        spend >= f64::from(served) * 0.0063,
        "{served} served, spend ${spend}"
    );
}
