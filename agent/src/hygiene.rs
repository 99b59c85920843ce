//! Keeping secrets out of core dumps, ptrace and swap.

mod wipe;

pub use self::wipe::WipeOnFree;

use nix::sys::mman::{MlockAllFlags, mlockall};
use nix::sys::resource::{Resource, getrlimit, setrlimit};
use tracing::{info, warn};

/// `mlockall(MCL_FUTURE)` makes every later allocation count against the memlock
/// limit, and one that would exceed it fails (aborting the agent). So memory is locked
/// only when the limit is unlimited (`LimitMEMLOCK=infinity`, or CAP_IPC_LOCK).
const UNLIMITED: u64 = nix::libc::RLIM_INFINITY;

/// Makes the process non-dumpable (no core files, no ptrace by same-uid processes)
/// and locks its memory where the limit allows. Failures are logged, never fatal.
pub fn harden() {
    if let Err(e) = nix::sys::prctl::set_dumpable(false) {
        warn!(error = %e, "PR_SET_DUMPABLE=0 failed");
    }
    if let Err(e) = setrlimit(Resource::RLIMIT_CORE, 0, 0) {
        warn!(error = %e, "RLIMIT_CORE=0 failed");
    }
    match getrlimit(Resource::RLIMIT_MEMLOCK) {
        Ok((soft, _)) if soft == UNLIMITED => {
            match mlockall(MlockAllFlags::MCL_CURRENT | MlockAllFlags::MCL_FUTURE) {
                Ok(()) => info!("memory locked (mlockall): secrets will not be swapped out"),
                Err(e) => warn!(error = %e, "mlockall failed; secrets may be swapped out"),
            }
        }
        Ok((soft, _)) => warn!(
            memlock.limit_bytes = soft,
            "memory not locked: RLIMIT_MEMLOCK is limited (set LimitMEMLOCK=infinity to lock it)"
        ),
        Err(e) => warn!(error = %e, "cannot read RLIMIT_MEMLOCK; memory not locked"),
    }
}

/// Hands the heap's free pages back to the kernel (glibc's `malloc_trim`). Called once
/// the preload is in and after each refresh pass: both free far more than they keep
/// (HTTP bodies, JSON, the config file's parse), and glibc otherwise keeps those pages
/// mapped. The blocks were wiped when freed; trimming unmaps them as well.
pub fn trim_heap() {
    #[cfg(target_env = "gnu")]
    #[expect(
        unsafe_code,
        reason = "malloc_trim is a libc call; it takes no pointer and only releases free pages"
    )]
    // SAFETY: `malloc_trim` has no preconditions; it walks the allocator's own free
    // lists under its locks and releases whole free pages.
    unsafe {
        nix::libc::malloc_trim(0);
    }
}
