//! SLURM: the sbatch script (`template`), the SLURM commands (`jobs`), and the job record
//! `start` leaves in the state directory for `status`, `logs` and `stop`.
//!
//! Never depends on the gateway (`serve`, `router`, `providers`): it only runs SLURM's
//! command-line tools and reads and writes files.

pub mod chain;
pub mod jobs;
pub mod template;

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The job record, written by `start` after `sbatch` accepted the script.
pub const JOB_FILE: &str = "job.json";
/// The rendered script, kept so a user can read what ran.
pub const SCRIPT_FILE: &str = "job.sbatch";
/// The config copy the job runs with.
pub const CONFIG_FILE: &str = "config.toml";
/// Every job's stdout/stderr, in the state directory (`%j` is the job id).
pub const LOG_PATTERN: &str = "slurm-%j.log";

/// One submitted gateway job.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct JobRecord {
    pub job_id: String,
    pub name: String,
    /// The config given to `start` (as given).
    pub config: String,
    /// The copy in the state directory the job runs with.
    pub config_copy: PathBuf,
    /// RFC 3339 UTC.
    pub submitted_at: String,
    pub script: PathBuf,
    /// The job's stdout/stderr file.
    pub log: PathBuf,
    /// The gateway's shutdown grace, for `stop` to know how long draining may take.
    #[serde(default)]
    pub grace_secs: u64,
}

impl JobRecord {
    pub fn write(&self, dir: &Path) -> std::io::Result<()> {
        let json = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
        llmgw_core::state::write_atomic(&dir.join(JOB_FILE), &json, 0o600)
    }

    pub fn read(dir: &Path) -> std::io::Result<Option<Self>> {
        match std::fs::read(dir.join(JOB_FILE)) {
            Ok(b) => serde_json::from_slice(&b)
                .map(Some)
                .map_err(std::io::Error::other),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// The job's log file: the template's `%j` replaced by the job id.
pub fn log_path(pattern: &Path, job_id: &str) -> PathBuf {
    PathBuf::from(pattern.to_string_lossy().replace("%j", job_id))
}
