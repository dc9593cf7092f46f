//! Charging a request once its answer is known: a JSON answer's usage is read at once, a
//! stream is wrapped so its usage event is found (and removed when the client did not ask
//! for it) and the ticket charged when the stream ends, or for what passed when the
//! client leaves first.

use super::enforce::{Outcome, Ticket};
use crate::spend::{usage_object, usage_of, Usage};
use axum::body::Body;
use axum::http::HeaderValue;
use axum::response::Response;
use bytes::{Bytes, BytesMut};
use futures_util::Stream;
use std::pin::Pin;
use std::task::{Context, Poll};

/// Charges `ticket` for `resp` and adds `x-llmgw-request-id`. A JSON answer is charged
/// now (it is already whole in memory); a stream when it ends, with the usage chunk the
/// gateway asked for removed when `strip_usage` (the client did not ask for it).
pub async fn meter(ticket: Ticket, strip_usage: bool, resp: Response) -> Response {
    let mut resp = resp;
    if let Ok(v) = HeaderValue::from_str(ticket.request_id()) {
        resp.headers_mut().insert("x-llmgw-request-id", v);
    }
    ticket.rate.write(resp.headers_mut());
    let h = resp.headers();
    let cache_hit = h
        .get("x-llmgw-cache")
        .is_some_and(|v| v.as_bytes() == b"hit");
    let deployment = if cache_hit {
        "cache".to_string()
    } else {
        h.get("x-llmgw-deployment")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    let stream = h
        .get(axum::http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
    let status = resp.status().as_u16();
    let outcome = Outcome {
        deployment,
        usage: Usage::default(),
        status,
        cache_hit,
        abandoned: false,
        // The head of a stream leaves with its first chunk.
        ttft: (stream && !cache_hit).then(|| ticket.elapsed()),
    };
    if stream {
        let (parts, body) = resp.into_parts();
        let metered = Metered {
            inner: body.into_data_stream(),
            carry: BytesMut::new(),
            strip: strip_usage && !cache_hit,
            ticket: Some(ticket),
            outcome,
            delivered: 0,
        };
        return Response::from_parts(parts, Body::from_stream(metered));
    }
    // A JSON answer's cost is known before its headers leave (a stream's only at its
    // end: it is in the spend row named by `x-llmgw-request-id`).
    if cache_hit || status != 200 {
        let cost = ticket.finish(outcome);
        super::ratelimit::write_cost(resp.headers_mut(), cost);
        return resp;
    }
    let (mut parts, body) = resp.into_parts();
    // The router's JSON answers are whole in memory: this does not wait on the upstream.
    let bytes = axum::body::to_bytes(body, usize::MAX)
        .await
        .unwrap_or_default();
    let cost = ticket.finish(Outcome {
        usage: usage_of(&bytes).unwrap_or_default(),
        ..outcome
    });
    super::ratelimit::write_cost(&mut parts.headers, cost);
    Response::from_parts(parts, Body::from(bytes))
}

/// A streamed answer on its way out: finds the usage chunk, removes it if the client did
/// not ask for it, and charges the ticket when the stream ends.
struct Metered {
    inner: axum::body::BodyDataStream,
    /// The start of an event whose end has not arrived yet.
    carry: BytesMut,
    strip: bool,
    ticket: Option<Ticket>,
    outcome: Outcome,
    /// Events passed on to the client: an abandoned stream whose usage never came is
    /// charged one completion token per event (streams carry about one token an event).
    delivered: u64,
}

/// Events in `b` (each has one `data:` line).
fn count_events(b: &[u8]) -> u64 {
    DATA.find_iter(b).count() as u64
}

static DATA: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
    std::sync::LazyLock::new(|| memchr::memmem::Finder::new(b"data:"));

impl Metered {
    /// Complete events in `done`: notes usage, drops the usage-only event when stripping.
    fn events(&mut self, done: Bytes) -> Bytes {
        if usage_object(&done).is_none() {
            return done;
        }
        let mut out = BytesMut::with_capacity(done.len());
        let mut rest = &done[..];
        while !rest.is_empty() {
            let end = memchr::memmem::find(rest, b"\n\n").map_or(rest.len(), |i| i + 2);
            let ev = &rest[..end];
            rest = &rest[end..];
            if let Some(u) = usage_of(ev) {
                self.outcome.usage.merge(u);
                let usage_only = memchr::memmem::find(ev, b"\"choices\":[]").is_some();
                if self.strip && usage_only {
                    continue;
                }
            }
            out.extend_from_slice(ev);
        }
        out.freeze()
    }

    fn end(&mut self) {
        if let Some(t) = self.ticket.take() {
            t.finish(std::mem::take(&mut self.outcome));
        }
    }
}

impl Stream for Metered {
    type Item = Result<Bytes, axum::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            match Pin::new(&mut this.inner).poll_next(cx) {
                Poll::Ready(Some(Ok(b))) => {
                    // The stream failed after its start (an error event, OpenAI's or
                    // Anthropic's and Responses'): not a 200.
                    if memchr::memmem::find(&b, b"data: {\"error\"").is_some()
                        || memchr::memmem::find(&b, b"event: error").is_some()
                    {
                        this.outcome.status = 502;
                    }
                    // Fast path: whole events and no usage in them.
                    if this.carry.is_empty() && b.ends_with(b"\n\n") && usage_object(&b).is_none() {
                        this.delivered += count_events(&b);
                        return Poll::Ready(Some(Ok(b)));
                    }
                    this.carry.extend_from_slice(&b);
                    let Some(last) = memchr::memmem::rfind(&this.carry, b"\n\n") else {
                        continue;
                    };
                    let done = this.carry.split_to(last + 2).freeze();
                    let out = this.events(done);
                    if !out.is_empty() {
                        this.delivered += count_events(&out);
                        return Poll::Ready(Some(Ok(out)));
                    }
                }
                Poll::Ready(Some(Err(e))) => {
                    this.outcome.status = 502;
                    this.end();
                    return Poll::Ready(Some(Err(e)));
                }
                Poll::Ready(None) => {
                    let rest = std::mem::take(&mut this.carry).freeze();
                    let out = if rest.is_empty() {
                        rest
                    } else {
                        this.events(rest)
                    };
                    this.end();
                    return Poll::Ready((!out.is_empty()).then_some(Ok(out)));
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

impl Drop for Metered {
    fn drop(&mut self) {
        if self.ticket.is_some() {
            // The client went away before the end (or the gateway closed the connection
            // at the end of its grace period): charged for what passed, since the
            // upstream generated it. A client can always leave between the last content
            // event and the usage event, so an abandoned stream is never free.
            self.outcome.status = 499;
            self.outcome.usage.completion = self.outcome.usage.completion.max(self.delivered);
            self.outcome.abandoned = true;
            self.end();
        }
    }
}
