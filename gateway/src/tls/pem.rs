//! PEM to what rustls uses: certificate chains, and private keys decoded into
//! zeroizing buffers that are wiped as soon as *ring* has parsed them.

use std::sync::Arc;

use base64::Engine as _;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{
    CertificateDer, PrivateKeyDer, PrivatePkcs1KeyDer, PrivatePkcs8KeyDer, PrivateSec1KeyDer,
};
use rustls::sign::SigningKey;
use zeroize::{Zeroize as _, Zeroizing};

/// PEM that is not a usable certificate or key. Never carries the material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PemError {
    /// No `CERTIFICATE` block.
    #[error("no PEM certificate found")]
    NoCertificate,
    /// A `CERTIFICATE` block that does not decode.
    #[error("a PEM certificate does not decode")]
    BadCertificate,
    /// No private key block.
    #[error("no PEM private key found (PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY)")]
    NoKey,
    /// An encrypted private key.
    #[error("encrypted private keys are not supported")]
    Encrypted,
    /// A key block that does not decode, or a key type rustls cannot sign with.
    #[error("the private key is not usable: {0}")]
    BadKey(String),
}

/// Every `CERTIFICATE` block of `pem`, in order.
pub fn certificates(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, PemError> {
    let chain = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| PemError::BadCertificate)?;
    if chain.is_empty() {
        return Err(PemError::NoCertificate);
    }
    Ok(chain)
}

/// The first private key of `pem`, ready to sign. The base64 text and the DER are held
/// in buffers wiped on drop; the caller's `pem` is left to its owner to wipe.
pub fn private_key(pem: &[u8]) -> Result<Arc<dyn SigningKey>, PemError> {
    let text = std::str::from_utf8(pem).map_err(|_| PemError::NoKey)?;
    let mut lines = text.lines().map(str::trim);
    let label = loop {
        let Some(line) = lines.next() else {
            return Err(PemError::NoKey);
        };
        let Some(label) = line
            .strip_prefix("-----BEGIN ")
            .and_then(|l| l.strip_suffix("-----"))
        else {
            continue;
        };
        match label {
            "PRIVATE KEY" | "RSA PRIVATE KEY" | "EC PRIVATE KEY" => break label,
            "ENCRYPTED PRIVATE KEY" => return Err(PemError::Encrypted),
            _ => {}
        }
    };
    let end = format!("-----END {label}-----");
    let mut b64 = Zeroizing::new(Vec::with_capacity(pem.len()));
    let mut closed = false;
    for line in lines {
        if line == end {
            closed = true;
            break;
        }
        if line.contains(':') {
            // RFC 1421 headers (Proc-Type: 4,ENCRYPTED ...).
            return Err(PemError::Encrypted);
        }
        b64.extend_from_slice(line.as_bytes());
    }
    if !closed {
        return Err(PemError::BadKey(format!("no {end:?} line")));
    }
    let der = base64::engine::general_purpose::STANDARD
        .decode(b64.as_slice())
        .map_err(|_| PemError::BadKey("not base64".into()))?;
    let mut der = match label {
        "PRIVATE KEY" => PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(der)),
        "RSA PRIVATE KEY" => PrivateKeyDer::Pkcs1(PrivatePkcs1KeyDer::from(der)),
        _ => PrivateKeyDer::Sec1(PrivateSec1KeyDer::from(der)),
    };
    let key = rustls::crypto::ring::sign::any_supported_type(&der);
    der.zeroize();
    key.map_err(|e| PemError::BadKey(e.to_string()))
}
