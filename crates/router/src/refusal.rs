//! What a failure does, and the client's error when a group had nothing to try: a failed
//! attempt's cooldown (`on_failure`); every deployment cooling down, at its rate limits,
//! too small for the prompt, or its queue full; the warning about fallbacks that name
//! groups this gateway does not serve.

use super::*;

impl Router {
    /// The error when a group has no deployment to try at all.
    pub(crate) fn nothing_eligible(
        &self,
        model: &str,
        deps: &[Arc<Deployment>],
        need: u64,
        now: u64,
    ) -> UpstreamError {
        let first_back = deps.iter().filter_map(|d| d.cooling_until(now)).min();
        if let Some(until) = first_back {
            let secs = (until.saturating_sub(now)).div_ceil(1000).max(1);
            let mut e = UpstreamError::new(
                ErrorClass::ServiceUnavailable,
                ApiError::unavailable(format!(
                    "every deployment of {model:?} is cooling down after failures; the first is back in {secs} s"
                ))
                .with_code("all_deployments_cooling")
                .with_retry_after(secs),
            );
            e.retry_after = Some(Duration::from_secs(secs));
            return e;
        }
        if deps
            .iter()
            .any(|d| d.available.load(Ordering::Relaxed) && !d.has_room(need))
        {
            let secs = 60 - (now / 1000) % 60;
            return UpstreamError::new(
                ErrorClass::RateLimit,
                ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "rate_limit_error",
                    format!("every deployment of {model:?} is at its rpm/tpm/max_parallel limit"),
                )
                .with_code("rate_limit_exceeded")
                .with_retry_after(secs),
            );
        }
        UpstreamError::new(
            ErrorClass::ServiceUnavailable,
            ApiError::unavailable(format!(
                "no deployment of {model:?} is available (local backends loading, restarting or failed)"
            ))
            .with_code("no_deployment_available"),
        )
    }

    /// Failure bookkeeping: counts, latency penalty, cooldown.
    pub(crate) fn on_failure(&self, dep: &Deployment, e: &UpstreamError, only_one: bool) {
        if e.class == ErrorClass::Timeout {
            dep.record_slow(dep.timeout);
        }
        // The client's own mistakes say nothing about the deployment.
        if matches!(
            e.class,
            ErrorClass::BadRequest | ErrorClass::ContextWindow | ErrorClass::ContentPolicy
        ) {
            return;
        }
        let (same, total) = dep.record_failure(e.class, self.policy.fail_window);
        if only_one {
            return; // A group's only deployment is never cooled.
        }
        let cool =
            e.class == ErrorClass::RateLimit || self.policy.should_cool(e.class, same, total);
        if cool {
            // The upstream's Retry-After, bounded by `max_cooldown`: one answer must not
            // take a deployment out of service for longer than the operator allows.
            let for_ = dep
                .cooldown
                .or(e
                    .retry_after
                    .filter(|d| !d.is_zero())
                    .map(|d| d.min(self.policy.max_cooldown)))
                .unwrap_or(self.policy.cooldown);
            dep.cool_down(for_, format!("{:?}: {}", e.class, e.error.message));
        }
    }
}

/// Whether `req`'s caller may be answered by group `model` (no restriction without one).
pub(crate) fn reachable(req: &llmgw_wire::request::ClientRequest, model: &str) -> bool {
    req.access.as_ref().is_none_or(|a| a.allows_group(model))
}

/// One line for all the fallback names a request gave that are not served here.
pub(crate) fn log_unknown(names: &[String]) {
    if !names.is_empty() {
        tracing::warn!(
            models = %Clean(&names.join(", ")),
            "fallbacks name model groups this gateway does not serve; skipped"
        );
    }
}

pub(crate) fn context_window_error(model: &str, tokens: u64) -> UpstreamError {
    UpstreamError::new(
        ErrorClass::ContextWindow,
        ApiError::bad_request(format!(
            "the request has about {tokens} tokens, more than any deployment of {model:?} can hold"
        ))
        .with_code("context_length_exceeded")
        .with_param("messages"),
    )
}

pub(crate) fn request_timeout() -> UpstreamError {
    UpstreamError::new(
        ErrorClass::Timeout,
        ApiError::gateway_timeout("the request ran out of time before any deployment answered"),
    )
}

/// The client's error when the gate's queue refused a request (a rate limit: the
/// group's fallbacks are tried, and nothing is cooled down).
pub(crate) fn queue_refusal(model: &str, r: fair::Refusal, policy: &Policy) -> UpstreamError {
    let (msg, code, retry) = match r {
        fair::Refusal::Full { ahead } => (
            format!(
                "model group {model:?} is at capacity: {ahead} requests are already waiting in \
                 the gateway's queue (its limit, [router] queue.max = {}); retry in a few seconds",
                policy.queue_max
            ),
            "queue_full",
            5,
        ),
        fair::Refusal::TimedOut { waited, ahead } => (
            format!(
                "model group {model:?} is at capacity: this request waited {:.1} s in the \
                 gateway's queue ([router] queue.max_wait, or the request's time limit) with \
                 {ahead} still ahead of or beside it; retry later",
                waited.as_secs_f64()
            ),
            "queue_timeout",
            10,
        ),
    };
    let mut e = UpstreamError::new(
        ErrorClass::RateLimit,
        ApiError::new(StatusCode::TOO_MANY_REQUESTS, "rate_limit_error", msg)
            .with_code(code)
            .with_retry_after(retry),
    );
    e.retry_after = Some(Duration::from_secs(retry));
    e
}
