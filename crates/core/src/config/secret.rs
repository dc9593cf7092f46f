//! Secrets in the config: a [`Secret`] never prints its value, and `env:`/`file:`
//! references are resolved at load time.

use super::*;

/// A secret after `env:`/`file:` resolution. Debug and Display never show the value.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// Resolves one secret reference of the config `text` (called `name` in errors).
pub fn resolve_secret_in(
    value: &Spanned<String>,
    text: &str,
    name: &str,
) -> Result<Secret, ConfigError> {
    resolve_secret(value, &Source { name, text })
}

/// Resolves `env:VAR`, `file:PATH` or a literal value.
pub(crate) fn resolve_secret(
    value: &Spanned<String>,
    src: &Source<'_>,
) -> Result<Secret, ConfigError> {
    let raw = value.get_ref();
    if let Some(var) = raw.strip_prefix("env:") {
        // Trimmed like the file form: `export KEY="$(cat key)\n"` and friends must not
        // turn into a key no client can present.
        match std::env::var(var) {
            Ok(v) if !v.trim().is_empty() => Ok(Secret(v.trim().to_string())),
            Ok(_) => Err(src.at(value.span(), format!("environment variable {var} is empty (referenced as \"env:{var}\")"))),
            Err(_) => Err(src.at(value.span(), format!("environment variable {var} is not set (referenced as \"env:{var}\"); export it or change the reference"))),
        }
    } else if let Some(path) = raw.strip_prefix("file:") {
        let path = expand_home(path);
        match std::fs::read_to_string(&path) {
            Ok(v) if !v.trim().is_empty() => Ok(Secret(v.trim().to_string())),
            Ok(_) => Err(src.at(
                value.span(),
                format!("secret file {} is empty", path.display()),
            )),
            Err(e) => Err(src.at(
                value.span(),
                format!("cannot read secret file {}: {e}", path.display()),
            )),
        }
    } else {
        Ok(Secret(raw.clone()))
    }
}

/// Expands a leading `~/` to `$HOME`.
pub fn expand_home(path: &str) -> PathBuf {
    match (path.strip_prefix("~/"), std::env::var_os("HOME")) {
        (Some(rest), Some(home)) => PathBuf::from(home).join(rest),
        _ => PathBuf::from(path),
    }
}
