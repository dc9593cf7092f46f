//! The Redis connection shared by the response cache and the replicas' shared state,
//! built so that Redis can vanish at any moment without failing a request.
//!
//! - One multiplexed connection (cheap to clone, pipelines concurrent commands), held in
//!   an `ArcSwapOption`: the request path loads it without a lock.
//! - Every command runs under a timeout of a few milliseconds (`[cache] redis_timeout`).
//! - A circuit breaker: after [`FAILURES_TO_OPEN`] consecutive failures it opens, the
//!   connection is dropped and every caller skips Redis at once (no waiting, no
//!   connecting). A single background task probes (connect + `PING`) every
//!   [`PROBE_INTERVAL`] and closes the breaker when Redis answers again. Requests never
//!   pay for a probe.
//! - The gateway starts with the breaker open when Redis is down (a warning is logged)
//!   and picks Redis up as soon as a probe succeeds.
//!
//! The URL may carry a password: it is never logged or put into an error message.

use super::counters;
use arc_swap::ArcSwapOption;
use redis::aio::MultiplexedConnection;
use redis::AsyncConnectionConfig;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Consecutive failures that open the breaker.
pub const FAILURES_TO_OPEN: u32 = 3;
/// How often a background probe tries an open breaker's Redis again.
pub const PROBE_INTERVAL: Duration = Duration::from_secs(1);

/// Why a Redis operation did not happen. Callers treat every variant as "no Redis now".
#[derive(Debug, thiserror::Error)]
pub enum RedisError {
    #[error("redis skipped: circuit breaker open")]
    Open,
    #[error("redis command timed out after {0:?}")]
    Timeout(Duration),
    #[error("redis error: {0}")]
    Command(String),
    /// A configuration error: the gateway does not start.
    #[error("[cache] redis_url is not a valid Redis URL ({0}); expected e.g. redis://[:password@]host:6379[/db] (the URL itself is not shown: it may carry a password)")]
    InvalidUrl(String),
}

/// The shared Redis handle (connection + breaker).
pub struct RedisStore {
    client: redis::Client,
    conn: ArcSwapOption<MultiplexedConnection>,
    timeout: Duration,
    failures: AtomicU32,
    open: AtomicBool,
    probing: AtomicBool,
}

impl RedisStore {
    /// Parses the URL (an error here is a configuration error) and tries one connection
    /// within `timeout` (x4 for the first handshake); when that fails the gateway still
    /// starts, with the breaker open and a background probe running.
    pub async fn connect(url: &str, timeout: Duration) -> Result<Arc<RedisStore>, RedisError> {
        // Only the error's category: never anything that could echo the URL.
        let client = redis::Client::open(url)
            .map_err(|e| RedisError::InvalidUrl(e.category().to_string()))?;
        let store = Arc::new(RedisStore {
            client,
            conn: ArcSwapOption::empty(),
            timeout,
            failures: AtomicU32::new(0),
            open: AtomicBool::new(true),
            probing: AtomicBool::new(false),
        });
        counters::set_breaker_open(true);
        match store.connect_once(timeout * 4).await {
            Ok(c) => {
                store.install(c);
                tracing::info!("connected to Redis (response cache / shared state)");
            }
            Err(e) => {
                tracing::warn!(error = %e, "Redis is not reachable; serving without it and retrying in the background");
                store.spawn_probe();
            }
        }
        Ok(store)
    }

    /// A connection to use now, or `Open` when the breaker says Redis is down.
    fn conn(&self) -> Result<MultiplexedConnection, RedisError> {
        if self.open.load(Ordering::Relaxed) {
            return Err(RedisError::Open);
        }
        match self.conn.load_full() {
            Some(c) => Ok((*c).clone()),
            None => Err(RedisError::Open),
        }
    }

    /// True while the breaker is closed (Redis usable).
    pub fn is_up(&self) -> bool {
        !self.open.load(Ordering::Relaxed)
    }

    /// Runs one command or pipeline under the timeout, feeding the breaker.
    pub async fn run<T, F, Fut>(self: &Arc<Self>, f: F) -> Result<T, RedisError>
    where
        F: FnOnce(MultiplexedConnection) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        let conn = self.conn()?;
        let r = match tokio::time::timeout(self.timeout, f(conn)).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(RedisError::Command(e.category().to_string())),
            Err(_) => Err(RedisError::Timeout(self.timeout)),
        };
        match &r {
            Ok(_) => self.failures.store(0, Ordering::Relaxed),
            Err(RedisError::Open) => {}
            Err(e) => self.failed(e),
        }
        r
    }

    fn failed(self: &Arc<Self>, e: &RedisError) {
        counters::error();
        let n = self.failures.fetch_add(1, Ordering::AcqRel) + 1;
        if n >= FAILURES_TO_OPEN && !self.open.swap(true, Ordering::AcqRel) {
            counters::set_breaker_open(true);
            self.conn.store(None);
            tracing::warn!(error = %e, failures = n, "Redis failing: circuit breaker open; serving without Redis and probing it every {PROBE_INTERVAL:?}");
            self.spawn_probe();
        }
    }

    /// Connects and pings.
    async fn connect_once(&self, timeout: Duration) -> Result<MultiplexedConnection, RedisError> {
        let cfg = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout));
        let attempt = async {
            let mut c = self
                .client
                .get_multiplexed_async_connection_with_config(&cfg)
                .await?;
            let _: String = redis::cmd("PING").query_async(&mut c).await?;
            Ok::<_, redis::RedisError>(c)
        };
        match tokio::time::timeout(timeout, attempt).await {
            Ok(Ok(c)) => Ok(c),
            Ok(Err(e)) => Err(RedisError::Command(e.category().to_string())),
            Err(_) => Err(RedisError::Timeout(timeout)),
        }
    }

    /// Uses `c` from now on and closes the breaker.
    fn install(&self, c: MultiplexedConnection) {
        self.conn.store(Some(Arc::new(c)));
        self.failures.store(0, Ordering::Relaxed);
        self.open.store(false, Ordering::Release);
        counters::set_breaker_open(false);
    }

    /// Starts the (single) background probe unless one runs already.
    fn spawn_probe(self: &Arc<Self>) {
        if self.probing.swap(true, Ordering::AcqRel) {
            return;
        }
        let me = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(PROBE_INTERVAL).await;
                let Some(store) = me.upgrade() else { return };
                // The handshake may take a little longer than one command.
                if let Ok(c) = store.connect_once(store.timeout * 4).await {
                    // Probe flag first: should the breaker open again right away, the
                    // next failure starts a new probe.
                    store.probing.store(false, Ordering::Release);
                    store.install(c);
                    tracing::info!("Redis reachable again: circuit breaker closed");
                    return;
                }
            }
        });
    }
}

/// Operations the cache and the shared state use.
impl RedisStore {
    /// `GET key`.
    pub async fn get(self: &Arc<Self>, key: &str) -> Result<Option<Vec<u8>>, RedisError> {
        let key = key.to_string();
        self.run(move |mut c| async move { redis::cmd("GET").arg(&key).query_async(&mut c).await })
            .await
    }

    /// `SET key value PX ttl`.
    pub async fn set(
        self: &Arc<Self>,
        key: &str,
        value: Vec<u8>,
        ttl: Duration,
    ) -> Result<(), RedisError> {
        let key = key.to_string();
        let ms = ttl.as_millis().max(1) as u64;
        self.run(move |mut c| async move {
            redis::cmd("SET")
                .arg(&key)
                .arg(value)
                .arg("PX")
                .arg(ms)
                .query_async::<()>(&mut c)
                .await
        })
        .await
    }
}
