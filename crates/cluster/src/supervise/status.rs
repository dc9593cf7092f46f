//! What the backends report: each one's state and status, `backends.json`, the shared
//! view the gateway's `/health` and the launcher read ([`Monitor`]).

use super::*;

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

/// A read-only view of the backends' states, for `/health`.
#[derive(Clone, Default)]
pub struct Monitor {
    pub(crate) shared: Option<Arc<Shared>>,
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
    pub(crate) statuses: Mutex<Vec<BackendStatus>>,
    pub(crate) state_dir: Option<PathBuf>,
    /// `<state>/backends.json` unless changed with [`Monitor::set_status_file`].
    pub(crate) status_file: Mutex<Option<PathBuf>>,
    /// Bumped on every change.
    pub(crate) changed: watch::Sender<u64>,
}

impl Shared {
    pub(crate) fn new(
        statuses: Vec<BackendStatus>,
        state_dir: Option<&Path>,
        status_file: bool,
    ) -> Self {
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

    pub(crate) fn persist_now(&self) {
        let all = self.statuses.lock().unwrap_or_else(|e| e.into_inner());
        self.persist(all.clone());
    }

    pub(crate) fn persist(&self, backends: Vec<BackendStatus>) {
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
