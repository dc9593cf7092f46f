//! Model groups, load balancing, retries, cooldowns and fallbacks: everything between a
//! parsed client request and the upstream response the client receives.
//!
//! A model group is every `[[models]]` entry with the same `name`; each entry is a
//! deployment. For one request the router walks a chain of groups (the requested one,
//! then its fallbacks); within a group it picks a deployment with the configured
//! strategy among those that are available, not cooling, within their limits and able to
//! hold the prompt, retries on another one at once after a failure, and waits (with
//! backoff or the upstream's Retry-After) only when every candidate has been tried.

mod attempt;

mod deployment;

pub mod fair;

pub mod prefix;

mod refusal;

mod h1;

pub mod histograms;
pub mod load;

mod log;

mod policy;

mod pool;

mod strategy;

pub mod trace;

mod stream;

pub mod tokens;

mod upstream;

pub use pool::{sweep as sweep_idle_connections, SWEEP_EVERY as POOL_SWEEP_EVERY};

use deployment::InFlight;

pub use deployment::{now_ms, Deployment, DeploymentState, DeploymentStats};

pub use log::{names, overhead_header, RequestLog};

use http_body::Body as _;

use llmgw_wire::upstream::Upstream;

use policy::Policy;
use refusal::{context_window_error, log_unknown, queue_refusal, request_timeout};

use strategy::ShuffleBasis;

use stream::UpstreamStream;

use upstream::{HttpClient, SendError, UpstreamResponse};

use axum::body::Body;

use axum::http::{header, HeaderValue, StatusCode};

use axum::response::Response;

use bytes::Bytes;

use llmgw_core::config::{ErrorClass, Fairness, LoadedConfig, ProviderKind, Secret, Strategy};

use llmgw_core::error::ApiError;

use llmgw_core::logging::Clean;

use llmgw_core::redact;

use llmgw_wire::providers;

use llmgw_wire::request::ClientRequest;

use llmgw_wire::upstream_error::UpstreamError;

use std::collections::{HashMap, HashSet, VecDeque};

use std::sync::atomic::Ordering;

use std::sync::Arc;

use std::time::{Duration, Instant};

/// All model groups, the shared HTTP client and the routing policy.
pub struct Router {
    groups: HashMap<String, Group>,
    /// Group names in config order, for `/v1/models` and error messages.
    names: Vec<String>,
    client: HttpClient,
    policy: Policy,
    /// Largest context window of any deployment: token counts above it need no precision.
    max_window: u64,
    /// Keys masked in upstream text passed on to clients and logs.
    secrets: Arc<redact::Secrets>,
    /// Some group has a gate (`holds` looks further only then).
    any_gate: bool,
    /// Latency and token histograms of every deployment and group (`/metrics`).
    hist: Arc<histograms::Histograms>,
}

struct Group {
    deployments: Vec<Arc<Deployment>>,
    /// Requests sent past its full local deployments (`load::Spillover`).
    spill: load::SpillCounts,
    /// Every deployment is local: full means spilling to the fallbacks.
    local_only: bool,
    basis: ShuffleBasis,
    /// Its strategy: `[router] strategy`, else `prefix-aware` for two or more local
    /// replicas, `simple-shuffle` otherwise.
    strategy: Strategy,
    /// Smallest context window among the group's deployments, if any sets one.
    min_window: Option<u64>,
    /// Holds requests while its local deployments are full (`fair.rs`); none when the
    /// group has no local deployment or `[router] fairness = "off"`.
    gate: Option<Arc<fair::Gate>>,
}

/// Why a group was tried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Via {
    Requested,
    Fallback,
    ContextWindow,
}

impl Router {
    /// Builds the groups from a loaded config. `api_bases` overrides a deployment's base
    /// URL by config index (for backends the gateway launches on a port it picked).
    pub fn new(cfg: &LoadedConfig, api_bases: &HashMap<usize, String>) -> Result<Self, String> {
        let mut groups: HashMap<String, Vec<Arc<Deployment>>> = HashMap::new();
        let mut names = Vec::new();
        let mut secrets = redact::Secrets::default();
        for key in cfg.model_keys.iter().flatten().chain(&cfg.master_key) {
            secrets.add(key.expose());
        }
        let ids = llmgw_core::config::deployment_ids(&cfg.config.models);
        for (i, m) in cfg.config.models.iter().enumerate() {
            let name = m.name.get_ref().clone();
            let provider = providers::for_kind(m.provider);
            if let Some(why) = provider.unsupported() {
                return Err(format!("model {name:?}: {why}"));
            }
            let api_base = api_bases
                .get(&i)
                .cloned()
                .or_else(|| m.api_base.as_ref().map(|b| b.get_ref().clone()))
                .or_else(|| default_base(m.provider).map(str::to_string))
                .ok_or_else(|| format!("model {name:?} has no api_base"))?;
            secrets.add_userinfo(&api_base);
            let group = groups.entry(name.clone()).or_default();
            if group.is_empty() {
                names.push(name.clone());
            }
            let id = ids[i].clone();
            let (input_cost, output_cost) = llmgw_core::config::prices_for(m);
            let mut upstream = Upstream::new(
                &id,
                &name,
                m.provider,
                m.model.as_deref().unwrap_or(&name),
                &api_base,
                provider,
            );
            upstream.api_key = cfg.model_keys.get(i).cloned().flatten();
            upstream.api_version = m.api_version.clone();
            upstream.max_tokens = m.max_tokens;
            upstream.drop_params = m.drop_params;
            upstream.responses_api = m.responses_api.unwrap_or_else(|| {
                m.provider == ProviderKind::Openai && api_base.contains("://api.openai.com")
            });
            let dep = Arc::new(Deployment {
                index: i,
                timeout: m.timeout.unwrap_or(cfg.config.router.timeout).0,
                weight: m.weight,
                rpm: m.rpm,
                tpm: m.tpm,
                max_parallel: m.max_parallel,
                cooldown: m.cooldown.map(|d| d.0),
                context_window: m.context_window,
                input_cost,
                output_cost,
                unreachable_hint: cfg.unreachable_hint,
                load: load::LoadState::new(
                    m.launch.is_some() || m.provider == ProviderKind::Sglang,
                ),
                ..Deployment::new(upstream)
            });
            if matches!(m.provider, ProviderKind::Openai | ProviderKind::Sglang)
                && dep
                    .endpoint_url(llmgw_wire::request::Endpoint::ChatCompletions)
                    .is_none()
            {
                return Err(format!(
                    "model {name:?}: api_base {:?} is not a valid URL",
                    redact::userinfo(&dep.api_base)
                ));
            }
            group.push(dep);
        }
        let max_window = groups
            .values()
            .flatten()
            .filter_map(|d| d.context_window)
            .max()
            .unwrap_or(0);
        let router_cfg = &cfg.config.router;
        let queue_limits = fair::QueueLimits {
            max: router_cfg.queue.max,
            max_wait: router_cfg.queue.max_wait.0,
            aging: router_cfg.queue.aging.0,
        };
        let groups: HashMap<String, Group> = groups
            .into_iter()
            .map(|(name, deployments)| {
                let basis = ShuffleBasis::for_group(&deployments);
                let min_window = deployments.iter().filter_map(|d| d.context_window).min();
                let local_only = deployments.iter().all(|d| d.load.is_local());
                let local: Vec<Arc<Deployment>> = deployments
                    .iter()
                    .filter(|d| d.load.is_local())
                    .cloned()
                    .collect();
                for d in &local {
                    if let Some(n) = d.max_parallel {
                        d.load.set_limit(u64::from(n));
                    }
                }
                let strategy = router_cfg.strategy.unwrap_or(if local.len() >= 2 {
                    Strategy::PrefixAware
                } else {
                    Strategy::SimpleShuffle
                });
                if strategy == Strategy::PrefixAware {
                    for d in &deployments {
                        d.enable_prefix_index(router_cfg.prefix_index_chunks);
                    }
                }
                let gate = (router_cfg.fairness != Fairness::Off && !local.is_empty())
                    .then(|| Arc::new(fair::Gate::new(&name, local, queue_limits)));
                (
                    name,
                    Group {
                        deployments,
                        spill: Default::default(),
                        local_only,
                        basis,
                        strategy,
                        min_window,
                        gate,
                    },
                )
            })
            .collect();
        // TLS for cloud providers uses rustls with the ring backend (no C build step).
        let _ = rustls::crypto::ring::default_provider().install_default();
        let (idle_per_host, idle_timeout, connect_timeout) =
            (1024, Duration::from_secs(90), Duration::from_secs(10));
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(idle_per_host)
            .pool_idle_timeout(idle_timeout)
            .tcp_nodelay(true)
            .connect_timeout(connect_timeout)
            // Never follow a redirect: it would resend the body and the provider's key
            // to wherever the upstream points.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
        let client = HttpClient::new(client, idle_per_host, idle_timeout, connect_timeout);
        let any_gate = groups.values().any(|g: &Group| g.gate.is_some());
        let hist = Arc::new(histograms::Histograms::new(
            &names,
            names
                .iter()
                .flat_map(|n| groups[n].deployments.iter())
                .map(|d| (d.id.as_str(), &d.hist)),
        ));
        Ok(Router {
            hist,
            any_gate,
            groups,
            names,
            client,
            policy: Policy::from_config(&cfg.config.router),
            max_window,
            secrets: Arc::new(secrets),
        })
    }

    /// Also masks `secret` in upstream text (the master key when it comes from a file).
    pub fn redact_also(&mut self, secret: &Secret) {
        Arc::make_mut(&mut self.secrets).add(secret.expose());
    }

    /// The latency and token histograms (`/metrics`, spend rows).
    pub fn histograms(&self) -> &Arc<histograms::Histograms> {
        &self.hist
    }

    /// Model group names in config order.
    pub fn model_names(&self) -> &[String] {
        &self.names
    }

    /// Every deployment, grouped in config order.
    pub fn deployments(&self) -> impl Iterator<Item = &Arc<Deployment>> {
        self.names
            .iter()
            .flat_map(|n| self.groups[n].deployments.iter())
    }

    /// Per model group (config order): requests it sent past its full local
    /// deployments, to its cloud deployments and to its fallbacks.
    pub fn spillover(&self) -> impl Iterator<Item = (&str, u64, u64)> {
        self.names.iter().map(|n| {
            let s = &self.groups[n].spill;
            (
                n.as_str(),
                s.cloud.load(Ordering::Relaxed),
                s.fallback.load(Ordering::Relaxed),
            )
        })
    }

    /// True when `model`'s group may hold requests at the gateway (it has a gate); one
    /// load when no group has one.
    pub fn holds(&self, model: &str) -> bool {
        self.any_gate && self.groups.get(model).is_some_and(|g| g.gate.is_some())
    }

    /// The gates of the groups that hold requests (for the load poller, `/health` and
    /// `/metrics`), in config order.
    pub fn gates(&self) -> Vec<Arc<fair::Gate>> {
        self.names
            .iter()
            .filter_map(|n| self.groups[n].gate.clone())
            .collect()
    }

    /// The deployment made from `[[models]]` entry `index`.
    pub fn deployment_by_index(&self, index: usize) -> Option<&Arc<Deployment>> {
        self.deployments().find(|d| d.index == index)
    }

    /// Whether `model`'s group has a local deployment (`None`: no such group).
    pub fn has_local(&self, model: &str) -> Option<bool> {
        self.groups
            .get(model)
            .map(|g| g.deployments.iter().any(|d| d.load.is_local()))
    }

    /// The shared upstream HTTP client.
    pub fn client(&self) -> &reqwest::Client {
        self.client.reqwest()
    }

    /// The secrets the gateway knows (provider keys, the master key, `api_base`
    /// passwords): what is masked in any text that leaves it.
    pub fn secrets(&self) -> &Arc<redact::Secrets> {
        &self.secrets
    }

    /// Masks the known secrets in an upstream error's text.
    pub fn scrub(&self, e: &mut UpstreamError) {
        e.scrub(&self.secrets);
    }

    fn unknown_model(&self, model: &str) -> ApiError {
        ApiError::not_found(format!(
            "model {model:?} is not served by this gateway; available models: {}",
            self.names.join(", ")
        ))
        .with_param("model")
        .with_code("model_not_found")
    }

    /// Serves one client request within `deadline`. `log` is filled in; a streamed
    /// response takes it over and writes it when the stream ends.
    pub async fn serve(
        &self,
        req: ClientRequest,
        deadline: Instant,
        log: &mut RequestLog,
    ) -> Result<Response, ApiError> {
        if !self.groups.contains_key(&req.model) {
            return Err(self.unknown_model(&req.model));
        }
        let mut chain: VecDeque<(String, Via, u32)> =
            VecDeque::from([(req.model.clone(), Via::Requested, 0)]);
        let mut seen: HashSet<String> = HashSet::new();
        let mut unknown: Vec<String> = Vec::new();
        let mut last: Option<UpstreamError> = None;
        let mut tokens: Option<u64> = None;
        let mut spilled = false;
        while let Some((model, via, depth)) = chain.pop_front() {
            if std::time::Instant::now() >= deadline {
                last = Some(last.unwrap_or_else(request_timeout));
                break;
            }
            if !seen.insert(model.clone()) {
                continue;
            }
            let Some(group) = self.groups.get(&model) else {
                unknown.push(model);
                continue;
            };
            // A fallback (of any kind) the caller may not use is skipped: a key limited
            // to some groups is never answered by another one.
            if via != Via::Requested && !refusal::reachable(&req, &model) {
                tracing::debug!(model = %Clean(&model), "fallback skipped: the caller may not use it");
                continue;
            }
            // Local first: a group whose local backends are all full sends the request to
            // its fallbacks first (and is tried again when they fail).
            if via == Via::Requested
                && !spilled
                && group.local_only
                && !req.options.disable_fallbacks
                && depth < self.policy.max_fallback_depth
                && self.policy.spillover.is_some_and(|sp| match &group.gate {
                    Some(g) => sp.gate_full(g) || sp.all_full(&group.deployments),
                    None => sp.all_full(&group.deployments),
                })
            {
                let next = self.next_groups(&model, via, ErrorClass::ServiceUnavailable, &req);
                if next.iter().any(|m| refusal::reachable(&req, m)) {
                    spilled = true;
                    group.spill.fallback.fetch_add(1, Ordering::Relaxed);
                    seen.remove(&model);
                    chain.push_front((model, via, depth));
                    for m in next.iter().rev() {
                        chain.push_front((m.clone(), Via::Fallback, depth + 1));
                    }
                    continue;
                }
            }
            // Context window: count only when the body could possibly exceed it.
            let fits = match group.min_window {
                Some(min) if tokens::upper_bound(&req) > min => {
                    let n = match tokens {
                        Some(n) => n,
                        None => *tokens.insert(tokens::count(&req, self.max_window).await),
                    };
                    group
                        .deployments
                        .iter()
                        .any(|d| d.context_window.is_none_or(|w| n <= w))
                }
                _ => true,
            };
            let outcome = if fits {
                self.try_group(group, &req, &model, tokens, deadline, log)
                    .await
            } else {
                Err(context_window_error(&model, tokens.unwrap_or(0)))
            };
            let err = match outcome {
                Ok(mut resp) => {
                    log_unknown(&unknown);
                    if via != Via::Requested {
                        resp.headers_mut()
                            .insert(names::FALLBACK, header_value(&model));
                        log.fallback = Some(model);
                    }
                    return Ok(resp);
                }
                Err(e) => e,
            };
            // Where to go next.
            if !req.options.disable_fallbacks
                && depth < self.policy.max_fallback_depth
                && err.class != ErrorClass::BadRequest
            {
                let next = self.next_groups(&model, via, err.class, &req);
                let next_via = if err.class == ErrorClass::ContextWindow {
                    Via::ContextWindow
                } else {
                    Via::Fallback
                };
                for m in next {
                    chain.push_back((m.clone(), next_via, depth + 1));
                }
            }
            if !chain.is_empty() {
                tracing::info!(model = %model, error = %Clean(&err.error.message), "model group failed; trying its fallback");
            }
            last = Some(err);
        }
        log_unknown(&unknown);
        let err = last.unwrap_or_else(|| {
            UpstreamError::new(
                ErrorClass::Default,
                ApiError::unavailable("no deployment could serve the request"),
            )
        });
        log.status = err.error.status.as_u16();
        Err(err.into_api_error())
    }

    /// The groups tried after `model` failed with `class`: its context-window fallbacks,
    /// the request's own fallbacks, the configured ones, or the default ones.
    fn next_groups<'a>(
        &'a self,
        model: &str,
        via: Via,
        class: ErrorClass,
        req: &'a ClientRequest,
    ) -> &'a [String] {
        if class == ErrorClass::ContextWindow {
            self.policy
                .context_window_fallbacks
                .get(model)
                .map(Vec::as_slice)
                .unwrap_or(&[])
        } else if via == Via::Requested && req.options.fallbacks.is_some() {
            req.options.fallbacks.as_deref().unwrap_or(&[])
        } else {
            self.policy
                .fallbacks
                .get(model)
                .map(Vec::as_slice)
                .unwrap_or(if via == Via::Requested {
                    &self.policy.default_fallbacks
                } else {
                    &[]
                })
        }
    }

    /// Tries one group: retries on other deployments at once, backs off only when all
    /// candidates have been tried.
    async fn try_group(
        &self,
        group: &Group,
        req: &ClientRequest,
        model: &str,
        tokens: Option<u64>,
        deadline: Instant,
        log: &mut RequestLog,
    ) -> Result<Response, UpstreamError> {
        let deps = &group.deployments;
        let only_one = deps.len() == 1;
        let need = tokens.unwrap_or_else(|| tokens::rough(req));
        let mut tried: Vec<usize> = Vec::with_capacity(deps.len());
        let mut retries = 0u32;
        let mut last: Option<UpstreamError> = None;
        let mut permit: Option<fair::Permit> = None;
        // The prompt's prefix keys, made once for a `prefix-aware` group.
        let mut prefix_keys: Option<Vec<u64>> = None;
        loop {
            let now = now_ms();
            let eligible: Vec<usize> = (0..deps.len())
                .filter(|&i| {
                    let d = &deps[i];
                    let gated = group.gate.is_some() && d.load.is_local();
                    d.available.load(Ordering::Relaxed)
                        && (!req.options.local_only || d.load.is_local())
                        && (only_one || !d.is_cooling(now))
                        && if gated {
                            d.has_rate_room(need)
                        } else {
                            d.has_room(need)
                        }
                        && tokens.is_none_or(|n| d.context_window.is_none_or(|w| n <= w))
                })
                .collect();
            if eligible.is_empty() {
                return Err(last.unwrap_or_else(|| self.nothing_eligible(model, deps, need, now)));
            }
            let mut fresh: Vec<&Arc<Deployment>> = eligible
                .iter()
                .filter(|i| !tried.contains(i))
                .map(|&i| &deps[i])
                .collect();
            // The cloud deployments among them, before local-first narrows the list: where
            // the gate's overflow goes with spillover.
            let cloud: Vec<&Arc<Deployment>> = if group.gate.is_some() {
                fresh
                    .iter()
                    .filter(|d| !d.load.is_local())
                    .copied()
                    .collect()
            } else {
                Vec::new()
            };
            if let Some(sp) = &self.policy.spillover {
                let (open, spilled) = sp.local_first(fresh);
                if spilled && tried.is_empty() {
                    group.spill.cloud.fetch_add(1, Ordering::Relaxed);
                }
                fresh = open;
            }
            // The gate: a place among the local deployments' requests in flight, at once
            // when there is room; else the cloud (with spillover), else the queue.
            if let Some(gate) = group.gate.as_ref().filter(|_| permit.is_none()) {
                if fresh.iter().any(|d| d.load.is_local()) {
                    permit = gate.try_now();
                    if permit.is_none() {
                        let crowded = self.policy.spillover.is_some_and(|sp| sp.gate_full(gate));
                        if crowded && !cloud.is_empty() {
                            if tried.is_empty() {
                                group.spill.cloud.fetch_add(1, Ordering::Relaxed);
                            }
                            fresh = cloud;
                        } else {
                            let cost = need.saturating_add(fair::completion_budget(&req.body));
                            let (p, waited) = gate
                                .acquire(&req.flow, cost, deadline)
                                .await
                                .map_err(|r| queue_refusal(model, r, &self.policy))?;
                            log.queue += waited;
                            permit = Some(p);
                        }
                    }
                }
            }
            if permit.is_some() {
                fresh.retain(|d| d.load.is_local());
                // Of those, the ones with a free slot (the permit says one is free).
                if fresh.iter().any(|d| d.has_room(need)) {
                    fresh.retain(|d| d.has_room(need));
                }
            }
            if fresh.is_empty() {
                // Everyone eligible has failed this request once: wait, then go round again.
                let wait = self
                    .policy
                    .backoff(retries, last.as_ref().and_then(|e| e.retry_after));
                if llmgw_core::duration::deadline(Instant::now(), wait) >= deadline {
                    return Err(last.unwrap_or_else(request_timeout));
                }
                tokio::time::sleep(wait).await;
                tried.clear();
                continue;
            }
            let pick = if group.strategy == Strategy::PrefixAware {
                let keys = prefix_keys.get_or_insert_with(|| prefix::keys(&req.body));
                prefix::pick(&fresh, keys, |d| {
                    let q = d.queue();
                    q.running + q.waiting
                })
            } else {
                strategy::pick(
                    group.strategy,
                    group.basis,
                    &fresh,
                    need,
                    self.policy.latency_buffer,
                )
            };
            let dep = fresh[pick].clone();
            let pos = deps.iter().position(|d| Arc::ptr_eq(d, &dep)).unwrap_or(0);
            let Some(mut slot) = dep.claim(need) else {
                // Lost a race for its last slot; it is no longer eligible this round.
                tried.push(pos);
                continue;
            };
            if dep.load.is_local() {
                // Held as long as the slot: for a stream, until it ends.
                slot.1 = permit.take();
            }
            if let (Some(ix), Some(keys)) = (dep.prefix_index(), &prefix_keys) {
                // Its backend will cache this prompt's prefixes.
                ix.insert(keys);
            }
            log.attempts += 1;
            log.deployment.clone_from(&dep.id);
            log.hist = Some(dep.hist.clone());
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Err(last.unwrap_or_else(request_timeout));
            }
            // A traced request: one span per attempt (a stream's moves with the log into
            // the stream, so the link is kept here too).
            let traced = log
                .trace
                .clone()
                .and_then(|t| t.begin(&dep).map(|id| (t, id)));
            match self.attempt(&dep, slot, req, remaining, log).await {
                Ok(resp) => {
                    if let Some((t, id)) = traced {
                        let streamed = resp
                            .headers()
                            .get(header::CONTENT_TYPE)
                            .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
                        t.finish(id, resp.status().as_u16(), None, !streamed);
                    }
                    return Ok(resp);
                }
                Err(e) => {
                    if let Some((t, id)) = traced {
                        t.finish(id, e.error.status.as_u16(), Some(e.class), true);
                    }
                    self.on_failure(&dep, &e, only_one);
                    tracing::debug!(deployment = %dep.id, class = ?e.class, error = %Clean(&e.error.message), "attempt failed");
                    let allowed = self.policy.retries_for(e.class);
                    tried.push(pos);
                    if retries >= allowed {
                        return Err(e);
                    }
                    retries += 1;
                    last = Some(e);
                }
            }
        }
    }
}

fn default_base(kind: ProviderKind) -> Option<&'static str> {
    match kind {
        ProviderKind::Openai => Some("https://api.openai.com/v1"),
        ProviderKind::Anthropic => Some("https://api.anthropic.com/v1"),
        ProviderKind::Gemini => Some("https://generativelanguage.googleapis.com/v1beta"),
        _ => None,
    }
}

fn header_value(s: &str) -> HeaderValue {
    HeaderValue::from_str(s).unwrap_or_else(|_| HeaderValue::from_static("invalid"))
}
