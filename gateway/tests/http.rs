//! The gateway over real sockets: a real upstream, the gateway bound on port 0, real
//! HTTP/1.1 and HTTP/2 clients. Consumers here use inline secrets (the agent-backed
//! path is proven end to end in the workspace's `tests/` crate).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Empty, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use keygate_gateway::{Config, Gateway};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

use anyhow::{Context as _, Result, anyhow};

/// An upstream: `/secure/ping` answers `secure/pong\n`, `/slow` sleeps 3 s, anything
/// else echoes the request head as JSON. Every answer carries `x-upstream: <name>`.
async fn upstream(name: &'static str) -> Result<(SocketAddr, Arc<AtomicUsize>)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let counter = counter.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    counter.fetch_add(1, Ordering::Relaxed);
                    async move {
                        let body = match req.uri().path() {
                            "/secure/ping" => "secure/pong\n".to_owned(),
                            p if p.ends_with("/slow") => {
                                tokio::time::sleep(Duration::from_secs(3)).await;
                                "slow\n".to_owned()
                            }
                            _ => {
                                let headers: serde_json::Map<String, serde_json::Value> = req
                                    .headers()
                                    .iter()
                                    .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").into()))
                                    .collect();
                                let (parts, body) = req.into_parts();
                                let body = body
                                    .collect()
                                    .await
                                    .map(|b| b.to_bytes())
                                    .unwrap_or_default();
                                serde_json::json!({
                                    "uri": parts.uri.to_string(),
                                    "method": parts.method.as_str(),
                                    "headers": headers,
                                    "body": String::from_utf8_lossy(&body),
                                })
                                .to_string()
                            }
                        };
                        let mut response = Response::new(Full::new(Bytes::from(body)));
                        response
                            .headers_mut()
                            .insert("x-upstream", http::HeaderValue::from_static(name));
                        Ok::<_, Infallible>(response)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Ok((addr, hits))
}

struct Running {
    addr: SocketAddr,
    status: Option<SocketAddr>,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    async fn stop(mut self) -> Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(Duration::from_secs(10), &mut self.task)
            .await
            .map_err(|_| anyhow!("the gateway did not stop within 10 s"))??;
        Ok(())
    }
}

async fn start(yaml: &str) -> Result<Running> {
    let config = Config::parse(yaml)?;
    let gateway = Gateway::bind(config).await?;
    let addr = gateway.local_addr()?;
    let status = gateway.status_addr();
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(gateway.serve(async {
        let _ = rx.await;
    }));
    Ok(Running {
        addr,
        status,
        stop: Some(tx),
        task,
    })
}

fn client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

async fn get(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<(StatusCode, http::HeaderMap, String)> {
    let mut b = Request::get(format!("http://{addr}{path}"));
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let response = client().request(b.body(Full::new(Bytes::new()))?).await?;
    let (parts, body) = response.into_parts();
    let body = body.collect().await?.to_bytes();
    Ok((
        parts.status,
        parts.headers,
        String::from_utf8_lossy(&body).into_owned(),
    ))
}

fn config(upstream: SocketAddr, extra: &str) -> String {
    format!(
        r#"
listen: 127.0.0.1:0
status_listen: 127.0.0.1:0
shutdown_grace: 5s
plugin_attr: {{ jwt-auth: {{ sign_endpoint: true }} }}
routes:
  - id: secure
    uri: /secure/*
    plugins: {{ jwt-auth: {{}} }}
    upstream: {{ nodes: {{ "{upstream}": 1 }} }}
  - id: open
    uri: /open/*
    upstream: {{ nodes: {{ "{upstream}": 1 }}, timeout: {{ connect: 1, send: 1, read: 1 }} }}
consumers:
  - username: bob
    plugins:
      jwt-auth: {{ key: bob-key, secret: "inline-secret" }}
{extra}
"#
    )
}

#[tokio::test]
async fn seed_flow_with_an_inline_secret() -> Result<()> {
    let (up, _) = upstream("a").await?;
    let gw = start(&config(up, "")).await?;

    let (status, headers, body) = get(gw.addr, "/secure/ping", &[]).await?;
    assert_eq!(status, 401);
    assert_eq!(body, r#"{"message":"Missing JWT token in request"}"#);
    assert_eq!(headers["www-authenticate"], r#"Bearer realm="jwt""#);

    let (status, _, token) = get(gw.addr, "/apisix/plugin/jwt/sign?key=bob-key", &[]).await?;
    assert_eq!(status, 200, "{token}");

    let (status, _, body) = get(gw.addr, "/secure/ping", &[("authorization", &token)]).await?;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "secure/pong\n"));

    // The consumer reaches the upstream; a forged one from the client does not.
    let (status, _, body) = get(
        gw.addr,
        "/secure/echo",
        &[
            ("authorization", &format!("Bearer {token}")),
            ("x-consumer-username", "admin"),
        ],
    )
    .await?;
    assert_eq!(status, 200);
    let echo: serde_json::Value = serde_json::from_str(&body)?;
    assert_eq!(echo["headers"]["x-consumer-username"], "bob");
    assert_eq!(echo["headers"]["x-forwarded-for"], "127.0.0.1");
    assert_eq!(echo["headers"]["x-forwarded-proto"], "http");

    let (status, _, body) = get(
        gw.addr,
        "/secure/ping",
        &[("authorization", "Bearer a.b.c")],
    )
    .await?;
    assert_eq!(
        (status.as_u16(), body.as_str()),
        (401, r#"{"message":"JWT token invalid"}"#)
    );

    let (status, _, body) = get(gw.addr, "/nothing", &[]).await?;
    assert_eq!(
        (status.as_u16(), body.as_str()),
        (404, r#"{"error_msg":"404 Route Not Found"}"#)
    );

    // Sign endpoint errors.
    assert_eq!(get(gw.addr, "/apisix/plugin/jwt/sign", &[]).await?.0, 400);
    assert_eq!(
        get(gw.addr, "/apisix/plugin/jwt/sign?key=eve", &[])
            .await?
            .0,
        404
    );

    // The caller's payload cannot override key or exp.
    let (status, _, token) = get(
        gw.addr,
        "/apisix/plugin/jwt/sign?key=bob-key&payload=%7B%22key%22%3A%22eve%22%2C%22exp%22%3A1%2C%22role%22%3A%22x%22%7D",
        &[],
    )
    .await?;
    assert_eq!(status, 200);
    let claims = token.split('.').nth(1).context("no payload")?;
    let claims: serde_json::Value = serde_json::from_slice(&base64::Engine::decode(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD,
        claims,
    )?)?;
    assert_eq!(claims["key"], "bob-key");
    assert_eq!(claims["role"], "x");
    assert!(claims["exp"].as_u64().context("exp")? > 1_700_000_000);

    // Status listener.
    let status_addr = gw.status.context("status listener")?;
    assert_eq!(get(status_addr, "/healthz", &[]).await?.0, 200);
    assert_eq!(get(status_addr, "/readyz", &[]).await?.0, 200);
    let (_, _, metrics) = get(status_addr, "/metrics", &[]).await?;
    assert!(
        metrics.contains(
            r#"keygate_gateway_auth_failures_total{plugin="jwt-auth",reason="missing"} 1"#
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"keygate_gateway_http_responses_total{route="secure",code="2xx"} 2"#),
        "{metrics}"
    );
    // A class a route never answered with, and a route never asked, have no series.
    assert!(
        !metrics.contains(r#"keygate_gateway_http_responses_total{route="secure",code="5xx"}"#),
        "{metrics}"
    );
    assert!(
        !metrics.contains(r#"keygate_gateway_http_responses_total{route="open""#),
        "{metrics}"
    );
    gw.stop().await?;
    Ok(())
}

#[tokio::test]
async fn sign_endpoint_is_off_by_default() -> Result<()> {
    let (up, _) = upstream("a").await?;
    let yaml = config(up, "").replace("sign_endpoint: true", "sign_endpoint: false");
    let gw = start(&yaml).await?;
    assert_eq!(
        get(gw.addr, "/apisix/plugin/jwt/sign?key=bob-key", &[])
            .await?
            .0,
        404
    );
    gw.stop().await?;
    Ok(())
}

#[tokio::test]
async fn upstream_failures_give_502_and_504() -> Result<()> {
    let (up, _) = upstream("a").await?;
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0")?;
        l.local_addr()?
    };
    let extra =
        format!("  - id: dead\n    uri: /dead\n    upstream: {{ nodes: {{ \"{dead}\": 1 }} }}\n");
    let yaml = config(up, "").replace("consumers:", &format!("{extra}consumers:"));
    let gw = start(&yaml).await?;
    let (status, _, body) = get(gw.addr, "/dead", &[]).await?;
    assert_eq!(
        (status.as_u16(), body.as_str()),
        (502, r#"{"error_msg":"502 Bad Gateway"}"#)
    );
    let started = std::time::Instant::now();
    let (status, _, _) = get(gw.addr, "/open/slow", &[]).await?;
    assert_eq!(status, 504);
    assert!(
        started.elapsed() < Duration::from_millis(2900),
        "{:?}",
        started.elapsed()
    );
    gw.stop().await?;
    Ok(())
}

#[tokio::test]
async fn weighted_round_robin_and_retry_on_a_dead_node() -> Result<()> {
    let (a, hits_a) = upstream("a").await?;
    let (b, hits_b) = upstream("b").await?;
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0")?;
        l.local_addr()?
    };
    let yaml = format!(
        r#"
listen: 127.0.0.1:0
routes:
  - uri: /lb/*
    upstream: {{ nodes: {{ "{a}": 3, "{b}": 1, "{dead}": 1 }}, retries: 2, checks: {{ passive: {{ failures: 1, eject: 1h }} }} }}
"#
    );
    let gw = start(&yaml).await?;
    for _ in 0..100 {
        let (status, _, _) = get(gw.addr, "/lb/x", &[]).await?;
        assert_eq!(status, 200);
    }
    let (na, nb) = (
        hits_a.load(Ordering::Relaxed),
        hits_b.load(Ordering::Relaxed),
    );
    assert_eq!(na + nb, 100);
    // 3:1 between the live nodes, give or take the dead node's retried turn.
    assert!((70..=80).contains(&na), "a={na} b={nb}");
    gw.stop().await?;
    Ok(())
}

#[tokio::test]
async fn http2_prior_knowledge() -> Result<()> {
    let (up, _) = upstream("a").await?;
    let gw = start(&config(up, "")).await?;
    let h2: Client<HttpConnector, Empty<Bytes>> = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http();
    let response = h2
        .request(Request::get(format!("http://{}/open/echo", gw.addr)).body(Empty::new())?)
        .await?;
    assert_eq!(response.status(), 200);
    assert_eq!(response.version(), http::Version::HTTP_2);
    let body = response.into_body().collect().await?.to_bytes();
    let echo: serde_json::Value = serde_json::from_slice(&body)?;
    // The HTTP/2 authority became the upstream's Host.
    assert_eq!(echo["headers"]["host"], format!("{}", gw.addr));
    gw.stop().await?;
    Ok(())
}

#[tokio::test]
async fn graceful_shutdown_finishes_in_flight_requests() -> Result<()> {
    let (up, _) = upstream("a").await?;
    let yaml = config(up, "").replace("read: 1", "read: 10");
    let gw = start(&yaml).await?;
    let addr = gw.addr;
    let slow = tokio::spawn(async move { get(addr, "/open/slow", &[]).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    gw.stop().await?;
    let (status, _, body) = slow.await??;
    assert_eq!((status.as_u16(), body.as_str()), (200, "slow\n"));
    // And nothing listens any more.
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
    Ok(())
}

#[tokio::test]
async fn reload_swaps_routes_and_rejects_bad_configs() -> Result<()> {
    let (up, _) = upstream("a").await?;
    let config_a = Config::parse(&config(up, ""))?;
    let gateway = Gateway::bind(config_a).await?;
    let addr = gateway.local_addr()?;
    let handle = gateway.handle();
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(gateway.serve(async {
        let _ = rx.await;
    }));
    assert_eq!(get(addr, "/open/echo", &[]).await?.0, 200);
    let bad = Config::parse("routes: [{uri: nope, upstream: {nodes: {\"a:1\": 1}}}]")?;
    assert!(
        handle
            .reload(&bad)
            .unwrap_err()
            .to_string()
            .contains("routes[0].uri")
    );
    assert_eq!(get(addr, "/open/echo", &[]).await?.0, 200);
    let moved = config(up, "").replace("/open/*", "/moved/*");
    handle.reload(&Config::parse(&moved)?)?;
    assert_eq!(get(addr, "/open/echo", &[]).await?.0, 404);
    assert_eq!(get(addr, "/moved/echo", &[]).await?.0, 200);
    let _ = tx.send(());
    task.await?;
    Ok(())
}

#[tokio::test]
async fn anonymous_consumer_and_hidden_credentials() -> Result<()> {
    let (up, _) = upstream("a").await?;
    let yaml = format!(
        r#"
listen: 127.0.0.1:0
plugin_attr: {{ jwt-auth: {{ sign_endpoint: true }} }}
routes:
  - uri: /maybe/*
    plugins: {{ jwt-auth: {{ anonymous_consumer: guest, hide_credentials: true }} }}
    upstream: {{ nodes: {{ "{up}": 1 }} }}
consumers:
  - username: guest
  - username: bob
    plugins:
      jwt-auth: {{ key: bob-key, secret: "inline-secret" }}
"#
    );
    let gw = start(&yaml).await?;
    let (status, _, body) = get(gw.addr, "/maybe/echo", &[]).await?;
    assert_eq!(status, 200);
    let echo: serde_json::Value = serde_json::from_str(&body)?;
    assert_eq!(echo["headers"]["x-consumer-username"], "guest");

    let (_, _, token) = get(gw.addr, "/apisix/plugin/jwt/sign?key=bob-key", &[]).await?;
    let (status, _, body) = get(gw.addr, &format!("/maybe/echo?jwt={token}&x=1"), &[]).await?;
    assert_eq!(status, 200);
    let echo: serde_json::Value = serde_json::from_str(&body)?;
    assert_eq!(echo["headers"]["x-consumer-username"], "bob");
    assert_eq!(echo["uri"], "/maybe/echo?x=1");
    gw.stop().await?;
    Ok(())
}

/// Reads one HTTP/1.1 response with a `content-length` body from `stream`: status,
/// head (lower-cased), body.
async fn read_response(
    stream: &mut tokio::net::TcpStream,
    pending: &mut Vec<u8>,
) -> Result<(u16, String, String)> {
    use tokio::io::AsyncReadExt as _;
    loop {
        if let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&pending[..end]).to_lowercase();
            let status: u16 = head
                .get(9..12)
                .and_then(|s| s.parse().ok())
                .context("status line")?;
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .and_then(|n| n.trim().parse().ok())
                .context("content-length")?;
            if pending.len() >= end + 4 + length {
                let body =
                    String::from_utf8_lossy(&pending[end + 4..end + 4 + length]).into_owned();
                pending.drain(..end + 4 + length);
                return Ok((status, head, body));
            }
        }
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut chunk)).await??;
        anyhow::ensure!(n > 0, "connection closed mid-response");
        pending.extend_from_slice(&chunk[..n]);
    }
}

#[tokio::test]
async fn one_connection_goes_from_the_http1_loop_to_hyper_mid_way() -> Result<()> {
    use tokio::io::AsyncWriteExt as _;
    let (up, hits) = upstream("a").await?;
    let gw = start(&config(up, "")).await?;
    let mut stream = tokio::net::TcpStream::connect(gw.addr).await?;
    let mut pending = Vec::new();

    // Two bodiless requests in one write, served by the gateway's own loop in order.
    stream
        .write_all(
            b"GET /open/one HTTP/1.1\r\nHost: h\r\n\r\nGET /open/two HTTP/1.1\r\nHost: h\r\n\r\n",
        )
        .await?;
    for path in ["/open/one", "/open/two"] {
        let (status, head, body) = read_response(&mut stream, &mut pending).await?;
        anyhow::ensure!(status == 200, "{path}: {status} {body}");
        anyhow::ensure!(head.contains("x-upstream: a"), "{path}: {head}");
        anyhow::ensure!(head.contains("\r\ndate: "), "{path}: no date: {head}");
        anyhow::ensure!(
            body.contains(&format!(r#""uri":"{path}""#)),
            "{path}: {body}"
        );
    }
    // A short body with its head stays in the loop; a chunked one hands the
    // connection to hyper with the bytes already read; bodiless requests follow.
    stream
        .write_all(
            b"POST /open/three HTTP/1.1\r\nHost: h\r\nContent-Length: 11\r\n\r\nhello there\
              PUT /open/four HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n\
              5\r\nhello\r\n6\r\n again\r\n0\r\n\r\n\
              GET /open/four-after HTTP/1.1\r\nHost: h\r\n\r\n",
        )
        .await?;
    for (method, body) in [("POST", "hello there"), ("PUT", "hello again")] {
        let (status, _, answer) = read_response(&mut stream, &mut pending).await?;
        anyhow::ensure!(status == 200, "{method}: {status} {answer}");
        anyhow::ensure!(
            answer.contains(&format!(r#""body":"{body}""#))
                && answer.contains(&format!(r#""method":"{method}""#)),
            "the {method} body did not reach the upstream: {answer}"
        );
    }
    let (status, _, body) = read_response(&mut stream, &mut pending).await?;
    anyhow::ensure!(
        status == 200 && body.contains("/open/four-after"),
        "after the hand-over: {status} {body}"
    );

    // A client that asks for the connection to close gets it closed after the answer.
    stream
        .write_all(b"GET /open/five HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
        .await?;
    let (status, head, _) = read_response(&mut stream, &mut pending).await?;
    anyhow::ensure!(
        status == 200 && head.contains("connection: close"),
        "{head}"
    );
    let mut rest = [0u8; 16];
    let n = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::io::AsyncReadExt::read(&mut stream, &mut rest),
    )
    .await??;
    anyhow::ensure!(n == 0, "the connection stayed open after connection: close");
    anyhow::ensure!(hits.load(Ordering::Relaxed) == 6, "upstream hits: {hits:?}");

    // A fresh connection that starts with a body is hyper's from its first request.
    let mut stream = tokio::net::TcpStream::connect(gw.addr).await?;
    stream
        .write_all(b"PUT /open/six HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\nok")
        .await?;
    let (status, _, body) = read_response(&mut stream, &mut pending).await?;
    anyhow::ensure!(
        status == 200 && body.contains(r#""body":"ok""#),
        "{status} {body}"
    );
    gw.stop().await
}
