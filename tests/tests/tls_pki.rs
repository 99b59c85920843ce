//! A certificate from OpenBao's PKI engine (enabled by the test), issued and re-issued
//! by the real agent at half its lifetime, served by the real gateway's HTTPS listener
//! while clients keep opening new TLS connections: every handshake succeeds, every
//! request is answered, and the served serial changes with each re-issue. Neither
//! process logs any line of any of the private keys.

mod tls_support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use keygate_proto::agent::v1::SecretState;
use keygate_tests::client::{next_snapshot, watch};
use keygate_tests::gateway::{GatewayProcess, Upstream};
use keygate_tests::seed::KV1_PREFIX;
use keygate_tests::{AgentConfig, AgentProcess, OpenBao, free_port};
use serde_json::json;
use tls_support::{client_config, enable_pki, https_get, key_lines, prepare_bao, remember_key};
use tokio::sync::Mutex;

const NAME: &str = "@pki/gateway";
/// Certificate lifetime; re-issued at half of it.
const TTL_SECONDS: u64 = 12;
/// How long clients hammer the listener.
const LOAD: Duration = Duration::from_secs(40);
const WORKERS: usize = 4;

#[tokio::test(flavor = "multi_thread")]
async fn pki_certificates_rotate_under_load_without_a_failed_handshake() -> Result<()> {
    let bao = OpenBao::start().await?;
    let token = prepare_bao(&bao).await?;
    let root = enable_pki(&bao).await?;
    let agent = AgentProcess::start_ready(
        AgentConfig::new(&bao.addr(), KV1_PREFIX)
            .token(&token)
            .certificate(json!({
                "name": "gateway",
                "role": "keygate",
                "common_name": "gw.example.test",
                "alt_names": ["api.example.test"],
                "ttl": format!("{TTL_SECONDS}s"),
                "renew_at": 0.5,
            })),
    )
    .await?;

    // Every private key the agent serves, collected from our own Watch stream, for the
    // log checks (and remembered for the harness's gateway log check).
    let keys: Arc<Mutex<Vec<String>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let collector = {
        let mut client = agent.client().await?;
        let mut stream = watch(&mut client, &[NAME], Duration::from_secs(10)).await??;
        let keys = keys.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let Ok(Some(snapshot)) = next_snapshot(&mut stream, Duration::from_secs(1)).await
                else {
                    continue;
                };
                for secret in snapshot.secrets {
                    if secret.state == SecretState::Loaded as i32
                        && let Some(key) = secret.fields.get("private_key")
                    {
                        let key = String::from_utf8_lossy(key).into_owned();
                        remember_key(&key);
                        let mut keys = keys.lock().await;
                        if !keys.contains(&key) {
                            keys.push(key);
                        }
                    }
                }
            }
        })
    };

    let upstream = Upstream::start().await?;
    let tls_port = free_port()?;
    let config = format!(
        r#"
agent: {{ socket: {socket:?} }}
tls: {{ listen: "127.0.0.1:{tls_port}" }}
ssls:
  - id: gateway
    snis: [gw.example.test, api.example.test]
    pki: gateway
routes:
  - uri: /secure/ping
    upstream: {{ nodes: {{ "{node}": 1 }} }}
"#,
        socket = agent.socket_path(),
        node = upstream.node(),
    );
    let gateway = GatewayProcess::start_ready(&config).await?;
    let tls = client_config(&root, &[b"h2", b"http/1.1"])?;

    // Clients: each request on a new connection (full handshake, no resumption).
    let handshakes = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(AtomicU64::new(0));
    let non_200 = Arc::new(AtomicU64::new(0));
    let serials: Arc<Mutex<BTreeMap<String, (f64, u64)>>> = Arc::default();
    let started = Instant::now();
    let mut workers = Vec::new();
    for w in 0..WORKERS {
        let (tls, handshakes, failures, non_200, serials) = (
            tls.clone(),
            handshakes.clone(),
            failures.clone(),
            non_200.clone(),
            serials.clone(),
        );
        let sni = if w % 2 == 0 {
            "gw.example.test"
        } else {
            "api.example.test"
        };
        workers.push(tokio::spawn(async move {
            let mut first_error = None;
            while started.elapsed() < LOAD {
                match https_get(tls_port, sni, "/secure/ping", &tls).await {
                    Ok((status, _, serial)) => {
                        handshakes.fetch_add(1, Ordering::Relaxed);
                        if status != 200 {
                            non_200.fetch_add(1, Ordering::Relaxed);
                        }
                        let at = started.elapsed().as_secs_f64();
                        serials.lock().await.entry(serial).or_insert((at, 0)).1 += 1;
                    }
                    Err(e) => {
                        failures.fetch_add(1, Ordering::Relaxed);
                        first_error.get_or_insert(format!("{e:#}"));
                    }
                }
            }
            first_error
        }));
    }
    let mut errors = Vec::new();
    for worker in workers {
        if let Some(e) = worker.await? {
            errors.push(e);
        }
    }
    stop.store(true, Ordering::Relaxed);
    let _ = collector.await;

    let handshakes = handshakes.load(Ordering::Relaxed);
    let failures = failures.load(Ordering::Relaxed);
    let non_200 = non_200.load(Ordering::Relaxed);
    let serials = serials.lock().await.clone();
    println!(
        "{WORKERS} clients for {:.0} s, a new TLS connection per request: {handshakes} handshakes, {failures} failed, {non_200} non-200 answers",
        LOAD.as_secs_f64()
    );
    let mut timeline: Vec<(&String, &(f64, u64))> = serials.iter().collect();
    timeline.sort_by(|a, b| a.1.0.total_cmp(&b.1.0));
    for (serial, (first_seen, count)) in timeline {
        println!("  serial {serial}: first served at {first_seen:.2} s, {count} handshakes");
    }
    ensure!(failures == 0, "failed handshakes: {errors:?}");
    ensure!(non_200 == 0, "{non_200} requests not answered 200");
    ensure!(handshakes > 100, "only {handshakes} handshakes");
    ensure!(
        serials.len() >= 4,
        "the served serial changed {} times in {LOAD:?} (ttl {TTL_SECONDS} s, renew_at 0.5)",
        serials.len().saturating_sub(1)
    );
    let metrics = gateway.metrics().await?;
    let server_failures = metrics
        .get("keygate_gateway_tls_handshake_failures_total")
        .copied()
        .unwrap_or(-1.0);
    ensure!(
        server_failures == 0.0,
        "the gateway counted {server_failures} failed handshakes"
    );

    let keys = keys.lock().await.clone();
    ensure!(
        keys.len() >= serials.len(),
        "{} keys seen for {} serials",
        keys.len(),
        serials.len()
    );
    let lines: Vec<String> = keys.iter().flat_map(|k| key_lines(k)).collect();
    let lines: Vec<&str> = lines.iter().map(String::as_str).collect();
    agent.assert_no_secret_in_log(&lines);
    keygate_tests::assert_no_secret_in(&gateway.log_contents(), &lines);
    println!(
        "{} private keys ({} PEM lines) absent from the agent's and the gateway's logs",
        keys.len(),
        lines.len()
    );
    Ok(())
}
