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

use super::{login_host_from, target_dir, tilde, user_name};
use crate::cli::DoctorArgs;
use crate::config::{self, Config, Secret};
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
struct Named {
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
    let me = crate::serve::node_hostname();
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
struct Loaded {
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
        crate::placement::check_request(&config, &text, &name).map(|()| config)
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

async fn redis_check(l: &Loaded) -> Option<Check> {
    let value = l.config.cache.redis_url.as_ref()?;
    let c = check("redis", "Redis");
    let Ok(url) = l.resolve(value) else {
        return Some(c.skip("not checked: its redis_url reference is not resolved (see above)"));
    };
    let at = l.at(value);
    // Only host:port is shown: the URL may carry a password.
    let Ok(addr) = redis::Client::open(url.expose())
        .map(|client| client.get_connection_info().addr().to_string())
    else {
        return Some(c.fail(
            format!("[cache] redis_url at {at} is not a Redis URL"),
            "write it as redis://[:password@]host:6379[/db]",
        ));
    };
    let fix = format!(
        "start Redis on {addr} where the compute nodes reach it, or change [cache] redis_url at {at} (without it each gateway keeps its own cache and cooldowns)"
    );
    Some(
        match crate::cache::redis::RedisStore::connect(url.expose(), REDIS_TIMEOUT).await {
            Ok(store) if store.is_up() => c.ok(format!("{addr} answers PING")),
            Ok(_) => c.fail(
                format!(
                    "{addr} did not answer (connect + PING, {} ms)",
                    REDIS_TIMEOUT.as_millis() * 4
                ),
                fix,
            ),
            Err(e) => c.fail(e.to_string(), fix),
        },
    )
}

// --- where things live -------------------------------------------------------------

fn state_dir_check(name: &str, dir: &Path, here: Option<&str>) -> Check {
    let c = check("state-dir", "state directory");
    let fix = format!(
        "keep it on the shared filesystem: the default ~/.llmgw/{name}, or --state-dir / LLMGW_STATE_DIR under your home or project space"
    );
    let existing = existing_ancestor(dir);
    let writable = nix::unistd::access(
        existing,
        nix::unistd::AccessFlags::W_OK | nix::unistd::AccessFlags::X_OK,
    )
    .is_ok();
    if !writable {
        return c.fail(
            format!(
                "{} cannot be created: {} is not writable by you",
                tilde(dir),
                tilde(existing)
            ),
            fix,
        );
    }
    shared_check(c, dir, here, &fix)
}

/// The binary the job runs: `[slurm] binary`, else this one (as `start` decides), and its
/// path when it is a runnable file. `scratch_here`: every node runs on this machine and
/// jobs see its /tmp (see the module docs).
fn binary_check(
    config: Option<&Config>,
    here: Option<&str>,
    scratch_here: Option<&str>,
) -> (Check, Option<PathBuf>) {
    let c = check("binary", "llmgw binary");
    let fix = "copy llmgw to a directory the compute nodes see (e.g. ~/bin) and run it from there, or set [slurm] binary to it";
    let path = match config.and_then(|c| c.slurm.binary.as_ref()) {
        Some(b) => std::path::absolute(b).unwrap_or_else(|_| b.clone()),
        None => match std::env::current_exe() {
            Ok(p) => p,
            Err(e) => {
                return (
                    c.fail(format!("cannot tell where this binary is: {e}"), fix),
                    None,
                )
            }
        },
    };
    if !is_executable(&path) {
        return (
            c.fail(format!("{} is not an executable file", tilde(&path)), fix),
            None,
        );
    }
    let check = match (place(&path), scratch_here) {
        (Ok(Place::Scratch(dir)), Some(nodes)) => c.ok(format!(
            "{} (under {dir}, node-local scratch; fine: every node of the cluster ({nodes}) runs on this machine and SLURM gives jobs no private {dir})",
            tilde(&path)
        )),
        _ => shared_check(c, &path, here, fix),
    };
    (check, Some(path))
}

/// The compute nodes' CPU architecture against the binary's: an x86_64 login node in
/// front of Grace Hopper (aarch64) nodes needs the aarch64 build. Nothing to say when the
/// binary is not an ELF file llmgw knows or SLURM does not report the nodes' `Arch`.
async fn arch_check(binary: &Path, partition: Option<&str>) -> Option<Check> {
    let ours = elf_arch(binary)?;
    let out = bounded("scontrol", &["show", "node", "-o"], SLURM_TIMEOUT)
        .await
        .ok()
        .filter(|o| o.status.success())?;
    let text = String::from_utf8_lossy(&out.stdout);
    let wanted: Option<Vec<&str>> = partition.map(|p| p.split(',').map(str::trim).collect());
    // arch -> nodes
    let mut archs: std::collections::BTreeMap<&str, Vec<&str>> = Default::default();
    for line in text.lines() {
        let field = |key: &str| line.split_whitespace().find_map(|f| f.strip_prefix(key));
        let (Some(node), Some(arch)) = (field("NodeName="), field("Arch=")) else {
            continue;
        };
        let in_partition = wanted.as_ref().is_none_or(|w| {
            field("Partitions=").is_some_and(|ps| ps.split(',').any(|p| w.contains(&p)))
        });
        if in_partition && arch != "(null)" {
            archs.entry(arch).or_default().push(node);
        }
    }
    if archs.is_empty() {
        return None;
    }
    let c = check("node-arch", "compute nodes' architecture");
    let scope = partition.map_or_else(String::new, |p| format!(" in partition {p}"));
    let count: usize = archs.values().map(Vec::len).sum();
    let others: Vec<String> = archs
        .iter()
        .filter(|(a, _)| **a != ours)
        .map(|(a, nodes)| format!("{a} ({})", nodes.join(", ")))
        .collect();
    let build = "build llmgw for that architecture (README: Other architectures) and set [slurm] binary to it";
    Some(if others.is_empty() {
        let nodes = if count == 1 { "node" } else { "nodes" };
        c.ok(format!("{ours}, like the binary ({count} {nodes}{scope})"))
    } else if !archs.contains_key(ours) {
        c.fail(
            format!(
                "the nodes{scope} are {}; the binary is {ours}",
                others.join(", ")
            ),
            build,
        )
    } else {
        c.warn(
            format!(
                "some nodes{scope} are {}; the binary is {ours}",
                others.join(", ")
            ),
            format!(
                "keep the job on {ours} nodes with [slurm] partition or constraint, or {build}"
            ),
        )
    })
}

/// The CPU architecture of an ELF executable, named as SLURM's `Arch` and `uname -m`.
fn elf_arch(path: &Path) -> Option<&'static str> {
    use std::io::Read as _;
    let mut head = [0u8; 20];
    std::fs::File::open(path).ok()?.read_exact(&mut head).ok()?;
    if &head[..4] != b"\x7fELF" || head[5] != 1 {
        return None; // not ELF, or big-endian
    }
    match u16::from_le_bytes([head[18], head[19]]) {
        0x3e => Some("x86_64"),
        0xb7 => Some("aarch64"),
        0x15 => Some("ppc64le"),
        _ => None,
    }
}

/// Where a path lives, as far as the compute nodes are concerned.
enum Place {
    /// Under one of [`SCRATCH`].
    Scratch(&'static str),
    /// On a network filesystem.
    Shared(String),
    /// On a node-local filesystem.
    Local(String),
}

/// The path, or its closest parent that exists (a state directory may not exist yet).
fn existing_ancestor(path: &Path) -> &Path {
    path.ancestors()
        .find(|p| p.exists())
        .unwrap_or(Path::new("/"))
}

fn place(path: &Path) -> std::io::Result<Place> {
    let real = std::fs::canonicalize(existing_ancestor(path))?;
    for dir in SCRATCH {
        if real.starts_with(dir) || path.starts_with(dir) {
            return Ok(Place::Scratch(dir));
        }
    }
    let st = nix::sys::statfs::statfs(&real).map_err(std::io::Error::from)?;
    // `f_type` is a signed word; the magic numbers are 32-bit.
    let magic = (st.filesystem_type().0 as u64) & 0xffff_ffff;
    Ok(match FILESYSTEMS.iter().find(|(m, _, _)| *m == magic) {
        Some((_, name, true)) => Place::Shared((*name).to_string()),
        Some((_, name, false)) => Place::Local((*name).to_string()),
        None => Place::Local(format!("a filesystem of type {magic:#x}")),
    })
}

/// statfs magic numbers (linux/magic.h and the vendors'): name, network filesystem?
const FILESYSTEMS: &[(u64, &str, bool)] = &[
    (0x6969, "nfs", true),
    (0x0bd0_0bd0, "lustre", true),
    (0x4750_4653, "gpfs", true),
    (0x1983_0326, "beegfs", true),
    (0x00c3_6400, "cephfs", true),
    (0xff53_4d42, "cifs", true),
    (0xfe53_4d42, "smb2", true),
    (0x517b, "smb", true),
    (0x5346_414f, "afs", true),
    (0x6b41_4653, "afs", true),
    (0xaad7_aaea, "panfs", true),
    (0x2003_0528, "orangefs", true),
    (0xef53, "ext4", false),
    (0x5846_5342, "xfs", false),
    (0x9123_683e, "btrfs", false),
    (0x2fc1_2fc1, "zfs", false),
    (0x0102_1994, "tmpfs", false),
    (0x8584_58f6, "ramfs", false),
    (0x794c_7630, "overlay", false),
    (0x6573_5546, "fuse", false),
    (0x7371_7368, "squashfs", false),
    (0x0102_1997, "9p", false),
];

/// The shared-filesystem rule (see the module doc) applied to `path`.
fn shared_check(c: Named, path: &Path, here: Option<&str>, fix: &str) -> Check {
    let shown = tilde(path);
    match place(path) {
        Err(e) => c.warn(format!("cannot tell where {shown} lives: {e}"), fix),
        Ok(Place::Scratch(dir)) => c.fail(
            format!("{shown} is under {dir}: node-local scratch, which the job may not see (SLURM can give each job its own {dir})"),
            fix,
        ),
        Ok(Place::Shared(fs)) => c.ok(format!("{shown} (on {fs}, a network filesystem)")),
        Ok(Place::Local(fs)) => match here {
            Some(node) => c.ok(format!(
                "{shown} (on {fs}, node-local; fine: every node of the cluster ({node}) runs on this machine)"
            )),
            None => c.warn(
                format!("{shown} is on {fs}, node-local: compute nodes may not see it"),
                fix,
            ),
        },
    }
}

// --- the ssh line ------------------------------------------------------------------

async fn login_host_check(config: Option<&Config>) -> Check {
    let c = check("login-host", "login host");
    let configured = config.and_then(|c| c.slurm.login_host.as_deref());
    let (host, from) = login_host_from(configured);
    let fix = "set [slurm] login_host = \"login.your-cluster.example\": the name you ssh to from your laptop";
    let lookup = host.clone();
    let resolves = tokio::time::timeout(
        DNS_TIMEOUT,
        tokio::task::spawn_blocking(move || {
            use std::net::ToSocketAddrs as _;
            (lookup.as_str(), 22)
                .to_socket_addrs()
                .is_ok_and(|mut a| a.next().is_some())
        }),
    )
    .await;
    if !matches!(resolves, Ok(Ok(true))) {
        return c.warn(format!("{host} (from {from}) does not resolve here"), fix);
    }
    let hint = if configured.is_some() {
        ""
    } else {
        "; if your laptop knows the login node by another name, set [slurm] login_host"
    };
    c.ok(format!(
        "{host} (from {from}): the ssh line will be `ssh -N -L PORT:NODE:PORT {}@{host}`{hint}",
        user_name()
    ))
}

// --- backends the job launches -----------------------------------------------------

async fn backend_checks(l: &Loaded, binary: Option<&Path>) -> Vec<Check> {
    let slurm = &l.config.slurm;
    let prepared = !slurm.modules.is_empty() || !slurm.setup.is_empty();
    let llmgw = binary.map_or_else(|| "llmgw".to_string(), |b| b.display().to_string());
    let mut checks = Vec::new();
    for (i, m) in l.config.models.iter().enumerate() {
        let Some(launch) = &m.launch else { continue };
        let name = m.name.get_ref();
        let c = check(format!("backend:models[{i}]"), format!("backend {name}"));
        let argv = match crate::supervise::command_line(name, launch, 0, &llmgw) {
            Ok(argv) => argv,
            Err(e) => {
                checks.push(c.fail(e.to_string(), "complete the model's launch table"));
                continue;
            }
        };
        let program = argv[0].as_str();
        let check = if launch.command.is_some() {
            command_check(c, program, &llmgw, prepared)
        } else {
            sglang_check(c, launch.model_path.as_deref(), prepared).await
        };
        checks.push(check);
    }
    checks
}

/// A `launch.command`: its program must be findable.
fn command_check(c: Named, program: &str, llmgw: &str, prepared: bool) -> Check {
    if program == llmgw {
        return c.ok("runs this llmgw binary (launch.command)");
    }
    match which(program) {
        Some(p) => c.ok(format!("{program} found at {}", p.display())),
        None if prepared => c.skip(format!(
            "{program} is not on PATH here; will be checked in the job, after [slurm] modules/setup"
        )),
        None => c.fail(
            format!("{program} (launch.command) not found on PATH"),
            "install it, give its full path in launch.command, or add the [slurm] modules/setup lines that provide it",
        ),
    }
}

/// SGLang launched with `python -m sglang.launch_server`: python must find sglang.
async fn sglang_check(c: Named, model_path: Option<&str>, prepared: bool) -> Check {
    let fix = "install SGLang for the python the job runs (pip install \"sglang[all]\"), or add [slurm] setup = [\"source ~/venvs/sglang/bin/activate\"] (or modules) that provide it";
    if prepared {
        return c.skip("python and sglang will be checked in the job, after [slurm] modules/setup");
    }
    let Some(python) = which("python") else {
        return c.fail(
            "python not found on PATH (the job runs `python -m sglang.launch_server`)",
            fix,
        );
    };
    let py = python.display().to_string();
    let found = match bounded(&py, &["-c", FIND_SGLANG], PYTHON_TIMEOUT).await {
        Ok(out) if out.status.success() => first_line(&out.stdout),
        Ok(out) if out.status.code() == Some(3) => {
            return c.fail(format!("{py} has no sglang"), fix)
        }
        Ok(out) => {
            return c.fail(format!("{py} failed: {}", first_line(&out.stderr)), fix);
        }
        Err(e) => return c.fail(e, fix),
    };
    if let Some(p) = model_path.filter(|p| p.starts_with('/') || p.starts_with("~/")) {
        let path = config::expand_home(p);
        if !path.exists() {
            return c.warn(
                format!("{py} finds {found}, but model_path {p} does not exist here"),
                "check launch.model_path: a directory the compute nodes see, or a Hugging Face model id",
            );
        }
    }
    c.ok(format!("{py} finds {found}"))
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
