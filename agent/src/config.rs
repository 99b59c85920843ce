//! The agent's configuration file (YAML) and its validation.
//!
//! The `vault` block accepts the fields of APISIX's `vault` block (`host`, `timeout`,
//! `token`, `prefix`) so the seed tutorials' configuration carries over unchanged.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use secrecy::SecretString;
use serde::{Deserialize, Deserializer};

use crate::name::{NamePattern, SecretName};

/// A configuration that could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid YAML for this schema.
    #[error("invalid config file {path}: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// Why, with the field and position.
        source: serde_yaml_ng::Error,
    },
    /// A field has a value the agent cannot use.
    #[error("invalid config: {field}: {reason}")]
    Invalid {
        /// The field, as a dotted path.
        field: &'static str,
        /// Why.
        reason: String,
    },
}

fn invalid(field: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field,
        reason: reason.into(),
    }
}

/// The whole configuration file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// How to reach and authenticate to Vault.
    pub vault: VaultConfig,
    /// Which secrets to read and how often.
    #[serde(default)]
    pub secrets: SecretsConfig,
    /// The gRPC Unix socket.
    pub socket: SocketConfig,
    /// Who may connect, and which names each may read.
    #[serde(default)]
    pub peers: Vec<PeerConfig>,
    /// Health, readiness and metrics.
    #[serde(default)]
    pub ops: OpsConfig,
    /// Certificates issued by Vault's PKI engine and re-issued before they expire.
    #[serde(default)]
    pub certificates: Vec<CertificateConfig>,
    /// How many names one call, and one uid, may ask for.
    #[serde(default)]
    pub limits: Limits,
}

/// The `limits` block: bounds on what one peer can make the agent track.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Most names one `Get` or `Watch` may ask for (INVALID_ARGUMENT beyond). A gateway
    /// asks for all of its Vault-backed consumers in one Watch.
    #[serde(default = "default_names_per_call")]
    pub names_per_call: usize,
    /// Most names the open calls of one uid may hold at once, each call counting its
    /// own names (RESOURCE_EXHAUSTED beyond); released as calls and streams end.
    #[serde(default = "default_names_per_uid")]
    pub names_per_uid: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            names_per_call: default_names_per_call(),
            names_per_uid: default_names_per_uid(),
        }
    }
}

/// Largest value either limit may be set to.
pub const MAX_NAMES_LIMIT: usize = 1 << 20;

/// One certificate the agent requests from a PKI mount (`<mount>/issue/<role>`) and
/// re-issues at `renew_at` of its lifetime; served under the name `@pki/<name>`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertificateConfig {
    /// The certificate's name; clients ask for `@pki/<name>`.
    pub name: String,
    /// The PKI mount.
    #[serde(default = "default_pki_mount")]
    pub mount: String,
    /// The PKI role to issue with.
    pub role: String,
    /// The subject's common name.
    pub common_name: String,
    /// DNS subject alternative names.
    #[serde(default)]
    pub alt_names: Vec<String>,
    /// IP subject alternative names.
    #[serde(default)]
    pub ip_sans: Vec<String>,
    /// Requested lifetime (the role's default when absent).
    #[serde(default, deserialize_with = "optional_duration")]
    pub ttl: Option<Duration>,
    /// Fraction of the lifetime after which a new certificate is issued (with up to
    /// 10 % jitter earlier).
    #[serde(default = "default_renew_at")]
    pub renew_at: f64,
}

/// The name prefix of certificates the agent issues (not a KV path: `@` marks names the
/// agent manages itself).
pub const PKI_NAME_PREFIX: &str = "@pki/";

impl CertificateConfig {
    /// The name clients ask for.
    pub fn secret_name(&self) -> Result<SecretName, crate::name::NameError> {
        SecretName::parse(&format!("{PKI_NAME_PREFIX}{}", self.name))
    }
}

/// The `vault` block.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VaultConfig {
    /// Vault's address; `VAULT_ADDR` / `BAO_ADDR` when absent.
    #[serde(default)]
    pub host: Option<String>,
    /// Timeout of each Vault request.
    #[serde(default = "default_timeout", deserialize_with = "duration")]
    pub timeout: Duration,
    /// A static token (the seed's field).
    #[serde(default)]
    pub token: Option<SecretString>,
    /// A file holding the token, re-read on every re-authentication.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// AppRole login.
    #[serde(default)]
    pub approle: Option<AppRoleConfig>,
    /// Kubernetes service-account login.
    #[serde(default)]
    pub kubernetes: Option<KubernetesConfig>,
    /// The path all secret names are relative to, e.g. `kv/apisix`.
    pub prefix: String,
    /// CA bundle for an `https` Vault; `VAULT_CACERT` / `BAO_CACERT` when absent.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// KV engine version: `1`, `2` or `auto` (detected per mount).
    #[serde(default)]
    pub kv_version: KvVersion,
    /// Revoke the agent's token when it shuts down.
    #[serde(default)]
    pub revoke_on_shutdown: bool,
}

/// AppRole credentials, both read from files so they can be rotated on disk.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppRoleConfig {
    /// File holding the role id.
    pub role_id_file: PathBuf,
    /// File holding the secret id; re-read on every login.
    pub secret_id_file: PathBuf,
    /// Where the AppRole method is mounted.
    #[serde(default = "default_approle_mount")]
    pub mount: String,
}

/// Kubernetes auth: the pod's projected service-account token.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KubernetesConfig {
    /// The Vault role to log in as.
    pub role: String,
    /// The service-account token file; re-read on every login.
    #[serde(default = "default_k8s_token_path")]
    pub token_path: PathBuf,
    /// Where the Kubernetes method is mounted.
    #[serde(default = "default_k8s_mount")]
    pub mount: String,
}

/// Which KV engine version the prefix's mount runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum KvVersion {
    /// Ask Vault (`sys/internal/ui/mounts`) per mount.
    #[default]
    Auto,
    /// KV version 1.
    V1,
    /// KV version 2.
    V2,
}

impl<'de> Deserialize<'de> for KvVersion {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Int(1) => Ok(Self::V1),
            Raw::Int(2) => Ok(Self::V2),
            Raw::Text(t) if t == "1" => Ok(Self::V1),
            Raw::Text(t) if t == "2" => Ok(Self::V2),
            Raw::Text(t) if t == "auto" => Ok(Self::Auto),
            _ => Err(serde::de::Error::custom("kv_version must be 1, 2 or auto")),
        }
    }
}

/// The `secrets` block.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretsConfig {
    /// How often every watched secret is re-read.
    #[serde(default = "default_refresh", deserialize_with = "duration")]
    pub refresh_interval: Duration,
    /// Names read at start, before the agent reports ready.
    #[serde(default)]
    pub preload: Vec<String>,
}

impl Default for SecretsConfig {
    fn default() -> Self {
        Self {
            refresh_interval: default_refresh(),
            preload: Vec::new(),
        }
    }
}

/// The `socket` block.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SocketConfig {
    /// Path of the Unix socket.
    pub path: PathBuf,
    /// Permission bits of the socket, octal text such as `"0660"`.
    #[serde(default = "default_socket_mode", deserialize_with = "octal_mode")]
    pub mode: u32,
    /// Group (name or numeric gid) given the socket and its directory.
    #[serde(default)]
    pub group: Option<String>,
}

/// One entry of `peers`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerConfig {
    /// A label for logs and metrics.
    pub name: String,
    /// Peer uids that match this entry.
    #[serde(default)]
    pub uids: Vec<u32>,
    /// Peer gids that match this entry.
    #[serde(default)]
    pub gids: Vec<u32>,
    /// Names this peer may read: exact, or a prefix ending in `*`.
    pub paths: Vec<String>,
    /// Names this peer may write with `Put` (none by default).
    #[serde(default)]
    pub write_paths: Vec<String>,
}

/// The `ops` block.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpsConfig {
    /// Address of the HTTP listener for `/healthz`, `/readyz` and `/metrics`.
    #[serde(default)]
    pub listen: Option<SocketAddr>,
}

/// How the agent authenticates, after validation.
#[derive(Debug, Clone)]
pub enum AuthMethod {
    /// A static token from the config or `VAULT_TOKEN`.
    Token(SecretString),
    /// A token read from a file.
    TokenFile(PathBuf),
    /// AppRole login.
    AppRole {
        /// Role id file.
        role_id_file: PathBuf,
        /// Secret id file.
        secret_id_file: PathBuf,
        /// Mount.
        mount: String,
    },
    /// Kubernetes login.
    Kubernetes {
        /// Vault role.
        role: String,
        /// Service-account token file.
        token_path: PathBuf,
        /// Mount.
        mount: String,
    },
}

impl AuthMethod {
    /// Whether the agent can obtain a new token on its own once this one is gone.
    pub fn can_reauthenticate(&self) -> bool {
        !matches!(self, Self::Token(_))
    }

    /// A label for logs and metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Token(_) => "token",
            Self::TokenFile(_) => "token_file",
            Self::AppRole { .. } => "approle",
            Self::Kubernetes { .. } => "kubernetes",
        }
    }
}

/// One peer policy, after validation.
#[derive(Debug, Clone)]
pub struct PeerPolicy {
    /// Label.
    pub name: String,
    /// Matching uids.
    pub uids: Vec<u32>,
    /// Matching gids.
    pub gids: Vec<u32>,
    /// Allowed names.
    pub paths: Vec<NamePattern>,
    /// Names the peer may write.
    pub write_paths: Vec<NamePattern>,
}

impl PeerPolicy {
    /// Whether a peer with these credentials is covered by this policy.
    pub fn matches(&self, uid: u32, gid: u32) -> bool {
        self.uids.contains(&uid) || self.gids.contains(&gid)
    }

    /// Whether this policy lets its peer read `name`.
    pub fn allows(&self, name: &SecretName) -> bool {
        self.paths.iter().any(|p| p.matches(name))
    }
}

/// The configuration after validation, in the shapes the agent runs with.
#[derive(Debug)]
pub struct Settings {
    /// Vault address, without a trailing slash.
    pub vault_addr: String,
    /// Per-request timeout.
    pub timeout: Duration,
    /// Authentication.
    pub auth: AuthMethod,
    /// Prefix of every name, without slashes at either end.
    pub prefix: String,
    /// CA bundle.
    pub ca_file: Option<PathBuf>,
    /// KV version.
    pub kv_version: KvVersion,
    /// Revoke on shutdown.
    pub revoke_on_shutdown: bool,
    /// Refresh period.
    pub refresh_interval: Duration,
    /// Names to load before ready.
    pub preload: Vec<SecretName>,
    /// Socket.
    pub socket: SocketConfig,
    /// Peer policies; empty means "the agent's own uid, every name".
    pub peers: Vec<PeerPolicy>,
    /// Ops listener.
    pub ops_listen: Option<SocketAddr>,
    /// Certificates to issue, by their served name.
    pub certificates: Vec<(SecretName, CertificateConfig)>,
    /// Names per call and per uid.
    pub limits: Limits,
}

impl Settings {
    /// Reads and validates the config file, with environment fallbacks for the
    /// Vault address, token and CA (each fallback is logged by the caller).
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let config: Config =
            serde_yaml_ng::from_str(&text).map_err(|source| ConfigError::Parse {
                path: path.to_path_buf(),
                source,
            })?;
        Self::from_config(config, &|key| std::env::var(key).ok())
    }

    /// Validates a parsed config; `env` looks up environment variables.
    pub fn from_config(
        config: Config,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let vault = config.vault;
        let vault_addr = vault
            .host
            .filter(|h| !h.is_empty())
            .or_else(|| env("VAULT_ADDR"))
            .or_else(|| env("BAO_ADDR"))
            .ok_or_else(|| {
                invalid(
                    "vault.host",
                    "missing (and neither VAULT_ADDR nor BAO_ADDR is set)",
                )
            })?;
        let vault_addr = vault_addr.trim_end_matches('/').to_owned();
        if !(vault_addr.starts_with("http://") || vault_addr.starts_with("https://")) {
            return Err(invalid(
                "vault.host",
                format!("{vault_addr:?} must start with http:// or https://"),
            ));
        }
        if vault.timeout.is_zero() {
            return Err(invalid("vault.timeout", "must be greater than zero"));
        }

        let mut methods = Vec::new();
        if let Some(token) = vault.token {
            methods.push(AuthMethod::Token(token));
        }
        if let Some(path) = vault.token_file {
            methods.push(AuthMethod::TokenFile(path));
        }
        if let Some(a) = vault.approle {
            methods.push(AuthMethod::AppRole {
                role_id_file: a.role_id_file,
                secret_id_file: a.secret_id_file,
                mount: a.mount,
            });
        }
        if let Some(k) = vault.kubernetes {
            if k.role.is_empty() {
                return Err(invalid("vault.kubernetes.role", "must not be empty"));
            }
            methods.push(AuthMethod::Kubernetes {
                role: k.role,
                token_path: k.token_path,
                mount: k.mount,
            });
        }
        if methods.is_empty()
            && let Some(token) = env("VAULT_TOKEN").or_else(|| env("BAO_TOKEN"))
        {
            methods.push(AuthMethod::Token(SecretString::from(token)));
        }
        let auth = match methods.len() {
            1 => methods.remove(0),
            0 => {
                return Err(invalid(
                    "vault",
                    "no authentication: set one of token, token_file, approle, kubernetes (or VAULT_TOKEN)",
                ));
            }
            _ => {
                return Err(invalid(
                    "vault",
                    "set only one of token, token_file, approle, kubernetes",
                ));
            }
        };

        let prefix = vault.prefix.trim_matches('/').to_owned();
        if prefix.is_empty() {
            return Err(invalid("vault.prefix", "must name a mount, e.g. kv/apisix"));
        }
        SecretName::parse(&prefix).map_err(|e| invalid("vault.prefix", e.to_string()))?;

        let ca_file = vault
            .ca_file
            .or_else(|| env("VAULT_CACERT").map(PathBuf::from))
            .or_else(|| env("BAO_CACERT").map(PathBuf::from));

        let refresh_interval = config.secrets.refresh_interval;
        if refresh_interval < Duration::from_millis(100) {
            return Err(invalid(
                "secrets.refresh_interval",
                "must be at least 100ms",
            ));
        }
        let preload = config
            .secrets
            .preload
            .iter()
            .map(|n| {
                SecretName::parse(n).map_err(|e| invalid("secrets.preload", format!("{n:?}: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;

        if config.socket.mode & !0o777 != 0 {
            return Err(invalid(
                "socket.mode",
                "only permission bits (at most 0777) are allowed",
            ));
        }
        if config.socket.path.as_os_str().is_empty() || config.socket.path.parent().is_none() {
            return Err(invalid("socket.path", "must be a file path"));
        }

        let peers = config
            .peers
            .into_iter()
            .map(|p| {
                if p.uids.is_empty() && p.gids.is_empty() {
                    return Err(invalid(
                        "peers.uids",
                        format!("peer {:?} lists no uid and no gid", p.name),
                    ));
                }
                let paths = p
                    .paths
                    .iter()
                    .map(|s| {
                        NamePattern::parse(s)
                            .map_err(|e| invalid("peers.paths", format!("{s:?}: {e}")))
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                let write_paths = p
                    .write_paths
                    .iter()
                    .map(|s| {
                        NamePattern::parse(s)
                            .ok()
                            .filter(|_| !s.starts_with('@'))
                            .ok_or_else(|| {
                                invalid(
                                    "peers.write_paths",
                                    format!("{s:?}: not a KV name pattern"),
                                )
                            })
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(PeerPolicy {
                    name: p.name,
                    uids: p.uids,
                    gids: p.gids,
                    paths,
                    write_paths,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;

        let mut certificates: Vec<(SecretName, CertificateConfig)> = Vec::new();
        for cert in config.certificates {
            let name = cert
                .secret_name()
                .ok()
                .filter(|_| !cert.name.contains('/'))
                .ok_or_else(|| {
                    invalid(
                        "certificates.name",
                        format!("{:?} is not a single path segment", cert.name),
                    )
                })?;
            if certificates.iter().any(|(n, _)| *n == name) {
                return Err(invalid(
                    "certificates.name",
                    format!("{:?} is listed twice", cert.name),
                ));
            }
            if cert.common_name.is_empty() || cert.role.is_empty() || cert.mount.is_empty() {
                return Err(invalid(
                    "certificates",
                    format!("{:?}: mount, role and common_name are required", cert.name),
                ));
            }
            if !(0.1..=0.95).contains(&cert.renew_at) {
                return Err(invalid(
                    "certificates.renew_at",
                    "must be between 0.1 and 0.95",
                ));
            }
            certificates.push((name, cert));
        }

        let limits = config.limits;
        if !(1..=MAX_NAMES_LIMIT).contains(&limits.names_per_uid) {
            return Err(invalid(
                "limits.names_per_uid",
                format!(
                    "{} is out of range: must be between 1 and {MAX_NAMES_LIMIT}",
                    limits.names_per_uid
                ),
            ));
        }
        if !(1..=limits.names_per_uid).contains(&limits.names_per_call) {
            return Err(invalid(
                "limits.names_per_call",
                format!(
                    "{} is out of range: must be between 1 and limits.names_per_uid ({})",
                    limits.names_per_call, limits.names_per_uid
                ),
            ));
        }

        Ok(Self {
            limits,
            certificates,
            vault_addr,
            timeout: vault.timeout,
            auth,
            prefix,
            ca_file,
            kv_version: vault.kv_version,
            revoke_on_shutdown: vault.revoke_on_shutdown,
            refresh_interval,
            preload,
            socket: config.socket,
            peers,
            ops_listen: config.ops.listen,
        })
    }
}

fn default_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_refresh() -> Duration {
    Duration::from_secs(30)
}
fn default_names_per_call() -> usize {
    16_384
}
fn default_names_per_uid() -> usize {
    65_536
}
fn default_pki_mount() -> String {
    "pki".to_owned()
}
fn default_renew_at() -> f64 {
    2.0 / 3.0
}
fn default_socket_mode() -> u32 {
    0o660
}
fn default_approle_mount() -> String {
    "approle".to_owned()
}
fn default_k8s_mount() -> String {
    "kubernetes".to_owned()
}
fn default_k8s_token_path() -> PathBuf {
    PathBuf::from("/var/run/secrets/kubernetes.io/serviceaccount/token")
}

/// Integer seconds (as in APISIX's `timeout: 10`) or a humantime string (`"30s"`).
fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Secs(u64),
        Text(String),
    }
    match Raw::deserialize(d)? {
        Raw::Secs(s) => Ok(Duration::from_secs(s)),
        Raw::Text(t) => humantime::parse_duration(&t)
            .map_err(|e| serde::de::Error::custom(format!("{t:?} is not a duration: {e}"))),
    }
}

fn optional_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    duration(d).map(Some)
}

fn octal_mode<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    let text = String::deserialize(d)?;
    u32::from_str_radix(text.trim_start_matches("0o"), 8).map_err(|_| {
        serde::de::Error::custom(format!("{text:?} is not an octal mode such as \"0660\""))
    })
}

#[cfg(test)]
#[path = "config/tests.rs"]
mod tests;
