//! One wrk run, parsed.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context as _, Result, bail};

use crate::results;

/// `keygate-bench wrk`.
#[derive(Debug, clap::Args)]
pub struct WrkArgs {
    /// The URL to load.
    #[arg(long)]
    url: String,
    /// Extra request headers (`Name: value`).
    #[arg(long)]
    header: Vec<String>,
    /// Keep-alive connections.
    #[arg(long, default_value_t = 64)]
    connections: u32,
    /// wrk threads.
    #[arg(long, default_value_t = 1)]
    threads: u32,
    /// Seconds.
    #[arg(long, default_value_t = 5)]
    duration: u32,
    /// Pass name (e.g. `1w`).
    #[arg(long)]
    pass: String,
    /// Target name (e.g. `keygate-hs256`).
    #[arg(long)]
    target: String,
    /// Round number.
    #[arg(long, default_value_t = 0)]
    round: u32,
    /// Results file.
    #[arg(long)]
    out: PathBuf,
    /// Processes of the proxy under load: their CPU time per request is recorded.
    #[arg(long, value_delimiter = ',')]
    pids: Vec<u32>,
}

/// What one wrk run measured.
#[derive(Debug, Default, PartialEq)]
pub struct WrkResult {
    /// Requests per second.
    pub rps: f64,
    /// Median latency, µs.
    pub p50_us: f64,
    /// 99th percentile latency, µs.
    pub p99_us: f64,
    /// Non-2xx/3xx responses plus socket errors.
    pub errors: u64,
    /// Requests completed.
    pub requests: u64,
}

/// User + system CPU time of `pids` (all their threads), in seconds.
fn cpu_seconds(pids: &[u32]) -> Result<f64> {
    let ticks = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)?
        .filter(|t| *t > 0)
        .unwrap_or(100) as f64;
    let mut total = 0.0;
    for pid in pids {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .with_context(|| format!("no process {pid}"))?;
        // Fields after the parenthesised command name; utime and stime are 14 and 15.
        let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let field = |i: usize| -> Result<f64> {
            Ok(fields
                .get(i)
                .with_context(|| format!("short /proc/{pid}/stat"))?
                .parse::<f64>()?)
        };
        total += (field(11)? + field(12)?) / ticks;
    }
    Ok(total)
}

/// Runs wrk and appends a `load` record.
pub fn run(args: &WrkArgs) -> Result<()> {
    let mut cmd = Command::new("wrk");
    cmd.arg(format!("-t{}", args.threads))
        .arg(format!("-c{}", args.connections))
        .arg(format!("-d{}s", args.duration))
        .arg("--latency");
    for h in &args.header {
        cmd.arg("-H").arg(h);
    }
    cmd.arg(&args.url);
    let load = results::load1();
    let cpu_before = cpu_seconds(&args.pids)?;
    let output = cmd.output().context("cannot run wrk")?;
    let cpu = cpu_seconds(&args.pids)? - cpu_before;
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        bail!(
            "wrk failed: {}\n{stdout}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let r = parse(&stdout).with_context(|| format!("cannot parse wrk output:\n{stdout}"))?;
    // The mean of the load average at the start and at the end of the run.
    let load = (load + results::load1()) / 2.0;
    let cpu_us = if args.pids.is_empty() || r.requests == 0 {
        f64::NAN
    } else {
        cpu * 1e6 / r.requests as f64
    };
    results::append(
        &args.out,
        &[
            "load".into(),
            args.pass.clone(),
            args.target.clone(),
            args.round.to_string(),
            format!("{:.1}", r.rps),
            format!("{:.1}", r.p50_us),
            format!("{:.1}", r.p99_us),
            r.errors.to_string(),
            format!("{load:.2}"),
            format!("{cpu_us:.1}"),
        ],
    )?;
    eprintln!(
        "  {:<6} {:<22} round {}  {:>9.0} req/s  p50 {:>7.0} µs  p99 {:>7.0} µs  cpu {:>5.1} µs/req  errors {}  load {:.2}",
        args.pass, args.target, args.round, r.rps, r.p50_us, r.p99_us, cpu_us, r.errors, load
    );
    Ok(())
}

/// Parses wrk's `--latency` report.
pub fn parse(out: &str) -> Result<WrkResult> {
    let mut r = WrkResult::default();
    let mut in_distribution = false;
    let mut have_rps = false;
    for line in out.lines() {
        let t = line.trim();
        if t.starts_with("Latency Distribution") {
            in_distribution = true;
            continue;
        }
        if in_distribution {
            let mut parts = t.split_whitespace();
            match (parts.next(), parts.next()) {
                (Some("50%"), Some(v)) => r.p50_us = duration_us(v)?,
                (Some("99%"), Some(v)) => {
                    r.p99_us = duration_us(v)?;
                    in_distribution = false;
                }
                (Some(p), Some(_)) if p.ends_with('%') => {}
                _ => in_distribution = false,
            }
        }
        if let Some(n) = t.strip_suffix(" read")
            && let Some((count, _)) = n.split_once(" requests in ")
        {
            r.requests = count.trim().parse()?;
        }
        if let Some(v) = t.strip_prefix("Requests/sec:") {
            r.rps = v.trim().parse()?;
            have_rps = true;
        } else if let Some(v) = t.strip_prefix("Non-2xx or 3xx responses:") {
            r.errors += v.trim().parse::<u64>()?;
        } else if let Some(v) = t.strip_prefix("Socket errors:") {
            for part in v.split(',') {
                if let Some(n) = part.split_whitespace().nth(1) {
                    r.errors += n.parse::<u64>()?;
                }
            }
        }
    }
    if !have_rps || r.p50_us == 0.0 || r.p99_us == 0.0 {
        bail!("no Requests/sec or latency distribution");
    }
    Ok(r)
}

/// `388.00us`, `1.23ms`, `1.00s`, `2.00m` in microseconds.
fn duration_us(v: &str) -> Result<f64> {
    let (number, scale) = if let Some(n) = v.strip_suffix("us") {
        (n, 1.0)
    } else if let Some(n) = v.strip_suffix("ms") {
        (n, 1e3)
    } else if let Some(n) = v.strip_suffix('s') {
        (n, 1e6)
    } else if let Some(n) = v.strip_suffix('m') {
        (n, 60e6)
    } else {
        bail!("unknown duration {v:?}")
    };
    Ok(number.parse::<f64>()? * scale)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "Running 5s test @ http://127.0.0.1:8080/
  1 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     1.02ms  388.21us   9.80ms   90.00%
    Req/Sec    62.89k     3.12k   66.41k    88.00%
  Latency Distribution
     50%  958.00us
     75%    1.10ms
     90%    1.33ms
     99%    2.41ms
  312912 requests in 5.00s, 44.17MB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 7
Requests/sec:  62575.44
Transfer/sec:      8.83MB
";

    #[test]
    fn parses_the_latency_report() {
        let r = parse(SAMPLE).unwrap();
        assert_eq!(r.rps, 62575.44);
        assert_eq!(r.p50_us, 958.0);
        assert_eq!(r.p99_us, 2410.0);
        assert_eq!(r.errors, 10);
        assert_eq!(r.requests, 312912);
    }

    #[test]
    fn refuses_output_without_figures() {
        assert!(parse("unable to connect to 127.0.0.1:1 Connection refused").is_err());
    }
}
