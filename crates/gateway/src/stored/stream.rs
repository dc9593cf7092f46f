//! A stored answer's stream: every event goes on as it comes, except the final one
//! (`response.completed`, `…incomplete`, `…failed`), held until the response it carries
//! is stored, so that the stream's end means "stored".

use super::Keep;
use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use llmgw_wire::responses::stored::FinalScan;

type Inner = axum::body::BodyDataStream;

pub(super) struct Storing {
    keep: Option<Keep>,
    lives_at: Option<String>,
    inner: Inner,
    scan: FinalScan,
    done: bool,
}

impl Storing {
    pub(super) fn new(keep: Keep, lives_at: Option<String>, inner: Inner) -> Self {
        Storing {
            keep: Some(keep),
            lives_at,
            inner,
            scan: FinalScan::default(),
            done: false,
        }
    }

    pub(super) fn into_stream(self) -> impl Stream<Item = Result<Bytes, axum::Error>> + Send {
        futures_util::stream::unfold(self, |mut s| async move {
            if s.done {
                return None;
            }
            loop {
                match s.inner.next().await {
                    Some(Ok(chunk)) => {
                        let pass = s.scan.push(&chunk);
                        if !pass.is_empty() {
                            return Some((Ok(pass), s));
                        }
                    }
                    Some(Err(e)) => {
                        // Broken off: what was held goes on, nothing is stored.
                        s.done = true;
                        s.keep = None;
                        let held = s.scan.finish();
                        if held.is_empty() {
                            return Some((Err(e), s));
                        }
                        return Some((Ok(held), s));
                    }
                    None => {
                        s.done = true;
                        if let (Some(keep), Some(response)) = (s.keep.take(), s.scan.response()) {
                            let response = response.as_bytes().to_vec();
                            keep.store(s.lives_at.take(), &response).await;
                        }
                        let held = s.scan.finish();
                        if held.is_empty() {
                            return None;
                        }
                        return Some((Ok(held), s));
                    }
                }
            }
        })
    }
}
