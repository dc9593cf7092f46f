//! `llmgw logs`: print (or follow) the job's output, or one local backend's log.

use super::{tail_lines, target_dir};
use crate::args::LogsArgs;
use anyhow::Context as _;
use llmgw_cluster::slurm::jobs;
use llmgw_cluster::slurm::JobRecord;
use llmgw_cluster::supervise::BACKENDS_DIR;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

const FOLLOW_POLL: Duration = Duration::from_millis(250);
/// How often `-f` asks SLURM whether the job is still running.
const JOB_CHECK: Duration = Duration::from_secs(2);

pub fn run(args: LogsArgs) -> anyhow::Result<ExitCode> {
    let (name, dir) = target_dir(&args.target)?;
    let record = JobRecord::read(&dir)
        .with_context(|| format!("cannot read the job record in {}", dir.display()))?;
    let path = match &args.backend {
        Some(b) => backend_log(&dir, b)?,
        None => match &record {
            Some(r) => r.log.clone(),
            None => anyhow::bail!(
                "no job recorded for gateway \"{name}\" in {}; start one with `llmgw start`",
                dir.display()
            ),
        },
    };
    if !path.exists() {
        let state = record
            .as_ref()
            .and_then(|r| jobs::query(&r.job_id).ok().flatten())
            .map(|i| format!(" (job {} is {})", i.id, i.describe()))
            .unwrap_or_default();
        if !args.follow {
            anyhow::bail!(
                "no log yet at {}{state}; it appears once the job starts — try `llmgw logs -f`",
                path.display()
            );
        }
    }
    let mut out = std::io::stdout().lock();
    for line in tail_lines(&path, args.lines) {
        writeln!(out, "{line}")?;
    }
    out.flush()?;
    if args.follow {
        let offset = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        // The job's own log follows the chain: when this job hands over, its successor's.
        let chain_dir = args.backend.is_none().then_some(dir.as_path());
        follow(
            &path,
            offset,
            record.as_ref().map(|r| r.job_id.clone()),
            chain_dir,
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

/// `<state>/backends/<name>.log`, or an error listing the backends there are.
fn backend_log(dir: &Path, backend: &str) -> anyhow::Result<PathBuf> {
    let logs = dir.join(BACKENDS_DIR);
    let path = logs.join(format!("{backend}.log"));
    if !backend.contains('/') && path.exists() {
        return Ok(path);
    }
    let mut names: Vec<String> = std::fs::read_dir(&logs)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter_map(|e| {
                    e.file_name()
                        .to_str()
                        .and_then(|n| n.strip_suffix(".log"))
                        .map(str::to_string)
                })
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    if names.is_empty() {
        anyhow::bail!(
            "no backend logs in {} (the gateway launches no local backend, or has not started yet)",
            logs.display()
        )
    }
    anyhow::bail!(
        "no backend {backend:?}; backends with logs: {}",
        names.join(", ")
    )
}

/// Prints what is appended from `offset` on. Ends when the job has ended and the file
/// stopped growing (without a job, when interrupted) — unless `chain_dir` is given and the
/// job handed over: then it goes on with the new current job's log.
fn follow(
    path: &Path,
    mut offset: u64,
    mut job: Option<String>,
    chain_dir: Option<&Path>,
) -> anyhow::Result<()> {
    let mut path = path.to_path_buf();
    let mut out = std::io::stdout().lock();
    let mut last_check = Instant::now();
    let mut ended = false;
    let mut buf = Vec::new();
    loop {
        let grew = match std::fs::File::open(&path) {
            Ok(mut f) => {
                let len = f.metadata().map(|m| m.len()).unwrap_or(0);
                if len < offset {
                    offset = 0; // truncated or replaced
                }
                if len > offset {
                    f.seek(SeekFrom::Start(offset))?;
                    buf.clear();
                    f.take(len - offset).read_to_end(&mut buf)?;
                    offset += buf.len() as u64;
                    out.write_all(&buf)?;
                    out.flush()?;
                    true
                } else {
                    false
                }
            }
            Err(_) => false,
        };
        if ended && !grew {
            let next = chain_dir
                .and_then(|d| JobRecord::read(d).ok().flatten())
                .filter(|r| job.as_deref() != Some(r.job_id.as_str()));
            let Some(next) = next else {
                return Ok(());
            };
            writeln!(
                out,
                "--- llmgw: job {} handed over to job {}; following {} ---",
                job.as_deref().unwrap_or("?"),
                next.job_id,
                next.log.display()
            )?;
            out.flush()?;
            path = next.log;
            offset = 0;
            job = Some(next.job_id);
            ended = false;
            continue;
        }
        if let Some(id) = job.as_deref() {
            if last_check.elapsed() >= JOB_CHECK {
                last_check = Instant::now();
                if let Ok(info) = jobs::query(id) {
                    // One more read after the job has ended, then stop.
                    ended = info.is_none_or(|i| !i.is_active());
                }
            }
        }
        std::thread::sleep(FOLLOW_POLL);
    }
}
