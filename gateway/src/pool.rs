//! Keep-alive connections to plain HTTP/1.1 upstream nodes, one idle list per node.
//!
//! The request path's own HTTP/1.1 client for `http` upstreams (TLS upstreams use
//! hyper-util's): a checkout is a lock and a `pop` on the node's list, nothing is
//! hashed, the exchange runs in the request's own task (see [`exchange`]), and a
//! connection goes back to its list when the response body has been read to the end.
//! A pooled connection the upstream closed is skipped; a request a reused connection
//! could not take (closed before a byte of response) goes out on a new one when that
//! is safe. A response body dropped before its end closes its connection.

mod body;
mod exchange;

use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::uri::{Authority, PathAndQuery};
use http::{HeaderMap, HeaderValue, Method};
use tokio::net::TcpStream;

pub use self::body::PooledBody;
use self::body::{Chunk, Decoder, Step};
pub use self::exchange::Framing;
use self::exchange::{Conn, Outgoing, Replay, ResponseHead};
use crate::body::{BoxError, ProxyBody};
use crate::proxy::Forwarding;
use crate::reply::Reply;

/// Idle connections kept per node; more are closed when they come back.
const MAX_IDLE_PER_NODE: usize = 256;
/// An idle connection older than this is closed rather than reused.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Why a request got no response, or its body ended early.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PoolError {
    /// The TCP connection could not be made.
    #[error("connect to {authority}: {source}")]
    Connect {
        /// The node.
        authority: Authority,
        /// Why.
        source: std::io::Error,
    },
    /// Reading from or writing to the connection failed.
    #[error("upstream connection: {0}")]
    Io(std::io::Error),
    /// The upstream closed the connection without a byte of response.
    #[error("the upstream closed the connection before responding")]
    Closed,
    /// No response head by the deadline (the connection is closed).
    #[error("no response head by the deadline")]
    Timeout,
    /// The upstream's response is not valid HTTP/1.1 (or asks for an upgrade).
    #[error("invalid upstream response: {0}")]
    Malformed(String),
    /// The client's request body failed or did not match its length.
    #[error("request body: {0}")]
    RequestBody(BoxError),
}

impl PoolError {
    /// True when no connection could be made (the request was not sent).
    pub fn is_connect(&self) -> bool {
        matches!(self, Self::Connect { .. })
    }

    /// True when the deadline passed before a response head came.
    pub fn is_timeout(&self) -> bool {
        matches!(self, Self::Timeout)
    }
}

/// Worker threads that serve requests, each on its own runtime (see
/// [`set_workers`]).
static WORKERS: AtomicUsize = AtomicUsize::new(1);

thread_local! {
    /// This thread's worker index; 0 outside worker threads.
    static WORKER: Cell<usize> = const { Cell::new(0) };
}

/// Declares how many worker threads serve requests, before any pool is built. Each
/// worker runs its own runtime, and a connection belongs to the reactor of the runtime
/// that opened it: every worker keeps its own idle lists, so a connection is only ever
/// used by the thread that opened it (and the lock on a list is never contended).
pub fn set_workers(workers: usize) {
    WORKERS.store(workers.max(1), Ordering::Relaxed);
}

/// Marks the current thread as worker `index` (0 is the main thread).
pub fn enter_worker(index: usize) {
    WORKER.with(|w| w.set(index));
}

/// How many workers serve requests (what [`set_workers`] was told).
pub fn workers() -> usize {
    WORKERS.load(Ordering::Relaxed).max(1)
}

/// The current thread's worker index (0 outside worker threads): the index into
/// per-worker state such as idle lists and caches.
pub fn worker() -> usize {
    WORKER.with(Cell::get)
}

/// A request as it goes to an upstream, borrowed from the client's request: its
/// head is written from these straight into the connection's buffer (no `Request`
/// or `Uri` is built for the hop, and nothing is moved or cloned before). `Debug`
/// shows the method and counts only: the fields and the target can carry a token.
#[derive(Clone, Copy)]
pub struct Outbound<'a> {
    /// The method.
    pub method: &'a Method,
    /// The target in origin form (`/path?query`).
    pub target: &'a PathAndQuery,
    /// The fields to send (hop-by-hop ones already removed).
    pub headers: &'a HeaderMap,
    /// A `Host` that replaces the request's own (`pass_host: node` or `rewrite`).
    pub host: Option<&'a HeaderValue>,
    /// The fields the gateway sets, replacing the request's own of those names.
    pub forwarding: Option<&'a Forwarding>,
}

impl std::fmt::Debug for Outbound<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbound")
            .field("method", self.method)
            .field("target_bytes", &self.target.as_str().len())
            .field("fields", &self.headers.len())
            .field("host", &self.host.is_some())
            .field("forwarding", &self.forwarding.is_some())
            .finish()
    }
}

struct Idle {
    conn: Conn,
    /// When it came back ([`crate::clock::monotonic`]: a minute's timeout needs no
    /// better, and the coarse clock costs a request less).
    since: Duration,
}

struct NodePool {
    authority: Authority,
    /// One idle list per worker thread.
    idle: Box<[Mutex<Vec<Idle>>]>,
}

/// The pool of one upstream: one idle list per node, by node index.
pub struct Pool {
    nodes: Vec<NodePool>,
    connect_timeout: Duration,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("nodes", &self.nodes.len())
            .field("connect_timeout", &self.connect_timeout)
            .finish_non_exhaustive()
    }
}

impl Pool {
    /// A pool for these nodes (in the upstream's node order).
    pub fn new(
        authorities: impl IntoIterator<Item = Authority>,
        connect_timeout: Duration,
    ) -> Self {
        Self {
            nodes: authorities
                .into_iter()
                .map(|authority| NodePool {
                    authority,
                    idle: (0..workers()).map(|_| Mutex::new(Vec::new())).collect(),
                })
                .collect(),
            connect_timeout,
        }
    }

    /// This thread's idle list for node `index`.
    fn idle(&self, index: usize) -> Option<std::sync::MutexGuard<'_, Vec<Idle>>> {
        let node = self.nodes.get(index)?;
        let lists = node.idle.len().max(1);
        let list = node.idle.get(worker() % lists)?;
        Some(list.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// The most recently used idle connection that is still open.
    fn checkout(&self, index: usize) -> Option<Conn> {
        let mut idle = self.idle(index)?;
        while let Some(mut entry) = idle.pop() {
            let idle_for = crate::clock::monotonic().saturating_sub(entry.since);
            if idle_for < IDLE_TIMEOUT && entry.conn.is_reusable() {
                return Some(entry.conn);
            }
        }
        None
    }

    fn checkin(&self, index: usize, conn: Conn) {
        if let Some(mut idle) = self.idle(index)
            && idle.len() < MAX_IDLE_PER_NODE
        {
            idle.push(Idle {
                conn,
                since: crate::clock::monotonic(),
            });
        }
    }

    async fn connect(&self, node: &NodePool) -> Result<Conn, PoolError> {
        let failed = |source| PoolError::Connect {
            authority: node.authority.clone(),
            source,
        };
        let host = node.authority.host();
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        let port = node.authority.port_u16().unwrap_or(80);
        let stream = tokio::time::timeout(self.connect_timeout, TcpStream::connect((host, port)))
            .await
            .map_err(|_| failed(std::io::ErrorKind::TimedOut.into()))?
            .map_err(failed)?;
        let _ = stream.set_nodelay(true);
        Ok(Conn::new(stream))
    }

    /// Sends `outbound` with `body` to node `index` on a pooled connection, or a new
    /// one, and waits for the response head until `deadline` ([`PoolError::Timeout`]).
    /// The request goes in origin form; a missing `Host` is the node's.
    pub async fn send(
        self: &Arc<Self>,
        index: usize,
        outbound: Outbound<'_>,
        body: ProxyBody,
        deadline: tokio::time::Instant,
    ) -> Result<Reply<PooledBody>, PoolError> {
        let Some(node) = self.nodes.get(index) else {
            return Err(PoolError::Connect {
                authority: Authority::from_static("invalid:0"),
                source: std::io::Error::other("no such node"),
            });
        };
        let outgoing = Outgoing::of(&body);
        let head_request = *outbound.method == Method::HEAD;
        let idempotent = matches!(
            *outbound.method,
            Method::GET
                | Method::HEAD
                | Method::OPTIONS
                | Method::PUT
                | Method::DELETE
                | Method::TRACE
        );
        let mut body = (outgoing != Outgoing::Empty).then_some(body);
        loop {
            let (mut conn, reused) = match self.checkout(index) {
                Some(conn) => (conn, true),
                // Boxed: a new connection is rare on a kept-alive path, and its
                // future would make every request's larger.
                None => {
                    let connect = tokio::time::timeout_at(deadline, self.connect(node));
                    let conn = Box::pin(connect).await.map_err(|_| PoolError::Timeout)??;
                    (conn, false)
                }
            };
            match conn
                .exchange(
                    &outbound,
                    &node.authority,
                    &mut body,
                    outgoing,
                    head_request,
                    deadline,
                )
                .await
            {
                Ok(head) => return Ok(self.respond(index, conn, head)),
                Err(failure) => {
                    let replay = match failure.replay {
                        Replay::Unsent => true,
                        Replay::NoResponse => idempotent && outgoing == Outgoing::Empty,
                        Replay::Never => false,
                    };
                    if !(reused && replay) {
                        return Err(failure.error);
                    }
                    tracing::debug!(node = %node.authority, error = %failure.error, "a reused upstream connection was closed; sending again");
                }
            }
        }
    }

    /// The response with its body; a body that came whole with the head leaves the
    /// connection in the pool at once.
    fn respond(
        self: &Arc<Self>,
        index: usize,
        mut conn: Conn,
        head: ResponseHead,
    ) -> Reply<PooledBody> {
        let ResponseHead {
            response,
            lines,
            framing,
            keep_alive,
        } = head;
        let home = keep_alive.then(|| (self.clone(), index));
        let body = match framing {
            Framing::Empty => {
                if keep_alive && conn.buf.is_empty() {
                    self.checkin(index, conn);
                }
                PooledBody::whole(None)
            }
            Framing::Length(n) if conn.buf.len() as u64 >= n => {
                let data = exchange::take(&mut conn.buf, n);
                if keep_alive && conn.buf.is_empty() {
                    self.checkin(index, conn);
                }
                PooledBody::whole(Some(data))
            }
            Framing::Length(n) => PooledBody::streaming(conn, Decoder::Length(n), home),
            Framing::Chunked => PooledBody::streaming(conn, Decoder::Chunk(Chunk::Size), home),
            Framing::UntilClose => PooledBody::streaming(conn, Decoder::UntilClose, None),
        };
        Reply::with_lines(response.map(|()| body), lines)
    }
}

/// What the client makes of `bytes`, all an upstream sent before closing the
/// connection: the response (1xx skipped) with its header fields as the lines the
/// client would get, its body decoded by its framing, and whether the connection could
/// have carried another request. The same parsing and decoding as on a live
/// connection; for tests and the fuzz target.
pub fn decode_response(
    bytes: &[u8],
    head_request: bool,
) -> Result<(Reply<Bytes>, Framing, bool), PoolError> {
    let mut buf = BytesMut::from(bytes);
    let head = loop {
        match exchange::parse_head(&mut buf, head_request)? {
            exchange::Parsed::Final(head) => break head,
            exchange::Parsed::Informational => {}
            exchange::Parsed::Partial => return Err(PoolError::Closed),
        }
    };
    let mut decoder = match head.framing {
        Framing::Empty => Decoder::Done,
        Framing::Length(n) => Decoder::Length(n),
        Framing::Chunked => Decoder::Chunk(Chunk::Size),
        Framing::UntilClose => Decoder::UntilClose,
    };
    let mut body = BytesMut::new();
    loop {
        match decoder.step(&mut buf)? {
            Step::Data(data) => body.extend_from_slice(&data),
            Step::End => break,
            // The connection is closed: only a body that runs until then is complete.
            Step::NeedMore if matches!(decoder, Decoder::UntilClose) => break,
            Step::NeedMore => {
                return Err(PoolError::Malformed(
                    "the upstream closed the connection before the body ended".into(),
                ));
            }
        }
        if matches!(decoder, Decoder::Done) {
            break;
        }
    }
    let reusable = head.keep_alive && buf.is_empty();
    let reply = Reply::with_lines(head.response.map(|()| body.freeze()), head.lines);
    Ok((reply, head.framing, reusable))
}

#[cfg(test)]
mod tests;
