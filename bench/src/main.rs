//! `keygate-bench`: the tools behind `scripts/bench.sh` (not a test; run by hand).
//!
//! Every measuring subcommand appends one tab-separated line to a results file
//! (`--out`); `table` turns that file into the report, with the targets of issue 7.
//! See `bench/README.md`.

mod agent;
mod inputs;
mod results;
mod table;
mod util;
mod wrk;

use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(about = "keygate benchmark harness tools (used by scripts/bench.sh)")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Prints a JWT with claims `key` and `exp` (now + ttl), signed for a consumer.
    Token(inputs::TokenArgs),
    /// Prints a gateway configuration with N consumers and N routes (scale runs).
    GatewayConfig(inputs::GatewayConfigArgs),
    /// Prints an agent configuration preloading N names (memory and start-up runs).
    AgentConfig(inputs::AgentConfigArgs),
    /// Writes N secrets to OpenBao's KV (concurrently, over HTTP).
    Seed(agent::SeedArgs),
    /// Reads one secret over an agent's Unix socket, sequentially; records p50/p99.
    AgentRead(agent::ReadArgs),
    /// Polls a URL until it answers 200; records the time since `--since-ns`.
    WaitHttp(util::WaitArgs),
    /// Installs a new gateway config, sends SIGHUP and records how long until a URL
    /// answers 200 (the new route).
    Reload(util::ReloadArgs),
    /// Runs wrk once and records req/s, p50, p99, errors and the load average.
    Wrk(wrk::WrkArgs),
    /// Prints the report from a results file.
    Table {
        /// The results file.
        results: PathBuf,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Token(a) => inputs::token(&a),
        Command::GatewayConfig(a) => inputs::gateway_config(&a),
        Command::AgentConfig(a) => inputs::agent_config(&a),
        Command::Seed(a) => runtime()?.block_on(agent::seed(&a)),
        Command::AgentRead(a) => runtime()?.block_on(agent::read(&a)),
        Command::WaitHttp(a) => runtime()?.block_on(util::wait_http(&a)),
        Command::Reload(a) => runtime()?.block_on(util::reload(&a)),
        Command::Wrk(a) => wrk::run(&a),
        Command::Table { results } => table::print(&results),
    }
}

/// A single-threaded runtime: the clients measure latency one request at a time.
fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}
