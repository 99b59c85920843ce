//! `keygate-gateway`: parse the command line and configuration, set up logging, run.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use keygate_gateway::affinity::CpuPlan;
use keygate_gateway::{Config, Gateway, Handle};
use tracing_subscriber::EnvFilter;

/// Exit code for bad configuration or usage (sysexits EX_USAGE).
const EX_CONFIG: u8 = 64;

#[derive(Debug, Parser)]
#[command(
    version,
    about = "keygate gateway: HTTP routing and jwt-auth with secrets from the keygate agent"
)]
struct Cli {
    /// Configuration file (YAML).
    #[arg(long, short, global = true, env = "KEYGATE_GATEWAY_CONFIG")]
    config: Option<PathBuf>,
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    log_format: LogFormat,
    /// Worker threads serving proxy requests, each with its own runtime and socket
    /// (SO_REUSEPORT); the default is one per CPU, 1 runs everything on one thread.
    #[arg(long, global = true, env = "KEYGATE_GATEWAY_THREADS", value_parser = clap::value_parser!(u16).range(1..=1024))]
    threads: Option<u16>,
    /// Pin each worker thread to a CPU of its own (`auto`: the CPUs the process may
    /// run on, in order), as nginx's `worker_cpu_affinity auto`; `off` lets the
    /// scheduler move them.
    #[arg(long, value_enum, default_value_t = CpuAffinity::Off, global = true, env = "KEYGATE_GATEWAY_CPU_AFFINITY")]
    cpu_affinity: CpuAffinity,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum CpuAffinity {
    Off,
    Auto,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Subcommand)]
enum Command {
    /// Run the gateway (the default).
    Run,
    /// Validate the configuration and exit 0, or print why and exit 64.
    CheckConfig,
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(EX_CONFIG)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    init_tracing(cli.log_format);
    let Some(path) = cli.config else {
        eprintln!("keygate-gateway: --config FILE is required");
        return ExitCode::from(EX_CONFIG);
    };
    let command = cli.command.unwrap_or(Command::Run);
    // Parsed here; built (and so validated) by `check-config` here, by a start when it
    // binds (a bad file exits 64 there too): one build either way (a start with 10 000
    // routes and consumers was ready in 500-550 ms building twice, 414-422 once).
    let loaded = Config::load(&path).and_then(|config| {
        if command == Command::CheckConfig {
            keygate_gateway::check_and_warn(&config)?;
        }
        Ok(config)
    });
    let config = match loaded {
        Ok(c) => c,
        Err(e) => {
            eprintln!("keygate-gateway: {e}");
            return ExitCode::from(EX_CONFIG);
        }
    };
    match command {
        Command::CheckConfig => ExitCode::SUCCESS,
        Command::Run => run(path, config, cli.threads, cli.cpu_affinity),
    }
}

fn init_tracing(format: LogFormat) {
    let filter = EnvFilter::try_from_env("KEYGATE_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn run(path: PathBuf, config: Config, threads: Option<u16>, affinity: CpuAffinity) -> ExitCode {
    // Thread per core: this thread and each extra worker run their own single-threaded
    // runtime (see `Gateway::bind_with_workers`).
    let workers = threads.map_or_else(
        || std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get),
        usize::from,
    );
    // Read before any thread is pinned: the mask then is the whole process's.
    let cpus = match affinity {
        CpuAffinity::Off => None,
        CpuAffinity::Auto => match CpuPlan::of_this_process() {
            Ok(plan) => Some(plan),
            Err(e) => {
                tracing::warn!(error = %e, "--cpu-affinity auto: workers are not pinned");
                None
            }
        },
    };
    let mut builder = tokio::runtime::Builder::new_current_thread();
    builder.enable_all();
    if let Some(plan) = &cpus {
        builder.on_thread_start(plan.release_hook());
    }
    let runtime = match builder.build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("keygate-gateway: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let gateway = match Gateway::bind_with_workers(config, workers).await {
            Ok(g) => match cpus {
                Some(plan) => {
                    let used: Vec<usize> = (0..workers).map(|w| plan.cpu_for(w)).collect();
                    tracing::info!(cpus = ?used, "worker threads pinned one per CPU");
                    g.pin_workers(plan)
                }
                None => g,
            },
            Err(keygate_gateway::Error::Config(e)) => {
                tracing::error!(error = %e, "bad configuration");
                return ExitCode::from(EX_CONFIG);
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot start");
                return ExitCode::FAILURE;
            }
        };
        // The file's parse is done and dropped: give its peak back.
        keygate_gateway::heap::trim();
        if let Ok(addr) = gateway.local_addr() {
            tracing::info!(%addr, workers, status = ?gateway.status_addr(), admin = ?gateway.admin_addr(), tls = ?gateway.tls_addr(), "gateway listening");
        }
        tokio::spawn(reload_on_change(path, gateway.handle()));
        gateway.serve(shutdown_signal()).await;
        ExitCode::SUCCESS
    })
}

/// Completes on SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
                _ = int.recv() => tracing::info!("SIGINT: shutting down"),
            }
        }
        _ => {
            tracing::warn!("cannot install signal handlers; stopping on ctrl-c only");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// Reloads the file on SIGHUP, and when its modification time or size changes
/// (polled: cheap, and works for files replaced by rename as config tools do).
async fn reload_on_change(path: PathBuf, handle: Handle) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hup = signal(SignalKind::hangup()).ok();
    let stamp = |p: &Path| {
        std::fs::metadata(p)
            .ok()
            .map(|m| (m.modified().ok(), m.len()))
    };
    let mut last = stamp(&path);
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(2));
    loop {
        let by_signal = tokio::select! {
            Some(()) = async { match hup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => true,
            _ = tick.tick() => false,
        };
        let now = stamp(&path);
        if !by_signal && now == last {
            continue;
        }
        last = now;
        match Config::load(&path).map_err(keygate_gateway::Error::from) {
            Ok(config) => match handle.reload(&config) {
                Ok(()) => tracing::info!(path = %path.display(), "configuration reloaded"),
                Err(e) => {
                    tracing::error!(error = %e, "new configuration rejected; keeping the old one")
                }
            },
            Err(e) => {
                tracing::error!(error = %e, "new configuration rejected; keeping the old one")
            }
        }
        keygate_gateway::heap::trim();
    }
}
