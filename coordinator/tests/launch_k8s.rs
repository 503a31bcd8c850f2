//! `coordinator launch` as `coordinator deploy k8s` runs it, played out with local processes:
//! the run token comes from a file (the Secret), workers are started by someone else with their
//! own ranks (the indexed Job), one of them is evicted (SIGTERM), every process exits with the
//! preempted exit code, and the same coordinator command line started again (the Job
//! restarting its pod) continues the run to the end the uninterrupted run reaches.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{repo, worker_bin};

fn scratch(name: &str) -> PathBuf {
    common::scratch("k8s", name)
}

/// The `training.*` overrides of this suite, on top of `common::TINY_MODEL`.
const TRAINING: &[&str] = &[
    "training.max_epochs=3",
    "training.log_every_n_steps=1",
    "training.val_split=0.1",
    "training.scheduler=null",
    "training.batch_size=8",
];

fn coordinator(args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_coordinator"));
    cmd.current_dir(repo())
        .args(["launch", "--config", "configs/quickstart.yaml"]);
    common::set_tiny(&mut cmd, TRAINING);
    cmd.args(args);
    cmd
}

/// The coordinator's command line in the Kubernetes Job, with a local address.
fn job_coordinator(run_dir: &Path, token: &Path, port: u16, extra: &[&str]) -> Command {
    let mut cmd = coordinator(&[
        "--external",
        "--nodes",
        "2",
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--resume-existing",
        "--preempted-exit-code",
        "75",
        "--heartbeat-timeout",
        "3",
    ]);
    cmd.arg("--run-dir")
        .arg(run_dir)
        .arg("--token-file")
        .arg(token)
        .args(extra);
    cmd
}

/// A worker of the indexed Job: its rank, the token file, the preempted exit code. Threads as
/// `coordinator launch` gives two local workers, so the curves compare bit for bit.
fn job_worker(rank: usize, token: &Path, port: u16, log: &Path) -> Child {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    Command::new(worker_bin())
        .current_dir(repo())
        .args(["--coordinator", &format!("127.0.0.1:{port}"), "--rank"])
        .arg(rank.to_string())
        .arg("--token-file")
        .arg(token)
        .args(["--preempted-exit-code", "75"])
        .env("RAYON_NUM_THREADS", (cores / 2).max(1).to_string())
        .env_remove("ANVIL_RUN_TOKEN")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .expect("start worker")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn spawn(mut cmd: Command) -> Child {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn coordinator")
}

/// (step, loss) of every training row of a run's newest metrics.csv (none before it exists).
fn losses(run_dir: &Path) -> Vec<(u64, f64)> {
    let path = run::versions::metrics_csv(run_dir);
    let text = std::fs::read_to_string(&path).unwrap_or_default();
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap_or("").split(',').collect();
    let col = |name: &str| header.iter().position(|h| *h == name);
    let (Some(step), Some(loss)) = (col("step"), col("train/loss")) else {
        return Vec::new();
    };
    lines
        .filter_map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            let loss = f.get(loss)?.parse().ok()?;
            Some((f.get(step)?.parse().ok()?, loss))
        })
        .collect()
}

fn wait_for_step(run_dir: &Path, step: u64, limit: Duration) {
    let start = Instant::now();
    while start.elapsed() < limit {
        if losses(run_dir).iter().any(|(s, _)| *s >= step) {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("run in {} never reached step {step}", run_dir.display());
}

fn wait_exit(mut child: Child, limit: Duration, what: &str) -> Option<i32> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if let Some(status) = child.try_wait().unwrap() {
            return status.code();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    panic!("{what} still running after {limit:?}");
}

fn record_status(run_dir: &Path) -> String {
    let record = std::fs::read_to_string(run_dir.join("run.json")).unwrap();
    record
        .split("\"status\":")
        .nth(1)
        .and_then(|s| s.split('"').nth(1))
        .unwrap_or_default()
        .to_string()
}

#[test]
fn an_evicted_worker_stops_the_run_non_zero_and_the_restarted_job_resumes_it() {
    let dir = scratch("evict");
    let clean = coordinator(&["--nodes", "2", "--run-dir"])
        .arg(dir.join("clean"))
        .arg("--worker-bin")
        .arg(worker_bin())
        .output()
        .unwrap();
    assert!(clean.status.success(), "{}", text(&clean.stderr));
    let clean_curve = losses(&dir.join("clean"));

    let token = dir.join("secret-token");
    std::fs::write(&token, "k8s-secret-token-0123456789\n").unwrap();
    let run_dir = dir.join("run");
    let port = free_port();

    // First pod generation: worker rank 1's pod is evicted (SIGTERM) mid-run.
    let coord = spawn(job_coordinator(&run_dir, &token, port, &[]));
    let workers: Vec<Child> = (0..2)
        .map(|r| job_worker(r, &token, port, &dir.join(format!("worker-{r}-a.log"))))
        .collect();
    wait_for_step(&run_dir, 3, Duration::from_secs(120));
    let evicted = workers[1].id();
    assert!(Command::new("kill")
        .args(["-TERM", &evicted.to_string()])
        .status()
        .unwrap()
        .success());
    for (rank, w) in workers.into_iter().enumerate() {
        let code = wait_exit(w, Duration::from_secs(60), "worker");
        let log = std::fs::read_to_string(dir.join(format!("worker-{rank}-a.log"))).unwrap();
        assert_eq!(code, Some(75), "worker {rank} after the eviction:\n{log}");
    }
    let out = coord.wait_with_output().unwrap();
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(75), "{stderr}");
    assert_eq!(record_status(&run_dir), "preempted", "{stderr}");
    assert!(stderr.contains("exiting with code 75"), "{stderr}");
    assert_eq!(
        std::fs::read_to_string(run_dir.join("token")).unwrap(),
        "k8s-secret-token-0123456789",
        "the run directory holds the Secret's token"
    );

    // The Jobs restart their pods: the very same command lines.
    let coord = spawn(job_coordinator(&run_dir, &token, port, &[]));
    let workers: Vec<Child> = (0..2)
        .map(|r| job_worker(r, &token, port, &dir.join(format!("worker-{r}-b.log"))))
        .collect();
    for (rank, w) in workers.into_iter().enumerate() {
        let code = wait_exit(w, Duration::from_secs(180), "worker");
        let log = std::fs::read_to_string(dir.join(format!("worker-{rank}-b.log"))).unwrap();
        assert_eq!(code, Some(0), "worker {rank} of the resumed run:\n{log}");
    }
    let out = coord.wait_with_output().unwrap();
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("resuming from"), "{stderr}");
    assert_eq!(record_status(&run_dir), "finished");
    let resumed = losses(&run_dir);
    assert_eq!(
        clean_curve.len(),
        resumed.len(),
        "{clean_curve:?}\n{resumed:?}"
    );
    for ((sa, la), (sb, lb)) in clean_curve.iter().zip(&resumed) {
        assert_eq!(sa, sb);
        let rel = (la - lb).abs() / la.abs().max(1e-12);
        assert!(rel <= 1e-5, "step {sa}: {la} vs {lb}");
    }

    // A coordinator pod restarted after the end finds nothing to do.
    let out = job_coordinator(&run_dir, &token, port, &[])
        .output()
        .unwrap();
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("already finished"), "{stderr}");
    assert_eq!(
        losses(&run_dir),
        resumed,
        "a finished run is left as it was"
    );
}

#[test]
fn resume_existing_continues_only_the_same_config() {
    let dir = scratch("sameconfig");
    let token = dir.join("token");
    std::fs::write(&token, "t0k3n").unwrap();
    let run_dir = dir.join("run");
    let port = free_port();
    // Nobody registers: the run directory is made, the coordinator gives up (exit 1).
    let quick = ["--register-timeout", "1"];
    let out = job_coordinator(&run_dir, &token, port, &quick)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(run_dir.join("run.json").exists());

    // Restarted with the same command: the run continues (from the beginning: no checkpoint).
    let out = job_coordinator(&run_dir, &token, port, &quick)
        .output()
        .unwrap();
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("no complete checkpoint in the run yet; starting it over"),
        "{stderr}"
    );
    assert!(!stderr.contains("already holds a run"), "{stderr}");

    // With another config it refuses, naming the difference.
    let out = job_coordinator(
        &run_dir,
        &token,
        port,
        &[
            "--set",
            "training.optimizer.lr=0.5",
            "--register-timeout",
            "1",
        ],
    )
    .output()
    .unwrap();
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("another config"), "{stderr}");
    assert!(stderr.contains("lr: 0.5"), "{stderr}");

    // Nor with another number of workers (not even 1, which plain --resume takes as "as before").
    let out = coordinator(&[
        "--external",
        "--nodes",
        "1",
        "--resume-existing",
        "--run-dir",
    ])
    .arg(&run_dir)
    .arg("--token-file")
    .arg(&token)
    .output()
    .unwrap();
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("was started with 2 workers, not 1"),
        "{stderr}"
    );

    // Without --resume-existing the old refusal stands.
    let out = coordinator(&["--external", "--nodes", "2", "--run-dir"])
        .arg(&run_dir)
        .output()
        .unwrap();
    assert!(
        text(&out.stderr).contains("already holds a run"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn a_token_file_must_hold_a_usable_token() {
    let dir = scratch("tokenfile");
    let port = free_port();
    for (content, expected) in [
        ("\n", "is empty"),
        ("two words", "printable ASCII without spaces"),
    ] {
        let token = dir.join("token");
        std::fs::write(&token, content).unwrap();
        let out = job_coordinator(&dir.join("run"), &token, port, &[])
            .output()
            .unwrap();
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(stderr.contains("--token-file"), "{stderr}");
        assert!(stderr.contains(expected), "{stderr}");
        assert!(
            !dir.join("run").exists(),
            "no run directory for a bad token"
        );
    }
    let out = job_coordinator(&dir.join("run"), &dir.join("missing"), port, &[])
        .output()
        .unwrap();
    let stderr = text(&out.stderr);
    assert!(stderr.contains("--token-file: cannot read"), "{stderr}");
}
