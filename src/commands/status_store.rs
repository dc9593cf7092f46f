//! `llmgw status`'s view of the state directory: the store's size, spend-row retention,
//! rows dropped because the write buffer was full (from the gateway's `/health`), and
//! the state filesystem's free space (read here with statvfs, so it shows even when the
//! gateway is not running).

use llmgw_core::disk::{bytes, Space};
use serde_json::{json, Value};
use std::path::Path;

/// The `store` object of `status --json`: `/health`'s, with the filesystem read here
/// when the gateway did not answer.
pub fn json(health_store: Option<&Value>, dir: &Path) -> Value {
    let mut v = health_store.cloned().unwrap_or_else(|| json!({}));
    if v["filesystem"].is_null() {
        if let Ok(s) = Space::of(dir) {
            v["filesystem"] = json!({
                "path": dir,
                "available_bytes": s.available,
                "total_bytes": s.total,
                "free_percent": (s.free_fraction() * 1000.0).round() / 10.0,
                "low": s.is_low(),
                "quota": "not read (statvfs only; see README)",
            });
        }
    }
    v
}

/// The text lines (each starting with two spaces, ending with a newline).
pub fn text(store: &Value) -> String {
    let mut out = String::new();
    let num = |v: &Value, k: &str| v[k].as_u64();
    if let Some(b) = num(store, "bytes") {
        let inside = num(store, "free_bytes")
            .filter(|f| *f > 0)
            .map(|f| format!(" ({} free inside, reused)", bytes(f)))
            .unwrap_or_default();
        let keep = match store["retention_seconds"].as_f64() {
            Some(s) => format!("raw spend rows kept {}", human_secs(s)),
            None => "raw spend rows kept forever".into(),
        };
        out.push_str(&format!(
            "  store:    {} {}{inside}; {keep}, {} pruned; {} rows dropped (write buffer full)\n",
            store["kind"].as_str().unwrap_or("?"),
            bytes(b),
            num(store, "pruned_rows").unwrap_or(0),
            num(store, "rows_dropped").unwrap_or(0),
        ));
    }
    let fs = &store["filesystem"];
    if let (Some(available), Some(total)) = (num(fs, "available_bytes"), num(fs, "total_bytes")) {
        let s = Space { available, total };
        out.push_str(&format!("  state fs: {}\n", s.describe()));
        if s.is_low() {
            out.push_str("  ⚠ the state directory's filesystem is nearly full (under 1 GB or 10 % free): lower [store] retention, or move the state directory (--state-dir) to a filesystem with room\n");
        }
    }
    if let Some(n) = num(store, "rows_dropped").filter(|n| *n > 0) {
        out.push_str(&format!(
            "  ⚠ {n} spend rows were dropped because the write buffer was full (the store was slow or down): /spend reports miss those requests; raise [store] buffer_rows or check the database\n"
        ));
    }
    out
}

/// `90d`, `1m`, `45s`.
pub fn human_secs(s: f64) -> String {
    let s = s.round() as u64;
    for (unit, n) in [("d", 86_400), ("h", 3600), ("m", 60)] {
        if s >= n && s.is_multiple_of(n) {
            return format!("{}{unit}", s / n);
        }
    }
    format!("{s}s")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_say_size_retention_drops_and_a_full_filesystem() {
        let store = json!({"kind": "sqlite", "bytes": 12_300_000u64, "free_bytes": 0,
            "retention_seconds": 7_776_000.0, "pruned_rows": 5, "rows_dropped": 3,
            "filesystem": {"available_bytes": 2_000_000u64, "total_bytes": 3_000_000u64}});
        let t = text(&store);
        assert!(
            t.contains("sqlite 12.3 MB; raw spend rows kept 90d, 5 pruned; 3 rows dropped"),
            "{t}"
        );
        assert!(t.contains("nearly full"), "{t}");
        assert!(t.contains("3 spend rows were dropped"), "{t}");
    }
}
