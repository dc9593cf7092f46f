//! Virtual keys and teams: what the master key holder hands out so a group can share one
//! gateway with per-person budgets, rate limits and allowed models.
//!
//! - A key is `sk-llmgw-<32 random base62 chars>`, shown once when created. Only its
//!   SHA-256 is stored ([`KeyRecord::hash`]); its id is the first 16 hex digits of that
//!   hash (what admin calls and spend rows name).
//! - A key, its team and its user ([`users`]) all carry [`Limits`]: allowed model groups
//!   (names or `*` wildcards), a budget in USD per period, rpm, tpm, max parallel
//!   requests, a blocked flag. A request must pass all of them, and the end user's
//!   limits when the key sets some ([`end_users`]).
//! - Money is counted in nano-dollars (`i64`): a price of $0.15 per million tokens is
//!   150 nano-dollars per token, so per-request costs add up exactly.
//! - Budget periods: with `budget_duration` set, period `k` of a key starts at
//!   `anchor + k * duration` (`anchor` = when the budget was set), so every replica and
//!   every restart agrees on which period a spend row belongs to without a reset job.
//!
//! [`service::KeyService`] holds the in-memory table the request path reads
//! ([`enforce`]); the store persists it.

pub mod admin_ops;
pub mod end_users;
pub mod enforce;
pub mod meter;
mod metrics;
pub mod ratelimit;
mod reports;
pub mod service;
pub mod sync;
pub mod ticket;
pub mod users;

pub use crate::records::*;
pub use enforce::{Caller, Ticket};
pub use service::KeyService;
