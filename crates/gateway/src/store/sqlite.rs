//! The embedded store: one SQLite file in the state directory (`llmgw.db`).
//!
//! State directories are often on NFS, Lustre or GPFS, where SQLite's WAL mode is unsafe
//! (its shared-memory index needs a local mmap that network filesystems do not keep
//! coherent). So the file uses the classic rollback journal (`journal_mode = DELETE`)
//! with `synchronous = FULL`, which relies only on POSIX file locks; `busy_timeout`
//! makes a second opener (a `stop`/`start` overlap) wait instead of failing. One gateway
//! writes the file; replicas share PostgreSQL instead. All calls run on tokio's blocking
//! pool, one at a time on the one connection.

use super::{GroupBy, LogQuery, ReportRow, Snapshot, StoreError};
use crate::records::SpendRow;
use crate::records::{KeyRecord, TeamRecord, UserRecord};
use rusqlite::{params, Connection};
use std::path::Path;
use std::sync::{Arc, Mutex};

/// Tables and indexes (idempotent).
const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS llmgw_meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT OR IGNORE INTO llmgw_meta (name, value) VALUES ('version', 0), ('schema', 1);
CREATE TABLE IF NOT EXISTS llmgw_keys (
  id TEXT PRIMARY KEY, hash TEXT NOT NULL UNIQUE, alias TEXT, team_id TEXT, record TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS llmgw_teams (id TEXT PRIMARY KEY, record TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS llmgw_spend (
  request_id TEXT PRIMARY KEY, ts_ms INTEGER NOT NULL, key_id TEXT NOT NULL,
  team_id TEXT NOT NULL, model_group TEXT NOT NULL, deployment TEXT NOT NULL,
  prompt_tokens INTEGER NOT NULL, completion_tokens INTEGER NOT NULL,
  cost_nanos INTEGER NOT NULL, latency_ms INTEGER NOT NULL, status INTEGER NOT NULL,
  cache_hit INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS llmgw_spend_ts ON llmgw_spend (ts_ms);
CREATE INDEX IF NOT EXISTS llmgw_spend_key_ts ON llmgw_spend (key_id, ts_ms, cost_nanos);
CREATE INDEX IF NOT EXISTS llmgw_spend_team_ts ON llmgw_spend (team_id, ts_ms, cost_nanos);
CREATE TABLE IF NOT EXISTS llmgw_spend_hourly (
  hour INTEGER NOT NULL, key_id TEXT NOT NULL, team_id TEXT NOT NULL,
  model_group TEXT NOT NULL, requests INTEGER NOT NULL, prompt_tokens INTEGER NOT NULL,
  completion_tokens INTEGER NOT NULL, cost_nanos INTEGER NOT NULL,
  cache_hits INTEGER NOT NULL, errors INTEGER NOT NULL,
  PRIMARY KEY (hour, key_id, team_id, model_group));
CREATE TABLE IF NOT EXISTS llmgw_users (id TEXT PRIMARY KEY, record TEXT NOT NULL);
";

/// Columns added after the first schema: `(table, column)`, each `TEXT NOT NULL DEFAULT ''`
/// (SQLite has no `ADD COLUMN IF NOT EXISTS`: [`migrate`] checks `pragma_table_info`).
const ADDED_COLUMNS: [(&str, &str); 3] = [
    ("llmgw_spend", "user_id"),
    ("llmgw_spend", "end_user"),
    ("llmgw_spend_hourly", "user_id"),
];

/// Indexes on the added columns (after [`migrate`] added them).
const INDEXES_V2: &str = "
CREATE INDEX IF NOT EXISTS llmgw_spend_user_ts ON llmgw_spend (user_id, ts_ms, cost_nanos);
CREATE INDEX IF NOT EXISTS llmgw_spend_end_user ON llmgw_spend (end_user, key_id, ts_ms, cost_nanos)
  WHERE end_user <> '';
UPDATE llmgw_meta SET value = 2 WHERE name = 'schema' AND value < 2;
";

/// Brings a database made by an older llmgw up to this schema (users, spend rows that
/// name the key's user and the end user); idempotent.
fn migrate(conn: &Connection) -> Result<(), StoreError> {
    for (table, col) in ADDED_COLUMNS {
        let has: i64 = conn.query_row(
            &format!("SELECT COUNT(*) FROM pragma_table_info('{table}') WHERE name = ?1"),
            [col],
            |r| r.get(0),
        )?;
        if has == 0 {
            conn.execute_batch(&format!(
                "ALTER TABLE {table} ADD COLUMN {col} TEXT NOT NULL DEFAULT ''"
            ))?;
        }
    }
    conn.execute_batch(INDEXES_V2)?;
    Ok(())
}

mod responses;
mod retention;

pub struct SqliteStore {
    conn: Arc<Mutex<Connection>>,
}

fn json_err(e: serde_json::Error) -> StoreError {
    StoreError::Other(format!("a stored record is not valid: {e}"))
}

impl SqliteStore {
    /// Opens (creating, 0600) the database file, or an in-memory one for `None`.
    pub fn open(path: Option<&Path>) -> Result<SqliteStore, StoreError> {
        let conn = match path {
            Some(p) => {
                if !p.exists() {
                    use std::os::unix::fs::OpenOptionsExt;
                    std::fs::OpenOptions::new()
                        .write(true)
                        .create(true)
                        .truncate(false)
                        .mode(0o600)
                        .open(p)
                        .map_err(|e| {
                            StoreError::Other(format!("cannot create {}: {e}", p.display()))
                        })?;
                }
                Connection::open(p)?
            }
            None => Connection::open_in_memory()?,
        };
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        // Network filesystems: rollback journal, never WAL (see the module docs).
        let mode: String = conn.query_row("PRAGMA journal_mode = DELETE", [], |r| r.get(0))?;
        tracing::debug!(journal_mode = %mode, "SQLite store opened");
        conn.execute_batch("PRAGMA synchronous = FULL;")?;
        // Before the first table exists, so a new file gives pruned rows' pages back to
        // the filesystem in small steps (`store::retention`); an older file keeps
        // `auto_vacuum = NONE` (switching needs a full VACUUM) and reuses them instead.
        conn.execute_batch("PRAGMA auto_vacuum = INCREMENTAL;")?;
        conn.execute_batch(SCHEMA)?;
        migrate(&conn)?;
        Ok(SqliteStore {
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    /// Runs `f` on the connection on the blocking pool.
    async fn run<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || {
            let mut c = conn.lock().unwrap_or_else(|e| e.into_inner());
            f(&mut c)
        })
        .await
        .map_err(|e| StoreError::Other(format!("store task failed: {e}")))?
    }

    pub async fn load(&self) -> Result<Snapshot, StoreError> {
        self.run(|c| {
            let tx = c.transaction()?;
            let version = tx.query_row(
                "SELECT value FROM llmgw_meta WHERE name = 'version'",
                [],
                |r| r.get(0),
            )?;
            let keys = records::<KeyRecord>(&tx, "SELECT record FROM llmgw_keys")?;
            let teams = records::<TeamRecord>(&tx, "SELECT record FROM llmgw_teams")?;
            let users = records::<UserRecord>(&tx, "SELECT record FROM llmgw_users")?;
            Ok(Snapshot {
                version,
                keys,
                teams,
                users,
            })
        })
        .await
    }

    pub async fn version(&self) -> Result<i64, StoreError> {
        self.run(|c| {
            Ok(c.query_row(
                "SELECT value FROM llmgw_meta WHERE name = 'version'",
                [],
                |r| r.get(0),
            )?)
        })
        .await
    }

    pub async fn put_key(&self, rec: &KeyRecord) -> Result<(), StoreError> {
        let rec = rec.clone();
        let json = serde_json::to_string(&rec).map_err(json_err)?;
        self.run(move |c| {
            let tx = c.transaction()?;
            tx.execute(
                "INSERT INTO llmgw_keys (id, hash, alias, team_id, record) VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (id) DO UPDATE SET alias = excluded.alias, team_id = excluded.team_id, record = excluded.record",
                params![rec.id, rec.hash, rec.alias, rec.team_id, json],
            )?;
            bump(&tx)?;
            tx.commit()?;
            Ok(())
        })
        .await
    }

    pub async fn delete_keys(&self, ids: &[String]) -> Result<u64, StoreError> {
        let ids = ids.to_vec();
        self.run(move |c| {
            let tx = c.transaction()?;
            let mut n = 0;
            for id in &ids {
                n += tx.execute("DELETE FROM llmgw_keys WHERE id = ?1", [id])? as u64;
            }
            bump(&tx)?;
            tx.commit()?;
            Ok(n)
        })
        .await
    }

    pub async fn put_team(&self, rec: &TeamRecord) -> Result<(), StoreError> {
        let id = rec.id.clone();
        let json = serde_json::to_string(rec).map_err(json_err)?;
        self.run(move |c| {
            let tx = c.transaction()?;
            tx.execute(
                "INSERT INTO llmgw_teams (id, record) VALUES (?1, ?2)
                 ON CONFLICT (id) DO UPDATE SET record = excluded.record",
                params![id, json],
            )?;
            bump(&tx)?;
            tx.commit()?;
            Ok(())
        })
        .await
    }

    pub async fn put_user(&self, rec: &UserRecord) -> Result<(), StoreError> {
        let id = rec.id.clone();
        let json = serde_json::to_string(rec).map_err(json_err)?;
        self.run(move |c| {
            let tx = c.transaction()?;
            tx.execute(
                "INSERT INTO llmgw_users (id, record) VALUES (?1, ?2)
                 ON CONFLICT (id) DO UPDATE SET record = excluded.record",
                params![id, json],
            )?;
            bump(&tx)?;
            tx.commit()?;
            Ok(())
        })
        .await
    }

    /// Deletes users and keys (their keys, when the caller asked) in one transaction;
    /// returns how many users existed.
    pub async fn delete_users(&self, users: &[String], keys: &[String]) -> Result<u64, StoreError> {
        let (users, keys) = (users.to_vec(), keys.to_vec());
        self.run(move |c| {
            let tx = c.transaction()?;
            for id in &keys {
                tx.execute("DELETE FROM llmgw_keys WHERE id = ?1", [id])?;
            }
            let mut n = 0;
            for id in &users {
                n += tx.execute("DELETE FROM llmgw_users WHERE id = ?1", [id])? as u64;
            }
            bump(&tx)?;
            tx.commit()?;
            Ok(n)
        })
        .await
    }

    /// Nano-dollars an end user spent in `[since_ms, until_ms)` (through `key`, or every key).
    pub async fn end_user_spend(
        &self,
        key: Option<String>,
        end_user: String,
        since_ms: i64,
        until_ms: i64,
    ) -> Result<i64, StoreError> {
        self.run(move |c| {
            Ok(c.query_row(
                "SELECT COALESCE(SUM(cost_nanos), 0) FROM llmgw_spend
                 WHERE end_user = ?1 AND end_user <> '' AND (?2 IS NULL OR key_id = ?2)
                   AND ts_ms >= ?3 AND ts_ms < ?4",
                params![end_user, key, since_ms, until_ms],
                |r| r.get(0),
            )?)
        })
        .await
    }

    pub async fn insert_spend(&self, rows: &[SpendRow]) -> Result<(), StoreError> {
        let rows = rows.to_vec();
        self.run(move |c| {
            let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let mut inserted = Vec::with_capacity(rows.len());
            {
                let mut ins = tx.prepare_cached(
                    "INSERT INTO llmgw_spend (request_id, ts_ms, key_id, team_id, model_group, deployment,
                       prompt_tokens, completion_tokens, cost_nanos, latency_ms, status, cache_hit,
                       user_id, end_user)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)
                     ON CONFLICT (request_id) DO NOTHING",
                )?;
                for r in &rows {
                    let n = ins.execute(params![
                        r.request_id,
                        r.ts_ms,
                        r.key_id,
                        r.team_id,
                        r.model_group,
                        r.deployment,
                        r.prompt_tokens,
                        r.completion_tokens,
                        r.cost_nanos,
                        r.latency_ms,
                        r.status,
                        r.cache_hit,
                        r.user_id,
                        r.end_user
                    ])?;
                    if n == 1 {
                        inserted.push(r);
                    }
                }
                let mut up = tx.prepare_cached(
                    "INSERT INTO llmgw_spend_hourly (hour, key_id, team_id, model_group, requests,
                       prompt_tokens, completion_tokens, cost_nanos, cache_hits, errors, user_id)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)
                     ON CONFLICT (hour, key_id, team_id, model_group) DO UPDATE SET
                       user_id = excluded.user_id,
                       requests = requests + excluded.requests,
                       prompt_tokens = prompt_tokens + excluded.prompt_tokens,
                       completion_tokens = completion_tokens + excluded.completion_tokens,
                       cost_nanos = cost_nanos + excluded.cost_nanos,
                       cache_hits = cache_hits + excluded.cache_hits,
                       errors = errors + excluded.errors",
                )?;
                for ((hour, key, team, model), s) in super::rollup(inserted.into_iter()) {
                    up.execute(params![
                        hour,
                        key,
                        team,
                        model,
                        s.requests,
                        s.prompt_tokens,
                        s.completion_tokens,
                        s.cost_nanos,
                        s.cache_hits,
                        s.errors,
                        s.group
                    ])?;
                }
            }
            tx.commit()?;
            Ok(())
        })
        .await
    }

    pub async fn spend_logs(&self, q: &LogQuery) -> Result<Vec<SpendRow>, StoreError> {
        let q = q.clone();
        self.run(move |c| {
            let mut st = c.prepare_cached(
                "SELECT request_id, ts_ms, key_id, team_id, model_group, deployment, prompt_tokens,
                   completion_tokens, cost_nanos, latency_ms, status, cache_hit, user_id, end_user
                 FROM llmgw_spend
                 WHERE ts_ms >= ?1 AND ts_ms < ?2 AND (?3 IS NULL OR key_id = ?3)
                   AND (?4 IS NULL OR team_id = ?4) AND (?6 IS NULL OR user_id = ?6)
                   AND (?7 IS NULL OR end_user = ?7)
                 ORDER BY ts_ms DESC LIMIT ?5",
            )?;
            let rows = st.query_map(
                params![q.start_ms, q.end_ms, q.key_id, q.team_id, q.limit, q.user_id, q.end_user],
                |r| {
                    Ok(SpendRow {
                        request_id: r.get(0)?,
                        ts_ms: r.get(1)?,
                        key_id: r.get(2)?,
                        team_id: r.get(3)?,
                        model_group: r.get(4)?,
                        deployment: r.get(5)?,
                        prompt_tokens: r.get(6)?,
                        completion_tokens: r.get(7)?,
                        cost_nanos: r.get(8)?,
                        latency_ms: r.get(9)?,
                        status: r.get(10)?,
                        cache_hit: r.get(11)?,
                        user_id: r.get(12)?,
                        end_user: r.get(13)?,
                    })
                },
            )?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    /// Sums whole hours and raw-row ranges per group, ignoring retention (benchmarks
    /// compare the rollup with the raw rows through it).
    pub async fn report_parts(
        &self,
        by: GroupBy,
        hours: Option<(i64, i64)>,
        raw: Vec<(i64, i64)>,
    ) -> Result<Vec<ReportRow>, StoreError> {
        let hours: Vec<(i64, i64)> = hours.into_iter().collect();
        self.run(move |c| report_parts_on(c, by, &hours, &raw))
            .await
    }
}

/// Sums whole hours from the rollup and raw-row ranges, per group (the caller holds the
/// connection, so the watermark it read still holds: see `store::retention`).
pub(super) fn report_parts_on(
    c: &Connection,
    by: GroupBy,
    hours: &[(i64, i64)],
    raw: &[(i64, i64)],
) -> Result<Vec<ReportRow>, StoreError> {
    let col = by.column();
    let mut out = Vec::new();
    let map = |r: &rusqlite::Row<'_>| {
        Ok(ReportRow {
            group: r.get(0)?,
            requests: r.get(1)?,
            prompt_tokens: r.get(2)?,
            completion_tokens: r.get(3)?,
            cost_nanos: r.get(4)?,
            cache_hits: r.get(5)?,
            errors: r.get(6)?,
        })
    };
    let sql = format!(
        "SELECT {col}, SUM(requests), SUM(prompt_tokens), SUM(completion_tokens),
           SUM(cost_nanos), SUM(cache_hits), SUM(errors)
         FROM llmgw_spend_hourly WHERE hour >= ?1 AND hour < ?2 GROUP BY {col}"
    );
    let mut st = c.prepare_cached(&sql)?;
    for (h0, h1) in hours {
        for r in st.query_map(params![h0, h1], map)? {
            out.push(r?);
        }
    }
    let sql = format!(
        "SELECT {col}, COUNT(*), SUM(prompt_tokens), SUM(completion_tokens), SUM(cost_nanos),
           SUM(cache_hit), SUM(status <> 200)
         FROM llmgw_spend WHERE ts_ms >= ?1 AND ts_ms < ?2 GROUP BY {col}"
    );
    let mut st = c.prepare_cached(&sql)?;
    for (a, b) in raw {
        for r in st.query_map(params![a, b], map)? {
            out.push(r?);
        }
    }
    Ok(out)
}

fn bump(tx: &rusqlite::Transaction<'_>) -> Result<(), StoreError> {
    tx.execute(
        "UPDATE llmgw_meta SET value = value + 1 WHERE name = 'version'",
        [],
    )?;
    Ok(())
}

fn records<T: serde::de::DeserializeOwned>(
    c: &Connection,
    sql: &str,
) -> Result<Vec<T>, StoreError> {
    let mut st = c.prepare(sql)?;
    let texts = st
        .query_map([], |r| r.get::<_, String>(0))?
        .collect::<Result<Vec<_>, _>>()?;
    texts
        .iter()
        .map(|t| serde_json::from_str(t).map_err(json_err))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Owner, HOUR_MS};

    fn row(id: &str, ts: i64, key: &str, cost: i64) -> SpendRow {
        SpendRow {
            request_id: id.into(),
            ts_ms: ts,
            key_id: key.into(),
            team_id: String::new(),
            user_id: String::new(),
            end_user: String::new(),
            model_group: "m".into(),
            deployment: "d".into(),
            prompt_tokens: 1,
            completion_tokens: 2,
            cost_nanos: cost,
            latency_ms: 3,
            status: 200,
            cache_hit: false,
        }
    }

    // A file made before users: the new table, columns and indexes are added on open,
    // its rows are kept, and new rows name the user and the end user.
    #[tokio::test]
    async fn an_older_file_is_migrated() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("llmgw.db");
        {
            let c = Connection::open(&path).unwrap();
            let old = SCHEMA.replace(
                "CREATE TABLE IF NOT EXISTS llmgw_users (id TEXT PRIMARY KEY, record TEXT NOT NULL);",
                "",
            );
            c.execute_batch(&old).unwrap();
            c.execute(
                "INSERT INTO llmgw_spend VALUES ('old', 5, 'k1', '', 'm', 'd', 1, 2, 7, 3, 200, 0)",
                [],
            )
            .unwrap();
            c.execute(
                "INSERT INTO llmgw_spend_hourly VALUES (0, 'k1', '', 'm', 1, 1, 2, 7, 0, 0)",
                [],
            )
            .unwrap();
        }
        let s = super::super::Store::Sqlite(SqliteStore::open(Some(&path)).unwrap());
        // Twice: idempotent.
        drop(SqliteStore::open(Some(&path)).unwrap());
        let mut r = row("new", 10, "k2", 20);
        r.user_id = "alice".into();
        r.end_user = "ann".into();
        s.insert_spend(&[r]).await.unwrap();
        assert_eq!(s.spend_since(Owner::User("alice"), 0).await.unwrap(), 20);
        assert_eq!(s.spend_since(Owner::Key("k1"), 0).await.unwrap(), 7);
        assert_eq!(
            s.end_user_spend(Some("k2"), "ann", 0, 100).await.unwrap(),
            20
        );
        assert_eq!(
            s.end_user_spend(Some("k1"), "ann", 0, 100).await.unwrap(),
            0
        );
        assert_eq!(s.end_user_spend(None, "ann", 11, 100).await.unwrap(), 0);
        let rep = s
            .spend_report(GroupBy::User, 0, HOUR_MS)
            .await
            .unwrap()
            .rows;
        let names: Vec<(&str, i64)> = rep
            .iter()
            .map(|r| (r.group.as_str(), r.cost_nanos))
            .collect();
        assert_eq!(names, [("alice", 20), ("", 7)]);
        assert!(s.load().await.unwrap().users.is_empty());
    }

    #[tokio::test]
    async fn rows_and_report_on_a_real_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("llmgw.db");
        let s = super::super::Store::Sqlite(SqliteStore::open(Some(&path)).unwrap());
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let h = HOUR_MS;
        let rows = vec![
            row("a", h / 2, "k1", 10),
            row("b", h + 1, "k1", 20),
            row("c", 2 * h + 7, "k2", 40),
        ];
        s.insert_spend(&rows).await.unwrap();
        // A retried batch is not counted twice.
        s.insert_spend(&rows[..1]).await.unwrap();
        let rep = s.spend_report(GroupBy::Key, 0, 3 * h).await.unwrap().rows;
        assert_eq!(rep.len(), 2);
        assert_eq!((rep[0].group.as_str(), rep[0].cost_nanos), ("k2", 40));
        assert_eq!((rep[1].requests, rep[1].cost_nanos), (2, 30));
        // Partial hours come from the raw rows.
        let rep = s
            .spend_report(GroupBy::Key, h / 2 + 1, 2 * h + 8)
            .await
            .unwrap()
            .rows;
        let total: i64 = rep.iter().map(|r| r.cost_nanos).sum();
        assert_eq!(total, 60);
        assert_eq!(s.spend_since(Owner::Key("k1"), h).await.unwrap(), 20);
        let logs = s
            .spend_logs(&LogQuery {
                key_id: Some("k1".into()),
                start_ms: 0,
                end_ms: i64::MAX,
                limit: 10,
                ..LogQuery::default()
            })
            .await
            .unwrap();
        assert_eq!(logs.len(), 2);
        assert_eq!(logs[0].request_id, "b");
    }
}
