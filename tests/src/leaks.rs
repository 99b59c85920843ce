//! A harness-wide check that secrets never reach a log: every value made with
//! [`crate::seed::random_secret`] is remembered, and every agent and gateway process's
//! captured log is searched for all of them (plain and encoded, see [`crate::logs`]) when its
//! handle is dropped, so each test that starts a gateway checks this without asking.

use std::sync::Mutex;

use crate::logs::{MIN_SECRET_LEN, find_secret_in};

static REMEMBERED: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// Remembers `value` as a secret that must never be logged.
pub fn remember(value: &str) {
    if value.len() >= MIN_SECRET_LEN {
        REMEMBERED
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(value.to_owned());
    }
}

/// Every secret remembered so far in this test process.
pub fn remembered() -> Vec<String> {
    REMEMBERED
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone()
}

/// The index of a remembered secret that occurs in `log`, if any.
pub fn leaked_in(log: &str) -> Option<usize> {
    let secrets = remembered();
    let refs: Vec<&str> = secrets.iter().map(String::as_str).collect();
    find_secret_in(log, &refs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembered_secrets_are_found_in_logs() {
        let secret = crate::seed::random_secret("leak-check");
        assert_eq!(leaked_in("nothing to see"), None);
        let log = format!("INFO value={secret}");
        assert!(leaked_in(&log).is_some());
        remember("short");
        assert!(!remembered().contains(&"short".to_owned()));
    }
}
