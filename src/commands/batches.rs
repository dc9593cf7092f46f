//! `llmgw batches list|status|cancel`: the running gateway's batches (`/v1/batches`), seen
//! with the master key (every key's batches). `status --watch` follows one with a
//! progress bar until it is over.

use super::keys::{render_table, Admin, GatewayArgs};
use clap::{Args, Subcommand};
use serde_json::Value;
use std::process::ExitCode;

#[derive(Args, Debug)]
pub struct BatchesArgs {
    #[command(flatten)]
    pub gateway: GatewayArgs,
    #[command(subcommand)]
    pub command: BatchesCommand,
}

#[derive(Subcommand, Debug)]
pub enum BatchesCommand {
    /// The newest batches: status, lines done, failed.
    List {
        /// At most this many.
        #[arg(long, default_value_t = 20)]
        limit: usize,
        #[arg(long)]
        json: bool,
    },
    /// One batch; with --watch a progress bar until it is over.
    Status {
        /// The batch's id (batch_...).
        id: String,
        #[arg(long)]
        watch: bool,
        #[arg(long)]
        json: bool,
    },
    /// Cancel a batch: no new line starts; those running finish and are kept.
    Cancel { id: String },
}

/// The batch's state in a word: `paused` for a batch waiting for a budget.
fn state(b: &Value) -> String {
    let s = b["status"].as_str().unwrap_or("?");
    if s == "in_progress" && b["paused"].is_object() {
        "paused".into()
    } else {
        s.into()
    }
}

fn counts(b: &Value) -> (u64, u64, u64) {
    let c = &b["request_counts"];
    let n = |k: &str| c[k].as_u64().unwrap_or(0);
    (n("total"), n("completed"), n("failed"))
}

fn describe(b: &Value) -> String {
    let (total, done, failed) = counts(b);
    let mut s = format!(
        "{} {}: {done} of {total} lines done, {failed} failed",
        b["id"].as_str().unwrap_or("?"),
        state(b)
    );
    if let Some(why) = b["paused"]["message"].as_str() {
        s.push_str(&format!("\n  paused: {why}"));
    }
    for (k, what) in [("output_file_id", "output"), ("error_file_id", "errors")] {
        if let Some(f) = b[k].as_str() {
            s.push_str(&format!("\n  {what}: {f} (GET /v1/files/{f}/content)"));
        }
    }
    s
}

fn id_ok(id: &str) -> anyhow::Result<&str> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(id)
    } else {
        anyhow::bail!(
            "{id:?} is not a batch id (they look like batch_0123abcd...; see `llmgw batches list`)"
        )
    }
}

pub fn run(args: BatchesArgs) -> anyhow::Result<ExitCode> {
    use reqwest::Method;
    let admin = Admin::connect(&args.gateway)?;
    match args.command {
        BatchesCommand::List { limit, json } => {
            let v = admin.call(
                Method::GET,
                &format!("/v1/batches?limit={}", limit.clamp(1, 10_000)),
                None,
            )?;
            if json {
                println!("{v}");
                return Ok(ExitCode::SUCCESS);
            }
            let data = v["data"].as_array().cloned().unwrap_or_default();
            if data.is_empty() {
                println!("no batches");
                return Ok(ExitCode::SUCCESS);
            }
            let rows: Vec<Vec<String>> = data
                .iter()
                .map(|b| {
                    let (total, done, failed) = counts(b);
                    vec![
                        b["id"].as_str().unwrap_or("").to_string(),
                        state(b),
                        format!("{}/{total}", done + failed),
                        failed.to_string(),
                        b["endpoint"].as_str().unwrap_or("").to_string(),
                        llmgw_core::state::rfc3339(b["created_at"].as_u64().unwrap_or(0)),
                    ]
                })
                .collect();
            print!(
                "{}",
                render_table(
                    &["ID", "STATUS", "DONE", "FAILED", "ENDPOINT", "CREATED"],
                    &rows
                )
            );
        }
        BatchesCommand::Status { id, watch, json } => {
            let path = format!("/v1/batches/{}", id_ok(&id)?);
            let mut b = admin.call(Method::GET, &path, None)?;
            if watch && !json {
                let (total, done, failed) = counts(&b);
                let bar = indicatif::ProgressBar::new(total);
                if let Ok(style) = indicatif::ProgressStyle::with_template(
                    "  {bar:40} {pos}/{len} lines {msg} [{elapsed_precise}, {eta} left]",
                ) {
                    bar.set_style(style);
                }
                bar.set_position(done + failed);
                loop {
                    let (_, done, failed) = counts(&b);
                    bar.set_position(done + failed);
                    bar.set_message(format!("{} ({failed} failed)", state(&b)));
                    if matches!(
                        b["status"].as_str(),
                        Some("completed" | "failed" | "expired" | "cancelled")
                    ) {
                        break;
                    }
                    std::thread::sleep(std::time::Duration::from_secs(1));
                    b = admin.call(Method::GET, &path, None)?;
                }
                bar.finish();
            }
            if json {
                println!("{b}");
            } else {
                println!("{}", describe(&b));
            }
        }
        BatchesCommand::Cancel { id } => {
            let b = admin.call(
                Method::POST,
                &format!("/v1/batches/{}/cancel", id_ok(&id)?),
                None,
            )?;
            println!("{}", describe(&b));
        }
    }
    Ok(ExitCode::SUCCESS)
}
