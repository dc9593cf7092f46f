//! Token counting for context-window routing.
//!
//! Counting is only done when it can matter, and never on the async workers:
//! - a body shorter (in bytes) than the smallest window in its group cannot exceed it,
//!   since every token is at least one byte ([`upper_bound`]);
//! - a body with more than [`MAX_BYTES_PER_TOKEN`] bytes per token of the largest window
//!   exceeds every window without counting (real text averages 2–5 bytes per token);
//! - otherwise tiktoken's cl100k encoding (an estimate that is close for most open models
//!   too) counts on the low-priority [`llmgw_core::heavy`] pool, in small pieces, and
//!   stops once the count passes the largest window. Prompts longer than
//!   [`SAMPLE_ABOVE`] are not tokenized whole: [`SAMPLES`] pieces spread over the text
//!   give its tokens per byte (within a few per cent for real text), so an 8 MB prompt
//!   costs the tokenizer what a 64 KiB one does. A misjudged prompt near the window's
//!   edge still ends well: the upstream's context-length error takes the same
//!   context-window fallback. A request that finds the pool's short queue full is
//!   estimated from its length instead, so a flood of large prompts neither queues up
//!   memory nor takes the CPU from other requests.

use llmgw_wire::request::ClientRequest;
use std::sync::OnceLock;

/// More bytes per token than any real prompt has on average: a body this much larger
/// than a window does not fit it, whatever it says.
pub const MAX_BYTES_PER_TOKEN: u64 = 8;
/// Prompt text longer than this is estimated from samples instead of counted whole.
pub const SAMPLE_ABOVE: usize = 64 * 1024;
/// Pieces tokenized to estimate a long prompt ([`SAMPLES`] × [`PIECE`] bytes at most).
pub const SAMPLES: usize = 16;
/// Text is tokenized in pieces of at most this many bytes (BPE is quadratic in the
/// length of a run without spaces, so pieces keep every call short).
const PIECE: usize = 4096;

static BPE: OnceLock<Option<tiktoken_rs::CoreBPE>> = OnceLock::new();

fn bpe() -> Option<&'static tiktoken_rs::CoreBPE> {
    BPE.get_or_init(|| tiktoken_rs::cl100k_base().ok()).as_ref()
}

/// Tokens in `piece`: the only place text meets the tokenizer.
fn tokens_in(bpe: &tiktoken_rs::CoreBPE, piece: &str) -> u64 {
    #[cfg(test)]
    tests::TOKENIZED.with(|n| n.set(n.get() + piece.len()));
    bpe.encode_ordinary(piece).len() as u64
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
    let body = req.body.clone();
    llmgw_core::heavy::run(move || count_blocking(&body, limit))
        .await
        // The pool's queue is full: the length has to do.
        .unwrap_or_else(|_| rough(req))
}

/// Tokens counted for an image (its bytes are not text): about what a model charges for
/// a mid-sized image.
pub const IMAGE_TOKENS: u64 = 1000;

/// Counts every string in `messages`, `prompt`, `input`, `tools`, `system`,
/// `instructions` and `functions` (chat, completions, Anthropic and Responses bodies),
/// plus a few tokens of framing per message and [`IMAGE_TOKENS`] per image; stops early
/// past `limit`, and estimates text longer than [`SAMPLE_ABOVE`] from samples.
fn count_blocking(body: &[u8], limit: u64) -> u64 {
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
    if total > SAMPLE_ABOVE {
        return framing.saturating_add(estimate(bpe, &texts, total));
    }
    let mut n = framing;
    for piece in texts.iter().flat_map(|t| pieces(t)) {
        n += tokens_in(bpe, piece);
        if n > limit {
            return n;
        }
    }
    n
}

/// Tokens of `texts` (`total` bytes) from [`SAMPLES`] pieces at evenly spaced offsets:
/// their tokens per byte times the length.
fn estimate(bpe: &tiktoken_rs::CoreBPE, texts: &[&str], total: usize) -> u64 {
    let stride = (total / SAMPLES).max(1);
    let (mut tokens, mut bytes) = (0u64, 0usize);
    let (mut start_of_text, mut next) = (0usize, 0usize);
    for text in texts {
        let end_of_text = start_of_text + text.len();
        while next < end_of_text {
            let mut at = next - start_of_text;
            while !text.is_char_boundary(at) {
                at += 1;
            }
            if let Some(piece) = pieces(&text[at..]).next() {
                tokens += tokens_in(bpe, piece);
                bytes += piece.len();
            }
            next += stride;
        }
        start_of_text = end_of_text;
    }
    let per_byte = tokens as f64 / bytes.max(1) as f64;
    (total as f64 * per_byte).ceil() as u64
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
    use llmgw_wire::request::Endpoint;
    use std::cell::Cell;

    thread_local! {
        /// Bytes this thread has handed to the tokenizer ([`tokens_in`]): what counting
        /// cost, measured in work rather than in time.
        pub(super) static TOKENIZED: Cell<usize> = const { Cell::new(0) };
    }

    /// Runs `f` and returns its result with the bytes it tokenized on this thread.
    fn tokenized<T>(f: impl FnOnce() -> T) -> (T, usize) {
        let before = TOKENIZED.with(Cell::get);
        let out = f();
        (out, TOKENIZED.with(Cell::get) - before)
    }

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
        let n = count_blocking(body.to_string().as_bytes(), u64::MAX);
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
    fn counting_stops_past_the_limit_and_long_prompts_are_sampled() {
        let short = chat(&"lorem ipsum dolor sit amet ".repeat(2_000));
        let exact = count_blocking(&short.body, u64::MAX);
        assert!(exact > 10_000, "{exact}");
        let early = count_blocking(&short.body, 1000);
        assert!((1001..1000 + 2 * PIECE as u64).contains(&early), "{early}");
        // A long prompt: the sampled estimate is within a few per cent of the exact
        // count, found in a fraction of the time.
        let text =
            "The quick brown fox, in 2024, jumped over 13 lazy dogs; héllo wörld! ".repeat(40_000);
        let long = chat(&text);
        let bpe = bpe().unwrap();
        let (whole, all_bytes) =
            tokenized(|| pieces(&text).map(|p| tokens_in(bpe, p)).sum::<u64>());
        let (guess, sampled_bytes) = tokenized(|| count_blocking(&long.body, u64::MAX));
        assert!(
            guess > whole * 97 / 100 && guess < whole * 103 / 100,
            "{guess} vs {whole}"
        );
        // Sampling tokenizes at most SAMPLES pieces: a small fraction of the whole text
        // (counted in bytes given to the tokenizer, not in time).
        assert_eq!(all_bytes, text.len());
        assert!(
            sampled_bytes <= SAMPLES * PIECE && sampled_bytes * 20 < all_bytes,
            "sampling tokenized {sampled_bytes} bytes of {all_bytes}"
        );
    }

    #[test]
    fn sampling_reaches_every_part_of_a_multi_message_prompt() {
        // Cheap text first, expensive (many tokens per byte) text last: samples must
        // land in both, so the estimate sees the expensive half.
        let cheap = "a".repeat(100_000);
        let dense = "1 2 3 4 5 6 7 8 9 ".repeat(6_000);
        let body = serde_json::json!({"model": "m", "messages": [
            {"role": "user", "content": cheap},
            {"role": "user", "content": dense},
        ]});
        let n = count_blocking(body.to_string().as_bytes(), u64::MAX);
        let bpe = bpe().unwrap();
        let exact: u64 = [cheap.as_str(), dense.as_str()]
            .iter()
            .flat_map(|t| pieces(t))
            .map(|p| bpe.encode_ordinary(p).len() as u64)
            .sum();
        assert!(n > exact * 8 / 10 && n < exact * 12 / 10, "{n} vs {exact}");
    }

    #[tokio::test]
    async fn far_too_large_bodies_are_not_tokenized() {
        let req = chat(&"x".repeat(1 << 20));
        let lower = req.body.len() as u64 / MAX_BYTES_PER_TOKEN;
        assert!(lower > 1000);
        // Counted, this body would be tokenized and give another number…
        let (counted, bytes) = tokenized(|| count_blocking(&req.body, 1000));
        assert!(
            bytes > 0 && counted != lower,
            "{counted} tokens, {bytes} bytes"
        );
        // … but the answer is the length bound itself: nothing was parsed or tokenized.
        assert_eq!(count(&req, 1000).await, lower);
    }
}
