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
        let n = 3 * (usize::from(self.requests.is_some()) + usize::from(self.tokens.is_some()));
        if n == 0 {
            return;
        }
        // One growth of the map for all of them (and the cost header) instead of several.
        h.reserve(n + 1);
        for (which, names) in [self.requests, self.tokens].into_iter().zip(NAMES) {
            let Some((limit, left)) = which else { continue };
            let [l, r, t] = names;
            h.insert(l, HeaderValue::from(limit));
            h.insert(r, HeaderValue::from(left));
            // OpenAI's form: a duration such as "37s" (static: no formatting per answer).
            let i = usize::try_from(self.reset_s).unwrap_or(60).min(60);
            h.insert(t, HeaderValue::from_static(RESET[i]));
        }
    }
}

/// "0s" to "60s": the reset header's values.
const RESET: [&str; 61] = [
    "0s", "1s", "2s", "3s", "4s", "5s", "6s", "7s", "8s", "9s", "10s", "11s", "12s", "13s", "14s",
    "15s", "16s", "17s", "18s", "19s", "20s", "21s", "22s", "23s", "24s", "25s", "26s", "27s",
    "28s", "29s", "30s", "31s", "32s", "33s", "34s", "35s", "36s", "37s", "38s", "39s", "40s",
    "41s", "42s", "43s", "44s", "45s", "46s", "47s", "48s", "49s", "50s", "51s", "52s", "53s",
    "54s", "55s", "56s", "57s", "58s", "59s", "60s",
];

/// `x-llmgw-response-cost`: USD as a decimal number (LiteLLM's header), written from the
/// nano-dollars with integer digits only (exact, and no float formatting per answer).
pub fn write_cost(h: &mut HeaderMap, nanos: i64) {
    let n = nanos.max(0).unsigned_abs();
    let (whole, mut frac) = (n / 1_000_000_000, n % 1_000_000_000);
    let mut buf = [0u8; 32];
    let mut end = buf.len();
    let mut digits = 9;
    // Fraction digits without trailing zeros.
    while digits > 0 && frac % 10 == 0 && frac > 0 {
        frac /= 10;
        digits -= 1;
    }
    if frac > 0 {
        for _ in 0..digits {
            end -= 1;
            buf[end] = b'0' + (frac % 10) as u8;
            frac /= 10;
        }
        end -= 1;
        buf[end] = b'.';
    }
    let mut w = whole;
    loop {
        end -= 1;
        buf[end] = b'0' + (w % 10) as u8;
        w /= 10;
        if w == 0 {
            break;
        }
    }
    if let Ok(v) = HeaderValue::from_bytes(&buf[end..]) {
        h.insert(HeaderName::from_static("x-llmgw-response-cost"), v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cost_is_written_exactly() {
        for (nanos, text) in [
            (0, "0"),
            (6_900_000, "0.0069"),
            (1_000_000_000, "1"),
            (12_345_678_901, "12.345678901"),
            (1, "0.000000001"),
        ] {
            let mut h = HeaderMap::new();
            write_cost(&mut h, nanos);
            assert_eq!(h["x-llmgw-response-cost"], text, "{nanos}");
        }
        assert_eq!(RESET[37], "37s");
    }
}
