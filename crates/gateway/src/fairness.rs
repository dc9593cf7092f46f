//! Whose a request is for the fair queue (`[router] fairness`), and its priority class:
//! the body's `"priority"` or the `x-llmgw-priority` header (a name or 0–255), else the
//! default class.

use crate::keys::Caller;
use axum::http::HeaderMap;
use llmgw_core::config::Fairness;
use llmgw_core::error::ApiError;
use llmgw_wire::request::{priority, ClientRequest, Flow};
use std::sync::Arc;

/// The request's flow: its key, team or user (as `fairness` says), weight and priority.
pub fn flow(
    caller: &Caller,
    fairness: Fairness,
    req: &ClientRequest,
    headers: &HeaderMap,
) -> Result<Flow, ApiError> {
    let asked = match (req.options.priority, headers.get("x-llmgw-priority")) {
        (Some(p), _) => Some(p),
        (None, Some(h)) => Some(
            h.to_str()
                .map_err(|_| ApiError::bad_request("x-llmgw-priority is not text"))
                .and_then(priority::parse)?,
        ),
        (None, None) => None,
    };
    let id: Arc<str> = match (caller, fairness) {
        (Caller::Master, _) | (_, Fairness::Off) => Arc::from(""),
        (Caller::Key(k), Fairness::Key) => Arc::from(k.rec.id.as_str()),
        (Caller::Key(k), Fairness::Team) => match &k.rec.team_id {
            Some(t) => Arc::from(format!("team:{t}")),
            None => Arc::from(k.rec.id.as_str()),
        },
        (Caller::Key(k), Fairness::User) => match &k.rec.user_id {
            Some(u) => Arc::from(format!("user:{u}")),
            None => Arc::from(k.rec.id.as_str()),
        },
    };
    Ok(Flow {
        id,
        weight: 1,
        priority: asked.unwrap_or(priority::DEFAULT),
    })
}
