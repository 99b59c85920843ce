//! Building blocks of the fault-injection suite (`tests/tests/fault_injection.rs`):
//!
//! - [`Stack`]: OpenBao seeded with three consumers, an agent (token or AppRole auth,
//!   optionally behind a [`CountingProxy`]), a real upstream and a gateway routing
//!   `/secure/ping` through jwt-auth with `vault: {}` consumers.
//! - [`CountingProxy`]: a TCP forwarder in front of OpenBao that records every HTTP
//!   request line the agent sends, including while OpenBao is down (it accepts, reads
//!   the request, then closes), so the agent's retry rate is measured from the outside.
//! - [`SlowUpstream`]: an HTTP upstream that answers `/slow` after a delay and counts
//!   the requests in flight, for the gateway's drain on SIGTERM.
//! - [`FaultReport`]: the figures of a scenario, printed and written to
//!   `target/fault-report.txt` (one table for every scenario run, then the details).
//! - [`proc_stats`]: file descriptors, sockets and RSS of a process from `/proc`.
//!
//! `KEYGATE_FAULT_LONG=1` selects the long version of every scenario ([`long_mode`]).

use std::collections::HashSet;
use std::fmt::Display;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::agent::{AgentConfig, AgentProcess, metric_value};
use crate::files::write_private_file;
use crate::gateway::{GatewayProcess, Upstream};
use crate::load::{Credential, LoadReport, hs256_token, secs};
use crate::openbao::{AppRoleCreds, OpenBao};
use crate::seed::{AGENT_POLICY, KV1_PREFIX, put_secret, seed_apisix};

/// Environment variable selecting the long version of the suite.
pub const LONG_ENV: &str = "KEYGATE_FAULT_LONG";

/// Whether [`LONG_ENV`] is set (to anything but `0`).
pub fn long_mode() -> bool {
    std::env::var_os(LONG_ENV).is_some_and(|v| !v.is_empty() && v != "0")
}

/// `ci` normally, `long` in [`long_mode`].
pub fn pick<T>(ci: T, long: T) -> T {
    if long_mode() { long } else { ci }
}

/// The consumers every [`Stack`] has, with their jwt-auth keys. `probe` carries no load:
/// it is rotated to prove that the agent → gateway path is live.
pub const JACK_KEY: &str = "jack-key";
pub const JILL_KEY: &str = "jill-key";
pub const PROBE_KEY: &str = "probe-key";
/// The probe consumer's agent name.
pub const PROBE: &str = "consumer/probe/jwt-auth";
/// The AppRole role of [`StackAuth::AppRole`].
pub const ROLE: &str = "keygate-fault";
/// How long the tokens the load client signs are valid.
pub const TOKEN_LIFETIME: Duration = Duration::from_secs(3600);

// ----- the stack -----

/// How the stack's agent authenticates.
#[derive(Debug, Clone)]
pub enum StackAuth {
    /// A token created for the agent's policy, TTL 2 h.
    Token,
    /// AppRole with these `token_ttl` and `token_max_ttl` on the role.
    AppRole { ttl: String, max_ttl: String },
}

/// What to start.
#[derive(Debug, Clone)]
pub struct StackOptions {
    /// The agent's `secrets.refresh_interval`.
    pub refresh: String,
    /// The agent's `vault.timeout`.
    pub vault_timeout: String,
    pub auth: StackAuth,
    /// Put a [`CountingProxy`] between the agent and OpenBao.
    pub via_proxy: bool,
    /// YAML list items appended to the gateway's `routes`.
    pub extra_routes: String,
}

impl Default for StackOptions {
    fn default() -> Self {
        Self {
            refresh: "2s".to_owned(),
            vault_timeout: "2s".to_owned(),
            auth: StackAuth::Token,
            via_proxy: false,
            extra_routes: String::new(),
        }
    }
}

/// OpenBao, agent, upstream and gateway, all real processes (the upstream and the proxy
/// run in the test process).
#[derive(Debug)]
pub struct Stack {
    // Field order is drop order: the gateway goes first, OpenBao last.
    pub gateway: GatewayProcess,
    pub agent: AgentProcess,
    pub upstream: Upstream,
    pub proxy: Option<CountingProxy>,
    pub bao: OpenBao,
    /// jack's current jwt-auth secret.
    pub jack: String,
    /// jill's current jwt-auth secret.
    pub jill: String,
    /// probe's current jwt-auth secret.
    pub probe: String,
    /// The AppRole credentials, with [`StackAuth::AppRole`].
    pub role: Option<AppRoleCreds>,
    pub options: StackOptions,
    creds_dir: tempfile::TempDir,
}

impl Stack {
    /// Starts everything and waits until the agent and the gateway are ready.
    pub async fn start(options: StackOptions) -> Result<Self> {
        let bao = OpenBao::start().await?;
        let seeded = seed_apisix(&bao).await?;
        let probe = crate::seed::random_secret("probe");
        put_secret(&bao, KV1_PREFIX, PROBE, &probe).await?;
        let creds_dir = tempfile::Builder::new()
            .prefix("keygate-fault-creds-")
            .tempdir()
            .context("creating the credentials directory")?;
        let proxy = if options.via_proxy {
            Some(CountingProxy::start(&format!("127.0.0.1:{}", bao.port())).await?)
        } else {
            None
        };
        let vault_host = proxy
            .as_ref()
            .map_or_else(|| bao.addr(), CountingProxy::url);
        let mut config = AgentConfig::new(&vault_host, KV1_PREFIX)
            .refresh_interval(&options.refresh)
            .timeout(&options.vault_timeout);
        let mut role = None;
        match &options.auth {
            StackAuth::Token => {
                let token = bao.create_token(&[AGENT_POLICY], Some("2h")).await?;
                config = config.token(&token);
            }
            StackAuth::AppRole { ttl, max_ttl } => {
                bao.enable_approle().await?;
                let creds = bao
                    .approle_role(
                        ROLE,
                        json!({
                            "token_policies": [AGENT_POLICY],
                            "token_ttl": ttl,
                            "token_max_ttl": max_ttl,
                        }),
                    )
                    .await?;
                let role_id_file = creds_dir.path().join("role-id");
                let secret_id_file = creds_dir.path().join("secret-id");
                write_private_file(&role_id_file, &creds.role_id)?;
                write_private_file(&secret_id_file, &creds.secret_id)?;
                config = config.approle(&role_id_file, &secret_id_file);
                role = Some(creds);
            }
        }
        let agent = AgentProcess::start_ready(config).await?;
        let upstream = Upstream::start().await?;
        let body = gateway_config(agent.socket_path(), &upstream.node(), &options.extra_routes);
        let gateway = GatewayProcess::start_ready(&body).await?;
        Ok(Self {
            gateway,
            agent,
            upstream,
            proxy,
            bao,
            jack: seeded.jack_v1,
            jill: seeded.jill_v1,
            probe,
            role,
            options,
            creds_dir,
        })
    }

    /// The gateway configuration of this stack (for a second gateway).
    pub fn gateway_config(&self) -> String {
        gateway_config(
            self.agent.socket_path(),
            &self.upstream.node(),
            &self.options.extra_routes,
        )
    }

    /// jack's and jill's credentials for the load client, signed with their current
    /// secrets (slot 0: jack, slot 1: jill).
    pub fn credentials(&self) -> Vec<Credential> {
        vec![
            Credential::new("jack", hs256_token(JACK_KEY, &self.jack, TOKEN_LIFETIME)),
            Credential::new("jill", hs256_token(JILL_KEY, &self.jill, TOKEN_LIFETIME)),
        ]
    }

    /// Writes a new secret for jack in OpenBao; returns it.
    pub async fn rotate_jack(&mut self) -> Result<String> {
        let value = crate::seed::random_secret("jack-rotated");
        put_secret(&self.bao, KV1_PREFIX, crate::seed::JACK, &value).await?;
        self.jack.clone_from(&value);
        Ok(value)
    }

    /// Writes a new secret for the probe consumer in OpenBao; returns it.
    pub async fn rotate_probe(&mut self) -> Result<String> {
        let value = crate::seed::random_secret("probe-rotated");
        put_secret(&self.bao, KV1_PREFIX, PROBE, &value).await?;
        self.probe.clone_from(&value);
        Ok(value)
    }

    /// Rotates the probe consumer's secret in OpenBao and waits until the gateway accepts
    /// a token signed with the new secret; returns how long that took. This proves the
    /// whole path OpenBao → agent → Watch stream → gateway is live.
    pub async fn probe_pickup(&mut self, timeout: Duration) -> Result<Duration> {
        let value = self.rotate_probe().await?;
        wait_accepted(&self.gateway, PROBE_KEY, &value, timeout).await
    }

    /// The directory holding the AppRole credential files.
    pub fn creds_dir(&self) -> &Path {
        self.creds_dir.path()
    }
}

/// The gateway configuration of the suite: consumers jack, jill and probe with
/// `vault: {}` jwt-auth credentials, `/secure/ping` behind jwt-auth to `upstream`, the
/// agent's default reconnect backoff spelled out (100 ms doubling to 1 s).
pub fn gateway_config(socket: &Path, upstream: &str, extra_routes: &str) -> String {
    format!(
        r#"
agent: {{ socket: {socket:?}, backoff_min: 100ms, backoff_max: 500ms }}
shutdown_grace: 10s
routes:
  - id: "secure"
    uri: /secure/ping
    plugins: {{ jwt-auth: {{}} }}
    upstream: {{ type: roundrobin, nodes: {{ "{upstream}": 1 }} }}
{extra_routes}
consumers:
  - username: jack
    plugins:
      jwt-auth: {{ key: {JACK_KEY}, vault: {{}} }}
  - username: jill
    plugins:
      jwt-auth: {{ key: {JILL_KEY}, vault: {{}} }}
  - username: probe
    plugins:
      jwt-auth: {{ key: {PROBE_KEY}, vault: {{}} }}
"#
    )
}

// ----- gateway observations -----

/// One gateway metric (the sum of its labelled series).
pub async fn gateway_metric(gateway: &GatewayProcess, name: &str) -> Result<f64> {
    metric_value(&gateway.metrics().await?, name)
}

/// Waits until `gateway` has a Watch stream open and has received more than
/// `snapshots_before` snapshots; returns how long that took (polled every 20 ms).
pub async fn wait_resync(
    gateway: &GatewayProcess,
    snapshots_before: f64,
    timeout: Duration,
) -> Result<Duration> {
    let start = Instant::now();
    let mut last = String::new();
    while start.elapsed() < timeout {
        match gateway.metrics().await {
            Ok(m) => {
                let connected = m.get("keygate_gateway_agent_connected").copied();
                let snapshots = m.get("keygate_gateway_agent_snapshots_total").copied();
                if connected == Some(1.0) && snapshots.is_some_and(|s| s > snapshots_before) {
                    return Ok(start.elapsed());
                }
                last = format!("connected {connected:?}, snapshots {snapshots:?}");
            }
            Err(err) => last = format!("{err:#}"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    bail!("the gateway did not resync within {timeout:?} ({last})")
}

/// Waits until `gateway` accepts a token for `key` signed with `secret` (polled every
/// 25 ms); returns how long that took.
pub async fn wait_accepted(
    gateway: &GatewayProcess,
    key: &str,
    secret: &str,
    timeout: Duration,
) -> Result<Duration> {
    let start = Instant::now();
    let token = hs256_token(key, secret, TOKEN_LIFETIME);
    let mut last = String::new();
    while start.elapsed() < timeout {
        match gateway
            .get("/secure/ping", &[("authorization", &token)])
            .await
        {
            Ok((200, _)) => return Ok(start.elapsed()),
            Ok((status, body)) => last = format!("HTTP {status} {}", body.trim()),
            Err(err) => last = format!("{err:#}"),
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    bail!(
        "a token for {key} signed with its new secret was not accepted within {timeout:?} \
         (last answer: {last})"
    )
}

/// Waits until the agent's `/readyz` answers 200, polling every 20 ms (finer than
/// [`AgentProcess::wait_ready`], for timings); returns how long that took.
pub async fn wait_agent_ready(agent: &mut AgentProcess, timeout: Duration) -> Result<Duration> {
    let start = Instant::now();
    let mut last = String::new();
    while start.elapsed() < timeout {
        if let Some(status) = agent.try_exit_status()? {
            bail!("the agent exited ({status}) before it was ready");
        }
        match agent.ops_get("/readyz").await {
            Ok((200, _)) => return Ok(start.elapsed()),
            Ok((status, body)) => last = format!("HTTP {status} {}", body.trim()),
            Err(err) => last = format!("{err:#}"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    bail!("the agent was not ready within {timeout:?} (last /readyz: {last})")
}

/// What one fresh connection to an HTTP server gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    /// A response with this status.
    Status(u16),
    /// The connection was refused (nobody listens).
    Refused,
    /// Anything else: reset, timeout, no or garbled response.
    Broken(String),
}

/// Opens a new TCP connection to `addr`, sends `GET <path>` with `Connection: close`,
/// and reads the response status (5 s limit).
pub async fn probe_connection(addr: &str, path: &str) -> Probe {
    let attempt = async {
        let mut stream = match TcpStream::connect(addr).await {
            Ok(s) => s,
            Err(err) if err.kind() == std::io::ErrorKind::ConnectionRefused => {
                return Probe::Refused;
            }
            Err(err) => return Probe::Broken(format!("connect: {err}")),
        };
        let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        if let Err(err) = stream.write_all(request.as_bytes()).await {
            return Probe::Broken(format!("write: {err}"));
        }
        let mut response = Vec::new();
        if let Err(err) = stream.read_to_end(&mut response).await {
            return Probe::Broken(format!("read: {err}"));
        }
        let text = String::from_utf8_lossy(&response);
        text.strip_prefix("HTTP/1.1 ")
            .and_then(|rest| rest.get(..3))
            .and_then(|code| code.parse().ok())
            .map_or_else(
                || Probe::Broken(format!("no HTTP response ({} bytes)", response.len())),
                Probe::Status,
            )
    };
    tokio::time::timeout(Duration::from_secs(5), attempt)
        .await
        .unwrap_or_else(|_| Probe::Broken("timeout".to_owned()))
}

// ----- /proc -----

/// What `/proc` says about a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcStats {
    /// Open file descriptors.
    pub fds: usize,
    /// Of which sockets.
    pub sockets: usize,
    /// Of which Unix sockets (the gateway's connections to the agent).
    pub unix_sockets: usize,
    /// Resident set size (VmRSS), KiB.
    pub rss_kib: u64,
    /// Threads.
    pub threads: u64,
}

impl std::fmt::Display for ProcStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} fds ({} sockets, {} unix), RSS {} KiB, {} threads",
            self.fds, self.sockets, self.unix_sockets, self.rss_kib, self.threads
        )
    }
}

/// File descriptors (`/proc/<pid>/fd`), sockets among them (Unix ones found by inode in
/// `/proc/<pid>/net/unix`), VmRSS and Threads (`/proc/<pid>/status`).
pub fn proc_stats(pid: u32) -> Result<ProcStats> {
    let unix_inodes: HashSet<u64> = std::fs::read_to_string(format!("/proc/{pid}/net/unix"))
        .with_context(|| format!("reading /proc/{pid}/net/unix"))?
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().nth(6)?.parse().ok())
        .collect();
    let mut fds = 0;
    let mut sockets = 0;
    let mut unix_sockets = 0;
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd"))
        .with_context(|| format!("listing /proc/{pid}/fd"))?
    {
        let Ok(entry) = entry else { continue };
        // An fd closed between the listing and the readlink is simply not counted.
        let Ok(target) = std::fs::read_link(entry.path()) else {
            continue;
        };
        fds += 1;
        let target = target.to_string_lossy();
        if let Some(inode) = target
            .strip_prefix("socket:[")
            .and_then(|s| s.strip_suffix(']'))
        {
            sockets += 1;
            if inode.parse().is_ok_and(|i: u64| unix_inodes.contains(&i)) {
                unix_sockets += 1;
            }
        }
    }
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let field = |name: &str| -> Result<u64> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| anyhow!("no {name} in /proc/{pid}/status"))
    };
    Ok(ProcStats {
        fds,
        sockets,
        unix_sockets,
        rss_kib: field("VmRSS:")?,
        threads: field("Threads:")?,
    })
}

// ----- counting TCP proxy -----

/// One HTTP request the proxy saw.
#[derive(Debug, Clone)]
pub struct ProxiedRequest {
    pub at: Instant,
    /// `GET /v1/kv/apisix/consumer/jack/jwt-auth`, without the query string.
    pub line: String,
    /// Whether OpenBao was reachable (the request was forwarded).
    pub forwarded: bool,
}

/// A TCP forwarder in front of OpenBao that records the request line of every HTTP/1.1
/// request going through it. When OpenBao does not accept the connection, the proxy
/// still reads and records the client's request, then closes the connection without an
/// answer: the client's retries are counted even while the server is down.
#[derive(Debug)]
pub struct CountingProxy {
    addr: std::net::SocketAddr,
    requests: Arc<Mutex<Vec<ProxiedRequest>>>,
    connections: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl CountingProxy {
    /// Listens on 127.0.0.1:0 and forwards to `upstream` (`host:port`).
    pub async fn start(upstream: &str) -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding the counting proxy")?;
        let addr = listener.local_addr().context("proxy address")?;
        let requests = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(AtomicUsize::new(0));
        let upstream = upstream.to_owned();
        let (reqs, conns) = (requests.clone(), connections.clone());
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                conns.fetch_add(1, Ordering::Relaxed);
                tokio::spawn(proxy_connection(client, upstream.clone(), reqs.clone()));
            }
        });
        Ok(Self {
            addr,
            requests,
            connections,
            task,
        })
    }

    /// `http://127.0.0.1:<port>`, the agent's `vault.host`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every request seen so far.
    pub fn requests(&self) -> Vec<ProxiedRequest> {
        self.requests
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The requests seen in `[from, to)`.
    pub fn requests_between(&self, from: Instant, to: Instant) -> Vec<ProxiedRequest> {
        self.requests()
            .into_iter()
            .filter(|r| r.at >= from && r.at < to)
            .collect()
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::Relaxed)
    }
}

impl Drop for CountingProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Finds HTTP/1.1 request lines in a byte stream (a line `METHOD /v1/... HTTP/1.1`).
#[derive(Debug, Default)]
struct RequestLines {
    line: Vec<u8>,
}

impl RequestLines {
    fn feed(&mut self, bytes: &[u8], forwarded: bool, out: &Mutex<Vec<ProxiedRequest>>) {
        for &b in bytes {
            if b == b'\n' {
                if let Some(line) = request_line(&self.line) {
                    out.lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .push(ProxiedRequest {
                            at: Instant::now(),
                            line,
                            forwarded,
                        });
                }
                self.line.clear();
            } else if self.line.len() < 1024 {
                self.line.push(b);
            }
        }
    }
}

fn request_line(line: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(line).ok()?.trim_end_matches('\r');
    let rest = text.strip_suffix(" HTTP/1.1")?;
    let (method, target) = rest.split_once(' ')?;
    let known = ["GET", "PUT", "POST", "DELETE", "LIST", "PATCH", "HEAD"];
    if !known.contains(&method) || !target.starts_with("/v1/") {
        return None;
    }
    let path = target.split('?').next().unwrap_or(target);
    Some(format!("{method} {path}"))
}

async fn proxy_connection(
    mut client: TcpStream,
    upstream: String,
    requests: Arc<Mutex<Vec<ProxiedRequest>>>,
) {
    let _ = client.set_nodelay(true);
    let server = tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(&upstream)).await;
    let Ok(Ok(server)) = server else {
        // OpenBao is down: record what the client sends for a moment, answer nothing.
        let mut lines = RequestLines::default();
        let mut buf = [0u8; 4096];
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        while let Ok(Ok(n)) = tokio::time::timeout_at(deadline, client.read(&mut buf)).await {
            if n == 0 {
                break;
            }
            lines.feed(buf.get(..n).unwrap_or_default(), false, &requests);
            if lines.line.is_empty() && buf.get(..n).is_some_and(|b| b.ends_with(b"\r\n\r\n")) {
                break;
            }
        }
        return;
    };
    let _ = server.set_nodelay(true);
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let upload = async {
        let mut lines = RequestLines::default();
        let mut buf = [0u8; 16 * 1024];
        loop {
            match client_read.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let chunk = buf.get(..n).unwrap_or_default();
                    lines.feed(chunk, true, &requests);
                    if server_write.write_all(chunk).await.is_err() {
                        break;
                    }
                }
            }
        }
        let _ = server_write.shutdown().await;
    };
    let download = async {
        let _ = tokio::io::copy(&mut server_read, &mut client_write).await;
        let _ = client_write.shutdown().await;
    };
    tokio::join!(upload, download);
}

// ----- slow upstream -----

/// An HTTP/1.1 upstream: `/slow` answers `slow/done\n` after the configured delay,
/// anything else answers `fast\n` at once. Counts requests in flight and completed.
#[derive(Debug)]
pub struct SlowUpstream {
    addr: std::net::SocketAddr,
    delay: Duration,
    in_flight: Arc<AtomicUsize>,
    completed: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl SlowUpstream {
    /// Binds 127.0.0.1:0; `/slow` takes `delay`.
    pub async fn start(delay: Duration) -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding the slow upstream")?;
        let addr = listener.local_addr().context("slow upstream address")?;
        let in_flight = Arc::new(AtomicUsize::new(0));
        let completed = Arc::new(AtomicUsize::new(0));
        let (inf, done) = (in_flight.clone(), completed.clone());
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(slow_connection(stream, delay, inf.clone(), done.clone()));
            }
        });
        Ok(Self {
            addr,
            delay,
            in_flight,
            completed,
            task,
        })
    }

    /// `host:port`, as it goes into `nodes`.
    pub fn node(&self) -> String {
        self.addr.to_string()
    }

    /// The delay of `/slow`.
    pub fn delay(&self) -> Duration {
        self.delay
    }

    /// `/slow` requests received and not yet answered.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::SeqCst)
    }

    /// `/slow` requests answered.
    pub fn completed(&self) -> usize {
        self.completed.load(Ordering::SeqCst)
    }
}

impl Drop for SlowUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn slow_connection(
    mut stream: TcpStream,
    delay: Duration,
    in_flight: Arc<AtomicUsize>,
    completed: Arc<AtomicUsize>,
) {
    let mut buf: Vec<u8> = Vec::new();
    loop {
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
        // Requests in this suite carry no body.
        buf.drain(..head_end);
        let path = head
            .split(' ')
            .nth(1)
            .and_then(|p| p.split('?').next())
            .unwrap_or("/")
            .to_owned();
        let body = if path == "/slow" {
            in_flight.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(delay).await;
            in_flight.fetch_sub(1, Ordering::SeqCst);
            completed.fetch_add(1, Ordering::SeqCst);
            "slow/done\n"
        } else {
            "fast\n"
        };
        let response = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        if stream.write_all(response.as_bytes()).await.is_err() {
            return;
        }
    }
}

// ----- the report -----

/// The figures of one scenario. [`FaultReport::finish`] prints them, writes them to
/// `target/fault-report/<id>.txt`, regenerates `target/fault-report.txt` from every
/// scenario file there, and fails if a check failed.
#[derive(Debug)]
pub struct FaultReport {
    id: String,
    title: String,
    started: Instant,
    sent: Option<usize>,
    non_2xx: Option<usize>,
    longest_gap: Option<Duration>,
    recovery: Option<(String, Duration)>,
    figures: Vec<(String, String)>,
    notes: Vec<String>,
    problems: Vec<String>,
}

impl FaultReport {
    /// `id` sorts the table (e.g. `01-kill9`).
    pub fn new(id: &str, title: &str) -> Self {
        Self {
            id: id.to_owned(),
            title: title.to_owned(),
            started: Instant::now(),
            sent: None,
            non_2xx: None,
            longest_gap: None,
            recovery: None,
            figures: Vec::new(),
            notes: Vec::new(),
            problems: Vec::new(),
        }
    }

    /// Takes the table's load columns from `load` and adds its summary as a figure.
    pub fn load(&mut self, name: &str, load: &LoadReport) {
        self.sent = Some(self.sent.unwrap_or(0) + load.sent());
        self.non_2xx = Some(self.non_2xx.unwrap_or(0) + (load.sent() - load.ok()));
        let (gap, _) = load.longest_success_gap();
        self.longest_gap = Some(self.longest_gap.map_or(gap, |g| g.max(gap)));
        self.figure(name, load.summary());
    }

    /// The table's recovery column: `what` took `d`.
    pub fn recovery(&mut self, what: &str, d: Duration) {
        self.recovery = Some((what.to_owned(), d));
        self.figure(&format!("recovery: {what}"), secs(d));
    }

    /// A remark for the table's notes column (e.g. why non-2xx answers were expected).
    pub fn note(&mut self, text: &str) {
        self.notes.push(text.to_owned());
    }

    /// A named figure.
    pub fn figure(&mut self, name: &str, value: impl Display) {
        self.figures.push((name.to_owned(), value.to_string()));
    }

    /// Records a failed check unless `ok`.
    pub fn check(&mut self, ok: bool, problem: impl FnOnce() -> String) {
        if !ok {
            self.problems.push(problem());
        }
    }

    /// Records an error from a step of the scenario as a failed check.
    pub fn check_result<T>(&mut self, what: &str, result: Result<T>) -> Option<T> {
        match result {
            Ok(v) => Some(v),
            Err(err) => {
                self.problems.push(format!("{what}: {err:#}"));
                None
            }
        }
    }

    /// The problems so far.
    pub fn problems(&self) -> &[String] {
        &self.problems
    }

    fn row(&self) -> String {
        let opt = |v: Option<usize>| v.map_or_else(|| "-".to_owned(), |v| v.to_string());
        let verdict = if self.problems.is_empty() {
            "pass".to_owned()
        } else {
            format!("FAIL ({})", self.problems.len())
        };
        let mut notes: Vec<String> = self
            .recovery
            .iter()
            .map(|(what, _)| format!("recovery = {what}"))
            .collect();
        notes.extend(self.notes.iter().cloned());
        format!(
            "{:<30} {:>7} {:>8} {:>12} {:>10}  {:<8} {}",
            self.id,
            opt(self.sent),
            opt(self.non_2xx),
            self.longest_gap
                .map_or_else(|| "-".to_owned(), |g| format!("{} ms", g.as_millis())),
            self.recovery
                .as_ref()
                .map_or_else(|| "-".to_owned(), |(_, d)| secs(*d)),
            verdict,
            notes.join("; "),
        )
    }

    fn text(&self) -> String {
        use std::fmt::Write as _;
        let mut out = format!(
            "== {} — {} ({}{})\n",
            self.id,
            self.title,
            if long_mode() { "long, " } else { "" },
            secs(self.started.elapsed())
        );
        for (name, value) in &self.figures {
            let _ = writeln!(out, "   {name}: {value}");
        }
        for problem in &self.problems {
            let _ = writeln!(out, "   FAILED CHECK: {problem}");
        }
        out
    }

    /// Prints and writes the report; fails with every failed check.
    #[expect(
        clippy::print_stdout,
        reason = "the suite's figures are meant to be read on the console"
    )]
    pub fn finish(self) -> Result<()> {
        let text = self.text();
        println!("{}\n{text}", self.row());
        if let Err(err) = self.write_files(&text) {
            println!("(could not write the fault report file: {err:#})");
        }
        ensure!(
            self.problems.is_empty(),
            "{} failed:\n  {}",
            self.id,
            self.problems.join("\n  ")
        );
        Ok(())
    }

    fn write_files(&self, text: &str) -> Result<()> {
        let target = target_dir()?;
        let dir = target.join("fault-report");
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let file = dir.join(format!("{}.txt", self.id));
        std::fs::write(&file, format!("{}\n{text}", self.row()))
            .with_context(|| format!("writing {}", file.display()))?;
        // The summary of every scenario file there (the latest run of each).
        let mut entries: Vec<PathBuf> = std::fs::read_dir(&dir)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "txt"))
            .collect();
        entries.sort();
        let mut rows = String::new();
        let mut details = String::new();
        for path in entries {
            let content = std::fs::read_to_string(&path).unwrap_or_default();
            let (row, rest) = content.split_once('\n').unwrap_or((&content, ""));
            rows.push_str(row);
            rows.push('\n');
            details.push_str(rest);
            details.push('\n');
        }
        let header = format!(
            "keygate fault-injection report (cargo nextest run -p keygate-tests --test fault_injection; \
             {LONG_ENV}=1 for the long version)\n\n{:<30} {:>7} {:>8} {:>12} {:>10}  {:<8} {}\n",
            "scenario", "sent", "non-2xx", "longest gap", "recovery", "verdict", "notes"
        );
        let summary = target.join("fault-report.txt");
        let tmp = target.join(format!("fault-report.txt.{}", std::process::id()));
        std::fs::write(&tmp, format!("{header}{rows}\n{details}"))
            .with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, &summary)
            .with_context(|| format!("renaming to {}", summary.display()))
    }
}

/// The cargo target directory: `$CARGO_TARGET_DIR`, else two levels above the test
/// executable (`target/<profile>/deps/<test>`).
pub fn target_dir() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR") {
        return Ok(PathBuf::from(dir));
    }
    let exe = std::env::current_exe().context("locating the test executable")?;
    exe.parent()
        .and_then(Path::parent)
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .ok_or_else(|| anyhow!("unexpected test executable path {}", exe.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_request_lines() {
        assert_eq!(
            request_line(b"GET /v1/kv/apisix/consumer/jack/jwt-auth HTTP/1.1\r").as_deref(),
            Some("GET /v1/kv/apisix/consumer/jack/jwt-auth")
        );
        assert_eq!(
            request_line(b"POST /v1/auth/token/lookup-self?x=1 HTTP/1.1\r").as_deref(),
            Some("POST /v1/auth/token/lookup-self")
        );
        assert_eq!(request_line(b"host: 127.0.0.1\r"), None);
        assert_eq!(request_line(b"{\"GET /v1/x HTTP/1.0\"}"), None);
        let out = Mutex::new(Vec::new());
        let mut lines = RequestLines::default();
        lines.feed(b"GET /v1/a HT", true, &out);
        lines.feed(
            b"TP/1.1\r\nhost: x\r\n\r\nPUT /v1/b HTTP/1.1\r\n",
            true,
            &out,
        );
        let seen: Vec<String> = out
            .into_inner()
            .unwrap()
            .into_iter()
            .map(|r| r.line)
            .collect();
        assert_eq!(seen, vec!["GET /v1/a", "PUT /v1/b"]);
    }

    #[test]
    fn reads_own_proc_stats() {
        let stats = proc_stats(std::process::id()).unwrap();
        assert!(stats.fds >= 3, "{stats}");
        assert!(stats.rss_kib > 0, "{stats}");
    }
}
