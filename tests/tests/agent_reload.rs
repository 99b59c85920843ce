//! SIGHUP reloads the agent's peer policies from its config file without a restart; a
//! broken file is refused and the running configuration stays.

use std::time::Duration;

use keygate_tests::client::{get, get_error};
use keygate_tests::secrets::expect_loaded;
use keygate_tests::seed::{AGENT_POLICY, JACK, JILL, KV1_PREFIX};
use keygate_tests::{AgentConfig, AgentProcess, OpenBao, Peer, eventually, seed_apisix};
use tonic::Code;

#[tokio::test(flavor = "multi_thread")]
async fn sighup_reloads_peer_policy_and_keeps_running_config_on_error() {
    let bao = OpenBao::start().await.unwrap();
    let seeded = seed_apisix(&bao).await.unwrap();
    let token = bao.create_token(&[AGENT_POLICY], Some("1h")).await.unwrap();
    let uid = nix::unistd::getuid().as_raw();
    let config = |paths: &[&str]| {
        AgentConfig::new(&bao.addr(), KV1_PREFIX)
            .token(&token)
            .refresh_interval("2s")
            .peers(vec![Peer::uid("tests", uid, paths)])
    };
    let agent = AgentProcess::start_ready(config(&["consumer/jack/*"]))
        .await
        .unwrap();
    let boot_id = {
        let mut client = agent.client().await.unwrap();
        assert_eq!(
            get_error(&mut client, &[JILL]).await.unwrap(),
            Code::PermissionDenied
        );
        get(&mut client, &[JACK]).await.unwrap().boot_id
    };

    // Widen the policy in the file the agent was started with, then SIGHUP.
    let ops_listen = agent.ops_addr().trim_start_matches("http://").to_owned();
    let widened = config(&["consumer/*"])
        .to_yaml(agent.socket_path(), &ops_listen)
        .unwrap();
    std::fs::write(agent.config_path(), widened).unwrap();
    agent.sighup().unwrap();
    let resp = eventually(Duration::from_secs(10), || {
        let agent = &agent;
        async move {
            let mut client = agent.client().await?;
            get(&mut client, &[JILL]).await
        }
    })
    .await
    .expect("jill readable after the policy was widened and SIGHUP sent");
    expect_loaded(&resp.secrets, JILL, &seeded.jill_v1).unwrap();
    assert_eq!(resp.boot_id, boot_id, "reload must not restart the agent");

    // A broken file: the reload is refused, the widened policy keeps working.
    std::fs::write(agent.config_path(), "vault: [not, a, mapping]\n").unwrap();
    agent.sighup().unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut client = agent.client().await.unwrap();
    let resp = get(&mut client, &[JACK, JILL]).await.unwrap();
    expect_loaded(&resp.secrets, JACK, &seeded.jack_v1).unwrap();
    expect_loaded(&resp.secrets, JILL, &seeded.jill_v1).unwrap();
    assert!(
        agent.log_contents().contains("reload failed"),
        "a refused reload is logged"
    );

    agent.assert_no_secret_in_log(&[&seeded.jack_v1, &seeded.jill_v1, &token]);
}
