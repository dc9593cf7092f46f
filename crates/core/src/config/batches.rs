//! `[batches]`: OpenAI's Files and Batches APIs, run by the gateway itself at batch
//! priority (see the gateway's `batches` module for why and how).

use serde::Deserialize;
use std::path::PathBuf;

/// Largest `max_file_bytes` accepted: a batch input is read line by line, but its
/// validation still reads it all once, and a state directory is a shared filesystem.
pub const MAX_FILE_BYTES_CAP: u64 = 10 << 30;
/// Largest `max_lines` accepted (OpenAI's own cap is 50,000).
pub const MAX_LINES_CAP: usize = 1_000_000;
/// Largest `concurrency` accepted.
pub const MAX_CONCURRENCY: usize = 1024;

/// `[batches]`: uploaded files and the batches the gateway runs from them.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BatchesConfig {
    /// Where files and batches are kept [default: `batches/` in the state directory].
    pub dir: Option<PathBuf>,
    /// Largest file `POST /v1/files` accepts, in bytes (413 beyond).
    pub max_file_bytes: u64,
    /// Most lines (requests) in one batch's input file.
    pub max_lines: usize,
    /// Lines of one batch in flight at once (they then queue at batch priority).
    pub concurrency: usize,
    /// Whether a batch line may go to a cloud deployment. Off by default: a sweep of a
    /// million prompts must never become a cloud bill by accident.
    pub allow_cloud: bool,
}

impl Default for BatchesConfig {
    fn default() -> Self {
        Self {
            dir: None,
            max_file_bytes: 100 << 20,
            max_lines: 50_000,
            concurrency: 8,
            allow_cloud: false,
        }
    }
}

impl BatchesConfig {
    /// What is wrong with the values, in a sentence.
    pub fn check(&self) -> Result<(), String> {
        if self.max_file_bytes == 0 || self.max_file_bytes > MAX_FILE_BYTES_CAP {
            return Err(format!(
                "[batches] max_file_bytes must be between 1 and {MAX_FILE_BYTES_CAP} (10 GiB), got {}",
                self.max_file_bytes
            ));
        }
        if self.max_lines == 0 || self.max_lines > MAX_LINES_CAP {
            return Err(format!(
                "[batches] max_lines must be between 1 and {MAX_LINES_CAP}, got {}",
                self.max_lines
            ));
        }
        if self.concurrency == 0 || self.concurrency > MAX_CONCURRENCY {
            return Err(format!(
                "[batches] concurrency must be between 1 and {MAX_CONCURRENCY}, got {}",
                self.concurrency
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    #[test]
    fn batches_defaults_and_bad_values() {
        let c = Config::load_str("", "x.toml").unwrap().config.batches;
        assert_eq!(
            (c.concurrency, c.max_lines, c.allow_cloud),
            (8, 50_000, false)
        );
        assert_eq!(c.max_file_bytes, 100 << 20);
        let c = Config::load_str("[batches]\nconcurrency = 2\nallow_cloud = true\n", "x.toml")
            .unwrap()
            .config
            .batches;
        assert_eq!((c.concurrency, c.allow_cloud), (2, true));
        let e = Config::load_str("[batches]\nconcurrency = 0\n", "x.toml").unwrap_err();
        assert!(
            e.to_string()
                .contains("[batches] concurrency must be between 1"),
            "{e}"
        );
        let e = Config::load_str("[batches]\nmax_file_bytes = 0\n", "x.toml").unwrap_err();
        assert!(e.to_string().contains("max_file_bytes"), "{e}");
        let e = Config::load_str("[batches]\nparallel = 3\n", "x.toml").unwrap_err();
        assert!(e.to_string().starts_with("x.toml:2:"), "{e}");
    }
}
