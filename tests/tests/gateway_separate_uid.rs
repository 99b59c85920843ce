//! The deployment's shape: the agent runs as root and holds the Vault token; the gateway
//! runs as another user (`nobody`), reaches the agent only through the socket (group
//! access plus the agent's peer policy), and never sees the token. Only meaningful as
//! root; elsewhere the test says so and passes.

use std::os::unix::fs::PermissionsExt;

use anyhow::{Context, Result, ensure};
use keygate_tests::gateway::{GatewayProcess, Upstream};
use keygate_tests::seed::{AGENT_POLICY, KV1_PREFIX};
use keygate_tests::{AgentConfig, AgentProcess, OpenBao, Peer, assert_no_secret_in, seed_apisix};

const NOBODY: u32 = 65534;

#[tokio::test(flavor = "multi_thread")]
async fn gateway_as_another_uid_gets_secrets_only_through_the_agent() -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: needs root to run the gateway as another user");
        return Ok(());
    }
    let bao = OpenBao::start().await?;
    let seeded = seed_apisix(&bao).await?;
    let token = bao.create_token(&[AGENT_POLICY], None).await?;
    let mut agent_config = AgentConfig::new(&bao.addr(), KV1_PREFIX)
        .token(&token)
        .refresh_interval("1s")
        .peers(vec![Peer::uid("gateway", NOBODY, &["consumer/*"])]);
    agent_config.socket_mode = Some("0660".into());
    agent_config.socket_group = Some(NOBODY.to_string());
    let agent = AgentProcess::start_ready(agent_config).await?;
    // The harness keeps each agent in a private temporary directory; let the gateway's
    // user traverse it (the agent itself guards run/ with 0750 and the socket group).
    std::fs::set_permissions(agent.dir(), std::fs::Permissions::from_mode(0o711))
        .context("opening the agent's directory for traversal")?;

    let upstream = Upstream::start().await?;
    let config = format!(
        r#"
agent: {{ socket: {socket:?} }}
plugin_attr: {{ jwt-auth: {{ sign_endpoint: true }} }}
routes:
  - uri: /secure/ping
    plugins: {{ jwt-auth: {{}} }}
    upstream: {{ nodes: {{ "{node}": 1 }} }}
consumers:
  - username: jack
    plugins: {{ jwt-auth: {{ key: test-key, vault: {{}} }} }}
"#,
        socket = agent.socket_path(),
        node = upstream.node(),
    );
    let mut gateway = GatewayProcess::start_as(&config, NOBODY, NOBODY).await?;
    gateway
        .wait_ready(std::time::Duration::from_secs(30))
        .await?;

    // It really runs as nobody.
    let pid = gateway.pid().context("gateway not running")?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let uid_line = status.lines().find(|l| l.starts_with("Uid:")).unwrap_or("");
    ensure!(
        uid_line.split_whitespace().nth(1) == Some(&NOBODY.to_string()),
        "gateway uid: {uid_line}"
    );

    let signed = gateway.sign("test-key").await?;
    let (status, body) = gateway
        .get("/secure/ping", &[("authorization", &signed)])
        .await?;
    ensure!(
        (status, body.as_str()) == (200, "secure/pong\n"),
        "{status} {body}"
    );

    // Neither the gateway's config nor its log holds the Vault token or the secret.
    let gateway_config = std::fs::read_to_string(gateway.config_path())?;
    ensure!(
        !gateway_config.contains(&token),
        "the gateway config holds the Vault token"
    );
    assert_no_secret_in(&gateway.log_contents(), &[&token, &seeded.jack_v1]);
    Ok(())
}
