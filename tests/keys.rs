//! Virtual keys on one gateway with its embedded SQLite store (real files): model access,
//! revocation, budgets (with streams and their usage chunk), budget periods, rpm, teams,
//! restarts, the admin API's refusals, the `keys` and `spend` CLI. Acceptance items 1–5
//! of issue 11 (the SLURM stop/start half of 5 is in tests/slurm.rs; replicas and
//! PostgreSQL in tests/keys_replicas.rs).

// Test and benchmark code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod common;

use common::keys::{
    admin, chat, cli_ok, gateway, gateway_with_server, new_key, write_master_key, COST_NANOS,
    PRICED,
};
use common::{expect_openai_error, json_body, mock, openai_model, read_sse, run_python_script};
use llmgw::mock::Behavior;
use reqwest::Method;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

// 1. The OpenAI Python SDK with a key limited to "local": 200 there, 403 on "other",
//    refused (401) at once after `llmgw keys revoke`.
#[tokio::test(flavor = "multi_thread")]
async fn sdk_key_limited_to_a_group_then_revoked() {
    let local = mock("local", Behavior::default()).await;
    let other = mock("other", Behavior::default()).await;
    let models = openai_model("local", "m", &local.base_url(), "")
        + &openai_model("other", "m", &other.base_url(), "");
    let gw = gateway(&models, "").start().await;
    write_master_key(&gw.state_dir);
    let (key, info) = new_key(
        &gw.url(""),
        json!({"key_alias": "alice", "models": ["local"]}),
    )
    .await;
    assert!(key.starts_with("sk-llmgw-") && key.len() == 41, "{key}");
    assert_eq!(info["models"], json!(["local"]));

    let out = run_python_script(&gw, "openai_sdk_keys.py", &["allowed"], &key).await;
    assert!(out.contains("allowed ok"), "{out}");

    let out = cli_ok(&gw.state_dir, &["keys", "revoke", "alice"]);
    assert!(out.contains("revoked key \"alice\""), "{out}");
    // At once: the very first request after the command returned is refused (no
    // retrying until it is).
    let resp = chat(&gw.url(""), &key, "local", false, false).await;
    let err = expect_openai_error(resp, 401).await;
    assert_eq!(err["code"], "key_revoked");
    let out = run_python_script(&gw, "openai_sdk_keys.py", &["revoked"], &key).await;
    assert!(out.contains("revoked ok"), "{out}");

    // The list shows it revoked; the store holds only its hash.
    let list = cli_ok(&gw.state_dir, &["keys", "list"]);
    assert!(
        list.lines()
            .any(|l| l.starts_with("alice") && l.ends_with("revoked")),
        "{list}"
    );
    let db = std::fs::read(gw.state_dir.join("llmgw.db")).expect("database in the state dir");
    assert!(
        memchr::memmem::find(&db, key.as_bytes()).is_none(),
        "the key itself was stored"
    );
}

/// Events of a stream that carry a usage object.
fn usage_events(events: &[common::SseEvent]) -> Vec<Value> {
    events
        .iter()
        .filter_map(|e| e.json())
        .filter(|v| v["usage"].is_object())
        .collect()
}

// 2. max_budget 0.01 at known prices: requests pass until the spend reaches the budget,
//    then 429 budget_exceeded; streams without include_usage are charged (and get no
//    usage chunk); `llmgw spend --by key` equals the sum from the mock's usage.
#[tokio::test(flavor = "multi_thread")]
async fn budget_is_enforced_and_spend_matches_usage() {
    let up = mock("priced", Behavior::default()).await;
    let gw = gateway(&openai_model("local", "m", &up.base_url(), PRICED), "")
        .start()
        .await;
    write_master_key(&gw.state_dir);
    let base = gw.url("");
    let (key, _) = new_key(&base, json!({"key_alias": "bob", "max_budget": 0.01})).await;
    let mut ok = 0i64;
    let refused = loop {
        assert!(ok < 20, "the budget was never enforced");
        let resp = match ok % 3 {
            0 => chat(&base, &key, "local", false, false).await,
            1 => chat(&base, &key, "local", true, false).await,
            _ => chat(&base, &key, "local", true, true).await,
        };
        if resp.status() == 429 {
            break resp;
        }
        assert_eq!(resp.status(), 200);
        assert!(resp.headers().contains_key("x-llmgw-request-id"));
        match ok % 3 {
            0 => {
                let v = json_body(resp).await;
                assert_eq!(v["usage"]["prompt_tokens"], 9);
            }
            1 => {
                let ev = read_sse(resp).await;
                assert!(ev.last().is_some_and(|e| e.is_done()));
                assert!(
                    usage_events(&ev).is_empty(),
                    "usage chunk not removed: {ev:?}"
                );
                assert!(!common::streamed_text(&ev).is_empty());
            }
            _ => {
                let ev = read_sse(resp).await;
                let usage = usage_events(&ev);
                assert_eq!(usage.len(), 1, "{ev:?}");
                assert_eq!(usage[0]["usage"]["completion_tokens"], 5);
            }
        }
        ok += 1;
    };
    // $0.0024 each: four leave $0.0096 < $0.01, the fifth reaches $0.012.
    assert_eq!(ok, 5);
    let err = expect_openai_error(refused, 429).await;
    assert_eq!(err["type"], "budget_exceeded");
    let msg = err["message"].as_str().unwrap();
    assert!(
        msg.contains("\"bob\"") && msg.contains("$0.012000") && msg.contains("$0.010000"),
        "{msg}"
    );
    assert!(msg.contains("does not reset"), "{msg}");

    // Rows are written in the background within ~50 ms; the report equals the sum.
    let expected = ok * COST_NANOS;
    let report = common::wait_for(Duration::from_secs(5), "spend rows", || async {
        let out = cli_ok(&gw.state_dir, &["spend", "--by", "key", "--json"]);
        let v: Value = serde_json::from_str(&out).expect("spend --json is JSON");
        (v["total_cost_nanos"] == json!(expected)).then_some(v)
    })
    .await;
    let g = &report["groups"][0];
    assert_eq!(g["name"], "bob");
    assert_eq!(
        (g["requests"].as_i64(), g["cost_nanos"].as_i64()),
        (Some(ok), Some(expected))
    );
    assert!((g["spend"].as_f64().unwrap() - 0.012).abs() < 1e-9);
    assert_eq!(g["prompt_tokens"], 9 * ok);
    let table = cli_ok(&gw.state_dir, &["spend", "--by", "model"]);
    assert!(
        table.contains("$0.012000") && table.contains("local"),
        "{table}"
    );

    // The spend shows in /metrics by key alias, and the refusal by reason.
    let (_, info) = admin(&base, Method::GET, "/key/info?key=bob", None).await;
    assert!(
        (info["info"]["spend"].as_f64().unwrap() - 0.012).abs() < 1e-9,
        "{info}"
    );
    let m = gw
        .client()
        .get(gw.url("/metrics"))
        .bearer_auth(common::keys::MASTER)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        m.lines()
            .any(|l| l.starts_with("llmgw_key_spend_usd_total{key=\"bob\"")
                && l.ends_with(" 0.012000000")),
        "{m}"
    );
    assert!(
        m.contains("llmgw_key_rejections_total{reason=\"budget_exceeded\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("llmgw_model_group_requests_total{model_group=\"local\"} 5"),
        "{m}"
    );
}

// 3. budget_duration 30s: refused once the period's budget is spent, passes again after
//    the boundary (a real 30 s period).
#[tokio::test(flavor = "multi_thread")]
async fn budget_resets_at_the_period_boundary() {
    let up = mock("period", Behavior::default()).await;
    let gw = gateway(&openai_model("local", "m", &up.base_url(), PRICED), "")
        .start()
        .await;
    let base = gw.url("");
    let (key, info) = new_key(
        &base,
        json!({"key_alias": "carol", "max_budget": 0.004, "budget_duration": "30s"}),
    )
    .await;
    assert_eq!(info["budget_duration"], "30s");
    assert_eq!(chat(&base, &key, "local", false, false).await.status(), 200);
    assert_eq!(chat(&base, &key, "local", true, false).await.status(), 200);
    let refused = chat(&base, &key, "local", false, false).await;
    let retry: u64 = refused.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=30).contains(&retry), "{retry}");
    let err = expect_openai_error(refused, 429).await;
    assert_eq!(err["code"], "budget_exceeded");
    let message = err["message"].as_str().unwrap();
    let reset_ms = message
        .split("resets at ")
        .nth(1)
        .and_then(|r| r.split(" (in").next())
        .and_then(|t| llmgw::keys::admin_ops::parse_time(t, 0))
        .unwrap_or_else(|| panic!("no reset time in {message:?}")) as u64;
    // Refused before the boundary, accepted from the first request after it. The times
    // are read on the clock the gateway decides by (the coarse real-time clock), before
    // sending and after the answer: a refusal sent at or after the boundary, or an
    // acceptance answered before it, is wrong whatever the machine's load.
    let now = llmgw::router::now_ms;
    // Nothing rides on this wait: polling starts a second before the boundary.
    tokio::time::sleep(Duration::from_millis(reset_ms.saturating_sub(now() + 1000))).await;
    loop {
        let sent = now();
        let resp = chat(&base, &key, "local", false, false).await;
        let status = resp.status().as_u16();
        let _ = resp.bytes().await;
        let answered = now();
        match status {
            429 => assert!(
                sent < reset_ms,
                "refused although sent {} ms after the reset",
                sent - reset_ms
            ),
            200 => {
                assert!(
                    answered >= reset_ms,
                    "accepted {} ms before the reset",
                    reset_ms - answered
                );
                break;
            }
            other => panic!("status {other}"),
        }
        assert!(
            now() < reset_ms + 30_000,
            "the budget did not reset after its period"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (_, info) = admin(&base, Method::GET, "/key/info?key=carol", None).await;
    assert!(
        (info["info"]["spend"].as_f64().unwrap() - 0.0024).abs() < 1e-9,
        "{info}"
    );
}

/// Waits, if needed, so the next few seconds stay within one calendar minute.
async fn early_in_a_minute() {
    let s = llmgw::router::now_ms() / 1000 % 60;
    if s > 45 {
        tokio::time::sleep(Duration::from_secs(61 - s)).await;
    }
}

// 4. rpm = 5: the sixth request within the minute is refused with Retry-After; another
//    key is unaffected.
#[tokio::test(flavor = "multi_thread")]
async fn rpm_limit_refuses_the_sixth_request() {
    let up = mock("rpm", Behavior::default()).await;
    let gw = gateway(&openai_model("local", "m", &up.base_url(), ""), "")
        .start()
        .await;
    let base = gw.url("");
    let (limited, _) = new_key(&base, json!({"key_alias": "dave", "rpm_limit": 5})).await;
    let (other, _) = new_key(&base, json!({"key_alias": "erin"})).await;
    early_in_a_minute().await;
    for i in 0..5 {
        let stream = i % 2 == 1;
        assert_eq!(
            chat(&base, &limited, "local", stream, false).await.status(),
            200,
            "request {i}"
        );
    }
    let sixth = chat(&base, &limited, "local", false, false).await;
    let retry: u64 = sixth.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry));
    let err = expect_openai_error(sixth, 429).await;
    assert_eq!(err["type"], "rate_limit_error");
    let msg = err["message"].as_str().unwrap();
    assert!(
        msg.contains("\"dave\"") && msg.contains("5 requests per minute"),
        "{msg}"
    );
    for _ in 0..6 {
        assert_eq!(
            chat(&base, &other, "local", false, false).await.status(),
            200
        );
    }
}

// A key's request must pass its team's limits too: the team budget is shared.
#[tokio::test(flavor = "multi_thread")]
async fn team_budget_is_shared_by_its_keys() {
    let up = mock("team", Behavior::default()).await;
    let gw = gateway(&openai_model("local", "m", &up.base_url(), PRICED), "")
        .start()
        .await;
    let base = gw.url("");
    let (s, team) = admin(
        &base,
        Method::POST,
        "/team/new",
        Some(json!({"team_id": "physics", "team_alias": "Physics lab", "max_budget": 0.004})),
    )
    .await;
    assert_eq!(s, 200, "{team}");
    let (a, _) = new_key(&base, json!({"key_alias": "a", "team_id": "physics"})).await;
    let (b, _) = new_key(&base, json!({"key_alias": "b", "team_id": "physics"})).await;
    assert_eq!(chat(&base, &a, "local", false, false).await.status(), 200);
    assert_eq!(chat(&base, &b, "local", false, false).await.status(), 200);
    let err = expect_openai_error(chat(&base, &a, "local", false, false).await, 429).await;
    assert!(
        err["message"]
            .as_str()
            .unwrap()
            .contains("team \"Physics lab\""),
        "{err:?}"
    );
    let (_, info) = admin(&base, Method::GET, "/team/info?team_id=physics", None).await;
    assert!(
        (info["team_info"]["spend"].as_f64().unwrap() - 0.0048).abs() < 1e-9,
        "{info}"
    );
    assert_eq!(info["keys"].as_array().map(Vec::len), Some(2));
    // Raising the team's budget lets its keys through again at once.
    let (s, _) = admin(
        &base,
        Method::POST,
        "/team/update",
        Some(json!({"team_id": "physics", "max_budget": 1.0})),
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(chat(&base, &a, "local", false, false).await.status(), 200);
}

// 5. Keys, teams and spend survive a restart (same SQLite file).
#[tokio::test(flavor = "multi_thread")]
async fn keys_and_spend_survive_a_restart() {
    let up = mock("restart", Behavior::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let store = format!(
        "[store]\npath = \"{}\"\n",
        dir.path().join("keys.db").display()
    );
    let models = openai_model("local", "m", &up.base_url(), PRICED);
    let mut gw = gateway(&models, &store).start().await;
    let base = gw.url("");
    let (key, _) = new_key(
        &base,
        json!({"key_alias": "frank", "max_budget": 1.0, "rpm_limit": 100}),
    )
    .await;
    let (gone, _) = new_key(&base, json!({"key_alias": "gina"})).await;
    // No budget: its spend is shown all the same, and must survive the restart too.
    let (free, _) = new_key(&base, json!({"key_alias": "hugo"})).await;
    assert_eq!(chat(&base, &free, "local", true, false).await.status(), 200);
    let (s, _) = admin(
        &base,
        Method::POST,
        "/key/block",
        Some(json!({"key": "gina"})),
    )
    .await;
    assert_eq!(s, 200);
    for stream in [false, true] {
        assert_eq!(
            chat(&base, &key, "local", stream, false).await.status(),
            200
        );
    }
    gw.sigterm();
    assert!(gw.wait_exit(Duration::from_secs(15)).await.success());
    drop(gw);
    // Rollback journal, never WAL (network filesystems).
    assert!(!dir.path().join("keys.db-wal").exists());
    let mode: String = rusqlite::Connection::open(dir.path().join("keys.db"))
        .unwrap()
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "delete");

    let gw = gateway(&models, &store).start().await;
    let base = gw.url("");
    let (_, info) = admin(&base, Method::GET, "/key/info?key=frank", None).await;
    assert!(
        (info["info"]["spend"].as_f64().unwrap() - 0.0048).abs() < 1e-9,
        "{info}"
    );
    let (_, info) = admin(&base, Method::GET, "/key/info?key=hugo", None).await;
    assert!(
        (info["info"]["spend"].as_f64().unwrap() - 0.0024).abs() < 1e-9,
        "a key without a budget lost its spend in the restart: {info}"
    );
    assert_eq!(chat(&base, &key, "local", false, false).await.status(), 200);
    expect_openai_error(chat(&base, &gone, "local", false, false).await, 401).await;
    let (_, report) = admin(&base, Method::GET, "/spend/report?group_by=key", None).await;
    assert_eq!(
        report["total_cost_nanos"],
        json!(4 * COST_NANOS),
        "{report}"
    );
}

/// Sends a streamed chat request with `key` on a plain socket and reads until the first
/// content event has arrived: the stream is then in flight, whatever the timing.
async fn stream_until_first_event(base: &str, key: &str) -> tokio::net::TcpStream {
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
    while memchr::memmem::find(&seen, b"\"content\":").is_none() {
        let n = tokio::time::timeout(Duration::from_secs(10), tcp.read(&mut buf))
            .await
            .expect("first event within 10 s")
            .unwrap();
        assert!(
            n > 0,
            "stream ended early: {}",
            String::from_utf8_lossy(&seen)
        );
        seen.extend_from_slice(&buf[..n]);
    }
    assert!(
        seen.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&seen)
    );
    tcp
}

/// The key's `/key/info` spend once it is above 0 (the abandoned request's row is
/// recorded when the gateway notices the client left), or 0 after 10 s.
async fn spend_once_charged(base: &str, alias: &str) -> f64 {
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, info) = admin(base, Method::GET, &format!("/key/info?key={alias}"), None).await;
        let spend = info["info"]["spend"].as_f64().unwrap();
        if spend > 0.0 || Instant::now() > until {
            return spend;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// Issue 31/21 regression: a stream the client leaves before its usage event is charged
// for what passed (it used to be free: a 499 row with 0 tokens).
#[tokio::test(flavor = "multi_thread")]
async fn an_abandoned_stream_is_charged_for_what_passed() {
    // After its first event the upstream waits for a gate that never opens: the client
    // leaves before the usage event by construction.
    let up = mock(
        "abandon",
        Behavior {
            chunks: 20,
            chunk_gate: Some(std::sync::Arc::new(tokio::sync::Semaphore::new(0))),
            ..Behavior::default()
        },
    )
    .await;
    let gw = gateway(&openai_model("local", "m", &up.base_url(), PRICED), "")
        .start()
        .await;
    let base = gw.url("");
    let (key, _) = new_key(&base, json!({"key_alias": "ivan"})).await;
    let tcp = stream_until_first_event(&base, &key).await;
    drop(tcp);
    let spend = spend_once_charged(&base, "ivan").await;
    assert!(spend > 0.0, "an abandoned stream was free");
    let (_, report) = admin(&base, Method::GET, "/spend/report?group_by=key", None).await;
    assert!(report["total_cost_nanos"].as_i64().unwrap() > 0, "{report}");
}

// Issue 31 regression: a stream still open when the grace period ends is cut, and its
// row (charged for what passed) reaches the store before the gateway exits. The stream
// is in flight when SIGTERM comes (its first event was read) and cannot finish within
// the 1 s grace (after its first event the upstream waits for a gate that never opens):
// the ordering is forced, not timed.
#[tokio::test(flavor = "multi_thread")]
async fn a_stream_cut_at_shutdown_keeps_its_spend_row() {
    let up = mock(
        "cut-at-exit",
        Behavior {
            chunks: 20,
            chunk_gate: Some(std::sync::Arc::new(tokio::sync::Semaphore::new(0))),
            ..Behavior::default()
        },
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let store = format!(
        "[store]\npath = \"{}\"\n",
        dir.path().join("keys.db").display()
    );
    let models = openai_model("local", "m", &up.base_url(), PRICED);
    let mut gw = gateway_with_server(&models, "shutdown_grace = \"1s\"", &store)
        .start()
        .await;
    let base = gw.url("");
    let (key, _) = new_key(&base, json!({"key_alias": "judy"})).await;
    let tcp = stream_until_first_event(&base, &key).await;
    gw.sigterm();
    assert!(gw.wait_exit(Duration::from_secs(20)).await.success());
    drop(tcp);
    drop(gw);
    let gw = gateway(&models, &store).start().await;
    let base = gw.url("");
    let (_, info) = admin(&base, Method::GET, "/key/info?key=judy", None).await;
    assert!(
        info["info"]["spend"].as_f64().unwrap() > 0.0,
        "the cut stream's row was lost at shutdown: {info}"
    );
}

// The admin API: master key only; clear refusals; disabled without a master key.
#[tokio::test(flavor = "multi_thread")]
async fn admin_api_refusals() {
    let up = mock("adm", Behavior::default()).await;
    let gw = gateway(&openai_model("local", "m", &up.base_url(), ""), "")
        .start()
        .await;
    let base = gw.url("");
    let (key, _) = new_key(&base, json!({"key_alias": "hank", "duration": "1s"})).await;
    // A virtual key cannot administer.
    let resp = gw
        .client()
        .get(gw.url("/key/list"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(expect_openai_error(resp, 403).await["code"], "not_admin");
    let resp = gw
        .client()
        .get(gw.url("/key/list"))
        .bearer_auth("wrong")
        .send()
        .await
        .unwrap();
    expect_openai_error(resp, 401).await;
    // Typos and bad values are named.
    let (s, v) = admin(
        &base,
        Method::POST,
        "/key/generate",
        Some(json!({"max_budgte": 1})),
    )
    .await;
    assert_eq!(s, 400);
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("max_budgte"),
        "{v}"
    );
    let (s, v) = admin(
        &base,
        Method::POST,
        "/key/generate",
        Some(json!({"budget_duration": "1 fortnight"})),
    )
    .await;
    assert_eq!(
        (s, v["error"]["param"].as_str()),
        (400, Some("budget_duration"))
    );
    let (s, _) = admin(
        &base,
        Method::POST,
        "/key/generate",
        Some(json!({"key_alias": "hank"})),
    )
    .await;
    assert_eq!(s, 400, "duplicate alias");
    let (s, _) = admin(
        &base,
        Method::POST,
        "/key/generate",
        Some(json!({"team_id": "nope"})),
    )
    .await;
    assert_eq!(s, 400, "unknown team");
    let (s, _) = admin(&base, Method::GET, "/spend/report?group_by=planet", None).await;
    assert_eq!(s, 400);
    // Unknown and expired keys: 401 saying what to do.
    let err = expect_openai_error(
        chat(&base, "sk-llmgw-nosuchkey", "local", false, false).await,
        401,
    )
    .await;
    assert!(
        err["message"].as_str().unwrap().contains("administrator"),
        "{err:?}"
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let err = expect_openai_error(chat(&base, &key, "local", false, false).await, 401).await;
    assert_eq!(err["code"], "key_expired");
    assert!(
        err["message"]
            .as_str()
            .unwrap()
            .contains("\"hank\" expired"),
        "{err:?}"
    );

    // Without a master key there are no virtual keys and no admin API.
    let open = common::Gateway::start(&openai_model("local", "m", &up.base_url(), "")).await;
    let resp = open.get("/key/list").await;
    assert_eq!(
        expect_openai_error(resp, 403).await["code"],
        "admin_disabled"
    );
}

// Cache hits cost nothing and are recorded as hits.
#[tokio::test(flavor = "multi_thread")]
async fn cache_hits_cost_nothing_and_are_recorded() {
    let up = mock("cached", Behavior::default()).await;
    let gw = gateway(
        &openai_model("local", "m", &up.base_url(), PRICED),
        "[cache]\nenabled = true\n",
    )
    .start()
    .await;
    let base = gw.url("");
    let (key, _) = new_key(&base, json!({"key_alias": "ida", "max_budget": 1.0})).await;
    let first = chat(&base, &key, "local", false, false).await;
    assert_eq!(first.headers()["x-llmgw-cache"], "miss");
    let second = chat(&base, &key, "local", false, false).await;
    assert_eq!(second.headers()["x-llmgw-cache"], "hit");
    // A streamed request for the same question is a hit too, replayed without a usage chunk.
    let third = chat(&base, &key, "local", true, false).await;
    assert_eq!(third.headers()["x-llmgw-cache"], "hit");
    assert!(usage_events(&read_sse(third).await).is_empty());
    assert_eq!(up.state.request_count(), 1);
    let report = common::wait_for(Duration::from_secs(5), "spend rows", || async {
        let (_, v) = admin(&base, Method::GET, "/spend/report?group_by=key", None).await;
        (v["groups"][0]["requests"] == json!(3)).then_some(v)
    })
    .await;
    let g = &report["groups"][0];
    assert_eq!(
        (g["cache_hits"].as_i64(), g["cost_nanos"].as_i64()),
        (Some(2), Some(COST_NANOS))
    );
    let (_, logs) = admin(&base, Method::GET, "/spend/logs?api_key=ida", None).await;
    let hits: Vec<&Value> = logs
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["cache_hit"] == true)
        .collect();
    assert_eq!(hits.len(), 2, "{logs}");
    assert!(hits
        .iter()
        .all(|r| r["spend"] == 0.0 && r["model"] == "cache"));
}

// Streams from translating providers (Anthropic, Gemini) are charged from the usage the
// gateway asks for, and the client that did not ask gets no usage chunk.
#[tokio::test(flavor = "multi_thread")]
async fn translated_streams_are_charged() {
    use llmgw::mock_cloud::CloudMock;
    let ant = CloudMock::anthropic("ant", Behavior::default())
        .await
        .unwrap();
    let gem = CloudMock::gemini("gem", Behavior::default()).await.unwrap();
    let models = format!(
        "[[models]]\nname = \"claude\"\nprovider = \"anthropic\"\nmodel = \"claude-x\"\napi_base = \"{}\"\napi_key = \"env:K\"\n{PRICED}\n\n\
         [[models]]\nname = \"gemini\"\nprovider = \"gemini\"\nmodel = \"gemini-x\"\napi_base = \"{}\"\napi_key = \"env:K\"\n{PRICED}\n",
        ant.base_url(),
        gem.base_url()
    );
    let gw = gateway(&models, "")
        .env("K", "secret-provider-key")
        .start()
        .await;
    let base = gw.url("");
    let (key, _) = new_key(&base, json!({"key_alias": "jo"})).await;
    for model in ["claude", "gemini"] {
        let resp = chat(&base, &key, model, true, false).await;
        assert_eq!(resp.status(), 200);
        let ev = read_sse(resp).await;
        assert!(usage_events(&ev).is_empty(), "{model}: {ev:?}");
        assert!(!common::streamed_text(&ev).is_empty(), "{model}");
    }
    let report = common::wait_for(Duration::from_secs(5), "spend rows", || async {
        let (_, v) = admin(&base, Method::GET, "/spend/report?group_by=model", None).await;
        (v["groups"].as_array().map(Vec::len) == Some(2)).then_some(v)
    })
    .await;
    for g in report["groups"].as_array().unwrap() {
        assert!(g["cost_nanos"].as_i64().unwrap() > 0, "{report}");
        assert_eq!(g["prompt_tokens"], 9, "{report}");
    }
}

// Anthropic Messages and Responses clients with a virtual key (sent as `x-api-key`, as the
// Anthropic SDKs do): charged from the usage in their own formats, streamed or not,
// translated or passed through; their bodies get no OpenAI `stream_options`.
#[tokio::test(flavor = "multi_thread")]
async fn anthropic_and_responses_clients_are_charged() {
    use llmgw::mock_cloud::CloudMock;
    let up = mock("qwen", Behavior::default()).await;
    let ant = CloudMock::anthropic("ant", Behavior::default())
        .await
        .unwrap();
    let models = format!(
        "{}\n[[models]]\nname = \"claude\"\nprovider = \"anthropic\"\nmodel = \"claude-x\"\n\
         api_base = \"{}\"\napi_key = \"env:K\"\n{PRICED}\n",
        openai_model("qwen", "q", &up.base_url(), PRICED),
        ant.base_url()
    );
    let gw = gateway(&models, "")
        .env("K", "secret-provider-key")
        .start()
        .await;
    let base = gw.url("");
    let (key, _) = new_key(&base, json!({"key_alias": "cc"})).await;
    let post = |path: &'static str, body: Value| {
        let (base, key) = (base.clone(), key.clone());
        async move {
            let resp = common::client()
                .post(format!("{base}{path}"))
                .header("x-api-key", key)
                .header("content-type", "application/json")
                .body(body.to_string())
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 200, "{path}");
            assert!(resp.headers().contains_key("x-llmgw-request-id"));
            resp.bytes().await.unwrap()
        }
    };
    for (model, stream) in [("qwen", false), ("qwen", true), ("claude", true)] {
        let out = post(
            "/v1/messages",
            json!({"model": model, "max_tokens": 9, "stream": stream,
                "messages": [{"role": "user", "content": "Hi"}]}),
        )
        .await;
        let text = String::from_utf8_lossy(&out);
        let end = if stream { "message_stop" } else { "Hello from" };
        assert!(text.contains(end), "{model}: {text}");
    }
    for stream in [false, true] {
        post(
            "/v1/responses",
            json!({"model": "qwen", "input": "Hi", "stream": stream}),
        )
        .await;
    }
    let body: Value = serde_json::from_slice(&ant.state.last_body().unwrap()).unwrap();
    assert!(body.get("stream_options").is_none(), "{body}");
    let report = common::wait_for(Duration::from_secs(5), "spend rows", || async {
        let (_, v) = admin(&base, Method::GET, "/spend/report?group_by=model", None).await;
        let requests: i64 = v["groups"]
            .as_array()?
            .iter()
            .filter_map(|g| g["requests"].as_i64())
            .sum();
        (requests == 5).then_some(v)
    })
    .await;
    let groups = report["groups"].as_array().unwrap();
    let total: i64 = groups.iter().filter_map(|g| g["cost_nanos"].as_i64()).sum();
    let prompt: i64 = groups
        .iter()
        .filter_map(|g| g["prompt_tokens"].as_i64())
        .sum();
    // Every request: the mocks' 9 prompt and 5 completion tokens.
    assert_eq!(prompt, 5 * 9, "{report}");
    assert_eq!(total, 5 * COST_NANOS, "{report}");
}
