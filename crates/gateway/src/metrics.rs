//! `GET /metrics`: Prometheus text exposition, rendered on demand from the counters the
//! request path already keeps (per-deployment atomics), so collecting metrics adds
//! nothing to a request's cost.

use llmgw_router::{DeploymentState, Router};
use std::fmt::Write;
use std::sync::atomic::Ordering;

/// Renders the gateway's metrics. `extra` is appended verbatim (other modules' families).
pub fn render(router: &Router, ready: bool, draining: bool, extra: &str) -> String {
    let mut out = String::with_capacity(2048);
    family(
        &mut out,
        "llmgw_ready",
        "gauge",
        "1 when the gateway accepts requests",
    );
    let _ = writeln!(out, "llmgw_ready {}", u8::from(ready && !draining));
    family(&mut out, "llmgw_draining", "gauge", "1 while shutting down");
    let _ = writeln!(out, "llmgw_draining {}", u8::from(draining));

    let deps: Vec<_> = router.deployments().collect();
    let mut per = |name: &str,
                   kind: &str,
                   help: &str,
                   value: &dyn Fn(&llmgw_router::Deployment) -> String| {
        family(&mut out, name, kind, help);
        for d in &deps {
            let _ = writeln!(
                out,
                "{name}{{deployment=\"{}\",model_group=\"{}\",provider=\"{}\"}} {}",
                escape(&d.id),
                escape(&d.group),
                d.kind.as_str(),
                value(d)
            );
        }
    };
    per(
        "llmgw_deployment_requests_total",
        "counter",
        "Attempts sent to the deployment",
        &|d| d.stats.requests.load(Ordering::Relaxed).to_string(),
    );
    per(
        "llmgw_deployment_failures_total",
        "counter",
        "Attempts that failed",
        &|d| d.stats.failures.load(Ordering::Relaxed).to_string(),
    );
    per(
        "llmgw_deployment_in_flight",
        "gauge",
        "Requests in flight",
        &|d| d.stats.in_flight.load(Ordering::Relaxed).to_string(),
    );
    per(
        "llmgw_deployment_latency_seconds",
        "gauge",
        "Moving average latency (time to first token for streams)",
        &|d| format!("{:.6}", d.latency_us() as f64 / 1e6),
    );
    per(
        "llmgw_deployment_up",
        "gauge",
        "1 healthy, 0 cooling down, unreachable or unavailable",
        &|d| u8::from(d.state() == DeploymentState::Healthy).to_string(),
    );
    let local: Vec<_> = deps.iter().filter(|d| d.load.is_local()).collect();
    for (name, help, running) in [
        (
            "llmgw_deployment_queue_running",
            "Requests the local backend is running (its load endpoint, moved by the gateway's own count since)",
            true,
        ),
        (
            "llmgw_deployment_queue_waiting",
            "Requests waiting in the local backend's queue",
            false,
        ),
    ] {
        family(&mut out, name, "gauge", help);
        for d in &local {
            let q = d.queue();
            let _ = writeln!(
                out,
                "{name}{{deployment=\"{}\",model_group=\"{}\"}} {}",
                escape(&d.id),
                escape(&d.group),
                if running { q.running } else { q.waiting }
            );
        }
    }
    family(
        &mut out,
        "llmgw_spillover_total",
        "counter",
        "Requests a model group sent past its full local backends (to its cloud deployments or its fallbacks)",
    );
    for (group, cloud, fallback) in router.spillover() {
        for (to, n) in [("cloud", cloud), ("fallback", fallback)] {
            let _ = writeln!(
                out,
                "llmgw_spillover_total{{model_group=\"{}\",to=\"{to}\"}} {n}",
                escape(group)
            );
        }
    }
    out.push_str(extra);
    out
}

pub(crate) fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// Escapes a Prometheus label value.
pub(crate) fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}
