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

pub mod agent;

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

/// What a backend is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendState {
    /// Started, not yet answering `/health` and `/v1/models`.
    Loading,
    Ready,
    /// Exited; waiting for the backoff before starting again.
    Restarting,
    /// Never became ready (exited repeatedly or hit `load_timeout`); still retried.
    Failed,
    Stopped,
}

impl BackendState {
    pub fn as_str(self) -> &'static str {
        match self {
            BackendState::Loading => "loading",
            BackendState::Ready => "ready",
            BackendState::Restarting => "restarting",
            BackendState::Failed => "failed",
            BackendState::Stopped => "stopped",
        }
    }
}

/// One backend as `/health`, `backends.json` and `llmgw status` show it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BackendStatus {
    /// Name for logs and `llmgw logs --backend`: the entry's `id`, else its model name.
    pub name: String,
    /// The model group.
    pub model: String,
    /// Position of its `[[models]]` entry (replicas written out: see `placement::expand`).
    pub index: usize,
    pub state: BackendState,
    pub pid: Option<u32>,
    pub port: u16,
    /// How many times it was started again after exiting.
    pub restarts: u32,
    /// Why it last stopped being ready (exit status, load timeout).
    pub last_error: Option<String>,
    pub log: Option<PathBuf>,
    /// The deployment it serves (for a multi-node server: rank 0's).
    #[serde(default)]
    pub deployment: String,
    /// The node it runs on.
    #[serde(default)]
    pub node: String,
    /// The address it listens on.
    #[serde(default)]
    pub host: String,
    /// Its `CUDA_VISIBLE_DEVICES`, when placement gave it GPUs.
    #[serde(default)]
    pub gpus: Option<Vec<String>>,
    /// 1-based replica of its `[[models]]` entry.
    #[serde(default)]
    pub replica: u32,
    /// Node rank of a multi-node server (0 answers requests).
    #[serde(default)]
    pub rank: u32,
}

/// The contents of `backends.json`.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct BackendsFile {
    pub updated_at: String,
    pub backends: Vec<BackendStatus>,
}

impl BackendsFile {
    pub fn read(dir: &Path) -> Option<Self> {
        Self::read_path(&dir.join(BACKENDS_FILE))
    }

    pub fn read_path(path: &Path) -> Option<Self> {
        let bytes = std::fs::read(path).ok()?;
        serde_json::from_slice(&bytes).ok()
    }
}

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

/// A read-only view of the backends' states, for `/health`.
#[derive(Clone, Default)]
pub struct Monitor {
    shared: Option<Arc<Shared>>,
}

impl Monitor {
    pub fn snapshot(&self) -> Vec<BackendStatus> {
        self.shared
            .as_ref()
            .map(|s| s.snapshot())
            .unwrap_or_default()
    }

    /// Where the states are written from now on (`None`: nowhere). A successor job writes
    /// its own file while it loads and takes over `backends.json` only once it is current;
    /// a job that handed over stops writing.
    pub fn set_status_file(&self, file: Option<PathBuf>) {
        if let Some(s) = &self.shared {
            *s.status_file.lock().unwrap_or_else(|e| e.into_inner()) = file;
            s.persist_now();
        }
    }

    /// Changes from now on (the value counts them).
    pub fn changes(&self) -> Option<watch::Receiver<u64>> {
        self.shared.as_ref().map(|s| s.changed.subscribe())
    }
}

/// Every backend's status, shared by the supervisors (local ones, and the tasks that hear
/// from node agents) and written to `backends.json` on each change.
pub(crate) struct Shared {
    statuses: Mutex<Vec<BackendStatus>>,
    state_dir: Option<PathBuf>,
    /// `<state>/backends.json` unless changed with [`Monitor::set_status_file`].
    status_file: Mutex<Option<PathBuf>>,
    /// Bumped on every change.
    changed: watch::Sender<u64>,
}

impl Shared {
    fn new(statuses: Vec<BackendStatus>, state_dir: Option<&Path>, status_file: bool) -> Self {
        let (changed, _) = watch::channel(0);
        Shared {
            statuses: Mutex::new(statuses),
            state_dir: state_dir.map(Path::to_path_buf),
            status_file: Mutex::new(
                state_dir
                    .filter(|_| status_file)
                    .map(|d| d.join(BACKENDS_FILE)),
            ),
            changed,
        }
    }

    pub(crate) fn snapshot(&self) -> Vec<BackendStatus> {
        self.statuses
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub(crate) fn update(&self, i: usize, f: impl FnOnce(&mut BackendStatus)) {
        {
            // Written under the lock: updates from several supervisors must not interleave.
            let mut all = self.statuses.lock().unwrap_or_else(|e| e.into_inner());
            let Some(b) = all.get_mut(i) else { return };
            f(b);
            self.persist(all.clone());
        }
        self.changed.send_modify(|n| *n += 1);
    }

    fn persist_now(&self) {
        let all = self.statuses.lock().unwrap_or_else(|e| e.into_inner());
        self.persist(all.clone());
    }

    fn persist(&self, backends: Vec<BackendStatus>) {
        let path = self.status_file.lock().unwrap_or_else(|e| e.into_inner());
        let Some(path) = path.as_ref() else { return };
        let file = BackendsFile {
            updated_at: llmgw_core::state::now_rfc3339(),
            backends,
        };
        if let Ok(json) = serde_json::to_vec_pretty(&file) {
            if let Err(e) = llmgw_core::state::write_atomic(path, &json, 0o600) {
                tracing::warn!(error = %e, "cannot write {}", BACKENDS_FILE);
            }
        }
    }
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
            // A JSON string is a YAML scalar, whatever a configured key contains.
            let quoted = serde_json::to_string(spec.key.expose()).map_err(|e| key_err(e.into()))?;
            let yaml = format!(
                "# llmgw: the API key of backend {}\napi-key: {quoted}\n",
                spec.name
            );
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

/// `[A-Za-z0-9._-]` only, for file names.
fn sanitize(name: &str) -> String {
    let s: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    if s.is_empty() || s.starts_with('.') {
        format!("backend{s}")
    } else {
        s
    }
}

/// A port nothing listens on at `host` now (it is the backend's to take).
fn free_port(host: &str) -> std::io::Result<u16> {
    let ip: std::net::IpAddr = host
        .parse()
        .map_err(|_| std::io::Error::other(format!("{host:?} is not an IP address")))?;
    let l = std::net::TcpListener::bind((ip, 0))?;
    Ok(l.local_addr()?.port())
}

/// An IP address as the host part of a URL (IPv6 in brackets).
pub(crate) fn url_host(addr: &str) -> String {
    if addr.contains(':') && !addr.starts_with('[') {
        format!("[{addr}]")
    } else {
        addr.to_string()
    }
}

/// The backend's argv for one `launch` table on loopback (what `llmgw doctor` checks).
pub fn command_line(
    name: &str,
    launch: &LaunchConfig,
    port: u16,
    llmgw: &str,
) -> Result<Vec<String>, SuperviseError> {
    spec_command_line(
        &BackendSpec::from_launch(name, launch),
        "127.0.0.1",
        port,
        llmgw,
    )
}

/// The backend's argv: SGLang's launch line, or `command` with placeholders substituted
/// (`{port}`, `{host}`, `{model_path}`, `{llmgw}`, `{replica}`, `{rank}`, `{node}`). A
/// multi-node server also gets SGLang's `--nnodes N --node-rank R --dist-init-addr A`,
/// appended to a `command` too.
fn spec_command_line(
    spec: &BackendSpec,
    host: &str,
    port: u16,
    llmgw: &str,
) -> Result<Vec<String>, SuperviseError> {
    let name = &spec.name;
    let model_path = spec.model_path.clone().unwrap_or_default();
    let subst = |s: &str| {
        s.replace("{port}", &port.to_string())
            .replace("{host}", host)
            .replace("{model_path}", &model_path)
            .replace("{llmgw}", llmgw)
            .replace("{replica}", &spec.replica.to_string())
            .replace("{rank}", &spec.rank.to_string())
            .replace("{node}", &spec.node)
    };
    let reserved: &[(&str, &str)] = if spec.nnodes > 1 {
        &[
            ("--api-key", ""),
            ("--config", ""),
            ("--nnodes", "; llmgw sets it from launch.nnodes"),
            ("--node-rank", "; llmgw sets it for each node"),
            ("--dist-init-addr", "; llmgw picks it on rank 0's node"),
        ]
    } else {
        &[("--api-key", ""), ("--config", "")]
    };
    let mut argv: Vec<String> = match &spec.command {
        Some(cmd) => {
            if cmd.is_empty() || cmd[0].trim().is_empty() {
                return Err(SuperviseError::EmptyCommand { name: name.into() });
            }
            cmd.iter()
                .chain(spec.args.iter())
                .map(|s| subst(s))
                .collect()
        }
        None => {
            if model_path.is_empty() {
                return Err(SuperviseError::NoModelPath { name: name.into() });
            }
            let mut v: Vec<String> = [
                "python",
                "-m",
                "sglang.launch_server",
                "--model-path",
                &model_path,
                "--host",
                host,
                "--port",
                &port.to_string(),
                "--tp-size",
                &spec.tp.to_string(),
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            for &(arg, why) in reserved {
                let taken = |a: &String| a == arg || a.starts_with(&format!("{arg}="));
                if spec.args.iter().any(taken) {
                    return Err(SuperviseError::ReservedArg {
                        name: name.into(),
                        arg,
                        more: if why.is_empty() {
                            "; put other settings in launch.args"
                        } else {
                            why
                        },
                    });
                }
            }
            v.extend(spec.args.iter().map(|s| subst(s)));
            v
        }
    };
    if spec.nnodes > 1 {
        argv.extend([
            "--nnodes".to_string(),
            spec.nnodes.to_string(),
            "--node-rank".to_string(),
            spec.rank.to_string(),
        ]);
        if let Some(addr) = &spec.dist_init_addr {
            argv.extend(["--dist-init-addr".to_string(), addr.clone()]);
        }
    }
    Ok(argv)
}

/// The part of the gateway's environment a backend (or a node agent) inherits:
/// [`ENV_ALLOW`] only, and never a variable holding one of the config's secrets.
pub(crate) fn inherited_env(cfg: &LoadedConfig) -> Vec<(OsString, OsString)> {
    let secrets: Vec<&str> = cfg
        .model_keys
        .iter()
        .flatten()
        .chain(&cfg.master_key)
        .chain(&cfg.redis_url)
        .map(Secret::expose)
        .filter(|s| s.len() >= 8)
        .collect();
    allowed_env(&secrets)
}

/// This process's environment, [`ENV_ALLOW`] only, without any variable holding one of
/// `secrets`.
pub(crate) fn allowed_env(secrets: &[&str]) -> Vec<(OsString, OsString)> {
    std::env::vars_os()
        .filter(|(k, v)| {
            let Some(k) = k.to_str() else { return false };
            let allowed = ENV_ALLOW
                .iter()
                .any(|a| k == *a || (a.ends_with('_') && k.starts_with(a)));
            let v = v.to_string_lossy();
            allowed && !secrets.iter().any(|s| v.contains(s))
        })
        .collect()
}

/// Starts the backend in its own process group, output appended to its log.
fn spawn(plan: &Plan, attempt: u32) -> Result<tokio::process::Child, SuperviseError> {
    use std::process::Stdio;
    let mut cmd = tokio::process::Command::new(&plan.program);
    cmd.args(&plan.args)
        .env_clear()
        .envs(plan.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .process_group(0)
        .kill_on_drop(false);
    die_with_parent(&mut cmd);
    if let Some(path) = &plan.log {
        let log_err = |source| SuperviseError::Log {
            name: plan.name.clone(),
            path: path.display().to_string(),
            source,
        };
        let mut file = open_log(path).map_err(log_err)?;
        use std::io::Write;
        let _ = writeln!(
            file,
            "=== llmgw {}: starting backend {} (start {}): {} {}",
            llmgw_core::state::now_rfc3339(),
            plan.name,
            attempt + 1,
            plan.program,
            plan.args.join(" ")
        );
        let err = file.try_clone().map_err(log_err)?;
        cmd.stdout(Stdio::from(file)).stderr(Stdio::from(err));
    }
    let child = cmd.spawn().map_err(|source| SuperviseError::Spawn {
        name: plan.name.clone(),
        program: plan.program.clone(),
        source,
    })?;
    tracing::info!(backend = %plan.name, pid = child.id(), port = plan.port, "backend started");
    Ok(child)
}

/// The child gets SIGKILL when the gateway dies (`PR_SET_PDEATHSIG`), however it dies:
/// a backend must not outlive it holding GPUs. (SGLang's own workers do the same with
/// their parent.) The signal follows the thread that spawned the child: a runtime worker
/// or the main thread, which live as long as the gateway.
pub fn die_with_parent(cmd: &mut tokio::process::Command) {
    let parent = nix::unistd::getpid();
    // SAFETY: the closure runs between fork and exec and only makes system calls
    // (prctl, getppid); it allocates nothing and takes no lock.
    unsafe {
        cmd.pre_exec(move || {
            nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)?;
            // The gateway turned transparent huge pages off for itself (`main`); a model
            // server gets the machine's setting back.
            let _ = nix::sys::prctl::set_thp_disable(false);
            // The gateway died before prctl took effect: no signal will come.
            if nix::unistd::getppid() != parent {
                return Err(nix::errno::Errno::ESRCH.into());
            }
            Ok(())
        });
    }
}

fn open_log(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
}

/// How one run of a backend ended.
enum Ended {
    Exited(String),
    LoadTimeout,
    Stopped,
}

struct Supervisor {
    i: usize,
    plan: Plan,
    shared: Arc<Shared>,
    deployment: Option<Availability>,
    client: reqwest::Client,
    stop: CancellationToken,
}

impl Supervisor {
    async fn run(self, first: tokio::process::Child) {
        let mut child = Some(first);
        let mut attempt: u32 = 0;
        let mut failures_before_ready: u32 = 0;
        let mut ever_ready = false;
        let mut backoff = Duration::from_secs(1);
        loop {
            let mut c = match child.take() {
                Some(c) => c,
                None => match spawn(&self.plan, attempt) {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::error!(backend = %self.plan.name, error = %e, "backend could not be restarted");
                        self.shared.update(self.i, |b| {
                            b.state = BackendState::Failed;
                            b.pid = None;
                            b.last_error = Some(e.to_string());
                        });
                        if self.sleep(backoff).await {
                            break;
                        }
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                        continue;
                    }
                },
            };
            let pid = c.id();
            let keep_failed = !ever_ready && failures_before_ready >= FAILED_AFTER;
            self.shared.update(self.i, |b| {
                b.pid = pid;
                if !keep_failed {
                    b.state = BackendState::Loading;
                }
            });
            let started = Instant::now();
            let ended = self.one_run(&mut c).await;
            self.set_available(false);
            if let Some(pid) = pid {
                stop_group(pid, &mut c, KILL_GRACE).await;
            }
            let (why, timed_out) = match ended {
                Ended::Stopped => {
                    self.shared.update(self.i, |b| {
                        b.state = BackendState::Stopped;
                        b.pid = None;
                    });
                    break;
                }
                Ended::Exited(status) => (status, false),
                Ended::LoadTimeout => (
                    format!(
                        "not ready within load_timeout ({:?})",
                        self.plan.load_timeout
                    ),
                    true,
                ),
            };
            let was_ready = self.shared.snapshot()[self.i].state == BackendState::Ready;
            if was_ready {
                ever_ready = true;
                failures_before_ready = 0;
            } else {
                failures_before_ready += 1;
            }
            if started.elapsed() >= STABLE_AFTER {
                backoff = Duration::from_secs(1);
            }
            let failed = timed_out || (!was_ready && failures_before_ready >= FAILED_AFTER);
            tracing::warn!(backend = %self.plan.name, reason = %why, restart_in = ?backoff, "backend stopped; restarting it");
            self.shared.update(self.i, |b| {
                b.pid = None;
                b.restarts += 1;
                b.last_error = Some(why.clone());
                b.state = if failed || b.state == BackendState::Failed {
                    BackendState::Failed
                } else {
                    BackendState::Restarting
                };
            });
            attempt += 1;
            if self.sleep(backoff).await {
                self.shared
                    .update(self.i, |b| b.state = BackendState::Stopped);
                break;
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// Loads (polls until ready), then runs until the process exits or we are stopped.
    async fn one_run(&self, c: &mut tokio::process::Child) -> Ended {
        let deadline = tokio::time::Instant::now() + self.plan.load_timeout;
        let ready = async {
            loop {
                if self.probe().await {
                    return;
                }
                tokio::time::sleep(POLL).await;
            }
        };
        tokio::select! {
            _ = self.stop.cancelled() => return Ended::Stopped,
            status = c.wait() => return Ended::Exited(exit_text(status)),
            _ = tokio::time::sleep_until(deadline) => return Ended::LoadTimeout,
            _ = ready => {}
        }
        tracing::info!(backend = %self.plan.name, port = self.plan.port, "backend ready");
        self.shared.update(self.i, |b| {
            b.state = BackendState::Ready;
        });
        self.set_available(true);
        tokio::select! {
            _ = self.stop.cancelled() => Ended::Stopped,
            status = c.wait() => Ended::Exited(exit_text(status)),
        }
    }

    /// `/health` and then `/v1/models` both answer 200 (with the backend's key: SGLang
    /// requires it on `/v1/models`).
    async fn probe(&self) -> bool {
        if !self.plan.probe {
            return true;
        }
        let base = format!("http://{}:{}", url_host(&self.plan.host), self.plan.port);
        for path in ["/health", "/v1/models"] {
            let req = self
                .client
                .get(format!("{base}{path}"))
                .bearer_auth(self.plan.key.expose());
            match req.send().await {
                Ok(r) if r.status().is_success() => {}
                _ => return false,
            }
        }
        true
    }

    fn set_available(&self, on: bool) {
        if let Some(d) = &self.deployment {
            d(on);
        }
    }

    /// Sleeps; true when stopped meanwhile.
    async fn sleep(&self, d: Duration) -> bool {
        tokio::select! {
            _ = self.stop.cancelled() => true,
            _ = tokio::time::sleep(d) => false,
        }
    }
}

fn exit_text(status: std::io::Result<std::process::ExitStatus>) -> String {
    use std::os::unix::process::ExitStatusExt;
    match status {
        Ok(s) => match (s.code(), s.signal()) {
            (Some(code), _) => format!("exited with status {code}"),
            (None, Some(sig)) => format!("killed by signal {sig}"),
            _ => "exited".into(),
        },
        Err(e) => format!("cannot wait for it: {e}"),
    }
}

/// SIGTERM to the process group, SIGKILL to whatever is left after `grace`.
async fn stop_group(pgid: u32, leader: &mut tokio::process::Child, grace: Duration) {
    let Ok(raw) = i32::try_from(pgid) else { return };
    let group = Pid::from_raw(raw);
    if killpg(group, Signal::SIGTERM).is_err() {
        // No process left in the group; reap the leader if it has not been.
        let _ = leader.try_wait();
        return;
    }
    let deadline = tokio::time::Instant::now() + grace;
    let _ = tokio::time::timeout_at(deadline, leader.wait()).await;
    // The leader is gone (or the grace is over); wait for the rest of the group.
    while tokio::time::Instant::now() < deadline {
        if killpg(group, None).is_err() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if killpg(group, Signal::SIGKILL).is_ok() {
        tracing::warn!(pgid, "backend did not stop within {grace:?}; killed");
    }
    let _ = leader.wait().await;
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
