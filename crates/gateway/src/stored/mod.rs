//! Stored Responses API answers: `store` (OpenAI's default `true` when absent, see
//! `[responses] default_store`), `previous_response_id`, and `GET`/`DELETE
//! /v1/responses/{id}`, `GET /v1/responses/{id}/input_items` (in `routes`).
//!
//! - **Where**: the `[store]` database (PostgreSQL shared by replicas, else the SQLite
//!   file in the state directory, else memory), table `llmgw_responses`
//!   (`store::responses`), through a connection of its own, opened on first use, so a
//!   gateway that never stores pays nothing and responses never wait behind the spend
//!   writer.
//! - **Whose**: a response belongs to the virtual key that made it; another key gets
//!   404 (400 for `previous_response_id`, as OpenAI answers), the master key sees all.
//! - **When**: kept `[responses] retention` (30 days by default); expired rows are never
//!   read and are deleted hourly.
//! - **Continuing**: `previous_response_id` reads the chain (one recursive query for the
//!   links, one for the contents) and hands the wire crate the conversation it stands
//!   for; a `responses_api` deployment that stored every response of the chain itself
//!   gets the request unchanged, any other deployment the conversation rebuilt. A
//!   rebuilt conversation is capped at `[server] max_body_bytes`, as if the client had
//!   sent it.
//! - **Storing**: a JSON answer is stored before it is returned; a stream's final event
//!   (`response.completed`, which repeats the whole response) is held until the row is
//!   written ([`stream`]), so a client that continues at once, on any replica, finds it.
//!   A failed write is logged and the answer still delivered.

mod stream;

use crate::keys::Caller;
use crate::store::responses::StoredResponse;
use crate::store::{sqlite::SqliteStore, Store};
use axum::body::Body;
use axum::http::StatusCode;
use axum::response::Response;
use bytes::Bytes;
use llmgw_core::config::LoadedConfig;
use llmgw_core::error::ApiError;
use llmgw_router::Router;
use llmgw_wire::prepared::{History, Prepared};
use llmgw_wire::request::{ClientRequest, Endpoint, Format};
use llmgw_wire::responses::stored as wire;
use std::path::PathBuf;
use std::sync::Arc;
use tokio::sync::OnceCell;

/// Longest response id looked up (ids are ~30 characters; the wire crate caps
/// `previous_response_id` alike).
const MAX_ID: usize = 256;

/// Longest chain `previous_response_id` follows.
const MAX_DEPTH: i64 = 10_000;

/// How often expired responses are deleted.
const SWEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(3600);

/// Where the database is, read from the config at start; opened on first use.
enum Where {
    Postgres(llmgw_core::config::Secret),
    Sqlite(Option<PathBuf>),
}

/// The stored-responses service (one per gateway).
pub struct Responses {
    place: Where,
    store: OnceCell<Arc<Store>>,
    retention_ms: i64,
    default_store: bool,
    /// Largest conversation a chain may rebuild (`[server] max_body_bytes`).
    max_conversation: usize,
}

impl std::fmt::Debug for Responses {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Responses").finish_non_exhaustive()
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// The owner id of a caller: a virtual key's id; `""` for the master key (or no key).
fn owner(caller: &Caller) -> &str {
    match caller {
        Caller::Master => "",
        Caller::Key(k) => &k.rec.id,
    }
}

fn not_found(id: &str) -> ApiError {
    ApiError::not_found(format!("Response with id '{id}' not found."))
        .with_param("response_id")
        .with_code("not_found")
}

fn unavailable(e: impl std::fmt::Display) -> ApiError {
    tracing::warn!(error = %e, "stored responses: the database failed");
    ApiError::unavailable(
        "stored responses are unavailable: the database did not answer; retry in a moment",
    )
    .with_code("store_unavailable")
    .with_retry_after(1)
}

impl Responses {
    /// The service for `cfg` (nothing is opened yet).
    pub fn new(
        cfg: &LoadedConfig,
        state_dir: Option<&std::path::Path>,
        max_conversation: usize,
    ) -> Arc<Responses> {
        let place = match &cfg.store_url {
            Some(url) => Where::Postgres(url.clone()),
            None => Where::Sqlite(
                cfg.config
                    .store
                    .path
                    .clone()
                    .or_else(|| state_dir.map(|d| d.join(crate::keys::service::DB_FILE))),
            ),
        };
        let r = &cfg.config.responses;
        Arc::new(Responses {
            place,
            store: OnceCell::new(),
            retention_ms: i64::try_from(r.retention.0.as_millis()).unwrap_or(i64::MAX),
            default_store: r.default_store,
            max_conversation,
        })
    }

    /// What an absent `store` means.
    pub fn default_store(&self) -> bool {
        self.default_store
    }

    /// The database, opened (and its table created) on first use; the sweeper starts then.
    async fn store(self: &Arc<Self>) -> Result<&Arc<Store>, ApiError> {
        let this = self.clone();
        self.store
            .get_or_try_init(|| async move {
                let store = match &this.place {
                    Where::Postgres(url) => Store::Postgres(Box::new(
                        crate::store::postgres::PgStore::open(url.expose()).await?,
                    )),
                    Where::Sqlite(path) => {
                        if path.is_none() {
                            tracing::warn!("no state directory and no [store]: stored responses are kept in memory only and lost when the gateway stops");
                        }
                        let p = path.clone();
                        Store::Sqlite(
                            tokio::task::spawn_blocking(move || SqliteStore::open(p.as_deref()))
                                .await
                                .map_err(|e| crate::store::StoreError::Other(e.to_string()))??,
                        )
                    }
                };
                store.responses_schema().await?;
                let store = Arc::new(store);
                spawn_sweeper(Arc::downgrade(&store));
                Ok::<_, crate::store::StoreError>(store)
            })
            .await
            .map_err(unavailable)
    }

    /// A stored response the caller may see.
    pub async fn get(
        self: &Arc<Self>,
        caller: &Caller,
        id: &str,
    ) -> Result<StoredResponse, ApiError> {
        if id.is_empty() || id.len() > MAX_ID {
            return Err(not_found(id.get(..64).unwrap_or("(too long)")));
        }
        let found = self
            .store()
            .await?
            .get_response(id, now_ms())
            .await
            .map_err(unavailable)?;
        match found {
            Some(r) if matches!(caller, Caller::Master) || r.owner == owner(caller) => Ok(r),
            _ => Err(not_found(id)),
        }
    }

    /// Deletes a stored response the caller may see.
    pub async fn delete(self: &Arc<Self>, caller: &Caller, id: &str) -> Result<(), ApiError> {
        self.get(caller, id).await?;
        self.store()
            .await?
            .delete_response(id)
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    /// Prepares a Responses request: its tool names, and for `previous_response_id` the
    /// stored conversation. A stored or continued request skips the response cache (a
    /// stored answer needs an id of its own).
    pub async fn prepare(
        self: &Arc<Self>,
        caller: &Caller,
        req: &mut ClientRequest,
    ) -> Result<(), ApiError> {
        let default_store = self.default_store;
        let mut prepared = if req.body.len() <= llmgw_wire::request::PARSE_INLINE_MAX {
            llmgw_wire::responses::prepare::prepare(&req.body, default_store)?
        } else {
            let body = req.body.clone();
            llmgw_core::heavy::run(move || {
                llmgw_wire::responses::prepare::prepare(&body, default_store)
            })
            .await
            .unwrap_or_else(|busy| {
                Err(ApiError::unavailable(busy.to_string())
                    .with_code("server_busy")
                    .with_retry_after(1))
            })?
        };
        if let Some(id) = prepared.previous_response_id.clone() {
            prepared.history = Some(self.history(caller, &id).await?);
        }
        if prepared.store || prepared.history.is_some() {
            req.options.cache = serde_json::value::RawValue::from_string("false".into()).ok();
        }
        req.prepared = Some(Arc::new(prepared));
        Ok(())
    }

    /// The conversation up to the stored response `id`.
    async fn history(self: &Arc<Self>, caller: &Caller, id: &str) -> Result<History, ApiError> {
        let gone = |what: String| {
            ApiError::bad_request(what)
                .with_param("previous_response_id")
                .with_code("previous_response_not_found")
        };
        let store = self.store().await?;
        let now = now_ms();
        let links = store
            .response_chain(id, now, MAX_DEPTH)
            .await
            .map_err(unavailable)?;
        let Some(head) = links.first() else {
            return Err(gone(format!("Previous response with id '{id}' not found.")));
        };
        if !matches!(caller, Caller::Master) && head.owner != owner(caller) {
            return Err(gone(format!("Previous response with id '{id}' not found.")));
        }
        for pair in links.windows(2) {
            if pair[0].previous_id.as_deref() != Some(pair[1].id.as_str()) {
                return Err(gone(format!("the conversation of '{id}' is incomplete")));
            }
        }
        if let Some(missing) = links.last().and_then(|l| l.previous_id.clone()) {
            return Err(gone(if links.len() as i64 >= MAX_DEPTH {
                format!("the conversation of '{id}' is longer than {MAX_DEPTH} responses; start a new one")
            } else {
                format!(
                    "the conversation of '{id}' continues response '{missing}', which has expired or was deleted"
                )
            }));
        }
        let size: i64 = links.iter().map(|l| l.size.max(0)).sum();
        if usize::try_from(size).map_or(true, |s| s > self.max_conversation) {
            return Err(gone(format!(
                "the conversation of '{id}' is larger than [server] max_body_bytes ({} bytes); start a new one",
                self.max_conversation
            )));
        }
        let lives_at = links[0]
            .lives_at
            .clone()
            .filter(|d| links.iter().all(|l| l.lives_at.as_deref() == Some(d)));
        let ids: Vec<String> = links.iter().map(|l| l.id.clone()).collect();
        let rows = store.get_responses(&ids, now).await.map_err(unavailable)?;
        let items = llmgw_core::heavy::run(move || {
            // Oldest first.
            let mut turns = Vec::with_capacity(ids.len());
            for id in ids.iter().rev() {
                let r = rows.iter().find(|r| &r.id == id).ok_or_else(|| {
                    ApiError::bad_request(format!("the conversation's response '{id}' has expired"))
                        .with_param("previous_response_id")
                })?;
                turns.push(wire::Turn {
                    input: &r.input,
                    response: &r.response,
                });
            }
            wire::history(&turns)
        })
        .await
        .unwrap_or_else(|busy| {
            Err(ApiError::unavailable(busy.to_string())
                .with_code("server_busy")
                .with_retry_after(1))
        })?;
        Ok(History { items, lives_at })
    }

    /// What storing the answer to `req` needs, when it is stored.
    pub fn keep(self: &Arc<Self>, caller: &Caller, req: &ClientRequest) -> Option<Keep> {
        if req.endpoint != Endpoint::Responses {
            return None;
        }
        let prepared = req.prepared.clone()?;
        prepared.store.then(|| Keep {
            svc: self.clone(),
            owner: owner(caller).to_string(),
            req: req.clone(),
            prepared,
        })
    }

    /// Writes one row.
    async fn put(self: &Arc<Self>, row: StoredResponse) {
        let id = row.id.clone();
        let r = match self.store().await {
            Ok(s) => s.put_response(&row).await.map_err(|e| e.to_string()),
            Err(e) => Err(e.message),
        };
        if let Err(e) = r {
            tracing::warn!(response = %llmgw_core::logging::Clean(&id), error = %llmgw_core::logging::Clean(&e), "a response could not be stored; its answer is still delivered");
        }
    }
}

/// Deletes expired responses at once and then hourly, while the store is in use.
fn spawn_sweeper(store: std::sync::Weak<Store>) {
    tokio::spawn(async move {
        loop {
            let Some(s) = store.upgrade() else { return };
            match s.sweep_responses(now_ms()).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(deleted = n, "expired stored responses deleted"),
                Err(e) => {
                    tracing::warn!(error = %e, "expired stored responses could not be deleted")
                }
            }
            drop(s);
            tokio::time::sleep(SWEEP_EVERY).await;
        }
    });
}

/// Storing one answer.
pub struct Keep {
    svc: Arc<Responses>,
    owner: String,
    req: ClientRequest,
    prepared: Arc<Prepared>,
}

impl Keep {
    /// Stores a successful answer (a JSON body before it is returned, a stream before
    /// its final event goes out) and returns it.
    pub async fn finish(self, router: &Router, resp: Response) -> Response {
        if resp.status() != StatusCode::OK {
            return resp;
        }
        // The deployment that answered holds the response itself when the request went
        // to it unchanged, `store` and all.
        let served = resp
            .headers()
            .get(llmgw_router::names::DEPLOYMENT)
            .and_then(|v| v.to_str().ok())
            .and_then(|id| router.deployments().find(|d| d.id == id));
        let lives_at = served
            .filter(|d| {
                d.provider.wire(d, &self.req) == Format::Responses
                    && llmgw_wire::convert::passthrough(d, &self.req)
            })
            .map(|d| d.id.clone());
        let (parts, body) = resp.into_parts();
        if self.req.stream {
            let s = stream::Storing::new(self, lives_at, body.into_data_stream());
            return Response::from_parts(parts, Body::from_stream(s.into_stream()));
        }
        match axum::body::to_bytes(body, usize::MAX).await {
            Ok(bytes) => {
                self.store(lives_at, &bytes).await;
                Response::from_parts(parts, Body::from(bytes))
            }
            Err(e) => ApiError::bad_gateway(format!("the answer broke off: {e}"))
                .into_response_for(llmgw_core::error::Api::Responses),
        }
    }

    /// Stores the response object `response` (the JSON body, or a stream's final one).
    async fn store(self, lives_at: Option<String>, response: &[u8]) {
        let Ok(text) = std::str::from_utf8(response) else {
            return;
        };
        let Some(id) = wire::response_id(text) else {
            tracing::warn!("an answer to store has no response id; not stored");
            return;
        };
        let body = self.req.body.clone();
        let input = if body.len() <= llmgw_wire::request::PARSE_INLINE_MAX {
            wire::input_items(&body).ok()
        } else {
            llmgw_core::heavy::run(move || wire::input_items(&body).ok())
                .await
                .ok()
                .flatten()
        };
        let Some(input) = input else {
            return;
        };
        let now = now_ms();
        let row = StoredResponse {
            id,
            owner: self.owner,
            created_ms: now,
            expires_ms: now.saturating_add(self.svc.retention_ms),
            previous_id: self.prepared.previous_response_id.clone(),
            lives_at,
            model: self.req.model.clone(),
            input,
            response: text.to_string(),
        };
        self.svc.put(row).await;
    }
}

/// The stored response object as the retrieve endpoint returns it.
pub fn body(r: &StoredResponse) -> Bytes {
    Bytes::from(r.response.clone())
}
