//! One HTTP/1.1 exchange with a plain-http upstream, on a connection the pool owns.
//!
//! hyper's client ran each connection as its own task and handed requests and body
//! frames to it through channels: per proxied request, that task was scheduled and woken
//! several times and cost ~12k of the gateway's ~60k instructions (callgrind,
//! BENCHMARKS.md, issue 13). Here the request's own task writes the request and reads the
//! answer, and the response body reads the socket when it is polled, as nginx does.
//!
//! Everything from the upstream is parsed as hostile: the head is capped
//! (`MAX_HEAD`, `MAX_HEADERS`), a chunk-size line and the trailers too, lengths are
//! checked, and the framing follows RFC 9112 §6.3 (a `Transfer-Encoding` wins over a
//! `Content-Length`, and such a connection is not reused). A connection is reused only
//! when its answer was framed, read to its end, and nothing followed it.

use axum::http::{
    header, HeaderMap, HeaderName, HeaderValue, Method, Response, StatusCode, Version,
};
use bytes::{Buf as _, Bytes, BytesMut};
use std::io::{self, IoSlice};
use std::mem::MaybeUninit;
use std::task::{Context, Poll};
use tokio::io::AsyncWriteExt as _;
use tokio::net::TcpStream;

/// Longest response head (status line and headers) accepted from an upstream.
const MAX_HEAD: usize = 256 * 1024;
/// Most header lines accepted in a response head (hyper's default was 100).
const MAX_HEADERS: usize = 100;
/// Longest chunk-size line, extensions included.
const MAX_CHUNK_LINE: usize = 4096;
/// Longest trailer section after the last chunk.
const MAX_TRAILERS: usize = 64 * 1024;
/// Most informational (1xx) answers skipped before the real one.
const MAX_INFORMATIONAL: usize = 8;
/// Room made in the read buffer before each read.
const READ_SIZE: usize = 16 * 1024;

/// Why an exchange failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Error {
    /// The connection was closed (or reset) before any byte of an answer: on a reused
    /// connection the upstream most likely closed it while idle, so the request can go
    /// again on a new one.
    Closed,
    /// An I/O error, or an answer that is not valid HTTP/1.
    Failed,
}

/// An open connection to an upstream and the bytes read from it but not yet used.
pub(crate) struct Conn {
    io: TcpStream,
    buf: BytesMut,
}

/// How the answer's body is delimited, and where its reading stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// `Content-Length`: this many bytes are still to come.
    Length(u64),
    Chunked(Chunk),
    /// Neither: the body ends when the upstream closes.
    UntilClose,
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    Size,
    /// This many bytes of the current chunk are still to come.
    Data(u64),
    /// The CRLF after a chunk's data.
    DataEnd,
    Trailers,
}

impl Conn {
    pub(crate) fn new(io: TcpStream) -> Conn {
        Conn {
            io,
            buf: BytesMut::new(),
        }
    }

    /// False when the upstream closed the connection (or sent something unasked) while it
    /// was idle. It looks only at readiness the runtime already knows of, so a live idle
    /// connection costs no system call.
    pub(crate) fn is_usable(&self) -> bool {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        match self.io.poll_read_ready(&mut cx) {
            Poll::Pending => true,
            Poll::Ready(Err(_)) => false,
            Poll::Ready(Ok(())) => matches!(
                self.io.try_read(&mut [0u8; 1]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock
            ),
        }
    }

    /// Writes the request (`head` from `encode_request`, then `body`) and reads the
    /// answer's head. Informational (1xx) answers are skipped.
    pub(crate) async fn exchange(
        &mut self,
        method: &Method,
        head: &[u8],
        body: &[u8],
    ) -> Result<(Response<()>, ResponseBody), Error> {
        self.write_request(head, body)
            .await
            .map_err(|_| Error::Closed)?;
        let mut answered = false;
        let mut informational = 0;
        loop {
            if !self.buf.is_empty() {
                answered = true;
                if let Some(parts) = parse_head(&mut self.buf)? {
                    match parts.status().as_u16() {
                        101 => return Err(Error::Failed),
                        100..=199 if informational < MAX_INFORMATIONAL => {
                            informational += 1;
                            continue;
                        }
                        100..=199 => return Err(Error::Failed),
                        _ => {}
                    }
                    let (framing, reusable) = framing(method, &parts)?;
                    return Ok((parts, ResponseBody { framing, reusable }));
                }
                if self.buf.len() >= MAX_HEAD {
                    return Err(Error::Failed);
                }
            }
            match std::future::poll_fn(|cx| self.poll_fill(cx)).await {
                Ok(0) | Err(_) if !answered => return Err(Error::Closed),
                Ok(0) | Err(_) => return Err(Error::Failed),
                Ok(_) => {}
            }
        }
    }

    async fn write_request(&mut self, head: &[u8], body: &[u8]) -> io::Result<()> {
        let mut slices = [IoSlice::new(head), IoSlice::new(body)];
        let mut rest = &mut slices[..];
        IoSlice::advance_slices(&mut rest, 0);
        while !rest.is_empty() {
            let n = self.io.write_vectored(rest).await?;
            if n == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            IoSlice::advance_slices(&mut rest, n);
        }
        Ok(())
    }

    /// Reads what the socket has into the buffer; `Ok(0)` at the end.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.buf.capacity() - self.buf.len() < READ_SIZE / 4 {
            self.buf.reserve(READ_SIZE);
        }
        tokio_util::io::poll_read_buf(std::pin::Pin::new(&mut self.io), cx, &mut self.buf)
    }
}

/// The body's reading state; the connection itself stays with the caller, who passes it
/// to each `poll_data` (so the pool can take it back at the end).
pub(crate) struct ResponseBody {
    framing: Framing,
    /// The connection may carry another request once this body is read to its end.
    reusable: bool,
}

impl ResponseBody {
    /// True once the whole body has been read.
    pub(crate) fn is_end(&self) -> bool {
        matches!(self.framing, Framing::Done | Framing::Length(0))
    }

    /// True when `conn` can go back to the pool: the body was read to its end, the
    /// upstream keeps the connection open, and sent nothing after the answer.
    pub(crate) fn can_reuse(&self, conn: &Conn) -> bool {
        self.reusable && self.is_end() && conn.buf.is_empty()
    }

    /// The exact number of body bytes still to come, when known.
    pub(crate) fn remaining(&self) -> Option<u64> {
        match self.framing {
            Framing::Length(n) => Some(n),
            Framing::Done => Some(0),
            _ => None,
        }
    }

    /// The next piece of the body; `None` at its end.
    pub(crate) fn poll_data(
        &mut self,
        conn: &mut Conn,
        cx: &mut Context<'_>,
    ) -> Poll<Option<io::Result<Bytes>>> {
        loop {
            if let Some(step) = self.step(&mut conn.buf) {
                return Poll::Ready(step.map_err(|()| invalid()).transpose());
            }
            let n = std::task::ready!(conn.poll_fill(cx))?;
            if n == 0 {
                if self.framing == Framing::UntilClose {
                    self.framing = Framing::Done;
                    return Poll::Ready(None);
                }
                return Poll::Ready(Some(Err(io::ErrorKind::UnexpectedEof.into())));
            }
        }
    }

    /// Decodes what `buf` holds: `Some(Ok(Some(data)))` for a piece of body,
    /// `Some(Ok(None))` at the end, `None` when more bytes are needed.
    fn step(&mut self, buf: &mut BytesMut) -> Option<Result<Option<Bytes>, ()>> {
        loop {
            match self.framing {
                Framing::Done | Framing::Length(0) => {
                    self.framing = Framing::Done;
                    return Some(Ok(None));
                }
                Framing::Length(rest) => {
                    let n = take(buf, rest)?;
                    self.framing = Framing::Length(rest - n as u64);
                    return Some(Ok(Some(buf.split_to(n).freeze())));
                }
                Framing::UntilClose => {
                    if buf.is_empty() {
                        return None;
                    }
                    return Some(Ok(Some(buf.split().freeze())));
                }
                Framing::Chunked(Chunk::Size) => match httparse::parse_chunk_size(buf) {
                    Ok(httparse::Status::Complete((used, size))) => {
                        buf.advance(used);
                        self.framing = Framing::Chunked(match size {
                            0 => Chunk::Trailers,
                            n => Chunk::Data(n),
                        });
                    }
                    Ok(httparse::Status::Partial) if buf.len() < MAX_CHUNK_LINE => return None,
                    _ => return Some(Err(())),
                },
                Framing::Chunked(Chunk::Data(rest)) => {
                    let n = take(buf, rest)?;
                    let left = rest - n as u64;
                    self.framing = Framing::Chunked(match left {
                        0 => Chunk::DataEnd,
                        _ => Chunk::Data(left),
                    });
                    return Some(Ok(Some(buf.split_to(n).freeze())));
                }
                Framing::Chunked(Chunk::DataEnd) => {
                    if buf.len() < 2 {
                        return None;
                    }
                    if &buf[..2] != b"\r\n" {
                        return Some(Err(()));
                    }
                    buf.advance(2);
                    self.framing = Framing::Chunked(Chunk::Size);
                }
                Framing::Chunked(Chunk::Trailers) => {
                    // Trailers are read past, not kept (hyper's client did not pass them
                    // on either).
                    let end = if buf.starts_with(b"\r\n") {
                        2
                    } else {
                        match memchr::memmem::find(buf, b"\r\n\r\n") {
                            Some(i) => i + 4,
                            None if buf.len() < MAX_TRAILERS => return None,
                            None => return Some(Err(())),
                        }
                    };
                    buf.advance(end);
                    self.framing = Framing::Done;
                }
            }
        }
    }
}

/// How many of `rest` body bytes `buf` holds now; `None` when it holds none.
fn take(buf: &BytesMut, rest: u64) -> Option<usize> {
    if buf.is_empty() {
        return None;
    }
    Some(usize::try_from(rest).map_or(buf.len(), |r| r.min(buf.len())))
}

fn invalid() -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        "the upstream's answer is not valid HTTP/1.1 chunked encoding",
    )
}

/// Writes a request head: `method target HTTP/1.1`, `host` (unless `headers` has one),
/// `headers` (without any framing headers of their own), `accept: */*` unless given (as
/// reqwest and hyper's client sent it), and the body's length.
pub(crate) fn encode_request(
    out: &mut Vec<u8>,
    method: &Method,
    target: (&str, Option<&str>),
    host: &HeaderValue,
    headers: &HeaderMap,
    body_len: usize,
) {
    out.extend_from_slice(method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.0.as_bytes());
    if let Some(query) = target.1 {
        out.push(b'?');
        out.extend_from_slice(query.as_bytes());
    }
    out.extend_from_slice(b" HTTP/1.1\r\n");
    if !headers.contains_key(header::HOST) {
        push_header(out, header::HOST.as_str(), host.as_bytes());
    }
    for (name, value) in headers {
        // The framing is ours: a length or coding from elsewhere could split the request.
        if name != header::CONTENT_LENGTH
            && name != header::TRANSFER_ENCODING
            && name != header::CONNECTION
        {
            push_header(out, name.as_str(), value.as_bytes());
        }
    }
    if !headers.contains_key(header::ACCEPT) {
        out.extend_from_slice(b"accept: */*\r\n");
    }
    if body_len > 0 || !matches!(*method, Method::GET | Method::HEAD) {
        let mut n = itoa::Buffer::new();
        push_header(out, "content-length", n.format(body_len).as_bytes());
    }
    out.extend_from_slice(b"\r\n");
}

fn push_header(out: &mut Vec<u8>, name: &str, value: &[u8]) {
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Takes a response head off the front of `buf`, or returns `None` (and leaves `buf` as it
/// is) when `buf` does not hold all of it yet.
fn parse_head(buf: &mut BytesMut) -> Result<Option<Response<()>>, Error> {
    let mut lines = [const { MaybeUninit::<httparse::Header>::uninit() }; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut []);
    let len = match httparse::ParserConfig::default()
        .parse_response_with_uninit_headers(&mut resp, buf, &mut lines)
    {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err(Error::Failed),
    };
    let status = resp
        .code
        .and_then(|c| StatusCode::from_u16(c).ok())
        .ok_or(Error::Failed)?;
    // (Values sharing the head's bytes instead of copies measured no cheaper: a reference
    // count per header instead of an allocation.)
    let mut headers = HeaderMap::with_capacity(resp.headers.len());
    for h in resp.headers.iter() {
        let name = HeaderName::from_bytes(h.name.as_bytes()).map_err(|_| Error::Failed)?;
        let value = HeaderValue::from_bytes(h.value).map_err(|_| Error::Failed)?;
        headers.append(name, value);
    }
    let mut parts = Response::new(());
    *parts.status_mut() = status;
    *parts.version_mut() = match resp.version {
        Some(0) => Version::HTTP_10,
        _ => Version::HTTP_11,
    };
    *parts.headers_mut() = headers;
    buf.advance(len);
    Ok(Some(parts))
}

/// The body's framing (RFC 9112 §6.3) and whether the connection may be reused after it.
fn framing(method: &Method, head: &Response<()>) -> Result<(Framing, bool), Error> {
    let headers = head.headers();
    let keep_alive = head.version() == Version::HTTP_11
        && !headers
            .get_all(header::CONNECTION)
            .iter()
            .any(|v| tokens(v).any(|t| t.eq_ignore_ascii_case(b"close")));
    let status = head.status().as_u16();
    if *method == Method::HEAD || status == 204 || status == 304 {
        return Ok((Framing::Done, keep_alive));
    }
    let length = content_length(headers)?;
    if headers.contains_key(header::TRANSFER_ENCODING) {
        // RFC 9112 §6.1: an HTTP/1.0 message with a coding has faulty framing (found by
        // the differential test against hyper).
        if head.version() == Version::HTTP_10 {
            return Err(Error::Failed);
        }
        let chunked = headers
            .get_all(header::TRANSFER_ENCODING)
            .iter()
            .next_back()
            .and_then(|v| tokens(v).next_back())
            .is_some_and(|t| t.eq_ignore_ascii_case(b"chunked"));
        return Ok(match chunked {
            // A length beside a coding may be an attempt at response splitting.
            true => (
                Framing::Chunked(Chunk::Size),
                keep_alive && length.is_none(),
            ),
            false => (Framing::UntilClose, false),
        });
    }
    Ok(match length {
        Some(n) => (Framing::Length(n), keep_alive),
        None => (Framing::UntilClose, false),
    })
}

/// The `Content-Length`, if any: every value (and list member) must be the same number.
fn content_length(headers: &HeaderMap) -> Result<Option<u64>, Error> {
    let mut found = None;
    for value in headers.get_all(header::CONTENT_LENGTH) {
        // Every member must be a number: an empty value or member is faulty framing, not
        // an absent length (found by the differential test against hyper).
        for t in value
            .as_bytes()
            .split(|&b| b == b',')
            .map(|t| t.trim_ascii())
        {
            let n = parse_decimal(t).ok_or(Error::Failed)?;
            if found.is_some_and(|f| f != n) {
                return Err(Error::Failed);
            }
            found = Some(n);
        }
    }
    Ok(found)
}

fn parse_decimal(s: &[u8]) -> Option<u64> {
    if s.is_empty() || s.len() > 19 {
        return None;
    }
    s.iter().try_fold(0u64, |n, &b| {
        b.is_ascii_digit()
            .then(|| n.checked_mul(10)?.checked_add(u64::from(b - b'0')))?
    })
}

/// The comma-separated members of a header value, trimmed; empty ones skipped.
fn tokens(value: &HeaderValue) -> impl DoubleEndedIterator<Item = &[u8]> {
    value
        .as_bytes()
        .split(|&b| b == b',')
        .map(|t| t.trim_ascii())
        .filter(|t| !t.is_empty())
}

#[cfg(test)]
#[path = "h1_differential.rs"]
mod differential;

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt as _;
    use tokio::net::TcpListener;

    /// A connection whose upstream writes `answer` (in `pieces` separate writes, with a
    /// pause between them) after reading the request head, then keeps the socket open
    /// until the test ends.
    async fn answered(pieces: Vec<&'static [u8]>) -> (Conn, tokio::task::JoinHandle<Vec<u8>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut got = Vec::new();
            let mut buf = [0u8; 4096];
            while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = s.read(&mut buf).await.unwrap();
                got.extend_from_slice(&buf[..n]);
            }
            for p in pieces {
                s.write_all(p).await.unwrap();
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
            // Hold the connection until the client is done.
            let _ = s.read(&mut buf).await;
            got
        });
        let io = TcpStream::connect(addr).await.unwrap();
        (Conn::new(io), server)
    }

    /// A connection whose upstream reads the request, writes `answer` and closes.
    async fn closing(answer: &'static [u8]) -> Conn {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let _ = s.read(&mut [0u8; 4096]).await;
            s.write_all(answer).await.unwrap();
        });
        Conn::new(TcpStream::connect(addr).await.unwrap())
    }

    fn get_head() -> Vec<u8> {
        let mut out = Vec::new();
        encode_request(
            &mut out,
            &Method::GET,
            ("/x", None),
            &HeaderValue::from_static("h"),
            &HeaderMap::new(),
            0,
        );
        out
    }

    /// The whole body through `poll_data`, and whether the connection could be reused.
    async fn read_all(
        conn: &mut Conn,
        mut body: ResponseBody,
    ) -> (Result<Vec<u8>, io::Error>, bool) {
        let mut out = Vec::new();
        loop {
            match std::future::poll_fn(|cx| body.poll_data(conn, cx)).await {
                None => return (Ok(out), body.can_reuse(conn)),
                Some(Ok(b)) => out.extend_from_slice(&b),
                Some(Err(e)) => return (Err(e), false),
            }
        }
    }

    async fn fetch(pieces: Vec<&'static [u8]>) -> Result<(u16, Vec<u8>, bool), Error> {
        let (mut conn, _server) = answered(pieces).await;
        let (head, body) = conn.exchange(&Method::GET, &get_head(), b"").await?;
        let (data, reuse) = read_all(&mut conn, body).await;
        Ok((
            head.status().as_u16(),
            data.map_err(|_| Error::Failed)?,
            reuse,
        ))
    }

    #[tokio::test]
    async fn a_length_delimited_answer_split_across_reads_is_read_whole_and_reusable() {
        let got = fetch(vec![
            b"HTTP/1.1 200 OK\r\nContent-Le",
            b"ngth: 11\r\n\r\nhello",
            b" world",
        ])
        .await
        .unwrap();
        assert_eq!(got, (200, b"hello world".to_vec(), true));
    }

    #[tokio::test]
    async fn chunked_answers_with_extensions_and_trailers_are_decoded() {
        let got = fetch(vec![
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhel",
            b"lo\r\n6\r\n world\r\n0\r\nx-trailer: 1\r\n\r\n",
        ])
        .await
        .unwrap();
        assert_eq!(got, (200, b"hello world".to_vec(), true));
    }

    #[tokio::test]
    async fn informational_answers_are_skipped() {
        let got = fetch(vec![
            b"HTTP/1.1 100 Continue\r\n\r\n",
            b"HTTP/1.1 201 Created\r\ncontent-length: 2\r\n\r\nok",
        ])
        .await
        .unwrap();
        assert_eq!(got, (201, b"ok".to_vec(), true));
    }

    #[tokio::test]
    async fn an_endless_run_of_informational_answers_fails() {
        let many: &'static [u8] = "HTTP/1.1 100 Continue\r\n\r\n"
            .repeat(MAX_INFORMATIONAL + 1)
            .leak()
            .as_bytes();
        assert_eq!(fetch(vec![many]).await, Err(Error::Failed));
    }

    #[tokio::test]
    async fn connections_that_cannot_carry_another_request_are_not_reused() {
        // The upstream says it closes.
        let closes = fetch(vec![
            b"HTTP/1.1 200 OK\r\nConnection: keep-alive, close\r\ncontent-length: 2\r\n\r\nok",
        ]);
        assert_eq!(closes.await.unwrap(), (200, b"ok".to_vec(), false));
        // HTTP/1.0.
        let old = fetch(vec![b"HTTP/1.0 200 OK\r\ncontent-length: 2\r\n\r\nok"]);
        assert_eq!(old.await.unwrap(), (200, b"ok".to_vec(), false));
        // Bytes after the answer nobody asked for.
        let extra = fetch(vec![
            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nokHTTP/1.1",
        ]);
        assert_eq!(extra.await.unwrap(), (200, b"ok".to_vec(), false));
        // A length beside a coding: the coding wins; the connection goes.
        let both = fetch(vec![
            b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
        ]);
        assert_eq!(both.await.unwrap(), (200, b"ok".to_vec(), false));
    }

    #[tokio::test]
    async fn an_answer_without_length_runs_until_the_upstream_closes() {
        let mut conn = closing(b"HTTP/1.1 200 OK\r\n\r\nall of it").await;
        let (_, body) = conn.exchange(&Method::GET, &get_head(), b"").await.unwrap();
        let (data, reuse) = read_all(&mut conn, body).await;
        assert_eq!((data.unwrap(), reuse), (b"all of it".to_vec(), false));
    }

    #[tokio::test]
    async fn invalid_answers_fail_and_a_silent_close_says_closed() {
        for bad in [
            &b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\nok"[..],
            b"HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ncontent-length: 99999999999999999999\r\n\r\n",
            b"HTTP/1.1 101 Switching Protocols\r\n\r\n",
            b"HTTP/1.1 2000 OK\r\n\r\n",
            b"SSH-2.0-OpenSSH\r\n\r\n",
        ] {
            assert_eq!(
                fetch(vec![bad]).await,
                Err(Error::Failed),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        // A bad chunk size, a chunk without its CRLF, a body cut short: errors in the body.
        for bad in [
            &b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\nok\r\n0\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nokXX0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nffffffffffffffffff\r\n",
        ] {
            assert_eq!(fetch(vec![bad]).await, Err(Error::Failed));
        }
        // Too many headers, and a head that never ends.
        let many: &'static [u8] = format!(
            "HTTP/1.1 200 OK\r\n{}\r\n",
            "x-a: 1\r\n".repeat(MAX_HEADERS + 1)
        )
        .leak()
        .as_bytes();
        assert_eq!(fetch(vec![many]).await, Err(Error::Failed));
        let endless: &'static [u8] = format!("HTTP/1.1 200 OK\r\nx-a: {}", "a".repeat(MAX_HEAD))
            .leak()
            .as_bytes();
        assert_eq!(fetch(vec![endless]).await, Err(Error::Failed));

        // Closed with no answer at all.
        let mut conn = closing(b"").await;
        let got = conn.exchange(&Method::GET, &get_head(), b"").await;
        assert_eq!(got.err(), Some(Error::Closed));
    }

    #[tokio::test]
    async fn a_body_cut_short_is_an_error_not_a_short_answer() {
        let mut conn = closing(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nshort").await;
        let (_, body) = conn.exchange(&Method::GET, &get_head(), b"").await.unwrap();
        let (data, _) = read_all(&mut conn, body).await;
        assert_eq!(data.unwrap_err().kind(), io::ErrorKind::UnexpectedEof);
    }

    #[test]
    fn requests_carry_our_framing_only() {
        let mut headers = HeaderMap::new();
        headers.insert("authorization", HeaderValue::from_static("Bearer k"));
        headers.insert("content-length", HeaderValue::from_static("999"));
        headers.insert("transfer-encoding", HeaderValue::from_static("chunked"));
        let mut out = Vec::new();
        encode_request(
            &mut out,
            &Method::POST,
            ("/v1/chat/completions", Some("a=1")),
            &HeaderValue::from_static("127.0.0.1:8000"),
            &headers,
            13,
        );
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "POST /v1/chat/completions?a=1 HTTP/1.1\r\nhost: 127.0.0.1:8000\r\n\
             authorization: Bearer k\r\naccept: */*\r\ncontent-length: 13\r\n\r\n"
        );
        let mut get = Vec::new();
        encode_request(
            &mut get,
            &Method::GET,
            ("/v1/models", None),
            &HeaderValue::from_static("h"),
            &HeaderMap::new(),
            0,
        );
        assert_eq!(
            String::from_utf8(get).unwrap(),
            "GET /v1/models HTTP/1.1\r\nhost: h\r\naccept: */*\r\n\r\n"
        );
    }
}
