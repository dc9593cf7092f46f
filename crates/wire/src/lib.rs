//! llmgw-wire: what the gateway's bytes mean, and nothing about where they go. The
//! client's request parsed as far as routing needs ([`request`]), one typed form of a
//! chat request, answer and stream event ([`hub`]) with a decoder and an encoder per wire
//! format ([`chat`], [`anthropic`], [`gemini`], [`responses`]), the one decision between
//! passing bytes through and translating them ([`convert`]), and each upstream API's
//! URLs, keys and errors behind one trait ([`upstream::Provider`], registered in
//! [`providers`]). No sockets, no clocks that matter, no routing: bytes in, bytes out.

// Errors carry the message the client will read; they are built only on failure paths.
#![allow(clippy::result_large_err)]

pub mod anthropic;
pub mod chat;
pub mod convert;
#[cfg(test)]
mod fuzz;
pub mod gemini;
pub mod hub;
pub mod openai;
pub mod prefix;
pub mod prepared;
pub mod providers;
pub mod request;
pub mod responses;
pub mod translate;
pub mod upstream;
pub mod upstream_error;
