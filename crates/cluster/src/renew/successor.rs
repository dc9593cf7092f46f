//! Renewal: submitting the successor when it is time, following it through SLURM's queue
//! and its loading, cancelling one that is not ready by its deadline, and trying again —
//! with this job's own config — at a time chosen from the time left.

use super::submit::{submit_successor, Submitted};
use super::{counters, Member};
use crate::slurm::chain::{self, Chain, ChainJob, RenewPolicy, RenewalNote, Why};
use crate::slurm::jobs;
use llmgw_core::config::renewal::try_time;
use llmgw_core::state;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// The first retry after a lost successor waits this long (when the time left allows);
/// each further one twice as long, up to [`RETRY_MAX`].
const RETRY_FIRST: Duration = Duration::from_secs(5);
const RETRY_MAX: Duration = Duration::from_secs(60);
/// While a successor runs (loads) or was just cancelled, SLURM is asked this often.
const FAST_QUERY: Duration = Duration::from_secs(2);
/// When nothing can be submitted (`renew_max` reached, …), look again after this long.
const NOT_NOW: Duration = Duration::from_secs(60);

/// The renewal's state, kept by the watch loop.
#[derive(Default)]
pub(super) struct Renewal {
    /// No submission before this (a retry's time).
    retry_at: Option<Instant>,
    /// Successors lost so far.
    failures: u32,
    /// The successor's state as last logged.
    note: String,
    /// Why nothing is submitted (logged once).
    why_not: Option<String>,
    /// The last successor lost, in a sentence.
    last_lost: Option<String>,
    /// The successor being followed (its loss is noticed even when someone else — `status`,
    /// the job itself — recorded its end first).
    following: Option<String>,
    /// The successor being followed, and when it was first seen running.
    running: Option<(String, Instant)>,
    /// Successors sent SIGTERM at their deadline, and when to `scancel` them if they
    /// are still there.
    cancelled: Vec<(String, Instant)>,
}

impl Renewal {
    pub(super) fn query_every(&self) -> Duration {
        if self.running.is_some() || !self.cancelled.is_empty() {
            FAST_QUERY
        } else {
            super::watch::QUERY_EVERY
        }
    }

    pub(super) fn successor_note(&self) -> &str {
        &self.note
    }

    pub(super) fn last_lost(&self) -> Option<&str> {
        self.last_lost.as_deref()
    }

    pub(super) fn why_not(&self) -> Option<&str> {
        self.why_not.as_deref()
    }
}

/// When to try again after the `failures`-th lost successor: 5 s, 10 s, 20 s … (at most a
/// minute), but never so late that one more try (`per_try`) no longer fits in the time
/// left before this job drains (`left` − `margin`): then at once.
pub(super) fn retry_delay(
    failures: u32,
    left: Duration,
    margin: Duration,
    per_try: Duration,
) -> Duration {
    let doublings = failures.saturating_sub(1).min(8);
    let backoff = RETRY_FIRST.saturating_mul(1 << doublings).min(RETRY_MAX);
    let latest = left.saturating_sub(margin).saturating_sub(per_try);
    backoff.min(latest / 2)
}

impl Member {
    /// The chain's successor of this job, if there is one (not ended, newer).
    pub(super) fn successor(&self) -> Option<ChainJob> {
        Chain::read(&self.dir)
            .ok()
            .flatten()
            .and_then(|c| c.successor().cloned())
            .filter(|s| s.generation > self.generation)
    }

    /// One renewal step: follow a successor that exists, or submit one when it is time.
    pub(super) async fn renew(
        &self,
        policy: RenewPolicy,
        (left, limit): (Duration, Duration),
        r: &mut Renewal,
    ) {
        self.finish_cancels(r).await;
        if let Some(s) = self.successor() {
            r.following = Some(s.job.job_id.clone());
            self.follow(policy, &s, r).await;
            return;
        }
        if let Some(id) = r.following.take() {
            // It ended, and its end was recorded elsewhere before this job looked.
            let how = Chain::read(&self.dir)
                .ok()
                .flatten()
                .filter(|c| c.current == self.generation && !c.stopping)
                .and_then(|c| c.job(&id).and_then(|j| j.ended.clone()))
                .map(|e| e.how);
            if let Some(how) = how {
                let _ = std::fs::remove_file(self.dir.join(chain::SUCCESSOR_BACKENDS_FILE));
                self.lost(r, format!("successor job {id}: {how}"), Some(policy))
                    .await;
                return;
            }
        }
        counters::SUCCESSOR.store(0, Ordering::Relaxed);
        r.running = None;
        let before = policy.renew_before(Some(limit));
        if left > before || r.retry_at.is_some_and(|t| Instant::now() < t) {
            return;
        }
        if let Some(why) = self.idle_renewal_note() {
            if r.why_not.as_deref() != Some(why.as_str()) {
                tracing::info!("renewal: no successor submitted: {why}");
            }
            // Looked at again soon: a request may come.
            r.why_not = Some(why);
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
                r.following = Some(job_id.clone());
                r.retry_at = None;
                r.why_not = None;
                let retry = if r.failures > 0 {
                    format!(" (try {} after a lost successor)", r.failures + 1)
                } else {
                    String::new()
                };
                tracing::info!(
                    successor = %job_id,
                    generation,
                    seconds_left = left.as_secs(),
                    "renewal: submitted successor job {job_id} (generation {generation}){retry}; it takes over once ready"
                );
                if r.failures > 0 {
                    self.update_note(move |n| {
                        n.retry_unix_ms = None;
                        n.retried_with = Some(job_id);
                    })
                    .await;
                }
            }
            Ok(Ok(Submitted::Not(why))) => {
                if r.why_not.as_deref() != Some(why.as_str()) {
                    tracing::info!("renewal: no successor submitted: {why}");
                    let note = RenewalNote {
                        job: self.job_id.clone(),
                        what: format!("no successor submitted: {why}"),
                        at: state::now_rfc3339(),
                        failures: r.failures,
                        retry_unix_ms: None,
                        retried_with: None,
                    };
                    self.set_note(note).await;
                    r.why_not = Some(why);
                }
                r.retry_at = Some(Instant::now() + NOT_NOW);
            }
            Ok(Err(e)) => {
                let what = format!("cannot submit the successor: {e:#}");
                self.lost(r, what, Some(policy)).await;
            }
            Err(e) => tracing::error!(error = %e, "renewal task failed"),
        }
    }

    /// Follows the successor: its pending reason, its loading and deadline, or its end.
    async fn follow(&self, policy: RenewPolicy, s: &ChainJob, r: &mut Renewal) {
        let id = s.job.job_id.clone();
        let q = id.clone();
        // When SLURM does not answer, look again next time.
        let Ok(Ok(info)) = tokio::task::spawn_blocking(move || jobs::query(&q)).await else {
            return;
        };
        match &info {
            Some(i) if i.is_pending() => {
                counters::SUCCESSOR.store(1, Ordering::Relaxed);
                r.running = None;
                let text = format!("pending ({})", i.reason.as_deref().unwrap_or("queued"));
                self.log_successor(s, text, r);
            }
            Some(i) if i.is_running() => {
                counters::SUCCESSOR.store(2, Ordering::Relaxed);
                let now = Instant::now();
                let since = match &r.running {
                    Some((j, t)) if *j == id => *t,
                    _ => {
                        r.running = Some((id.clone(), now));
                        now
                    }
                };
                let timeout = policy.handover_timeout(self.load_time());
                let text = format!(
                    "running on {}; loading (handover_timeout {} s)",
                    i.node.as_deref().unwrap_or("?"),
                    timeout.as_secs()
                );
                self.log_successor(s, text, r);
                if now.saturating_duration_since(since) >= timeout {
                    let what = format!(
                        "successor job {id} was not ready within handover_timeout ({} s) of starting; cancelled",
                        timeout.as_secs()
                    );
                    self.cancel_successor(&id, timeout, r).await;
                    self.lost(r, what, Some(policy)).await;
                }
            }
            _ => {
                let how = info.map_or_else(
                    || "gone from the queue before it was ready".to_string(),
                    |i| format!("{} before it was ready", i.describe()),
                );
                let (dir, job) = (self.dir.clone(), id.clone());
                // First account wins: a `restart` that replaced it, or the job itself,
                // may have said more.
                let recorded = tokio::task::spawn_blocking(move || {
                    Chain::update(&dir, |c| {
                        c.end(&job, how.clone(), None);
                        c.job(&job)
                            .and_then(|j| j.ended.as_ref())
                            .map_or(how, |e| e.how.clone())
                    })
                })
                .await;
                let how = match recorded {
                    Ok(Ok(h)) => h,
                    _ => "ended before it was ready".into(),
                };
                let _ = std::fs::remove_file(self.dir.join(chain::SUCCESSOR_BACKENDS_FILE));
                self.lost(r, format!("successor job {id}: {how}"), Some(policy))
                    .await;
            }
        }
    }

    fn log_successor(&self, s: &ChainJob, text: String, r: &mut Renewal) {
        if text != r.note {
            tracing::info!(successor = %s.job.job_id, generation = s.generation, "successor job {} {text}", s.job.job_id);
            r.note = text;
        }
    }

    /// Ends a successor that missed its deadline: recorded first (so it will not publish
    /// itself), then SIGTERM to its gateway, which drains and exits 0 (COMPLETED); a plain
    /// `scancel` follows if it is still there after its grace.
    async fn cancel_successor(&self, id: &str, timeout: Duration, r: &mut Renewal) {
        let (dir, job, me) = (self.dir.clone(), id.to_string(), self.job_id.clone());
        let how = format!(
            "cancelled by job {me}: not ready within handover_timeout ({} s) of starting",
            timeout.as_secs()
        );
        let _ = tokio::task::spawn_blocking(move || {
            let r = Chain::update(&dir, |c| c.end(&job, how, None));
            let _ = std::fs::remove_file(dir.join(chain::SUCCESSOR_BACKENDS_FILE));
            if jobs::cancel(&job, Some("TERM")).is_err() {
                let _ = jobs::cancel(&job, None);
            }
            r
        })
        .await;
        let hard = Instant::now() + self.grace + Duration::from_secs(15);
        r.cancelled.push((id.to_string(), hard));
        r.running = None;
    }

    /// A successor sent SIGTERM that is still there after its grace is cancelled outright.
    async fn finish_cancels(&self, r: &mut Renewal) {
        let now = Instant::now();
        let due: Vec<String> = r
            .cancelled
            .iter()
            .filter(|(_, t)| now >= *t)
            .map(|(id, _)| id.clone())
            .collect();
        r.cancelled.retain(|(_, t)| now < *t);
        for id in due {
            let _ = tokio::task::spawn_blocking(move || match jobs::query(&id) {
                Ok(Some(i)) if i.is_active() => {
                    tracing::warn!(job = %id, "cancelled successor job {id} is still {}; scancel", i.describe());
                    let _ = jobs::cancel(&id, None);
                }
                _ => {}
            })
            .await;
        }
    }

    /// A successor was lost (ended, missed its deadline, could not be submitted, or died
    /// after taking over): note it for `status` and schedule the next try from the time
    /// left.
    pub(super) async fn lost(&self, r: &mut Renewal, what: String, policy: Option<RenewPolicy>) {
        counters::RENEW_FAILURES.fetch_add(1, Ordering::Relaxed);
        counters::SUCCESSOR.store(0, Ordering::Relaxed);
        r.failures = r.failures.saturating_add(1);
        r.following = None;
        r.running = None;
        r.note.clear();
        let retry_unix_ms = match policy {
            Some(p) => {
                let per_try = try_time(Some(p.handover_timeout(self.load_time())));
                let margin = chain::exit_margin(self.grace);
                let delay = match self.left() {
                    Some(left) => retry_delay(r.failures, left, margin, per_try),
                    None => retry_delay(r.failures, Duration::MAX, margin, per_try),
                };
                r.retry_at = Some(Instant::now() + delay);
                let fits = self
                    .left()
                    .map(|l| l.saturating_sub(margin) >= delay.saturating_add(per_try));
                let warning = match fits {
                    Some(false) => "; it may not be ready before this job drains",
                    _ => "",
                };
                tracing::warn!(
                    failures = r.failures,
                    retry_in_secs = delay.as_secs(),
                    "renewal: {what}; submitting another with this job's config in {} s{warning}",
                    delay.as_secs()
                );
                Some(state::now_unix_ms().saturating_add(delay.as_millis() as u64))
            }
            None => {
                tracing::warn!("{what}; [slurm] renew is off, so no other successor is submitted");
                None
            }
        };
        let note = RenewalNote {
            job: self.job_id.clone(),
            what: what.clone(),
            at: state::now_rfc3339(),
            failures: r.failures,
            retry_unix_ms,
            retried_with: None,
        };
        self.set_note(note).await;
        r.last_lost = Some(what);
    }

    async fn set_note(&self, note: RenewalNote) {
        let dir = self.dir.clone();
        let _ =
            tokio::task::spawn_blocking(move || Chain::update(&dir, |c| c.renewal = Some(note)))
                .await;
    }

    async fn update_note(&self, f: impl FnOnce(&mut RenewalNote) + Send + 'static) {
        let (dir, me) = (self.dir.clone(), self.job_id.clone());
        let _ = tokio::task::spawn_blocking(move || {
            Chain::update(&dir, |c| {
                if let Some(n) = c.renewal.as_mut().filter(|n| n.job == me) {
                    f(n);
                }
            })
        })
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_come_from_the_time_left() {
        let s = Duration::from_secs;
        let margin = s(35);
        let per_try = s(44);
        // Plenty of time: 5 s, 10 s, 20 s, … at most a minute.
        assert_eq!(retry_delay(1, s(3600), margin, per_try), s(5));
        assert_eq!(retry_delay(2, s(3600), margin, per_try), s(10));
        assert_eq!(retry_delay(9, s(3600), margin, per_try), s(60));
        assert_eq!(retry_delay(u32::MAX, s(3600), margin, per_try), s(60));
        // Little time: early enough that one more try still fits.
        assert_eq!(
            retry_delay(3, s(100), margin, per_try),
            Duration::from_millis(10_500)
        );
        // None left: at once.
        assert_eq!(retry_delay(1, s(60), margin, per_try), Duration::ZERO);
        assert_eq!(
            retry_delay(1, Duration::ZERO, margin, per_try),
            Duration::ZERO
        );
    }
}
