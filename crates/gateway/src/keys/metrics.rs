//! Keys, teams, users and groups in `/metrics`: requests, tokens, spend and limits, rendered
//! from the counters the request path keeps anyway.

use super::enforce::{Counters, KeyEntry, TeamEntry, UserEntry};
use super::service::*;
use super::{nanos_to_usd, now_s, Limits};
use std::sync::atomic::Ordering;
use std::sync::Arc;

impl KeyService {
    /// Spend, tokens and requests by key alias, team and model group; refusals by
    /// reason; the spend writer's health. Prometheus text.
    pub fn metrics_text(&self) -> String {
        use crate::metrics::{escape, family};
        use std::fmt::Write as _;
        let mut out = String::with_capacity(4096);
        let t = self.table.load();
        let now = now_s();
        let rel = Ordering::Relaxed;
        let mut keys: Vec<&Arc<KeyEntry>> = t.by_id.values().collect();
        keys.sort_by(|a, b| a.rec.id.cmp(&b.rec.id));
        let mut teams: Vec<&Arc<TeamEntry>> = t.teams.values().collect();
        teams.sort_by(|a, b| a.rec.id.cmp(&b.rec.id));
        let mut users: Vec<&Arc<UserEntry>> = t.users.values().collect();
        users.sort_by(|a, b| a.rec.id.cmp(&b.rec.id));
        let user_label = |e: &UserEntry| {
            format!(
                "user=\"{}\",user_id=\"{}\"",
                escape(e.rec.name()),
                escape(&e.rec.id)
            )
        };
        let key_label = |e: &KeyEntry| {
            format!(
                "key=\"{}\",key_id=\"{}\",team=\"{}\"",
                escape(e.rec.name()),
                e.rec.id,
                escape(e.team.as_ref().map_or("", |t| t.rec.name()))
            )
        };
        let team_label = |e: &TeamEntry| {
            format!(
                "team=\"{}\",team_id=\"{}\"",
                escape(e.rec.name()),
                escape(&e.rec.id)
            )
        };
        // (key|team, labels, counters, limits) for every key and team.
        let rows: Vec<(&str, String, &Counters, &Limits)> = keys
            .iter()
            .map(|e| ("key", key_label(e), &*e.counters, &e.rec.limits))
            .chain(
                teams
                    .iter()
                    .map(|e| ("team", team_label(e), &*e.counters, &e.rec.limits)),
            )
            .chain(
                users
                    .iter()
                    .map(|e| ("user", user_label(e), &*e.counters, &e.rec.limits)),
            )
            .collect();
        type Metric = (
            &'static str,
            &'static str,
            &'static str,
            fn(&Counters, &Limits, u64) -> String,
        );
        let metrics: [Metric; 5] = [
            (
                "requests_total",
                "counter",
                "Requests admitted since the gateway started",
                |c, _, _| c.requests_total.load(Ordering::Relaxed).to_string(),
            ),
            (
                "prompt_tokens_total",
                "counter",
                "Prompt tokens since the gateway started",
                |c, _, _| c.prompt_tokens_total.load(Ordering::Relaxed).to_string(),
            ),
            (
                "completion_tokens_total",
                "counter",
                "Completion tokens since the gateway started",
                |c, _, _| {
                    c.completion_tokens_total
                        .load(Ordering::Relaxed)
                        .to_string()
                },
            ),
            (
                "spend_usd_total",
                "counter",
                "USD spent since the gateway started",
                |c, _, _| format!("{:.9}", nanos_to_usd(c.spend_total.load(Ordering::Relaxed))),
            ),
            (
                "period_spend_usd",
                "gauge",
                "USD spent in the current budget period",
                |c, l, now| format!("{:.9}", nanos_to_usd(c.spend_in(l.period(now).1))),
            ),
        ];
        // Users' families only once there are users (older dashboards see no change).
        let levels: &[&str] = if users.is_empty() {
            &["key", "team"]
        } else {
            &["key", "team", "user"]
        };
        for &who in levels {
            for (suffix, kind, help, value) in &metrics {
                let name = format!("llmgw_{who}_{suffix}");
                family(&mut out, &name, kind, &format!("{help}, per {who}"));
                for (_, labels, c, l) in rows.iter().filter(|r| r.0 == who) {
                    let _ = writeln!(out, "{name}{{{labels}}} {}", value(c, l, now));
                }
            }
        }
        let mut groups: Vec<(&String, &crate::spend::GroupTotals)> =
            self.spend.groups.iter().collect();
        groups.sort_by(|a, b| a.0.cmp(b.0));
        type GroupMetric = (
            &'static str,
            &'static str,
            fn(&crate::spend::GroupTotals) -> String,
        );
        let gm: [GroupMetric; 5] = [
            ("requests_total", "Requests", |g| {
                g.requests.load(Ordering::Relaxed).to_string()
            }),
            ("prompt_tokens_total", "Prompt tokens", |g| {
                g.prompt_tokens.load(Ordering::Relaxed).to_string()
            }),
            ("completion_tokens_total", "Completion tokens", |g| {
                g.completion_tokens.load(Ordering::Relaxed).to_string()
            }),
            ("spend_usd_total", "USD spent", |g| {
                format!("{:.9}", nanos_to_usd(g.spend.load(Ordering::Relaxed)))
            }),
            (
                "cache_hits_total",
                "Requests answered from the cache",
                |g| g.cache_hits.load(Ordering::Relaxed).to_string(),
            ),
        ];
        for (suffix, help, value) in gm {
            let name = format!("llmgw_model_group_{suffix}");
            family(
                &mut out,
                &name,
                "counter",
                &format!("{help} per model group since the gateway started"),
            );
            for (g, totals) in &groups {
                let _ = writeln!(
                    out,
                    "{name}{{model_group=\"{}\"}} {}",
                    escape(g),
                    value(totals)
                );
            }
        }
        family(
            &mut out,
            "llmgw_key_rejections_total",
            "counter",
            "Requests refused by key checks, by reason",
        );
        for (reason, n) in super::enforce::rejections() {
            let _ = writeln!(
                out,
                "llmgw_key_rejections_total{{reason=\"{}\"}} {n}",
                reason.as_str()
            );
        }
        let st = &self.spend.stats;
        for (name, kind, help, v) in [
            (
                "llmgw_spend_rows_buffered",
                "gauge",
                "Spend rows waiting to be written (the store is slow or down)",
                st.buffered.load(rel),
            ),
            (
                "llmgw_spend_rows_written_total",
                "counter",
                "Spend rows written to the store",
                st.written.load(rel),
            ),
            (
                "llmgw_spend_rows_dropped_total",
                "counter",
                "Spend rows lost because the buffer was full",
                st.dropped.load(rel),
            ),
            (
                "llmgw_store_write_errors_total",
                "counter",
                "Failed writes to the store",
                st.write_errors.load(rel),
            ),
            (
                "llmgw_store_up",
                "gauge",
                "1 when the last write to the store succeeded",
                u64::from(st.store_up.load(rel)),
            ),
        ] {
            family(&mut out, name, kind, help);
            let _ = writeln!(out, "{name} {v}");
        }
        out
    }
}
