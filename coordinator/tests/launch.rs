//! `coordinator launch` end to end: real coordinator and worker processes, real gRPC, the real
//! TCP ring, on the bundled PBMC data with a small model so each run takes seconds.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{repo, worker_bin};

/// A fresh scratch directory for one test's runs.
fn scratch(name: &str) -> PathBuf {
    common::scratch("launch", name)
}

/// The `training.*` overrides of this suite, on top of `common::TINY_MODEL`.
const TRAINING: &[&str] = &[
    "training.max_epochs=2",
    "training.log_every_n_steps=1",
    "training.val_split=0.1",
    "training.scheduler=null",
];

fn launch_cmd(run_dir: &Path, nodes: usize, batch: usize, extra: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_coordinator"));
    cmd.current_dir(repo())
        .args(["launch", "--config", "configs/quickstart.yaml", "--nodes"])
        .arg(nodes.to_string())
        .arg("--run-dir")
        .arg(run_dir)
        .arg("--worker-bin")
        .arg(worker_bin())
        .args(["--heartbeat-timeout", "3"]);
    common::set_tiny(&mut cmd, TRAINING);
    cmd.args(["--set", &format!("training.batch_size={batch}")]);
    cmd.args(extra);
    cmd
}

/// `coordinator launch --resume RUN_DIR` for a 2-worker run.
fn resume_cmd(run_dir: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_coordinator"));
    cmd.current_dir(repo())
        .args(["launch", "--nodes", "2", "--resume"])
        .arg(run_dir)
        .arg("--worker-bin")
        .arg(worker_bin());
    cmd
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn run(mut cmd: Command) -> Output {
    cmd.output().expect("run coordinator")
}

/// (step, train/loss) of every training row of a run's metrics.csv (its newest version).
fn losses(run_dir: &Path) -> Vec<(u64, f64)> {
    let path = run::versions::metrics_csv(run_dir);
    let text = std::fs::read_to_string(&path).expect("metrics.csv");
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap_or("").split(',').collect();
    let col = |name: &str| header.iter().position(|h| *h == name);
    let (Some(step), Some(loss)) = (col("step"), col("train/loss")) else {
        panic!("{}: no step and train/loss columns", path.display());
    };
    lines
        .filter_map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            let loss = f.get(loss)?.parse().ok()?;
            Some((f.get(step)?.parse().ok()?, loss))
        })
        .collect()
}

fn assert_same_curve(a: &[(u64, f64)], b: &[(u64, f64)], what: &str) {
    assert_eq!(
        a.len(),
        b.len(),
        "{what}: different step counts\n{a:?}\n{b:?}"
    );
    for ((sa, la), (sb, lb)) in a.iter().zip(b) {
        assert_eq!(sa, sb, "{what}");
        let rel = (la - lb).abs() / la.abs().max(1e-12);
        assert!(
            rel <= 1e-5,
            "{what}: step {sa}: {la} vs {lb} (relative {rel:.2e})"
        );
    }
}

#[test]
fn two_workers_train_and_follow_the_one_worker_curve() {
    let dir = scratch("equiv");
    let one = run(launch_cmd(&dir.join("one"), 1, 16, &["--max-steps", "8"]));
    assert!(
        one.status.success(),
        "1 worker failed:\n{}",
        text(&one.stderr)
    );
    let two = run(launch_cmd(&dir.join("two"), 2, 8, &["--max-steps", "8"]));
    let stderr = text(&two.stderr);
    assert!(two.status.success(), "2 workers failed:\n{stderr}");
    assert!(stderr.contains("all 2 workers registered"), "{stderr}");
    assert!(stderr.contains("finished after 8 steps"), "{stderr}");
    assert!(
        stderr.contains("all 2 replicas hold identical parameters"),
        "{stderr}"
    );
    let (a, b) = (losses(&dir.join("one")), losses(&dir.join("two")));
    assert_eq!(a.len(), 8, "{a:?}");
    assert_same_curve(&a, &b, "1 x 16 vs 2 x 8");
}

/// `--grad-reduce-dtype bf16`: gradients cross between workers as bf16 (TCP ring here, so
/// the wire format is really used); replicas stay identical, the curve stays within bf16's
/// reach of the fp32 one, and a resumed run keeps the dtype it was started with.
#[test]
fn bf16_gradient_all_reduce_trains_close_to_fp32_and_is_kept_on_resume() {
    let dir = scratch("bf16-reduce");
    let mut fp32 = launch_cmd(&dir.join("fp32"), 2, 8, &["--max-steps", "8"]);
    fp32.env("ANVIL_RING_SHM", "0");
    let fp32 = run(fp32);
    assert!(fp32.status.success(), "fp32:\n{}", text(&fp32.stderr));
    let mut bf16 = launch_cmd(
        &dir.join("bf16"),
        2,
        8,
        &["--max-steps", "8", "--grad-reduce-dtype", "bf16"],
    );
    bf16.env("ANVIL_RING_SHM", "0");
    let bf16 = run(bf16);
    let stderr = text(&bf16.stderr);
    assert!(bf16.status.success(), "bf16:\n{stderr}");
    assert!(stderr.contains("gradients averaged in bf16"), "{stderr}");
    assert!(
        stderr.contains("all 2 replicas hold identical parameters"),
        "{stderr}"
    );
    let (a, b) = (losses(&dir.join("fp32")), losses(&dir.join("bf16")));
    assert_eq!(a.len(), b.len(), "{a:?}\n{b:?}");
    for ((s, la), (_, lb)) in a.iter().zip(&b) {
        assert!(
            (la - lb).abs() <= 1e-3 * la.abs(),
            "step {s}: fp32 {la} vs bf16 {lb}"
        );
    }
    // The rounding is real: after the first update the curves part (slightly).
    assert_ne!(a, b, "bf16 all-reduce gave exactly the fp32 curve");
    let record = std::fs::read_to_string(dir.join("bf16/run.json")).unwrap();
    assert!(
        record.contains("\"grad_reduce_dtype\": \"bf16\""),
        "{record}"
    );

    // Stopped early and resumed without the flag, the run goes on in bf16.
    let part = dir.join("resumed");
    let first = run(launch_cmd(
        &part,
        2,
        8,
        &["--max-steps", "3", "--grad-reduce-dtype", "bf16"],
    ));
    assert!(first.status.success(), "{}", text(&first.stderr));
    let mut again = resume_cmd(&part);
    again.args(["--max-steps", "5"]);
    let again = run(again);
    let stderr = text(&again.stderr);
    assert!(again.status.success(), "{stderr}");
    assert!(stderr.contains("gradients averaged in bf16"), "{stderr}");

    // A dtype the ring does not have is refused by clap, naming the choices.
    let bad = run(launch_cmd(
        &dir.join("bad"),
        2,
        8,
        &["--grad-reduce-dtype", "fp8"],
    ));
    let stderr = text(&bad.stderr);
    assert!(!bad.status.success());
    assert!(
        stderr.contains("--grad-reduce-dtype") && stderr.contains("bf16"),
        "{stderr}"
    );
}

#[test]
fn four_workers_and_gradient_accumulation_follow_the_same_curve() {
    let dir = scratch("equiv4");
    let one = run(launch_cmd(&dir.join("one"), 1, 16, &["--max-steps", "5"]));
    assert!(one.status.success(), "{}", text(&one.stderr));
    let four = run(launch_cmd(&dir.join("four"), 4, 4, &["--max-steps", "5"]));
    assert!(four.status.success(), "{}", text(&four.stderr));
    let accum = run(launch_cmd(
        &dir.join("accum"),
        2,
        4,
        &[
            "--max-steps",
            "5",
            "--set",
            "training.gradient_accumulation=2",
        ],
    ));
    assert!(accum.status.success(), "{}", text(&accum.stderr));
    let base = losses(&dir.join("one"));
    assert_same_curve(&base, &losses(&dir.join("four")), "1 x 16 vs 4 x 4");
    assert_same_curve(&base, &losses(&dir.join("accum")), "1 x 16 vs 2 x (2 x 4)");
}

fn wait_for_step(run_dir: &Path, step: u64, limit: Duration) {
    let start = Instant::now();
    while start.elapsed() < limit {
        // metrics.csv appears once rank 0 starts training.
        if run::versions::metrics_csv(run_dir).exists()
            && losses(run_dir).iter().any(|(s, _)| *s >= step)
        {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("run in {} never reached step {step}", run_dir.display());
}

/// Worker pids of a run, from their registration lines in the coordinator's log... we read the
/// process table instead: children of `parent` named worker.
fn worker_pids(parent: u32) -> Vec<u32> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // pid (comm) state ppid ...
        let Some(close) = stat.rfind(')') else {
            continue;
        };
        let comm = &stat[stat.find('(').unwrap_or(0) + 1..close];
        let ppid: u32 = stat[close + 2..]
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        if ppid == parent && comm == "worker" {
            pids.push(pid);
        }
    }
    pids.sort();
    pids
}

fn spawn(mut cmd: Command) -> Child {
    cmd.stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn coordinator")
}

fn kill(pid: u32, signal: &str) {
    let ok = Command::new("kill")
        .args([signal, &pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill {signal} {pid}");
}

#[test]
fn a_killed_worker_is_replaced_and_the_run_ends_as_if_uninterrupted() {
    let dir = scratch("fault");
    // Checkpoint every epoch; the run is 2 epochs.
    let steps = ["--set", "training.max_epochs=3"];
    let clean = run(launch_cmd(&dir.join("clean"), 2, 8, &steps));
    assert!(clean.status.success(), "{}", text(&clean.stderr));

    let faulty = dir.join("faulty");
    let child = spawn(launch_cmd(&faulty, 2, 8, &steps));
    let coordinator = child.id();
    // Kill a worker in the second epoch, after the first epoch's checkpoint.
    let clean_curve = losses(&dir.join("clean"));
    let per_epoch = clean_curve.len() as u64 / 3;
    wait_for_step(&faulty, per_epoch + 2, Duration::from_secs(120));
    let pids = worker_pids(coordinator);
    assert_eq!(pids.len(), 2, "{pids:?}");
    kill(pids[1], "-KILL");
    let out = child.wait_with_output().unwrap();
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("lost worker rank"), "{stderr}");
    assert!(stderr.contains("restart 1/3"), "{stderr}");
    assert_same_curve(&clean_curve, &losses(&faulty), "uninterrupted vs restarted");
}

#[test]
fn sigterm_checkpoints_and_resume_continues_the_run() {
    let dir = scratch("preempt");
    let steps = ["--set", "training.max_epochs=3"];
    let clean = run(launch_cmd(&dir.join("clean"), 2, 8, &steps));
    assert!(clean.status.success(), "{}", text(&clean.stderr));
    let clean_curve = losses(&dir.join("clean"));

    let run_dir = dir.join("preempted");
    let child = spawn(launch_cmd(&run_dir, 2, 8, &steps));
    wait_for_step(&run_dir, 3, Duration::from_secs(120));
    kill(child.id(), "-TERM");
    let out = child.wait_with_output().unwrap();
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("coordinator launch --resume"), "{stderr}");

    let out = run(resume_cmd(&run_dir));
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_same_curve(
        &clean_curve,
        &losses(&run_dir),
        "uninterrupted vs preempted + resumed",
    );
}

#[test]
fn a_killed_coordinator_can_resume_its_run() {
    let dir = scratch("coordkill");
    let run_dir = dir.join("run");
    let child = spawn(launch_cmd(
        &run_dir,
        2,
        8,
        &["--set", "training.max_epochs=3"],
    ));
    // Past the first epoch's checkpoint (39 steps of 16 cells).
    wait_for_step(&run_dir, 45, Duration::from_secs(120));
    kill(child.id(), "-KILL");
    let _ = child.wait_with_output();
    // Orphaned workers notice the coordinator is gone and exit.
    let out = run(resume_cmd(&run_dir));
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("resuming from"), "{stderr}");
    assert!(stderr.contains("finished after"), "{stderr}");
}

#[test]
fn a_worker_that_cannot_read_its_data_brings_the_run_down_with_its_message() {
    let dir = scratch("baddata");
    let bad = dir.join("not-hdf5.h5ad");
    std::fs::write(&bad, b"this is not an HDF5 file").unwrap();
    let out = run(launch_cmd(
        &dir.join("run"),
        2,
        8,
        &["--set", &format!("data.paths=[{}]", bad.display())],
    ));
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("worker rank"), "{stderr}");
    assert!(
        stderr.contains("not-hdf5.h5ad"),
        "the worker's own message names the file: {stderr}"
    );
}

#[test]
fn a_section_this_build_cannot_train_is_refused_before_any_worker_starts() {
    let dir = scratch("finetune");
    let out = run(launch_cmd(
        &dir.join("run"),
        2,
        8,
        &[
            "--set",
            "finetune.label_key=cell_type",
            "--set",
            "finetune.checkpoint_path=checkpoints/last",
        ],
    ));
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("finetune.checkpoint_path: checkpoints/last does not exist"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("registered"),
        "no worker was started: {stderr}"
    );
    assert!(!dir.join("run/logs/worker-0.log").exists());

    // A finetune section without a checkpoint points to `coordinator finetune`.
    let out = run(launch_cmd(
        &dir.join("run-empty"),
        2,
        8,
        &["--set", "finetune.label_key=cell_type"],
    ));
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("finetune.checkpoint_path is empty")
            && stderr.contains("coordinator finetune --config X.yaml --checkpoint DIR"),
        "{stderr}"
    );
}

#[test]
fn a_diverging_run_stops_cleanly_with_the_workers_message() {
    let dir = scratch("diverge");
    let out = run(launch_cmd(
        &dir.join("run"),
        2,
        8,
        &[
            "--set",
            "training.optimizer.lr=1e35",
            "--set",
            "training.scheduler=null",
            "--set",
            "training.gradient_clip=0.0",
        ],
    ));
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("worker rank"), "{stderr}");
    assert!(stderr.contains("training diverged"), "{stderr}");
    assert!(
        !stderr.contains("restart 1/"),
        "a diverged run is not restarted: {stderr}"
    );
}

#[test]
fn registration_timeout_names_the_ranks_that_never_arrived() {
    let dir = scratch("regtimeout");
    let mut cmd = launch_cmd(
        &dir.join("run"),
        2,
        8,
        &["--external", "--register-timeout", "2"],
    );
    cmd.args(["--listen", "127.0.0.1:0"]);
    let out = run(cmd);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("ranks that never arrived: [0, 1]"),
        "{stderr}"
    );
}

#[test]
fn a_worker_with_the_wrong_token_is_refused() {
    let dir = scratch("token");
    let mut cmd = launch_cmd(
        &dir.join("run"),
        1,
        8,
        &["--external", "--register-timeout", "5"],
    );
    cmd.args(["--listen", "127.0.0.1:47311"]);
    let coordinator = spawn(cmd);
    std::thread::sleep(Duration::from_millis(1500));
    let out = Command::new(worker_bin())
        .args(["--coordinator", "127.0.0.1:47311"])
        .env("ANVIL_RUN_TOKEN", "not-the-token")
        .output()
        .unwrap();
    let stderr = text(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("wrong run token"), "{stderr}");
    let _ = coordinator.wait_with_output();
}

#[test]
fn a_checkpoint_cut_short_is_never_chosen_for_resume() {
    let dir = scratch("cutshort");
    let run_dir = dir.join("run");
    let out = run(launch_cmd(
        &run_dir,
        2,
        8,
        &["--set", "training.save_top_k=3"],
    ));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let ckpts = run_dir.join("checkpoints");
    let mut names: Vec<String> = std::fs::read_dir(&ckpts)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    // Two epochs: epoch=0-..., epoch=1-..., last. Damage every checkpoint of the final step
    // as a kill mid-write would (a truncated file), and leave a half-written temporary one.
    let first = names
        .iter()
        .find(|n| n.starts_with("epoch=0"))
        .expect("epoch 0 checkpoint")
        .clone();
    for n in names.iter().filter(|n| **n != first) {
        let model = ckpts.join(n).join("model.safetensors");
        let bytes = std::fs::read(&model).unwrap();
        std::fs::write(&model, &bytes[..bytes.len() / 2]).unwrap();
    }
    std::fs::create_dir_all(ckpts.join(".tmp-epoch=1-step=999")).unwrap();

    let out = run(resume_cmd(&run_dir));
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!("resuming from {}", ckpts.join(&first).display())),
        "{stderr}"
    );
}

#[test]
fn a_second_sigterm_stops_at_once_and_the_run_stays_resumable() {
    let dir = scratch("twice");
    let run_dir = dir.join("run");
    let child = spawn(launch_cmd(
        &run_dir,
        2,
        8,
        &["--set", "training.max_epochs=3"],
    ));
    // Two signals sent back to back can merge into one pending signal; the second is sent once
    // the coordinator has said it handled the first, as a user's second Ctrl-C would be.
    let mut child = child;
    let (seen, saw_first) = std::sync::mpsc::channel();
    let log = child.stderr.take().expect("piped stderr");
    let reader = std::thread::spawn(move || {
        use std::io::BufRead;
        let mut all = String::new();
        for line in std::io::BufReader::new(log).lines().map_while(Result::ok) {
            if line.contains("SIGTERM") {
                let _ = seen.send(());
            }
            all.push_str(&line);
            all.push('\n');
        }
        all
    });
    wait_for_step(&run_dir, 45, Duration::from_secs(120));
    kill(child.id(), "-TERM");
    saw_first
        .recv_timeout(Duration::from_secs(60))
        .expect("the coordinator reports the first SIGTERM");
    kill(child.id(), "-TERM");
    let status = child.wait().unwrap();
    let stderr = reader.join().unwrap();
    assert_eq!(status.code(), Some(130), "{stderr}");
    assert!(stderr.contains("coordinator launch --resume"), "{stderr}");
    let out = run(resume_cmd(&run_dir));
    assert!(out.status.success(), "{}", text(&out.stderr));
}

#[test]
fn tls_control_plane_trains_and_refuses_plain_workers() {
    let dir = scratch("tls");
    let (ca, cert, key) = common::make_certificates(&dir);
    let tls = |cmd: &mut Command| {
        cmd.arg("--tls-cert")
            .arg(&cert)
            .arg("--tls-key")
            .arg(&key)
            .arg("--tls-ca")
            .arg(&ca);
    };
    // Local workers get the CA and check the name localhost.
    let mut cmd = launch_cmd(&dir.join("run"), 2, 8, &["--max-steps", "3"]);
    tls(&mut cmd);
    let out = run(cmd);
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("finished after 3 steps"), "{stderr}");

    // A worker that does not speak TLS, or trusts another CA, is not admitted.
    let mut cmd = launch_cmd(
        &dir.join("ext"),
        1,
        8,
        &["--external", "--register-timeout", "6"],
    );
    cmd.args(["--listen", "127.0.0.1:47313"]);
    tls(&mut cmd);
    let coordinator = spawn(cmd);
    std::thread::sleep(Duration::from_millis(1500));
    let token = std::fs::read_to_string(dir.join("ext").join("token")).expect("token file");
    let plain = Command::new(worker_bin())
        .args(["--coordinator", "127.0.0.1:47313"])
        .env("ANVIL_RUN_TOKEN", token.trim())
        .output()
        .unwrap();
    let stderr = text(&plain.stderr);
    assert!(!plain.status.success());
    assert!(stderr.contains("--tls-ca"), "{stderr}");
    let untrusted = Command::new(worker_bin())
        .args(["--coordinator", "localhost:47313", "--tls-ca"])
        .arg(&cert) // the server certificate is not a CA
        .env("ANVIL_RUN_TOKEN", token.trim())
        .output()
        .unwrap();
    let stderr = text(&untrusted.stderr);
    assert!(!untrusted.status.success());
    assert!(stderr.contains("cannot reach the coordinator"), "{stderr}");
    let _ = coordinator.wait_with_output();
}
