//! TLS with keys that never touch disk: HTTPS listeners whose certificates are chosen
//! by SNI from `ssls` objects, and TLS (optionally mutual) to upstreams.
//!
//! Certificates and private keys come inline from the configuration, from `$env://`,
//! or from the agent (`$secret://vault/<path>/<field>`, or `pki: <name>` for a
//! certificate the agent issues from Vault's PKI engine). Agent-held material is parsed
//! each time a snapshot arrives and swapped in whole ([`certs::ServerCerts`] behind an
//! `ArcSwap`): the handshake path reads it without a lock, new handshakes get the new
//! certificate, established connections keep theirs.
//!
//! Everything uses the *ring* provider explicitly, TLS 1.3 and 1.2 only, with rustls's
//! default cipher suites (AEAD with forward secrecy only).

pub mod admin;
pub mod certs;
pub mod config;
pub mod der;
pub mod pem;
pub mod resolver;
pub mod upstream;

use std::sync::Arc;

use rustls::crypto::CryptoProvider;

pub use certs::{ServerCerts, TlsSpec};
pub use resolver::{SniResolver, TlsCounters};

/// The crypto provider for every TLS configuration of the gateway (*ring*).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// TLS 1.3 and TLS 1.2, nothing older.
pub static VERSIONS: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

/// Seconds since the Unix epoch, now.
pub(crate) fn unix_now() -> i64 {
    i64::try_from(crate::clock::unix_seconds()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests;
