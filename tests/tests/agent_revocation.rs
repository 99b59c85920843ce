//! The agent's token is revoked out of band: it logs in again and keeps serving. When
//! login becomes impossible it retries with a bounded, backed-off rate (counted in
//! OpenBao's audit log, not taken from the agent's word), and it recovers once a new
//! secret id is written to its secret_id_file.

use std::time::{Duration, Instant};

use keygate_tests::client::{get, get_within};
use keygate_tests::secrets::{expect_loaded, expect_stale, find};
use keygate_tests::seed::{AGENT_POLICY, JACK, JILL, KV1_PREFIX, put_secret};
use keygate_tests::{
    AgentConfig, AgentProcess, OpenBao, eventually, random_secret, seed_apisix, write_private_file,
};
use serde_json::json;

const ROLE: &str = "keygate";
/// The refresh interval configured.
const REFRESH_SECS: f64 = 2.0;
/// The window over which the agent's requests are counted.
const WINDOW_SECS: f64 = 10.0;
/// The secrets the agent refreshes.
const NAMES: [&str; 2] = [JACK, JILL];
/// The backoff of the design: at least 1 s, doubling, jittered, at most 5 min.
const BACKOFF_MIN_SECS: f64 = 1.0;
/// The range jitter may scale a backoff step by (up to -50 % / +50 %).
const JITTER_MIN: f64 = 0.5;
const JITTER_MAX: f64 = 1.5;

#[tokio::test(flavor = "multi_thread")]
async fn revoked_token_is_replaced_and_failed_logins_back_off() {
    let mut bao = OpenBao::start().await.unwrap();
    let seeded = seed_apisix(&bao).await.unwrap();
    bao.enable_approle().await.unwrap();
    let role = bao
        .approle_role(
            ROLE,
            json!({ "token_policies": [AGENT_POLICY], "token_ttl": "1h", "token_max_ttl": "2h" }),
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
            .timeout("2s")
            .preload(&NAMES),
    )
    .await
    .unwrap();
    let mut client = agent.client().await.unwrap();
    let resp = get(&mut client, &NAMES).await.unwrap();
    expect_loaded(&resp.secrets, JACK, &seeded.jack_v1).unwrap();
    expect_loaded(&resp.secrets, JILL, &seeded.jill_v1).unwrap();
    let logins_before = agent
        .metric("keygate_agent_auth_logins_total")
        .await
        .unwrap();
    assert!(logins_before >= 1.0);

    // ---- 1. Revoke the agent's token: it logs in again, Get never fails. ----
    let revoked = Instant::now();
    bao.revoke_prefix("auth/approle/login").await.unwrap();
    let mut failures = Vec::new();
    let relogin_after = loop {
        let t = revoked.elapsed();
        match get_within(&mut client, &NAMES, Duration::from_secs(3)).await {
            Ok(Ok(resp)) => {
                // The last good value must still be served (stale or not).
                for (name, value) in [(JACK, &seeded.jack_v1), (JILL, &seeded.jill_v1)] {
                    let s = find(&resp.secrets, name).unwrap();
                    if keygate_tests::secrets::field(s, "secret") != Some(value.as_str()) {
                        failures.push(format!("{t:.2?}: {name} lost its value"));
                    }
                }
            }
            Ok(Err(status)) => failures.push(format!("{t:.2?}: Get failed: {status}")),
            Err(err) => failures.push(format!("{t:.2?}: {err:#}")),
        }
        let logins = agent
            .metric("keygate_agent_auth_logins_total")
            .await
            .unwrap();
        if logins > logins_before {
            break t;
        }
        assert!(
            t < Duration::from_secs(15),
            "no new login within 15 s of the token's revocation (logins_total still {logins}); \
             refresh interval {REFRESH_SECS} s"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    println!("token revoked: the agent logged in again after {relogin_after:.2?}");
    assert!(
        failures.is_empty(),
        "Get failed after the revocation:\n{}",
        failures.join("\n")
    );

    // Secrets keep loading with the new token.
    let rotated = random_secret("jack-after-relogin");
    let written = Instant::now();
    put_secret(&bao, KV1_PREFIX, JACK, &rotated).await.unwrap();
    eventually(Duration::from_secs(10), || async {
        let mut c = agent.client().await?;
        let resp = get(&mut c, &[JACK]).await?;
        expect_loaded(&resp.secrets, JACK, &rotated)
    })
    .await
    .unwrap();
    println!(
        "after the re-login a new value loaded in {:.2?}",
        written.elapsed()
    );

    // ---- 2. Make login impossible: destroy the secret id, revoke the token. ----
    bao.approle_destroy_secret_id(ROLE, &role.secret_id)
        .await
        .unwrap();
    let broken = Instant::now();
    bao.revoke_prefix("auth/approle/login").await.unwrap();
    let failures_before = agent
        .metric("keygate_agent_auth_login_failures_total")
        .await
        .unwrap();

    // Count what the agent sends to OpenBao over a quiet window (no gRPC calls, which
    // could trigger reads on demand).
    bao.enable_audit_file().await.unwrap();
    let from = bao.audit_mark().unwrap();
    let window_start = Instant::now();
    tokio::time::sleep(Duration::from_secs_f64(WINDOW_SECS)).await;
    let to = bao.audit_mark().unwrap();
    let window = window_start.elapsed().as_secs_f64();
    let entries: Vec<_> = bao
        .audit_requests_between(from, Some(to))
        .unwrap()
        .into_iter()
        .filter(|r| !r.by_root())
        .collect();
    let logins: Vec<_> = entries.iter().filter(|r| r.is_login()).collect();
    let others = entries.len() - logins.len();

    // The bound: login attempts at least BACKOFF_MIN_SECS apart, the step doubling; in
    // the worst case jitter halves every step but none goes below the minimum, so over
    // W seconds the attempts start at 0, 1, 2, 4, 8, ... s: 2 + floor(log2(W)) of them
    // (5 for 10 s), plus one for an attempt already under way at the window's start: 6.
    // Reads: at most one per secret per refresh interval, plus one each at the start.
    let login_bound = 3 + window.log2().floor() as usize;
    let read_bound = ((window / REFRESH_SECS).floor() as usize + 1) * NAMES.len();
    let total_bound = login_bound + read_bound;
    println!(
        "login impossible: over {window:.1} s the agent sent {} requests to OpenBao: \
         {} login attempts (bound {login_bound}) and {others} others (bound {read_bound}); \
         total bound {total_bound}",
        entries.len(),
        logins.len()
    );
    let mut by_path = std::collections::BTreeMap::<String, usize>::new();
    for e in &entries {
        *by_path
            .entry(format!("{} {}", e.operation, e.path))
            .or_default() += 1;
    }
    for (path, n) in &by_path {
        println!("  {n:4} x {path}");
    }
    let login_times: Vec<f64> = logins.iter().map(|r| r.unix_time).collect();
    let gaps: Vec<String> = login_times
        .windows(2)
        .map(|w| format!("{:.2}", w[1] - w[0]))
        .collect();
    println!("  gaps between login attempts (s): [{}]", gaps.join(", "));
    assert!(
        logins.len() <= login_bound,
        "{} login attempts in {window:.1} s exceed the backoff bound {login_bound} \
         (min {BACKOFF_MIN_SECS} s, doubling): the retry loop does not back off",
        logins.len()
    );
    assert!(
        entries.len() <= total_bound,
        "{} requests to OpenBao in {window:.1} s exceed the bound {total_bound} \
         ({login_bound} logins + {read_bound} reads at one per secret per {REFRESH_SECS} s)",
        entries.len()
    );
    let failures_after = agent
        .metric("keygate_agent_auth_login_failures_total")
        .await
        .unwrap();
    assert!(
        failures_after > failures_before || !logins.is_empty(),
        "the agent never tried to log in again (login_failures_total {failures_before} -> {failures_after})"
    );
    println!("login_failures_total {failures_before} -> {failures_after}");

    // Meanwhile the last good values are still served, marked stale.
    let resp = get(&mut client, &NAMES).await.unwrap();
    expect_stale(&resp.secrets, JACK, &rotated).unwrap();
    expect_stale(&resp.secrets, JILL, &seeded.jill_v1).unwrap();

    // ---- 3. A new secret id: the agent recovers within its current backoff. ----
    // The last gap seen between attempts is a jittered step g = s * j with j in
    // [JITTER_MIN, JITTER_MAX]; the step now running is at most 2 s * JITTER_MAX, i.e.
    // 2 g / JITTER_MIN * JITTER_MAX, and the next attempt reads the new secret id.
    // With fewer than two attempts seen, the time since login broke bounds s instead.
    let elapsed_broken = broken.elapsed().as_secs_f64();
    let login_times: Vec<f64> = bao
        .audit_requests_since(from)
        .unwrap()
        .iter()
        .filter(|r| !r.by_root() && r.is_login())
        .map(|r| r.unix_time)
        .collect();
    let last_gap = login_times.windows(2).last().map(|w| w[1] - w[0]);
    let step_bound = match last_gap {
        Some(gap) => 2.0 * gap / JITTER_MIN * JITTER_MAX,
        None => 2.0 * elapsed_broken * JITTER_MAX,
    }
    .max(BACKOFF_MIN_SECS * JITTER_MAX);
    let recovery_bound = Duration::from_secs_f64(step_bound + 3.0);
    let new_secret_id = bao.approle_secret_id(ROLE).await.unwrap();
    let logins_before_fix = agent
        .metric("keygate_agent_auth_logins_total")
        .await
        .unwrap();
    let fixed = Instant::now();
    write_private_file(&secret_id_file, &new_secret_id).unwrap();
    let recovered = eventually(recovery_bound + Duration::from_secs(30), || async {
        let logins = agent.metric("keygate_agent_auth_logins_total").await?;
        anyhow::ensure!(logins > logins_before_fix, "no new login yet");
        Ok(fixed.elapsed())
    })
    .await
    .unwrap();
    println!(
        "new secret id written: logged in after {recovered:.2?} (bound {recovery_bound:.2?}: \
         last gap {last_gap:?} s, login broken for {elapsed_broken:.1} s)"
    );
    assert!(
        recovered <= recovery_bound,
        "the agent took {recovered:.2?} to log in with the new secret id, more than its \
         backoff allows ({recovery_bound:.2?})"
    );
    eventually(Duration::from_secs_f64(REFRESH_SECS + 5.0), || async {
        let mut c = agent.client().await?;
        let resp = get(&mut c, &NAMES).await?;
        expect_loaded(&resp.secrets, JACK, &rotated)?;
        expect_loaded(&resp.secrets, JILL, &seeded.jill_v1)
    })
    .await
    .unwrap();

    let mut secrets = seeded.all();
    secrets.extend([
        role.secret_id.as_str(),
        new_secret_id.as_str(),
        rotated.as_str(),
    ]);
    agent.assert_no_secret_in_log(&secrets);
}
