//! The kernel's coarse clocks, for times the request path needs to the second or to
//! a few milliseconds: a JWT's `exp`, the `Date` field, how long an upstream
//! connection sat idle. Reading them is a load of the time the kernel last stored
//! (updated every tick, 1-4 ms), where `SystemTime::now` and `Instant::now` read the
//! TSC and scale it: on the VMs the gateway was measured on, a precise read cost about
//! as much as 150 instructions of the request path, and a request read the clock ten
//! times. Latency figures and timers keep the precise clocks.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use nix::time::{ClockId, clock_gettime};

/// Seconds since the Unix epoch, to the last tick. Should the coarse clock not be
/// readable (Linux always has it), the precise one answers: a JWT's `exp` is never
/// checked against a made-up time.
pub fn unix_seconds() -> u64 {
    clock_gettime(ClockId::CLOCK_REALTIME_COARSE)
        .ok()
        .and_then(|t| u64::try_from(t.tv_sec()).ok())
        .unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs())
        })
}

/// A monotonic time to the last tick, for measuring spans of seconds: only
/// differences between two readings mean anything. Unreadable (never, on Linux), it
/// is zero: an idle upstream connection then looks fresh, and is still checked for
/// being open before it is reused.
pub fn monotonic() -> Duration {
    clock_gettime(ClockId::CLOCK_MONOTONIC_COARSE)
        .map(Duration::from)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
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
