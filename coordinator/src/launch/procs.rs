//! Locally started worker processes: finding the executable, starting one per rank with its
//! output in the run's log, watching it exit, and stopping them.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;
use tokio::sync::mpsc;

use crate::tls::TlsSettings;

/// The last lines a worker printed, shown when it is lost.
pub type LastWords = Arc<Mutex<VecDeque<String>>>;

/// How many of a worker's last lines are kept.
const LAST_WORDS: usize = 20;

/// Runs a `worker` subcommand for a coordinator command that does no compute itself
/// (`embed`, `benchmark`, `track`): its output goes straight to the user, its exit status
/// becomes ours.
pub fn run_worker_verb(
    bin: &std::path::Path,
    verb: &str,
    cmd: &mut std::process::Command,
) -> anyhow::Result<std::process::ExitCode> {
    use std::process::ExitCode;
    let status = cmd
        .status()
        .with_context(|| format!("cannot run {}", bin.display()))?;
    Ok(match status.code() {
        Some(0) => ExitCode::SUCCESS,
        Some(c) => ExitCode::from(u8::try_from(c).unwrap_or(1)),
        None => {
            eprintln!("error: {} {verb} was killed ({status})", bin.display());
            ExitCode::FAILURE
        }
    })
}

/// Runs `n` copies of a `worker` subcommand on this machine at once, each built by
/// `command(rank)`, sharing the cores as launched workers do; waits for all of them. Their
/// output goes straight to the user. The first to fail stops the others and is the error.
pub fn run_worker_group(
    bin: &Path,
    verb: &str,
    n: usize,
    command: impl Fn(usize) -> std::process::Command,
) -> anyhow::Result<()> {
    let cores = std::thread::available_parallelism().map_or(1, |c| c.get());
    let mut children = Vec::with_capacity(n);
    for rank in 0..n {
        let mut cmd = command(rank);
        if std::env::var_os("RAYON_NUM_THREADS").is_none() {
            cmd.env("RAYON_NUM_THREADS", (cores / n.max(1)).max(1).to_string());
        }
        let child = cmd
            .stdin(Stdio::null())
            .spawn()
            .with_context(|| format!("cannot run {}", bin.display()));
        match child {
            Ok(c) => children.push(Some(c)),
            Err(e) => {
                stop_all(&mut children);
                return Err(e);
            }
        }
    }
    let mut left = n;
    while left > 0 {
        for rank in 0..n {
            let Some(child) = children[rank].as_mut() else {
                continue;
            };
            let status = match child.try_wait() {
                Ok(Some(status)) => status,
                Ok(None) => continue,
                Err(e) => {
                    stop_all(&mut children);
                    bail!("waiting for {verb} worker {rank} of {n}: {e}");
                }
            };
            children[rank] = None;
            left -= 1;
            if !status.success() {
                stop_all(&mut children);
                bail!("{verb} worker {rank} of {n} failed ({status}); see its error above");
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// Kills and reaps the children still running.
fn stop_all(children: &mut [Option<std::process::Child>]) {
    for c in children.iter_mut().filter_map(Option::take) {
        let mut c = c;
        let _ = c.kill();
        let _ = c.wait();
    }
}

/// The executable `name` beside this one.
pub fn sibling_executable(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("cannot locate the coordinator executable")?;
    let dir = exe
        .parent()
        .ok_or_else(|| anyhow!("executable has no directory"))?;
    // Test binaries live one level down (target/<profile>/deps).
    for candidate in [dir.join(name), dir.join("..").join(name)] {
        if candidate.exists() {
            return Ok(candidate);
        }
    }
    bail!(
        "cannot find the `{name}` executable beside {}; build it (cargo build --release -p worker) \
         or pass --worker-bin",
        exe.display()
    )
}

/// What every locally started worker of one generation is started with.
pub struct WorkerCommand<'a> {
    pub bin: &'a Path,
    /// The coordinator's address.
    pub addr: SocketAddr,
    pub token: &'a str,
    pub tls: Option<&'a TlsSettings>,
    /// Workers started on this machine (they share its cores).
    pub local_workers: usize,
    pub generation: u32,
}

impl WorkerCommand<'_> {
    /// Starts the worker of `rank`: its output goes to `log_path` (and its last lines to
    /// `last_words`), its exit to `exits`.
    pub fn spawn(
        &self,
        rank: usize,
        log_path: PathBuf,
        last_words: LastWords,
        exits: mpsc::UnboundedSender<(usize, String)>,
    ) -> anyhow::Result<WorkerProc> {
        let mut cmd = Command::new(self.bin);
        cmd.arg("--coordinator")
            .arg(self.addr.to_string())
            .arg("--rank")
            .arg(rank.to_string());
        if let Some(t) = self.tls {
            cmd.arg("--tls-ca")
                .arg(&t.ca_path)
                .arg("--tls-domain")
                .arg(&t.domain);
        }
        // Like torchrun's OMP_NUM_THREADS: local workers share the machine's cores instead of
        // each starting one compute thread per core (which oversubscribes them). The user's
        // setting wins.
        if std::env::var_os("RAYON_NUM_THREADS").is_none() {
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
            cmd.env(
                "RAYON_NUM_THREADS",
                (cores / self.local_workers.max(1)).max(1).to_string(),
            );
        }
        let mut child = cmd
            .env("ANVIL_RUN_TOKEN", self.token)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start worker {}", self.bin.display()))?;
        let output = (child.stdout.take(), child.stderr.take());
        tokio::spawn(keep_output(output, log_path, self.generation, last_words));
        // Watch the process: report its exit, or kill it when asked.
        let (kill_tx, kill_rx) = tokio::sync::oneshot::channel::<()>();
        let done = tokio::spawn(async move {
            tokio::select! {
                status = child.wait() => {
                    let status = status.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string());
                    let _ = exits.send((rank, status));
                }
                _ = kill_rx => {
                    let _ = child.start_kill();
                    let _ = child.wait().await;
                }
            }
        });
        Ok(WorkerProc {
            kill: Some(kill_tx),
            done: Some(done),
        })
    }
}

/// Appends a worker's stdout and stderr to its log, line by line, under a generation header.
async fn keep_output(
    output: (
        Option<tokio::process::ChildStdout>,
        Option<tokio::process::ChildStderr>,
    ),
    log_path: PathBuf,
    generation: u32,
    last_words: LastWords,
) {
    let mut log = tokio::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .await
        .ok();
    let header = format!("--- generation {generation} ---\n");
    if let Some(f) = log.as_mut() {
        let _ = tokio::io::AsyncWriteExt::write_all(f, header.as_bytes()).await;
    }
    let (Some(stdout), Some(stderr)) = output else {
        return;
    };
    let mut lines = tokio_stream::StreamExt::merge(
        tokio_stream::wrappers::LinesStream::new(BufReader::new(stdout).lines()),
        tokio_stream::wrappers::LinesStream::new(BufReader::new(stderr).lines()),
    );
    while let Some(Ok(line)) = tokio_stream::StreamExt::next(&mut lines).await {
        if let Some(f) = log.as_mut() {
            let _ = tokio::io::AsyncWriteExt::write_all(f, format!("{line}\n").as_bytes()).await;
        }
        if let Ok(mut w) = last_words.lock() {
            if w.len() == LAST_WORDS {
                w.pop_front();
            }
            w.push_back(line);
        }
    }
}

/// A locally started worker process, watched by a task of its own.
pub struct WorkerProc {
    kill: Option<tokio::sync::oneshot::Sender<()>>,
    done: Option<tokio::task::JoinHandle<()>>,
}

/// Kills the processes and waits until they are gone.
pub async fn kill_all(procs: &mut [WorkerProc]) {
    for p in procs.iter_mut() {
        if let Some(k) = p.kill.take() {
            let _ = k.send(());
        }
    }
    for p in procs.iter_mut() {
        if let Some(done) = p.done.take() {
            let _ = done.await;
        }
    }
}

/// Waits for the processes to exit by themselves, up to `limit`.
pub async fn wait_all(procs: &mut [WorkerProc], limit: Duration) {
    let _ = tokio::time::timeout(limit, async {
        for p in procs.iter_mut() {
            if let Some(done) = p.done.as_mut() {
                let _ = done.await;
                p.done = None;
            }
        }
    })
    .await;
}
