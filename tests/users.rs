//! Issue 21: users (LiteLLM's level between key and team) and end-user budgets, against
//! a real gateway and the mock upstream: a user's budget, models and rpm over all its
//! keys, `/user/*` and `llmgw users`, `/spend/report?group_by=user`, users across a
//! restart; end users (OpenAI `user`, Anthropic `metadata.user_id`) refused one by one
//! while others are served, `/customer/info`, and the unchanged OpenAI SDK with `user=`.

// Test and benchmark code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod common;

use common::keys::{admin, chat, cli_ok, gateway, new_key, write_master_key, COST_NANOS, PRICED};
use common::{expect_openai_error, mock, openai_model, run_python_script};
use llmgw::mock::Behavior;
use reqwest::Method;
use serde_json::{json, Value};
use std::time::Duration;

/// A chat request with `key` for end user `user` (the OpenAI `user` field).
async fn chat_as(base: &str, key: &str, user: &str) -> reqwest::Response {
    common::client()
        .post(format!("{base}/v1/chat/completions"))
        .bearer_auth(key)
        .header("content-type", "application/json")
        .body(
            json!({"model": "local", "user": user, "max_tokens": 5,
                "messages": [{"role": "user", "content": "Say hello"}]})
            .to_string(),
        )
        .send()
        .await
        .unwrap()
}

/// Waits until the current minute has at least `need` seconds left, so a test of a
/// per-minute limit does not straddle a minute boundary.
async fn minute_with(need: u64) {
    let s = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    if 60 - s % 60 < need {
        tokio::time::sleep(Duration::from_secs(60 - s % 60 + 1)).await;
    }
}

/// The OpenAI-shaped refusal `resp` must be, as `{"error": {...}}`.
async fn refused(resp: reqwest::Response, status: u16) -> Value {
    json!({"error": Value::Object(expect_openai_error(resp, status).await)})
}

async fn new_user(base: &str, body: Value) -> Value {
    let (s, v) = admin(base, Method::POST, "/user/new", Some(body)).await;
    assert_eq!(s, 200, "{v}");
    v
}

// A user's budget counts the spend of all its keys: once one key spent it, the user's
// other key is refused with budget_exceeded naming the user.
#[tokio::test(flavor = "multi_thread")]
async fn a_users_budget_spans_all_its_keys() {
    let up = mock("users-budget", Behavior::default()).await;
    let gw = gateway(&openai_model("local", "m", &up.base_url(), PRICED), "")
        .start()
        .await;
    let base = gw.url("");
    new_user(&base, json!({"user_id": "alice", "max_budget": 0.002})).await;
    let (k1, info) = new_key(&base, json!({"key_alias": "a1", "user_id": "alice"})).await;
    assert_eq!(info["user_id"], "alice");
    let (k2, _) = new_key(&base, json!({"key_alias": "a2", "user_id": "alice"})).await;
    // Another user's key is not affected.
    new_user(&base, json!({"user_id": "bert", "max_budget": 1.0})).await;
    let (k3, _) = new_key(&base, json!({"user_id": "bert"})).await;

    assert_eq!(chat(&base, &k1, "local", false, false).await.status(), 200);
    let e = refused(chat(&base, &k2, "local", false, false).await, 429).await;
    assert_eq!(e["error"]["type"], "budget_exceeded", "{e}");
    let msg = e["error"]["message"].as_str().unwrap();
    assert!(msg.contains("user \"alice\""), "{msg}");
    expect_openai_error(chat(&base, &k1, "local", true, false).await, 429).await;
    assert_eq!(chat(&base, &k3, "local", false, false).await.status(), 200);

    let (s, info) = admin(&base, Method::GET, "/user/info?user_id=alice", None).await;
    assert_eq!(s, 200, "{info}");
    assert!(
        (info["user_info"]["spend"].as_f64().unwrap() - 0.0024).abs() < 1e-9,
        "{info}"
    );
    assert_eq!(info["keys"].as_array().unwrap().len(), 2, "{info}");
    let metrics = common::client()
        .get(format!("{base}/metrics"))
        .bearer_auth(common::keys::MASTER)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics
            .contains("llmgw_user_period_spend_usd{user=\"alice\",user_id=\"alice\"} 0.002400000"),
        "{metrics}"
    );
    // Raising the user's budget lets its keys through again.
    let (s, v) = admin(
        &base,
        Method::POST,
        "/user/update",
        Some(json!({"user_id": "alice", "max_budget": 1.0})),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(chat(&base, &k2, "local", false, false).await.status(), 200);
}

// A user's models restrict its keys (and what /v1/models shows them); a user's rpm
// counts the requests of all its keys.
#[tokio::test(flavor = "multi_thread")]
async fn a_users_models_and_rpm_hold_for_every_key() {
    let up = mock("users-models", Behavior::default()).await;
    let models = format!(
        "{}\n{}",
        openai_model("local", "m", &up.base_url(), PRICED),
        openai_model("other", "m", &up.base_url(), PRICED)
    );
    let gw = gateway(&models, "").start().await;
    let base = gw.url("");
    new_user(
        &base,
        json!({"user_id": "carl", "models": ["local"], "rpm_limit": 2}),
    )
    .await;
    let (k1, _) = new_key(&base, json!({"user_id": "carl"})).await;
    let (k2, _) = new_key(
        &base,
        json!({"user_id": "carl", "models": ["local", "other"]}),
    )
    .await;
    let e = refused(chat(&base, &k2, "other", false, false).await, 403).await;
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("user \"carl\""),
        "{e}"
    );
    let listed = common::client()
        .get(format!("{base}/v1/models"))
        .bearer_auth(&k2)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let listed: Value = serde_json::from_str(&listed).unwrap();
    let ids: Vec<&str> = listed["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["id"].as_str())
        .collect();
    assert_eq!(ids, ["local"], "{listed}");

    minute_with(20).await;
    assert_eq!(chat(&base, &k1, "local", false, false).await.status(), 200);
    assert_eq!(chat(&base, &k2, "local", false, false).await.status(), 200);
    let e = refused(chat(&base, &k1, "local", false, false).await, 429).await;
    assert_eq!(e["error"]["code"], "rate_limit_exceeded", "{e}");
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("user \"carl\""),
        "{e}"
    );
}

// /user/new, /user/info, /user/list, /user/update, /user/delete, unknown users on
// /key/generate, the `llmgw users` CLI, `keys create --user` and the report by user.
#[tokio::test(flavor = "multi_thread")]
async fn user_routes_cli_and_the_report_by_user() {
    let up = mock("users-crud", Behavior::default()).await;
    let gw = gateway(&openai_model("local", "m", &up.base_url(), PRICED), "")
        .start()
        .await;
    let base = gw.url("");
    write_master_key(&gw.state_dir);
    let v = new_user(
        &base,
        json!({"user_id": "dora", "max_budget": 5, "budget_duration": "30d", "tpm_limit": 100000,
            "max_parallel_requests": 4}),
    )
    .await;
    assert_eq!(
        (v["user_id"].clone(), v["budget_duration"].clone()),
        (json!("dora"), json!("30d"))
    );
    let (s, v) = admin(
        &base,
        Method::POST,
        "/user/new",
        Some(json!({"user_id": "dora"})),
    )
    .await;
    assert_eq!(s, 400, "{v}");
    let (s, v) = admin(
        &base,
        Method::POST,
        "/user/new",
        Some(json!({"user_id": "x", "max_budgte": 1})),
    )
    .await;
    assert_eq!(s, 400, "{v}");
    // A key for a user that does not exist: a clear 400.
    let (s, v) = admin(
        &base,
        Method::POST,
        "/key/generate",
        Some(json!({"user_id": "nobody"})),
    )
    .await;
    assert_eq!(s, 400, "{v}");
    assert_eq!(v["error"]["param"], "user_id", "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("/user/new"),
        "{v}"
    );

    // The CLI: users create/list/info/update, keys create --user.
    let out = cli_ok(
        &gw.state_dir,
        &[
            "users",
            "create",
            "emil",
            "--max-budget",
            "2",
            "--rpm",
            "50",
        ],
    );
    assert!(out.contains("emil"), "{out}");
    let out = cli_ok(
        &gw.state_dir,
        &[
            "keys",
            "create",
            "--alias",
            "emil-laptop",
            "--user",
            "emil",
            "--json",
        ],
    );
    let created: Value = serde_json::from_str(&out).unwrap();
    let key = created["key"].as_str().unwrap().to_string();
    assert_eq!(created["user_id"], "emil");
    cli_ok(&gw.state_dir, &["users", "update", "emil", "--tpm", "5000"]);
    let out = cli_ok(&gw.state_dir, &["users", "info", "emil", "--json"]);
    let info: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(info["user_info"]["tpm_limit"], 5000, "{info}");
    assert_eq!(info["user_info"]["rpm_limit"], 50, "{info}");
    let list = cli_ok(&gw.state_dir, &["users", "list"]);
    assert!(list.contains("dora") && list.contains("emil"), "{list}");
    let (_, v) = admin(&base, Method::GET, "/user/list", None).await;
    assert_eq!(v["users"].as_array().unwrap().len(), 2, "{v}");

    assert_eq!(chat(&base, &key, "local", false, false).await.status(), 200);
    let report = common::wait_for(Duration::from_secs(5), "spend rows", || async {
        let (_, v) = admin(&base, Method::GET, "/spend/report?group_by=user", None).await;
        (v["total_cost_nanos"] == json!(COST_NANOS)).then_some(v)
    })
    .await;
    assert_eq!(report["group_by"], "user");
    assert_eq!(report["groups"][0]["group"], "emil", "{report}");
    let out = cli_ok(&gw.state_dir, &["spend", "--by", "user", "--json"]);
    assert!(out.contains("\"emil\""), "{out}");

    // Deleting a user its keys still name is refused, and says how.
    let (s, v) = admin(
        &base,
        Method::POST,
        "/user/delete",
        Some(json!({"user_ids": ["emil"]})),
    )
    .await;
    assert_eq!(s, 400, "{v}");
    assert_eq!(v["error"]["code"], "user_has_keys", "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("emil-laptop"),
        "{v}"
    );
    let out = cli_ok(&gw.state_dir, &["users", "delete", "emil", "--delete-keys"]);
    assert!(out.contains("1 key"), "{out}");
    expect_openai_error(chat(&base, &key, "local", false, false).await, 401).await;
    let (s, _) = admin(&base, Method::GET, "/user/info?user_id=emil", None).await;
    assert_eq!(s, 404);
    let (s, v) = admin(
        &base,
        Method::POST,
        "/user/delete",
        Some(json!({"user_ids": ["dora"]})),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["deleted_users"], json!(["dora"]));
}

// Users, their keys and their spend survive a restart (same SQLite file); the budget
// is still counted over the user's keys.
#[tokio::test(flavor = "multi_thread")]
async fn users_survive_a_restart() {
    let up = mock("users-restart", Behavior::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let store = format!(
        "[store]\npath = \"{}\"\n",
        dir.path().join("keys.db").display()
    );
    let models = openai_model("local", "m", &up.base_url(), PRICED);
    let mut gw = gateway(&models, &store).start().await;
    let base = gw.url("");
    new_user(&base, json!({"user_id": "finn", "max_budget": 0.004})).await;
    let (k1, _) = new_key(&base, json!({"user_id": "finn"})).await;
    let (k2, _) = new_key(&base, json!({"user_id": "finn"})).await;
    assert_eq!(chat(&base, &k1, "local", false, false).await.status(), 200);
    assert_eq!(chat(&base, &k2, "local", false, false).await.status(), 200);
    // An application key whose end users may spend three requests' worth each: "ann"
    // spends two of them before the restart.
    let (app, _) = new_key(&base, json!({"end_user_max_budget": 0.007})).await;
    for _ in 0..2 {
        assert_eq!(chat_as(&base, &app, "ann").await.status(), 200);
    }
    gw.sigterm();
    assert!(gw.wait_exit(Duration::from_secs(15)).await.success());
    drop(gw);

    let gw = gateway(&models, &store).start().await;
    let base = gw.url("");
    let (s, info) = admin(&base, Method::GET, "/user/info?user_id=finn", None).await;
    assert_eq!(s, 200, "{info}");
    assert!(
        (info["user_info"]["spend"].as_f64().unwrap() - 0.0048).abs() < 1e-9,
        "{info}"
    );
    assert_eq!(info["user_info"]["max_budget"], 0.004);
    let e = refused(chat(&base, &k1, "local", false, false).await, 429).await;
    assert_eq!(e["error"]["type"], "budget_exceeded", "{e}");
    // ann's spend is read back from the spend rows when she is first seen again (in the
    // background: that first request is admitted); then her third request's worth is
    // spent and she is refused, where counting from 0 would have allowed three more.
    assert_eq!(chat_as(&base, &app, "ann").await.status(), 200);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let e = refused(chat_as(&base, &app, "ann").await, 429).await;
    assert_eq!(e["error"]["type"], "budget_exceeded", "{e}");
    assert_eq!(chat_as(&base, &app, "bo").await.status(), 200);
}

// End users of one application key: end user A is refused once its budget is spent
// while B is still served; Anthropic's metadata.user_id counts as well; /customer/info
// reads an end user's spend.
#[tokio::test(flavor = "multi_thread")]
async fn end_user_budgets_refuse_one_end_user_and_serve_another() {
    let up = mock("end-users", Behavior::default()).await;
    let gw = gateway(&openai_model("local", "m", &up.base_url(), PRICED), "")
        .start()
        .await;
    let base = gw.url("");
    let (key, info) = new_key(
        &base,
        json!({"key_alias": "app", "end_user_max_budget": 0.002, "end_user_budget_duration": "1d",
            "end_user_rpm_limit": 100}),
    )
    .await;
    assert_eq!(info["end_user_max_budget"], 0.002, "{info}");
    assert_eq!(info["end_user_budget_duration"], "1d", "{info}");

    assert_eq!(chat_as(&base, &key, "ann").await.status(), 200);
    let e = refused(chat_as(&base, &key, "ann").await, 429).await;
    assert_eq!(e["error"]["type"], "budget_exceeded", "{e}");
    let msg = e["error"]["message"].as_str().unwrap();
    assert!(msg.contains("end user \"ann\""), "{msg}");
    assert_eq!(chat_as(&base, &key, "ben").await.status(), 200);
    // No end user named: only the key's limits.
    for _ in 0..2 {
        assert_eq!(chat(&base, &key, "local", false, false).await.status(), 200);
    }

    // Anthropic's metadata.user_id names the end user too.
    let messages = |who: &str| {
        json!({"model": "local", "max_tokens": 5, "metadata": {"user_id": who},
            "messages": [{"role": "user", "content": "Hi"}]})
        .to_string()
    };
    let post = |body: String| {
        let (base, key) = (base.clone(), key.clone());
        async move {
            common::client()
                .post(format!("{base}/v1/messages"))
                .header("x-api-key", key)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .unwrap()
        }
    };
    assert_eq!(post(messages("cleo")).await.status(), 200);
    let r = post(messages("cleo")).await;
    assert_eq!(r.status(), 429);
    let text = r.text().await.unwrap();
    assert!(text.contains("end user \\\"cleo\\\""), "{text}");

    // The store's rows name the end user: /customer/info and /spend/logs read it.
    let v = common::wait_for(Duration::from_secs(5), "spend rows", || async {
        let (_, v) = admin(&base, Method::GET, "/customer/info?end_user_id=ann", None).await;
        (v["spend"].as_f64()? > 0.0).then_some(v)
    })
    .await;
    assert!((v["spend"].as_f64().unwrap() - 0.0024).abs() < 1e-9, "{v}");
    let k = &v["keys"][0];
    assert_eq!(k["key_alias"], "app", "{v}");
    assert!((k["spend"].as_f64().unwrap() - 0.0024).abs() < 1e-9, "{v}");
    assert_eq!(k["end_user_max_budget"], 0.002, "{v}");
    let v = common::wait_for(Duration::from_secs(5), "cleo's rows", || async {
        let path = "/end_user/info?end_user_id=cleo&key=app";
        let (_, v) = admin(&base, Method::GET, path, None).await;
        (v["spend"].as_f64()? > 0.0).then_some(v)
    })
    .await;
    assert_eq!(v["keys"].as_array().unwrap().len(), 1, "{v}");
    let (_, rows) = admin(&base, Method::GET, "/spend/logs?end_user_id=ben", None).await;
    assert_eq!(rows.as_array().unwrap().len(), 1, "{rows}");
    assert_eq!(rows[0]["end_user"], "ben", "{rows}");
    let (s, _) = admin(&base, Method::GET, "/customer/info", None).await;
    assert_eq!(s, 400);

    // Clearing the end-user limits serves ann again.
    let (s, v) = admin(
        &base,
        Method::POST,
        "/key/update",
        Some(json!({"key": "app", "end_user_max_budget": null, "end_user_rpm_limit": null})),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(chat_as(&base, &key, "ann").await.status(), 200);
}

// The unchanged OpenAI SDK sends `user=` and reads the rate-limit headers
// (`with_raw_response`); a spent end user gets the SDK's RateLimitError.
#[tokio::test(flavor = "multi_thread")]
async fn the_openai_sdk_with_end_users() {
    let up = mock("users-sdk", Behavior::default()).await;
    let gw = gateway(&openai_model("local", "m", &up.base_url(), PRICED), "")
        .start()
        .await;
    let base = gw.url("");
    new_user(&base, json!({"user_id": "gus", "rpm_limit": 1000})).await;
    let (key, _) = new_key(
        &base,
        json!({"user_id": "gus", "rpm_limit": 100, "end_user_max_budget": 0.002}),
    )
    .await;
    let out = run_python_script(&gw, "openai_sdk_users.py", &[], &key).await;
    assert!(out.ends_with("ok\n"), "{out}");
}

// The LiteLLM SDK as a client (`litellm.completion(model="openai/local", user=...)`):
// end users are limited the same way. Skipped when litellm is not installed
// (scripts/test.sh installs it).
#[tokio::test(flavor = "multi_thread")]
async fn the_litellm_sdk_with_end_users() {
    let has = std::process::Command::new("python3")
        .args(["-c", "import litellm"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !has {
        common::skip("the LiteLLM SDK is not installed (pip install litellm==1.81.16)");
        return;
    }
    let up = mock("users-litellm", Behavior::default()).await;
    let models = format!(
        "{}\n{}",
        openai_model("gpt-4o-mini", "m", &up.base_url(), PRICED),
        openai_model("local", "m", &up.base_url(), PRICED)
    );
    let gw = gateway(&models, "").start().await;
    let base = gw.url("");
    let (key, _) = new_key(&base, json!({"end_user_max_budget": 0.002})).await;
    let out = run_python_script(&gw, "litellm_sdk_users.py", &[], &key).await;
    assert!(out.ends_with("ok\n"), "{out}");
}
