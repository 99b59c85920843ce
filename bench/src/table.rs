//! The report: medians per target and pass, ratios to HAProxy and nginx, and the
//! targets of issue 7 checked against the figures of the same run.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::Path;

use anyhow::{Context as _, Result};

use crate::results::median;

/// One target in one pass, over its rounds.
#[derive(Debug, Default)]
struct Series {
    /// The round of each figure below, in order.
    rounds: Vec<u32>,
    rps: Vec<f64>,
    p50: Vec<f64>,
    p99: Vec<f64>,
    errors: u64,
    load: Vec<f64>,
    cpu: Vec<f64>,
}

impl Series {
    fn rps(&self) -> f64 {
        median(&self.rps)
    }
    fn p50(&self) -> f64 {
        median(&self.p50)
    }
    fn p99(&self) -> f64 {
        median(&self.p99)
    }
    fn cpu(&self) -> f64 {
        median(&self.cpu)
    }
    fn load_range(&self) -> String {
        let min = self.load.iter().copied().fold(f64::INFINITY, f64::min);
        let max = self.load.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        if self.load.is_empty() {
            "-".into()
        } else {
            format!("{min:.2}-{max:.2}")
        }
    }
}

/// An agent's read rounds: per-round figures, medians shown.
#[derive(Debug, Default)]
struct Reads {
    p50: Vec<f64>,
    p99: Vec<f64>,
    mean: Vec<f64>,
    count: u64,
    load: Vec<f64>,
}

impl Reads {
    fn p50(&self) -> f64 {
        median(&self.p50)
    }
}

/// Everything in a results file.
#[derive(Debug, Default)]
struct Results {
    meta: Vec<(String, String)>,
    /// pass -> target -> series, passes and targets in first-seen order.
    passes: Vec<(String, Vec<(String, Series)>)>,
    /// agent -> one entry per round of reads.
    reads: BTreeMap<String, Reads>,
    rss: Vec<(String, u64, u64)>,
    ready: Vec<(String, u64, f64)>,
    reload: Vec<(u64, f64)>,
    agentreq: Vec<(String, String)>,
}

impl Results {
    fn series(&self, pass: &str, target: &str) -> Option<&Series> {
        self.passes
            .iter()
            .find(|(p, _)| p == pass)?
            .1
            .iter()
            .find(|(t, _)| t == target)
            .map(|(_, s)| s)
    }

    /// The machine's core count: a `cores` entry, else the number the `machine` entry
    /// starts with ("2 cores, ...").
    fn cores(&self) -> Option<f64> {
        let value = |key: &str| self.meta.iter().find(|(k, _)| k == key).map(|(_, v)| v);
        value("cores")
            .or_else(|| value("machine"))?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    }

    fn agentreq(&self, key: &str) -> Option<&str> {
        self.agentreq
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    fn rss(&self, who: &str, n: u64) -> Option<u64> {
        self.rss
            .iter()
            .find(|(w, m, _)| w == who && *m == n)
            .map(|(_, _, kb)| *kb)
    }
}

fn parse(text: &str) -> Result<Results> {
    let mut r = Results::default();
    for (lineno, line) in text.lines().enumerate() {
        let f: Vec<&str> = line.split('\t').collect();
        let num = |i: usize| -> Result<f64> {
            f.get(i)
                .with_context(|| format!("line {}: field {i} missing", lineno + 1))?
                .parse::<f64>()
                .with_context(|| format!("line {}: field {i} is not a number", lineno + 1))
        };
        let text = |i: usize| f.get(i).map_or(String::new(), |s| (*s).to_owned());
        match f.first().copied() {
            Some("meta") => r.meta.push((text(1), f.get(2..).unwrap_or(&[]).join(" "))),
            Some("load") => {
                let (pass, target) = (text(1), text(2));
                let pi = match r.passes.iter().position(|(p, _)| *p == pass) {
                    Some(i) => i,
                    None => {
                        r.passes.push((pass, Vec::new()));
                        r.passes.len() - 1
                    }
                };
                let Some((_, targets)) = r.passes.get_mut(pi) else {
                    continue;
                };
                let ti = match targets.iter().position(|(t, _)| *t == target) {
                    Some(i) => i,
                    None => {
                        targets.push((target, Series::default()));
                        targets.len() - 1
                    }
                };
                let Some((_, s)) = targets.get_mut(ti) else {
                    continue;
                };
                s.rounds.push(num(3)? as u32);
                s.rps.push(num(4)?);
                s.p50.push(num(5)?);
                s.p99.push(num(6)?);
                s.errors += num(7)? as u64;
                s.load.push(num(8)?);
                s.cpu.push(num(9).unwrap_or(f64::NAN));
            }
            Some("read") => {
                let reads = r.reads.entry(text(1)).or_default();
                reads.p50.push(num(2)?);
                reads.p99.push(num(3)?);
                reads.mean.push(num(4)?);
                reads.count += num(5)? as u64;
                reads.load.push(num(6)?);
            }
            Some("rss") => r.rss.push((text(1), num(2)? as u64, num(3)? as u64)),
            Some("ready") => r.ready.push((text(1), num(2)? as u64, num(3)?)),
            Some("reload") => r.reload.push((num(1)? as u64, num(2)?)),
            Some("agentreq") => r.agentreq.push((text(1), text(2))),
            _ => {}
        }
    }
    Ok(r)
}

/// Human names of the targets, in table order.
const TARGETS: &[(&str, &str)] = &[
    ("direct", "upstream direct (limit)"),
    ("nginx", "nginx proxy, no auth"),
    ("haproxy-plain", "HAProxy proxy, no auth"),
    ("keygate-plain", "keygate proxy, no auth"),
    ("haproxy-hs256", "HAProxy jwt_verify HS256"),
    ("keygate-hs256", "keygate jwt-auth HS256"),
    ("haproxy-rs256", "HAProxy jwt_verify RS256"),
    ("keygate-rs256", "keygate jwt-auth RS256"),
    ("haproxy-es256", "HAProxy jwt_verify ES256"),
    ("keygate-es256", "keygate jwt-auth ES256"),
];

fn label(target: &str) -> &str {
    TARGETS
        .iter()
        .find(|(t, _)| *t == target)
        .map_or(target, |(_, l)| l)
}

/// The HAProxy counterpart of a keygate target.
fn haproxy_of(target: &str) -> Option<String> {
    target
        .strip_prefix("keygate-")
        .map(|alg| format!("haproxy-{alg}"))
}

fn ratio(a: f64, b: f64) -> String {
    if a.is_nan() || b.is_nan() || b == 0.0 {
        "-".into()
    } else {
        format!("{:.2}x", a / b)
    }
}

/// Prints the report.
pub fn print(path: &Path) -> Result<()> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let r = parse(&text)?;
    let out = render(&r)?;
    std::io::stdout().write_all(out.as_bytes())?;
    Ok(())
}

fn render(r: &Results) -> Result<String> {
    let mut o = String::new();
    writeln!(o, "keygate benchmark")?;
    for (k, v) in &r.meta {
        writeln!(o, "  {k:<10} {v}")?;
    }
    for (pass, targets) in &r.passes {
        let title = match pass.as_str() {
            "1w" => "one worker thread per proxy, each pinned to its own CPU".to_owned(),
            "2w" => "two worker threads per proxy, pinned one per CPU, sharing both CPUs with wrk and the upstream"
                .to_owned(),
            "cap" => "one worker thread per proxy, pinned, under a CPU quota (`cap` above): the proxy is the bottleneck"
                .to_owned(),
            "scale" => "keygate scale (HS256, one worker): consumers/routes".to_owned(),
            "scale-cap" => {
                "keygate scale (HS256, one worker) under the CPU quota (`cap` above): consumers/routes"
                    .to_owned()
            }
            other => other.to_owned(),
        };
        writeln!(o, "\n[{pass}] {title}")?;
        writeln!(
            o,
            "  {:<28} {:>9} {:>8} {:>8} {:>6} {:>9} {:>9} {:>7} {:>8} {:>8} {:>11}",
            "target",
            "req/s",
            "p50 ms",
            "p99 ms",
            "errors",
            "xHAProxy",
            "p99/HAP",
            "xnginx",
            "cpu us",
            "cpu/HAP",
            "load1"
        )?;
        let nginx = r.series(pass, "nginx").map_or(f64::NAN, Series::rps);
        let mut ordered: Vec<&(String, Series)> = Vec::new();
        for (t, _) in TARGETS {
            ordered.extend(targets.iter().filter(|(n, _)| n == t));
        }
        ordered.extend(
            targets
                .iter()
                .filter(|(n, _)| !TARGETS.iter().any(|(t, _)| t == n)),
        );
        for (target, s) in ordered {
            let hap = haproxy_of(target).and_then(|h| r.series(pass, &h));
            let (x_hap, p99_hap, cpu_hap) = match hap {
                Some(h) => (
                    ratio(s.rps(), h.rps()),
                    ratio(s.p99(), h.p99()),
                    ratio(s.cpu(), h.cpu()),
                ),
                None => ("".into(), "".into(), "".into()),
            };
            let x_nginx = if target == "nginx" || is_scale(pass) {
                String::new()
            } else {
                ratio(s.rps(), nginx)
            };
            writeln!(
                o,
                "  {:<28} {:>9.0} {:>8.3} {:>8.3} {:>6} {:>9} {:>9} {:>7} {:>8.1} {:>8} {:>11}",
                label(target),
                s.rps(),
                s.p50() / 1e3,
                s.p99() / 1e3,
                s.errors,
                x_hap,
                p99_hap,
                x_nginx,
                s.cpu(),
                cpu_hap,
                s.load_range()
            )?;
        }
    }
    if !r.reads.is_empty() {
        writeln!(
            o,
            "\nSecret read over the agent's Unix socket (one connection, sequential; \
             medians of the rounds, agents interleaved)"
        )?;
        writeln!(
            o,
            "  {:<12} {:>9} {:>9} {:>9} {:>7} {:>6} {:>6}",
            "agent", "p50 us", "p99 us", "mean us", "reads", "rounds", "load1"
        )?;
        for (agent, reads) in &r.reads {
            writeln!(
                o,
                "  {agent:<12} {:>9.0} {:>9.0} {:>9.0} {:>7} {:>6} {:>6.2}",
                reads.p50(),
                median(&reads.p99),
                median(&reads.mean),
                reads.count,
                reads.p50.len(),
                median(&reads.load)
            )?;
        }
    }
    if !r.rss.is_empty() {
        writeln!(o, "\nResident memory (VmRSS)")?;
        for (who, n, kb) in &r.rss {
            writeln!(
                o,
                "  {who:<24} {n:>6} {:>9.1} MB",
                *kb as f64 * 1024.0 / 1e6
            )?;
        }
    }
    for (who, n, ms) in &r.ready {
        writeln!(o, "\nStart to ready: {who} with {n} secrets: {ms:.0} ms")?;
    }
    for (n, ms) in &r.reload {
        writeln!(
            o,
            "Config reload with {n} consumers and {n} routes (file -> new route answering): {ms:.0} ms"
        )?;
    }
    if !r.agentreq.is_empty() {
        writeln!(o, "\nAgent traffic while the gateway served the load")?;
        for (k, v) in &r.agentreq {
            writeln!(o, "  {k:<36} {v}")?;
        }
    }
    writeln!(o, "\nTargets (same run)")?;
    for line in targets(r) {
        writeln!(o, "  {line}")?;
    }
    Ok(o)
}

/// `a`'s req/s over `b`'s taken within each round both ran in.
struct Paired {
    /// The median of the per-round ratios.
    median: f64,
    /// Rounds whose ratio was at or above the `min` asked for.
    met: usize,
    /// Rounds both ran in.
    rounds: usize,
    low: f64,
    high: f64,
}

/// `a`'s req/s over `b`'s round by round (the two ran minutes apart at most, so a
/// machine that drifts moves both). `None` when no round has both.
fn paired(a: &Series, b: &Series, min: f64) -> Option<Paired> {
    let ratios: Vec<f64> = a
        .rounds
        .iter()
        .zip(&a.rps)
        .filter_map(|(round, ra)| {
            let i = b.rounds.iter().position(|r| r == round)?;
            b.rps.get(i).filter(|rb| **rb > 0.0).map(|rb| ra / rb)
        })
        .collect();
    if ratios.is_empty() {
        return None;
    }
    Some(Paired {
        median: median(&ratios),
        met: ratios.iter().filter(|x| **x >= min).count(),
        rounds: ratios.len(),
        low: ratios.iter().copied().fold(f64::INFINITY, f64::min),
        high: ratios.iter().copied().fold(f64::NEG_INFINITY, f64::max),
    })
}

/// The scale passes compare gateways with one another, not proxies.
fn is_scale(pass: &str) -> bool {
    pass.starts_with("scale")
}

fn verdict(ok: Option<bool>) -> &'static str {
    match ok {
        Some(true) => "[met] ",
        Some(false) => "[MISS]",
        None => "[n/a] ",
    }
}

fn targets(r: &Results) -> Vec<String> {
    let mut lines = Vec::new();
    let passes: Vec<&str> = r
        .passes
        .iter()
        .map(|(p, _)| p.as_str())
        .filter(|p| !is_scale(p))
        .collect();
    let mut vs = |what: &str, a: &str, b: &str, min: f64, by_p99: bool| {
        for pass in &passes {
            // The quota's stalls (up to a period) make the capped pass's p99, whoever
            // the proxy.
            if by_p99 && *pass == "cap" {
                continue;
            }
            let (Some(sa), Some(sb)) = (r.series(pass, a), r.series(pass, b)) else {
                lines.push(format!("{} {what} [{pass}]: not measured", verdict(None)));
                continue;
            };
            let (x, ok) = if by_p99 {
                let x = sa.p99() / sb.p99();
                (x, x <= min)
            } else {
                let x = sa.rps() / sb.rps();
                (x, x >= min)
            };
            let rounds = match paired(sa, sb, min) {
                Some(p) if !by_p99 && p.rounds > 1 => format!(
                    " (round by round: median {:.2}x, {} of {} rounds at {min:.2}x or more, \
                     {:.2}-{:.2}x)",
                    p.median, p.met, p.rounds, p.low, p.high
                ),
                _ => String::new(),
            };
            lines.push(format!(
                "{} {what} [{pass}]: {x:.2}x{rounds}",
                verdict(Some(ok))
            ));
        }
    };
    vs(
        "HS256 req/s >= 1.25x HAProxy",
        "keygate-hs256",
        "haproxy-hs256",
        1.25,
        false,
    );
    vs(
        "HS256 p99 <= HAProxy's",
        "keygate-hs256",
        "haproxy-hs256",
        1.0,
        true,
    );
    vs(
        "HS256 req/s >= 1.0x nginx without auth",
        "keygate-hs256",
        "nginx",
        1.0,
        false,
    );
    vs(
        "RS256 req/s >= 1.1x HAProxy",
        "keygate-rs256",
        "haproxy-rs256",
        1.1,
        false,
    );
    vs(
        "ES256 req/s >= 1.1x HAProxy",
        "keygate-es256",
        "haproxy-es256",
        1.1,
        false,
    );
    for (alg, k, h) in [
        ("HS256", "keygate-hs256", "haproxy-hs256"),
        ("RS256", "keygate-rs256", "haproxy-rs256"),
        ("ES256", "keygate-es256", "haproxy-es256"),
    ] {
        for pass in &passes {
            if let (Some(a), Some(b)) = (r.series(pass, k), r.series(pass, h))
                && !a.cpu().is_nan()
                && !b.cpu().is_nan()
            {
                lines.push(format!(
                    "[info] {alg} proxy CPU per request vs HAProxy [{pass}]: {:.1} vs {:.1} us = {:.2}x",
                    a.cpu(),
                    b.cpu(),
                    a.cpu() / b.cpu()
                ));
            }
        }
    }
    // Beyond one worker, wrk and the upstream share the proxy's cores: what the cores
    // give each of HAProxy's requests, less HAProxy's own CPU, is what wrk, the upstream
    // and idle took; 1.25x HAProxy leaves keygate the rest at 1.25 times the rate.
    if let Some(cores) = r.cores() {
        for pass in passes.iter().filter(|p| !matches!(**p, "1w" | "cap")) {
            if let (Some(k), Some(h)) = (
                r.series(pass, "keygate-hs256"),
                r.series(pass, "haproxy-hs256"),
            ) && h.cpu().is_finite()
                && h.rps() > 0.0
            {
                let per_request = cores * 1e6 / h.rps();
                let rest = per_request - h.cpu();
                let budget = per_request / 1.25 - rest;
                lines.push(format!(
                    "[info] HS256 1.25x HAProxy [{pass}] needs keygate at <= {budget:.1} us of CPU \
                     per request (measured {:.1}): {cores} cores give each HAProxy request \
                     {per_request:.1} us, {:.1} of them HAProxy's, {rest:.1} wrk's, the \
                     upstream's and idle",
                    k.cpu(),
                    h.cpu()
                ));
            }
        }
    }
    // Without the quota the scale gateways, like the one-worker pass, are held back by
    // wrk and the upstream; with it, by their own cost. Both are judged when both ran.
    let capped = r.passes.iter().any(|(p, _)| p == "scale-cap");
    let scale_passes = std::iter::once("scale").chain(capped.then_some("scale-cap"));
    for (pass, case) in scale_passes.flat_map(|p| {
        ["c10000-r10", "c10-r10000", "c10000-r10000"]
            .into_iter()
            .map(move |c| (p, c))
    }) {
        let base = r.series(pass, "c10-r10");
        let tag = if pass == "scale" {
            String::new()
        } else {
            format!(" [{pass}]")
        };
        let what = format!("{case} throughput loss <= 5% vs c10-r10{tag}");
        match (base, r.series(pass, case)) {
            (Some(b), Some(c)) => {
                let loss = (1.0 - c.rps() / b.rps()) * 100.0;
                // A loss of 5 % or less is a ratio of 0.95 or more.
                let rounds = match paired(c, b, 0.95) {
                    Some(p) if p.rounds > 1 => format!(
                        " (round by round: median {:.1}%, {} of {} rounds within 5%, \
                         {:.1}% to {:.1}%)",
                        (1.0 - p.median) * 100.0,
                        p.met,
                        p.rounds,
                        (1.0 - p.high) * 100.0,
                        (1.0 - p.low) * 100.0
                    ),
                    _ => String::new(),
                };
                lines.push(format!(
                    "{} {what}: {loss:.1}%{rounds}",
                    verdict(Some(loss <= 5.0))
                ));
            }
            _ => lines.push(format!("{} {what}: not measured", verdict(None))),
        }
    }
    let keygate = r.reads.get("keygate").map(Reads::p50);
    let bao = r.reads.get("bao-agent").map(Reads::p50);
    let floor = r
        .reads
        .get("unix-echo")
        .map(|e| {
            format!(
                " (the machine's floor, a bare Unix socket round trip: {:.0} us)",
                e.p50()
            )
        })
        .unwrap_or_default();
    lines.push(match keygate {
        Some(p50) => format!(
            "{} agent read p50 <= 100 us: {p50:.0} us{floor}",
            verdict(Some(p50 <= 100.0))
        ),
        None => format!("{} agent read p50 <= 100 us: not measured", verdict(None)),
    });
    lines.push(match (keygate, bao) {
        (Some(k), Some(b)) => format!(
            "{} agent read >= 5x faster than bao agent (p50): {:.1}x",
            verdict(Some(b / k >= 5.0)),
            b / k
        ),
        _ => format!(
            "{} agent read >= 5x faster than bao agent: not measured",
            verdict(None)
        ),
    });
    lines.push(match r.rss("keygate-agent", 10_000) {
        Some(kb) => {
            let mb = kb as f64 * 1024.0 / 1e6;
            format!(
                "{} agent RSS <= 15 MB with 10000 secrets: {mb:.1} MB",
                verdict(Some(mb <= 15.0))
            )
        }
        None => format!(
            "{} agent RSS <= 15 MB with 10000 secrets: not measured",
            verdict(None)
        ),
    });
    let vault = r
        .agentreq("agent_vault_requests_during_load")
        .and_then(|v| v.parse::<u64>().ok());
    let snapshots = r
        .agentreq("gateway_agent_snapshots_during_load")
        .and_then(|v| v.parse::<u64>().ok());
    let attempts = r
        .agentreq("gateway_agent_reconnects_during_load")
        .and_then(|v| v.parse::<u64>().ok());
    lines.push(match (vault, snapshots, attempts) {
        (Some(v), Some(s), Some(a)) => format!(
            "{} zero agent/Vault round-trips on the request path: {v} Vault requests, {a} reconnects, {s} snapshots during the load",
            verdict(Some(v == 0 && s == 0 && a == 0))
        ),
        _ => format!(
            "{} zero agent/Vault round-trips on the request path: not measured",
            verdict(None)
        ),
    });
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The table of a results file's text.
    fn rendered(text: &str) -> String {
        render(&parse(text).unwrap()).unwrap()
    }

    /// `out` has `needle` in it.
    #[track_caller]
    fn shows(out: &str, needle: &str) {
        assert!(out.contains(needle), "no {needle:?} in:\n{out}");
    }

    /// `out` does not have `needle` in it.
    #[track_caller]
    fn hides(out: &str, needle: &str) {
        assert!(!out.contains(needle), "{needle:?} in:\n{out}");
    }

    #[test]
    fn renders_ratios_and_targets() {
        let text = "meta\tcores\t2\n\
load\t1w\tnginx\t0\t10000\t500\t900\t0\t1.00\n\
load\t1w\thaproxy-hs256\t0\t8000\t600\t1200\t0\t1.00\n\
load\t1w\tkeygate-hs256\t0\t11000\t450\t1000\t0\t1.10\n\
load\t1w\tkeygate-hs256\t1\t12000\t440\t1100\t0\t1.30\n\
load\t2w\thaproxy-hs256\t0\t50000\t600\t1200\t0\t3.00\t20.0\n\
load\t2w\tkeygate-hs256\t0\t55000\t450\t1000\t0\t3.00\t18.0\n\
read\tkeygate\t60\t120\t70\t2000\t1.0\n\
read\tbao-agent\t400\t900\t420\t2000\t1.0\n\
read\tkeygate\t90\t150\t95\t2000\t1.0\n\
read\tbao-agent\t350\t800\t380\t2000\t1.0\n\
read\tkeygate\t50\t100\t55\t2000\t1.0\n\
read\tbao-agent\t700\t990\t720\t2000\t1.0\n\
rss\tkeygate-agent\t10000\t9000\n";
        let r = parse(text).unwrap();
        let out = render(&r).unwrap();
        shows(&out, "1.44x");
        shows(&out, "[met]  HS256 req/s >= 1.25x HAProxy [1w]: 1.44x");
        shows(&out, "[met]  HS256 req/s >= 1.0x nginx");
        assert!(
            out.contains("[MISS] RS256") || out.contains("[n/a]  RS256"),
            "{out}"
        );
        // 2 cores at 50k req/s: 40 us per request, 20 HAProxy's, 20 the rest; at 62.5k
        // req/s a request has 32 us, 12 of them left for keygate.
        shows(
            &out,
            "[info] HS256 1.25x HAProxy [2w] needs keygate at <= 12.0 us of CPU per request (measured 18.0): 2 cores give each HAProxy request 40.0 us, 20.0 of them HAProxy's, 20.0 wrk's",
        );
        hides(&out, "1.25x HAProxy [1w] needs");
        // Medians of the three rounds: 60 us against 400 us.
        shows(&out, "6.7x");
        let row = |agent: &str| {
            out.lines()
                .skip_while(|l| !l.starts_with("Secret read"))
                .map(|l| l.split_whitespace().collect::<Vec<_>>())
                .find(|f| f.first() == Some(&agent))
        };
        assert_eq!(
            row("keygate"),
            Some(vec!["keygate", "60", "120", "70", "6000", "3", "1.00"]),
            "{out}"
        );
        assert_eq!(
            row("bao-agent"),
            Some(vec!["bao-agent", "400", "900", "420", "6000", "3", "1.00"]),
            "{out}"
        );
        shows(&out, "1.10-1.30");
    }

    #[test]
    fn the_capped_pass_has_throughput_verdicts_but_no_p99_verdict() {
        let text = "load\tcap\tnginx\t0\t10000\t15000\t18000\t0\t1.00\t25.0\n\
load\tcap\thaproxy-hs256\t0\t8000\t16000\t18000\t0\t1.00\t30.0\n\
load\tcap\tkeygate-hs256\t0\t12000\t14000\t19000\t0\t1.00\t20.0\n";
        let out = rendered(text);
        shows(
            &out,
            "[cap] one worker thread per proxy, pinned, under a CPU quota",
        );
        shows(&out, "[met]  HS256 req/s >= 1.25x HAProxy [cap]: 1.50x");
        shows(
            &out,
            "[met]  HS256 req/s >= 1.0x nginx without auth [cap]: 1.20x",
        );
        // keygate's p99 is above HAProxy's here: a verdict would be a MISS.
        hides(&out, "p99 <= HAProxy's [cap]");
        hides(&out, "[cap] needs keygate");
    }

    #[test]
    fn pairs_rounds_for_the_round_by_round_ratio() {
        // Round 1 is missing for nginx: only rounds 0, 2 and 3 pair up.
        let text = "load\t1w\tnginx\t0\t100\t500\t900\t0\t1.00\n\
load\t1w\tnginx\t2\t200\t500\t900\t0\t1.00\n\
load\t1w\tnginx\t3\t100\t500\t900\t0\t1.00\n\
load\t1w\tkeygate-hs256\t0\t90\t450\t1000\t0\t1.00\n\
load\t1w\tkeygate-hs256\t1\t1000\t450\t1000\t0\t1.00\n\
load\t1w\tkeygate-hs256\t2\t210\t450\t1000\t0\t1.00\n\
load\t1w\tkeygate-hs256\t3\t120\t450\t1000\t0\t1.00\n";
        let out = rendered(text);
        // Ratios 0.90, 1.05 and 1.20; medians of req/s 165 (4 rounds) over 100.
        shows(
            &out,
            "[met]  HS256 req/s >= 1.0x nginx without auth [1w]: 1.65x \
                 (round by round: median 1.05x, 2 of 3 rounds at 1.00x or more, 0.90-1.20x)",
        );
    }

    #[test]
    fn the_agent_read_target_shows_the_floor_beside_it() {
        let text = "read\tkeygate\t120.0\t200.0\t125.0\t2000\t0.5\n\
read\tunix-echo\t60.0\t110.0\t62.0\t2000\t0.5\n";
        let out = rendered(text);
        shows(
            &out,
            "[MISS] agent read p50 <= 100 us: 120 us \
                 (the machine's floor, a bare Unix socket round trip: 60 us)",
        );
    }

    #[test]
    fn scale_loss_reads_round_by_round_too() {
        let text = "load\tscale\tc10-r10\t0\t100\t500\t900\t0\t1.00\n\
load\tscale\tc10-r10\t1\t200\t500\t900\t0\t1.00\n\
load\tscale\tc10-r10000\t0\t98\t500\t900\t0\t1.00\n\
load\tscale\tc10-r10000\t1\t180\t500\t900\t0\t1.00\n";
        let out = rendered(text);
        // Medians 150 and 139: 7.3% lost; round by round 2% and 10%.
        shows(
            &out,
            "[MISS] c10-r10000 throughput loss <= 5% vs c10-r10: 7.3% \
                 (round by round: median 6.0%, 1 of 2 rounds within 5%, 2.0% to 10.0%)",
        );
        hides(&out, "[scale-cap]");
    }

    #[test]
    fn a_capped_scale_pass_is_judged_beside_the_uncapped_one() {
        let text = "load\tscale\tc10-r10\t0\t100\t500\t900\t0\t1.00\n\
load\tscale\tc10-r10000\t0\t90\t500\t900\t0\t1.00\n\
load\tscale-cap\tc10-r10\t0\t100\t500\t900\t0\t1.00\n\
load\tscale-cap\tc10-r10000\t0\t98\t500\t900\t0\t1.00\n";
        let out = rendered(text);
        shows(
            &out,
            "[MISS] c10-r10000 throughput loss <= 5% vs c10-r10: 10.0%",
        );
        shows(
            &out,
            "[met]  c10-r10000 throughput loss <= 5% vs c10-r10 [scale-cap]: 2.0%",
        );
        shows(
            &out,
            "[scale-cap] keygate scale (HS256, one worker) under the CPU quota",
        );
        // Scale passes are not proxy passes: no proxy target is judged in them.
        hides(&out, "nginx without auth [scale");
    }
}
