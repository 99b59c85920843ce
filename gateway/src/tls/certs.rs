//! Certificates and keys: where each comes from ([`KeyPairSpec`], [`TlsSpec`], built
//! with the configuration) and what the listener serves right now ([`ServerCerts`],
//! rebuilt from the spec and the agent's latest snapshot, swapped in whole).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use rustls::pki_types::CertificateDer;
use rustls::sign::{CertifiedKey, SigningKey};
use secrecy::ExposeSecret as _;

use super::config::{SslConfig, TlsConfig};
use super::der::{CertInfo, DerError, cert_info};
use super::pem::{self, PemError};
use crate::config::{ConfigError, invalid};
use crate::consumers::{EnvLookup, Value, check_name, value};
use crate::secrets::{Missing, SecretSnapshot};

/// A field of a secret the agent serves.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AgentRef {
    /// The agent name (`tls/api` or `@pki/gateway`).
    pub name: String,
    /// The field.
    pub field: String,
}

impl std::fmt::Display for AgentRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}#{}", self.name, self.field)
    }
}

/// Where one piece of TLS material comes from.
#[derive(Clone)]
pub(crate) enum Source<T> {
    /// Parsed from the configuration.
    Ready(T),
    /// Served by the agent; parsed when a snapshot arrives.
    Agent(AgentRef),
}

impl<T> std::fmt::Debug for Source<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Ready(_) => f.write_str("Ready"),
            Self::Agent(r) => write!(f, "Agent({r})"),
        }
    }
}

impl<T> Source<T> {
    pub(crate) fn agent(&self) -> Option<&AgentRef> {
        match self {
            Self::Agent(r) => Some(r),
            Self::Ready(_) => None,
        }
    }
}

/// Why a certificate cannot be served (or presented) right now. Never carries material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CertError {
    /// The agent has not provided the value.
    #[error("{at}: {missing}")]
    Missing {
        /// Which field of which secret.
        at: AgentRef,
        /// Why.
        missing: Missing,
    },
    /// The value is not usable PEM.
    #[error("{at}: {error}")]
    Pem {
        /// Where the value came from.
        at: String,
        /// Why.
        error: PemError,
    },
    /// The leaf certificate is not DER this gateway reads.
    #[error(transparent)]
    Der(#[from] DerError),
    /// The private key is not the certificate's.
    #[error("the private key does not match the certificate")]
    KeyMismatch,
    /// The certificate has expired.
    #[error("the certificate expired at {not_after} (Unix time)")]
    Expired {
        /// Unix seconds.
        not_after: i64,
    },
    /// The certificate is not valid yet.
    #[error("the certificate is not valid before {not_before} (Unix time)")]
    NotYetValid {
        /// Unix seconds.
        not_before: i64,
    },
}

/// A certificate chain and its private key, ready to serve or present.
#[derive(Debug)]
pub struct Loaded {
    /// What rustls sends and signs with.
    pub key: Arc<CertifiedKey>,
    /// The leaf's serial and validity.
    pub info: CertInfo,
}

/// A certificate chain and private key, from wherever the configuration says.
#[derive(Clone)]
pub(crate) struct KeyPairSpec {
    chain: Source<Vec<CertificateDer<'static>>>,
    /// Appended to the chain (a PKI certificate's `ca_chain`), roots left out.
    extra: Option<AgentRef>,
    key: Source<Arc<dyn SigningKey>>,
}

impl std::fmt::Debug for KeyPairSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyPairSpec")
            .field("chain", &self.chain)
            .field("extra", &self.extra)
            .field("key", &self.key)
            .finish()
    }
}

/// The agent name of a certificate the agent issues from Vault's PKI engine.
pub fn pki_name(name: &str) -> String {
    format!("@pki/{name}")
}

impl KeyPairSpec {
    /// From `cert`/`key` (inline PEM, `$env://`, `$secret://`) or `pki: <name>`.
    /// Inline material is parsed (and the pair checked) here; `fields` names the two
    /// fields in errors.
    pub(crate) fn build(
        cert: Option<&str>,
        key: Option<&str>,
        pki: Option<&str>,
        at: &str,
        fields: (&str, &str),
        env: EnvLookup<'_>,
    ) -> Result<Self, ConfigError> {
        let (cert_field, key_field) = fields;
        if let Some(name) = pki {
            if cert.is_some() || key.is_some() {
                return Err(invalid(
                    format!("{at}.pki"),
                    format!("give either pki or {cert_field}/{key_field}, not both"),
                ));
            }
            let agent_name = pki_name(name);
            if name.contains('/') {
                return Err(invalid(format!("{at}.pki"), "a certificate name, no '/'"));
            }
            check_name(&agent_name).map_err(|why| invalid(format!("{at}.pki"), why))?;
            let field = |f: &str| AgentRef {
                name: agent_name.clone(),
                field: f.to_owned(),
            };
            return Ok(Self {
                chain: Source::Agent(field("certificate")),
                extra: Some(field("ca_chain")),
                key: Source::Agent(field("private_key")),
            });
        }
        let chain = match value(cert, at, cert_field, env)? {
            Value::Literal(bytes) => Source::Ready(
                pem::certificates(&bytes)
                    .map_err(|e| invalid(format!("{at}.{cert_field}"), e.to_string()))?,
            ),
            Value::Agent { name, field } => Source::Agent(AgentRef { name, field }),
            Value::Absent => {
                return Err(invalid(
                    format!("{at}.{cert_field}"),
                    "required (or pki: <name>)",
                ));
            }
        };
        let key = match value(key, at, key_field, env)? {
            Value::Literal(bytes) => Source::Ready(
                pem::private_key(&bytes)
                    .map_err(|e| invalid(format!("{at}.{key_field}"), e.to_string()))?,
            ),
            Value::Agent { name, field } => Source::Agent(AgentRef { name, field }),
            Value::Absent => {
                return Err(invalid(
                    format!("{at}.{key_field}"),
                    "required (or pki: <name>)",
                ));
            }
        };
        let spec = Self {
            chain,
            extra: None,
            key,
        };
        if let (Source::Ready(chain), Source::Ready(key)) = (&spec.chain, &spec.key) {
            match pair(chain.clone(), key.clone()) {
                Err(CertError::KeyMismatch) => {
                    return Err(invalid(
                        format!("{at}.{key_field}"),
                        "the private key does not match the certificate",
                    ));
                }
                Err(e @ CertError::Der(_)) => {
                    return Err(invalid(format!("{at}.{cert_field}"), e.to_string()));
                }
                // Expiry is checked when the certificate is used (and logged), not here.
                _ => {}
            }
        }
        Ok(spec)
    }

    /// The agent names this pair needs.
    pub(crate) fn agent_names(&self) -> impl Iterator<Item = &str> {
        [self.chain.agent(), self.extra.as_ref(), self.key.agent()]
            .into_iter()
            .flatten()
            .map(|r| r.name.as_str())
    }

    /// The pair as of `snapshot`, checked: the key matches, the leaf is valid `now`.
    pub(crate) fn resolve(
        &self,
        snapshot: Option<&SecretSnapshot>,
        now: i64,
    ) -> Result<Loaded, CertError> {
        let mut chain = match &self.chain {
            Source::Ready(chain) => chain.clone(),
            Source::Agent(at) => {
                pem::certificates(field(snapshot, at)?).map_err(|error| CertError::Pem {
                    at: at.to_string(),
                    error,
                })?
            }
        };
        if let Some(at) = &self.extra
            && let Ok(bytes) = field(snapshot, at)
            && !bytes.is_empty()
        {
            let extra = pem::certificates(bytes).map_err(|error| CertError::Pem {
                at: at.to_string(),
                error,
            })?;
            for cert in extra {
                // Roots are the client's to have; sending them only costs bytes.
                let root = cert_info(&cert).is_ok_and(|i| i.self_issued);
                if !root && !chain.contains(&cert) {
                    chain.push(cert);
                }
            }
        }
        let key = match &self.key {
            Source::Ready(key) => key.clone(),
            Source::Agent(at) => {
                pem::private_key(field(snapshot, at)?).map_err(|error| CertError::Pem {
                    at: at.to_string(),
                    error,
                })?
            }
        };
        let loaded = pair(chain, key)?;
        check_validity(&loaded.info, now)?;
        Ok(loaded)
    }
}

fn field<'a>(snapshot: Option<&'a SecretSnapshot>, at: &AgentRef) -> Result<&'a [u8], CertError> {
    snapshot
        .ok_or(Missing::NotInSnapshot)
        .and_then(|s| s.field(&at.name, &at.field))
        .map(|v| v.expose())
        .map_err(|missing| CertError::Missing {
            at: at.clone(),
            missing,
        })
}

/// Puts a chain and a key together, checking that they belong together.
fn pair(
    chain: Vec<CertificateDer<'static>>,
    key: Arc<dyn SigningKey>,
) -> Result<Loaded, CertError> {
    let info = cert_info(chain.first().map_or(&[][..], |c| c.as_ref()))?;
    let certified = CertifiedKey::new(chain, key);
    match certified.keys_match() {
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
        Err(_) => return Err(CertError::KeyMismatch),
    }
    Ok(Loaded {
        key: Arc::new(certified),
        info,
    })
}

/// Refuses a certificate outside its validity period.
pub(crate) fn check_validity(info: &CertInfo, now: i64) -> Result<(), CertError> {
    if now >= info.not_after {
        return Err(CertError::Expired {
            not_after: info.not_after,
        });
    }
    if now < info.not_before {
        return Err(CertError::NotYetValid {
            not_before: info.not_before,
        });
    }
    Ok(())
}

/// One `ssls` entry, ready to resolve.
#[derive(Debug, Clone)]
struct SslSpec {
    id: Arc<str>,
    snis: Vec<String>,
    pair: KeyPairSpec,
}

/// The `ssls` of one configuration and the listener's fallback.
#[derive(Debug, Clone, Default)]
pub struct TlsSpec {
    ssls: Vec<SslSpec>,
    fallback_sni: Option<String>,
}

impl TlsSpec {
    /// Validates `ssls` (and `tls.fallback_sni`), parsing inline material.
    pub fn build(
        ssls: &[SslConfig],
        tls: Option<&TlsConfig>,
        env: EnvLookup<'_>,
    ) -> Result<Self, ConfigError> {
        let mut spec = Self::default();
        let mut ids = HashSet::new();
        let mut names: HashMap<String, Arc<str>> = HashMap::new();
        for (i, conf) in ssls.iter().enumerate() {
            let at = format!("ssls[{i}]");
            let id: Arc<str> = Arc::from(conf.id.clone().unwrap_or_else(|| i.to_string()));
            if !ids.insert(id.clone()) {
                return Err(invalid(
                    format!("{at}.id"),
                    format!("duplicate ssl id {id:?}"),
                ));
            }
            if let Some(kind) = conf.kind.as_deref()
                && kind != "server"
            {
                return Err(invalid(
                    format!("{at}.type"),
                    format!(
                        "{kind:?}: only \"server\" (client certificates go in an upstream's tls block)"
                    ),
                ));
            }
            if conf.status > 1 {
                return Err(invalid(format!("{at}.status"), "must be 0 or 1"));
            }
            let mut snis: Vec<String> = conf.sni.iter().chain(&conf.snis).cloned().collect();
            if snis.is_empty() {
                return Err(invalid(format!("{at}.snis"), "at least one server name"));
            }
            for sni in &mut snis {
                *sni = sni.to_ascii_lowercase();
                check_sni(sni).map_err(|why| invalid(format!("{at}.snis"), why))?;
            }
            let pair = KeyPairSpec::build(
                conf.cert.as_deref(),
                conf.key.as_ref().map(|k| k.expose_secret()),
                conf.pki.as_deref(),
                &at,
                ("cert", "key"),
                env,
            )?;
            if conf.status == 0 {
                continue;
            }
            for sni in &snis {
                if let Some(other) = names.insert(sni.clone(), id.clone()) {
                    return Err(invalid(
                        format!("{at}.snis"),
                        format!("{sni:?} is also served by ssl {other:?}"),
                    ));
                }
            }
            spec.ssls.push(SslSpec { id, snis, pair });
        }
        if let Some(fallback) = tls.and_then(|t| t.fallback_sni.as_deref()) {
            let fallback = fallback.to_ascii_lowercase();
            let covered = names.contains_key(&fallback)
                || fallback
                    .split_once('.')
                    .is_some_and(|(_, rest)| names.contains_key(&format!("*.{rest}")));
            if !covered {
                return Err(invalid(
                    "tls.fallback_sni",
                    format!("{fallback:?} is not a server name of any enabled ssl"),
                ));
            }
            spec.fallback_sni = Some(fallback);
        }
        Ok(spec)
    }

    /// The agent names the certificates need.
    pub fn agent_names(&self) -> impl Iterator<Item = &str> {
        self.ssls.iter().flat_map(|s| s.pair.agent_names())
    }

    /// Number of enabled `ssls`.
    pub fn len(&self) -> usize {
        self.ssls.len()
    }

    /// No enabled `ssls`.
    pub fn is_empty(&self) -> bool {
        self.ssls.is_empty()
    }

    /// What to serve given `snapshot`. Failures are logged by ssl id and reason (never
    /// the material); a changed serial is logged at info, against `previous`.
    pub fn resolve(
        &self,
        snapshot: Option<&SecretSnapshot>,
        previous: Option<&ServerCerts>,
        now: i64,
    ) -> ServerCerts {
        let mut certs = ServerCerts {
            fallback_sni: self.fallback_sni.clone(),
            ..ServerCerts::default()
        };
        for ssl in &self.ssls {
            let before = previous.and_then(|p| p.status(&ssl.id));
            let outcome = ssl.pair.resolve(snapshot, now).map(|loaded| {
                Arc::new(ServedCert {
                    id: ssl.id.clone(),
                    key: loaded.key,
                    info: loaded.info,
                    refused_logged: AtomicBool::new(false),
                })
            });
            match (&outcome, before) {
                (Ok(served), Some(Ok(old))) if old.info.serial == served.info.serial => {
                    tracing::debug!(ssl = %ssl.id, serial = %served.info.serial, "certificate unchanged");
                }
                (Ok(served), _) => tracing::info!(
                    ssl = %ssl.id, serial = %served.info.serial, not_after = served.info.not_after,
                    chain = served.key.cert.len(), "certificate installed for new handshakes"
                ),
                (Err(CertError::Missing { .. }), _) if snapshot.is_none() => {}
                (Err(e), Some(Err(old))) if old == e => {}
                (Err(e), Some(Ok(_))) => tracing::error!(
                    ssl = %ssl.id, error = %e,
                    "certificate not usable; handshakes for its names are refused (the previous one is no longer served)"
                ),
                (Err(e), _) => tracing::error!(
                    ssl = %ssl.id, error = %e,
                    "certificate not usable; handshakes for its names are refused"
                ),
            }
            if let Ok(served) = &outcome {
                for sni in &ssl.snis {
                    match sni.strip_prefix("*.") {
                        Some(suffix) => certs.wildcard.insert(suffix.to_owned(), served.clone()),
                        None => certs.exact.insert(sni.clone(), served.clone()),
                    };
                }
            }
            certs.ssls.push(SslStatus {
                id: ssl.id.clone(),
                cert: outcome,
            });
        }
        certs.fallback = certs
            .fallback_sni
            .as_deref()
            .and_then(|name| certs.find(name).cloned());
        certs
    }
}

/// `api.example.com` or `*.example.com`: lowercase DNS labels, a wildcard only as the
/// whole first label.
fn check_sni(sni: &str) -> Result<(), String> {
    let name = sni.strip_prefix("*.").unwrap_or(sni);
    if name.is_empty() || name.len() > 253 {
        return Err(format!("{sni:?}: not a server name"));
    }
    for label in name.split('.') {
        let ok = !label.is_empty()
            && label.len() <= 63
            && label
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-');
        if !ok {
            return Err(format!(
                "{sni:?}: not a server name (letters, digits, '-', and an optional leading '*.')"
            ));
        }
    }
    Ok(())
}

/// A certificate the listener serves.
#[derive(Debug)]
pub struct ServedCert {
    /// The `ssls` entry.
    pub id: Arc<str>,
    /// Chain and key.
    pub key: Arc<CertifiedKey>,
    /// Serial and validity of the leaf.
    pub info: CertInfo,
    /// Set once its expiry has been logged by the handshake path.
    refused_logged: AtomicBool,
}

impl ServedCert {
    /// True the first time (logs once per certificate, not per handshake).
    pub(crate) fn first_refusal(&self) -> bool {
        !self.refused_logged.swap(true, Ordering::Relaxed)
    }
}

/// The state of one `ssls` entry.
#[derive(Debug)]
pub struct SslStatus {
    /// Its id.
    pub id: Arc<str>,
    /// What it serves, or why nothing.
    pub cert: Result<Arc<ServedCert>, CertError>,
}

/// What the listener serves, by server name. Immutable; replaced whole.
#[derive(Debug, Default)]
pub struct ServerCerts {
    exact: HashMap<String, Arc<ServedCert>>,
    /// By the suffix after `*.`.
    wildcard: HashMap<String, Arc<ServedCert>>,
    fallback_sni: Option<String>,
    fallback: Option<Arc<ServedCert>>,
    /// Every enabled `ssls` entry, in configuration order.
    pub ssls: Vec<SslStatus>,
}

impl ServerCerts {
    /// The certificate for `sni` (lowercase): an exact name first, then a wildcard one
    /// label up.
    pub fn find(&self, sni: &str) -> Option<&Arc<ServedCert>> {
        self.exact.get(sni).or_else(|| {
            sni.split_once('.')
                .and_then(|(_, rest)| self.wildcard.get(rest))
        })
    }

    /// The certificate a handshake gets: by SNI, else the fallback.
    pub fn select(&self, sni: Option<&str>) -> Option<&Arc<ServedCert>> {
        sni.and_then(|name| self.find(name))
            .or(self.fallback.as_ref())
    }

    fn status(&self, id: &str) -> Option<Result<&Arc<ServedCert>, &CertError>> {
        self.ssls
            .iter()
            .find(|s| &*s.id == id)
            .map(|s| s.cert.as_ref())
    }

    /// Every enabled ssl has a certificate valid at `now` (true without any: a listener
    /// with no ssls refuses every handshake, which is what it is configured to do).
    pub fn ready(&self, now: i64) -> bool {
        self.unavailable(now).next().is_none()
    }

    /// The ssls without a usable certificate at `now`, with the reason.
    pub fn unavailable(&self, now: i64) -> impl Iterator<Item = (&str, String)> {
        self.ssls.iter().filter_map(move |s| match &s.cert {
            Ok(served) => check_validity(&served.info, now)
                .err()
                .map(|e| (&*s.id, e.to_string())),
            Err(e) => Some((&*s.id, e.to_string())),
        })
    }
}
