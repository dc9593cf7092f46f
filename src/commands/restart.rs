//! `llmgw restart`: a handover on demand. Submits a successor now — with the current
//! config, or a new one given with `-c` (validated first), and the running `llmgw` binary
//! unless `[slurm] binary` says otherwise — and waits until it has taken over. The running
//! job then forwards, drains and exits exactly as at a renewal, so clients see no failed
//! request. A successor a renewal had already submitted is cancelled: this one replaces it.

use super::start::{ensure_key, loading_text, Plan, Progress};
use super::{name_flag, tail_lines, target_dir};
use crate::args::RestartArgs;
use anyhow::Context as _;
use llmgw_cluster::slurm::chain::{self, Chain, Why};
use llmgw_cluster::slurm::jobs::{self, JobInfo};
use llmgw_cluster::slurm::JobRecord;
use llmgw_cluster::supervise::BackendsFile;
use llmgw_core::config::Config;
use llmgw_core::state::{self, EndpointRecord};
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

const POLL: Duration = Duration::from_millis(500);

pub fn run(args: RestartArgs) -> anyhow::Result<ExitCode> {
    let (name, dir) = target_dir(&args.target)?;
    let chain = Chain::read(&dir)
        .with_context(|| format!("cannot read the chain record in {}", dir.display()))?;
    let current = chain
        .as_ref()
        .and_then(|c| c.current_job().cloned())
        .ok_or_else(|| {
            anyhow::anyhow!(
                "gateway \"{name}\" has no current job in {} to hand over from; start it with `llmgw start -c CONFIG{}`",
                dir.display(),
                name_flag(&name)
            )
        })?;
    let old = current.job.job_id.clone();
    match jobs::query(&old)? {
        Some(i) if i.is_running() => {}
        other => anyhow::bail!(
            "gateway \"{name}\" is not running (job {old} is {}); start it with `llmgw start -c CONFIG{}`",
            other.map_or_else(|| "gone".to_string(), |i| i.describe()),
            name_flag(&name)
        ),
    }
    // The config the new job runs: the one given, else the current job's own copy.
    let source = args
        .config
        .clone()
        .unwrap_or_else(|| current.job.config_copy.clone());
    let cfg = Config::load(&source)?;
    let config_text =
        std::fs::read(&source).with_context(|| format!("cannot read {}", source.display()))?;

    let submitted = Chain::update(&dir, |c| -> anyhow::Result<(u64, String, Option<String>)> {
        if c.stopping {
            anyhow::bail!("gateway \"{name}\" is being stopped");
        }
        if c.current_job().map(|j| j.job.job_id.as_str()) != Some(old.as_str()) {
            anyhow::bail!(
                "the gateway's current job changed while restarting; run `llmgw restart` again"
            );
        }
        // This restart replaces a successor a renewal (or another restart) submitted.
        let replaced = c.successor().map(|s| s.job.job_id.clone());
        if let Some(id) = &replaced {
            // Recorded first (a loading successor will not publish itself); one that runs
            // gets SIGTERM alone and drains (COMPLETED), a pending one is cancelled.
            c.end(id, "replaced by `llmgw restart`", None);
            let running = jobs::query(id)?.is_some_and(|i| i.is_running());
            if !running || jobs::cancel(id, Some("TERM")).is_err() {
                jobs::cancel(id, None)?;
            }
        }
        let generation = c.next_generation();
        let (config_copy, script_path) = chain::generation_files(&dir, generation);
        let plan = Plan::new(&source, &cfg, &name, &dir, config_copy.clone())?;
        if let Some(key) = &plan.key_file {
            ensure_key(key)?;
        }
        state::write_atomic(&config_copy, &config_text, 0o600)
            .with_context(|| format!("cannot write {}", config_copy.display()))?;
        state::write_atomic(&script_path, plan.script.as_bytes(), 0o600)
            .with_context(|| format!("cannot write {}", script_path.display()))?;
        let record = JobRecord {
            job_id: String::new(),
            name: name.clone(),
            config: source.display().to_string(),
            config_copy,
            submitted_at: String::new(),
            script: script_path,
            log: plan.log_pattern.clone(),
            grace_secs: plan.grace_secs,
        };
        let (generation, id) =
            llmgw_cluster::renew::submit_generation(&dir, c, record, &old, Why::Restart)?;
        Ok((generation, id, replaced))
    })??;
    let (generation, new, replaced) = submitted;
    if let Some(r) = &replaced {
        eprintln!("cancelled job {r}, the successor submitted earlier: this restart replaces it");
    }
    if args.no_wait {
        if args.json {
            println!(
                "{}",
                serde_json::json!({"ok": true, "name": name, "job_id": new, "generation": generation,
                    "previous_job_id": old, "state": "SUBMITTED"})
            );
        } else {
            println!(
                "submitted job {new} (generation {generation}) to take over from job {old}; follow it with `llmgw status{}`",
                name_flag(&name)
            );
        }
        return Ok(ExitCode::SUCCESS);
    }
    let rt = super::runtime()?;
    match rt.block_on(wait(&dir, &new, args.timeout))? {
        Ok(ep) => {
            let models = cfg
                .config
                .models
                .iter()
                .map(|m| m.name.get_ref().as_str())
                .collect::<std::collections::BTreeSet<_>>();
            if args.json {
                println!(
                    "{}",
                    serde_json::json!({"ok": true, "name": name, "job_id": new, "generation": generation,
                        "previous_job_id": old, "node": ep.host, "port": ep.port,
                        "url": format!("{}/v1", ep.base_url()), "models": models})
                );
            } else {
                println!(
                    "✔ llmgw \"{name}\" restarted: job {new} (generation {generation}) on {}, port {}, took over from job {old}",
                    ep.host, ep.port
                );
                println!(
                    "  job {old} forwards what still reaches it, finishes its requests and exits"
                );
                println!(
                    "  models: {}",
                    models.into_iter().collect::<Vec<_>>().join(", ")
                );
                println!(
                    "  on the cluster:   export OPENAI_BASE_URL={}/v1",
                    ep.base_url()
                );
                println!(
                    "  stable address:   {}",
                    super::connect_command(&name, &dir, None)
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Err((info, why)) => {
            let log =
                llmgw_cluster::slurm::log_path(&dir.join(llmgw_cluster::slurm::LOG_PATTERN), &new);
            for l in tail_lines(&log, 20) {
                eprintln!("  | {l}");
            }
            anyhow::bail!(
                "{}; log: {}",
                what_happened(&dir, &name, &new, &old, info.as_ref(), &why),
                log.display()
            )
        }
    }
}

/// Waits until `endpoint.json` names job `new` and it answers ready. `Err` with the last
/// SLURM state and what went wrong.
async fn wait(
    dir: &Path,
    new: &str,
    timeout: Duration,
) -> anyhow::Result<Result<EndpointRecord, (Option<JobInfo>, String)>> {
    let client = super::http_client()?;
    let started = Instant::now();
    let mut progress = Progress::new();
    let mut last = None;
    let outcome = loop {
        if started.elapsed() >= timeout {
            break Err((last, format!("was not ready within {timeout:?}")));
        }
        let info = jobs::query(new)?;
        match &info {
            Some(i) if i.is_pending() => {
                progress.set("pending", format!("job {new} {}", i.describe()));
            }
            Some(i) if i.is_running() => {
                if let Some(ep) = EndpointRecord::read(dir).ok().flatten() {
                    if ep.job_id.as_deref() == Some(new) && super::is_ready(&client, &ep).await {
                        break Ok(ep);
                    }
                }
                let doing = loading_text(BackendsFile::read_path(
                    &dir.join(chain::SUCCESSOR_BACKENDS_FILE),
                ));
                progress.set(
                    &format!("running {doing}"),
                    format!(
                        "job {new} RUNNING on {} — {doing}",
                        i.node.as_deref().unwrap_or("?")
                    ),
                );
            }
            _ => break Err((info.clone(), "ended before it was ready".into())),
        }
        last = info;
        tokio::time::sleep(POLL).await;
    };
    progress.finish();
    Ok(outcome)
}

/// What became of the new job and of the old one, from the chain record and SLURM (not
/// from what was hoped): the new job's recorded end (cancelled at its handover deadline,
/// its backends failed, lost after it took over, …), and whether the old job still serves.
fn what_happened(
    dir: &Path,
    name: &str,
    new: &str,
    old: &str,
    info: Option<&JobInfo>,
    why: &str,
) -> String {
    let chain = Chain::read(dir).ok().flatten();
    let recorded = chain
        .as_ref()
        .and_then(|c| c.job(new))
        .and_then(|j| j.ended.as_ref())
        .map(|e| e.how.clone());
    let state = info.map_or_else(|| "gone".to_string(), JobInfo::describe);
    let new_part = match (&recorded, info.is_some_and(JobInfo::is_active)) {
        (Some(how), _) => format!("the new job {new} did not take over: {how} (SLURM: {state})"),
        (None, true) => format!(
            "the new job {new} {why} (it is {state}; it takes over if it gets ready, unless job {old} cancels it at its handover deadline)"
        ),
        (None, false) => format!("the new job {new} {why} (it is {state})"),
    };
    let old_info = jobs::query(old).ok().flatten();
    let serving = EndpointRecord::read(dir)
        .ok()
        .flatten()
        .and_then(|ep| ep.job_id)
        .as_deref()
        == Some(old);
    let old_part = match &old_info {
        Some(i) if i.is_running() && serving => {
            format!("job {old} keeps serving with its own config")
        }
        Some(i) if i.is_running() => format!(
            "job {old} is still {} but no longer named in endpoint.json; see `llmgw status{}`",
            i.describe(),
            name_flag(name)
        ),
        other => {
            let how = chain
                .as_ref()
                .and_then(|c| c.job(old))
                .and_then(|j| j.ended.as_ref())
                .map(|e| format!(": {}", e.how))
                .unwrap_or_default();
            format!(
                "job {old} has ended too ({}{how}): the gateway is down; start it again with `llmgw start -c CONFIG{}`",
                other.as_ref().map_or_else(|| "gone".to_string(), JobInfo::describe),
                name_flag(name)
            )
        }
    };
    format!("{new_part}; {old_part}")
}
