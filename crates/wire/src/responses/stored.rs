//! What keeping responses needs of the Responses format (the gateway stores and serves
//! them): a request's input as the list of items `GET /v1/responses/{id}/input_items`
//! shows ([`input_items`]), a chain of stored responses as one conversation
//! ([`history`]), a request continuing a chain rewritten for a Responses upstream that
//! does not hold it ([`rewrite`]), the final response of a stream ([`FinalScan`]) and a
//! page of input items ([`page`]). None of this is on the path of a request that does
//! not store or continue a response.

use crate::request::ClientRequest;
use crate::translate::random_id;
use bytes::{Bytes, BytesMut};
use llmgw_core::error::ApiError;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value};

fn bad(e: impl std::fmt::Display) -> ApiError {
    ApiError::bad_request(format!("request body is not valid JSON: {e}"))
}

/// The id prefix of an item of `kind`.
fn prefix(kind: &str) -> &'static str {
    match kind {
        "message" => "msg_",
        "function_call" => "fc_",
        "function_call_output" => "fco_",
        "custom_tool_call" => "ctc_",
        "custom_tool_call_output" => "ctco_",
        "reasoning" => "rs_",
        _ => "item_",
    }
}

/// An input item as stored and listed: typed, with an id, a message's text content as
/// a list of parts.
fn normalise(item: Value) -> Value {
    let Value::Object(mut m) = item else {
        return item;
    };
    let kind = m
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or("message")
        .to_string();
    if kind == "message" {
        m.insert("type".into(), Value::from("message"));
        if let Some(Value::String(text)) = m.get("content") {
            let part = if m.get("role").and_then(Value::as_str) == Some("assistant") {
                "output_text"
            } else {
                "input_text"
            };
            let text = text.clone();
            m.insert(
                "content".into(),
                serde_json::json!([{"type": part, "text": text}]),
            );
        }
    }
    if !m.get("id").is_some_and(Value::is_string) {
        m.insert("id".into(), Value::from(random_id(prefix(&kind))));
    }
    Value::Object(m)
}

/// The request's input as a JSON array of items (a string input is one user message).
pub fn input_items(body: &[u8]) -> Result<String, ApiError> {
    #[derive(Deserialize)]
    struct Input {
        #[serde(default)]
        input: Value,
    }
    let input = serde_json::from_slice::<Input>(body).map_err(bad)?.input;
    let items: Vec<Value> = match input {
        Value::String(s) => vec![normalise(
            serde_json::json!({"type": "message", "role": "user", "content": s}),
        )],
        Value::Array(items) => items.into_iter().map(normalise).collect(),
        _ => Vec::new(),
    };
    serde_json::to_string(&items).map_err(|e| ApiError::internal(e.to_string()))
}

/// One stored response of a chain: its input items and the response object.
pub struct Turn<'s> {
    pub input: &'s str,
    pub response: &'s str,
}

/// The conversation of a chain (oldest first) as one JSON array of input items: each
/// response's input items, then its output items.
pub fn history(chain: &[Turn<'_>]) -> Result<Bytes, ApiError> {
    #[derive(Deserialize)]
    struct Output<'a> {
        #[serde(borrow, default)]
        output: Vec<&'a RawValue>,
    }
    let broken =
        |e: serde_json::Error| ApiError::internal(format!("a stored response cannot be read: {e}"));
    let mut out = BytesMut::with_capacity(
        chain
            .iter()
            .map(|t| t.input.len() + t.response.len())
            .sum::<usize>()
            + 2,
    );
    out.extend_from_slice(b"[");
    let mut first = true;
    for t in chain {
        let input: Vec<&RawValue> = serde_json::from_str(t.input).map_err(broken)?;
        let output: Output<'_> = serde_json::from_str(t.response).map_err(broken)?;
        for item in input.into_iter().chain(output.output) {
            if !first {
                out.extend_from_slice(b",");
            }
            first = false;
            out.extend_from_slice(item.get().as_bytes());
        }
    }
    out.extend_from_slice(b"]");
    Ok(out.freeze())
}

/// The body for a Responses upstream that does not hold the chain the request continues:
/// the stored conversation (without reasoning items, which only their writer can read)
/// followed by the request's own input, without `previous_response_id`, for `model`.
pub fn rewrite(req: &ClientRequest, model: &str) -> Result<Bytes, ApiError> {
    let mut body: Map<String, Value> = serde_json::from_slice(&req.body).map_err(bad)?;
    let history = req.prepared.as_ref().and_then(|p| p.history.as_ref());
    let mut items: Vec<Value> = match history {
        Some(h) => serde_json::from_slice(&h.items)
            .map_err(|e| ApiError::internal(format!("a stored response cannot be read: {e}")))?,
        None => Vec::new(),
    };
    items.retain(|i| i.get("type").and_then(Value::as_str) != Some("reasoning"));
    match body.remove("input") {
        Some(Value::String(s)) => {
            items.push(serde_json::json!({"type": "message", "role": "user", "content": s}))
        }
        Some(Value::Array(own)) => items.extend(own),
        _ => {}
    }
    body.insert("input".into(), Value::Array(items));
    body.remove("previous_response_id");
    body.insert("model".into(), Value::from(model));
    for k in ["fallbacks", "disable_fallbacks", "timeout", "cache"] {
        body.remove(k);
    }
    serde_json::to_vec(&body)
        .map(Bytes::from)
        .map_err(|e| ApiError::internal(e.to_string()))
}

/// A response object's `id`.
pub fn response_id(response: &str) -> Option<String> {
    #[derive(Deserialize)]
    struct Id {
        id: String,
    }
    serde_json::from_str::<Id>(response).ok().map(|i| i.id)
}

/// The events a stream ends with: the whole response.
const FINAL: [&str; 3] = [
    "response.completed",
    "response.incomplete",
    "response.failed",
];

/// Finds the final event (`response.completed`, `…incomplete`, `…failed`) of a
/// Responses stream as the client receives it: every event before it is handed on as
/// soon as it is complete; from the final event on, the bytes are held, so that the
/// response can be stored before the client sees the stream end.
#[derive(Default)]
pub struct FinalScan {
    pending: BytesMut,
    /// Bytes of `pending` already known to belong to complete, passed events.
    checked: usize,
    held: bool,
    /// The final event's `response` object.
    response: Option<String>,
}

/// Largest event the scanner looks into (the final event repeats the whole answer).
const MAX_EVENT: usize = 32 * 1024 * 1024;

impl FinalScan {
    /// Feeds client-bound bytes; returns those that may go on now.
    pub fn push(&mut self, chunk: &[u8]) -> Bytes {
        self.pending.extend_from_slice(chunk);
        if self.held {
            return Bytes::new();
        }
        let mut pass = 0;
        loop {
            let rest = &self.pending[pass..];
            let Some((end, sep)) = event_end(rest, self.checked.saturating_sub(pass)) else {
                self.checked = self.pending.len();
                break;
            };
            if let Some(response) = final_response(&rest[..end]) {
                self.held = true;
                self.response = Some(response);
                break;
            }
            pass += end + sep;
            self.checked = pass;
        }
        if !self.held && self.pending.len() - pass > MAX_EVENT {
            // Not an event stream we understand: pass it all on, keep nothing.
            pass = self.pending.len();
        }
        self.checked -= pass.min(self.checked);
        self.pending.split_to(pass).freeze()
    }

    /// The final event's response object, once seen.
    pub fn response(&self) -> Option<&str> {
        self.response.as_deref()
    }

    /// Everything held back (the final event and what followed it).
    pub fn finish(&mut self) -> Bytes {
        self.checked = 0;
        std::mem::take(&mut self.pending).freeze()
    }
}

/// Where the first event of `buf` ends (searching from `from`): its length and the
/// separator's.
fn event_end(buf: &[u8], from: usize) -> Option<(usize, usize)> {
    let start = from.saturating_sub(3).min(buf.len());
    let lf = memchr::memmem::find(&buf[start..], b"\n\n").map(|i| (start + i, 2));
    let crlf = memchr::memmem::find(&buf[start..], b"\r\n\r\n").map(|i| (start + i, 4));
    match (lf, crlf) {
        (Some(a), Some(b)) => Some(if a.0 <= b.0 { a } else { b }),
        (a, b) => a.or(b),
    }
}

/// The `response` object of a final event.
fn final_response(event: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(event).ok()?;
    let mut name = None;
    let mut data = String::new();
    for line in text.lines() {
        if let Some(v) = line.strip_prefix("event:") {
            name = Some(v.trim());
        } else if let Some(v) = line.strip_prefix("data:") {
            data.push_str(v.strip_prefix(' ').unwrap_or(v));
        }
    }
    if name.is_some_and(|n| !FINAL.contains(&n)) {
        return None;
    }
    #[derive(Deserialize)]
    struct Ev<'a> {
        #[serde(rename = "type")]
        kind: &'a str,
        #[serde(borrow)]
        response: Option<&'a RawValue>,
    }
    let ev: Ev<'_> = serde_json::from_str(&data).ok()?;
    FINAL
        .contains(&ev.kind)
        .then(|| ev.response.map(|r| r.get().to_string()))?
}

/// `GET /v1/responses/{id}/input_items`' query.
#[derive(Debug, Default, Deserialize)]
pub struct PageQuery {
    pub after: Option<String>,
    pub limit: Option<String>,
    pub order: Option<String>,
}

/// A page of stored input items, as OpenAI lists them (newest first unless
/// `order=asc`; at most `limit`, 1 to 100, default 20; after the item `after`).
pub fn page(input: &str, q: &PageQuery) -> Result<Bytes, ApiError> {
    let items: Vec<&RawValue> = serde_json::from_str(input)
        .map_err(|e| ApiError::internal(format!("a stored response cannot be read: {e}")))?;
    let limit = match q.limit.as_deref() {
        None => 20,
        Some(l) => l
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=100).contains(n))
            .ok_or_else(|| {
                ApiError::bad_request("limit must be an integer from 1 to 100").with_param("limit")
            })?,
    };
    let asc = match q.order.as_deref() {
        None | Some("desc") => false,
        Some("asc") => true,
        Some(_) => {
            return Err(ApiError::bad_request("order must be asc or desc").with_param("order"))
        }
    };
    #[derive(Deserialize)]
    struct Id<'a> {
        #[serde(borrow, default)]
        id: Option<&'a str>,
    }
    let id_of = |r: &RawValue| -> Option<String> {
        serde_json::from_str::<Id<'_>>(r.get())
            .ok()
            .and_then(|i| i.id.map(str::to_string))
    };
    let mut ordered: Vec<&RawValue> = items;
    if !asc {
        ordered.reverse();
    }
    let start = match &q.after {
        None => 0,
        Some(after) => {
            ordered
                .iter()
                .position(|r| id_of(r).as_deref() == Some(after.as_str()))
                .ok_or_else(|| {
                    ApiError::bad_request(format!("no input item with id {after:?}"))
                        .with_param("after")
                })?
                + 1
        }
    };
    let data: Vec<&RawValue> = ordered.iter().skip(start).take(limit).copied().collect();
    let has_more = start + data.len() < ordered.len();
    let body = serde_json::json!({
        "object": "list",
        "data": data,
        "first_id": data.first().and_then(|r| id_of(r)),
        "last_id": data.last().and_then(|r| id_of(r)),
        "has_more": has_more,
    });
    serde_json::to_vec(&body)
        .map(Bytes::from)
        .map_err(|e| ApiError::internal(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn input_items_are_typed_with_ids() {
        let items: Value =
            serde_json::from_str(&input_items(br#"{"input":"hi"}"#).unwrap()).unwrap();
        assert_eq!(items[0]["type"], "message");
        assert_eq!(
            items[0]["content"][0],
            serde_json::json!({"type": "input_text", "text": "hi"})
        );
        assert!(items[0]["id"].as_str().unwrap().starts_with("msg_"));
        let body = br#"{"input":[{"role":"assistant","content":"a"},{"type":"function_call_output","call_id":"c","output":"o","id":"mine"}]}"#;
        let items: Value = serde_json::from_str(&input_items(body).unwrap()).unwrap();
        assert_eq!(items[0]["content"][0]["type"], "output_text");
        assert_eq!(items[1]["id"], "mine");
    }

    #[test]
    fn history_joins_inputs_and_outputs() {
        let h = history(&[
            Turn {
                input: r#"[{"type":"message","role":"user","content":"a"}]"#,
                response: r#"{"id":"r1","output":[{"type":"message","role":"assistant","content":[{"type":"output_text","text":"b"}]}]}"#,
            },
            Turn {
                input: r#"[{"type":"message","role":"user","content":"c"}]"#,
                response: r#"{"id":"r2","output":[]}"#,
            },
        ])
        .unwrap();
        let v: Value = serde_json::from_slice(&h).unwrap();
        let texts: Vec<String> = v
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["role"].to_string())
            .collect();
        assert_eq!(texts, ["\"user\"", "\"assistant\"", "\"user\""]);
    }

    /// The final event is held however the stream is cut; everything before passes.
    #[test]
    fn final_events_are_found_at_any_cut() {
        let stream = "event: response.created\ndata: {\"type\":\"response.created\",\"response\":{\"id\":\"r\"}}\n\n\
            event: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\",\"delta\":\"hi\"}\n\n\
            event: response.completed\ndata: {\"type\":\"response.completed\",\"response\":{\"id\":\"r\",\"output\":[]}}\n\n";
        let at = stream.find("event: response.completed").unwrap();
        for cut in 0..stream.len() {
            let mut s = FinalScan::default();
            let mut passed = s.push(&stream.as_bytes()[..cut]).to_vec();
            passed.extend_from_slice(&s.push(&stream.as_bytes()[cut..]));
            assert_eq!(
                std::str::from_utf8(&passed).unwrap(),
                &stream[..at],
                "cut {cut}"
            );
            assert_eq!(s.response(), Some("{\"id\":\"r\",\"output\":[]}"));
            assert_eq!(&s.finish()[..], &stream.as_bytes()[at..]);
        }
        // Without event lines (data only), and with CRLF.
        let mut s = FinalScan::default();
        let out = s.push(b"data: {\"type\":\"response.in_progress\"}\r\n\r\ndata: {\"type\":\"response.incomplete\",\"response\":{\"id\":\"x\"}}\r\n\r\n");
        assert_eq!(
            &out[..],
            b"data: {\"type\":\"response.in_progress\"}\r\n\r\n"
        );
        assert_eq!(response_id(s.response().unwrap()).as_deref(), Some("x"));
    }

    #[test]
    fn pages() {
        let input = r#"[{"id":"a"},{"id":"b"},{"id":"c"}]"#;
        let p: Value =
            serde_json::from_slice(&page(input, &PageQuery::default()).unwrap()).unwrap();
        assert_eq!(p["first_id"], "c");
        assert_eq!(p["has_more"], false);
        let q = PageQuery {
            after: Some("a".into()),
            limit: Some("1".into()),
            order: Some("asc".into()),
        };
        let p: Value = serde_json::from_slice(&page(input, &q).unwrap()).unwrap();
        assert_eq!(p["data"], serde_json::json!([{"id": "b"}]));
        assert_eq!(p["has_more"], true);
        let q = PageQuery {
            limit: Some("0".into()),
            ..PageQuery::default()
        };
        assert!(page(input, &q).is_err());
    }
}
