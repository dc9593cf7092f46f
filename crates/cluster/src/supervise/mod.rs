//! Model servers that `serve` launches and supervises: every `[[models]]` entry with a
//! `launch` table (SGLang by default, or any `command`), times its `replicas`, over the
//! job's GPUs and nodes.
//!
//! [`Backends::plan`] places every replica (`placement`), starts a node agent on each
//! other node of a multi-node job (`agent`), and turns each placed replica into a
//! [`BackendSpec`]. This node's backends are run here; the others by their node's agent,
//! which runs this same code there. Each backend gets a free port (loopback here, the
//! node's address elsewhere), its own process group (so the whole tree — SGLang's
//! scheduler and detokenizer processes included — is signalled at once), its GPUs in
//! `CUDA_VISIBLE_DEVICES`, a log file `<state>/backends/<name>.log`, and a supervisor task
//! that polls `/health` and `/v1/models` until the backend answers (up to
//! `load_timeout`), marks the router's deployment available, and on exit marks it
//! unavailable and restarts it with exponential backoff. Its state is kept for `/health`
//! and written to `<state>/backends.json` for `llmgw start` and `llmgw status`.
//!
//! A backend listens where others can reach it, so each one gets its own random API key,
//! which the gateway sends as its deployment's key (`Authorization: Bearer`). SGLang
//! reads it from a 0600 `--config` YAML file in a private temporary directory (an
//! `--api-key` argument would show in `ps`); a `command` gets it in
//! `LLMGW_BACKEND_API_KEY`. A backend's environment is its `env` plus an allow-list of
//! the gateway's ([`ENV_ALLOW`]: paths, locale, CUDA/SLURM/HF/NCCL, …), never the master
//! or provider keys. It dies with the gateway (`PR_SET_PDEATHSIG`), so a SIGKILLed `serve`
//! leaves no backend holding GPUs.
//!
//! Depends on the config and `placement`; the router's deployments are reached only
//! through the [`Availability`] switch the gateway hands to [`Backends::attach`]; it
//! never depends on the gateway.

mod crash;
mod process;
mod status;
pub use process::*;
pub use status::*;

use llmgw_core::config::{LaunchConfig, LoadedConfig, Secret};
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

pub mod agent;

/// Turns a launched backend's deployment on or off in the router (false while the backend
/// loads, restarts or has failed). The gateway makes one per deployment.
pub type Availability = Arc<dyn Fn(bool) + Send + Sync>;

/// Backend states and pids, rewritten on every change.
pub const BACKENDS_FILE: &str = "backends.json";

/// Backend logs live in this subdirectory of the state directory.
pub const BACKENDS_DIR: &str = "backends";

/// Exits before the first successful start after which a backend counts as failed.
const FAILED_AFTER: u32 = 3;

/// Restart delays: 1 s, 2 s, 4 s, … up to this.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// A backend that ran at least this long before exiting restarts with the shortest delay.
const STABLE_AFTER: Duration = Duration::from_secs(60);

/// SIGTERM to SIGKILL when stopping a backend's process group.
pub const KILL_GRACE: Duration = Duration::from_secs(10);

const POLL: Duration = Duration::from_millis(200);

/// The environment variable a `command` backend finds its API key in.
pub const KEY_ENV: &str = "LLMGW_BACKEND_API_KEY";

/// What a backend inherits from the gateway's environment, besides its `env`: names, and
/// prefixes (ending in `_`) — what a model server needs to find its software, GPUs,
/// caches and network, not the gateway's secrets.
#[rustfmt::skip]
pub const ENV_ALLOW: &[&str] = &[
    "PATH", "HOME", "USER", "LOGNAME", "SHELL", "LANG", "LANGUAGE", "TZ", "TMPDIR", "TERM",
    "HOSTNAME", "LD_LIBRARY_PATH", "LIBRARY_PATH", "CPATH", "CC", "CXX", "PYTHONPATH",
    "PYTHONHOME", "PYTHONUNBUFFERED", "PYTHONUSERBASE", "VIRTUAL_ENV", "MODULEPATH",
    "LOADEDMODULES", "GPU_DEVICE_ORDINAL", "MASTER_ADDR", "MASTER_PORT", "http_proxy",
    "https_proxy", "no_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY",
    "ALL_PROXY", "SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "LC_",
    "XDG_", "CUDA_", "NVIDIA_", "NCCL_", "SLURM_", "HF_", "HUGGINGFACE_", "TRANSFORMERS_",
    "TORCH_", "PYTORCH_", "TRITON_", "SGLANG_", "FLASHINFER_", "CONDA_", "OMP_", "MKL_", "KMP_",
    "ROCR_", "HIP_", "ROCM_", "UCX_", "OMPI_", "PMIX_", "GLOO_", "TOKENIZERS_", "VLLM_",
];

/// A backend that could not be launched at all.
#[derive(Debug, thiserror::Error)]
pub enum SuperviseError {
    #[error("model {name:?}: launch needs model_path (or a command)")]
    NoModelPath { name: String },
    #[error("model {name:?}: launch.command is empty")]
    EmptyCommand { name: String },
    #[error("model {name:?}: launch.args must not set {arg}: llmgw gives each SGLang backend its own API key in a private --config file (on the command line it would show in ps){more}")]
    ReservedArg {
        name: String,
        arg: &'static str,
        more: &'static str,
    },
    #[error("cannot write the key of backend {name:?}: {source}")]
    Key {
        name: String,
        source: std::io::Error,
    },
    #[error("cannot find a free port for backend {name:?}: {source}")]
    Port {
        name: String,
        source: std::io::Error,
    },
    #[error("cannot open the log of backend {name:?} at {path}: {source}")]
    Log {
        name: String,
        path: String,
        source: std::io::Error,
    },
    #[error("cannot start backend {name:?} ({program}): {source}; check launch.command (or that python with sglang is on PATH in the job's setup)")]
    Spawn {
        name: String,
        program: String,
        source: std::io::Error,
    },
    #[error("every launched backend failed and no other deployment is configured: {details}; see the backend logs")]
    AllFailed { details: String },
    #[error(transparent)]
    Placement(#[from] crate::placement::PlacementError),
    #[error("node agent on {node}: {why}")]
    Agent { node: String, why: String },
}

/// One backend as the gateway decided it: what to run, where, with which GPUs. It is
/// also what a node agent receives (over its stdin, never a command line or a file), so
/// it carries the backend's key.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BackendSpec {
    /// File-safe and unique: its log is `<state>/backends/<name>.log`.
    pub name: String,
    pub group: String,
    /// The deployment it serves (rank 0's for every rank of a multi-node server).
    pub deployment: String,
    /// Its entry in the expanded config (`placement::expand`).
    pub index: usize,
    pub replica: u32,
    pub rank: u32,
    pub nnodes: u32,
    /// The node it runs on.
    pub node: String,
    pub gpus: Option<Vec<String>>,
    pub model_path: Option<String>,
    pub tp: u32,
    pub args: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub command: Option<Vec<String>>,
    pub load_timeout_ms: u64,
    #[serde(with = "wire_secret")]
    pub key: Secret,
    pub log: Option<PathBuf>,
    /// Rank 0's `host:port` for the multi-node rendezvous (`--dist-init-addr`); picked on
    /// rank 0's node, kept across restarts.
    pub dist_init_addr: Option<String>,
    /// The port it listens on, once picked on its node (kept across restarts).
    pub port: Option<u16>,
}

/// A [`Secret`] on the wire to a node agent: its plain value (the pipe is private).
mod wire_secret {
    use llmgw_core::config::Secret;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(k: &Secret, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(k.expose())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Secret, D::Error> {
        String::deserialize(d).map(Secret::new)
    }
}

impl BackendSpec {
    /// A single backend for `launch` outside any placement (`llmgw doctor`).
    pub fn from_launch(name: &str, launch: &LaunchConfig) -> Self {
        BackendSpec {
            name: name.to_string(),
            group: name.to_string(),
            deployment: name.to_string(),
            index: 0,
            replica: 1,
            rank: 0,
            nnodes: launch.nnodes,
            node: String::new(),
            gpus: None,
            model_path: launch.model_path.clone(),
            tp: launch.tp,
            args: launch.args.clone(),
            env: launch.env.clone(),
            command: launch.command.clone(),
            load_timeout_ms: u64::try_from(launch.load_timeout.0.as_millis()).unwrap_or(u64::MAX),
            key: Secret::new(""),
            log: None,
            dist_init_addr: None,
            port: None,
        }
    }

    /// Rank 0 of a multi-node server needs a rendezvous port on its node.
    fn needs_rendezvous(&self) -> bool {
        self.nnodes > 1 && self.rank == 0 && self.dist_init_addr.is_none()
    }

    fn status(&self, host: &str) -> BackendStatus {
        BackendStatus {
            name: self.name.clone(),
            model: self.group.clone(),
            index: self.index,
            state: BackendState::Loading,
            pid: None,
            port: self.port.unwrap_or(0),
            restarts: 0,
            last_error: None,
            log: self.log.clone(),
            deployment: self.deployment.clone(),
            node: self.node.clone(),
            host: host.to_string(),
            gpus: self.gpus.clone(),
            replica: self.replica,
            rank: self.rank,
        }
    }
}

/// One backend ready to run on this node.
pub(crate) struct Plan {
    name: String,
    port: u16,
    /// Where it listens: loopback on the gateway's node, the node's address elsewhere.
    host: String,
    program: String,
    args: Vec<String>,
    /// The whole environment it starts with.
    env: Vec<(OsString, OsString)>,
    log: Option<PathBuf>,
    load_timeout: Duration,
    /// Its API key: the gateway sends it, the backend requires it.
    key: Secret,
    /// Ready means answering `/health` and `/v1/models`; a multi-node server's other
    /// ranks serve no HTTP: ready once started.
    probe: bool,
}

/// Turns specs into plans on one node: ports, command lines, key files.
pub(crate) struct Planner {
    /// Loopback for the gateway's own node; the node's address on other nodes.
    host: String,
    /// The node's address, for a multi-node rendezvous.
    node_addr: String,
    llmgw: String,
    inherited: Vec<(OsString, OsString)>,
    /// Holds the SGLang backends' key files while they run.
    private: Option<PrivateDir>,
}

impl Planner {
    pub(crate) fn new(host: &str, node_addr: &str, inherited: Vec<(OsString, OsString)>) -> Self {
        Planner {
            host: host.to_string(),
            node_addr: node_addr.to_string(),
            llmgw: std::env::current_exe()
                .map(|p| p.display().to_string())
                .unwrap_or_else(|_| "llmgw".into()),
            inherited,
            private: None,
        }
    }

    /// Picks its port (and a rank 0's rendezvous port) unless the spec has them, and
    /// builds its command line, environment and key file.
    pub(crate) fn plan(&mut self, spec: &mut BackendSpec) -> Result<Plan, SuperviseError> {
        let port_err = |source| SuperviseError::Port {
            name: spec.name.clone(),
            source,
        };
        let port = match spec.port {
            Some(p) => p,
            None => free_port(&self.host).map_err(port_err)?,
        };
        spec.port = Some(port);
        if spec.needs_rendezvous() {
            let p = free_port(&self.node_addr).map_err(port_err)?;
            spec.dist_init_addr = Some(format!("{}:{p}", url_host(&self.node_addr)));
        }
        let key_err = |source| SuperviseError::Key {
            name: spec.name.clone(),
            source,
        };
        let mut argv = spec_command_line(spec, &self.host, port, &self.llmgw)?;
        let mut env = self.inherited.clone();
        env.extend(
            spec.env
                .iter()
                .map(|(k, v)| (OsString::from(k), OsString::from(v))),
        );
        if let Some(gpus) = &spec.gpus {
            env.push(("CUDA_VISIBLE_DEVICES".into(), gpus.join(",").into()));
        }
        if spec.command.is_some() {
            // Last: the key the gateway sends is the one the backend is given.
            env.push((KEY_ENV.into(), spec.key.expose().into()));
        } else {
            let dir = match &self.private {
                Some(d) => d,
                None => self.private.insert(PrivateDir::create().map_err(key_err)?),
            };
            let file = dir.0.join(format!("{}.yaml", spec.name));
            let yaml = sglang_config_yaml(spec).map_err(|e| key_err(e.into()))?;
            llmgw_core::state::write_atomic(&file, yaml.as_bytes(), 0o600).map_err(key_err)?;
            argv.extend(["--config".to_string(), file.display().to_string()]);
        }
        let program = argv.remove(0);
        Ok(Plan {
            name: spec.name.clone(),
            port,
            host: self.host.clone(),
            program,
            args: argv,
            env,
            log: spec.log.clone(),
            load_timeout: Duration::from_millis(spec.load_timeout_ms),
            key: spec.key.clone(),
            probe: spec.rank == 0,
        })
    }
}

/// A private (0700) directory on the node's temporary space for the SGLang backends'
/// config files (they hold the keys); removed with the backends.
struct PrivateDir(PathBuf);

impl PrivateDir {
    fn create() -> std::io::Result<Self> {
        use std::os::unix::fs::DirBuilderExt;
        let base = std::env::temp_dir();
        loop {
            let p = base.join(format!(
                "llmgw-backends-{}-{:08x}",
                std::process::id(),
                fastrand::u32(..)
            ));
            // Never an existing directory: one someone else made could be read by them.
            match std::fs::DirBuilder::new().mode(0o700).create(&p) {
                Ok(()) => return Ok(PrivateDir(p)),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
        }
    }
}

impl Drop for PrivateDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Every backend the job launches, on this node and (through node agents) on the job's
/// other nodes: placed and planned (ports picked) before the router is built, started
/// after, stopped last.
pub struct Backends {
    /// Every backend; a backend's position here is its position in the status list.
    specs: Vec<BackendSpec>,
    /// This node's backends, by status position; taken by `start`.
    plans: Vec<(usize, Plan)>,
    /// The other nodes' agents, taken by `start`.
    remotes: Vec<self::agent::Remote>,
    shared: Arc<Shared>,
    /// The deployment each backend makes available (rank 0s only), by status position.
    deployments: Vec<Option<Availability>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    stop: CancellationToken,
    /// True when some `[[models]]` entry is not launched (a fallback that needs no backend).
    others: bool,
    planner: Option<Planner>,
}

impl Backends {
    /// Places the config's launched backends over the job's GPUs and nodes (starting a
    /// node agent on each other node of a multi-node job), picks their ports and builds
    /// their command lines. `cfg` becomes the expanded config: one entry, and so one
    /// deployment, per replica.
    pub async fn plan(
        cfg: &mut LoadedConfig,
        state_dir: Option<&Path>,
    ) -> Result<Self, SuperviseError> {
        let others = cfg.config.models.iter().any(|m| m.launch.is_none());
        if !cfg.config.models.iter().any(|m| m.launch.is_some()) {
            return Ok(Backends {
                specs: Vec::new(),
                plans: Vec::new(),
                remotes: Vec::new(),
                shared: Arc::new(Shared::new(Vec::new(), state_dir, true)),
                deployments: Vec::new(),
                tasks: Vec::new(),
                stop: CancellationToken::new(),
                others,
                planner: None,
            });
        }
        let inherited = inherited_env(cfg);
        // Resolving the node's own name may wait on DNS: not on an async worker.
        let this = tokio::task::spawn_blocking(crate::placement::this_node)
            .await
            .unwrap_or_else(|_| crate::placement::Node {
                name: "localhost".into(),
                addr: "127.0.0.1".into(),
                gpus: Vec::new(),
            });
        // The job's other nodes, each with an agent that reports its GPUs.
        let names = crate::placement::other_nodes(&this.name).await?;
        let mut remotes = self::agent::Remote::spawn_all(&names, &inherited, state_dir).await;
        let nodes: Vec<crate::placement::Node> = std::iter::once(this.clone())
            .chain(remotes.iter().map(|r| r.node.clone()))
            .collect();
        let placed = crate::placement::place(&cfg.config.models, &nodes)?;
        let (expanded, origins) = crate::placement::expand(cfg);
        let ids = llmgw_core::config::deployment_ids(&expanded.config.models);
        let mut specs: Vec<BackendSpec> = Vec::with_capacity(placed.len());
        let mut node_of: Vec<usize> = Vec::with_capacity(placed.len());
        // `place` and `expand` walk the same launched entries of the same config: every
        // placed replica has its expanded entry, and that entry is launched.
        #[allow(clippy::expect_used)]
        for p in &placed {
            let index = origins
                .iter()
                .position(|o| o.entry == p.entry && o.replica == p.replica)
                .expect("every placed replica has an expanded entry");
            let m = &expanded.config.models[index];
            let launch = m.launch.as_ref().expect("placed entries are launched");
            let group = m.name.get_ref();
            let alone = m.id.is_none()
                && expanded
                    .config
                    .models
                    .iter()
                    .filter(|o| o.launch.is_some() && o.name.get_ref() == group)
                    .count()
                    == 1;
            let base = sanitize(if alone { group } else { &ids[index] });
            let mut name = if p.rank > 0 {
                format!("{base}-rank{}", p.rank)
            } else {
                base
            };
            while specs.iter().any(|s| s.name == name) {
                name.push('_');
            }
            // A key configured for the entry is used as it is; else a fresh one (shared
            // by every rank of one server).
            let key = match (p.rank, expanded.model_keys.get(index).cloned().flatten()) {
                (_, Some(k)) => k,
                (0, None) => {
                    Secret::new(llmgw_core::state::random_key("sk-llmgw-backend-").map_err(
                        |source| SuperviseError::Key {
                            name: name.clone(),
                            source,
                        },
                    )?)
                }
                (_, None) => specs
                    .iter()
                    .find(|s| s.index == index && s.rank == 0)
                    .map(|s| s.key.clone())
                    .unwrap_or_else(|| Secret::new("")),
            };
            let mut spec = BackendSpec::from_launch(&name, launch);
            spec.group = group.clone();
            spec.deployment = ids[index].clone();
            spec.index = index;
            spec.replica = p.replica;
            spec.rank = p.rank;
            spec.node = nodes[p.node].name.clone();
            spec.gpus = p.gpus.clone();
            spec.key = key;
            spec.log = state_dir.map(|d| d.join(BACKENDS_DIR).join(format!("{name}.log")));
            specs.push(spec);
            node_of.push(p.node);
        }
        let mut planner = Planner::new("127.0.0.1", &this.addr, inherited);
        let mut plans = Vec::new();
        // Rank 0s first: the other ranks need the rendezvous address picked with them.
        for round in [true, false] {
            for (i, spec) in specs.iter_mut().enumerate() {
                if (spec.rank == 0) != round || node_of[i] != 0 {
                    continue;
                }
                plans.push((i, planner.plan(spec)?));
            }
            for (r, remote) in remotes.iter_mut().enumerate() {
                let mine: Vec<usize> = (0..specs.len())
                    .filter(|&i| node_of[i] == r + 1 && (specs[i].rank == 0) == round)
                    .collect();
                if mine.is_empty() {
                    continue;
                }
                let planned = remote
                    .plan(mine.iter().map(|&i| (i, specs[i].clone())).collect())
                    .await?;
                for (&i, done) in mine.iter().zip(planned) {
                    specs[i] = done;
                }
            }
            if round {
                // Every rank learns its rank 0's rendezvous address.
                for i in 0..specs.len() {
                    if specs[i].rank > 0 {
                        specs[i].dist_init_addr = specs
                            .iter()
                            .find(|s| s.index == specs[i].index && s.rank == 0)
                            .and_then(|s| s.dist_init_addr.clone());
                    }
                }
            }
        }
        // Agents given nothing to run leave now.
        let (remotes, idle): (Vec<_>, Vec<_>) = remotes.into_iter().partition(|r| r.has_backends());
        for r in idle {
            r.dismiss().await;
        }
        let hosts: Vec<String> = (0..specs.len())
            .map(|i| {
                if node_of[i] == 0 {
                    "127.0.0.1".to_string()
                } else {
                    nodes[node_of[i]].addr.clone()
                }
            })
            .collect();
        let statuses = specs.iter().zip(&hosts).map(|(s, h)| s.status(h)).collect();
        *cfg = expanded;
        Ok(Backends {
            deployments: vec![None; specs.len()],
            specs,
            plans,
            remotes,
            shared: Arc::new(Shared::new(statuses, state_dir, true)),
            tasks: Vec::new(),
            stop: CancellationToken::new(),
            others,
            planner: Some(planner),
        })
    }

    /// A node agent's backends: planned on this node by `planner`, reporting to no file.
    pub(crate) fn on_agent_node(
        specs: Vec<BackendSpec>,
        plans: Vec<Plan>,
        planner: Planner,
        host: &str,
    ) -> Self {
        let statuses = specs.iter().map(|s| s.status(host)).collect();
        Backends {
            deployments: vec![None; specs.len()],
            plans: plans.into_iter().enumerate().collect(),
            specs,
            remotes: Vec::new(),
            shared: Arc::new(Shared::new(statuses, None, false)),
            tasks: Vec::new(),
            stop: CancellationToken::new(),
            others: true,
            planner: Some(planner),
        }
    }

    /// API keys of the launched backends by config index: each deployment's key.
    pub fn api_keys(&self) -> impl Iterator<Item = (usize, Secret)> + '_ {
        self.specs
            .iter()
            .filter(|s| s.rank == 0)
            .map(|s| (s.index, s.key.clone()))
    }

    /// True when the config launches nothing.
    pub fn is_empty(&self) -> bool {
        self.specs.is_empty()
    }

    /// Base URLs of the launched backends by config index, for [`Router::new`]: loopback
    /// on this node, the node's address on the others.
    pub fn api_bases(&self) -> HashMap<usize, String> {
        let statuses = self.shared.snapshot();
        self.specs
            .iter()
            .zip(&statuses)
            .filter(|(s, _)| s.rank == 0)
            .map(|(s, b)| {
                (
                    s.index,
                    format!("http://{}:{}/v1", url_host(&b.host), s.port.unwrap_or(0)),
                )
            })
            .collect()
    }

    /// Gives each backend its deployment's switch (`switch(config index)`: the router's
    /// deployment, marked available or not) and turns it off until the backend is ready.
    pub fn attach(&mut self, switch: impl Fn(usize) -> Option<Availability>) {
        for (i, s) in self.specs.iter().enumerate() {
            if s.rank != 0 {
                continue;
            }
            let dep = switch(s.index);
            if let Some(d) = &dep {
                d(false);
            }
            self.deployments[i] = dep;
        }
    }

    pub fn monitor(&self) -> Monitor {
        Monitor {
            shared: Some(self.shared.clone()),
        }
    }

    /// Starts every backend and its supervisor, here and through the node agents. Fails
    /// when a command cannot be started at all (missing program, bad permissions): that
    /// is a config error, not a crash.
    pub fn start(&mut self) -> Result<(), SuperviseError> {
        if self.specs.is_empty() {
            return Ok(());
        }
        if let Some(dir) = &self.shared.state_dir {
            let logs = dir.join(BACKENDS_DIR);
            llmgw_core::state::ensure_dir(&logs).map_err(|source| SuperviseError::Log {
                name: self.specs[0].name.clone(),
                path: logs.display().to_string(),
                source,
            })?;
        }
        self.shared.persist_now();
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .no_proxy()
            .build()
            .unwrap_or_default();
        // Start them all first: when one cannot start, stop those already running.
        let mut children = Vec::with_capacity(self.plans.len());
        for (_, plan) in &self.plans {
            match spawn(plan, 0) {
                Ok(c) => children.push(c),
                Err(e) => {
                    for c in &children {
                        if let Some(pid) = c.id().and_then(|p| i32::try_from(p).ok()) {
                            let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
                        }
                    }
                    return Err(e);
                }
            }
        }
        let plans = std::mem::take(&mut self.plans);
        for ((i, plan), child) in plans.into_iter().zip(children) {
            let sup = Supervisor {
                i,
                plan,
                shared: self.shared.clone(),
                deployment: self.deployments[i].clone(),
                client: client.clone(),
                stop: self.stop.clone(),
            };
            self.tasks.push(tokio::spawn(sup.run(child)));
        }
        for remote in std::mem::take(&mut self.remotes) {
            let deployments = self.deployments.clone();
            self.tasks.push(tokio::spawn(remote.run(
                self.shared.clone(),
                deployments,
                self.stop.clone(),
            )));
        }
        Ok(())
    }

    /// Waits until every backend is ready or has failed. Errors when all failed and no
    /// other deployment could serve.
    pub async fn settled(&self) -> Result<(), SuperviseError> {
        let mut rx = self.shared.changed.subscribe();
        loop {
            let all = self.shared.snapshot();
            let done = all
                .iter()
                .all(|b| matches!(b.state, BackendState::Ready | BackendState::Failed));
            if done {
                let failed: Vec<String> = all
                    .iter()
                    .filter(|b| b.state == BackendState::Failed)
                    .map(|b| {
                        format!(
                            "{} ({})",
                            b.name,
                            b.last_error.as_deref().unwrap_or("failed")
                        )
                    })
                    .collect();
                if !all.is_empty() && failed.len() == all.len() && !self.others {
                    return Err(SuperviseError::AllFailed {
                        details: failed.join(", "),
                    });
                }
                return Ok(());
            }
            if rx.changed().await.is_err() {
                return Ok(());
            }
        }
    }

    /// Stops every backend: SIGTERM to each process group, SIGKILL after [`KILL_GRACE`];
    /// each node agent stops its own the same way.
    pub async fn shutdown(mut self) {
        self.stop.cancel();
        for t in self.tasks.drain(..) {
            let _ = t.await;
        }
        for r in self.remotes.drain(..) {
            r.dismiss().await;
        }
        // The key files go last, once nothing can read them any more.
        self.planner.take();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn launch(cmd: Option<Vec<&str>>) -> LaunchConfig {
        LaunchConfig {
            model_path: Some("/models/qwen".into()),
            tp: 2,
            gpus: None,
            replicas: 1,
            nnodes: 1,
            args: vec!["--mem-fraction-static".into(), "0.8".into()],
            env: Default::default(),
            command: cmd.map(|c| c.into_iter().map(String::from).collect()),
            load_timeout: llmgw_core::config::Dur(Duration::from_secs(5)),
        }
    }

    #[test]
    fn sglang_command_line() {
        let argv = command_line("m", &launch(None), 31000, "/bin/llmgw").unwrap();
        assert_eq!(
            argv.join(" "),
            "python -m sglang.launch_server --model-path /models/qwen --host 127.0.0.1 --port 31000 --tp-size 2 --mem-fraction-static 0.8"
        );
    }

    #[test]
    fn sglang_key_settings_are_llmgws() {
        for args in [vec!["--api-key", "sk-x"], vec!["--config=mine.yaml"]] {
            let mut l = launch(None);
            l.args = args.iter().map(|s| s.to_string()).collect();
            let err = command_line("m", &l, 1, "x").unwrap_err().to_string();
            assert!(err.contains("must not set --"), "{err}");
        }
        // A command is the user's own: its arguments are not checked.
        let mut l = launch(Some(vec!["srv", "--api-key", "k"]));
        l.args.clear();
        assert!(command_line("m", &l, 1, "x").is_ok());
    }

    #[test]
    fn a_multi_node_rank_gets_sglangs_flags_and_its_placeholders() {
        let mut l = launch(None);
        l.nnodes = 2;
        let mut spec = BackendSpec::from_launch("big-rank1", &l);
        spec.rank = 1;
        spec.replica = 3;
        spec.node = "n2".into();
        spec.dist_init_addr = Some("10.0.0.1:5000".into());
        let argv = spec_command_line(&spec, "10.0.0.2", 31000, "x")
            .unwrap()
            .join(" ");
        assert!(argv.contains("--host 10.0.0.2 --port 31000"), "{argv}");
        assert!(
            argv.ends_with("--nnodes 2 --node-rank 1 --dist-init-addr 10.0.0.1:5000"),
            "{argv}"
        );
        // The rank flags are llmgw's to set.
        spec.args = vec!["--node-rank=0".into()];
        let err = spec_command_line(&spec, "h", 1, "x")
            .unwrap_err()
            .to_string();
        assert!(err.contains("must not set --node-rank"), "{err}");
        // A command gets them appended too, and its placeholders filled.
        spec.args.clear();
        spec.command = Some(vec!["srv".into(), "{replica}/{rank}/{node}".into()]);
        let argv = spec_command_line(&spec, "h", 1, "x").unwrap().join(" ");
        assert_eq!(
            argv,
            "srv 3/1/n2 --nnodes 2 --node-rank 1 --dist-init-addr 10.0.0.1:5000"
        );
    }

    #[test]
    fn command_override_substitutes() {
        let argv = command_line(
            "m",
            &launch(Some(vec![
                "{llmgw}",
                "mock-upstream",
                "--port",
                "{port}",
                "--host",
                "{host}",
                "--model",
                "{model_path}",
            ])),
            31000,
            "/bin/llmgw",
        )
        .unwrap();
        assert_eq!(
            argv.join(" "),
            "/bin/llmgw mock-upstream --port 31000 --host 127.0.0.1 --model /models/qwen --mem-fraction-static 0.8"
        );
        assert!(command_line("m", &launch(Some(vec![])), 1, "x").is_err());
    }

    #[test]
    fn names_are_file_safe() {
        assert_eq!(sanitize("qwen/3 b"), "qwen_3_b");
        assert_eq!(sanitize(".."), "backend..");
    }

    /// The gateway runs without transparent huge pages; a model server it starts gets
    /// the machine's setting back.
    #[tokio::test]
    async fn children_get_transparent_huge_pages_back() {
        let thp = |status: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("THP_enabled:"))
                .map(|v| v.trim().to_owned())
        };
        let Some(before) = thp(&std::fs::read_to_string("/proc/self/status").unwrap()) else {
            return; // a kernel without the field (older than 5.0): nothing to compare
        };
        nix::sys::prctl::set_thp_disable(true).unwrap();
        let ours = thp(&std::fs::read_to_string("/proc/self/status").unwrap());
        let mut cmd = tokio::process::Command::new("cat");
        cmd.arg("/proc/self/status");
        die_with_parent(&mut cmd);
        let out = cmd.output().await.unwrap();
        nix::sys::prctl::set_thp_disable(before != "1").unwrap();
        assert_eq!(ours.as_deref(), Some("0"));
        assert_eq!(
            thp(&String::from_utf8_lossy(&out.stdout)).as_deref(),
            Some("1")
        );
    }

    #[tokio::test]
    async fn group_is_stopped_with_children() {
        let dir = tempfile::tempdir().unwrap();
        let plan = Plan {
            name: "t".into(),
            port: 0,
            host: "127.0.0.1".into(),
            probe: true,
            program: "sh".into(),
            // A child that ignores SIGTERM: only SIGKILL to the group ends it.
            args: vec![
                "-c".into(),
                "trap '' TERM; sleep 30 & echo $! > child.pid; wait".into(),
            ],
            env: vec![],
            log: Some(dir.path().join("t.log")),
            load_timeout: Duration::from_secs(1),
            key: Secret::new("k"),
        };
        let mut c = {
            let mut cmd = tokio::process::Command::new(&plan.program);
            cmd.args(&plan.args)
                .current_dir(dir.path())
                .process_group(0);
            cmd.spawn().unwrap()
        };
        let pid = c.id().unwrap();
        let child_pid_file = dir.path().join("child.pid");
        let t0 = Instant::now();
        while !child_pid_file.exists() && t0.elapsed() < Duration::from_secs(5) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let child: i32 = std::fs::read_to_string(&child_pid_file)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        stop_group(pid, &mut c, Duration::from_millis(300)).await;
        // The orphaned sleep is reparented; it may linger as a zombie, which is dead.
        let alive = |pid: i32| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|s| s.rsplit(')').next().map(|r| r.trim().starts_with('Z')))
                .is_some_and(|zombie| !zombie)
        };
        let t1 = Instant::now();
        while alive(child) && t1.elapsed() < Duration::from_secs(3) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(!alive(child), "child survived");
        assert!(t0.elapsed() < Duration::from_secs(5));
    }
}
