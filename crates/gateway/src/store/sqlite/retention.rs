//! Retention on SQLite (see `store::retention`): batches of deletes, the watermark,
//! reports that honour it, and incremental vacuum.

use super::{report_parts_on, SqliteStore};
use crate::store::retention::{plan, Coverage, StoreSize, FAR_MS};
use crate::store::{GroupBy, ReportRow, StoreError};
use rusqlite::{params, Connection, OptionalExtension};

/// The watermark (0 when nothing was ever pruned).
fn pruned_before(c: &Connection) -> Result<i64, StoreError> {
    Ok(c.query_row(
        "SELECT value FROM llmgw_meta WHERE name = 'pruned_before'",
        [],
        |r| r.get(0),
    )
    .optional()?
    .unwrap_or(0))
}

/// A pragma's single number.
fn pragma(c: &Connection, name: &str) -> Result<i64, StoreError> {
    Ok(c.query_row(&format!("PRAGMA {name}"), [], |r| r.get(0))?)
}

impl SqliteStore {
    pub(crate) async fn prune_spend(&self, cutoff_ms: i64, limit: i64) -> Result<u64, StoreError> {
        self.run(move |c| {
            let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            tx.execute(
                "INSERT INTO llmgw_meta (name, value) VALUES ('pruned_before', ?1)
                 ON CONFLICT (name) DO UPDATE SET value = MAX(value, excluded.value)",
                [cutoff_ms],
            )?;
            let n = tx.execute(
                "DELETE FROM llmgw_spend WHERE rowid IN
                   (SELECT rowid FROM llmgw_spend WHERE ts_ms < ?1 ORDER BY ts_ms LIMIT ?2)",
                params![cutoff_ms, limit],
            )?;
            tx.commit()?;
            Ok(u64::try_from(n).unwrap_or(0))
        })
        .await
    }

    pub(crate) async fn vacuum_step(&self, pages: i64) -> Result<i64, StoreError> {
        self.run(move |c| {
            if pragma(c, "auto_vacuum")? != 2 || pragma(c, "freelist_count")? == 0 {
                return Ok(0);
            }
            let mut st = c.prepare(&format!("PRAGMA incremental_vacuum({pages})"))?;
            let mut rows = st.query([])?;
            while rows.next()?.is_some() {}
            drop(rows);
            drop(st);
            pragma(c, "freelist_count")
        })
        .await
    }

    pub(crate) async fn size(&self) -> Result<StoreSize, StoreError> {
        self.run(|c| {
            let page = pragma(c, "page_size")?.max(0) as u64;
            let count = pragma(c, "page_count")?.max(0) as u64;
            let free = pragma(c, "freelist_count")?.max(0) as u64;
            Ok(StoreSize {
                bytes: page.saturating_mul(count),
                free_bytes: page.saturating_mul(free),
                shrinks: pragma(c, "auto_vacuum")? == 2,
            })
        })
        .await
    }

    pub(crate) async fn report_kept(
        &self,
        by: GroupBy,
        start_ms: i64,
        end_ms: i64,
    ) -> Result<(Vec<ReportRow>, Coverage, i64), StoreError> {
        self.run(move |c| {
            let w = pruned_before(c)?;
            let p = plan(start_ms, end_ms, w);
            let rows = report_parts_on(c, by, &p.hours, &p.raw)?;
            Ok((rows, p.coverage, w))
        })
        .await
    }

    pub(crate) async fn spend_since_kept(
        &self,
        col: &'static str,
        id: String,
        since_ms: i64,
    ) -> Result<i64, StoreError> {
        self.run(move |c| {
            let w = pruned_before(c)?;
            if since_ms >= w {
                // The index-only sum over the raw rows.
                let sql = format!(
                    "SELECT COALESCE(SUM(cost_nanos), 0) FROM llmgw_spend WHERE {col} = ?1 AND ts_ms >= ?2"
                );
                return Ok(c.query_row(&sql, params![id, since_ms], |r| r.get(0))?);
            }
            let p = plan(since_ms, FAR_MS, w);
            let mut total: i64 = 0;
            let hourly = format!(
                "SELECT COALESCE(SUM(cost_nanos), 0) FROM llmgw_spend_hourly
                 WHERE {col} = ?1 AND hour >= ?2 AND hour < ?3"
            );
            for (h0, h1) in &p.hours {
                let s: i64 = c.query_row(&hourly, params![id, h0, h1], |r| r.get(0))?;
                total = total.saturating_add(s);
            }
            let raw = format!(
                "SELECT COALESCE(SUM(cost_nanos), 0) FROM llmgw_spend
                 WHERE {col} = ?1 AND ts_ms >= ?2 AND ts_ms < ?3"
            );
            for (a, b) in &p.raw {
                let s: i64 = c.query_row(&raw, params![id, a, b], |r| r.get(0))?;
                total = total.saturating_add(s);
            }
            Ok(total)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use crate::records::SpendRow;
    use crate::store::sqlite::SqliteStore;
    use crate::store::{GroupBy, Owner, Store, HOUR_MS};

    fn row(id: usize, ts: i64) -> SpendRow {
        SpendRow {
            request_id: format!("r{id}"),
            ts_ms: ts,
            key_id: "k1".into(),
            team_id: String::new(),
            user_id: String::new(),
            end_user: String::new(),
            model_group: "m".into(),
            deployment: "d".into(),
            prompt_tokens: 1,
            completion_tokens: 2,
            cost_nanos: 10,
            latency_ms: 3,
            status: 200,
            cache_hit: false,
        }
    }

    #[tokio::test]
    async fn pruned_rows_leave_reports_and_budgets_whole_and_space_is_given_back() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::Sqlite(SqliteStore::open(Some(&dir.path().join("db"))).unwrap());
        let h = HOUR_MS;
        // 3000 rows over the first half of hour 1, 10 in hour 2.
        let old: Vec<SpendRow> = (0..3000).map(|i| row(i, h + i as i64 * 100)).collect();
        s.insert_spend(&old).await.unwrap();
        let new: Vec<SpendRow> = (0..10)
            .map(|i| row(5000 + i, 2 * h + 10 + i as i64))
            .collect();
        s.insert_spend(&new).await.unwrap();
        let before = s.size().await.unwrap();
        assert!(before.shrinks, "a new file uses incremental auto_vacuum");
        // Rounds of at most 1000 rows, until none is older than the cutoff.
        let cutoff = 2 * h;
        let mut rounds = Vec::new();
        loop {
            let n = s.prune_spend(cutoff, 1000).await.unwrap().unwrap();
            rounds.push(n);
            if n < 1000 {
                break;
            }
        }
        assert_eq!(rounds, vec![1000, 1000, 1000, 0]);
        // The whole period still adds up; the pruned partial hour is read whole.
        let rep = s
            .spend_report(GroupBy::Key, h + 1, 2 * h + 100)
            .await
            .unwrap();
        assert_eq!(rep.rows[0].requests, 3010);
        assert!(rep.coverage.hourly);
        assert_eq!((rep.coverage.start_ms, rep.pruned_before_ms), (h, cutoff));
        // After the watermark the raw rows still answer, exactly.
        let rep = s
            .spend_report(GroupBy::Key, 2 * h, 2 * h + 15)
            .await
            .unwrap();
        assert_eq!((rep.rows[0].requests, rep.coverage.hourly), (5, false));
        assert_eq!(
            s.spend_since(Owner::Key("k1"), h + 7).await.unwrap(),
            30_100
        );
        assert_eq!(
            s.spend_since(Owner::Key("k1"), 2 * h + 15).await.unwrap(),
            50
        );
        // Freed pages go back in small steps.
        let mut steps = 0;
        while s.vacuum_step(8).await.unwrap() > 0 {
            steps += 1;
        }
        let after = s.size().await.unwrap();
        assert!(steps > 1, "more than one small step: {steps}");
        assert!(after.bytes < before.bytes, "{before:?} -> {after:?}");
        assert_eq!(after.free_bytes, 0);
    }
}
