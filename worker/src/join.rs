//! A worker joining a coordinator's run: register (the rendezvous), form the gradient ring, then
//! train while streaming heartbeats, metrics and log lines, and obeying checkpoint/stop commands.
//!
//! Networking runs on a small tokio runtime beside the training thread; the two talk through
//! channels, so the training loop itself stays synchronous.

use std::net::{SocketAddr, TcpListener, ToSocketAddrs, UdpSocket};
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use proto::v1::coordinator_client::CoordinatorClient;
use proto::v1::{
    coordinator_message, worker_message, Failed, Finished, Heartbeat, Hello, RegisterReply,
    RegisterRequest, WorkerMessage,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::MetadataValue;
use tonic::Request;

use crate::ring::{Ring, RingTimeouts};

/// What the coordinator asked for, as seen by the training loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Continue = 0,
    CheckpointAndStop = 1,
    Stop = 2,
}

/// The worker's connection to its coordinator while training.
pub struct Session {
    pub assignment: RegisterReply,
    upstream: mpsc::Sender<WorkerMessage>,
    command: Arc<AtomicU8>,
    /// Latest step, reported in heartbeats.
    step: Arc<AtomicU64>,
    runtime: tokio::runtime::Runtime,
    stream_task: Option<tokio::task::JoinHandle<Result<(), tonic::Status>>>,
}

#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    #[error("cannot reach the coordinator at {addr}: {message}")]
    Connect { addr: String, message: String },
    #[error("the coordinator refused this worker: {0}")]
    Refused(String),
    #[error(transparent)]
    Ring(#[from] crate::ring::RingError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Options for joining.
pub struct JoinOptions {
    pub coordinator: String,
    pub token: String,
    pub requested_rank: Option<usize>,
    pub heartbeat: Duration,
    /// Reach the coordinator over TLS (it runs with `--tls-cert`); None for plain gRPC.
    pub tls: Option<TlsOptions>,
}

/// How a worker checks the coordinator's certificate.
#[derive(Debug, Clone)]
pub struct TlsOptions {
    /// PEM of the CA (or the self-signed certificate) to trust.
    pub ca_pem: Vec<u8>,
    /// Name the certificate must carry; default: the host part of the coordinator address.
    pub domain: Option<String>,
}

impl Session {
    /// Registers with the coordinator (returns after the rendezvous), forms the gradient ring
    /// and opens the session stream.
    pub fn join(opts: &JoinOptions) -> Result<(Session, Ring), JoinError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?;
        let scheme = if opts.tls.is_some() { "https" } else { "http" };
        let endpoint = match opts.coordinator.split_once("://") {
            Some((_, rest)) => format!("{scheme}://{rest}"),
            None => format!("{scheme}://{}", opts.coordinator),
        };
        let connect_err = |e: &dyn std::fmt::Display| JoinError::Connect {
            addr: opts.coordinator.clone(),
            message: e.to_string(),
        };
        let token: MetadataValue<_> = opts
            .token
            .parse()
            .map_err(|_| JoinError::Refused("the run token has invalid characters".into()))?;

        // The data plane listens on the interface that reaches the coordinator.
        let host_ip = local_ip_towards(&opts.coordinator)?;
        let listener = TcpListener::bind(SocketAddr::new(host_ip, 0))?;
        let data_addr = listener.local_addr()?;
        let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| host_ip.to_string());

        let mut client = runtime
            .block_on(async {
                let mut ep = tonic::transport::Endpoint::from_shared(endpoint.clone())?
                    .connect_timeout(Duration::from_secs(10));
                if let Some(tls) = &opts.tls {
                    let mut cfg = tonic::transport::ClientTlsConfig::new()
                        .ca_certificate(tonic::transport::Certificate::from_pem(&tls.ca_pem));
                    if let Some(d) = &tls.domain {
                        cfg = cfg.domain_name(d.clone());
                    }
                    ep = ep.tls_config(cfg)?;
                }
                // A scheduler may start the workers before the coordinator listens (Slurm
                // starts both at once; a requeued job reuses the run's token file): a refused
                // connection is retried for a while, anything else is reported at once.
                let patience = tokio::time::Instant::now() + CONNECT_PATIENCE;
                let mut said = false;
                let channel = loop {
                    match ep.connect().await {
                        Ok(c) => break c,
                        Err(e) if refused(&e) && tokio::time::Instant::now() < patience => {
                            if !said {
                                tracing::info!(coordinator = %opts.coordinator, "coordinator not listening yet; retrying");
                                said = true;
                            }
                            tokio::time::sleep(Duration::from_millis(500)).await;
                        }
                        Err(e) => return Err(e),
                    }
                };
                Ok::<_, tonic::transport::Error>(CoordinatorClient::new(channel))
            })
            .map_err(|e| connect_err(&describe_transport_error(&e, opts.tls.is_some())))?;

        let mut request = Request::new(RegisterRequest {
            run_id: String::new(),
            host: hostname,
            pid: std::process::id(),
            data_addr: data_addr.to_string(),
            requested_rank: opts.requested_rank.map_or(-1, |r| r as i32),
            devices: 0,
            nccl_unique_id: nccl_offer(),
        });
        request
            .metadata_mut()
            .insert(proto::TOKEN_METADATA_KEY, token.clone());
        let assignment = runtime
            .block_on(client.register(request))
            .map_err(|s| match s.code() {
                // Not the coordinator's answer: the connection itself failed (often a TLS
                // coordinator reached without TLS).
                tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Internal
                    if opts.tls.is_none() =>
                {
                    connect_err(&format!(
                        "{} (if the coordinator runs with --tls-cert, pass --tls-ca)",
                        s.message()
                    ))
                }
                _ => JoinError::Refused(s.message().to_string()),
            })?
            .into_inner();

        let rank = assignment.rank as usize;
        let world = assignment.world_size as usize;
        let addrs: Vec<SocketAddr> = assignment
            .peer_data_addrs
            .iter()
            .map(|a| a.parse())
            .collect::<Result<_, _>>()
            .map_err(|_| JoinError::Refused("coordinator sent a bad peer address".into()))?;
        let grad_dtype = crate::sync::GradDtype::parse(&assignment.grad_reduce_dtype)
            .map_err(|e| JoinError::Refused(format!("coordinator sent {e}")))?;
        let mut ring = Ring::connect(
            rank,
            world,
            &listener,
            &addrs,
            &opts.token,
            RingTimeouts::default(),
        )?;
        ring.set_grad_dtype(grad_dtype);

        // Session stream: hello first, then whatever the training loop sends.
        let (upstream, rx) = mpsc::channel::<WorkerMessage>(256);
        let command = Arc::new(AtomicU8::new(Command::Continue as u8));
        let step = Arc::new(AtomicU64::new(0));
        let generation = assignment.generation;
        let hello = message(rank, generation, worker_message::Body::Hello(Hello {}));
        upstream
            .try_send(hello)
            .map_err(|_| JoinError::Refused("session channel closed".into()))?;
        let mut request = Request::new(ReceiverStream::new(rx));
        request
            .metadata_mut()
            .insert(proto::TOKEN_METADATA_KEY, token);
        let cmd = command.clone();
        let stream_task = runtime.spawn(async move {
            let mut downstream = client.session(request).await?.into_inner();
            while let Some(m) = downstream.message().await? {
                let c = match m.body {
                    Some(coordinator_message::Body::CheckpointAndStop(_)) => {
                        Command::CheckpointAndStop
                    }
                    Some(coordinator_message::Body::Stop(_)) => Command::Stop,
                    None => continue,
                };
                cmd.fetch_max(c as u8, Ordering::SeqCst);
            }
            // The coordinator closed the stream: it is gone or done with us.
            cmd.store(Command::Stop as u8, Ordering::SeqCst);
            Ok(())
        });

        // Heartbeats from a thread of their own, so a long step never looks like a dead worker.
        let (hb_tx, hb_step, hb_cmd, period) = (
            upstream.clone(),
            step.clone(),
            command.clone(),
            opts.heartbeat,
        );
        std::thread::spawn(move || loop {
            std::thread::sleep(period);
            let beat = message(
                rank,
                generation,
                worker_message::Body::Heartbeat(Heartbeat {
                    step: hb_step.load(Ordering::Relaxed),
                }),
            );
            if hb_tx.blocking_send(beat).is_err() {
                hb_cmd.store(Command::Stop as u8, Ordering::SeqCst);
                break;
            }
        });

        let session = Session {
            assignment,
            upstream,
            command,
            step,
            runtime,
            stream_task: Some(stream_task),
        };
        Ok((session, ring))
    }

    pub fn rank(&self) -> usize {
        self.assignment.rank as usize
    }

    pub fn world(&self) -> usize {
        self.assignment.world_size as usize
    }

    pub fn command(&self) -> Command {
        match self.command.load(Ordering::SeqCst) {
            0 => Command::Continue,
            1 => Command::CheckpointAndStop,
            _ => Command::Stop,
        }
    }

    pub fn set_step(&self, step: u64) {
        self.step.store(step, Ordering::Relaxed);
    }

    /// Sends one message up; a closed session makes the next `command()` say Stop.
    pub fn send(&self, body: worker_message::Body) {
        let m = message(self.rank(), self.assignment.generation, body);
        if self.upstream.blocking_send(m).is_err() {
            self.command.store(Command::Stop as u8, Ordering::SeqCst);
        }
    }

    /// Reports the outcome and waits briefly for it to be delivered.
    /// `Err((message, peer_lost))`: what went wrong, and whether it was losing a peer.
    pub fn finish(mut self, outcome: Result<Finished, (String, bool)>) {
        let body = match outcome {
            Ok(f) => worker_message::Body::Finished(f),
            Err((message, peer_lost)) => {
                worker_message::Body::Failed(Failed { message, peer_lost })
            }
        };
        self.send(body);
        drop(self.upstream);
        if let Some(task) = self.stream_task.take() {
            // The coordinator closes the stream once it has the outcome.
            let _ = self
                .runtime
                .block_on(async { tokio::time::timeout(Duration::from_secs(10), task).await });
        }
        self.runtime.shutdown_timeout(Duration::from_secs(1));
    }
}

/// How long a worker keeps trying a coordinator that refuses connections (not yet listening).
const CONNECT_PATIENCE: Duration = Duration::from_secs(60);

/// Whether the connection was refused (nobody listening at the address yet).
fn refused(e: &tonic::transport::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::ConnectionRefused {
                return true;
            }
        }
        source = err.source();
    }
    false
}

fn message(rank: usize, generation: u32, body: worker_message::Body) -> WorkerMessage {
    WorkerMessage {
        rank: rank as u32,
        generation,
        body: Some(body),
    }
}

/// The local address the OS would use to reach `coordinator` (no packet is sent).
fn local_ip_towards(coordinator: &str) -> Result<std::net::IpAddr, JoinError> {
    let hostport = coordinator
        .trim_start_matches("http://")
        .trim_start_matches("https://");
    let target = hostport
        .to_socket_addrs()
        .map_err(|e| JoinError::Connect {
            addr: coordinator.to_string(),
            message: e.to_string(),
        })?
        .next()
        .ok_or_else(|| JoinError::Connect {
            addr: coordinator.to_string(),
            message: "address did not resolve".into(),
        })?;
    let probe = UdpSocket::bind(SocketAddr::new(
        if target.is_ipv4() {
            [0, 0, 0, 0].into()
        } else {
            std::net::Ipv6Addr::UNSPECIFIED.into()
        },
        0,
    ))?;
    probe.connect(target)?;
    Ok(probe.local_addr()?.ip())
}

/// A transport error with its causes, plus a hint when TLS is the likely cause.
fn describe_transport_error(e: &tonic::transport::Error, tls: bool) -> String {
    let mut msg = proto::error_chain(e);
    if tls && (msg.contains("certificate") || msg.contains("Certificate")) {
        msg.push_str(" (check --tls-ca and --tls-domain against the coordinator's certificate)");
    }
    msg
}

/// The NCCL unique id this worker offers for rank 0's communicator (empty on CPU builds).
fn nccl_offer() -> Vec<u8> {
    #[cfg(feature = "cuda")]
    {
        crate::nccl::offer_unique_id()
    }
    #[cfg(not(feature = "cuda"))]
    {
        Vec::new()
    }
}
