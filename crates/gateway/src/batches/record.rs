//! A batch as it is kept (`batches/<id>.json`) and shown (OpenAI's batch object), and
//! the check of its input file: every line is read once when the batch is created, so a
//! bad line is refused at once with its line number rather than failing hours later.

use super::bad_request;
use llmgw_core::error::ApiError;
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::io::BufRead as _;
use std::path::Path;

/// Longest `custom_id` accepted (OpenAI's are short labels).
pub const MAX_CUSTOM_ID: usize = 512;
/// Most `metadata` pairs, and their longest key and value (OpenAI's limits).
const MAX_METADATA: usize = 16;
const MAX_METADATA_KEY: usize = 64;
const MAX_METADATA_VALUE: usize = 512;

/// The endpoints a batch may run, as OpenAI names them in `endpoint` and each line's `url`.
pub const ENDPOINTS: [&str; 4] = [
    "/v1/chat/completions",
    "/v1/embeddings",
    "/v1/responses",
    "/v1/messages",
];

/// Why a batch is not running although it has lines left. OpenAI has no such state, so
/// the batch's `status` stays `in_progress` (every client keeps polling, as it should)
/// and this says why nothing moves.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Paused {
    /// `budget_exceeded`.
    pub reason: String,
    pub message: String,
    pub since: u64,
}

/// A batch, with llmgw's own bookkeeping.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BatchRecord {
    pub id: String,
    /// The virtual key's id that made it (billed for every line); `""` for the master key.
    pub owner: String,
    pub endpoint: String,
    pub input_file_id: String,
    pub completion_window: String,
    /// validating, in_progress, finalizing, completed, failed, expired, cancelling, cancelled.
    pub status: String,
    /// Reserved at creation; shown once the batch is over (OpenAI's `output_file_id`).
    pub output_file: String,
    pub error_file: String,
    pub created_at: u64,
    pub in_progress_at: Option<u64>,
    pub expires_at: u64,
    pub finalizing_at: Option<u64>,
    pub completed_at: Option<u64>,
    pub failed_at: Option<u64>,
    pub expired_at: Option<u64>,
    pub cancelling_at: Option<u64>,
    pub cancelled_at: Option<u64>,
    pub total: u64,
    pub completed: u64,
    pub failed: u64,
    pub metadata: Option<serde_json::Map<String, serde_json::Value>>,
    /// Why the batch failed, in OpenAI's `errors` shape.
    pub errors: Option<serde_json::Value>,
    pub paused: Option<Paused>,
}

impl BatchRecord {
    /// Over: nothing will run any more.
    pub fn is_over(&self) -> bool {
        matches!(
            self.status.as_str(),
            "completed" | "failed" | "expired" | "cancelled"
        )
    }

    /// OpenAI's batch object (with llmgw's `paused` when the batch waits for a budget).
    pub fn json(&self) -> serde_json::Value {
        let over = self.is_over() && self.status != "failed";
        let output = (over && self.completed > 0).then_some(&self.output_file);
        let error = (over && self.failed > 0).then_some(&self.error_file);
        serde_json::json!({
            "id": self.id, "object": "batch", "endpoint": self.endpoint,
            "errors": self.errors, "input_file_id": self.input_file_id,
            "completion_window": self.completion_window, "status": self.status,
            "output_file_id": output, "error_file_id": error,
            "created_at": self.created_at, "in_progress_at": self.in_progress_at,
            "expires_at": self.expires_at, "finalizing_at": self.finalizing_at,
            "completed_at": self.completed_at, "failed_at": self.failed_at,
            "expired_at": self.expired_at, "cancelling_at": self.cancelling_at,
            "cancelled_at": self.cancelled_at,
            "request_counts": {"total": self.total, "completed": self.completed, "failed": self.failed},
            "metadata": self.metadata,
            "paused": self.paused,
        })
    }
}

/// `POST /v1/batches`'s body.
#[derive(Debug, Deserialize)]
pub struct CreateBatch {
    pub input_file_id: String,
    pub endpoint: String,
    pub completion_window: String,
    #[serde(default)]
    pub metadata: Option<serde_json::Map<String, serde_json::Value>>,
}

impl CreateBatch {
    /// Parses and checks the body.
    pub fn parse(body: &[u8]) -> Result<CreateBatch, ApiError> {
        let c: CreateBatch = serde_json::from_slice(body).map_err(|e| {
            bad_request(format!(
                "the body must be JSON with input_file_id, endpoint and completion_window: {e}"
            ))
        })?;
        if !ENDPOINTS.contains(&c.endpoint.as_str()) {
            return Err(bad_request(format!(
                "endpoint {:?} cannot be batched here; use one of {}",
                c.endpoint.chars().take(80).collect::<String>(),
                ENDPOINTS.join(", ")
            ))
            .with_param("endpoint"));
        }
        if c.completion_window != "24h" {
            return Err(bad_request(format!(
                "completion_window must be \"24h\", got {:?}",
                c.completion_window.chars().take(20).collect::<String>()
            ))
            .with_param("completion_window"));
        }
        if let Some(m) = &c.metadata {
            let fits = m.len() <= MAX_METADATA
                && m.iter().all(|(k, v)| {
                    k.len() <= MAX_METADATA_KEY
                        && v.as_str().is_some_and(|s| s.len() <= MAX_METADATA_VALUE)
                });
            if !fits {
                return Err(bad_request(format!(
                    "metadata holds at most {MAX_METADATA} pairs of strings (keys up to {MAX_METADATA_KEY} characters, values up to {MAX_METADATA_VALUE})"
                ))
                .with_param("metadata"));
            }
        }
        Ok(c)
    }
}

/// One line of an input file, as the executor reads it.
#[derive(Debug, Deserialize)]
pub struct Line<'a> {
    pub custom_id: String,
    #[serde(default)]
    pub method: String,
    #[serde(default)]
    pub url: String,
    #[serde(borrow)]
    pub body: Option<&'a serde_json::value::RawValue>,
}

/// What a line must look like, or why it does not (without the line number).
pub fn check_line<'a>(text: &'a [u8], endpoint: &str) -> Result<Line<'a>, String> {
    let line: Line = serde_json::from_slice(text)
        .map_err(|e| format!("not a JSON object with custom_id, method, url and body ({e})"))?;
    if line.custom_id.is_empty() || line.custom_id.len() > MAX_CUSTOM_ID {
        return Err(format!("custom_id must be 1 to {MAX_CUSTOM_ID} characters"));
    }
    if line.method != "POST" {
        return Err(format!("method must be \"POST\", got {:?}", line.method));
    }
    if line.url != endpoint {
        return Err(format!(
            "url {:?} differs from the batch's endpoint {endpoint:?} (every line of a batch goes to its endpoint)",
            line.url.chars().take(80).collect::<String>()
        ));
    }
    let Some(body) = line.body else {
        return Err("body is missing".into());
    };
    #[derive(Deserialize)]
    struct Head {
        model: Option<serde_json::Value>,
        stream: Option<serde_json::Value>,
    }
    let head: Head = serde_json::from_str(body.get())
        .map_err(|_| "body must be a JSON object (the request)".to_string())?;
    if !head
        .model
        .as_ref()
        .is_some_and(serde_json::Value::is_string)
    {
        return Err("body.model must name a model group".into());
    }
    if head
        .stream
        .as_ref()
        .is_some_and(|s| s == &serde_json::Value::Bool(true))
    {
        return Err("body.stream must not be true: a batch line's answer is kept whole".into());
    }
    Ok(line)
}

/// Reads the whole input file once: every line well formed, no custom_id twice, at most
/// `max_lines` lines each at most `max_line` bytes. The number of lines, or the refusal
/// naming the first bad line. Blocking (call it off the async workers).
pub fn validate(
    path: &Path,
    endpoint: &str,
    max_lines: usize,
    max_line: usize,
) -> Result<u64, ApiError> {
    let f = std::fs::File::open(path).map_err(|e| super::io_error("read the input file", &e))?;
    let mut r = std::io::BufReader::with_capacity(256 << 10, f);
    let mut seen: HashSet<String> = HashSet::new();
    let mut buf = Vec::new();
    let mut n: u64 = 0;
    let mut line_no: u64 = 0;
    let bad = |line_no: u64, why: String| {
        bad_request(format!("input file line {line_no}: {why}"))
            .with_param("input_file_id")
            .with_code("invalid_input_file")
    };
    loop {
        buf.clear();
        let read = read_line_capped(&mut r, &mut buf, max_line)
            .map_err(|e| super::io_error("read the input file", &e))?;
        let Some(complete) = read else { break };
        line_no += 1;
        if !complete {
            return Err(bad(
                line_no,
                format!("longer than {max_line} bytes ([server] max_body_bytes)"),
            ));
        }
        if buf.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let line = check_line(&buf, endpoint).map_err(|why| bad(line_no, why))?;
        n += 1;
        if n > max_lines as u64 {
            return Err(bad(
                line_no,
                format!(
                    "the file has more than {max_lines} requests ([batches] max_lines); split it"
                ),
            ));
        }
        if !seen.insert(line.custom_id.clone()) {
            return Err(bad(
                line_no,
                format!(
                    "custom_id {:?} appears twice; each line needs its own",
                    line.custom_id
                ),
            ));
        }
    }
    if n == 0 {
        return Err(bad_request("the input file holds no requests").with_param("input_file_id"));
    }
    Ok(n)
}

/// Reads one line (without its `\n`) into `buf`, keeping at most `max` bytes: `None` at
/// the end of the file, `Some(false)` when the line was longer (the rest is skipped).
pub fn read_line_capped(
    r: &mut impl std::io::BufRead,
    buf: &mut Vec<u8>,
    max: usize,
) -> std::io::Result<Option<bool>> {
    let mut any = false;
    let mut fits = true;
    loop {
        let chunk = r.fill_buf()?;
        if chunk.is_empty() {
            return Ok(any.then_some(fits));
        }
        any = true;
        let (take, end) = match memchr::memchr(b'\n', chunk) {
            Some(i) => (i, true),
            None => (chunk.len(), false),
        };
        if fits {
            if buf.len() + take > max {
                fits = false;
                buf.clear();
            } else {
                buf.extend_from_slice(&chunk[..take]);
            }
        }
        r.consume(take + usize::from(end));
        if end {
            return Ok(Some(fits));
        }
    }
}

/// Reads back a results file (output or error): the custom_ids it records, after cutting
/// off a last line a crash left half-written. Blocking.
pub fn recorded(path: &Path, into: &mut HashSet<String>) -> std::io::Result<u64> {
    let f = match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    let mut r = std::io::BufReader::new(&f);
    let mut whole: u64 = 0;
    let mut n = 0;
    let mut buf = Vec::new();
    loop {
        buf.clear();
        let got = r.read_until(b'\n', &mut buf)?;
        if got == 0 || buf.last() != Some(&b'\n') {
            break;
        }
        #[derive(Deserialize)]
        struct Id {
            custom_id: String,
        }
        match serde_json::from_slice::<Id>(&buf) {
            Ok(id) => {
                into.insert(id.custom_id);
                n += 1;
                whole += got as u64;
            }
            Err(_) => break,
        }
    }
    drop(r);
    if f.metadata()?.len() != whole {
        f.set_len(whole)?;
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_read_whole_or_flagged_too_long() {
        let text = b"abc\n0123456789\n\nxy";
        let mut r = std::io::BufReader::with_capacity(4, &text[..]);
        let mut got = Vec::new();
        let mut buf = Vec::new();
        while let Some(fits) = read_line_capped(&mut r, &mut buf, 5).unwrap() {
            got.push((String::from_utf8(buf.clone()).unwrap(), fits));
            buf.clear();
        }
        let want = [("abc", true), ("", false), ("", true), ("xy", true)];
        let want: Vec<(String, bool)> = want.iter().map(|(s, f)| (s.to_string(), *f)).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn a_half_written_last_result_is_cut_off() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("out.jsonl");
        std::fs::write(
            &p,
            "{\"custom_id\":\"a\"}\n{\"custom_id\":\"b\"}\n{\"custom_id\":\"c",
        )
        .unwrap();
        let mut ids = HashSet::new();
        assert_eq!(recorded(&p, &mut ids).unwrap(), 2);
        assert!(ids.contains("a") && ids.contains("b") && !ids.contains("c"));
        assert_eq!(
            std::fs::read_to_string(&p).unwrap(),
            "{\"custom_id\":\"a\"}\n{\"custom_id\":\"b\"}\n"
        );
        assert_eq!(recorded(&dir.path().join("none"), &mut ids).unwrap(), 0);
    }

    #[test]
    fn each_bad_line_says_what_is_wrong() {
        let ep = "/v1/chat/completions";
        let ok = r#"{"custom_id":"a","method":"POST","url":"/v1/chat/completions","body":{"model":"m"}}"#;
        assert_eq!(check_line(ok.as_bytes(), ep).unwrap().custom_id, "a");
        for (line, says) in [
            ("not json", "not a JSON object"),
            (
                r#"{"custom_id":"","method":"POST","url":"/v1/chat/completions","body":{"model":"m"}}"#,
                "custom_id must be",
            ),
            (
                r#"{"custom_id":"a","method":"GET","url":"/v1/chat/completions","body":{"model":"m"}}"#,
                "method must be",
            ),
            (
                r#"{"custom_id":"a","method":"POST","url":"/v1/embeddings","body":{"model":"m"}}"#,
                "differs from",
            ),
            (
                r#"{"custom_id":"a","method":"POST","url":"/v1/chat/completions"}"#,
                "body is missing",
            ),
            (
                r#"{"custom_id":"a","method":"POST","url":"/v1/chat/completions","body":{}}"#,
                "body.model",
            ),
            (
                r#"{"custom_id":"a","method":"POST","url":"/v1/chat/completions","body":{"model":"m","stream":true}}"#,
                "stream",
            ),
        ] {
            let e = check_line(line.as_bytes(), ep).err().unwrap();
            assert!(e.contains(says), "{line}: {e}");
        }
    }
}
