//! Prefix-cache-aware routing (`strategy = "prefix-aware"`, issue 28): send a request to
//! the replica that most likely holds its prompt's prefix in its KV cache.
//!
//! SGLang keeps a radix cache of prompt prefixes per replica; a request whose system
//! prompt or conversation history is cached there skips most of its prefill. The gateway
//! cannot see those caches, so it keeps its own approximation per deployment, without a
//! tokenizer on the request path:
//!
//! - A prompt is cut into `CHUNK`-byte chunks of its body (`llmgw_wire::prefix`); chunk `i`'s key is a hash of
//!   every byte up to its end (chained: `h_i = xxh3(chunk_i, seed = h_{i-1})`), so one key
//!   stands for a whole prefix. Turn N+1 of a conversation starts with turn N's bytes, so
//!   its keys repeat turn N's up to where they differ.
//! - Each deployment has a [`PrefixIndex`]: a fixed table of keys (direct-mapped, lock-free
//!   atomics: a new key overwrites whatever had its slot, as a full cache evicts), sized
//!   like a backend's cache ([`DEFAULT_INDEX_CHUNKS`] chunks ≈ half a million tokens).
//!   Routing a request inserts its keys into the index of the deployment it goes to.
//! - The match of a deployment is the longest prefix whose key it holds (keys of one
//!   prompt are nested, so a binary search over them finds it).
//! - [`pick`]: the longest match, when it covers at least [`MIN_MATCH`] of the prompt and
//!   the candidates' loads are not too uneven; otherwise the shortest queue (as
//!   `load-based`). Uneven means the busiest candidate has more than [`BALANCE_ABS`]
//!   requests more than the idlest *and* more than [`BALANCE_REL`] times as many: then a
//!   cache hit would cost more waiting than the prefill it saves (the guard SGLang's own
//!   router uses).

use super::deployment::Deployment;
pub use llmgw_wire::prefix::{keys, CHUNK};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Keys a deployment's index holds by default (× [`CHUNK`] bytes ≈ 2 MB of prompt text,
/// about half a million tokens: a typical SGLang radix cache).
pub const DEFAULT_INDEX_CHUNKS: usize = 8192;
/// A match counts when it covers at least this fraction of the prompt's chunks.
pub const MIN_MATCH: f64 = 0.5;
/// Load imbalance that overrides a cache match: more than this many requests between the
/// busiest and the idlest candidate (about one batch of a small backend: the gateway's
/// queue keeps backends near their limits, so their queues stay short)…
pub const BALANCE_ABS: u64 = 4;
/// …and the busiest with more than this many times the idlest's.
pub const BALANCE_REL: f64 = 1.5;

/// An approximate set of the prefix keys a deployment's backend has cached.
pub struct PrefixIndex {
    slots: Box<[AtomicU64]>,
    mask: usize,
}

impl PrefixIndex {
    /// An index of about `chunks` keys (rounded up to a power of two).
    pub fn new(chunks: usize) -> PrefixIndex {
        let n = chunks.clamp(64, 1 << 24).next_power_of_two();
        PrefixIndex {
            slots: (0..n).map(|_| AtomicU64::new(0)).collect(),
            mask: n - 1,
        }
    }

    fn slot(&self, key: u64) -> &AtomicU64 {
        // The key is a hash already: its low bits pick the slot.
        &self.slots[(key as usize) & self.mask]
    }

    fn holds(&self, key: u64) -> bool {
        self.slot(key).load(Ordering::Relaxed) == key
    }

    /// Records that the backend now caches these prefixes.
    pub fn insert(&self, keys: &[u64]) {
        for &k in keys {
            self.slot(k).store(k, Ordering::Relaxed);
        }
    }

    /// Chunks of the longest prefix of `keys` held (keys are nested: binary search).
    pub fn matched(&self, keys: &[u64]) -> usize {
        let (mut lo, mut hi) = (0usize, keys.len());
        while lo < hi {
            let mid = lo + (hi - lo).div_ceil(2);
            if self.holds(keys[mid - 1]) {
                lo = mid;
            } else {
                hi = mid - 1;
            }
        }
        lo
    }
}

/// Picks one of `candidates` (non-empty) for a prompt with `keys`, and returns its
/// position: the longest cached prefix unless the loads are too uneven, else the
/// shortest queue. `queue` is a deployment's load (running + waiting).
pub fn pick(
    candidates: &[&Arc<Deployment>],
    keys: &[u64],
    queue: impl Fn(&Deployment) -> u64,
) -> usize {
    let loads: Vec<u64> = candidates.iter().map(|d| queue(d)).collect();
    let (min, max) = (
        loads.iter().copied().min().unwrap_or(0),
        loads.iter().copied().max().unwrap_or(0),
    );
    let uneven = max.saturating_sub(min) > BALANCE_ABS && max as f64 > BALANCE_REL * min as f64;
    let least_loaded = |among: &[usize]| -> usize {
        let best = among.iter().map(|&i| loads[i]).min().unwrap_or(0);
        let near: Vec<usize> = among
            .iter()
            .copied()
            .filter(|&i| loads[i] == best)
            .collect();
        match near.len() {
            0 => 0,
            n => near[fastrand::usize(..n)],
        }
    };
    let all: Vec<usize> = (0..candidates.len()).collect();
    if keys.is_empty() || uneven {
        return least_loaded(&all);
    }
    let matched: Vec<usize> = candidates
        .iter()
        .map(|d| d.prefix_index().map_or(0, |ix| ix.matched(keys)))
        .collect();
    let best = matched.iter().copied().max().unwrap_or(0);
    if (best as f64) < MIN_MATCH * keys.len() as f64 || best == 0 {
        return least_loaded(&all);
    }
    let holders: Vec<usize> = all.into_iter().filter(|&i| matched[i] == best).collect();
    least_loaded(&holders)
}

#[cfg(test)]
mod tests {
    use super::*;
    use llmgw_core::config::ProviderKind;

    fn dep(id: &str) -> Arc<Deployment> {
        let mut d = Deployment::standalone(ProviderKind::Sglang, "m", "http://127.0.0.1:9/v1");
        d.upstream.id = id.into();
        d.enable_prefix_index(1024);
        Arc::new(d)
    }

    fn conversation(system: &str, turns: usize) -> Vec<u8> {
        let mut s =
            format!(r#"{{"model":"m","messages":[{{"role":"system","content":"{system}"}}"#);
        for t in 0..turns {
            s.push_str(&format!(
                r#",{{"role":"user","content":"question {t} {}"}},{{"role":"assistant","content":"answer {t} {}"}}"#,
                "q".repeat(300),
                "a".repeat(300)
            ));
        }
        s.push_str("]}");
        s.into_bytes()
    }

    #[test]
    fn keys_are_nested_prefixes() {
        let a = conversation(&"s".repeat(2000), 2);
        let b = conversation(&"s".repeat(2000), 3);
        let (ka, kb) = (keys(&a), keys(&b));
        let common = ka.iter().zip(&kb).take_while(|(x, y)| x == y).count();
        // Everything before turn 2's closing bytes is shared.
        assert!(common >= ka.len() - 1, "{common} of {}", ka.len());
        assert!(keys(b"short").is_empty());
        // A different system prompt shares nothing.
        let c = conversation(&"t".repeat(2000), 2);
        assert_ne!(keys(&c)[0], ka[0]);
    }

    #[test]
    fn the_longest_cached_prefix_is_found() {
        let ix = PrefixIndex::new(1024);
        let k = keys(&conversation(&"s".repeat(4000), 4));
        assert_eq!(ix.matched(&k), 0);
        ix.insert(&k[..10]);
        assert_eq!(ix.matched(&k), 10);
        ix.insert(&k);
        assert_eq!(ix.matched(&k), k.len());
    }

    #[test]
    fn a_conversation_stays_on_its_replica_unless_loads_are_uneven() {
        let deps: Vec<Arc<Deployment>> = (0..4).map(|i| dep(&format!("r{i}"))).collect();
        let cands: Vec<&Arc<Deployment>> = deps.iter().collect();
        let turn1 = keys(&conversation(&"s".repeat(4000), 1));
        deps[2].prefix_index().unwrap().insert(&turn1);
        let turn2 = keys(&conversation(&"s".repeat(4000), 2));
        // Equal loads: the replica that has turn 1.
        assert_eq!(pick(&cands, &turn2, |_| 5), 2);
        // Replica 2 far busier (40 vs 2): the least loaded instead.
        let busy = |d: &Deployment| {
            if d.id == "r2" {
                40
            } else if d.id == "r0" {
                2
            } else {
                10
            }
        };
        assert_eq!(pick(&cands, &turn2, busy), 0);
        // A prompt nobody has: the least loaded.
        let other = keys(&conversation(&"x".repeat(4000), 1));
        let load = |d: &Deployment| if d.id == "r3" { 0 } else { 3 };
        assert_eq!(pick(&cands, &other, load), 3);
    }
}
