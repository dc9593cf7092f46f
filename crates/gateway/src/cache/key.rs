//! The cache key: a SHA-256 of the normalised request (model group, messages, sampling
//! parameters; llmgw's own and per-call keys left out), and the per-request `cache`
//! controls.

use super::*;

/// Per-request `cache` controls.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct Controls {
    /// The request sent a `cache` value (opts in under `mode = "opt-in"`).
    pub(crate) present: bool,
    pub(crate) no_cache: bool,
    pub(crate) no_store: bool,
    pub(crate) ttl: Option<Duration>,
    pub(crate) namespace: Option<String>,
}

impl Controls {
    pub(crate) fn parse(raw: Option<&str>) -> Result<Controls, ApiError> {
        let Some(raw) = raw else {
            return Ok(Controls::default());
        };
        let bad = |m: &str| ApiError::bad_request(format!("cache: {m}")).with_param("cache");
        let v: Value = serde_json::from_str(raw).map_err(|_| bad("not valid JSON"))?;
        let mut c = Controls {
            present: true,
            ..Controls::default()
        };
        let obj = match v {
            Value::Bool(true) | Value::Null => return Ok(c),
            Value::Bool(false) => {
                c.no_cache = true;
                c.no_store = true;
                return Ok(c);
            }
            Value::Object(o) => o,
            _ => {
                return Err(bad(
                    "must be an object such as {\"no-cache\": true, \"ttl\": 60}",
                ))
            }
        };
        for (k, v) in obj {
            match k.as_str() {
                "no-cache" | "no_cache" => {
                    c.no_cache = v
                        .as_bool()
                        .ok_or_else(|| bad("no-cache must be true or false"))?
                }
                "no-store" | "no_store" => {
                    c.no_store = v
                        .as_bool()
                        .ok_or_else(|| bad("no-store must be true or false"))?
                }
                "ttl" => {
                    let d = match &v {
                        Value::Number(n) => n.as_f64().ok_or_else(|| n.to_string()).and_then(|s| {
                            llmgw_core::duration::from_secs_f64(s).map_err(|e| e.to_string())
                        }),
                        Value::String(s) => {
                            llmgw_core::duration::parse(s).map_err(|e| e.to_string())
                        }
                        other => Err(format!("{other} is not a duration")),
                    };
                    c.ttl = Some(d.map_err(|why| {
                        bad(&format!(
                            "ttl must be a number of seconds or a duration like \"10m\" (at most 365d): {why}"
                        ))
                    })?);
                }
                "namespace" => {
                    let ns = v.as_str().filter(|s| {
                        !s.is_empty()
                            && s.len() <= 128
                            && s.bytes()
                                .all(|b| b.is_ascii_alphanumeric() || b"-_.:/".contains(&b))
                    });
                    c.namespace = Some(
                        ns.ok_or_else(|| {
                            bad("namespace must be 1-128 characters of A-Z a-z 0-9 - _ . : /")
                        })?
                        .to_string(),
                    );
                }
                // Tolerated, so clients written for other gateways keep working.
                _ => {}
            }
        }
        Ok(c)
    }
}

/// Body keys that do not change the answer.
pub(crate) const IGNORED_KEYS: [&str; 4] = ["stream", "stream_options", "user", "metadata"];

/// `<namespace>[:<request namespace>]:<sha256 hex>` of the normalised request.
pub(crate) fn cache_key(
    namespace: &str,
    req_ns: Option<&str>,
    req: &ClientRequest,
) -> Option<String> {
    let Value::Object(mut map) = serde_json::from_slice::<Value>(&req.body).ok()? else {
        return None;
    };
    for k in IGNORED_KEYS {
        map.remove(k);
    }
    map.insert("model".into(), Value::String(req.model.clone()));
    let mut h = Sha256::new();
    h.update(b"llmgw-cache-v1\0");
    h.update(req.endpoint.path().as_bytes());
    h.update(b"\0");
    canonical(&Value::Object(map), &mut h);
    let digest = h.finalize();
    let mut key = String::with_capacity(namespace.len() + req_ns.map_or(0, |n| n.len() + 1) + 65);
    key.push_str(namespace);
    if let Some(ns) = req_ns {
        key.push(':');
        key.push_str(ns);
    }
    key.push(':');
    for b in digest.iter() {
        let _ = write!(key, "{b:02x}");
    }
    Some(key)
}

/// Feeds JSON with object keys sorted at every depth.
pub(crate) fn canonical(v: &Value, h: &mut Sha256) {
    match v {
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            h.update(b"{");
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    h.update(b",");
                }
                h.update(serde_json::to_string(k).unwrap_or_default().as_bytes());
                h.update(b":");
                canonical(&m[k], h);
            }
            h.update(b"}");
        }
        Value::Array(a) => {
            h.update(b"[");
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    h.update(b",");
                }
                canonical(x, h);
            }
            h.update(b"]");
        }
        other => h.update(other.to_string().as_bytes()),
    }
}
