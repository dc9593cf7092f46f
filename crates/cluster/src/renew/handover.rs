//! The handover, from the old job's side: forward to the successor at once, but commit
//! only once it has served and stayed up for a grace period; until then keep the
//! backends, serve what the successor refuses, and take the endpoint back if it dies.
//! Also: recording a predecessor that vanished without a word (SIGKILL).

use super::watch::TICK;
use super::{counters, lock, Forwarding, HandoverFacts, Member, Probe, Refused, SharedBackends};
use crate::slurm::chain::{self, Chain};
use crate::slurm::jobs;
use llmgw_core::state::{self, EndpointRecord};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// After a handover: the successor must have served and stayed up this long before the
/// old job lets go of its backends (at most `handover_linger`).
pub(super) const TAKE_BACK_GRACE: Duration = Duration::from_secs(15);
/// After the grace: leave once no request has arrived for this long.
const QUIET: Duration = Duration::from_secs(5);
/// Refused probes (or forwards) in a row that mean the successor's gateway is gone.
const REFUSED_IS_GONE: u32 = 2;
/// How often SLURM is asked whether the successor's job still runs during the grace.
const SLURM_EVERY: Duration = Duration::from_secs(2);

/// How a handover ended.
pub(super) enum Handed {
    /// Committed: this job has drained and is leaving.
    Over,
    /// The successor was lost and this job took the endpoint back (what happened).
    Back(String),
}

/// The generation requests are forwarded to.
struct Target {
    job: String,
    generation: u64,
    base: String,
    ready_ms: u64,
}

impl Target {
    fn of(ep: &EndpointRecord) -> Target {
        Target {
            job: ep.job_id.clone().unwrap_or_default(),
            generation: ep.generation,
            base: ep.base_url(),
            ready_ms: if ep.ready_unix_ms > 0 {
                ep.ready_unix_ms
            } else {
                state::now_unix_ms()
            },
        }
    }
}

impl Member {
    pub(super) async fn hand_over(
        &self,
        ep: EndpointRecord,
        relay: &Arc<dyn Forwarding>,
        backends: &SharedBackends,
        shutdown: &CancellationToken,
    ) -> Handed {
        let mut t = Target::of(&ep);
        relay.set_fallback(true);
        relay.forward_to(t.base.clone(), &t.job);
        // `backends.json` is the successor's from now on.
        set_status_file(backends, None).await;
        counters::HANDING_OVER.store(1, Ordering::Relaxed);
        counters::SUCCESSOR.store(3, Ordering::Relaxed);
        let noticed_ms = state::now_unix_ms().saturating_sub(t.ready_ms);
        let linger = self.policy.map_or(Duration::from_secs(120), |p| p.linger);
        let grace = TAKE_BACK_GRACE.min(linger);
        tracing::info!(
            successor = %t.job,
            generation = t.generation,
            in_flight = relay.local_in_flight(),
            "handover: generation {} (job {} at {}) is ready; forwarding new requests to it, finishing the ones running here; keeping this job's backends until it has served for {} s",
            t.generation,
            t.job,
            t.base,
            grace.as_secs()
        );
        let margin = chain::exit_margin(self.grace);
        let hard_stop = (*lock(&self.end)).and_then(|e| e.checked_sub(margin));
        let linger_end = Instant::now().checked_add(linger);
        let past = |t: Option<Instant>| t.is_some_and(|t| Instant::now() >= t);
        let mut grace_end = Instant::now() + grace;
        let mut served = false;
        let mut refused_in_a_row = 0u32;
        let mut refused_seen = relay.refused();
        let mut next_slurm = Instant::now() + SLURM_EVERY;
        let mut drained_ms = None;
        loop {
            if shutdown.is_cancelled() || past(hard_stop) || past(linger_end) {
                break;
            }
            if drained_ms.is_none() && relay.local_in_flight() == 0 {
                drained_ms = Some(state::now_unix_ms().saturating_sub(t.ready_ms));
            }
            // A newer generation replaced the successor (a `restart`): follow it.
            if let Some(ep) = self
                .newer_endpoint()
                .filter(|e| e.job_id.as_deref() != Some(t.job.as_str()))
            {
                t = Target::of(&ep);
                relay.forward_to(t.base.clone(), &t.job);
                tracing::info!(successor = %t.job, "handover: generation {} (job {}) is current now; forwarding there", t.generation, t.job);
                served = false;
                refused_in_a_row = 0;
                grace_end = Instant::now() + grace;
            }
            match relay.probe().await {
                Probe::Ready => {
                    if !served {
                        tracing::info!(successor = %t.job, "handover: job {} answers its readiness through the relay", t.job);
                    }
                    served = true;
                    refused_in_a_row = 0;
                }
                Probe::Refused => refused_in_a_row += 1,
                Probe::NotReady | Probe::Silent => {}
            }
            let refused = relay.refused();
            if refused > refused_seen {
                refused_seen = refused;
                refused_in_a_row += 1;
            }
            let mut gone = None;
            if refused_in_a_row >= REFUSED_IS_GONE {
                gone = Some(format!("its gateway at {} refuses connections", t.base));
            } else if Instant::now() >= next_slurm {
                next_slurm = Instant::now() + SLURM_EVERY;
                gone = job_gone(&t.job).await;
            }
            if let Some(why) = gone {
                match self.take_back(&t, &why, relay, backends).await {
                    Ok(after) => {
                        return Handed::Back(format!(
                            "successor job {} was lost {:.1} s after it took over ({why}); job {} took the endpoint back",
                            t.job,
                            after as f64 / 1000.0,
                            self.job_id
                        ))
                    }
                    // A newer generation is current: the next round follows it.
                    Err(Refused::Superseded(_)) => refused_in_a_row = 0,
                    Err(e) => {
                        tracing::warn!(error = %e, "handover: successor job {} is lost ({why}) but this job cannot take the endpoint back: {e}", t.job);
                        break;
                    }
                }
            }
            let quiet = state::now_unix_ms().saturating_sub(relay.last_forward_ms())
                >= QUIET.as_millis() as u64
                && relay.forwarding() == 0;
            if served && Instant::now() >= grace_end && quiet && drained_ms.is_some() {
                break;
            }
            tokio::select! {
                _ = tokio::time::sleep(TICK) => {}
                _ = shutdown.cancelled() => {}
            }
        }
        // Committed (or out of time): nothing is served here any more.
        relay.set_fallback(false);
        let drained_ms =
            drained_ms.unwrap_or_else(|| state::now_unix_ms().saturating_sub(t.ready_ms));
        let taken = backends.lock().await.take();
        if let Some(b) = taken {
            b.shutdown().await;
        }
        tracing::info!(
            drained_ms,
            served,
            "handover: the requests that were running here have finished; local backends stopped"
        );
        *lock(&self.handover) = Some(HandoverFacts {
            to_job: t.job.clone(),
            to_generation: t.generation,
            ready_ms: t.ready_ms,
            noticed_ms,
            drained_ms,
        });
        self.note_end(format!("handed over to job {}", t.job));
        tracing::info!(
            forwarded = relay.forwarded(),
            "handover to job {} complete; exiting",
            t.job
        );
        counters::HANDOVERS.fetch_add(1, Ordering::Relaxed);
        shutdown.cancel();
        Handed::Over
    }

    /// Becomes current again in place of a successor that was lost: under the chain lock
    /// (unless `stop` began or a newer generation is current) `endpoint.json` and
    /// `job.json` name this job again, the successor's end and the failed handover are
    /// recorded; then the relay stops forwarding and the successor's job is cancelled (a
    /// gateway that stopped answering must not come back). Ms from the successor's
    /// ready to now.
    async fn take_back(
        &self,
        t: &Target,
        why: &str,
        relay: &Arc<dyn Forwarding>,
        backends: &SharedBackends,
    ) -> Result<u64, Refused> {
        let mut rec = lock(&self.record).clone().ok_or(Refused::NoRecord)?;
        rec.ready_unix_ms = state::now_unix_ms();
        let after = rec.ready_unix_ms.saturating_sub(t.ready_ms);
        let (dir, me, generation) = (self.dir.clone(), self.job_id.clone(), self.generation);
        let (to_job, to_gen, ready_ms) = (t.job.clone(), t.generation, t.ready_ms);
        let why_text = why.to_string();
        let forwarded = relay.forwarded();
        tokio::task::spawn_blocking(move || {
            Chain::update(&dir, |c| {
                if c.stopping {
                    return Err(Refused::Stopping);
                }
                // A newer generation than the lost one took over meanwhile: follow it.
                // (`current` may also still be this job's: the successor died between
                // writing endpoint.json and chain.json as it published.)
                if c.current > to_gen {
                    return Err(Refused::Superseded(c.current));
                }
                let named = EndpointRecord::read(&dir).ok().flatten().and_then(|e| e.job_id);
                if named.as_deref().is_some_and(|j| j != to_job && j != me) {
                    return Err(Refused::Superseded(c.current));
                }
                rec.write(&dir).map_err(|source| Refused::Write {
                    path: dir.join(state::ENDPOINT_FILE),
                    source,
                })?;
                c.current = generation;
                c.end(
                    &to_job,
                    format!(
                        "lost {:.1} s after it took over ({why_text}); job {me} took the endpoint back",
                        after as f64 / 1000.0
                    ),
                    None,
                );
                if let Some(j) = c.job(&me) {
                    j.job.write(&dir).map_err(|source| Refused::Write {
                        path: dir.join(crate::slurm::JOB_FILE),
                        source,
                    })?;
                }
                c.handovers.push(chain::Handover {
                    from_job: me.clone(),
                    to_job: to_job.clone(),
                    from_generation: generation,
                    to_generation: to_gen,
                    at: state::rfc3339(ready_ms / 1000),
                    ready_unix_ms: ready_ms,
                    noticed_ms: 0,
                    drained_ms: 0,
                    exit_ms: after,
                    forwarded,
                    taken_back: Some(why_text),
                    recorded_by_successor: None,
                });
                Ok(())
            })
        })
        .await
        .map_err(|e| Refused::Task(e.to_string()))???;
        relay.take_back();
        relay.set_fallback(false);
        set_status_file(
            backends,
            Some(self.dir.join(crate::supervise::BACKENDS_FILE)),
        )
        .await;
        counters::HANDING_OVER.store(0, Ordering::Relaxed);
        counters::SUCCESSOR.store(0, Ordering::Relaxed);
        counters::TAKEBACKS.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(
            successor = %t.job,
            "handover to job {} did not hold ({why}); this job took the endpoint back and serves again",
            t.job
        );
        let job = t.job.clone();
        let _ = tokio::task::spawn_blocking(move || jobs::cancel(&job, None)).await;
        Ok(after)
    }

    /// Older jobs of the chain that SLURM no longer runs but that never recorded their end
    /// (killed with SIGKILL): recorded now, with what SLURM says — and when it was this
    /// job's predecessor, the handover it could not record.
    pub(super) async fn record_vanished_predecessors(&self) {
        let (dir, generation) = (self.dir.clone(), self.generation);
        let any = Chain::read(&dir)
            .ok()
            .flatten()
            .is_some_and(|c| c.unended().any(|j| j.generation < generation));
        if !any {
            return;
        }
        let gone = tokio::task::spawn_blocking(move || {
            chain::record_vanished(&dir, |j| j.generation < generation)
        })
        .await;
        let Ok(Ok(gone)) = gone else {
            return;
        };
        for (id, what) in gone {
            tracing::warn!(job = %id, "job {id} of this chain ended without recording it ({what}); recorded for it");
            if self.predecessor.as_deref() != Some(id.as_str()) {
                continue;
            }
            let ready_ms = (*lock(&self.record))
                .as_ref()
                .map_or(0, |r| r.ready_unix_ms);
            let (me, generation) = (self.job_id.clone(), self.generation);
            let r = Chain::update(&self.dir, |c| {
                if c.handovers
                    .iter()
                    .any(|h| h.from_job == id && h.to_job == me)
                {
                    return;
                }
                let from_generation = c.job(&id).map_or(0, |j| j.generation);
                c.handovers.push(chain::Handover {
                    from_job: id.clone(),
                    to_job: me.clone(),
                    from_generation,
                    to_generation: generation,
                    at: state::rfc3339(ready_ms / 1000),
                    ready_unix_ms: ready_ms,
                    noticed_ms: 0,
                    drained_ms: 0,
                    exit_ms: state::now_unix_ms().saturating_sub(ready_ms),
                    forwarded: 0,
                    taken_back: None,
                    recorded_by_successor: Some(format!(
                        "job {id} ended without recording the handover ({what})"
                    )),
                });
            });
            if let Err(e) = r {
                tracing::warn!(error = %e, "cannot record the handover from job {id}");
            }
        }
    }
}

/// `Some(what SLURM says)` when the job no longer runs (`None` while it does, or when
/// SLURM does not answer).
async fn job_gone(id: &str) -> Option<String> {
    let id = id.to_string();
    let info = tokio::task::spawn_blocking(move || jobs::query(&id))
        .await
        .ok()?
        .ok()?;
    match info {
        Some(i) if i.is_active() => None,
        Some(i) => Some(format!("its job is {}", i.describe())),
        None => Some("its job is gone from SLURM".into()),
    }
}

async fn set_status_file(backends: &SharedBackends, file: Option<std::path::PathBuf>) {
    if let Some(b) = backends.lock().await.as_ref() {
        b.monitor().set_status_file(file);
    }
}
