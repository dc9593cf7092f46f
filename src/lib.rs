//! llmgw: one binary that runs an OpenAI-compatible LLM gateway (`serve`) and manages it
//! as a SLURM job (`start`, `status`, `logs`, `stop`). See ARCHITECTURE.md for the map.

// Upstream errors carry the message the client will read; they are built only on failure
// paths, and the success type (an HTTP response) is no smaller, so boxing buys nothing.
#![allow(clippy::result_large_err)]

pub mod access;
pub mod admin;
pub mod agent;
pub mod apis;
pub mod cache;
pub mod cli;
pub mod clock;
pub mod commands;
pub mod config;
pub mod conn;
pub mod duration;
pub mod error;
pub mod heavy;
pub mod keys;
pub mod logging;
pub mod metrics;
pub mod mock;
pub mod mock_cloud;
pub mod placement;
pub mod providers;
pub mod redact;
pub mod renew;
pub mod request;
pub mod router;
pub mod serve;
pub mod slurm;
pub mod spend;
pub mod state;
pub mod store;
pub mod supervise;
