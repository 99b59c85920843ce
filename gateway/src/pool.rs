//! Keep-alive connections to plain HTTP/1.1 upstream nodes, one idle list per node.
//!
//! The request path's own pool (in place of hyper-util's legacy client for `http`
//! upstreams): a checkout is a lock and a `pop` on the node's list, nothing is hashed,
//! and a connection goes back to its list when the response body has been read to the
//! end, with no task spawned per request. A pooled connection the upstream closed is
//! skipped; a request a pooled connection could not take is sent on another one, or on
//! a new connection. A response body dropped before its end closes its connection.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::uri::Authority;
use http::{Request, Response, Uri};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::body::ProxyBody;

/// Idle connections kept per node; more are closed when they come back.
const MAX_IDLE_PER_NODE: usize = 256;
/// An idle connection older than this is closed rather than reused.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Why a request got no response.
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
    /// The HTTP exchange failed.
    #[error("{0}")]
    Http(#[from] hyper::Error),
}

impl PoolError {
    /// True when no connection could be made (the request was not sent).
    pub fn is_connect(&self) -> bool {
        matches!(self, Self::Connect { .. })
    }
}

struct Idle {
    sender: SendRequest<ProxyBody>,
    since: Instant,
}

struct NodePool {
    authority: Authority,
    idle: Mutex<Vec<Idle>>,
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
                    idle: Mutex::new(Vec::new()),
                })
                .collect(),
            connect_timeout,
        }
    }

    fn idle(&self, index: usize) -> Option<std::sync::MutexGuard<'_, Vec<Idle>>> {
        let node = self.nodes.get(index)?;
        Some(node.idle.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// The most recently used idle connection that is still open.
    fn checkout(&self, index: usize) -> Option<SendRequest<ProxyBody>> {
        let mut idle = self.idle(index)?;
        while let Some(entry) = idle.pop() {
            if !entry.sender.is_closed() && entry.since.elapsed() < IDLE_TIMEOUT {
                return Some(entry.sender);
            }
        }
        None
    }

    fn checkin(&self, index: usize, sender: SendRequest<ProxyBody>) {
        if sender.is_closed() {
            return;
        }
        if let Some(mut idle) = self.idle(index)
            && idle.len() < MAX_IDLE_PER_NODE
        {
            idle.push(Idle {
                sender,
                since: Instant::now(),
            });
        }
    }

    async fn connect(&self, index: usize) -> Result<SendRequest<ProxyBody>, PoolError> {
        let Some(node) = self.nodes.get(index) else {
            return Err(PoolError::Connect {
                authority: Authority::from_static("invalid:0"),
                source: std::io::Error::other("no such node"),
            });
        };
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
        let (sender, conn) = http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "upstream connection ended with an error");
            }
        });
        Ok(sender)
    }

    /// Sends `request` to node `index` on a pooled connection, or a new one. The
    /// request's URI is sent in origin form; a missing `Host` is the node's.
    pub async fn send(
        self: &Arc<Self>,
        index: usize,
        mut request: Request<ProxyBody>,
    ) -> Result<Response<PooledBody>, PoolError> {
        if let Some(pq) = request.uri().path_and_query().cloned()
            && request.uri().authority().is_some()
        {
            *request.uri_mut() = Uri::from(pq);
        }
        if !request.headers().contains_key(header::HOST)
            && let Some(node) = self.nodes.get(index)
            && let Ok(host) = HeaderValue::from_str(node.authority.as_str())
        {
            request.headers_mut().insert(header::HOST, host);
        }
        while let Some(mut sender) = self.checkout(index) {
            if sender.ready().await.is_err() {
                continue;
            }
            match sender.try_send_request(request).await {
                Ok(response) => return Ok(self.wrap(index, sender, response)),
                Err(mut e) => match e.take_message() {
                    // Not sent: this connection went away in the meantime.
                    Some(unsent) => request = unsent,
                    None => return Err(PoolError::Http(e.into_error())),
                },
            }
        }
        let mut sender = self.connect(index).await?;
        let response = sender.send_request(request).await?;
        Ok(self.wrap(index, sender, response))
    }

    fn wrap(
        self: &Arc<Self>,
        index: usize,
        sender: SendRequest<ProxyBody>,
        response: Response<Incoming>,
    ) -> Response<PooledBody> {
        response.map(|inner| PooledBody {
            inner,
            home: Some((self.clone(), index, sender)),
        })
    }
}

/// A response body that gives its connection back to the pool once read to the end.
pub struct PooledBody {
    inner: Incoming,
    home: Option<(Arc<Pool>, usize, SendRequest<ProxyBody>)>,
}

impl std::fmt::Debug for PooledBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PooledBody").finish_non_exhaustive()
    }
}

impl PooledBody {
    fn release(&mut self) {
        if let Some((pool, index, sender)) = self.home.take() {
            pool.checkin(index, sender);
        }
    }
}

impl Body for PooledBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => self.release(),
            Poll::Ready(Some(Ok(_))) if self.inner.is_end_stream() => self.release(),
            Poll::Ready(Some(Err(_))) => self.home = None,
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for PooledBody {
    fn drop(&mut self) {
        // Read to the end (or empty from the start, or never polled past its last
        // frame): the connection can serve another request. Otherwise it closes.
        if self.inner.is_end_stream() {
            self.release();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::convert::Infallible;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use http_body_util::BodyExt as _;
    use hyper::service::service_fn;

    /// An upstream counting its connections; `close` answers `Connection: close`.
    async fn upstream(close: bool) -> (Authority, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| async move {
                        let mut response =
                            Response::new(crate::body::full(format!("{}", req.uri())));
                        if close {
                            response
                                .headers_mut()
                                .insert(header::CONNECTION, HeaderValue::from_static("close"));
                        }
                        Ok::<_, Infallible>(response)
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        (addr.to_string().parse().unwrap(), accepted)
    }

    fn get(authority: &Authority, path: &str) -> Request<ProxyBody> {
        Request::get(format!("http://{authority}{path}"))
            .body(crate::body::empty())
            .unwrap()
    }

    async fn body(response: Response<PooledBody>) -> String {
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    #[tokio::test]
    async fn connections_are_reused_and_requests_go_in_origin_form() {
        let (authority, accepted) = upstream(false).await;
        let pool = Arc::new(Pool::new([authority.clone()], Duration::from_secs(5)));
        for i in 0..5 {
            let response = pool
                .send(0, get(&authority, &format!("/a?i={i}")))
                .await
                .unwrap();
            assert_eq!(body(response).await, format!("/a?i={i}"));
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
        assert_eq!(pool.idle(0).unwrap().len(), 1);
    }

    #[tokio::test]
    async fn connections_the_upstream_closed_are_not_reused() {
        let (authority, accepted) = upstream(true).await;
        let pool = Arc::new(Pool::new([authority.clone()], Duration::from_secs(5)));
        for _ in 0..3 {
            let response = pool.send(0, get(&authority, "/c")).await.unwrap();
            assert_eq!(body(response).await, "/c");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn a_refused_connection_is_a_connect_error() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let authority: Authority = listener.local_addr().unwrap().to_string().parse().unwrap();
        drop(listener);
        let pool = Arc::new(Pool::new([authority.clone()], Duration::from_secs(5)));
        let err = pool.send(0, get(&authority, "/")).await.unwrap_err();
        assert!(err.is_connect(), "{err}");
    }
}
