//! OpenTelemetry traces (`[telemetry]`, issue 25): one SERVER span per request named
//! `{gen_ai.operation.name} {gen_ai.request.model}` with the GenAI semantic conventions'
//! attributes and llmgw's own (`llmgw.*`), one CLIENT span per upstream attempt (recorded
//! by the router through `llmgw_router::trace::TraceLink`), exported over OTLP/HTTP
//! protobuf.
//!
//! - **Off costs nothing**: `AppState::telemetry` is `None` and the request path makes
//!   one check; no span, link or buffer exists.
//! - **Context**: a client's W3C `traceparent` is continued (the request span is its
//!   child; its sampled flag decides); a malformed one is ignored and a new trace starts,
//!   sampled at `sample_ratio`. Each attempt's upstream gets a `traceparent` naming the
//!   attempt's span.
//! - **Content** (`gen_ai.input.messages`, `gen_ai.output.messages`,
//!   `gen_ai.system_instructions`) only with `capture_content`, capped at 16 KiB each, the
//!   gateway's known secrets and anything shaped like an API key masked.
//! - **Export** off the request path: a finished span is `try_send`ed into a bounded
//!   channel (`max_queue`); when it is full the span is dropped and counted, never waited
//!   for. One task batches and POSTs them (`export.rs`), each export bounded by
//!   `export_timeout`; `/metrics` counts exported, dropped and failed spans.

#[doc(hidden)]
pub mod bench;
mod export;
mod scan;
mod span;

pub(crate) use span::Recording;

use axum::http::HeaderMap;
use llmgw_core::config::LoadedConfig;
use llmgw_core::redact::Secrets;
use llmgw_router::trace::{new_span_id, new_trace_id, TraceLink};
use llmgw_router::Router;
use llmgw_wire::request::Endpoint;
use span::{Attr, Finished, Value};
use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::mpsc;

/// The exporter's counters (`/metrics`).
#[derive(Debug, Default)]
pub struct Stats {
    pub exported: AtomicU64,
    /// Spans dropped because the queue was full.
    pub dropped: AtomicU64,
    /// Spans whose export failed (endpoint down, refused, too slow).
    pub failed: AtomicU64,
    /// Failed exports, for a warning now and then rather than one per batch.
    failures: AtomicU64,
    /// True while the exporter holds a batch (gathering or sending it).
    busy: AtomicBool,
}

impl Stats {
    fn note_failure(&self) {
        let n = self.failures.fetch_add(1, Ordering::Relaxed);
        if n.is_power_of_two() || n == 0 {
            tracing::warn!(
                failed_exports = n + 1,
                "OTLP trace export failed; spans are counted in llmgw_telemetry_spans_failed_total"
            );
        }
    }
}

/// Traces for the request path: sampling, recordings and the channel to the exporter.
pub struct Telemetry {
    tx: mpsc::Sender<Finished>,
    ratio: f64,
    pub(crate) capture: bool,
    secrets: Arc<Secrets>,
    /// USD per million input/output tokens by deployment id (`llmgw.cost_usd`).
    prices: HashMap<String, (f64, f64)>,
    pub stats: Arc<Stats>,
}

impl Telemetry {
    /// The request path's side and the exporter task (spawned on the current runtime);
    /// `None` when `[telemetry] otlp_endpoint` is not set.
    pub fn start(cfg: &LoadedConfig, router: &Router) -> Option<Arc<Telemetry>> {
        let t = &cfg.config.telemetry;
        let url = t.traces_url()?;
        let (tx, rx) = mpsc::channel(t.max_queue);
        let stats = Arc::new(Stats::default());
        let resource = export::encode_resource(&[
            Attr("service.name", Value::Str(t.service_name.clone())),
            Attr("service.version", Value::Static(env!("CARGO_PKG_VERSION"))),
            Attr("host.name", Value::Str(llmgw_core::host::node_hostname())),
        ]);
        let exporter = export::Exporter {
            url,
            headers: cfg.telemetry_headers.clone(),
            client: router.client().clone(),
            timeout: t.export_timeout.0,
            max_batch: t.max_batch,
            resource,
            stats: stats.clone(),
        };
        tokio::spawn(exporter.run(rx));
        let prices = router
            .deployments()
            .map(|d| (d.id.clone(), (d.input_cost, d.output_cost)))
            .collect();
        tracing::info!(
            endpoint = %llmgw_core::redact::userinfo(t.otlp_endpoint.as_ref().map_or("", |e| e.get_ref())),
            sample_ratio = *t.sample_ratio.get_ref(),
            capture_content = t.capture_content,
            "OpenTelemetry traces on"
        );
        Some(Arc::new(Telemetry {
            tx,
            ratio: *t.sample_ratio.get_ref(),
            capture: t.capture_content,
            secrets: router.secrets().clone(),
            prices,
            stats,
        }))
    }

    /// Starts recording a request, or `None` when it is not sampled.
    pub(crate) fn begin(
        self: &Arc<Self>,
        endpoint: Endpoint,
        path: &'static str,
        headers: &HeaderMap,
    ) -> Option<Box<Recording>> {
        let parent = headers
            .get(llmgw_router::trace::TRACEPARENT)
            .and_then(|v| parse_traceparent(v.as_bytes()));
        let (trace_id, parent) = match parent {
            Some((_, _, flags)) if flags & 1 == 0 => return None,
            Some((trace, span, _)) => (trace, Some(span)),
            None if self.ratio >= 1.0 || fastrand::f64() < self.ratio => (new_trace_id(), None),
            None => return None,
        };
        Some(Box::new(Recording {
            tel: self.clone(),
            link: Arc::new(TraceLink::new(trace_id, new_span_id())),
            parent,
            start: SystemTime::now(),
            began: Instant::now(),
            endpoint,
            path,
            attrs: Vec::with_capacity(32),
            model: String::new(),
            error_type: None,
        }))
    }

    /// Hands a finished span to the exporter, or drops (and counts) it when the queue is
    /// full.
    fn send(&self, f: Finished) {
        let spans = 1 + f.attempts.len() as u64;
        if self.tx.try_send(f).is_err() {
            self.stats.dropped.fetch_add(spans, Ordering::Relaxed);
        }
    }

    /// Captured content with the known secrets and key-shaped tokens masked.
    fn mask(&self, text: String) -> String {
        let text = match self.secrets.scrub(&text) {
            Cow::Borrowed(_) => text,
            Cow::Owned(s) => s,
        };
        mask_keys(text)
    }

    /// What `usage` cost on `deployment`, in USD (`None` when it is not priced).
    fn cost_usd(&self, deployment: &str, usage: crate::spend::Usage) -> Option<f64> {
        let price = *self.prices.get(deployment)?;
        if price == (0.0, 0.0) {
            return None;
        }
        Some(crate::spend::cost_nanos(usage, price) as f64 / 1e9)
    }

    /// Waits, at most `within`, until every queued span has been exported or given up
    /// (at shutdown, after the last requests).
    pub async fn flush(&self, within: Duration) {
        let until = Instant::now() + within;
        while (self.tx.capacity() < self.tx.max_capacity()
            || self.stats.busy.load(Ordering::Acquire))
            && Instant::now() < until
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// `/metrics` lines.
    pub fn metrics_text(&self) -> String {
        let s = &self.stats;
        format!(
            "# HELP llmgw_telemetry_spans_exported_total Spans sent to the OTLP endpoint.\n\
             # TYPE llmgw_telemetry_spans_exported_total counter\n\
             llmgw_telemetry_spans_exported_total {}\n\
             # HELP llmgw_telemetry_spans_dropped_total Spans dropped because the export queue was full.\n\
             # TYPE llmgw_telemetry_spans_dropped_total counter\n\
             llmgw_telemetry_spans_dropped_total {}\n\
             # HELP llmgw_telemetry_spans_failed_total Spans whose export failed (endpoint down, refused or too slow).\n\
             # TYPE llmgw_telemetry_spans_failed_total counter\n\
             llmgw_telemetry_spans_failed_total {}\n",
            s.exported.load(Ordering::Relaxed),
            s.dropped.load(Ordering::Relaxed),
            s.failed.load(Ordering::Relaxed),
        )
    }
}

/// A W3C `traceparent`: trace id, parent span id and flags; `None` when malformed (all-zero
/// ids, upper-case hex, version `ff`, version 00 with extra bytes).
pub(crate) fn parse_traceparent(v: &[u8]) -> Option<([u8; 16], [u8; 8], u8)> {
    if v.len() < 55 || v.len() > 512 || v[2] != b'-' || v[35] != b'-' || v[52] != b'-' {
        return None;
    }
    let version = hex_byte(&v[0..2])?;
    if version == 0xff || (version == 0 && v.len() != 55) || (v.len() > 55 && v[55] != b'-') {
        return None;
    }
    let mut trace = [0u8; 16];
    for (i, t) in trace.iter_mut().enumerate() {
        *t = hex_byte(&v[3 + 2 * i..5 + 2 * i])?;
    }
    let mut span = [0u8; 8];
    for (i, s) in span.iter_mut().enumerate() {
        *s = hex_byte(&v[36 + 2 * i..38 + 2 * i])?;
    }
    let flags = hex_byte(&v[53..55])?;
    if trace == [0; 16] || span == [0; 8] {
        return None;
    }
    Some((trace, span, flags))
}

fn hex_byte(b: &[u8]) -> Option<u8> {
    let d = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    Some(d(*b.first()?)? << 4 | d(*b.get(1)?)?)
}

/// `text` with tokens shaped like API keys (`sk-…`, `sk-ant-…`, `sk-llmgw-…`: `sk-`
/// followed by 16 or more key characters) replaced by `[redacted]`.
pub(crate) fn mask_keys(text: String) -> String {
    let key_char = |c: u8| c.is_ascii_alphanumeric() || c == b'-' || c == b'_';
    let b = text.as_bytes();
    let mut out: Option<String> = None;
    let mut copied = 0;
    let mut from = 0;
    while let Some(i) = memchr::memmem::find(&b[from..], b"sk-").map(|i| i + from) {
        let start_ok = i == 0 || !key_char(b[i - 1]);
        let len = b[i + 3..].iter().take_while(|&&c| key_char(c)).count();
        if start_ok && len >= 16 {
            let o = out.get_or_insert_with(|| String::with_capacity(text.len()));
            o.push_str(&text[copied..i]);
            o.push_str("[redacted]");
            copied = i + 3 + len;
        }
        from = i + 3 + len;
    }
    match out {
        Some(mut o) => {
            o.push_str(&text[copied..]);
            o
        }
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_parsing() {
        let ok = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let (t, s, f) = parse_traceparent(ok).unwrap();
        assert_eq!(t[0], 0x4b);
        assert_eq!(s[7], 0xb7);
        assert_eq!(f, 1);
        for bad in [
            &b"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01"[..],
            b"00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            b"ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            b"\xff\xfe",
            b"",
        ] {
            assert!(parse_traceparent(bad).is_none(), "{bad:?}");
        }
        // A later version may carry more fields.
        assert!(
            parse_traceparent(b"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-xyz")
                .is_some()
        );
    }

    #[test]
    fn key_shaped_tokens_masked() {
        let s = mask_keys(
            "use sk-llmgw-abcdefghijklmnop1234 or sk-short, task-abcdefghijklmnopqrs".into(),
        );
        assert_eq!(s, "use [redacted] or sk-short, task-abcdefghijklmnopqrs");
        assert_eq!(mask_keys("sk-".into()), "sk-");
    }
}
