//! Keeping replicas in step, off the request path.
//!
//! - **Key changes**: every `[store] poll_interval` (250 ms) each replica reads the
//!   store's `version` (one row); when it changed, the replica reloads keys and teams.
//!   With SQLite this keeps two generations of a renewed job (which share the state
//!   directory's file during the handover) in step. A key revoked on one replica is refused by every other one
//!   within one poll interval plus a reload.
//! - **Usage and spend** (Redis, `[cache] redis_url`): every [`SYNC_INTERVAL`] one
//!   pipeline per replica adds its new requests, tokens and spend of every limited key
//!   and team to Redis (`INCRBY <ns>:keys:<k|t>:<id>:<minute>:req|tok`,
//!   `<ns>:keys:<k|t>:<id>:spend:<period start>`, the latter seeded with `SET NX` from
//!   the replica's own view when Redis does not have it, e.g. after a Redis restart) and
//!   reads the totals back; each counter becomes max(local, total). So a replica enforces
//!   what all replicas did up to the last round: a budget or rate limit can be overshot
//!   by at most the requests in flight plus those finished on other replicas within one
//!   round. With Redis down (breaker open) each replica enforces its own counts; spend it
//!   could not send is sent when Redis is back.

use super::enforce::Counters;
use super::service::KeyService;
use crate::cache::redis::RedisStore;
use llmgw_core::config::LoadedConfig;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

/// How often a replica exchanges key usage and spend with Redis.
pub const SYNC_INTERVAL: Duration = Duration::from_millis(100);

/// Minute counters outlive their minute a little, for replicas whose clocks lag.
const MINUTE_TTL_MS: u64 = 120_000;

/// Starts the background tasks this configuration needs.
pub async fn spawn(svc: Arc<KeyService>, cfg: &LoadedConfig) -> anyhow::Result<()> {
    // Also for SQLite: during a renewal handover two generations share the file.
    {
        let every = cfg
            .config
            .store
            .poll_interval
            .0
            .max(Duration::from_millis(20));
        let me = Arc::downgrade(&svc);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(svc) = me.upgrade() else { return };
                match svc.store().version().await {
                    Ok(v) if v != svc.version() => {
                        if let Err(e) = svc.reload().await {
                            tracing::warn!(error = %e.message, "cannot reload keys after a change on another replica");
                        }
                    }
                    Ok(_) => {}
                    // The spend writer reports the outage; keys keep working from memory.
                    Err(_) => {}
                }
            }
        });
    }
    if let Some(url) = &cfg.redis_url {
        let redis = RedisStore::connect(url.expose(), cfg.config.cache.redis_timeout.0).await?;
        let ns = format!("{}:keys", cfg.config.cache.namespace);
        let me = Arc::downgrade(&svc);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(SYNC_INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            loop {
                tick.tick().await;
                let Some(svc) = me.upgrade() else { return };
                if redis.is_up() {
                    round(&svc, &redis, &ns).await;
                }
            }
        });
    }
    Ok(())
}

/// One limited key or team in a round.
struct Item {
    counters: Arc<Counters>,
    prefix: String,
    period: u64,
    period_ttl_ms: u64,
    budget: bool,
    deltas: (u64, u64, i64),
}

/// One exchange with Redis.
async fn round(svc: &KeyService, redis: &Arc<RedisStore>, ns: &str) {
    let now_ms = llmgw_router::now_ms();
    let now_s = now_ms / 1000;
    let minute = now_ms / 60_000;
    let table = svc.table();
    let mut items: Vec<Item> = Vec::new();
    let keys = table
        .by_id
        .values()
        .map(|e| ("k", &e.rec.id, &e.rec.limits, &e.counters));
    let teams = table
        .teams
        .values()
        .map(|t| ("t", &t.rec.id, &t.rec.limits, &t.counters));
    let users = table
        .users
        .values()
        .map(|u| ("u", &u.rec.id, &u.rec.limits, &u.counters));
    for (kind, id, l, c) in keys.chain(teams).chain(users) {
        if l.rpm.is_none() && l.tpm.is_none() && l.max_budget.is_none() {
            continue;
        }
        let (_, period, end) = l.period(now_s);
        let deltas = (
            c.unsent_requests.swap(0, Ordering::AcqRel),
            c.unsent_tokens.swap(0, Ordering::AcqRel),
            c.unsent_spend.swap(0, Ordering::AcqRel),
        );
        items.push(Item {
            counters: c.clone(),
            prefix: format!("{ns}:{kind}:{id}"),
            period,
            // A period's total is kept a while after it ends; an endless one 30 days
            // after its last change (every round refreshes it).
            period_ttl_ms: end.map_or(30 * 86_400_000, |e| {
                e.saturating_sub(now_s).saturating_mul(1000) + 3_600_000
            }),
            budget: l.max_budget.is_some(),
            deltas,
        });
    }
    if items.is_empty() {
        return;
    }
    let mut pipe = redis::pipe();
    let mut read: Vec<String> = Vec::with_capacity(items.len() * 3);
    for it in &items {
        let (reqs, toks, spend) = it.deltas;
        let rk = format!("{}:{minute}:req", it.prefix);
        let tk = format!("{}:{minute}:tok", it.prefix);
        let sk = format!("{}:spend:{}", it.prefix, it.period);
        for (k, d) in [(&rk, reqs), (&tk, toks)] {
            if d > 0 {
                pipe.cmd("INCRBY").arg(k).arg(d).ignore();
                pipe.cmd("PEXPIRE").arg(k).arg(MINUTE_TTL_MS).ignore();
            }
        }
        if it.budget {
            let known = it.counters.spend_in(it.period).saturating_sub(spend);
            pipe.cmd("SET")
                .arg(&sk)
                .arg(known.max(0))
                .arg("NX")
                .ignore();
            if spend != 0 {
                pipe.cmd("INCRBY").arg(&sk).arg(spend).ignore();
            }
            pipe.cmd("PEXPIRE").arg(&sk).arg(it.period_ttl_ms).ignore();
        }
        read.push(rk);
        read.push(tk);
        read.push(sk);
    }
    pipe.cmd("MGET").arg(&read);
    let result = redis
        .run(move |mut c| async move { pipe.query_async::<(Vec<Option<i64>>,)>(&mut c).await })
        .await;
    match result {
        Ok((totals,)) => {
            for (i, it) in items.iter().enumerate() {
                let get = |j: usize| totals.get(3 * i + j).copied().flatten().unwrap_or(0);
                it.counters.merge(
                    minute,
                    get(0).max(0) as u64,
                    get(1).max(0) as u64,
                    it.period,
                    if it.budget { get(2) } else { 0 },
                );
            }
        }
        Err(_) => {
            // Not sent (the breaker counts the error): spend is kept for the next round;
            // request and token counts matter only within their minute, which this
            // replica still enforces from its own counts.
            for it in &items {
                it.counters
                    .unsent_spend
                    .fetch_add(it.deltas.2, Ordering::AcqRel);
            }
        }
    }
}
