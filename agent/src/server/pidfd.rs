//! pidfds: a file descriptor on one process, readable once it has exited (Linux 5.3+;
//! SO_PEERPIDFD since 6.5). Three libc calls with no safe wrapper in our dependencies.
#![expect(
    unsafe_code,
    reason = "getsockopt, the pidfd_open syscall and poll have no safe wrapper in nix's enabled features"
)]

use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd, RawFd};

use nix::libc;

/// The pidfd of the process at the other end of the Unix socket `socket`, as the
/// kernel recorded it at connect time.
pub fn of_peer(socket: RawFd) -> Option<OwnedFd> {
    let mut fd: libc::c_int = -1;
    let mut len = libc::socklen_t::try_from(size_of::<libc::c_int>()).ok()?;
    // SAFETY: `fd` and `len` are valid for writes of the sizes given; the kernel
    // writes at most `len` bytes into `fd`. A bad `socket` only makes the call fail.
    let rc = unsafe {
        libc::getsockopt(
            socket,
            libc::SOL_SOCKET,
            libc::SO_PEERPIDFD,
            (&raw mut fd).cast(),
            &raw mut len,
        )
    };
    // SAFETY: on success the kernel gave us a new descriptor that nothing else owns.
    (rc == 0 && fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A pidfd on process `pid`.
pub fn open(pid: i32) -> Option<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    let fd = RawFd::try_from(fd).ok().filter(|fd| *fd >= 0)?;
    // SAFETY: a new descriptor that nothing else owns.
    Some(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Whether the process behind `pidfd` has exited (a zombie has). A failing poll
/// counts as exited: the caller then refuses rather than trusts.
pub fn exited(pidfd: &OwnedFd) -> bool {
    let mut poll = libc::pollfd {
        fd: pidfd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid `pollfd`, no wait.
    let rc = unsafe { libc::poll(&raw mut poll, 1, 0) };
    rc != 0
}
