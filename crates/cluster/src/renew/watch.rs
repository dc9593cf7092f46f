//! The member's loops: before it is ready (its time limit, and being retired) and once it
//! is current (renewal, handover, draining before the limit).

use super::handover::Handed;
use super::successor::Renewal;
use super::{counters, lock, Forwarding, Member, SharedBackends};
use crate::slurm::chain::{self, Chain};
use crate::slurm::jobs;
use llmgw_core::state::EndpointRecord;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// How often `endpoint.json` is checked for a newer generation.
pub(super) const TICK: Duration = Duration::from_millis(250);
/// How often SLURM is asked for the time left and the successor's state.
pub(super) const QUERY_EVERY: Duration = Duration::from_secs(10);

/// What `endpoint.json` says, seen from this job.
enum Seen {
    /// It names this job.
    Mine,
    /// It names a newer generation: hand over.
    Newer(EndpointRecord),
    /// It is absent, or names an older generation.
    Other,
}

impl Member {
    /// Until this job is published: it drains [`chain::exit_margin`] before its time limit
    /// (a successor that never gets ready ends COMPLETED, not TIMEOUT) and leaves when the
    /// chain record says it was retired (its predecessor cancelled it). Returns once the
    /// job is published or shutting down.
    pub async fn watch_until_published(self: Arc<Self>, shutdown: CancellationToken) {
        let margin = chain::exit_margin(self.grace);
        let mut next_query = Instant::now();
        loop {
            if self.published.load(Ordering::SeqCst) || shutdown.is_cancelled() {
                return;
            }
            // The first reading at once: it also dates the job's start (its load time).
            if Instant::now() >= next_query {
                next_query = Instant::now() + QUERY_EVERY;
                let _ = self.query_time_left().await;
                if let Some(how) = self.retired() {
                    tracing::warn!("this job was retired before it was ready ({how}); exiting");
                    self.note_end(format!("retired before it was ready: {how}"));
                    shutdown.cancel();
                    return;
                }
            }
            if self.left().is_some_and(|l| l <= margin) && !self.published.load(Ordering::SeqCst) {
                let how = "time limit reached before this job was ready".to_string();
                tracing::warn!("{how}: draining now so the job ends before its limit");
                self.note_end(how);
                shutdown.cancel();
                return;
            }
            tokio::select! {
                _ = tokio::time::sleep(TICK) => {}
                _ = shutdown.cancelled() => return,
            }
        }
    }

    /// Runs until the process ends: renewal, the handover, and draining before the limit.
    pub async fn watch(
        self: Arc<Self>,
        relay: Arc<dyn Forwarding>,
        backends: SharedBackends,
        shutdown: CancellationToken,
    ) {
        let mut next_query = Instant::now();
        let mut r = Renewal::default();
        let margin = chain::exit_margin(self.grace);
        loop {
            tokio::select! {
                _ = tokio::time::sleep(TICK) => {}
                _ = shutdown.cancelled() => return,
            }
            match self.seen() {
                Seen::Newer(ep) => match self.hand_over(ep, &relay, &backends, &shutdown).await {
                    Handed::Over => return,
                    Handed::Back(lost) => {
                        let policy = self.policy;
                        self.lost(&mut r, lost, policy).await;
                        next_query = Instant::now();
                        continue;
                    }
                },
                Seen::Mine => {}
                Seen::Other => {
                    if let Some(how) = self.retired() {
                        tracing::warn!("this job was retired ({how}); exiting");
                        self.note_end(format!("retired: {how}"));
                        shutdown.cancel();
                        return;
                    }
                }
            }
            let now = Instant::now();
            if now >= next_query {
                next_query = now + r.query_every();
                let left = self.query_time_left().await;
                if let (Some(policy), Some(left)) = (self.policy, left) {
                    self.renew(policy, left, &mut r).await;
                }
                self.record_vanished_predecessors().await;
            }
            if let Some(left) = self.left() {
                counters::SECONDS_LEFT.store(
                    i64::try_from(left.as_secs()).unwrap_or(i64::MAX),
                    Ordering::Relaxed,
                );
                if left <= margin {
                    let how = match (self.successor(), r.last_lost()) {
                        (Some(s), _) => format!(
                            "time limit reached; successor job {} was not ready ({})",
                            s.job.job_id,
                            r.successor_note()
                        ),
                        (None, Some(lost)) => {
                            format!("time limit reached; no successor was ready: {lost}")
                        }
                        (None, None) => match r.why_not() {
                            Some(why) => format!("time limit reached; {why}"),
                            None => "time limit reached".to_string(),
                        },
                    };
                    tracing::warn!(
                        seconds_left = left.as_secs(),
                        "{how}: draining now so the job ends before its limit"
                    );
                    self.note_end(how);
                    shutdown.cancel();
                    return;
                }
            }
        }
    }

    /// Asks SLURM for the time left; keeps the end (and start) estimate. `(left, limit)`.
    pub(super) async fn query_time_left(&self) -> Option<(Duration, Duration)> {
        let id = self.job_id.clone();
        let t = tokio::task::spawn_blocking(move || jobs::time_left(&id))
            .await
            .ok()?;
        match t {
            Ok(Some(t)) => {
                let left = Duration::from_secs(t.left);
                let limit = Duration::from_secs(t.limit);
                let now = Instant::now();
                *lock(&self.end) = now.checked_add(left);
                if let Some(start) = now.checked_sub(limit.saturating_sub(left)) {
                    *lock(&self.job_start) = Some(start);
                }
                Some((left, limit))
            }
            Ok(None) => None,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read this job's time left from SLURM");
                None
            }
        }
    }

    fn seen(&self) -> Seen {
        match EndpointRecord::read(&self.dir).ok().flatten() {
            Some(ep) if ep.job_id.as_deref() == Some(self.job_id.as_str()) => Seen::Mine,
            Some(ep) if ep.generation > self.generation => Seen::Newer(ep),
            _ => Seen::Other,
        }
    }

    /// `endpoint.json` when it names a newer generation than this job's.
    pub(super) fn newer_endpoint(&self) -> Option<EndpointRecord> {
        match self.seen() {
            Seen::Newer(ep) => Some(ep),
            _ => None,
        }
    }

    /// How this job's end was recorded by someone else (its predecessor cancelled it, or
    /// took the endpoint back from it).
    fn retired(&self) -> Option<String> {
        Chain::read(&self.dir)
            .ok()
            .flatten()?
            .job(&self.job_id)?
            .ended
            .as_ref()
            .map(|e| e.how.clone())
    }
}
