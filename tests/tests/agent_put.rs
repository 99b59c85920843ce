//! `Put`: a peer with `write_paths` stores a secret in OpenBao through the agent (KV v1
//! and v2), and every watcher sees the new version; writes outside the peer's write
//! policy, by a peer without one, or refused by Vault's policy fail with
//! PERMISSION_DENIED and change nothing.

use std::collections::HashMap;
use std::time::Duration;

use keygate_proto::agent::v1::PutRequest;
use keygate_tests::client::{expect_snapshot, watch};
use keygate_tests::secrets::expect_loaded;
use keygate_tests::seed::{AGENT_POLICY, KV1_PREFIX, KV2_PREFIX};
use keygate_tests::{AgentConfig, AgentProcess, OpenBao, Peer, seed_apisix};
use tonic::Code;

const NEO: &str = "consumer/neo/jwt-auth";

const WRITER_POLICY: &str = r#"
path "kv/apisix/consumer/*" { capabilities = ["create", "update", "read"] }
path "secret/data/apisix/consumer/*" { capabilities = ["create", "update", "read"] }
"#;

fn put_request(name: &str, secret: &str) -> PutRequest {
    PutRequest {
        name: name.to_owned(),
        fields: HashMap::from([("secret".to_owned(), secret.as_bytes().to_vec())]),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn put_writes_through_to_vault_and_reaches_watchers() {
    let bao = OpenBao::start().await.unwrap();
    seed_apisix(&bao).await.unwrap();
    bao.put_policy("keygate-writer", WRITER_POLICY)
        .await
        .unwrap();
    let writer_token = bao
        .create_token(&["keygate-writer"], Some("1h"))
        .await
        .unwrap();
    let reader_token = bao.create_token(&[AGENT_POLICY], Some("1h")).await.unwrap();
    let uid = nix::unistd::getuid().as_raw();
    let writer_peer =
        || vec![Peer::uid("admin", uid, &["consumer/*"]).writing(&["consumer/neo/*"])];

    for (prefix, stored_at) in [
        (KV1_PREFIX, "kv/apisix/consumer/neo/jwt-auth"),
        (KV2_PREFIX, "secret/data/apisix/consumer/neo/jwt-auth"),
    ] {
        let agent = AgentProcess::start_ready(
            AgentConfig::new(&bao.addr(), prefix)
                .token(&writer_token)
                .refresh_interval("30s")
                .peers(writer_peer()),
        )
        .await
        .unwrap();
        let mut client = agent.client().await.unwrap();

        // A watcher of the (not yet existing) name: first NOT_FOUND, then the write.
        let mut watcher = agent.client().await.unwrap();
        let mut stream = watch(&mut watcher, &[NEO], Duration::from_secs(10))
            .await
            .unwrap()
            .unwrap();
        let first = expect_snapshot(&mut stream, Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(first.secrets[0].state, 2, "NOT_FOUND before the write");

        let value = format!("written-through-{prefix}-{}", rand_suffix());
        let version = client
            .put(put_request(NEO, &value))
            .await
            .unwrap()
            .into_inner()
            .version;
        assert!(version >= 2, "a new version after NOT_FOUND: {version}");

        // In OpenBao itself.
        let stored = bao
            .read(stored_at)
            .await
            .unwrap()
            .expect("stored in OpenBao");
        let data = if prefix == KV2_PREFIX {
            &stored["data"]["data"]
        } else {
            &stored["data"]
        };
        assert_eq!(data["secret"], value.as_str());

        // And at the watcher, without waiting for the 30 s refresh.
        let next = expect_snapshot(&mut stream, Duration::from_secs(3))
            .await
            .unwrap();
        expect_loaded(&next.secrets, NEO, &value).unwrap();

        // Outside write_paths: refused, nothing written.
        let outside = client
            .put(put_request("consumer/jack/jwt-auth", "overwrite"))
            .await
            .unwrap_err();
        assert_eq!(outside.code(), Code::PermissionDenied);
        agent.assert_no_secret_in_log(&[&value]);
    }

    // Vault's policy refuses the write (read-only token): PERMISSION_DENIED.
    let read_only = AgentProcess::start_ready(
        AgentConfig::new(&bao.addr(), KV1_PREFIX)
            .token(&reader_token)
            .peers(writer_peer()),
    )
    .await
    .unwrap();
    let mut client = read_only.client().await.unwrap();
    let refused = client
        .put(put_request(NEO, "not-stored"))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");

    // No peers section: the agent's own uid reads everything but writes nothing.
    let default_peers =
        AgentProcess::start_ready(AgentConfig::new(&bao.addr(), KV1_PREFIX).token(&writer_token))
            .await
            .unwrap();
    let mut client = default_peers.client().await.unwrap();
    let refused = client
        .put(put_request(NEO, "not-stored"))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied);
    let stored = bao
        .read("kv/apisix/consumer/neo/jwt-auth")
        .await
        .unwrap()
        .unwrap();
    assert_ne!(stored["data"]["secret"], "not-stored");

    // The CLI refuses values on the command line, where `ps` would show them.
    let socket = default_peers.socket_path().display().to_string();
    let out = default_peers
        .cli(&["put", "--socket", &socket, NEO, "secret=visible"])
        .await
        .unwrap();
    assert_eq!(out.code, Some(64), "literal values refused: {}", out.stderr);
}

fn rand_suffix() -> u32 {
    rand::random()
}
