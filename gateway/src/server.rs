//! The accept loop: HTTP/1.1 and HTTP/2 (prior knowledge, "h2c"; or over TLS, see
//! [`serve_tls`]) on one port. Plain connections start in the gateway's own HTTP/1.1
//! loop ([`http1`]) and go to hyper at the first request it does not serve. Also the
//! [`Limits`] on heads, targets, slow and idle connections and their number, and
//! graceful shutdown: stop accepting, let every connection finish its in-flight
//! requests (idle keep-alive connections close at once), abort what remains after
//! the grace period.

mod activity;
mod http1;
mod woken;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

use self::activity::{Activity, Tracked};
use self::http1::Ended;
pub use self::http1::{Decoded, decode_requests};
use crate::body::{self, ProxyBody, RequestBody};
use crate::limits::Limits;
use crate::reply::Reply;
use crate::tls::TlsCounters;

/// A request extension marking requests that came over TLS.
#[derive(Debug, Clone, Copy)]
pub struct Secure;

/// What turns a TCP connection into a TLS one.
#[derive(Debug, Clone)]
pub struct Tls {
    /// The server configuration (certificates by SNI, ALPN, versions).
    pub config: Arc<rustls::ServerConfig>,
    /// Longest handshake.
    pub timeout: Duration,
    /// Completed and failed handshakes.
    pub counters: Arc<TlsCounters>,
}

/// What a connection beyond `max_connections` is told before it is closed.
const OVERLOADED: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
content-length: 39\r\nconnection: close\r\n\r\n{\"error_msg\":\"503 Service Unavailable\"}";

/// Serves `listener` with `handler` and the default [`Limits`] until `shutdown`
/// completes, then drains.
pub async fn serve<H, F>(
    listener: TcpListener,
    handler: H,
    shutdown: impl Future<Output = ()>,
    grace: Duration,
) where
    H: Fn(Request<RequestBody>, SocketAddr) -> F + Clone + Send + Sync + 'static,
    F: Future<Output: Into<Reply> + Send> + Send + 'static,
{
    serve_with(listener, handler, shutdown, grace, Limits::default()).await;
}

/// Serves `listener` with `handler` under `limits` until `shutdown` completes, then
/// drains.
pub async fn serve_with<H, F>(
    listener: TcpListener,
    handler: H,
    shutdown: impl Future<Output = ()>,
    grace: Duration,
    limits: Limits,
) where
    H: Fn(Request<RequestBody>, SocketAddr) -> F + Clone + Send + Sync + 'static,
    F: Future<Output: Into<Reply> + Send> + Send + 'static,
{
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    serve_inner(listener, None, handler, shutdown, grace, limits, slots).await;
}

/// [`serve_with`] for one of several listeners that together hold at most
/// `limits.max_connections` connections: `slots` is shared by all of them.
pub async fn serve_shared<H, F>(
    listener: TcpListener,
    handler: H,
    shutdown: impl Future<Output = ()>,
    grace: Duration,
    limits: Limits,
    slots: Arc<Semaphore>,
) where
    H: Fn(Request<RequestBody>, SocketAddr) -> F + Clone + Send + Sync + 'static,
    F: Future<Output: Into<Reply> + Send> + Send + 'static,
{
    serve_inner(listener, None, handler, shutdown, grace, limits, slots).await;
}

/// [`serve_with`] over TLS: each connection's handshake runs in its own task (bounded
/// by `tls.timeout`), then HTTP/2 or HTTP/1.1 as ALPN chose. Requests carry the
/// [`Secure`] extension.
pub async fn serve_tls<H, F>(
    listener: TcpListener,
    tls: Tls,
    handler: H,
    shutdown: impl Future<Output = ()>,
    grace: Duration,
    limits: Limits,
) where
    H: Fn(Request<RequestBody>, SocketAddr) -> F + Clone + Send + Sync + 'static,
    F: Future<Output: Into<Reply> + Send> + Send + 'static,
{
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    serve_inner(listener, Some(tls), handler, shutdown, grace, limits, slots).await;
}

async fn serve_inner<H, F>(
    listener: TcpListener,
    tls: Option<Tls>,
    handler: H,
    shutdown: impl Future<Output = ()>,
    grace: Duration,
    limits: Limits,
    slots: Arc<Semaphore>,
) where
    H: Fn(Request<RequestBody>, SocketAddr) -> F + Clone + Send + Sync + 'static,
    F: Future<Output: Into<Reply> + Send> + Send + 'static,
{
    let builder = builder(&limits);
    let secure = tls.is_some();
    let max_uri = limits.max_uri_bytes;
    let idle = limits.idle_timeout;
    let fast = http1::Settings::new(&limits);
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, remote)) => {
                    let Ok(slot) = slots.clone().try_acquire_owned() else {
                        if secure {
                            // No HTTP answer is possible before a handshake.
                            tracing::debug!(%remote, "connection limit reached; closing a TLS connection");
                        } else {
                            refuse(&stream, remote);
                        }
                        continue;
                    };
                    let _ = stream.set_nodelay(true);
                    let builder = builder.clone();
                    let handler = handler.clone();
                    let stop = stop_rx.clone();
                    let tls = tls.clone();
                    connections.spawn(async move {
                        match tls {
                            None => {
                                let mut stream = stream;
                                let ended =
                                    http1::serve(&mut stream, &handler, remote, fast, &stop).await;
                                if let Ended::HandOver(read) = ended {
                                    let service = hyper_service(handler, false, max_uri, remote);
                                    serve_connection(&builder, stream, read, service, idle, stop, remote)
                                        .await;
                                }
                            }
                            Some(tls) => {
                                if let Some(stream) = handshake(&tls, stream, remote).await {
                                    let service = hyper_service(handler, true, max_uri, remote);
                                    serve_connection(&builder, stream, BytesMut::new(), service, idle, stop, remote)
                                        .await;
                                }
                            }
                        }
                        drop(slot);
                    });
                }
                Err(e) => {
                    // Out of file descriptors and the like: pause rather than spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    drop(listener);
    let _ = stop_tx.send(true);
    let open = connections.len();
    if open > 0 {
        tracing::info!(connections = open, grace = ?grace, "draining connections");
    }
    let drained = tokio::time::timeout(grace, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            connections = connections.len(),
            "grace period over; closing the remaining connections"
        );
        connections.shutdown().await;
    }
}

/// The handler as hyper calls it: requests marked [`Secure`] over TLS, targets longer
/// than `max_uri` answered 414.
fn hyper_service<H, F>(
    handler: H,
    secure: bool,
    max_uri: usize,
    remote: SocketAddr,
) -> impl hyper::service::Service<
    Request<Incoming>,
    Response = Response<ProxyBody>,
    Error = Infallible,
    Future: Send + 'static,
> + Send
+ 'static
where
    H: Fn(Request<RequestBody>, SocketAddr) -> F + Clone + Send + Sync + 'static,
    F: Future<Output: Into<Reply> + Send> + Send + 'static,
{
    service_fn(move |req: Request<Incoming>| {
        let mut req = req.map(RequestBody::Streamed);
        if secure {
            req.extensions_mut().insert(Secure);
        }
        let too_long = req
            .uri()
            .path_and_query()
            .is_some_and(|pq| pq.as_str().len() > max_uri);
        let fut = (!too_long).then(|| handler(req, remote));
        async move {
            Ok::<_, Infallible>(match fut {
                Some(fut) => fut.await.into().into_response(),
                None => uri_too_long(),
            })
        }
    })
}

fn builder(limits: &Limits) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // A timer enables hyper's header read timeout (slow-loris clients) on HTTP/1.
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        // The read buffer caps the head: hyper answers 431 when it fills up before the
        // head is complete (hyper-util's builder has no separate head limit).
        .max_buf_size(limits.max_header_bytes)
        .max_headers(limits.max_headers);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX));
    builder
}

/// The TLS handshake of one connection, counted; `None` if it failed or took too long.
async fn handshake(
    tls: &Tls,
    stream: TcpStream,
    remote: SocketAddr,
) -> Option<tokio_rustls::server::TlsStream<TcpStream>> {
    use std::sync::atomic::Ordering;
    match tokio::time::timeout(
        tls.timeout,
        TlsAcceptor::from(tls.config.clone()).accept(stream),
    )
    .await
    {
        Ok(Ok(stream)) => {
            tls.counters.handshakes.fetch_add(1, Ordering::Relaxed);
            Some(stream)
        }
        Ok(Err(e)) => {
            tls.counters.failures.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(%remote, error = %e, "TLS handshake failed");
            None
        }
        Err(_) => {
            tls.counters.failures.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(%remote, "TLS handshake timed out");
            None
        }
    }
}

/// One connection until it ends, the gateway stops (graceful) or it has been idle too
/// long (graceful as well: requests in flight finish). `read`: bytes already read from
/// `stream` (by the HTTP/1.1 loop), which hyper reads first.
async fn serve_connection<I, S>(
    builder: &auto::Builder<TokioExecutor>,
    stream: I,
    read: BytesMut,
    service: S,
    idle: Duration,
    mut stop: watch::Receiver<bool>,
    remote: SocketAddr,
) where
    S: hyper::service::Service<
            Request<Incoming>,
            Response = Response<ProxyBody>,
            Error = Infallible,
        > + Send
        + 'static,
    S::Future: Send + 'static,
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let activity = Activity::new();
    let io = TokioIo::new(Tracked::new(stream, activity.clone()).after(read));
    let conn = builder.serve_connection(io, service);
    tokio::pin!(conn);
    let mut check =
        tokio::time::interval((idle / 4).clamp(Duration::from_millis(100), Duration::from_secs(5)));
    loop {
        tokio::select! {
            res = conn.as_mut() => {
                if let Err(e) = res {
                    tracing::debug!(%remote, error = %e, "connection ended with an error");
                }
                return;
            }
            stopping = async { stop.wait_for(|stopping| *stopping).await.is_ok() } => {
                let _ = stopping;
                // Bounded by the caller's grace period.
                conn.as_mut().graceful_shutdown();
                let _ = conn.await;
                return;
            }
            _ = check.tick() => {
                if activity.idle_for() >= idle {
                    tracing::debug!(%remote, "closing an idle connection");
                    break;
                }
            }
        }
    }
    // An HTTP/2 graceful shutdown waits for the client to acknowledge a PING: one that
    // never does would keep the connection forever, so the wait is bounded too.
    conn.as_mut().graceful_shutdown();
    if tokio::time::timeout(idle, conn).await.is_err() {
        tracing::debug!(%remote, "idle connection did not shut down in time; dropped");
    }
}

/// Tells a connection beyond the limit so, without waiting for it, and closes it.
fn refuse(stream: &TcpStream, remote: SocketAddr) {
    tracing::debug!(%remote, "connection limit reached; refusing a connection");
    let _ = stream.try_write(OVERLOADED);
}

fn uri_too_long() -> Response<ProxyBody> {
    body::json(
        StatusCode::URI_TOO_LONG,
        r#"{"error_msg":"414 Request-URI Too Large"}"#,
    )
}
