//! `llmgw users create|list|info|update|delete`: users (a budget and limits shared by all
//! their keys) through the running gateway's admin API, found as `llmgw keys` finds it.

use super::keys::{opt, render_table, urlencode, Admin, GatewayArgs, KeyFields};
use clap::{Args, Subcommand};
use serde_json::{json, Map, Value};
use std::process::ExitCode;

#[derive(Args, Debug)]
pub struct UsersArgs {
    #[command(subcommand)]
    pub command: UsersCommand,
    #[command(flatten)]
    pub gateway: GatewayArgs,
}

#[derive(Subcommand, Debug)]
pub enum UsersCommand {
    /// Create a user; give its keys `--user ID` (`llmgw keys create --user ID`).
    Create {
        /// The user's id (e.g. a login name).
        user: String,
        #[command(flatten)]
        fields: UserFields,
        #[arg(long)]
        json: bool,
    },
    /// List users with their limits, this period's spend and how many keys they have.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Show one user and its keys.
    Info {
        user: String,
        #[arg(long)]
        json: bool,
    },
    /// Change a user's limits (a value of `none` removes a limit).
    Update {
        user: String,
        #[command(flatten)]
        fields: UserFields,
        /// Refuse every key of the user from now on.
        #[arg(long, conflicts_with = "unblock")]
        block: bool,
        /// Accept the user's keys again.
        #[arg(long)]
        unblock: bool,
        #[arg(long)]
        json: bool,
    },
    /// Delete a user (refused while keys name it, unless --delete-keys).
    Delete {
        user: String,
        /// Delete the user's keys too.
        #[arg(long)]
        delete_keys: bool,
    },
}

/// A user's settings on the command line.
#[derive(Args, Debug, Default)]
pub struct UserFields {
    /// A display name.
    #[arg(long)]
    pub alias: Option<String>,
    /// Allowed model groups, comma separated (wildcards: `gpt-*`); `all` = every group.
    #[arg(long)]
    pub models: Option<String>,
    /// Budget in USD per period over all the user's keys (`none` = no budget).
    #[arg(long)]
    pub max_budget: Option<String>,
    /// Budget period: 30s, 1h, 1d, 30d (`none` = the budget never resets).
    #[arg(long)]
    pub budget_duration: Option<String>,
    /// Requests per minute over all the user's keys.
    #[arg(long)]
    pub rpm: Option<String>,
    /// Tokens per minute over all the user's keys.
    #[arg(long)]
    pub tpm: Option<String>,
    /// Requests in flight at once over all the user's keys.
    #[arg(long)]
    pub max_parallel: Option<String>,
}

impl UserFields {
    /// The admin API body for these flags (the keys' flags, renamed where users differ).
    fn body(self) -> anyhow::Result<Map<String, Value>> {
        let mut m = KeyFields {
            models: self.models,
            max_budget: self.max_budget,
            budget_duration: self.budget_duration,
            rpm: self.rpm,
            tpm: self.tpm,
            max_parallel: self.max_parallel,
            ..KeyFields::default()
        }
        .body()?;
        if let Some(a) = self.alias {
            let v = if a.eq_ignore_ascii_case("none") {
                Value::Null
            } else {
                json!(a)
            };
            m.insert("user_alias".into(), v);
        }
        Ok(m)
    }
}

pub fn run(args: UsersArgs) -> anyhow::Result<ExitCode> {
    use reqwest::Method;
    let admin = Admin::connect(&args.gateway)?;
    let show = |v: &Value, json: bool| {
        if json {
            println!("{v}");
        } else {
            print!("{}", table(std::slice::from_ref(v)));
        }
    };
    match args.command {
        UsersCommand::Create { user, fields, json } => {
            let mut body = fields.body()?;
            body.insert("user_id".into(), Value::String(user.clone()));
            let v = admin.call(Method::POST, "/user/new", Some(Value::Object(body)))?;
            if !json {
                println!(
                    "created user {user:?}; give it keys with `llmgw keys create --user {user}`"
                );
            }
            show(&v, json);
        }
        UsersCommand::List { json } => {
            let v = admin.call(Method::GET, "/user/list", None)?;
            if json {
                println!("{v}");
            } else {
                let users = v["users"].as_array().cloned().unwrap_or_default();
                if users.is_empty() {
                    println!(
                        "no users yet; create one with `llmgw users create NAME --max-budget 10`"
                    );
                } else {
                    print!("{}", table(&users));
                }
            }
        }
        UsersCommand::Info { user, json } => {
            let v = admin.call(
                Method::GET,
                &format!("/user/info?user_id={}", urlencode(&user)),
                None,
            )?;
            if json {
                println!("{v}");
            } else {
                let mut u = v["user_info"].clone();
                u["keys"] = json!(v["keys"].as_array().map_or(0, Vec::len));
                print!("{}", table(std::slice::from_ref(&u)));
            }
        }
        UsersCommand::Update {
            user,
            fields,
            block,
            unblock,
            json,
        } => {
            let mut body = fields.body()?;
            if block || unblock {
                body.insert("blocked".into(), Value::Bool(block));
            }
            body.insert("user_id".into(), Value::String(user));
            let v = admin.call(Method::POST, "/user/update", Some(Value::Object(body)))?;
            show(&v, json);
        }
        UsersCommand::Delete { user, delete_keys } => {
            let v = admin.call(
                Method::POST,
                "/user/delete",
                Some(json!({"user_ids": [user], "delete_keys": delete_keys})),
            )?;
            let keys = v["deleted_keys"].as_array().map_or(0, Vec::len);
            println!("deleted user {user:?} and {keys} key(s)");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Users as an aligned table.
fn table(users: &[Value]) -> String {
    let rows: Vec<Vec<String>> = users
        .iter()
        .map(|u| {
            let models =
                u["models"]
                    .as_array()
                    .filter(|m| !m.is_empty())
                    .map_or("all".to_string(), |m| {
                        m.iter()
                            .filter_map(|x| x.as_str())
                            .collect::<Vec<_>>()
                            .join(",")
                    });
            let spend = u["spend"].as_f64().unwrap_or(0.0);
            let budget = match u["max_budget"].as_f64() {
                Some(b) => format!(
                    "${spend:.4} of ${b:.4}{}",
                    u["budget_duration"]
                        .as_str()
                        .map_or(String::new(), |d| format!(" / {d}"))
                ),
                None => format!("${spend:.4}"),
            };
            vec![
                opt(&u["user_id"]),
                opt(&u["user_alias"]),
                models,
                budget,
                opt(&u["rpm_limit"]),
                opt(&u["tpm_limit"]),
                opt(&u["max_parallel_requests"]),
                opt(&u["keys"]),
                if u["blocked"].as_bool() == Some(true) {
                    "blocked".into()
                } else {
                    "active".into()
                },
            ]
        })
        .collect();
    render_table(
        &[
            "USER",
            "ALIAS",
            "MODELS",
            "SPEND (period)",
            "RPM",
            "TPM",
            "PARALLEL",
            "KEYS",
            "STATUS",
        ],
        &rows,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_flags_become_an_admin_body() {
        let f = UserFields {
            alias: Some("Alice".into()),
            max_budget: Some("5".into()),
            rpm: Some("none".into()),
            ..UserFields::default()
        };
        assert_eq!(
            Value::Object(f.body().unwrap()),
            json!({"user_alias": "Alice", "max_budget": 5.0, "rpm_limit": null})
        );
    }
}
