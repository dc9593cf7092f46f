//! The conditions the gateway raises alerts for, read every second from the state the
//! gateway keeps anyway (deployments' atomics, the keys' counters, the spend writer's and
//! Redis' health, the chain's counters): no request pays for them.
//!
//! A held condition (a deployment or group down, the store or Redis unreachable, a
//! renewal in trouble) raises when it starts and resolves once it has been over for
//! [`CLEAR_AFTER`] (so a flapping breaker does not become a flapping alert); a soft
//! budget crossed is raised once per key or team and budget period; dropped spend rows
//! whenever the count grows (the dispatcher counts repeats).

use crate::state::AppState;
use llmgw_core::alert::{raise, resolve, Event};
use llmgw_router::DeploymentState;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// How often conditions are read.
const POLL: Duration = Duration::from_secs(1);
/// How long a condition must be over before it is resolved.
pub const CLEAR_AFTER: Duration = Duration::from_secs(3);
/// Cooldowns within [`COOLING_WINDOW`] that count as "cooling repeatedly".
const COOLDOWNS: usize = 3;
const COOLING_WINDOW: Duration = Duration::from_secs(600);
/// A successor still pending with less than this left of the job's time limit.
const PENDING_NEAR_LIMIT_S: i64 = 600;

/// A held condition's alert state.
#[derive(Debug, Default)]
struct Level {
    firing: bool,
    clear_since: Option<Instant>,
}

impl Level {
    /// `bad` observed at `now`: Some(true) to raise, Some(false) to resolve.
    fn observe(&mut self, bad: bool, now: Instant) -> Option<bool> {
        if bad {
            self.clear_since = None;
            if !self.firing {
                self.firing = true;
                return Some(true);
            }
            return None;
        }
        if !self.firing {
            return None;
        }
        let since = *self.clear_since.get_or_insert(now);
        if now.saturating_duration_since(since) >= CLEAR_AFTER {
            self.firing = false;
            self.clear_since = None;
            return Some(false);
        }
        None
    }
}

/// What the watcher remembers between reads.
#[derive(Default)]
struct Watch {
    levels: HashMap<(Event, String), Level>,
    /// Per deployment: its cooldown count last read and when new ones were seen.
    cooldowns: HashMap<String, (u64, VecDeque<Instant>)>,
    /// Per key or team id: the period start its soft-budget alert was raised for.
    budgets: HashMap<String, u64>,
    dropped_rows: u64,
    renew_failures: u64,
}

impl Watch {
    fn level(&mut self, event: Event, subject: &str, bad: bool, now: Instant, message: String) {
        let l = self.levels.entry((event, subject.to_string())).or_default();
        match l.observe(bad, now) {
            Some(true) => raise(event, subject, message),
            Some(false) => resolve(event, subject, message),
            None => {}
        }
    }
}

/// Reads the conditions every [`POLL`] until `stop`.
pub fn spawn(state: Arc<AppState>, stop: CancellationToken) {
    tokio::spawn(async move {
        let mut w = Watch {
            renew_failures: llmgw_cluster::renew::counters::RENEW_FAILURES.load(Ordering::Relaxed),
            ..Watch::default()
        };
        let mut tick = tokio::time::interval(POLL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => check(&state, &mut w, Instant::now()),
            }
        }
    });
}

fn check(s: &AppState, w: &mut Watch, now: Instant) {
    // While starting (backends loading) deployments are unavailable by design.
    if s.ready.load(Ordering::Relaxed) {
        deployments(s, w, now);
    }
    stores(s, w, now);
    renewal(w, now);
    if let Some(keys) = &s.keys {
        soft_budgets(keys, w);
    }
}

fn deployments(s: &AppState, w: &mut Watch, now: Instant) {
    let mut groups: HashMap<&str, (usize, usize)> = HashMap::new();
    for d in s.router.deployments() {
        let state = d.state();
        let n = d.stats.cooldowns.load(Ordering::Relaxed);
        let (seen, marks) = w
            .cooldowns
            .entry(d.id.clone())
            .or_insert_with(|| (n, VecDeque::new()));
        for _ in 0..n.saturating_sub(*seen).min(COOLDOWNS as u64) {
            marks.push_back(now);
        }
        *seen = n;
        while marks
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) > COOLING_WINDOW)
        {
            marks.pop_front();
        }
        let repeatedly = marks.len() >= COOLDOWNS;
        let down = matches!(
            state,
            DeploymentState::Unreachable | DeploymentState::Unavailable
        );
        let why = match (&state, repeatedly) {
            (DeploymentState::Unreachable, _) => "cannot be reached".to_string(),
            (DeploymentState::Unavailable, _) => {
                "is unavailable (its backend is loading, restarting or failed)".to_string()
            }
            (_, true) => format!(
                "cooled down {} times within {} minutes",
                marks.len(),
                COOLING_WINDOW.as_secs() / 60
            ),
            _ => "is healthy again".to_string(),
        };
        w.level(
            Event::DeploymentDown,
            &d.id,
            down || repeatedly,
            now,
            format!("deployment {} of model group {} {why}", d.id, d.group),
        );
        let g = groups.entry(d.group.as_str()).or_default();
        g.0 += 1;
        g.1 += usize::from(state != DeploymentState::Healthy);
    }
    for (group, (all, unavailable)) in groups {
        let bad = all > 0 && unavailable == all;
        w.level(
            Event::GroupUnavailable,
            group,
            bad,
            now,
            if bad {
                format!("every deployment of model group {group} is down or cooling down: its requests fail (or go to its fallbacks)")
            } else {
                format!("model group {group} has an available deployment again")
            },
        );
    }
}

fn stores(s: &AppState, w: &mut Watch, now: Instant) {
    if let Some(keys) = &s.keys {
        let stats = &keys.spend.stats;
        let up = stats.store_up.load(Ordering::Relaxed);
        w.level(
            Event::StoreUnreachable,
            "store",
            !up,
            now,
            if up {
                "the key/spend store is reachable again; buffered spend rows are being written".into()
            } else {
                "the key/spend store cannot be written: spend rows are buffered (up to [store] buffer_rows)".into()
            },
        );
        let dropped = stats.dropped.load(Ordering::Relaxed);
        if dropped > w.dropped_rows {
            raise(
                Event::SpendRowsDropped,
                "spend rows",
                format!(
                    "{} spend rows dropped ({dropped} since start): the store was down longer than [store] buffer_rows holds",
                    dropped - w.dropped_rows
                ),
            );
            w.dropped_rows = dropped;
        }
    }
    if crate::cache::counters::redis_configured() {
        let open = crate::cache::counters::breaker_open();
        w.level(
            Event::StoreUnreachable,
            "redis",
            open,
            now,
            if open {
                "Redis is unreachable: the circuit breaker is open; requests are served without the shared cache and state".into()
            } else {
                "Redis is reachable again".into()
            },
        );
    }
}

fn renewal(w: &mut Watch, now: Instant) {
    use llmgw_cluster::renew::counters;
    let failures = counters::RENEW_FAILURES.load(Ordering::Relaxed);
    if failures > w.renew_failures {
        w.renew_failures = failures;
        raise(
            Event::RenewalFailed,
            "renewal",
            format!("a renewal failed ({failures} since this job started): the successor job could not be submitted or ended before it was ready"),
        );
    }
    let left = counters::SECONDS_LEFT.load(Ordering::Relaxed);
    // 1: a successor pending in the queue.
    let pending = counters::SUCCESSOR.load(Ordering::Relaxed) == 1;
    let bad = pending && (0..PENDING_NEAR_LIMIT_S).contains(&left);
    w.level(
        Event::RenewalFailed,
        "successor",
        bad,
        now,
        if bad {
            format!("the successor job is still pending with {left} s left before this job's time limit")
        } else {
            "the successor job is no longer pending near the time limit".into()
        },
    );
}

fn soft_budgets(keys: &crate::keys::KeyService, w: &mut Watch) {
    let t = keys.table.load();
    let now = crate::keys::now_s();
    let keys_iter = t.by_id.values().map(|k| {
        (
            "key",
            k.rec.id.as_str(),
            k.rec.name(),
            &k.rec.limits,
            &*k.counters,
        )
    });
    let teams_iter = t.teams.values().map(|e| {
        (
            "team",
            e.rec.id.as_str(),
            e.rec.name(),
            &e.rec.limits,
            &*e.counters,
        )
    });
    for (who, id, name, limits, counters) in keys_iter.chain(teams_iter) {
        let Some(soft) = limits.soft_budget else {
            continue;
        };
        let (_, start, _) = limits.period(now);
        let spent = crate::keys::nanos_to_usd(counters.spend_in(start));
        let id_key = format!("{who}:{id}");
        if spent < soft || w.budgets.get(&id_key) == Some(&start) {
            continue;
        }
        w.budgets.insert(id_key, start);
        let period = match limits.budget_duration {
            Some(_) => format!(" in the period from {}", llmgw_core::state::rfc3339(start)),
            None => String::new(),
        };
        raise(
            Event::SoftBudget,
            format!("{who} {name} period {start}"),
            format!("{who} {name} spent ${spent:.4}{period}, past its soft budget of ${soft:.4}"),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_level_raises_once_and_resolves_after_clear_after() {
        let mut l = Level::default();
        let t = Instant::now();
        assert_eq!(l.observe(true, t), Some(true));
        assert_eq!(l.observe(true, t), None);
        assert_eq!(l.observe(false, t), None);
        // Bad again before CLEAR_AFTER: still the same alert.
        assert_eq!(l.observe(true, t + Duration::from_secs(1)), None);
        assert_eq!(l.observe(false, t + Duration::from_secs(2)), None);
        assert_eq!(
            l.observe(false, t + CLEAR_AFTER + Duration::from_secs(2)),
            Some(false)
        );
        assert_eq!(l.observe(false, t + CLEAR_AFTER * 3), None);
    }
}
