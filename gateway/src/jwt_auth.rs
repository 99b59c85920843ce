//! The jwt-auth plugin on a route: find the token in the request, find the consumer
//! by the token's key claim, verify, and answer as APISIX 3.x does.

use std::borrow::Cow;
use std::collections::HashMap;
use std::hash::BuildHasherDefault;
use std::sync::{Arc, Mutex, Weak};

use http::header::{self, HeaderName, HeaderValue};
use http::request::Parts;
use http::{Response, StatusCode};
use zeroize::Zeroizing;

use crate::body::{self, ProxyBody};
use crate::config::{ConfigError, JwtAuthRouteConfig, invalid};
use crate::consumers::{AuthState, ConsumerSet, JwtConsumer};
use crate::jwt::{self, ClaimError, TimeRules};
use crate::query;

/// A route's jwt-auth settings, validated.
#[derive(Debug)]
pub struct JwtAuthRoute {
    header: HeaderName,
    query: String,
    cookie: String,
    hide_credentials: bool,
    key_claim: String,
    anonymous: Option<Arc<str>>,
    rules: TimeRules,
    verified: VerifiedTokens,
}

/// Most tokens a route remembers as verified; when full it starts over.
const VERIFIED_MAX: usize = 4096;

/// Tokens of this route whose signature verified, with the consumer object whose key
/// verified them (as in Envoy's `jwt_cache_config`). A client sends the same token
/// until it expires, so the signature (an RSA or ECDSA verification, or an HMAC) and
/// the decoding are done once per token instead of once per request. The time claims
/// are still checked on every request.
///
/// Only tokens that fully verified are stored, so a request cannot fill the cache
/// without a valid token. An entry counts only while the consumer found by the key
/// claim is the very object that verified it: a new key (rotation, a new agent
/// snapshot, a reload) makes a new consumer object, and the token is verified again.
/// Entries hold the consumer weakly, so an old key is not kept alive by the cache.
///
/// One map per worker thread (a token is verified once per worker), so the request
/// path takes no lock another worker can hold.
struct VerifiedTokens {
    /// By a hash of the token's end (its signature); the entry holds the whole token.
    /// Indexed by worker.
    entries: Box<[Mutex<VerifiedMap>]>,
}

type VerifiedMap = HashMap<u64, Arc<Verified>, BuildHasherDefault<TokenHashed>>;

/// The map's hasher: the key is already [`token_hash`], taken as it is. Hashing it
/// again (SipHash) cost more than the rest of the lookup, and bought nothing: only
/// verified tokens go in, so nobody can fill the map with colliding keys.
#[derive(Default)]
struct TokenHashed(u64);

impl std::hash::Hasher for TokenHashed {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u64` is used (the key is a u64); anything else still hashes.
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

impl Default for VerifiedTokens {
    fn default() -> Self {
        Self {
            entries: (0..crate::pool::workers())
                .map(|_| Mutex::new(HashMap::default()))
                .collect(),
        }
    }
}

struct Verified {
    /// A bearer credential: wiped when the entry is dropped (evicted, the map
    /// cleared, the route replaced by a reload).
    token: Zeroizing<Box<str>>,
    alg: Box<str>,
    /// The route's key claim (a string: the token verified).
    key: Box<str>,
    /// Read from the claims once; checked again on each request.
    times: jwt::TimeClaims,
    by: Weak<JwtConsumer>,
}

// Tokens are credentials: never printed.
impl std::fmt::Debug for VerifiedTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let len: usize = self
            .entries
            .iter()
            .map(|m| m.lock().unwrap_or_else(|p| p.into_inner()).len())
            .sum();
        f.debug_struct("VerifiedTokens")
            .field("entries", &len)
            .finish_non_exhaustive()
    }
}

impl VerifiedTokens {
    /// This worker's map.
    fn lock(&self) -> Option<std::sync::MutexGuard<'_, VerifiedMap>> {
        let map = self
            .entries
            .get(crate::pool::worker() % self.entries.len().max(1))?;
        Some(map.lock().unwrap_or_else(|p| p.into_inner()))
    }

    fn get(&self, token: &[u8]) -> Option<Arc<Verified>> {
        let hit = self.lock()?.get(&token_hash(token)).cloned()?;
        (hit.token.as_bytes() == token).then_some(hit)
    }

    fn insert(&self, entry: Verified) {
        let hash = token_hash(entry.token.as_bytes());
        let Some(mut entries) = self.lock() else {
            return;
        };
        if entries.len() >= VERIFIED_MAX {
            entries.clear();
        }
        entries.insert(hash, Arc::new(entry));
    }
}

/// A hash of the token's length and its last 32 bytes (the end of its signature), a
/// word at a time (FxHash's step; byte-wise FNV took four times as long). Lookups
/// compare the whole token, so a collision only costs a verification.
fn token_hash(token: &[u8]) -> u64 {
    const SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;
    let step = |h: u64, word: u64| (h.rotate_left(5) ^ word).wrapping_mul(SEED);
    let tail = token.get(token.len().saturating_sub(32)..).unwrap_or(token);
    let mut h = step(0, token.len() as u64);
    let mut rest = tail;
    while let Some((word, after)) = rest.split_first_chunk::<8>() {
        h = step(h, u64::from_le_bytes(*word));
        rest = after;
    }
    for &b in rest {
        h = step(h, u64::from(b));
    }
    h
}

impl JwtAuthRoute {
    /// Validates `conf` (reported under `at`) against the consumers.
    pub fn build(
        conf: &JwtAuthRouteConfig,
        consumers: &ConsumerSet,
        at: &str,
    ) -> Result<Self, ConfigError> {
        let header = HeaderName::from_bytes(conf.header.as_bytes())
            .map_err(|_| invalid(format!("{at}.header"), "not a valid header name"))?;
        for (field, value) in [
            ("query", &conf.query),
            ("cookie", &conf.cookie),
            ("key_claim_name", &conf.key_claim_name),
        ] {
            if value.is_empty() {
                return Err(invalid(format!("{at}.{field}"), "must not be empty"));
            }
        }
        let anonymous = anonymous(conf.anonymous_consumer.as_deref(), consumers, at)?;
        Ok(Self {
            header,
            query: conf.query.clone(),
            cookie: conf.cookie.clone(),
            hide_credentials: conf.hide_credentials,
            key_claim: conf.key_claim_name.clone(),
            anonymous,
            rules: TimeRules {
                maximum_expiration: conf.maximum_expiration,
                ..TimeRules::default()
            }
            .requiring(&conf.claims_to_verify),
            verified: VerifiedTokens::default(),
        })
    }

    /// The consumer to continue as when authentication fails with 401.
    pub fn anonymous(&self) -> Option<&Arc<str>> {
        self.anonymous.as_ref()
    }
}

/// Checks a route's `anonymous_consumer` (reported under `at`).
pub(crate) fn anonymous(
    name: Option<&str>,
    consumers: &ConsumerSet,
    at: &str,
) -> Result<Option<Arc<str>>, ConfigError> {
    match name {
        Some(name) if !consumers.has_username(name) => Err(invalid(
            format!("{at}.anonymous_consumer"),
            format!("no consumer named {name:?}"),
        )),
        Some(name) => Ok(Some(Arc::from(name))),
        None => Ok(None),
    }
}

/// Why a request was not authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Failure {
    /// No token anywhere.
    Missing,
    /// Different tokens in different places (Kong's rule).
    Multiple,
    /// Not a JWT.
    Malformed,
    /// No (string) key claim.
    NoKeyClaim,
    /// No consumer has that key.
    UnknownConsumer,
    /// Header `alg` differs from the consumer's algorithm.
    AlgMismatch,
    /// Signature does not verify.
    BadSignature,
    /// `exp`/`nbf` rules.
    Claims(ClaimError),
    /// The consumer's key is not available (agent): fail closed with 503.
    Unavailable,
}

/// Metric label values, in [`Failure::index`] order.
pub const FAILURE_REASONS: [&str; 9] = [
    "missing",
    "multiple_tokens",
    "malformed",
    "no_key_claim",
    "unknown_consumer",
    "alg_mismatch",
    "bad_signature",
    "claims",
    "key_unavailable",
];

impl Failure {
    /// Position in [`FAILURE_REASONS`].
    pub fn index(self) -> usize {
        match self {
            Self::Missing => 0,
            Self::Multiple => 1,
            Self::Malformed => 2,
            Self::NoKeyClaim => 3,
            Self::UnknownConsumer => 4,
            Self::AlgMismatch => 5,
            Self::BadSignature => 6,
            Self::Claims(_) => 7,
            Self::Unavailable => 8,
        }
    }

    /// The response. Bodies are generic on purpose: they do not tell a caller whether
    /// a key exists or which check failed.
    pub fn response(self) -> Response<ProxyBody> {
        let (status, message) = match self {
            Self::Missing => (
                StatusCode::UNAUTHORIZED,
                r#"{"message":"Missing JWT token in request"}"#,
            ),
            Self::Multiple | Self::Malformed => (
                StatusCode::UNAUTHORIZED,
                r#"{"message":"JWT token invalid"}"#,
            ),
            Self::Unavailable => (
                StatusCode::SERVICE_UNAVAILABLE,
                r#"{"message":"failed to verify jwt"}"#,
            ),
            _ => (
                StatusCode::UNAUTHORIZED,
                r#"{"message":"failed to verify jwt"}"#,
            ),
        };
        let mut response = body::json(status, message);
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(r#"Bearer realm="jwt""#),
            );
        }
        response
    }
}

/// Authenticates the request; on success returns the consumer's username. With
/// `hide_credentials`, the token is removed from wherever it was found.
pub fn authenticate(
    conf: &JwtAuthRoute,
    auth: &AuthState,
    parts: &mut Parts,
    now: u64,
) -> Result<Arc<str>, Failure> {
    // Borrowed from the request unless the request is about to lose it; then copied
    // into `hidden`, which wipes the copy when this returns.
    let mut hidden = Zeroizing::new(Vec::new());
    let token = if conf.hide_credentials {
        let found = find_token(conf, parts)?
            .map(|t| hidden.extend_from_slice(&t))
            .is_some();
        hide(conf, parts);
        found.then_some(Cow::Borrowed(hidden.as_slice()))
    } else {
        find_token(conf, parts)?
    };
    let token = token.ok_or(Failure::Missing)?;
    if let Some(hit) = conf.verified.get(&token)
        && let Some(consumer) = auth.jwt_consumer(&hit.key)
        && std::ptr::eq(hit.by.as_ptr(), Arc::as_ptr(consumer))
        && *hit.alg == *consumer.algorithm.as_str()
        && consumer.verify.is_ok()
    {
        // Verified before with this very key: only the time claims are left.
        let rules = TimeRules {
            grace: consumer.grace,
            ..conf.rules
        };
        hit.times.check(now, rules).map_err(Failure::Claims)?;
        return Ok(consumer.username.clone());
    }
    // UTF-8 only now: a token verified before was found by its bytes.
    let token = std::str::from_utf8(&token).map_err(|_| Failure::Malformed)?;
    let parsed = jwt::parse(token).map_err(|_| Failure::Malformed)?;
    let key = parsed
        .claims
        .get(&conf.key_claim)
        .and_then(|v| v.as_str())
        .ok_or(Failure::NoKeyClaim)?;
    let consumer = auth.jwt_consumer(key).ok_or(Failure::UnknownConsumer)?;
    if parsed.alg != consumer.algorithm.as_str() {
        return Err(Failure::AlgMismatch);
    }
    let verify_key = consumer.verify.as_ref().map_err(|_| Failure::Unavailable)?;
    if !parsed.verify_signature(consumer.algorithm, verify_key) {
        return Err(Failure::BadSignature);
    }
    let rules = TimeRules {
        grace: consumer.grace,
        ..conf.rules
    };
    let times = jwt::TimeClaims::of(&parsed.claims);
    times.check(now, rules).map_err(Failure::Claims)?;
    let username = consumer.username.clone();
    let by = Arc::downgrade(consumer);
    conf.verified.insert(Verified {
        alg: parsed.alg.into_boxed_str(),
        key: key.into(),
        times,
        by,
        token: Zeroizing::new(Box::from(token)),
    });
    Ok(username)
}

/// The token from the header (with or without `Bearer `), the query or the cookie.
/// Several different tokens are refused rather than guessing which one counts, within
/// one place as well as across places: two `Authorization` lines, two `jwt` query
/// parameters or two `jwt` cookies that differ would let the gateway check one token
/// while the upstream reads the other. A value longer than [`jwt::MAX_TOKEN_BYTES`] is
/// refused before it is decoded or copied.
fn find_token<'a>(
    conf: &'a JwtAuthRoute,
    parts: &'a Parts,
) -> Result<Option<Cow<'a, [u8]>>, Failure> {
    let mut found: Option<Cow<'a, [u8]>> = None;
    let mut offer = |raw: Cow<'a, [u8]>| -> Result<(), Failure> {
        if raw.len() > jwt::MAX_TOKEN_BYTES {
            return Err(Failure::Malformed);
        }
        match &found {
            _ if raw.is_empty() => Ok(()),
            Some(first) if *first != raw => Err(Failure::Multiple),
            Some(_) => Ok(()),
            None => {
                found = Some(raw);
                Ok(())
            }
        }
    };
    // One pass over the fields finds the token's header and whether a cookie came: two
    // lookups by name would hash each name, and a request has few fields.
    let mut has_cookie = false;
    for (name, value) in &parts.headers {
        has_cookie |= name == header::COOKIE;
        if *name != conf.header {
            continue;
        }
        if value.len() > jwt::MAX_TOKEN_BYTES + 16 {
            return Err(Failure::Malformed);
        }
        // Bytes, unchecked: a token not seen before is checked as UTF-8 before it is
        // decoded, and one verified before matches it byte for byte.
        offer(Cow::Borrowed(strip_bearer(value.as_bytes())))?;
    }
    if let Some(query) = parts.uri.query() {
        for pair in query.split('&') {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            if query::decode(k).as_deref() != Some(conf.query.as_str()) {
                continue;
            }
            if v.len() > 3 * jwt::MAX_TOKEN_BYTES {
                return Err(Failure::Malformed);
            }
            offer(Cow::Owned(
                query::decode(v).ok_or(Failure::Malformed)?.into_bytes(),
            ))?;
        }
    }
    for value in has_cookie
        .then(|| cookies(&parts.headers, &conf.cookie))
        .into_iter()
        .flatten()
    {
        offer(Cow::Borrowed(value.as_bytes()))?;
    }
    Ok(found)
}

/// The credentials of an `Authorization`-style value, with or without the `Bearer` scheme.
fn strip_bearer(value: &[u8]) -> &[u8] {
    let value = value.trim_ascii();
    match value.split_at_checked(6) {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case(b"bearer") => match rest {
            [] => rest,
            [b' ' | b'\t', ..] => rest.trim_ascii_start(),
            _ => value,
        },
        _ => value,
    }
}

/// Removes the token's header, query parameter and cookie.
fn hide(conf: &JwtAuthRoute, parts: &mut Parts) {
    parts.headers.remove(&conf.header);
    query::remove_param(&mut parts.uri, &conf.query);
    let cookies: Vec<String> = parts
        .headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .map(str::trim)
        .filter(|c| !c.is_empty() && c.split_once('=').map_or(*c, |(n, _)| n.trim()) != conf.cookie)
        .map(str::to_owned)
        .collect();
    parts.headers.remove(header::COOKIE);
    if !cookies.is_empty()
        && let Ok(v) = HeaderValue::from_str(&cookies.join("; "))
    {
        parts.headers.insert(header::COOKIE, v);
    }
}

/// Every value of cookie `name`, in order.
fn cookies<'a>(headers: &'a http::HeaderMap, name: &'a str) -> impl Iterator<Item = &'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(move |c| {
            let (k, v) = c.split_once('=')?;
            (k.trim() == name).then(|| v.trim().trim_matches('"'))
        })
}

#[cfg(test)]
mod tests;
