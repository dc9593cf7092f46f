//! What each request cost, and its spend row.
//!
//! - **Prices**: USD per million input/output tokens per deployment: its own
//!   `input_cost_per_mtok`/`output_cost_per_mtok`, else (for cloud deployments only) the
//!   built-in table of well-known models ([`BUILTIN_PRICES`], longest prefix of the
//!   upstream model id), else 0: local models are free unless priced.
//! - **Usage**: `usage.prompt_tokens`/`completion_tokens` of the OpenAI-shaped answer
//!   (after a provider's translation). For streams the gateway asks the upstream for a
//!   usage chunk (`stream_options.include_usage`, see
//!   [`llmgw_wire::request::ClientRequest::with_usage_requested`]) and [`meter`] removes that
//!   chunk again when the client did not ask for it.
//! - **Cost** in nano-dollars: `prompt × input price × 1000 + completion × output price ×
//!   1000`, rounded once per request. Cache hits and failed requests cost 0.
//! - **Rows**: one [`SpendRow`] per request (never the prompt or the answer) goes to a
//!   bounded channel ([`Spend::record`] never waits); a background task batches rows into
//!   the store every [`FLUSH_INTERVAL`]. When the store is down the rows stay in a bounded
//!   buffer (`[store] buffer_rows`, counted in `/metrics`) and are written once it is back;
//!   only rows beyond that bound are dropped (and counted).

use crate::store::Store;
use serde::Deserialize;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
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
    pub(crate) fn merge(&mut self, later: Usage) {
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
pub(crate) fn usage_object(b: &[u8]) -> Option<usize> {
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

pub use crate::records::SpendRow;

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
    /// The router's histograms, where each request's tokens are counted.
    hist: std::sync::OnceLock<Arc<llmgw_router::histograms::Histograms>>,
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
            hist: std::sync::OnceLock::new(),
        };
        (Arc::new(spend), task)
    }

    /// Counts each request's tokens in `hist` from now on.
    pub fn set_histograms(&self, hist: Arc<llmgw_router::histograms::Histograms>) {
        let _ = self.hist.set(hist);
    }

    /// The histograms tokens are counted in, once set.
    pub fn histograms(&self) -> Option<&llmgw_router::histograms::Histograms> {
        self.hist.get().map(|h| &**h)
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
                user_id: String::new(),
                end_user: String::new(),
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
}
