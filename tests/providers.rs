//! Cloud providers through the real `llmgw` binary: Anthropic and Gemini mocks that speak
//! the providers' wire formats (src/mock_cloud.rs), translated to and from OpenAI's API.

// Test and benchmark code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod common;

use common::{
    expect_openai_error, json_body, mock, openai_model, read_sse, run_python_script, Gateway,
    SseEvent,
};
use llmgw::mock::{Behavior, Fault};
use llmgw::mock_cloud::CloudMock;
use serde_json::{json, Value};

const ANTHROPIC_KEY: &str = "sk-ant-SECRET-4c1d9e";
const GEMINI_KEY: &str = "AIzaSECRET-77b2f0";

fn cloud_model(
    name: &str,
    provider: &str,
    model: &str,
    base: &str,
    key_env: &str,
    extra: &str,
) -> String {
    format!(
        "[[models]]\nname = \"{name}\"\nprovider = \"{provider}\"\nmodel = \"{model}\"\napi_base = \"{base}\"\napi_key = \"env:{key_env}\"\n{extra}\n"
    )
}

async fn gateway(cfg: &str) -> Gateway {
    Gateway::builder(cfg)
        .env("TEST_ANTHROPIC_KEY", ANTHROPIC_KEY)
        .env("TEST_GEMINI_KEY", GEMINI_KEY)
        .env("LLMGW_LOG", "debug")
        .start()
        .await
}

fn weather_tools() -> Value {
    json!([{"type": "function", "function": {"name": "get_weather", "description": "Current weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}])
}

/// A tool call: (id, name, arguments).
type Call = (String, String, String);
/// Content, tool calls, finish reason and usage of a stream.
type Assembled = (String, Vec<Call>, Option<String>, Option<Value>);

/// Assembles a stream's chunks.
fn assemble(events: &[SseEvent]) -> Assembled {
    let mut text = String::new();
    let mut tools: Vec<Call> = Vec::new();
    let mut finish = None;
    let mut usage = None;
    for e in events {
        let Some(v) = e.json() else { continue };
        assert!(v.get("error").is_none(), "unexpected error event: {v}");
        assert_eq!(v["object"], "chat.completion.chunk");
        if v["usage"].is_object() {
            usage = Some(v["usage"].clone());
        }
        let Some(c) = v["choices"].get(0) else {
            continue;
        };
        if let Some(s) = c["delta"]["content"].as_str() {
            text.push_str(s);
        }
        for t in c["delta"]["tool_calls"].as_array().into_iter().flatten() {
            let i = t["index"].as_u64().unwrap() as usize;
            if i >= tools.len() {
                tools.resize(i + 1, Default::default());
            }
            if let Some(id) = t["id"].as_str() {
                tools[i].0 = id.into();
            }
            if let Some(n) = t["function"]["name"].as_str() {
                tools[i].1 = n.into();
            }
            if let Some(a) = t["function"]["arguments"].as_str() {
                tools[i].2.push_str(a);
            }
        }
        if let Some(f) = c["finish_reason"].as_str() {
            finish = Some(f.to_string());
        }
    }
    (text, tools, finish, usage)
}

#[tokio::test(flavor = "multi_thread")]
async fn anthropic_round_trips() {
    let up = CloudMock::anthropic(
        "ant",
        Behavior {
            chunks: 4,
            ..Behavior::default()
        },
    )
    .await
    .unwrap();
    let cfg = cloud_model(
        "claude",
        "anthropic",
        "claude-test",
        &up.base_url(),
        "TEST_ANTHROPIC_KEY",
        "max_tokens = 321",
    );
    let gw = gateway(&cfg).await;

    // Plain chat, multi-turn with a system prompt.
    let body = json!({"model": "claude", "temperature": 0.5, "stop": ["END"],
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello"}, {"role": "user", "content": "Again"}]});
    let resp = gw
        .post_json("/v1/chat/completions", &body.to_string())
        .await;
    assert_eq!(resp.status(), 200);
    let v = json_body(resp).await;
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["choices"][0]["message"]["content"], "Hello from ant");
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    assert_eq!(v["usage"]["prompt_tokens"], 9);
    assert_eq!(v["usage"]["completion_tokens"], 4);
    let sent = up.state.last_json().unwrap();
    assert_eq!(sent["system"][0]["text"], "Be brief.");
    assert_eq!(sent["max_tokens"], 321);
    assert_eq!(sent["stop_sequences"], json!(["END"]));
    assert_eq!(sent["messages"].as_array().unwrap().len(), 3);
    assert_eq!(up.state.last_key().as_deref(), Some(ANTHROPIC_KEY));

    // Streaming text with include_usage.
    let body = json!({"model": "claude", "stream": true, "stream_options": {"include_usage": true},
        "messages": [{"role": "user", "content": "Hi"}]});
    let resp = gw
        .post_json("/v1/chat/completions", &body.to_string())
        .await;
    assert_eq!(resp.status(), 200);
    let events = read_sse(resp).await;
    assert!(events.last().unwrap().is_done());
    let (text, tools, finish, usage) = assemble(&events);
    assert_eq!(text, "Hello from ant");
    assert!(tools.is_empty());
    assert_eq!(finish.as_deref(), Some("stop"));
    assert_eq!(usage.unwrap()["total_tokens"], 13);

    // A streamed tool call, then the tool result in the next turn.
    let body = json!({"model": "claude", "stream": true, "tools": weather_tools(),
        "messages": [{"role": "user", "content": "Weather in Paris?"}]});
    let events = read_sse(
        gw.post_json("/v1/chat/completions", &body.to_string())
            .await,
    )
    .await;
    let (_, tools, finish, usage) = assemble(&events);
    assert!(usage.is_none());
    assert_eq!(finish.as_deref(), Some("tool_calls"));
    assert_eq!(tools.len(), 1);
    let (id, name, args) = tools[0].clone();
    assert_eq!(name, "get_weather");
    assert_eq!(
        serde_json::from_str::<Value>(&args).unwrap(),
        json!({"city": "Paris"})
    );
    let body = json!({"model": "claude", "tools": weather_tools(), "messages": [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": null, "tool_calls": [{"id": id, "type": "function",
            "function": {"name": name, "arguments": args}}]},
        {"role": "tool", "tool_call_id": id, "content": "18C and sunny"}]});
    let v = json_body(
        gw.post_json("/v1/chat/completions", &body.to_string())
            .await,
    )
    .await;
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    let sent = up.state.last_json().unwrap();
    assert_eq!(sent["messages"][1]["content"][0]["type"], "tool_use");
    assert_eq!(
        sent["messages"][1]["content"][0]["input"],
        json!({"city": "Paris"})
    );
    assert_eq!(
        sent["messages"][2]["content"][0],
        json!({"type": "tool_result", "tool_use_id": id, "content": "18C and sunny"})
    );

    // Stop reasons the mock is told to report.
    for (stop, want) in [("max_tokens", "length"), ("stop_sequence", "stop")] {
        up.state.set_extra(|e| e.stop_reason = Some(stop.into()));
        let v = json_body(
            gw.post_json("/v1/chat/completions", &common::chat_body("claude", false))
                .await,
        )
        .await;
        assert_eq!(v["choices"][0]["finish_reason"], want);
        let events = read_sse(
            gw.post_json("/v1/chat/completions", &common::chat_body("claude", true))
                .await,
        )
        .await;
        assert_eq!(assemble(&events).2.as_deref(), Some(want));
    }
    up.state.set_extra(|e| e.stop_reason = None);

    // Unsupported parameters are named, never silently dropped (drop_params is off).
    let body = json!({"model": "claude", "logit_bias": {"1": 5}, "messages": [{"role": "user", "content": "x"}]});
    let err = expect_openai_error(
        gw.post_json("/v1/chat/completions", &body.to_string())
            .await,
        400,
    )
    .await;
    assert_eq!(err["param"], "logit_bias");
    // Embeddings are not an Anthropic API.
    let resp = gw
        .post_json(
            "/v1/embeddings",
            &json!({"model": "claude", "input": "x"}).to_string(),
        )
        .await;
    expect_openai_error(resp, 400).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn gemini_round_trips() {
    let up = CloudMock::gemini(
        "gem",
        Behavior {
            chunks: 3,
            ..Behavior::default()
        },
    )
    .await
    .unwrap();
    let cfg = format!(
        "{}{}",
        cloud_model(
            "gemini",
            "gemini",
            "gemini-test",
            &up.base_url(),
            "TEST_GEMINI_KEY",
            "drop_params = true"
        ),
        cloud_model(
            "gemini-embed",
            "gemini",
            "text-embedding-004",
            &up.base_url(),
            "TEST_GEMINI_KEY",
            ""
        )
    );
    let gw = gateway(&cfg).await;

    let body = json!({"model": "gemini", "max_tokens": 64, "logprobs": true, "n": 1,
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]});
    let v = json_body(
        gw.post_json("/v1/chat/completions", &body.to_string())
            .await,
    )
    .await;
    assert_eq!(v["choices"][0]["message"]["content"], "Hello from gem");
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    assert_eq!(
        v["usage"],
        json!({"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12})
    );
    let sent = up.state.last_json().unwrap();
    assert_eq!(sent["systemInstruction"]["parts"][0]["text"], "Be brief.");
    assert_eq!(
        sent["generationConfig"],
        json!({"maxOutputTokens": 64}),
        "logprobs dropped"
    );
    assert_eq!(
        up.state.last_uri().unwrap(),
        "/v1beta/models/gemini-test:generateContent"
    );
    assert_eq!(up.state.last_key().as_deref(), Some(GEMINI_KEY));

    let body = json!({"model": "gemini", "stream": true, "stream_options": {"include_usage": true},
        "messages": [{"role": "user", "content": "Hi"}]});
    let events = read_sse(
        gw.post_json("/v1/chat/completions", &body.to_string())
            .await,
    )
    .await;
    assert!(events.last().unwrap().is_done());
    let (text, _, finish, usage) = assemble(&events);
    assert_eq!(text, "Hello from gem");
    assert_eq!(finish.as_deref(), Some("stop"));
    assert_eq!(usage.unwrap()["total_tokens"], 12);
    assert_eq!(
        up.state.last_uri().unwrap(),
        "/v1beta/models/gemini-test:streamGenerateContent?alt=sse"
    );

    let body = json!({"model": "gemini", "stream": true, "tools": weather_tools(),
        "messages": [{"role": "user", "content": "Weather in Paris?"}]});
    let events = read_sse(
        gw.post_json("/v1/chat/completions", &body.to_string())
            .await,
    )
    .await;
    let (_, tools, finish, _) = assemble(&events);
    assert_eq!(finish.as_deref(), Some("tool_calls"));
    let (id, name, args) = tools[0].clone();
    assert_eq!(name, "get_weather");
    let body = json!({"model": "gemini", "tools": weather_tools(), "messages": [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "tool_calls": [{"id": id, "type": "function", "function": {"name": name, "arguments": args}}]},
        {"role": "tool", "tool_call_id": id, "content": "{\"temp\": 18}"}]});
    let v = json_body(
        gw.post_json("/v1/chat/completions", &body.to_string())
            .await,
    )
    .await;
    assert_eq!(v["choices"][0]["message"]["content"], "Hello from gem");
    let sent = up.state.last_json().unwrap();
    assert_eq!(
        sent["contents"][2]["parts"][0],
        json!({"functionResponse": {"name": "get_weather", "response": {"temp": 18}}})
    );

    for (reason, want) in [("MAX_TOKENS", "length"), ("SAFETY", "content_filter")] {
        up.state.set_extra(|e| e.stop_reason = Some(reason.into()));
        let v = json_body(
            gw.post_json("/v1/chat/completions", &common::chat_body("gemini", false))
                .await,
        )
        .await;
        assert_eq!(v["choices"][0]["finish_reason"], want);
    }
    up.state.set_extra(|e| e.stop_reason = None);

    let body = json!({"model": "gemini-embed", "input": ["one", "two"], "dimensions": 4});
    let v = json_body(gw.post_json("/v1/embeddings", &body.to_string()).await).await;
    assert_eq!(v["object"], "list");
    assert_eq!(v["data"].as_array().unwrap().len(), 2);
    assert_eq!(v["data"][1]["embedding"].as_array().unwrap().len(), 4);
    assert!(up
        .state
        .last_uri()
        .unwrap()
        .ends_with("text-embedding-004:batchEmbedContents"));
}

/// 529 overloaded before the stream (HTTP error, or an `error` event before any
/// content) falls back; an error event after content reaches the client as an OpenAI
/// error event, and a cut stream ends with one too: never a hang.
#[tokio::test(flavor = "multi_thread")]
async fn anthropic_overloaded_falls_back() {
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
    let backup = mock("backup", Behavior::default()).await;
    let cfg = format!(
        "[router]\nnum_retries = 0\n[router.fallbacks]\nclaude = [\"backup\"]\n\n{}{}",
        cloud_model(
            "claude",
            "anthropic",
            "claude-test",
            &ant.base_url(),
            "TEST_ANTHROPIC_KEY",
            ""
        ),
        openai_model("backup", "mock-model", &backup.base_url(), "")
    );
    let gw = gateway(&cfg).await;
    for stream in [false, true] {
        let resp = gw
            .post_json("/v1/chat/completions", &common::chat_body("claude", stream))
            .await;
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["x-llmgw-deployment"], "backup-1");
        if stream {
            assert_eq!(
                common::streamed_text(&read_sse(resp).await),
                "Hello from backup"
            );
        } else {
            assert_eq!(
                json_body(resp).await["choices"][0]["message"]["content"],
                "Hello from backup"
            );
        }
    }
    // Overloaded as the first event of a 200 stream: nothing sent yet, so it falls back.
    ant.state.set_behavior(|b| b.fault = None);
    ant.state.set_extra(|e| e.stream_error_after = Some(0));
    let before = backup.state.request_count();
    let resp = gw
        .post_json("/v1/chat/completions", &common::chat_body("claude", true))
        .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(
        common::streamed_text(&read_sse(resp).await),
        "Hello from backup"
    );
    assert_eq!(backup.state.request_count(), before + 1);
    // Overloaded after content went out: the client gets an error event.
    ant.state.set_extra(|e| e.stream_error_after = Some(2));
    ant.state
        .set_behavior(|b| b.chunk_delay = std::time::Duration::from_millis(30));
    let events = read_sse(
        gw.post_json("/v1/chat/completions", &common::chat_body("claude", true))
            .await,
    )
    .await;
    let last = events.iter().rev().find_map(|e| e.json()).unwrap();
    assert!(
        last["error"]["message"]
            .as_str()
            .unwrap()
            .contains("Overloaded"),
        "{last}"
    );
    // Cut mid-stream: an error event, not a hang.
    ant.state.set_extra(|e| e.stream_error_after = None);
    ant.state.set_behavior(|b| b.cut_after = Some(5));
    let events = read_sse(
        gw.post_json("/v1/chat/completions", &common::chat_body("claude", true))
            .await,
    )
    .await;
    assert!(events
        .iter()
        .any(|e| e.json().is_some_and(|v| v.get("error").is_some())));
    assert!(!events.iter().any(|e| e.is_done()));
}

/// A 429 from Gemini (with RetryInfo) is classified as a rate limit and falls back.
#[tokio::test(flavor = "multi_thread")]
async fn gemini_rate_limit_falls_back() {
    let gem = CloudMock::gemini(
        "gem",
        Behavior {
            fault: Some(Fault {
                status: 429,
                rate: 1.0,
                retry_after: Some("1".into()),
                message: "Resource has been exhausted".into(),
            }),
            ..Behavior::default()
        },
    )
    .await
    .unwrap();
    let backup = mock("backup", Behavior::default()).await;
    let cfg = format!(
        "[router]\nnum_retries = 0\n[router.fallbacks]\ngemini = [\"backup\"]\n\n{}{}",
        cloud_model(
            "gemini",
            "gemini",
            "gemini-test",
            &gem.base_url(),
            "TEST_GEMINI_KEY",
            ""
        ),
        openai_model("backup", "mock-model", &backup.base_url(), "")
    );
    let gw = gateway(&cfg).await;
    let resp = gw
        .post_json("/v1/chat/completions", &common::chat_body("gemini", true))
        .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-llmgw-deployment"], "backup-1");
    assert_eq!(
        common::streamed_text(&read_sse(resp).await),
        "Hello from backup"
    );
    assert!(gem.state.request_count() >= 1);

    // Without a fallback the client sees an OpenAI-shaped 429.
    let cfg = cloud_model(
        "gemini",
        "gemini",
        "gemini-test",
        &gem.base_url(),
        "TEST_GEMINI_KEY",
        "",
    );
    let gw = gateway(&format!("[router]\nnum_retries = 0\n\n{cfg}")).await;
    let err = expect_openai_error(
        gw.post_json("/v1/chat/completions", &common::chat_body("gemini", false))
            .await,
        429,
    )
    .await;
    assert_eq!(err["type"], "rate_limit_error");
}

/// Provider keys never show up in the gateway's logs (at debug level) or in any error
/// it returns, whatever goes wrong.
#[tokio::test(flavor = "multi_thread")]
async fn keys_never_leak() {
    let ant = CloudMock::anthropic(
        "ant",
        Behavior {
            fault: Some(Fault {
                status: 401,
                rate: 1.0,
                retry_after: None,
                message: "invalid x-api-key".into(),
            }),
            ..Behavior::default()
        },
    )
    .await
    .unwrap();
    let gem = CloudMock::gemini("gem", Behavior::default()).await.unwrap();
    let dead = format!("http://127.0.0.1:{}/v1beta", common::closed_port());
    let cfg = format!(
        "[router]\nnum_retries = 0\n\n{}{}{}",
        cloud_model(
            "claude",
            "anthropic",
            "claude-test",
            &ant.base_url(),
            "TEST_ANTHROPIC_KEY",
            ""
        ),
        cloud_model(
            "gemini",
            "gemini",
            "gemini-test",
            &gem.base_url(),
            "TEST_GEMINI_KEY",
            ""
        ),
        cloud_model(
            "dead",
            "gemini",
            "gemini-test",
            &dead,
            "TEST_GEMINI_KEY",
            ""
        )
    );
    let gw = gateway(&cfg).await;
    let mut bodies = Vec::new();
    for (model, stream) in [
        ("claude", false),
        ("claude", true),
        ("gemini", false),
        ("gemini", true),
        ("dead", false),
        ("dead", true),
    ] {
        let resp = gw
            .post_json("/v1/chat/completions", &common::chat_body(model, stream))
            .await;
        bodies.push(resp.text().await.unwrap());
    }
    let bad = json!({"model": "gemini", "messages": [{"role": "tool", "tool_call_id": "x", "content": "y"}]});
    bodies.push(
        gw.post_json("/v1/chat/completions", &bad.to_string())
            .await
            .text()
            .await
            .unwrap(),
    );
    assert_eq!(gem.state.last_key().as_deref(), Some(GEMINI_KEY));
    assert!(
        !gem.state.last_uri().unwrap().contains(GEMINI_KEY),
        "the key must not be in the URL"
    );
    // Let the log writer catch up with the last request.
    gw.wait_for_log(
        std::time::Duration::from_secs(5),
        "for the last request",
        |l| l.contains("dead"),
    )
    .await;
    let logs = format!("{}{}", gw.stderr_text(), gw.stdout_text());
    for key in [ANTHROPIC_KEY, GEMINI_KEY] {
        assert!(!logs.contains(key), "a key leaked into the log:\n{logs}");
        for b in &bodies {
            assert!(!b.contains(key), "a key leaked into a response: {b}");
        }
    }
}

/// The unchanged OpenAI Python SDK streams a tool call from an Anthropic-backed and a
/// Gemini-backed group and gets the same object shapes as from an OpenAI-backed group
/// (tests/openai_sdk_tools.py). Needs `python3 -m pip install openai`; fails, never skips.
#[tokio::test(flavor = "multi_thread")]
async fn openai_sdk_streams_tool_calls_from_every_provider() {
    let probe = std::process::Command::new("python3")
        .args(["-c", "import openai"])
        .output();
    match probe {
        Ok(o) if o.status.success() => {}
        Ok(o) => panic!(
            "the OpenAI Python SDK is not installed: run `python3 -m pip install openai`; {}",
            String::from_utf8_lossy(&o.stderr).trim()
        ),
        Err(e) => panic!("python3 is needed for this test: {e}"),
    }
    let oai = mock(
        "oai",
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
    let cfg = format!(
        "{}{}{}",
        openai_model("gpt-tools", "mock-model", &oai.base_url(), ""),
        cloud_model(
            "claude",
            "anthropic",
            "claude-test",
            &ant.base_url(),
            "TEST_ANTHROPIC_KEY",
            ""
        ),
        cloud_model(
            "gemini",
            "gemini",
            "gemini-test",
            &gem.base_url(),
            "TEST_GEMINI_KEY",
            ""
        )
    );
    let gw = gateway(&cfg).await;
    let stdout = run_python_script(
        &gw,
        "openai_sdk_tools.py",
        &["gpt-tools", "claude", "gemini"],
        "unused-on-loopback",
    )
    .await;
    eprintln!("{stdout}");
    assert!(stdout.contains("all ok"), "{stdout}");
}
