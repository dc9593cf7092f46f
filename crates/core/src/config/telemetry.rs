//! `[telemetry]`: OpenTelemetry traces of every request, exported over OTLP/HTTP (see the
//! gateway's `telemetry` module for what a span carries and how it leaves the process).

use super::*;

/// Most spans waiting for the exporter; more are dropped (and counted).
pub const MAX_QUEUE: usize = 1 << 20;
/// Most `headers` entries.
pub const MAX_HEADERS: usize = 32;

/// `[telemetry]`: off unless `otlp_endpoint` is set.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// OTLP/HTTP base URL (`http://collector:4318`); spans are POSTed as protobuf to
    /// `{otlp_endpoint}/v1/traces` (a URL that already ends in `/v1/traces` is kept).
    pub otlp_endpoint: Option<Spanned<String>>,
    /// Extra headers on every export (Langfuse's `Authorization = "env:LANGFUSE_AUTH"`);
    /// values may be `env:VAR` or `file:PATH` like every secret.
    pub headers: BTreeMap<String, Spanned<String>>,
    /// Fraction of new traces recorded, 0.0–1.0 (a client's `traceparent` decides for
    /// its own trace).
    pub sample_ratio: Spanned<f64>,
    /// The resource's `service.name`.
    pub service_name: String,
    /// Record the prompt and the answer (masked of known secrets, capped) on the span.
    pub capture_content: bool,
    /// Spans waiting for the exporter; beyond it new spans are dropped and counted.
    pub max_queue: usize,
    /// Most spans in one export request.
    pub max_batch: usize,
    /// Longest an export may take (connect, send, answer) before it is given up.
    pub export_timeout: Dur,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            otlp_endpoint: None,
            headers: BTreeMap::new(),
            sample_ratio: Spanned::new(0..0, 1.0),
            service_name: "llmgw".into(),
            capture_content: false,
            max_queue: 8192,
            max_batch: 512,
            export_timeout: Dur(Duration::from_secs(5)),
        }
    }
}

impl TelemetryConfig {
    /// True when traces are exported.
    pub fn enabled(&self) -> bool {
        self.otlp_endpoint.is_some()
    }

    /// `{otlp_endpoint}/v1/traces`.
    pub fn traces_url(&self) -> Option<String> {
        let base = self.otlp_endpoint.as_ref()?.get_ref().trim_end_matches('/');
        Some(if base.ends_with("/v1/traces") {
            base.to_string()
        } else {
            format!("{base}/v1/traces")
        })
    }

    pub(crate) fn validate(&self, src: &Source<'_>) -> Result<(), ConfigError> {
        if let Some(e) = &self.otlp_endpoint {
            let v = e.get_ref();
            let rest = v
                .strip_prefix("http://")
                .or_else(|| v.strip_prefix("https://"));
            if rest.is_none_or(|r| r.is_empty() || r.starts_with('/')) {
                return Err(src.at(
                    e.span(),
                    format!(
                        "[telemetry] otlp_endpoint {:?} must be an http:// or https:// URL (OTLP/HTTP, e.g. \"http://localhost:4318\")",
                        crate::redact::userinfo(v)
                    ),
                ));
            }
        }
        let ratio = *self.sample_ratio.get_ref();
        if !(0.0..=1.0).contains(&ratio) {
            return Err(src.at(
                self.sample_ratio.span(),
                format!("[telemetry] sample_ratio must be between 0.0 and 1.0, got {ratio}"),
            ));
        }
        if self.headers.len() > MAX_HEADERS {
            return Err(ConfigError::File {
                file: src.name.to_string(),
                message: format!("[telemetry] headers: at most {MAX_HEADERS} entries"),
            });
        }
        for (name, value) in &self.headers {
            let token = !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
            if !token {
                return Err(src.at(
                    value.span(),
                    format!("[telemetry] headers: {name:?} is not a valid HTTP header name"),
                ));
            }
        }
        if self.service_name.trim().is_empty() || self.service_name.len() > 256 {
            return Err(ConfigError::File {
                file: src.name.to_string(),
                message: "[telemetry] service_name must be 1 to 256 characters".into(),
            });
        }
        if self.max_queue == 0 || self.max_queue > MAX_QUEUE {
            return Err(ConfigError::File {
                file: src.name.to_string(),
                message: format!("[telemetry] max_queue must be between 1 and {MAX_QUEUE}"),
            });
        }
        if self.max_batch == 0 || self.max_batch > 8192 {
            return Err(ConfigError::File {
                file: src.name.to_string(),
                message: "[telemetry] max_batch must be between 1 and 8192".into(),
            });
        }
        let t = self.export_timeout.0;
        if t < Duration::from_millis(100) || t > Duration::from_secs(60) {
            return Err(ConfigError::File {
                file: src.name.to_string(),
                message: "[telemetry] export_timeout must be between \"100ms\" and \"60s\"".into(),
            });
        }
        Ok(())
    }

    /// The `headers` with their `env:`/`file:` values resolved.
    pub(crate) fn resolve_headers(
        &self,
        src: &Source<'_>,
    ) -> Result<Vec<(String, Secret)>, ConfigError> {
        if !self.enabled() {
            return Ok(Vec::new());
        }
        self.headers
            .iter()
            .map(|(k, v)| Ok((k.clone(), resolve_secret(v, src)?)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    #[test]
    fn telemetry_defaults_and_errors_with_lines() {
        let t = Config::load_str("", "x.toml").unwrap().config.telemetry;
        assert!(!t.enabled());
        assert_eq!(*t.sample_ratio.get_ref(), 1.0);
        assert_eq!(t.service_name, "llmgw");
        assert!(!t.capture_content);
        let text = "[telemetry]\notlp_endpoint = \"http://127.0.0.1:4318/\"\nsample_ratio = 0.25\n\
                    headers = { Authorization = \"env:LLMGW_TEST_OTLP_AUTH\" }\n";
        std::env::set_var("LLMGW_TEST_OTLP_AUTH", "Basic abc");
        let loaded = Config::load_str(text, "x.toml").unwrap();
        let t = &loaded.config.telemetry;
        assert_eq!(
            t.traces_url().as_deref(),
            Some("http://127.0.0.1:4318/v1/traces")
        );
        assert_eq!(*t.sample_ratio.get_ref(), 0.25);
        assert_eq!(loaded.telemetry_headers.len(), 1);
        assert_eq!(loaded.telemetry_headers[0].1.expose(), "Basic abc");
        for (text, line, what) in [
            ("[telemetry]\n\nsample_ratio = 1.5\n", 3, "sample_ratio"),
            ("[telemetry]\notlp_endpoint = \"grpc://x:4317\"\n", 2, "otlp_endpoint"),
            ("[telemetry]\nbogus = 1\n", 2, "bogus"),
            (
                "[telemetry]\notlp_endpoint = \"http://x:4318\"\nheaders = { \"a b\" = \"v\" }\n",
                3,
                "header name",
            ),
            (
                "[telemetry]\notlp_endpoint = \"http://x:4318\"\nheaders = { A = \"env:LLMGW_TEST_UNSET_9\" }\n",
                3,
                "LLMGW_TEST_UNSET_9",
            ),
        ] {
            let err = Config::load_str(text, "x.toml").unwrap_err().to_string();
            assert!(err.starts_with(&format!("x.toml:{line}:")), "{err}");
            assert!(err.contains(what), "{err}");
        }
    }
}
