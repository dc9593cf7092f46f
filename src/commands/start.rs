//! `llmgw start`: render the sbatch script, submit it, wait until the gateway is ready,
//! and print how to reach it.

use super::{clock, login_host, name_flag, tail_lines, target_dir, tilde, user_name};
use crate::args::StartArgs;
use anyhow::Context as _;
use llmgw_cluster::slurm::chain::{self, Chain, ChainJob, Why};
use llmgw_cluster::slurm::jobs::{self, JobInfo};
use llmgw_cluster::slurm::template::{self, JobSpec, SpecPaths};
use llmgw_cluster::slurm::{self as slurm_mod, JobRecord};
use llmgw_cluster::supervise::{BackendState, BackendsFile};
use llmgw_core::config::{Config, LoadedConfig};
use llmgw_core::state::{self, EndpointRecord, KEY_FILE};
use std::io::IsTerminal as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// How often the job and the gateway are polled while waiting.
const POLL: Duration = Duration::from_millis(500);
/// Lines of the job's log shown when it fails before ready.
const TAIL: usize = 20;

pub fn run(args: StartArgs) -> anyhow::Result<ExitCode> {
    let cfg = Config::load(&args.config)?;
    let (name, dir) = target_dir(&args.target)?;
    let plan = Plan::new(
        &args.config,
        &cfg,
        &name,
        &dir,
        dir.join(slurm_mod::CONFIG_FILE),
    )?;

    if args.dry_run {
        if args.json {
            println!(
                "{}",
                serde_json::json!({"ok": true, "dry_run": true, "name": name, "state_dir": dir, "script": plan.script})
            );
        } else {
            print!("{}", plan.script);
        }
        return Ok(ExitCode::SUCCESS);
    }

    refuse_live_job(&name, &dir)?;
    let host = &cfg.config.server.host;
    if host
        .parse::<std::net::IpAddr>()
        .is_ok_and(|ip| ip.is_loopback())
    {
        eprintln!(
            "note: [server] host = {host:?}: the gateway will only be reachable on its own node; \
             set host = \"0.0.0.0\" to reach it from the login node"
        );
    }
    let record = match plan.submit(&args.config, &name, &dir, false)? {
        Submission::New(r) => r,
        Submission::Active(id) => {
            anyhow::bail!("job {id} of gateway \"{name}\" is already queued or running")
        }
    };

    if args.no_wait {
        if args.json {
            println!(
                "{}",
                serde_json::json!({
                    "ok": true, "name": name, "job_id": record.job_id, "state": "SUBMITTED",
                    "state_dir": dir, "script": record.script, "log": record.log,
                    "key_file": plan.key_file,
                })
            );
        } else {
            println!(
                "submitted llmgw \"{name}\" as job {}; follow it with `llmgw status{}` and `llmgw logs -f{}`",
                record.job_id,
                name_flag(&name),
                name_flag(&name)
            );
        }
        return Ok(ExitCode::SUCCESS);
    }

    let rt = super::runtime()?;
    let outcome = rt.block_on(wait(&record, &dir, args.timeout))?;
    match outcome {
        Waited::Ready(ep) => {
            report_ready(&args, &cfg, &name, &dir, &record, &plan, &ep);
            Ok(ExitCode::SUCCESS)
        }
        Waited::Failed { info, detail } => {
            let tail = tail_lines(&record.log, TAIL);
            let what = match &info {
                Some(i) => format!("job {} {}", record.job_id, i.describe()),
                None => format!("job {} is gone (SLURM no longer lists it)", record.job_id),
            };
            if args.json {
                println!(
                    "{}",
                    serde_json::json!({
                        "ok": false, "name": name, "job_id": record.job_id,
                        "state": info.as_ref().map(|i| i.state.clone()),
                        "reason": info.as_ref().and_then(|i| i.reason.clone()),
                        "exit_code": info.as_ref().and_then(|i| i.exit_code.clone()),
                        "error": format!("{what} before the gateway was ready{detail}"),
                        "log": record.log, "log_tail": tail,
                    })
                );
            } else {
                if tail.is_empty() {
                    eprintln!("(the job's log {} is empty)", record.log.display());
                } else {
                    eprintln!("last lines of {}:", record.log.display());
                    for l in &tail {
                        eprintln!("  | {l}");
                    }
                }
                print_failed_backend_logs(&dir);
            }
            let see = if args.json {
                "its log"
            } else {
                "see the log above"
            };
            anyhow::bail!(
                "{what} before the gateway was ready{detail}; {see}: {}; fix the config and run `llmgw start` again",
                record.log.display()
            )
        }
        Waited::TimedOut(info) => {
            let state = info.map_or_else(|| "unknown".to_string(), |i| i.describe());
            anyhow::bail!(
                "gave up waiting after {:?}: job {} is {state}; it keeps running — check `llmgw status{}` or stop it with `llmgw stop{}`",
                args.timeout,
                record.job_id,
                name_flag(&name),
                name_flag(&name)
            )
        }
    }
}

/// Everything decided before submitting (also what `restart` submits).
pub(super) struct Plan {
    pub script: String,
    pub key_file: Option<PathBuf>,
    pub config_copy: PathBuf,
    pub log_pattern: PathBuf,
    pub grace_secs: u64,
}

impl Plan {
    /// Renders the script for `config` (loaded as `cfg`), run with the copy at `config_copy`.
    pub fn new(
        config: &Path,
        cfg: &LoadedConfig,
        name: &str,
        dir: &Path,
        config_copy: PathBuf,
    ) -> anyhow::Result<Self> {
        let slurm = &cfg.config.slurm;
        // No more GPUs or nodes than the job asks SLURM for (one line naming both).
        let text = std::fs::read_to_string(config).unwrap_or_default();
        llmgw_cluster::placement::check_request(&cfg.config, &text, &cfg.source_name)?;
        let binary = match &slurm.binary {
            Some(b) => std::path::absolute(b)
                .with_context(|| format!("[slurm] binary {} cannot be resolved", b.display()))?,
            None => current_binary()?,
        };
        let key_file = cfg.master_key.is_none().then(|| dir.join(KEY_FILE));
        let log_pattern = dir.join(slurm_mod::LOG_PATTERN);
        let grace_secs = cfg.config.server.shutdown_grace.0.as_secs();
        let spec = JobSpec::new(
            name,
            slurm,
            SpecPaths {
                state_dir: dir.to_path_buf(),
                log_path: log_pattern.clone(),
                config_path: config_copy.clone(),
                source_config: config.display().to_string(),
                binary,
                key_file: key_file.clone(),
            },
            (grace_secs + 30).max(60),
        )?;
        // A user's template path is relative to the config file.
        let template = slurm.template.as_ref().map(|t| {
            if t.is_absolute() {
                t.clone()
            } else {
                config.parent().map_or_else(|| t.clone(), |p| p.join(t))
            }
        });
        let script = template::render(&spec, template.as_deref())?;
        Ok(Plan {
            script,
            key_file,
            config_copy,
            log_pattern,
            grace_secs,
        })
    }

    /// Prepares the state directory, submits, and records the job as a new chain. With
    /// `unless_active` (an on-demand start by `connect`) nothing is submitted when a job of
    /// the chain is still queued or running: checked under the chain lock, so two
    /// `connect`s never submit two jobs.
    pub(super) fn submit(
        &self,
        config: &Path,
        name: &str,
        dir: &Path,
        unless_active: bool,
    ) -> anyhow::Result<Submission> {
        if unless_active {
            if let Some(id) = Chain::update(dir, |c| active_job(c, dir))? {
                return Ok(Submission::Active(id));
            }
        }
        // A new directory is created 0700; an existing one (perhaps shared on purpose) keeps
        // its mode: what must stay private is private file by file (0600) instead.
        state::ensure_dir(dir)
            .with_context(|| format!("cannot create the state directory {}", dir.display()))?;
        let text =
            std::fs::read(config).with_context(|| format!("cannot read {}", config.display()))?;
        state::write_atomic(&self.config_copy, &text, 0o600)
            .with_context(|| format!("cannot write {}", self.config_copy.display()))?;
        if let Some(key) = &self.key_file {
            ensure_key(key)?;
        }
        // Whatever an earlier run left must not be mistaken for this job's.
        for stale in [
            state::ENDPOINT_FILE,
            llmgw_cluster::supervise::BACKENDS_FILE,
            chain::SUCCESSOR_BACKENDS_FILE,
            llmgw_cluster::idle::IDLE_FILE,
        ] {
            let _ = std::fs::remove_file(dir.join(stale));
        }
        let script_path = dir.join(slurm_mod::SCRIPT_FILE);
        state::write_atomic(&script_path, self.script.as_bytes(), 0o600)
            .with_context(|| format!("cannot write {}", script_path.display()))?;
        // A new chain, generation 1. Submitted under the chain lock, so the job cannot read
        // the record before it names it.
        Chain::update(dir, |c| -> anyhow::Result<Submission> {
            if unless_active {
                if let Some(id) = active_job(c, dir) {
                    return Ok(Submission::Active(id));
                }
            }
            let job_id = jobs::submit(&script_path)?;
            let record = JobRecord {
                log: slurm_mod::log_path(&self.log_pattern, &job_id),
                job_id,
                name: name.to_string(),
                config: config.display().to_string(),
                config_copy: self.config_copy.clone(),
                submitted_at: state::now_rfc3339(),
                script: script_path,
                grace_secs: self.grace_secs,
            };
            record
                .write(dir)
                .with_context(|| format!("cannot write the job record in {}", dir.display()))?;
            *c = Chain {
                name: name.to_string(),
                jobs: vec![ChainJob {
                    generation: 1,
                    why: Why::Start,
                    predecessor: None,
                    job: record.clone(),
                    current_since: None,
                    ended: None,
                }],
                ..Chain::default()
            };
            Ok(Submission::New(record))
        })?
    }
}

/// What [`Plan::submit`] did.
pub(super) enum Submission {
    New(JobRecord),
    /// A job of the chain is already queued or running (an on-demand start found it).
    Active(String),
}

/// A job of the chain (or the one `job.json` names) that SLURM still queues or runs.
fn active_job(c: &Chain, dir: &Path) -> Option<String> {
    let mut ids: Vec<String> = c.unended().map(|j| j.job.job_id.clone()).collect();
    if let Some(rec) = JobRecord::read(dir).ok().flatten() {
        if !ids.contains(&rec.job_id) {
            ids.push(rec.job_id);
        }
    }
    ids.into_iter().find(|id| {
        jobs::query(id)
            .ok()
            .flatten()
            .is_some_and(|i| i.is_active())
    })
}

/// The running binary's path. A binary replaced while this process runs (an upgrade
/// while `connect` waits to start jobs on demand) reads as `PATH (deleted)` on Linux: the
/// path itself holds the new one, which is what the job should run.
fn current_binary() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()
        .context("cannot tell where the llmgw binary is; set [slurm] binary")?;
    let text = exe.to_string_lossy();
    match text.strip_suffix(" (deleted)") {
        Some(live) if Path::new(live).exists() => Ok(PathBuf::from(live)),
        _ => Ok(exe),
    }
}

/// Refuses when a job of this name's chain is still queued or running.
fn refuse_live_job(name: &str, dir: &Path) -> anyhow::Result<()> {
    let mut ids: Vec<String> = Chain::read(dir)
        .ok()
        .flatten()
        .map(|c| c.unended().map(|j| j.job.job_id.clone()).collect())
        .unwrap_or_default();
    if let Some(rec) = JobRecord::read(dir).ok().flatten() {
        if !ids.contains(&rec.job_id) {
            ids.push(rec.job_id);
        }
    }
    for id in ids {
        if let Some(info) = jobs::query(&id)? {
            if info.is_active() {
                anyhow::bail!(
                    "gateway \"{name}\" is already {} as job {id}; stop it first with `llmgw stop{}`, or start another with --name OTHER",
                    info.describe(),
                    name_flag(name)
                );
            }
        }
    }
    Ok(())
}

/// Keeps an existing key (scripts that use it keep working), else writes a new random
/// one. Always 0600; the key never appears on a command line or in the script.
pub(super) fn ensure_key(path: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(existing) = std::fs::read_to_string(path) {
        if existing.trim().len() >= 32 {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
                .with_context(|| format!("cannot make {} private (0600)", path.display()))?;
            return Ok(());
        }
    }
    let key = state::random_key("sk-llmgw-")
        .context("cannot read /dev/urandom to generate the API key")?;
    state::write_atomic(path, format!("{key}\n").as_bytes(), 0o600)
        .with_context(|| format!("cannot write the API key to {}", path.display()))
}

enum Waited {
    Ready(EndpointRecord),
    Failed {
        info: Option<JobInfo>,
        detail: String,
    },
    TimedOut(Option<JobInfo>),
}

/// The spinner (on a terminal) or one line per change (otherwise).
pub(super) struct Progress {
    bar: Option<indicatif::ProgressBar>,
    last: String,
    phase: String,
    since: Instant,
}

impl Progress {
    pub fn new() -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = indicatif::ProgressBar::new_spinner();
            if let Ok(style) = indicatif::ProgressStyle::with_template("  {spinner} {msg}") {
                bar.set_style(style);
            }
            bar.enable_steady_tick(Duration::from_millis(100));
            bar
        });
        Progress {
            bar,
            last: String::new(),
            phase: String::new(),
            since: Instant::now(),
        }
    }

    /// `phase` restarts the clock when it changes; `detail` is the text.
    pub fn set(&mut self, phase: &str, detail: String) {
        if phase != self.phase {
            self.phase = phase.to_string();
            self.since = Instant::now();
        }
        match &self.bar {
            Some(bar) => bar.set_message(format!("{detail} {}", clock(self.since.elapsed()))),
            None => {
                if detail != self.last {
                    eprintln!("  {detail}");
                }
            }
        }
        self.last = detail;
    }

    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

async fn wait(record: &JobRecord, dir: &Path, timeout: Duration) -> anyhow::Result<Waited> {
    let client = super::http_client()?;
    let id = &record.job_id;
    let started = Instant::now();
    let mut progress = Progress::new();
    let mut last: Option<JobInfo> = None;
    let mut unknown_since: Option<Instant> = None;
    let outcome = loop {
        if started.elapsed() >= timeout {
            break Waited::TimedOut(last);
        }
        let info = jobs::query(id)?;
        match &info {
            None => {
                // Right after submission a job may not be visible yet; give it a moment.
                let since = *unknown_since.get_or_insert_with(Instant::now);
                if since.elapsed() > Duration::from_secs(5) {
                    break Waited::Failed {
                        info: last,
                        detail: String::new(),
                    };
                }
            }
            Some(i) if i.is_pending() => {
                progress.set("pending", format!("job {id} {}", i.describe()));
            }
            Some(i) if i.is_running() => {
                let node = i.node.as_deref().unwrap_or("?");
                if let Some(ep) = EndpointRecord::read(dir).ok().flatten() {
                    let ours = ep.job_id.as_deref().is_none_or(|j| j == id);
                    if ours && super::is_ready(&client, &ep).await {
                        break Waited::Ready(ep);
                    }
                }
                let doing = loading_text(BackendsFile::read(dir));
                progress.set(
                    &format!("running {doing}"),
                    format!("job {id} RUNNING on {node} — {doing}"),
                );
            }
            Some(_) => {
                break Waited::Failed {
                    info: info.clone(),
                    detail: String::new(),
                };
            }
        }
        if info.is_some() {
            last = info;
        }
        tokio::time::sleep(POLL).await;
    };
    progress.finish();
    Ok(outcome)
}

/// What the job is doing while running but not yet ready, from `backends.json`.
pub(super) fn loading_text(file: Option<BackendsFile>) -> String {
    let Some(file) = file else {
        return "starting the gateway".into();
    };
    let loading: Vec<String> = file
        .backends
        .iter()
        .filter(|b| !matches!(b.state, BackendState::Ready | BackendState::Failed))
        .map(|b| match (b.state, b.restarts) {
            (BackendState::Restarting, _) => format!(
                "{} (restarting: {})",
                b.name,
                b.last_error.as_deref().unwrap_or("exited")
            ),
            (_, 0) => b.name.clone(),
            (_, n) => format!("{} (start {})", b.name, n + 1),
        })
        .collect();
    if loading.is_empty() {
        "starting the gateway".into()
    } else {
        format!("loading {}", loading.join(", "))
    }
}

/// The last lines of each backend's log that never became ready: usually the real cause.
fn print_failed_backend_logs(dir: &Path) {
    let Some(file) = BackendsFile::read(dir) else {
        return;
    };
    for b in file
        .backends
        .iter()
        .filter(|b| b.state != BackendState::Ready)
    {
        let Some(log) = &b.log else { continue };
        let tail = tail_lines(log, 8);
        if !tail.is_empty() {
            eprintln!("last lines of backend {} ({}):", b.name, log.display());
            for l in &tail {
                eprintln!("  | {l}");
            }
        }
    }
}

fn report_ready(
    args: &StartArgs,
    cfg: &LoadedConfig,
    name: &str,
    dir: &Path,
    record: &JobRecord,
    plan: &Plan,
    ep: &EndpointRecord,
) {
    let node = &ep.host;
    let port = ep.port;
    let url = format!("http://{node}:{port}/v1");
    let laptop_url = format!("http://localhost:{port}/v1");
    let login = login_host(cfg.config.slurm.login_host.as_deref());
    let ssh = format!("ssh -N -L {port}:{node}:{port} {}@{login}", user_name());
    let login_arg = format!("{}@{login}", user_name());
    let connect = super::connect_command(name, dir, Some(&login_arg));
    let backends = BackendsFile::read(dir)
        .map(|f| f.backends)
        .unwrap_or_default();
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "ok": true, "name": name, "job_id": record.job_id, "state": "RUNNING",
                "node": node, "port": port, "url": url, "laptop_url": laptop_url, "ssh": ssh,
                "connect": connect,
                "key_file": plan.key_file, "state_dir": dir, "script": record.script,
                "log": record.log, "backends": backends,
            })
        );
        return;
    }
    let key_line = match &plan.key_file {
        Some(k) => format!("export OPENAI_API_KEY=$(cat {})", tilde(k)),
        None => format!("the [server] master_key of {}", args.config.display()),
    };
    println!(
        "✔ llmgw \"{name}\" ready: job {} on {node}, port {port}",
        record.job_id
    );
    println!("  on the cluster:   export OPENAI_BASE_URL={url}");
    println!("  from your laptop: {connect}   (follows the gateway across jobs)");
    println!(
        "                    export OPENAI_BASE_URL=http://localhost:{}/v1",
        super::connect::DEFAULT_PORT
    );
    println!("    or plain ssh:   {ssh}");
    println!("                    export OPENAI_BASE_URL={laptop_url}");
    println!("  API key:          {key_line}");
    for b in backends.iter().filter(|b| b.state == BackendState::Failed) {
        println!(
            "  ! backend {} failed ({}); its requests go to fallbacks — see `llmgw logs{} --backend {}`",
            b.name,
            b.last_error.as_deref().unwrap_or("not ready"),
            name_flag(name),
            b.name
        );
    }
}
