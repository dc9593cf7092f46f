//! A real throwaway PostgreSQL cluster for the tests: `initdb` into a temporary
//! directory and `postgres` on a free loopback port, as the `postgres` user when the
//! tests run as root (postgres refuses to run as root). Tests kill (SIGKILL, the whole
//! process group: a crash) and restart it on the same port and data directory.
//!
//! ```ignore
//! let mut pg = common::postgres::PgServer::start();
//! let url = pg.url();            // postgres://postgres@127.0.0.1:PORT/postgres
//! pg.kill();                     // crash: every connection drops at once
//! pg.restart();                  // same port and data, after crash recovery
//! let n = pg.query("SELECT count(*) FROM llmgw_spend");
//! ```

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long `start`/`restart` wait until the server accepts connections.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

pub struct PgServer {
    pub port: u16,
    dir: tempfile::TempDir,
    bin: PathBuf,
    /// uid/gid to run as (the `postgres` user when we are root).
    user: Option<(u32, u32)>,
    child: Option<Child>,
}

/// The directory with `initdb` and `postgres` (Debian: /usr/lib/postgresql/<v>/bin).
fn bin_dir() -> PathBuf {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.path().join("bin"))
                .filter(|p| p.join("initdb").exists())
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    found.pop().unwrap_or_else(|| {
        panic!("no PostgreSQL server under /usr/lib/postgresql/*/bin: apt-get install postgresql (scripts/test.sh does)")
    })
}

impl PgServer {
    /// initdb + start; panics (with the server's log) if it is not ready in 30 s.
    pub fn start() -> PgServer {
        let dir = tempfile::Builder::new()
            .prefix("llmgw-pg-")
            .tempdir()
            .expect("create temp dir");
        let user = if nix::unistd::geteuid().is_root() {
            let u = nix::unistd::User::from_name("postgres")
                .expect("look up user postgres")
                .expect("user postgres exists (apt-get install postgresql creates it)");
            nix::unistd::chown(dir.path(), Some(u.uid), Some(u.gid)).expect("chown temp dir");
            Some((u.uid.as_raw(), u.gid.as_raw()))
        } else {
            None
        };
        let mut s = PgServer {
            port: super::closed_port(),
            dir,
            bin: bin_dir(),
            user,
            child: None,
        };
        let out = s
            .command("initdb")
            .arg("-D")
            .arg(s.data())
            .args(["-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync"])
            .output()
            .expect("run initdb");
        assert!(
            out.status.success(),
            "initdb failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        s.spawn();
        s
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn log(&self) -> PathBuf {
        self.dir.path().join("postgres.log")
    }

    fn command(&self, prog: &str) -> Command {
        let mut c = Command::new(self.bin.join(prog));
        c.stdin(Stdio::null()).env_remove("PGPASSWORD");
        if let Some((uid, gid)) = self.user {
            c.uid(uid).gid(gid);
        }
        c
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    fn spawn(&mut self) {
        let log = std::fs::File::create(self.log()).expect("create postgres log");
        if let Some((uid, gid)) = self.user {
            let _ = nix::unistd::chown(
                &self.log(),
                Some(nix::unistd::Uid::from_raw(uid)),
                Some(nix::unistd::Gid::from_raw(gid)),
            );
        }
        let child = self
            .command("postgres")
            .arg("-D")
            .arg(self.data())
            .args([
                "-p",
                &self.port.to_string(),
                "-c",
                "listen_addresses=127.0.0.1",
            ])
            .arg("-k")
            .arg(self.dir.path())
            .args(["-c", "fsync=off", "-c", "max_connections=50"])
            .stdout(Stdio::null())
            .stderr(log)
            .process_group(0)
            .spawn()
            .expect("spawn postgres");
        self.child = Some(child);
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if self.query_opt("SELECT 1").as_deref() == Some("1") {
                return;
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!("postgres exited with {status}; log:\n{}", self.log_text());
            }
            if Instant::now() >= deadline {
                panic!(
                    "postgres was not ready within {READY_TIMEOUT:?}; log:\n{}",
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self.log()).unwrap_or_default()
    }

    /// SIGKILL to the postmaster and every backend: a crash.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let pgid = nix::unistd::Pid::from_raw(c.id() as i32);
            let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
            let _ = c.wait();
            // Backends notice the postmaster is gone; give them a moment to exit.
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline
                && nix::sys::signal::killpg(pgid, None::<nix::sys::signal::Signal>).is_ok()
            {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    /// Starts it again on the same port and data directory (after `kill`).
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// One query through `psql`; the first column of the first row, or `None` when the
    /// server cannot be reached.
    pub fn query_opt(&self, sql: &str) -> Option<String> {
        let out = self
            .command("psql")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                "-d",
                "postgres",
            ])
            .args(["-AtX", "-v", "ON_ERROR_STOP=1", "-c", sql])
            .env("PGCONNECT_TIMEOUT", "2")
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// One query that must succeed.
    pub fn query(&self, sql: &str) -> String {
        self.query_opt(sql)
            .unwrap_or_else(|| panic!("psql {sql:?} failed; log:\n{}", self.log_text()))
    }

    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        self.kill();
    }
}
