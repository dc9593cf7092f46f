//! What the gateway prepares for a Responses request before routing (`apis::prepare` in
//! the gateway, `responses::prepare` here), carried by the `ClientRequest` to every
//! attempt's translation and to the answer's:
//! the tool name table ([`names`]: namespaced and freeform tools as upstreams without
//! them see them), whether the answer is stored, and the stored conversation the request
//! continues (`previous_response_id`).
//!
//! Plain data: it knows no wire format and imports nothing of this crate, so that the
//! request and every adapter can carry and read it.

pub mod names;

use bytes::Bytes;
pub use names::{Kind, ToolNames};

/// A Responses request's preparation.
#[derive(Debug, Clone, Default)]
pub struct Prepared {
    /// Namespaced and freeform tools, with the names upstreams see.
    pub tools: ToolNames,
    /// The answer is kept (`store`, or the configured default when absent).
    pub store: bool,
    /// The stored response this request continues.
    pub previous_response_id: Option<String>,
    /// That response's conversation, read from the store (the gateway fills it in).
    pub history: Option<History>,
}

/// The conversation up to and including a stored response.
#[derive(Debug, Clone, Default)]
pub struct History {
    /// Every earlier turn as a JSON array of Responses input items, oldest first: each
    /// response's input items, then its output items.
    pub items: Bytes,
    /// The deployment that holds every response of the chain itself (each was passed
    /// through to this `responses_api` deployment with `store`): only there may the
    /// request pass through unchanged, `previous_response_id` and all.
    pub lives_at: Option<String>,
}

impl Prepared {
    /// True when the request reaches `deployment` with `previous_response_id` as the
    /// client sent it: there is none, or the whole chain lives at that deployment.
    pub fn chain_lives_at(&self, deployment: &str) -> bool {
        match &self.history {
            None => true,
            Some(h) => h.lives_at.as_deref() == Some(deployment),
        }
    }
}
