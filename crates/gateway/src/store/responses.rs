//! Stored Responses API answers, in the same database as keys and spend:
//! `llmgw_responses(id, owner, created_ms, expires_ms, previous_id, lives_at, model,
//! input, response)`, one row per stored response: who made it (a virtual key's id, or
//! `""` for the master key and a keyless gateway), when it expires (`[responses]
//! retention`), the response it continued, the deployment that holds it itself when it
//! was passed through to a `responses_api` upstream that stores responses, its input
//! items and the response object (JSON text). A chain is read newest first with one
//! recursive query; expired rows are never read and are deleted by a periodic sweep.
//!
//! The table is created when the responses service opens the store
//! ([`Store::responses_schema`]); everything here is additive to the key/spend tables.

use super::{Store, StoreError};

/// One stored response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredResponse {
    pub id: String,
    /// The virtual key's id; `""` for the master key (or no key).
    pub owner: String,
    pub created_ms: i64,
    pub expires_ms: i64,
    pub previous_id: Option<String>,
    /// The `responses_api` deployment that stored it itself.
    pub lives_at: Option<String>,
    /// The model group asked for.
    pub model: String,
    /// The input items (a JSON array).
    pub input: String,
    /// The response object.
    pub response: String,
}

/// A link of a chain, without its contents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub id: String,
    pub owner: String,
    pub previous_id: Option<String>,
    pub lives_at: Option<String>,
    /// Bytes of input and response.
    pub size: i64,
}

/// Tables and indexes (idempotent), the same for both databases.
pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS llmgw_responses (
  id TEXT PRIMARY KEY, owner TEXT NOT NULL, created_ms BIGINT NOT NULL,
  expires_ms BIGINT NOT NULL, previous_id TEXT, lives_at TEXT, model TEXT NOT NULL,
  input TEXT NOT NULL, response TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS llmgw_responses_expires ON llmgw_responses (expires_ms);
";

/// The links of the chain ending at `id` (newest first), at most `depth` of them.
/// `$1`/`?1`: id, `$2`/`?2`: now (ms), `$3`/`?3`: depth.
pub(super) const CHAIN: &str = "
WITH RECURSIVE chain(id, previous_id, depth) AS (
  SELECT id, previous_id, CAST(0 AS BIGINT) FROM llmgw_responses WHERE id = $1 AND expires_ms > $2
  UNION ALL
  SELECT r.id, r.previous_id, c.depth + 1 FROM llmgw_responses r JOIN chain c ON r.id = c.previous_id
  WHERE r.expires_ms > $2 AND c.depth + 1 < $3)
SELECT r.id, r.owner, r.previous_id, r.lives_at,
  CAST(LENGTH(r.input) + LENGTH(r.response) AS BIGINT) FROM chain c JOIN llmgw_responses r ON r.id = c.id
ORDER BY c.depth";

impl Store {
    /// Creates the responses table when missing.
    pub async fn responses_schema(&self) -> Result<(), StoreError> {
        match self {
            Store::Sqlite(s) => s.responses_schema().await,
            Store::Postgres(s) => s.responses_schema().await,
        }
    }

    /// Keeps a response (an id seen before is left as it is).
    pub async fn put_response(&self, r: &StoredResponse) -> Result<(), StoreError> {
        match self {
            Store::Sqlite(s) => s.put_response(r.clone()).await,
            Store::Postgres(s) => s.put_response(r).await,
        }
    }

    /// A response that has not expired.
    pub async fn get_response(
        &self,
        id: &str,
        now_ms: i64,
    ) -> Result<Option<StoredResponse>, StoreError> {
        match self {
            Store::Sqlite(s) => s.get_responses(vec![id.to_string()], now_ms).await,
            Store::Postgres(s) => s.get_responses(&[id.to_string()], now_ms).await,
        }
        .map(|mut v| v.pop())
    }

    /// Responses by id (those that exist and have not expired, in no order).
    pub async fn get_responses(
        &self,
        ids: &[String],
        now_ms: i64,
    ) -> Result<Vec<StoredResponse>, StoreError> {
        match self {
            Store::Sqlite(s) => s.get_responses(ids.to_vec(), now_ms).await,
            Store::Postgres(s) => s.get_responses(ids, now_ms).await,
        }
    }

    /// Deletes a response; true when it existed.
    pub async fn delete_response(&self, id: &str) -> Result<bool, StoreError> {
        match self {
            Store::Sqlite(s) => s.delete_response(id.to_string()).await,
            Store::Postgres(s) => s.delete_response(id).await,
        }
    }

    /// The chain ending at `id`, newest first, at most `depth` links.
    pub async fn response_chain(
        &self,
        id: &str,
        now_ms: i64,
        depth: i64,
    ) -> Result<Vec<Link>, StoreError> {
        match self {
            Store::Sqlite(s) => s.response_chain(id.to_string(), now_ms, depth).await,
            Store::Postgres(s) => s.response_chain(id, now_ms, depth).await,
        }
    }

    /// Deletes expired responses; returns how many.
    pub async fn sweep_responses(&self, now_ms: i64) -> Result<u64, StoreError> {
        match self {
            Store::Sqlite(s) => s.sweep_responses(now_ms).await,
            Store::Postgres(s) => s.sweep_responses(now_ms).await,
        }
    }
}
