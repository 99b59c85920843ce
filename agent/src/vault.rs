//! Talking to Vault: the current token, logical reads of secrets, and (in
//! [`token`]) the token's lifecycle.
//!
//! Secret reads use our own HTTP client rather than vaultrs's so that the response
//! body is ours to zeroize and leased (non-KV) secrets can be read generically; login,
//! lookup, renewal and revocation go through vaultrs.

pub mod token;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use reqwest::StatusCode;
use reqwest::header::HeaderValue;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use tokio::sync::Notify;
use zeroize::{Zeroize, Zeroizing};

use std::time::{SystemTime, UNIX_EPOCH};

use crate::backoff::jitter_down;
use crate::config::{CertificateConfig, KvVersion, PKI_NAME_PREFIX, Settings};
use crate::metrics::Metrics;
use crate::name::SecretName;
use crate::secret::{FieldValue, SecretFields};

/// Largest response body accepted from Vault.
const MAX_BODY: usize = 4 << 20;

/// The token the agent currently holds, shared between the token manager (writer)
/// and secret reads (readers).
#[derive(Debug, Default)]
pub struct TokenCell {
    token: ArcSwapOption<SecretString>,
    /// Poked by a read that got 403, so the manager checks whether the token died.
    suspect: Notify,
}

impl TokenCell {
    /// The current token, if any.
    pub fn get(&self) -> Option<Arc<SecretString>> {
        self.token.load_full()
    }

    /// Publishes a new token (or none, while it is known to be invalid).
    pub fn set(&self, token: Option<SecretString>) {
        self.token.store(token.map(Arc::new));
    }

    /// Tells the manager a read was refused.
    pub fn report_denied(&self) {
        self.suspect.notify_one();
    }

    /// Waits until a read reports a refusal.
    pub async fn denied_reported(&self) {
        self.suspect.notified().await;
    }
}

/// What Vault said about a path.
#[derive(Debug)]
pub enum ReadOutcome {
    /// The secret's fields, and its lease when it has one.
    Found(SecretFields, Option<Lease>),
    /// Nothing exists at this path (404, or a deleted KV v2 version).
    NotFound,
    /// The token's policy does not allow reading the path.
    Denied,
}

/// A renewable lease on a dynamic secret.
#[derive(Debug, Clone)]
pub struct Lease {
    /// Vault's lease id (not a credential: it only names the lease).
    pub id: String,
    /// Duration granted.
    pub duration: Duration,
    /// Whether it can be extended.
    pub renewable: bool,
    /// When (after it was granted) to renew it or, if it cannot be renewed, to replace
    /// the secret.
    pub refresh_after: Duration,
}

/// A read that got no authoritative answer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VaultError {
    /// The agent holds no valid token right now.
    #[error("no valid Vault token")]
    NoToken,
    /// Vault could not be reached or timed out.
    #[error("Vault unreachable: {0}")]
    Transport(#[source] reqwest::Error),
    /// Vault answered with an unexpected status (sealed, 5xx, ...).
    #[error("Vault answered {0}")]
    Status(StatusCode),
    /// Vault's answer was not the JSON expected.
    #[error("unexpected response from Vault: {0}")]
    Decode(String),
    /// The HTTP client could not be built (bad CA file, ...).
    #[error("cannot set up the Vault client: {0}")]
    Setup(String),
}

/// A write Vault did not accept.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WriteError {
    /// The token's policy does not allow writing the path.
    #[error("Vault denied the write")]
    Denied,
    /// Vault failed or could not be reached.
    #[error(transparent)]
    Vault(VaultError),
}

/// The mount a path lives on, as `sys/internal/ui/mounts` reports it.
#[derive(Debug, Clone)]
struct Mount {
    /// Mount path with a trailing `/`, e.g. `kv/`.
    path: String,
    kind: MountKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MountKind {
    Kv1,
    Kv2,
    /// Any other engine: read as a plain logical path.
    Other,
}

/// Reads secrets from Vault with the token in [`TokenCell`].
#[derive(Debug)]
pub struct VaultReader {
    http: reqwest::Client,
    addr: String,
    prefix: String,
    kv_version: KvVersion,
    token: Arc<TokenCell>,
    metrics: Arc<Metrics>,
    mounts: Mutex<HashMap<String, Mount>>,
    certificates: HashMap<SecretName, CertificateConfig>,
}

impl VaultReader {
    /// A reader for the configured Vault.
    pub fn new(
        settings: &Settings,
        token: Arc<TokenCell>,
        metrics: Arc<Metrics>,
    ) -> Result<Self, VaultError> {
        Ok(Self {
            http: http_client(settings)?,
            addr: settings.vault_addr.clone(),
            prefix: settings.prefix.clone(),
            kv_version: settings.kv_version,
            token,
            metrics,
            mounts: Mutex::new(HashMap::new()),
            certificates: settings.certificates.iter().cloned().collect(),
        })
    }

    /// Reads `name`: a path relative to the prefix, or an `@pki/` certificate, which
    /// is issued anew.
    pub async fn read(&self, name: &SecretName) -> Result<ReadOutcome, VaultError> {
        if name.as_str().starts_with(PKI_NAME_PREFIX) {
            return match self.certificates.get(name) {
                Some(cert) => self.issue(cert).await,
                None => Ok(ReadOutcome::NotFound),
            };
        }
        let full = format!("{}/{}", self.prefix, name);
        let mount = self.mount_for(&full).await?;
        let url = match mount.kind {
            MountKind::Kv2 => {
                let rest = full.strip_prefix(&mount.path).unwrap_or(&full);
                format!("{}/v1/{}data/{}", self.addr, mount.path, rest)
            }
            MountKind::Kv1 | MountKind::Other => format!("{}/v1/{}", self.addr, full),
        };
        let body = match self.get(&url).await? {
            Reply::Body(body) => body,
            Reply::NotFound => return Ok(ReadOutcome::NotFound),
            Reply::Denied => {
                self.token.report_denied();
                return Ok(ReadOutcome::Denied);
            }
        };
        let decoded = if mount.kind == MountKind::Kv2 {
            serde_json::from_slice::<Kv2Response>(&body).map(|r| r.data.data.map(|d| (d, None)))
        } else {
            serde_json::from_slice::<LogicalResponse>(&body).map(|r| {
                let lease = (!r.lease_id.is_empty()).then(|| {
                    let duration = Duration::from_secs(r.lease_duration);
                    Lease {
                        id: r.lease_id,
                        duration,
                        renewable: r.renewable,
                        refresh_after: jitter_down(duration.mul_f64(2.0 / 3.0), 0.1),
                    }
                });
                r.data.map(|d| (d, lease))
            })
        };
        match decoded {
            // A KV v2 secret whose latest version was deleted answers with `data: null`.
            Ok(None) => Ok(ReadOutcome::NotFound),
            Ok(Some((fields, lease))) => Ok(ReadOutcome::Found(fields, lease)),
            // serde_json messages can quote the input: report only the kind and position.
            Err(e) => Err(VaultError::Decode(format!(
                "{full}: {:?} error at line {} column {}",
                e.classify(),
                e.line(),
                e.column()
            ))),
        }
    }

    /// Writes `fields` as the secret `name` (KV v1 or v2, as its mount says).
    pub async fn write(&self, name: &SecretName, fields: &SecretFields) -> Result<(), WriteError> {
        let full = format!("{}/{}", self.prefix, name);
        let mount = self.mount_for(&full).await.map_err(WriteError::Vault)?;
        let mut data = serde_json::Map::new();
        for (key, value) in fields.iter() {
            let text = std::str::from_utf8(value.expose()).map_err(|_| {
                WriteError::Vault(VaultError::Decode(format!("field {key:?} is not UTF-8")))
            })?;
            data.insert(key.to_owned(), serde_json::Value::String(text.to_owned()));
        }
        let (url, body) = match mount.kind {
            MountKind::Kv2 => {
                let rest = full.strip_prefix(&mount.path).unwrap_or(&full);
                let url = format!("{}/v1/{}data/{}", self.addr, mount.path, rest);
                (url, serde_json::json!({ "data": data }))
            }
            MountKind::Kv1 | MountKind::Other => (
                format!("{}/v1/{}", self.addr, full),
                serde_json::Value::Object(data),
            ),
        };
        // The JSON body is handed to the HTTP client, which drops it without zeroizing.
        let result = self.send(self.http.post(&url).json(&body)).await;
        drop(body);
        match result {
            Ok(Reply::Body(_)) => Ok(()),
            Ok(Reply::NotFound) => {
                Err(WriteError::Vault(VaultError::Status(StatusCode::NOT_FOUND)))
            }
            Ok(Reply::Denied) => Err(WriteError::Denied),
            Err(e) => Err(WriteError::Vault(e)),
        }
    }

    /// Issues a certificate from the PKI engine. Its "lease" is its lifetime: it is
    /// replaced at `renew_at` of it.
    async fn issue(&self, cert: &CertificateConfig) -> Result<ReadOutcome, VaultError> {
        let url = format!("{}/v1/{}/issue/{}", self.addr, cert.mount, cert.role);
        let mut body = serde_json::json!({
            "common_name": cert.common_name,
            "alt_names": cert.alt_names.join(","),
            "ip_sans": cert.ip_sans.join(","),
        });
        if let Some(ttl) = cert.ttl {
            body["ttl"] = serde_json::json!(format!("{}s", ttl.as_secs().max(1)));
        }
        let bytes = match self.send(self.http.post(&url).json(&body)).await? {
            Reply::Body(bytes) => bytes,
            Reply::NotFound => return Ok(ReadOutcome::NotFound),
            Reply::Denied => {
                self.token.report_denied();
                return Ok(ReadOutcome::Denied);
            }
        };
        let issued = serde_json::from_slice::<IssueResponse>(&bytes)
            .map_err(|e| VaultError::Decode(format!("{url}: {:?} error", e.classify())))?
            .data;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let lifetime = Duration::from_secs(issued.expiration).saturating_sub(now);
        let chain = if issued.ca_chain.is_empty() {
            issued.issuing_ca.clone()
        } else {
            issued.ca_chain.join("\n")
        };
        let fields: SecretFields = [
            (
                "certificate",
                FieldValue::new(issued.certificate.into_bytes()),
            ),
            ("private_key", issued.private_key),
            (
                "private_key_type",
                FieldValue::new(issued.private_key_type.into_bytes()),
            ),
            (
                "issuing_ca",
                FieldValue::new(issued.issuing_ca.into_bytes()),
            ),
            ("ca_chain", FieldValue::new(chain.into_bytes())),
            (
                "serial_number",
                FieldValue::new(issued.serial_number.into_bytes()),
            ),
            (
                "expiration",
                FieldValue::new(issued.expiration.to_string().into_bytes()),
            ),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        let lease = Lease {
            id: String::new(),
            duration: lifetime,
            renewable: false,
            refresh_after: jitter_down(lifetime.mul_f64(cert.renew_at), 0.1),
        };
        Ok(ReadOutcome::Found(fields, Some(lease)))
    }

    /// Extends a dynamic secret's lease; returns the new duration.
    pub async fn renew_lease(&self, lease: &Lease) -> Result<Duration, VaultError> {
        #[derive(Deserialize)]
        struct Renewed {
            lease_duration: u64,
        }
        let url = format!("{}/v1/sys/leases/renew", self.addr);
        let body = serde_json::json!({ "lease_id": lease.id });
        match self.send(self.http.put(&url).json(&body)).await? {
            Reply::Body(bytes) => serde_json::from_slice::<Renewed>(&bytes)
                .map(|r| Duration::from_secs(r.lease_duration))
                .map_err(|e| {
                    VaultError::Decode(format!("lease renewal: {:?} error", e.classify()))
                }),
            Reply::NotFound | Reply::Denied => Err(VaultError::Status(StatusCode::FORBIDDEN)),
        }
    }

    async fn mount_for(&self, full: &str) -> Result<Mount, VaultError> {
        let cached = self
            .mounts
            .lock()
            .ok()
            .and_then(|m| m.values().find(|m| full.starts_with(&m.path)).cloned());
        if let Some(mount) = cached {
            return Ok(mount);
        }
        if self.kv_version == KvVersion::V1 {
            // KV v1 reads need no mount: the logical path is the path.
            return Ok(Mount {
                path: String::new(),
                kind: MountKind::Kv1,
            });
        }
        let url = format!("{}/v1/sys/internal/ui/mounts/{}", self.addr, full);
        let mount = match self.get(&url).await? {
            Reply::Body(body) => {
                let info: MountInfo = serde_json::from_slice::<MountInfoResponse>(&body)
                    .map_err(|e| {
                        VaultError::Decode(format!("mount of {full}: {:?} error", e.classify()))
                    })?
                    .data;
                let version = info.options.and_then(|o| o.version).unwrap_or_default();
                let kind = match (info.kind.as_str(), self.kv_version, version.as_str()) {
                    ("kv" | "generic", KvVersion::V2, _) | ("kv", KvVersion::Auto, "2") => {
                        MountKind::Kv2
                    }
                    ("kv" | "generic", _, _) => MountKind::Kv1,
                    _ => MountKind::Other,
                };
                Mount {
                    path: info.path,
                    kind,
                }
            }
            // No mount covers the path (or we may not ask): fall back to what the config says.
            Reply::NotFound | Reply::Denied => {
                let first = full.split('/').next().unwrap_or_default();
                let kind = if self.kv_version == KvVersion::V2 {
                    MountKind::Kv2
                } else {
                    MountKind::Kv1
                };
                return Ok(Mount {
                    path: format!("{first}/"),
                    kind,
                });
            }
        };
        if let Ok(mut mounts) = self.mounts.lock() {
            mounts.insert(mount.path.clone(), mount.clone());
        }
        Ok(mount)
    }

    async fn get(&self, url: &str) -> Result<Reply, VaultError> {
        self.send(self.http.get(url)).await
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> Result<Reply, VaultError> {
        let token = self.token.get().ok_or(VaultError::NoToken)?;
        let mut header = HeaderValue::from_str(token.expose_secret())
            .map_err(|_| VaultError::Setup("token is not a valid header value".to_owned()))?;
        header.set_sensitive(true);
        Metrics::inc(&self.metrics.vault_requests);
        let result = self.exchange(request.header("X-Vault-Token", header)).await;
        if !matches!(result, Ok(Reply::Body(_) | Reply::NotFound)) {
            Metrics::inc(&self.metrics.vault_errors);
        }
        result
    }

    async fn exchange(&self, request: reqwest::RequestBuilder) -> Result<Reply, VaultError> {
        let mut response = request.send().await.map_err(VaultError::Transport)?;
        match response.status() {
            s if s.is_success() => {}
            StatusCode::NOT_FOUND => return Ok(Reply::NotFound),
            StatusCode::FORBIDDEN => return Ok(Reply::Denied),
            s => return Err(VaultError::Status(s)),
        }
        // Collect into a buffer we own and zeroize, wiping each chunk we can.
        let mut body = Zeroizing::new(Vec::new());
        while let Some(chunk) = response.chunk().await.map_err(VaultError::Transport)? {
            if body.len() + chunk.len() > MAX_BODY {
                return Err(VaultError::Decode("response larger than 4 MiB".to_owned()));
            }
            body.extend_from_slice(&chunk);
            if let Ok(mut owned) = chunk.try_into_mut() {
                owned.zeroize();
            }
        }
        Ok(Reply::Body(body))
    }
}

enum Reply {
    Body(Zeroizing<Vec<u8>>),
    NotFound,
    Denied,
}

/// The reqwest client for Vault: timeout, CA bundle, TLS verification always on.
fn http_client(settings: &Settings) -> Result<reqwest::Client, VaultError> {
    let mut builder = reqwest::Client::builder()
        .timeout(settings.timeout)
        .connect_timeout(settings.timeout);
    if let Some(ca) = &settings.ca_file {
        let pem = std::fs::read(ca)
            .map_err(|e| VaultError::Setup(format!("CA file {}: {e}", ca.display())))?;
        for cert in reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|e| VaultError::Setup(format!("CA file {}: {e}", ca.display())))?
        {
            builder = builder.add_root_certificate(cert);
        }
    }
    builder
        .build()
        .map_err(|e| VaultError::Setup(e.to_string()))
}

#[derive(Deserialize)]
struct LogicalResponse {
    #[serde(default)]
    lease_id: String,
    #[serde(default)]
    lease_duration: u64,
    #[serde(default)]
    renewable: bool,
    data: Option<SecretFields>,
}

#[derive(Deserialize)]
struct IssueResponse {
    data: IssuedCertificate,
}

#[derive(Deserialize)]
struct IssuedCertificate {
    certificate: String,
    issuing_ca: String,
    #[serde(default)]
    ca_chain: Vec<String>,
    private_key: FieldValue,
    private_key_type: String,
    serial_number: String,
    expiration: u64,
}

#[derive(Deserialize)]
struct Kv2Response {
    data: Kv2Data,
}

#[derive(Deserialize)]
struct Kv2Data {
    data: Option<SecretFields>,
}

#[derive(Deserialize)]
struct MountInfoResponse {
    data: MountInfo,
}

#[derive(Deserialize)]
struct MountInfo {
    path: String,
    #[serde(rename = "type")]
    kind: String,
    options: Option<MountOptions>,
}

#[derive(Deserialize)]
struct MountOptions {
    version: Option<String>,
}
