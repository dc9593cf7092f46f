//! The upstream's streamed body on its way to the client.
//!
//! Bytes go out as they arrive. Before the first byte is sent the router reads the first
//! chunk itself ([`UpstreamStream::first`]) so that a stream that fails or ends before
//! producing anything is retried like any other failure. After that, a failure (upstream
//! error, a silence longer than the timeout, an end without `[DONE]`) becomes one OpenAI
//! error event and the end of the stream: never a hang, never a silent truncation.

use super::deployment::InFlight;
use super::RequestLog;
use crate::config::ErrorClass;
use crate::error::ApiError;
use crate::logging::Clean;
use crate::providers::{StreamTranslator, UpstreamError};
use crate::redact::Secrets;
use bytes::{Bytes, BytesMut};
use futures_util::Stream;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

type ByteStream = Pin<Box<dyn Stream<Item = reqwest::Result<Bytes>> + Send>>;

const DONE: &[u8] = b"data: [DONE]";

pub(crate) struct UpstreamStream {
    inner: ByteStream,
    translator: Option<Box<dyn StreamTranslator>>,
    idle_timeout: Duration,
    idle: Pin<Box<tokio::time::Sleep>>,
    /// A chunk read by `first` and not yet handed out.
    pending: Option<Bytes>,
    /// Passthrough only: saw `data: [DONE]`; `tail` keeps the last bytes to find it
    /// across chunk boundaries.
    saw_done: bool,
    tail: Vec<u8>,
    done: bool,
    guard: Option<InFlight>,
    log: Option<RequestLog>,
    /// Masked in an error event made from upstream text.
    secrets: Arc<Secrets>,
}

impl UpstreamStream {
    pub(crate) fn new(
        resp: reqwest::Response,
        translator: Option<Box<dyn StreamTranslator>>,
        idle_timeout: Duration,
        guard: InFlight,
        secrets: Arc<Secrets>,
    ) -> Self {
        UpstreamStream {
            inner: Box::pin(resp.bytes_stream()),
            translator,
            idle_timeout,
            idle: Box::pin(tokio::time::sleep(idle_timeout)),
            pending: None,
            saw_done: false,
            tail: Vec::new(),
            done: false,
            guard: Some(guard),
            log: None,
            secrets,
        }
    }

    /// Reads until the first bytes for the client. `Err` means nothing was produced and
    /// the attempt may be retried elsewhere.
    pub(crate) async fn first(&mut self) -> Result<(), UpstreamError> {
        let chunk = std::future::poll_fn(|cx| self.poll_chunk(cx)).await?;
        match chunk {
            Some(b) => {
                if self.translator.is_none() && looks_like_error_event(&b) {
                    return Err(in_band_error(&b));
                }
                self.pending = Some(b);
                Ok(())
            }
            None => Err(UpstreamError::new(
                ErrorClass::InternalServer,
                ApiError::bad_gateway("the upstream stream ended before sending anything"),
            )),
        }
    }

    /// Hands the request's log line to the stream, written when it ends.
    pub(crate) fn set_log(&mut self, log: RequestLog) {
        self.log = Some(log);
    }

    /// The next piece of client output, or the failure that ends the stream.
    fn poll_chunk(&mut self, cx: &mut Context<'_>) -> Poll<Result<Option<Bytes>, UpstreamError>> {
        loop {
            match self.inner.as_mut().poll_next(cx) {
                Poll::Ready(Some(Ok(chunk))) => {
                    let deadline = crate::duration::tokio_deadline(
                        tokio::time::Instant::now(),
                        self.idle_timeout,
                    );
                    self.idle.as_mut().reset(deadline);
                    let Some(tr) = self.translator.as_mut() else {
                        self.track_done(&chunk);
                        return Poll::Ready(Ok(Some(chunk)));
                    };
                    let mut out = BytesMut::new();
                    tr.feed(&chunk, &mut out)?;
                    if !out.is_empty() {
                        return Poll::Ready(Ok(Some(out.freeze())));
                    }
                }
                Poll::Ready(Some(Err(_))) => {
                    return Poll::Ready(Err(UpstreamError::new(
                        ErrorClass::Connection,
                        ApiError::bad_gateway("the upstream stream broke off before it finished"),
                    )));
                }
                Poll::Ready(None) => {
                    if let Some(tr) = self.translator.as_mut() {
                        let mut out = BytesMut::new();
                        tr.finish(&mut out)?;
                        self.translator = None;
                        self.saw_done = true;
                        if !out.is_empty() {
                            return Poll::Ready(Ok(Some(out.freeze())));
                        }
                    }
                    if !self.saw_done {
                        return Poll::Ready(Err(UpstreamError::new(
                            ErrorClass::InternalServer,
                            ApiError::bad_gateway("the upstream stream ended without data: [DONE]; the answer may be incomplete"),
                        )));
                    }
                    return Poll::Ready(Ok(None));
                }
                Poll::Pending => {
                    if self.idle.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(Err(UpstreamError::new(
                            ErrorClass::Timeout,
                            ApiError::gateway_timeout(format!(
                                "the upstream sent nothing for {:?}; stream ended",
                                self.idle_timeout
                            )),
                        )));
                    }
                    return Poll::Pending;
                }
            }
        }
    }

    fn track_done(&mut self, chunk: &[u8]) {
        if self.saw_done {
            return;
        }
        if memchr::memmem::find(chunk, DONE).is_some() {
            self.saw_done = true;
            return;
        }
        // The marker may straddle two chunks: search the joint.
        if !self.tail.is_empty() {
            let mut joint = std::mem::take(&mut self.tail);
            joint.extend_from_slice(&chunk[..chunk.len().min(DONE.len())]);
            if memchr::memmem::find(&joint, DONE).is_some() {
                self.saw_done = true;
                return;
            }
        }
        let keep = chunk.len().min(DONE.len() - 1);
        self.tail.clear();
        self.tail.extend_from_slice(&chunk[chunk.len() - keep..]);
    }

    fn finish(&mut self, complete: bool) {
        self.done = true;
        self.guard = None;
        if let Some(log) = self.log.as_mut() {
            log.complete = complete;
        }
        self.log = None;
    }
}

/// `data: {"error": ...}` as the first event of a 200 response (vLLM and others do this).
fn looks_like_error_event(b: &[u8]) -> bool {
    let s = b.strip_prefix(b"data:").unwrap_or(b"");
    let s = s.trim_ascii_start();
    s.starts_with(b"{\"error\"")
}

fn in_band_error(b: &[u8]) -> UpstreamError {
    let body = b.strip_prefix(b"data:").unwrap_or(b).trim_ascii();
    let mut e = crate::providers::openai_style_error(
        axum::http::StatusCode::BAD_GATEWAY,
        &axum::http::HeaderMap::new(),
        body,
    );
    e.class = ErrorClass::InternalServer;
    e.raw_body = None;
    e
}

impl Stream for UpstreamStream {
    type Item = Result<Bytes, std::io::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if let Some(b) = this.pending.take() {
            return Poll::Ready(Some(Ok(b)));
        }
        if this.done {
            return Poll::Ready(None);
        }
        match this.poll_chunk(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Ok(Some(b))) => Poll::Ready(Some(Ok(b))),
            Poll::Ready(Ok(None)) => {
                this.finish(true);
                Poll::Ready(None)
            }
            Poll::Ready(Err(mut e)) => {
                this.secrets.scrub_error(&mut e);
                tracing::warn!(error = %Clean(&e.error.message), "stream failed after the first byte; sending an error event");
                if let Some(log) = this.log.as_mut() {
                    log.status = e.error.status.as_u16();
                }
                this.finish(false);
                Poll::Ready(Some(Ok(e.error.sse_event())))
            }
        }
    }
}

impl Drop for UpstreamStream {
    fn drop(&mut self) {
        if !self.done {
            // The client went away: dropping `inner` cancels the upstream request.
            if let Some(log) = self.log.as_mut() {
                log.complete = false;
                log.client_gone = true;
            }
        }
    }
}
