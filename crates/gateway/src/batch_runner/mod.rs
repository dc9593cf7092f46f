//! Batches run (issue 27; the files and records are `batches`'s): the routes ([`api`])
//! and the executor: a background task that finds batches with lines left and runs each in a
//! task of its own, holding an `flock` on `batches/<id>.lock` so that only one process
//! (replica, or generation of a renewed job) runs a batch at a time.
//!
//! A runner reads back the output and error files (the lines they name are done), then
//! sends the other lines through the request path ([`crate::proxy::proxy_for`]) as the
//! batch's owner at `batch` priority, at most `[batches] concurrency` at once, and appends
//! each result the moment it is known (`write` + `flush` to the kernel; `fdatasync` once a
//! second), so a restart or crash resumes where it stopped.
//!
//! - **At most once, once recorded.** A recorded line is never sent again. A line in
//!   flight when the process dies (crash, SIGKILL, node lost) was never recorded and is
//!   sent again by the next runner: at most `concurrency` lines per batch may run twice,
//!   and only after a crash. A graceful stop (SIGTERM, `llmgw stop`/`restart`, a
//!   renewal's handover) starts no new line and waits for those in flight, so none is.
//! - **Failures that are not the line's fault are not recorded**: a line that fails while
//!   the gateway is stopping or handing over is left for the next runner; a rate limit or
//!   full queue (429, 503) is retried with backoff up to [`MAX_TRIES`] times.
//! - **A spent budget pauses the batch**: the line that was refused is held, nothing new
//!   starts, and every [`PAUSE_PROBE`] the held line is tried again; once it is admitted
//!   (a new budget period, a raised budget) the batch goes on. The batch's `status` stays
//!   `in_progress` (OpenAI has no paused state) and its `paused` field says why.

use crate::batches::record::{self, Paused};
use crate::batches::{files, now_s, Batches, Live};
pub mod api;

use crate::keys::Caller;
use crate::state::AppState;
use axum::http::HeaderMap;
use bytes::Bytes;
use llmgw_wire::request::Endpoint;
use std::collections::{HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt as _;

/// How often the executor looks for batches to run (a lock another process held may be
/// free now; another replica may have made a batch).
const SCAN_EVERY: Duration = Duration::from_secs(2);
/// How often a runner saves its counts and looks for a cancel made by another process.
const SAVE_EVERY: Duration = Duration::from_secs(1);
/// How often a paused batch tries its held line again.
pub const PAUSE_PROBE: Duration = Duration::from_secs(5);
/// Tries of a line refused for a passing reason (rate limit, full queue) before its error
/// is recorded.
pub const MAX_TRIES: u32 = 4;
/// Largest answer kept for one line.
const MAX_ANSWER: usize = 64 << 20;

/// Whether the gateway is handing its work to another process (a renewal's successor).
pub type Stopping = Arc<dyn Fn() -> bool + Send + Sync>;

/// Starts the executor.
pub fn spawn(state: Arc<AppState>, handing_over: Stopping) {
    let b = state.batches.clone();
    if b.dir().is_err() {
        return;
    }
    let tasks = b.tasks.clone();
    tasks.spawn(async move {
        loop {
            let stopping = b.stop.is_cancelled() || handing_over();
            if b.stop.is_cancelled() {
                break;
            }
            if !stopping {
                for live in pending(&b) {
                    if live
                        .running
                        .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
                        .is_ok()
                    {
                        let (state, ho) = (state.clone(), handing_over.clone());
                        b.tasks.spawn(async move {
                            run(state, live.clone(), ho).await;
                            live.running.store(false, Ordering::Release);
                        });
                    }
                }
            }
            tokio::select! {
                _ = b.wake.notified() => {}
                _ = tokio::time::sleep(SCAN_EVERY) => {}
                _ = b.stop.cancelled() => {}
            }
        }
    });
}

/// Batches on disk with lines left and no runner here.
fn pending(b: &Batches) -> Vec<Arc<Live>> {
    let Ok(dir) = b.dir() else { return Vec::new() };
    let Ok(entries) = std::fs::read_dir(dir.join("batches")) else {
        return Vec::new();
    };
    entries
        .take(200_000)
        .flatten()
        .filter_map(|e| {
            let name = e.file_name();
            let id = name.to_str()?.strip_suffix(".json")?.to_string();
            let live = b.live(&id)?;
            (!live.running.load(Ordering::Acquire) && !live.snapshot().is_over()).then_some(live)
        })
        .collect()
}

/// One line to send.
struct Item {
    custom_id: String,
    body: Bytes,
    model: String,
    tries: u32,
    not_before: Instant,
}

/// How a line ended.
enum Result_ {
    /// Recorded: the output (`ok`) or error file's line.
    Record { ok: bool, line: Vec<u8> },
    /// Held: the owner's budget is spent.
    Budget(String),
    /// Tried again later (rate limit, full queue), or left for the next runner.
    Again,
}

async fn run(state: Arc<AppState>, live: Arc<Live>, handing_over: Stopping) {
    let b = state.batches.clone();
    let Ok(dir) = b.dir().map(Path::to_path_buf) else {
        return;
    };
    let id = live.snapshot().id;
    let lock = match try_lock(&dir.join("batches").join(format!("{id}.lock"))) {
        Ok(Some(l)) => l,
        Ok(None) => return, // another process runs it
        Err(e) => {
            tracing::warn!(batch = %id, error = %e, "batches: cannot lock the batch");
            return;
        }
    };
    // Under the lock the disk is the truth: another process may have moved it on.
    if let Some(rec) = Batches::read(&dir, &id) {
        live.update(|r| *r = rec);
    }
    if live.snapshot().is_over() {
        return;
    }
    if let Err(e) = run_locked(&state, &dir, &live, &handing_over).await {
        tracing::warn!(batch = %id, error = %e, "batches: the runner stopped on a filesystem error; it will be retried");
    }
    drop(lock);
}

/// Takes the batch's lock without waiting (`None`: someone holds it).
fn try_lock(path: &Path) -> std::io::Result<Option<nix::fcntl::Flock<std::fs::File>>> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(path)?;
    match nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusiveNonblock) {
        Ok(l) => Ok(Some(l)),
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => Ok(None),
        Err((_, e)) => Err(std::io::Error::from(e)),
    }
}

async fn open_append(path: &Path) -> std::io::Result<tokio::fs::File> {
    tokio::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .await
}

async fn run_locked(
    state: &Arc<AppState>,
    dir: &Path,
    live: &Arc<Live>,
    handing_over: &Stopping,
) -> std::io::Result<()> {
    let b = &state.batches;
    let rec = live.snapshot();
    let out_path = files::content_path(dir, &rec.output_file);
    let err_path = files::content_path(dir, &rec.error_file);
    // What the files already record.
    let (done, completed, failed) = {
        let (o, e) = (out_path.clone(), err_path.clone());
        tokio::task::spawn_blocking(move || {
            let mut done = HashSet::new();
            let c = record::recorded(&o, &mut done)?;
            let f = record::recorded(&e, &mut done)?;
            Ok::<_, std::io::Error>((done, c, f))
        })
        .await
        .map_err(std::io::Error::other)??
    };
    live.update(|r| {
        r.completed = completed;
        r.failed = failed;
    });
    if !done.is_empty() {
        tracing::info!(batch = %rec.id, recorded = done.len(), "batches: resuming");
    }
    let mut out = open_append(&out_path).await?;
    let mut err = open_append(&err_path).await?;
    if rec.status == "cancelling" || live.cancel.is_cancelled() {
        return finish(b, dir, live, "cancelled").await;
    }
    if caller_of(state, &rec.owner).is_none() {
        live.update(|r| {
            r.status = "failed".into();
            r.failed_at = Some(now_s());
            r.errors = Some(serde_json::json!({"object": "list", "data": [{"code": "key_deleted",
                "message": "the API key that created this batch no longer exists; its remaining lines were not run",
                "param": null, "line": null}]}));
        });
        let _ = b.save(&live.snapshot());
        return Ok(());
    }
    let Some(endpoint) = endpoint_of(&rec.endpoint) else {
        return Ok(());
    };
    // The input, read on a blocking thread into a bounded channel (skipping done lines).
    let conc = b.cfg.concurrency;
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Item>(conc.saturating_mul(2).max(16));
    {
        let path = files::content_path(dir, &rec.input_file_id);
        let (endpoint, max_line) = (rec.endpoint.clone(), b.max_line);
        tokio::task::spawn_blocking(move || read_input(&path, &endpoint, max_line, &done, &tx));
    }
    let allow_cloud = b.cfg.allow_cloud;
    let mut inflight: tokio::task::JoinSet<(Item, Result_)> = tokio::task::JoinSet::new();
    let mut retry: VecDeque<Item> = VecDeque::new();
    let mut input_done = false;
    let mut last_save = Instant::now();
    let mut last_sync = Instant::now();
    let mut expired = false;
    loop {
        let halt = b.stop.is_cancelled() || handing_over() || live.cancel.is_cancelled();
        if !expired && now_s() >= rec.expires_at {
            expired = true;
        }
        let paused = live.snapshot().paused.is_some();
        if !halt && !expired {
            while inflight.len() < conc {
                let now = Instant::now();
                let item = if retry.front().is_some_and(|i| i.not_before <= now) {
                    retry.pop_front()
                } else if paused {
                    None
                } else {
                    match rx.try_recv() {
                        Ok(i) => Some(i),
                        Err(tokio::sync::mpsc::error::TryRecvError::Empty) => None,
                        Err(tokio::sync::mpsc::error::TryRecvError::Disconnected) => {
                            input_done = true;
                            None
                        }
                    }
                };
                let Some(item) = item else { break };
                let (state, owner) = (state.clone(), rec.owner.clone());
                let path = endpoint_path(endpoint);
                inflight.spawn(async move {
                    let r = send(&state, &owner, endpoint, path, &item, allow_cloud).await;
                    (item, r)
                });
                if paused {
                    break; // one probe at a time
                }
            }
        }
        let finished = input_done && retry.is_empty() && inflight.is_empty();
        if inflight.is_empty() && (halt || expired || finished) {
            break;
        }
        tokio::select! {
            Some(joined) = inflight.join_next(), if !inflight.is_empty() => {
                let Ok((mut item, result)) = joined else { continue };
                let stopping = b.stop.is_cancelled() || handing_over();
                match result {
                    Result_::Record { ok, line } if ok || !stopping => {
                        let f = if ok { &mut out } else { &mut err };
                        f.write_all(&line).await?;
                        f.flush().await?;
                        let (counter, stat) = if ok {
                            (1, &b.stats.completed)
                        } else {
                            (0, &b.stats.failed)
                        };
                        stat.fetch_add(1, Ordering::Relaxed);
                        live.update(|r| {
                            if counter == 1 { r.completed += 1 } else { r.failed += 1 }
                            r.paused = None;
                        });
                    }
                    Result_::Budget(message) => {
                        let newly = live.snapshot().paused.is_none();
                        live.update(|r| {
                            r.paused.get_or_insert(Paused {
                                reason: "budget_exceeded".into(),
                                message,
                                since: now_s(),
                            });
                        });
                        if newly {
                            tracing::warn!(batch = %rec.id, "batches: paused, its key's budget is spent");
                            let _ = b.save(&live.snapshot());
                        }
                        item.not_before = Instant::now() + PAUSE_PROBE;
                        retry.push_front(item);
                    }
                    Result_::Again | Result_::Record { .. } => {
                        if !stopping {
                            item.tries += 1;
                            let wait = Duration::from_secs(1u64 << item.tries.min(6));
                            item.not_before = Instant::now() + wait;
                            retry.push_back(item);
                        }
                    }
                }
            }
            Some(item) = rx.recv(), if !input_done && retry.is_empty() && inflight.len() < conc && !halt && !paused => {
                // Sent on the next round (through the retry queue, due now).
                retry.push_back(item);
            }
            _ = live.cancel.cancelled(), if !live.cancel.is_cancelled() => {}
            _ = b.stop.cancelled(), if !b.stop.is_cancelled() => {}
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
        if last_sync.elapsed() >= SAVE_EVERY {
            last_sync = Instant::now();
            let _ = out.sync_data().await;
            let _ = err.sync_data().await;
        }
        if last_save.elapsed() >= SAVE_EVERY {
            last_save = Instant::now();
            // A cancel made through another process shows on disk.
            if Batches::read(dir, &rec.id).is_some_and(|r| r.status == "cancelling") {
                live.update(|r| {
                    r.status = "cancelling".into();
                    r.cancelling_at = r.cancelling_at.or(Some(now_s()));
                });
                live.cancel.cancel();
            }
            let _ = b.save(&live.snapshot());
        }
        if rx.is_closed() && rx.is_empty() {
            input_done = true;
        }
    }
    let _ = out.sync_data().await;
    let _ = err.sync_data().await;
    if live.cancel.is_cancelled() {
        return finish(b, dir, live, "cancelled").await;
    }
    if expired {
        // The lines never run go to the error file, as OpenAI does.
        let mut left: Vec<Item> = retry.into_iter().collect();
        while let Some(i) = rx.recv().await {
            left.push(i);
        }
        for i in left {
            let line = error_line(
                &i.custom_id,
                None,
                "batch_expired",
                "the batch expired (completion_window 24h) before this line ran",
            );
            err.write_all(&line).await?;
            live.update(|r| r.failed += 1);
        }
        err.flush().await?;
        let _ = err.sync_data().await;
        return finish(b, dir, live, "expired").await;
    }
    if b.stop.is_cancelled() || handing_over() || !input_done || !retry.is_empty() {
        let _ = b.save(&live.snapshot());
        return Ok(());
    }
    finish(b, dir, live, "completed").await
}

/// Ends a batch: its output and error files become files of its owner, then its status.
async fn finish(b: &Batches, dir: &Path, live: &Live, status: &str) -> std::io::Result<()> {
    let now = now_s();
    live.update(|r| {
        if status == "completed" {
            r.finalizing_at = Some(now);
        }
        r.paused = None;
    });
    let rec = live.snapshot();
    for (id, kind, n) in [
        (&rec.output_file, "output", rec.completed),
        (&rec.error_file, "error", rec.failed),
    ] {
        if n == 0 {
            continue;
        }
        let path: PathBuf = files::content_path(dir, id);
        let bytes = tokio::fs::metadata(&path)
            .await
            .map(|m| m.len())
            .unwrap_or(0);
        files::write_meta(
            dir,
            &files::FileMeta {
                id: id.clone(),
                owner: rec.owner.clone(),
                bytes,
                created_at: now,
                filename: format!("{}_{kind}.jsonl", rec.id),
                purpose: "batch_output".into(),
            },
        )?;
    }
    live.update(|r| {
        r.status = status.into();
        match status {
            "completed" => r.completed_at = Some(now),
            "cancelled" => r.cancelled_at = Some(now),
            "expired" => r.expired_at = Some(now),
            _ => {}
        }
    });
    let rec = live.snapshot();
    tracing::info!(batch = %rec.id, status, completed = rec.completed, failed = rec.failed, "batches: over");
    b.save(&rec).map_err(|e| std::io::Error::other(e.message))
}

fn endpoint_of(path: &str) -> Option<Endpoint> {
    match path {
        "/v1/chat/completions" => Some(Endpoint::ChatCompletions),
        "/v1/embeddings" => Some(Endpoint::Embeddings),
        "/v1/responses" => Some(Endpoint::Responses),
        "/v1/messages" => Some(Endpoint::Messages),
        _ => None,
    }
}

fn endpoint_path(e: Endpoint) -> &'static str {
    match e {
        Endpoint::Embeddings => "/v1/embeddings",
        Endpoint::Responses => "/v1/responses",
        Endpoint::Messages => "/v1/messages",
        _ => "/v1/chat/completions",
    }
}

/// Reads the input's lines not in `done` into `tx` (blocking; ends when the runner stops
/// listening). The file was checked when the batch was made; a line that no longer
/// parses is skipped with a warning.
fn read_input(
    path: &Path,
    endpoint: &str,
    max_line: usize,
    done: &HashSet<String>,
    tx: &tokio::sync::mpsc::Sender<Item>,
) {
    let Ok(f) = std::fs::File::open(path) else {
        tracing::warn!(path = %path.display(), "batches: the input file is gone");
        return;
    };
    let mut r = std::io::BufReader::with_capacity(256 << 10, f);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match record::read_line_capped(&mut r, &mut buf, max_line) {
            Ok(Some(true)) => {}
            Ok(Some(false)) => continue,
            Ok(None) | Err(_) => return,
        }
        if buf.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let Ok(line) = record::check_line(&buf, endpoint) else {
            continue;
        };
        if done.contains(&line.custom_id) {
            continue;
        }
        let Some(body) = line.body else { continue };
        #[derive(serde::Deserialize)]
        struct M {
            model: String,
        }
        let model = serde_json::from_str::<M>(body.get())
            .map(|m| m.model)
            .unwrap_or_default();
        let item = Item {
            custom_id: line.custom_id,
            body: Bytes::copy_from_slice(body.get().as_bytes()),
            model,
            tries: 0,
            not_before: Instant::now(),
        };
        if tx.blocking_send(item).is_err() {
            return;
        }
    }
}

/// OpenAI's batch output line for an answer (`status`, `body`).
fn answer_line(custom_id: &str, status: u16, request_id: &str, body: &[u8]) -> Vec<u8> {
    let body: serde_json::Value = serde_json::from_slice(body)
        .unwrap_or_else(|_| serde_json::Value::String(String::from_utf8_lossy(body).into_owned()));
    let v = serde_json::json!({"id": crate::batches::new_id("batch_req_"), "custom_id": custom_id,
        "response": {"status_code": status, "request_id": request_id, "body": body}, "error": null});
    let mut line = serde_json::to_vec(&v).unwrap_or_default();
    line.push(b'\n');
    line
}

/// OpenAI's batch error line for a line that got no answer.
fn error_line(custom_id: &str, _status: Option<u16>, code: &str, message: &str) -> Vec<u8> {
    let v = serde_json::json!({"id": crate::batches::new_id("batch_req_"), "custom_id": custom_id,
        "response": null, "error": {"code": code, "message": message}});
    let mut line = serde_json::to_vec(&v).unwrap_or_default();
    line.push(b'\n');
    line
}

/// The batch's owner as a caller, from the key table as it is now (a budget raised or a
/// key blocked since the batch started applies to its next line); `None`: key deleted.
fn caller_of(state: &AppState, owner: &str) -> Option<Caller> {
    match owner {
        "" => Some(Caller::Master),
        id => state
            .keys
            .as_ref()
            .and_then(|k| k.table().by_id.get(id).cloned())
            .map(Caller::Key),
    }
}

/// Sends one line through the request path as the batch's `owner`.
async fn send(
    state: &Arc<AppState>,
    owner: &str,
    endpoint: Endpoint,
    path: &'static str,
    item: &Item,
    allow_cloud: bool,
) -> Result_ {
    if !allow_cloud && state.router.has_local(&item.model) == Some(false) {
        let msg = format!(
            "model group {:?} has no local deployment, and batches run only on local ones ([batches] allow_cloud = false), so a sweep never becomes a cloud bill by accident",
            item.model
        );
        return Result_::Record {
            ok: false,
            line: error_line(&item.custom_id, None, "no_local_deployment", &msg),
        };
    }
    let Some(caller) = caller_of(state, owner) else {
        return Result_::Record {
            ok: false,
            line: error_line(
                &item.custom_id,
                None,
                "key_deleted",
                "the API key that created this batch no longer exists",
            ),
        };
    };
    let mut headers = HeaderMap::new();
    headers.insert(
        axum::http::header::CONTENT_TYPE,
        axum::http::HeaderValue::from_static("application/json"),
    );
    if endpoint == Endpoint::Messages {
        headers.insert(
            "anthropic-version",
            axum::http::HeaderValue::from_static("2023-06-01"),
        );
    }
    let line = crate::proxy::AsLine {
        caller,
        local_only: !allow_cloud,
    };
    let resp = crate::proxy::proxy_for(
        state.clone(),
        endpoint,
        path,
        headers,
        axum::body::Body::from(item.body.clone()),
        Some(line),
    )
    .await;
    let status = resp.status().as_u16();
    let request_id = resp
        .headers()
        .get("x-llmgw-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let body = match axum::body::to_bytes(resp.into_body(), MAX_ANSWER).await {
        Ok(b) => b,
        Err(e) => {
            return Result_::Record {
                ok: false,
                line: error_line(
                    &item.custom_id,
                    Some(status),
                    "answer_failed",
                    &format!("the answer could not be read whole: {e}"),
                ),
            }
        }
    };
    if (200..300).contains(&status) {
        return Result_::Record {
            ok: true,
            line: answer_line(&item.custom_id, status, &request_id, &body),
        };
    }
    let code = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v["error"]["code"].as_str().map(str::to_string));
    if status == 429 && code.as_deref() == Some("budget_exceeded") {
        let message = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
            .unwrap_or_default();
        return Result_::Budget(message);
    }
    if matches!(status, 429 | 503) && item.tries + 1 < MAX_TRIES {
        return Result_::Again;
    }
    Result_::Record {
        ok: false,
        line: answer_line(&item.custom_id, status, &request_id, &body),
    }
}
