//! Each local backend's real load, read off the request path, and what routing does with
//! it: the `load-based` strategy (shortest queue) and local-first spillover.
//!
//! A background [`Poller`] asks every local deployment (a launched backend, or any
//! SGLang server) for its queue every 250 ms: SGLang's `GET /v1/loads` (0.5 and later; per
//! data-parallel rank `num_running_reqs`, `num_waiting_reqs`, `num_used_tokens` and the
//! scheduler's `max_running_requests`, which bounds the gateway's queue limit), else its
//! older `GET /get_load` (`num_reqs` running and waiting, `num_waiting_reqs`,
//! `num_tokens`), else its Prometheus `/metrics` (`sglang:num_running_reqs`,
//! `sglang:num_queue_reqs`, `sglang:num_used_tokens`). `tests/sglang_compat.rs` checks
//! these names against the pinned SGLang release's source. The numbers land in the
//! deployment's atomics; the request path only reads them. Between two polls the
//! gateway's own in-flight count says what changed (requests it sent or saw finish since),
//! so a burst does not all land on the replica that was idle 200 ms ago.
//!
//! Local first ([`Spillover`], `[router] spillover`): a group's local deployments take
//! its traffic until every one of them is full — `queue` requests waiting, or a new
//! request would wait `wait` (waiting × latency / running) — and only then does a
//! request go to the group's other deployments (cloud APIs), or, for a group with none,
//! to its fallbacks. The GPUs a group holds are already paid for; the cloud is not.

use super::deployment::Deployment;
use llmgw_core::config::SpilloverConfig;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How often each local deployment is asked for its load.
pub const POLL_EVERY: Duration = Duration::from_millis(250);
/// A reading older than this is not used (the backend stopped answering).
const STALE_MS: u64 = 2_000;
/// One poll's time limit.
const POLL_TIMEOUT: Duration = Duration::from_secs(1);
/// Largest load answer read (`/metrics` of a busy server is a few tens of KiB).
const MAX_BODY: usize = 1024 * 1024;

/// Where a deployment's load is read from.
const SOURCE_UNKNOWN: u8 = 0;
const SOURCE_GET_LOAD: u8 = 1;
const SOURCE_METRICS: u8 = 2;
const SOURCE_V1_LOADS: u8 = 3;

/// A deployment's last load reading (atomics: written by the poller, read by routing).
#[derive(Debug, Default)]
pub struct LoadState {
    /// The job's own backend (launched here, or an SGLang server): polled, and first in
    /// line under local-first routing.
    local: bool,
    running: AtomicU64,
    waiting: AtomicU64,
    tokens: AtomicU64,
    /// The gateway's in-flight count to it when the reading arrived.
    in_flight_then: AtomicU64,
    /// Unix ms of the reading; 0 = none yet.
    read_ms: AtomicU64,
    source: AtomicU8,
    /// Requests it runs at once, for the gateway's queue (`fair.rs`): its `max_parallel`,
    /// else learned from its readings; 0 = not known yet (nothing is held for it).
    limit: AtomicU64,
    /// The limit was configured, not learned.
    fixed_limit: std::sync::atomic::AtomicBool,
    /// Readings in a row that showed no backend queue while the gateway held its limit.
    calm: AtomicU8,
    /// What it ran the last time it had requests waiting (its real capacity then).
    full_at: AtomicU64,
    /// The backend's own bound, when it reports one (0: none).
    max_limit: AtomicU64,
}

/// Largest learned limit.
const MAX_LIMIT: u64 = 4096;
/// Readings in a row without a backend queue, at the limit, before the limit grows.
const GROW_AFTER: u8 = 4;

/// A deployment's queue as routing sees it now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Queue {
    pub running: u64,
    pub waiting: u64,
    /// KV-cache tokens in use (0 when unknown).
    pub tokens: u64,
    /// From a recent reading (else from the gateway's own in-flight count).
    pub polled: bool,
}

impl LoadState {
    pub fn new(local: bool) -> Self {
        LoadState {
            local,
            ..Default::default()
        }
    }

    pub fn is_local(&self) -> bool {
        self.local
    }

    /// Requests it runs at once (0: not known yet).
    pub fn limit(&self) -> u64 {
        self.limit.load(Ordering::Relaxed)
    }

    /// A configured limit (`max_parallel`): never learned over.
    pub fn set_limit(&self, n: u64) {
        self.limit.store(n.min(MAX_LIMIT), Ordering::Relaxed);
        self.fixed_limit.store(true, Ordering::Relaxed);
    }

    /// The backend's own bound on requests it runs (SGLang's `max_running_requests`):
    /// the limit starts there when none is known, and is never learned past it.
    fn cap_limit(&self, max: u64) {
        if max == 0 || self.fixed_limit.load(Ordering::Relaxed) {
            return;
        }
        let max = max.min(MAX_LIMIT);
        self.max_limit.store(max, Ordering::Relaxed);
        let _ = self
            .limit
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |l| {
                (l == 0 || l > max).then_some(max)
            });
    }

    /// Learns the limit from a reading: a backend with requests waiting runs all it can
    /// (its running count is its limit); one that has none while the gateway keeps it at
    /// its limit may run more, so the limit grows by a quarter after a few such readings.
    fn learn_limit(&self, running: u64, waiting: u64, in_flight: u64) {
        if self.fixed_limit.load(Ordering::Relaxed) {
            return;
        }
        let limit = self.limit.load(Ordering::Relaxed);
        if waiting > 0 {
            let n = running.clamp(1, MAX_LIMIT);
            self.limit.store(n, Ordering::Relaxed);
            self.full_at.store(n, Ordering::Relaxed);
            self.calm.store(0, Ordering::Relaxed);
        } else if limit == 0 {
            // Not full yet: nothing to hold until it is.
        } else if in_flight >= limit {
            let calm = self.calm.load(Ordering::Relaxed).saturating_add(1);
            // Past the capacity it showed last time it was full, probe rarely (each probe
            // can queue a quarter more in the backend).
            let after = if limit >= self.full_at.load(Ordering::Relaxed) {
                GROW_AFTER.saturating_mul(10)
            } else {
                GROW_AFTER
            };
            if calm >= after {
                let bound = match self.max_limit.load(Ordering::Relaxed) {
                    0 => MAX_LIMIT,
                    m => m,
                };
                let grown = limit.saturating_add((limit / 4).max(1)).min(bound);
                self.limit.store(grown, Ordering::Relaxed);
                self.calm.store(0, Ordering::Relaxed);
            } else {
                self.calm.store(calm, Ordering::Relaxed);
            }
        } else {
            self.calm.store(0, Ordering::Relaxed);
        }
    }

    fn record(&self, running: u64, waiting: u64, tokens: u64, in_flight: u64) {
        self.learn_limit(running, waiting, in_flight);
        self.running.store(running, Ordering::Relaxed);
        self.waiting.store(waiting, Ordering::Relaxed);
        self.tokens.store(tokens, Ordering::Relaxed);
        self.in_flight_then.store(in_flight, Ordering::Relaxed);
        self.read_ms.store(super::now_ms(), Ordering::Relaxed);
    }

    /// The queue now: the last reading, moved by what the gateway sent (or saw finish)
    /// since; without a recent reading, the gateway's own in-flight requests.
    pub fn queue(&self, in_flight: u64) -> Queue {
        let read = self.read_ms.load(Ordering::Relaxed);
        if read == 0 || super::now_ms().saturating_sub(read) > STALE_MS {
            return Queue {
                running: in_flight,
                waiting: 0,
                tokens: 0,
                polled: false,
            };
        }
        let running = self.running.load(Ordering::Relaxed);
        let waiting = self.waiting.load(Ordering::Relaxed);
        let delta = in_flight as i64 - self.in_flight_then.load(Ordering::Relaxed) as i64;
        let moved = |n: u64| (n as i64).saturating_add(delta).max(0) as u64;
        // A backend that was queueing queues what comes next; one that was not, runs it.
        let (running, waiting) = if waiting > 0 {
            (running, moved(waiting))
        } else {
            (moved(running), 0)
        };
        Queue {
            running,
            waiting,
            tokens: self.tokens.load(Ordering::Relaxed),
            polled: true,
        }
    }
}

impl Deployment {
    /// Its queue now (see [`LoadState::queue`]).
    pub fn queue(&self) -> Queue {
        self.load
            .queue(self.stats.in_flight.load(Ordering::Relaxed))
    }
}

/// What `load-based` compares: requests running and waiting.
pub(crate) fn queue_len(d: &Deployment) -> f64 {
    let q = d.queue();
    (q.running + q.waiting) as f64
}

/// `[router] spillover`, resolved.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Spillover {
    queue: Option<u64>,
    wait: Option<Duration>,
}

impl Spillover {
    pub fn from_config(c: &SpilloverConfig) -> Self {
        Spillover {
            queue: c.queue,
            wait: c.wait.map(|w| w.0),
        }
    }

    /// True when a new request would wait too long on `d`.
    pub fn full(&self, d: &Deployment) -> bool {
        let q = d.queue();
        if self.queue.is_some_and(|max| q.waiting >= max) {
            return true;
        }
        match self.wait {
            Some(max) if q.waiting > 0 => {
                let per = d.latency_us().saturating_mul(q.waiting) / q.running.max(1);
                Duration::from_micros(per) >= max
            }
            _ => false,
        }
    }

    /// Of `candidates`, those a request should go to: the local ones that are not full
    /// while there are any; else the others, and `true` (it spilled over). Unchanged when
    /// there is nothing to choose between.
    pub fn local_first<'a>(
        &self,
        candidates: Vec<&'a Arc<Deployment>>,
    ) -> (Vec<&'a Arc<Deployment>>, bool) {
        let (local, other): (Vec<&Arc<Deployment>>, Vec<&Arc<Deployment>>) =
            candidates.iter().partition(|d| d.load.is_local());
        if local.is_empty() {
            return (candidates, false);
        }
        let open: Vec<&Arc<Deployment>> = local.iter().copied().filter(|d| !self.full(d)).collect();
        if !open.is_empty() {
            return (open, false);
        }
        if other.is_empty() {
            return (candidates, false);
        }
        (other, true)
    }

    /// True when a group's gate (`fair.rs`) holds so many that a new request would wait
    /// too long there: `queue` waiters, or about `wait` (waiters × latency / capacity).
    /// With a gate, the backends' own queues stay short; this is where requests wait.
    pub fn gate_full(&self, g: &super::fair::Gate) -> bool {
        let v = g.view();
        if v.waiting == 0 {
            return false;
        }
        if self.queue.is_some_and(|max| v.waiting >= max) {
            return true;
        }
        match (self.wait, v.capacity) {
            (Some(max), Some(cap)) => {
                let per = g.latency_us().saturating_mul(v.waiting) / cap.max(1);
                Duration::from_micros(per) >= max
            }
            _ => false,
        }
    }

    /// True when every available local deployment of a group is full (and there is one).
    pub fn all_full(&self, group: &[Arc<Deployment>]) -> bool {
        let mut any = false;
        for d in group
            .iter()
            .filter(|d| d.load.is_local() && d.available.load(Ordering::Relaxed))
        {
            if !self.full(d) {
                return false;
            }
            any = true;
        }
        any
    }
}

/// Requests a group sent past its full local deployments.
#[derive(Debug, Default)]
pub struct SpillCounts {
    /// …to its other (cloud) deployments.
    pub cloud: AtomicU64,
    /// …to its fallback groups.
    pub fallback: AtomicU64,
}

/// Polls the local deployments' load until `stop`.
pub struct Poller;

impl Poller {
    /// Starts polling `deployments` (the local ones among them) in the background.
    /// `gates` are let through after every round, as the learned limits may have grown.
    pub fn spawn(
        deployments: Vec<Arc<Deployment>>,
        gates: Vec<Arc<super::fair::Gate>>,
        stop: CancellationToken,
    ) {
        let local: Vec<Arc<Deployment>> = deployments
            .into_iter()
            .filter(|d| d.load.is_local())
            .collect();
        if local.is_empty() {
            return;
        }
        let client = match reqwest::Client::builder()
            .timeout(POLL_TIMEOUT)
            .connect_timeout(POLL_TIMEOUT)
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .build()
        {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "cannot build the load poller's HTTP client; routing goes by the gateway's own counts");
                return;
            }
        };
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(POLL_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tick.tick() => {}
                }
                let polls = local
                    .iter()
                    .filter(|d| d.available.load(Ordering::Relaxed))
                    .map(|d| poll(&client, d));
                futures_util::future::join_all(polls).await;
                for g in &gates {
                    g.pump();
                }
            }
        });
    }
}

/// One reading of `d`'s load, stored in its atomics: SGLang's `/v1/loads` (0.5 and later),
/// else its older `/get_load`, else its Prometheus `/metrics`; the first that answers is
/// kept for this deployment.
async fn poll(client: &reqwest::Client, d: &Deployment) {
    let origin = d.api_base.strip_suffix("/v1").unwrap_or(&d.api_base);
    let in_flight = || d.stats.in_flight.load(Ordering::Relaxed);
    let source = d.load.source.load(Ordering::Relaxed);
    if source == SOURCE_UNKNOWN || source == SOURCE_V1_LOADS {
        match fetch(client, d, &format!("{origin}/v1/loads?include=core")).await {
            Fetched::Body(b) => {
                if let Some(l) = parse_v1_loads(&b) {
                    d.load.source.store(SOURCE_V1_LOADS, Ordering::Relaxed);
                    d.load.cap_limit(l.max_running);
                    d.load.record(l.running, l.waiting, l.tokens, in_flight());
                }
                return;
            }
            Fetched::Missing if source == SOURCE_UNKNOWN => {}
            _ => return,
        }
    }
    if source != SOURCE_METRICS {
        match fetch(client, d, &format!("{origin}/get_load")).await {
            Fetched::Body(b) => {
                if let Some((r, w, t)) = parse_get_load(&b) {
                    d.load.source.store(SOURCE_GET_LOAD, Ordering::Relaxed);
                    d.load.record(r, w, t, in_flight());
                }
                return;
            }
            Fetched::Missing if source == SOURCE_UNKNOWN => {}
            _ => return,
        }
    }
    if let Fetched::Body(b) = fetch(client, d, &format!("{origin}/metrics")).await {
        if let Some((r, w, t)) = parse_metrics(&String::from_utf8_lossy(&b)) {
            d.load.source.store(SOURCE_METRICS, Ordering::Relaxed);
            d.load.record(r, w, t, in_flight());
        }
    }
}

/// A `/v1/loads` reading, summed over data-parallel ranks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Loads {
    pub running: u64,
    pub waiting: u64,
    pub tokens: u64,
    /// The scheduler's `max_running_requests` (0 when not reported).
    pub max_running: u64,
}

/// SGLang's `/v1/loads`: `{"loads": [{"num_running_reqs", "num_waiting_reqs",
/// "num_used_tokens", "max_running_requests", …} per data-parallel rank]}`; summed.
pub(crate) fn parse_v1_loads(body: &[u8]) -> Option<Loads> {
    #[derive(serde::Deserialize)]
    struct Rank {
        #[serde(default)]
        num_running_reqs: f64,
        #[serde(default)]
        num_waiting_reqs: f64,
        #[serde(default)]
        num_used_tokens: f64,
        #[serde(default)]
        max_running_requests: f64,
    }
    #[derive(serde::Deserialize)]
    struct All {
        loads: Vec<Rank>,
    }
    let all: All = serde_json::from_slice(body).ok()?;
    let mut out = Loads {
        running: 0,
        waiting: 0,
        tokens: 0,
        max_running: 0,
    };
    for r in all.loads.iter().take(1024) {
        out.running = out.running.saturating_add(count(r.num_running_reqs));
        out.waiting = out.waiting.saturating_add(count(r.num_waiting_reqs));
        out.tokens = out.tokens.saturating_add(count(r.num_used_tokens));
        out.max_running = out
            .max_running
            .saturating_add(count(r.max_running_requests));
    }
    Some(out)
}

/// A count from a backend's JSON: finite, ≥ 0, at most 10^12 (hostile numbers neither
/// wrap nor panic).
fn count(v: f64) -> u64 {
    if v.is_finite() && v > 0.0 {
        v.min(1e12) as u64
    } else {
        0
    }
}

enum Fetched {
    Body(bytes::Bytes),
    /// 404: the server has no such endpoint.
    Missing,
    Failed,
}

async fn fetch(client: &reqwest::Client, d: &Deployment, url: &str) -> Fetched {
    let mut req = client.get(url);
    if let Some(k) = &d.api_key {
        req = req.bearer_auth(k.expose());
    }
    let Ok(mut resp) = req.send().await else {
        return Fetched::Failed;
    };
    if resp.status() == reqwest::StatusCode::NOT_FOUND {
        return Fetched::Missing;
    }
    if !resp.status().is_success() {
        return Fetched::Failed;
    }
    let mut body = bytes::BytesMut::new();
    while let Ok(Some(chunk)) = resp.chunk().await {
        if body.len() + chunk.len() > MAX_BODY {
            return Fetched::Failed;
        }
        body.extend_from_slice(&chunk);
    }
    Fetched::Body(body.freeze())
}

/// SGLang's `/get_load`: a list (one per data-parallel rank) or one object, with
/// `num_reqs` (running and waiting), `num_waiting_reqs` and `num_tokens`; summed.
/// Returns (running, waiting, tokens).
pub(crate) fn parse_get_load(body: &[u8]) -> Option<(u64, u64, u64)> {
    #[derive(serde::Deserialize)]
    struct Rank {
        #[serde(default)]
        num_reqs: f64,
        #[serde(default)]
        num_waiting_reqs: f64,
        #[serde(default)]
        num_tokens: f64,
    }
    #[derive(serde::Deserialize)]
    #[serde(untagged)]
    enum Load {
        Ranks(Vec<Rank>),
        One(Rank),
    }
    let ranks = match serde_json::from_slice::<Load>(body).ok()? {
        Load::Ranks(r) => r,
        Load::One(r) => vec![r],
    };
    let (mut all, mut waiting, mut tokens) = (0u64, 0u64, 0u64);
    for r in ranks.iter().take(1024) {
        all = all.saturating_add(count(r.num_reqs));
        waiting = waiting.saturating_add(count(r.num_waiting_reqs));
        tokens = tokens.saturating_add(count(r.num_tokens));
    }
    Some((all.saturating_sub(waiting), waiting, tokens))
}

/// SGLang's Prometheus `/metrics`: `sglang:num_running_reqs`, `sglang:num_queue_reqs`,
/// `sglang:num_used_tokens`, summed over label sets. `None` when neither queue is there.
pub(crate) fn parse_metrics(text: &str) -> Option<(u64, u64, u64)> {
    let (mut running, mut waiting, mut tokens) = (None, None, 0u64);
    for line in text.lines().take(100_000) {
        if line.starts_with('#') {
            continue;
        }
        let Some((name, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let name = name.split('{').next().unwrap_or("").trim();
        let Ok(v) = value.trim().parse::<f64>() else {
            continue;
        };
        let v = if v.is_finite() && v > 0.0 {
            v.min(1e12) as u64
        } else {
            0
        };
        let add = |slot: &mut Option<u64>| *slot = Some(slot.unwrap_or(0).saturating_add(v));
        match name {
            "sglang:num_running_reqs" => add(&mut running),
            "sglang:num_queue_reqs" => add(&mut waiting),
            "sglang:num_used_tokens" => tokens = tokens.saturating_add(v),
            _ => {}
        }
    }
    if running.is_none() && waiting.is_none() {
        return None;
    }
    Some((running.unwrap_or(0), waiting.unwrap_or(0), tokens))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1_loads_are_summed_over_ranks() {
        // The shape of SGLang 0.5's /v1/loads (LoadSnapshot.to_dict per rank).
        let body = br#"{"timestamp":"2026-12-07T00:00:00Z","version":"0.5.23","accelerator":null,"num_accelerators":1,"loads":[{"dp_rank":0,"num_running_reqs":4,"num_waiting_reqs":2,"num_used_tokens":900,"max_running_requests":48,"token_usage":0.1},{"dp_rank":1,"num_running_reqs":1,"num_waiting_reqs":0,"num_used_tokens":100,"max_running_requests":48}]}"#;
        assert_eq!(
            parse_v1_loads(body),
            Some(Loads {
                running: 5,
                waiting: 2,
                tokens: 1000,
                max_running: 96
            })
        );
        assert_eq!(parse_v1_loads(b"[]"), None);
        let s = LoadState::new(true);
        s.cap_limit(96);
        assert_eq!(
            s.limit(),
            96,
            "the backend's bound is where the limit starts"
        );
        s.learn_limit(10, 3, 13);
        assert_eq!(s.limit(), 10, "full at 10: its real capacity now");
        s.cap_limit(8);
        assert_eq!(s.limit(), 8, "never past the backend's own bound");
    }

    #[test]
    fn get_load_is_summed_over_ranks() {
        let body = br#"[{"dp_rank":0,"num_reqs":5,"num_waiting_reqs":2,"num_tokens":900},{"dp_rank":1,"num_reqs":1,"num_waiting_reqs":0,"num_tokens":100}]"#;
        assert_eq!(parse_get_load(body), Some((4, 2, 1000)));
        assert_eq!(parse_get_load(br#"{"num_reqs":3}"#), Some((3, 0, 0)));
        assert_eq!(parse_get_load(b"<html>"), None);
        // Hostile numbers neither wrap nor panic.
        assert_eq!(
            parse_get_load(br#"[{"num_reqs":-4,"num_waiting_reqs":1e300}]"#),
            Some((0, 1_000_000_000_000, 0))
        );
    }

    #[test]
    fn metrics_text_is_read() {
        let text = "# HELP sglang:num_running_reqs x\nsglang:num_running_reqs{model_name=\"q\"} 3.0\nsglang:num_queue_reqs{model_name=\"q\"} 7.0\nsglang:num_used_tokens{model_name=\"q\"} 1234.0\nother 9\n";
        assert_eq!(parse_metrics(text), Some((3, 7, 1234)));
        assert_eq!(parse_metrics("nothing 1\n"), None);
    }

    #[test]
    fn queue_follows_the_gateways_own_count_between_readings() {
        let l = LoadState::new(true);
        // No reading yet: the gateway's in-flight count.
        assert_eq!(l.queue(3).running, 3);
        // Idle backend at the reading; four sent since: they run.
        l.record(0, 0, 0, 0);
        assert_eq!(
            l.queue(4),
            Queue {
                running: 4,
                waiting: 0,
                tokens: 0,
                polled: true
            }
        );
        // A queueing backend queues what comes next; finished requests shorten it.
        l.record(2, 3, 50, 5);
        assert_eq!(l.queue(7).waiting, 5);
        assert_eq!(l.queue(1).waiting, 0);
    }
}
