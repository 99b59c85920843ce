//! The command line: run the agent, check a config, or query a running agent.

use std::fmt::Write as _;
use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};
use keygate_proto::agent::v1::{GetRequest, SecretState};
use sha2::{Digest, Sha256};
use tonic::Code;
use zeroize::Zeroize;

/// Exit code for bad configuration or usage (sysexits EX_USAGE / EX_CONFIG family).
/// Largest answer `get` accepts from the agent.
const MAX_ANSWER_BYTES: usize = 256 << 20;

pub const EXIT_CONFIG: u8 = 64;
/// Exit code when the agent is unavailable (EX_UNAVAILABLE).
pub const EXIT_UNAVAILABLE: u8 = 69;
/// Exit code when the agent refuses the caller (EX_NOPERM).
pub const EXIT_NOPERM: u8 = 77;

/// keygate-agent: holds the Vault token and serves secrets on a Unix socket.
#[derive(Debug, Parser)]
#[command(name = "keygate-agent", version)]
pub struct Cli {
    /// Config file (for running the agent without a subcommand).
    #[arg(long, short, global = true, env = "KEYGATE_AGENT_CONFIG")]
    pub config: Option<PathBuf>,
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,
    /// What to do (default: run).
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Log output format.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the agent (the default).
    Run,
    /// Validate the config file and exit.
    CheckConfig,
    /// Ask a running agent for secrets (values hidden unless --reveal).
    Get {
        /// The agent's socket.
        #[arg(
            long,
            short,
            env = "KEYGATE_AGENT_SOCKET",
            default_value = "/run/keygate/agent.sock"
        )]
        socket: PathBuf,
        /// Print the values themselves.
        #[arg(long)]
        reveal: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// Secret names, relative to the agent's prefix.
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Write a secret to Vault through a running agent (needs write_paths).
    Put {
        /// The agent's socket.
        #[arg(
            long,
            short,
            env = "KEYGATE_AGENT_SOCKET",
            default_value = "/run/keygate/agent.sock"
        )]
        socket: PathBuf,
        /// Secret name, relative to the agent's prefix.
        name: String,
        /// Fields as `key=@file` (the file's contents) or `key=-` (standard input); a
        /// literal `key=value` would show in the process list, so it is refused.
        #[arg(required = true)]
        fields: Vec<String>,
    },
}

/// A failed `get`, with its exit code.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct GetError {
    /// The process exit code.
    pub code: u8,
    message: String,
}

/// Runs `keygate-agent get`, returning what to print on standard output.
pub async fn get(
    socket: PathBuf,
    names: Vec<String>,
    reveal: bool,
    json: bool,
) -> Result<String, GetError> {
    let client = keygate_proto::connect_direct(&socket)
        .await
        .map_err(|e| GetError {
            code: EXIT_UNAVAILABLE,
            message: format!("cannot connect to {}: {e}", socket.display()),
        })?;
    // Many names (or certificates) can make an answer larger than tonic's 4 MiB default.
    let mut client = client.max_decoding_message_size(MAX_ANSWER_BYTES);
    let response = client
        .get(GetRequest { names })
        .await
        .map_err(|status| GetError {
            code: match status.code() {
                Code::PermissionDenied => EXIT_NOPERM,
                Code::InvalidArgument => EXIT_CONFIG,
                Code::Unavailable => EXIT_UNAVAILABLE,
                _ => 1,
            },
            message: format!("agent refused: {:?}: {}", status.code(), status.message()),
        })?;
    let mut response = response.into_inner();
    let mut out = String::new();
    let mut json_secrets = Vec::new();
    for secret in &mut response.secrets {
        let state = match SecretState::try_from(secret.state) {
            Ok(SecretState::Loaded) => "loaded",
            Ok(SecretState::NotFound) => "not_found",
            Ok(SecretState::Denied) => "denied",
            _ => "unknown",
        };
        let mut fields: Vec<_> = secret.fields.iter_mut().collect();
        fields.sort_by(|a, b| a.0.cmp(b.0));
        if json {
            let mut obj = serde_json::Map::new();
            for (k, v) in &fields {
                let mut f = serde_json::json!({ "sha256_12": fingerprint(v), "len": v.len() });
                if reveal {
                    f["value"] = serde_json::Value::String(String::from_utf8_lossy(v).into_owned());
                }
                obj.insert((*k).clone(), f);
            }
            json_secrets.push(serde_json::json!({
                "name": secret.name, "state": state, "version": secret.version,
                "stale": secret.stale, "fetched_at_unix_ms": secret.fetched_at_unix_ms, "fields": obj,
            }));
        } else {
            let _ = writeln!(
                out,
                "{} state={state} version={} stale={}",
                secret.name, secret.version, secret.stale
            );
            for (k, v) in &fields {
                let _ = write!(out, "  {k}: len={} sha256={}", v.len(), fingerprint(v));
                if reveal {
                    let _ = write!(out, " value={}", String::from_utf8_lossy(v));
                }
                out.push('\n');
            }
        }
        for (_, v) in fields {
            v.zeroize();
        }
    }
    if json {
        out =
            serde_json::json!({ "boot_id": response.boot_id, "secrets": json_secrets }).to_string();
        out.push('\n');
    }
    Ok(out)
}

/// Runs `keygate-agent put`, returning the line to print.
pub async fn put(socket: PathBuf, name: String, specs: Vec<String>) -> Result<String, GetError> {
    let usage = |message: String| GetError {
        code: EXIT_CONFIG,
        message,
    };
    let mut fields = std::collections::HashMap::new();
    for spec in specs {
        let Some((key, source)) = spec.split_once('=') else {
            return Err(usage(format!("{spec:?}: expected key=@file or key=-")));
        };
        let value = if source == "-" {
            let mut buf = Vec::new();
            std::io::Read::read_to_end(&mut std::io::stdin(), &mut buf)
                .map_err(|e| usage(format!("reading standard input: {e}")))?;
            buf
        } else if let Some(path) = source.strip_prefix('@') {
            std::fs::read(path).map_err(|e| usage(format!("{path}: {e}")))?
        } else {
            return Err(usage(format!(
                "{key}: pass the value as key=@file or key=- (not on the command line)"
            )));
        };
        fields.insert(key.to_owned(), value);
    }
    let mut client = keygate_proto::connect_direct(&socket)
        .await
        .map_err(|e| GetError {
            code: EXIT_UNAVAILABLE,
            message: format!("cannot connect to {}: {e}", socket.display()),
        })?;
    let response = client
        .put(keygate_proto::agent::v1::PutRequest {
            name: name.clone(),
            fields,
        })
        .await
        .map_err(|status| GetError {
            code: match status.code() {
                Code::PermissionDenied => EXIT_NOPERM,
                Code::InvalidArgument => EXIT_CONFIG,
                Code::Unavailable => EXIT_UNAVAILABLE,
                _ => 1,
            },
            message: format!("agent refused: {:?}: {}", status.code(), status.message()),
        })?;
    Ok(format!(
        "{name} written; version {}\n",
        response.into_inner().version
    ))
}

fn fingerprint(value: &[u8]) -> String {
    Sha256::digest(value)
        .iter()
        .take(6)
        .fold(String::new(), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}
