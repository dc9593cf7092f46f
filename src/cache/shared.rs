//! Shared state for several gateway replicas behind one address: deployment cooldowns
//! and per-minute rpm/tpm usage live in Redis, so N gateways sharing one Redis skip the
//! same cooling deployments and respect one limit in total.
//!
//! Redis stays off the request path: the router reads only the deployments' local
//! atomics. One background task per gateway, every [`SYNC_INTERVAL`], sends a single
//! pipeline that
//! - publishes local cooldowns that started since the last round:
//!   `ZADD <ns>:cooldowns GT <until_ms> <deployment id>` (GT keeps the latest deadline
//!   any replica set);
//! - adds this replica's new usage of deployments with an rpm/tpm limit:
//!   `INCRBY <ns>:usage:<id>:<minute>:req|tok <delta>` (expiring after two minutes);
//! - reads back `ZMSCORE <ns>:cooldowns <ids…>` and `MGET` of this minute's usage keys,
//!   and folds them into each deployment ([`Deployment::merge_shared`]): cooling
//!   deadline = max(local, remote), usage = max(local, sum over replicas).
//!
//! A cooldown set by one replica is seen by the others within about two rounds. When
//! Redis is down (breaker open) the rounds are skipped and each replica keeps going on
//! its local state; remote usage stops counting once its minute is over.
//! Deadlines are wall-clock unix ms, so replicas' clocks should agree to within a second.

use super::redis::RedisStore;
use crate::router::{now_ms, Deployment};
use std::sync::Arc;
use std::time::Duration;

/// How often a replica exchanges its state with Redis.
pub const SYNC_INTERVAL: Duration = Duration::from_millis(200);

/// Usage keys outlive their minute a little, for replicas whose clocks lag.
const USAGE_TTL_MS: u64 = 120_000;

/// Starts the sync task (runs for the life of the process).
pub fn spawn(store: Arc<RedisStore>, deployments: Vec<Arc<Deployment>>, namespace: String) {
    if deployments.is_empty() {
        return;
    }
    tokio::spawn(async move {
        let mut sync = Sync::new(deployments, namespace);
        let mut tick = tokio::time::interval(SYNC_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tick.tick().await;
            if store.is_up() {
                sync.round(&store).await;
            }
        }
    });
}

struct Sync {
    deps: Vec<Arc<Deployment>>,
    /// Only deployments with an rpm or tpm limit exchange usage.
    limited: Vec<usize>,
    zkey: String,
    namespace: String,
    /// Per deployment: the latest cooldown deadline Redis already knows.
    published: Vec<u64>,
    /// Per deployment: (minute, requests, tokens) already added to Redis.
    flushed: Vec<(u64, u64, u64)>,
}

impl Sync {
    fn new(deps: Vec<Arc<Deployment>>, namespace: String) -> Sync {
        let limited = (0..deps.len())
            .filter(|&i| deps[i].rpm.is_some() || deps[i].tpm.is_some())
            .collect();
        Sync {
            published: vec![0; deps.len()],
            flushed: vec![(0, 0, 0); deps.len()],
            zkey: format!("{namespace}:cooldowns"),
            namespace,
            limited,
            deps,
        }
    }

    fn usage_key(&self, i: usize, minute: u64, what: &str) -> String {
        format!(
            "{}:usage:{}:{minute}:{what}",
            self.namespace, self.deps[i].id
        )
    }

    /// One exchange; on any failure nothing is marked as published (next round retries).
    async fn round(&mut self, store: &Arc<RedisStore>) {
        let now = now_ms();
        let minute = now / 60_000;
        let mut pipe = redis::pipe();
        let mut cooled = Vec::new();
        for (i, d) in self.deps.iter().enumerate() {
            let until = d.cooling_deadline_ms();
            if until > self.published[i] && until > now {
                pipe.cmd("ZADD")
                    .arg(&self.zkey)
                    .arg("GT")
                    .arg(until)
                    .arg(&d.id)
                    .ignore();
                cooled.push((i, until));
            }
        }
        if !cooled.is_empty() {
            pipe.cmd("ZREMRANGEBYSCORE")
                .arg(&self.zkey)
                .arg("-inf")
                .arg(now.saturating_sub(60_000))
                .ignore();
        }
        let mut flushed = self.flushed.clone();
        for &i in &self.limited {
            let (m, reqs, toks) = self.deps[i].local_usage();
            let (fm, fr, ft) = self.flushed[i];
            let (fr, ft) = if fm == m { (fr, ft) } else { (0, 0) };
            for (what, delta) in [
                ("req", reqs.saturating_sub(fr)),
                ("tok", toks.saturating_sub(ft)),
            ] {
                if delta > 0 {
                    let key = self.usage_key(i, m, what);
                    pipe.cmd("INCRBY").arg(&key).arg(delta).ignore();
                    pipe.cmd("PEXPIRE").arg(&key).arg(USAGE_TTL_MS).ignore();
                }
            }
            flushed[i] = (m, reqs.max(fr), toks.max(ft));
        }
        pipe.cmd("ZMSCORE").arg(&self.zkey);
        for d in &self.deps {
            pipe.arg(&d.id);
        }
        let usage_keys: Vec<String> = self
            .limited
            .iter()
            .flat_map(|&i| {
                [
                    self.usage_key(i, minute, "req"),
                    self.usage_key(i, minute, "tok"),
                ]
            })
            .collect();
        if !usage_keys.is_empty() {
            pipe.cmd("MGET").arg(&usage_keys);
        }
        let result = store
            .run(move |mut c| async move { pipe.query_async::<Vec<redis::Value>>(&mut c).await })
            .await;
        let Ok(values) = result else {
            return; // Counted by the store's breaker; local state keeps working.
        };
        let mut values = values.into_iter();
        let scores: Vec<Option<f64>> = values
            .next()
            .and_then(|v| redis::from_redis_value(v).ok())
            .unwrap_or_default();
        let usage: Vec<Option<u64>> = values
            .next()
            .and_then(|v| redis::from_redis_value(v).ok())
            .unwrap_or_default();
        for (i, until) in cooled {
            self.published[i] = self.published[i].max(until);
        }
        self.flushed = flushed;
        for (i, d) in self.deps.iter().enumerate() {
            let remote_until = scores
                .get(i)
                .copied()
                .flatten()
                .map_or(0, |s| s.max(0.0) as u64);
            self.published[i] = self.published[i].max(remote_until);
            let (reqs, toks) = match self.limited.iter().position(|&l| l == i) {
                Some(k) => (
                    usage.get(2 * k).copied().flatten().unwrap_or(0),
                    usage.get(2 * k + 1).copied().flatten().unwrap_or(0),
                ),
                None => (0, 0),
            };
            d.merge_shared(remote_until, minute, reqs, toks);
        }
    }
}
