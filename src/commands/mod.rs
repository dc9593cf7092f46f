//! The SLURM launcher's commands: `start`, `status`, `logs`, `stop`, and `doctor` (what a
//! first `start` needs). They run on a login node, talk to SLURM through [`llmgw_cluster::slurm`]
//! and to the running gateway over HTTP, and share what they know through the state
//! directory (`job.json`, `endpoint.json`, `backends.json`, the key, the logs).
//!
//! This is the CLI edge: errors are `anyhow`, each one line saying what to do.

pub mod alerts;
pub mod batches;
pub mod chain_status;
pub mod connect;
pub mod doctor;
pub mod keys;
pub mod logs;
pub mod restart;
pub mod spend;
pub mod start;
pub mod status;
pub mod status_store;
pub mod stop;
pub mod users;

use crate::args::Target;
use anyhow::Context as _;
use llmgw_core::config::{Config, Secret};
use llmgw_core::state::{self, EndpointRecord};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The gateway's name, checked (it becomes a directory name), and its state directory
/// as an absolute path.
pub fn target_dir(t: &Target) -> anyhow::Result<(String, PathBuf)> {
    let name = t.name.trim();
    let ok = !name.is_empty()
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
    if !ok {
        anyhow::bail!(
            "invalid gateway name {name:?}: use letters, digits, '.', '_' and '-' (e.g. --name qwen-small)"
        );
    }
    let dir = state::state_dir(name, t.state_dir.as_deref());
    let dir = std::path::absolute(&dir)
        .with_context(|| format!("cannot resolve the state directory {}", dir.display()))?;
    Ok((name.to_string(), dir))
}

/// The API key clients use: `start`'s generated key file, else the config's master key.
pub fn api_key(dir: &Path) -> Option<Secret> {
    if let Ok(k) = std::fs::read_to_string(dir.join(state::KEY_FILE)) {
        let k = k.trim();
        if !k.is_empty() {
            return Some(Secret::new(k));
        }
    }
    let copy = dir.join(llmgw_cluster::slurm::CONFIG_FILE);
    Config::load(&copy).ok().and_then(|c| c.master_key)
}

/// ` --name X` unless it is the default name (for commands a user copies).
pub fn name_flag(name: &str) -> String {
    if name == "default" {
        String::new()
    } else {
        format!(" --name {name}")
    }
}

/// The `llmgw connect` line for this gateway (`--state-dir` only when it is not the
/// default, `--login` when run elsewhere).
pub fn connect_command(name: &str, dir: &Path, login: Option<&str>) -> String {
    let mut cmd = format!("llmgw connect{}", name_flag(name));
    if dir != state::state_dir(name, None) {
        cmd.push_str(&format!(" --state-dir {}", tilde(dir)));
    }
    if let Some(l) = login {
        cmd.push_str(&format!(" --login {l}"));
    }
    cmd
}

/// A small HTTP client for talking to the gateway (no proxies: it is on the cluster).
pub fn http_client() -> anyhow::Result<reqwest::Client> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .timeout(Duration::from_secs(3))
        .connect_timeout(Duration::from_secs(2))
        .no_proxy()
        .build()
        .context("cannot build an HTTP client")
}

/// A single-threaded runtime for the commands' HTTP calls and timers.
pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// `GET /health/readiness`: true when the gateway answers 200.
pub async fn is_ready(client: &reqwest::Client, ep: &EndpointRecord) -> bool {
    match client
        .get(format!("{}/health/readiness", ep.base_url()))
        .send()
        .await
    {
        Ok(r) => r.status().is_success(),
        Err(_) => false,
    }
}

/// `GET /health` with the key: the gateway's own view of its deployments and backends.
pub async fn health(
    client: &reqwest::Client,
    ep: &EndpointRecord,
    key: Option<&Secret>,
) -> Result<serde_json::Value, String> {
    let mut req = client.get(format!("{}/health", ep.base_url()));
    if let Some(k) = key {
        req = req.bearer_auth(k.expose());
    }
    let resp = req
        .send()
        .await
        .map_err(|e| format!("unreachable at {} ({})", ep.base_url(), short_error(&e)))?;
    let status = resp.status();
    let body = resp.bytes().await.map_err(|e| short_error(&e))?;
    if !status.is_success() {
        return Err(format!("/health answered {status}"));
    }
    serde_json::from_slice(&body).map_err(|e| format!("/health answered something else: {e}"))
}

fn short_error(e: &reqwest::Error) -> &'static str {
    if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "connection refused"
    } else {
        "request failed"
    }
}

/// The last `n` lines of a file (empty when it cannot be read).
pub fn tail_lines(path: &Path, n: usize) -> Vec<String> {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut f) = std::fs::File::open(path) else {
        return Vec::new();
    };
    // Read at most the last 256 KiB: enough for any sensible `n`.
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let from = len.saturating_sub(256 * 1024);
    if f.seek(SeekFrom::Start(from)).is_err() {
        return Vec::new();
    }
    let mut buf = Vec::new();
    if f.read_to_end(&mut buf).is_err() {
        return Vec::new();
    }
    let text = String::from_utf8_lossy(&buf);
    let lines: Vec<&str> = text.lines().collect();
    let skip = lines.len().saturating_sub(n);
    lines[skip..].iter().map(|l| l.to_string()).collect()
}

/// `path` with `$HOME` written as `~`, for lines a user copies.
pub fn tilde(path: &Path) -> String {
    if let Some(home) = std::env::var_os("HOME").map(PathBuf::from) {
        if let Ok(rest) = path.strip_prefix(&home) {
            if !home.as_os_str().is_empty() && home != Path::new("/") {
                return format!("~/{}", rest.display());
            }
        }
    }
    path.display().to_string()
}

/// The host name users ssh to: `[slurm] login_host`, else `SLURM_SUBMIT_HOST`, else this
/// machine's fully qualified name.
pub fn login_host(configured: Option<&str>) -> String {
    login_host_from(configured).0
}

/// [`login_host`] and where it came from (for `llmgw doctor`).
pub fn login_host_from(configured: Option<&str>) -> (String, &'static str) {
    if let Some(h) = configured.filter(|h| !h.trim().is_empty()) {
        return (h.trim().to_string(), "[slurm] login_host");
    }
    if let Ok(h) = std::env::var("SLURM_SUBMIT_HOST") {
        if !h.trim().is_empty() {
            return (h.trim().to_string(), "SLURM_SUBMIT_HOST");
        }
    }
    if let Ok(out) = std::process::Command::new("hostname").arg("-f").output() {
        let h = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if out.status.success() && !h.is_empty() {
            return (h, "`hostname -f`");
        }
    }
    (
        llmgw_core::host::node_hostname(),
        "this machine's host name",
    )
}

/// The user name for the ssh line.
pub fn user_name() -> String {
    std::env::var("USER")
        .ok()
        .filter(|u| !u.is_empty())
        .or_else(|| {
            nix::unistd::User::from_uid(nix::unistd::getuid())
                .ok()
                .flatten()
                .map(|u| u.name)
        })
        .unwrap_or_else(|| "you".into())
}

/// Formats seconds as `m:ss` or `h:mm:ss`.
pub fn clock(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 3600 {
        format!("{}:{:02}:{:02}", s / 3600, (s / 60) % 60, s % 60)
    } else {
        format!("{}:{:02}", s / 60, s % 60)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        let t = |n: &str| Target {
            name: n.into(),
            state_dir: Some("/tmp/x".into()),
        };
        assert!(target_dir(&t("qwen-small.2")).is_ok());
        assert!(target_dir(&t("../etc")).is_err());
        assert!(target_dir(&t("a b")).is_err());
        assert!(target_dir(&t("")).is_err());
    }

    #[test]
    fn clocks() {
        assert_eq!(clock(Duration::from_secs(41)), "0:41");
        assert_eq!(clock(Duration::from_secs(3723)), "1:02:03");
    }

    #[test]
    fn tails() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("l");
        std::fs::write(&p, "a\nb\nc\n").unwrap();
        assert_eq!(tail_lines(&p, 2), vec!["b", "c"]);
        assert_eq!(tail_lines(&p, 10).len(), 3);
        assert!(tail_lines(&dir.path().join("none"), 3).is_empty());
    }
}
