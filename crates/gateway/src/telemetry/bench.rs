//! For `benches/hot_path.rs` only: what a traced request costs the gateway's CPU apart
//! from HTTP and the router: the recording started from the client's headers, the
//! request's attributes, the JSON answer read, the span finished and handed over, and the
//! exporter's protobuf encoding of it. With tracing off the same call returns at once.

use super::span::Finished;
use super::{export, Stats, Telemetry};
use axum::http::HeaderMap;
use axum::response::Response;
use llmgw_core::redact::Secrets;
use llmgw_router::RequestLog;
use llmgw_wire::request::{ClientRequest, Endpoint};
use std::collections::HashMap;
use std::sync::Arc;
use tokio::sync::mpsc;

/// A telemetry without an exporter task (the benchmark encodes what it is sent).
pub struct Bench {
    tel: Option<Arc<Telemetry>>,
    rx: Option<mpsc::Receiver<Finished>>,
    resource: Vec<u8>,
}

impl Bench {
    /// Tracing on (every request sampled) or off.
    pub fn new(on: bool) -> Bench {
        if !on {
            return Bench {
                tel: None,
                rx: None,
                resource: Vec::new(),
            };
        }
        let (tx, rx) = mpsc::channel(1024);
        let tel = Telemetry {
            tx,
            ratio: 1.0,
            capture: false,
            secrets: Arc::new(Secrets::default()),
            prices: HashMap::from([("bench-1".to_string(), (0.5, 1.5))]),
            stats: Arc::new(Stats::default()),
        };
        Bench {
            tel: Some(Arc::new(tel)),
            rx: Some(rx),
            resource: export::encode_resource(&[super::Attr(
                "service.name",
                super::Value::Static("llmgw"),
            )]),
        }
    }

    /// One JSON request's tracing work; returns the answer as the client would get it and
    /// the size of the encoded export (0 when off).
    pub async fn request(
        &mut self,
        headers: &HeaderMap,
        req: &ClientRequest,
        log: &RequestLog,
        answer: Response,
    ) -> (Response, usize) {
        let Some(rec) = self
            .tel
            .as_ref()
            .and_then(|t| t.begin(Endpoint::ChatCompletions, "/v1/chat/completions", headers))
        else {
            return (answer, 0);
        };
        let mut rec = rec;
        rec.request(req, &crate::keys::Caller::Master);
        let resp = rec.respond(answer, log).await;
        let encoded = match self.rx.as_mut().and_then(|rx| rx.try_recv().ok()) {
            Some(f) => export::encode_request(&self.resource, &f.into_spans()).len(),
            None => 0,
        };
        (resp, encoded)
    }
}
