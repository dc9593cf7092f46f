//! The state directory stays bounded: a background task (never on the request path)
//! prunes raw spend rows older than `[store] retention`, gives SQLite's freed pages back
//! in small steps, and keeps the figures `/health` and `llmgw status` show — the store's
//! size, the state filesystem's free space ([`llmgw_core::disk`]) and the spend rows
//! dropped because the write buffer was full — in atomics, so `/health` never waits on a
//! filesystem or a database.
//!
//! Pruning runs every retention / 10 (at least 1 s, at most 10 min): with the default
//! 90 days, every 10 minutes; with `"1m"` (benchmarks) every 6 s. Each round deletes
//! [`PRUNE_BATCH`] rows per transaction with a pause between batches, so the spend
//! writer, which shares the connection (SQLite) or the table (PostgreSQL), gets its turn
//! between any two. What the store does (watermark, reports from the rollup, one replica
//! at a time) is `store::retention`.

use crate::spend::WriterStats;
use crate::store::retention::{Coverage, PRUNE_BATCH, VACUUM_PAGES};
use crate::store::Store;
use llmgw_core::disk::Space;
use serde_json::{json, Value};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How often the size and free space are measured.
const MEASURE_EVERY: Duration = Duration::from_secs(10);
/// Pause between two batches of a round (deletes or vacuum steps).
const PAUSE: Duration = Duration::from_millis(20);
/// A `statvfs` on a hung network filesystem must not stall the task for ever.
const STATVFS_TIMEOUT: Duration = Duration::from_secs(5);
/// At most this many vacuum steps per round (256 pages each: 1 GiB at 4 KiB pages).
const MAX_VACUUM_STEPS: u32 = 1024;
/// Unknown, in the atomics below.
const UNKNOWN: u64 = u64::MAX;

/// What `/health` shows of the store and the state filesystem.
#[derive(Debug)]
pub struct StoreWatch {
    kind: &'static str,
    retention: Option<Duration>,
    dir: Option<PathBuf>,
    writer: Option<Arc<WriterStats>>,
    db_bytes: AtomicU64,
    db_free_bytes: AtomicU64,
    shrinks: AtomicBool,
    fs_available: AtomicU64,
    fs_total: AtomicU64,
    pruned_rows: AtomicU64,
    pruned_before_ms: AtomicI64,
    /// A round, or the measuring, failed last time.
    last_error: std::sync::Mutex<Option<String>>,
}

/// How often a round of pruning runs for `retention`.
pub fn prune_interval(retention: Duration) -> Duration {
    (retention / 10).clamp(Duration::from_secs(1), Duration::from_secs(600))
}

impl StoreWatch {
    /// Starts the task. `store` and `writer` are the keys service's (absent without a
    /// master key: then only the filesystem is watched); `dir` is the state directory.
    pub fn spawn(
        store: Option<Arc<Store>>,
        writer: Option<Arc<WriterStats>>,
        retention: Option<Duration>,
        dir: Option<PathBuf>,
        shutdown: CancellationToken,
    ) -> Arc<StoreWatch> {
        let watch = Arc::new(StoreWatch {
            kind: store.as_deref().map_or("none", Store::kind),
            retention,
            dir,
            writer,
            db_bytes: AtomicU64::new(UNKNOWN),
            db_free_bytes: AtomicU64::new(UNKNOWN),
            shrinks: AtomicBool::new(false),
            fs_available: AtomicU64::new(UNKNOWN),
            fs_total: AtomicU64::new(UNKNOWN),
            pruned_rows: AtomicU64::new(0),
            pruned_before_ms: AtomicI64::new(0),
            last_error: std::sync::Mutex::new(None),
        });
        tokio::spawn(watch.clone().run(store, shutdown));
        watch
    }

    async fn run(self: Arc<Self>, store: Option<Arc<Store>>, shutdown: CancellationToken) {
        let prune_every = self.retention.map(prune_interval);
        let tick = prune_every.map_or(MEASURE_EVERY, |p| p.min(MEASURE_EVERY));
        let mut next_prune = tokio::time::Instant::now();
        let mut was_low = false;
        let mut dropped_seen = 0;
        let mut told_no_shrink = false;
        loop {
            if let (Some(store), Some(every), Some(keep)) = (&store, prune_every, self.retention) {
                if tokio::time::Instant::now() >= next_prune {
                    self.prune_round(store, keep, &shutdown).await;
                    next_prune = tokio::time::Instant::now() + every;
                }
            }
            // The filesystem first: a `/health` that shows the store's size shows the
            // filesystem's room too (both are unknown until the first round).
            if let Some(space) = self.measure_fs().await {
                let low = space.is_low();
                if low && !was_low {
                    tracing::warn!(
                        free = %space.describe(),
                        "the state directory's filesystem is nearly full: lower [store] retention or move the state directory (--state-dir) to a filesystem with room"
                    );
                }
                was_low = low;
            }
            if let Some(store) = &store {
                self.measure_store(store).await;
                if !told_no_shrink
                    && store.kind() == "sqlite"
                    && self.db_bytes.load(Ordering::Relaxed) != UNKNOWN
                    && !self.shrinks.load(Ordering::Relaxed)
                {
                    told_no_shrink = true;
                    tracing::info!("the spend database predates incremental vacuum: pruned rows' space is reused, but the file does not shrink (to shrink it once: stop the gateway, run `sqlite3 llmgw.db 'PRAGMA auto_vacuum=INCREMENTAL; VACUUM;'`)");
                }
            }
            if let Some(w) = &self.writer {
                let dropped = w.dropped.load(Ordering::Relaxed);
                if dropped > dropped_seen {
                    tracing::warn!(
                        dropped = dropped - dropped_seen,
                        total = dropped,
                        "spend rows dropped: the write buffer ([store] buffer_rows) was full while the store was slow or down; their requests are missing from /spend reports"
                    );
                    dropped_seen = dropped;
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(tick) => {}
                _ = shutdown.cancelled() => return,
            }
        }
    }

    /// Deletes every raw row older than `keep`, a batch at a time, then releases free
    /// pages a step at a time.
    async fn prune_round(&self, store: &Store, keep: Duration, shutdown: &CancellationToken) {
        let keep_ms = i64::try_from(keep.as_millis()).unwrap_or(i64::MAX);
        let cutoff = now_ms().saturating_sub(keep_ms);
        let mut total: u64 = 0;
        loop {
            match store.prune_spend(cutoff, PRUNE_BATCH).await {
                Ok(Some(n)) => {
                    total += n;
                    self.pruned_rows.fetch_add(n, Ordering::Relaxed);
                    self.pruned_before_ms.fetch_max(cutoff, Ordering::Relaxed);
                    if n < PRUNE_BATCH as u64 {
                        break;
                    }
                }
                // Another replica is pruning.
                Ok(None) => break,
                Err(e) => {
                    self.note_error(format!("pruning spend rows: {e}"));
                    return;
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(PAUSE) => {}
                _ = shutdown.cancelled() => return,
            }
        }
        if total > 0 {
            tracing::debug!(
                rows = total,
                "pruned spend rows older than [store] retention"
            );
        }
        for _ in 0..MAX_VACUUM_STEPS {
            match store.vacuum_step(VACUUM_PAGES).await {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) => {
                    self.note_error(format!("releasing free pages: {e}"));
                    return;
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(PAUSE) => {}
                _ = shutdown.cancelled() => return,
            }
        }
        self.clear_error();
    }

    async fn measure_store(&self, store: &Store) {
        match store.size().await {
            Ok(s) => {
                self.db_bytes.store(s.bytes, Ordering::Relaxed);
                self.db_free_bytes.store(s.free_bytes, Ordering::Relaxed);
                self.shrinks.store(s.shrinks, Ordering::Relaxed);
            }
            Err(e) => self.note_error(format!("measuring the store: {e}")),
        }
    }

    async fn measure_fs(&self) -> Option<Space> {
        // Not there yet (created when the gateway is ready): nothing to measure.
        let dir = self.dir.clone().filter(|d| d.exists())?;
        let read = tokio::task::spawn_blocking(move || Space::of(&dir));
        match tokio::time::timeout(STATVFS_TIMEOUT, read).await {
            Ok(Ok(Ok(space))) => {
                self.fs_available.store(space.available, Ordering::Relaxed);
                self.fs_total.store(space.total, Ordering::Relaxed);
                Some(space)
            }
            Ok(Ok(Err(e))) => {
                self.note_error(format!("statvfs of the state directory: {e}"));
                None
            }
            _ => {
                self.note_error(format!(
                    "statvfs of the state directory did not answer within {STATVFS_TIMEOUT:?}"
                ));
                None
            }
        }
    }

    fn note_error(&self, e: String) {
        let mut last = self.last_error.lock().unwrap_or_else(|p| p.into_inner());
        if last.as_deref() != Some(e.as_str()) {
            tracing::warn!(error = %e, "state directory watch");
        }
        *last = Some(e);
    }

    fn clear_error(&self) {
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// `/health`'s `store` object.
    pub fn health_json(&self) -> Value {
        let known = |a: &AtomicU64| {
            let v = a.load(Ordering::Relaxed);
            (v != UNKNOWN).then_some(v)
        };
        let fs = match (known(&self.fs_available), known(&self.fs_total)) {
            (Some(available), Some(total)) => {
                let s = Space { available, total };
                json!({
                    "path": self.dir,
                    "available_bytes": available,
                    "total_bytes": total,
                    "free_percent": (s.free_fraction() * 1000.0).round() / 10.0,
                    "low": s.is_low(),
                    "quota": "not read (statvfs only; see README)",
                })
            }
            _ => Value::Null,
        };
        let w = self.writer.as_deref();
        let pruned_before = self.pruned_before_ms.load(Ordering::Relaxed);
        json!({
            "kind": self.kind,
            "bytes": known(&self.db_bytes),
            "free_bytes": known(&self.db_free_bytes),
            "shrinks": self.shrinks.load(Ordering::Relaxed),
            "retention_seconds": self.retention.map(|r| r.as_secs_f64()),
            "pruned_rows": self.pruned_rows.load(Ordering::Relaxed),
            "pruned_before": (pruned_before > 0).then(|| rfc3339_ms(pruned_before)),
            "rows_buffered": w.map(|w| w.buffered.load(Ordering::Relaxed)),
            "rows_dropped": w.map(|w| w.dropped.load(Ordering::Relaxed)),
            "error": self.last_error.lock().unwrap_or_else(|p| p.into_inner()).clone(),
            "filesystem": fs,
        })
    }
}

fn now_ms() -> i64 {
    i64::try_from(llmgw_core::state::now_unix_ms()).unwrap_or(i64::MAX)
}

fn rfc3339_ms(ms: i64) -> String {
    llmgw_core::state::rfc3339(u64::try_from(ms.max(0)).unwrap_or(0) / 1000)
}

/// Adds to a `/spend/report` answer what it really covers: `resolution` `"exact"`, or
/// `"hour"` when pruned raw rows made it read whole hours at an end (then
/// `covered_start`/`covered_end` say which, and `note` says why in words).
pub fn describe_coverage(v: &mut Value, c: &Coverage, pruned_before_ms: i64) {
    v["resolution"] = json!(if c.hourly { "hour" } else { "exact" });
    v["covered_start"] = json!(rfc3339_ms(c.start_ms));
    v["covered_end"] = json!(rfc3339_ms(c.end_ms.min(253_402_300_799_000)));
    v["raw_rows_since"] = if pruned_before_ms > 0 {
        json!(rfc3339_ms(pruned_before_ms))
    } else {
        Value::Null
    };
    if c.hourly {
        v["note"] = json!(format!(
            "raw spend rows before {} were pruned ([store] retention); this report counts whole hours from {} to {} from the hourly rollup",
            rfc3339_ms(pruned_before_ms),
            rfc3339_ms(c.start_ms),
            rfc3339_ms(c.end_ms.min(253_402_300_799_000))
        ));
    }
}
