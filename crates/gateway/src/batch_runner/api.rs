//! The routes of the Files and Batches APIs: who calls, then the service.

use crate::batches::Page;
use crate::state::{json_response, AppState};
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use llmgw_core::error::ApiError;
use std::sync::Arc;

/// Largest `POST /v1/batches` body (three ids and a little metadata).
const MAX_CREATE_BODY: usize = 64 << 10;

/// `/v1/files` and `/v1/batches` (and the same without `/v1`).
pub fn routes(api: axum::Router<Arc<AppState>>) -> axum::Router<Arc<AppState>> {
    let mut api = api;
    for base in ["/v1", ""] {
        api = api
            .route(&format!("{base}/files"), post(create_file).get(list_files))
            .route(
                &format!("{base}/files/{{id}}"),
                get(get_file).delete(delete_file),
            )
            .route(&format!("{base}/files/{{id}}/content"), get(file_content))
            .route(
                &format!("{base}/batches"),
                post(create_batch).get(list_batches),
            )
            .route(&format!("{base}/batches/{{id}}"), get(get_batch))
            .route(&format!("{base}/batches/{{id}}/cancel"), post(cancel_batch));
    }
    api
}

fn json(r: Result<serde_json::Value, ApiError>) -> Response {
    match r {
        Ok(v) => json_response(StatusCode::OK, serde_json::to_vec(&v).unwrap_or_default()),
        Err(e) => e.into_response(),
    }
}

async fn create_file(State(s): State<Arc<AppState>>, headers: HeaderMap, body: Body) -> Response {
    let caller = match s.caller(&headers) {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    json(s.batches.create_file(&caller, &headers, body).await)
}

async fn list_files(
    State(s): State<Arc<AppState>>,
    headers: HeaderMap,
    Query(p): Query<Page>,
) -> Response {
    json(
        s.caller(&headers)
            .and_then(|c| s.batches.list_files(&c, &p)),
    )
}

async fn get_file(
    State(s): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    json(s.caller(&headers).and_then(|c| s.batches.get_file(&c, &id)))
}

async fn delete_file(
    State(s): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    json(
        s.caller(&headers)
            .and_then(|c| s.batches.delete_file(&c, &id)),
    )
}

async fn file_content(
    State(s): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let caller = match s.caller(&headers) {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    match s.batches.file_content(&caller, &id).await {
        Ok(body) => {
            let mut r = Response::new(body);
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            );
            r
        }
        Err(e) => e.into_response(),
    }
}

async fn create_batch(State(s): State<Arc<AppState>>, headers: HeaderMap, body: Body) -> Response {
    let caller = match s.caller(&headers) {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    let bytes = match crate::body::read_body(body, &headers, MAX_CREATE_BODY).await {
        Ok(b) => b,
        Err(e) => return e.into_response(),
    };
    json(s.batches.create_batch(&caller, &bytes).await)
}

async fn get_batch(
    State(s): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    json(
        s.caller(&headers)
            .and_then(|c| s.batches.get_batch(&c, &id)),
    )
}

async fn list_batches(
    State(s): State<Arc<AppState>>,
    headers: HeaderMap,
    Query(p): Query<Page>,
) -> Response {
    json(
        s.caller(&headers)
            .and_then(|c| s.batches.list_batches(&c, &p)),
    )
}

async fn cancel_batch(
    State(s): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    json(
        s.caller(&headers)
            .and_then(|c| s.batches.cancel_batch(&c, &id)),
    )
}
