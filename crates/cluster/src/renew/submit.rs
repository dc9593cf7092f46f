//! Submitting the chain's next generation, under the chain lock.

use crate::slurm::chain::{Chain, ChainJob, Why};
use crate::slurm::jobs;
use crate::slurm::JobRecord;
use llmgw_core::state;
use std::path::{Path, PathBuf};

/// What [`submit_successor`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Submitted {
    Job {
        generation: u64,
        job_id: String,
    },
    /// Nothing submitted, and why.
    Not(String),
}

/// Submits generation N+1 of the chain as the successor of job `current` — under the
/// chain lock, so that only one successor is ever pending and nothing is submitted once
/// `stop` began. The successor runs the current job's script (the same state directory
/// and key) and learns its generation from the record and from `LLMGW_GENERATION`.
pub fn submit_successor(
    dir: &Path,
    current: &str,
    why: Why,
    max_renewals: Option<u32>,
) -> Result<Submitted, anyhow::Error> {
    Chain::update(dir, |c| {
        if c.stopping {
            return Ok(Submitted::Not("the gateway is being stopped".into()));
        }
        if let Some(s) = c.successor() {
            return Ok(Submitted::Not(format!(
                "job {} is already the successor",
                s.job.job_id
            )));
        }
        if let Some(j) = c.current_job().filter(|j| j.job.job_id != current) {
            return Ok(Submitted::Not(format!(
                "job {} is the current generation now",
                j.job.job_id
            )));
        }
        if let Some(max) = max_renewals {
            if c.renewals() >= u64::from(max) {
                return Ok(Submitted::Not(format!(
                    "renew_max = {max} renewals reached; this job ends at its time limit"
                )));
            }
        }
        let mine = c.job(current).map(|j| j.job.clone());
        let template = match mine {
            Some(j) => j,
            None => {
                let script = dir.join(crate::slurm::SCRIPT_FILE);
                if !script.exists() {
                    return Ok(Submitted::Not(format!(
                        "no job script recorded ({} is missing)",
                        script.display()
                    )));
                }
                JobRecord {
                    job_id: current.to_string(),
                    name: c.name.clone(),
                    config: dir.join(crate::slurm::CONFIG_FILE).display().to_string(),
                    config_copy: dir.join(crate::slurm::CONFIG_FILE),
                    submitted_at: String::new(),
                    script,
                    log: PathBuf::new(),
                    grace_secs: 0,
                }
            }
        };
        submit_generation(dir, c, template, current, why)
            .map(|(generation, job_id)| Submitted::Job { generation, job_id })
    })?
}

/// Submits `record.script` as the chain's next generation and records it; the caller
/// holds the chain lock (inside [`Chain::update`]). `(generation, job id)`.
pub fn submit_generation(
    dir: &Path,
    c: &mut Chain,
    record: JobRecord,
    predecessor: &str,
    why: Why,
) -> Result<(u64, String), anyhow::Error> {
    let generation = c.next_generation();
    let gen_text = generation.to_string();
    let job_id = jobs::submit_with_env(
        &record.script,
        &[
            (crate::slurm::chain::ENV_GENERATION, &gen_text),
            (crate::slurm::chain::ENV_PREDECESSOR, predecessor),
        ],
    )?;
    c.jobs.push(ChainJob {
        generation,
        why,
        predecessor: Some(predecessor.to_string()),
        job: JobRecord {
            log: crate::slurm::log_path(&dir.join(crate::slurm::LOG_PATTERN), &job_id),
            job_id: job_id.clone(),
            submitted_at: state::now_rfc3339(),
            ..record
        },
        current_since: None,
        ended: None,
    });
    Ok((generation, job_id))
}
