//! The gateway's declarative configuration file (YAML, in the shape of APISIX's
//! standalone `apisix.yaml`: `routes`, `upstreams`, `consumers`, `plugin_attr`), plus the
//! gateway's own settings (listen addresses, agent socket).
//!
//! This module only parses. Semantic checks (duplicate ids, unknown upstreams, key
//! material that does not parse) happen when the runtime structures are built from it
//! (see [`crate::runtime`]), so `check-config` and a reload run exactly the same checks.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use secrecy::SecretString;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};

use crate::jwt::Algorithm;
use crate::limits::Limits;
pub use crate::tls::config::{SslConfig, TlsConfig, UpstreamTlsConfig};

/// A configuration that could not be loaded or is not usable.
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
        /// Why, with the field path and position.
        source: serde_yaml_ng::Error,
    },
    /// A field has a value the gateway cannot use.
    #[error("invalid config: {field}: {reason}")]
    Invalid {
        /// The field, as a path such as `routes[2].upstream.nodes`.
        field: String,
        /// Why.
        reason: String,
    },
}

/// Builds a [`ConfigError::Invalid`].
pub(crate) fn invalid(field: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field: field.into(),
        reason: reason.into(),
    }
}

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The proxy listener.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// `/healthz`, `/readyz` and `/metrics`; off when absent.
    #[serde(default)]
    pub status_listen: Option<SocketAddr>,
    /// Where the agent serves secrets. Required as soon as a consumer uses `vault: {}`
    /// or a `$secret://` reference.
    #[serde(default)]
    pub agent: Option<AgentConfig>,
    /// Global plugin settings (APISIX's `plugin_attr`).
    #[serde(default)]
    pub plugin_attr: PluginAttr,
    /// How long in-flight requests may take to finish after shutdown begins.
    #[serde(default = "default_shutdown_grace", with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// One info-level log line per request (target `keygate_gateway::access`).
    #[serde(default)]
    pub access_log: bool,
    /// Limits on request heads, targets, slow and idle connections and their number.
    #[serde(default)]
    pub limits: Limits,
    /// Routes.
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
    /// Upstreams that routes refer to by `upstream_id`.
    #[serde(default)]
    pub upstreams: Vec<UpstreamConfig>,
    /// Consumers and their credentials.
    #[serde(default)]
    pub consumers: Vec<ConsumerConfig>,
    /// The APISIX-compatible Admin API; off when absent.
    #[serde(default)]
    pub admin: Option<AdminConfig>,
    /// The HTTPS listener; off when absent.
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// Certificates the HTTPS listener serves, chosen by SNI (APISIX's SSL objects).
    #[serde(default)]
    pub ssls: Vec<SslConfig>,
    /// `routes`, `upstreams`, `consumers` and `ssls` as JSON values, as written: what the
    /// Admin API shows for the file's resources and what the gateway runs (the catalog
    /// is built from them; the typed lists above only check the file as it loads). Empty
    /// in the file `Control` keeps: they are wiped once the catalog holds them.
    #[serde(skip)]
    pub raw: RawResources,
}

/// The resource lists of a configuration file as JSON values, in file order. They may
/// hold literal secrets: `Debug` prints only how many there are.
#[derive(Clone, Default)]
pub struct RawResources {
    /// `routes`.
    pub routes: Vec<serde_json::Value>,
    /// `upstreams`.
    pub upstreams: Vec<serde_json::Value>,
    /// `consumers`.
    pub consumers: Vec<serde_json::Value>,
    /// `ssls`.
    pub ssls: Vec<serde_json::Value>,
}

/// Every string of every resource (literal `secret`s, `key`s) is zeroized on drop, on
/// whichever path drops it: the parsed file, its clones for a check or a reload, a file
/// refused at load.
impl Drop for RawResources {
    fn drop(&mut self) {
        for list in [
            &mut self.routes,
            &mut self.upstreams,
            &mut self.consumers,
            &mut self.ssls,
        ] {
            for value in std::mem::take(list) {
                crate::secrets::wipe(value);
            }
        }
    }
}

impl std::fmt::Debug for RawResources {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawResources")
            .field("routes", &self.routes.len())
            .field("upstreams", &self.upstreams.len())
            .field("consumers", &self.consumers.len())
            .field("ssls", &self.ssls.len())
            .finish()
    }
}

/// The resource lists only, for [`RawResources`].
#[derive(Deserialize)]
struct RawLists {
    #[serde(default)]
    routes: Vec<serde_json::Value>,
    #[serde(default)]
    upstreams: Vec<serde_json::Value>,
    #[serde(default)]
    consumers: Vec<serde_json::Value>,
    #[serde(default)]
    ssls: Vec<serde_json::Value>,
}

/// The `admin` block: the APISIX-compatible Admin API (`/apisix/admin/...`).
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Its own listener (APISIX's default port 9180, loopback only by default).
    #[serde(default = "default_admin_listen")]
    pub listen: SocketAddr,
    /// The `X-API-KEY`: a literal, `$env://NAME` or `$secret://vault/<path>/<field>`
    /// (served by the agent, so no admin credential has to sit in this file).
    pub key: SecretString,
    /// Where changes made through the Admin API are persisted (created 0700).
    pub state_dir: PathBuf,
    /// Largest accepted request body, bytes (APISIX: 1.5 MiB).
    #[serde(default = "default_admin_max_body")]
    pub max_body: usize,
    /// A consumer written with `vault: {}` and an inline credential has the credential
    /// stored in Vault through the agent's `Put` (the agent's `write_paths` must allow
    /// `consumer/<username>/<plugin>`); only the reference is kept. Off: such a consumer
    /// is refused, as in the file.
    #[serde(default)]
    pub vault_write_through: bool,
}

impl std::fmt::Debug for AdminConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminConfig")
            .field("listen", &self.listen)
            .field("key", &"[REDACTED]")
            .field("state_dir", &self.state_dir)
            .field("max_body", &self.max_body)
            .field("vault_write_through", &self.vault_write_through)
            .finish()
    }
}

fn default_admin_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9180))
}

fn default_admin_max_body() -> usize {
    1536 * 1024
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9080))
}

fn default_shutdown_grace() -> Duration {
    Duration::from_secs(10)
}

impl Config {
    /// Reads and parses `path` (no semantic checks; see [`crate::runtime`]).
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text).map_err(|source| ConfigError::Parse {
            path: path.to_path_buf(),
            source,
        })
    }

    /// Parses YAML text.
    pub fn parse(text: &str) -> Result<Self, serde_yaml_ng::Error> {
        let mut config: Self = serde_yaml_ng::from_str(text)?;
        // The same resources as JSON values: what the Admin API shows and what the
        // gateway runs (the catalog is built from them, the typed lists are dropped).
        let raw: RawLists = serde_yaml_ng::from_str(text)?;
        let raw = RawResources {
            routes: raw.routes,
            upstreams: raw.upstreams,
            consumers: raw.consumers,
            ssls: raw.ssls,
        };
        // YAML reads `key: 1001` into a text field as "1001"; the JSON the gateway runs
        // has a number there, which a text field refuses (APISIX's schema does too).
        // Refused here, by field, rather than at start or reload.
        let checked = check_as_json::<RouteConfig>("routes", &raw.routes)
            .and_then(|()| check_as_json::<UpstreamConfig>("upstreams", &raw.upstreams))
            .and_then(|()| check_as_json::<ConsumerConfig>("consumers", &raw.consumers))
            .and_then(|()| check_as_json::<SslConfig>("ssls", &raw.ssls));
        checked?;
        config.raw = raw;
        Ok(config)
    }
}

/// The `agent` block.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// The agent's Unix socket.
    pub socket: PathBuf,
    /// First reconnect delay after the Watch stream ends or fails.
    #[serde(default = "default_backoff_min", with = "humantime_serde")]
    pub backoff_min: Duration,
    /// Longest reconnect delay. Short by default: dialling a Unix socket costs nothing,
    /// and the gateway should pick up a restarted agent within about a second.
    #[serde(default = "default_backoff_max", with = "humantime_serde")]
    pub backoff_max: Duration,
}

fn default_backoff_min() -> Duration {
    Duration::from_millis(100)
}

fn default_backoff_max() -> Duration {
    // A redial lands at most 0.5 s after the agent's socket comes back, leaving half a
    // second for the handshake and first snapshot within the 1 s reconnect promise.
    Duration::from_millis(500)
}

/// APISIX's `plugin_attr`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginAttr {
    /// `jwt-auth` settings.
    #[serde(default, rename = "jwt-auth")]
    pub jwt_auth: JwtAuthAttr,
}

/// `plugin_attr.jwt-auth`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtAuthAttr {
    /// Serve `GET /apisix/plugin/jwt/sign?key=...`. Off by default: anyone who can reach
    /// it can mint tokens for any consumer key they know.
    #[serde(default)]
    pub sign_endpoint: bool,
}

/// One route.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Identifier (defaults to the route's position in the list).
    #[serde(default, deserialize_with = "string_or_number")]
    pub id: Option<String>,
    /// Free text.
    #[serde(default)]
    pub name: Option<String>,
    /// Free text.
    #[serde(default)]
    pub desc: Option<String>,
    /// APISIX labels (kept, not used for routing).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// A path: exact, or a prefix when it ends with `*`.
    #[serde(default)]
    pub uri: Option<String>,
    /// Several paths.
    #[serde(default)]
    pub uris: Vec<String>,
    /// Allowed methods; all when empty.
    #[serde(default)]
    pub methods: Vec<String>,
    /// A host (`*.example.com` wildcards allowed).
    #[serde(default)]
    pub host: Option<String>,
    /// Several hosts.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// Higher wins among routes matching the same path.
    #[serde(default)]
    pub priority: i64,
    /// 1 enabled (default), 0 disabled.
    #[serde(default = "default_status")]
    pub status: u8,
    /// Plugins on this route.
    #[serde(default)]
    pub plugins: RoutePlugins,
    /// An inline upstream.
    #[serde(default)]
    pub upstream: Option<UpstreamConfig>,
    /// Or a reference to `upstreams[].id`.
    #[serde(default, deserialize_with = "string_or_number")]
    pub upstream_id: Option<String>,
}

fn default_status() -> u8 {
    1
}

/// `routes[].plugins` (at most one authentication plugin per route).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoutePlugins {
    /// `jwt-auth`.
    #[serde(default, rename = "jwt-auth")]
    pub jwt_auth: Option<JwtAuthRouteConfig>,
    /// `key-auth`.
    #[serde(default, rename = "key-auth")]
    pub key_auth: Option<KeyAuthRouteConfig>,
    /// `basic-auth`.
    #[serde(default, rename = "basic-auth")]
    pub basic_auth: Option<BasicAuthRouteConfig>,
}

/// `routes[].plugins.key-auth`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyAuthRouteConfig {
    /// Request header carrying the key.
    #[serde(default = "default_apikey")]
    pub header: String,
    /// Query parameter carrying the key.
    #[serde(default = "default_apikey")]
    pub query: String,
    /// Remove the key from the request before proxying it.
    #[serde(default)]
    pub hide_credentials: bool,
    /// A consumer to proceed as when authentication fails.
    #[serde(default)]
    pub anonymous_consumer: Option<String>,
}

fn default_apikey() -> String {
    "apikey".to_owned()
}

/// `routes[].plugins.basic-auth`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BasicAuthRouteConfig {
    /// Remove the Authorization header before proxying.
    #[serde(default)]
    pub hide_credentials: bool,
    /// A consumer to proceed as when authentication fails.
    #[serde(default)]
    pub anonymous_consumer: Option<String>,
}

/// `routes[].plugins.jwt-auth` (APISIX 3.x attributes, plus Kong's
/// `claims_to_verify` and `maximum_expiration`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtAuthRouteConfig {
    /// Request header carrying the token.
    #[serde(default = "default_jwt_header")]
    pub header: String,
    /// Query parameter carrying the token.
    #[serde(default = "default_jwt_param")]
    pub query: String,
    /// Cookie carrying the token.
    #[serde(default = "default_jwt_param")]
    pub cookie: String,
    /// Remove the token from the request before proxying it.
    #[serde(default)]
    pub hide_credentials: bool,
    /// The claim naming the consumer's `key`.
    #[serde(default = "default_key_claim")]
    pub key_claim_name: String,
    /// A consumer to proceed as when authentication fails.
    #[serde(default)]
    pub anonymous_consumer: Option<String>,
    /// Claims that must be present (and valid).
    #[serde(default)]
    pub claims_to_verify: Vec<TimeClaim>,
    /// If non-zero, `exp` must be present and at most this many seconds ahead.
    #[serde(default)]
    pub maximum_expiration: u64,
}

impl Default for JwtAuthRouteConfig {
    fn default() -> Self {
        Self {
            header: default_jwt_header(),
            query: default_jwt_param(),
            cookie: default_jwt_param(),
            hide_credentials: false,
            key_claim_name: default_key_claim(),
            anonymous_consumer: None,
            claims_to_verify: Vec::new(),
            maximum_expiration: 0,
        }
    }
}

fn default_jwt_header() -> String {
    "authorization".to_owned()
}

fn default_jwt_param() -> String {
    "jwt".to_owned()
}

fn default_key_claim() -> String {
    "key".to_owned()
}

/// A registered time claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TimeClaim {
    /// Expiry.
    Exp,
    /// Not before.
    Nbf,
}

/// An upstream, inline in a route or in `upstreams`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// Identifier (required in `upstreams`, ignored inline).
    #[serde(default, deserialize_with = "string_or_number")]
    pub id: Option<String>,
    /// Free text.
    #[serde(default)]
    pub name: Option<String>,
    /// Free text.
    #[serde(default)]
    pub desc: Option<String>,
    /// APISIX labels (kept, not used).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Load balancing.
    #[serde(default, rename = "type")]
    pub lb: LbType,
    /// With `type: chash`: what the hash key comes from.
    #[serde(default)]
    pub hash_on: HashOn,
    /// With `type: chash`: the variable, header or cookie name (`remote_addr` by default
    /// for `vars`).
    #[serde(default)]
    pub key: Option<String>,
    /// `{"host:port": weight}` or `[{host, port, weight}]`.
    pub nodes: Nodes,
    /// `http` or `https`.
    #[serde(default = "default_scheme")]
    pub scheme: String,
    /// With `scheme: https`: the CA to verify the upstream against, a client
    /// certificate for mutual TLS, the server name.
    #[serde(default)]
    pub tls: Option<UpstreamTlsConfig>,
    /// Timeouts in seconds.
    #[serde(default)]
    pub timeout: Option<TimeoutConfig>,
    /// Extra attempts on other nodes; default: number of nodes - 1.
    #[serde(default)]
    pub retries: Option<u32>,
    /// The Host header sent upstream.
    #[serde(default)]
    pub pass_host: PassHost,
    /// With `pass_host: rewrite`.
    #[serde(default)]
    pub upstream_host: Option<String>,
    /// Passive health checking.
    #[serde(default)]
    pub checks: Option<ChecksConfig>,
}

fn default_scheme() -> String {
    "http".to_owned()
}

/// `upstream.type`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LbType {
    /// Weighted round robin.
    #[default]
    Roundrobin,
    /// Fewest in-flight requests, weighted.
    LeastConn,
    /// Consistent hashing on a request property (`hash_on` and `key`).
    Chash,
}

/// `upstream.hash_on`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HashOn {
    /// A variable: `remote_addr`, `uri`, `host`, `arg_<name>`, `http_<name>`.
    #[default]
    Vars,
    /// A request header named by `key`.
    Header,
    /// A cookie named by `key`.
    Cookie,
    /// The authenticated consumer's name.
    Consumer,
}

/// `upstream.pass_host`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PassHost {
    /// The client's Host.
    #[default]
    Pass,
    /// The node's `host:port`.
    Node,
    /// `upstream_host`.
    Rewrite,
}

/// `upstream.nodes` in either of APISIX's two shapes.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Nodes {
    /// `{"127.0.0.1:80": 1}`.
    Map(BTreeMap<String, u32>),
    /// `[{host: 127.0.0.1, port: 80, weight: 1}]`.
    List(Vec<NodeConfig>),
}

/// One entry of the list form of `nodes`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// Host name or address.
    pub host: String,
    /// Port (default 80).
    #[serde(default)]
    pub port: Option<u16>,
    /// Weight (default 1; 0 disables the node).
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// Ignored (APISIX's per-node priority).
    #[serde(default)]
    pub priority: Option<i64>,
}

fn default_weight() -> u32 {
    1
}

/// `upstream.timeout`, in seconds (fractions allowed), as in APISIX.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimeoutConfig {
    /// TCP connect.
    #[serde(default = "default_timeout")]
    pub connect: f64,
    /// Sending the request (added to `read` for the wait for the response head).
    #[serde(default = "default_timeout")]
    pub send: f64,
    /// Waiting for the response head, and between two reads of its body.
    #[serde(default = "default_timeout")]
    pub read: f64,
}

fn default_timeout() -> f64 {
    60.0
}

impl Default for TimeoutConfig {
    fn default() -> Self {
        Self {
            connect: default_timeout(),
            send: default_timeout(),
            read: default_timeout(),
        }
    }
}

/// `upstream.checks`.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChecksConfig {
    /// Passive checks: judge nodes by the outcome of real requests.
    pub passive: PassiveCheckConfig,
}

/// `upstream.checks.passive`.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PassiveCheckConfig {
    /// Consecutive failures (connect errors, timeouts, 502/503/504) that eject a node.
    #[serde(default = "default_failures")]
    pub failures: u32,
    /// How long an ejected node is skipped before it gets traffic again.
    #[serde(default = "default_eject", with = "humantime_serde")]
    pub eject: Duration,
}

fn default_failures() -> u32 {
    3
}

fn default_eject() -> Duration {
    Duration::from_secs(10)
}

/// One consumer.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsumerConfig {
    /// Unique name; also the Vault path segment for `vault: {}`.
    pub username: String,
    /// Free text.
    #[serde(default)]
    pub desc: Option<String>,
    /// APISIX labels (kept, not used).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Credentials per plugin.
    #[serde(default)]
    pub plugins: ConsumerPlugins,
}

/// `consumers[].plugins`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsumerPlugins {
    /// `jwt-auth`.
    #[serde(default, rename = "jwt-auth")]
    pub jwt_auth: Option<JwtAuthConsumerConfig>,
    /// `key-auth`.
    #[serde(default, rename = "key-auth")]
    pub key_auth: Option<KeyAuthConsumerConfig>,
    /// `basic-auth`.
    #[serde(default, rename = "basic-auth")]
    pub basic_auth: Option<BasicAuthConsumerConfig>,
}

/// `consumers[].plugins.key-auth`: the API key (literal, `$env://`, `$secret://`), or
/// `vault: {}` for field `key` of `consumer/<username>/key-auth`.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyAuthConsumerConfig {
    /// The API key.
    #[serde(default)]
    pub key: Option<SecretString>,
    /// Take the key from the agent.
    #[serde(default)]
    pub vault: Option<VaultRef>,
}

impl std::fmt::Debug for KeyAuthConsumerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyAuthConsumerConfig")
            .field("key", &self.key.as_ref().map(|_| "[REDACTED]"))
            .field("vault", &self.vault)
            .finish()
    }
}

/// `consumers[].plugins.basic-auth`: the password (literal, `$env://`, `$secret://`), or
/// `vault: {}` for field `password` of `consumer/<username>/basic-auth`.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BasicAuthConsumerConfig {
    /// The user name clients send (not a secret).
    pub username: String,
    /// The password.
    #[serde(default)]
    pub password: Option<SecretString>,
    /// Take the password from the agent.
    #[serde(default)]
    pub vault: Option<VaultRef>,
}

impl std::fmt::Debug for BasicAuthConsumerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BasicAuthConsumerConfig")
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "[REDACTED]"))
            .field("vault", &self.vault)
            .finish()
    }
}

/// `consumers[].plugins.jwt-auth`.
///
/// `secret`, `public_key` and `private_key` may be literals, `$env://NAME` or
/// `$secret://vault/<path>/<field>` (a path relative to the agent's prefix).
/// With `vault: {}`, missing ones come from the agent's name
/// `consumer/<username>/jwt-auth` (fields `secret`, `public_key`, `private_key`).
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtAuthConsumerConfig {
    /// The value of the token's key claim that identifies this consumer.
    pub key: String,
    /// HMAC secret.
    #[serde(default)]
    pub secret: Option<SecretString>,
    /// PEM public key (asymmetric algorithms).
    #[serde(default)]
    pub public_key: Option<String>,
    /// PEM private key (only for the sign endpoint).
    #[serde(default)]
    pub private_key: Option<SecretString>,
    /// Signature algorithm; a token's header `alg` must equal it.
    #[serde(default)]
    pub algorithm: Algorithm,
    /// Lifetime of tokens from the sign endpoint, seconds.
    #[serde(default = "default_exp")]
    pub exp: u64,
    /// The secret is base64 (decoded before use).
    #[serde(default)]
    pub base64_secret: bool,
    /// Leeway for `exp` and `nbf`, seconds.
    #[serde(default)]
    pub lifetime_grace_period: u64,
    /// Take the key material from the agent (the seed's `vault: {}`).
    #[serde(default)]
    pub vault: Option<VaultRef>,
}

// Literal secrets may sit in this struct; never print them.
impl std::fmt::Debug for JwtAuthConsumerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtAuthConsumerConfig")
            .field("key", &self.key)
            .field("secret", &self.secret.as_ref().map(|_| "[REDACTED]"))
            .field("public_key", &self.public_key.is_some())
            .field(
                "private_key",
                &self.private_key.as_ref().map(|_| "[REDACTED]"),
            )
            .field("algorithm", &self.algorithm)
            .field("exp", &self.exp)
            .field("base64_secret", &self.base64_secret)
            .field("lifetime_grace_period", &self.lifetime_grace_period)
            .field("vault", &self.vault)
            .finish()
    }
}

fn default_exp() -> u64 {
    86_400
}

/// The seed's `vault: {}`: no settings, the path follows from the consumer.
#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VaultRef {}

/// Whether each of `values` reads as a `T` from JSON, as the gateway will read it. The
/// error names the field; a value of the wrong type is named by its type only (it may
/// be a credential).
fn check_as_json<T: DeserializeOwned>(
    plural: &str,
    values: &[serde_json::Value],
) -> Result<(), serde_yaml_ng::Error> {
    for (i, value) in values.iter().enumerate() {
        if let Err(e) = serde_path_to_error::deserialize::<_, T>(value) {
            let (path, reason) = located(e);
            let field = resource_field(plural, i, &path);
            let reason = without_value(&reason);
            return Err(serde::de::Error::custom(format!("{field}: {reason}")));
        }
    }
    Ok(())
}

/// A deserialization error as (path of the offending field, reason).
pub(crate) fn located<E: std::fmt::Display>(e: serde_path_to_error::Error<E>) -> (String, String) {
    let path = e.path().to_string();
    (path, e.into_inner().to_string())
}

/// Where field `path` of the `i`-th resource of list `plural` is: `routes[3].uri`, or
/// `routes[3]` for the resource as a whole.
pub(crate) fn resource_field(plural: &str, i: usize, path: &str) -> String {
    if path.is_empty() || path == "." {
        format!("{plural}[{i}]")
    } else {
        format!("{plural}[{i}].{path}")
    }
}

/// serde's "invalid type: integer `1001`, expected a string" without the value, and with
/// what to do about it when a scalar stands where text is expected.
fn without_value(reason: &str) -> String {
    let Some((found, expected)) = reason
        .strip_prefix("invalid type: ")
        .and_then(|rest| rest.split_once(", expected "))
    else {
        return reason.to_owned();
    };
    let kind = found.split(['`', '"']).next().unwrap_or(found).trim_end();
    let hint = if expected.contains("string")
        && matches!(kind, "integer" | "floating point" | "boolean")
    {
        " (quote it in YAML)"
    } else {
        ""
    };
    format!("invalid type: {kind}, expected {expected}{hint}")
}

/// Accepts `id: 1` as well as `id: "1"`, as APISIX does.
pub(crate) fn string_or_number<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Id {
        S(String),
        N(i64),
    }
    Ok(Option::<Id>::deserialize(d)?.map(|id| match id {
        Id::S(s) => s,
        Id::N(n) => n.to_string(),
    }))
}

#[cfg(test)]
mod tests;
