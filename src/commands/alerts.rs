//! `llmgw alerts test -c FILE`: one alert of each event every `[[alerts]]` entry takes,
//! posted to its URL now, so a webhook can be checked before anything goes wrong.

use clap::{Args, Subcommand};
use llmgw_core::config::Config;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Args, Debug)]
pub struct AlertsArgs {
    #[command(subcommand)]
    pub command: AlertsCommand,
}

#[derive(Subcommand, Debug)]
pub enum AlertsCommand {
    /// Send one alert of each event to every [[alerts]] URL of the config.
    Test {
        /// The gateway's config file.
        #[arg(short, long)]
        config: PathBuf,
    },
}

pub fn run(args: AlertsArgs) -> anyhow::Result<ExitCode> {
    let AlertsCommand::Test { config } = args.command;
    let cfg = Config::load(&config)?;
    if cfg.config.alerts.is_empty() {
        anyhow::bail!(
            "{} has no [[alerts]] entry: add one with url, kind and events (see README)",
            config.display()
        );
    }
    let rt = super::runtime()?;
    let results = rt.block_on(llmgw_gateway::alerts::send_test(&cfg));
    let mut failed = 0;
    for (entry, event, outcome) in &results {
        match outcome {
            Ok(()) => println!("✔ [[alerts]] entry {entry}: {} sent", event.as_str()),
            Err(why) => {
                failed += 1;
                println!(
                    "✘ [[alerts]] entry {entry}: {} not delivered: {why}",
                    event.as_str()
                );
            }
        }
    }
    if failed > 0 {
        anyhow::bail!(
            "{failed} of {} test alerts were not delivered",
            results.len()
        );
    }
    Ok(ExitCode::SUCCESS)
}
