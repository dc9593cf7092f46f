//! Issue 21: rate-limit headers on answers to a virtual key, read by the unchanged OpenAI
//! Python SDK (`with_raw_response`): `x-ratelimit-{limit,remaining,reset}-{requests,tokens}`
//! and `x-llmgw-response-cost`.

// Test and benchmark code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod common;

use common::keys::{admin, gateway, new_key, PRICED};
use common::{mock, openai_model, run_python_script};
use llmgw::mock::Behavior;
use reqwest::Method;
use serde_json::json;

#[tokio::test(flavor = "multi_thread")]
async fn the_openai_sdk_reads_rate_limit_headers_and_the_cost() {
    let up = mock("headers", Behavior::default()).await;
    let gw = gateway(&openai_model("local", "m", &up.base_url(), PRICED), "")
        .start()
        .await;
    let base = gw.url("");
    let (key, _) = new_key(
        &base,
        json!({"key_alias": "hedy", "rpm_limit": 100, "tpm_limit": 100000}),
    )
    .await;
    let out = run_python_script(&gw, "openai_sdk_ratelimit.py", &["100", "100000"], &key).await;
    let rows: Vec<Vec<&str>> = out
        .lines()
        .filter(|l| *l != "ok")
        .map(|l| l.split(' ').collect())
        .collect();
    assert_eq!(rows.len(), 3, "{out}");
    // Each request takes one of the minute's requests (the test may straddle a minute
    // boundary, after which the count starts over: then it only goes up once).
    let left: Vec<u64> = rows.iter().map(|r| r[0].parse().unwrap()).collect();
    let downs = left.windows(2).filter(|w| w[1] + 1 == w[0]).count();
    assert!(downs >= 1 && left.iter().all(|&l| l < 100), "{left:?}");
    // Tokens: the estimate of the request itself (its prompt plus max_tokens 50) is
    // counted as used while it runs.
    let tokens: Vec<u64> = rows.iter().map(|r| r[1].parse().unwrap()).collect();
    assert!(tokens.iter().all(|&t| t < 100000 - 50), "{tokens:?}");
    // The costs in the headers add up to the key's spend (the stream adds its own).
    let header_cost: f64 = rows.iter().map(|r| r[2].parse::<f64>().unwrap()).sum();
    let (_, info) = admin(&base, Method::GET, "/key/info?key=hedy", None).await;
    let spend = info["info"]["spend"].as_f64().unwrap();
    assert!(
        header_cost > 0.0 && header_cost < spend && spend - header_cost < header_cost,
        "headers say ${header_cost}, key spent ${spend}"
    );
    assert!(out.ends_with("ok\n"), "{out}");
}

// The master key gets no rate-limit headers (it has no limits).
#[tokio::test(flavor = "multi_thread")]
async fn the_master_key_gets_no_rate_limit_headers() {
    let up = mock("headers-master", Behavior::default()).await;
    let gw = gateway(&openai_model("local", "m", &up.base_url(), ""), "")
        .start()
        .await;
    let resp = common::client()
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(common::keys::MASTER)
        .header("content-type", "application/json")
        .body(common::chat_body("local", false))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers().get("x-ratelimit-limit-requests").is_none());
}
