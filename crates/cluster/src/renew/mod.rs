//! The gateway's side of a chain of jobs (see `slurm::chain` for the record): renewal
//! before the time limit and the handover to the successor.
//!
//! A gateway running as a SLURM job with a state directory is a [`Member`] of its chain.
//! While it loads, [`Member::watch_until_published`] keeps its time limit (a job that is
//! never ready still drains before its limit and ends COMPLETED) and leaves if the current
//! job retired it. Once ready it *publishes* itself (under the chain lock: `endpoint.json`
//! and `job.json` name it, `chain.json` marks it current) unless `stop` or a newer
//! generation got there first. Then [`Member::watch`] runs until the process ends:
//!
//! - every few seconds it reads its real time left from SLURM (so `scontrol update
//!   TimeLimit=` is honoured); `renew_before` ahead of the end it submits its successor
//!   (the same script, state directory and key; generation N+1), at most one at a time
//!   (`successor.rs`). A successor that ends before it is ready, or that runs but is not
//!   ready within `handover_timeout`, is lost: it is cancelled and another is submitted
//!   with this job's own config, at a time chosen from the time left;
//! - every 250 ms it looks at `endpoint.json`: when a newer generation has published
//!   itself, it hands over (`handover.rs`) — the gateway's relay ([`Forwarding`]) sends
//!   every request that still reaches this address to the successor — but it commits only
//!   once the successor has served (its readiness answered through the relay) and stayed
//!   up for a grace period. Until then it keeps its backends, serves what the successor
//!   refuses, and if the successor dies it takes the endpoint back and renews again;
//! - without a successor it drains by itself [`chain::exit_margin`] before the limit, so
//!   the job ends COMPLETED rather than TIMEOUT.
//!
//! Forwarding itself is the gateway's (`llmgw_gateway::relay`, an axum middleware
//! installed only for chain members); this side says when and where.

mod handover;
mod idle;
mod metrics;
mod submit;
mod successor;
mod watch;

pub use idle::InFlight;
pub use metrics::{counters, metrics_text};
pub use submit::{submit_generation, submit_successor, Submitted};

use crate::slurm::chain::{self, Chain, RenewPolicy};
use crate::supervise::Backends;
use llmgw_core::state::{self, EndpointRecord};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// What a probe of the successor found (`GET /health/readiness` through the relay).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe {
    /// It answered 200: it serves.
    Ready,
    /// It answered, but is not ready (503 while it drains, or an error status).
    NotReady,
    /// Nothing accepts connections at its address: its gateway is gone.
    Refused,
    /// No answer in time, or no successor to ask.
    Silent,
}

/// What the chain needs of the gateway's forwarding (its renewal relay) at a handover.
pub trait Forwarding: Send + Sync {
    /// From now on, every new request goes to `base` (the successor, job `job_id`).
    fn forward_to(&self, base: String, job_id: &str);
    /// Stops forwarding: this job serves every request itself again (it took the
    /// endpoint back from a successor that was lost).
    fn take_back(&self);
    /// While on, a request the successor refuses to connect is served here instead (the
    /// handover is not committed and this job still has its backends).
    fn set_fallback(&self, on: bool);
    /// Asks the successor's `/health/readiness` (bounded: about a second).
    fn probe(&self) -> Pin<Box<dyn Future<Output = Probe> + Send + '_>>;
    /// Forwarded requests whose connection the successor refused, so far.
    fn refused(&self) -> u64;
    /// This job's own requests still running (response bodies not yet finished).
    fn local_in_flight(&self) -> u64;
    /// Requests being forwarded right now.
    fn forwarding(&self) -> u64;
    /// Requests forwarded so far.
    fn forwarded(&self) -> u64;
    /// Unix ms of the last request that reached this job after the handover.
    fn last_forward_ms(&self) -> u64;
}

/// The job's backends; the handover stops them before the process ends, `serve` stops
/// what is left.
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
    /// When this process started (the load time when SLURM's start is unknown).
    started: Instant,
    /// Estimated end of the job (from SLURM's time left).
    end: Mutex<Option<Instant>>,
    /// Estimated start of the job (time limit minus time left).
    job_start: Mutex<Option<Instant>>,
    /// Job start → ready: what the default `handover_timeout` derives from.
    load_time: Mutex<Option<Duration>>,
    /// The record this job published (written again when it takes the endpoint back).
    record: Mutex<Option<EndpointRecord>>,
    published: AtomicBool,
    /// Unix ms when this job became current (the idle clock starts there).
    published_ms: AtomicU64,
    /// `[slurm] idle_stop`: drain and end after this long without a request.
    idle_stop: Option<Duration>,
    /// `[slurm] renew`, for what an idle stop saved.
    renews: bool,
    /// How this job ended, for the chain record.
    how: Mutex<String>,
    handover: Mutex<Option<HandoverFacts>>,
}

/// Why this job did not become current (or could not become it again).
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    #[error("the gateway is being stopped (`llmgw stop`)")]
    Stopping,
    #[error("generation {0} is already current")]
    Superseded(u64),
    #[error("this job was retired before it was ready ({0})")]
    Retired(String),
    #[error("this job never published an endpoint")]
    NoRecord,
    #[error(transparent)]
    Chain(#[from] chain::ChainError),
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("a background task failed: {0}")]
    Task(String),
}

/// A poisoned lock still holds good data here (plain values, no invariants across them).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
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
        counters::JOB_GPUS.store(crate::idle::job_gpus(), Ordering::Relaxed);
        Some(Member {
            dir,
            job_id,
            generation,
            predecessor,
            policy: RenewPolicy::from_config(slurm, grace),
            grace,
            started: Instant::now(),
            end: Mutex::new(None),
            job_start: Mutex::new(None),
            load_time: Mutex::new(None),
            record: Mutex::new(None),
            published: AtomicBool::new(false),
            published_ms: AtomicU64::new(0),
            idle_stop: slurm.idle_stop.as_ref().map(|d| d.get_ref().0),
            renews: slurm.renew,
            how: Mutex::new("stopped".into()),
            handover: Mutex::new(None),
        })
    }

    /// How this job ends, for the chain record (the last word wins).
    pub fn note_end(&self, how: String) {
        *lock(&self.how) = how;
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

    /// Job start → ready (what the default `handover_timeout` derives from); until this
    /// job is ready, the time it has taken so far.
    fn load_time(&self) -> Duration {
        (*lock(&self.load_time)).unwrap_or_else(|| self.since_start())
    }

    fn since_start(&self) -> Duration {
        let start = (*lock(&self.job_start)).unwrap_or(self.started);
        start.elapsed()
    }

    /// Time left until the limit, from the last SLURM reading.
    fn left(&self) -> Option<Duration> {
        (*lock(&self.end)).map(|e| e.saturating_duration_since(Instant::now()))
    }

    /// Becomes the current generation: `endpoint.json` (naming this job, its generation
    /// and predecessor) and `job.json` are replaced and the chain marks it current, all
    /// under the chain lock — unless the gateway is being stopped, a newer generation is
    /// already current, or this job was retired while it loaded.
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
            // The previous generation's renewal trouble is not this one's.
            c.renewal = None;
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
        })??;
        let load = self.since_start();
        *lock(&self.load_time) = Some(load);
        *lock(&self.record) = Some(rec);
        self.published_ms
            .store(state::now_unix_ms(), Ordering::SeqCst);
        self.published.store(true, Ordering::SeqCst);
        if let Some(p) = self.policy {
            tracing::info!(
                load_secs = load.as_secs(),
                handover_timeout_secs = p.handover_timeout(load).as_secs(),
                "this job loaded in {} s; a successor gets {} s from starting to ready",
                load.as_secs(),
                p.handover_timeout(load).as_secs()
            );
        }
        Ok(())
    }

    /// Called as the process ends: records how this job ended (and its handover), and
    /// removes `endpoint.json` if it still names this job (and the loading status file
    /// of a successor that never became current).
    pub fn finish(&self, relay: Option<&dyn Forwarding>) {
        let how = lock(&self.how).clone();
        let left = self.left().map(|l| l.as_secs());
        let facts = lock(&self.handover).clone();
        let forwarded = relay.map_or(0, |r| r.forwarded());
        if self.is_successor() && !self.published.load(Ordering::SeqCst) {
            let _ = std::fs::remove_file(self.loading_status_file());
        }
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
                    taken_back: None,
                    recorded_by_successor: None,
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
