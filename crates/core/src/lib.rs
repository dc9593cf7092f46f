//! llmgw-core: what every layer of llmgw shares, and nothing that knows HTTP routing,
//! wire formats or SLURM: the config schema and its validation, errors in the client's
//! API, durations and clocks, secrets and their redaction, the state directory's
//! records, logging and the pool for heavy per-request work. See ARCHITECTURE.md.

// Errors carry the message the client will read; they are built only on failure paths,
// and the success types are no smaller, so boxing buys nothing.
#![allow(clippy::result_large_err)]

pub mod alert;
pub mod clock;
pub mod config;
pub mod disk;
pub mod duration;
pub mod error;
pub mod heavy;
pub mod histogram;
pub mod host;
pub mod logging;
pub mod redact;
pub mod state;
