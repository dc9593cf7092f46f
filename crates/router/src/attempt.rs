//! One attempt against one deployment: the body and request from the wire crate, the
//! exchange (h1 or reqwest) under the attempt's deadline, the answer read whole or
//! wrapped as a stream, and the failure classified for the retry policy.

use super::*;

impl Router {
    /// One attempt against one deployment; upstream text in its error has the known
    /// secrets masked.
    pub(crate) async fn attempt(
        &self,
        dep: &Arc<Deployment>,
        slot: InFlight,
        req: &ClientRequest,
        limit: Duration,
        log: &mut RequestLog,
    ) -> Result<Response, UpstreamError> {
        let started = Instant::now();
        let r = self.attempt_unscrubbed(dep, slot, req, limit, log).await;
        let status = match &r {
            Ok(resp) => resp.status().as_u16(),
            Err(e) => e.error.status.as_u16(),
        };
        dep.hist.attempt(status, started.elapsed());
        r.map_err(|mut e| {
            e.scrub(&self.secrets);
            e
        })
    }

    async fn attempt_unscrubbed(
        &self,
        dep: &Arc<Deployment>,
        slot: InFlight,
        req: &ClientRequest,
        limit: Duration,
        log: &mut RequestLog,
    ) -> Result<Response, UpstreamError> {
        let timeout = dep.timeout.min(limit);
        let rb = llmgw_wire::convert::attempt_body(dep, req)
            .await
            .and_then(|body| dep.provider.request(self.client.reqwest(), dep, req, body))
            .map_err(|e| UpstreamError::new(ErrorClass::BadRequest, e))?;
        // A traced request: the upstream continues the trace under this attempt's span.
        let rb = match log
            .trace
            .as_deref()
            .and_then(trace::TraceLink::current_traceparent)
        {
            Some(tp) => rb.header(trace::TRACEPARENT, tp),
            None => rb,
        };
        let sent = Instant::now();
        let until = tokio::time::Instant::from_std(llmgw_core::duration::deadline(sent, timeout));
        // One timer for the whole exchange: the answer's head, then its whole body or a
        // stream's first chunk (a timer costs a registration and a removal).
        let mut slot = Some(slot);
        let exchange = async {
            let resp = self
                .client
                .send(rb)
                .await
                .map_err(|e| send_error(dep, e, timeout))?;
            if !resp.status().is_success() {
                return Ok(Answer::Refused(resp));
            }
            if req.stream {
                let translator = llmgw_wire::convert::translator(dep, req);
                // The slot is taken here and nowhere else on this path.
                #[allow(clippy::expect_used)]
                let mut stream = UpstreamStream::new(
                    resp,
                    translator,
                    timeout,
                    slot.take().expect("the slot is taken once"),
                    self.secrets.clone(),
                    req.endpoint.api(),
                );
                stream.first().await?;
                return Ok(Answer::Stream(stream));
            }
            let limit = self.policy.max_response_bytes;
            match read_capped(resp, limit).await {
                Err(_) => Err(body_error(dep)),
                Ok(Capped::Whole(b)) => Ok(Answer::Whole(b)),
                Ok(Capped::Cut(_)) => Err(too_large_error(dep, limit)),
            }
        };
        let answer = match tokio::time::timeout_at(until, exchange).await {
            Err(_) => return Err(timeout_error(dep, timeout)),
            Ok(Err(e)) => return Err(e),
            Ok(Ok(a)) => a,
        };
        let now = Instant::now();
        match answer {
            Answer::Refused(resp) => {
                let status = resp.status();
                let headers = resp.headers().clone();
                // Only the start of an error body matters; the rest is never read.
                let limit = self.policy.max_error_bytes;
                let body = match tokio::time::timeout_at(until, read_capped(resp, limit)).await {
                    Ok(Ok(Capped::Whole(b) | Capped::Cut(b))) => b,
                    _ => Bytes::new(),
                };
                log.upstream += sent.elapsed();
                Err(dep.provider.error(status, &headers, &body))
            }
            Answer::Stream(mut stream) => {
                let ttft = now.saturating_duration_since(sent);
                log.upstream += ttft;
                dep.record_success(ttft);
                let resp = success(dep, log, now, "text/event-stream")
                    .header(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
                stream.set_log(log.take());
                // `success` sets only valid, static header values.
                #[allow(clippy::expect_used)]
                Ok(resp
                    .body(Body::from_stream(stream))
                    .expect("valid response"))
            }
            Answer::Whole(body) => {
                let took = now.saturating_duration_since(sent);
                log.upstream += took;
                drop(slot);
                let body = llmgw_wire::convert::translate_body(dep, req, body)
                    .map_err(|e| UpstreamError::new(ErrorClass::InternalServer, e))?;
                if dep.tpm.is_some() {
                    dep.add_tokens(usage_tokens(&body));
                }
                dep.record_success(took);
                let resp = success(dep, log, now, "application/json");
                // `success` sets only valid, static header values.
                #[allow(clippy::expect_used)]
                Ok(resp.body(Body::from(body)).expect("valid response"))
            }
        }
    }
}

/// The head of a 200 answer from `dep` at `now`: llmgw's headers and `content_type`; the
/// log gets its status and time to first byte.
pub(crate) fn success(
    dep: &Deployment,
    log: &mut RequestLog,
    now: Instant,
    content_type: &'static str,
) -> axum::http::response::Builder {
    log.ttfb = Some(now.saturating_duration_since(log.start));
    log.status = 200;
    let mut builder = Response::builder().status(StatusCode::OK);
    if let Some(h) = builder.headers_mut() {
        h.insert(names::DEPLOYMENT, header_value(&dep.id));
        h.insert(names::ATTEMPTS, HeaderValue::from(log.attempts));
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
        h.insert(names::OVERHEAD_MS, overhead_header(log.overhead_at(now)));
        h.insert(
            names::QUEUE_MS,
            if log.queue.is_zero() {
                HeaderValue::from_static("0")
            } else {
                HeaderValue::from(u64::try_from(log.queue.as_millis()).unwrap_or(u64::MAX))
            },
        );
    }
    builder
}

/// What came back from an upstream within an attempt's time.
// Short-lived and moved once, inside the attempt's future: boxing a variant would cost an
// allocation per request to save a copy.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Answer {
    /// A non-2xx answer; its body is still unread.
    Refused(UpstreamResponse),
    /// A stream whose first chunk has arrived.
    Stream(UpstreamStream),
    /// A whole non-streaming answer.
    Whole(Bytes),
}

/// A body read up to a limit.
pub(crate) enum Capped {
    Whole(Bytes),
    /// The body was longer than the limit: its first `limit` bytes (the rest is unread).
    Cut(Bytes),
}

/// Reads `resp`'s body, but never more than `limit` bytes of it.
async fn read_capped(resp: UpstreamResponse, limit: usize) -> Result<Capped, upstream::BoxError> {
    let mut body = resp.into_body();
    // Most answers come in one piece: no copy then.
    let first = match body.chunk().await? {
        None => return Ok(Capped::Whole(Bytes::new())),
        Some(b) if b.len() > limit => return Ok(Capped::Cut(b.slice(..limit))),
        Some(b) => b,
    };
    if body.is_end_stream() {
        return Ok(Capped::Whole(first));
    }
    let mut buf = bytes::BytesMut::from(&first[..]);
    while let Some(chunk) = body.chunk().await? {
        let room = limit - buf.len();
        if chunk.len() > room {
            buf.extend_from_slice(&chunk[..room]);
            return Ok(Capped::Cut(buf.freeze()));
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(Capped::Whole(buf.freeze()))
}

/// A successful answer too large to hold. Retrying elsewhere would only fetch it again,
/// and the deployment did nothing wrong: the class is the one that neither retries,
/// falls back nor cools down.
pub(crate) fn too_large_error(dep: &Deployment, limit: usize) -> UpstreamError {
    UpstreamError::new(
        ErrorClass::BadRequest,
        ApiError::bad_gateway(format!(
            "deployment {} answered with more than {limit} bytes, the gateway's limit \
             ([router] max_response_bytes); ask for less (fewer inputs, lower n or max_tokens)",
            dep.id
        ))
        .with_code("upstream_response_too_large"),
    )
}

/// The tokens in a response's `usage` (OpenAI's and Responses' `total_tokens`, or
/// Anthropic's `input_tokens + output_tokens`), found without parsing the whole body.
pub(crate) fn usage_tokens(body: &[u8]) -> u64 {
    #[derive(serde::Deserialize)]
    struct Usage {
        #[serde(default)]
        total_tokens: Option<u64>,
        #[serde(default)]
        input_tokens: u64,
        #[serde(default)]
        output_tokens: u64,
    }
    let Some(at) = memchr::memmem::rfind(body, b"\"usage\"") else {
        return 0;
    };
    let rest = &body[at + 7..];
    let Some(colon) = rest.iter().position(|&c| c == b':') else {
        return 0;
    };
    let mut de = serde_json::Deserializer::from_slice(&rest[colon + 1..]);
    serde::Deserialize::deserialize(&mut de)
        .map(|u: Usage| {
            u.total_tokens
                .unwrap_or(u.input_tokens.saturating_add(u.output_tokens))
        })
        .unwrap_or(0)
}

pub(crate) fn timeout_error(dep: &Deployment, timeout: Duration) -> UpstreamError {
    UpstreamError::new(
        ErrorClass::Timeout,
        ApiError::gateway_timeout(format!(
            "deployment {} did not answer within {:?}",
            dep.id, timeout
        )),
    )
}

pub(crate) fn send_error(dep: &Deployment, e: SendError, timeout: Duration) -> UpstreamError {
    match e {
        SendError::Timeout => timeout_error(dep, timeout),
        SendError::Connect => match dep.unreachable_hint {
            Some(hint) => {
                connection_error(dep, &format!("connection refused or unreachable; {hint}"))
            }
            None => connection_error(dep, "connection refused or unreachable"),
        },
        SendError::Failed => connection_error(dep, "the request failed"),
    }
}

pub(crate) fn body_error(dep: &Deployment) -> UpstreamError {
    connection_error(dep, "the response body broke off")
}

pub(crate) fn connection_error(dep: &Deployment, why: &str) -> UpstreamError {
    UpstreamError::new(
        ErrorClass::Connection,
        ApiError::bad_gateway(format!(
            "deployment {} ({}): {why}",
            dep.id,
            redact::userinfo(&dep.api_base)
        )),
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn usage_tokens_found_without_full_parse() {
        let body = br#"{"id":"x","choices":[{"message":{"content":"usage"}}],"usage":{"prompt_tokens":3,"completion_tokens":4,"total_tokens":7}}"#;
        assert_eq!(super::usage_tokens(body), 7);
        assert_eq!(super::usage_tokens(b"{}"), 0);
        let anthropic =
            br#"{"type":"message","content":[],"usage":{"input_tokens":3,"output_tokens":5}}"#;
        assert_eq!(super::usage_tokens(anthropic), 8);
    }
}
