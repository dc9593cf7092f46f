//! Loading a config: the TOML read with `file:line:col` for every error, the checks
//! that span tables, `env:`/`file:` secrets resolved, and the launch entries' own checks.

use super::*;

/// Where a config error points: the file name and its text, to turn spans into lines.
pub(crate) struct Source<'a> {
    pub(crate) name: &'a str,
    pub(crate) text: &'a str,
}

impl Source<'_> {
    pub(crate) fn at(&self, span: Range<usize>, message: impl Into<String>) -> ConfigError {
        let (line, col) = line_col(self.text, span.start);
        ConfigError::At {
            file: self.name.to_string(),
            line,
            col,
            message: message.into(),
        }
    }
}

/// 1-based line and column of a byte offset.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

impl Config {
    /// Reads, parses, validates and resolves the config at `path`.
    pub fn load(path: &Path) -> Result<LoadedConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let name = path.display().to_string();
        let mut loaded = Self::load_str(&text, &name)?;
        loaded.path = Some(path.to_path_buf());
        Ok(loaded)
    }

    /// The built-in quickstart config.
    pub fn quickstart() -> Result<LoadedConfig, ConfigError> {
        let mut loaded = Self::load_str(QUICKSTART, QUICKSTART_NAME)?;
        loaded.unreachable_hint = Some(QUICKSTART_HINT);
        Ok(loaded)
    }

    /// Parses, validates and resolves a config from text; `name` is used in errors.
    pub fn load_str(text: &str, name: &str) -> Result<LoadedConfig, ConfigError> {
        let config = Self::parse_str(text, name)?;
        let src = Source { name, text };
        let master_key = config
            .server
            .master_key
            .as_ref()
            .map(|k| resolve_secret(k, &src))
            .transpose()?;
        let model_keys = config
            .models
            .iter()
            .map(|m| {
                m.api_key
                    .as_ref()
                    .map(|k| resolve_secret(k, &src))
                    .transpose()
            })
            .collect::<Result<Vec<_>, _>>()?;
        let redis_url = config
            .cache
            .redis_url
            .as_ref()
            .map(|k| resolve_secret(k, &src))
            .transpose()?;
        let store_url = config
            .store
            .url
            .as_ref()
            .map(|k| resolve_secret(k, &src))
            .transpose()?;
        let mut alert_urls = Vec::with_capacity(config.alerts.len());
        for a in &config.alerts {
            let url = resolve_secret(&a.url, &src)?;
            if !alert_url_ok(url.expose()) {
                return Err(src.at(
                    a.url.span(),
                    "[[alerts]] url must be an http:// or https:// URL (its value is not shown: it may hold a token)",
                ));
            }
            alert_urls.push(url);
        }
        let telemetry_headers = config.telemetry.resolve_headers(&src)?;
        Ok(LoadedConfig {
            alert_urls,
            config,
            source_name: name.to_string(),
            path: None,
            master_key,
            model_keys,
            redis_url,
            store_url,
            telemetry_headers,
            unreachable_hint: None,
        })
    }

    /// Parses and validates without resolving `env:`/`file:` secrets: `llmgw doctor`
    /// checks those one by one ([`resolve_secret_in`]).
    pub fn parse_str(text: &str, name: &str) -> Result<Config, ConfigError> {
        let src = Source { name, text };
        let config: Config = toml::from_str(text).map_err(|e| {
            let message = e.message().trim().replace('\n', " ");
            match e.span() {
                Some(span) => src.at(span, message),
                None => ConfigError::File {
                    file: name.to_string(),
                    message,
                },
            }
        })?;
        config.validate(&src)?;
        Ok(config)
    }

    pub(crate) fn validate(&self, src: &Source<'_>) -> Result<(), ConfigError> {
        let file_err = |message: String| ConfigError::File {
            file: src.name.to_string(),
            message,
        };
        if self.server.max_body_bytes == 0 {
            return Err(file_err(
                "[server] max_body_bytes must be greater than 0".into(),
            ));
        }
        if self.router.max_response_bytes == 0 || self.router.max_error_bytes == 0 {
            return Err(file_err(
                "[router] max_response_bytes and max_error_bytes must be greater than 0".into(),
            ));
        }
        if self.responses.retention.0 < std::time::Duration::from_secs(60) {
            return Err(file_err(
                "[responses] retention must be at least \"1m\" (to keep no responses, set default_store = false; a request that asks for store still gets it)".into(),
            ));
        }
        self.batches.check().map_err(file_err)?;
        for a in &self.alerts {
            a.check()
                .map_err(|m| src.at(a.url.span(), format!("[[alerts]]: {m}")))?;
        }
        self.telemetry.validate(src)?;
        if !(0.0..=10.0).contains(&self.router.latency_buffer) {
            return Err(file_err(
                "[router] latency_buffer must be between 0.0 and 10.0 (a fraction of the best latency)".into(),
            ));
        }
        let names: std::collections::BTreeSet<&str> = self
            .models
            .iter()
            .map(|m| m.name.get_ref().as_str())
            .collect();
        for (i, m) in self.models.iter().enumerate() {
            let here = m.name.span();
            if m.name.get_ref().trim().is_empty() {
                return Err(src.at(here, "model name must not be empty"));
            }
            if let Some(w) = m.weight {
                if !(w.is_finite() && w >= 0.0) {
                    return Err(src.at(
                        here,
                        format!("models[{i}] weight must be a number ≥ 0, got {w}"),
                    ));
                }
            }
            for (what, v) in [
                ("input_cost_per_mtok", m.input_cost_per_mtok),
                ("output_cost_per_mtok", m.output_cost_per_mtok),
            ] {
                if let Some(v) = v {
                    if !(v.is_finite() && v >= 0.0) {
                        return Err(
                            src.at(here, format!("models[{i}] {what} must be ≥ 0, got {v}"))
                        );
                    }
                }
            }
            if m.max_parallel == Some(0) {
                return Err(src.at(here, format!("models[{i}] max_parallel must be at least 1")));
            }
            match (&m.api_base, &m.launch, m.provider) {
                (Some(base), _, _) => {
                    let b = base.get_ref();
                    if !(b.starts_with("http://") || b.starts_with("https://")) {
                        return Err(src.at(
                            base.span(),
                            format!(
                                "api_base {:?} must start with http:// or https://",
                                crate::redact::userinfo(b)
                            ),
                        ));
                    }
                }
                (None, Some(_), _) => {}
                (None, None, ProviderKind::Openai) => {}
                (None, None, ProviderKind::Anthropic | ProviderKind::Gemini) => {}
                (None, None, kind) => {
                    return Err(src.at(
                        here,
                        format!(
                        "model {:?} (provider {}) needs api_base, or a launch table to start it",
                        m.name.get_ref(),
                        kind.as_str()
                    ),
                    ))
                }
            }
            if m.provider == ProviderKind::Azure && m.api_version.is_none() {
                return Err(src.at(
                    here,
                    format!(
                        "model {:?}: provider azure needs api_version, e.g. \"2024-10-21\"",
                        m.name.get_ref()
                    ),
                ));
            }
            if m.responses_api == Some(true)
                && !matches!(m.provider, ProviderKind::Openai | ProviderKind::Sglang)
            {
                return Err(src.at(
                    here,
                    format!(
                        "model {:?}: responses_api is only for OpenAI-compatible upstreams \
                         (provider openai or sglang); other providers get /v1/responses translated",
                        m.name.get_ref()
                    ),
                ));
            }
            if m.launch.is_some()
                && m.provider != ProviderKind::Sglang
                && m.provider != ProviderKind::Openai
            {
                return Err(src.at(here, format!("model {:?}: launch is only for local OpenAI-compatible backends (provider = \"sglang\")", m.name.get_ref())));
            }
            if let Some(l) = &m.launch {
                l.validate(m.name.get_ref(), here.clone(), src)?;
            }
        }
        let mut ids = std::collections::BTreeSet::new();
        for (i, m) in self.models.iter().enumerate() {
            if let Some(id) = &m.id {
                if !ids.insert(id.as_str()) {
                    return Err(src.at(
                        m.name.span(),
                        format!("models[{i}] id {id:?} is used twice"),
                    ));
                }
            }
        }
        let check_targets = |table: &str, map: &BTreeMap<String, Vec<String>>| {
            for (from, tos) in map {
                for to in tos.iter() {
                    if !names.contains(to.as_str()) {
                        return Err(file_err(format!(
                            "[router.{table}] {from:?} falls back to {to:?}, which is not a configured model name"
                        )));
                    }
                }
            }
            Ok(())
        };
        check_targets("fallbacks", &self.router.fallbacks)?;
        check_targets(
            "context_window_fallbacks",
            &self.router.context_window_fallbacks,
        )?;
        for to in &self.router.default_fallbacks {
            if !names.contains(to.as_str()) {
                return Err(file_err(format!(
                    "[router] default_fallbacks names {to:?}, which is not a configured model name"
                )));
            }
        }
        if let Some(url) = &self.store.url {
            let u = url.get_ref();
            let ok = u.starts_with("env:")
                || u.starts_with("file:")
                || u.starts_with("postgres://")
                || u.starts_with("postgresql://");
            if !ok {
                return Err(src.at(
                    url.span(),
                    "[store] url must be a PostgreSQL URL (postgres://user@host:5432/db) or env:VAR; leave it out to use an SQLite file in the state directory",
                ));
            }
        }
        if self.store.buffer_rows == 0 || self.store.buffer_rows > 10_000_000 {
            return Err(file_err(
                "[store] buffer_rows must be between 1 and 10000000".into(),
            ));
        }
        self.validate_renewal(src, &file_err)?;
        let q = &self.router.queue;
        if q.max == 0 || q.max > 1_000_000 {
            return Err(file_err(
                "[router] queue.max must be between 1 and 1000000 waiting requests".into(),
            ));
        }
        if q.max_wait.0.is_zero() || q.aging.0.is_zero() {
            return Err(file_err(
                "[router] queue.max_wait and queue.aging must be longer than 0 (e.g. \"10m\", \"60s\")".into(),
            ));
        }
        if let Some(sp) = &self.router.spillover {
            if sp.queue.is_none() && sp.wait.is_none() {
                return Err(file_err(
                    "[router] spillover needs queue (waiting requests, e.g. 4) or wait (e.g. \"10s\"), or both".into(),
                ));
            }
        }
        if self.cache.backend == CacheBackend::Redis && self.cache.redis_url.is_none() {
            return Err(file_err(
                "[cache] backend = \"redis\" needs redis_url, e.g. \"redis://127.0.0.1:6379\""
                    .into(),
            ));
        }
        Ok(())
    }
}

impl Config {
    /// `[slurm] renew_before` and `handover_timeout` against the time limit and the
    /// shutdown grace: room for serving, for the first successor and for one retry.
    fn validate_renewal(
        &self,
        src: &Source<'_>,
        file_err: &dyn Fn(String) -> ConfigError,
    ) -> Result<(), ConfigError> {
        use super::renewal;
        let slurm = &self.slurm;
        let grace = self.server.shutdown_grace.0;
        let limit = slurm
            .time
            .as_deref()
            .and_then(crate::duration::parse_time_limit);
        let timeout = slurm.handover_timeout.as_ref().map(|t| t.get_ref().0);
        if let Some(t) = &slurm.idle_stop {
            if t.get_ref().0 < Duration::from_secs(30) {
                return Err(src.at(
                    t.span(),
                    "[slurm] idle_stop must be at least 30s (e.g. \"30m\"): a gateway needs a while between requests before it is idle",
                ));
            }
        }
        if let Some(t) = &slurm.hold_timeout {
            if t.get_ref().0 < Duration::from_secs(1) {
                return Err(src.at(
                    t.span(),
                    "[slurm] hold_timeout must be at least 1s (e.g. \"15m\"): how long connect holds a request while the job starts",
                ));
            }
        }
        if let Some(t) = &slurm.handover_timeout {
            if t.get_ref().0 < Duration::from_secs(10) {
                return Err(src.at(
                    t.span(),
                    "[slurm] handover_timeout must be at least 10s: a successor needs time to start and load its backends",
                ));
            }
        }
        if let Some(before) = &slurm.renew_before {
            let b = before.get_ref().0;
            if let Some(why) = renewal::renew_before_too_short(b, grace, timeout) {
                return Err(src.at(
                    before.span(),
                    format!(
                        "[slurm] renew_before ({}s) is too short: {why}",
                        b.as_secs()
                    ),
                ));
            }
            if let Some(limit) = limit.filter(|l| b.as_secs().saturating_add(60) > *l) {
                return Err(src.at(before.span(), format!("[slurm] renew_before ({}) must be at least 1m shorter than the time limit ({limit} s): each job must serve a while before renewing", before.get_ref())));
            }
        } else if let (true, Some(limit)) = (slurm.renew, limit) {
            let min = renewal::min_renew_before(grace, timeout);
            if min.as_secs().saturating_add(60) > limit {
                return Err(file_err(format!(
                    "[slurm] time ({limit} s) is too short for renew = true: a renewal starts at least {}s before the limit (room for the first successor and one retry) and each job must serve a minute before renewing; raise time, or lower shutdown_grace or handover_timeout",
                    min.as_secs()
                )));
            }
        }
        Ok(())
    }
}

impl LaunchConfig {
    /// Replicas, nodes and GPUs within bounds and consistent with each other.
    pub(crate) fn validate(
        &self,
        name: &str,
        here: Range<usize>,
        src: &Source<'_>,
    ) -> Result<(), ConfigError> {
        if !(1..=MAX_REPLICAS).contains(&self.replicas) {
            return Err(src.at(
                here,
                format!(
                    "model {name:?}: launch.replicas must be between 1 and {MAX_REPLICAS}, got {}",
                    self.replicas
                ),
            ));
        }
        if !(1..=MAX_NNODES).contains(&self.nnodes) {
            return Err(src.at(
                here,
                format!(
                    "model {name:?}: launch.nnodes must be between 1 and {MAX_NNODES}, got {}",
                    self.nnodes
                ),
            ));
        }
        let Some(gpus) = &self.gpus else {
            return Ok(());
        };
        let at = gpus.span();
        match gpus.get_ref() {
            Gpus::Count(n) if !(1..=MAX_GPUS_PER_REPLICA).contains(n) => Err(src.at(at, format!("launch.gpus must be between 1 and {MAX_GPUS_PER_REPLICA} GPUs per replica, got {n} (leave it out to let the backend see the job's GPUs)"))),
            Gpus::Count(_) => Ok(()),
            Gpus::List(_) if self.nnodes > 1 => Err(src.at(at, "launch.gpus as device indices names one node's GPUs; with nnodes > 1 give a count per node (gpus = 8)")),
            Gpus::List(l) if l.is_empty() => Err(src.at(at, "launch.gpus must not be empty (leave it out to let the backend see the job's GPUs)")),
            Gpus::List(l) if l.len() % self.replicas as usize != 0 => Err(src.at(at, format!("launch.gpus lists {} GPUs, which {} replicas cannot share evenly", l.len(), self.replicas))),
            Gpus::List(l) => {
                let mut seen = std::collections::BTreeSet::new();
                match l.iter().find(|g| !seen.insert(**g)) {
                    Some(g) => Err(src.at(at, format!("launch.gpus lists GPU {g} twice"))),
                    None => Ok(()),
                }
            }
        }
    }

    /// GPUs one replica holds on each of its nodes, when set.
    pub fn gpus_per_replica(&self) -> Option<u32> {
        match self.gpus.as_ref()?.get_ref() {
            Gpus::Count(n) => Some(*n),
            Gpus::List(l) => Some((l.len() / self.replicas.max(1) as usize) as u32),
        }
    }
}
