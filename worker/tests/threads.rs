//! The training thread is one of rayon's workers (`worker::threads`): parallel loops fork from
//! it rather than being handed to the pool. One test per process: the pool is global.

use rayon::prelude::*;

#[test]
fn the_training_thread_is_worker_zero_of_the_pool_and_loops_still_run_in_parallel() {
    worker::threads::main_thread_joins_the_pool();
    assert_eq!(
        rayon::current_thread_index(),
        Some(0),
        "the calling thread joined the global pool"
    );
    let threads = rayon::current_num_threads();
    let want = std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|&n| n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    assert_eq!(threads, want, "the pool keeps its usual size");
    // A loop forked from this thread runs on every worker (when there is more than one), and
    // a second call leaves the pool as it is.
    worker::threads::main_thread_joins_the_pool();
    let seen: std::collections::BTreeSet<usize> = (0..64usize)
        .into_par_iter()
        .map(|_| {
            std::thread::sleep(std::time::Duration::from_millis(2));
            rayon::current_thread_index().expect("a pool thread")
        })
        .collect();
    assert!(
        seen.contains(&0),
        "this thread worked on its own loop: {seen:?}"
    );
    if threads > 1 {
        assert!(seen.len() > 1, "other workers took part: {seen:?}");
    }
    let sum: u64 = (0..100_000u64).into_par_iter().sum();
    assert_eq!(sum, 100_000 * 99_999 / 2);
}
