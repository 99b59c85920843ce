//! A gateway with 10 000 Vault-backed consumers asks the agent for all of their
//! secrets in one Watch: the agent must take the call (the default limits allow 16 384
//! names per call and 65 536 per uid), read every name, and send a first snapshot with
//! every value, although it is larger than tonic's default 4 MiB message limit.

use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, ensure};
use keygate_proto::agent::v1::{GetRequest, SecretState, WatchRequest};
use keygate_tests::seed::{AGENT_POLICY, KV1_PREFIX};
use keygate_tests::{AgentConfig, AgentProcess, OpenBao, seed_apisix};
use serde_json::json;

const CONSUMERS: usize = 10_000;

fn name(i: usize) -> String {
    format!("consumer/user-{i:05}/jwt-auth")
}

/// 600 bytes, different for each consumer: 10 000 of them make a 6 MB snapshot.
fn value(i: usize) -> String {
    format!("{i:05}-{}", "k".repeat(594))
}

#[tokio::test(flavor = "multi_thread")]
async fn one_watch_of_ten_thousand_names_gets_every_value() -> Result<()> {
    let bao = OpenBao::start().await?;
    seed_apisix(&bao).await?;
    let token = bao.create_token(&[AGENT_POLICY], Some("1h")).await?;
    let started = Instant::now();
    let http = reqwest::Client::builder().no_proxy().build()?;
    let mut writers = tokio::task::JoinSet::new();
    for w in 0..16 {
        let (http, addr, root) = (http.clone(), bao.addr(), bao.root_token().to_owned());
        writers.spawn(async move {
            for i in (w..CONSUMERS).step_by(16) {
                let url = format!("{addr}/v1/{KV1_PREFIX}/{}", name(i));
                let response = http
                    .post(&url)
                    .header("X-Vault-Token", &root)
                    .json(&json!({ "secret": value(i) }))
                    .send()
                    .await?;
                ensure!(
                    response.status().is_success(),
                    "{url}: {}",
                    response.status()
                );
            }
            anyhow::Ok(())
        });
    }
    while let Some(done) = writers.join_next().await {
        done??;
    }
    eprintln!("seeded {CONSUMERS} secrets in {:?}", started.elapsed());

    let agent = AgentProcess::start_ready(
        AgentConfig::new(&bao.addr(), KV1_PREFIX)
            .token(&token)
            .refresh_interval("1h"),
    )
    .await?;
    // The snapshot is above tonic's 4 MiB default; the gateway raises its limit too.
    let mut client = agent.client().await?.max_decoding_message_size(64 << 20);
    let names: Vec<String> = (0..CONSUMERS).map(name).collect();

    let started = Instant::now();
    let mut stream = tokio::time::timeout(
        Duration::from_secs(120),
        client.watch(WatchRequest {
            names: names.clone(),
        }),
    )
    .await
    .context("Watch of 10 000 names: no answer within 120 s")??
    .into_inner();
    let snapshot = tokio::time::timeout(Duration::from_secs(120), stream.message())
        .await
        .context("no first snapshot within 120 s")??
        .context("the Watch stream ended before its first snapshot")?;
    eprintln!(
        "first snapshot of {} secrets after {:?}",
        snapshot.secrets.len(),
        started.elapsed()
    );
    ensure!(
        snapshot.secrets.len() == CONSUMERS,
        "{} secrets in the first snapshot",
        snapshot.secrets.len()
    );
    for (i, secret) in snapshot.secrets.iter().enumerate() {
        ensure!(secret.name == name(i), "secret {i} is {}", secret.name);
        ensure!(
            secret.state == SecretState::Loaded as i32,
            "{} is not loaded: {:?}",
            secret.name,
            secret.state
        );
        let got = secret.fields.get("secret").map(Vec::as_slice);
        ensure!(
            got == Some(value(i).as_bytes()),
            "{} has the wrong value",
            secret.name
        );
    }
    ensure!(
        agent.metric("keygate_agent_secrets_loaded").await? == CONSUMERS as f64,
        "the agent does not count {CONSUMERS} loaded secrets"
    );

    // While the stream is open, a Get of the same names is answered from memory.
    let started = Instant::now();
    let answer = client.get(GetRequest { names }).await?.into_inner();
    ensure!(
        answer.secrets.len() == CONSUMERS
            && answer
                .secrets
                .iter()
                .all(|s| s.state == SecretState::Loaded as i32),
        "Get of the same 10 000 names"
    );
    eprintln!(
        "Get of {CONSUMERS} loaded names took {:?}",
        started.elapsed()
    );
    agent.assert_no_secret_in_log(&[&value(0), &value(CONSUMERS - 1)]);
    Ok(())
}
