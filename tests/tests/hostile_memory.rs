//! Secret hygiene, read back from the kernel: the agent is not dumpable (a process of
//! its own uid cannot read its memory or environment) and has core dumps off; and after
//! a secret is rotated, the old value is looked for in the live memory of the agent and
//! of the gateway (`/proc/<pid>/mem`, read as root).

use std::os::unix::fs::MetadataExt as _;
use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::process::CommandExt as _;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use keygate_tests::gateway::GatewayProcess;
use keygate_tests::hostile::{Recorder, proc_limit, proc_status, read_memory, scan_memory};
use keygate_tests::seed::{AGENT_POLICY, JACK, KV1_PREFIX, put_secret};
use keygate_tests::{
    AgentConfig, AgentProcess, OpenBao, agent_binary, assert_no_secret_in, eventually,
    random_secret, seed_apisix,
};

const NOBODY: u32 = 65534;

/// Whether the 10 bytes before a value are the end of a `Secret.fields` map entry in an
/// encoded Snapshot: key `secret` (field 1), then field 2 with the value's length.
fn in_grpc_frame(before: &[u8], len: usize) -> bool {
    let mut expected = b"\x0a\x06secret\x12".to_vec();
    expected.push(u8::try_from(len).unwrap_or(0));
    before == expected.as_slice()
}

/// Runs `cat <path>` as `nobody`: whether it could read it.
fn nobody_can_read(path: &str) -> Result<bool> {
    let status = Command::new("cat")
        .arg(path)
        .uid(NOBODY)
        .gid(NOBODY)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .context("running cat as nobody")?;
    Ok(status.success())
}

#[tokio::test(flavor = "multi_thread")]
async fn the_agent_is_not_dumpable_and_has_core_dumps_off() -> Result<()> {
    let bao = OpenBao::start().await?;
    seed_apisix(&bao).await?;
    let token = bao.create_token(&[AGENT_POLICY], None).await?;

    // The agent as nobody, so that "same uid" means something: a directory nobody
    // owns, the config readable by it.
    let dir = tempfile::Builder::new()
        .prefix("keygate-agent-nobody-")
        .tempdir()?;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))?;
    nix::unistd::chown(
        dir.path(),
        Some(nix::unistd::Uid::from_raw(NOBODY)),
        Some(nix::unistd::Gid::from_raw(NOBODY)),
    )?;
    let socket = dir.path().join("run").join("agent.sock");
    let port = keygate_tests::free_port()?;
    let yaml = AgentConfig::new(&bao.addr(), KV1_PREFIX)
        .token(&token)
        .to_yaml(&socket, &format!("127.0.0.1:{port}"))?;
    let config = dir.path().join("agent.yaml");
    std::fs::write(&config, yaml)?;
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o644))?;
    let log = std::fs::File::create(dir.path().join("agent.log"))?;
    let mut agent = Command::new(agent_binary()?)
        .args(["run", "--config"])
        .arg(&config)
        .uid(NOBODY)
        .gid(NOBODY)
        .env_remove("VAULT_TOKEN")
        .env_remove("BAO_TOKEN")
        .env(
            "KEYGATE_AGENT_TEST_MARKER",
            "visible-only-with-ptrace-rights",
        )
        .stdin(Stdio::null())
        .stdout(Stdio::from(log.try_clone()?))
        .stderr(Stdio::from(log))
        .spawn()?;
    // A control process of the same uid that does not harden itself.
    let mut control = Command::new("sleep")
        .arg("60")
        .uid(NOBODY)
        .gid(NOBODY)
        .spawn()?;
    let result = async {
        let pid = agent.id();
        eventually(Duration::from_secs(20), || async {
            ensure!(socket.exists(), "the agent has not bound its socket yet");
            Ok(())
        })
        .await?;
        ensure!(
            proc_status(pid, "Uid")?.starts_with(&NOBODY.to_string()),
            "the agent does not run as nobody"
        );
        // Core dumps: limit 0, soft and hard.
        let (soft, hard) = proc_limit(pid, "Max core file size")?;
        ensure!(
            soft == "0" && hard == "0",
            "core limit {soft}/{hard}, expected 0/0"
        );
        // Non-dumpable: the kernel hands its /proc files to root, and a process of the
        // same uid may not read its environment or memory. The control (same uid, not
        // hardened) shows the refusal comes from the flag and not from the uid.
        let control_pid = control.id();
        let owner = std::fs::metadata(format!("/proc/{pid}/environ"))?.uid();
        let control_owner = std::fs::metadata(format!("/proc/{control_pid}/environ"))?.uid();
        ensure!(
            owner == 0 && control_owner == NOBODY,
            "/proc/<pid>/environ owners: agent {owner}, control {control_owner}"
        );
        ensure!(
            nobody_can_read(&format!("/proc/{control_pid}/environ"))?,
            "the control: a same-uid read of /proc/<pid>/environ should work"
        );
        for file in ["environ", "mem", "maps"] {
            ensure!(
                !nobody_can_read(&format!("/proc/{pid}/{file}"))?,
                "a process of the agent's own uid read /proc/<pid>/{file}"
            );
        }
        Ok(())
    }
    .await;
    let _ = control.kill();
    let _ = control.wait();
    let _ = agent.kill();
    let _ = agent.wait();
    result
}

#[tokio::test(flavor = "multi_thread")]
async fn rotated_secrets_do_not_stay_in_memory() -> Result<()> {
    let bao = OpenBao::start().await?;
    let seeded = seed_apisix(&bao).await?;
    let token = bao.create_token(&[AGENT_POLICY], None).await?;
    let agent = AgentProcess::start_ready(
        AgentConfig::new(&bao.addr(), KV1_PREFIX)
            .token(&token)
            .refresh_interval("1s"),
    )
    .await?;
    let upstream = Recorder::start().await?;
    let gateway = GatewayProcess::start_ready(&format!(
        r#"
agent: {{ socket: {socket:?} }}
plugin_attr: {{ jwt-auth: {{ sign_endpoint: true }} }}
routes:
  - uri: /secure/ping
    plugins: {{ jwt-auth: {{}} }}
    upstream: {{ nodes: {{ "{node}": 1 }} }}
consumers:
  - username: jack
    plugins: {{ jwt-auth: {{ key: test-key, vault: {{}} }} }}
"#,
        socket = agent.socket_path(),
        node = upstream.node(),
    ))
    .await?;
    let old = seeded.jack_v1.clone();
    for _ in 0..5 {
        let signed = gateway.sign("test-key").await?;
        let (status, _) = gateway
            .get("/secure/ping", &[("authorization", &signed)])
            .await?;
        ensure!(status == 200, "before rotation: HTTP {status}");
    }
    let agent_pid = agent.pid().context("agent")?;
    let gateway_pid = gateway.pid().context("gateway")?;
    let before_agent = scan_memory(agent_pid, &[old.as_bytes()])?;
    let before_gateway = scan_memory(gateway_pid, &[old.as_bytes()])?;

    // Four rotations, each picked up by the gateway before the next.
    let mut olds: Vec<String> = Vec::new();
    let mut new = old.clone();
    for _ in 0..4 {
        let before = gateway.sign("test-key").await?;
        let next = random_secret("jack-rotated");
        put_secret(&bao, KV1_PREFIX, JACK, &next).await?;
        eventually(Duration::from_secs(10), || async {
            let fresh = gateway.sign("test-key").await?;
            ensure!(fresh != before, "still signing with the previous secret");
            let (status, _) = gateway
                .get("/secure/ping", &[("authorization", &fresh)])
                .await?;
            ensure!(status == 200, "HTTP {status} with a fresh token");
            Ok(())
        })
        .await?;
        olds.push(std::mem::replace(&mut new, next));
    }
    // Several refresh cycles and requests after the rotation.
    for _ in 0..20 {
        let signed = gateway.sign("test-key").await?;
        gateway
            .get("/secure/ping", &[("authorization", &signed)])
            .await?;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // Needles: the rotated-out values, then the current one.
    let mut needles: Vec<&[u8]> = olds.iter().map(|o| o.as_bytes()).collect();
    needles.push(new.as_bytes());
    let current = olds.len();
    let after_agent = scan_memory(agent_pid, &needles)?;
    let after_gateway = scan_memory(gateway_pid, &needles)?;

    // The scan works: each process held the first value before and holds the current
    // one now.
    for (name, before, after) in [
        ("agent", &before_agent, &after_agent),
        ("gateway", &before_gateway, &after_gateway),
    ] {
        ensure!(
            !before.is_empty(),
            "{name}: the first value was not found even before the rotations"
        );
        ensure!(
            after.iter().any(|h| h.needle == current),
            "{name}: the current value is not in memory"
        );
    }
    // What may remain of a rotated-out value: the encoded gRPC Snapshot frames still
    // held in tonic's and h2's live connection buffers (the agent's encode buffer of the
    // gateway's Watch stream; the gateway's h2 read buffer and tonic decode buffer).
    // Those are library buffers that are overwritten as the stream moves on and freed
    // (wiped, in the agent) with the connection. Anything else is a leak.
    for (name, pid, hits) in [
        ("agent", agent_pid, &after_agent),
        ("gateway", gateway_pid, &after_gateway),
    ] {
        let mut in_frames = vec![0; current];
        for hit in hits.iter().filter(|h| h.needle < current) {
            let len = olds[hit.needle].len();
            let before = read_memory(pid, hit.address - 10, 10)?;
            if in_grpc_frame(&before, len) {
                in_frames[hit.needle] += 1;
                continue;
            }
            let after = read_memory(pid, hit.address + len as u64, 64)?;
            bail!(
                "{name}: a copy of rotated-out value #{} outside any gRPC frame at {:#x} ({}), followed by: {}",
                hit.needle,
                hit.address,
                hit.mapping,
                // The context after the value, not the value itself.
                String::from_utf8_lossy(&after).escape_debug()
            );
        }
        ensure!(
            in_frames.iter().all(|n| *n <= 2),
            "{name}: gRPC frames still holding each rotated-out value: {in_frames:?}"
        );
    }

    // No secret in either process's metrics (labels included) or logs.
    let (_, gateway_metrics) = gateway.status_get("/metrics").await?;
    let (_, agent_metrics) = agent.ops_get("/metrics").await?;
    for text in [
        gateway_metrics,
        agent_metrics,
        gateway.log_contents(),
        agent.log_contents(),
    ] {
        let mut secrets: Vec<&str> = olds.iter().map(String::as_str).collect();
        secrets.extend([new.as_str(), token.as_str()]);
        assert_no_secret_in(&text, &secrets);
    }
    Ok(())
}
