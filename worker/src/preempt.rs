//! SIGTERM and SIGUSR1 ask a worker to checkpoint and stop, as they ask the coordinator. Under
//! Slurm (preemption, `scancel`, the `--signal` warning before the time limit) and Kubernetes
//! (eviction) every process of the job gets the signal; a worker that died of it would lose the
//! step in progress and leave rank 0 unable to write the checkpoint. The trainer asks
//! [`requested`] once per optimizer step and the ranks vote on it in the all-reduce, so all of
//! them stop after the same step. A second signal changes nothing: the orderly stop is already
//! under way, and the coordinator (or Slurm, after its KillWait) ends processes for good with
//! SIGKILL.

use std::sync::atomic::{AtomicBool, Ordering};

static REQUESTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    // Only an atomic store: async-signal-safe.
    REQUESTED.store(true, Ordering::SeqCst);
}

/// Routes SIGTERM and SIGUSR1 to the stop request instead of their default (exit).
pub fn install() {
    let handler = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
    // SAFETY: the handler only performs an atomic store.
    unsafe {
        libc::signal(libc::SIGTERM, handler);
        libc::signal(libc::SIGUSR1, handler);
    }
}

/// Whether a stop was asked for by a signal.
pub fn requested() -> bool {
    REQUESTED.load(Ordering::SeqCst)
}
