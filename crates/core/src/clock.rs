//! Cheap clock reads for bookkeeping that needs milliseconds, not nanoseconds.
//!
//! A precise clock read (`Instant::now`, `SystemTime::now`) costs 40–80 ns on the virtual
//! machines clusters and CI run on (kvm clock through the vDSO), and a proxied request
//! made about twenty of them (counted with a uprobe on `clock_gettime`, issue 13). The
//! coarse clocks read the kernel's last tick instead (~7 ns); they lag real time by at
//! most one tick (1–10 ms), which minute windows, cooldowns of seconds, idle timeouts and
//! connection watchdogs do not notice. Latencies in logs and headers keep the precise clock.

use nix::time::{clock_gettime, ClockId};

/// Milliseconds since the Unix epoch, to within a clock tick.
pub fn coarse_unix_ms() -> u64 {
    read_ms(ClockId::CLOCK_REALTIME_COARSE)
}

/// Milliseconds on the monotonic clock (since boot), to within a clock tick.
pub fn coarse_monotonic_ms() -> u64 {
    read_ms(ClockId::CLOCK_MONOTONIC_COARSE)
}

fn read_ms(clock: ClockId) -> u64 {
    // Both clocks exist on every Linux since 2.6.32; a failure reads as the epoch.
    clock_gettime(clock).map_or(0, |t| {
        let secs = u64::try_from(t.tv_sec()).unwrap_or(0);
        let ms = u64::try_from(t.tv_nsec()).unwrap_or(0) / 1_000_000;
        secs.saturating_mul(1000).saturating_add(ms)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    #[test]
    fn coarse_clocks_follow_the_precise_ones_to_within_a_tick() {
        let precise = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
        let coarse = Duration::from_millis(coarse_unix_ms());
        let lag = precise.saturating_sub(coarse);
        assert!(lag < Duration::from_millis(50), "lag {lag:?}");
        assert!(coarse <= precise + Duration::from_millis(1));

        let a = coarse_monotonic_ms();
        std::thread::sleep(Duration::from_millis(60));
        let b = coarse_monotonic_ms();
        assert!((40..2000).contains(&(b - a)), "{a} -> {b}");
    }
}
