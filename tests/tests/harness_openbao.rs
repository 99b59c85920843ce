//! Self-test of the harness against OpenBao alone: a real server starts, is initialised
//! and unsealed, keeps its data and tokens across a graceful restart and a kill -9, and
//! its audit log sees requests made with a non-root token.

use std::time::Duration;

use keygate_tests::openbao::{OpenBao, Stop};
use keygate_tests::seed::{self, AGENT_POLICY, JACK, KV1_PREFIX, KV2_MOUNT, seed_apisix};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread")]
async fn openbao_keeps_data_and_tokens_across_restarts() {
    let mut bao = OpenBao::start().await.unwrap();
    let seeded = seed_apisix(&bao).await.unwrap();

    // KV v1 and v2 read back.
    let v1 = bao
        .read(&format!("{KV1_PREFIX}/{JACK}"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        v1.pointer("/data/secret").and_then(Value::as_str),
        Some(seeded.jack_v1.as_str())
    );
    let v2 = bao
        .read(&format!("{KV2_MOUNT}/data/apisix/{JACK}"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        v2.pointer("/data/data/secret").and_then(Value::as_str),
        Some(seeded.jack_v2.as_str())
    );
    assert!(bao.read("kv/apisix/nothing/here").await.unwrap().is_none());

    // A token with the agent's policy can read its consumers, not the private secret, and
    // can look its mount up (what kv_version: auto needs).
    let token = bao.create_token(&[AGENT_POLICY], Some("1h")).await.unwrap();
    let (status, _) = bao
        .request_as(
            Some(&token),
            Method::GET,
            &format!("{KV1_PREFIX}/{JACK}"),
            None,
        )
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK);
    let (status, _) = bao
        .request_as(
            Some(&token),
            Method::GET,
            &format!("{KV1_PREFIX}/{}", seed::PRIVATE),
            None,
        )
        .await
        .unwrap();
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, body) = bao
        .request_as(
            Some(&token),
            Method::GET,
            &format!("sys/internal/ui/mounts/{KV2_MOUNT}/apisix/{JACK}"),
            None,
        )
        .await
        .unwrap();
    println!("sys/internal/ui/mounts with the agent's token: {status} {body:?}");
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body.unwrap()
            .pointer("/data/options/version")
            .and_then(Value::as_str),
        Some("2")
    );

    // The audit log records the non-root token's read, a failed login, and a request with
    // an invalid token.
    bao.enable_audit_file().await.unwrap();
    let mark = bao.audit_mark().unwrap();
    bao.enable_approle().await.unwrap();
    let creds = bao
        .approle_role(
            "agent",
            json!({ "token_policies": [AGENT_POLICY], "token_ttl": "1h" }),
        )
        .await
        .unwrap();
    let (status, _) = bao
        .request_as(
            None,
            Method::POST,
            "auth/approle/login",
            Some(&json!({ "role_id": creds.role_id, "secret_id": "wrong" })),
        )
        .await
        .unwrap();
    assert!(
        status.is_client_error(),
        "login with a wrong secret id: {status}"
    );
    let (status, login) = bao
        .request_as(
            None,
            Method::POST,
            "auth/approle/login",
            Some(&json!({ "role_id": creds.role_id, "secret_id": creds.secret_id })),
        )
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK);
    let approle_token = login
        .unwrap()
        .pointer("/auth/client_token")
        .and_then(Value::as_str)
        .unwrap()
        .to_owned();
    let (status, _) = bao
        .request_as(
            Some(&approle_token),
            Method::GET,
            &format!("{KV1_PREFIX}/{JACK}"),
            None,
        )
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK);
    bao.revoke_prefix("auth/approle/login").await.unwrap();
    let (status, _) = bao
        .request_as(
            Some(&approle_token),
            Method::GET,
            &format!("{KV1_PREFIX}/{JACK}"),
            None,
        )
        .await
        .unwrap();
    assert_eq!(
        status,
        StatusCode::FORBIDDEN,
        "a revoked token must be refused"
    );

    // The audit device writes asynchronously on some versions: wait for the entries.
    let entries = keygate_tests::eventually(Duration::from_secs(5), || async {
        let entries = bao.audit_requests_since(mark).unwrap();
        let logins = entries.iter().filter(|r| r.is_login()).count();
        anyhow::ensure!(logins >= 2, "{logins} logins audited so far");
        Ok(entries)
    })
    .await
    .unwrap();
    for e in &entries {
        println!(
            "audit: {} {} {} root={} display={:?} error={:?}",
            e.time,
            e.operation,
            e.path,
            e.by_root(),
            e.display_name,
            e.error
        );
    }
    let non_root_reads = entries
        .iter()
        .filter(|r| !r.by_root() && r.path == format!("{KV1_PREFIX}/{JACK}"))
        .count();
    assert_eq!(
        non_root_reads, 2,
        "the valid and the revoked token's reads are both audited"
    );
    assert!(entries.iter().all(|e| e.unix_time.is_finite()));
    assert_eq!(
        bao.count_audit_requests_to(|p| p == "auth/approle/login")
            .unwrap(),
        2
    );

    // Graceful restart: data, root token and the agent token survive.
    let pid_before = bao.pid();
    bao.restart().await.unwrap();
    assert_ne!(bao.pid(), pid_before);
    let v1 = bao
        .read(&format!("{KV1_PREFIX}/{JACK}"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        v1.pointer("/data/secret").and_then(Value::as_str),
        Some(seeded.jack_v1.as_str())
    );
    let (status, _) = bao
        .request_as(
            Some(&token),
            Method::GET,
            &format!("{KV1_PREFIX}/{JACK}"),
            None,
        )
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK, "a token must survive a restart");

    // kill -9: the same, and the server is really unreachable while stopped.
    bao.stop(Stop::Kill).await.unwrap();
    assert!(!bao.is_running());
    assert!(
        bao.read("sys/mounts").await.is_err(),
        "a stopped server must not answer"
    );
    bao.start_again().await.unwrap();
    let v2 = bao
        .read(&format!("{KV2_MOUNT}/data/apisix/{JACK}"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        v2.pointer("/data/data/secret").and_then(Value::as_str),
        Some(seeded.jack_v2.as_str())
    );

    // Pause and resume: a paused server does not answer within a short timeout.
    bao.pause().await.unwrap();
    let paused = tokio::time::timeout(Duration::from_millis(800), bao.read("sys/mounts")).await;
    assert!(paused.is_err(), "a paused server must not answer");
    bao.resume().unwrap();
    assert!(bao.read("sys/mounts").await.unwrap().is_some());

    println!("OpenBao log is {} bytes", bao.log_contents().len());
}
