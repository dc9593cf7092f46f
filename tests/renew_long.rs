//! Acceptance 1 and 7 of the chain of jobs, on the real local SLURM cluster: a gateway
//! with a 3-minute time limit renewed 2 minutes ahead, under a continuous load of 20
//! requests per second (JSON and streaming, through `llmgw connect`'s local port) for at
//! least five minutes. At least two handovers happen, no request fails, no stream is cut,
//! and every job that handed over ended COMPLETED before its limit. It also measures what
//! a handover costs (printed as `handover-bench` lines; BENCHMARKS.md quotes them).
//!
//! The local cluster has no slurmdbd, so `sacct` cannot say how a job ended: the final
//! state comes from `scontrol show job` (finished jobs stay there for MinJobAge, an hour
//! here) and is cross-checked with the gateway's own exit record in `chain.json`.
//!
//! It takes about six minutes; `scripts/test.sh` starts it first and in the background,
//! and reports it at the end.

// Test and benchmark code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod common;

use common::cluster::{assert_completed_in_time, have_cluster, job_state, text, Gw};
use common::load::{failures, quantile, Load, Outcome};
use std::time::{Duration, Instant};

const RUN_AT_LEAST: Duration = Duration::from_secs(300);
const RUN_AT_MOST: Duration = Duration::from_secs(480);
const RATE: f64 = 20.0;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn five_minutes_under_load_across_handovers_without_a_failed_request() {
    if !have_cluster() {
        return;
    }
    let gw = Gw::new("long");
    let tag = format!("{}-m", gw.name);
    let cfg = gw.config(&format!(
        r#"
[server]
host = "0.0.0.0"
port = 0
shutdown_grace = "5s"

[[models]]
name = "local"
provider = "sglang"
model = "mock-qwen"
launch = {{ command = ["{{llmgw}}", "mock-upstream", "--port", "{{port}}", "--name", "{tag}", "--model", "mock-qwen", "--chunks", "8", "--chunk-delay-ms", "25", "--load-ms", "2000"], load_timeout = "60s" }}

[slurm]
time = "3"
renew = true
renew_before = "2m"
# Bounded even if this test were killed before it could stop the chain.
renew_max = 8
"#
    ));
    gw.start_json(&cfg);
    let key = gw.key();
    let connect = gw.connect(&[]);
    let t0 = Instant::now();
    let load = Load::start(&connect.url(), &key, "local", RATE, 8);

    let handovers = |gw: &Gw| gw.chain()["handovers"].as_array().map_or(0, Vec::len);
    while t0.elapsed() < RUN_AT_LEAST || handovers(&gw) < 2 {
        assert!(
            t0.elapsed() < RUN_AT_MOST,
            "only {} handovers after {:?}: {}",
            handovers(&gw),
            t0.elapsed(),
            gw.chain()
        );
        // Fail early rather than after minutes.
        let snap = load.snapshot();
        let bad = failures(&snap);
        assert!(
            bad.is_empty(),
            "{} of {} failed; first: {:?}",
            bad.len(),
            snap.len(),
            bad[0]
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let ran = t0.elapsed();
    let outcomes = load.finish().await;
    let bad = failures(&outcomes);
    let streams = outcomes.iter().filter(|o| o.stream).count();
    assert!(
        bad.is_empty(),
        "{} of {} requests failed (streams {streams}); first: {:?}",
        bad.len(),
        outcomes.len(),
        bad.first()
    );
    let achieved = outcomes.len() as f64 / ran.as_secs_f64();
    assert!(achieved > RATE * 0.8, "only {achieved:.1} req/s");

    let chain = gw.chain();
    let out = gw.run("stop", &[], Duration::from_secs(120));
    assert!(out.status.success(), "{}", text(&out));

    // Every job that handed over: COMPLETED before its limit, by SLURM and by its own record.
    let jobs = chain["jobs"].as_array().unwrap();
    let handed: Vec<&serde_json::Value> = jobs
        .iter()
        .filter(|j| {
            j["ended"]["how"]
                .as_str()
                .is_some_and(|h| h.starts_with("handed over to job"))
        })
        .collect();
    assert!(handed.len() >= 2, "{chain}");
    for j in &handed {
        let id = j["job_id"].as_str().unwrap();
        assert_eq!(job_state(id), None);
        assert_completed_in_time(id);
        assert!(j["ended"]["time_left_secs"].as_u64().unwrap() > 0, "{j}");
    }
    for j in jobs {
        let id = j["job_id"].as_str().unwrap();
        assert_eq!(job_state(id), None, "job {id} still queued after stop");
    }

    // What a handover costs.
    let hs = chain["handovers"].as_array().unwrap();
    let windows: Vec<(u64, u64)> = hs
        .iter()
        .map(|h| {
            let ready = h["ready_unix_ms"].as_u64().unwrap();
            (ready, ready + h["exit_ms"].as_u64().unwrap())
        })
        .collect();
    let inside = |o: &Outcome| {
        windows
            .iter()
            .any(|(a, b)| o.sent_ms >= *a && o.sent_ms <= *b)
    };
    let during: Vec<&Outcome> = outcomes.iter().filter(|o| inside(o)).collect();
    let outside: Vec<&Outcome> = outcomes.iter().filter(|o| !inside(o)).collect();
    println!(
        "handover-bench: {} requests in {:.0} s ({achieved:.1}/s, {streams} streams), 0 failed, {} handovers",
        outcomes.len(),
        ran.as_secs_f64(),
        hs.len()
    );
    for h in hs {
        let from = h["from_job"].as_str().unwrap_or("?");
        let left = jobs
            .iter()
            .find(|j| j["job_id"] == from)
            .map_or(serde_json::Value::Null, |j| {
                j["ended"]["time_left_secs"].clone()
            });
        println!(
            "handover-bench: job {from} -> {}: noticed {} ms, own requests drained {} ms, exited {} ms after the successor was ready ({left} s of its limit left); {} forwarded",
            h["to_job"].as_str().unwrap_or("?"),
            h["noticed_ms"],
            h["drained_ms"],
            h["exit_ms"],
            h["forwarded"]
        );
    }
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    for (what, set) in [("during handovers", &during), ("otherwise", &outside)] {
        for stream in [false, true] {
            let s: Vec<&Outcome> = set.iter().copied().filter(|o| o.stream == stream).collect();
            println!(
                "handover-bench: {what:<17} {:<6} n={:<5} p50 {:>6.1} ms  p99 {:>6.1} ms  max {:>6.1} ms",
                if stream { "stream" } else { "json" },
                s.len(),
                ms(quantile(&s, 0.5)),
                ms(quantile(&s, 0.99)),
                ms(quantile(&s, 1.0)),
            );
        }
    }
}
