//! The client APIs besides OpenAI's chat/completions/embeddings: Anthropic Messages
//! (`POST /v1/messages`, `POST /v1/messages/count_tokens`; Claude Code and the Anthropic
//! SDKs) and OpenAI Responses (`POST /v1/responses`).
//!
//! Messages and Responses requests take the same path as chat completions
//! (`proxy::proxy`: auth, body limit, cache, router with retries, fallbacks and the
//! `x-llmgw-*` headers); what differs is decided by the endpoint: the translation
//! (`providers`, through the hub), the error shape (`error`) and the stream framing
//! (`router::stream`). This module holds the checks made before routing, and
//! token counting, which needs no model.

use crate::keys::Caller;
use crate::state::AppState;
use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::Response;
use bytes::Bytes;
use llmgw_core::config::{ErrorClass, ProviderKind};
use llmgw_core::error::ApiError;
use llmgw_router::{tokens, Deployment, RequestLog, Router};
use llmgw_wire::request::{ClientRequest, Endpoint, Forwarded};
use llmgw_wire::upstream_error::UpstreamError;
use std::sync::atomic::Ordering;

/// What every request of these APIs gets before routing: the client headers an upstream
/// of the same API may see, and for Responses what the body says about stored state and
/// tools (`stored::Responses::prepare`: the stored conversation it continues, the tool
/// name table).
pub async fn prepare(
    s: &AppState,
    caller: &Caller,
    req: &mut ClientRequest,
    headers: &HeaderMap,
) -> Result<(), ApiError> {
    req.forwarded = Forwarded::from_headers(req.endpoint, headers);
    if req.endpoint != Endpoint::Responses {
        return Ok(());
    }
    s.responses.prepare(caller, req).await
}

/// `GET /v1/responses/{id}`: a stored response.
pub async fn get_response(
    s: &AppState,
    headers: &HeaderMap,
    id: &str,
) -> Result<Response, ApiError> {
    let caller = s.caller(headers)?;
    let r = s.responses.get(&caller, id).await?;
    Ok(json(crate::stored::body(&r)))
}

/// `DELETE /v1/responses/{id}`.
pub async fn delete_response(
    s: &AppState,
    headers: &HeaderMap,
    id: &str,
) -> Result<Response, ApiError> {
    let caller = s.caller(headers)?;
    s.responses.delete(&caller, id).await?;
    let body = serde_json::json!({"id": id, "object": "response", "deleted": true});
    Ok(json(Bytes::from(body.to_string())))
}

/// `GET /v1/responses/{id}/input_items`: a page of a stored response's input items.
pub async fn input_items(
    s: &AppState,
    headers: &HeaderMap,
    id: &str,
    query: &llmgw_wire::responses::stored::PageQuery,
) -> Result<Response, ApiError> {
    let caller = s.caller(headers)?;
    let r = s.responses.get(&caller, id).await?;
    Ok(json(llmgw_wire::responses::stored::page(&r.input, query)?))
}

fn json(body: Bytes) -> Response {
    let mut r = Response::new(Body::from(body));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// Largest count_tokens answer read from an upstream (it is a few bytes).
const MAX_COUNT_BYTES: usize = 64 * 1024;

/// `POST /v1/messages/count_tokens`: exact from an Anthropic deployment of the group
/// (its own count_tokens, the request passed through), otherwise (or when that fails
/// for a reason other than the request itself) estimated with tiktoken's cl100k
/// encoding, off the async workers and bounded (`router::tokens`). The header
/// `x-llmgw-token-count` says which: `exact` or `estimate`.
pub async fn count_tokens(
    router: &Router,
    req: &ClientRequest,
    log: &mut RequestLog,
) -> Result<Response, ApiError> {
    if !router.model_names().contains(&req.model) {
        return Err(ApiError::not_found(format!(
            "model {:?} is not served by this gateway; available models: {}",
            req.model,
            router.model_names().join(", ")
        ))
        .with_param("model")
        .with_code("model_not_found"));
    }
    let now = llmgw_router::now_ms();
    let anthropic = router.deployments().find(|d| {
        d.group == req.model
            && d.kind == ProviderKind::Anthropic
            && d.available.load(Ordering::Relaxed)
            && !d.is_cooling(now)
    });
    if let Some(dep) = anthropic {
        log.deployment = dep.id.clone();
        log.attempts = 1;
        match exact(router, dep, req).await {
            Ok(n) => return Ok(answer(n, "exact", Some(&dep.id), log)),
            Err(mut e) => {
                router.scrub(&mut e);
                if matches!(
                    e.class,
                    ErrorClass::BadRequest | ErrorClass::ContextWindow | ErrorClass::ContentPolicy
                ) {
                    return Err(e.into_api_error());
                }
                tracing::info!(
                    deployment = %dep.id,
                    error = %llmgw_core::logging::Clean(&e.error.message),
                    "count_tokens failed upstream; answering with an estimate"
                );
            }
        }
    }
    let n = tokens::count(req, u64::MAX).await;
    Ok(answer(n, "estimate", None, log))
}

fn answer(n: u64, how: &'static str, dep: Option<&str>, log: &mut RequestLog) -> Response {
    log.status = 200;
    log.ttfb = Some(log.start.elapsed());
    let mut r = Response::new(Body::from(format!("{{\"input_tokens\":{n}}}")));
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert("x-llmgw-token-count", HeaderValue::from_static(how));
    if let Some(v) = dep.and_then(|d| HeaderValue::from_str(d).ok()) {
        h.insert("x-llmgw-deployment", v);
    }
    r
}

#[derive(serde::Deserialize)]
struct Count {
    input_tokens: u64,
}

/// One count_tokens call to an Anthropic deployment, within its timeout.
async fn exact(
    router: &Router,
    dep: &Deployment,
    req: &ClientRequest,
) -> Result<u64, UpstreamError> {
    let rb = llmgw_wire::convert::body(dep, req)
        .and_then(|body| dep.provider.request(router.client(), dep, req, body))
        .map_err(|e| UpstreamError::new(ErrorClass::BadRequest, e))?;
    let timed_out = || {
        UpstreamError::new(
            ErrorClass::Timeout,
            ApiError::gateway_timeout(format!(
                "deployment {} did not count within {:?}",
                dep.id, dep.timeout
            )),
        )
    };
    let until = tokio::time::Instant::from_std(llmgw_core::duration::deadline(
        std::time::Instant::now(),
        dep.timeout,
    ));
    let unreachable = |_| {
        UpstreamError::new(
            ErrorClass::Connection,
            ApiError::bad_gateway(format!("deployment {}: the request failed", dep.id)),
        )
    };
    let mut resp = tokio::time::timeout_at(until, rb.send())
        .await
        .map_err(|_| timed_out())?
        .map_err(unreachable)?;
    let status = resp.status();
    let headers = resp.headers().clone();
    let mut body = bytes::BytesMut::new();
    loop {
        let chunk = tokio::time::timeout_at(until, resp.chunk())
            .await
            .map_err(|_| timed_out())?
            .map_err(unreachable)?;
        let Some(chunk) = chunk else { break };
        if body.len() + chunk.len() > MAX_COUNT_BYTES {
            break;
        }
        body.extend_from_slice(&chunk);
    }
    let body: Bytes = body.freeze();
    if !status.is_success() {
        return Err(dep.provider.error(status, &headers, &body));
    }
    serde_json::from_slice::<Count>(&body)
        .map(|c| c.input_tokens)
        .map_err(|e| {
            UpstreamError::new(
                ErrorClass::InternalServer,
                llmgw_wire::translate::bad_body("anthropic", e),
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::StatusCode;

    #[test]
    fn answers_are_anthropic_shaped() {
        let mut log = RequestLog::default();
        let r = answer(42, "estimate", None, &mut log);
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()["x-llmgw-token-count"], "estimate");
    }
}
