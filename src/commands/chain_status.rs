//! The chain part of `llmgw status`: which generation is current, when it renews, what
//! its successor is doing (with SLURM's pending reason), and the last handover.

use llmgw_cluster::slurm::chain::{self, Chain, ChainJob, Handover, RenewPolicy};
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
        let c = Chain::read(dir).ok().flatten()?;
        let renew = Config::load(current_config)
            .ok()
            .and_then(|cfg| RenewPolicy::from_config(&cfg.config.slurm));
        let successor = c.successor().cloned().map(|job| {
            let info = jobs::query(&job.job.job_id).ok().flatten();
            let phase = phase(dir, info.as_ref());
            Successor { job, info, phase }
        });
        let renew_before = renew.map(|p| p.renew_before(limit));
        let next_renewal = match (renew_before, left, &successor) {
            (Some(b), Some(l), None) if !c.stopping => Some(l.saturating_sub(b)),
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
        })
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
        if let Some(s) = &self.successor {
            out.push_str(&format!(
                "  successor {}: job {} (generation {}, {})\n",
                s.phase,
                s.job.job.job_id,
                s.job.generation,
                why(s.job.why),
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
