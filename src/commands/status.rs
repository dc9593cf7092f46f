//! `llmgw status`: the job (squeue, then scontrol/sacct once it has finished), where the
//! gateway listens, and its own view of every deployment and local backend.

use super::chain_status::ChainStatus;
use super::name_flag;
use super::{api_key, login_host, target_dir, user_name};
use crate::args::StatusArgs;
use anyhow::Context as _;
use llmgw_cluster::slurm::jobs::{self, JobInfo};
use llmgw_cluster::slurm::JobRecord;
use llmgw_cluster::supervise::{BackendStatus, BackendsFile};
use llmgw_core::duration::parse_time_limit;
use llmgw_core::state::EndpointRecord;
use serde_json::{json, Value};
use std::path::Path;
use std::process::ExitCode;

pub fn run(args: StatusArgs) -> anyhow::Result<ExitCode> {
    let (name, dir) = target_dir(&args.target)?;
    let record = JobRecord::read(&dir)
        .with_context(|| format!("cannot read the job record in {}", dir.display()))?;
    let Some(record) = record else {
        if args.json {
            println!(
                "{}",
                json!({"name": name, "state_dir": dir, "job_id": null, "state": null, "running": false})
            );
        } else {
            println!(
                "llmgw \"{name}\": no job recorded in {}; start one with `llmgw start -c CONFIG{}`",
                dir.display(),
                name_flag(&name)
            );
        }
        return Ok(ExitCode::SUCCESS);
    };
    let info = jobs::query(&record.job_id)?;
    let running = info.as_ref().is_some_and(JobInfo::is_running);
    let endpoint = EndpointRecord::read(&dir).ok().flatten();
    let endpoint = endpoint.filter(|ep| {
        ep.job_id
            .as_deref()
            .is_none_or(|j| j == record.job_id.as_str())
    });
    let health: Option<Result<Value, String>> = match (&endpoint, running) {
        (Some(ep), true) => {
            let rt = super::runtime()?;
            let client = super::http_client()?;
            let key = api_key(&dir);
            Some(rt.block_on(super::health(&client, ep, key.as_ref())))
        }
        _ => None,
    };
    let file_backends = BackendsFile::read(&dir).map(|f| f.backends);
    let backends: Vec<BackendStatus> = health
        .as_ref()
        .and_then(|h| h.as_ref().ok())
        .and_then(|h| serde_json::from_value(h["backends"].clone()).ok())
        .or(file_backends)
        .unwrap_or_default();
    let limit = info
        .as_ref()
        .and_then(|i| parse_time_limit(i.time_limit.as_deref()?))
        .map(std::time::Duration::from_secs);
    let chain = ChainStatus::read(
        &dir,
        &record.config_copy,
        info.as_ref().and_then(time_left),
        limit,
    );
    // `[slurm] idle_stop`: the job ended because nobody used it.
    let idle = llmgw_cluster::idle::IdleStop::read(&dir).filter(|i| i.job_id == record.job_id);
    let view = View {
        idle: idle.as_ref(),
        name: &name,
        dir: &dir,
        record: &record,
        chain: chain.as_ref(),
        info: info.as_ref(),
        endpoint: endpoint.as_ref().filter(|_| running),
        health: health.as_ref(),
        backends: &backends,
    };
    if args.json {
        println!("{}", view.json());
    } else {
        print!("{}", view.text());
    }
    Ok(ExitCode::SUCCESS)
}

/// `stopped: idle since … (no request for 60 s); saved so far ≈ 0.50 job-hours (1.00 GPU-hours)`.
fn idle_line(i: &llmgw_cluster::idle::IdleStop) -> String {
    let hours = i.hours_saved(llmgw_core::state::now_unix_ms());
    format!(
        "stopped: idle since {} — scaled to zero (no request for {} s, stopped at {}); saved so far ≈ {hours:.2} job-hours ({:.2} GPU-hours); the next request through `llmgw connect` with [slurm] on_demand = true, or `llmgw start`, starts it again",
        i.idle_since,
        i.idle_stop_secs,
        i.stopped_at,
        hours * i.gpus as f64
    )
}

/// Time limit minus elapsed, for a running job with a limit.
fn time_left(i: &JobInfo) -> Option<std::time::Duration> {
    if !i.is_running() {
        return None;
    }
    let limit = parse_time_limit(i.time_limit.as_deref()?)?;
    // Elapsed is M:SS, H:MM:SS or D-HH:MM:SS: the same shapes as a time limit.
    let elapsed = parse_time_limit(i.elapsed.as_deref()?)?;
    Some(std::time::Duration::from_secs(
        limit.saturating_sub(elapsed),
    ))
}

struct View<'a> {
    idle: Option<&'a llmgw_cluster::idle::IdleStop>,
    name: &'a str,
    dir: &'a Path,
    record: &'a JobRecord,
    chain: Option<&'a ChainStatus>,
    info: Option<&'a JobInfo>,
    endpoint: Option<&'a EndpointRecord>,
    health: Option<&'a Result<Value, String>>,
    backends: &'a [BackendStatus],
}

impl View<'_> {
    /// After "the gateway is not running": the chain (a successor may be on its way), the
    /// log, and how to start again.
    fn not_running_tail(&self, log: bool) -> String {
        let mut out = String::new();
        if let Some(i) = self.idle {
            out.push_str(&format!("  {}\n", idle_line(i)));
        }
        if let Some(c) = self.chain {
            out.push_str(&c.text());
        }
        if log {
            out.push_str(&format!("  log:   {}\n", self.record.log.display()));
        }
        if self.chain.is_none_or(|c| c.successor.is_none()) {
            out.push_str(&format!(
                "  start it again: llmgw start -c {}{}\n",
                self.record.config,
                name_flag(self.name)
            ));
        }
        out
    }

    fn urls(&self) -> Option<(String, String, String)> {
        let ep = self.endpoint?;
        let url = format!("http://{}:{}/v1", ep.host, ep.port);
        let cfg_login = llmgw_core::config::Config::load(&self.record.config_copy)
            .ok()
            .and_then(|c| c.config.slurm.login_host);
        let ssh = format!(
            "ssh -N -L {p}:{h}:{p} {}@{}",
            user_name(),
            login_host(cfg_login.as_deref()),
            p = ep.port,
            h = ep.host
        );
        Some((url, format!("http://localhost:{}/v1", ep.port), ssh))
    }

    fn gateway_state(&self) -> (String, Option<String>) {
        match (self.health, self.info) {
            (Some(Ok(h)), _) => (h["status"].as_str().unwrap_or("unknown").to_string(), None),
            (Some(Err(e)), _) => ("unreachable".into(), Some(e.clone())),
            (None, Some(i)) if i.is_running() => ("starting".into(), None),
            (None, Some(i)) if i.is_pending() => ("not started".into(), None),
            _ => ("not running".into(), None),
        }
    }

    /// A backend's queue, from its deployment in `/health` (`-` without one: the other
    /// ranks of a multi-node server, or no answer).
    fn queue_of(&self, b: &BackendStatus) -> String {
        let Some(Ok(h)) = self.health else {
            return "-".into();
        };
        let q = h["deployments"]
            .as_array()
            .and_then(|d| d.iter().find(|d| d["id"] == b.deployment.as_str()))
            .map(|d| &d["queue"]);
        match q {
            Some(q) if b.rank == 0 && q.is_object() => format!(
                "{} running, {} waiting",
                q["running"].as_u64().unwrap_or(0),
                q["waiting"].as_u64().unwrap_or(0)
            ),
            _ => "-".into(),
        }
    }

    fn json(&self) -> Value {
        let (gateway, gateway_error) = self.gateway_state();
        let urls = self.urls();
        let deployments = self
            .health
            .and_then(|h| h.as_ref().ok())
            .map(|h| h["deployments"].clone())
            .unwrap_or(Value::Null);
        let idle = self.idle.map(|i| {
            let hours = i.hours_saved(llmgw_core::state::now_unix_ms());
            json!({
                "idle_since": i.idle_since, "stopped_at": i.stopped_at,
                "idle_stop_secs": i.idle_stop_secs, "job_hours_saved": hours,
                "gpu_hours_saved": hours * i.gpus as f64, "gpus": i.gpus,
            })
        });
        json!({
            "idle_stop": idle,
            "name": self.name,
            "state_dir": self.dir,
            "job_id": self.record.job_id,
            "state": self.info.map_or("GONE", |i| i.state.as_str()),
            "running": self.info.is_some_and(JobInfo::is_running),
            "reason": self.info.and_then(|i| i.reason.clone()),
            "node": self.info.and_then(|i| i.node.clone()),
            "elapsed": self.info.and_then(|i| i.elapsed.clone()),
            "time_limit": self.info.and_then(|i| i.time_limit.clone()),
            "time_left": self.info.and_then(time_left).map(super::clock),
            "exit_code": self.info.and_then(|i| i.exit_code.clone()),
            "source": self.info.map(|i| i.source),
            "submitted_at": self.record.submitted_at,
            "config": self.record.config,
            "log": self.record.log,
            "port": self.endpoint.map(|e| e.port),
            "url": urls.as_ref().map(|u| u.0.clone()),
            "laptop_url": urls.as_ref().map(|u| u.1.clone()),
            "ssh": urls.as_ref().map(|u| u.2.clone()),
            "connect": super::connect_command(self.name, self.dir, None),
            "gateway": gateway,
            "gateway_error": gateway_error,
            "chain": self.chain.map(ChainStatus::json),
            "deployments": deployments,
            "backends": self.backends,
            "store": self.store(),
        })
    }

    fn text(&self) -> String {
        let mut out = String::new();
        let id = &self.record.job_id;
        let name = self.name;
        match self.info {
            None => {
                out.push_str(&format!(
                    "llmgw \"{name}\": job {id} is gone (SLURM no longer lists it); the gateway is not running\n"
                ));
                out.push_str(&self.not_running_tail(false));
                return out;
            }
            Some(i) if !i.is_active() => {
                out.push_str(&format!(
                    "llmgw \"{name}\": job {id} {} — the gateway is not running\n",
                    i.describe(),
                ));
                out.push_str(&self.not_running_tail(true));
                return out;
            }
            Some(i) => {
                let left = time_left(i)
                    .map(|d| format!(" ({} left)", super::clock(d)))
                    .unwrap_or_default();
                let time = match (&i.elapsed, &i.time_limit) {
                    (Some(e), Some(l)) if i.is_running() => format!(", {e} of {l}{left}"),
                    (Some(e), None) if i.is_running() => format!(", {e}"),
                    _ => String::new(),
                };
                out.push_str(&format!(
                    "llmgw \"{name}\": job {id} {}{time}\n",
                    i.describe()
                ));
            }
        }
        if let Some(c) = self.chain {
            out.push_str(&c.text());
        }
        if let Some((url, laptop, ssh)) = self.urls() {
            out.push_str(&format!("  url:      {url}\n"));
            out.push_str(&format!(
                "  connect:  {}  (one local address that follows the gateway across jobs; add --login USER@HOST on a laptop)\n",
                super::connect_command(name, self.dir, None)
            ));
            out.push_str(&format!("  laptop:   {ssh}  →  {laptop}\n"));
        }
        let (gateway, err) = self.gateway_state();
        match err {
            Some(e) => out.push_str(&format!("  gateway:  {gateway} ({e})\n")),
            None => out.push_str(&format!("  gateway:  {gateway}\n")),
        }
        if let Some(Ok(h)) = self.health {
            if let Some(deps) = h["deployments"].as_array() {
                out.push_str("  deployments:\n");
                if let Some(groups) = h["groups"].as_object() {
                    for (g, v) in groups {
                        let sp = &v["spillover"];
                        let (c, f) = (
                            sp["cloud"].as_u64().unwrap_or(0),
                            sp["fallback"].as_u64().unwrap_or(0),
                        );
                        if c + f > 0 {
                            out.push_str(&format!(
                                "    {g}: {c} requests spilled over to cloud deployments, {f} to fallbacks (local backends full)\n"
                            ));
                        }
                        let q = &v["queue"];
                        if let Some(waiting) = q["waiting"].as_u64() {
                            let cap = q["capacity"]
                                .as_u64()
                                .map_or("not known yet".to_string(), |c| c.to_string());
                            out.push_str(&format!(
                                "    {g}: queue {waiting} waiting, {} running of {cap} the local backends run at once\n",
                                q["in_flight"].as_u64().unwrap_or(0)
                            ));
                        }
                    }
                }
                for d in deps {
                    let mut state = d["state"].as_str().unwrap_or("?").to_string();
                    if let Some(left) = d["cooling_seconds_left"].as_u64() {
                        state.push_str(&format!(" ({left} s left)"));
                    }
                    out.push_str(&format!(
                        "    {:<24} {:<10} {:<12} {} requests, {} failures\n",
                        d["id"].as_str().unwrap_or("?"),
                        d["provider"].as_str().unwrap_or("?"),
                        state,
                        d["requests"].as_u64().unwrap_or(0),
                        d["failures"].as_u64().unwrap_or(0),
                    ));
                }
            }
        }
        if !self.backends.is_empty() {
            out.push_str(&format!(
                "  backends:\n    {:<24} {:<10} {:<8} {:<6} {:<11} {:<8} queue\n",
                "name", "node", "gpus", "port", "state", "restarts"
            ));
            for b in self.backends {
                let last = b
                    .last_error
                    .as_deref()
                    .map(|e| format!(" (last: {e})"))
                    .unwrap_or_default();
                let gpus = b.gpus.as_ref().map_or("-".to_string(), |g| g.join(","));
                out.push_str(&format!(
                    "    {:<24} {:<10} {:<8} {:<6} {:<11} {:<8} {}{last}\n",
                    b.name,
                    if b.node.is_empty() { "-" } else { &b.node },
                    gpus,
                    b.port,
                    b.state.as_str(),
                    b.restarts,
                    self.queue_of(b),
                ));
            }
        }
        out.push_str(&super::status_store::text(&self.store()));
        out.push_str(&format!("  log:      {}\n", self.record.log.display()));
        out
    }

    /// The store and the state filesystem (see `status_store`).
    fn store(&self) -> Value {
        let from_health = self
            .health
            .and_then(|h| h.as_ref().ok())
            .map(|h| &h["store"])
            .filter(|s| s.is_object());
        super::status_store::json(from_health, self.dir)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(state: &str, elapsed: &str, limit: &str) -> JobInfo {
        JobInfo {
            id: "1".into(),
            state: state.into(),
            reason: None,
            node: Some("n1".into()),
            elapsed: Some(elapsed.into()),
            time_limit: Some(limit.into()),
            exit_code: None,
            source: "squeue",
        }
    }

    #[test]
    fn time_left_from_squeue_fields() {
        let secs = |j: &JobInfo| time_left(j).map(|d| d.as_secs());
        assert_eq!(
            secs(&job("RUNNING", "0:41", "4:00:00")),
            Some(4 * 3600 - 41)
        );
        assert_eq!(
            secs(&job("RUNNING", "1-00:00:00", "2-00:00:00")),
            Some(86400)
        );
        assert_eq!(secs(&job("RUNNING", "0:41", "UNLIMITED")), None);
        assert_eq!(secs(&job("PENDING", "0:00", "4:00:00")), None);
    }
}
