//! Sending an attempt's request to its upstream.
//!
//! Plain `http://` upstreams (the local backends a gateway supervises: the common case on a
//! cluster, and where a proxy hop's cost shows) go over this crate's own HTTP/1 exchange
//! (`h1`) and per-thread connection pool (`pool`). reqwest's per-request machinery
//! (the request and its header map copied, a tower stack of boxed futures, the URL
//! re-parsed from every response) and then hyper-util's pooled client under it each cost
//! more than the rest of the upstream call, and hyper's client connection task after them
//! (BENCHMARKS.md, issue 13).
//! `https://` upstreams (cloud providers: TLS, rustls) and every upstream while an HTTP
//! proxy is set in the environment (reqwest honours it) still go through reqwest.
//! Providers build their requests with reqwest's builder either way.

use super::pool::{self, PooledBody, Settings};
use axum::http;
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// An upstream's answer, whichever client fetched it.
pub(crate) type UpstreamResponse = http::Response<UpstreamBody>;

/// The clients; settings as the reqwest client's (`Router::new`).
pub(crate) struct HttpClient {
    reqwest: reqwest::Client,
    /// `None` while an HTTP proxy is configured: then reqwest sends everything.
    direct: Option<Settings>,
}

/// Why a request got no answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SendError {
    Connect,
    Timeout,
    /// The request could not be sent or its answer's head not read.
    Failed,
}

impl HttpClient {
    pub(crate) fn new(
        reqwest: reqwest::Client,
        idle_per_host: usize,
        idle_timeout: Duration,
        connect_timeout: Duration,
    ) -> HttpClient {
        let direct = (!proxy_configured()).then_some(Settings {
            idle_per_host,
            idle_timeout,
            connect_timeout,
        });
        HttpClient { reqwest, direct }
    }

    /// The reqwest client (for calls off the hot path).
    pub(crate) fn reqwest(&self) -> &reqwest::Client {
        &self.reqwest
    }

    /// Sends `rb` and returns the answer's head; its body is read by the caller.
    pub(crate) async fn send(
        &self,
        rb: reqwest::RequestBuilder,
    ) -> Result<UpstreamResponse, SendError> {
        let req = rb.build().map_err(|_| SendError::Failed)?;
        if let Some(settings) = self.direct.filter(|_| is_direct(req.url())) {
            // Providers' bodies are whole bytes; a streamed one would go through reqwest.
            if let Some(body) = req.body().map_or(Some(&[][..]), |b| b.as_bytes()) {
                let resp = pool::send(settings, &req, body).await?;
                return Ok(resp.map(UpstreamBody::Direct));
            }
        }
        match self.reqwest.execute(req).await {
            Ok(resp) => Ok(http::Response::from(resp).map(UpstreamBody::Reqwest)),
            Err(e) if e.is_timeout() => Err(SendError::Timeout),
            Err(e) if e.is_connect() => Err(SendError::Connect),
            Err(_) => Err(SendError::Failed),
        }
    }
}

/// True for the URLs the pool sends: plain `http://`, no user info (which reqwest would
/// turn into an `Authorization` header).
fn is_direct(url: &reqwest::Url) -> bool {
    url.scheme() == "http" && url.username().is_empty() && url.password().is_none()
}

/// True when reqwest would send plain-HTTP requests through a proxy.
fn proxy_configured() -> bool {
    ["http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"]
        .iter()
        .any(|k| std::env::var_os(k).is_some_and(|v| !v.is_empty()))
}

/// An upstream's response body.
pub(crate) enum UpstreamBody {
    Direct(PooledBody),
    Reqwest(reqwest::Body),
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            UpstreamBody::Direct(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
            UpstreamBody::Reqwest(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpstreamBody::Direct(b) => b.is_end_stream(),
            UpstreamBody::Reqwest(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            UpstreamBody::Direct(b) => b.size_hint(),
            UpstreamBody::Reqwest(b) => b.size_hint(),
        }
    }
}

impl UpstreamBody {
    /// The next piece of data (trailers are skipped); `None` at the end.
    pub(crate) fn poll_data(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Bytes, BoxError>>> {
        loop {
            match std::task::ready!(Pin::new(&mut *self).poll_frame(cx)) {
                None => return Poll::Ready(None),
                Some(Err(e)) => return Poll::Ready(Some(Err(e))),
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        return Poll::Ready(Some(Ok(data)));
                    }
                }
            }
        }
    }

    /// The next piece of data, or `None` at the end.
    pub(crate) async fn chunk(&mut self) -> Result<Option<Bytes>, BoxError> {
        std::future::poll_fn(|cx| self.poll_data(cx))
            .await
            .transpose()
    }
}
