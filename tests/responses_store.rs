//! Stored Responses API answers (issue 22, acceptance 2) through the real `llmgw`
//! binary: the unchanged OpenAI Python SDK chains three turns with
//! `previous_response_id` through a chat upstream (which receives the whole
//! conversation), retrieves, lists input items and deletes, and another virtual key gets
//! 404; stored responses survive a restart (SQLite) and are shared by two replicas on a
//! real PostgreSQL; a `responses_api` deployment gets `previous_response_id` unchanged
//! only when it holds the whole chain, any other the conversation rebuilt.

// Test and benchmark code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod common;

use common::keys::{gateway, new_key, MASTER};
use common::postgres::PgServer;
use common::{json_body, mock, openai_model, run_python_script, Gateway};
use llmgw::mock::{Behavior, MockUpstream};
use serde_json::{json, Value};
use std::time::Duration;

const REPLY: &str = "Hello from the mock";

/// `POST /v1/responses` with `key`.
async fn create(gw: &Gateway, key: &str, body: Value) -> reqwest::Response {
    gw.client()
        .post(gw.url("/v1/responses"))
        .bearer_auth(key)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap()
}

async fn get(gw: &Gateway, key: &str, path: &str) -> reqwest::Response {
    gw.client()
        .get(gw.url(path))
        .bearer_auth(key)
        .send()
        .await
        .unwrap()
}

/// The user and assistant texts of the chat request the upstream received last.
fn conversation(m: &MockUpstream) -> Vec<String> {
    let body: Value = serde_json::from_slice(&m.state.last_body().unwrap()).unwrap();
    body["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            format!(
                "{}: {}",
                m["role"].as_str().unwrap(),
                m["content"].as_str().unwrap_or("")
            )
        })
        .collect()
}

fn chat_mock_config(up: &MockUpstream) -> String {
    openai_model("qwen", "qwen", &up.base_url(), "")
}

#[tokio::test(flavor = "multi_thread")]
async fn stored_responses_with_the_openai_sdk_survive_a_restart() {
    let up = mock(
        "store",
        Behavior {
            reply: REPLY.into(),
            ..Behavior::default()
        },
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let store = format!(
        "[store]\npath = \"{}\"\n",
        dir.path().join("llmgw.db").display()
    );
    let models = chat_mock_config(&up);
    let gw = gateway(&models, &store).start().await;
    let (alice, _) = new_key(&gw.url(""), json!({"key_alias": "alice"})).await;
    let (bob, _) = new_key(&gw.url(""), json!({"key_alias": "bob"})).await;
    let out = run_python_script(
        &gw,
        "openai_responses_store.py",
        &["qwen", REPLY, &bob],
        &alice,
    )
    .await;
    assert!(out.contains("openai_responses_store.py: OK"), "{out}");
    let ids: Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
    let r3 = ids["r3"].as_str().unwrap().to_string();
    // The third turn reached the upstream as the whole conversation (then two more
    // requests without it were made: look at the third's own body).
    let r = create(
        &gw,
        &alice,
        json!({"model": "qwen", "input": "turn four", "previous_response_id": r3, "store": false}),
    )
    .await;
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let reply = format!("assistant: {REPLY}");
    assert_eq!(
        conversation(&up),
        [
            "user: turn one",
            &reply,
            "user: turn two",
            &reply,
            "user: turn three",
            &reply,
            "user: turn four"
        ]
    );
    // The master key sees every key's responses.
    let r = get(&gw, MASTER, &format!("/v1/responses/{r3}")).await;
    assert_eq!(r.status(), 200);

    // A restart (same SQLite file): still there, still alice's, still continuable.
    let mut gw = gw;
    gw.sigterm();
    assert!(gw.wait_exit(Duration::from_secs(60)).await.success());
    let gw = gateway(&models, &store).start().await;
    let r = get(&gw, &alice, &format!("/v1/responses/{r3}")).await;
    assert_eq!(r.status(), 200);
    let body = json_body(r).await;
    assert_eq!(body["id"], r3.as_str());
    assert_eq!(body["output"][0]["content"][0]["text"], REPLY);
    let r = get(&gw, &bob, &format!("/v1/responses/{r3}")).await;
    assert_eq!(r.status(), 404);
    assert_eq!(json_body(r).await["error"]["code"], "not_found");
    let r = create(
        &gw,
        &alice,
        json!({"model": "qwen", "input": "after restart", "previous_response_id": r3}),
    )
    .await;
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    assert_eq!(conversation(&up).len(), 7);
}

#[tokio::test(flavor = "multi_thread")]
async fn stored_responses_are_shared_by_replicas_on_postgres() {
    let pg = PgServer::start();
    let up = mock(
        "replicas",
        Behavior {
            reply: REPLY.into(),
            ..Behavior::default()
        },
    )
    .await;
    let gpt = mock("gpt", Behavior::default()).await;
    let models = [
        chat_mock_config(&up),
        openai_model("gpt", "gpt-5", &gpt.base_url(), "responses_api = true"),
    ]
    .concat();
    let store = format!("[store]\nurl = \"{}\"\n", pg.url());
    let a = gateway(&models, &store).start().await;
    let b = gateway(&models, &store).start().await;
    // Made on A (streamed, store left out: kept), continued on B, read on A.
    let r = create(
        &a,
        MASTER,
        json!({"model": "qwen", "input": "on A", "stream": true}),
    )
    .await;
    assert_eq!(r.status(), 200);
    let events = common::read_sse(r).await;
    let done = events
        .iter()
        .filter_map(|e| e.json())
        .find(|e| e["type"] == "response.completed")
        .unwrap();
    let first = done["response"]["id"].as_str().unwrap().to_string();
    let r = create(
        &b,
        MASTER,
        json!({"model": "qwen", "input": "on B", "previous_response_id": first}),
    )
    .await;
    assert_eq!(r.status(), 200);
    let second = json_body(r).await["id"].as_str().unwrap().to_string();
    assert_eq!(
        conversation(&up),
        ["user: on A", &format!("assistant: {REPLY}"), "user: on B"]
    );
    let r = get(&a, MASTER, &format!("/v1/responses/{second}/input_items")).await;
    let items = json_body(r).await;
    assert_eq!(items["data"][0]["content"][0]["text"], "on B", "{items}");
    // Deleted on A: gone on B.
    let r = a
        .client()
        .delete(a.url(&format!("/v1/responses/{second}")))
        .bearer_auth(MASTER)
        .send()
        .await
        .unwrap();
    assert_eq!(json_body(r).await["deleted"], true);
    assert_eq!(
        get(&b, MASTER, &format!("/v1/responses/{second}"))
            .await
            .status(),
        404
    );

    // A responses_api deployment: a chain stored there is passed through unchanged …
    let r = create(&a, MASTER, json!({"model": "gpt", "input": "at gpt"})).await;
    let at_gpt = json_body(r).await["id"].as_str().unwrap().to_string();
    assert!(at_gpt.starts_with("resp_mock_gpt"), "{at_gpt}");
    let r = create(
        &b,
        MASTER,
        json!({"model": "gpt", "input": "again", "previous_response_id": at_gpt}),
    )
    .await;
    assert_eq!(r.status(), 200);
    let sent: Value = serde_json::from_slice(&gpt.state.last_body().unwrap()).unwrap();
    assert_eq!(sent["previous_response_id"], at_gpt.as_str(), "{sent}");
    assert_eq!(sent["input"], "again");
    // … a chain stored elsewhere reaches it rebuilt, without previous_response_id.
    let r = create(
        &b,
        MASTER,
        json!({"model": "gpt", "input": "moved", "previous_response_id": first}),
    )
    .await;
    assert_eq!(r.status(), 200);
    let sent: Value = serde_json::from_slice(&gpt.state.last_body().unwrap()).unwrap();
    assert!(sent.get("previous_response_id").is_none(), "{sent}");
    let input = sent["input"].as_array().unwrap();
    assert_eq!(input.len(), 3, "{sent}");
    assert_eq!(input[0]["content"][0]["text"], "on A");
    assert_eq!(input[2]["content"], "moved");
    // An unknown id: 400 naming the parameter, as OpenAI answers.
    let r = create(
        &a,
        MASTER,
        json!({"model": "qwen", "input": "x", "previous_response_id": "resp_nope"}),
    )
    .await;
    assert_eq!(r.status(), 400);
    assert_eq!(json_body(r).await["error"]["param"], "previous_response_id");
}
