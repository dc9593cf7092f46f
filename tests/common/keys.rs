//! Helpers for the virtual-key tests: a gateway with a master key, admin calls, requests
//! with a key, the `llmgw keys` / `llmgw spend` CLI.

use super::{chat_body, client, llmgw_command, GatewayBuilder};
use serde_json::{json, Value};
use std::path::Path;
use std::process::Output;
use std::time::Duration;

/// The master key of the test gateways (from `env:LLMGW_TEST_MASTER`).
pub const MASTER: &str = "test-master-key-0123456789";

/// Prices that make the mock's usage (9 prompt + `chunks` completion tokens) cost a
/// known amount: 9 × $100/M + 5 × $300/M = $0.0024 per request with 5 chunks.
pub const PRICED: &str = "input_cost_per_mtok = 100.0\noutput_cost_per_mtok = 300.0";
pub const COST_NANOS: i64 = 9 * 100 * 1000 + 5 * 300 * 1000;

/// A gateway serving `models` (one or more `[[models]]` tables) with the master key;
/// `extra` is appended (e.g. a `[store]` table).
pub fn gateway(models: &str, extra: &str) -> GatewayBuilder {
    let toml = format!("[server]\nmaster_key = \"env:LLMGW_TEST_MASTER\"\n\n{models}\n{extra}\n");
    GatewayBuilder::new(&toml).env("LLMGW_TEST_MASTER", MASTER)
}

/// An admin call with the master key: (status, JSON body).
pub async fn admin(
    base: &str,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut req = client()
        .request(method, format!("{base}{path}"))
        .bearer_auth(MASTER);
    if let Some(b) = body {
        req = req
            .header("content-type", "application/json")
            .body(b.to_string());
    }
    let resp = req.send().await.unwrap_or_else(|e| panic!("{path}: {e}"));
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap_or_default();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// `POST /key/generate`; returns the key and its info.
pub async fn new_key(base: &str, body: Value) -> (String, Value) {
    let (status, v) = admin(base, reqwest::Method::POST, "/key/generate", Some(body)).await;
    assert_eq!(status, 200, "{v}");
    (v["key"].as_str().expect("key in answer").to_string(), v)
}

/// A chat request with `key`; `include_usage` only for streams. A streamed answer is
/// read to its end before this returns (its headers and bytes are handed back as a
/// response), so the request is over, and charged in full, when the caller goes on: a
/// stream left unread is an abandoned one, charged for what was delivered by then.
pub async fn chat(
    base: &str,
    key: &str,
    model: &str,
    stream: bool,
    include_usage: bool,
) -> reqwest::Response {
    let mut body: Value = serde_json::from_str(&chat_body(model, stream)).expect("json");
    if stream && include_usage {
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
    if !stream {
        return resp;
    }
    let mut whole = axum::http::Response::builder().status(resp.status());
    for (name, value) in resp.headers() {
        whole = whole.header(name, value);
    }
    let bytes = resp.bytes().await.expect("read the whole stream");
    reqwest::Response::from(whole.body(bytes).expect("response"))
}

/// A gateway like [`gateway`] with more `[server]` settings (`server`: TOML lines).
pub fn gateway_with_server(models: &str, server: &str, extra: &str) -> GatewayBuilder {
    let toml = format!(
        "[server]\nmaster_key = \"env:LLMGW_TEST_MASTER\"\n{server}\n\n{models}\n{extra}\n"
    );
    GatewayBuilder::new(&toml).env("LLMGW_TEST_MASTER", MASTER)
}

/// Writes the master key where `start` keeps it, so the CLI finds it like `status`.
pub fn write_master_key(state_dir: &Path) {
    std::fs::write(state_dir.join("key"), MASTER).expect("write key file");
}

/// `llmgw <args> --state-dir <dir>` to its end (bounded), without LLMGW_MASTER_KEY.
pub fn cli(state_dir: &Path, args: &[&str]) -> Output {
    let mut c = llmgw_command();
    c.args(args)
        .arg("--state-dir")
        .arg(state_dir)
        .env_remove("LLMGW_MASTER_KEY")
        .env_remove("LLMGW_URL");
    let child = c
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn llmgw");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    rx.recv_timeout(Duration::from_secs(60))
        .expect("llmgw CLI finished within 60 s")
        .expect("wait for llmgw")
}

/// Asserts success and returns stdout.
pub fn cli_ok(state_dir: &Path, args: &[&str]) -> String {
    let out = cli(state_dir, args);
    assert!(
        out.status.success(),
        "llmgw {args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
