//! Spend-row retention as the store sees it (`[store] retention`; the task that drives
//! it is the gateway's `retention` module).
//!
//! Raw rows older than the retention are deleted in small batches ([`PRUNE_BATCH`] per
//! transaction). The hourly rollup (`llmgw_spend_hourly`) is never pruned, so reports
//! over any period still answer. The store keeps a watermark, `llmgw_meta` row
//! `pruned_before` (unix ms): raw rows before it may be gone; it is raised in the same
//! transaction as each batch is deleted, and read in the same transaction (or, for
//! SQLite, under the same connection lock) as the rows of a report, so a report never
//! sees a half-pruned hour:
//!
//! - a partial hour at either end of a report that lies (even partly) before the
//!   watermark is read whole from the rollup instead of from the raw rows, and the report
//!   says so ([`Coverage`]: the period it really covers, at hourly resolution);
//! - a key's or team's spend since a time before the watermark is summed the same way
//!   (the first hour whole: a budget is then measured against slightly more, never less).
//!
//! Rows written after their hour was pruned (a buffer flushed late) are counted once: the
//! rollup has them, and the next round deletes the raw row.

use super::{report_plan, GroupBy, Owner, ReportRow, Span, Store, StoreError, HOUR_MS};
use serde::Serialize;

/// Rows deleted per transaction: small enough that the spend writer, which shares the
/// connection (SQLite) or the table (PostgreSQL), never waits long behind a batch.
pub const PRUNE_BATCH: i64 = 1000;

/// SQLite pages (4 KiB) released per incremental-vacuum step.
pub const VACUUM_PAGES: i64 = 256;

/// The period a report really covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Coverage {
    pub start_ms: i64,
    pub end_ms: i64,
    /// Some of it comes whole hours at a time from the rollup, because the raw rows of a
    /// partial hour were pruned: the ends were widened to whole hours.
    pub hourly: bool,
}

/// A report and what it covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub rows: Vec<ReportRow>,
    pub coverage: Coverage,
    /// Raw rows before this time (unix ms) may have been pruned; 0 when none were.
    pub pruned_before_ms: i64,
}

/// Where a report's figures come from once rows before `pruned_before` may be gone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Plan {
    /// Hours `[h0, h1)` from the rollup, sorted and disjoint.
    pub hours: Vec<Span>,
    /// Unix-ms ranges from the raw rows.
    pub raw: Vec<Span>,
    pub coverage: Coverage,
}

/// The first hour at or after `ms`.
fn hour_ceil(ms: i64) -> i64 {
    ms.div_euclid(HOUR_MS) + i64::from(ms.rem_euclid(HOUR_MS) != 0)
}

/// [`report_plan`] with every raw range that starts before `pruned_before` replaced by
/// the whole hours around it.
pub(crate) fn plan(start_ms: i64, end_ms: i64, pruned_before: i64) -> Plan {
    let (whole, raw) = report_plan(start_ms, end_ms);
    let mut hours: Vec<Span> = whole.into_iter().collect();
    let mut kept = Vec::new();
    let mut coverage = Coverage {
        start_ms,
        end_ms: end_ms.max(start_ms),
        hourly: false,
    };
    for (a, b) in raw {
        if a >= pruned_before {
            kept.push((a, b));
            continue;
        }
        let (h0, h1) = (a.div_euclid(HOUR_MS), hour_ceil(b));
        hours.push((h0, h1));
        coverage.hourly = true;
        coverage.start_ms = coverage.start_ms.min(h0.saturating_mul(HOUR_MS));
        coverage.end_ms = coverage.end_ms.max(h1.saturating_mul(HOUR_MS));
    }
    hours.sort_unstable();
    let mut merged: Vec<Span> = Vec::with_capacity(hours.len());
    for (a, b) in hours {
        match merged.last_mut() {
            Some(last) if a <= last.1 => last.1 = last.1.max(b),
            _ => merged.push((a, b)),
        }
    }
    Plan {
        hours: merged,
        raw: kept,
        coverage,
    }
}

/// The end of time for "since" sums: far beyond any row, far from overflowing.
pub(crate) const FAR_MS: i64 = i64::MAX / 4;

/// The column and value an owner's sum filters on.
pub(crate) fn owner_filter(who: Owner<'_>) -> (&'static str, String) {
    match who {
        Owner::Key(id) => ("key_id", id.to_string()),
        Owner::Team(id) => ("team_id", id.to_string()),
        Owner::User(id) => ("user_id", id.to_string()),
    }
}

/// The store's size, for `/health` and `llmgw status`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct StoreSize {
    /// Bytes the database takes (SQLite: the file; PostgreSQL: the whole database).
    pub bytes: u64,
    /// Of those, bytes free inside the file and reused by new rows (SQLite's free pages).
    pub free_bytes: u64,
    /// SQLite gives freed pages back to the filesystem (`auto_vacuum = INCREMENTAL`);
    /// false for a file created before that was the default (see README: retention).
    pub shrinks: bool,
}

impl Store {
    /// Deletes at most `limit` raw rows older than `cutoff_ms` (raising the watermark to
    /// it). `None` when another replica is pruning right now (PostgreSQL).
    pub async fn prune_spend(&self, cutoff_ms: i64, limit: i64) -> Result<Option<u64>, StoreError> {
        match self {
            Store::Sqlite(s) => s.prune_spend(cutoff_ms, limit).await.map(Some),
            Store::Postgres(s) => s.prune_spend(cutoff_ms, limit).await,
        }
    }

    /// Releases up to `pages` free pages to the filesystem (SQLite; PostgreSQL's
    /// autovacuum reuses space by itself); returns how many free pages are left.
    pub async fn vacuum_step(&self, pages: i64) -> Result<i64, StoreError> {
        match self {
            Store::Sqlite(s) => s.vacuum_step(pages).await,
            Store::Postgres(_) => Ok(0),
        }
    }

    pub async fn size(&self) -> Result<StoreSize, StoreError> {
        match self {
            Store::Sqlite(s) => s.size().await,
            Store::Postgres(s) => s.size().await,
        }
    }

    /// Totals per group over `[start_ms, end_ms)`, largest cost first, and what they cover.
    pub async fn spend_report(
        &self,
        by: GroupBy,
        start_ms: i64,
        end_ms: i64,
    ) -> Result<Report, StoreError> {
        let (parts, coverage, pruned_before_ms) = match self {
            Store::Sqlite(s) => s.report_kept(by, start_ms, end_ms).await?,
            Store::Postgres(s) => s.report_kept(by, start_ms, end_ms).await?,
        };
        Ok(Report {
            rows: super::merge_report(parts),
            coverage,
            pruned_before_ms,
        })
    }

    /// Nano-dollars spent by a key or team since `since_ms` (see the module docs for a
    /// time before the watermark).
    pub async fn spend_since(&self, who: Owner<'_>, since_ms: i64) -> Result<i64, StoreError> {
        let (col, id) = owner_filter(who);
        match self {
            Store::Sqlite(s) => s.spend_since_kept(col, id, since_ms).await,
            Store::Postgres(s) => s.spend_since_kept(col, id, since_ms).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pruned_partial_hours_are_read_whole_from_the_rollup() {
        let h = HOUR_MS;
        // Nothing pruned: the plan of old.
        let p = plan(h / 2, 3 * h + 5, 0);
        assert_eq!(p.hours, vec![(1, 3)]);
        assert_eq!(p.raw, vec![(h / 2, h), (3 * h, 3 * h + 5)]);
        assert!(!p.coverage.hourly);
        // The first partial hour was pruned: hour 0 whole, the last still raw.
        let p = plan(h / 2, 3 * h + 5, 2 * h);
        assert_eq!(p.hours, vec![(0, 3)]);
        assert_eq!(p.raw, vec![(3 * h, 3 * h + 5)]);
        assert_eq!((p.coverage.start_ms, p.coverage.end_ms), (0, 3 * h + 5));
        assert!(p.coverage.hourly);
        // Both ends pruned: whole hours 0..4.
        let p = plan(h / 2, 3 * h + 5, 3 * h + 10);
        assert_eq!(p.hours, vec![(0, 4)]);
        assert!(p.raw.is_empty());
        assert_eq!((p.coverage.start_ms, p.coverage.end_ms), (0, 4 * h));
        // A short range across an hour boundary, pruned: both hours.
        let p = plan(h / 2, h + 5, h);
        assert_eq!(p.hours, vec![(0, 2)]);
        assert!(p.raw.is_empty());
        // Open-ended sums do not overflow.
        let p = plan(h / 2, FAR_MS, FAR_MS);
        assert!(p.coverage.end_ms >= FAR_MS);
    }
}
