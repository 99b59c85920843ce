//! One HTTP/2 connection to the agent's socket, for callers that make a few calls and
//! go (`keygate-agent get`, the benchmark's reader).
//!
//! tonic's `Channel` puts a buffer task between the caller and the connection (every
//! call is handed to it and its answer handed back) and re-connects on failure: right
//! for the gateway's long-lived Watch, one more task switch per call for everyone
//! else. Here a call goes straight to hyper's HTTP/2 sender, and a broken connection
//! stays broken: the caller connects again if it wants to.

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::task::{Context, Poll};

use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tonic::body::Body;
use tonic::service::interceptor::InterceptedService;

use crate::AgentHeader;
use crate::agent::v1::secret_agent_client::SecretAgentClient;

/// A client of the agent on one [`DirectConnection`], sending the required header on
/// every call.
pub type DirectClient = SecretAgentClient<InterceptedService<DirectConnection, AgentHeader>>;

/// Why [`connect_direct`] found no agent to talk to.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// Nobody accepted on the socket (absent, refused, not permitted).
    #[error("{0}")]
    Socket(#[from] std::io::Error),
    /// The peer accepted but did not speak HTTP/2.
    #[error("HTTP/2 handshake: {0}")]
    Handshake(#[from] hyper::Error),
}

/// Connects to the agent's Unix socket at `path` and opens HTTP/2 on it; the
/// connection is driven by a task of its own until the client is dropped.
pub async fn connect_direct(path: impl AsRef<Path>) -> Result<DirectClient, ConnectError> {
    let stream = tokio::net::UnixStream::connect(path.as_ref()).await?;
    let (sender, connection) = http2::handshake(TokioExecutor::new(), TokioIo::new(stream)).await?;
    // Its error is the next call's error; nobody else would read it.
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(SecretAgentClient::with_origin(
        InterceptedService::new(DirectConnection { sender }, AgentHeader),
        crate::origin(),
    ))
}

/// hyper's HTTP/2 sender as the service tonic's generated client calls.
#[derive(Debug, Clone)]
pub struct DirectConnection {
    sender: http2::SendRequest<Body>,
}

/// An answer on its way back from the agent.
pub type ResponseFuture = Pin<
    Box<dyn Future<Output = Result<http::Response<hyper::body::Incoming>, hyper::Error>> + Send>,
>;

impl tower::Service<http::Request<Body>> for DirectConnection {
    type Response = http::Response<hyper::body::Incoming>;
    type Error = hyper::Error;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), hyper::Error>> {
        self.sender.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> ResponseFuture {
        Box::pin(self.sender.send_request(request))
    }
}

#[cfg(test)]
mod tests;
