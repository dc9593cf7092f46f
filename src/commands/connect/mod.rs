//! `llmgw connect`: one stable local address that always reaches the gateway's current
//! generation, wherever its job runs.
//!
//! A local TCP listener; for each accepted connection it looks up the current endpoint
//! and forwards bytes both ways. Connections already open stay where they are; a new one
//! goes to whatever `endpoint.json` names at that moment, so after a handover new
//! connections reach the new job with no user action (the old job asks its clients to
//! reconnect by closing each connection after its response). When the target refuses the
//! connection, or closes it before anything was sent to it (its gateway just died, and
//! the chain is moving the endpoint: a successor published, or the old job took it back),
//! the record is read again and the connection retried, for up to [`RETRY_FOR`].
//!
//! - On a login node (no `--login`) it reads `endpoint.json` from the state directory and
//!   connects directly.
//! - From a laptop (`--login USER@HOST`) it keeps one ssh connection to the login host (a
//!   ControlMaster, reconnected with backoff when it drops), reads `endpoint.json` through
//!   it with `head -c` (capped; the one lookup cached for a second), and opens one
//!   `ssh -W node:port` channel on that connection per local connection. No key or secret
//!   passes through its command lines; the control socket lives in a private directory
//!   (`guard.rs`), and `connect` does not start on a port another user listens on.

mod demand;
mod guard;
mod spill;
mod ssh;

use super::name_flag;
use crate::args::ConnectArgs;
use anyhow::Context as _;
use llmgw_core::state::{EndpointRecord, ENDPOINT_FILE, KEY_FILE};
use ssh::Ssh;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

pub use crate::args::DEFAULT_PORT;
/// How long an endpoint lookup over ssh is reused (a local one is read for each
/// connection, and any lookup again after a failed attempt).
const CACHE_FOR: Duration = Duration::from_secs(1);
/// Connecting to the gateway, or waiting for ssh to come back, at most this long.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// One connection is retried (the record read again each time) for at most this long.
const RETRY_FOR: Duration = Duration::from_secs(15);
/// Between attempts: 50 ms, doubling up to this.
const RETRY_PAUSE_MAX: Duration = Duration::from_millis(500);
/// A client's bytes kept for sending again until the target answers (over ssh, where a
/// channel that could not be opened delivered nothing); beyond this, no retry.
pub(super) const MAX_HELD: usize = 1024 * 1024;
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
    // Another user's process on this port would get the requests meant for the gateway,
    // key included (for `localhost` on any of its addresses): refuse to start.
    if args.port != 0 {
        if let Some(h) = guard::other_users_listening(args.port).first() {
            anyhow::bail!(
                "port {} is already held by another user's process ({}, listening on {}): it would receive your requests and your API key; pick another port with --port",
                args.port,
                guard::user_of(h.uid),
                h.addr
            );
        }
    }
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
    // `[slurm] on_demand`: on this machine only (the submission needs SLURM and the config).
    let on_demand = match &source {
        Source::Local(dir) => demand::OnDemand::from_config(&name, dir, args.config.as_deref())?,
        Source::Ssh(_) => {
            if args.config.is_some() {
                anyhow::bail!("--config (for on-demand starts) works only on the login node, not with --login; run `llmgw connect` there, or start the gateway with `llmgw start`");
            }
            None
        }
    };
    let source = Arc::new(Lookup {
        on_demand: on_demand.clone(),
        source,
        cache: Mutex::new(None),
        last: Mutex::new(String::new()),
        last_retry: Mutex::new(String::new()),
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
    let now = match source.endpoint(false).await {
        Ok(ep) => format!(
            "now job {} on {}:{}",
            ep.job_id.as_deref().unwrap_or("?"),
            ep.connect_host(),
            ep.port
        ),
        Err(_) if on_demand.is_some() => format!(
            "no job running: scaled to zero; the first request starts it and waits for it, up to {} s ([slurm] on_demand, hold_timeout)",
            on_demand.as_ref().map_or(0, |d| d.hold_timeout().as_secs())
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
    match &on_demand {
        Some(d) => eprintln!("llmgw connect: stopped; on demand: {}", d.summary()),
        None => eprintln!("llmgw connect: stopped"),
    }
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

/// How one attempt to forward a connection went.
pub enum Attempt {
    /// Nothing reached the target (it refused, or closed before anything was sent to it):
    /// read the record again and try again.
    Retry(String),
    /// Forwarded (to its end, or until it failed after the target had the client's bytes).
    Done(std::io::Result<()>),
}

struct Lookup {
    source: Source,
    /// `[slurm] on_demand`: start the job and hold connections while no gateway runs.
    on_demand: Option<Arc<demand::OnDemand>>,
    cache: Mutex<Option<(Instant, EndpointRecord)>>,
    /// The last target announced, to log each change once.
    last: Mutex<String>,
    /// The last target retried, to log each once.
    last_retry: Mutex<String>,
}

impl Lookup {
    /// The current endpoint: read from the state directory each time, or over ssh (reused
    /// for [`CACHE_FOR`] unless `fresh`).
    async fn endpoint(&self, fresh: bool) -> Result<EndpointRecord, String> {
        match &self.source {
            Source::Local(dir) => match EndpointRecord::read(dir) {
                Ok(Some(ep)) => Ok(ep),
                Ok(None) => Err(format!(
                    "no gateway is running ({} is absent); see `llmgw status`",
                    dir.join(ENDPOINT_FILE).display()
                )),
                Err(e) => Err(format!("cannot read the endpoint record: {e}")),
            },
            Source::Ssh(s) => {
                if !fresh {
                    if let Some((at, ep)) = &*self.cache.lock().unwrap_or_else(|e| e.into_inner()) {
                        if at.elapsed() < CACHE_FOR {
                            return Ok(ep.clone());
                        }
                    }
                }
                let ep = s.endpoint().await?;
                *self.cache.lock().unwrap_or_else(|e| e.into_inner()) =
                    Some((Instant::now(), ep.clone()));
                Ok(ep)
            }
        }
    }

    /// Forwards one client connection to the current endpoint, trying again (the record
    /// read afresh) while nothing has reached a target, for at most [`RETRY_FOR`].
    async fn forward(&self, mut client: TcpStream) {
        let mut deadline = Instant::now() + RETRY_FOR;
        let mut pause = Duration::from_millis(50);
        let mut held = Vec::new();
        let mut attempt = 0u32;
        // When this connection was first held (on demand).
        let mut held_since: Option<Instant> = None;
        let failure = loop {
            let fresh = attempt > 0;
            attempt += 1;
            let why = match self.endpoint(fresh).await {
                // No gateway: on demand, start it and hold the connection until it is ready.
                Err(_) if self.on_demand.is_some() => {
                    match self.hold(&mut client, &mut held, &mut held_since).await {
                        demand::Held::Ready => {
                            deadline = Instant::now() + RETRY_FOR;
                            pause = Duration::from_millis(50);
                            continue;
                        }
                        demand::Held::Spill(port) => {
                            self.spill(port, &mut client, &mut held).await;
                            return;
                        }
                        demand::Held::Over => return,
                    }
                }
                Err(e) => e,
                Ok(ep) => {
                    let target = format!("{}:{}", ep.connect_host(), ep.port);
                    self.announce(&ep, &target);
                    let outcome = match &self.source {
                        Source::Local(_) => local(&target, &mut client, &mut held).await,
                        Source::Ssh(s) => {
                            s.channel(&ep.connect_host(), ep.port, &mut client, &mut held)
                                .await
                        }
                    };
                    match outcome {
                        Attempt::Done(r) => {
                            break r.err().map(|e| (target, e.to_string(), e.kind()))
                        }
                        Attempt::Retry(why) => {
                            self.note_retry(&ep, &target, &why);
                            why
                        }
                    }
                }
            };
            if Instant::now() + pause > deadline && self.on_demand.is_some() {
                // The recorded gateway does not answer (it is draining after an idle stop,
                // or died): hold while the chain ends or a new job starts.
                match self.hold(&mut client, &mut held, &mut held_since).await {
                    demand::Held::Ready => {
                        deadline = Instant::now() + RETRY_FOR;
                        pause = Duration::from_millis(50);
                        continue;
                    }
                    demand::Held::Spill(port) => {
                        self.spill(port, &mut client, &mut held).await;
                        return;
                    }
                    demand::Held::Over => return,
                }
            }
            if Instant::now() + pause > deadline {
                break Some((
                    "the gateway".to_string(),
                    format!("{why} (retried for {} s)", RETRY_FOR.as_secs()),
                    std::io::ErrorKind::Other,
                ));
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(RETRY_PAUSE_MAX);
        };
        if let Some((target, e, kind)) = failure {
            // A dropped target is worth a line; a client that hung up is not.
            if !matches!(
                kind,
                std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
            ) {
                eprintln!("llmgw connect: connection to {target}: {e}");
            }
        }
    }

    /// Forwards a held connection to the spill gateway on loopback.
    async fn spill(&self, port: u16, client: &mut TcpStream, held: &mut Vec<u8>) {
        let target = format!("127.0.0.1:{port}");
        let r = match local(&target, client, held).await {
            Attempt::Done(r) => r.err().map(|e| e.to_string()),
            Attempt::Retry(why) => Some(why),
        };
        if let Some(e) = r {
            eprintln!("llmgw connect: connection to the spill gateway at {target}: {e}");
        }
    }

    async fn hold(
        &self,
        client: &mut TcpStream,
        held: &mut Vec<u8>,
        since: &mut Option<Instant>,
    ) -> demand::Held {
        match &self.on_demand {
            Some(d) => {
                let began = *since.get_or_insert_with(Instant::now);
                d.hold(client, held, began).await
            }
            None => demand::Held::Over,
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

    fn note_retry(&self, ep: &EndpointRecord, target: &str, why: &str) {
        let mut last = self.last_retry.lock().unwrap_or_else(|e| e.into_inner());
        if *last != target {
            eprintln!(
                "llmgw connect: job {} at {target} did not take a connection ({why}); reading the endpoint again and retrying",
                ep.job_id.as_deref().unwrap_or("?")
            );
            *last = target.to_string();
        }
    }
}

/// One attempt on this machine: connect; wait for the client's first bytes (or the target
/// closing first); make sure the target has not closed or reset meanwhile; send. Until
/// that first send nothing has reached the target, so any failure is worth a retry.
async fn local(target: &str, client: &mut TcpStream, held: &mut Vec<u8>) -> Attempt {
    let mut up = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(target)).await {
        Ok(Ok(up)) => up,
        Ok(Err(e)) => return Attempt::Retry(e.to_string()),
        Err(_) => return Attempt::Retry("timed out".into()),
    };
    let _ = up.set_nodelay(true);
    let mut buf = vec![0u8; 16 * 1024];
    if held.is_empty() {
        tokio::select! {
            r = client.read(&mut buf) => match r {
                // The client left before saying anything.
                Ok(0) => return Attempt::Done(Ok(())),
                Ok(n) => held.extend_from_slice(&buf[..n]),
                Err(e) => return Attempt::Done(Err(e)),
            },
            r = up.readable() => if let Err(e) = r {
                return Attempt::Retry(e.to_string());
            },
        }
    }
    // The target spoke first, closed, or reset (its process died after accepting).
    let mut first = [0u8; 1024];
    match up.try_read(&mut first) {
        Ok(0) => return Attempt::Retry("closed before anything was sent to it".into()),
        Ok(n) => {
            if let Err(e) = client.write_all(&first[..n]).await {
                return Attempt::Done(Err(e));
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
        Err(e) => return Attempt::Retry(e.to_string()),
    }
    if !held.is_empty() {
        // A write refused by the kernel (the target reset) delivered nothing.
        if let Err(e) = up.write_all(held).await {
            return Attempt::Retry(e.to_string());
        }
        held.clear();
    }
    Attempt::Done(
        tokio::io::copy_bidirectional(client, &mut up)
            .await
            .map(|_| ()),
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn remote_paths_keep_the_home_expandable() {
        assert_eq!(
            super::ssh::remote_path("~/.llmgw/a b/endpoint.json"),
            "~/'.llmgw/a b/endpoint.json'"
        );
        assert_eq!(
            super::ssh::remote_path(".llmgw/x/endpoint.json"),
            ".llmgw/x/endpoint.json"
        );
        assert_eq!(super::ssh::remote_path("/tmp/it's"), r"'/tmp/it'\''s'");
    }
}
