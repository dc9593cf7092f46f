//! Keeping secrets out of what clients and logs see.
//!
//! An `api_base` may carry credentials (`http://user:pass@host/v1`): it is shown with the
//! userinfo replaced ([`userinfo`]). An upstream error may quote the request it got,
//! headers included, so every text from an upstream that is passed on has the keys the
//! gateway knows (provider keys, the master key, `api_base` passwords) replaced
//! ([`Secrets`]).

use base64::Engine as _;
use std::borrow::Cow;

/// What replaces a secret.
const MASK: &str = "[redacted]";
/// Shorter secrets are not searched for: masking every occurrence of a 1–3 character
/// string would garble messages and such a key protects nothing anyway.
const MIN_SECRET: usize = 4;

/// `url` with any `user:password@` replaced by `***@`.
pub fn userinfo(url: &str) -> Cow<'_, str> {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
        return Cow::Borrowed(url);
    };
    let rest = &url[scheme_end..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => Cow::Owned(format!("{}***{}", &url[..scheme_end], &rest[at..])),
        None => Cow::Borrowed(url),
    }
}

/// The secrets to mask in upstream text.
#[derive(Debug, Default, Clone)]
pub struct Secrets(Vec<String>);

impl Secrets {
    /// Adds one secret (ignored when too short to be worth masking).
    pub fn add(&mut self, secret: &str) {
        let s = secret.trim();
        if s.len() >= MIN_SECRET && !self.0.iter().any(|x| x == s) {
            self.0.push(s.to_string());
            // Longest first, so a key that contains another is masked whole.
            self.0.sort_by_key(|x| std::cmp::Reverse(x.len()));
        }
    }

    /// Adds the credentials of an `api_base` with userinfo: the password, and the
    /// `Authorization: Basic` value made from it (what an echoing upstream would show).
    pub fn add_userinfo(&mut self, url: &str) {
        let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
            return;
        };
        let rest = &url[scheme_end..];
        let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
        let Some(at) = authority.rfind('@') else {
            return;
        };
        let info = &authority[..at];
        if let Some((_, password)) = info.split_once(':') {
            self.add(password);
        }
        self.add(&base64::engine::general_purpose::STANDARD.encode(info));
        self.add(info);
    }

    /// True when no secret is known (nothing to mask).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// `text` with every known secret masked.
    pub fn scrub<'a>(&self, text: &'a str) -> Cow<'a, str> {
        let mut out = Cow::Borrowed(text);
        for s in &self.0 {
            if out.contains(s.as_str()) {
                out = Cow::Owned(out.replace(s.as_str(), MASK));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn userinfo_is_hidden() {
        assert_eq!(
            userinfo("http://user:pa%40ss@host:8000/v1"),
            "http://***@host:8000/v1"
        );
        assert_eq!(userinfo("https://k@h/v1?x=a@b"), "https://***@h/v1?x=a@b");
        assert_eq!(userinfo("http://host/v1/a@b"), "http://host/v1/a@b");
        assert_eq!(userinfo("no scheme@all"), "no scheme@all");
        assert_eq!(userinfo("http://a:b@"), "http://***@");
    }

    #[test]
    fn known_secrets_are_masked() {
        let mut s = Secrets::default();
        s.add("sk-provider-123456");
        s.add("abc"); // too short: ignored
        s.add_userinfo("http://alice:s3cret-pw@host/v1");
        let basic = base64::engine::general_purpose::STANDARD.encode("alice:s3cret-pw");
        let text = format!(
            "headers: authorization=Bearer sk-provider-123456, x=abc, basic {basic}, pw s3cret-pw"
        );
        let clean = s.scrub(&text);
        assert!(!clean.contains("sk-provider-123456"), "{clean}");
        assert!(!clean.contains("s3cret-pw"), "{clean}");
        assert!(!clean.contains(&basic), "{clean}");
        assert!(clean.contains("x=abc"), "{clean}");
        assert!(matches!(s.scrub("nothing here"), Cow::Borrowed(_)));
    }
}
