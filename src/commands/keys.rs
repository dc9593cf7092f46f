//! `llmgw keys create|list|info|update|revoke`: virtual keys through the running
//! gateway's admin API. The gateway is found like `status` finds it: `endpoint.json` in
//! the state directory, the master key from its `key` file (or `LLMGW_MASTER_KEY`, or
//! `--url` for a gateway without a state directory).

use crate::args::Target;
use anyhow::Context as _;
use clap::{Args, Subcommand};
use serde_json::{json, Map, Value};
use std::process::ExitCode;

#[derive(Args, Debug)]
pub struct KeysArgs {
    #[command(subcommand)]
    pub command: KeysCommand,
    #[command(flatten)]
    pub gateway: GatewayArgs,
}

/// Which gateway to talk to (before or after the subcommand).
#[derive(Args, Debug, Clone)]
pub struct GatewayArgs {
    /// Name of the gateway.
    #[arg(long, default_value = "default", env = "LLMGW_NAME", global = true)]
    pub name: String,
    /// Its state directory [default: ~/.llmgw/<name>].
    #[arg(long, env = "LLMGW_STATE_DIR", global = true)]
    pub state_dir: Option<std::path::PathBuf>,
    /// The gateway's URL (e.g. http://gpu113:4000) instead of its state directory's
    /// endpoint record.
    #[arg(long, env = "LLMGW_URL", global = true)]
    pub url: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum KeysCommand {
    /// Create a key; it is printed once and never again.
    Create {
        #[command(flatten)]
        fields: KeyFields,
        #[arg(long)]
        json: bool,
    },
    /// List keys with their limits and this period's spend.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Show one key.
    Info {
        /// The key, its id or its alias.
        key: String,
        #[arg(long)]
        json: bool,
    },
    /// Change a key's limits (a value of `none` removes a limit).
    Update {
        /// The key, its id or its alias.
        key: String,
        #[command(flatten)]
        fields: KeyFields,
        /// Refuse the key from now on (same as `revoke`).
        #[arg(long, conflicts_with = "unblock")]
        block: bool,
        /// Accept a revoked key again.
        #[arg(long)]
        unblock: bool,
        #[arg(long)]
        json: bool,
    },
    /// Refuse a key from now on (every replica within a second); its spend history stays.
    Revoke {
        /// The key, its id or its alias.
        key: String,
        /// Delete the key's record instead of blocking it.
        #[arg(long)]
        delete: bool,
    },
}

/// A key's settings on the command line.
#[derive(Args, Debug, Default)]
pub struct KeyFields {
    /// A name for the key (shown in errors, lists and metrics).
    #[arg(long)]
    pub alias: Option<String>,
    /// Allowed model groups, comma separated (wildcards: `gpt-*`); `all` = every group.
    #[arg(long)]
    pub models: Option<String>,
    /// Budget in USD per period (`none` = no budget).
    #[arg(long)]
    pub max_budget: Option<String>,
    /// USD per period past which a `soft_budget` alert is sent ([[alerts]]); nothing is
    /// refused (`none` = no soft budget).
    #[arg(long)]
    pub soft_budget: Option<String>,
    /// Budget period: 30s, 1h, 1d, 30d (`none` = the budget never resets).
    #[arg(long)]
    pub budget_duration: Option<String>,
    /// Requests per minute.
    #[arg(long)]
    pub rpm: Option<String>,
    /// Tokens per minute.
    #[arg(long)]
    pub tpm: Option<String>,
    /// Requests in flight at once.
    #[arg(long)]
    pub max_parallel: Option<String>,
    /// The fair queue's class for requests that name none: interactive, default, batch
    /// or 0-255 (`none` = the team's, else default).
    #[arg(long)]
    pub priority: Option<String>,
    /// The highest class the key's requests may ask for (`none` = no cap).
    #[arg(long)]
    pub max_priority: Option<String>,
    /// The key's share of a busy group against other keys, 1-1000 (`none` = 1).
    #[arg(long)]
    pub weight: Option<String>,
    /// The key's team (its budget and limits apply too).
    #[arg(long)]
    pub team: Option<String>,
    /// The key's user (created with `llmgw users create`): its budget and limits apply
    /// too, counted over all its keys.
    #[arg(long)]
    pub user: Option<String>,
    /// Budget in USD per period for each end user of the key (the request's `user`).
    #[arg(long)]
    pub end_user_max_budget: Option<String>,
    /// The end users' budget period: 30s, 1h, 1d, 30d.
    #[arg(long)]
    pub end_user_budget_duration: Option<String>,
    /// Requests per minute for each end user.
    #[arg(long)]
    pub end_user_rpm: Option<String>,
    /// Tokens per minute for each end user.
    #[arg(long)]
    pub end_user_tpm: Option<String>,
    /// Lifetime from now, e.g. 30d (`none` = never expires).
    #[arg(long)]
    pub expires: Option<String>,
    /// Metadata as a JSON object.
    #[arg(long)]
    pub metadata: Option<String>,
}

impl KeyFields {
    /// The admin API body for these flags.
    pub fn body(&self) -> anyhow::Result<Map<String, Value>> {
        let mut m = Map::new();
        let none = |s: &str| s.eq_ignore_ascii_case("none");
        let text = |m: &mut Map<String, Value>, k: &str, v: &Option<String>| {
            if let Some(v) = v {
                m.insert(k.into(), if none(v) { Value::Null } else { json!(v) });
            }
        };
        text(&mut m, "key_alias", &self.alias);
        text(&mut m, "team_id", &self.team);
        text(&mut m, "user_id", &self.user);
        text(&mut m, "budget_duration", &self.budget_duration);
        text(
            &mut m,
            "end_user_budget_duration",
            &self.end_user_budget_duration,
        );
        text(&mut m, "duration", &self.expires);
        text(&mut m, "priority", &self.priority);
        text(&mut m, "max_priority", &self.max_priority);
        if let Some(models) = &self.models {
            let v = if models == "all" || none(models) {
                Value::Null
            } else {
                json!(models
                    .split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .collect::<Vec<_>>())
            };
            m.insert("models".into(), v);
        }
        for (flag, key, b) in [
            ("--max-budget", "max_budget", &self.max_budget),
            (
                "--end-user-max-budget",
                "end_user_max_budget",
                &self.end_user_max_budget,
            ),
            ("--soft-budget", "soft_budget", &self.soft_budget),
        ] {
            let Some(b) = b else { continue };
            let v = if none(b) {
                Value::Null
            } else {
                let usd: f64 = b
                    .trim_start_matches('$')
                    .parse()
                    .with_context(|| format!("{flag} {b:?} is not a number of USD (e.g. 0.50)"))?;
                json!(usd)
            };
            m.insert(key.into(), v);
        }
        for (flag, key, v) in [
            ("--rpm", "rpm_limit", &self.rpm),
            ("--tpm", "tpm_limit", &self.tpm),
            ("--end-user-rpm", "end_user_rpm_limit", &self.end_user_rpm),
            ("--end-user-tpm", "end_user_tpm_limit", &self.end_user_tpm),
            ("--weight", "weight", &self.weight),
            (
                "--max-parallel",
                "max_parallel_requests",
                &self.max_parallel,
            ),
        ] {
            if let Some(v) = v {
                let val = if none(v) {
                    Value::Null
                } else {
                    json!(v
                        .parse::<u64>()
                        .with_context(|| format!("{flag} {v:?} is not a whole number"))?)
                };
                m.insert(key.into(), val);
            }
        }
        if let Some(md) = &self.metadata {
            let v: Value = serde_json::from_str(md)
                .with_context(|| format!("--metadata is not JSON: {md}"))?;
            m.insert("metadata".into(), v);
        }
        Ok(m)
    }
}

/// The running gateway's admin API.
pub struct Admin {
    base: String,
    key: Option<llmgw_core::config::Secret>,
    client: reqwest::Client,
    rt: tokio::runtime::Runtime,
}

impl Admin {
    /// Finds the gateway (endpoint record or `--url`) and its master key.
    pub fn connect(g: &GatewayArgs) -> anyhow::Result<Admin> {
        let (name, dir) = super::target_dir(&Target {
            name: g.name.clone(),
            state_dir: g.state_dir.clone(),
        })?;
        let base = match &g.url {
            Some(u) => u.trim_end_matches('/').trim_end_matches("/v1").to_string(),
            None => {
                let ep = llmgw_core::state::EndpointRecord::read(&dir)
                    .with_context(|| format!("cannot read {}", dir.join(llmgw_core::state::ENDPOINT_FILE).display()))?
                    .with_context(|| {
                        format!(
                            "gateway {name:?} is not running (no endpoint record in {}); start it with `llmgw start`, or give --url",
                            dir.display()
                        )
                    })?;
                ep.base_url()
            }
        };
        let key = std::env::var("LLMGW_MASTER_KEY")
            .ok()
            .filter(|k| !k.trim().is_empty())
            .map(|k| llmgw_core::config::Secret::new(k.trim()))
            .or_else(|| super::api_key(&dir));
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(30))
            .connect_timeout(std::time::Duration::from_secs(3))
            .no_proxy()
            .build()
            .context("cannot build an HTTP client")?;
        Ok(Admin {
            base,
            key,
            client,
            rt: super::runtime()?,
        })
    }

    /// One admin call; an error answer becomes its message.
    pub fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        let url = format!("{}{path}", self.base);
        let mut req = self.client.request(method, &url);
        if let Some(k) = &self.key {
            req = req.bearer_auth(k.expose());
        }
        if let Some(b) = body {
            req = req
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(b.to_string());
        }
        self.rt.block_on(async {
            let resp = req.send().await.map_err(|e| {
                anyhow::anyhow!(
                    "cannot reach the gateway at {}: {}",
                    self.base,
                    if e.is_timeout() { "timed out" } else if e.is_connect() { "connection refused" } else { "request failed" }
                )
            })?;
            let status = resp.status();
            let text = resp.text().await.unwrap_or_default();
            let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
            if !status.is_success() {
                let msg = v["error"]["message"].as_str().unwrap_or(&text).to_string();
                let hint = if status == reqwest::StatusCode::UNAUTHORIZED {
                    " (the master key is read from the state directory's key file or LLMGW_MASTER_KEY)"
                } else {
                    ""
                };
                anyhow::bail!("{}: {msg}{hint}", status.as_u16());
            }
            Ok(v)
        })
    }
}

pub fn run(args: KeysArgs) -> anyhow::Result<ExitCode> {
    use reqwest::Method;
    let admin = Admin::connect(&args.gateway)?;
    match args.command {
        KeysCommand::Create { fields, json } => {
            let v = admin.call(
                Method::POST,
                "/key/generate",
                Some(Value::Object(fields.body()?)),
            )?;
            if json {
                println!("{v}");
            } else {
                println!(
                    "created key {} (id {})\n\n  {}\n\nThis is the only time the key is shown: give it to its user \
                     (export OPENAI_API_KEY=...).",
                    v["key_alias"].as_str().map_or_else(|| "(no alias)".to_string(), |a| format!("{a:?}")),
                    v["token"].as_str().unwrap_or(""),
                    v["key"].as_str().unwrap_or("")
                );
                print!("{}", table(std::slice::from_ref(&v)));
            }
        }
        KeysCommand::List { json } => {
            let v = admin.call(Method::GET, "/key/list", None)?;
            if json {
                println!("{v}");
            } else {
                let keys = v["keys"].as_array().cloned().unwrap_or_default();
                if keys.is_empty() {
                    println!("no keys yet; create one with `llmgw keys create --alias NAME --models GROUP`");
                } else {
                    print!("{}", table(&keys));
                }
            }
        }
        KeysCommand::Info { key, json } => {
            let v = admin.call(
                Method::GET,
                &format!("/key/info?key={}", urlencode(&key)),
                None,
            )?;
            if json {
                println!("{v}");
            } else {
                print!("{}", table(std::slice::from_ref(&v["info"])));
            }
        }
        KeysCommand::Update {
            key,
            fields,
            block,
            unblock,
            json,
        } => {
            let mut body = fields.body()?;
            if block || unblock {
                body.insert("blocked".into(), Value::Bool(block));
            }
            body.insert("key".into(), Value::String(key));
            let v = admin.call(Method::POST, "/key/update", Some(Value::Object(body)))?;
            if json {
                println!("{v}");
            } else {
                print!("{}", table(std::slice::from_ref(&v)));
            }
        }
        KeysCommand::Revoke { key, delete } => {
            if delete {
                admin.call(Method::POST, "/key/delete", Some(json!({"keys": [key]})))?;
                println!("deleted key {key:?}");
            } else {
                let v = admin.call(Method::POST, "/key/block", Some(json!({"key": key})))?;
                println!(
                    "revoked key {:?} (id {}): it is refused from now on; `llmgw keys update {} --unblock` accepts it again",
                    v["key_alias"].as_str().unwrap_or(&key),
                    v["token"].as_str().unwrap_or(""),
                    v["token"].as_str().unwrap_or("")
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Percent-encodes a query value.
pub fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

pub fn opt(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Keys as an aligned table.
fn table(keys: &[Value]) -> String {
    let rows: Vec<Vec<String>> =
        keys.iter()
            .map(|k| {
                let models = k["models"].as_array().filter(|m| !m.is_empty()).map_or(
                    "all".to_string(),
                    |m| {
                        m.iter()
                            .filter_map(|x| x.as_str())
                            .collect::<Vec<_>>()
                            .join(",")
                    },
                );
                let budget = match k["max_budget"].as_f64() {
                    Some(b) => format!(
                        "${:.4} of ${b:.4}{}",
                        k["spend"].as_f64().unwrap_or(0.0),
                        k["budget_duration"]
                            .as_str()
                            .map_or(String::new(), |d| format!(" / {d}"))
                    ),
                    None => format!("${:.4}", k["spend"].as_f64().unwrap_or(0.0)),
                };
                let expired = k["expires"]
                    .as_str()
                    .is_some_and(|e| e < llmgw_core::state::now_rfc3339().as_str());
                let status = if k["blocked"].as_bool() == Some(true) {
                    "revoked"
                } else if expired {
                    "expired"
                } else {
                    "active"
                };
                vec![
                    opt(&k["key_alias"]),
                    opt(&k["token"]),
                    opt(&k["team_id"]),
                    models,
                    budget,
                    opt(&k["rpm_limit"]),
                    opt(&k["tpm_limit"]),
                    opt(&k["max_parallel_requests"]),
                    opt(&k["expires"]),
                    status.into(),
                ]
            })
            .collect();
    render_table(
        &[
            "ALIAS",
            "ID",
            "TEAM",
            "MODELS",
            "SPEND (period)",
            "RPM",
            "TPM",
            "PARALLEL",
            "EXPIRES",
            "STATUS",
        ],
        &rows,
    )
}

/// Left-aligned columns separated by two spaces.
pub fn render_table(head: &[&str], rows: &[Vec<String>]) -> String {
    let mut width: Vec<usize> = head.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            width[i] = width[i].max(c.chars().count());
        }
    }
    let mut out = String::new();
    let line = |cells: Vec<&str>, out: &mut String| {
        let mut l = String::new();
        for (i, c) in cells.iter().enumerate() {
            l.push_str(c);
            if i + 1 < cells.len() {
                l.push_str(&" ".repeat(width[i] - c.chars().count() + 2));
            }
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(head.to_vec(), &mut out);
    for r in rows {
        line(r.iter().map(String::as_str).collect(), &mut out);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_become_an_admin_body() {
        let f = KeyFields {
            alias: Some("alice".into()),
            models: Some("local, gpt-*".into()),
            max_budget: Some("$0.01".into()),
            soft_budget: Some("0.005".into()),
            rpm: Some("none".into()),
            ..KeyFields::default()
        };
        let b = Value::Object(f.body().unwrap());
        assert_eq!(
            b,
            json!({"key_alias": "alice", "models": ["local", "gpt-*"], "max_budget": 0.01, "soft_budget": 0.005, "rpm_limit": null})
        );
        let bad = KeyFields {
            tpm: Some("lots".into()),
            ..KeyFields::default()
        };
        assert!(bad.body().unwrap_err().to_string().contains("--tpm"));
    }

    #[test]
    fn tables_align() {
        let t = render_table(&["A", "BB"], &[vec!["xyz".into(), "1".into()]]);
        assert_eq!(t, "A    BB\nxyz  1\n");
        assert_eq!(urlencode("a b/é"), "a%20b%2F%C3%A9");
    }
}
