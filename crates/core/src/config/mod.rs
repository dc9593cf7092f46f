//! The TOML configuration: one file with `[server]`, `[router]`, `[[models]]`, `[cache]`
//! and `[slurm]`.
//!
//! Every table denies unknown keys, and every error names `file:line:col`, because a
//! researcher editing a config on a login node should not have to guess which line is
//! wrong. Secrets are written as `env:VAR` and resolved at load time, so the file itself
//! can be shared and the value never has to appear on a command line.

mod load;
mod secret;
pub use load::*;
pub use secret::*;

pub use derived::{builtin_price, deployment_ids, prices_for, BUILTIN_PRICES};
use serde::{Deserialize, Deserializer};
use std::collections::BTreeMap;
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;
use toml::Spanned;

mod alerts;
mod batches;
mod derived;
pub mod renewal;
pub use alerts::{url_ok as alert_url_ok, AlertConfig, AlertKind};
mod telemetry;
pub use batches::BatchesConfig;
pub use telemetry::TelemetryConfig;

/// The config served when `llmgw serve` is given no `--config`.
pub const QUICKSTART: &str = include_str!("../../../../configs/quickstart.toml");

/// The name shown in errors for the built-in quickstart config.
pub const QUICKSTART_NAME: &str = "configs/quickstart.toml (built in)";
/// What to start for the built-in quickstart: added to the error when its upstream does
/// not answer, and logged at start when `serve` runs it.
pub const QUICKSTART_HINT: &str = "the built-in quickstart config expects an \
    OpenAI-compatible server on 127.0.0.1:30000: start SGLang there (python -m \
    sglang.launch_server --model-path MODEL --port 30000), or `llmgw mock-upstream --port \
    30000` to try the gateway without a model, or serve your own config with `llmgw serve \
    -c FILE`";

/// A config problem, rendered as one line: `file:line:col: what is wrong`.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{file}:{line}:{col}: {message}")]
    At {
        file: String,
        line: usize,
        col: usize,
        message: String,
    },
    #[error("{file}: {message}")]
    File { file: String, message: String },
}

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub server: ServerConfig,
    #[serde(default)]
    pub router: RouterConfig,
    #[serde(default)]
    pub models: Vec<ModelConfig>,
    #[serde(default)]
    pub cache: CacheConfig,
    #[serde(default)]
    pub slurm: SlurmConfig,
    #[serde(default)]
    pub store: StoreConfig,
    #[serde(default)]
    pub responses: ResponsesConfig,
    #[serde(default)]
    pub keys: KeysConfig,
    #[serde(default)]
    pub batches: BatchesConfig,
    /// `[[alerts]]`: webhooks for alerts (`llmgw_core::alert`).
    #[serde(default)]
    pub alerts: Vec<AlertConfig>,
    #[serde(default)]
    pub telemetry: TelemetryConfig,
}

/// `[server]`: where and how the gateway listens.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address to bind. Anything other than loopback requires a master key.
    pub host: String,
    /// Port to bind; when taken, `serve` picks a free one and says so.
    pub port: u16,
    /// `env:VAR` or `file:PATH`; required when `host` is not loopback.
    pub master_key: Option<Spanned<String>>,
    /// Largest request body accepted, in bytes (413 above).
    pub max_body_bytes: usize,
    /// Overall limit for one client request, across retries and fallbacks.
    pub request_timeout: Dur,
    /// How long in-flight requests may run after SIGTERM/SIGINT.
    pub shutdown_grace: Dur,
    /// Log format when `--log-format` is not given: `text` or `json`.
    pub log_format: LogFormat,
    /// Time a client has to send a request's headers once their first byte arrived.
    #[serde(deserialize_with = "connection_timeout")]
    pub header_read_timeout: Dur,
    /// Time a client has to send a request's whole body (408 after it).
    #[serde(deserialize_with = "connection_timeout")]
    pub body_read_timeout: Dur,
    /// A connection with no request in flight and nothing received is closed after this.
    #[serde(deserialize_with = "connection_timeout")]
    pub idle_timeout: Dur,
    /// Open client connections; more get an immediate 503. Default: derived from the
    /// open-file limit (see `conn::default_max_connections`).
    #[serde(deserialize_with = "positive_count")]
    pub max_connections: Option<usize>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            host: "127.0.0.1".into(),
            port: 4000,
            master_key: None,
            max_body_bytes: 8 * 1024 * 1024,
            request_timeout: Dur(Duration::from_secs(600)),
            shutdown_grace: Dur(Duration::from_secs(30)),
            log_format: LogFormat::Text,
            header_read_timeout: Dur(Duration::from_secs(10)),
            body_read_timeout: Dur(Duration::from_secs(30)),
            idle_timeout: Dur(Duration::from_secs(60)),
            max_connections: None,
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// `[router]`: how a model group picks a deployment and recovers from failures.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RouterConfig {
    /// How a group picks a deployment; unset: `prefix-aware` for a group of two or more
    /// local replicas, `simple-shuffle` otherwise.
    pub strategy: Option<Strategy>,
    /// `prefix-aware`: prefix keys each deployment's index holds (256-byte chunks of prompt
    /// text; about a backend's KV cache: 8192 ≈ half a million tokens).
    pub prefix_index_chunks: usize,
    /// Retries after the first attempt, unless `retry_policy` says otherwise for a class.
    pub num_retries: u32,
    /// Per-attempt timeout when a deployment sets none.
    pub timeout: Dur,
    /// How long a failing deployment is left alone.
    pub cooldown: Dur,
    /// Failures (within `fail_window`) before a deployment cools down.
    pub allowed_fails: u32,
    pub fail_window: Dur,
    /// Retries per error class, overriding `num_retries`.
    pub retry_policy: BTreeMap<ErrorClass, u32>,
    /// Allowed failures per error class, overriding `allowed_fails`.
    pub allowed_fails_policy: BTreeMap<ErrorClass, u32>,
    /// latency-based: deployments within this fraction of the best are picked at random.
    pub latency_buffer: f64,
    /// model group -> groups tried in order once the group's retries are spent.
    pub fallbacks: BTreeMap<String, Vec<String>>,
    /// model group -> groups tried when the request does not fit its context window.
    pub context_window_fallbacks: BTreeMap<String, Vec<String>>,
    /// Tried for any group without its own fallbacks.
    pub default_fallbacks: Vec<String>,
    /// Longest chain of fallbacks followed for one request.
    pub max_fallback_depth: u32,
    /// Longest cooldown an upstream's Retry-After can set (a configured `cooldown` is
    /// used as written).
    pub max_cooldown: Dur,
    /// Largest successful non-streamed upstream answer read, in bytes (502 above).
    pub max_response_bytes: usize,
    /// Most bytes of an upstream error body read (the rest is ignored).
    pub max_error_bytes: usize,
    /// Local first: a group's own backends (launched, or SGLang) take its traffic until
    /// their queues pass these limits; only the overflow goes to the group's other
    /// (cloud) deployments, or to its fallbacks.
    pub spillover: Option<SpilloverConfig>,
    /// Who shares a group's local backends fairly when they are full: each virtual key,
    /// each team, each user, or nobody (`off`: requests go straight to the backends, which
    /// serve them first come, first served).
    pub fairness: Fairness,
    /// The queue the gateway holds while a group's local backends are full.
    pub queue: QueueConfig,
}

/// `[router] fairness`.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum Fairness {
    #[default]
    Key,
    Team,
    User,
    Off,
}

/// `[router] queue`: bounds of the gateway's queue, per model group.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct QueueConfig {
    /// Requests waiting at most (beyond: 429 with Retry-After, or the cloud with spillover).
    pub max: usize,
    /// Longest wait in the queue (beyond: 429 with Retry-After).
    pub max_wait: Dur,
    /// A waiting request rises one priority class (100) per `aging` it has waited, so a
    /// lower class is never starved for longer than that per class between.
    pub aging: Dur,
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            max: 1000,
            max_wait: Dur(Duration::from_secs(600)),
            aging: Dur(Duration::from_secs(60)),
        }
    }
}

/// `[router] spillover`: when a group's local backends count as full.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SpilloverConfig {
    /// Requests waiting (not yet running) in every local backend's queue.
    pub queue: Option<u64>,
    /// How long a new request would wait: waiting requests × latency / running ones.
    pub wait: Option<Dur>,
}

impl Default for RouterConfig {
    fn default() -> Self {
        Self {
            strategy: None,
            prefix_index_chunks: 8192,
            num_retries: 2,
            timeout: Dur(Duration::from_secs(600)),
            cooldown: Dur(Duration::from_secs(30)),
            allowed_fails: 3,
            fail_window: Dur(Duration::from_secs(60)),
            retry_policy: BTreeMap::new(),
            allowed_fails_policy: BTreeMap::new(),
            latency_buffer: 0.0,
            fallbacks: BTreeMap::new(),
            context_window_fallbacks: BTreeMap::new(),
            default_fallbacks: Vec::new(),
            max_fallback_depth: 3,
            max_cooldown: Dur(Duration::from_secs(300)),
            max_response_bytes: 64 * 1024 * 1024,
            max_error_bytes: 64 * 1024,
            spillover: None,
            fairness: Fairness::default(),
            queue: QueueConfig::default(),
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    SimpleShuffle,
    LeastBusy,
    LatencyBased,
    UsageBased,
    CostBased,
    /// The backend with the shortest real queue (polled from SGLang's load endpoint).
    LoadBased,
    /// The replica most likely to hold the prompt's prefix in its KV cache.
    PrefixAware,
}

/// The classes of upstream failure that retry and cooldown policies talk about.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[serde(rename_all = "snake_case")]
pub enum ErrorClass {
    Timeout,
    RateLimit,
    InternalServer,
    ServiceUnavailable,
    BadRequest,
    Authentication,
    NotFound,
    ContentPolicy,
    ContextWindow,
    Connection,
    Default,
}

/// The upstream API family a deployment speaks.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    /// OpenAI, or anything that speaks its API (vLLM, llama.cpp server, …).
    Openai,
    /// SGLang: the OpenAI API; with `launch` the gateway starts and supervises it.
    Sglang,
    Azure,
    Anthropic,
    Gemini,
}

impl ProviderKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ProviderKind::Openai => "openai",
            ProviderKind::Sglang => "sglang",
            ProviderKind::Azure => "azure",
            ProviderKind::Anthropic => "anthropic",
            ProviderKind::Gemini => "gemini",
        }
    }
}

/// `[[models]]`: one deployment of a model group (entries sharing `name`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// The model group name clients ask for.
    pub name: Spanned<String>,
    pub provider: ProviderKind,
    /// The upstream's own model id; defaults to `name`.
    pub model: Option<String>,
    /// Deployment id used in logs, headers and `/health`; derived when absent.
    pub id: Option<String>,
    /// Base URL including the version prefix, e.g. `https://api.openai.com/v1`.
    pub api_base: Option<Spanned<String>>,
    /// `env:VAR` or `file:PATH`.
    pub api_key: Option<Spanned<String>>,
    /// Azure OpenAI `api-version`.
    pub api_version: Option<String>,
    pub weight: Option<f64>,
    pub rpm: Option<u64>,
    pub tpm: Option<u64>,
    pub max_parallel: Option<u32>,
    pub timeout: Option<Dur>,
    pub cooldown: Option<Dur>,
    pub context_window: Option<u64>,
    /// Default `max_tokens` for providers that require one (Anthropic).
    pub max_tokens: Option<u64>,
    /// USD per million input tokens.
    pub input_cost_per_mtok: Option<f64>,
    /// USD per million output tokens.
    pub output_cost_per_mtok: Option<f64>,
    /// Drop parameters the provider does not support instead of rejecting the request.
    #[serde(default)]
    pub drop_params: bool,
    /// The upstream serves OpenAI's Responses API (`POST /responses`) itself, so
    /// `/v1/responses` passes through; otherwise it is translated to chat completions.
    /// Default: true for provider `openai` at api.openai.com, false elsewhere.
    pub responses_api: Option<bool>,
    /// Start and supervise this backend inside the job (SGLang or a custom command).
    pub launch: Option<LaunchConfig>,
}

/// `launch = {...}`: a local backend that `serve` starts and supervises.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LaunchConfig {
    pub model_path: Option<String>,
    #[serde(default = "one")]
    pub tp: u32,
    /// GPUs of each replica (on each of its nodes): a count, placed from the GPUs SLURM
    /// gave the job, or device indices (`CUDA_VISIBLE_DEVICES`, shared out among the
    /// replicas, on the gateway's node). Absent: the backend sees what the job sees.
    pub gpus: Option<Spanned<Gpus>>,
    /// Copies of this backend, each its own deployment of the group (`<group>-<i>`),
    /// placed over the job's GPUs and nodes (see `placement`).
    #[serde(default = "one")]
    pub replicas: u32,
    /// Nodes one server spans (SGLang `--nnodes`, `--node-rank`, `--dist-init-addr`);
    /// rank 0 answers requests.
    #[serde(default = "one")]
    pub nnodes: u32,
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Replaces `python -m sglang.launch_server ...`; `{port}`, `{host}`, `{model_path}`
    /// and `{llmgw}` are substituted.
    pub command: Option<Vec<String>>,
    #[serde(default = "default_load_timeout")]
    pub load_timeout: Dur,
}

fn one() -> u32 {
    1
}

/// `launch.gpus`: how many GPUs each replica gets, or which ones.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Gpus {
    Count(u32),
    List(Vec<u32>),
}

impl<'de> Deserialize<'de> for Gpus {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Count(u32),
            List(Vec<u32>),
        }
        match Raw::deserialize(d).map_err(|_| {
            serde::de::Error::custom(
                "expected a GPU count per replica (gpus = 2) or device indices (gpus = [0, 1])",
            )
        })? {
            Raw::Count(n) => Ok(Gpus::Count(n)),
            Raw::List(l) => Ok(Gpus::List(l)),
        }
    }
}

/// Most replicas of one entry, nodes of one server and GPUs of one replica: beyond these
/// a number is a typo, not a cluster.
pub const MAX_REPLICAS: u32 = 256;

pub const MAX_NNODES: u32 = 64;

pub const MAX_GPUS_PER_REPLICA: u32 = 64;

fn default_load_timeout() -> Dur {
    Dur(Duration::from_secs(1800))
}

/// `[cache]`: the exact-match response cache.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheConfig {
    pub enabled: bool,
    /// `default-on` caches every request unless it opts out; `opt-in` only those that ask.
    pub mode: CacheMode,
    pub backend: CacheBackend,
    pub ttl: Dur,
    pub namespace: String,
    pub redis_url: Option<Spanned<String>>,
    /// Redis connect and command timeout (a few ms: a slow Redis is treated as down).
    pub redis_timeout: Dur,
    pub max_entries: u64,
    pub max_bytes: u64,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            mode: CacheMode::DefaultOn,
            backend: CacheBackend::Memory,
            ttl: Dur(Duration::from_secs(3600)),
            namespace: "llmgw".into(),
            redis_url: None,
            redis_timeout: Dur(Duration::from_millis(5)),
            max_entries: 10_000,
            max_bytes: 256 * 1024 * 1024,
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum CacheMode {
    DefaultOn,
    OptIn,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum CacheBackend {
    Memory,
    Redis,
}

/// `[store]`: where virtual keys, teams and spend rows are kept (see `llmgw_gateway::store`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// `postgres://user:password@host:5432/db` (or `env:VAR`) shared by several replicas;
    /// absent = an SQLite file in the state directory.
    pub url: Option<Spanned<String>>,
    /// The SQLite file [default: `<state dir>/llmgw.db`].
    pub path: Option<PathBuf>,
    /// Spend rows kept in memory while the database is unreachable; beyond, rows are
    /// dropped (and counted in /metrics).
    pub buffer_rows: usize,
    /// How often a gateway looks for key changes made by another replica (or, with
    /// SQLite, by the other generation during a renewal handover).
    pub poll_interval: Dur,
    /// How long raw spend rows are kept (`"90d"`, or `"forever"`); older rows are pruned
    /// in small batches, their hourly rollups stay (see `llmgw_gateway::retention`).
    pub retention: Retention,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            url: None,
            path: None,
            buffer_rows: 100_000,
            poll_interval: Dur(Duration::from_millis(250)),
            retention: Retention(Some(Duration::from_secs(90 * 86_400))),
        }
    }
}

/// `[store] retention`: a duration from 1 s (seconds are for tests and benchmarks) up to
/// a year, or `"forever"` (`None`: nothing is pruned).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention(pub Option<Duration>);

impl<'de> Deserialize<'de> for Retention {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let hint = "expected a duration such as \"90d\", \"12h\" or \"30s\" (at least 1s, at most 365d), or \"forever\"";
        let text = String::deserialize(d)
            .map_err(|_| serde::de::Error::custom(format!("[store] retention: {hint}")))?;
        if text.trim() == "forever" {
            return Ok(Retention(None));
        }
        match crate::duration::parse(&text) {
            Ok(v) if v >= Duration::from_secs(1) => Ok(Retention(Some(v))),
            Ok(_) => Err(serde::de::Error::custom(format!(
                "[store] retention {text:?} is too short: {hint}"
            ))),
            Err(e) => Err(serde::de::Error::custom(format!(
                "[store] retention: {e}; {hint}"
            ))),
        }
    }
}

/// `[responses]`: stored Responses API answers (`store`, `previous_response_id`,
/// `GET /v1/responses/{id}`), kept in the `[store]` database.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ResponsesConfig {
    /// How long a stored response is kept (OpenAI keeps them 30 days).
    pub retention: Dur,
    /// What a request without `store` gets: `true`, OpenAI's default (the SDKs and
    /// `previous_response_id` then just work); `false` keeps only what asks for it.
    pub default_store: bool,
}

impl Default for ResponsesConfig {
    fn default() -> Self {
        Self {
            retention: Dur(Duration::from_secs(30 * 86_400)),
            default_store: true,
        }
    }
}

/// `[keys]`: how virtual keys are enforced.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KeysConfig {
    /// Output tokens held against a key's budget and tpm at admission when the request
    /// gives no `max_tokens` (its estimate is settled to the actual when it ends).
    pub default_max_tokens: u64,
    /// End users (the OpenAI `user` field) tracked per key with end-user limits; a new
    /// end user beyond this is refused until the key's idle ones are forgotten.
    pub max_end_users_per_key: usize,
}

impl Default for KeysConfig {
    fn default() -> Self {
        Self {
            default_max_tokens: 4096,
            max_end_users_per_key: 10_000,
        }
    }
}

/// `[slurm]`: the sbatch job `llmgw start` submits.
#[derive(Debug, Clone, Deserialize, serde::Serialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct SlurmConfig {
    pub job_name: Option<String>,
    pub partition: Option<String>,
    pub account: Option<String>,
    pub qos: Option<String>,
    /// SLURM time limit, e.g. `04:00:00` or `1-00:00:00`.
    pub time: Option<String>,
    pub nodes: Option<u32>,
    pub cpus_per_task: Option<u32>,
    pub mem: Option<String>,
    pub gpus: Option<String>,
    pub gres: Option<String>,
    pub constraint: Option<String>,
    /// Extra `#SBATCH` lines, without the prefix, e.g. `--exclusive`.
    pub extra_directives: Vec<String>,
    /// `module load` arguments.
    pub modules: Vec<String>,
    /// Shell lines run before the gateway starts (conda activate, exports, …).
    pub setup: Vec<String>,
    /// A user's own sbatch template instead of the built-in one.
    #[serde(skip_serializing)]
    pub template: Option<PathBuf>,
    /// Host name for the `ssh -N -L` line; detected when absent.
    #[serde(skip_serializing)]
    pub login_host: Option<String>,
    /// The `llmgw` binary the job runs; the running binary's path when absent.
    #[serde(skip_serializing)]
    pub binary: Option<PathBuf>,
    /// Keep the gateway up past its time limit: before the limit the job submits its
    /// successor and hands over to it once that is ready (see `slurm::chain`).
    pub renew: bool,
    /// How long before the time limit the successor is submitted [default: 20m, at most a
    /// quarter of the limit].
    #[serde(skip_serializing)]
    pub renew_before: Option<Spanned<Dur>>,
    /// At most this many renewals over the gateway's life [default: no limit].
    #[serde(skip_serializing)]
    pub renew_max: Option<u32>,
    /// After a handover, how long the old job at most keeps forwarding requests that still
    /// reach its address [default: 2m]; it leaves earlier once they stop coming.
    #[serde(skip_serializing)]
    pub handover_linger: Option<Dur>,
    /// How long a successor may take, once SLURM runs it, to become ready; then the
    /// current job cancels it and submits another with its own config [default: three
    /// times the current job's own load time, at least that plus 30s].
    #[serde(skip_serializing)]
    pub handover_timeout: Option<Spanned<Dur>>,
    /// Stop when idle: a gateway that has had no request for this long drains and ends its
    /// job (COMPLETED, no successor), so an unused gateway does not hold GPUs all night
    /// [default: off].
    #[serde(skip_serializing)]
    pub idle_stop: Option<Spanned<Dur>>,
    /// Start on the first request: `llmgw connect` keeps listening while no job runs, and
    /// the first request submits the job and is held until it is ready.
    #[serde(skip_serializing)]
    pub on_demand: bool,
    /// How long `connect` holds a request while the job is pending or loading; beyond, a
    /// 503 with `Retry-After` naming the job and SLURM's reason [default: 15m].
    #[serde(skip_serializing)]
    pub hold_timeout: Option<Spanned<Dur>>,
    /// While an on-demand start is pending, `connect` serves held requests from the
    /// config's cloud deployments (or fallbacks to cloud groups) [default: true when every
    /// group with local backends has one].
    #[serde(skip_serializing)]
    pub spill_while_pending: Option<bool>,
}

/// A duration written as `"500ms"`, `"30s"`, `"5m"`, `"2h"` or a number of seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Dur(pub Duration);

impl fmt::Display for Dur {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

/// Parses `"500ms"`, `"30s"`, `"5m"`, `"2h"`, `"1d"` or a bare number of seconds, at most
/// a year (see [`crate::duration`]).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    crate::duration::parse(s).map_err(|e| e.to_string())
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(u64),
            Float(f64),
            Str(String),
        }
        match Raw::deserialize(d).map_err(|_| {
            serde::de::Error::custom(
                "expected a duration such as \"30s\", \"5m\" or a number of seconds",
            )
        })? {
            Raw::Int(n) => crate::duration::from_secs_u64(n),
            Raw::Float(f) => crate::duration::from_secs_f64(f),
            Raw::Str(s) => crate::duration::parse(&s),
        }
        .map(Dur)
        .map_err(serde::de::Error::custom)
    }
}

/// Longest connection timeout accepted: anything longer is a typo, and defeats the point.
const MAX_CONNECTION_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

/// A `[server]` connection timeout: a duration between 1 ms and 24 h.
fn connection_timeout<'de, D: Deserializer<'de>>(d: D) -> Result<Dur, D::Error> {
    let dur = Dur::deserialize(d)?;
    if dur.0 < Duration::from_millis(1) || dur.0 > MAX_CONNECTION_TIMEOUT {
        return Err(serde::de::Error::custom(format!(
            "connection timeout {dur} is out of range: use a duration between \"1ms\" and \"24h\""
        )));
    }
    Ok(dur)
}

/// A count that must be at least 1 when given.
fn positive_count<'de, D: Deserializer<'de>>(d: D) -> Result<Option<usize>, D::Error> {
    match usize::deserialize(d)? {
        0 => Err(serde::de::Error::custom(
            "must be at least 1 (leave it out for the default)",
        )),
        n => Ok(Some(n)),
    }
}

/// A config that parsed, validated and had its secrets resolved.
#[derive(Debug, Clone)]
pub struct LoadedConfig {
    pub config: Config,
    /// Where it came from (for error messages and for `start`).
    pub source_name: String,
    pub path: Option<PathBuf>,
    /// The master key, if one is configured.
    pub master_key: Option<Secret>,
    /// Resolved `api_key` per `models` entry (same index).
    pub model_keys: Vec<Option<Secret>>,
    /// Resolved Redis URL (it may carry a password).
    pub redis_url: Option<Secret>,
    /// Resolved `[store] url` (it may carry a password).
    pub store_url: Option<Secret>,
    /// Resolved `[[alerts]] url` per entry (same index; a webhook URL holds a token).
    pub alert_urls: Vec<Secret>,
    /// Resolved `[telemetry] headers` (values may be `env:`/`file:`; never logged).
    pub telemetry_headers: Vec<(String, Secret)>,
    /// What to do when one of its deployments cannot be reached, added to that error
    /// (the built-in quickstart's [`QUICKSTART_HINT`]; none for a config file).
    pub unreachable_hint: Option<&'static str>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_key_names_line_and_column() {
        let text = "[server]\nport = 4000\nbogus = 1\n";
        let err = Config::load_str(text, "x.toml").unwrap_err().to_string();
        assert!(err.starts_with("x.toml:3:1:"), "{err}");
        assert!(err.contains("bogus"), "{err}");
    }

    #[test]
    fn responses_retention_and_default_store() {
        let c = Config::load_str("", "x.toml").unwrap().config.responses;
        assert_eq!(c.retention.0, Duration::from_secs(30 * 86_400));
        assert!(c.default_store);
        let text = "[responses]\nretention = \"7d\"\ndefault_store = false\n";
        let c = Config::load_str(text, "x.toml").unwrap().config.responses;
        assert_eq!(c.retention.0, Duration::from_secs(7 * 86_400));
        assert!(!c.default_store);
        let err = Config::load_str("[responses]\nretention = \"10s\"\n", "x.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("retention"), "{err}");
    }

    #[test]
    fn store_retention_parses_forever_and_refuses_with_a_line() {
        let c = Config::load_str("", "x.toml").unwrap().config.store;
        assert_eq!(c.retention.0, Some(Duration::from_secs(90 * 86_400)));
        let r = |v: &str| {
            Config::load_str(&format!("[store]\nretention = {v}\n"), "x.toml")
                .map(|c| c.config.store.retention.0)
                .map_err(|e| e.to_string())
        };
        assert_eq!(r("\"forever\""), Ok(None));
        assert_eq!(r("\"1m\""), Ok(Some(Duration::from_secs(60))));
        assert_eq!(r("\"5s\""), Ok(Some(Duration::from_secs(5))));
        for bad in ["\"soon\"", "\"0s\"", "\"400d\"", "7"] {
            let err = r(bad).unwrap_err();
            assert!(err.starts_with("x.toml:2:"), "{bad}: {err}");
            assert!(err.contains("forever"), "{bad}: {err}");
        }
    }

    #[test]
    fn wrong_type_names_line() {
        let text = "[server]\nport = \"four\"\n";
        let err = Config::load_str(text, "x.toml").unwrap_err().to_string();
        assert!(err.starts_with("x.toml:2:"), "{err}");
    }

    #[test]
    fn missing_env_var_is_named() {
        let text = "[[models]]\nname = \"m\"\nprovider = \"openai\"\napi_key = \"env:LLMGW_TEST_SURELY_UNSET\"\n";
        let err = Config::load_str(text, "x.toml").unwrap_err().to_string();
        assert!(err.contains("LLMGW_TEST_SURELY_UNSET"), "{err}");
        assert!(err.starts_with("x.toml:4:"), "{err}");
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("3").unwrap(), Duration::from_secs(3));
        assert!(parse_duration("3 fortnights").is_err());
    }

    #[test]
    fn renew_before_is_checked_against_the_time_limit() {
        let cfg = |before: &str| {
            Config::load_str(
                &format!("[server]\nshutdown_grace = \"5s\"\n[slurm]\ntime = \"3\"\nrenew = true\nrenew_before = \"{before}\"\n"),
                "x.toml",
            )
        };
        assert!(cfg("2m").is_ok());
        let err = cfg("150s").unwrap_err().to_string();
        assert!(err.starts_with("x.toml:6:"), "{err}");
        assert!(err.contains("shorter than the time limit"), "{err}");
        let err = cfg("30s").unwrap_err().to_string();
        assert!(err.contains("too short"), "{err}");
    }

    // Issue 24: idle_stop and hold_timeout are bounded, with the line of the value.
    #[test]
    fn scale_to_zero_settings_are_checked() {
        let cfg = |extra: &str| Config::load_str(&format!("[slurm]\n{extra}\n"), "x.toml");
        let ok = cfg("idle_stop = \"1m\"\non_demand = true\nhold_timeout = \"15m\"\nspill_while_pending = false").unwrap();
        assert!(ok.config.slurm.on_demand);
        assert_eq!(ok.config.slurm.spill_while_pending, Some(false));
        let err = cfg("idle_stop = \"10s\"").unwrap_err().to_string();
        assert!(
            err.contains("x.toml:2") && err.contains("idle_stop must be at least 30s"),
            "{err}"
        );
        let err = cfg("hold_timeout = \"0s\"").unwrap_err().to_string();
        assert!(err.contains("hold_timeout must be at least 1s"), "{err}");
        assert!(cfg("on_demand = \"yes\"").is_err());
    }

    // Issue 30: a renew_before too short for a lost successor to be replaced in time is
    // refused, and says why (main accepted anything from 1m).
    #[test]
    fn renew_before_must_leave_room_for_one_retry() {
        let cfg = |extra: &str| {
            Config::load_str(
                &format!("[server]\nshutdown_grace = \"5s\"\n[slurm]\ntime = \"3\"\nrenew = true\n{extra}\n"),
                "x.toml",
            )
        };
        assert!(cfg("renew_before = \"115s\"").is_ok());
        let err = cfg("renew_before = \"114s\"").unwrap_err().to_string();
        assert!(err.starts_with("x.toml:6:"), "{err}");
        assert!(
            err.contains("renew_before (114s) is too short")
                && err.contains("drains 35s before its limit")
                && err.contains("at least 115s"),
            "{err}"
        );
        assert!(cfg("renew_before = \"1m\"").is_err());
        // A longer handover_timeout needs a longer renew_before.
        let err = cfg("renew_before = \"2m\"\nhandover_timeout = \"40s\"")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("handover_timeout 40s") && err.contains("at least 135s"),
            "{err}"
        );
        let err = cfg("renew_before = \"2m\"\nhandover_timeout = \"5s\"")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("handover_timeout must be at least 10s"),
            "{err}"
        );
        // Without renew_before the time limit itself must leave room.
        let short = Config::load_str("[slurm]\ntime = \"2\"\nrenew = true\n", "x.toml")
            .unwrap_err()
            .to_string();
        assert!(short.contains("too short for renew = true"), "{short}");
    }

    #[test]
    fn launch_replicas_gpus_and_nodes_are_checked() {
        let err = |launch: &str| {
            let text =
                format!("[[models]]\nname = \"m\"\nprovider = \"sglang\"\nlaunch = {launch}\n");
            Config::load_str(&text, "x.toml").unwrap_err().to_string()
        };
        let e = err("{ model_path = \"p\", gpus = \"two\" }");
        assert!(
            e.starts_with("x.toml:4:") && e.contains("GPU count per replica"),
            "{e}"
        );
        let e = err("{ model_path = \"p\", replicas = 0 }");
        assert!(
            e.contains("launch.replicas must be between 1 and 256, got 0"),
            "{e}"
        );
        let e = err("{ model_path = \"p\", replicas = 2, gpus = [0, 1, 2] }");
        assert!(
            e.contains("3 GPUs, which 2 replicas cannot share evenly"),
            "{e}"
        );
        let e = err("{ model_path = \"p\", nnodes = 2, gpus = [0] }");
        assert!(e.contains("with nnodes > 1 give a count per node"), "{e}");
        let e = err("{ model_path = \"p\", gpus = [1, 1] }");
        assert!(e.contains("GPU 1 twice"), "{e}");
        let e = err("{ model_path = \"p\", gpus = 0 }");
        assert!(
            e.starts_with("x.toml:4:") && e.contains("between 1 and 64"),
            "{e}"
        );
        let text = "[router]\nspillover = {}\n";
        let e = Config::load_str(text, "x.toml").unwrap_err().to_string();
        assert!(e.contains("spillover needs queue"), "{e}");
    }

    #[test]
    fn quickstart_loads() {
        let q = Config::quickstart().unwrap();
        // The hint names the upstream the quickstart really has.
        let base = q.config.models[0].api_base.as_ref().unwrap().get_ref();
        assert!(base.starts_with("http://127.0.0.1:30000/"), "{base}");
        assert!(QUICKSTART_HINT.contains("127.0.0.1:30000"));
        assert!(QUICKSTART_HINT.contains("--port 30000"));
        assert_eq!(q.unreachable_hint, Some(QUICKSTART_HINT));
        assert_eq!(
            Config::load_str(QUICKSTART, "x.toml")
                .unwrap()
                .unreachable_hint,
            None
        );
    }

    #[test]
    fn secret_debug_hides_value() {
        assert_eq!(format!("{:?}", Secret::new("sk-123")), "Secret(***)");
    }
}
