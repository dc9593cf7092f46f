//! Exact-match response cache (chat completions, completions, embeddings) and the Redis
//! connection that replicas also use for shared state.
//!
//! - **Key**: `<namespace>[:<request namespace>]:<sha256 hex>`, where the hash covers the
//!   endpoint and the request body as llmgw's own keys left it (`model` is the model
//!   GROUP the client asked for, not a deployment), without `stream`, `stream_options`,
//!   `user` and `metadata`, with object keys in sorted order at every depth. So the same
//!   question asked streamed or not, by another user, with keys in another order, is one
//!   entry.
//! - **Stored form**: an entry remembers whether it holds a JSON body or a complete SSE
//!   stream (and whether that stream carries a usage chunk). A JSON entry answers both
//!   kinds of request: a streaming request gets a stream synthesised from it (role +
//!   content chunk, finish chunk, usage chunk if `stream_options.include_usage`,
//!   `[DONE]`). A stream entry answers only a streaming request with the same
//!   `include_usage` (its bytes replayed as they were sent); any other request is a miss,
//!   and its answer replaces the entry.
//! - **What is stored**: 200 responses only; a stream only once it ended with
//!   `data: [DONE]` (never a partial stream: a stream that broke off, ended with an error
//!   event or lost its client is not stored). The store happens before the response
//!   (or the stream's end) reaches the client, so the next identical request is a hit.
//! - **Controls**: `[cache] mode = "opt-in"` caches only requests that send a `cache`
//!   object. Per request: `"cache": {"no-cache": true}` (do not read; still store),
//!   `"no-store": true` (do not store), `"ttl": 60` (seconds, or "10m"), `"namespace":
//!   "x"` (a separate key space). `"cache": false` means no-cache + no-store.
//! - **Headers**: `x-llmgw-cache: hit|miss|skip` (skip: not looked up: opt-in mode
//!   without `cache`, `no-cache`, or Redis unavailable), `x-llmgw-cache-key`.
//! - **Redis down** ([`redis::RedisStore`]): short timeouts, a circuit breaker; lookups
//!   become `skip` and requests are served uncached.
//!
//! Counters are process-wide atomics, rendered by [`metrics_text`].

mod key;
mod replay;
use key::*;
use replay::*;

use self::memory::MemoryStore;
use self::redis::RedisStore;
use axum::body::Body;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::Response;
use bytes::{Bytes, BytesMut};
use futures_util::Stream;
use llmgw_core::config::{CacheBackend, CacheMode, LoadedConfig};
use llmgw_core::error::ApiError;
use llmgw_router::{Deployment, RequestLog};
use llmgw_wire::request::{ClientRequest, Endpoint};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::fmt::Write as _;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

pub mod memory;

pub mod redis;

pub mod shared;

/// Largest response kept (bigger ones are passed through uncached).
const MAX_ENTRY_BYTES: u64 = 16 * 1024 * 1024;

/// Why the cache could not start (a configuration problem, never an outage).
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("{0}")]
    Redis(#[from] self::redis::RedisError),
}

/// How a stored answer was sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Form {
    Json,
    /// An SSE stream without a usage chunk.
    Sse,
    /// An SSE stream with a usage chunk (`stream_options.include_usage`).
    SseUsage,
}

impl Form {
    fn tag(self) -> u8 {
        match self {
            Form::Json => b'J',
            Form::Sse => b'S',
            Form::SseUsage => b'U',
        }
    }
    fn from_tag(t: u8) -> Option<Form> {
        match t {
            b'J' => Some(Form::Json),
            b'S' => Some(Form::Sse),
            b'U' => Some(Form::SseUsage),
            _ => None,
        }
    }
    fn for_stream(include_usage: bool) -> Form {
        if include_usage {
            Form::SseUsage
        } else {
            Form::Sse
        }
    }
}

/// One cached answer.
#[derive(Debug, Clone)]
pub struct Entry {
    pub form: Form,
    pub body: Bytes,
    pub ttl: Duration,
}

impl Entry {
    /// Redis value: one tag byte, then the body.
    fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(self.body.len() + 1);
        v.push(self.form.tag());
        v.extend_from_slice(&self.body);
        v
    }
    fn decode(mut v: Vec<u8>) -> Option<Entry> {
        let form = Form::from_tag(*v.first()?)?;
        v.remove(0);
        Some(Entry {
            form,
            body: Bytes::from(v),
            ttl: Duration::ZERO,
        })
    }
}

enum Backend {
    Memory(MemoryStore),
    Redis(Arc<RedisStore>),
}

struct Inner {
    mode: CacheMode,
    ttl: Duration,
    namespace: String,
    backend: Backend,
    max_entry: u64,
}

/// The response cache as the request path sees it. Disabled = one branch per request.
pub struct Cache {
    inner: Option<Arc<Inner>>,
}

/// What the request path does after a lookup.
pub enum Outcome {
    /// Answer this; the router is not called.
    Hit(Response),
    /// Ask the router, then pass its response through [`Pending::finish`].
    Continue(Pending),
}

/// A miss or skip: the headers to add and, if allowed, where to store the answer.
pub struct Pending {
    status: Option<&'static str>,
    key: Option<Arc<str>>,
    store: Option<StoreJob>,
}

/// Where and how a response will be stored.
pub(crate) struct StoreJob {
    inner: Arc<Inner>,
    key: Arc<str>,
    ttl: Duration,
    stream: bool,
    include_usage: bool,
    /// The client's API: how its complete streams end.
    api: llmgw_wire::request::Api,
}

impl Cache {
    /// No cache, no Redis.
    pub fn disabled() -> Cache {
        Cache { inner: None }
    }

    /// Builds the cache from `[cache]`. When `redis_url` is set it connects to Redis
    /// (the gateway starts even when Redis is down) and starts the replicas' shared
    /// state sync for `deployments`, whether or not the response cache is enabled.
    pub async fn start(
        cfg: &LoadedConfig,
        deployments: Vec<Arc<Deployment>>,
    ) -> Result<Cache, CacheError> {
        let c = &cfg.config.cache;
        let store = match &cfg.redis_url {
            Some(url) => {
                let store = RedisStore::connect(url.expose(), c.redis_timeout.0).await?;
                shared::spawn(store.clone(), deployments, c.namespace.clone());
                counters::set_redis_configured();
                Some(store)
            }
            None => None,
        };
        if !c.enabled {
            return Ok(Cache::disabled());
        }
        let backend = match (c.backend, store) {
            (CacheBackend::Redis, Some(store)) => Backend::Redis(store),
            _ => Backend::Memory(MemoryStore::new(c.max_entries, c.max_bytes)),
        };
        Ok(Cache {
            inner: Some(Arc::new(Inner {
                mode: c.mode,
                ttl: c.ttl.0,
                namespace: c.namespace.clone(),
                backend,
                max_entry: MAX_ENTRY_BYTES.min(c.max_bytes.max(1)),
            })),
        })
    }

    /// Looks the request up. Errors are the client's (a malformed `cache` object).
    pub async fn lookup(
        &self,
        req: &ClientRequest,
        log: &mut RequestLog,
    ) -> Result<Outcome, ApiError> {
        let Some(inner) = &self.inner else {
            return Ok(Outcome::Continue(Pending {
                status: None,
                key: None,
                store: None,
            }));
        };
        let ctl = Controls::parse(req.options.cache.as_deref().map(|r| r.get()))?;
        let skip = |key: Option<Arc<str>>, store: Option<StoreJob>| {
            counters::skip();
            Ok(Outcome::Continue(Pending {
                status: Some("skip"),
                key,
                store,
            }))
        };
        if (inner.mode == CacheMode::OptIn && !ctl.present) || (ctl.no_cache && ctl.no_store) {
            return skip(None, None);
        }
        // Breaker open: not even the key is worth computing.
        if matches!(&inner.backend, Backend::Redis(r) if !r.is_up()) {
            return skip(None, None);
        }
        let Some(key) = cache_key(&inner.namespace, ctl.namespace.as_deref(), req) else {
            return skip(None, None);
        };
        let key: Arc<str> = Arc::from(key);
        let job = (!ctl.no_store).then(|| StoreJob {
            inner: inner.clone(),
            key: key.clone(),
            ttl: ctl.ttl.unwrap_or(inner.ttl),
            stream: req.stream,
            include_usage: req.include_usage,
            api: req.endpoint.api(),
        });
        if ctl.no_cache {
            return skip(Some(key), job);
        }
        let found = match &inner.backend {
            Backend::Memory(m) => m.get(&key).map(|e| (*e).clone()),
            Backend::Redis(r) => match r.get(&key).await {
                Ok(v) => v.and_then(Entry::decode),
                // Redis unavailable: serve uncached, do not try to store either.
                Err(_) => return skip(Some(key), None),
            },
        };
        if let Some(resp) = found.and_then(|e| answer(&e, req)) {
            counters::hit();
            log.deployment = "cache".into();
            log.status = 200;
            log.ttfb = Some(log.start.elapsed());
            let mut resp = resp;
            let h = resp.headers_mut();
            h.insert("x-llmgw-cache", HeaderValue::from_static("hit"));
            if let Ok(v) = HeaderValue::from_str(&key) {
                h.insert("x-llmgw-cache-key", v);
            }
            h.insert(
                llmgw_router::names::OVERHEAD_MS,
                llmgw_router::overhead_header(log.overhead()),
            );
            return Ok(Outcome::Hit(resp));
        }
        counters::miss();
        Ok(Outcome::Continue(Pending {
            status: Some("miss"),
            key: Some(key),
            store: job,
        }))
    }
}

impl Pending {
    /// Adds the cache headers and, for a 200 that may be stored, stores it: a JSON body
    /// now, a stream once it ended with `[DONE]`.
    pub async fn finish(self, resp: Response) -> Response {
        let Some(status) = self.status else {
            return resp;
        };
        let mut resp = resp;
        let h = resp.headers_mut();
        h.insert("x-llmgw-cache", HeaderValue::from_static(status));
        if let Some(v) = self
            .key
            .as_deref()
            .and_then(|k| HeaderValue::from_str(k).ok())
        {
            h.insert("x-llmgw-cache-key", v);
        }
        let Some(job) = self.store else {
            return resp;
        };
        // An answer from a fallback group is not stored under the requested group's key:
        // it would be served to callers who may use the requested group but not the one
        // that answered (a `small`-only key getting `big`'s answer).
        if resp.status() != StatusCode::OK
            || resp.headers().contains_key(llmgw_router::names::FALLBACK)
        {
            return resp;
        }
        let (parts, body) = resp.into_parts();
        if job.stream {
            let tee = Tee {
                inner: body.into_data_stream(),
                buf: BytesMut::new(),
                job: Some(job),
                storing: None,
                ended: false,
            };
            return Response::from_parts(parts, Body::from_stream(tee));
        }
        // A non-streamed answer is already whole in memory: this does not wait on anything.
        let bytes = match axum::body::to_bytes(body, usize::MAX).await {
            Ok(b) => b,
            Err(e) => {
                return axum::response::IntoResponse::into_response(ApiError::bad_gateway(format!(
                    "could not read the upstream response: {e}"
                )))
            }
        };
        job.store(Form::Json, bytes.clone()).await;
        Response::from_parts(parts, Body::from(bytes))
    }
}

impl StoreJob {
    async fn store(self, form: Form, body: Bytes) {
        if body.len() as u64 > self.inner.max_entry || self.ttl.is_zero() {
            return;
        }
        let entry = Entry {
            form,
            body,
            ttl: self.ttl,
        };
        match &self.inner.backend {
            Backend::Memory(m) => {
                m.insert(&self.key, entry);
                counters::store();
            }
            Backend::Redis(r) => {
                if r.set(&self.key, entry.encode(), self.ttl).await.is_ok() {
                    counters::store();
                }
            }
        }
    }
}

/// Process-wide cache counters (hits, misses, skips, stores, Redis errors, breaker).
pub mod counters {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

    pub(crate) static HITS: AtomicU64 = AtomicU64::new(0);
    pub(crate) static MISSES: AtomicU64 = AtomicU64::new(0);
    pub(crate) static SKIPS: AtomicU64 = AtomicU64::new(0);
    pub(crate) static STORES: AtomicU64 = AtomicU64::new(0);
    pub(crate) static ERRORS: AtomicU64 = AtomicU64::new(0);
    pub(crate) static BREAKER_OPEN: AtomicBool = AtomicBool::new(false);
    pub(crate) static REDIS: AtomicBool = AtomicBool::new(false);

    pub(crate) fn hit() {
        HITS.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn miss() {
        MISSES.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn skip() {
        SKIPS.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn store() {
        STORES.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn error() {
        ERRORS.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn set_breaker_open(open: bool) {
        BREAKER_OPEN.store(open, Ordering::Relaxed);
    }
    pub(crate) fn set_redis_configured() {
        REDIS.store(true, Ordering::Relaxed);
    }
    pub(crate) fn redis_configured() -> bool {
        REDIS.load(Ordering::Relaxed)
    }
    pub(crate) fn breaker_open() -> bool {
        BREAKER_OPEN.load(Ordering::Relaxed)
    }
}

/// The cache's metrics in Prometheus text format (append to `/metrics`).
pub fn metrics_text() -> String {
    use std::sync::atomic::Ordering::Relaxed;
    let mut out = String::with_capacity(1024);
    let mut family = |name: &str, kind: &str, help: &str, value: u64| {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
        );
    };
    family(
        "llmgw_cache_hits_total",
        "counter",
        "Requests answered from the response cache",
        counters::HITS.load(Relaxed),
    );
    family(
        "llmgw_cache_misses_total",
        "counter",
        "Cache lookups that found nothing usable",
        counters::MISSES.load(Relaxed),
    );
    family(
        "llmgw_cache_skips_total",
        "counter",
        "Requests not looked up (opt-in mode, no-cache, Redis unavailable)",
        counters::SKIPS.load(Relaxed),
    );
    family(
        "llmgw_cache_stores_total",
        "counter",
        "Responses stored in the cache",
        counters::STORES.load(Relaxed),
    );
    family(
        "llmgw_redis_errors_total",
        "counter",
        "Redis commands that failed or timed out",
        counters::ERRORS.load(Relaxed),
    );
    if counters::REDIS.load(Relaxed) {
        family(
            "llmgw_redis_breaker_open",
            "gauge",
            "1 while the Redis circuit breaker is open (Redis skipped)",
            u64::from(counters::BREAKER_OPEN.load(Relaxed)),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(endpoint: Endpoint, body: &str) -> ClientRequest {
        ClientRequest::parse(endpoint, Bytes::from(body.to_string())).expect("valid request")
    }

    fn key(body: &str) -> String {
        cache_key("ns", None, &req(Endpoint::ChatCompletions, body)).expect("key")
    }

    #[test]
    fn key_ignores_stream_user_metadata_and_key_order() {
        let a = key(r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"temperature":0}"#);
        let b = key(
            r#"{"temperature":0,"stream":true,"stream_options":{"include_usage":true},"user":"u","metadata":{"x":1},"messages":[{"content":"hi","role":"user"}],"model":"m"}"#,
        );
        assert_eq!(a, b);
        assert!(a.starts_with("ns:") && a.len() == 3 + 64);
    }

    #[test]
    fn key_changes_with_what_changes_the_answer() {
        let base = key(r#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#);
        for other in [
            r#"{"model":"n","messages":[{"role":"user","content":"hi"}]}"#,
            r#"{"model":"m","messages":[{"role":"user","content":"ho"}]}"#,
            r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"temperature":1}"#,
            r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"tools":[]}"#,
        ] {
            assert_ne!(base, key(other), "{other}");
        }
        let completions = cache_key(
            "ns",
            None,
            &req(
                Endpoint::Completions,
                r#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#,
            ),
        );
        assert_ne!(Some(base.clone()), completions);
        let spaced = cache_key(
            "ns",
            Some("x"),
            &req(
                Endpoint::ChatCompletions,
                r#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#,
            ),
        )
        .unwrap();
        assert!(spaced.starts_with("ns:x:"));
        assert_eq!(&spaced[5..], &base[3..]);
    }

    #[test]
    fn controls_parse() {
        let c = Controls::parse(Some(
            r#"{"no-cache":true,"no-store":false,"ttl":60,"namespace":"team-a"}"#,
        ))
        .unwrap();
        assert!(c.present && c.no_cache && !c.no_store);
        assert_eq!(c.ttl, Some(Duration::from_secs(60)));
        assert_eq!(c.namespace.as_deref(), Some("team-a"));
        assert_eq!(
            Controls::parse(Some(r#"{"ttl":"10m"}"#)).unwrap().ttl,
            Some(Duration::from_secs(600))
        );
        let off = Controls::parse(Some("false")).unwrap();
        assert!(off.no_cache && off.no_store);
        assert!(Controls::parse(Some("{}")).unwrap().present);
        assert!(!Controls::parse(None).unwrap().present);
        for bad in [
            r#"{"ttl":-1}"#,
            r#"{"ttl":1e300}"#,
            r#"{"ttl":18446744073709551616}"#,
            r#"{"ttl":31536001}"#,
            r#"{"ttl":"99999999999999999999d"}"#,
            r#"{"ttl":"1e300s"}"#,
            r#"{"ttl":"NaN"}"#,
            r#"{"ttl":""}"#,
            r#"{"ttl":null}"#,
            r#"{"ttl":[1]}"#,
            r#"{"no-cache":"yes"}"#,
            r#"{"namespace":"a b"}"#,
            "3",
        ] {
            assert_eq!(
                Controls::parse(Some(bad)).unwrap_err().status,
                StatusCode::BAD_REQUEST,
                "{bad}"
            );
        }
    }

    #[test]
    fn entries_round_trip_and_metrics_render() {
        for form in [Form::Json, Form::Sse, Form::SseUsage] {
            let e = Entry {
                form,
                body: Bytes::from_static(b"{}"),
                ttl: Duration::ZERO,
            };
            let back = Entry::decode(e.encode()).unwrap();
            assert_eq!((back.form, &back.body[..]), (form, &b"{}"[..]));
        }
        assert!(Entry::decode(b"Xjunk".to_vec()).is_none());
        assert!(Entry::decode(Vec::new()).is_none());
        let text = metrics_text();
        for name in [
            "llmgw_cache_hits_total",
            "llmgw_cache_misses_total",
            "llmgw_redis_errors_total",
        ] {
            assert!(
                text.contains(&format!("# TYPE {name} counter\n{name} ")),
                "{text}"
            );
        }
    }

    #[test]
    fn stream_completeness() {
        use llmgw_wire::request::Api;
        assert!(stream_complete(
            Api::OpenAi,
            b"data: {\"a\":1}\n\ndata: [DONE]\n\n"
        ));
        assert!(!stream_complete(Api::OpenAi, b"data: {\"a\":1}\n\n"));
        assert!(!stream_complete(
            Api::OpenAi,
            b"data: {\"a\":1}\n\ndata: {\"error\":{}}\n\ndata: [DONE]\n\n"
        ));
        let ant = b"event: message_start\ndata: {}\n\nevent: message_stop\ndata: {\"type\":\"message_stop\"}\n\n";
        assert!(stream_complete(Api::Anthropic, ant));
        assert!(!stream_complete(Api::Anthropic, &ant[..30]));
        assert!(!stream_complete(
            Api::Anthropic,
            b"event: error\ndata: {}\n\nevent: message_stop\ndata: {\"type\":\"message_stop\"}\n\n"
        ));
        assert!(stream_complete(
            Api::Responses,
            b"event: response.completed\ndata: {}\n\n"
        ));
        assert!(!stream_complete(
            Api::Responses,
            b"event: response.created\ndata: {}\n\n"
        ));
    }

    #[test]
    fn synthesized_chat_stream() {
        let body = br#"{"id":"c1","object":"chat.completion","created":5,"model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"Hello","tool_calls":[{"id":"t","type":"function","function":{"name":"f","arguments":"{}"}}]},"finish_reason":"tool_calls"}],"usage":{"prompt_tokens":1,"completion_tokens":2,"total_tokens":3}}"#;
        let s = synthesize_stream(Endpoint::ChatCompletions, body, true).unwrap();
        let text = std::str::from_utf8(&s).unwrap();
        let events: Vec<&str> = text.split("\n\n").filter(|e| !e.is_empty()).collect();
        assert_eq!(events.len(), 4, "{text}");
        let first: Value = serde_json::from_str(events[0].strip_prefix("data: ").unwrap()).unwrap();
        assert_eq!(first["object"], "chat.completion.chunk");
        assert_eq!(first["choices"][0]["delta"]["content"], "Hello");
        assert_eq!(first["choices"][0]["delta"]["tool_calls"][0]["index"], 0);
        let fin: Value = serde_json::from_str(events[1].strip_prefix("data: ").unwrap()).unwrap();
        assert_eq!(fin["choices"][0]["finish_reason"], "tool_calls");
        let usage: Value = serde_json::from_str(events[2].strip_prefix("data: ").unwrap()).unwrap();
        assert_eq!(usage["usage"]["total_tokens"], 3);
        assert_eq!(usage["choices"], serde_json::json!([]));
        assert_eq!(events[3], "data: [DONE]");
        let no_usage = synthesize_stream(Endpoint::ChatCompletions, body, false).unwrap();
        assert_eq!(
            std::str::from_utf8(&no_usage)
                .unwrap()
                .matches("data: ")
                .count(),
            3
        );
    }
}
