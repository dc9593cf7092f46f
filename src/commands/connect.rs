//! `llmgw connect`: one stable local address that always reaches the gateway's current
//! generation, wherever its job runs.
//!
//! A local TCP listener; for each accepted connection it looks up the current endpoint
//! (cached for a second) and forwards bytes both ways. Connections already open stay where
//! they are; a new one goes to whatever `endpoint.json` names at that moment, so after a
//! handover new connections reach the new job with no user action (the old job asks its
//! clients to reconnect by closing each connection after its response).
//!
//! - On a login node (no `--login`) it reads `endpoint.json` from the state directory and
//!   connects directly.
//! - From a laptop (`--login USER@HOST`) it keeps one ssh connection to the login host (a
//!   ControlMaster, reconnected with backoff when it drops), reads `endpoint.json` through
//!   it with `head -c` (capped), and opens one `ssh -W node:port` channel on that connection per local
//!   connection. No key or secret passes through its command lines.

use super::name_flag;
use crate::args::ConnectArgs;
use anyhow::Context as _;
use llmgw_core::state::{EndpointRecord, ENDPOINT_FILE, KEY_FILE};
use std::path::PathBuf;
use std::process::{ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::Command;

pub use crate::args::DEFAULT_PORT;
/// How long an endpoint lookup is reused.
const CACHE_FOR: Duration = Duration::from_secs(1);
/// Connecting to the gateway, or waiting for ssh to come back, at most this long.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// ssh reconnect delays: 1 s, 2 s, 4 s, … up to this.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Largest endpoint record read over ssh.
const MAX_RECORD: usize = 64 * 1024;

pub fn run(args: ConnectArgs) -> anyhow::Result<ExitCode> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(serve(args))?;
    Ok(ExitCode::SUCCESS)
}

async fn serve(args: ConnectArgs) -> anyhow::Result<()> {
    let name = args.target.name.trim().to_string();
    let source = match &args.login {
        None => {
            let (_, dir) = super::target_dir(&args.target)?;
            Source::Local(dir)
        }
        Some(login) => {
            super::target_dir(&args.target)?; // checks the name
            let remote_dir = match &args.target.state_dir {
                Some(d) => d.display().to_string(),
                None => format!(".llmgw/{name}"),
            };
            Source::Ssh(Ssh::start(&args, login, remote_dir).await?)
        }
    };
    let source = Arc::new(Lookup {
        source,
        cache: Mutex::new(None),
        last: Mutex::new(String::new()),
    });
    let listener = TcpListener::bind((args.bind.as_str(), args.port))
        .await
        .with_context(|| {
            format!(
                "cannot listen on {}:{} (taken? pick another with --port)",
                args.bind, args.port
            )
        })?;
    let port = listener.local_addr()?.port();
    let key_line = match (&source.source, &args.login) {
        (Source::Local(dir), _) => {
            format!(
                "export OPENAI_API_KEY=$(cat {})",
                super::tilde(&dir.join(KEY_FILE))
            )
        }
        (Source::Ssh(s), Some(login)) => format!(
            "export OPENAI_API_KEY=$(ssh{} {login} cat {}/{KEY_FILE})",
            s.port_flag(),
            s.remote_dir
        ),
        (Source::Ssh(_), None) => String::new(),
    };
    let now = match source.endpoint().await {
        Ok(ep) => format!(
            "now job {} on {}:{}",
            ep.job_id.as_deref().unwrap_or("?"),
            ep.connect_host(),
            ep.port
        ),
        Err(e) => format!("not reachable right now: {e}"),
    };
    println!(
        "llmgw connect: http://{}:{port} follows gateway \"{name}\" across its jobs ({now}); Ctrl-C to stop",
        args.bind
    );
    println!("  export OPENAI_BASE_URL=http://localhost:{port}/v1");
    println!("  {key_line}");
    println!("  (status: llmgw status{})", name_flag(&name));
    use std::io::Write as _;
    let _ = std::io::stdout().flush();

    let stop = async {
        use tokio::signal::unix::{signal, SignalKind};
        match (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        ) {
            (Ok(mut i), Ok(mut t)) => {
                tokio::select! { _ = i.recv() => {}, _ = t.recv() => {} }
            }
            _ => std::future::pending::<()>().await,
        }
    };
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => break,
            accepted = listener.accept() => {
                let Ok((client, _)) = accepted else { continue };
                let _ = client.set_nodelay(true);
                let lookup = source.clone();
                tokio::spawn(async move { lookup.forward(client).await });
            }
        }
    }
    eprintln!("llmgw connect: stopped");
    if let Source::Ssh(s) = &source.source {
        s.close().await;
    }
    Ok(())
}

enum Source {
    /// The state directory on this machine.
    Local(PathBuf),
    Ssh(Ssh),
}

struct Lookup {
    source: Source,
    cache: Mutex<Option<(Instant, EndpointRecord)>>,
    /// The last target announced, to log each change once.
    last: Mutex<String>,
}

impl Lookup {
    /// The current endpoint, at most [`CACHE_FOR`] old.
    async fn endpoint(&self) -> Result<EndpointRecord, String> {
        if let Some((at, ep)) = &*self.cache.lock().unwrap_or_else(|e| e.into_inner()) {
            if at.elapsed() < CACHE_FOR {
                return Ok(ep.clone());
            }
        }
        let ep = match &self.source {
            Source::Local(dir) => match EndpointRecord::read(dir) {
                Ok(Some(ep)) => ep,
                Ok(None) => {
                    return Err(format!(
                        "no gateway is running ({} is absent); see `llmgw status`",
                        dir.join(ENDPOINT_FILE).display()
                    ))
                }
                Err(e) => return Err(format!("cannot read the endpoint record: {e}")),
            },
            Source::Ssh(s) => s.endpoint().await?,
        };
        *self.cache.lock().unwrap_or_else(|e| e.into_inner()) = Some((Instant::now(), ep.clone()));
        Ok(ep)
    }

    async fn forward(&self, mut client: TcpStream) {
        let ep = match self.endpoint().await {
            Ok(ep) => ep,
            Err(e) => {
                eprintln!("llmgw connect: refusing a connection: {e}");
                return;
            }
        };
        let target = format!("{}:{}", ep.connect_host(), ep.port);
        self.announce(&ep, &target);
        let r = match &self.source {
            Source::Local(_) => {
                match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&target)).await {
                    Ok(Ok(mut up)) => {
                        let _ = up.set_nodelay(true);
                        tokio::io::copy_bidirectional(&mut client, &mut up)
                            .await
                            .map(|_| ())
                    }
                    Ok(Err(e)) => Err(e),
                    Err(_) => Err(std::io::Error::other("timed out")),
                }
            }
            Source::Ssh(s) => s.channel(&ep.connect_host(), ep.port, &mut client).await,
        };
        if let Err(e) = r {
            // A dropped target is worth a line; a client that hung up is not.
            if !matches!(
                e.kind(),
                std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
            ) {
                eprintln!("llmgw connect: connection to {target}: {e}");
            }
        }
    }

    fn announce(&self, ep: &EndpointRecord, target: &str) {
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        if *last != target {
            eprintln!(
                "llmgw connect: new connections go to job {} (generation {}) at {target}",
                ep.job_id.as_deref().unwrap_or("?"),
                ep.generation
            );
            *last = target.to_string();
        }
    }
}

/// One multiplexed ssh connection to the login host.
struct Ssh {
    /// `-p`, `-i`, `-o` and the destination, shared by every ssh invocation.
    base: Vec<String>,
    ssh_port: Option<u16>,
    remote_dir: String,
    /// Holds the control socket; removed on exit.
    ctl_dir: PathBuf,
    ctl: PathBuf,
    up: Arc<AtomicBool>,
    supervisor: tokio::task::JoinHandle<()>,
}

impl Ssh {
    async fn start(args: &ConnectArgs, login: &str, remote_dir: String) -> anyhow::Result<Ssh> {
        if login.starts_with('-') || login.contains(char::is_whitespace) {
            anyhow::bail!("--login {login:?} is not USER@HOST");
        }
        let ctl_dir = std::env::temp_dir().join(format!(
            "llmgw-connect-{}-{}",
            nix::unistd::getuid(),
            std::process::id()
        ));
        llmgw_core::state::ensure_dir(&ctl_dir)
            .with_context(|| format!("cannot create {}", ctl_dir.display()))?;
        let ctl = ctl_dir.join("ctl");
        let mut base: Vec<String> = vec![
            "-o".into(),
            "BatchMode=yes".into(),
            "-o".into(),
            "ServerAliveInterval=15".into(),
            "-o".into(),
            "ServerAliveCountMax=3".into(),
            "-o".into(),
            "ConnectTimeout=10".into(),
        ];
        if let Some(p) = args.ssh_port {
            base.extend(["-p".into(), p.to_string()]);
        }
        if let Some(i) = &args.identity {
            base.extend(["-i".into(), i.display().to_string()]);
        }
        for o in &args.ssh_option {
            base.extend(["-o".into(), o.clone()]);
        }
        base.push(login.to_string());
        let up = Arc::new(AtomicBool::new(false));
        // The first connection must work: a wrong host or key is an error, not a retry loop.
        let mut master = spawn_master(&base, &ctl)?;
        wait_master(&mut master, &base, &ctl)
            .await
            .with_context(|| format!("cannot connect to {login} with ssh"))?;
        up.store(true, Ordering::SeqCst);
        let supervisor = tokio::spawn(supervise(master, base.clone(), ctl.clone(), up.clone()));
        Ok(Ssh {
            base,
            ssh_port: args.ssh_port,
            remote_dir,
            ctl_dir,
            ctl,
            up,
            supervisor,
        })
    }

    fn port_flag(&self) -> String {
        self.ssh_port
            .map(|p| format!(" -p {p}"))
            .unwrap_or_default()
    }

    fn command(&self) -> Command {
        let mut c = ssh();
        c.arg("-S")
            .arg(&self.ctl)
            .args(["-o", "ControlMaster=no"])
            .stdin(Stdio::null());
        c
    }

    /// Waits (bounded) until the shared connection is up.
    async fn wait_up(&self) -> Result<(), String> {
        let deadline = Instant::now() + CONNECT_TIMEOUT;
        while !self.up.load(Ordering::SeqCst) {
            if Instant::now() >= deadline {
                return Err("the ssh connection to the login host is down (reconnecting)".into());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(())
    }

    async fn endpoint(&self) -> Result<EndpointRecord, String> {
        self.wait_up().await?;
        let path = format!("{}/{ENDPOINT_FILE}", self.remote_dir);
        let mut c = self.command();
        // Capped on the remote side: a record is small, whatever the file holds.
        c.args(&self.base)
            .arg("head")
            .arg("-c")
            .arg((MAX_RECORD + 1).to_string())
            .arg("--")
            .arg(remote_path(&path))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let out = tokio::time::timeout(CONNECT_TIMEOUT, c.output())
            .await
            .map_err(|_| "reading the endpoint record over ssh timed out".to_string())?
            .map_err(|e| format!("cannot run ssh: {e}"))?;
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            if err.contains("No such file") {
                return Err(format!(
                    "no gateway is running ({path} is absent on the login host); see `llmgw status` there"
                ));
            }
            return Err(format!(
                "cannot read {path} over ssh: {}",
                err.trim().lines().last().unwrap_or("ssh failed")
            ));
        }
        if out.stdout.len() > MAX_RECORD {
            return Err(format!("{path} is larger than {MAX_RECORD} bytes"));
        }
        serde_json::from_slice(&out.stdout)
            .map_err(|e| format!("{path} is not an endpoint record: {e}"))
    }

    /// Forwards `client` through one `ssh -W host:port` channel on the shared connection.
    async fn channel(&self, host: &str, port: u16, client: &mut TcpStream) -> std::io::Result<()> {
        self.wait_up().await.map_err(std::io::Error::other)?;
        let mut c = self.command();
        c.arg("-W")
            .arg(format!("{host}:{port}"))
            .args(&self.base)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let mut child = c.spawn()?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            return Err(std::io::Error::other("ssh without pipes"));
        };
        let mut remote = tokio::io::join(stdout, stdin);
        let r = tokio::io::copy_bidirectional(client, &mut remote).await;
        drop(remote);
        let _ = child.wait().await;
        r.map(|_| ())
    }

    async fn close(&self) {
        self.supervisor.abort();
        let _ = ssh()
            .arg("-S")
            .arg(&self.ctl)
            .args(["-O", "exit"])
            .args(&self.base)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .await;
        let _ = std::fs::remove_dir_all(&self.ctl_dir);
    }
}

/// `~/x` stays expandable by the remote shell; everything else is quoted.
fn remote_path(path: &str) -> String {
    match path.strip_prefix("~/") {
        Some(rest) => format!("~/{}", llmgw_cluster::slurm::template::shell_quote(rest)),
        None => llmgw_cluster::slurm::template::shell_quote(path),
    }
}

/// An `ssh` command that dies with this process, however it ends (SIGKILL included): no
/// ssh connection outlives `connect`.
fn ssh() -> Command {
    let mut c = Command::new("ssh");
    c.kill_on_drop(true);
    llmgw_cluster::supervise::die_with_parent(&mut c);
    c
}

fn spawn_master(base: &[String], ctl: &std::path::Path) -> std::io::Result<tokio::process::Child> {
    let _ = std::fs::remove_file(ctl);
    ssh()
        .args(["-M", "-N", "-o", "ControlPersist=no"])
        .arg("-S")
        .arg(ctl)
        .args(base)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
}

/// Waits until the master answers `-O check`, or fails with its error output.
async fn wait_master(
    master: &mut tokio::process::Child,
    base: &[String],
    ctl: &std::path::Path,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = master.try_wait()? {
            let mut err = String::new();
            if let Some(mut e) = master.stderr.take() {
                use tokio::io::AsyncReadExt as _;
                let _ = e.read_to_string(&mut err).await;
            }
            anyhow::bail!(
                "ssh exited ({status}): {}",
                err.trim().lines().last().unwrap_or("no message")
            );
        }
        if ctl.exists() {
            let ok = ssh()
                .arg("-S")
                .arg(ctl)
                .args(["-O", "check"])
                .args(base)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .await
                .is_ok_and(|s| s.success());
            if ok {
                return Ok(());
            }
        }
        if Instant::now() >= deadline {
            anyhow::bail!("ssh did not connect within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Keeps the master connection up: when it exits, reconnect with exponential backoff.
async fn supervise(
    mut master: tokio::process::Child,
    base: Vec<String>,
    ctl: PathBuf,
    up: Arc<AtomicBool>,
) {
    let mut backoff = Duration::from_secs(1);
    loop {
        let since = Instant::now();
        let _ = master.wait().await;
        up.store(false, Ordering::SeqCst);
        if since.elapsed() > MAX_BACKOFF {
            backoff = Duration::from_secs(1);
        }
        loop {
            eprintln!(
                "llmgw connect: the ssh connection dropped; reconnecting in {} s",
                backoff.as_secs()
            );
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
            let Ok(mut m) = spawn_master(&base, &ctl) else {
                continue;
            };
            match wait_master(&mut m, &base, &ctl).await {
                Ok(()) => {
                    eprintln!("llmgw connect: ssh reconnected");
                    up.store(true, Ordering::SeqCst);
                    master = m;
                    break;
                }
                Err(e) => eprintln!("llmgw connect: {e:#}"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn remote_paths_keep_the_home_expandable() {
        assert_eq!(
            super::remote_path("~/.llmgw/a b/endpoint.json"),
            "~/'.llmgw/a b/endpoint.json'"
        );
        assert_eq!(
            super::remote_path(".llmgw/x/endpoint.json"),
            ".llmgw/x/endpoint.json"
        );
        assert_eq!(super::remote_path("/tmp/it's"), r"'/tmp/it'\''s'");
    }
}
