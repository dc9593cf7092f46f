//! `llmgw doctor` on the real local SLURM cluster (`scripts/local-slurm.sh up`). The
//! cluster is shared: these tests only read from it (`scontrol ping`, `sinfo`) and never
//! stop it. "The cluster is down" is a copy of its slurm.conf whose controller port is
//! closed, given to doctor through SLURM_CONF.
//!
//! Each broken setup must fail exactly its own check, with a one-line fix, in the JSON
//! and in the text a person reads; the exit code says whether anything failed.
//!
//! Without `sbatch` on PATH the tests are skipped with a loud message — unless `CI` is
//! set: there a missing cluster is a failure.

// Test and benchmark code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod common;

use common::redis::RedisServer;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// Doctor bounds each of its own waits; this bounds the whole run.
const LIMIT: Duration = Duration::from_secs(120);
/// What doctor treats as node-local scratch (see src/commands/doctor.rs).
const SCRATCH: [&str; 4] = ["/tmp", "/var/tmp", "/dev/shm", "/run"];

/// One doctor run, as JSON and as text (the same checks, run twice).
struct Report {
    code: Option<i32>,
    json: Value,
    text: String,
}

impl Report {
    fn checks(&self) -> &Vec<Value> {
        self.json["checks"].as_array().expect("checks array")
    }

    fn ids_with(&self, status: &str) -> Vec<String> {
        self.checks()
            .iter()
            .filter(|c| c["status"] == status)
            .map(|c| c["id"].as_str().unwrap_or_default().to_string())
            .collect()
    }

    fn get(&self, id: &str) -> &Value {
        self.checks()
            .iter()
            .find(|c| c["id"] == id)
            .unwrap_or_else(|| panic!("no check {id:?} in:\n{}", self.text))
    }

    /// Asserts that `id` is the only failing check, that it carries a one-line fix in the
    /// JSON and in the text, and that doctor exited 1. Returns the check.
    fn only_failure(&self, id: &str) -> &Value {
        assert_eq!(
            self.ids_with("fail"),
            vec![id],
            "failing checks:\n{}",
            self.text
        );
        assert_eq!(self.code, Some(1), "exit code:\n{}", self.text);
        assert_eq!(self.json["ok"], false);
        let c = self.get(id);
        let fix = c["fix"].as_str().expect("a failing check has a fix");
        assert!(
            !fix.trim().is_empty() && !fix.contains('\n'),
            "fix: {fix:?}"
        );
        // In the text: "✘ TITLE: DETAIL" and, on the next line, "    fix: FIX".
        let title = c["title"].as_str().unwrap_or_default();
        let lines: Vec<&str> = self.text.lines().collect();
        let at = lines
            .iter()
            .position(|l| l.starts_with(&format!("✘ {title}: ")))
            .unwrap_or_else(|| panic!("no ✘ line for {title:?} in:\n{}", self.text));
        assert_eq!(
            lines.get(at + 1).copied(),
            Some(format!("    fix: {fix}").as_str()),
            "{}",
            self.text
        );
        c
    }
}

/// The llmgw that runs doctor: the build's own, or, when the build sits in a scratch dir
/// (a checkout under /tmp), the same file linked once into `$HOME/.cache/llmgw-tests`,
/// so that only what a test breaks fails (doctor checks that its own binary is on a
/// shared path). Placed by link-and-rename: never opened for writing while it runs.
fn doctor_binary() -> &'static Path {
    static BIN: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        let built = PathBuf::from(common::BIN);
        if !is_scratch(&built) {
            return built;
        }
        let dir = PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache/llmgw-tests");
        std::fs::create_dir_all(&dir).expect("create ~/.cache/llmgw-tests");
        let fresh = dir.join(format!("llmgw.{}", std::process::id()));
        let _ = std::fs::remove_file(&fresh);
        if std::fs::hard_link(&built, &fresh).is_err() {
            std::fs::copy(&built, &fresh).expect("copy llmgw out of scratch");
        }
        let bin = dir.join("llmgw");
        std::fs::rename(&fresh, &bin).expect("place llmgw in ~/.cache/llmgw-tests");
        bin
    })
}

/// Runs `llmgw doctor -c CONFIG --state-dir DIR` (+ `--json`) with extra environment.
fn doctor(config: &Path, state_dir: &Path, env: &[(&str, &str)]) -> Report {
    Doctor::new(state_dir).config(config).env(env).run()
}

/// One way of running doctor: which binary, from where, with or without `-c`.
struct Doctor<'a> {
    bin: &'a Path,
    cwd: Option<&'a Path>,
    config: Option<&'a Path>,
    state_dir: &'a Path,
    env: &'a [(&'a str, &'a str)],
}

impl<'a> Doctor<'a> {
    /// [`doctor_binary`] in this process's directory, with no `-c`.
    fn new(state_dir: &'a Path) -> Self {
        Doctor {
            bin: doctor_binary(),
            cwd: None,
            config: None,
            state_dir,
            env: &[],
        }
    }

    fn config(mut self, config: &'a Path) -> Self {
        self.config = Some(config);
        self
    }

    fn env(mut self, env: &'a [(&'a str, &'a str)]) -> Self {
        self.env = env;
        self
    }

    /// Run it in `dir` (where a config without `-c` is looked for).
    fn cwd(mut self, dir: &'a Path) -> Self {
        self.cwd = Some(dir);
        self
    }

    /// Run this llmgw file instead.
    fn bin(mut self, bin: &'a Path) -> Self {
        self.bin = bin;
        self
    }

    /// `llmgw doctor [-c CONFIG] --state-dir DIR` and the same with `--json`.
    fn run(&self) -> Report {
        let run = |json: bool| {
            let mut c = common::llmgw_command_at(self.bin);
            c.arg("doctor");
            if let Some(config) = self.config {
                c.arg("-c").arg(config);
            }
            if let Some(cwd) = self.cwd {
                c.current_dir(cwd);
            }
            c.arg("--state-dir")
                .arg(self.state_dir)
                .env_remove("SLURM_CONF")
                .env_remove("LLMGW_DOCTOR_TEST_KEY");
            if json {
                c.arg("--json");
            }
            c.envs(self.env.iter().copied());
            common::run_bounded(c, LIMIT)
        };
        let (j, t) = (run(true), run(false));
        let text = String::from_utf8_lossy(&t.stdout).into_owned();
        assert_eq!(j.status.code(), t.status.code(), "text run:\n{text}");
        let json = serde_json::from_slice(&j.stdout).unwrap_or_else(|e| {
            panic!(
                "doctor --json printed no JSON ({e}): {}{}",
                String::from_utf8_lossy(&j.stdout),
                String::from_utf8_lossy(&j.stderr)
            )
        });
        Report {
            code: j.status.code(),
            json,
            text,
        }
    }
}

/// Asserts that a check's `field` (`detail` or `fix`) mentions `needle`.
fn says(c: &Value, field: &str, needle: &str) {
    let text = c[field].as_str().unwrap_or_default();
    assert!(
        text.contains(needle),
        "{field} should mention {needle:?}: {c}"
    );
}

fn is_scratch(path: &Path) -> bool {
    let real = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    SCRATCH.iter().any(|s| real.starts_with(s))
}

/// A temporary directory doctor counts as shared on this one-node cluster: under the
/// build's target dir, or under $HOME should the checkout itself be in a scratch dir.
fn shared_tempdir() -> tempfile::TempDir {
    let target = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let base = if is_scratch(&target) {
        PathBuf::from(std::env::var_os("HOME").expect("HOME"))
    } else {
        target
    };
    tempfile::Builder::new()
        .prefix("llmgw-doctor-")
        .tempdir_in(base)
        .expect("temp dir")
}

/// The demo config, with `edit` applied to its text and `extra` appended, written to
/// `dir` — or the repository's own file when there is nothing to change.
fn demo_config(dir: &Path, edit: impl Fn(&str) -> String, extra: &str) -> PathBuf {
    let demo = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/demo-local-slurm.toml");
    let text = std::fs::read_to_string(&demo).expect("read the demo config");
    let mut edited = edit(&text);
    if edited == text && extra.is_empty() {
        return demo;
    }
    edited.push_str(extra);
    let path = dir.join("llmgw.toml");
    std::fs::write(&path, edited).expect("write config");
    path
}

/// A shared temporary directory (see [`shared_tempdir`]) when the local cluster is there
/// to test on; `None` means skip.
fn cluster_and_tempdir() -> Option<tempfile::TempDir> {
    common::slurm_cluster_ready().then(shared_tempdir)
}

fn unchanged(text: &str) -> String {
    text.to_string()
}

#[test]
fn demo_config_is_all_green() {
    let Some(tmp) = cluster_and_tempdir() else {
        return;
    };
    let config = demo_config(tmp.path(), unchanged, "");
    let r = doctor(&config, &tmp.path().join("state"), &[]);
    assert_eq!(r.code, Some(0), "{}", r.text);
    assert_eq!(r.json["ok"], true);
    let ids: Vec<&str> = r.checks().iter().filter_map(|c| c["id"].as_str()).collect();
    for id in [
        "slurm-commands",
        "slurm-controller",
        "config",
        "state-dir",
        "binary",
        "login-host",
        "node-arch",
        "backend:models[0]",
        "backend:models[1]",
    ] {
        assert!(ids.contains(&id), "no check {id}:\n{}", r.text);
    }
    for c in r.checks() {
        assert_eq!(c["status"], "ok", "{c}\n{}", r.text);
        assert!(c.get("fix").is_none(), "{c}");
    }
    // The person reading it sees a ✔ on every line and the command to run next.
    let lines: Vec<&str> = r.text.lines().skip(1).collect();
    assert_eq!(lines.len(), r.checks().len() + 1, "{}", r.text);
    assert!(lines.iter().all(|l| l.starts_with("✔ ")), "{}", r.text);
    assert!(
        r.text.contains("llmgw start -c") && r.text.contains("all good"),
        "{}",
        r.text
    );
}

#[test]
fn cluster_down_fails_the_controller_check() {
    let Some(tmp) = cluster_and_tempdir() else {
        return;
    };
    // The live cluster's config, with the controller on a port nothing listens on.
    let live = std::env::var_os("SLURM_CONF")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/etc/slurm/slurm.conf"));
    let conf = std::fs::read_to_string(&live).expect("read slurm.conf");
    let mut copy: String = conf
        .lines()
        .filter(|l| {
            !l.trim_start()
                .to_ascii_lowercase()
                .starts_with("slurmctldport")
        })
        .map(|l| format!("{l}\n"))
        .collect();
    copy.push_str(&format!("SlurmctldPort={}\n", common::closed_port()));
    let copy_path = tmp.path().join("slurm.conf");
    std::fs::write(&copy_path, copy).expect("write slurm.conf copy");

    let config = demo_config(tmp.path(), unchanged, "");
    let conf_env = copy_path.display().to_string();
    let r = doctor(
        &config,
        &tmp.path().join("state"),
        &[("SLURM_CONF", &conf_env)],
    );
    let c = r.only_failure("slurm-controller");
    says(c, "detail", "DOWN");
    says(c, "fix", "SLURM_CONF");
    assert_eq!(r.get("slurm-commands")["status"], "ok");
    // Whether node-local paths are shared cannot be told without the controller: a
    // warning, not a ✔.
    assert_eq!(r.get("state-dir")["status"], "warn", "{}", r.text);
}

#[test]
fn state_dir_under_tmp_fails() {
    let Some(shared) = cluster_and_tempdir() else {
        return;
    };
    let config = demo_config(shared.path(), unchanged, "");
    let scratch = tempfile::Builder::new()
        .prefix("llmgw-doctor-")
        .tempdir_in("/tmp")
        .expect("temp dir in /tmp");
    let r = doctor(&config, &scratch.path().join("state"), &[]);
    let c = r.only_failure("state-dir");
    says(c, "detail", "under /tmp");
    says(c, "fix", "~/.llmgw/default");
}

#[test]
fn unset_env_key_fails_with_its_name() {
    let Some(tmp) = cluster_and_tempdir() else {
        return;
    };
    let with_key = |text: &str| {
        let edited = text.replace(
            "model = \"mock-cloud\"\n",
            "model = \"mock-cloud\"\napi_key = \"env:LLMGW_DOCTOR_TEST_KEY\"\n",
        );
        assert_ne!(edited, text, "the demo config changed: update this test");
        edited
    };
    let config = demo_config(tmp.path(), with_key, "");
    let state = tmp.path().join("state");

    let r = doctor(&config, &state, &[]);
    let c = r.only_failure("key:models[1].api_key");
    says(c, "detail", "LLMGW_DOCTOR_TEST_KEY is not set");
    assert!(
        c["fix"]
            .as_str()
            .unwrap()
            .starts_with("export LLMGW_DOCTOR_TEST_KEY="),
        "{c}"
    );
    // The config itself is fine: only the key is missing.
    assert_eq!(r.get("config")["status"], "ok", "{}", r.text);

    let r = doctor(
        &config,
        &state,
        &[("LLMGW_DOCTOR_TEST_KEY", "sk-doctor-1234")],
    );
    assert_eq!(r.code, Some(0), "{}", r.text);
    assert_eq!(r.get("key:models[1].api_key")["status"], "ok");
    assert!(!r.text.contains("sk-doctor-1234"), "{}", r.text);
}

#[test]
fn unreachable_redis_fails_and_a_live_one_passes() {
    let Some(tmp) = cluster_and_tempdir() else {
        return;
    };
    let cache = |auth: &str, port: u16| {
        format!(
            "\n[cache]\nenabled = true\nbackend = \"redis\"\nredis_url = \"redis://{auth}127.0.0.1:{port}\"\n"
        )
    };
    let state = tmp.path().join("state");

    let closed = common::closed_port();
    let config = demo_config(tmp.path(), unchanged, &cache(":doctor-pw@", closed));
    let r = doctor(&config, &state, &[]);
    let c = r.only_failure("redis");
    let addr = format!("127.0.0.1:{closed}");
    says(c, "detail", &addr);
    says(c, "fix", &addr);
    assert!(
        !r.text.contains("doctor-pw"),
        "the password leaked:\n{}",
        r.text
    );

    let redis = RedisServer::start();
    let config = demo_config(tmp.path(), unchanged, &cache("", redis.port));
    let r = doctor(&config, &state, &[]);
    assert_eq!(r.code, Some(0), "{}", r.text);
    assert_eq!(r.get("redis")["status"], "ok", "{}", r.text);
}

/// An x86_64 login node in front of aarch64 (Grace Hopper) nodes, the other way round
/// here: `[slurm] binary` names an aarch64 executable and the local node is x86_64.
#[test]
fn binary_for_another_architecture_fails() {
    if std::env::consts::ARCH != "x86_64" {
        common::say_skipped("this test pairs an aarch64 binary with x86_64 nodes");
        return;
    }
    let Some(tmp) = cluster_and_tempdir() else {
        return;
    };
    // The ELF header of a 64-bit little-endian aarch64 executable (e_machine 0xb7).
    let mut elf = vec![0u8; 64];
    elf[..8].copy_from_slice(&[0x7f, b'E', b'L', b'F', 2, 1, 1, 0]);
    elf[16] = 2;
    elf[18] = 0xb7;
    let bin = tmp.path().join("llmgw-aarch64-linux-gnu");
    std::fs::write(&bin, elf).unwrap();
    std::fs::set_permissions(&bin, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let config = demo_config(
        tmp.path(),
        |text| format!("{text}binary = {:?}\n", bin.display().to_string()),
        "",
    );
    let r = doctor(&config, &tmp.path().join("state"), &[]);
    let c = r.only_failure("node-arch");
    says(c, "detail", "the binary is aarch64");
    says(c, "fix", "[slurm] binary");
}

#[test]
fn missing_slurm_commands_fail_with_their_own_fix() {
    let Some(tmp) = cluster_and_tempdir() else {
        return;
    };
    let config = demo_config(tmp.path(), unchanged, "");
    // A PATH without the SLURM commands (nor anything else).
    let bin = tmp.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    let path = bin.display().to_string();
    let r = doctor(&config, &tmp.path().join("state"), &[("PATH", &path)]);
    let c = r.only_failure("slurm-commands");
    says(c, "detail", "sbatch");
    says(c, "fix", "login node");
    assert_eq!(r.get("slurm-controller")["status"], "skip");
}

/// A real python (a venv of the system's python3, no pip) without sglang, then with a
/// package named sglang in it, then with `[slurm] setup` lines that only the job runs.
#[test]
fn launched_sglang_needs_python_with_sglang() {
    let Some(tmp) = cluster_and_tempdir() else {
        return;
    };
    let venv = tmp.path().join("venv");
    let out = Command::new("python3")
        .args(["-m", "venv", "--without-pip"])
        .arg(&venv)
        .output()
        .expect("run python3 -m venv");
    assert!(out.status.success(), "python3 -m venv: {out:?}");
    let model_dir = tmp.path().join("model");
    std::fs::create_dir(&model_dir).unwrap();
    let sglang = |extra: &str| {
        format!(
            "[[models]]\nname = \"qwen\"\nprovider = \"sglang\"\nlaunch = {{ model_path = {:?} }}\n\n[slurm]\n{extra}",
            model_dir.display().to_string()
        )
    };
    let config = tmp.path().join("sglang.toml");
    let state = tmp.path().join("state");
    let path = format!(
        "{}:{}",
        venv.join("bin").display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let env = [("PATH", path.as_str())];

    std::fs::write(&config, sglang("")).unwrap();
    let r = doctor(&config, &state, &env);
    let c = r.only_failure("backend:models[0]");
    says(c, "detail", "has no sglang");
    says(c, "fix", "pip install");

    // The venv's own site-packages: python finds the package there.
    let out = Command::new(venv.join("bin/python"))
        .args([
            "-c",
            "import sysconfig; print(sysconfig.get_paths()['purelib'])",
        ])
        .output()
        .expect("ask the venv for its site-packages");
    let site = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    std::fs::create_dir_all(site.join("sglang")).unwrap();
    std::fs::write(site.join("sglang/__init__.py"), "").unwrap();
    let r = doctor(&config, &state, &env);
    assert_eq!(r.code, Some(0), "{}", r.text);
    let c = r.get("backend:models[0]");
    assert_eq!(c["status"], "ok", "{c}");
    says(c, "detail", "finds sglang");

    std::fs::write(
        &config,
        sglang("setup = [\"source ~/venvs/sglang/bin/activate\"]\n"),
    )
    .unwrap();
    let r = doctor(&config, &state, &env);
    assert_eq!(r.code, Some(0), "{}", r.text);
    let c = r.get("backend:models[0]");
    assert_eq!(c["status"], "skip", "{c}");
    says(c, "detail", "checked in the job");
}

#[test]
fn unreadable_config_fails_and_skips_what_depends_on_it() {
    let Some(tmp) = cluster_and_tempdir() else {
        return;
    };
    let r = doctor(
        &tmp.path().join("nope.toml"),
        &tmp.path().join("state"),
        &[],
    );
    let c = r.only_failure("config");
    says(c, "fix", "-c FILE");
    assert_eq!(r.get("config-dependent")["status"], "skip");

    let bad = tmp.path().join("bad.toml");
    std::fs::write(&bad, "[server]\nport = \"four\"\n").unwrap();
    let r = doctor(&bad, &tmp.path().join("state"), &[]);
    let c = r.only_failure("config");
    says(c, "detail", "bad.toml:2:");
}

/// Without `-c` doctor checks what would run: ./llmgw.toml, which `start` reads, else the
/// built-in quickstart, which `serve` runs — and says which.
#[test]
fn without_c_the_quickstart_unless_there_is_an_llmgw_toml() {
    let Some(tmp) = cluster_and_tempdir() else {
        return;
    };
    let cwd = tmp.path().join("work");
    std::fs::create_dir(&cwd).unwrap();
    let state = tmp.path().join("state");
    let r = Doctor::new(&state).cwd(&cwd).run();
    assert_eq!(r.code, Some(0), "{}", r.text);
    let c = r.get("config");
    assert_eq!(c["status"], "ok", "{}", r.text);
    says(c, "detail", "no -c given and no ./llmgw.toml");
    says(c, "detail", "built-in quickstart");
    says(c, "detail", "1 deployment in 1 model group");
    assert_eq!(r.json["config"], "configs/quickstart.toml (built in)");
    // What depends on the config was checked (there is nothing to launch or resolve).
    assert!(
        r.checks().iter().all(|c| c["id"] != "config-dependent"),
        "{}",
        r.text
    );
    let first = r.text.lines().next().unwrap_or_default();
    assert!(
        first.ends_with("doctor for configs/quickstart.toml (built in)"),
        "{first}"
    );
    assert!(
        r.text
            .contains("`llmgw serve` runs the built-in quickstart"),
        "{}",
        r.text
    );

    // The file `start` would read, broken: that is what doctor checks now.
    std::fs::write(cwd.join("llmgw.toml"), "[server]\nport = \"four\"\n").unwrap();
    let r = Doctor::new(&state).cwd(&cwd).run();
    let c = r.only_failure("config");
    says(c, "detail", "llmgw.toml:2:");
    assert_eq!(r.json["config"], "llmgw.toml");
}

/// A checkout under /tmp on a cluster whose nodes all run on this machine, as when the
/// demo runs from a fresh clone there: the job sees the binary, so doctor passes it and
/// says why. (A state directory there still fails: `state_dir_under_tmp_fails`.)
#[test]
fn binary_under_tmp_passes_when_every_node_is_this_machine() {
    let Some(tmp) = cluster_and_tempdir() else {
        return;
    };
    let scratch = tempfile::Builder::new()
        .prefix("llmgw-doctor-")
        .tempdir_in("/tmp")
        .expect("temp dir in /tmp");
    let bin = scratch.path().join("llmgw");
    if std::fs::hard_link(common::BIN, &bin).is_err() {
        std::fs::copy(common::BIN, &bin).expect("copy llmgw into /tmp");
    }
    let config = demo_config(tmp.path(), unchanged, "");
    let r = Doctor::new(&tmp.path().join("state"))
        .config(&config)
        .bin(&bin)
        .run();
    // scripts/local-slurm.sh configures no job container: jobs see this machine's /tmp.
    let c = r.get("binary");
    assert_eq!(c["status"], "ok", "{}", r.text);
    says(c, "detail", "under /tmp");
    says(c, "detail", "runs on this machine");
    says(c, "detail", "no private /tmp");
    assert_eq!(r.code, Some(0), "{}", r.text);
}

#[test]
fn version_names_commit_and_build_date() {
    let out = common::run_bounded(
        {
            let mut c = common::llmgw_command();
            c.arg("--version");
            c
        },
        LIMIT,
    );
    assert!(out.status.success());
    let v = String::from_utf8_lossy(&out.stdout).trim().to_string();
    // llmgw 0.1.0 (commit 0123456789ab, built 2026-05-01)
    let rest = v
        .strip_prefix(&format!("llmgw {} (commit ", env!("CARGO_PKG_VERSION")))
        .unwrap_or_else(|| panic!("{v:?}"));
    let (commit, date) = rest
        .strip_suffix(')')
        .and_then(|r| r.split_once(", built "))
        .unwrap_or_else(|| panic!("{v:?}"));
    assert!(
        commit == "unknown"
            || commit
                .trim_end_matches("-dirty")
                .chars()
                .all(|c| c.is_ascii_hexdigit()),
        "{v:?}"
    );
    let d: Vec<&str> = date.split('-').collect();
    assert!(
        d.len() == 3 && d.iter().all(|p| p.chars().all(|c| c.is_ascii_digit())),
        "{v:?}"
    );
}
