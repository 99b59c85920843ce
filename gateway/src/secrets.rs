//! The secrets the agent sent, held in zeroizing memory.
//!
//! A [`SecretSnapshot`] is immutable once built; the agent client replaces the whole
//! snapshot when a new one arrives, so readers never see a half-updated set.

use std::collections::HashMap;
use std::time::{Instant, SystemTime};

use keygate_proto::agent::v1 as pb;
use secrecy::{ExposeSecret as _, SecretBox};
use zeroize::Zeroize as _;

/// Drops a JSON value after zeroizing every string in it (a resource or an Admin API
/// body may hold credentials).
pub fn wipe(mut value: serde_json::Value) {
    zeroize_strings(&mut value);
}

/// Zeroizes every string in `value`, at any depth (object keys are names, not values,
/// and stay).
fn zeroize_strings(value: &mut serde_json::Value) {
    use serde_json::Value;
    match value {
        Value::String(s) => s.zeroize(),
        Value::Array(items) => items.iter_mut().for_each(zeroize_strings),
        Value::Object(map) => map.values_mut().for_each(zeroize_strings),
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
}

/// One field value. Zeroized on drop; `Debug` prints no value.
pub struct SecretBytes(SecretBox<[u8]>);

impl SecretBytes {
    /// Takes `value` out of a decoded message, wiping the original buffer (its whole
    /// capacity) so no copy stays behind in freed memory.
    pub fn take(value: &mut Vec<u8>) -> Self {
        let boxed: Box<[u8]> = Box::from(value.as_slice());
        value.zeroize();
        Self(SecretBox::new(boxed))
    }

    /// From an inline literal of the configuration.
    pub fn from_slice(value: &[u8]) -> Self {
        Self(SecretBox::new(Box::from(value)))
    }

    /// The bytes.
    pub fn expose(&self) -> &[u8] {
        self.0.expose_secret()
    }
}

impl std::fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[REDACTED]")
    }
}

/// What the agent knows about one name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecretState {
    /// Read from Vault; fields present.
    Loaded,
    /// Vault has nothing at this path.
    NotFound,
    /// Vault refused the agent's token for this path.
    Denied,
    /// An answer this gateway does not understand (treated as absent).
    Unknown,
}

impl SecretState {
    /// The label used in metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Loaded => "loaded",
            Self::NotFound => "not_found",
            Self::Denied => "denied",
            Self::Unknown => "unknown",
        }
    }
}

/// One secret of a snapshot.
#[derive(Debug)]
pub struct SecretEntry {
    /// The agent's answer.
    pub state: SecretState,
    /// Bumped by the agent on each value change.
    pub version: u64,
    /// The agent could not refresh it; this is the last good value.
    pub stale: bool,
    /// Field name to value; empty unless loaded.
    pub fields: HashMap<String, SecretBytes>,
}

/// A complete set of secrets from one Watch message.
#[derive(Debug)]
pub struct SecretSnapshot {
    /// The agent's snapshot version on this stream.
    pub version: u64,
    /// The agent process that sent it.
    pub boot_id: String,
    /// When it arrived (monotonic).
    pub received_at: Instant,
    /// When it arrived (wall clock, for display).
    pub received_wall: SystemTime,
    /// By name.
    pub secrets: HashMap<String, SecretEntry>,
}

impl SecretSnapshot {
    /// Converts a message, moving every value into zeroizing memory.
    pub fn from_proto(mut snapshot: pb::Snapshot) -> Self {
        let secrets = snapshot
            .secrets
            .drain(..)
            .map(|mut secret| {
                let state = match pb::SecretState::try_from(secret.state) {
                    Ok(pb::SecretState::Loaded) => SecretState::Loaded,
                    Ok(pb::SecretState::NotFound) => SecretState::NotFound,
                    Ok(pb::SecretState::Denied) => SecretState::Denied,
                    Ok(pb::SecretState::Unspecified) | Err(_) => SecretState::Unknown,
                };
                let fields = if state == SecretState::Loaded {
                    secret
                        .fields
                        .iter_mut()
                        .map(|(k, v)| (k.clone(), SecretBytes::take(v)))
                        .collect()
                } else {
                    HashMap::new()
                };
                // Anything left (values of a secret in a state we ignore) is wiped too.
                for v in secret.fields.values_mut() {
                    v.zeroize();
                }
                let entry = SecretEntry {
                    state,
                    version: secret.version,
                    stale: secret.stale,
                    fields,
                };
                (std::mem::take(&mut secret.name), entry)
            })
            .collect();
        Self {
            version: snapshot.version,
            boot_id: std::mem::take(&mut snapshot.boot_id),
            received_at: Instant::now(),
            received_wall: SystemTime::now(),
            secrets,
        }
    }

    /// One field of one secret, if loaded.
    pub fn field(&self, name: &str, field: &str) -> Result<&SecretBytes, Missing> {
        let entry = self.secrets.get(name).ok_or(Missing::NotInSnapshot)?;
        match entry.state {
            SecretState::Loaded => entry.fields.get(field).ok_or(Missing::NoSuchField),
            other => Err(Missing::State(other)),
        }
    }

    /// Number of stale secrets.
    pub fn stale_count(&self) -> usize {
        self.secrets.values().filter(|s| s.stale).count()
    }
}

/// Why a field is not available.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Missing {
    /// No snapshot has this name (none received yet, or the names just changed).
    #[error("not received from the agent yet")]
    NotInSnapshot,
    /// The agent answered, but not with a value.
    #[error("agent reports {}", .0.as_str())]
    State(SecretState),
    /// The secret has no such field.
    #[error("no such field in the secret")]
    NoSuchField,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_string_in_a_json_value_is_zeroized() {
        let mut value = serde_json::json!({
            "username": "jack",
            "plugins": {"jwt-auth": {"key": "k", "secret": "s3cr3t", "exp": 60}},
            "list": ["a", {"private_key": "pem"}],
        });
        zeroize_strings(&mut value);
        assert_eq!(
            value,
            serde_json::json!({
                "username": "",
                "plugins": {"jwt-auth": {"key": "", "secret": "", "exp": 60}},
                "list": ["", {"private_key": ""}],
            })
        );
    }

    #[test]
    fn take_wipes_the_source_and_keeps_the_value() {
        let mut v = b"s3cret".to_vec();
        let s = SecretBytes::take(&mut v);
        assert!(v.is_empty());
        assert_eq!(s.expose(), b"s3cret");
        assert_eq!(format!("{s:?}"), "[REDACTED]");
    }

    #[test]
    fn from_proto_maps_states_and_fields() {
        let mut loaded = pb::Secret {
            name: "consumer/jack/jwt-auth".into(),
            state: pb::SecretState::Loaded as i32,
            version: 3,
            stale: true,
            ..Default::default()
        };
        loaded.fields.insert("secret".into(), b"abc".to_vec());
        let missing = pb::Secret {
            name: "consumer/jim/jwt-auth".into(),
            state: pb::SecretState::NotFound as i32,
            ..Default::default()
        };
        let snap = SecretSnapshot::from_proto(pb::Snapshot {
            version: 7,
            boot_id: "boot".into(),
            secrets: vec![loaded, missing],
        });
        assert_eq!(snap.version, 7);
        assert_eq!(snap.stale_count(), 1);
        let field = snap.field("consumer/jack/jwt-auth", "secret");
        assert_eq!(field.map(SecretBytes::expose), Ok(&b"abc"[..]));
        assert_eq!(
            snap.field("consumer/jack/jwt-auth", "public_key").err(),
            Some(Missing::NoSuchField)
        );
        assert_eq!(
            snap.field("consumer/jim/jwt-auth", "secret").err(),
            Some(Missing::State(SecretState::NotFound))
        );
        assert_eq!(
            snap.field("consumer/x/jwt-auth", "secret").err(),
            Some(Missing::NotInSnapshot)
        );
    }
}
