//! One traced request: what it asked ([`Recording::request`]), how it was answered
//! ([`Recording::respond`]: the answer's head, and its body read as it passes — a JSON
//! answer at once, a stream event by event until its end or until the client leaves), and
//! the finished span ([`Finished`]) handed to the exporter. Only a traced request builds
//! any of this.

use super::scan;
use super::Telemetry;
use crate::spend::Usage;
use axum::body::Body;
use axum::http::HeaderMap;
use axum::response::Response;
use bytes::{Bytes, BytesMut};
use futures_util::Stream;
use llmgw_core::config::ProviderKind;
use llmgw_router::trace::{AttemptSpan, TraceLink};
use llmgw_router::RequestLog;
use llmgw_wire::request::{ClientRequest, Endpoint};
use memchr::memmem::Finder;
use std::pin::Pin;
use std::sync::{Arc, LazyLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

/// Longest piece of prompt or answer kept on a span (`capture_content`).
pub(crate) const MAX_CONTENT: usize = 16 * 1024;
/// Most of an incomplete stream event held while looking for its end.
const MAX_CARRY: usize = 64 * 1024;
/// Most distinct finish reasons kept.
const MAX_REASONS: usize = 8;

/// An attribute value.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Value {
    Str(String),
    Static(&'static str),
    Int(i64),
    Double(f64),
    Bool(bool),
    Strs(Vec<String>),
}

/// One attribute.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Attr(pub &'static str, pub Value);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Server,
    Client,
}

/// A finished span as the exporter encodes it.
#[derive(Debug, Clone)]
pub(crate) struct SpanData {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub parent: Option<[u8; 8]>,
    pub remote_parent: bool,
    pub name: String,
    pub kind: Kind,
    /// Unix nanoseconds.
    pub start: u64,
    pub end: u64,
    pub attrs: Vec<Attr>,
    /// Status ERROR with this description; `None`: UNSET.
    pub error: Option<String>,
}

/// A request span and its attempts, as the request path leaves them: the attempts become
/// CLIENT spans in the exporter's task.
pub(crate) struct Finished {
    pub request: SpanData,
    pub attempts: Vec<AttemptSpan>,
    pub operation: &'static str,
}

impl Finished {
    /// The request span, then one span per attempt.
    pub(crate) fn into_spans(self) -> Vec<SpanData> {
        let Finished {
            request,
            attempts,
            operation,
        } = self;
        let mut out = Vec::with_capacity(1 + attempts.len());
        for a in attempts {
            let start = unix_nanos(a.start);
            let end = a.end.map_or(request.end, unix_nanos);
            let mut attrs = vec![
                Attr("gen_ai.operation.name", Value::Static(operation)),
                Attr(
                    "gen_ai.provider.name",
                    Value::Static(provider_name(a.provider)),
                ),
                Attr("gen_ai.request.model", Value::Str(a.upstream_model.clone())),
                Attr("server.address", Value::Str(a.address)),
                Attr("llmgw.deployment", Value::Str(a.deployment)),
                Attr("llmgw.group", Value::Str(a.group)),
            ];
            if let Some(p) = a.port {
                attrs.push(Attr("server.port", Value::Int(p.into())));
            }
            if a.status > 0 {
                attrs.push(Attr(
                    "http.response.status_code",
                    Value::Int(a.status.into()),
                ));
            }
            if let Some(e) = a.error {
                attrs.push(Attr("error.type", Value::Static(e)));
            }
            out.push(SpanData {
                trace_id: request.trace_id,
                span_id: a.span_id,
                parent: Some(request.span_id),
                remote_parent: false,
                name: format!("{operation} {}", a.upstream_model),
                kind: Kind::Client,
                start,
                end,
                attrs,
                error: a.error.map(str::to_string),
            });
        }
        out.insert(0, request);
        out
    }
}

/// `gen_ai.provider.name` of a deployment's provider (the semantic conventions' names).
pub(crate) fn provider_name(p: ProviderKind) -> &'static str {
    match p {
        ProviderKind::Openai => "openai",
        ProviderKind::Sglang => "sglang",
        ProviderKind::Azure => "azure.ai.openai",
        ProviderKind::Anthropic => "anthropic",
        ProviderKind::Gemini => "gcp.gemini",
    }
}

pub(crate) fn unix_nanos(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// `gen_ai.operation.name` for an endpoint.
pub(crate) fn operation(endpoint: Endpoint) -> &'static str {
    match endpoint {
        Endpoint::ChatCompletions | Endpoint::Messages | Endpoint::Responses => "chat",
        Endpoint::Completions => "text_completion",
        Endpoint::Embeddings => "embeddings",
        Endpoint::CountTokens => "count_tokens",
    }
}

/// A traced request while it runs.
pub(crate) struct Recording {
    pub(crate) tel: Arc<Telemetry>,
    pub(crate) link: Arc<TraceLink>,
    pub(crate) parent: Option<[u8; 8]>,
    pub(crate) start: SystemTime,
    pub(crate) began: Instant,
    pub(crate) endpoint: Endpoint,
    pub(crate) path: &'static str,
    pub(crate) attrs: Vec<Attr>,
    pub(crate) model: String,
    pub(crate) error_type: Option<String>,
}

impl Recording {
    /// What the request asked for (after parsing and admission).
    pub(crate) fn request(&mut self, req: &ClientRequest, caller: &crate::keys::Caller) {
        self.model.clone_from(&req.model);
        let a = &mut self.attrs;
        a.push(Attr("gen_ai.request.model", Value::Str(req.model.clone())));
        a.push(Attr("gen_ai.request.stream", Value::Bool(req.stream)));
        if let Some(n) = req.max_tokens {
            a.push(Attr(
                "gen_ai.request.max_tokens",
                Value::Int(i64::try_from(n).unwrap_or(i64::MAX)),
            ));
        }
        if let Some(t) = scan::number(&req.body, &scan::TEMPERATURE) {
            a.push(Attr("gen_ai.request.temperature", Value::Double(t)));
        }
        if let crate::keys::Caller::Key(k) = caller {
            let alias = k.rec.alias.as_deref().unwrap_or(&k.rec.id);
            a.push(Attr("llmgw.key_alias", Value::Str(alias.to_string())));
            if let Some(team) = &k.rec.team_id {
                a.push(Attr("llmgw.team", Value::Str(team.clone())));
            }
        }
        if self.tel.capture {
            let (input, system) = scan::prompt(&req.body);
            for (name, text) in [
                ("gen_ai.input.messages", input),
                ("gen_ai.system_instructions", system),
            ] {
                if let Some(t) = text {
                    a.push(Attr(name, Value::Str(self.tel.mask(t))));
                }
            }
        }
    }

    /// The request failed with `e` before an answer.
    pub(crate) fn failed(&mut self, e: &llmgw_core::error::ApiError) {
        self.error_type = Some(e.code.clone().unwrap_or_else(|| e.kind.to_string()));
    }

    /// Observes the response: a JSON answer is read now (it is in memory) and the span
    /// sent; a stream's span is sent when the stream ends or the client leaves.
    pub(crate) async fn respond(mut self: Box<Self>, resp: Response, log: &RequestLog) -> Response {
        let h = resp.headers();
        self.head(h, log, resp.status().as_u16());
        let stream = h
            .get(axum::http::header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
        let (parts, body) = resp.into_parts();
        if stream {
            let api = self.endpoint;
            let traced = Traced {
                inner: body.into_data_stream(),
                carry: BytesMut::new(),
                answer: Answer::default(),
                rec: Some(self),
                api,
            };
            return Response::from_parts(parts, Body::from_stream(traced));
        }
        let bytes = axum::body::to_bytes(body, usize::MAX)
            .await
            .unwrap_or_default();
        let mut answer = Answer::default();
        answer.whole(&bytes, self.endpoint, self.tel.capture);
        (*self).finish(answer);
        Response::from_parts(parts, Body::from(bytes))
    }

    /// What the answer's head says (llmgw's headers, else the request log).
    fn head(&mut self, h: &HeaderMap, log: &RequestLog, status: u16) {
        use llmgw_router::names;
        const CACHE: axum::http::HeaderName = axum::http::HeaderName::from_static("x-llmgw-cache");
        let text = |name: &axum::http::HeaderName| h.get(name).and_then(|v| v.to_str().ok());
        let a = &mut self.attrs;
        a.push(Attr("http.response.status_code", Value::Int(status.into())));
        let deployment = text(&names::DEPLOYMENT).unwrap_or(&log.deployment);
        if !deployment.is_empty() {
            a.push(Attr("llmgw.deployment", Value::Str(deployment.to_string())));
        }
        let attempts = text(&names::ATTEMPTS)
            .and_then(|v| v.parse().ok())
            .unwrap_or(log.attempts);
        a.push(Attr("llmgw.attempts", Value::Int(attempts.into())));
        if let Some(f) = text(&names::FALLBACK).or(log.fallback.as_deref()) {
            a.push(Attr("llmgw.fallback", Value::Str(f.to_string())));
        }
        if let Some(c) = text(&CACHE) {
            a.push(Attr("llmgw.cache", Value::Str(c.to_string())));
        }
        let queue_ms = text(&names::QUEUE_MS)
            .and_then(|v| v.parse::<i64>().ok())
            .unwrap_or_else(|| i64::try_from(log.queue.as_millis()).unwrap_or(i64::MAX));
        a.push(Attr("llmgw.queue_ms", Value::Int(queue_ms)));
        if status >= 400 && self.error_type.is_none() {
            self.error_type = Some(status.to_string());
        }
    }

    /// Builds the span and hands it to the exporter (never waits).
    fn finish(mut self, answer: Answer) {
        let end = self.start + self.began.elapsed();
        let attempts = self.link.take_attempts();
        let last = attempts.last();
        let a = &mut self.attrs;
        a.push(Attr(
            "gen_ai.operation.name",
            Value::Static(operation(self.endpoint)),
        ));
        a.push(Attr("http.route", Value::Static(self.path)));
        if let Some(last) = last {
            a.push(Attr(
                "gen_ai.provider.name",
                Value::Static(provider_name(last.provider)),
            ));
            a.push(Attr("server.address", Value::Str(last.address.clone())));
            if let Some(p) = last.port {
                a.push(Attr("server.port", Value::Int(p.into())));
            }
        }
        if let Some(m) = answer.model {
            a.push(Attr("gen_ai.response.model", Value::Str(m)));
        }
        if let Some(u) = answer.usage {
            a.push(Attr(
                "gen_ai.usage.input_tokens",
                Value::Int(clamp(u.prompt)),
            ));
            a.push(Attr(
                "gen_ai.usage.output_tokens",
                Value::Int(clamp(u.completion)),
            ));
            let deployment = last.map(|l| l.deployment.as_str());
            if let Some(cost) = deployment.and_then(|d| self.tel.cost_usd(d, u)) {
                a.push(Attr("llmgw.cost_usd", Value::Double(cost)));
            }
        }
        if let Some(n) = answer.cache_read {
            a.push(Attr(
                "gen_ai.usage.cache_read.input_tokens",
                Value::Int(clamp(n)),
            ));
        }
        if !answer.reasons.is_empty() {
            a.push(Attr(
                "gen_ai.response.finish_reasons",
                Value::Strs(answer.reasons),
            ));
        }
        if let Some(t) = answer.first_chunk {
            a.push(Attr(
                "gen_ai.response.time_to_first_chunk",
                Value::Double(t.as_secs_f64()),
            ));
        }
        if answer.client_gone {
            a.push(Attr("llmgw.client_gone", Value::Bool(true)));
        }
        if let Some(out) = answer.output {
            a.push(Attr(
                "gen_ai.output.messages",
                Value::Str(self.tel.mask(out)),
            ));
        }
        let error = self.error_type.take().or(answer.error);
        if let Some(e) = &error {
            a.push(Attr("error.type", Value::Str(e.clone())));
        }
        let Recording {
            tel,
            link,
            parent,
            start,
            endpoint,
            attrs,
            model,
            ..
        } = self;
        let operation = operation(endpoint);
        let request = SpanData {
            trace_id: link.trace_id,
            span_id: link.span_id,
            parent,
            remote_parent: parent.is_some(),
            name: if model.is_empty() {
                operation.to_string()
            } else {
                format!("{operation} {model}")
            },
            kind: Kind::Server,
            start: unix_nanos(start),
            end: unix_nanos(end),
            attrs,
            error,
        };
        tel.send(Finished {
            request,
            attempts,
            operation,
        });
    }
}

fn clamp(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// A stream's error events (OpenAI's; Anthropic's and Responses'), then the Responses
/// API's final events; searchers built once.
static MARKERS: LazyLock<[Finder<'static>; 5]> = LazyLock::new(|| {
    [
        &b"data: {\"error\""[..],
        b"event: error",
        b"event: response.completed",
        b"event: response.incomplete",
        b"event: response.failed",
    ]
    .map(Finder::new)
});

/// What the answer's body said.
#[derive(Debug, Default)]
pub(crate) struct Answer {
    pub model: Option<String>,
    pub usage: Option<Usage>,
    pub cache_read: Option<u64>,
    pub reasons: Vec<String>,
    pub first_chunk: Option<Duration>,
    pub output: Option<String>,
    pub error: Option<String>,
    pub client_gone: bool,
}

impl Answer {
    fn reason(&mut self, r: String) {
        if self.reasons.len() < MAX_REASONS && !self.reasons.contains(&r) {
            self.reasons.push(r);
        }
    }

    /// The `usage` object in `b`, if any: token counts (merged with earlier ones, as a
    /// stream may report them in pieces) and cached prompt tokens.
    fn usage_and_cache(&mut self, b: &[u8]) {
        let Some(at) = scan::usage_object(b) else {
            return;
        };
        let mut de = serde_json::Deserializer::from_slice(&b[at..]);
        if let Ok(u) = <Usage as serde::Deserialize>::deserialize(&mut de) {
            let mut all = self.usage.unwrap_or_default();
            all.merge(u);
            self.usage = Some(all);
        }
        if let Some(n) = scan::cache_read(b, at) {
            self.cache_read = Some(self.cache_read.unwrap_or(0).max(n));
        }
    }

    /// A whole JSON answer.
    pub(crate) fn whole(&mut self, b: &[u8], endpoint: Endpoint, capture: bool) {
        self.model = scan::strings(b, &scan::MODEL).next();
        self.usage_and_cache(b);
        let key = match endpoint {
            Endpoint::Messages => &scan::STOP_REASON,
            Endpoint::Responses => &scan::STATUS,
            _ => &scan::FINISH_REASON,
        };
        let reasons: Vec<String> = if endpoint == Endpoint::Responses {
            scan::strings(b, key).take(1).collect()
        } else {
            scan::strings(b, key).collect()
        };
        for r in reasons {
            self.reason(r);
        }
        if capture {
            self.output = scan::output(b);
        }
    }

    /// Complete events of a stream.
    pub(crate) fn events(&mut self, b: &[u8], endpoint: Endpoint, capture: bool) {
        if self.model.is_none() {
            self.model = scan::strings(b, &scan::MODEL).next();
        }
        self.usage_and_cache(b);
        if MARKERS[0].find(b).is_some() || MARKERS[1].find(b).is_some() {
            self.error = Some("stream_error".into());
        }
        match endpoint {
            Endpoint::Responses => {
                for (marker, reason) in
                    MARKERS[2..]
                        .iter()
                        .zip(["completed", "incomplete", "failed"])
                {
                    if marker.find(b).is_some() {
                        self.reason(reason.into());
                    }
                }
            }
            Endpoint::Messages => {
                for r in scan::strings(b, &scan::STOP_REASON) {
                    self.reason(r);
                }
            }
            _ => {
                for r in scan::strings(b, &scan::FINISH_REASON) {
                    self.reason(r);
                }
            }
        }
        if capture {
            let out = self.output.get_or_insert_with(String::new);
            if out.len() < MAX_CONTENT {
                scan::deltas(b, endpoint, out);
            }
        }
    }
}

/// A streamed answer on its way out, read as it passes.
struct Traced {
    inner: axum::body::BodyDataStream,
    /// The start of an event whose end has not arrived yet.
    carry: BytesMut,
    answer: Answer,
    rec: Option<Box<Recording>>,
    api: Endpoint,
}

impl Traced {
    fn chunk(&mut self, b: &Bytes) {
        let Some(rec) = &self.rec else { return };
        if self.answer.first_chunk.is_none() {
            self.answer.first_chunk = Some(rec.began.elapsed());
        }
        let capture = rec.tel.capture;
        // Complete events only: a usage object split across chunks is seen whole.
        if self.carry.is_empty() && b.ends_with(b"\n\n") {
            self.answer.events(b, self.api, capture);
            return;
        }
        self.carry.extend_from_slice(b);
        if let Some(end) = memchr::memmem::rfind(&self.carry, b"\n\n") {
            let done = self.carry.split_to(end + 2);
            self.answer.events(&done, self.api, capture);
        }
        if self.carry.len() > MAX_CARRY {
            self.carry.clear();
        }
    }

    fn end(&mut self, client_gone: bool) {
        if let Some(rec) = self.rec.take() {
            if !self.carry.is_empty() {
                let rest = std::mem::take(&mut self.carry);
                self.answer.events(&rest, self.api, rec.tel.capture);
            }
            let mut answer = std::mem::take(&mut self.answer);
            answer.client_gone = client_gone;
            (*rec).finish(answer);
        }
    }
}

impl Stream for Traced {
    type Item = Result<Bytes, axum::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_next(cx) {
            Poll::Ready(Some(Ok(b))) => {
                this.chunk(&b);
                Poll::Ready(Some(Ok(b)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.answer.error = Some("stream_error".into());
                this.end(false);
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(None) => {
                this.end(false);
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl Drop for Traced {
    fn drop(&mut self) {
        // Still recording: the client left before the end.
        self.end(true);
    }
}
