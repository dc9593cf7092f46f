//! Retention on PostgreSQL (see `store::retention`). Replicas sharing the database each
//! run the pruning task; a batch first takes a transaction-level advisory lock without
//! waiting, so one replica prunes at a time and the others skip the round. A batch is
//! idempotent anyway (it deletes whatever is older than the cutoff, the watermark only
//! rises). Dead tuples are reclaimed by PostgreSQL's autovacuum, which reuses the space.

use super::{pg, report_parts_on, PgStore, OP_TIMEOUT};
use crate::store::retention::{plan, Coverage, StoreSize, FAR_MS};
use crate::store::{GroupBy, ReportRow, StoreError};

/// The advisory lock of a pruning batch (the schema's is 727465).
const PRUNE_LOCK: i64 = 727_466;

/// The watermark (0 when nothing was ever pruned).
async fn pruned_before(c: &impl tokio_postgres::GenericClient) -> Result<i64, StoreError> {
    Ok(c.query_opt(
        "SELECT value FROM llmgw_meta WHERE name = 'pruned_before'",
        &[],
    )
    .await
    .map_err(pg)?
    .map_or(0, |r| r.get(0)))
}

impl PgStore {
    pub(crate) async fn prune_spend(
        &self,
        cutoff_ms: i64,
        limit: i64,
    ) -> Result<Option<u64>, StoreError> {
        op!(self, |c| {
            let tx = c.transaction().await.map_err(pg)?;
            let mine: bool = tx
                .query_one("SELECT pg_try_advisory_xact_lock($1)", &[&PRUNE_LOCK])
                .await
                .map_err(pg)?
                .get(0);
            if !mine {
                return Ok(None);
            }
            tx.execute(
                "INSERT INTO llmgw_meta (name, value) VALUES ('pruned_before', $1)
                 ON CONFLICT (name) DO UPDATE SET value = GREATEST(llmgw_meta.value, excluded.value)",
                &[&cutoff_ms],
            )
            .await
            .map_err(pg)?;
            let n = tx
                .execute(
                    "DELETE FROM llmgw_spend WHERE ctid = ANY(ARRAY(
                       SELECT ctid FROM llmgw_spend WHERE ts_ms < $1 ORDER BY ts_ms LIMIT $2))",
                    &[&cutoff_ms, &limit],
                )
                .await
                .map_err(pg)?;
            tx.commit().await.map_err(pg)?;
            Ok::<_, StoreError>(Some(n))
        })
    }

    pub(crate) async fn size(&self) -> Result<StoreSize, StoreError> {
        op!(self, |c| {
            let bytes: i64 = c
                .query_one("SELECT pg_database_size(current_database())", &[])
                .await
                .map_err(pg)?
                .get(0);
            Ok::<_, StoreError>(StoreSize {
                bytes: u64::try_from(bytes).unwrap_or(0),
                free_bytes: 0,
                shrinks: false,
            })
        })
    }

    pub(crate) async fn report_kept(
        &self,
        by: GroupBy,
        start_ms: i64,
        end_ms: i64,
    ) -> Result<(Vec<ReportRow>, Coverage, i64), StoreError> {
        op!(self, |c| {
            // One snapshot: the watermark and the rows it speaks of.
            let tx = c
                .build_transaction()
                .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
                .read_only(true)
                .start()
                .await
                .map_err(pg)?;
            let w = pruned_before(&tx).await?;
            let p = plan(start_ms, end_ms, w);
            let rows = report_parts_on(&tx, by, &p.hours, &p.raw).await?;
            tx.commit().await.map_err(pg)?;
            Ok::<_, StoreError>((rows, p.coverage, w))
        })
    }

    pub(crate) async fn spend_since_kept(
        &self,
        col: &'static str,
        id: String,
        since_ms: i64,
    ) -> Result<i64, StoreError> {
        let raw = format!(
            "SELECT COALESCE(SUM(cost_nanos), 0)::BIGINT FROM llmgw_spend
             WHERE {col} = $1 AND ts_ms >= $2 AND ts_ms < $3"
        );
        let hourly = format!(
            "SELECT COALESCE(SUM(cost_nanos), 0)::BIGINT FROM llmgw_spend_hourly
             WHERE {col} = $1 AND hour >= $2 AND hour < $3"
        );
        op!(self, |c| {
            let tx = c
                .build_transaction()
                .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
                .read_only(true)
                .start()
                .await
                .map_err(pg)?;
            let w = pruned_before(&tx).await?;
            let p = if since_ms >= w {
                crate::store::retention::Plan {
                    hours: Vec::new(),
                    raw: vec![(since_ms, FAR_MS)],
                    coverage: Coverage {
                        start_ms: since_ms,
                        end_ms: FAR_MS,
                        hourly: false,
                    },
                }
            } else {
                plan(since_ms, FAR_MS, w)
            };
            let mut total: i64 = 0;
            for (h0, h1) in &p.hours {
                let s: i64 = tx
                    .query_one(&hourly, &[&id, h0, h1])
                    .await
                    .map_err(pg)?
                    .get(0);
                total = total.saturating_add(s);
            }
            for (a, b) in &p.raw {
                let s: i64 = tx.query_one(&raw, &[&id, a, b]).await.map_err(pg)?.get(0);
                total = total.saturating_add(s);
            }
            tx.commit().await.map_err(pg)?;
            Ok::<_, StoreError>(total)
        })
    }
}
