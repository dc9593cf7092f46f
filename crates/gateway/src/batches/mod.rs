//! OpenAI's Files and Batches APIs, run by the gateway itself (issue 27): SGLang and vLLM
//! have no batch routes, and a cluster's idle GPUs are where an evaluation sweep should
//! run, behind everyone's interactive requests.
//!
//! - **Where**: `[batches] dir`, else `batches/` in the state directory (the shared
//!   filesystem every generation of the gateway sees): `files/` ([`files`]) and
//!   `batches/<id>.json` ([`record`]); directories 0700, files 0600.
//! - **Whose**: a file and a batch belong to the key that made them; another key gets
//!   404, the master key sees all. Every line is sent as its owner, so it is billed to
//!   that key (spend rows as for any request) and its limits apply.
//! - **How it runs** (`batch_runner`, which also holds the routes): a background task per batch sends its lines through the
//!   gateway's own request path, in process, at `batch` priority, so they queue behind
//!   interactive and default requests in the fair-share queue; at most `[batches]
//!   concurrency` lines of a batch at once; only to local deployments unless `[batches]
//!   allow_cloud`.
//! - **Progress** is the output and error files themselves: each finished line is
//!   appended (with its `custom_id`) as soon as it is known; a gateway that starts reads
//!   them back and runs only the lines they do not name. A batch is run by one process at
//!   a time (an `flock` on `batches/<id>.lock`), so replicas and a renewal's two
//!   generations never run it twice.

pub mod files;
pub mod record;

use crate::keys::Caller;
use axum::http::StatusCode;
use llmgw_core::config::BatchesConfig;
use llmgw_core::error::ApiError;
use record::BatchRecord;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio_util::sync::CancellationToken;

/// Most batches one `GET /v1/batches` or `/v1/files` page returns.
const MAX_PAGE: usize = 10_000;

/// A batch this process knows: its record, and whether a runner of this process has it.
pub struct Live {
    pub rec: Mutex<BatchRecord>,
    /// Cancelled by `POST /v1/batches/{id}/cancel` (here, or seen on disk).
    pub cancel: CancellationToken,
    pub running: AtomicBool,
}

impl Live {
    pub fn snapshot(&self) -> BatchRecord {
        self.rec.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
    pub fn update(&self, f: impl FnOnce(&mut BatchRecord)) {
        f(&mut self.rec.lock().unwrap_or_else(|e| e.into_inner()));
    }
}

/// Lines finished by this process, for `/metrics`.
#[derive(Default)]
pub struct Stats {
    pub completed: AtomicU64,
    pub failed: AtomicU64,
}

/// The files and batches of one gateway.
pub struct Batches {
    dir: Option<PathBuf>,
    pub(crate) cfg: BatchesConfig,
    /// Longest input line (`[server] max_body_bytes`: a line is a request body).
    pub(crate) max_line: usize,
    live: Mutex<HashMap<String, Arc<Live>>>,
    /// Wakes the executor (a batch was created or cancelled).
    pub(crate) wake: tokio::sync::Notify,
    /// Stops every runner (shutdown): no new line starts, those in flight finish.
    pub(crate) stop: CancellationToken,
    pub(crate) tasks: tokio_util::task::TaskTracker,
    pub stats: Stats,
}

impl std::fmt::Debug for Batches {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batches")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

pub(crate) fn now_s() -> u64 {
    llmgw_core::state::now_unix_ms() / 1000
}

/// A fresh id: `prefix` and 24 random hex digits.
pub(crate) fn new_id(prefix: &str) -> String {
    let mut b = [0u8; 12];
    if getrandom::getrandom(&mut b).is_err() {
        b = fastrand::u128(..).to_le_bytes()[..12]
            .try_into()
            .unwrap_or_default();
    }
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!("{prefix}{hex}")
}

/// An id from a URL may name a file in our directory only if it is one of ours in shape:
/// letters, digits, `-` and `_` (no `/`, no `..`).
pub(crate) fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

pub(crate) fn bad_request(message: impl Into<String>) -> ApiError {
    ApiError::bad_request(message)
}

pub(crate) fn not_found_file(id: &str) -> ApiError {
    ApiError::not_found(format!(
        "No such File object: {}",
        id.chars().take(80).collect::<String>()
    ))
    .with_param("id")
}

fn not_found_batch(id: &str) -> ApiError {
    ApiError::not_found(format!(
        "No batch found with id '{}'.",
        id.chars().take(80).collect::<String>()
    ))
    .with_param("batch_id")
}

/// A filesystem failure: logged with its cause, answered as a 500 that says what failed.
pub(crate) fn io_error(what: &str, e: &std::io::Error) -> ApiError {
    tracing::warn!(error = %e, "batches: cannot {what}");
    ApiError::internal(format!(
        "the gateway cannot {what} in its batches directory ({}); tell its administrator",
        e.kind()
    ))
}

/// Who may see what: `None` for the master key (everything), else the key's id.
fn viewer(caller: &Caller) -> Option<&str> {
    match caller {
        Caller::Master => None,
        Caller::Key(k) => Some(&k.rec.id),
    }
}

fn owner_of(caller: &Caller) -> String {
    viewer(caller).unwrap_or_default().to_string()
}

/// `limit` and `after` of a list request.
#[derive(Debug, Default, serde::Deserialize)]
pub struct Page {
    pub limit: Option<usize>,
    pub after: Option<String>,
    pub purpose: Option<String>,
}

/// One page of `items` (newest first) after `after`, as OpenAI's list object.
fn page(items: Vec<(String, serde_json::Value)>, p: &Page, default: usize) -> serde_json::Value {
    let limit = p.limit.unwrap_or(default).clamp(1, MAX_PAGE);
    let start = match &p.after {
        Some(a) => items
            .iter()
            .position(|(id, _)| id == a)
            .map_or(0, |i| i + 1),
        None => 0,
    };
    let rest = items.len().saturating_sub(start);
    let data: Vec<serde_json::Value> = items
        .into_iter()
        .skip(start)
        .take(limit)
        .map(|(_, v)| v)
        .collect();
    serde_json::json!({"object": "list", "first_id": data.first().map(|v| v["id"].clone()),
        "last_id": data.last().map(|v| v["id"].clone()), "has_more": rest > limit, "data": data})
}

impl Batches {
    /// The service; `state_dir` holds `batches/` unless `[batches] dir` says otherwise.
    pub fn new(cfg: &BatchesConfig, state_dir: Option<&Path>, max_line: usize) -> Arc<Batches> {
        let dir = cfg
            .dir
            .clone()
            .or_else(|| state_dir.map(|d| d.join("batches")));
        if let Some(d) = &dir {
            files::sweep_parts(d);
        }
        Arc::new(Batches {
            dir,
            cfg: cfg.clone(),
            max_line,
            live: Mutex::new(HashMap::new()),
            wake: tokio::sync::Notify::new(),
            stop: CancellationToken::new(),
            tasks: tokio_util::task::TaskTracker::new(),
            stats: Stats::default(),
        })
    }

    /// The directory, or the error every route answers without one.
    pub(crate) fn dir(&self) -> Result<&Path, ApiError> {
        self.dir.as_deref().ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_IMPLEMENTED,
                "invalid_request_error",
                "files and batches need a place on disk: run the gateway with --state-dir (llmgw start does), or set [batches] dir",
            )
            .with_code("batches_unavailable")
        })
    }

    pub(crate) fn batch_path(dir: &Path, id: &str) -> PathBuf {
        dir.join("batches").join(format!("{id}.json"))
    }

    /// Writes a batch's record.
    pub(crate) fn save(&self, rec: &BatchRecord) -> Result<(), ApiError> {
        let dir = self.dir()?;
        let text = serde_json::to_vec(rec).map_err(|e| ApiError::internal(e.to_string()))?;
        llmgw_core::state::write_atomic(&Self::batch_path(dir, &rec.id), &text, 0o600)
            .map_err(|e| io_error("write a batch's record", &e))
    }

    /// A batch's record from disk (`None`: no such batch).
    pub(crate) fn read(dir: &Path, id: &str) -> Option<BatchRecord> {
        if !valid_id(id) {
            return None;
        }
        let text = std::fs::read(Self::batch_path(dir, id)).ok()?;
        serde_json::from_slice(&text).ok()
    }

    /// The live entry of batch `id`, loaded from disk when this process has not seen it.
    pub(crate) fn live(&self, id: &str) -> Option<Arc<Live>> {
        if let Some(l) = self.live_map().get(id) {
            if l.running.load(Ordering::Acquire) {
                return Some(l.clone());
            }
        }
        // Not run here: the disk has the freshest record (another process may run it).
        let rec = Self::read(self.dir.as_deref()?, id)?;
        let mut map = self.live_map();
        let entry = map.entry(id.to_string()).or_insert_with(|| {
            Arc::new(Live {
                rec: Mutex::new(rec.clone()),
                cancel: CancellationToken::new(),
                running: AtomicBool::new(false),
            })
        });
        if !entry.running.load(Ordering::Acquire) {
            entry.update(|r| *r = rec);
        }
        Some(entry.clone())
    }

    pub(crate) fn live_map(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Live>>> {
        self.live.lock().unwrap_or_else(|e| e.into_inner())
    }

    // ---- Files ----

    pub async fn create_file(
        &self,
        caller: &Caller,
        headers: &axum::http::HeaderMap,
        body: axum::body::Body,
    ) -> Result<serde_json::Value, ApiError> {
        let dir = self.dir()?;
        let meta = files::upload(
            dir,
            &owner_of(caller),
            headers,
            body,
            self.cfg.max_file_bytes,
        )
        .await?;
        tracing::info!(file = %meta.id, bytes = meta.bytes, "batches: file uploaded");
        Ok(meta.json())
    }

    pub fn list_files(&self, caller: &Caller, p: &Page) -> Result<serde_json::Value, ApiError> {
        let dir = self.dir()?;
        let items = files::list(dir, viewer(caller))
            .into_iter()
            .filter(|m| p.purpose.as_ref().is_none_or(|want| want == &m.purpose))
            .map(|m| (m.id.clone(), m.json()))
            .collect();
        Ok(page(items, p, MAX_PAGE))
    }

    pub fn get_file(&self, caller: &Caller, id: &str) -> Result<serde_json::Value, ApiError> {
        Ok(files::find(self.dir()?, id, viewer(caller))?.json())
    }

    pub async fn file_content(
        &self,
        caller: &Caller,
        id: &str,
    ) -> Result<axum::body::Body, ApiError> {
        let dir = self.dir()?;
        files::find(dir, id, viewer(caller))?;
        files::content(&files::content_path(dir, id)).await
    }

    pub fn delete_file(&self, caller: &Caller, id: &str) -> Result<serde_json::Value, ApiError> {
        files::delete(self.dir()?, id, viewer(caller))?;
        Ok(serde_json::json!({"id": id, "object": "file", "deleted": true}))
    }

    // ---- Batches ----

    pub async fn create_batch(
        &self,
        caller: &Caller,
        body: &[u8],
    ) -> Result<serde_json::Value, ApiError> {
        let dir = self.dir()?.to_path_buf();
        let req = record::CreateBatch::parse(body)?;
        let input = files::find(&dir, &req.input_file_id, viewer(caller))
            .map_err(|e| e.with_param("input_file_id"))?;
        if input.purpose != "batch" {
            return Err(bad_request(format!(
                "file {} has purpose {:?}; a batch's input must be uploaded with purpose \"batch\"",
                input.id, input.purpose
            ))
            .with_param("input_file_id"));
        }
        let path = files::content_path(&dir, &input.id);
        let (endpoint, max_lines, max_line) =
            (req.endpoint.clone(), self.cfg.max_lines, self.max_line);
        let total = tokio::task::spawn_blocking(move || {
            record::validate(&path, &endpoint, max_lines, max_line)
        })
        .await
        .map_err(|e| ApiError::internal(format!("the input file's check failed: {e}")))??;
        let now = now_s();
        let rec = BatchRecord {
            id: new_id("batch_"),
            owner: owner_of(caller),
            endpoint: req.endpoint,
            input_file_id: input.id,
            completion_window: req.completion_window,
            status: "in_progress".into(),
            output_file: new_id("file-"),
            error_file: new_id("file-"),
            created_at: now,
            in_progress_at: Some(now),
            expires_at: now.saturating_add(86_400),
            finalizing_at: None,
            completed_at: None,
            failed_at: None,
            expired_at: None,
            cancelling_at: None,
            cancelled_at: None,
            total,
            completed: 0,
            failed: 0,
            metadata: req.metadata,
            errors: None,
            paused: None,
        };
        llmgw_core::state::ensure_dir(&dir.join("batches"))
            .map_err(|e| io_error("create the batches directory", &e))?;
        self.save(&rec)?;
        let json = rec.json();
        tracing::info!(batch = %rec.id, lines = total, owner = %rec.owner, "batches: created");
        self.live_map().insert(
            rec.id.clone(),
            Arc::new(Live {
                rec: Mutex::new(rec),
                cancel: CancellationToken::new(),
                running: AtomicBool::new(false),
            }),
        );
        self.wake.notify_one();
        Ok(json)
    }

    /// Batch `id` if `caller` may see it.
    fn visible(&self, caller: &Caller, id: &str) -> Result<Arc<Live>, ApiError> {
        self.dir()?;
        let live = self.live(id).ok_or_else(|| not_found_batch(id))?;
        match viewer(caller) {
            Some(me) if me != live.snapshot().owner => Err(not_found_batch(id)),
            _ => Ok(live),
        }
    }

    pub fn get_batch(&self, caller: &Caller, id: &str) -> Result<serde_json::Value, ApiError> {
        Ok(self.visible(caller, id)?.snapshot().json())
    }

    pub fn list_batches(&self, caller: &Caller, p: &Page) -> Result<serde_json::Value, ApiError> {
        let dir = self.dir()?;
        let mut recs: Vec<BatchRecord> = std::fs::read_dir(dir.join("batches"))
            .map(|d| {
                d.take(200_000)
                    .flatten()
                    .filter_map(|e| {
                        let name = e.file_name();
                        let id = name.to_str()?.strip_suffix(".json")?.to_string();
                        Some(self.live(&id)?.snapshot())
                    })
                    .collect()
            })
            .unwrap_or_default();
        if let Some(me) = viewer(caller) {
            recs.retain(|r| r.owner == me);
        }
        recs.sort_by(|a, b| b.created_at.cmp(&a.created_at).then(b.id.cmp(&a.id)));
        let items = recs.into_iter().map(|r| (r.id.clone(), r.json())).collect();
        Ok(page(items, p, 20))
    }

    pub fn cancel_batch(&self, caller: &Caller, id: &str) -> Result<serde_json::Value, ApiError> {
        let live = self.visible(caller, id)?;
        let rec = live.snapshot();
        if rec.is_over() {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "invalid_request_error",
                format!("Cannot cancel a batch with status '{}'.", rec.status),
            )
            .with_code("batch_not_cancellable"));
        }
        if rec.status != "cancelling" {
            live.update(|r| {
                r.status = "cancelling".into();
                r.cancelling_at = Some(now_s());
            });
            self.save(&live.snapshot())?;
            tracing::info!(batch = %id, "batches: cancelling");
        }
        live.cancel.cancel();
        self.wake.notify_one();
        Ok(live.snapshot().json())
    }

    /// `/metrics` lines: batches by status (those this process has seen), lines done.
    pub fn metrics_text(&self) -> String {
        let mut by: std::collections::BTreeMap<String, u64> = [
            "in_progress",
            "paused",
            "cancelling",
            "completed",
            "failed",
            "expired",
            "cancelled",
        ]
        .into_iter()
        .map(|s| (s.to_string(), 0))
        .collect();
        for l in self.live_map().values() {
            let r = l.snapshot();
            let s = if r.paused.is_some() && r.status == "in_progress" {
                "paused".to_string()
            } else {
                r.status
            };
            *by.entry(s).or_insert(0) += 1;
        }
        let mut out = String::from(
            "# HELP llmgw_batches Batches this gateway knows, by status (paused: waiting for a budget).\n# TYPE llmgw_batches gauge\n",
        );
        for (s, n) in by {
            out.push_str(&format!("llmgw_batches{{status=\"{s}\"}} {n}\n"));
        }
        out.push_str("# HELP llmgw_batch_lines_total Batch lines this gateway finished, by result.\n# TYPE llmgw_batch_lines_total counter\n");
        out.push_str(&format!(
            "llmgw_batch_lines_total{{result=\"completed\"}} {}\nllmgw_batch_lines_total{{result=\"failed\"}} {}\n",
            self.stats.completed.load(Ordering::Relaxed),
            self.stats.failed.load(Ordering::Relaxed)
        ));
        out
    }
}
