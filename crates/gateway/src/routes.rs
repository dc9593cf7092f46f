//! The HTTP routes (axum) and their handlers: the proxied endpoints, `/v1/models`,
//! `/health*`, `/metrics`, the admin API; 404 and 405 in the API's error shape.

use crate::proxy::proxy;
use crate::state::{json_response, models_body, AppState};
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use llmgw_core::error::ApiError;
use llmgw_wire::request::Endpoint;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// The HTTP routes.
pub fn app(state: Arc<AppState>) -> axum::Router {
    let mut api = axum::Router::new()
        .route("/v1/chat/completions", post(chat_completions))
        .route("/chat/completions", post(chat_completions))
        .route("/v1/completions", post(completions))
        .route("/completions", post(completions))
        .route("/v1/embeddings", post(embeddings))
        .route("/embeddings", post(embeddings))
        .route("/v1/models", get(models))
        .route("/models", get(models));
    api = apis(api);
    api = crate::batch_runner::api::routes(api);
    if state.master_key.is_none() {
        api = api.route_layer(axum::middleware::from_fn(crate::access::local_only));
    }
    api.route("/health", get(health))
        .route("/health/liveness", get(liveness))
        .route("/health/readiness", get(readiness))
        .route("/metrics", get(metrics))
        .merge(crate::admin::routes())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
}

/// Adds the Messages and Responses routes.
fn apis(api: axum::Router<Arc<AppState>>) -> axum::Router<Arc<AppState>> {
    api.route("/v1/messages", post(messages))
        .route("/v1/messages/count_tokens", post(count_tokens_route))
        .route("/v1/responses", post(responses))
        .route("/responses", post(responses))
        .route(
            "/v1/responses/{id}",
            get(get_response).delete(delete_response),
        )
        .route("/responses/{id}", get(get_response).delete(delete_response))
        .route("/v1/responses/{id}/input_items", get(input_items))
        .route("/responses/{id}/input_items", get(input_items))
}

async fn get_response(
    State(s): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    crate::apis::get_response(&s, &headers, &id)
        .await
        .unwrap_or_else(|e| e.into_response())
}

async fn delete_response(
    State(s): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    crate::apis::delete_response(&s, &headers, &id)
        .await
        .unwrap_or_else(|e| e.into_response())
}

async fn input_items(
    State(s): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(q): Query<llmgw_wire::responses::stored::PageQuery>,
) -> Response {
    crate::apis::input_items(&s, &headers, &id, &q)
        .await
        .unwrap_or_else(|e| e.into_response())
}

async fn messages(State(s): State<Arc<AppState>>, headers: HeaderMap, body: Body) -> Response {
    proxy(s, Endpoint::Messages, "/v1/messages", headers, body).await
}

async fn count_tokens_route(
    State(s): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    proxy(
        s,
        Endpoint::CountTokens,
        "/v1/messages/count_tokens",
        headers,
        body,
    )
    .await
}

async fn responses(State(s): State<Arc<AppState>>, headers: HeaderMap, body: Body) -> Response {
    proxy(s, Endpoint::Responses, "/v1/responses", headers, body).await
}

async fn chat_completions(
    State(s): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    proxy(
        s,
        Endpoint::ChatCompletions,
        "/v1/chat/completions",
        headers,
        body,
    )
    .await
}

async fn completions(State(s): State<Arc<AppState>>, headers: HeaderMap, body: Body) -> Response {
    proxy(s, Endpoint::Completions, "/v1/completions", headers, body).await
}

async fn embeddings(State(s): State<Arc<AppState>>, headers: HeaderMap, body: Body) -> Response {
    proxy(s, Endpoint::Embeddings, "/v1/embeddings", headers, body).await
}

async fn models(State(s): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    match (s.caller(&headers), &s.keys) {
        (Err(e), _) => e.into_response(),
        (Ok(caller @ crate::keys::Caller::Key(_)), Some(keys)) => {
            let names = s.router.model_names();
            let visible: Vec<String> = keys
                .visible_models(&caller, names)
                .into_iter()
                .cloned()
                .collect();
            json_response(StatusCode::OK, models_body(&visible))
        }
        (Ok(_), _) => json_response(StatusCode::OK, s.models_body.clone()),
    }
}

async fn metrics(State(s): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    if let Err(e) = s.authorize(&headers) {
        return e.into_response();
    }
    let mut extra = crate::cache::metrics_text() + &llmgw_cluster::renew::metrics_text();
    if let Some(keys) = &s.keys {
        extra.push_str(&keys.metrics_text());
    }
    extra.push_str(&s.batches.metrics_text());
    extra.push_str(&crate::alerts::metrics_text());
    if let Some(t) = &s.telemetry {
        extra.push_str(&t.metrics_text());
    }
    let text = crate::metrics::render(
        &s.router,
        s.ready.load(Ordering::Relaxed),
        s.draining.load(Ordering::Relaxed),
        &extra,
    );
    let mut r = Response::new(Body::from(text));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    r
}

async fn liveness() -> Response {
    json_response(StatusCode::OK, r#"{"status":"alive"}"#)
}

async fn readiness(State(s): State<Arc<AppState>>) -> Response {
    if s.draining.load(Ordering::Relaxed) {
        json_response(StatusCode::SERVICE_UNAVAILABLE, r#"{"status":"draining"}"#)
    } else if !s.ready.load(Ordering::Relaxed) {
        json_response(StatusCode::SERVICE_UNAVAILABLE, r#"{"status":"starting"}"#)
    } else {
        json_response(StatusCode::OK, r#"{"status":"ready"}"#)
    }
}

async fn health(State(s): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    if let Err(e) = s.authorize(&headers) {
        return e.into_response();
    }
    let deployments: Vec<serde_json::Value> = s
        .router
        .deployments()
        .map(|d| deployment_health(d))
        .collect();
    // Per group: healthy when every deployment is, unhealthy when none is (nothing can
    // answer now), degraded in between; overall the same over the groups.
    let mut groups = serde_json::Map::new();
    let mut counts = [0usize; 3];
    let gates = s.router.gates();
    for name in s.router.model_names() {
        let states = deployments.iter().filter(|d| d["model_group"] == **name);
        let (ok, all) = states.fold((0, 0), |(ok, all), d| {
            (ok + usize::from(d["state"] == "healthy"), all + 1)
        });
        let level = usize::from(ok < all) + usize::from(ok == 0 && all > 0);
        counts[level] += 1;
        let spill = s.router.spillover().find(|(g, ..)| g == name);
        let queue = gates.iter().find(|g| g.group() == name).map(|g| {
            let v = g.view();
            serde_json::json!({"waiting": v.waiting, "in_flight": v.in_flight, "capacity": v.capacity})
        });
        groups.insert(
            name.clone(),
            serde_json::json!({"status": HEALTH[level], "healthy": ok, "deployments": all,
                "spillover": spill.map(|(_, cloud, fallback)| serde_json::json!({"cloud": cloud, "fallback": fallback})),
                "queue": queue}),
        );
    }
    let overall = if counts[1] + counts[2] == 0 {
        HEALTH[0]
    } else if counts[0] + counts[1] == 0 {
        HEALTH[2]
    } else {
        HEALTH[1]
    };
    let status = if s.draining.load(Ordering::Relaxed) {
        "draining"
    } else if s.ready.load(Ordering::Relaxed) {
        overall
    } else {
        "starting"
    };
    let body = serde_json::json!({"status": status, "health": overall, "groups": groups, "deployments": deployments, "backends": s.backends.snapshot(), "store": s.store_watch.health_json()});
    json_response(
        StatusCode::OK,
        serde_json::to_vec(&body).unwrap_or_default(),
    )
}

/// `/health` levels, best first.
const HEALTH: [&str; 3] = ["healthy", "degraded", "unhealthy"];

/// One deployment's entry in `/health`.
fn deployment_health(d: &llmgw_router::Deployment) -> serde_json::Value {
    use llmgw_router::DeploymentState;
    let (state, until, reason) = match d.state() {
        DeploymentState::Healthy => ("healthy", None, None),
        DeploymentState::Cooling { until_ms, reason } => ("cooling", Some(until_ms), Some(reason)),
        DeploymentState::Unreachable => ("unreachable", None, None),
        DeploymentState::Unavailable => ("unavailable", None, None),
    };
    let now = llmgw_router::now_ms();
    serde_json::json!({
        "id": d.id,
        "model_group": d.group,
        "provider": d.kind.as_str(),
        "model": d.model,
        "api_base": d.api_base_shown(),
        "state": state,
        "cooling_until": until.map(|ms| llmgw_core::state::rfc3339(ms / 1000)),
        "cooling_seconds_left": until.map(|ms| ms.saturating_sub(now).div_ceil(1000)),
        "cooling_reason": reason,
        "in_flight": d.stats.in_flight.load(Ordering::Relaxed),
        "requests": d.stats.requests.load(Ordering::Relaxed),
        "failures": d.stats.failures.load(Ordering::Relaxed),
        "latency_ms": d.latency_us() as f64 / 1000.0,
        "local": d.load.is_local(),
        "queue": d.load.is_local().then(|| {
            let q = d.queue();
            serde_json::json!({"running": q.running, "waiting": q.waiting, "tokens": q.tokens, "polled": q.polled})
        }),
    })
}

async fn not_found(uri: axum::http::Uri) -> Response {
    ApiError::not_found(format!(
        "no route {}; the gateway serves /v1/chat/completions, /v1/completions, /v1/embeddings, /v1/messages, /v1/messages/count_tokens, /v1/responses (and GET/DELETE /v1/responses/{{id}}), /v1/files, /v1/batches, /v1/models and /health",
        uri.path()
    ))
    .into_response()
}

async fn method_not_allowed() -> Response {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "invalid_request_error",
        "method not allowed on this path",
    )
    .into_response()
}
