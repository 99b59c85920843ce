//! The Admin API of the real gateway binary: CRUD round trips with APISIX's shapes,
//! validation and auth failures, changes applied to live traffic on open connections,
//! persistence across restarts (files 0600 in 0700 directories), and `kill -9` in the
//! middle of a burst of writes.

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};
use keygate_tests::gateway::{GatewayProcess, Upstream};
use keygate_tests::{AgentConfig, AgentProcess, OpenBao, assert_no_secret_in, eventually};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::sync::Mutex;

const KEY: &str = "admin-key-for-tests-0123456789";

fn parse(body: &str) -> Result<Value> {
    serde_json::from_str(body).with_context(|| format!("not JSON: {body}"))
}

/// `status`, and `error_msg` starting with `prefix`.
fn expect_error(answer: &(u16, String), status: u16, prefix: &str) -> Result<()> {
    let v = parse(&answer.1)?;
    let msg = v["error_msg"].as_str().unwrap_or("");
    ensure!(
        answer.0 == status && msg.starts_with(prefix),
        "expected {status} {prefix:?}..., got {} {}",
        answer.0,
        answer.1
    );
    Ok(())
}

async fn start(upstream: &Upstream) -> Result<GatewayProcess> {
    let _ = upstream;
    GatewayProcess::start_ready_with_admin(
        "plugin_attr: { jwt-auth: { sign_endpoint: true } }\n",
        KEY,
    )
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn crud_round_trips_validation_and_auth() -> Result<()> {
    let upstream = Upstream::start().await?;
    let gw = start(&upstream).await?;
    let node = upstream.node();

    // Auth: missing, wrong, and a right key in the query or a cookie (as APISIX).
    for key in [None, Some("wrong"), Some("")] {
        let answer = gw.admin("GET", "/apisix/admin/routes", key, None).await?;
        ensure!(
            answer == (401, r#"{"error_msg":"failed to check token"}"#.to_owned()),
            "{answer:?}"
        );
    }
    let answer = gw
        .admin(
            "PUT",
            "/apisix/admin/routes/1",
            Some("wrong"),
            Some(r#"{"uri":"/x"}"#),
        )
        .await?;
    ensure!(answer.0 == 401);
    let answer = gw
        .admin(
            "GET",
            &format!("/apisix/admin/routes?api_key={KEY}"),
            None,
            None,
        )
        .await?;
    ensure!(
        answer == (200, r#"{"list":[],"total":0}"#.to_owned()),
        "{answer:?}"
    );

    // Upstream, route by upstream_id, consumer: created 201, replaced 200.
    let up = format!(r#"{{"type":"roundrobin","nodes":{{"{node}":1}}}}"#);
    let answer = gw
        .admin("PUT", "/apisix/admin/upstreams/u1", Some(KEY), Some(&up))
        .await?;
    ensure!(answer.0 == 201, "{answer:?}");
    let v = parse(&answer.1)?;
    ensure!(v["key"] == "/apisix/upstreams/u1" && v["value"]["id"] == "u1");
    ensure!(v["value"]["create_time"].is_u64() && v["value"]["update_time"].is_u64());
    let route = r#"{"uri":"/secure/ping","upstream_id":"u1","plugins":{"key-auth":{}}}"#;
    let answer = gw
        .admin("PUT", "/apisix/admin/routes/1", Some(KEY), Some(route))
        .await?;
    ensure!(answer.0 == 201, "{answer:?}");
    let consumer = r#"{"username":"ann","plugins":{"key-auth":{"key":"ann-api-key-123"}}}"#;
    let answer = gw
        .admin("PUT", "/apisix/admin/consumers", Some(KEY), Some(consumer))
        .await?;
    ensure!(answer.0 == 201, "{answer:?}");
    let answer = gw
        .admin(
            "PUT",
            "/apisix/admin/consumers/ann",
            Some(KEY),
            Some(consumer),
        )
        .await?;
    ensure!(answer.0 == 200, "{answer:?}");

    // Live at once: the route answers, with the consumer's key only.
    let (status, _) = gw.get("/secure/ping", &[]).await?;
    ensure!(status == 401);
    let (status, body) = gw
        .get("/secure/ping", &[("apikey", "ann-api-key-123")])
        .await?;
    ensure!((status, body.as_str()) == (200, "secure/pong\n"));

    // GET one and the list, APISIX 3.x shapes.
    let answer = gw
        .admin("GET", "/apisix/admin/routes/1", Some(KEY), None)
        .await?;
    let v = parse(&answer.1)?;
    ensure!(
        answer.0 == 200 && v["key"] == "/apisix/routes/1" && v["value"]["uri"] == "/secure/ping"
    );
    ensure!(v["createdIndex"].is_u64() && v["modifiedIndex"].is_u64());
    let answer = gw
        .admin("GET", "/apisix/admin/consumers", Some(KEY), None)
        .await?;
    let v = parse(&answer.1)?;
    ensure!(
        v["total"] == 1 && v["list"][0]["key"] == "/apisix/consumers/ann",
        "{v}"
    );

    // PATCH: merge (null removes), and a sub path.
    let answer = gw
        .admin(
            "PATCH",
            "/apisix/admin/routes/1",
            Some(KEY),
            Some(r#"{"plugins":{"key-auth":null},"name":"ping"}"#),
        )
        .await?;
    let v = parse(&answer.1)?;
    ensure!(
        answer.0 == 200 && v["value"]["plugins"] == json!({}) && v["value"]["name"] == "ping",
        "{v}"
    );
    let (status, _) = gw.get("/secure/ping", &[]).await?;
    ensure!(status == 200, "the auth plugin is still on: {status}");
    let answer = gw
        .admin(
            "PATCH",
            "/apisix/admin/routes/1/methods",
            Some(KEY),
            Some(r#"["POST"]"#),
        )
        .await?;
    ensure!(answer.0 == 200, "{answer:?}");
    let (status, _) = gw.get("/secure/ping", &[]).await?;
    ensure!(status == 404, "GET still routed: {status}");

    // POST: a generated 20-digit id, 201.
    let answer = gw
        .admin(
            "POST",
            "/apisix/admin/routes",
            Some(KEY),
            Some(&format!(r#"{{"uri":"/posted","upstream":{up}}}"#)),
        )
        .await?;
    ensure!(answer.0 == 201, "{answer:?}");
    let v = parse(&answer.1)?;
    let id = v["value"]["id"].as_str().unwrap_or("").to_owned();
    ensure!(
        id.len() == 20 && id.bytes().all(|b| b.is_ascii_digit()),
        "{v}"
    );
    ensure!(v["key"] == format!("/apisix/routes/{id}"));

    // Validation errors: 400 naming the field, nothing applied.
    let cases: &[(&str, &str, &str, &str)] = &[
        (
            "PUT",
            "/apisix/admin/routes/2",
            r#"{"uri":"/a","upstream":{"nodez":{}}}"#,
            "invalid configuration: upstream.nodez: unknown field `nodez`",
        ),
        (
            "PUT",
            "/apisix/admin/routes/2",
            r#"{"uri":"/a"}"#,
            "invalid configuration: upstream: required (or upstream_id)",
        ),
        (
            "PUT",
            "/apisix/admin/routes/2",
            r#"{"uri":"/a","upstream_id":"nope"}"#,
            "invalid configuration: upstream_id: no upstream with id \"nope\"",
        ),
        (
            "PUT",
            "/apisix/admin/routes/2",
            r#"{"uri":"/a","upstream_id":"u1","plugins":{"jwt-auth":{},"key-auth":{}}}"#,
            "invalid configuration: plugins: at most one authentication plugin per route",
        ),
        (
            "PUT",
            "/apisix/admin/routes/2",
            r#"{"id":"3","uri":"/a","upstream_id":"u1"}"#,
            "wrong route id",
        ),
        (
            "PUT",
            "/apisix/admin/routes/2",
            r#"{"uri":"/a","upstream_id":"u1""#,
            "invalid request body: ",
        ),
        (
            "PUT",
            "/apisix/admin/routes/2",
            "",
            "missing configurations",
        ),
        (
            "PUT",
            "/apisix/admin/routes/a%2Fb",
            r#"{"uri":"/a","upstream_id":"u1"}"#,
            "invalid configuration: id: ",
        ),
        (
            "PUT",
            "/apisix/admin/routes",
            r#"{"uri":"/a","upstream_id":"u1"}"#,
            "missing route id",
        ),
        (
            "POST",
            "/apisix/admin/routes",
            r#"{"id":"9","uri":"/a","upstream_id":"u1"}"#,
            "wrong route id, do not need it",
        ),
        (
            "PUT",
            "/apisix/admin/consumers",
            r#"{"plugins":{}}"#,
            "invalid configuration: username: required",
        ),
        (
            "PUT",
            "/apisix/admin/consumers/bob",
            r#"{"username":"jim"}"#,
            "wrong username",
        ),
        (
            "PUT",
            "/apisix/admin/consumers",
            r#"{"username":"bob","plugins":{"jwt-auth":{"key":"k"}}}"#,
            "invalid configuration: plugins.jwt-auth.secret: HS256 needs a secret",
        ),
        (
            "PUT",
            "/apisix/admin/consumers",
            r#"{"username":"bob","plugins":{"key-auth":{"key":"ann-api-key-123"}}}"#,
            "invalid configuration: plugins.key-auth.key: the same key is used by another consumer",
        ),
        (
            "PUT",
            "/apisix/admin/consumers",
            r#"{"username":"bob","plugins":{"jwt-auth":{"key":"k","secret":"s","algorithm":"XX256"}}}"#,
            "invalid configuration: plugins.jwt-auth.algorithm: ",
        ),
        (
            "PUT",
            "/apisix/admin/consumers",
            r#"["not","an","object"]"#,
            "invalid configuration: expected a JSON object",
        ),
        (
            "PATCH",
            "/apisix/admin/routes/1/plugins/x/y",
            r#"{}"#,
            "invalid sub path",
        ),
        (
            "DELETE",
            "/apisix/admin/upstreams/u1",
            "",
            "can not delete this upstream, route [1] is still using it now",
        ),
        (
            "GET",
            "/apisix/admin/routes?ttl=5",
            "",
            "ttl is not supported",
        ),
        (
            "GET",
            "/apisix/admin/routes?page=1&page_size=3",
            "",
            "page_size: must be an integer from 10 to 500",
        ),
    ];
    let before = gw
        .admin("GET", "/apisix/admin/routes", Some(KEY), None)
        .await?;
    for (method, path, body, prefix) in cases {
        let body = (!body.is_empty()).then_some(*body);
        let answer = gw.admin(method, path, Some(KEY), body).await?;
        expect_error(&answer, 400, prefix).with_context(|| format!("{method} {path}"))?;
    }
    let after = gw
        .admin("GET", "/apisix/admin/routes", Some(KEY), None)
        .await?;
    ensure!(before == after, "a refused write changed something");
    expect_error(
        &gw.admin("POST", "/apisix/admin/consumers", Some(KEY), Some("{}"))
            .await?,
        405,
        "not supported `POST` method for consumer",
    )?;
    expect_error(
        &gw.admin("GET", "/apisix/admin/services", Some(KEY), None)
            .await?,
        404,
        "unsupported resource type: services",
    )?;
    let big = format!(r#"{{"uri":"/a","desc":"{}"}}"#, "x".repeat(2 * 1024 * 1024));
    expect_error(
        &gw.admin("PUT", "/apisix/admin/routes/big", Some(KEY), Some(&big))
            .await?,
        413,
        "invalid request body: larger than",
    )?;

    // DELETE: 200 with APISIX's body, then 404 Key not found; traffic follows.
    let answer = gw
        .admin(
            "DELETE",
            &format!("/apisix/admin/routes/{id}"),
            Some(KEY),
            None,
        )
        .await?;
    ensure!(
        answer
            == (
                200,
                format!(r#"{{"deleted":"1","key":"/apisix/routes/{id}"}}"#)
            ),
        "{answer:?}"
    );
    for method in ["GET", "DELETE"] {
        let answer = gw
            .admin(
                method,
                &format!("/apisix/admin/routes/{id}"),
                Some(KEY),
                None,
            )
            .await?;
        ensure!(
            answer == (404, r#"{"message":"Key not found"}"#.to_owned()),
            "{answer:?}"
        );
    }
    let answer = gw
        .admin("GET", "/apisix/admin/plugins/list", Some(KEY), None)
        .await?;
    ensure!(parse(&answer.1)? == json!(["basic-auth", "jwt-auth", "key-auth"]));
    let log = gw.log_contents();
    assert_no_secret_in(&log, &[KEY, "ann-api-key-123"]);
    Ok(())
}

/// Mode bits of a path.
fn mode(path: &Path) -> Result<u32> {
    Ok(std::fs::metadata(path)
        .with_context(|| path.display().to_string())?
        .permissions()
        .mode()
        & 0o777)
}

#[tokio::test(flavor = "multi_thread")]
async fn changes_survive_a_restart_in_private_files() -> Result<()> {
    let upstream = Upstream::start().await?;
    let mut gw = start(&upstream).await?;
    let route = format!(
        r#"{{"uri":"/secure/ping","plugins":{{"jwt-auth":{{}}}},"upstream":{{"nodes":{{"{}":1}}}}}}"#,
        upstream.node()
    );
    for (path, body) in [
        ("/apisix/admin/routes/1", route.as_str()),
        (
            "/apisix/admin/consumers",
            r#"{"username":"jack","plugins":{"jwt-auth":{"key":"test-key","secret":"inline-secret-value"}}}"#,
        ),
        (
            "/apisix/admin/consumers",
            r#"{"username":"tmp","plugins":{"key-auth":{"key":"tmp-key-123456"}}}"#,
        ),
    ] {
        let answer = gw.admin("PUT", path, Some(KEY), Some(body)).await?;
        ensure!(answer.0 == 201, "{answer:?}");
    }
    let answer = gw
        .admin("DELETE", "/apisix/admin/consumers/tmp", Some(KEY), None)
        .await?;
    ensure!(answer.0 == 200);
    let routes_before = gw
        .admin("GET", "/apisix/admin/routes", Some(KEY), None)
        .await?;
    let consumers_before = gw
        .admin("GET", "/apisix/admin/consumers", Some(KEY), None)
        .await?;

    let state = gw.state_dir().join("admin");
    ensure!(mode(&state)? == 0o700);
    for dir in ["routes", "upstreams", "consumers"] {
        ensure!(mode(&state.join(dir))? == 0o700, "{dir}");
    }
    for file in ["routes/1.json", "consumers/jack.json", "revision", "lock"] {
        ensure!(mode(&state.join(file))? == 0o600, "{file}");
    }
    ensure!(
        !state.join("consumers/tmp.json").exists(),
        "deleted consumer still on disk"
    );

    let status = gw.sigterm().await?;
    ensure!(status.success(), "{status}");
    gw.start_again()?;
    gw.wait_ready(Duration::from_secs(30)).await?;
    ensure!(
        gw.admin("GET", "/apisix/admin/routes", Some(KEY), None)
            .await?
            == routes_before
    );
    ensure!(
        gw.admin("GET", "/apisix/admin/consumers", Some(KEY), None)
            .await?
            == consumers_before
    );
    let token = gw.sign("test-key").await?;
    let (status, body) = gw.get("/secure/ping", &[("authorization", &token)]).await?;
    ensure!((status, body.as_str()) == (200, "secure/pong\n"));

    // The next POST gets an id above every revision used before the restart.
    let answer = gw
        .admin(
            "POST",
            "/apisix/admin/upstreams",
            Some(KEY),
            Some(&format!(r#"{{"nodes":{{"{}":1}}}}"#, upstream.node())),
        )
        .await?;
    ensure!(answer.0 == 201);
    let id = parse(&answer.1)?["value"]["id"]
        .as_str()
        .unwrap_or("")
        .to_owned();
    ensure!(id == "00000000000000000005", "{id}");
    assert_no_secret_in(&gw.log_contents(), &[KEY, "inline-secret-value"]);
    Ok(())
}

/// Writers PUT their own route (and one its own consumer) over and over; the gateway is
/// killed with SIGKILL in the middle; after a restart every resource holds the value of
/// its last acknowledged write or of the one that was in flight, and the state loads.
#[tokio::test(flavor = "multi_thread")]
async fn kill9_in_a_burst_of_writes_leaves_a_consistent_state() -> Result<()> {
    const WRITERS: usize = 4;
    let upstream = Upstream::start().await?;
    let mut gw = start(&upstream).await?;
    let admin = gw.admin_base_url().context("no admin")?;
    let node = upstream.node();
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()?;
    // Per writer: (last acknowledged version, version in flight).
    let progress: Arc<Mutex<HashMap<usize, (u64, u64)>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        let (http, admin, node) = (http.clone(), admin.clone(), node.clone());
        let (progress, stop) = (progress.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let mut v = 0u64;
            while !stop.load(Ordering::Relaxed) {
                v += 1;
                progress.lock().await.entry(w).or_default().1 = v;
                let (path, body) = if w == 0 {
                    (
                        "/apisix/admin/consumers".to_owned(),
                        json!({"username": "writer", "desc": format!("v{v}"),
                               "plugins": {"key-auth": {"key": format!("writer-key-{v}")}}}),
                    )
                } else {
                    (
                        format!("/apisix/admin/routes/w{w}"),
                        json!({"uri": format!("/burst/{w}/{v}"), "upstream": {"nodes": {node.as_str(): 1}}}),
                    )
                };
                let sent = http
                    .put(format!("{admin}{path}"))
                    .header("X-API-KEY", KEY)
                    .body(body.to_string())
                    .send()
                    .await;
                match sent {
                    Ok(resp) if resp.status().is_success() => {
                        progress.lock().await.entry(w).or_default().0 = v;
                    }
                    _ => break,
                }
            }
        }));
    }
    // Let a few dozen writes land, then kill in the middle of the burst.
    eventually(Duration::from_secs(30), || async {
        let acked: u64 = progress.lock().await.values().map(|(a, _)| *a).sum();
        ensure!(acked >= 40, "{acked} writes acknowledged so far");
        Ok(())
    })
    .await?;
    gw.kill9().await?;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    let progress = progress.lock().await.clone();

    gw.start_again()?;
    gw.wait_ready(Duration::from_secs(30)).await?;
    for (w, (acked, in_flight)) in &progress {
        let version = if *w == 0 {
            let answer = gw
                .admin("GET", "/apisix/admin/consumers/writer", Some(KEY), None)
                .await?;
            let v = parse(&answer.1)?;
            v["value"]["desc"]
                .as_str()
                .and_then(|d| d.strip_prefix('v'))
                .and_then(|d| d.parse::<u64>().ok())
                .with_context(|| format!("writer consumer: {}", answer.1))?
        } else {
            let answer = gw
                .admin(
                    "GET",
                    &format!("/apisix/admin/routes/w{w}"),
                    Some(KEY),
                    None,
                )
                .await?;
            let v = parse(&answer.1)?;
            v["value"]["uri"]
                .as_str()
                .and_then(|u| u.rsplit('/').next())
                .and_then(|d| d.parse::<u64>().ok())
                .with_context(|| format!("route w{w}: {}", answer.1))?
        };
        ensure!(
            version == *acked || version == *in_flight,
            "writer {w}: stored version {version}, acknowledged {acked}, in flight {in_flight}"
        );
        if *w != 0 {
            // And it is live.
            let (status, _) = gw.get(&format!("/burst/{w}/{version}"), &[]).await?;
            ensure!(status == 404 || status == 200, "{status}");
        }
    }
    // No temporary file survives the restart.
    let mut leftovers = Vec::new();
    for dir in ["routes", "consumers", "upstreams"] {
        for entry in std::fs::read_dir(gw.state_dir().join("admin").join(dir))? {
            let name = entry?.file_name().to_string_lossy().into_owned();
            if name.ends_with(".tmp") {
                leftovers.push(name);
            }
        }
    }
    ensure!(leftovers.is_empty(), "{leftovers:?}");
    eprintln!("kill -9 burst: progress per writer (acknowledged, in flight): {progress:?}");
    Ok(())
}

/// One HTTP/1.1 keep-alive connection to the proxy: requests are written on it and
/// responses read back, so any close by the gateway fails the test.
struct KeepAlive {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl KeepAlive {
    async fn connect(port: u16) -> Result<Self> {
        Ok(Self {
            stream: TcpStream::connect(("127.0.0.1", port)).await?,
            buf: Vec::new(),
        })
    }

    /// GET `path`; returns the status.
    async fn get(&mut self, path: &str) -> Result<u16> {
        self.stream
            .write_all(format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").as_bytes())
            .await?;
        loop {
            if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&self.buf[..end]).into_owned();
                let status: u16 = head
                    .split(' ')
                    .nth(1)
                    .and_then(|s| s.parse().ok())
                    .context("no status")?;
                let length: usize = head
                    .lines()
                    .find_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        k.eq_ignore_ascii_case("content-length")
                            .then(|| v.trim().parse().ok())
                            .flatten()
                    })
                    .context("no content-length")?;
                if head.to_ascii_lowercase().contains("connection: close") {
                    bail!("the gateway asked to close the connection");
                }
                while self.buf.len() < end + 4 + length {
                    self.read_more().await?;
                }
                self.buf.drain(..end + 4 + length);
                return Ok(status);
            }
            self.read_more().await?;
        }
    }

    async fn read_more(&mut self) -> Result<()> {
        let mut chunk = [0u8; 4096];
        let n = self.stream.read(&mut chunk).await?;
        ensure!(n > 0, "the gateway closed the connection");
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(())
    }
}

/// Also: the route's response counter carries on across the writes.
#[tokio::test(flavor = "multi_thread")]
async fn changes_apply_to_open_connections_at_once() -> Result<()> {
    let a = Upstream::start().await?;
    let b = Upstream::start().await?;
    let gw = start(&a).await?;
    let put_route = |node: String| {
        let gw = &gw;
        async move {
            let body = format!(r#"{{"uri":"/secure/ping","upstream":{{"nodes":{{"{node}":1}}}}}}"#);
            let started = Instant::now();
            let answer = gw
                .admin("PUT", "/apisix/admin/routes/1", Some(KEY), Some(&body))
                .await?;
            ensure!(answer.0 == 200 || answer.0 == 201, "{answer:?}");
            Ok::<_, anyhow::Error>(started.elapsed())
        }
    };
    put_route(a.node()).await?;
    let mut conn = KeepAlive::connect(gw.port()).await?;
    ensure!(conn.get("/secure/ping").await? == 200);

    let mut latencies = Vec::new();
    let mut switch = Vec::new();
    for i in 0..30 {
        let (target, other) = if i % 2 == 0 { (&b, &a) } else { (&a, &b) };
        let (before_t, before_o) = (target.hits(), other.hits());
        latencies.push(put_route(target.node()).await?);
        // The very next request on the same connection goes to the new upstream.
        let started = Instant::now();
        ensure!(conn.get("/secure/ping").await? == 200);
        switch.push(started.elapsed());
        ensure!(
            target.hits() == before_t + 1 && other.hits() == before_o,
            "round {i}: the request after the change did not go to the new upstream"
        );
    }
    // The route's response counter counted across the 30 rebuilds (it used to start
    // again from zero on every write).
    let series = r#"keygate_gateway_http_responses_total{route="1",code="2xx"}"#;
    let counted = gw.metrics().await?.get(series).copied();
    ensure!(counted == Some(31.0), "{series}: {counted:?}, expected 31");
    latencies.sort();
    let pct = |p: usize| latencies[(latencies.len() * p / 100).min(latencies.len() - 1)];
    eprintln!(
        "admin PUT latency (validate + fsync + swap, client-observed): p50 {:?}, p90 {:?}, max {:?}; first request after the change: max {:?}",
        pct(50),
        pct(90),
        latencies.last().copied().unwrap_or_default(),
        switch.iter().max().copied().unwrap_or_default()
    );
    Ok(())
}

/// Passive health checks across Admin API writes, on the real gateway: a node that
/// fails is ejected, and a write that does not touch its upstream (a new consumer) does
/// not send traffic to it again (each write builds every upstream afresh).
#[tokio::test(flavor = "multi_thread")]
async fn an_ejected_node_stays_ejected_across_an_unrelated_write() -> Result<()> {
    let live = Upstream::start().await?;
    // A node that accepts and hangs up at once: each attempt is counted, and fails.
    let dead = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let dead_node = dead.local_addr()?.to_string();
    let attempts = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = Arc::clone(&attempts);
    let hang_up = tokio::spawn(async move {
        while let Ok((socket, _)) = dead.accept().await {
            counter.fetch_add(1, Ordering::Relaxed);
            drop(socket);
        }
    });
    let gw = start(&live).await?;
    let route = format!(
        r#"{{"uri":"/secure/ping","upstream":{{"nodes":{{"{}":1,"{dead_node}":1}},"checks":{{"passive":{{"failures":1,"eject":"1h"}}}}}}}}"#,
        live.node()
    );
    let answer = gw
        .admin("PUT", "/apisix/admin/routes/1", Some(KEY), Some(&route))
        .await?;
    ensure!(answer.0 == 201 || answer.0 == 200, "{answer:?}");
    // Round robin reaches the dead node within two requests; it fails once and is out.
    for _ in 0..4 {
        let (status, _) = gw.get("/secure/ping", &[]).await?;
        ensure!(
            status == 200,
            "HTTP {status}: the retry should reach the live node"
        );
    }
    ensure!(
        attempts.load(Ordering::Relaxed) == 1,
        "the dead node was tried {} times before the write, expected once",
        attempts.load(Ordering::Relaxed)
    );

    let consumer = r#"{"username":"jim","plugins":{"jwt-auth":{"key":"jim-key","secret":"jim-secret-0123456789-0123456789"}}}"#;
    let answer = gw
        .admin("PUT", "/apisix/admin/consumers", Some(KEY), Some(consumer))
        .await?;
    ensure!(answer.0 == 201 || answer.0 == 200, "{answer:?}");
    let hits = live.hits();
    for _ in 0..6 {
        let (status, _) = gw.get("/secure/ping", &[]).await?;
        ensure!(status == 200, "HTTP {status}");
    }
    ensure!(
        attempts.load(Ordering::Relaxed) == 1,
        "the write brought the ejected node back: tried {} times",
        attempts.load(Ordering::Relaxed)
    );
    ensure!(
        live.hits() == hits + 6,
        "the live node did not take every request"
    );
    hang_up.abort();
    Ok(())
}

/// A write builds only what it changes and takes the rest over from the runtime in use
/// (the same consumer objects, with the tokens the routes remember as verified by
/// them): on the real gateway, a token stays good across an unrelated write, and the
/// write that changes its consumer's secret refuses it at once, as the delete of the
/// consumer refuses the new one.
#[tokio::test(flavor = "multi_thread")]
async fn a_changed_secret_refuses_the_old_token_at_once() -> Result<()> {
    let upstream = Upstream::start().await?;
    let gw = start(&upstream).await?;
    let put = |path: &'static str, body: String| {
        let gw = &gw;
        async move {
            let answer = gw.admin("PUT", path, Some(KEY), Some(&body)).await?;
            ensure!(answer.0 == 200 || answer.0 == 201, "PUT {path}: {answer:?}");
            Ok::<_, anyhow::Error>(())
        }
    };
    let route = format!(
        r#"{{"uri":"/secure/*","plugins":{{"jwt-auth":{{}}}},"upstream":{{"nodes":{{"{}":1}}}}}}"#,
        upstream.node()
    );
    put("/apisix/admin/routes/1", route).await?;
    let consumer = |secret: &str| {
        format!(
            r#"{{"username":"jack","plugins":{{"jwt-auth":{{"key":"jack-key","secret":"{secret}"}}}}}}"#
        )
    };
    let (first, second) = (
        keygate_tests::random_secret("jack-1"),
        keygate_tests::random_secret("jack-2"),
    );
    put("/apisix/admin/consumers", consumer(&first)).await?;
    let lifetime = Duration::from_secs(600);
    let old_token = keygate_tests::load::hs256_token("jack-key", &first, lifetime);
    let new_token = keygate_tests::load::hs256_token("jack-key", &second, lifetime);
    let status = |token: &str| {
        let gw = &gw;
        let bearer = format!("Bearer {token}");
        async move {
            let (status, _) = gw
                .get("/secure/ping", &[("Authorization", &bearer)])
                .await?;
            Ok::<_, anyhow::Error>(status)
        }
    };
    // Twice: the second is answered from the route's verified tokens.
    ensure!(status(&old_token).await? == 200 && status(&old_token).await? == 200);

    let jim = r#"{"username":"jim","plugins":{"jwt-auth":{"key":"jim-key","secret":"jim-secret-0123456789-0123456789"}}}"#;
    put("/apisix/admin/consumers", jim.to_owned()).await?;
    ensure!(
        status(&old_token).await? == 200,
        "an unrelated write refused jack's token"
    );

    put("/apisix/admin/consumers", consumer(&second)).await?;
    let old = status(&old_token).await?;
    ensure!(
        old == 401,
        "HTTP {old} for a token signed with jack's old secret"
    );
    ensure!(status(&new_token).await? == 200);

    let answer = gw
        .admin("DELETE", "/apisix/admin/consumers/jack", Some(KEY), None)
        .await?;
    ensure!(answer.0 == 200, "{answer:?}");
    let deleted = status(&new_token).await?;
    ensure!(
        deleted == 401,
        "HTTP {deleted} for the token of a deleted consumer"
    );
    assert_no_secret_in(&gw.log_contents(), &[&first, &second]);
    Ok(())
}

/// `admin.key: $secret://vault/...`: the key comes from Vault through the agent, is
/// refused while not available, and rotates without a restart.
#[tokio::test(flavor = "multi_thread")]
async fn the_admin_key_comes_from_vault_and_rotates_live() -> Result<()> {
    let bao = OpenBao::start().await?;
    bao.enable_kv("kv", 1).await?;
    let agent = AgentProcess::start_ready(
        AgentConfig::new(&bao.addr(), "kv/apisix")
            .token(bao.root_token())
            .refresh_interval("1s"),
    )
    .await?;
    let body = format!("agent: {{ socket: {:?} }}\n", agent.socket_path());
    let gw =
        GatewayProcess::start_ready_with_admin(&body, "$secret://vault/gateway/admin/key").await?;
    // Not in Vault yet: no key works, and the answer says why.
    expect_error(
        &gw.admin("GET", "/apisix/admin/routes", Some("anything"), None)
            .await?,
        503,
        "the admin key is not available",
    )?;
    let first = keygate_tests::random_secret("admin-1");
    bao.kv1_put("kv/apisix/gateway/admin", json!({ "key": first }))
        .await?;
    eventually(Duration::from_secs(10), || async {
        let answer = gw
            .admin("GET", "/apisix/admin/routes", Some(&first), None)
            .await?;
        ensure!(answer.0 == 200, "{answer:?}");
        Ok(())
    })
    .await?;
    ensure!(
        gw.admin("GET", "/apisix/admin/routes", Some("wrong"), None)
            .await?
            .0
            == 401
    );

    let second = keygate_tests::random_secret("admin-2");
    bao.kv1_put("kv/apisix/gateway/admin", json!({ "key": second }))
        .await?;
    eventually(Duration::from_secs(10), || async {
        let old = gw
            .admin("GET", "/apisix/admin/routes", Some(&first), None)
            .await?;
        let new = gw
            .admin("GET", "/apisix/admin/routes", Some(&second), None)
            .await?;
        ensure!(old.0 == 401 && new.0 == 200, "old {} new {}", old.0, new.0);
        Ok(())
    })
    .await?;
    assert_no_secret_in(&gw.log_contents(), &[&first, &second]);
    assert_no_secret_in(
        &std::fs::read_to_string(gw.config_path())?,
        &[&first, &second],
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn the_admin_key_from_the_environment() -> Result<()> {
    let mut gw = GatewayProcess::start_with_admin(
        "",
        "$env://KEYGATE_TEST_ADMIN_KEY",
        &[("KEYGATE_TEST_ADMIN_KEY", "env-admin-key-98765")],
    )
    .await?;
    gw.wait_ready(Duration::from_secs(30)).await?;
    let answer = gw
        .admin(
            "GET",
            "/apisix/admin/upstreams",
            Some("env-admin-key-98765"),
            None,
        )
        .await?;
    ensure!(answer.0 == 200, "{answer:?}");
    ensure!(
        gw.admin("GET", "/apisix/admin/upstreams", Some(KEY), None)
            .await?
            .0
            == 401
    );
    assert_no_secret_in(&gw.log_contents(), &["env-admin-key-98765"]);
    Ok(())
}

/// The file seeds, the Admin API overrides by id, and a reload of the file keeps the
/// overrides (and the tombstones) on top.
#[tokio::test(flavor = "multi_thread")]
async fn the_file_seeds_and_admin_changes_override_across_reloads() -> Result<()> {
    let a = Upstream::start().await?;
    let b = Upstream::start().await?;
    let file = |extra: &str| {
        format!(
            "routes:\n  - {{ id: seeded, uri: /secure/ping, upstream: {{ nodes: {{ \"{}\": 1 }} }} }}\n  - {{ id: gone, uri: /gone, upstream: {{ nodes: {{ \"{}\": 1 }} }} }}\n{extra}",
            a.node(),
            a.node()
        )
    };
    let mut gw = GatewayProcess::start_with_admin(&file(""), KEY, &[]).await?;
    gw.wait_ready(Duration::from_secs(30)).await?;
    let answer = gw
        .admin("GET", "/apisix/admin/routes/seeded", Some(KEY), None)
        .await?;
    let v = parse(&answer.1)?;
    ensure!(
        answer.0 == 200 && v["modifiedIndex"] == 0 && v["value"]["uri"] == "/secure/ping",
        "{v}"
    );

    // Override the file's route (to upstream b) and delete the other one.
    let body = format!(
        r#"{{"uri":"/secure/ping","upstream":{{"nodes":{{"{}":1}}}}}}"#,
        b.node()
    );
    ensure!(
        gw.admin("PUT", "/apisix/admin/routes/seeded", Some(KEY), Some(&body))
            .await?
            .0
            == 200
    );
    ensure!(
        gw.admin("DELETE", "/apisix/admin/routes/gone", Some(KEY), None)
            .await?
            .0
            == 200
    );
    ensure!(gw.get("/secure/ping", &[]).await?.0 == 200 && b.hits() == 1);
    ensure!(gw.get("/gone", &[]).await?.0 == 404);

    // A new file (one more route) is laid under the stored changes.
    gw.write_config(&file(&format!(
        "  - {{ id: added, uri: /added, upstream: {{ nodes: {{ \"{}\": 1 }} }} }}\n",
        a.node()
    )))?;
    gw.sighup()?;
    eventually(Duration::from_secs(10), || async {
        // Routed: upstream a answers its own 404 body (not the gateway's "no route").
        let (status, body) = gw.get("/added", &[]).await?;
        ensure!(
            (status, body.as_str()) == (404, "not found\n"),
            "not reloaded yet: {status} {body}"
        );
        Ok(())
    })
    .await?;
    let list = parse(
        &gw.admin("GET", "/apisix/admin/routes", Some(KEY), None)
            .await?
            .1,
    )?;
    ensure!(list["total"] == 2, "{list}");
    let before = b.hits();
    ensure!(
        gw.get("/secure/ping", &[]).await?.0 == 200 && b.hits() == before + 1,
        "override lost"
    );
    ensure!(gw.get("/gone", &[]).await?.0 == 404, "tombstone lost");

    // And after a restart.
    gw.sigterm().await?;
    gw.start_again()?;
    gw.wait_ready(Duration::from_secs(30)).await?;
    let before = b.hits();
    ensure!(gw.get("/secure/ping", &[]).await?.0 == 200 && b.hits() == before + 1);
    ensure!(gw.get("/gone", &[]).await?.0 == 404);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn lists_page_and_filter_as_apisix() -> Result<()> {
    let upstream = Upstream::start().await?;
    let gw = start(&upstream).await?;
    let node = upstream.node();
    for i in 1..=23 {
        let name = if i % 2 == 0 { "even" } else { "odd" };
        let body = format!(
            r#"{{"uri":"/r{i}","name":"{name}-{i}","upstream":{{"type":"roundrobin","nodes":{{"{node}":1}}}}}}"#
        );
        let answer = gw
            .admin(
                "PUT",
                &format!("/apisix/admin/routes/{i}"),
                Some(KEY),
                Some(&body),
            )
            .await?;
        ensure!(answer.0 == 201, "{answer:?}");
    }
    let ids = |answer: &(u16, String)| -> Result<(u64, Vec<String>)> {
        ensure!(answer.0 == 200, "{answer:?}");
        let v = parse(&answer.1)?;
        let ids = v["list"]
            .as_array()
            .context("no list")?
            .iter()
            .map(|item| item["value"]["id"].as_str().unwrap_or("?").to_owned())
            .collect();
        Ok((v["total"].as_u64().context("no total")?, ids))
    };
    let all = ids(&gw
        .admin("GET", "/apisix/admin/routes", Some(KEY), None)
        .await?)?;
    ensure!(all.0 == 23 && all.1.len() == 23, "{all:?}");
    // Oldest first; the third page of 10 holds the last 3.
    let page = ids(&gw
        .admin(
            "GET",
            "/apisix/admin/routes?page=3&page_size=10",
            Some(KEY),
            None,
        )
        .await?)?;
    ensure!(
        page == (23, vec!["21".into(), "22".into(), "23".into()]),
        "{page:?}"
    );
    let past = ids(&gw
        .admin(
            "GET",
            "/apisix/admin/routes?page=4&page_size=10",
            Some(KEY),
            None,
        )
        .await?)?;
    ensure!(past == (23, vec![]), "{past:?}");
    // The total counts what the filter matches; the page is taken from those.
    let even = ids(&gw
        .admin(
            "GET",
            "/apisix/admin/routes?name=even&page=2&page_size=10",
            Some(KEY),
            None,
        )
        .await?)?;
    ensure!(even == (11, vec!["22".into()]), "{even:?}");
    Ok(())
}
