//! The OpenAI Responses API (`POST /v1/responses`), stateless. To a deployment that
//! serves `/responses` itself (`responses_api`), requests pass through; for every other
//! deployment they are decoded into the hub ([`request`]) and the answers encoded back
//! ([`response`], and [`stream`] for the typed stream events).

pub mod request;
pub mod response;
pub mod stream;
