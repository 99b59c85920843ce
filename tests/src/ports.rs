//! Free TCP ports on the loopback interface.

use std::collections::HashSet;
use std::net::TcpListener;
use std::sync::{Mutex, OnceLock};

use anyhow::{Context, Result, bail};

/// Ports already handed out by this process, so that two servers started by the same
/// test binary never get the same one even if the kernel offers it twice.
fn handed_out() -> &'static Mutex<HashSet<u16>> {
    static PORTS: OnceLock<Mutex<HashSet<u16>>> = OnceLock::new();
    PORTS.get_or_init(|| Mutex::new(HashSet::new()))
}

/// A TCP port on 127.0.0.1 that nobody listens on right now.
///
/// The port is found by binding port 0 and closing the listener again, so another
/// process could in principle take it before the caller binds it; the kernel hands out
/// ephemeral ports in a way that makes this unlikely.
pub fn free_port() -> Result<u16> {
    for _ in 0..50 {
        let listener = TcpListener::bind(("127.0.0.1", 0)).context("binding 127.0.0.1:0")?;
        let port = listener.local_addr().context("local address")?.port();
        drop(listener);
        let mut ports = handed_out()
            .lock()
            .map_err(|_| anyhow::anyhow!("free port registry poisoned"))?;
        if ports.insert(port) {
            return Ok(port);
        }
    }
    bail!("no free TCP port found on 127.0.0.1 after 50 tries")
}

/// `N` distinct free ports.
pub fn free_ports<const N: usize>() -> Result<[u16; N]> {
    let mut out = [0u16; N];
    for slot in &mut out {
        *slot = free_port()?;
    }
    Ok(out)
}
