//! The seed tutorial through keygate, end to end: a real OpenBao dev server, the real
//! agent and gateway processes on a real Unix socket, and a real upstream.
//!
//! jack's HS256 secret lives in OpenBao at `kv/apisix/consumer/jack/jwt-auth`; the gateway
//! only knows `vault: {}` and gets the value through the agent's Watch stream.

use std::time::Duration;

use anyhow::{Result, ensure};
use keygate_tests::gateway::{GatewayProcess, Upstream};
use keygate_tests::seed::{AGENT_POLICY, JACK, KV1_PREFIX, put_secret};
use keygate_tests::{
    AgentConfig, AgentProcess, OpenBao, assert_no_secret_in, eventually, random_secret, seed_apisix,
};
use serde_json::json;

/// The agent's refresh interval in these tests.
const REFRESH: &str = "1s";
/// Refresh interval plus scheduling slack on a busy two-core machine.
const PICKUP: Duration = Duration::from_secs(8);

const MISSING_TOKEN: &str = r#"{"message":"Missing JWT token in request"}"#;
const FAILED: &str = r#"{"message":"failed to verify jwt"}"#;

/// The gateway config of the tutorial: consumer jack with `vault: {}`, route
/// `/secure/ping` with jwt-auth, the sign endpoint on.
fn seed_config(agent: &AgentProcess, upstream: &Upstream, extra_consumers: &str) -> String {
    format!(
        r#"
agent: {{ socket: {socket:?} }}
plugin_attr: {{ jwt-auth: {{ sign_endpoint: true }} }}
routes:
  - id: "1"
    uri: /secure/ping
    plugins: {{ jwt-auth: {{}} }}
    upstream: {{ type: roundrobin, nodes: {{ "{node}": 1 }} }}
consumers:
  - username: jack
    plugins:
      jwt-auth: {{ key: test-key, vault: {{}} }}
{extra_consumers}
"#,
        socket = agent.socket_path(),
        node = upstream.node(),
    )
}

/// OpenBao seeded as in the tutorial, and an agent with a token limited to the
/// tutorial's policy.
async fn bao_and_agent() -> Result<(OpenBao, AgentProcess, String)> {
    let bao = OpenBao::start().await?;
    let seeded = seed_apisix(&bao).await?;
    let token = bao.create_token(&[AGENT_POLICY], None).await?;
    let agent = AgentProcess::start_ready(
        AgentConfig::new(&bao.addr(), KV1_PREFIX)
            .token(&token)
            .refresh_interval(REFRESH),
    )
    .await?;
    Ok((bao, agent, seeded.jack_v1))
}

#[tokio::test(flavor = "multi_thread")]
async fn seed_flow_then_rotation_without_restart() -> Result<()> {
    let (bao, agent, jack_secret) = bao_and_agent().await?;
    let upstream = Upstream::start().await?;
    let gateway = GatewayProcess::start_ready(&seed_config(&agent, &upstream, "")).await?;

    // No token: the tutorial's 401.
    let (status, body) = gateway.get("/secure/ping", &[]).await?;
    ensure!(
        (status, body.as_str()) == (401, MISSING_TOKEN),
        "{status} {body}"
    );
    ensure!(
        upstream.hits() == 0,
        "an unauthenticated request reached the upstream"
    );

    // Sign, then call the route with the token as the tutorial does (no "Bearer ").
    let old_token = gateway.sign("test-key").await?;
    let (status, body) = gateway
        .get("/secure/ping", &[("authorization", &old_token)])
        .await?;
    ensure!(
        (status, body.as_str()) == (200, "secure/pong\n"),
        "{status} {body}"
    );
    let (status, _) = gateway
        .get(
            "/secure/ping",
            &[("authorization", &format!("Bearer {old_token}"))],
        )
        .await?;
    ensure!(status == 200, "Bearer form refused: {status}");

    // Rotate jack's secret in OpenBao: within the refresh interval (plus slack) the old
    // token stops working and freshly signed ones work, with no restart.
    let new_secret = random_secret("jack-rotated");
    put_secret(&bao, KV1_PREFIX, JACK, &new_secret).await?;
    eventually(PICKUP, || async {
        let (status, body) = gateway
            .get("/secure/ping", &[("authorization", &old_token)])
            .await?;
        ensure!(
            (status, body.as_str()) == (401, FAILED),
            "old token still gets {status} {body}"
        );
        Ok(())
    })
    .await?;
    let new_token = gateway.sign("test-key").await?;
    ensure!(
        new_token != old_token,
        "the sign endpoint still uses the old secret"
    );
    let (status, body) = gateway
        .get("/secure/ping", &[("authorization", &new_token)])
        .await?;
    ensure!(
        (status, body.as_str()) == (200, "secure/pong\n"),
        "{status} {body}"
    );

    // The gateway never logs secret values.
    assert_no_secret_in(&gateway.log_contents(), &[&jack_secret, &new_secret]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_secret_not_in_vault_fails_closed_until_written() -> Result<()> {
    let (bao, agent, _) = bao_and_agent().await?;
    let upstream = Upstream::start().await?;
    let extra =
        "  - username: nobody\n    plugins:\n      jwt-auth: { key: nobody-key, vault: {} }\n";
    let gateway = GatewayProcess::start_ready(&seed_config(&agent, &upstream, extra)).await?;

    // NOT_FOUND in Vault: no signing, and a token signed with any guess gets 503, never
    // a fallback. jack is unaffected.
    let (status, body) = gateway
        .get("/apisix/plugin/jwt/sign?key=nobody-key", &[])
        .await?;
    ensure!(
        (status, body.as_str()) == (503, "failed to sign jwt"),
        "{status} {body}"
    );
    let jack = gateway.sign("test-key").await?;
    ensure!(
        gateway
            .get("/secure/ping", &[("authorization", &jack)])
            .await?
            .0
            == 200
    );
    // A structurally valid HS256 token for nobody-key signed with "guess".
    let forged = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJrZXkiOiJub2JvZHkta2V5In0.\
                  Bj0XgpQ8l0O5hlbLNWWRJ4nZ2X5wBnK2x4GxYGPXqnc";
    let (status, body) = gateway
        .get("/secure/ping", &[("authorization", forged)])
        .await?;
    ensure!((status, body.as_str()) == (503, FAILED), "{status} {body}");

    // Write it: the agent picks it up on its next refresh and the consumer works.
    bao.kv1_put(
        &format!("{KV1_PREFIX}/consumer/nobody/jwt-auth"),
        json!({ "secret": random_secret("nobody") }),
    )
    .await?;
    let token = eventually(PICKUP, || gateway.sign("nobody-key")).await?;
    let (status, body) = gateway
        .get("/secure/ping", &[("authorization", &token)])
        .await?;
    ensure!(
        (status, body.as_str()) == (200, "secure/pong\n"),
        "{status} {body}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn agent_loss_keeps_the_last_snapshot_and_reconnects() -> Result<()> {
    let (bao, mut agent, _) = bao_and_agent().await?;
    let upstream = Upstream::start().await?;
    let gateway = GatewayProcess::start_ready(&seed_config(&agent, &upstream, "")).await?;
    let token = gateway.sign("test-key").await?;

    agent.kill9().await?;
    eventually(Duration::from_secs(5), || async {
        let connected = gateway.metrics().await?;
        ensure!(connected.get("keygate_gateway_agent_connected") == Some(&0.0));
        Ok(())
    })
    .await?;
    // Agent gone: the gateway keeps verifying with the last snapshot.
    for _ in 0..5 {
        let (status, body) = gateway
            .get("/secure/ping", &[("authorization", &token)])
            .await?;
        ensure!(
            (status, body.as_str()) == (200, "secure/pong\n"),
            "{status} {body}"
        );
    }

    // A rotation while the agent is away arrives once it is back (new boot id, full resync).
    let rotated = random_secret("jack-while-away");
    put_secret(&bao, KV1_PREFIX, JACK, &rotated).await?;
    agent.start_again()?;
    agent.wait_ready(Duration::from_secs(30)).await?;
    eventually(PICKUP, || async {
        let metrics = gateway.metrics().await?;
        ensure!(
            metrics.get("keygate_gateway_agent_connected") == Some(&1.0),
            "not reconnected"
        );
        let (status, _) = gateway
            .get("/secure/ping", &[("authorization", &token)])
            .await?;
        ensure!(
            status == 401,
            "old token still accepted after the agent came back: {status}"
        );
        Ok(())
    })
    .await?;
    let fresh = gateway.sign("test-key").await?;
    ensure!(
        gateway
            .get("/secure/ping", &[("authorization", &fresh)])
            .await?
            .0
            == 200
    );
    Ok(())
}

/// The tutorial's other two layouts: jim's RS256 key pair in Vault, and john's public
/// key inline with the private key in Vault.
#[tokio::test(flavor = "multi_thread")]
async fn rs256_key_layouts() -> Result<()> {
    let (bao, agent, _) = bao_and_agent().await?;
    let keys = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../gateway/testdata");
    let public = std::fs::read_to_string(keys.join("rsa_public.pem"))?;
    let private = std::fs::read_to_string(keys.join("rsa_private.pem"))?;
    bao.kv1_put(
        &format!("{KV1_PREFIX}/consumer/jim/jwt-auth"),
        json!({ "public_key": public, "private_key": private }),
    )
    .await?;
    bao.kv1_put(
        &format!("{KV1_PREFIX}/consumer/john/jwt-auth"),
        json!({ "private_key": private }),
    )
    .await?;
    let upstream = Upstream::start().await?;
    let extra = format!(
        "  - username: jim\n    plugins:\n      jwt-auth: {{ key: rsa-keypair, algorithm: RS256, vault: {{}} }}\n\
         \x20 - username: john\n    plugins:\n      jwt-auth: {{ key: user-key, algorithm: RS256, public_key: {public:?}, vault: {{}} }}\n"
    );
    let gateway = GatewayProcess::start_ready(&seed_config(&agent, &upstream, &extra)).await?;
    for key in ["rsa-keypair", "user-key"] {
        let token = gateway.sign(key).await?;
        ensure!(
            token.starts_with("eyJhbGciOiJSUzI1NiIs"),
            "{key}: not RS256: {token}"
        );
        let (status, body) = gateway
            .get("/secure/ping", &[("authorization", &token)])
            .await?;
        ensure!(
            (status, body.as_str()) == (200, "secure/pong\n"),
            "{key}: {status} {body}"
        );
    }
    // An HS256 token keyed with jim's public key (algorithm confusion) is refused.
    let (status, body) = gateway
        .get(
            "/secure/ping",
            &[(
                "authorization",
                "eyJhbGciOiJIUzI1NiJ9.eyJrZXkiOiJyc2Eta2V5cGFpciJ9.c2ln",
            )],
        )
        .await?;
    ensure!((status, body.as_str()) == (401, FAILED), "{status} {body}");
    assert_no_secret_in(&gateway.log_contents(), &[&private]);
    Ok(())
}
