//! The gateway binary's lifecycle: `check-config` exit codes, reload on SIGHUP or file
//! change without dropping the listener, an invalid new file keeping the old config,
//! SIGTERM stopping cleanly. No agent is needed: consumers here use inline secrets.

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
async fn check_config_exit_codes() -> Result<()> {
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
    let missing = run(&dir.path().join("none.yaml"))?;
    ensure!(
        missing.status.code() == Some(64),
        "missing file exit {:?}",
        missing.status.code()
    );
    Ok(())
}
