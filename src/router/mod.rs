//! Model groups, load balancing, retries, cooldowns and fallbacks: everything between a
//! parsed client request and the upstream response the client receives.
//!
//! A model group is every `[[models]]` entry with the same `name`; each entry is a
//! deployment. For one request the router walks a chain of groups (the requested one,
//! then its fallbacks); within a group it picks a deployment with the configured
//! strategy among those that are available, not cooling, within their limits and able to
//! hold the prompt, retries on another one at once after a failure, and waits (with
//! backoff or the upstream's Retry-After) only when every candidate has been tried.

mod deployment;
mod h1;
pub mod load;
mod policy;
mod pool;
mod strategy;
mod stream;
pub mod tokens;
mod upstream;

pub(crate) use pool::{sweep as sweep_idle_connections, SWEEP_EVERY as POOL_SWEEP_EVERY};

use deployment::InFlight;
pub use deployment::{now_ms, Deployment, DeploymentState, DeploymentStats};
use http_body::Body as _;
use policy::Policy;
use strategy::ShuffleBasis;
use stream::UpstreamStream;
use upstream::{SendError, Upstream, UpstreamResponse};

use crate::config::{ErrorClass, LoadedConfig, ProviderKind, Secret};
use crate::error::ApiError;
use crate::logging::Clean;
use crate::providers::{self, UpstreamError};
use crate::redact;
use crate::request::ClientRequest;
use axum::body::Body;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::Response;
use bytes::Bytes;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// All model groups, the shared HTTP client and the routing policy.
pub struct Router {
    groups: HashMap<String, Group>,
    /// Group names in config order, for `/v1/models` and error messages.
    names: Vec<String>,
    client: Upstream,
    policy: Policy,
    /// Largest context window of any deployment: token counts above it need no precision.
    max_window: u64,
    /// Keys masked in upstream text passed on to clients and logs.
    secrets: Arc<redact::Secrets>,
}

struct Group {
    deployments: Vec<Arc<Deployment>>,
    /// Requests sent past its full local deployments (`load::Spillover`).
    spill: load::SpillCounts,
    /// Every deployment is local: full means spilling to the fallbacks.
    local_only: bool,
    basis: ShuffleBasis,
    /// Smallest context window among the group's deployments, if any sets one.
    min_window: Option<u64>,
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
        let ids = crate::placement::deployment_ids(&cfg.config.models);
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
            let (input_cost, output_cost) = crate::spend::prices_for(m);
            let dep = Arc::new(Deployment {
                index: i,
                id,
                group: name.clone(),
                kind: m.provider,
                model: m.model.clone().unwrap_or_else(|| name.clone()),
                api_base: api_base.trim_end_matches('/').to_string(),
                api_key: cfg.model_keys.get(i).cloned().flatten(),
                api_version: m.api_version.clone(),
                timeout: m.timeout.unwrap_or(cfg.config.router.timeout).0,
                weight: m.weight,
                rpm: m.rpm,
                tpm: m.tpm,
                max_parallel: m.max_parallel,
                cooldown: m.cooldown.map(|d| d.0),
                context_window: m.context_window,
                max_tokens: m.max_tokens,
                input_cost,
                output_cost,
                drop_params: m.drop_params,
                responses_api: m.responses_api.unwrap_or_else(|| {
                    m.provider == ProviderKind::Openai && api_base.contains("://api.openai.com")
                }),
                unreachable_hint: cfg.unreachable_hint,
                provider,
                stats: DeploymentStats::default(),
                available: AtomicBool::new(true),
                health: Default::default(),
                load: load::LoadState::new(
                    m.launch.is_some() || m.provider == ProviderKind::Sglang,
                ),
                urls: Default::default(),
            });
            if matches!(m.provider, ProviderKind::Openai | ProviderKind::Sglang)
                && dep
                    .endpoint_url(crate::request::Endpoint::ChatCompletions)
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
        let groups = groups
            .into_iter()
            .map(|(name, deployments)| {
                let basis = ShuffleBasis::for_group(&deployments);
                let min_window = deployments.iter().filter_map(|d| d.context_window).min();
                let local_only = deployments.iter().all(|d| d.load.is_local());
                (
                    name,
                    Group {
                        deployments,
                        spill: Default::default(),
                        local_only,
                        basis,
                        min_window,
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
        let client = Upstream::new(client, idle_per_host, idle_timeout, connect_timeout);
        Ok(Router {
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

    /// The deployment made from `[[models]]` entry `index`.
    pub fn deployment_by_index(&self, index: usize) -> Option<&Arc<Deployment>> {
        self.deployments().find(|d| d.index == index)
    }

    /// The shared upstream HTTP client.
    pub fn client(&self) -> &reqwest::Client {
        self.client.reqwest()
    }

    /// Masks the known secrets in an upstream error's text.
    pub fn scrub(&self, e: &mut UpstreamError) {
        self.secrets.scrub_error(e);
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
            // Local first: a group whose local backends are all full sends the request to
            // its fallbacks first (and is tried again when they fail).
            if via == Via::Requested
                && !spilled
                && group.local_only
                && !req.options.disable_fallbacks
                && depth < self.policy.max_fallback_depth
                && self
                    .policy
                    .spillover
                    .is_some_and(|sp| sp.all_full(&group.deployments))
            {
                let next = self.next_groups(&model, via, ErrorClass::ServiceUnavailable, &req);
                if !next.is_empty() {
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
        loop {
            let now = now_ms();
            let eligible: Vec<usize> = (0..deps.len())
                .filter(|&i| {
                    let d = &deps[i];
                    d.available.load(Ordering::Relaxed)
                        && (only_one || !d.is_cooling(now))
                        && d.has_room(need)
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
            if let Some(sp) = &self.policy.spillover {
                let (open, spilled) = sp.local_first(fresh);
                if spilled && tried.is_empty() {
                    group.spill.cloud.fetch_add(1, Ordering::Relaxed);
                }
                fresh = open;
            }
            if fresh.is_empty() {
                // Everyone eligible has failed this request once: wait, then go round again.
                let wait = self
                    .policy
                    .backoff(retries, last.as_ref().and_then(|e| e.retry_after));
                if crate::duration::deadline(Instant::now(), wait) >= deadline {
                    return Err(last.unwrap_or_else(request_timeout));
                }
                tokio::time::sleep(wait).await;
                tried.clear();
                continue;
            }
            let pick = strategy::pick(
                self.policy.strategy,
                group.basis,
                &fresh,
                need,
                self.policy.latency_buffer,
            );
            let dep = fresh[pick].clone();
            let pos = deps.iter().position(|d| Arc::ptr_eq(d, &dep)).unwrap_or(0);
            let Some(slot) = dep.claim(need) else {
                // Lost a race for its last slot; it is no longer eligible this round.
                tried.push(pos);
                continue;
            };
            log.attempts += 1;
            log.deployment.clone_from(&dep.id);
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Err(last.unwrap_or_else(request_timeout));
            }
            match self.attempt(&dep, slot, req, remaining, log).await {
                Ok(resp) => return Ok(resp),
                Err(e) => {
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

    /// The error when a group has no deployment to try at all.
    fn nothing_eligible(
        &self,
        model: &str,
        deps: &[Arc<Deployment>],
        need: u64,
        now: u64,
    ) -> UpstreamError {
        let first_back = deps.iter().filter_map(|d| d.cooling_until(now)).min();
        if let Some(until) = first_back {
            let secs = (until.saturating_sub(now)).div_ceil(1000).max(1);
            let mut e = UpstreamError::new(
                ErrorClass::ServiceUnavailable,
                ApiError::unavailable(format!(
                    "every deployment of {model:?} is cooling down after failures; the first is back in {secs} s"
                ))
                .with_code("all_deployments_cooling")
                .with_retry_after(secs),
            );
            e.retry_after = Some(Duration::from_secs(secs));
            return e;
        }
        if deps
            .iter()
            .any(|d| d.available.load(Ordering::Relaxed) && !d.has_room(need))
        {
            let secs = 60 - (now / 1000) % 60;
            return UpstreamError::new(
                ErrorClass::RateLimit,
                ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "rate_limit_error",
                    format!("every deployment of {model:?} is at its rpm/tpm/max_parallel limit"),
                )
                .with_code("rate_limit_exceeded")
                .with_retry_after(secs),
            );
        }
        UpstreamError::new(
            ErrorClass::ServiceUnavailable,
            ApiError::unavailable(format!(
                "no deployment of {model:?} is available (local backends loading, restarting or failed)"
            ))
            .with_code("no_deployment_available"),
        )
    }

    /// Failure bookkeeping: counts, latency penalty, cooldown.
    fn on_failure(&self, dep: &Deployment, e: &UpstreamError, only_one: bool) {
        if e.class == ErrorClass::Timeout {
            dep.record_slow(dep.timeout);
        }
        // The client's own mistakes say nothing about the deployment.
        if matches!(
            e.class,
            ErrorClass::BadRequest | ErrorClass::ContextWindow | ErrorClass::ContentPolicy
        ) {
            return;
        }
        let (same, total) = dep.record_failure(e.class, self.policy.fail_window);
        if only_one {
            return; // A group's only deployment is never cooled.
        }
        let cool =
            e.class == ErrorClass::RateLimit || self.policy.should_cool(e.class, same, total);
        if cool {
            // The upstream's Retry-After, bounded by `max_cooldown`: one answer must not
            // take a deployment out of service for longer than the operator allows.
            let for_ = dep
                .cooldown
                .or(e
                    .retry_after
                    .filter(|d| !d.is_zero())
                    .map(|d| d.min(self.policy.max_cooldown)))
                .unwrap_or(self.policy.cooldown);
            dep.cool_down(for_, format!("{:?}: {}", e.class, e.error.message));
        }
    }

    /// One attempt against one deployment; upstream text in its error has the known
    /// secrets masked.
    async fn attempt(
        &self,
        dep: &Arc<Deployment>,
        slot: InFlight,
        req: &ClientRequest,
        limit: Duration,
        log: &mut RequestLog,
    ) -> Result<Response, UpstreamError> {
        self.attempt_unscrubbed(dep, slot, req, limit, log)
            .await
            .map_err(|mut e| {
                self.secrets.scrub_error(&mut e);
                e
            })
    }

    async fn attempt_unscrubbed(
        &self,
        dep: &Arc<Deployment>,
        slot: InFlight,
        req: &ClientRequest,
        limit: Duration,
        log: &mut RequestLog,
    ) -> Result<Response, UpstreamError> {
        let timeout = dep.timeout.min(limit);
        let rb = providers::attempt_body(dep, req)
            .await
            .and_then(|body| dep.provider.request(self.client.reqwest(), dep, req, body))
            .map_err(|e| UpstreamError::new(ErrorClass::BadRequest, e))?;
        let sent = Instant::now();
        let until = tokio::time::Instant::from_std(crate::duration::deadline(sent, timeout));
        // One timer for the whole exchange: the answer's head, then its whole body or a
        // stream's first chunk (a timer costs a registration and a removal).
        let mut slot = Some(slot);
        let exchange = async {
            let resp = self
                .client
                .send(rb)
                .await
                .map_err(|e| send_error(dep, e, timeout))?;
            if !resp.status().is_success() {
                return Ok(Answer::Refused(resp));
            }
            if req.stream {
                let translator = dep.provider.stream_translator(dep, req);
                let mut stream = UpstreamStream::new(
                    resp,
                    translator,
                    timeout,
                    slot.take().expect("the slot is taken once"),
                    self.secrets.clone(),
                    req.endpoint.api(),
                );
                stream.first().await?;
                return Ok(Answer::Stream(stream));
            }
            let limit = self.policy.max_response_bytes;
            match read_capped(resp, limit).await {
                Err(_) => Err(body_error(dep)),
                Ok(Capped::Whole(b)) => Ok(Answer::Whole(b)),
                Ok(Capped::Cut(_)) => Err(too_large_error(dep, limit)),
            }
        };
        let answer = match tokio::time::timeout_at(until, exchange).await {
            Err(_) => return Err(timeout_error(dep, timeout)),
            Ok(Err(e)) => return Err(e),
            Ok(Ok(a)) => a,
        };
        let now = Instant::now();
        match answer {
            Answer::Refused(resp) => {
                let status = resp.status();
                let headers = resp.headers().clone();
                // Only the start of an error body matters; the rest is never read.
                let limit = self.policy.max_error_bytes;
                let body = match tokio::time::timeout_at(until, read_capped(resp, limit)).await {
                    Ok(Ok(Capped::Whole(b) | Capped::Cut(b))) => b,
                    _ => Bytes::new(),
                };
                log.upstream += sent.elapsed();
                Err(dep.provider.error(status, &headers, &body))
            }
            Answer::Stream(mut stream) => {
                let ttft = now.saturating_duration_since(sent);
                log.upstream += ttft;
                dep.record_success(ttft);
                let resp = success(dep, log, now, "text/event-stream")
                    .header(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
                stream.set_log(log.take());
                Ok(resp
                    .body(Body::from_stream(stream))
                    .expect("valid response"))
            }
            Answer::Whole(body) => {
                let took = now.saturating_duration_since(sent);
                log.upstream += took;
                drop(slot);
                let body = dep
                    .provider
                    .translate_body(dep, req, body)
                    .map_err(|e| UpstreamError::new(ErrorClass::InternalServer, e))?;
                if dep.tpm.is_some() {
                    dep.add_tokens(usage_tokens(&body));
                }
                dep.record_success(took);
                let resp = success(dep, log, now, "application/json");
                Ok(resp.body(Body::from(body)).expect("valid response"))
            }
        }
    }
}

/// The head of a 200 answer from `dep` at `now`: llmgw's headers and `content_type`; the
/// log gets its status and time to first byte.
fn success(
    dep: &Deployment,
    log: &mut RequestLog,
    now: Instant,
    content_type: &'static str,
) -> axum::http::response::Builder {
    log.ttfb = Some(now.saturating_duration_since(log.start));
    log.status = 200;
    let mut builder = Response::builder().status(StatusCode::OK);
    if let Some(h) = builder.headers_mut() {
        h.insert(names::DEPLOYMENT, header_value(&dep.id));
        h.insert(names::ATTEMPTS, HeaderValue::from(log.attempts));
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
        h.insert(names::OVERHEAD_MS, overhead_header(log.overhead_at(now)));
    }
    builder
}

/// What came back from an upstream within an attempt's time.
// Short-lived and moved once, inside the attempt's future: boxing a variant would cost an
// allocation per request to save a copy.
#[allow(clippy::large_enum_variant)]
enum Answer {
    /// A non-2xx answer; its body is still unread.
    Refused(UpstreamResponse),
    /// A stream whose first chunk has arrived.
    Stream(UpstreamStream),
    /// A whole non-streaming answer.
    Whole(Bytes),
}

/// One line for all the fallback names a request gave that are not served here.
fn log_unknown(names: &[String]) {
    if !names.is_empty() {
        tracing::warn!(
            models = %Clean(&names.join(", ")),
            "fallbacks name model groups this gateway does not serve; skipped"
        );
    }
}

/// A body read up to a limit.
enum Capped {
    Whole(Bytes),
    /// The body was longer than the limit: its first `limit` bytes (the rest is unread).
    Cut(Bytes),
}

/// Reads `resp`'s body, but never more than `limit` bytes of it.
async fn read_capped(resp: UpstreamResponse, limit: usize) -> Result<Capped, upstream::BoxError> {
    let mut body = resp.into_body();
    // Most answers come in one piece: no copy then.
    let first = match body.chunk().await? {
        None => return Ok(Capped::Whole(Bytes::new())),
        Some(b) if b.len() > limit => return Ok(Capped::Cut(b.slice(..limit))),
        Some(b) => b,
    };
    if body.is_end_stream() {
        return Ok(Capped::Whole(first));
    }
    let mut buf = bytes::BytesMut::from(&first[..]);
    while let Some(chunk) = body.chunk().await? {
        let room = limit - buf.len();
        if chunk.len() > room {
            buf.extend_from_slice(&chunk[..room]);
            return Ok(Capped::Cut(buf.freeze()));
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(Capped::Whole(buf.freeze()))
}

/// A successful answer too large to hold. Retrying elsewhere would only fetch it again,
/// and the deployment did nothing wrong: the class is the one that neither retries,
/// falls back nor cools down.
fn too_large_error(dep: &Deployment, limit: usize) -> UpstreamError {
    UpstreamError::new(
        ErrorClass::BadRequest,
        ApiError::bad_gateway(format!(
            "deployment {} answered with more than {limit} bytes, the gateway's limit \
             ([router] max_response_bytes); ask for less (fewer inputs, lower n or max_tokens)",
            dep.id
        ))
        .with_code("upstream_response_too_large"),
    )
}

/// The tokens in a response's `usage` (OpenAI's and Responses' `total_tokens`, or
/// Anthropic's `input_tokens + output_tokens`), found without parsing the whole body.
fn usage_tokens(body: &[u8]) -> u64 {
    #[derive(serde::Deserialize)]
    struct Usage {
        #[serde(default)]
        total_tokens: Option<u64>,
        #[serde(default)]
        input_tokens: u64,
        #[serde(default)]
        output_tokens: u64,
    }
    let Some(at) = memchr::memmem::rfind(body, b"\"usage\"") else {
        return 0;
    };
    let rest = &body[at + 7..];
    let Some(colon) = rest.iter().position(|&c| c == b':') else {
        return 0;
    };
    let mut de = serde_json::Deserializer::from_slice(&rest[colon + 1..]);
    serde::Deserialize::deserialize(&mut de)
        .map(|u: Usage| {
            u.total_tokens
                .unwrap_or(u.input_tokens.saturating_add(u.output_tokens))
        })
        .unwrap_or(0)
}

fn context_window_error(model: &str, tokens: u64) -> UpstreamError {
    UpstreamError::new(
        ErrorClass::ContextWindow,
        ApiError::bad_request(format!(
            "the request has about {tokens} tokens, more than any deployment of {model:?} can hold"
        ))
        .with_code("context_length_exceeded")
        .with_param("messages"),
    )
}

fn request_timeout() -> UpstreamError {
    UpstreamError::new(
        ErrorClass::Timeout,
        ApiError::gateway_timeout("the request ran out of time before any deployment answered"),
    )
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

/// llmgw's response headers, made once: a `&str` name is parsed again on every insert.
pub(crate) mod names {
    use axum::http::HeaderName;
    pub(crate) const DEPLOYMENT: HeaderName = HeaderName::from_static("x-llmgw-deployment");
    pub(crate) const ATTEMPTS: HeaderName = HeaderName::from_static("x-llmgw-attempts");
    pub(crate) const OVERHEAD_MS: HeaderName = HeaderName::from_static("x-llmgw-overhead-ms");
    pub(crate) const FALLBACK: HeaderName = HeaderName::from_static("x-llmgw-fallback");
}

/// `x-llmgw-overhead-ms`: the gateway's own time, in milliseconds with three decimals.
pub(crate) fn overhead_header(d: Duration) -> HeaderValue {
    let mut ms = Vec::with_capacity(24);
    crate::logging::push_millis(&mut ms, d, 3);
    HeaderValue::from_maybe_shared(Bytes::from(ms)).unwrap_or(HeaderValue::from_static("0.000"))
}

fn timeout_error(dep: &Deployment, timeout: Duration) -> UpstreamError {
    UpstreamError::new(
        ErrorClass::Timeout,
        ApiError::gateway_timeout(format!(
            "deployment {} did not answer within {:?}",
            dep.id, timeout
        )),
    )
}

fn send_error(dep: &Deployment, e: SendError, timeout: Duration) -> UpstreamError {
    match e {
        SendError::Timeout => timeout_error(dep, timeout),
        SendError::Connect => match dep.unreachable_hint {
            Some(hint) => {
                connection_error(dep, &format!("connection refused or unreachable; {hint}"))
            }
            None => connection_error(dep, "connection refused or unreachable"),
        },
        SendError::Failed => connection_error(dep, "the request failed"),
    }
}

fn body_error(dep: &Deployment) -> UpstreamError {
    connection_error(dep, "the response body broke off")
}

fn connection_error(dep: &Deployment, why: &str) -> UpstreamError {
    UpstreamError::new(
        ErrorClass::Connection,
        ApiError::bad_gateway(format!(
            "deployment {} ({}): {why}",
            dep.id,
            redact::userinfo(&dep.api_base)
        )),
    )
}

impl UpstreamError {
    /// The client's error: the upstream's own OpenAI-shaped body when it had one.
    pub fn into_api_error(self) -> ApiError {
        let mut err = self.error;
        if err.retry_after.is_none() {
            err.retry_after = self.retry_after.map(|d| d.as_secs().max(1));
        }
        err
    }
}

/// The one log line per request, written when the request is finished (for streams:
/// when the last byte went out or the client went away).
#[derive(Debug)]
pub struct RequestLog {
    pub start: Instant,
    pub path: &'static str,
    pub model: String,
    pub deployment: String,
    pub fallback: Option<String>,
    pub status: u16,
    pub attempts: u32,
    pub stream: bool,
    pub ttfb: Option<Duration>,
    /// Time spent waiting on upstreams (to compute the gateway's own overhead).
    pub upstream: Duration,
    /// False when a stream ended early (client gone or upstream broke).
    pub complete: bool,
    pub client_gone: bool,
}

impl Default for RequestLog {
    fn default() -> Self {
        RequestLog {
            start: Instant::now(),
            path: "",
            model: String::new(),
            deployment: String::new(),
            fallback: None,
            status: 0,
            attempts: 0,
            stream: false,
            ttfb: None,
            upstream: Duration::ZERO,
            complete: true,
            client_gone: false,
        }
    }
}

impl RequestLog {
    /// Moves the record out, leaving one that writes nothing.
    pub fn take(&mut self) -> RequestLog {
        std::mem::take(self)
    }

    /// Time spent in the gateway itself so far (elapsed minus upstream waits).
    pub fn overhead(&self) -> Duration {
        self.overhead_at(Instant::now())
    }

    /// Time spent in the gateway itself until `now` (elapsed minus upstream waits).
    pub fn overhead_at(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.start)
            .saturating_sub(self.upstream)
    }
}

impl Drop for RequestLog {
    fn drop(&mut self) {
        if self.path.is_empty() {
            return;
        }
        crate::logging::request(&crate::logging::RequestLine {
            path: self.path,
            model: &self.model,
            deployment: &self.deployment,
            fallback: self.fallback.as_deref(),
            status: self.status,
            attempts: self.attempts,
            stream: self.stream,
            complete: self.complete,
            client_gone: self.client_gone,
            latency: self.start.elapsed(),
            ttfb: self.ttfb,
        });
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn usage_tokens_found_without_full_parse() {
        let body = br#"{"id":"x","choices":[{"message":{"content":"usage"}}],"usage":{"prompt_tokens":3,"completion_tokens":4,"total_tokens":7}}"#;
        assert_eq!(super::usage_tokens(body), 7);
        assert_eq!(super::usage_tokens(b"{}"), 0);
        let anthropic =
            br#"{"type":"message","content":[],"usage":{"input_tokens":3,"output_tokens":5}}"#;
        assert_eq!(super::usage_tokens(anthropic), 8);
    }
}
