//! Start on the first request (`[slurm] on_demand = true`, issue 24) on the real local
//! SLURM cluster, `connect` in local mode: with no job running, the first request through
//! `connect` submits the job and every request is held until the gateway is ready; a
//! client that gives up leaves the hold; beyond `hold_timeout` a held request gets a 503
//! with `Retry-After` naming the job, its state and SLURM's pending reason.

// Test and benchmark code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod common;

use common::chain::{chain_job_ids, until};
use common::cluster::{have_cluster, job_state, text, Gw};
use std::time::{Duration, Instant};

/// A gateway with a launched mock backend, started on demand; extra `[slurm]` lines.
fn config(tag: &str, slurm: &str) -> String {
    format!(
        r#"
[server]
host = "0.0.0.0"
port = 0
shutdown_grace = "5s"

[[models]]
name = "local"
provider = "sglang"
model = "mock-qwen"
launch = {{ command = ["{{llmgw}}", "mock-upstream", "--port", "{{port}}", "--name", "{tag}", "--model", "mock-qwen"], load_timeout = "60s" }}

[slurm]
time = "10"
on_demand = true
{slurm}
"#
    )
}

async fn chat(url: &str, key: &str, timeout: Duration) -> Result<(u16, String), String> {
    let _ = common::client(); // installs the TLS provider
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(timeout)
        .build()
        .unwrap();
    let r = client
        .post(format!("{url}/chat/completions"))
        .bearer_auth(key)
        .header("content-type", "application/json")
        .body(common::chat_body("local", false))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let status = r.status().as_u16();
    let retry = r
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(|v| format!("retry-after: {v}\n"))
        .unwrap_or_default();
    let body = r.text().await.map_err(|e| e.to_string())?;
    Ok((status, format!("{retry}{body}")))
}

/// SIGINT to `connect`, then its stderr once it has exited.
fn stop_connect(mut c: common::cluster::Connect) -> String {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(c.child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while c.child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    c.stderr_text()
}

// Acceptance 2: no job running; 20 requests through `connect` over the first 30 s all get
// 200 once the job is ready (0 failures); one job was submitted for all of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_zero_the_first_request_starts_the_job_and_every_request_is_held_until_ready() {
    if !have_cluster() {
        return;
    }
    let gw = Gw::new("demand");
    let cfg = gw.config(&config(&format!("{}-m", gw.name), ""));
    let c = gw.connect(&["-c", &cfg.display().to_string()]);
    // No job yet, but the key exists (clients need it before the first request).
    assert!(gw.job_id().is_none());
    let key = gw.key();
    let url = c.url();

    // A client that gives up leaves the hold at once (it does not count as a failure of
    // the 20, and it does not stop the start).
    let quitter = chat(&url, &key, Duration::from_millis(500)).await;
    assert!(quitter.is_err(), "{quitter:?}");

    let began = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..20u64 {
        let (url, key) = (url.clone(), key.clone());
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(i * 1500)).await;
            let sent = Instant::now();
            let r = chat(&url, &key, Duration::from_secs(170)).await;
            (i, sent.elapsed(), r)
        }));
    }
    let mut failed = Vec::new();
    let mut first_hold = Duration::ZERO;
    for t in tasks {
        let (i, took, r) = t.await.unwrap();
        if i == 0 {
            first_hold = took;
        }
        match r {
            Ok((200, _)) => {}
            other => failed.push((i, other)),
        }
    }
    assert!(
        failed.is_empty(),
        "{} of 20 failed: {failed:?}",
        failed.len()
    );
    assert!(began.elapsed() >= Duration::from_secs(28));
    let jobs = chain_job_ids(&gw);
    assert_eq!(jobs.len(), 1, "one job for all requests: {jobs:?}");
    assert_eq!(job_state(&jobs[0]).as_deref(), Some("RUNNING"));
    let err = stop_connect(c);
    assert!(
        err.contains(&format!("submitted job {} on demand", jobs[0])),
        "{err}"
    );
    assert!(err.contains("job starts 1"), "{err}");
    assert!(err.contains("gave up 1"), "{err}");
    assert!(err.contains("first held request released after"), "{err}");
    eprintln!("first request's hold time: {first_hold:?}");
}

// Beyond `hold_timeout` a held request gets a 503 with Retry-After and an OpenAI error
// naming the job, its state and SLURM's pending reason; the job stays queued.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_zero_a_request_held_past_hold_timeout_gets_a_503_naming_the_pending_job() {
    if !have_cluster() {
        return;
    }
    let gw = Gw::new("demand-hold");
    // `--begin` an hour from now: the job stays PENDING (BeginTime) whatever the cluster.
    let cfg = gw.config(&config(
        &format!("{}-m", gw.name),
        "hold_timeout = \"4s\"\nextra_directives = [\"--begin=now+1hour\"]",
    ));
    let c = gw.connect(&["-c", &cfg.display().to_string()]);
    let key = gw.key();
    let (status, body) = chat(&c.url(), &key, Duration::from_secs(60)).await.unwrap();
    let job = until(Duration::from_secs(10), "the submitted job", || gw.job_id()).await;
    assert_eq!(status, 503, "{body}");
    assert!(body.starts_with("retry-after: 30\n"), "{body}");
    let json: serde_json::Value =
        serde_json::from_str(body.trim_start_matches("retry-after: 30\n")).unwrap();
    let msg = json["error"]["message"].as_str().unwrap();
    assert_eq!(json["error"]["code"], "gateway_starting", "{json}");
    assert!(
        msg.contains(&format!("job {job} is PENDING (BeginTime)")),
        "{msg}"
    );
    assert!(msg.contains("hold_timeout"), "{msg}");
    assert_eq!(job_state(&job).as_deref(), Some("PENDING"));
    // A second request finds the same job (no second submission) and is held again.
    let (status, _) = chat(&c.url(), &key, Duration::from_secs(60)).await.unwrap();
    assert_eq!(status, 503);
    assert_eq!(chain_job_ids(&gw), vec![job.clone()]);
    let err = stop_connect(c);
    assert!(err.contains("refused 2"), "{}", err);
    let _ = text;
}

/// The deployment that answered, from `x-llmgw-deployment`.
async fn answered_by(url: &str, key: &str) -> String {
    let r = common::client()
        .post(format!("{url}/chat/completions"))
        .bearer_auth(key)
        .header("content-type", "application/json")
        .body(common::chat_body("local", false))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let d = r
        .headers()
        .get("x-llmgw-deployment")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    r.bytes().await.unwrap();
    d
}

// Acceptance 3: with the job held PENDING and a cloud deployment in the group, held
// requests are answered by the cloud at once (connect's spill gateway); once the job is
// released and ready they go to the local backend.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_zero_requests_spill_to_the_cloud_while_the_job_is_pending_then_go_local() {
    if !have_cluster() {
        return;
    }
    let cloud = common::mock("cloud", Default::default()).await;
    let gw = Gw::new("demand-spill");
    let toml = format!(
        "{}\n{}\n[router]\nspillover = {{ queue = 8 }}\n",
        config(
            &format!("{}-m", gw.name),
            "extra_directives = [\"--begin=now+1hour\"]"
        ),
        common::openai_model("local", "gpt-x", &cloud.base_url(), "id = \"cloud-a\"")
    );
    let cfg = gw.config(&toml);
    let c = gw.connect(&["-c", &cfg.display().to_string()]);
    let key = gw.key();
    let url = c.url();

    for _ in 0..5 {
        assert_eq!(answered_by(&url, &key).await, "cloud-a");
    }
    assert_eq!(cloud.state.request_count(), 5);
    let job = until(Duration::from_secs(10), "the submitted job", || gw.job_id()).await;
    assert_eq!(job_state(&job).as_deref(), Some("PENDING"));
    // What the spill adds to the cloud's own latency (measured, reported; not asserted).
    let direct = {
        let t = Instant::now();
        for _ in 0..20 {
            let r = common::client()
                .post(format!("{}/chat/completions", cloud.base_url()))
                .header("content-type", "application/json")
                .body(common::chat_body("gpt-x", false))
                .send()
                .await
                .unwrap();
            r.bytes().await.unwrap();
        }
        t.elapsed() / 20
    };
    let spilled = {
        let t = Instant::now();
        for _ in 0..20 {
            answered_by(&url, &key).await;
        }
        t.elapsed() / 20
    };
    eprintln!("cloud direct {direct:?} per request, through connect's spill {spilled:?}");

    // Released: the job starts, and new requests go to its local backend.
    let ok = std::process::Command::new("scontrol")
        .args(["update", &format!("JobId={job}"), "StartTime=now"])
        .status()
        .unwrap()
        .success();
    assert!(ok, "scontrol update StartTime=now failed");
    until(Duration::from_secs(120), "the job's gateway ready", || {
        gw.endpoint().map(|_| ())
    })
    .await;
    let before = cloud.state.request_count();
    let mut local = 0;
    for _ in 0..40 {
        if answered_by(&url, &key).await != "cloud-a" {
            local += 1;
        }
        if local >= 5 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(
        local >= 5,
        "requests did not go local once the job was ready"
    );
    // Once local serving resumed, nothing more went to the cloud.
    let after = cloud.state.request_count();
    let tail: Vec<String> = {
        let mut v = Vec::new();
        for _ in 0..5 {
            v.push(answered_by(&url, &key).await);
        }
        v
    };
    assert!(tail.iter().all(|d| d != "cloud-a"), "{tail:?}");
    assert_eq!(cloud.state.request_count(), after, "{before} → {after}");
    let err = stop_connect(c);
    assert!(err.contains("spill gateway drains"), "{err}");
    assert!(err.contains("spilled to the cloud"), "{err}");
}
