//! Where keys, teams and spend rows are kept: an embedded SQLite file in the state
//! directory for one gateway ([`sqlite`]), or a PostgreSQL database shared by several
//! replicas (`[store] url = "postgres://..."`, [`postgres`]).
//!
//! The request path never calls the store: keys live in memory
//! (`keys::enforce`), spend rows reach the store through the batching writer in
//! `spend`. Both backends have the same tables:
//!
//! - `llmgw_meta(name, value)`: `version`, bumped by every key/team change, which
//!   replicas poll to reload.
//! - `llmgw_keys(id, hash, alias, team_id, record)`, `llmgw_teams(id, record)`,
//!   `llmgw_users(id, record)`: the records as JSON (the key's hash, never the key).
//! - `llmgw_spend`: one row per request, indexed by time and by (key, time) and
//!   (team, time) and (user, time) with the cost included, so a key's current-period
//!   spend is an index-only sum; `end_user` (the request's OpenAI `user`) has a partial
//!   index over the rows that name one.
//! - `llmgw_spend_hourly`: the same rows summed per hour, key, team and model group
//!   (with the key's user), updated in the same transaction as the rows.
//!
//! A database made by an older llmgw gains `llmgw_users` and the `user_id`/`end_user`
//! columns (default `''`) when it is opened. `/spend/report` reads whole hours from
//!   it and only the partial hours at either end from `llmgw_spend`, so a report over a
//!   month of a million requests reads a few thousand rows.
//!
//! Raw rows older than `[store] retention` are pruned; the rollup stays, and reports
//! over pruned time read whole hours from it ([`retention`]).
//!
//! Rows are inserted with their request id as primary key and `ON CONFLICT DO NOTHING`
//! (only newly inserted rows count towards the hourly sums): a batch retried after a
//! commit whose answer was lost is not counted twice.

pub mod postgres;
pub mod responses;
pub mod retention;
pub mod sqlite;

use crate::records::SpendRow;
use crate::records::{KeyRecord, TeamRecord, UserRecord};
use serde::Serialize;
use std::collections::BTreeMap;

/// Milliseconds in an hour (the rollup's bucket).
pub const HOUR_MS: i64 = 3_600_000;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("SQLite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("PostgreSQL: {0}")]
    Postgres(String),
    #[error("the database did not answer within {0:?}")]
    Timeout(std::time::Duration),
    #[error("{0}")]
    Other(String),
}

/// What a report is grouped by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum GroupBy {
    Key,
    Team,
    User,
    Model,
}

impl GroupBy {
    /// The column (a fixed name, never user text).
    pub fn column(self) -> &'static str {
        match self {
            GroupBy::Key => "key_id",
            GroupBy::Team => "team_id",
            GroupBy::User => "user_id",
            GroupBy::Model => "model_group",
        }
    }
}

/// One group's totals.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ReportRow {
    pub group: String,
    pub requests: i64,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    pub cost_nanos: i64,
    pub cache_hits: i64,
    pub errors: i64,
}

impl ReportRow {
    fn add(&mut self, o: &ReportRow) {
        self.requests += o.requests;
        self.prompt_tokens += o.prompt_tokens;
        self.completion_tokens += o.completion_tokens;
        self.cost_nanos += o.cost_nanos;
        self.cache_hits += o.cache_hits;
        self.errors += o.errors;
    }
}

/// A filter for `/spend/logs`.
#[derive(Debug, Clone, Default)]
pub struct LogQuery {
    pub key_id: Option<String>,
    pub team_id: Option<String>,
    pub user_id: Option<String>,
    pub end_user: Option<String>,
    pub start_ms: i64,
    pub end_ms: i64,
    pub limit: i64,
}

/// Whose current-period spend to sum.
#[derive(Debug, Clone, Copy)]
pub enum Owner<'a> {
    Key(&'a str),
    Team(&'a str),
    User(&'a str),
}

/// Everything the keys service loads at start and on every change.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub version: i64,
    pub keys: Vec<KeyRecord>,
    pub teams: Vec<TeamRecord>,
    pub users: Vec<UserRecord>,
}

/// A spend row's contribution to the hourly rollup.
type RollupKey = (i64, String, String, String);

/// Sums rows into `(hour, key, team, model)` buckets; a bucket's `group` is the key's
/// user (its last row's: a key moved to another user within the hour counts there).
fn rollup<'a>(rows: impl Iterator<Item = &'a SpendRow>) -> BTreeMap<RollupKey, ReportRow> {
    let mut out: BTreeMap<RollupKey, ReportRow> = BTreeMap::new();
    for r in rows {
        let k = (
            r.ts_ms.div_euclid(HOUR_MS),
            r.key_id.clone(),
            r.team_id.clone(),
            r.model_group.clone(),
        );
        let e = out.entry(k).or_default();
        e.group.clone_from(&r.user_id);
        e.add(&ReportRow {
            group: String::new(),
            requests: 1,
            prompt_tokens: r.prompt_tokens,
            completion_tokens: r.completion_tokens,
            cost_nanos: r.cost_nanos,
            cache_hits: i64::from(r.cache_hit),
            errors: i64::from(r.status != 200),
        });
    }
    out
}

/// A half-open range `[from, to)` (hours or unix ms).
pub type Span = (i64, i64);

/// How a report over `[start, end)` splits: whole hours `[h0, h1)` from the rollup, and
/// raw-row ranges (unix ms) for the partial hours at the ends.
fn report_plan(start_ms: i64, end_ms: i64) -> (Option<Span>, Vec<Span>) {
    if end_ms <= start_ms {
        return (None, Vec::new());
    }
    let h0 = start_ms.div_euclid(HOUR_MS) + i64::from(start_ms.rem_euclid(HOUR_MS) != 0);
    let h1 = end_ms.div_euclid(HOUR_MS);
    if h0 >= h1 {
        return (None, vec![(start_ms, end_ms)]);
    }
    let mut raw = Vec::new();
    if start_ms < h0 * HOUR_MS {
        raw.push((start_ms, h0 * HOUR_MS));
    }
    if h1 * HOUR_MS < end_ms {
        raw.push((h1 * HOUR_MS, end_ms));
    }
    (Some((h0, h1)), raw)
}

/// Merges partial reports by group, largest cost first.
fn merge_report(parts: Vec<ReportRow>) -> Vec<ReportRow> {
    let mut by: BTreeMap<String, ReportRow> = BTreeMap::new();
    for p in parts {
        let e = by.entry(p.group.clone()).or_insert_with(|| ReportRow {
            group: p.group.clone(),
            ..ReportRow::default()
        });
        e.add(&p);
    }
    let mut out: Vec<ReportRow> = by.into_values().collect();
    out.sort_by(|a, b| b.cost_nanos.cmp(&a.cost_nanos).then(a.group.cmp(&b.group)));
    out
}

/// The configured store.
pub enum Store {
    Sqlite(sqlite::SqliteStore),
    Postgres(Box<postgres::PgStore>),
}

impl Store {
    /// Short name for logs and `/metrics`.
    pub fn kind(&self) -> &'static str {
        match self {
            Store::Sqlite(_) => "sqlite",
            Store::Postgres(_) => "postgres",
        }
    }

    pub async fn load(&self) -> Result<Snapshot, StoreError> {
        match self {
            Store::Sqlite(s) => s.load().await,
            Store::Postgres(s) => s.load().await,
        }
    }

    /// The change counter replicas poll.
    pub async fn version(&self) -> Result<i64, StoreError> {
        match self {
            Store::Sqlite(s) => s.version().await,
            Store::Postgres(s) => s.version().await,
        }
    }

    /// Inserts or replaces a key; bumps the version.
    pub async fn put_key(&self, rec: &KeyRecord) -> Result<(), StoreError> {
        match self {
            Store::Sqlite(s) => s.put_key(rec).await,
            Store::Postgres(s) => s.put_key(rec).await,
        }
    }

    /// Deletes keys by id; returns how many existed. Bumps the version.
    pub async fn delete_keys(&self, ids: &[String]) -> Result<u64, StoreError> {
        match self {
            Store::Sqlite(s) => s.delete_keys(ids).await,
            Store::Postgres(s) => s.delete_keys(ids).await,
        }
    }

    pub async fn put_team(&self, rec: &TeamRecord) -> Result<(), StoreError> {
        match self {
            Store::Sqlite(s) => s.put_team(rec).await,
            Store::Postgres(s) => s.put_team(rec).await,
        }
    }

    pub async fn put_user(&self, rec: &UserRecord) -> Result<(), StoreError> {
        match self {
            Store::Sqlite(s) => s.put_user(rec).await,
            Store::Postgres(s) => s.put_user(rec).await,
        }
    }

    /// Deletes users, and keys (`keys`: the users' keys when the caller asked), in one
    /// transaction; returns how many users existed. Bumps the version.
    pub async fn delete_users(&self, users: &[String], keys: &[String]) -> Result<u64, StoreError> {
        match self {
            Store::Sqlite(s) => s.delete_users(users, keys).await,
            Store::Postgres(s) => s.delete_users(users, keys).await,
        }
    }

    /// Nano-dollars an end user spent in `[since_ms, until_ms)`, through `key` or every key. Raw
    /// rows only (the hourly rollup does not keep end users): rows pruned by
    /// `[store] retention` no longer count.
    pub async fn end_user_spend(
        &self,
        key: Option<&str>,
        end_user: &str,
        since_ms: i64,
        until_ms: i64,
    ) -> Result<i64, StoreError> {
        let (key, end_user) = (key.map(str::to_string), end_user.to_string());
        match self {
            Store::Sqlite(s) => s.end_user_spend(key, end_user, since_ms, until_ms).await,
            Store::Postgres(s) => s.end_user_spend(key, end_user, since_ms, until_ms).await,
        }
    }

    /// Writes a batch of spend rows and their hourly sums in one transaction.
    pub async fn insert_spend(&self, rows: &[SpendRow]) -> Result<(), StoreError> {
        if rows.is_empty() {
            return Ok(());
        }
        match self {
            Store::Sqlite(s) => s.insert_spend(rows).await,
            Store::Postgres(s) => s.insert_spend(rows).await,
        }
    }

    /// The newest rows matching `q`.
    pub async fn spend_logs(&self, q: &LogQuery) -> Result<Vec<SpendRow>, StoreError> {
        match self {
            Store::Sqlite(s) => s.spend_logs(q).await,
            Store::Postgres(s) => s.spend_logs(q).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_plans() {
        let h = HOUR_MS;
        assert_eq!(report_plan(10, 20), (None, vec![(10, 20)]));
        assert_eq!(report_plan(0, 2 * h), (Some((0, 2)), vec![]));
        assert_eq!(
            report_plan(h / 2, 3 * h + 5),
            (Some((1, 3)), vec![(h / 2, h), (3 * h, 3 * h + 5)])
        );
        assert_eq!(report_plan(h / 2, h + 5), (None, vec![(h / 2, h + 5)]));
        assert_eq!(report_plan(5, 5), (None, vec![]));
    }
}
