//! The configuration of TLS: the `tls` block (the HTTPS listener), `ssls` objects in
//! APISIX's shape, and an upstream's `tls` block.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use secrecy::SecretString;
use serde::Deserialize;

use crate::config::string_or_number;

/// The `tls` block: the HTTPS listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// Where HTTPS is served (HTTP/2 and HTTP/1.1 by ALPN, TLS 1.2 and 1.3).
    pub listen: SocketAddr,
    /// The name whose certificate is served to a client that sends no SNI, or an SNI
    /// that no `ssls` entry covers. Absent: such handshakes are refused.
    #[serde(default)]
    pub fallback_sni: Option<String>,
    /// How long a client may take to complete the handshake.
    #[serde(default = "default_handshake_timeout", with = "humantime_serde")]
    pub handshake_timeout: Duration,
}

fn default_handshake_timeout() -> Duration {
    Duration::from_secs(10)
}

/// One `ssls` entry (APISIX's SSL object): a certificate and key for some server
/// names.
///
/// `cert` and `key` are inline PEM, `$env://NAME` or `$secret://vault/<path>/<field>`;
/// `pki: <name>` instead takes both from the certificate the agent issues as
/// `@pki/<name>` (`certificate` plus `ca_chain`, and `private_key`).
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SslConfig {
    /// Identifier (defaults to the position in the list).
    #[serde(default, deserialize_with = "string_or_number")]
    pub id: Option<String>,
    /// Server names: exact (`api.example.com`) or one leading wildcard label
    /// (`*.example.com`, which matches exactly one label).
    #[serde(default)]
    pub snis: Vec<String>,
    /// One server name (APISIX's older field).
    #[serde(default)]
    pub sni: Option<String>,
    /// The certificate chain, leaf first.
    #[serde(default)]
    pub cert: Option<String>,
    /// The private key.
    #[serde(default)]
    pub key: Option<SecretString>,
    /// A certificate the agent issues from Vault's PKI engine (`@pki/<name>`).
    #[serde(default)]
    pub pki: Option<String>,
    /// APISIX's `type`: only `server` (the default) is served by the listener.
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    /// 1 enabled (default), 0 disabled.
    #[serde(default = "default_status")]
    pub status: u8,
    /// Free text.
    #[serde(default)]
    pub desc: Option<String>,
    /// APISIX labels (kept, not used).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

fn default_status() -> u8 {
    1
}

impl std::fmt::Debug for SslConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SslConfig")
            .field("id", &self.id)
            .field("snis", &self.snis)
            .field("sni", &self.sni)
            .field("cert", &self.cert.as_ref().map(|c| reference_or_inline(c)))
            .field("key", &self.key.as_ref().map(|_| "[REDACTED]"))
            .field("pki", &self.pki)
            .field("kind", &self.kind)
            .field("status", &self.status)
            .finish_non_exhaustive()
    }
}

/// An upstream's `tls` block (APISIX's `upstream.tls`, plus `ca`).
#[derive(Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTlsConfig {
    /// Trust anchors for the upstream's certificate (PEM, or a reference). Absent:
    /// the Mozilla roots compiled in (webpki-roots).
    #[serde(default)]
    pub ca: Option<String>,
    /// Client certificate chain for mutual TLS.
    #[serde(default)]
    pub client_cert: Option<String>,
    /// Its private key.
    #[serde(default)]
    pub client_key: Option<SecretString>,
    /// Or a client certificate the agent issues (`@pki/<name>`).
    #[serde(default)]
    pub pki: Option<String>,
    /// The server name sent and verified. Default: `upstream_host` with
    /// `pass_host: rewrite`, else the node's host.
    #[serde(default)]
    pub sni: Option<String>,
    /// APISIX's switch; keygate always verifies, so only `true` is accepted.
    #[serde(default)]
    pub verify: Option<bool>,
}

impl std::fmt::Debug for UpstreamTlsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamTlsConfig")
            .field("ca", &self.ca.as_ref().map(|c| reference_or_inline(c)))
            .field(
                "client_cert",
                &self.client_cert.as_ref().map(|c| reference_or_inline(c)),
            )
            .field(
                "client_key",
                &self.client_key.as_ref().map(|_| "[REDACTED]"),
            )
            .field("pki", &self.pki)
            .field("sni", &self.sni)
            .field("verify", &self.verify)
            .finish()
    }
}

/// A reference as written, or `[inline]` (a PEM is long and says nothing in a log).
fn reference_or_inline(value: &str) -> &str {
    if value.starts_with("$secret://") || value.starts_with("$env://") {
        value
    } else {
        "[inline]"
    }
}
