//! Stop when idle (`[slurm] idle_stop`): what the request path tells the chain (the time
//! of the last request, [`touch`]) and what a job that stopped for idleness leaves in the
//! state directory (`idle.json`, [`IdleStop`]) so that `status` can say so, and what it
//! saved.
//!
//! Why a process-wide atomic and not a field of the gateway's state: the request path
//! must stay lock-free and the chain (this crate) must not know HTTP; one relaxed load per
//! request, and a store at most ten times a second, is all it costs.

use llmgw_core::state;
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

/// The record of a job that stopped because nobody used it.
pub const IDLE_FILE: &str = "idle.json";

/// Unix ms of the last request this process saw (0: none yet).
static LAST_REQUEST_MS: AtomicU64 = AtomicU64::new(0);

/// Notes a request now. Stores at most ten times a second, so that requests on many cores
/// do not keep writing the same cache line.
pub fn touch() {
    let now = state::now_unix_ms();
    if now.saturating_sub(LAST_REQUEST_MS.load(Ordering::Relaxed)) >= 100 {
        LAST_REQUEST_MS.store(now, Ordering::Relaxed);
    }
}

/// Unix ms of the last request (0: none yet).
pub fn last_request_ms() -> u64 {
    LAST_REQUEST_MS.load(Ordering::Relaxed)
}

/// `idle.json`: a job ended because it had no request for `idle_stop`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct IdleStop {
    pub job_id: String,
    pub generation: u64,
    /// The last request (or, without any, when the job became ready).
    pub idle_since: String,
    pub idle_since_unix_ms: u64,
    pub stopped_at: String,
    pub stopped_unix_ms: u64,
    pub idle_stop_secs: u64,
    /// Time left before the job's limit when it stopped.
    pub time_left_secs: Option<u64>,
    /// GPUs the job held (all nodes).
    pub gpus: u64,
    /// With renewal the chain would have gone on past the limit.
    pub renew: bool,
}

impl IdleStop {
    pub fn read(dir: &Path) -> Option<IdleStop> {
        let text = std::fs::read(dir.join(IDLE_FILE)).ok()?;
        serde_json::from_slice(&text).ok()
    }

    pub fn write(&self, dir: &Path) -> std::io::Result<()> {
        let body = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
        state::write_atomic(&dir.join(IDLE_FILE), &body, 0o600)
    }

    /// Removes the record (a new job starts: the gateway is no longer stopped).
    pub fn clear(dir: &Path) {
        let _ = std::fs::remove_file(dir.join(IDLE_FILE));
    }

    /// Job hours not used so far thanks to the stop, at `now_ms`: the time since it
    /// stopped, up to the time limit unless the chain renews (then it would still run).
    pub fn hours_saved(&self, now_ms: u64) -> f64 {
        let mut secs = now_ms.saturating_sub(self.stopped_unix_ms) / 1000;
        if !self.renew {
            if let Some(left) = self.time_left_secs {
                secs = secs.min(left);
            }
        }
        secs as f64 / 3600.0
    }
}

/// GPUs this job holds over all its nodes: this node's (from SLURM's environment) times
/// the number of nodes.
pub fn job_gpus() -> u64 {
    let here = crate::placement::visible_gpus().len() as u64;
    let nodes: u64 = std::env::var("SLURM_JOB_NUM_NODES")
        .ok()
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(1);
    here.saturating_mul(nodes.max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hours_saved_stop_at_the_limit_unless_renewing() {
        let mut s = IdleStop {
            job_id: "1".into(),
            generation: 1,
            idle_since: String::new(),
            idle_since_unix_ms: 0,
            stopped_at: String::new(),
            stopped_unix_ms: 1_000_000,
            idle_stop_secs: 60,
            time_left_secs: Some(1800),
            gpus: 2,
            renew: false,
        };
        let later = 1_000_000 + 3_600_000;
        assert_eq!(s.hours_saved(later), 0.5);
        s.renew = true;
        assert_eq!(s.hours_saved(later), 1.0);
        assert_eq!(s.hours_saved(0), 0.0);
    }
}
