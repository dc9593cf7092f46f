//! Spend as the admin API reports it: `/spend/logs` (the newest rows) and
//! `/spend/report` (totals per key, team, user or model group), and the time ranges
//! they take.

use super::admin_ops::store_err;
use super::service::KeyService;
use super::{nanos_to_usd, parse_period};
use crate::store::{GroupBy, LogQuery, ReportRow};
use llmgw_core::error::ApiError;
use serde_json::{json, Value};
use std::collections::HashMap;

impl KeyService {
    /// `GET /spend/logs`.
    pub async fn spend_logs(&self, q: &HashMap<String, String>) -> Result<Value, ApiError> {
        let key_id = match q.get("api_key").or_else(|| q.get("key")) {
            Some(k) => Some(self.find_key(k)?.rec.id.clone()),
            None => None,
        };
        let (start, end) = time_range(q)?;
        let limit = match q.get("limit") {
            Some(l) => l
                .parse::<i64>()
                .ok()
                .filter(|n| (1..=10_000).contains(n))
                .ok_or_else(|| {
                    ApiError::bad_request("limit must be a number from 1 to 10000")
                        .with_param("limit")
                })?,
            None => 100,
        };
        let rows = self
            .store
            .spend_logs(&LogQuery {
                key_id,
                team_id: q.get("team_id").cloned(),
                user_id: q.get("user_id").cloned(),
                end_user: q.get("end_user_id").or_else(|| q.get("end_user")).cloned(),
                start_ms: start,
                end_ms: end,
                limit,
            })
            .await
            .map_err(store_err)?;
        let t = self.table.load();
        let out: Vec<Value> = rows
            .into_iter()
            .map(|r| {
                let alias = t.by_id.get(&r.key_id).and_then(|e| e.rec.alias.clone());
                json!({
                    "request_id": r.request_id,
                    "startTime": llmgw_core::state::rfc3339((r.ts_ms.max(0) as u64) / 1000),
                    "ts_ms": r.ts_ms,
                    "api_key": r.key_id,
                    "key_alias": alias,
                    "team_id": r.team_id,
                    "user": r.user_id,
                    "end_user": r.end_user,
                    "model_group": r.model_group,
                    "model": r.deployment,
                    "prompt_tokens": r.prompt_tokens,
                    "completion_tokens": r.completion_tokens,
                    "total_tokens": r.prompt_tokens + r.completion_tokens,
                    "spend": nanos_to_usd(r.cost_nanos),
                    "cost_nanos": r.cost_nanos,
                    "latency_ms": r.latency_ms,
                    "status": r.status,
                    "cache_hit": r.cache_hit,
                })
            })
            .collect();
        Ok(Value::Array(out))
    }

    /// `GET /spend/report?group_by=key|team|model&start=&end=`.
    pub async fn spend_report(&self, q: &HashMap<String, String>) -> Result<Value, ApiError> {
        let by = match q.get("group_by").map(String::as_str) {
            None | Some("key") => GroupBy::Key,
            Some("team") => GroupBy::Team,
            Some("user") => GroupBy::User,
            Some("model") => GroupBy::Model,
            Some(other) => {
                return Err(ApiError::bad_request(format!(
                    "group_by {other:?}: use key, team, user or model"
                ))
                .with_param("group_by"))
            }
        };
        let (start, end) = time_range(q)?;
        let rep = self
            .store
            .spend_report(by, start, end)
            .await
            .map_err(store_err)?;
        let mut v = self.report_json(by, start, end, rep.rows);
        crate::retention::describe_coverage(&mut v, &rep.coverage, rep.pruned_before_ms);
        Ok(v)
    }

    pub(crate) fn report_json(
        &self,
        by: GroupBy,
        start: i64,
        end: i64,
        rows: Vec<ReportRow>,
    ) -> Value {
        let t = self.table.load();
        let name = |g: &str| -> Value {
            match by {
                GroupBy::Key if g.is_empty() => json!("(master key)"),
                GroupBy::Key => t
                    .by_id
                    .get(g)
                    .and_then(|e| e.rec.alias.clone())
                    .map_or(Value::Null, Value::String),
                GroupBy::Team if g.is_empty() => json!("(no team)"),
                GroupBy::Team => t
                    .teams
                    .get(g)
                    .and_then(|e| e.rec.alias.clone())
                    .map_or(Value::Null, Value::String),
                GroupBy::User if g.is_empty() => json!("(no user)"),
                GroupBy::User => t
                    .users
                    .get(g)
                    .and_then(|e| e.rec.alias.clone())
                    .map_or(Value::Null, Value::String),
                GroupBy::Model => Value::Null,
            }
        };
        let total: i64 = rows.iter().map(|r| r.cost_nanos).sum();
        let groups: Vec<Value> = rows
            .iter()
            .map(|r| {
                json!({
                    "group": r.group,
                    "name": name(&r.group),
                    "requests": r.requests,
                    "prompt_tokens": r.prompt_tokens,
                    "completion_tokens": r.completion_tokens,
                    "total_tokens": r.prompt_tokens + r.completion_tokens,
                    "spend": nanos_to_usd(r.cost_nanos),
                    "cost_nanos": r.cost_nanos,
                    "cache_hits": r.cache_hits,
                    "errors": r.errors,
                })
            })
            .collect();
        json!({
            "group_by": match by { GroupBy::Key => "key", GroupBy::Team => "team", GroupBy::User => "user", GroupBy::Model => "model" },
            "start": llmgw_core::state::rfc3339((start.max(0) as u64) / 1000),
            "end": llmgw_core::state::rfc3339((end.clamp(0, 253_402_300_799_000) as u64) / 1000),
            "total_spend": nanos_to_usd(total),
            "total_cost_nanos": total,
            "groups": groups,
        })
    }
}

/// `start`/`end` query parameters: RFC 3339 dates/times (`2026-05-01`,
/// `2026-05-01T10:00:00Z`), unix seconds, or relative (`7d` = 7 days ago). Defaults: the
/// last 30 days up to now.
pub(crate) fn time_range(q: &HashMap<String, String>) -> Result<(i64, i64), ApiError> {
    let now = llmgw_router::now_ms() as i64;
    let parse = |param: &str, default: i64| -> Result<i64, ApiError> {
        match q.get(param).map(|s| s.trim()).filter(|s| !s.is_empty()) {
            None => Ok(default),
            Some(s) => parse_time(s, now).ok_or_else(|| {
                ApiError::bad_request(format!(
                    "{param} {s:?}: use a date (2026-05-01), a UTC time (2026-05-01T10:00:00Z), unix seconds, or an age such as 7d"
                ))
                .with_param(param)
            }),
        }
    };
    let start = parse("start", now - 30 * 86_400_000)?;
    let end = parse("end", now + 1)?;
    Ok((start, end))
}

/// A point in time as unix ms.
pub fn parse_time(s: &str, now_ms: i64) -> Option<i64> {
    if let Ok(secs) = parse_period(s) {
        if !s.chars().all(|c| c.is_ascii_digit()) {
            return Some(now_ms - (secs as i64) * 1000);
        }
    }
    if s.len() <= 12 && s.chars().all(|c| c.is_ascii_digit()) {
        return s.parse::<i64>().ok().map(|v| v * 1000);
    }
    let b = s.as_bytes();
    let num = |r: std::ops::Range<usize>| -> Option<i64> { s.get(r)?.parse().ok() };
    if b.len() < 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let (y, m, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) {
        return None;
    }
    let (mut hh, mut mm, mut ss) = (0, 0, 0);
    if b.len() > 10 {
        if !(b[10] == b'T' || b[10] == b' ') || b.len() < 19 {
            return None;
        }
        hh = num(11..13)?;
        mm = num(14..16)?;
        ss = num(17..19)?;
        let rest = &s[19..];
        if !(rest.is_empty() || rest == "Z" || rest == "+00:00") {
            return None;
        }
        if hh > 23 || mm > 59 || ss > 60 {
            return None;
        }
    }
    // Days from civil (Howard Hinnant).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(((days * 86_400) + hh * 3600 + mm * 60 + ss) * 1000)
}
