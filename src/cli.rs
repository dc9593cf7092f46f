//! The command line: the clap definition of `llmgw` and its subcommands (each
//! subcommand's arguments live in `args`, or with the command that owns them).

use crate::args::*;
use clap::{Parser, Subcommand};
use llmgw_core::config::LogFormat;

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
    Serve(llmgw_gateway::serve::ServeArgs),
    /// Virtual keys of the running gateway: create, list, info, update, revoke.
    Keys(Box<crate::commands::keys::KeysArgs>),
    /// Users of the running gateway (a budget and limits over all their keys): create,
    /// list, info, update, delete.
    Users(crate::commands::users::UsersArgs),
    /// What was spent, per key, team, user or model group.
    Spend(crate::commands::spend::SpendArgs),
    /// Batches the running gateway runs (/v1/batches): list, status (--watch), cancel.
    Batches(crate::commands::batches::BatchesArgs),
    /// Check what a first `start` needs on this cluster; each problem with its fix.
    Doctor(DoctorArgs),
    /// Alerts of a config's [[alerts]] entries: `test` sends one of each event.
    Alerts(crate::commands::alerts::AlertsArgs),
    /// A mock OpenAI-compatible upstream for tests, benchmarks and demos.
    #[command(hide = true)]
    MockUpstream(llmgw_mock::MockArgs),
    /// The node agent a multi-node gateway runs on each other node (as a job step).
    #[command(hide = true)]
    Agent(llmgw_cluster::supervise::agent::AgentArgs),
}
