//! Stop when idle (`[slurm] idle_stop`, issue 24) on the real local SLURM cluster: a
//! renewing gateway that gets a few requests and then none ends its job COMPLETED about
//! `idle_stop` after the last one, submits no successor (renewal comes due while it is
//! idle and is skipped), and `status` says it stopped idle.

// Test and benchmark code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod common;

use common::chain::{chain_config, chain_job_ids, status_text, until};
use common::cluster::{assert_completed_in_time, have_cluster, job_state, Gw};
use std::time::{Duration, Instant};

// Acceptance 1: `idle_stop = "1m"`: the job ends COMPLETED 1–2 minutes after the last
// request, with no successor; `status` says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_zero_an_idle_gateway_ends_its_job_and_its_chain() {
    if !have_cluster() {
        return;
    }
    let gw = Gw::new("idle");
    // A 4-minute limit renewed 3 minutes ahead: renewal comes due a minute in, while the
    // gateway is idle — it must not renew.
    let cfg = gw.config(&chain_config(
        &format!("{}-m", gw.name),
        4,
        "3m",
        "",
        "idle_stop = \"1m\"",
    ));
    let started = gw.start_json(&cfg);
    let key = gw.key();
    let job = gw.job_id().expect("job.json");
    let url = started["url"].as_str().unwrap().to_string();

    let client = common::client();
    for _ in 0..3 {
        let r = client
            .post(format!("{url}/chat/completions"))
            .bearer_auth(&key)
            .header("content-type", "application/json")
            .body(common::chat_body("local", false))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        r.bytes().await.unwrap();
    }
    let last = Instant::now();

    until(
        Duration::from_secs(200),
        &format!("job {job} to end"),
        || job_state(&job).is_none().then_some(()),
    )
    .await;
    let after = last.elapsed();
    assert!(
        after >= Duration::from_secs(59) && after <= Duration::from_secs(120),
        "job {job} ended {after:?} after the last request (idle_stop = 1m)"
    );
    assert_completed_in_time(&job);

    let chain = gw.chain();
    assert_eq!(
        chain_job_ids(&gw),
        vec![job.clone()],
        "a successor: {chain}"
    );
    let how = chain["jobs"][0]["ended"]["how"]
        .as_str()
        .unwrap_or_default();
    assert!(how.starts_with("idle: no request for 60 s"), "{chain}");
    let log = std::fs::read_to_string(gw.dir.join(format!("slurm-{job}.log"))).unwrap();
    assert!(
        log.contains("an idle chain ends instead of renewing"),
        "renewal came due while idle but the log does not say it was skipped: {log}"
    );

    let st = status_text(&gw);
    assert!(st.contains("stopped: idle since"), "{st}");
    assert!(st.contains("no request for 60 s"), "{st}");
    let js = gw.status_json();
    assert_eq!(js["idle_stop"]["idle_stop_secs"], 60, "{js}");
    assert!(
        js["idle_stop"]["job_hours_saved"].as_f64().is_some(),
        "{js}"
    );
    eprintln!("job {job} ended {after:?} after the last request");
}
