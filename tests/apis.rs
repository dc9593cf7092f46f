//! Every client's own API through the real `llmgw` binary: Anthropic Messages
//! (`/v1/messages`, `/v1/messages/count_tokens`; the unchanged Anthropic Python SDK) and
//! OpenAI Responses (`/v1/responses`; the unchanged OpenAI Python SDK) in front of
//! OpenAI-compatible, Anthropic and Gemini mock groups, with the router's fallbacks,
//! cache and headers. The SDK tests need `python3` with `anthropic` and `openai`
//! (scripts/test.sh installs them); they fail, never skip, when those are missing.

// Test and benchmark code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod common;

use common::{json_body, mock, read_sse, run_python_script, Gateway, SseEvent};
use llmgw::mock::{Behavior, Fault};
use llmgw::mock_cloud::{mock_token_count, CloudMock};
use serde_json::{json, Value};
use std::time::Duration;

const KEY: &str = "sk-llmgw-apis-test-key";
const ANTHROPIC_KEY: &str = "sk-ant-SECRET-0d41c7";
const GEMINI_KEY: &str = "AIzaSECRET-5e2a91";

fn model(name: &str, provider: &str, upstream: &str, base: &str, extra: &str) -> String {
    let key = match provider {
        "anthropic" => "api_key = \"env:TEST_ANTHROPIC_KEY\"\n",
        "gemini" => "api_key = \"env:TEST_GEMINI_KEY\"\n",
        _ => "",
    };
    format!(
        "[[models]]\nname = \"{name}\"\nprovider = \"{provider}\"\nmodel = \"{upstream}\"\n\
         api_base = \"{base}\"\n{key}{extra}\n"
    )
}

async fn gateway(models: &str, more: &str) -> Gateway {
    let cfg = format!("[server]\nmaster_key = \"env:TEST_MASTER_KEY\"\n{more}\n{models}");
    Gateway::builder(&cfg)
        .env("TEST_MASTER_KEY", KEY)
        .env("TEST_ANTHROPIC_KEY", ANTHROPIC_KEY)
        .env("TEST_GEMINI_KEY", GEMINI_KEY)
        .start()
        .await
}

/// `POST path` with the master key as `x-api-key` (as the Anthropic SDK sends it).
async fn post(gw: &Gateway, path: &str, body: &Value) -> reqwest::Response {
    gw.client()
        .post(gw.url(path))
        .header("x-api-key", KEY)
        .header("anthropic-version", "2023-06-01")
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap_or_else(|e| panic!("POST {path}: {e:?}"))
}

fn python_has(module: &str) {
    let probe = std::process::Command::new("python3")
        .args(["-c", &format!("import {module}")])
        .output();
    match probe {
        Ok(o) if o.status.success() => {}
        Ok(o) => panic!(
            "the Python package {module} is not installed: run `python3 -m pip install \
             {module}` (scripts/test.sh does this); python3 said: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        ),
        Err(e) => panic!("python3 is needed for this test (scripts/test.sh installs it): {e}"),
    }
}

/// The Anthropic event types of a stream, in order.
fn kinds(events: &[SseEvent]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| Some(e.json()?["type"].as_str()?.to_string()))
        .collect()
}

/// The text of an Anthropic stream's text deltas.
fn anthropic_text(events: &[SseEvent]) -> String {
    events
        .iter()
        .filter_map(|e| {
            let v = e.json()?;
            (v["delta"]["type"] == "text_delta")
                .then(|| v["delta"]["text"].as_str().map(str::to_string))?
        })
        .collect()
}

/// Acceptance 1: the Anthropic SDK against an OpenAI-compatible (SGLang) and a Gemini
/// group: text, system prompt, streaming, a streamed tool call, a tool-result round
/// trip, usage, stop reasons, an upstream 400 as BadRequestError; count_tokens estimated.
#[tokio::test(flavor = "multi_thread")]
async fn anthropic_sdk_against_openai_compatible_and_gemini_groups() {
    python_has("anthropic");
    let qwen = mock(
        "qwen",
        Behavior {
            chunks: 4,
            tool_calls: true,
            ..Behavior::default()
        },
    )
    .await;
    let qwen_len = mock(
        "qwen-len",
        Behavior {
            finish_reason: Some("length".into()),
            ..Behavior::default()
        },
    )
    .await;
    let qwen_bad = mock(
        "qwen-bad",
        Behavior {
            fault: Some(Fault {
                status: 400,
                rate: 1.0,
                retry_after: None,
                message: "the prompt is malformed".into(),
            }),
            ..Behavior::default()
        },
    )
    .await;
    let gem = CloudMock::gemini(
        "gem",
        Behavior {
            chunks: 3,
            ..Behavior::default()
        },
    )
    .await
    .unwrap();
    let gem_len = CloudMock::gemini("gem-len", Behavior::default())
        .await
        .unwrap();
    gem_len
        .state
        .set_extra(|e| e.stop_reason = Some("MAX_TOKENS".into()));
    let gem_bad = CloudMock::gemini(
        "gem-bad",
        Behavior {
            fault: Some(Fault {
                status: 400,
                rate: 1.0,
                retry_after: None,
                message: "Invalid JSON payload".into(),
            }),
            ..Behavior::default()
        },
    )
    .await
    .unwrap();
    let models = [
        model("qwen", "sglang", "Qwen/Qwen3-0.6B", &qwen.base_url(), ""),
        model("qwen-len", "sglang", "q", &qwen_len.base_url(), ""),
        model("qwen-bad", "sglang", "q", &qwen_bad.base_url(), ""),
        model("gem", "gemini", "gemini-2.5-flash", &gem.base_url(), ""),
        model("gem-len", "gemini", "g", &gem_len.base_url(), ""),
        model("gem-bad", "gemini", "g", &gem_bad.base_url(), ""),
    ]
    .concat();
    let gw = gateway(&models, "").await;
    let out = run_python_script(
        &gw,
        "anthropic_sdk.py",
        &[
            "full:qwen:Hello from qwen",
            "full:gem:Hello from gem",
            "stop:qwen-len:max_tokens",
            "stop:gem-len:max_tokens",
            "bad:qwen-bad",
            "bad:gem-bad",
            "missing:no-such-group",
            "count:qwen:any",
            "count:gem:any",
            "models:gem",
        ],
        KEY,
    )
    .await;
    assert!(out.contains("anthropic_sdk.py: OK"), "{out}");
    // The OpenAI-compatible upstream got chat completions: the system prompt first, the
    // tool result as a `tool` message answering the call's id, usage asked for.
    // Six calls of the "full" check, each reaching the upstream once.
    assert_eq!(qwen.state.request_count(), 6);
    let body: Value = serde_json::from_slice(&qwen.state.last_body().unwrap()).unwrap();
    assert_eq!(body["model"], "Qwen/Qwen3-0.6B");
    let msgs = body["messages"].as_array().unwrap();
    assert_eq!(msgs.last().unwrap()["role"], "tool");
    assert_eq!(msgs.last().unwrap()["content"], "18 degrees, sunny");
    assert_eq!(
        msgs[msgs.len() - 2]["tool_calls"][0]["id"],
        msgs.last().unwrap()["tool_call_id"]
    );
    assert_eq!(body["tools"][0]["function"]["name"], "get_weather");
    assert_eq!(gem.state.request_count(), 6);
}

/// Acceptance 2: an Anthropic client in front of an Anthropic deployment: the SDK's bytes
/// reach the upstream unchanged except the model id, with its `anthropic-version` and
/// `anthropic-beta` headers and the deployment's own key. Counting is exact there.
#[tokio::test(flavor = "multi_thread")]
async fn anthropic_requests_pass_through_to_anthropic_unchanged() {
    python_has("anthropic");
    let ant = CloudMock::anthropic("ant", Behavior::default())
        .await
        .unwrap();
    let gw = gateway(
        &model("ant-pass", "anthropic", "claude-test", &ant.base_url(), ""),
        "",
    )
    .await;
    let beta = "token-efficient-tools-2025-02-19";
    let out = run_python_script(
        &gw,
        "anthropic_sdk.py",
        &[&format!("passthrough:ant-pass:{beta}")],
        KEY,
    )
    .await;
    let sent = out
        .lines()
        .find_map(|l| l.strip_prefix("SENT "))
        .unwrap_or_else(|| panic!("no SENT line: {out}"));
    use base64::Engine as _;
    let sent = base64::engine::general_purpose::STANDARD
        .decode(sent)
        .unwrap();
    let sent = String::from_utf8(sent).unwrap();
    assert_eq!(sent.matches("\"ant-pass\"").count(), 1, "{sent}");
    let want = sent.replacen("\"ant-pass\"", "\"claude-test\"", 1);
    let got = String::from_utf8(ant.state.last_body().unwrap().to_vec()).unwrap();
    assert_eq!(
        got, want,
        "the upstream must get the client's bytes, model swapped"
    );
    assert_eq!(
        ant.state.last_header("anthropic-beta").as_deref(),
        Some(beta)
    );
    let version = out
        .lines()
        .find_map(|l| l.strip_prefix("VERSION "))
        .unwrap_or_else(|| panic!("no VERSION line: {out}"));
    assert_eq!(
        ant.state.last_header("anthropic-version").as_deref(),
        Some(version)
    );
    assert_eq!(ant.state.last_key().as_deref(), Some(ANTHROPIC_KEY));
    assert!(ant.state.last_header("authorization").is_none());

    // Streamed, the upstream's events come back as they were sent.
    let resp = post(
        &gw,
        "/v1/messages",
        &json!({"model": "ant-pass", "max_tokens": 20, "stream": true,
            "messages": [{"role": "user", "content": "Hi"}]}),
    )
    .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-llmgw-deployment"], "ant-pass-1");
    let events = read_sse(resp).await;
    assert_eq!(anthropic_text(&events), "Hello from ant");
    let k = kinds(&events);
    assert!(
        k.contains(&"ping".to_string()),
        "the mock's ping passed through: {k:?}"
    );
    assert_eq!(k.last().map(String::as_str), Some("message_stop"));

    // count_tokens: the upstream's own count, for the request as the client sent it.
    let body = json!({"model": "ant-pass", "system": "Be brief and exact.",
        "messages": [{"role": "user", "content": "What is the weather in Paris today?"}]});
    let resp = post(&gw, "/v1/messages/count_tokens", &body).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-llmgw-token-count"], "exact");
    let v = json_body(resp).await;
    let mut upstream = body.clone();
    upstream["model"] = json!("claude-test");
    assert_eq!(v, json!({"input_tokens": mock_token_count(&upstream)}));
    assert_eq!(
        ant.state.last_uri().as_deref(),
        Some("/v1/messages/count_tokens")
    );
}

/// Acceptance 3: count_tokens answers for every provider kind: exact where the upstream
/// is Anthropic, estimated (tiktoken) elsewhere and when the Anthropic upstream cannot
/// be reached; a bad request is the upstream's 400 in Anthropic's shape.
#[tokio::test(flavor = "multi_thread")]
async fn count_tokens_for_every_provider_kind() {
    let up = mock("oa", Behavior::default()).await;
    let ant = CloudMock::anthropic("ant", Behavior::default())
        .await
        .unwrap();
    let gem = CloudMock::gemini("gem", Behavior::default()).await.unwrap();
    let dead = format!("http://127.0.0.1:{}/v1", common::closed_port());
    let models = [
        model("openai", "openai", "gpt-4o-mini", &up.base_url(), ""),
        model("sglang", "sglang", "qwen", &up.base_url(), ""),
        model(
            "azure",
            "azure",
            "gpt-4o",
            &dead,
            "api_version = \"2024-10-21\"\napi_key = \"env:TEST_GEMINI_KEY\"",
        ),
        model("anthropic", "anthropic", "claude-test", &ant.base_url(), ""),
        model("gemini", "gemini", "gemini-2.5-flash", &gem.base_url(), ""),
        model("anthropic-down", "anthropic", "claude-test", &dead, ""),
    ]
    .concat();
    let gw = gateway(&models, "").await;
    let text = "The quick brown fox jumps over the lazy dog. ".repeat(20);
    let mut estimates = Vec::new();
    for (group, how) in [
        ("openai", "estimate"),
        ("sglang", "estimate"),
        ("azure", "estimate"),
        ("anthropic", "exact"),
        ("gemini", "estimate"),
        ("anthropic-down", "estimate"),
    ] {
        let body = json!({"model": group, "system": "Be brief.",
            "messages": [{"role": "user", "content": text}],
            "tools": [{"name": "get_weather", "input_schema": {"type": "object"}}]});
        let resp = post(&gw, "/v1/messages/count_tokens", &body).await;
        assert_eq!(resp.status(), 200, "{group}");
        assert_eq!(resp.headers()["x-llmgw-token-count"], how, "{group}");
        let n = json_body(resp).await["input_tokens"].as_u64().unwrap();
        if how == "estimate" {
            // 20 × 10 words ≈ 200 tokens of text, plus a few.
            assert!((200..300).contains(&n), "{group}: {n}");
            estimates.push(n);
        } else {
            let mut upstream = body.clone();
            upstream["model"] = json!("claude-test");
            assert_eq!(n, mock_token_count(&upstream), "{group}");
        }
    }
    assert!(estimates.windows(2).all(|w| w[0] == w[1]), "{estimates:?}");
    assert_eq!(up.state.request_count(), 0, "estimates call no upstream");
    assert_eq!(gem.state.request_count(), 0);

    // The Anthropic upstream refuses the request: its 400, in Anthropic's shape.
    let resp = post(
        &gw,
        "/v1/messages/count_tokens",
        &json!({"model": "anthropic", "system": "no messages"}),
    )
    .await;
    assert_eq!(resp.status(), 400);
    let v = json_body(resp).await;
    assert_eq!(v["type"], "error");
    assert_eq!(v["error"]["type"], "invalid_request_error");
    // Unknown group: Anthropic's 404.
    let resp = post(
        &gw,
        "/v1/messages/count_tokens",
        &json!({"model": "nope", "messages": []}),
    )
    .await;
    assert_eq!(resp.status(), 404);
    assert_eq!(json_body(resp).await["error"]["type"], "not_found_error");
}

/// Acceptance 4: the OpenAI SDK's `client.responses.create`, streamed and not, with a
/// function tool round trip, against OpenAI-compatible, Anthropic and Gemini groups
/// (translated through chat completions, Messages and Gemini) and against an OpenAI
/// deployment that serves the Responses API itself (passed through).
#[tokio::test(flavor = "multi_thread")]
async fn openai_sdk_responses_against_every_kind() {
    python_has("openai");
    let qwen = mock(
        "qwen",
        Behavior {
            tool_calls: true,
            ..Behavior::default()
        },
    )
    .await;
    let gpt = mock(
        "gpt",
        Behavior {
            tool_calls: true,
            ..Behavior::default()
        },
    )
    .await;
    let ant = CloudMock::anthropic("ant", Behavior::default())
        .await
        .unwrap();
    let gem = CloudMock::gemini("gem", Behavior::default()).await.unwrap();
    let models = [
        model("qwen", "sglang", "qwen", &qwen.base_url(), ""),
        model("claude", "anthropic", "claude-test", &ant.base_url(), ""),
        model("gem", "gemini", "gemini-2.5-flash", &gem.base_url(), ""),
        model(
            "gpt",
            "openai",
            "gpt-5",
            &gpt.base_url(),
            "responses_api = true",
        ),
    ]
    .concat();
    let gw = gateway(&models, "").await;
    let out = run_python_script(
        &gw,
        "openai_responses.py",
        &[
            "qwen:Hello from qwen",
            "claude:Hello from ant",
            "gem:Hello from gem",
            "gpt:Hello from gpt",
        ],
        KEY,
    )
    .await;
    assert!(out.contains("openai_responses.py: OK"), "{out}");
    // Translated: chat completions with the call and its output.
    let body: Value = serde_json::from_slice(&qwen.state.last_body().unwrap()).unwrap();
    assert!(
        body.get("input").is_none() && body["messages"].is_array(),
        "{body}"
    );
    // Passed through: the Responses body itself, model swapped.
    let body: Value = serde_json::from_slice(&gpt.state.last_body().unwrap()).unwrap();
    assert_eq!(body["model"], "gpt-5");
    assert!(body["input"].is_array(), "{body}");
    let body = ant.state.last_json().unwrap();
    assert_eq!(body["messages"].as_array().unwrap().len(), 3, "{body}");
}

/// Acceptance 5: an Anthropic-format streaming request to an Anthropic group that
/// answers 529 (overloaded) before its first byte is served by its SGLang fallback,
/// translated; so is one whose stream starts with an overloaded error event.
#[tokio::test(flavor = "multi_thread")]
async fn anthropic_stream_falls_back_to_sglang_on_529() {
    let ant = CloudMock::anthropic(
        "ant",
        Behavior {
            fault: Some(Fault {
                status: 529,
                rate: 1.0,
                retry_after: None,
                message: "Overloaded".into(),
            }),
            ..Behavior::default()
        },
    )
    .await
    .unwrap();
    let qwen = mock("qwen", Behavior::default()).await;
    let models = [
        model("claude", "anthropic", "claude-test", &ant.base_url(), ""),
        model("qwen", "sglang", "qwen", &qwen.base_url(), ""),
    ]
    .concat();
    let gw = gateway(
        &models,
        "[router]\nnum_retries = 0\n[router.fallbacks]\nclaude = [\"qwen\"]\n",
    )
    .await;
    let body = json!({"model": "claude", "max_tokens": 64, "stream": true,
        "system": "Be brief.", "messages": [{"role": "user", "content": "Hi"}]});
    for round in 0..2 {
        let resp = post(&gw, "/v1/messages", &body).await;
        assert_eq!(resp.status(), 200, "round {round}");
        assert_eq!(resp.headers()["x-llmgw-fallback"], "qwen");
        assert_eq!(resp.headers()["x-llmgw-deployment"], "qwen-1");
        assert_eq!(
            resp.headers()["content-type"].to_str().unwrap(),
            "text/event-stream"
        );
        let events = read_sse(resp).await;
        let k = kinds(&events);
        assert_eq!(
            k.first().map(String::as_str),
            Some("message_start"),
            "{k:?}"
        );
        assert_eq!(k.last().map(String::as_str), Some("message_stop"), "{k:?}");
        assert_eq!(anthropic_text(&events), "Hello from qwen");
        let delta = events
            .iter()
            .filter_map(SseEvent::json)
            .find(|v| v["type"] == "message_delta")
            .unwrap();
        assert_eq!(delta["delta"]["stop_reason"], "end_turn");
        assert_eq!(delta["usage"]["output_tokens"], 5);
        // The second time: an overloaded error event first, inside a 200 stream.
        ant.state.set_behavior(|b| b.fault = None);
        ant.state.set_extra(|e| e.stream_error_after = Some(0));
    }
    assert_eq!(ant.state.request_count(), 2);
    assert_eq!(qwen.state.request_count(), 2);
    let sent: Value = serde_json::from_slice(&qwen.state.last_body().unwrap()).unwrap();
    assert_eq!(
        sent["messages"][0],
        json!({"role": "system", "content": "Be brief."})
    );
    assert_eq!(sent["stream_options"], json!({"include_usage": true}));
    assert_eq!(sent["max_tokens"], 64);
}

/// Errors in Anthropic's shape, Anthropic-shaped error events after the first byte, the
/// key in either header, the cache, and `x-llmgw-*` headers on /v1/messages.
#[tokio::test(flavor = "multi_thread")]
async fn messages_errors_auth_cache_and_headers() {
    let qwen = mock(
        "qwen",
        Behavior {
            chunks: 6,
            chunk_delay: Duration::from_millis(20),
            ..Behavior::default()
        },
    )
    .await;
    let gw = gateway(
        &model("qwen", "sglang", "qwen", &qwen.base_url(), ""),
        "[cache]\nenabled = true\n",
    )
    .await;
    let body = json!({"model": "qwen", "max_tokens": 16,
        "messages": [{"role": "user", "content": "Hi"}]});
    // No key: 401 in Anthropic's shape; the key as a bearer token works too.
    let resp = gw.post_json("/v1/messages", &body.to_string()).await;
    assert_eq!(resp.status(), 401);
    let v = json_body(resp).await;
    assert_eq!(v["type"], "error");
    assert_eq!(v["error"]["type"], "authentication_error");
    let resp = gw
        .client()
        .post(gw.url("/v1/messages"))
        .bearer_auth(KEY)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-llmgw-deployment"], "qwen-1");
    assert_eq!(resp.headers()["x-llmgw-attempts"], "1");
    assert!(resp.headers().contains_key("x-llmgw-overhead-ms"));
    assert_eq!(resp.headers()["x-llmgw-cache"], "miss");
    let v = json_body(resp).await;
    assert_eq!(v["type"], "message");
    // Anthropic's id form, whatever the translated upstream's id was.
    assert!(v["id"].as_str().unwrap().starts_with("msg_"), "{v}");
    assert_eq!(v["content"][0]["text"], "Hello from qwen");
    assert_eq!(v["usage"], json!({"input_tokens": 9, "output_tokens": 6}));
    // The same request again: a cache hit, in the same shape; streamed, stored and hit.
    let resp = post(&gw, "/v1/messages", &body).await;
    assert_eq!(resp.headers()["x-llmgw-cache"], "hit");
    assert_eq!(
        json_body(resp).await["content"][0]["text"],
        "Hello from qwen"
    );
    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    let first = read_sse(post(&gw, "/v1/messages", &streamed).await).await;
    let resp = post(&gw, "/v1/messages", &streamed).await;
    assert_eq!(resp.headers()["x-llmgw-cache"], "hit");
    let again = read_sse(resp).await;
    assert_eq!(anthropic_text(&again), anthropic_text(&first));
    assert_eq!(qwen.state.request_count(), 2);

    // Malformed requests: a 400 naming the field, in Anthropic's shape.
    for (bad, param) in [
        (json!({"model": "qwen", "max_tokens": 5}), "messages"),
        (
            json!({"model": "qwen", "max_tokens": 5, "messages": [{"role": "robot", "content": "x"}]}),
            "messages[0].role",
        ),
        (
            json!({"model": "qwen", "max_tokens": 0, "messages": []}),
            "max_tokens",
        ),
    ] {
        let resp = post(&gw, "/v1/messages", &bad).await;
        assert_eq!(resp.status(), 400, "{bad}");
        let v = json_body(resp).await;
        assert_eq!(v["error"]["type"], "invalid_request_error", "{bad}");
        assert!(
            v["error"]["message"].as_str().unwrap().contains(param),
            "{bad}: {v}"
        );
    }
    // Unknown group: 404 not_found_error.
    let resp = post(
        &gw,
        "/v1/messages",
        &json!({"model": "nope", "max_tokens": 5, "messages": []}),
    )
    .await;
    assert_eq!(resp.status(), 404);
    assert_eq!(json_body(resp).await["error"]["type"], "not_found_error");

    // A stream that breaks off after its first bytes ends with an Anthropic error event.
    qwen.state.set_behavior(|b| b.cut_after = Some(3));
    let mut cut = streamed.clone();
    cut["cache"] = json!({"no-cache": true});
    let events = read_sse(post(&gw, "/v1/messages", &cut).await).await;
    let last = events.last().and_then(SseEvent::json).unwrap();
    assert_eq!(last["type"], "error", "{last}");
    assert_eq!(last["error"]["type"], "api_error", "{last}");
    assert!(!kinds(&events).contains(&"message_stop".to_string()));
}
