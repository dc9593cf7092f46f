//! The chain's figures for `/metrics`: plain atomics the chain code updates.

/// The gateway's live chain figures for `/metrics`.
pub mod counters {
    use std::sync::atomic::{AtomicI64, AtomicU64};
    pub static GENERATION: AtomicU64 = AtomicU64::new(0);
    /// Seconds left of the time limit; -1 when unknown.
    pub static SECONDS_LEFT: AtomicI64 = AtomicI64::new(-1);
    pub static RENEWALS: AtomicU64 = AtomicU64::new(0);
    pub static RENEW_FAILURES: AtomicU64 = AtomicU64::new(0);
    /// 0 none, 1 pending, 2 running (loading), 3 ready.
    pub static SUCCESSOR: AtomicU64 = AtomicU64::new(0);
    pub static HANDOVERS: AtomicU64 = AtomicU64::new(0);
    pub static HANDING_OVER: AtomicU64 = AtomicU64::new(0);
    pub static FORWARDED: AtomicU64 = AtomicU64::new(0);
    pub static FORWARD_ERRORS: AtomicU64 = AtomicU64::new(0);
    pub static TAKEBACKS: AtomicU64 = AtomicU64::new(0);
    /// `[slurm] idle_stop` in seconds (0: off).
    pub static IDLE_STOP_SECS: AtomicU64 = AtomicU64::new(0);
    /// GPUs this job holds (all nodes).
    pub static JOB_GPUS: AtomicU64 = AtomicU64::new(0);
}

/// The chain's metrics in Prometheus text format (append to `/metrics`).
pub fn metrics_text() -> String {
    use std::fmt::Write as _;
    use std::sync::atomic::Ordering::Relaxed;
    let mut out = String::with_capacity(1024);
    let mut family = |name: &str, kind: &str, help: &str, value: String| {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
        );
    };
    family(
        "llmgw_chain_generation",
        "gauge",
        "This job's generation in the gateway's chain of jobs (0 outside SLURM)",
        counters::GENERATION.load(Relaxed).to_string(),
    );
    family(
        "llmgw_job_seconds_left",
        "gauge",
        "Seconds until this job's time limit (-1 unknown)",
        counters::SECONDS_LEFT.load(Relaxed).to_string(),
    );
    family(
        "llmgw_renewals_total",
        "counter",
        "Successor jobs this job submitted",
        counters::RENEWALS.load(Relaxed).to_string(),
    );
    family(
        "llmgw_renewal_failures_total",
        "counter",
        "Successor submissions that failed, or successors that ended before they were ready",
        counters::RENEW_FAILURES.load(Relaxed).to_string(),
    );
    family(
        "llmgw_successor_state",
        "gauge",
        "0 no successor, 1 pending in the queue, 2 running (loading), 3 ready",
        counters::SUCCESSOR.load(Relaxed).to_string(),
    );
    family(
        "llmgw_handovers_total",
        "counter",
        "Handovers this job made to a successor",
        counters::HANDOVERS.load(Relaxed).to_string(),
    );
    family(
        "llmgw_handover_in_progress",
        "gauge",
        "1 while this job forwards to its successor and drains",
        counters::HANDING_OVER.load(Relaxed).to_string(),
    );
    family(
        "llmgw_handover_forwarded_requests_total",
        "counter",
        "Requests that reached this job after the handover and were forwarded",
        counters::FORWARDED.load(Relaxed).to_string(),
    );
    family(
        "llmgw_handover_forward_errors_total",
        "counter",
        "Forwarded requests the successor could not be reached for",
        counters::FORWARD_ERRORS.load(Relaxed).to_string(),
    );
    family(
        "llmgw_handover_takebacks_total",
        "counter",
        "Handovers that did not hold: the successor was lost and this job took the endpoint back",
        counters::TAKEBACKS.load(Relaxed).to_string(),
    );
    family(
        "llmgw_idle_stop_seconds",
        "gauge",
        "[slurm] idle_stop: this job ends its chain after this long without a request (0 off)",
        counters::IDLE_STOP_SECS.load(Relaxed).to_string(),
    );
    let last = crate::idle::last_request_ms();
    family(
        "llmgw_seconds_since_last_request",
        "gauge",
        "Seconds since the last API request reached this gateway (-1 none yet)",
        if last == 0 {
            "-1".to_string()
        } else {
            (llmgw_core::state::now_unix_ms().saturating_sub(last) / 1000).to_string()
        },
    );
    family(
        "llmgw_job_gpus",
        "gauge",
        "GPUs this job holds over all its nodes (GPU-hours used = elapsed x this)",
        counters::JOB_GPUS.load(Relaxed).to_string(),
    );
    out
}
