//! The real OpenAI Codex CLI (`@openai/codex` from npm, pinned in scripts/codex.sh,
//! which scripts/test.sh runs) against `llmgw serve`'s `/v1/responses` in front of an
//! OpenAI-compatible group (the mock, which answers tool calls), with llmgw's default
//! config (no `drop_params`): `codex exec` unchanged, with a custom model provider
//! (`wire_api = "responses"`), a scratch HOME, telemetry and update checks off, and every
//! address but 127.0.0.1 sent to a closed proxy port.
//!
//! Issue 22, acceptance 1: a plain answer, a function-tool round trip and a
//! namespaced-tool round trip (the tool's result reaches the upstream), with a model
//! named in Codex's config (top-level `tools`, a `namespace` tool) and with Codex's
//! default model setting (tools in an `additional_tools` input item, a `custom` freeform
//! tool inside a namespace). The test installs Codex itself when npm is there; it skips,
//! saying so, only when npm is missing outside CI.

// Test and benchmark code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod common;

use common::{closed_port, mock, skip, Gateway};
use llmgw::mock::{Behavior, MockUpstream};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::Duration;

const KEY: &str = "sk-llmgw-codex-test-key";
/// The model Codex 0.171 uses when its config names none.
const CODEX_DEFAULT_MODEL: &str = "gpt-6.2-sol";
/// Codex's answer to a namespaced call it got without its namespace.
const UNSUPPORTED: &str = "unsupported call";

/// The `codex` command: scripts/codex.sh installs it (once) and names it.
fn codex() -> Option<PathBuf> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/codex.sh");
    let npm = std::process::Command::new("npm")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !npm {
        skip("npm is not installed, so the Codex CLI cannot be (apt-get install npm; scripts/test.sh installs Codex)");
        return None;
    }
    let out = std::process::Command::new("bash")
        .arg(&script)
        .output()
        .expect("run scripts/codex.sh");
    assert!(
        out.status.success(),
        "scripts/codex.sh failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let path = String::from_utf8_lossy(&out.stdout).trim().to_string();
    Some(PathBuf::from(path))
}

/// A scratch HOME with Codex's config: the gateway as a custom provider.
fn codex_home(dir: &Path, gw: &Gateway, model: Option<&str>, web_search: bool) -> PathBuf {
    let home = dir.join(format!("home-{}-{web_search}", model.unwrap_or("default")));
    std::fs::create_dir_all(home.join(".codex")).unwrap();
    std::fs::create_dir_all(home.join("work")).unwrap();
    let model_line = model
        .map(|m| format!("model = \"{m}\"\n"))
        .unwrap_or_default();
    // web_search is a hosted tool: only OpenAI's servers run it. A chat upstream cannot,
    // so llmgw refuses it by name unless the deployment drops what it cannot do.
    let search = if web_search {
        ""
    } else {
        "web_search = \"disabled\"\n"
    };
    let cfg = format!(
        "{model_line}{search}model_provider = \"llmgw\"\ncheck_for_update_on_startup = false\n\
         [model_providers.llmgw]\nname = \"llmgw\"\nbase_url = \"{}\"\nenv_key = \"LLMGW_CODEX_TEST_KEY\"\n\
         wire_api = \"responses\"\n[analytics]\nenabled = false\n[feedback]\nenabled = false\n\
         [otel]\nexporter = \"none\"\n",
        gw.base_url()
    );
    std::fs::write(home.join(".codex/config.toml"), cfg).unwrap();
    home
}

/// `codex exec PROMPT` in `home`; its combined output and success.
async fn exec(codex: &Path, home: &Path, prompt: &str) -> (bool, String) {
    let mut cmd = tokio::process::Command::new(codex);
    cmd.args(["exec", "--skip-git-repo-check", prompt])
        .current_dir(home.join("work"))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", home)
        .env("CODEX_HOME", home.join(".codex"))
        .env("LLMGW_CODEX_TEST_KEY", KEY)
        // Nothing but the gateway on 127.0.0.1: every other address goes to a closed port.
        .env("ALL_PROXY", format!("http://127.0.0.1:{}", closed_port()))
        .env("HTTPS_PROXY", format!("http://127.0.0.1:{}", closed_port()))
        .env("NO_PROXY", "127.0.0.1,localhost")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    // A bound so that a hang fails the test instead of stalling the suite; not a timing.
    let out = tokio::time::timeout(Duration::from_secs(300), cmd.output())
        .await
        .expect("codex exec did not finish within 300 s")
        .expect("run codex");
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// The mock answers `reply` in text, or first calls the tool whose name contains `tool`
/// with `args`.
fn answer(m: &MockUpstream, tool: Option<(&str, &str)>) {
    m.state.set_behavior(|b| {
        b.tool_calls = tool.is_some();
        b.tool_pick = tool.map(|(t, a)| (t.to_string(), Some(a.to_string())));
    });
}

/// The tool result the upstream received last (the last `tool` message), and the name
/// of the function it answers.
fn tool_result(m: &MockUpstream) -> (String, String) {
    let body: Value = serde_json::from_slice(&m.state.last_body().unwrap()).unwrap();
    let msgs = body["messages"].as_array().unwrap();
    let result = msgs
        .iter()
        .rev()
        .find(|m| m["role"] == "tool")
        .unwrap_or_else(|| panic!("no tool result reached the upstream: {body}"));
    let id = result["tool_call_id"].as_str().unwrap();
    let name = msgs
        .iter()
        .filter_map(|m| m["tool_calls"].as_array())
        .flatten()
        .find(|c| c["id"] == id)
        .map(|c| c["function"]["name"].as_str().unwrap().to_string())
        .unwrap();
    let text = match &result["content"] {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    (name, text)
}

#[tokio::test(flavor = "multi_thread")]
async fn codex_exec_through_a_chat_group() {
    let Some(codex) = codex() else {
        return;
    };
    let upstream = mock(
        "codex",
        Behavior {
            reply: "Hello from the mock upstream".into(),
            ..Behavior::default()
        },
    )
    .await;
    let models = [
        common::openai_model("qwen", "qwen", &upstream.base_url(), ""),
        common::openai_model(CODEX_DEFAULT_MODEL, "qwen", &upstream.base_url(), ""),
    ]
    .concat();
    let cfg = format!("[server]\nmaster_key = \"env:TEST_MASTER_KEY\"\n{models}");
    let gw = Gateway::builder(&cfg)
        .env("TEST_MASTER_KEY", KEY)
        .start()
        .await;
    let dir = tempfile::tempdir().unwrap();
    let named = codex_home(dir.path(), &gw, Some("qwen"), false);
    let default = codex_home(dir.path(), &gw, None, false);
    let fail = |what: &str, out: &str| -> ! {
        panic!(
            "{what}\n--- codex\n{out}\n--- gateway log\n{}",
            gw.stderr_text()
        )
    };

    for (home, setting) in [
        (&named, "model = \"qwen\""),
        (&default, "Codex's default model"),
    ] {
        // A plain answer.
        answer(&upstream, None);
        let (ok, out) = exec(&codex, home, "Say hello.").await;
        if !ok || !out.contains("Hello from the mock upstream") {
            fail(&format!("{setting}: a plain answer"), &out);
        }
        let body: Value = serde_json::from_slice(&upstream.state.last_body().unwrap()).unwrap();
        assert!(body.get("client_metadata").is_none(), "{setting}: {body}");
    }

    // Named model: top-level tools. A function tool: Codex runs the command, its output
    // reaches the upstream.
    answer(
        &upstream,
        Some(("exec_command", r#"{"cmd":"echo llmgw-roundtrip-22"}"#)),
    );
    let (ok, out) = exec(&codex, &named, "Run echo.").await;
    let (name, result) = tool_result(&upstream);
    if !ok || name != "exec_command" || !result.contains("llmgw-roundtrip-22") {
        fail(&format!("function round trip: {name}: {result}"), &out);
    }
    // A namespaced tool (multi_agent_v1.close_agent): Codex runs it only when the call
    // comes back with its namespace.
    answer(&upstream, Some(("close_agent", r#"{"target":"nobody"}"#)));
    let (ok, out) = exec(&codex, &named, "Close the agent.").await;
    let (name, result) = tool_result(&upstream);
    // Codex's multi-agent tool itself answers (the id is not one of its agents).
    let ran = result.contains("invalid agent id nobody");
    if !ok || name != "multi_agent_v1__close_agent" || result.contains(UNSUPPORTED) || !ran {
        fail(&format!("namespaced round trip: {name}: {result}"), &out);
    }

    // Codex's default model: every tool in an additional_tools item. A namespaced
    // function (clock.sleep) …
    answer(&upstream, Some(("clock__sleep", r#"{"duration_ms":1}"#)));
    let (ok, out) = exec(&codex, &default, "Wait a moment.").await;
    let (name, result) = tool_result(&upstream);
    if !ok || name != "clock__sleep" || !result.contains("Sleep completed") {
        fail(
            &format!("default model, namespaced function: {name}: {result}"),
            &out,
        );
    }
    // … and the freeform `exec` tool (custom, in namespace `functions`): its input is
    // JavaScript, run by Codex, whose output reaches the upstream.
    answer(
        &upstream,
        Some((
            "functions__exec",
            r#"{"input":"text('llmgw-js-' + (20 + 2))"}"#,
        )),
    );
    let (ok, out) = exec(&codex, &default, "Compute.").await;
    let (name, result) = tool_result(&upstream);
    if !ok || name != "functions__exec" || !result.contains("llmgw-js-22") {
        fail(
            &format!("default model, custom tool: {name}: {result}"),
            &out,
        );
    }

    // Codex's web search (a hosted tool) left on: a clear 400 naming it, which Codex shows.
    let searching = codex_home(dir.path(), &gw, Some("qwen"), true);
    answer(&upstream, None);
    let (ok, out) = exec(&codex, &searching, "Say hello.").await;
    assert!(
        !ok,
        "a hosted tool on a chat upstream must not pass silently:\n{out}"
    );
    assert!(
        out.contains("web_search") && out.contains("drop_params"),
        "Codex shows llmgw's reason:\n{out}"
    );
}
