//! The agent side: seeding OpenBao, and secret read latency over an agent's Unix
//! socket (keygate's gRPC `Get`, or OpenBao Agent's HTTP API proxy).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty};
use hyper_util::rt::TokioIo;
use keygate_proto::agent::v1::{GetRequest, SecretState};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::task::JoinSet;

use crate::results;

/// `keygate-bench seed`.
#[derive(Debug, clap::Args)]
pub struct SeedArgs {
    /// OpenBao's address.
    #[arg(long)]
    addr: String,
    /// A token allowed to write.
    #[arg(long)]
    token: String,
    /// KV v1 path with `{}` for the index, e.g. `kv/apisix/bench/s{}`.
    #[arg(long)]
    path: String,
    /// How many.
    #[arg(long)]
    count: usize,
    /// Requests in flight.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
}

/// Writes `{"secret": "bench-value-<i>"}` at each path.
pub async fn seed(args: &SeedArgs) -> Result<()> {
    ensure!(args.path.contains("{}"), "--path needs a {{}}");
    let client = reqwest::Client::new();
    let started = Instant::now();
    let mut tasks = JoinSet::new();
    let workers = args.concurrency.max(1);
    for w in 0..workers {
        let client = client.clone();
        let addr = args.addr.trim_end_matches('/').to_owned();
        let token = args.token.clone();
        let path = args.path.clone();
        let count = args.count;
        tasks.spawn(async move {
            let mut i = w;
            while i < count {
                let url = format!("{addr}/v1/{}", path.replace("{}", &i.to_string()));
                let response = client
                    .post(&url)
                    .header("X-Vault-Token", &token)
                    .json(&serde_json::json!({ "secret": format!("bench-value-{i:08}") }))
                    .send()
                    .await?;
                ensure!(
                    response.status().is_success(),
                    "{url}: {}",
                    response.status()
                );
                i += workers;
            }
            anyhow::Ok(())
        });
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    eprintln!(
        "  seeded {} secrets in {:.1} s",
        args.count,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// `keygate-bench agent-read`.
#[derive(Debug, clap::Args)]
pub struct ReadArgs {
    /// keygate agent socket (gRPC `Get`).
    #[arg(long, conflicts_with = "bao")]
    keygate: Option<PathBuf>,
    /// OpenBao Agent socket (HTTP `GET /v1/<name>`).
    #[arg(long)]
    bao: Option<PathBuf>,
    /// No agent: the machine's floor, a 64-byte round trip over a Unix socket pair to an
    /// echo on another thread's tokio runtime (what any read over the socket pays in
    /// wake-ups, without gRPC or HTTP).
    #[arg(long, conflicts_with_all = ["keygate", "bao"])]
    echo: bool,
    /// The secret: an agent name (`bench/s{}`) or a Vault path (`kv/apisix/bench/s{}`);
    /// `{}` is replaced by the request number modulo `--spread`.
    #[arg(long, required_unless_present = "echo")]
    name: Option<String>,
    /// Distinct secrets to cycle through.
    #[arg(long, default_value_t = 1)]
    spread: usize,
    /// Measured reads.
    #[arg(long, default_value_t = 5000)]
    count: usize,
    /// Unmeasured reads first.
    #[arg(long, default_value_t = 500)]
    warmup: usize,
    /// Label in the results (`keygate`, `bao-agent`).
    #[arg(long)]
    label: String,
    /// Results file; nothing is recorded without it.
    #[arg(long)]
    out: Option<PathBuf>,
}

/// Reads sequentially on one connection and records the latency percentiles.
pub async fn read(args: &ReadArgs) -> Result<()> {
    let name = |i: usize| {
        args.name
            .as_deref()
            .unwrap_or_default()
            .replace("{}", &(i % args.spread.max(1)).to_string())
    };
    let mut latencies = Vec::with_capacity(args.count);
    let load = results::load1();
    match (&args.keygate, &args.bao) {
        (None, None) if args.echo => {
            let (near, far) = std::os::unix::net::UnixStream::pair()?;
            far.set_nonblocking(true)?;
            near.set_nonblocking(true)?;
            // The echo ends when `near` is closed (its read sees the end).
            let echo = std::thread::spawn(move || -> Result<()> {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_io()
                    .build()?;
                runtime.block_on(async move {
                    let mut far = tokio::net::UnixStream::from_std(far)?;
                    let mut buf = [0u8; 64];
                    loop {
                        match far.read(&mut buf).await? {
                            0 => return Ok(()),
                            n => far.write_all(buf.get(..n).unwrap_or_default()).await?,
                        }
                    }
                })
            });
            let mut near = tokio::net::UnixStream::from_std(near)?;
            let mut buf = [0u8; 64];
            for i in 0..args.warmup + args.count {
                let t0 = Instant::now();
                near.write_all(&buf).await?;
                near.read_exact(&mut buf).await?;
                if i >= args.warmup {
                    latencies.push(t0.elapsed());
                }
            }
            drop(near);
            echo.join()
                .map_err(|_| anyhow::anyhow!("the echo thread panicked"))??;
        }
        (Some(socket), None) => {
            let mut client = keygate_proto::connect_direct(socket)
                .await
                .with_context(|| format!("cannot connect to {}", socket.display()))?;
            for i in 0..args.warmup + args.count {
                let request = GetRequest {
                    names: vec![name(i)],
                };
                let t0 = Instant::now();
                let response = client.get(request).await?.into_inner();
                let took = t0.elapsed();
                let loaded = response
                    .secrets
                    .first()
                    .is_some_and(|s| s.state == SecretState::Loaded as i32 && !s.fields.is_empty());
                ensure!(loaded, "{} is not loaded in the keygate agent", name(i));
                if i >= args.warmup {
                    latencies.push(took);
                }
            }
        }
        (None, Some(socket)) => {
            let stream = tokio::net::UnixStream::connect(socket)
                .await
                .with_context(|| format!("cannot connect to {}", socket.display()))?;
            let (mut sender, conn) =
                hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
            tokio::spawn(conn);
            for i in 0..args.warmup + args.count {
                let request = http::Request::get(format!("/v1/{}", name(i)))
                    .header(http::header::HOST, "localhost")
                    .body(Empty::<Bytes>::new())?;
                let t0 = Instant::now();
                let response = sender.send_request(request).await?;
                let status = response.status();
                let body = response.into_body().collect().await?.to_bytes();
                let took = t0.elapsed();
                ensure!(
                    status == http::StatusCode::OK && body.windows(6).any(|w| w == b"secret"),
                    "{}: {status}",
                    name(i)
                );
                if i >= args.warmup {
                    latencies.push(took);
                }
            }
        }
        _ => bail!("give exactly one of --keygate, --bao and --echo"),
    }
    let mut us: Vec<f64> = latencies
        .iter()
        .map(|d: &Duration| d.as_secs_f64() * 1e6)
        .collect();
    us.sort_by(f64::total_cmp);
    let p50 = results::quantile(&us, 0.5);
    let p99 = results::quantile(&us, 0.99);
    let mean = us.iter().sum::<f64>() / us.len().max(1) as f64;
    let load = (load + results::load1()) / 2.0;
    eprintln!(
        "  {:<10} {} reads: p50 {p50:.0} µs  p99 {p99:.0} µs  mean {mean:.0} µs  load {load:.2}",
        args.label, args.count
    );
    if let Some(out) = &args.out {
        results::append(
            out,
            &[
                "read".into(),
                args.label.clone(),
                format!("{p50:.1}"),
                format!("{p99:.1}"),
                format!("{mean:.1}"),
                args.count.to_string(),
                format!("{load:.2}"),
            ],
        )?;
    }
    Ok(())
}
