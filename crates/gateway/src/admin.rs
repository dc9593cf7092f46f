//! The admin API: keys, teams and spend, shaped like LiteLLM's proxy so its scripts port
//! with few changes. Master key only; without a master key (a keyless loopback gateway)
//! every admin route answers 403 saying how to enable it.
//!
//! | route | what |
//! |---|---|
//! | `POST /key/generate` | new key (shown once): `key_alias`, `models`, `max_budget`, `budget_duration`, `rpm_limit`, `tpm_limit`, `max_parallel_requests`, `duration`, `team_id`, `user_id` (an existing user, else 400), `metadata`, `blocked`, and per end user `end_user_max_budget`, `end_user_budget_duration`, `end_user_rpm_limit`, `end_user_tpm_limit` |
//! | `POST /key/update` | `{"key": KEY|id|alias, ...same fields}`; `null` clears a field |
//! | `POST /key/delete` | `{"keys": [...]}` / `{"key_aliases": [...]}` |
//! | `POST /key/block`, `/key/unblock` | `{"key": ...}` |
//! | `GET /key/info?key=`, `GET /key/list` | records with current-period spend |
//! | `POST /team/new`, `/team/update`, `GET /team/info?team_id=` | teams |
//! | `POST /user/new`, `/user/update` | users: `user_id`, `user_alias`, `models`, `max_budget`, `budget_duration`, `rpm_limit`, `tpm_limit`, `max_parallel_requests`, `metadata`, `blocked` |
//! | `POST /user/delete` | `{"user_ids": [...]}`; refused while keys name them unless `"delete_keys": true` |
//! | `GET /user/info?user_id=`, `GET /user/list` | users with current-period spend (and their keys) |
//! | `GET /customer/info?end_user_id=&key=` (also `/end_user/info`) | an end user's spend (store, `start`/`end`) and, per key that limits end users, this period's |
//! | `GET /spend/logs?api_key=&team_id=&user_id=&end_user_id=&start=&end=&limit=` | newest spend rows |
//! | `GET /spend/report?group_by=key|team|user|model&start=&end=` | totals per group |

use crate::keys::KeyService;
use crate::state::AppState;
use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use llmgw_core::error::ApiError;
use serde_json::Value;
use std::collections::HashMap;
use std::sync::Arc;

/// Largest admin request body.
const MAX_BODY: usize = 64 * 1024;

type Params = Result<Query<HashMap<String, String>>, axum::extract::rejection::QueryRejection>;

/// Named handlers for each route (axum needs named async fns), passing the operation on.
macro_rules! handlers {
    ($($name:ident => $how:ident($op:expr)),* $(,)?) => {$(
        async fn $name(s: State<Arc<AppState>>, h: HeaderMap, x: handlers!(@x $how)) -> Response {
            $how(s, h, x, $op).await
        }
    )*};
    (@x handle_write) => { Body };
    (@x handle_read) => { Params };
}

handlers! {
    generate => handle_write(Op::Generate),
    update => handle_write(Op::Update),
    delete => handle_write(Op::Delete),
    block => handle_write(Op::Block),
    unblock => handle_write(Op::Unblock),
    team_new => handle_write(Op::TeamNew),
    team_update => handle_write(Op::TeamUpdate),
    user_new => handle_write(Op::UserNew),
    user_update => handle_write(Op::UserUpdate),
    user_delete => handle_write(Op::UserDelete),
    user_info => handle_read(Read::UserInfo),
    user_list => handle_read(Read::UserList),
    end_user_info => handle_read(Read::EndUserInfo),
    key_info => handle_read(Read::KeyInfo),
    key_list => handle_read(Read::KeyList),
    team_info => handle_read(Read::TeamInfo),
    spend_logs => handle_read(Read::Logs),
    spend_report => handle_read(Read::Report),
}

/// The admin routes (merged into the gateway's router).
pub fn routes() -> axum::Router<Arc<AppState>> {
    axum::Router::new()
        .route("/key/generate", post(generate))
        .route("/key/update", post(update))
        .route("/key/delete", post(delete))
        .route("/key/block", post(block))
        .route("/key/unblock", post(unblock))
        .route("/team/new", post(team_new))
        .route("/team/update", post(team_update))
        .route("/key/info", get(key_info))
        .route("/key/list", get(key_list))
        .route("/team/info", get(team_info))
        .route("/user/new", post(user_new))
        .route("/user/update", post(user_update))
        .route("/user/delete", post(user_delete))
        .route("/user/info", get(user_info))
        .route("/user/list", get(user_list))
        .route("/customer/info", get(end_user_info))
        .route("/end_user/info", get(end_user_info))
        .route("/spend/logs", get(spend_logs))
        .route("/spend/report", get(spend_report))
}

#[derive(Clone, Copy)]
enum Op {
    Generate,
    Update,
    Delete,
    Block,
    Unblock,
    TeamNew,
    TeamUpdate,
    UserNew,
    UserUpdate,
    UserDelete,
}

#[derive(Clone, Copy)]
enum Read {
    KeyInfo,
    KeyList,
    TeamInfo,
    UserInfo,
    UserList,
    EndUserInfo,
    Logs,
    Report,
}

/// The keys service, if the caller holds the master key.
fn admin<'a>(s: &'a AppState, headers: &HeaderMap) -> Result<&'a KeyService, ApiError> {
    let Some(keys) = s.keys.as_deref() else {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "permission_error",
            "the admin API is disabled: this gateway runs without a master key; set [server] master_key (llmgw start generates one)",
        )
        .with_code("admin_disabled"));
    };
    if let Err(e) = s.authorize(headers) {
        let virtual_key = crate::access::presented_key(headers)
            .is_some_and(|k| keys.table().lookup(&crate::keys::hash_key(k)).is_some());
        if virtual_key {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "permission_error",
                "admin calls need the master key; this is a virtual key",
            )
            .with_code("not_admin"));
        }
        return Err(e);
    }
    Ok(keys)
}

fn answer(r: Result<Value, ApiError>) -> Response {
    match r {
        Ok(v) => {
            let mut resp = axum::Json(v).into_response();
            resp.headers_mut().insert(
                "cache-control",
                axum::http::HeaderValue::from_static("no-store"),
            );
            resp
        }
        Err(e) => e.into_response(),
    }
}

async fn handle_write(
    State(s): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
    op: Op,
) -> Response {
    let keys = match admin(&s, &headers) {
        Ok(k) => k,
        Err(e) => return e.into_response(),
    };
    let body = match axum::body::to_bytes(body, MAX_BODY).await {
        Ok(b) => b,
        Err(_) => {
            return ApiError::bad_request(format!(
                "admin request bodies are at most {MAX_BODY} bytes"
            ))
            .into_response()
        }
    };
    answer(match op {
        Op::Generate => keys.generate(&body).await,
        Op::Update => keys.update(&body).await,
        Op::Delete => keys.delete(&body).await,
        Op::Block => keys.block(&body, true).await,
        Op::Unblock => keys.block(&body, false).await,
        Op::TeamNew => keys.team_new(&body).await,
        Op::TeamUpdate => keys.team_update(&body).await,
        Op::UserNew => keys.user_new(&body).await,
        Op::UserUpdate => keys.user_update(&body).await,
        Op::UserDelete => keys.user_delete(&body).await,
    })
}

async fn handle_read(
    State(s): State<Arc<AppState>>,
    headers: HeaderMap,
    q: Params,
    what: Read,
) -> Response {
    let keys = match admin(&s, &headers) {
        Ok(k) => k,
        Err(e) => return e.into_response(),
    };
    let q = match q {
        Ok(Query(q)) => q,
        Err(e) => {
            return ApiError::bad_request(format!("invalid query string: {e}")).into_response()
        }
    };
    let need = |name: &str| {
        q.get(name).map(String::as_str).ok_or_else(|| {
            ApiError::bad_request(format!("give ?{name}=...")).with_param(name.to_string())
        })
    };
    answer(match what {
        Read::KeyInfo => need("key").and_then(|k| keys.info(k)),
        Read::KeyList => Ok(keys.list()),
        Read::TeamInfo => need("team_id").and_then(|t| keys.team_info(t)),
        Read::UserInfo => need("user_id").and_then(|u| keys.user_info(u)),
        Read::UserList => Ok(keys.user_list()),
        Read::EndUserInfo => keys.end_user_info(&q).await,
        Read::Logs => keys.spend_logs(&q).await,
        Read::Report => keys.spend_report(&q).await,
    })
}
