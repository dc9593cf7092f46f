//! A backend's prefix cache, modelled (`Behavior::prefix_cache_chunks`): SGLang skips
//! the prefill of a prompt prefix it still holds in its radix cache. The mock keeps the
//! prefix keys of recent prompts (`llmgw_wire::prefix`, the same chunks the gateway's
//! prefix-aware routing reads) in a least-recently-used set of a set size; a request's
//! first byte waits `prefill_per_chunk` for every chunk past the longest cached prefix,
//! inside its running slot, as a real prefill holds the GPU.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// The cache and its hit counts.
#[derive(Default)]
pub struct PrefixCache {
    lru: Mutex<Lru>,
    /// Prompt chunks found cached / prefilled.
    pub hit_chunks: AtomicU64,
    pub miss_chunks: AtomicU64,
}

#[derive(Default)]
struct Lru {
    /// key → last use
    used: HashMap<u64, u64>,
    /// last use → key
    order: BTreeMap<u64, u64>,
    tick: u64,
}

impl PrefixCache {
    /// Serves a prompt with `keys` from a cache of `capacity` chunks: the chunks it must
    /// prefill (those past its longest cached prefix); every one is cached after.
    pub fn serve(&self, keys: &[u64], capacity: usize) -> usize {
        let mut lru = self.lru.lock().unwrap_or_else(|e| e.into_inner());
        let cached = keys.iter().take_while(|k| lru.used.contains_key(k)).count();
        for &k in keys {
            lru.tick += 1;
            let t = lru.tick;
            if let Some(old) = lru.used.insert(k, t) {
                lru.order.remove(&old);
            }
            lru.order.insert(t, k);
        }
        while lru.used.len() > capacity {
            let Some((_, k)) = lru.order.pop_first() else {
                break;
            };
            lru.used.remove(&k);
        }
        let missed = keys.len() - cached;
        self.hit_chunks.fetch_add(cached as u64, Ordering::Relaxed);
        self.miss_chunks.fetch_add(missed as u64, Ordering::Relaxed);
        missed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cached_prefix_is_not_prefilled_again_and_the_oldest_goes() {
        let c = PrefixCache::default();
        assert_eq!(c.serve(&[1, 2, 3], 4), 3);
        assert_eq!(c.serve(&[1, 2, 3, 4], 4), 1);
        // Over capacity: 1 (the least recently used) goes; [5] fits.
        assert_eq!(c.serve(&[5], 4), 1);
        assert_eq!(
            c.serve(&[1, 2], 4),
            2,
            "1 was evicted, so 2 counts as not cached"
        );
    }
}
