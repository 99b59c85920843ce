//! Admin write-through (`admin.vault_write_through`): a consumer written with `vault: {}`
//! and an inline credential has the credential stored in Vault through the agent's
//! `Put`, and only the reference is kept, so the state directory never holds it (the
//! point the seed's first document makes about etcd).
//!
//! What moves, per plugin (the fields the `vault: {}` layout of
//! `consumer/<username>/<plugin>` reads):
//!
//! ```text
//! jwt-auth, HS*           secret
//! jwt-auth, RS/PS/ES/EdDSA private_key (and public_key when it is inline too)
//! key-auth                key
//! basic-auth              password
//! ```
//!
//! Only literals move; `$env://` and `$secret://` references stay where they are (and
//! next to `vault: {}` they are refused as in the file). A key-pair consumer with only an
//! inline `public_key` is the seed's third case (public key in the consumer, private key
//! in Vault) and moves nothing. A `Put` replaces the whole secret in Vault, so every field
//! the layout reads from Vault after the move must be among the moved ones: an inline
//! `private_key` without its `public_key` is refused rather than leaving Vault with a
//! private key and no public key.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use http::StatusCode;
use keygate_proto::agent::v1::PutRequest;
use serde_json::{Map, Value};
use tonic::Code;
use zeroize::Zeroizing;

use super::{Answer, error};
use crate::consumers::vault_name;
use crate::gateway::Shared;
use crate::secrets::wipe;

/// One `Put` to make: the agent name and the fields (values wiped on drop).
pub(crate) struct VaultWrite {
    /// `consumer/<username>/<plugin>`.
    pub name: String,
    /// Field name and value.
    pub fields: Vec<(String, Zeroizing<String>)>,
}

impl std::fmt::Debug for VaultWrite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.fields.iter().map(|(k, _)| k.as_str()).collect();
        f.debug_struct("VaultWrite")
            .field("name", &self.name)
            .field("fields", &names)
            .finish()
    }
}

impl VaultWrite {
    /// The field names, for messages and logs.
    pub fn field_names(&self) -> Vec<&str> {
        self.fields.iter().map(|(k, _)| k.as_str()).collect()
    }
}

/// A consumer split into what is stored and what goes to Vault.
pub(crate) struct Plan {
    /// The consumer as stored: the moved fields removed, `vault: {}` kept.
    pub stripped: Value,
    /// The consumer as if its credentials were inline (the moved fields in place,
    /// `vault` removed), to check the values themselves before anything is written.
    /// Wipe it with [`wipe`] once checked.
    pub inline: Value,
    /// The writes, one per plugin.
    pub writes: Vec<VaultWrite>,
}

// `inline` holds the credentials: never printed.
impl std::fmt::Debug for Plan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plan")
            .field("stripped", &self.stripped)
            .field("inline", &"[REDACTED]")
            .field("writes", &self.writes)
            .finish()
    }
}

/// The plugins whose credentials can move.
const PLUGINS: [&str; 3] = ["jwt-auth", "key-auth", "basic-auth"];

/// A literal credential (not a `$env://` or `$secret://` reference).
fn literal(v: Option<&Value>) -> bool {
    matches!(v, Some(Value::String(s)) if !s.starts_with("$env://") && !s.starts_with("$secret://"))
}

/// The fields of `plugin` that move when `conf` has `vault: {}`, and the fields the
/// layout then reads from Vault (`None`: this plugin moves nothing).
fn moving_fields(
    plugin: &str,
    conf: &Map<String, Value>,
) -> Option<(Vec<&'static str>, Vec<&'static str>)> {
    match plugin {
        "jwt-auth" => {
            let alg = match conf.get("algorithm") {
                None | Some(Value::Null) => "HS256",
                Some(Value::String(s)) => s.as_str(),
                Some(_) => return None,
            };
            if alg.starts_with("HS") {
                literal(conf.get("secret")).then(|| (vec!["secret"], vec!["secret"]))
            } else if literal(conf.get("private_key")) {
                let mut moved = vec!["private_key"];
                if literal(conf.get("public_key")) {
                    moved.push("public_key");
                }
                let mut read = vec!["private_key"];
                if literal(conf.get("public_key")) || conf.get("public_key").is_none() {
                    read.push("public_key");
                }
                Some((moved, read))
            } else {
                None
            }
        }
        "key-auth" => literal(conf.get("key")).then(|| (vec!["key"], vec!["key"])),
        "basic-auth" => literal(conf.get("password")).then(|| (vec!["password"], vec!["password"])),
        _ => None,
    }
}

/// Splits a consumer's JSON. `Ok(None)`: nothing to write (no plugin has `vault: {}`
/// next to an inline credential). `Err`: the 400 message, naming the field.
pub(crate) fn plan(consumer: &Value) -> Result<Option<Plan>, String> {
    let Some(username) = consumer.get("username").and_then(Value::as_str) else {
        return Ok(None);
    };
    let mut stripped = consumer.clone();
    let mut inline = consumer.clone();
    let mut writes = Vec::new();
    for plugin in PLUGINS {
        let Some(Value::Object(conf)) = consumer.get("plugins").and_then(|p| p.get(plugin)) else {
            continue;
        };
        if matches!(conf.get("vault"), None | Some(Value::Null)) {
            continue;
        }
        let Some((moved, read)) = moving_fields(plugin, conf) else {
            continue;
        };
        if let Some(missing) = read.iter().find(|f| !moved.contains(f)) {
            return Err(format!(
                "invalid configuration: plugins.{plugin}.{missing}: required next to an inline {} with vault: {{}} (the credential is written to Vault as {}, which replaces the whole secret there)",
                moved.join(" and "),
                vault_name(username, plugin),
            ));
        }
        let mut fields = Vec::with_capacity(moved.len());
        if let Some(Value::Object(conf)) =
            stripped.get_mut("plugins").and_then(|p| p.get_mut(plugin))
        {
            for field in &moved {
                if let Some(Value::String(value)) = conf.remove(*field) {
                    fields.push(((*field).to_owned(), Zeroizing::new(value)));
                }
            }
        }
        if let Some(Value::Object(conf)) = inline.get_mut("plugins").and_then(|p| p.get_mut(plugin))
        {
            conf.remove("vault");
        }
        writes.push(VaultWrite {
            name: vault_name(username, plugin),
            fields,
        });
    }
    if writes.is_empty() {
        wipe(stripped);
        wipe(inline);
        return Ok(None);
    }
    Ok(Some(Plan {
        stripped,
        inline,
        writes,
    }))
}

/// How long one call to the agent may take (its own Vault timeout is 10 s by default).
const AGENT_TIMEOUT: Duration = Duration::from_secs(15);

/// How long an answer waits for this gateway's snapshot to carry the written versions.
const CATCH_UP: Duration = Duration::from_secs(5);

/// Writes each secret through the agent at `socket`, in order; returns the agent's
/// version of each. Refused or unreachable: the answer to give (403 when the agent's
/// policy or Vault's refuses, 400 for a value the agent rejects, 503 otherwise), naming
/// any secret already written before the failure.
pub(crate) async fn put_all(
    socket: &Path,
    writes: &[VaultWrite],
) -> Result<Vec<(String, u64)>, Answer> {
    let unreachable = |why: String| {
        tracing::warn!(error = %why, "admin write-through: the agent is not reachable");
        error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "cannot store the credential in Vault: the agent is not reachable ({why}); nothing was changed"
            ),
        )
    };
    let mut client =
        match tokio::time::timeout(AGENT_TIMEOUT, keygate_proto::connect_direct(socket)).await {
            Ok(Ok(client)) => client,
            Ok(Err(e)) => return Err(unreachable(e.to_string())),
            Err(_) => return Err(unreachable("timed out connecting".to_owned())),
        };
    let mut done: Vec<(String, u64)> = Vec::with_capacity(writes.len());
    for write in writes {
        let request = PutRequest {
            name: write.name.clone(),
            fields: write
                .fields
                .iter()
                .map(|(k, v)| (k.clone(), v.as_bytes().to_vec()))
                .collect::<HashMap<_, _>>(),
        };
        let status = match tokio::time::timeout(AGENT_TIMEOUT, client.put(request)).await {
            Ok(Ok(response)) => {
                done.push((write.name.clone(), response.into_inner().version));
                continue;
            }
            Ok(Err(status)) => status,
            Err(_) => tonic::Status::deadline_exceeded("no answer from the agent in time"),
        };
        let http = match status.code() {
            Code::PermissionDenied => StatusCode::FORBIDDEN,
            Code::InvalidArgument => StatusCode::BAD_REQUEST,
            _ => StatusCode::SERVICE_UNAVAILABLE,
        };
        let why = match status.code() {
            Code::PermissionDenied => "permission denied",
            Code::InvalidArgument => "invalid value",
            Code::Unimplemented => "this agent has no Put; upgrade it",
            _ => "unavailable",
        };
        tracing::warn!(
            secret.name = %write.name, code = ?status.code(), error = %status.message(),
            "admin write-through: the agent did not store the credential"
        );
        let written = if done.is_empty() {
            "nothing was changed".to_owned()
        } else {
            let names: Vec<&str> = done.iter().map(|(n, _)| n.as_str()).collect();
            format!(
                "the consumer was not changed, but Vault already has {}",
                names.join(", ")
            )
        };
        return Err(error(
            http,
            format!(
                "cannot store the credential in Vault as {}: the agent refused ({why}: {}); {written}",
                write.name,
                status.message()
            ),
        ));
    }
    Ok(done)
}

/// Waits (at most [`CATCH_UP`]) until the gateway's snapshot has each `(name, version)`
/// at that version or later, then rebuilds the keys from it. False on time-out.
pub(crate) async fn caught_up(shared: &Shared, versions: &[(String, u64)]) -> bool {
    let deadline = Instant::now() + CATCH_UP;
    loop {
        let ready = shared.snapshot.load().as_deref().is_some_and(|s| {
            versions
                .iter()
                .all(|(name, version)| s.secrets.get(name).is_some_and(|e| e.version >= *version))
        });
        if ready {
            shared.rebuild_auth();
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fields(plan: &Plan) -> Vec<(String, Vec<(String, String)>)> {
        plan.writes
            .iter()
            .map(|w| {
                (
                    w.name.clone(),
                    w.fields
                        .iter()
                        .map(|(k, v)| (k.clone(), v.as_str().to_owned()))
                        .collect(),
                )
            })
            .collect()
    }

    #[test]
    fn hmac_secret_moves_and_only_the_reference_stays() {
        let consumer = json!({"username": "jack", "plugins": {"jwt-auth": {
            "key": "test-key", "secret": "s3cret", "vault": {}}}});
        let plan = plan(&consumer).unwrap().unwrap();
        assert_eq!(
            plan.stripped,
            json!({"username": "jack", "plugins": {"jwt-auth": {"key": "test-key", "vault": {}}}})
        );
        assert_eq!(
            plan.inline,
            json!({"username": "jack", "plugins": {"jwt-auth": {"key": "test-key", "secret": "s3cret"}}})
        );
        assert_eq!(
            fields(&plan),
            vec![(
                "consumer/jack/jwt-auth".to_owned(),
                vec![("secret".to_owned(), "s3cret".to_owned())]
            )]
        );
        assert!(!format!("{plan:?}").contains("s3cret"));
    }

    #[test]
    fn every_plugin_moves_its_field() {
        let consumer = json!({"username": "ann", "plugins": {
            "key-auth": {"key": "k", "vault": {}},
            "basic-auth": {"username": "ann", "password": "p", "vault": {}},
            "jwt-auth": {"key": "a", "algorithm": "RS256", "public_key": "PUB", "private_key": "PRIV", "vault": {}}
        }});
        let plan = plan(&consumer).unwrap().unwrap();
        assert_eq!(
            plan.stripped["plugins"],
            json!({"key-auth": {"vault": {}}, "basic-auth": {"username": "ann", "vault": {}},
                   "jwt-auth": {"key": "a", "algorithm": "RS256", "vault": {}}})
        );
        let names: Vec<_> = fields(&plan)
            .into_iter()
            .map(|(n, f)| (n, f.len()))
            .collect();
        assert_eq!(
            names,
            vec![
                ("consumer/ann/jwt-auth".to_owned(), 2),
                ("consumer/ann/key-auth".to_owned(), 1),
                ("consumer/ann/basic-auth".to_owned(), 1),
            ]
        );
    }

    #[test]
    fn nothing_moves_without_vault_or_without_a_literal() {
        for consumer in [
            json!({"username": "a", "plugins": {"jwt-auth": {"key": "k", "secret": "s"}}}),
            json!({"username": "a", "plugins": {"jwt-auth": {"key": "k", "vault": {}}}}),
            json!({"username": "a", "plugins": {"jwt-auth": {"key": "k", "secret": "s", "vault": null}}}),
            json!({"username": "a", "plugins": {"jwt-auth": {"key": "k", "secret": "$env://X", "vault": {}}}}),
            json!({"username": "a", "plugins": {"key-auth": {"key": "$secret://vault/a/b", "vault": {}}}}),
            // The seed's third case: public key inline, private key in Vault.
            json!({"username": "john", "plugins": {"jwt-auth": {"key": "k", "algorithm": "RS256",
                "public_key": "PUB", "vault": {}}}}),
            json!({"plugins": {"jwt-auth": {"key": "k", "secret": "s", "vault": {}}}}),
        ] {
            assert!(plan(&consumer).unwrap().is_none(), "{consumer}");
        }
    }

    #[test]
    fn a_private_key_without_its_public_key_is_refused() {
        let consumer = json!({"username": "jim", "plugins": {"jwt-auth": {
            "key": "k", "algorithm": "ES256", "private_key": "PRIV", "vault": {}}}});
        let err = plan(&consumer).unwrap_err();
        assert!(
            err.starts_with("invalid configuration: plugins.jwt-auth.public_key: required next to an inline private_key"),
            "{err}"
        );
        assert!(!err.contains("PRIV"));
        // A public key by reference stays a reference; only the private key moves.
        let consumer = json!({"username": "jim", "plugins": {"jwt-auth": {
            "key": "k", "algorithm": "ES256", "private_key": "PRIV",
            "public_key": "$secret://vault/keys/jim/pub", "vault": {}}}});
        let plan = plan(&consumer).unwrap().unwrap();
        assert_eq!(
            plan.stripped["plugins"]["jwt-auth"]["public_key"],
            "$secret://vault/keys/jim/pub"
        );
        assert_eq!(
            fields(&plan)[0].1,
            vec![("private_key".to_owned(), "PRIV".to_owned())]
        );
    }
}
