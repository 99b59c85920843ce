//! The seed's Vault layout (APISIX jwt-auth + Vault): a KV v1 mount `kv` with
//! `kv/apisix/consumer/<user>/jwt-auth` (field `secret`), a KV v2 mount `secret` with the
//! same layout under `secret/apisix`, and a read-only policy for the agent.

use anyhow::Result;
use rand::Rng;
use rand::distr::Alphanumeric;
use serde_json::json;

use crate::openbao::OpenBao;

/// The KV v1 mount.
pub const KV1_MOUNT: &str = "kv";
/// The KV v2 mount.
pub const KV2_MOUNT: &str = "secret";
/// The agent's `vault.prefix` for the KV v1 layout.
pub const KV1_PREFIX: &str = "kv/apisix";
/// The agent's `vault.prefix` for the KV v2 layout.
pub const KV2_PREFIX: &str = "secret/apisix";
/// Jack's jwt-auth secret, relative to either prefix.
pub const JACK: &str = "consumer/jack/jwt-auth";
/// Jill's jwt-auth secret, relative to either prefix.
pub const JILL: &str = "consumer/jill/jwt-auth";
/// A secret outside the agent's policy (its state must be DENIED), relative to either
/// prefix.
pub const PRIVATE: &str = "private/admin";
/// A name nothing is stored at (its state must be NOT_FOUND).
pub const MISSING: &str = "consumer/nobody/jwt-auth";
/// The policy the agent's tokens get.
pub const AGENT_POLICY: &str = "keygate-agent";

/// The agent's policy: read the consumers of both layouts, nothing else.
pub const AGENT_POLICY_HCL: &str = r#"
path "kv/apisix/consumer/*" {
  capabilities = ["read"]
}
path "secret/data/apisix/consumer/*" {
  capabilities = ["read"]
}
path "secret/metadata/apisix/consumer/*" {
  capabilities = ["read"]
}
"#;

/// The values written by [`seed_apisix`].
#[derive(Debug, Clone)]
pub struct Seeded {
    /// `secret` of `kv/apisix/consumer/jack/jwt-auth` (KV v1).
    pub jack_v1: String,
    /// `secret` of `secret/apisix/consumer/jack/jwt-auth` (KV v2).
    pub jack_v2: String,
    /// `secret` of `kv/apisix/consumer/jill/jwt-auth` (KV v1).
    pub jill_v1: String,
    /// `secret` of `secret/apisix/consumer/jill/jwt-auth` (KV v2).
    pub jill_v2: String,
    /// `secret` of `kv/apisix/private/admin` and `secret/apisix/private/admin`, which the
    /// agent's policy does not allow.
    pub private: String,
}

impl Seeded {
    /// Every value written, for "no secret in the log" checks.
    pub fn all(&self) -> Vec<&str> {
        vec![
            &self.jack_v1,
            &self.jack_v2,
            &self.jill_v1,
            &self.jill_v2,
            &self.private,
        ]
    }
}

/// A random printable secret value, `<label>-` and 32 alphanumerics.
pub fn random_secret(label: &str) -> String {
    let tail: String = rand::rng()
        .sample_iter(Alphanumeric)
        .take(32)
        .map(char::from)
        .collect();
    let secret = format!("{label}-{tail}");
    crate::leaks::remember(&secret);
    secret
}

/// Mounts KV v1 at `kv` and KV v2 at `secret`, writes jack's and jill's jwt-auth secrets
/// (and a private one) in both, and writes the agent's policy [`AGENT_POLICY`].
pub async fn seed_apisix(bao: &OpenBao) -> Result<Seeded> {
    bao.enable_kv(KV1_MOUNT, 1).await?;
    bao.enable_kv(KV2_MOUNT, 2).await?;
    let seeded = Seeded {
        jack_v1: random_secret("jack-v1"),
        jack_v2: random_secret("jack-v2"),
        jill_v1: random_secret("jill-v1"),
        jill_v2: random_secret("jill-v2"),
        private: random_secret("private"),
    };
    bao.kv1_put(
        &format!("{KV1_PREFIX}/{JACK}"),
        json!({ "secret": seeded.jack_v1 }),
    )
    .await?;
    bao.kv1_put(
        &format!("{KV1_PREFIX}/{JILL}"),
        json!({ "secret": seeded.jill_v1 }),
    )
    .await?;
    bao.kv1_put(
        &format!("{KV1_PREFIX}/{PRIVATE}"),
        json!({ "secret": seeded.private }),
    )
    .await?;
    bao.kv2_put(
        KV2_MOUNT,
        &format!("apisix/{JACK}"),
        json!({ "secret": seeded.jack_v2 }),
    )
    .await?;
    bao.kv2_put(
        KV2_MOUNT,
        &format!("apisix/{JILL}"),
        json!({ "secret": seeded.jill_v2 }),
    )
    .await?;
    bao.kv2_put(
        KV2_MOUNT,
        &format!("apisix/{PRIVATE}"),
        json!({ "secret": seeded.private }),
    )
    .await?;
    bao.put_policy(AGENT_POLICY, AGENT_POLICY_HCL).await?;
    Ok(seeded)
}

/// Writes a new `secret` value for `name` (relative to `prefix`, one of [`KV1_PREFIX`] and
/// [`KV2_PREFIX`]).
pub async fn put_secret(bao: &OpenBao, prefix: &str, name: &str, value: &str) -> Result<()> {
    if prefix == KV2_PREFIX {
        bao.kv2_put(
            KV2_MOUNT,
            &format!("apisix/{name}"),
            json!({ "secret": value }),
        )
        .await
        .map(drop)
    } else {
        bao.kv1_put(&format!("{prefix}/{name}"), json!({ "secret": value }))
            .await
    }
}
