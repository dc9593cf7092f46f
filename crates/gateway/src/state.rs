//! What every handler shares: the [`AppState`] (router, keys, cache, readiness) and the
//! small answers built from it.

use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use bytes::Bytes;
use llmgw_core::config::Secret;
use llmgw_core::error::ApiError;
use llmgw_router::Router;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

/// Everything a request handler needs; shared read-only across tasks.
pub struct AppState {
    pub router: Router,
    pub(crate) master_key: Option<Secret>,
    pub(crate) max_body: usize,
    pub(crate) request_timeout: Duration,
    /// Readiness: false while starting (backends loading) and while draining.
    pub ready: AtomicBool,
    pub draining: AtomicBool,
    pub(crate) models_body: Bytes,
    /// Supervised local backends, for `/health`.
    pub(crate) backends: llmgw_cluster::supervise::Monitor,
    /// The response cache (disabled unless `[cache] enabled`).
    pub cache: crate::cache::Cache,
    /// Virtual keys, budgets, spend and the admin API (only with a master key).
    pub keys: Option<Arc<crate::keys::KeyService>>,
    /// Whose requests share a full group fairly (`[router] fairness`).
    pub fairness: llmgw_core::config::Fairness,
    /// Stored Responses API answers (`store`, `previous_response_id`).
    pub responses: Arc<crate::stored::Responses>,
    /// Uploaded files and the batches the gateway runs (`/v1/files`, `/v1/batches`).
    pub batches: Arc<crate::batches::Batches>,
    /// The store's size, the state filesystem's room, spend-row retention (`/health`).
    pub store_watch: Arc<crate::retention::StoreWatch>,
    /// OpenTelemetry traces (`[telemetry]`; `None`: off, and nothing is recorded).
    pub telemetry: Option<Arc<crate::telemetry::Telemetry>>,
}

impl AppState {
    /// The master key, else a virtual key ([`crate::keys`]).
    pub(crate) fn caller(&self, headers: &HeaderMap) -> Result<crate::keys::Caller, ApiError> {
        match (self.authorize(headers), &self.keys) {
            (Ok(()), _) => Ok(crate::keys::Caller::Master),
            (Err(e), Some(keys)) => keys.authenticate(headers, e),
            (Err(e), None) => Err(e),
        }
    }

    /// Checks the master key, when one is set (see `access`).
    pub(crate) fn authorize(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        crate::access::check_key(self.master_key.as_ref(), headers)
    }
}

/// The model groups, readable by OpenAI's and Anthropic's SDKs alike (each entry carries
/// both APIs' fields, the list Anthropic's paging fields).
pub(crate) fn models_body(names: &[String]) -> Bytes {
    let data: Vec<serde_json::Value> = names
        .iter()
        .map(|n| {
            serde_json::json!({"id": n, "object": "model", "created": 0, "owned_by": "llmgw",
                "type": "model", "display_name": n, "created_at": "1970-01-01T00:00:00Z"})
        })
        .collect();
    let body = serde_json::json!({"object": "list", "data": data, "has_more": false,
        "first_id": names.first(), "last_id": names.last()});
    Bytes::from(serde_json::to_vec(&body).unwrap_or_default())
}

pub(crate) fn json_response(status: StatusCode, body: impl Into<Body>) -> Response {
    let mut r = Response::new(body.into());
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}
