//! Whose a request is for the fair queue (`[router] fairness`), its weight and its
//! priority class: the body's `"priority"` or the `x-llmgw-priority` header (a name or
//! 0–255), else the key's (or its team's) `priority`, else the default class; never above
//! the key's or the team's `max_priority`.

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
    let (id, weight, class, cap) = match caller {
        Caller::Master => (Arc::from(""), 1, None, None),
        Caller::Key(k) => {
            let own = &k.rec.limits;
            let team = k.team.as_ref().map(|t| &t.rec.limits);
            let id: Arc<str> = match fairness {
                Fairness::Off => Arc::from(""),
                Fairness::Key => Arc::from(k.rec.id.as_str()),
                Fairness::Team => match &k.rec.team_id {
                    Some(t) => Arc::from(format!("team:{t}")),
                    None => Arc::from(k.rec.id.as_str()),
                },
                Fairness::User => match &k.rec.user_id {
                    Some(u) => Arc::from(format!("user:{u}")),
                    None => Arc::from(k.rec.id.as_str()),
                },
            };
            // A team flow's weight is the team's; otherwise the key's, then its team's.
            let weight = match (fairness, team) {
                (Fairness::Team, Some(t)) if k.rec.team_id.is_some() => t.weight,
                _ => own.weight.or(team.and_then(|t| t.weight)),
            };
            // The key's and its team's caps both hold.
            let cap = match (own.max_priority, team.and_then(|t| t.max_priority)) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            let class = own.priority.or(team.and_then(|t| t.priority));
            (id, weight.unwrap_or(1), class, cap)
        }
    };
    let wanted = asked.or(class).unwrap_or(priority::DEFAULT);
    Ok(Flow {
        id,
        weight,
        priority: cap.map_or(wanted, |c| wanted.min(c)),
    })
}
