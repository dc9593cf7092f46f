//! Issue 25: a real Prometheus (Debian's `prometheus` package), run with the shipped
//! `configs/prometheus/llmgw.yml` (checked by promtool), scrapes a real gateway every
//! second; a `histogram_quantile(0.99, …)` over the time to first token comes back as a
//! number; the Grafana dashboard in `configs/grafana/llmgw.json` is valid JSON, every
//! metric its queries name exists in the gateway's `/metrics`, and Prometheus accepts
//! every one of its queries.

// Test and benchmark code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod common;

use common::keys::{admin, gateway, new_key, MASTER, PRICED};
use common::{client, closed_port, mock, wait_for};
use llmgw::mock::Behavior;
use reqwest::Method;
use serde_json::{json, Value};
use std::collections::HashSet;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A Prometheus server killed when the test ends.
struct Prometheus {
    child: Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    /// Starts `bin` on a loopback port with the shipped example
    /// (`configs/prometheus/llmgw.yml`), pointed at `target` (`host:port`) every second and
    /// at a file holding the master key: the example itself is what is tested.
    fn start(bin: &str, target: &str) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("key");
        std::fs::write(&key, MASTER).unwrap();
        let example = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/prometheus/llmgw.yml"),
        )
        .unwrap();
        for needle in ["/home/alice/.llmgw/prometheus-key", "localhost:4000", "15s"] {
            assert!(example.contains(needle), "the example has no {needle}");
        }
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            example
                .replace(
                    "/home/alice/.llmgw/prometheus-key",
                    &key.display().to_string(),
                )
                .replace("localhost:4000", target)
                .replace("15s", "1s"),
        )
        .unwrap();
        // promtool comes with Prometheus: the config is valid as Prometheus reads it.
        if let Ok(out) = Command::new("promtool")
            .args(["check", "config"])
            .arg(&config)
            .output()
        {
            assert!(
                out.status.success(),
                "promtool: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let port = closed_port();
        let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
        let child = Command::new(bin)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {bin}: {e}"));
        Prometheus {
            child,
            url: format!("http://127.0.0.1:{port}"),
            _dir: dir,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// An instant query: the API's answer, or None when Prometheus is not answering yet.
    async fn query(&self, q: &str) -> Option<Value> {
        let resp = client()
            .get(format!("{}/api/v1/query?query={}", self.url, urlencode(q)))
            .send()
            .await
            .ok()?;
        serde_json::from_slice(&resp.bytes().await.ok()?).ok()
    }
}

/// `s` percent-encoded for a query string.
fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Where `prometheus` is (Debian's package puts it in /usr/bin).
fn prometheus_bin() -> Option<String> {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .map(|d| d.join("prometheus"))
        .find(|p| p.is_file())
        .map(|p| p.display().to_string())
}

/// Every metric name on `/metrics`: sample names and families' names.
fn names_in(metrics: &str) -> HashSet<String> {
    let mut names = HashSet::new();
    for line in metrics.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split_whitespace();
            let (Some(name), Some(kind)) = (parts.next(), parts.next()) else {
                continue;
            };
            names.insert(name.to_string());
            if kind == "histogram" {
                for s in ["_bucket", "_sum", "_count"] {
                    names.insert(format!("{name}{s}"));
                }
            }
        } else if !line.starts_with('#') && !line.is_empty() {
            let end = line.find(['{', ' ']).unwrap_or(line.len());
            names.insert(line[..end].to_string());
        }
    }
    names
}

/// Every `expr` of the dashboard (panels' targets) and its variables' queries.
fn dashboard_queries(d: &Value) -> Vec<String> {
    let mut out = Vec::new();
    for p in d["panels"].as_array().expect("panels") {
        assert!(p["title"].as_str().is_some_and(|t| !t.is_empty()), "{p}");
        assert!(p["gridPos"]["w"].as_u64().is_some(), "{p}");
        let targets = p["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{p}");
        for t in targets {
            out.push(t["expr"].as_str().expect("expr").to_string());
        }
    }
    for v in d["templating"]["list"].as_array().expect("templating") {
        if let Some(q) = v["definition"].as_str() {
            out.push(q.to_string());
        }
    }
    out
}

/// The `llmgw_…` names a PromQL expression reads.
fn metric_names(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let b = expr.as_bytes();
    let mut i = 0;
    while let Some(at) = expr[i..].find("llmgw_") {
        let start = i + at;
        let mut end = start;
        while end < b.len() && (b[end].is_ascii_alphanumeric() || b[end] == b'_') {
            end += 1;
        }
        out.push(expr[start..end].to_string());
        i = end;
    }
    out
}

/// A streamed and a JSON request with `key`, both read to the end (each one new: the
/// cache answers only the test's deliberate repeat).
async fn traffic(base: &str, key: &str, n: usize) {
    static SENT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    for _ in 0..n {
        let i = SENT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        for stream in [true, false] {
            let mut body = json!({
                "model": "local",
                "messages": [{"role": "user", "content": format!("hello {i} {stream}")}],
                "stream": stream,
            });
            if stream {
                body["stream_options"] = json!({"include_usage": true});
            }
            let resp = client()
                .post(format!("{base}/v1/chat/completions"))
                .bearer_auth(key)
                .header("content-type", "application/json")
                .body(body.to_string())
                .send()
                .await
                .expect("chat request");
            assert_eq!(resp.status(), 200);
            let _ = resp.bytes().await.expect("body");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_ttft_quantiles_and_the_dashboard_queries_exist() {
    let Some(bin) = prometheus_bin() else {
        common::skip(
            "no prometheus on PATH (apt-get install prometheus; scripts/test.sh installs it)",
        );
        return;
    };
    let up = mock(
        "prom",
        Behavior {
            chunks: 6,
            first_byte_delay: Duration::from_millis(15),
            chunk_delay: Duration::from_millis(2),
            ..Behavior::default()
        },
    )
    .await;
    // A local (sglang) group, so the fair queue's families exist too; keys, teams and
    // the cache are on, so their families have series.
    let models = format!(
        "[[models]]\nname = \"local\"\nprovider = \"sglang\"\nmodel = \"m\"\napi_base = \"{}\"\n{PRICED}\n",
        up.base_url()
    );
    let gw = gateway(&models, "[cache]\nenabled = true\n").start().await;
    let base = gw.url("");
    let (s, team) = admin(
        &base,
        Method::POST,
        "/team/new",
        Some(json!({"team_id": "physics", "team_alias": "Physics"})),
    )
    .await;
    assert_eq!(s, 200, "{team}");
    let (key, _) = new_key(&base, json!({"key_alias": "alice", "team_id": "physics"})).await;
    traffic(&base, &key, 3).await;
    // A cache hit: the same JSON request twice.
    let body = common::chat_body("local", false);
    for _ in 0..2 {
        let r = client()
            .post(format!("{base}/v1/chat/completions"))
            .bearer_auth(&key)
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let _ = r.bytes().await;
    }

    let prom = Prometheus::start(&bin, &gw.addr.to_string());
    // Requests keep coming while Prometheus scrapes, so rates over the last minute move.
    let load = {
        let (base, key) = (base.clone(), key.clone());
        tokio::spawn(async move {
            loop {
                traffic(&base, &key, 1).await;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };
    let q = "histogram_quantile(0.99, sum by (le) (rate(llmgw_time_to_first_token_seconds_bucket[1m])))";
    let p99 = wait_for(
        Duration::from_secs(60),
        "a TTFT p99 from Prometheus",
        || async {
            let v = prom.query(q).await?;
            let s = v["data"]["result"][0]["value"][1].as_str()?.to_string();
            s.parse::<f64>().ok().filter(|x| x.is_finite())
        },
    )
    .await;
    assert!(
        p99 > 0.0 && p99 < 60.0,
        "TTFT p99 {p99} (Prometheus log: {})",
        prom.log()
    );
    // The mock waits 15 ms before its first byte: the p99 is at least in that bucket.
    assert!(p99 >= 0.01, "TTFT p99 {p99}");
    let up_q = prom.query("up{job=\"llmgw\"}").await.unwrap();
    assert_eq!(up_q["data"]["result"][0]["value"][1], "1", "{up_q}");

    // The dashboard: valid JSON, every metric it names on /metrics, every query accepted.
    let text = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/grafana/llmgw.json"),
    )
    .unwrap();
    let dashboard: Value = serde_json::from_str(&text).expect("the dashboard is valid JSON");
    assert_eq!(dashboard["uid"], "llmgw");
    let metrics = client()
        .get(gw.url("/metrics"))
        .bearer_auth(MASTER)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let have = names_in(&metrics);
    for family in [
        "llmgw_request_duration_seconds_bucket",
        "llmgw_time_to_first_token_seconds_bucket",
        "llmgw_time_per_output_token_seconds_bucket",
        "llmgw_request_input_tokens_bucket",
        "llmgw_request_output_tokens_bucket",
        "llmgw_upstream_attempt_duration_seconds_bucket",
    ] {
        assert!(
            metrics.contains(&format!("{family}{{model_group=\"local\",deployment=")),
            "{family} has no series:\n{metrics}"
        );
    }
    let queries = dashboard_queries(&dashboard);
    assert!(queries.len() >= 18, "{queries:?}");
    let mut missing = Vec::new();
    for q in &queries {
        for name in metric_names(q) {
            if !have.contains(&name) {
                missing.push(name);
            }
        }
    }
    assert!(
        missing.is_empty(),
        "the dashboard reads metrics /metrics does not have: {missing:?}"
    );
    for q in queries.iter().filter(|q| !q.starts_with("label_values")) {
        let promql = q.replace("$__rate_interval", "1m").replace("$group", ".*");
        let v = prom.query(&promql).await.expect("Prometheus answers");
        assert_eq!(v["status"], "success", "{promql}: {v}");
    }
    load.abort();
}
