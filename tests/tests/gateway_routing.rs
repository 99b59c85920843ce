//! Route matching by host through the real gateway process: the request's host is
//! read only once a route filters on hosts (`Router::route_for`), so both sides of that
//! switch are exercised here, with raw requests and recording upstreams.

use std::time::Duration;

use anyhow::{Result, ensure};
use keygate_tests::gateway::GatewayProcess;
use keygate_tests::hostile::{Recorder, raw_request};

const TIMEOUT: Duration = Duration::from_secs(10);

/// `GET /r` with the given Host line (none if `None`), the connection closed after.
fn request(host: Option<&str>) -> Vec<u8> {
    let host = host.map_or(String::new(), |h| format!("Host: {h}\r\n"));
    format!("GET /r HTTP/1.1\r\n{host}Connection: close\r\n\r\n").into_bytes()
}

/// Sends `GET /r` with `host`; which of `upstreams` got it (by index), and the status.
async fn routed(
    gateway: &GatewayProcess,
    upstreams: &[&Recorder],
    host: Option<&str>,
) -> Result<(u16, Option<usize>)> {
    let before: Vec<usize> = upstreams.iter().map(|u| u.hits()).collect();
    let response = raw_request(
        &format!("127.0.0.1:{}", gateway.port()),
        &request(host),
        TIMEOUT,
    )
    .await?;
    let hit = upstreams
        .iter()
        .zip(&before)
        .position(|(u, b)| u.hits() > *b);
    Ok((response.status, hit))
}

#[tokio::test(flavor = "multi_thread")]
async fn routes_filter_on_the_host_only_where_one_names_hosts() -> Result<()> {
    let api = Recorder::start().await?;
    let other = Recorder::start().await?;

    // No route names hosts: the path alone decides, whatever the Host says.
    let plain = GatewayProcess::start_ready(&format!(
        "routes:\n  - {{ id: any, uri: /r, upstream: {{ nodes: {{ \"{}\": 1 }} }} }}\n",
        other.node()
    ))
    .await?;
    for host in [Some("API.example.com:8443"), Some("x.test"), None] {
        let got = routed(&plain, &[&api, &other], host).await?;
        ensure!(got == (200, Some(1)), "host {host:?}: {got:?}");
    }
    drop(plain);

    // One route names a host: the Host header, in any case and with a port, picks it;
    // any other host falls through to the route without hosts.
    let filtered = GatewayProcess::start_ready(&format!(
        r#"
routes:
  - {{ id: api, uri: /r, hosts: [api.example.com], priority: 1, upstream: {{ nodes: {{ "{api}": 1 }} }} }}
  - {{ id: any, uri: /r, upstream: {{ nodes: {{ "{other}": 1 }} }} }}
"#,
        api = api.node(),
        other = other.node()
    ))
    .await?;
    for (host, upstream) in [
        (Some("api.example.com"), 0),
        (Some("API.Example.COM:8443"), 0),
        (Some("www.example.com"), 1),
        (Some("api.example.com.evil.test"), 1),
    ] {
        let got = routed(&filtered, &[&api, &other], host).await?;
        ensure!(got == (200, Some(upstream)), "host {host:?}: {got:?}");
    }
    Ok(())
}
