//! Client connections: the accept loop and what bounds one connection.
//!
//! A gateway on a shared node is reachable by every user of the cluster, so nothing a
//! client does before (or instead of) sending a request may hold resources for long:
//!
//! - the open-file soft limit is raised to the hard limit at start (as nginx and Go do);
//! - at most `max_connections` are open; beyond that a new connection gets an immediate
//!   503 in OpenAI's error shape and is closed, instead of waiting in the accept queue;
//! - a per-connection watchdog closes a connection that has no request in flight when
//!   nothing arrived for `idle_timeout`, or when a request's headers started arriving
//!   more than `header_read_timeout` ago and are still incomplete (hyper's own header
//!   timeout also runs while a keep-alive connection waits, so it cannot tell idle from
//!   slow, and it knows nothing of HTTP/2);
//! - a request body must arrive within `body_read_timeout` (`body::BodyStopped`, a 408);
//! - on shutdown, connections without a request in flight close at once; only in-flight
//!   requests get the grace period.

use crate::body::BodyStopped;
use bytes::Bytes;
use futures_util::future::Either;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use llmgw_core::config::ServerConfig;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt as _, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// File descriptors kept out of the default connection cap: logs, config, state files,
/// supervised backends' pipes, Redis.
const RESERVED_FDS: u64 = 128;
/// Over-the-cap connections being answered at once; more are closed without an answer.
const MAX_REJECTING: usize = 64;
/// How long an over-the-cap connection may take to receive its 503.
const REJECT_LINGER: Duration = Duration::from_secs(1);
/// How long a connection without a request in flight may take to close after shutdown.
const SHUTDOWN_SETTLE: Duration = Duration::from_millis(100);
/// Pause after an accept error that is not about one connection (EMFILE, ENOBUFS, …).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// At most one warning per this period for a repeating accept problem.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// What bounds client connections; from `[server]`.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub header_read_timeout: Duration,
    pub body_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_connections: usize,
}

impl Limits {
    /// Raises the open-file limit (the default connection cap depends on it) and reads
    /// the rest from `[server]`.
    pub fn from_config(server: &ServerConfig) -> Limits {
        let nofile = raise_nofile_limit();
        let max_connections = server
            .max_connections
            .unwrap_or_else(|| default_max_connections(nofile));
        if max_connections as u64 > nofile.saturating_sub(RESERVED_FDS) {
            tracing::warn!(
                max_connections,
                open_file_limit = nofile,
                "[server] max_connections is above what the open-file limit allows; \
                 connections may fail with \"too many open files\" (raise `ulimit -n`)"
            );
        }
        Limits {
            header_read_timeout: server.header_read_timeout.0,
            body_read_timeout: server.body_read_timeout.0,
            idle_timeout: server.idle_timeout.0,
            max_connections,
        }
    }
}

/// The default connection cap for an open-file limit: half of what is left after the
/// reserve, because each client connection may need one upstream socket at the same time.
pub fn default_max_connections(nofile: u64) -> usize {
    usize::try_from(nofile.saturating_sub(RESERVED_FDS) / 2)
        .unwrap_or(usize::MAX)
        .max(1)
}

/// Raises RLIMIT_NOFILE's soft limit to its hard limit; logs the result once and returns
/// the soft limit now in force.
pub fn raise_nofile_limit() -> u64 {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!("cannot read the open-file limit: {e}");
            return 1024;
        }
    };
    if soft >= hard {
        tracing::info!(open_file_limit = soft, "open-file limit");
        return soft;
    }
    match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
        Ok(()) => {
            tracing::info!(
                open_file_limit = hard,
                was = soft,
                "open-file limit raised to the hard limit"
            );
            hard
        }
        Err(e) => {
            tracing::warn!(
                open_file_limit = soft,
                hard_limit = hard,
                "cannot raise the open-file limit: {e}"
            );
            soft
        }
    }
}

/// Serves `app` on `listener` until `signal` completes, then closes every connection
/// without a request in flight and returns once the in-flight ones are done (the caller
/// bounds that with its grace period).
///
/// Connections are served by one thread per core, each with its own single-threaded
/// runtime accepting from the same listening socket: a connection and everything its
/// requests wake (the upstream call, the response body) stay on one thread, without the
/// cross-thread wake-ups and work-stealing bookkeeping of a shared runtime (BENCHMARKS.md,
/// issue 13). The listener is shared (duplicated descriptors), not `SO_REUSEPORT`: with
/// that, a second process of the same user binding the port would silently get half the
/// connections instead of failing over to a free port. The calling runtime keeps the
/// background work (polling, sync, signals). `LLMGW_SERVE_THREADS` overrides the count
/// (0: no serving threads, connections on the calling runtime).
pub async fn serve(
    listener: TcpListener,
    app: axum::Router,
    hot: Option<Arc<crate::state::AppState>>,
    limits: Limits,
    signal: impl Future<Output = ()>,
    kill: CancellationToken,
) {
    let shared = Arc::new(Shared {
        app,
        hot,
        limits,
        builder: {
            let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            // The watchdog times headers; hyper's own timer would also fire on idle keep-alive.
            builder.http1().header_read_timeout(None);
            builder
        },
        open: Arc::new(AtomicUsize::new(0)),
        rejecting: Arc::new(AtomicUsize::new(0)),
        refusal: refusal_response(limits.max_connections),
        stop: CancellationToken::new(),
        shutdown: CancellationToken::new(),
        kill,
        tracker: TaskTracker::new(),
    });
    let loops = spawn_serving_threads(&listener, &shared);
    if loops.is_empty() {
        // No serving threads (none wanted, or none could be started): serve here.
        let stop = shared.stop.clone();
        tokio::select! {
            _ = accept_loop(listener, &shared) => {}
            _ = async { signal.await; stop.cancel(); } => {}
        }
    } else {
        drop(listener);
        signal.await;
        shared.stop.cancel();
        // Every accept loop has dropped its listener: the kernel refuses new connections.
        for stopped in loops {
            let _ = stopped.await;
        }
    }
    shared.shutdown.cancel();
    shared.tracker.close();
    shared.tracker.wait().await;
}

/// What every serving thread shares.
struct Shared {
    app: axum::Router,
    /// Set when the proxied endpoints may skip `app`'s router (`proxy::hot_route`).
    hot: Option<Arc<crate::state::AppState>>,
    limits: Limits,
    builder: hyper_util::server::conn::auto::Builder<TokioExecutor>,
    open: Arc<AtomicUsize>,
    rejecting: Arc<AtomicUsize>,
    refusal: Bytes,
    /// Stops the accept loops.
    stop: CancellationToken,
    /// Tells connections to close (after their request in flight).
    shutdown: CancellationToken,
    /// Closes connections at once, request in flight or not (the grace period is over):
    /// their response bodies are dropped, so streams cut there still record their rows.
    kill: CancellationToken,
    /// Every connection task, on whichever thread.
    tracker: TaskTracker,
}

/// How many serving threads: one per core; `LLMGW_SERVE_THREADS=0` serves on the calling
/// (work-stealing) runtime instead, for comparison.
fn serving_threads() -> usize {
    std::env::var("LLMGW_SERVE_THREADS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .min(64)
}

/// Starts the serving threads; each completes its receiver when its accept loop has
/// stopped (and dropped its listener), then keeps running until every connection is done.
fn spawn_serving_threads(
    listener: &TcpListener,
    shared: &Arc<Shared>,
) -> Vec<tokio::sync::oneshot::Receiver<()>> {
    let mut loops = Vec::new();
    for i in 0..serving_threads() {
        let Ok(std) = dup_listener(listener) else {
            break;
        };
        let (stopped, rx) = tokio::sync::oneshot::channel();
        let shared = shared.clone();
        let started = std::thread::Builder::new()
            .name(format!("llmgw-serve-{i}"))
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        tracing::warn!("cannot start a serving thread's runtime: {e}");
                        return;
                    }
                };
                rt.block_on(async move {
                    // This thread's pool of upstream connections, swept while it serves.
                    let sweeper = tokio::spawn(async {
                        loop {
                            tokio::time::sleep(llmgw_router::POOL_SWEEP_EVERY).await;
                            llmgw_router::sweep_idle_connections();
                        }
                    });
                    match TcpListener::from_std(std) {
                        Ok(l) => accept_loop(l, &shared).await,
                        Err(e) => tracing::warn!("cannot serve on a thread: {e}"),
                    }
                    let _ = stopped.send(());
                    // This thread's connections finish here (the tracker is closed and
                    // waited for by `serve` once every loop has stopped).
                    shared.tracker.wait().await;
                    sweeper.abort();
                });
            });
        if started.is_ok() {
            loops.push(rx);
        }
    }
    loops
}

/// Another descriptor for the same listening socket, not registered with any runtime.
fn dup_listener(listener: &TcpListener) -> io::Result<std::net::TcpListener> {
    use std::os::fd::AsFd as _;
    let fd = listener.as_fd().try_clone_to_owned()?;
    let std = std::net::TcpListener::from(fd);
    std.set_nonblocking(true)?;
    Ok(std)
}

/// Accepts connections until `shared.stop`; each is served on this thread.
async fn accept_loop(listener: TcpListener, shared: &Arc<Shared>) {
    let limits = shared.limits;
    let mut accept_warned: Option<Instant> = None;
    let mut cap_warned: Option<Instant> = None;
    loop {
        let accepted = tokio::select! {
            biased;
            _ = shared.stop.cancelled() => break,
            r = listener.accept() => r,
        };
        let tcp = match accepted {
            Ok((tcp, _)) => tcp,
            Err(e) if is_per_connection(&e) => continue,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => {
                if due(&mut accept_warned) {
                    tracing::warn!(
                        "cannot accept connections: {e}; retrying (open connections: {})",
                        shared.open.load(Ordering::Relaxed)
                    );
                }
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        // Streams are many small writes: without TCP_NODELAY each one after the first
        // waits for the client's delayed ACK (~40 ms per event).
        let _ = tcp.set_nodelay(true);
        let Some(slot) = Slot::take(&shared.open, limits.max_connections) else {
            if due(&mut cap_warned) {
                tracing::warn!(
                    max_connections = limits.max_connections,
                    "connection limit reached; new connections get 503 ([server] max_connections)"
                );
            }
            if let Some(slot) = Slot::take(&shared.rejecting, MAX_REJECTING) {
                shared.tracker.spawn(refuse(
                    tcp,
                    shared.refusal.clone(),
                    slot,
                    shared.shutdown.clone(),
                ));
            }
            continue;
        };
        let conn = Conn {
            app: shared.app.clone(),
            hot: shared.hot.clone(),
            limits,
            activity: Arc::new(Activity::new()),
            shutdown: shared.shutdown.clone(),
            kill: shared.kill.clone(),
        };
        shared.tracker.spawn(conn.run(tcp, shared.clone(), slot));
    }
}

/// Accept errors that concern one connection only (it was reset before we took it).
fn is_per_connection(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
    )
}

/// True at most once per [`WARN_EVERY`].
fn due(last: &mut Option<Instant>) -> bool {
    let now = Instant::now();
    if last.is_some_and(|t| now.duration_since(t) < WARN_EVERY) {
        return false;
    }
    *last = Some(now);
    true
}

/// One place in a bounded count, given back on drop.
struct Slot(Arc<AtomicUsize>);

impl Slot {
    fn take(count: &Arc<AtomicUsize>, max: usize) -> Option<Slot> {
        count
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| Slot(count.clone()))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The whole HTTP/1.1 answer to a connection over the cap.
fn refusal_response(max: usize) -> Bytes {
    let body = llmgw_core::error::ApiError::unavailable(format!(
        "the gateway has {max} open connections, its limit ([server] max_connections); \
         retry shortly or reuse connections"
    ))
    .with_code("too_many_connections")
    .body();
    let mut out = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nretry-after: 1\r\nconnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(&body);
    Bytes::from(out)
}

/// Answers a connection over the cap with 503 and closes it, all within
/// [`REJECT_LINGER`]. The request head is read first (HTTP clients, hyper among them,
/// take an answer that comes before their request for a protocol error), and whatever
/// follows is read and dropped until the client closes, so that closing does not reset
/// the connection before the client has read the answer.
async fn refuse(mut tcp: TcpStream, answer: Bytes, _slot: Slot, shutdown: CancellationToken) {
    use tokio::io::AsyncReadExt as _;
    const MAX_READ: usize = 64 * 1024;
    let talk = async {
        let mut seen = Vec::with_capacity(1024);
        let mut buf = [0u8; 4096];
        while memchr::memmem::find(&seen, b"\r\n\r\n").is_none() {
            let n = tcp.read(&mut buf).await?;
            if n == 0 || seen.len() + n > MAX_READ {
                return Ok(());
            }
            seen.extend_from_slice(&buf[..n]);
        }
        tcp.write_all(&answer).await?;
        tcp.shutdown().await?;
        let mut left = MAX_READ;
        while left > 0 {
            match tcp.read(&mut buf).await? {
                0 => break,
                n => left = left.saturating_sub(n),
            }
        }
        io::Result::Ok(())
    };
    tokio::select! {
        _ = tokio::time::timeout(REJECT_LINGER, talk) => {}
        _ = shutdown.cancelled() => {}
    }
}

/// What the watchdog knows about one connection. Times are milliseconds since `epoch`.
struct Activity {
    /// `clock::coarse_monotonic_ms` when the connection was accepted.
    epoch_ms: u64,
    in_flight: AtomicU32,
    /// When the last request ended (or the connection was accepted).
    idle_since: AtomicU64,
    /// When the first byte arrived while no request was in flight ([`NONE`] if none did).
    head_since: AtomicU64,
}

const NONE: u64 = u64::MAX;

impl Activity {
    fn new() -> Activity {
        Activity {
            epoch_ms: llmgw_core::clock::coarse_monotonic_ms(),
            in_flight: AtomicU32::new(0),
            idle_since: AtomicU64::new(0),
            head_since: AtomicU64::new(NONE),
        }
    }

    /// Milliseconds since the connection was accepted (coarse: a watchdog's precision).
    fn now_ms(&self) -> u64 {
        llmgw_core::clock::coarse_monotonic_ms()
            .saturating_sub(self.epoch_ms)
            .min(NONE - 1)
    }

    fn in_flight(&self) -> bool {
        self.in_flight.load(Ordering::Acquire) > 0
    }

    /// Bytes arrived: if no request is in flight, a request's head has started.
    fn received(&self) {
        if !self.in_flight() && self.head_since.load(Ordering::Relaxed) == NONE {
            self.head_since.store(self.now_ms(), Ordering::Relaxed);
        }
    }

    /// Completes when the connection should be closed: idle for `idle`, or a request
    /// head incomplete for `header`.
    async fn expired(&self, limits: &Limits) {
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(NONE - 1);
        let (header, idle) = (ms(limits.header_read_timeout), ms(limits.idle_timeout));
        // Sleeps are capped so that a state change between checks is noticed in time:
        // any deadline is at least this far after the change that sets it.
        let step = header.min(idle).max(1);
        loop {
            let now = self.now_ms();
            let wake = if self.in_flight() {
                now.saturating_add(step)
            } else {
                let head = self.head_since.load(Ordering::Relaxed);
                let deadline = if head != NONE {
                    head.saturating_add(header)
                } else {
                    self.idle_since.load(Ordering::Acquire).saturating_add(idle)
                };
                if deadline <= now {
                    return;
                }
                deadline.min(now.saturating_add(step))
            };
            tokio::time::sleep(Duration::from_millis(wake - now)).await;
        }
    }
}

/// A request in flight on a connection, from the service call until its response body
/// is dropped (for a stream: until the stream ends).
struct InFlight(Arc<Activity>);

impl InFlight {
    fn start(activity: &Arc<Activity>) -> InFlight {
        activity.in_flight.fetch_add(1, Ordering::AcqRel);
        activity.head_since.store(NONE, Ordering::Relaxed);
        InFlight(activity.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let a = &self.0;
        a.idle_since.store(a.now_ms(), Ordering::Release);
        a.head_since.store(NONE, Ordering::Relaxed);
        a.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// One accepted connection.
struct Conn {
    app: axum::Router,
    hot: Option<Arc<crate::state::AppState>>,
    limits: Limits,
    activity: Arc<Activity>,
    shutdown: CancellationToken,
    kill: CancellationToken,
}

impl Conn {
    async fn run(self, tcp: TcpStream, shared: Arc<Shared>, _slot: Slot) {
        let io = TokioIo::new(Watched {
            tcp,
            activity: self.activity.clone(),
        });
        let (activity, limits, shutdown, kill) = (
            self.activity.clone(),
            self.limits,
            self.shutdown.clone(),
            self.kill.clone(),
        );
        let service = hyper::service::service_fn(move |req| self.call(req));
        let conn = shared.builder.serve_connection(io, service);
        tokio::pin!(conn);
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!("connection ended: {e}");
                }
                return;
            }
            _ = activity.expired(&limits) => return,
            _ = shutdown.cancelled() => {}
        }
        // Shutting down. HTTP/1 closes after the response in flight, HTTP/2 sends GOAWAY
        // and closes after its streams; a connection without a request in flight (idle or
        // half-sent) gets a moment to flush and is closed.
        conn.as_mut().graceful_shutdown();
        loop {
            if !activity.in_flight() {
                let _ = tokio::time::timeout(SHUTDOWN_SETTLE, conn.as_mut()).await;
                return;
            }
            tokio::select! {
                _ = conn.as_mut() => return,
                _ = kill.cancelled() => return,
                _ = tokio::time::sleep(SHUTDOWN_SETTLE) => {}
            }
        }
    }

    /// Hands one request to the app: its body under the body deadline, its response body
    /// holding the in-flight mark.
    fn call(
        &self,
        req: hyper::Request<Incoming>,
    ) -> impl Future<Output = Result<hyper::Response<Tracked>, std::convert::Infallible>> + Send
    {
        let in_flight = InFlight::start(&self.activity);
        let req =
            req.map(|b| Deadline::new(b, self.limits.body_read_timeout, self.shutdown.clone()));
        // The proxied endpoints go straight to their handler: axum's router, its
        // middleware and extractors cost ~6 k instructions a request (BENCHMARKS.md).
        let route = match &self.hot {
            Some(state) => crate::proxy::hot_route(req.method(), req.uri().path())
                .map(|(endpoint, path)| (state.clone(), endpoint, path)),
            None => None,
        };
        let fut = match route {
            Some((state, endpoint, path)) => {
                // Boxed: the handler's future is kilobytes, and unboxed it was copied on
                // every move into hyper's dispatcher (memcpy doubled).
                Either::Left(Box::pin(crate::proxy::serve_hot(
                    state, endpoint, path, req,
                )))
            }
            None => {
                let routed = tower_service::Service::call(&mut self.app.clone(), req);
                Either::Right(async move {
                    match routed.await {
                        Ok(resp) => resp,
                        Err(never) => match never {},
                    }
                })
            }
        };
        async move {
            let resp = fut.await;
            Ok(resp.map(|body| Tracked {
                body,
                _in_flight: in_flight,
            }))
        }
    }
}

/// The client socket, telling the watchdog when bytes arrive.
struct Watched {
    tcp: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.tcp).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.received();
        }
        r
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.tcp).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.tcp).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }
}

/// A response body that keeps its request counted as in flight until it is dropped.
struct Tracked {
    body: axum::body::Body,
    _in_flight: InFlight,
}

impl Body for Tracked {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// A request body that fails with `BodyStopped` once its deadline has passed, or when
/// the gateway starts shutting down: a request still waiting for its body is not in flight
/// yet. The deadline counts from the first wait for the body, which the handler starts
/// reading right after the head arrived; a body that came with its head (most do) costs
/// no clock read and no timer.
struct Deadline {
    body: Incoming,
    limit: Duration,
    shutdown: CancellationToken,
    /// Created on the first wait only: most bodies arrive with their headers.
    stop: Option<Pin<Box<dyn Future<Output = BodyStopped> + Send>>>,
}

impl Deadline {
    fn new(body: Incoming, limit: Duration, shutdown: CancellationToken) -> Deadline {
        Deadline {
            body,
            limit,
            shutdown,
            stop: None,
        }
    }
}

impl Body for Deadline {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        if let Poll::Ready(frame) = Pin::new(&mut this.body).poll_frame(cx) {
            return Poll::Ready(frame.map(|r| r.map_err(Into::into)));
        }
        let stop = this.stop.get_or_insert_with(|| {
            let (limit, shutdown) = (this.limit, this.shutdown.clone());
            let at = Instant::now().checked_add(limit);
            Box::pin(async move {
                let timeout = async {
                    match at {
                        Some(at) => tokio::time::sleep_until(at).await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    _ = timeout => BodyStopped::Timeout(limit),
                    _ = shutdown.cancelled() => BodyStopped::ShuttingDown,
                }
            })
        });
        stop.as_mut()
            .poll(cx)
            .map(|why| Some(Err(Box::new(why) as Self::Error)))
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_cap_leaves_room_for_upstream_sockets() {
        assert_eq!(default_max_connections(1024), 448);
        assert_eq!(default_max_connections(65536), 32704);
        assert_eq!(default_max_connections(0), 1);
        assert_eq!(
            default_max_connections(u64::MAX),
            ((u64::MAX - 128) / 2) as usize
        );
    }

    #[test]
    fn refusal_is_a_complete_http_response_in_openai_shape() {
        let r = refusal_response(7);
        let text = std::str::from_utf8(&r).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 503 "), "{head}");
        assert!(head.contains(&format!("content-length: {}", body.len())));
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["error"]["code"], "too_many_connections");
        assert!(v["error"]["message"].as_str().unwrap().contains('7'));
    }
}
