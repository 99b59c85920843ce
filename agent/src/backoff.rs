//! Jittered exponential backoff for every retry loop in the agent.
//!
//! Vault's and OpenBao's own lifetime watcher once retried a failing renewal with no
//! sleep at all; every loop here that talks to Vault after a failure sleeps one of these.

use std::time::Duration;

use rand::Rng;

/// Doubling delays between `min` and `max`, each with ±20 % random jitter so that many
/// agents restarted together do not retry in lockstep.
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    /// A backoff from `min` to `max`.
    pub fn new(min: Duration, max: Duration) -> Self {
        Self {
            min,
            max,
            next: min,
        }
    }

    /// The agent's standard: 1 s doubling up to 5 minutes.
    pub fn standard() -> Self {
        Self::new(Duration::from_secs(1), Duration::from_secs(300))
    }

    /// The delay to sleep before the next attempt.
    pub fn next_delay(&mut self) -> Duration {
        let base = self.next;
        self.next = (self.next * 2).min(self.max);
        let factor = rand::rng().random_range(0.8..=1.2);
        base.mul_f64(factor).clamp(self.min.mul_f64(0.8), self.max)
    }

    /// Back to the minimum, after a success.
    pub fn reset(&mut self) {
        self.next = self.min;
    }
}

/// `d` shortened by up to `fraction` at random (e.g. 0.1: between 90 % and 100 %).
pub fn jitter_down(d: Duration, fraction: f64) -> Duration {
    d.mul_f64(1.0 - rand::rng().random_range(0.0..=fraction))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_with_bounded_jitter_and_caps() {
        let mut b = Backoff::standard();
        let mut expected = 1.0_f64;
        for _ in 0..12 {
            let d = b.next_delay().as_secs_f64();
            assert!(
                d >= expected * 0.8 - 1e-9 && d <= (expected * 1.2).min(300.0) + 1e-9,
                "{d} vs {expected}"
            );
            expected = (expected * 2.0).min(300.0);
        }
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(1200));
    }

    #[test]
    fn never_below_the_minimum_band() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(2));
        for _ in 0..100 {
            assert!(b.next_delay() >= Duration::from_millis(800));
        }
    }

    #[test]
    fn jitter_down_stays_in_band() {
        for _ in 0..100 {
            let d = jitter_down(Duration::from_secs(10), 0.1);
            assert!(d >= Duration::from_secs(9) && d <= Duration::from_secs(10));
        }
    }
}
