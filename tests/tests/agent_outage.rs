//! OpenBao goes away: the agent keeps serving the last good values marked stale, and
//! fresh ones once OpenBao is back. An agent started while OpenBao is down never sends
//! an empty or partial snapshot: Watch stays silent, Get answers UNAVAILABLE, and the
//! full snapshot comes once OpenBao is up.

use std::time::{Duration, Instant};

use keygate_proto::agent::v1::Snapshot;
use keygate_tests::client::{expect_snapshot, get, get_within, next_snapshot, watch};
use keygate_tests::secrets::{describe, expect_loaded, expect_stale};
use keygate_tests::seed::{AGENT_POLICY, JACK, JILL, KV1_PREFIX};
use keygate_tests::{AgentConfig, AgentProcess, OpenBao, Stop, eventually, seed_apisix};

/// The refresh interval configured.
const REFRESH: Duration = Duration::from_secs(2);
/// Slack for detection on top of the refresh interval (timeouts, a busy machine).
const MARGIN: Duration = Duration::from_secs(5);
/// How long the agent may take to notice OpenBao is back: its retries back off.
const BACK_UP_WITHIN: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread")]
async fn serves_stale_values_while_openbao_is_down() {
    let mut bao = OpenBao::start().await.unwrap();
    let seeded = seed_apisix(&bao).await.unwrap();
    let token = bao.create_token(&[AGENT_POLICY], Some("2h")).await.unwrap();
    let agent = AgentProcess::start_ready(
        AgentConfig::new(&bao.addr(), KV1_PREFIX)
            .token(&token)
            .refresh_interval("2s")
            .timeout("2s"),
    )
    .await
    .unwrap();
    let mut client = agent.client().await.unwrap();
    let mut stream = watch(&mut client, &[JACK, JILL], Duration::from_secs(15))
        .await
        .unwrap()
        .unwrap();
    let first = expect_snapshot(&mut stream, Duration::from_secs(15))
        .await
        .unwrap();
    let jack_version = expect_loaded(&first.secrets, JACK, &seeded.jack_v1).unwrap();
    let jill_version = expect_loaded(&first.secrets, JILL, &seeded.jill_v1).unwrap();

    // ---- OpenBao killed ----
    bao.stop(Stop::Kill).await.unwrap();
    let down = Instant::now();
    let stale = expect_snapshot(&mut stream, REFRESH + MARGIN)
        .await
        .unwrap_or_else(|err| panic!("no stale snapshot after OpenBao died: {err:#}"));
    println!(
        "OpenBao killed: stale snapshot after {:.2?}: {}",
        down.elapsed(),
        describe(&stale.secrets)
    );
    assert_eq!(
        stale.secrets.len(),
        2,
        "the stale snapshot keeps every secret"
    );
    assert_eq!(
        expect_stale(&stale.secrets, JACK, &seeded.jack_v1).unwrap(),
        jack_version
    );
    assert_eq!(
        expect_stale(&stale.secrets, JILL, &seeded.jill_v1).unwrap(),
        jill_version
    );
    assert!(stale.version > first.version);
    assert_eq!(stale.boot_id, first.boot_id);

    let resp = get(&mut client, &[JACK, JILL]).await.unwrap();
    expect_stale(&resp.secrets, JACK, &seeded.jack_v1).unwrap();
    expect_stale(&resp.secrets, JILL, &seeded.jill_v1).unwrap();
    eventually(Duration::from_secs(5), || async {
        let n = agent.metric("keygate_agent_secrets_stale").await?;
        anyhow::ensure!(n == 2.0, "keygate_agent_secrets_stale = {n}");
        Ok(())
    })
    .await
    .unwrap();

    // Still down: nothing new is sent (the stale snapshot is not repeated).
    let extra = next_snapshot(&mut stream, 2 * REFRESH + Duration::from_millis(500))
        .await
        .unwrap();
    assert!(
        extra.is_none(),
        "a snapshot was sent while nothing changed: {}",
        extra.map(|s| describe(&s.secrets)).unwrap_or_default()
    );

    // ---- OpenBao back ----
    bao.start_again().await.unwrap();
    let up = Instant::now();
    let fresh = expect_snapshot(&mut stream, BACK_UP_WITHIN)
        .await
        .unwrap_or_else(|err| panic!("no fresh snapshot after OpenBao came back: {err:#}"));
    println!("OpenBao back: fresh snapshot after {:.2?}", up.elapsed());
    assert_eq!(fresh.secrets.len(), 2);
    assert_eq!(
        expect_loaded(&fresh.secrets, JACK, &seeded.jack_v1).unwrap(),
        jack_version
    );
    assert_eq!(
        expect_loaded(&fresh.secrets, JILL, &seeded.jill_v1).unwrap(),
        jill_version
    );
    let resp = get(&mut client, &[JACK, JILL]).await.unwrap();
    expect_loaded(&resp.secrets, JACK, &seeded.jack_v1).unwrap();
    expect_loaded(&resp.secrets, JILL, &seeded.jill_v1).unwrap();

    let mut secrets = seeded.all();
    secrets.push(&token);
    agent.assert_no_secret_in_log(&secrets);
}

/// The outcome of a Watch opened while OpenBao is down.
type FirstMessage = Result<Snapshot, tonic::Status>;

#[tokio::test(flavor = "multi_thread")]
async fn agent_started_while_openbao_is_down_sends_nothing_until_it_is_up() {
    let mut bao = OpenBao::start().await.unwrap();
    let seeded = seed_apisix(&bao).await.unwrap();
    let token = bao.create_token(&[AGENT_POLICY], Some("2h")).await.unwrap();
    bao.stop(Stop::Graceful).await.unwrap();

    let mut agent = AgentProcess::start(
        AgentConfig::new(&bao.addr(), KV1_PREFIX)
            .token(&token)
            .refresh_interval("2s")
            .timeout("2s"),
    )
    .await
    .unwrap();
    // The socket must be served even though OpenBao is unreachable.
    let mut client = eventually(Duration::from_secs(20), || agent.client())
        .await
        .unwrap_or_else(|err| panic!("the agent does not listen while OpenBao is down: {err:#}"));
    let (status, _) = agent.ops_get("/readyz").await.unwrap();
    assert_eq!(status, 503, "/readyz while OpenBao was never reached");

    // A watcher, in the background: it reports its first message (or error).
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<FirstMessage>();
    let mut watch_client = client.clone();
    let watcher = tokio::spawn(async move {
        let stream = watch_client
            .watch(keygate_proto::agent::v1::WatchRequest {
                names: vec![JACK.to_owned(), JILL.to_owned()],
            })
            .await;
        let mut stream = match stream {
            Ok(resp) => resp.into_inner(),
            Err(status) => {
                let _ = tx.send(Err(status));
                return None;
            }
        };
        loop {
            match stream.message().await {
                Ok(Some(snapshot)) => {
                    if tx.send(Ok(snapshot)).is_err() {
                        return None;
                    }
                }
                Ok(None) => return Some(stream),
                Err(status) => {
                    let _ = tx.send(Err(status));
                    return Some(stream);
                }
            }
        }
    });
    let watch_opened = Instant::now();

    // Get: UNAVAILABLE after waiting up to vault.timeout.
    let asked = Instant::now();
    let outcome = get_within(&mut client, &[JACK], Duration::from_secs(15))
        .await
        .unwrap();
    match outcome {
        Ok(resp) => panic!(
            "Get answered while OpenBao was down and nothing was ever loaded: {}",
            describe(&resp.secrets)
        ),
        Err(status) => assert_eq!(
            status.code(),
            tonic::Code::Unavailable,
            "Get while OpenBao is down: {status}"
        ),
    }
    println!(
        "Get while OpenBao is down: UNAVAILABLE after {:.2?}",
        asked.elapsed()
    );

    // Watch: no message for at least 3 s. Ending the stream with UNAVAILABLE is allowed,
    // a snapshot is not.
    let silent_until = watch_opened + Duration::from_secs(4);
    let remaining = silent_until.saturating_duration_since(Instant::now());
    let watch_gave_up = match tokio::time::timeout(remaining, rx.recv()).await {
        Err(_) => false,
        Ok(None) => panic!("the Watch stream ended without a status while OpenBao was down"),
        Ok(Some(Ok(snapshot))) => panic!(
            "Watch sent a snapshot while OpenBao was down: {} (version {})",
            describe(&snapshot.secrets),
            snapshot.version
        ),
        Ok(Some(Err(status))) => {
            assert_eq!(
                status.code(),
                tonic::Code::Unavailable,
                "Watch while OpenBao is down may only fail with UNAVAILABLE: {status}"
            );
            println!(
                "Watch while OpenBao is down ended with UNAVAILABLE after {:.2?}",
                watch_opened.elapsed()
            );
            true
        }
    };
    println!(
        "Watch silent for {:.2?} while OpenBao was down",
        watch_opened.elapsed()
    );

    // ---- OpenBao up ----
    bao.start_again().await.unwrap();
    let up = Instant::now();
    let snapshot = if watch_gave_up {
        let mut stream = watch(&mut client, &[JACK, JILL], BACK_UP_WITHIN)
            .await
            .unwrap()
            .unwrap();
        expect_snapshot(&mut stream, BACK_UP_WITHIN).await.unwrap()
    } else {
        match tokio::time::timeout(BACK_UP_WITHIN, rx.recv()).await {
            Ok(Some(Ok(snapshot))) => snapshot,
            Ok(Some(Err(status))) => panic!("Watch failed after OpenBao came up: {status}"),
            Ok(None) => panic!("the Watch stream ended without a snapshot"),
            Err(_) => panic!("no snapshot within {BACK_UP_WITHIN:?} of OpenBao coming up"),
        }
    };
    println!(
        "OpenBao up: the first snapshot came after {:.2?}",
        up.elapsed()
    );
    assert_eq!(
        snapshot.secrets.len(),
        2,
        "the first snapshot is complete: {}",
        describe(&snapshot.secrets)
    );
    expect_loaded(&snapshot.secrets, JACK, &seeded.jack_v1).unwrap();
    expect_loaded(&snapshot.secrets, JILL, &seeded.jill_v1).unwrap();
    agent.wait_ready(Duration::from_secs(10)).await.unwrap();
    let resp = get(&mut client, &[JACK, JILL]).await.unwrap();
    expect_loaded(&resp.secrets, JACK, &seeded.jack_v1).unwrap();
    watcher.abort();

    let mut secrets = seeded.all();
    secrets.push(&token);
    agent.assert_no_secret_in_log(&secrets);
}
