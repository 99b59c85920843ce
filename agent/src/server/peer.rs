//! Who is on the other end of a socket connection, from the kernel (SO_PEERCRED), and
//! whether that process still runs.
//!
//! A connection's peer is looked up once, when the connection is accepted: its
//! credentials, its start time from `/proc` (the process must be visible and not a
//! zombie) and a pidfd on it (SO_PEERPIDFD, or `pidfd_open` on older kernels). Each
//! call then only polls the pidfd, which becomes readable when that very process
//! exits: no `/proc` read per call (that was about a sixth of a `Get`'s CPU time), and
//! no pid-reuse question. Without a pidfd the start time is read again per check.

use std::os::fd::{AsRawFd as _, OwnedFd};
use std::sync::Arc;

use tokio::net::UnixStream;
use tokio::net::unix::UCred;

/// A connected peer process.
#[derive(Debug, Clone)]
pub struct Peer {
    /// Effective uid.
    pub uid: u32,
    /// Effective gid.
    pub gid: u32,
    /// Process id at connect time.
    pub pid: i32,
    /// The process's start time (clock ticks since boot), which tells a reused pid apart.
    pub start_time: u64,
    /// A pidfd on the process, when the kernel gives one.
    pidfd: Option<Arc<OwnedFd>>,
}

impl Peer {
    /// The peer behind `cred`, if its process can still be found (no pidfd: each
    /// liveness check reads `/proc`).
    pub fn from_cred(cred: &UCred) -> Option<Self> {
        let pid = cred.pid()?;
        let start_time = process_start_time(pid)?;
        Some(Self {
            uid: cred.uid(),
            gid: cred.gid(),
            pid,
            start_time,
            pidfd: None,
        })
    }

    /// The peer of a just-accepted connection, with a pidfd on its process when the
    /// kernel can give one.
    pub fn of_stream(stream: &UnixStream) -> Option<Self> {
        let cred = stream.peer_cred().ok()?;
        let mut peer = Self::from_cred(&cred)?;
        let pidfd = crate::server::pidfd::of_peer(stream.as_raw_fd())
            .or_else(|| crate::server::pidfd::open(peer.pid))?;
        // The pid may have been reused between SO_PEERCRED and the pidfd (the second
        // way only): the start time must not have changed, and the process must
        // still run.
        if process_start_time(peer.pid) == Some(peer.start_time)
            && !crate::server::pidfd::exited(&pidfd)
        {
            peer.pidfd = Some(Arc::new(pidfd));
        }
        Some(peer)
    }

    /// Whether the same process (same pid and start time) is still running. A process
    /// that has exited but not been reaped yet (a zombie) is not: its parent could
    /// leave it unreaped for ever while a child it forked keeps the connection.
    pub fn still_alive(&self) -> bool {
        match &self.pidfd {
            Some(fd) => !crate::server::pidfd::exited(fd),
            None => process_start_time(self.pid) == Some(self.start_time),
        }
    }

    /// Whether liveness checks use a pidfd.
    pub fn has_pidfd(&self) -> bool {
        self.pidfd.is_some()
    }
}

/// Field 22 of `/proc/<pid>/stat`, if the process is running (not a zombie).
fn process_start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_start_time(&stat)
}

fn parse_start_time(stat: &str) -> Option<u64> {
    // The command name (field 2) may hold spaces and parentheses: skip past its last ')'.
    let rest = stat.get(stat.rfind(')')? + 1..)?;
    let mut fields = rest.split_whitespace();
    // `rest` starts at field 3, the state: Z (zombie) and X (dead) are gone.
    if matches!(fields.next()?, "Z" | "X" | "x") {
        return None;
    }
    // Field 22 is the 19th after the state.
    fields.nth(18)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_start_time_past_odd_command_names() {
        let stat = "1234 (we ird) (x)) S 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 424242 20 21";
        assert_eq!(parse_start_time(stat), Some(424242));
    }

    #[tokio::test]
    async fn a_connection_peer_has_a_pidfd_that_tells_when_it_exits() {
        let (a, _b) = UnixStream::pair().unwrap();
        let me = Peer::of_stream(&a).unwrap();
        assert_eq!(me.pid, i32::try_from(std::process::id()).unwrap());
        assert!(me.has_pidfd());
        assert!(me.still_alive());
        // A child that exits (and stays a zombie until reaped) is gone at once.
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = i32::try_from(child.id()).unwrap();
        let fd = crate::server::pidfd::open(pid).unwrap();
        let peer = Peer {
            pid,
            pidfd: Some(Arc::new(fd)),
            ..me
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while peer.still_alive() {
            assert!(std::time::Instant::now() < deadline, "exit not seen");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        child.wait().unwrap();
    }

    #[test]
    fn zombies_and_dead_processes_have_no_start_time() {
        for state in ["Z", "X"] {
            let stat = format!(
                "1234 (gone) {state} 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 424242 20 21"
            );
            assert_eq!(parse_start_time(&stat), None, "{state}");
        }
    }

    #[test]
    fn own_process_is_alive_and_a_changed_start_time_is_not() {
        let pid = i32::try_from(std::process::id()).unwrap();
        let start_time = process_start_time(pid).unwrap();
        let me = Peer {
            uid: 0,
            gid: 0,
            pid,
            start_time,
            pidfd: None,
        };
        assert!(me.still_alive());
        assert!(
            !Peer {
                start_time: start_time + 1,
                ..me.clone()
            }
            .still_alive()
        );
        let fd = crate::server::pidfd::open(pid).unwrap();
        assert!(
            Peer {
                pidfd: Some(Arc::new(fd)),
                ..me
            }
            .still_alive()
        );
    }
}
