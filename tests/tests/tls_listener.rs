//! The HTTPS listener with certificates and keys kept in OpenBao's KV, served through
//! the real agent to the real gateway: SNI picks the certificate (exact and wildcard
//! names), unknown names are refused or get the fallback, h2 and HTTP/1.1 by ALPN,
//! TLS 1.2 and 1.3; a certificate not yet in Vault keeps the listener not ready (fail
//! closed); a key that does not match, or an expired certificate, is refused by id; a
//! rotated certificate is served to new connections while open keep-alive connections
//! keep working.

mod tls_support;

use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, ensure};
use keygate_tests::gateway::{GatewayProcess, Upstream};
use keygate_tests::seed::KV1_PREFIX;
use keygate_tests::{AgentConfig, AgentProcess, OpenBao, eventually, free_port};
use serde_json::Value;
use tls_support::{
    HttpsConn, TestCa, client_config, client_config_versions, expect_refused, https_get, key_lines,
    prepare_bao, put_pair,
};

fn config(socket: &std::path::Path, tls_port: u16, node: &str, extra_tls: &str) -> String {
    format!(
        r#"
agent: {{ socket: {socket:?} }}
tls: {{ listen: "127.0.0.1:{tls_port}"{extra_tls} }}
ssls:
  - id: api
    snis: [api.example.test]
    cert: $secret://vault/tls/api/cert
    key: $secret://vault/tls/api/key
  - id: wild
    snis: ["*.other.test"]
    cert: $secret://vault/tls/wild/cert
    key: $secret://vault/tls/wild/key
routes:
  - uri: /secure/ping
    upstream: {{ nodes: {{ "{node}": 1 }} }}
"#
    )
}

async fn readyz(gateway: &GatewayProcess) -> Result<(u16, Value)> {
    let (status, body) = gateway.status_get("/readyz").await?;
    Ok((status, serde_json::from_str(&body).context("readyz JSON")?))
}

#[tokio::test(flavor = "multi_thread")]
async fn sni_picks_kv_certificates_and_unknown_names_are_refused() -> Result<()> {
    let bao = OpenBao::start().await?;
    let token = prepare_bao(&bao).await?;
    let ca = TestCa::new("keygate tls test CA")?;
    let api = ca.leaf(&["api.example.test"])?;
    let wild = ca.leaf(&["*.other.test"])?;
    put_pair(&bao, "tls/api", &api).await?;
    put_pair(&bao, "tls/wild", &wild).await?;
    let agent =
        AgentProcess::start_ready(AgentConfig::new(&bao.addr(), KV1_PREFIX).token(&token)).await?;
    let upstream = Upstream::start().await?;
    let tls_port = free_port()?;
    let gateway =
        GatewayProcess::start_ready(&config(agent.socket_path(), tls_port, &upstream.node(), ""))
            .await?;

    let both = client_config(&ca.pem, &[b"h2", b"http/1.1"])?;
    let h1 = client_config(&ca.pem, &[b"http/1.1"])?;

    // Exact name, over h2 (ALPN) and HTTP/1.1.
    let mut conn = HttpsConn::open(tls_port, "api.example.test", &both).await?;
    ensure!(
        conn.alpn.as_deref() == Some(&b"h2"[..]),
        "ALPN {:?}",
        conn.alpn
    );
    ensure!(
        conn.version == Some(rustls::ProtocolVersion::TLSv1_3),
        "{:?}",
        conn.version
    );
    ensure!(
        conn.serial == api.serial,
        "served {} not {}",
        conn.serial,
        api.serial
    );
    let (status, body) = conn.get("/secure/ping").await?;
    ensure!(
        (status, body.as_str()) == (200, "secure/pong\n"),
        "{status} {body}"
    );
    let (status, body, serial) =
        https_get(tls_port, "api.example.test", "/secure/ping", &h1).await?;
    ensure!(
        (status, body.as_str()) == (200, "secure/pong\n"),
        "{status} {body}"
    );
    ensure!(serial == api.serial);

    // Wildcard: one label under other.test.
    let (status, _, serial) = https_get(tls_port, "www.other.test", "/secure/ping", &h1).await?;
    ensure!(status == 200 && serial == wild.serial, "{status} {serial}");

    // TLS 1.2 only: still served.
    let tls12 = client_config_versions(&ca.pem, &[b"http/1.1"], &[&rustls::version::TLS12])?;
    let conn = HttpsConn::open(tls_port, "api.example.test", &tls12).await?;
    ensure!(conn.version == Some(rustls::ProtocolVersion::TLSv1_2));

    // Unknown names, a name two labels under the wildcard, no SNI: refused.
    for sni in [
        "nope.example.test",
        "a.b.other.test",
        "other.test",
        "127.0.0.1",
    ] {
        expect_refused(tls_port, sni, &h1).await?;
    }
    let metrics = gateway.metrics().await?;
    let refused = metrics
        .get("keygate_gateway_tls_unknown_sni_total")
        .copied()
        .unwrap_or_default();
    ensure!(refused >= 4.0, "unknown SNI refusals counted: {refused}");
    let handshakes = metrics
        .get("keygate_gateway_tls_handshakes_total")
        .copied()
        .unwrap_or_default();
    ensure!(handshakes >= 4.0, "handshakes counted: {handshakes}");

    let (status, ready) = readyz(&gateway).await?;
    ensure!(status == 200 && ready["tls"]["ready"] == true, "{ready}");
    ensure!(
        upstream.hits() >= 3,
        "the upstream saw {} requests",
        upstream.hits()
    );

    let mut keys = key_lines(&api.key);
    keys.extend(key_lines(&wild.key));
    let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
    agent.assert_no_secret_in_log(&keys);
    keygate_tests::assert_no_secret_in(&gateway.log_contents(), &keys);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn fallback_sni_serves_clients_without_a_known_name() -> Result<()> {
    let bao = OpenBao::start().await?;
    let token = prepare_bao(&bao).await?;
    let ca = TestCa::new("keygate tls test CA")?;
    let api = ca.leaf(&["api.example.test", "127.0.0.1"])?;
    let wild = ca.leaf(&["*.other.test"])?;
    put_pair(&bao, "tls/api", &api).await?;
    put_pair(&bao, "tls/wild", &wild).await?;
    let agent =
        AgentProcess::start_ready(AgentConfig::new(&bao.addr(), KV1_PREFIX).token(&token)).await?;
    let upstream = Upstream::start().await?;
    let tls_port = free_port()?;
    let gateway = GatewayProcess::start_ready(&config(
        agent.socket_path(),
        tls_port,
        &upstream.node(),
        ", fallback_sni: api.example.test",
    ))
    .await?;
    let h1 = client_config(&ca.pem, &[b"http/1.1"])?;
    // No SNI (an IP address): the fallback certificate, which names the IP.
    let (status, _, serial) = https_get(tls_port, "127.0.0.1", "/secure/ping", &h1).await?;
    ensure!(status == 200 && serial == api.serial, "{status} {serial}");
    // A name nobody serves: the fallback too (the client then rejects the name).
    let conn = tls_support::connect(tls_port, "nope.example.test", &h1).await;
    ensure!(
        conn.is_err(),
        "the fallback does not name nope.example.test"
    );
    let metrics = gateway.metrics().await?;
    ensure!(
        metrics.get("keygate_gateway_tls_unknown_sni_total") == Some(&0.0),
        "nothing refused for want of a certificate"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn listener_fails_closed_until_the_certificate_is_in_vault() -> Result<()> {
    let bao = OpenBao::start().await?;
    let token = prepare_bao(&bao).await?;
    let ca = TestCa::new("keygate tls test CA")?;
    let api = ca.leaf(&["api.example.test"])?;
    let wild = ca.leaf(&["*.other.test"])?;
    let stranger = ca.leaf(&["api.example.test"])?;
    let expired = ca.leaf_until(&["api.example.test"], Some(2021))?;
    // Only the wildcard pair is there at first; api's key belongs to another cert.
    put_pair(&bao, "tls/wild", &wild).await?;
    let agent = AgentProcess::start_ready(
        AgentConfig::new(&bao.addr(), KV1_PREFIX)
            .token(&token)
            .refresh_interval("1s"),
    )
    .await?;
    let upstream = Upstream::start().await?;
    let tls_port = free_port()?;
    let mut gateway =
        GatewayProcess::start(&config(agent.socket_path(), tls_port, &upstream.node(), "")).await?;
    let h1 = client_config(&ca.pem, &[b"http/1.1"])?;

    // The agent answers NOT_FOUND for tls/api: not ready, and api's handshakes refused
    // while the wildcard is served.
    eventually(Duration::from_secs(15), || async {
        let (status, ready) = readyz(&gateway).await?;
        ensure!(status == 503, "{status} {ready}");
        let why = ready["tls"]["unavailable"]["api"]
            .as_str()
            .unwrap_or_default();
        ensure!(why.contains("not_found"), "{ready}");
        Ok(())
    })
    .await?;
    expect_refused(tls_port, "api.example.test", &h1).await?;
    let (status, _, _) = https_get(tls_port, "x.other.test", "/secure/ping", &h1).await?;
    ensure!(status == 200);

    // A key that is not the certificate's: refused by id, still not ready.
    bao.kv1_put(
        &format!("{KV1_PREFIX}/tls/api"),
        serde_json::json!({ "cert": api.cert, "key": stranger.key }),
    )
    .await?;
    eventually(Duration::from_secs(15), || async {
        let (_, ready) = readyz(&gateway).await?;
        let why = ready["tls"]["unavailable"]["api"]
            .as_str()
            .unwrap_or_default();
        ensure!(why.contains("does not match"), "{ready}");
        Ok(())
    })
    .await?;
    expect_refused(tls_port, "api.example.test", &h1).await?;
    ensure!(
        gateway
            .log_contents()
            .contains("the private key does not match the certificate"),
        "the mismatch is logged"
    );

    // An expired certificate: refused, by id, still not ready.
    put_pair(&bao, "tls/api", &expired).await?;
    eventually(Duration::from_secs(15), || async {
        let (_, ready) = readyz(&gateway).await?;
        let why = ready["tls"]["unavailable"]["api"]
            .as_str()
            .unwrap_or_default();
        ensure!(why.contains("expired"), "{ready}");
        Ok(())
    })
    .await?;
    expect_refused(tls_port, "api.example.test", &h1).await?;

    // The right pair: ready, served, without a restart.
    let started = Instant::now();
    put_pair(&bao, "tls/api", &api).await?;
    gateway.wait_ready(Duration::from_secs(15)).await?;
    let (status, _, serial) = https_get(tls_port, "api.example.test", "/secure/ping", &h1).await?;
    ensure!(status == 200 && serial == api.serial);
    println!(
        "certificate written to KV -> served in {:.2} s",
        started.elapsed().as_secs_f64()
    );

    let mut keys = key_lines(&api.key);
    keys.extend(key_lines(&stranger.key));
    keys.extend(key_lines(&expired.key));
    let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
    agent.assert_no_secret_in_log(&keys);
    keygate_tests::assert_no_secret_in(&gateway.log_contents(), &keys);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn kv_rotation_reaches_new_connections_and_spares_open_ones() -> Result<()> {
    let bao = OpenBao::start().await?;
    let token = prepare_bao(&bao).await?;
    let ca = TestCa::new("keygate tls test CA")?;
    let first = ca.leaf(&["api.example.test"])?;
    let second = ca.leaf(&["api.example.test"])?;
    let wild = ca.leaf(&["*.other.test"])?;
    put_pair(&bao, "tls/api", &first).await?;
    put_pair(&bao, "tls/wild", &wild).await?;
    let agent = AgentProcess::start_ready(
        AgentConfig::new(&bao.addr(), KV1_PREFIX)
            .token(&token)
            .refresh_interval("1s"),
    )
    .await?;
    let upstream = Upstream::start().await?;
    let tls_port = free_port()?;
    let gateway =
        GatewayProcess::start_ready(&config(agent.socket_path(), tls_port, &upstream.node(), ""))
            .await?;
    let pid = gateway.pid();
    let both = client_config(&ca.pem, &[b"h2", b"http/1.1"])?;
    let h1 = client_config(&ca.pem, &[b"http/1.1"])?;

    // Two keep-alive connections (h2 and HTTP/1.1) opened on the first certificate.
    let mut open_h2 = HttpsConn::open(tls_port, "api.example.test", &both).await?;
    let mut open_h1 = HttpsConn::open(tls_port, "api.example.test", &h1).await?;
    ensure!(open_h2.serial == first.serial && open_h1.serial == first.serial);
    for conn in [&mut open_h2, &mut open_h1] {
        let (status, _) = conn.get("/secure/ping").await?;
        ensure!(status == 200);
    }

    let started = Instant::now();
    put_pair(&bao, "tls/api", &second).await?;
    let mut old_conn_requests = 0;
    eventually(Duration::from_secs(15), || async {
        let (status, _, serial) =
            https_get(tls_port, "api.example.test", "/secure/ping", &h1).await?;
        ensure!(status == 200 && serial == second.serial, "still {serial}");
        Ok(())
    })
    .await?;
    let picked_up = started.elapsed();
    // The connections opened before still work, on the same TLS session.
    for _ in 0..5 {
        for conn in [&mut open_h2, &mut open_h1] {
            let (status, body) = conn.get("/secure/ping").await?;
            ensure!(
                (status, body.as_str()) == (200, "secure/pong\n"),
                "{status} {body}"
            );
            old_conn_requests += 1;
        }
    }
    ensure!(gateway.pid() == pid, "no restart");
    println!(
        "KV rotation: new serial served {:.2} s after the write; {old_conn_requests} requests on the 2 connections opened before it succeeded",
        picked_up.as_secs_f64()
    );
    let mut keys = key_lines(&first.key);
    keys.extend(key_lines(&second.key));
    let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
    agent.assert_no_secret_in_log(&keys);
    keygate_tests::assert_no_secret_in(&gateway.log_contents(), &keys);
    Ok(())
}
