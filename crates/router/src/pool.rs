//! A per-thread pool of HTTP/1 connections to plain `http://` upstreams.
//!
//! It replaces hyper-util's legacy pooled client, which cost ~12k of the gateway's ~97k
//! instructions per proxied request (callgrind, BENCHMARKS.md, issue 13): its pool key
//! hashed with SipHash three times a request, a lock, URI clones, and a task spawned for
//! every response whose body was still unread, to hand the connection back later.
//! Each serving thread runs its own single-threaded runtime (`conn::serve`), so here every
//! thread keeps its idle connections in a thread-local list, without locks, found by the
//! upstream's authority with a linear scan (a gateway has few upstreams). The exchange on
//! a connection is `h1`'s, run by the request's own task.
//!
//! A connection goes back to the pool only when it can carry another request: when its
//! response body was read to the end (`PooledBody`, `h1::ResponseBody::can_reuse`). A
//! body dropped half-read drops the connection with it. A reused connection that the
//! upstream closes before answering (it closed it while idle, just as the request went
//! out) gets the request once more on a new connection, as Go's client does.
//! Connecting (DNS, connect timeout, TCP_NODELAY and keepalive) is hyper-util's
//! `HttpConnector`, as before.

use super::h1::{self, Conn, ResponseBody};
use super::upstream::SendError;
use axum::http::{HeaderValue, Response, Uri};
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper_util::client::legacy::connect::HttpConnector;
use std::cell::{OnceCell, RefCell};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

/// The pool's settings (the same for every Router of a process).
#[derive(Clone, Copy)]
pub(crate) struct Settings {
    /// Idle connections kept per upstream; more are closed.
    pub(crate) idle_per_host: usize,
    /// An idle connection older than this is closed, not reused.
    pub(crate) idle_timeout: Duration,
    pub(crate) connect_timeout: Duration,
}

/// One upstream: its authority (`host:port`, also its `Host` header) and its idle
/// connections, oldest first.
struct Host {
    authority: Arc<str>,
    header: HeaderValue,
    idle_timeout: Duration,
    idle: Vec<Idle>,
}

struct Idle {
    conn: Conn,
    /// `clock::coarse_monotonic_ms` when it went idle.
    since_ms: u64,
}

thread_local! {
    /// This thread's idle connections: a connection is read and written by the task of
    /// the request using it, on the thread that serves that request.
    static POOL: RefCell<Vec<Host>> = const { RefCell::new(Vec::new()) };
    static CONNECTOR: OnceCell<HttpConnector> = const { OnceCell::new() };
}

/// Sends `req` with `body` to its upstream (an `http://` URL without user info) over a
/// pooled or new connection, and returns the answer's head.
pub(crate) async fn send(
    settings: Settings,
    req: &reqwest::Request,
    body: &[u8],
) -> Result<Response<PooledBody>, SendError> {
    let url = req.url();
    let (authority, header, idle) = with_host(url.authority(), settings, |h| {
        (h.authority.clone(), h.header.clone(), h.take_idle(settings))
    })?;
    let mut head = Vec::with_capacity(512);
    h1::encode_request(
        &mut head,
        req.method(),
        (url.path(), url.query()),
        &header,
        req.headers(),
        body.len(),
    );
    let (mut conn, mut reused) = match idle {
        Some(c) => (c, true),
        None => (connect(settings, &authority).await?, false),
    };
    let (parts, state) = loop {
        match conn.exchange(req.method(), &head, body).await {
            Ok(answer) => break answer,
            // Closed while idle, before it answered: the request goes once more.
            Err(h1::Error::Closed) if reused => {
                conn = connect(settings, &authority).await?;
                reused = false;
            }
            Err(_) => return Err(SendError::Failed),
        }
    };
    let mut body = PooledBody {
        state,
        conn: Some(conn),
        back: Some(Checkin {
            authority,
            settings,
        }),
    };
    body.check_in_if_done();
    Ok(parts.map(|()| body))
}

/// Runs `f` on this thread's entry for `authority`, made on first use.
fn with_host<T>(
    authority: &str,
    settings: Settings,
    f: impl FnOnce(&mut Host) -> T,
) -> Result<T, SendError> {
    // The thread-local is gone only while the thread exits.
    let found = POOL.try_with(|p| {
        let mut hosts = p.borrow_mut();
        // Exact bytes: the same upstream is always spelled the same (its configured
        // `api_base`, normalised by the URL parser).
        let i = match hosts.iter().position(|h| &*h.authority == authority) {
            Some(i) => i,
            None => {
                // Upstreams nothing waits for go (a backend relaunched on another port).
                hosts.retain(|h| !h.idle.is_empty());
                hosts.push(Host {
                    authority: authority.into(),
                    header: HeaderValue::from_str(authority).map_err(|_| SendError::Failed)?,
                    idle_timeout: settings.idle_timeout,
                    idle: Vec::new(),
                });
                hosts.len() - 1
            }
        };
        Ok(f(&mut hosts[i]))
    });
    found.unwrap_or(Err(SendError::Failed))
}

impl Host {
    /// Pops the newest idle connection that is neither expired nor closed; the expired
    /// and closed ones met on the way are dropped.
    fn take_idle(&mut self, settings: Settings) -> Option<Conn> {
        let now = llmgw_core::clock::coarse_monotonic_ms();
        while let Some(idle) = self.idle.pop() {
            if expired(now, idle.since_ms, settings.idle_timeout) {
                // The older ones have been idle longer still.
                self.idle.clear();
                return None;
            }
            if idle.conn.is_usable() {
                return Some(idle.conn);
            }
        }
        None
    }

    /// Keeps `conn` as the newest idle connection, unless there are enough; drops
    /// the expired ones.
    fn put(&mut self, conn: Conn, settings: Settings) {
        let now = llmgw_core::clock::coarse_monotonic_ms();
        let old = self
            .idle
            .iter()
            .take_while(|i| expired(now, i.since_ms, settings.idle_timeout))
            .count();
        self.idle.drain(..old);
        if self.idle.len() < settings.idle_per_host {
            self.idle.push(Idle {
                conn,
                since_ms: now,
            });
        }
    }
}

/// True when a connection idle since `since_ms` has been idle too long at `now_ms`.
fn expired(now_ms: u64, since_ms: u64, idle_timeout: Duration) -> bool {
    u128::from(now_ms.saturating_sub(since_ms)) > idle_timeout.as_millis()
}

/// How often each serving thread sweeps its idle connections (`sweep`).
pub const SWEEP_EVERY: Duration = Duration::from_secs(10);

/// Closes this thread's idle connections that expired or that their upstream closed, so
/// that an upstream nobody sends to any more is not left with open sockets (requests only
/// look at the connections they take). Each serving thread runs it every `SWEEP_EVERY`.
pub fn sweep() {
    let now = llmgw_core::clock::coarse_monotonic_ms();
    let _ = POOL.try_with(|p| {
        let mut hosts = p.borrow_mut();
        for h in hosts.iter_mut() {
            let timeout = h.idle_timeout;
            h.idle
                .retain(|i| !expired(now, i.since_ms, timeout) && i.conn.is_usable());
        }
        hosts.retain(|h| !h.idle.is_empty());
    });
}

/// Where a connection goes back once its response body has been read.
struct Checkin {
    authority: Arc<str>,
    settings: Settings,
}

/// This thread's connector, made with the first caller's settings.
async fn connect(settings: Settings, authority: &str) -> Result<Conn, SendError> {
    use tower_service::Service as _;
    let uri: Uri = format!("http://{authority}")
        .parse()
        .map_err(|_| SendError::Failed)?;
    let mut connector = CONNECTOR.with(|c| c.get_or_init(|| connector(settings)).clone());
    let io = connector.call(uri).await.map_err(|_| SendError::Connect)?;
    Ok(Conn::new(io.into_inner()))
}

fn connector(settings: Settings) -> HttpConnector {
    let mut http = HttpConnector::new();
    http.set_nodelay(true);
    http.set_connect_timeout(Some(settings.connect_timeout));
    // As reqwest does by default: dead peers are noticed on idle pooled connections.
    http.set_keepalive(Some(Duration::from_secs(15)));
    http.set_keepalive_interval(Some(Duration::from_secs(15)));
    http
}

/// A response body read from its connection as it is polled; the connection goes back to
/// the pool when the body was read to the end.
pub(crate) struct PooledBody {
    state: ResponseBody,
    /// `None` once the body has ended (the connection went back, or was closed).
    conn: Option<Conn>,
    back: Option<Checkin>,
}

impl PooledBody {
    fn check_in_if_done(&mut self) {
        if !self.state.is_end() {
            return;
        }
        let Some(conn) = self.conn.take() else { return };
        if let Some(back) = self.back.take().filter(|_| self.state.can_reuse(&conn)) {
            let _ = with_host(&back.authority, back.settings, |h| {
                h.put(conn, back.settings)
            });
        }
    }
}

impl Body for PooledBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        let this = self.get_mut();
        let Some(conn) = this.conn.as_mut() else {
            return Poll::Ready(None);
        };
        let next = std::task::ready!(this.state.poll_data(conn, cx));
        match &next {
            Some(Err(_)) => this.conn = None,
            _ => this.check_in_if_done(),
        }
        Poll::Ready(next.map(|r| r.map(Frame::data)))
    }

    fn is_end_stream(&self) -> bool {
        self.state.is_end()
    }

    fn size_hint(&self) -> SizeHint {
        match self.state.remaining() {
            Some(n) => SizeHint::with_exact(n),
            None => SizeHint::default(),
        }
    }
}

/// Idle connections to `authority` in this thread's pool.
#[cfg(test)]
fn idle_count(authority: &str) -> usize {
    POOL.with(|p| {
        p.borrow()
            .iter()
            .filter(|h| &*h.authority == authority)
            .map(|h| h.idle.len())
            .sum()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt as _;
    use std::io::{Read as _, Write as _};
    use std::net::{TcpListener, TcpStream};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{mpsc, Arc};

    const SETTINGS: Settings = Settings {
        idle_per_host: 8,
        idle_timeout: Duration::from_secs(90),
        connect_timeout: Duration::from_secs(2),
    };

    /// One scripted exchange: the answer to write, and whether to close afterwards.
    #[derive(Clone, Copy)]
    enum Answer {
        KeepAlive,
        /// Answer, then close when the test says so.
        CloseOnSignal,
        /// A chunked answer's first chunk, then nothing until the client goes away.
        HalfChunked,
    }

    const BODY: &str = "{\"ok\":true}";

    /// A blocking upstream on its own thread (so a test may block its runtime while the
    /// upstream acts): counts accepted connections and records request heads.
    struct Upstream {
        addr: std::net::SocketAddr,
        accepted: Arc<AtomicUsize>,
        heads: mpsc::Receiver<String>,
        close: mpsc::Sender<()>,
    }

    fn upstream(script: Vec<Answer>) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let (head_tx, heads) = mpsc::channel();
        let (close, close_rx) = mpsc::channel::<()>();
        let count = accepted.clone();
        std::thread::spawn(move || {
            // The script is the first connection's; later ones only keep alive.
            let mut script = Some(script);
            let close_rx = Arc::new(std::sync::Mutex::new(close_rx));
            for conn in listener.incoming() {
                let Ok(conn) = conn else { return };
                count.fetch_add(1, Ordering::SeqCst);
                let (head_tx, close_rx) = (head_tx.clone(), close_rx.clone());
                let mine = script.take().unwrap_or_default();
                std::thread::spawn(move || serve(conn, mine, head_tx, close_rx));
            }
        });
        Upstream {
            addr,
            accepted,
            heads,
            close,
        }
    }

    /// Answers requests on `conn` following `script`; past its end, keep-alive answers.
    fn serve(
        mut conn: TcpStream,
        script: Vec<Answer>,
        heads: mpsc::Sender<String>,
        close: Arc<std::sync::Mutex<mpsc::Receiver<()>>>,
    ) {
        let mut script = script.into_iter();
        loop {
            let mut buf = Vec::new();
            let mut byte = [0u8; 1];
            while !buf.ends_with(b"\r\n\r\n") {
                match conn.read(&mut byte) {
                    Ok(1) => buf.push(byte[0]),
                    _ => return,
                }
            }
            let head = String::from_utf8_lossy(&buf).to_string();
            let len: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length: ")
                        .map(|v| v.trim().parse().unwrap())
                })
                .unwrap_or(0);
            let mut body = vec![0u8; len];
            conn.read_exact(&mut body).unwrap();
            let _ = heads.send(head);
            match script.next().unwrap_or(Answer::KeepAlive) {
                Answer::KeepAlive => write_answer(&mut conn),
                Answer::CloseOnSignal => {
                    write_answer(&mut conn);
                    let _ = close.lock().unwrap().recv();
                    return;
                }
                Answer::HalfChunked => {
                    let _ = conn.write_all(
                        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nfirst\r\n",
                    );
                    // Wait for the client to close.
                    let _ = conn.read(&mut byte);
                    return;
                }
            }
        }
    }

    fn write_answer(conn: &mut TcpStream) {
        let answer = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{BODY}",
            BODY.len()
        );
        let _ = conn.write_all(answer.as_bytes());
    }

    const REQUEST_BODY: &[u8] = b"{\"model\":\"m\"}";

    fn request(addr: std::net::SocketAddr) -> reqwest::Request {
        let url = format!("http://{addr}/v1/chat/completions?x=1");
        let mut req = reqwest::Request::new(reqwest::Method::POST, url.parse().unwrap());
        req.headers_mut()
            .insert("content-type", HeaderValue::from_static("application/json"));
        req
    }

    async fn fetch(addr: std::net::SocketAddr) -> String {
        let resp = send(SETTINGS, &request(addr), REQUEST_BODY)
            .await
            .expect("answered");
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8(body.to_vec()).unwrap()
    }

    #[tokio::test]
    async fn sequential_requests_share_one_connection_and_are_sent_in_origin_form() {
        let up = upstream(vec![]);
        for _ in 0..10 {
            assert_eq!(fetch(up.addr).await, BODY);
        }
        assert_eq!(up.accepted.load(Ordering::SeqCst), 1);
        assert_eq!(idle_count(&up.addr.to_string()), 1);
        let head = up.heads.recv().unwrap();
        assert!(
            head.starts_with("POST /v1/chat/completions?x=1 HTTP/1.1\r\n"),
            "{head}"
        );
        let lower = head.to_ascii_lowercase();
        assert!(
            lower.contains(&format!("\r\nhost: {}\r\n", up.addr)),
            "{head}"
        );
        assert!(lower.contains("\r\ncontent-length: 13\r\n"), "{head}");
    }

    #[tokio::test]
    async fn a_body_dropped_half_read_does_not_go_back_to_the_pool() {
        let up = upstream(vec![Answer::HalfChunked]);
        let req = request(up.addr);
        let resp = send(SETTINGS, &req, REQUEST_BODY).await.expect("answered");
        let mut body = resp.into_body();
        let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(&first[..], b"first");
        drop(body);
        assert_eq!(idle_count(&up.addr.to_string()), 0);
        // The next request gets its own answer on a new connection, not the rest of the
        // first one.
        assert_eq!(fetch(up.addr).await, BODY);
        assert_eq!(up.accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn an_idle_connection_the_upstream_closed_is_not_used() {
        let up = upstream(vec![Answer::CloseOnSignal]);
        assert_eq!(fetch(up.addr).await, BODY);
        up.close.send(()).unwrap();
        // The runtime sees the close: the idle connection reads as not usable.
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(fetch(up.addr).await, BODY);
        assert_eq!(up.accepted.load(Ordering::SeqCst), 2);
    }

    /// The upstream closes the idle connection at the moment a request picks it, before
    /// the runtime has seen the close: the request goes out on it, the close comes back
    /// instead of an answer, and the request is sent again on a new connection.
    #[tokio::test]
    async fn a_request_on_a_connection_closed_while_idle_is_sent_again() {
        let up = upstream(vec![Answer::CloseOnSignal]);
        assert_eq!(fetch(up.addr).await, BODY);
        assert_eq!(idle_count(&up.addr.to_string()), 1);
        up.close.send(()).unwrap();
        // The close arrives while the runtime is blocked: the connection still looks open.
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(fetch(up.addr).await, BODY);
        assert_eq!(up.accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn the_sweep_closes_idle_connections_that_were_closed_or_expired() {
        let closing = upstream(vec![Answer::CloseOnSignal]);
        let lasting = upstream(vec![]);
        let settings = Settings {
            idle_timeout: Duration::from_millis(300),
            ..SETTINGS
        };
        for up in [&closing, &lasting] {
            let req = request(up.addr);
            let resp = send(settings, &req, REQUEST_BODY).await.expect("answered");
            resp.into_body().collect().await.unwrap();
            assert_eq!(idle_count(&up.addr.to_string()), 1);
        }
        closing.close.send(()).unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        sweep();
        assert_eq!(idle_count(&closing.addr.to_string()), 0);
        assert_eq!(idle_count(&lasting.addr.to_string()), 1);
        tokio::time::sleep(Duration::from_millis(400)).await;
        sweep();
        assert_eq!(idle_count(&lasting.addr.to_string()), 0);
    }

    #[tokio::test]
    async fn idle_connections_expire_and_are_kept_only_up_to_the_cap() {
        let up = upstream(vec![]);
        let settings = Settings {
            idle_per_host: 1,
            idle_timeout: Duration::from_millis(100),
            ..SETTINGS
        };
        let get = || async {
            let req = request(up.addr);
            let resp = send(settings, &req, REQUEST_BODY).await.expect("answered");
            resp.into_body().collect().await.unwrap().to_bytes()
        };
        // Two at once: two connections, one kept.
        let (a, b) = tokio::join!(get(), get());
        assert_eq!((&a[..], &b[..]), (BODY.as_bytes(), BODY.as_bytes()));
        assert_eq!(up.accepted.load(Ordering::SeqCst), 2);
        assert_eq!(idle_count(&up.addr.to_string()), 1);
        get().await;
        assert_eq!(up.accepted.load(Ordering::SeqCst), 2);
        // Idle for longer than the idle timeout: not reused.
        tokio::time::sleep(Duration::from_millis(200)).await;
        get().await;
        assert_eq!(up.accepted.load(Ordering::SeqCst), 3);
    }
}
