//! Work other than training on workers started elsewhere (Slurm, Kubernetes, by hand): the
//! coordinator serves the same registration as a training run, hands every worker one command
//! (its share of `embed`, say), and waits until each reports it done. A worker that fails,
//! goes silent or never registers ends the group with an error naming its rank.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::bail;
use proto::v1::worker_message::Body;

use super::control::{advertised, serve_hub};
use super::open::read_token_file;
use crate::server::{Assignment, Event, Hub};
use crate::tls::{TlsArgs, TlsSettings};

/// How to reach the external workers, from `--external`, `--listen`, `--token-file`,
/// `--register-timeout`, `--heartbeat-timeout`.
#[derive(Debug, Clone)]
pub struct ExternalWorkers {
    pub listen: String,
    /// `--tls-cert`/`--tls-key`: serve the registration over TLS (workers pass `--tls-ca`).
    pub tls: TlsArgs,
    /// The run token workers must present; written here when not given.
    pub token_file: Option<PathBuf>,
    pub register_timeout: Duration,
    pub heartbeat_timeout: Duration,
}

/// Runs `task` (a `worker` command line without the program name; each worker adds
/// `--part RANK/WORLD`) on `world` external workers, `what` naming it in messages. The token
/// goes to `token_file` (or `fallback_token_file` when none was given).
pub fn run_on_external_workers(
    what: &str,
    world: usize,
    task: Vec<String>,
    external: &ExternalWorkers,
    fallback_token_file: PathBuf,
) -> anyhow::Result<()> {
    // Certificate problems are reported before anything is written.
    let tls = TlsSettings::from_args(&external.tls)?;
    let (token, token_file) = match &external.token_file {
        Some(f) => (read_token_file(f)?, f.clone()),
        None => (
            run::dir::new_token_file(&fallback_token_file)?,
            fallback_token_file,
        ),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let result = runtime.block_on(supervise(
        what,
        world,
        task,
        external,
        tls.as_ref(),
        token,
        token_file,
    ));
    // Closes the sessions, so the workers exit.
    runtime.shutdown_timeout(Duration::from_secs(1));
    result
}

async fn supervise(
    what: &str,
    world: usize,
    task: Vec<String>,
    external: &ExternalWorkers,
    tls: Option<&TlsSettings>,
    token: String,
    token_file: PathBuf,
) -> anyhow::Result<()> {
    let assignment = Assignment {
        run_id: what.to_string(),
        world,
        task,
        ..Assignment::default()
    };
    let (hub, mut events): (Hub, _) = Hub::new(token, assignment, external.register_timeout);
    let addr = serve_hub(&external.listen, hub.clone(), tls).await?;
    let tls_arg = tls
        .map(|t| format!(" --tls-ca {}", t.ca_path.display()))
        .unwrap_or_default();
    eprintln!(
        "anvil: {what}: waiting for {world} external worker(s) on {addr}; start each with\n  \
         ANVIL_RUN_TOKEN=$(cat {}) worker --coordinator {}{tls_arg}",
        token_file.display(),
        advertised(addr)
    );
    let started = Instant::now();
    let mut last_seen: Vec<Option<Instant>> = vec![None; world];
    let mut hosts = vec![String::new(); world];
    let mut done = vec![false; world];
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    loop {
        tokio::select! {
            ev = events.recv() => match ev {
                None => bail!("{what}: the coordinator's gRPC server stopped"),
                Some(Event::Registered { rank, host, pid, .. }) => {
                    last_seen[rank] = Some(Instant::now());
                    eprintln!("anvil: {what}: worker rank {rank} registered from {host} (pid {pid})");
                    hosts[rank] = host;
                }
                Some(Event::Message(m)) => {
                    let rank = m.rank as usize;
                    if rank >= world {
                        continue;
                    }
                    last_seen[rank] = Some(Instant::now());
                    match m.body {
                        Some(Body::Finished(_)) => {
                            done[rank] = true;
                            eprintln!("anvil: {what}: worker rank {rank} done");
                            if done.iter().all(|&d| d) {
                                return Ok(());
                            }
                        }
                        Some(Body::Failed(f)) => bail!(
                            "{what}: worker rank {rank} on {} failed: {}",
                            hosts[rank],
                            f.message
                        ),
                        Some(Body::Log(l)) => eprintln!("[rank {rank}] {}", l.message),
                        _ => {}
                    }
                }
                Some(Event::SessionClosed { rank, .. }) if rank < world && !done[rank] => bail!(
                    "{what}: worker rank {rank} on {} closed its session before finishing",
                    hosts[rank]
                ),
                Some(_) => {}
            },
            _ = tick.tick() => {
                let missing = hub.missing_ranks();
                if !missing.is_empty() && started.elapsed() > external.register_timeout {
                    bail!(
                        "{what}: rank(s) {missing:?} did not register within {:?}",
                        external.register_timeout
                    );
                }
                for rank in 0..world {
                    if let (Some(t), false) = (last_seen[rank], done[rank]) {
                        if t.elapsed() > external.heartbeat_timeout {
                            bail!(
                                "{what}: worker rank {rank} on {} sent nothing for {:?} (lost)",
                                hosts[rank],
                                external.heartbeat_timeout
                            );
                        }
                    }
                }
            }
        }
    }
}
