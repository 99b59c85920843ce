//! The agent authenticates with a token, a token file and AppRole, and serves a KV v1
//! (`kv/apisix/...`) and a KV v2 (`secret/apisix/...`) secret through its socket, read
//! with `Get` and with the `keygate-agent get` command line.

use std::time::Duration;

use anyhow::ensure;
use keygate_tests::client::get;
use keygate_tests::secrets::expect_loaded;
use keygate_tests::seed::{AGENT_POLICY, JACK, JILL, KV1_PREFIX, KV2_PREFIX};
use keygate_tests::{AgentConfig, AgentProcess, OpenBao, Seeded, seed_apisix, write_private_file};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

const REFRESH: &str = "2s";

/// Both layouts, each through its own agent (an agent has one prefix).
async fn expect_both_layouts(
    kv1: &AgentProcess,
    kv2: &AgentProcess,
    seeded: &Seeded,
) -> anyhow::Result<()> {
    let mut c1 = kv1.client().await?;
    let resp = get(&mut c1, &[JACK, JILL]).await?;
    expect_loaded(&resp.secrets, JACK, &seeded.jack_v1)?;
    expect_loaded(&resp.secrets, JILL, &seeded.jill_v1)?;
    ensure!(resp.secrets.len() == 2, "exactly the names asked for");
    ensure!(!resp.boot_id.is_empty(), "Get carries the agent's boot id");

    let mut c2 = kv2.client().await?;
    let resp = get(&mut c2, &[JACK, JILL]).await?;
    expect_loaded(&resp.secrets, JACK, &seeded.jack_v2)?;
    expect_loaded(&resp.secrets, JILL, &seeded.jill_v2)?;
    ensure!(resp.secrets.len() == 2, "exactly the names asked for");

    for agent in [kv1, kv2] {
        let authenticated = agent.metric("keygate_agent_authenticated").await?;
        ensure!(
            authenticated == 1.0,
            "keygate_agent_authenticated = {authenticated}"
        );
        let ready = agent.metric("keygate_agent_ready").await?;
        ensure!(ready == 1.0, "keygate_agent_ready = {ready}");
    }
    Ok(())
}

async fn start_pair(
    base: impl Fn(&str) -> AgentConfig,
) -> anyhow::Result<(AgentProcess, AgentProcess)> {
    let (kv1, kv2) = tokio::join!(
        AgentProcess::start_ready(base(KV1_PREFIX)),
        AgentProcess::start_ready(base(KV2_PREFIX)),
    );
    Ok((kv1?, kv2?))
}

fn sha256_12(value: &str) -> String {
    let digest = Sha256::digest(value.as_bytes());
    digest
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<String>()[..12]
        .to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn token_auth_serves_kv_v1_and_v2() {
    let bao = OpenBao::start().await.unwrap();
    let seeded = seed_apisix(&bao).await.unwrap();
    let token = bao.create_token(&[AGENT_POLICY], Some("1h")).await.unwrap();

    let (kv1, kv2) = start_pair(|prefix| {
        AgentConfig::new(&bao.addr(), prefix)
            .token(&token)
            .refresh_interval(REFRESH)
    })
    .await
    .unwrap();
    expect_both_layouts(&kv1, &kv2, &seeded).await.unwrap();

    // The command line, without and with --reveal.
    let out = kv1.cli_get_json(&[JACK], false).await.unwrap();
    println!("keygate-agent get --json: {out}");
    let text = out.to_string();
    assert!(
        !text.contains(&seeded.jack_v1),
        "get without --reveal must not print the value"
    );
    assert!(
        out["boot_id"].as_str().is_some_and(|b| !b.is_empty()),
        "boot_id: {out}"
    );
    let secret = &out["secrets"][0];
    assert_eq!(secret["name"], json!(JACK));
    assert_eq!(secret["state"], json!("loaded"));
    assert_eq!(secret["stale"], json!(false));
    assert!(
        secret["version"].as_u64().is_some_and(|v| v >= 1),
        "version: {secret}"
    );
    let field = &secret["fields"]["secret"];
    assert_eq!(field["sha256_12"], json!(sha256_12(&seeded.jack_v1)));
    assert_eq!(field["len"], json!(seeded.jack_v1.len()));
    assert!(
        field.get("value").is_none_or(Value::is_null),
        "no value without --reveal: {field}"
    );

    let out = kv2.cli_get_json(&[JACK], true).await.unwrap();
    assert_eq!(
        out["secrets"][0]["fields"]["secret"]["value"].as_str(),
        Some(seeded.jack_v2.as_str()),
        "get --reveal prints the value"
    );

    let mut secrets = seeded.all();
    secrets.push(&token);
    kv1.assert_no_secret_in_log(&secrets);
    kv2.assert_no_secret_in_log(&secrets);
}

#[tokio::test(flavor = "multi_thread")]
async fn token_file_auth_serves_kv_v1_and_v2() {
    let bao = OpenBao::start().await.unwrap();
    let seeded = seed_apisix(&bao).await.unwrap();
    let token = bao.create_token(&[AGENT_POLICY], Some("1h")).await.unwrap();
    let creds = tempfile::tempdir().unwrap();
    let token_file = creds.path().join("token");
    // A trailing newline, as `echo` or a Kubernetes secret would leave it.
    write_private_file(&token_file, &format!("{token}\n")).unwrap();

    // The KV version explicitly this time (the other tests detect it).
    let (kv1, kv2) = start_pair(|prefix| {
        let version = if prefix == KV1_PREFIX { "1" } else { "2" };
        AgentConfig::new(&bao.addr(), prefix)
            .token_file(&token_file)
            .kv_version(version)
            .refresh_interval(REFRESH)
    })
    .await
    .unwrap();
    expect_both_layouts(&kv1, &kv2, &seeded).await.unwrap();

    let mut secrets = seeded.all();
    secrets.push(&token);
    kv1.assert_no_secret_in_log(&secrets);
    kv2.assert_no_secret_in_log(&secrets);
}

#[tokio::test(flavor = "multi_thread")]
async fn approle_auth_serves_kv_v1_and_v2() {
    let bao = OpenBao::start().await.unwrap();
    let seeded = seed_apisix(&bao).await.unwrap();
    bao.enable_approle().await.unwrap();
    let role = bao
        .approle_role(
            "keygate",
            json!({ "token_policies": [AGENT_POLICY], "token_ttl": "1h", "token_max_ttl": "2h" }),
        )
        .await
        .unwrap();
    let creds = tempfile::tempdir().unwrap();
    let role_id_file = creds.path().join("role-id");
    let secret_id_file = creds.path().join("secret-id");
    write_private_file(&role_id_file, &role.role_id).unwrap();
    write_private_file(&secret_id_file, &format!("{}\n", role.secret_id)).unwrap();

    let (kv1, kv2) = start_pair(|prefix| {
        AgentConfig::new(&bao.addr(), prefix)
            .approle(&role_id_file, &secret_id_file)
            .refresh_interval(REFRESH)
    })
    .await
    .unwrap();
    expect_both_layouts(&kv1, &kv2, &seeded).await.unwrap();
    for agent in [&kv1, &kv2] {
        let logins = agent
            .metric("keygate_agent_auth_logins_total")
            .await
            .unwrap();
        assert!(
            logins >= 1.0,
            "an AppRole agent logged in: logins_total = {logins}"
        );
    }

    // Still serving a little later (a refresh with the AppRole token worked).
    tokio::time::sleep(Duration::from_secs(3)).await;
    expect_both_layouts(&kv1, &kv2, &seeded).await.unwrap();

    let mut secrets = seeded.all();
    secrets.push(&role.secret_id);
    kv1.assert_no_secret_in_log(&secrets);
    kv2.assert_no_secret_in_log(&secrets);
}
