//! `keygate-agent`: parse the command line, set up logging, run, map the result to an
//! exit code (64 for bad configuration).

use std::io::{IsTerminal as _, Write as _};
use std::process::ExitCode;

use clap::Parser as _;
use keygate_agent::cli::{self, Cli, Command, LogFormat};
use keygate_agent::config::Settings;
use tracing_subscriber::EnvFilter;

/// Freed memory is wiped, so secrets do not linger in library buffers after use.
#[global_allocator]
static ALLOCATOR: keygate_agent::hygiene::WipeOnFree = keygate_agent::hygiene::WipeOnFree;

fn main() -> ExitCode {
    // A bad command line is a usage error: 64 (EX_USAGE), as the gateway answers it,
    // not clap's 2.
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(cli::EXIT_CONFIG)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    init_tracing(cli.log_format);
    // Two workers are plenty for a handful of peers and Vault calls, and keep the
    // footprint (and any locked memory) the same on a 2-core and a 64-core host.
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the async runtime");
            return ExitCode::FAILURE;
        }
    };
    match cli.command.unwrap_or(Command::Run) {
        Command::Get {
            socket,
            reveal,
            json,
            names,
        } => match runtime.block_on(cli::get(socket, names, reveal, json)) {
            Ok(out) => {
                let _ = std::io::stdout().write_all(out.as_bytes());
                ExitCode::SUCCESS
            }
            Err(e) => {
                let _ = writeln!(std::io::stderr(), "keygate-agent get: {e}");
                ExitCode::from(e.code)
            }
        },
        Command::Put {
            socket,
            name,
            fields,
        } => match runtime.block_on(cli::put(socket, name, fields)) {
            Ok(out) => {
                let _ = std::io::stdout().write_all(out.as_bytes());
                ExitCode::SUCCESS
            }
            Err(e) => {
                let _ = writeln!(std::io::stderr(), "keygate-agent put: {e}");
                ExitCode::from(e.code)
            }
        },
        Command::CheckConfig => match load(cli.config.as_deref()) {
            Some(_) => ExitCode::SUCCESS,
            None => ExitCode::from(cli::EXIT_CONFIG),
        },
        Command::Run => {
            let Some(settings) = load(cli.config.as_deref()) else {
                return ExitCode::from(cli::EXIT_CONFIG);
            };
            match runtime.block_on(keygate_agent::run(
                settings,
                cli.config.clone(),
                shutdown_signal(),
            )) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!(error = %e, "keygate-agent failed");
                    if e.is_config() {
                        ExitCode::from(cli::EXIT_CONFIG)
                    } else {
                        ExitCode::FAILURE
                    }
                }
            }
        }
    }
}

fn load(path: Option<&std::path::Path>) -> Option<Settings> {
    let Some(path) = path else {
        tracing::error!("no config file: pass --config FILE");
        return None;
    };
    Settings::load(path)
        .map_err(|e| tracing::error!(error = %e, "bad configuration"))
        .ok()
}

fn init_tracing(format: LogFormat) {
    // vaultrs and rustify log at ERROR on every refused call, and their output is not
    // ours to vet for secrets: silence them; the agent logs its own view of each failure.
    let filter = EnvFilter::try_from_env("KEYGATE_LOG")
        .unwrap_or_else(|_| EnvFilter::new("info"))
        .add_directive("vaultrs=off".parse().unwrap_or_default())
        .add_directive("rustify=off".parse().unwrap_or_default())
        .add_directive("reqwest=warn".parse().unwrap_or_default())
        .add_directive("hyper=warn".parse().unwrap_or_default())
        .add_directive("h2=warn".parse().unwrap_or_default());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
