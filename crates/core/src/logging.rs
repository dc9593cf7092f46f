//! Log set-up: human-readable text by default, one JSON object per line on request.
//!
//! Request handlers never write to stderr themselves: a formatted line is appended to a
//! shared in-memory buffer (a short uncontended lock and a copy), and a writer thread
//! writes everything that piled up in one `write(2)` at most every few milliseconds. The
//! thread sleeps while nothing is logged. Under load this costs a fraction of a wake-up
//! and a syscall per request instead of one of each per line (see BENCHMARKS.md).

use crate::config::LogFormat;
use std::cell::RefCell;
use std::io::Write;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::EnvFilter;

/// How long the writer thread lets lines pile up after the first one arrives.
const BATCH_WINDOW: Duration = Duration::from_millis(10);
/// Above this many buffered bytes (stderr not keeping up) a logging thread writes the
/// buffer out itself, so memory stays bounded and nothing is dropped.
const MAX_BUFFERED: usize = 8 * 1024 * 1024;

/// A value from outside (a model name, an upstream's message) as it may appear in a text
/// log line: control characters (newlines, ESC, …) are escaped, so nobody can forge a
/// line or colour a terminal.
pub struct Clean<'a>(pub &'a str);

impl std::fmt::Display for Clean<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use std::fmt::Write as _;
        for c in self.0.chars() {
            if c.is_control() {
                for e in c.escape_default() {
                    f.write_char(e)?;
                }
            } else {
                f.write_char(c)?;
            }
        }
        Ok(())
    }
}

/// Installs the global subscriber; keep the guard alive until exit so lines are flushed.
pub fn init(format: LogFormat) -> LogGuard {
    let shared = Arc::new(Shared::default());
    let thread = {
        let shared = shared.clone();
        std::thread::Builder::new()
            .name("llmgw-log".into())
            .spawn(move || shared.run(&mut std::io::stderr()))
            .ok()
    };
    // Without the thread (spawn failed), lines are written synchronously by `write`.
    shared.lock().sync = thread.is_none();
    let filter = EnvFilter::try_from_env("LLMGW_LOG")
        .unwrap_or_else(|_| EnvFilter::new("info,hyper=warn,reqwest=warn,h2=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(BatchWriter(shared.clone()))
        .with_target(false);
    let result = match format {
        LogFormat::Text => builder.with_ansi(false).try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    // A second init (tests running serve in-process) keeps the first subscriber, and the
    // request line keeps going where that subscriber's lines go.
    if result.is_ok() {
        let _ = REQUEST_LINES.set((shared.clone(), format));
    }
    LogGuard { shared, thread }
}

/// Flushes buffered lines and stops the writer thread when dropped.
pub struct LogGuard {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for LogGuard {
    fn drop(&mut self) {
        self.shared.lock().stop = true;
        self.shared.wake.notify_one();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        // Lines logged after the thread stopped; later ones go straight to stderr.
        let mut b = self.shared.lock();
        b.sync = true;
        let _ = std::io::stderr().write_all(&b.buf);
        b.buf.clear();
    }
}

#[derive(Default)]
struct Buffer {
    buf: Vec<u8>,
    stop: bool,
    sync: bool,
}

#[derive(Default)]
struct Shared {
    buffer: Mutex<Buffer>,
    wake: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Buffer> {
        self.buffer.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The writer thread: wait for a first line, let more pile up, write them all.
    fn run(&self, out: &mut dyn Write) {
        let mut spare = Vec::new();
        loop {
            let mut b = self.lock();
            while b.buf.is_empty() && !b.stop {
                b = self.wake.wait(b).unwrap_or_else(|e| e.into_inner());
            }
            if !b.stop {
                b = self
                    .wake
                    .wait_timeout_while(b, BATCH_WINDOW, |b| !b.stop)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
            }
            let stop = b.stop;
            std::mem::swap(&mut b.buf, &mut spare);
            drop(b);
            if !spare.is_empty() {
                let _ = out.write_all(&spare);
                let _ = out.flush();
                spare.clear();
                if spare.capacity() > MAX_BUFFERED {
                    spare = Vec::new();
                }
            }
            if stop {
                return;
            }
        }
    }
}

/// The subscriber's writer: appends each formatted line to the shared buffer.
#[derive(Clone)]
struct BatchWriter(Arc<Shared>);

impl Write for BatchWriter {
    fn write(&mut self, line: &[u8]) -> std::io::Result<usize> {
        let mut b = self.0.lock();
        if b.sync || b.buf.len() + line.len() > MAX_BUFFERED {
            // No writer thread, or stderr is not keeping up: write here (backpressure).
            let mut err = std::io::stderr().lock();
            err.write_all(&b.buf)?;
            b.buf.clear();
            err.write_all(line)?;
            return Ok(line.len());
        }
        let was_empty = b.buf.is_empty();
        b.buf.extend_from_slice(line);
        drop(b);
        if was_empty {
            self.0.wake.notify_one();
        }
        Ok(line.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for BatchWriter {
    type Writer = BatchWriter;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

/// Where the request line goes and in which format: the installed subscriber's buffer.
static REQUEST_LINES: OnceLock<(Arc<Shared>, LogFormat)> = OnceLock::new();

/// The fields of the one line per request (`router::RequestLog`).
#[derive(Debug, Clone, Copy)]
pub struct RequestLine<'a> {
    pub path: &'a str,
    pub model: &'a str,
    pub deployment: &'a str,
    pub fallback: Option<&'a str>,
    pub status: u16,
    pub attempts: u32,
    pub stream: bool,
    pub complete: bool,
    pub client_gone: bool,
    pub latency: Duration,
    pub ttfb: Option<Duration>,
}

/// Logs the request line (target `llmgw::request`, level INFO, so `LLMGW_LOG` filters it
/// as before).
///
/// It is written here, byte for byte as tracing-subscriber's formatter would write it,
/// because that formatter (field visitor, `fmt::write`, escaping, the timestamp) cost
/// 16 k of the 97 k instructions a proxied request took (BENCHMARKS.md, issue 13). Without
/// a subscriber from [`init`] (a test's own) the event goes through tracing as usual.
pub fn request(line: &RequestLine<'_>) {
    if !tracing::enabled!(target: "llmgw::request", tracing::Level::INFO) {
        return;
    }
    let Some((shared, format)) = REQUEST_LINES.get() else {
        return request_via_tracing(line);
    };
    thread_local! {
        static BUF: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    }
    BUF.with(|buf| {
        let Ok(mut buf) = buf.try_borrow_mut() else {
            return request_via_tracing(line);
        };
        buf.clear();
        format_request(&mut buf, *format, SystemTime::now(), line);
        let _ = BatchWriter(shared.clone()).write(&buf);
        if buf.capacity() > 64 * 1024 {
            *buf = Vec::new();
        }
    });
}

/// The same line through tracing's macro (its formatter decides the bytes).
fn request_via_tracing(line: &RequestLine<'_>) {
    tracing::info!(
        target: "llmgw::request",
        path = line.path,
        model = %Clean(line.model),
        deployment = %line.deployment,
        fallback = line.fallback.map(|f| tracing::field::display(Clean(f))),
        status = line.status,
        attempts = line.attempts,
        stream = line.stream,
        complete = line.complete,
        client_gone = line.client_gone,
        latency_ms = %Millis(line.latency, 2),
        ttfb_ms = line.ttfb.map(|t| Millis(t, 2).to_string()),
        "request"
    );
}

/// `{timestamp}  INFO request path="…" model=… …` or the JSON object tracing-subscriber's
/// `json().flatten_event(true)` writes, ending in a newline. The fields are the same in
/// both; only the key syntax and how strings are quoted differ.
fn format_request(out: &mut Vec<u8>, format: LogFormat, now: SystemTime, l: &RequestLine<'_>) {
    let json = matches!(format, LogFormat::Json);
    let key = |out: &mut Vec<u8>, name: &str| {
        if json {
            out.extend_from_slice(b",\"");
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b"\":");
        } else {
            out.push(b' ');
            out.extend_from_slice(name.as_bytes());
            out.push(b'=');
        }
    };
    if json {
        out.extend_from_slice(b"{\"timestamp\":\"");
        push_timestamp(out, now);
        out.extend_from_slice(b"\",\"level\":\"INFO\",\"message\":\"request\"");
    } else {
        push_timestamp(out, now);
        out.extend_from_slice(b"  INFO request");
    }
    key(out, "path");
    if json {
        push_json_str(out, l.path);
    } else {
        push_debug_str(out, l.path);
    }
    key(out, "model");
    push_outside(out, json, l.model);
    key(out, "deployment");
    if json {
        push_json_str(out, l.deployment);
    } else {
        out.extend_from_slice(l.deployment.as_bytes());
    }
    if let Some(f) = l.fallback {
        key(out, "fallback");
        push_outside(out, json, f);
    }
    for (name, n) in [("status", l.status.into()), ("attempts", l.attempts.into())] {
        key(out, name);
        push_u64(out, n);
    }
    for (name, b) in [
        ("stream", l.stream),
        ("complete", l.complete),
        ("client_gone", l.client_gone),
    ] {
        key(out, name);
        out.extend_from_slice(if b { b"true" } else { b"false" });
    }
    // As tracing recorded them: `latency_ms` displayed, `ttfb_ms` an `Option<String>`.
    for (name, ms, quoted) in [
        ("latency_ms", Some(l.latency), json),
        ("ttfb_ms", l.ttfb, true),
    ] {
        let Some(ms) = ms else { continue };
        key(out, name);
        if quoted {
            out.push(b'"');
        }
        push_millis(out, ms, 2);
        if quoted {
            out.push(b'"');
        }
    }
    if json {
        out.push(b'}');
    }
    out.push(b'\n');
}

/// A `&str` field as tracing's text format writes it (`Debug`, quoted).
fn push_debug_str(out: &mut Vec<u8>, s: &str) {
    if s.bytes()
        .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\')
    {
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    } else {
        out.extend_from_slice(format!("{s:?}").as_bytes());
    }
}

/// A value from outside, through `Clean`: as is in text, a JSON string in JSON.
fn push_outside(out: &mut Vec<u8>, json: bool, s: &str) {
    match (json, s.chars().any(char::is_control)) {
        (false, _) => push_clean(out, s),
        (true, false) => push_json_str(out, s),
        (true, true) => push_json_str(out, &Clean(s).to_string()),
    }
}

/// A value as `Clean` displays it, without going through `fmt` when it needs no escaping.
fn push_clean(out: &mut Vec<u8>, s: &str) {
    if s.chars().any(char::is_control) {
        out.extend_from_slice(Clean(s).to_string().as_bytes());
    } else {
        out.extend_from_slice(s.as_bytes());
    }
}

/// A JSON string literal (as serde_json writes it).
fn push_json_str(out: &mut Vec<u8>, s: &str) {
    let plain = |b: &u8| *b >= 0x20 && *b != b'"' && *b != b'\\';
    if s.as_bytes().iter().all(plain) {
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    } else {
        let _ = serde_json::to_writer(&mut *out, s);
    }
}

fn push_u64(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

/// `n` as exactly `width` digits (zero-padded; the caller keeps `n` in range).
fn push_padded(out: &mut Vec<u8>, mut n: u64, width: usize) {
    let start = out.len();
    out.resize(start + width, b'0');
    for d in out[start..].iter_mut().rev() {
        *d = b'0' + (n % 10) as u8;
        n /= 10;
    }
}

/// Milliseconds with `decimals` (≤ 6) digits after the point, rounded half up.
pub fn push_millis(out: &mut Vec<u8>, d: Duration, decimals: u32) {
    let decimals = decimals.min(6);
    let scale = 10u64.pow(decimals);
    // In u64 (u128 division is a library call): units of 10^-decimals ms, rounded half up.
    let unit_ns = 1_000_000 / scale;
    let nanos = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
    let units = nanos.saturating_add(unit_ns / 2) / unit_ns;
    push_u64(out, units / scale);
    if decimals > 0 {
        out.push(b'.');
        push_padded(out, units % scale, decimals as usize);
    }
}

/// Milliseconds with a fixed number of decimals, for `Display`.
pub struct Millis(pub Duration, pub u32);

impl std::fmt::Display for Millis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut out = Vec::with_capacity(24);
        push_millis(&mut out, self.0, self.1);
        f.write_str(std::str::from_utf8(&out).unwrap_or_default())
    }
}

/// RFC 3339 UTC with microseconds, as tracing-subscriber's `SystemTime` timer writes it:
/// `2026-11-30T15:22:20.827341Z`.
fn push_timestamp(out: &mut Vec<u8>, now: SystemTime) {
    thread_local! {
        /// The second last written and its `YYYY-MM-DDTHH:MM:SS.` (one log line after
        /// another falls in the same second).
        static SECOND: std::cell::Cell<(u64, [u8; 20])> = const { std::cell::Cell::new((u64::MAX, [0; 20])) };
    }
    let since = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = since.as_secs();
    let prefix = SECOND.with(|c| {
        let (cached, prefix) = c.get();
        if cached == secs {
            return prefix;
        }
        let mut p = Vec::with_capacity(20);
        push_date_time(&mut p, secs);
        let prefix = p.try_into().unwrap_or([b'0'; 20]);
        c.set((secs, prefix));
        prefix
    });
    out.extend_from_slice(&prefix);
    push_padded(out, since.subsec_micros().into(), 6);
    out.push(b'Z');
}

/// `YYYY-MM-DDTHH:MM:SS.` for `secs` since the epoch (years past 9999 print as 9999).
fn push_date_time(out: &mut Vec<u8>, secs: u64) {
    let (year, month, day) = civil_from_days((secs / 86_400) as i64);
    let sod = secs % 86_400;
    push_padded(out, year.clamp(0, 9999) as u64, 4);
    out.push(b'-');
    push_padded(out, month.into(), 2);
    out.push(b'-');
    push_padded(out, day.into(), 2);
    out.push(b'T');
    push_padded(out, sod / 3600, 2);
    out.push(b':');
    push_padded(out, sod / 60 % 60, 2);
    out.push(b':');
    push_padded(out, sod % 60, 2);
    out.push(b'.');
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (H. Hinnant's
/// `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer that keeps what it is given, shared with the test.
    #[derive(Clone, Default)]
    struct Capture(Arc<Mutex<Vec<u8>>>);

    impl Write for Capture {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// What tracing-subscriber writes for `line`, set up as `init` sets it up.
    fn via_subscriber(format: LogFormat, line: &RequestLine<'_>) -> String {
        let cap = Capture::default();
        let out = cap.0.clone();
        let builder = tracing_subscriber::fmt()
            .with_writer(move || cap.clone())
            .with_target(false);
        let dispatch = match format {
            LogFormat::Text => tracing::Dispatch::new(builder.with_ansi(false).finish()),
            LogFormat::Json => tracing::Dispatch::new(builder.json().flatten_event(true).finish()),
        };
        tracing::dispatcher::with_default(&dispatch, || request_via_tracing(line));
        let text = String::from_utf8(out.lock().unwrap().clone()).unwrap();
        text
    }

    fn direct(format: LogFormat, line: &RequestLine<'_>) -> String {
        let mut out = Vec::new();
        format_request(&mut out, format, SystemTime::now(), line);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn request_line_is_what_tracing_subscriber_would_write() {
        let plain = RequestLine {
            path: "/v1/chat/completions",
            model: "bench",
            deployment: "bench-1",
            latency: Duration::from_micros(1_234),
            ttfb: Some(Duration::from_micros(1_005)),
            ..req_line()
        };
        let hostile = RequestLine {
            path: "/v1/messages",
            model: "x\u{1b}[31m\"y\\\n2026-01-01T00:00:00Z  INFO forged é",
            deployment: "",
            fallback: Some("fb\r\"q\""),
            status: 502,
            attempts: 3,
            stream: true,
            complete: false,
            client_gone: true,
            latency: Duration::from_secs(3_600),
            ttfb: None,
        };
        for line in [plain, hostile] {
            let (ours, theirs) = (
                direct(LogFormat::Text, &line),
                via_subscriber(LogFormat::Text, &line),
            );
            // The same bytes after the timestamp (27 bytes), one line each.
            assert_eq!(ours[27..], theirs[27..], "{ours}\n{theirs}");
            assert_eq!(ours.lines().count(), 1, "{ours}");
            let (ours, theirs) = (
                direct(LogFormat::Json, &line),
                via_subscriber(LogFormat::Json, &line),
            );
            let strip = |s: &str| {
                let mut v: serde_json::Value = serde_json::from_str(s).unwrap();
                let ts = v["timestamp"].as_str().unwrap().to_owned();
                assert_eq!(ts.len(), 27, "{ts}");
                v["timestamp"] = "".into();
                (v.to_string(), s.ends_with('\n'))
            };
            // Same keys in the same order, same values, a newline at the end.
            assert_eq!(strip(&ours), strip(&theirs), "{ours}\n{theirs}");
        }
    }

    #[test]
    fn timestamps_are_rfc3339_utc_with_microseconds() {
        let at = |secs: u64, micros: u64| {
            let mut out = Vec::new();
            push_timestamp(
                &mut out,
                SystemTime::UNIX_EPOCH + Duration::from_micros(secs * 1_000_000 + micros),
            );
            String::from_utf8(out).unwrap()
        };
        assert_eq!(at(0, 0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(at(951_782_400, 7), "2000-02-29T00:00:00.000007Z");
        assert_eq!(at(1_798_761_599, 999_999), "2026-12-31T23:59:59.999999Z");
        assert_eq!(at(4_107_542_400, 0), "2100-03-01T00:00:00.000000Z");
        // The cached second: the same second again, the next one, and back.
        assert_eq!(at(4_107_542_400, 42), "2100-03-01T00:00:00.000042Z");
        assert_eq!(at(4_107_542_401, 0), "2100-03-01T00:00:01.000000Z");
        assert_eq!(at(0, 1), "1970-01-01T00:00:00.000001Z");
        // Today's date agrees with tracing-subscriber's own timer, to the minute. The two
        // lines are written a moment apart: a pair that straddles a minute is written again.
        let minute = || {
            SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs() / 60)
        };
        for attempt in 0.. {
            let before = minute();
            let ours = direct(
                LogFormat::Text,
                &RequestLine {
                    ttfb: None,
                    ..req_line()
                },
            );
            let theirs = via_subscriber(LogFormat::Text, &req_line());
            if minute() != before && attempt < 3 {
                continue;
            }
            assert_eq!(ours[..16], theirs[..16], "{ours}\n{theirs}");
            break;
        }
    }

    fn req_line() -> RequestLine<'static> {
        RequestLine {
            path: "/v1/embeddings",
            model: "m",
            deployment: "d",
            fallback: None,
            status: 200,
            attempts: 1,
            stream: false,
            complete: true,
            client_gone: false,
            latency: Duration::ZERO,
            ttfb: None,
        }
    }

    #[test]
    fn millis_round_half_up() {
        let ms = |d: Duration, n: u32| Millis(d, n).to_string();
        assert_eq!(ms(Duration::ZERO, 2), "0.00");
        assert_eq!(ms(Duration::from_nanos(1_234_567), 2), "1.23");
        assert_eq!(ms(Duration::from_nanos(1_235_000), 2), "1.24");
        assert_eq!(ms(Duration::from_nanos(999_995_000), 2), "1000.00");
        assert_eq!(ms(Duration::from_nanos(1_234_567), 3), "1.235");
        assert_eq!(ms(Duration::from_secs(7), 0), "7000");
        // Saturates at u64::MAX nanoseconds (584 years).
        assert_eq!(ms(Duration::MAX, 3), "18446744073709.551");
        assert_eq!(ms(Duration::from_nanos(1_234_567), 6), "1.234567");
    }

    #[test]
    fn clean_escapes_control_characters() {
        let s = Clean("m\n2026 INFO request path=/x\r\u{1b}[31mred\u{7}\u{85}é").to_string();
        assert_eq!(
            s,
            "m\\n2026 INFO request path=/x\\r\\u{1b}[31mred\\u{7}\\u{85}é"
        );
        assert!(!s.chars().any(char::is_control));
    }

    #[test]
    fn lines_reach_the_output_in_order_and_all_on_stop() {
        let shared = Arc::new(Shared::default());
        let out = Arc::new(Mutex::new(Vec::new()));
        let t = {
            let (shared, out) = (shared.clone(), out.clone());
            std::thread::spawn(move || shared.run(&mut Capture(out)))
        };
        let mut w = BatchWriter(shared.clone());
        for i in 0..1000 {
            w.write_all(format!("line {i}\n").as_bytes()).unwrap();
        }
        // The first lines arrive within the batch window, without a stop.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while out.lock().unwrap().is_empty() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(!out.lock().unwrap().is_empty());
        w.write_all(b"last\n").unwrap();
        shared.lock().stop = true;
        shared.wake.notify_one();
        t.join().unwrap();
        let text = String::from_utf8(out.lock().unwrap().clone()).unwrap();
        let expected: String =
            (0..1000).map(|i| format!("line {i}\n")).collect::<String>() + "last\n";
        assert_eq!(text, expected);
    }
}
