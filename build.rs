//! Stamps the binary with what `llmgw --version` prints: the package version, the git
//! commit and the build date, as `LLMGW_LONG_VERSION`.
//!
//! - Commit: `LLMGW_GIT_COMMIT` when set (scripts/release.sh sets it, with `-dirty` for a
//!   tree with changes), else `git rev-parse`, else `unknown` (a source tarball, no git).
//! - Date: `LLMGW_BUILD_DATE` when set, else `SOURCE_DATE_EPOCH` (reproducible builds),
//!   else today (UTC). Only the day: a build that reran for the same commit on the same day
//!   is the same build.
//!
//! The script reruns only when one of those variables or the checked-out commit changes,
//! so ordinary edits do not pay for it.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    for var in ["LLMGW_GIT_COMMIT", "LLMGW_BUILD_DATE", "SOURCE_DATE_EPOCH"] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    println!("cargo:rerun-if-changed=build.rs");

    let commit = env_nonempty("LLMGW_GIT_COMMIT").unwrap_or_else(|| {
        for path in git_paths() {
            println!("cargo:rerun-if-changed={}", path.display());
        }
        git(&["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown".into())
    });
    let date = env_nonempty("LLMGW_BUILD_DATE").unwrap_or_else(|| {
        let secs = env_nonempty("SOURCE_DATE_EPOCH")
            .and_then(|s| s.parse::<u64>().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs())
            });
        ymd(secs)
    });
    let version = std::env::var("CARGO_PKG_VERSION").unwrap_or_default();
    println!("cargo:rustc-env=LLMGW_GIT_COMMIT={commit}");
    println!("cargo:rustc-env=LLMGW_BUILD_DATE={date}");
    println!("cargo:rustc-env=LLMGW_LONG_VERSION={version} (commit {commit}, built {date})");
}

fn env_nonempty(var: &str) -> Option<String> {
    std::env::var(var)
        .ok()
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
}

/// Runs git in the package directory; `None` when git or the repository is missing.
fn git(args: &[&str]) -> Option<String> {
    let dir = std::env::var_os("CARGO_MANIFEST_DIR")?;
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (out.status.success() && !text.is_empty()).then_some(text)
}

/// The files whose change means another commit is checked out: `HEAD`, the branch's ref
/// and `packed-refs` (worktree-aware through `--git-path`). Only existing files: cargo
/// would rerun the script on every build for a missing one.
fn git_paths() -> Vec<PathBuf> {
    let mut names = vec!["HEAD".to_string(), "packed-refs".to_string()];
    if let Some(r) = git(&["symbolic-ref", "-q", "HEAD"]) {
        names.push(r);
    }
    names
        .iter()
        .filter_map(|n| git(&["rev-parse", "--path-format=absolute", "--git-path", n]))
        .map(PathBuf::from)
        .filter(|p| p.exists())
        .collect()
}

/// `YYYY-MM-DD` (UTC) of a Unix time, by the days-to-civil algorithm (no date crate in
/// the build script).
fn ymd(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}
