//! A per-thread pool of HTTP/1 connections to plain `http://` upstreams.
//!
//! It replaces hyper-util's legacy pooled client, which cost ~12k of the gateway's ~97k
//! instructions per proxied request (callgrind, BENCHMARKS.md, issue 13): its pool key
//! hashed with SipHash three times a request, a lock, URI clones, and a task spawned for
//! every response whose body was still unread, to hand the connection back later.
//! Each serving thread runs its own single-threaded runtime (`conn::serve`), so here every
//! thread keeps its idle connections in a thread-local list, without locks, found by the
//! upstream's authority with a linear scan (a gateway has few upstreams).
//!
//! A connection goes back to the pool only when it can carry another request: when its
//! response body was read to the end (`PooledBody`). A body dropped half-read drops the
//! connection with it. A request that a reused connection hands back unsent (the upstream
//! closed it while idle) is sent once more on a new connection, as the legacy client did.
//! Connecting (DNS, connect timeout, TCP_NODELAY and keepalive) is hyper-util's
//! `HttpConnector`, as before.

use super::upstream::SendError;
use axum::http::{
    header::Entry, header::HOST, uri::Authority, HeaderValue, Request, Response, Uri,
};
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper_util::client::legacy::connect::HttpConnector;
use std::cell::{OnceCell, RefCell};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// The pool's settings (the same for every Router of a process).
#[derive(Clone, Copy)]
pub(crate) struct Settings {
    /// Idle connections kept per upstream; more are closed.
    pub(crate) idle_per_host: usize,
    /// An idle connection older than this is closed, not reused.
    pub(crate) idle_timeout: Duration,
    pub(crate) connect_timeout: Duration,
}

type Sender = SendRequest<reqwest::Body>;

/// One upstream: its `Host` header, made once, and its idle connections, oldest first.
struct Host {
    authority: Authority,
    header: HeaderValue,
    idle: Vec<Idle>,
}

struct Idle {
    sender: Sender,
    since: Instant,
}

thread_local! {
    /// This thread's idle connections: a connection's task runs on the thread that opened
    /// it, so a request on a serving thread wakes no other thread.
    static POOL: RefCell<Vec<Host>> = const { RefCell::new(Vec::new()) };
    static CONNECTOR: OnceCell<HttpConnector> = const { OnceCell::new() };
}

/// How long a pooled connection that is not ready yet (its task has not yet seen its last
/// exchange through) may take to become ready before a new connection is opened instead.
const READY_WAIT: Duration = Duration::from_millis(100);

/// Sends `req` (absolute-form URI) to its upstream over a pooled or new connection, and
/// returns the answer's head.
pub(crate) async fn send(
    settings: Settings,
    mut req: Request<reqwest::Body>,
) -> Result<Response<PooledBody>, SendError> {
    let uri = std::mem::take(req.uri_mut());
    let authority = uri.authority().ok_or(SendError::Failed)?.clone();
    let (header, idle) = with_host(&authority, |h| (h.header.clone(), h.take_idle(settings)))?;
    if let Entry::Vacant(v) = req.headers_mut().entry(HOST) {
        v.insert(header);
    }
    *req.uri_mut() = origin_form(&uri);
    let (mut sender, reused) = match checkout(settings, &authority, idle).await {
        Some(s) => (s, true),
        None => (connect(settings, &uri).await?, false),
    };
    let resp = match sender.try_send_request(req).await {
        Ok(resp) => resp,
        Err(mut e) => match e.take_message() {
            // Closed while idle, before the request went out: it is safe to send again.
            Some(req) if reused => {
                sender = connect(settings, &uri).await?;
                sender
                    .send_request(req)
                    .await
                    .map_err(|_| SendError::Failed)?
            }
            _ => return Err(SendError::Failed),
        },
    };
    let mut back = Some(Checkin {
        authority,
        sender,
        settings,
    });
    if resp.body().is_end_stream() {
        checkin(back.take());
    }
    Ok(resp.map(|body| PooledBody { body, back }))
}

/// `Host` as the legacy client set it: the host, and the port unless it is 80.
fn host_header(authority: &Authority) -> Result<HeaderValue, SendError> {
    let s = authority.as_str();
    let value = if s.contains('@') || s.ends_with(':') || authority.port_u16() == Some(80) {
        match authority.port_u16() {
            Some(p) if p != 80 => HeaderValue::from_str(&format!("{}:{p}", authority.host())),
            _ => HeaderValue::from_str(authority.host()),
        }
    } else {
        HeaderValue::from_str(s)
    };
    value.map_err(|_| SendError::Failed)
}

/// The request target an origin server expects: path and query only.
fn origin_form(uri: &Uri) -> Uri {
    match uri.path_and_query() {
        Some(pq) if pq.as_str() != "/" => Uri::from(pq.clone()),
        _ => Uri::default(),
    }
}

/// Runs `f` on this thread's entry for `authority`, made on first use.
fn with_host<T>(authority: &Authority, f: impl FnOnce(&mut Host) -> T) -> Result<T, SendError> {
    // The thread-local is gone only while the thread exits.
    let found = POOL.try_with(|p| {
        let mut hosts = p.borrow_mut();
        // Exact bytes: cheaper than `Authority`'s case-blind comparison, and the same
        // upstream is always spelled the same (its configured `api_base`).
        let i = match hosts
            .iter()
            .position(|h| h.authority.as_str() == authority.as_str())
        {
            Some(i) => i,
            None => {
                // Upstreams nothing waits for go (a backend relaunched on another port).
                hosts.retain(|h| !h.idle.is_empty());
                hosts.push(Host {
                    authority: authority.clone(),
                    header: host_header(authority)?,
                    idle: Vec::new(),
                });
                hosts.len() - 1
            }
        };
        Ok(f(&mut hosts[i]))
    });
    found.unwrap_or(Err(SendError::Failed))
}

/// `idle` if it can take a request now, else the next newest idle connection to
/// `authority` that can.
async fn checkout(
    settings: Settings,
    authority: &Authority,
    mut idle: Option<Sender>,
) -> Option<Sender> {
    loop {
        let mut sender = idle?;
        if sender.is_ready() {
            return Some(sender);
        }
        if let Ok(Ok(())) = tokio::time::timeout(READY_WAIT, sender.ready()).await {
            return Some(sender);
        }
        idle = with_host(authority, |h| h.take_idle(settings)).ok()?;
    }
}

impl Host {
    /// Pops the newest idle connection that is neither expired nor closed; the expired
    /// and closed ones met on the way are dropped.
    fn take_idle(&mut self, settings: Settings) -> Option<Sender> {
        let now = Instant::now();
        while let Some(idle) = self.idle.pop() {
            if now.saturating_duration_since(idle.since) > settings.idle_timeout {
                // The older ones have been idle longer still.
                self.idle.clear();
                return None;
            }
            if !idle.sender.is_closed() {
                return Some(idle.sender);
            }
        }
        None
    }

    /// Keeps `sender` as the newest idle connection, unless there are enough; drops
    /// the expired ones.
    fn put(&mut self, sender: Sender, settings: Settings) {
        let now = Instant::now();
        let expired = self
            .idle
            .iter()
            .take_while(|i| now.saturating_duration_since(i.since) > settings.idle_timeout)
            .count();
        self.idle.drain(..expired);
        if self.idle.len() < settings.idle_per_host {
            self.idle.push(Idle { sender, since: now });
        }
    }
}

/// A connection to hand back to the pool once its response body has been read.
struct Checkin {
    authority: Authority,
    sender: Sender,
    settings: Settings,
}

fn checkin(c: Option<Checkin>) {
    let Some(c) = c else { return };
    if !c.sender.is_closed() {
        let _ = with_host(&c.authority, |h| h.put(c.sender, c.settings));
    }
}

/// This thread's connector, made with the first caller's settings.
async fn connect(settings: Settings, uri: &Uri) -> Result<Sender, SendError> {
    use tower_service::Service as _;
    let mut connector = CONNECTOR.with(|c| c.get_or_init(|| connector(settings)).clone());
    let io = connector
        .call(uri.clone())
        .await
        .map_err(|_| SendError::Connect)?;
    let (sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|_| SendError::Connect)?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!("upstream connection: {e}");
        }
    });
    Ok(sender)
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

/// A response body that hands its connection back to the pool when read to the end.
pub(crate) struct PooledBody {
    body: Incoming,
    back: Option<Checkin>,
}

impl Body for PooledBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let frame = std::task::ready!(Pin::new(&mut this.body).poll_frame(cx));
        match &frame {
            Some(Ok(_)) if !this.body.is_end_stream() => {}
            Some(Err(_)) => this.back = None,
            // The end, seen as such or as the last of a known length.
            _ => checkin(this.back.take()),
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// Idle connections to `authority` in this thread's pool.
#[cfg(test)]
fn idle_count(authority: &str) -> usize {
    POOL.with(|p| {
        p.borrow()
            .iter()
            .filter(|h| h.authority.as_str() == authority)
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

    fn request(addr: std::net::SocketAddr) -> Request<reqwest::Body> {
        Request::post(format!("http://{addr}/v1/chat/completions?x=1"))
            .header("content-type", "application/json")
            .body(reqwest::Body::from("{\"model\":\"m\"}"))
            .unwrap()
    }

    async fn fetch(addr: std::net::SocketAddr) -> String {
        let resp = send(SETTINGS, request(addr)).await.expect("answered");
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
        let resp = send(SETTINGS, request(up.addr)).await.expect("answered");
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
        // The connection's task sees the close.
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(fetch(up.addr).await, BODY);
        assert_eq!(up.accepted.load(Ordering::SeqCst), 2);
    }

    /// The upstream closes the idle connection at the moment a request picks it: the
    /// connection still looks open and ready, the request goes to it, its task then sees
    /// the close and hands the request back unsent; it is sent again on a new connection.
    #[tokio::test]
    async fn a_request_a_closed_idle_connection_hands_back_is_sent_again() {
        use tokio::io::AsyncReadExt as _;
        let up = upstream(vec![Answer::CloseOnSignal]);
        assert_eq!(fetch(up.addr).await, BODY);
        // Let the connection's task finish its exchange and say it is ready again.
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert_eq!(idle_count(&up.addr.to_string()), 1);
        // A task that sends as soon as `trigger` is readable: woken by the runtime just
        // before the connection's task, which is woken by the close right after.
        let (mut trigger, mut pull) = tokio::net::UnixStream::pair().unwrap();
        let addr = up.addr;
        let sender = tokio::spawn(async move {
            let _ = pull.read(&mut [0u8; 1]).await;
            fetch(addr).await
        });
        tokio::task::yield_now().await;
        tokio::io::AsyncWriteExt::write_all(&mut trigger, b"x")
            .await
            .unwrap();
        up.close.send(()).unwrap();
        // Block the runtime meanwhile: both events are there when it next looks.
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(sender.await.unwrap(), BODY);
        assert_eq!(up.accepted.load(Ordering::SeqCst), 2);
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
            let resp = send(settings, request(up.addr)).await.expect("answered");
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

    #[test]
    fn host_header_is_host_and_port_without_the_default_port() {
        let h = |a: &str| host_header(&a.parse().unwrap()).unwrap();
        assert_eq!(h("127.0.0.1:8000"), "127.0.0.1:8000");
        assert_eq!(h("example.org:80"), "example.org");
        assert_eq!(h("example.org"), "example.org");
        assert_eq!(h("user:pw@example.org:81"), "example.org:81");
        assert_eq!(h("[::1]:8000"), "[::1]:8000");
    }

    #[test]
    fn origin_form_keeps_path_and_query_only() {
        let o = |u: &str| origin_form(&u.parse().unwrap()).to_string();
        assert_eq!(o("http://h:1/v1/chat?x=1"), "/v1/chat?x=1");
        assert_eq!(o("http://h:1"), "/");
        assert_eq!(o("http://h:1/"), "/");
    }
}
