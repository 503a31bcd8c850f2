//! The compute threads. The training thread (the process's main thread) is made one of rayon's
//! workers, so the kernels' parallel loops fork from it and it works on them, instead of
//! handing every loop to the pool and sleeping until the pool wakes it (a wake-up and a context
//! switch per loop, thousands per training step: 3-6% of a step on 2 cores, BENCHMARKS.md).
//! Only the training thread computes with rayon; the data, networking and all-reduce threads do
//! not, so no other thread waits on the pool while the training thread is busy elsewhere.

/// Builds rayon's global pool with the calling thread as worker 0 (`RAYON_NUM_THREADS` still
/// sets the size). Call once, first thing, from the thread that will train; a pool already
/// built (a second call) is left as it is.
pub fn main_thread_joins_the_pool() {
    let _ = rayon::ThreadPoolBuilder::new()
        .use_current_thread()
        .build_global();
}
