//! Stamps the binary with what `llmgw --version` prints: the package version, the git
//! commit and the build date, as `LLMGW_LONG_VERSION`.
//!
//! - Commit: `LLMGW_GIT_COMMIT` when set (scripts/release.sh sets it, with `-dirty` for a
//!   tree with changes), else `git rev-parse`, else `unknown` (a source tarball, no git).
//! - Date: `LLMGW_BUILD_DATE` when set, else `SOURCE_DATE_EPOCH`'s (reproducible builds),
//!   else today's (UTC, by `date`: llmgw builds on Linux only). Only the day: a build that
//!   reran for the same commit on the same day is the same build.
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
        let when =
            env_nonempty("SOURCE_DATE_EPOCH").map_or_else(|| "now".into(), |s| format!("@{s}"));
        run("date", &["-u", "-d", &when, "+%Y-%m-%d"]).unwrap_or_else(|| "unknown".into())
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
    run("git", args)
}

/// A command's trimmed output, run in the package directory; `None` when it fails.
fn run(program: &str, args: &[&str]) -> Option<String> {
    let dir = std::env::var_os("CARGO_MANIFEST_DIR")?;
    let out = Command::new(program)
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
