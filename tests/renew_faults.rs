//! A chain of jobs that survives its own faults (issue 30), on the real local SLURM
//! cluster, each scenario under steady load through `llmgw connect` (half the requests
//! streamed), counting failed requests and cut streams:
//!
//! 1. the successor's gateway is SIGKILLed right after it published itself: the old job
//!    takes the endpoint back, renews again, and at most the requests in flight on the
//!    dead successor fail;
//! 2. `restart -c` with a backend that never gets healthy: the successor is cancelled at
//!    its handover deadline, the old job goes on with its own config and renews, nothing
//!    fails, and `restart` says what happened;
//! 3. a cancelled successor with the shortest `renew_before` the config accepts: another
//!    is submitted in time, nothing fails (and a shorter one is refused at load);
//! 4. the old gateway SIGKILLed 0.3 s after its successor published: no new connection
//!    through `connect` fails, and the successor records the dead job's end;
//! 5. a job that never gets ready still drains before its limit and ends COMPLETED.
//!
//! After each: every ended generation has an end record in `chain.json`, no job or
//! process is left, no job ended TIMEOUT, and `status` said what the chain was doing.
//! The scenarios wait on SLURM time limits (minutes), not on the CPU: they run side by
//! side, each with its own gateway name, state directory and mock tag. `scripts/test.sh`
//! runs them all at once in the background (their names start with `chain_fault_`, which
//! the foreground run skips), next to the five-minute test.

// Test and benchmark code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod common;

use common::chain::{chain_config, chain_job_ids, generation, status_text, unix_ms, until};
use common::cluster::{
    assert_completed_in_time, have_cluster, job_state, pids_with, scontrol_field, text, Gw,
};
use common::load::{failed_outside, failures, Load, Outcome};
use serde_json::Value;
use std::process::Command;
use std::time::Duration;

/// The scenarios' jobs go to partition `multi` (two nodes, 16 job slots), so that running
/// all at once beside the rest of the suite (on `debug`, 8 slots) none of their successors
/// waits for a slot it would get at once on a real cluster.
const ELSEWHERE: &str = "partition = \"multi\"";

/// Failed requests and cut streams, for the report.
fn figures(what: &str, outcomes: &[Outcome]) -> String {
    let bad = failures(outcomes);
    let cut = bad
        .iter()
        .filter(|o| o.stream && o.error.starts_with("truncated"))
        .count();
    let line = format!(
        "faults-bench {what}: {} requests ({} streamed), {} failed, {cut} streams cut",
        outcomes.len(),
        outcomes.iter().filter(|o| o.stream).count(),
        bad.len()
    );
    eprintln!("{line}");
    line
}

/// `llmgw stop`, asserting it succeeded and that it names the real shutdown grace (5 s in
/// these configs; it said "up to 20 s" before). Its stdout.
fn stop_checked(gw: &Gw) -> String {
    let out = gw.run("stop", &[], Duration::from_secs(120));
    assert!(out.status.success(), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    if err.contains("stopping job") {
        assert!(err.contains("get up to 5 s to finish"), "{err}");
    }
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// After a scenario: every job of the chain has an end record and none is queued, none
/// ended TIMEOUT, no successor status file is left, and no process of the gateway runs.
async fn assert_all_gone(gw: &Gw, tag: &str) {
    let chain = gw.chain();
    for j in chain["jobs"].as_array().unwrap() {
        let id = j["job_id"].as_str().unwrap();
        assert!(!j["ended"].is_null(), "job {id} has no end record: {chain}");
        assert_eq!(job_state(id), None, "job {id} still queued");
        assert_ne!(
            scontrol_field(id, "JobState").as_deref(),
            Some("TIMEOUT"),
            "job {id}: {chain}"
        );
    }
    assert!(!gw.dir.join("successor-backends.json").exists());
    until(
        Duration::from_secs(30),
        "no process of the gateway left",
        || (pids_with(&gw.name).is_empty() && pids_with(tag).is_empty()).then_some(()),
    )
    .await;
}

/// `endpoint.json` once it names generation `g` (polled every 20 ms: the scenarios act
/// right after a publish).
async fn published(gw: &Gw, g: u64, limit: Duration) -> Value {
    let deadline = std::time::Instant::now() + limit;
    loop {
        if let Some(ep) = gw.endpoint() {
            if ep["generation"].as_u64().is_some_and(|n| n >= g) {
                return ep;
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "generation {g} never published: {:?}",
            gw.endpoint()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The chain record and job `id`'s log without its request lines, for a failure message.
fn dump(gw: &Gw, id: &str) -> String {
    let log = std::fs::read_to_string(gw.dir.join(format!("slurm-{id}.log"))).unwrap_or_default();
    let log: Vec<&str> = log
        .lines()
        .filter(|l| !l.contains(" INFO request "))
        .collect();
    format!(
        "chain: {}\nlog of job {id}:\n{}",
        gw.chain(),
        log.join("\n")
    )
}

fn sigkill(pid: u64) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
}

/// The chain record's job `id`.
fn chain_job(gw: &Gw, id: &str) -> Value {
    gw.chain()["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["job_id"] == id)
        .cloned()
        .unwrap_or(Value::Null)
}

// Acceptance 1 (and 5).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chain_fault_successor_killed_after_publishing_is_taken_back_and_replaced() {
    if !have_cluster() {
        return;
    }
    let gw = Gw::new("lost");
    let tag = format!("{}-m", gw.name);
    let cfg = gw.config(&chain_config(&tag, 3, "2m", "", ELSEWHERE));
    gw.start_json(&cfg);
    let key = gw.key();
    let first = gw.job_id().unwrap();
    let connect = gw.connect(&[]);
    // Every request on its own connection: "in flight on the dead successor" is exact.
    let load = Load::start_fresh(&connect.url(), &key, "local", 10.0, 4);
    load.wait_for_outcomes(10).await;

    let ep = published(&gw, 2, Duration::from_secs(150)).await;
    let second = ep["job_id"].as_str().unwrap().to_string();
    let kill_ms = unix_ms();
    sigkill(ep["pid"].as_u64().unwrap());

    // The old job takes the endpoint back…
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while gw
        .endpoint()
        .is_none_or(|ep| ep["job_id"] != first.as_str())
    {
        assert!(
            std::time::Instant::now() < deadline,
            "job {first} did not take the endpoint back: {:?}\n{}",
            gw.endpoint(),
            dump(&gw, &first)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let back_ms = unix_ms();
    eprintln!(
        "faults-bench taken back {} ms after the kill",
        back_ms - kill_ms
    );
    // endpoint.json is written inside the chain's update, chain.json as it ends.
    let how = until(Duration::from_secs(10), "the lost job's end record", || {
        chain_job(&gw, &second)["ended"]["how"]
            .as_str()
            .map(str::to_string)
    })
    .await;
    let lost = chain_job(&gw, &second);
    assert!(
        how.contains("after it took over")
            && how.contains(&format!("job {first} took the endpoint back")),
        "{lost}"
    );
    let h = gw.chain()["handovers"][0].clone();
    assert!(h["taken_back"].is_string(), "{h}");
    // …status says so…
    let st = status_text(&gw);
    assert!(st.contains(&format!("job {first}")), "{st}");
    assert!(
        st.contains(&format!("successor job {second} was lost")) && st.contains("did not hold"),
        "{st}"
    );
    // …and renews again: a third generation takes over and serves.
    let (third, _) = generation(&gw, 3, Duration::from_secs(120)).await;
    let third_ms = unix_ms();
    until(
        Duration::from_secs(60),
        "requests served after the third generation took over",
        || {
            let snap = load.snapshot();
            let after = snap
                .iter()
                .filter(|o| o.sent_ms > third_ms && o.error.is_empty())
                .count();
            (after >= 20).then_some(())
        },
    )
    .await;
    until(Duration::from_secs(90), "the first job to end", || {
        job_state(&first).is_none().then_some(())
    })
    .await;
    let outcomes = load.finish().await;
    figures("successor SIGKILLed after publishing", &outcomes);
    let bad = failed_outside(&outcomes, kill_ms);
    assert!(
        bad.is_empty(),
        "{} failed that were not in flight at the kill: {:?}",
        bad.len(),
        bad.first()
    );
    // Only what was in flight on the successor can have failed: a handful at 10/s.
    assert!(failures(&outcomes).len() <= 8, "{}", figures("", &outcomes));
    assert_completed_in_time(&first);
    assert_eq!(
        chain_job(&gw, &first)["ended"]["how"],
        format!("handed over to job {third}")
    );
    drop(connect);
    stop_checked(&gw);
    assert_all_gone(&gw, &tag).await;
}

// Acceptance 2 (and 5).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chain_fault_restart_with_a_never_ready_backend_is_cancelled_and_the_old_job_renews() {
    if !have_cluster() {
        return;
    }
    let gw = Gw::new("never");
    let tag = format!("{}-m", gw.name);
    let cfg = gw.config(&chain_config(&tag, 3, "2m", "", ELSEWHERE));
    gw.start_json(&cfg);
    let key = gw.key();
    let old = gw.job_id().unwrap();
    let connect = gw.connect(&[]);
    let load = Load::start(&connect.url(), &key, "local", 10.0, 4);
    load.wait_for_outcomes(10).await;

    // A config whose backend never answers its health check.
    let never = gw._tmp.path().join("never.toml");
    std::fs::write(
        &never,
        chain_config(&tag, 3, "2m", r#", "--load-ms", "600000""#, ELSEWHERE),
    )
    .unwrap();
    let out = gw.run(
        "restart",
        &["-c", &never.display().to_string(), "--timeout", "150s"],
        Duration::from_secs(180),
    );
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!out.status.success(), "{}", text(&out));
    let new = chain_job_ids(&gw)[1].clone();
    assert!(
        err.contains(&format!(
            "the new job {new} did not take over: cancelled by job {old}: not ready within handover_timeout"
        )) && err.contains(&format!("job {old} keeps serving with its own config")),
        "{err}"
    );
    // The cancelled job drained on SIGTERM: COMPLETED, not TIMEOUT or CANCELLED.
    until(Duration::from_secs(60), "the cancelled job to end", || {
        job_state(&new).is_none().then_some(())
    })
    .await;
    assert_completed_in_time(&new);
    let st = status_text(&gw);
    assert!(st.contains(&format!("job {old}")), "{st}");
    assert!(
        st.contains("renewal trouble") && st.contains("not ready within handover_timeout"),
        "{st}"
    );

    // The old job goes on with its own config and renews.
    let (third, _) = generation(&gw, 3, Duration::from_secs(120)).await;
    let third_ms = unix_ms();
    let third_job = chain_job(&gw, &third);
    assert_eq!(third_job["why"], "renew", "{third_job}");
    assert_eq!(
        third_job["config_copy"],
        chain_job(&gw, &old)["config_copy"]
    );
    until(
        Duration::from_secs(60),
        "requests after the renewal",
        || {
            let n = load
                .snapshot()
                .iter()
                .filter(|o| o.sent_ms > third_ms)
                .count();
            (n >= 20).then_some(())
        },
    )
    .await;
    let outcomes = load.finish().await;
    figures("restart -c with a never-ready backend", &outcomes);
    let bad = failures(&outcomes);
    assert!(bad.is_empty(), "{} failed: {:?}", bad.len(), bad.first());
    until(Duration::from_secs(90), "the old job to end", || {
        job_state(&old).is_none().then_some(())
    })
    .await;
    assert_completed_in_time(&old);
    drop(connect);
    stop_checked(&gw);
    assert_all_gone(&gw, &tag).await;
}

// Acceptance 3 (and 5).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chain_fault_cancelled_successor_is_replaced_in_time_with_the_shortest_renew_before() {
    if !have_cluster() {
        return;
    }
    let gw = Gw::new("short");
    let tag = format!("{}-m", gw.name);
    // shutdown_grace 5 s: the job drains 35 s before its limit, each try may take 40 s.
    let too_short = gw.config(&chain_config(&tag, 3, "114s", "", ELSEWHERE));
    let out = gw.run(
        "start",
        &["-c", &too_short.display().to_string(), "--dry-run"],
        Duration::from_secs(30),
    );
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        err.contains("renew_before (114s) is too short") && err.contains("at least 115s"),
        "{err}"
    );
    let cfg = gw.config(&chain_config(&tag, 3, "115s", "", ELSEWHERE));
    gw.start_json(&cfg);
    let key = gw.key();
    let first = gw.job_id().unwrap();
    let connect = gw.connect(&[]);
    let load = Load::start(&connect.url(), &key, "local", 10.0, 4);
    load.wait_for_outcomes(10).await;

    let lost = until(Duration::from_secs(120), "the first successor", || {
        chain_job_ids(&gw).get(1).cloned()
    })
    .await;
    assert!(Command::new("scancel")
        .arg(&lost)
        .status()
        .unwrap()
        .success());
    // status: the loss and the retry, while it is under way.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let st = loop {
        let st = gw.status_json();
        let shown = st["chain"]["renewal"]["what"]
            .as_str()
            .is_some_and(|w| w.contains(&format!("successor job {lost}")));
        if shown {
            break st;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "status never showed the loss of job {lost}: {st}\nchain: {}\nlog: {}",
            gw.chain(),
            std::fs::read_to_string(gw.dir.join(format!("slurm-{first}.log"))).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert_eq!(st["chain"]["renewal"]["failures"], 1, "{st}");
    let (second, _) = generation(&gw, 2, Duration::from_secs(90)).await;
    assert_ne!(second, lost);
    assert_ne!(second, first);
    let took_ms = unix_ms();
    until(
        Duration::from_secs(60),
        "requests after the handover",
        || {
            let n = load
                .snapshot()
                .iter()
                .filter(|o| o.sent_ms > took_ms)
                .count();
            (n >= 20).then_some(())
        },
    )
    .await;
    let outcomes = load.finish().await;
    figures("cancelled successor, shortest renew_before", &outcomes);
    let bad = failures(&outcomes);
    assert!(bad.is_empty(), "{} failed: {:?}", bad.len(), bad.first());
    until(Duration::from_secs(90), "the first job to end", || {
        job_state(&first).is_none().then_some(())
    })
    .await;
    assert_completed_in_time(&first);
    assert_eq!(
        chain_job(&gw, &first)["ended"]["how"],
        format!("handed over to job {second}")
    );
    drop(connect);
    stop_checked(&gw);
    assert_all_gone(&gw, &tag).await;
}

// Acceptance 4 (and 5).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chain_fault_old_gateway_killed_after_publishing_fails_no_new_connection() {
    if !have_cluster() {
        return;
    }
    let gw = Gw::new("oldkill");
    let tag = format!("{}-m", gw.name);
    let cfg = gw.config(&chain_config(&tag, 3, "2m", "", ELSEWHERE));
    gw.start_json(&cfg);
    let key = gw.key();
    let first = gw.job_id().unwrap();
    let old_pid = gw.endpoint().unwrap()["pid"].as_u64().unwrap();
    let connect = gw.connect(&[]);
    let load = Load::start_fresh(&connect.url(), &key, "local", 20.0, 6);
    load.wait_for_outcomes(10).await;

    let ep = published(&gw, 2, Duration::from_secs(150)).await;
    let second = ep["job_id"].as_str().unwrap().to_string();
    // The scenario's own timing: 0.3 s after the publish.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let kill_ms = unix_ms();
    sigkill(old_pid);
    until(
        Duration::from_secs(60),
        "requests sent after the kill",
        || {
            let n = load
                .snapshot()
                .iter()
                .filter(|o| o.sent_ms > kill_ms)
                .count();
            (n >= 60).then_some(())
        },
    )
    .await;
    let outcomes = load.finish().await;
    figures("old gateway SIGKILLed 0.3 s after publishing", &outcomes);
    let bad = failed_outside(&outcomes, kill_ms);
    assert!(
        bad.is_empty(),
        "{} new connections failed: {:?}",
        bad.len(),
        bad.first()
    );
    // The successor notices the dead job and records its end (and the handover).
    let ended = until(Duration::from_secs(40), "the dead job's end record", || {
        let j = chain_job(&gw, &first);
        j["ended"]["how"].as_str().map(str::to_string)
    })
    .await;
    assert!(ended.contains("ended without a word of its own"), "{ended}");
    let h = gw.chain()["handovers"][0].clone();
    assert_eq!(h["to_job"], second.as_str(), "{h}");
    assert!(h["recorded_by_successor"].is_string(), "{h}");
    let st = status_text(&gw);
    assert!(st.contains("generation 2"), "{st}");
    assert!(st.contains("ended without recording the handover"), "{st}");
    drop(connect);
    stop_checked(&gw);
    assert_all_gone(&gw, &tag).await;
}

// Every generation ends COMPLETED: a job that never gets ready drains before its limit
// (its time-limit watch runs before it publishes; it used to end TIMEOUT).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chain_fault_job_that_never_gets_ready_ends_completed_before_its_limit() {
    if !have_cluster() {
        return;
    }
    let gw = Gw::new("unready");
    let tag = format!("{}-m", gw.name);
    let cfg = gw.config(
        &chain_config(&tag, 1, "2m", r#", "--load-ms", "600000""#, ELSEWHERE)
            .replace("renew = true\nrenew_before = \"2m\"\n", "")
            .replace("load_timeout = \"60s\"", "load_timeout = \"10m\""),
    );
    let out = gw.run(
        "start",
        &["-c", &cfg.display().to_string(), "--no-wait"],
        Duration::from_secs(30),
    );
    assert!(out.status.success(), "{}", text(&out));
    let id = gw.job_id().unwrap();
    until(Duration::from_secs(100), "the job to end", || {
        job_state(&id).is_none().then_some(())
    })
    .await;
    assert_completed_in_time(&id);
    let j = chain_job(&gw, &id);
    assert_eq!(
        j["ended"]["how"], "time limit reached before this job was ready",
        "{j}"
    );
    let st = status_text(&gw);
    assert!(
        st.contains("chain ended") && st.contains("time limit reached before this job was ready"),
        "{st}"
    );
    assert_all_gone(&gw, &tag).await;
}
