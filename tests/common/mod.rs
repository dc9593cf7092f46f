//! Shared harness for the integration tests: runs the real `llmgw` binary as a child
//! process on loopback, in front of in-process [`MockUpstream`]s.
//!
//! ```ignore
//! let mock = common::mock("a", Behavior::default()).await;
//! let gw = Gateway::start(&common::openai_model("m", "mock-model", &mock.base_url(), "")).await;
//! let resp = gw.post_json("/v1/chat/completions", &common::chat_body("m", false)).await;
//! ```
//!
//! Each gateway gets its own temporary directory holding the config file (`llmgw.toml`),
//! the state directory (`state/`, where `serve` writes `endpoint.json`) and the child's
//! `stdout`/`stderr` files, so tests can assert on the logs. The child is killed when the
//! [`Gateway`] is dropped. Environment variables the binary reads (`LLMGW_*`, proxies)
//! are scrubbed so a developer's shell cannot change what a test sees.
//!
//! To extend it (router, SLURM, provider tests): add builder options to
//! [`GatewayBuilder`] and helpers here; keep everything bounded in time.

#![allow(dead_code)]

pub mod chain;
pub mod cluster;
pub mod keys;
pub mod load;
pub mod postgres;
pub mod redis;

use llmgw::mock::{Behavior, MockUpstream};
use llmgw::state::EndpointRecord;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_llmgw");

/// How long `start` waits for `endpoint.json`.
pub const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// How often polling loops look again.
const POLL: Duration = Duration::from_millis(20);

/// Variables the binary (or its HTTP client) reads that must not leak in from the shell.
const SCRUBBED_ENV: &[&str] = &[
    "LLMGW_CONFIG",
    "LLMGW_STATE_DIR",
    "LLMGW_LOG_FORMAT",
    "LLMGW_NAME",
    "LLMGW_LOG",
    "HTTP_PROXY",
    "http_proxy",
    "HTTPS_PROXY",
    "https_proxy",
    "ALL_PROXY",
    "all_proxy",
];

/// A `Command` for the `llmgw` binary with a clean environment for tests.
pub fn llmgw_command() -> Command {
    llmgw_command_at(std::path::Path::new(BIN))
}

/// [`llmgw_command`] for another copy of the binary.
pub fn llmgw_command_at(bin: &std::path::Path) -> Command {
    let mut c = Command::new(bin);
    for v in SCRUBBED_ENV {
        c.env_remove(v);
    }
    c.env("NO_PROXY", "127.0.0.1,localhost")
        .env("no_proxy", "127.0.0.1,localhost")
        .stdin(Stdio::null());
    c
}

/// Runs a command with piped output, killing it after `limit`.
pub fn run_bounded(mut c: Command, limit: Duration) -> std::process::Output {
    c.stdout(Stdio::piped()).stderr(Stdio::piped());
    let child = c.spawn().expect("spawn llmgw");
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(limit) {
        Ok(out) => out.expect("wait for llmgw"),
        Err(_) => {
            let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
            panic!("llmgw did not finish within {limit:?}");
        }
    }
}

/// True under CI (`CI` set to anything but empty, `0` or `false`): there a missing
/// prerequisite fails the test instead of skipping it.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !matches!(v.trim(), "" | "0" | "false" | "FALSE"))
}

/// Skips the calling test for want of `what` (e.g. "no SLURM cluster (sbatch not on
/// PATH); run scripts/local-slurm.sh up"): writes one `skipped: …` line naming the test
/// straight to stderr (not through `eprintln!`, which `cargo test` captures and hides for a
/// test that passes), so a skip never passes for a pass in silence. Under CI ([`in_ci`])
/// it panics instead: there nothing may be missing.
pub fn skip(what: &str) {
    if in_ci() {
        panic!("CI is set, so {} may not be skipped: {what}", test_name());
    }
    say_skipped(what);
}

/// Writes `skipped: <why> [<test>]` straight to stderr (see [`skip`]), also under CI: for
/// a test that does not apply here at all (not a missing prerequisite).
pub fn say_skipped(why: &str) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr().lock(), "skipped: {why} [{}]", test_name());
}

/// The running test's name (libtest names each test's thread after it).
fn test_name() -> String {
    std::thread::current()
        .name()
        .unwrap_or("this test")
        .to_string()
}

/// True when the local SLURM cluster (`scripts/local-slurm.sh up`) is there to test on.
/// Without `sbatch` the calling test is skipped ([`skip`]: it says so on stderr) and this
/// returns false — unless under CI, where a missing cluster is a failure. Panics when the
/// controller does not answer.
pub fn slurm_cluster_ready() -> bool {
    let have_sbatch = Command::new("sbatch")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !have_sbatch {
        skip("no SLURM cluster (sbatch not on PATH); run scripts/local-slurm.sh up");
        return false;
    }
    let sinfo = Command::new("sinfo").arg("-h").output();
    assert!(
        sinfo.as_ref().is_ok_and(|o| o.status.success()),
        "sbatch is installed but the SLURM controller does not answer; run `bash scripts/local-slurm.sh up` ({:?})",
        sinfo.map(|o| String::from_utf8_lossy(&o.stderr).to_string())
    );
    true
}

/// Local ports of the IPv4 TCP sockets process `pid` holds (its descriptors matched with
/// `/proc/net/tcp` by inode): how a server sees that process's connections.
pub fn tcp_local_ports(pid: u32) -> Vec<u16> {
    let inodes: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.flatten()
                .filter_map(|e| {
                    let link = std::fs::read_link(e.path()).ok()?;
                    let l = link.to_str()?;
                    Some(l.strip_prefix("socket:[")?.strip_suffix(']')?.to_string())
                })
                .collect()
        })
        .unwrap_or_default();
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    table
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let inode = f.get(9)?;
            if !inodes.iter().any(|i| i == inode) {
                return None;
            }
            u16::from_str_radix(f.get(1)?.rsplit(':').next()?, 16).ok()
        })
        .collect()
}

/// Starts an in-process mock upstream on 127.0.0.1 with a free port.
pub async fn mock(name: &str, behavior: Behavior) -> MockUpstream {
    MockUpstream::start(name, behavior)
        .await
        .expect("start mock upstream")
}

/// One `[[models]]` table for an OpenAI-compatible deployment. `extra` is appended
/// verbatim (more `key = value` lines, e.g. `timeout = "300ms"`).
pub fn openai_model(name: &str, upstream_model: &str, api_base: &str, extra: &str) -> String {
    format!(
        "[[models]]\nname = \"{name}\"\nprovider = \"openai\"\nmodel = \"{upstream_model}\"\napi_base = \"{api_base}\"\n{extra}\n"
    )
}

/// A port on 127.0.0.1 that nothing listens on (bound, then released).
pub fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local addr").port()
}

/// A minimal chat completion request body.
pub fn chat_body(model: &str, stream: bool) -> String {
    serde_json::json!({
        "model": model,
        "messages": [{"role": "user", "content": "Say hello"}],
        "stream": stream,
    })
    .to_string()
}

/// A loopback HTTP client: no proxy, bounded overall timeout.
pub fn client() -> reqwest::Client {
    // reqwest is built with `rustls-no-provider`: pick the same provider as the gateway.
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(60))
        .build()
        .expect("build reqwest client")
}

/// Polls `f` until it returns `Some`, or panics with `what` after `timeout`.
pub async fn wait_for<T, F, Fut>(timeout: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(POLL).await;
    }
}

/// What a process that ran to its end left behind.
#[derive(Debug)]
pub struct Finished {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
    /// Path of the config file given with `-c` (if any), as the binary saw it.
    pub config_path: Option<PathBuf>,
    /// The state directory passed with `--state-dir`.
    pub state_dir: PathBuf,
    _dir: tempfile::TempDir,
}

/// How to run `llmgw serve`; `Gateway::start` is the common shortcut.
pub struct GatewayBuilder {
    config: Option<String>,
    args: Vec<String>,
    envs: Vec<(String, String)>,
    port: Option<u16>,
    ready_timeout: Duration,
    nofile: Option<(u64, u64)>,
}

impl GatewayBuilder {
    /// Serve `config_toml` (written to `<tmp>/llmgw.toml` and passed with `-c`).
    pub fn new(config_toml: &str) -> Self {
        GatewayBuilder {
            config: Some(config_toml.to_string()),
            args: Vec::new(),
            envs: Vec::new(),
            port: Some(0),
            ready_timeout: READY_TIMEOUT,
            nofile: None,
        }
    }

    /// Serve without `-c` (the built-in default config).
    pub fn default_config() -> Self {
        GatewayBuilder {
            config: None,
            ..GatewayBuilder::new("")
        }
    }

    /// An extra argument after `serve ...` (global flags such as `--log-format` work there).
    pub fn arg(mut self, a: impl Into<String>) -> Self {
        self.args.push(a.into());
        self
    }

    pub fn args<I: IntoIterator<Item = S>, S: Into<String>>(mut self, args: I) -> Self {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// An environment variable for the child (e.g. what `env:VAR` references read).
    pub fn env(mut self, k: impl Into<String>, v: impl Into<String>) -> Self {
        self.envs.push((k.into(), v.into()));
        self
    }

    /// `--port`; the default is `0` (any free port). `None` passes no `--port`.
    pub fn port(mut self, p: Option<u16>) -> Self {
        self.port = p;
        self
    }

    pub fn ready_timeout(mut self, d: Duration) -> Self {
        self.ready_timeout = d;
        self
    }

    /// Starts the child with this open-file limit (soft, hard), as `ulimit -Sn`/`-Hn` would.
    pub fn nofile_limit(mut self, soft: u64, hard: u64) -> Self {
        self.nofile = Some((soft, hard));
        self
    }

    /// Writes the config and spawns the child; does not wait for anything.
    fn spawn(self) -> Spawned {
        let dir = tempfile::tempdir().expect("create temp dir");
        let state_dir = dir.path().join("state");
        let stderr_path = dir.path().join("stderr");
        let stdout_path = dir.path().join("stdout");
        let mut cmd = llmgw_command();
        cmd.arg("serve");
        let config_path = self.config.as_ref().map(|text| {
            let p = dir.path().join("llmgw.toml");
            std::fs::write(&p, text).expect("write config");
            cmd.arg("-c").arg(&p);
            p
        });
        cmd.arg("--state-dir").arg(&state_dir);
        if let Some(p) = self.port {
            cmd.arg("--port").arg(p.to_string());
        }
        cmd.args(&self.args);
        for (k, v) in &self.envs {
            cmd.env(k, v);
        }
        if let Some((soft, hard)) = self.nofile {
            use std::os::unix::process::CommandExt as _;
            // SAFETY: setrlimit is async-signal-safe and touches no memory of the parent.
            unsafe {
                cmd.pre_exec(move || {
                    nix::sys::resource::setrlimit(
                        nix::sys::resource::Resource::RLIMIT_NOFILE,
                        soft,
                        hard,
                    )
                    .map_err(std::io::Error::from)
                });
            }
        }
        cmd.stdout(std::fs::File::create(&stdout_path).expect("create stdout file"))
            .stderr(std::fs::File::create(&stderr_path).expect("create stderr file"));
        let child = cmd.spawn().expect("spawn llmgw");
        Spawned {
            child,
            dir,
            state_dir,
            stderr_path,
            stdout_path,
            config_path,
            ready_timeout: self.ready_timeout,
        }
    }

    /// Starts the gateway and waits until it wrote `endpoint.json`; panics (with the
    /// child's stderr) if it exits or is not ready in time.
    pub async fn start(self) -> Gateway {
        let mut s = self.spawn();
        let deadline = Instant::now() + s.ready_timeout;
        let endpoint = loop {
            if let Ok(Some(rec)) = EndpointRecord::read(&s.state_dir) {
                break rec;
            }
            if let Some(status) = s.child.try_wait().expect("try_wait") {
                panic!(
                    "llmgw serve exited with {status} before it was ready; stderr:\n{}",
                    read_lossy(&s.stderr_path)
                );
            }
            if Instant::now() >= deadline {
                let _ = s.child.kill();
                let _ = s.child.wait();
                panic!(
                    "llmgw serve was not ready within {:?}; stderr:\n{}",
                    s.ready_timeout,
                    read_lossy(&s.stderr_path)
                );
            }
            tokio::time::sleep(POLL).await;
        };
        let ip: std::net::IpAddr = endpoint.bind.parse().expect("endpoint bind is an IP");
        let ip = if ip.is_unspecified() {
            std::net::IpAddr::from([127, 0, 0, 1])
        } else {
            ip
        };
        Gateway {
            addr: SocketAddr::new(ip, endpoint.port),
            endpoint,
            client: client(),
            child: Some(s.child),
            state_dir: s.state_dir,
            stderr_path: s.stderr_path,
            stdout_path: s.stdout_path,
            config_path: s.config_path,
            _dir: s.dir,
        }
    }

    /// Runs `serve` expecting it to exit by itself (bad config, refused host, …) within
    /// `timeout`; panics if it is still running then.
    pub async fn run_to_exit(self, timeout: Duration) -> Finished {
        let mut s = self.spawn();
        let status = wait_child(&mut s.child, timeout).await.unwrap_or_else(|| {
            let _ = s.child.kill();
            let _ = s.child.wait();
            panic!(
                "llmgw serve did not exit within {timeout:?}; stderr:\n{}",
                read_lossy(&s.stderr_path)
            )
        });
        Finished {
            status,
            stdout: read_lossy(&s.stdout_path),
            stderr: read_lossy(&s.stderr_path),
            config_path: s.config_path,
            state_dir: s.state_dir,
            _dir: s.dir,
        }
    }
}

struct Spawned {
    child: Child,
    dir: tempfile::TempDir,
    state_dir: PathBuf,
    stderr_path: PathBuf,
    stdout_path: PathBuf,
    config_path: Option<PathBuf>,
    ready_timeout: Duration,
}

async fn wait_child(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(POLL).await;
    }
}

fn read_lossy(p: &Path) -> String {
    std::fs::read(p)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

/// A running `llmgw serve`; killed on drop.
pub struct Gateway {
    pub addr: SocketAddr,
    /// What `serve` wrote to `endpoint.json`.
    pub endpoint: EndpointRecord,
    client: reqwest::Client,
    child: Option<Child>,
    pub state_dir: PathBuf,
    stderr_path: PathBuf,
    stdout_path: PathBuf,
    pub config_path: Option<PathBuf>,
    _dir: tempfile::TempDir,
}

impl Gateway {
    /// Serves `config_toml` on a free loopback port; ready when this returns.
    pub async fn start(config_toml: &str) -> Gateway {
        GatewayBuilder::new(config_toml).start().await
    }

    pub fn builder(config_toml: &str) -> GatewayBuilder {
        GatewayBuilder::new(config_toml)
    }

    /// `http://127.0.0.1:PORT{path}`
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// `http://127.0.0.1:PORT/v1` (what an OpenAI SDK takes as `base_url`).
    pub fn base_url(&self) -> String {
        self.url("/v1")
    }

    /// A client for this gateway (loopback, no proxy, 60 s overall timeout).
    pub fn client(&self) -> reqwest::Client {
        self.client.clone()
    }

    /// `POST path` with a JSON body.
    pub async fn post_json(&self, path: &str, body: &str) -> reqwest::Response {
        self.client
            .post(self.url(path))
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .unwrap_or_else(|e| panic!("POST {path}: {e:?}"))
    }

    /// `GET path`.
    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client
            .get(self.url(path))
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e:?}"))
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("child").id()
    }

    /// Sends SIGTERM (what `scancel` sends).
    pub fn sigterm(&self) {
        self.signal(nix::sys::signal::Signal::SIGTERM);
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        let pid = nix::unistd::Pid::from_raw(self.pid() as i32);
        nix::sys::signal::kill(pid, sig).expect("send signal to llmgw");
    }

    /// Waits (bounded) for the child to exit; panics with its stderr on timeout.
    pub async fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let child = self.child.as_mut().expect("child");
        match wait_child(child, timeout).await {
            Some(s) => s,
            None => panic!(
                "llmgw serve did not exit within {timeout:?}; stderr:\n{}",
                self.stderr_text()
            ),
        }
    }

    /// Everything the child wrote to stderr so far (its log).
    pub fn stderr_text(&self) -> String {
        read_lossy(&self.stderr_path)
    }

    pub fn stdout_text(&self) -> String {
        read_lossy(&self.stdout_path)
    }

    /// Waits (bounded) until a stderr line satisfies `pred`; returns that line.
    /// Logs are written by a background thread, so lines appear shortly after the event.
    pub async fn wait_for_log(
        &self,
        timeout: Duration,
        what: &str,
        pred: impl Fn(&str) -> bool,
    ) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let text = self.stderr_text();
            if let Some(line) = text.lines().find(|l| pred(l)) {
                return line.to_string();
            }
            if Instant::now() >= deadline {
                panic!(
                    "timed out after {timeout:?} waiting for a log line {what}; stderr:\n{text}"
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            if let Ok(None) = child.try_wait() {
                let _ = child.kill();
            }
            let _ = child.wait();
        }
    }
}

/// Reads a response body as JSON, panicking with the raw text when it is not.
pub async fn json_body(resp: reqwest::Response) -> serde_json::Value {
    let text = resp.text().await.expect("read body");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("body is not JSON ({e}): {text}"))
}

/// Asserts `resp` has `status` and an OpenAI error body with all four keys
/// (`message` a non-empty string, `type` a string); returns the `error` object.
pub async fn expect_openai_error(
    resp: reqwest::Response,
    status: u16,
) -> serde_json::Map<String, serde_json::Value> {
    let got = resp.status().as_u16();
    let ctype = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let text = resp.text().await.expect("read body");
    assert_eq!(got, status, "status; body: {text}");
    assert!(
        ctype.starts_with("application/json"),
        "content-type {ctype:?}; body: {text}"
    );
    let v: serde_json::Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("error body is not JSON ({e}): {text}"));
    let err = v
        .get("error")
        .and_then(|e| e.as_object())
        .unwrap_or_else(|| panic!("no \"error\" object: {text}"))
        .clone();
    for key in ["message", "type", "param", "code"] {
        assert!(err.contains_key(key), "error lacks {key:?}: {text}");
    }
    assert!(
        err["message"].as_str().is_some_and(|m| !m.is_empty()),
        "message must be a non-empty string: {text}"
    );
    assert!(err["type"].is_string(), "type must be a string: {text}");
    err
}

/// One server-sent event as the client saw it.
#[derive(Debug, Clone)]
pub struct SseEvent {
    /// When the read that completed this event returned.
    pub at: Instant,
    /// The `data:` payload (`[DONE]` or JSON text).
    pub data: String,
}

impl SseEvent {
    pub fn json(&self) -> Option<serde_json::Value> {
        serde_json::from_str(&self.data).ok()
    }
    pub fn is_done(&self) -> bool {
        self.data == "[DONE]"
    }
}

/// Reads an SSE body to its end (bounded by the client's timeout), event by event,
/// recording when each one arrived.
pub async fn read_sse(mut resp: reqwest::Response) -> Vec<SseEvent> {
    let mut events = Vec::new();
    let mut buf: Vec<u8> = Vec::new();
    while let Some(chunk) = resp.chunk().await.expect("read SSE chunk") {
        let at = Instant::now();
        buf.extend_from_slice(&chunk);
        drain_events(&mut buf, at, &mut events);
    }
    assert!(
        buf.iter().all(|b| b.is_ascii_whitespace()),
        "stream ended inside an event: {:?}",
        String::from_utf8_lossy(&buf)
    );
    events
}

/// Reads an SSE body from an upstream that lets its events out one at a time through
/// `gate` ([`Behavior::chunk_gate`]): each of the first `content` content events lets the
/// next one out only once it has reached this client, then the rest go at once. So the
/// stream arrives whole only if the gateway passes each event on as it comes; one that
/// held events back for a batch would wait forever (this panics after 10 s without one).
pub async fn read_sse_released_one_by_one(
    mut resp: reqwest::Response,
    gate: &tokio::sync::Semaphore,
    content: usize,
) -> Vec<SseEvent> {
    let mut events = Vec::new();
    let mut buf: Vec<u8> = Vec::new();
    let mut released = 0;
    loop {
        let chunk = tokio::time::timeout(Duration::from_secs(10), resp.chunk())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "nothing more within 10 s after {} content events: the gateway holds an \
                     event back (the upstream sends the next only once it has arrived)",
                    content_events(&events).len()
                )
            })
            .expect("read SSE chunk");
        let Some(chunk) = chunk else { break };
        buf.extend_from_slice(&chunk);
        drain_events(&mut buf, Instant::now(), &mut events);
        let seen = content_events(&events).len();
        if seen >= content && released < content {
            gate.add_permits(tokio::sync::Semaphore::MAX_PERMITS / 2);
            released = content;
        } else if seen > released {
            gate.add_permits(seen - released);
            released = seen;
        }
    }
    assert!(
        buf.iter().all(|b| b.is_ascii_whitespace()),
        "stream ended inside an event: {:?}",
        String::from_utf8_lossy(&buf)
    );
    events
}

/// Moves every complete event (`...\n\n`) from `buf` into `out`.
pub fn drain_events(buf: &mut Vec<u8>, at: Instant, out: &mut Vec<SseEvent>) {
    while let Some(end) = buf.windows(2).position(|w| w == b"\n\n") {
        let raw: Vec<u8> = buf.drain(..end + 2).collect();
        let text = String::from_utf8_lossy(&raw);
        let data: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("data:"))
            .map(|d| d.strip_prefix(' ').unwrap_or(d))
            .collect();
        if !data.is_empty() {
            out.push(SseEvent {
                at,
                data: data.join("\n"),
            });
        }
    }
}

/// Arrival time and `choices[0].delta.content` of each chat chunk that carries content
/// (an empty string included: the mock pads short replies with empty chunks).
pub fn content_events(events: &[SseEvent]) -> Vec<(Instant, String)> {
    events
        .iter()
        .filter_map(|e| {
            let v = e.json()?;
            let c = v["choices"][0]["delta"]["content"].as_str()?;
            Some((e.at, c.to_string()))
        })
        .collect()
}

/// The concatenated `delta.content` of a chat stream.
pub fn streamed_text(events: &[SseEvent]) -> String {
    content_events(events).into_iter().map(|(_, c)| c).collect()
}

/// Runs `tests/<script>` with python3 against `gw`: the gateway's `/v1` URL first, then
/// `args`, with `OPENAI_API_KEY = key` and no OpenAI or proxy settings inherited from the
/// shell. Bounded to 120 s; on failure panics with the script's output and the gateway's
/// log. Returns the script's stdout.
pub async fn run_python_script(gw: &Gateway, script: &str, args: &[&str], key: &str) -> String {
    let path = format!("{}/tests/{script}", env!("CARGO_MANIFEST_DIR"));
    let mut cmd = tokio::process::Command::new("python3");
    cmd.arg(&path)
        .arg(gw.base_url())
        .args(args)
        .env("OPENAI_API_KEY", key)
        .env("NO_PROXY", "127.0.0.1,localhost")
        .env("no_proxy", "127.0.0.1,localhost")
        .kill_on_drop(true);
    for v in [
        "OPENAI_BASE_URL",
        "OPENAI_ORG_ID",
        "OPENAI_PROJECT_ID",
        "HTTP_PROXY",
        "http_proxy",
        "HTTPS_PROXY",
        "https_proxy",
        "ALL_PROXY",
        "all_proxy",
    ] {
        cmd.env_remove(v);
    }
    let out = tokio::time::timeout(Duration::from_secs(120), cmd.output())
        .await
        .unwrap_or_else(|_| panic!("{script} did not finish within 120 s"))
        .expect("run python3");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{script} failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}\n--- gateway log\n{}",
        out.status,
        gw.stderr_text()
    );
    stdout
}
