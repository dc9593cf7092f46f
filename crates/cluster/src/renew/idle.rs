//! Stop when idle (`[slurm] idle_stop`): the current job that has had no request for that
//! long ends its chain — it records why (`idle.json`, the chain's end), cancels a
//! successor that renewal may have submitted (an idle chain ends instead of renewing), and
//! drains, so its job ends COMPLETED and frees its GPUs. `llmgw connect` with
//! `on_demand = true` starts a new chain on the next request.

use super::{lock, Member};
use crate::idle::{self, IdleStop};
use crate::slurm::chain::Chain;
use crate::slurm::jobs;
use llmgw_core::state;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Requests running now (they keep the job busy however long a stream lasts).
pub type InFlight = Arc<dyn Fn() -> u64 + Send + Sync>;

impl Member {
    /// True when `[slurm] idle_stop` is set.
    pub fn stops_when_idle(&self) -> bool {
        self.idle_stop.is_some()
    }

    /// How long this job has had no request (since it became current when none came).
    pub(super) fn idle_for(&self) -> Duration {
        let since = idle::last_request_ms().max(self.published_ms.load(Ordering::SeqCst));
        Duration::from_millis(state::now_unix_ms().saturating_sub(since))
    }

    /// Renewal waits while the gateway has been idle for half of `idle_stop`: an unused
    /// chain should end, not queue for more GPUs.
    pub(super) fn idle_renewal_note(&self) -> Option<String> {
        let limit = self.idle_stop?;
        (self.idle_for() >= limit / 2).then(|| {
            format!(
                "the gateway is idle (no request for half of idle_stop = {} s): an idle chain ends instead of renewing",
                limit.as_secs()
            )
        })
    }

    /// Once current: every few seconds, a request in flight counts as activity; after
    /// `idle_stop` without any, the chain ends here. Returns when it stops the job, when
    /// the job is no longer current (handed over), or at shutdown.
    pub async fn watch_idle(self: Arc<Self>, in_flight: InFlight, shutdown: CancellationToken) {
        let Some(limit) = self.idle_stop else { return };
        super::counters::IDLE_STOP_SECS.store(limit.as_secs(), Ordering::Relaxed);
        let tick = (limit / 12).clamp(Duration::from_secs(1), Duration::from_secs(10));
        loop {
            tokio::select! {
                _ = tokio::time::sleep(tick) => {}
                _ = shutdown.cancelled() => return,
            }
            if in_flight() > 0 {
                idle::touch();
                continue;
            }
            if self.idle_for() < limit {
                continue;
            }
            let me = self.clone();
            let stopped = tokio::task::spawn_blocking(move || me.stop_idle(limit))
                .await
                .unwrap_or(Ok(false));
            match stopped {
                Ok(true) => {
                    shutdown.cancel();
                    return;
                }
                Ok(false) => return,
                Err(e) => tracing::warn!(error = %e, "cannot record the idle stop; trying again"),
            }
        }
    }

    /// Ends the chain for idleness under the chain lock: unless `stop` began or another
    /// generation is current, writes `idle.json`, cancels a successor, and notes this
    /// job's end. False when it is not this job's to stop.
    fn stop_idle(&self, limit: Duration) -> Result<bool, crate::slurm::chain::ChainError> {
        let since_ms = idle::last_request_ms().max(self.published_ms.load(Ordering::SeqCst));
        let left = self.left().map(|l| l.as_secs());
        let how = format!(
            "idle: no request for {} s (since {}); stopped to free its GPUs",
            limit.as_secs(),
            state::rfc3339(since_ms / 1000)
        );
        let stopped = Chain::update(&self.dir, |c| {
            if c.stopping || c.current != self.generation {
                return false;
            }
            let successors: Vec<String> = c
                .unended()
                .filter(|j| j.generation > self.generation)
                .map(|j| j.job.job_id.clone())
                .collect();
            for id in successors {
                if let Err(e) = jobs::cancel(&id, None) {
                    tracing::warn!(job = %id, error = %e, "cannot cancel the successor of an idle chain");
                }
                c.end(&id, "cancelled: the chain stopped idle", None);
            }
            let now = state::now_unix_ms();
            let rec = IdleStop {
                job_id: self.job_id.clone(),
                generation: self.generation,
                idle_since: state::rfc3339(since_ms / 1000),
                idle_since_unix_ms: since_ms,
                stopped_at: state::rfc3339(now / 1000),
                stopped_unix_ms: now,
                idle_stop_secs: limit.as_secs(),
                time_left_secs: left,
                gpus: idle::job_gpus(),
                renew: self.renews,
            };
            if let Err(e) = rec.write(&self.dir) {
                tracing::warn!(error = %e, "cannot write {}", idle::IDLE_FILE);
            }
            true
        })?;
        if stopped {
            tracing::info!(idle_secs = self.idle_for().as_secs(), "{how}; draining now");
            *lock(&self.how) = how;
        }
        Ok(stopped)
    }
}
