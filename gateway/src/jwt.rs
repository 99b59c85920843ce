//! JSON Web Tokens: parsing, signature verification, time-claim checks and signing.
//!
//! The token is parsed here rather than with `jsonwebtoken::decode` so that each
//! failure maps onto APISIX's distinct answers (malformed token, unknown key, bad
//! signature) and so that the key claim can pick the consumer before any key is used.
//! HMAC runs on `ring` directly with a pre-computed key (no copy of the secret per
//! request); asymmetric algorithms use `jsonwebtoken`'s primitives.

use base64::Engine as _;
use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use jsonwebtoken::{DecodingKey, EncodingKey};
use secrecy::{ExposeSecret as _, SecretBox};
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::config::TimeClaim;

mod object;

/// base64url as JWS compact serialization defines it (RFC 7515 section 2): no padding,
/// neither written nor accepted, and no non-canonical trailing bits, so that one token
/// has exactly one spelling.
const B64URL: GeneralPurpose = GeneralPurpose::new(
    &alphabet::URL_SAFE,
    GeneralPurposeConfig::new()
        .with_encode_padding(false)
        .with_decode_padding_mode(DecodePaddingMode::RequireNone),
);

/// Longest token accepted, in bytes. Longer ones are refused before any decoding: a
/// real token (a few claims, at most an RSA-4096 signature) is well under 2 KiB.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;

/// A signature algorithm a consumer can use.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Deserialize)]
pub enum Algorithm {
    /// HMAC SHA-256 (APISIX's default).
    #[default]
    HS256,
    /// HMAC SHA-384.
    HS384,
    /// HMAC SHA-512.
    HS512,
    /// RSASSA-PKCS1-v1_5 SHA-256.
    RS256,
    /// RSASSA-PKCS1-v1_5 SHA-384.
    RS384,
    /// RSASSA-PKCS1-v1_5 SHA-512.
    RS512,
    /// ECDSA P-256 SHA-256.
    ES256,
    /// ECDSA P-384 SHA-384.
    ES384,
    /// RSASSA-PSS SHA-256.
    PS256,
    /// Ed25519.
    EdDSA,
}

impl Algorithm {
    /// The name used in a token's header.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::HS256 => "HS256",
            Self::HS384 => "HS384",
            Self::HS512 => "HS512",
            Self::RS256 => "RS256",
            Self::RS384 => "RS384",
            Self::RS512 => "RS512",
            Self::ES256 => "ES256",
            Self::ES384 => "ES384",
            Self::PS256 => "PS256",
            Self::EdDSA => "EdDSA",
        }
    }

    /// True for the HMAC family (a shared secret rather than a key pair).
    pub fn is_hmac(self) -> bool {
        self.hmac().is_some()
    }

    fn hmac(self) -> Option<ring::hmac::Algorithm> {
        match self {
            Self::HS256 => Some(ring::hmac::HMAC_SHA256),
            Self::HS384 => Some(ring::hmac::HMAC_SHA384),
            Self::HS512 => Some(ring::hmac::HMAC_SHA512),
            _ => None,
        }
    }

    fn jsonwebtoken(self) -> jsonwebtoken::Algorithm {
        match self {
            Self::HS256 => jsonwebtoken::Algorithm::HS256,
            Self::HS384 => jsonwebtoken::Algorithm::HS384,
            Self::HS512 => jsonwebtoken::Algorithm::HS512,
            Self::RS256 => jsonwebtoken::Algorithm::RS256,
            Self::RS384 => jsonwebtoken::Algorithm::RS384,
            Self::RS512 => jsonwebtoken::Algorithm::RS512,
            Self::ES256 => jsonwebtoken::Algorithm::ES256,
            Self::ES384 => jsonwebtoken::Algorithm::ES384,
            Self::PS256 => jsonwebtoken::Algorithm::PS256,
            Self::EdDSA => jsonwebtoken::Algorithm::EdDSA,
        }
    }
}

/// Key material could not be turned into a key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// The PEM text is not a key of the algorithm's family.
    #[error("not a PEM {family} key usable with {alg}")]
    Pem {
        /// Expected key family.
        family: &'static str,
        /// The algorithm.
        alg: &'static str,
    },
    /// A key pair algorithm was given a shared secret, or the other way round.
    #[error("{alg} does not use this kind of key")]
    WrongKind {
        /// The algorithm.
        alg: &'static str,
    },
    /// An empty HMAC secret.
    #[error("the secret is empty")]
    EmptySecret,
    /// `base64_secret` is set but the secret is not base64.
    #[error("the secret is not valid base64")]
    Base64,
}

fn family(alg: Algorithm) -> &'static str {
    match alg {
        Algorithm::RS256 | Algorithm::RS384 | Algorithm::RS512 | Algorithm::PS256 => "RSA",
        Algorithm::ES256 | Algorithm::ES384 => "EC",
        Algorithm::EdDSA => "Ed25519",
        Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => "HMAC",
    }
}

/// What verifies a consumer's tokens.
pub enum VerifyKey {
    /// HMAC, pre-keyed.
    Hmac(ring::hmac::Key, Option<ShortSecret>),
    /// A public key.
    Public(Box<DecodingKey>),
}

// DecodingKey's Debug would print the key bytes; HMAC keys must never be printed.
impl std::fmt::Debug for VerifyKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Hmac(..) => f.write_str("VerifyKey::Hmac([REDACTED])"),
            Self::Public(_) => f.write_str("VerifyKey::Public(..)"),
        }
    }
}

impl VerifyKey {
    /// An HMAC key from a secret (base64-decoded first if `base64_secret`). A secret
    /// shorter than the hash output is accepted for APISIX compatibility; the key
    /// remembers it ([`Self::short_secret`]) so that the gateway can warn once per
    /// consumer rather than on every build of the consumers.
    pub fn hmac(alg: Algorithm, secret: &[u8], base64_secret: bool) -> Result<Self, KeyError> {
        let (key, len) = hmac_key(alg, secret, base64_secret)?;
        let short = alg
            .hmac()
            .map(|h| h.digest_algorithm().output_len())
            .filter(|&minimum| len < minimum)
            .map(|minimum| ShortSecret {
                bytes: len,
                minimum,
            });
        Ok(Self::Hmac(key, short))
    }

    /// How far short of RFC 8725's minimum the HMAC secret behind this key is, if it is.
    pub fn short_secret(&self) -> Option<ShortSecret> {
        match self {
            Self::Hmac(_, short) => *short,
            Self::Public(_) => None,
        }
    }

    /// A public key from PEM text.
    pub fn public_pem(alg: Algorithm, pem: &[u8]) -> Result<Self, KeyError> {
        let err = || KeyError::Pem {
            family: family(alg),
            alg: alg.as_str(),
        };
        let key = match alg {
            Algorithm::RS256 | Algorithm::RS384 | Algorithm::RS512 | Algorithm::PS256 => {
                DecodingKey::from_rsa_pem(pem).map_err(|_| err())?
            }
            Algorithm::ES256 | Algorithm::ES384 => {
                DecodingKey::from_ec_pem(pem).map_err(|_| err())?
            }
            Algorithm::EdDSA => DecodingKey::from_ed_pem(pem).map_err(|_| err())?,
            Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => {
                return Err(KeyError::WrongKind { alg: alg.as_str() });
            }
        };
        Ok(Self::Public(Box::new(key)))
    }
}

/// An HMAC secret shorter than its hash's output. RFC 8725 section 3.5: a key that
/// short can be brute-forced offline from one signed token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShortSecret {
    /// The secret's length (after base64 decoding, where it applies).
    pub bytes: usize,
    /// The hash's output length, the least the RFC asks for.
    pub minimum: usize,
}

/// The HMAC key and the length of the secret it was made from.
fn hmac_key(
    alg: Algorithm,
    secret: &[u8],
    base64_secret: bool,
) -> Result<(ring::hmac::Key, usize), KeyError> {
    let Some(hmac) = alg.hmac() else {
        return Err(KeyError::WrongKind { alg: alg.as_str() });
    };
    if base64_secret {
        let decoded = zeroize::Zeroizing::new(
            base64::engine::general_purpose::STANDARD
                .decode(secret)
                .map_err(|_| KeyError::Base64)?,
        );
        if decoded.is_empty() {
            return Err(KeyError::EmptySecret);
        }
        Ok((ring::hmac::Key::new(hmac, &decoded), decoded.len()))
    } else {
        if secret.is_empty() {
            return Err(KeyError::EmptySecret);
        }
        Ok((ring::hmac::Key::new(hmac, secret), secret.len()))
    }
}

/// What signs a consumer's tokens (the sign endpoint).
pub enum SignKey {
    /// HMAC, pre-keyed.
    Hmac(ring::hmac::Key),
    /// A PEM private key, kept in zeroizing memory and parsed per signature (signing
    /// is rare, and a parsed key would keep the key bytes in memory we cannot wipe).
    Private(SecretBox<[u8]>),
}

impl std::fmt::Debug for SignKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Hmac(_) => f.write_str("SignKey::Hmac([REDACTED])"),
            Self::Private(_) => f.write_str("SignKey::Private([REDACTED])"),
        }
    }
}

impl SignKey {
    /// An HMAC key from a secret.
    pub fn hmac(alg: Algorithm, secret: &[u8], base64_secret: bool) -> Result<Self, KeyError> {
        hmac_key(alg, secret, base64_secret).map(|(key, _)| Self::Hmac(key))
    }

    /// A private key from PEM text; checked now so a bad key is reported early.
    pub fn private_pem(alg: Algorithm, pem: &[u8]) -> Result<Self, KeyError> {
        encoding_key(alg, pem)?;
        Ok(Self::Private(SecretBox::new(Box::from(pem))))
    }
}

fn encoding_key(alg: Algorithm, pem: &[u8]) -> Result<EncodingKey, KeyError> {
    let err = || KeyError::Pem {
        family: family(alg),
        alg: alg.as_str(),
    };
    match alg {
        Algorithm::RS256 | Algorithm::RS384 | Algorithm::RS512 | Algorithm::PS256 => {
            EncodingKey::from_rsa_pem(pem).map_err(|_| err())
        }
        Algorithm::ES256 | Algorithm::ES384 => EncodingKey::from_ec_pem(pem).map_err(|_| err()),
        Algorithm::EdDSA => EncodingKey::from_ed_pem(pem).map_err(|_| err()),
        Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => {
            Err(KeyError::WrongKind { alg: alg.as_str() })
        }
    }
}

/// A token that is structurally a JWS compact serialization with JSON header and
/// claims. Nothing about it is trusted yet.
#[derive(Debug)]
pub struct Token<'a> {
    /// `header.payload`, the bytes the signature covers.
    signing_input: &'a str,
    /// The base64url signature.
    signature: &'a str,
    /// The header's `alg`.
    pub alg: String,
    /// The claims.
    pub claims: Map<String, Value>,
}

/// Why a token was not parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("malformed token")]
pub struct Malformed;

/// Parses the compact serialization; does not verify anything.
///
/// Refused as malformed: more than [`MAX_TOKEN_BYTES`]; anything but three non-empty
/// base64url parts without padding; a header or claims set that is not a JSON object
/// or names a member twice (RFC 7515 section 5.2 and RFC 7519 section 4: a parser that
/// keeps the first and one that keeps the last would disagree on the token); a header
/// without a string `alg`; a header with `crit` (RFC 7515 section 4.1.11: no extension
/// is understood here, so none may be required).
pub fn parse(token: &str) -> Result<Token<'_>, Malformed> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err(Malformed);
    }
    let (signing_input, signature) = token.rsplit_once('.').ok_or(Malformed)?;
    let (header, payload) = signing_input.split_once('.').ok_or(Malformed)?;
    for part in [header, payload, signature] {
        if part.is_empty() || !part.bytes().all(is_b64url) {
            return Err(Malformed);
        }
    }
    let header = object::parse(&B64URL.decode(header).map_err(|_| Malformed)?)?;
    if header.contains_key("crit") {
        return Err(Malformed);
    }
    let Some(Value::String(alg)) = header.get("alg") else {
        return Err(Malformed);
    };
    let claims = object::parse(&B64URL.decode(payload).map_err(|_| Malformed)?)?;
    Ok(Token {
        signing_input,
        signature,
        alg: alg.clone(),
        claims,
    })
}

fn is_b64url(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-' || b == b'_'
}

impl Token<'_> {
    /// Checks the signature with `key` for algorithm `alg` (the consumer's, which the
    /// caller has already compared with the header's).
    pub fn verify_signature(&self, alg: Algorithm, key: &VerifyKey) -> bool {
        match key {
            VerifyKey::Hmac(key, _) => match B64URL.decode(self.signature) {
                // ring compares in constant time.
                Ok(sig) => ring::hmac::verify(key, self.signing_input.as_bytes(), &sig).is_ok(),
                Err(_) => false,
            },
            VerifyKey::Public(key) => jsonwebtoken::crypto::verify(
                self.signature,
                self.signing_input.as_bytes(),
                key,
                alg.jsonwebtoken(),
            )
            .unwrap_or(false),
        }
    }
}

/// Why the time claims rejected a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ClaimError {
    /// `exp` passed (beyond the grace period).
    #[error("token expired")]
    Expired,
    /// `nbf` not reached (beyond the grace period).
    #[error("token not valid yet")]
    NotYetValid,
    /// A claim listed in `claims_to_verify` (or required by `maximum_expiration`) is absent.
    #[error("required claim missing")]
    Missing,
    /// A time claim is not a number.
    #[error("time claim is not a number")]
    NotANumber,
    /// `exp` is further away than `maximum_expiration`.
    #[error("token lifetime exceeds the maximum")]
    TooLong,
}

/// The rules for `exp` and `nbf`.
#[derive(Debug, Clone, Copy, Default)]
pub struct TimeRules {
    /// Leeway in seconds.
    pub grace: u64,
    /// `exp` must be present.
    pub require_exp: bool,
    /// `nbf` must be present.
    pub require_nbf: bool,
    /// If non-zero, `exp` must be at most this many seconds after now.
    pub maximum_expiration: u64,
}

impl TimeRules {
    /// Marks the listed claims as required.
    pub fn requiring(mut self, claims: &[TimeClaim]) -> Self {
        for claim in claims {
            match claim {
                TimeClaim::Exp => self.require_exp = true,
                TimeClaim::Nbf => self.require_nbf = true,
            }
        }
        self
    }
}

/// Checks `exp` and `nbf` (when present, or when required) against `now` (Unix
/// seconds). A token is valid while `now < exp + grace` and once `now >= nbf - grace`.
pub fn check_times(
    claims: &Map<String, Value>,
    now: u64,
    rules: TimeRules,
) -> Result<(), ClaimError> {
    TimeClaims::of(claims).check(now, rules)
}

/// A token's `exp` and `nbf` as read from its claims: a token verified once is checked
/// again on each request without looking its claims up again.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TimeClaims {
    exp: Result<Option<f64>, ClaimError>,
    nbf: Result<Option<f64>, ClaimError>,
}

impl TimeClaims {
    /// `exp` and `nbf` of `claims`.
    pub fn of(claims: &Map<String, Value>) -> Self {
        Self {
            exp: numeric(claims, "exp"),
            nbf: numeric(claims, "nbf"),
        }
    }

    /// [`check_times`] for these claims.
    pub fn check(&self, now: u64, rules: TimeRules) -> Result<(), ClaimError> {
        let now = now as f64;
        let grace = rules.grace as f64;
        let exp = self.exp?;
        let nbf = self.nbf?;
        match exp {
            Some(exp) if now >= exp + grace => return Err(ClaimError::Expired),
            Some(exp)
                if rules.maximum_expiration > 0 && exp - now > rules.maximum_expiration as f64 =>
            {
                return Err(ClaimError::TooLong);
            }
            None if rules.require_exp || rules.maximum_expiration > 0 => {
                return Err(ClaimError::Missing);
            }
            _ => {}
        }
        match nbf {
            Some(nbf) if now < nbf - grace => Err(ClaimError::NotYetValid),
            None if rules.require_nbf => Err(ClaimError::Missing),
            _ => Ok(()),
        }
    }
}

/// A time claim's value: absent is `None`; present, it must be a JSON number (`null`,
/// strings and the like are refused, not read as absent).
fn numeric(claims: &Map<String, Value>, name: &str) -> Result<Option<f64>, ClaimError> {
    match claims.get(name) {
        None => Ok(None),
        Some(Value::Number(n)) => n.as_f64().map(Some).ok_or(ClaimError::NotANumber),
        Some(_) => Err(ClaimError::NotANumber),
    }
}

/// Signing failed (a private key that no longer parses).
#[derive(Debug, Clone, thiserror::Error)]
#[error("cannot sign: {0}")]
pub struct SignError(String);

/// Signs `claims` into a compact token with header `{"alg":...,"typ":"JWT"}`.
pub fn sign(
    alg: Algorithm,
    key: &SignKey,
    claims: &Map<String, Value>,
) -> Result<String, SignError> {
    let header = serde_json::json!({ "alg": alg.as_str(), "typ": "JWT" });
    let header = serde_json::to_vec(&header).map_err(|e| SignError(e.to_string()))?;
    let payload = serde_json::to_vec(claims).map_err(|e| SignError(e.to_string()))?;
    let mut token = B64URL.encode(header);
    token.push('.');
    token.push_str(&B64URL.encode(payload));
    let signature = match key {
        SignKey::Hmac(key) => B64URL.encode(ring::hmac::sign(key, token.as_bytes())),
        SignKey::Private(pem) => {
            let key =
                encoding_key(alg, pem.expose_secret()).map_err(|e| SignError(e.to_string()))?;
            jsonwebtoken::crypto::sign(token.as_bytes(), &key, alg.jsonwebtoken())
                .map_err(|e| SignError(e.to_string()))?
        }
    };
    token.push('.');
    token.push_str(&signature);
    Ok(token)
}

#[cfg(test)]
mod tests;
