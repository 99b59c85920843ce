//! Free TCP ports on the loopback interface.
//!
//! Ports are drawn at random from below the kernel's ephemeral range, so that no
//! outgoing connection (which takes its local port from that range) can occupy a port
//! between the moment it is chosen and the moment a server binds it, and so that test
//! processes running in parallel rarely draw the same one.

use std::collections::HashSet;
use std::net::TcpListener;
use std::sync::{Mutex, OnceLock};

use anyhow::{Context, Result, bail};
use rand::Rng;

/// The lowest port handed out.
const LOWEST: u16 = 12_000;

/// Ports already handed out by this process, never handed out twice.
fn handed_out() -> &'static Mutex<HashSet<u16>> {
    static PORTS: OnceLock<Mutex<HashSet<u16>>> = OnceLock::new();
    PORTS.get_or_init(|| Mutex::new(HashSet::new()))
}

/// The first port of the kernel's ephemeral range (32768 when unknown).
fn ephemeral_low() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|text| text.split_whitespace().next()?.parse().ok())
        .unwrap_or(32_768)
}

/// A TCP port on 127.0.0.1 that nobody listens on right now.
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
        if TcpListener::bind(("127.0.0.1", port)).is_err() {
            continue;
        }
        let mut ports = handed_out()
            .lock()
            .map_err(|_| anyhow::anyhow!("free port registry poisoned"))?;
        if ports.insert(port) {
            return Ok(port);
        }
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
