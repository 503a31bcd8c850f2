//! Logs are not lost: a worker's `tracing` warnings reach its log file in the run directory,
//! and `RUST_LOG` filters them.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A launch whose single worker is told to resume from a directory holding no complete
/// checkpoint: it warns about the directory it skips, then fails. Returns rank 0's log.
fn launch_with_a_bad_resume(name: &str, rust_log: Option<&str>) -> String {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let dir = std::env::temp_dir().join(format!("anvil-logs-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let resume = dir.join("checkpoints");
    std::fs::create_dir_all(resume.join("cut-short")).unwrap();
    let worker: PathBuf = PathBuf::from(env!("CARGO_BIN_EXE_coordinator")).with_file_name("worker");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_coordinator"));
    cmd.current_dir(repo)
        .args(["launch", "--config", "configs/quickstart.yaml", "--run-dir"])
        .arg(dir.join("run"))
        .arg("--worker-bin")
        .arg(&worker)
        .args([
            "--set",
            "model.hidden_dim=32",
            "--set",
            "model.num_layers=1",
        ])
        .args(["--set", "model.num_heads=2", "--set", "model.ffn_dim=64"])
        .arg("--set")
        .arg(format!("training.resume_from={}", resume.display()))
        .env_remove("RUST_LOG");
    if let Some(filter) = rust_log {
        cmd.env("RUST_LOG", filter);
    }
    let out = cmd.output().expect("run coordinator");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("no complete checkpoint found"),
        "the worker fails with its own message: {stderr}"
    );
    std::fs::read_to_string(dir.join("run/logs/worker-0.log")).expect("worker log")
}

#[test]
fn a_worker_warning_reaches_its_log_and_rust_log_filters_it() {
    let log = launch_with_a_bad_resume("default", None);
    let warning = log
        .lines()
        .find(|l| l.contains("cut-short: not a complete, verified checkpoint"))
        .unwrap_or_else(|| panic!("no warning in the worker log:\n{log}"));
    assert!(warning.contains("WARN"), "{warning}");
    assert!(
        !warning.contains('\x1b'),
        "no colours in a log file: {warning:?}"
    );

    let log = launch_with_a_bad_resume("errors-only", Some("error"));
    assert!(
        !log.contains("not a complete, verified checkpoint"),
        "RUST_LOG=error hides warnings:\n{log}"
    );
}
