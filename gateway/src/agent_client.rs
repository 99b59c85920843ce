//! The agent's Watch stream: one stream for every name the configuration needs,
//! each snapshot handed over whole, reconnection with jittered exponential backoff.
//!
//! The request path never touches this module: it reads whatever snapshot was last
//! handed to the sink. While the agent is away that snapshot simply stays.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use keygate_proto::agent::v1::WatchRequest;
use rand::Rng as _;
use tokio::sync::watch;

use crate::secrets::SecretSnapshot;

/// Largest snapshot accepted from the agent (the agent is trusted; this only bounds
/// what a broken one could make the gateway allocate).
const MAX_SNAPSHOT_BYTES: usize = 512 << 20;

/// Connection state, readable without locks (metrics, readiness).
#[derive(Debug, Default)]
pub struct AgentStatus {
    /// A Watch stream is open.
    pub connected: AtomicBool,
    /// Snapshots received since start.
    pub snapshots: AtomicU64,
    /// Streams that ended or failed.
    pub disconnects: AtomicU64,
    /// Watch calls attempted.
    pub attempts: AtomicU64,
}

/// Jittered exponential backoff.
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    current: Duration,
}

impl Backoff {
    /// Starts at `min`, doubles up to `max`.
    pub fn new(min: Duration, max: Duration) -> Self {
        Self {
            min,
            max,
            current: min,
        }
    }

    /// The next delay: uniformly random in [d/2, d] ("equal jitter"), so gateways that
    /// lost the same agent do not all redial in step; then d doubles.
    pub fn next_delay(&mut self) -> Duration {
        let d = self.current;
        self.current = (self.current * 2).min(self.max);
        let half = d / 2;
        let jitter_ns = u64::try_from(half.as_nanos()).unwrap_or(u64::MAX);
        half + Duration::from_nanos(rand::rng().random_range(0..=jitter_ns))
    }

    /// Back to `min` after a success.
    pub fn reset(&mut self) {
        self.current = self.min;
    }
}

/// Follows the agent until the task is dropped or aborted.
///
/// `names` carries the names to watch; a change (configuration reload) re-subscribes
/// at once. Each snapshot goes to `sink`.
pub async fn follow(
    socket: PathBuf,
    mut backoff: Backoff,
    mut names: watch::Receiver<Vec<String>>,
    status: std::sync::Arc<AgentStatus>,
    sink: impl Fn(SecretSnapshot) + Send + Sync,
) {
    let client = match keygate_proto::connect_lazy(&socket) {
        // One snapshot carries every watched secret: 10 000 consumers with RSA key
        // pairs come to about 25 MB, far above tonic's 4 MiB default.
        Ok(c) => c.max_decoding_message_size(MAX_SNAPSHOT_BYTES),
        Err(e) => {
            // Only a malformed endpoint fails here, never a missing agent.
            tracing::error!(socket = %socket.display(), error = %e, "cannot create the agent client");
            return;
        }
    };
    let mut failures_in_a_row: u64 = 0;
    loop {
        let wanted = names.borrow_and_update().clone();
        if wanted.is_empty() {
            if names.changed().await.is_err() {
                return;
            }
            continue;
        }
        status.attempts.fetch_add(1, Ordering::Relaxed);
        let mut c = client.clone();
        let opened = tokio::select! {
            r = c.watch(WatchRequest { names: wanted.clone() }) => r,
            changed = names.changed() => {
                if changed.is_err() { return; }
                continue;
            }
        };
        let outcome = match opened {
            Ok(response) => {
                status.connected.store(true, Ordering::Relaxed);
                let mut stream = response.into_inner();
                let mut got_one = false;
                let outcome = loop {
                    tokio::select! {
                        msg = stream.message() => match msg {
                            Ok(Some(snapshot)) => {
                                let snapshot = SecretSnapshot::from_proto(snapshot);
                                tracing::debug!(
                                    version = snapshot.version, boot_id = %snapshot.boot_id,
                                    secrets = snapshot.secrets.len(), "snapshot from the agent"
                                );
                                if !got_one && failures_in_a_row > 0 {
                                    tracing::info!("agent stream re-established");
                                }
                                got_one = true;
                                failures_in_a_row = 0;
                                backoff.reset();
                                status.snapshots.fetch_add(1, Ordering::Relaxed);
                                sink(snapshot);
                            }
                            Ok(None) => break Err("the agent closed the stream".to_owned()),
                            Err(s) => break Err(describe(&s)),
                        },
                        changed = names.changed() => {
                            if changed.is_err() { return; }
                            tracing::info!("secret names changed; re-subscribing to the agent");
                            break Ok(());
                        }
                    }
                };
                status.connected.store(false, Ordering::Relaxed);
                status.disconnects.fetch_add(1, Ordering::Relaxed);
                outcome
            }
            Err(s) => Err(describe(&s)),
        };
        match outcome {
            Ok(()) => continue,
            Err(why) => {
                failures_in_a_row += 1;
                // First failure, then every 30th: a long outage must not flood the log.
                if failures_in_a_row == 1 || failures_in_a_row.is_multiple_of(30) {
                    tracing::warn!(
                        socket = %socket.display(), error = %why, failures = failures_in_a_row,
                        "agent unavailable; serving the last snapshot and retrying"
                    );
                } else {
                    tracing::debug!(error = %why, "agent still unavailable");
                }
            }
        }
        let delay = backoff.next_delay();
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            changed = names.changed() => {
                if changed.is_err() { return; }
                // Stop waiting: the loop picks the new names up at once.
            }
        }
    }
}

fn describe(status: &tonic::Status) -> String {
    match status.code() {
        tonic::Code::PermissionDenied => format!(
            "permission denied by the agent (check its peers policy for this uid and these names): {}",
            status.message()
        ),
        tonic::Code::InvalidArgument => format!(
            "the agent rejected the request (names invalid?): {}",
            status.message()
        ),
        code => format!("{code:?}: {}", status.message()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_with_jitter_and_resets() {
        let min = Duration::from_millis(100);
        let max = Duration::from_secs(1);
        let mut b = Backoff::new(min, max);
        let mut ceiling = min;
        for _ in 0..10 {
            let d = b.next_delay();
            assert!(
                d >= ceiling / 2 && d <= ceiling,
                "{d:?} outside [{:?}, {ceiling:?}]",
                ceiling / 2
            );
            ceiling = (ceiling * 2).min(max);
        }
        b.reset();
        assert!(b.next_delay() <= min);
    }
}
