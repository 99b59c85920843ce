//! Both seed documents (`shared/seeds/`), step by step, with keygate in place of APISIX:
//! the tutorial's `vault` commands run through the OpenBao CLI (`vault` is a shell
//! function calling `bao`), its `curl` commands run through the real `curl` against the
//! gateway's Admin API and proxy listener, against a real OpenBao, agent, gateway and
//! upstream. Every command is the document's text; only hosts and ports change, plus
//! what the published text cannot carry (its rendering dropped the URLs, which are put
//! back as APISIX documents them; the tutorial's example token was signed with its
//! author's secret; its `……` stands for a real public key).

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use anyhow::{Context as _, Result, bail, ensure};
use keygate_tests::gateway::{GatewayProcess, Upstream};
use keygate_tests::openbao::bao_binary;
use keygate_tests::{AgentConfig, AgentProcess, OpenBao, assert_no_secret_in, eventually};
use serde_json::Value;
use sha2::{Digest as _, Sha256};

/// The `X-API-KEY` of the documents (APISIX's documentation example).
const ADMIN_KEY: &str = "edd1c9f034335f136f87ad84b625c8f1";
/// The agent's refresh interval here.
const REFRESH: &str = "1s";
/// Refresh interval plus scheduling slack on a busy two-core machine.
const PICKUP: Duration = Duration::from_secs(10);

/// A shell in a scratch directory with the tutorial's environment: `VAULT_ADDR`,
/// `VAULT_TOKEN` (the root token, as `vault server -dev` would print it) and `vault`
/// standing for the OpenBao CLI.
struct Shell {
    dir: tempfile::TempDir,
    addr: String,
    token: String,
    bao: std::path::PathBuf,
}

impl Shell {
    fn new(bao: &OpenBao) -> Result<Self> {
        Ok(Self {
            dir: tempfile::Builder::new().prefix("keygate-seed-").tempdir()?,
            addr: bao.addr(),
            token: bao.root_token().to_owned(),
            bao: bao_binary()?,
        })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Runs `script` with bash; returns stdout, failing on a non-zero exit.
    async fn run(&self, script: &str) -> Result<String> {
        let out = self.output(script).await?;
        ensure!(
            out.status.success(),
            "`{script}` failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    async fn output(&self, script: &str) -> Result<Output> {
        let prelude = "vault() { \"$KEYGATE_SEED_BAO\" \"$@\"; }\n";
        tokio::process::Command::new("bash")
            .arg("-c")
            .arg(format!("{prelude}{script}"))
            .current_dir(self.dir.path())
            .env("VAULT_ADDR", &self.addr)
            .env("VAULT_TOKEN", &self.token)
            .env("KEYGATE_SEED_BAO", &self.bao)
            .env_remove("BAO_ADDR")
            .env_remove("BAO_TOKEN")
            .env("NO_PROXY", "127.0.0.1,localhost")
            .stdin(std::process::Stdio::null())
            .output()
            .await
            .with_context(|| format!("running bash (is curl installed?) for `{script}`"))
    }
}

/// The first line of `curl -i` output and its body.
fn status_and_body(output: &str) -> (String, String) {
    let status = output.lines().next().unwrap_or("").trim().to_owned();
    let body = output
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_owned();
    (status, body)
}

/// A header of `curl -i` output (case-insensitive name).
fn header<'a>(output: &'a str, name: &str) -> Option<&'a str> {
    output.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// The admin answer must be APISIX's `{"key": ..., "value": {...}}` for `key`.
fn expect_stored(output: &str, key: &str) -> Result<Value> {
    let v: Value = serde_json::from_str(output.trim())
        .with_context(|| format!("admin answer is not JSON: {output}"))?;
    ensure!(v["key"] == key, "admin answer for {key}: {output}");
    Ok(v["value"].clone())
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

fn b64url(bytes: &[u8]) -> String {
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk.first().copied().unwrap_or(0),
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..=chunk.len() {
            let index = ((n >> (18 - 6 * i)) & 63) as usize;
            out.push(char::from(B64[index]));
        }
    }
    out
}

fn b64url_decode(text: &str) -> Result<Vec<u8>> {
    let mut bits = 0u32;
    let mut count = 0;
    let mut out = Vec::new();
    for c in text.bytes() {
        let v = B64
            .iter()
            .position(|&b| b == c)
            .with_context(|| format!("not base64url: {c}"))?;
        bits = (bits << 6) | v as u32;
        count += 6;
        if count >= 8 {
            count -= 8;
            out.push((bits >> count) as u8);
        }
    }
    Ok(out)
}

/// HMAC-SHA256 (RFC 2104), to check which secret signed a token.
fn hmac_sha256(key: &[u8], message: &[u8]) -> Vec<u8> {
    let mut block = [0u8; 64];
    if key.len() > 64 {
        block[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let pad = |byte: u8| block.iter().map(|b| b ^ byte).collect::<Vec<u8>>();
    let inner = Sha256::new()
        .chain_update(pad(0x36))
        .chain_update(message)
        .finalize();
    Sha256::new()
        .chain_update(pad(0x5c))
        .chain_update(inner)
        .finalize()
        .to_vec()
}

/// True if `token` is HS256 over its header and payload with `secret`.
fn signed_with(token: &str, secret: &str) -> bool {
    let Some((signed, signature)) = token.rsplit_once('.') else {
        return false;
    };
    b64url(&hmac_sha256(secret.as_bytes(), signed.as_bytes())) == signature
}

/// The claims of a token.
fn claims(token: &str) -> Result<Value> {
    let payload = token.split('.').nth(1).context("not a JWT")?;
    Ok(serde_json::from_slice(&b64url_decode(payload)?)?)
}

/// The tutorial's upstream node, `127.0.0.1:9999`, is the test upstream's address.
fn with_node(command: &str, upstream: &Upstream) -> String {
    command.replace("127.0.0.1:9999", &upstream.node())
}

/// Starts the agent with the tutorial's token and a gateway with the Admin API, no
/// routes and no consumers: everything else comes through the Admin API.
async fn stack(bao: &OpenBao, token: &str) -> Result<(AgentProcess, GatewayProcess)> {
    let agent = AgentProcess::start_ready(
        AgentConfig::new(&bao.addr(), "kv/apisix")
            .token(token)
            .refresh_interval(REFRESH),
    )
    .await?;
    let body = format!(
        "agent: {{ socket: {:?} }}\nplugin_attr: {{ jwt-auth: {{ sign_endpoint: true }} }}\n",
        agent.socket_path()
    );
    let gateway = GatewayProcess::start_ready_with_admin(&body, ADMIN_KEY).await?;
    Ok((agent, gateway))
}

/// "Configure Vault", steps 1 and 2, verbatim: kv v1 at kv/, the policy, a token.
async fn configure_vault(sh: &Shell) -> Result<String> {
    let out = sh
        .run("vault secrets enable -path=kv -version=1 kv")
        .await?;
    ensure!(
        out.contains("Success! Enabled the kv secrets engine at: kv/"),
        "{out}"
    );
    let out = sh.run("vault secrets list").await?;
    ensure!(out.lines().any(|l| l.starts_with("kv/ ")), "{out}");
    sh.run("tee apisix-policy.hcl << EOF\npath \"kv/apisix/consumer/*\" {\n    capabilities = [\"read\"]\n}\nEOF")
        .await?;
    let out = sh
        .run("vault policy write apisix-policy apisix-policy.hcl")
        .await?;
    ensure!(
        out.contains("Success! Uploaded policy: apisix-policy"),
        "{out}"
    );
    let out = sh
        .run("vault token create -policy=\"apisix-policy\"")
        .await?;
    ensure!(
        out.lines()
            .any(|l| l.starts_with("token_policies") && l.contains("apisix-policy")),
        "{out}"
    );
    out.lines()
        .find_map(|l| l.strip_prefix("token ").map(|t| t.trim().to_owned()))
        .filter(|t| !t.is_empty())
        .with_context(|| format!("no token in:\n{out}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn jwt_auth_tutorial_step_by_step() -> Result<()> {
    let bao = OpenBao::start().await?;
    let sh = Shell::new(&bao)?;
    let agent_token = configure_vault(&sh).await?;
    let (agent, gateway) = stack(&bao, &agent_token).await?;
    let upstream = Upstream::start().await?;
    let admin = format!("http://127.0.0.1:{}", gateway.admin_port()?);
    let proxy = gateway.base_url();

    // "Create an APISIX Consumer": jack, jwt-auth with vault: {}.
    let out = sh
        .run(&format!(
            r#"curl {admin}/apisix/admin/consumers -H 'X-API-KEY: edd1c9f034335f136f87ad84b625c8f1' -X PUT -d '{{    "username": "jack",    "plugins": {{        "jwt-auth": {{            "key": "test-key",            "vault": {{}}        }}    }}}}'"#
        ))
        .await?;
    let jack = expect_stored(&out, "/apisix/consumers/jack")?;
    ensure!(
        jack["plugins"]["jwt-auth"] == serde_json::json!({"key": "test-key", "vault": {}}),
        "{out}"
    );

    // "Create an APISIX Route with Authentication Enabled".
    let out = sh
        .run(&with_node(
            &format!(
                r#"curl {admin}/apisix/admin/routes/1 -H 'X-API-KEY: edd1c9f034335f136f87ad84b625c8f1' -X PUT -d '{{    "plugins": {{        "jwt-auth": {{}}    }},    "upstream": {{        "nodes": {{            "127.0.0.1:9999": 1        }},        "type": "roundrobin"    }},    "uri": "/secure/ping"}}'"#
            ),
            &upstream,
        ))
        .await?;
    expect_stored(&out, "/apisix/routes/1")?;

    // "Generate Token": the secret is not in Vault yet, so (as the tutorial warns)
    // signing fails with "failed to sign jwt" until it is stored.
    let sign = format!(r"curl {proxy}/apisix/plugin/jwt/sign\?key\=test-key -i");
    let out = sh.run(&sign).await?;
    let (status, body) = status_and_body(&out);
    ensure!(
        status.starts_with("HTTP/1.1 503") && body == "failed to sign jwt",
        "{out}"
    );
    // "# example $ vault kv put kv/apisix/consumer/jack/jwt-auth secret=$ecr3t-c0d3":
    // run as written, the shell expands `$ecr3t` (unset) to nothing.
    let out = sh
        .run("vault kv put kv/apisix/consumer/jack/jwt-auth secret=$ecr3t-c0d3")
        .await?;
    ensure!(
        out.contains("Success! Data written to: kv/apisix/consumer/jack/jwt-auth"),
        "{out}"
    );
    let jack_secret = "-c0d3";
    let out = eventually(PICKUP, || async {
        let out = sh.run(&sign).await?;
        ensure!(out.starts_with("HTTP/1.1 200 OK"), "{out}");
        Ok(out)
    })
    .await?;
    ensure!(
        header(&out, "content-type") == Some("text/plain; charset=utf-8"),
        "{out}"
    );
    let (_, token) = status_and_body(&out);
    ensure!(
        signed_with(&token, jack_secret),
        "token not signed with Vault's secret"
    );
    let claims = claims(&token)?;
    ensure!(
        claims["key"] == "test-key" && claims["exp"].is_u64(),
        "{claims}"
    );

    // "Request APISIX Server" with the token: 200 from the upstream.
    let out = sh
        .run(&format!(
            "curl {proxy}/secure/ping -H 'Authorization: {token}' -i"
        ))
        .await?;
    let (status, body) = status_and_body(&out);
    ensure!(
        status == "HTTP/1.1 200 OK" && body == "secure/pong\n",
        "{out}"
    );
    // The document's own token was signed with its author's secret (and expired in
    // 2022): refused.
    let out = sh
        .run(&format!(
            "curl {proxy}/secure/ping -H 'Authorization: eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJrZXkiOiJ0ZXN0LWtleSIsImV4cCI6MTY0MjU3ODU5M30.IYudBr7FTgRme70u4rEBoYNtGmGByzgfGlt8hctI__Q' -i"
        ))
        .await?;
    ensure!(out.starts_with("HTTP/1.1 401"), "{out}");
    // Without a token: 401 and APISIX's body.
    let out = sh.run(&format!("curl {proxy}/secure/ping -i")).await?;
    let (status, body) = status_and_body(&out);
    ensure!(
        status == "HTTP/1.1 401 Unauthorized"
            && body == r#"{"message":"Missing JWT token in request"}"#,
        "{out}"
    );

    // Use case 1: HS256 secret in Vault, jack now with key "key-1".
    let out = sh
        .run(&format!(
            r#"curl {admin}/apisix/admin/consumers -H 'X-API-KEY: edd1c9f034335f136f87ad84b625c8f1' -X PUT -d ' {{     "username": "jack",     "plugins": {{         "jwt-auth": {{             "key": "key-1",             "vault": {{}}         }}     }} }}'"#
        ))
        .await?;
    expect_stored(&out, "/apisix/consumers/jack")?;
    let token = sh
        .run(&format!(
            r"curl -s {proxy}/apisix/plugin/jwt/sign\?key\=key-1"
        ))
        .await?;
    ensure!(signed_with(&token, jack_secret), "key-1 token: {token}");
    let out = sh
        .run(&format!(
            r"curl {proxy}/apisix/plugin/jwt/sign\?key\=test-key -i"
        ))
        .await?;
    ensure!(
        out.starts_with("HTTP/1.1 404"),
        "the old key still signs: {out}"
    );

    // Use case 2: jim's RS256 key pair, both halves in Vault.
    let keys = Path::new(env!("CARGO_MANIFEST_DIR")).join("../gateway/testdata");
    std::fs::copy(keys.join("rsa_public.pem"), sh.path().join("public.pem"))?;
    std::fs::copy(keys.join("rsa_private.pem"), sh.path().join("private.pem"))?;
    let out = sh
        .run(&format!(
            r#"curl {admin}/apisix/admin/consumers -H 'X-API-KEY: edd1c9f034335f136f87ad84b625c8f1' -X PUT -d ' {{     "username": "jim",     "plugins": {{         "jwt-auth": {{             "key": "rsa-keypair",             "algorithm": "RS256",             "vault": {{}}         }}     }} }}'"#
        ))
        .await?;
    expect_stored(&out, "/apisix/consumers/jim")?;
    let out = sh
        .run("vault kv put kv/apisix/consumer/jim/jwt-auth public_key=@public.pem private_key=@private.pem")
        .await?;
    ensure!(
        out.contains("Success! Data written to: kv/apisix/consumer/jim/jwt-auth"),
        "{out}"
    );
    let jim_token = eventually(PICKUP, || async {
        let token = sh
            .run(&format!(
                r"curl -s -f {proxy}/apisix/plugin/jwt/sign\?key\=rsa-keypair"
            ))
            .await?;
        ensure!(token.starts_with("eyJhbGciOiJSUzI1NiIs"), "{token}");
        Ok(token)
    })
    .await?;
    let out = sh
        .run(&format!(
            "curl {proxy}/secure/ping -H 'Authorization: {jim_token}' -i"
        ))
        .await?;
    ensure!(out.starts_with("HTTP/1.1 200 OK"), "jim: {out}");

    // Use case 3: john's public key in the consumer, the private key in Vault. The
    // document's command lacks a comma after "public_key"; sent as written (with a real
    // key for "……") it is refused as APISIX would refuse it, then sent corrected.
    let public2 = std::fs::read_to_string(keys.join("rsa2_public.pem"))?;
    std::fs::copy(keys.join("rsa2_private.pem"), sh.path().join("john.pem"))?;
    let body_lines: Vec<&str> = public2
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect();
    let john = format!(
        r#"curl {admin}/apisix/admin/consumers -H 'X-API-KEY: edd1c9f034335f136f87ad84b625c8f1' -X PUT -d ' {{     "username": "john",     "plugins": {{         "jwt-auth": {{             "key": "user-key",             "algorithm": "RS256",             "public_key": "-----BEGIN PUBLIC KEY-----\n……\n-----END PUBLIC KEY-----"             "vault": {{}}         }}     }} }}'"#
    )
    .replace("……", &body_lines.join("\\n"));
    let out = sh.run(&john).await?;
    let refused: Value = serde_json::from_str(out.trim())?;
    ensure!(
        refused["error_msg"]
            .as_str()
            .is_some_and(|m| m.starts_with("invalid request body: expected `,` or `}`")),
        "{out}"
    );
    let john = john.replace(
        "-----END PUBLIC KEY-----\"             \"vault\"",
        "-----END PUBLIC KEY-----\",             \"vault\"",
    );
    let out = sh.run(&john).await?;
    expect_stored(&out, "/apisix/consumers/john")?;
    sh.run("vault kv put kv/apisix/consumer/john/jwt-auth private_key=@john.pem")
        .await?;
    let john_token = eventually(PICKUP, || async {
        sh.run(&format!(
            r"curl -s -f {proxy}/apisix/plugin/jwt/sign\?key\=user-key"
        ))
        .await
    })
    .await?;
    let out = sh
        .run(&format!(
            "curl {proxy}/secure/ping -H 'Authorization: {john_token}' -i"
        ))
        .await?;
    ensure!(out.starts_with("HTTP/1.1 200 OK"), "john: {out}");
    ensure!(watched(&gateway).await? == 3.0);

    // "Disable Vault from Plugin": jack with an inline secret, live, no restart.
    let out = sh
        .run(&format!(
            r#"curl {admin}/apisix/admin/consumers -H 'X-API-KEY: edd1c9f034335f136f87ad84b625c8f1' -X PUT -d '{{    "username": "jack",    "plugins": {{        "jwt-auth": {{            "key": "test-key",            "secret": "my-secret-key"        }}    }}}}'"#
        ))
        .await?;
    expect_stored(&out, "/apisix/consumers/jack")?;
    let token = sh
        .run(&format!(
            r"curl -s {proxy}/apisix/plugin/jwt/sign\?key\=test-key"
        ))
        .await?;
    ensure!(
        signed_with(&token, "my-secret-key"),
        "not signed with the inline secret"
    );
    let out = sh
        .run(&format!(
            "curl {proxy}/secure/ping -H 'Authorization: {token}' -i"
        ))
        .await?;
    ensure!(out.starts_with("HTTP/1.1 200 OK"), "{out}");
    // Vault's secret no longer counts, and jack's Vault path is no longer watched.
    let vault_signed = {
        let header = b64url(br#"{"alg":"HS256","typ":"JWT"}"#);
        let payload =
            b64url(format!(r#"{{"key":"test-key","exp":{}}}"#, 4_102_444_800u64).as_bytes());
        let signed = format!("{header}.{payload}");
        format!(
            "{signed}.{}",
            b64url(&hmac_sha256(jack_secret.as_bytes(), signed.as_bytes()))
        )
    };
    let (status, _) = gateway
        .get("/secure/ping", &[("authorization", &vault_signed)])
        .await?;
    ensure!(status == 401, "Vault's secret still accepted: {status}");
    eventually(PICKUP, || async {
        ensure!(watched(&gateway).await? == 2.0);
        Ok(())
    })
    .await?;

    // Nothing the gateway stored or logged holds a Vault secret or the admin key; the
    // inline secret of the last step is only in a 0600 file.
    let private = std::fs::read_to_string(keys.join("rsa_private.pem"))?;
    let private2 = std::fs::read_to_string(keys.join("rsa2_private.pem"))?;
    let key_lines = |pem: &str| -> Vec<String> {
        pem.lines()
            .filter(|l| !l.starts_with("-----") && l.len() >= 16)
            .map(str::to_owned)
            .collect()
    };
    let mut secrets: Vec<String> = key_lines(&private);
    secrets.extend(key_lines(&private2));
    secrets.push(agent_token.clone());
    let secret_refs: Vec<&str> = secrets.iter().map(String::as_str).collect();
    let state = read_tree(&gateway.state_dir())?;
    for (path, text, mode) in &state {
        assert_no_secret_in(text, &secret_refs);
        ensure!(
            !text.contains(&format!("\"secret\":\"{jack_secret}\"")),
            "{path}: Vault's secret stored"
        );
        ensure!(mode & 0o077 == 0, "{path} has mode {mode:o}");
    }
    let stored_secret = state
        .iter()
        .filter(|(_, text, _)| text.contains("my-secret-key"))
        .count();
    ensure!(
        stored_secret == 1,
        "the inline secret should be in jack's record only"
    );
    let mut log_secrets = secret_refs.clone();
    log_secrets.extend(["my-secret-key", ADMIN_KEY]);
    assert_no_secret_in(&gateway.log_contents(), &log_secrets);
    drop(agent);
    Ok(())
}

/// How many secret names the gateway watches.
async fn watched(gateway: &GatewayProcess) -> Result<f64> {
    let m = gateway.metrics().await?;
    m.get("keygate_gateway_agent_watched_names")
        .copied()
        .context("no watched_names metric")
}

/// Every file under `dir`: (path, contents, mode).
fn read_tree(dir: &Path) -> Result<Vec<(String, String, u32)>> {
    use std::os::unix::fs::PermissionsExt as _;
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d)? {
            let entry = entry?;
            let meta = entry.metadata()?;
            if meta.is_dir() {
                stack.push(entry.path());
                continue;
            }
            let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
            out.push((
                entry.path().display().to_string(),
                text,
                meta.permissions().mode() & 0o777,
            ));
        }
    }
    if out.is_empty() {
        bail!("nothing under {}", dir.display());
    }
    Ok(out)
}

/// The second document: consumer jack with `vault: {}` through the Admin API, the
/// agent's read-only policy on `kv/apisix/consumer/*`, and a request verified with the
/// secret from Vault. The configuration store never sees the secret (the document's
/// point about etcd).
#[tokio::test(flavor = "multi_thread")]
async fn api_security_article_consumer_in_vault() -> Result<()> {
    let bao = OpenBao::start().await?;
    let sh = Shell::new(&bao)?;
    sh.run("vault secrets enable -path=kv -version=1 kv")
        .await?;
    sh.run("tee apisix-policy.hcl << EOF\npath \"kv/apisix/consumer/*\" {\n    capabilities = [\"read\"]\n}\nEOF")
        .await?;
    sh.run("vault policy write apisix-policy apisix-policy.hcl")
        .await?;
    let token = sh
        .run("vault token create -policy=\"apisix-policy\" -field=token")
        .await?;
    let (_agent, gateway) = stack(&bao, token.trim()).await?;
    let upstream = Upstream::start().await?;
    let admin = format!("http://127.0.0.1:{}", gateway.admin_port()?);

    let out = sh
        .run(&format!(
            "curl {admin}/apisix/admin/consumers -H 'X-API-KEY: edd1c9f034335f136f87ad84b625c8f1' -X PUT -d '\n{{\n    \"username\": \"jack\",\n    \"plugins\": {{\n        \"jwt-auth\": {{\n            \"key\": \"your-api-key\",\n            \"vault\": {{}}\n        }}\n    }}\n}}'"
        ))
        .await?;
    expect_stored(&out, "/apisix/consumers/jack")?;
    let secret = keygate_tests::random_secret("article-jack");
    sh.run(&format!(
        "vault kv put kv/apisix/consumer/jack/jwt-auth secret={secret}"
    ))
    .await?;
    let (status, _) = gateway
        .admin(
            "PUT",
            "/apisix/admin/routes/1",
            Some(ADMIN_KEY),
            Some(&format!(
                r#"{{"uri":"/secure/ping","plugins":{{"jwt-auth":{{}}}},"upstream":{{"nodes":{{"{}":1}}}}}}"#,
                upstream.node()
            )),
        )
        .await?;
    ensure!(status == 201);

    // A request from that consumer is verified with the secret fetched from Vault.
    let token = eventually(PICKUP, || gateway.sign("your-api-key")).await?;
    ensure!(signed_with(&token, &secret), "not Vault's secret");
    let (status, body) = gateway
        .get(
            "/secure/ping",
            &[("authorization", &format!("Bearer {token}"))],
        )
        .await?;
    ensure!(
        (status, body.as_str()) == (200, "secure/pong\n"),
        "{status} {body}"
    );

    // The configuration store holds the reference, never the secret.
    let (status, body) = gateway
        .admin("GET", "/apisix/admin/consumers/jack", Some(ADMIN_KEY), None)
        .await?;
    ensure!(status == 200, "{body}");
    let v: Value = serde_json::from_str(&body)?;
    ensure!(
        v["value"]["plugins"]["jwt-auth"]
            == serde_json::json!({"key": "your-api-key", "vault": {}}),
        "{body}"
    );
    for (path, text, _) in read_tree(&gateway.state_dir())? {
        assert_no_secret_in(&text, &[&secret]);
        ensure!(!text.contains(&secret), "{path}");
    }
    assert_no_secret_in(&gateway.log_contents(), &[&secret, token.trim(), ADMIN_KEY]);
    Ok(())
}
