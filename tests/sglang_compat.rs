//! The SGLang that llmgw launches and polls, as it really is (issue 28): every launch
//! form llmgw generates — one GPU, `tp`, `dp`, replicas, the ranks of a multi-node server
//! with `--dist-init-addr`, the `--config` file carrying the API key, parsers in `args`,
//! every `launch` of the shipped `configs/` — is checked against the command-line options
//! of a pinned SGLang release, and the load fields and metric names the poller reads
//! against what that release reports. No GPU (or torch) here, so SGLang is not run: its
//! wheel's source is read by `tests/sglang_compat.py` (scripts/test.sh downloads the wheel).

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use llmgw::config::Config;
use llmgw::supervise::{sglang_config_yaml, spec_command_line, BackendSpec};
use serde_json::Value;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The release checked against (what `scripts/test.sh` downloads).
const SGLANG: &str = "0.5.23";

/// The pinned wheel: `$LLMGW_SGLANG_WHEEL`, else `target/sglang-wheel/`, fetched there
/// with pip when missing. `None` when it cannot be had (then the test says it skipped).
fn wheel() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("LLMGW_SGLANG_WHEEL") {
        return Some(PathBuf::from(p));
    }
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/sglang-wheel");
    let find = || {
        std::fs::read_dir(&dir)
            .ok()?
            .flatten()
            .map(|e| e.path())
            .find(|p| {
                p.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                    n.starts_with(&format!("sglang-{SGLANG}-")) && n.ends_with(".whl")
                })
            })
    };
    if let Some(w) = find() {
        return Some(w);
    }
    let fetched = Command::new("python3")
        .args([
            "-m",
            "pip",
            "download",
            "--quiet",
            "--no-deps",
            "--disable-pip-version-check",
        ])
        .arg(format!("sglang=={SGLANG}"))
        .arg("-d")
        .arg(&dir)
        .status()
        .is_ok_and(|s| s.success());
    if fetched {
        find()
    } else {
        None
    }
}

/// What the release accepts and reports (see tests/sglang_compat.py).
fn release() -> Option<Value> {
    let Some(wheel) = wheel() else {
        common::skip(&format!(
            "the SGLang {SGLANG} wheel cannot be fetched (pip download sglang=={SGLANG} --no-deps)"
        ));
        return None;
    };
    let out = Command::new("python3")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sglang_compat.py"))
        .arg(&wheel)
        .output()
        .expect("run python3");
    assert!(
        out.status.success(),
        "reading {}: {}",
        wheel.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    Some(serde_json::from_slice(&out.stdout).expect("JSON from sglang_compat.py"))
}

fn names(v: &Value, key: &str) -> BTreeSet<String> {
    v[key]
        .as_array()
        .unwrap_or_else(|| panic!("no {key}"))
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect()
}

/// One `launch` table as the backend spec llmgw would run.
fn spec(launch_toml: &str) -> BackendSpec {
    let cfg = Config::load_str(
        &format!("[[models]]\nname = \"m\"\nprovider = \"sglang\"\nlaunch = {launch_toml}\n"),
        "form.toml",
    )
    .unwrap_or_else(|e| panic!("{launch_toml}: {e}"));
    BackendSpec::from_launch("m", cfg.config.models[0].launch.as_ref().unwrap())
}

/// The options (`--x`, or the `--x` of `--x=v`) of an argv.
fn options(argv: &[String]) -> Vec<String> {
    argv.iter()
        .filter(|a| a.starts_with("--"))
        .map(|a| a.split('=').next().unwrap().to_string())
        .collect()
}

#[test]
fn launch_lines_and_load_readings_match_the_pinned_sglang() {
    let Some(r) = release() else { return };
    let flags = names(&r, "flags");
    assert!(flags.len() > 100, "too few options read: {flags:?}");
    let check = |what: &str, argv: &[String]| {
        assert_eq!(
            &argv[..3],
            ["python", "-m", "sglang.launch_server"],
            "{what}: {argv:?}"
        );
        for o in options(argv) {
            assert!(
                flags.contains(&o),
                "{what}: SGLang {} has no option {o} ({})",
                r["version"],
                argv.join(" ")
            );
        }
    };
    let model = r#"model_path = "Qwen/Qwen3-0.6B""#;
    let forms = [
        ("one GPU", format!("{{ {model} }}")),
        ("tp", format!("{{ {model}, tp = 2, gpus = 2 }}")),
        ("dp", format!(r#"{{ {model}, args = ["--dp-size", "2"] }}"#)),
        ("replicas", format!("{{ {model}, replicas = 2, gpus = 1 }}")),
        (
            "parsers and memory",
            format!(
                r#"{{ {model}, args = ["--mem-fraction-static", "0.85", "--tool-call-parser", "qwen25", "--reasoning-parser", "qwen3"] }}"#
            ),
        ),
    ];
    for (what, launch) in &forms {
        let argv = spec_command_line(&spec(launch), "10.0.0.2", 31000, "/bin/llmgw").unwrap();
        check(what, &argv);
    }
    // The ranks of a server over two nodes.
    for rank in 0..2 {
        let mut s = spec(&format!("{{ {model}, nnodes = 2, tp = 8 }}"));
        s.rank = rank;
        s.dist_init_addr = Some("10.0.0.2:29500".into());
        let argv = spec_command_line(&s, "10.0.0.3", 31000, "/bin/llmgw").unwrap();
        check(&format!("rank {rank} of two nodes"), &argv);
        for o in ["--nnodes", "--node-rank", "--dist-init-addr"] {
            assert!(
                argv.iter().any(|a| a == o),
                "rank {rank}: {o} missing: {argv:?}"
            );
        }
    }
    // The `--config` file: a YAML file whose keys SGLang turns into options of the same
    // name; llmgw names it `<backend>.yaml` and passes `--config` after the launch line.
    assert!(flags.contains("--config"));
    let suffixes = names(&r, "config_suffixes");
    assert!(suffixes.contains(".yaml"), "{suffixes:?}");
    let mut keyed = spec(&format!("{{ {model} }}"));
    keyed.key = llmgw::config::Secret::new("sk-backend-\"quoted\"");
    let yaml = sglang_config_yaml(&keyed).unwrap();
    let keys: Vec<&str> = yaml
        .lines()
        .filter(|l| !l.trim_start().starts_with('#') && l.contains(':'))
        .map(|l| l.split(':').next().unwrap().trim())
        .collect();
    assert_eq!(keys, ["api-key"], "{yaml}");
    for k in keys {
        assert!(
            flags.contains(&format!("--{k}")),
            "the config file's {k} is no option"
        );
    }
    // Every `launch` in the shipped example configs.
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs");
    let mut launched = 0;
    for entry in std::fs::read_dir(&dir).unwrap().flatten() {
        let path = entry.path();
        // configs/ also holds the Grafana dashboard and the Prometheus example.
        if path.extension().is_none_or(|e| e != "toml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let Ok(cfg) = Config::parse_str(&text, &path.display().to_string()) else {
            continue;
        };
        for m in &cfg.models {
            let Some(l) = m.launch.as_ref().filter(|l| l.command.is_none()) else {
                continue;
            };
            let argv =
                spec_command_line(&BackendSpec::from_launch("m", l), "h", 1, "/bin/llmgw").unwrap();
            check(&format!("{} ({})", path.display(), m.name.get_ref()), &argv);
            launched += 1;
        }
    }
    assert!(launched > 0, "no SGLang launch in configs/");

    // What the load poller reads (crates/router/src/load.rs).
    let routes = &r["routes"];
    assert_eq!(routes["/v1/loads"], true, "{routes}");
    let fields = names(&r, "load_fields");
    for f in [
        "num_running_reqs",
        "num_waiting_reqs",
        "num_used_tokens",
        "max_running_requests",
    ] {
        assert!(fields.contains(f), "/v1/loads has no {f}: {fields:?}");
    }
    let metrics = names(&r, "metrics");
    for m in [
        "sglang:num_running_reqs",
        "sglang:num_queue_reqs",
        "sglang:num_used_tokens",
    ] {
        assert!(metrics.contains(m), "SGLang registers no {m}");
    }
    println!(
        "SGLang {}: {} options, {} launch lines of configs/ checked; /get_load served: {}",
        r["version"],
        flags.len(),
        launched,
        routes["/get_load"]
    );
}
