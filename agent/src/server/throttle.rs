//! At most one log line per uid and kind of refusal every [`EVERY`]: a peer that is
//! refused in a loop must not be able to fill the disk through the agent's log. Every
//! refusal is still counted in the metrics.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// The shortest time between two log lines of one kind for one uid.
pub const EVERY: Duration = Duration::from_secs(10);
/// Keys remembered before the table starts over.
const MAX_KEYS: usize = 4096;

/// What was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Refusal {
    /// The uid matches no peer policy.
    Peer,
    /// A name outside the peer's paths.
    Path,
    /// Too many Watch streams.
    Streams,
    /// Too many distinct names.
    Names,
}

/// When each (uid, refusal) was last logged.
#[derive(Debug, Default)]
pub struct Throttle {
    last: Mutex<HashMap<(u32, Refusal), Instant>>,
}

impl Throttle {
    /// Whether this refusal may be logged now (and if so, remembers that it was).
    pub fn allow(&self, uid: u32, refusal: Refusal) -> bool {
        let now = Instant::now();
        let mut last = self.last.lock().unwrap_or_else(PoisonError::into_inner);
        if last.len() >= MAX_KEYS {
            last.clear();
        }
        match last.get(&(uid, refusal)) {
            Some(at) if now.duration_since(*at) < EVERY => false,
            _ => {
                last.insert((uid, refusal), now);
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_uid_and_kind_per_period() {
        let throttle = Throttle::default();
        assert!(throttle.allow(1, Refusal::Peer));
        assert!(!throttle.allow(1, Refusal::Peer));
        assert!(throttle.allow(1, Refusal::Path));
        assert!(throttle.allow(2, Refusal::Peer));
    }
}
