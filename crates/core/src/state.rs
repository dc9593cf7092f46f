//! The per-gateway state directory (`~/.llmgw/<name>/` by default, on the shared
//! filesystem): the endpoint record `serve` writes when ready, and paths of the files
//! `start`, `status`, `logs` and `stop` share with it.

use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};

/// File names inside a state directory.
pub const ENDPOINT_FILE: &str = "endpoint.json";
pub const KEY_FILE: &str = "key";

/// Where a running gateway listens; written atomically by `serve` once ready.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EndpointRecord {
    /// The node's host name (what other nodes and the ssh tunnel use).
    pub host: String,
    /// The address actually bound.
    pub bind: String,
    pub port: u16,
    pub pid: u32,
    pub job_id: Option<String>,
    /// RFC 3339 UTC.
    pub started_at: String,
    /// Which job of the gateway's chain this is (1 for the job `start` submitted; each
    /// renewal or `restart` adds one). Records written before chains existed read as 1.
    #[serde(default = "first_generation")]
    pub generation: u64,
    /// The job this one took over from, if any.
    #[serde(default)]
    pub predecessor_job_id: Option<String>,
    /// When it became ready, in Unix milliseconds (handover timing).
    #[serde(default)]
    pub ready_unix_ms: u64,
}

fn first_generation() -> u64 {
    1
}

/// `$HOME/.llmgw/<name>`, or `state_dir` when given.
pub fn state_dir(name: &str, state_dir: Option<&Path>) -> PathBuf {
    match state_dir {
        Some(d) => d.to_path_buf(),
        None => {
            let home = std::env::var_os("HOME")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("."));
            home.join(".llmgw").join(name)
        }
    }
}

/// Creates the directory and any missing parents 0700 (it holds the key and logs). An
/// existing directory keeps its mode: it may be the user's, shared on purpose, so every
/// private file in it is written 0600 on its own.
pub fn ensure_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

/// A fresh random secret, `<prefix>` and 64 hex digits (32 bytes from the kernel).
pub fn random_key(prefix: &str) -> std::io::Result<String> {
    use std::io::Read as _;
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    Ok(format!("{prefix}{hex}"))
}

/// Writes `contents` to `path` atomically (temp file + rename) with the given mode.
/// Each call has its own temp file (process id and a per-process sequence number): two
/// tasks of one process writing the same record at once (a batch's runner and its cancel)
/// must not remove or rename each other's half-written file.
pub fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    use std::sync::atomic::{AtomicU64, Ordering};
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let seq = SEQ.fetch_add(1, Ordering::Relaxed);
    let tmp = path.with_extension(format!("tmp.{}.{seq}", std::process::id()));
    // A fresh file (O_EXCL: never through a link someone left in a shared directory).
    let _ = std::fs::remove_file(&tmp);
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .and_then(|mut f| {
            f.write_all(contents)?;
            f.sync_all()
        })
        .and_then(|()| std::fs::rename(&tmp, path));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

impl EndpointRecord {
    /// Where other machines reach it: the node's host name, or the bound address when
    /// that is loopback (then only its own node can reach it).
    pub fn connect_host(&self) -> String {
        let loopback = self
            .bind
            .parse::<std::net::IpAddr>()
            .map(|ip| ip.is_loopback())
            .unwrap_or(false);
        if loopback {
            self.bind.clone()
        } else {
            self.host.clone()
        }
    }

    /// `http://HOST:PORT`.
    pub fn base_url(&self) -> String {
        format!("http://{}:{}", self.connect_host(), self.port)
    }

    pub fn write(&self, dir: &Path) -> std::io::Result<()> {
        let json = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
        write_atomic(&dir.join(ENDPOINT_FILE), &json, 0o600)
    }

    pub fn read(dir: &Path) -> std::io::Result<Option<Self>> {
        match std::fs::read(dir.join(ENDPOINT_FILE)) {
            Ok(b) => serde_json::from_slice(&b)
                .map(Some)
                .map_err(std::io::Error::other),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub fn now_unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Current time as RFC 3339 UTC (`2026-11-23T10:58:18Z`).
pub fn now_rfc3339() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    rfc3339(secs)
}

/// Unix seconds as RFC 3339 UTC.
pub fn rfc3339(secs: u64) -> String {
    let days = secs / 86400;
    let rem = secs % 86400;
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    // The CI failure of tests/batches.rs (a 500 on a batch's cancel): one temp name per
    // process, so a second writer of the same record removed or renamed the first one's
    // file. Writers of one path from many threads at once must all succeed and leave one
    // whole record.
    #[test]
    fn concurrent_atomic_writes_of_one_path_all_succeed() {
        let dir = tempfile_dir("write-atomic");
        let path = dir.join("batch_x.json");
        let barrier = std::sync::Barrier::new(8);
        std::thread::scope(|s| {
            for t in 0..8u8 {
                let (path, barrier) = (&path, &barrier);
                s.spawn(move || {
                    let body = vec![b'a' + t; 64 * 1024];
                    barrier.wait();
                    for _ in 0..50 {
                        super::write_atomic(path, &body, 0o600).expect("every write succeeds");
                    }
                });
            }
        });
        let text = std::fs::read(&path).unwrap();
        assert_eq!(text.len(), 64 * 1024);
        assert!(
            text.iter().all(|&b| b == text[0]),
            "one writer's whole record"
        );
        let left: Vec<_> = std::fs::read_dir(&dir).unwrap().flatten().collect();
        assert_eq!(left.len(), 1, "no temp file left: {left:?}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn tempfile_dir(name: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("llmgw-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn rfc3339_known_dates() {
        assert_eq!(super::rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(super::rfc3339(1_795_000_000), "2026-11-18T11:06:40Z");
    }
}
