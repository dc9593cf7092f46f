//! The OpenAI Responses API (`POST /v1/responses`). Before routing, [`prepare`] reads
//! what the gateway needs (store, the stored response continued, the tool name table).
//! To a deployment that serves `/responses` itself (`responses_api`), requests pass
//! through; for every other deployment they are decoded into the hub ([`request`],
//! [`tools`]) and the answers encoded back ([`response`], and [`stream`] for the typed
//! stream events). [`stored`] holds what keeping responses needs of the format: the
//! input items as listed, the conversation rebuilt from a chain, the final response of a
//! stream.

pub mod prepare;
pub mod request;
pub mod response;
pub mod stored;
pub mod stream;
pub mod tools;
