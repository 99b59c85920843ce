//! Keeping secrets out of core dumps, ptrace and swap.

use nix::sys::mman::{MlockAllFlags, mlockall};
use nix::sys::resource::{Resource, getrlimit, setrlimit};
use tracing::{info, warn};

/// Locking all memory is only attempted when the memlock limit is at least this
/// large: with a small limit a later allocation could fail and abort the agent.
const MIN_MEMLOCK: u64 = 512 << 20;

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
        Ok((soft, _)) if soft >= MIN_MEMLOCK => {
            match mlockall(MlockAllFlags::MCL_CURRENT | MlockAllFlags::MCL_FUTURE) {
                Ok(()) => info!("memory locked (mlockall): secrets will not be swapped out"),
                Err(e) => warn!(error = %e, "mlockall failed; secrets may be swapped out"),
            }
        }
        Ok((soft, _)) => warn!(
            memlock.limit_bytes = soft,
            "memory not locked: RLIMIT_MEMLOCK is too small (raise LimitMEMLOCK or grant CAP_IPC_LOCK)"
        ),
        Err(e) => warn!(error = %e, "cannot read RLIMIT_MEMLOCK; memory not locked"),
    }
}
