//! The incremental SSE parser every translated stream reads its upstream with, and
//! the errors of a broken stream.

use super::*;

// ---------------------------------------------------------------------------------------
// Server-sent events
// ---------------------------------------------------------------------------------------

/// One complete SSE event: its `event:` name (empty when absent) and its `data:` lines
/// joined by `\n`.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct SseEvent {
    pub event: String,
    pub data: Vec<u8>,
}

/// One complete SSE event borrowed from the parser's buffer: the `event:` name (empty
/// when absent) and the `data:` lines joined by `\n` (borrowed when there is one line).
#[derive(Debug, PartialEq, Eq)]
pub struct SseRef<'a> {
    pub event: &'a [u8],
    pub data: Cow<'a, [u8]>,
}

impl SseRef<'_> {
    fn into_owned(self) -> SseEvent {
        SseEvent {
            event: String::from_utf8_lossy(self.event).into_owned(),
            data: self.data.into_owned(),
        }
    }
}

/// Splits a byte stream into SSE events, however the network cut it: bytes are buffered
/// until a blank line ends an event. Each byte is scanned once.
#[derive(Debug, Default)]
pub struct SseParser {
    buf: Vec<u8>,
    /// Start of the unconsumed part of `buf`.
    pos: usize,
    /// Where the search for the next blank line resumes.
    scan: usize,
}

/// Upper bound for one buffered event; an upstream that never ends an event is broken.
pub(crate) const MAX_EVENT_BYTES: usize = 16 * 1024 * 1024;

impl SseParser {
    /// Appends raw bytes from the network.
    pub fn push(&mut self, chunk: &[u8]) -> Result<(), UpstreamError> {
        if self.pos > 0 {
            if self.pos == self.buf.len() {
                self.buf.clear();
            } else {
                self.buf.drain(..self.pos);
            }
            self.scan -= self.pos;
            self.pos = 0;
        }
        if self.buf.len() + chunk.len() > MAX_EVENT_BYTES {
            return Err(stream_error(
                "the upstream sent an event larger than 16 MiB without ending it",
            ));
        }
        self.buf.extend_from_slice(chunk);
        Ok(())
    }

    /// The next complete event, if the buffer holds one.
    pub fn next_event(&mut self) -> Option<SseEvent> {
        self.next_ref().map(SseRef::into_owned)
    }

    /// The next complete event, borrowed from the buffer, if the buffer holds one.
    pub fn next_ref(&mut self) -> Option<SseRef<'_>> {
        let (start, end, fields) = loop {
            let (end, next) = self.find_blank_line()?;
            let start = self.pos;
            self.pos = next;
            self.scan = next;
            let fields = scan_event(&self.buf[start..end]);
            if !fields.is_empty() {
                break (start, end, fields);
            }
        };
        Some(fields.event_ref(&self.buf[start..end]))
    }

    /// True when bytes of an unfinished event are buffered.
    pub fn has_partial(&self) -> bool {
        self.buf[self.pos..]
            .iter()
            .any(|b| !b.is_ascii_whitespace())
    }

    /// Takes what is left as a final event (a stream that ended without a blank line).
    pub fn take_rest(&mut self) -> Option<SseEvent> {
        self.take_rest_ref().map(SseRef::into_owned)
    }

    /// [`take_rest`](Self::take_rest), borrowed.
    pub fn take_rest_ref(&mut self) -> Option<SseRef<'_>> {
        let start = self.pos;
        self.pos = self.buf.len();
        self.scan = self.pos;
        let raw = &self.buf[start..];
        let ev = scan_event(raw).event_ref(raw);
        (!ev.data.is_empty()).then_some(ev)
    }

    /// Finds `\n\n`, `\r\n\r\n` or `\r\r` from `scan`: (end of event, start of the next).
    fn find_blank_line(&mut self) -> Option<(usize, usize)> {
        let buf = &self.buf;
        let mut i = self.scan.max(self.pos);
        while let Some(off) = memchr::memchr2(b'\n', b'\r', &buf[i..]) {
            let at = i + off;
            // A line break at `at`; is the following line empty?
            let after = match (buf[at], buf.get(at + 1)) {
                (b'\r', Some(b'\n')) => at + 2,
                (b'\r', None) => {
                    // Cannot tell `\r` from `\r\n` yet.
                    self.scan = at;
                    return None;
                }
                _ => at + 1,
            };
            match buf.get(after) {
                Some(b'\n') => return Some((at, after + 1)),
                Some(b'\r') => match buf.get(after + 1) {
                    Some(b'\n') => return Some((at, after + 2)),
                    Some(_) => return Some((at, after + 1)),
                    None => {
                        self.scan = at;
                        return None;
                    }
                },
                Some(_) => i = after,
                None => {
                    self.scan = at;
                    return None;
                }
            }
        }
        self.scan = buf.len();
        None
    }
}

/// Where an event's name and data sit in its raw bytes.
#[derive(Default)]
pub(crate) struct EventFields {
    event: std::ops::Range<usize>,
    /// The first `data:` value.
    data: std::ops::Range<usize>,
    /// More than one `data:` line: the data must be joined.
    multi: bool,
    has_data: bool,
}

impl EventFields {
    fn is_empty(&self) -> bool {
        self.event.is_empty() && !self.multi && self.data.is_empty()
    }

    fn event_ref(self, raw: &[u8]) -> SseRef<'_> {
        let event = &raw[self.event.clone()];
        if !self.multi {
            return SseRef {
                event,
                data: Cow::Borrowed(&raw[self.data]),
            };
        }
        let mut data = Vec::with_capacity(raw.len());
        let mut first = true;
        for_each_field(raw, |field, value| {
            if field == b"data" {
                if !first {
                    data.push(b'\n');
                }
                first = false;
                data.extend_from_slice(value);
            }
        });
        SseRef {
            event,
            data: Cow::Owned(data),
        }
    }
}

/// Calls `f(field, value)` for each field line of a raw event (comments skipped).
pub(crate) fn for_each_field<'a>(raw: &'a [u8], mut f: impl FnMut(&'a [u8], &'a [u8])) {
    let mut rest = raw;
    while !rest.is_empty() {
        let line = match memchr::memchr(b'\n', rest) {
            Some(n) => {
                let line = &rest[..n];
                rest = &rest[n + 1..];
                line
            }
            None => std::mem::take(&mut rest),
        };
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() || line[0] == b':' {
            continue;
        }
        match memchr::memchr(b':', line) {
            Some(p) => {
                let v = &line[p + 1..];
                f(&line[..p], v.strip_prefix(b" ").unwrap_or(v))
            }
            // An empty slice inside `raw`, so that its position is meaningful.
            None => f(line, &line[line.len()..]),
        }
    }
}

pub(crate) fn scan_event(raw: &[u8]) -> EventFields {
    let base = raw.as_ptr() as usize;
    let range = |v: &[u8]| {
        let at = v.as_ptr() as usize - base;
        at..at + v.len()
    };
    let mut ev = EventFields::default();
    for_each_field(raw, |field, value| match field {
        b"data" => {
            if ev.has_data {
                ev.multi = true;
            } else {
                ev.has_data = true;
                ev.data = range(value);
            }
        }
        b"event" => ev.event = range(value),
        _ => {}
    });
    ev
}

/// An error for a broken or malformed upstream stream.
pub fn stream_error(message: impl Into<String>) -> UpstreamError {
    UpstreamError::new(
        ErrorClass::InternalServer,
        ApiError::bad_gateway(message).with_code("upstream_bad_stream"),
    )
}

/// An error for an upstream body that is not what its API documents.
pub fn bad_body(provider: &str, e: impl std::fmt::Display) -> ApiError {
    ApiError::bad_gateway(format!(
        "{provider} returned a response llmgw cannot read: {e}"
    ))
    .with_code("upstream_bad_response")
}
