//! Log set-up: human-readable text by default, one JSON object per line on request.
//!
//! Lines go through a non-blocking writer (a channel to a writer thread), so request
//! handlers never wait on a contended stderr lock.

use crate::config::LogFormat;
use tracing_appender::non_blocking::WorkerGuard;
use tracing_subscriber::EnvFilter;

/// Installs the global subscriber; keep the guard alive until exit so lines are flushed.
pub fn init(format: LogFormat) -> WorkerGuard {
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(false)
        // Buffered: the writer thread drains every queued line and then flushes, so under
        // load many lines go out in one write(2) instead of one each; when idle, a line is
        // still written at once.
        .finish(std::io::BufWriter::with_capacity(64 * 1024, std::io::stderr()));
    let filter = EnvFilter::try_from_env("LLMGW_LOG")
        .unwrap_or_else(|_| EnvFilter::new("info,hyper=warn,reqwest=warn,h2=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_target(false);
    let result = match format {
        LogFormat::Text => builder.with_ansi(false).try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    // A second init (tests running serve in-process) keeps the first subscriber.
    let _ = result;
    guard
}
