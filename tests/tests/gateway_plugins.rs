//! key-auth and basic-auth with credentials kept in OpenBao (`vault: {}`), through the
//! real agent and gateway processes.

use std::time::Duration;

use anyhow::{Result, ensure};
use keygate_tests::gateway::{GatewayProcess, Upstream};
use keygate_tests::seed::{AGENT_POLICY, KV1_PREFIX};
use keygate_tests::{
    AgentConfig, AgentProcess, OpenBao, assert_no_secret_in, eventually, random_secret, seed_apisix,
};
use serde_json::json;

#[tokio::test(flavor = "multi_thread")]
async fn key_auth_and_basic_auth_with_credentials_in_vault() -> Result<()> {
    let bao = OpenBao::start().await?;
    seed_apisix(&bao).await?;
    let api_key = random_secret("alice-key");
    let password = random_secret("bob-pass");
    bao.kv1_put(
        &format!("{KV1_PREFIX}/consumer/alice/key-auth"),
        json!({ "key": api_key }),
    )
    .await?;
    bao.kv1_put(
        &format!("{KV1_PREFIX}/consumer/bob/basic-auth"),
        json!({ "password": password }),
    )
    .await?;
    let token = bao.create_token(&[AGENT_POLICY], None).await?;
    let agent = AgentProcess::start_ready(
        AgentConfig::new(&bao.addr(), KV1_PREFIX)
            .token(&token)
            .refresh_interval("1s"),
    )
    .await?;
    let upstream = Upstream::start().await?;
    let config = format!(
        r#"
agent: {{ socket: {socket:?} }}
routes:
  - uri: /secure/ping
    plugins: {{ key-auth: {{}} }}
    upstream: {{ nodes: {{ "{node}": 1 }} }}
    host: key.test
  - uri: /secure/ping
    plugins: {{ basic-auth: {{}} }}
    upstream: {{ nodes: {{ "{node}": 1 }} }}
    host: basic.test
consumers:
  - username: alice
    plugins: {{ key-auth: {{ vault: {{}} }} }}
  - username: bob
    plugins: {{ basic-auth: {{ username: bob, vault: {{}} }} }}
"#,
        socket = agent.socket_path(),
        node = upstream.node(),
    );
    let gateway = GatewayProcess::start_ready(&config).await?;

    let key_host = [("host", "key.test")];
    let (status, body) = gateway.get("/secure/ping", &key_host).await?;
    ensure!(
        (status, body.as_str()) == (401, r#"{"message":"Missing API key in request"}"#),
        "{status} {body}"
    );
    let (status, body) = gateway
        .get(
            "/secure/ping",
            &[("host", "key.test"), ("apikey", &api_key)],
        )
        .await?;
    ensure!(
        (status, body.as_str()) == (200, "secure/pong\n"),
        "{status} {body}"
    );
    let (status, _) = gateway
        .get(&format!("/secure/ping?apikey={api_key}"), &key_host)
        .await?;
    ensure!(status == 200, "query key refused: {status}");
    let (status, _) = gateway
        .get("/secure/ping", &[("host", "key.test"), ("apikey", "guess")])
        .await?;
    ensure!(status == 401, "wrong key: {status}");

    let basic = |user_pass: &str| format!("Basic {}", base64(user_pass.as_bytes()));
    let good = basic(&format!("bob:{password}"));
    let (status, body) = gateway
        .get(
            "/secure/ping",
            &[("host", "basic.test"), ("authorization", &good)],
        )
        .await?;
    ensure!(
        (status, body.as_str()) == (200, "secure/pong\n"),
        "{status} {body}"
    );
    let (status, body) = gateway
        .get(
            "/secure/ping",
            &[
                ("host", "basic.test"),
                ("authorization", &basic("bob:nope")),
            ],
        )
        .await?;
    ensure!(
        (status, body.as_str()) == (401, r#"{"message":"Invalid user authorization"}"#),
        "{status} {body}"
    );

    // Rotating the API key in OpenBao retires the old one without a restart.
    let new_key = random_secret("alice-key2");
    bao.kv1_put(
        &format!("{KV1_PREFIX}/consumer/alice/key-auth"),
        json!({ "key": new_key }),
    )
    .await?;
    eventually(Duration::from_secs(8), || async {
        let (old, _) = gateway
            .get(
                "/secure/ping",
                &[("host", "key.test"), ("apikey", &api_key)],
            )
            .await?;
        let (new, _) = gateway
            .get(
                "/secure/ping",
                &[("host", "key.test"), ("apikey", &new_key)],
            )
            .await?;
        ensure!((old, new) == (401, 200), "old key {old}, new key {new}");
        Ok(())
    })
    .await?;
    assert_no_secret_in(&gateway.log_contents(), &[&api_key, &password, &new_key]);
    Ok(())
}

/// Standard base64 with padding (the tests crate has no base64 dependency).
fn base64(input: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in input.chunks(3) {
        let b = [
            chunk.first().copied().unwrap_or(0),
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                let index = usize::try_from((n >> (18 - 6 * i)) & 63).unwrap_or(0);
                out.push(char::from(ALPHABET.get(index).copied().unwrap_or(b'=')));
            } else {
                out.push('=');
            }
        }
    }
    out
}
