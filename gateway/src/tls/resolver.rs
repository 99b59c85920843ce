//! The handshake side of the HTTPS listener: the server configuration (TLS 1.3/1.2,
//! ALPN h2 and http/1.1) and the certificate choice by SNI, read lock-free from the
//! current [`ServerCerts`].

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arc_swap::ArcSwap;
use rustls::ServerConfig;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use super::certs::ServerCerts;

/// Handshake counters (metrics).
#[derive(Debug, Default)]
pub struct TlsCounters {
    /// Handshakes completed.
    pub handshakes: AtomicU64,
    /// Handshakes that failed (refused, bad client, timeout).
    pub failures: AtomicU64,
    /// Refused: no certificate for the client's SNI (and no fallback).
    pub unknown_sni: AtomicU64,
    /// Refused: the certificate for the SNI has expired.
    pub expired: AtomicU64,
}

/// Chooses the certificate of each handshake from the current [`ServerCerts`].
#[derive(Debug)]
pub struct SniResolver {
    certs: Arc<ArcSwap<ServerCerts>>,
    counters: Arc<TlsCounters>,
}

impl SniResolver {
    /// Reads `certs`, counts into `counters`.
    pub fn new(certs: Arc<ArcSwap<ServerCerts>>, counters: Arc<TlsCounters>) -> Self {
        Self { certs, counters }
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let certs = self.certs.load();
        let sni = hello.server_name();
        let Some(served) = certs.select(sni) else {
            self.counters.unknown_sni.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(
                sni,
                "no certificate for this server name; handshake refused"
            );
            return None;
        };
        // Checked per handshake: a certificate may expire while it is installed (the
        // agent could not renew it). One comparison, no lock.
        if super::unix_now() >= served.info.not_after {
            self.counters.expired.fetch_add(1, Ordering::Relaxed);
            if served.first_refusal() {
                tracing::error!(
                    ssl = %served.id, serial = %served.info.serial, not_after = served.info.not_after,
                    "certificate expired; handshakes for its names are refused until a new one arrives"
                );
            }
            return None;
        }
        Some(served.key.clone())
    }
}

/// The listener's configuration: *ring*, TLS 1.3 and 1.2, ALPN h2 then http/1.1, no
/// client certificates, certificates from `resolver`.
pub fn server_config(resolver: SniResolver) -> Result<Arc<ServerConfig>, rustls::Error> {
    let mut config = ServerConfig::builder_with_provider(super::provider())
        .with_protocol_versions(super::VERSIONS)?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(resolver));
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
