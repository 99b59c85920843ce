//! Looking into the agent's answers (`Secret` messages) without printing values.

use anyhow::{Result, anyhow, ensure};
use keygate_proto::agent::v1::{Secret, SecretState};

/// The secret called `name` in `secrets`.
pub fn find<'a>(secrets: &'a [Secret], name: &str) -> Result<&'a Secret> {
    secrets
        .iter()
        .find(|s| s.name == name)
        .ok_or_else(|| anyhow!("no secret {name} in the answer: {}", describe(secrets)))
}

/// A field of a secret as UTF-8 text.
pub fn field<'a>(secret: &'a Secret, field: &str) -> Option<&'a str> {
    secret
        .fields
        .get(field)
        .and_then(|v| std::str::from_utf8(v).ok())
}

/// Checks that `name` is LOADED, not stale, and its field `secret` equals `expected`
/// (without printing either value on failure); returns its version.
pub fn expect_loaded(secrets: &[Secret], name: &str, expected: &str) -> Result<u64> {
    let secret = find(secrets, name)?;
    ensure!(
        secret.state() == SecretState::Loaded,
        "{name}: state {:?}, expected LOADED",
        secret.state()
    );
    ensure!(
        field(secret, "secret") == Some(expected),
        "{name}: field `secret` does not hold the expected value ({})",
        describe_one(secret)
    );
    ensure!(!secret.stale, "{name}: stale, expected fresh");
    Ok(secret.version)
}

/// Like [`expect_loaded`] but the value must be marked stale.
pub fn expect_stale(secrets: &[Secret], name: &str, expected: &str) -> Result<u64> {
    let secret = find(secrets, name)?;
    ensure!(
        secret.state() == SecretState::Loaded,
        "{name}: state {:?}, expected LOADED (stale)",
        secret.state()
    );
    ensure!(
        field(secret, "secret") == Some(expected),
        "{name}: field `secret` does not hold the last good value ({})",
        describe_one(secret)
    );
    ensure!(secret.stale, "{name}: not marked stale");
    Ok(secret.version)
}

/// Checks the state of `name`.
pub fn expect_state(secrets: &[Secret], name: &str, state: SecretState) -> Result<()> {
    let secret = find(secrets, name)?;
    ensure!(
        secret.state() == state,
        "{name}: state {:?}, expected {state:?} ({})",
        secret.state(),
        describe_one(secret)
    );
    Ok(())
}

/// A one-line description of one secret: name, state, version, stale and the field
/// names with value lengths (never the values).
pub fn describe_one(secret: &Secret) -> String {
    let mut fields: Vec<String> = secret
        .fields
        .iter()
        .map(|(k, v)| format!("{k}:{}B", v.len()))
        .collect();
    fields.sort();
    format!(
        "{} {:?} v{} stale={} fields=[{}]",
        secret.name,
        secret.state(),
        secret.version,
        secret.stale,
        fields.join(",")
    )
}

/// [`describe_one`] for several secrets.
pub fn describe(secrets: &[Secret]) -> String {
    let parts: Vec<String> = secrets.iter().map(describe_one).collect();
    format!("[{}]", parts.join("; "))
}
