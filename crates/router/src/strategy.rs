//! Load-balancing strategies: which of a group's eligible deployments gets the next
//! attempt. Eligibility (available, not cooling, within limits, fits the context window,
//! not already tried) is decided by the caller; a strategy only orders what is left.

use super::deployment::Deployment;
use llmgw_core::config::Strategy;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// What `simple-shuffle` weighs by for a group, decided once from the config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShuffleBasis {
    Weight,
    Rpm,
    Tpm,
    Uniform,
}

impl ShuffleBasis {
    /// `weight` if any deployment sets it, else `rpm`, else `tpm`, else uniform.
    pub fn for_group(group: &[Arc<Deployment>]) -> Self {
        if group.iter().any(|d| d.weight.is_some()) {
            ShuffleBasis::Weight
        } else if group.iter().any(|d| d.rpm.is_some()) {
            ShuffleBasis::Rpm
        } else if group.iter().any(|d| d.tpm.is_some()) {
            ShuffleBasis::Tpm
        } else {
            ShuffleBasis::Uniform
        }
    }

    fn weight(self, d: &Deployment) -> f64 {
        match self {
            ShuffleBasis::Weight => d.weight.unwrap_or(1.0),
            ShuffleBasis::Rpm => d.rpm.unwrap_or(0) as f64,
            ShuffleBasis::Tpm => d.tpm.unwrap_or(0) as f64,
            ShuffleBasis::Uniform => 1.0,
        }
    }
}

/// Picks one of `candidates` (non-empty) and returns its position.
pub fn pick(
    strategy: Strategy,
    basis: ShuffleBasis,
    candidates: &[&Arc<Deployment>],
    tokens: u64,
    latency_buffer: f64,
) -> usize {
    debug_assert!(!candidates.is_empty());
    if candidates.len() == 1 {
        return 0;
    }
    match strategy {
        Strategy::SimpleShuffle => weighted(candidates, |d| basis.weight(d)),
        Strategy::LeastBusy => lowest(
            candidates,
            |d| d.stats.in_flight.load(Ordering::Relaxed) as f64,
            0.0,
        ),
        Strategy::LatencyBased => {
            // Deployments without a sample yet are tried first, so every one gets measured.
            lowest(candidates, |d| d.latency_us() as f64, latency_buffer)
        }
        Strategy::UsageBased => lowest(candidates, |d| -d.headroom(tokens), 0.0),
        Strategy::CostBased => lowest(candidates, |d| d.price(), 0.0),
        Strategy::LoadBased => lowest(candidates, super::load::queue_len, 0.0),
        // Needs the prompt: the router calls `prefix::pick` itself; never reaches here.
        Strategy::PrefixAware => lowest(candidates, super::load::queue_len, 0.0),
    }
}

/// Weighted random choice; uniform when every weight is zero.
fn weighted(candidates: &[&Arc<Deployment>], weight: impl Fn(&Deployment) -> f64) -> usize {
    let total: f64 = candidates.iter().map(|d| weight(d).max(0.0)).sum();
    if total <= 0.0 {
        return fastrand::usize(..candidates.len());
    }
    let mut x = fastrand::f64() * total;
    for (i, d) in candidates.iter().enumerate() {
        let w = weight(d).max(0.0);
        if x < w {
            return i;
        }
        x -= w;
    }
    candidates.len() - 1
}

/// Random choice among those whose score is within `buffer` (a fraction) of the lowest.
fn lowest(
    candidates: &[&Arc<Deployment>],
    score: impl Fn(&Deployment) -> f64,
    buffer: f64,
) -> usize {
    let scores: Vec<f64> = candidates.iter().map(|d| score(d)).collect();
    let best = scores.iter().copied().fold(f64::INFINITY, f64::min);
    let limit = if best > 0.0 {
        best * (1.0 + buffer)
    } else {
        best + f64::EPSILON
    };
    let near: Vec<usize> = (0..scores.len()).filter(|&i| scores[i] <= limit).collect();
    match near.len() {
        0 => 0,
        1 => near[0],
        n => near[fastrand::usize(..n)],
    }
}
