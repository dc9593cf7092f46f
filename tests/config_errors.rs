//! Bad configs make `llmgw serve` exit non-zero with one line pointing at the problem
//! (`llmgw: <file>:<line>:<col>: what is wrong`), never a panic or a backtrace. Without a
//! config, `serve` runs the built-in quickstart, and says what to start for it.

// Test and benchmark code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod common;

use common::{Finished, Gateway, GatewayBuilder};
use std::time::Duration;

const EXIT_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs `serve` on `config` (with a backtrace requested, to prove none is printed).
async fn serve_bad(config: &str) -> Finished {
    GatewayBuilder::new(config)
        .env("RUST_BACKTRACE", "1")
        .run_to_exit(EXIT_TIMEOUT)
        .await
}

/// Asserts the run failed with exactly one stderr line `llmgw: <file>:<line>:<col>: …`
/// and returns the part after the location.
fn expect_located_error(out: &Finished, line: usize, col: Option<usize>) -> String {
    assert!(!out.status.success(), "must exit non-zero: {out:?}");
    assert_eq!(
        out.status.code(),
        Some(1),
        "an error exit, not a crash: {out:?}"
    );
    for bad in ["panicked", "backtrace", "RUST_BACKTRACE", "thread '"] {
        assert!(
            !out.stderr.contains(bad),
            "{bad:?} in stderr: {}",
            out.stderr
        );
    }
    let lines: Vec<&str> = out.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "exactly one line: {:?}", out.stderr);
    let file = out.config_path.as_ref().unwrap().display().to_string();
    let prefix = format!("llmgw: {file}:");
    let rest = lines[0]
        .strip_prefix(&prefix)
        .unwrap_or_else(|| panic!("{:?} does not start with {prefix:?}", lines[0]));
    let mut parts = rest.splitn(3, ':');
    let got_line: usize = parts.next().unwrap().parse().expect("a line number");
    let got_col: usize = parts.next().unwrap().parse().expect("a column number");
    let message = parts.next().expect("a message after file:line:col:").trim();
    assert_eq!(got_line, line, "line in {:?}", lines[0]);
    if let Some(col) = col {
        assert_eq!(got_col, col, "column in {:?}", lines[0]);
    }
    assert!(!message.is_empty());
    message.to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_key_is_located() {
    let out = serve_bad("[server]\nport = 4000\nmax_body_byte = 10\n").await;
    let msg = expect_located_error(&out, 3, Some(1));
    assert!(msg.contains("max_body_byte"), "{msg}");

    let cfg =
        "[[models]]\nname = \"m\"\nprovider = \"openai\"\n  api_bsae = \"http://127.0.0.1:1/v1\"\n";
    let out = serve_bad(cfg).await;
    let msg = expect_located_error(&out, 4, Some(3));
    assert!(msg.contains("api_bsae"), "{msg}");
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_type_is_located() {
    let out = serve_bad("# comment\n[server]\nport = \"four thousand\"\n").await;
    let msg = expect_located_error(&out, 3, Some(8));
    assert!(msg.contains("integer") || msg.contains("u16"), "{msg}");

    let out = serve_bad("[[models]]\nname = 7\nprovider = \"openai\"\n").await;
    expect_located_error(&out, 2, None);
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_values_are_located() {
    let out = serve_bad("[router]\nstrategy = \"fastest\"\n").await;
    let msg = expect_located_error(&out, 2, None);
    assert!(msg.contains("fastest"), "{msg}");
    assert!(
        msg.contains("least-busy"),
        "lists the valid strategies: {msg}"
    );

    let out = serve_bad("[server]\nshutdown_grace = \"3 fortnights\"\n").await;
    let msg = expect_located_error(&out, 2, None);
    assert!(msg.contains("fortnights"), "{msg}");

    let cfg =
        "[[models]]\nname = \"m\"\nprovider = \"openai\"\napi_base = \"ftp://example.org/v1\"\n";
    let out = serve_bad(cfg).await;
    let msg = expect_located_error(&out, 4, None);
    assert!(msg.contains("http://"), "{msg}");

    let cfg = "[[models]]\nname = \"m\"\nprovider = \"opneai\"\n";
    let out = serve_bad(cfg).await;
    let msg = expect_located_error(&out, 3, None);
    assert!(msg.contains("opneai"), "{msg}");

    // Only an OpenAI-compatible upstream can serve the Responses API itself.
    let cfg = "[[models]]\nname = \"c\"\nprovider = \"anthropic\"\nresponses_api = true\n";
    let out = serve_bad(cfg).await;
    let msg = expect_located_error(&out, 2, None);
    assert!(msg.contains("responses_api"), "{msg}");
}

#[tokio::test(flavor = "multi_thread")]
async fn invalid_toml_is_located() {
    let out = serve_bad("[server]\nport = 4000\nhost = \n").await;
    expect_located_error(&out, 3, None);
}

#[tokio::test(flavor = "multi_thread")]
async fn missing_env_var_is_named() {
    let cfg = "[[models]]\nname = \"m\"\nprovider = \"openai\"\napi_base = \"http://127.0.0.1:1/v1\"\napi_key = \"env:LLMGW_TEST_SURELY_UNSET_42\"\n";
    let out = serve_bad(cfg).await;
    let msg = expect_located_error(&out, 5, None);
    assert!(msg.contains("LLMGW_TEST_SURELY_UNSET_42"), "{msg}");

    // The same variable set: the config loads and the gateway starts.
    let gw = Gateway::builder(cfg)
        .env("LLMGW_TEST_SURELY_UNSET_42", "sk-present")
        .start()
        .await;
    assert_eq!(gw.get("/health/liveness").await.status(), 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn missing_config_file_is_one_line() {
    let mut cmd = common::llmgw_command();
    let out = cmd
        .args(["serve", "-c", "/nonexistent/llmgw-test.toml", "--port", "0"])
        .env("RUST_BACKTRACE", "1")
        .output()
        .expect("run llmgw");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.starts_with("llmgw: "), "{stderr}");
    assert!(stderr.contains("/nonexistent/llmgw-test.toml"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread")]
async fn default_config_starts() {
    let mut gw = GatewayBuilder::default_config().start().await;
    let v = common::json_body(gw.get("/v1/models").await).await;
    assert_eq!(
        v["data"][0]["id"], "local",
        "the quickstart's model group: {v}"
    );
    assert_eq!(gw.get("/health/readiness").await.status(), 200);
    assert_eq!(gw.endpoint.bind, "127.0.0.1", "loopback by default");
    assert_eq!(gw.endpoint.pid, gw.pid());
    gw.sigterm();
    assert!(gw.wait_exit(EXIT_TIMEOUT).await.success());
}

/// The quickstart with nothing on its upstream's port (a newcomer's first try): the 502
/// and the warning at start say what to start, not only that nothing answered.
#[tokio::test(flavor = "multi_thread")]
async fn quickstart_without_a_backend_says_what_to_start() {
    if std::net::TcpStream::connect("127.0.0.1:30000").is_ok() {
        eprintln!("skipped: something listens on 127.0.0.1:30000, the quickstart's upstream");
        return;
    }
    let gw = GatewayBuilder::default_config().start().await;
    let what_to_start = |text: &str| {
        for needle in [
            "127.0.0.1:30000",
            "SGLang",
            "--port 30000",
            "llmgw mock-upstream --port 30000",
            "llmgw serve -c FILE",
        ] {
            assert!(text.contains(needle), "{needle:?} not in: {text}");
        }
    };
    let warning = gw
        .wait_for_log(EXIT_TIMEOUT, "about the quickstart", |l| {
            l.contains("WARN") && l.contains("mock-upstream")
        })
        .await;
    what_to_start(&warning);

    for stream in [false, true] {
        let resp = gw
            .post_json("/v1/chat/completions", &common::chat_body("local", stream))
            .await;
        let err = common::expect_openai_error(resp, 502).await;
        assert_eq!(err["code"], "upstream_unreachable", "{err:?}");
        let message = err["message"].as_str().unwrap_or_default();
        assert!(message.contains("connection refused"), "{message}");
        what_to_start(message);
    }

    // A config file of one's own gets the plain error: the hint belongs to the quickstart.
    let api_base = format!("http://127.0.0.1:{}/v1", common::closed_port());
    let gw = Gateway::start(&common::openai_model("local", "default", &api_base, "")).await;
    let resp = gw
        .post_json("/v1/chat/completions", &common::chat_body("local", false))
        .await;
    let err = common::expect_openai_error(resp, 502).await;
    let message = err["message"].as_str().unwrap_or_default();
    assert!(message.contains("connection refused"), "{message}");
    assert!(!message.contains("mock-upstream"), "{message}");
    assert!(
        !gw.stderr_text().contains("mock-upstream"),
        "{}",
        gw.stderr_text()
    );
}
