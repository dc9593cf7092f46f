//! The state directory stays bounded (issue 29): raw spend rows older than
//! `[store] retention` are pruned by a background task while `/spend/report` (from the
//! hourly rollup beyond the retention) and a key's spend stay complete; `/health` shows
//! the store's size, the state filesystem's room and dropped rows; `llmgw doctor` warns
//! on a nearly full state filesystem (a small tmpfs).
//!
//! The retention here is seconds (allowed for exactly this; the pruning round then runs
//! every second), and every wait is for an event the gateway reports (rows pruned), with
//! a generous bound; nothing is judged by how long it took.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::keys::{admin, chat, cli_ok, gateway, new_key, write_master_key, COST_NANOS, PRICED};
use common::postgres::PgServer;
use common::{mock, openai_model};
use llmgw::mock::Behavior;
use reqwest::Method;
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// The `store` object of `/health`.
async fn store_health(base: &str) -> Value {
    let (s, v) = admin(base, Method::GET, "/health", None).await;
    assert_eq!(s, 200, "{v}");
    v["store"].clone()
}

/// Waits until the gateway says it pruned at least `n` rows.
async fn until_pruned(base: &str, n: u64) -> Value {
    common::wait_for(Duration::from_secs(60), "spend rows pruned", || async {
        let st = store_health(base).await;
        (st["pruned_rows"].as_u64().unwrap_or(0) >= n).then_some(st)
    })
    .await
}

/// Request ids of the raw rows still in the store.
async fn raw_ids(base: &str) -> BTreeSet<String> {
    let (s, v) = admin(base, Method::GET, "/spend/logs?limit=10000&start=1d", None).await;
    assert_eq!(s, 200, "{v}");
    v.as_array()
        .expect("logs are an array")
        .iter()
        .map(|r| r["request_id"].as_str().unwrap_or("").to_string())
        .collect()
}

/// Sends `n` requests with `key`; returns their request ids.
async fn send(base: &str, key: &str, n: usize) -> BTreeSet<String> {
    let mut ids = BTreeSet::new();
    for i in 0..n {
        let r = chat(base, key, "local", i % 2 == 1, true).await;
        assert_eq!(r.status(), 200);
        let id = r.headers()["x-llmgw-request-id"]
            .to_str()
            .unwrap()
            .to_string();
        let _ = r.bytes().await;
        ids.insert(id);
    }
    ids
}

fn unix_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// The report since `since` (unix seconds), once it counts `requests`.
async fn report_when(base: &str, since: u64, requests: i64) -> Value {
    common::wait_for(Duration::from_secs(10), "the report", || async {
        let (s, v) = admin(
            base,
            Method::GET,
            &format!("/spend/report?group_by=key&start={since}"),
            None,
        )
        .await;
        assert_eq!(s, 200, "{v}");
        let n: i64 = v["groups"].as_array().map_or(0, |g| {
            g.iter().map(|g| g["requests"].as_i64().unwrap_or(0)).sum()
        });
        (n == requests).then_some(v)
    })
    .await
}

// 1. SQLite: old rows go, the report for the whole time and the key's spend (also after
//    a restart, summed from the rollup) stay complete; /health and `llmgw spend` say so.
#[tokio::test(flavor = "multi_thread")]
async fn old_rows_are_pruned_and_reports_and_spend_stay_complete() {
    let since = unix_secs() - 1;
    let up = mock("retention", Behavior::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let store = format!(
        "[store]\npath = \"{}\"\nretention = \"10s\"\n",
        dir.path().join("llmgw.db").display()
    );
    let models = openai_model("local", "m", &up.base_url(), PRICED);
    let mut gw = gateway(&models, &store).start().await;
    write_master_key(&gw.state_dir);
    let base = gw.url("");
    let (key, _) = new_key(&base, json!({"key_alias": "ret"})).await;

    // /health: the store's size and the filesystem's room, nothing dropped or pruned.
    // Both are measured by the watch's first round, one after the other: wait for both
    // (a /health between the two shows the size and `"filesystem": null`).
    let st = common::wait_for(
        Duration::from_secs(30),
        "store and filesystem in /health",
        || async {
            let st = store_health(&base).await;
            (st["bytes"].is_u64() && st["filesystem"]["available_bytes"].is_u64()).then_some(st)
        },
    )
    .await;
    assert_eq!(st["kind"], "sqlite");
    assert!(st["bytes"].as_u64().unwrap() > 0, "{st}");
    assert_eq!(st["shrinks"], true, "{st}");
    assert_eq!(st["retention_seconds"], 10.0);
    assert_eq!(st["rows_dropped"], 0);
    assert_eq!(st["pruned_rows"], 0, "{st}");
    let fs = &st["filesystem"];
    assert!(
        fs["available_bytes"].as_u64().unwrap() <= fs["total_bytes"].as_u64().unwrap(),
        "{st}"
    );

    // The first batch: its rows are written, then pruned once older than 10 s.
    let first = send(&base, &key, 20).await;
    common::wait_for(Duration::from_secs(10), "rows written", || async {
        (raw_ids(&base).await == first).then_some(())
    })
    .await;
    let st = until_pruned(&base, 20).await;
    assert!(st["pruned_before"].is_string(), "{st}");
    let left = raw_ids(&base).await;
    assert!(
        left.is_disjoint(&first),
        "pruned rows still there: {left:?}"
    );

    // The second batch: the report since before the first still counts all 28, at
    // hourly resolution for the pruned end, and says so.
    let second = send(&base, &key, 8).await;
    let total = (first.len() + second.len()) as i64;
    let v = report_when(&base, since, total).await;
    assert_eq!(v["total_cost_nanos"], json!(total * COST_NANOS), "{v}");
    assert_eq!(v["resolution"], "hour", "{v}");
    assert!(v["note"].as_str().unwrap().contains("hourly rollup"), "{v}");
    let out = cli_ok(&gw.state_dir, &["spend", "--since", &since.to_string()]);
    assert!(out.contains("note: raw spend rows before"), "{out}");
    assert!(
        out.contains(&format!("${:.6}", (total * COST_NANOS) as f64 / 1e9)),
        "{out}"
    );

    // A restart sums the key's spend from the rollup for the pruned time: nothing lost.
    gw.sigterm();
    assert!(gw.wait_exit(Duration::from_secs(15)).await.success());
    drop(gw);
    let gw = gateway(&models, &store).start().await;
    let base = gw.url("");
    let (_, info) = admin(&base, Method::GET, "/key/info?key=ret", None).await;
    let spent = info["info"]["spend"].as_f64().unwrap();
    assert!(
        (spent - (total * COST_NANOS) as f64 / 1e9).abs() < 1e-9,
        "spend after the restart {spent}, sent {total} requests: {info}"
    );
}

// 2. PostgreSQL shared by two replicas: both prune (one at a time), the raw table
//    empties of old rows, the report over both replicas' requests stays complete.
#[tokio::test(flavor = "multi_thread")]
async fn replicas_prune_a_shared_postgres_and_the_report_stays_complete() {
    let since = unix_secs() - 1;
    let pg = PgServer::start();
    let up = mock("retention-pg", Behavior::default()).await;
    let store = format!("[store]\nurl = \"{}\"\nretention = \"10s\"\n", pg.url());
    let models = openai_model("local", "m", &up.base_url(), PRICED);
    let a = gateway(&models, &store).start().await;
    let b = gateway(&models, &store).start().await;
    let (base_a, base_b) = (a.url(""), b.url(""));
    let (key, _) = new_key(&base_a, json!({"key_alias": "shared"})).await;
    // Replica b sees the key within its version poll.
    common::wait_for(Duration::from_secs(10), "the key on replica b", || async {
        let (s, _) = admin(&base_b, Method::GET, "/key/info?key=shared", None).await;
        (s == 200).then_some(())
    })
    .await;
    let mut sent = send(&base_a, &key, 10).await.len() + send(&base_b, &key, 10).await.len();
    // Both replicas together pruned them all (whichever held the lock; each row is
    // deleted once, so the counts add up to the rows sent).
    common::wait_for(Duration::from_secs(60), "rows pruned", || async {
        let pa = store_health(&base_a).await["pruned_rows"]
            .as_u64()
            .unwrap_or(0);
        let pb = store_health(&base_b).await["pruned_rows"]
            .as_u64()
            .unwrap_or(0);
        (pa + pb >= sent as u64).then_some(())
    })
    .await;
    assert_eq!(pg.query("SELECT count(*) FROM llmgw_spend").trim(), "0");
    sent += send(&base_b, &key, 3).await.len();
    for base in [&base_a, &base_b] {
        let v = report_when(base, since, sent as i64).await;
        assert_eq!(
            v["total_cost_nanos"],
            json!(sent as i64 * COST_NANOS),
            "{v}"
        );
        assert_eq!(v["resolution"], "hour", "{v}");
    }
    let st = store_health(&base_a).await;
    assert_eq!(st["kind"], "postgres");
    assert!(st["bytes"].as_u64().unwrap_or(0) > 0, "{st}");
}

/// Mounts a tmpfs of `size` at a new directory; `None` (after saying why) when mounting
/// is not permitted here.
struct Tmpfs(tempfile::TempDir);

impl Tmpfs {
    fn mount(size: &str) -> Option<Tmpfs> {
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output();
        let why = match out {
            Ok(o) if o.status.success() => return Some(Tmpfs(dir)),
            Ok(o) => String::from_utf8_lossy(&o.stderr).trim().to_string(),
            Err(e) => format!("mount: {e}"),
        };
        common::skip(&format!(
            "cannot mount a tmpfs (needs root or CAP_SYS_ADMIN): {why}"
        ));
        None
    }

    fn path(&self) -> &Path {
        self.0.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.0.path()).status();
    }
}

/// `llmgw doctor --json --state-dir DIR`'s `state-space` check.
fn space_check(state_dir: &Path) -> Value {
    let mut c = common::llmgw_command();
    c.args(["doctor", "--json", "--state-dir"]).arg(state_dir);
    let out = common::run_bounded(c, Duration::from_secs(120));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "doctor --json printed no JSON ({e}): {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    v["checks"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["id"] == "state-space"))
        .cloned()
        .unwrap_or_else(|| panic!("no state-space check: {v}"))
}

// 3. doctor: a 3 MB state filesystem is nearly full (⚠ with the fix); a roomy one is fine.
#[test]
fn doctor_warns_on_a_nearly_full_state_filesystem() {
    let Some(small) = Tmpfs::mount("3m") else {
        return;
    };
    let Some(roomy) = Tmpfs::mount("64g") else {
        return;
    };
    let c = space_check(&small.path().join("state"));
    assert_eq!(c["status"], "warn", "{c}");
    assert!(c["detail"].as_str().unwrap().contains("nearly full"), "{c}");
    let fix = c["fix"].as_str().unwrap();
    assert!(
        fix.contains("[store] retention") && fix.contains("--state-dir"),
        "{c}"
    );
    let c = space_check(&roomy.path().join("state"));
    assert_eq!(c["status"], "ok", "{c}");
}
