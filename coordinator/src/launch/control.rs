//! Serving the control plane: where the coordinator listens, its gRPC service (registration and
//! one session per worker) and its TLS.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{anyhow, Context};
use proto::v1::coordinator_server::CoordinatorServer;
use tokio::sync::mpsc;

use super::args::LaunchArgs;
use super::open::OpenRun;
use crate::server::{Assignment, Event, Hub};
use crate::tls::TlsSettings;

/// Whether the coordinator starts its workers or waits for workers started elsewhere.
#[derive(Debug, Clone, Copy)]
pub struct Placement {
    /// Workers are started elsewhere (Slurm, Kubernetes, by hand) and register.
    pub external: bool,
    /// The scheduler detected, if any.
    pub scheduler: Option<&'static str>,
}

impl Placement {
    pub fn of(args: &LaunchArgs) -> Self {
        let scheduler = detect_scheduler();
        Placement {
            external: args.external || (scheduler.is_some() && !args.local),
            scheduler,
        }
    }
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

/// The running gRPC service and what the supervisor needs of it.
pub struct ControlPlane {
    pub hub: Hub,
    pub events: mpsc::UnboundedReceiver<Event>,
    pub addr: SocketAddr,
    pub tls: Option<TlsSettings>,
}

/// Listens on `listen` and serves `hub` (registration and sessions) in the background;
/// returns the address bound.
pub async fn serve_hub(
    listen: &str,
    hub: Hub,
    tls: Option<&TlsSettings>,
) -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    let addr = listener.local_addr()?;
    let service = CoordinatorServer::new(hub);
    let mut server = tonic::transport::Server::builder();
    if let Some(t) = tls {
        server = server
            .tls_config(t.server.clone())
            .map_err(|e| anyhow!("--tls-cert/--tls-key: {}", proto::error_chain(&e)))?;
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
    Ok(addr)
}

/// The address workers should dial: a wildcard listen address is no use to them.
pub fn advertised(addr: SocketAddr) -> String {
    if addr.ip().is_unspecified() {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| "HOST".into());
        format!("{host}:{}", addr.port())
    } else {
        addr.to_string()
    }
}

impl ControlPlane {
    /// Listens, and serves registration for the run's current generation.
    pub async fn serve(
        args: &LaunchArgs,
        run: &OpenRun,
        placement: Placement,
    ) -> anyhow::Result<Self> {
        let listen = args.listen.clone().unwrap_or_else(|| {
            if placement.external {
                "0.0.0.0:50051"
            } else {
                "127.0.0.1:0"
            }
            .to_string()
        });
        let tls = TlsSettings::from_args(&args.tls)?;
        let assignment = Assignment {
            run_id: run.record.run_id.clone(),
            world: run.record.world,
            generation: run.record.generation,
            run_dir: run::dir::absolute(&run.dir.path).display().to_string(),
            config_yaml: run.cfg.to_yaml(),
            resume_from: run.resume_from(),
            max_steps: args.max_steps.unwrap_or(0),
            trace_parent: String::new(),
            grad_reduce_dtype: run.record.grad_reduce_dtype.clone(),
            task: Vec::new(),
        };
        let (hub, events) = Hub::new(
            run.token.clone(),
            assignment,
            Duration::from_secs_f64(args.register_timeout),
        );
        let addr = serve_hub(&listen, hub.clone(), tls.as_ref()).await?;
        Ok(ControlPlane {
            hub,
            events,
            addr,
            tls,
        })
    }

    /// The address workers should dial: a wildcard listen address is no use to them.
    pub fn advertised(&self) -> String {
        advertised(self.addr)
    }

    /// Says where the run is, where it continues from, and how external workers join it.
    pub fn announce(&self, run: &OpenRun, placement: Placement) {
        let world = run.record.world;
        eprintln!(
            "anvil: run {} with {world} worker(s), run dir {}, coordinator on {}",
            run.record.run_id,
            run.dir.path.display(),
            self.addr
        );
        match &run.resumed {
            Some(Some(from)) => eprintln!("anvil: resuming from {}", from.display()),
            Some(None) => {
                eprintln!("anvil: no complete checkpoint in the run yet; starting it over")
            }
            None => {}
        }
        if placement.external {
            let why = placement
                .scheduler
                .map(|s| format!(" ({s} detected)"))
                .unwrap_or_default();
            let tls_arg = self
                .tls
                .as_ref()
                .map(|t| format!(" --tls-ca {}", t.ca_path.display()))
                .unwrap_or_default();
            eprintln!(
                "anvil: waiting for {world} external worker(s){why}; start each with\n  \
                 ANVIL_RUN_TOKEN=$(cat {}) worker --coordinator {}{tls_arg}",
                run.dir.token_path().display(),
                self.advertised()
            );
        }
    }
}
