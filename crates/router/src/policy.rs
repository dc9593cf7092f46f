//! Retry, backoff and cooldown rules, resolved once from `[router]`.

use llmgw_core::config::{ErrorClass, RouterConfig};
use std::collections::BTreeMap;
use std::time::Duration;

/// Longest Retry-After the router will sleep on; longer ones fall back to backoff.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);
/// Cap of the exponential backoff.
const MAX_BACKOFF: Duration = Duration::from_secs(4);

pub(crate) struct Policy {
    num_retries: u32,
    retry_policy: BTreeMap<ErrorClass, u32>,
    allowed_fails: u32,
    allowed_fails_policy: BTreeMap<ErrorClass, u32>,
    pub cooldown: Duration,
    pub fail_window: Duration,
    pub latency_buffer: f64,
    pub fallbacks: BTreeMap<String, Vec<String>>,
    pub context_window_fallbacks: BTreeMap<String, Vec<String>>,
    pub default_fallbacks: Vec<String>,
    pub max_fallback_depth: u32,
    /// Longest cooldown an upstream's Retry-After may set.
    pub max_cooldown: Duration,
    /// Most bytes read of a successful non-streamed answer / of an error body.
    pub max_response_bytes: usize,
    pub max_error_bytes: usize,
    /// Local first: when a group's local deployments are full.
    pub spillover: Option<super::load::Spillover>,
    /// `[router] queue.max`, for messages.
    pub queue_max: usize,
}

impl Policy {
    pub fn from_config(r: &RouterConfig) -> Self {
        Policy {
            num_retries: r.num_retries,
            retry_policy: r.retry_policy.clone(),
            allowed_fails: r.allowed_fails.max(1),
            allowed_fails_policy: r.allowed_fails_policy.clone(),
            cooldown: r.cooldown.0,
            fail_window: r.fail_window.0,
            latency_buffer: r.latency_buffer,
            fallbacks: r.fallbacks.clone(),
            context_window_fallbacks: r.context_window_fallbacks.clone(),
            default_fallbacks: r.default_fallbacks.clone(),
            max_fallback_depth: r.max_fallback_depth,
            max_cooldown: r.max_cooldown.0,
            max_response_bytes: r.max_response_bytes,
            max_error_bytes: r.max_error_bytes,
            spillover: r
                .spillover
                .as_ref()
                .map(super::load::Spillover::from_config),
            queue_max: r.queue.max,
        }
    }

    /// Retries allowed after a failure of `class`: the policy's number, else
    /// `num_retries` for transient classes and 0 for the client's own mistakes.
    pub fn retries_for(&self, class: ErrorClass) -> u32 {
        if let Some(n) = self.retry_policy.get(&class) {
            return *n;
        }
        match class {
            ErrorClass::BadRequest
            | ErrorClass::Authentication
            | ErrorClass::NotFound
            | ErrorClass::ContentPolicy
            | ErrorClass::ContextWindow => 0,
            _ => self
                .retry_policy
                .get(&ErrorClass::Default)
                .copied()
                .unwrap_or(self.num_retries),
        }
    }

    /// True when `same` failures of `class` (of `total` in the window) reach the limit.
    pub fn should_cool(&self, class: ErrorClass, same: u32, total: u32) -> bool {
        match self.allowed_fails_policy.get(&class) {
            Some(limit) => same >= (*limit).max(1),
            None => total >= self.allowed_fails,
        }
    }

    /// How long to wait before going round a group again: the upstream's Retry-After
    /// when it is short enough, else exponential backoff with jitter.
    pub fn backoff(&self, retries: u32, retry_after: Option<Duration>) -> Duration {
        if let Some(ra) = retry_after.filter(|d| *d <= MAX_RETRY_AFTER) {
            return ra;
        }
        let base = Duration::from_millis(250).saturating_mul(1 << retries.min(5));
        let capped = base.min(MAX_BACKOFF);
        capped.mul_f64(0.5 + fastrand::f64() * 0.5)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(toml_router: &str) -> Policy {
        let cfg = llmgw_core::config::Config::load_str(toml_router, "t.toml").unwrap();
        Policy::from_config(&cfg.config.router)
    }

    #[test]
    fn client_errors_are_not_retried_unless_asked() {
        let p = policy("[router]\nnum_retries = 3\n");
        assert_eq!(p.retries_for(ErrorClass::BadRequest), 0);
        assert_eq!(p.retries_for(ErrorClass::Authentication), 0);
        assert_eq!(p.retries_for(ErrorClass::InternalServer), 3);
        let p = policy("[router]\nretry_policy = { bad_request = 2, rate_limit = 5 }\n");
        assert_eq!(p.retries_for(ErrorClass::BadRequest), 2);
        assert_eq!(p.retries_for(ErrorClass::RateLimit), 5);
    }

    #[test]
    fn retry_after_is_honoured_only_when_short() {
        let p = policy("");
        assert_eq!(
            p.backoff(0, Some(Duration::from_secs(2))),
            Duration::from_secs(2)
        );
        assert!(p.backoff(0, Some(Duration::from_secs(600))) <= MAX_BACKOFF);
        assert!(p.backoff(10, None) <= MAX_BACKOFF);
    }

    #[test]
    fn per_class_allowed_fails() {
        let p = policy("[router]\nallowed_fails = 3\nallowed_fails_policy = { timeout = 1 }\n");
        assert!(p.should_cool(ErrorClass::Timeout, 1, 1));
        assert!(!p.should_cool(ErrorClass::InternalServer, 2, 2));
        assert!(p.should_cool(ErrorClass::InternalServer, 3, 3));
    }
}
