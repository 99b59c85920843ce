//! The secrets the agent serves: what Vault last said about each name, and the loop
//! that keeps asking.
//!
//! A value is replaced only by an authoritative answer from Vault. While Vault is
//! unreachable (or the token is being replaced) the last good value stays, marked
//! stale: an outage must never look like a deletion.

use std::collections::BTreeMap;
use std::ops::Bound;
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
/// How many names a refresh takes from the map at a time: a pass walks the map in
/// steps instead of holding every due name (and every answer) in memory at once.
const BATCH: usize = 256;
/// How long a name nobody holds is kept (and refreshed) before a full refresh
/// forgets it: a gateway that restarts or reconnects, even while Vault is down, finds
/// its names still answered.
const KEEP_IDLE: Duration = Duration::from_secs(600);

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
    /// The last refresh failed and this is the last good value.
    pub stale: bool,
    /// Bumped on every change of value or state.
    pub version: u64,
    /// The value, when loaded.
    pub fields: Option<Arc<SecretFields>>,
    /// When Vault last answered for this name: milliseconds since the Unix epoch, 0
    /// if never.
    fetched_at_ms: i64,
}

impl Entry {
    fn pending() -> Self {
        Self {
            state: State::Pending,
            stale: false,
            version: 0,
            fields: None,
            fetched_at_ms: 0,
        }
    }

    /// Milliseconds since the Unix epoch of the last answer, 0 if none.
    pub fn fetched_at_unix_ms(&self) -> i64 {
        self.fetched_at_ms
    }
}

fn unix_ms(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

struct Slot {
    entry: Entry,
    /// Boxed: most secrets have no lease, and this keeps their slot small.
    lease: Option<Box<(Lease, Instant)>>,
    /// Open calls (Watch streams, Gets, Puts) that asked for this name.
    holders: u32,
    /// Named in the configuration's `preload`: kept whether or not anyone asks.
    pinned: bool,
    /// When it became unwanted (seconds since the store was made, plus one); 0 while
    /// held or preloaded.
    idle_since: u32,
}

impl Slot {
    fn new() -> Self {
        Self {
            entry: Entry::pending(),
            lease: None,
            holders: 0,
            pinned: false,
            idle_since: 0,
        }
    }

    /// Nobody asks for it any more and it is not preloaded.
    fn unwanted(&self) -> bool {
        self.holders == 0 && !self.pinned
    }
}

/// The names the agent tracks, and their entries: those preloaded, those some open
/// call asks for, and those nobody asks for any more ("idle"), kept for
/// [`KEEP_IDLE`] so that a client that reconnects (even while Vault is down) finds
/// them still answered. Idle names are bounded: once there are more than the idle
/// limit (`limits.names_per_uid`), those without a value are forgotten at once (names
/// a peer made up), then the others, so made-up names cannot accumulate.
#[derive(Debug)]
pub struct Store {
    slots: Mutex<Slots>,
    generation: watch::Sender<u64>,
    wake: Notify,
    metrics: Arc<Metrics>,
    started: Instant,
    max_idle: usize,
    keep_idle: Duration,
}

/// The map, and how many of its names are idle.
#[derive(Debug, Default)]
struct Slots {
    map: BTreeMap<SecretName, SlotBox>,
    idle: usize,
}

impl std::ops::Deref for Slots {
    type Target = BTreeMap<SecretName, SlotBox>;
    fn deref(&self) -> &Self::Target {
        &self.map
    }
}

impl std::ops::DerefMut for Slots {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.map
    }
}

/// Wrapped so `Debug` on the store can stay silent about entries.
struct SlotBox(Slot);

impl std::fmt::Debug for SlotBox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Slot({:?}, v{}, held by {})",
            self.0.entry.state, self.0.entry.version, self.0.holders
        )
    }
}

/// An open call's claim on its names: they stay tracked until it is dropped.
#[derive(Debug)]
pub struct Held {
    store: Arc<Store>,
    names: Vec<SecretName>,
}

impl Held {
    /// The names held, in the order given.
    pub fn names(&self) -> &[SecretName] {
        &self.names
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.store.release(&self.names);
    }
}

impl Store {
    /// An empty store.
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self {
            slots: Mutex::new(Slots::default()),
            generation: watch::channel(0).0,
            wake: Notify::new(),
            metrics,
            started: Instant::now(),
            max_idle: crate::config::Limits::default().names_per_uid,
            keep_idle: KEEP_IDLE,
        }
    }

    /// The same store keeping at most `max_idle` names nobody holds.
    #[must_use]
    pub fn with_max_idle(self, max_idle: usize) -> Self {
        Self { max_idle, ..self }
    }

    /// Seconds since the store was made, plus one (0 means "not idle").
    fn now_mark(&self) -> u32 {
        u32::try_from(self.started.elapsed().as_secs())
            .unwrap_or(u32::MAX - 1)
            .saturating_add(1)
    }

    fn slots(&self) -> MutexGuard<'_, Slots> {
        // A poisoned lock only means a panic elsewhere; the map itself is still consistent.
        self.slots
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Starts tracking `names` for a call until the returned claim is dropped; new
    /// names are read at once.
    pub fn hold(self: &Arc<Self>, names: Vec<SecretName>) -> Held {
        let mut added = false;
        {
            let mut guard = self.slots();
            let slots = &mut *guard;
            for name in &names {
                if let Some(SlotBox(slot)) = slots.map.get_mut(name) {
                    if slot.idle_since != 0 {
                        slot.idle_since = 0;
                        slots.idle -= 1;
                    }
                    slot.holders = slot.holders.saturating_add(1);
                } else {
                    let mut slot = Slot::new();
                    slot.holders = 1;
                    slots.insert(name.clone(), SlotBox(slot));
                    added = true;
                }
            }
            self.tracked(slots.len());
        }
        if added {
            self.wake.notify_one();
        }
        Held {
            store: self.clone(),
            names,
        }
    }

    fn release(&self, names: &[SecretName]) {
        let now = self.now_mark();
        let mut guard = self.slots();
        let slots = &mut *guard;
        for name in names {
            let Some(SlotBox(slot)) = slots.map.get_mut(name) else {
                continue;
            };
            slot.holders = slot.holders.saturating_sub(1);
            if slot.unwanted() && slot.idle_since == 0 {
                slot.idle_since = now;
                slots.idle += 1;
            }
        }
        if slots.idle > self.max_idle {
            // Too many names nobody holds: first those Vault has no value for (names
            // made up by a peer), then, if that is not enough, the others.
            let before = slots.len();
            slots.retain(|_, s| !(s.0.idle_since != 0 && s.0.entry.state != State::Loaded));
            if count_idle(slots) > self.max_idle {
                slots.retain(|_, s| s.0.idle_since == 0);
            }
            slots.idle = count_idle(slots);
            debug!(
                forgotten = before - slots.len(),
                "forgot idle names over the limit"
            );
        }
        self.tracked(slots.len());
    }

    fn tracked(&self, len: usize) {
        self.metrics
            .secrets_tracked
            .store(i64::try_from(len).unwrap_or(i64::MAX), Ordering::Relaxed);
    }

    /// Makes `names` the preloaded ones: tracked whether or not anyone asks for them
    /// (names preloaded before and not any more are kept while someone holds them).
    /// New names are read at once.
    pub fn preload(&self, names: &[SecretName]) {
        let mut added = false;
        {
            let now = self.now_mark();
            let mut slots = self.slots();
            for SlotBox(slot) in slots.values_mut() {
                slot.pinned = false;
            }
            for name in names {
                if let Some(SlotBox(slot)) = slots.get_mut(name) {
                    slot.pinned = true;
                } else {
                    let mut slot = Slot::new();
                    slot.pinned = true;
                    slots.insert(name.clone(), SlotBox(slot));
                    added = true;
                }
            }
            for SlotBox(slot) in slots.values_mut() {
                match (slot.unwanted(), slot.idle_since) {
                    (true, 0) => slot.idle_since = now,
                    (false, _) => slot.idle_since = 0,
                    (true, _) => {}
                }
            }
            slots.idle = count_idle(&slots);
            self.tracked(slots.len());
        }
        if added {
            self.wake.notify_one();
        }
    }

    /// How many names the store tracks.
    pub fn len(&self) -> usize {
        self.slots().len()
    }

    /// Whether the store tracks no name.
    pub fn is_empty(&self) -> bool {
        self.slots().is_empty()
    }

    /// The entries of `names` (in their order), or `None` while any of them still
    /// waits for Vault (or is not tracked).
    pub fn snapshot(&self, names: &[SecretName]) -> Option<Vec<Entry>> {
        let slots = self.slots();
        names
            .iter()
            .map(|n| {
                let slot = slots.get(n)?;
                (slot.0.entry.state != State::Pending).then(|| slot.0.entry.clone())
            })
            .collect()
    }

    /// Whether every one of `names` has an answer from Vault.
    pub fn answered(&self, names: &[SecretName]) -> bool {
        let slots = self.slots();
        names.iter().all(|n| {
            slots
                .get(n)
                .is_some_and(|s| s.0.entry.state != State::Pending)
        })
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
        let now = unix_ms(SystemTime::now());
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
                entry.fetched_at_ms = now;
                slot.lease = lease.map(|l| Box::new((l, Instant::now())));
            }
            Ok(ReadOutcome::NotFound) => {
                if entry.state != State::NotFound {
                    entry.version += 1;
                    info!(secret.name = %name, "secret not found in Vault");
                }
                entry.state = State::NotFound;
                entry.fields = None;
                entry.stale = false;
                entry.fetched_at_ms = now;
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
                entry.fetched_at_ms = now;
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
        let (loaded, stale) = self.slots().values().fold((0, 0), |(l, s), slot| {
            (
                l + usize::from(slot.0.entry.state == State::Loaded),
                s + usize::from(slot.0.entry.stale),
            )
        });
        self.metrics
            .secrets_loaded
            .store(i64::try_from(loaded).unwrap_or(i64::MAX), Ordering::Relaxed);
        self.metrics
            .secrets_stale
            .store(i64::try_from(stale).unwrap_or(i64::MAX), Ordering::Relaxed);
    }

    /// The next names to read, from the first name after `after` on: those never
    /// answered; on a full refresh every name without a lease; leased secrets (and
    /// issued certificates) once their refresh time came. At most [`BATCH`] names,
    /// and the last name looked at when the walk is not over yet. A full refresh also
    /// forgets the names nobody asks for any more.
    fn due_batch(
        &self,
        full: bool,
        forget: bool,
        after: Option<&SecretName>,
    ) -> (Vec<(SecretName, Option<Lease>)>, Option<SecretName>) {
        let now = self.now_mark();
        let keep = u32::try_from(self.keep_idle.as_secs()).unwrap_or(u32::MAX);
        let mut slots = self.slots();
        let range = match after {
            Some(name) => slots.range((Bound::Excluded(name), Bound::Unbounded)),
            None => slots.range::<SecretName, _>(..),
        };
        let mut due = Vec::new();
        let mut unwanted = Vec::new();
        let mut last = None;
        for (name, SlotBox(slot)) in range {
            if due.len() == BATCH {
                break;
            }
            last = Some(name);
            if forget && slot.idle_since != 0 && now.saturating_sub(slot.idle_since) >= keep {
                unwanted.push(name.clone());
                continue;
            }
            let lease = slot.lease.as_deref();
            let read = match (lease, slot.entry.state) {
                (_, State::Pending) => Some(None),
                (Some((lease, since)), State::Loaded) => {
                    (since.elapsed() >= lease.refresh_after).then(|| Some(lease.clone()))
                }
                _ => full.then_some(None),
            };
            if let Some(lease) = read {
                due.push((name.clone(), lease));
            }
        }
        let more = (due.len() == BATCH).then(|| last.cloned()).flatten();
        for name in &unwanted {
            slots.remove(name);
        }
        slots.idle -= unwanted.len();
        self.tracked(slots.len());
        if !unwanted.is_empty() {
            debug!(
                forgotten = unwanted.len(),
                "forgot names nobody asked for in a while"
            );
        }
        (due, more)
    }

    /// The earliest moment a lease or certificate needs attention.
    fn next_lease_deadline(&self) -> Option<Instant> {
        self.slots()
            .values()
            .filter(|s| s.0.entry.state == State::Loaded)
            .filter_map(|s| {
                s.0.lease
                    .as_deref()
                    .map(|(lease, since)| *since + lease.refresh_after)
            })
            .min()
    }

    fn renewed(&self, name: &SecretName, lease: Lease, duration: Duration) {
        if let Some(SlotBox(slot)) = self.slots().get_mut(name) {
            let refresh_after = crate::backoff::jitter_down(duration.mul_f64(2.0 / 3.0), 0.1);
            slot.lease = Some(Box::new((
                Lease {
                    duration,
                    refresh_after,
                    ..lease
                },
                Instant::now(),
            )));
        }
    }

    fn publish(&self) {
        self.generation.send_modify(|g| *g += 1);
    }

    /// Reads `name` now (after a write) and publishes the result; returns its version.
    pub async fn reload(&self, reader: &VaultReader, name: &SecretName) -> u64 {
        let result = reader.read(name).await;
        if self.apply(name, result) {
            self.publish();
        }
        self.update_gauges();
        self.slots().get(name).map_or(0, |s| s.0.entry.version)
    }

    /// One walk over the map: reads (or renews) what is due, [`READ_CONCURRENCY`] at
    /// a time, applying each answer as it comes and publishing changes every
    /// [`BATCH`] answers. Returns how many names were due, and whether Vault failed.
    async fn pass(&self, reader: &VaultReader, full: bool, forget: bool) -> (usize, bool) {
        let mut queue = std::collections::VecDeque::new();
        // Where the walk is: `Some(None)` at the start, `Some(after)` in the middle,
        // `None` once the whole map has been looked at.
        let mut walk = Some(None);
        let mut reads = futures::stream::FuturesUnordered::new();
        let (mut answered, mut unavailable, mut changed, mut unpublished) = (0, false, false, 0);
        loop {
            while reads.len() < READ_CONCURRENCY {
                if queue.is_empty()
                    && let Some(after) = walk.take()
                {
                    let (due, more) = self.due_batch(full, forget, Option::as_ref(&after));
                    queue.extend(due);
                    walk = more.map(Some);
                }
                let Some((name, lease)) = queue.pop_front() else {
                    break;
                };
                reads.push(read_one(reader, name, lease));
            }
            let Some((name, result, renewal)) = reads.next().await else {
                break;
            };
            answered += 1;
            if let Some((lease, d)) = renewal {
                self.renewed(&name, lease, d);
            }
            if let Some(result) = result {
                unavailable |= result.is_err();
                changed |= self.apply(&name, result);
            }
            unpublished += 1;
            if changed && unpublished >= BATCH {
                self.publish();
                (changed, unpublished) = (false, 0);
            }
        }
        if changed {
            self.publish();
        }
        (answered, unavailable)
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
        // Idle names are not forgotten while Vault is unreachable: a client that comes
        // back then could not have them read again.
        let mut reachable = true;
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
            let (answered, unavailable) = tokio::select! {
                done = self.pass(&reader, full, full && reachable) => done,
                _ = crate::run::stopped(&mut shutdown) => return,
            };
            self.update_gauges();
            if answered >= BATCH {
                // A big pass frees as much as it keeps (bodies, JSON, old values).
                crate::hygiene::trim_heap();
            }
            let period = *interval.borrow();
            if answered == 0 {
                if full {
                    next_full = Instant::now() + period;
                }
                continue;
            }
            reachable = !unavailable;
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

fn count_idle(slots: &BTreeMap<SecretName, SlotBox>) -> usize {
    slots.values().filter(|s| s.0.idle_since != 0).count()
}

/// Renews `name`'s lease when it has a renewable one that can still grow; otherwise
/// reads the secret.
async fn read_one(
    reader: &VaultReader,
    name: SecretName,
    lease: Option<Lease>,
) -> (
    SecretName,
    Option<Result<ReadOutcome, VaultError>>,
    Option<(Lease, Duration)>,
) {
    if let Some(lease) = lease.filter(|l| l.renewable) {
        match reader.renew_lease(&lease).await {
            Ok(d) if d >= lease.duration.mul_f64(0.5) => return (name, None, Some((lease, d))),
            // The lease can no longer grow: read a fresh secret instead.
            Ok(_) | Err(_) => {
                debug!(secret.name = %name, "lease renewal short or failed; re-reading");
            }
        }
    }
    let result = reader.read(&name).await;
    (name, Some(result), None)
}

#[cfg(test)]
#[path = "store/tests.rs"]
mod tests;
