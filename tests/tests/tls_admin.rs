//! `/apisix/admin/ssls` (APISIX's SSL objects) on the real gateway, with certificates
//! and keys in OpenBao's KV through the real agent: an ssl written through the Admin
//! API is served at the next handshake, patched to another certificate, kept across a
//! kill -9, deleted; a private key given inline is refused (the Admin API writes to
//! disk), and no line of a key reaches the state directory or the logs.

mod tls_support;

use std::time::Duration;

use anyhow::{Result, ensure};
use keygate_tests::gateway::{GatewayProcess, Upstream};
use keygate_tests::seed::KV1_PREFIX;
use keygate_tests::{AgentConfig, AgentProcess, OpenBao, eventually, free_port};
use serde_json::json;
use tls_support::{
    TestCa, client_config, expect_refused, https_get, key_lines, prepare_bao, put_pair,
};

const ADMIN_KEY: &str = "admin-key-for-the-tls-admin-test";

/// Every file under `dir`, concatenated.
fn read_tree(dir: &std::path::Path) -> String {
    let mut out = String::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                out.push_str(&read_tree(&path));
            } else if let Ok(text) = std::fs::read_to_string(&path) {
                out.push_str(&text);
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn ssls_through_the_admin_api() -> Result<()> {
    let bao = OpenBao::start().await?;
    let token = prepare_bao(&bao).await?;
    let ca = TestCa::new("keygate tls admin CA")?;
    let first = ca.leaf(&["api.example.test"])?;
    let second = ca.leaf(&["api.example.test"])?;
    put_pair(&bao, "tls/api", &first).await?;
    put_pair(&bao, "tls/api2", &second).await?;
    let agent = AgentProcess::start_ready(
        AgentConfig::new(&bao.addr(), KV1_PREFIX)
            .token(&token)
            .refresh_interval("1s"),
    )
    .await?;
    let upstream = Upstream::start().await?;
    let tls_port = free_port()?;
    let config = format!(
        r#"
agent: {{ socket: {socket:?} }}
tls: {{ listen: "127.0.0.1:{tls_port}" }}
routes:
  - uri: /secure/ping
    upstream: {{ nodes: {{ "{node}": 1 }} }}
"#,
        socket = agent.socket_path(),
        node = upstream.node(),
    );
    let mut gateway = GatewayProcess::start_ready_with_admin(&config, ADMIN_KEY).await?;
    let key = Some(ADMIN_KEY);
    let tls = client_config(&ca.pem, &[b"http/1.1"])?;

    // No ssl yet: every handshake refused.
    expect_refused(tls_port, "api.example.test", &tls).await?;

    // A private key inline would be written to the state directory: refused.
    let inline = json!({ "snis": ["api.example.test"], "cert": first.cert, "key": first.key });
    let (status, body) = gateway
        .admin(
            "PUT",
            "/apisix/admin/ssls/api",
            key,
            Some(&inline.to_string()),
        )
        .await?;
    ensure!(
        status == 400 && body.contains("$secret://"),
        "{status} {body}"
    );
    let inline_upstream = json!({ "nodes": { "127.0.0.1:1": 1 }, "scheme": "https",
        "tls": { "client_cert": "$secret://vault/tls/api/cert", "client_key": first.key } });
    let (status, body) = gateway
        .admin(
            "PUT",
            "/apisix/admin/upstreams/u1",
            key,
            Some(&inline_upstream.to_string()),
        )
        .await?;
    ensure!(
        status == 400 && body.contains("tls.client_key"),
        "{status} {body}"
    );

    // References: stored, served at the next handshakes.
    let ssl = json!({ "snis": ["api.example.test"],
        "cert": "$secret://vault/tls/api/cert", "key": "$secret://vault/tls/api/key" });
    let (status, body) = gateway
        .admin("PUT", "/apisix/admin/ssls/api", key, Some(&ssl.to_string()))
        .await?;
    ensure!(status == 201, "{status} {body}");
    eventually(Duration::from_secs(10), || async {
        let (status, _, serial) =
            https_get(tls_port, "api.example.test", "/secure/ping", &tls).await?;
        ensure!(status == 200 && serial == first.serial, "{status} {serial}");
        Ok(())
    })
    .await?;
    let (status, body) = gateway
        .admin("GET", "/apisix/admin/ssls/api", key, None)
        .await?;
    ensure!(status == 200, "{status} {body}");
    let item: serde_json::Value = serde_json::from_str(&body)?;
    ensure!(
        item["value"]["key"] == "$secret://vault/tls/api/key",
        "{item}"
    );
    ensure!(item["key"] == "/apisix/ssls/api", "{item}");

    // PATCH to another certificate in KV.
    let patch =
        json!({ "cert": "$secret://vault/tls/api2/cert", "key": "$secret://vault/tls/api2/key" });
    let (status, body) = gateway
        .admin(
            "PATCH",
            "/apisix/admin/ssls/api",
            key,
            Some(&patch.to_string()),
        )
        .await?;
    ensure!(status == 200, "{status} {body}");
    eventually(Duration::from_secs(10), || async {
        let (_, _, serial) = https_get(tls_port, "api.example.test", "/secure/ping", &tls).await?;
        ensure!(serial == second.serial, "still {serial}");
        Ok(())
    })
    .await?;

    // A bad server name is a 400 naming the field.
    let (status, body) = gateway
        .admin(
            "PUT",
            "/apisix/admin/ssls/bad",
            key,
            Some(&json!({ "snis": ["a.*.test"], "pki": "gw" }).to_string()),
        )
        .await?;
    ensure!(status == 400 && body.contains("snis"), "{status} {body}");

    // kill -9 and back: the ssl is still there.
    gateway.kill9().await?;
    gateway.start_again()?;
    gateway.wait_ready(Duration::from_secs(15)).await?;
    let (status, _, serial) = https_get(tls_port, "api.example.test", "/secure/ping", &tls).await?;
    ensure!(
        status == 200 && serial == second.serial,
        "{status} {serial}"
    );

    // What the Admin API wrote to disk: the references, no key.
    let mut keys = key_lines(&first.key);
    keys.extend(key_lines(&second.key));
    let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
    let state = read_tree(&gateway.state_dir());
    ensure!(
        state.contains("$secret://vault/tls/api2/key"),
        "the state directory holds the ssl"
    );
    keygate_tests::assert_no_secret_in(&state, &keys);

    // DELETE: refused from the next handshake on.
    let (status, body) = gateway
        .admin("DELETE", "/apisix/admin/ssls/api", key, None)
        .await?;
    ensure!(status == 200, "{status} {body}");
    eventually(Duration::from_secs(5), || async {
        expect_refused(tls_port, "api.example.test", &tls).await
    })
    .await?;

    keygate_tests::assert_no_secret_in(&gateway.log_contents(), &keys);
    agent.assert_no_secret_in_log(&keys);
    Ok(())
}
