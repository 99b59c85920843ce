//! Load benchmark (not a test): requests/s and latency percentiles of the gateway
//! proxying an HS256-protected route to a trivial upstream.
//!
//! ```text
//! cargo run --release -p keygate-gateway --example bench -- [--duration 10] [--concurrency 32]
//! cargo run --release -p keygate-gateway --example bench -- --target http://127.0.0.1:9080/secure/ping --token eyJ...
//! ```
//!
//! Without `--target` it starts an upstream and a gateway in this process (one HS256
//! consumer with an inline secret, a token from the sign endpoint). With `--target` it
//! only drives load, so the same client can measure HAProxy or nginx in front of the
//! same upstream.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use bytes::Bytes;
use clap::Parser;
use http::{Request, Response};
use http_body_util::{BodyExt as _, Empty, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use keygate_gateway::{Config, Gateway};
use tokio::net::TcpListener;

#[derive(Debug, Parser)]
struct Args {
    /// Seconds of load.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Concurrent keep-alive connections.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Seconds of warm-up before measuring.
    #[arg(long, default_value_t = 1)]
    warmup: u64,
    /// Drive an external URL instead of an in-process gateway.
    #[arg(long)]
    target: Option<String>,
    /// `Authorization` value for `--target`.
    #[arg(long)]
    token: Option<String>,
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let (url, token, _stop) = match &args.target {
        Some(url) => (url.clone(), args.token.clone(), None),
        None => {
            let (url, token, stop) = in_process().await?;
            (url, Some(token), Some(stop))
        }
    };
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(args.concurrency)
        .build_http();
    let uri: http::Uri = url.parse().context("--target is not a URL")?;

    // Warm-up: fill the pools, check that the route answers 200.
    let warm_until = Instant::now() + Duration::from_secs(args.warmup);
    while Instant::now() < warm_until {
        let status = one(&client, &uri, token.as_deref()).await?.0;
        if status != 200 {
            bail!("{url} answered {status} during warm-up");
        }
    }

    let deadline = Instant::now() + Duration::from_secs(args.duration);
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..args.concurrency {
        let client = client.clone();
        let uri = uri.clone();
        let token = token.clone();
        workers.push(tokio::spawn(async move {
            let mut latencies: Vec<u32> = Vec::new();
            let mut errors = 0u64;
            while Instant::now() < deadline {
                match one(&client, &uri, token.as_deref()).await {
                    Ok((200, took)) => {
                        latencies.push(u32::try_from(took.as_micros()).unwrap_or(u32::MAX));
                    }
                    _ => errors += 1,
                }
            }
            (latencies, errors)
        }));
    }
    let mut all: Vec<u32> = Vec::new();
    let mut errors = 0;
    for w in workers {
        let (lat, err) = w.await?;
        all.extend(lat);
        errors += err;
    }
    let elapsed = started.elapsed().as_secs_f64();
    all.sort_unstable();
    report(&url, args.concurrency, &all, errors, elapsed);
    Ok(())
}

/// Prints the results (sorted latencies in microseconds).
#[expect(clippy::print_stdout, reason = "the report is the benchmark's output")]
fn report(url: &str, concurrency: usize, all: &[u32], errors: u64, elapsed: f64) {
    let pct = |p: f64| -> f64 {
        let i = ((all.len() as f64 - 1.0) * p).round() as usize;
        f64::from(all.get(i).copied().unwrap_or(0)) / 1000.0
    };
    println!("target       {url}");
    println!("concurrency  {}", concurrency);
    println!(
        "requests     {} ok, {errors} failed, {elapsed:.1} s",
        all.len()
    );
    println!("throughput   {:.0} req/s", all.len() as f64 / elapsed);
    println!(
        "latency ms   p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}",
        pct(0.50),
        pct(0.90),
        pct(0.99),
        pct(0.999),
        pct(1.0)
    );
}

async fn one(
    client: &Client<hyper_util::client::legacy::connect::HttpConnector, Empty<Bytes>>,
    uri: &http::Uri,
    token: Option<&str>,
) -> Result<(u16, Duration)> {
    let mut req = Request::get(uri.clone());
    if let Some(t) = token {
        req = req.header("authorization", t);
    }
    let t0 = Instant::now();
    let response = client.request(req.body(Empty::new())?).await?;
    let status = response.status().as_u16();
    response.into_body().collect().await?;
    Ok((status, t0.elapsed()))
}

/// Starts the upstream and the gateway; returns the route URL, a token and the
/// gateway's stop switch.
async fn in_process() -> Result<(String, String, tokio::sync::oneshot::Sender<()>)> {
    let upstream = TcpListener::bind("127.0.0.1:0").await?;
    let upstream_addr = upstream.local_addr()?;
    tokio::spawn(async move {
        while let Ok((stream, _)) = upstream.accept().await {
            tokio::spawn(async move {
                let svc = service_fn(|_req: Request<Incoming>| async {
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(
                        b"secure/pong\n",
                    ))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    let config = Config::parse(&format!(
        r#"
listen: 127.0.0.1:0
plugin_attr: {{ jwt-auth: {{ sign_endpoint: true }} }}
routes:
  - uri: /secure/ping
    plugins: {{ jwt-auth: {{}} }}
    upstream: {{ nodes: {{ "{upstream_addr}": 1 }} }}
consumers:
  - username: bench
    plugins: {{ jwt-auth: {{ key: bench-key, secret: bench-secret-0123456789 }} }}
"#
    ))?;
    let gateway = Gateway::bind(config).await?;
    let addr: SocketAddr = gateway.local_addr()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(gateway.serve(async {
        let _ = stopped.await;
    }));
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let response = client
        .request(
            Request::get(format!(
                "http://{addr}/apisix/plugin/jwt/sign?key=bench-key"
            ))
            .body(Empty::new())?,
        )
        .await?;
    let token = String::from_utf8(response.into_body().collect().await?.to_bytes().to_vec())?;
    Ok((format!("http://{addr}/secure/ping"), token, stop))
}
