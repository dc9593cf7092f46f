//! The command line: clap definitions and dispatch. Each subcommand lives in its own
//! module; this file only parses arguments and turns errors into one plain line.

use crate::config::LogFormat;
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser, Debug)]
#[command(
    name = "llmgw",
    version = env!("LLMGW_LONG_VERSION"),
    about = "An OpenAI-compatible LLM gateway for SLURM clusters",
    long_about = "An OpenAI-compatible LLM gateway for SLURM clusters.\n\n\
        On a login node, `llmgw start` submits a job whose compute node runs `llmgw serve`: \
        the gateway, with local SGLang model servers it supervises and cloud providers as \
        fallbacks. `status`, `logs` and `stop` manage the job. `serve` also runs directly on \
        any machine without SLURM.",
    after_help = "Typical day:\n  llmgw doctor -c configs/sglang-with-cloud-fallback.toml\n  llmgw start -c configs/sglang-with-cloud-fallback.toml\n  llmgw connect              # or on a laptop: llmgw connect --login you@login.cluster\n  llmgw status\n  llmgw logs -f\n  llmgw restart -c new.toml  # new config or binary, no failed request\n  llmgw stop"
)]
pub struct Cli {
    /// Log format: human-readable text, or one JSON object per line.
    #[arg(long, global = true, value_enum, env = "LLMGW_LOG_FORMAT")]
    pub log_format: Option<LogFormat>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Submit the gateway as a SLURM job and wait until it is ready.
    Start(StartArgs),
    /// Cancel the gateway's job and tidy its state.
    Stop(StopArgs),
    /// Show the job's state, node, time left and every deployment's health.
    Status(StatusArgs),
    /// Print or follow the gateway's log, or one backend's log.
    Logs(LogsArgs),
    /// A stable local address that always reaches the gateway's current job (here or, with
    /// --login, from a laptop through one ssh connection).
    Connect(ConnectArgs),
    /// Start a successor job now (optionally with a new config or binary) and hand over to
    /// it with no failed request.
    Restart(RestartArgs),
    /// Run the gateway in the foreground (what the SLURM job runs; works without SLURM).
    Serve(ServeArgs),
    /// Virtual keys of the running gateway: create, list, info, update, revoke.
    Keys(crate::commands::keys::KeysArgs),
    /// What was spent, per key, team or model group.
    Spend(crate::commands::spend::SpendArgs),
    /// Check what a first `start` needs on this cluster; each problem with its fix.
    Doctor(DoctorArgs),
    /// A mock OpenAI-compatible upstream for tests, benchmarks and demos.
    #[command(hide = true)]
    MockUpstream(crate::mock::MockArgs),
    /// The node agent a multi-node gateway runs on each other node (as a job step).
    #[command(hide = true)]
    Agent(crate::agent::AgentArgs),
}

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
    #[arg(long, default_value_t = crate::commands::connect::DEFAULT_PORT)]
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

fn parse_dur(s: &str) -> Result<std::time::Duration, String> {
    crate::config::parse_duration(s)
}

/// Entry point: parse, run, and print any error as one line.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("llmgw: {}", one_line(&e));
            ExitCode::FAILURE
        }
    }
}

/// Joins an error chain into one line: "outer: inner: cause".
fn one_line(e: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in e.chain() {
        let s = cause.to_string();
        if !parts.iter().any(|p| p.contains(&s)) {
            parts.push(s);
        }
    }
    parts.join(": ")
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Serve(args) => crate::serve::main(args, cli.log_format),
        Command::MockUpstream(args) => crate::mock::main(args),
        Command::Agent(args) => crate::agent::main(args, cli.log_format),
        Command::Start(args) => crate::commands::start::run(args),
        Command::Stop(args) => crate::commands::stop::run(args),
        Command::Status(args) => crate::commands::status::run(args),
        Command::Logs(args) => crate::commands::logs::run(args),
        Command::Keys(args) => crate::commands::keys::run(args),
        Command::Spend(args) => crate::commands::spend::run(args),
        Command::Doctor(args) => crate::commands::doctor::run(args),
        Command::Connect(args) => crate::commands::connect::run(args),
        Command::Restart(args) => crate::commands::restart::run(args),
    }
}
