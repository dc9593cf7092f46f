//! `llmgw stop`: cancel every job of the gateway's chain (the current one, a pending or
//! loading successor, a predecessor still draining), wait until SLURM no longer lists any
//! of them running, tidy the endpoint record.
//!
//! A running gateway is first sent SIGTERM alone (`scancel --batch --signal=TERM`): it
//! stops accepting, lets in-flight requests finish within its shutdown grace, stops its
//! backends and exits 0. Only if it is still there after the grace does a plain `scancel`
//! follow. A pending job is simply cancelled.

use super::target_dir;
use crate::args::{StopArgs, Target};
use anyhow::Context as _;
use llmgw_cluster::slurm::chain::Chain;
use llmgw_cluster::slurm::jobs::{self, JobInfo};
use llmgw_cluster::slurm::JobRecord;
use llmgw_core::state;
use std::collections::HashMap;
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
                    .filter(|e| e.path().join(llmgw_cluster::slurm::JOB_FILE).exists())
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
    // Every job of the chain that may still run: the current one, a successor (pending or
    // loading), a predecessor still draining. Marking the chain `stopping` first (under its
    // lock) means none of them submits another successor or becomes current from now on.
    let mut ids: Vec<String> = if Chain::read(dir).ok().flatten().is_some() {
        Chain::update(dir, |c| {
            c.stopping = true;
            c.unended().map(|j| j.job.job_id.clone()).collect()
        })?
    } else {
        Vec::new()
    };
    if let Some(r) = &record {
        if !ids.contains(&r.job_id) {
            ids.push(r.job_id.clone());
        }
    }
    if ids.is_empty() {
        tidy(dir);
        println!(
            "llmgw \"{name}\": nothing to stop (no job recorded in {})",
            dir.display()
        );
        return Ok(());
    }
    let grace_secs = record.as_ref().map_or(30, |r| r.grace_secs);
    // After SIGTERM: the grace, then closing what is left and stopping the backends;
    // only a job still there 15 s after its grace is cancelled outright.
    let grace = Duration::from_secs(grace_secs.max(1)) + Duration::from_secs(15);
    let mut messages = Vec::new();
    let mut stopping: Vec<(String, JobInfo)> = Vec::new();
    for id in &ids {
        match jobs::query(id)? {
            None => messages.push(format!("job {id} was already gone")),
            Some(i) if !i.is_active() => {
                messages.push(format!("job {id} had already ended ({})", i.describe()))
            }
            Some(i) => {
                if i.is_running() {
                    eprintln!(
                        "stopping job {id} on {}: in-flight requests get up to {grace_secs} s to finish (shutdown_grace)…",
                        i.node.as_deref().unwrap_or("its node"),
                    );
                    // SIGTERM to the gateway alone: it drains, stops its backends, exits 0.
                    if jobs::cancel(id, Some("TERM")).is_err() {
                        jobs::cancel(id, None)?;
                    }
                } else {
                    jobs::cancel(id, None)?;
                }
                stopping.push((id.clone(), i));
            }
        }
    }
    let stopping_ids: Vec<&str> = stopping.iter().map(|(id, _)| id.as_str()).collect();
    let mut after = wait_gone(&stopping_ids, grace)?;
    let left: Vec<&str> = stopping_ids
        .iter()
        .copied()
        .filter(|id| after.get(*id).is_some_and(JobInfo::is_active))
        .collect();
    if !left.is_empty() {
        for id in &left {
            jobs::cancel(id, None)?;
        }
        after.extend(wait_gone(&left, HARD_WAIT)?);
    }
    for (id, before) in &stopping {
        match after.get(id.as_str()) {
            Some(a) if a.is_active() => anyhow::bail!(
                "job {id} is still {} after scancel; check `squeue -j {id}` (the node may be unresponsive)",
                a.describe()
            ),
            Some(a) => messages.push(format!(
                "stopped job {id} (was {}; now {})",
                before.describe(),
                a.state
            )),
            None => messages.push(format!("stopped job {id} (was {})", before.describe())),
        }
    }
    // Jobs that never ran the gateway to its end (a pending successor) say nothing
    // themselves.
    let _ = Chain::update(dir, |c| {
        for id in &ids {
            c.end(id, "stopped by `llmgw stop`", None);
        }
    });
    tidy(dir);
    println!("llmgw \"{name}\": {}", messages.join("; "));
    Ok(())
}

/// Polls until SLURM no longer lists any of the jobs as queued or running; the last
/// state seen of each (absent: SLURM no longer knows it).
fn wait_gone(ids: &[&str], limit: Duration) -> anyhow::Result<HashMap<String, JobInfo>> {
    let start = Instant::now();
    loop {
        let mut seen = HashMap::new();
        for id in ids {
            if let Some(i) = jobs::query(id)? {
                seen.insert(id.to_string(), i);
            }
        }
        if seen.values().all(|i| !i.is_active()) || start.elapsed() >= limit {
            return Ok(seen);
        }
        std::thread::sleep(POLL);
    }
}

/// Removes the endpoint record (the gateway removes it itself on a clean exit) and a
/// successor's loading status (a successor stopped while it loaded leaves it behind).
fn tidy(dir: &Path) {
    let _ = std::fs::remove_file(dir.join(state::ENDPOINT_FILE));
    let _ = std::fs::remove_file(dir.join(llmgw_cluster::slurm::chain::SUCCESSOR_BACKENDS_FILE));
}
