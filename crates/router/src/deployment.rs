//! One deployment and its live state: in-flight count, per-minute usage, latency average,
//! failure window and cooldown. Everything on the request path is an atomic; the only
//! lock guards the failure window and is taken on failures, never on success.

use llmgw_core::config::{ErrorClass, ProviderKind};
use llmgw_wire::upstream::Upstream;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One upstream deployment of a model group: its static description as the wire formats
/// see it ([`Upstream`], reached through `Deref`, so `dep.model` reads as before) and the
/// router's live state around it.
pub struct Deployment {
    pub upstream: Upstream,
    /// Position of its `[[models]]` entry in the config.
    pub index: usize,
    pub timeout: Duration,
    pub weight: Option<f64>,
    pub rpm: Option<u64>,
    pub tpm: Option<u64>,
    pub max_parallel: Option<u32>,
    /// Cooldown for this deployment (else Retry-After, else the router's).
    pub cooldown: Option<Duration>,
    pub context_window: Option<u64>,
    /// USD per million tokens, input and output.
    pub input_cost: f64,
    pub output_cost: f64,
    /// What to do when it cannot be reached, added to that error (the built-in
    /// quickstart's: what to start on its port).
    pub unreachable_hint: Option<&'static str>,
    pub stats: DeploymentStats,
    /// Its latency and token histograms (`/metrics`).
    pub hist: Arc<crate::histograms::Series>,
    /// False while a supervised local backend is loading, restarting or has failed:
    /// the router sends it nothing.
    pub available: AtomicBool,
    pub health: HealthState,
    /// Its real queue, for a local backend (`router::load`).
    pub load: super::load::LoadState,
    /// What its backend likely has in its prefix cache (`prefix-aware` groups only).
    pub(crate) prefix: std::sync::OnceLock<super::prefix::PrefixIndex>,
}

/// The static description is part of a deployment: `dep.model`, `dep.provider`, and a
/// `&Deployment` where the wire formats take an `&Upstream`.
impl std::ops::Deref for Deployment {
    type Target = Upstream;
    fn deref(&self) -> &Upstream {
        &self.upstream
    }
}

/// Counters kept per deployment, lock-free.
#[derive(Default)]
pub struct DeploymentStats {
    pub in_flight: AtomicU64,
    pub requests: AtomicU64,
    pub failures: AtomicU64,
    /// Cooldowns started (not counting one extended while it lasted).
    pub cooldowns: AtomicU64,
}

/// Cooldown, failures, usage and latency of one deployment.
#[derive(Default)]
pub struct HealthState {
    /// Unix time in ms until which the deployment is cooling down; 0 = not cooling.
    cooling_until_ms: AtomicU64,
    /// Why it was cooled (set only when cooling starts).
    cooling_reason: Mutex<String>,
    /// Recent failures, for `allowed_fails` within the window.
    failures: Mutex<VecDeque<(Instant, ErrorClass)>>,
    /// The minute (unix time / 60) the usage counters belong to.
    minute: AtomicU64,
    minute_requests: AtomicU64,
    minute_tokens: AtomicU64,
    /// Moving average of latency in µs (time to first token for streams); 0 = no sample.
    latency_us: AtomicU64,
    /// The last attempt failed to connect (and nothing succeeded since).
    unreachable: AtomicBool,
    /// Shared state (several replicas, Redis): this minute's usage summed over all
    /// replicas as last read by `cache::shared`; counts only while `remote_minute` is the
    /// current minute. Written by the background sync task, never on the request path.
    remote_minute: AtomicU64,
    remote_requests: AtomicU64,
    remote_tokens: AtomicU64,
}

/// Wall-clock milliseconds for minute windows and cooldowns: coarse, see `llmgw_core::clock`.
pub fn now_ms() -> u64 {
    llmgw_core::clock::coarse_unix_ms()
}

/// What `/health` reports for one deployment.
#[derive(Debug, Clone, PartialEq)]
pub enum DeploymentState {
    Healthy,
    /// Cooling down until this unix time (ms), for this reason.
    Cooling {
        until_ms: u64,
        reason: String,
    },
    /// The last attempt could not connect.
    Unreachable,
    /// A supervised backend that is loading, restarting or failed.
    Unavailable,
}

impl Deployment {
    /// A deployment outside any router, for tests and benchmarks (`benches/translate.rs`):
    /// no key, no limits, `drop_params` off, a 60 s timeout and fresh live state. Set the
    /// public fields to change the rest. The server builds its deployments from the config
    /// in `Router::new`.
    pub fn standalone(kind: ProviderKind, model: &str, api_base: &str) -> Self {
        Deployment::new(Upstream::new(
            "dep-1",
            "group",
            kind,
            model,
            api_base,
            llmgw_wire::providers::for_kind(kind),
        ))
    }

    /// A deployment of `upstream` with no limits, a 60 s timeout and fresh live state.
    pub fn new(upstream: Upstream) -> Self {
        let hist = Arc::new(crate::histograms::Series::new(
            &upstream.group,
            &upstream.id,
        ));
        Deployment {
            upstream,
            index: 0,
            timeout: Duration::from_secs(60),
            weight: None,
            rpm: None,
            tpm: None,
            max_parallel: None,
            cooldown: None,
            context_window: None,
            input_cost: 0.0,
            output_cost: 0.0,
            unreachable_hint: None,
            stats: DeploymentStats::default(),
            hist,
            available: AtomicBool::new(true),
            health: HealthState::default(),
            load: Default::default(),
            prefix: std::sync::OnceLock::new(),
        }
    }

    /// Gives it a prefix index of about `chunks` keys (a `prefix-aware` group's).
    pub fn enable_prefix_index(&self, chunks: usize) {
        let _ = self
            .prefix
            .get_or_init(|| super::prefix::PrefixIndex::new(chunks));
    }

    /// Its prefix index, in a `prefix-aware` group.
    pub fn prefix_index(&self) -> Option<&super::prefix::PrefixIndex> {
        self.prefix.get()
    }

    /// True while cooling down.
    pub fn is_cooling(&self, now_ms: u64) -> bool {
        self.health.cooling_until_ms.load(Ordering::Relaxed) > now_ms
    }

    /// When the cooldown ends (unix ms), if cooling.
    pub fn cooling_until(&self, now_ms: u64) -> Option<u64> {
        let until = self.health.cooling_until_ms.load(Ordering::Relaxed);
        (until > now_ms).then_some(until)
    }

    pub fn state(&self) -> DeploymentState {
        let now = now_ms();
        if !self.available.load(Ordering::Relaxed) {
            DeploymentState::Unavailable
        } else if let Some(until_ms) = self.cooling_until(now) {
            let reason = self
                .health
                .cooling_reason
                .lock()
                .map(|r| r.clone())
                .unwrap_or_default();
            DeploymentState::Cooling { until_ms, reason }
        } else if self.health.unreachable.load(Ordering::Relaxed) {
            DeploymentState::Unreachable
        } else {
            DeploymentState::Healthy
        }
    }

    /// Starts (or extends) a cooldown; an existing later deadline is kept.
    pub fn cool_down(&self, for_: Duration, reason: String) {
        let until = llmgw_core::duration::add_ms(now_ms(), for_);
        let prev = self
            .health
            .cooling_until_ms
            .fetch_max(until, Ordering::SeqCst);
        if prev < until {
            if prev <= now_ms() {
                self.stats.cooldowns.fetch_add(1, Ordering::Relaxed);
            }
            if let Ok(mut r) = self.health.cooling_reason.lock() {
                *r = reason;
            }
            tracing::warn!(deployment = %self.id, cooldown_ms = for_.as_millis() as u64, reason = %llmgw_core::logging::Clean(&self.health.cooling_reason.lock().map(|r| r.clone()).unwrap_or_default()), "deployment cooling down");
        }
    }

    /// Records a failure; returns how many failures of `class` (and in all) are in the window.
    pub fn record_failure(&self, class: ErrorClass, window: Duration) -> (u32, u32) {
        self.stats.failures.fetch_add(1, Ordering::Relaxed);
        if class == ErrorClass::Connection {
            self.health.unreachable.store(true, Ordering::Relaxed);
        }
        let now = Instant::now();
        let Ok(mut q) = self.health.failures.lock() else {
            return (0, 0);
        };
        while q
            .front()
            .is_some_and(|(t, _)| now.duration_since(*t) > window)
        {
            q.pop_front();
        }
        q.push_back((now, class));
        if q.len() > 1024 {
            q.pop_front();
        }
        let same = q.iter().filter(|(_, c)| *c == class).count() as u32;
        (same, q.len() as u32)
    }

    /// Records a success and its latency (TTFT for streams).
    pub fn record_success(&self, latency: Duration) {
        self.health.unreachable.store(false, Ordering::Relaxed);
        let sample = latency.as_micros().max(1) as u64;
        let old = self.health.latency_us.load(Ordering::Relaxed);
        // Exponential moving average, weight 1/4 on the new sample.
        let new = if old == 0 {
            sample
        } else {
            (old * 3 + sample) / 4
        };
        self.health.latency_us.store(new, Ordering::Relaxed);
    }

    /// Penalises the latency average after a failure, so latency-based routing avoids it.
    pub fn record_slow(&self, latency: Duration) {
        let sample = latency.as_micros().max(1) as u64;
        let old = self.health.latency_us.load(Ordering::Relaxed);
        self.health
            .latency_us
            .store(old.max(sample), Ordering::Relaxed);
    }

    /// Moving average latency in µs (0 = no sample yet).
    pub fn latency_us(&self) -> u64 {
        self.health.latency_us.load(Ordering::Relaxed)
    }

    fn roll_minute(&self) {
        let minute = now_ms() / 60_000;
        let cur = self.health.minute.load(Ordering::Relaxed);
        if cur != minute
            && self
                .health
                .minute
                .compare_exchange(cur, minute, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
        {
            self.health.minute_requests.store(0, Ordering::Relaxed);
            self.health.minute_tokens.store(0, Ordering::Relaxed);
        }
    }

    /// Requests and tokens used this minute (with shared state: the larger of this
    /// replica's count and the sum over all replicas last read from Redis).
    pub fn usage(&self) -> (u64, u64) {
        self.roll_minute();
        let reqs = self.health.minute_requests.load(Ordering::Relaxed);
        let toks = self.health.minute_tokens.load(Ordering::Relaxed);
        if self.health.remote_minute.load(Ordering::Relaxed)
            == self.health.minute.load(Ordering::Relaxed)
        {
            (
                reqs.max(self.health.remote_requests.load(Ordering::Relaxed)),
                toks.max(self.health.remote_tokens.load(Ordering::Relaxed)),
            )
        } else {
            (reqs, toks)
        }
    }

    /// Shared state: this replica's own `(minute, requests, tokens)` counters.
    pub fn local_usage(&self) -> (u64, u64, u64) {
        self.roll_minute();
        (
            self.health.minute.load(Ordering::Relaxed),
            self.health.minute_requests.load(Ordering::Relaxed),
            self.health.minute_tokens.load(Ordering::Relaxed),
        )
    }

    /// Shared state: the cooldown deadline in unix ms (0 or past = not cooling).
    pub fn cooling_deadline_ms(&self) -> u64 {
        self.health.cooling_until_ms.load(Ordering::Relaxed)
    }

    /// Shared state: folds in what all replicas reported. The cooldown deadline becomes
    /// max(local, remote); `(minute, requests, tokens)` is the usage summed over replicas.
    pub fn merge_shared(&self, cooling_until_ms: u64, minute: u64, requests: u64, tokens: u64) {
        let prev = self
            .health
            .cooling_until_ms
            .fetch_max(cooling_until_ms, Ordering::SeqCst);
        if prev < cooling_until_ms && cooling_until_ms > now_ms() {
            if let Ok(mut r) = self.health.cooling_reason.lock() {
                *r = "cooled down by another gateway replica (shared state)".into();
            }
            tracing::info!(deployment = %self.id, until_ms = cooling_until_ms, "deployment cooling down (reported by another replica)");
        }
        self.health
            .remote_requests
            .store(requests, Ordering::Relaxed);
        self.health.remote_tokens.store(tokens, Ordering::Relaxed);
        self.health.remote_minute.store(minute, Ordering::Relaxed);
    }

    /// True when one more request of `tokens` fits the rpm/tpm/max_parallel limits.
    pub fn has_room(&self, tokens: u64) -> bool {
        self.has_rate_room(tokens)
            && self
                .max_parallel
                .is_none_or(|l| self.stats.in_flight.load(Ordering::Relaxed) < u64::from(l))
    }

    /// Room within rpm and tpm (a gated group's local deployments: the gate keeps their
    /// requests in flight within `max_parallel`, and holds the rest).
    pub fn has_rate_room(&self, tokens: u64) -> bool {
        let (reqs, toks) = self.usage();
        if self.rpm.is_some_and(|l| reqs >= l) {
            return false;
        }
        if self
            .tpm
            .is_some_and(|l| toks.saturating_add(tokens) > l && toks > 0)
        {
            return false;
        }
        true
    }

    /// Headroom left this minute as a fraction (1.0 = unused or unlimited).
    pub fn headroom(&self, tokens: u64) -> f64 {
        let (reqs, toks) = self.usage();
        let r = self.rpm.map_or(1.0, |l| {
            1.0 - reqs.saturating_add(1) as f64 / l.max(1) as f64
        });
        let t = self.tpm.map_or(1.0, |l| {
            1.0 - toks.saturating_add(tokens) as f64 / l.max(1) as f64
        });
        r.min(t)
    }

    /// Claims a request slot: counts it against rpm/max_parallel atomically. `None`
    /// when a limit would be exceeded (the claim is undone).
    pub(crate) fn claim(self: &Arc<Self>, tokens: u64) -> Option<InFlight> {
        self.roll_minute();
        let reqs = self.health.minute_requests.fetch_add(1, Ordering::AcqRel) + 1;
        if self.rpm.is_some_and(|l| reqs > l) {
            self.health.minute_requests.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        let in_flight = self.stats.in_flight.fetch_add(1, Ordering::AcqRel) + 1;
        if self.max_parallel.is_some_and(|l| in_flight > u64::from(l)) {
            self.stats.in_flight.fetch_sub(1, Ordering::AcqRel);
            self.health.minute_requests.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        self.health
            .minute_tokens
            .fetch_add(tokens, Ordering::Relaxed);
        self.stats.requests.fetch_add(1, Ordering::Relaxed);
        Some(InFlight(self.clone(), None))
    }

    /// Adds tokens reported by the upstream (usage) to this minute's count.
    pub fn add_tokens(&self, tokens: u64) {
        // The count comes from the upstream: saturate rather than wrap to nothing.
        let _ = self
            .health
            .minute_tokens
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |t| {
                Some(t.saturating_add(tokens))
            });
    }

    /// Sum of input and output price per million tokens (0 when unpriced, e.g. local).
    pub fn price(&self) -> f64 {
        self.input_cost + self.output_cost
    }
}

/// A claimed slot on a deployment, with its place at the group's gate when it went
/// through one (`fair.rs`); both released when dropped (for streams: when the stream ends).
pub struct InFlight(
    pub(crate) Arc<Deployment>,
    pub(crate) Option<super::fair::Permit>,
);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.stats.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}
