//! The admin operations on keys and teams (`/key/*`, `/team/*`, `/spend/*` and the CLI
//! behind them): validate the request, write the store, rebuild the table; the patches
//! they apply and the JSON they answer.

use super::enforce::{Counters, KeyEntry, TeamEntry};
use super::service::*;
use super::{
    check_usd, double_option, format_period, generate_key, hash_key, hex, hint, nanos_to_usd,
    now_s, parse_period, KeyRecord, Limits, TeamRecord, KEY_PREFIX,
};
use axum::http::StatusCode;
use llmgw_core::error::ApiError;
use llmgw_wire::request::priority;
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::Arc;

/// Limits on what admin calls may send.
const MAX_MODELS: usize = 256;
const MAX_TEXT: usize = 256;
const MAX_METADATA: usize = 16 * 1024;

impl KeyService {
    /// `POST /key/generate`: a new key, returned once.
    pub async fn generate(&self, body: &[u8]) -> Result<Value, ApiError> {
        let p: KeyPatch = parse_body(body)?;
        let _g = self.admin.lock().await;
        let key = generate_key()
            .map_err(|e| ApiError::internal(format!("cannot generate a random key: {e}")))?;
        let hash = hash_key(&key);
        let now = now_s();
        let mut rec = KeyRecord {
            id: hex(&hash[..8]),
            hash: hex(&hash),
            hint: hint(&key),
            alias: None,
            user_id: None,
            team_id: None,
            limits: Limits {
                budget_anchor: now,
                ..Limits::default()
            },
            end_user: None,
            expires_at: None,
            metadata: Value::Null,
            created_at: now,
        };
        self.apply_key(&mut rec, p, now)?;
        self.store.put_key(&rec).await.map_err(store_err)?;
        self.reload().await?;
        let entry = self.find_key(&rec.id)?;
        let mut info = key_info(&entry, now);
        info["key"] = Value::String(key);
        Ok(info)
    }

    /// `POST /key/update`.
    pub async fn update(&self, body: &[u8]) -> Result<Value, ApiError> {
        let (ident, p): (String, KeyPatch) = split_ident(body, "key")?;
        let _g = self.admin.lock().await;
        let entry = self.find_key(&ident)?;
        let mut rec = entry.rec.clone();
        let now = now_s();
        let old = rec.limits.clone();
        self.apply_key(&mut rec, p, now)?;
        self.store.put_key(&rec).await.map_err(store_err)?;
        if rec.limits.budget_anchor != old.budget_anchor {
            let (_, start, _) = rec.limits.period(now);
            entry.counters.reset_period(start, 0);
        }
        self.reload().await?;
        let e = self.find_key(&rec.id)?;
        Ok(key_info(&e, now))
    }

    /// `POST /key/block` and `/key/unblock`.
    pub async fn block(&self, body: &[u8], blocked: bool) -> Result<Value, ApiError> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct B {
            key: String,
        }
        let b: B = parse_body(body)?;
        let _g = self.admin.lock().await;
        let mut rec = self.find_key(&b.key)?.rec.clone();
        rec.limits.blocked = blocked;
        self.store.put_key(&rec).await.map_err(store_err)?;
        self.reload().await?;
        let e = self.find_key(&rec.id)?;
        Ok(key_info(&e, now_s()))
    }

    /// `POST /key/delete` with `{"keys": [...]}` and/or `{"key_aliases": [...]}`.
    pub async fn delete(&self, body: &[u8]) -> Result<Value, ApiError> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct D {
            #[serde(default)]
            keys: Vec<String>,
            #[serde(default)]
            key_aliases: Vec<String>,
        }
        let d: D = parse_body(body)?;
        if d.keys.len() + d.key_aliases.len() > 10_000 {
            return Err(ApiError::bad_request("delete at most 10000 keys per call"));
        }
        let _g = self.admin.lock().await;
        let mut ids = Vec::new();
        for k in d.keys.iter().chain(&d.key_aliases) {
            ids.push(self.find_key(k)?.rec.id.clone());
        }
        if ids.is_empty() {
            return Err(ApiError::bad_request(
                "give the keys to delete: {\"keys\": [\"sk-llmgw-...\" or id]} or {\"key_aliases\": [...]}",
            )
            .with_param("keys"));
        }
        self.store.delete_keys(&ids).await.map_err(store_err)?;
        self.reload().await?;
        Ok(json!({"deleted_keys": ids}))
    }

    /// `GET /key/info?key=...`.
    pub fn info(&self, ident: &str) -> Result<Value, ApiError> {
        let e = self.find_key(ident)?;
        Ok(json!({"key": e.rec.id, "info": key_info(&e, now_s())}))
    }

    /// `GET /key/list`.
    pub fn list(&self) -> Value {
        let now = now_s();
        let t = self.table.load();
        let mut keys: Vec<&Arc<KeyEntry>> = t.by_id.values().collect();
        keys.sort_by_key(|e| (e.rec.created_at, e.rec.id.clone()));
        json!({"keys": keys.into_iter().map(|e| key_info(e, now)).collect::<Vec<_>>()})
    }

    /// `POST /team/new`.
    pub async fn team_new(&self, body: &[u8]) -> Result<Value, ApiError> {
        let p: TeamPatch = parse_body(body)?;
        let _g = self.admin.lock().await;
        let now = now_s();
        let id = match &p.team_id {
            Some(id) => check_text("team_id", id)?.to_string(),
            None => {
                let mut b = [0u8; 8];
                getrandom::getrandom(&mut b).map_err(|e| ApiError::internal(e.to_string()))?;
                format!("team-{}", hex(&b))
            }
        };
        if self.table.load().teams.contains_key(&id) {
            return Err(ApiError::bad_request(format!(
                "team {id:?} already exists; change it with POST /team/update"
            ))
            .with_param("team_id"));
        }
        let mut rec = TeamRecord {
            id,
            alias: None,
            limits: Limits {
                budget_anchor: now,
                ..Limits::default()
            },
            metadata: Value::Null,
            created_at: now,
        };
        apply_team(&mut rec, p, now)?;
        self.store.put_team(&rec).await.map_err(store_err)?;
        self.reload().await?;
        let t = self.find_team(&rec.id)?;
        Ok(team_info(&t, now))
    }

    /// `POST /team/update`.
    pub async fn team_update(&self, body: &[u8]) -> Result<Value, ApiError> {
        let p: TeamPatch = parse_body(body)?;
        let Some(id) = p.team_id.clone() else {
            return Err(
                ApiError::bad_request("give the team: {\"team_id\": \"...\", ...}")
                    .with_param("team_id"),
            );
        };
        let _g = self.admin.lock().await;
        let entry = self.find_team(&id)?;
        let mut rec = entry.rec.clone();
        let now = now_s();
        let anchor = rec.limits.budget_anchor;
        apply_team(&mut rec, p, now)?;
        self.store.put_team(&rec).await.map_err(store_err)?;
        if rec.limits.budget_anchor != anchor {
            let (_, start, _) = rec.limits.period(now);
            entry.counters.reset_period(start, 0);
        }
        self.reload().await?;
        let t = self.find_team(&rec.id)?;
        Ok(team_info(&t, now))
    }

    /// `GET /team/info?team_id=...`.
    pub fn team_info(&self, id: &str) -> Result<Value, ApiError> {
        let t = self.find_team(id)?;
        let now = now_s();
        let table = self.table.load();
        let keys: Vec<Value> = table
            .by_id
            .values()
            .filter(|k| k.rec.team_id.as_deref() == Some(t.rec.id.as_str()))
            .map(|k| key_info(k, now))
            .collect();
        Ok(json!({"team_id": t.rec.id, "team_info": team_info(&t, now), "keys": keys}))
    }

    /// Applies a patch to a key record, validating everything.
    pub(crate) fn apply_key(
        &self,
        rec: &mut KeyRecord,
        p: KeyPatch,
        now: u64,
    ) -> Result<(), ApiError> {
        if let Some(a) = p.key_alias {
            if let Some(a) = &a {
                check_text("key_alias", a)?;
                let t = self.table.load();
                if t.by_id
                    .values()
                    .any(|e| e.rec.alias.as_deref() == Some(a) && e.rec.id != rec.id)
                {
                    return Err(ApiError::bad_request(format!(
                        "key_alias {a:?} is already used by another key; pick another"
                    ))
                    .with_param("key_alias"));
                }
                if a.starts_with(KEY_PREFIX) || super::unhex32(a).is_some() || looks_like_key_id(a)
                {
                    return Err(ApiError::bad_request(format!(
                        "key_alias {a:?} looks like a key, a key's hash or a key's id (16 hex digits), which admin calls would take for another key; pick a name with other characters"
                    ))
                    .with_param("key_alias"));
                }
            }
            rec.alias = a;
        }
        if let Some(u) = p.user_id {
            if let Some(u) = &u {
                check_text("user_id", u)?;
                if !self.table.load().users.contains_key(u) {
                    return Err(ApiError::bad_request(format!(
                        "user {u:?} does not exist; create it first with POST /user/new (llmgw users create {u})"
                    ))
                    .with_param("user_id"));
                }
            }
            rec.user_id = u;
        }
        if let Some(team) = p.team_id {
            if let Some(team) = &team {
                if !self.table.load().teams.contains_key(team) {
                    return Err(ApiError::bad_request(format!(
                        "team {team:?} does not exist; create it first with POST /team/new"
                    ))
                    .with_param("team_id"));
                }
            }
            rec.team_id = team;
        }
        if let Some(d) = p.duration {
            rec.expires_at = match d {
                Some(d) => Some(now + period_field("duration", &d)?),
                None => None,
            };
        }
        if let Some(m) = p.metadata {
            rec.metadata = check_metadata(m.unwrap_or(Value::Null))?;
        }
        super::end_users::EndUserPatch {
            max_budget: p.end_user_max_budget,
            budget_duration: p.end_user_budget_duration,
            rpm: p.end_user_rpm_limit,
            tpm: p.end_user_tpm_limit,
        }
        .apply(rec, now)?;
        apply_limits(&mut rec.limits, p.limits, now)
    }
}

/// Fields shared by keys and teams (LiteLLM's names; the short ones are accepted too).
/// Absent = unchanged, `null` = cleared.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsPatch {
    #[serde(default, deserialize_with = "double_option")]
    pub(crate) models: Option<Option<Vec<String>>>,
    #[serde(default, deserialize_with = "double_option")]
    pub(crate) max_budget: Option<Option<f64>>,
    #[serde(default, deserialize_with = "double_option")]
    pub(crate) soft_budget: Option<Option<f64>>,
    #[serde(default, deserialize_with = "double_option")]
    pub(crate) budget_duration: Option<Option<Value>>,
    #[serde(default, alias = "rpm", deserialize_with = "double_option")]
    pub(crate) rpm_limit: Option<Option<u64>>,
    #[serde(default, alias = "tpm", deserialize_with = "double_option")]
    pub(crate) tpm_limit: Option<Option<u64>>,
    #[serde(default, alias = "max_parallel", deserialize_with = "double_option")]
    pub(crate) max_parallel_requests: Option<Option<u64>>,
    #[serde(default)]
    pub(crate) blocked: Option<bool>,
    /// The fair queue's class: `"interactive"`, `"default"`, `"batch"` or 0–255.
    #[serde(default, deserialize_with = "double_option")]
    pub(crate) priority: Option<Option<Value>>,
    #[serde(default, deserialize_with = "double_option")]
    pub(crate) max_priority: Option<Option<Value>>,
    #[serde(default, deserialize_with = "double_option")]
    pub(crate) weight: Option<Option<u64>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct KeyPatch {
    #[serde(default, alias = "alias", deserialize_with = "double_option")]
    pub(crate) key_alias: Option<Option<String>>,
    #[serde(default, deserialize_with = "double_option")]
    pub(crate) user_id: Option<Option<String>>,
    #[serde(default, deserialize_with = "double_option")]
    pub(crate) team_id: Option<Option<String>>,
    /// The key's lifetime from now (`"30d"`); `null` = never expires.
    #[serde(default, alias = "expires", deserialize_with = "double_option")]
    pub(crate) duration: Option<Option<Value>>,
    #[serde(default, deserialize_with = "double_option")]
    pub(crate) metadata: Option<Option<Value>>,
    /// Limits for each end user (the request's `user`): see `end_users`.
    #[serde(default, deserialize_with = "double_option")]
    pub(crate) end_user_max_budget: Option<Option<f64>>,
    #[serde(default, deserialize_with = "double_option")]
    pub(crate) end_user_budget_duration: Option<Option<Value>>,
    #[serde(default, alias = "end_user_rpm", deserialize_with = "double_option")]
    pub(crate) end_user_rpm_limit: Option<Option<u64>>,
    #[serde(default, alias = "end_user_tpm", deserialize_with = "double_option")]
    pub(crate) end_user_tpm_limit: Option<Option<u64>>,
    #[serde(flatten)]
    pub(crate) limits: LimitsPatch,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TeamPatch {
    pub(crate) team_id: Option<String>,
    #[serde(default, alias = "alias", deserialize_with = "double_option")]
    pub(crate) team_alias: Option<Option<String>>,
    #[serde(default, deserialize_with = "double_option")]
    pub(crate) metadata: Option<Option<Value>>,
    #[serde(flatten)]
    pub(crate) limits: LimitsPatch,
}

fn apply_team(rec: &mut TeamRecord, p: TeamPatch, now: u64) -> Result<(), ApiError> {
    if let Some(a) = p.team_alias {
        if let Some(a) = &a {
            check_text("team_alias", a)?;
        }
        rec.alias = a;
    }
    if let Some(m) = p.metadata {
        rec.metadata = check_metadata(m.unwrap_or(Value::Null))?;
    }
    apply_limits(&mut rec.limits, p.limits, now)
}

pub(crate) fn apply_limits(l: &mut Limits, p: LimitsPatch, now: u64) -> Result<(), ApiError> {
    let bad = |param: &str, m: String| ApiError::bad_request(m).with_param(param);
    if let Some(m) = p.models {
        let m = m.unwrap_or_default();
        if m.len() > MAX_MODELS {
            return Err(bad(
                "models",
                format!("at most {MAX_MODELS} model patterns"),
            ));
        }
        for name in &m {
            check_text("models", name)?;
        }
        l.models = m;
    }
    let budgets = [("max_budget", p.max_budget, &mut l.max_budget)];
    for (name, patch, slot) in
        budgets
            .into_iter()
            .chain([("soft_budget", p.soft_budget, &mut l.soft_budget)])
    {
        if let Some(b) = patch {
            *slot = b
                .map(|v| check_usd(name, v).map_err(|m| bad(name, m)))
                .transpose()?;
        }
    }
    if let Some(d) = p.budget_duration {
        let d = match d {
            Some(v) => Some(period_field("budget_duration", &v)?),
            None => None,
        };
        if d != l.budget_duration {
            l.budget_duration = d;
            // A new period length starts a new period now.
            l.budget_anchor = now;
        }
    }
    let positive = |param: &str, v: Option<Option<u64>>, cur: &mut Option<u64>| {
        if let Some(v) = v {
            if v == Some(0) {
                return Err(bad(
                    param,
                    format!("{param} must be at least 1 (or null for no limit)"),
                ));
            }
            *cur = v;
        }
        Ok(())
    };
    positive("rpm_limit", p.rpm_limit, &mut l.rpm)?;
    positive("tpm_limit", p.tpm_limit, &mut l.tpm)?;
    positive(
        "max_parallel_requests",
        p.max_parallel_requests,
        &mut l.max_parallel,
    )?;
    if let Some(b) = p.blocked {
        l.blocked = b;
    }
    let class = |param: &str, v: Option<Option<Value>>, cur: &mut Option<u8>| {
        if let Some(v) = v {
            *cur = match v {
                Some(v) => Some(priority::from_json(&v).map_err(|e| e.with_param(param))?),
                None => None,
            };
        }
        Ok::<(), ApiError>(())
    };
    class("priority", p.priority, &mut l.priority)?;
    class("max_priority", p.max_priority, &mut l.max_priority)?;
    if let Some(w) = p.weight {
        l.weight = match w {
            Some(w) => Some(
                u32::try_from(w)
                    .ok()
                    .filter(|w| (1..=priority::MAX_WEIGHT).contains(w))
                    .ok_or_else(|| {
                        bad(
                            "weight",
                            format!(
                                "weight must be from 1 to {} (or null for 1)",
                                priority::MAX_WEIGHT
                            ),
                        )
                    })?,
            ),
            None => None,
        };
    }
    Ok(())
}

pub use super::reports::parse_time;

/// A period given as `"30s"`/`"1d"` or a number of seconds.
fn period_field(param: &str, v: &Value) -> Result<u64, ApiError> {
    let r = match v {
        Value::String(s) => parse_period(s),
        Value::Number(n) => n
            .as_u64()
            .filter(|&s| (1..=super::MAX_PERIOD_SECS).contains(&s))
            .ok_or_else(|| "a number of seconds must be a whole number from 1 to ten years".into()),
        _ => Err("expected a duration such as \"30s\", \"1h\", \"30d\"".into()),
    };
    r.map_err(|m| ApiError::bad_request(format!("{param}: {m}")).with_param(param))
}

pub(crate) fn check_text<'a>(param: &str, s: &'a str) -> Result<&'a str, ApiError> {
    if s.trim().is_empty() || s.len() > MAX_TEXT || s.chars().any(char::is_control) {
        return Err(ApiError::bad_request(format!(
            "{param} must be 1-{MAX_TEXT} printable characters"
        ))
        .with_param(param));
    }
    if let Some(c) = s.chars().find(|&c| is_format_char(c)) {
        return Err(ApiError::bad_request(format!(
            "{param} must not contain invisible format characters (found U+{:04X}, which changes how the text around it is shown in `keys list` and /metrics); use plain printable characters",
            u32::from(c)
        ))
        .with_param(param));
    }
    Ok(s)
}

/// Unicode general category Cf (format characters: bidirectional overrides such as
/// U+202E, zero-width joiners and spaces, tags, …), as of Unicode 15.1. They are
/// invisible, so an alias holding one would not read as what it is in a list.
fn is_format_char(c: char) -> bool {
    matches!(u32::from(c),
        0x00AD | 0x0600..=0x0605 | 0x061C | 0x06DD | 0x070F | 0x0890..=0x0891 | 0x08E2
        | 0x180E | 0x200B..=0x200F | 0x202A..=0x202E | 0x2060..=0x2064 | 0x2066..=0x206F
        | 0xFEFF | 0xFFF9..=0xFFFB | 0x110BD | 0x110CD | 0x13430..=0x1343F
        | 0x1BCA0..=0x1BCA3 | 0x1D173..=0x1D17A | 0xE0001 | 0xE0020..=0xE007F)
}

/// A key id's shape: 16 hex digits (admin calls look ids up before aliases).
fn looks_like_key_id(s: &str) -> bool {
    s.len() == 16 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

pub(crate) fn check_metadata(v: Value) -> Result<Value, ApiError> {
    if !(v.is_object() || v.is_null()) {
        return Err(ApiError::bad_request("metadata must be a JSON object").with_param("metadata"));
    }
    if v.to_string().len() > MAX_METADATA {
        return Err(ApiError::bad_request(format!(
            "metadata must be at most {MAX_METADATA} bytes of JSON"
        ))
        .with_param("metadata"));
    }
    Ok(v)
}

/// Parses an admin body; unknown fields are errors (a typo must not pass silently).
pub(crate) fn parse_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let body = if body.iter().all(u8::is_ascii_whitespace) {
        b"{}".as_slice()
    } else {
        body
    };
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("invalid request body: {e}")))
}

/// Takes the identifying field (`key`) out of a patch body.
fn split_ident<T: serde::de::DeserializeOwned>(
    body: &[u8],
    field: &str,
) -> Result<(String, T), ApiError> {
    let mut v: Value = parse_body(body)?;
    let ident = v
        .as_object_mut()
        .and_then(|o| o.remove(field))
        .and_then(|k| k.as_str().map(str::to_string))
        .ok_or_else(|| {
            ApiError::bad_request(format!(
                "give the {field} to change: {{\"{field}\": \"...\", ...}}"
            ))
            .with_param(field)
        })?;
    let p = serde_json::from_value(v)
        .map_err(|e| ApiError::bad_request(format!("invalid request body: {e}")))?;
    Ok((ident, p))
}

pub(crate) fn limits_json(l: &Limits, c: &Counters, now: u64) -> Value {
    let (_, start, end) = l.period(now);
    json!({
        "models": l.models,
        "max_budget": l.max_budget,
        "soft_budget": l.soft_budget,
        "budget_duration": l.budget_duration.map(format_period),
        "budget_reset_at": end.map(llmgw_core::state::rfc3339),
        "spend": nanos_to_usd(c.spend_in(start)),
        "rpm_limit": l.rpm,
        "tpm_limit": l.tpm,
        "max_parallel_requests": l.max_parallel,
        "blocked": l.blocked,
        "priority": l.priority.map(priority::name),
        "max_priority": l.max_priority.map(priority::name),
        "weight": l.weight,
    })
}

pub(crate) fn merge(mut a: Value, b: Value) -> Value {
    if let (Some(a), Value::Object(b)) = (a.as_object_mut(), b) {
        a.extend(b);
    }
    a
}

/// A key as admin calls show it (never the key itself).
pub fn key_info(e: &KeyEntry, now: u64) -> Value {
    let r = &e.rec;
    merge(
        json!({
            "token": r.id,
            "key_name": r.hint,
            "key_alias": r.alias,
            "user_id": r.user_id,
            "team_id": r.team_id,
            "expires": r.expires_at.map(llmgw_core::state::rfc3339),
            "metadata": r.metadata,
            "created_at": llmgw_core::state::rfc3339(r.created_at),
        }),
        merge(
            limits_json(&r.limits, &e.counters, now),
            super::end_users::limits_json(r),
        ),
    )
}

fn team_info(t: &TeamEntry, now: u64) -> Value {
    merge(
        json!({
            "team_id": t.rec.id,
            "team_alias": t.rec.alias,
            "metadata": t.rec.metadata,
            "created_at": llmgw_core::state::rfc3339(t.rec.created_at),
        }),
        limits_json(&t.rec.limits, &t.counters, now),
    )
}

/// A store failure as the admin API answers it.
pub fn store_err(e: crate::store::StoreError) -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "service_unavailable",
        format!("the key/spend database is unavailable ({e}); requests are still served, try this admin call again later"),
    )
    .with_code("store_unavailable")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_parse() {
        let now = 1_800_000_000_000;
        assert_eq!(parse_time("1970-01-02", now), Some(86_400_000));
        assert_eq!(
            parse_time("2026-11-18T11:06:40Z", now),
            Some(1_795_000_000_000)
        );
        assert_eq!(parse_time("1795000000", now), Some(1_795_000_000_000));
        assert_eq!(parse_time("7d", now), Some(now - 7 * 86_400_000));
        for bad in [
            "yesterday",
            "2026-13-01",
            "2026-01-01T25:00:00Z",
            "2026-01-01T10:00:00+02:00",
        ] {
            assert_eq!(parse_time(bad, now), None, "{bad}");
        }
    }

    #[test]
    fn patches_validate() {
        let mut l = Limits::default();
        let p: LimitsPatch = serde_json::from_str(
            r#"{"models":["local"],"max_budget":0.01,"budget_duration":"30s","rpm_limit":5}"#,
        )
        .unwrap();
        apply_limits(&mut l, p, 100).unwrap();
        assert_eq!(
            (l.max_budget, l.budget_duration, l.budget_anchor, l.rpm),
            (Some(0.01), Some(30), 100, Some(5))
        );
        let p: LimitsPatch = serde_json::from_str(r#"{"rpm":null,"max_budget":null}"#).unwrap();
        apply_limits(&mut l, p, 200).unwrap();
        assert_eq!((l.rpm, l.max_budget, l.budget_anchor), (None, None, 100));
        for bad in [
            r#"{"max_budget":-1}"#,
            r#"{"budget_duration":"1 fortnight"}"#,
            r#"{"rpm_limit":0}"#,
            r#"{"budget_duration":1e300}"#,
        ] {
            let p: LimitsPatch = serde_json::from_str(bad).unwrap();
            assert!(apply_limits(&mut l, p, 0).is_err(), "{bad}");
        }
        assert!(serde_json::from_str::<KeyPatch>(r#"{"max_budgte":1}"#).is_err());
    }
}
