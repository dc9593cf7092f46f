//! `llmgw doctor`: the first five minutes on a new cluster. It checks what `llmgw start`
//! will need — SLURM, the config, the state directory and the binary on a filesystem the
//! compute nodes see, the login host for the ssh line, the `env:`/`file:` keys, Redis, the
//! backends' python — and prints each check as ✔ (fine), ⚠ (may bite), ✘ (will fail) or
//! – (cannot be checked from here), every problem with the one thing to do about it.
//! `--json` prints the same as one object; the exit code is 1 when any check failed.
//!
//! Every wait is bounded: SLURM commands and python get a timeout, Redis a short
//! connect + PING, the login host's name lookup a few seconds.
//!
//! What counts as shared — one rule for the state directory, the binary and key files:
//! - under /tmp, /var/tmp, /dev/shm or /run: never. Node-local scratch, cleaned at will,
//!   and SLURM may give each job a private /tmp. ✘
//! - on a network filesystem (NFS, Lustre, GPFS, BeeGFS, CephFS, SMB, AFS, PanFS, …): ✔
//! - anything else (ext4, xfs, btrfs, tmpfs, overlay, fuse, …) is node-local: ✔ when the
//!   cluster's nodes all run on this machine (a workstation or test cluster), ⚠ otherwise.
//!
//! The binary alone is also ✔ under scratch when the cluster's nodes all run on this
//! machine and SLURM gives jobs no private /tmp (no job container plugin): the job then
//! sees the very file (a checkout under /tmp running the demo). It is only read when a job
//! starts; the state directory and key files hold what must outlive a cleaned /tmp.

mod backends;
mod filesystem;
use backends::*;
use filesystem::*;

use super::{login_host_from, target_dir, tilde, user_name};
use crate::args::DoctorArgs;
use llmgw_core::config::{self, Config, Secret};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;
use toml::Spanned;

/// Limit for each SLURM command (a controller that is down can make them retry for long).
const SLURM_TIMEOUT: Duration = Duration::from_secs(15);

/// Limit for `python -c` looking for sglang (a cold shared filesystem can be slow).
const PYTHON_TIMEOUT: Duration = Duration::from_secs(30);

/// Redis command timeout; the first connect + PING gets four times this.
const REDIS_TIMEOUT: Duration = Duration::from_millis(500);

/// Limit for resolving the login host's name.
const DNS_TIMEOUT: Duration = Duration::from_secs(5);

/// The SLURM commands `start`, `status` and `stop` run.
const SLURM_COMMANDS: [&str; 4] = ["sbatch", "squeue", "scontrol", "scancel"];

/// Node-local scratch directories: never seen by the job on another node (nor, with a
/// per-job /tmp, on this one).
const SCRATCH: [&str; 4] = ["/tmp", "/var/tmp", "/dev/shm", "/run"];

/// Finds sglang without importing it (an import pulls in torch and takes long).
const FIND_SGLANG: &str = "import importlib.util as u, sys\n\
    if u.find_spec('sglang') is None: sys.exit(3)\n\
    try:\n    import importlib.metadata as m; print('sglang ' + m.version('sglang'))\n\
    except Exception: print('sglang')\n";

/// How one check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    Warn,
    Fail,
    /// Not checkable from here (e.g. "will be checked in the job").
    Skip,
}

impl Status {
    fn mark(self) -> &'static str {
        match self {
            Status::Ok => "✔",
            Status::Warn => "⚠",
            Status::Fail => "✘",
            Status::Skip => "–",
        }
    }
}

/// One line of the report. Never carries a secret's value.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    /// Stable name for scripts: `slurm-controller`, `state-dir`, `key:models[1].api_key`, …
    pub id: String,
    pub title: String,
    pub status: Status,
    pub detail: String,
    /// The one thing to do, for a warning or a failure.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

/// A check's name, waiting for its outcome.
pub(crate) struct Named {
    id: String,
    title: String,
}

fn check(id: impl Into<String>, title: impl Into<String>) -> Named {
    Named {
        id: id.into(),
        title: title.into(),
    }
}

impl Named {
    fn done(self, status: Status, detail: String, fix: Option<String>) -> Check {
        Check {
            id: self.id,
            title: self.title,
            status,
            detail,
            fix,
        }
    }
    fn ok(self, detail: impl Into<String>) -> Check {
        self.done(Status::Ok, detail.into(), None)
    }
    fn skip(self, detail: impl Into<String>) -> Check {
        self.done(Status::Skip, detail.into(), None)
    }
    fn warn(self, detail: impl Into<String>, fix: impl Into<String>) -> Check {
        self.done(Status::Warn, detail.into(), Some(fix.into()))
    }
    fn fail(self, detail: impl Into<String>, fix: impl Into<String>) -> Check {
        self.done(Status::Fail, detail.into(), Some(fix.into()))
    }
}

/// The config `start` reads when given no `-c`.
const DEFAULT_CONFIG: &str = "llmgw.toml";

/// The config doctor checks: `-c FILE`; else ./llmgw.toml, which `start` would read; else
/// the built-in quickstart, which `serve` runs without `-c`.
enum ConfigSource {
    File(PathBuf),
    Quickstart,
}

impl ConfigSource {
    fn of(args: &DoctorArgs) -> ConfigSource {
        match &args.config {
            Some(path) => ConfigSource::File(path.clone()),
            // Present in any form (a directory, a dangling link): that is the file the user
            // means, and its problem is worth a ✘.
            None if std::fs::symlink_metadata(DEFAULT_CONFIG).is_ok() => {
                ConfigSource::File(PathBuf::from(DEFAULT_CONFIG))
            }
            None => ConfigSource::Quickstart,
        }
    }

    /// As shown to people (and in `--json`).
    fn shown(&self) -> String {
        match self {
            ConfigSource::File(path) => path.display().to_string(),
            ConfigSource::Quickstart => config::QUICKSTART_NAME.to_string(),
        }
    }
}

pub fn run(args: DoctorArgs) -> anyhow::Result<ExitCode> {
    let rt = super::runtime()?;
    let source = ConfigSource::of(&args);
    let (name, checks) = rt.block_on(diagnose(&args, &source));
    // A name lookup that timed out may still sit in a blocking thread: do not wait for it.
    rt.shutdown_background();
    let failed = checks.iter().filter(|c| c.status == Status::Fail).count();
    let warned = checks.iter().filter(|c| c.status == Status::Warn).count();
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "ok": failed == 0,
                "version": env!("LLMGW_LONG_VERSION"),
                "config": source.shown(),
                "name": name,
                "failed": failed,
                "warnings": warned,
                "checks": checks,
            })
        );
    } else {
        print_text(&args, &source, &checks, failed, warned);
    }
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn print_text(
    args: &DoctorArgs,
    source: &ConfigSource,
    checks: &[Check],
    failed: usize,
    warned: usize,
) {
    println!(
        "llmgw {} — doctor for {}",
        env!("LLMGW_LONG_VERSION"),
        source.shown()
    );
    for c in checks {
        println!("{} {}: {}", c.status.mark(), c.title, c.detail);
        if let Some(fix) = &c.fix {
            println!("    fix: {fix}");
        }
    }
    let mut start = format!("llmgw start -c {}", source.shown());
    if args.target.name != "default" {
        start.push_str(&format!(" --name {}", args.target.name));
    }
    if let Some(d) = &args.target.state_dir {
        start.push_str(&format!(" --state-dir {}", d.display()));
    }
    let next = match source {
        ConfigSource::File(_) => format!("`{start}`"),
        // `start` takes a file: the quickstart is only what `serve` runs without one.
        ConfigSource::Quickstart => format!(
            "`llmgw serve` runs the built-in quickstart on this machine; for a SLURM job, \
             write {DEFAULT_CONFIG} (commented examples in configs/) and run `llmgw doctor` again"
        ),
    };
    if failed > 0 {
        println!(
            "✘ {failed} of {} checks failed: fix them, then run `llmgw doctor` again",
            checks.len()
        );
    } else if warned > 0 {
        println!("✔ nothing failed ({warned} to look at above): {next}");
    } else {
        println!("✔ all good: {next}");
    }
}

/// Every check, in the order a user would fix them. Returns the gateway's name too.
async fn diagnose(args: &DoctorArgs, source: &ConfigSource) -> (String, Vec<Check>) {
    let mut checks = Vec::new();
    let slurm = slurm_checks().await;
    checks.extend(slurm.checks);
    let here = slurm.nodes_here.as_deref();

    let (config_check, loaded) = load_config(source);
    checks.push(config_check);
    let config = loaded.as_ref().map(|l| &l.config);

    let name = match target_dir(&args.target) {
        Ok((name, dir)) => {
            checks.push(state_dir_check(&name, &dir, here));
            checks.push(space_check(&dir, config).await);
            name
        }
        Err(e) => {
            let fix = "pick a name of letters, digits, '.', '_' and '-' (--name or LLMGW_NAME)";
            checks.push(check("state-dir", "state directory").fail(e.to_string(), fix));
            args.target.name.clone()
        }
    };
    let scratch_here = here.filter(|_| slurm.shared_scratch);
    let (binary_check, binary) = binary_check(config, here, scratch_here);
    checks.push(binary_check);
    if let (true, Some(bin)) = (slurm.up, &binary) {
        let partition = config.and_then(|c| c.slurm.partition.as_deref());
        checks.extend(arch_check(bin, partition).await);
    }
    checks.push(login_host_check(config).await);

    match &loaded {
        Some(l) => {
            checks.extend(key_checks(l, here));
            checks.extend(redis_check(l).await);
            checks.extend(backend_checks(l, binary.as_deref()).await);
        }
        None => checks.push(
            check("config-dependent", "keys, Redis, backends")
                .skip("not checked until the config is valid"),
        ),
    }
    (name, checks)
}

// --- SLURM -------------------------------------------------------------------------

/// What the SLURM checks found out.
struct Slurm {
    checks: Vec<Check>,
    /// The controller answered.
    up: bool,
    /// The cluster's nodes, when all of them run on this machine (then node-local paths
    /// are visible to the job).
    nodes_here: Option<String>,
    /// SLURM gives jobs no private /tmp and /dev/shm (no job container plugin): the job
    /// sees this machine's. Only asked when every node runs here.
    shared_scratch: bool,
}

/// The SLURM client commands and the controller.
async fn slurm_checks() -> Slurm {
    let commands = check("slurm-commands", "SLURM commands");
    let controller = check("slurm-controller", "SLURM controller");
    let missing: Vec<&str> = SLURM_COMMANDS
        .iter()
        .copied()
        .filter(|c| which(c).is_none())
        .collect();
    if !missing.is_empty() {
        return Slurm {
            checks: vec![
                commands.fail(
                    format!("not found on PATH: {}", missing.join(", ")),
                    "run llmgw on a login node of the cluster (`module load slurm` first where SLURM is a module)",
                ),
                controller.skip("not checked without the SLURM commands"),
            ],
            up: false,
            nodes_here: None,
            shared_scratch: false,
        };
    }
    let dir = which("sbatch")
        .and_then(|p| p.parent().map(Path::to_path_buf))
        .map_or_else(String::new, |d| format!(" in {}", d.display()));
    let version = match bounded("sbatch", &["--version"], SLURM_TIMEOUT).await {
        Ok(out) if out.status.success() => format!(" ({})", first_line(&out.stdout)),
        _ => String::new(),
    };
    let mut checks = vec![commands.ok(format!("{}{dir}{version}", SLURM_COMMANDS.join(", ")))];

    let fix = "point SLURM_CONF (or /etc/slurm/slurm.conf) at your cluster's controller; if it is right, slurmctld is down: ask the cluster's admins (on a dev machine: bash scripts/local-slurm.sh up)";
    match bounded("scontrol", &["ping"], SLURM_TIMEOUT).await {
        Ok(out) => {
            let said = ping_line(&out);
            if out.status.success() && said.contains(" UP") {
                checks.push(controller.ok(said));
                let nodes_here = all_nodes_here().await;
                let shared_scratch = nodes_here.is_some() && no_private_tmp().await;
                return Slurm {
                    checks,
                    up: true,
                    nodes_here,
                    shared_scratch,
                };
            }
            checks.push(controller.fail(format!("scontrol ping: {said}"), fix));
        }
        Err(e) => checks.push(controller.fail(e, fix)),
    }
    Slurm {
        checks,
        up: false,
        nodes_here: None,
        shared_scratch: false,
    }
}

/// `Slurmctld(primary) at vm is UP` (one part per controller, backups too), else
/// SLURM's first words on stderr.
fn ping_line(out: &std::process::Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let said: Vec<&str> = stdout
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("Slurmctld"))
        .collect();
    if !said.is_empty() {
        return said.join("; ");
    }
    let err = first_line(&out.stderr);
    if err.is_empty() {
        format!("no answer ({})", out.status)
    } else {
        err
    }
}

/// The cluster's nodes, when every one of them runs on this machine (a workstation or a
/// test cluster with several `slurmd -N` daemons): then node-local paths are visible to
/// the job.
async fn all_nodes_here() -> Option<String> {
    let out = bounded("sinfo", &["-h", "-N", "-o", "%N %n"], SLURM_TIMEOUT)
        .await
        .ok()
        .filter(|o| o.status.success())?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut nodes: Vec<(&str, &str)> = text
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            Some((f.next()?, f.next().unwrap_or("")))
        })
        .collect();
    nodes.sort_unstable();
    nodes.dedup();
    let me = llmgw_core::host::node_hostname();
    let short = |h: &str| h.split('.').next().unwrap_or(h).to_ascii_lowercase();
    let mine = short(&me);
    let here = |(node, host): &(&str, &str)| short(node) == mine || short(host) == mine;
    (!nodes.is_empty() && nodes.iter().all(here)).then(|| {
        let names: Vec<&str> = nodes.iter().map(|(n, _)| *n).collect();
        names.join(", ")
    })
}

/// SLURM runs jobs without a private /tmp: no job container (`JobContainerType`, or
/// `NamespaceType` in newer SLURM) is configured. False when that cannot be told.
async fn no_private_tmp() -> bool {
    let Ok(out) = bounded("scontrol", &["show", "config"], SLURM_TIMEOUT).await else {
        return false;
    };
    if !out.status.success() {
        return false;
    }
    String::from_utf8_lossy(&out.stdout).lines().all(|line| {
        let Some((key, value)) = line.split_once('=') else {
            return true;
        };
        let value = value.trim();
        !matches!(key.trim(), "JobContainerType" | "NamespaceType")
            || value.is_empty()
            || value == "(null)"
            || value.ends_with("/none")
    })
}

// --- the config and its keys -------------------------------------------------------

/// A config that parsed and validated, with its text for locating secret references.
pub(crate) struct Loaded {
    config: Config,
    text: String,
    name: String,
}

impl Loaded {
    fn at(&self, value: &Spanned<String>) -> String {
        let (line, col) = config::line_col(&self.text, value.span().start);
        format!("{}:{line}:{col}", self.name)
    }

    fn resolve(&self, value: &Spanned<String>) -> Result<Secret, config::ConfigError> {
        config::resolve_secret_in(value, &self.text, &self.name)
    }
}

fn load_config(source: &ConfigSource) -> (Check, Option<Loaded>) {
    let c = check("config", "config");
    let name = source.shown();
    let (text, what) = match source {
        ConfigSource::Quickstart => (
            config::QUICKSTART.to_string(),
            format!(
                "no -c given and no ./{DEFAULT_CONFIG}: the built-in quickstart, which \
                 `llmgw serve` runs without -c,"
            ),
        ),
        ConfigSource::File(path) => match std::fs::read_to_string(path) {
            Ok(t) => (t, name.clone()),
            Err(e) => {
                return (
                    c.fail(
                        format!("cannot read {name}: {e}"),
                        "give your config with -c FILE (commented examples in configs/)",
                    ),
                    None,
                )
            }
        },
    };
    let parsed = Config::parse_str(&text, &name).and_then(|config| {
        // What `start` refuses: more GPUs or nodes than [slurm] asks for.
        llmgw_cluster::placement::check_request(&config, &text, &name).map(|()| config)
    });
    match parsed {
        Ok(config) => {
            let groups: std::collections::BTreeSet<&str> = config
                .models
                .iter()
                .map(|m| m.name.get_ref().as_str())
                .collect();
            let launched = config.models.iter().filter(|m| m.launch.is_some()).count();
            let detail = format!(
                "{what} is valid: {} in {}, {launched} launched in the job",
                count(config.models.len(), "deployment"),
                count(groups.len(), "model group")
            );
            let c = c.ok(detail);
            (c, Some(Loaded { config, text, name }))
        }
        Err(e) => (
            c.fail(
                e.to_string(),
                "correct that spot in the file (the README's Configuration section lists every key)",
            ),
            None,
        ),
    }
}

/// Every `env:`/`file:` reference with where it is used. Literal values are not listed:
/// their text is the secret.
fn secret_refs(config: &Config) -> Vec<(String, String, &Spanned<String>)> {
    let mut refs = Vec::new();
    if let Some(k) = &config.server.master_key {
        refs.push(("server.master_key".into(), "[server] master_key".into(), k));
    }
    for (i, m) in config.models.iter().enumerate() {
        if let Some(k) = &m.api_key {
            let used = format!("models[{i}] api_key ({})", m.name.get_ref());
            refs.push((format!("models[{i}].api_key"), used, k));
        }
    }
    if let Some(u) = &config.cache.redis_url {
        refs.push(("cache.redis_url".into(), "[cache] redis_url".into(), u));
    }
    refs.retain(|(_, _, v)| v.get_ref().starts_with("env:") || v.get_ref().starts_with("file:"));
    refs
}

fn key_checks(l: &Loaded, here: Option<&str>) -> Vec<Check> {
    secret_refs(&l.config)
        .into_iter()
        .map(|(id, used, value)| {
            let reference = value.get_ref();
            let c = check(format!("key:{id}"), format!("key {reference}"));
            let at = l.at(value);
            if let Some(var) = reference.strip_prefix("env:") {
                return match l.resolve(value) {
                    Ok(_) => c.ok(format!("{var} is set (for {used})")),
                    Err(_) => c.fail(
                        format!("{var} is not set or empty (for {used}, at {at})"),
                        format!("export {var}=... in the shell you run `llmgw start` from (the job inherits it), or change the reference at {at}"),
                    ),
                };
            }
            let path = reference.strip_prefix("file:").unwrap_or_default();
            let path = std::path::absolute(config::expand_home(path))
                .unwrap_or_else(|_| PathBuf::from(path));
            let fix = format!(
                "put the key in {} (chmod 600) on the shared filesystem, or change the reference at {at}",
                tilde(&path)
            );
            if let Err(e) = l.resolve(value) {
                return c.fail(e.to_string(), fix);
            }
            if let Some(mode) = group_or_other_bits(&path) {
                return c.warn(
                    format!("{} is readable by others (mode {mode:o})", tilde(&path)),
                    format!("chmod 600 {}", tilde(&path)),
                );
            }
            shared_check(c, &path, here, &fix)
        })
        .collect()
}

/// The file's permission bits when group or others may read or write it.
fn group_or_other_bits(path: &Path) -> Option<u32> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path).ok()?.permissions().mode() & 0o777;
    (mode & 0o066 != 0).then_some(mode)
}

// --- small helpers -----------------------------------------------------------------

/// Runs a command with no stdin, killing it after `limit`.
async fn bounded(
    program: &str,
    args: &[&str],
    limit: Duration,
) -> Result<std::process::Output, String> {
    let out = tokio::process::Command::new(program)
        .args(args)
        .env_remove("SLURM_JOB_ID")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    match tokio::time::timeout(limit, out).await {
        Ok(Ok(out)) => Ok(out),
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::NotFound => {
            Err(format!("{program} not found on PATH"))
        }
        Ok(Err(e)) => Err(format!("cannot run {program}: {e}")),
        Err(_) => Err(format!(
            "{program} did not answer within {} s",
            limit.as_secs()
        )),
    }
}

/// `1 deployment`, `2 deployments`.
fn count(n: usize, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

fn first_line(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes)
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or_default()
        .to_string()
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// The program's path: as given when it has a `/`, else the first match on PATH.
fn which(program: &str) -> Option<PathBuf> {
    if program.contains('/') {
        let p = PathBuf::from(program);
        return is_executable(&p).then_some(p);
    }
    let paths = std::env::var_os("PATH")?;
    std::env::split_paths(&paths)
        .map(|d| d.join(program))
        .find(|p| is_executable(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scratch_paths_are_never_shared() {
        for p in ["/tmp/x/state", "/dev/shm/llmgw", "/var/tmp/a"] {
            assert!(
                matches!(place(Path::new(p)), Ok(Place::Scratch(_))),
                "{p} should count as scratch"
            );
        }
    }

    #[test]
    fn this_binary_has_this_machines_arch() {
        let exe = std::env::current_exe().unwrap();
        assert_eq!(elf_arch(&exe), Some(std::env::consts::ARCH));
        assert_eq!(elf_arch(Path::new("/surely/not/here")), None);
    }

    #[test]
    fn which_finds_sh() {
        assert!(which("sh").is_some());
        assert!(which("surely-no-such-program-llmgw").is_none());
        assert!(which("/surely/not/here").is_none());
    }
}
