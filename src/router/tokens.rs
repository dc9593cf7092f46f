//! Token counting for context-window routing.
//!
//! Counting is only done when it can matter, and never on the async workers:
//! - a body shorter (in bytes) than the smallest window in its group cannot exceed it,
//!   since every token is at least one byte ([`upper_bound`]);
//! - a body with more than [`MAX_BYTES_PER_TOKEN`] bytes per token of the largest window
//!   exceeds every window without counting (real text averages 2–5 bytes per token);
//! - otherwise tiktoken's cl100k encoding (an estimate that is close for most open models
//!   too) counts on the blocking pool, a few requests at a time, in small pieces: it
//!   stops once the count passes the largest window, and after [`TIME_CAP`] it
//!   extrapolates from what it has counted. An 8 MB body thus costs a worker nothing and
//!   the tokenizer at most a few hundred milliseconds.

use crate::request::ClientRequest;
use std::sync::OnceLock;
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

/// More bytes per token than any real prompt has on average: a body this much larger
/// than a window does not fit it, whatever it says.
pub const MAX_BYTES_PER_TOKEN: u64 = 8;
/// Tokenizer time one request may use before the rest is extrapolated.
pub const TIME_CAP: Duration = Duration::from_millis(200);
/// Text is tokenized in pieces of at most this many bytes (BPE is quadratic in the
/// length of a run without spaces, so pieces keep every call short).
const PIECE: usize = 4096;

static BPE: OnceLock<Option<tiktoken_rs::CoreBPE>> = OnceLock::new();

fn bpe() -> Option<&'static tiktoken_rs::CoreBPE> {
    BPE.get_or_init(|| tiktoken_rs::cl100k_base().ok()).as_ref()
}

/// Counts running at once: half the cores, so the tokenizer never takes them all.
fn permits() -> &'static Semaphore {
    static SEM: OnceLock<Semaphore> = OnceLock::new();
    SEM.get_or_init(|| {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        Semaphore::new((cores / 2).max(1))
    })
}

/// A cheap upper bound on the request's tokens: its byte length.
pub fn upper_bound(req: &ClientRequest) -> u64 {
    req.body.len() as u64
}

/// A rough estimate for rate limiting (≈ 4 bytes per token), with no tokenizer call.
pub fn rough(req: &ClientRequest) -> u64 {
    (req.body.len() as u64 / 4).max(1)
}

/// The prompt's tokens, counted exactly enough to compare with windows up to `limit`:
/// any result above `limit` only means "more than `limit`".
pub async fn count(req: &ClientRequest, limit: u64) -> u64 {
    let lower = req.body.len() as u64 / MAX_BYTES_PER_TOKEN;
    if lower > limit {
        return lower;
    }
    let Ok(_permit) = permits().acquire().await else {
        return rough(req);
    };
    let body = req.body.clone();
    tokio::task::spawn_blocking(move || count_blocking(&body, limit, TIME_CAP))
        .await
        .unwrap_or_else(|_| rough(req))
}

/// Tokens counted for an image (its bytes are not text): about what a model charges for
/// a mid-sized image.
pub const IMAGE_TOKENS: u64 = 1000;

/// Counts every string in `messages`, `prompt`, `input`, `tools`, `system`,
/// `instructions` and `functions` (chat, completions, Anthropic and Responses bodies),
/// plus a few tokens of framing per message and [`IMAGE_TOKENS`] per image; stops early
/// past `limit` and extrapolates after `cap`.
fn count_blocking(body: &[u8], limit: u64, cap: Duration) -> u64 {
    let rough = (body.len() as u64 / 4).max(1);
    let (Ok(v), Some(bpe)) = (serde_json::from_slice::<serde_json::Value>(body), bpe()) else {
        return rough;
    };
    let mut texts: Vec<&str> = Vec::new();
    let mut framing = 0u64;
    let mut images = 0u64;
    for key in [
        "messages",
        "prompt",
        "input",
        "tools",
        "system",
        "instructions",
        "functions",
    ] {
        if let Some(part) = v.get(key) {
            if let Some(msgs) = part.as_array() {
                framing += 4 * msgs.len() as u64;
            }
            collect_strings(part, &mut texts, &mut images);
        }
    }
    framing = framing.saturating_add(images.saturating_mul(IMAGE_TOKENS));
    let total: usize = texts.iter().map(|t| t.len()).sum();
    let start = Instant::now();
    let (mut n, mut done) = (framing, 0usize);
    for piece in texts.iter().flat_map(|t| pieces(t)) {
        n += bpe.encode_ordinary(piece).len() as u64;
        done += piece.len();
        if n > limit {
            return n;
        }
        if done >= PIECE && start.elapsed() > cap {
            let left = total.saturating_sub(done) as u64;
            let per_byte = (n - framing) as f64 / done.max(1) as f64;
            return n + (left as f64 * per_byte).ceil() as u64;
        }
    }
    n
}

/// `text` cut into pieces of at most [`PIECE`] bytes, at a whitespace when there is one
/// near the end, else at a character boundary. An empty text is one empty piece.
fn pieces(text: &str) -> impl Iterator<Item = &str> {
    let mut rest = Some(text);
    std::iter::from_fn(move || {
        let r = rest?;
        if r.len() <= PIECE {
            rest = None;
            return Some(r);
        }
        let mut end = PIECE;
        while !r.is_char_boundary(end) {
            end -= 1;
        }
        if let Some(ws) = r[..end]
            .rfind(char::is_whitespace)
            .filter(|&i| i > PIECE / 2)
        {
            end = ws;
        }
        let (head, tail) = r.split_at(end);
        rest = Some(tail);
        Some(head)
    })
}

/// The strings of `v`, except images (image blocks and parts of every API, `data:`
/// URLs), which are counted in `images`.
fn collect_strings<'a>(v: &'a serde_json::Value, out: &mut Vec<&'a str>, images: &mut u64) {
    use serde_json::Value;
    match v {
        Value::String(s) if s.starts_with("data:") => *images += 1,
        Value::String(s) => out.push(s),
        Value::Array(a) => a.iter().for_each(|x| collect_strings(x, out, images)),
        Value::Object(o) => {
            let kind = o.get("type").and_then(Value::as_str);
            if matches!(kind, Some("image" | "image_url" | "input_image")) {
                *images += 1;
            } else {
                o.values().for_each(|x| collect_strings(x, out, images));
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::Endpoint;

    fn chat(content: &str) -> ClientRequest {
        let body =
            serde_json::json!({"model": "m", "messages": [{"role": "user", "content": content}]});
        ClientRequest::parse(Endpoint::ChatCompletions, body.to_string().into()).unwrap()
    }

    #[tokio::test]
    async fn counts_message_text() {
        let req = chat(&"hello world ".repeat(500));
        let n = count(&req, u64::MAX).await;
        assert!((900..1200).contains(&n), "{n}");
        assert!(n <= upper_bound(&req));
    }

    #[test]
    fn images_count_as_images_not_as_base64() {
        let data = format!("data:image/png;base64,{}", "A".repeat(200_000));
        let body = serde_json::json!({"model": "m", "messages": [{"role": "user", "content": [
            {"type": "text", "text": "what is this"},
            {"type": "image_url", "image_url": {"url": data}}]}],
            "system": [{"type": "image", "source": {"type": "base64", "data": "QUJD"}}]});
        let n = count_blocking(
            body.to_string().as_bytes(),
            u64::MAX,
            Duration::from_secs(60),
        );
        assert!(
            (2 * IMAGE_TOKENS..2 * IMAGE_TOKENS + 20).contains(&n),
            "{n}"
        );
    }

    #[test]
    fn pieces_cover_the_text_and_stay_small() {
        for text in [
            String::new(),
            "a".repeat(10_000),
            "héllo wörld ".repeat(2_000),
            "日本語".repeat(3_000),
        ] {
            let parts: Vec<&str> = pieces(&text).collect();
            assert_eq!(parts.concat(), text);
            assert!(parts.iter().all(|p| p.len() <= PIECE));
        }
    }

    #[test]
    fn counting_stops_past_the_limit_and_after_the_time_cap() {
        let req = chat(&"lorem ipsum dolor sit amet ".repeat(40_000));
        let exact = count_blocking(&req.body, u64::MAX, Duration::from_secs(600));
        assert!(exact > 200_000, "{exact}");
        let early = count_blocking(&req.body, 1000, Duration::from_secs(600));
        assert!((1001..1000 + 2 * PIECE as u64).contains(&early), "{early}");
        // With no time at all, the first piece is extrapolated to the whole text.
        let guess = count_blocking(&req.body, u64::MAX, Duration::ZERO);
        assert!(
            guess > exact * 9 / 10 && guess < exact * 11 / 10,
            "{guess} vs {exact}"
        );
    }

    #[tokio::test]
    async fn far_too_large_bodies_are_not_tokenized() {
        let req = chat(&"x".repeat(1 << 20));
        let t = Instant::now();
        assert!(count(&req, 1000).await > 1000);
        assert!(t.elapsed() < Duration::from_millis(50), "{:?}", t.elapsed());
    }
}
