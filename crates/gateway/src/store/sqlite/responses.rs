//! The responses table on SQLite (see `store::responses`).

use super::SqliteStore;
use crate::store::responses::{Link, StoredResponse, CHAIN, SCHEMA};
use crate::store::StoreError;
use rusqlite::{params, params_from_iter};

const COLUMNS: &str =
    "id, owner, created_ms, expires_ms, previous_id, lives_at, model, input, response";

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<StoredResponse> {
    Ok(StoredResponse {
        id: r.get(0)?,
        owner: r.get(1)?,
        created_ms: r.get(2)?,
        expires_ms: r.get(3)?,
        previous_id: r.get(4)?,
        lives_at: r.get(5)?,
        model: r.get(6)?,
        input: r.get(7)?,
        response: r.get(8)?,
    })
}

impl SqliteStore {
    pub(crate) async fn responses_schema(&self) -> Result<(), StoreError> {
        self.run(|c| Ok(c.execute_batch(SCHEMA)?)).await
    }

    pub(crate) async fn put_response(&self, r: StoredResponse) -> Result<(), StoreError> {
        self.run(move |c| {
            c.execute(
                &format!(
                    "INSERT INTO llmgw_responses ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
                     ON CONFLICT (id) DO NOTHING"
                ),
                params![
                    r.id,
                    r.owner,
                    r.created_ms,
                    r.expires_ms,
                    r.previous_id,
                    r.lives_at,
                    r.model,
                    r.input,
                    r.response
                ],
            )?;
            Ok(())
        })
        .await
    }

    pub(crate) async fn get_responses(
        &self,
        ids: Vec<String>,
        now_ms: i64,
    ) -> Result<Vec<StoredResponse>, StoreError> {
        self.run(move |c| {
            let mut out = Vec::with_capacity(ids.len());
            // SQLite binds at most 32766 values per statement.
            for part in ids.chunks(500) {
                let marks = vec!["?"; part.len()].join(", ");
                let mut st = c.prepare(&format!(
                    "SELECT {COLUMNS} FROM llmgw_responses WHERE expires_ms > {now_ms} AND id IN ({marks})"
                ))?;
                for r in st.query_map(params_from_iter(part.iter()), row)? {
                    out.push(r?);
                }
            }
            Ok(out)
        })
        .await
    }

    pub(crate) async fn delete_response(&self, id: String) -> Result<bool, StoreError> {
        self.run(move |c| Ok(c.execute("DELETE FROM llmgw_responses WHERE id = ?1", [id])? > 0))
            .await
    }

    pub(crate) async fn response_chain(
        &self,
        id: String,
        now_ms: i64,
        depth: i64,
    ) -> Result<Vec<Link>, StoreError> {
        self.run(move |c| {
            // SQLite reads `$1` as a named parameter; bind by index.
            let mut st = c.prepare(CHAIN)?;
            let links = st
                .query_map(params![id, now_ms, depth], |r| {
                    Ok(Link {
                        id: r.get(0)?,
                        owner: r.get(1)?,
                        previous_id: r.get(2)?,
                        lives_at: r.get(3)?,
                        size: r.get(4)?,
                    })
                })?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(links)
        })
        .await
    }

    pub(crate) async fn sweep_responses(&self, now_ms: i64) -> Result<u64, StoreError> {
        self.run(move |c| {
            let n = c.execute(
                "DELETE FROM llmgw_responses WHERE expires_ms <= ?1",
                [now_ms],
            )?;
            Ok(u64::try_from(n).unwrap_or(0))
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use crate::store::responses::StoredResponse;
    use crate::store::sqlite::SqliteStore;
    use crate::store::Store;

    fn row(id: &str, prev: Option<&str>, expires_ms: i64) -> StoredResponse {
        StoredResponse {
            id: id.into(),
            owner: "k1".into(),
            created_ms: 1,
            expires_ms,
            previous_id: prev.map(str::to_string),
            lives_at: None,
            model: "m".into(),
            input: "[]".into(),
            response: format!("{{\"id\":\"{id}\"}}"),
        }
    }

    #[tokio::test]
    async fn chains_expiry_and_sweep() {
        let s = Store::Sqlite(SqliteStore::open(None).unwrap());
        s.responses_schema().await.unwrap();
        s.put_response(&row("a", None, 100)).await.unwrap();
        s.put_response(&row("b", Some("a"), 1000)).await.unwrap();
        s.put_response(&row("c", Some("b"), 1000)).await.unwrap();
        // The same id again changes nothing.
        s.put_response(&row("c", None, 5)).await.unwrap();
        let ids = |links: Vec<crate::store::responses::Link>| -> Vec<String> {
            links.into_iter().map(|l| l.id).collect()
        };
        assert_eq!(
            ids(s.response_chain("c", 50, 100).await.unwrap()),
            ["c", "b", "a"]
        );
        assert_eq!(ids(s.response_chain("c", 50, 2).await.unwrap()), ["c", "b"]);
        // "a" expired at 100: the chain stops at "b", whose previous id names it.
        let links = s.response_chain("c", 200, 100).await.unwrap();
        assert_eq!(links.last().unwrap().previous_id.as_deref(), Some("a"));
        assert_eq!(links[0].size, 2 + 10);
        assert!(s.get_response("a", 200).await.unwrap().is_none());
        assert_eq!(s.get_response("b", 200).await.unwrap().unwrap().owner, "k1");
        assert_eq!(
            s.get_responses(&["b".into(), "c".into(), "x".into()], 200)
                .await
                .unwrap()
                .len(),
            2
        );
        assert_eq!(s.sweep_responses(200).await.unwrap(), 1);
        assert!(s.delete_response("b").await.unwrap());
        assert!(!s.delete_response("b").await.unwrap());
    }
}
