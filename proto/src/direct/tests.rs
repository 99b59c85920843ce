//! `connect_direct` against a real tonic server on a temporary socket.

use super::*;
use crate::agent::v1::secret_agent_server::{SecretAgent, SecretAgentServer};
use crate::agent::v1::{GetRequest, GetResponse, PutRequest, PutResponse, Snapshot, WatchRequest};
use tokio_stream::StreamExt as _;
use tokio_stream::wrappers::UnixListenerStream;

/// Answers `Get` with the names it was asked for, and whether the header came.
struct Echo;

#[tonic::async_trait]
impl SecretAgent for Echo {
    type WatchStream = tokio_stream::Empty<Result<Snapshot, tonic::Status>>;

    async fn watch(
        &self,
        _: tonic::Request<WatchRequest>,
    ) -> Result<tonic::Response<Self::WatchStream>, tonic::Status> {
        Err(tonic::Status::unimplemented("watch"))
    }

    async fn get(
        &self,
        request: tonic::Request<GetRequest>,
    ) -> Result<tonic::Response<GetResponse>, tonic::Status> {
        let header = request.metadata().get(crate::REQUEST_HEADER).is_some();
        Ok(tonic::Response::new(GetResponse {
            boot_id: format!("header={header}"),
            secrets: request
                .into_inner()
                .names
                .into_iter()
                .map(|name| crate::agent::v1::Secret {
                    name,
                    ..Default::default()
                })
                .collect(),
        }))
    }

    async fn put(
        &self,
        _: tonic::Request<PutRequest>,
    ) -> Result<tonic::Response<PutResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented("put"))
    }
}

#[tokio::test]
async fn each_call_carries_the_agent_header_and_gets_its_answer() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("agent.sock");
    let listener = tokio::net::UnixListener::bind(&path).unwrap();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(SecretAgentServer::new(Echo))
            .serve_with_incoming(UnixListenerStream::new(listener)),
    );
    let mut client = connect_direct(&path).await.unwrap();
    for name in ["a/one", "b/two"] {
        let answer = client
            .get(GetRequest {
                names: vec![name.to_owned()],
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(answer.boot_id, "header=true");
        assert_eq!(answer.secrets.len(), 1);
        assert_eq!(answer.secrets[0].name, name);
    }
    server.abort();
}

#[tokio::test]
async fn an_absent_socket_is_a_socket_error() {
    let dir = tempfile::tempdir().unwrap();
    let err = connect_direct(dir.path().join("absent.sock"))
        .await
        .unwrap_err();
    assert!(matches!(err, ConnectError::Socket(_)), "{err:?}");
}

#[tokio::test]
async fn a_peer_that_does_not_speak_http2_fails_the_first_call() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mute.sock");
    let listener = tokio::net::UnixListener::bind(&path).unwrap();
    // Accepts, answers garbage, hangs up.
    tokio::spawn(async move {
        use tokio::io::AsyncWriteExt as _;
        let (mut stream, _) = listener.accept().await.unwrap();
        let _ = stream.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n").await;
    });
    let mut client = match connect_direct(&path).await {
        Err(err) => {
            assert!(matches!(err, ConnectError::Handshake(_)), "{err:?}");
            return;
        }
        // hyper's handshake only writes the preface (it fails only if the peer
        // has hung up by then); the refusal shows on the first call.
        Ok(client) => client,
    };
    let call = client.get(GetRequest {
        names: vec!["a".into()],
    });
    let status = tokio::time::timeout(std::time::Duration::from_secs(5), call)
        .await
        .expect("the call ends when the peer hangs up")
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Cancelled, "{status:?}");
}

/// A server-side connection that says when it is dropped (the server saw it close).
struct Tracked {
    inner: tokio::net::UnixStream,
    _closed: tokio::sync::oneshot::Sender<()>,
}

impl tonic::transport::server::Connected for Tracked {
    type ConnectInfo = ();

    fn connect_info(&self) {}
}

impl tokio::io::AsyncRead for Tracked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for Tracked {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[tokio::test]
async fn dropping_the_client_closes_its_connection() {
    // One connection per client matters: the admin write-through connects for each
    // batch, and the agent counts connections per uid.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("agent.sock");
    let listener = tokio::net::UnixListener::bind(&path).unwrap();
    let (closed_tx, closed) = tokio::sync::oneshot::channel();
    let accepted = {
        let mut closed_tx = Some(closed_tx);
        UnixListenerStream::new(listener).map(move |stream| {
            stream.map(|inner| Tracked {
                inner,
                _closed: closed_tx.take().expect("one connection"),
            })
        })
    };
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(SecretAgentServer::new(Echo))
            .serve_with_incoming(accepted),
    );
    let mut client = connect_direct(&path).await.unwrap();
    client
        .get(GetRequest {
            names: vec!["a/one".into()],
        })
        .await
        .unwrap();
    drop(client);
    let seen = tokio::time::timeout(std::time::Duration::from_secs(5), closed).await;
    assert!(
        matches!(seen, Ok(Err(_))),
        "the server still holds the connection 5 s after the client was dropped"
    );
    server.abort();
}
