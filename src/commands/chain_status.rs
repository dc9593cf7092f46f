//! The chain part of `llmgw status`: which generation is current, when it renews, what
//! its successor is doing (with SLURM's pending reason), a successor it lost and when it
//! tries again, why the chain ended, and the last handover. Jobs that SLURM no longer
//! runs but that never recorded their end (killed) are recorded here.

use llmgw_cluster::slurm::chain::{self, Chain, ChainJob, Handover, RenewPolicy, RenewalNote};
use llmgw_cluster::slurm::jobs::{self, JobInfo};
use llmgw_cluster::supervise::{BackendState, BackendsFile};
use llmgw_core::config::Config;
use serde_json::{json, Value};
use std::path::Path;
use std::time::Duration;

/// What `status` shows about the chain.
pub struct ChainStatus {
    pub generation: u64,
    pub renew: Option<RenewPolicy>,
    /// Time until the successor is submitted (zero: due now); `None` without renewal, with
    /// a successor already there, or without a known time limit.
    pub next_renewal: Option<Duration>,
    pub renew_before: Option<Duration>,
    pub successor: Option<Successor>,
    pub last_handover: Option<Handover>,
    pub handovers: usize,
    pub stopping: bool,
    /// The current job's renewal trouble (a lost successor, when it tries again).
    pub note: Option<RenewalNote>,
    /// The chain has ended: the last current job ended (how), and no successor is left.
    pub ended: Option<(ChainJob, String)>,
    /// Jobs just found gone without an end record (id, what SLURM says).
    pub vanished: Vec<(String, String)>,
}

pub struct Successor {
    pub job: ChainJob,
    pub info: Option<JobInfo>,
    /// `pending (JobHeldUser)`, `starting`, `loading backends (local)`, `ready`, or the
    /// SLURM state of a successor that ended before it was ready.
    pub phase: String,
}

impl ChainStatus {
    /// `None` when the state directory has no chain record (a gateway from before chains).
    /// `current` is what SLURM says of the current job; `left`/`limit` its time.
    pub fn read(
        dir: &Path,
        current_config: &Path,
        left: Option<Duration>,
        limit: Option<Duration>,
    ) -> Option<ChainStatus> {
        let stopping = Chain::read(dir).ok().flatten()?.stopping;
        // A job killed outright recorded nothing: say so now (`stop` records its own).
        let vanished = if stopping {
            Vec::new()
        } else {
            chain::record_vanished(dir, |_| true).unwrap_or_default()
        };
        let c = Chain::read(dir).ok().flatten()?;
        let current = c.current_job();
        let note = c
            .renewal
            .clone()
            .filter(|n| current.is_some_and(|j| j.job.job_id == n.job));
        // Every job ended: the chain is over, for the reason the last current job (or,
        // if none ever became current, the newest) gave.
        let ended = match c.unended().next() {
            Some(_) => None,
            None => current
                .or(c.jobs.iter().max_by_key(|j| j.generation))
                .and_then(|j| j.ended.as_ref().map(|e| (j.clone(), e.how.clone()))),
        };
        let renew = Config::load(current_config).ok().and_then(|cfg| {
            RenewPolicy::from_config(&cfg.config.slurm, cfg.config.server.shutdown_grace.0)
        });
        let successor = c.successor().cloned().map(|job| {
            let info = jobs::query(&job.job.job_id).ok().flatten();
            let phase = phase(dir, info.as_ref());
            Successor { job, info, phase }
        });
        let renew_before = renew.map(|p| p.renew_before(limit));
        let next_renewal = match (renew_before, left, &successor, &ended) {
            (Some(b), Some(l), None, None) if !c.stopping => Some(l.saturating_sub(b)),
            _ => None,
        };
        Some(ChainStatus {
            generation: c.current.max(1),
            renew,
            next_renewal,
            renew_before,
            successor,
            last_handover: c.handovers.last().cloned(),
            handovers: c.handovers.len(),
            stopping: c.stopping,
            note,
            ended,
            vanished,
        })
    }

    /// When the next try after a lost successor is due, if one is.
    fn retry_in(&self) -> Option<(u64, Duration)> {
        let at = self.note.as_ref()?.retry_unix_ms?;
        let left = at.saturating_sub(llmgw_core::state::now_unix_ms());
        Some((at, Duration::from_millis(left)))
    }

    pub fn json(&self) -> Value {
        json!({
            "generation": self.generation,
            "renew": self.renew.is_some(),
            "renew_before_secs": self.renew_before.filter(|_| self.renew.is_some()).map(|d| d.as_secs()),
            "next_renewal_in_secs": self.next_renewal.map(|d| d.as_secs()),
            "stopping": self.stopping,
            "successor": self.successor.as_ref().map(|s| json!({
                "job_id": s.job.job.job_id,
                "generation": s.job.generation,
                "why": s.job.why,
                "state": s.info.as_ref().map(|i| i.state.clone()),
                "reason": s.info.as_ref().and_then(|i| i.reason.clone()),
                "node": s.info.as_ref().and_then(|i| i.node.clone()),
                "phase": s.phase,
                "log": s.job.job.log,
            })),
            "handovers": self.handovers,
            "last_handover": self.last_handover,
            "renewal": self.note.as_ref().map(|n| json!({
                "what": n.what,
                "at": n.at,
                "failures": n.failures,
                "retry_at": n.retry_unix_ms.map(|ms| llmgw_core::state::rfc3339(ms / 1000)),
                "retry_in_secs": self.retry_in().map(|(_, d)| d.as_secs()),
                "retried_with": n.retried_with,
            })),
            "ended": self.ended.as_ref().map(|(j, how)| json!({
                "job_id": j.job.job_id,
                "generation": j.generation,
                "how": how,
            })),
            "recorded_gone": self.vanished.iter().map(|(id, what)| json!({"job_id": id, "slurm": what})).collect::<Vec<_>>(),
        })
    }

    /// Lines for the text view (each indented by two spaces, ending in a newline).
    pub fn text(&self) -> String {
        let mut out = String::new();
        let renewal = match (&self.renew, self.next_renewal, self.renew_before) {
            (None, _, _) => {
                "off ([slurm] renew = true keeps the gateway up past its time limit)".to_string()
            }
            (Some(_), _, _) if self.stopping => "off (stopping)".to_string(),
            (Some(_), _, _) if self.ended.is_some() => "over (the chain ended)".to_string(),
            (Some(_), _, _) if self.successor.is_none() && self.retry_in().is_some() => {
                let (at, d) = self.retry_in().unwrap_or_default();
                format!(
                    "successor lost; retrying at {} (in {})",
                    llmgw_core::state::rfc3339(at / 1000),
                    super::clock(d)
                )
            }
            (Some(_), Some(d), Some(b)) if d.is_zero() => {
                format!("due now ({} before the limit)", super::clock(b))
            }
            (Some(_), Some(d), Some(b)) => format!(
                "in {} ({} before the limit)",
                super::clock(d),
                super::clock(b)
            ),
            (Some(_), _, _) if self.successor.is_some() => "successor submitted".to_string(),
            (Some(_), _, _) => "when the time limit is known".to_string(),
        };
        out.push_str(&format!(
            "  chain:    generation {}; renewal {renewal}\n",
            self.generation
        ));
        if let Some(n) = &self.note {
            let retried = n
                .retried_with
                .as_ref()
                .map(|j| format!("; retried with job {j}"))
                .unwrap_or_default();
            out.push_str(&format!(
                "  renewal trouble ({} lost so far): {} at {}{retried}\n",
                n.failures, n.what, n.at
            ));
        }
        if let Some(s) = &self.successor {
            out.push_str(&format!(
                "  successor {}: job {} (generation {}, {})\n",
                s.phase,
                s.job.job.job_id,
                s.job.generation,
                why(s.job.why),
            ));
        }
        if let Some((j, how)) = &self.ended {
            out.push_str(&format!(
                "  chain ended: job {} (generation {}): {how}\n",
                j.job.job_id, j.generation
            ));
        }
        for (id, what) in &self.vanished {
            out.push_str(&format!(
                "  job {id} ended without recording it ({what}); recorded now\n"
            ));
        }
        if let Some(h) = &self.last_handover {
            out.push_str(&format!("  last handover: {}\n", handover_line(h)));
        }
        out
    }
}

fn why(w: chain::Why) -> &'static str {
    match w {
        chain::Why::Start => "start",
        chain::Why::Renew => "renewal",
        chain::Why::Restart => "restart",
    }
}

/// `job 30 → job 31 at 2026-…Z: ready → old job gone in 5.3 s, 26 requests forwarded`.
pub fn handover_line(h: &Handover) -> String {
    if let Some(why) = &h.taken_back {
        return format!(
            "job {} → job {} at {}: did not hold ({why}); job {} took the endpoint back {:.1} s later",
            h.from_job,
            h.to_job,
            h.at,
            h.from_job,
            h.exit_ms as f64 / 1000.0
        );
    }
    if let Some(note) = &h.recorded_by_successor {
        return format!("job {} → job {} at {}: {note}", h.from_job, h.to_job, h.at);
    }
    format!(
        "job {} → job {} at {}: old job gone {:.1} s after the new one was ready, {} requests forwarded",
        h.from_job,
        h.to_job,
        h.at,
        h.exit_ms as f64 / 1000.0,
        h.forwarded
    )
}

/// What a successor job is doing: SLURM's view, then its backends' (its own status file).
fn phase(dir: &Path, info: Option<&JobInfo>) -> String {
    match info {
        None => "gone from the queue".into(),
        Some(i) if i.is_pending() => {
            format!("pending ({})", i.reason.as_deref().unwrap_or("queued"))
        }
        Some(i) if i.is_running() => {
            let node = i.node.as_deref().unwrap_or("?");
            let file = BackendsFile::read_path(&dir.join(chain::SUCCESSOR_BACKENDS_FILE));
            match file {
                None => format!("starting on {node}"),
                Some(f) => {
                    let loading: Vec<&str> = f
                        .backends
                        .iter()
                        .filter(|b| b.state != BackendState::Ready)
                        .map(|b| b.name.as_str())
                        .collect();
                    if loading.is_empty() {
                        format!("ready on {node}, taking over")
                    } else {
                        format!("loading backends on {node} ({})", loading.join(", "))
                    }
                }
            }
        }
        Some(i) => format!("{} before it was ready", i.describe()),
    }
}
