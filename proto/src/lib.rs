//! The keygate agent's gRPC contract (`keygate.agent.v1`) and a client connector for
//! its Unix socket.
//!
//! The generated code in `generated/` is checked in; `tests/codegen.rs` regenerates it
//! with protox and fails on drift, so no `protoc` is needed anywhere.

mod direct;

use std::path::{Path, PathBuf};

use hyper_util::rt::TokioIo;
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint, Uri};

pub use direct::{ConnectError, DirectClient, DirectConnection, ResponseFuture, connect_direct};

/// Generated messages, client and server for `keygate.agent.v1`.
pub mod agent {
    pub mod v1 {
        #![expect(clippy::allow_attributes, reason = "generated code")]
        include!("generated/keygate.agent.v1.rs");
    }
}

/// The metadata header every call to the agent must carry (value `true`).
///
/// Like SPIFFE's `workload.spiffe.io`, it cannot be set by a browser or by a server
/// tricked into forwarding plain HTTP, so such requests never reach the agent.
pub const REQUEST_HEADER: &str = "keygate-agent-request";

/// Adds [`REQUEST_HEADER`] to every outgoing call.
#[derive(Debug, Clone, Copy, Default)]
pub struct AgentHeader;

impl Interceptor for AgentHeader {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        request.metadata_mut().insert(
            REQUEST_HEADER,
            tonic::metadata::MetadataValue::from_static("true"),
        );
        Ok(request)
    }
}

/// A client of the agent that sends the required header on every call.
pub type AgentClient =
    agent::v1::secret_agent_client::SecretAgentClient<InterceptedService<Channel, AgentHeader>>;

/// Connects to the agent's Unix socket at `path`.
///
/// The connection is made lazily by tonic and re-made on failure; the first call
/// fails with UNAVAILABLE while the socket is absent.
pub fn connect_lazy(path: impl AsRef<Path>) -> Result<AgentClient, tonic::transport::Error> {
    let channel = uds_endpoint().connect_with_connector_lazy(uds_connector(path.as_ref()));
    Ok(agent::v1::secret_agent_client::SecretAgentClient::with_interceptor(channel, AgentHeader))
}

/// Connects to the agent's Unix socket at `path`, failing at once if nobody listens.
pub async fn connect(path: impl AsRef<Path>) -> Result<AgentClient, tonic::transport::Error> {
    let channel = uds_endpoint()
        .connect_with_connector(uds_connector(path.as_ref()))
        .await?;
    Ok(agent::v1::secret_agent_client::SecretAgentClient::with_interceptor(channel, AgentHeader))
}

/// A raw channel to the socket, for other services on it (such as `grpc.health.v1`).
pub async fn channel(path: impl AsRef<Path>) -> Result<Channel, tonic::transport::Error> {
    uds_endpoint()
        .connect_with_connector(uds_connector(path.as_ref()))
        .await
}

fn uds_endpoint() -> Endpoint {
    Endpoint::from(origin())
}

/// The authority is unused on a Unix socket, but HTTP/2 requests need one.
fn origin() -> Uri {
    Uri::from_static("http://keygate-agent.invalid")
}

fn uds_connector(
    path: &Path,
) -> impl tower::Service<
    Uri,
    Response = TokioIo<tokio::net::UnixStream>,
    Error = std::io::Error,
    Future = impl Send + 'static,
> + Clone
+ Send
+ 'static {
    let path: PathBuf = path.to_path_buf();
    tower::service_fn(move |_: Uri| {
        let path = path.clone();
        async move {
            Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(path).await?))
        }
    })
}
