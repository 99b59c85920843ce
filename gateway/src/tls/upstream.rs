//! TLS to an upstream (`scheme: https`): the upstream's certificate verified against a
//! CA bundle (or the Mozilla roots), and optionally a client certificate for mutual
//! TLS. CA and client certificate may come from the agent; the connector's
//! configuration is built once and reads the current ones lock-free, so a new snapshot
//! applies to the next connection without rebuilding the pool.

use std::sync::Arc;

use arc_swap::ArcSwapOption;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ResolvesClientCert, WebPkiServerVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use secrecy::ExposeSecret as _;

use super::certs::{AgentRef, KeyPairSpec, Source};
use super::config::UpstreamTlsConfig;
use super::pem;
use crate::config::{ConfigError, invalid};
use crate::consumers::{EnvLookup, Value, value};
use crate::secrets::{Missing, SecretSnapshot};

/// An upstream's TLS settings and the material currently in use.
#[derive(Debug)]
pub struct UpstreamTls {
    /// Where the upstream is named in the configuration (for logs).
    label: String,
    ca: Source<Arc<WebPkiServerVerifier>>,
    client: Option<KeyPairSpec>,
    verifier: Arc<CurrentVerifier>,
    client_cert: Arc<CurrentClientCert>,
    /// The name to send and verify instead of the node's host.
    pub server_name: Option<ServerName<'static>>,
    config: ClientConfig,
}

impl UpstreamTls {
    /// Validates `conf` (reported under `at`). `rewrite_host` is `upstream_host` with
    /// `pass_host: rewrite`, the default server name.
    pub fn build(
        conf: &UpstreamTlsConfig,
        rewrite_host: Option<&str>,
        at: &str,
        env: EnvLookup<'_>,
    ) -> Result<Self, ConfigError> {
        if conf.verify == Some(false) {
            return Err(invalid(
                format!("{at}.verify"),
                "keygate always verifies upstream certificates (set tls.ca to trust a private CA)",
            ));
        }
        let provider = super::provider();
        let ca = match value(conf.ca.as_deref(), at, "ca", env)? {
            Value::Literal(pem) => Source::Ready(
                verifier(&pem, &provider).map_err(|why| invalid(format!("{at}.ca"), why))?,
            ),
            Value::Agent { name, field } => Source::Agent(AgentRef { name, field }),
            Value::Absent => {
                let roots = RootCertStore {
                    roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
                };
                Source::Ready(
                    WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                        .build()
                        .map_err(|e| invalid(format!("{at}.ca"), e.to_string()))?,
                )
            }
        };
        let client =
            if conf.client_cert.is_some() || conf.client_key.is_some() || conf.pki.is_some() {
                Some(KeyPairSpec::build(
                    conf.client_cert.as_deref(),
                    conf.client_key.as_ref().map(|k| k.expose_secret()),
                    conf.pki.as_deref(),
                    at,
                    ("client_cert", "client_key"),
                    env,
                )?)
            } else {
                None
            };
        let name = conf.sni.as_deref().or(rewrite_host.map(host_part));
        let server_name = match name {
            Some(name) => Some(ServerName::try_from(name.to_owned()).map_err(|_| {
                invalid(
                    format!("{at}.sni"),
                    format!("{name:?} is not a DNS name or IP address"),
                )
            })?),
            None => None,
        };
        let verifier = Arc::new(CurrentVerifier {
            current: ArcSwapOption::empty(),
            provider: provider.clone(),
        });
        let client_cert = Arc::new(CurrentClientCert {
            current: ArcSwapOption::empty(),
        });
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(super::VERSIONS)
            .map_err(|e| invalid(at, e.to_string()))?
            .dangerous()
            // Not dangerous: it delegates to webpki's verifier, swapped per snapshot.
            .with_custom_certificate_verifier(verifier.clone())
            .with_client_cert_resolver(client_cert.clone());
        let rotating = ca.agent().is_some()
            || client
                .as_ref()
                .is_some_and(|c| c.agent_names().next().is_some());
        if rotating {
            // A resumed session skips the server's certificate check and keeps the
            // client identity it was opened with, and TLS 1.3 tickets of a connection
            // opened before a rotation can arrive after it: with material that rotates,
            // every connection does a full handshake with the current material.
            config.resumption = rustls::client::Resumption::disabled();
        }
        let tls = Self {
            label: at.to_owned(),
            ca,
            client,
            verifier,
            client_cert,
            server_name,
            config,
        };
        tls.resolve(None, super::unix_now());
        Ok(tls)
    }

    /// The client configuration for the connector.
    pub fn client_config(&self) -> ClientConfig {
        self.config.clone()
    }

    /// The agent names this upstream's TLS needs.
    pub fn agent_names(&self) -> impl Iterator<Item = &str> {
        self.ca
            .agent()
            .map(|r| r.name.as_str())
            .into_iter()
            .chain(self.client.iter().flat_map(KeyPairSpec::agent_names))
    }

    /// Takes the CA and client certificate of `snapshot` for new connections.
    /// Missing or bad material is logged (never its value) and leaves nothing in place:
    /// connections then fail (502), they never fall back to weaker checks.
    pub fn resolve(&self, snapshot: Option<&SecretSnapshot>, now: i64) {
        let ca = match &self.ca {
            Source::Ready(v) => Ok(v.clone()),
            Source::Agent(at) => snapshot
                .ok_or(Missing::NotInSnapshot)
                .and_then(|s| s.field(&at.name, &at.field))
                .map_err(|m| format!("{at}: {m}"))
                .and_then(|pem| {
                    verifier(pem.expose(), &self.verifier.provider)
                        .map_err(|why| format!("{at}: {why}"))
                }),
        };
        match ca {
            Ok(v) => self.verifier.current.store(Some(v)),
            Err(why) => {
                if snapshot.is_some() {
                    tracing::warn!(upstream = %self.label, error = %why, "upstream CA not usable; TLS connections to it fail");
                }
                self.verifier.current.store(None);
            }
        }
        if let Some(client) = &self.client {
            match client.resolve(snapshot, now) {
                Ok(loaded) => {
                    tracing::debug!(upstream = %self.label, serial = %loaded.info.serial, "upstream client certificate installed");
                    self.client_cert
                        .current
                        .store(Some(Arc::new((loaded.key, loaded.info.not_after))));
                }
                Err(e) => {
                    if snapshot.is_some() {
                        tracing::warn!(upstream = %self.label, error = %e, "upstream client certificate not usable; connections go without one");
                    }
                    self.client_cert.current.store(None);
                }
            }
        }
    }
}

/// The host of `host[:port]` (brackets of an IPv6 literal removed).
fn host_part(authority: &str) -> &str {
    if let Some(rest) = authority.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    authority.rsplit_once(':').map_or(authority, |(h, _)| h)
}

/// A verifier trusting exactly the certificates of `pem`.
fn verifier(
    pem: &[u8],
    provider: &Arc<CryptoProvider>,
) -> Result<Arc<WebPkiServerVerifier>, String> {
    let mut roots = RootCertStore::empty();
    for cert in pem::certificates(pem).map_err(|e| e.to_string())? {
        roots
            .add(cert)
            .map_err(|e| format!("not a usable CA certificate: {e}"))?;
    }
    WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| e.to_string())
}

/// The current CA's webpki verifier; none: every connection fails.
#[derive(Debug)]
struct CurrentVerifier {
    current: ArcSwapOption<WebPkiServerVerifier>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for CurrentVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.current.load().as_deref() {
            Some(v) => {
                v.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
            }
            None => Err(rustls::Error::General(
                "no CA available for this upstream".into(),
            )),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// The current client certificate (and its leaf's `not_after`), if any.
#[derive(Debug)]
struct CurrentClientCert {
    current: ArcSwapOption<(Arc<CertifiedKey>, i64)>,
}

impl ResolvesClientCert for CurrentClientCert {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        let current = self.current.load();
        let (key, not_after) = current.as_deref()?;
        if super::unix_now() >= *not_after {
            tracing::debug!("upstream client certificate expired; not presented");
            return None;
        }
        key.key
            .choose_scheme(sigschemes)
            .is_some()
            .then(|| key.clone())
    }

    fn has_certs(&self) -> bool {
        self.current.load().is_some()
    }
}
