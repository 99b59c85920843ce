//! TLS to upstreams (`scheme: https`) through the real agent and gateway: the upstream
//! (tokio-rustls with webpki's client verifier) requires a client certificate. The
//! gateway verifies the upstream against a CA kept in OpenBao, presents a client
//! certificate from KV or one the agent issues from the PKI engine, sends the
//! configured SNI; a missing client certificate or the wrong CA is a 502; a client
//! certificate rotated in KV is presented on new connections without a restart.

mod tls_support;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, ensure};
use bytes::Bytes;
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use keygate_tests::gateway::GatewayProcess;
use keygate_tests::seed::KV1_PREFIX;
use keygate_tests::{AgentConfig, AgentProcess, OpenBao, eventually, free_port};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use serde_json::json;
use tls_support::{
    HttpsConn, Leaf, TestCa, client_config, enable_pki, key_lines, prepare_bao, put_pair, serial_of,
};
use tokio::net::TcpListener;

/// What the upstream saw of one request.
#[derive(Debug, Clone)]
struct Seen {
    client_serial: Option<String>,
    client_cn: Option<String>,
    sni: Option<String>,
    forwarded_proto: Option<String>,
}

/// An HTTPS upstream that requires a client certificate signed by one of `client_cas`
/// and closes each connection after one response (so every request is a new
/// handshake). Answers `200 tls-pong`.
struct TlsUpstream {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TlsUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TlsUpstream {
    async fn start(server: &Leaf, client_cas: &[&str]) -> Result<Self> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        for pem in client_cas {
            for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
                roots.add(cert?)?;
            }
        }
        let verifier =
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .build()?;
        let chain = CertificateDer::pem_slice_iter(server.cert.as_bytes())
            .collect::<Result<Vec<_>, _>>()?;
        let key = PrivateKeyDer::from_pem_slice(server.key.as_bytes())?;
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(rustls::DEFAULT_VERSIONS)?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, key)?;
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let log = seen.clone();
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                let log = log.clone();
                tokio::spawn(async move {
                    // A refused handshake (no or unknown client certificate) ends here.
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let (_, conn) = tls.get_ref();
                    let sni = conn.server_name().map(str::to_owned);
                    let leaf = conn.peer_certificates().and_then(|c| c.first().cloned());
                    let client_serial = leaf.as_ref().and_then(|c| serial_of(c).ok());
                    let client_cn = leaf.as_ref().and_then(|c| common_name(c));
                    let service = hyper::service::service_fn(move |req: hyper::Request<_>| {
                        let forwarded_proto = req
                            .headers()
                            .get("x-forwarded-proto")
                            .and_then(|v| v.to_str().ok())
                            .map(str::to_owned);
                        if let Ok(mut log) = log.lock() {
                            log.push(Seen {
                                client_serial: client_serial.clone(),
                                client_cn: client_cn.clone(),
                                sni: sni.clone(),
                                forwarded_proto,
                            });
                        }
                        async {
                            let mut response =
                                hyper::Response::new(Full::new(Bytes::from_static(b"tls-pong\n")));
                            response.headers_mut().insert(
                                "connection",
                                hyper::header::HeaderValue::from_static("close"),
                            );
                            Ok::<_, std::convert::Infallible>(response)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .keep_alive(false)
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        Ok(Self { addr, seen, task })
    }

    fn node(&self) -> String {
        self.addr.to_string()
    }

    fn last(&self) -> Option<Seen> {
        self.seen.lock().ok().and_then(|s| s.last().cloned())
    }
}

fn common_name(der: &CertificateDer<'_>) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    cert.subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .map(str::to_owned)
}

fn quoted(pem: &str) -> Result<String> {
    serde_json::to_string(pem).context("quoting a PEM")
}

#[tokio::test(flavor = "multi_thread")]
async fn mtls_to_an_upstream_with_material_from_vault() -> Result<()> {
    let bao = OpenBao::start().await?;
    let token = prepare_bao(&bao).await?;
    let pki_root = enable_pki(&bao).await?;
    let server_ca = TestCa::new("upstream server CA")?;
    let client_ca = TestCa::new("upstream client CA")?;
    let stranger_ca = TestCa::new("someone else's CA")?;
    let server = server_ca.leaf(&["upstream.example.test"])?;
    let client = client_ca.leaf(&["client-one.example.test"])?;
    let rotated = client_ca.leaf(&["client-two.example.test"])?;
    let listener_ca = TestCa::new("listener CA")?;
    let api = listener_ca.leaf(&["api.example.test"])?;
    bao.kv1_put(
        &format!("{KV1_PREFIX}/tls/upstream"),
        json!({ "ca": server_ca.pem }),
    )
    .await?;
    put_pair(&bao, "tls/client", &client).await?;
    put_pair(&bao, "tls/api", &api).await?;

    let agent = AgentProcess::start_ready(
        AgentConfig::new(&bao.addr(), KV1_PREFIX)
            .token(&token)
            .refresh_interval("1s")
            .certificate(json!({
                "name": "client",
                "role": "keygate",
                "common_name": "pki-client.example.test",
                "ttl": "1h",
            })),
    )
    .await?;
    let upstream = TlsUpstream::start(&server, &[&client_ca.pem, &pki_root]).await?;
    let node = upstream.node();
    let tls_port = free_port()?;
    let config = format!(
        r#"
agent: {{ socket: {socket:?} }}
tls: {{ listen: "127.0.0.1:{tls_port}" }}
ssls:
  - {{ id: api, snis: [api.example.test], cert: "$secret://vault/tls/api/cert", key: "$secret://vault/tls/api/key" }}
routes:
  - uri: /mtls
    upstream:
      scheme: https
      nodes: {{ "{node}": 1 }}
      tls:
        ca: $secret://vault/tls/upstream/ca
        client_cert: $secret://vault/tls/client/cert
        client_key: $secret://vault/tls/client/key
        sni: upstream.example.test
  - uri: /pki
    upstream:
      scheme: https
      nodes: {{ "{node}": 1 }}
      pass_host: rewrite
      upstream_host: "upstream.example.test:8443"
      tls: {{ ca: $secret://vault/tls/upstream/ca, pki: client }}
  - uri: /nocert
    upstream:
      scheme: https
      nodes: {{ "{node}": 1 }}
      retries: 0
      tls: {{ ca: {server_ca}, sni: upstream.example.test }}
  - uri: /wrongca
    upstream:
      scheme: https
      nodes: {{ "{node}": 1 }}
      retries: 0
      tls:
        ca: {stranger_ca}
        client_cert: $secret://vault/tls/client/cert
        client_key: $secret://vault/tls/client/key
        sni: upstream.example.test
"#,
        socket = agent.socket_path(),
        server_ca = quoted(&server_ca.pem)?,
        stranger_ca = quoted(&stranger_ca.pem)?,
    );
    let gateway = GatewayProcess::start_ready(&config).await?;

    // Client certificate and CA from KV; SNI as configured.
    let (status, body) = gateway.get("/mtls", &[]).await?;
    ensure!(
        (status, body.as_str()) == (200, "tls-pong\n"),
        "{status} {body}; gateway log:\n{}",
        gateway.log_contents()
    );
    let seen = upstream.last().context("the upstream saw the request")?;
    ensure!(
        seen.client_serial.as_deref() == Some(client.serial.as_str()),
        "{seen:?}"
    );
    ensure!(
        seen.sni.as_deref() == Some("upstream.example.test"),
        "{seen:?}"
    );
    ensure!(seen.forwarded_proto.as_deref() == Some("http"), "{seen:?}");

    // A client certificate the agent issues from the PKI engine; the SNI comes from
    // upstream_host (pass_host: rewrite).
    let (status, body) = gateway.get("/pki", &[]).await?;
    ensure!(
        (status, body.as_str()) == (200, "tls-pong\n"),
        "{status} {body}"
    );
    let seen = upstream.last().context("the upstream saw the request")?;
    ensure!(
        seen.client_cn.as_deref() == Some("pki-client.example.test"),
        "{seen:?}"
    );
    ensure!(
        seen.sni.as_deref() == Some("upstream.example.test"),
        "{seen:?}"
    );

    // No client certificate: the upstream refuses the handshake. The wrong CA: the
    // gateway refuses the upstream. Both 502, neither reaches the upstream's handler.
    let before = upstream.seen.lock().map(|s| s.len()).unwrap_or_default();
    for path in ["/nocert", "/wrongca"] {
        let (status, body) = gateway.get(path, &[]).await?;
        ensure!(status == 502, "{path}: {status} {body}");
    }
    let after = upstream.seen.lock().map(|s| s.len()).unwrap_or_default();
    ensure!(
        before == after,
        "a refused handshake reached the upstream's handler"
    );

    // Through the HTTPS listener: X-Forwarded-Proto https.
    let tls = client_config(&listener_ca.pem, &[b"h2", b"http/1.1"])?;
    let mut conn = HttpsConn::open(tls_port, "api.example.test", &tls).await?;
    let (status, _) = conn.get("/mtls").await?;
    ensure!(status == 200);
    let seen = upstream.last().context("the upstream saw the request")?;
    ensure!(seen.forwarded_proto.as_deref() == Some("https"), "{seen:?}");

    // Rotating the client certificate in KV: new connections present the new one.
    let started = Instant::now();
    put_pair(&bao, "tls/client", &rotated).await?;
    eventually(Duration::from_secs(15), || async {
        let (status, _) = gateway.get("/mtls", &[]).await?;
        ensure!(status == 200, "{status}");
        let seen = upstream.last().context("seen")?;
        ensure!(
            seen.client_serial.as_deref() == Some(rotated.serial.as_str()),
            "{seen:?} {}",
            gateway
                .log_contents()
                .lines()
                .filter(|l| l.contains("upstream") || l.contains("snapshot"))
                .collect::<Vec<_>>()
                .join("\n")
        );
        Ok(())
    })
    .await?;
    println!(
        "upstream client certificate rotated in KV -> presented {:.2} s later",
        started.elapsed().as_secs_f64()
    );

    let mut keys = key_lines(&client.key);
    keys.extend(key_lines(&rotated.key));
    let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
    agent.assert_no_secret_in_log(&keys);
    keygate_tests::assert_no_secret_in(&gateway.log_contents(), &keys);
    Ok(())
}
