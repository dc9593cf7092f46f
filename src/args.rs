//! The arguments of the launcher's subcommands (`start`, `stop`, `status`, `logs`,
//! `doctor`, `connect`, `restart`) and the `--name`/`--state-dir` pair they share.

use clap::Args;
use std::path::PathBuf;

/// The local port when none is given.
pub const DEFAULT_PORT: u16 = 4000;

/// Which gateway: its name and where its state lives.
#[derive(Args, Debug, Clone)]
pub struct Target {
    /// Name of the gateway; each name has its own state directory and job.
    #[arg(long, default_value = "default", env = "LLMGW_NAME")]
    pub name: String,
    /// State directory [default: ~/.llmgw/<name>]; must be on a filesystem the compute
    /// nodes see.
    #[arg(long, env = "LLMGW_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct StartArgs {
    /// Config file (TOML).
    #[arg(short, long, default_value = "llmgw.toml")]
    pub config: PathBuf,
    #[command(flatten)]
    pub target: Target,
    /// Print the sbatch script and submit nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Return right after submission instead of waiting until ready.
    #[arg(long)]
    pub no_wait: bool,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
    /// Give up waiting after this long (e.g. 30m); the job keeps running.
    #[arg(long, default_value = "1h", value_parser = parse_dur)]
    pub timeout: std::time::Duration,
}

#[derive(Args, Debug)]
pub struct StopArgs {
    #[command(flatten)]
    pub target: Target,
    /// Stop every gateway under ~/.llmgw.
    #[arg(long, conflicts_with = "name")]
    pub all: bool,
}

#[derive(Args, Debug)]
pub struct StatusArgs {
    #[command(flatten)]
    pub target: Target,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct LogsArgs {
    #[command(flatten)]
    pub target: Target,
    /// Keep printing as the log grows.
    #[arg(short, long)]
    pub follow: bool,
    /// Show this local backend's log instead of the gateway's.
    #[arg(long)]
    pub backend: Option<String>,
    /// How many lines from the end to print first.
    #[arg(short = 'n', long, default_value_t = 50)]
    pub lines: usize,
}

#[derive(Args, Debug)]
pub struct DoctorArgs {
    /// Config file (TOML), as for `start` [default: ./llmgw.toml; without one, the
    /// built-in quickstart that `serve` runs].
    #[arg(short, long)]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub target: Target,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct ConnectArgs {
    #[command(flatten)]
    pub target: Target,
    /// Local port to listen on (0 = any free port).
    #[arg(long, default_value_t = DEFAULT_PORT)]
    pub port: u16,
    /// Local address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    pub bind: String,
    /// Reach the cluster through ssh to this login host (USER@HOST); --state-dir is then a
    /// path on that host [default: ~/.llmgw/<name> there].
    #[arg(long, value_name = "USER@HOST")]
    pub login: Option<String>,
    /// ssh port of the login host.
    #[arg(long, value_name = "PORT")]
    pub ssh_port: Option<u16>,
    /// ssh identity file (ssh -i).
    #[arg(short = 'i', long, value_name = "FILE")]
    pub identity: Option<PathBuf>,
    /// Extra ssh option (ssh -o KEY=VALUE); repeatable.
    #[arg(short = 'o', long = "ssh-option", value_name = "KEY=VALUE")]
    pub ssh_option: Vec<String>,
    /// The config whose `[slurm] on_demand = true` lets the first request start the job
    /// (login node only) [default: the copy `llmgw start` left in the state directory].
    #[arg(short, long)]
    pub config: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct RestartArgs {
    #[command(flatten)]
    pub target: Target,
    /// Run the new job with this config (validated first) instead of the current one.
    #[arg(short, long)]
    pub config: Option<PathBuf>,
    /// Return right after submission instead of waiting until the new job took over.
    #[arg(long)]
    pub no_wait: bool,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
    /// Give up waiting after this long; the new job keeps going.
    #[arg(long, default_value = "1h", value_parser = parse_dur)]
    pub timeout: std::time::Duration,
}

fn parse_dur(s: &str) -> Result<std::time::Duration, String> {
    llmgw_core::config::parse_duration(s)
}
