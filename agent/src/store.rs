//! The secrets the agent serves: what Vault last said about each name, and the loop
//! that keeps asking.
//!
//! A value is replaced only by an authoritative answer from Vault. While Vault is
//! unreachable (or the token is being replaced) the last good value stays, marked
//! stale: an outage must never look like a deletion.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use tokio::sync::{Notify, watch};
use tokio::time::{Instant, sleep_until};
use tracing::{debug, info, warn};

use crate::backoff::Backoff;
use crate::metrics::Metrics;
use crate::name::SecretName;
use crate::secret::SecretFields;
use crate::vault::{Lease, ReadOutcome, VaultError, VaultReader};

/// How many reads are in flight at once during a refresh.
const READ_CONCURRENCY: usize = 8;

/// What is known about a name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Not yet answered by Vault.
    Pending,
    /// Read; the entry has fields.
    Loaded,
    /// Vault says nothing is there.
    NotFound,
    /// Vault refuses the agent's token for this path.
    Denied,
}

/// One name's current entry, as served to clients.
#[derive(Debug, Clone)]
pub struct Entry {
    /// What is known.
    pub state: State,
    /// The value, when loaded.
    pub fields: Option<Arc<SecretFields>>,
    /// Bumped on every change of value or state.
    pub version: u64,
    /// The last refresh failed and this is the last good value.
    pub stale: bool,
    /// When Vault last answered for this name.
    pub fetched_at: Option<SystemTime>,
}

impl Entry {
    fn pending() -> Self {
        Self {
            state: State::Pending,
            fields: None,
            version: 0,
            stale: false,
            fetched_at: None,
        }
    }

    /// Milliseconds since the Unix epoch of the last answer, 0 if none.
    pub fn fetched_at_unix_ms(&self) -> i64 {
        self.fetched_at
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
    }
}

struct Slot {
    entry: Entry,
    lease: Option<(Lease, Instant)>,
}

/// Every name any client asked for, and its entry.
#[derive(Debug)]
pub struct Store {
    slots: Mutex<HashMap<SecretName, SlotBox>>,
    generation: watch::Sender<u64>,
    wake: Notify,
    metrics: Arc<Metrics>,
}

/// Boxed so `Debug` on the store can stay silent about entries.
struct SlotBox(Slot);

impl std::fmt::Debug for SlotBox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Slot({:?}, v{})",
            self.0.entry.state, self.0.entry.version
        )
    }
}

impl Store {
    /// An empty store.
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self {
            slots: Mutex::new(HashMap::new()),
            generation: watch::channel(0).0,
            wake: Notify::new(),
            metrics,
        }
    }

    fn slots(&self) -> MutexGuard<'_, HashMap<SecretName, SlotBox>> {
        // A poisoned lock only means a panic elsewhere; the map itself is still consistent.
        self.slots
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Starts tracking `names`; new ones are read at once.
    pub fn register(&self, names: &[SecretName]) {
        let mut added = false;
        {
            let mut slots = self.slots();
            for name in names {
                slots.entry(name.clone()).or_insert_with(|| {
                    added = true;
                    SlotBox(Slot {
                        entry: Entry::pending(),
                        lease: None,
                    })
                });
            }
        }
        if added {
            self.wake.notify_one();
        }
    }

    /// The entries of `names`, or `None` while any of them still waits for Vault.
    pub fn snapshot(&self, names: &[SecretName]) -> Option<Vec<(SecretName, Entry)>> {
        let slots = self.slots();
        names
            .iter()
            .map(|n| {
                let slot = slots.get(n)?;
                (slot.0.entry.state != State::Pending).then(|| (n.clone(), slot.0.entry.clone()))
            })
            .collect()
    }

    /// A receiver that changes whenever any entry changes.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }

    /// Records Vault's answer (or failure) for `name`.
    fn apply(&self, name: &SecretName, result: Result<ReadOutcome, VaultError>) -> bool {
        let mut slots = self.slots();
        let Some(SlotBox(slot)) = slots.get_mut(name) else {
            return false;
        };
        let entry = &mut slot.entry;
        let before = (entry.state, entry.version, entry.stale);
        let now = SystemTime::now();
        match result {
            Ok(ReadOutcome::Found(fields, lease)) => {
                let same = entry.state == State::Loaded && entry.fields.as_deref() == Some(&fields);
                if !same {
                    entry.version += 1;
                    entry.fields = Some(Arc::new(fields));
                    Metrics::inc(&self.metrics.secret_changes);
                    info!(secret.name = %name, secret.version = entry.version, "secret loaded");
                }
                entry.state = State::Loaded;
                entry.stale = false;
                entry.fetched_at = Some(now);
                slot.lease = lease.map(|l| (l, Instant::now()));
            }
            Ok(ReadOutcome::NotFound) => {
                if entry.state != State::NotFound {
                    entry.version += 1;
                    info!(secret.name = %name, "secret not found in Vault");
                }
                entry.state = State::NotFound;
                entry.fields = None;
                entry.stale = false;
                entry.fetched_at = Some(now);
            }
            // A refusal of a loaded secret may be the token dying rather than the policy
            // changing; the token manager sorts that out, and the value stays meanwhile.
            Ok(ReadOutcome::Denied) if entry.state == State::Loaded => entry.stale = true,
            Ok(ReadOutcome::Denied) => {
                if entry.state != State::Denied {
                    entry.version += 1;
                    warn!(secret.name = %name, "Vault denies the agent's token this secret");
                }
                entry.state = State::Denied;
                entry.stale = false;
                entry.fetched_at = Some(now);
            }
            Err(e) => {
                if entry.state == State::Loaded && !entry.stale {
                    warn!(secret.name = %name, error = %e, "refresh failed; serving the last good value as stale");
                }
                if entry.state == State::Loaded {
                    entry.stale = true;
                }
            }
        }
        before != (entry.state, entry.version, entry.stale)
    }

    fn update_gauges(&self) {
        let slots = self.slots();
        let loaded = slots
            .values()
            .filter(|s| s.0.entry.state == State::Loaded)
            .count();
        let stale = slots.values().filter(|s| s.0.entry.stale).count();
        self.metrics
            .secrets_loaded
            .store(i64::try_from(loaded).unwrap_or(i64::MAX), Ordering::Relaxed);
        self.metrics
            .secrets_stale
            .store(i64::try_from(stale).unwrap_or(i64::MAX), Ordering::Relaxed);
    }

    /// Names to read now: those never answered; on a full refresh every name without
    /// a lease; leased secrets (and issued certificates) once their refresh time came.
    fn due(&self, full: bool) -> Vec<(SecretName, Option<Lease>)> {
        let slots = self.slots();
        slots
            .iter()
            .filter_map(
                |(name, SlotBox(slot))| match (&slot.lease, slot.entry.state) {
                    (_, State::Pending) => Some((name.clone(), None)),
                    (Some((lease, since)), State::Loaded) => (since.elapsed()
                        >= lease.refresh_after)
                        .then(|| (name.clone(), Some(lease.clone()))),
                    _ => full.then(|| (name.clone(), None)),
                },
            )
            .collect()
    }

    /// The earliest moment a lease or certificate needs attention.
    fn next_lease_deadline(&self) -> Option<Instant> {
        self.slots()
            .values()
            .filter(|s| s.0.entry.state == State::Loaded)
            .filter_map(|s| {
                s.0.lease
                    .as_ref()
                    .map(|(lease, since)| *since + lease.refresh_after)
            })
            .min()
    }

    fn renewed(&self, name: &SecretName, lease: Lease, duration: Duration) {
        if let Some(SlotBox(slot)) = self.slots().get_mut(name) {
            let refresh_after = crate::backoff::jitter_down(duration.mul_f64(2.0 / 3.0), 0.1);
            slot.lease = Some((
                Lease {
                    duration,
                    refresh_after,
                    ..lease
                },
                Instant::now(),
            ));
        }
    }

    /// Reads `name` now (after a write) and publishes the result; returns its version.
    pub async fn reload(&self, reader: &VaultReader, name: &SecretName) -> u64 {
        let result = reader.read(name).await;
        if self.apply(name, result) {
            self.generation.send_modify(|g| *g += 1);
        }
        self.update_gauges();
        self.slots().get(name).map_or(0, |s| s.0.entry.version)
    }

    /// Keeps every tracked name fresh until `shutdown`: a full pass every `interval`,
    /// new names at once, and on Vault failures a backoff no longer than `interval`.
    pub async fn refresh(
        self: Arc<Self>,
        reader: Arc<VaultReader>,
        interval: watch::Receiver<Duration>,
        mut authenticated: watch::Receiver<bool>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let mut backoff = Backoff::standard();
        let mut next_full = Instant::now();
        // After a failure nothing is retried before this, whatever is due.
        let mut not_before = Instant::now();
        loop {
            let wake = self
                .next_lease_deadline()
                .map_or(next_full, |d| d.min(next_full))
                .max(not_before);
            let full = tokio::select! {
                () = sleep_until(wake) => Instant::now() >= next_full,
                () = self.wake.notified() => false,
                Ok(()) = authenticated.changed() => *authenticated.borrow_and_update(),
                _ = crate::run::stopped(&mut shutdown) => return,
            };
            let due = self.due(full);
            if due.is_empty() {
                if full {
                    next_full = Instant::now() + *interval.borrow();
                }
                continue;
            }
            let results: Vec<_> = futures::stream::iter(due)
                .map(|(name, lease)| {
                    let reader = &reader;
                    async move {
                        if let Some(lease) = lease.filter(|l| l.renewable) {
                            match reader.renew_lease(&lease).await {
                                Ok(d) if d >= lease.duration.mul_f64(0.5) => return (name, None, Some((lease, d))),
                                // The lease can no longer grow: read a fresh secret instead.
                                Ok(_) | Err(_) => debug!(secret.name = %name, "lease renewal short or failed; re-reading"),
                            }
                        }
                        let result = reader.read(&name).await;
                        (name, Some(result), None)
                    }
                })
                .buffer_unordered(READ_CONCURRENCY)
                .collect()
                .await;
            let mut changed = false;
            let mut unavailable = false;
            for (name, result, renewal) in results {
                if let Some((lease, d)) = renewal {
                    self.renewed(&name, lease, d);
                }
                if let Some(result) = result {
                    unavailable |= result.is_err();
                    changed |= self.apply(&name, result);
                }
            }
            self.update_gauges();
            if changed {
                self.generation.send_modify(|g| *g += 1);
            }
            let period = *interval.borrow();
            if unavailable {
                next_full = Instant::now() + backoff.next_delay().min(period);
                not_before = next_full;
            } else {
                backoff.reset();
                if full {
                    next_full = Instant::now() + period;
                }
            }
        }
    }
}

#[cfg(test)]
#[path = "store/tests.rs"]
mod tests;
