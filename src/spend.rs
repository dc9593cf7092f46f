//! What each request cost, and its spend row.
//!
//! - **Prices**: USD per million input/output tokens per deployment: its own
//!   `input_cost_per_mtok`/`output_cost_per_mtok`, else (for cloud deployments only) the
//!   built-in table of well-known models ([`BUILTIN_PRICES`], longest prefix of the
//!   upstream model id), else 0: local models are free unless priced.
//! - **Usage**: `usage.prompt_tokens`/`completion_tokens` of the OpenAI-shaped answer
//!   (after a provider's translation). For streams the gateway asks the upstream for a
//!   usage chunk (`stream_options.include_usage`, see
//!   [`crate::request::ClientRequest::with_usage_requested`]) and [`meter`] removes that
//!   chunk again when the client did not ask for it.
//! - **Cost** in nano-dollars: `prompt × input price × 1000 + completion × output price ×
//!   1000`, rounded once per request. Cache hits and failed requests cost 0.
//! - **Rows**: one [`SpendRow`] per request (never the prompt or the answer) goes to a
//!   bounded channel ([`Spend::record`] never waits); a background task batches rows into
//!   the store every [`FLUSH_INTERVAL`]. When the store is down the rows stay in a bounded
//!   buffer (`[store] buffer_rows`, counted in `/metrics`) and are written once it is back;
//!   only rows beyond that bound are dropped (and counted).

use crate::config::{ModelConfig, ProviderKind};
use crate::keys::enforce::{Outcome, Ticket};
use crate::store::Store;
use axum::body::Body;
use axum::http::HeaderValue;
use axum::response::Response;
use bytes::{Bytes, BytesMut};
use futures_util::Stream;
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, VecDeque};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::mpsc;

/// How often buffered rows are written while the store is up.
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(50);
/// How long to wait before writing again after the store failed.
pub const RETRY_INTERVAL: Duration = Duration::from_millis(500);
/// How long the writer waits at shutdown for requests still recording their rows.
const CLOSE_WAIT: Duration = Duration::from_secs(5);
/// Rows per write.
const BATCH: usize = 2000;
/// Rows waiting in the channel between the request path and the writer.
const CHANNEL: usize = 16_384;

/// USD per million (input, output) tokens of well-known cloud models, matched by the
/// longest prefix of the upstream model id. Override per deployment with
/// `input_cost_per_mtok` / `output_cost_per_mtok`.
pub const BUILTIN_PRICES: &[(&str, f64, f64)] = &[
    ("gpt-5-nano", 0.05, 0.40),
    ("gpt-5-mini", 0.25, 2.00),
    ("gpt-5", 1.25, 10.00),
    ("gpt-4.1-nano", 0.10, 0.40),
    ("gpt-4.1-mini", 0.40, 1.60),
    ("gpt-4.1", 2.00, 8.00),
    ("gpt-4o-mini", 0.15, 0.60),
    ("gpt-4o", 2.50, 10.00),
    ("gpt-4-turbo", 10.00, 30.00),
    ("gpt-3.5-turbo", 0.50, 1.50),
    ("o4-mini", 1.10, 4.40),
    ("o3-mini", 1.10, 4.40),
    ("o3", 2.00, 8.00),
    ("o1-mini", 1.10, 4.40),
    ("o1", 15.00, 60.00),
    ("text-embedding-3-small", 0.02, 0.0),
    ("text-embedding-3-large", 0.13, 0.0),
    ("text-embedding-ada-002", 0.10, 0.0),
    ("claude-opus-4", 15.00, 75.00),
    ("claude-sonnet-4", 3.00, 15.00),
    ("claude-haiku-4", 1.00, 5.00),
    ("claude-3-7-sonnet", 3.00, 15.00),
    ("claude-3-5-sonnet", 3.00, 15.00),
    ("claude-3-5-haiku", 0.80, 4.00),
    ("claude-3-opus", 15.00, 75.00),
    ("claude-3-haiku", 0.25, 1.25),
    ("gemini-2.5-pro", 1.25, 10.00),
    ("gemini-2.5-flash-lite", 0.10, 0.40),
    ("gemini-2.5-flash", 0.30, 2.50),
    ("gemini-2.0-flash-lite", 0.075, 0.30),
    ("gemini-2.0-flash", 0.10, 0.40),
    ("gemini-1.5-pro", 1.25, 5.00),
    ("gemini-1.5-flash", 0.075, 0.30),
];

/// The built-in price of an upstream model id, if it is a well-known one.
pub fn builtin_price(model: &str) -> Option<(f64, f64)> {
    let model = model.strip_prefix("models/").unwrap_or(model);
    BUILTIN_PRICES
        .iter()
        .filter(|(p, _, _)| model.starts_with(p))
        .max_by_key(|(p, _, _)| p.len())
        .map(|&(_, i, o)| (i, o))
}

/// A deployment's (input, output) USD per million tokens.
pub fn prices_for(m: &ModelConfig) -> (f64, f64) {
    let cloud = match m.provider {
        ProviderKind::Azure | ProviderKind::Anthropic | ProviderKind::Gemini => true,
        ProviderKind::Sglang => false,
        ProviderKind::Openai => {
            m.launch.is_none()
                && m.api_base
                    .as_ref()
                    .is_none_or(|b| b.get_ref().contains("api.openai.com"))
        }
    };
    let model = m.model.as_deref().unwrap_or(m.name.get_ref());
    let table = cloud.then(|| builtin_price(model)).flatten();
    (
        m.input_cost_per_mtok.or(table.map(|t| t.0)).unwrap_or(0.0),
        m.output_cost_per_mtok.or(table.map(|t| t.1)).unwrap_or(0.0),
    )
}

/// Tokens of one request, from a `usage` object of any client API: OpenAI's
/// `prompt_tokens`/`completion_tokens`, or Anthropic's and Responses'
/// `input_tokens`/`output_tokens` (Anthropic's cache reads and writes are prompt tokens
/// too).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(from = "UsageFields")]
pub struct Usage {
    pub prompt: u64,
    pub completion: u64,
}

#[derive(Deserialize)]
struct UsageFields {
    #[serde(default)]
    prompt_tokens: Option<u64>,
    #[serde(default)]
    completion_tokens: Option<u64>,
    #[serde(default)]
    input_tokens: Option<u64>,
    #[serde(default)]
    output_tokens: Option<u64>,
    #[serde(default)]
    cache_read_input_tokens: Option<u64>,
    #[serde(default)]
    cache_creation_input_tokens: Option<u64>,
}

impl From<UsageFields> for Usage {
    fn from(f: UsageFields) -> Usage {
        let anthropic_cache = f
            .cache_read_input_tokens
            .unwrap_or(0)
            .saturating_add(f.cache_creation_input_tokens.unwrap_or(0));
        Usage {
            prompt: f
                .prompt_tokens
                .unwrap_or_else(|| f.input_tokens.unwrap_or(0).saturating_add(anthropic_cache)),
            completion: f.completion_tokens.or(f.output_tokens).unwrap_or(0),
        }
    }
}

impl Usage {
    /// Usage reported in pieces (Anthropic sends the prompt's count when a stream starts
    /// and the answer's when it ends): the largest count of each.
    fn merge(&mut self, later: Usage) {
        self.prompt = self.prompt.max(later.prompt);
        self.completion = self.completion.max(later.completion);
    }
}

impl Usage {
    pub fn total(&self) -> u64 {
        self.prompt.saturating_add(self.completion)
    }
}

/// Nano-dollars for `usage` at `(input, output)` USD per million tokens.
pub fn cost_nanos(usage: Usage, price: (f64, f64)) -> i64 {
    let c = usage.prompt as f64 * price.0 * 1000.0 + usage.completion as f64 * price.1 * 1000.0;
    if c.is_finite() && c > 0.0 {
        c.round().min(i64::MAX as f64) as i64
    } else {
        0
    }
}

/// Finds `"usage"` from the end (built once: building a searcher costs more than the
/// search on a typical answer).
static USAGE: std::sync::LazyLock<memchr::memmem::FinderRev<'static>> =
    std::sync::LazyLock::new(|| memchr::memmem::FinderRev::new(b"\"usage\""));

/// Where a `"usage": {` object starts in `b`, if anywhere.
fn usage_object(b: &[u8]) -> Option<usize> {
    for at in USAGE.rfind_iter(b) {
        let rest = b[at + 7..].trim_ascii_start();
        if let Some(rest) = rest.strip_prefix(b":") {
            let rest = rest.trim_ascii_start();
            if rest.first() == Some(&b'{') {
                return Some(b.len() - rest.len());
            }
        }
    }
    None
}

/// The `usage` of an OpenAI-shaped JSON body or stream event, found without parsing the
/// rest.
pub fn usage_of(b: &[u8]) -> Option<Usage> {
    let at = usage_object(b)?;
    let mut de = serde_json::Deserializer::from_slice(&b[at..]);
    Usage::deserialize(&mut de).ok()
}

/// A random request id (32 hex digits).
pub fn request_id() -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut n = fastrand::u128(..);
    let mut out = [0u8; 32];
    for b in out.iter_mut().rev() {
        *b = HEX[(n & 15) as usize];
        n >>= 4;
    }
    // Only ASCII hex digits were written.
    String::from_utf8_lossy(&out).into_owned()
}

/// One request's spend row: who, which model, tokens, cost; never the content.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SpendRow {
    pub request_id: String,
    /// Unix ms when the request finished.
    pub ts_ms: i64,
    /// The key's id; empty for the master key.
    pub key_id: String,
    /// The key's team; empty for none.
    pub team_id: String,
    pub model_group: String,
    /// The deployment that answered (`cache` for a cache hit).
    pub deployment: String,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    pub cost_nanos: i64,
    pub latency_ms: i64,
    pub status: i32,
    pub cache_hit: bool,
}

/// Totals of one model group since start, for `/metrics`.
#[derive(Debug, Default)]
pub struct GroupTotals {
    pub requests: AtomicU64,
    pub prompt_tokens: AtomicU64,
    pub completion_tokens: AtomicU64,
    pub spend: AtomicI64,
    pub cache_hits: AtomicU64,
}

/// The writer's health, for `/metrics`.
#[derive(Debug, Default)]
pub struct WriterStats {
    pub buffered: AtomicU64,
    pub written: AtomicU64,
    pub dropped: AtomicU64,
    pub write_errors: AtomicU64,
    pub store_up: AtomicBool,
    /// Admitted requests whose rows are not recorded yet ([`OpenTicket`]).
    pub open_tickets: AtomicU64,
}

/// Prices, per-group totals and the spend rows' way to the store.
#[derive(Debug)]
pub struct Spend {
    /// Deployment id → (input, output) USD per million tokens.
    prices: HashMap<String, (f64, f64)>,
    pub groups: HashMap<String, GroupTotals>,
    /// Requests for groups the gateway does not serve (404s).
    pub other: GroupTotals,
    tx: mpsc::Sender<SpendRow>,
    pub stats: Arc<WriterStats>,
}

/// One admitted request whose row is not recorded yet; the writer waits for every one at
/// shutdown, so a stream that ends (or is cut) after the last flush still has its row.
#[derive(Debug)]
pub struct OpenTicket(Arc<WriterStats>);

impl Drop for OpenTicket {
    fn drop(&mut self) {
        self.0.open_tickets.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Spend {
    /// Starts the writer task; rows go to `store`, at most `buffer_rows` wait for it.
    pub fn start(
        prices: HashMap<String, (f64, f64)>,
        groups: &[String],
        store: Arc<Store>,
        buffer_rows: usize,
        shutdown: tokio_util::sync::CancellationToken,
    ) -> (Arc<Spend>, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(CHANNEL);
        let stats = Arc::new(WriterStats {
            store_up: AtomicBool::new(true),
            ..WriterStats::default()
        });
        let task = tokio::spawn(write_rows(store, rx, stats.clone(), buffer_rows, shutdown));
        let spend = Spend {
            prices,
            groups: groups
                .iter()
                .map(|g| (g.clone(), GroupTotals::default()))
                .collect(),
            other: GroupTotals::default(),
            tx,
            stats,
        };
        (Arc::new(spend), task)
    }

    /// Cost of `usage` on deployment `id` in nano-dollars.
    pub fn cost(&self, deployment: &str, usage: Usage) -> i64 {
        self.prices
            .get(deployment)
            .map_or(0, |&p| cost_nanos(usage, p))
    }

    /// Marks a request admitted: the writer does not finish before its row is recorded
    /// (the guard is dropped after the row is handed over).
    pub fn open_ticket(&self) -> OpenTicket {
        self.stats.open_tickets.fetch_add(1, Ordering::AcqRel);
        OpenTicket(self.stats.clone())
    }

    /// Counts the row and hands it to the writer; never waits.
    pub fn record(&self, row: SpendRow) {
        let g = self.groups.get(&row.model_group).unwrap_or(&self.other);
        g.requests.fetch_add(1, Ordering::Relaxed);
        g.prompt_tokens
            .fetch_add(row.prompt_tokens as u64, Ordering::Relaxed);
        g.completion_tokens
            .fetch_add(row.completion_tokens as u64, Ordering::Relaxed);
        g.spend.fetch_add(row.cost_nanos, Ordering::Relaxed);
        if row.cache_hit {
            g.cache_hits.fetch_add(1, Ordering::Relaxed);
        }
        if self.tx.try_send(row).is_err() {
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The writer: moves rows from the channel into a bounded buffer and writes the buffer
/// in batches; on a store error keeps them and tries again after [`RETRY_INTERVAL`].
/// On shutdown it first waits (at most [`CLOSE_WAIT`]) until every admitted request has
/// recorded its row ([`OpenTicket`]: the server closes its connections before this, so
/// streams cut at the end of the grace period are recorded too), then writes what it has
/// (trying for a few seconds) and ends.
async fn write_rows(
    store: Arc<Store>,
    mut rx: mpsc::Receiver<SpendRow>,
    stats: Arc<WriterStats>,
    cap: usize,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let mut buf: VecDeque<SpendRow> = VecDeque::new();
    let mut next = tokio::time::Instant::now();
    let mut closing: Option<tokio::time::Instant> = None;
    loop {
        // Checked before waiting: once closing, with nothing left to write, every branch
        // below is disabled.
        if let Some(until) = closing {
            if buf.is_empty() || tokio::time::Instant::now() >= until {
                if !buf.is_empty() {
                    tracing::warn!(
                        rows = buf.len(),
                        "spend rows not written at shutdown: the store is unreachable"
                    );
                }
                return;
            }
        }
        tokio::select! {
            biased;
            r = rx.recv(), if closing.is_none() => match r {
                Some(row) => {
                    keep(&mut buf, cap, &stats, row);
                    stats.buffered.store(buf.len() as u64, Ordering::Relaxed);
                    if buf.len() < BATCH || tokio::time::Instant::now() < next {
                        continue;
                    }
                }
                None => closing = Some(tokio::time::Instant::now() + Duration::from_secs(5)),
            },
            _ = shutdown.cancelled(), if closing.is_none() => {
                let until = tokio::time::Instant::now() + CLOSE_WAIT;
                loop {
                    while let Ok(row) = rx.try_recv() {
                        keep(&mut buf, cap, &stats, row);
                    }
                    if stats.open_tickets.load(Ordering::Acquire) == 0 {
                        // A guard is dropped after its row was sent: drain once more.
                        while let Ok(row) = rx.try_recv() {
                            keep(&mut buf, cap, &stats, row);
                        }
                        break;
                    }
                    if tokio::time::Instant::now() >= until {
                        tracing::warn!(
                            open = stats.open_tickets.load(Ordering::Acquire),
                            "requests still open at shutdown: their spend rows are not recorded"
                        );
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                closing = Some(tokio::time::Instant::now() + Duration::from_secs(5));
            }
            _ = tokio::time::sleep_until(next), if !buf.is_empty() => {}
        }
        if buf.is_empty() {
            continue;
        }
        let n = buf.len().min(BATCH);
        let batch = &buf.make_contiguous()[..n];
        match store.insert_spend(batch).await {
            Ok(()) => {
                buf.drain(..n);
                stats.written.fetch_add(n as u64, Ordering::Relaxed);
                if !stats.store_up.swap(true, Ordering::Relaxed) {
                    tracing::info!(
                        buffered = buf.len(),
                        "store reachable again: writing buffered spend rows"
                    );
                }
                next = tokio::time::Instant::now()
                    + if buf.len() >= BATCH {
                        Duration::ZERO
                    } else {
                        FLUSH_INTERVAL
                    };
            }
            Err(e) => {
                stats.write_errors.fetch_add(1, Ordering::Relaxed);
                if stats.store_up.swap(false, Ordering::Relaxed) {
                    tracing::warn!(error = %e, buffered = buf.len(), "cannot write spend rows; keeping them in memory (bounded by [store] buffer_rows) and retrying");
                }
                next = tokio::time::Instant::now() + RETRY_INTERVAL;
            }
        }
        stats.buffered.store(buf.len() as u64, Ordering::Relaxed);
    }
}

/// Buffers `row` unless `cap` rows already wait (then it is dropped and counted).
fn keep(buf: &mut VecDeque<SpendRow>, cap: usize, stats: &WriterStats, row: SpendRow) {
    if buf.len() < cap {
        buf.push_back(row);
    } else {
        stats.dropped.fetch_add(1, Ordering::Relaxed);
    }
}

/// Charges `ticket` for `resp` and adds `x-llmgw-request-id`. A JSON answer is charged
/// now (it is already whole in memory); a stream when it ends, with the usage chunk the
/// gateway asked for removed when `strip_usage` (the client did not ask for it).
pub async fn meter(ticket: Ticket, strip_usage: bool, resp: Response) -> Response {
    let mut resp = resp;
    if let Ok(v) = HeaderValue::from_str(ticket.request_id()) {
        resp.headers_mut().insert("x-llmgw-request-id", v);
    }
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
    if cache_hit || status != 200 {
        ticket.finish(outcome);
        return resp;
    }
    let (parts, body) = resp.into_parts();
    // The router's JSON answers are whole in memory: this does not wait on the upstream.
    let bytes = axum::body::to_bytes(body, usize::MAX)
        .await
        .unwrap_or_default();
    ticket.finish(Outcome {
        usage: usage_of(&bytes).unwrap_or_default(),
        ..outcome
    });
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_found_in_bodies_and_events() {
        let body = br#"{"id":"x","choices":[{"message":{"content":"\"usage\": {"}}],"usage":{"prompt_tokens":3,"completion_tokens":4,"total_tokens":7}}"#;
        assert_eq!(
            usage_of(body),
            Some(Usage {
                prompt: 3,
                completion: 4
            })
        );
        assert_eq!(usage_of(br#"data: {"usage":null}"#), None);
        assert_eq!(
            usage_of(br#"{"usage": {"prompt_tokens": 5, "total_tokens": 5}}"#),
            Some(Usage {
                prompt: 5,
                completion: 0
            })
        );
    }

    /// Regression: a shutdown whose last batch empties the buffer used to reach a
    /// `select!` with every branch disabled and panic the writer task.
    #[tokio::test]
    async fn writer_ends_cleanly_at_shutdown_after_writing_everything() {
        let dir = tempfile::tempdir().unwrap();
        let store =
            crate::store::sqlite::SqliteStore::open(Some(&dir.path().join("s.db"))).unwrap();
        let store = Arc::new(Store::Sqlite(store));
        let shutdown = tokio_util::sync::CancellationToken::new();
        let (spend, task) = Spend::start(
            HashMap::new(),
            &["g".to_string()],
            store,
            1000,
            shutdown.clone(),
        );
        for i in 0..3 {
            spend.record(SpendRow {
                request_id: format!("r{i}"),
                ts_ms: 1,
                key_id: String::new(),
                team_id: String::new(),
                model_group: "g".into(),
                deployment: "d".into(),
                prompt_tokens: 1,
                completion_tokens: 1,
                cost_nanos: 0,
                latency_ms: 1,
                status: 200,
                cache_hit: false,
            });
        }
        shutdown.cancel();
        let ended = tokio::time::timeout(Duration::from_secs(10), task).await;
        assert!(
            matches!(ended, Ok(Ok(()))),
            "writer did not end cleanly: {ended:?}"
        );
        assert_eq!(spend.stats.written.load(Ordering::Relaxed), 3);
    }

    #[test]
    fn usage_of_every_client_api() {
        let anthropic = br#"{"type":"message","usage":{"input_tokens":5,"output_tokens":7,"cache_read_input_tokens":100,"cache_creation_input_tokens":0}}"#;
        assert_eq!(
            usage_of(anthropic),
            Some(Usage {
                prompt: 105,
                completion: 7
            })
        );
        let responses = br#"{"object":"response","usage":{"input_tokens":3,"input_tokens_details":{"cached_tokens":0},"output_tokens":4,"total_tokens":7}}"#;
        assert_eq!(
            usage_of(responses),
            Some(Usage {
                prompt: 3,
                completion: 4
            })
        );
        // Anthropic streams: the prompt's count at the start, the answer's at the end.
        let mut u = usage_of(br#"data: {"type":"message_start","message":{"usage":{"input_tokens":9,"output_tokens":1}}}"#).unwrap();
        u.merge(
            usage_of(br#"data: {"type":"message_delta","usage":{"output_tokens":6}}"#).unwrap(),
        );
        assert_eq!(
            u,
            Usage {
                prompt: 9,
                completion: 6
            }
        );
    }

    #[test]
    fn request_ids_are_32_hex_digits() {
        let (a, b) = (request_id(), request_id());
        assert_ne!(a, b);
        assert!(
            a.len() == 32 && a.bytes().all(|c| c.is_ascii_hexdigit()),
            "{a}"
        );
    }

    #[test]
    fn costs_are_exact() {
        let u = Usage {
            prompt: 9,
            completion: 5,
        };
        // 9 × $0.15/M + 5 × $0.60/M = 1.35e-6 + 3e-6 = 4.35e-6 USD.
        assert_eq!(cost_nanos(u, (0.15, 0.60)), 4350);
        assert_eq!(cost_nanos(u, (0.0, 0.0)), 0);
        assert_eq!(cost_nanos(u, (f64::NAN, 1.0)), 0);
    }

    #[test]
    fn builtin_prices_by_longest_prefix() {
        assert_eq!(builtin_price("gpt-4o-mini-2024-07-18"), Some((0.15, 0.60)));
        assert_eq!(builtin_price("gpt-4o-2024-08-06"), Some((2.50, 10.00)));
        assert_eq!(
            builtin_price("models/gemini-2.0-flash-001"),
            Some((0.10, 0.40))
        );
        assert_eq!(builtin_price("Qwen/Qwen3-0.6B"), None);
    }

    #[test]
    fn local_models_are_free_unless_priced() {
        let cfg = |extra: &str| {
            let text = format!("[[models]]\nname = \"m\"\n{extra}\n");
            crate::config::Config::load_str(&text, "t.toml")
                .unwrap()
                .config
                .models
                .remove(0)
        };
        let local =
            cfg("provider = \"openai\"\nmodel = \"gpt-4o\"\napi_base = \"http://127.0.0.1:1/v1\"");
        assert_eq!(prices_for(&local), (0.0, 0.0));
        let cloud = cfg("provider = \"openai\"\nmodel = \"gpt-4o\"");
        assert_eq!(prices_for(&cloud), (2.5, 10.0));
        let priced = cfg("provider = \"openai\"\nmodel = \"q\"\napi_base = \"http://127.0.0.1:1/v1\"\ninput_cost_per_mtok = 0.5\noutput_cost_per_mtok = 1.5");
        assert_eq!(prices_for(&priced), (0.5, 1.5));
        let overridden = cfg(
            "provider = \"anthropic\"\nmodel = \"claude-sonnet-4-5\"\ninput_cost_per_mtok = 1.0",
        );
        assert_eq!(prices_for(&overridden), (1.0, 15.0));
    }
}
