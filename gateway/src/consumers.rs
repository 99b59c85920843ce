//! Consumers and their jwt-auth credentials: where each key comes from (inline,
//! `$env://`, or the agent), and the resolved keys the request path uses.
//!
//! [`ConsumerSet`] is built from the configuration once per (re)load. Each time the
//! agent sends a snapshot (or the configuration changes) it is combined with the
//! snapshot into an [`AuthState`], which is swapped in whole: requests read keys that
//! are already parsed, with one map lookup and no lock.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Weak};

use secrecy::ExposeSecret;

use crate::catalog::Entry;
use crate::config::{
    BasicAuthConsumerConfig, ConfigError, ConsumerConfig, JwtAuthConsumerConfig,
    KeyAuthConsumerConfig, invalid,
};
use crate::jwt::{Algorithm, KeyError, ShortSecret, SignKey, VerifyKey};
use crate::kind::Kind;
use crate::secrets::{Missing, SecretSnapshot};

/// The agent name of a consumer's plugin credentials, as in the seed:
/// `consumer/<username>/<plugin>` under the agent's prefix.
pub fn vault_name(username: &str, plugin: &str) -> String {
    format!("consumer/{username}/{plugin}")
}

/// Where one piece of key material comes from.
#[derive(Debug)]
enum KeySource<K> {
    /// Parsed at load time from the configuration (literal or `$env://`).
    Ready(Arc<K>),
    /// A field of a secret served by the agent.
    Agent { name: String, field: String },
    /// Not configured at all (a key pair consumer without a private key).
    None,
}

/// Why a consumer's key cannot be used right now. Requests answer 503.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Unavailable {
    /// The agent has not provided the value.
    #[error("{name}#{field}: {missing}")]
    Missing {
        /// Agent name.
        name: String,
        /// Field.
        field: String,
        /// Why.
        missing: Missing,
    },
    /// The agent's value is not a usable key.
    #[error("{name}#{field}: {error}")]
    Invalid {
        /// Agent name.
        name: String,
        /// Field.
        field: String,
        /// Why.
        error: KeyError,
    },
    /// The configuration gives no such key (e.g. no private key: cannot sign).
    #[error("not configured")]
    NotConfigured,
}

/// The configuration's jwt-auth credential of one consumer.
#[derive(Debug)]
struct JwtSpec {
    username: Arc<str>,
    key: Arc<str>,
    algorithm: Algorithm,
    exp: u64,
    grace: u64,
    base64_secret: bool,
    verify: KeySource<VerifyKey>,
    sign: KeySource<SignKey>,
}

/// SHA-256 of an API key or password. The request path compares digests, so the
/// plain credential is not kept in the auth state (and not used as a map key).
pub type Digest = [u8; 32];

/// The digest of a credential.
pub fn digest(bytes: &[u8]) -> Digest {
    let mut out = [0u8; 32];
    out.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, bytes).as_ref());
    out
}

fn credential_digest(bytes: &[u8]) -> Result<Digest, KeyError> {
    if bytes.is_empty() {
        Err(KeyError::EmptySecret)
    } else {
        Ok(digest(bytes))
    }
}

/// The configuration's key-auth credential of one consumer.
#[derive(Debug)]
struct KeySpec {
    username: Arc<str>,
    key: KeySource<Digest>,
}

/// The configuration's basic-auth credential of one consumer.
#[derive(Debug)]
struct BasicSpec {
    username: Arc<str>,
    login: String,
    password: KeySource<Digest>,
}

/// One consumer's credentials as configured, and the catalog entry they were built
/// from: a later build with the same entry takes them over (see
/// [`ConsumerSet::from_catalog`]).
#[derive(Debug)]
pub struct ConsumerSpec {
    source: Option<Arc<Entry>>,
    username: Arc<str>,
    jwt: Option<JwtSpec>,
    key: Option<KeySpec>,
    basic: Option<BasicSpec>,
}

impl ConsumerSpec {
    /// Checks what concerns this consumer alone and parses every key given inline
    /// (errors under `at`, `consumers[i]`). The checks between consumers are
    /// [`ConsumerSet`]'s.
    fn build(consumer: &ConsumerConfig, at: &str, env: EnvLookup<'_>) -> Result<Self, ConfigError> {
        check_username(&consumer.username).map_err(|r| invalid(format!("{at}.username"), r))?;
        let username: Arc<str> = Arc::from(consumer.username.as_str());
        let jwt = match &consumer.plugins.jwt_auth {
            Some(jwt) => {
                let at = format!("{at}.plugins.jwt-auth");
                if jwt.key.is_empty() {
                    return Err(invalid(format!("{at}.key"), "must not be empty"));
                }
                Some(jwt_spec(&consumer.username, jwt, &at, env)?)
            }
            None => None,
        };
        let key = match &consumer.plugins.key_auth {
            Some(conf) => {
                let at = format!("{at}.plugins.key-auth");
                Some(KeySpec {
                    username: username.clone(),
                    key: key_source(&consumer.username, conf, &at, env)?,
                })
            }
            None => None,
        };
        let basic = match &consumer.plugins.basic_auth {
            Some(conf) => Some(basic_spec(
                &username,
                conf,
                &format!("{at}.plugins.basic-auth"),
                env,
            )?),
            None => None,
        };
        Ok(Self {
            source: None,
            username,
            jwt,
            key,
            basic,
        })
    }

    /// The agent names its credentials come from.
    fn agent_names(&self) -> impl Iterator<Item = &str> {
        let jwt = self
            .jwt
            .iter()
            .flat_map(|spec| [spec.verify_agent(), spec.sign_agent()]);
        let key = self.key.iter().map(|spec| agent_name(&spec.key));
        let basic = self.basic.iter().map(|spec| agent_name(&spec.password));
        jwt.chain(key).chain(basic).flatten()
    }
}

fn agent_name<K>(source: &KeySource<K>) -> Option<&str> {
    match source {
        KeySource::Agent { name, .. } => Some(name),
        _ => None,
    }
}

/// All consumers of one configuration, with their key sources.
#[derive(Debug, Default)]
pub struct ConsumerSet {
    consumers: Vec<Arc<ConsumerSpec>>,
    usernames: foldhash::HashSet<Arc<str>>,
    agent_names: BTreeSet<String>,
    admin_key: Option<KeySource<Digest>>,
}

/// The example `X-API-KEY` of APISIX's documentation (and of the seed tutorial): fine
/// for a loopback listener in a demo, refused anywhere else.
pub const APISIX_EXAMPLE_ADMIN_KEY: &str = "edd1c9f034335f136f87ad84b625c8f1";

/// Looks up an environment variable (injectable for tests).
pub type EnvLookup<'a> = &'a dyn Fn(&str) -> Option<String>;

/// The Admin API key as configured (`admin.key`): a literal, `$env://NAME` or
/// `$secret://vault/<path>/<field>`.
#[derive(Clone, Copy)]
pub struct AdminKey<'a> {
    /// The configured text (may be the key itself: never logged).
    pub raw: &'a str,
    /// Whether the admin listener is on a loopback address.
    pub loopback: bool,
}

impl AdminKey<'_> {
    fn source(self, env: EnvLookup<'_>) -> Result<KeySource<Digest>, ConfigError> {
        match value(Some(self.raw), "admin", "key", env)? {
            Value::Literal(bytes) => {
                if !self.loopback && bytes.as_slice() == APISIX_EXAMPLE_ADMIN_KEY.as_bytes() {
                    return Err(invalid(
                        "admin.key",
                        "the example key of APISIX's documentation is only accepted on a loopback listener",
                    ));
                }
                credential_digest(&bytes)
                    .map(|d| KeySource::Ready(Arc::new(d)))
                    .map_err(|e| invalid("admin.key", e.to_string()))
            }
            Value::Agent { name, field } => Ok(KeySource::Agent { name, field }),
            Value::Absent => Err(invalid("admin.key", "required")),
        }
    }
}

impl std::fmt::Debug for AdminKey<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminKey")
            .field("raw", &"<redacted>")
            .field("loopback", &self.loopback)
            .finish()
    }
}

/// Whether two Admin API key sources are the same key (digests of configured keys,
/// not of anything a client sent: no need for a constant-time comparison).
fn same_admin_key(a: Option<&KeySource<Digest>>, b: Option<&KeySource<Digest>>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(KeySource::Ready(a)), Some(KeySource::Ready(b))) => a == b,
        (
            Some(KeySource::Agent { name, field }),
            Some(KeySource::Agent {
                name: other_name,
                field: other_field,
            }),
        ) => name == other_name && field == other_field,
        _ => false,
    }
}

impl ConsumerSet {
    /// Validates the consumers and parses every key given inline.
    pub fn build(consumers: &[ConsumerConfig], env: EnvLookup<'_>) -> Result<Self, ConfigError> {
        let specs = consumers
            .iter()
            .enumerate()
            .map(|(i, consumer)| {
                ConsumerSpec::build(consumer, &format!("consumers[{i}]"), env).map(Arc::new)
            })
            .collect::<Result<Vec<_>, _>>()?;
        Self::assemble(specs)
    }

    /// The consumers of the catalog `entries`, validated, with the Admin API key of
    /// `admin`. `previous` itself when it was built from the very same entries and
    /// admin key: a write that changes no consumer (a route's, an upstream's) shares the
    /// set, and so its resolved keys ([`AuthState::is_resolution_of`]). Otherwise a
    /// consumer of `previous` built from the very same entry is taken over as it is, not
    /// parsed again, and the checks between consumers (unique names and keys) run over
    /// all of them.
    pub fn from_catalog(
        entries: &[Arc<Entry>],
        admin: Option<AdminKey<'_>>,
        env: EnvLookup<'_>,
        previous: &Arc<ConsumerSet>,
    ) -> Result<Arc<Self>, ConfigError> {
        let admin_key = admin.map(|a| a.source(env)).transpose()?;
        if previous.is_built_from(entries)
            && same_admin_key(previous.admin_key.as_ref(), admin_key.as_ref())
        {
            return Ok(previous.clone());
        }
        let mut set = Self::from_entries(entries, env, previous)?;
        if let Some(source) = admin_key {
            set.set_admin_source(source);
        }
        Ok(Arc::new(set))
    }

    /// Whether every consumer of this set was built from `entries`, in their order.
    fn is_built_from(&self, entries: &[Arc<Entry>]) -> bool {
        self.consumers.len() == entries.len()
            && self.consumers.iter().zip(entries).all(|(spec, entry)| {
                spec.source
                    .as_ref()
                    .is_some_and(|source| Arc::ptr_eq(source, entry))
            })
    }

    fn from_entries(
        entries: &[Arc<Entry>],
        env: EnvLookup<'_>,
        previous: &ConsumerSet,
    ) -> Result<Self, ConfigError> {
        let before: foldhash::HashMap<*const Entry, &Arc<ConsumerSpec>> = previous
            .consumers
            .iter()
            .filter_map(|spec| Some((Arc::as_ptr(spec.source.as_ref()?), spec)))
            .collect();
        let specs = entries
            .iter()
            .enumerate()
            .map(|(i, entry)| match before.get(&Arc::as_ptr(entry)) {
                Some(&same) => Ok(same.clone()),
                None => {
                    let conf: ConsumerConfig = entry.parse(Kind::Consumer, i)?;
                    let mut spec = ConsumerSpec::build(&conf, &format!("consumers[{i}]"), env)?;
                    spec.source = Some(entry.clone());
                    Ok(Arc::new(spec))
                }
            })
            .collect::<Result<Vec<_>, ConfigError>>()?;
        Self::assemble(specs)
    }

    /// The set of `consumers`, once no two share a username, a jwt-auth key, a literal
    /// key-auth key or a basic-auth login.
    fn assemble(consumers: Vec<Arc<ConsumerSpec>>) -> Result<Self, ConfigError> {
        // Configured names and keys: foldhash, not SipHash (see `runtime`).
        let mut usernames =
            foldhash::HashSet::with_capacity_and_hasher(consumers.len(), Default::default());
        let mut keys =
            foldhash::HashSet::with_capacity_and_hasher(consumers.len(), Default::default());
        let mut api_keys = foldhash::HashSet::default();
        let mut logins = foldhash::HashSet::default();
        let mut agent_names = BTreeSet::new();
        for (i, consumer) in consumers.iter().enumerate() {
            let at = || format!("consumers[{i}]");
            if !usernames.insert(consumer.username.clone()) {
                return Err(invalid(
                    format!("{}.username", at()),
                    format!("duplicate consumer {:?}", &*consumer.username),
                ));
            }
            if let Some(jwt) = &consumer.jwt
                && !keys.insert(&*jwt.key)
            {
                return Err(invalid(
                    format!("{}.plugins.jwt-auth.key", at()),
                    format!("key {:?} is used by another consumer", jwt.key),
                ));
            }
            if let Some(KeySpec {
                key: KeySource::Ready(digest),
                ..
            }) = &consumer.key
                && !api_keys.insert(**digest)
            {
                return Err(invalid(
                    format!("{}.plugins.key-auth.key", at()),
                    "the same key is used by another consumer",
                ));
            }
            if let Some(basic) = &consumer.basic
                && !logins.insert(basic.login.as_str())
            {
                return Err(invalid(
                    format!("{}.plugins.basic-auth.username", at()),
                    format!("{:?} is used by another consumer", basic.login),
                ));
            }
            agent_names.extend(consumer.agent_names().map(str::to_owned));
        }
        drop((keys, api_keys, logins));
        Ok(Self {
            consumers,
            usernames,
            agent_names,
            admin_key: None,
        })
    }

    fn set_admin_source(&mut self, source: KeySource<Digest>) {
        if let KeySource::Agent { name, .. } = &source {
            self.agent_names.insert(name.clone());
        }
        self.admin_key = Some(source);
    }

    /// The agent names these consumers need (sorted, unique).
    pub fn agent_names(&self) -> Vec<String> {
        self.agent_name_iter().map(str::to_owned).collect()
    }

    /// [`Self::agent_names`], borrowed.
    pub fn agent_name_iter(&self) -> impl Iterator<Item = &str> {
        self.agent_names.iter().map(String::as_str)
    }

    /// True if a consumer of this name exists.
    pub fn has_username(&self, username: &str) -> bool {
        self.usernames.contains(username)
    }

    /// Combines the key sources with the agent's latest snapshot (`None` before the
    /// first one). Agent values that do not parse are logged here, once per snapshot,
    /// by consumer and field, never by value.
    pub fn resolve(&self, snapshot: Option<&SecretSnapshot>) -> AuthState {
        self.resolve_with(snapshot, ResolvedAgainst::Unknown, None)
    }

    /// [`Self::resolve`] against the gateway's current snapshot, taking over from
    /// `previous` each jwt-auth consumer resolved from the same [`ConsumerSpec`] and the
    /// same snapshot: the same object, so no key is parsed again, nothing is logged
    /// again, and the tokens the routes remember as verified by it stay so (an Admin API
    /// write used to resolve all 10 000 consumers again and start every cache over).
    pub fn resolve_after(
        self: &Arc<Self>,
        snapshot: Option<&Arc<SecretSnapshot>>,
        previous: &AuthState,
    ) -> AuthState {
        let against = ResolvedAgainst::of(snapshot);
        let previous = previous.against.is_same(&against).then_some(previous);
        let mut state = self.resolve_with(snapshot.map(|s| &**s), against, previous);
        state.consumers = Arc::downgrade(self);
        state
    }

    fn resolve_with(
        &self,
        snapshot: Option<&SecretSnapshot>,
        against: ResolvedAgainst,
        previous: Option<&AuthState>,
    ) -> AuthState {
        let mut by_key =
            HashMap::with_capacity_and_hasher(self.consumers.len(), Default::default());
        let resolved = self
            .consumers
            .iter()
            .filter_map(|consumer| Some((consumer, consumer.jwt.as_ref()?)))
            .map(|(consumer, spec)| {
                if let Some(same) = previous
                    .and_then(|p| p.by_key.get(&spec.key))
                    .filter(|same| std::ptr::eq(same.spec.as_ptr(), Arc::as_ptr(consumer)))
                {
                    return (spec.key.clone(), same.clone());
                }
                let verify = resolve(&spec.verify, snapshot, |bytes| {
                    if spec.algorithm.is_hmac() {
                        VerifyKey::hmac(spec.algorithm, bytes, spec.base64_secret)
                    } else {
                        VerifyKey::public_pem(spec.algorithm, bytes)
                    }
                });
                let sign = resolve(&spec.sign, snapshot, |bytes| {
                    if spec.algorithm.is_hmac() {
                        SignKey::hmac(spec.algorithm, bytes, spec.base64_secret)
                    } else {
                        SignKey::private_pem(spec.algorithm, bytes)
                    }
                });
                for err in [verify.as_ref().err(), sign.as_ref().err()].into_iter().flatten() {
                    match err {
                        Unavailable::Invalid { .. } => tracing::warn!(
                            consumer = %spec.username, error = %err,
                            "key material from the agent is not usable; requests for this consumer fail closed"
                        ),
                        Unavailable::Missing { .. } if snapshot.is_some() => tracing::warn!(
                            consumer = %spec.username, error = %err,
                            "key material not available from the agent; requests for this consumer fail closed"
                        ),
                        _ => {}
                    }
                }
                let consumer = JwtConsumer {
                    username: spec.username.clone(),
                    algorithm: spec.algorithm,
                    exp: spec.exp,
                    grace: spec.grace,
                    verify,
                    sign,
                    spec: Arc::downgrade(consumer),
                };
                (spec.key.clone(), Arc::new(consumer))
            });
        by_key.extend(resolved);

        let mut api_keys: HashMap<Digest, Arc<str>> = HashMap::new();
        let mut clashing: HashSet<Digest> = HashSet::new();
        for spec in self.consumers.iter().filter_map(|c| c.key.as_ref()) {
            match resolve(&spec.key, snapshot, credential_digest) {
                Ok(d) => {
                    if api_keys.insert(*d, spec.username.clone()).is_some() {
                        clashing.insert(*d);
                    }
                }
                Err(err) => log_unavailable(&spec.username, &err, snapshot.is_some()),
            }
        }
        for d in clashing {
            // Two consumers with one key (possible with keys from the agent): the key
            // identifies nobody, so nobody gets in with it.
            if let Some(user) = api_keys.remove(&d) {
                tracing::warn!(consumer = %user, "key-auth key shared by several consumers; refusing it");
            }
        }

        let basic = self
            .consumers
            .iter()
            .filter_map(|c| c.basic.as_ref())
            .map(|spec| {
                let password = resolve(&spec.password, snapshot, credential_digest).map(|d| *d);
                if let Err(err) = &password {
                    log_unavailable(&spec.username, err, snapshot.is_some());
                }
                (
                    spec.login.clone(),
                    BasicUser {
                        consumer: spec.username.clone(),
                        password,
                    },
                )
            })
            .collect();
        let admin_key = self.admin_key.as_ref().map(|source| {
            let key = resolve(source, snapshot, credential_digest).map(|d| *d);
            if let Err(err) = &key {
                log_unavailable("(admin key)", err, snapshot.is_some());
            }
            key
        });
        AuthState {
            by_key,
            api_keys,
            basic,
            admin_key,
            against,
            consumers: Weak::new(),
        }
    }
}

fn log_unavailable(username: &str, err: &Unavailable, have_snapshot: bool) {
    match err {
        Unavailable::Invalid { .. } => tracing::warn!(
            consumer = %username, error = %err,
            "credential from the agent is not usable; requests for this consumer fail closed"
        ),
        Unavailable::Missing { .. } if have_snapshot => tracing::warn!(
            consumer = %username, error = %err,
            "credential not available from the agent; requests for this consumer fail closed"
        ),
        _ => {}
    }
}

/// A credential given either inline (literal or reference) or by `vault: {}`.
fn credential_source(
    raw: Option<&str>,
    vault: bool,
    username: &str,
    plugin: &str,
    field: &str,
    at: &str,
    env: EnvLookup<'_>,
) -> Result<KeySource<Digest>, ConfigError> {
    match (value(raw, at, field, env)?, vault) {
        (Value::Absent, true) => Ok(from_vault(&Some(vault_name(username, plugin)), field)),
        (Value::Absent, false) => Err(invalid(format!("{at}.{field}"), "required (or vault: {})")),
        (_, true) => Err(invalid(
            format!("{at}.{field}"),
            format!("give either {field} or vault: {{}}, not both"),
        )),
        (Value::Literal(bytes), false) => credential_digest(&bytes)
            .map(|d| KeySource::Ready(Arc::new(d)))
            .map_err(|e| invalid(format!("{at}.{field}"), e.to_string())),
        (Value::Agent { name, field }, false) => Ok(KeySource::Agent { name, field }),
    }
}

fn key_source(
    username: &str,
    conf: &KeyAuthConsumerConfig,
    at: &str,
    env: EnvLookup<'_>,
) -> Result<KeySource<Digest>, ConfigError> {
    credential_source(
        conf.key.as_ref().map(ExposeSecret::expose_secret),
        conf.vault.is_some(),
        username,
        "key-auth",
        "key",
        at,
        env,
    )
}

fn basic_spec(
    username: &Arc<str>,
    conf: &BasicAuthConsumerConfig,
    at: &str,
    env: EnvLookup<'_>,
) -> Result<BasicSpec, ConfigError> {
    if conf.username.is_empty() || conf.username.contains(':') {
        return Err(invalid(
            format!("{at}.username"),
            "must be non-empty and without ':'",
        ));
    }
    let password = credential_source(
        conf.password.as_ref().map(ExposeSecret::expose_secret),
        conf.vault.is_some(),
        username,
        "basic-auth",
        "password",
        at,
        env,
    )?;
    Ok(BasicSpec {
        username: username.clone(),
        login: conf.username.clone(),
        password,
    })
}

impl JwtSpec {
    fn verify_agent(&self) -> Option<&str> {
        match &self.verify {
            KeySource::Agent { name, .. } => Some(name),
            _ => None,
        }
    }

    fn sign_agent(&self) -> Option<&str> {
        match &self.sign {
            KeySource::Agent { name, .. } => Some(name),
            _ => None,
        }
    }
}

fn resolve<K>(
    source: &KeySource<K>,
    snapshot: Option<&SecretSnapshot>,
    parse: impl FnOnce(&[u8]) -> Result<K, KeyError>,
) -> Result<Arc<K>, Unavailable> {
    match source {
        KeySource::Ready(key) => Ok(key.clone()),
        KeySource::None => Err(Unavailable::NotConfigured),
        KeySource::Agent { name, field } => {
            let value = snapshot
                .ok_or(Missing::NotInSnapshot)
                .and_then(|s| s.field(name, field))
                .map_err(|missing| Unavailable::Missing {
                    name: name.clone(),
                    field: field.clone(),
                    missing,
                })?;
            parse(value.expose())
                .map(Arc::new)
                .map_err(|error| Unavailable::Invalid {
                    name: name.clone(),
                    field: field.clone(),
                    error,
                })
        }
    }
}

/// A configured value of a key field, before parsing.
pub(crate) enum Value {
    Literal(zeroize::Zeroizing<Vec<u8>>),
    Agent { name: String, field: String },
    Absent,
}

/// Reads `secret`/`public_key`/`private_key`: a literal, `$env://NAME`, or
/// `$secret://vault/<path>/<field>`.
pub(crate) fn value(
    raw: Option<&str>,
    at: &str,
    field: &str,
    env: EnvLookup<'_>,
) -> Result<Value, ConfigError> {
    let Some(raw) = raw else {
        return Ok(Value::Absent);
    };
    if let Some(var) = raw.strip_prefix("$env://") {
        return match env(var) {
            Some(v) => Ok(Value::Literal(zeroize::Zeroizing::new(v.into_bytes()))),
            None => Err(invalid(
                format!("{at}.{field}"),
                format!("environment variable {var:?} is not set"),
            )),
        };
    }
    if let Some(reference) = raw.strip_prefix("$secret://") {
        let bad = |why: &str| invalid(format!("{at}.{field}"), why.to_owned());
        let path = reference
            .strip_prefix("vault/")
            .ok_or_else(|| bad("only $secret://vault/<path>/<field> references are supported"))?;
        let (name, secret_field) = path
            .rsplit_once('/')
            .ok_or_else(|| bad("expected $secret://vault/<path>/<field>"))?;
        check_name(name).map_err(|why| bad(&why))?;
        if secret_field.is_empty() {
            return Err(bad("the reference names no field"));
        }
        return Ok(Value::Agent {
            name: name.to_owned(),
            field: secret_field.to_owned(),
        });
    }
    Ok(Value::Literal(zeroize::Zeroizing::new(
        raw.as_bytes().to_vec(),
    )))
}

fn jwt_spec(
    username: &str,
    conf: &JwtAuthConsumerConfig,
    at: &str,
    env: EnvLookup<'_>,
) -> Result<JwtSpec, ConfigError> {
    let alg = conf.algorithm;
    let vault = conf
        .vault
        .is_some()
        .then(|| vault_name(username, "jwt-auth"));
    if conf.exp == 0 {
        return Err(invalid(format!("{at}.exp"), "must be at least 1"));
    }
    let (verify, sign) = if alg.is_hmac() {
        for (field, present) in [
            ("public_key", conf.public_key.is_some()),
            ("private_key", conf.private_key.is_some()),
        ] {
            if present {
                return Err(invalid(
                    format!("{at}.{field}"),
                    format!("not used with {} (a shared secret algorithm)", alg.as_str()),
                ));
            }
        }
        let secret = value(
            conf.secret.as_ref().map(ExposeSecret::expose_secret),
            at,
            "secret",
            env,
        )?;
        if vault.is_some() && !matches!(secret, Value::Absent) {
            // Which one would win is a guess the operator should not have to make.
            return Err(invalid(
                format!("{at}.secret"),
                "give either secret or vault: {}, not both",
            ));
        }
        let make = |bytes: &[u8]| -> Result<(VerifyKey, SignKey), ConfigError> {
            let e = |e: KeyError| invalid(format!("{at}.secret"), e.to_string());
            Ok((
                VerifyKey::hmac(alg, bytes, conf.base64_secret).map_err(e)?,
                SignKey::hmac(alg, bytes, conf.base64_secret).map_err(e)?,
            ))
        };
        match secret {
            Value::Literal(bytes) => {
                let (v, s) = make(&bytes)?;
                (KeySource::Ready(Arc::new(v)), KeySource::Ready(Arc::new(s)))
            }
            Value::Agent { name, field } => (
                KeySource::Agent {
                    name: name.clone(),
                    field: field.clone(),
                },
                KeySource::Agent { name, field },
            ),
            Value::Absent if vault.is_some() => {
                (from_vault(&vault, "secret"), from_vault(&vault, "secret"))
            }
            Value::Absent => {
                return Err(invalid(
                    format!("{at}.secret"),
                    format!("{} needs a secret (or vault: {{}})", alg.as_str()),
                ));
            }
        }
    } else {
        if conf.secret.is_some() {
            return Err(invalid(
                format!("{at}.secret"),
                format!("not used with {} (a key pair algorithm)", alg.as_str()),
            ));
        }
        if conf.base64_secret {
            return Err(invalid(
                format!("{at}.base64_secret"),
                format!("not used with {}", alg.as_str()),
            ));
        }
        let verify = match value(conf.public_key.as_deref(), at, "public_key", env)? {
            Value::Literal(pem) => KeySource::Ready(Arc::new(
                VerifyKey::public_pem(alg, &pem)
                    .map_err(|e| invalid(format!("{at}.public_key"), e.to_string()))?,
            )),
            Value::Agent { name, field } => KeySource::Agent { name, field },
            Value::Absent if vault.is_some() => from_vault(&vault, "public_key"),
            Value::Absent => {
                return Err(invalid(
                    format!("{at}.public_key"),
                    format!("{} needs a public_key (or vault: {{}})", alg.as_str()),
                ));
            }
        };
        let sign = match value(
            conf.private_key.as_ref().map(ExposeSecret::expose_secret),
            at,
            "private_key",
            env,
        )? {
            Value::Literal(pem) => KeySource::Ready(Arc::new(
                SignKey::private_pem(alg, &pem)
                    .map_err(|e| invalid(format!("{at}.private_key"), e.to_string()))?,
            )),
            Value::Agent { name, field } => KeySource::Agent { name, field },
            Value::Absent => from_vault(&vault, "private_key"),
        };
        (verify, sign)
    };
    Ok(JwtSpec {
        username: Arc::from(username),
        key: Arc::from(conf.key.as_str()),
        algorithm: alg,
        exp: conf.exp,
        grace: conf.lifetime_grace_period,
        base64_secret: conf.base64_secret,
        verify,
        sign,
    })
}

/// The field of the consumer's own agent name (`vault: {}`), if it has one.
fn from_vault<K>(vault: &Option<String>, field: &str) -> KeySource<K> {
    match vault {
        Some(name) => KeySource::Agent {
            name: name.clone(),
            field: field.to_owned(),
        },
        None => KeySource::None,
    }
}

/// APISIX's consumer name rule; it also keeps the Vault path one plain segment.
fn check_username(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("must not be empty".into());
    }
    if name.len() > 100 {
        return Err("longer than 100 characters".into());
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return Err(format!(
            "{name:?}: only letters, digits, '_' and '-' are allowed"
        ));
    }
    Ok(())
}

/// The agent's rule for secret names (see CONTRACT-agent.md), checked here so a bad
/// reference is a configuration error rather than a stream the agent refuses.
pub fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 512 {
        return Err("a secret path must be 1 to 512 bytes".into());
    }
    for segment in name.split('/') {
        if segment.is_empty() || segment == "." || segment == ".." {
            return Err(format!("{name:?}: empty, '.' or '..' path segment"));
        }
        if !segment
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._@+=-".contains(&b))
        {
            return Err(format!(
                "{name:?}: only [A-Za-z0-9._@+=-] allowed in a segment"
            ));
        }
    }
    Ok(())
}

/// One consumer's resolved jwt-auth credential.
#[derive(Debug)]
pub struct JwtConsumer {
    /// `X-Consumer-Username`.
    pub username: Arc<str>,
    /// The only `alg` accepted.
    pub algorithm: Algorithm,
    /// Lifetime of signed tokens, seconds.
    pub exp: u64,
    /// Leeway for `exp`/`nbf`, seconds.
    pub grace: u64,
    /// Verification key, or why there is none (fail closed).
    pub verify: Result<Arc<VerifyKey>, Unavailable>,
    /// Signing key, or why there is none.
    pub sign: Result<Arc<SignKey>, Unavailable>,
    /// What it was resolved from (weak: only its address counts, for the next
    /// resolution to take this consumer over).
    spec: std::sync::Weak<ConsumerSpec>,
}

/// A basic-auth user.
#[derive(Debug)]
pub struct BasicUser {
    /// The consumer (`X-Consumer-Username`).
    pub consumer: Arc<str>,
    /// Digest of the password, or why it is not available.
    pub password: Result<Digest, Unavailable>,
}

/// What the request path reads: consumers by their key claim, API key digest or
/// basic-auth user name.
#[derive(Debug, Default)]
pub struct AuthState {
    /// By `key` claim. foldhash rather than SipHash: only configured keys are
    /// inserted, so a client cannot choose colliding ones. The keys are shared with the
    /// specs: a resolution copies no string.
    by_key: HashMap<Arc<str>, Arc<JwtConsumer>, foldhash::fast::RandomState>,
    api_keys: HashMap<Digest, Arc<str>>,
    basic: HashMap<String, BasicUser>,
    admin_key: Option<Result<Digest, Unavailable>>,
    against: ResolvedAgainst,
    /// The set resolved ([`ConsumerSet::resolve_after`]; none otherwise). Weak, as
    /// `against`: it keeps no consumer alive, and its allocation no other set's address.
    consumers: Weak<ConsumerSet>,
}

/// The snapshot an [`AuthState`] was resolved against.
#[derive(Debug, Default)]
enum ResolvedAgainst {
    /// Not recorded ([`ConsumerSet::resolve`]): nothing is taken over from it.
    #[default]
    Unknown,
    /// None yet.
    NoSnapshot,
    /// This one. Weak: an old state does not keep secrets alive, and the allocation it
    /// keeps means no later snapshot can have the same address.
    Snapshot(std::sync::Weak<SecretSnapshot>),
}

impl ResolvedAgainst {
    fn of(snapshot: Option<&Arc<SecretSnapshot>>) -> Self {
        match snapshot {
            None => Self::NoSnapshot,
            Some(snapshot) => Self::Snapshot(Arc::downgrade(snapshot)),
        }
    }

    fn is_same(&self, other: &Self) -> bool {
        match (self, other) {
            (Self::NoSnapshot, Self::NoSnapshot) => true,
            (Self::Snapshot(a), Self::Snapshot(b)) => a.ptr_eq(b),
            _ => false,
        }
    }
}

impl AuthState {
    /// Whether this is what [`ConsumerSet::resolve_after`] gives for `consumers` and
    /// `snapshot`: the very same set and snapshot, so resolving again would give the
    /// same consumers, keys and warnings (a write that changes no consumer keeps the
    /// state as it is; any new snapshot resolves again).
    pub fn is_resolution_of(
        &self,
        consumers: &Arc<ConsumerSet>,
        snapshot: Option<&Arc<SecretSnapshot>>,
    ) -> bool {
        std::ptr::eq(self.consumers.as_ptr(), Arc::as_ptr(consumers))
            && self.against.is_same(&ResolvedAgainst::of(snapshot))
    }

    /// The Admin API key's digest: `None` when no key is configured, `Some(Err)` when
    /// it comes from the agent and is not available.
    pub fn admin_key(&self) -> Option<&Result<Digest, Unavailable>> {
        self.admin_key.as_ref()
    }

    /// The consumer owning this API key.
    pub fn key_consumer(&self, key: &[u8]) -> Option<&Arc<str>> {
        self.api_keys.get(&digest(key))
    }

    /// The basic-auth user with this login.
    pub fn basic_user(&self, login: &str) -> Option<&BasicUser> {
        self.basic.get(login)
    }

    /// The consumer whose `key` is `key`.
    pub fn jwt_consumer(&self, key: &str) -> Option<&Arc<JwtConsumer>> {
        self.by_key.get(key)
    }

    /// Consumers whose verification key is missing (for readiness and metrics).
    pub fn unavailable_count(&self) -> usize {
        self.by_key.values().filter(|c| c.verify.is_err()).count()
    }

    /// The consumers whose HMAC secret is shorter than RFC 8725 asks for.
    pub fn short_secrets(&self) -> impl Iterator<Item = (&JwtConsumer, ShortSecret)> {
        self.by_key
            .values()
            .filter_map(|c| Some((c.as_ref(), c.short_secret()?)))
    }
}

impl JwtConsumer {
    /// How much too short its HMAC secret is, if it is.
    fn short_secret(&self) -> Option<ShortSecret> {
        self.verify.as_ref().ok()?.short_secret()
    }
}

/// How many consumers [`warn_short_secrets`] names one by one; the rest are counted.
const SHORT_SECRETS_NAMED: usize = 5;

/// Warns about the consumers whose HMAC secret is too short in `new` but was not in
/// `old` (a new consumer, a changed secret, an agent's value): once when it appears, not
/// on every rebuild (an Admin API write rebuilds all consumers, and with 10 000 of them
/// one line each was megabytes of log per write). Never the secret itself.
pub fn warn_short_secrets(old: &AuthState, new: &AuthState) {
    let mut known: Option<HashSet<&str>> = None;
    let mut fresh: Vec<(&JwtConsumer, ShortSecret)> = Vec::new();
    for (key, consumer) in &new.by_key {
        // The same object (taken over by the resolution) was judged with `old`.
        if old
            .by_key
            .get(key)
            .is_some_and(|o| Arc::ptr_eq(o, consumer))
        {
            continue;
        }
        let Some(short) = consumer.short_secret() else {
            continue;
        };
        let known =
            known.get_or_insert_with(|| old.short_secrets().map(|(c, _)| &*c.username).collect());
        if !known.contains(&*consumer.username) {
            fresh.push((consumer, short));
        }
    }
    if fresh.is_empty() {
        return;
    }
    fresh.sort_by(|a, b| a.0.username.cmp(&b.0.username));
    for (consumer, short) in fresh.iter().take(SHORT_SECRETS_NAMED) {
        tracing::warn!(
            consumer = %consumer.username,
            alg = consumer.algorithm.as_str(),
            secret.bytes = short.bytes,
            secret.minimum_bytes = short.minimum,
            "HMAC secret shorter than the hash output (RFC 8725 section 3.5): tokens signed with it can be brute-forced offline; use at least {} random bytes",
            short.minimum
        );
    }
    if let Some(more) = fresh
        .len()
        .checked_sub(SHORT_SECRETS_NAMED)
        .filter(|&n| n > 0)
    {
        tracing::warn!(
            consumers = more,
            "{more} more consumers have HMAC secrets shorter than the hash output (not named one by one)"
        );
    }
}

#[cfg(test)]
mod tests;
