//! `llmgw spend [--by key|team|user|model] [--since 7d] [--json]`: what was spent, from the
//! running gateway's `/spend/report`.

use super::keys::{render_table, urlencode, Admin, GatewayArgs};
use clap::Args;
use llmgw_gateway::store::GroupBy;
use serde_json::Value;
use std::process::ExitCode;

#[derive(Args, Debug)]
pub struct SpendArgs {
    #[command(flatten)]
    pub gateway: GatewayArgs,
    /// Group by key, team, user or model group.
    #[arg(long, value_enum, default_value = "key")]
    pub by: GroupBy,
    /// From this long ago (7d, 12h) or this date/time (2026-05-01, 2026-05-01T10:00:00Z).
    #[arg(long, default_value = "30d")]
    pub since: String,
    /// Up to this time [default: now].
    #[arg(long)]
    pub until: Option<String>,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: SpendArgs) -> anyhow::Result<ExitCode> {
    let admin = Admin::connect(&args.gateway)?;
    let by = match args.by {
        GroupBy::Key => "key",
        GroupBy::Team => "team",
        GroupBy::User => "user",
        GroupBy::Model => "model",
    };
    let mut path = format!(
        "/spend/report?group_by={by}&start={}",
        urlencode(&args.since)
    );
    if let Some(u) = &args.until {
        path.push_str(&format!("&end={}", urlencode(u)));
    }
    let v = admin.call(reqwest::Method::GET, &path, None)?;
    if args.json {
        println!("{v}");
        return Ok(ExitCode::SUCCESS);
    }
    let groups = v["groups"].as_array().cloned().unwrap_or_default();
    println!(
        "spend by {by}, {} to {}",
        v["start"].as_str().unwrap_or("?"),
        v["end"].as_str().unwrap_or("?")
    );
    if let Some(note) = v["note"].as_str() {
        println!("note: {note}");
    }
    if groups.is_empty() {
        println!("no requests in this period");
        return Ok(ExitCode::SUCCESS);
    }
    let num = |g: &Value, k: &str| g[k].as_i64().unwrap_or(0);
    let mut rows: Vec<Vec<String>> = groups
        .iter()
        .map(|g| {
            let group = g["group"].as_str().unwrap_or("");
            let name = match g["name"].as_str() {
                Some(n) => n.to_string(),
                None if group.is_empty() => "-".into(),
                None => group.to_string(),
            };
            vec![
                name,
                if by == "model" {
                    String::new()
                } else {
                    group.to_string()
                },
                num(g, "requests").to_string(),
                num(g, "prompt_tokens").to_string(),
                num(g, "completion_tokens").to_string(),
                format!("${:.6}", g["spend"].as_f64().unwrap_or(0.0)),
                num(g, "cache_hits").to_string(),
                num(g, "errors").to_string(),
            ]
        })
        .collect();
    let sum = |k: &str| groups.iter().map(|g| num(g, k)).sum::<i64>().to_string();
    rows.push(vec![
        "TOTAL".into(),
        String::new(),
        sum("requests"),
        sum("prompt_tokens"),
        sum("completion_tokens"),
        format!("${:.6}", v["total_spend"].as_f64().unwrap_or(0.0)),
        sum("cache_hits"),
        sum("errors"),
    ]);
    let head = [
        by.to_uppercase(),
        if by == "model" {
            String::new()
        } else {
            "ID".into()
        },
        "REQUESTS".into(),
        "PROMPT TOK".into(),
        "COMPL TOK".into(),
        "SPEND (USD)".into(),
        "CACHE HITS".into(),
        "ERRORS".into(),
    ];
    let head: Vec<&str> = head.iter().map(String::as_str).collect();
    print!("{}", render_table(&head, &rows));
    Ok(ExitCode::SUCCESS)
}
