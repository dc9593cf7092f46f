//! Backends that `serve` launches (issue 9, finding 11), run as real processes: the mock
//! upstream (`llmgw mock-upstream`) stands in for SGLang. Each backend requires its own
//! key, which only the gateway has; it inherits none of the gateway's secrets; and it does
//! not outlive a SIGKILLed gateway.

// Test and benchmark code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod common;

use common::{chat_body, client, json_body, Gateway};
use serde_json::Value;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

const MASTER_KEY: &str = "sk-llmgw-supervise-master-0123456789";
const PROVIDER_KEY: &str = "sk-provider-supervise-0123456789";
const OPENAI_KEY: &str = "sk-openai-in-the-shell-0123456789";

/// A config with a master key and the launched group "local" (`launch` as given).
fn local_model(launch: &str) -> String {
    format!(
        "[server]\nmaster_key = \"env:LLMGW_TEST_MASTER_KEY\"\n\n[[models]]\nname = \"local\"\n\
         provider = \"sglang\"\nmodel = \"m\"\nlaunch = {launch}\n"
    )
}

/// The one launched backend's pid and port, from `backends.json`.
fn backend(gw: &Gateway) -> (u32, u16) {
    let text = std::fs::read_to_string(gw.state_dir.join("backends.json")).expect("backends.json");
    let v: Value = serde_json::from_str(&text).unwrap();
    let b = &v["backends"][0];
    assert_eq!(b["state"], "ready", "{v}");
    (
        b["pid"].as_u64().expect("pid") as u32,
        b["port"].as_u64().expect("port") as u16,
    )
}

/// A chat request straight to the backend, around the gateway.
async fn direct(port: u16, key: Option<&str>) -> reqwest::StatusCode {
    let mut req = client()
        .post(format!("http://127.0.0.1:{port}/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(chat_body("m", false));
    if let Some(k) = key {
        req = req.bearer_auth(k);
    }
    req.send().await.expect("direct request").status()
}

/// The backend on `port` answers the gateway (as `mock_name`) and no one else: a chat
/// through the gateway (with the master key) succeeds; a direct one without the backend's
/// key, or with the master key, is refused.
async fn served_through_gateway_only(gw: &Gateway, port: u16, mock_name: &str) {
    let resp = gw
        .client()
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(MASTER_KEY)
        .header("content-type", "application/json")
        .body(chat_body("local", false))
        .send()
        .await
        .expect("gateway request");
    let status = resp.status();
    let body = json_body(resp).await;
    assert_eq!(status, 200, "{body}");
    let want = format!("Hello from {mock_name}");
    assert_eq!(body["choices"][0]["message"]["content"], want.as_str());
    let open = "the backend is open on loopback";
    assert_eq!(direct(port, None).await, 401, "{open}");
    assert_eq!(direct(port, Some(MASTER_KEY)).await, 401, "{open}");
}

/// `/proc/<pid>/<file>` split at NUL bytes.
fn proc_list(pid: u32, file: &str) -> Vec<String> {
    let bytes = std::fs::read(format!("/proc/{pid}/{file}")).expect("read /proc");
    String::from_utf8_lossy(&bytes)
        .split_terminator('\0')
        .map(str::to_string)
        .collect()
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit(')').next().map(|r| !r.trim().starts_with('Z')))
        .unwrap_or(false)
}

/// A `command` backend: requires the key the gateway sends (direct calls get 401), and
/// its environment has its `env` and the allow-list, none of the gateway's secrets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn command_backend_requires_its_key_and_inherits_no_secrets() {
    let cfg = format!(
        r#"{}
[[models]]
name = "cloud"
provider = "openai"
model = "m"
api_base = "http://127.0.0.1:{}/v1"
api_key = "env:LLMGW_TEST_PROVIDER_KEY"
"#,
        local_model(
            r#"{ command = ["{llmgw}", "mock-upstream", "--port", "{port}", "--name", "local-mock", "--api-key-env", "LLMGW_BACKEND_API_KEY"], env = { MY_SETTING = "kept" } }"#
        ),
        common::closed_port()
    );
    let gw = Gateway::builder(&cfg)
        .env("LLMGW_TEST_MASTER_KEY", MASTER_KEY)
        .env("LLMGW_TEST_PROVIDER_KEY", PROVIDER_KEY)
        .env("OPENAI_API_KEY", OPENAI_KEY)
        // Allowed by name, but it holds a provider key: still not passed on.
        .env("HF_TOKEN", PROVIDER_KEY)
        .env("HF_HOME", "/tmp/llmgw-test-hf")
        .env("SOME_OTHER_SETTING", "not-for-backends")
        .start()
        .await;
    let (pid, port) = backend(&gw);

    served_through_gateway_only(&gw, port, "local-mock").await;

    let env = proc_list(pid, "environ");
    let get = |name: &str| {
        env.iter()
            .find_map(|kv| kv.strip_prefix(&format!("{name}=")).map(str::to_string))
    };
    for secret in [MASTER_KEY, PROVIDER_KEY, OPENAI_KEY] {
        assert!(
            !env.iter().any(|kv| kv.contains(secret)),
            "a gateway secret reached the backend's environment: {env:?}"
        );
    }
    for name in [
        "LLMGW_TEST_MASTER_KEY",
        "LLMGW_TEST_PROVIDER_KEY",
        "OPENAI_API_KEY",
        "HF_TOKEN",
        "SOME_OTHER_SETTING",
    ] {
        assert_eq!(get(name), None, "{name} reached the backend");
    }
    assert_eq!(get("MY_SETTING").as_deref(), Some("kept"));
    assert_eq!(get("HF_HOME").as_deref(), Some("/tmp/llmgw-test-hf"));
    assert!(get("PATH").is_some(), "{env:?}");
    let key = get("LLMGW_BACKEND_API_KEY").expect("the backend's key");
    assert!(key.len() >= 32, "{key}");
    assert_eq!(direct(port, Some(&key)).await, 200);
    // The key is in no command line.
    assert!(!proc_list(pid, "cmdline").iter().any(|a| a.contains(&key)));
}

/// The default SGLang launch line gets the key in a private `--config` YAML file (SGLang
/// reads `api-key` from it), never on the command line. A stand-in `python` reads the file
/// the way SGLang does and serves the mock with that key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sglang_backend_gets_its_key_from_a_private_config_file() {
    let bin = tempfile::tempdir().unwrap();
    let record = bin.path().join("record");
    std::fs::create_dir(&record).unwrap();
    let python = bin.path().join("python");
    std::fs::write(
        &python,
        format!(
            r#"#!/bin/bash
# Stands in for `python -m sglang.launch_server ... --config FILE`.
printf '%s\0' "$@" > {rec}/argv
while [ $# -gt 0 ]; do
  case "$1" in
    --port) port=$2; shift ;;
    --config) config=$2; shift ;;
  esac
  shift
done
stat -c %a "$config" > {rec}/file-mode
stat -c %a "$(dirname "$config")" > {rec}/dir-mode
echo "$config" > {rec}/config-path
export LLMGW_BACKEND_API_KEY="$(sed -n 's/^api-key: "\(.*\)"$/\1/p' "$config")"
exec {llmgw} mock-upstream --port "$port" --name sglang-mock --model m --api-key-env LLMGW_BACKEND_API_KEY
"#,
            rec = record.display(),
            llmgw = common::BIN
        ),
    )
    .unwrap();
    std::fs::set_permissions(&python, std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = format!(
        "{}:{}",
        bin.path().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let cfg = local_model(r#"{ model_path = "/models/none", load_timeout = "30s" }"#);
    let mut gw = Gateway::builder(&cfg)
        .env("LLMGW_TEST_MASTER_KEY", MASTER_KEY)
        .env("PATH", path)
        .start()
        .await;
    let (_, port) = backend(&gw);

    served_through_gateway_only(&gw, port, "sglang-mock").await;

    let read = |name: &str| std::fs::read_to_string(record.join(name)).unwrap();
    assert_eq!(read("file-mode").trim(), "600");
    assert_eq!(read("dir-mode").trim(), "700");
    let argv: Vec<String> = read("argv")
        .split_terminator('\0')
        .map(str::to_string)
        .collect();
    let config_path = read("config-path").trim().to_string();
    assert!(
        argv.windows(2)
            .any(|w| w[0] == "--config" && w[1] == config_path),
        "{argv:?}"
    );
    let file = std::fs::read_to_string(&config_path).unwrap();
    let key = file
        .lines()
        .find_map(|l| l.strip_prefix("api-key: \""))
        .and_then(|k| k.strip_suffix('"'))
        .expect("api-key line")
        .to_string();
    assert!(
        !argv.iter().any(|a| a.contains(&key)),
        "key on the command line"
    );
    assert_eq!(direct(port, Some(&key)).await, 200);

    // The key file goes when the gateway stops.
    gw.sigterm();
    let status = gw.wait_exit(Duration::from_secs(30)).await;
    assert!(status.success(), "{status}: {}", gw.stderr_text());
    assert!(
        !Path::new(&config_path).exists(),
        "{config_path} outlived the gateway"
    );
}

/// A SIGKILLed gateway (no chance to stop anything) takes its backend with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkilled_gateway_leaves_no_backend() {
    let cfg = r#"
[[models]]
name = "local"
provider = "sglang"
model = "m"
launch = { command = ["{llmgw}", "mock-upstream", "--port", "{port}", "--name", "orphan-check"] }
"#;
    let mut gw = Gateway::builder(cfg).start().await;
    let (pid, _) = backend(&gw);
    assert!(alive(pid));
    gw.signal(nix::sys::signal::Signal::SIGKILL);
    gw.wait_exit(Duration::from_secs(10)).await;
    let t0 = Instant::now();
    while alive(pid) && t0.elapsed() < Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!alive(pid), "backend {pid} outlived its SIGKILLed gateway");
    eprintln!("backend gone {:?} after the gateway", t0.elapsed());
}
