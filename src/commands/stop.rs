//! `llmgw stop`: cancel the job, wait until SLURM no longer lists it running, tidy the
//! endpoint record.
//!
//! A running gateway is first sent SIGTERM alone (`scancel --batch --signal=TERM`): it
//! stops accepting, lets in-flight requests finish within its shutdown grace, stops its
//! backends and exits 0. Only if it is still there after the grace does a plain `scancel`
//! follow. A pending job is simply cancelled.

use super::target_dir;
use crate::cli::{StopArgs, Target};
use crate::slurm::jobs::{self, JobInfo};
use crate::slurm::JobRecord;
use crate::state;
use anyhow::Context as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

const POLL: Duration = Duration::from_millis(300);
/// After a plain scancel: SLURM's KillWait (30 s by default) plus slack.
const HARD_WAIT: Duration = Duration::from_secs(45);

pub fn run(args: StopArgs) -> anyhow::Result<ExitCode> {
    if args.all {
        if args.target.state_dir.is_some() {
            anyhow::bail!("--all stops every gateway under ~/.llmgw; use --name or --state-dir for one gateway instead");
        }
        let root = state::state_dir("x", None)
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from(".llmgw"));
        let mut dirs: Vec<(String, PathBuf)> = std::fs::read_dir(&root)
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .filter(|e| e.path().join(crate::slurm::JOB_FILE).exists())
                    .filter_map(|e| e.file_name().to_str().map(|n| (n.to_string(), e.path())))
                    .collect()
            })
            .unwrap_or_default();
        dirs.sort();
        if dirs.is_empty() {
            println!("no gateways under {}: nothing to stop", root.display());
        }
        let mut failed = Vec::new();
        for (name, dir) in dirs {
            if let Err(e) = stop_one(&name, &dir) {
                eprintln!("llmgw: {name}: {e:#}");
                failed.push(name);
            }
        }
        if !failed.is_empty() {
            anyhow::bail!("could not stop {}", failed.join(", "));
        }
        return Ok(ExitCode::SUCCESS);
    }
    let (name, dir) = target_dir(&Target {
        name: args.target.name.clone(),
        state_dir: args.target.state_dir.clone(),
    })?;
    stop_one(&name, &dir)?;
    Ok(ExitCode::SUCCESS)
}

fn stop_one(name: &str, dir: &Path) -> anyhow::Result<()> {
    let record = JobRecord::read(dir)
        .with_context(|| format!("cannot read the job record in {}", dir.display()))?;
    let Some(record) = record else {
        tidy(dir);
        println!(
            "llmgw \"{name}\": nothing to stop (no job recorded in {})",
            dir.display()
        );
        return Ok(());
    };
    let id = record.job_id.as_str();
    let before = jobs::query(id)?;
    let message = match &before {
        None => format!("job {id} was already gone"),
        Some(i) if !i.is_active() => format!("job {id} had already ended ({})", i.describe()),
        Some(i) => {
            let grace = Duration::from_secs(record.grace_secs.max(1)) + Duration::from_secs(15);
            let mut after = None;
            if i.is_running() {
                eprintln!(
                    "stopping job {id} on {}: in-flight requests may finish (up to {} s)…",
                    i.node.as_deref().unwrap_or("its node"),
                    grace.as_secs()
                );
                if jobs::cancel(id, Some("TERM")).is_ok() {
                    after = wait_gone(id, grace)?;
                }
            }
            if after.as_ref().is_none_or(JobInfo::is_active) {
                jobs::cancel(id, None)?;
                after = wait_gone(id, HARD_WAIT)?;
            }
            match &after {
                Some(a) if a.is_active() => anyhow::bail!(
                    "job {id} is still {} after scancel; check `squeue -j {id}` (the node may be unresponsive)",
                    a.describe()
                ),
                Some(a) => format!("stopped job {id} (was {}; now {})", i.describe(), a.state),
                None => format!("stopped job {id} (was {})", i.describe()),
            }
        }
    };
    tidy(dir);
    println!("llmgw \"{name}\": {message}");
    Ok(())
}

/// Polls until SLURM no longer lists the job as queued or running; the last state seen.
fn wait_gone(id: &str, limit: Duration) -> anyhow::Result<Option<JobInfo>> {
    let start = Instant::now();
    loop {
        let info = jobs::query(id)?;
        if info.as_ref().is_none_or(|i| !i.is_active()) || start.elapsed() >= limit {
            return Ok(info);
        }
        std::thread::sleep(POLL);
    }
}

/// Removes the endpoint record (the gateway removes it itself on a clean exit).
fn tidy(dir: &Path) {
    let _ = std::fs::remove_file(dir.join(state::ENDPOINT_FILE));
}
