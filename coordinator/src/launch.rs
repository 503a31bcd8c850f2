//! `coordinator launch`: plan a run, start or admit its workers, supervise them, restart the group
//! from the last complete checkpoint when a worker is lost, and report.

use std::collections::VecDeque;
use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use clap::Args;
use configs::{ConfigRoot, ScModelForgeConfig};
use proto::v1::coordinator_server::CoordinatorServer;
use proto::v1::{coordinator_message, worker_message, CheckpointAndStop, CoordinatorMessage, Stop};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;
use tokio::sync::mpsc;

use crate::run_dir::{truncate_metrics_after, RunDir, RunRecord};
use crate::server::{Assignment, Event, Hub};

#[derive(Args, Debug)]
pub struct LaunchArgs {
    /// scModelForge YAML config to train (not needed with --resume)
    #[arg(
        long,
        short = 'c',
        value_name = "FILE",
        required_unless_present = "resume"
    )]
    pub config: Option<PathBuf>,

    /// Override one config field, typed and validated like the file (repeatable)
    #[arg(long = "set", value_name = "KEY.PATH=VALUE")]
    pub overrides: Vec<String>,

    /// Number of nodes (machines) in the run
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub nodes: usize,

    /// Workers per node (one per GPU on GPU nodes)
    #[arg(long, default_value_t = 1, value_name = "K")]
    pub workers_per_node: usize,

    /// Do not start workers; wait for N x K workers started elsewhere (Slurm, Kubernetes, by
    /// hand) to register with `worker --coordinator HOST:PORT`. Implied under Slurm/Kubernetes.
    #[arg(long)]
    pub external: bool,

    /// Start workers locally even when running under Slurm or Kubernetes
    #[arg(long, conflicts_with = "external")]
    pub local: bool,

    /// Address the coordinator listens on for workers [default: 127.0.0.1:0 for local
    /// workers, 0.0.0.0:50051 for external ones]
    #[arg(long, value_name = "HOST:PORT")]
    pub listen: Option<String>,

    /// Directory of the run: resolved config, token, metrics.csv, logs, checkpoints
    /// [default: runs/<run_name>]
    #[arg(long, value_name = "DIR")]
    pub run_dir: Option<PathBuf>,

    /// Continue the run in RUN_DIR (after the coordinator was stopped or killed) from its last
    /// complete checkpoint
    #[arg(long, value_name = "RUN_DIR", conflicts_with = "config")]
    pub resume: Option<PathBuf>,

    /// Seconds without a heartbeat after which a worker counts as lost
    #[arg(long, default_value_t = 5.0, value_name = "SECS")]
    pub heartbeat_timeout: f64,

    /// Seconds to wait for every worker to register
    #[arg(long, default_value_t = 120.0, value_name = "SECS")]
    pub register_timeout: f64,

    /// Group restarts from the last complete checkpoint before giving up
    #[arg(long, default_value_t = 3, value_name = "N")]
    pub max_restarts: u32,

    /// Stop after this many optimizer steps (for smoke tests)
    #[arg(long, value_name = "N")]
    pub max_steps: Option<u64>,

    /// Serve the control plane over TLS with this certificate chain (PEM); needs --tls-key.
    /// Workers then connect with `--tls-ca`
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// Private key (PEM) of --tls-cert
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// CA certificate (PEM) that locally started workers trust [default: --tls-cert itself,
    /// right for a self-signed certificate]
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_ca: Option<PathBuf>,

    /// Name in the certificate that locally started workers check [default: localhost]
    #[arg(long, value_name = "NAME", requires = "tls_cert")]
    pub tls_domain: Option<String>,

    /// The worker executable [default: `worker` beside this executable]
    #[arg(long, value_name = "PATH", hide = true)]
    pub worker_bin: Option<PathBuf>,
}

pub fn run(args: LaunchArgs) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(launch(args)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// How one generation of workers ended.
enum GenerationEnd {
    Finished,
    Preempted,
    /// A worker died or went silent: restart the group.
    Lost {
        rank: usize,
        why: String,
    },
    /// A worker reported an error of its own (bad data, diverged): stop the run.
    Failed {
        rank: usize,
        message: String,
    },
    /// The user insisted (second signal).
    Aborted,
}

struct WorkerView {
    last_seen: Instant,
    /// It reported losing a peer; its own exit is not the cause.
    peer_lost: bool,
    finished: Option<proto::v1::Finished>,
    host: String,
    last_words: std::sync::Arc<std::sync::Mutex<VecDeque<String>>>,
}

async fn launch(args: LaunchArgs) -> anyhow::Result<ExitCode> {
    let world = args.nodes * args.workers_per_node;
    if world == 0 {
        bail!("--nodes and --workers-per-node must be at least 1");
    }
    let scheduler = detect_scheduler();
    let external = args.external || (scheduler.is_some() && !args.local);

    // The run: fresh from a config, or continued from its directory.
    let (cfg, run, mut record) = match &args.resume {
        Some(dir) => {
            let run = RunDir::open(dir)?;
            let record = run.read_record()?;
            let cfg: ScModelForgeConfig =
                configs::load_file_as(&run.config_path(), &[]).map_err(|e| anyhow!("{e}"))?;
            if record.world != world && (args.nodes, args.workers_per_node) != (1, 1) {
                bail!(
                    "{} was started with {} workers; resume it with the same number (got {world})",
                    dir.display(),
                    record.world
                );
            }
            (cfg, run, record)
        }
        None => {
            let path = args
                .config
                .as_ref()
                .ok_or_else(|| anyhow!("--config is required"))?;
            let loaded = configs::load_file(path, &args.overrides).map_err(|e| anyhow!("{e}"))?;
            let cfg = match loaded {
                configs::AnyConfig::ScModelForge(c) => c,
                configs::AnyConfig::SleapNn(_) => bail!(
                    "{} is a sleap-nn config; anvil validates it (coordinator config validate) \
                     but training pose models is not available yet",
                    path.display()
                ),
            };
            let run_name = worker::train::run_name(&cfg);
            let dir = match &args.run_dir {
                Some(d) if d.join("run.json").exists() => bail!(
                    "{} already holds a run; continue it with --resume {0}, or choose another --run-dir",
                    d.display()
                ),
                Some(d) => d.clone(),
                // Like Lightning's version_N: a new run never writes into an old one.
                None => (1..)
                    .map(|i| match i {
                        1 => PathBuf::from("runs").join(&run_name),
                        i => PathBuf::from("runs").join(format!("{run_name}-{i}")),
                    })
                    .find(|d| !d.join("run.json").exists())
                    .unwrap_or_else(|| PathBuf::from("runs").join(&run_name)),
            };
            let run = RunDir::create(&dir, &cfg.to_yaml())?;
            let record = RunRecord {
                run_id: run_name,
                world,
                generation: 0,
                restarts: 0,
                status: "starting".into(),
            };
            run.write_record(&record)?;
            (cfg, run, record)
        }
    };
    let world = record.world;
    let token = run.token()?;
    plan(&cfg, world)?;

    // The control plane.
    let listen = args.listen.clone().unwrap_or_else(|| {
        if external {
            "0.0.0.0:50051"
        } else {
            "127.0.0.1:0"
        }
        .to_string()
    });
    let listener = tokio::net::TcpListener::bind(&listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    let addr = listener.local_addr()?;
    let resume_from = match &args.resume {
        Some(_) => latest_checkpoint(&cfg, &run.path)
            .map(|p| p.display().to_string())
            .unwrap_or_default(),
        None => String::new(),
    };
    let assignment = Assignment {
        run_id: record.run_id.clone(),
        world,
        generation: record.generation,
        run_dir: absolute(&run.path).display().to_string(),
        config_yaml: cfg.to_yaml(),
        resume_from: resume_from.clone(),
        max_steps: args.max_steps.unwrap_or(0),
    };
    let (hub, mut events) = Hub::new(
        token.clone(),
        assignment,
        Duration::from_secs_f64(args.register_timeout),
    );
    let service = CoordinatorServer::new(hub.clone());
    let tls = tls_settings(&args)?;
    let mut server = tonic::transport::Server::builder();
    if let Some(t) = &tls {
        server = server
            .tls_config(t.server.clone())
            .map_err(|e| anyhow!("--tls-cert/--tls-key: {}", worker::join::error_chain(&e)))?;
    }
    tokio::spawn(async move {
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        if let Err(e) = server
            .add_service(service)
            .serve_with_incoming(incoming)
            .await
        {
            eprintln!("error: the coordinator's gRPC server stopped: {e}");
        }
    });

    eprintln!(
        "anvil: run {} with {world} worker(s), run dir {}, coordinator on {addr}",
        record.run_id,
        run.path.display()
    );
    if args.resume.is_some() {
        // Rows after the checkpoint are trained again; without a checkpoint, all of them.
        let step = checkpoint_step(Path::new(&resume_from)).unwrap_or(0);
        truncate_metrics_after(&run.metrics_path(), step)?;
        match resume_from.is_empty() {
            false => eprintln!("anvil: resuming from {resume_from}"),
            true => eprintln!("anvil: no complete checkpoint in the run yet; starting it over"),
        }
    }
    if external {
        let why = scheduler
            .map(|s| format!(" ({s} detected)"))
            .unwrap_or_default();
        let tls_arg = tls
            .as_ref()
            .map(|t| format!(" --tls-ca {}", t.ca_path.display()))
            .unwrap_or_default();
        eprintln!(
            "anvil: waiting for {world} external worker(s){why}; start each with\n  \
             ANVIL_RUN_TOKEN=$(cat {}) worker --coordinator {}{tls_arg}",
            run.token_path().display(),
            advertised(addr)
        );
    }

    let mut signals = Signals::new()?;
    let started = Instant::now();
    let mut progress = Progress::new(world);
    let heartbeat_timeout = Duration::from_secs_f64(args.heartbeat_timeout);
    let worker_bin = match &args.worker_bin {
        Some(p) => p.clone(),
        None => sibling_executable("worker")?,
    };

    loop {
        record.status = "running".into();
        run.write_record(&record)?;
        let generation = record.generation;
        let (exit_tx, mut exits) = mpsc::unbounded_channel::<(usize, String)>();
        let mut views: Vec<WorkerView> = (0..world)
            .map(|_| WorkerView {
                last_seen: Instant::now(),
                peer_lost: false,
                finished: None,
                host: String::new(),
                last_words: Default::default(),
            })
            .collect();
        let mut children: Vec<WorkerProc> = Vec::new();
        if !external {
            for (rank, view) in views.iter().enumerate() {
                let child = spawn_worker(
                    &worker_bin,
                    addr,
                    rank,
                    &token,
                    tls.as_ref(),
                    world,
                    &run,
                    generation,
                    view,
                    exit_tx.clone(),
                )?;
                children.push(child);
            }
        }
        drop(exit_tx);
        let registration_deadline = Instant::now() + Duration::from_secs_f64(args.register_timeout);
        let mut all_registered = false;
        let mut preempting = false;
        let mut tick = tokio::time::interval(Duration::from_millis(250));

        let end = loop {
            tokio::select! {
                Some(event) = events.recv() => match event {
                    Event::Registered { rank, generation: g, host, pid } if g == generation => {
                        views[rank].last_seen = Instant::now();
                        views[rank].host = host.clone();
                        progress.log(&format!("worker rank {rank} registered from {host} (pid {pid})"));
                        if hub.missing_ranks().is_empty() && !all_registered {
                            all_registered = true;
                            for v in views.iter_mut() { v.last_seen = Instant::now(); }
                            progress.log(&format!("all {world} workers registered; training"));
                        }
                    }
                    Event::Registered { .. } => {}
                    Event::Message(m) if m.generation == generation => {
                        let rank = m.rank as usize;
                        if rank >= world { continue; }
                        views[rank].last_seen = Instant::now();
                        match m.body {
                            Some(worker_message::Body::Step(s)) => {
                                if rank == 0 {
                                    progress.step(&s, world - count_lost(&views, heartbeat_timeout));
                                }
                            }
                            Some(worker_message::Body::Validation(v)) => {
                                if rank == 0 {
                                    progress.log(&format!("epoch {} validation loss {:.4}", v.epoch, v.loss));
                                }
                            }
                            Some(worker_message::Body::Checkpoint(c)) => {
                                progress.log(&format!("checkpoint at step {}: {}", c.step, c.path));
                            }
                            Some(worker_message::Body::Log(l)) => {
                                if rank == 0 { progress.log(&format!("[rank {rank}] {}", l.message)); }
                            }
                            Some(worker_message::Body::Finished(f)) => {
                                views[rank].finished = Some(f);
                                if views.iter().all(|v| v.finished.is_some()) {
                                    break if preempting { GenerationEnd::Preempted } else { GenerationEnd::Finished };
                                }
                            }
                            Some(worker_message::Body::Failed(f)) if f.peer_lost => {
                                // Collateral of another worker's loss: find that one.
                                views[rank].peer_lost = true;
                            }
                            Some(worker_message::Body::Failed(f)) => {
                                break GenerationEnd::Failed { rank, message: f.message };
                            }
                            Some(worker_message::Body::Hello(_)) | Some(worker_message::Body::Heartbeat(_)) | None => {}
                        }
                    }
                    Event::Message(_) => {}
                    Event::SessionClosed { rank, generation: g } if g == generation => {
                        if views[rank].finished.is_none() {
                            break GenerationEnd::Lost { rank, why: "its session with the coordinator closed".into() };
                        }
                    }
                    Event::SessionClosed { .. } => {}
                },
                Some((rank, status)) = exits.recv() => {
                    if views[rank].finished.is_none() && !views[rank].peer_lost {
                        // Give a reported failure a moment to arrive before calling it a loss.
                        tokio::time::sleep(Duration::from_millis(300)).await;
                        let mut failed = None;
                        while let Ok(ev) = events.try_recv() {
                            if let Event::Message(m) = ev {
                                match m.body {
                                    Some(worker_message::Body::Failed(f)) if f.peer_lost => {
                                        if let Some(v) = views.get_mut(m.rank as usize) {
                                            v.peer_lost = true;
                                        }
                                    }
                                    Some(worker_message::Body::Failed(f)) => {
                                        failed = Some((m.rank as usize, f.message));
                                    }
                                    _ => {}
                                }
                            }
                        }
                        break match failed {
                            Some((rank, message)) => GenerationEnd::Failed { rank, message },
                            None => GenerationEnd::Lost { rank, why: format!("the process exited ({status})") },
                        };
                    }
                }
                _ = tick.tick() => {
                    if !all_registered {
                        if Instant::now() > registration_deadline {
                            let missing = hub.missing_ranks();
                            kill_all(&mut children).await;
                            bail!("not every worker registered within {:.0}s; ranks that never arrived: {missing:?}", args.register_timeout);
                        }
                    } else if let Some(rank) = (0..world).find(|r| views[*r].finished.is_none() && views[*r].last_seen.elapsed() > heartbeat_timeout) {
                        break GenerationEnd::Lost { rank, why: format!("no heartbeat for {:.1}s", views[rank].last_seen.elapsed().as_secs_f64()) };
                    }
                    progress.redraw(started);
                }
                signal = signals.next() => {
                    if preempting {
                        progress.log("second signal: stopping workers now");
                        break GenerationEnd::Aborted;
                    }
                    preempting = true;
                    progress.log(&format!("{signal}: asking workers to checkpoint and stop (send again to stop at once)"));
                    hub.broadcast(CoordinatorMessage { body: Some(coordinator_message::Body::CheckpointAndStop(CheckpointAndStop {})) });
                }
            }
        };
        progress.clear();

        match end {
            GenerationEnd::Finished | GenerationEnd::Preempted => {
                wait_all(&mut children, Duration::from_secs(10)).await;
                let preempted = matches!(end, GenerationEnd::Preempted);
                record.status = if preempted { "preempted" } else { "finished" }.into();
                run.write_record(&record)?;
                let finished: Vec<_> = views.iter().filter_map(|v| v.finished.clone()).collect();
                summary(
                    &run,
                    &cfg,
                    &finished,
                    started.elapsed(),
                    &progress,
                    preempted,
                );
                let hashes: Vec<&str> = finished.iter().map(|f| f.params_hash.as_str()).collect();
                if hashes.is_empty() || hashes.iter().any(|h| h.is_empty() || *h != hashes[0]) {
                    eprintln!(
                        "error: model replicas diverged: parameter hashes per rank {hashes:?}"
                    );
                    return Ok(ExitCode::FAILURE);
                }
                eprintln!(
                    "anvil: all {} replicas hold identical parameters (sha256 {})",
                    hashes.len(),
                    &hashes[0][..hashes[0].len().min(16)]
                );
                return Ok(ExitCode::SUCCESS);
            }
            GenerationEnd::Aborted => {
                kill_all(&mut children).await;
                record.status = "aborted".into();
                run.write_record(&record)?;
                eprintln!(
                    "anvil: stopped. Checkpoints already written are intact; continue with\n  coordinator launch --resume {}",
                    run.path.display()
                );
                return Ok(ExitCode::from(130));
            }
            GenerationEnd::Failed { rank, message } => {
                hub.broadcast(CoordinatorMessage {
                    body: Some(coordinator_message::Body::Stop(Stop {
                        reason: format!("rank {rank} failed"),
                    })),
                });
                wait_all(&mut children, Duration::from_secs(5)).await;
                kill_all(&mut children).await;
                record.status = "failed".into();
                run.write_record(&record)?;
                let host = hub.host_of(rank).unwrap_or_else(|| "?".into());
                eprintln!("error: worker rank {rank} on {host} failed: {message}");
                return Ok(ExitCode::FAILURE);
            }
            GenerationEnd::Lost { rank, why } => {
                kill_all(&mut children).await;
                let host = if views[rank].host.is_empty() {
                    "?".to_string()
                } else {
                    views[rank].host.clone()
                };
                let words: Vec<String> = views[rank]
                    .last_words
                    .lock()
                    .map(|w| w.iter().cloned().collect())
                    .unwrap_or_default();
                eprintln!("anvil: lost worker rank {rank} on {host}: {why}");
                if !words.is_empty() {
                    eprintln!("anvil: its last words:\n  {}", words.join("\n  "));
                }
                if record.restarts >= args.max_restarts {
                    record.status = "failed".into();
                    run.write_record(&record)?;
                    eprintln!(
                        "error: giving up after {} restart(s) (--max-restarts {})",
                        record.restarts, args.max_restarts
                    );
                    return Ok(ExitCode::FAILURE);
                }
                if external {
                    eprintln!("anvil: waiting for the scheduler to restart workers (they re-register with the same token)");
                }
                record.restarts += 1;
                record.generation += 1;
                let resume = latest_checkpoint(&cfg, &run.path);
                let resume_step = resume.as_deref().and_then(checkpoint_step).unwrap_or(0);
                truncate_metrics_after(&run.metrics_path(), resume_step)?;
                let resume_text = resume
                    .as_ref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default();
                eprintln!(
                    "anvil: restart {}/{}: generation {} from {}",
                    record.restarts,
                    args.max_restarts,
                    record.generation,
                    if resume_text.is_empty() {
                        "the beginning (no complete checkpoint yet)".to_string()
                    } else {
                        resume_text.clone()
                    }
                );
                hub.new_generation(record.generation, resume_text);
            }
        }
    }
}

/// Scans the data sources before any worker starts, so a bad path fails here, once, clearly.
fn plan(cfg: &ScModelForgeConfig, world: usize) -> anyhow::Result<()> {
    for p in &cfg.data.paths {
        if !Path::new(p).exists() {
            bail!("data.paths: {p} does not exist (paths are relative to the current directory)");
        }
    }
    let global = cfg.training.batch_size * world;
    eprintln!(
        "anvil: {} file(s), {} tokenizer, global batch {} ({} per worker x {world}){}",
        cfg.data.paths.len(),
        cfg.tokenizer.strategy,
        global,
        cfg.training.batch_size,
        if cfg.training.gradient_accumulation > 1 {
            format!(
                ", gradient accumulation {}",
                cfg.training.gradient_accumulation
            )
        } else {
            String::new()
        }
    );
    Ok(())
}

fn latest_checkpoint(cfg: &ScModelForgeConfig, run_dir: &Path) -> Option<PathBuf> {
    let root = worker::train::checkpoint_root(cfg, &absolute(run_dir));
    worker::checkpoint::resolve_resume(&root).ok()
}

fn checkpoint_step(dir: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(dir.join("state.json")).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    v.get("global_step").and_then(|s| s.as_u64())
}

fn absolute(p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir()
            .map(|d| d.join(p))
            .unwrap_or_else(|_| p.to_path_buf())
    }
}

/// The control plane's TLS: the server's identity, and what local workers trust and check.
struct TlsSettings {
    server: tonic::transport::ServerTlsConfig,
    ca_path: PathBuf,
    domain: String,
}

fn tls_settings(args: &LaunchArgs) -> anyhow::Result<Option<TlsSettings>> {
    let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) else {
        return Ok(None);
    };
    let read = |p: &Path, what: &str| {
        std::fs::read(p).with_context(|| format!("cannot read the TLS {what} {}", p.display()))
    };
    let cert_pem = read(cert, "certificate (--tls-cert)")?;
    let key_pem = read(key, "private key (--tls-key)")?;
    for (pem, p, marker) in [
        (&cert_pem, cert, "CERTIFICATE-----"),
        (&key_pem, key, "PRIVATE KEY-----"),
    ] {
        if !String::from_utf8_lossy(pem).contains(marker) {
            bail!(
                "{} is not a PEM file with a \"-----BEGIN ...{marker}\" block",
                p.display()
            );
        }
    }
    let ca_path = absolute(args.tls_ca.as_deref().unwrap_or(cert));
    read(&ca_path, "CA certificate (--tls-ca)")?;
    Ok(Some(TlsSettings {
        server: tonic::transport::ServerTlsConfig::new()
            .identity(tonic::transport::Identity::from_pem(cert_pem, key_pem)),
        ca_path,
        domain: args
            .tls_domain
            .clone()
            .unwrap_or_else(|| "localhost".into()),
    }))
}

fn detect_scheduler() -> Option<&'static str> {
    if std::env::var_os("SLURM_JOB_ID").is_some() {
        Some("Slurm")
    } else if std::env::var_os("KUBERNETES_SERVICE_HOST").is_some() {
        Some("Kubernetes")
    } else {
        None
    }
}

/// The address workers should dial: a wildcard listen address is no use to them.
fn advertised(addr: SocketAddr) -> String {
    if addr.ip().is_unspecified() {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| "HOST".into());
        format!("{host}:{}", addr.port())
    } else {
        addr.to_string()
    }
}

fn sibling_executable(name: &str) -> anyhow::Result<PathBuf> {
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

#[allow(clippy::too_many_arguments)]
fn spawn_worker(
    bin: &Path,
    addr: SocketAddr,
    rank: usize,
    token: &str,
    tls: Option<&TlsSettings>,
    local_workers: usize,
    run: &RunDir,
    generation: u32,
    view: &WorkerView,
    exits: mpsc::UnboundedSender<(usize, String)>,
) -> anyhow::Result<WorkerProc> {
    let log_path = run.worker_log_path(rank);
    let mut cmd = Command::new(bin);
    cmd.arg("--coordinator")
        .arg(addr.to_string())
        .arg("--rank")
        .arg(rank.to_string());
    if let Some(t) = tls {
        cmd.arg("--tls-ca")
            .arg(&t.ca_path)
            .arg("--tls-domain")
            .arg(&t.domain);
    }
    // Like torchrun's OMP_NUM_THREADS: local workers share the machine's cores instead of each
    // starting one compute thread per core (which oversubscribes them). The user's setting wins.
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        cmd.env(
            "RAYON_NUM_THREADS",
            (cores / local_workers.max(1)).max(1).to_string(),
        );
    }
    let mut child = cmd
        .env("ANVIL_RUN_TOKEN", token)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("cannot start worker {}", bin.display()))?;
    let words = view.last_words.clone();
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    tokio::spawn(async move {
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
        let (Some(stdout), Some(stderr)) = (stdout, stderr) else {
            return;
        };
        let mut lines = tokio_stream::StreamExt::merge(
            tokio_stream::wrappers::LinesStream::new(BufReader::new(stdout).lines()),
            tokio_stream::wrappers::LinesStream::new(BufReader::new(stderr).lines()),
        );
        while let Some(Ok(line)) = tokio_stream::StreamExt::next(&mut lines).await {
            if let Some(f) = log.as_mut() {
                let _ =
                    tokio::io::AsyncWriteExt::write_all(f, format!("{line}\n").as_bytes()).await;
            }
            if let Ok(mut w) = words.lock() {
                if w.len() == 20 {
                    w.pop_front();
                }
                w.push_back(line);
            }
        }
    });
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

/// A locally started worker process, watched by a task of its own.
struct WorkerProc {
    kill: Option<tokio::sync::oneshot::Sender<()>>,
    done: Option<tokio::task::JoinHandle<()>>,
}

async fn kill_all(procs: &mut [WorkerProc]) {
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
async fn wait_all(procs: &mut [WorkerProc], limit: Duration) {
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

fn count_lost(views: &[WorkerView], timeout: Duration) -> usize {
    views
        .iter()
        .filter(|v| v.finished.is_none() && v.last_seen.elapsed() > timeout)
        .count()
}

fn summary(
    run: &RunDir,
    cfg: &ScModelForgeConfig,
    finished: &[proto::v1::Finished],
    elapsed: Duration,
    progress: &Progress,
    preempted: bool,
) {
    let best = finished
        .iter()
        .map(|f| f.best_val_loss)
        .filter(|l| l.is_finite())
        .fold(f64::NAN, f64::min);
    let steps = finished.iter().map(|f| f.steps).max().unwrap_or(0);
    let ckpt = worker::train::checkpoint_root(cfg, &absolute(&run.path));
    eprintln!(
        "anvil: {} after {steps} steps in {:.1}s ({:.0} cells/s); best validation loss {}",
        if preempted { "preempted" } else { "finished" },
        elapsed.as_secs_f64(),
        progress.last_cells_per_s,
        if best.is_finite() {
            format!("{best:.4}")
        } else {
            "n/a".into()
        },
    );
    eprintln!(
        "anvil: checkpoints in {}, metrics in {}",
        ckpt.display(),
        run.metrics_path().display()
    );
    if preempted {
        eprintln!(
            "anvil: continue this run with\n  coordinator launch --resume {}",
            run.path.display()
        );
    }
}

/// SIGTERM (Slurm preemption, Kubernetes eviction), SIGUSR1 (Slurm's warning signal) and
/// Ctrl-C, as one stream.
struct Signals {
    term: tokio::signal::unix::Signal,
    usr1: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> anyhow::Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Self {
            term: signal(SignalKind::terminate())?,
            usr1: signal(SignalKind::user_defined1())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    async fn next(&mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.usr1.recv() => "SIGUSR1",
            _ = self.int.recv() => "SIGINT",
        }
    }
}

/// One status line for the run on an interactive terminal; plain log lines otherwise.
struct Progress {
    tty: bool,
    world: usize,
    line: String,
    drawn: bool,
    last_cells_per_s: f64,
}

impl Progress {
    fn new(world: usize) -> Self {
        Self {
            tty: std::io::stderr().is_terminal(),
            world,
            line: String::new(),
            drawn: false,
            last_cells_per_s: 0.0,
        }
    }

    fn step(&mut self, s: &proto::v1::StepMetrics, alive: usize) {
        self.last_cells_per_s = s.cells_per_s;
        let total = if s.total_steps > 0 {
            format!("/{}", s.total_steps)
        } else {
            String::new()
        };
        self.line = format!(
            "epoch {} step {}{total} | loss {:.4} | lr {:.2e} | {:.0} cells/s | workers {alive}/{}",
            s.epoch, s.step, s.loss, s.lr, s.cells_per_s, self.world
        );
        if !self.tty {
            eprintln!("anvil: {}", self.line);
        }
    }

    fn redraw(&mut self, started: Instant) {
        if self.tty && !self.line.is_empty() {
            let t = started.elapsed().as_secs();
            eprint!("\r\x1b[2K{} | {}:{:02}", self.line, t / 60, t % 60);
            let _ = std::io::stderr().flush();
            self.drawn = true;
        }
    }

    fn log(&mut self, message: &str) {
        self.clear();
        eprintln!("anvil: {message}");
    }

    fn clear(&mut self) {
        if self.drawn {
            eprint!("\r\x1b[2K");
            self.drawn = false;
        }
    }
}
