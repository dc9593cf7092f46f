//! `[slurm] on_demand = true`: `connect` keeps listening while no job runs; a connection
//! that finds no gateway submits the job (`start`'s own submission, same config and state
//! directory: keys, spend and stored responses carry over) and is *held* — its bytes read
//! and kept — until the gateway is ready, then forwarded as usual. Every connection that
//! arrives meanwhile waits on the same start.
//!
//! Why at the TCP level and not as an HTTP proxy: `connect` forwards bytes (streams,
//! keep-alive, every API), and a held request needs no parsing: its bytes wait in memory
//! (capped) and go out once the job answers. Only the refusal after `hold_timeout` is
//! HTTP: a 503 with `Retry-After` and an OpenAI-format error naming the job, its state and
//! SLURM's pending reason. A client that gives up (closes) leaves the hold at once.
//!
//! One starter task at a time polls the job (squeue every 2 s: state and reason) and the
//! gateway (`endpoint.json` and `/health/readiness` every 250 ms) and publishes the phase
//! on a watch channel every held connection waits on; no lock is held while waiting.

use super::super::start::{Plan, Submission};
use anyhow::Context as _;
use llmgw_cluster::slurm::chain::Chain;
use llmgw_cluster::slurm::jobs::{self, JobInfo};
use llmgw_cluster::slurm::JobRecord;
use llmgw_core::config::Config;
use llmgw_core::state::EndpointRecord;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::sync::watch;

/// Default `[slurm] hold_timeout`.
pub const DEFAULT_HOLD: Duration = Duration::from_secs(15 * 60);
/// How often the gateway's readiness is asked while starting.
const READY_POLL: Duration = Duration::from_millis(250);
/// How often SLURM is asked for the job's state and reason while starting.
const SLURM_POLL: Duration = Duration::from_secs(2);
/// What a refused client is told to wait before trying again.
const RETRY_AFTER_SECS: u64 = 30;
/// After a start failed, holds get that failure at once for this long instead of
/// submitting again (a broken config must not become a job per request).
const FAILED_FOR: Duration = Duration::from_secs(30);
/// A held client's bytes kept at most (its request); beyond, it is refused.
const MAX_HELD: usize = super::MAX_HELD;

/// Where the start is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Phase {
    /// No job runs and none is being started: scaled to zero.
    Zero,
    /// Submitting, or the job is queued or loading: `job` (once known), its SLURM state
    /// and reason, since when.
    Starting {
        job: Option<String>,
        state: String,
        reason: Option<String>,
        since_ms: u64,
    },
    /// The gateway answers ready.
    Ready,
    /// The start failed (sbatch refused, or the job ended before ready), in a sentence.
    Failed(String),
}

/// How a hold ended.
pub enum Held {
    /// The gateway is ready: forward the held bytes.
    Ready,
    /// The job is not ready but the spill gateway is: forward there (this port).
    Spill(u16),
    /// The client left, or was answered (a 503): nothing more to do.
    Over,
}

/// What `connect` counts of on-demand starts (logged; see [`OnDemand::summary`]).
#[derive(Default)]
struct Counts {
    held: AtomicU64,
    holding: AtomicU64,
    gave_up: AtomicU64,
    refused: AtomicU64,
    starts: AtomicU64,
    hold_ms_max: AtomicU64,
    hold_ms_sum: AtomicU64,
    released: AtomicU64,
    spilled: AtomicU64,
}

pub struct OnDemand {
    name: String,
    dir: PathBuf,
    /// The config an on-demand start submits.
    config: PathBuf,
    hold_timeout: Duration,
    phase: watch::Sender<Phase>,
    /// A starter task is running.
    starting: AtomicBool,
    counts: Counts,
    client: reqwest::Client,
    /// The cloud part of the config, when held requests may spill to it.
    cloud: Option<llmgw_core::config::LoadedConfig>,
    /// The spill gateway while one runs.
    spill: std::sync::Mutex<Option<Arc<super::spill::Spill>>>,
    /// When the last start failed, and why.
    failed: std::sync::Mutex<Option<(Instant, String)>>,
}

impl OnDemand {
    /// `Some` when the config (`config`, else the copy `start` left in the state
    /// directory) says `[slurm] on_demand = true`.
    pub fn from_config(
        name: &str,
        dir: &Path,
        config: Option<&Path>,
    ) -> anyhow::Result<Option<Arc<OnDemand>>> {
        let path = match config {
            Some(c) => c.to_path_buf(),
            None => dir.join(llmgw_cluster::slurm::CONFIG_FILE),
        };
        if config.is_none() && !path.exists() {
            return Ok(None);
        }
        let cfg = Config::load(&path)?;
        if !cfg.config.slurm.on_demand {
            return Ok(None);
        }
        let hold_timeout = cfg
            .config
            .slurm
            .hold_timeout
            .as_ref()
            .map_or(DEFAULT_HOLD, |d| d.get_ref().0);
        // Clients need the key before the first job exists: the one `start` would write.
        if cfg.master_key.is_none() {
            llmgw_core::state::ensure_dir(dir)
                .with_context(|| format!("cannot create the state directory {}", dir.display()))?;
            super::super::start::ensure_key(&dir.join(llmgw_core::state::KEY_FILE))?;
        }
        let cloud = match cfg.config.slurm.spill_while_pending {
            Some(false) => None,
            asked => match super::spill::cloud_config(&cfg, dir) {
                Ok(c) => Some(c),
                Err(why) if asked == Some(true) => anyhow::bail!(
                    "[slurm] spill_while_pending = true, but held requests cannot be served from the cloud: {why}; add a cloud deployment (or a fallback to a cloud group) to each group with local backends, or set spill_while_pending = false"
                ),
                Err(why) => {
                    eprintln!("llmgw connect: held requests wait for the job (no spilling: {why})");
                    None
                }
            },
        };
        let (phase, _) = watch::channel(Phase::Zero);
        Ok(Some(Arc::new(OnDemand {
            name: name.to_string(),
            dir: dir.to_path_buf(),
            config: std::path::absolute(&path).unwrap_or(path),
            hold_timeout,
            phase,
            starting: AtomicBool::new(false),
            counts: Counts::default(),
            client: super::super::http_client()?,
            cloud,
            spill: std::sync::Mutex::new(None),
            failed: std::sync::Mutex::new(None),
        })))
    }

    pub fn hold_timeout(&self) -> Duration {
        self.hold_timeout
    }

    /// Holds `client` until the gateway is ready (starting the job if none is queued or
    /// running), it leaves, or `deadline` passes (then it gets a 503). `began` is when
    /// this connection was first held (its hold time).
    pub async fn hold(
        self: &Arc<Self>,
        client: &mut TcpStream,
        held: &mut Vec<u8>,
        began: Instant,
    ) -> Held {
        let mut rx = self.phase.subscribe();
        self.ensure_starter();
        self.counts.held.fetch_add(1, Ordering::Relaxed);
        self.counts.holding.fetch_add(1, Ordering::Relaxed);
        let deadline = tokio::time::Instant::from_std(began) + self.hold_timeout;
        let mut buf = vec![0u8; 16 * 1024];
        let outcome = loop {
            let phase = rx.borrow_and_update().clone();
            if let Some(port) = self.spill_port() {
                if !matches!(phase, Phase::Ready | Phase::Failed(_)) {
                    self.counts.spilled.fetch_add(1, Ordering::Relaxed);
                    break Held::Spill(port);
                }
            }
            match phase {
                Phase::Ready => break Held::Ready,
                Phase::Failed(why) => {
                    self.counts.refused.fetch_add(1, Ordering::Relaxed);
                    let msg = format!(
                        "gateway \"{}\" could not be started on demand: {why}; see `llmgw status{}`",
                        self.name,
                        super::super::name_flag(&self.name)
                    );
                    let _ = refuse(client, &msg, "gateway_start_failed").await;
                    break Held::Over;
                }
                Phase::Zero | Phase::Starting { .. } => {}
            }
            tokio::select! {
                changed = rx.changed() => if changed.is_err() { break Held::Over },
                r = client.read(&mut buf) => match r {
                    Ok(0) | Err(_) => {
                        // Gone: leave the hold at once.
                        self.counts.gave_up.fetch_add(1, Ordering::Relaxed);
                        break Held::Over;
                    }
                    Ok(n) => {
                        if held.len() + n > MAX_HELD {
                            let _ = refuse(client, "request too large to hold while the gateway starts", "request_too_large").await;
                            break Held::Over;
                        }
                        held.extend_from_slice(&buf[..n]);
                    }
                },
                _ = tokio::time::sleep_until(deadline) => {
                    self.counts.refused.fetch_add(1, Ordering::Relaxed);
                    let msg = self.timeout_message();
                    let _ = refuse(client, &msg, "gateway_starting").await;
                    break Held::Over;
                }
            }
        };
        self.counts.holding.fetch_sub(1, Ordering::Relaxed);
        if matches!(outcome, Held::Ready) {
            let ms = u64::try_from(began.elapsed().as_millis()).unwrap_or(u64::MAX);
            self.counts.hold_ms_max.fetch_max(ms, Ordering::Relaxed);
            self.counts.hold_ms_sum.fetch_add(ms, Ordering::Relaxed);
            let n = self.counts.released.fetch_add(1, Ordering::Relaxed);
            if n == 0 {
                eprintln!(
                    "llmgw connect: first held request released after {:.1} s",
                    ms as f64 / 1000.0
                );
            }
        }
        outcome
    }

    /// The spill gateway's port, when one is ready.
    fn spill_port(&self) -> Option<u16> {
        let s = self.spill.lock().unwrap_or_else(|e| e.into_inner());
        s.as_ref().filter(|s| s.is_ready()).map(|s| s.port)
    }

    /// Starts the spill gateway (when the config allows one and none runs); every held
    /// connection is woken once it is ready.
    fn start_spill(self: &Arc<Self>) {
        let Some(cloud) = &self.cloud else { return };
        let mut slot = self.spill.lock().unwrap_or_else(|e| e.into_inner());
        if slot.is_some() {
            return;
        }
        let phase = self.phase.clone();
        match super::spill::Spill::start(cloud.clone(), &self.dir, move || {
            eprintln!("llmgw connect: held requests now go to the cloud deployments until the job is ready");
            phase.send_modify(|_| {});
        }) {
            Ok(s) => *slot = Some(s),
            Err(e) => eprintln!("llmgw connect: cannot start the spill gateway: {e}"),
        }
    }

    /// Stops the spill gateway (its requests finish first).
    fn stop_spill(&self) {
        let s = self.spill.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(s) = s {
            s.stop();
            eprintln!("llmgw connect: the job is ready; the spill gateway drains and stops");
        }
    }

    /// `held N, released N (longest hold X s, mean Y s), gave up N, refused N, job starts N`.
    pub fn summary(&self) -> String {
        let c = &self.counts;
        let released = c.released.load(Ordering::Relaxed);
        let mean = c.hold_ms_sum.load(Ordering::Relaxed) as f64 / released.max(1) as f64;
        format!(
            "held {} requests ({} holding now), released {} (longest hold {:.1} s, mean {:.1} s), spilled to the cloud {}, gave up {}, refused {}, job starts {}",
            c.held.load(Ordering::Relaxed),
            c.holding.load(Ordering::Relaxed),
            released,
            c.hold_ms_max.load(Ordering::Relaxed) as f64 / 1000.0,
            mean / 1000.0,
            c.spilled.load(Ordering::Relaxed),
            c.gave_up.load(Ordering::Relaxed),
            c.refused.load(Ordering::Relaxed),
            c.starts.load(Ordering::Relaxed),
        )
    }

    fn timeout_message(&self) -> String {
        let what = match &*self.phase.borrow() {
            Phase::Starting {
                job: Some(job),
                state,
                reason,
                since_ms,
            } => {
                let waited = llmgw_core::state::now_unix_ms().saturating_sub(*since_ms) / 1000;
                let reason = reason
                    .as_deref()
                    .map(|r| format!(" ({r})"))
                    .unwrap_or_default();
                format!("job {job} is {state}{reason}, starting for {waited} s")
            }
            Phase::Starting { job: None, .. } => "the job is being submitted".to_string(),
            _ => "no job is running".to_string(),
        };
        format!(
            "gateway \"{}\" is not ready after holding this request for {} s ([slurm] hold_timeout): {what}; try again later, or see `llmgw status{}`",
            self.name,
            self.hold_timeout.as_secs(),
            super::super::name_flag(&self.name)
        )
    }

    /// Starts the starter task unless one runs.
    fn ensure_starter(self: &Arc<Self>) {
        if self.starting.swap(true, Ordering::SeqCst) {
            return;
        }
        let recent = self
            .failed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .filter(|(at, _)| at.elapsed() < FAILED_FOR);
        if let Some((_, why)) = recent {
            self.phase.send_replace(Phase::Failed(why));
            self.starting.store(false, Ordering::SeqCst);
            return;
        }
        // A new start: what the last one ended with (ready, failed) is not this one's.
        self.phase.send_replace(Phase::Zero);
        self.start_spill();
        let me = self.clone();
        tokio::spawn(async move {
            let end = me.start().await;
            me.stop_spill();
            if let Phase::Failed(why) = &end {
                eprintln!("llmgw connect: the on-demand start failed: {why}");
                *me.failed.lock().unwrap_or_else(|e| e.into_inner()) =
                    Some((Instant::now(), why.clone()));
            }
            // Kept until the next start, so every waiting hold sees it.
            me.phase.send_replace(end);
            me.starting.store(false, Ordering::SeqCst);
        });
    }

    /// Until the gateway is ready or the start failed: submits the job when none is
    /// queued or running, follows it through SLURM's queue and its loading.
    async fn start(&self) -> Phase {
        let began_ms = llmgw_core::state::now_unix_ms();
        let mut ours: Option<String> = None;
        let mut next_slurm = Instant::now();
        loop {
            if let Some(ep) = EndpointRecord::read(&self.dir).ok().flatten() {
                if super::super::is_ready(&self.client, &ep).await {
                    let job = ep.job_id.as_deref().unwrap_or("?");
                    eprintln!(
                        "llmgw connect: gateway ready (job {job}) {:.1} s after the first held request; {}",
                        llmgw_core::state::now_unix_ms().saturating_sub(began_ms) as f64 / 1000.0,
                        self.summary()
                    );
                    return Phase::Ready;
                }
            }
            if Instant::now() >= next_slurm {
                next_slurm = Instant::now() + SLURM_POLL;
                let dir = self.dir.clone();
                let active = tokio::task::spawn_blocking(move || active_job(&dir))
                    .await
                    .unwrap_or(None);
                match active {
                    Some(info) => {
                        self.phase.send_if_modified(|p| {
                            let next = Phase::Starting {
                                job: Some(info.id.clone()),
                                state: info.state.clone(),
                                reason: info.reason.clone(),
                                since_ms: match p {
                                    Phase::Starting { since_ms, .. } => *since_ms,
                                    _ => began_ms,
                                },
                            };
                            let changed = *p != next;
                            if changed {
                                eprintln!(
                                    "llmgw connect: starting on demand: job {} {}",
                                    info.id,
                                    info.describe()
                                );
                            }
                            *p = next;
                            changed
                        });
                    }
                    None => {
                        if let Some(id) = &ours {
                            let q = id.clone();
                            let info = tokio::task::spawn_blocking(move || jobs::query(&q))
                                .await
                                .ok()
                                .and_then(Result::ok)
                                .flatten();
                            let what = info.map_or_else(|| "is gone".to_string(), |i| i.describe());
                            let log = JobRecord::read(&self.dir)
                                .ok()
                                .flatten()
                                .map(|r| format!("; its log: {}", r.log.display()))
                                .unwrap_or_default();
                            return Phase::Failed(format!(
                                "job {id} {what} before the gateway was ready{log}"
                            ));
                        }
                        self.phase.send_replace(Phase::Starting {
                            job: None,
                            state: "SUBMITTING".into(),
                            reason: None,
                            since_ms: began_ms,
                        });
                        match self.submit().await {
                            Ok(Submission::New(rec)) => {
                                self.counts.starts.fetch_add(1, Ordering::Relaxed);
                                eprintln!(
                                    "llmgw connect: no gateway running: submitted job {} on demand ({})",
                                    rec.job_id,
                                    self.config.display()
                                );
                                ours = Some(rec.job_id);
                                next_slurm = Instant::now();
                            }
                            Ok(Submission::Active(_)) => next_slurm = Instant::now(),
                            Err(e) => return Phase::Failed(format!("{e:#}")),
                        }
                    }
                }
            }
            tokio::time::sleep(READY_POLL).await;
        }
    }

    async fn submit(&self) -> anyhow::Result<Submission> {
        let (name, dir, config) = (self.name.clone(), self.dir.clone(), self.config.clone());
        tokio::task::spawn_blocking(move || {
            let cfg = Config::load(&config)?;
            let plan = Plan::new(
                &config,
                &cfg,
                &name,
                &dir,
                dir.join(llmgw_cluster::slurm::CONFIG_FILE),
            )?;
            plan.submit(&config, &name, &dir, true)
        })
        .await
        .context("the submission task failed")?
    }
}

/// The chain's job (or `job.json`'s) that SLURM still queues or runs.
fn active_job(dir: &Path) -> Option<JobInfo> {
    let mut ids: Vec<String> = Chain::read(dir)
        .ok()
        .flatten()
        .map(|c| c.unended().map(|j| j.job.job_id.clone()).collect())
        .unwrap_or_default();
    if let Some(rec) = JobRecord::read(dir).ok().flatten() {
        if !ids.contains(&rec.job_id) {
            ids.push(rec.job_id);
        }
    }
    ids.into_iter()
        .filter_map(|id| jobs::query(&id).ok().flatten())
        .find(JobInfo::is_active)
}

/// Answers a held client with a 503, `Retry-After` and an OpenAI-format error, and closes.
async fn refuse(client: &mut TcpStream, message: &str, code: &str) -> std::io::Result<()> {
    let body = serde_json::json!({"error": {
        "message": message, "type": "service_unavailable", "param": null, "code": code,
    }})
    .to_string();
    let head = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: {RETRY_AFTER_SECS}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    client.write_all(head.as_bytes()).await?;
    client.write_all(body.as_bytes()).await?;
    client.shutdown().await
}
