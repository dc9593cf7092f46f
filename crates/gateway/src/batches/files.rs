//! Uploaded files on disk: `files/<id>` holds the bytes, `files/<id>.json` what OpenAI's
//! file object says about them plus the owner. An upload is streamed to `<id>.part`
//! (0600, never whole in memory), renamed when complete, and only then gets its metadata:
//! a file without metadata does not exist for the API, so a crash mid-upload leaves
//! nothing visible (`.part` files an hour old are removed at start).

use super::{bad_request, io_error, not_found_file, now_s, valid_id};
use axum::body::Body;
use axum::http::{header, HeaderMap, StatusCode};
use futures_util::StreamExt as _;
use llmgw_core::error::ApiError;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use tokio::io::AsyncWriteExt as _;

/// Most files one owner may keep (their bytes are capped each by `max_file_bytes`).
pub const MAX_FILES_PER_OWNER: usize = 10_000;
/// Longest file name kept.
const MAX_FILENAME: usize = 256;
/// Most directory entries a listing looks at (a directory someone filled by hand).
const MAX_SCAN: usize = 200_000;

/// What the API says about a file, and whose it is.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FileMeta {
    pub id: String,
    /// The virtual key's id that made it; `""` for the master key.
    pub owner: String,
    pub bytes: u64,
    pub created_at: u64,
    pub filename: String,
    /// `batch` (uploaded) or `batch_output` (a batch's output or error file).
    pub purpose: String,
}

impl FileMeta {
    /// OpenAI's file object.
    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({"id": self.id, "object": "file", "bytes": self.bytes,
            "created_at": self.created_at, "filename": self.filename, "purpose": self.purpose,
            "status": "processed", "status_details": null, "expires_at": null})
    }
}

/// The files directory of the batches directory `dir`.
pub fn dir_of(dir: &Path) -> PathBuf {
    dir.join("files")
}

/// Where file `id`'s bytes are.
pub fn content_path(dir: &Path, id: &str) -> PathBuf {
    dir_of(dir).join(id)
}

fn meta_path(dir: &Path, id: &str) -> PathBuf {
    dir_of(dir).join(format!("{id}.json"))
}

/// File `id`'s metadata when it exists and `owner` may see it (`None` = the master key,
/// who sees all); anyone else gets the same 404 as for a file that does not exist.
pub fn find(dir: &Path, id: &str, owner: Option<&str>) -> Result<FileMeta, ApiError> {
    if !valid_id(id) {
        return Err(not_found_file(id));
    }
    let text = match std::fs::read(meta_path(dir, id)) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(not_found_file(id)),
        Err(e) => return Err(io_error("read a file's record", &e)),
    };
    let meta: FileMeta = serde_json::from_slice(&text)
        .map_err(|e| io_error("read a file's record", &std::io::Error::other(e)))?;
    match owner {
        Some(o) if o != meta.owner => Err(not_found_file(id)),
        _ => Ok(meta),
    }
}

/// Writes `meta` (the file's bytes must already be in place).
pub fn write_meta(dir: &Path, meta: &FileMeta) -> std::io::Result<()> {
    let text = serde_json::to_vec(meta).map_err(std::io::Error::other)?;
    llmgw_core::state::write_atomic(&meta_path(dir, &meta.id), &text, 0o600)
}

/// Every file `owner` may see (all for `None`), newest first.
pub fn list(dir: &Path, owner: Option<&str>) -> Vec<FileMeta> {
    let Ok(entries) = std::fs::read_dir(dir_of(dir)) else {
        return Vec::new();
    };
    let mut out: Vec<FileMeta> = entries
        .take(MAX_SCAN)
        .flatten()
        .filter_map(|e| {
            let name = e.file_name();
            let id = name.to_str()?.strip_suffix(".json")?;
            find(dir, id, owner).ok()
        })
        .collect();
    out.sort_by(|a, b| b.created_at.cmp(&a.created_at).then(b.id.cmp(&a.id)));
    out
}

/// Deletes file `id` (its record first: from then on it does not exist).
pub fn delete(dir: &Path, id: &str, owner: Option<&str>) -> Result<(), ApiError> {
    find(dir, id, owner)?;
    std::fs::remove_file(meta_path(dir, id)).map_err(|e| io_error("delete a file", &e))?;
    let _ = std::fs::remove_file(content_path(dir, id));
    Ok(())
}

/// Removes uploads a crash left half-written: those untouched for an hour (a renewal's
/// other generation may be writing a fresh one into the same directory right now).
pub fn sweep_parts(dir: &Path) {
    let stale = |e: &std::fs::DirEntry| {
        e.metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > std::time::Duration::from_secs(3600))
    };
    if let Ok(entries) = std::fs::read_dir(dir_of(dir)) {
        for e in entries.take(MAX_SCAN).flatten() {
            if e.file_name().to_str().is_some_and(|n| n.ends_with(".part")) && stale(&e) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}

/// Removes a half-written upload unless disarmed.
struct PartGuard(Option<PathBuf>);

impl Drop for PartGuard {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// `POST /v1/files`: a multipart form with `purpose` (`batch`) and `file`, streamed to
/// disk and capped at `max` bytes (413 beyond, nothing kept).
pub async fn upload(
    dir: &Path,
    owner: &str,
    headers: &HeaderMap,
    body: Body,
    max: u64,
) -> Result<FileMeta, ApiError> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let usage = "POST /v1/files takes multipart/form-data with the fields purpose=batch and file (a JSONL file of requests)";
    let boundary = multer::parse_boundary(ct).map_err(|_| bad_request(usage))?;
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request_error",
            format!("the file is larger than this gateway's limit of {max} bytes ([batches] max_file_bytes); split it into several batches"),
        )
        .with_code("file_too_large")
    };
    if list(dir, Some(owner)).len() >= MAX_FILES_PER_OWNER {
        return Err(bad_request(format!(
            "you already keep {MAX_FILES_PER_OWNER} files on this gateway; delete some (DELETE /v1/files/{{id}}) first"
        )));
    }
    let limits = multer::SizeLimit::new()
        .whole_stream(max.saturating_add(1 << 20))
        .per_field(max.saturating_add(1))
        .for_field("purpose", 64);
    let stream = body.into_data_stream();
    let mut form = multer::Multipart::with_constraints(
        stream,
        boundary,
        multer::Constraints::new().size_limit(limits),
    );
    let id = super::new_id("file-");
    let files = dir_of(dir);
    llmgw_core::state::ensure_dir(&files)
        .map_err(|e| io_error("create the files directory", &e))?;
    let part = files.join(format!("{id}.part"));
    let mut guard = PartGuard(None);
    let (mut purpose, mut filename, mut bytes) = (None::<String>, None::<String>, None::<u64>);
    loop {
        let field = match form.next_field().await {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(e) => return Err(form_error(e, &too_large)),
        };
        match field.name() {
            Some("purpose") => {
                let text = field.text().await.map_err(|e| form_error(e, &too_large))?;
                purpose = Some(text.trim().to_string());
            }
            Some("file") if bytes.is_none() => {
                filename = Some(
                    field
                        .file_name()
                        .unwrap_or("upload.jsonl")
                        .chars()
                        .filter(|c| !c.is_control())
                        .take(MAX_FILENAME)
                        .collect(),
                );
                let mut f = open_private(&part)
                    .await
                    .map_err(|e| io_error("store the file", &e))?;
                guard.0 = Some(part.clone());
                let mut n: u64 = 0;
                let mut field = field;
                loop {
                    match field.chunk().await {
                        Ok(Some(chunk)) => {
                            n = n.saturating_add(chunk.len() as u64);
                            if n > max {
                                return Err(too_large());
                            }
                            f.write_all(&chunk)
                                .await
                                .map_err(|e| io_error("store the file", &e))?;
                        }
                        Ok(None) => break,
                        Err(e) => return Err(form_error(e, &too_large)),
                    }
                }
                f.flush()
                    .await
                    .map_err(|e| io_error("store the file", &e))?;
                f.sync_all()
                    .await
                    .map_err(|e| io_error("store the file", &e))?;
                bytes = Some(n);
            }
            // Other fields (newer SDKs send `expires_after`) are read past.
            _ => {
                let mut field = field;
                while let Some(_chunk) =
                    field.chunk().await.map_err(|e| form_error(e, &too_large))?
                {}
            }
        }
    }
    match purpose.as_deref() {
        Some("batch") => {}
        Some(other) => {
            return Err(bad_request(format!(
                "purpose {:?} is not supported: this gateway keeps files only for batches (purpose \"batch\")",
                other.chars().take(40).collect::<String>()
            ))
            .with_param("purpose"))
        }
        None => return Err(bad_request(format!("{usage}; purpose is missing")).with_param("purpose")),
    }
    let Some(bytes) = bytes else {
        return Err(bad_request(format!("{usage}; the file field is missing")).with_param("file"));
    };
    tokio::fs::rename(&part, content_path(dir, &id))
        .await
        .map_err(|e| io_error("store the file", &e))?;
    guard.0 = None;
    let meta = FileMeta {
        id,
        owner: owner.to_string(),
        bytes,
        created_at: now_s(),
        filename: filename.unwrap_or_default(),
        purpose: "batch".into(),
    };
    write_meta(dir, &meta).map_err(|e| io_error("store the file's record", &e))?;
    Ok(meta)
}

/// A new file, 0600, that did not exist (never through a link left in the directory).
pub async fn open_private(path: &Path) -> std::io::Result<tokio::fs::File> {
    tokio::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .await
}

/// A multipart error as the client's error: too large (413), a body that stopped (408 or
/// 503, as for any request), else malformed (400).
fn form_error(e: multer::Error, too_large: &dyn Fn() -> ApiError) -> ApiError {
    use multer::Error as E;
    match e {
        E::FieldSizeExceeded { .. } | E::StreamSizeExceeded { .. } => too_large(),
        E::StreamReadFailed(inner) => {
            let mut causes = std::iter::successors(
                Some(inner.as_ref() as &(dyn std::error::Error + 'static)),
                |c| c.source(),
            );
            match causes.find_map(|c| c.downcast_ref::<crate::body::BodyStopped>()) {
                Some(why @ crate::body::BodyStopped::Timeout(_)) => ApiError::new(
                    StatusCode::REQUEST_TIMEOUT,
                    "invalid_request_error",
                    why.to_string(),
                )
                .with_code("request_timeout"),
                Some(why) => ApiError::unavailable(why.to_string()),
                None => bad_request(format!("could not read the upload: {inner}")),
            }
        }
        other => bad_request(format!("the multipart form is malformed: {other}")),
    }
}

/// The bytes of file `id` as a response body, read from disk as it is sent.
pub async fn content(path: &Path) -> Result<Body, ApiError> {
    let f = tokio::fs::File::open(path)
        .await
        .map_err(|e| io_error("read the file", &e))?;
    let stream = tokio_util::io::ReaderStream::with_capacity(f, 64 << 10);
    Ok(Body::from_stream(
        stream.map(|r| r.map_err(axum::Error::new)),
    ))
}
