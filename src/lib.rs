//! llmgw: one binary that runs an OpenAI-compatible LLM gateway (`serve`) and manages it
//! as a SLURM job (`start`, `status`, `logs`, `stop`). This crate is the command line over
//! the library crates (see ARCHITECTURE.md for the map); its modules are re-exported here
//! under their old names for the integration tests and benchmarks.

// Errors carry the message the client will read; they are built only on failure paths.
#![allow(clippy::result_large_err)]

pub mod args;
pub mod cli;
pub mod commands;

pub use llmgw_cluster::{placement, renew, slurm, supervise};
pub use llmgw_core::{clock, config, duration, error, heavy, logging, redact, state};
pub use llmgw_gateway::{
    access, admin, apis, cache, conn, keys, metrics, relay, serve, spend, store, telemetry,
};
pub use llmgw_mock as mock;
pub use llmgw_mock::cloud as mock_cloud;
pub use llmgw_router as router;
pub use llmgw_wire::{convert, hub, providers, request, upstream, upstream_error};

use clap::Parser as _;
use cli::{Cli, Command};
use std::process::ExitCode;

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
        Command::Serve(args) => llmgw_gateway::serve::main(args, cli.log_format),
        Command::MockUpstream(args) => llmgw_mock::main(args),
        Command::Agent(args) => llmgw_cluster::supervise::agent::main(args, cli.log_format),
        Command::Start(args) => crate::commands::start::run(args),
        Command::Stop(args) => crate::commands::stop::run(args),
        Command::Status(args) => crate::commands::status::run(args),
        Command::Logs(args) => crate::commands::logs::run(args),
        Command::Keys(args) => crate::commands::keys::run(*args),
        Command::Spend(args) => crate::commands::spend::run(args),
        Command::Users(args) => crate::commands::users::run(args),
        Command::Batches(args) => crate::commands::batches::run(args),
        Command::Doctor(args) => crate::commands::doctor::run(args),
        Command::Alerts(args) => crate::commands::alerts::run(args),
        Command::Connect(args) => crate::commands::connect::run(args),
        Command::Restart(args) => crate::commands::restart::run(args),
    }
}
