//! The SLURM commands llmgw runs (`sbatch`, `squeue`, `scontrol`, `sacct`, `scancel`),
//! their output parsed into plain structs and their failures into errors a user can act on.

use serde::Serialize;
use std::path::Path;
use std::process::{Command, Output};

/// A SLURM command that failed.
#[derive(Debug, thiserror::Error)]
pub enum SlurmError {
    #[error("{cmd} not found on PATH — run this on a login node of a SLURM cluster (on this machine: scripts/local-slurm.sh up)")]
    NotFound { cmd: String },
    #[error("sbatch rejected the job: {message}")]
    Rejected { message: String },
    #[error("{cmd} failed: {message}")]
    Failed { cmd: String, message: String },
    #[error("cannot run {cmd}: {source}")]
    Io { cmd: String, source: std::io::Error },
    #[error("unexpected output from {cmd}: {output:?}")]
    Parse { cmd: String, output: String },
}

/// What SLURM says about one job.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct JobInfo {
    pub id: String,
    /// `PENDING`, `RUNNING`, `COMPLETED`, `FAILED`, `CANCELLED`, `TIMEOUT`, …
    pub state: String,
    /// SLURM's reason (why pending, why it failed); absent when `None`.
    pub reason: Option<String>,
    pub node: Option<String>,
    /// Run time so far, as SLURM prints it (`1:02:03`).
    pub elapsed: Option<String>,
    pub time_limit: Option<String>,
    /// `exit:signal`, for finished jobs.
    pub exit_code: Option<String>,
    /// Which command answered: `squeue`, `scontrol` or `sacct`.
    pub source: &'static str,
}

impl JobInfo {
    /// Waiting to start.
    pub fn is_pending(&self) -> bool {
        matches!(
            self.state.as_str(),
            "PENDING" | "CONFIGURING" | "REQUEUED" | "REQUEUE_HOLD" | "REQUEUE_FED" | "RESIZING"
        )
    }

    /// Running (or being set up, suspended or finishing): it holds a node.
    pub fn is_running(&self) -> bool {
        matches!(
            self.state.as_str(),
            "RUNNING" | "COMPLETING" | "SUSPENDED" | "STAGE_OUT" | "SIGNALING" | "STOPPED"
        )
    }

    /// Pending or running: not finished.
    pub fn is_active(&self) -> bool {
        self.is_pending() || self.is_running()
    }

    /// A one-line description: `RUNNING on gpu113`, `PENDING (Resources)`, `FAILED (NonZeroExitCode, exit 1:0)`.
    pub fn describe(&self) -> String {
        let mut s = self.state.clone();
        if let (true, Some(node)) = (self.is_running(), &self.node) {
            s.push_str(&format!(" on {node}"));
        }
        let mut why = Vec::new();
        if let Some(r) = &self.reason {
            why.push(r.clone());
        }
        if let Some(code) = self
            .exit_code
            .as_ref()
            .filter(|c| !self.is_active() && *c != "0:0")
        {
            why.push(format!("exit {code}"));
        }
        if !why.is_empty() {
            s.push_str(&format!(" ({})", why.join(", ")));
        }
        s
    }
}

fn run(cmd: &str, args: &[&str]) -> Result<Output, SlurmError> {
    output(cmd, Command::new(cmd).args(args).env_remove("SLURM_JOB_ID"))
}

fn output(cmd: &str, c: &mut Command) -> Result<Output, SlurmError> {
    c.output().map_err(|source| {
        if source.kind() == std::io::ErrorKind::NotFound {
            SlurmError::NotFound {
                cmd: cmd.to_string(),
            }
        } else {
            SlurmError::Io {
                cmd: cmd.to_string(),
                source,
            }
        }
    })
}

/// SLURM's own message from stderr, without the `sbatch: error: ` prefixes, on one line.
fn message(out: &Output) -> String {
    let text = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = text
        .lines()
        .map(|l| {
            let l = l.trim();
            let l = l.split_once(": error: ").map_or(l, |(_, rest)| rest);
            l.strip_prefix("error: ").unwrap_or(l)
        })
        .filter(|l| !l.is_empty())
        .collect();
    if lines.is_empty() {
        format!("exit status {}", out.status)
    } else {
        lines.join("; ")
    }
}

fn invalid_job(out: &Output) -> bool {
    let m = String::from_utf8_lossy(&out.stderr).to_lowercase();
    m.contains("invalid job id") || m.contains("does not exist")
}

/// `sbatch --parsable SCRIPT`: submits and returns the job id.
pub fn submit(script: &Path) -> Result<String, SlurmError> {
    submit_with_env(script, &[])
}

/// Like [`submit`], with `env` added to the job's environment. Run from inside a job (a
/// gateway submitting its successor), the job's own `SLURM_*`/`SBATCH_*` variables are
/// left out: they describe this allocation, not the next one.
pub fn submit_with_env(script: &Path, env: &[(&str, &str)]) -> Result<String, SlurmError> {
    let path = script.to_string_lossy();
    let mut cmd = Command::new("sbatch");
    cmd.args(["--parsable", path.as_ref()]);
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy();
        if (k.starts_with("SLURM_") && k != "SLURM_CONF") || k.starts_with("SBATCH_") {
            cmd.env_remove(k.as_ref());
        }
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = output("sbatch", &mut cmd)?;
    if !out.status.success() {
        return Err(SlurmError::Rejected {
            message: message(&out),
        });
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    parse_parsable(&stdout).ok_or_else(|| SlurmError::Parse {
        cmd: "sbatch --parsable".into(),
        output: stdout.trim().to_string(),
    })
}

/// `123` or `123;cluster` → `123`.
fn parse_parsable(stdout: &str) -> Option<String> {
    let id = stdout.lines().last()?.split(';').next()?.trim();
    (!id.is_empty() && id.chars().all(|c| c.is_ascii_digit())).then(|| id.to_string())
}

/// `sbatch --test-only SCRIPT`: SLURM validates the script and says when it would start.
pub fn test_only(script: &Path) -> Result<String, SlurmError> {
    let path = script.to_string_lossy();
    let out = run("sbatch", &["--test-only", &path])?;
    if !out.status.success() {
        return Err(SlurmError::Rejected {
            message: message(&out),
        });
    }
    Ok(String::from_utf8_lossy(&out.stderr).trim().to_string())
}

/// The job's state: from `squeue` while it is queued or running, then from
/// `scontrol show job` (finished jobs stay there for MinJobAge), then `sacct`.
/// `None` when SLURM no longer knows the job.
pub fn query(id: &str) -> Result<Option<JobInfo>, SlurmError> {
    if let Some(info) = squeue(id)? {
        return Ok(Some(info));
    }
    if let Some(info) = scontrol(id)? {
        return Ok(Some(info));
    }
    sacct(id)
}

/// A running job's remaining time and its whole limit, in seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeLeft {
    pub left: u64,
    pub limit: u64,
}

/// The running job's time left and limit (`squeue -o %L|%l`): relative, so it needs no
/// time-zone handling, and it follows `scontrol update TimeLimit=`. `None` when the job
/// has no limit or SLURM no longer lists it.
pub fn time_left(id: &str) -> Result<Option<TimeLeft>, SlurmError> {
    let out = run("squeue", &["-h", "-j", id, "-o", "%L|%l"])?;
    if !out.status.success() {
        if invalid_job(&out) {
            return Ok(None);
        }
        return Err(SlurmError::Failed {
            cmd: "squeue".into(),
            message: message(&out),
        });
    }
    Ok(parse_time_left(&String::from_utf8_lossy(&out.stdout)))
}

fn parse_time_left(stdout: &str) -> Option<TimeLeft> {
    let (left, limit) = stdout.lines().next()?.trim().split_once('|')?;
    let parse = llmgw_core::duration::parse_time_limit;
    Some(TimeLeft {
        left: parse(left)?,
        limit: parse(limit)?,
    })
}

fn squeue(id: &str) -> Result<Option<JobInfo>, SlurmError> {
    let out = run("squeue", &["-h", "-j", id, "-o", "%i|%T|%r|%N|%M|%l"])?;
    if !out.status.success() {
        if invalid_job(&out) {
            return Ok(None);
        }
        return Err(SlurmError::Failed {
            cmd: "squeue".into(),
            message: message(&out),
        });
    }
    Ok(parse_squeue(&String::from_utf8_lossy(&out.stdout), id))
}

fn parse_squeue(stdout: &str, id: &str) -> Option<JobInfo> {
    stdout.lines().find_map(|line| {
        let f: Vec<&str> = line.trim().split('|').collect();
        if f.len() < 6 || f[0] != id {
            return None;
        }
        Some(JobInfo {
            id: f[0].to_string(),
            state: f[1].to_string(),
            reason: value(f[2]),
            node: value(f[3]),
            elapsed: value(f[4]),
            time_limit: value(f[5]),
            exit_code: None,
            source: "squeue",
        })
    })
}

fn scontrol(id: &str) -> Result<Option<JobInfo>, SlurmError> {
    let out = run("scontrol", &["show", "job", "-o", id])?;
    if !out.status.success() {
        if invalid_job(&out) {
            return Ok(None);
        }
        return Err(SlurmError::Failed {
            cmd: "scontrol show job".into(),
            message: message(&out),
        });
    }
    Ok(parse_scontrol(&String::from_utf8_lossy(&out.stdout), id))
}

/// Splits `scontrol -o` output (`Key=value Key=value with spaces …`) into pairs.
fn scontrol_pairs(line: &str) -> Vec<(String, String)> {
    let mut pairs: Vec<(String, String)> = Vec::new();
    for token in line.split(' ') {
        let key_like = token.split_once('=').filter(|(k, _)| {
            !k.is_empty()
                && k.chars().next().is_some_and(|c| c.is_ascii_uppercase())
                && k.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':' || c == '/')
        });
        match (key_like, pairs.last_mut()) {
            (Some((k, v)), _) => pairs.push((k.to_string(), v.to_string())),
            (None, Some(last)) => {
                last.1.push(' ');
                last.1.push_str(token);
            }
            (None, None) => {}
        }
    }
    pairs
}

fn parse_scontrol(stdout: &str, id: &str) -> Option<JobInfo> {
    let line = stdout
        .lines()
        .find(|l| l.contains(&format!("JobId={id} ")))?;
    let pairs = scontrol_pairs(line.trim());
    let get = |k: &str| {
        pairs
            .iter()
            .find(|(key, _)| key == k)
            .and_then(|(_, v)| value(v))
    };
    Some(JobInfo {
        id: id.to_string(),
        state: get("JobState")?,
        reason: get("Reason"),
        node: get("NodeList"),
        elapsed: get("RunTime"),
        time_limit: get("TimeLimit"),
        exit_code: get("ExitCode"),
        source: "scontrol",
    })
}

fn sacct(id: &str) -> Result<Option<JobInfo>, SlurmError> {
    let out = match run(
        "sacct",
        &[
            "-j",
            id,
            "-X",
            "-n",
            "-P",
            "-o",
            "JobID,State,Reason,NodeList,Elapsed,Timelimit,ExitCode",
        ],
    ) {
        Ok(out) => out,
        // Without accounting (or without sacct) the job is simply unknown.
        Err(SlurmError::NotFound { .. }) => return Ok(None),
        Err(e) => return Err(e),
    };
    if !out.status.success() {
        return Ok(None);
    }
    Ok(parse_sacct(&String::from_utf8_lossy(&out.stdout), id))
}

fn parse_sacct(stdout: &str, id: &str) -> Option<JobInfo> {
    stdout.lines().find_map(|line| {
        let f: Vec<&str> = line.trim().split('|').collect();
        if f.len() < 7 || f[0] != id {
            return None;
        }
        // sacct prints "CANCELLED by 0".
        let state = f[1].split_whitespace().next()?.to_string();
        Some(JobInfo {
            id: id.to_string(),
            state,
            reason: value(f[2]),
            node: value(f[3]),
            elapsed: value(f[4]),
            time_limit: value(f[5]),
            exit_code: value(f[6]),
            source: "sacct",
        })
    })
}

/// SLURM's placeholders for "nothing" become `None`.
fn value(v: &str) -> Option<String> {
    let v = v.trim();
    match v {
        "" | "None" | "(null)" | "n/a" | "N/A" | "None assigned" | "Unknown" => None,
        _ if v.starts_with('(') && v.ends_with(')') => None,
        _ => Some(v.to_string()),
    }
}

/// What `cancel` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cancelled {
    /// The signal was delivered / the job was cancelled.
    Sent,
    /// SLURM no longer knew the job or it had already finished.
    AlreadyGone,
}

/// `scancel ID`, or with `batch_signal` only that signal to the batch step's main process
/// (`scancel --batch --signal=SIG`): the gateway then drains and exits by itself.
pub fn cancel(id: &str, batch_signal: Option<&str>) -> Result<Cancelled, SlurmError> {
    let signal_arg;
    let mut args: Vec<&str> = Vec::new();
    if let Some(sig) = batch_signal {
        signal_arg = format!("--signal={sig}");
        args.push("--batch");
        args.push(&signal_arg);
    }
    args.push(id);
    let out = run("scancel", &args)?;
    // scancel exits 0 even for some "already finished" cases; it prints them on stderr.
    let err = String::from_utf8_lossy(&out.stderr).to_lowercase();
    if invalid_job(&out) || err.contains("already complet") || err.contains("job is no longer") {
        return Ok(Cancelled::AlreadyGone);
    }
    if !out.status.success() {
        return Err(SlurmError::Failed {
            cmd: "scancel".into(),
            message: message(&out),
        });
    }
    Ok(Cancelled::Sent)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parsable_ids() {
        assert_eq!(parse_parsable("48213\n").as_deref(), Some("48213"));
        assert_eq!(parse_parsable("48213;cluster\n").as_deref(), Some("48213"));
        assert_eq!(parse_parsable("Submitted batch job 1\n"), None);
    }

    #[test]
    fn time_left_lines() {
        let t = parse_time_left("2:37|3:00\n").unwrap();
        assert_eq!((t.left, t.limit), (157, 180));
        let t = parse_time_left("1-02:03:04|2-00:00:00\n").unwrap();
        assert_eq!((t.left, t.limit), (93784, 172800));
        assert_eq!(parse_time_left("UNLIMITED|UNLIMITED\n"), None);
        assert_eq!(parse_time_left(""), None);
    }

    #[test]
    fn squeue_lines() {
        let info = parse_squeue("48213|PENDING|Resources||0:00|4:00:00\n", "48213").unwrap();
        assert_eq!(info.state, "PENDING");
        assert_eq!(info.reason.as_deref(), Some("Resources"));
        assert_eq!(info.node, None);
        assert!(info.is_pending() && !info.is_running());
        assert_eq!(info.describe(), "PENDING (Resources)");
        let info = parse_squeue("7|RUNNING|None|gpu113|0:41|UNLIMITED\n", "7").unwrap();
        assert_eq!(info.describe(), "RUNNING on gpu113");
        assert!(parse_squeue("", "7").is_none());
    }

    #[test]
    fn scontrol_line() {
        let line = "JobId=12 JobName=llmgw-a UserId=root(0) GroupId=root(0) MCS_label=N/A Priority=1 \
            JobState=FAILED Reason=NonZeroExitCode Dependency=(null) Requeue=1 Restarts=0 BatchFlag=1 \
            ExitCode=1:0 RunTime=00:00:01 TimeLimit=UNLIMITED NodeList=vm \
            WorkDir=/home/a b/c StdOut=/tmp/x/slurm-12.log Power=";
        let info = parse_scontrol(line, "12").unwrap();
        assert_eq!(info.state, "FAILED");
        assert_eq!(info.reason.as_deref(), Some("NonZeroExitCode"));
        assert_eq!(info.exit_code.as_deref(), Some("1:0"));
        assert_eq!(info.node.as_deref(), Some("vm"));
        assert_eq!(info.time_limit.as_deref(), Some("UNLIMITED"));
        assert_eq!(info.describe(), "FAILED (NonZeroExitCode, exit 1:0)");
        let pairs = scontrol_pairs(line);
        assert!(pairs.contains(&("WorkDir".into(), "/home/a b/c".into())));
    }

    #[test]
    fn sacct_line() {
        let info = parse_sacct("9|CANCELLED by 0|None|vm|00:01:00|01:00:00|0:15\n", "9").unwrap();
        assert_eq!(info.state, "CANCELLED");
        assert_eq!(info.exit_code.as_deref(), Some("0:15"));
    }

    #[test]
    fn messages_lose_prefixes() {
        use std::os::unix::process::ExitStatusExt;
        let out = Output {
            status: std::process::ExitStatus::from_raw(1 << 8),
            stdout: Vec::new(),
            stderr: b"sbatch: error: invalid partition specified: nope\nsbatch: error: Batch job submission failed: Invalid partition name specified\n".to_vec(),
        };
        assert_eq!(
            message(&out),
            "invalid partition specified: nope; Batch job submission failed: Invalid partition name specified"
        );
    }
}
