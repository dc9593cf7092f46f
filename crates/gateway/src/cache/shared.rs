//! Shared state for several gateway replicas behind one address: deployment cooldowns
//! and per-minute rpm/tpm usage live in Redis, so N gateways sharing one Redis skip the
//! same cooling deployments and respect one limit in total.
//!
//! Redis stays off the request path: the router reads only the deployments' local
//! atomics. One background task per gateway, every [`SYNC_INTERVAL`], sends a single
//! pipeline that
//! - publishes local cooldowns that started since the last round:
//!   `SET <ns>:cool:<deployment id> <until_ms> PX <left>` (a replica only publishes a
//!   deadline later than any it has seen, so the latest one wins);
//! - adds this replica's new usage of deployments with an rpm/tpm limit:
//!   `INCRBY <ns>:usage:<id>:<minute>:req|tok <delta>` (expiring after two minutes);
//! - reads back every deployment's cooldown key and this minute's usage keys in one
//!   `MGET`, and folds them into each deployment ([`Deployment::merge_shared`]): cooling
//!   deadline = max(local, remote), usage = max(local, sum over replicas).
//!
//! A cooldown set by one replica is seen by the others within about two rounds. When
//! Redis is down (breaker open) the rounds are skipped and each replica keeps going on
//! its local state; remote usage stops counting once its minute is over.
//! Replicas match deployments by id (`id = ...` in `[[models]]`, else `<name>-<n>`), so
//! they must serve the same `[[models]]` list. Deadlines are wall-clock unix ms, so the
//! replicas' clocks should agree to within a second. Only plain string commands are
//! used: any Redis >= 2.6.12 works.

use super::redis::RedisStore;
use llmgw_router::{now_ms, Deployment};
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
        let mut sync = Syncer::new(deployments, namespace);
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

struct Syncer {
    deps: Vec<Arc<Deployment>>,
    /// Only deployments with an rpm or tpm limit exchange usage.
    limited: Vec<usize>,
    namespace: String,
    /// Per deployment: the latest cooldown deadline Redis already knows.
    published: Vec<u64>,
    /// Per deployment: (minute, requests, tokens) already added to Redis.
    flushed: Vec<(u64, u64, u64)>,
}

impl Syncer {
    fn new(deps: Vec<Arc<Deployment>>, namespace: String) -> Syncer {
        let limited = (0..deps.len())
            .filter(|&i| deps[i].rpm.is_some() || deps[i].tpm.is_some())
            .collect();
        Syncer {
            published: vec![0; deps.len()],
            flushed: vec![(0, 0, 0); deps.len()],
            namespace,
            limited,
            deps,
        }
    }

    fn cool_key(&self, i: usize) -> String {
        format!("{}:cool:{}", self.namespace, self.deps[i].id)
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
                pipe.cmd("SET")
                    .arg(self.cool_key(i))
                    .arg(until)
                    .arg("PX")
                    .arg(until - now)
                    .ignore();
                cooled.push((i, until));
            }
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
        // One read: every deployment's cooldown, then (req, tok) of each limited one.
        let mut keys: Vec<String> = (0..self.deps.len()).map(|i| self.cool_key(i)).collect();
        for &i in &self.limited {
            keys.push(self.usage_key(i, minute, "req"));
            keys.push(self.usage_key(i, minute, "tok"));
        }
        pipe.cmd("MGET").arg(&keys);
        let result = store
            .run(move |mut c| async move { pipe.query_async::<(Vec<Option<u64>>,)>(&mut c).await })
            .await;
        let Ok((read,)) = result else {
            return; // Counted by the store's breaker; local state keeps working.
        };
        let (cools, usage) = read.split_at(read.len().min(self.deps.len()));
        for (i, until) in cooled {
            self.published[i] = self.published[i].max(until);
        }
        self.flushed = flushed;
        for (i, d) in self.deps.iter().enumerate() {
            let remote_until = cools.get(i).copied().flatten().unwrap_or(0);
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
