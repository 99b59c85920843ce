//! Generated inputs: tokens, and configurations with many consumers, routes or secrets.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, Result, bail};
use keygate_gateway::jwt::{self, Algorithm, SignKey};
use serde_json::{Map, Value};

/// `keygate-bench token`.
#[derive(Debug, clap::Args)]
pub struct TokenArgs {
    /// HS256, RS256, ES256, ...
    #[arg(long, default_value = "HS256")]
    alg: String,
    /// The consumer's `key` claim.
    #[arg(long)]
    key: String,
    /// HMAC secret.
    #[arg(long)]
    secret: Option<String>,
    /// PEM private key file (RS*/ES*/PS*/EdDSA).
    #[arg(long)]
    private_key: Option<PathBuf>,
    /// Seconds until `exp`.
    #[arg(long, default_value_t = 86_400)]
    ttl: u64,
}

/// Prints the token.
pub fn token(args: &TokenArgs) -> Result<()> {
    let alg: Algorithm = serde_json::from_value(Value::String(args.alg.clone()))
        .with_context(|| format!("unknown algorithm {:?}", args.alg))?;
    let key = match (&args.secret, &args.private_key) {
        (Some(secret), None) => SignKey::hmac(alg, secret.as_bytes(), false)?,
        (None, Some(path)) => {
            let pem = std::fs::read(path).with_context(|| format!("{}", path.display()))?;
            SignKey::private_pem(alg, &pem)?
        }
        _ => bail!("give exactly one of --secret and --private-key"),
    };
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let mut claims = Map::new();
    claims.insert("key".into(), Value::String(args.key.clone()));
    claims.insert("exp".into(), Value::from(now + args.ttl));
    let token = jwt::sign(alg, &key, &claims)?;
    writeln!(std::io::stdout(), "{token}")?;
    Ok(())
}

/// `keygate-bench gateway-config`.
#[derive(Debug, clap::Args)]
pub struct GatewayConfigArgs {
    /// The proxy listener.
    #[arg(long)]
    listen: String,
    /// The status listener (`/metrics`).
    #[arg(long)]
    status_listen: Option<String>,
    /// The upstream `host:port`.
    #[arg(long)]
    upstream: String,
    /// Consumers `c<i>` with jwt-auth key `key-<i>` and secret `bench-secret-<i>` (inline).
    #[arg(long, default_value_t = 10)]
    consumers: usize,
    /// Routes `/p<i>/*` with jwt-auth, all on upstream `up`.
    #[arg(long, default_value_t = 10)]
    routes: usize,
}

/// Prints a gateway configuration for the scale runs. Route `i` is the prefix
/// `/p<i>/*`; consumer `i` has key `key-<i>` and HS256 secret `bench-secret-<i>`.
pub fn gateway_config(args: &GatewayConfigArgs) -> Result<()> {
    let mut y = String::new();
    writeln!(y, "listen: {}", args.listen)?;
    if let Some(s) = &args.status_listen {
        writeln!(y, "status_listen: {s}")?;
    }
    writeln!(
        y,
        "upstreams:\n  - id: up\n    nodes: {{ \"{}\": 1 }}",
        args.upstream
    )?;
    y.push_str("consumers:\n");
    for i in 0..args.consumers {
        writeln!(
            y,
            "  - username: c{i}\n    plugins: {{ jwt-auth: {{ key: key-{i}, secret: bench-secret-{i} }} }}"
        )?;
    }
    y.push_str("routes:\n");
    for i in 0..args.routes {
        writeln!(
            y,
            "  - id: r{i}\n    uri: /p{i}/*\n    plugins: {{ jwt-auth: {{}} }}\n    upstream_id: up"
        )?;
    }
    std::io::stdout().write_all(y.as_bytes())?;
    Ok(())
}

/// `keygate-bench agent-config`.
#[derive(Debug, clap::Args)]
pub struct AgentConfigArgs {
    /// OpenBao's address.
    #[arg(long)]
    vault_addr: String,
    /// The agent's token.
    #[arg(long)]
    token: String,
    /// KV prefix (`kv/apisix`).
    #[arg(long)]
    prefix: String,
    /// The agent's socket.
    #[arg(long)]
    socket: PathBuf,
    /// The ops listener (`/readyz`, `/metrics`).
    #[arg(long)]
    ops: String,
    /// Names `bench/s<i>` to preload (0 for none).
    #[arg(long, default_value_t = 0)]
    preload: usize,
}

/// Prints an agent configuration (refresh interval 1 h, so nothing but the
/// measured work reaches OpenBao).
pub fn agent_config(args: &AgentConfigArgs) -> Result<()> {
    let mut y = String::new();
    writeln!(
        y,
        "vault:\n  host: '{}'\n  timeout: 30\n  token: '{}'\n  prefix: '{}'\n  kv_version: 1",
        args.vault_addr, args.token, args.prefix
    )?;
    y.push_str("secrets:\n  refresh_interval: 1h\n");
    if args.preload > 0 {
        y.push_str("  preload:\n");
        for i in 0..args.preload {
            writeln!(y, "    - bench/s{i}")?;
        }
    }
    writeln!(
        y,
        "socket:\n  path: {}\nops:\n  listen: {}",
        args.socket.display(),
        args.ops
    )?;
    std::io::stdout().write_all(y.as_bytes())?;
    Ok(())
}
