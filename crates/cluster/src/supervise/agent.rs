//! The node agent: how the gateway runs backends on the other nodes of a multi-node job.
//!
//! For each other node the gateway starts one job step,
//! `srun --nodes=1 --ntasks=1 --nodelist=NODE --overlap … llmgw agent`, and talks to it
//! over the step's stdin and stdout, one JSON message per line:
//!
//! ```text
//! agent   → gateway  hello    {node, addr, gpus}      what the node has (SLURM set its env)
//! gateway → agent    plan     [BackendSpec, …]        the agent picks ports on its node
//! agent   → gateway  planned  [BackendSpec, …]        …and says which
//! gateway → agent    start
//! agent   → gateway  status   [BackendStatus, …]      on every change, and every 2 s
//! gateway → agent    stop     (or end of input)       the agent stops its backends, exits
//! ```
//!
//! The agent runs its backends with the same supervisor as the gateway's node
//! (`supervise`): free ports on the node's address, process groups, readiness probes,
//! restarts with backoff. Backend keys travel in the plan, through the pipe srun
//! forwards: never on a command line, in the environment of srun or in a file other than
//! the 0600 SGLang key file on the node. The agent ends when its input ends, so a gateway
//! that dies takes its agents (and their backends, which die with the agent) along; SLURM
//! ends the step with the job in any case.
//!
//! On the gateway's side, [`Remote::run`] applies what the agent reports to the backends'
//! statuses and deployments. When the agent goes silent or its step ends (the node
//! died, the agent was killed), only that node's deployments leave the rotation; the
//! agent is started again with backoff, with the same ports and keys.

use super::Availability;
use super::{
    BackendSpec, BackendState, BackendStatus, Backends, Planner, Shared, SuperviseError,
    BACKENDS_DIR,
};
use crate::placement::Node;
use futures_util::{SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::codec::{FramedRead, FramedWrite, LinesCodec};
use tokio_util::sync::CancellationToken;

/// How often an agent repeats its status when nothing changes.
const HEARTBEAT: Duration = Duration::from_secs(2);
/// An agent silent this long is lost.
const SILENT: Duration = Duration::from_secs(10);
/// Longest wait for an agent's hello (the step has to be created) and its plan.
const ANSWER: Duration = Duration::from_secs(60);
/// Longest line either side accepts.
const MAX_LINE: usize = 4 * 1024 * 1024;
/// Most backends one plan may hold.
const MAX_SPECS: usize = 1024;
/// Losses of an agent in a row, before its backends were ever ready, after which they
/// count as failed.
const FAILED_AFTER: u32 = 3;
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// What the gateway tells an agent.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum ToAgent {
    Plan(Vec<BackendSpec>),
    Start,
    Stop,
}

/// What an agent tells the gateway.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum FromAgent {
    Hello(Node),
    Planned(Vec<BackendSpec>),
    Status(Vec<BackendStatus>),
    Error(String),
}

/// `llmgw agent` takes no options: everything comes over its input.
#[derive(clap::Args, Debug)]
pub struct AgentArgs {}

/// `llmgw agent`: the node agent, run by the gateway as a job step.
pub fn main(
    _args: AgentArgs,
    log_format: Option<llmgw_core::config::LogFormat>,
) -> anyhow::Result<ExitCode> {
    let _log = llmgw_core::logging::init(log_format.unwrap_or_default());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(agent())
}

async fn agent() -> anyhow::Result<ExitCode> {
    let node = crate::placement::this_node();
    tracing::info!(node = %node.name, addr = %node.addr, gpus = ?node.gpus, "node agent up");
    let (tx, mut rx) = tokio::sync::mpsc::channel::<FromAgent>(64);
    let writer = tokio::spawn(async move {
        let mut out = FramedWrite::new(tokio::io::stdout(), LinesCodec::new());
        while let Some(m) = rx.recv().await {
            let Ok(line) = serde_json::to_string(&m) else {
                continue;
            };
            if out.send(line).await.is_err() {
                break;
            }
        }
    });
    let _ = tx.send(FromAgent::Hello(node.clone())).await;
    let mut input = FramedRead::new(
        tokio::io::stdin(),
        LinesCodec::new_with_max_length(MAX_LINE),
    );
    // The agent's own environment is what srun gave it: the gateway's allow-listed one.
    let mut planner = Some(Planner::new(
        &node.addr,
        &node.addr,
        super::allowed_env(&[]),
    ));
    let mut specs: Vec<BackendSpec> = Vec::new();
    let mut plans = Vec::new();
    let mut running: Option<Backends> = None;
    let mut forward: Option<tokio::task::JoinHandle<()>> = None;
    while let Some(line) = input.next().await {
        let msg = match line
            .map_err(|e| e.to_string())
            .and_then(|l| serde_json::from_str::<ToAgent>(&l).map_err(|e| e.to_string()))
        {
            Ok(m) => m,
            Err(e) => {
                tracing::error!(error = %e, "unreadable message from the gateway; stopping");
                break;
            }
        };
        match msg {
            ToAgent::Plan(list) => {
                let Some(p) = planner.as_mut() else { continue };
                let mut done = Vec::new();
                let mut failed = None;
                for mut spec in list.into_iter().take(MAX_SPECS) {
                    match p.plan(&mut spec) {
                        Ok(plan) => {
                            plans.push(plan);
                            specs.push(spec.clone());
                            done.push(spec);
                        }
                        Err(e) => {
                            failed = Some(e.to_string());
                            break;
                        }
                    }
                }
                let reply = match failed {
                    Some(e) => FromAgent::Error(e),
                    None => FromAgent::Planned(done),
                };
                let _ = tx.send(reply).await;
            }
            ToAgent::Start => {
                let Some(p) = planner.take() else { continue };
                let mut b = Backends::on_agent_node(
                    std::mem::take(&mut specs),
                    std::mem::take(&mut plans),
                    p,
                    &node.addr,
                );
                if let Err(e) = b.start() {
                    let _ = tx.send(FromAgent::Error(e.to_string())).await;
                    break;
                }
                forward = Some(tokio::spawn(forward_status(b.monitor(), tx.clone())));
                running = Some(b);
            }
            ToAgent::Stop => break,
        }
    }
    tracing::info!("node agent stopping its backends");
    if let Some(f) = forward {
        f.abort();
    }
    if let Some(b) = running {
        let monitor = b.monitor();
        b.shutdown().await;
        let _ = tx.send(FromAgent::Status(monitor.snapshot())).await;
    }
    drop(tx);
    let _ = tokio::time::timeout(Duration::from_secs(5), writer).await;
    Ok(ExitCode::SUCCESS)
}

/// Sends the statuses on every change, and every [`HEARTBEAT`] (the gateway's sign of
/// life).
async fn forward_status(monitor: super::Monitor, tx: tokio::sync::mpsc::Sender<FromAgent>) {
    let Some(mut changes) = monitor.changes() else {
        return;
    };
    loop {
        if tx
            .send(FromAgent::Status(monitor.snapshot()))
            .await
            .is_err()
        {
            return;
        }
        tokio::select! {
            r = changes.changed() => if r.is_err() { return },
            _ = tokio::time::sleep(HEARTBEAT) => {}
        }
    }
}

/// One live connection to an agent: its srun and the two ends of the pipe.
struct Link {
    child: tokio::process::Child,
    input: FramedWrite<tokio::process::ChildStdin, LinesCodec>,
    output: FramedRead<tokio::process::ChildStdout, LinesCodec>,
}

impl Link {
    async fn send(&mut self, m: &ToAgent) -> Result<(), String> {
        let line = serde_json::to_string(m).map_err(|e| e.to_string())?;
        self.input
            .send(line)
            .await
            .map_err(|e| format!("cannot write to the agent: {e}"))
    }

    /// The next message, within `limit`.
    async fn recv(&mut self, limit: Duration) -> Result<FromAgent, String> {
        match tokio::time::timeout(limit, self.output.next()).await {
            Err(_) => Err(format!("no word from the agent for {} s", limit.as_secs())),
            Ok(None) => Err(match self.child.try_wait() {
                Ok(Some(status)) => format!("its job step ended ({status})"),
                _ => "its job step closed its output".to_string(),
            }),
            Ok(Some(Err(e))) => Err(format!("unreadable output: {e}")),
            Ok(Some(Ok(line))) => {
                serde_json::from_str(&line).map_err(|e| format!("unreadable message: {e}"))
            }
        }
    }

    /// Ends the step: `stop`, a bounded wait for its last status, then the kill.
    async fn close(mut self, mut last: impl FnMut(Vec<BackendStatus>)) {
        let _ = self.send(&ToAgent::Stop).await;
        let deadline = tokio::time::Instant::now() + super::KILL_GRACE + Duration::from_secs(5);
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.recv(left).await {
                Ok(FromAgent::Status(s)) => last(s),
                Ok(_) => {}
                Err(_) => break,
            }
        }
        let _ = self.child.start_kill();
        let _ = tokio::time::timeout(Duration::from_secs(5), self.child.wait()).await;
    }
}

/// The gateway's handle on one other node: its agent, and the backends it runs there.
pub(crate) struct Remote {
    /// The node, as its agent described it.
    pub node: Node,
    link: Option<Link>,
    /// What it runs (ports picked), with each one's status position.
    owned: Vec<(usize, BackendSpec)>,
    env: Vec<(OsString, OsString)>,
    cpus: Option<u32>,
    log: Option<PathBuf>,
}

impl Remote {
    /// Starts an agent on each of `nodes` (name, CPUs) at once; a node whose agent does not
    /// come up is left out (with a warning): placement uses the others.
    pub(crate) async fn spawn_all(
        nodes: &[(String, Option<u32>)],
        env: &[(OsString, OsString)],
        state_dir: Option<&Path>,
    ) -> Vec<Remote> {
        let starts = nodes.iter().map(|(name, cpus)| {
            let log = state_dir.map(|d| d.join(BACKENDS_DIR).join(format!("agent-{name}.log")));
            Remote::spawn(name, *cpus, env.to_vec(), log)
        });
        futures_util::future::join_all(starts)
            .await
            .into_iter()
            .zip(nodes)
            .filter_map(|(r, (name, _))| match r {
                Ok(r) => Some(r),
                Err(why) => {
                    tracing::warn!(node = %name, error = %why, "no node agent on this node; placing backends on the others");
                    None
                }
            })
            .collect()
    }

    async fn spawn(
        name: &str,
        cpus: Option<u32>,
        env: Vec<(OsString, OsString)>,
        log: Option<PathBuf>,
    ) -> Result<Remote, String> {
        let (link, node) = connect(name, cpus, &env, log.as_deref()).await?;
        tracing::info!(node = %node.name, addr = %node.addr, gpus = ?node.gpus, "node agent ready");
        Ok(Remote {
            node,
            link: Some(link),
            owned: Vec::new(),
            env,
            cpus,
            log,
        })
    }

    /// Has the agent pick ports for `items` (status position, spec); returns the specs
    /// as planned, and from now on runs them.
    pub(crate) async fn plan(
        &mut self,
        items: Vec<(usize, BackendSpec)>,
    ) -> Result<Vec<BackendSpec>, SuperviseError> {
        let fail = |why: String| SuperviseError::Agent {
            node: self.node.name.clone(),
            why,
        };
        let link = self
            .link
            .as_mut()
            .ok_or_else(|| fail("not connected".into()))?;
        let specs: Vec<BackendSpec> = items.iter().map(|(_, s)| s.clone()).collect();
        let planned = plan_on(link, specs).await.map_err(fail)?;
        if planned.len() != items.len() {
            return Err(fail(format!(
                "planned {} of {} backends",
                planned.len(),
                items.len()
            )));
        }
        self.owned
            .extend(items.iter().map(|(i, _)| *i).zip(planned.iter().cloned()));
        Ok(planned)
    }

    /// True when it was given backends to run.
    pub(crate) fn has_backends(&self) -> bool {
        !self.owned.is_empty()
    }

    /// Stops the agent (and whatever it runs).
    pub(crate) async fn dismiss(mut self) {
        if let Some(link) = self.link.take() {
            link.close(|_| {}).await;
        }
    }

    /// Runs the node's backends until `stop`: starts them, applies the agent's statuses to
    /// `shared` and to the deployments (by status position), and brings the agent back
    /// (same ports and keys) when it is lost.
    pub(crate) async fn run(
        mut self,
        shared: Arc<Shared>,
        deployments: Vec<Option<Availability>>,
        stop: CancellationToken,
    ) {
        let node = self.node.name.clone();
        let mut backoff = Duration::from_secs(1);
        let mut losses: u32 = 0;
        let mut ever_ready = false;
        // Restarts counted before the current agent (each loss restarts every backend).
        let mut base = vec![0u32; self.owned.len()];
        loop {
            let mut link = match self.link.take() {
                Some(l) => l,
                None => match tokio::select! {
                    _ = stop.cancelled() => break,
                    r = self.reconnect() => r,
                } {
                    Ok(l) => l,
                    Err(why) => {
                        losses += 1;
                        self.lost(&shared, &deployments, &why, losses, ever_ready);
                        if sleep_or_stop(&stop, backoff).await {
                            break;
                        }
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                        continue;
                    }
                },
            };
            let why = match link.send(&ToAgent::Start).await {
                Err(e) => e,
                Ok(()) => loop {
                    let msg = tokio::select! {
                        _ = stop.cancelled() => {
                            let owned = &self.owned;
                            link.close(|s| {
                                apply(owned, &base, &s, &shared, &deployments);
                            })
                            .await;
                            self.stopped(&shared, &deployments);
                            return;
                        }
                        m = link.recv(SILENT) => m,
                    };
                    match msg {
                        Ok(FromAgent::Status(s)) => {
                            if apply(&self.owned, &base, &s, &shared, &deployments) {
                                ever_ready = true;
                                losses = 0;
                                backoff = Duration::from_secs(1);
                            }
                        }
                        Ok(FromAgent::Error(e)) => break e,
                        Ok(_) => {}
                        Err(e) => break e,
                    }
                },
            };
            let _ = link.child.start_kill();
            let _ = tokio::time::timeout(Duration::from_secs(5), link.child.wait()).await;
            losses += 1;
            for b in base.iter_mut() {
                *b += 1;
            }
            tracing::warn!(node = %node, reason = %why, restart_in = ?backoff, "node agent lost; its backends are out of rotation until it is back");
            self.lost(&shared, &deployments, &why, losses, ever_ready);
            if sleep_or_stop(&stop, backoff).await {
                break;
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
        self.stopped(&shared, &deployments);
    }

    /// A new agent on the node, given the same backends.
    async fn reconnect(&mut self) -> Result<Link, String> {
        let (mut link, node) =
            connect(&self.node.name, self.cpus, &self.env, self.log.as_deref()).await?;
        if node.addr != self.node.addr {
            return Err(format!(
                "the node's address changed from {} to {}",
                self.node.addr, node.addr
            ));
        }
        let specs: Vec<BackendSpec> = self.owned.iter().map(|(_, s)| s.clone()).collect();
        plan_on(&mut link, specs).await?;
        tracing::info!(node = %node.name, "node agent back");
        Ok(link)
    }

    /// Out of rotation: the node's deployments unavailable, its backends restarting (or
    /// failed, when they never got ready and the agent keeps failing).
    fn lost(
        &self,
        shared: &Shared,
        deployments: &[Option<Availability>],
        why: &str,
        losses: u32,
        ever_ready: bool,
    ) {
        let failed = !ever_ready && losses >= FAILED_AFTER;
        for (i, _) in &self.owned {
            if let Some(Some(d)) = deployments.get(*i) {
                d(false);
            }
            shared.update(*i, |b| {
                b.state = if failed {
                    BackendState::Failed
                } else {
                    BackendState::Restarting
                };
                b.pid = None;
                b.last_error = Some(format!("node agent on {} lost: {why}", self.node.name));
            });
        }
    }

    fn stopped(&self, shared: &Shared, deployments: &[Option<Availability>]) {
        for (i, _) in &self.owned {
            if let Some(Some(d)) = deployments.get(*i) {
                d(false);
            }
            shared.update(*i, |b| {
                b.state = BackendState::Stopped;
                b.pid = None;
            });
        }
    }
}

/// Starts `llmgw agent` on `node` as a job step and waits for its hello.
async fn connect(
    node: &str,
    cpus: Option<u32>,
    env: &[(OsString, OsString)],
    log: Option<&Path>,
) -> Result<(Link, Node), String> {
    use std::process::Stdio;
    let llmgw = std::env::current_exe().map_err(|e| format!("cannot find llmgw: {e}"))?;
    let mut cmd = tokio::process::Command::new("srun");
    cmd.args([
        "--nodes=1",
        "--ntasks=1",
        "--overlap",
        "--quiet",
        "--mem=0",
        "--job-name=llmgw-agent",
    ])
    .arg(format!("--nodelist={node}"));
    if let Some(c) = cpus {
        cmd.arg(format!("--cpus-per-task={c}"));
    }
    cmd.arg(&llmgw)
        .arg("agent")
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true);
    match log {
        Some(path) => {
            if let Some(dir) = path.parent() {
                llmgw_core::state::ensure_dir(dir)
                    .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
            }
            use std::os::unix::fs::OpenOptionsExt;
            let f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o600)
                .open(path)
                .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
            cmd.stderr(Stdio::from(f));
        }
        None => {
            cmd.stderr(Stdio::null());
        }
    }
    super::die_with_parent(&mut cmd);
    let mut child = cmd.spawn().map_err(|e| format!("cannot run srun: {e}"))?;
    let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
        return Err("srun has no pipes".into());
    };
    let mut link = Link {
        child,
        input: FramedWrite::new(stdin, LinesCodec::new_with_max_length(MAX_LINE)),
        output: FramedRead::new(stdout, LinesCodec::new_with_max_length(MAX_LINE)),
    };
    match link.recv(ANSWER).await {
        Ok(FromAgent::Hello(n)) => Ok((link, n)),
        Ok(other) => Err(format!("expected hello, got {other:?}")),
        Err(e) => {
            let _ = link.child.start_kill();
            Err(e)
        }
    }
}

/// Sends a plan and waits for the agent's answer.
async fn plan_on(link: &mut Link, specs: Vec<BackendSpec>) -> Result<Vec<BackendSpec>, String> {
    link.send(&ToAgent::Plan(specs)).await?;
    loop {
        match link.recv(ANSWER).await? {
            FromAgent::Planned(p) => return Ok(p),
            FromAgent::Error(e) => return Err(e),
            _ => {}
        }
    }
}

/// Applies an agent's statuses; true when one of its backends is ready.
fn apply(
    owned: &[(usize, BackendSpec)],
    base: &[u32],
    statuses: &[BackendStatus],
    shared: &Shared,
    deployments: &[Option<Availability>],
) -> bool {
    let mut any_ready = false;
    let now = shared.snapshot();
    for s in statuses {
        let Some(j) = owned.iter().position(|(_, spec)| spec.name == s.name) else {
            continue;
        };
        let i = owned[j].0;
        let restarts = base[j].saturating_add(s.restarts);
        let ready = s.state == BackendState::Ready;
        any_ready |= ready;
        if let Some(Some(d)) = deployments.get(i) {
            d(ready);
        }
        let same = now.get(i).is_some_and(|b| {
            b.state == s.state
                && b.pid == s.pid
                && b.restarts == restarts
                && b.last_error == s.last_error
        });
        if !same {
            shared.update(i, |b| {
                b.state = s.state;
                b.pid = s.pid;
                b.restarts = restarts;
                b.last_error.clone_from(&s.last_error);
            });
        }
    }
    any_ready
}

/// Sleeps; true when stopped meanwhile.
async fn sleep_or_stop(stop: &CancellationToken, d: Duration) -> bool {
    tokio::select! {
        _ = stop.cancelled() => true,
        _ = tokio::time::sleep(d) => false,
    }
}
