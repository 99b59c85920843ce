//! The real `keygate-agent` binary as a child process: a config file written from
//! [`AgentConfig`], its socket in a temporary directory, its ops HTTP port on a free
//! port, stdout and stderr captured to a log file, and signals to kill, stop, pause and
//! restart it.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};
use nix::sys::signal::Signal;
use serde::Serialize;
use serde_json::{Value, json};

use crate::logs::assert_no_secret_in;
use crate::ports::free_port;
use crate::process::{log_tail, report_on_drop, signal_child, stop_child, wait_for_exit};

/// Environment variable naming the agent binary to test.
pub const AGENT_BIN_ENV: &str = "KEYGATE_AGENT_BIN";

/// Environment variable overriding the agent's log filter in tests (`KEYGATE_LOG`).
pub const AGENT_LOG_ENV: &str = "KEYGATE_TEST_AGENT_LOG";

/// The agent's log filter unless a test or [`AGENT_LOG_ENV`] says otherwise: our own
/// debug logs are included so that the "no secret in the log" checks cover them.
pub const DEFAULT_LOG_FILTER: &str = "keygate_agent=debug,info";

/// How long [`AgentProcess::start_ready`] waits for `/readyz`.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// How the agent authenticates to Vault.
#[derive(Debug, Clone)]
pub enum AgentAuth {
    /// `vault.token`: a static token.
    Token(String),
    /// `vault.token_file`.
    TokenFile(PathBuf),
    /// `vault.approle`.
    AppRole {
        role_id_file: PathBuf,
        secret_id_file: PathBuf,
        /// `None`: the agent's default mount (`approle`).
        mount: Option<String>,
    },
    /// `vault.kubernetes`: a service-account JWT read from `token_path`.
    Kubernetes {
        role: String,
        token_path: PathBuf,
        /// `None`: the agent's default mount (`kubernetes`).
        mount: Option<String>,
    },
    /// Nothing in the file (for tests of the `VAULT_TOKEN` fallback or of config errors).
    None,
}

/// One entry of the config's `peers` list.
#[derive(Debug, Clone, Serialize)]
pub struct Peer {
    pub name: String,
    pub uids: Vec<u32>,
    pub gids: Vec<u32>,
    pub paths: Vec<String>,
    /// `write_paths`: names the peer may `Put`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub write_paths: Vec<String>,
}

impl Peer {
    /// A peer matched by uid, allowed `paths`.
    pub fn uid(name: &str, uid: u32, paths: &[&str]) -> Self {
        Self {
            name: name.to_owned(),
            uids: vec![uid],
            gids: Vec::new(),
            paths: paths.iter().map(|p| (*p).to_owned()).collect(),
            write_paths: Vec::new(),
        }
    }

    /// A peer matched by gid, allowed `paths`.
    pub fn gid(name: &str, gid: u32, paths: &[&str]) -> Self {
        Self {
            name: name.to_owned(),
            uids: Vec::new(),
            gids: vec![gid],
            paths: paths.iter().map(|p| (*p).to_owned()).collect(),
            write_paths: Vec::new(),
        }
    }

    /// Lets the peer write `write_paths` too.
    pub fn writing(mut self, write_paths: &[&str]) -> Self {
        self.write_paths = write_paths.iter().map(|p| (*p).to_owned()).collect();
        self
    }
}

/// The agent's configuration file (see docs/agent.md), built field by field.
///
/// The socket path and the ops listen address are chosen by [`AgentProcess`].
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// `vault.host`; `None` leaves it out (VAULT_ADDR fallback).
    pub vault_host: Option<String>,
    /// `vault.timeout`, e.g. `"5s"` or `"10"`.
    pub timeout: Option<String>,
    pub auth: AgentAuth,
    /// `vault.prefix`.
    pub prefix: String,
    pub ca_file: Option<PathBuf>,
    /// `vault.kv_version`: `"1"`, `"2"` or `"auto"`.
    pub kv_version: Option<String>,
    pub revoke_on_shutdown: Option<bool>,
    /// `secrets.refresh_interval`, e.g. `"2s"`.
    pub refresh_interval: Option<String>,
    /// `secrets.preload`.
    pub preload: Vec<String>,
    /// `socket.mode`, e.g. `"0660"`.
    pub socket_mode: Option<String>,
    /// `socket.group`.
    pub socket_group: Option<String>,
    /// `peers`; `None` leaves the section out (only the agent's own uid, all names).
    pub peers: Option<Vec<Peer>>,
    /// `--log-format`.
    pub log_format: Option<String>,
    /// `KEYGATE_LOG` for the agent.
    pub log_filter: String,
    /// Extra environment variables for the agent process.
    pub env: Vec<(String, String)>,
    /// `certificates`: PKI certificates the agent issues, as JSON objects.
    pub certificates: Vec<Value>,
}

impl AgentConfig {
    /// A config for Vault at `vault_host` with names relative to `prefix`, and no auth
    /// method yet.
    pub fn new(vault_host: &str, prefix: &str) -> Self {
        Self {
            vault_host: Some(vault_host.to_owned()),
            timeout: Some("5s".to_owned()),
            auth: AgentAuth::None,
            prefix: prefix.to_owned(),
            ca_file: None,
            kv_version: None,
            revoke_on_shutdown: None,
            refresh_interval: None,
            preload: Vec::new(),
            socket_mode: None,
            socket_group: None,
            peers: None,
            log_format: None,
            log_filter: std::env::var(AGENT_LOG_ENV)
                .unwrap_or_else(|_| DEFAULT_LOG_FILTER.to_owned()),
            env: Vec::new(),
            certificates: Vec::new(),
        }
    }

    /// Adds an entry to `certificates` (fields as in docs/agent.md).
    pub fn certificate(mut self, certificate: Value) -> Self {
        self.certificates.push(certificate);
        self
    }

    pub fn token(mut self, token: &str) -> Self {
        self.auth = AgentAuth::Token(token.to_owned());
        self
    }

    pub fn token_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.auth = AgentAuth::TokenFile(path.into());
        self
    }

    pub fn approle(
        mut self,
        role_id_file: impl Into<PathBuf>,
        secret_id_file: impl Into<PathBuf>,
    ) -> Self {
        self.auth = AgentAuth::AppRole {
            role_id_file: role_id_file.into(),
            secret_id_file: secret_id_file.into(),
            mount: None,
        };
        self
    }

    pub fn kubernetes(mut self, role: &str, token_path: impl Into<PathBuf>) -> Self {
        self.auth = AgentAuth::Kubernetes {
            role: role.to_owned(),
            token_path: token_path.into(),
            mount: None,
        };
        self
    }

    pub fn timeout(mut self, timeout: &str) -> Self {
        self.timeout = Some(timeout.to_owned());
        self
    }

    pub fn kv_version(mut self, version: &str) -> Self {
        self.kv_version = Some(version.to_owned());
        self
    }

    pub fn refresh_interval(mut self, interval: &str) -> Self {
        self.refresh_interval = Some(interval.to_owned());
        self
    }

    pub fn preload(mut self, names: &[&str]) -> Self {
        self.preload = names.iter().map(|n| (*n).to_owned()).collect();
        self
    }

    pub fn peers(mut self, peers: Vec<Peer>) -> Self {
        self.peers = Some(peers);
        self
    }

    pub fn revoke_on_shutdown(mut self, revoke: bool) -> Self {
        self.revoke_on_shutdown = Some(revoke);
        self
    }

    pub fn log_format(mut self, format: &str) -> Self {
        self.log_format = Some(format.to_owned());
        self
    }

    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_owned(), value.to_owned()));
        self
    }

    /// The YAML text of the config file for a socket at `socket` and ops on `ops_listen`.
    pub fn to_yaml(&self, socket: &Path, ops_listen: &str) -> Result<String> {
        let mut vault = serde_json::Map::new();
        if let Some(host) = &self.vault_host {
            vault.insert("host".into(), json!(host));
        }
        if let Some(timeout) = &self.timeout {
            vault.insert("timeout".into(), json!(timeout));
        }
        match &self.auth {
            AgentAuth::Token(token) => {
                vault.insert("token".into(), json!(token));
            }
            AgentAuth::TokenFile(path) => {
                vault.insert("token_file".into(), json!(path.display().to_string()));
            }
            AgentAuth::AppRole {
                role_id_file,
                secret_id_file,
                mount,
            } => {
                let mut approle = json!({
                    "role_id_file": role_id_file.display().to_string(),
                    "secret_id_file": secret_id_file.display().to_string(),
                });
                if let Some(mount) = mount {
                    approle["mount"] = json!(mount);
                }
                vault.insert("approle".into(), approle);
            }
            AgentAuth::Kubernetes {
                role,
                token_path,
                mount,
            } => {
                let mut kubernetes = json!({
                    "role": role,
                    "token_path": token_path.display().to_string(),
                });
                if let Some(mount) = mount {
                    kubernetes["mount"] = json!(mount);
                }
                vault.insert("kubernetes".into(), kubernetes);
            }
            AgentAuth::None => {}
        }
        vault.insert("prefix".into(), json!(self.prefix));
        if let Some(ca) = &self.ca_file {
            vault.insert("ca_file".into(), json!(ca.display().to_string()));
        }
        if let Some(kv) = &self.kv_version {
            // "1" and "2" as numbers, "auto" as a string.
            let value = kv.parse::<u8>().map_or_else(|_| json!(kv), |n| json!(n));
            vault.insert("kv_version".into(), value);
        }
        if let Some(revoke) = self.revoke_on_shutdown {
            vault.insert("revoke_on_shutdown".into(), json!(revoke));
        }

        let mut secrets = serde_json::Map::new();
        if let Some(interval) = &self.refresh_interval {
            secrets.insert("refresh_interval".into(), json!(interval));
        }
        if !self.preload.is_empty() {
            secrets.insert("preload".into(), json!(self.preload));
        }

        let mut socket_section = json!({ "path": socket.display().to_string() });
        if let Some(mode) = &self.socket_mode {
            socket_section["mode"] = json!(mode);
        }
        if let Some(group) = &self.socket_group {
            socket_section["group"] = json!(group);
        }

        let mut doc = json!({
            "vault": vault,
            "secrets": secrets,
            "socket": socket_section,
            "ops": { "listen": ops_listen },
        });
        if let Some(peers) = &self.peers {
            doc["peers"] = serde_json::to_value(peers).context("serialising peers")?;
        }
        if !self.certificates.is_empty() {
            doc["certificates"] = json!(self.certificates);
        }
        serde_yaml_ng::to_string(&doc).context("rendering the agent config as YAML")
    }
}

/// What a run of the agent's command line printed.
#[derive(Debug, Clone)]
pub struct CliOutput {
    /// The exit code (None if killed by a signal).
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

/// A `keygate-agent` process owned by a test. Dropping it kills the process.
#[derive(Debug)]
pub struct AgentProcess {
    dir: tempfile::TempDir,
    config: AgentConfig,
    bin: PathBuf,
    socket: PathBuf,
    ops_port: u16,
    child: Option<Child>,
    paused: bool,
    http: reqwest::Client,
}

impl AgentProcess {
    /// Writes the config and spawns the agent, without waiting for it to be ready (it
    /// may not become ready, e.g. while Vault is down).
    pub async fn start(config: AgentConfig) -> Result<Self> {
        let bin = agent_binary()?;
        let dir = tempfile::Builder::new()
            .prefix("keygate-agent-")
            .tempdir()
            .context("creating a temporary directory for the agent")?;
        // The agent creates the socket's parent directory itself.
        let socket = dir.path().join("run").join("agent.sock");
        let ops_port = free_port()?;
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(10))
            .build()
            .context("building the HTTP client")?;
        let mut agent = Self {
            dir,
            config,
            bin,
            socket,
            ops_port,
            child: None,
            paused: false,
            http,
        };
        agent.write_config()?;
        agent.spawn()?;
        Ok(agent)
    }

    /// [`Self::start`], then [`Self::wait_ready`] with [`READY_TIMEOUT`].
    pub async fn start_ready(config: AgentConfig) -> Result<Self> {
        let mut agent = Self::start(config).await?;
        agent.wait_ready(READY_TIMEOUT).await?;
        Ok(agent)
    }

    /// The agent's Unix socket.
    pub fn socket_path(&self) -> &Path {
        &self.socket
    }

    /// The config file the agent was started with.
    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("agent.yaml")
    }

    /// The captured stdout and stderr.
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("agent.log")
    }

    /// A directory private to this agent, for token or secret-id files.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The config this agent runs with.
    pub fn config(&self) -> &AgentConfig {
        &self.config
    }

    /// `http://127.0.0.1:<ops port>`.
    pub fn ops_addr(&self) -> String {
        format!("http://127.0.0.1:{}", self.ops_port)
    }

    /// The process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The exit status if the process has exited (and it is then forgotten).
    pub fn try_exit_status(&mut self) -> Result<Option<ExitStatus>> {
        let Some(child) = self.child.as_mut() else {
            return Ok(None);
        };
        let status = child.try_wait().context("checking on the agent")?;
        if status.is_some() {
            self.child = None;
        }
        Ok(status)
    }

    /// Everything the agent wrote to stdout and stderr, over all its starts.
    pub fn log_contents(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Asserts that none of `secrets` appears in the agent's log.
    pub fn assert_no_secret_in_log(&self, secrets: &[&str]) {
        assert_no_secret_in(&self.log_contents(), secrets);
    }

    /// Waits until `GET /readyz` answers 200; fails early if the process exits.
    pub async fn wait_ready(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_exit_status()? {
                bail!(
                    "keygate-agent exited ({status}) before it was ready; its log ends with:\n{}",
                    log_tail(&self.log_contents(), 40)
                );
            }
            let last = match self.ops_get("/readyz").await {
                Ok((200, _)) => return Ok(()),
                Ok((code, body)) => format!("HTTP {code}: {}", body.trim()),
                Err(err) => format!("{err:#}"),
            };
            if Instant::now() >= deadline {
                bail!(
                    "keygate-agent not ready within {timeout:?} (last /readyz: {last}); its log ends with:\n{}",
                    log_tail(&self.log_contents(), 40)
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `GET <ops><path>`: status code and body.
    pub async fn ops_get(&self, path: &str) -> Result<(u16, String)> {
        let url = format!("{}{path}", self.ops_addr());
        crate::process::http_get(&self.http, &url).await
    }

    /// `GET /metrics`, parsed: series (name with labels, as printed) to value.
    pub async fn metrics(&self) -> Result<HashMap<String, f64>> {
        let (status, body) = self.ops_get("/metrics").await?;
        ensure!(status == 200, "/metrics answered HTTP {status}");
        Ok(parse_prometheus(&body))
    }

    /// One metric: the series with exactly this name, or the sum of its labelled series.
    /// Fails if the agent does not export it.
    pub async fn metric(&self, name: &str) -> Result<f64> {
        metric_value(&self.metrics().await?, name)
    }

    /// SIGKILL, and waits for the process to be gone.
    pub async fn kill9(&mut self) -> Result<ExitStatus> {
        let mut child = self
            .child
            .take()
            .ok_or_else(|| anyhow!("the agent is not running"))?;
        signal_child(&child, Signal::SIGKILL)?;
        self.paused = false;
        wait_for_exit(&mut child, Duration::from_secs(10)).await
    }

    /// SIGTERM, and waits up to 15 s for a graceful exit.
    pub async fn sigterm(&mut self) -> Result<ExitStatus> {
        let child = self
            .child
            .as_mut()
            .ok_or_else(|| anyhow!("the agent is not running"))?;
        signal_child(child, Signal::SIGTERM)?;
        if self.paused {
            signal_child(child, Signal::SIGCONT)?;
            self.paused = false;
        }
        let status = wait_for_exit(child, Duration::from_secs(15))
            .await
            .context("keygate-agent did not exit after SIGTERM")?;
        self.child = None;
        Ok(status)
    }

    /// SIGSTOP, returning once every thread is stopped: the process freezes (its socket
    /// accepts connections nobody serves).
    pub async fn sigstop(&mut self) -> Result<()> {
        let child = self
            .child
            .as_ref()
            .ok_or_else(|| anyhow!("the agent is not running"))?;
        stop_child(child).await?;
        self.paused = true;
        Ok(())
    }

    /// SIGCONT after [`Self::sigstop`].
    pub fn sigcont(&mut self) -> Result<()> {
        let child = self
            .child
            .as_ref()
            .ok_or_else(|| anyhow!("the agent is not running"))?;
        signal_child(child, Signal::SIGCONT)?;
        self.paused = false;
        Ok(())
    }

    /// SIGHUP (reload).
    pub fn sighup(&self) -> Result<()> {
        let child = self
            .child
            .as_ref()
            .ok_or_else(|| anyhow!("the agent is not running"))?;
        signal_child(child, Signal::SIGHUP)
    }

    /// Stops the agent gracefully if it runs, starts it again with the same config,
    /// socket and ops port, and waits until it is ready.
    pub async fn restart(&mut self) -> Result<()> {
        if self.child.is_some() {
            self.sigterm().await?;
        }
        self.spawn()?;
        self.wait_ready(READY_TIMEOUT).await
    }

    /// Starts the agent again after it exited or was killed, without waiting for ready.
    pub fn start_again(&mut self) -> Result<()> {
        ensure!(self.child.is_none(), "the agent is still running");
        self.spawn()
    }

    /// A client over the socket that sends the required header (fails at once if nobody
    /// listens).
    pub async fn client(&self) -> Result<keygate_proto::AgentClient> {
        keygate_proto::connect(&self.socket)
            .await
            .with_context(|| format!("connecting to the agent at {}", self.socket.display()))
    }

    /// A raw gRPC channel over the socket (no header interceptor).
    pub async fn channel(&self) -> Result<tonic::transport::Channel> {
        keygate_proto::channel(&self.socket)
            .await
            .with_context(|| format!("connecting to the agent at {}", self.socket.display()))
    }

    /// Runs the agent binary with `args` (e.g. `["get", "--socket", ...]`), with a 30 s
    /// limit.
    pub async fn cli(&self, args: &[&str]) -> Result<CliOutput> {
        run_cli(&self.bin, args).await
    }

    /// `keygate-agent get --socket <this agent's socket> --json [--reveal] NAMES...`,
    /// parsed; fails unless it exits 0.
    pub async fn cli_get_json(&self, names: &[&str], reveal: bool) -> Result<Value> {
        let socket = self.socket.display().to_string();
        let mut args = vec!["get", "--socket", socket.as_str(), "--json"];
        if reveal {
            args.push("--reveal");
        }
        args.extend_from_slice(names);
        let out = self.cli(&args).await?;
        ensure!(
            out.code == Some(0),
            "keygate-agent get exited {:?}; stderr: {}",
            out.code,
            out.stderr
        );
        serde_json::from_str(&out.stdout)
            .with_context(|| format!("keygate-agent get --json printed no JSON: {}", out.stdout))
    }

    fn write_config(&self) -> Result<()> {
        let ops_listen = format!("127.0.0.1:{}", self.ops_port);
        let yaml = self.config.to_yaml(&self.socket, &ops_listen)?;
        std::fs::write(self.config_path(), yaml).context("writing the agent config file")
    }

    fn spawn(&mut self) -> Result<()> {
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.log_path())
            .context("opening the agent log file")?;
        let log_err = log.try_clone().context("cloning the log file handle")?;
        let mut cmd = Command::new(&self.bin);
        cmd.arg("run").arg("--config").arg(self.config_path());
        if let Some(format) = &self.config.log_format {
            cmd.arg("--log-format").arg(format);
        }
        // Only what the test configures may reach the agent: no inherited Vault settings.
        for var in [
            "VAULT_ADDR",
            "BAO_ADDR",
            "VAULT_TOKEN",
            "BAO_TOKEN",
            "VAULT_CACERT",
            "BAO_CACERT",
            "RUST_LOG",
            "KEYGATE_AGENT_CONFIG",
            "KEYGATE_AGENT_SOCKET",
        ] {
            cmd.env_remove(var);
        }
        cmd.env("KEYGATE_LOG", &self.config.log_filter)
            .env("RUST_BACKTRACE", "1")
            .envs(self.config.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log_err));
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {}", self.bin.display()))?;
        self.child = Some(child);
        self.paused = false;
        Ok(())
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = signal_child(&child, Signal::SIGKILL);
            let _ = child.wait();
        }
        let log = self.log_path();
        // Harness-wide: no secret made by `random_secret` may be in the agent's log.
        // Skipped while unwinding (the test failed already; a second panic would abort).
        let leaked = if std::thread::panicking() {
            None
        } else {
            crate::leaks::leaked_in(&self.log_contents())
        };
        report_on_drop("keygate-agent", &mut self.dir, &log, 60);
        if let Some(index) = leaked {
            #[expect(
                clippy::panic,
                reason = "a leaked secret fails the test that leaked it"
            )]
            {
                panic!(
                    "remembered secret #{index} appears in the agent log {}",
                    log.display()
                );
            }
        }
    }
}

/// Runs the agent binary (see [`agent_binary`]) with `args`.
pub async fn run_agent_cli(args: &[&str]) -> Result<CliOutput> {
    run_cli(&agent_binary()?, args).await
}

async fn run_cli(bin: &Path, args: &[&str]) -> Result<CliOutput> {
    let mut cmd = tokio::process::Command::new(bin);
    cmd.args(args)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .env_remove("VAULT_TOKEN")
        .env_remove("BAO_TOKEN")
        .env_remove("KEYGATE_AGENT_CONFIG")
        .env_remove("KEYGATE_AGENT_SOCKET");
    let out = tokio::time::timeout(Duration::from_secs(30), cmd.output())
        .await
        .map_err(|_| anyhow!("keygate-agent {args:?} did not finish within 30 s"))?
        .with_context(|| format!("running keygate-agent {args:?}"))?;
    Ok(CliOutput {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

/// Finds the agent binary: `$KEYGATE_AGENT_BIN`, else `keygate-agent` in the target
/// directory of this test executable (`target/<profile>/deps/<test>` →
/// `target/<profile>/keygate-agent`).
pub fn agent_binary() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os(AGENT_BIN_ENV) {
        let path = PathBuf::from(path);
        ensure!(
            path.is_file(),
            "{AGENT_BIN_ENV}={} does not name a file",
            path.display()
        );
        return Ok(path);
    }
    let exe = std::env::current_exe().context("locating the test executable")?;
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .ok_or_else(|| anyhow!("unexpected test executable path {}", exe.display()))?;
    let candidate = profile_dir.join("keygate-agent");
    ensure!(
        candidate.is_file(),
        "the agent binary {} does not exist: run `cargo build --workspace --bins` first \
         (scripts/test.sh does), or set {AGENT_BIN_ENV}",
        candidate.display()
    );
    Ok(candidate)
}

/// Parses Prometheus text exposition: series (name and labels as printed) to value.
pub fn parse_prometheus(text: &str) -> HashMap<String, f64> {
    let mut out = HashMap::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        // The series ends at the first space outside the label braces; a timestamp may
        // follow the value.
        let series_end = match line.find('}') {
            Some(close) if line.find('{').is_some_and(|open| open < close) => close + 1,
            _ => line.find(char::is_whitespace).unwrap_or(line.len()),
        };
        let (series, rest) = line.split_at(series_end);
        let Some(value) = rest.split_whitespace().next() else {
            continue;
        };
        let value = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => match v.parse::<f64>() {
                Ok(v) => v,
                Err(_) => continue,
            },
        };
        out.insert(series.to_owned(), value);
    }
    out
}

/// The value of metric `name` in parsed metrics: the unlabelled series, else the sum of
/// its labelled series. Fails if there is none.
pub fn metric_value(metrics: &HashMap<String, f64>, name: &str) -> Result<f64> {
    if let Some(v) = metrics.get(name) {
        return Ok(*v);
    }
    let prefix = format!("{name}{{");
    let mut found = false;
    let mut sum = 0.0;
    for (series, value) in metrics {
        if series.starts_with(&prefix) {
            found = true;
            sum += value;
        }
    }
    ensure!(found, "the agent exports no metric {name}");
    Ok(sum)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_prometheus_text() {
        let text = "# HELP a_total help\n# TYPE a_total counter\na_total 3\n\
                    b{x=\"1\",y=\"a b\"} 2.5\nb{x=\"2\"} 1 1700000000\nc +Inf\n";
        let m = parse_prometheus(text);
        assert_eq!(m.get("a_total"), Some(&3.0));
        assert_eq!(m.get("b{x=\"1\",y=\"a b\"}"), Some(&2.5));
        assert_eq!(metric_value(&m, "b").unwrap(), 3.5);
        assert_eq!(metric_value(&m, "a_total").unwrap(), 3.0);
        assert!(metric_value(&m, "missing").is_err());
        assert_eq!(m.get("c"), Some(&f64::INFINITY));
    }

    #[test]
    fn renders_the_contract_config() {
        let config = AgentConfig::new("http://127.0.0.1:8200", "kv/apisix")
            .approle("/r/role", "/r/secret")
            .refresh_interval("2s")
            .kv_version("2")
            .preload(&["consumer/jack/jwt-auth"])
            .peers(vec![Peer::uid("gateway", 1001, &["consumer/*"])]);
        let yaml = config
            .to_yaml(Path::new("/tmp/x/agent.sock"), "127.0.0.1:9102")
            .unwrap();
        let doc: serde_yaml_ng::Value = serde_yaml_ng::from_str(&yaml).unwrap();
        assert_eq!(doc["vault"]["host"].as_str(), Some("http://127.0.0.1:8200"));
        assert_eq!(
            doc["vault"]["approle"]["role_id_file"].as_str(),
            Some("/r/role")
        );
        assert_eq!(doc["vault"]["kv_version"].as_u64(), Some(2));
        assert_eq!(doc["secrets"]["refresh_interval"].as_str(), Some("2s"));
        assert_eq!(doc["socket"]["path"].as_str(), Some("/tmp/x/agent.sock"));
        assert_eq!(doc["ops"]["listen"].as_str(), Some("127.0.0.1:9102"));
        assert_eq!(doc["peers"][0]["uids"][0].as_u64(), Some(1001));
        assert!(doc["vault"].get("token").is_none());
    }
}
