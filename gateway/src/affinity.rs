//! Worker threads pinned one per CPU (`--cpu-affinity auto`), as nginx's
//! `worker_cpu_affinity auto` and HAProxy's `cpu-map auto:` do.
//!
//! Why: each worker owns its connections (its own `SO_REUSEPORT` socket and runtime),
//! so a worker the scheduler puts on the same CPU as another worker stalls every one of
//! its connections for a time slice while the other CPU may be idle. Measured on two
//! cores sharing wrk and the upstream: HS256 p99 4.3-4.5 ms unpinned, 1.4-1.7 ms pinned
//! (p50 and throughput the same). Off by default, like nginx's: a worker pinned to a CPU that
//! something else keeps busy cannot move away from it.

use nix::sched::{CpuSet, sched_getaffinity, sched_setaffinity};
use nix::unistd::Pid;

/// A CPU affinity call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AffinityError {
    /// `sched_getaffinity` refused to say which CPUs this process may use.
    #[error("cannot read the CPUs this process may run on: {0}")]
    Read(#[source] nix::Error),
    /// The process may run on no CPU at all (an empty mask: cannot happen on Linux).
    #[error("the process's CPU mask is empty")]
    Empty,
    /// `sched_setaffinity` refused the mask (the CPU was taken away, or a seccomp filter).
    #[error("cannot set the thread's CPU mask: {0}")]
    Set(#[source] nix::Error),
}

/// The CPUs this process was allowed when the plan was made (`taskset`, a cpuset
/// cgroup, Kubernetes' static CPU manager), and which one each worker gets: worker `i`
/// the `i`-th of them, round robin when there are more workers than CPUs.
#[derive(Debug, Clone)]
pub struct CpuPlan {
    allowed: CpuSet,
    cpus: Vec<usize>,
}

impl CpuPlan {
    /// The plan for the calling thread's mask; call it before any pinning (the main
    /// thread's mask is the process's until then).
    pub fn of_this_process() -> Result<Self, AffinityError> {
        Self::from_mask(sched_getaffinity(Pid::from_raw(0)).map_err(AffinityError::Read)?)
    }

    fn from_mask(allowed: CpuSet) -> Result<Self, AffinityError> {
        // Listed once: `cpu_for` runs per worker and the log names them.
        let cpus: Vec<usize> = (0..CpuSet::count())
            .filter(|&cpu| allowed.is_set(cpu).unwrap_or(false))
            .collect();
        if cpus.is_empty() {
            return Err(AffinityError::Empty);
        }
        Ok(Self { allowed, cpus })
    }

    /// The allowed CPUs, in the order workers get them.
    pub fn cpus(&self) -> &[usize] {
        &self.cpus
    }

    /// The CPU of worker `worker` (0 is the thread that calls `Gateway::serve`).
    pub fn cpu_for(&self, worker: usize) -> usize {
        // `cpus` is never empty (`from_mask`), so the index is in range.
        self.cpus[worker % self.cpus.len()]
    }

    /// Pins the calling thread to worker `worker`'s CPU; returns that CPU.
    pub fn pin_current_thread(&self, worker: usize) -> Result<usize, AffinityError> {
        let cpu = self.cpu_for(worker);
        let mut one = CpuSet::new();
        one.set(cpu).map_err(AffinityError::Set)?;
        sched_setaffinity(Pid::from_raw(0), &one).map_err(AffinityError::Set)?;
        Ok(cpu)
    }

    /// Gives the calling thread the process's whole mask back: for the runtimes'
    /// blocking threads (DNS lookups, Admin API writes), which would otherwise inherit
    /// the pin of the worker that started them and compete with it for its CPU.
    pub fn release_current_thread(&self) -> Result<(), AffinityError> {
        sched_setaffinity(Pid::from_raw(0), &self.allowed).map_err(AffinityError::Set)
    }

    /// [`Self::pin_current_thread`], or a warning and no pin: a worker on any CPU
    /// still serves, so this is not worth failing the start for (nginx does the same).
    pub(crate) fn pin_or_warn(&self, worker: usize) {
        if let Err(e) = self.pin_current_thread(worker) {
            tracing::warn!(worker, cpu = self.cpu_for(worker), error = %e, "cannot pin the worker thread; it runs on any CPU");
        }
    }

    /// A runtime's `on_thread_start` hook: [`Self::release_current_thread`], warning
    /// on failure.
    pub fn release_hook(&self) -> impl Fn() + Send + Sync + 'static {
        let plan = self.clone();
        move || {
            if let Err(e) = plan.release_current_thread() {
                tracing::warn!(error = %e, "a blocking thread keeps its worker's CPU");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(cpus: &[usize]) -> CpuPlan {
        let mut allowed = CpuSet::new();
        for &cpu in cpus {
            allowed.set(cpu).unwrap();
        }
        CpuPlan::from_mask(allowed).unwrap()
    }

    fn this_thread_cpus() -> Vec<usize> {
        let mask = sched_getaffinity(Pid::from_raw(0)).unwrap();
        (0..CpuSet::count())
            .filter(|&c| mask.is_set(c).unwrap())
            .collect()
    }

    #[test]
    fn workers_take_the_allowed_cpus_in_order_and_wrap_around() {
        let plan = plan(&[6, 2, 3]);
        assert_eq!(plan.cpus(), [2, 3, 6]);
        let got: Vec<_> = (0..7).map(|w| plan.cpu_for(w)).collect();
        assert_eq!(got, [2, 3, 6, 2, 3, 6, 2]);
    }

    #[test]
    fn an_empty_mask_is_refused() {
        assert!(matches!(
            CpuPlan::from_mask(CpuSet::new()),
            Err(AffinityError::Empty)
        ));
    }

    #[test]
    fn this_process_has_at_least_one_cpu_and_lists_each_once() {
        let plan = CpuPlan::of_this_process().unwrap();
        let mut cpus = plan.cpus().to_vec();
        cpus.dedup();
        assert_eq!(cpus, plan.cpus());
        assert!(!cpus.is_empty());
    }

    #[test]
    fn a_cpu_the_kernel_refuses_is_an_error_and_the_thread_keeps_its_mask() {
        // No machine here has CPU 1000: sched_setaffinity says EINVAL, as it says EPERM
        // under a seccomp filter; `pin_or_warn` then warns and the worker runs anywhere.
        let plan = plan(&[1000]);
        std::thread::spawn(move || {
            let before = this_thread_cpus();
            assert!(matches!(
                plan.pin_current_thread(0),
                Err(AffinityError::Set(_))
            ));
            plan.pin_or_warn(0);
            assert_eq!(this_thread_cpus(), before);
        })
        .join()
        .unwrap();
    }

    #[test]
    fn a_pinned_thread_runs_on_its_cpu_only_and_release_gives_the_mask_back() {
        let plan = CpuPlan::of_this_process().unwrap();
        // A thread of its own: the test harness's threads keep their masks.
        std::thread::spawn(move || {
            let cpu = plan.pin_current_thread(1).unwrap();
            assert_eq!(cpu, plan.cpu_for(1));
            assert_eq!(this_thread_cpus(), [cpu]);
            plan.release_current_thread().unwrap();
            assert_eq!(this_thread_cpus(), plan.cpus());
        })
        .join()
        .unwrap();
    }
}
