//! Who is on the other end of a socket connection, from the kernel (SO_PEERCRED).

use tokio::net::unix::UCred;

/// A connected peer process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    /// Effective uid.
    pub uid: u32,
    /// Effective gid.
    pub gid: u32,
    /// Process id at connect time.
    pub pid: i32,
    /// The process's start time (clock ticks since boot), which tells a reused pid apart.
    pub start_time: u64,
}

impl Peer {
    /// The peer behind `cred`, if its process can still be found.
    pub fn from_cred(cred: &UCred) -> Option<Self> {
        let pid = cred.pid()?;
        let start_time = process_start_time(pid)?;
        Some(Self {
            uid: cred.uid(),
            gid: cred.gid(),
            pid,
            start_time,
        })
    }

    /// Whether the same process (same pid and start time) is still running. A process
    /// that has exited but not been reaped yet (a zombie) is not: its parent could
    /// leave it unreaped for ever while a child it forked keeps the connection.
    pub fn still_alive(&self) -> bool {
        process_start_time(self.pid) == Some(self.start_time)
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
        };
        assert!(me.still_alive());
        assert!(
            !Peer {
                start_time: start_time + 1,
                ..me
            }
            .still_alive()
        );
    }
}
