//! The agent's life: readiness after preload, health (HTTP and gRPC), metrics, states
//! NOT_FOUND and DENIED, pause and resume, kill -9 and restart with a stale socket,
//! graceful SIGTERM, and the command line's exit codes.

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use keygate_proto::REQUEST_HEADER;
use keygate_proto::agent::v1::SecretState;
use keygate_tests::agent::run_agent_cli;
use keygate_tests::client::{get, get_within, watch};
use keygate_tests::secrets::{expect_loaded, expect_state};
use keygate_tests::seed::{AGENT_POLICY, JACK, JILL, KV1_PREFIX, MISSING, PRIVATE};
use keygate_tests::{
    AgentConfig, AgentProcess, OpenBao, eventually, seed_apisix, write_private_file,
};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// Exit codes of the command line (CONTRACT-agent.md).
const EXIT_CONFIG: i32 = 64;
const EXIT_UNAVAILABLE: i32 = 69;

async fn health(agent: &AgentProcess, service: &str) -> anyhow::Result<ServingStatus> {
    let channel = agent.channel().await?;
    let mut client = HealthClient::with_interceptor(channel, |mut req: tonic::Request<()>| {
        req.metadata_mut().insert(
            REQUEST_HEADER,
            tonic::metadata::MetadataValue::from_static("true"),
        );
        Ok(req)
    });
    let resp = client
        .check(HealthCheckRequest {
            service: service.to_owned(),
        })
        .await
        .map_err(|status| anyhow::anyhow!("grpc.health.v1 Check({service:?}) failed: {status}"))?;
    Ok(resp.into_inner().status())
}

#[tokio::test(flavor = "multi_thread")]
async fn lifecycle_health_metrics_signals_and_restart() {
    let bao = OpenBao::start().await.unwrap();
    let seeded = seed_apisix(&bao).await.unwrap();
    let token = bao.create_token(&[AGENT_POLICY], Some("1h")).await.unwrap();
    let mut agent = AgentProcess::start(
        AgentConfig::new(&bao.addr(), KV1_PREFIX)
            .token(&token)
            .refresh_interval("2s")
            .preload(&[JACK]),
    )
    .await
    .unwrap();
    agent.wait_ready(Duration::from_secs(30)).await.unwrap();

    // The socket (default mode 0660) in a directory the agent created (0750).
    let socket_mode = std::fs::metadata(agent.socket_path())
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(socket_mode, 0o660, "socket mode {socket_mode:o}");
    let dir = agent.socket_path().parent().unwrap();
    let dir_mode = std::fs::metadata(dir).unwrap().permissions().mode() & 0o777;
    assert_eq!(dir_mode, 0o750, "socket directory mode {dir_mode:o}");

    // Ready means authenticated and preloaded.
    let (status, _) = agent.ops_get("/healthz").await.unwrap();
    assert_eq!(status, 200, "/healthz");
    let metrics = agent.metrics().await.unwrap();
    let m = |name: &str| keygate_tests::agent::metric_value(&metrics, name).unwrap();
    assert_eq!(m("keygate_agent_ready"), 1.0);
    assert_eq!(m("keygate_agent_authenticated"), 1.0);
    assert!(
        m("keygate_agent_secrets_loaded") >= 1.0,
        "the preloaded secret counts as loaded"
    );
    assert!(m("keygate_agent_vault_requests_total") >= 1.0);
    assert!(m("keygate_agent_token_ttl_seconds") > 0.0);
    for name in [
        "keygate_agent_auth_logins_total",
        "keygate_agent_auth_login_failures_total",
        "keygate_agent_token_renewals_total",
        "keygate_agent_token_renewal_failures_total",
        "keygate_agent_vault_errors_total",
        "keygate_agent_secrets_stale",
        "keygate_agent_secret_changes_total",
        "keygate_agent_watchers",
        "keygate_agent_denied_peers_total",
        "keygate_agent_denied_requests_total",
    ] {
        m(name);
    }
    assert_eq!(health(&agent, "").await.unwrap(), ServingStatus::Serving);
    assert_eq!(
        health(&agent, "keygate.agent.v1.SecretAgent")
            .await
            .unwrap(),
        ServingStatus::Serving
    );

    // LOADED, NOT_FOUND and DENIED.
    let mut client = agent.client().await.unwrap();
    let resp = get(&mut client, &[JACK, MISSING, PRIVATE]).await.unwrap();
    expect_loaded(&resp.secrets, JACK, &seeded.jack_v1).unwrap();
    expect_state(&resp.secrets, MISSING, SecretState::NotFound).unwrap();
    expect_state(&resp.secrets, PRIVATE, SecretState::Denied).unwrap();
    let boot_id = resp.boot_id.clone();

    // Watchers are counted.
    let stream = watch(&mut client, &[JACK, JILL], Duration::from_secs(15))
        .await
        .unwrap()
        .unwrap();
    eventually(Duration::from_secs(5), || async {
        let n = agent.metric("keygate_agent_watchers").await?;
        anyhow::ensure!(n == 1.0, "keygate_agent_watchers = {n}");
        Ok(())
    })
    .await
    .unwrap();
    drop(stream);
    eventually(Duration::from_secs(5), || async {
        let n = agent.metric("keygate_agent_watchers").await?;
        anyhow::ensure!(
            n == 0.0,
            "keygate_agent_watchers = {n} after the watcher left"
        );
        Ok(())
    })
    .await
    .unwrap();

    // SIGSTOP: calls hang; SIGCONT: they work again.
    agent.sigstop().await.unwrap();
    let paused = get_within(&mut client, &[JACK], Duration::from_secs(1)).await;
    assert!(!matches!(paused, Ok(Ok(_))), "a stopped agent answered");
    agent.sigcont().unwrap();
    let resp = eventually(Duration::from_secs(10), || async {
        let mut c = agent.client().await?;
        get(&mut c, &[JACK]).await
    })
    .await
    .unwrap();
    expect_loaded(&resp.secrets, JACK, &seeded.jack_v1).unwrap();
    assert_eq!(resp.boot_id, boot_id, "same process after SIGCONT");

    // kill -9 leaves the socket behind; a new agent removes it and serves.
    agent.kill9().await.unwrap();
    agent.start_again().unwrap();
    agent.wait_ready(Duration::from_secs(30)).await.unwrap();
    let mut client = agent.client().await.unwrap();
    let resp = get(&mut client, &[JACK]).await.unwrap();
    expect_loaded(&resp.secrets, JACK, &seeded.jack_v1).unwrap();
    assert_ne!(resp.boot_id, boot_id, "a restarted agent has a new boot id");

    // SIGTERM: a clean exit, and the socket is gone.
    let status = agent.sigterm().await.unwrap();
    assert!(status.success(), "keygate-agent exited {status} on SIGTERM");
    assert!(
        !agent.socket_path().exists(),
        "the socket {} is still there after a graceful stop",
        agent.socket_path().display()
    );

    let mut secrets = seeded.all();
    secrets.push(&token);
    agent.assert_no_secret_in_log(&secrets);
}

/// `revoke_on_shutdown: true`: a graceful stop revokes the AppRole token it logged in
/// with (seen in OpenBao's audit log and by looking the token's accessor up).
#[tokio::test(flavor = "multi_thread")]
async fn revoke_on_shutdown_revokes_the_token() {
    let mut bao = OpenBao::start().await.unwrap();
    let seeded = seed_apisix(&bao).await.unwrap();
    bao.enable_approle().await.unwrap();
    let role = bao
        .approle_role(
            "keygate",
            serde_json::json!({ "token_policies": [AGENT_POLICY], "token_ttl": "1h" }),
        )
        .await
        .unwrap();
    let creds = tempfile::tempdir().unwrap();
    let role_id_file = creds.path().join("role-id");
    let secret_id_file = creds.path().join("secret-id");
    write_private_file(&role_id_file, &role.role_id).unwrap();
    write_private_file(&secret_id_file, &role.secret_id).unwrap();
    let mut agent = AgentProcess::start_ready(
        AgentConfig::new(&bao.addr(), KV1_PREFIX)
            .approle(&role_id_file, &secret_id_file)
            .revoke_on_shutdown(true)
            .preload(&[JACK]),
    )
    .await
    .unwrap();
    let accessors = bao.read("auth/token/accessors?list=true").await.unwrap();
    let before = accessors
        .as_ref()
        .and_then(|a| a.pointer("/data/keys"))
        .and_then(serde_json::Value::as_array)
        .map_or(0, Vec::len);

    bao.enable_audit_file().await.unwrap();
    let status = agent.sigterm().await.unwrap();
    assert!(status.success(), "keygate-agent exited {status} on SIGTERM");
    let revokes = bao
        .count_audit_requests_to(|path| path.starts_with("auth/token/revoke"))
        .unwrap();
    assert!(
        revokes >= 1,
        "no token revocation reached OpenBao on shutdown"
    );
    let accessors = bao.read("auth/token/accessors?list=true").await.unwrap();
    let after = accessors
        .as_ref()
        .and_then(|a| a.pointer("/data/keys"))
        .and_then(serde_json::Value::as_array)
        .map_or(0, Vec::len);
    assert_eq!(
        after + 1,
        before,
        "the agent's token is gone ({before} tokens before, {after} after)"
    );

    let mut secrets = seeded.all();
    secrets.push(&role.secret_id);
    agent.assert_no_secret_in_log(&secrets);
}

#[tokio::test(flavor = "multi_thread")]
async fn command_line_exit_codes() {
    let dir = tempfile::tempdir().unwrap();

    // A valid config checks out.
    let good = dir.path().join("good.yaml");
    let config = AgentConfig::new("http://127.0.0.1:1", KV1_PREFIX).token("s.not-a-real-token");
    std::fs::write(
        &good,
        config
            .to_yaml(&dir.path().join("run/agent.sock"), "127.0.0.1:0")
            .unwrap(),
    )
    .unwrap();
    let out = run_agent_cli(&["check-config", "--config", good.to_str().unwrap()])
        .await
        .unwrap();
    assert_eq!(
        out.code,
        Some(0),
        "check-config of a valid file: {}",
        out.stderr
    );

    // Broken files are refused with 64.
    let no_auth = AgentConfig::new("http://127.0.0.1:1", KV1_PREFIX)
        .to_yaml(&dir.path().join("run/agent.sock"), "127.0.0.1:0")
        .unwrap();
    for (name, text) in [
        ("not-yaml.yaml", "vault: [unclosed\n".to_owned()),
        ("no-auth.yaml", no_auth),
    ] {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        let out = run_agent_cli(&["check-config", "--config", path.to_str().unwrap()])
            .await
            .unwrap();
        assert_eq!(
            out.code,
            Some(EXIT_CONFIG),
            "check-config of {name}: {}",
            out.stderr
        );
    }
    let out = run_agent_cli(&[
        "check-config",
        "--config",
        dir.path().join("absent.yaml").to_str().unwrap(),
    ])
    .await
    .unwrap();
    assert_eq!(
        out.code,
        Some(EXIT_CONFIG),
        "check-config of a missing file: {}",
        out.stderr
    );

    // get against a socket nobody listens on: unavailable.
    let socket = dir.path().join("nobody.sock");
    let out = run_agent_cli(&["get", "--socket", socket.to_str().unwrap(), JACK])
        .await
        .unwrap();
    assert_eq!(
        out.code,
        Some(EXIT_UNAVAILABLE),
        "get without an agent: {}",
        out.stderr
    );

    // A bad command line is a usage error (64, as the gateway's), with clap's message;
    // --help is not an error.
    let out = run_agent_cli(&["--no-such-flag"]).await.unwrap();
    assert_eq!(out.code, Some(EXIT_CONFIG), "a bad flag: {}", out.stderr);
    assert!(out.stderr.contains("--no-such-flag"), "{}", out.stderr);
    let out = run_agent_cli(&["--help"]).await.unwrap();
    assert_eq!(out.code, Some(0), "--help: {}", out.stderr);
}
