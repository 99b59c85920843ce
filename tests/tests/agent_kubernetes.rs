//! Kubernetes auth: the agent logs in to a real OpenBao with a service-account JWT read
//! from a file. OpenBao's kubernetes method checks the JWT with the cluster's
//! TokenReview API; this test stands up that one endpoint (the only fake here), which
//! approves exactly the JWT the test issued and refuses any other.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use keygate_tests::client::get;
use keygate_tests::secrets::expect_loaded;
use keygate_tests::seed::{AGENT_POLICY, JACK, KV1_PREFIX};
use keygate_tests::{AgentConfig, AgentProcess, OpenBao, seed_apisix, write_private_file};
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const NAMESPACE: &str = "keygate";
const ACCOUNT: &str = "keygate-agent";
const ACCOUNT_UID: &str = "6f1c1a2e-0000-4000-8000-000000000001";

fn service_account_jwt(key: &EncodingKey, account: &str) -> anyhow::Result<String> {
    let claims = json!({
        "iss": "kubernetes/serviceaccount",
        "sub": format!("system:serviceaccount:{NAMESPACE}:{account}"),
        "kubernetes.io/serviceaccount/namespace": NAMESPACE,
        "kubernetes.io/serviceaccount/service-account.name": account,
        "kubernetes.io/serviceaccount/service-account.uid": ACCOUNT_UID,
        "kubernetes.io/serviceaccount/secret.name": format!("{account}-token"),
    });
    Ok(jsonwebtoken::encode(
        &Header::new(Algorithm::ES256),
        &claims,
        key,
    )?)
}

/// `POST /apis/authentication.k8s.io/v1/tokenreviews`: approves `valid` only.
async fn token_review_api(valid: String, reviews: Arc<AtomicUsize>) -> anyhow::Result<String> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((mut conn, _)) = listener.accept().await else {
                return;
            };
            let valid = valid.clone();
            let reviews = reviews.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                let (head_end, length) = loop {
                    let n = conn.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                        let length = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .and_then(|v| v.trim().parse::<usize>().ok())
                            .unwrap_or(0);
                        break (end + 4, length);
                    }
                };
                while buf.len() < head_end + length {
                    let n = conn.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                }
                let review: Value =
                    serde_json::from_slice(&buf[head_end..head_end + length]).unwrap_or_default();
                reviews.fetch_add(1, Ordering::SeqCst);
                let approved = review["spec"]["token"].as_str() == Some(valid.as_str());
                let status = if approved {
                    json!({
                        "authenticated": true,
                        "user": {
                            "username": format!("system:serviceaccount:{NAMESPACE}:{ACCOUNT}"),
                            "uid": ACCOUNT_UID,
                            "groups": ["system:serviceaccounts", format!("system:serviceaccounts:{NAMESPACE}")],
                        },
                    })
                } else {
                    json!({ "authenticated": false, "error": "token not recognised" })
                };
                let body = json!({
                    "kind": "TokenReview",
                    "apiVersion": "authentication.k8s.io/v1",
                    "status": status,
                })
                .to_string();
                let response = format!(
                    "HTTP/1.1 201 Created\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = conn.write_all(response.as_bytes()).await;
            });
        }
    });
    Ok(format!("http://{addr}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn kubernetes_auth_logs_in_with_the_service_account_jwt() {
    let bao = OpenBao::start().await.unwrap();
    let seeded = seed_apisix(&bao).await.unwrap();

    let pkcs8 =
        EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new())
            .unwrap();
    let key = EncodingKey::from_ec_der(pkcs8.as_ref());
    let jwt = service_account_jwt(&key, ACCOUNT).unwrap();
    let reviews = Arc::new(AtomicUsize::new(0));
    let api = token_review_api(jwt.clone(), reviews.clone())
        .await
        .unwrap();

    bao.write("sys/auth/kubernetes", json!({ "type": "kubernetes" }))
        .await
        .unwrap();
    bao.write(
        "auth/kubernetes/config",
        json!({
            "kubernetes_host": api,
            // Only read for an https host; required once the pod's own CA file is off.
            "kubernetes_ca_cert": rcgen::generate_simple_self_signed(vec!["kubernetes".to_owned()]).unwrap().cert.pem(),
            "disable_local_ca_jwt": true,
        }),
    )
    .await
    .unwrap();
    bao.write(
        "auth/kubernetes/role/keygate",
        json!({
            "bound_service_account_names": [ACCOUNT],
            "bound_service_account_namespaces": [NAMESPACE],
            "token_policies": [AGENT_POLICY],
            "token_ttl": "1h",
        }),
    )
    .await
    .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let token_path = dir.path().join("token");
    write_private_file(&token_path, &jwt).unwrap();
    let agent = AgentProcess::start_ready(
        AgentConfig::new(&bao.addr(), KV1_PREFIX)
            .kubernetes("keygate", &token_path)
            .refresh_interval("2s"),
    )
    .await
    .unwrap();
    let mut client = agent.client().await.unwrap();
    let resp = get(&mut client, &[JACK]).await.unwrap();
    expect_loaded(&resp.secrets, JACK, &seeded.jack_v1).unwrap();
    assert!(
        reviews.load(Ordering::SeqCst) >= 1,
        "OpenBao asked the TokenReview API"
    );
    assert_eq!(
        agent
            .metric("keygate_agent_auth_logins_total")
            .await
            .unwrap(),
        1.0
    );

    // Another service account's JWT: the review refuses it and the agent never gets a
    // token; it keeps retrying on its backoff instead of serving anything.
    let stranger_path = dir.path().join("stranger-token");
    let stranger_jwt = service_account_jwt(&key, "someone-else").unwrap();
    write_private_file(&stranger_path, &stranger_jwt).unwrap();
    let refused = AgentProcess::start(
        AgentConfig::new(&bao.addr(), KV1_PREFIX)
            .kubernetes("keygate", &stranger_path)
            .refresh_interval("2s"),
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let failures = refused
        .metric("keygate_agent_auth_login_failures_total")
        .await
        .unwrap();
    assert!(failures >= 1.0, "login failures: {failures}");
    assert!(
        failures <= 3.0,
        "login retried on a backoff, not in a loop: {failures} in 3 s"
    );
    assert_eq!(
        refused.metric("keygate_agent_authenticated").await.unwrap(),
        0.0
    );
    assert_eq!(refused.metric("keygate_agent_ready").await.unwrap(), 0.0);

    agent.assert_no_secret_in_log(&[&seeded.jack_v1, &jwt]);
    refused.assert_no_secret_in_log(&[&stranger_jwt]);
}
