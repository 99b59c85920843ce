//! The gRPC service on the Unix socket: who may ask, for what, and the Watch and Get
//! calls.

pub mod admission;
pub mod budget;
pub mod peer;
mod pidfd;
pub mod throttle;

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use futures::Stream;
use keygate_proto::REQUEST_HEADER;
use keygate_proto::agent::v1::secret_agent_server::SecretAgent;
use keygate_proto::agent::v1::{
    GetRequest, GetResponse, PutRequest, PutResponse, Secret, SecretState, Snapshot, WatchRequest,
};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::UdsConnectInfo;
use tonic::{Request, Response, Status};
use tracing::{debug, info, warn};
use zeroize::Zeroize;

use self::admission::ConnectedPeer;
use self::budget::{Charge, NameBudget};
use self::peer::Peer;
use self::throttle::{Refusal, Throttle};
use crate::config::{Limits, PeerPolicy};
use crate::metrics::Metrics;
use crate::name::{NamePattern, SecretName};
use crate::secret::{FieldValue, SecretFields};
use crate::store::{Entry, Held, State, Store};
use crate::vault::{VaultReader, WriteError};

/// How often a Watch stream re-checks that its peer process is still the same one.
const PEER_CHECK: Duration = Duration::from_secs(1);
/// Most Watch streams one uid may hold open: a flooding peer is refused before it can
/// starve the others (the gateway needs one).
pub const MAX_STREAMS_PER_UID: usize = 64;

/// The `keygate.agent.v1.SecretAgent` service.
#[derive(Debug)]
pub struct AgentService {
    store: Arc<Store>,
    reader: Arc<VaultReader>,
    policies: Arc<ArcSwap<Vec<PeerPolicy>>>,
    own_uid: u32,
    boot_id: String,
    get_timeout: Duration,
    metrics: Arc<Metrics>,
    shutdown: watch::Receiver<bool>,
    streams: Arc<Mutex<HashMap<u32, usize>>>,
    names_per_call: usize,
    budget: NameBudget,
    throttle: Throttle,
}

impl AgentService {
    /// A service answering from `store`, admitting peers by `policies` (empty: only
    /// the agent's own uid).
    pub fn new(
        store: Arc<Store>,
        reader: Arc<VaultReader>,
        policies: Arc<ArcSwap<Vec<PeerPolicy>>>,
        boot_id: String,
        get_timeout: Duration,
        metrics: Arc<Metrics>,
        shutdown: watch::Receiver<bool>,
    ) -> Self {
        Self {
            store,
            reader,
            policies,
            own_uid: nix::unistd::geteuid().as_raw(),
            boot_id,
            get_timeout,
            metrics,
            shutdown,
            streams: Arc::default(),
            names_per_call: Limits::default().names_per_call,
            budget: NameBudget::new(Limits::default().names_per_uid),
            throttle: Throttle::default(),
        }
    }

    /// The same service with these limits on names per call and per uid.
    #[must_use]
    pub fn with_limits(self, limits: Limits) -> Self {
        Self {
            names_per_call: limits.names_per_call,
            budget: NameBudget::new(limits.names_per_uid),
            ..self
        }
    }

    /// The largest request message the limits allow: every name at its longest, plus
    /// room for a `Put`'s fields.
    pub fn max_request_bytes(&self) -> usize {
        self.names_per_call
            .saturating_mul(crate::name::MAX_NAME_LEN + 8)
            .saturating_add(2 * MAX_PUT_BYTES)
    }

    /// Reserves one of `uid`'s Watch streams, released when the guard drops.
    fn reserve_stream(&self, uid: u32) -> Result<StreamSlot, Status> {
        let mut streams = self
            .streams
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let open = streams.entry(uid).or_default();
        if *open >= MAX_STREAMS_PER_UID {
            Metrics::inc(&self.metrics.denied_requests);
            if self.throttle.allow(uid, Refusal::Streams) {
                warn!(peer.uid = uid, "too many Watch streams from one uid");
            }
            return Err(Status::resource_exhausted(format!(
                "at most {MAX_STREAMS_PER_UID} Watch streams per uid"
            )));
        }
        *open += 1;
        Ok(StreamSlot {
            uid,
            streams: self.streams.clone(),
        })
    }

    /// Checks the header and the peer, then the names against the peer's policy.
    fn authorize<T>(
        &self,
        request: &Request<T>,
        names: &[String],
        access: Access,
    ) -> Result<(Peer, Vec<SecretName>), Status> {
        if request
            .metadata()
            .get(REQUEST_HEADER)
            .and_then(|v| v.to_str().ok())
            != Some("true")
        {
            Metrics::inc(&self.metrics.denied_requests);
            return Err(Status::invalid_argument(format!(
                "missing metadata header {REQUEST_HEADER}: true"
            )));
        }
        // Looked up once per connection (with a pidfd) when it came through
        // admission; a connection that did not is looked up now.
        let peer = match request.extensions().get::<ConnectedPeer>() {
            Some(connected) => connected.peer.clone().filter(Peer::still_alive),
            None => request
                .extensions()
                .get::<UdsConnectInfo>()
                .and_then(|info| info.peer_cred.as_ref())
                .and_then(Peer::from_cred),
        };
        let Some(peer) = peer else {
            Metrics::inc(&self.metrics.denied_peers);
            return Err(Status::permission_denied("peer credentials unavailable"));
        };
        let policies = self.policies.load();
        let allowed: Vec<NamePattern> = if policies.is_empty() {
            if peer.uid != self.own_uid {
                return Err(self.deny_peer(&peer));
            }
            // Without a peers section the agent's own uid reads everything, writes nothing.
            match access {
                Access::Read => vec![NamePattern::Prefix(String::new())],
                Access::Write => Vec::new(),
            }
        } else {
            match policies.iter().find(|p| p.matches(peer.uid, peer.gid)) {
                Some(policy) if access == Access::Read => policy.paths.clone(),
                Some(policy) => policy.write_paths.clone(),
                None => return Err(self.deny_peer(&peer)),
            }
        };
        if names.is_empty() || names.len() > self.names_per_call {
            Metrics::inc(&self.metrics.denied_requests);
            return Err(Status::invalid_argument(format!(
                "ask for between 1 and {} names (limits.names_per_call)",
                self.names_per_call
            )));
        }
        let mut parsed = Vec::with_capacity(names.len());
        let mut seen = std::collections::HashSet::with_capacity(names.len());
        for raw in names {
            let name = SecretName::parse(raw).map_err(|e| {
                Metrics::inc(&self.metrics.denied_requests);
                Status::invalid_argument(format!("invalid name {}: {e}", shown(raw)))
            })?;
            if !allowed.iter().any(|p| p.matches(&name)) {
                Metrics::inc(&self.metrics.denied_requests);
                if self.throttle.allow(peer.uid, Refusal::Path) {
                    warn!(peer.uid = peer.uid, peer.pid = peer.pid, secret.name = %name, "name outside the peer's policy");
                }
                return Err(Status::permission_denied(format!(
                    "{name} is outside this peer's policy"
                )));
            }
            if seen.insert(name.clone()) {
                parsed.push(name);
            }
        }
        Ok((peer, parsed))
    }

    /// Counts a call's `names` against `uid`'s budget of names held at once, until
    /// the charge is dropped.
    fn charge(&self, uid: u32, names: &[SecretName]) -> Result<Charge, Status> {
        self.budget.charge(uid, names.len()).inspect_err(|_| {
            Metrics::inc(&self.metrics.denied_requests);
            if self.throttle.allow(uid, Refusal::Names) {
                warn!(
                    peer.uid = uid,
                    "a peer's open calls would hold more names than its budget"
                );
            }
        })
    }

    fn deny_peer(&self, peer: &Peer) -> Status {
        Metrics::inc(&self.metrics.denied_peers);
        if self.throttle.allow(peer.uid, Refusal::Peer) {
            warn!(
                peer.uid = peer.uid,
                peer.gid = peer.gid,
                peer.pid = peer.pid,
                "peer not allowed"
            );
        }
        Status::permission_denied("peer not allowed")
    }
}

/// What a call wants to do with its names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Access {
    Read,
    Write,
}

/// Largest secret a peer may write.
const MAX_PUT_BYTES: usize = 1 << 20;

type SnapshotStream = Pin<Box<dyn Stream<Item = Result<Snapshot, Status>> + Send>>;

#[tonic::async_trait]
impl SecretAgent for AgentService {
    type WatchStream = SnapshotStream;

    async fn watch(
        &self,
        request: Request<WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let (peer, names) = self.authorize(&request, &request.get_ref().names, Access::Read)?;
        let slot = self.reserve_stream(peer.uid)?;
        let charge = self.charge(peer.uid, &names)?;
        let held = self.store.hold(names);
        let (tx, rx) = mpsc::channel(4);
        let stream = WatchStream {
            _slot: slot,
            _charge: charge,
            store: self.store.clone(),
            held,
            peer,
            boot_id: self.boot_id.clone(),
            metrics: self.metrics.clone(),
            shutdown: self.shutdown.clone(),
        };
        tokio::spawn(stream.run(tx));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn get(&self, request: Request<GetRequest>) -> Result<Response<GetResponse>, Status> {
        let (peer, names) = self.authorize(&request, &request.get_ref().names, Access::Read)?;
        let _charge = self.charge(peer.uid, &names)?;
        let held = self.store.hold(names);
        let mut generation = self.store.subscribe();
        let answer = tokio::time::timeout(self.get_timeout, async {
            loop {
                if let Some(entries) = self.store.snapshot(held.names()) {
                    return Some(entries);
                }
                generation.changed().await.ok()?;
            }
        })
        .await;
        match answer {
            Ok(Some(entries)) => Ok(Response::new(GetResponse {
                boot_id: self.boot_id.clone(),
                secrets: held
                    .names()
                    .iter()
                    .zip(&entries)
                    .map(|(n, e)| to_proto(n, e))
                    .collect(),
            })),
            _ => Err(Status::unavailable(
                "secrets not loaded yet: Vault has not answered",
            )),
        }
    }

    async fn put(&self, request: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        let names = [request.get_ref().name.clone()];
        let (peer, names) = self.authorize(&request, &names, Access::Write)?;
        let _charge = self.charge(peer.uid, &names)?;
        let [name] = <[SecretName; 1]>::try_from(names)
            .map_err(|_| Status::invalid_argument("exactly one name"))?;
        let mut fields = request.into_inner().fields;
        let size: usize = fields.iter().map(|(k, v)| k.len() + v.len()).sum();
        if fields.is_empty() || size > MAX_PUT_BYTES {
            zeroize_all(&mut fields);
            return Err(Status::invalid_argument(format!(
                "a secret needs 1 field or more and at most {MAX_PUT_BYTES} bytes"
            )));
        }
        if let Some(key) = fields
            .iter()
            .find(|(_, v)| std::str::from_utf8(v).is_err())
            .map(|(k, _)| k.clone())
        {
            zeroize_all(&mut fields);
            return Err(Status::invalid_argument(format!(
                "field {key:?} is not UTF-8"
            )));
        }
        let values: SecretFields = fields
            .drain()
            .map(|(key, value)| (key, FieldValue::new(value)))
            .collect();
        self.reader
            .write(&name, &values)
            .await
            .map_err(|e| match e {
                WriteError::Denied => Status::permission_denied(format!(
                    "Vault refuses the agent's token to write {name}"
                )),
                WriteError::Vault(e) => Status::unavailable(format!("writing {name}: {e}")),
            })?;
        info!(peer.uid = peer.uid, secret.name = %name, "secret written to Vault");
        let held = self.store.hold(vec![name]);
        let version = self.store.reload(&self.reader, &held.names()[0]).await;
        Ok(Response::new(PutResponse { version }))
    }
}

/// A uid's claim on one Watch stream.
struct StreamSlot {
    uid: u32,
    streams: Arc<Mutex<HashMap<u32, usize>>>,
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut streams = self
            .streams
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(open) = streams.get_mut(&self.uid) {
            *open = open.saturating_sub(1);
            if *open == 0 {
                streams.remove(&self.uid);
            }
        }
    }
}

/// One open Watch call.
struct WatchStream {
    _slot: StreamSlot,
    _charge: Charge,
    store: Arc<Store>,
    held: Held,
    peer: Peer,
    boot_id: String,
    metrics: Arc<Metrics>,
    shutdown: watch::Receiver<bool>,
}

impl WatchStream {
    async fn run(mut self, tx: mpsc::Sender<Result<Snapshot, Status>>) {
        self.metrics.watchers.fetch_add(1, Ordering::Relaxed);
        let mut generation = self.store.subscribe();
        let mut peer_check = tokio::time::interval(PEER_CHECK);
        let mut last_sent: Option<Vec<(State, u64, bool)>> = None;
        let mut version = 0;
        loop {
            generation.borrow_and_update();
            if let Some(entries) = self.store.snapshot(self.held.names()) {
                let signature: Vec<_> = entries
                    .iter()
                    .map(|e| (e.state, e.version, e.stale))
                    .collect();
                if last_sent.as_ref() != Some(&signature) {
                    version += 1;
                    let snapshot = Snapshot {
                        version,
                        boot_id: self.boot_id.clone(),
                        secrets: self
                            .held
                            .names()
                            .iter()
                            .zip(&entries)
                            .map(|(n, e)| to_proto(n, e))
                            .collect(),
                    };
                    if tx.send(Ok(snapshot)).await.is_err() {
                        break;
                    }
                    last_sent = Some(signature);
                }
            }
            tokio::select! {
                Ok(()) = generation.changed() => {}
                _ = peer_check.tick() => {
                    if !self.peer.still_alive() {
                        debug!(peer.pid = self.peer.pid, "watching process is gone; ending its stream");
                        let _ = tx.send(Err(Status::permission_denied("the process that opened this stream has exited"))).await;
                        break;
                    }
                }
                () = tx.closed() => break,
                _ = crate::run::stopped(&mut self.shutdown) => {
                    let _ = tx.send(Err(Status::unavailable("agent shutting down"))).await;
                    break;
                }
            }
        }
        self.metrics.watchers.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A peer's name as quoted in an error: at most 80 bytes of it (the whole message
/// becomes a response header).
fn shown(raw: &str) -> String {
    const MAX: usize = 80;
    if raw.len() <= MAX {
        return format!("{raw:?}");
    }
    let cut = (0..=MAX)
        .rev()
        .find(|&i| raw.is_char_boundary(i))
        .unwrap_or(0);
    format!("{:?}... ({} bytes)", &raw[..cut], raw.len())
}

fn zeroize_all(fields: &mut HashMap<String, Vec<u8>>) {
    for value in fields.values_mut() {
        value.zeroize();
    }
}

fn to_proto(name: &SecretName, entry: &Entry) -> Secret {
    let state = match entry.state {
        State::Loaded => SecretState::Loaded,
        State::NotFound => SecretState::NotFound,
        State::Denied => SecretState::Denied,
        State::Pending => SecretState::Unspecified,
    };
    Secret {
        name: name.to_string(),
        state: state.into(),
        version: entry.version,
        stale: entry.stale,
        // These copies belong to tonic once sent; it drops them without zeroizing.
        fields: entry
            .fields
            .iter()
            .flat_map(|f| f.iter())
            .map(|(k, v)| (k.to_owned(), v.expose().to_vec()))
            .collect(),
        fetched_at_unix_ms: entry.fetched_at_unix_ms(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_names_are_cut_in_errors() {
        assert_eq!(shown("consumer/jack"), "\"consumer/jack\"");
        let long = "é".repeat(1000);
        let cut = shown(&long);
        assert!(cut.len() < 120, "{cut}");
        assert!(cut.ends_with("... (2000 bytes)"), "{cut}");
    }
}
