//! `connect --login`: one multiplexed ssh connection to the login host (a ControlMaster in
//! a private control directory, reconnected with backoff), the endpoint record read
//! through it, and one `ssh -W` channel per local connection.

use super::guard::PrivateDir;
use super::{Attempt, MAX_HELD};
use crate::args::ConnectArgs;
use anyhow::Context as _;
use llmgw_core::state::{EndpointRecord, ENDPOINT_FILE};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::process::Command;

use super::{CONNECT_TIMEOUT, MAX_BACKOFF, MAX_RECORD};

/// One multiplexed ssh connection to the login host.
pub struct Ssh {
    /// `-p`, `-i`, `-o` and the destination, shared by every ssh invocation.
    base: Vec<String>,
    ssh_port: Option<u16>,
    pub remote_dir: String,
    /// Holds the control socket; removed when dropped (on exit).
    _ctl_dir: PrivateDir,
    ctl: PathBuf,
    up: Arc<AtomicBool>,
    supervisor: tokio::task::JoinHandle<()>,
}

impl Ssh {
    pub async fn start(args: &ConnectArgs, login: &str, remote_dir: String) -> anyhow::Result<Ssh> {
        if login.starts_with('-') || login.contains(char::is_whitespace) {
            anyhow::bail!("--login {login:?} is not USER@HOST");
        }
        // Whoever can reach the control socket can use the ssh connection (and so every
        // forwarded request and its key): a fresh private directory, never an existing one.
        let ctl_dir = PrivateDir::create()
            .context("cannot create a private directory for ssh's control socket")?;
        let ctl = ctl_dir.path().join("ctl");
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
            _ctl_dir: ctl_dir,
            ctl,
            up,
            supervisor,
        })
    }

    pub fn port_flag(&self) -> String {
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

    pub async fn endpoint(&self) -> Result<EndpointRecord, String> {
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
    /// The client's bytes are kept (up to [`MAX_HELD`]) until the target answers: when the
    /// channel cannot be opened (the target refused it), nothing reached the target and
    /// they are sent again on the next attempt.
    pub async fn channel(
        &self,
        host: &str,
        port: u16,
        client: &mut TcpStream,
        held: &mut Vec<u8>,
    ) -> Attempt {
        if let Err(e) = self.wait_up().await {
            return Attempt::Retry(e);
        }
        let mut c = self.command();
        c.arg("-W")
            .arg(format!("{host}:{port}"))
            .args(&self.base)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = match c.spawn() {
            Ok(c) => c,
            Err(e) => return Attempt::Done(Err(e)),
        };
        let (Some(mut stdin), Some(mut stdout), Some(stderr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            return Attempt::Done(Err(std::io::Error::other("ssh without pipes")));
        };
        // ssh's own messages, capped: they say whether the channel opened.
        let errors = tokio::spawn(async move {
            let mut text = String::new();
            let _ = stderr.take(4096).read_to_string(&mut text).await;
            text
        });
        let mut replayable = held.len() <= MAX_HELD;
        let mut first = [0u8; 16 * 1024];
        let mut buf = [0u8; 16 * 1024];
        let mut client_eof = false;
        let sent_ok = stdin.write_all(held).await.is_ok();
        // Until the first byte comes back: pump the client's bytes, keeping them.
        let answered = loop {
            if !sent_ok {
                break 0;
            }
            tokio::select! {
                r = client.read(&mut buf), if !client_eof => match r {
                    Ok(0) => {
                        client_eof = true;
                        let _ = stdin.shutdown().await;
                    }
                    Ok(n) => {
                        if replayable {
                            held.extend_from_slice(&buf[..n]);
                            replayable = held.len() <= MAX_HELD;
                        }
                        if stdin.write_all(&buf[..n]).await.is_err() {
                            break 0;
                        }
                    }
                    Err(e) => {
                        let _ = child.kill().await;
                        return Attempt::Done(Err(e));
                    }
                },
                r = stdout.read(&mut first) => break r.unwrap_or(0),
            }
        };
        if answered == 0 {
            let _ = child.wait().await;
            let text = errors.await.unwrap_or_default();
            let refused = text.contains("open failed")
                || text.contains("Connection refused")
                || text.contains("connect failed");
            return if refused && replayable {
                let line = text.lines().last().unwrap_or("refused").trim().to_string();
                Attempt::Retry(format!("{host}:{port}: {line}"))
            } else {
                Attempt::Done(Ok(()))
            };
        }
        held.clear();
        if let Err(e) = client.write_all(&first[..answered]).await {
            let _ = child.kill().await;
            return Attempt::Done(Err(e));
        }
        if client_eof {
            // The client already said all it had: only the answer is left to pass on.
            let r = tokio::io::copy(&mut stdout, client).await;
            let _ = client.shutdown().await;
            let _ = child.wait().await;
            return Attempt::Done(r.map(|_| ()));
        }
        let mut remote = tokio::io::join(stdout, stdin);
        let r = tokio::io::copy_bidirectional(client, &mut remote).await;
        drop(remote);
        let _ = child.wait().await;
        Attempt::Done(r.map(|_| ()))
    }

    pub async fn close(&self) {
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
    }
}

/// `~/x` stays expandable by the remote shell; everything else is quoted.
pub fn remote_path(path: &str) -> String {
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
