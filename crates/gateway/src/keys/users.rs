//! Users: LiteLLM's level between key and team. A user has [`Limits`] like a team
//! (models, budget per period, rpm, tpm, max parallel, blocked); every key whose
//! `user_id` names the user must pass them on top of its own and its team's, and the
//! user's budget counts the spend of all its keys (reserve, then settle, as for keys).
//!
//! Admin routes: `POST /user/new`, `/user/update`, `/user/delete`, `GET /user/info`,
//! `/user/list`. Deleting a user that keys still name is refused unless the call says
//! `"delete_keys": true`, which deletes those keys in the same transaction.

use super::admin_ops::{
    apply_limits, check_metadata, check_text, key_info, limits_json, merge, parse_body, store_err,
    LimitsPatch,
};
use super::enforce::Counters;
use super::service::KeyService;
use super::{hex, now_s, Limits, UserRecord};
use llmgw_core::error::ApiError;
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::Arc;

/// One user in the table.
#[derive(Debug)]
pub struct UserEntry {
    pub rec: UserRecord,
    pub counters: Arc<Counters>,
}

/// `/user/new` and `/user/update` bodies (LiteLLM's names).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct UserPatch {
    user_id: Option<String>,
    #[serde(default, alias = "alias", deserialize_with = "super::double_option")]
    user_alias: Option<Option<String>>,
    #[serde(default, deserialize_with = "super::double_option")]
    metadata: Option<Option<Value>>,
    #[serde(flatten)]
    limits: LimitsPatch,
}

fn apply_user(rec: &mut UserRecord, p: UserPatch, now: u64) -> Result<(), ApiError> {
    if let Some(a) = p.user_alias {
        if let Some(a) = &a {
            check_text("user_alias", a)?;
        }
        rec.alias = a;
    }
    if let Some(m) = p.metadata {
        rec.metadata = check_metadata(m.unwrap_or(Value::Null))?;
    }
    apply_limits(&mut rec.limits, p.limits, now)
}

/// Most users one `/user/delete` call names.
const MAX_DELETE: usize = 10_000;

impl KeyService {
    pub(crate) fn find_user(&self, id: &str) -> Result<Arc<UserEntry>, ApiError> {
        self.table
            .load()
            .users
            .get(id.trim())
            .cloned()
            .ok_or_else(|| {
                ApiError::not_found(format!(
                    "no user {id:?}; create it with POST /user/new (llmgw users create {id})"
                ))
                .with_param("user_id")
            })
    }

    /// `POST /user/new`.
    pub async fn user_new(&self, body: &[u8]) -> Result<Value, ApiError> {
        let p: UserPatch = parse_body(body)?;
        let _g = self.admin.lock().await;
        let now = now_s();
        let id = match &p.user_id {
            Some(id) => check_text("user_id", id)?.to_string(),
            None => {
                let mut b = [0u8; 8];
                getrandom::getrandom(&mut b).map_err(|e| ApiError::internal(e.to_string()))?;
                format!("user-{}", hex(&b))
            }
        };
        if self.table.load().users.contains_key(&id) {
            return Err(ApiError::bad_request(format!(
                "user {id:?} already exists; change it with POST /user/update"
            ))
            .with_param("user_id"));
        }
        let mut rec = UserRecord {
            id,
            alias: None,
            limits: Limits {
                budget_anchor: now,
                ..Limits::default()
            },
            metadata: Value::Null,
            created_at: now,
        };
        apply_user(&mut rec, p, now)?;
        self.store.put_user(&rec).await.map_err(store_err)?;
        self.reload().await?;
        let u = self.find_user(&rec.id)?;
        Ok(user_json(&u, now))
    }

    /// `POST /user/update`.
    pub async fn user_update(&self, body: &[u8]) -> Result<Value, ApiError> {
        let p: UserPatch = parse_body(body)?;
        let Some(id) = p.user_id.clone() else {
            return Err(
                ApiError::bad_request("give the user: {\"user_id\": \"...\", ...}")
                    .with_param("user_id"),
            );
        };
        let _g = self.admin.lock().await;
        let entry = self.find_user(&id)?;
        let mut rec = entry.rec.clone();
        let now = now_s();
        let anchor = rec.limits.budget_anchor;
        apply_user(&mut rec, p, now)?;
        self.store.put_user(&rec).await.map_err(store_err)?;
        if rec.limits.budget_anchor != anchor {
            let (_, start, _) = rec.limits.period(now);
            entry.counters.reset_period(start, 0);
        }
        self.reload().await?;
        let u = self.find_user(&rec.id)?;
        Ok(user_json(&u, now))
    }

    /// `POST /user/delete` with `{"user_ids": [...]}`; refused while keys name one of
    /// them, unless `"delete_keys": true` (then those keys are deleted too).
    pub async fn user_delete(&self, body: &[u8]) -> Result<Value, ApiError> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct D {
            #[serde(default)]
            user_ids: Vec<String>,
            #[serde(default)]
            delete_keys: bool,
        }
        let d: D = parse_body(body)?;
        if d.user_ids.is_empty() {
            return Err(ApiError::bad_request(
                "give the users to delete: {\"user_ids\": [\"...\"]}",
            )
            .with_param("user_ids"));
        }
        if d.user_ids.len() > MAX_DELETE {
            return Err(ApiError::bad_request(format!(
                "delete at most {MAX_DELETE} users per call"
            ))
            .with_param("user_ids"));
        }
        let _g = self.admin.lock().await;
        let mut ids = Vec::with_capacity(d.user_ids.len());
        for u in &d.user_ids {
            ids.push(self.find_user(u)?.rec.id.clone());
        }
        let table = self.table.load();
        let keys: Vec<(String, String)> = table
            .by_id
            .values()
            .filter(|k| k.rec.user_id.as_ref().is_some_and(|u| ids.contains(u)))
            .map(|k| (k.rec.id.clone(), k.rec.name().to_string()))
            .collect();
        if !keys.is_empty() && !d.delete_keys {
            let names: Vec<&str> = keys.iter().take(10).map(|(_, n)| n.as_str()).collect();
            return Err(ApiError::bad_request(format!(
                "{} key(s) still belong to these users ({}{}); delete or move them first, or send \"delete_keys\": true to delete them with the users",
                keys.len(),
                names.join(", "),
                if keys.len() > 10 { ", ..." } else { "" }
            ))
            .with_param("user_ids")
            .with_code("user_has_keys"));
        }
        let key_ids: Vec<String> = keys.into_iter().map(|(id, _)| id).collect();
        self.store
            .delete_users(&ids, &key_ids)
            .await
            .map_err(store_err)?;
        self.reload().await?;
        Ok(json!({"deleted_users": ids, "deleted_keys": key_ids}))
    }

    /// `GET /user/info?user_id=...`: the user, its limits, this period's spend, its keys.
    pub fn user_info(&self, id: &str) -> Result<Value, ApiError> {
        let u = self.find_user(id)?;
        let now = now_s();
        let table = self.table.load();
        let mut keys: Vec<&Arc<super::enforce::KeyEntry>> = table
            .by_id
            .values()
            .filter(|k| k.rec.user_id.as_deref() == Some(u.rec.id.as_str()))
            .collect();
        keys.sort_by_key(|k| (k.rec.created_at, k.rec.id.clone()));
        let keys: Vec<Value> = keys.into_iter().map(|k| key_info(k, now)).collect();
        Ok(json!({"user_id": u.rec.id, "user_info": user_json(&u, now), "keys": keys}))
    }

    /// `GET /user/list`.
    pub fn user_list(&self) -> Value {
        let now = now_s();
        let t = self.table.load();
        let mut users: Vec<&Arc<UserEntry>> = t.users.values().collect();
        users.sort_by_key(|u| (u.rec.created_at, u.rec.id.clone()));
        let keys = |id: &str| {
            t.by_id
                .values()
                .filter(|k| k.rec.user_id.as_deref() == Some(id))
                .count()
        };
        json!({"users": users.into_iter().map(|u| {
            let mut v = user_json(u, now);
            v["keys"] = json!(keys(&u.rec.id));
            v
        }).collect::<Vec<_>>()})
    }
}

/// A user as admin calls show it.
pub(crate) fn user_json(u: &UserEntry, now: u64) -> Value {
    merge(
        json!({
            "user_id": u.rec.id,
            "user_alias": u.rec.alias,
            "metadata": u.rec.metadata,
            "created_at": llmgw_core::state::rfc3339(u.rec.created_at),
        }),
        limits_json(&u.rec.limits, &u.counters, now),
    )
}
