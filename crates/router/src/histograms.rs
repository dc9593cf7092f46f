//! Latency and token histograms for `/metrics`, by model group, deployment and status
//! class.
//!
//! Label cardinality is bounded by the config: one [`Series`] per deployment, two per
//! group for requests no deployment answered (`deployment="none"`: refused, failed before
//! routing) and cache hits (`deployment="cache"`), and one `model_group="other"` for
//! requests naming a group the gateway does not serve. The status is its class (`2xx`,
//! `4xx`, `5xx`, `other`: no answer, a timeout, a broken connection). Recording is a few
//! relaxed atomic adds on the series the request already holds (an `Arc` taken when its
//! deployment is picked), never a lock; only the tokens, counted where the spend row is
//! made, find their series by the deployment's id in a read-only map
//! ([`Histograms::answered_by`]), beside the per-group totals the spend path already
//! looks up there.

use llmgw_core::histogram::{Histogram, SECONDS_US, TOKENS, TOKEN_TIME_US};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// Status classes, in label order.
const CLASSES: [&str; 4] = ["2xx", "4xx", "5xx", "other"];

/// The class index of an HTTP status (`0`: no status, e.g. a timeout).
pub fn class_of(status: u16) -> usize {
    match status {
        200..=299 => 0,
        400..=499 => 1,
        500..=599 => 2,
        _ => 3,
    }
}

/// The histograms of one status class.
#[derive(Debug)]
struct Set {
    duration: Histogram,
    ttft: Histogram,
    tpot: Histogram,
    input_tokens: Histogram,
    output_tokens: Histogram,
    attempt: Histogram,
}

impl Set {
    fn new() -> Self {
        Set {
            duration: Histogram::new(SECONDS_US),
            ttft: Histogram::new(SECONDS_US),
            tpot: Histogram::new(TOKEN_TIME_US),
            input_tokens: Histogram::new(TOKENS),
            output_tokens: Histogram::new(TOKENS),
            attempt: Histogram::new(SECONDS_US),
        }
    }
}

/// One label set (`model_group`, `deployment`) with a set of histograms per status class.
#[derive(Debug)]
pub struct Series {
    group: String,
    deployment: String,
    sets: [Set; 4],
}

impl Series {
    pub fn new(group: &str, deployment: &str) -> Self {
        Series {
            group: group.to_string(),
            deployment: deployment.to_string(),
            sets: [Set::new(), Set::new(), Set::new(), Set::new()],
        }
    }

    fn set(&self, status: u16) -> &Set {
        &self.sets[class_of(status)]
    }

    /// A finished request: its duration, and for a stream its time to first token.
    #[inline]
    pub fn request(&self, status: u16, took: Duration, ttft: Option<Duration>) {
        let s = self.set(status);
        s.duration.observe_us(took);
        if let Some(t) = ttft {
            s.ttft.observe_us(t);
        }
    }

    /// One attempt against an upstream (`status` 0 when no answer came).
    #[inline]
    pub fn attempt(&self, status: u16, took: Duration) {
        self.set(status).attempt.observe_us(took);
    }

    /// A request's tokens, and the time per output token after the first when known.
    #[inline]
    pub fn tokens(&self, status: u16, input: u64, output: u64, per_token: Option<Duration>) {
        let s = self.set(status);
        s.input_tokens.observe(input);
        s.output_tokens.observe(output);
        if let Some(t) = per_token {
            s.tpot.observe_us(t);
        }
    }
}

/// Every series of a router, for lookups off the hot path and for rendering.
#[derive(Debug)]
pub struct Histograms {
    series: Vec<Arc<Series>>,
    deployments: HashMap<String, Arc<Series>>,
    /// Per group: (no deployment answered, cache hit).
    groups: HashMap<String, (Arc<Series>, Arc<Series>)>,
    other: Arc<Series>,
}

/// The families: name, help, unit scale, which histogram.
type Pick = fn(&Set) -> &Histogram;
fn families() -> [(&'static str, &'static str, f64, Pick); 6] {
    [
    (
        "llmgw_request_duration_seconds",
        "Time from a request's arrival until its answer (for streams: its last byte) was sent",
        1e6,
        |s| &s.duration,
    ),
    (
        "llmgw_time_to_first_token_seconds",
        "Streamed requests: time from arrival until the first chunk of the answer",
        1e6,
        |s| &s.ttft,
    ),
    (
        "llmgw_time_per_output_token_seconds",
        "Streamed requests: time per output token after the first (needs virtual keys or spend tracking)",
        1e6,
        |s| &s.tpot,
    ),
    (
        "llmgw_request_input_tokens",
        "Prompt tokens per request, from the answer's usage (needs virtual keys or spend tracking)",
        1.0,
        |s| &s.input_tokens,
    ),
    (
        "llmgw_request_output_tokens",
        "Completion tokens per request, from the answer's usage (needs virtual keys or spend tracking)",
        1.0,
        |s| &s.output_tokens,
    ),
    (
        "llmgw_upstream_attempt_duration_seconds",
        "One attempt against an upstream: until its whole answer, a stream's first chunk, or its failure",
        1e6,
        |s| &s.attempt,
    ),
    ]
}

impl Histograms {
    /// The deployments' series (id, series: each deployment holds its own) plus one
    /// `none` and one `cache` series per group and the `other` group.
    pub fn new<'a>(
        groups: &[String],
        deployments: impl IntoIterator<Item = (&'a str, &'a Arc<Series>)>,
    ) -> Self {
        let mut series = Vec::new();
        let mut by_dep = HashMap::new();
        for (id, s) in deployments {
            series.push(s.clone());
            by_dep.insert(id.to_string(), s.clone());
        }
        let mut by_group = HashMap::new();
        for g in groups {
            let none = Arc::new(Series::new(g, "none"));
            let cache = Arc::new(Series::new(g, "cache"));
            series.push(none.clone());
            series.push(cache.clone());
            by_group.insert(g.clone(), (none, cache));
        }
        let other = Arc::new(Series::new("other", "none"));
        series.push(other.clone());
        Histograms {
            series,
            deployments: by_dep,
            groups: by_group,
            other,
        }
    }

    /// The series of a request no deployment answered, for the group it named.
    pub fn unrouted(&self, group: &str) -> &Arc<Series> {
        self.groups.get(group).map_or(&self.other, |g| &g.0)
    }

    /// The series of a cache hit for `group`.
    pub fn cache(&self, group: &str) -> &Arc<Series> {
        self.groups.get(group).map_or(&self.other, |g| &g.1)
    }

    /// The series of the deployment `id` (`cache` for a hit, anything unknown: `none`).
    pub fn answered_by(&self, group: &str, id: &str) -> &Arc<Series> {
        match self.deployments.get(id) {
            Some(s) => s,
            None if id == "cache" => self.cache(group),
            None => self.unrouted(group),
        }
    }

    /// Every family in Prometheus text.
    pub fn render(&self, out: &mut String) {
        use std::fmt::Write;
        for (name, help, scale, pick) in families() {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
            for s in &self.series {
                let base = format!(
                    "model_group=\"{}\",deployment=\"{}\"",
                    escape(&s.group),
                    escape(&s.deployment)
                );
                for (class, set) in CLASSES.iter().zip(&s.sets) {
                    let labels = format!("{base},status=\"{class}\"");
                    pick(set).render(out, name, &labels, scale);
                }
            }
        }
    }
}

/// Escapes a Prometheus label value.
fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_bound_the_status_label() {
        assert_eq!(class_of(200), 0);
        assert_eq!(class_of(429), 1);
        assert_eq!(class_of(503), 2);
        assert_eq!(class_of(0), 3);
        assert_eq!(class_of(302), 3);
    }

    #[test]
    fn unknown_groups_fall_into_other() {
        let h = Histograms::new(&["a".to_string()], []);
        h.unrouted("nope")
            .request(404, Duration::from_millis(1), None);
        h.cache("a").request(200, Duration::from_millis(1), None);
        h.answered_by("a", "x")
            .tokens(200, 3, 5, Some(Duration::from_millis(20)));
        let mut out = String::new();
        h.render(&mut out);
        assert!(out.contains(
            "llmgw_request_duration_seconds_count{model_group=\"other\",deployment=\"none\",status=\"4xx\"} 1"
        ));
        assert!(out.contains(
            "llmgw_request_duration_seconds_count{model_group=\"a\",deployment=\"cache\",status=\"2xx\"} 1"
        ));
        assert!(out.contains(
            "llmgw_request_output_tokens_sum{model_group=\"a\",deployment=\"none\",status=\"2xx\"} 5"
        ));
        assert!(out.contains("# TYPE llmgw_time_to_first_token_seconds histogram"));
    }
}
