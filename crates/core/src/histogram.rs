//! Lock-free fixed-bucket histograms for `/metrics`.
//!
//! Recording a value is a search over a handful of bucket bounds and two relaxed atomic
//! adds (its bucket and the sum); the count is the sum of the buckets, added up only when
//! `/metrics` is rendered. Values are whole units (microseconds, tokens): the bounds are
//! integers, and a rendering `scale` turns them into the exposed unit (seconds).

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

/// Bucket bounds for durations, in microseconds (1 ms … 10 min: a cache hit and a
/// long generation on one scale).
pub const SECONDS_US: &[u64] = &[
    1_000,
    2_500,
    5_000,
    10_000,
    25_000,
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    30_000_000,
    60_000_000,
    120_000_000,
    300_000_000,
    600_000_000,
];

/// Bucket bounds for the time per output token, in microseconds (1 ms … 2 s).
pub const TOKEN_TIME_US: &[u64] = &[
    1_000, 2_500, 5_000, 10_000, 20_000, 30_000, 50_000, 75_000, 100_000, 200_000, 500_000,
    1_000_000, 2_000_000,
];

/// Bucket bounds for token counts (powers of four, 1 … 1 Mi).
pub const TOKENS: &[u64] = &[
    1, 4, 16, 64, 256, 1_024, 4_096, 16_384, 65_536, 262_144, 1_048_576,
];

/// A histogram over fixed bounds: `counts[i]` holds values `≤ bounds[i]` (and above the
/// previous bound), the last slot everything above the largest bound (`+Inf`).
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [u64],
    counts: Box<[AtomicU64]>,
    sum: AtomicU64,
}

impl Histogram {
    pub fn new(bounds: &'static [u64]) -> Self {
        Histogram {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum: AtomicU64::new(0),
        }
    }

    /// Records one value: two relaxed atomic adds.
    #[inline]
    pub fn observe(&self, value: u64) {
        let i = self.bounds.partition_point(|&b| b < value);
        if let Some(c) = self.counts.get(i) {
            c.fetch_add(1, Ordering::Relaxed);
        }
        self.sum.fetch_add(value, Ordering::Relaxed);
    }

    /// Records a duration in microseconds (saturating).
    #[inline]
    pub fn observe_us(&self, d: std::time::Duration) {
        self.observe(u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
    }

    /// Values recorded so far.
    pub fn count(&self) -> u64 {
        self.counts
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .fold(0, u64::saturating_add)
    }

    /// Writes `{name}_bucket`, `_sum` and `_count` with `labels` (already escaped,
    /// `k="v",…`, no braces), the bounds and sum divided by `scale`. Nothing when empty.
    pub fn render(&self, out: &mut String, name: &str, labels: &str, scale: f64) {
        let counts: Vec<u64> = self
            .counts
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect();
        let total = counts.iter().copied().fold(0, u64::saturating_add);
        if total == 0 {
            return;
        }
        let sep = if labels.is_empty() { "" } else { "," };
        let mut cumulative = 0u64;
        for (bound, n) in self.bounds.iter().zip(&counts) {
            cumulative = cumulative.saturating_add(*n);
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels}{sep}le=\"{}\"}} {cumulative}",
                *bound as f64 / scale
            );
        }
        let braced = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let _ = writeln!(
            out,
            "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {total}\n\
             {name}_sum{braced} {}\n\
             {name}_count{braced} {total}",
            self.sum.load(Ordering::Relaxed) as f64 / scale
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_cumulative_and_le_inclusive() {
        let h = Histogram::new(TOKENS);
        for v in [0, 1, 2, 4, 5, 2_000_000] {
            h.observe(v);
        }
        assert_eq!(h.count(), 6);
        let mut out = String::new();
        h.render(&mut out, "t", "g=\"a\"", 1.0);
        assert!(out.contains("t_bucket{g=\"a\",le=\"1\"} 2\n"), "{out}");
        assert!(out.contains("t_bucket{g=\"a\",le=\"4\"} 4\n"), "{out}");
        assert!(out.contains("t_bucket{g=\"a\",le=\"16\"} 5\n"), "{out}");
        assert!(out.contains("t_bucket{g=\"a\",le=\"+Inf\"} 6\n"), "{out}");
        assert!(out.contains("t_count{g=\"a\"} 6\n"), "{out}");
        assert!(out.contains("t_sum{g=\"a\"} 2000012\n"), "{out}");
    }

    #[test]
    fn seconds_scale_and_empty_histograms_render_nothing() {
        let h = Histogram::new(SECONDS_US);
        let mut out = String::new();
        h.render(&mut out, "d", "", 1e6);
        assert!(out.is_empty());
        h.observe_us(std::time::Duration::from_millis(7));
        h.render(&mut out, "d", "", 1e6);
        assert!(out.contains("d_bucket{le=\"0.005\"} 0\n"), "{out}");
        assert!(out.contains("d_bucket{le=\"0.01\"} 1\n"), "{out}");
        assert!(out.contains("d_sum 0.007\n"), "{out}");
    }
}
