//! The records the key/spend store keeps, and what they are made of: virtual keys and
//! teams with their [`Limits`], [`SpendRow`]s; money in nano-dollars, budget periods,
//! key generation and hashing. No I/O: `store` persists these, `keys` enforces them.
//!
//! - A key is `sk-llmgw-<32 random base62 chars>`, shown once when created. Only its
//!   SHA-256 is stored ([`KeyRecord::hash`]); its id is the first 16 hex digits of that
//!   hash (what admin calls and spend rows name).
//! - Money is counted in nano-dollars (`i64`): a price of $0.15 per million tokens is
//!   150 nano-dollars per token, so per-request costs add up exactly.
//! - Budget periods: with `budget_duration` set, period `k` of a key starts at
//!   `anchor + k * duration` (`anchor` = when the budget was set), so every replica and
//!   every restart agrees on which period a spend row belongs to without a reset job.

use serde::{Deserialize, Deserializer, Serialize};
use sha2::{Digest, Sha256};

/// Every virtual key starts with this.
pub const KEY_PREFIX: &str = "sk-llmgw-";

/// Nano-dollars per US dollar.
pub const NANOS_PER_USD: f64 = 1e9;

/// Largest budget accepted (USD): far beyond any real one, far below `i64` nano-dollars.
pub const MAX_USD: f64 = 1e9;

/// Longest budget period or key lifetime accepted: ten years.
pub const MAX_PERIOD_SECS: u64 = 10 * 365 * 86_400;

/// What a key or a team may do. `None` = unlimited.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Limits {
    /// Allowed model groups (exact names or `*` wildcards); empty = every group.
    #[serde(default)]
    pub models: Vec<String>,
    /// USD per budget period (or in total without `budget_duration`).
    pub max_budget: Option<f64>,
    /// USD per budget period past which an alert is sent (`soft_budget`; nothing is
    /// refused).
    #[serde(default)]
    pub soft_budget: Option<f64>,
    /// Budget period in seconds.
    pub budget_duration: Option<u64>,
    /// Unix seconds the budget periods count from.
    #[serde(default)]
    pub budget_anchor: u64,
    pub rpm: Option<u64>,
    pub tpm: Option<u64>,
    pub max_parallel: Option<u64>,
    #[serde(default)]
    pub blocked: bool,
    /// The fair queue's class for requests that name none (0–255, higher first).
    #[serde(default)]
    pub priority: Option<u8>,
    /// The highest class a request may ask for; higher asks are lowered to it.
    #[serde(default)]
    pub max_priority: Option<u8>,
    /// Share of a busy group relative to other flows (1 = everyone's default).
    #[serde(default)]
    pub weight: Option<u32>,
}

/// A virtual key as stored (never the key itself).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct KeyRecord {
    /// First 16 hex digits of `hash`.
    pub id: String,
    /// SHA-256 of the key, hex.
    pub hash: String,
    /// `sk-llmgw-…` plus the key's last four characters, to recognise it in lists.
    pub hint: String,
    pub alias: Option<String>,
    pub user_id: Option<String>,
    pub team_id: Option<String>,
    #[serde(flatten)]
    pub limits: Limits,
    /// Limits for each end user of the key (the request's OpenAI `user`, Anthropic's
    /// `metadata.user_id`): budget per period, rpm, tpm. `None`: end users are not limited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_user: Option<Limits>,
    /// Unix seconds after which the key is refused.
    pub expires_at: Option<u64>,
    #[serde(default)]
    pub metadata: serde_json::Value,
    pub created_at: u64,
}

/// A team: keys with `team_id` share its budget and limits on top of their own.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TeamRecord {
    pub id: String,
    pub alias: Option<String>,
    #[serde(flatten)]
    pub limits: Limits,
    #[serde(default)]
    pub metadata: serde_json::Value,
    pub created_at: u64,
}

/// A user (LiteLLM's level between key and team): keys with `user_id` share its budget
/// and limits on top of their own and their team's.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct UserRecord {
    pub id: String,
    pub alias: Option<String>,
    #[serde(flatten)]
    pub limits: Limits,
    #[serde(default)]
    pub metadata: serde_json::Value,
    pub created_at: u64,
}

impl UserRecord {
    pub fn name(&self) -> &str {
        self.alias.as_deref().unwrap_or(&self.id)
    }
}

impl KeyRecord {
    /// The key's name in messages: its alias, else its hint.
    pub fn name(&self) -> &str {
        self.alias.as_deref().unwrap_or(&self.hint)
    }
}

impl TeamRecord {
    pub fn name(&self) -> &str {
        self.alias.as_deref().unwrap_or(&self.id)
    }
}

impl Limits {
    /// The budget in nano-dollars.
    pub fn budget_nanos(&self) -> Option<i64> {
        self.max_budget.map(usd_to_nanos)
    }

    /// The current budget period: `(index, start unix s, end unix s)`; one endless period
    /// (index 0) without `budget_duration`.
    pub fn period(&self, now_s: u64) -> (u64, u64, Option<u64>) {
        match self.budget_duration {
            Some(d) if d > 0 => {
                let since = now_s.saturating_sub(self.budget_anchor);
                let k = since / d;
                let start = self.budget_anchor.saturating_add(k.saturating_mul(d));
                (k, start, Some(start.saturating_add(d)))
            }
            _ => (0, 0, None),
        }
    }

    /// True when `model` is one of the allowed groups.
    pub fn allows(&self, model: &str) -> bool {
        self.models.is_empty() || self.models.iter().any(|p| wildcard(p, model))
    }
}

/// `*` matches any run of characters; everything else matches itself.
pub fn wildcard(pattern: &str, s: &str) -> bool {
    if !pattern.contains('*') {
        return pattern == s;
    }
    let parts: Vec<&str> = pattern.split('*').collect();
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !s.starts_with(first) || s.len() < first.len() + last.len() || !s.ends_with(last) {
        return false;
    }
    let mut rest = &s[first.len()..s.len() - last.len()];
    for mid in &parts[1..parts.len() - 1] {
        match rest.find(mid) {
            Some(i) => rest = &rest[i + mid.len()..],
            None => return false,
        }
    }
    true
}

/// USD to nano-dollars (callers validate the range first).
pub fn usd_to_nanos(usd: f64) -> i64 {
    (usd.clamp(0.0, MAX_USD) * NANOS_PER_USD).round() as i64
}

pub fn nanos_to_usd(n: i64) -> f64 {
    n as f64 / NANOS_PER_USD
}

/// A new random key (190 bits from the OS's CSPRNG).
pub fn generate_key() -> Result<String, getrandom::Error> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut out = String::with_capacity(KEY_PREFIX.len() + 32);
    out.push_str(KEY_PREFIX);
    while out.len() < KEY_PREFIX.len() + 32 {
        let mut buf = [0u8; 64];
        getrandom::getrandom(&mut buf)?;
        for b in buf {
            // 62 * 4 = 248: reject the top values so every character is equally likely.
            if b < 248 && out.len() < KEY_PREFIX.len() + 32 {
                out.push(ALPHABET[usize::from(b % 62)] as char);
            }
        }
    }
    Ok(out)
}

/// SHA-256 of a key.
pub fn hash_key(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// Parses 64 hex digits.
pub fn unhex32(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// `sk-llmgw-…abcd`.
pub fn hint(key: &str) -> String {
    let tail: String = key
        .chars()
        .rev()
        .take(4)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    format!("{KEY_PREFIX}…{tail}")
}

/// Parses a period or lifetime (`"30s"`, `"5m"`, `"1h"`, `"30d"`, `"2w"`, or a number of
/// seconds): whole seconds, at least 1 s, at most ten years.
pub fn parse_period(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let bad = || format!("invalid duration {s:?}: expected e.g. \"30s\", \"1h\", \"1d\", \"30d\"");
    if num.is_empty() || num.len() > 12 {
        return Err(bad());
    }
    let n: u64 = num.parse().map_err(|_| bad())?;
    let mult: u64 = match unit.trim() {
        "" | "s" => 1,
        "m" | "min" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        "mo" => 30 * 86_400,
        _ => return Err(bad()),
    };
    let secs = n
        .checked_mul(mult)
        .filter(|&v| v <= MAX_PERIOD_SECS)
        .ok_or_else(|| format!("duration {s:?} is longer than ten years"))?;
    if secs == 0 {
        return Err(format!("duration {s:?} must be at least 1s"));
    }
    Ok(secs)
}

/// Seconds as the shortest exact `30s` / `5m` / `1h` / `30d`.
pub fn format_period(secs: u64) -> String {
    for (unit, n) in [("d", 86_400), ("h", 3600), ("m", 60)] {
        if secs >= n && secs.is_multiple_of(n) {
            return format!("{}{unit}", secs / n);
        }
    }
    format!("{secs}s")
}

/// Checks a USD amount from outside.
pub fn check_usd(what: &str, v: f64) -> Result<f64, String> {
    if v.is_finite() && (0.0..=MAX_USD).contains(&v) {
        Ok(v)
    } else {
        Err(format!(
            "{what} must be a number of USD between 0 and {MAX_USD}, got {v}"
        ))
    }
}

/// Unix seconds now.
pub fn now_s() -> u64 {
    llmgw_router::now_ms() / 1000
}

/// For patch fields: absent = leave alone, `null` = clear, a value = set.
pub fn double_option<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

/// One request's spend row: who, which model, tokens, cost; never the content.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SpendRow {
    pub request_id: String,
    /// Unix ms when the request finished.
    pub ts_ms: i64,
    /// The key's id; empty for the master key.
    pub key_id: String,
    /// The key's team; empty for none.
    pub team_id: String,
    /// The key's user; empty for none.
    #[serde(default)]
    pub user_id: String,
    /// The end user the request named (OpenAI `user`, Anthropic `metadata.user_id`);
    /// empty for none.
    #[serde(default)]
    pub end_user: String,
    pub model_group: String,
    /// The deployment that answered (`cache` for a cache hit).
    pub deployment: String,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    pub cost_nanos: i64,
    pub latency_ms: i64,
    pub status: i32,
    pub cache_hit: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_random_and_well_formed() {
        let a = generate_key().unwrap();
        let b = generate_key().unwrap();
        assert_ne!(a, b);
        assert!(a.starts_with(KEY_PREFIX) && a.len() == KEY_PREFIX.len() + 32);
        assert!(a[KEY_PREFIX.len()..]
            .bytes()
            .all(|c| c.is_ascii_alphanumeric()));
        let h = hash_key(&a);
        assert_eq!(unhex32(&hex(&h)), Some(h));
        assert!(hint(&a).ends_with(&a[a.len() - 4..]));
    }

    #[test]
    fn wildcards() {
        assert!(wildcard("local", "local"));
        assert!(!wildcard("local", "local2"));
        assert!(wildcard("gpt-*", "gpt-4o"));
        assert!(wildcard("*", "anything"));
        assert!(wildcard("a*b*c", "axxbyyc"));
        assert!(!wildcard("a*b*c", "axxcyyb"));
        assert!(!wildcard("ab*ba", "aba"));
        let l = Limits {
            models: vec!["local".into(), "claude-*".into()],
            ..Limits::default()
        };
        assert!(l.allows("claude-sonnet") && !l.allows("gpt-4o"));
        assert!(Limits::default().allows("x"));
    }

    #[test]
    fn periods() {
        assert_eq!(parse_period("30s"), Ok(30));
        assert_eq!(parse_period("1h"), Ok(3600));
        assert_eq!(parse_period("30d"), Ok(30 * 86400));
        assert_eq!(parse_period("45"), Ok(45));
        for bad in [
            "0s",
            "-1s",
            "1.5h",
            "3 fortnights",
            "",
            "99999999999999999999d",
            "4000d",
        ] {
            assert!(parse_period(bad).is_err(), "{bad}");
        }
        assert_eq!(format_period(30), "30s");
        assert_eq!(format_period(86400 * 30), "30d");
        assert_eq!(format_period(90), "90s");
        let l = Limits {
            budget_duration: Some(30),
            budget_anchor: 1000,
            ..Limits::default()
        };
        assert_eq!(l.period(1000), (0, 1000, Some(1030)));
        assert_eq!(l.period(1075), (2, 1060, Some(1090)));
        assert_eq!(Limits::default().period(5), (0, 0, None));
    }

    #[test]
    fn money_is_exact_in_nanos() {
        assert_eq!(usd_to_nanos(0.01), 10_000_000);
        assert_eq!(usd_to_nanos(f64::NAN.max(0.0)), 0);
        assert!(check_usd("max_budget", -1.0).is_err());
        assert!(check_usd("max_budget", f64::INFINITY).is_err());
    }
}
