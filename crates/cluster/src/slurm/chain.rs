//! The chain record (`chain.json`): a gateway that outlives its job is a chain of jobs,
//! one *generation* after another. `start` writes generation 1; a renewing gateway or
//! `restart` adds its successor; the successor, once ready, becomes `current`; `stop`
//! sets `stopping` and cancels every job still listed as active.
//!
//! Several processes on several nodes write this file (the launcher on the login node, the
//! current gateway, its successor), so every change is a read-modify-write under an
//! exclusive `flock` on `chain.lock` next to it; the file itself is replaced atomically,
//! so readers never need the lock. Like the rest of this module it knows nothing of the
//! gateway: it is files and SLURM job ids.

use super::JobRecord;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The chain record in the state directory.
pub const CHAIN_FILE: &str = "chain.json";
/// Locked (flock) around every change of `chain.json`.
pub const LOCK_FILE: &str = "chain.lock";
/// The successor's backends while it loads (`backends.json` is the current generation's).
pub const SUCCESSOR_BACKENDS_FILE: &str = "successor-backends.json";
/// Environment of a successor job: its generation and the job it takes over from.
pub const ENV_GENERATION: &str = "LLMGW_GENERATION";
pub const ENV_PREDECESSOR: &str = "LLMGW_PREDECESSOR";

/// Jobs and handovers kept in the record (older ones are dropped).
const KEEP_JOBS: usize = 32;
const KEEP_HANDOVERS: usize = 16;
/// Default `renew_before`, and its cap relative to the time limit.
const DEFAULT_RENEW_BEFORE: Duration = Duration::from_secs(20 * 60);
const DEFAULT_LINGER: Duration = Duration::from_secs(120);

/// Why a job of the chain was submitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Why {
    Start,
    Renew,
    Restart,
}

/// How a job of the chain ended, as far as llmgw knows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ended {
    /// RFC 3339 UTC.
    pub at: String,
    /// One line: "handed over to job 13", "time limit reached", "stopped", or SLURM's
    /// state for a job that never ran the gateway to its end.
    pub how: String,
    /// Seconds that were left of its time limit when it exited (the gateway's own record).
    #[serde(default)]
    pub time_left_secs: Option<u64>,
}

/// One job of the chain.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChainJob {
    pub generation: u64,
    pub why: Why,
    /// The job that was current when this one was submitted.
    #[serde(default)]
    pub predecessor: Option<String>,
    #[serde(flatten)]
    pub job: JobRecord,
    /// When it became the current generation.
    #[serde(default)]
    pub current_since: Option<String>,
    #[serde(default)]
    pub ended: Option<Ended>,
}

/// One handover, as the old job saw it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Handover {
    pub from_job: String,
    pub to_job: String,
    pub from_generation: u64,
    pub to_generation: u64,
    /// RFC 3339 UTC, when the successor became ready.
    pub at: String,
    /// The same in Unix milliseconds.
    #[serde(default)]
    pub ready_unix_ms: u64,
    /// Successor ready → the old job noticed (Unix ms differences; same clock on one node,
    /// NTP-close across nodes).
    pub noticed_ms: u64,
    /// Successor ready → the old job's own requests had finished.
    pub drained_ms: u64,
    /// Successor ready → the old job exited.
    pub exit_ms: u64,
    /// Requests that reached the old job after it noticed, forwarded to the successor.
    pub forwarded: u64,
    /// Set when the handover did not hold: the successor was lost within the grace period
    /// and the old job took the endpoint back (why).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub taken_back: Option<String>,
    /// Set when the successor, not the old job, recorded the handover (the old job ended
    /// without a word: it was killed); the old job's figures are then unknown (0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recorded_by_successor: Option<String>,
}

/// What the current generation's renewal is doing when it is not simply waiting for its
/// time: a successor it lost and when it tries again, or why it submits none. Written by
/// the current job (and cleared when another becomes current), read by `status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RenewalNote {
    /// The job that wrote it; shown only while that job is current.
    pub job: String,
    /// "successor job 12: CANCELLED before it was ready", "no successor submitted: …"
    pub what: String,
    /// RFC 3339 UTC, when it happened.
    pub at: String,
    /// Successors this job lost so far.
    pub failures: u32,
    /// When the next try is due (Unix ms); `None` once it was submitted, or when none
    /// will be.
    #[serde(default)]
    pub retry_unix_ms: Option<u64>,
    /// The job submitted as the retry.
    #[serde(default)]
    pub retried_with: Option<String>,
}

/// The whole record.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Chain {
    /// The gateway's name.
    pub name: String,
    /// The generation that is (or last was) current; 0 until the first one is ready.
    pub current: u64,
    /// Set by `stop`: no job may submit a successor or become current.
    pub stopping: bool,
    /// Oldest first.
    pub jobs: Vec<ChainJob>,
    /// Oldest first.
    pub handovers: Vec<Handover>,
    /// The current generation's renewal trouble, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renewal: Option<RenewalNote>,
}

/// A chain record that could not be read or changed.
#[derive(Debug, thiserror::Error)]
pub enum ChainError {
    #[error("cannot lock {path}: {source}")]
    Lock {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl Chain {
    /// The record, or `None` when there is none (a gateway started before chains, or by
    /// hand).
    pub fn read(dir: &Path) -> Result<Option<Chain>, ChainError> {
        let path = dir.join(CHAIN_FILE);
        match std::fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b)
                .map(Some)
                .map_err(|e| ChainError::Read {
                    path,
                    source: std::io::Error::other(e),
                }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(ChainError::Read { path, source }),
        }
    }

    /// Read-modify-write under the lock: `f` sees the record (a default one when there is
    /// none yet) and its result is returned. The record is written when `f` changed it.
    pub fn update<T>(dir: &Path, f: impl FnOnce(&mut Chain) -> T) -> Result<T, ChainError> {
        let _lock = lock(dir)?;
        let before = Chain::read(dir)?.unwrap_or_default();
        let mut chain = before.clone();
        let out = f(&mut chain);
        if chain != before {
            chain.trim();
            chain.write(dir)?;
        }
        Ok(out)
    }

    fn write(&self, dir: &Path) -> Result<(), ChainError> {
        let path = dir.join(CHAIN_FILE);
        let json = serde_json::to_vec_pretty(self).map_err(|e| ChainError::Write {
            path: path.clone(),
            source: std::io::Error::other(e),
        })?;
        llmgw_core::state::write_atomic(&path, &json, 0o600)
            .map_err(|source| ChainError::Write { path, source })
    }

    fn trim(&mut self) {
        // Never drop a job that has not ended: `stop` must still find it.
        while self.jobs.len() > KEEP_JOBS {
            match self.jobs.iter().position(|j| j.ended.is_some()) {
                Some(i) => {
                    self.jobs.remove(i);
                }
                None => break,
            }
        }
        let extra = self.handovers.len().saturating_sub(KEEP_HANDOVERS);
        self.handovers.drain(..extra);
    }

    pub fn job(&self, id: &str) -> Option<&ChainJob> {
        self.jobs.iter().find(|j| j.job.job_id == id)
    }

    pub fn job_mut(&mut self, id: &str) -> Option<&mut ChainJob> {
        self.jobs.iter_mut().find(|j| j.job.job_id == id)
    }

    /// The current generation's job.
    pub fn current_job(&self) -> Option<&ChainJob> {
        self.jobs.iter().find(|j| j.generation == self.current)
    }

    /// The next generation number.
    pub fn next_generation(&self) -> u64 {
        self.jobs
            .iter()
            .map(|j| j.generation)
            .max()
            .unwrap_or(0)
            .max(self.current)
            + 1
    }

    /// The successor: a job newer than the current one that has not ended (at most one is
    /// ever submitted at a time; the newest wins if a record says otherwise).
    pub fn successor(&self) -> Option<&ChainJob> {
        self.jobs
            .iter()
            .filter(|j| j.generation > self.current && j.ended.is_none())
            .max_by_key(|j| j.generation)
    }

    /// Jobs that have not ended, as far as the record knows (SLURM has the last word).
    pub fn unended(&self) -> impl Iterator<Item = &ChainJob> {
        self.jobs.iter().filter(|j| j.ended.is_none())
    }

    /// How many renewals count against `renew_max`: successors renewals submitted that
    /// took over or may still do so (a lost one does not count: it renewed nothing).
    pub fn renewals(&self) -> u64 {
        self.jobs
            .iter()
            .filter(|j| j.why == Why::Renew && (j.current_since.is_some() || j.ended.is_none()))
            .count() as u64
    }

    /// Marks a job ended (once; the first account wins).
    pub fn end(&mut self, id: &str, how: impl Into<String>, time_left_secs: Option<u64>) {
        if let Some(j) = self.job_mut(id) {
            if j.ended.is_none() {
                j.ended = Some(Ended {
                    at: llmgw_core::state::now_rfc3339(),
                    how: how.into(),
                    time_left_secs,
                });
            }
        }
    }

    /// Scripts and config copies no job that may still run refers to: safe to delete.
    pub fn unreferenced_files(&self, dir: &Path) -> Vec<PathBuf> {
        let live: Vec<&Path> = self
            .jobs
            .iter()
            .filter(|j| j.ended.is_none() || j.generation == self.current)
            .flat_map(|j| [j.job.script.as_path(), j.job.config_copy.as_path()])
            .collect();
        let Ok(rd) = std::fs::read_dir(dir) else {
            return Vec::new();
        };
        rd.filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(is_generation_file)
            })
            .filter(|p| !live.contains(&p.as_path()))
            .collect()
    }
}

/// `job.g7.sbatch`, `config.g7.toml`: the files `restart` writes per generation.
fn is_generation_file(name: &str) -> bool {
    let gen_part = |rest: &str, ext: &str| {
        rest.strip_suffix(ext)
            .and_then(|n| n.strip_prefix('g'))
            .is_some_and(|n| !n.is_empty() && n.chars().all(|c| c.is_ascii_digit()))
    };
    name.strip_prefix("job.")
        .is_some_and(|r| gen_part(r, ".sbatch"))
        || name
            .strip_prefix("config.")
            .is_some_and(|r| gen_part(r, ".toml"))
}

/// Per-generation file names for `restart`: (`config.gN.toml`, `job.gN.sbatch`).
pub fn generation_files(dir: &Path, generation: u64) -> (PathBuf, PathBuf) {
    (
        dir.join(format!("config.g{generation}.toml")),
        dir.join(format!("job.g{generation}.sbatch")),
    )
}

/// Holds `chain.lock` (flock) until dropped.
pub struct Lock(#[allow(dead_code)] std::fs::File);

/// Takes the chain's lock, waiting for other holders.
pub fn lock(dir: &Path) -> Result<Lock, ChainError> {
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join(LOCK_FILE);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(&path)
        .map_err(|source| ChainError::Lock {
            path: path.clone(),
            source,
        })?;
    file.lock()
        .map_err(|source| ChainError::Lock { path, source })?;
    Ok(Lock(file))
}

/// `[slurm] renew` with its effective timings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RenewPolicy {
    /// `renew_before` as configured, if it was.
    pub before: Option<Duration>,
    pub max: Option<u32>,
    pub linger: Duration,
    /// `handover_timeout` as configured, if it was (else derived from the load time).
    pub handover_timeout: Option<Duration>,
    /// The shortest `renew_before` with room for one retry (from the shutdown grace).
    pub min_before: Duration,
}

impl RenewPolicy {
    /// `None` unless `[slurm] renew = true`; `grace` is `[server] shutdown_grace`.
    pub fn from_config(
        slurm: &llmgw_core::config::SlurmConfig,
        grace: Duration,
    ) -> Option<RenewPolicy> {
        let handover_timeout = slurm.handover_timeout.as_ref().map(|d| d.get_ref().0);
        slurm.renew.then(|| RenewPolicy {
            before: slurm.renew_before.as_ref().map(|d| d.get_ref().0),
            max: slurm.renew_max,
            linger: slurm.handover_linger.map_or(DEFAULT_LINGER, |d| d.0),
            handover_timeout,
            min_before: llmgw_core::config::renewal::min_renew_before(grace, handover_timeout),
        })
    }

    /// How long before the end of a job with time limit `limit` its successor is
    /// submitted: as configured, else 20 minutes but at most a quarter of the limit — and
    /// never less than the room one retry needs ([`RenewPolicy::min_before`]).
    pub fn renew_before(&self, limit: Option<Duration>) -> Duration {
        match (self.before, limit) {
            (Some(b), _) => b,
            (None, Some(l)) => DEFAULT_RENEW_BEFORE.min(l / 4).max(self.min_before),
            (None, None) => DEFAULT_RENEW_BEFORE.max(self.min_before),
        }
    }

    /// The successor's deadline once it runs: as configured, else derived from this job's
    /// own load time.
    pub fn handover_timeout(&self, own_load: Duration) -> Duration {
        self.handover_timeout
            .unwrap_or_else(|| llmgw_core::config::renewal::default_handover_timeout(own_load))
    }
}

/// How long before its time limit a gateway starts draining when it has no successor to
/// hand over to: its shutdown grace plus 30 s, so it has exited (and SLURM records the
/// job COMPLETED) before the limit.
pub use llmgw_core::config::renewal::exit_margin;

/// Records an end for every job of the chain that SLURM no longer runs but the record
/// still lists as not ended (a gateway killed with SIGKILL, a node that died: nothing of
/// it wrote its end), among those `which` selects. SLURM is asked outside the lock; what was recorded
/// meanwhile wins. The jobs recorded, with what SLURM said.
pub fn record_vanished(
    dir: &Path,
    which: impl Fn(&ChainJob) -> bool,
) -> Result<Vec<(String, String)>, ChainError> {
    let Some(c) = Chain::read(dir)? else {
        return Ok(Vec::new());
    };
    let mut gone = Vec::new();
    for j in c.unended().filter(|j| which(j)) {
        let id = j.job.job_id.clone();
        let what = match super::jobs::query(&id) {
            Ok(Some(i)) if i.is_active() => continue,
            Ok(Some(i)) => format!("SLURM says {}", i.describe()),
            Ok(None) => "SLURM no longer knows it".to_string(),
            // SLURM did not answer: look again next time.
            Err(_) => continue,
        };
        gone.push((id, what));
    }
    if gone.is_empty() {
        return Ok(gone);
    }
    Chain::update(dir, |c| {
        gone.retain(|(id, _)| c.job(id).is_some_and(|j| j.ended.is_none()));
        for (id, what) in &gone {
            c.end(
                id,
                format!("ended without a word of its own ({what})"),
                None,
            );
        }
    })?;
    Ok(gone)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(generation: u64, id: &str) -> ChainJob {
        ChainJob {
            generation,
            why: if generation == 1 {
                Why::Start
            } else {
                Why::Renew
            },
            predecessor: None,
            job: JobRecord {
                job_id: id.into(),
                name: "t".into(),
                config: "c.toml".into(),
                config_copy: "/s/config.toml".into(),
                submitted_at: "2026-01-01T00:00:00Z".into(),
                script: "/s/job.sbatch".into(),
                log: format!("/s/slurm-{id}.log").into(),
                grace_secs: 5,
            },
            current_since: None,
            ended: None,
        }
    }

    #[test]
    fn update_round_trips_under_the_lock() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(Chain::read(dir.path()).unwrap(), None);
        Chain::update(dir.path(), |c| {
            c.name = "t".into();
            c.jobs.push(job(1, "10"));
            c.current = 1;
        })
        .unwrap();
        let n = Chain::update(dir.path(), |c| {
            let n = c.next_generation();
            c.jobs.push(job(n, "11"));
            n
        })
        .unwrap();
        assert_eq!(n, 2);
        let c = Chain::read(dir.path()).unwrap().unwrap();
        assert_eq!(c.successor().map(|j| j.job.job_id.as_str()), Some("11"));
        assert_eq!(c.current_job().map(|j| j.job.job_id.as_str()), Some("10"));
        assert_eq!(c.renewals(), 1);
        Chain::update(dir.path(), |c| c.end("11", "FAILED", None)).unwrap();
        let c = Chain::read(dir.path()).unwrap().unwrap();
        assert!(c.successor().is_none());
        assert_eq!(c.next_generation(), 3);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join(CHAIN_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn trimming_keeps_unended_jobs() {
        let mut c = Chain::default();
        for g in 1..=40 {
            let mut j = job(g, &g.to_string());
            if g != 3 && g != 40 {
                j.ended = Some(Ended {
                    at: String::new(),
                    how: "x".into(),
                    time_left_secs: None,
                });
            }
            c.jobs.push(j);
        }
        c.trim();
        assert_eq!(c.jobs.len(), KEEP_JOBS);
        assert!(c.job("3").is_some() && c.job("40").is_some());
    }

    #[test]
    fn generation_files_are_recognised() {
        assert!(is_generation_file("job.g7.sbatch"));
        assert!(is_generation_file("config.g12.toml"));
        assert!(!is_generation_file("job.sbatch"));
        assert!(!is_generation_file("config.toml"));
        assert!(!is_generation_file("config.gx.toml"));
        let dir = tempfile::tempdir().unwrap();
        let (cfg, script) = generation_files(dir.path(), 2);
        let (old_cfg, old_script) = generation_files(dir.path(), 1);
        for p in [&cfg, &script, &old_cfg, &old_script] {
            std::fs::write(p, "x").unwrap();
        }
        let mut c = Chain {
            current: 2,
            ..Chain::default()
        };
        let mut j = job(2, "20");
        j.job.config_copy = cfg.clone();
        j.job.script = script.clone();
        c.jobs.push(j);
        let mut gone = c.unreferenced_files(dir.path());
        gone.sort();
        assert_eq!(gone, vec![old_cfg, old_script]);
    }

    #[test]
    fn renew_before_defaults() {
        let p = RenewPolicy {
            before: None,
            max: None,
            linger: DEFAULT_LINGER,
            handover_timeout: None,
            min_before: Duration::from_secs(115),
        };
        let h = |s: u64| Some(Duration::from_secs(s));
        assert_eq!(p.renew_before(h(24 * 3600)), Duration::from_secs(1200));
        assert_eq!(p.renew_before(h(3600)), Duration::from_secs(900));
        assert_eq!(p.renew_before(None), Duration::from_secs(1200));
        // A short job renews early enough for one retry.
        assert_eq!(p.renew_before(h(240)), Duration::from_secs(115));
        assert_eq!(
            p.handover_timeout(Duration::from_secs(4)),
            Duration::from_secs(34)
        );
        let p = RenewPolicy {
            before: Some(Duration::from_secs(120)),
            ..p
        };
        assert_eq!(p.renew_before(h(180)), Duration::from_secs(120));
    }
}
