//! End users of an application key: the OpenAI `user` field (chat completions,
//! completions, embeddings, responses) or Anthropic's `metadata.user_id` names the person
//! an application serves. A key with `end_user` limits (`end_user_max_budget` per
//! `end_user_budget_duration`, `end_user_rpm_limit`, `end_user_tpm_limit`) gives each of
//! its end users those limits, on top of the key's, team's and user's.
//!
//! - Tracked in memory per key ([`EndUsers`]): 16 shards, each a small map behind its own
//!   mutex held only for a lookup or an insert, so requests of one key for different end
//!   users rarely meet and requests of different keys never do.
//! - Bounded: at most [`MAX_END_USERS_PER_KEY`] end users per key. A full shard forgets
//!   its least recently used sixteenth at once (amortised O(1) per insert). A forgotten
//!   end user starts a new minute for rpm/tpm when seen again; its budget spend is read
//!   back from the store's spend rows (which record the end user).
//! - An end user seen for the first time by this process (after a restart or being
//!   forgotten) is admitted at once and its period's spend so far is read from the store
//!   in the background and added: the requests in those few milliseconds are judged on
//!   what this process counted. At most four such reads run at once.
//! - Per replica: with several replicas each counts its own (not shared through Redis).
//! - Names longer than [`MAX_END_USER_LEN`] bytes are refused (400) by a key that limits
//!   end users; elsewhere they are recorded cut to that length.

use super::enforce::Counters;
use super::{check_usd, format_period, nanos_to_usd, now_s, parse_period, KeyRecord, Limits};
use llmgw_core::error::ApiError;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// End users tracked per key (documented in the README).
pub const MAX_END_USERS_PER_KEY: usize = 100_000;

/// Longest end-user name kept.
pub const MAX_END_USER_LEN: usize = 256;

const SHARDS: usize = 16;

/// Reads of end users' spend from the store at once (the rest wait their turn), so a
/// flood of new end-user names cannot crowd the spend writer and admin calls out of the
/// store's connection.
static LOADS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(4);

/// One end user of one key.
#[derive(Debug)]
pub struct EndUserEntry {
    pub id: Box<str>,
    pub counters: Arc<Counters>,
    last_used: AtomicU64,
}

/// A key's tracked end users.
#[derive(Debug)]
pub struct EndUsers {
    shards: [Mutex<HashMap<Box<str>, Arc<EndUserEntry>>>; SHARDS],
    tick: AtomicU64,
    hasher: std::collections::hash_map::RandomState,
    cap: usize,
}

impl Default for EndUsers {
    fn default() -> Self {
        EndUsers::with_cap(MAX_END_USERS_PER_KEY)
    }
}

impl EndUsers {
    pub fn with_cap(cap: usize) -> EndUsers {
        EndUsers {
            shards: Default::default(),
            tick: AtomicU64::new(0),
            hasher: Default::default(),
            cap: cap.max(SHARDS),
        }
    }

    fn shard(&self, id: &str) -> &Mutex<HashMap<Box<str>, Arc<EndUserEntry>>> {
        &self.shards[(self.hasher.hash_one(id) as usize) % SHARDS]
    }

    /// The end user `id`, created (with spend 0 in the period starting at `start`) when
    /// new; the flag says it was.
    pub fn get_or_insert(&self, id: &str, start: u64) -> (Arc<EndUserEntry>, bool) {
        let now = self.tick.fetch_add(1, Ordering::Relaxed);
        let mut m = self.shard(id).lock().unwrap_or_else(|e| e.into_inner());
        if let Some(e) = m.get(id) {
            e.last_used.store(now, Ordering::Relaxed);
            return (e.clone(), false);
        }
        let per_shard = self.cap / SHARDS;
        if m.len() >= per_shard {
            // Forget the least recently used sixteenth of the shard.
            let mut ages: Vec<u64> = m
                .values()
                .map(|e| e.last_used.load(Ordering::Relaxed))
                .collect();
            let n = (ages.len() / 16).max(1).min(ages.len() - 1);
            let (_, cut, _) = ages.select_nth_unstable(n);
            let cut = *cut;
            m.retain(|_, e| e.last_used.load(Ordering::Relaxed) >= cut);
            while m.len() >= per_shard {
                // Ties at the cut: drop any one.
                let Some(k) = m.keys().next().cloned() else {
                    break;
                };
                m.remove(&k);
            }
        }
        let e = Arc::new(EndUserEntry {
            id: id.into(),
            counters: Arc::new(Counters::with_spend(start, 0)),
            last_used: AtomicU64::new(now),
        });
        m.insert(id.into(), e.clone());
        (e, true)
    }

    /// The end user `id` if tracked.
    pub fn get(&self, id: &str) -> Option<Arc<EndUserEntry>> {
        self.shard(id)
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .cloned()
    }

    /// How many end users are tracked.
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|e| e.into_inner()).len())
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// `s` cut to at most [`MAX_END_USER_LEN`] bytes at a character boundary.
pub fn clip(s: &str) -> &str {
    if s.len() <= MAX_END_USER_LEN {
        return s;
    }
    let mut end = MAX_END_USER_LEN;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// The key fields that set its end users' limits (`/key/generate`, `/key/update`);
/// absent = unchanged, `null` = cleared. All cleared = end users are not limited.
#[derive(Debug, Default)]
pub(crate) struct EndUserPatch {
    pub(crate) max_budget: Option<Option<f64>>,
    pub(crate) budget_duration: Option<Option<Value>>,
    pub(crate) rpm: Option<Option<u64>>,
    pub(crate) tpm: Option<Option<u64>>,
}

impl EndUserPatch {
    /// Applies the patch to `rec.end_user`.
    pub(crate) fn apply(self, rec: &mut KeyRecord, now: u64) -> Result<(), ApiError> {
        let mut l = rec.end_user.clone().unwrap_or(Limits {
            budget_anchor: now,
            ..Limits::default()
        });
        let bad = |p: &str, m: String| ApiError::bad_request(m).with_param(p);
        if let Some(b) = self.max_budget {
            l.max_budget = match b {
                Some(v) => Some(
                    check_usd("end_user_max_budget", v)
                        .map_err(|m| bad("end_user_max_budget", m))?,
                ),
                None => None,
            };
        }
        if let Some(d) = self.budget_duration {
            let d = match d {
                None => None,
                Some(Value::String(s)) => Some(
                    parse_period(&s)
                        .map_err(|m| bad("end_user_budget_duration", format!("end_user_budget_duration: {m}")))?,
                ),
                Some(Value::Number(n)) => Some(
                    n.as_u64()
                        .filter(|&s| (1..=super::MAX_PERIOD_SECS).contains(&s))
                        .ok_or_else(|| bad("end_user_budget_duration", "end_user_budget_duration: a number of seconds must be a whole number from 1 to ten years".into()))?,
                ),
                Some(_) => {
                    return Err(bad(
                        "end_user_budget_duration",
                        "end_user_budget_duration: expected a duration such as \"30s\", \"1h\", \"30d\"".into(),
                    ))
                }
            };
            if d != l.budget_duration {
                l.budget_duration = d;
                l.budget_anchor = now;
            }
        }
        for (param, v, cur) in [
            ("end_user_rpm_limit", self.rpm, &mut l.rpm),
            ("end_user_tpm_limit", self.tpm, &mut l.tpm),
        ] {
            if let Some(v) = v {
                if v == Some(0) {
                    return Err(bad(
                        param,
                        format!("{param} must be at least 1 (or null for no limit)"),
                    ));
                }
                *cur = v;
            }
        }
        let none = l.max_budget.is_none() && l.rpm.is_none() && l.tpm.is_none();
        rec.end_user = (!none).then_some(l);
        Ok(())
    }
}

/// A key's end-user limits as admin calls show them.
pub(crate) fn limits_json(rec: &KeyRecord) -> Value {
    let l = rec.end_user.as_ref();
    json!({
        "end_user_max_budget": l.and_then(|l| l.max_budget),
        "end_user_budget_duration": l.and_then(|l| l.budget_duration).map(format_period),
        "end_user_rpm_limit": l.and_then(|l| l.rpm),
        "end_user_tpm_limit": l.and_then(|l| l.tpm),
    })
}

impl super::KeyService {
    /// The end user a request of key `k` is for, tracked when the key limits end users:
    /// `(name for the spend row, entry)`. A name over [`MAX_END_USER_LEN`] is refused
    /// only where it would be tracked.
    pub(crate) fn end_user(
        &self,
        k: &super::enforce::KeyEntry,
        name: Option<&str>,
    ) -> Result<Option<Arc<EndUserEntry>>, ApiError> {
        let (Some(l), Some(name)) = (k.rec.end_user.as_ref(), name.filter(|n| !n.is_empty()))
        else {
            return Ok(None);
        };
        if name.len() > MAX_END_USER_LEN {
            return Err(ApiError::bad_request(format!(
                "user must be at most {MAX_END_USER_LEN} bytes"
            ))
            .with_param("user"));
        }
        let now_ms = llmgw_router::now_ms();
        let (_, start, _) = l.period(now_ms / 1000);
        let (e, new) = k.end_users.get_or_insert(name, start);
        if new && l.max_budget.is_some() {
            // Its spend so far this period, from the store, without waiting for it.
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                let (store, key, c) = (self.store.clone(), k.rec.id.clone(), e.counters.clone());
                let id = name.to_string();
                rt.spawn(async move {
                    let Ok(_permit) = LOADS.acquire().await else {
                        return;
                    };
                    let since = (start as i64).saturating_mul(1000);
                    match store.end_user_spend(Some(&key), &id, since, now_ms as i64).await {
                        Ok(spent) => c.add_spend(start, spent),
                        Err(err) => tracing::warn!(key = %key, error = %err, "cannot read an end user's spend; counting from 0"),
                    }
                });
            }
        }
        Ok(Some(e))
    }

    /// `GET /customer/info?end_user_id=...[&key=...]` (also `/end_user/info`): the end
    /// user's spend in the store (last 30 days, or `start`/`end`), and for each key that
    /// tracks it, this period's spend against the key's end-user limits.
    pub async fn end_user_info(&self, q: &HashMap<String, String>) -> Result<Value, ApiError> {
        let id = q
            .get("end_user_id")
            .or_else(|| q.get("user_id"))
            .map(String::as_str)
            .filter(|s| !s.is_empty() && s.len() <= MAX_END_USER_LEN)
            .ok_or_else(|| {
                ApiError::bad_request(format!(
                    "give ?end_user_id=... (the request's `user`, 1-{MAX_END_USER_LEN} bytes)"
                ))
                .with_param("end_user_id")
            })?;
        let only = match q.get("key") {
            Some(k) => Some(self.find_key(k)?),
            None => None,
        };
        let (start, end) = super::reports::time_range(q)?;
        let spent = self
            .store
            .end_user_spend(only.as_ref().map(|k| k.rec.id.as_str()), id, start, end)
            .await
            .map_err(super::admin_ops::store_err)?;
        let now = now_s();
        let table = self.table();
        let mut keys: Vec<Value> = Vec::new();
        for k in table.by_id.values() {
            if only.as_ref().is_some_and(|o| o.rec.id != k.rec.id) {
                continue;
            }
            let (Some(l), Some(e)) = (k.rec.end_user.as_ref(), k.end_users.get(id)) else {
                continue;
            };
            let (_, start, end) = l.period(now);
            let mut v = limits_json(&k.rec);
            v["key"] = json!(k.rec.id);
            v["key_alias"] = json!(k.rec.alias);
            v["spend"] = json!(nanos_to_usd(e.counters.spend_in(start)));
            v["budget_reset_at"] = json!(end.map(llmgw_core::state::rfc3339));
            keys.push(v);
        }
        Ok(json!({
            "user_id": id,
            "end_user_id": id,
            "spend": nanos_to_usd(spent),
            "spend_start": llmgw_core::state::rfc3339((start.max(0) as u64) / 1000),
            "keys": keys,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn end_users_are_bounded_and_forget_the_least_recently_used() {
        let eu = EndUsers::with_cap(160);
        for i in 0..1000 {
            let (_, new) = eu.get_or_insert(&format!("u{i}"), 0);
            assert!(new);
            // u0 stays in use.
            assert!(!eu.get_or_insert("u0", 0).1 || i == 0);
        }
        assert!(eu.len() <= 160, "{}", eu.len());
        assert!(eu.get("u0").is_some());
        assert!(eu.get("u999").is_some());
        assert!(eu.get("u1").is_none());
    }

    #[test]
    fn names_are_clipped_at_a_char_boundary() {
        let long = "é".repeat(200);
        let c = clip(&long);
        assert!(c.len() <= MAX_END_USER_LEN && long.starts_with(c));
        assert_eq!(clip("bob"), "bob");
    }
}
