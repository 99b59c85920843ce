//! Fault injection under live load: real OpenBao, agent, gateway and upstream processes,
//! a load client sending HS256-signed requests through the gateway at a steady rate, and
//! one fault per test. Each test prints its figures (requests sent, non-2xx, the longest
//! gap between successes, recovery time, and its own) and writes them to
//! `target/fault-report.txt`; then it asserts the promise of its scenario.
//!
//! Run: `cargo build --workspace --bins && cargo nextest run -p keygate-tests --test
//! fault_injection` (`--no-capture` to see the figures as they come), then read
//! `target/fault-report.txt`. `KEYGATE_FAULT_LONG=1` runs the long version.
//!
//! Scaled for CI (2 cores, about a minute and a half for this binary): the agent's
//! refresh interval is 2 s instead of the default 30 s, so every interval-bound promise
//! is checked against 2 s plus a 3 s margin, and an OpenBao outage of 12 s spans six
//! refresh intervals (the issue's 30 s outage against a 30 s interval spans one); 20
//! agent restarts 0.2–1 s apart; the agent down 3 s in the kill/SIGTERM scenarios, 6 s
//! in the SIGSTOP one; AppRole tokens of 4 s TTL and 10 s max TTL, so a 25 s run sees
//! two re-logins; the load is 4 keep-alive clients at 100 req/s in total.
//!
//! Long version (`KEYGATE_FAULT_LONG=1`, about six minutes): 8 clients at 400 req/s,
//! 100 restarts, agent down 20 s, OpenBao down 60 s (and 30 s under a restarted agent),
//! OpenBao frozen 60 s, the max-TTL run 120 s, the agent frozen 30 s, 32 requests in
//! flight at the gateway's SIGTERM.
//!
//! Beyond the issue's eleven scenarios: 5b freezes OpenBao instead of stopping it (a
//! hung server: requests time out rather than being refused), and 12 freezes the agent
//! longer than its token's max TTL (a suspended VM), so it wakes up with a dead token.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use keygate_proto::agent::v1::WatchRequest;
use keygate_tests::fault::{
    FaultReport, JACK_KEY, PROBE, PROBE_KEY, Probe, SlowUpstream, Stack, StackAuth, StackOptions,
    gateway_metric, pick, probe_connection, proc_stats, wait_accepted, wait_agent_ready,
    wait_resync,
};
use keygate_tests::gateway::GatewayProcess;
use keygate_tests::load::{Credential, Load, LoadConfig, LoadReport, hs256_token, secs};
use keygate_tests::seed::{JACK, JILL};
use keygate_tests::{Stop, eventually};
use rand::Rng as _;

/// Concurrent load clients (one keep-alive connection each).
fn workers() -> usize {
    pick(4, 8)
}

/// Requests per second over all clients.
fn rate() -> f64 {
    pick(100.0, 400.0)
}

/// Load before the fault, so the baseline is established.
const WARMUP: Duration = Duration::from_secs(2);
/// The agent's refresh interval in these tests (`StackOptions::default`).
const REFRESH: Duration = Duration::from_secs(2);
/// Slack on top of an interval for a busy two-core machine.
const MARGIN: Duration = Duration::from_secs(3);
/// The gateway's reconnect backoff maximum (its default, also in `gateway_config`): it
/// redials at most this long after the agent's socket is back.
const GATEWAY_BACKOFF_MAX: Duration = Duration::from_millis(500);
/// The promise of scenario 1: reconnected within 1 s of the agent being ready. The
/// gateway redials at most `backoff_max` (0.5 s) after its last failed attempt, which can
/// fall just before the agent's socket appears; the connection, the Watch handshake, the
/// first snapshot and the two 20 ms polls that measure this fit in the other half.
const RECONNECT_WITHIN: Duration = Duration::from_secs(1);
/// The longest gap between two successful responses that still means "the request path
/// never waited on the agent or on OpenBao" (at 100 req/s the normal gap is ~10 ms; this
/// leaves room for a descheduled process on a loaded machine).
const MAX_SUCCESS_GAP: Duration = Duration::from_secs(1);

fn load_config(url: String) -> LoadConfig {
    // The time bound is a safety net: every scenario stops its load explicitly.
    LoadConfig::new(url, workers(), rate(), Duration::from_secs(600))
}

fn start_load(stack: &Stack) -> anyhow::Result<Load> {
    Load::start(
        load_config(stack.gateway.url("/secure/ping")),
        stack.credentials(),
    )
}

/// The checks every scenario with already-loaded consumers makes on its load: nothing
/// failed, and successes never stopped for long.
fn check_zero_failures(report: &mut FaultReport, load: &LoadReport) {
    report.check(load.failures().is_empty(), || {
        format!(
            "{} of {} requests failed:\n{}",
            load.failures().len(),
            load.sent(),
            load.failure_listing(15)
        )
    });
    let (gap, at) = load.longest_success_gap();
    report.check(gap <= MAX_SUCCESS_GAP, || {
        format!(
            "successes stopped for {} ms from t={} (bound {} ms):\n{}",
            gap.as_millis(),
            secs(at),
            MAX_SUCCESS_GAP.as_millis(),
            load.failure_listing(5)
        )
    });
    report.check(load.sent() > 0, || "the load sent nothing".to_owned());
}

/// Restarts a stopped agent and measures, from the same start, when the agent is ready
/// and when the gateway has resynced (stream open, a new snapshot received).
/// Returns (ready after start, resync after start).
async fn restart_agent_and_resync(stack: &mut Stack) -> anyhow::Result<(Duration, Duration)> {
    let snapshots_before =
        gateway_metric(&stack.gateway, "keygate_gateway_agent_snapshots_total").await?;
    stack.agent.start_again()?;
    let started = Instant::now();
    let agent = &mut stack.agent;
    let gateway = &stack.gateway;
    let (ready, resync) = tokio::join!(
        async {
            wait_agent_ready(agent, Duration::from_secs(30))
                .await
                .map(|_| started.elapsed())
        },
        async {
            wait_resync(gateway, snapshots_before, Duration::from_secs(30))
                .await
                .map(|_| started.elapsed())
        }
    );
    Ok((ready?, resync?))
}

// ---------------------------------------------------------------------------------------
// 1. kill -9 of the agent under load
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn s01_agent_kill9_under_load() {
    let down_for = pick(Duration::from_secs(3), Duration::from_secs(20));
    let mut report = FaultReport::new(
        "01-agent-kill9",
        "kill -9 of the agent under load, restarted a few seconds later",
    );
    let mut stack = Stack::start(StackOptions::default()).await.unwrap();
    let gateway_pid = stack.gateway.pid().unwrap();
    let load = start_load(&stack).unwrap();
    tokio::time::sleep(WARMUP).await;
    let up_before = proc_stats(gateway_pid).unwrap();

    stack.agent.kill9().await.unwrap();
    load.mark("agent killed (SIGKILL)");
    // Rotate the probe consumer while the agent is dead: the resync must bring it.
    tokio::time::sleep(down_for / 2).await;
    let probe_secret = stack.rotate_probe().await.unwrap();
    let while_down = proc_stats(gateway_pid).unwrap();
    tokio::time::sleep(down_for - down_for / 2).await;

    load.mark("agent started again");
    let (ready, resync) = restart_agent_and_resync(&mut stack).await.unwrap();
    load.mark("gateway resynced");
    let reconnect_after_ready = resync.saturating_sub(ready);
    let probe = wait_accepted(&stack.gateway, PROBE_KEY, &probe_secret, MARGIN).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let up_after = proc_stats(gateway_pid).unwrap();
    let result = load.stop().await;

    report.load("load", &result);
    report.figure("gateway before the kill", up_before);
    report.figure("gateway while the agent was dead", while_down);
    report.figure("gateway after the resync", up_after);
    // The gateway holds one Unix connection to the agent: it goes with the agent and
    // comes back once (this also shows the leak check of scenario 2 sees it).
    report.check(
        while_down.unix_sockets + 1 == up_before.unix_sockets
            && up_after.unix_sockets == up_before.unix_sockets,
        || {
            format!(
                "the gateway's Unix sockets: {} before, {} while the agent was dead, {} after",
                up_before.unix_sockets, while_down.unix_sockets, up_after.unix_sockets
            )
        },
    );
    report.figure("agent down for", secs(down_for));
    report.figure("agent ready after its start", secs(ready));
    report.figure("gateway resynced after the agent's start", secs(resync));
    report.recovery(
        "gateway resync after the agent was ready",
        reconnect_after_ready,
    );
    report.check(reconnect_after_ready <= RECONNECT_WITHIN, || {
        format!(
            "the gateway resynced {} after the agent was ready (promise: within 1 s)",
            secs(reconnect_after_ready)
        )
    });
    if let Some(d) = report.check_result("probe rotated while the agent was dead", probe) {
        report.figure("probe's new secret accepted after the resync", secs(d));
    }
    check_zero_failures(&mut report, &result);
    report.finish().unwrap();
}

// ---------------------------------------------------------------------------------------
// 2. repeated agent restarts
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn s02_repeated_agent_restarts() {
    let restarts: usize = pick(20, 100);
    let mut report = FaultReport::new(
        "02-agent-restarts",
        "repeated agent restarts (SIGKILL and SIGTERM alternately) at random 0.2-1 s intervals",
    );
    let mut stack = Stack::start(StackOptions::default()).await.unwrap();
    let gateway_pid = stack.gateway.pid().unwrap();
    let load = start_load(&stack).unwrap();
    tokio::time::sleep(WARMUP).await;
    // One restart before the baseline, so one-time allocations of the reconnect path
    // (and the upstream pool) are in it.
    stack.agent.kill9().await.unwrap();
    restart_agent_and_resync(&mut stack).await.unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = proc_stats(gateway_pid).unwrap();
    let disconnects_before =
        gateway_metric(&stack.gateway, "keygate_gateway_agent_disconnects_total")
            .await
            .unwrap();
    let snapshots_before = gateway_metric(&stack.gateway, "keygate_gateway_agent_snapshots_total")
        .await
        .unwrap();

    load.mark("restarts begin");
    let mut rss_series = Vec::with_capacity(restarts);
    let mut fd_series = Vec::with_capacity(restarts);
    for i in 0..restarts {
        if i % 2 == 0 {
            stack.agent.kill9().await.unwrap();
        } else {
            stack.agent.sigterm().await.unwrap();
        }
        stack.agent.start_again().unwrap();
        let pause = Duration::from_millis(rand::rng().random_range(200..=1000));
        tokio::time::sleep(pause).await;
        let stats = proc_stats(gateway_pid).unwrap();
        rss_series.push(stats.rss_kib);
        fd_series.push(stats.fds);
    }
    load.mark("restarts end");
    // One more, measured: from the start of the last agent to the gateway's resync.
    wait_agent_ready(&mut stack.agent, Duration::from_secs(30))
        .await
        .unwrap();
    stack.agent.kill9().await.unwrap();
    let (ready, resync) = restart_agent_and_resync(&mut stack).await.unwrap();
    load.mark("last restart, gateway resynced");
    // Let the connections of the last reconnect settle before counting.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = proc_stats(gateway_pid).unwrap();
    let disconnects = gateway_metric(&stack.gateway, "keygate_gateway_agent_disconnects_total")
        .await
        .unwrap()
        - disconnects_before;
    let snapshots = gateway_metric(&stack.gateway, "keygate_gateway_agent_snapshots_total")
        .await
        .unwrap()
        - snapshots_before;
    let probe = stack.probe_pickup(REFRESH + MARGIN).await;
    let result = load.stop().await;

    report.load("load", &result);
    report.figure("restarts", format!("{restarts} + 1 measured"));
    report.figure(
        "gateway Watch streams ended / snapshots received during them",
        format!("{disconnects} / {snapshots}"),
    );
    report.figure("gateway before", before);
    report.figure("gateway after", after);
    report.figure(
        "gateway RSS during the restarts (KiB, min / max)",
        format!(
            "{} / {}",
            rss_series.iter().min().copied().unwrap_or_default(),
            rss_series.iter().max().copied().unwrap_or_default()
        ),
    );
    report.figure(
        "gateway RSS trend over the restarts (least squares)",
        format!("{:+.1} KiB per restart", slope(&rss_series)),
    );
    report.figure(
        "gateway fds during the restarts (min / max)",
        format!(
            "{} / {}",
            fd_series.iter().min().copied().unwrap_or_default(),
            fd_series.iter().max().copied().unwrap_or_default()
        ),
    );
    report.figure("agent ready after the last start", secs(ready));
    report.recovery(
        "gateway resync after the last agent was ready",
        resync.saturating_sub(ready),
    );
    if let Some(d) = report.check_result("probe rotation after the restarts", probe) {
        report.figure("probe rotation picked up in", secs(d));
    }
    report.check(after.unix_sockets <= before.unix_sockets, || {
        format!("the gateway holds more Unix sockets to the agent: {before} -> {after}")
    });
    // TCP sockets move with the keep-alive pools (load clients, upstream, the status
    // client); everything else must not grow at all.
    let others = |p: &keygate_tests::fault::ProcStats| p.fds - p.sockets;
    report.check(others(&after) <= others(&before), || {
        format!("the gateway's non-socket file descriptors grew: {before} -> {after}")
    });
    report.check(after.sockets <= before.sockets + workers(), || {
        format!("the gateway's sockets grew: {before} -> {after}")
    });
    let rss_bound = before.rss_kib + (before.rss_kib / 4).max(8 * 1024);
    report.check(after.rss_kib <= rss_bound, || {
        format!(
            "the gateway's memory grew: {} KiB -> {} KiB (bound {rss_bound} KiB)",
            before.rss_kib, after.rss_kib
        )
    });
    check_zero_failures(&mut report, &result);
    report.finish().unwrap();
}

/// The least-squares slope of `ys` against their index.
fn slope(ys: &[u64]) -> f64 {
    let n = ys.len() as f64;
    if ys.len() < 2 {
        return 0.0;
    }
    let mean_x = (n - 1.0) / 2.0;
    let mean_y = ys.iter().map(|&y| y as f64).sum::<f64>() / n;
    let (mut num, mut den) = (0.0, 0.0);
    for (i, &y) in ys.iter().enumerate() {
        let dx = i as f64 - mean_x;
        num += dx * (y as f64 - mean_y);
        den += dx * dx;
    }
    num / den
}

// ---------------------------------------------------------------------------------------
// 3. agent SIGTERM
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn s03_agent_sigterm_is_graceful() {
    let down_for = pick(Duration::from_secs(3), Duration::from_secs(20));
    let mut report = FaultReport::new(
        "03-agent-sigterm",
        "SIGTERM to the agent under load: graceful exit, gateway unaffected",
    );
    let mut stack = Stack::start(StackOptions::default()).await.unwrap();
    let socket = stack.agent.socket_path().to_path_buf();
    let load = start_load(&stack).unwrap();
    tokio::time::sleep(WARMUP).await;

    load.mark("agent SIGTERM");
    let asked = Instant::now();
    let status = stack.agent.sigterm().await.unwrap();
    let exit_after = asked.elapsed();
    load.mark("agent exited");
    let socket_left = socket.exists();
    tokio::time::sleep(down_for).await;
    let ready_resync = restart_agent_and_resync(&mut stack).await;
    load.mark("agent back, gateway resynced");
    let probe = stack.probe_pickup(REFRESH + MARGIN).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let result = load.stop().await;

    report.load("load", &result);
    report.figure("agent exit status", status);
    report.figure("agent exited after SIGTERM in", secs(exit_after));
    report.figure("agent down for", secs(down_for));
    report.check(status.success(), || {
        format!("the agent exited with {status} on SIGTERM")
    });
    report.check(!socket_left, || {
        format!("the agent left its socket {} behind", socket.display())
    });
    if let Some((ready, resync)) = report.check_result("agent restart", ready_resync) {
        let after_ready = resync.saturating_sub(ready);
        report.recovery("gateway resync after the agent was ready", after_ready);
        report.check(after_ready <= RECONNECT_WITHIN, || {
            format!(
                "the gateway resynced {} after the agent was ready",
                secs(after_ready)
            )
        });
    }
    if let Some(d) = report.check_result("probe rotation after the restart", probe) {
        report.figure("probe rotation picked up in", secs(d));
    }
    check_zero_failures(&mut report, &result);
    report.finish().unwrap();
}

// ---------------------------------------------------------------------------------------
// 4. agent restarted while OpenBao is down
// ---------------------------------------------------------------------------------------

/// The first thing a Watch stream opened on the restarted agent delivered.
#[derive(Debug)]
enum FirstMessage {
    Snapshot {
        after: Duration,
        names: Vec<String>,
        all_loaded: bool,
    },
    Failed {
        after: Duration,
        code: tonic::Code,
    },
}

#[tokio::test(flavor = "multi_thread")]
async fn s04_agent_restarted_while_openbao_is_down() {
    let outage = pick(Duration::from_secs(6), Duration::from_secs(30));
    let mut report = FaultReport::new(
        "04-agent-restart-bao-down",
        "agent restarted while OpenBao is down: no empty or partial snapshot, the gateway keeps the last one",
    );
    let mut stack = Stack::start(StackOptions {
        via_proxy: true,
        ..StackOptions::default()
    })
    .await
    .unwrap();
    let load = start_load(&stack).unwrap();
    tokio::time::sleep(WARMUP).await;

    stack.bao.stop(Stop::Graceful).await.unwrap();
    load.mark("OpenBao stopped");
    stack.agent.kill9().await.unwrap();
    load.mark("agent killed");
    let snapshots_before = gateway_metric(&stack.gateway, "keygate_gateway_agent_snapshots_total")
        .await
        .unwrap();
    stack.agent.start_again().unwrap();
    let restarted = Instant::now();
    load.mark("agent started again (OpenBao down)");

    // A watcher of our own on the restarted agent, for the three consumers' names.
    let mut client = eventually(Duration::from_secs(20), || stack.agent.client())
        .await
        .unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<FirstMessage>();
    let watcher = tokio::spawn(async move {
        let names = vec![JACK.to_owned(), JILL.to_owned(), PROBE.to_owned()];
        let opened = Instant::now();
        let first = match client.watch(WatchRequest { names }).await {
            Ok(resp) => match resp.into_inner().message().await {
                Ok(Some(s)) => FirstMessage::Snapshot {
                    after: opened.elapsed(),
                    names: s.secrets.iter().map(|x| x.name.clone()).collect(),
                    all_loaded: s
                        .secrets
                        .iter()
                        .all(|x| x.state == keygate_proto::agent::v1::SecretState::Loaded as i32),
                },
                Ok(None) => FirstMessage::Failed {
                    after: opened.elapsed(),
                    code: tonic::Code::Ok,
                },
                Err(status) => FirstMessage::Failed {
                    after: opened.elapsed(),
                    code: status.code(),
                },
            },
            Err(status) => FirstMessage::Failed {
                after: opened.elapsed(),
                code: status.code(),
            },
        };
        let _ = tx.send(first);
    });

    // The outage: sample the gateway and the agent.
    let mut gateway_not_ready = 0;
    let mut agent_ready_during_outage = 0;
    let mut samples = 0;
    while restarted.elapsed() < outage {
        samples += 1;
        if !matches!(stack.gateway.status_get("/readyz").await, Ok((200, _))) {
            gateway_not_ready += 1;
        }
        if matches!(stack.agent.ops_get("/readyz").await, Ok((200, _))) {
            agent_ready_during_outage += 1;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let snapshots_during = gateway_metric(&stack.gateway, "keygate_gateway_agent_snapshots_total")
        .await
        .unwrap()
        - snapshots_before;
    let early = rx.try_recv().ok();
    let retries = stack
        .proxy
        .as_ref()
        .unwrap()
        .requests_between(restarted, Instant::now());
    let mut retry_lines: std::collections::BTreeMap<String, usize> = Default::default();
    for r in &retries {
        *retry_lines.entry(r.line.clone()).or_insert(0) += 1;
    }

    stack.bao.start_again().await.unwrap();
    load.mark("OpenBao back");
    let bao_up = Instant::now();
    let resync = wait_resync(&stack.gateway, snapshots_before, Duration::from_secs(60)).await;
    let resync_after = bao_up.elapsed();
    load.mark("gateway resynced");
    let first = match early {
        Some(first) => Some(first),
        None => tokio::time::timeout(Duration::from_secs(30), rx.recv())
            .await
            .ok()
            .flatten(),
    };
    watcher.abort();
    let stale_cleared = eventually(Duration::from_secs(10), || async {
        let stale = gateway_metric(&stack.gateway, "keygate_gateway_agent_stale_secrets").await?;
        anyhow::ensure!(stale == 0.0, "the gateway still has {stale} stale secrets");
        Ok(())
    })
    .await;
    let probe = stack.probe_pickup(REFRESH + MARGIN).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let result = load.stop().await;

    report.load("load", &result);
    report.figure("OpenBao down, agent restarted, for", secs(outage));
    report.figure(
        "snapshots the gateway received during the outage",
        snapshots_during,
    );
    report.figure(
        "the restarted agent's requests to OpenBao during the outage (proxy)",
        format!("{} {retry_lines:?}", retries.len()),
    );
    // Start-up retries back off from 1 s (less 20 % jitter): at most one attempt per
    // 0.8 s per loop (auth, and one read per name once authenticated).
    let retry_bound = 4.0 * (outage.as_secs_f64() / 0.8).ceil();
    report.check(retries.len() as f64 <= retry_bound, || {
        format!(
            "the restarted agent sent {} requests in a {} outage (bound {retry_bound})",
            retries.len(),
            secs(outage)
        )
    });
    report.figure(
        "gateway /readyz not 200 during the outage (samples)",
        format!("{gateway_not_ready} of {samples}"),
    );
    report.figure(
        "our watcher's first message",
        format!("{early_or_first:?}", early_or_first = first),
    );
    report.check(snapshots_during == 0.0, || {
        format!("the restarted agent pushed {snapshots_during} snapshot(s) to the gateway while OpenBao was down")
    });
    report.check(agent_ready_during_outage == 0, || {
        format!("the agent said ready {agent_ready_during_outage} times while OpenBao was down")
    });
    report.check(gateway_not_ready == 0, || {
        format!("the gateway was not ready in {gateway_not_ready} of {samples} samples while it had a snapshot")
    });
    match &first {
        Some(FirstMessage::Snapshot {
            after,
            names,
            all_loaded,
        }) => {
            let after = *after;
            report.check(
                after >= outage.saturating_sub(Duration::from_secs(1)),
                || {
                    format!(
                        "our watcher got a snapshot {} after opening, while OpenBao was down",
                        secs(after)
                    )
                },
            );
            report.check(names.len() == 3 && *all_loaded, || {
                format!("the first snapshot after the outage is partial: {names:?} (all loaded: {all_loaded})")
            });
        }
        Some(FirstMessage::Failed { after, code }) => {
            report.figure("our watcher's stream failed after", secs(*after));
            report.check(*code == tonic::Code::Unavailable, || {
                format!("our watcher failed with {code:?} (only UNAVAILABLE is allowed)")
            });
        }
        None => report.check(false, || {
            "our watcher got nothing within 30 s of OpenBao's return".to_owned()
        }),
    }
    if report
        .check_result("gateway resync after OpenBao's return", resync)
        .is_some()
    {
        report.recovery("gateway resync after OpenBao was back", resync_after);
    }
    report.check_result("stale flags cleared", stale_cleared);
    if let Some(d) = report.check_result("probe rotation after the outage", probe) {
        report.figure("probe rotation picked up in", secs(d));
    }
    check_zero_failures(&mut report, &result);
    report.finish().unwrap();
}

// ---------------------------------------------------------------------------------------
// 5. OpenBao outage longer than the refresh interval
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn s05_openbao_outage_under_load() {
    let outage = pick(Duration::from_secs(12), Duration::from_secs(60));
    let mut report = FaultReport::new(
        "05-bao-outage",
        "OpenBao stopped for several refresh intervals under load: no failures, no retry storm",
    );
    let mut stack = Stack::start(StackOptions {
        via_proxy: true,
        ..StackOptions::default()
    })
    .await
    .unwrap();
    let load = start_load(&stack).unwrap();
    tokio::time::sleep(WARMUP).await;
    let proxy = stack.proxy.as_ref().unwrap();
    let steady_from = Instant::now();
    tokio::time::sleep(Duration::from_secs(4)).await;
    let steady = proxy.requests_between(steady_from, Instant::now()).len();
    let steady_secs = steady_from.elapsed().as_secs_f64();
    let agent_requests_before = stack
        .agent
        .metric("keygate_agent_vault_requests_total")
        .await
        .unwrap();

    let down = Instant::now();
    load.mark("OpenBao stopping");
    stack.bao.stop(Stop::Graceful).await.unwrap();
    let stale = eventually(REFRESH + MARGIN, || async {
        let stale = gateway_metric(&stack.gateway, "keygate_gateway_agent_stale_secrets").await?;
        anyhow::ensure!(stale > 0.0, "no stale secret yet");
        Ok(down.elapsed())
    })
    .await;
    tokio::time::sleep(outage.saturating_sub(down.elapsed())).await;
    let up_begins = Instant::now();
    let agent_requests_during = stack
        .agent
        .metric("keygate_agent_vault_requests_total")
        .await
        .unwrap()
        - agent_requests_before;
    stack.bao.start_again().await.unwrap();
    let up = Instant::now();
    load.mark("OpenBao back");
    let recovered = eventually(Duration::from_secs(60), || async {
        let stale = gateway_metric(&stack.gateway, "keygate_gateway_agent_stale_secrets").await?;
        anyhow::ensure!(stale == 0.0, "the gateway still has {stale} stale secrets");
        let stale = stack.agent.metric("keygate_agent_secrets_stale").await?;
        anyhow::ensure!(stale == 0.0, "the agent still has {stale} stale secrets");
        Ok(up.elapsed())
    })
    .await;
    load.mark("fresh again");
    let probe = stack.probe_pickup(REFRESH + MARGIN).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let result = load.stop().await;

    let proxy = stack.proxy.as_ref().unwrap();
    let during = proxy.requests_between(down, up_begins);
    let window = up_begins.duration_since(down).as_secs_f64();
    // Requests per one-second bucket of the outage, for the peak rate.
    let mut buckets = vec![0usize; window.ceil().max(1.0) as usize];
    for r in &during {
        let i = r.at.duration_since(down).as_secs() as usize;
        if let Some(b) = buckets.get_mut(i) {
            *b += 1;
        }
    }
    let peak = buckets.iter().max().copied().unwrap_or(0);
    let mut by_line: std::collections::BTreeMap<&str, usize> = std::collections::BTreeMap::new();
    for r in &during {
        *by_line.entry(r.line.as_str()).or_insert(0) += 1;
    }
    // The bound the backoff sets: each of the agent's retry loops (one read per watched
    // secret in the refresh loop, plus the token loop) sleeps at least 0.8 s (1 s less
    // 20 % jitter) between attempts.
    let loops = 3.0 + 1.0;
    let bound = loops * (window / 0.8).ceil();

    report.load("load", &result);
    report.figure("outage", secs(Duration::from_secs_f64(window)));
    report.figure(
        "agent requests to OpenBao in steady state",
        format!(
            "{steady} in {steady_secs:.1}s ({:.2}/s)",
            steady as f64 / steady_secs
        ),
    );
    report.figure(
        "agent requests to OpenBao during the outage (counted by the proxy)",
        format!(
            "{} ({:.2}/s, peak {peak} in one second; bound {bound:.0} = {loops} loops x ceil({window:.1}s / 0.8s))",
            during.len(),
            during.len() as f64 / window
        ),
    );
    report.figure("  by request", format!("{by_line:?}"));
    report.figure("  per second", format!("{buckets:?}"));
    report.figure(
        "agent's own keygate_agent_vault_requests_total during the outage",
        agent_requests_during,
    );
    if let Some(d) = report.check_result("the gateway saw the stale flag", stale) {
        report.figure("gateway saw stale secrets after", secs(d));
    }
    report.check(during.len() as f64 <= bound, || {
        format!(
            "the agent sent {} requests to OpenBao in a {window:.1} s outage (bound {bound:.0})",
            during.len()
        )
    });
    report.check(!during.is_empty(), || {
        "the proxy saw no request at all during the outage: the agent stopped retrying (or the proxy counts nothing)".to_owned()
    });
    if let Some(d) = report.check_result("fresh again after OpenBao's return", recovered) {
        report.recovery("stale flags cleared after OpenBao was back", d);
    }
    if let Some(d) = report.check_result("probe rotation after the outage", probe) {
        report.figure("probe rotation picked up in", secs(d));
    }
    check_zero_failures(&mut report, &result);
    report.finish().unwrap();
}

// ---------------------------------------------------------------------------------------
// 5b. OpenBao hung (SIGSTOP) rather than gone: requests hang until vault.timeout
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn s05b_openbao_hung_under_load() {
    let hang = pick(Duration::from_secs(10), Duration::from_secs(60));
    let mut report = FaultReport::new(
        "05b-bao-hung",
        "OpenBao frozen (SIGSTOP: connections accepted, never answered) under load, then resumed",
    );
    let mut stack = Stack::start(StackOptions {
        via_proxy: true,
        ..StackOptions::default()
    })
    .await
    .unwrap();
    stack.bao.enable_audit_file().await.unwrap();
    let load = start_load(&stack).unwrap();
    tokio::time::sleep(WARMUP).await;

    let frozen = Instant::now();
    stack.bao.pause().await.unwrap();
    load.mark("OpenBao frozen");
    let stale = eventually(REFRESH + MARGIN + Duration::from_secs(2), || async {
        let stale = gateway_metric(&stack.gateway, "keygate_gateway_agent_stale_secrets").await?;
        anyhow::ensure!(stale > 0.0, "no stale secret yet");
        Ok(frozen.elapsed())
    })
    .await;
    tokio::time::sleep(hang.saturating_sub(frozen.elapsed())).await;
    let resumed = Instant::now();
    let mark = stack.bao.audit_mark().unwrap();
    stack.bao.resume().unwrap();
    load.mark("OpenBao resumed");
    let recovered = eventually(Duration::from_secs(60), || async {
        let stale = gateway_metric(&stack.gateway, "keygate_gateway_agent_stale_secrets").await?;
        anyhow::ensure!(stale == 0.0, "the gateway still has {stale} stale secrets");
        Ok(resumed.elapsed())
    })
    .await;
    load.mark("fresh again");
    let probe = stack.probe_pickup(REFRESH + MARGIN).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let result = load.stop().await;
    let during = stack
        .proxy
        .as_ref()
        .unwrap()
        .requests_between(frozen, resumed);
    let window = resumed.duration_since(frozen).as_secs_f64();
    let audit = stack.bao.audit_requests_since(mark).unwrap();
    let logins_after = audit
        .iter()
        .filter(|r| !r.by_root() && r.is_login())
        .count();
    let bound = 4.0 * (window / 0.8).ceil();

    report.load("load", &result);
    report.figure("OpenBao frozen for", secs(Duration::from_secs_f64(window)));
    report.figure(
        "agent requests sent to the frozen OpenBao (proxy)",
        format!(
            "{} ({:.2}/s; bound {bound:.0})",
            during.len(),
            during.len() as f64 / window
        ),
    );
    report.figure("agent logins after the resume (audit log)", logins_after);
    if let Some(d) = report.check_result("the gateway saw the stale flag", stale) {
        report.figure("gateway saw stale secrets after", secs(d));
    }
    report.check(during.len() as f64 <= bound, || {
        format!(
            "the agent sent {} requests to a frozen OpenBao in {window:.1} s (bound {bound:.0})",
            during.len()
        )
    });
    if let Some(d) = report.check_result("fresh again after the resume", recovered) {
        report.recovery("stale flags cleared after OpenBao resumed", d);
    }
    if let Some(d) = report.check_result("probe rotation after the resume", probe) {
        report.figure("probe rotation picked up in", secs(d));
    }
    check_zero_failures(&mut report, &result);
    report.finish().unwrap();
}

// ---------------------------------------------------------------------------------------
// 6. the agent's token revoked out of band
// ---------------------------------------------------------------------------------------

/// Requests the agent made (not the harness's root token) that OpenBao refused.
fn agent_denials(requests: &[keygate_tests::AuditRequest]) -> Vec<String> {
    requests
        .iter()
        .filter(|r| !r.by_root() && r.error.is_some())
        .map(|r| {
            format!(
                "{} {} {}: {}",
                r.time,
                r.operation,
                r.path,
                r.error.as_deref().unwrap_or_default()
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn s06_token_revoked_out_of_band() {
    let mut report = FaultReport::new(
        "06-token-revoked",
        "the agent's AppRole token revoked out of band under load: re-login, no failed request",
    );
    // Short enough to be an AppRole setup like scenario 7's, long enough that no
    // max-TTL re-login happens during the scenario and muddles the figure.
    let mut stack = Stack::start(StackOptions {
        auth: StackAuth::AppRole {
            ttl: "60s".to_owned(),
            max_ttl: "120s".to_owned(),
        },
        ..StackOptions::default()
    })
    .await
    .unwrap();
    stack.bao.enable_audit_file().await.unwrap();
    let load = start_load(&stack).unwrap();
    tokio::time::sleep(WARMUP).await;
    let logins_before = stack
        .agent
        .metric("keygate_agent_auth_logins_total")
        .await
        .unwrap();

    let mark = stack.bao.audit_mark().unwrap();
    stack.bao.revoke_prefix("auth/approle/login").await.unwrap();
    let revoked = Instant::now();
    load.mark("token revoked");
    let relogin = eventually(REFRESH + MARGIN + MARGIN, || async {
        let logins = stack
            .agent
            .metric("keygate_agent_auth_logins_total")
            .await?;
        anyhow::ensure!(logins > logins_before, "no new login yet ({logins})");
        Ok(revoked.elapsed())
    })
    .await;
    load.mark("agent logged in again");
    tokio::time::sleep(REFRESH).await;
    let probe = stack.probe_pickup(REFRESH + MARGIN).await;
    let stale = stack.agent.metric("keygate_agent_secrets_stale").await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let result = load.stop().await;
    let audit = stack.bao.audit_requests_since(mark).unwrap();
    let denials = agent_denials(&audit);
    let logins = audit
        .iter()
        .filter(|r| !r.by_root() && r.is_login())
        .count();

    report.load("load", &result);
    if let Some(d) = report.check_result("re-login after the revocation", relogin) {
        report.recovery("agent logged in again after the revocation", d);
        report.check(d <= REFRESH + MARGIN, || {
            format!(
                "the agent took {} to log in again (refresh interval {} + {} margin)",
                secs(d),
                secs(REFRESH),
                secs(MARGIN)
            )
        });
    }
    report.figure("logins in OpenBao's audit log since the revocation", logins);
    report.figure(
        "agent requests OpenBao refused since the revocation",
        format!("{} {denials:?}", denials.len()),
    );
    report.check(logins >= 1, || {
        "no AppRole login in the audit log after the revocation".to_owned()
    });
    if let Some(stale) = report.check_result("agent stale gauge", stale) {
        report.check(stale == 0.0, || {
            format!("the agent still has {stale} stale secrets")
        });
    }
    if let Some(d) = report.check_result("probe rotation with the new token", probe) {
        report.figure("probe rotation picked up in", secs(d));
    }
    check_zero_failures(&mut report, &result);
    report.finish().unwrap();
}

// ---------------------------------------------------------------------------------------
// 7. the token reaches its max TTL
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn s07_token_max_ttl_under_load() {
    let run_for = pick(Duration::from_secs(25), Duration::from_secs(120));
    let (ttl, max_ttl) = (Duration::from_secs(4), Duration::from_secs(10));
    let mut report = FaultReport::new(
        "07-token-max-ttl",
        "AppRole token (TTL 4 s, max TTL 10 s) reaching its max TTL under load: re-login before expiry",
    );
    let mut stack = Stack::start(StackOptions {
        auth: StackAuth::AppRole {
            ttl: format!("{}s", ttl.as_secs()),
            max_ttl: format!("{}s", max_ttl.as_secs()),
        },
        ..StackOptions::default()
    })
    .await
    .unwrap();
    stack.bao.enable_audit_file().await.unwrap();
    let mark = stack.bao.audit_mark().unwrap();
    let logins_before = stack
        .agent
        .metric("keygate_agent_auth_logins_total")
        .await
        .unwrap();
    let renewals_before = stack
        .agent
        .metric("keygate_agent_token_renewals_total")
        .await
        .unwrap();
    let load = start_load(&stack).unwrap();
    let started = Instant::now();
    let mut max_stale = 0.0_f64;
    let mut not_authenticated = 0;
    let mut samples = 0;
    while started.elapsed() < run_for {
        samples += 1;
        if let Ok(m) = stack.agent.metrics().await {
            max_stale = max_stale.max(m.get("keygate_agent_secrets_stale").copied().unwrap_or(0.0));
            if m.get("keygate_agent_authenticated") != Some(&1.0) {
                not_authenticated += 1;
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let logins = stack
        .agent
        .metric("keygate_agent_auth_logins_total")
        .await
        .unwrap()
        - logins_before;
    let renewals = stack
        .agent
        .metric("keygate_agent_token_renewals_total")
        .await
        .unwrap()
        - renewals_before;
    let probe = stack.probe_pickup(REFRESH + MARGIN).await;
    let result = load.stop().await;
    let audit = stack.bao.audit_requests_since(mark).unwrap();
    let denials = agent_denials(&audit);
    let mut login_times: Vec<f64> = audit
        .iter()
        .filter(|r| !r.by_root() && r.is_login() && r.error.is_none())
        .map(|r| r.unix_time)
        .collect();
    login_times.sort_by(f64::total_cmp);
    let longest_between_logins = login_times
        .windows(2)
        .map(|w| w[1] - w[0])
        .fold(0.0_f64, f64::max);
    let renew_calls = audit
        .iter()
        .filter(|r| !r.by_root() && r.path.starts_with("auth/token/renew"))
        .count();

    report.load("load", &result);
    report.figure("run", secs(run_for));
    report.figure(
        "agent logins / renewals (metrics)",
        format!("{logins} / {renewals}"),
    );
    report.figure(
        "logins / renewals in OpenBao's audit log",
        format!("{} / {renew_calls}", login_times.len()),
    );
    report.figure(
        "longest time between two logins (audit log)",
        format!(
            "{longest_between_logins:.2}s (max TTL {}s)",
            max_ttl.as_secs()
        ),
    );
    report.figure(
        "agent requests OpenBao refused",
        format!("{} {denials:?}", denials.len()),
    );
    report.figure("max keygate_agent_secrets_stale seen", max_stale);
    report.figure(
        "samples with keygate_agent_authenticated != 1",
        format!("{not_authenticated} of {samples}"),
    );
    let expected_logins = (run_for.as_secs_f64() / max_ttl.as_secs_f64()).floor() - 1.0;
    report.check(logins >= expected_logins, || {
        format!(
            "only {logins} re-logins in {} with a {}s max TTL",
            secs(run_for),
            max_ttl.as_secs()
        )
    });
    report.check(longest_between_logins < max_ttl.as_secs_f64(), || {
        format!(
            "{longest_between_logins:.2}s between two logins: a token outlived its max TTL of {}s",
            max_ttl.as_secs()
        )
    });
    report.check(denials.is_empty(), || {
        format!(
            "OpenBao refused {} of the agent's requests (an expired token used?): {denials:?}",
            denials.len()
        )
    });
    report.check(max_stale == 0.0, || {
        format!("secrets went stale ({max_stale}): reads failed around a token's expiry")
    });
    if let Some(d) = report.check_result("probe rotation at the end", probe) {
        report.figure("probe rotation picked up in", secs(d));
    }
    check_zero_failures(&mut report, &result);
    report.finish().unwrap();
}

// ---------------------------------------------------------------------------------------
// 8. secret rotated in OpenBao under load
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn s08_secret_rotation_under_load() {
    let mut report = FaultReport::new(
        "08-secret-rotation",
        "jack's secret rotated in OpenBao under load; the load switches to tokens signed with the new secret",
    );
    let mut stack = Stack::start(StackOptions::default()).await.unwrap();
    let load = start_load(&stack).unwrap();
    tokio::time::sleep(WARMUP).await;

    let new_secret = stack.rotate_jack().await.unwrap();
    let rotated = load.mark("jack rotated in OpenBao");
    load.set_credential(
        0,
        Credential::new(
            "jack-new",
            hs256_token(JACK_KEY, &new_secret, keygate_tests::fault::TOKEN_LIFETIME),
        ),
    )
    .unwrap();
    tokio::time::sleep(REFRESH + MARGIN + Duration::from_secs(2)).await;
    let result = load.stop().await;

    let first = result.first_success_with("jack-new").cloned();
    let pickup = first.as_ref().map(|r| r.done.saturating_sub(rotated));
    let before_pickup: Vec<_> = result
        .records
        .iter()
        .filter(|r| r.label == "jack-new" && first.as_ref().is_some_and(|f| r.sent < f.done))
        .collect();
    let late_failures: Vec<String> = result
        .records
        .iter()
        .filter(|r| {
            r.label == "jack-new" && !r.ok() && first.as_ref().is_some_and(|f| r.sent >= f.done)
        })
        .map(|r| r.describe())
        .collect();
    let early_not_401: Vec<String> = before_pickup
        .iter()
        .filter(|r| !r.ok() && r.status != Some(401))
        .map(|r| r.describe())
        .collect();

    report.load("load", &result);
    report.note(
        "non-2xx = 401 for new-secret tokens sent before the gateway had the new secret (expected)",
    );
    report.figure(
        "jack-new requests before the first success (expected 401s)",
        format!(
            "{} ({} of them 401)",
            before_pickup.iter().filter(|r| !r.ok()).count(),
            before_pickup
                .iter()
                .filter(|r| r.status == Some(401))
                .count()
        ),
    );
    match pickup {
        Some(d) => {
            report.recovery("first success with the new secret after the rotation", d);
            report.check(d <= REFRESH + MARGIN, || {
                format!(
                    "the new secret worked only {} after the rotation (refresh {} + margin {})",
                    secs(d),
                    secs(REFRESH),
                    secs(MARGIN)
                )
            });
        }
        None => report.check(false, || {
            "no request with the new secret ever succeeded".to_owned()
        }),
    }
    report.check(late_failures.is_empty(), || {
        format!(
            "requests with the new secret failed after the first success:\n{}",
            late_failures.join("\n")
        )
    });
    report.check(early_not_401.is_empty(), || {
        format!(
            "before the pickup, new-secret requests got something else than 401:\n{}",
            early_not_401.join("\n")
        )
    });
    for label in ["jack", "jill"] {
        let failures = result.failures_for(label);
        report.check(failures.is_empty(), || {
            format!(
                "{} {label} requests failed:\n{}",
                failures.len(),
                failures
                    .iter()
                    .map(|r| r.describe())
                    .collect::<Vec<_>>()
                    .join("\n")
            )
        });
    }
    report.finish().unwrap();
}

// ---------------------------------------------------------------------------------------
// 9. gateway SIGTERM with requests in flight
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn s09_gateway_sigterm_drains_in_flight_requests() {
    let in_flight: usize = pick(8, 32);
    let slow = SlowUpstream::start(Duration::from_secs(3)).await.unwrap();
    let mut report = FaultReport::new(
        "09-gateway-sigterm-drain",
        "SIGTERM to the gateway with requests in flight to a slow (3 s) upstream",
    );
    let routes = format!(
        r#"  - id: "slow"
    uri: /slow
    plugins: {{ jwt-auth: {{}} }}
    upstream: {{ type: roundrobin, nodes: {{ "{node}": 1 }}, timeout: {{ connect: 5, send: 30, read: 30 }} }}
  - id: "fast"
    uri: /fast
    upstream: {{ type: roundrobin, nodes: {{ "{node}": 1 }} }}
"#,
        node = slow.node()
    );
    let mut stack = Stack::start(StackOptions {
        extra_routes: routes,
        ..StackOptions::default()
    })
    .await
    .unwrap();
    let addr = stack
        .gateway
        .base_url()
        .trim_start_matches("http://")
        .to_owned();
    let token = stack.credentials()[0].authorization.clone();
    let url = stack.gateway.url("/slow");

    // The requests in flight, each on its own connection.
    let origin = Instant::now();
    let mut flights = Vec::new();
    for _ in 0..in_flight {
        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(20))
            .build()
            .unwrap();
        let (url, token) = (url.clone(), token.clone());
        flights.push(tokio::spawn(async move {
            let outcome = match client.get(&url).header("authorization", token).send().await {
                Ok(resp) => {
                    let status = resp.status().as_u16();
                    resp.text()
                        .await
                        .map(|body| (status, body))
                        .map_err(|e| e.to_string())
                }
                Err(e) => Err(format!("{e:?}")),
            };
            (outcome, origin.elapsed())
        }));
    }
    eventually(Duration::from_secs(10), || async {
        let n = slow.in_flight();
        anyhow::ensure!(
            n == in_flight,
            "{n} of {in_flight} requests reached the upstream"
        );
        Ok(())
    })
    .await
    .unwrap();
    let before = probe_connection(&addr, "/fast").await;

    // New connections every 20 ms from just before the SIGTERM until the gateway is gone.
    let stop_probing = Arc::new(AtomicBool::new(false));
    let prober = {
        let (addr, stop) = (addr.clone(), stop_probing.clone());
        tokio::spawn(async move {
            let mut seen = Vec::new();
            while !stop.load(Ordering::SeqCst) {
                let sent = origin.elapsed();
                seen.push((sent, probe_connection(&addr, "/fast").await));
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            seen
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let term_at = origin.elapsed();
    let status = stack.gateway.sigterm().await.unwrap();
    let exited_at = origin.elapsed();
    stop_probing.store(true, Ordering::SeqCst);
    let probes = prober.await.unwrap();
    let mut results = Vec::new();
    for f in flights {
        results.push(f.await.unwrap());
    }

    let last_done = results.iter().map(|(_, t)| *t).max().unwrap_or_default();
    let completed = results
        .iter()
        .filter(|(o, _)| matches!(o, Ok((200, body)) if body == "slow/done\n"))
        .count();
    let before_term: Vec<_> = probes.iter().filter(|(t, _)| *t < term_at).collect();
    let after_term: Vec<_> = probes.iter().filter(|(t, _)| *t >= term_at).collect();
    let accepted_after = after_term
        .iter()
        .filter(|(_, p)| matches!(p, Probe::Status(200)))
        .count();
    let first_refused = after_term
        .iter()
        .find(|(_, p)| *p == Probe::Refused)
        .map(|(t, _)| *t);
    let broken: Vec<String> = probes
        .iter()
        .filter(|(_, p)| !matches!(p, Probe::Status(200) | Probe::Refused))
        .map(|(t, p)| format!("t={} {p:?}", secs(*t)))
        .collect();
    let accepted_after_refusal = first_refused.is_some_and(|r| {
        after_term
            .iter()
            .any(|(t, p)| *t > r && matches!(p, Probe::Status(_)))
    });

    report.figure("requests in flight at SIGTERM", in_flight);
    report.figure(
        "completed with 200 and the full body",
        format!(
            "{completed} of {in_flight} (last at t={}, SIGTERM at t={})",
            secs(last_done),
            secs(term_at)
        ),
    );
    report.figure(
        "gateway exit",
        format!(
            "{status} at t={} ({} after SIGTERM)",
            secs(exited_at),
            secs(exited_at.saturating_sub(term_at))
        ),
    );
    report.figure(
        "new-connection probes before / after SIGTERM",
        format!("{} / {}", before_term.len(), after_term.len()),
    );
    report.figure(
        "probes served after SIGTERM (before the listener closed)",
        accepted_after,
    );
    report.figure(
        "first refused connection after SIGTERM",
        first_refused.map_or_else(
            || "none".to_owned(),
            |t| format!("{} ms", t.saturating_sub(term_at).as_millis()),
        ),
    );
    report.figure(
        "probes that were neither served nor refused",
        format!("{broken:?}"),
    );
    let failed: Vec<String> = results
        .iter()
        .filter(|(o, _)| !matches!(o, Ok((200, body)) if body == "slow/done\n"))
        .map(|(o, t)| format!("t={}: {o:?}", secs(*t)))
        .collect();
    report.check(failed.is_empty(), || {
        format!(
            "in-flight requests did not complete:\n{}",
            failed.join("\n")
        )
    });
    report.check(before == Probe::Status(200), || {
        format!("a new connection before SIGTERM got {before:?}")
    });
    report.check(
        before_term.iter().all(|(_, p)| *p == Probe::Status(200)),
        || format!("new connections failed before SIGTERM: {before_term:?}"),
    );
    report.check(status.success(), || {
        format!("the gateway exited with {status}")
    });
    report.check(exited_at >= last_done, || {
        format!(
            "the gateway exited at t={} before its last in-flight response at t={}",
            secs(exited_at),
            secs(last_done)
        )
    });
    report.check(first_refused.is_some_and(|r| r < last_done), || {
        format!(
            "new connections were not refused during the drain (first refusal {:?}, last in-flight response t={})",
            first_refused.map(secs),
            secs(last_done)
        )
    });
    report.check(!accepted_after_refusal, || {
        "a connection was served after one had been refused".to_owned()
    });
    report.check(broken.is_empty(), || {
        format!("connections reset or left unanswered: {broken:?}")
    });
    report.recovery("drain (SIGTERM to exit)", exited_at.saturating_sub(term_at));
    report.finish().unwrap();
}

// ---------------------------------------------------------------------------------------
// 10. gateway restarted while the agent is down
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn s10_gateway_restarted_while_the_agent_is_down() {
    let down_for = pick(Duration::from_secs(4), Duration::from_secs(20));
    let mut report = FaultReport::new(
        "10-gateway-restart-agent-down",
        "gateway restarted while the agent is down: fails closed (503), serves once the agent is back",
    );
    let mut stack = Stack::start(StackOptions::default()).await.unwrap();
    stack.agent.kill9().await.unwrap();
    let old_exit = stack.gateway.sigterm().await.unwrap();
    let hits_before = stack.upstream.hits();

    // A new gateway process with the same configuration (on new ports).
    let mut gateway = GatewayProcess::start(&stack.gateway_config())
        .await
        .unwrap();
    eventually(Duration::from_secs(20), || async {
        let (status, _) = gateway.status_get("/healthz").await?;
        anyhow::ensure!(status == 200, "/healthz {status}");
        Ok(())
    })
    .await
    .unwrap();
    let load = Load::start(
        load_config(gateway.url("/secure/ping")),
        stack.credentials(),
    )
    .unwrap();
    load.mark("new gateway up, agent down");
    let mut ready_while_down = Vec::new();
    let mut unauthenticated = Vec::new();
    let started = Instant::now();
    while started.elapsed() < down_for {
        match gateway.status_get("/readyz").await {
            Ok((503, _)) => {}
            other => ready_while_down.push(format!("{other:?}")),
        }
        match gateway.get("/secure/ping", &[]).await {
            Ok((401, _)) => {}
            other => unauthenticated.push(format!("no token: {other:?}")),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let hits_while_down = stack.upstream.hits() - hits_before;

    stack.agent.start_again().unwrap();
    let agent_started = load.mark("agent started");
    let ready = wait_agent_ready(&mut stack.agent, Duration::from_secs(30)).await;
    let agent_ready = agent_started + ready.as_ref().copied().unwrap_or_default();
    load.mark("agent ready");
    let gateway_ready = gateway.wait_ready(Duration::from_secs(10)).await;
    load.mark("gateway ready");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let result = load.stop().await;

    let first_ok = result
        .records
        .iter()
        .filter(|r| r.ok())
        .map(|r| r.done)
        .min();
    let while_down: Vec<_> = result
        .records
        .iter()
        .filter(|r| r.done <= agent_started)
        .collect();
    let down_not_503: Vec<String> = while_down
        .iter()
        .filter(|r| {
            !(r.status == Some(503)
                && r.body.as_deref() == Some(r#"{"message":"failed to verify jwt"}"#))
        })
        .map(|r| r.describe())
        .collect();
    let after_first_ok: Vec<String> = result
        .records
        .iter()
        .filter(|r| first_ok.is_some_and(|f| r.sent >= f) && !r.ok())
        .map(|r| r.describe())
        .collect();

    report.load(
        "load on the new gateway (503 expected while the agent is down)",
        &result,
    );
    report.figure("old gateway exit", old_exit);
    report.figure("agent down, new gateway running, for", secs(down_for));
    report.figure(
        "requests while the agent was down",
        format!(
            "{} ({} not 503 failed-to-verify)",
            while_down.len(),
            down_not_503.len()
        ),
    );
    report.figure("upstream hits while the agent was down", hits_while_down);
    report.figure(
        "readyz answers other than 503 while the agent was down",
        format!("{ready_while_down:?}"),
    );
    report.check(!while_down.is_empty(), || {
        "no request was made while the agent was down".to_owned()
    });
    report.check(down_not_503.is_empty(), || {
        format!(
            "while the agent was down the gateway answered other than 503:\n{}",
            down_not_503.join("\n")
        )
    });
    report.check(hits_while_down == 0, || {
        format!("{hits_while_down} requests reached the upstream while no key was loaded")
    });
    report.check(ready_while_down.is_empty(), || {
        format!("/readyz while the agent was down: {ready_while_down:?}")
    });
    report.check(unauthenticated.is_empty(), || {
        format!("requests without a token: {unauthenticated:?}")
    });
    report.check_result("agent ready", ready);
    report.check_result("gateway ready after the agent", gateway_ready);
    match first_ok {
        Some(t) => {
            let after = t.saturating_sub(agent_ready);
            report.recovery("first 200 after the agent was ready", after);
            report.check(
                after <= GATEWAY_BACKOFF_MAX + Duration::from_millis(500),
                || {
                    format!(
                        "the first 200 came {} after the agent was ready (backoff max {})",
                        secs(after),
                        secs(GATEWAY_BACKOFF_MAX)
                    )
                },
            );
        }
        None => report.check(false, || {
            "the new gateway never served a request".to_owned()
        }),
    }
    report.check(after_first_ok.is_empty(), || {
        format!(
            "requests failed after the first success:\n{}",
            after_first_ok.join("\n")
        )
    });
    report.finish().unwrap();
}

// ---------------------------------------------------------------------------------------
// 11. a stuck agent (SIGSTOP)
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn s11_stuck_agent_sigstop() {
    let stopped_for = pick(Duration::from_secs(6), Duration::from_secs(30));
    let mut report = FaultReport::new(
        "11-agent-sigstop",
        "the agent frozen (SIGSTOP) under load, then SIGCONT",
    );
    let mut stack = Stack::start(StackOptions::default()).await.unwrap();
    let load = start_load(&stack).unwrap();
    tokio::time::sleep(WARMUP).await;
    let disconnects_before =
        gateway_metric(&stack.gateway, "keygate_gateway_agent_disconnects_total")
            .await
            .unwrap();

    stack.agent.sigstop().await.unwrap();
    load.mark("agent stopped (SIGSTOP)");
    let stopped = Instant::now();
    // Rotate the probe while the agent is frozen: it must arrive after SIGCONT.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let probe_secret = stack.rotate_probe().await.unwrap();
    let mut not_ready = 0;
    let mut samples = 0;
    while stopped.elapsed() < stopped_for {
        samples += 1;
        if !matches!(stack.gateway.status_get("/readyz").await, Ok((200, _))) {
            not_ready += 1;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let disconnects_during =
        gateway_metric(&stack.gateway, "keygate_gateway_agent_disconnects_total")
            .await
            .unwrap()
            - disconnects_before;
    stack.agent.sigcont().unwrap();
    load.mark("agent continued (SIGCONT)");
    let pickup = wait_accepted(&stack.gateway, PROBE_KEY, &probe_secret, REFRESH + MARGIN).await;
    load.mark("probe's new secret accepted");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let result = load.stop().await;

    report.load("load", &result);
    report.figure("agent stopped for", secs(stopped_for));
    report.figure(
        "gateway Watch streams ended while the agent was stopped",
        disconnects_during,
    );
    report.figure(
        "gateway /readyz not 200 while the agent was stopped",
        format!("{not_ready} of {samples}"),
    );
    report.check(not_ready == 0, || {
        format!("the gateway was not ready in {not_ready} of {samples} samples")
    });
    if let Some(d) = report.check_result("probe rotated while the agent was stopped", pickup) {
        report.recovery("probe's new secret accepted after SIGCONT", d);
    }
    check_zero_failures(&mut report, &result);
    report.finish().unwrap();
}

// ---------------------------------------------------------------------------------------
// 12. the agent frozen past its token's max TTL (a suspended VM, a stopped container)
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn s12_agent_frozen_past_its_token_max_ttl() {
    let (ttl, max_ttl) = (Duration::from_secs(4), Duration::from_secs(8));
    let frozen_for = pick(Duration::from_secs(10), Duration::from_secs(30));
    let mut report = FaultReport::new(
        "12-agent-frozen-past-ttl",
        "the agent frozen (SIGSTOP) longer than its AppRole token's max TTL, then SIGCONT",
    );
    let mut stack = Stack::start(StackOptions {
        auth: StackAuth::AppRole {
            ttl: format!("{}s", ttl.as_secs()),
            max_ttl: format!("{}s", max_ttl.as_secs()),
        },
        ..StackOptions::default()
    })
    .await
    .unwrap();
    stack.bao.enable_audit_file().await.unwrap();
    let load = start_load(&stack).unwrap();
    tokio::time::sleep(WARMUP).await;

    stack.agent.sigstop().await.unwrap();
    let stopped = Instant::now();
    load.mark("agent stopped (SIGSTOP)");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let probe_secret = stack.rotate_probe().await.unwrap();
    tokio::time::sleep(frozen_for.saturating_sub(stopped.elapsed())).await;
    let logins_before = stack.bao.audit_mark().unwrap();
    stack.agent.sigcont().unwrap();
    let continued = Instant::now();
    load.mark("agent continued (SIGCONT)");
    let pickup = wait_accepted(
        &stack.gateway,
        PROBE_KEY,
        &probe_secret,
        REFRESH + MARGIN + MARGIN,
    )
    .await;
    load.mark("probe's new secret accepted");
    let fresh = eventually(Duration::from_secs(10), || async {
        let stale = stack.agent.metric("keygate_agent_secrets_stale").await?;
        anyhow::ensure!(stale == 0.0, "the agent has {stale} stale secrets");
        let auth = stack.agent.metric("keygate_agent_authenticated").await?;
        anyhow::ensure!(auth == 1.0, "the agent is not authenticated");
        Ok(continued.elapsed())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let result = load.stop().await;
    let audit = stack.bao.audit_requests_since(logins_before).unwrap();
    let logins = audit
        .iter()
        .filter(|r| !r.by_root() && r.is_login() && r.error.is_none())
        .map(|r| r.time.clone())
        .collect::<Vec<_>>();
    let denials = agent_denials(&audit);

    report.load("load", &result);
    report.figure(
        "agent frozen for",
        format!(
            "{} (token TTL {}s, max TTL {}s)",
            secs(frozen_for),
            ttl.as_secs(),
            max_ttl.as_secs()
        ),
    );
    report.figure(
        "agent logins after SIGCONT (audit log)",
        format!("{logins:?}"),
    );
    report.figure(
        "agent requests refused after SIGCONT",
        format!("{} {denials:?}", denials.len()),
    );
    if let Some(d) = report.check_result("probe rotated while the agent was frozen", pickup) {
        report.recovery("probe's new secret accepted after SIGCONT", d);
    }
    if let Some(d) = report.check_result("agent fresh and authenticated after SIGCONT", fresh) {
        report.figure("agent fresh and authenticated after SIGCONT in", secs(d));
    }
    report.check(!logins.is_empty(), || {
        "the agent did not log in again after its token expired".to_owned()
    });
    check_zero_failures(&mut report, &result);
    report.finish().unwrap();
}
