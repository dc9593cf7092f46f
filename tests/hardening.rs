//! Hostile clients, upstreams and configs (issue 9): every test drives the real binary
//! (or the real config parser) with what an attacker or an unlucky operator would send,
//! and checks the gateway answers clearly, stays responsive and leaks nothing.

// Test and benchmark code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod common;

use common::{closed_port, expect_openai_error, json_body, mock, openai_model, Gateway};
use llmgw::mock::{Behavior, Fault};
use llmgw::mock_cloud::CloudMock;
use serde_json::json;
use std::time::{Duration, Instant};

fn fault(status: u16, retry_after: Option<&str>, message: &str) -> Option<Fault> {
    Some(Fault {
        status,
        rate: 1.0,
        retry_after: retry_after.map(str::to_string),
        message: message.into(),
    })
}

fn chat_with(model: &str, extra: serde_json::Value) -> String {
    let mut v = json!({"model": model, "messages": [{"role": "user", "content": "hi"}]});
    for (k, x) in extra.as_object().unwrap() {
        v[k] = x.clone();
    }
    v.to_string()
}

/// Sends `body` and returns the status, panicking on a dropped connection (a panic in
/// the gateway shows up as exactly that).
async fn status_of(gw: &Gateway, body: String) -> u16 {
    let resp = gw
        .client()
        .post(gw.url("/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(body.clone())
        .send()
        .await
        .unwrap_or_else(|e| {
            panic!(
                "no response for {}: {e}; gateway log:\n{}",
                &body[..body.len().min(300)],
                gw.stderr_text()
            )
        });
    resp.status().as_u16()
}

/// CPU time (clock ticks) the threads of the gateway's low-priority pool (`llmgw-heavy-N`,
/// made on first use) have used so far: it grows exactly while the pool works.
fn pool_ticks(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .flatten()
        .filter(|t| {
            std::fs::read_to_string(t.path().join("comm"))
                .is_ok_and(|c| c.starts_with("llmgw-heavy"))
        })
        .filter_map(|t| {
            let stat = std::fs::read_to_string(t.path().join("stat")).ok()?;
            // Fields after the command name (in parentheses, may hold spaces).
            let f: Vec<u64> = stat[stat.rfind(')')? + 2..]
                .split(' ')
                .map(|x| x.parse().unwrap_or(0))
                .collect();
            Some(f[11] + f[12]) // utime + stime
        })
        .sum()
}

/// One `GET /health/liveness`, with the pool's CPU ticks when it was sent and answered.
struct Probe {
    took: Duration,
    pool_at_send: u64,
    pool_at_answer: u64,
}

/// What the liveness probe saw while some work ran.
struct Liveness {
    /// The slowest of 20 probes on the idle gateway just before the work.
    idle_worst: Duration,
    /// The probes during the work, one every 5 ms.
    during: Vec<Probe>,
    /// The pool's CPU ticks before and after the work.
    pool_before: u64,
    pool_after: u64,
}

impl Liveness {
    fn worst(&self) -> Duration {
        self.during.iter().map(|p| p.took).max().unwrap_or_default()
    }

    /// Probes sent after the pool had begun the work and answered before it had done
    /// all of it: the gateway answered while the heavy work was in progress.
    fn answered_while_the_pool_worked(&self) -> usize {
        self.during
            .iter()
            .filter(|p| p.pool_at_send > self.pool_before && p.pool_at_answer < self.pool_after)
            .count()
    }
}

/// Probes `GET /health/liveness` 20 times on the idle gateway, then every 5 ms while
/// `work` runs.
async fn liveness_during<F: std::future::Future>(gw: &Gateway, work: F) -> Liveness {
    let done = std::sync::atomic::AtomicBool::new(false);
    let client = gw.client();
    let url = gw.url("/health/liveness");
    let pid = gw.pid();
    let probe = || async {
        let pool_at_send = pool_ticks(pid);
        let t = Instant::now();
        let r = client.get(&url).send().await.expect("liveness");
        assert_eq!(r.status(), 200);
        r.bytes().await.expect("liveness body");
        let took = t.elapsed();
        Probe {
            took,
            pool_at_send,
            pool_at_answer: pool_ticks(pid),
        }
    };
    let mut idle_worst = Duration::ZERO;
    for _ in 0..20 {
        idle_worst = idle_worst.max(probe().await.took);
    }
    let pool_before = pool_ticks(pid);
    let probes = async {
        let mut during = Vec::new();
        while !done.load(std::sync::atomic::Ordering::SeqCst) {
            during.push(probe().await);
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        during
    };
    let work = async {
        work.await;
        done.store(true, std::sync::atomic::Ordering::SeqCst);
    };
    let ((), during) = tokio::time::timeout(Duration::from_secs(120), async {
        tokio::join!(work, probes)
    })
    .await
    .expect("work finished within 120 s");
    Liveness {
        idle_worst,
        during,
        pool_before,
        pool_after: pool_ticks(pid),
    }
}

// ---------------------------------------------------------------- 1. fallbacks

/// A request's `fallbacks` list is capped (clear 400), deduplicated, and unknown names
/// give one log line, not one per name.
#[tokio::test(flavor = "multi_thread")]
async fn request_fallbacks_are_capped_deduplicated_and_logged_once() {
    let bad = mock(
        "bad",
        Behavior {
            fault: fault(500, None, "boom"),
            ..Behavior::default()
        },
    )
    .await;
    let good = mock("good", Behavior::default()).await;
    let gw = Gateway::start(&format!(
        "[router]\nnum_retries = 0\n\n{}{}",
        openai_model("m", "x", &bad.base_url(), ""),
        openai_model("ok", "x", &good.base_url(), "")
    ))
    .await;

    let names: Vec<String> = (0..33).map(|i| format!("nope-{i}")).collect();
    let err = expect_openai_error(
        gw.post_json(
            "/v1/chat/completions",
            &chat_with("m", json!({ "fallbacks": names })),
        )
        .await,
        400,
    )
    .await;
    assert_eq!(err["param"], "fallbacks");
    let msg = err["message"].as_str().unwrap();
    assert!(msg.contains("33") && msg.contains("at most 32"), "{msg}");

    // 32 entries, many repeated and unknown, then a real one: served by the fallback.
    let mut names: Vec<String> = (0..31).map(|i| format!("ghost-{}", i % 5)).collect();
    names.push("ok".into());
    let resp = gw
        .post_json(
            "/v1/chat/completions",
            &chat_with("m", json!({ "fallbacks": names })),
        )
        .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-llmgw-fallback"], "ok");
    let line = gw
        .wait_for_log(Duration::from_secs(5), "about unknown fallbacks", |l| {
            l.contains("does not serve")
        })
        .await;
    for i in 0..5 {
        assert!(line.contains(&format!("ghost-{i}")), "{line}");
    }
    let text = gw.stderr_text();
    assert_eq!(
        text.matches("does not serve").count(),
        1,
        "one line for all unknown names:\n{text}"
    );
    assert_eq!(
        line.matches("ghost-0").count(),
        1,
        "names are deduplicated: {line}"
    );
}

/// Huge fallbacks lists with a tiny timeout neither block the workers nor fill the log.
#[tokio::test(flavor = "multi_thread")]
async fn huge_fallbacks_lists_do_not_freeze_the_gateway() {
    let up = mock("up", Behavior::default()).await;
    let gw = Gateway::start(&openai_model("m", "x", &up.base_url(), "")).await;
    let names: Vec<String> = (0..60_000).map(|i| format!("name-{i}")).collect();
    let body = chat_with("m", json!({ "fallbacks": names, "timeout": 1e-9 }));
    let started = Instant::now();
    let work = async {
        let sends = (0..4).map(|_| status_of(&gw, body.clone()));
        futures_util::future::join_all(sends).await
    };
    let live = liveness_during(&gw, async {
        let statuses = work.await;
        assert!(statuses.iter().all(|s| *s == 400), "{statuses:?}");
    })
    .await;
    // A hang guard (they take well under a second), not a speed target.
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    // Liveness as fast as on the idle gateway, within a generous factor measured on this
    // machine just before (a loaded machine raises both), and never below a second.
    let worst = live.worst();
    let limit = (20 * live.idle_worst).max(Duration::from_secs(1));
    eprintln!(
        "liveness: slowest {worst:?} of {} probes during the requests, {:?} when idle",
        live.during.len(),
        live.idle_worst
    );
    assert!(
        worst < limit,
        "liveness took {worst:?} during the requests, {:?} at most when idle",
        live.idle_worst
    );
    assert!(gw.stderr_text().lines().count() < 100);
}

// ---------------------------------------------------------------- 3. token counting

/// 8 MB prompts against a group with a context window are counted off the async
/// workers and within a bounded time: liveness stays fast while they are in flight.
#[tokio::test(flavor = "multi_thread")]
async fn huge_prompts_with_a_context_window_keep_the_gateway_responsive() {
    let up = mock("up", Behavior::default()).await;
    let gw = Gateway::start(&openai_model(
        "m",
        "x",
        &up.base_url(),
        "context_window = 2000000",
    ))
    .await;
    let text = "the quick brown fox jumps over the lazy dog; ".repeat(170_000);
    let body = json!({"model": "m", "messages": [{"role": "user", "content": text}]}).to_string();
    assert!(body.len() > 7_000_000 && body.len() < 8 * 1024 * 1024);
    let n = std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .max(2);
    let started = Instant::now();
    let live = liveness_during(&gw, async {
        let sends = (0..n).map(|_| status_of(&gw, body.clone()));
        let statuses = futures_util::future::join_all(sends).await;
        assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    })
    .await;
    // The prompts were parsed and counted on the pool, and liveness was answered, again
    // and again, while the pool was at it: by order of events, not by milliseconds.
    assert!(
        live.pool_after > live.pool_before,
        "the low-priority pool did no work for {n} 8 MB prompts"
    );
    let answered = live.answered_while_the_pool_worked();
    eprintln!(
        "liveness: {answered} of {} probes answered while the pool worked ({} → {} ticks); slowest {:?}",
        live.during.len(),
        live.pool_before,
        live.pool_after,
        live.worst()
    );
    assert!(
        answered >= 3,
        "liveness answered {answered} times while the pool worked on the prompts \
         (pool CPU ticks {} → {}, {} probes, slowest {:?})",
        live.pool_before,
        live.pool_after,
        live.during.len(),
        live.worst()
    );
    // A hang guard (it takes well under a second), not a speed target.
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );

    // Far beyond the window: refused at once, without tokenizing.
    let gw = Gateway::start(&openai_model(
        "m",
        "x",
        &up.base_url(),
        "context_window = 8192",
    ))
    .await;
    let t = Instant::now();
    let err = expect_openai_error(gw.post_json("/v1/chat/completions", &body).await, 400).await;
    assert_eq!(err["code"], "context_length_exceeded");
    // A hang guard (it takes about 0.1 s); that such a prompt is never tokenized is
    // router::tokens' far_too_large_bodies_are_not_tokenized.
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
}

/// Many multi-megabyte prompts at once (acceptance 4's hostile mix): they are parsed and
/// counted on the small low-priority pool, the excess is turned away at once with a 503
/// and Retry-After instead of queueing with its body in memory, and small requests keep
/// being answered quickly throughout.
#[tokio::test(flavor = "multi_thread")]
async fn a_flood_of_large_prompts_is_turned_away_not_queued() {
    let up = mock("up", Behavior::default()).await;
    let gw = Gateway::start(&openai_model(
        "m",
        "x",
        &up.base_url(),
        "context_window = 1500000",
    ))
    .await;
    let text = "the quick brown fox jumps over the lazy dog; ".repeat(170_000);
    let big = json!({"model": "m", "messages": [{"role": "user", "content": text}]}).to_string();
    let small = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]}).to_string();
    // More than the pool can hold (half the cores, 8 waiting per thread), twice over.
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let flood = 2 * (cores / 2).max(1) * 9 + 8;
    let client = gw.client();
    let pid = gw.pid();
    let pool_before = pool_ticks(pid);
    let (statuses, small) = tokio::join!(
        futures_util::future::join_all((0..flood).map(|_| {
            let req = client
                .post(gw.url("/v1/chat/completions"))
                .header("content-type", "application/json")
                .body(big.clone());
            async move {
                let r = req.send().await.expect("a response for every large prompt");
                let retry_after = r.headers().get("retry-after").cloned();
                let status = r.status().as_u16();
                let bytes = r.bytes().await.expect("a whole body");
                let body: serde_json::Value =
                    serde_json::from_slice(&bytes).expect("OpenAI error JSON");
                (status, retry_after, body)
            }
        })),
        async {
            let mut probes = Vec::new();
            for _ in 0..20 {
                let pool_at_send = pool_ticks(pid);
                let t = Instant::now();
                assert_eq!(status_of(&gw, small.clone()).await, 200);
                probes.push(Probe {
                    took: t.elapsed(),
                    pool_at_send,
                    pool_at_answer: pool_ticks(pid),
                });
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            probes
        }
    );
    let small = Liveness {
        idle_worst: Duration::ZERO,
        during: small,
        pool_before,
        pool_after: pool_ticks(pid),
    };
    let busy = statuses.iter().filter(|(s, ..)| *s == 503).count();
    for (status, retry_after, body) in &statuses {
        match status {
            // ~2M tokens against a 1.5M window: refused after counting.
            400 => assert_eq!(body["error"]["code"], "context_length_exceeded", "{body}"),
            503 => {
                assert_eq!(body["error"]["code"], "server_busy", "{body}");
                assert_eq!(retry_after.as_ref().map(|v| v.as_bytes()), Some(&b"1"[..]));
            }
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert!(
        busy > 0,
        "no large prompt was turned away: {flood} all queued"
    );
    assert!(busy < flood, "every large prompt was turned away");
    // Small requests are answered while the pool is busy with the large ones: by order
    // of events, not by milliseconds.
    let answered = small.answered_while_the_pool_worked();
    eprintln!(
        "{answered} of 20 small requests answered while the pool worked ({} → {} ticks); slowest {:?}",
        small.pool_before,
        small.pool_after,
        small.worst()
    );
    assert!(
        answered >= 3,
        "only {answered} small requests were answered while the pool worked on the flood \
         (pool CPU ticks {} → {}, slowest {:?})",
        small.pool_before,
        small.pool_after,
        small.worst()
    );
}

// ---------------------------------------------------------------- 4. upstream body size

/// VmHWM (peak resident memory) of a process, in bytes.
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM");
    kb * 1024
}

/// A 256 MB error body is not read whole: the gateway's memory stays small and the
/// client gets a clear error. A too-large success is a clear 502.
#[tokio::test(flavor = "multi_thread")]
async fn upstream_bodies_are_read_only_up_to_a_limit() {
    let up = mock(
        "up",
        Behavior {
            fault: fault(500, None, "huge error follows"),
            pad_bytes: 256 << 20,
            ..Behavior::default()
        },
    )
    .await;
    // The default limits: the error body is cut at 64 KiB.
    let gw = Gateway::start(&format!(
        "[router]\nnum_retries = 0\n\n{}",
        openai_model("m", "x", &up.base_url(), "")
    ))
    .await;
    let err = expect_openai_error(
        gw.post_json("/v1/chat/completions", &common::chat_body("m", false))
            .await,
        500,
    )
    .await;
    assert!(
        err["message"]
            .as_str()
            .unwrap()
            .contains("huge error follows"),
        "{err:?}"
    );
    let peak = peak_rss(gw.pid());
    assert!(peak < 128 << 20, "peak RSS {} MB", peak >> 20);

    // A configured limit for successful answers.
    let gw = Gateway::start(&format!(
        "[router]\nnum_retries = 0\nmax_response_bytes = 1048576\n\n{}",
        openai_model("m", "x", &up.base_url(), "")
    ))
    .await;

    up.state.set_behavior(|b| {
        b.fault = None;
        b.pad_bytes = 4 << 20;
    });
    let err = expect_openai_error(
        gw.post_json("/v1/chat/completions", &common::chat_body("m", false))
            .await,
        502,
    )
    .await;
    assert_eq!(err["code"], "upstream_response_too_large");
    assert!(
        err["message"]
            .as_str()
            .unwrap()
            .contains("max_response_bytes"),
        "{err:?}"
    );
    // Below the limit, the padded answer passes.
    up.state.set_behavior(|b| b.pad_bytes = 512 << 10);
    let resp = gw
        .post_json("/v1/chat/completions", &common::chat_body("m", false))
        .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.bytes().await.unwrap().len(), 512 << 10);
}

// ---------------------------------------------------------------- 5. numbers

/// Every number a client sends as `timeout` or `cache.ttl` gets an answer: 200 when it
/// is a sane duration, a 400 naming the field otherwise; never a dropped connection.
#[tokio::test(flavor = "multi_thread")]
async fn extreme_request_numbers_get_a_clear_answer() {
    let up = mock("up", Behavior::default()).await;
    let gw = Gateway::start(&format!(
        "[cache]\nenabled = true\n\n{}",
        openai_model("m", "x", &up.base_url(), "")
    ))
    .await;
    // (JSON literal, acceptable as timeout, acceptable as ttl)
    let cases: &[(&str, bool, bool)] = &[
        ("0", false, true),
        ("-0", false, true),
        ("-0.0", false, true),
        ("1e-300", true, true),
        ("5e-324", true, true),
        ("1e-9", true, true),
        ("30", true, true),
        ("31536000", true, true),
        ("31536001", false, false),
        ("1e300", false, false),
        ("-1e300", false, false),
        ("1.7976931348623157e308", false, false),
        ("18446744073709551615", false, false),
        ("18446744073709551616", false, false),
        ("9223372036854775808", false, false),
        ("-9223372036854775808", false, false),
        ("-1", false, false),
        ("\"10s\"", false, true),
        ("\"99999999999999999999d\"", false, false),
        ("\"1e300s\"", false, false),
        ("\"NaN\"", false, false),
        ("\"\"", false, false),
        ("\"5 parsecs\"", false, false),
        ("true", false, false),
        ("[]", false, false),
        ("{}", false, false),
    ];
    for (i, (lit, timeout_ok, ttl_ok)) in cases.iter().enumerate() {
        let body = format!(
            r#"{{"model":"m","messages":[{{"role":"user","content":"t {i}"}}],"timeout":{lit}}}"#
        );
        let s = status_of(&gw, body).await;
        // A timeout that rounds to nothing times out (504) rather than being refused.
        let ok = if *timeout_ok { [200, 504] } else { [400, 400] };
        assert!(ok.contains(&s), "timeout {lit}: {s}");
        let body = format!(
            r#"{{"model":"m","messages":[{{"role":"user","content":"c {i}"}}],"cache":{{"ttl":{lit}}}}}"#
        );
        let s = status_of(&gw, body).await;
        assert_eq!(s, if *ttl_ok { 200 } else { 400 }, "ttl {lit}");
    }
    let err = expect_openai_error(
        gw.post_json(
            "/v1/chat/completions",
            &chat_with("m", json!({"timeout": 1e300})),
        )
        .await,
        400,
    )
    .await;
    assert_eq!(err["param"], "timeout");
    assert!(
        err["message"].as_str().unwrap().contains("31536000"),
        "{err:?}"
    );
}

/// Durations in a config file that overflow give `file:line:col` errors, not panics.
#[tokio::test(flavor = "multi_thread")]
async fn overflowing_config_durations_are_config_errors() {
    for (key, value) in [
        ("request_timeout", "\"99999999999999999999d\""),
        ("request_timeout", "9223372036854775807"),
        ("request_timeout", "1e300"),
        ("shutdown_grace", "\"1e300s\""),
        ("request_timeout", "nan"),
        ("request_timeout", "-inf"),
    ] {
        let out = Gateway::builder(&format!("[server]\n{key} = {value}\n"))
            .run_to_exit(Duration::from_secs(10))
            .await;
        assert_eq!(
            out.status.code(),
            Some(1),
            "{key} = {value}: {}",
            out.stderr
        );
        let path = out.config_path.as_ref().unwrap().display().to_string();
        assert!(
            out.stderr.contains(&format!("{path}:2:")),
            "{key} = {value}: {}",
            out.stderr
        );
        assert!(!out.stderr.contains("panicked"), "{}", out.stderr);
    }
    // The command line's durations too.
    let out = common::llmgw_command()
        .args(["start", "--dry-run", "--timeout", "99999999999999999999d"])
        .output()
        .expect("run llmgw start");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("at most 365d"), "{stderr}");
}

/// Upstream Retry-After values of every shape (huge, garbage, far-future dates) never
/// crash the request: the fallback still answers.
#[tokio::test(flavor = "multi_thread")]
async fn extreme_retry_after_values_are_clamped() {
    let limited = mock(
        "limited",
        Behavior {
            fault: fault(429, None, "slow down"),
            ..Behavior::default()
        },
    )
    .await;
    let backup = mock("backup", Behavior::default()).await;
    let gw = Gateway::start(&format!(
        "[router]\nnum_retries = 0\n[router.fallbacks]\nm = [\"b\"]\n\n{}{}",
        openai_model("m", "x", &limited.base_url(), ""),
        openai_model("b", "x", &backup.base_url(), "")
    ))
    .await;
    for ra in [
        "1e300",
        "99999999999999999999",
        "18446744073709551616",
        "-1",
        "NaN",
        "inf",
        "-0",
        "0",
        "1e-300",
        "Fri, 31 Dec 9999 23:59:59 GMT",
        "Thu, 01 Jan 1970 00:00:00 GMT",
        "garbage",
        "",
    ] {
        limited
            .state
            .set_behavior(|b| b.fault = fault(429, Some(ra), "slow down"));
        let resp = gw
            .post_json("/v1/chat/completions", &common::chat_body("m", false))
            .await;
        assert_eq!(resp.status(), 200, "Retry-After {ra:?}");
        assert_eq!(resp.headers()["x-llmgw-fallback"], "b");
    }
    assert!(limited.state.request_count() >= 13);
}

/// Gemini's `RetryInfo.retryDelay` is clamped too: the other deployment answers.
#[tokio::test(flavor = "multi_thread")]
async fn extreme_gemini_retry_delays_are_clamped() {
    let gem = CloudMock::gemini(
        "gem",
        Behavior {
            fault: fault(429, None, "Resource has been exhausted"),
            ..Behavior::default()
        },
    )
    .await
    .unwrap();
    let backup = mock("backup", Behavior::default()).await;
    let gw = Gateway::builder(&format!(
        "[router]\nnum_retries = 0\n[router.fallbacks]\ngemini = [\"b\"]\n\n\
         [[models]]\nname = \"gemini\"\nprovider = \"gemini\"\nmodel = \"gemini-test\"\n\
         api_base = \"{}\"\napi_key = \"env:TEST_GEMINI_KEY\"\n\n{}",
        gem.base_url(),
        openai_model("b", "x", &backup.base_url(), "")
    ))
    .env("TEST_GEMINI_KEY", "gemini-key-1234")
    .start()
    .await;
    for delay in [
        "1e300s",
        "99999999999999999999s",
        "-5s",
        "NaNs",
        "infs",
        "s",
        "30",
    ] {
        gem.state.set_extra(|e| e.retry_delay = Some(delay.into()));
        let resp = gw
            .post_json("/v1/chat/completions", &common::chat_body("gemini", false))
            .await;
        assert_eq!(resp.status(), 200, "retryDelay {delay:?}");
        assert_eq!(resp.headers()["x-llmgw-fallback"], "b");
    }
}

// ---------------------------------------------------------------- 6. cooldown cap

async fn cooling_left(gw: &Gateway, id: &str) -> Option<u64> {
    let h = json_body(gw.get("/health").await).await;
    h["deployments"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["id"] == id)
        .and_then(|d| d["cooling_seconds_left"].as_u64())
}

/// A Retry-After in the year 9999 cools a deployment for `max_cooldown` at most.
#[tokio::test(flavor = "multi_thread")]
async fn retry_after_cooldowns_are_capped() {
    for (router, cap) in [("", 300), ("max_cooldown = \"2s\"\n", 2)] {
        let far = mock(
            "far",
            Behavior {
                fault: fault(429, Some("Fri, 31 Dec 9999 23:59:59 GMT"), "later"),
                ..Behavior::default()
            },
        )
        .await;
        let ok = mock("ok", Behavior::default()).await;
        let gw = Gateway::start(&format!(
            "[router]\n{router}\n{}{}",
            openai_model("m", "x", &far.base_url(), "id = \"far\""),
            openai_model("m", "x", &ok.base_url(), "id = \"ok\"")
        ))
        .await;
        for _ in 0..50 {
            if far.state.request_count() > 0 {
                break;
            }
            let r = gw
                .post_json("/v1/chat/completions", &common::chat_body("m", false))
                .await;
            assert_eq!(r.status(), 200);
        }
        assert!(far.state.request_count() > 0);
        let left = cooling_left(&gw, "far").await.expect("far is cooling");
        assert!(left <= cap, "cooling {left} s, cap {cap} s");
        if cap == 2 {
            tokio::time::sleep(Duration::from_millis(2200)).await;
            assert_eq!(cooling_left(&gw, "far").await, None);
        }
    }
}

// ---------------------------------------------------------------- 7. log forging

/// Control characters in a model name or fallback name cannot forge log lines.
#[tokio::test(flavor = "multi_thread")]
async fn log_lines_cannot_be_forged() {
    let up = mock(
        "up",
        Behavior {
            fault: fault(500, None, "x"),
            ..Behavior::default()
        },
    )
    .await;
    let gw = Gateway::start(&format!(
        "[router]\nnum_retries = 0\n\n{}",
        openai_model("m", "x", &up.base_url(), "")
    ))
    .await;
    let forged = "2030-01-01T00:00:00.000000Z  INFO request path=/v1/forged status=200";
    let name = format!("evil\n{forged}\r\u{1b}[2K");
    let resp = gw
        .post_json("/v1/chat/completions", &chat_with(&name, json!({})))
        .await;
    assert_eq!(resp.status(), 404);
    let resp = gw
        .post_json(
            "/v1/chat/completions",
            &chat_with("m", json!({"fallbacks": [format!("ghost\n{forged}")]})),
        )
        .await;
    assert_eq!(resp.status(), 500);
    gw.wait_for_log(Duration::from_secs(5), "the unknown fallback", |l| {
        l.contains("does not serve")
    })
    .await;
    gw.wait_for_log(Duration::from_secs(5), "the 404 request", |l| {
        l.contains("status=404")
    })
    .await;
    let text = gw.stderr_text();
    assert!(
        !text.lines().any(|l| l.starts_with("2030-01-01")),
        "forged line in the log:\n{text}"
    );
    assert!(!text.contains('\u{1b}') && !text.contains('\r'), "{text:?}");
    assert!(text.contains("evil\\n2030"), "{text}");
}

// ---------------------------------------------------------------- 10. userinfo

/// Credentials in an `api_base` never reach a client: not in a 502, not in `/health`.
#[tokio::test(flavor = "multi_thread")]
async fn api_base_credentials_are_redacted() {
    let base = format!("http://alice:hunter2-secret@127.0.0.1:{}/v1", closed_port());
    let gw = Gateway::start(&openai_model("m", "x", &base, "")).await;
    let resp = gw
        .post_json("/v1/chat/completions", &common::chat_body("m", false))
        .await;
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    assert_eq!(status, 502, "{text}");
    assert!(!text.contains("hunter2"), "{text}");
    assert!(text.contains("***@127.0.0.1"), "{text}");
    let health = gw.get("/health").await.text().await.unwrap();
    assert!(
        !health.contains("hunter2") && !health.contains("alice"),
        "{health}"
    );
    assert!(!gw.stderr_text().contains("hunter2"));
}

// ---------------------------------------------------------------- 14. echoed secrets

/// An upstream that quotes the request headers in its error cannot leak the provider
/// key (or the master key) to the client or the log.
#[tokio::test(flavor = "multi_thread")]
async fn echoed_provider_keys_are_redacted() {
    const KEY: &str = "sk-provider-very-secret-42";
    let up = mock(
        "echo",
        Behavior {
            fault: fault(400, None, "bad request; you sent:"),
            echo_headers: true,
            ..Behavior::default()
        },
    )
    .await;
    let gw = Gateway::builder(&openai_model(
        "m",
        "x",
        &up.base_url(),
        "api_key = \"env:TEST_PROVIDER_KEY\"",
    ))
    .env("TEST_PROVIDER_KEY", KEY)
    .start()
    .await;
    let resp = gw
        .post_json("/v1/chat/completions", &common::chat_body("m", false))
        .await;
    let text = resp.text().await.unwrap();
    assert!(text.contains("you sent"), "{text}");
    assert!(!text.contains(KEY), "{text}");
    assert!(text.contains("[redacted]"), "{text}");
    // Streams are refused before their first byte the same way.
    let resp = gw
        .post_json("/v1/chat/completions", &common::chat_body("m", true))
        .await;
    assert!(!resp.text().await.unwrap().contains(KEY));
    assert!(!gw.stderr_text().contains(KEY));
}

// ---------------------------------------------------------------- 16. /health levels

/// `/health` says unhealthy when nothing can answer, degraded when some groups (or
/// deployments) cannot; readiness is unchanged.
#[tokio::test(flavor = "multi_thread")]
async fn health_reports_degraded_and_unhealthy() {
    let dead = format!("http://127.0.0.1:{}/v1", closed_port());
    let gw = Gateway::start(&openai_model("m", "x", &dead, "")).await;
    let h = json_body(gw.get("/health").await).await;
    assert_eq!(h["status"], "healthy", "{h}");
    let r = gw
        .post_json("/v1/chat/completions", &common::chat_body("m", false))
        .await;
    assert_eq!(r.status(), 502);
    let h = json_body(gw.get("/health").await).await;
    assert_eq!(h["status"], "unhealthy", "{h}");
    assert_eq!(h["groups"]["m"]["status"], "unhealthy", "{h}");
    assert_eq!(gw.get("/health/readiness").await.status(), 200);

    let up = mock("up", Behavior::default()).await;
    let gw = Gateway::start(&format!(
        "{}{}{}",
        openai_model("m", "x", &dead, "id = \"dead\""),
        openai_model("m", "x", &up.base_url(), "id = \"alive\""),
        openai_model("other", "x", &up.base_url(), "")
    ))
    .await;
    for _ in 0..30 {
        let r = gw
            .post_json("/v1/chat/completions", &common::chat_body("m", false))
            .await;
        assert_eq!(r.status(), 200);
        let h = json_body(gw.get("/health").await).await;
        if h["status"] != "healthy" {
            break;
        }
    }
    let h = json_body(gw.get("/health").await).await;
    assert_eq!(h["status"], "degraded", "{h}");
    assert_eq!(h["groups"]["m"]["status"], "degraded", "{h}");
    assert_eq!(h["groups"]["m"]["healthy"], 1, "{h}");
    assert_eq!(h["groups"]["other"]["status"], "healthy", "{h}");
}

// ---------------------------------------------------------------- config numbers

/// Every number in a config file, with every extreme value, goes through the real
/// config parser: either it loads (durations within a year) or the error names the file.
#[test]
fn every_config_number_parses_or_names_the_file() {
    const VALUES: &[&str] = &[
        "0",
        "-0",
        "0.0",
        "-0.0",
        "1",
        "-1",
        "1.5",
        "1e300",
        "-1e300",
        "5e-324",
        "nan",
        "-nan",
        "inf",
        "-inf",
        "9223372036854775807",
        "-9223372036854775808",
        "18446744073709551615",
        "18446744073709551616",
        "\"\"",
        "\"0\"",
        "\"30s\"",
        "\"365d\"",
        "\"366d\"",
        "\"-1s\"",
        "\"1e300s\"",
        "\"99999999999999999999d\"",
        "\"18446744073709551616ms\"",
        "\"NaN\"",
        "\"inf\"",
        "\"5 parsecs\"",
        "\"10µs\"",
        "true",
        "[]",
        "{}",
    ];
    let tables = [
        (
            "server",
            &[
                "port",
                "max_body_bytes",
                "request_timeout",
                "shutdown_grace",
            ][..],
        ),
        (
            "router",
            &[
                "num_retries",
                "timeout",
                "cooldown",
                "allowed_fails",
                "fail_window",
                "latency_buffer",
                "max_fallback_depth",
                "max_cooldown",
                "max_response_bytes",
                "max_error_bytes",
            ][..],
        ),
        (
            "cache",
            &["ttl", "redis_timeout", "max_entries", "max_bytes"][..],
        ),
    ];
    let model_keys = [
        "weight",
        "rpm",
        "tpm",
        "max_parallel",
        "timeout",
        "cooldown",
        "context_window",
        "max_tokens",
        "input_cost_per_mtok",
        "output_cost_per_mtok",
    ];
    let max = llmgw::duration::MAX;
    let check = |text: String| match llmgw::config::Config::load_str(&text, "x.toml") {
        Ok(c) => {
            let c = &c.config;
            for d in [
                c.server.request_timeout,
                c.server.shutdown_grace,
                c.router.timeout,
                c.router.cooldown,
                c.router.fail_window,
                c.router.max_cooldown,
                c.cache.ttl,
                c.cache.redis_timeout,
            ]
            .into_iter()
            .chain(
                c.models
                    .iter()
                    .flat_map(|m| [m.timeout, m.cooldown])
                    .flatten(),
            ) {
                assert!(d.0 <= max, "{text}: {d}");
            }
        }
        Err(e) => {
            let e = e.to_string();
            assert!(e.starts_with("x.toml:"), "{text}: {e}");
            assert!(!e.contains('\n'), "one line: {e}");
        }
    };
    let mut n = 0;
    for v in VALUES {
        for (table, keys) in tables {
            for k in keys {
                check(format!("[{table}]\n{k} = {v}\n"));
                n += 1;
            }
        }
        for k in model_keys {
            check(format!(
                "[[models]]\nname = \"m\"\nprovider = \"openai\"\napi_base = \"http://127.0.0.1:1/v1\"\n{k} = {v}\n"
            ));
            n += 1;
        }
        check(format!(
            "[[models]]\nname = \"m\"\nprovider = \"sglang\"\nlaunch = {{ command = [\"x\"], load_timeout = {v} }}\n"
        ));
    }
    assert!(n > 700);
}
