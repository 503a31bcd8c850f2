//! The harness of the GPU test suites (`kernels/tests/gpu_ops.rs`, `worker/tests/gpu.rs`): test
//! binaries with `harness = false`, so that without a device every case is reported SKIPPED
//! with the reason, never as passed (`ANVIL_REQUIRE_GPU=1` makes that a failure, as
//! `scripts/gpu-check.sh` sets). A case returns `Err("SKIP: why")` to skip itself (e.g. a
//! two-GPU case on one GPU). Command-line words filter cases by substring.

use std::panic::{catch_unwind, AssertUnwindSafe};

use super::Cuda;

/// A named case run on the suite's device.
pub type Case<'a> = (String, Box<dyn Fn(&Cuda) -> Result<(), String> + 'a>);

/// Runs `cases` on GPU 0, prints a line per case and a summary, and exits non-zero on a
/// failure (or on no device, under ANVIL_REQUIRE_GPU).
pub fn run(title: &str, cases: Vec<Case>) {
    let dev = if Cuda::available() {
        Cuda::open(0).map_err(|e| e.to_string())
    } else {
        Err("no CUDA driver or device on this machine".to_string())
    };
    let dev = match dev {
        Ok(d) => d,
        Err(reason) => {
            for (name, _) in &cases {
                println!("test {name} ... SKIPPED ({reason})");
            }
            println!(
                "\ntest result: SKIPPED. 0 passed; 0 failed; {} skipped: {reason}",
                cases.len()
            );
            if std::env::var_os("ANVIL_REQUIRE_GPU").is_some() {
                std::process::exit(1);
            }
            return;
        }
    };
    println!("{title} on {}", dev.describe());
    let filter: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let (mut passed, mut failed, mut skipped) = (0, 0, 0);
    for (name, f) in &cases {
        if !filter.is_empty() && !filter.iter().any(|p| name.contains(p.as_str())) {
            continue;
        }
        match catch_unwind(AssertUnwindSafe(|| f(&dev))) {
            Ok(Ok(())) => {
                passed += 1;
                println!("test {name} ... ok");
            }
            Ok(Err(e)) if e.starts_with("SKIP: ") => {
                skipped += 1;
                println!("test {name} ... SKIPPED ({})", &e["SKIP: ".len()..]);
            }
            Ok(Err(e)) => {
                failed += 1;
                println!("test {name} ... FAILED: {e}");
            }
            Err(_) => {
                failed += 1;
                println!("test {name} ... FAILED (panicked)");
            }
        }
    }
    println!(
        "\ntest result: {}. {passed} passed; {failed} failed; {skipped} skipped",
        if failed == 0 { "ok" } else { "FAILED" }
    );
    if failed > 0 {
        std::process::exit(1);
    }
}
