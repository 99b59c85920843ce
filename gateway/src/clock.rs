//! The kernel's coarse clocks, for times the request path needs to the second or to
//! a few milliseconds: a JWT's `exp`, the `Date` field, how long an upstream
//! connection sat idle. Reading them is a load of the time the kernel last stored
//! (updated every tick, 1-4 ms), where `SystemTime::now` and `Instant::now` read the
//! TSC and scale it: on the VMs the gateway was measured on, a precise read cost about
//! as much as 150 instructions of the request path, and a request read the clock ten
//! times. Latency figures and timers keep the precise clocks.

use std::time::Duration;

use nix::time::{ClockId, clock_gettime};

/// Seconds since the Unix epoch, to the last tick (0 if the clock cannot be read,
/// which on Linux it always can).
pub fn unix_seconds() -> u64 {
    clock_gettime(ClockId::CLOCK_REALTIME_COARSE)
        .ok()
        .and_then(|t| u64::try_from(t.tv_sec()).ok())
        .unwrap_or(0)
}

/// A monotonic time to the last tick, for measuring spans of seconds: only
/// differences between two readings mean anything.
pub fn monotonic() -> Duration {
    clock_gettime(ClockId::CLOCK_MONOTONIC_COARSE)
        .map(Duration::from)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use std::time::{SystemTime, UNIX_EPOCH};

    use super::*;

    #[test]
    fn unix_seconds_is_the_wall_clock_to_the_second() {
        let before = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let coarse = unix_seconds();
        let after = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        // The coarse clock may lag the precise one by a tick, across a second's edge.
        assert!(
            coarse + 1 >= before && coarse <= after,
            "{coarse} not within {before}..={after}"
        );
    }

    #[test]
    fn monotonic_advances_with_time() {
        let first = monotonic();
        std::thread::sleep(Duration::from_millis(50));
        let waited = monotonic() - first;
        assert!(
            waited >= Duration::from_millis(40) && waited < Duration::from_secs(5),
            "waited {waited:?}"
        );
    }
}
