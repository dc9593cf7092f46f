//! The rate-limit headers of an answer to a virtual key (`x-ratelimit-*`, as OpenAI and
//! LiteLLM send them, and `x-llmgw-response-cost`). They come from the counts admission
//! computed anyway, so they cost no extra lookup on the request path.

use axum::http::{HeaderMap, HeaderName, HeaderValue};

/// What admission saw of the tightest rpm and tpm limits among the key's levels.
#[derive(Debug, Clone, Copy, Default)]
pub struct Rate {
    /// (limit, remaining) requests this minute, when some level has an rpm limit.
    pub requests: Option<(u64, u64)>,
    /// (limit, remaining) tokens this minute (the estimates of requests in flight
    /// counted), when some level has a tpm limit.
    pub tokens: Option<(u64, u64)>,
    /// Seconds until the minute windows start over.
    pub reset_s: u64,
}

impl Rate {
    /// Keeps the level with the fewest remaining requests.
    pub(crate) fn requests(&mut self, limit: u64, used: u64) {
        let left = limit.saturating_sub(used);
        if self.requests.is_none_or(|(_, r)| left < r) {
            self.requests = Some((limit, left));
        }
    }

    /// Keeps the level with the fewest remaining tokens.
    pub(crate) fn tokens(&mut self, limit: u64, used: u64) {
        let left = limit.saturating_sub(used);
        if self.tokens.is_none_or(|(_, r)| left < r) {
            self.tokens = Some((limit, left));
        }
    }

    /// Writes `x-ratelimit-{limit,remaining,reset}-{requests,tokens}` for the limits
    /// that exist.
    pub fn write(&self, h: &mut HeaderMap) {
        const NAMES: [[HeaderName; 3]; 2] = [
            [
                HeaderName::from_static("x-ratelimit-limit-requests"),
                HeaderName::from_static("x-ratelimit-remaining-requests"),
                HeaderName::from_static("x-ratelimit-reset-requests"),
            ],
            [
                HeaderName::from_static("x-ratelimit-limit-tokens"),
                HeaderName::from_static("x-ratelimit-remaining-tokens"),
                HeaderName::from_static("x-ratelimit-reset-tokens"),
            ],
        ];
        for (which, names) in [self.requests, self.tokens].into_iter().zip(NAMES) {
            let Some((limit, left)) = which else { continue };
            let [l, r, t] = names;
            h.insert(l, HeaderValue::from(limit));
            h.insert(r, HeaderValue::from(left));
            // OpenAI's form: a duration such as "37s".
            if let Ok(v) = HeaderValue::try_from(format!("{}s", self.reset_s)) {
                h.insert(t, v);
            }
        }
    }
}

/// `x-llmgw-response-cost`: USD, as LiteLLM's header.
pub fn write_cost(h: &mut HeaderMap, nanos: i64) {
    if let Ok(v) = HeaderValue::try_from(format!("{}", super::nanos_to_usd(nanos))) {
        h.insert(HeaderName::from_static("x-llmgw-response-cost"), v);
    }
}
