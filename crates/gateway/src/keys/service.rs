//! The keys service: the in-memory table the request path reads, the store behind it,
//! the admin operations that change both, and the spend rows' writer.
//!
//! Every admin change is written to the store first, then the table is rebuilt from the
//! store and swapped in, so what a replica enforces is always what the store holds.
//! Other replicas see the change through [`super::sync`] (they poll the store's version).
//! Live counters (spend this period, this minute's usage, in-flight) are kept per key and
//! team id across rebuilds; a key seen for the first time starts from its current-period
//! spend summed in the store.

use super::admin_ops::store_err;
use super::enforce::{Caller, Counters, Estimate, KeyEntry, Table, TeamEntry, Ticket, UserEntry};
use super::{hash_key, now_s, Limits, KEY_PREFIX};
use crate::access::presented_key;
use crate::spend::Spend;
use crate::store::{sqlite::SqliteStore, Owner, Store};
use arc_swap::ArcSwap;
use axum::http::HeaderMap;
use llmgw_core::config::LoadedConfig;
use llmgw_core::error::ApiError;
use llmgw_wire::request::ClientRequest;
use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use tokio_util::sync::CancellationToken;

/// Database file name inside the state directory.
pub const DB_FILE: &str = "llmgw.db";

pub struct KeyService {
    pub(crate) table: ArcSwap<Table>,
    pub(crate) store: Arc<Store>,
    pub spend: Arc<Spend>,
    /// `k:<id>` / `t:<id>` / `u:<id>` → live counters, kept across table rebuilds (admin path only).
    pub(crate) counters: Mutex<HashMap<String, Arc<Counters>>>,
    /// One admin change at a time per gateway.
    pub(crate) admin: tokio::sync::Mutex<()>,
    /// The store version the table was built from.
    pub(crate) version: AtomicI64,
    pub(crate) shutdown: CancellationToken,
    pub(crate) writer: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Group → its dearest deployment's (input, output) USD per million tokens: what an
    /// admitted request's estimate is priced at.
    pub(crate) group_prices: HashMap<String, (f64, f64)>,
    /// `[keys] default_max_tokens`.
    pub(crate) default_max_tokens: u64,
}

impl std::fmt::Debug for KeyService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyService").finish_non_exhaustive()
    }
}

impl KeyService {
    /// Opens the store (`[store] url`, else `<state dir>/llmgw.db`, else in memory),
    /// loads keys and teams, starts the spend writer and the replicas' sync.
    pub async fn start(
        cfg: &LoadedConfig,
        state_dir: Option<&Path>,
        router: &llmgw_router::Router,
    ) -> anyhow::Result<Arc<KeyService>> {
        let sc = &cfg.config.store;
        let store = match &cfg.store_url {
            Some(url) => Store::Postgres(Box::new(crate::store::postgres::PgStore::open(url.expose()).await.map_err(|e| {
                anyhow::anyhow!("cannot open the [store] database: {e}; check that PostgreSQL is running and [store] url")
            })?)),
            None => {
                let path = sc
                    .path
                    .clone()
                    .or_else(|| state_dir.map(|d| d.join(DB_FILE)));
                if let Some(dir) = state_dir.filter(|_| sc.path.is_none()) {
                    llmgw_core::state::ensure_dir(dir).map_err(|e| {
                        anyhow::anyhow!("cannot create state directory {}: {e}", dir.display())
                    })?;
                }
                if path.is_none() {
                    tracing::warn!("no state directory and no [store]: virtual keys and spend are kept in memory only and lost when the gateway stops");
                }
                let p = path.clone();
                let s = tokio::task::spawn_blocking(move || SqliteStore::open(p.as_deref()))
                    .await?
                    .map_err(|e| {
                        anyhow::anyhow!(
                            "cannot open the key/spend database {}: {e}",
                            path.as_deref().map_or("(memory)".into(), |p| p
                                .display()
                                .to_string())
                        )
                    })?;
                Store::Sqlite(s)
            }
        };
        let store = Arc::new(store);
        let prices = router
            .deployments()
            .map(|d| (d.id.clone(), (d.input_cost, d.output_cost)))
            .collect();
        let mut group_prices: HashMap<String, (f64, f64)> = HashMap::new();
        for d in router.deployments() {
            let p = group_prices.entry(d.group.clone()).or_default();
            *p = (p.0.max(d.input_cost), p.1.max(d.output_cost));
        }
        let shutdown = CancellationToken::new();
        let (spend, writer) = Spend::start(
            prices,
            router.model_names(),
            store.clone(),
            sc.buffer_rows,
            shutdown.clone(),
        );
        spend.set_histograms(router.histograms().clone());
        let svc = Arc::new(KeyService {
            table: ArcSwap::from_pointee(Table::default()),
            store,
            spend,
            counters: Mutex::new(HashMap::new()),
            admin: tokio::sync::Mutex::new(()),
            version: AtomicI64::new(-1),
            shutdown,
            writer: Mutex::new(Some(writer)),
            group_prices,
            default_max_tokens: cfg.config.keys.default_max_tokens,
        });
        svc.reload()
            .await
            .map_err(|e| anyhow::anyhow!("cannot load virtual keys: {}", e.message))?;
        let n = svc.table.load().by_id.len();
        tracing::info!(store = svc.store.kind(), keys = n, "virtual keys loaded");
        super::sync::spawn(svc.clone(), cfg).await?;
        Ok(svc)
    }

    /// Stops the spend writer after it wrote what it holds (bounded).
    pub async fn shutdown(&self) {
        self.shutdown.cancel();
        let task = self.writer.lock().ok().and_then(|mut w| w.take());
        if let Some(t) = task {
            let _ = tokio::time::timeout(std::time::Duration::from_secs(12), t).await;
        }
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    pub fn table(&self) -> arc_swap::Guard<Arc<Table>> {
        self.table.load()
    }

    pub(crate) fn version(&self) -> i64 {
        self.version.load(Ordering::Acquire)
    }

    /// A virtual key from the request's headers, after the master key did not match
    /// (`master_err` is that refusal, answered when the key is not a virtual one either).
    pub fn authenticate(
        &self,
        headers: &HeaderMap,
        master_err: ApiError,
    ) -> Result<Caller, ApiError> {
        let Some(given) = presented_key(headers) else {
            return Err(master_err);
        };
        let table = self.table.load();
        match table.lookup(&hash_key(given)) {
            Some(e) => Ok(Caller::Key(e.clone())),
            None if given.starts_with(KEY_PREFIX) => {
                super::enforce::reject(super::enforce::Reason::Unknown);
                Err(ApiError::unauthorized(
                    "invalid API key: this gateway has no such virtual key (it may have been deleted); check OPENAI_API_KEY, or ask the gateway's administrator for a key",
                ))
            }
            None => {
                super::enforce::reject(super::enforce::Reason::Unknown);
                Err(master_err)
            }
        }
    }

    /// Admits `caller`'s request (limits, budget, model); the ticket charges it later.
    pub fn admit(&self, caller: &Caller, req: &ClientRequest) -> Result<Ticket, ApiError> {
        let (est, tracked) = match caller {
            Caller::Key(k) => (
                self.estimate(k, req),
                self.end_user(k, req.end_user.as_deref())?,
            ),
            Caller::Master => (Estimate::default(), None),
        };
        Ticket::admit(
            caller,
            &req.model,
            req.body.len(),
            est,
            req.end_user
                .as_deref()
                .map(super::end_users::clip)
                .filter(|u| !u.is_empty()),
            tracked,
            self.spend.clone(),
        )
    }

    /// What `req` is held at until it is charged: its prompt (about four bytes a token)
    /// plus `max_tokens` (else `[keys] default_max_tokens`) of output, priced only when a
    /// budget needs it.
    fn estimate(&self, k: &KeyEntry, req: &ClientRequest) -> Estimate {
        let prompt = (req.body.len() / 4) as u64;
        let output = req.max_tokens.unwrap_or(self.default_max_tokens);
        let cost = if k.has_budget() {
            self.group_prices.get(&req.model).map_or(0, |&p| {
                crate::spend::cost_nanos(
                    crate::spend::Usage {
                        prompt,
                        completion: output,
                    },
                    p,
                )
            })
        } else {
            0
        };
        Estimate {
            tokens: prompt.saturating_add(output),
            cost,
        }
    }

    /// Model groups `caller` may use, out of `all`.
    pub fn visible_models<'a>(&self, caller: &Caller, all: &'a [String]) -> Vec<&'a String> {
        match caller {
            Caller::Master => all.iter().collect(),
            Caller::Key(k) => all
                .iter()
                .filter(|m| llmgw_wire::request::GroupAccess::allows_group(&**k, m))
                .collect(),
        }
    }

    /// Rebuilds the table from the store.
    pub async fn reload(&self) -> Result<(), ApiError> {
        let snap = self.store.load().await.map_err(store_err)?;
        let now = now_s();
        // Counters for records seen for the first time start from the store's sums.
        let known = |id: &str| {
            self.counters
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .contains_key(id)
        };
        let mut fresh: Vec<(String, Arc<Counters>)> = Vec::new();
        for k in &snap.keys {
            let id = format!("k:{}", k.id);
            if !known(&id) {
                fresh.push((id, self.initial(Owner::Key(&k.id), &k.limits, now).await?));
            }
        }
        for t in &snap.teams {
            let id = format!("t:{}", t.id);
            if !known(&id) {
                fresh.push((id, self.initial(Owner::Team(&t.id), &t.limits, now).await?));
            }
        }
        for u in &snap.users {
            let id = format!("u:{}", u.id);
            if !known(&id) {
                fresh.push((id, self.initial(Owner::User(&u.id), &u.limits, now).await?));
            }
        }
        let mut counters = self.counters.lock().unwrap_or_else(|e| e.into_inner());
        for (id, c) in fresh {
            counters.entry(id).or_insert(c);
        }
        let old = self.table.load_full();
        let mut table = Table::default();
        for u in snap.users {
            let c = counters[&format!("u:{}", u.id)].clone();
            table.users.insert(
                u.id.clone(),
                Arc::new(UserEntry {
                    rec: u,
                    counters: c,
                }),
            );
        }
        for t in snap.teams {
            let c = counters[&format!("t:{}", t.id)].clone();
            table.teams.insert(
                t.id.clone(),
                Arc::new(TeamEntry {
                    rec: t,
                    counters: c,
                }),
            );
        }
        for k in snap.keys {
            let Some(hash) = super::unhex32(&k.hash) else {
                tracing::warn!(key = %k.id, "stored key has an invalid hash; skipped");
                continue;
            };
            let entry = Arc::new(KeyEntry {
                counters: counters[&format!("k:{}", k.id)].clone(),
                team: k.team_id.as_ref().and_then(|t| table.teams.get(t).cloned()),
                user: k.user_id.as_ref().and_then(|u| table.users.get(u).cloned()),
                // End users tracked so far are kept across rebuilds.
                end_users: old
                    .by_id
                    .get(&k.id)
                    .map(|e| e.end_users.clone())
                    .unwrap_or_default(),
                rec: k,
            });
            table.by_id.insert(entry.rec.id.clone(), entry.clone());
            table.by_hash.insert(hash, entry);
        }
        // Forget counters of deleted records.
        counters.retain(|id, _| match id.split_once(':') {
            Some(("k", k)) => table.by_id.contains_key(k),
            Some(("t", t)) => table.teams.contains_key(t),
            Some(("u", u)) => table.users.contains_key(u),
            _ => false,
        });
        drop(counters);
        self.table.store(Arc::new(table));
        self.version.store(snap.version, Ordering::Release);
        Ok(())
    }

    pub(crate) async fn initial(
        &self,
        who: Owner<'_>,
        l: &Limits,
        now: u64,
    ) -> Result<Arc<Counters>, ApiError> {
        let (_, start, _) = l.period(now);
        // Every key's and team's spend, budgeted or not: `/key/info` and `keys list`
        // show it, and a restart must not reset it to 0.
        let spent = self
            .store
            .spend_since(who, (start as i64).saturating_mul(1000))
            .await
            .map_err(store_err)?;
        Ok(Arc::new(Counters::with_spend(start, spent)))
    }

    /// Finds a key by the key itself, its hash, its id or its alias.
    pub fn find_key(&self, ident: &str) -> Result<Arc<KeyEntry>, ApiError> {
        let t = self.table.load();
        let ident = ident.trim();
        let found = if ident.starts_with(KEY_PREFIX) {
            t.lookup(&hash_key(ident)).cloned()
        } else if let Some(h) = super::unhex32(ident) {
            t.lookup(&h).cloned()
        } else {
            t.by_id.get(ident).cloned().or_else(|| {
                t.by_id
                    .values()
                    .find(|e| e.rec.alias.as_deref() == Some(ident))
                    .cloned()
            })
        };
        found.ok_or_else(|| {
            ApiError::not_found(format!(
                "no key {ident:?}: give the key, its id (token) or its alias (llmgw keys list)"
            ))
            .with_param("key")
        })
    }

    pub(crate) fn find_team(&self, id: &str) -> Result<Arc<TeamEntry>, ApiError> {
        let t = self.table.load();
        t.teams
            .get(id)
            .cloned()
            .or_else(|| {
                t.teams
                    .values()
                    .find(|e| e.rec.alias.as_deref() == Some(id))
                    .cloned()
            })
            .ok_or_else(|| {
                ApiError::not_found(format!("no team {id:?}; create it with POST /team/new"))
                    .with_param("team_id")
            })
    }
}
