//! The sbatch script: a minijinja template (the built-in `slurm/llmgw.sbatch.j2`, or the
//! user's own via `[slurm] template`) rendered from a [`JobSpec`].
//!
//! Templates see every field of [`JobSpec`]. Every `{{ value }}` is shell-quoted as it is
//! written (a custom auto-escape), so a path or a module name can never become shell
//! code, in the built-in template or a user's: the config is data, the script is code.
//! Only `setup` (shell lines, on purpose) and `extra_directives` (whole `#SBATCH`
//! arguments, read by sbatch, never by the shell) are inserted as written; both must be
//! one line. The `sh` filter (kept for old templates) quotes once, like the auto-escape.
//! Undefined variables are errors, so a typo in a user's template is caught at
//! `llmgw start --dry-run` rather than on the compute node.

use llmgw_core::config::SlurmConfig;
use minijinja::{AutoEscape, Value};
use serde::Serialize;
use std::path::{Path, PathBuf};

/// The built-in template.
pub const BUILTIN: &str = include_str!("../../../../slurm/llmgw.sbatch.j2");
/// Its name in error messages.
pub const BUILTIN_NAME: &str = "slurm/llmgw.sbatch.j2 (built in)";
/// The auto-escape mode that shell-quotes every interpolated value.
const SHELL: &str = "sh";

/// Everything a template may use.
#[derive(Debug, Clone, Serialize)]
pub struct JobSpec {
    /// The gateway's name (`--name`).
    pub name: String,
    /// `[slurm]` as configured, with `job_name` resolved (`llmgw-<name>` by default):
    /// templates see `job_name`, `partition`, `account`, … at the top level.
    #[serde(flatten)]
    pub slurm: SlurmConfig,
    /// The job's stdout and stderr (`<state>/slurm-%j.log`).
    pub log_path: String,
    /// Absolute state directory.
    pub state_dir: String,
    /// The config copy the job runs with (absolute).
    pub config_path: String,
    /// Where the config came from (for the script's header comment).
    pub source_config: String,
    /// The `llmgw` binary the job runs (absolute).
    pub binary: String,
    /// The master key file, when `start` generated the key.
    pub key_file: Option<String>,
    /// Seconds before the time limit at which the gateway gets SIGTERM to drain; absent
    /// when the time limit is too short for SLURM's one-minute signal resolution.
    pub drain_secs: Option<u64>,
}

/// A template that could not be read or rendered.
#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error("cannot read the sbatch template {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("sbatch template {name}: {message}")]
    Render { name: String, message: String },
    #[error("[slurm] {field} must be one line without control characters, got {value:?}")]
    MultiLine { field: &'static str, value: String },
}

impl JobSpec {
    /// Builds the spec from `[slurm]` and the paths `start` decided on.
    pub fn new(
        name: &str,
        slurm: &SlurmConfig,
        paths: SpecPaths,
        drain_secs: u64,
    ) -> Result<Self, TemplateError> {
        let mut slurm = slurm.clone();
        let drain_secs = drain_before_limit(slurm.time.as_deref(), drain_secs);
        slurm.job_name = Some(slurm.job_name.unwrap_or_else(|| format!("llmgw-{name}")));
        let spec = JobSpec {
            name: name.to_string(),
            slurm,
            log_path: path_str(&paths.log_path),
            state_dir: path_str(&paths.state_dir),
            config_path: path_str(&paths.config_path),
            source_config: paths.source_config,
            binary: path_str(&paths.binary),
            key_file: paths.key_file.as_deref().map(path_str),
            drain_secs,
        };
        spec.check_one_line()?;
        Ok(spec)
    }

    /// A newline inside a directive would end the `#SBATCH` line and run the rest as shell;
    /// sbatch cannot read `$'…'` quoting, so directive values must be plain text.
    fn check_one_line(&self) -> Result<(), TemplateError> {
        let c = &self.slurm;
        let single: [(&'static str, Option<&str>); 10] = [
            ("job_name", c.job_name.as_deref()),
            ("partition", c.partition.as_deref()),
            ("account", c.account.as_deref()),
            ("qos", c.qos.as_deref()),
            ("time", c.time.as_deref()),
            ("mem", c.mem.as_deref()),
            ("gpus", c.gpus.as_deref()),
            ("gres", c.gres.as_deref()),
            ("constraint", c.constraint.as_deref()),
            ("state directory", Some(self.state_dir.as_str())),
        ];
        let lists = c
            .extra_directives
            .iter()
            .map(|v| ("extra_directives", Some(v.as_str())))
            .chain(c.modules.iter().map(|v| ("modules", Some(v.as_str()))))
            .chain(c.setup.iter().map(|v| ("setup", Some(v.as_str()))));
        for (field, value) in single.into_iter().chain(lists) {
            if let Some(v) = value {
                if v.chars().any(char::is_control) {
                    return Err(TemplateError::MultiLine {
                        field,
                        value: v.to_string(),
                    });
                }
            }
        }
        Ok(())
    }
}

/// How long before the time limit to signal the gateway: `want`, but at most a quarter of
/// a known limit, and not at all under 10 minutes (SLURM may signal up to a minute early).
fn drain_before_limit(time: Option<&str>, want: u64) -> Option<u64> {
    match time.map(llmgw_core::duration::parse_time_limit) {
        None | Some(None) => Some(want),
        Some(Some(limit)) if limit < 600 => None,
        Some(Some(limit)) => Some(want.min(limit / 4)),
    }
}

/// Paths `start` decided on, for [`JobSpec::new`].
#[derive(Debug, Clone)]
pub struct SpecPaths {
    pub state_dir: PathBuf,
    pub log_path: PathBuf,
    pub config_path: PathBuf,
    pub source_config: String,
    pub binary: PathBuf,
    pub key_file: Option<PathBuf>,
}

fn path_str(p: &Path) -> String {
    p.display().to_string()
}

/// Renders `spec` with the user's template at `template`, or the built-in one.
pub fn render(spec: &JobSpec, template: Option<&Path>) -> Result<String, TemplateError> {
    let (name, source) = match template {
        Some(path) => (
            path.display().to_string(),
            std::fs::read_to_string(path).map_err(|source| TemplateError::Read {
                path: path.display().to_string(),
                source,
            })?,
        ),
        None => (BUILTIN_NAME.to_string(), BUILTIN.to_string()),
    };
    let mut env = minijinja::Environment::new();
    env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
    env.set_auto_escape_callback(|_| AutoEscape::Custom(SHELL.into()));
    env.set_formatter(|out, state, value| {
        if value.is_safe() || !matches!(state.auto_escape(), AutoEscape::Custom(_)) {
            // Safe strings (and `{% autoescape false %}` blocks) are written as they are.
            return minijinja::escape_formatter(out, state, value);
        }
        out.write_str(&shell_quote(&value.to_string()))
            .map_err(minijinja::Error::from)
    });
    env.add_filter("sh", |v: String| Value::from_safe_string(shell_quote(&v)));
    let render_err = |e: minijinja::Error| TemplateError::Render {
        name: name.clone(),
        message: match e.line() {
            Some(line) => format!("line {line}: {}", e.detail().unwrap_or(&e.to_string())),
            None => e.to_string(),
        },
    };
    // The two fields that are written as they are.
    let raw = |lines: &[String]| -> Value {
        lines
            .iter()
            .map(|l| Value::from_safe_string(l.clone()))
            .collect::<Vec<_>>()
            .into()
    };
    let ctx = minijinja::context! {
        setup => raw(&spec.slurm.setup),
        extra_directives => raw(&spec.slurm.extra_directives),
        ..minijinja::value::Serde(spec)
    };
    let mut out = env
        .render_named_str(&name, &source, ctx)
        .map_err(render_err)?;
    if !out.ends_with('\n') {
        out.push('\n');
    }
    Ok(out)
}

/// Quotes `s` as one shell word on one line: bare when it is made only of safe
/// characters, else in single quotes (`'` as `'\''`), and with control characters
/// (newlines) in bash's `$'…'` with escapes, so that a value can end neither a command
/// nor a comment line.
pub fn shell_quote(s: &str) -> String {
    let safe = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c));
    if safe {
        return s.to_string();
    }
    if !s.chars().any(char::is_control) {
        return format!("'{}'", s.replace('\'', r"'\''"));
    }
    let mut out = String::with_capacity(s.len() + 8);
    out.push_str("$'");
    for c in s.chars() {
        match c {
            '\\' => out.push_str(r"\\"),
            '\'' => out.push_str(r"\'"),
            '\n' => out.push_str(r"\n"),
            '\t' => out.push_str(r"\t"),
            c if c.is_control() => {
                let mut buf = [0u8; 4];
                for b in c.encode_utf8(&mut buf).bytes() {
                    out.push_str(&format!("\\x{b:02x}"));
                }
            }
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(slurm: &SlurmConfig) -> JobSpec {
        JobSpec::new(
            "default",
            slurm,
            SpecPaths {
                state_dir: "/home/a b/.llmgw/default".into(),
                log_path: "/home/a b/.llmgw/default/slurm-%j.log".into(),
                config_path: "/home/a b/.llmgw/default/config.toml".into(),
                source_config: "configs/x.toml".into(),
                binary: "/usr/local/bin/llmgw".into(),
                key_file: Some("/home/a b/.llmgw/default/key".into()),
            },
            60,
        )
        .unwrap()
    }

    #[test]
    fn renders_directives_and_command() {
        let slurm = SlurmConfig {
            partition: Some("gpu".into()),
            time: Some("04:00:00".into()),
            gpus: Some("1".into()),
            cpus_per_task: Some(8),
            extra_directives: vec!["--exclusive".into()],
            modules: vec!["cuda/12.4".into()],
            setup: vec!["source ~/venv/bin/activate".into()],
            ..SlurmConfig::default()
        };
        let out = render(&spec(&slurm), None).unwrap();
        assert!(out.starts_with("#!/bin/bash\n"), "{out}");
        for want in [
            "#SBATCH --job-name=llmgw-default\n",
            "#SBATCH --partition=gpu\n",
            "#SBATCH --time=04:00:00\n",
            "#SBATCH --gpus=1\n",
            "#SBATCH --cpus-per-task=8\n",
            "#SBATCH --exclusive\n",
            "#SBATCH --output='/home/a b/.llmgw/default/slurm-%j.log'\n",
            "module load cuda/12.4\n",
            "source ~/venv/bin/activate\n",
            "exec /usr/local/bin/llmgw serve \\\n  --config '/home/a b/.llmgw/default/config.toml'",
            "--master-key-file '/home/a b/.llmgw/default/key'\n",
        ] {
            assert!(out.contains(want), "missing {want:?} in\n{out}");
        }
        assert!(!out.contains("--account"), "{out}");
        assert!(!out.contains("\n\n\n"), "{out}");
    }

    #[test]
    fn every_value_is_quoted_but_setup_and_directives() {
        let slurm = SlurmConfig {
            partition: Some("gpu|a100".into()),
            modules: vec!["cuda/12.4; touch /tmp/x".into(), "$(touch /tmp/x)".into()],
            setup: vec!["export A=$(hostname)".into()],
            extra_directives: vec!["--comment=\"a b\"".into()],
            ..SlurmConfig::default()
        };
        let mut s = spec(&slurm);
        s.source_config = "/c\n$(touch /tmp/x)/it's.toml".into();
        let out = render(&s, None).unwrap();
        for want in [
            "from $'/c\\n$(touch /tmp/x)/it\\'s.toml'.\n",
            "#SBATCH --partition='gpu|a100'\n",
            "module load 'cuda/12.4; touch /tmp/x'\n",
            "module load '$(touch /tmp/x)'\n",
            "export A=$(hostname)\n",
            "#SBATCH --comment=\"a b\"\n",
        ] {
            assert!(out.contains(want), "missing {want:?} in\n{out}");
        }
        // A user's template gets the same quoting, and `| sh` does not quote twice.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.j2");
        std::fs::write(
            &path,
            "{{ config_path }} {{ config_path | sh }} {{ name }}\n",
        )
        .unwrap();
        let out = render(&spec(&SlurmConfig::default()), Some(&path)).unwrap();
        let q = "'/home/a b/.llmgw/default/config.toml'";
        assert_eq!(out, format!("{q} {q} default\n"));
    }

    #[test]
    fn control_characters_in_a_directive_are_refused() {
        let slurm = SlurmConfig {
            account: Some("a\x1bb".into()),
            ..SlurmConfig::default()
        };
        let err = JobSpec::new(
            "x",
            &slurm,
            SpecPaths {
                state_dir: "/s".into(),
                log_path: "/s/l".into(),
                config_path: "/s/c".into(),
                source_config: "c".into(),
                binary: "/b".into(),
                key_file: None,
            },
            60,
        )
        .unwrap_err();
        assert!(err.to_string().contains("account"), "{err}");
    }

    #[test]
    fn multi_line_directive_is_refused() {
        let slurm = SlurmConfig {
            partition: Some("gpu\nrm -rf ~".into()),
            ..SlurmConfig::default()
        };
        let err = JobSpec::new(
            "x",
            &slurm,
            SpecPaths {
                state_dir: "/s".into(),
                log_path: "/s/l".into(),
                config_path: "/s/c".into(),
                source_config: "c".into(),
                binary: "/b".into(),
                key_file: None,
            },
            60,
        )
        .unwrap_err();
        assert!(err.to_string().contains("partition"), "{err}");
    }

    #[test]
    fn user_template_with_unknown_variable_fails_with_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.j2");
        std::fs::write(&path, "#!/bin/bash\n\n{{ no_such_thing }}\n").unwrap();
        let err = render(&spec(&SlurmConfig::default()), Some(&path))
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 3"), "{err}");
    }

    #[test]
    fn time_limits() {
        assert_eq!(drain_before_limit(Some("04:00:00"), 60), Some(60));
        assert_eq!(drain_before_limit(Some("00:12:00"), 600), Some(180));
        assert_eq!(drain_before_limit(Some("5"), 60), None);
        assert_eq!(drain_before_limit(None, 60), Some(60));
    }

    #[test]
    fn quoting() {
        assert_eq!(shell_quote("/a/b-c.d"), "/a/b-c.d");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote(""), "''");
        assert_eq!(shell_quote("a\nb"), r"$'a\nb'");
    }

    /// What bash makes of each quoted value is the value, byte for byte.
    #[test]
    fn bash_reads_back_every_quoted_value() {
        let hostile = [
            "plain",
            "a b",
            "it's",
            "$(touch /tmp/llmgw-never)",
            "`id`; rm -rf ~ && echo $HOME",
            "x\n$(touch /tmp/llmgw-never)\n# y",
            "tab\there\r\u{7}\u{1b}[31m\\'\"",
            "\u{85}next-line é",
            "",
        ];
        for v in hostile {
            let out = std::process::Command::new("bash")
                .arg("-c")
                .arg(format!("printf %s {}", shell_quote(v)))
                .output()
                .expect("bash");
            assert!(out.status.success(), "{v:?}");
            assert_eq!(String::from_utf8_lossy(&out.stdout), v, "{v:?}");
            assert!(!shell_quote(v).contains('\n'), "{v:?}");
        }
    }
}
