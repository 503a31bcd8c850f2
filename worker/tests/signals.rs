//! A real `worker train` process asked to stop by SIGTERM (Slurm preemption, `scancel`,
//! Kubernetes eviction) checkpoints the step it is in and exits 0, instead of dying with it.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

#[test]
fn sigterm_checkpoints_and_exits_cleanly() {
    let dir = std::env::temp_dir().join(format!("anvil-signals-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let data = repo().join("data/pbmc68k_counts.h5ad");
    let mut child = Command::new(env!("CARGO_BIN_EXE_worker"))
        .current_dir(repo())
        .args(["train", "--config", "configs/quickstart.yaml", "--run-dir"])
        .arg(&dir)
        .args(["--set", &format!("data.paths=[{}]", data.display())])
        .args(["--set", "training.log_every_n_steps=1"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("worker starts");
    let mut lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
    let mut seen = Vec::new();
    // Wait for the first optimizer step, then send SIGTERM.
    for line in lines.by_ref() {
        let line = line.expect("utf-8 log");
        seen.push(line.clone());
        if line.contains("step 1/") {
            break;
        }
    }
    assert!(
        seen.last().is_some_and(|l| l.contains("step 1/")),
        "no step was logged: {seen:#?}"
    );
    // SAFETY: plain kill(2) on our own child.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        assert!(Instant::now() < deadline, "worker did not stop: {rest:#?}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(status.success(), "exit {status:?}; log: {rest:#?}");
    let state = std::fs::read_to_string(dir.join("checkpoints/last/state.json"))
        .expect("a checkpoint of the step in progress");
    let state: serde_json::Value = serde_json::from_str(&state).expect("state.json");
    let step = state["global_step"].as_u64().expect("global_step");
    assert!((1..190).contains(&step), "stopped at step {step}");
    assert!(
        rest.iter()
            .any(|l| l.contains("stopped") && l.contains("resume_from")),
        "the summary says how to continue: {rest:#?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
