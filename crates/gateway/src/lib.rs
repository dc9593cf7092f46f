//! llmgw-gateway: the HTTP server a client talks to. Connections and their limits
//! ([`conn`]), who may call ([`access`]), the request path ([`serve`], [`apis`]), virtual
//! keys, budgets and spend ([`keys`], [`spend`], [`store`]), the response cache
//! ([`cache`]), the admin API ([`admin`]), `/metrics` ([`metrics`]), alerts ([`alerts`]), OpenTelemetry traces ([`telemetry`]) and, for a gateway that
//! is a SLURM job, the renewal relay ([`relay`]). Routing is the router's, wire formats
//! the wire crate's, processes and SLURM the cluster crate's.

// Errors carry the message the client will read; they are built only on failure paths.
#![allow(clippy::result_large_err)]

pub mod access;
pub mod admin;
pub mod alerts;
pub mod apis;
pub mod batch_runner;
pub mod batches;
pub mod body;
pub mod cache;
pub mod conn;
pub mod fairness;
pub mod keys;
pub mod metrics;
pub mod proxy;
pub mod records;
pub mod relay;
pub mod retention;
pub mod routes;
pub mod serve;
pub mod spend;
pub mod state;
pub mod store;
pub mod stored;
pub mod telemetry;
