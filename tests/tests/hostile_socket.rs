//! Abuse of the agent's Unix socket by real processes: a peer that forks and exits
//! while its child keeps the connection, a pid reused by another process, a flood of
//! connections and Watch streams from one uid (run as `nobody`), a uid no policy
//! admits, requests without the security header or outside the peer's policy, and
//! malformed or oversized gRPC messages. The agent must cut what it should, stay
//! responsive for the peers it serves, and never crash.

use std::io::{BufRead as _, BufReader, Write as _};
use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::process::CommandExt as _;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail, ensure};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use keygate_proto::REQUEST_HEADER;
use keygate_tests::client::{get, get_error, watch};
use keygate_tests::seed::{AGENT_POLICY, JACK, KV1_PREFIX, PRIVATE};
use keygate_tests::{AgentConfig, AgentProcess, OpenBao, Peer, eventually, seed_apisix};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::mpsc;

const NOBODY: u32 = 65534;
/// A uid with no policy and no passwd entry.
const STRANGER: u32 = 4242;
const WATCHERS: &str = "keygate_agent_watchers";

/// A `keygate-hostile-peer` process, its output line by line.
struct HostilePeer {
    child: Child,
    lines: mpsc::UnboundedReceiver<String>,
}

impl HostilePeer {
    fn spawn(args: &[&str], uid: Option<u32>) -> Result<Self> {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_keygate-hostile-peer"));
        cmd.args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        if let Some(uid) = uid {
            cmd.uid(uid).gid(NOBODY);
        }
        let mut child = cmd.spawn().context("starting keygate-hostile-peer")?;
        let stdout = child.stdout.take().context("no stdout")?;
        let (tx, lines) = mpsc::unbounded_channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(Self { child, lines })
    }

    /// The next line starting with `prefix` within `timeout` (other lines skipped).
    async fn expect_line(&mut self, prefix: &str, timeout: Duration) -> Result<String> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let line = tokio::time::timeout_at(deadline, self.lines.recv())
                .await
                .map_err(|_| anyhow!("no line starting with {prefix:?} within {timeout:?}"))?
                .ok_or_else(|| anyhow!("the hostile peer's output ended before {prefix:?}"))?;
            if line.starts_with("error") {
                bail!("the hostile peer failed: {line}");
            }
            if line.starts_with(prefix) {
                return Ok(line);
            }
        }
    }

    /// Writes a line to its standard input.
    fn say(&mut self, line: &str) -> Result<()> {
        let stdin = self.child.stdin.as_mut().context("stdin closed")?;
        writeln!(stdin, "{line}").context("writing to the hostile peer")
    }
}

impl Drop for HostilePeer {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `watching <child> <parent>`: the two pids.
fn pids(line: &str) -> Result<(i32, i32)> {
    let mut it = line.split_whitespace().skip(1).map(str::parse::<i32>);
    match (it.next(), it.next()) {
        (Some(Ok(child)), Some(Ok(parent))) => Ok((child, parent)),
        _ => Err(anyhow!("unexpected line {line:?}")),
    }
}

/// Field 3 of /proc/<pid>/stat.
fn proc_state(pid: i32) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.get(stat.rfind(')')? + 1..)?;
    rest.split_whitespace().next().map(str::to_owned)
}

async fn agent_with(peers: Vec<Peer>) -> Result<(OpenBao, AgentProcess, String)> {
    agent_refreshing(peers, "2s").await
}

async fn agent_refreshing(
    peers: Vec<Peer>,
    refresh: &str,
) -> Result<(OpenBao, AgentProcess, String)> {
    let bao = OpenBao::start().await?;
    let seeded = seed_apisix(&bao).await?;
    let token = bao.create_token(&[AGENT_POLICY], None).await?;
    let mut config = AgentConfig::new(&bao.addr(), KV1_PREFIX)
        .token(&token)
        .refresh_interval(refresh);
    if !peers.is_empty() {
        config = config.peers(peers);
        config.socket_mode = Some("0660".into());
        config.socket_group = Some(NOBODY.to_string());
    }
    let agent = AgentProcess::start_ready(config).await?;
    std::fs::set_permissions(agent.dir(), std::fs::Permissions::from_mode(0o711))?;
    Ok((bao, agent, seeded.jack_v1))
}

async fn watchers(agent: &AgentProcess, expected: f64) -> Result<()> {
    eventually(Duration::from_secs(10), || async {
        let now = agent.metric(WATCHERS).await?;
        ensure!(now == expected, "{WATCHERS} = {now}, expected {expected}");
        Ok(())
    })
    .await
}

fn socket(agent: &AgentProcess) -> Result<String> {
    agent
        .socket_path()
        .to_str()
        .map(str::to_owned)
        .context("socket path is not UTF-8")
}

/// The parent exits and is left unreaped (a zombie: its pid and start time still
/// exist) while its forked child reads on: the stream is cut all the same.
#[tokio::test(flavor = "multi_thread")]
async fn a_forked_child_loses_the_stream_when_its_parent_exits() -> Result<()> {
    let (_bao, agent, _) = agent_with(vec![]).await?;
    let mut peer = HostilePeer::spawn(&["fork-watch", &socket(&agent)?, JACK], None)?;
    let (child, parent) = pids(
        &peer
            .expect_line("watching", Duration::from_secs(20))
            .await?,
    )?;
    watchers(&agent, 1.0).await?;

    peer.say("exit")?;
    eventually(Duration::from_secs(5), || async {
        ensure!(
            proc_state(parent).as_deref() == Some("Z"),
            "parent state {:?}",
            proc_state(parent)
        );
        Ok(())
    })
    .await?;
    let ended = peer.expect_line("ended", Duration::from_secs(5)).await?;
    ensure!(
        ended == "ended PermissionDenied",
        "the child's stream: {ended}"
    );
    ensure!(
        proc_state(parent).as_deref() == Some("Z"),
        "the parent was reaped before the check; the zombie case was not exercised"
    );
    watchers(&agent, 0.0).await?;
    let _ = kill(Pid::from_raw(child), Signal::SIGKILL);
    Ok(())
}

/// The parent exits and is reaped while the agent is stopped, and another process
/// takes its pid before the agent looks again: the start time tells them apart.
#[tokio::test(flavor = "multi_thread")]
async fn a_reused_pid_does_not_keep_the_stream() -> Result<()> {
    let (_bao, mut agent, _) = agent_with(vec![]).await?;
    let mut peer = HostilePeer::spawn(&["fork-watch", &socket(&agent)?, JACK], None)?;
    let (child, parent) = pids(
        &peer
            .expect_line("watching", Duration::from_secs(20))
            .await?,
    )?;
    watchers(&agent, 1.0).await?;

    agent.sigstop().await?;
    peer.say("exit")?;
    let status = peer.child.wait().context("reaping the parent")?;
    ensure!(status.success(), "the parent exited with {status}");
    let impostor = take_pid(parent)?;
    let impostor_state = proc_state(parent);
    agent.sigcont()?;
    let result = async {
        ensure!(
            matches!(impostor_state.as_deref(), Some("S" | "R")),
            "the impostor on pid {parent} is in state {impostor_state:?}"
        );
        let ended = peer.expect_line("ended", Duration::from_secs(5)).await?;
        ensure!(
            ended == "ended PermissionDenied",
            "the child's stream with pid {parent} reused: {ended}"
        );
        watchers(&agent, 0.0).await
    }
    .await;
    let mut impostor = impostor;
    let _ = impostor.kill();
    let _ = impostor.wait();
    let _ = kill(Pid::from_raw(child), Signal::SIGKILL);
    result
}

/// Starts `sleep` on exactly `pid` (root: /proc/sys/kernel/ns_last_pid), retrying
/// when another process gets there first.
fn take_pid(pid: i32) -> Result<Child> {
    for _ in 0..200 {
        std::fs::write("/proc/sys/kernel/ns_last_pid", (pid - 1).to_string())
            .context("writing /proc/sys/kernel/ns_last_pid (the test must run as root)")?;
        let mut sleeper = Command::new("sleep").arg("30").spawn()?;
        if i32::try_from(sleeper.id()).ok() == Some(pid) {
            return Ok(sleeper);
        }
        let _ = sleeper.kill();
        let _ = sleeper.wait();
    }
    bail!("could not start a process on pid {pid}")
}

/// `nobody` floods the socket with Watch streams and connections while the agent's
/// descriptor limit is low (256): it gets 64 streams and 64 connections, the rest are
/// refused or closed, and our uid (the gateway's stand-in) is served throughout. A uid
/// no policy admits gets four connections and PERMISSION_DENIED.
#[tokio::test(flavor = "multi_thread")]
async fn a_flood_from_one_uid_is_bounded_and_others_are_served() -> Result<()> {
    let uid = nix::unistd::getuid().as_raw();
    ensure!(uid == 0, "this test runs as root (it sets uids and limits)");
    let (_bao, agent, jack) = agent_with(vec![
        Peer::uid("tests", uid, &["consumer/*"]),
        Peer::uid("flooder", NOBODY, &["consumer/*"]),
    ])
    .await?;
    let pid = agent.pid().context("agent not running")?;
    let limited = Command::new("prlimit")
        .args([&format!("--pid={pid}"), "--nofile=256:256"])
        .status()
        .context("running prlimit")?;
    ensure!(limited.success(), "prlimit failed: {limited}");
    let socket = socket(&agent)?;

    let mut flood = HostilePeer::spawn(&["flood", &socket, "400", "100", JACK], Some(NOBODY))?;
    let summary = flood
        .expect_line("watches", Duration::from_secs(60))
        .await?;
    let numbers: Vec<usize> = summary
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    let [ok, exhausted, denied, other, open] = numbers[..] else {
        bail!("unexpected summary {summary:?}");
    };
    ensure!(
        ok == 64 && exhausted == 36 && denied == 0 && other == 0,
        "nobody's Watch streams: {summary}"
    );
    ensure!(
        open <= 63,
        "nobody kept {open} idle connections open: {summary}"
    );
    watchers(&agent, 64.0).await?;

    // Our uid is still served, at once, on a new connection.
    let mut client = agent.client().await?;
    let started = std::time::Instant::now();
    let answer = get(&mut client, &[JACK]).await?;
    keygate_tests::secrets::expect_loaded(&answer.secrets, JACK, &jack)?;
    ensure!(
        started.elapsed() < Duration::from_secs(3),
        "Get took {:?} under the flood",
        started.elapsed()
    );
    let mut stream = watch(&mut client, &[JACK], Duration::from_secs(10))
        .await?
        .map_err(|s| anyhow!("our Watch under the flood: {s}"))?;
    keygate_tests::client::expect_snapshot(&mut stream, Duration::from_secs(10)).await?;
    watchers(&agent, 65.0).await?;
    // The path policy still holds for us.
    ensure!(
        get_error(&mut client, &[PRIVATE]).await? == tonic::Code::PermissionDenied,
        "a name outside our policy"
    );

    // A uid on no policy: four connections at most, PERMISSION_DENIED on each call.
    let mut stranger = HostilePeer::spawn(&["flood", &socket, "50", "200", JACK], Some(STRANGER))?;
    let summary = stranger
        .expect_line("watches", Duration::from_secs(60))
        .await?;
    let numbers: Vec<usize> = summary
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    ensure!(
        numbers.get(..4) == Some(&[0, 0, 200, 0][..]) && numbers.get(4).is_some_and(|n| *n <= 3),
        "a uid no policy admits: {summary}"
    );
    drop(stranger);
    // 200 refusals, one log line (at most one per uid and kind every 10 s).
    let logged = agent.log_contents().matches("peer not allowed").count();
    ensure!(
        logged <= 2,
        "{logged} \"peer not allowed\" lines for one refused uid: the log can be flooded"
    );

    // The flood ends: its streams go, ours stays.
    drop(flood);
    watchers(&agent, 1.0).await?;
    let answer = get(&mut client, &[JACK]).await?;
    keygate_tests::secrets::expect_loaded(&answer.secrets, JACK, &jack)?;
    agent.assert_no_secret_in_log(&[&jack]);
    Ok(())
}

/// Every name an open call asks for is tracked (read from Vault, re-read on each
/// refresh) while the call lasts. One call may ask for at most `limits.names_per_call`
/// names (INVALID_ARGUMENT beyond), and the open calls of one uid may hold at most
/// `limits.names_per_uid` at once (RESOURCE_EXHAUSTED beyond), each call counting its
/// own; the budget comes back when calls and streams end. Names nobody holds any more
/// are kept a while (a client that reconnects finds them), but at most
/// `names_per_uid` of them: beyond, those without a value (made-up names) are
/// forgotten, so a peer cycling through made-up names cannot make the agent track
/// more than the held names plus that bound. Small limits here (300 per call, 1000
/// per uid) so that the bounds are reached with few names.
#[tokio::test(flavor = "multi_thread")]
async fn a_peer_cannot_make_the_agent_track_unbounded_names() -> Result<()> {
    const TRACKED: &str = "keygate_agent_secrets_tracked";
    let uid = nix::unistd::getuid().as_raw();
    ensure!(uid == 0, "this test runs as root (it sets uids)");
    let (_bao, mut agent, jack) = agent_refreshing(
        vec![
            Peer::uid("tests", uid, &["consumer/*"]),
            Peer::uid("flooder", NOBODY, &["consumer/*"]),
        ],
        "5m",
    )
    .await?;
    let mut config = std::fs::read_to_string(agent.config_path())?;
    config.push_str("limits:\n  names_per_call: 300\n  names_per_uid: 1000\n");
    std::fs::write(agent.config_path(), config)?;
    agent.restart().await?;
    let mut client = agent.client().await?;
    get(&mut client, &[JACK]).await?;
    let tracked = agent.metric(TRACKED).await?;
    let at_most = |extra: f64| {
        let agent = &agent;
        async move {
            let now = agent.metric(TRACKED).await?;
            ensure!(
                now <= tracked + extra,
                "{TRACKED} = {now}: more than {tracked} + {extra} names tracked"
            );
            Ok(())
        }
    };

    // nobody asks for 8 x 300 made-up names, one Get after the other: each Get gives
    // its names back when it ends, so all are answered (NOT_FOUND), and the agent
    // keeps at most 1000 of the names nobody holds. One call of 301 names is refused.
    let mut names = HostilePeer::spawn(&["names", &socket(&agent)?, "8", "300"], Some(NOBODY))?;
    let summary = names.expect_line("gets", Duration::from_secs(120)).await?;
    ensure!(
        summary == "gets 8 exhausted 0 other 0",
        "nobody's made-up names, one call after the other: {summary}"
    );
    let mut names = HostilePeer::spawn(&["names", &socket(&agent)?, "1", "301"], Some(NOBODY))?;
    let summary = names.expect_line("gets", Duration::from_secs(30)).await?;
    ensure!(
        summary == "gets 0 exhausted 0 other 1",
        "nobody's call of 301 names: {summary}"
    );
    at_most(1000.0).await?;

    // Our uid holds made-up names in open Watch streams: three of 300 fit in 1000, a
    // fourth is refused while they are open, and the others' budget is their own.
    let made_up = |batch: usize| -> Vec<String> {
        (0..300)
            .map(|i| format!("consumer/held-{batch}-{i}/jwt-auth"))
            .collect()
    };
    let mut streams = Vec::new();
    for batch in 0..3 {
        let names = made_up(batch);
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let mut stream = watch(&mut client, &names, Duration::from_secs(60))
            .await?
            .map_err(|s| anyhow!("Watch {batch}: {s}"))?;
        keygate_tests::client::expect_snapshot(&mut stream, Duration::from_secs(60)).await?;
        streams.push(stream);
    }
    let fourth = made_up(3);
    let fourth: Vec<&str> = fourth.iter().map(String::as_str).collect();
    let refused = get_error(&mut client, &fourth).await?;
    ensure!(
        refused == tonic::Code::ResourceExhausted,
        "a fourth call of 300 names while 900 are held: {refused:?}"
    );
    ensure!(
        agent.metric(TRACKED).await? >= tracked + 900.0,
        "the held names are not tracked"
    );
    at_most(1900.0).await?;
    let mut names = HostilePeer::spawn(&["names", &socket(&agent)?, "1", "300"], Some(NOBODY))?;
    let summary = names.expect_line("gets", Duration::from_secs(60)).await?;
    ensure!(
        summary == "gets 1 exhausted 0 other 0",
        "nobody while our uid's budget is spent: {summary}"
    );

    // One stream ends: its 300 names come back, and the fourth call goes through.
    drop(streams.pop());
    eventually(Duration::from_secs(10), || async {
        let mut client = agent.client().await?;
        get(&mut client, &fourth).await.map(drop)
    })
    .await?;
    drop(streams);
    eventually(Duration::from_secs(10), || at_most(1000.0)).await?;
    let answer = get(&mut client, &[JACK, "consumer/another/jwt-auth"]).await?;
    keygate_tests::secrets::expect_loaded(&answer.secrets, JACK, &jack)?;
    Ok(())
}

/// One gRPC call on a fresh HTTP/2 connection: the raw body, the headers given; the
/// `grpc-status` of the answer (from the headers or the trailers).
async fn raw_call(
    socket: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> Result<Option<i32>> {
    let stream = tokio::net::UnixStream::connect(socket).await?;
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let mut request = hyper::Request::post(format!("http://keygate-agent.invalid{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    let request = request.body(Full::new(Bytes::from(body)))?;
    let response = tokio::time::timeout(Duration::from_secs(10), sender.send_request(request))
        .await
        .context("no answer within 10 s")??;
    let (parts, body) = response.into_parts();
    let from_headers = parts.headers.get("grpc-status").cloned();
    let trailers = match tokio::time::timeout(Duration::from_secs(10), body.collect()).await {
        Ok(Ok(collected)) => collected.trailers().cloned(),
        _ => None,
    };
    let status = from_headers.or_else(|| trailers.and_then(|t| t.get("grpc-status").cloned()));
    Ok(status.and_then(|v| v.to_str().ok().and_then(|s| s.parse().ok())))
}

/// Request headers as (name, value) pairs.
type Headers<'a> = Vec<(&'a str, &'a str)>;

/// A gRPC message frame: compressed flag, declared length, then `payload`.
fn frame(compressed: bool, declared: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![u8::from(compressed)];
    out.extend_from_slice(&declared.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_and_oversized_messages_are_refused_and_the_agent_stays_up() -> Result<()> {
    let (_bao, mut agent, jack) = agent_with(vec![]).await?;
    let socket = socket(&agent)?;
    let get_path = "/keygate.agent.v1.SecretAgent/Get";
    let header = [(REQUEST_HEADER, "true")];
    // A valid GetRequest for jack: field 1, length-delimited.
    let mut valid = vec![0x0a, u8::try_from(JACK.len())?];
    valid.extend_from_slice(JACK.as_bytes());
    ensure!(
        raw_call(
            &socket,
            get_path,
            &header,
            frame(false, u32::try_from(valid.len())?, &valid)
        )
        .await?
            == Some(0),
        "the raw control call did not succeed"
    );

    // Above the agent's decode limit at its default limits: 16 384 names of at most
    // 512 bytes, and 2 MiB for a Put's fields (about 10.5 MiB).
    let twelve_mib = vec![0x0a_u8; 12 * 1024 * 1024];
    let mut big_name = vec![0x0a, 0x80, 0x80, 0x80, 0x03];
    big_name.extend(std::iter::repeat_n(b'a', 6 * 1024 * 1024));
    let rows: Vec<(&str, Headers<'_>, Vec<u8>)> = vec![
        (
            "no security header",
            vec![],
            frame(false, u32::try_from(valid.len())?, &valid),
        ),
        ("not protobuf", header.to_vec(), frame(false, 8, &[0xff; 8])),
        (
            "a truncated field",
            header.to_vec(),
            frame(false, 3, &[0x0a, 0x7f, b'a']),
        ),
        (
            "a declared length far beyond the body",
            header.to_vec(),
            frame(false, 100 * 1024 * 1024, &valid),
        ),
        (
            "a 12 MiB message (above the decode limit)",
            header.to_vec(),
            frame(false, u32::try_from(twelve_mib.len())?, &twelve_mib),
        ),
        (
            "a 6 MiB name",
            header.to_vec(),
            frame(false, u32::try_from(big_name.len())?, &big_name),
        ),
        (
            "compressed without grpc-encoding",
            header.to_vec(),
            frame(true, u32::try_from(valid.len())?, &valid),
        ),
        (
            "an unknown compression",
            vec![(REQUEST_HEADER, "true"), ("grpc-encoding", "zstd-evil")],
            frame(true, u32::try_from(valid.len())?, &valid),
        ),
        ("an empty body", header.to_vec(), vec![]),
    ];
    for (name, headers, body) in rows {
        let status = raw_call(&socket, get_path, &headers, body).await;
        match status {
            Ok(Some(code)) if code != 0 => {}
            other => bail!("{name}: expected a gRPC error, got {other:?}"),
        }
    }
    // The security header: absent, wrong, or doubled with a wrong value is
    // INVALID_ARGUMENT (3), whatever the body.
    for (name, headers) in [
        ("absent", vec![]),
        ("false", vec![(REQUEST_HEADER, "false")]),
        ("TRUE", vec![(REQUEST_HEADER, "TRUE")]),
        ("empty", vec![(REQUEST_HEADER, "")]),
        ("true twice with junk", vec![(REQUEST_HEADER, "true, true")]),
    ] {
        let status = raw_call(
            &socket,
            get_path,
            &headers,
            frame(false, u32::try_from(valid.len())?, &valid),
        )
        .await?;
        ensure!(
            status == Some(3),
            "security header {name}: grpc-status {status:?}, expected 3"
        );
    }
    ensure!(
        raw_call(
            &socket,
            "/keygate.agent.v1.SecretAgent/Nope",
            &header,
            frame(false, 0, &[])
        )
        .await?
            == Some(12),
        "an unknown method is not UNIMPLEMENTED"
    );

    // Not HTTP/2 at all, and HTTP/2 with a frame beyond the size limit: the
    // connection is closed, nothing else happens.
    for (name, bytes) in [
        ("HTTP/1.1", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()),
        (
            "an oversized HTTP/2 frame",
            [
                b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec(),
                vec![0, 0, 0, 4, 0, 0, 0, 0, 0],
                vec![0xff, 0xff, 0xff, 0, 0, 0, 0, 0, 1],
            ]
            .concat(),
        ),
        (
            "random bytes",
            (0..4096u32).map(|i| (i * 7919 % 251) as u8).collect(),
        ),
    ] {
        let mut stream = tokio::net::UnixStream::connect(&socket).await?;
        let _ = stream.write_all(&bytes).await;
        let closed = tokio::time::timeout(Duration::from_secs(10), async {
            let mut buf = [0u8; 4096];
            loop {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        })
        .await;
        ensure!(closed.is_ok(), "{name}: the connection stayed open");
    }

    ensure!(agent.try_exit_status()?.is_none(), "the agent exited");
    let mut client = agent.client().await?;
    let answer = get(&mut client, &[JACK]).await?;
    keygate_tests::secrets::expect_loaded(&answer.secrets, JACK, &jack)?;
    agent.assert_no_secret_in_log(&[&jack]);
    Ok(())
}
