//! The shared store for several replicas: a PostgreSQL database
//! (`[store] url = "postgres://user:password@host:5432/db"`).
//!
//! One connection per gateway, used by one operation at a time (the spend writer, the
//! replicas' version poll, admin calls; never a request). Every operation has a
//! deadline; a failed or timed-out operation drops the connection and the next one
//! reconnects, so a database that restarts is picked up again without a gateway restart.
//! The schema is created on first use under an advisory lock, so replicas starting
//! together do not race.

use super::{GroupBy, LogQuery, ReportRow, Snapshot, StoreError};
use crate::records::SpendRow;
use crate::records::{KeyRecord, TeamRecord, UserRecord};
use std::time::Duration;
use tokio::sync::{Mutex, MutexGuard};
use tokio_postgres::{Client, NoTls};

/// Connecting, and each operation, give up after this long.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const OP_TIMEOUT: Duration = Duration::from_secs(10);

const SCHEMA: &str = "
SELECT pg_advisory_xact_lock(727465);
CREATE TABLE IF NOT EXISTS llmgw_meta (name TEXT PRIMARY KEY, value BIGINT NOT NULL);
INSERT INTO llmgw_meta (name, value) VALUES ('version', 0), ('schema', 1) ON CONFLICT DO NOTHING;
CREATE TABLE IF NOT EXISTS llmgw_keys (
  id TEXT PRIMARY KEY, hash TEXT NOT NULL UNIQUE, alias TEXT, team_id TEXT, record TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS llmgw_teams (id TEXT PRIMARY KEY, record TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS llmgw_spend (
  request_id TEXT PRIMARY KEY, ts_ms BIGINT NOT NULL, key_id TEXT NOT NULL,
  team_id TEXT NOT NULL, model_group TEXT NOT NULL, deployment TEXT NOT NULL,
  prompt_tokens BIGINT NOT NULL, completion_tokens BIGINT NOT NULL,
  cost_nanos BIGINT NOT NULL, latency_ms BIGINT NOT NULL, status INTEGER NOT NULL,
  cache_hit BOOLEAN NOT NULL);
CREATE INDEX IF NOT EXISTS llmgw_spend_ts ON llmgw_spend (ts_ms);
CREATE INDEX IF NOT EXISTS llmgw_spend_key_ts ON llmgw_spend (key_id, ts_ms) INCLUDE (cost_nanos);
CREATE INDEX IF NOT EXISTS llmgw_spend_team_ts ON llmgw_spend (team_id, ts_ms) INCLUDE (cost_nanos);
CREATE TABLE IF NOT EXISTS llmgw_spend_hourly (
  hour BIGINT NOT NULL, key_id TEXT NOT NULL, team_id TEXT NOT NULL,
  model_group TEXT NOT NULL, requests BIGINT NOT NULL, prompt_tokens BIGINT NOT NULL,
  completion_tokens BIGINT NOT NULL, cost_nanos BIGINT NOT NULL,
  cache_hits BIGINT NOT NULL, errors BIGINT NOT NULL,
  PRIMARY KEY (hour, key_id, team_id, model_group));
CREATE TABLE IF NOT EXISTS llmgw_users (id TEXT PRIMARY KEY, record TEXT NOT NULL);
ALTER TABLE llmgw_spend ADD COLUMN IF NOT EXISTS user_id TEXT NOT NULL DEFAULT '';
ALTER TABLE llmgw_spend ADD COLUMN IF NOT EXISTS end_user TEXT NOT NULL DEFAULT '';
ALTER TABLE llmgw_spend_hourly ADD COLUMN IF NOT EXISTS user_id TEXT NOT NULL DEFAULT '';
CREATE INDEX IF NOT EXISTS llmgw_spend_user_ts ON llmgw_spend (user_id, ts_ms) INCLUDE (cost_nanos);
CREATE INDEX IF NOT EXISTS llmgw_spend_end_user ON llmgw_spend (end_user, key_id, ts_ms)
  INCLUDE (cost_nanos) WHERE end_user <> '';
UPDATE llmgw_meta SET value = 2 WHERE name = 'schema' AND value < 2;
";

pub struct PgStore {
    cfg: tokio_postgres::Config,
    client: Mutex<Option<Client>>,
}

fn pg(e: tokio_postgres::Error) -> StoreError {
    // The error text never contains the connection string (nor its password).
    StoreError::Postgres(e.to_string())
}

fn json_err(e: serde_json::Error) -> StoreError {
    StoreError::Other(format!("a stored record is not valid: {e}"))
}

/// Runs one operation under [`OP_TIMEOUT`]; any failure drops the connection.
macro_rules! op {
    ($self:ident, |$c:ident| $body:expr) => {{
        let mut guard = $self.connected().await?;
        let $c = guard.as_mut().expect("connected");
        let r = tokio::time::timeout(OP_TIMEOUT, async { $body }).await;
        match r {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => {
                *guard = None;
                Err(e)
            }
            Err(_) => {
                *guard = None;
                Err(StoreError::Timeout(OP_TIMEOUT))
            }
        }
    }};
}

mod responses;
mod retention;

impl PgStore {
    /// Parses the URL and connects once (creating the tables); a database that is down
    /// at start is an error (the operator sees it at once).
    pub async fn open(url: &str) -> Result<PgStore, StoreError> {
        let mut cfg: tokio_postgres::Config = url.parse().map_err(|_| {
            StoreError::Other(
                "[store] url is not a valid PostgreSQL URL; expected postgres://user[:password]@host[:port]/database (the URL itself is not shown: it may carry a password)".into(),
            )
        })?;
        cfg.connect_timeout(CONNECT_TIMEOUT);
        let s = PgStore {
            cfg,
            client: Mutex::new(None),
        };
        op!(s, |c| {
            let tx = c.transaction().await.map_err(pg)?;
            tx.batch_execute(SCHEMA).await.map_err(pg)?;
            tx.commit().await.map_err(pg)
        })?;
        Ok(s)
    }

    /// The connection, (re)connecting when there is none.
    async fn connected(&self) -> Result<MutexGuard<'_, Option<Client>>, StoreError> {
        let mut g = self.client.lock().await;
        if g.as_ref().is_none_or(|c| c.is_closed()) {
            let (client, conn) = tokio::time::timeout(CONNECT_TIMEOUT, self.cfg.connect(NoTls))
                .await
                .map_err(|_| StoreError::Timeout(CONNECT_TIMEOUT))?
                .map_err(pg)?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            *g = Some(client);
        }
        Ok(g)
    }

    pub async fn load(&self) -> Result<Snapshot, StoreError> {
        let (version, keys, teams, users) = op!(self, |c| {
            let tx = c
                .build_transaction()
                .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
                .start()
                .await
                .map_err(pg)?;
            let v: i64 = tx
                .query_one("SELECT value FROM llmgw_meta WHERE name = 'version'", &[])
                .await
                .map_err(pg)?
                .get(0);
            let keys = tx
                .query("SELECT record FROM llmgw_keys", &[])
                .await
                .map_err(pg)?;
            let teams = tx
                .query("SELECT record FROM llmgw_teams", &[])
                .await
                .map_err(pg)?;
            let users = tx
                .query("SELECT record FROM llmgw_users", &[])
                .await
                .map_err(pg)?;
            tx.commit().await.map_err(pg)?;
            Ok::<_, StoreError>((v, keys, teams, users))
        })?;
        fn parse<T: serde::de::DeserializeOwned>(
            rows: Vec<tokio_postgres::Row>,
        ) -> Result<Vec<T>, StoreError> {
            rows.iter()
                .map(|r| serde_json::from_str(r.get::<_, &str>(0)).map_err(json_err))
                .collect()
        }
        Ok(Snapshot {
            version,
            keys: parse(keys)?,
            teams: parse(teams)?,
            users: parse(users)?,
        })
    }

    pub async fn version(&self) -> Result<i64, StoreError> {
        op!(self, |c| {
            c.query_one("SELECT value FROM llmgw_meta WHERE name = 'version'", &[])
                .await
                .map(|r| r.get::<_, i64>(0))
                .map_err(pg)
        })
    }

    pub async fn put_key(&self, rec: &KeyRecord) -> Result<(), StoreError> {
        let json = serde_json::to_string(rec).map_err(json_err)?;
        op!(self, |c| {
            let tx = c.transaction().await.map_err(pg)?;
            tx.execute(
                "INSERT INTO llmgw_keys (id, hash, alias, team_id, record) VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (id) DO UPDATE SET alias = excluded.alias, team_id = excluded.team_id, record = excluded.record",
                &[&rec.id, &rec.hash, &rec.alias, &rec.team_id, &json],
            )
            .await
            .map_err(pg)?;
            bump(&tx).await?;
            tx.commit().await.map_err(pg)
        })
    }

    pub async fn delete_keys(&self, ids: &[String]) -> Result<u64, StoreError> {
        op!(self, |c| {
            let tx = c.transaction().await.map_err(pg)?;
            let n = tx
                .execute("DELETE FROM llmgw_keys WHERE id = ANY($1)", &[&ids])
                .await
                .map_err(pg)?;
            bump(&tx).await?;
            tx.commit().await.map_err(pg)?;
            Ok::<_, StoreError>(n)
        })
    }

    pub async fn put_team(&self, rec: &TeamRecord) -> Result<(), StoreError> {
        let json = serde_json::to_string(rec).map_err(json_err)?;
        op!(self, |c| {
            let tx = c.transaction().await.map_err(pg)?;
            tx.execute(
                "INSERT INTO llmgw_teams (id, record) VALUES ($1, $2)
                 ON CONFLICT (id) DO UPDATE SET record = excluded.record",
                &[&rec.id, &json],
            )
            .await
            .map_err(pg)?;
            bump(&tx).await?;
            tx.commit().await.map_err(pg)
        })
    }

    pub async fn put_user(&self, rec: &UserRecord) -> Result<(), StoreError> {
        let json = serde_json::to_string(rec).map_err(json_err)?;
        op!(self, |c| {
            let tx = c.transaction().await.map_err(pg)?;
            tx.execute(
                "INSERT INTO llmgw_users (id, record) VALUES ($1, $2)
                 ON CONFLICT (id) DO UPDATE SET record = excluded.record",
                &[&rec.id, &json],
            )
            .await
            .map_err(pg)?;
            bump(&tx).await?;
            tx.commit().await.map_err(pg)
        })
    }

    pub async fn delete_users(&self, users: &[String], keys: &[String]) -> Result<u64, StoreError> {
        op!(self, |c| {
            let tx = c.transaction().await.map_err(pg)?;
            tx.execute("DELETE FROM llmgw_keys WHERE id = ANY($1)", &[&keys])
                .await
                .map_err(pg)?;
            let n = tx
                .execute("DELETE FROM llmgw_users WHERE id = ANY($1)", &[&users])
                .await
                .map_err(pg)?;
            bump(&tx).await?;
            tx.commit().await.map_err(pg)?;
            Ok::<_, StoreError>(n)
        })
    }

    pub async fn end_user_spend(
        &self,
        key: Option<String>,
        end_user: String,
        since_ms: i64,
        until_ms: i64,
    ) -> Result<i64, StoreError> {
        op!(self, |c| {
            c.query_one(
                "SELECT COALESCE(SUM(cost_nanos), 0)::BIGINT FROM llmgw_spend
                 WHERE end_user = $1 AND end_user <> '' AND ($2::text IS NULL OR key_id = $2)
                   AND ts_ms >= $3 AND ts_ms < $4",
                &[&end_user, &key, &since_ms, &until_ms],
            )
            .await
            .map(|r| r.get::<_, i64>(0))
            .map_err(pg)
        })
    }

    pub async fn insert_spend(&self, rows: &[SpendRow]) -> Result<(), StoreError> {
        let col = |f: fn(&SpendRow) -> String| rows.iter().map(f).collect::<Vec<String>>();
        let num = |f: fn(&SpendRow) -> i64| rows.iter().map(f).collect::<Vec<i64>>();
        let ids = col(|r| r.request_id.clone());
        let ts = num(|r| r.ts_ms);
        let keys = col(|r| r.key_id.clone());
        let teams = col(|r| r.team_id.clone());
        let users = col(|r| r.user_id.clone());
        let end_users = col(|r| r.end_user.clone());
        let models = col(|r| r.model_group.clone());
        let deps = col(|r| r.deployment.clone());
        let pt = num(|r| r.prompt_tokens);
        let ct = num(|r| r.completion_tokens);
        let cost = num(|r| r.cost_nanos);
        let lat = num(|r| r.latency_ms);
        let status: Vec<i32> = rows.iter().map(|r| r.status).collect();
        let hit: Vec<bool> = rows.iter().map(|r| r.cache_hit).collect();
        op!(self, |c| {
            let tx = c.transaction().await.map_err(pg)?;
            let inserted = tx
                .query(
                    "INSERT INTO llmgw_spend (request_id, ts_ms, key_id, team_id, model_group, deployment,
                       prompt_tokens, completion_tokens, cost_nanos, latency_ms, status, cache_hit,
                       user_id, end_user)
                     SELECT * FROM UNNEST($1::text[], $2::bigint[], $3::text[], $4::text[], $5::text[],
                       $6::text[], $7::bigint[], $8::bigint[], $9::bigint[], $10::bigint[], $11::int[], $12::bool[],
                       $13::text[], $14::text[])
                     ON CONFLICT (request_id) DO NOTHING RETURNING request_id",
                    &[&ids, &ts, &keys, &teams, &models, &deps, &pt, &ct, &cost, &lat, &status, &hit, &users, &end_users],
                )
                .await
                .map_err(pg)?;
            let new: std::collections::HashSet<&str> =
                inserted.iter().map(|r| r.get::<_, &str>(0)).collect();
            let sums = super::rollup(rows.iter().filter(|r| new.contains(r.request_id.as_str())));
            if !sums.is_empty() {
                let mut h = Vec::new();
                let (mut k, mut t, mut m, mut u) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
                let (mut rq, mut p, mut cp, mut cs, mut hits, mut errs) = (
                    Vec::new(),
                    Vec::new(),
                    Vec::new(),
                    Vec::new(),
                    Vec::new(),
                    Vec::new(),
                );
                for ((hour, key, team, model), s) in sums {
                    h.push(hour);
                    k.push(key);
                    t.push(team);
                    m.push(model);
                    u.push(s.group);
                    rq.push(s.requests);
                    p.push(s.prompt_tokens);
                    cp.push(s.completion_tokens);
                    cs.push(s.cost_nanos);
                    hits.push(s.cache_hits);
                    errs.push(s.errors);
                }
                tx.execute(
                    "INSERT INTO llmgw_spend_hourly AS s (hour, key_id, team_id, model_group, requests,
                       prompt_tokens, completion_tokens, cost_nanos, cache_hits, errors, user_id)
                     SELECT * FROM UNNEST($1::bigint[], $2::text[], $3::text[], $4::text[], $5::bigint[],
                       $6::bigint[], $7::bigint[], $8::bigint[], $9::bigint[], $10::bigint[], $11::text[])
                     ON CONFLICT (hour, key_id, team_id, model_group) DO UPDATE SET
                       user_id = excluded.user_id,
                       requests = s.requests + excluded.requests,
                       prompt_tokens = s.prompt_tokens + excluded.prompt_tokens,
                       completion_tokens = s.completion_tokens + excluded.completion_tokens,
                       cost_nanos = s.cost_nanos + excluded.cost_nanos,
                       cache_hits = s.cache_hits + excluded.cache_hits,
                       errors = s.errors + excluded.errors",
                    &[&h, &k, &t, &m, &rq, &p, &cp, &cs, &hits, &errs, &u],
                )
                .await
                .map_err(pg)?;
            }
            tx.commit().await.map_err(pg)
        })
    }

    pub async fn spend_logs(&self, q: &LogQuery) -> Result<Vec<SpendRow>, StoreError> {
        let rows =
            op!(self, |c| {
                c.query(
                "SELECT request_id, ts_ms, key_id, team_id, model_group, deployment, prompt_tokens,
                   completion_tokens, cost_nanos, latency_ms, status, cache_hit, user_id, end_user
                 FROM llmgw_spend
                 WHERE ts_ms >= $1 AND ts_ms < $2 AND ($3::text IS NULL OR key_id = $3)
                   AND ($4::text IS NULL OR team_id = $4) AND ($6::text IS NULL OR user_id = $6)
                   AND ($7::text IS NULL OR end_user = $7)
                 ORDER BY ts_ms DESC LIMIT $5",
                &[&q.start_ms, &q.end_ms, &q.key_id, &q.team_id, &q.limit, &q.user_id, &q.end_user],
            )
            .await
            .map_err(pg)
            })?;
        Ok(rows
            .iter()
            .map(|r| SpendRow {
                request_id: r.get(0),
                ts_ms: r.get(1),
                key_id: r.get(2),
                team_id: r.get(3),
                model_group: r.get(4),
                deployment: r.get(5),
                prompt_tokens: r.get(6),
                completion_tokens: r.get(7),
                cost_nanos: r.get(8),
                latency_ms: r.get(9),
                status: r.get(10),
                cache_hit: r.get(11),
                user_id: r.get(12),
                end_user: r.get(13),
            })
            .collect())
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
        op!(self, |c| report_parts_on(&*c, by, &hours, &raw).await)
    }
}

/// Sums whole hours from the rollup and raw-row ranges, per group, on `c` (a
/// transaction that also read the watermark: see `store::retention`).
pub(super) async fn report_parts_on(
    c: &impl tokio_postgres::GenericClient,
    by: GroupBy,
    hours: &[(i64, i64)],
    raw: &[(i64, i64)],
) -> Result<Vec<ReportRow>, StoreError> {
    let col = by.column();
    let hourly = format!(
        "SELECT {col}, SUM(requests)::BIGINT, SUM(prompt_tokens)::BIGINT, SUM(completion_tokens)::BIGINT,
           SUM(cost_nanos)::BIGINT, SUM(cache_hits)::BIGINT, SUM(errors)::BIGINT
         FROM llmgw_spend_hourly WHERE hour >= $1 AND hour < $2 GROUP BY {col}"
    );
    let rawq = format!(
        "SELECT {col}, COUNT(*)::BIGINT, SUM(prompt_tokens)::BIGINT, SUM(completion_tokens)::BIGINT,
           SUM(cost_nanos)::BIGINT, SUM(CASE WHEN cache_hit THEN 1 ELSE 0 END)::BIGINT,
           SUM(CASE WHEN status <> 200 THEN 1 ELSE 0 END)::BIGINT
         FROM llmgw_spend WHERE ts_ms >= $1 AND ts_ms < $2 GROUP BY {col}"
    );
    let mut rows = Vec::new();
    for (h0, h1) in hours {
        rows.extend(c.query(&hourly, &[h0, h1]).await.map_err(pg)?);
    }
    for (a, b) in raw {
        rows.extend(c.query(&rawq, &[a, b]).await.map_err(pg)?);
    }
    Ok(rows
        .iter()
        .map(|r| ReportRow {
            group: r.get(0),
            requests: r.get(1),
            prompt_tokens: r.get(2),
            completion_tokens: r.get(3),
            cost_nanos: r.get(4),
            cache_hits: r.get(5),
            errors: r.get(6),
        })
        .collect())
}

async fn bump(tx: &tokio_postgres::Transaction<'_>) -> Result<(), StoreError> {
    tx.execute(
        "UPDATE llmgw_meta SET value = value + 1 WHERE name = 'version'",
        &[],
    )
    .await
    .map_err(pg)?;
    Ok(())
}
