//! The SLURM launcher on a real local cluster (`scripts/local-slurm.sh up`): `start`,
//! `status`, `logs`, `stop`, and the backends `serve` supervises inside the job.
//!
//! The tests run one at a time (one small cluster); each uses its own `--name` and a
//! temporary `--state-dir`, and cancels every job it started, also when it fails.
//!
//! Without `sbatch` on PATH they are skipped with a loud message — unless `CI` is set:
//! there a missing cluster is a failure.

// Test and benchmark code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
// The serialising guard is held for a whole test on purpose; every test has its own
// runtime and thread, so holding it across awaits blocks nothing but the other tests.
#![allow(clippy::await_holding_lock)]

mod common;

use common::cluster::{cluster, is_zombie, job_state, pids_with, run_bounded, text, Gw};
use common::{chat_body, client, read_sse};
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A config: a launched mock SGLang backend ("local", with `mock_args`; it requires the
/// key the gateway gives it, like SGLang with `--api-key`) falling back to
/// `fallback` (a `[[models]]` table for the group "cloud").
fn config(port: u16, mock_tag: &str, mock_args: &str, fallback: &str, grace: &str) -> String {
    let fallbacks = if fallback.is_empty() {
        ""
    } else {
        "fallbacks = { local = [\"cloud\"] }"
    };
    format!(
        r#"
[server]
host = "0.0.0.0"
port = {port}
shutdown_grace = "{grace}"

[router]
{fallbacks}

[[models]]
name = "local"
provider = "sglang"
model = "mock-qwen"
launch = {{ command = ["{{llmgw}}", "mock-upstream", "--port", "{{port}}", "--name", "{mock_tag}", "--model", "mock-qwen", "--api-key-env", "LLMGW_BACKEND_API_KEY"{mock_args}], load_timeout = "60s" }}

{fallback}

[slurm]
time = "00:10:00"
"#
    )
}

/// "cloud" as a second launched mock.
fn launched_cloud(tag: &str) -> String {
    format!(
        r#"[[models]]
name = "cloud"
provider = "openai"
model = "mock-cloud"
launch = {{ command = ["{{llmgw}}", "mock-upstream", "--port", "{{port}}", "--name", "{tag}", "--model", "mock-cloud"] }}"#
    )
}

fn free_port() -> u16 {
    common::closed_port()
}

async fn chat(url: &str, key: Option<&str>, model: &str) -> reqwest::Response {
    let mut req = client()
        .post(format!("{url}/chat/completions"))
        .header("content-type", "application/json")
        .body(chat_body(model, false));
    if let Some(k) = key {
        req = req.bearer_auth(k);
    }
    req.send().await.expect("chat request")
}

// 1. The dry-run script is one SLURM accepts.
#[test]
fn dry_run_script_is_accepted_by_sbatch_test_only() {
    let Some(_cluster) = cluster() else { return };
    let gw = Gw::new("dry");
    let cfg = gw.config(&config(
        0,
        "dry-mock",
        "",
        &launched_cloud("dry-cloud"),
        "5s",
    ));
    let out = gw.run(
        "start",
        &["-c", &cfg.display().to_string(), "--dry-run"],
        Duration::from_secs(20),
    );
    assert!(out.status.success(), "{}", text(&out));
    let script = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(script.starts_with("#!/bin/bash\n"), "{script}");
    assert!(script.contains("#SBATCH --time=00:10:00"), "{script}");
    assert!(script.contains(" serve "), "{script}");
    assert!(gw.job_id().is_none(), "dry run must submit nothing");
    assert!(!gw.dir.join("key").exists(), "dry run must write nothing");
    let path = gw._tmp.path().join("dry.sbatch");
    std::fs::write(&path, &script).unwrap();
    let test = Command::new("sbatch")
        .arg("--test-only")
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        test.status.success(),
        "sbatch --test-only rejected the script: {}",
        String::from_utf8_lossy(&test.stderr)
    );
}

// Issue 9, finding 8: a config path with a newline and `$(…)`, and module names with `;`,
// `$(…)` and backticks are data: bash runs the script without running any of them, the
// gateway and `module` get them verbatim, and SLURM accepts the script.
#[test]
fn hostile_config_path_and_modules_stay_data_in_the_script() {
    let tmp = tempfile::tempdir().unwrap();
    // Relative: the script runs in `tmp`, and a path without '/' stays one directory name.
    let m = "PWNED";
    let cfg_dir = tmp.path().join(format!("cfg\n$(touch {m}-path)\n# x"));
    std::fs::create_dir(&cfg_dir).unwrap();
    let cfg = cfg_dir.join("it's.toml");
    // Stand-ins for llmgw and for `module` that record their arguments, NUL-separated.
    let fake = tmp.path().join("fake-llmgw");
    std::fs::write(
        &fake,
        "#!/bin/bash\nprintf '%s\\0' \"$@\" > \"$(dirname \"$0\")/argv\"\n",
    )
    .unwrap();
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    let bash_env = tmp.path().join("bash_env");
    std::fs::write(
        &bash_env,
        format!(
            "module() {{ printf '%s\\0' \"$@\" >> '{}'; }}\n",
            tmp.path().join("modules").display()
        ),
    )
    .unwrap();
    let modules = [
        format!("cuda/12.4; touch {m}-semi"),
        format!("$(touch {m}-subst)"),
        format!("`touch {m}-tick`"),
    ];
    let toml_list: Vec<String> = modules.iter().map(|v| format!("{v:?}")).collect();
    std::fs::write(
        &cfg,
        format!(
            "[slurm]\nbinary = {:?}\nmodules = [{}]\n",
            fake.display().to_string(),
            toml_list.join(", ")
        ),
    )
    .unwrap();
    let state = tmp.path().join("state dir");
    let mut c = common::llmgw_command();
    c.args(["start", "--dry-run", "--state-dir"])
        .arg(&state)
        .arg("-c")
        .arg(&cfg);
    let out = run_bounded(c, Duration::from_secs(20));
    assert!(out.status.success(), "{}", text(&out));
    let script = tmp.path().join("job.sbatch");
    std::fs::write(&script, &out.stdout).unwrap();

    let ran = Command::new("bash")
        .arg(&script)
        .env("BASH_ENV", &bash_env)
        .env("SLURM_JOB_ID", "1")
        .current_dir(tmp.path())
        .output()
        .unwrap();
    assert!(ran.status.success(), "the script failed: {}", text(&ran));
    let planted: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| n.starts_with("PWNED"))
        .collect();
    assert!(planted.is_empty(), "injected commands ran: {planted:?}");
    let nul_split = |p: PathBuf| -> Vec<String> {
        let bytes = std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        String::from_utf8(bytes)
            .unwrap()
            .split_terminator('\0')
            .map(str::to_string)
            .collect()
    };
    let want_modules: Vec<String> = modules
        .iter()
        .flat_map(|v| ["load".to_string(), v.clone()])
        .collect();
    assert_eq!(nul_split(tmp.path().join("modules")), want_modules);
    let s = |p: PathBuf| p.display().to_string();
    assert_eq!(
        nul_split(tmp.path().join("argv")),
        [
            "serve".to_string(),
            "--config".into(),
            s(state.join("config.toml")),
            "--state-dir".into(),
            s(state.clone()),
            "--master-key-file".into(),
            s(state.join("key")),
        ]
    );

    // SLURM reads the same script (quoted paths in #SBATCH lines included).
    let Some(_cluster) = cluster() else { return };
    let test = Command::new("sbatch")
        .arg("--test-only")
        .arg(&script)
        .output()
        .unwrap();
    assert!(
        test.status.success(),
        "sbatch --test-only rejected the script: {}",
        String::from_utf8_lossy(&test.stderr)
    );
}

// 2, 3 and 8: start → ready with node/port/ssh line; key works and is required; status;
// logs; no secret anywhere; stop → gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_serve_status_stop_round_trip() {
    let Some(_cluster) = cluster() else { return };
    let gw = Gw::new("rt");
    let tag = format!("{}-local", gw.name);
    let cfg = gw.config(&config(
        0,
        &tag,
        r#", "--load-ms", "1500""#,
        &launched_cloud(&format!("{}-cloud", gw.name)),
        "10s",
    ));

    // Start, watching stderr (no TTY: one line per state change) to time RUNNING → ready.
    let mut c = common::llmgw_command();
    c.arg("start")
        .args(gw.target_args())
        .args(["-c", &cfg.display().to_string(), "--timeout", "90s"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let t0 = Instant::now();
    let mut child = c.spawn().expect("spawn start");
    let stderr = child.stderr.take().unwrap();
    let lines = std::thread::spawn(move || {
        BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
            .map(|l| (Instant::now(), l))
            .collect::<Vec<_>>()
    });
    let out = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let ready_at = Instant::now();
    let lines = lines.join().unwrap();
    gw.remember_job();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr_text: Vec<&str> = lines.iter().map(|(_, l)| l.as_str()).collect();
    assert!(
        out.status.success(),
        "start failed:\n{stdout}\n{}",
        stderr_text.join("\n")
    );
    let running_at = lines
        .iter()
        .find(|(_, l)| l.contains("RUNNING"))
        .map(|(t, _)| *t)
        .unwrap_or(t0);
    assert!(
        ready_at - running_at < Duration::from_secs(15),
        "ready {:?} after RUNNING",
        ready_at - running_at
    );
    assert!(
        stderr_text.len() < 30,
        "progress spammed a non-TTY stderr: {stderr_text:?}"
    );
    let id = gw.job_id().expect("job.json");
    let node = std::fs::read_to_string(gw.dir.join("endpoint.json")).expect("endpoint.json");
    let ep: Value = serde_json::from_str(&node).unwrap();
    let (host, port) = (ep["host"].as_str().unwrap(), ep["port"].as_u64().unwrap());
    assert!(
        stdout.contains(&format!("job {id} on {host}, port {port}")),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("ssh -N -L {port}:{host}:{port} ")),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("export OPENAI_BASE_URL=http://{host}:{port}/v1")),
        "{stdout}"
    );
    assert!(stdout.contains("export OPENAI_API_KEY=$(cat "), "{stdout}");

    // The key works; without it, 401.
    let key = gw.key();
    let url = format!("http://{host}:{port}/v1");
    let resp = chat(&url, Some(&key), "local").await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-llmgw-deployment"], "local-1");
    let body: Value = serde_json::from_slice(&resp.bytes().await.unwrap()).unwrap();
    assert_eq!(
        body["choices"][0]["message"]["content"],
        format!("Hello from {tag}")
    );
    assert_eq!(chat(&url, None, "local").await.status(), 401);
    assert_eq!(chat(&url, Some("sk-wrong"), "local").await.status(), 401);

    // status --json: RUNNING, gateway and backend healthy.
    let st = gw.status_json();
    assert_eq!(st["job_id"], id.as_str());
    assert_eq!(st["state"], "RUNNING", "{st}");
    assert_eq!(st["gateway"], "healthy", "{st}");
    // The state directory's store and filesystem (issue 29), in JSON and in the text.
    let store = &st["store"];
    assert_eq!(store["kind"], "sqlite", "{st}");
    assert!(store["bytes"].as_u64().is_some_and(|b| b > 0), "{st}");
    assert_eq!(store["rows_dropped"], 0, "{st}");
    assert!(store["filesystem"]["available_bytes"].is_u64(), "{st}");
    let status_text = text(&gw.run("status", &[], Duration::from_secs(30)));
    assert!(
        status_text.contains("  store:    sqlite ") && status_text.contains("  state fs: "),
        "{status_text}"
    );
    assert_eq!(st["port"], port);
    let backends = st["backends"].as_array().expect("backends");
    assert_eq!(backends.len(), 2, "{st}");
    assert!(backends.iter().all(|b| b["state"] == "ready"), "{st}");
    let deployments = st["deployments"].as_array().expect("deployments");
    assert!(deployments.iter().all(|d| d["state"] == "healthy"), "{st}");
    let backend_pids: Vec<u64> = backends.iter().filter_map(|b| b["pid"].as_u64()).collect();
    assert_eq!(backend_pids.len(), 2);
    // The backend itself, on the node's loopback, wants its own key (issue 9, finding 11).
    let local = backends
        .iter()
        .find(|b| b["name"] == "local")
        .expect("local");
    let direct = format!("http://127.0.0.1:{}/v1", local["port"]);
    assert_eq!(chat(&direct, None, "mock-qwen").await.status(), 401);
    assert_eq!(chat(&direct, Some(&key), "mock-qwen").await.status(), 401);
    let text_status = gw.run("status", &[], Duration::from_secs(30));
    let t = String::from_utf8_lossy(&text_status.stdout);
    assert!(t.contains(&format!("job {id} RUNNING on {host}")), "{t}");

    // logs: the job's and one backend's.
    let logs = gw.run("logs", &["-n", "200"], Duration::from_secs(20));
    assert!(
        String::from_utf8_lossy(&logs.stdout).contains("llmgw ready on"),
        "{}",
        text(&logs)
    );
    let blog = gw.run("logs", &["--backend", "local"], Duration::from_secs(20));
    assert!(
        String::from_utf8_lossy(&blog.stdout).contains("listening on"),
        "{}",
        text(&blog)
    );

    // 8. No secret in the script, the job's processes, SLURM's view, or any log.
    let mut places: Vec<(String, String)> = vec![
        (
            "job.sbatch".into(),
            std::fs::read_to_string(gw.dir.join("job.sbatch")).unwrap(),
        ),
        (
            "ps".into(),
            String::from_utf8_lossy(
                &Command::new("ps")
                    .args(["-eo", "args"])
                    .output()
                    .unwrap()
                    .stdout,
            )
            .to_string(),
        ),
        (
            "scontrol".into(),
            String::from_utf8_lossy(
                &Command::new("scontrol")
                    .args(["show", "job", &id])
                    .output()
                    .unwrap()
                    .stdout,
            )
            .to_string(),
        ),
    ];
    for entry in std::fs::read_dir(gw.dir.join("backends")).unwrap() {
        let p = entry.unwrap().path();
        places.push((
            p.display().to_string(),
            std::fs::read_to_string(&p).unwrap(),
        ));
    }
    places.push((
        "job log".into(),
        std::fs::read_to_string(gw.dir.join(format!("slurm-{id}.log"))).unwrap(),
    ));
    for (what, content) in &places {
        assert!(!content.contains(&key), "the API key leaked into {what}");
    }
    assert_eq!(mode(&gw.dir.join("key")), "600");
    assert_eq!(mode(&gw.dir), "700");

    // A second start of the same name is refused while it runs.
    let again = gw.run(
        "start",
        &["-c", &cfg.display().to_string()],
        Duration::from_secs(20),
    );
    assert!(!again.status.success());
    let msg = String::from_utf8_lossy(&again.stderr);
    assert!(
        msg.contains("already") && msg.contains("llmgw stop"),
        "{msg}"
    );
    assert_eq!(gw.job_id().as_deref(), Some(id.as_str()));

    // stop → gone, endpoint removed, backends gone, status says so.
    let stop = gw.run("stop", &[], Duration::from_secs(90));
    assert!(stop.status.success(), "{}", text(&stop));
    assert!(
        String::from_utf8_lossy(&stop.stdout).contains(&format!("stopped job {id}")),
        "{}",
        text(&stop)
    );
    assert_eq!(job_state(&id), None, "job still listed by squeue");
    assert!(!gw.dir.join("endpoint.json").exists());
    for pid in backend_pids {
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists() || is_zombie(pid),
            "backend {pid} survived"
        );
    }
    assert!(
        pids_with(&tag).is_empty(),
        "orphaned backend processes: {:?}",
        pids_with(&tag)
    );
    let st = gw.status_json();
    assert_eq!(st["running"], false, "{st}");
    assert_ne!(st["state"], "RUNNING", "{st}");
    let t = gw.run("status", &[], Duration::from_secs(30));
    assert!(
        String::from_utf8_lossy(&t.stdout).contains("not running"),
        "{}",
        text(&t)
    );
    // Stopping again is not an error.
    let again = gw.run("stop", &[], Duration::from_secs(30));
    assert!(again.status.success(), "{}", text(&again));
}

/// Permission bits of a file or directory, in octal ("755").
fn mode(p: &Path) -> String {
    let m = std::fs::metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .permissions()
        .mode();
    format!("{:o}", m & 0o777)
}

// 4. Two gateways, one configured port: the second takes another; both work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_same_port_both_work() {
    let Some(_cluster) = cluster() else { return };
    let port = free_port();
    let a = Gw::new("a");
    let b = Gw::new("b");
    let cfg_a = a.config(&config(port, &format!("{}-m", a.name), "", "", "5s"));
    let cfg_b = b.config(&config(port, &format!("{}-m", b.name), "", "", "5s"));
    let ja = a.start_json(&cfg_a);
    let jb = b.start_json(&cfg_b);
    let (pa, pb) = (ja["port"].as_u64().unwrap(), jb["port"].as_u64().unwrap());
    assert_eq!(pa, u64::from(port), "{ja}");
    assert_ne!(pa, pb, "both on one port: {ja} {jb}");
    for (gw, j) in [(&a, &ja), (&b, &jb)] {
        assert!(j["ssh"].as_str().unwrap().starts_with("ssh -N -L "), "{j}");
        let resp = chat(j["url"].as_str().unwrap(), Some(&gw.key()), "local").await;
        assert_eq!(resp.status(), 200, "{j}");
    }
    assert_ne!(a.key(), b.key());
    for gw in [&a, &b] {
        let out = gw.run("stop", &[], Duration::from_secs(60));
        assert!(out.status.success(), "{}", text(&out));
    }
}

// 5. The local backend crashes mid-run: restarted; meanwhile the fallback serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crashed_backend_restarts_and_fallback_serves() {
    let Some(_cluster) = cluster() else { return };
    let cloud = common::mock("cloud-mock", llmgw::mock::Behavior::default()).await;
    let gw = Gw::new("crash");
    let fallback = common::openai_model("cloud", "mock-cloud", &cloud.base_url(), "");
    let cfg = gw.config(&config(
        0,
        &format!("{}-m", gw.name),
        r#", "--crash-after-ms", "2500""#,
        &fallback,
        "5s",
    ));
    let j = gw.start_json(&cfg);
    let url = j["url"].as_str().unwrap().to_string();
    let key = gw.key();

    // Keep asking for "local" until it has crashed and come back at least once.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut served_by = Vec::new();
    let mut restarts = 0;
    while Instant::now() < deadline {
        let resp = chat(&url, Some(&key), "local").await;
        assert_eq!(
            resp.status(),
            200,
            "a request failed while the backend restarted"
        );
        served_by.push(
            resp.headers()["x-llmgw-deployment"]
                .to_str()
                .unwrap()
                .to_string(),
        );
        let st = gw.status_json();
        restarts = st["backends"][0]["restarts"].as_u64().unwrap_or(0);
        let local_again = served_by.iter().rev().take(1).any(|d| d == "local-1");
        if restarts >= 1 && served_by.iter().any(|d| d == "cloud-1") && local_again {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(served_by.iter().any(|d| d == "local-1"), "{served_by:?}");
    assert!(
        served_by.iter().any(|d| d == "cloud-1"),
        "fallback never used: {served_by:?}"
    );
    assert!(restarts >= 1, "no restart seen");
    assert!(cloud.state.request_count() >= 1);
    let t = gw.run("status", &[], Duration::from_secs(30));
    assert!(
        String::from_utf8_lossy(&t.stdout).contains("restarts "),
        "{}",
        text(&t)
    );
    let out = gw.run("stop", &[], Duration::from_secs(60));
    assert!(out.status.success(), "{}", text(&out));
}

// 6. stop while 20 streams are in flight: all complete; no backend process survives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_drains_in_flight_streams_and_leaves_no_orphans() {
    let Some(_cluster) = cluster() else { return };
    let gw = Gw::new("drain");
    let tag = format!("{}-m", gw.name);
    let cfg = gw.config(&config(
        0,
        &tag,
        r#", "--chunks", "20", "--chunk-delay-ms", "150""#,
        "",
        "30s",
    ));
    let j = gw.start_json(&cfg);
    let url = j["url"].as_str().unwrap().to_string();
    let key = gw.key();
    assert_eq!(pids_with(&tag).len(), 1, "expected one backend process");

    let mut streams = Vec::new();
    for _ in 0..20 {
        let resp = client()
            .post(format!("{url}/chat/completions"))
            .bearer_auth(&key)
            .header("content-type", "application/json")
            .body(chat_body("local", true))
            .send()
            .await
            .expect("stream request");
        assert_eq!(resp.status(), 200);
        streams.push(tokio::spawn(read_sse(resp)));
    }
    // All 20 are mid-stream (about 3 s each; starting them takes milliseconds); now stop.
    let stop_sent = Instant::now();
    let stop = {
        let args = gw.target_args();
        tokio::task::spawn_blocking(move || {
            let mut c = common::llmgw_command();
            c.arg("stop").args(args);
            run_bounded(c, Duration::from_secs(90))
        })
    };
    for s in streams {
        let events = s.await.expect("stream task");
        assert!(
            events.last().is_some_and(|e| e.is_done()),
            "a stream was cut: {events:?}"
        );
        assert_eq!(common::content_events(&events).len(), 20);
        // It was in flight when stop was sent (what this test is about), not over before.
        assert!(
            events.last().is_some_and(|e| e.at > stop_sent),
            "a stream ended before stop was sent"
        );
    }
    let out = stop.await.unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let id = gw.job_id().unwrap();
    assert_eq!(job_state(&id), None);
    assert!(
        pids_with(&tag).is_empty(),
        "orphaned backend processes: {:?}",
        pids_with(&tag)
    );
    let log = std::fs::read_to_string(gw.dir.join(format!("slurm-{id}.log"))).unwrap();
    assert!(
        log.contains("SIGTERM received") && log.contains("stopped"),
        "{log}"
    );
    assert!(!log.contains("grace period over"), "{log}");
}

// 7. A job that fails at start: non-zero exit, SLURM's reason and the log tail, fast.
#[test]
fn failing_job_reports_reason_and_log_tail() {
    let Some(_cluster) = cluster() else { return };
    let gw = Gw::new("fail");
    let cfg = gw.config(
        r#"
[server]
host = "0.0.0.0"
port = 0
[[models]]
name = "local"
provider = "sglang"
launch = { command = ["/nonexistent/sglang-engine", "--port", "{port}"] }
"#,
    );
    // The state directory exists already and is shared (0755): start leaves its mode
    // alone and keeps what is private private file by file (issue 9, finding 9).
    std::fs::create_dir(&gw.dir).unwrap();
    std::fs::set_permissions(&gw.dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let t0 = Instant::now();
    let out = gw.run(
        "start",
        &["-c", &cfg.display().to_string(), "--timeout", "60s"],
        Duration::from_secs(90),
    );
    let took = t0.elapsed();
    assert!(!out.status.success(), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("FAILED") && err.contains("NonZeroExitCode"),
        "{err}"
    );
    assert!(
        err.contains("cannot start backend") && err.contains("/nonexistent/sglang-engine"),
        "{err}"
    );
    assert!(took < Duration::from_secs(20), "took {took:?}");
    let id = gw.job_id().expect("job was submitted");
    assert_eq!(job_state(&id), None);
    assert_eq!(
        mode(&gw.dir),
        "755",
        "start changed the mode of a shared directory"
    );
    for private in [
        "key".to_string(),
        "config.toml".into(),
        "job.sbatch".into(),
        "job.json".into(),
        format!("slurm-{id}.log"),
    ] {
        assert_eq!(mode(&gw.dir.join(&private)), "600", "{private}");
    }

    // --json: one object with the reason and the tail.
    let out = gw.run(
        "start",
        &[
            "-c",
            &cfg.display().to_string(),
            "--json",
            "--timeout",
            "60s",
        ],
        Duration::from_secs(90),
    );
    assert!(!out.status.success());
    let v: Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    assert_eq!(v["ok"], false);
    assert_eq!(v["state"], "FAILED");
    assert!(
        v["log_tail"].as_array().is_some_and(|t| !t.is_empty()),
        "{v}"
    );

    // sbatch refuses the job (no such partition): the shared directory still keeps 0755.
    let rejected = Gw::new("rejected");
    std::fs::create_dir(&rejected.dir).unwrap();
    std::fs::set_permissions(&rejected.dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let cfg = rejected.config(&format!(
        "{}\n[slurm]\npartition = \"no-such-partition\"\n",
        "[server]\nhost = \"0.0.0.0\"\nport = 0"
    ));
    let out = rejected.run(
        "start",
        &["-c", &cfg.display().to_string()],
        Duration::from_secs(30),
    );
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("partition"),
        "{}",
        text(&out)
    );
    assert!(rejected.job_id().is_none());
    assert_eq!(mode(&rejected.dir), "755");
    assert_eq!(mode(&rejected.dir.join("key")), "600");

    // A broken config never reaches SLURM: file:line:col, nothing submitted.
    let bad = Gw::new("badcfg");
    let cfg = bad.config("[server]\nport = \"four\"\n");
    let out = bad.run(
        "start",
        &["-c", &cfg.display().to_string()],
        Duration::from_secs(20),
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(":2:"), "{err}");
    assert!(bad.job_id().is_none());
}

// status, logs and stop while the job waits in the queue; start --no-wait.
#[test]
fn pending_job_status_logs_and_stop() {
    let Some(_cluster) = cluster() else { return };
    let gw = Gw::new("pending");
    let toml = config(0, &format!("{}-m", gw.name), "", "", "5s").replace(
        "[slurm]\n",
        "[slurm]\nextra_directives = [\"--begin=now+1hour\"]\n",
    );
    let cfg = gw.config(&toml);
    let out = gw.run(
        "start",
        &["-c", &cfg.display().to_string(), "--no-wait", "--json"],
        Duration::from_secs(30),
    );
    assert!(out.status.success(), "{}", text(&out));
    let v: Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    let id = v["job_id"].as_str().expect("job id").to_string();
    assert_eq!(gw.job_id().as_deref(), Some(id.as_str()));

    let st = gw.status_json();
    assert_eq!(st["state"], "PENDING", "{st}");
    assert_eq!(st["reason"], "BeginTime", "{st}");
    assert_eq!(st["running"], false);
    let t = gw.run("status", &[], Duration::from_secs(30));
    assert!(
        String::from_utf8_lossy(&t.stdout).contains(&format!("job {id} PENDING (BeginTime)")),
        "{}",
        text(&t)
    );
    let logs = gw.run("logs", &[], Duration::from_secs(30));
    assert!(!logs.status.success());
    assert!(
        String::from_utf8_lossy(&logs.stderr).contains("no log yet"),
        "{}",
        text(&logs)
    );

    let t0 = Instant::now();
    let stop = gw.run("stop", &[], Duration::from_secs(60));
    assert!(stop.status.success(), "{}", text(&stop));
    assert!(t0.elapsed() < Duration::from_secs(15));
    assert_eq!(job_state(&id), None);
    let st = gw.status_json();
    assert_eq!(st["state"], "CANCELLED", "{st}");
}

// Issue 11, acceptance 5: virtual keys, teams and spend live in the state directory's
// SQLite file and survive `stop` + `start` (a new job, maybe on another node).
#[tokio::test(flavor = "multi_thread")]
async fn keys_and_spend_survive_stop_and_start() {
    let Some(_cluster) = cluster() else { return };
    let gw = Gw::new("keys");
    let tag = format!("{}-local", gw.name);
    let cfg = gw.config(&config(0, &tag, "", "", "10s"));
    let keys = |args: &[&str]| {
        let out = gw.run("keys", args, Duration::from_secs(30));
        assert!(out.status.success(), "keys {args:?}: {}", text(&out));
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let url = gw.start_json(&cfg)["url"].as_str().unwrap().to_string();
    let created: Value = serde_json::from_str(&keys(&[
        "create",
        "--alias",
        "kim",
        "--models",
        "local",
        "--max-budget",
        "5",
        "--json",
    ]))
    .unwrap();
    let key = created["key"].as_str().unwrap().to_string();
    keys(&["create", "--alias", "lee", "--json"]);
    keys(&["revoke", "lee"]);
    for _ in 0..3 {
        assert_eq!(chat(&url, Some(&key), "local").await.status(), 200);
    }
    let out = gw.run("stop", &[], Duration::from_secs(90));
    assert!(out.status.success(), "stop: {}", text(&out));
    assert!(
        gw.dir.join("llmgw.db").exists(),
        "no database in the state directory"
    );

    let url = gw.start_json(&cfg)["url"].as_str().unwrap().to_string();
    assert_eq!(chat(&url, Some(&key), "local").await.status(), 200);
    let list = keys(&["list"]);
    assert!(list.lines().any(|l| l.starts_with("kim")), "{list}");
    assert!(
        list.lines()
            .any(|l| l.starts_with("lee") && l.ends_with("revoked")),
        "{list}"
    );
    let out = gw.run("spend", &["--by", "key", "--json"], Duration::from_secs(30));
    assert!(out.status.success(), "spend: {}", text(&out));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let kim = report["groups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["name"] == "kim")
        .unwrap_or_else(|| panic!("no spend for kim: {report}"));
    assert_eq!(kim["requests"], 4, "{report}");
    let out = gw.run("stop", &[], Duration::from_secs(90));
    assert!(out.status.success(), "stop: {}", text(&out));
}
