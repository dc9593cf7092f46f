//! The in-process cache backend (moka), bounded by entries and by bytes.
//!
//! moka bounds one weighted capacity; we give it `max_bytes` and weigh each entry by
//! max(its size, max_bytes / max_entries). Small entries are overcharged, so there can
//! never be more than `max_entries` of them, and the bytes held stay below `max_bytes`.
//! Each entry expires after its own TTL (config or per-request `ttl`).

use super::Entry;
use moka::sync::Cache;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub struct MemoryStore {
    cache: Cache<Arc<str>, Arc<Entry>>,
}

struct PerEntryTtl;

impl moka::Expiry<Arc<str>, Arc<Entry>> for PerEntryTtl {
    fn expire_after_create(&self, _: &Arc<str>, v: &Arc<Entry>, _: Instant) -> Option<Duration> {
        Some(v.ttl)
    }
    fn expire_after_update(
        &self,
        _: &Arc<str>,
        v: &Arc<Entry>,
        _: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Some(v.ttl)
    }
}

impl MemoryStore {
    pub fn new(max_entries: u64, max_bytes: u64) -> MemoryStore {
        let max_entries = max_entries.max(1);
        let floor = (max_bytes / max_entries).clamp(1, u64::from(u32::MAX)) as u32;
        let cache = Cache::builder()
            .max_capacity(max_bytes)
            .weigher(move |k: &Arc<str>, v: &Arc<Entry>| {
                let size = (k.len() + v.body.len() + 64).min(u32::MAX as usize) as u32;
                size.max(floor)
            })
            .expire_after(PerEntryTtl)
            .build();
        MemoryStore { cache }
    }

    pub fn get(&self, key: &str) -> Option<Arc<Entry>> {
        self.cache.get(key)
    }

    pub fn insert(&self, key: &str, entry: Entry) {
        self.cache.insert(Arc::from(key), Arc::new(entry));
    }

    /// Entries held now (approximate: moka applies writes in batches).
    pub fn entry_count(&self) -> u64 {
        self.cache.entry_count()
    }

    /// Weighted size held now (approximate), in bytes.
    pub fn weighted_size(&self) -> u64 {
        self.cache.weighted_size()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::Form;
    use bytes::Bytes;

    fn entry(n: usize) -> Entry {
        Entry {
            form: Form::Json,
            body: Bytes::from(vec![b'x'; n]),
            ttl: Duration::from_secs(60),
        }
    }

    #[test]
    fn bounded_by_entries_and_bytes() {
        let m = MemoryStore::new(10, 100_000);
        for i in 0..100 {
            m.insert(&format!("k{i}"), entry(10));
        }
        m.cache.run_pending_tasks();
        assert!(m.entry_count() <= 10, "{} entries", m.entry_count());
        let m = MemoryStore::new(1000, 10_000);
        for i in 0..100 {
            m.insert(&format!("k{i}"), entry(1000));
        }
        m.cache.run_pending_tasks();
        assert!(m.weighted_size() <= 10_000, "{} bytes", m.weighted_size());
    }

    #[test]
    fn per_entry_ttl() {
        let m = MemoryStore::new(10, 100_000);
        m.insert(
            "short",
            Entry {
                ttl: Duration::from_millis(1),
                ..entry(1)
            },
        );
        m.insert("long", entry(1));
        std::thread::sleep(Duration::from_millis(20));
        assert!(m.get("short").is_none());
        assert!(m.get("long").is_some());
    }
}
