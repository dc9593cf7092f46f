//! A real local SLURM cluster for the launcher tests (`scripts/local-slurm.sh up`): the
//! check that it is there, and [`Gw`], a gateway under test with its own `--name` and
//! temporary `--state-dir` that cancels every job it started (its whole chain) when
//! dropped, also when the test fails.

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

/// One cluster: one test at a time.
pub static SERIAL: Mutex<()> = Mutex::new(());

/// `Some(guard)` when a cluster is there to test on; `None` (skip) only without `sbatch`
/// and outside CI.
pub fn cluster() -> Option<MutexGuard<'static, ()>> {
    let guard = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    have_cluster().then_some(guard)
}

/// True when a cluster is there to test on (tests that may run side by side); false
/// (skip) only without `sbatch` and outside CI.
pub fn have_cluster() -> bool {
    super::slurm_cluster_ready()
}

/// A gateway under test: its name and state directory; cancels its jobs when dropped.
pub struct Gw {
    pub name: String,
    pub dir: PathBuf,
    pub _tmp: tempfile::TempDir,
    jobs: Mutex<Vec<String>>,
}

impl Gw {
    pub fn new(prefix: &str) -> Gw {
        let tmp = tempfile::Builder::new()
            .prefix("llmgw-slurm-test-")
            .tempdir()
            .expect("tempdir");
        let name = format!("{prefix}-{}-{}", std::process::id(), fastrand::u32(..));
        Gw {
            dir: tmp.path().join(&name),
            name,
            _tmp: tmp,
            jobs: Mutex::new(Vec::new()),
        }
    }

    /// A config file in the temp directory.
    pub fn config(&self, toml: &str) -> PathBuf {
        let p = self._tmp.path().join(format!("{}.toml", self.name));
        std::fs::write(&p, toml).expect("write config");
        p
    }

    pub fn target_args(&self) -> Vec<String> {
        vec![
            "--name".into(),
            self.name.clone(),
            "--state-dir".into(),
            self.dir.display().to_string(),
        ]
    }

    /// Runs `llmgw <cmd> --name N --state-dir D <extra>` to its end (bounded).
    pub fn run(&self, cmd: &str, extra: &[&str], limit: Duration) -> Output {
        let mut c = super::llmgw_command();
        c.arg(cmd).args(self.target_args()).args(extra);
        let out = run_bounded(c, limit);
        self.remember_job();
        out
    }

    /// Notes the job ids from `job.json` and `chain.json` so that Drop can cancel them.
    pub fn remember_job(&self) {
        let mut ids: Vec<String> = self.job_id().into_iter().collect();
        if let Ok(text) = std::fs::read_to_string(self.dir.join("chain.json")) {
            if let Ok(v) = serde_json::from_str::<Value>(&text) {
                for j in v["jobs"].as_array().into_iter().flatten() {
                    if let Some(id) = j["job_id"].as_str() {
                        ids.push(id.to_string());
                    }
                }
            }
        }
        let mut jobs = self.jobs.lock().unwrap_or_else(|e| e.into_inner());
        for id in ids {
            if !jobs.contains(&id) {
                jobs.push(id);
            }
        }
    }

    pub fn job_id(&self) -> Option<String> {
        let text = std::fs::read_to_string(self.dir.join("job.json")).ok()?;
        let v: Value = serde_json::from_str(&text).ok()?;
        v["job_id"].as_str().map(str::to_string)
    }

    pub fn key(&self) -> String {
        std::fs::read_to_string(self.dir.join("key"))
            .expect("key file")
            .trim()
            .to_string()
    }

    pub fn status_json(&self) -> Value {
        let out = self.run("status", &["--json"], Duration::from_secs(30));
        assert!(out.status.success(), "status failed: {}", text(&out));
        serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("status --json printed no JSON ({e}): {}", text(&out)))
    }

    /// Starts with `--json` and returns the parsed object (asserting success).
    pub fn start_json(&self, config: &Path) -> Value {
        let out = self.run(
            "start",
            &[
                "-c",
                &config.display().to_string(),
                "--json",
                "--timeout",
                "90s",
            ],
            Duration::from_secs(120),
        );
        assert!(out.status.success(), "start failed: {}", text(&out));
        serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("start --json printed no JSON ({e}): {}", text(&out)))
    }
}

impl Drop for Gw {
    fn drop(&mut self) {
        self.remember_job();
        for id in self.jobs.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            let _ = Command::new("scancel").arg(id).status();
        }
    }
}

pub use super::run_bounded;

pub fn text(out: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}\n--- stderr\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

pub fn job_state(id: &str) -> Option<String> {
    let out = Command::new("squeue")
        .args(["-h", "-j", id, "-o", "%T"])
        .output()
        .ok()?;
    let s = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (!s.is_empty()).then_some(s)
}

/// PIDs whose command line contains `needle`.
pub fn pids_with(needle: &str) -> Vec<u32> {
    let out = Command::new("ps")
        .args(["-eo", "pid=,args="])
        .output()
        .expect("ps");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains(needle) && !l.contains("ps -eo"))
        .filter_map(|l| l.split_whitespace().next()?.parse().ok())
        .collect()
}

/// True when the process is a zombie or gone.
pub fn is_zombie(pid: u64) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit(')').next().map(|r| r.trim().starts_with('Z')))
        .unwrap_or(true)
}

/// A running `llmgw connect` for a gateway under test; killed when dropped.
pub struct Connect {
    pub child: std::process::Child,
    pub port: u16,
    pub stderr: PathBuf,
}

impl Connect {
    /// `http://127.0.0.1:PORT/v1`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/v1", self.port)
    }

    pub fn stderr_text(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }
}

impl Drop for Connect {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Gw {
    /// Starts `llmgw connect --port 0 <extra>` and waits for its first line (the address).
    pub fn connect(&self, extra: &[&str]) -> Connect {
        use std::io::BufRead as _;
        let stderr = self
            ._tmp
            .path()
            .join(format!("connect-{}.err", fastrand::u32(..)));
        let mut c = super::llmgw_command();
        c.arg("connect")
            .args(self.target_args())
            .args(["--port", "0"])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr).expect("connect stderr"));
        let mut child = c.spawn().expect("spawn llmgw connect");
        let out = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = std::io::BufReader::new(out).lines();
            let _ = tx.send(lines.next().and_then(Result::ok));
            // Keep draining so connect never blocks on a full pipe.
            for _ in lines {}
        });
        let first = rx.recv_timeout(Duration::from_secs(60)).ok().flatten();
        let port = first
            .as_deref()
            .and_then(|l| l.split("http://127.0.0.1:").nth(1))
            .and_then(|r| r.split(' ').next())
            .and_then(|p| p.parse().ok());
        let Some(port) = port else {
            let _ = child.kill();
            panic!(
                "llmgw connect printed {first:?}; stderr: {}",
                std::fs::read_to_string(&stderr).unwrap_or_default()
            );
        };
        Connect {
            child,
            port,
            stderr,
        }
    }

    /// `endpoint.json`, if there is one.
    pub fn endpoint(&self) -> Option<Value> {
        let text = std::fs::read_to_string(self.dir.join("endpoint.json")).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// `chain.json`.
    pub fn chain(&self) -> Value {
        let text = std::fs::read_to_string(self.dir.join("chain.json")).expect("chain.json");
        serde_json::from_str(&text).expect("chain.json is JSON")
    }
}

/// One field of `scontrol show job` (finished jobs stay there for MinJobAge; this cluster
/// has no slurmdbd, so `sacct` cannot tell).
pub fn scontrol_field(id: &str, field: &str) -> Option<String> {
    let out = Command::new("scontrol")
        .args(["show", "job", "-o", id])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    text.split_whitespace()
        .find_map(|kv| kv.strip_prefix(&format!("{field}=")).map(str::to_string))
}

/// Seconds in `H:MM:SS` / `MM:SS` / `D-HH:MM:SS`.
pub fn secs(t: &str) -> u64 {
    llmgw::duration::parse_time_limit(t).unwrap_or(u64::MAX)
}

/// Asserts the finished job ended COMPLETED, before its time limit.
pub fn assert_completed_in_time(id: &str) {
    let state = scontrol_field(id, "JobState");
    assert_eq!(state.as_deref(), Some("COMPLETED"), "job {id}");
    let run = scontrol_field(id, "RunTime").unwrap_or_default();
    let limit = scontrol_field(id, "TimeLimit").unwrap_or_default();
    assert!(
        secs(&run) < secs(&limit),
        "job {id} ran {run} of its {limit} limit"
    );
}
