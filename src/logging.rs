//! Log set-up: human-readable text by default, one JSON object per line on request.
//!
//! Request handlers never write to stderr themselves: a formatted line is appended to a
//! shared in-memory buffer (a short uncontended lock and a copy), and a writer thread
//! writes everything that piled up in one `write(2)` at most every few milliseconds. The
//! thread sleeps while nothing is logged. Under load this costs a fraction of a wake-up
//! and a syscall per request instead of one of each per line (see BENCHMARKS.md).

use crate::config::LogFormat;
use std::io::Write;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;
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
    // A second init (tests running serve in-process) keeps the first subscriber.
    let _ = result;
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

#[cfg(test)]
mod tests {
    use super::*;

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
        struct Sink(Arc<Mutex<Vec<u8>>>);
        impl Write for Sink {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let t = {
            let (shared, out) = (shared.clone(), out.clone());
            std::thread::spawn(move || shared.run(&mut Sink(out)))
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
