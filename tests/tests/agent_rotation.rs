//! Token renewal and re-login with short AppRole TTLs, and secret rotation pushed to
//! Watch streams.

use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, ensure};
use keygate_tests::agent::metric_value;
use keygate_tests::client::{expect_snapshot, get, get_within, next_snapshot, watch};
use keygate_tests::logs::find_secret_in;
use keygate_tests::secrets::{describe, expect_loaded, find};
use keygate_tests::seed::{AGENT_POLICY, JACK, JILL, KV1_PREFIX, KV2_PREFIX, put_secret};
use keygate_tests::{
    AgentConfig, AgentProcess, OpenBao, random_secret, seed_apisix, write_private_file,
};
use serde_json::json;

/// The refresh interval the rotation test configures.
const REFRESH: Duration = Duration::from_secs(2);
/// Scheduling slack on a busy two-core machine, on top of the refresh interval.
const MARGIN: Duration = Duration::from_secs(3);

/// AppRole tokens live 4 s and at most 12 s: the agent must renew them (at about 2/3 of
/// the TTL) and log in again before the 12 s cap, and `Get` must never fail meanwhile.
#[tokio::test(flavor = "multi_thread")]
async fn short_lived_token_is_renewed_then_replaced_without_a_gap() {
    let mut bao = OpenBao::start().await.unwrap();
    let seeded = seed_apisix(&bao).await.unwrap();
    bao.enable_approle().await.unwrap();
    // OpenBao's own record of the agent's logins and refused requests.
    bao.enable_audit_file().await.unwrap();
    let role = bao
        .approle_role(
            "short",
            json!({ "token_policies": [AGENT_POLICY], "token_ttl": "4s", "token_max_ttl": "12s" }),
        )
        .await
        .unwrap();
    let creds = tempfile::tempdir().unwrap();
    let role_id_file = creds.path().join("role-id");
    let secret_id_file = creds.path().join("secret-id");
    write_private_file(&role_id_file, &role.role_id).unwrap();
    write_private_file(&secret_id_file, &role.secret_id).unwrap();

    let agent = AgentProcess::start_ready(
        AgentConfig::new(&bao.addr(), KV1_PREFIX)
            .approle(&role_id_file, &secret_id_file)
            .refresh_interval("2s")
            .preload(&[JACK]),
    )
    .await
    .unwrap();
    let mut client = agent.client().await.unwrap();

    let start = Instant::now();
    let mut failures: Vec<String> = Vec::new();
    let mut timeline: Vec<String> = Vec::new();
    let (mut renewals, mut logins) = (0.0, 0.0);
    let (mut first_renewal_at, mut relogin_at) = (None, None);
    let mut samples = 0;
    while start.elapsed() < Duration::from_secs(20) {
        let t = start.elapsed().as_secs_f64();
        samples += 1;
        match get_within(&mut client, &[JACK], Duration::from_secs(2)).await {
            Ok(Ok(resp)) => {
                if let Err(err) = expect_loaded(&resp.secrets, JACK, &seeded.jack_v1) {
                    failures.push(format!("{t:6.2}s: {err:#}"));
                }
            }
            Ok(Err(status)) => failures.push(format!("{t:6.2}s: Get failed: {status}")),
            Err(err) => failures.push(format!("{t:6.2}s: {err:#}")),
        }
        let metrics = agent.metrics().await.unwrap();
        let r = metric_value(&metrics, "keygate_agent_token_renewals_total").unwrap();
        let l = metric_value(&metrics, "keygate_agent_auth_logins_total").unwrap();
        let ttl = metric_value(&metrics, "keygate_agent_token_ttl_seconds").unwrap_or(f64::NAN);
        if r > renewals {
            timeline.push(format!("{t:6.2}s: renewal #{r} (token ttl {ttl}s)"));
            first_renewal_at.get_or_insert(t);
        }
        if l > logins {
            timeline.push(format!("{t:6.2}s: login #{l} (token ttl {ttl}s)"));
            if l >= 2.0 {
                relogin_at.get_or_insert(t);
            }
        }
        (renewals, logins) = (r, l);
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    println!("token lifecycle over {samples} samples (TTL 4 s, max TTL 12 s):");
    for line in &timeline {
        println!("  {line}");
    }
    println!("first renewal at {first_renewal_at:?} s, second login at {relogin_at:?} s");
    assert!(
        failures.is_empty(),
        "{} of {samples} Gets failed while the token was renewed and replaced:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(
        renewals >= 2.0,
        "keygate_agent_token_renewals_total = {renewals}, expected >= 2"
    );
    assert!(
        logins >= 2.0,
        "keygate_agent_auth_logins_total = {logins}, expected >= 2"
    );
    let failures_total = agent
        .metric("keygate_agent_token_renewal_failures_total")
        .await
        .unwrap();
    println!("keygate_agent_token_renewal_failures_total = {failures_total}");

    // OpenBao's view: each login came before the previous token hit its 12 s cap, and no
    // request of the agent was refused (an expired token would be).
    let audit: Vec<_> = bao
        .audit_requests()
        .unwrap()
        .into_iter()
        .filter(|r| !r.by_root())
        .collect();
    let login_times: Vec<f64> = audit
        .iter()
        .filter(|r| r.is_login())
        .map(|r| r.unix_time)
        .collect();
    let gaps: Vec<f64> = login_times.windows(2).map(|w| w[1] - w[0]).collect();
    println!(
        "logins seen by OpenBao: {}, gaps between them (s): {gaps:.2?}",
        login_times.len()
    );
    assert!(
        login_times.len() >= 2,
        "OpenBao saw {} logins",
        login_times.len()
    );
    for gap in &gaps {
        assert!(
            *gap < 12.0,
            "the agent logged in again {gap:.2} s after the previous login: its token \
             (max TTL 12 s) had expired"
        );
    }
    let refused: Vec<String> = audit
        .iter()
        .filter(|r| r.error.is_some())
        .map(|r| format!("{} {} {} -> {:?}", r.time, r.operation, r.path, r.error))
        .collect();
    assert!(
        refused.is_empty(),
        "OpenBao refused requests of the agent:\n{}",
        refused.join("\n")
    );

    let mut secrets = seeded.all();
    secrets.push(&role.secret_id);
    agent.assert_no_secret_in_log(&secrets);
}

/// What [`rotation_reaches_watchers`] measured.
#[derive(Debug)]
struct Rotation {
    latency: Duration,
}

/// One agent on `prefix`: a new value written to Vault reaches an open Watch stream as
/// a snapshot with a higher version within the refresh interval (plus a margin), and no
/// identical snapshot follows.
async fn rotation_reaches_watchers(
    bao: &OpenBao,
    token: &str,
    prefix: &str,
    jack: &str,
    jill: &str,
) -> anyhow::Result<Rotation> {
    let agent = AgentProcess::start_ready(
        AgentConfig::new(&bao.addr(), prefix)
            .token(token)
            .refresh_interval("2s"),
    )
    .await?;
    let mut client = agent.client().await?;
    let mut stream = watch(&mut client, &[JACK, JILL], Duration::from_secs(15))
        .await?
        .map_err(|status| anyhow!("Watch failed: {status}"))?;
    let first = expect_snapshot(&mut stream, Duration::from_secs(15)).await?;
    let jack_version = expect_loaded(&first.secrets, JACK, jack)?;
    let jill_version = expect_loaded(&first.secrets, JILL, jill)?;
    ensure!(first.secrets.len() == 2, "{}", describe(&first.secrets));
    ensure!(!first.boot_id.is_empty(), "the snapshot has no boot id");
    // Let the first refresh of the unchanged value pass: it must not produce a message.
    ensure!(
        next_snapshot(&mut stream, REFRESH + Duration::from_millis(500))
            .await?
            .is_none(),
        "a snapshot was re-sent although nothing changed"
    );

    let rotated = random_secret("jack-rotated");
    let written = Instant::now();
    put_secret(bao, prefix, JACK, &rotated).await?;
    let snapshot = expect_snapshot(&mut stream, REFRESH + MARGIN)
        .await
        .context("the rotated value did not reach the watcher")?;
    let latency = written.elapsed();
    ensure!(
        snapshot.version > first.version,
        "snapshot version {} after {}",
        snapshot.version,
        first.version
    );
    ensure!(snapshot.boot_id == first.boot_id, "the boot id changed");
    let new_version = expect_loaded(&snapshot.secrets, JACK, &rotated)?;
    ensure!(
        new_version > jack_version,
        "{JACK} version {new_version} after {jack_version}"
    );
    let jill_now = expect_loaded(&snapshot.secrets, JILL, jill)?;
    ensure!(
        jill_now == jill_version,
        "the unchanged {JILL} went from version {jill_version} to {jill_now}"
    );

    // Nothing changes any more: no identical snapshot over two refresh intervals.
    let extra = next_snapshot(&mut stream, 2 * REFRESH + Duration::from_millis(500)).await?;
    ensure!(
        extra.is_none(),
        "an identical snapshot was re-sent: {}",
        extra.map(|s| describe(&s.secrets)).unwrap_or_default()
    );

    // Get agrees.
    let resp = get(&mut client, &[JACK]).await?;
    let got = expect_loaded(&resp.secrets, JACK, &rotated)?;
    ensure!(
        got == new_version,
        "Get says version {got}, Watch said {new_version}"
    );
    ensure!(
        find(&resp.secrets, JACK)?.fetched_at_unix_ms > 0,
        "no fetched_at"
    );

    let log = agent.log_contents();
    ensure!(
        find_secret_in(&log, &[jack, jill, &rotated, token]).is_none(),
        "a secret value or the token appears in the agent's log"
    );
    Ok(Rotation { latency })
}

#[tokio::test(flavor = "multi_thread")]
async fn rotated_value_reaches_watchers_within_the_refresh_interval() {
    let bao = OpenBao::start().await.unwrap();
    let seeded = seed_apisix(&bao).await.unwrap();
    let token = bao.create_token(&[AGENT_POLICY], Some("1h")).await.unwrap();
    let (kv1, kv2) = tokio::join!(
        rotation_reaches_watchers(&bao, &token, KV1_PREFIX, &seeded.jack_v1, &seeded.jill_v1),
        rotation_reaches_watchers(&bao, &token, KV2_PREFIX, &seeded.jack_v2, &seeded.jill_v2),
    );
    for (prefix, outcome) in [(KV1_PREFIX, &kv1), (KV2_PREFIX, &kv2)] {
        match outcome {
            Ok(r) => println!(
                "{prefix}: the rotated value reached the Watch stream after {:.2?} \
                 (refresh interval {REFRESH:?})",
                r.latency
            ),
            Err(err) => println!("{prefix}: FAILED: {err:#}"),
        }
    }
    kv1.unwrap_or_else(|err| panic!("{KV1_PREFIX}: {err:#}"));
    kv2.unwrap_or_else(|err| panic!("{KV2_PREFIX}: {err:#}"));
}
