//! Spill while pending (`[slurm] spill_while_pending`, on by default when possible): while
//! an on-demand start waits for SLURM, `connect` runs a gateway of its own, in process,
//! over the cloud part of the config, and held connections go there at once instead of
//! waiting. Once the job is ready new connections go to it again, and this gateway drains
//! (requests it took finish) and stops.
//!
//! Why an in-process gateway: it is the same code as `serve` (every API, keys, streaming,
//! retries, spend), so a spilled request is answered exactly as the job would answer it
//! from the cloud; `connect` still only forwards bytes. It is possible only where
//! `connect` reads the config and its secrets (the login node), and only when every group
//! with local backends also has a cloud route — its own cloud deployments, or a fallback to
//! a cloud group (served under the group's own name) — since `connect` does not read which
//! model a request asks for: a request it spilled must never get a 404 the job would not
//! give.
//!
//! Keys and spend: the spill gateway opens the same store as the job (`[store] url`, or
//! the state directory's SQLite file, which no running job writes while the job pends).

use llmgw_core::config::{LoadedConfig, ProviderKind};
use std::collections::BTreeSet;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// A running spill gateway on loopback.
pub struct Spill {
    pub port: u16,
    ready: AtomicBool,
    shutdown: CancellationToken,
}

impl Spill {
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }

    /// Drains (its requests finish within the grace period) and stops.
    pub fn stop(&self) {
        self.ready.store(false, Ordering::SeqCst);
        self.shutdown.cancel();
    }

    /// Starts a gateway over `cloud` on a free loopback port; `on_ready` runs once it
    /// answers ready.
    pub fn start(
        cloud: LoadedConfig,
        dir: &Path,
        on_ready: impl FnOnce() + Send + 'static,
    ) -> std::io::Result<Arc<Spill>> {
        // A free port now (the gateway takes another, unknown here, if it is taken in the
        // meantime: then nothing answers and held requests simply wait for the job).
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let key_file = dir.join(llmgw_core::state::KEY_FILE);
        let args = llmgw_gateway::serve::ServeArgs {
            config: None,
            host: Some("127.0.0.1".into()),
            port: Some(port),
            state_dir: None,
            master_key_file: key_file.exists().then_some(key_file),
        };
        let spill = Arc::new(Spill {
            port,
            ready: AtomicBool::new(false),
            shutdown: CancellationToken::new(),
        });
        let token = spill.shutdown.clone();
        tokio::spawn(async move {
            if let Err(e) = llmgw_gateway::serve::run(args, cloud, token).await {
                eprintln!("llmgw connect: the spill gateway stopped: {e:#}");
            }
        });
        let me = spill.clone();
        tokio::spawn(async move {
            let Ok(client) = super::super::http_client() else {
                return;
            };
            let url = format!("http://127.0.0.1:{port}/health/readiness");
            while !me.shutdown.is_cancelled() {
                if client
                    .get(&url)
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success())
                {
                    me.ready.store(true, Ordering::SeqCst);
                    on_ready();
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        Ok(spill)
    }
}

/// A deployment the job runs (launched, or an SGLang server): not reachable while it pends.
fn is_local(m: &llmgw_core::config::ModelConfig) -> bool {
    m.launch.is_some() || m.provider == ProviderKind::Sglang
}

/// The cloud part of `cfg` for the spill gateway, or why there is none: each group with
/// local deployments must keep a cloud deployment, or fall back (its `fallbacks`, else
/// `default_fallbacks`) to a group that has one, whose deployments then serve under its
/// name.
pub fn cloud_config(cfg: &LoadedConfig, dir: &Path) -> Result<LoadedConfig, String> {
    let models = &cfg.config.models;
    let cloud_groups: BTreeSet<&str> = models
        .iter()
        .filter(|m| !is_local(m))
        .map(|m| m.name.get_ref().as_str())
        .collect();
    if cloud_groups.is_empty() {
        return Err("the config has no cloud deployments".into());
    }
    let mut out = cfg.clone();
    let mut kept = Vec::new();
    let mut keys = Vec::new();
    for (i, m) in models.iter().enumerate() {
        if !is_local(m) {
            kept.push(m.clone());
            keys.push(cfg.model_keys.get(i).cloned().flatten());
        }
    }
    let local_only: BTreeSet<&str> = models
        .iter()
        .filter(|m| is_local(m))
        .map(|m| m.name.get_ref().as_str())
        .filter(|g| !cloud_groups.contains(g))
        .collect();
    let r = &cfg.config.router;
    for g in local_only {
        let targets = r.fallbacks.get(g).unwrap_or(&r.default_fallbacks);
        let Some(to) = targets.iter().find(|t| cloud_groups.contains(t.as_str())) else {
            return Err(format!(
                "group {g:?} has only local deployments and no fallback to a cloud group"
            ));
        };
        for (i, m) in models.iter().enumerate() {
            if !is_local(m) && m.name.get_ref() == to {
                let mut alias = m.clone();
                alias.name = toml::Spanned::new(m.name.span(), g.to_string());
                alias.id = Some(format!("{}-spill-{g}", m.id.as_deref().unwrap_or(to)));
                kept.push(alias);
                keys.push(cfg.model_keys.get(i).cloned().flatten());
            }
        }
    }
    out.config.models = kept;
    out.model_keys = keys;
    let have: BTreeSet<String> = out
        .config
        .models
        .iter()
        .map(|m| m.name.get_ref().clone())
        .collect();
    let keep = |v: &Vec<String>| -> Vec<String> {
        v.iter().filter(|t| have.contains(*t)).cloned().collect()
    };
    let rc = &mut out.config.router;
    rc.fallbacks = rc
        .fallbacks
        .iter()
        .filter(|(k, _)| have.contains(*k))
        .map(|(k, v)| (k.clone(), keep(v)))
        .collect();
    rc.context_window_fallbacks = rc
        .context_window_fallbacks
        .iter()
        .filter(|(k, _)| have.contains(*k))
        .map(|(k, v)| (k.clone(), keep(v)))
        .collect();
    rc.default_fallbacks = keep(&rc.default_fallbacks);
    // The job's own store: keys, budgets and spend are the same while spilling.
    if out.store_url.is_none() && out.config.store.path.is_none() {
        out.config.store.path = Some(dir.join(llmgw_gateway::keys::service::DB_FILE));
    }
    out.config.slurm = Default::default();
    Ok(out)
}
