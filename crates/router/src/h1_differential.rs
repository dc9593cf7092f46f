//! Differential test of `h1`'s answer parsing against hyper's HTTP/1.1 client (which the
//! gateway used before `h1` replaced it): generated answers — valid ones and the usual
//! hostile shapes (bad or conflicting lengths, a coding beside a length, broken chunk
//! lines, trailers, informational answers, HTTP/1.0, cut-off bodies), each written in
//! random pieces — must get the same status and body bytes from both, or be refused by
//! both. It found two framing faults `h1` accepted (a coding on an HTTP/1.0 answer, an
//! empty `Content-Length`); `proptest-regressions/` replays them.

use super::*;
use http_body_util::BodyExt as _;
use proptest::prelude::*;
use tokio::io::AsyncReadExt as _;
use tokio::net::TcpListener;

/// What a client made of an answer.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Answer { status: u16, body: Vec<u8> },
    Refused,
}

/// How a generated answer frames its body.
#[derive(Debug, Clone)]
enum Body {
    Length,
    /// A `Content-Length` that is off by this much from the bytes sent.
    WrongLength(i8),
    /// A `Content-Length` value that is not a number.
    BadLength(&'static str),
    /// Two `Content-Length` headers: the same value, or different ones.
    TwoLengths {
        same: bool,
    },
    Chunked {
        pieces: usize,
        upper: bool,
        extension: bool,
        trailer: bool,
        /// A chunk-size line that is not hex.
        bad_size: bool,
    },
    ChunkedBesideLength,
    /// A coding other than chunked: the body runs until the upstream closes.
    OtherCoding,
    UntilClose,
}

#[derive(Debug, Clone)]
struct Case {
    informational: bool,
    http10: bool,
    status: u16,
    body: Vec<u8>,
    framing: Body,
    /// Keep only this share (per mille) of the answer's bytes, as an upstream that dies.
    cut: Option<u16>,
    /// Where the answer is split into separate writes (per mille of its length).
    splits: Vec<u16>,
    /// An ill-formed header line, or too many headers.
    garbage: Option<Garbage>,
}

#[derive(Debug, Clone, Copy)]
enum Garbage {
    NoColon,
    ObsoleteFold,
    SpaceBeforeColon,
    ManyHeaders,
    /// A chunk whose data is not followed by CRLF.
    ChunkWithoutEnd,
    /// A chunk size beyond 64 bits.
    HugeChunk,
}

fn body_strategy() -> impl Strategy<Value = Body> {
    prop_oneof![
        4 => Just(Body::Length),
        1 => (-3i8..=3).prop_filter("off", |d| *d != 0).prop_map(Body::WrongLength),
        1 => prop::sample::select(vec!["12a", "-1", "+5", " ", "0x10", "99999999999999999999"])
            .prop_map(Body::BadLength),
        1 => any::<bool>().prop_map(|same| Body::TwoLengths { same }),
        4 => (1usize..5, any::<bool>(), any::<bool>(), any::<bool>(), prop::bool::weighted(0.15))
            .prop_map(|(pieces, upper, extension, trailer, bad_size)| Body::Chunked {
                pieces, upper, extension, trailer, bad_size
            }),
        1 => Just(Body::ChunkedBesideLength),
        1 => Just(Body::OtherCoding),
        1 => Just(Body::UntilClose),
    ]
}

fn case_strategy() -> impl Strategy<Value = Case> {
    (
        prop::bool::weighted(0.15),
        prop::bool::weighted(0.1),
        prop::sample::select(vec![200u16, 201, 204, 304, 404, 500, 503]),
        prop::collection::vec(any::<u8>(), 0..200),
        body_strategy(),
        prop::option::weighted(0.15, 0u16..1000),
        prop::collection::vec(0u16..1000, 0..4),
        prop::option::weighted(
            0.2,
            prop::sample::select(vec![
                Garbage::NoColon,
                Garbage::ObsoleteFold,
                Garbage::SpaceBeforeColon,
                Garbage::ManyHeaders,
                Garbage::ChunkWithoutEnd,
                Garbage::HugeChunk,
            ]),
        ),
    )
        .prop_map(
            |(informational, http10, status, body, framing, cut, splits, garbage)| Case {
                informational,
                http10,
                status,
                body,
                framing,
                cut,
                splits,
                garbage,
            },
        )
}

/// The answer's bytes.
fn render(c: &Case) -> Vec<u8> {
    let mut out = Vec::new();
    if c.informational {
        out.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
    }
    let version = if c.http10 { "HTTP/1.0" } else { "HTTP/1.1" };
    out.extend_from_slice(
        format!("{version} {} X\r\ncontent-type: text/plain\r\n", c.status).as_bytes(),
    );
    match c.garbage {
        Some(Garbage::NoColon) => out.extend_from_slice(b"x-broken header\r\n"),
        Some(Garbage::ObsoleteFold) => out.extend_from_slice(b"x-folded: a\r\n  b\r\n"),
        Some(Garbage::SpaceBeforeColon) => out.extend_from_slice(b"x-spaced : a\r\n"),
        Some(Garbage::ManyHeaders) => {
            for i in 0..120 {
                out.extend_from_slice(format!("x-h{i}: v\r\n").as_bytes());
            }
        }
        _ => {}
    }
    let len = c.body.len();
    let mut body = c.body.clone();
    match &c.framing {
        Body::Length => out.extend_from_slice(format!("content-length: {len}\r\n").as_bytes()),
        Body::WrongLength(d) => {
            let n = (len as i64 + i64::from(*d)).max(0);
            out.extend_from_slice(format!("content-length: {n}\r\n").as_bytes());
        }
        Body::BadLength(v) => out.extend_from_slice(format!("content-length: {v}\r\n").as_bytes()),
        Body::TwoLengths { same } => {
            let other = if *same { len } else { len + 1 };
            out.extend_from_slice(
                format!("content-length: {len}\r\ncontent-length: {other}\r\n").as_bytes(),
            );
        }
        Body::Chunked {
            pieces,
            upper,
            extension,
            trailer,
            bad_size,
        } => {
            out.extend_from_slice(b"transfer-encoding: chunked\r\n");
            body = chunk(&c.body, *pieces, *upper, *extension, *trailer, *bad_size);
            match c.garbage {
                Some(Garbage::ChunkWithoutEnd) if !c.body.is_empty() => {
                    // Drop the CRLF after the first chunk's data.
                    let head_end = body.iter().position(|&b| b == b'\n').unwrap_or(0) + 1;
                    let first = c.body.len().div_ceil(*pieces).max(1).min(c.body.len());
                    body.drain(head_end + first..head_end + first + 2);
                }
                Some(Garbage::HugeChunk) => {
                    let mut huge = b"1ffffffffffffffff\r\n".to_vec();
                    huge.extend_from_slice(&body);
                    body = huge;
                }
                _ => {}
            }
        }
        Body::ChunkedBesideLength => {
            out.extend_from_slice(
                format!("content-length: {len}\r\ntransfer-encoding: chunked\r\n").as_bytes(),
            );
            body = chunk(&c.body, 2, false, false, false, false);
        }
        Body::OtherCoding => out.extend_from_slice(b"transfer-encoding: gzip\r\n"),
        Body::UntilClose => {}
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(&body);
    if let Some(keep) = c.cut {
        out.truncate(out.len() * usize::from(keep) / 1000);
    }
    out
}

fn chunk(data: &[u8], pieces: usize, upper: bool, ext: bool, trailer: bool, bad: bool) -> Vec<u8> {
    let mut out = Vec::new();
    let step = data.len().div_ceil(pieces).max(1);
    for (i, part) in data.chunks(step).enumerate() {
        let size = if upper {
            format!("{:X}", part.len())
        } else {
            format!("{:x}", part.len())
        };
        let size = if bad && i == 0 {
            format!("{size}g")
        } else {
            size
        };
        out.extend_from_slice(size.as_bytes());
        if ext {
            out.extend_from_slice(b";name=value");
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(part);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"0\r\n");
    if trailer {
        out.extend_from_slice(b"x-checksum: abc\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// A one-shot upstream: reads the request head, writes `answer` in pieces, then closes.
async fn upstream(answer: Vec<u8>, splits: Vec<u16>) -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while !got.windows(4).any(|w| w == b"\r\n\r\n") {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
        let mut at: Vec<usize> = splits
            .iter()
            .map(|p| answer.len() * usize::from(*p) / 1000)
            .collect();
        at.sort_unstable();
        let mut from = 0;
        for to in at.into_iter().chain([answer.len()]) {
            if to > from {
                if s.write_all(&answer[from..to]).await.is_err() {
                    return;
                }
                s.flush().await.ok();
                tokio::task::yield_now().await;
                from = to;
            }
        }
        let _ = s.shutdown().await;
        // Let the client read to the end before the socket goes.
        let _ = s.read(&mut buf).await;
    });
    addr
}

async fn ours(addr: std::net::SocketAddr) -> Outcome {
    let mut conn = Conn::new(TcpStream::connect(addr).await.unwrap());
    let mut head = Vec::new();
    encode_request(
        &mut head,
        &Method::GET,
        ("/x", None),
        &HeaderValue::from_static("h"),
        &HeaderMap::new(),
        0,
    );
    let Ok((parts, mut body)) = conn.exchange(&Method::GET, &head, b"").await else {
        return Outcome::Refused;
    };
    let mut out = Vec::new();
    loop {
        match std::future::poll_fn(|cx| body.poll_data(&mut conn, cx)).await {
            None => break,
            Some(Ok(b)) => out.extend_from_slice(&b),
            Some(Err(_)) => return Outcome::Refused,
        }
    }
    Outcome::Answer {
        status: parts.status().as_u16(),
        body: out,
    }
}

async fn hypers(addr: std::net::SocketAddr) -> Outcome {
    let io = hyper_util::rt::TokioIo::new(TcpStream::connect(addr).await.unwrap());
    let Ok((mut send, conn)) =
        hyper::client::conn::http1::handshake::<_, http_body_util::Empty<Bytes>>(io).await
    else {
        return Outcome::Refused;
    };
    tokio::spawn(conn);
    let req = axum::http::Request::get("/x")
        .header("host", "h")
        .body(http_body_util::Empty::new())
        .unwrap();
    let Ok(resp) = send.send_request(req).await else {
        return Outcome::Refused;
    };
    let status = resp.status().as_u16();
    match resp.into_body().collect().await {
        Ok(b) => Outcome::Answer {
            status,
            body: b.to_bytes().to_vec(),
        },
        Err(_) => Outcome::Refused,
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1500, .. ProptestConfig::default() })]
    #[test]
    fn h1_reads_answers_as_hyper_does(c in case_strategy()) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let answer = render(&c);
        let (a, b) = rt.block_on(async {
            let a = ours(upstream(answer.clone(), c.splits.clone()).await).await;
            let b = hypers(upstream(answer.clone(), c.splits.clone()).await).await;
            (a, b)
        });
        prop_assert_eq!(a, b, "answer: {:?}", String::from_utf8_lossy(&answer));
    }
}
