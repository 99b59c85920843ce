//! Polling helpers: wait until a condition holds, with a bounded timeout.

use std::future::Future;
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow};

/// How often [`eventually`] polls.
pub const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// Calls `check` every [`POLL_INTERVAL`] until it returns `Ok`, and returns that value.
///
/// Fails after `timeout` with the last error `check` returned, so the message says what
/// was still wrong.
pub async fn eventually<T, F, Fut>(timeout: Duration, check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T>>,
{
    eventually_every(timeout, POLL_INTERVAL, check).await
}

/// [`eventually`] with a chosen polling interval.
pub async fn eventually_every<T, F, Fut>(
    timeout: Duration,
    interval: Duration,
    mut check: F,
) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let start = Instant::now();
    let deadline = start + timeout;
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        // A check that hangs must not overrun the deadline.
        let outcome = match tokio::time::timeout(remaining.max(interval), check()).await {
            Ok(outcome) => outcome,
            Err(_) => Err(anyhow!("the check itself did not finish in time")),
        };
        match outcome {
            Ok(value) => return Ok(value),
            Err(err) => {
                if Instant::now() >= deadline {
                    return Err(err.context(format!(
                        "condition still false after {:.1?} (timeout {timeout:?})",
                        start.elapsed()
                    )));
                }
            }
        }
        tokio::time::sleep(interval).await;
    }
}
