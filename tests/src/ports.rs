//! Free TCP ports on the loopback interface.
//!
//! Ports are drawn at random from below the kernel's ephemeral range, so that no
//! outgoing connection (which takes its local port from that range) can occupy a port
//! between the moment it is chosen and the moment a server binds it.
//!
//! The test runner starts one process per test, many at once, and a port is chosen
//! some time before the server that will listen on it has started: two processes
//! could draw the same port and both see it free (CI saw "Address already in use").
//! So every port handed out is also claimed by an exclusive lock on a file named
//! after it, held until this process exits (the kernel drops the lock then, even
//! after a crash); another test process skips a port whose file is locked.

use std::collections::HashMap;
use std::fs::{File, OpenOptions, TryLockError};
use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};

use anyhow::{Context, Result, bail};
use rand::Rng;

/// The lowest port handed out.
const LOWEST: u16 = 12_000;

/// Ports handed out by this process, each with the locked file that claims it.
fn handed_out() -> &'static Mutex<HashMap<u16, File>> {
    static PORTS: OnceLock<Mutex<HashMap<u16, File>>> = OnceLock::new();
    PORTS.get_or_init(|| Mutex::new(HashMap::new()))
}

/// Where the claim files live, shared by every test process of this user (one
/// directory per user: another user's would not be writable).
fn claims_dir() -> PathBuf {
    std::env::temp_dir().join(format!("keygate-test-ports-{}", nix::unistd::getuid()))
}

/// The first port of the kernel's ephemeral range (32768 when unknown).
fn ephemeral_low() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|text| text.split_whitespace().next()?.parse().ok())
        .unwrap_or(32_768)
}

/// Claims `port` for this process; `None` when another process holds it.
fn claim(port: u16) -> Result<Option<File>> {
    let dir = claims_dir();
    std::fs::create_dir_all(&dir)
        .with_context(|| format!("creating {} (test port claims)", dir.display()))?;
    let path = dir.join(port.to_string());
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(Some(file)),
        Err(TryLockError::WouldBlock) => Ok(None),
        Err(TryLockError::Error(err)) => {
            Err(err).with_context(|| format!("locking {}", path.display()))
        }
    }
}

/// A TCP port on 127.0.0.1 that nobody listens on right now and that no other test
/// process has been handed.
pub fn free_port() -> Result<u16> {
    let high = ephemeral_low();
    let mut rng = rand::rng();
    for _ in 0..200 {
        let port = if high > LOWEST + 1_000 {
            rng.random_range(LOWEST..high)
        } else {
            // An unusual ephemeral range: let the kernel choose.
            let listener = TcpListener::bind(("127.0.0.1", 0)).context("binding 127.0.0.1:0")?;
            listener.local_addr().context("local address")?.port()
        };
        let mut ports = handed_out()
            .lock()
            .map_err(|_| anyhow::anyhow!("free port registry poisoned"))?;
        if ports.contains_key(&port) {
            continue;
        }
        let Some(claim) = claim(port)? else {
            continue;
        };
        // Checked after the claim: a port bound by something outside the tests is
        // skipped, and its claim released.
        if TcpListener::bind(("127.0.0.1", port)).is_err() {
            continue;
        }
        ports.insert(port, claim);
        return Ok(port);
    }
    bail!("no free TCP port found on 127.0.0.1 after 200 tries")
}

/// `N` distinct free ports.
pub fn free_ports<const N: usize>() -> Result<[u16; N]> {
    let mut out = [0u16; N];
    for slot in &mut out {
        *slot = free_port()?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_handed_out_port_is_claimed_against_other_processes() -> Result<()> {
        let port = free_port()?;
        // A second open file description stands in for another process: the lock
        // is per open file, so it must be refused while this process holds it.
        assert!(claim(port)?.is_none(), "port {port} was claimable twice");
        Ok(())
    }

    #[test]
    fn ports_are_distinct_within_a_process() -> Result<()> {
        let ports = free_ports::<64>()?;
        let unique: std::collections::HashSet<u16> = ports.iter().copied().collect();
        assert_eq!(unique.len(), ports.len());
        Ok(())
    }
}
