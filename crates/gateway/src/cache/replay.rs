//! Answers from the cache: a stored JSON answer or stream replayed as what the client
//! asked for (a JSON answer becomes a stream when the request streams), and the tee that
//! stores a stream once it ends.

use super::*;

/// The response for a stored entry, or `None` when it cannot answer this request.
pub(crate) fn answer(e: &Entry, req: &ClientRequest) -> Option<Response> {
    let (body, sse) = match (e.form, req.stream) {
        (Form::Json, false) => (e.body.clone(), false),
        (Form::Json, true) => (
            synthesize_stream(req.endpoint, &e.body, req.include_usage)?,
            true,
        ),
        (Form::Sse, true) if !req.include_usage => (e.body.clone(), true),
        (Form::SseUsage, true) if req.include_usage => (e.body.clone(), true),
        _ => return None,
    };
    let mut r = Response::new(Body::from(body));
    let h = r.headers_mut();
    if sse {
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/event-stream"),
        );
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    } else {
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
    }
    Some(r)
}

/// A complete stream: it ends with the API's end event and no error event was sent.
pub(crate) fn stream_complete(api: llmgw_wire::request::Api, buf: &[u8]) -> bool {
    use llmgw_wire::request::Api;
    let end = buf.trim_ascii_end();
    match api {
        Api::OpenAi => {
            end.ends_with(b"data: [DONE]")
                && memchr::memmem::find(buf, b"data: {\"error\"").is_none()
        }
        Api::Anthropic => {
            end.ends_with(b"{\"type\":\"message_stop\"}")
                && memchr::memmem::find(buf, b"event: error").is_none()
        }
        Api::Responses => {
            memchr::memmem::find(buf, b"event: response.completed").is_some()
                && memchr::memmem::find(buf, b"event: error").is_none()
        }
    }
}

/// Passes a streamed response through unchanged, keeping a copy; stores the copy when
/// the stream ended complete. The store finishes before the body's end reaches the
/// client (bounded by the Redis timeout), so the next identical request is a hit.
pub(crate) struct Tee {
    pub(crate) inner: axum::body::BodyDataStream,
    pub(crate) buf: BytesMut,
    /// `None` once storing is abandoned (too big, broke off).
    pub(crate) job: Option<StoreJob>,
    pub(crate) storing: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
    pub(crate) ended: bool,
}

impl Stream for Tee {
    type Item = Result<Bytes, axum::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if let Some(f) = this.storing.as_mut() {
            return match f.as_mut().poll(cx) {
                Poll::Ready(()) => {
                    this.storing = None;
                    Poll::Ready(None)
                }
                Poll::Pending => Poll::Pending,
            };
        }
        if this.ended {
            return Poll::Ready(None);
        }
        match Pin::new(&mut this.inner).poll_next(cx) {
            Poll::Ready(Some(Ok(b))) => {
                if let Some(job) = &this.job {
                    if (this.buf.len() + b.len()) as u64 > job.inner.max_entry {
                        this.job = None;
                        this.buf = BytesMut::new();
                    } else {
                        this.buf.extend_from_slice(&b);
                    }
                }
                Poll::Ready(Some(Ok(b)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.job = None;
                this.ended = true;
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(None) => {
                this.ended = true;
                let buf = std::mem::take(&mut this.buf).freeze();
                match this.job.take() {
                    Some(job) if stream_complete(job.api, &buf) => {
                        let form = Form::for_stream(job.include_usage);
                        let mut f: Pin<Box<dyn Future<Output = ()> + Send>> =
                            Box::pin(job.store(form, buf));
                        match f.as_mut().poll(cx) {
                            Poll::Ready(()) => Poll::Ready(None),
                            Poll::Pending => {
                                this.storing = Some(f);
                                Poll::Pending
                            }
                        }
                    }
                    _ => Poll::Ready(None),
                }
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

/// An SSE stream equivalent to a stored JSON answer (chat or text completion).
pub(crate) fn synthesize_stream(
    endpoint: Endpoint,
    body: &[u8],
    include_usage: bool,
) -> Option<Bytes> {
    let v: Value = serde_json::from_slice(body).ok()?;
    let choices = v.get("choices")?.as_array()?;
    let (object, chat) = match endpoint {
        Endpoint::ChatCompletions => ("chat.completion.chunk", true),
        Endpoint::Completions => ("text_completion", false),
        // Embeddings do not stream; other APIs' streams are stored as they were sent.
        _ => return None,
    };
    let mut out = BytesMut::new();
    let chunk = |out: &mut BytesMut, choices: Value, usage: Option<&Value>| {
        let mut c = serde_json::Map::new();
        c.insert("id".into(), v.get("id").cloned().unwrap_or(Value::Null));
        c.insert("object".into(), Value::String(object.into()));
        c.insert(
            "created".into(),
            v.get("created").cloned().unwrap_or(Value::Null),
        );
        c.insert(
            "model".into(),
            v.get("model").cloned().unwrap_or(Value::Null),
        );
        if let Some(fp) = v.get("system_fingerprint") {
            c.insert("system_fingerprint".into(), fp.clone());
        }
        c.insert("choices".into(), choices);
        if include_usage {
            c.insert("usage".into(), usage.cloned().unwrap_or(Value::Null));
        }
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(Value::Object(c).to_string().as_bytes());
        out.extend_from_slice(b"\n\n");
    };
    for (i, choice) in choices.iter().enumerate() {
        let index = choice.get("index").cloned().unwrap_or(Value::from(i));
        let logprobs = choice.get("logprobs").cloned().unwrap_or(Value::Null);
        let finish = choice.get("finish_reason").cloned().unwrap_or(Value::Null);
        if chat {
            let msg = choice.get("message")?;
            let mut delta = serde_json::Map::new();
            delta.insert(
                "role".into(),
                msg.get("role").cloned().unwrap_or(Value::from("assistant")),
            );
            delta.insert(
                "content".into(),
                msg.get("content").cloned().unwrap_or(Value::Null),
            );
            if let Some(Value::Array(calls)) = msg.get("tool_calls") {
                let calls: Vec<Value> = calls
                    .iter()
                    .enumerate()
                    .map(|(k, call)| {
                        let mut call = call.clone();
                        if let Value::Object(o) = &mut call {
                            o.insert("index".into(), Value::from(k));
                        }
                        call
                    })
                    .collect();
                delta.insert("tool_calls".into(), Value::Array(calls));
            }
            if let Some(r) = msg.get("refusal").filter(|r| !r.is_null()) {
                delta.insert("refusal".into(), r.clone());
            }
            let first = serde_json::json!([{"index": index, "delta": Value::Object(delta), "logprobs": logprobs, "finish_reason": null}]);
            chunk(&mut out, first, None);
            let last = serde_json::json!([{"index": index, "delta": {}, "logprobs": null, "finish_reason": finish}]);
            chunk(&mut out, last, None);
        } else {
            let text = choice.get("text").cloned().unwrap_or(Value::from(""));
            let first = serde_json::json!([{"index": index, "text": text, "logprobs": logprobs, "finish_reason": null}]);
            chunk(&mut out, first, None);
            let last = serde_json::json!([{"index": index, "text": "", "logprobs": null, "finish_reason": finish}]);
            chunk(&mut out, last, None);
        }
    }
    if include_usage {
        chunk(
            &mut out,
            Value::Array(Vec::new()),
            Some(v.get("usage").unwrap_or(&Value::Null)),
        );
    }
    out.extend_from_slice(b"data: [DONE]\n\n");
    Some(out.freeze())
}
