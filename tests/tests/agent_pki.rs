//! Certificates from OpenBao's PKI engine: the agent issues one at start, serves it
//! under `@pki/<name>`, and issues a new one at `renew_at` of each certificate's
//! lifetime, so a Watch client sees the serial change before the old one expires.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use keygate_proto::agent::v1::{SecretState, Snapshot};
use keygate_tests::client::{expect_snapshot, watch};
use keygate_tests::seed::KV1_PREFIX;
use keygate_tests::{AgentConfig, AgentProcess, OpenBao};
use serde_json::json;

const NAME: &str = "@pki/gateway";

struct Issued {
    serial: String,
    expiration: u64,
    certificate: String,
    private_key: String,
}

fn issued(snapshot: &Snapshot) -> anyhow::Result<Issued> {
    let secret = snapshot
        .secrets
        .iter()
        .find(|s| s.name == NAME)
        .context("certificate in snapshot")?;
    anyhow::ensure!(
        secret.state == SecretState::Loaded as i32,
        "certificate not loaded"
    );
    let field = |k: &str| -> anyhow::Result<String> {
        let bytes = secret.fields.get(k).with_context(|| format!("field {k}"))?;
        Ok(String::from_utf8(bytes.clone())?)
    };
    Ok(Issued {
        serial: field("serial_number")?,
        expiration: field("expiration")?.parse()?,
        certificate: field("certificate")?,
        private_key: field("private_key")?,
    })
}

fn now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[tokio::test(flavor = "multi_thread")]
async fn certificates_are_reissued_before_they_expire() {
    let bao = OpenBao::start().await.unwrap();
    bao.write(
        "sys/mounts/pki",
        json!({ "type": "pki", "config": { "max_lease_ttl": "87600h" } }),
    )
    .await
    .unwrap();
    bao.write(
        "pki/root/generate/internal",
        json!({ "common_name": "keygate test root", "ttl": "87600h" }),
    )
    .await
    .unwrap();
    bao.write(
        "pki/roles/keygate",
        json!({ "allowed_domains": ["example.test"], "allow_subdomains": true, "max_ttl": "1h", "key_type": "ec", "key_bits": 256 }),
    )
    .await
    .unwrap();
    bao.put_policy(
        "keygate-pki",
        r#"path "pki/issue/keygate" { capabilities = ["create", "update"] }"#,
    )
    .await
    .unwrap();
    let token = bao
        .create_token(&["keygate-pki"], Some("1h"))
        .await
        .unwrap();

    let agent = AgentProcess::start_ready(
        AgentConfig::new(&bao.addr(), KV1_PREFIX)
            .token(&token)
            .certificate(json!({
                "name": "gateway",
                "role": "keygate",
                "common_name": "gw.example.test",
                "alt_names": ["api.example.test"],
                "ttl": "6s",
                "renew_at": 0.5,
            })),
    )
    .await
    .unwrap();

    let mut client = agent.client().await.unwrap();
    let mut stream = watch(&mut client, &[NAME], Duration::from_secs(10))
        .await
        .unwrap()
        .unwrap();
    let first = issued(
        &expect_snapshot(&mut stream, Duration::from_secs(5))
            .await
            .unwrap(),
    )
    .unwrap();
    assert!(first.certificate.starts_with("-----BEGIN CERTIFICATE-----"));
    assert!(
        first.private_key.starts_with("-----BEGIN"),
        "a PEM private key"
    );
    let lifetime = first.expiration.saturating_sub(now_s());
    assert!(
        (3..=7).contains(&lifetime),
        "6 s certificate, {lifetime} s left"
    );

    // Three re-issues: each a new serial, each arriving while the previous certificate
    // is still valid (renew_at 0.5 of 6 s: about every 3 s).
    let mut previous = first;
    let mut private_keys = vec![previous.private_key.clone()];
    let started = std::time::Instant::now();
    for round in 1..=3 {
        let next = issued(
            &expect_snapshot(&mut stream, Duration::from_secs(6))
                .await
                .unwrap(),
        )
        .unwrap();
        let at = started.elapsed().as_secs_f64();
        println!(
            "re-issue #{round} at {at:.2} s: serial {} -> {}, previous had {} s left",
            previous.serial,
            next.serial,
            previous.expiration.saturating_sub(now_s())
        );
        assert_ne!(next.serial, previous.serial, "a new certificate");
        assert!(
            next.expiration >= previous.expiration,
            "the new one lives longer"
        );
        assert!(
            previous.expiration > now_s(),
            "replaced before the old one expired"
        );
        private_keys.push(next.private_key.clone());
        previous = next;
    }
    let changes = agent
        .metric("keygate_agent_secret_changes_total")
        .await
        .unwrap();
    assert!(changes >= 4.0, "secret changes counted: {changes}");

    let keys: Vec<&str> = private_keys.iter().map(String::as_str).collect();
    agent.assert_no_secret_in_log(&keys);
}
