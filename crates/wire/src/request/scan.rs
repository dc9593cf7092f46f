//! A single validating pass over the body's top-level object that reads only the routing
//! fields and skips everything else without building anything.
//!
//! serde_json spent most of a request's parse ignoring `messages` and `tools` (issue 13);
//! this scan does the same validation (RFC 8259 strings, escapes, numbers, literals and
//! nesting, exactly as serde_json's ignore path accepts them) several times faster. It
//! answers only the common case: on anything else — invalid JSON, llmgw's own keys, an
//! escaped top-level key, a repeated routing key, a `stream` that is not a bool, nesting
//! deeper than [`MAX_DEPTH`] — it returns `None` and the caller runs the full serde_json
//! parse, which gives the same result or error message as before. So a `Some` must mean
//! "serde_json accepts this body with these fields", and the differential tests in
//! `request.rs` check exactly that.
//!
//! The input must already be valid UTF-8: bytes from 0x80 up are skipped unchecked.

use std::ops::Range;

/// The routing fields of a body the fast path took.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Fast {
    /// Byte range of `model`'s string token, quotes included.
    pub model: Range<usize>,
    /// The model string contains escapes (decode it with serde_json).
    pub model_escaped: bool,
    pub stream: bool,
    pub include_usage: bool,
    /// The largest of `max_tokens`, `max_completion_tokens`, `max_output_tokens` given
    /// as a whole number (see `ClientRequest::max_tokens`).
    pub max_tokens: Option<u64>,
    /// The end user: the byte range of the last top-level `user` string token (quotes
    /// included), else of `metadata.user_id`'s; and whether it contains escapes.
    pub end_user: Option<(Range<usize>, bool)>,
}

/// Deepest nesting the scan follows (a fixed bit stack, no recursion and no allocation);
/// deeper bodies go to serde_json, whose ignore path is also non-recursive.
pub(super) const MAX_DEPTH: usize = 512;

/// Scans `body` (valid UTF-8); `None` when the full parse must decide.
pub(super) fn scan(body: &[u8]) -> Option<Fast> {
    let mut s = Scanner { b: body, i: 0 };
    s.ws();
    s.eat(b'{')?;
    s.ws();
    let mut model = None;
    let mut stream = None;
    let mut include_usage = None;
    let mut max_tokens: Option<u64> = None;
    let mut user = None;
    let mut meta_user = None;
    loop {
        match s.field()? {
            b"max_tokens" | b"max_completion_tokens" | b"max_output_tokens" => {
                let start = s.i;
                s.value()?;
                if let Some(n) = super::whole_number(&body[start..s.i]) {
                    max_tokens = Some(max_tokens.map_or(n, |m| m.max(n)));
                }
            }
            b"model" => {
                if model.is_some() || s.peek() != Some(b'"') {
                    return None;
                }
                let start = s.i;
                let escaped = s.string()?;
                model = Some((start..s.i, escaped));
            }
            b"stream" => {
                if stream.is_some() {
                    return None;
                }
                stream = Some(s.bool_or_null()?.unwrap_or(false));
            }
            b"stream_options" => {
                if include_usage.is_some() {
                    return None;
                }
                include_usage = Some(s.stream_options()?);
            }
            b"user" => {
                user = s.string_or_skip()?;
            }
            b"metadata" => {
                meta_user = s.metadata_user()?;
            }
            b"fallbacks" | b"disable_fallbacks" | b"timeout" | b"cache" | b"priority" => {
                return None
            }
            _ => s.value()?,
        }
        s.ws();
        match s.next()? {
            b',' => s.ws(),
            b'}' => break,
            _ => return None,
        }
    }
    s.ws();
    if s.i != body.len() {
        return None;
    }
    let (model, model_escaped) = model?;
    // `""` is the only empty string token: every escape decodes to at least one char.
    if model.len() <= 2 {
        return None;
    }
    Some(Fast {
        model,
        model_escaped,
        stream: stream.unwrap_or(false),
        include_usage: include_usage.unwrap_or(false),
        max_tokens,
        end_user: user.or(meta_user),
    })
}

struct Scanner<'a> {
    b: &'a [u8],
    i: usize,
}

impl Scanner<'_> {
    #[inline]
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    #[inline]
    fn next(&mut self) -> Option<u8> {
        let c = self.peek()?;
        self.i += 1;
        Some(c)
    }

    #[inline]
    fn eat(&mut self, c: u8) -> Option<()> {
        (self.next()? == c).then_some(())
    }

    /// Skips JSON whitespace (only these four bytes, as serde_json).
    #[inline]
    fn ws(&mut self) {
        while let Some(b' ' | b'\n' | b'\r' | b'\t') = self.peek() {
            self.i += 1;
        }
    }

    /// An object key, then the colon and whitespace after it; the key's raw bytes, or
    /// `None` for an escaped one.
    #[inline]
    fn key(&mut self) -> Option<Option<&[u8]>> {
        if self.peek() != Some(b'"') {
            return None;
        }
        let start = self.i + 1;
        let escaped = self.string()?;
        let b = self.b;
        let key = &b[start..self.i - 1];
        self.ws();
        self.eat(b':')?;
        self.ws();
        Some((!escaped).then_some(key))
    }

    /// A key of an object whose fields are matched by name: an escaped key goes to
    /// serde_json, which unescapes keys before matching them.
    #[inline]
    fn field(&mut self) -> Option<&[u8]> {
        self.key()?
    }

    /// A string token at the opening quote; `Some(true)` when it contains escapes.
    /// Escapes are checked as serde_json's ignore path does (`\u` needs four hex digits;
    /// surrogates are not paired up there either); raw control characters are refused.
    #[inline]
    fn string(&mut self) -> Option<bool> {
        let b = self.b;
        let mut i = self.i + 1;
        let mut escaped = false;
        loop {
            i = find_special(b, i);
            match *b.get(i)? {
                b'"' => {
                    self.i = i + 1;
                    return Some(escaped);
                }
                b'\\' => {
                    escaped = true;
                    match *b.get(i + 1)? {
                        b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => i += 2,
                        b'u' => {
                            let hex = b.get(i + 2..i + 6)?;
                            if !hex.iter().all(u8::is_ascii_hexdigit) {
                                return None;
                            }
                            i += 6;
                        }
                        _ => return None,
                    }
                }
                _ => return None, // a control character
            }
        }
    }

    /// A number per RFC 8259: `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`. What may
    /// follow it (`,` `]` `}` or whitespace) is the caller's check, as for literals.
    fn number(&mut self) -> Option<()> {
        if self.peek() == Some(b'-') {
            self.i += 1;
        }
        match self.next()? {
            b'0' => {}
            b'1'..=b'9' => self.digits(),
            _ => return None,
        }
        if self.peek() == Some(b'.') {
            self.i += 1;
            self.some_digits()?;
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.i += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.i += 1;
            }
            self.some_digits()?;
        }
        Some(())
    }

    #[inline]
    fn digits(&mut self) {
        while let Some(b'0'..=b'9') = self.peek() {
            self.i += 1;
        }
    }

    #[inline]
    fn some_digits(&mut self) -> Option<()> {
        let start = self.i;
        self.digits();
        (self.i > start).then_some(())
    }

    #[inline]
    fn literal(&mut self, word: &[u8]) -> Option<()> {
        if self.b[self.i..].starts_with(word) {
            self.i += word.len();
            Some(())
        } else {
            None
        }
    }

    /// `true`, `false` or `null` (as `None`).
    fn bool_or_null(&mut self) -> Option<Option<bool>> {
        match self.peek()? {
            b't' => self.literal(b"true").map(|_| Some(true)),
            b'f' => self.literal(b"false").map(|_| Some(false)),
            b'n' => self.literal(b"null").map(|_| None),
            _ => None,
        }
    }

    /// `stream_options`: `null` or an object whose `include_usage` is a bool or null.
    fn stream_options(&mut self) -> Option<bool> {
        if self.peek()? == b'n' {
            self.literal(b"null")?;
            return Some(false);
        }
        self.eat(b'{')?;
        self.ws();
        if self.peek()? == b'}' {
            self.i += 1;
            return Some(false);
        }
        let mut include_usage = None;
        loop {
            if self.field()? == b"include_usage" {
                if include_usage.is_some() {
                    return None; // serde_json: duplicate field
                }
                include_usage = Some(self.bool_or_null()?.unwrap_or(false));
            } else {
                self.value()?;
            }
            self.ws();
            match self.next()? {
                b',' => self.ws(),
                b'}' => return Some(include_usage.unwrap_or(false)),
                _ => return None,
            }
        }
    }

    /// A string's range and escape flag, or `None` (skipped) for any other value.
    fn string_or_skip(&mut self) -> Option<Option<(Range<usize>, bool)>> {
        if self.peek()? == b'"' {
            let start = self.i;
            let escaped = self.string()?;
            Some(Some((start..self.i, escaped)))
        } else {
            self.value()?;
            Some(None)
        }
    }

    /// `metadata`: when an object, its last `user_id` string (as [`Self::string_or_skip`]).
    fn metadata_user(&mut self) -> Option<Option<(Range<usize>, bool)>> {
        if self.peek()? != b'{' {
            self.value()?;
            return Some(None);
        }
        self.i += 1;
        self.ws();
        if self.peek()? == b'}' {
            self.i += 1;
            return Some(None);
        }
        let mut found = None;
        loop {
            if self.field()? == b"user_id" {
                found = self.string_or_skip()?;
            } else {
                self.value()?;
            }
            self.ws();
            match self.next()? {
                b',' => self.ws(),
                b'}' => return Some(found),
                _ => return None,
            }
        }
    }

    /// Skips one value (at its first byte) and everything nested in it, iteratively: the
    /// kinds of the open containers are bits in a fixed stack.
    fn value(&mut self) -> Option<()> {
        let mut in_object = [0u64; MAX_DEPTH / 64];
        let mut depth = 0usize;
        loop {
            // At the start of a value.
            match self.peek()? {
                b'"' => {
                    self.string()?;
                }
                open @ (b'{' | b'[') => {
                    if depth == MAX_DEPTH {
                        return None;
                    }
                    self.i += 1;
                    self.ws();
                    let close = if open == b'{' { b'}' } else { b']' };
                    if self.peek()? == close {
                        self.i += 1;
                    } else {
                        let bit = 1u64 << (depth % 64);
                        if open == b'{' {
                            in_object[depth / 64] |= bit;
                            self.key()?;
                        } else {
                            in_object[depth / 64] &= !bit;
                        }
                        depth += 1;
                        continue;
                    }
                }
                b't' => self.literal(b"true")?,
                b'f' => self.literal(b"false")?,
                b'n' => self.literal(b"null")?,
                b'-' | b'0'..=b'9' => self.number()?,
                _ => return None,
            }
            // After a value: close containers until a comma opens the next value.
            loop {
                if depth == 0 {
                    return Some(());
                }
                self.ws();
                let top = depth - 1;
                let object = in_object[top / 64] & (1u64 << (top % 64)) != 0;
                match self.next()? {
                    b',' => {
                        self.ws();
                        if object {
                            self.key()?;
                        }
                        break;
                    }
                    b'}' if object => depth -= 1,
                    b']' if !object => depth -= 1,
                    _ => return None,
                }
            }
        }
    }
}

/// Index of the first `"`, `\` or control character in `b` from `i` on (or `b.len()`),
/// eight bytes at a time.
#[inline]
fn find_special(b: &[u8], mut i: usize) -> usize {
    const ONES: u64 = u64::MAX / 255;
    const HIGH: u64 = ONES << 7;
    while let Some(chunk) = b.get(i..i + 8) {
        let x = u64::from_le_bytes(chunk.try_into().unwrap_or_default());
        // Exact for the lowest flagged byte, which is the one taken (borrows only run
        // upwards from a byte that is itself flagged).
        let ctrl = x.wrapping_sub(ONES * 0x20) & !x;
        let q = x ^ (ONES * u64::from(b'"'));
        let quote = q.wrapping_sub(ONES) & !q;
        let s = x ^ (ONES * u64::from(b'\\'));
        let backslash = s.wrapping_sub(ONES) & !s;
        let hit = (ctrl | quote | backslash) & HIGH;
        if hit != 0 {
            return i + (hit.trailing_zeros() / 8) as usize;
        }
        i += 8;
    }
    while let Some(&c) = b.get(i) {
        if c == b'"' || c == b'\\' || c < 0x20 {
            return i;
        }
        i += 1;
    }
    i
}
