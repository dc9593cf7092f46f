//! `GET /metrics`: Prometheus text exposition, rendered on demand from the counters the
//! request path already keeps (per-deployment atomics), so collecting metrics adds
//! nothing to a request's cost.

use llmgw_router::fair::GateView;
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
        "llmgw_deployment_cooldowns_total",
        "counter",
        "Cooldowns the deployment started (after failures or a 429)",
        &|d| d.stats.cooldowns.load(Ordering::Relaxed).to_string(),
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
    queue_metrics(&mut out, router);
    router.histograms().render(&mut out);
    out.push_str(extra);
    out
}

/// The gateway's queues (`[router] fairness`): length, requests out, capacity, waits,
/// refusals and each flow's share of the requests that waited.
fn queue_metrics(out: &mut String, router: &Router) {
    let gates = router.gates();
    if gates.is_empty() {
        return;
    }
    let views: Vec<GateView> = gates.iter().map(|g| g.view()).collect();
    type Pick = fn(&GateView) -> u64;
    let families: [(&str, &str, Pick); 3] = [
        (
            "llmgw_queue_waiting",
            "Requests held in the gateway's queue for a full model group",
            |v| v.waiting,
        ),
        (
            "llmgw_queue_in_flight",
            "Requests the gateway let through to the group's local backends and not finished",
            |v| v.in_flight,
        ),
        (
            "llmgw_queue_capacity",
            "Requests the group's local backends run at once (their max_parallel, or learned from their load; 0 while unknown)",
            |v| v.capacity.unwrap_or(0),
        ),
    ];
    for (name, help, value) in families {
        family(out, name, "gauge", help);
        for v in &views {
            let _ = writeln!(
                out,
                "{name}{{model_group=\"{}\"}} {}",
                escape(&v.group),
                value(v)
            );
        }
    }
    family(
        out,
        "llmgw_queue_refused_total",
        "counter",
        "Requests refused by a full queue (full) or after waiting too long (timeout)",
    );
    for g in &gates {
        let s = g.stats();
        for (why, n) in [("full", &s.rejected_full), ("timeout", &s.timed_out)] {
            let _ = writeln!(
                out,
                "llmgw_queue_refused_total{{model_group=\"{}\",reason=\"{why}\"}} {}",
                escape(g.group()),
                n.load(Ordering::Relaxed)
            );
        }
    }
    family(
        out,
        "llmgw_queue_wait_seconds",
        "histogram",
        "Time requests waited in the gateway's queue before being let through",
    );
    for g in &gates {
        let s = g.stats();
        let group = escape(g.group());
        let mut cumulative = 0u64;
        for (i, le) in llmgw_router::fair::WAIT_BUCKETS.iter().enumerate() {
            cumulative += s.wait_buckets[i].load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "llmgw_queue_wait_seconds_bucket{{model_group=\"{group}\",le=\"{le}\"}} {cumulative}"
            );
        }
        cumulative +=
            s.wait_buckets[llmgw_router::fair::WAIT_BUCKETS.len()].load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "llmgw_queue_wait_seconds_bucket{{model_group=\"{group}\",le=\"+Inf\"}} {cumulative}\n\
             llmgw_queue_wait_seconds_sum{{model_group=\"{group}\"}} {:.6}\n\
             llmgw_queue_wait_seconds_count{{model_group=\"{group}\"}} {cumulative}",
            s.wait_sum_us.load(Ordering::Relaxed) as f64 / 1e6
        );
    }
    family(
        out,
        "llmgw_queue_served_total",
        "counter",
        "Requests let through after waiting, per flow (key, team or user id; \"\" for the master key): each flow's share under contention",
    );
    for g in &gates {
        let by = g
            .stats()
            .served_by_flow
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let mut rows: Vec<_> = by.into_iter().collect();
        rows.sort();
        for (flow, n) in rows {
            let _ = writeln!(
                out,
                "llmgw_queue_served_total{{model_group=\"{}\",flow=\"{}\"}} {n}",
                escape(g.group()),
                escape(&flow)
            );
        }
    }
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
