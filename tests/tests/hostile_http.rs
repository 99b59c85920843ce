//! HTTP hardening of the real gateway process: limits with clear status codes (head
//! size and field count 431, target length 414, Admin API body 413), slow and idle
//! connections closed, the connection limit answered 503, request-smuggling shapes
//! refused or neutralised, hop-by-hop and identity headers from clients never
//! reaching the upstream, and an upstream's own hop-by-hop headers never reaching the
//! client (over HTTP/1.1 and HTTP/2). Every request here goes over a raw TCP socket, so nothing
//! between the test and the gateway tidies it up.

use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use keygate_tests::gateway::GatewayProcess;
use keygate_tests::hostile::{RawResponse, Recorder, get_request, parse_response, raw_request};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const TIMEOUT: Duration = Duration::from_secs(10);
const API_KEY: &str = "hostile-http-key-0123456789";

fn config(upstream: &Recorder, limits: &str) -> String {
    format!(
        r#"
limits: {limits}
routes:
  - id: echo
    uri: /echo/*
    upstream: {{ nodes: {{ "{node}": 1 }} }}
  - id: keyed
    uri: /keyed
    plugins: {{ key-auth: {{}} }}
    upstream: {{ nodes: {{ "{node}": 1 }} }}
consumers:
  - username: alice
    plugins:
      key-auth: {{ key: {API_KEY} }}
"#,
        node = upstream.node()
    )
}

fn addr(gateway: &GatewayProcess) -> String {
    format!("127.0.0.1:{}", gateway.port())
}

async fn send(gateway: &GatewayProcess, request: &[u8]) -> Result<RawResponse> {
    raw_request(&addr(gateway), request, TIMEOUT).await
}

/// Reads until the peer closes; how long that took, and what arrived.
async fn read_to_close(stream: &mut TcpStream, limit: Duration) -> Result<(Duration, Vec<u8>)> {
    let started = Instant::now();
    let mut received = Vec::new();
    let closed = tokio::time::timeout(limit, async {
        let mut chunk = [0u8; 4096];
        loop {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => received.extend_from_slice(chunk.get(..n).unwrap_or_default()),
            }
        }
    })
    .await;
    ensure!(
        closed.is_ok(),
        "the gateway kept the connection open for more than {limit:?}"
    );
    Ok((started.elapsed(), received))
}

#[tokio::test(flavor = "multi_thread")]
async fn limits_answer_with_clear_status_codes() -> Result<()> {
    let upstream = Recorder::start().await?;
    let gateway = GatewayProcess::start_ready(&config(
        &upstream,
        "{ max_header_bytes: 8192, max_headers: 20, max_uri_bytes: 1024, header_read_timeout: 1s, idle_timeout: 2s }",
    ))
    .await?;

    // Within the limits: served.
    let ok = send(&gateway, &get_request("/echo/a", &["X-A: 1".to_owned()])).await?;
    ensure!(ok.status == 200, "control request: {}", ok.text);
    let hits = upstream.hits();

    let many: Vec<String> = (0..25).map(|i| format!("X-Many-{i}: {i}")).collect();
    let rows: Vec<(&str, Vec<u8>, u16)> = vec![
        (
            "one header field of 9 KiB",
            get_request("/echo/a", &[format!("X-Big: {}", "b".repeat(9 * 1024))]),
            431,
        ),
        (
            "a head of 12 KiB in small fields",
            get_request(
                "/echo/a",
                &(0..12)
                    .map(|i| format!("X-F{i}: {}", "c".repeat(1000)))
                    .collect::<Vec<_>>(),
            ),
            431,
        ),
        ("25 header fields", get_request("/echo/a", &many), 431),
        (
            "a 2 KiB request target",
            get_request(&format!("/echo/{}", "p".repeat(2048)), &[]),
            414,
        ),
        (
            "a 2 KiB query",
            get_request(&format!("/echo/a?q={}", "q".repeat(2048)), &[]),
            414,
        ),
    ];
    for (name, request, expect) in rows {
        let response = send(&gateway, &request).await?;
        ensure!(
            response.status == expect,
            "{name}: HTTP {} (expected {expect}): {}",
            response.status,
            response.text.get(..200).unwrap_or(&response.text)
        );
        ensure!(upstream.hits() == hits, "{name}: reached the upstream");
    }

    // Slow loris: a head trickled a byte at a time never completes; the connection is
    // closed once header_read_timeout (1 s) has passed, and nothing is forwarded.
    let mut slow = TcpStream::connect(addr(&gateway)).await?;
    slow.write_all(b"GET /echo/slow HTTP/1.1\r\nHost: x\r\n")
        .await?;
    let trickle = async {
        for _ in 0..40 {
            tokio::time::sleep(Duration::from_millis(200)).await;
            if slow.write_all(b"X").await.is_err() {
                break;
            }
        }
    };
    let started = Instant::now();
    tokio::time::timeout(Duration::from_secs(6), trickle)
        .await
        .ok();
    let mut buf = [0u8; 1024];
    let closed = matches!(
        tokio::time::timeout(Duration::from_secs(2), slow.read(&mut buf)).await,
        Ok(Ok(0) | Err(_))
    );
    ensure!(
        closed && started.elapsed() < Duration::from_secs(6),
        "a slow-loris connection was still open after {:?}",
        started.elapsed()
    );
    ensure!(
        upstream.hits() == hits,
        "the slow request reached the upstream"
    );

    // A kept-alive HTTP/1 connection that goes quiet is closed (header_read_timeout
    // covers the wait for the next request).
    let mut quiet = TcpStream::connect(addr(&gateway)).await?;
    quiet
        .write_all(b"GET /echo/keep HTTP/1.1\r\nHost: x\r\n\r\n")
        .await?;
    let (took, received) = read_to_close(&mut quiet, Duration::from_secs(6)).await?;
    ensure!(
        parse_response(&received).status == 200,
        "keep-alive request: {}",
        String::from_utf8_lossy(&received)
    );
    ensure!(
        took >= Duration::from_millis(900),
        "closed after {took:?}: before the timeout"
    );

    // An HTTP/2 connection (prior knowledge) that sends its preface and then nothing:
    // closed after idle_timeout (2 s) with a GOAWAY.
    let mut h2 = TcpStream::connect(addr(&gateway)).await?;
    h2.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await?;
    h2.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0]).await?;
    // Closed once the client has not acknowledged the GOAWAY's PING for another
    // idle_timeout either: a silent client cannot keep it open.
    let (took, received) = read_to_close(&mut h2, Duration::from_secs(8)).await?;
    ensure!(
        took >= Duration::from_millis(1500),
        "idle HTTP/2 connection closed after {took:?}: before idle_timeout"
    );
    ensure!(
        has_goaway(&received),
        "no GOAWAY frame before the idle HTTP/2 connection was closed"
    );
    ensure!(
        upstream.hits() == hits + 1,
        "only the kept-alive connection's one request may reach the upstream"
    );
    Ok(())
}

/// Whether `bytes` (server frames after its SETTINGS) hold a GOAWAY frame (type 7).
fn has_goaway(bytes: &[u8]) -> bool {
    let mut rest = bytes;
    while rest.len() >= 9 {
        let len = (usize::from(rest[0]) << 16) | (usize::from(rest[1]) << 8) | usize::from(rest[2]);
        if rest[3] == 7 {
            return true;
        }
        rest = rest.get(9 + len..).unwrap_or_default();
    }
    false
}

#[tokio::test(flavor = "multi_thread")]
async fn connections_beyond_the_limit_get_503_and_are_closed() -> Result<()> {
    let upstream = Recorder::start().await?;
    let gateway = GatewayProcess::start_ready(&config(&upstream, "{ max_connections: 4 }")).await?;
    // Four connections that hold their slots (an unfinished head).
    let mut held = Vec::new();
    for _ in 0..4 {
        let mut stream = TcpStream::connect(addr(&gateway)).await?;
        stream.write_all(b"GET /echo/held HTTP/1.1\r\n").await?;
        held.push(stream);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let refused = send(&gateway, &get_request("/echo/a", &[])).await?;
    ensure!(
        refused.status == 503 && refused.body().contains("503"),
        "a fifth connection: HTTP {}: {}",
        refused.status,
        refused.text
    );
    ensure!(
        upstream.hits() == 0,
        "the refused request reached the upstream"
    );
    // Slots free up as soon as the held connections go.
    drop(held);
    keygate_tests::eventually(Duration::from_secs(5), || async {
        let ok = send(&gateway, &get_request("/echo/a", &[])).await?;
        ensure!(
            ok.status == 200,
            "after the held connections closed: HTTP {}",
            ok.status
        );
        Ok(())
    })
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn smuggling_shapes_are_refused_or_neutralised() -> Result<()> {
    let upstream = Recorder::start().await?;
    let gateway = GatewayProcess::start_ready(&config(&upstream, "{}")).await?;

    // Refused outright with 400, nothing forwarded.
    let refused: Vec<(&str, &[u8])> = vec![
        (
            "two different Content-Length values",
            b"POST /echo/a HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\nabcde",
        ),
        (
            "Content-Length with a sign",
            b"POST /echo/a HTTP/1.1\r\nHost: x\r\nContent-Length: +4\r\n\r\nabcd",
        ),
        (
            "Content-Length list",
            b"POST /echo/a HTTP/1.1\r\nHost: x\r\nContent-Length: 4, 5\r\n\r\nabcd",
        ),
        (
            "Transfer-Encoding not ending in chunked",
            b"POST /echo/a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n",
        ),
        (
            "an unknown Transfer-Encoding",
            b"POST /echo/a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n",
        ),
        (
            "Transfer-Encoding on HTTP/1.0",
            b"POST /echo/a HTTP/1.0\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        ),
        (
            "obs-fold continuation line",
            b"GET /echo/a HTTP/1.1\r\nHost: x\r\nX-Folded: a\r\n  b\r\n\r\n",
        ),
        (
            "whitespace before the colon",
            b"POST /echo/a HTTP/1.1\r\nHost: x\r\nContent-Length : 4\r\n\r\nabcd",
        ),
        (
            "NUL in a header value",
            b"GET /echo/a HTTP/1.1\r\nHost: x\r\nX-Nul: a\0b\r\n\r\n",
        ),
        (
            "a request line with two spaces",
            b"GET  /echo/a HTTP/1.1\r\nHost: x\r\n\r\n",
        ),
    ];
    for (name, request) in refused {
        let response = send(&gateway, request).await?;
        ensure!(
            response.status == 400,
            "{name}: HTTP {} (expected 400): {}",
            response.status,
            response.text
        );
        ensure!(upstream.hits() == 0, "{name}: reached the upstream");
    }

    // Content-Length and Transfer-Encoding together (both orders): chunked framing
    // wins, Content-Length is dropped (RFC 9112 section 6.1), the connection is
    // closed after the answer, and the request hidden behind the chunked body never
    // becomes a request of its own.
    for (name, request) in [
        (
            "CL then TE",
            &b"POST /echo/first HTTP/1.1\r\nHost: x\r\nContent-Length: 60\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /echo/smuggled HTTP/1.1\r\nHost: x\r\n\r\n"[..],
        ),
        (
            "TE then CL",
            b"POST /echo/first HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 60\r\n\r\n0\r\n\r\nGET /echo/smuggled HTTP/1.1\r\nHost: x\r\n\r\n",
        ),
    ] {
        let before = upstream.hits();
        let response = send(&gateway, request).await?;
        ensure!(response.status == 200, "{name}: HTTP {}", response.status);
        ensure!(
            response.text.matches("HTTP/1.1 ").count() == 1,
            "{name}: more than one response on the connection: {}",
            response.text
        );
        ensure!(
            response
                .header("connection")
                .is_some_and(|v| v.eq_ignore_ascii_case("close")),
            "{name}: the connection was not closed after an ambiguous request"
        );
        let heads = upstream.heads();
        let new = heads.get(before..).unwrap_or_default();
        ensure!(new.len() == 1, "{name}: {} upstream requests", new.len());
        let head = new[0].to_ascii_lowercase();
        ensure!(
            head.starts_with("post /echo/first ") && !head.contains("content-length: 60"),
            "{name}: forwarded as {head:?}"
        );
        ensure!(
            !heads.iter().any(|h| h.contains("/echo/smuggled")),
            "{name}: the smuggled request reached the upstream"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn hop_by_hop_and_identity_headers_from_clients_are_stripped() -> Result<()> {
    let upstream = Recorder::start().await?;
    let gateway = GatewayProcess::start_ready(&config(&upstream, "{}")).await?;
    let forged = [
        "Connection: close, X-Hop-Secret".to_owned(),
        "X-Hop-Secret: must-not-pass".to_owned(),
        "Keep-Alive: timeout=5".to_owned(),
        "TE: trailers".to_owned(),
        "Proxy-Authorization: Basic bXVzdDpub3Q=".to_owned(),
        "Proxy-Connection: keep-alive".to_owned(),
        "X-Consumer-Username: admin".to_owned(),
        "X-Consumer-Custom-Id: 0".to_owned(),
        "x-consumer-groups: root".to_owned(),
        "X-Credential-Identifier: admin-key".to_owned(),
        "X-Kept: yes".to_owned(),
    ];
    // An open route: no identity at all may reach the upstream.
    let mut request = b"GET /echo/open HTTP/1.1\r\nHost: x\r\n".to_vec();
    for h in &forged {
        request.extend_from_slice(format!("{h}\r\n").as_bytes());
    }
    request.extend_from_slice(b"\r\n");
    let response = send(&gateway, &request).await?;
    ensure!(
        response.status == 200,
        "open route: HTTP {}",
        response.status
    );
    // An authenticated route: only the gateway's own X-Consumer-Username.
    let mut with_key = forged.to_vec();
    with_key.push(format!("apikey: {API_KEY}"));
    let response = send(&gateway, &get_request("/keyed", &with_key)).await?;
    ensure!(
        response.status == 200,
        "keyed route: HTTP {}",
        response.status
    );

    let heads = upstream.heads();
    ensure!(heads.len() == 2, "{} upstream requests", heads.len());
    for (route, head) in ["open", "keyed"].iter().zip(&heads) {
        let lower = head.to_ascii_lowercase();
        for name in [
            "x-hop-secret:",
            "keep-alive:",
            "\r\nte:",
            "proxy-authorization:",
            "proxy-connection:",
            "x-consumer-custom-id:",
            "x-consumer-groups:",
            "x-credential-identifier:",
        ] {
            ensure!(
                !lower.contains(name),
                "{route}: {name} reached the upstream: {head:?}"
            );
        }
        ensure!(
            lower.contains("x-kept: yes"),
            "{route}: an ordinary header was lost"
        );
        let consumers: Vec<&str> = lower
            .split("\r\n")
            .filter(|l| l.starts_with("x-consumer-username:"))
            .collect();
        let expected: &[&str] = if *route == "keyed" {
            &["x-consumer-username: alice"]
        } else {
            &[]
        };
        ensure!(
            consumers == expected,
            "{route}: X-Consumer-Username upstream: {consumers:?}"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn admin_api_bodies_and_heads_are_bounded() -> Result<()> {
    let upstream = Recorder::start().await?;
    let gateway = GatewayProcess::start_ready_with_admin(&config(&upstream, "{}"), API_KEY).await?;
    let admin = format!("127.0.0.1:{}", gateway.admin_port()?);
    // A 2 MiB route definition (the default limit is 1.5 MiB): 413.
    let body = format!(
        r#"{{"uri":"/big","desc":"{}","upstream":{{"nodes":{{"{}":1}}}}}}"#,
        "d".repeat(2 * 1024 * 1024),
        upstream.node()
    );
    let request = [
        format!(
            "PUT /apisix/admin/routes/big HTTP/1.1\r\nHost: x\r\nX-API-KEY: {API_KEY}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        )
        .into_bytes(),
        body.into_bytes(),
    ]
    .concat();
    let response = raw_request(&admin, &request, TIMEOUT).await?;
    ensure!(
        response.status == 413,
        "oversized admin body: HTTP {}: {}",
        response.status,
        response.body()
    );
    // The admin listener has the same head limits as the proxy.
    let response = raw_request(
        &admin,
        &get_request(
            "/apisix/admin/routes",
            &[
                format!("X-API-KEY: {API_KEY}"),
                format!("X-Big: {}", "b".repeat(40 * 1024)),
            ],
        ),
        TIMEOUT,
    )
    .await?;
    ensure!(
        response.status == 431,
        "oversized admin head: HTTP {}",
        response.status
    );
    // A wrong key of the right length is refused like any other.
    let wrong = "x".repeat(API_KEY.len());
    let response = raw_request(
        &admin,
        &get_request("/apisix/admin/routes", &[format!("X-API-KEY: {wrong}")]),
        TIMEOUT,
    )
    .await?;
    ensure!(
        response.status == 401,
        "wrong admin key: HTTP {}",
        response.status
    );
    Ok(())
}

/// An upstream's answer goes to the client with every field it sent except those about
/// its own connection: over HTTP/1.1 (the gateway's loop writes the upstream's lines)
/// and over HTTP/2 (hyper gets a header map built from them).
#[tokio::test]
async fn upstream_fields_reach_the_client_without_hop_by_hop_ones() -> Result<()> {
    let upstream = Recorder::start_answering(
        b"HTTP/1.1 200 OK\r\nServer: up\r\nConnection: keep-alive, X-Up-Private\r\n\
          Keep-Alive: timeout=5\r\nX-Up-Private: 1\r\nSet-Cookie: a=1\r\n\
          Content-Length: 3\r\ncontent-length: 3\r\nSet-Cookie: b=2\r\n\r\nok\n",
    )
    .await?;
    let gateway = GatewayProcess::start_ready(&config(&upstream, "{}")).await?;

    let response = send(&gateway, &get_request("/echo/up", &[])).await?;
    ensure!(response.status == 200, "HTTP {}", response.status);
    let (head, body) = response
        .text
        .split_once("\r\n\r\n")
        .unwrap_or((&response.text, ""));
    ensure!(body == "ok\n", "body {body:?}");
    let lower = head.to_ascii_lowercase();
    ensure!(head.contains("\r\nServer: up\r\n"), "{head}");
    ensure!(
        head.contains("\r\nSet-Cookie: a=1\r\n") && head.contains("\r\nSet-Cookie: b=2\r\n"),
        "both cookies, in order: {head}"
    );
    ensure!(lower.find("a=1") < lower.find("b=2"), "{head}");
    ensure!(lower.matches("\r\ncontent-length:").count() == 1, "{head}");
    for name in ["x-up-private:", "keep-alive:"] {
        ensure!(!lower.contains(name), "{name} reached the client: {head}");
    }

    // HTTP/2 with prior knowledge: the same fields through hyper's encoder.
    let stream = TcpStream::connect(addr(&gateway)).await?;
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await?;
    tokio::spawn(conn);
    let request = hyper::Request::get(format!("http://{}/echo/up", addr(&gateway)))
        .body(http_body_util::Empty::<bytes::Bytes>::new())?;
    let answer = tokio::time::timeout(TIMEOUT, sender.send_request(request)).await??;
    ensure!(answer.status() == 200, "HTTP/2: {}", answer.status());
    let headers = answer.headers();
    ensure!(
        headers.get("server").is_some_and(|v| v == "up"),
        "{headers:?}"
    );
    let cookies: Vec<_> = headers.get_all("set-cookie").iter().collect();
    ensure!(cookies == ["a=1", "b=2"], "{cookies:?}");
    for name in ["x-up-private", "keep-alive", "connection"] {
        ensure!(
            headers.get(name).is_none(),
            "HTTP/2: {name} reached the client"
        );
    }
    ensure!(
        upstream.hits() == 2,
        "{} upstream requests",
        upstream.hits()
    );
    Ok(())
}

/// `pass_host` over a plain upstream (the gateway's own pool writes the head): the
/// client's Host, the node's, or the rewritten one, each sent exactly once.
#[tokio::test]
async fn the_upstream_gets_one_host_as_pass_host_says() -> Result<()> {
    let upstream = Recorder::start().await?;
    let node = upstream.node();
    let gateway = GatewayProcess::start_ready(&format!(
        r#"
routes:
  - id: pass
    uri: /pass
    upstream: {{ nodes: {{ "{node}": 1 }} }}
  - id: node
    uri: /node
    upstream: {{ nodes: {{ "{node}": 1 }}, pass_host: node }}
  - id: rewrite
    uri: /rewrite
    upstream: {{ nodes: {{ "{node}": 1 }}, pass_host: rewrite, upstream_host: api.internal }}
"#
    ))
    .await?;
    for path in ["/pass", "/node", "/rewrite"] {
        let response = send(&gateway, &get_request(path, &["X-Kept: yes".to_owned()])).await?;
        ensure!(response.status == 200, "{path}: HTTP {}", response.status);
    }
    let heads = upstream.heads();
    ensure!(heads.len() == 3, "{} upstream requests", heads.len());
    for (head, expected) in heads.iter().zip([
        "gateway.test".to_owned(),
        node.clone(),
        "api.internal".to_owned(),
    ]) {
        let hosts: Vec<&str> = head
            .split("\r\n")
            .filter_map(|line| {
                let (name, value) = line.split_once(':')?;
                name.eq_ignore_ascii_case("host").then(|| value.trim())
            })
            .collect();
        ensure!(
            hosts == [expected.as_str()],
            "Host lines {hosts:?} in {head:?}"
        );
        ensure!(
            head.to_ascii_lowercase().contains("x-kept: yes"),
            "an ordinary header was lost: {head:?}"
        );
    }
    Ok(())
}
