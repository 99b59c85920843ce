//! Admin write-through (`admin.vault_write_through`), end to end against a real OpenBao,
//! agent, gateway and upstream: a consumer written through the Admin API with `vault: {}`
//! and an inline credential has the credential stored in Vault through the agent's `Put`
//! (read back here with the root token), the state directory keeps only the reference,
//! tokens signed with it verify, and a second `PUT` rotates it (old tokens 401, new 200)
//! with no wait after the answer. An agent that refuses (no `write_paths`, Vault's policy)
//! or is gone: an error, and nothing stored anywhere; never the secret inline instead.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, Result, ensure};
use keygate_tests::gateway::{GatewayProcess, Upstream};
use keygate_tests::{
    AgentConfig, AgentProcess, OpenBao, Peer, assert_no_secret_in, free_port, random_secret,
};
use serde_json::{Value, json};

const KEY: &str = "admin-key-for-write-through-tests";
const JACK: &str = "kv/apisix/consumer/jack/jwt-auth";

/// The agent may read and write the consumers' secrets in KV v1 at `kv/apisix`.
const WRITER_HCL: &str = r#"
path "kv/apisix/consumer/*" { capabilities = ["create", "update", "read"] }
"#;
/// The agent may only read them.
const READER_HCL: &str = r#"
path "kv/apisix/consumer/*" { capabilities = ["read"] }
"#;

/// OpenBao with KV v1 at `kv/` and a token for the agent with `hcl` as its policy.
async fn vault(hcl: &str) -> Result<(OpenBao, String)> {
    let bao = OpenBao::start().await?;
    bao.enable_kv("kv", 1).await?;
    bao.put_policy("keygate-agent", hcl).await?;
    let token = bao.create_token(&["keygate-agent"], Some("1h")).await?;
    Ok((bao, token))
}

/// An agent whose only peer (this uid) reads `consumer/*` and, if `write`, writes it.
/// Its refresh interval is long: what the gateway sees right after a write comes from
/// the `Put`, not from a periodic re-read.
async fn agent(bao: &OpenBao, token: &str, write: bool) -> Result<AgentProcess> {
    let uid = nix::unistd::getuid().as_raw();
    let mut peer = Peer::uid("gateway", uid, &["consumer/*"]);
    if write {
        peer = peer.writing(&["consumer/*"]);
    }
    AgentProcess::start_ready(
        AgentConfig::new(&bao.addr(), "kv/apisix")
            .token(token)
            .refresh_interval("300s")
            .peers(vec![peer]),
    )
    .await
}

/// A gateway with the Admin API (its state directory in `state`) and the sign endpoint.
struct Gateway {
    gw: GatewayProcess,
    admin: String,
    state: PathBuf,
    _state_dir: tempfile::TempDir,
    http: reqwest::Client,
}

fn config(socket: &Path, admin_port: u16, state: &Path, write_through: bool) -> Result<String> {
    Ok(format!(
        "agent: {{ socket: {} }}\n\
         plugin_attr: {{ jwt-auth: {{ sign_endpoint: true }} }}\n\
         admin:\n  listen: 127.0.0.1:{admin_port}\n  key: {KEY}\n  state_dir: {}\n  vault_write_through: {write_through}\n",
        serde_json::to_string(&socket.display().to_string())?,
        serde_json::to_string(&state.display().to_string())?,
    ))
}

impl Gateway {
    async fn start(agent: &AgentProcess, write_through: bool) -> Result<Self> {
        let state_dir = tempfile::Builder::new()
            .prefix("keygate-wt-state-")
            .tempdir()?;
        let state = state_dir.path().join("state");
        let admin_port = free_port()?;
        let gw = GatewayProcess::start_ready(&config(
            agent.socket_path(),
            admin_port,
            &state,
            write_through,
        )?)
        .await?;
        Ok(Self {
            gw,
            admin: format!("http://127.0.0.1:{admin_port}"),
            state,
            _state_dir: state_dir,
            http: reqwest::Client::builder()
                .no_proxy()
                .timeout(Duration::from_secs(30))
                .build()?,
        })
    }

    /// `method /apisix/admin/<path>` with the key: status and JSON body.
    async fn admin(&self, method: &str, path: &str, body: Option<&Value>) -> Result<(u16, Value)> {
        let url = format!("{}/apisix/admin/{path}", self.admin);
        let mut req = self
            .http
            .request(reqwest::Method::from_bytes(method.as_bytes())?, &url)
            .header("X-API-KEY", KEY);
        if let Some(body) = body {
            req = req.body(body.to_string());
        }
        let resp = req
            .send()
            .await
            .with_context(|| format!("{method} {url}"))?;
        let status = resp.status().as_u16();
        let text = resp.text().await?;
        let value = serde_json::from_str(&text).with_context(|| format!("not JSON: {text}"))?;
        Ok((status, value))
    }

    /// Every file under the state directory, concatenated (names included).
    fn state_contents(&self) -> Result<String> {
        let mut out = String::new();
        let mut dirs = vec![self.state.clone()];
        while let Some(dir) = dirs.pop() {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries {
                let path = entry?.path();
                out.push_str(&path.display().to_string());
                out.push('\n');
                if path.is_dir() {
                    dirs.push(path);
                } else {
                    out.push_str(&String::from_utf8_lossy(&std::fs::read(&path)?));
                    out.push('\n');
                }
            }
        }
        Ok(out)
    }

    /// The stored record of consumer `username`, if any.
    fn stored_consumer(&self, username: &str) -> Result<Option<Value>> {
        let path = self
            .state
            .join("admin/consumers")
            .join(format!("{username}.json"));
        match std::fs::read(&path) {
            Ok(bytes) => Ok(Some(serde_json::from_slice(&bytes)?)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }
}

fn jack(secret: &str) -> Value {
    json!({"username": "jack", "plugins": {"jwt-auth": {
        "key": "test-key", "secret": secret, "vault": {}}}})
}

/// The `secret` field of a KV v1 secret read with the root token.
async fn stored_secret(bao: &OpenBao, path: &str, field: &str) -> Result<Option<String>> {
    Ok(bao
        .read(path)
        .await?
        .and_then(|v| v["data"][field].as_str().map(str::to_owned)))
}

/// True if `token` is an HS256 token signed with `secret`.
fn signed_with(token: &str, secret: &str) -> bool {
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
    validation.required_spec_claims.clear();
    jsonwebtoken::decode::<Value>(
        token,
        &jsonwebtoken::DecodingKey::from_secret(secret.as_bytes()),
        &validation,
    )
    .is_ok()
}

fn route(upstream: &Upstream, uri: &str, plugin: &str) -> Value {
    json!({"uri": uri, "plugins": {plugin: {}},
           "upstream": {"type": "roundrobin", "nodes": {upstream.node(): 1}}})
}

fn expect_error(answer: &(u16, Value), status: u16, contains: &str) -> Result<()> {
    let msg = answer.1["error_msg"].as_str().unwrap_or("");
    ensure!(
        answer.0 == status && msg.contains(contains),
        "expected {status} with {contains:?}, got {} {}",
        answer.0,
        answer.1
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn credentials_go_to_vault_and_only_the_reference_is_stored() -> Result<()> {
    let (bao, token) = vault(WRITER_HCL).await?;
    let agent = agent(&bao, &token, true).await?;
    let upstream = Upstream::start().await?;
    let mut gw = Gateway::start(&agent, true).await?;
    let answer = gw
        .admin(
            "PUT",
            "routes/1",
            Some(&route(&upstream, "/secure/ping", "jwt-auth")),
        )
        .await?;
    ensure!(answer.0 == 201, "{answer:?}");

    // PUT jack with vault: {} and an inline secret: 201, the answer holds the reference.
    let first = random_secret("wt-jack-1");
    let answer = gw.admin("PUT", "consumers", Some(&jack(&first))).await?;
    ensure!(answer.0 == 201, "{answer:?}");
    ensure!(
        answer.1["value"]["plugins"] == json!({"jwt-auth": {"key": "test-key", "vault": {}}}),
        "{answer:?}"
    );
    // In OpenBao, read back with the root token.
    ensure!(stored_secret(&bao, JACK, "secret").await?.as_deref() == Some(first.as_str()));
    // Stored and served: the reference only.
    let stored = gw.stored_consumer("jack")?.context("jack not stored")?;
    ensure!(
        stored["value"]["plugins"] == json!({"jwt-auth": {"key": "test-key", "vault": {}}}),
        "{stored}"
    );
    let got = gw.admin("GET", "consumers/jack", None).await?;
    ensure!(
        got.1["value"]["plugins"]["jwt-auth"]
            .get("secret")
            .is_none(),
        "{got:?}"
    );

    // Sign and verify with it, right after the answer (no waiting for a refresh).
    let token1 = gw.gw.sign("test-key").await?;
    ensure!(
        signed_with(&token1, &first),
        "not signed with the written secret"
    );
    let (status, body) = gw
        .gw
        .get("/secure/ping", &[("Authorization", &token1)])
        .await?;
    ensure!((status, body.as_str()) == (200, "secure/pong\n"));

    // Rotation through a second PUT: the old token 401 and a new one 200, at once.
    let second = random_secret("wt-jack-2");
    let answer = gw
        .admin("PUT", "consumers/jack", Some(&jack(&second)))
        .await?;
    ensure!(answer.0 == 200, "{answer:?}");
    ensure!(stored_secret(&bao, JACK, "secret").await?.as_deref() == Some(second.as_str()));
    let (status, _) = gw
        .gw
        .get("/secure/ping", &[("Authorization", &token1)])
        .await?;
    ensure!(status == 401, "the old token still passes: {status}");
    let token2 = gw.gw.sign("test-key").await?;
    ensure!(signed_with(&token2, &second));
    let (status, _) = gw
        .gw
        .get("/secure/ping", &[("Authorization", &token2)])
        .await?;
    ensure!(status == 200, "the new token: {status}");

    // PATCH of one attribute (the sub-path form) writes through too.
    let third = random_secret("wt-jack-3");
    let answer = gw
        .admin(
            "PATCH",
            "consumers/jack/plugins/jwt-auth/secret",
            Some(&json!(third)),
        )
        .await?;
    ensure!(answer.0 == 200, "{answer:?}");
    ensure!(answer.1["value"]["plugins"]["jwt-auth"] == json!({"key": "test-key", "vault": {}}));
    ensure!(stored_secret(&bao, JACK, "secret").await?.as_deref() == Some(third.as_str()));
    let token3 = gw.gw.sign("test-key").await?;
    ensure!(signed_with(&token3, &third));

    // key-auth and basic-auth: their fields `key` and `password`.
    let api_key = random_secret("wt-ann-key");
    let password = random_secret("wt-ann-password");
    let ann = json!({"username": "ann", "plugins": {
        "key-auth": {"key": api_key, "vault": {}},
        "basic-auth": {"username": "ann", "password": password, "vault": {}}}});
    let answer = gw.admin("PUT", "consumers/ann", Some(&ann)).await?;
    ensure!(answer.0 == 201, "{answer:?}");
    ensure!(
        answer.1["value"]["plugins"]
            == json!({"key-auth": {"vault": {}}, "basic-auth": {"username": "ann", "vault": {}}}),
        "{answer:?}"
    );
    ensure!(
        stored_secret(&bao, "kv/apisix/consumer/ann/key-auth", "key")
            .await?
            .as_deref()
            == Some(api_key.as_str())
    );
    ensure!(
        stored_secret(&bao, "kv/apisix/consumer/ann/basic-auth", "password")
            .await?
            .as_deref()
            == Some(password.as_str())
    );
    let answer = gw
        .admin(
            "PUT",
            "routes/2",
            Some(&route(&upstream, "/keyed", "key-auth")),
        )
        .await?;
    ensure!(answer.0 == 201, "{answer:?}");
    // Past key-auth, the upstream answers (it serves /secure/ping only: 404 not found).
    let (status, body) = gw.gw.get("/keyed", &[("apikey", &api_key)]).await?;
    ensure!(
        (status, body.as_str()) == (404, "not found\n"),
        "key-auth with the written key: {status} {body}"
    );
    let (status, _) = gw.gw.get("/keyed", &[("apikey", "wrong-key-123")]).await?;
    ensure!(status == 401, "key-auth with a wrong key: {status}");
    // routes/2 changed no consumer: the gateway kept the keys it resolved from Vault
    // (the same consumer set), jack's current secret passes and his previous one does not.
    let (status, _) = gw
        .gw
        .get("/secure/ping", &[("Authorization", &token3)])
        .await?;
    ensure!(status == 200, "jack's token after a route write: {status}");
    let (status, _) = gw
        .gw
        .get("/secure/ping", &[("Authorization", &token2)])
        .await?;
    ensure!(
        status == 401,
        "jack's previous secret after a route write: {status}"
    );

    // Refused before anything is written: values that are no credential, and a private
    // key whose public key Vault would lose.
    let before = stored_secret(&bao, JACK, "secret").await?;
    for (body, field) in [
        (jack(""), "plugins.jwt-auth.secret"),
        (
            json!({"username": "jack", "plugins": {"jwt-auth": {"key": "test-key",
                "algorithm": "RS256", "private_key": "not a pem at all", "vault": {}}}}),
            "plugins.jwt-auth.public_key",
        ),
        (
            json!({"username": "jack", "plugins": {"jwt-auth": {"key": "test-key",
                "algorithm": "RS256", "private_key": "not a pem", "public_key": "nor this", "vault": {}}}}),
            "plugins.jwt-auth.",
        ),
    ] {
        let answer = gw.admin("PUT", "consumers/jack", Some(&body)).await?;
        expect_error(&answer, 400, &format!("invalid configuration: {field}"))?;
    }
    ensure!(
        stored_secret(&bao, JACK, "secret").await? == before,
        "Vault changed by a refused write"
    );

    // A restart keeps the reference; the credential still comes from Vault.
    gw.gw.sigterm().await?;
    gw.gw.start_again()?;
    gw.gw.wait_ready(Duration::from_secs(30)).await?;
    let token4 =
        keygate_tests::eventually(Duration::from_secs(10), || gw.gw.sign("test-key")).await?;
    ensure!(signed_with(&token4, &third));
    let (status, _) = gw
        .gw
        .get("/secure/ping", &[("Authorization", &token4)])
        .await?;
    ensure!(status == 200);

    // No credential in the state directory, in the logs, or in any admin answer.
    let secrets = [first.as_str(), &second, &third, &api_key, &password];
    assert_no_secret_in(&gw.state_contents()?, &secrets);
    assert_no_secret_in(&gw.gw.log_contents(), &secrets);
    agent.assert_no_secret_in_log(&secrets);
    let list = gw.admin("GET", "consumers", None).await?;
    assert_no_secret_in(&list.1.to_string(), &secrets);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn refused_or_unreachable_agent_changes_nothing() -> Result<()> {
    // The agent's peer policy has no write_paths: 403 from the agent.
    let (bao, token) = vault(WRITER_HCL).await?;
    let no_write = agent(&bao, &token, false).await?;
    let gw = Gateway::start(&no_write, true).await?;
    let secret = random_secret("wt-refused");
    let answer = gw.admin("PUT", "consumers", Some(&jack(&secret))).await?;
    expect_error(&answer, 403, "permission denied")?;
    expect_error(&answer, 403, "consumer/jack/jwt-auth")?;
    expect_error(&answer, 403, "nothing was changed")?;
    ensure!(gw.admin("GET", "consumers/jack", None).await?.0 == 404);
    ensure!(gw.stored_consumer("jack")?.is_none());
    ensure!(bao.read(JACK).await?.is_none(), "written to Vault anyway");

    // An existing consumer with vault: {}: a rotation refused leaves it as it was.
    let plain =
        json!({"username": "jack", "plugins": {"jwt-auth": {"key": "test-key", "vault": {}}}});
    let created = gw.admin("PUT", "consumers", Some(&plain)).await?;
    ensure!(created.0 == 201, "{created:?}");
    let answer = gw
        .admin("PUT", "consumers/jack", Some(&jack(&secret)))
        .await?;
    expect_error(&answer, 403, "permission denied")?;
    let got = gw.admin("GET", "consumers/jack", None).await?;
    ensure!(
        got.1["value"] == created.1["value"],
        "{got:?} vs {created:?}"
    );

    // With write-through off (the default; a reload turns it off), the pair is refused
    // as in the file, before anything reaches the agent.
    let off = config(
        no_write.socket_path(),
        port_of(&gw.admin)?,
        &gw.state,
        false,
    )?;
    gw.gw.write_config(&off)?;
    gw.gw.sighup()?;
    keygate_tests::eventually(Duration::from_secs(10), || async {
        let answer = gw
            .admin("PUT", "consumers/jack", Some(&jack(&secret)))
            .await?;
        expect_error(&answer, 400, "give either secret or vault: {}, not both")
    })
    .await?;
    ensure!(gw.admin("GET", "consumers/jack", None).await?.1["value"] == created.1["value"]);

    // Vault's policy refuses the agent's token (read only): 403, nothing stored.
    let (bao_ro, token_ro) = vault(READER_HCL).await?;
    let read_only = agent(&bao_ro, &token_ro, true).await?;
    let gw_ro = Gateway::start(&read_only, true).await?;
    let answer = gw_ro
        .admin("PUT", "consumers", Some(&jack(&secret)))
        .await?;
    expect_error(&answer, 403, "Vault refuses")?;
    ensure!(gw_ro.admin("GET", "consumers/jack", None).await?.0 == 404);
    ensure!(bao_ro.read(JACK).await?.is_none());

    // The agent gone: 503, nothing stored.
    let (bao_gone, token_gone) = vault(WRITER_HCL).await?;
    let mut gone = agent(&bao_gone, &token_gone, true).await?;
    let gw_gone = Gateway::start(&gone, true).await?;
    gone.kill9().await?;
    let answer = gw_gone
        .admin("PUT", "consumers", Some(&jack(&secret)))
        .await?;
    expect_error(&answer, 503, "nothing was changed")?;
    ensure!(gw_gone.admin("GET", "consumers/jack", None).await?.0 == 404);
    ensure!(gw_gone.stored_consumer("jack")?.is_none());
    ensure!(bao_gone.read(JACK).await?.is_none());

    for gw in [&gw, &gw_ro, &gw_gone] {
        assert_no_secret_in(&gw.state_contents()?, &[&secret]);
        assert_no_secret_in(&gw.gw.log_contents(), &[&secret]);
    }
    Ok(())
}

fn port_of(url: &str) -> Result<u16> {
    url.rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .with_context(|| format!("no port in {url}"))
}
