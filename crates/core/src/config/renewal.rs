//! The timings of a chain of jobs that config validation and the running chain derive the
//! same way (`[slurm] renew`): how long before its limit a job drains by itself, how long
//! one try at a successor may take, and so the shortest `renew_before` that leaves room
//! for a lost successor to be replaced.

use std::time::Duration;

/// A job that cannot hand over drains this long before its limit beyond its shutdown
/// grace, so that it has exited (COMPLETED) before SLURM would kill it (TIMEOUT).
pub const EXIT_SLACK: Duration = Duration::from_secs(30);
/// The least `handover_timeout` when none is configured (the default is derived from the
/// job's own load time at run time and is never below this).
pub const HANDOVER_TIMEOUT_FLOOR: Duration = Duration::from_secs(30);
/// What one try at a successor costs beyond its `handover_timeout`: submitting it, SLURM
/// starting it, and the current job noticing what became of it.
pub const TRY_OVERHEAD: Duration = Duration::from_secs(10);

/// How long before its time limit a chain member with no successor to hand over to
/// starts draining: its shutdown grace plus [`EXIT_SLACK`].
pub fn exit_margin(grace: Duration) -> Duration {
    grace.saturating_add(EXIT_SLACK)
}

/// Time one try at a successor may take: `handover_timeout` (or its floor) plus
/// [`TRY_OVERHEAD`].
pub fn try_time(handover_timeout: Option<Duration>) -> Duration {
    handover_timeout
        .unwrap_or(HANDOVER_TIMEOUT_FLOOR)
        .saturating_add(TRY_OVERHEAD)
}

/// The shortest `renew_before` that leaves room for the first successor and, if it is
/// lost, one more before the job drains.
pub fn min_renew_before(grace: Duration, handover_timeout: Option<Duration>) -> Duration {
    exit_margin(grace).saturating_add(try_time(handover_timeout).saturating_mul(2))
}

/// `handover_timeout` when none is configured: three times this job's own load time (a
/// successor may land on a node with colder caches), at least the load time plus 30 s.
pub fn default_handover_timeout(own_load: Duration) -> Duration {
    own_load
        .saturating_mul(3)
        .max(own_load.saturating_add(HANDOVER_TIMEOUT_FLOOR))
}

/// Why `renew_before` is too short, in a sentence, or `None` when it is long enough.
pub fn renew_before_too_short(
    before: Duration,
    grace: Duration,
    handover_timeout: Option<Duration>,
) -> Option<String> {
    let min = min_renew_before(grace, handover_timeout);
    (before < min).then(|| {
        let timeout = match handover_timeout {
            Some(t) => format!("handover_timeout {}s", t.as_secs()),
            None => format!(
                "handover_timeout, at least {}s when not set",
                HANDOVER_TIMEOUT_FLOOR.as_secs()
            ),
        };
        format!(
            "it leaves no room for a retry: the job drains {}s before its limit (shutdown_grace {}s + {}s), \
             and each try at a successor may take {}s ({timeout}, + {}s to submit, start and notice it); \
             the first try and one retry need renew_before of at least {}s",
            exit_margin(grace).as_secs(),
            grace.as_secs(),
            EXIT_SLACK.as_secs(),
            try_time(handover_timeout).as_secs(),
            TRY_OVERHEAD.as_secs(),
            min.as_secs_f64().ceil() as u64,
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shortest_renew_before_fits_two_tries_and_the_exit_margin() {
        let s = Duration::from_secs;
        assert_eq!(min_renew_before(s(5), None), s(35 + 2 * 40));
        assert_eq!(min_renew_before(s(30), Some(s(600))), s(60 + 2 * 610));
        assert!(renew_before_too_short(s(115), s(5), None).is_none());
        let why = renew_before_too_short(s(114), s(5), None).unwrap();
        assert!(why.contains("at least 115s"), "{why}");
        assert!(why.contains("drains 35s before its limit"), "{why}");
    }

    #[test]
    fn the_default_handover_timeout_follows_the_load_time() {
        let s = Duration::from_secs;
        assert_eq!(default_handover_timeout(s(2)), s(32));
        assert_eq!(default_handover_timeout(s(300)), s(900));
        assert_eq!(default_handover_timeout(Duration::MAX), Duration::MAX);
    }
}
