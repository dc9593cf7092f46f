//! A real `redis-server` for the tests: a free loopback port, a temporary directory, no
//! persistence. Tests stop, kill and restart it (on the same port) to simulate outages.
//!
//! ```ignore
//! let mut redis = common::redis::RedisServer::start();
//! let url = redis.url();        // redis://127.0.0.1:PORT
//! redis.kill();                 // SIGKILL: connections drop at once
//! redis.restart();              // same port, empty data set
//! ```

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long `start`/`restart` wait for the server to answer `PING`.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

pub struct RedisServer {
    pub port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts `redis-server` on a free loopback port; panics (with its log) if it does not
    /// answer `PING` within 10 s.
    pub fn start() -> RedisServer {
        let mut s = RedisServer {
            port: super::closed_port(),
            dir: tempfile::tempdir().expect("create temp dir"),
            child: None,
        };
        s.spawn();
        s
    }

    /// A server that is not running yet: its port is reserved by nothing, so a gateway
    /// pointed at it sees connection refused until [`RedisServer::restart`].
    pub fn not_started() -> RedisServer {
        RedisServer {
            port: super::closed_port(),
            dir: tempfile::tempdir().expect("create temp dir"),
            child: None,
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn spawn(&mut self) {
        let log = self.dir.path().join("redis.log");
        let child = Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .arg("--dir")
            .arg(self.dir.path())
            .arg("--logfile")
            .arg(&log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server (apt-get install redis-server)");
        self.child = Some(child);
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if self.command("PING").is_some_and(|r| r.starts_with("+PONG")) {
                return;
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!(
                    "redis-server exited with {status}; log:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            if Instant::now() >= deadline {
                panic!(
                    "redis-server did not answer PING within {READY_TIMEOUT:?}; log:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL and wait: clients see their connections drop at once.
    pub fn kill(&mut self) {
        // A paused server must be able to die; never panic here (Drop calls this).
        if let Some(c) = &self.child {
            let pid = nix::unistd::Pid::from_raw(c.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT);
        }
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGSTOP: the server keeps its port and connections but answers nothing (a hung
    /// Redis: clients see timeouts, not errors).
    pub fn pause(&self) {
        self.signal(nix::sys::signal::Signal::SIGSTOP);
    }

    /// SIGCONT after [`RedisServer::pause`].
    pub fn resume(&self) {
        self.signal(nix::sys::signal::Signal::SIGCONT);
    }

    fn signal(&self, sig: nix::sys::signal::Signal) {
        if let Some(c) = &self.child {
            let pid = nix::unistd::Pid::from_raw(c.id() as i32);
            nix::sys::signal::kill(pid, sig).expect("signal redis-server");
        }
    }

    /// Starts it again on the same port (empty data set).
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// Sends one inline command (e.g. `GET key`, `DBSIZE`) and returns the raw reply, or
    /// `None` when the server cannot be reached.
    pub fn command(&self, cmd: &str) -> Option<String> {
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], self.port));
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(200)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        s.write_all(format!("{cmd}\r\n").as_bytes()).ok()?;
        let mut buf = [0u8; 4096];
        let n = s.read(&mut buf).ok()?;
        (n > 0).then(|| String::from_utf8_lossy(&buf[..n]).into_owned())
    }

    /// `DBSIZE` as a number (0 when unreachable).
    pub fn dbsize(&self) -> u64 {
        self.command("DBSIZE")
            .and_then(|r| r.trim().strip_prefix(':').and_then(|n| n.parse().ok()))
            .unwrap_or(0)
    }
}

/// `MONITOR` on a server: every command it receives, one line each as Redis prints them
/// (`+<time> [<db> <client ip:port>] "<COMMAND>" "<arg>" ...`), collected by a thread
/// until dropped. Lets a test wait for a client to have sent a command instead of
/// sleeping.
pub struct Monitor {
    lines: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    stream: TcpStream,
}

impl Monitor {
    /// Every line so far.
    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// How many lines so far are `command` (any case) sent from a connection whose local
    /// port (its address as the server sees it) is in `ports`, after the first `skip`.
    pub fn count_from(&self, skip: usize, ports: &[u16], command: &str) -> usize {
        let quoted = format!("\"{}\"", command.to_ascii_lowercase());
        self.lines()
            .iter()
            .skip(skip)
            .filter(|l| {
                let lower = l.to_ascii_lowercase();
                lower.contains(&quoted)
                    && ports
                        .iter()
                        .any(|p| lower.contains(&format!(" 127.0.0.1:{p}]")))
            })
            .count()
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
    }
}

impl RedisServer {
    /// Starts a [`Monitor`] (answered `+OK` before this returns).
    pub fn monitor(&self) -> Monitor {
        use std::io::BufRead as _;
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], self.port));
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).expect("connect");
        s.write_all(b"MONITOR\r\n").expect("send MONITOR");
        let mut reader = std::io::BufReader::new(s.try_clone().expect("clone stream"));
        let mut ok = String::new();
        reader.read_line(&mut ok).expect("MONITOR answer");
        assert!(ok.starts_with("+OK"), "MONITOR: {ok}");
        let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in reader.lines() {
                let Ok(line) = line else { return };
                sink.lock().unwrap_or_else(|e| e.into_inner()).push(line);
            }
        });
        Monitor { lines, stream: s }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}
