//! What the Admin API may store of TLS material. It persists resources to disk, so a
//! private key may only be given as a reference (`$secret://vault/<path>/<field>`,
//! `$env://NAME`) or as `pki: <name>`, never inline: an ssl's `key`, an upstream's
//! `tls.client_key` (in `upstreams` and in a route's inline upstream).

use serde_json::Value;

use crate::kind::Kind;

/// Refuses a resource of `kind` whose JSON carries an inline private key; the message
/// is the Admin API's 400 answer.
pub fn check_stored(kind: Kind, value: &Value) -> Result<(), String> {
    let (field, key) = match kind {
        Kind::Ssl => ("key", value.get("key")),
        Kind::Upstream => ("tls.client_key", value.pointer("/tls/client_key")),
        Kind::Route => (
            "upstream.tls.client_key",
            value.pointer("/upstream/tls/client_key"),
        ),
        Kind::Consumer => return Ok(()),
    };
    match key {
        None | Some(Value::Null) => Ok(()),
        Some(Value::String(s)) if s.starts_with("$secret://") || s.starts_with("$env://") => Ok(()),
        Some(_) => Err(format!(
            "invalid configuration: {field}: the Admin API writes resources to disk, so a private key is taken only as $secret://vault/<path>/<field> (or $env://NAME, or pki: <name>)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inline_keys_are_refused_references_accepted() {
        let ok = |kind, v: Value| check_stored(kind, &v).is_ok();
        assert!(ok(
            Kind::Ssl,
            serde_json::json!({"key": "$secret://vault/tls/a/key"})
        ));
        assert!(ok(Kind::Ssl, serde_json::json!({"pki": "gw"})));
        assert!(ok(Kind::Ssl, serde_json::json!({"key": "$env://K"})));
        assert!(!ok(
            Kind::Ssl,
            serde_json::json!({"key": "-----BEGIN PRIVATE KEY-----"})
        ));
        assert!(!ok(
            Kind::Upstream,
            serde_json::json!({"tls": {"client_key": "x"}})
        ));
        assert!(!ok(
            Kind::Route,
            serde_json::json!({"upstream": {"tls": {"client_key": 1}}})
        ));
        assert!(ok(
            Kind::Route,
            serde_json::json!({"upstream": {"nodes": {}}})
        ));
        assert!(ok(Kind::Consumer, serde_json::json!({"key": "inline"})));
    }
}
