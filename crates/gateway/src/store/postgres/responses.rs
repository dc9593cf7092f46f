//! The responses table on PostgreSQL (see `store::responses`).

use super::{pg, PgStore, OP_TIMEOUT};
use crate::store::responses::{Link, StoredResponse, CHAIN, SCHEMA};
use crate::store::StoreError;

const COLUMNS: &str =
    "id, owner, created_ms, expires_ms, previous_id, lives_at, model, input, response";

fn row(r: &tokio_postgres::Row) -> StoredResponse {
    StoredResponse {
        id: r.get(0),
        owner: r.get(1),
        created_ms: r.get(2),
        expires_ms: r.get(3),
        previous_id: r.get(4),
        lives_at: r.get(5),
        model: r.get(6),
        input: r.get(7),
        response: r.get(8),
    }
}

impl PgStore {
    pub(crate) async fn responses_schema(&self) -> Result<(), StoreError> {
        op!(self, |c| {
            let tx = c.transaction().await.map_err(pg)?;
            // Replicas starting together: the same lock as the main schema.
            tx.batch_execute(&format!("SELECT pg_advisory_xact_lock(727465);{SCHEMA}"))
                .await
                .map_err(pg)?;
            tx.commit().await.map_err(pg)
        })
    }

    pub(crate) async fn put_response(&self, r: &StoredResponse) -> Result<(), StoreError> {
        op!(self, |c| {
            c.execute(
                &format!(
                    "INSERT INTO llmgw_responses ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
                     ON CONFLICT (id) DO NOTHING"
                ),
                &[
                    &r.id,
                    &r.owner,
                    &r.created_ms,
                    &r.expires_ms,
                    &r.previous_id,
                    &r.lives_at,
                    &r.model,
                    &r.input,
                    &r.response,
                ],
            )
            .await
            .map(|_| ())
            .map_err(pg)
        })
    }

    pub(crate) async fn get_responses(
        &self,
        ids: &[String],
        now_ms: i64,
    ) -> Result<Vec<StoredResponse>, StoreError> {
        op!(self, |c| {
            c.query(
                &format!(
                    "SELECT {COLUMNS} FROM llmgw_responses WHERE id = ANY($1) AND expires_ms > $2"
                ),
                &[&ids, &now_ms],
            )
            .await
            .map(|rows| rows.iter().map(row).collect())
            .map_err(pg)
        })
    }

    pub(crate) async fn delete_response(&self, id: &str) -> Result<bool, StoreError> {
        op!(self, |c| {
            c.execute("DELETE FROM llmgw_responses WHERE id = $1", &[&id])
                .await
                .map(|n| n > 0)
                .map_err(pg)
        })
    }

    pub(crate) async fn response_chain(
        &self,
        id: &str,
        now_ms: i64,
        depth: i64,
    ) -> Result<Vec<Link>, StoreError> {
        op!(self, |c| {
            c.query(CHAIN, &[&id, &now_ms, &depth])
                .await
                .map(|rows| {
                    rows.iter()
                        .map(|r| Link {
                            id: r.get(0),
                            owner: r.get(1),
                            previous_id: r.get(2),
                            lives_at: r.get(3),
                            size: r.get(4),
                        })
                        .collect()
                })
                .map_err(pg)
        })
    }

    pub(crate) async fn sweep_responses(&self, now_ms: i64) -> Result<u64, StoreError> {
        op!(self, |c| {
            c.execute(
                "DELETE FROM llmgw_responses WHERE expires_ms <= $1",
                &[&now_ms],
            )
            .await
            .map_err(pg)
        })
    }
}
