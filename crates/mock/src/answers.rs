//! The mock's answers: chat (JSON and SSE, tool calls), Responses, completions,
//! embeddings, models, health and SGLang's `/v1/loads` and `/get_load`.

use super::*;

pub(crate) fn json(body: String) -> Response {
    let mut r = Response::new(Body::from(body));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

pub(crate) fn split_reply(text: &str, chunks: usize) -> Vec<String> {
    let chunks = chunks.max(1);
    let chars: Vec<char> = text.chars().collect();
    let per = chars.len().div_ceil(chunks).max(1);
    let mut out: Vec<String> = chars.chunks(per).map(|c| c.iter().collect()).collect();
    while out.len() < chunks {
        out.push(String::new());
    }
    out
}

pub(crate) const PROMPT_TOKENS: u64 = 9;

pub(crate) async fn chat(
    State(s): State<Arc<MockState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (req, b, slot) = match admit(&s, &headers, &body).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let reply = b.reply.replace("{name}", &s.name);
    let completion_tokens = b.chunks as u64;
    let id = format!("chatcmpl-{}-{}", s.name, s.requests.load(Ordering::Relaxed));
    if b.tool_calls {
        if let Some(r) = tool_call_answer(&req, &id, completion_tokens, b.tool_pick.as_ref()) {
            return match r {
                ToolAnswer::Json(body) => json(body),
                ToolAnswer::Stream(events) => sse(s, events, &b, slot),
            };
        }
    }
    let model = req.model;
    let finish = b.finish_reason.clone().unwrap_or_else(|| "stop".into());
    if !req.stream {
        let body = serde_json::json!({
            "id": id, "object": "chat.completion", "created": 1_700_000_000u64, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": reply}, "logprobs": null, "finish_reason": finish}],
            "usage": {"prompt_tokens": PROMPT_TOKENS, "completion_tokens": completion_tokens, "total_tokens": PROMPT_TOKENS + completion_tokens}
        });
        if b.pad_bytes > 0 {
            let mut r = padded(StatusCode::OK, body.to_string(), b.pad_bytes);
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            return r;
        }
        return json(body.to_string());
    }
    let include_usage = req.stream_options.map(|o| o.include_usage).unwrap_or(false);
    let chunk = |delta: serde_json::Value, finish: Option<&str>| -> Bytes {
        let mut v = serde_json::json!({
            "id": id, "object": "chat.completion.chunk", "created": 1_700_000_000u64, "model": model,
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}]
        });
        if include_usage {
            v["usage"] = serde_json::Value::Null;
        }
        Bytes::from(format!("data: {v}\n\n"))
    };
    let mut events: Vec<Bytes> = Vec::with_capacity(b.chunks + 4);
    let pieces = split_reply(&reply, b.chunks);
    for (i, piece) in pieces.iter().enumerate() {
        let delta = if i == 0 {
            serde_json::json!({"role": "assistant", "content": piece})
        } else {
            serde_json::json!({"content": piece})
        };
        events.push(chunk(delta, None));
    }
    events.push(chunk(serde_json::json!({}), Some(&finish)));
    if include_usage {
        let v = serde_json::json!({
            "id": id, "object": "chat.completion.chunk", "created": 1_700_000_000u64, "model": model,
            "choices": [], "usage": {"prompt_tokens": PROMPT_TOKENS, "completion_tokens": completion_tokens, "total_tokens": PROMPT_TOKENS + completion_tokens}
        });
        events.push(Bytes::from(format!("data: {v}\n\n")));
    }
    events.push(Bytes::from_static(b"data: [DONE]\n\n"));
    sse(s, events, &b, slot)
}

pub(crate) enum ToolAnswer {
    Json(String),
    Stream(Vec<Bytes>),
}

/// Made-up arguments for a JSON schema's properties (strings are "Paris").
pub fn tool_args_for(schema: Option<&serde_json::Value>) -> serde_json::Value {
    let mut out = serde_json::Map::new();
    if let Some(props) = schema
        .and_then(|s| s.get("properties"))
        .and_then(|p| p.as_object())
    {
        for (k, p) in props {
            let v = match p.get("type").and_then(|t| t.as_str()) {
                Some("integer") | Some("number") => serde_json::json!(1),
                Some("boolean") => serde_json::json!(true),
                Some("array") => serde_json::json!([]),
                Some("object") => serde_json::json!({}),
                _ => serde_json::json!("Paris"),
            };
            out.insert(k.clone(), v);
        }
    }
    serde_json::Value::Object(out)
}

/// The tool-call answer (`Behavior::tool_calls`), or `None` to answer with text.
pub(crate) fn tool_call_answer(
    req: &Req,
    id: &str,
    completion_tokens: u64,
    pick: Option<&(String, Option<String>)>,
) -> Option<ToolAnswer> {
    let tools = req.tools.as_ref()?;
    let tool = pick
        .and_then(|(part, _)| {
            tools.iter().find(|t| {
                t["function"]["name"]
                    .as_str()
                    .is_some_and(|n| n.contains(part.as_str()))
            })
        })
        .or_else(|| tools.first())?;
    let last_is_tool = req
        .messages
        .as_ref()
        .and_then(|m| m.last())
        .is_some_and(|m| m["role"] == "tool");
    if last_is_tool {
        return None;
    }
    let name = tool["function"]["name"].as_str().unwrap_or("tool");
    let args = match pick.and_then(|(_, args)| args.clone()) {
        Some(a) => a,
        None => tool_args_for(tool["function"].get("parameters")).to_string(),
    };
    let call_id = format!("call_{id}");
    let usage = serde_json::json!({"prompt_tokens": PROMPT_TOKENS, "completion_tokens": completion_tokens, "total_tokens": PROMPT_TOKENS + completion_tokens});
    if !req.stream {
        let body = serde_json::json!({
            "id": id, "object": "chat.completion", "created": 1_700_000_000u64, "model": req.model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": null, "refusal": null,
                "tool_calls": [{"id": call_id, "type": "function", "function": {"name": name, "arguments": args}}]},
                "logprobs": null, "finish_reason": "tool_calls"}],
            "usage": usage
        });
        return Some(ToolAnswer::Json(body.to_string()));
    }
    let include_usage = req.stream_options.as_ref().is_some_and(|o| o.include_usage);
    let chunk = |delta: serde_json::Value, finish: Option<&str>| -> Bytes {
        let mut v = serde_json::json!({
            "id": id, "object": "chat.completion.chunk", "created": 1_700_000_000u64, "model": req.model,
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}]
        });
        if include_usage {
            v["usage"] = serde_json::Value::Null;
        }
        Bytes::from(format!("data: {v}\n\n"))
    };
    let mid = (0..=args.len() / 2)
        .rev()
        .find(|&i| args.is_char_boundary(i))
        .unwrap_or(0);
    let mut events = vec![chunk(
        serde_json::json!({"role": "assistant", "content": null, "tool_calls": [{"index": 0, "id": call_id, "type": "function", "function": {"name": name, "arguments": ""}}]}),
        None,
    )];
    for frag in [&args[..mid], &args[mid..]] {
        events.push(chunk(
            serde_json::json!({"tool_calls": [{"index": 0, "function": {"arguments": frag}}]}),
            None,
        ));
    }
    events.push(chunk(serde_json::json!({}), Some("tool_calls")));
    if include_usage {
        let v = serde_json::json!({"id": id, "object": "chat.completion.chunk", "created": 1_700_000_000u64,
            "model": req.model, "choices": [], "usage": usage});
        events.push(Bytes::from(format!("data: {v}\n\n")));
    }
    events.push(Bytes::from_static(b"data: [DONE]\n\n"));
    Some(ToolAnswer::Stream(events))
}

/// Streams `events` with `delay` between them; aborts the connection after `cut_after`.
pub(crate) fn sse(s: Arc<MockState>, events: Vec<Bytes>, b: &Behavior, slot: Slot) -> Response {
    let (delay, cut_after, gate) = (b.chunk_delay, b.cut_after, b.chunk_gate.clone());
    struct Guard {
        s: Arc<MockState>,
        finished: bool,
        _slot: Slot,
    }
    impl Drop for Guard {
        fn drop(&mut self) {
            if !self.finished {
                self.s.cancelled_streams.fetch_add(1, Ordering::SeqCst);
            }
        }
    }
    let guard = Guard {
        s,
        finished: false,
        _slot: slot,
    };
    let stream = futures_util::stream::unfold(
        (events.into_iter(), 0usize, guard),
        move |(mut it, i, mut guard)| {
            let gate = gate.clone();
            async move {
                if cut_after == Some(i) {
                    // Pause as before any chunk, so the chunks before the cut are flushed to
                    // the client first (otherwise the abort can overtake them).
                    if i > 0 {
                        tokio::time::sleep(delay.max(Duration::from_millis(50))).await;
                    }
                    guard.finished = true;
                    return Some((
                        Err(std::io::Error::other("mock: stream cut")),
                        (it, i + 1, guard),
                    ));
                }
                if cut_after.is_some_and(|c| i > c) {
                    return None;
                }
                let ev = match it.next() {
                    Some(ev) => ev,
                    None => {
                        guard.finished = true;
                        drop(guard);
                        return None;
                    }
                };
                if i > 0 && !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
                if let Some(gate) = gate.as_ref().filter(|_| i > 0) {
                    // A closed gate lets everything through.
                    if let Ok(permit) = gate.acquire().await {
                        permit.forget();
                    }
                }
                Some((Ok::<Bytes, std::io::Error>(ev), (it, i + 1, guard)))
            }
        },
    );
    let mut r = Response::new(Body::from_stream(stream));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}

/// `POST /v1/responses`, for a deployment that serves OpenAI's Responses API itself: a
/// text answer, or (with [`Behavior::tool_calls`], when the request declares function
/// tools and its input does not end with a function call's output) a call of the first
/// tool; streamed as typed events when asked.
pub(crate) async fn responses(
    State(s): State<Arc<MockState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    use serde_json::{json, Value};
    let (req, b, slot) = match admit(&s, &headers, &body).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let n = s.requests.load(Ordering::Relaxed);
    let id = format!("resp_mock_{}_{n}", s.name);
    let reply = b.reply.replace("{name}", &s.name);
    let answered = req
        .input
        .as_ref()
        .and_then(|i| i.as_array())
        .and_then(|items| items.last())
        .is_some_and(|it| it["type"] == "function_call_output");
    let tool = req
        .tools
        .as_ref()
        .and_then(|t| t.first())
        .filter(|t| b.tool_calls && !answered && t["type"] == "function");
    let usage = json!({"input_tokens": PROMPT_TOKENS, "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": b.chunks, "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": PROMPT_TOKENS + b.chunks as u64});
    let item = match tool {
        Some(t) => json!({"type": "function_call", "id": format!("fc_mock_{n}"),
            "call_id": format!("call_mock_{n}"), "name": t["name"],
            "arguments": tool_args_for(t.get("parameters")).to_string(), "status": "completed"}),
        None => json!({"type": "message", "id": format!("msg_mock_{n}"), "status": "completed",
            "role": "assistant", "content": [{"type": "output_text", "text": reply, "annotations": []}]}),
    };
    let response = |status: &str, output: Value, usage: Value| {
        json!({"id": id, "object": "response", "created_at": 1_700_000_000u64, "status": status,
            "error": null, "incomplete_details": null, "model": req.model, "output": output,
            "parallel_tool_calls": true, "tool_choice": "auto", "tools": [], "usage": usage})
    };
    if !req.stream {
        return json(response("completed", json!([item]), usage).to_string());
    }
    let mut seq = 0u64;
    let mut ev = |name: &str, mut data: Value| {
        data["type"] = json!(name);
        data["sequence_number"] = json!(seq);
        seq += 1;
        Bytes::from(format!("event: {name}\ndata: {data}\n\n"))
    };
    let mut events = vec![
        ev(
            "response.created",
            json!({"response": response("in_progress", json!([]), Value::Null)}),
        ),
        ev(
            "response.in_progress",
            json!({"response": response("in_progress", json!([]), Value::Null)}),
        ),
    ];
    let item_id = item["id"].clone();
    let mut added = item.clone();
    added["status"] = json!("in_progress");
    if tool.is_some() {
        let args = item["arguments"].as_str().unwrap_or("{}").to_string();
        added["arguments"] = json!("");
        events.push(ev(
            "response.output_item.added",
            json!({"output_index": 0, "item": added}),
        ));
        let mid = (0..=args.len() / 2)
            .rev()
            .find(|&i| args.is_char_boundary(i))
            .unwrap_or(0);
        for frag in [&args[..mid], &args[mid..]] {
            events.push(ev(
                "response.function_call_arguments.delta",
                json!({"item_id": item_id, "output_index": 0, "delta": frag}),
            ));
        }
        events.push(ev(
            "response.function_call_arguments.done",
            json!({"item_id": item_id, "output_index": 0, "arguments": args}),
        ));
    } else {
        added["content"] = json!([]);
        events.push(ev(
            "response.output_item.added",
            json!({"output_index": 0, "item": added}),
        ));
        let part = |text: &str| json!({"type": "output_text", "text": text, "annotations": []});
        events.push(ev(
            "response.content_part.added",
            json!({"item_id": item_id, "output_index": 0, "content_index": 0, "part": part("")}),
        ));
        for piece in split_reply(&reply, b.chunks) {
            events.push(ev("response.output_text.delta",
                json!({"item_id": item_id, "output_index": 0, "content_index": 0, "delta": piece, "logprobs": []})));
        }
        events.push(ev("response.output_text.done",
            json!({"item_id": item_id, "output_index": 0, "content_index": 0, "text": reply, "logprobs": []})));
        events.push(ev("response.content_part.done",
            json!({"item_id": item_id, "output_index": 0, "content_index": 0, "part": part(&reply)})));
    }
    events.push(ev(
        "response.output_item.done",
        json!({"output_index": 0, "item": item}),
    ));
    events.push(ev(
        "response.completed",
        json!({"response": response("completed", json!([item]), usage)}),
    ));
    sse(s, events, &b, slot)
}

pub(crate) async fn completions(
    State(s): State<Arc<MockState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (req, b, slot) = match admit(&s, &headers, &body).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let reply = b.reply.replace("{name}", &s.name);
    let id = format!("cmpl-{}-{}", s.name, s.requests.load(Ordering::Relaxed));
    let usage = serde_json::json!({"prompt_tokens": PROMPT_TOKENS, "completion_tokens": b.chunks, "total_tokens": PROMPT_TOKENS + b.chunks as u64});
    if !req.stream {
        let body = serde_json::json!({
            "id": id, "object": "text_completion", "created": 1_700_000_000u64, "model": req.model,
            "choices": [{"index": 0, "text": reply, "logprobs": null, "finish_reason": "stop"}],
            "usage": usage
        });
        return json(body.to_string());
    }
    let mut events: Vec<Bytes> = split_reply(&reply, b.chunks)
        .into_iter()
        .map(|piece| {
            let v = serde_json::json!({"id": id, "object": "text_completion", "created": 1_700_000_000u64, "model": req.model,
                "choices": [{"index": 0, "text": piece, "logprobs": null, "finish_reason": null}]});
            Bytes::from(format!("data: {v}\n\n"))
        })
        .collect();
    let v = serde_json::json!({"id": id, "object": "text_completion", "created": 1_700_000_000u64, "model": req.model,
        "choices": [{"index": 0, "text": "", "logprobs": null, "finish_reason": "stop"}]});
    events.push(Bytes::from(format!("data: {v}\n\n")));
    events.push(Bytes::from_static(b"data: [DONE]\n\n"));
    sse(s, events, &b, slot)
}

pub(crate) async fn embeddings(
    State(s): State<Arc<MockState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (req, _, _slot) = match admit(&s, &headers, &body).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let format =
        match llmgw_wire::translate::EmbeddingFormat::of_value(req.encoding_format.as_ref()) {
            Ok(f) => f,
            Err(e) => return e.into_response(),
        };
    let inputs: Vec<String> = match req.input {
        Some(serde_json::Value::String(t)) => vec![t],
        Some(serde_json::Value::Array(items)) => items.iter().map(|v| v.to_string()).collect(),
        _ => vec![String::new()],
    };
    let data: Vec<serde_json::Value> = inputs
        .iter()
        .enumerate()
        .map(|(i, text)| {
            // A deterministic unit-ish vector derived from the text.
            let seed = text
                .bytes()
                .fold(7u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b)));
            let v: Vec<f64> = (0..8)
                .map(|k| (((seed >> (k * 4)) & 0xf) as f64 - 7.5) / 7.5)
                .collect();
            serde_json::json!({"object": "embedding", "index": i, "embedding": format.encode(v)})
        })
        .collect();
    let tokens = inputs.iter().map(|t| t.len() as u64 / 4 + 1).sum::<u64>();
    json(serde_json::json!({"object": "list", "data": data, "model": req.model, "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}).to_string())
}

pub(crate) async fn models(State(s): State<Arc<MockState>>) -> Response {
    let b = s.behavior();
    let data: Vec<serde_json::Value> = b
        .models
        .iter()
        .map(|m| serde_json::json!({"id": m, "object": "model", "created": 1_700_000_000u64, "owned_by": "mock"}))
        .collect();
    json(serde_json::json!({"object": "list", "data": data}).to_string())
}

pub(crate) async fn health(State(s): State<Arc<MockState>>) -> Response {
    if s.loaded.load(Ordering::SeqCst) {
        StatusCode::OK.into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "loading").into_response()
    }
}

/// SGLang 0.5's `/v1/loads`: one data-parallel rank's `LoadSnapshot` core fields, with the
/// scheduler's `max_running_requests` (`Behavior::max_running`; 0 when unlimited).
pub(crate) async fn v1_loads(State(s): State<Arc<MockState>>) -> Response {
    let running = s.running.load(Ordering::SeqCst);
    let waiting = s.waiting.load(Ordering::SeqCst);
    let max = s.behavior().max_running.unwrap_or(0);
    json(
        serde_json::json!({"version": "mock", "loads": [{"dp_rank": 0,
            "num_running_reqs": running, "num_waiting_reqs": waiting,
            "num_used_tokens": running * (PROMPT_TOKENS + 5), "max_running_requests": max}]})
        .to_string(),
    )
}

/// SGLang's `/get_load` (before 0.5): one data-parallel rank, `num_reqs` counting the
/// waiting ones too.
pub(crate) async fn get_load(State(s): State<Arc<MockState>>) -> Response {
    let running = s.running.load(Ordering::SeqCst);
    let waiting = s.waiting.load(Ordering::SeqCst);
    json(
        serde_json::json!([{"dp_rank": 0, "num_reqs": running + waiting, "num_waiting_reqs": waiting,
            "num_tokens": running * (PROMPT_TOKENS + 5),
            "prefix_hit_chunks": s.prefix.hit_chunks.load(Ordering::Relaxed),
            "prefix_miss_chunks": s.prefix.miss_chunks.load(Ordering::Relaxed)}])
        .to_string(),
    )
}

pub(crate) async fn model_info(State(s): State<Arc<MockState>>) -> Response {
    let b = s.behavior();
    json(serde_json::json!({"model_path": b.models.first(), "is_generation": true}).to_string())
}

/// `body` followed by spaces up to `total` bytes, produced chunk by chunk.
pub fn padded(status: StatusCode, body: String, total: u64) -> Response {
    let pad = total.saturating_sub(body.len() as u64);
    if pad == 0 {
        return (status, body).into_response();
    }
    const CHUNK: u64 = 64 * 1024;
    let spaces = Bytes::from(vec![b' '; CHUNK as usize]);
    let tail = futures_util::stream::unfold(pad, move |left| {
        let spaces = spaces.clone();
        async move {
            (left > 0).then(|| {
                let n = left.min(CHUNK);
                (
                    Ok::<_, std::io::Error>(spaces.slice(..n as usize)),
                    left - n,
                )
            })
        }
    });
    let head = futures_util::stream::once(async move { Ok(Bytes::from(body)) });
    let mut r = Response::new(Body::from_stream(futures_util::StreamExt::chain(
        head, tail,
    )));
    *r.status_mut() = status;
    r
}
