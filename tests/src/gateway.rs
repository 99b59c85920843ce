//! The real `keygate-gateway` binary as a child process (config written to a temporary
//! directory, listener and status listener on free ports, output captured to a log
//! file), and a real upstream HTTP server for it to proxy to.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};
use nix::sys::signal::Signal;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::agent::parse_prometheus;
use crate::ports::free_port;
use crate::process::{log_tail, signal_child, wait_for_exit};

/// Environment variable naming the gateway binary to test.
pub const GATEWAY_BIN_ENV: &str = "KEYGATE_GATEWAY_BIN";

/// The gateway's log filter in tests (debug, so "no secret in the log" checks cover it).
pub const DEFAULT_GATEWAY_LOG: &str = "keygate_gateway=debug,info";

/// How long [`GatewayProcess::start_ready`] waits for `/readyz`.
pub const GATEWAY_READY_TIMEOUT: Duration = Duration::from_secs(30);

/// A `keygate-gateway` process owned by a test. Dropping it kills the process.
#[derive(Debug)]
pub struct GatewayProcess {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
    status_port: u16,
    child: Option<Child>,
    http: reqwest::Client,
    /// Run as this (uid, gid) instead of the test's own user.
    run_as: Option<(u32, u32)>,
    /// The Admin API: its port and the value of `admin.key` in the config.
    admin: Option<(u16, String)>,
    /// Extra environment variables for the gateway process.
    env: Vec<(String, String)>,
}

impl GatewayProcess {
    /// Writes `body` (the configuration without `listen`/`status_listen`, which this
    /// helper adds) and starts the gateway, without waiting for readiness.
    pub async fn start(body: &str) -> Result<Self> {
        Self::start_with(body, None).await
    }

    /// [`Self::start`] as another user (the test must run as root): the deployment's
    /// shape, where the gateway does not share the agent's uid. Its directory is made
    /// world-readable so that user can read the config.
    pub async fn start_as(body: &str, uid: u32, gid: u32) -> Result<Self> {
        Self::start_with(body, Some((uid, gid))).await
    }

    /// [`Self::start`] with the Admin API on a free port: `admin.key` is `key` (a
    /// literal, `$env://NAME` or `$secret://vault/<path>/<field>`) and `admin.state_dir`
    /// is [`Self::state_dir`]. `env` is added to the process's environment.
    pub async fn start_with_admin(body: &str, key: &str, env: &[(&str, &str)]) -> Result<Self> {
        Self::start_full(
            body,
            None,
            Some(key.to_owned()),
            env.iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        )
        .await
    }

    /// [`Self::start_with_admin`], then [`Self::wait_ready`].
    pub async fn start_ready_with_admin(body: &str, key: &str) -> Result<Self> {
        let mut gateway = Self::start_with_admin(body, key, &[]).await?;
        gateway.wait_ready(GATEWAY_READY_TIMEOUT).await?;
        Ok(gateway)
    }

    async fn start_with(body: &str, run_as: Option<(u32, u32)>) -> Result<Self> {
        Self::start_full(body, run_as, None, Vec::new()).await
    }

    async fn start_full(
        body: &str,
        run_as: Option<(u32, u32)>,
        admin_key: Option<String>,
        env: Vec<(String, String)>,
    ) -> Result<Self> {
        let bin = gateway_binary()?;
        let dir = tempfile::Builder::new()
            .prefix("keygate-gateway-")
            .tempdir()
            .context("creating a temporary directory for the gateway")?;
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(10))
            .build()
            .context("building the HTTP client")?;
        let mut gateway = Self {
            dir,
            bin,
            port: free_port()?,
            status_port: free_port()?,
            child: None,
            http,
            run_as,
            admin: match admin_key {
                Some(key) => Some((free_port()?, key)),
                None => None,
            },
            env,
        };
        if run_as.is_some() {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(gateway.dir.path(), std::fs::Permissions::from_mode(0o755))
                .context("opening the gateway directory to its user")?;
        }
        gateway.write_config(body)?;
        gateway.spawn()?;
        Ok(gateway)
    }

    /// [`Self::start`], then [`Self::wait_ready`].
    pub async fn start_ready(body: &str) -> Result<Self> {
        let mut gateway = Self::start(body).await?;
        gateway.wait_ready(GATEWAY_READY_TIMEOUT).await?;
        Ok(gateway)
    }

    /// `http://127.0.0.1:<port>`.
    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The full URL of `path` on the proxy listener.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url())
    }

    /// The config file.
    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("gateway.yaml")
    }

    /// The log file (stdout and stderr).
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("gateway.log")
    }

    /// The log so far.
    pub fn log_contents(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// `<dir>/state`, the Admin API's `admin.state_dir`.
    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// The gateway's temporary directory (config, log, state).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `http://127.0.0.1:<admin port>`, if the Admin API is on.
    pub fn admin_base_url(&self) -> Option<String> {
        self.admin
            .as_ref()
            .map(|(port, _)| format!("http://127.0.0.1:{port}"))
    }

    /// The Admin API's port (fails if it is off).
    pub fn admin_port(&self) -> Result<u16> {
        self.admin
            .as_ref()
            .map(|(port, _)| *port)
            .ok_or_else(|| anyhow!("this gateway has no Admin API"))
    }

    /// The proxy listener's port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// A request to the Admin API: `method path` with `key` as `X-API-KEY` (none when
    /// `None`) and a body. Returns status and body.
    pub async fn admin(
        &self,
        method: &str,
        path: &str,
        key: Option<&str>,
        body: Option<&str>,
    ) -> Result<(u16, String)> {
        let base = self
            .admin_base_url()
            .ok_or_else(|| anyhow!("this gateway has no Admin API"))?;
        let url = format!("{base}{path}");
        let method = reqwest::Method::from_bytes(method.as_bytes())
            .with_context(|| format!("bad method {method}"))?;
        let mut req = self.http.request(method.clone(), &url);
        if let Some(key) = key {
            req = req.header("X-API-KEY", key);
        }
        if let Some(body) = body {
            req = req.body(body.to_owned());
        }
        crate::process::send_for_text(req, &format!("{method} {url}")).await
    }

    /// Rewrites the config file (same ports); the gateway reloads it on change/SIGHUP.
    pub fn write_config(&self, body: &str) -> Result<()> {
        let admin = match &self.admin {
            Some((port, key)) => format!(
                "admin: {{ listen: \"127.0.0.1:{port}\", key: {}, state_dir: {} }}\n",
                serde_json::to_string(key).context("quoting the admin key")?,
                serde_json::to_string(&self.state_dir().display().to_string())
                    .context("quoting the state dir")?,
            ),
            None => String::new(),
        };
        let yaml = format!(
            "listen: 127.0.0.1:{}\nstatus_listen: 127.0.0.1:{}\n{admin}{body}",
            self.port, self.status_port
        );
        // Write then rename, as config tools do, so the gateway never reads half a file.
        let tmp = self.dir.path().join("gateway.yaml.tmp");
        std::fs::write(&tmp, yaml).context("writing the gateway config")?;
        std::fs::rename(&tmp, self.config_path()).context("renaming the gateway config")
    }

    /// `GET <proxy><path>` with `headers`: status and body.
    pub async fn get(&self, path: &str, headers: &[(&str, &str)]) -> Result<(u16, String)> {
        let url = self.url(path);
        let mut req = self.http.get(&url);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = req.send().await.with_context(|| format!("GET {url}"))?;
        let status = resp.status().as_u16();
        let body = resp
            .text()
            .await
            .with_context(|| format!("reading GET {url}"))?;
        Ok((status, body))
    }

    /// `GET <status listener><path>`: status and body.
    pub async fn status_get(&self, path: &str) -> Result<(u16, String)> {
        let url = format!("http://127.0.0.1:{}{path}", self.status_port);
        crate::process::http_get(&self.http, &url).await
    }

    /// `/metrics`, parsed.
    pub async fn metrics(&self) -> Result<HashMap<String, f64>> {
        let (status, body) = self.status_get("/metrics").await?;
        ensure!(status == 200, "/metrics answered HTTP {status}");
        Ok(parse_prometheus(&body))
    }

    /// Signs a token through the sign endpoint (`plugin_attr.jwt-auth.sign_endpoint`).
    pub async fn sign(&self, key: &str) -> Result<String> {
        let (status, body) = self
            .get(&format!("/apisix/plugin/jwt/sign?key={key}"), &[])
            .await?;
        ensure!(
            status == 200,
            "sign endpoint answered HTTP {status}: {body}"
        );
        Ok(body)
    }

    /// Waits until `/readyz` answers 200; fails early if the process exits.
    pub async fn wait_ready(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_exit_status()? {
                bail!(
                    "keygate-gateway exited ({status}) before it was ready; its log ends with:\n{}",
                    log_tail(&self.log_contents(), 40)
                );
            }
            let last = match self.status_get("/readyz").await {
                Ok((200, _)) => return Ok(()),
                Ok((code, body)) => format!("HTTP {code}: {}", body.trim()),
                Err(err) => format!("{err:#}"),
            };
            if Instant::now() >= deadline {
                bail!(
                    "keygate-gateway not ready within {timeout:?} (last /readyz: {last}); its log ends with:\n{}",
                    log_tail(&self.log_contents(), 40)
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The exit status if the process has exited.
    pub fn try_exit_status(&mut self) -> Result<Option<ExitStatus>> {
        match self.child.as_mut() {
            Some(child) => child.try_wait().context("polling the gateway process"),
            None => Ok(None),
        }
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGTERM, and waits up to 15 s for a graceful exit.
    pub async fn sigterm(&mut self) -> Result<ExitStatus> {
        let mut child = self
            .child
            .take()
            .ok_or_else(|| anyhow!("the gateway is not running"))?;
        signal_child(&child, Signal::SIGTERM)?;
        wait_for_exit(&mut child, Duration::from_secs(15)).await
    }

    /// SIGKILL, and waits for the process to be gone.
    pub async fn kill9(&mut self) -> Result<ExitStatus> {
        let mut child = self
            .child
            .take()
            .ok_or_else(|| anyhow!("the gateway is not running"))?;
        signal_child(&child, Signal::SIGKILL)?;
        wait_for_exit(&mut child, Duration::from_secs(10)).await
    }

    /// Starts the process again with the same directory, config and ports (after
    /// [`Self::kill9`] or [`Self::sigterm`]).
    pub fn start_again(&mut self) -> Result<()> {
        ensure!(self.child.is_none(), "the gateway is still running");
        self.spawn()
    }

    /// SIGHUP (reload the config file).
    pub fn sighup(&self) -> Result<()> {
        let child = self
            .child
            .as_ref()
            .ok_or_else(|| anyhow!("the gateway is not running"))?;
        signal_child(child, Signal::SIGHUP)
    }

    fn spawn(&mut self) -> Result<()> {
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.log_path())
            .context("opening the gateway log file")?;
        let log_err = log.try_clone().context("cloning the log file handle")?;
        let filter = std::env::var("KEYGATE_TEST_GATEWAY_LOG")
            .unwrap_or_else(|_| DEFAULT_GATEWAY_LOG.into());
        let mut cmd = Command::new(&self.bin);
        if let Some((uid, gid)) = self.run_as {
            use std::os::unix::process::CommandExt;
            // std drops the supplementary groups too when root changes uid.
            cmd.uid(uid).gid(gid);
        }
        let child = cmd
            .arg("run")
            .arg("--config")
            .arg(self.config_path())
            .env_remove("RUST_LOG")
            .env_remove("KEYGATE_GATEWAY_CONFIG")
            .env("KEYGATE_LOG", filter)
            .env("RUST_BACKTRACE", "1")
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log_err))
            .spawn()
            .with_context(|| format!("starting {}", self.bin.display()))?;
        self.child = Some(child);
        Ok(())
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = signal_child(&child, Signal::SIGKILL);
            let _ = child.wait();
        }
        // Harness-wide: no secret made by `random_secret` may be in the log. Skipped
        // while unwinding (the test failed already; a second panic would abort).
        if !std::thread::panicking()
            && let Some(index) = crate::leaks::leaked_in(&self.log_contents())
        {
            #[expect(
                clippy::panic,
                reason = "a leaked secret fails the test that leaked it"
            )]
            {
                panic!(
                    "remembered secret #{index} appears in the gateway log {}",
                    self.log_path().display()
                );
            }
        }
    }
}

/// Finds the gateway binary: `$KEYGATE_GATEWAY_BIN`, else `keygate-gateway` next to the
/// test executable's profile directory (`target/<profile>/keygate-gateway`).
pub fn gateway_binary() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os(GATEWAY_BIN_ENV) {
        let path = PathBuf::from(path);
        ensure!(
            path.is_file(),
            "{GATEWAY_BIN_ENV}={} does not name a file",
            path.display()
        );
        return Ok(path);
    }
    let exe = std::env::current_exe().context("locating the test executable")?;
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .ok_or_else(|| anyhow!("unexpected test executable path {}", exe.display()))?;
    let candidate = profile_dir.join("keygate-gateway");
    ensure!(
        candidate.is_file(),
        "the gateway binary {} does not exist: run `cargo build --workspace --bins` first \
         (scripts/test.sh does), or set {GATEWAY_BIN_ENV}",
        candidate.display()
    );
    Ok(candidate)
}

/// A real HTTP/1.1 upstream on a free port, as in the seed tutorial: `GET /secure/ping`
/// answers `secure/pong\n`; every response echoes the `X-Consumer-Username` it received
/// in `x-seen-consumer` (`-` if none). Keep-alive is supported. Stops when dropped.
#[derive(Debug)]
pub struct Upstream {
    addr: std::net::SocketAddr,
    hits: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Upstream {
    /// Binds 127.0.0.1:0 and serves.
    pub async fn start() -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding the upstream")?;
        let addr = listener.local_addr().context("upstream address")?;
        let hits = Arc::new(AtomicUsize::new(0));
        let counter = hits.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve_connection(stream, counter.clone()));
            }
        });
        Ok(Self { addr, hits, task })
    }

    /// `host:port`, as it goes into `nodes`.
    pub fn node(&self) -> String {
        self.addr.to_string()
    }

    /// Requests served so far.
    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::Relaxed)
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve_connection(mut stream: TcpStream, hits: Arc<AtomicUsize>) {
    let mut buf: Vec<u8> = Vec::new();
    loop {
        // Read one request head.
        let head_end = loop {
            if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break pos + 4;
            }
            let mut chunk = [0u8; 4096];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(chunk.get(..n).unwrap_or_default()),
            }
        };
        let head = String::from_utf8_lossy(buf.get(..head_end).unwrap_or_default()).into_owned();
        let mut lines = head.split("\r\n");
        let path = lines
            .next()
            .and_then(|l| l.split(' ').nth(1))
            .unwrap_or("/")
            .to_owned();
        let mut content_length = 0usize;
        let mut consumer = "-".to_owned();
        for line in lines {
            if let Some((name, value)) = line.split_once(':') {
                let value = value.trim();
                if name.eq_ignore_ascii_case("content-length") {
                    content_length = value.parse().unwrap_or(0);
                } else if name.eq_ignore_ascii_case("x-consumer-username") {
                    consumer = value.to_owned();
                }
            }
        }
        // Discard the request body.
        while buf.len() < head_end + content_length {
            let mut chunk = [0u8; 4096];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(chunk.get(..n).unwrap_or_default()),
            }
        }
        buf.drain(..head_end + content_length);
        hits.fetch_add(1, Ordering::Relaxed);
        let (status, body) = if path.split('?').next() == Some("/secure/ping") {
            ("200 OK", "secure/pong\n")
        } else {
            ("404 Not Found", "not found\n")
        };
        let response = format!(
            "HTTP/1.1 {status}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nx-seen-consumer: {consumer}\r\n\r\n{body}",
            body.len()
        );
        if stream.write_all(response.as_bytes()).await.is_err() {
            return;
        }
    }
}
