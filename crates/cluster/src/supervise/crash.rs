//! A launched backend in a crash loop: [`CRASHES`] exits within [`WINDOW`] raise one
//! `backend_crash_loop` alert (`llmgw_core::alert`); the backend's next ready state
//! resolves it.

use llmgw_core::alert::{self, Event};
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Exits within [`WINDOW`] that make a crash loop.
pub(crate) const CRASHES: usize = 3;
/// How far back exits count.
pub(crate) const WINDOW: Duration = Duration::from_secs(60);

/// One backend's recent exits and whether its alert is out.
#[derive(Debug, Default)]
pub(crate) struct CrashLoop {
    exits: VecDeque<Instant>,
    firing: bool,
}

impl CrashLoop {
    /// The backend `name` exited (`why`) at `now`.
    pub(crate) fn exited(&mut self, name: &str, why: &str, now: Instant) {
        self.exits.push_back(now);
        while self
            .exits
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) > WINDOW)
        {
            self.exits.pop_front();
        }
        if self.exits.len() >= CRASHES && !self.firing {
            self.firing = true;
            alert::raise(
                Event::BackendCrashLoop,
                name,
                format!(
                    "backend {name} exited {} times within {}s (last: {why}); it keeps being restarted with backoff",
                    self.exits.len(),
                    WINDOW.as_secs()
                ),
            );
        }
    }

    /// The backend `name` is ready again.
    pub(crate) fn ready(&mut self, name: &str) {
        if self.firing {
            self.firing = false;
            self.exits.clear();
            alert::resolve(
                Event::BackendCrashLoop,
                name,
                format!("backend {name} is ready again"),
            );
        }
    }

    /// True while its alert is out.
    #[cfg(test)]
    pub(crate) fn firing(&self) -> bool {
        self.firing
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn three_exits_in_a_minute_fire_once_and_ready_resolves() {
        let mut c = CrashLoop::default();
        let t0 = Instant::now();
        c.exited("b", "killed", t0);
        // Spread out: the first one is out of the window by the third.
        c.exited("b", "killed", t0 + Duration::from_secs(50));
        c.exited("b", "killed", t0 + Duration::from_secs(70));
        assert!(!c.firing());
        c.exited("b", "killed", t0 + Duration::from_secs(80));
        assert!(c.firing());
        c.exited("b", "killed", t0 + Duration::from_secs(81));
        assert!(c.firing());
        c.ready("b");
        assert!(!c.firing());
    }
}
