//! A client's request body, read whole up to `max_body_bytes` (413 beyond) within the
//! connection's body deadline (`conn` stops a slow body with [`BodyStopped`]).

use axum::body::Body;
use axum::http::{header, HeaderMap, StatusCode};
use bytes::Bytes;
use llmgw_core::error::ApiError;
use std::time::Duration;

/// Why a request body stopped before its end.
#[derive(Debug, thiserror::Error)]
pub enum BodyStopped {
    #[error(
        "the request body did not arrive within {0:?} ([server] body_read_timeout); \
         send it at once, or raise the limit"
    )]
    Timeout(Duration),
    #[error("the gateway is shutting down and the request body was not complete; retry")]
    ShuttingDown,
}

/// Reads the body up to `limit` bytes; 413 beyond it.
pub(crate) async fn read_body(
    body: Body,
    headers: &HeaderMap,
    limit: usize,
) -> Result<Bytes, ApiError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(ApiError::too_large(limit));
    }
    let e = match collect_capped(body, limit).await {
        Ok(Some(b)) => return Ok(b),
        Ok(None) => return Err(ApiError::too_large(limit)),
        Err(e) => e,
    };
    // The cause sits a few `source()`s down: axum and hyper wrap it.
    let mut causes = std::iter::successors(Some(&e as &dyn std::error::Error), |c| c.source());
    Err(match causes.find_map(|c| c.downcast_ref::<BodyStopped>()) {
        Some(why @ BodyStopped::Timeout(_)) => ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "invalid_request_error",
            why.to_string(),
        )
        .with_code("request_timeout"),
        Some(why) => ApiError::unavailable(why.to_string()),
        None => ApiError::bad_request(format!("could not read the request body: {e}")),
    })
}

/// The body's bytes, or `None` when there are more than `limit`. A body that arrives in
/// one piece (the common case) is returned as it came, without a copy; `axum::body::to_bytes`
/// cost ~1.2k instructions a request more (issue 13).
async fn collect_capped(mut body: Body, limit: usize) -> Result<Option<Bytes>, axum::Error> {
    use http_body_util::BodyExt as _;
    let mut whole: Option<Bytes> = None;
    let mut more = bytes::BytesMut::new();
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame?.into_data() else {
            continue; // trailers
        };
        let so_far = whole.as_ref().map_or(0, Bytes::len) + more.len();
        if data.len() > limit.saturating_sub(so_far) {
            return Ok(None);
        }
        match whole.take() {
            None if more.is_empty() => whole = Some(data),
            first => {
                if let Some(first) = first {
                    more.extend_from_slice(&first);
                }
                more.extend_from_slice(&data);
            }
        }
    }
    Ok(Some(match whole {
        Some(b) => b,
        None => more.freeze(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body_of(pieces: &[&'static str]) -> Body {
        let frames: Vec<Result<Bytes, std::io::Error>> = pieces
            .iter()
            .map(|p| Ok(Bytes::from_static(p.as_bytes())))
            .collect();
        Body::from_stream(futures_util::stream::iter(frames))
    }

    #[tokio::test]
    async fn a_body_in_pieces_is_joined_in_order_and_capped_at_its_limit() {
        let got = collect_capped(body_of(&["{\"a\":", "1,\"b\"", ":2}"]), 100).await;
        assert_eq!(got.unwrap().unwrap(), "{\"a\":1,\"b\":2}");
        // One piece comes back as it is.
        let one = collect_capped(body_of(&["{}"]), 2).await;
        assert_eq!(one.unwrap().unwrap(), "{}");
        // Exactly at the limit, and one byte over it.
        let at = collect_capped(body_of(&["12345", "67890"]), 10).await;
        assert_eq!(at.unwrap().unwrap(), "1234567890");
        let over = collect_capped(body_of(&["12345", "678901"]), 10).await;
        assert_eq!(over.unwrap(), None);
        let empty = collect_capped(body_of(&[]), 10).await;
        assert_eq!(empty.unwrap().unwrap(), "");
    }
}
