//! Admission of connections on the socket, before any request is read: a uid may hold
//! at most [`MAX_CONNECTIONS_PER_UID`] open connections, and a uid that no peer policy
//! admits at most [`MAX_CONNECTIONS_PER_STRANGER`] (enough to be told
//! PERMISSION_DENIED). One flooding peer can then not use up the agent's file
//! descriptors and lock the gateway out; the connections beyond are closed at once.

use std::collections::HashMap;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use arc_swap::ArcSwap;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::UnixStream;
use tonic::transport::server::Connected;
use tracing::debug;

use crate::config::PeerPolicy;
use crate::metrics::Metrics;
use crate::server::peer::Peer;

/// Open connections one admitted uid may hold.
pub const MAX_CONNECTIONS_PER_UID: usize = 64;
/// Open connections a uid that no policy admits may hold.
pub const MAX_CONNECTIONS_PER_STRANGER: usize = 4;

/// Counts open connections per uid and admits or refuses new ones.
#[derive(Debug, Clone)]
pub struct Admission {
    open: Arc<Mutex<HashMap<u32, usize>>>,
    policies: Arc<ArcSwap<Vec<PeerPolicy>>>,
    own_uid: u32,
    metrics: Arc<Metrics>,
}

impl Admission {
    /// Admission under `policies` (empty: only the agent's own uid is admitted).
    pub fn new(policies: Arc<ArcSwap<Vec<PeerPolicy>>>, metrics: Arc<Metrics>) -> Self {
        Self {
            open: Arc::default(),
            policies,
            own_uid: nix::unistd::geteuid().as_raw(),
            metrics,
        }
    }

    /// The connection, counted against its uid; `None` (and the connection closed)
    /// when the uid already holds its share.
    pub fn admit(&self, stream: UnixStream) -> Option<Admitted> {
        // A connection without credentials cannot be authorized anyway: it shares
        // the smallest allowance under an impossible uid.
        let (uid, admitted) = match stream.peer_cred() {
            Ok(cred) => (cred.uid(), self.admitted(cred.uid(), cred.gid())),
            Err(_) => (u32::MAX, false),
        };
        let limit = if admitted {
            MAX_CONNECTIONS_PER_UID
        } else {
            MAX_CONNECTIONS_PER_STRANGER
        };
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let count = open.entry(uid).or_default();
        if *count >= limit {
            drop(open);
            Metrics::inc(&self.metrics.denied_peers);
            debug!(
                peer.uid = uid,
                limit, "connection limit for this uid reached; closing a new connection"
            );
            return None;
        }
        *count += 1;
        Some(Admitted {
            inner: stream,
            uid,
            open: self.open.clone(),
        })
    }

    fn admitted(&self, uid: u32, gid: u32) -> bool {
        let policies = self.policies.load();
        if policies.is_empty() {
            uid == self.own_uid
        } else {
            policies.iter().any(|p| p.matches(uid, gid))
        }
    }
}

/// An admitted connection; its uid's count goes down when it is dropped.
#[derive(Debug)]
pub struct Admitted {
    inner: UnixStream,
    uid: u32,
    open: Arc<Mutex<HashMap<u32, usize>>>,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = open.get_mut(&self.uid) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                open.remove(&self.uid);
            }
        }
    }
}

/// What each call on an admitted connection learns about its peer: looked up once,
/// when tonic takes the connection.
#[derive(Debug, Clone)]
pub struct ConnectedPeer {
    /// The peer with a handle on its process, or `None` if its process could not be
    /// found when it connected.
    pub peer: Option<Peer>,
}

impl Connected for Admitted {
    type ConnectInfo = ConnectedPeer;

    fn connect_info(&self) -> ConnectedPeer {
        ConnectedPeer {
            peer: Peer::of_stream(&self.inner),
        }
    }
}

impl AsyncRead for Admitted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Admitted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
