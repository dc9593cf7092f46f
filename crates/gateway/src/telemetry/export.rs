//! The exporter: one background task that takes finished request spans from a bounded
//! channel, turns them (and their attempts) into OTLP protobuf
//! (`ExportTraceServiceRequest`, written by hand: the dozen fields below are all llmgw
//! sends, and the official definitions check the bytes in `tests/telemetry.rs`) and POSTs
//! them to `{otlp_endpoint}/v1/traces` in batches. Nothing here runs on the request path;
//! an export that fails or hangs (bounded by `export_timeout`) only counts its spans as
//! failed, and while it lasts new spans wait in the channel or are dropped.

use super::span::{Attr, Finished, Kind, SpanData, Value};
use super::Stats;
use llmgw_core::config::Secret;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// How long the first span of a batch waits for more before the batch is sent.
pub(crate) const BATCH_DELAY: Duration = Duration::from_millis(200);

/// Where and how spans are sent.
pub(crate) struct Exporter {
    pub url: String,
    pub headers: Vec<(String, Secret)>,
    pub client: reqwest::Client,
    pub timeout: Duration,
    pub max_batch: usize,
    /// `service.name` and the other resource attributes, encoded once.
    pub resource: Vec<u8>,
    pub stats: Arc<Stats>,
}

impl Exporter {
    /// Runs until every sender is gone, then sends what is left.
    pub(crate) async fn run(self, mut rx: mpsc::Receiver<Finished>) {
        let mut batch: Vec<Finished> = Vec::with_capacity(self.max_batch);
        loop {
            let Some(first) = rx.recv().await else {
                return;
            };
            self.stats.busy.store(true, Ordering::Release);
            batch.push(first);
            let until = tokio::time::Instant::now() + BATCH_DELAY;
            let mut closed = false;
            while batch.len() < self.max_batch {
                match tokio::time::timeout_at(until, rx.recv()).await {
                    Ok(Some(f)) => batch.push(f),
                    Ok(None) => {
                        closed = true;
                        break;
                    }
                    Err(_) => break,
                }
            }
            self.send(&mut batch).await;
            self.stats.busy.store(false, Ordering::Release);
            if closed {
                return;
            }
        }
    }

    /// Sends one batch (and empties it); the spans are counted as exported or failed.
    async fn send(&self, batch: &mut Vec<Finished>) {
        let spans: Vec<SpanData> = batch.drain(..).flat_map(|f| f.into_spans()).collect();
        let n = spans.len() as u64;
        let body = encode_request(&self.resource, &spans);
        let mut rb = self
            .client
            .post(&self.url)
            .timeout(self.timeout)
            .header("content-type", "application/x-protobuf");
        for (k, v) in &self.headers {
            let Ok(mut value) = reqwest::header::HeaderValue::from_str(v.expose()) else {
                continue;
            };
            value.set_sensitive(true);
            rb = rb.header(k.as_str(), value);
        }
        let ok = match tokio::time::timeout(self.timeout, rb.body(body).send()).await {
            Ok(Ok(resp)) if resp.status().is_success() => true,
            Ok(Ok(resp)) => {
                tracing::debug!(status = %resp.status(), "OTLP export refused");
                false
            }
            Ok(Err(e)) => {
                tracing::debug!(error = %e.without_url(), "OTLP export failed");
                false
            }
            Err(_) => false,
        };
        if ok {
            self.stats.exported.fetch_add(n, Ordering::Relaxed);
        } else {
            self.stats.failed.fetch_add(n, Ordering::Relaxed);
            self.stats.note_failure();
        }
    }
}

// Protobuf wire format: the few field types OTLP needs, written into one buffer. A
// `KeyValue`'s length is computed before it is written; a larger message is written first
// and its length put in front of it (one move of its bytes).

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn varint_len(v: u64) -> usize {
    // 1 byte per 7 bits, at least one.
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

fn tag(out: &mut Vec<u8>, field: u32, wire: u8) {
    varint(out, (u64::from(field) << 3) | u64::from(wire));
}

fn bytes_field(out: &mut Vec<u8>, field: u32, b: &[u8]) {
    tag(out, field, 2);
    varint(out, b.len() as u64);
    out.extend_from_slice(b);
}

/// Length of a `bytes_field` with a one-byte tag.
fn bytes_field_len(n: usize) -> usize {
    1 + varint_len(n as u64) + n
}

fn fixed64(out: &mut Vec<u8>, field: u32, v: u64) {
    tag(out, field, 1);
    out.extend_from_slice(&v.to_le_bytes());
}

fn fixed32(out: &mut Vec<u8>, field: u32, v: u32) {
    tag(out, field, 5);
    out.extend_from_slice(&v.to_le_bytes());
}

fn uint(out: &mut Vec<u8>, field: u32, v: u64) {
    tag(out, field, 0);
    varint(out, v);
}

/// A nested message: written by `f` after its tag, then its length put in front.
fn message(out: &mut Vec<u8>, field: u32, f: impl FnOnce(&mut Vec<u8>)) {
    tag(out, field, 2);
    let start = out.len();
    f(out);
    let len = (out.len() - start) as u64;
    let mut prefix = [0u8; 10];
    let mut n = 0;
    let mut v = len;
    while v >= 0x80 {
        prefix[n] = (v as u8) | 0x80;
        v >>= 7;
        n += 1;
    }
    prefix[n] = v as u8;
    out.splice(start..start, prefix[..=n].iter().copied());
}

/// The encoded length of an `AnyValue`.
fn any_value_len(v: &Value) -> usize {
    match v {
        Value::Str(s) => bytes_field_len(s.len()),
        Value::Static(s) => bytes_field_len(s.len()),
        Value::Bool(_) => 2,
        Value::Int(i) => 1 + varint_len(*i as u64),
        Value::Double(_) => 9,
        Value::Strs(list) => bytes_field_len(
            list.iter()
                .map(|s| bytes_field_len(bytes_field_len(s.len())))
                .sum(),
        ),
    }
}

/// `AnyValue`.
fn any_value(out: &mut Vec<u8>, v: &Value) {
    match v {
        Value::Str(s) => bytes_field(out, 1, s.as_bytes()),
        Value::Static(s) => bytes_field(out, 1, s.as_bytes()),
        Value::Bool(b) => uint(out, 2, u64::from(*b)),
        Value::Int(i) => uint(out, 3, *i as u64),
        Value::Double(d) => fixed64(out, 4, d.to_bits()),
        Value::Strs(list) => {
            tag(out, 5, 2);
            let inner: usize = list
                .iter()
                .map(|s| bytes_field_len(bytes_field_len(s.len())))
                .sum();
            varint(out, inner as u64);
            for s in list {
                tag(out, 1, 2);
                varint(out, bytes_field_len(s.len()) as u64);
                bytes_field(out, 1, s.as_bytes());
            }
        }
    }
}

/// `KeyValue` as field `field` of its parent (a one-byte tag).
fn key_value(out: &mut Vec<u8>, field: u32, a: &Attr) {
    let value = any_value_len(&a.1);
    let len = bytes_field_len(a.0.len()) + bytes_field_len(value);
    tag(out, field, 2);
    varint(out, len as u64);
    bytes_field(out, 1, a.0.as_bytes());
    tag(out, 2, 2);
    varint(out, value as u64);
    any_value(out, &a.1);
}

/// `Resource` with these attributes, encoded once at start.
pub(crate) fn encode_resource(attrs: &[Attr]) -> Vec<u8> {
    let mut out = Vec::new();
    for a in attrs {
        key_value(&mut out, 1, a);
    }
    out
}

fn span(out: &mut Vec<u8>, s: &SpanData) {
    bytes_field(out, 1, &s.trace_id);
    bytes_field(out, 2, &s.span_id);
    if let Some(p) = &s.parent {
        bytes_field(out, 4, p);
    }
    bytes_field(out, 5, s.name.as_bytes());
    uint(
        out,
        6,
        match s.kind {
            Kind::Server => 2,
            Kind::Client => 3,
        },
    );
    fixed64(out, 7, s.start);
    fixed64(out, 8, s.end.max(s.start));
    for a in &s.attrs {
        key_value(out, 9, a);
    }
    // Status: ERROR with a message, else UNSET.
    if let Some(msg) = &s.error {
        message(out, 15, |st| {
            bytes_field(st, 2, msg.as_bytes());
            uint(st, 3, 2);
        });
    }
    // Flags: sampled; the parent is remote for a request span continuing a client's trace.
    let mut flags = 0x01 | 0x100;
    if s.remote_parent {
        flags |= 0x200;
    }
    fixed32(out, 16, flags);
}

/// `ExportTraceServiceRequest` with one resource and one scope.
pub(crate) fn encode_request(resource: &[u8], spans: &[SpanData]) -> Vec<u8> {
    let attrs: usize = spans.iter().map(|s| s.attrs.len()).sum();
    let mut out = Vec::with_capacity(160 * spans.len() + 48 * attrs + resource.len() + 64);
    message(&mut out, 1, |rs| {
        bytes_field(rs, 1, resource);
        message(rs, 2, |ss| {
            message(ss, 1, |scope| {
                bytes_field(scope, 1, b"llmgw");
                bytes_field(scope, 2, env!("CARGO_PKG_VERSION").as_bytes());
            });
            for s in spans {
                message(ss, 2, |sp| span(sp, s));
            }
        });
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_computed_match_lengths_written() {
        for v in [
            Value::Str("x".repeat(200)),
            Value::Static("chat"),
            Value::Bool(true),
            Value::Int(-5),
            Value::Int(300),
            Value::Double(0.5),
            Value::Strs(vec!["stop".into(), "y".repeat(130)]),
        ] {
            let mut out = Vec::new();
            any_value(&mut out, &v);
            assert_eq!(out.len(), any_value_len(&v), "{v:?}");
        }
        for n in [0u64, 1, 127, 128, 16_383, 16_384, u64::MAX] {
            let mut out = Vec::new();
            varint(&mut out, n);
            assert_eq!(out.len(), varint_len(n), "{n}");
        }
        let mut out = Vec::new();
        message(&mut out, 2, |m| m.extend_from_slice(&[7; 200]));
        assert_eq!(&out[..3], &[0x12, 0xc8, 0x01]);
        assert_eq!(out.len(), 203);
    }

    #[test]
    fn varints_and_fields() {
        let mut out = Vec::new();
        varint(&mut out, 300);
        assert_eq!(out, [0xac, 0x02]);
        out.clear();
        uint(&mut out, 6, 2);
        assert_eq!(out, [0x30, 0x02]);
        out.clear();
        any_value(&mut out, &Value::Int(-1));
        assert_eq!(out.len(), 1 + 10);
    }
}
