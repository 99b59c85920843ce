//! Calls to the agent's gRPC service with bounded waits.

use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use keygate_proto::AgentClient;
use keygate_proto::agent::v1::{GetRequest, GetResponse, Snapshot, WatchRequest};
use tonic::Streaming;

/// How long a single `Get` may take before the harness gives up on it.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(15);

fn names_of(names: &[&str]) -> Vec<String> {
    names.iter().map(|n| (*n).to_owned()).collect()
}

/// `Get(names)`, with a client-side deadline of `timeout`. The outer error is a harness
/// failure (deadline); the inner result is the agent's answer.
pub async fn get_within(
    client: &mut AgentClient,
    names: &[&str],
    timeout: Duration,
) -> Result<Result<GetResponse, tonic::Status>> {
    let mut request = tonic::Request::new(GetRequest {
        names: names_of(names),
    });
    request.set_timeout(timeout);
    let call = client.get(request);
    match tokio::time::timeout(timeout + Duration::from_secs(1), call).await {
        Ok(result) => Ok(result.map(tonic::Response::into_inner)),
        Err(_) => Err(anyhow!("Get {names:?} did not answer within {timeout:?}")),
    }
}

/// `Get(names)` that must succeed within [`CALL_TIMEOUT`].
pub async fn get(client: &mut AgentClient, names: &[&str]) -> Result<GetResponse> {
    get_within(client, names, CALL_TIMEOUT)
        .await?
        .map_err(|status| anyhow!("Get {names:?} failed: {status}"))
}

/// `Get(names)` that must fail; returns the status code.
pub async fn get_error(client: &mut AgentClient, names: &[&str]) -> Result<tonic::Code> {
    match get_within(client, names, CALL_TIMEOUT).await? {
        Ok(resp) => Err(anyhow!(
            "Get {names:?} succeeded ({}) but should have failed",
            crate::secrets::describe(&resp.secrets)
        )),
        Err(status) => Ok(status.code()),
    }
}

/// Opens `Watch(names)`. The call returns when the agent sends the response headers,
/// which it may do only with the first snapshot, so this is bounded by `timeout`.
pub async fn watch(
    client: &mut AgentClient,
    names: &[&str],
    timeout: Duration,
) -> Result<Result<Streaming<Snapshot>, tonic::Status>> {
    let call = client.watch(WatchRequest {
        names: names_of(names),
    });
    match tokio::time::timeout(timeout, call).await {
        Ok(result) => Ok(result.map(tonic::Response::into_inner)),
        Err(_) => Err(anyhow!("Watch {names:?} did not answer within {timeout:?}")),
    }
}

/// The next snapshot of a Watch stream within `timeout`: `Ok(None)` if none arrived in
/// time, an error if the stream failed or ended.
pub async fn next_snapshot(
    stream: &mut Streaming<Snapshot>,
    timeout: Duration,
) -> Result<Option<Snapshot>> {
    match tokio::time::timeout(timeout, stream.message()).await {
        Err(_) => Ok(None),
        Ok(Ok(Some(snapshot))) => Ok(Some(snapshot)),
        Ok(Ok(None)) => Err(anyhow!("the Watch stream ended")),
        Ok(Err(status)) => Err(anyhow!("the Watch stream failed: {status}")),
    }
}

/// Like [`next_snapshot`] but a snapshot must arrive.
pub async fn expect_snapshot(
    stream: &mut Streaming<Snapshot>,
    timeout: Duration,
) -> Result<Snapshot> {
    next_snapshot(stream, timeout)
        .await?
        .with_context(|| format!("no Watch snapshot within {timeout:?}"))
}
