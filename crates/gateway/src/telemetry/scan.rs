//! Reading the few values a span needs out of request and answer bodies without parsing
//! them whole: `"key": value` pairs found by searching for the quoted key. Inside a JSON
//! string every `"` is escaped, so `"key":` only ever matches a real key (possibly a
//! nested one: callers pick the first or every match as suits the field).

use super::span::MAX_CONTENT;
use llmgw_wire::request::Endpoint;
use memchr::memmem::Finder;
use serde::Deserialize;
use serde_json::value::RawValue;
use std::sync::LazyLock;

/// Longest string value returned by [`strings`] (a model id, a finish reason).
const MAX_VALUE: usize = 256;

/// A key searched for: `"name"`, its searcher built once.
pub(crate) struct Key {
    len: usize,
    finder: LazyLock<Finder<'static>>,
}

macro_rules! keys {
    ($($name:ident = $key:literal;)*) => {$(
        pub(crate) static $name: Key = Key {
            len: $key.len() + 2,
            finder: LazyLock::new(|| Finder::new(concat!("\"", $key, "\"").as_bytes())),
        };
    )*};
}

keys! {
    MODEL = "model";
    FINISH_REASON = "finish_reason";
    STOP_REASON = "stop_reason";
    STATUS = "status";
    TEMPERATURE = "temperature";
    CACHED_TOKENS = "cached_tokens";
    CACHE_READ_INPUT_TOKENS = "cache_read_input_tokens";
    CONTENT = "content";
    USAGE = "usage";
    TEXT = "text";
    DELTA = "delta";
}

/// Where the value of each `"key":` in `b` starts (whitespace skipped).
fn values<'a>(b: &'a [u8], key: &'static Key) -> impl Iterator<Item = &'a [u8]> + 'a {
    let mut from = 0;
    std::iter::from_fn(move || loop {
        let at = from + key.finder.find(&b[from..])?;
        from = at + key.len;
        let rest = b[from..].trim_ascii_start();
        if let Some(rest) = rest.strip_prefix(b":") {
            return Some(rest.trim_ascii_start());
        }
    })
}

/// Where the first `"usage": {` object in `b` starts (a forward search: faster than
/// `spend::usage_object`'s reverse one, and a stream event or an answer has one).
pub(crate) fn usage_object(b: &[u8]) -> Option<usize> {
    values(b, &USAGE)
        .find(|v| v.first() == Some(&b'{'))
        .map(|v| b.len() - v.len())
}

/// Every string value of `"key"` in `b`, unescaped (values over 256 bytes skipped).
pub(crate) fn strings<'a>(b: &'a [u8], key: &'static Key) -> impl Iterator<Item = String> + 'a {
    values(b, key).filter_map(|v| {
        let quoted = string_literal(v)?;
        if quoted.len() > MAX_VALUE + 2 {
            return None;
        }
        serde_json::from_slice::<String>(quoted).ok()
    })
}

/// The JSON string literal at the start of `v`, quotes included.
fn string_literal(v: &[u8]) -> Option<&[u8]> {
    if v.first() != Some(&b'"') {
        return None;
    }
    let mut i = 1;
    while i < v.len() {
        match v[i] {
            b'\\' => i += 2,
            b'"' => return Some(&v[..=i]),
            _ => i += 1,
        }
    }
    None
}

/// The first numeric value of `"key"` in `b`.
pub(crate) fn number(b: &[u8], key: &'static Key) -> Option<f64> {
    values(b, key).find_map(|v| {
        let end = v
            .iter()
            .position(|c| !matches!(c, b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E'))
            .unwrap_or(v.len());
        std::str::from_utf8(&v[..end.min(32)])
            .ok()?
            .parse::<f64>()
            .ok()
            .filter(|f| f.is_finite())
    })
}

/// Prompt tokens read from a cache: OpenAI's and Responses' `cached_tokens`, Anthropic's
/// `cache_read_input_tokens`, looked for only after `"usage"` (`usage` is where that
/// object starts in `b`).
pub(crate) fn cache_read(b: &[u8], usage: usize) -> Option<u64> {
    let b = b.get(usage..)?;
    [&CACHED_TOKENS, &CACHE_READ_INPUT_TOKENS]
        .into_iter()
        .filter_map(|k| number(b, k))
        .map(|n| n.max(0.0) as u64)
        .max()
}

/// `n` bytes of `s` at most, cut at a character boundary.
pub(crate) fn cap(s: &str, n: usize) -> &str {
    if s.len() <= n {
        return s;
    }
    let mut end = n;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

fn capped(raw: &RawValue) -> String {
    cap(raw.get(), MAX_CONTENT).to_string()
}

/// The prompt as the client sent it (`messages`, `input` or `prompt`, raw JSON) and the
/// system instructions (`system`, `instructions`), each capped.
pub(crate) fn prompt(body: &[u8]) -> (Option<String>, Option<String>) {
    #[derive(Deserialize)]
    struct Prompt<'a> {
        #[serde(borrow, default)]
        messages: Option<&'a RawValue>,
        #[serde(borrow, default)]
        input: Option<&'a RawValue>,
        #[serde(borrow, default)]
        prompt: Option<&'a RawValue>,
        #[serde(borrow, default)]
        system: Option<&'a RawValue>,
        #[serde(borrow, default)]
        instructions: Option<&'a RawValue>,
    }
    let Ok(p) = serde_json::from_slice::<Prompt<'_>>(body) else {
        return (None, None);
    };
    let input = p.messages.or(p.input).or(p.prompt).map(capped);
    let system = p.system.or(p.instructions).map(capped);
    (input, system)
}

/// The answer of a JSON body (`choices`, Anthropic's `content`, Responses' `output`),
/// raw JSON, capped.
pub(crate) fn output(body: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    struct Out<'a> {
        #[serde(borrow, default)]
        choices: Option<&'a RawValue>,
        #[serde(borrow, default)]
        content: Option<&'a RawValue>,
        #[serde(borrow, default)]
        output: Option<&'a RawValue>,
    }
    let o = serde_json::from_slice::<Out<'_>>(body).ok()?;
    o.choices.or(o.content).or(o.output).map(capped)
}

/// Appends the text deltas of complete stream events to `out` (up to the cap): OpenAI
/// chat's `content`, completions' `text`, Anthropic's `text_delta`, Responses'
/// `output_text.delta`.
pub(crate) fn deltas(b: &[u8], endpoint: Endpoint, out: &mut String) {
    let mut push = |s: String| {
        if out.len() < MAX_CONTENT {
            out.push_str(cap(&s, MAX_CONTENT - out.len()));
        }
    };
    let mut rest = b;
    while !rest.is_empty() {
        let end = memchr::memmem::find(rest, b"\n\n").map_or(rest.len(), |i| i + 2);
        let ev = &rest[..end];
        rest = &rest[end..];
        let key = match endpoint {
            Endpoint::Messages if memchr::memmem::find(ev, b"\"text_delta\"").is_some() => &TEXT,
            Endpoint::Responses
                if memchr::memmem::find(ev, b"response.output_text.delta").is_some() =>
            {
                &DELTA
            }
            Endpoint::ChatCompletions => &CONTENT,
            Endpoint::Completions => &TEXT,
            _ => continue,
        };
        for v in values(ev, key) {
            if let Some(s) = string_literal(v).and_then(|q| serde_json::from_slice(q).ok()) {
                push(s);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_keys_not_text() {
        let b = br#"{"model": "m-1","choices":[{"message":{"content":"say \"model\":\"x\""},"finish_reason":"stop"}],"temperature":0.5}"#;
        assert_eq!(strings(b, &MODEL).collect::<Vec<_>>(), ["m-1"]);
        assert_eq!(strings(b, &FINISH_REASON).collect::<Vec<_>>(), ["stop"]);
        assert_eq!(number(b, &TEMPERATURE), Some(0.5));
        let tools =
            br#"{"tools":[{"parameters":{"temperature":{"type":"number"}}}],"temperature":1}"#;
        assert_eq!(number(tools, &TEMPERATURE), Some(1.0));
        assert_eq!(number(b"{\"temperature\":", &TEMPERATURE), None);
        assert_eq!(strings(b"{\"model\":\"unterminated", &MODEL).count(), 0);
        assert_eq!(
            cache_read(
                br#"{"usage":{"prompt_tokens_details":{"cached_tokens":7}}}"#,
                0
            ),
            Some(7)
        );
        assert_eq!(cap("héllo", 2), "h");
        let u = br#"{"x":"usage","usage" : {"prompt_tokens":1}}"#;
        assert_eq!(&u[usage_object(u).unwrap()..][..1], b"{");
        assert_eq!(usage_object(b"{\"usage\":null}"), None);
    }

    #[test]
    fn prompt_output_and_deltas() {
        let (input, system) = prompt(
            br#"{"model":"m","system":"be brief","messages":[{"role":"user","content":"hi"}]}"#,
        );
        assert_eq!(
            input.as_deref(),
            Some(r#"[{"role":"user","content":"hi"}]"#)
        );
        assert_eq!(system.as_deref(), Some(r#""be brief""#));
        let mut out = String::new();
        deltas(
            b"data: {\"choices\":[{\"delta\":{\"content\":\"He\"}}]}\n\ndata: {\"choices\":[{\"delta\":{\"content\":\"llo\"}}]}\n\ndata: [DONE]\n\n",
            Endpoint::ChatCompletions,
            &mut out,
        );
        assert_eq!(out, "Hello");
    }
}
