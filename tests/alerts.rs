//! Issue 25: alerts without storms, delivered to a webhook receiver in the test (axum on
//! 127.0.0.1). A soft budget crossed gives one alert per key and period; Redis down under
//! requests gives one alert and one `resolved`; a launched backend killed three times in
//! a minute gives one crash-loop alert and one `resolved`; `llmgw alerts test` delivers one
//! of each event, and the Slack kind posts `{"text": …}`.

// Test and benchmark code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod common;

use common::keys::{admin, chat, gateway, new_key, MASTER, PRICED};
use common::{client, llmgw_command, mock, openai_model, run_bounded, wait_for, Gateway};
use llmgw::mock::Behavior;
use reqwest::Method;
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What the receiver got: (path, body).
#[derive(Clone, Default)]
struct Received(Arc<Mutex<Vec<(String, Value)>>>);

impl Received {
    fn all(&self) -> Vec<(String, Value)> {
        self.0.lock().unwrap().clone()
    }

    /// JSON alerts of `event` (firing or resolved as asked).
    fn json(&self, event: &str, status: &str) -> Vec<Value> {
        self.all()
            .into_iter()
            .filter(|(p, v)| p == "/json" && v["event"] == event && v["status"] == status)
            .map(|(_, v)| v)
            .collect()
    }
}

/// A webhook receiver on a loopback port: `/json` and `/slack` take any JSON body.
async fn receiver() -> (String, Received) {
    let got = Received::default();
    let g = got.clone();
    let app = axum::Router::new().fallback(move |uri: axum::http::Uri, body: axum::body::Bytes| {
        let g = g.clone();
        async move {
            let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            g.0.lock().unwrap().push((uri.path().to_string(), v));
            "ok"
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (format!("http://{addr}"), got)
}

/// An `[[alerts]]` entry whose URL comes from `env:LLMGW_TEST_ALERT_URL`.
fn alerts_entry(events: &str) -> String {
    format!(
        "[[alerts]]\nurl = \"env:LLMGW_TEST_ALERT_URL\"\nkind = \"json\"\nevents = [{events}]\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soft_budget_alerts_once_per_key_and_period() {
    let (hook, got) = receiver().await;
    let up = mock("soft", Behavior::default()).await;
    let gw = gateway(
        &openai_model("local", "m", &up.base_url(), PRICED),
        &alerts_entry("\"soft_budget\""),
    )
    .env("LLMGW_TEST_ALERT_URL", format!("{hook}/json"))
    .start()
    .await;
    let base = gw.url("");
    // $0.0024 a request: the third crosses $0.005.
    // Periods of 15 s from the key's creation: the first crossings fall in the first.
    let (a, info) = new_key(
        &base,
        json!({"key_alias": "alice", "soft_budget": 0.005, "budget_duration": "15s"}),
    )
    .await;
    let created = std::time::Instant::now();
    assert_eq!(info["soft_budget"], 0.005, "{info}");
    let (b, _) = new_key(&base, json!({"key_alias": "bob"})).await;
    let (s, upd) = admin(
        &base,
        Method::POST,
        "/key/update",
        Some(json!({"key": "bob", "soft_budget": 0.001})),
    )
    .await;
    assert_eq!(s, 200, "{upd}");
    let (s, team) = admin(
        &base,
        Method::POST,
        "/team/new",
        Some(json!({"team_id": "t", "soft_budget": 1.5})),
    )
    .await;
    assert_eq!(s, 200, "{team}");
    let (_, info) = admin(&base, Method::GET, "/key/info?key=bob", None).await;
    assert_eq!(info["info"]["soft_budget"], 0.001, "{info}");

    for _ in 0..6 {
        assert_eq!(chat(&base, &a, "local", false, false).await.status(), 200);
        assert_eq!(chat(&base, &b, "local", false, false).await.status(), 200);
    }
    wait_for(
        Duration::from_secs(10),
        "two soft-budget alerts",
        || async { (got.json("soft_budget", "firing").len() >= 2).then_some(()) },
    )
    .await;
    // Nothing more comes for these keys in this period.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let alerts = got.json("soft_budget", "firing");
    assert_eq!(alerts.len(), 2, "{alerts:?}");
    let for_key = |name: &str| {
        alerts
            .iter()
            .filter(|v| {
                v["subject"]
                    .as_str()
                    .unwrap()
                    .starts_with(&format!("key {name} "))
            })
            .count()
    };
    assert_eq!((for_key("alice"), for_key("bob")), (1, 1), "{alerts:?}");
    assert!(
        alerts
            .iter()
            .all(|v| v["message"].as_str().unwrap().contains("soft budget")),
        "{alerts:?}"
    );

    // The next period: alice crosses again, one more alert (bob has no period: his
    // budget counts in total, and he was told).
    assert!(
        created.elapsed() < Duration::from_secs(14),
        "too slow for one period"
    );
    tokio::time::sleep(Duration::from_secs(16).saturating_sub(created.elapsed())).await;
    for _ in 0..3 {
        assert_eq!(chat(&base, &a, "local", false, false).await.status(), 200);
        assert_eq!(chat(&base, &b, "local", false, false).await.status(), 200);
    }
    wait_for(Duration::from_secs(10), "alice's second period", || async {
        (got.json("soft_budget", "firing").len() >= 3).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let alerts = got.json("soft_budget", "firing");
    assert_eq!(alerts.len(), 3, "{alerts:?}");
    assert!(!got
        .all()
        .iter()
        .any(|(_, v)| v.to_string().contains(MASTER)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_under_requests_gives_one_alert_and_one_resolved() {
    let (hook, got) = receiver().await;
    let up = mock("redis-alerts", Behavior::default()).await;
    let mut redis = common::redis::RedisServer::start();
    let cfg = format!(
        "{}\n[cache]\nenabled = true\nbackend = \"redis\"\nredis_url = \"{}\"\nredis_timeout = \"100ms\"\n\n{}",
        openai_model("local", "m", &up.base_url(), ""),
        redis.url(),
        alerts_entry("\"store_unreachable\"")
    );
    let gw = Gateway::builder(&cfg)
        .env("LLMGW_TEST_ALERT_URL", format!("{hook}/json"))
        .start()
        .await;
    let send = |i: usize| {
        let gw_url = gw.url("/v1/chat/completions");
        async move {
            let body = json!({"model": "local", "messages": [{"role": "user", "content": format!("q{i}")}]});
            let r = client()
                .post(gw_url)
                .header("content-type", "application/json")
                .body(body.to_string())
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200, "Redis down must never fail a request");
        }
    };
    for i in 0..5 {
        send(i).await;
    }
    redis.kill();
    // 30 s of requests with Redis down: many requests, one alert.
    let until = std::time::Instant::now() + Duration::from_secs(30);
    let mut i = 100;
    while std::time::Instant::now() < until {
        send(i).await;
        i += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(i > 250, "only {i} requests");
    let firing = got.json("store_unreachable", "firing");
    assert_eq!(firing.len(), 1, "{firing:?}");
    assert_eq!(firing[0]["subject"], "redis");
    assert!(got.json("store_unreachable", "resolved").is_empty());
    redis.restart();
    let until = std::time::Instant::now() + Duration::from_secs(20);
    while got.json("store_unreachable", "resolved").is_empty() {
        assert!(
            std::time::Instant::now() < until,
            "no resolved: {:?}",
            got.all()
        );
        send(i).await;
        i += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for _ in 0..20 {
        send(i).await;
        i += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        got.json("store_unreachable", "firing").len(),
        1,
        "{:?}",
        got.all()
    );
    assert_eq!(
        got.json("store_unreachable", "resolved").len(),
        1,
        "{:?}",
        got.all()
    );
}

/// The launched backend's state and pid, from `backends.json`.
fn backend_state(gw: &Gateway) -> (String, Option<u32>) {
    let text = std::fs::read_to_string(gw.state_dir.join("backends.json")).unwrap_or_default();
    let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
    let b = &v["backends"][0];
    (
        b["state"].as_str().unwrap_or("").to_string(),
        b["pid"].as_u64().map(|p| p as u32),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_killed_three_times_in_a_minute_alerts_once_and_resolves() {
    let (hook, got) = receiver().await;
    let cfg = format!(
        "[server]\nmaster_key = \"env:LLMGW_TEST_MASTER\"\n\n[[models]]\nname = \"local\"\n\
         provider = \"sglang\"\nmodel = \"m\"\n\
         launch = {{ command = [\"{{llmgw}}\", \"mock-upstream\", \"--port\", \"{{port}}\", \"--name\", \"crashy\"] }}\n\n{}",
        alerts_entry("\"backend_crash_loop\"")
    );
    let gw = Gateway::builder(&cfg)
        .env("LLMGW_TEST_MASTER", MASTER)
        .env("LLMGW_TEST_ALERT_URL", format!("{hook}/json"))
        .start()
        .await;
    let started = std::time::Instant::now();
    for n in 0..3 {
        let pid = wait_for(Duration::from_secs(30), "the backend ready", || async {
            match backend_state(&gw) {
                (s, Some(pid)) if s == "ready" => Some(pid),
                _ => None,
            }
        })
        .await;
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
        // Gone, and seen gone by the supervisor, before looking for the next one.
        wait_for(
            Duration::from_secs(10),
            "the supervisor to see the exit",
            || async { (backend_state(&gw).1 != Some(pid)).then_some(()) },
        )
        .await;
        if n < 2 {
            assert!(
                got.json("backend_crash_loop", "firing").is_empty(),
                "{:?}",
                got.all()
            );
        }
    }
    assert!(started.elapsed() < Duration::from_secs(60));
    wait_for(Duration::from_secs(10), "the crash-loop alert", || async {
        (!got.json("backend_crash_loop", "firing").is_empty()).then_some(())
    })
    .await;
    wait_for(
        Duration::from_secs(30),
        "the crash loop resolved",
        || async { (!got.json("backend_crash_loop", "resolved").is_empty()).then_some(()) },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let firing = got.json("backend_crash_loop", "firing");
    assert_eq!(firing.len(), 1, "{firing:?}");
    assert!(
        firing[0]["subject"].as_str().unwrap().contains("local"),
        "{firing:?}"
    );
    assert_eq!(
        got.json("backend_crash_loop", "resolved").len(),
        1,
        "{:?}",
        got.all()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_test_command_delivers_one_of_each_event_and_slack_gets_text() {
    let (hook, got) = receiver().await;
    let dir = tempfile::tempdir().unwrap();
    let url_file = dir.path().join("slack-url");
    std::fs::write(&url_file, format!("{hook}/slack\n")).unwrap();
    let config = dir.path().join("llmgw.toml");
    std::fs::write(
        &config,
        format!(
            "[[models]]\nname = \"m\"\nprovider = \"openai\"\nmodel = \"m\"\napi_base = \"http://127.0.0.1:9/v1\"\n\n\
             [[alerts]]\nurl = \"file:{}\"\nkind = \"slack\"\n\n\
             [[alerts]]\nurl = \"env:LLMGW_TEST_ALERT_URL\"\nkind = \"json\"\nrepeat_after = \"10m\"\n",
            url_file.display()
        ),
    )
    .unwrap();
    let mut cmd = llmgw_command();
    cmd.args(["alerts", "test", "-c"])
        .arg(&config)
        .env("LLMGW_TEST_ALERT_URL", format!("{hook}/json"));
    let out = tokio::task::spawn_blocking(move || run_bounded(cmd, Duration::from_secs(60)))
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!stdout.contains(&hook), "the URL was printed: {stdout}");
    let all = got.all();
    let events = [
        "deployment_down",
        "group_unavailable",
        "backend_crash_loop",
        "renewal_failed",
        "soft_budget",
        "store_unreachable",
        "spend_rows_dropped",
    ];
    let slack: Vec<&Value> = all
        .iter()
        .filter(|(p, _)| p == "/slack")
        .map(|(_, v)| v)
        .collect();
    assert_eq!(slack.len(), events.len(), "{all:?}");
    for v in &slack {
        let o = v.as_object().unwrap();
        assert_eq!(o.len(), 1, "{v}");
        assert!(o["text"].as_str().unwrap().contains("test"), "{v}");
    }
    for e in events {
        assert_eq!(got.json(e, "firing").len(), 1, "{e}: {all:?}");
    }

    // A bad entry is refused with its line.
    std::fs::write(
        &config,
        "[[alerts]]\nurl = \"ftp://x\"\nkind = \"json\"\n\n[[alerts]]\nurl = \"http://x\"\nevents = [\"nope\"]\n",
    )
    .unwrap();
    let mut cmd = llmgw_command();
    cmd.args(["alerts", "test", "-c"]).arg(&config);
    let out = tokio::task::spawn_blocking(move || run_bounded(cmd, Duration::from_secs(30)))
        .await
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains(":7:") || err.contains(":2:"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_deployment_under_requests_alerts_once_per_deployment_and_group() {
    let (hook, got) = receiver().await;
    let dead = format!("http://127.0.0.1:{}/v1", common::closed_port());
    let cfg = format!(
        "[router]\nnum_retries = 0\n\n{}\n{}",
        openai_model("local", "m", &dead, ""),
        "[[alerts]]\nurl = \"env:LLMGW_TEST_ALERT_URL\"\nkind = \"slack\"\nevents = [\"deployment_down\", \"group_unavailable\"]\n"
    );
    let gw = Gateway::builder(&cfg)
        .env("LLMGW_TEST_ALERT_URL", format!("{hook}/slack"))
        .start()
        .await;
    // Requests keep failing for a while: still one message per alert.
    for i in 0..20 {
        let body =
            json!({"model": "local", "messages": [{"role": "user", "content": format!("q{i}")}]});
        let r = client()
            .post(gw.url("/v1/chat/completions"))
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        assert!(r.status().is_server_error(), "{}", r.status());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    wait_for(Duration::from_secs(10), "two alerts", || async {
        (got.all().len() >= 2).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let texts: Vec<String> = got
        .all()
        .iter()
        .map(|(_, v)| v["text"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(texts.len(), 2, "{texts:?}");
    assert_eq!(
        texts
            .iter()
            .filter(|t| t.contains("deployment down — local-1"))
            .count(),
        1,
        "{texts:?}"
    );
    assert_eq!(
        texts
            .iter()
            .filter(|t| t.contains("model group unavailable — local"))
            .count(),
        1,
        "{texts:?}"
    );
}
