//! Who may ask the agent for what: peers by uid or gid (SO_PEERCRED), the required
//! request header, each peer's allowed paths, and name validation.

use std::time::Duration;

use keygate_proto::REQUEST_HEADER;
use keygate_proto::agent::v1::secret_agent_client::SecretAgentClient;
use keygate_proto::agent::v1::{GetRequest, WatchRequest};
use keygate_tests::client::{get, get_error, watch};
use keygate_tests::secrets::expect_loaded;
use keygate_tests::seed::{AGENT_POLICY, JACK, JILL, KV1_PREFIX};
use keygate_tests::{AgentConfig, AgentProcess, OpenBao, Peer, eventually, seed_apisix};
use tonic::Code;

/// Names that break the contract's grammar but start with an allowed prefix, so that
/// only validation can refuse them.
const MALFORMED_UNDER_JACK: [&str; 7] = [
    "consumer/jack/../x",
    "consumer/jack/./x",
    "consumer/jack//x",
    "consumer/jack/",
    "consumer/jack/a b",
    "consumer/jack/a\\b",
    "consumer/jack/\u{e9}",
];

#[tokio::test(flavor = "multi_thread")]
async fn peers_headers_paths_and_names_are_enforced() {
    let bao = OpenBao::start().await.unwrap();
    let seeded = seed_apisix(&bao).await.unwrap();
    let token = bao.create_token(&[AGENT_POLICY], Some("1h")).await.unwrap();
    let uid = nix::unistd::getuid().as_raw();
    let gid = nix::unistd::getgid().as_raw();
    assert_ne!(uid, 65534, "the tests must not run as nobody");
    let base = || {
        AgentConfig::new(&bao.addr(), KV1_PREFIX)
            .token(&token)
            .refresh_interval("2s")
    };
    let (stranger, jack_only, default_peers, by_gid) = tokio::join!(
        // Only uid 65534 may connect: we are not it.
        AgentProcess::start_ready(base().peers(vec![Peer::uid("nobody", 65534, &["consumer/*"])])),
        // We may connect, for jack's secrets only.
        AgentProcess::start_ready(base().peers(vec![Peer::uid(
            "tests",
            uid,
            &["consumer/jack/*"]
        )])),
        // No peers section: the agent's own uid (ours), all names.
        AgentProcess::start_ready(base()),
        // Matched by gid although the uid is not listed.
        AgentProcess::start_ready(base().peers(vec![Peer {
            name: "group".to_owned(),
            uids: vec![65534],
            gids: vec![gid],
            paths: vec!["consumer/*".to_owned()],
            write_paths: Vec::new(),
        }])),
    );
    let (stranger, jack_only, default_peers, by_gid) = (
        stranger.unwrap(),
        jack_only.unwrap(),
        default_peers.unwrap(),
        by_gid.unwrap(),
    );

    // ---- A peer that is not allowed: PERMISSION_DENIED on every call. ----
    let mut c = stranger.client().await.unwrap();
    assert_eq!(
        get_error(&mut c, &[JACK]).await.unwrap(),
        Code::PermissionDenied,
        "Get by a peer not listed"
    );
    let watched = watch(&mut c, &[JACK], Duration::from_secs(10))
        .await
        .unwrap();
    let code = match watched {
        Err(status) => status.code(),
        Ok(mut stream) => match stream.message().await {
            Err(status) => status.code(),
            Ok(msg) => panic!(
                "Watch by a peer not listed was answered: {:?}",
                msg.map(|m| m.version)
            ),
        },
    };
    assert_eq!(code, Code::PermissionDenied, "Watch by a peer not listed");
    eventually(Duration::from_secs(5), || async {
        let denied = stranger.metric("keygate_agent_denied_peers_total").await?;
        anyhow::ensure!(denied >= 1.0, "keygate_agent_denied_peers_total = {denied}");
        Ok(())
    })
    .await
    .unwrap();

    // ---- A peer allowed for consumer/jack/* only. ----
    let mut c = jack_only.client().await.unwrap();
    let resp = get(&mut c, &[JACK]).await.unwrap();
    expect_loaded(&resp.secrets, JACK, &seeded.jack_v1).unwrap();
    assert_eq!(
        get_error(&mut c, &[JILL]).await.unwrap(),
        Code::PermissionDenied,
        "a name outside the peer's paths"
    );
    assert_eq!(
        get_error(&mut c, &[JACK, JILL]).await.unwrap(),
        Code::PermissionDenied,
        "one name outside the peer's paths refuses the whole request"
    );
    let watched = watch(&mut c, &[JILL], Duration::from_secs(10))
        .await
        .unwrap();
    let code = match watched {
        Err(status) => status.code(),
        Ok(mut stream) => match stream.message().await {
            Err(status) => status.code(),
            Ok(msg) => panic!(
                "Watch of a name outside the peer's paths was answered: {:?}",
                msg.map(|m| m.version)
            ),
        },
    };
    assert_eq!(
        code,
        Code::PermissionDenied,
        "Watch of a name outside the peer's paths"
    );
    for name in MALFORMED_UNDER_JACK {
        assert_eq!(
            get_error(&mut c, &[name]).await.unwrap(),
            Code::InvalidArgument,
            "malformed name {name:?}"
        );
    }
    assert_eq!(
        get_error(&mut c, &[]).await.unwrap(),
        Code::InvalidArgument,
        "an empty names list"
    );
    eventually(Duration::from_secs(5), || async {
        let denied = jack_only
            .metric("keygate_agent_denied_requests_total")
            .await?;
        anyhow::ensure!(
            denied >= 1.0,
            "keygate_agent_denied_requests_total = {denied}"
        );
        Ok(())
    })
    .await
    .unwrap();

    // The request header: missing or wrong is INVALID_ARGUMENT.
    let channel = jack_only.channel().await.unwrap();
    let mut raw = SecretAgentClient::new(channel.clone());
    let status = raw
        .get(GetRequest {
            names: vec![JACK.to_owned()],
        })
        .await
        .expect_err("Get without the request header must fail");
    assert_eq!(
        status.code(),
        Code::InvalidArgument,
        "Get without {REQUEST_HEADER}: {status}"
    );
    let status = match raw
        .watch(WatchRequest {
            names: vec![JACK.to_owned()],
        })
        .await
    {
        Err(status) => status,
        Ok(resp) => resp
            .into_inner()
            .message()
            .await
            .expect_err("Watch without the request header must fail"),
    };
    assert_eq!(
        status.code(),
        Code::InvalidArgument,
        "Watch without {REQUEST_HEADER}: {status}"
    );
    let mut wrong = SecretAgentClient::with_interceptor(channel, |mut req: tonic::Request<()>| {
        req.metadata_mut().insert(
            REQUEST_HEADER,
            tonic::metadata::MetadataValue::from_static("false"),
        );
        Ok(req)
    });
    let status = wrong
        .get(GetRequest {
            names: vec![JACK.to_owned()],
        })
        .await
        .expect_err("Get with a wrong request header must fail");
    assert_eq!(
        status.code(),
        Code::InvalidArgument,
        "{REQUEST_HEADER}: false: {status}"
    );

    // ---- No peers section: our own uid, every name; malformed names still refused. ----
    let mut c = default_peers.client().await.unwrap();
    let resp = get(&mut c, &[JACK, JILL]).await.unwrap();
    expect_loaded(&resp.secrets, JACK, &seeded.jack_v1).unwrap();
    expect_loaded(&resp.secrets, JILL, &seeded.jill_v1).unwrap();
    let too_long = format!("consumer/{}", "a".repeat(510));
    for name in [
        "../x",
        "",
        "/consumer/jack/jwt-auth",
        "consumer/jack/jwt-auth/",
        "..",
        too_long.as_str(),
    ] {
        assert_eq!(
            get_error(&mut c, &[name]).await.unwrap(),
            Code::InvalidArgument,
            "malformed name {:?}",
            name.get(..40).unwrap_or(name)
        );
    }
    let mut raw = SecretAgentClient::new(default_peers.channel().await.unwrap());
    let status = raw
        .get(GetRequest {
            names: vec![JACK.to_owned()],
        })
        .await
        .expect_err("Get without the request header must fail");
    assert_eq!(
        status.code(),
        Code::InvalidArgument,
        "Get without {REQUEST_HEADER}: {status}"
    );

    // ---- Allowed by gid. ----
    let mut c = by_gid.client().await.unwrap();
    let resp = get(&mut c, &[JACK]).await.unwrap();
    expect_loaded(&resp.secrets, JACK, &seeded.jack_v1).unwrap();

    let mut secrets = seeded.all();
    secrets.push(&token);
    for agent in [&stranger, &jack_only, &default_peers, &by_gid] {
        agent.assert_no_secret_in_log(&secrets);
    }
}
