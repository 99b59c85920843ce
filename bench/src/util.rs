//! Waiting for readiness, and timing a configuration reload.

use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, Result, bail};
use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::results;

/// `keygate-bench wait-http`.
#[derive(Debug, clap::Args)]
pub struct WaitArgs {
    /// The URL that answers 200 when ready.
    #[arg(long)]
    url: String,
    /// Start of the clock, in ns since the Unix epoch (`date +%s%N` before the start).
    #[arg(long)]
    since_ns: Option<u128>,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 120)]
    timeout: u64,
    /// Record `ready <who> <n> <ms>` under this `who` ...
    #[arg(long, requires = "out")]
    who: Option<String>,
    /// ... and this `n`.
    #[arg(long, default_value_t = 0)]
    n: usize,
    /// Results file.
    #[arg(long)]
    out: Option<PathBuf>,
}

fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

async fn status(client: &Client<HttpConnector, Empty<Bytes>>, url: &str) -> Option<u16> {
    let request = http::Request::get(url).body(Empty::new()).ok()?;
    let response = tokio::time::timeout(Duration::from_secs(2), client.request(request))
        .await
        .ok()?
        .ok()?;
    Some(response.status().as_u16())
}

fn client() -> Client<HttpConnector, Empty<Bytes>> {
    // No keep-alive: every poll sees the server's current state.
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(0)
        .build_http()
}

/// Polls every 2 ms.
pub async fn wait_http(args: &WaitArgs) -> Result<()> {
    let since = args.since_ns.unwrap_or_else(now_ns);
    let client = client();
    let deadline = Instant::now() + Duration::from_secs(args.timeout);
    while status(&client, &args.url).await != Some(200) {
        if Instant::now() > deadline {
            bail!("{} did not answer 200 within {} s", args.url, args.timeout);
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let ms = (now_ns().saturating_sub(since)) as f64 / 1e6;
    if let (Some(who), Some(out)) = (&args.who, &args.out) {
        results::append(
            out,
            &[
                "ready".into(),
                who.clone(),
                args.n.to_string(),
                format!("{ms:.1}"),
            ],
        )?;
        eprintln!("  {who} ready with {} secrets after {ms:.0} ms", args.n);
    }
    Ok(())
}

/// `keygate-bench reload`.
#[derive(Debug, clap::Args)]
pub struct ReloadArgs {
    /// The gateway's configuration file.
    #[arg(long)]
    config: PathBuf,
    /// The new configuration, moved into place.
    #[arg(long)]
    new: PathBuf,
    /// The gateway's pid (SIGHUP).
    #[arg(long)]
    pid: i32,
    /// A URL that answers 200 only with the new configuration.
    #[arg(long)]
    url: String,
    /// `Authorization` header for `--url`.
    #[arg(long)]
    authorization: Option<String>,
    /// The `n` recorded.
    #[arg(long)]
    n: usize,
    /// Results file.
    #[arg(long)]
    out: PathBuf,
}

/// Renames the new file into place, sends SIGHUP, polls until the URL answers 200.
pub async fn reload(args: &ReloadArgs) -> Result<()> {
    let client = client();
    let get = |client: &Client<HttpConnector, Empty<Bytes>>| {
        let mut request = http::Request::get(&args.url);
        if let Some(a) = &args.authorization {
            request = request.header(http::header::AUTHORIZATION, a);
        }
        let request = request.body(Empty::new());
        let client = client.clone();
        async move {
            let response = client.request(request.ok()?).await.ok()?;
            Some(response.status().as_u16())
        }
    };
    if get(&client).await == Some(200) {
        bail!("{} already answers 200 before the reload", args.url);
    }
    let started = Instant::now();
    std::fs::rename(&args.new, &args.config).context("cannot move the new config in place")?;
    kill(Pid::from_raw(args.pid), Signal::SIGHUP).context("cannot signal the gateway")?;
    let deadline = started + Duration::from_secs(120);
    while get(&client).await != Some(200) {
        if Instant::now() > deadline {
            bail!("the new route did not answer within 120 s");
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let ms = started.elapsed().as_secs_f64() * 1e3;
    results::append(
        &args.out,
        &["reload".into(), args.n.to_string(), format!("{ms:.1}")],
    )?;
    eprintln!("  reload with {} routes and consumers: {ms:.0} ms", args.n);
    Ok(())
}
