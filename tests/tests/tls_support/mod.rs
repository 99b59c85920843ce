//! Shared by the `tls_*` tests: a test CA (rcgen), OpenBao prepared for TLS material
//! (KV and the PKI engine), and a rustls client (ring, the test CA only, no session
//! resumption) that reports which certificate the gateway served.

#![expect(
    dead_code,
    reason = "each tls_* test binary uses a part of this module"
)]

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result, anyhow, bail};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use keygate_tests::OpenBao;
use keygate_tests::seed::KV1_PREFIX;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use rustls::ClientConfig;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::json;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// The policy of the agent's token in these tests: KV under the prefix, PKI issuing.
pub const TLS_POLICY: &str = "keygate-tls";

/// A CA made by the test.
pub struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
    /// Its certificate.
    pub pem: String,
}

/// A certificate and key signed by a [`TestCa`].
#[derive(Clone)]
pub struct Leaf {
    pub cert: String,
    pub key: String,
    /// `aa:bb:..` as the client reads it.
    pub serial: String,
}

impl TestCa {
    pub fn new(common_name: &str) -> Result<Self> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate()?)?;
        let pem = issuer.pem();
        Ok(Self { issuer, pem })
    }

    /// A leaf for `names` (usable as server and client certificate). Its private key is
    /// remembered: the harness fails a test whose gateway logs any line of it.
    pub fn leaf(&self, names: &[&str]) -> Result<Leaf> {
        self.leaf_until(names, None)
    }

    /// [`Self::leaf`], valid from 2020 until `not_after_year` (e.g. already expired).
    pub fn leaf_until(&self, names: &[&str], not_after_year: Option<i32>) -> Result<Leaf> {
        let key = KeyPair::generate()?;
        let mut params =
            CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>())?;
        if let Some(first) = names.first() {
            params.distinguished_name.push(DnType::CommonName, *first);
        }
        if let Some(year) = not_after_year {
            params.not_before = rcgen::date_time_ymd(2020, 1, 1);
            params.not_after = rcgen::date_time_ymd(year, 1, 1);
        }
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let cert = params.signed_by(&key, &self.issuer)?;
        let key_pem = key.serialize_pem();
        remember_key(&key_pem);
        Ok(Leaf {
            serial: serial_of(cert.der())?,
            cert: cert.pem(),
            key: key_pem,
        })
    }
}

/// Remembers a PEM key, and each line of its body, as secrets no log may contain.
pub fn remember_key(pem: &str) {
    keygate_tests::leaks::remember(pem);
    for line in pem.lines().filter(|l| !l.starts_with("-----")) {
        keygate_tests::leaks::remember(line);
    }
}

/// Every line of the body of `pem` (for explicit log checks of the agent).
pub fn key_lines(pem: &str) -> Vec<String> {
    pem.lines()
        .filter(|l| !l.starts_with("-----") && l.len() >= 16)
        .map(str::to_owned)
        .collect()
}

/// The serial of a DER certificate, `aa:bb:..`, read with x509-parser.
pub fn serial_of(der: &[u8]) -> Result<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| anyhow!("parsing a served certificate: {e}"))?;
    Ok(cert.tbs_certificate.raw_serial_as_string())
}

/// KV v1 at `kv`, and a token that may read `kv/apisix/*` and issue from `pki`.
pub async fn prepare_bao(bao: &OpenBao) -> Result<String> {
    bao.enable_kv("kv", 1).await?;
    bao.put_policy(
        TLS_POLICY,
        &format!(
            "path \"{KV1_PREFIX}/*\" {{ capabilities = [\"read\"] }}\npath \"pki/issue/keygate\" {{ capabilities = [\"create\", \"update\"] }}\n"
        ),
    )
    .await?;
    bao.create_token(&[TLS_POLICY], Some("1h")).await
}

/// Enables the PKI engine at `pki` with a root CA and role `keygate` (EC P-256, names
/// under `example.test`); returns the root's PEM.
pub async fn enable_pki(bao: &OpenBao) -> Result<String> {
    bao.write(
        "sys/mounts/pki",
        json!({ "type": "pki", "config": { "max_lease_ttl": "87600h" } }),
    )
    .await?;
    let root = bao
        .write(
            "pki/root/generate/internal",
            json!({ "common_name": "keygate test root", "ttl": "87600h" }),
        )
        .await?
        .context("no answer from root/generate")?;
    bao.write(
        "pki/roles/keygate",
        json!({ "allowed_domains": ["example.test"], "allow_subdomains": true, "max_ttl": "1h",
                "key_type": "ec", "key_bits": 256 }),
    )
    .await?;
    root["data"]["certificate"]
        .as_str()
        .map(str::to_owned)
        .context("root certificate in the answer")
}

/// Writes `leaf` to `kv/apisix/<name>` as fields `cert` and `key`.
pub async fn put_pair(bao: &OpenBao, name: &str, leaf: &Leaf) -> Result<()> {
    bao.kv1_put(
        &format!("{KV1_PREFIX}/{name}"),
        json!({ "cert": leaf.cert, "key": leaf.key }),
    )
    .await
}

/// A client trusting only `ca_pem`, offering `alpn`, without session resumption (so
/// each connection sees the certificate served at that moment).
pub fn client_config(ca_pem: &str, alpn: &[&[u8]]) -> Result<Arc<ClientConfig>> {
    client_config_versions(ca_pem, alpn, rustls::DEFAULT_VERSIONS)
}

/// [`client_config`] limited to `versions`.
pub fn client_config_versions(
    ca_pem: &str,
    alpn: &[&[u8]],
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Result<Arc<ClientConfig>> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert?)?;
    }
    let mut config =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_protocol_versions(versions)?
            .with_root_certificates(roots)
            .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    config.resumption = rustls::client::Resumption::disabled();
    Ok(Arc::new(config))
}

/// A TLS connection to `127.0.0.1:port` with `sni` (an IP address sends no SNI).
pub async fn connect(
    port: u16,
    sni: &str,
    config: &Arc<ClientConfig>,
) -> Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(("127.0.0.1", port))
        .await
        .with_context(|| format!("connecting to 127.0.0.1:{port}"))?;
    let name = ServerName::try_from(sni.to_owned())?;
    let stream = tokio::time::timeout(
        Duration::from_secs(10),
        TlsConnector::from(config.clone()).connect(name, tcp),
    )
    .await
    .context("TLS handshake timed out")?
    .with_context(|| format!("TLS handshake with SNI {sni}"))?;
    Ok(stream)
}

/// The serial of the leaf the server presented.
pub fn served_serial(stream: &TlsStream<TcpStream>) -> Result<String> {
    let chain = stream
        .get_ref()
        .1
        .peer_certificates()
        .context("no server certificate")?;
    serial_of(chain.first().context("empty chain")?)
}

/// An HTTP/1.1 (or HTTP/2, by ALPN) connection over TLS, kept open for several requests.
pub struct HttpsConn {
    pub serial: String,
    pub alpn: Option<Vec<u8>>,
    pub version: Option<rustls::ProtocolVersion>,
    sender: Sender,
    host: String,
}

enum Sender {
    H1(hyper::client::conn::http1::SendRequest<Empty<Bytes>>),
    H2(hyper::client::conn::http2::SendRequest<Empty<Bytes>>),
}

impl HttpsConn {
    /// Connects and speaks what ALPN chose (h2 or HTTP/1.1).
    pub async fn open(port: u16, sni: &str, config: &Arc<ClientConfig>) -> Result<Self> {
        let stream = connect(port, sni, config).await?;
        let serial = served_serial(&stream)?;
        let alpn = stream.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
        let version = stream.get_ref().1.protocol_version();
        let io = TokioIo::new(stream);
        let sender = if alpn.as_deref() == Some(b"h2") {
            let (sender, conn) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await?;
            tokio::spawn(conn);
            Sender::H2(sender)
        } else {
            let (sender, conn) = hyper::client::conn::http1::handshake(io).await?;
            tokio::spawn(conn);
            Sender::H1(sender)
        };
        Ok(Self {
            serial,
            alpn,
            version,
            sender,
            host: sni.to_owned(),
        })
    }

    /// `GET path`: status and body.
    pub async fn get(&mut self, path: &str) -> Result<(u16, String)> {
        let response = match &mut self.sender {
            Sender::H1(sender) => {
                sender.ready().await?;
                let request = hyper::Request::get(path)
                    .header("host", &self.host)
                    .body(Empty::new())?;
                sender.send_request(request).await?
            }
            Sender::H2(sender) => {
                sender.ready().await?;
                let request = hyper::Request::get(format!("https://{}{path}", self.host))
                    .body(Empty::new())?;
                sender.send_request(request).await?
            }
        };
        let status = response.status().as_u16();
        let body = response.into_body().collect().await?.to_bytes();
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    }
}

/// One request on a new connection: status, body and the served serial.
pub async fn https_get(
    port: u16,
    sni: &str,
    path: &str,
    config: &Arc<ClientConfig>,
) -> Result<(u16, String, String)> {
    let mut conn = HttpsConn::open(port, sni, config).await?;
    let (status, body) = conn.get(path).await?;
    Ok((status, body, conn.serial))
}

/// Fails unless a handshake with `sni` is refused.
pub async fn expect_refused(port: u16, sni: &str, config: &Arc<ClientConfig>) -> Result<()> {
    match connect(port, sni, config).await {
        Ok(stream) => bail!(
            "a handshake with SNI {sni:?} succeeded (serial {})",
            served_serial(&stream).unwrap_or_default()
        ),
        Err(_) => Ok(()),
    }
}
