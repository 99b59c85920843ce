//! The gateway binary's lifecycle: `check-config` exit codes, reload on SIGHUP or file
//! change without dropping the listener, an invalid new file keeping the old config,
//! SIGTERM stopping cleanly, worker threads pinned to CPUs on request. No agent is
//! needed: consumers here use inline secrets.

use std::time::Duration;

use anyhow::{Result, ensure};
use keygate_tests::eventually;
use keygate_tests::gateway::{GatewayProcess, Upstream, gateway_binary};

fn config(upstream: &Upstream, path: &str) -> String {
    format!(
        r#"
routes:
  - id: ping
    uri: {path}
    upstream: {{ nodes: {{ "{node}": 1 }} }}
"#,
        node = upstream.node()
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn reload_on_sighup_and_keep_the_old_config_when_the_new_one_is_bad() -> Result<()> {
    let upstream = Upstream::start().await?;
    let mut gateway = GatewayProcess::start_ready(&config(&upstream, "/secure/ping")).await?;
    ensure!(gateway.get("/secure/ping", &[]).await?.0 == 200);

    // A file the gateway cannot use: it keeps serving the old routes and says why.
    gateway.write_config("routes: [{uri: no-slash, upstream: {nodes: {\"127.0.0.1:1\": 1}}}]")?;
    gateway.sighup()?;
    eventually(Duration::from_secs(10), || async {
        ensure!(
            gateway.log_contents().contains("routes[0].uri"),
            "the rejection (naming routes[0].uri) is not logged yet"
        );
        Ok(())
    })
    .await?;
    ensure!(
        gateway.get("/secure/ping", &[]).await?.0 == 200,
        "old config lost"
    );

    // A good file replaces the routes without a restart.
    gateway.write_config(&config(&upstream, "/secure/*"))?;
    gateway.sighup()?;
    eventually(Duration::from_secs(10), || async {
        let (status, _) = gateway.get("/secure/ping?moved=1", &[]).await?;
        ensure!(status == 200, "{status}");
        let (status, body) = gateway.get("/elsewhere", &[]).await?;
        ensure!(
            (status, body.as_str()) == (404, r#"{"error_msg":"404 Route Not Found"}"#),
            "{status} {body}"
        );
        Ok(())
    })
    .await?;

    let status = gateway.sigterm().await?;
    ensure!(status.success(), "SIGTERM exit: {status}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn check_config_and_start_exit_codes() -> Result<()> {
    let bin = gateway_binary()?;
    let dir = tempfile::tempdir()?;
    let good = dir.path().join("good.yaml");
    std::fs::write(
        &good,
        "routes: [{uri: /a, upstream: {nodes: {\"127.0.0.1:1\": 1}}}]",
    )?;
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "consumers: [{username: jack, plugins: {jwt-auth: {key: k, vault: {}}}}]",
    )?;
    let run = |file: &std::path::Path| {
        std::process::Command::new(&bin)
            .arg("check-config")
            .arg("--config")
            .arg(file)
            .output()
    };
    let ok = run(&good)?;
    ensure!(ok.status.code() == Some(0), "good config: {ok:?}");
    let out = run(&bad)?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        out.status.code() == Some(64),
        "bad config exit {:?}",
        out.status.code()
    );
    ensure!(
        stderr.contains("agent"),
        "the error does not name the field: {stderr}"
    );
    // A short HMAC secret is valid but warned about, once, by name, never shown.
    let short = dir.path().join("short.yaml");
    std::fs::write(
        &short,
        "consumers: [{username: jack, plugins: {jwt-auth: {key: k, secret: tiny-secret-value}}}]",
    )?;
    let out = run(&short)?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(out.status.code() == Some(0), "short secret: {out:?}");
    ensure!(
        stderr.matches("jack").count() == 1 && stderr.contains("shorter than"),
        "the warning is not there exactly once by name: {stderr}"
    );
    ensure!(
        !stderr.contains("tiny-secret-value"),
        "the secret was shown"
    );
    let missing = run(&dir.path().join("none.yaml"))?;
    ensure!(
        missing.status.code() == Some(64),
        "missing file exit {:?}",
        missing.status.code()
    );

    // A start with the bad file refuses it the same way (built once, as it binds).
    let mut start = std::process::Command::new(&bin)
        .arg("--config")
        .arg(&bad)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    let began = std::time::Instant::now();
    let status = loop {
        if let Some(status) = start.try_wait()? {
            break status;
        }
        if began.elapsed() > Duration::from_secs(20) {
            start.kill()?;
            anyhow::bail!("a start with a bad file is still running after 20 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let mut stderr = String::new();
    if let Some(mut pipe) = start.stderr.take() {
        std::io::Read::read_to_string(&mut pipe, &mut stderr)?;
    }
    ensure!(status.code() == Some(64), "start exit {status:?}: {stderr}");
    ensure!(
        stderr.contains("agent"),
        "the start's error does not name the field: {stderr}"
    );
    Ok(())
}

/// The CPUs in a `/proc/.../status` file's `Cpus_allowed_list` ("0-1,4").
fn cpus_allowed(status: &str) -> Result<Vec<usize>> {
    let list = status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .ok_or_else(|| anyhow::anyhow!("no Cpus_allowed_list in {status}"))?;
    let mut cpus = Vec::new();
    for part in list.trim().split(',') {
        match part.split_once('-') {
            Some((a, b)) => cpus.extend(a.parse::<usize>()?..=b.parse::<usize>()?),
            None => cpus.push(part.parse()?),
        }
    }
    Ok(cpus)
}

/// Each thread of `pid` as (name, the CPUs it may run on).
fn thread_cpus(pid: u32) -> Result<Vec<(String, Vec<usize>)>> {
    let mut threads = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let dir = task?.path();
        let name = std::fs::read_to_string(dir.join("comm"))?.trim().to_owned();
        let status = std::fs::read_to_string(dir.join("status"))?;
        threads.push((name, cpus_allowed(&status)?));
    }
    Ok(threads)
}

/// The CPUs of the named thread (its name cut to 15 bytes, as the kernel keeps it).
fn cpus_of(threads: &[(String, Vec<usize>)], name: &str) -> Result<Vec<usize>> {
    let short = &name[..name.len().min(15)];
    threads
        .iter()
        .find(|(n, _)| n == short)
        .map(|(_, cpus)| cpus.clone())
        .ok_or_else(|| anyhow::anyhow!("no thread {short} in {threads:?}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn cpu_affinity_auto_pins_each_worker_to_its_own_cpu_and_off_pins_none() -> Result<()> {
    let upstream = Upstream::start().await?;
    // What this test process (and so the gateway it starts) may run on.
    let allowed = cpus_allowed(&std::fs::read_to_string("/proc/thread-self/status")?)?;
    ensure!(!allowed.is_empty(), "no CPUs in /proc/thread-self/status");

    let key = "affinity-admin-key";
    let mut pinned = GatewayProcess::start_with_admin(
        &config(&upstream, "/secure/ping"),
        key,
        &[
            ("KEYGATE_GATEWAY_THREADS", "2"),
            ("KEYGATE_GATEWAY_CPU_AFFINITY", "auto"),
        ],
    )
    .await?;
    pinned.wait_ready(Duration::from_secs(30)).await?;
    ensure!(pinned.get("/secure/ping", &[]).await?.0 == 200);
    // An Admin API read runs on a blocking thread the main runtime starts.
    let (status, body) = pinned
        .admin("GET", "/apisix/admin/routes", Some(key), None)
        .await?;
    ensure!(status == 200, "{status} {body}");
    let pid = pinned.pid().ok_or_else(|| anyhow::anyhow!("no pid"))?;
    let threads = thread_cpus(pid)?;
    ensure!(
        cpus_of(&threads, "keygate-gateway")? == [allowed[0]],
        "the main worker is not on the first allowed CPU {allowed:?}: {threads:?}"
    );
    ensure!(
        cpus_of(&threads, "keygate-worker-1")? == [allowed[1 % allowed.len()]],
        "worker 1 is not on the second allowed CPU {allowed:?}: {threads:?}"
    );
    let blocking: Vec<_> = threads
        .iter()
        .filter(|(n, _)| n.starts_with("tokio-"))
        .collect();
    ensure!(!blocking.is_empty(), "no blocking thread: {threads:?}");
    ensure!(
        blocking.iter().all(|(_, cpus)| *cpus == allowed),
        "a blocking thread kept a worker's pin: {threads:?}"
    );
    ensure!(
        pinned
            .log_contents()
            .contains("worker threads pinned one per CPU"),
        "the pinning is not logged"
    );

    let mut free = GatewayProcess::start_with_admin(
        &config(&upstream, "/secure/ping"),
        key,
        &[("KEYGATE_GATEWAY_THREADS", "2")],
    )
    .await?;
    free.wait_ready(Duration::from_secs(30)).await?;
    ensure!(free.get("/secure/ping", &[]).await?.0 == 200);
    let pid = free.pid().ok_or_else(|| anyhow::anyhow!("no pid"))?;
    let threads = thread_cpus(pid)?;
    for name in ["keygate-gateway", "keygate-worker-1"] {
        ensure!(
            cpus_of(&threads, name)? == allowed,
            "{name} is pinned without --cpu-affinity: {threads:?}"
        );
    }

    // A value it does not know: usage error, naming the ones it does.
    let out = std::process::Command::new(gateway_binary()?)
        .args(["check-config", "--cpu-affinity", "sometimes", "--config"])
        .arg(pinned.config_path())
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        out.status.code() == Some(64),
        "exit {:?}: {stderr}",
        out.status.code()
    );
    ensure!(
        stderr.contains("off") && stderr.contains("auto"),
        "{stderr}"
    );
    Ok(())
}
