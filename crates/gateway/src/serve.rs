//! `llmgw serve`: the gateway in the foreground.
//!
//! Binds (the configured port, or a free one when it is taken), serves the OpenAI API
//! through the [`Router`], reports readiness, writes `endpoint.json` when ready, and on
//! SIGTERM/SIGINT drains: stop accepting, readiness 503, let in-flight requests (streams
//! included) finish within the grace period, exit 0.

use crate::state::{models_body, AppState};
use anyhow::Context as _;
use clap::Args;
use llmgw_core::config::{Config, LoadedConfig, LogFormat, Secret};
use llmgw_core::state::{self, EndpointRecord};
use llmgw_router::Router;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// `llmgw serve`: the gateway in the foreground.
#[derive(Args, Debug, Clone)]
pub struct ServeArgs {
    /// Config file (TOML) [default: the built-in configs/quickstart.toml].
    #[arg(short, long, env = "LLMGW_CONFIG")]
    pub config: Option<PathBuf>,
    /// Override [server] host.
    #[arg(long)]
    pub host: Option<String>,
    /// Override [server] port (0 = any free port).
    #[arg(long)]
    pub port: Option<u16>,
    /// Write endpoint.json here once ready, and backend logs under it.
    #[arg(long, env = "LLMGW_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// Read the master key from this file (what `start` uses; keeps it off the command line).
    #[arg(long)]
    pub master_key_file: Option<PathBuf>,
}

/// `llmgw serve` entry: config, logs, runtime.
pub fn main(args: ServeArgs, log_format: Option<LogFormat>) -> anyhow::Result<ExitCode> {
    let cfg = match &args.config {
        Some(p) => Config::load(p)?,
        None => Config::quickstart()?,
    };
    let _log_guard = llmgw_core::logging::init(log_format.unwrap_or(cfg.config.server.log_format));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(run(args, cfg, CancellationToken::new()))?;
    Ok(ExitCode::SUCCESS)
}

/// A bound, not yet serving gateway; `run` drives it.
pub struct Bound {
    pub listener: tokio::net::TcpListener,
    pub addr: SocketAddr,
}

/// Binds `host:port`, or a free port on `host` when that one is taken.
pub async fn bind(host: &str, port: u16) -> anyhow::Result<Bound> {
    let ip: std::net::IpAddr = host.parse().with_context(|| {
        format!("[server] host {host:?} is not an IP address (use e.g. 127.0.0.1 or 0.0.0.0)")
    })?;
    let want = SocketAddr::new(ip, port);
    let listener = match tokio::net::TcpListener::bind(want).await {
        Ok(l) => l,
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && port != 0 => {
            let l = tokio::net::TcpListener::bind(SocketAddr::new(ip, 0))
                .await
                .with_context(|| format!("cannot bind {ip}:0"))?;
            tracing::warn!(
                wanted = port,
                port = l.local_addr()?.port(),
                "port {port} is taken on this node; using a free port instead"
            );
            l
        }
        Err(e) => return Err(e).with_context(|| format!("cannot listen on {want}")),
    };
    let addr = listener.local_addr()?;
    Ok(Bound { listener, addr })
}

/// How long closing the connections left at the end of the grace period may take.
const KILL_SETTLE: std::time::Duration = std::time::Duration::from_secs(3);
/// Longest the exit waits for the last spans to be exported (`[telemetry]`).
const TRACES_FLUSH: std::time::Duration = std::time::Duration::from_secs(2);

/// Runs the gateway until `shutdown` is cancelled or SIGTERM/SIGINT arrives.
pub async fn run(
    args: ServeArgs,
    mut cfg: LoadedConfig,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    // A copy: `cfg` changes below (replicas are written out).
    let server = &cfg.config.server.clone();
    let host = args.host.clone().unwrap_or_else(|| server.host.clone());
    let port = args.port.unwrap_or(server.port);
    let master_key = match &args.master_key_file {
        Some(path) => Some(read_key_file(path)?),
        None => cfg.master_key.clone(),
    };
    let loopback = host
        .parse::<std::net::IpAddr>()
        .map(|ip| ip.is_loopback())
        .unwrap_or(false);
    if !loopback && master_key.is_none() {
        anyhow::bail!(
            "refusing to listen on {host} without a master key: anyone on the network could use \
             your models and keys; set [server] master_key = \"env:LLMGW_MASTER_KEY\" (or use \
             --master-key-file), or listen on 127.0.0.1"
        );
    }
    // A SLURM job with a state directory is one generation of a chain of jobs (renewal,
    // handover: see renew.rs).
    let member = llmgw_cluster::renew::Member::join(
        args.state_dir.as_deref(),
        &cfg.config.slurm,
        server.shutdown_grace.0,
    )
    .map(Arc::new);
    // Before anything opens files: the default connection cap depends on the limit.
    let limits = crate::conn::Limits::from_config(server);
    // Local backends get their ports before the router is built (it needs their URLs).
    // Replicas are placed over the job's GPUs and nodes; `cfg` gets one entry each.
    let mut backends =
        llmgw_cluster::supervise::Backends::plan(&mut cfg, args.state_dir.as_deref()).await?;
    let monitor = backends.monitor();
    if let Some(m) = member.as_ref().filter(|m| m.is_successor()) {
        monitor.set_status_file(Some(m.loading_status_file()));
    }
    // …and their keys: a launched backend requires the one the gateway sends.
    for (i, key) in backends.api_keys() {
        cfg.model_keys[i] = Some(key);
    }
    let mut router = Router::new(&cfg, &backends.api_bases()).map_err(anyhow::Error::msg)?;
    if let Some(key) = &master_key {
        router.redact_also(key);
    }
    backends.attach(|index| {
        router.deployment_by_index(index).cloned().map(|d| {
            Arc::new(move |on: bool| d.available.store(on, Ordering::SeqCst))
                as llmgw_cluster::supervise::Availability
        })
    });
    // Local backends' queues, read every 250 ms for load-based and local-first routing.
    llmgw_router::load::Poller::spawn(
        router.deployments().cloned().collect(),
        router.gates(),
        shutdown.clone(),
    );
    // Connects to Redis when configured (starting anyway if it is down) and starts the
    // replicas' shared-state sync.
    let cache = crate::cache::Cache::start(&cfg, router.deployments().cloned().collect()).await?;
    let keys = match &master_key {
        Some(_) => {
            Some(crate::keys::KeyService::start(&cfg, args.state_dir.as_deref(), &router).await?)
        }
        None => None,
    };
    let store_watch = crate::retention::StoreWatch::spawn(
        keys.as_ref().map(|k| k.store().clone()),
        keys.as_ref().map(|k| k.spend.stats.clone()),
        cfg.config.store.retention.0,
        args.state_dir.clone().or_else(|| {
            let db = cfg.config.store.path.as_deref()?;
            db.parent().map(std::path::Path::to_path_buf)
        }),
        shutdown.clone(),
    );
    let bound = bind(&host, port).await?;
    let telemetry = crate::telemetry::Telemetry::start(&cfg, &router);
    let state = Arc::new(AppState {
        models_body: models_body(router.model_names()),
        router,
        master_key,
        max_body: server.max_body_bytes,
        request_timeout: server.request_timeout.0,
        ready: AtomicBool::new(false),
        draining: AtomicBool::new(false),
        backends: monitor.clone(),
        cache,
        keys,
        fairness: cfg.config.router.fairness,
        responses: crate::stored::Responses::new(
            &cfg,
            args.state_dir.as_deref(),
            server.max_body_bytes,
        ),
        batches: crate::batches::Batches::new(
            &cfg.config.batches,
            args.state_dir.as_deref(),
            server.max_body_bytes,
        ),
        store_watch,
        telemetry,
    });
    let relay = match &member {
        Some(_) => Some(crate::relay::Relay::new(server.max_body_bytes)?),
        None => None,
    };
    // Batches run in the background; they stop starting lines at shutdown, and while a
    // renewal hands over to the next generation (which then resumes them).
    let handing_over: crate::batch_runner::Stopping = match &relay {
        Some(r) => {
            let r = r.clone();
            Arc::new(move || r.handed_over())
        }
        None => Arc::new(|| false),
    };
    crate::batch_runner::spawn(state.clone(), handing_over);
    // `[[alerts]]`: the sink (before the backends start: a crash loop raises through it)
    // and the watcher of the conditions the gateway keeps.
    if crate::alerts::Alerts::start(&cfg, shutdown.clone()).is_some() {
        crate::alerts::watch::spawn(state.clone(), shutdown.clone());
    }
    {
        let (shutdown, batches) = (shutdown.clone(), state.batches.clone());
        tokio::spawn(async move {
            shutdown.cancelled().await;
            batches.stop.cancel();
        });
    }
    let mut app = crate::routes::app(state.clone());
    if let Some(r) = &relay {
        app = app.layer(axum::middleware::from_fn_with_state(
            r.clone(),
            crate::relay::relay,
        ));
    }
    let grace = server.shutdown_grace.0;

    spawn_signal_listener(shutdown.clone());
    // While this job relays to a successor (renewal), every request passes the relay layer.
    let hot = relay.is_none().then(|| state.clone());
    let kill = CancellationToken::new();
    let serve = crate::conn::serve(
        bound.listener,
        app,
        hot,
        limits,
        {
            let shutdown = shutdown.clone();
            let state = state.clone();
            async move {
                shutdown.cancelled().await;
                state.draining.store(true, Ordering::SeqCst);
                state.ready.store(false, Ordering::SeqCst);
                tracing::info!(grace = ?grace, "shutting down: no new connections; in-flight requests may finish");
            }
        },
        kill.clone(),
    );

    // Serve (readiness 503) while the local backends load; ready once each is ready or failed.
    let mut server = tokio::spawn(serve);
    // A chain member keeps its time limit from now on, not only once it is current: a job
    // that never gets ready still drains before its limit (COMPLETED, not TIMEOUT).
    if let Some(m) = &member {
        tokio::spawn(m.clone().watch_until_published(shutdown.clone()));
    }
    backends.start()?;
    tokio::select! {
        r = backends.settled() => if let Err(e) = r {
            backends.shutdown().await;
            if let Some(m) = &member {
                m.note_end(format!("its backends failed before it was ready: {e}"));
                m.finish(None);
            }
            return Err(e.into());
        },
        _ = shutdown.cancelled() => {}
    }
    state
        .ready
        .store(!shutdown.is_cancelled(), Ordering::SeqCst);
    let record = match &args.state_dir {
        Some(_) if shutdown.is_cancelled() => None,
        Some(dir) => {
            state::ensure_dir(dir)
                .with_context(|| format!("cannot create state directory {}", dir.display()))?;
            let rec = EndpointRecord {
                host: llmgw_core::host::node_hostname(),
                bind: bound.addr.ip().to_string(),
                port: bound.addr.port(),
                pid: std::process::id(),
                job_id: std::env::var("SLURM_JOB_ID").ok(),
                started_at: state::now_rfc3339(),
                generation: 1,
                predecessor_job_id: None,
                ready_unix_ms: state::now_unix_ms(),
            };
            match &member {
                Some(m) => publish(m, rec, &monitor, dir, &shutdown),
                None => rec.write(dir).with_context(|| {
                    format!("cannot write {}", dir.join(state::ENDPOINT_FILE).display())
                })?,
            }
            Some(dir.clone())
        }
        None => None,
    };
    let backends: llmgw_cluster::renew::SharedBackends =
        Arc::new(tokio::sync::Mutex::new(Some(backends)));
    if let (Some(m), Some(r), false) = (&member, &relay, shutdown.is_cancelled()) {
        tokio::spawn(m.clone().watch(
            r.clone() as Arc<dyn llmgw_cluster::renew::Forwarding>,
            backends.clone(),
            shutdown.clone(),
        ));
    }
    // `[slurm] idle_stop`: a current job that nobody uses ends its chain and frees its GPUs.
    if let Some(m) = member.as_ref().filter(|m| m.stops_when_idle()) {
        if !shutdown.is_cancelled() {
            let s = state.clone();
            let in_flight: llmgw_cluster::renew::InFlight = Arc::new(move || {
                s.router
                    .deployments()
                    .map(|d| d.stats.in_flight.load(Ordering::Relaxed))
                    .sum()
            });
            tokio::spawn(m.clone().watch_idle(in_flight, shutdown.clone()));
        }
    }
    tracing::info!(
        addr = %bound.addr,
        models = ?state.router.model_names(),
        config = %cfg.source_name,
        "llmgw ready on http://{}/v1",
        bound.addr
    );
    if let Some(hint) = cfg.unreachable_hint {
        tracing::warn!("no config given (-c): {hint}");
    }

    let grace_timer = {
        let shutdown = shutdown.clone();
        async move {
            shutdown.cancelled().await;
            tokio::time::sleep(grace).await;
        }
    };
    let result = tokio::select! {
        r = &mut server => r.context("server task failed"),
        _ = grace_timer => {
            let left: u64 = state.router.deployments().map(|d| d.stats.in_flight.load(Ordering::Relaxed)).sum();
            tracing::warn!(in_flight = left, "grace period over; closing remaining connections");
            // Cut what is still open, so each cut request records its spend row before
            // the writer's last flush; bounded in case a connection does not end.
            kill.cancel();
            let _ = tokio::time::timeout(KILL_SETTLE, &mut server).await;
            Ok(())
        }
    };
    // Batch lines in flight finish (and are recorded) before the backends stop.
    state.batches.stop.cancel();
    state.batches.tasks.close();
    if tokio::time::timeout(grace, state.batches.tasks.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            "grace period over with batch lines in flight; the next start runs them again"
        );
    }
    let left = backends.lock().await.take();
    if let Some(b) = left {
        b.shutdown().await;
    }
    if let Some(keys) = &state.keys {
        keys.shutdown().await; // writes the spend rows it still holds
    }
    if let Some(t) = &state.telemetry {
        // The last requests' spans, bounded: an endpoint that is down delays exit little.
        t.flush(TRACES_FLUSH).await;
    }
    match (&member, record) {
        (Some(m), _) => m.finish(
            relay
                .as_deref()
                .map(|r| r as &dyn llmgw_cluster::renew::Forwarding),
        ),
        (None, Some(dir)) => {
            let _ = std::fs::remove_file(dir.join(state::ENDPOINT_FILE));
        }
        (None, None) => {}
    }
    tracing::info!("stopped");
    result
}

/// Makes a chain member the current generation; when it may not (the gateway is being
/// stopped, or a newer generation is current) it shuts down instead.
fn publish(
    m: &llmgw_cluster::renew::Member,
    rec: EndpointRecord,
    monitor: &llmgw_cluster::supervise::Monitor,
    dir: &std::path::Path,
    shutdown: &CancellationToken,
) {
    match m.publish(rec) {
        Ok(()) => {
            if m.is_successor() {
                monitor.set_status_file(Some(dir.join(llmgw_cluster::supervise::BACKENDS_FILE)));
                let _ = std::fs::remove_file(m.loading_status_file());
            }
            tracing::info!(
                generation = m.generation(),
                "this job is now the gateway's current generation"
            );
        }
        Err(e) => {
            tracing::warn!(error = %e, "not taking over: {e}; exiting");
            m.note_end(format!("did not take over: {e}"));
            shutdown.cancel();
        }
    }
}

fn read_key_file(path: &PathBuf) -> anyhow::Result<Secret> {
    let key = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read master key file {}", path.display()))?;
    let key = key.trim();
    if key.is_empty() {
        anyhow::bail!("master key file {} is empty", path.display());
    }
    Ok(Secret::new(key))
}

fn spawn_signal_listener(shutdown: CancellationToken) {
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            tracing::error!("cannot install signal handlers");
            return;
        };
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received"),
            _ = int.recv() => tracing::info!("SIGINT received"),
            _ = shutdown.cancelled() => return,
        }
        shutdown.cancel();
    });
}
