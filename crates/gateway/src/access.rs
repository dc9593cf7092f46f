//! Who may call the API.
//!
//! With a master key: the key in `Authorization: Bearer <key>` (the scheme in any case),
//! `x-api-key` or `api-key`, compared in constant time.
//!
//! Without one (allowed on loopback only), the programs of the user are trusted, but not
//! the web pages their browser shows: a page may POST `text/plain` to `127.0.0.1` without
//! a CORS preflight, and DNS rebinding can point a foreign name at loopback and read the
//! answers. [`local_only`] therefore refuses API requests from a non-local `Origin` or to a
//! non-loopback `Host`, and POSTs that are not JSON (a browser sends JSON cross-site only
//! after a preflight, which the gateway never approves). Health and metrics are not API
//! routes and stay open.

use axum::extract::Request;
use axum::http::uri::Authority;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use llmgw_core::config::Secret;
use llmgw_core::error::ApiError;

/// Checks the presented key against `key`; no key configured means no check.
pub fn check_key(key: Option<&Secret>, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(key) = key else {
        return Ok(());
    };
    match presented_key(headers) {
        Some(g) if constant_time_eq(g.as_bytes(), key.expose().as_bytes()) => Ok(()),
        Some(_) => Err(ApiError::unauthorized(
            "invalid API key; use the key from `llmgw status` / ~/.llmgw/<name>/key",
        )),
        None => Err(ApiError::unauthorized(
            "missing API key: send `Authorization: Bearer <key>` (OPENAI_API_KEY for OpenAI SDKs)",
        )),
    }
}

/// The key a client presented, trimmed: a bearer token (RFC 9110: the scheme is
/// case-insensitive), else `x-api-key` (Anthropic SDKs), else `api-key` (Azure SDKs).
pub fn presented_key(headers: &HeaderMap) -> Option<&str> {
    let text = |name| {
        headers
            .get(name)
            .and_then(|v: &HeaderValue| v.to_str().ok())
    };
    text(header::AUTHORIZATION.as_str())
        .and_then(|v| v.trim().split_once(|c: char| c.is_ascii_whitespace()))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token)
        .or_else(|| text("x-api-key"))
        .or_else(|| text("api-key"))
        .map(str::trim)
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Middleware for the API routes of a gateway without a master key: refuses requests a
/// web page could have made (see the module docs).
pub async fn local_only(req: Request, next: Next) -> Response {
    match check_local_request(&req) {
        Ok(()) => next.run(req).await,
        Err(refused) => refused,
    }
}

/// `local_only`'s rule for one request: `Err` holds the refusal to send.
pub fn check_local_request<B>(req: &axum::http::Request<B>) -> Result<(), Response> {
    check_local(req.method(), req.uri(), req.headers()).map_err(|e| {
        // The body is left unread: close rather than let the client reuse the
        // connection with its remains.
        let mut resp = e.into_response();
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        resp
    })
}

fn check_local(method: &Method, uri: &Uri, headers: &HeaderMap) -> Result<(), ApiError> {
    const SET_KEY: &str = "set [server] master_key to serve other clients";
    if let Some(origin) = headers.get(header::ORIGIN) {
        if !is_local_origin(origin) {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "permission_error",
                format!(
                    "requests from web pages of other sites are refused: without a master \
                     key the gateway only answers programs on this machine; {SET_KEY}"
                ),
            )
            .with_code("origin_not_allowed"));
        }
    }
    // HTTP/1 names the host in `Host`, HTTP/2 in the URI's authority; a request naming
    // none is not from a browser (they always send one).
    let local = match headers.get(header::HOST) {
        Some(h) if is_plain_loopback_host(h.as_bytes()) => true,
        Some(h) => h
            .to_str()
            .ok()
            .and_then(|h| h.parse::<Authority>().ok())
            .is_some_and(|a| is_loopback_name(a.host())),
        None => uri.authority().is_none_or(|a| is_loopback_name(a.host())),
    };
    if !local {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "permission_error",
            format!(
                "the request is addressed to a host that is not localhost, 127.0.0.1 or \
                 [::1]; connect through one of those (this guards against DNS rebinding), \
                 or {SET_KEY}"
            ),
        )
        .with_code("host_not_allowed"));
    }
    if method == Method::POST && !is_json(headers) && !files_post(uri, headers) {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "invalid_request_error",
            "send the request body as JSON with `Content-Type: application/json`",
        )
        .with_code("unsupported_media_type"));
    }
    Ok(())
}

/// The POSTs of the Files and Batches APIs that are not JSON, when a program sends them
/// (no `Origin`: browsers send one with every POST): a multipart upload to `/v1/files`,
/// and a batch's cancel with no body at all.
fn files_post(uri: &Uri, headers: &HeaderMap) -> bool {
    if headers.contains_key(header::ORIGIN) {
        return false;
    }
    let path = uri.path();
    let ct = headers.get(header::CONTENT_TYPE);
    let upload = matches!(path, "/v1/files" | "/files")
        && ct.is_some_and(|v| v.as_bytes().starts_with(b"multipart/form-data"));
    let cancel = (path.starts_with("/v1/batches/") || path.starts_with("/batches/"))
        && path.ends_with("/cancel")
        && ct.is_none();
    upload || cancel
}

/// `Content-Type: application/json`, parameters (`; charset=utf-8`) allowed.
fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"))
}

/// `http(s)://` and a loopback name, any port.
fn is_local_origin(origin: &HeaderValue) -> bool {
    let Some(uri) = origin.to_str().ok().and_then(|o| o.parse::<Uri>().ok()) else {
        return false;
    };
    matches!(uri.scheme_str(), Some("http" | "https"))
        && uri.authority().is_some_and(|a| is_loopback_name(a.host()))
}

/// `localhost`, an address in 127.0.0.0/8, or `[::1]`.
/// The `Host` every local client sends (`127.0.0.1:4000`, `localhost`, `[::1]:4000`),
/// recognised without parsing an `Authority` (a measurable share of a request's cost).
/// Anything else takes the full parse.
fn is_plain_loopback_host(host: &[u8]) -> bool {
    let (name, port) = match host.iter().rposition(|&b| b == b':') {
        Some(i) if !host.starts_with(b"[") || host[..i].ends_with(b"]") => host.split_at(i),
        _ => (host, &b""[..]),
    };
    let port_ok = match port {
        [] => true,
        [b':', digits @ ..] => {
            (1..=5).contains(&digits.len()) && digits.iter().all(u8::is_ascii_digit)
        }
        _ => false,
    };
    port_ok && matches!(name, b"127.0.0.1" | b"localhost" | b"[::1]")
}

fn is_loopback_name(host: &str) -> bool {
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.eq_ignore_ascii_case("localhost") {
        return true;
    }
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    bare.parse::<std::net::IpAddr>()
        .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn bearer_scheme_is_case_insensitive_and_key_trimmed() {
        let key = Secret::new("sk-1");
        for auth in [
            "Bearer sk-1",
            "bearer sk-1",
            "BEARER sk-1",
            "BeArEr   sk-1 ",
        ] {
            assert!(
                check_key(Some(&key), &headers(&[("authorization", auth)])).is_ok(),
                "{auth}"
            );
        }
        assert!(check_key(Some(&key), &headers(&[("authorization", "Basic sk-1")])).is_err());
        assert!(check_key(Some(&key), &headers(&[("x-api-key", " sk-1 ")])).is_ok());
        assert!(check_key(Some(&key), &headers(&[("authorization", "Bearer sk-2")])).is_err());
    }

    #[test]
    fn loopback_names() {
        for h in [
            "localhost",
            "LocalHost",
            "localhost.",
            "127.0.0.1",
            "127.1.2.3",
            "[::1]",
        ] {
            assert!(is_loopback_name(h), "{h}");
        }
        for h in [
            "evil.example",
            "localhost.evil.example",
            "0.0.0.0",
            "[::]",
            "10.0.0.1",
            "",
        ] {
            assert!(!is_loopback_name(h), "{h}");
        }
    }

    /// The shortcut for common `Host` values accepts only what the full parse accepts.
    #[test]
    fn plain_loopback_hosts_agree_with_the_full_parse() {
        let full = |h: &str| {
            h.parse::<Authority>()
                .is_ok_and(|a| is_loopback_name(a.host()))
        };
        for h in [
            "127.0.0.1:4000",
            "localhost",
            "[::1]:1",
            "127.0.0.1",
            "[::1]",
            "localhost:65535",
        ] {
            assert!(is_plain_loopback_host(h.as_bytes()), "{h}");
            assert!(full(h), "{h}");
        }
        for h in [
            "127.0.0.1:",
            "127.0.0.1:123456",
            "127.0.0.1:80x",
            "localhost.evil:80",
            "evil:80",
            "[::1]x",
            "[::1]:",
            "[::2]:80",
            ":80",
            "",
            "127.0.0.1:80:80",
            "[::1]:80]",
            "x127.0.0.1",
        ] {
            assert!(!is_plain_loopback_host(h.as_bytes()), "{h}");
        }
    }

    #[test]
    fn origins() {
        let ok = |o: &str| is_local_origin(&HeaderValue::from_str(o).unwrap());
        assert!(ok("http://localhost:3000"));
        assert!(ok("https://127.0.0.1"));
        assert!(ok("http://[::1]:8080"));
        assert!(!ok("null"));
        assert!(!ok("https://evil.example"));
        assert!(!ok("http://127.0.0.1.evil.example"));
        assert!(!ok("file://localhost"));
    }

    #[test]
    fn json_content_types() {
        let ok = |t: &str| is_json(&headers(&[("content-type", t)]));
        assert!(ok("application/json"));
        assert!(ok("Application/JSON; charset=utf-8"));
        assert!(!ok("text/plain"));
        assert!(!ok("application/x-www-form-urlencoded"));
        assert!(!ok("application/jsonx"));
        assert!(!is_json(&HeaderMap::new()));
    }
}
