//! A gateway that outlives its job, on the real local SLURM cluster: renewal and handover,
//! a client on the old node's URL, a held successor, `restart -c`, `stop` during a renewal,
//! and `connect` over a real sshd. (The five-minute run under load is tests/renew_long.rs.)
//!
//! The tests may run side by side: each has its own gateway name, state directory and
//! mock tag, and cancels its whole chain when it ends. Time limits are in minutes, so each
//! takes one to three minutes.

// Test and benchmark code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod common;

use common::chain::{
    chain_config, chain_job_ids, generation, ssh_master_of, status_text, stop, unix_ms, until, Sshd,
};
use common::cluster::{
    assert_completed_in_time, have_cluster, job_state, pids_with, scontrol_field, text, Gw,
};
use common::load::{failures, Load};
use serde_json::Value;
use std::process::Command;
use std::time::{Duration, Instant};

// Acceptance 2: a client that kept the old node's URL is served during the overlap (its
// requests forwarded); the old job then leaves, COMPLETED before its limit, and its URL
// is refused (README: "after a handover").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_url_is_forwarded_during_the_overlap_then_the_old_job_completes() {
    if !have_cluster() {
        return;
    }
    let gw = Gw::new("fwd");
    let cfg = gw.config(&chain_config(&format!("{}-m", gw.name), 3, "2m", "", ""));
    let started = gw.start_json(&cfg);
    let key = gw.key();
    let old_job = gw.job_id().expect("job.json");
    let old_url = started["url"].as_str().unwrap().to_string();

    // A client pinned to the old URL, across the handover.
    let load = Load::start(&old_url, &key, "local", 5.0, 2);
    let (new_job, _) = generation(&gw, 2, Duration::from_secs(150)).await;
    assert_ne!(new_job, old_job);
    // The overlap: requests on the old URL are forwarded to the new job.
    until(
        Duration::from_secs(60),
        &format!("a request on the old URL forwarded to job {new_job}"),
        || {
            load.snapshot()
                .iter()
                .any(|o| o.forwarded_to.as_deref() == Some(new_job.as_str()))
                .then_some(())
        },
    )
    .await;
    let outcomes = load.finish().await;
    let bad = failures(&outcomes);
    assert!(
        bad.is_empty(),
        "{} of {} failed: {:?}",
        bad.len(),
        outcomes.len(),
        &bad[..bad.len().min(3)]
    );
    let forwarded = outcomes
        .iter()
        .filter(|o| o.forwarded_to.as_deref() == Some(new_job.as_str()))
        .count();
    assert!(
        forwarded > 0,
        "no request on the old URL was forwarded to job {new_job}"
    );

    // Nothing reaches the old job any more: it leaves after a quiet spell.
    until(Duration::from_secs(60), "the old job to end", || {
        job_state(&old_job).is_none().then_some(())
    })
    .await;
    assert_completed_in_time(&old_job);
    let chain = gw.chain();
    assert_eq!(chain["current"], 2, "{chain}");
    assert_eq!(
        chain["jobs"][0]["ended"]["how"],
        format!("handed over to job {new_job}"),
        "{chain}"
    );
    let h = &chain["handovers"][0];
    assert!(h["forwarded"].as_u64().unwrap() >= forwarded as u64, "{h}");
    assert!(
        h["exit_ms"].as_u64().unwrap() > h["drained_ms"].as_u64().unwrap(),
        "{h}"
    );
    let log = std::fs::read_to_string(gw.dir.join(format!("slurm-{old_job}.log"))).unwrap();
    assert!(log.contains("renewal: submitted successor job"), "{log}");
    assert!(log.contains("handover: generation 2"), "{log}");

    // The old address is gone now; the README says so.
    let refused = common::client()
        .get(format!("{old_url}/models"))
        .bearer_auth(&key)
        .send()
        .await;
    assert!(refused.is_err(), "the old job still answers: {refused:?}");

    let st = status_text(&gw);
    assert!(st.contains("generation 2"), "{st}");
    assert!(
        st.contains(&format!("last handover: job {old_job} → job {new_job}")),
        "{st}"
    );
    let m = common::client()
        .get(format!(
            "http://{}:{}/metrics",
            gw.endpoint().unwrap()["host"].as_str().unwrap(),
            gw.endpoint().unwrap()["port"]
        ))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(m.contains("llmgw_chain_generation 2"), "{m}");
    stop(&gw);
    for id in chain_job_ids(&gw) {
        assert_eq!(job_state(&id), None, "job {id} still queued");
    }
}

// Acceptance 3: the successor is held; the current job serves to its end and says why;
// once released, the successor takes over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_successor_waits_and_the_current_job_serves_to_its_end() {
    if !have_cluster() {
        return;
    }
    let gw = Gw::new("held");
    // `--hold` holds every job of the chain (JobHeldUser, like `scontrol uhold`): the test
    // releases the first itself, and the successor stays held until it does too.
    let cfg = gw.config(&chain_config(
        &format!("{}-m", gw.name),
        3,
        "2m",
        "",
        "extra_directives = [\"--hold\"]",
    ));
    let out = gw.run(
        "start",
        &["-c", &cfg.display().to_string(), "--no-wait"],
        Duration::from_secs(30),
    );
    assert!(out.status.success(), "{}", text(&out));
    let first = gw.job_id().unwrap();
    assert!(Command::new("scontrol")
        .args(["release", &first])
        .status()
        .unwrap()
        .success());
    let (_, url) = generation(&gw, 1, Duration::from_secs(60)).await;
    let key = gw.key();
    let load = Load::start(&url, &key, "local", 4.0, 2);

    let successor = until(Duration::from_secs(120), "the successor job", || {
        chain_job_ids(&gw).get(1).cloned()
    })
    .await;
    let st = gw.status_json();
    assert_eq!(
        st["chain"]["successor"]["phase"], "pending (JobHeldUser)",
        "{st}"
    );
    assert_eq!(st["chain"]["successor"]["job_id"], successor.as_str());
    let t = status_text(&gw);
    assert!(t.contains("successor pending (JobHeldUser)"), "{t}");

    // The current job serves until it drains, shortly before its limit.
    let drained_at = until(Duration::from_secs(120), "the first job to end", || {
        job_state(&first).is_none().then(Instant::now)
    })
    .await;
    let outcomes = load.finish().await;
    let ok_until = outcomes.iter().take_while(|o| o.error.is_empty()).count();
    assert!(
        ok_until > 100,
        "only {ok_until} requests succeeded before the first failure: {:?}",
        failures(&outcomes).first()
    );
    assert_completed_in_time(&first);
    let log = std::fs::read_to_string(gw.dir.join(format!("slurm-{first}.log"))).unwrap();
    assert!(
        log.contains("successor job") && log.contains("pending (JobHeldUser)"),
        "{log}"
    );
    assert!(
        log.contains(&format!(
            "time limit reached; successor job {successor} was not ready (pending (JobHeldUser))"
        )),
        "{log}"
    );
    assert_eq!(job_state(&successor).as_deref(), Some("PENDING"));

    // Released, it starts and becomes current on its own.
    assert!(Command::new("scontrol")
        .args(["release", &successor])
        .status()
        .unwrap()
        .success());
    let released = Instant::now();
    let (job, url) = generation(&gw, 2, Duration::from_secs(60)).await;
    assert_eq!(job, successor);
    assert!(released.elapsed() < Duration::from_secs(60));
    let resp = common::client()
        .post(format!("{url}/chat/completions"))
        .bearer_auth(&key)
        .header("content-type", "application/json")
        .body(common::chat_body("local", false))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(drained_at.elapsed() < Duration::from_secs(120));
    stop(&gw);
}

// Acceptance 4: `restart -c` with a config that adds a model group, under load through
// `connect`: the group appears in /v1/models and in `status`, and nothing fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_with_a_new_group_under_load_through_connect() {
    if !have_cluster() {
        return;
    }
    let gw = Gw::new("restart");
    let tag = format!("{}-m", gw.name);
    let base = chain_config(&tag, 10, "2m", "", "");
    let cfg = gw.config(&base);
    gw.start_json(&cfg);
    let key = gw.key();
    let old = gw.job_id().unwrap();
    let connect = gw.connect(&[]);
    let load = Load::start(&connect.url(), &key, "local", 10.0, 4);
    load.wait_for_outcomes(10).await;

    let with_extra = base.replace(
        "[slurm]",
        &format!(
            r#"[[models]]
name = "extra"
provider = "sglang"
model = "mock-extra"
launch = {{ command = ["{{llmgw}}", "mock-upstream", "--port", "{{port}}", "--name", "{tag}-x", "--model", "mock-extra"] }}

[slurm]"#
        ),
    );
    let new_cfg = gw._tmp.path().join("with-extra.toml");
    std::fs::write(&new_cfg, with_extra).unwrap();
    let out = gw.run(
        "restart",
        &[
            "-c",
            &new_cfg.display().to_string(),
            "--json",
            "--timeout",
            "90s",
        ],
        Duration::from_secs(120),
    );
    assert!(out.status.success(), "{}", text(&out));
    let r: Value = serde_json::from_slice(&out.stdout).expect("restart --json");
    let new = r["job_id"].as_str().unwrap().to_string();
    assert_eq!(r["previous_job_id"], old.as_str());
    assert_eq!(r["generation"], 2);

    // New connections reach the new job: the group is there.
    let client = common::client();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let models = match client
            .get(format!("{}/models", connect.url()))
            .bearer_auth(&key)
            .send()
            .await
        {
            Ok(r) => r.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        };
        if models.contains("\"extra\"") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "\"extra\" never appeared in /v1/models via connect: {models}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let st = gw.status_json();
    assert_eq!(st["job_id"], new.as_str(), "{st}");
    let groups: Vec<&str> = st["deployments"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|d| d["model_group"].as_str())
        .collect();
    assert!(groups.contains(&"extra"), "{st}");
    // The load goes on through connect after the restart.
    let so_far = load.snapshot().len();
    load.wait_for_outcomes(so_far + 20).await;
    let outcomes = load.finish().await;
    let bad = failures(&outcomes);
    assert!(
        bad.is_empty(),
        "{} of {} failed: {:?}",
        bad.len(),
        outcomes.len(),
        &bad[..bad.len().min(3)]
    );
    assert!(outcomes.len() > 30, "{}", outcomes.len());
    assert!(
        connect
            .stderr_text()
            .contains(&format!("go to job {new} (generation 2)")),
        "{}",
        connect.stderr_text()
    );
    until(Duration::from_secs(60), "the old job to end", || {
        job_state(&old).is_none().then_some(())
    })
    .await;
    assert_completed_in_time(&old);
    stop(&gw);
}

// Acceptance 5: `stop` while the successor is loading cancels both jobs: nothing left in
// squeue, no orphan process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_during_a_renewal_cancels_every_job_and_leaves_no_orphans() {
    if !have_cluster() {
        return;
    }
    let gw = Gw::new("stopren");
    let tag = format!("{}-m", gw.name);
    let cfg = gw.config(&chain_config(&tag, 3, "2m", r#", "--load-ms", "8000""#, ""));
    gw.start_json(&cfg);
    let first = gw.job_id().unwrap();
    let successor = until(
        Duration::from_secs(120),
        "the successor to be loading",
        || {
            let id = chain_job_ids(&gw).get(1).cloned()?;
            let loading = gw.dir.join("successor-backends.json").exists();
            (job_state(&id).as_deref() == Some("RUNNING") && loading).then_some(id)
        },
    )
    .await;
    // The status file is written as the successor plans its backend, a moment before the
    // process exists: wait for both backends.
    until(Duration::from_secs(30), "two backends running", || {
        (pids_with(&tag).len() == 2).then_some(())
    })
    .await;
    let stopped = gw.run("stop", &[], Duration::from_secs(120));
    assert!(stopped.status.success(), "{}", text(&stopped));
    let out = String::from_utf8_lossy(&stopped.stdout);
    assert!(out.contains(&format!("stopped job {first}")), "{out}");
    assert!(out.contains(&format!("stopped job {successor}")), "{out}");
    // The grace it names is the real one (shutdown_grace = "5s"; it said "up to 20 s").
    let err = String::from_utf8_lossy(&stopped.stderr);
    assert!(
        err.contains("in-flight requests get up to 5 s to finish"),
        "{err}"
    );
    // The successor's loading status does not outlive it.
    assert!(!gw.dir.join("successor-backends.json").exists());
    for id in [&first, &successor] {
        assert_eq!(job_state(id), None, "job {id} still queued");
        assert_ne!(scontrol_field(id, "JobState").as_deref(), Some("TIMEOUT"));
    }
    until(Duration::from_secs(15), "no orphaned backend", || {
        pids_with(&tag).is_empty().then_some(())
    })
    .await;
    let chain = gw.chain();
    assert_eq!(chain["stopping"], true);
    assert!(
        chain["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .all(|j| !j["ended"].is_null()),
        "{chain}"
    );
    assert!(!gw.dir.join("endpoint.json").exists());
    // Nothing submits anything after a stop: nothing of this gateway is left that could
    // (no process with its name or state directory, no job queued under its name), and
    // the chain still holds its two jobs.
    until(
        Duration::from_secs(30),
        "no process of the gateway left",
        || pids_with(&gw.name).is_empty().then_some(()),
    )
    .await;
    let queued = Command::new("squeue")
        .args(["-h", "-o", "%i", "-n", &format!("llmgw-{}", gw.name)])
        .output()
        .expect("squeue");
    let queued = String::from_utf8_lossy(&queued.stdout);
    assert!(queued.trim().is_empty(), "jobs queued after stop: {queued}");
    assert_eq!(chain_job_ids(&gw).len(), 2);
}

// Acceptance 6: `connect --login root@127.0.0.1` through a real sshd keeps one local URL
// working across a handover, and survives its ssh connection being cut.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_over_ssh_keeps_one_url_across_a_handover() {
    if !have_cluster() {
        return;
    }
    let gw = Gw::new("ssh");
    let Some(sshd) = Sshd::start(gw._tmp.path()) else {
        return;
    };
    let cfg = gw.config(&chain_config(&format!("{}-m", gw.name), 3, "2m", "", ""));
    gw.start_json(&cfg);
    let key = gw.key();
    let first = gw.job_id().unwrap();
    let known = format!("UserKnownHostsFile={}", sshd.known_hosts.display());
    let connect = gw.connect(&[
        "--login",
        "root@127.0.0.1",
        "--ssh-port",
        &sshd.port.to_string(),
        "-i",
        &sshd.key.display().to_string(),
        "-o",
        "StrictHostKeyChecking=accept-new",
        "-o",
        &known,
    ]);
    let load = Load::start(&connect.url(), &key, "local", 5.0, 2);

    // The ssh connection drops (with the load under way): connect reconnects (with
    // backoff) and goes on.
    load.wait_for_outcomes(5).await;
    let master = ssh_master_of(connect.child.id()).expect("connect runs an ssh master");
    let cut_ms = unix_ms();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(master as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    until(Duration::from_secs(20), "ssh to reconnect", || {
        connect
            .stderr_text()
            .contains("ssh reconnected")
            .then_some(())
    })
    .await;
    let back_ms = unix_ms();
    let (second, _) = generation(&gw, 2, Duration::from_secs(150)).await;
    let handover_ms = unix_ms();
    until(Duration::from_secs(60), "the first job to end", || {
        job_state(&first).is_none().then_some(())
    })
    .await;
    let first_gone_ms = unix_ms();
    // Still served after the old job is gone: new connections reach the new one.
    until(
        Duration::from_secs(60),
        "requests sent after the first job ended",
        || {
            let snap = load.snapshot();
            let after = snap.iter().filter(|o| o.sent_ms > first_gone_ms).count();
            (after >= 10).then_some(())
        },
    )
    .await;
    let outcomes = load.finish().await;
    // Requests in flight when ssh was cut, or sent while it was down, may fail; no other.
    let bad: Vec<_> = failures(&outcomes)
        .into_iter()
        .filter(|o| o.sent_ms + o.latency.as_millis() as u64 + 50 < cut_ms || o.sent_ms > back_ms)
        .collect();
    assert!(
        bad.is_empty(),
        "{} failed: {:?}\nssh cut at {cut_ms}, back at {back_ms}, generation 2 at {handover_ms}, first job gone at {first_gone_ms}\nconnect said:\n{}",
        bad.len(),
        bad.first(),
        connect.stderr_text()
    );
    let after = outcomes.iter().filter(|o| o.sent_ms > handover_ms).count();
    assert!(after > 20, "too few requests after the handover: {after}");
    let err = connect.stderr_text();
    assert!(
        err.contains(&format!("go to job {second} (generation 2)")),
        "{err}"
    );
    assert_completed_in_time(&first);

    // However connect ends (here SIGKILL), no ssh process of it is left behind.
    let ssh_of_connect = sshd.key.display().to_string();
    assert!(!pids_with(&ssh_of_connect).is_empty());
    drop(connect);
    until(
        Duration::from_secs(5),
        "connect's ssh processes to go",
        || pids_with(&ssh_of_connect).is_empty().then_some(()),
    )
    .await;
    stop(&gw);
}

// The end time comes from SLURM, re-read while the job runs: a time limit extended with
// `scontrol update` moves the renewal with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_extended_time_limit_moves_the_renewal() {
    if !have_cluster() {
        return;
    }
    let gw = Gw::new("extend");
    let cfg = gw.config(&chain_config(&format!("{}-m", gw.name), 3, "2m", "", ""));
    let started = gw.start_json(&cfg);
    let id = gw.job_id().unwrap();
    let t0 = Instant::now();
    let ok = Command::new("scontrol")
        .args(["update", &format!("JobId={id}"), "TimeLimit=6"])
        .status()
        .unwrap()
        .success();
    assert!(ok, "scontrol update TimeLimit failed");
    // Without the extension the successor would be submitted about a minute in.
    tokio::time::sleep(Duration::from_secs(80).saturating_sub(t0.elapsed())).await;
    assert_eq!(
        chain_job_ids(&gw),
        vec![id.clone()],
        "renewed on the old limit"
    );
    let st = gw.status_json();
    let next = st["chain"]["next_renewal_in_secs"]
        .as_u64()
        .expect("next renewal");
    assert!(
        (120..=200).contains(&next),
        "next renewal in {next} s: {st}"
    );
    let metrics = common::client()
        .get(format!(
            "{}/metrics",
            started["url"].as_str().unwrap().trim_end_matches("/v1")
        ))
        .bearer_auth(gw.key())
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let left: i64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("llmgw_job_seconds_left "))
        .and_then(|v| v.parse().ok())
        .expect("llmgw_job_seconds_left");
    assert!(left > 180, "{left} s left after the extension");
    stop(&gw);
}
