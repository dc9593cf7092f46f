//! The upstream's streamed body on its way to the client.
//!
//! Bytes go out as they arrive. Before the first byte is sent the router reads the first
//! chunk itself ([`UpstreamStream::first`]) so that a stream that fails or ends before
//! producing anything is retried like any other failure. After that, a failure (upstream
//! error, a silence longer than the timeout, an end without the API's end marker:
//! `[DONE]`, `message_stop`, `response.completed`) becomes one error event in the
//! client's API and the end of the stream: never a hang, never a silent truncation.

use super::deployment::InFlight;
use super::upstream::{UpstreamBody, UpstreamResponse};
use super::RequestLog;
use bytes::{Bytes, BytesMut};
use futures_util::Stream;
use llmgw_core::config::ErrorClass;
use llmgw_core::error::ApiError;
use llmgw_core::logging::Clean;
use llmgw_core::redact::Secrets;
use llmgw_wire::request::Api;
use llmgw_wire::upstream::StreamTranslator;
use llmgw_wire::upstream_error::UpstreamError;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

/// The lines that end a complete stream of each API (what a passed-through stream must
/// contain before it ends).
fn end_markers(api: Api) -> &'static [&'static [u8]] {
    match api {
        Api::OpenAi => &[b"data: [DONE]"],
        Api::Anthropic => &[b"event: message_stop"],
        Api::Responses => &[
            b"event: response.completed",
            b"event: response.incomplete",
            b"event: response.failed",
        ],
    }
}

/// Longest end marker: the tail kept to find one across chunk boundaries.
const MARKER_TAIL: usize = 26;

/// Most bytes of a passed-through stream held back while it says nothing yet.
const MAX_HELD: usize = 64 * 1024;

/// Most bytes gathered into one write to the client ([`UpstreamStream::poll_next`]).
const MAX_BATCH: usize = 64 * 1024;

/// Turns given to the upstream connection without a new piece before the gathered bytes
/// go out. hyper's client connection hands its body over one decoded chunk at a time and
/// needs two turns of the scheduler per chunk (measured: with one, nothing was ever
/// gathered).
const MAX_IDLE_TURNS: u8 = 2;

/// True when a passed-through stream's first bytes carry content (or its end): from
/// then on they go to the client.
fn has_content(api: Api, b: &[u8]) -> bool {
    let any = |needles: &[&[u8]]| needles.iter().any(|n| memchr::memmem::find(b, n).is_some());
    match api {
        Api::OpenAi => true,
        Api::Anthropic => any(&[
            b"event: content_block_delta",
            b"event: message_delta",
            b"event: message_stop",
        ]),
        Api::Responses => any(&[
            b".delta",
            b"event: response.output_item.done",
            b"event: response.completed",
            b"event: response.incomplete",
        ]),
    }
}

pub(crate) struct UpstreamStream {
    inner: UpstreamBody,
    translator: Option<Box<dyn StreamTranslator>>,
    idle_timeout: Duration,
    /// Fires `idle_timeout` after `last_chunk` at the latest; re-armed only when it
    /// fires early (cheaper than moving a timer on every chunk).
    idle: Pin<Box<tokio::time::Sleep>>,
    last_chunk: tokio::time::Instant,
    /// Output gathered for one write to the client, and whether the task gave the
    /// upstream connection a turn since the last piece.
    batch: BytesMut,
    /// The turn given to the upstream connection (`tokio::task::yield_now`: this task is
    /// polled again after the other ready tasks and the I/O driver).
    turn: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
    /// Turns in a row that brought nothing.
    idle_turns: u8,
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
    /// The client's API: its end markers and error events.
    api: Api,
}

impl UpstreamStream {
    pub(crate) fn new(
        resp: UpstreamResponse,
        translator: Option<Box<dyn StreamTranslator>>,
        idle_timeout: Duration,
        guard: InFlight,
        secrets: Arc<Secrets>,
        api: Api,
    ) -> Self {
        UpstreamStream {
            inner: resp.into_body(),
            translator,
            idle_timeout,
            idle: Box::pin(tokio::time::sleep(idle_timeout)),
            last_chunk: tokio::time::Instant::now(),
            batch: BytesMut::new(),
            turn: None,
            idle_turns: 0,
            pending: None,
            saw_done: false,
            tail: Vec::new(),
            done: false,
            guard: Some(guard),
            log: None,
            secrets,
            api,
        }
    }

    /// Reads until the first bytes for the client. `Err` means nothing was produced and
    /// the attempt may be retried elsewhere.
    ///
    /// A stream passed through to an Anthropic or Responses client is held until it
    /// carries content: those APIs open with events that say nothing yet
    /// (`message_start`, `ping`, `response.created`), and an overloaded error may follow
    /// them in a later chunk.
    pub(crate) async fn first(&mut self) -> Result<(), UpstreamError> {
        let mut held = BytesMut::new();
        loop {
            let chunk = std::future::poll_fn(|cx| self.poll_chunk(cx)).await?;
            let Some(b) = chunk else {
                if held.is_empty() {
                    return Err(UpstreamError::new(
                        ErrorClass::InternalServer,
                        ApiError::bad_gateway("the upstream stream ended before sending anything"),
                    ));
                }
                self.pending = Some(held.freeze());
                return Ok(());
            };
            if self.translator.is_some() {
                self.pending = Some(b);
                return Ok(());
            }
            let b = if held.is_empty() {
                b
            } else {
                held.extend_from_slice(&b);
                std::mem::take(&mut held).freeze()
            };
            if looks_like_error_event(self.api, &b) {
                return Err(in_band_error(self.api, &b));
            }
            if self.api == Api::OpenAi || b.len() > MAX_HELD || has_content(self.api, &b) {
                self.pending = Some(b);
                return Ok(());
            }
            held = BytesMut::from(&b[..]);
        }
    }

    /// Hands the request's log line to the stream, written when it ends.
    pub(crate) fn set_log(&mut self, log: RequestLog) {
        self.log = Some(log);
    }

    /// The next piece of client output, or the failure that ends the stream.
    fn poll_chunk(&mut self, cx: &mut Context<'_>) -> Poll<Result<Option<Bytes>, UpstreamError>> {
        loop {
            match self.inner.poll_data(cx) {
                Poll::Ready(Some(Ok(chunk))) => {
                    self.last_chunk = tokio::time::Instant::now();
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
                            ApiError::bad_gateway(format!(
                                "the upstream stream ended without {}; the answer may be incomplete",
                                String::from_utf8_lossy(end_markers(self.api)[0])
                            )),
                        )));
                    }
                    return Poll::Ready(Ok(None));
                }
                Poll::Pending => {
                    while self.idle.as_mut().poll(cx).is_ready() {
                        let due = llmgw_core::duration::tokio_deadline(
                            self.last_chunk,
                            self.idle_timeout,
                        );
                        if due > tokio::time::Instant::now() {
                            self.idle.as_mut().reset(due);
                            continue;
                        }
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
        let markers = end_markers(self.api);
        let found = |hay: &[u8]| {
            markers
                .iter()
                .any(|m| memchr::memmem::find(hay, m).is_some())
        };
        if found(chunk) {
            self.saw_done = true;
            return;
        }
        // The marker may straddle two chunks: search the joint.
        if !self.tail.is_empty() {
            let mut joint = std::mem::take(&mut self.tail);
            joint.extend_from_slice(&chunk[..chunk.len().min(MARKER_TAIL)]);
            if found(&joint) {
                self.saw_done = true;
                return;
            }
        }
        let keep = chunk.len().min(MARKER_TAIL - 1);
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

/// An error event in the first chunk of a 200 stream passed through: OpenAI-compatible
/// servers (vLLM and others) send `data: {"error": ...}`, Anthropic an `error` event
/// (e.g. overloaded), the Responses API an `error` or `response.failed` event.
fn looks_like_error_event(api: Api, b: &[u8]) -> bool {
    match api {
        Api::OpenAi => {
            let s = b.strip_prefix(b"data:").unwrap_or(b"");
            let s = s.trim_ascii_start();
            s.starts_with(b"{\"error\"")
        }
        Api::Anthropic => memchr::memmem::find(b, b"event: error").is_some(),
        Api::Responses => {
            memchr::memmem::find(b, b"event: error").is_some()
                || memchr::memmem::find(b, b"event: response.failed").is_some()
        }
    }
}

fn in_band_error(api: Api, b: &[u8]) -> UpstreamError {
    use axum::http::{HeaderMap, StatusCode};
    let mut e = match api {
        Api::OpenAi => {
            let body = b.strip_prefix(b"data:").unwrap_or(b).trim_ascii();
            llmgw_wire::upstream_error::openai_style_error(
                StatusCode::BAD_GATEWAY,
                &HeaderMap::new(),
                body,
            )
        }
        Api::Anthropic | Api::Responses => {
            // The error event's data: the same envelope as an HTTP error body.
            let data = event_data(b, b"event: error")
                .or_else(|| event_data(b, b"event: response.failed"))
                .unwrap_or(b);
            match api {
                Api::Anthropic => llmgw_wire::anthropic::map_error(
                    StatusCode::BAD_GATEWAY,
                    &HeaderMap::new(),
                    data,
                ),
                _ => llmgw_wire::upstream_error::openai_style_error(
                    StatusCode::BAD_GATEWAY,
                    &HeaderMap::new(),
                    data,
                ),
            }
        }
    };
    if e.class != ErrorClass::ServiceUnavailable && e.class != ErrorClass::RateLimit {
        e.class = ErrorClass::InternalServer;
    }
    e.raw_body = None;
    e
}

/// The `data:` line of the event that starts with `event_line` in `b`.
fn event_data<'b>(b: &'b [u8], event_line: &[u8]) -> Option<&'b [u8]> {
    let at = memchr::memmem::find(b, event_line)?;
    let rest = &b[at..];
    let d = memchr::memmem::find(rest, b"data:")?;
    let line = &rest[d + 5..];
    let end = memchr::memchr2(b'\n', b'\r', line).unwrap_or(line.len());
    Some(line[..end].trim_ascii())
}

impl Stream for UpstreamStream {
    type Item = Result<Bytes, std::io::Error>;

    /// Pieces that are already there go to the client in one write: after each piece the
    /// task lets the upstream connection run (`yield_now`: other ready tasks and the I/O
    /// driver go first) and takes what it produced; when [`MAX_IDLE_TURNS`] brought
    /// nothing, or `MAX_BATCH` is reached, the gathered bytes go out. One write and one
    /// client wake-up for a burst of events instead of one per event; an event that comes
    /// alone still goes out at once, two scheduler turns later (no timer, no waiting).
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if let Some(b) = this.pending.take() {
            return Poll::Ready(Some(Ok(b)));
        }
        if this.done {
            return Poll::Ready(None);
        }
        loop {
            if let Some(turn) = this.turn.as_mut() {
                if turn.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                this.turn = None;
            }
            match this.poll_chunk(cx) {
                Poll::Pending if this.batch.is_empty() => return Poll::Pending,
                Poll::Pending if this.idle_turns < MAX_IDLE_TURNS => {
                    this.idle_turns += 1;
                    this.turn = Some(Box::pin(tokio::task::yield_now()));
                }
                Poll::Pending => return Poll::Ready(Some(Ok(this.batch.split().freeze()))),
                Poll::Ready(Ok(Some(b))) => {
                    this.idle_turns = 0;
                    if this.batch.is_empty() && b.len() >= MAX_BATCH {
                        return Poll::Ready(Some(Ok(b)));
                    }
                    this.batch.extend_from_slice(&b);
                    if this.batch.len() >= MAX_BATCH {
                        return Poll::Ready(Some(Ok(this.batch.split().freeze())));
                    }
                    // Give the upstream connection its turn; gather what it hands over.
                    this.turn = Some(Box::pin(tokio::task::yield_now()));
                    this.idle_turns = 1;
                }
                end => return this.end(end),
            }
        }
    }
}

impl UpstreamStream {
    /// The stream's end (`Ok(None)`) or failure.
    fn end(
        &mut self,
        end: Poll<Result<Option<Bytes>, UpstreamError>>,
    ) -> Poll<Option<Result<Bytes, std::io::Error>>> {
        match end {
            Poll::Ready(Err(mut e)) => {
                e.scrub(&self.secrets);
                tracing::warn!(error = %Clean(&e.error.message), "stream failed after the first byte; sending an error event");
                if let Some(log) = self.log.as_mut() {
                    log.status = e.error.status.as_u16();
                }
                self.finish(false);
                self.flush_then(Some(e.error.sse_event_for(self.api)))
            }
            _ => {
                self.finish(true);
                self.flush_then(None)
            }
        }
    }

    /// At the end: what was gathered, then `last` (if any), then the end.
    fn flush_then(&mut self, last: Option<Bytes>) -> Poll<Option<Result<Bytes, std::io::Error>>> {
        if self.batch.is_empty() {
            return Poll::Ready(last.map(Ok));
        }
        self.pending = last;
        Poll::Ready(Some(Ok(self.batch.split().freeze())))
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
