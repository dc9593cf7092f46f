//! The request path shared by the proxied endpoints (OpenAI's, Anthropic's Messages,
//! OpenAI's Responses): caller, body, parse, checks, admission, cache, router, metering.
//! The three hot OpenAI endpoints reach it from `conn` without axum's router
//! ([`hot_route`], [`serve_hot`]).

use crate::body::read_body;
use crate::state::AppState;
use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, Method};
use axum::response::Response;
use llmgw_core::error::ApiError;
use llmgw_router::RequestLog;
use llmgw_wire::request::{ClientRequest, Endpoint};
use std::sync::Arc;

/// The proxied endpoints' handlers, for a POST to `path` (as `app` routes them).
pub(crate) fn hot_route(method: &Method, path: &str) -> Option<(Endpoint, &'static str)> {
    if method != Method::POST {
        return None;
    }
    match path {
        "/v1/chat/completions" | "/chat/completions" => {
            Some((Endpoint::ChatCompletions, "/v1/chat/completions"))
        }
        "/v1/completions" | "/completions" => Some((Endpoint::Completions, "/v1/completions")),
        "/v1/embeddings" | "/embeddings" => Some((Endpoint::Embeddings, "/v1/embeddings")),
        _ => None,
    }
}

/// A request `hot_route` found, served as `app` would serve it (the keyless gateway's
/// local-only rule, then the handler) without going through axum's router: `conn` calls
/// this for the hot endpoints so that their per-request cost stays low (issue 13).
pub(crate) async fn serve_hot<B>(
    s: Arc<AppState>,
    endpoint: Endpoint,
    path: &'static str,
    req: axum::http::Request<B>,
) -> Response
where
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<axum::BoxError>,
{
    if s.master_key.is_none() {
        if let Err(refused) = crate::access::check_local_request(&req) {
            return refused;
        }
    }
    let (parts, body) = req.into_parts();
    proxy(s, endpoint, path, parts.headers, Body::new(body)).await
}

/// The request path shared by the proxied endpoints.
pub(crate) async fn proxy(
    s: Arc<AppState>,
    endpoint: Endpoint,
    path: &'static str,
    headers: HeaderMap,
    body: Body,
) -> Response {
    proxy_for(s, endpoint, path, headers, body, None).await
}

/// A batch line sent through the request path by the gateway itself: whose it is (the
/// batch's owner, who is billed and whose limits apply) and whether only local
/// deployments may serve it. It always queues at batch priority (or lower).
pub(crate) struct AsLine {
    pub caller: crate::keys::Caller,
    pub local_only: bool,
}

/// [`proxy`], or for a batch line (`line`) the same path as its owner.
pub(crate) async fn proxy_for(
    s: Arc<AppState>,
    endpoint: Endpoint,
    path: &'static str,
    headers: HeaderMap,
    body: Body,
    line: Option<AsLine>,
) -> Response {
    // The chain's idle clock (`[slurm] idle_stop`): a relaxed load, rarely a store; again
    // when the answer is ready (a stream still running counts through `in_flight`); batch
    // lines count too: a running batch keeps the job busy.
    llmgw_cluster::idle::touch();
    let mut log = RequestLog::default();
    log.path = path;
    // A traced request (`[telemetry]`, sampled): the router records its attempts.
    let mut trace = s
        .telemetry
        .as_ref()
        .and_then(|t| t.begin(endpoint, path, &headers));
    if let Some(t) = &trace {
        log.trace = Some(t.link.clone());
    }
    // Virtual keys: admitted after parsing, charged once the answer is known.
    let mut ticket: Option<crate::keys::Ticket> = None;
    let result = async {
        let caller = match &line {
            Some(l) => l.caller.clone(),
            None => s.caller(&headers)?,
        };
        let bytes = read_body(body, &headers, s.max_body).await?;
        let mut req = ClientRequest::parse_bounded(endpoint, bytes).await?;
        crate::apis::prepare(&s, &caller, &mut req, &headers).await?;
        log.model = req.model.clone();
        log.stream = req.stream;
        if let Some(t) = trace.as_mut() {
            t.request(&req, &caller);
        }
        if let Some(keys) = &s.keys {
            ticket = Some(keys.admit(&caller, &req)?);
            // Fallbacks stay inside the key's models (an `Arc` clone, no allocation).
            if let crate::keys::Caller::Key(k) = &caller {
                req.access = Some(k.clone());
            }
        }
        // Only a group that can hold requests needs to know whose they are.
        if s.router.holds(&req.model) {
            req.flow = crate::fairness::flow(&caller, s.fairness, &req, &headers)?;
            if line.is_some() {
                req.flow.priority = req.flow.priority.min(llmgw_wire::request::priority::BATCH);
            }
        }
        req.options.local_only = line.as_ref().is_some_and(|l| l.local_only);
        if endpoint == Endpoint::CountTokens {
            // Counting costs no model: the ticket is closed at no charge.
            let resp = crate::apis::count_tokens(&s.router, &req, &mut log).await;
            if let Some(t) = ticket.take() {
                t.finish(crate::keys::enforce::Outcome {
                    deployment: log.deployment.clone(),
                    status: resp
                        .as_ref()
                        .map_or_else(|e| e.status.as_u16(), |r| r.status().as_u16()),
                    ..Default::default()
                });
            }
            return resp;
        }
        let pending = match s.cache.lookup(&req, &mut log).await? {
            crate::cache::Outcome::Hit(resp) => {
                log.hist = Some(s.router.histograms().cache(&log.model).clone());
                return Ok(match ticket.take() {
                    Some(t) => crate::keys::meter::meter(t, false, resp).await,
                    None => resp,
                });
            }
            crate::cache::Outcome::Continue(pending) => pending,
        };
        let keep = s.responses.keep(&caller, &req);
        let client_usage = req.include_usage;
        let req = if ticket.is_some() {
            req.with_usage_requested()
        } else {
            req
        };
        let budget = req
            .options
            .timeout
            .map_or(s.request_timeout, |t| t.min(s.request_timeout));
        let deadline = llmgw_core::duration::deadline(std::time::Instant::now(), budget);
        // Boxed: the router's future is large, and `timeout` would copy it whole.
        let serving = Box::pin(s.router.serve(req, deadline, &mut log));
        let until = tokio::time::Instant::from_std(deadline);
        match tokio::time::timeout_at(until, serving).await {
            Ok(Ok(resp)) => {
                let resp = match keep {
                    Some(k) => k.finish(&s.router, resp).await,
                    None => resp,
                };
                // Traced before metering, which may take out the usage chunk it asked for.
                let resp = match trace.take() {
                    Some(t) => t.respond(resp, &log).await,
                    None => resp,
                };
                let resp = match ticket.take() {
                    Some(t) => crate::keys::meter::meter(t, !client_usage, resp).await,
                    None => resp,
                };
                Ok(pending.finish(resp).await)
            }
            Ok(Err(e)) => Err(e),
            Err(_) => Err(ApiError::gateway_timeout(format!(
                "the request did not finish within its time limit of {budget:?} \
                 ([server] request_timeout, or the request's own timeout)"
            ))),
        }
    }
    .await;
    llmgw_cluster::idle::touch();
    let resp = match result {
        Ok(resp) => resp,
        Err(e) => {
            log.status = e.status.as_u16();
            if log.hist.is_none() {
                log.hist = Some(s.router.histograms().unrouted(&log.model).clone());
            }
            if let Some(t) = trace.as_mut() {
                t.failed(&e);
            }
            let rate = ticket.as_ref().map(|t| t.rate);
            if let Some(t) = ticket.take() {
                t.finish(crate::keys::enforce::Outcome {
                    deployment: log.deployment.clone(),
                    status: log.status,
                    ..Default::default()
                });
            }
            let mut resp = e.into_response_for(endpoint.api());
            if let Some(rate) = rate {
                rate.write(resp.headers_mut());
            }
            if log.attempts > 0 {
                let h = resp.headers_mut();
                h.insert(
                    llmgw_router::names::ATTEMPTS,
                    HeaderValue::from(log.attempts),
                );
                if let Ok(v) = HeaderValue::from_str(&log.deployment) {
                    h.insert(llmgw_router::names::DEPLOYMENT, v);
                }
            }
            resp
        }
    };
    // Answers the router did not give (errors, cache hits, token counts).
    match trace {
        Some(t) => t.respond(resp, &log).await,
        None => resp,
    }
}
