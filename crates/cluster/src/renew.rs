//! The gateway's side of a chain of jobs (see `slurm::chain` for the record): renewal
//! before the time limit and the handover to the successor.
//!
//! A gateway running as a SLURM job with a state directory is a [`Member`] of its chain.
//! Once ready it *publishes* itself (under the chain lock: `endpoint.json` and `job.json`
//! name it, `chain.json` marks it current) unless `stop` or a newer generation got there
//! first. Then [`Member::watch`] runs until the process ends:
//!
//! - every few seconds it reads its real time left from SLURM (so `scontrol update
//!   TimeLimit=` is honoured); `renew_before` ahead of the end it submits its successor
//!   (the same script, state directory and key; generation N+1), at most one at a time,
//!   and reports a pending successor's SLURM reason in its log and metrics;
//! - every 250 ms it looks at `endpoint.json`: when a newer generation has published
//!   itself, it hands over — the gateway's relay ([`Forwarding`]) sends every request that
//!   still reaches this address to the successor (bytes through, streams included), the requests already
//!   running here finish, the backends stop, and after a quiet spell (or `handover_linger`)
//!   the process drains and exits 0, well before its time limit;
//! - without a successor it drains by itself [`chain::exit_margin`] before the limit, so
//!   the job ends COMPLETED rather than TIMEOUT.
//!
//! Forwarding itself is the gateway's (`llmgw_gateway::relay`, an axum middleware
//! installed only for chain members); this side says when and where.

use crate::slurm::chain::{self, Chain, ChainJob, RenewPolicy, Why};
use crate::slurm::jobs;
use crate::slurm::JobRecord;
use crate::supervise::Backends;
use llmgw_core::state::{self, EndpointRecord};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// How often `endpoint.json` is checked for a newer generation.
const TICK: Duration = Duration::from_millis(250);
/// How often SLURM is asked for the time left and the successor's state.
const QUERY_EVERY: Duration = Duration::from_secs(10);
/// After a successor failed, wait this long before submitting another.
const RETRY_AFTER: Duration = Duration::from_secs(60);
/// After a handover: leave once no request has arrived for this long.
const QUIET: Duration = Duration::from_secs(5);

/// The gateway's live chain figures for `/metrics`.
pub mod counters {
    use std::sync::atomic::{AtomicI64, AtomicU64};
    pub static GENERATION: AtomicU64 = AtomicU64::new(0);
    /// Seconds left of the time limit; -1 when unknown.
    pub static SECONDS_LEFT: AtomicI64 = AtomicI64::new(-1);
    pub static RENEWALS: AtomicU64 = AtomicU64::new(0);
    pub static RENEW_FAILURES: AtomicU64 = AtomicU64::new(0);
    /// 0 none, 1 pending, 2 running (loading), 3 ready.
    pub static SUCCESSOR: AtomicU64 = AtomicU64::new(0);
    pub static HANDOVERS: AtomicU64 = AtomicU64::new(0);
    pub static HANDING_OVER: AtomicU64 = AtomicU64::new(0);
    pub static FORWARDED: AtomicU64 = AtomicU64::new(0);
    pub static FORWARD_ERRORS: AtomicU64 = AtomicU64::new(0);
}

/// The chain's metrics in Prometheus text format (append to `/metrics`).
pub fn metrics_text() -> String {
    use std::fmt::Write as _;
    use std::sync::atomic::Ordering::Relaxed;
    let mut out = String::with_capacity(1024);
    let mut family = |name: &str, kind: &str, help: &str, value: String| {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
        );
    };
    family(
        "llmgw_chain_generation",
        "gauge",
        "This job's generation in the gateway's chain of jobs (0 outside SLURM)",
        counters::GENERATION.load(Relaxed).to_string(),
    );
    family(
        "llmgw_job_seconds_left",
        "gauge",
        "Seconds until this job's time limit (-1 unknown)",
        counters::SECONDS_LEFT.load(Relaxed).to_string(),
    );
    family(
        "llmgw_renewals_total",
        "counter",
        "Successor jobs this job submitted",
        counters::RENEWALS.load(Relaxed).to_string(),
    );
    family(
        "llmgw_renewal_failures_total",
        "counter",
        "Successor submissions that failed, or successors that ended before they were ready",
        counters::RENEW_FAILURES.load(Relaxed).to_string(),
    );
    family(
        "llmgw_successor_state",
        "gauge",
        "0 no successor, 1 pending in the queue, 2 running (loading), 3 ready",
        counters::SUCCESSOR.load(Relaxed).to_string(),
    );
    family(
        "llmgw_handovers_total",
        "counter",
        "Handovers this job made to a successor",
        counters::HANDOVERS.load(Relaxed).to_string(),
    );
    family(
        "llmgw_handover_in_progress",
        "gauge",
        "1 while this job forwards to its successor and drains",
        counters::HANDING_OVER.load(Relaxed).to_string(),
    );
    family(
        "llmgw_handover_forwarded_requests_total",
        "counter",
        "Requests that reached this job after the handover and were forwarded",
        counters::FORWARDED.load(Relaxed).to_string(),
    );
    family(
        "llmgw_handover_forward_errors_total",
        "counter",
        "Forwarded requests the successor could not be reached for",
        counters::FORWARD_ERRORS.load(Relaxed).to_string(),
    );
    out
}

/// Backends the handover stops before the process ends; `serve` stops what is left.
/// What the chain needs of the gateway's forwarding (its renewal relay) at a handover.
pub trait Forwarding: Send + Sync {
    /// From now on, every new request goes to `base` (the successor, job `job_id`).
    fn forward_to(&self, base: String, job_id: &str);
    /// This job's own requests still running (response bodies not yet finished).
    fn local_in_flight(&self) -> u64;
    /// Requests being forwarded right now.
    fn forwarding(&self) -> u64;
    /// Requests forwarded so far.
    fn forwarded(&self) -> u64;
    /// Unix ms of the last request that reached this job after the handover.
    fn last_forward_ms(&self) -> u64;
}

pub type SharedBackends = Arc<tokio::sync::Mutex<Option<Backends>>>;

/// What the handover measured, for `chain.json`.
#[derive(Debug, Clone)]
struct HandoverFacts {
    to_job: String,
    to_generation: u64,
    ready_ms: u64,
    noticed_ms: u64,
    drained_ms: u64,
}

/// This job in its chain.
pub struct Member {
    dir: PathBuf,
    job_id: String,
    generation: u64,
    predecessor: Option<String>,
    policy: Option<RenewPolicy>,
    grace: Duration,
    /// Estimated end of the job (from SLURM's time left).
    end: Mutex<Option<Instant>>,
    /// How this job ended, for the chain record.
    how: Mutex<String>,
    handover: Mutex<Option<HandoverFacts>>,
}

/// Why this job did not become current.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    #[error("the gateway is being stopped (`llmgw stop`)")]
    Stopping,
    #[error("generation {0} is already current")]
    Superseded(u64),
    #[error("this job was retired before it was ready ({0})")]
    Retired(String),
    #[error(transparent)]
    Chain(#[from] chain::ChainError),
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl Member {
    /// `Some` when this process is a SLURM job with a state directory. Its generation
    /// comes from the chain record (the submitter writes it under the lock before this
    /// job can read it), else from the environment the submitter set, else 1.
    pub fn join(
        state_dir: Option<&Path>,
        slurm: &llmgw_core::config::SlurmConfig,
        grace: Duration,
    ) -> Option<Member> {
        let dir = state_dir?;
        let job_id = std::env::var("SLURM_JOB_ID")
            .ok()
            .filter(|j| !j.trim().is_empty())?;
        let dir = std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf());
        let recorded = chain::lock(&dir)
            .ok()
            .and_then(|_lock| Chain::read(&dir).ok().flatten())
            .and_then(|c| c.job(&job_id).cloned());
        let env_gen = std::env::var(chain::ENV_GENERATION)
            .ok()
            .and_then(|g| g.parse::<u64>().ok());
        let env_pred = std::env::var(chain::ENV_PREDECESSOR)
            .ok()
            .filter(|p| !p.is_empty());
        let (generation, predecessor) = match recorded {
            Some(j) => (j.generation, j.predecessor),
            None => (env_gen.unwrap_or(1), env_pred),
        };
        counters::GENERATION.store(generation, Ordering::Relaxed);
        Some(Member {
            dir,
            job_id,
            generation,
            predecessor,
            policy: RenewPolicy::from_config(slurm),
            grace,
            end: Mutex::new(None),
            how: Mutex::new("stopped".into()),
            handover: Mutex::new(None),
        })
    }

    /// How this job ends, for the chain record (the last word wins).
    pub fn note_end(&self, how: String) {
        *self.how.lock().unwrap_or_else(|e| e.into_inner()) = how;
    }

    /// True when this job was submitted to take over from another.
    pub fn is_successor(&self) -> bool {
        self.predecessor.is_some()
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Where the backends' states go while this job is not yet current.
    pub fn loading_status_file(&self) -> PathBuf {
        self.dir.join(chain::SUCCESSOR_BACKENDS_FILE)
    }

    /// Becomes the current generation: `endpoint.json` (naming this job, its generation
    /// and predecessor) and `job.json` are replaced and the chain marks it current, all
    /// under the chain lock — unless the gateway is being stopped or a newer generation
    /// is already current.
    pub fn publish(&self, mut rec: EndpointRecord) -> Result<(), Refused> {
        rec.generation = self.generation;
        rec.predecessor_job_id = self.predecessor.clone();
        rec.job_id = Some(self.job_id.clone());
        let dir = &self.dir;
        Chain::update(dir, |c| {
            if c.stopping {
                return Err(Refused::Stopping);
            }
            if c.current > self.generation {
                return Err(Refused::Superseded(c.current));
            }
            if let Some(e) = c.job(&self.job_id).and_then(|j| j.ended.as_ref()) {
                return Err(Refused::Retired(e.how.clone()));
            }
            rec.write(dir).map_err(|source| Refused::Write {
                path: dir.join(state::ENDPOINT_FILE),
                source,
            })?;
            c.current = self.generation;
            if let Some(j) = c.job_mut(&self.job_id) {
                j.current_since = Some(state::now_rfc3339());
                let record = j.job.clone();
                record.write(dir).map_err(|source| Refused::Write {
                    path: dir.join(crate::slurm::JOB_FILE),
                    source,
                })?;
            }
            for f in c.unreferenced_files(dir) {
                let _ = std::fs::remove_file(f);
            }
            Ok(())
        })?
    }

    /// Runs until the process ends: renewal, the handover, and draining before the limit.
    pub async fn watch(
        self: Arc<Self>,
        relay: Arc<dyn Forwarding>,
        backends: SharedBackends,
        shutdown: CancellationToken,
    ) {
        let mut next_query = Instant::now();
        let mut submit_after = Instant::now();
        let mut successor_note = String::new();
        let mut limit_note = false;
        let margin = chain::exit_margin(self.grace);
        loop {
            tokio::select! {
                _ = tokio::time::sleep(TICK) => {}
                _ = shutdown.cancelled() => return,
            }
            if let Some(ep) = self.newer_endpoint() {
                self.hand_over(ep, &relay, &backends, &shutdown).await;
                return;
            }
            let now = Instant::now();
            if now >= next_query {
                next_query = now + QUERY_EVERY;
                let left = self.query_time_left().await;
                if let (Some(policy), Some(left)) = (self.policy, left) {
                    self.renew(
                        policy,
                        left,
                        &mut submit_after,
                        &mut successor_note,
                        &mut limit_note,
                    )
                    .await;
                }
            }
            let end = *self.end.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(end) = end {
                let left = end.saturating_duration_since(Instant::now());
                counters::SECONDS_LEFT.store(
                    i64::try_from(left.as_secs()).unwrap_or(i64::MAX),
                    Ordering::Relaxed,
                );
                if left <= margin {
                    let how = match self.successor() {
                        Some(s) => format!(
                            "time limit reached; successor job {} was not ready ({})",
                            s.job.job_id, successor_note
                        ),
                        None => "time limit reached".to_string(),
                    };
                    tracing::warn!(
                        seconds_left = left.as_secs(),
                        "{how}: draining now so the job ends before its limit"
                    );
                    *self.how.lock().unwrap_or_else(|e| e.into_inner()) = how;
                    shutdown.cancel();
                    return;
                }
            }
        }
    }

    /// Asks SLURM for the time left; keeps the end estimate. `(left, limit)`.
    async fn query_time_left(&self) -> Option<(Duration, Duration)> {
        let id = self.job_id.clone();
        let t = tokio::task::spawn_blocking(move || jobs::time_left(&id))
            .await
            .ok()?;
        match t {
            Ok(Some(t)) => {
                let left = Duration::from_secs(t.left);
                *self.end.lock().unwrap_or_else(|e| e.into_inner()) =
                    Instant::now().checked_add(left);
                Some((left, Duration::from_secs(t.limit)))
            }
            Ok(None) => None,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read this job's time left from SLURM");
                None
            }
        }
    }

    fn successor(&self) -> Option<ChainJob> {
        Chain::read(&self.dir)
            .ok()
            .flatten()
            .and_then(|c| c.successor().cloned())
            .filter(|s| s.generation > self.generation)
    }

    /// One renewal step: follow a successor that exists, or submit one when it is time.
    async fn renew(
        &self,
        policy: RenewPolicy,
        (left, limit): (Duration, Duration),
        submit_after: &mut Instant,
        note: &mut String,
        limit_note: &mut bool,
    ) {
        if let Some(s) = self.successor() {
            let id = s.job.job_id.clone();
            // When SLURM does not answer, look again next time.
            let Ok(Ok(info)) = tokio::task::spawn_blocking(move || jobs::query(&id)).await else {
                return;
            };
            let (state, text) = match &info {
                Some(i) if i.is_pending() => (
                    1,
                    format!("pending ({})", i.reason.as_deref().unwrap_or("queued")),
                ),
                Some(i) if i.is_running() => (
                    2,
                    format!("running on {}", i.node.as_deref().unwrap_or("?")),
                ),
                _ => (0, String::new()),
            };
            counters::SUCCESSOR.store(state, Ordering::Relaxed);
            if state == 0 {
                let how = info.map_or_else(
                    || "gone from the queue before it was ready".to_string(),
                    |i| format!("{} before it was ready", i.describe()),
                );
                tracing::warn!(successor = %s.job.job_id, "successor job {} {how}; submitting another in {:?} if there is time", s.job.job_id, RETRY_AFTER);
                counters::RENEW_FAILURES.fetch_add(1, Ordering::Relaxed);
                let (dir, job) = (self.dir.clone(), s.job.job_id.clone());
                let _ = tokio::task::spawn_blocking(move || {
                    Chain::update(&dir, |c| c.end(&job, how, None))
                })
                .await;
                *submit_after = Instant::now() + RETRY_AFTER;
                note.clear();
            } else if text != *note {
                tracing::info!(successor = %s.job.job_id, generation = s.generation, "successor job {} {text}", s.job.job_id);
                *note = text;
            }
            return;
        }
        counters::SUCCESSOR.store(0, Ordering::Relaxed);
        let before = policy.renew_before(Some(limit));
        if left > before || Instant::now() < *submit_after {
            return;
        }
        let dir = self.dir.clone();
        let me = self.job_id.clone();
        let max = policy.max;
        let submitted =
            tokio::task::spawn_blocking(move || submit_successor(&dir, &me, Why::Renew, max)).await;
        match submitted {
            Ok(Ok(Submitted::Job { generation, job_id })) => {
                counters::RENEWALS.fetch_add(1, Ordering::Relaxed);
                counters::SUCCESSOR.store(1, Ordering::Relaxed);
                tracing::info!(
                    successor = %job_id,
                    generation,
                    seconds_left = left.as_secs(),
                    "renewal: submitted successor job {job_id} (generation {generation}); it takes over once ready"
                );
            }
            Ok(Ok(Submitted::Not(why))) => {
                if !*limit_note {
                    tracing::info!("renewal: no successor submitted: {why}");
                    *limit_note = true;
                }
                *submit_after = Instant::now() + RETRY_AFTER;
            }
            Ok(Err(e)) => {
                counters::RENEW_FAILURES.fetch_add(1, Ordering::Relaxed);
                tracing::error!(error = %e, "renewal: cannot submit the successor job; trying again in {RETRY_AFTER:?}");
                *submit_after = Instant::now() + RETRY_AFTER;
            }
            Err(e) => tracing::error!(error = %e, "renewal task failed"),
        }
    }

    /// `endpoint.json` when it names a newer generation than this job's.
    fn newer_endpoint(&self) -> Option<EndpointRecord> {
        let ep = EndpointRecord::read(&self.dir).ok().flatten()?;
        (ep.generation > self.generation && ep.job_id.as_deref() != Some(self.job_id.as_str()))
            .then_some(ep)
    }

    async fn hand_over(
        &self,
        ep: EndpointRecord,
        relay: &Arc<dyn Forwarding>,
        backends: &SharedBackends,
        shutdown: &CancellationToken,
    ) {
        let to_job = ep.job_id.clone().unwrap_or_default();
        let ready_ms = if ep.ready_unix_ms > 0 {
            ep.ready_unix_ms
        } else {
            state::now_unix_ms()
        };
        relay.forward_to(ep.base_url(), &to_job);
        counters::HANDING_OVER.store(1, Ordering::Relaxed);
        counters::SUCCESSOR.store(3, Ordering::Relaxed);
        let noticed_ms = state::now_unix_ms().saturating_sub(ready_ms);
        tracing::info!(
            successor = %to_job,
            generation = ep.generation,
            in_flight = relay.local_in_flight(),
            "handover: generation {} (job {to_job} at {}) is ready; forwarding new requests to it, finishing the ones running here",
            ep.generation,
            ep.base_url()
        );
        let margin = chain::exit_margin(self.grace);
        let end = *self.end.lock().unwrap_or_else(|e| e.into_inner());
        let hard_stop = end.and_then(|e| e.checked_sub(margin));
        let past = |t: Option<Instant>| t.is_some_and(|t| Instant::now() >= t);
        while relay.local_in_flight() > 0 && !shutdown.is_cancelled() && !past(hard_stop) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let drained_ms = state::now_unix_ms().saturating_sub(ready_ms);
        let taken = backends.lock().await.take();
        if let Some(b) = taken {
            b.shutdown().await;
        }
        tracing::info!(
            drained_ms,
            "handover: the requests that were running here have finished; local backends stopped"
        );
        *self.handover.lock().unwrap_or_else(|e| e.into_inner()) = Some(HandoverFacts {
            to_job: to_job.clone(),
            to_generation: ep.generation,
            ready_ms,
            noticed_ms,
            drained_ms,
        });
        *self.how.lock().unwrap_or_else(|e| e.into_inner()) =
            format!("handed over to job {to_job}");
        // Linger: forward what still reaches this address, until it stops coming.
        let policy_linger = self.policy.map_or(Duration::from_secs(120), |p| p.linger);
        let linger_end = Instant::now().checked_add(policy_linger);
        loop {
            if shutdown.is_cancelled() || past(hard_stop) || past(linger_end) {
                break;
            }
            let quiet = state::now_unix_ms().saturating_sub(relay.last_forward_ms())
                >= QUIET.as_millis() as u64;
            if quiet && relay.forwarding() == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        tracing::info!(
            forwarded = relay.forwarded(),
            "handover to job {to_job} complete; exiting"
        );
        counters::HANDOVERS.fetch_add(1, Ordering::Relaxed);
        shutdown.cancel();
    }

    /// Called as the process ends: records how this job ended (and its handover), and
    /// removes `endpoint.json` if it still names this job.
    pub fn finish(&self, relay: Option<&dyn Forwarding>) {
        let how = self.how.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let end = *self.end.lock().unwrap_or_else(|e| e.into_inner());
        let left = end.map(|e| e.saturating_duration_since(Instant::now()).as_secs());
        let facts = self
            .handover
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let forwarded = relay.map_or(0, |r| r.forwarded());
        let r = Chain::update(&self.dir, |c| {
            if let Ok(Some(ep)) = EndpointRecord::read(&self.dir) {
                if ep.job_id.as_deref() == Some(self.job_id.as_str()) {
                    let _ = std::fs::remove_file(self.dir.join(state::ENDPOINT_FILE));
                }
            }
            c.end(&self.job_id, how.clone(), left);
            if let Some(f) = &facts {
                c.handovers.push(chain::Handover {
                    from_job: self.job_id.clone(),
                    to_job: f.to_job.clone(),
                    from_generation: self.generation,
                    to_generation: f.to_generation,
                    at: state::rfc3339(f.ready_ms / 1000),
                    ready_unix_ms: f.ready_ms,
                    noticed_ms: f.noticed_ms,
                    drained_ms: f.drained_ms,
                    exit_ms: state::now_unix_ms().saturating_sub(f.ready_ms),
                    forwarded,
                });
            }
        });
        if let Err(e) = r {
            tracing::warn!(error = %e, "cannot record this job's end in the chain");
        }
        tracing::info!(
            job = %self.job_id,
            generation = self.generation,
            seconds_left = left,
            "job ending: {how}"
        );
    }
}

/// What [`submit_successor`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Submitted {
    Job {
        generation: u64,
        job_id: String,
    },
    /// Nothing submitted, and why.
    Not(String),
}

/// Submits generation N+1 of the chain as the successor of job `current` — under the
/// chain lock, so that only one successor is ever pending and nothing is submitted once
/// `stop` began. The successor runs the current job's script (the same state directory
/// and key) and learns its generation from the record and from `LLMGW_GENERATION`.
pub fn submit_successor(
    dir: &Path,
    current: &str,
    why: Why,
    max_renewals: Option<u32>,
) -> Result<Submitted, anyhow::Error> {
    Chain::update(dir, |c| {
        if c.stopping {
            return Ok(Submitted::Not("the gateway is being stopped".into()));
        }
        if let Some(s) = c.successor() {
            return Ok(Submitted::Not(format!(
                "job {} is already the successor",
                s.job.job_id
            )));
        }
        if let Some(j) = c.current_job().filter(|j| j.job.job_id != current) {
            return Ok(Submitted::Not(format!(
                "job {} is the current generation now",
                j.job.job_id
            )));
        }
        if let Some(max) = max_renewals {
            if c.renewals() >= u64::from(max) {
                return Ok(Submitted::Not(format!(
                    "renew_max = {max} renewals reached; this job ends at its time limit"
                )));
            }
        }
        let mine = c.job(current).map(|j| j.job.clone());
        let template = match mine {
            Some(j) => j,
            None => {
                let script = dir.join(crate::slurm::SCRIPT_FILE);
                if !script.exists() {
                    return Ok(Submitted::Not(format!(
                        "no job script recorded ({} is missing)",
                        script.display()
                    )));
                }
                JobRecord {
                    job_id: current.to_string(),
                    name: c.name.clone(),
                    config: dir.join(crate::slurm::CONFIG_FILE).display().to_string(),
                    config_copy: dir.join(crate::slurm::CONFIG_FILE),
                    submitted_at: String::new(),
                    script,
                    log: PathBuf::new(),
                    grace_secs: 0,
                }
            }
        };
        submit_generation(dir, c, template, current, why)
            .map(|(generation, job_id)| Submitted::Job { generation, job_id })
    })?
}

/// Submits `record.script` as the chain's next generation and records it; the caller
/// holds the chain lock (inside [`Chain::update`]). `(generation, job id)`.
pub fn submit_generation(
    dir: &Path,
    c: &mut Chain,
    record: JobRecord,
    predecessor: &str,
    why: Why,
) -> Result<(u64, String), anyhow::Error> {
    let generation = c.next_generation();
    let gen_text = generation.to_string();
    let job_id = jobs::submit_with_env(
        &record.script,
        &[
            (chain::ENV_GENERATION, &gen_text),
            (chain::ENV_PREDECESSOR, predecessor),
        ],
    )?;
    c.jobs.push(ChainJob {
        generation,
        why,
        predecessor: Some(predecessor.to_string()),
        job: JobRecord {
            log: crate::slurm::log_path(&dir.join(crate::slurm::LOG_PATTERN), &job_id),
            job_id: job_id.clone(),
            submitted_at: state::now_rfc3339(),
            ..record
        },
        current_since: None,
        ended: None,
    });
    Ok((generation, job_id))
}
