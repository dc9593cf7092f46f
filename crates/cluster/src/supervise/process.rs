//! One backend's process on this node: its command line and allow-listed environment,
//! the spawn (own process group, log file, `PR_SET_PDEATHSIG`), the supervisor that waits
//! for `/health`, restarts with backoff and stops the whole group.

use super::*;

/// `[A-Za-z0-9._-]` only, for file names.
pub(crate) fn sanitize(name: &str) -> String {
    let s: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    if s.is_empty() || s.starts_with('.') {
        format!("backend{s}")
    } else {
        s
    }
}

/// A port nothing listens on at `host` now (it is the backend's to take).
pub(crate) fn free_port(host: &str) -> std::io::Result<u16> {
    let ip: std::net::IpAddr = host
        .parse()
        .map_err(|_| std::io::Error::other(format!("{host:?} is not an IP address")))?;
    let l = std::net::TcpListener::bind((ip, 0))?;
    Ok(l.local_addr()?.port())
}

/// An IP address as the host part of a URL (IPv6 in brackets).
pub(crate) fn url_host(addr: &str) -> String {
    if addr.contains(':') && !addr.starts_with('[') {
        format!("[{addr}]")
    } else {
        addr.to_string()
    }
}

/// The backend's argv for one `launch` table on loopback (what `llmgw doctor` checks).
pub fn command_line(
    name: &str,
    launch: &LaunchConfig,
    port: u16,
    llmgw: &str,
) -> Result<Vec<String>, SuperviseError> {
    spec_command_line(
        &BackendSpec::from_launch(name, launch),
        "127.0.0.1",
        port,
        llmgw,
    )
}

/// SGLang's `--config` file for a backend: its API key, as YAML (a JSON string is a YAML
/// scalar, whatever a configured key contains). SGLang reads only files named `.yaml` or
/// `.yml`, and turns each key into the flag of the same name (`api-key` → `--api-key`).
pub fn sglang_config_yaml(spec: &BackendSpec) -> Result<String, serde_json::Error> {
    let quoted = serde_json::to_string(spec.key.expose())?;
    Ok(format!(
        "# llmgw: the API key of backend {}\napi-key: {quoted}\n",
        spec.name
    ))
}

/// The backend's argv: SGLang's launch line, or `command` with placeholders substituted
/// (`{port}`, `{host}`, `{model_path}`, `{llmgw}`, `{replica}`, `{rank}`, `{node}`). A
/// multi-node server also gets SGLang's `--nnodes N --node-rank R --dist-init-addr A`,
/// appended to a `command` too.
pub fn spec_command_line(
    spec: &BackendSpec,
    host: &str,
    port: u16,
    llmgw: &str,
) -> Result<Vec<String>, SuperviseError> {
    let name = &spec.name;
    let model_path = spec.model_path.clone().unwrap_or_default();
    let subst = |s: &str| {
        s.replace("{port}", &port.to_string())
            .replace("{host}", host)
            .replace("{model_path}", &model_path)
            .replace("{llmgw}", llmgw)
            .replace("{replica}", &spec.replica.to_string())
            .replace("{rank}", &spec.rank.to_string())
            .replace("{node}", &spec.node)
    };
    let reserved: &[(&str, &str)] = if spec.nnodes > 1 {
        &[
            ("--api-key", ""),
            ("--config", ""),
            ("--nnodes", "; llmgw sets it from launch.nnodes"),
            ("--node-rank", "; llmgw sets it for each node"),
            ("--dist-init-addr", "; llmgw picks it on rank 0's node"),
        ]
    } else {
        &[("--api-key", ""), ("--config", "")]
    };
    let mut argv: Vec<String> = match &spec.command {
        Some(cmd) => {
            if cmd.is_empty() || cmd[0].trim().is_empty() {
                return Err(SuperviseError::EmptyCommand { name: name.into() });
            }
            cmd.iter()
                .chain(spec.args.iter())
                .map(|s| subst(s))
                .collect()
        }
        None => {
            if model_path.is_empty() {
                return Err(SuperviseError::NoModelPath { name: name.into() });
            }
            let mut v: Vec<String> = [
                "python",
                "-m",
                "sglang.launch_server",
                "--model-path",
                &model_path,
                "--host",
                host,
                "--port",
                &port.to_string(),
                "--tp-size",
                &spec.tp.to_string(),
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            for &(arg, why) in reserved {
                let taken = |a: &String| a == arg || a.starts_with(&format!("{arg}="));
                if spec.args.iter().any(taken) {
                    return Err(SuperviseError::ReservedArg {
                        name: name.into(),
                        arg,
                        more: if why.is_empty() {
                            "; put other settings in launch.args"
                        } else {
                            why
                        },
                    });
                }
            }
            v.extend(spec.args.iter().map(|s| subst(s)));
            v
        }
    };
    if spec.nnodes > 1 {
        argv.extend([
            "--nnodes".to_string(),
            spec.nnodes.to_string(),
            "--node-rank".to_string(),
            spec.rank.to_string(),
        ]);
        if let Some(addr) = &spec.dist_init_addr {
            argv.extend(["--dist-init-addr".to_string(), addr.clone()]);
        }
    }
    Ok(argv)
}

/// The part of the gateway's environment a backend (or a node agent) inherits:
/// [`ENV_ALLOW`] only, and never a variable holding one of the config's secrets.
pub(crate) fn inherited_env(cfg: &LoadedConfig) -> Vec<(OsString, OsString)> {
    let secrets: Vec<&str> = cfg
        .model_keys
        .iter()
        .flatten()
        .chain(&cfg.master_key)
        .chain(&cfg.redis_url)
        .map(Secret::expose)
        .filter(|s| s.len() >= 8)
        .collect();
    allowed_env(&secrets)
}

/// This process's environment, [`ENV_ALLOW`] only, without any variable holding one of
/// `secrets`.
pub(crate) fn allowed_env(secrets: &[&str]) -> Vec<(OsString, OsString)> {
    std::env::vars_os()
        .filter(|(k, v)| {
            let Some(k) = k.to_str() else { return false };
            let allowed = ENV_ALLOW
                .iter()
                .any(|a| k == *a || (a.ends_with('_') && k.starts_with(a)));
            let v = v.to_string_lossy();
            allowed && !secrets.iter().any(|s| v.contains(s))
        })
        .collect()
}

/// Starts the backend in its own process group, output appended to its log.
pub(crate) fn spawn(plan: &Plan, attempt: u32) -> Result<tokio::process::Child, SuperviseError> {
    use std::process::Stdio;
    let mut cmd = tokio::process::Command::new(&plan.program);
    cmd.args(&plan.args)
        .env_clear()
        .envs(plan.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .process_group(0)
        .kill_on_drop(false);
    die_with_parent(&mut cmd);
    if let Some(path) = &plan.log {
        let log_err = |source| SuperviseError::Log {
            name: plan.name.clone(),
            path: path.display().to_string(),
            source,
        };
        let mut file = open_log(path).map_err(log_err)?;
        use std::io::Write;
        let _ = writeln!(
            file,
            "=== llmgw {}: starting backend {} (start {}): {} {}",
            llmgw_core::state::now_rfc3339(),
            plan.name,
            attempt + 1,
            plan.program,
            plan.args.join(" ")
        );
        let err = file.try_clone().map_err(log_err)?;
        cmd.stdout(Stdio::from(file)).stderr(Stdio::from(err));
    }
    let child = cmd.spawn().map_err(|source| SuperviseError::Spawn {
        name: plan.name.clone(),
        program: plan.program.clone(),
        source,
    })?;
    tracing::info!(backend = %plan.name, pid = child.id(), port = plan.port, "backend started");
    Ok(child)
}

/// The child gets SIGKILL when the gateway dies (`PR_SET_PDEATHSIG`), however it dies:
/// a backend must not outlive it holding GPUs. (SGLang's own workers do the same with
/// their parent.) The signal follows the thread that spawned the child: a runtime worker
/// or the main thread, which live as long as the gateway.
pub fn die_with_parent(cmd: &mut tokio::process::Command) {
    let parent = nix::unistd::getpid();
    // SAFETY: the closure runs between fork and exec and only makes system calls
    // (prctl, getppid); it allocates nothing and takes no lock.
    unsafe {
        cmd.pre_exec(move || {
            nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)?;
            // The gateway turned transparent huge pages off for itself (`main`); a model
            // server gets the machine's setting back.
            let _ = nix::sys::prctl::set_thp_disable(false);
            // The gateway died before prctl took effect: no signal will come.
            if nix::unistd::getppid() != parent {
                return Err(nix::errno::Errno::ESRCH.into());
            }
            Ok(())
        });
    }
}

pub(crate) fn open_log(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
}

/// How one run of a backend ended.
pub(crate) enum Ended {
    Exited(String),
    LoadTimeout,
    Stopped,
}

pub(crate) struct Supervisor {
    pub(crate) i: usize,
    pub(crate) plan: Plan,
    pub(crate) shared: Arc<Shared>,
    pub(crate) deployment: Option<Availability>,
    pub(crate) client: reqwest::Client,
    pub(crate) stop: CancellationToken,
}

impl Supervisor {
    pub(crate) async fn run(self, first: tokio::process::Child) {
        let mut child = Some(first);
        let mut attempt: u32 = 0;
        let mut failures_before_ready: u32 = 0;
        let mut ever_ready = false;
        let mut backoff = Duration::from_secs(1);
        let mut crash = super::crash::CrashLoop::default();
        loop {
            let mut c = match child.take() {
                Some(c) => c,
                None => match spawn(&self.plan, attempt) {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::error!(backend = %self.plan.name, error = %e, "backend could not be restarted");
                        self.shared.update(self.i, |b| {
                            b.state = BackendState::Failed;
                            b.pid = None;
                            b.last_error = Some(e.to_string());
                        });
                        if self.sleep(backoff).await {
                            break;
                        }
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                        continue;
                    }
                },
            };
            let pid = c.id();
            let keep_failed = !ever_ready && failures_before_ready >= FAILED_AFTER;
            self.shared.update(self.i, |b| {
                b.pid = pid;
                if !keep_failed {
                    b.state = BackendState::Loading;
                }
            });
            let started = Instant::now();
            let ended = self.one_run(&mut c, &mut crash).await;
            self.set_available(false);
            if let Some(pid) = pid {
                stop_group(pid, &mut c, KILL_GRACE).await;
            }
            let (why, timed_out) = match ended {
                Ended::Stopped => {
                    self.shared.update(self.i, |b| {
                        b.state = BackendState::Stopped;
                        b.pid = None;
                    });
                    break;
                }
                Ended::Exited(status) => (status, false),
                Ended::LoadTimeout => (
                    format!(
                        "not ready within load_timeout ({:?})",
                        self.plan.load_timeout
                    ),
                    true,
                ),
            };
            let was_ready = self.shared.snapshot()[self.i].state == BackendState::Ready;
            if was_ready {
                ever_ready = true;
                failures_before_ready = 0;
            } else {
                failures_before_ready += 1;
            }
            if started.elapsed() >= STABLE_AFTER {
                backoff = Duration::from_secs(1);
            }
            let failed = timed_out || (!was_ready && failures_before_ready >= FAILED_AFTER);
            crash.exited(&self.plan.name, &why, Instant::now());
            tracing::warn!(backend = %self.plan.name, reason = %why, restart_in = ?backoff, "backend stopped; restarting it");
            self.shared.update(self.i, |b| {
                b.pid = None;
                b.restarts += 1;
                b.last_error = Some(why.clone());
                b.state = if failed || b.state == BackendState::Failed {
                    BackendState::Failed
                } else {
                    BackendState::Restarting
                };
            });
            attempt += 1;
            if self.sleep(backoff).await {
                self.shared
                    .update(self.i, |b| b.state = BackendState::Stopped);
                break;
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// Loads (polls until ready), then runs until the process exits or we are stopped.
    pub(crate) async fn one_run(
        &self,
        c: &mut tokio::process::Child,
        crash: &mut super::crash::CrashLoop,
    ) -> Ended {
        let deadline = tokio::time::Instant::now() + self.plan.load_timeout;
        let ready = async {
            loop {
                if self.probe().await {
                    return;
                }
                tokio::time::sleep(POLL).await;
            }
        };
        tokio::select! {
            _ = self.stop.cancelled() => return Ended::Stopped,
            status = c.wait() => return Ended::Exited(exit_text(status)),
            _ = tokio::time::sleep_until(deadline) => return Ended::LoadTimeout,
            _ = ready => {}
        }
        tracing::info!(backend = %self.plan.name, port = self.plan.port, "backend ready");
        self.shared.update(self.i, |b| {
            b.state = BackendState::Ready;
        });
        self.set_available(true);
        crash.ready(&self.plan.name);
        tokio::select! {
            _ = self.stop.cancelled() => Ended::Stopped,
            status = c.wait() => Ended::Exited(exit_text(status)),
        }
    }

    /// `/health` and then `/v1/models` both answer 200 (with the backend's key: SGLang
    /// requires it on `/v1/models`).
    pub(crate) async fn probe(&self) -> bool {
        if !self.plan.probe {
            return true;
        }
        let base = format!("http://{}:{}", url_host(&self.plan.host), self.plan.port);
        for path in ["/health", "/v1/models"] {
            let req = self
                .client
                .get(format!("{base}{path}"))
                .bearer_auth(self.plan.key.expose());
            match req.send().await {
                Ok(r) if r.status().is_success() => {}
                _ => return false,
            }
        }
        true
    }

    pub(crate) fn set_available(&self, on: bool) {
        if let Some(d) = &self.deployment {
            d(on);
        }
    }

    /// Sleeps; true when stopped meanwhile.
    pub(crate) async fn sleep(&self, d: Duration) -> bool {
        tokio::select! {
            _ = self.stop.cancelled() => true,
            _ = tokio::time::sleep(d) => false,
        }
    }
}

pub(crate) fn exit_text(status: std::io::Result<std::process::ExitStatus>) -> String {
    use std::os::unix::process::ExitStatusExt;
    match status {
        Ok(s) => match (s.code(), s.signal()) {
            (Some(code), _) => format!("exited with status {code}"),
            (None, Some(sig)) => format!("killed by signal {sig}"),
            _ => "exited".into(),
        },
        Err(e) => format!("cannot wait for it: {e}"),
    }
}

/// SIGTERM to the process group, SIGKILL to whatever is left after `grace`.
pub(crate) async fn stop_group(pgid: u32, leader: &mut tokio::process::Child, grace: Duration) {
    let Ok(raw) = i32::try_from(pgid) else { return };
    let group = Pid::from_raw(raw);
    if killpg(group, Signal::SIGTERM).is_err() {
        // No process left in the group; reap the leader if it has not been.
        let _ = leader.try_wait();
        return;
    }
    let deadline = tokio::time::Instant::now() + grace;
    let _ = tokio::time::timeout_at(deadline, leader.wait()).await;
    // The leader is gone (or the grace is over); wait for the rest of the group.
    while tokio::time::Instant::now() < deadline {
        if killpg(group, None).is_err() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if killpg(group, Signal::SIGKILL).is_ok() {
        tracing::warn!(pgid, "backend did not stop within {grace:?}; killed");
    }
    let _ = leader.wait().await;
}
