//! The coordinator's gRPC service: registration with the rendezvous, and one session stream per
//! worker. It only moves messages; decisions (restart, stop, finish) belong to the supervisor in
//! `launch`, which receives everything as [`Event`]s.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use proto::v1::coordinator_server::Coordinator;
use proto::v1::{
    worker_message, CoordinatorMessage, RegisterReply, RegisterRequest, WorkerMessage,
};
use tokio::sync::{mpsc, watch};
use tokio_stream::{wrappers::ReceiverStream, Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

/// What the service tells the supervisor.
#[derive(Debug)]
pub enum Event {
    Registered {
        rank: usize,
        generation: u32,
        host: String,
        pid: u32,
    },
    Message(WorkerMessage),
    SessionClosed {
        rank: usize,
        generation: u32,
    },
}

/// Everything a worker of the current generation is told when it registers.
#[derive(Debug, Clone, Default)]
pub struct Assignment {
    pub run_id: String,
    pub world: usize,
    pub generation: u32,
    pub run_dir: String,
    pub config_yaml: String,
    pub resume_from: String,
    pub max_steps: u64,
    /// W3C traceparent of the generation's span (empty when no traces are exported).
    pub trace_parent: String,
    /// "fp32" or "bf16": the format gradients travel in between workers.
    pub grad_reduce_dtype: String,
    /// A worker command to run instead of training (see `RegisterReply.task`).
    pub task: Vec<String>,
}

#[derive(Debug, Clone)]
struct Slot {
    data_addr: String,
    host: String,
    /// The NCCL unique id the worker created (empty on CPU); rank 0's goes to everyone.
    nccl_unique_id: Vec<u8>,
}

struct State {
    assignment: Assignment,
    slots: Vec<Option<Slot>>,
    /// Downstream command senders of the open sessions, by rank.
    commands: HashMap<usize, mpsc::Sender<CoordinatorMessage>>,
}

/// Shared between the gRPC service and the supervisor.
#[derive(Clone)]
pub struct Hub {
    token: Arc<String>,
    state: Arc<Mutex<State>>,
    /// Number of ranks registered in the current generation; bumps wake waiting registrations.
    registered: watch::Sender<(u32, usize)>,
    events: mpsc::UnboundedSender<Event>,
    register_timeout: Duration,
}

impl Hub {
    pub fn new(
        token: String,
        assignment: Assignment,
        register_timeout: Duration,
    ) -> (Self, mpsc::UnboundedReceiver<Event>) {
        let (events, rx) = mpsc::unbounded_channel();
        let world = assignment.world;
        let generation = assignment.generation;
        let hub = Hub {
            token: Arc::new(token),
            state: Arc::new(Mutex::new(State {
                assignment,
                slots: vec![None; world],
                commands: HashMap::new(),
            })),
            registered: watch::channel((generation, 0)).0,
            events,
            register_timeout,
        };
        (hub, rx)
    }

    /// The trace the current generation's workers continue.
    pub fn set_trace_parent(&self, trace_parent: String) {
        lock(&self.state).assignment.trace_parent = trace_parent;
    }

    /// Opens registration for a new generation (after a restart), forgetting the old workers.
    pub fn new_generation(&self, generation: u32, resume_from: String) {
        let mut st = lock(&self.state);
        st.assignment.generation = generation;
        st.assignment.resume_from = resume_from;
        st.slots = vec![None; st.assignment.world];
        st.commands.clear();
        self.registered.send_replace((generation, 0));
    }

    /// Ranks that have not registered in the current generation.
    pub fn missing_ranks(&self) -> Vec<usize> {
        let st = lock(&self.state);
        (0..st.slots.len())
            .filter(|r| st.slots[*r].is_none())
            .collect()
    }

    pub fn host_of(&self, rank: usize) -> Option<String> {
        lock(&self.state)
            .slots
            .get(rank)?
            .as_ref()
            .map(|s| s.host.clone())
    }

    /// Sends a command to every open session.
    pub fn broadcast(&self, message: CoordinatorMessage) {
        let senders: Vec<_> = lock(&self.state).commands.values().cloned().collect();
        for s in senders {
            let _ = s.try_send(message.clone());
        }
    }

    fn check_token<T>(&self, request: &Request<T>) -> Result<(), Status> {
        let given = request
            .metadata()
            .get(proto::TOKEN_METADATA_KEY)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if given.is_empty() {
            return Err(Status::unauthenticated(
                "no run token: start the worker with ANVIL_RUN_TOKEN set (or --token-file) to \
                 the token of the run it should join",
            ));
        }
        if !proto::auth::constant_time_eq(given.as_bytes(), self.token.as_bytes()) {
            return Err(Status::unauthenticated(
                "wrong run token: this worker was started for another run",
            ));
        }
        Ok(())
    }
}

fn lock(m: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    // A panic while holding the lock leaves plain data behind; keep serving.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

type CommandStream = Pin<Box<dyn Stream<Item = Result<CoordinatorMessage, Status>> + Send>>;

#[tonic::async_trait]
impl Coordinator for Hub {
    async fn register(
        &self,
        request: Request<RegisterRequest>,
    ) -> Result<Response<RegisterReply>, Status> {
        self.check_token(&request)?;
        let req = request.into_inner();
        let (rank, generation, world) = {
            let mut st = lock(&self.state);
            if !req.run_id.is_empty() && req.run_id != st.assignment.run_id {
                return Err(Status::permission_denied(format!(
                    "this coordinator serves run {}, not {}",
                    st.assignment.run_id, req.run_id
                )));
            }
            let world = st.slots.len();
            let wanted = usize::try_from(req.requested_rank).ok();
            let rank = match wanted {
                Some(r) if r >= world => {
                    return Err(Status::invalid_argument(format!(
                        "rank {r} requested, but the run has {world} workers (ranks 0..{})",
                        world - 1
                    )))
                }
                Some(r) if st.slots[r].is_some() => {
                    return Err(Status::already_exists(format!(
                        "rank {r} has already registered for this generation"
                    )))
                }
                Some(r) => r,
                None => st.slots.iter().position(Option::is_none).ok_or_else(|| {
                    Status::resource_exhausted(format!("all {world} ranks are taken"))
                })?,
            };
            st.slots[rank] = Some(Slot {
                data_addr: req.data_addr.clone(),
                host: req.host.clone(),
                nccl_unique_id: req.nccl_unique_id.clone(),
            });
            let count = st.slots.iter().filter(|s| s.is_some()).count();
            let generation = st.assignment.generation;
            self.registered.send_replace((generation, count));
            (rank, generation, world)
        };
        let _ = self.events.send(Event::Registered {
            rank,
            generation,
            host: req.host.clone(),
            pid: req.pid,
        });

        // The rendezvous: answer once every rank of this generation is in.
        let mut rx = self.registered.subscribe();
        let wait = rx.wait_for(|(g, n)| *g != generation || *n == world);
        match tokio::time::timeout(self.register_timeout, wait).await {
            Ok(Ok(v)) if v.0 == generation => {}
            Ok(_) => {
                return Err(Status::aborted(
                    "the run restarted while this worker waited",
                ))
            }
            Err(_) => {
                let missing = self.missing_ranks();
                return Err(Status::deadline_exceeded(format!(
                    "not every worker registered within {:?}; ranks that never arrived: {missing:?}",
                    self.register_timeout
                )));
            }
        }
        let st = lock(&self.state);
        let a = &st.assignment;
        Ok(Response::new(RegisterReply {
            rank: rank as u32,
            world_size: world as u32,
            run_id: a.run_id.clone(),
            generation,
            run_dir: a.run_dir.clone(),
            config_yaml: a.config_yaml.clone(),
            peer_data_addrs: st
                .slots
                .iter()
                .map(|s| s.as_ref().map(|s| s.data_addr.clone()).unwrap_or_default())
                .collect(),
            resume_from: a.resume_from.clone(),
            max_steps: a.max_steps,
            nccl_unique_id: st.slots[0]
                .as_ref()
                .map(|s| s.nccl_unique_id.clone())
                .unwrap_or_default(),
            trace_parent: a.trace_parent.clone(),
            grad_reduce_dtype: a.grad_reduce_dtype.clone(),
            task: a.task.clone(),
        }))
    }

    type SessionStream = CommandStream;

    async fn session(
        &self,
        request: Request<Streaming<WorkerMessage>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        self.check_token(&request)?;
        let mut inbound = request.into_inner();
        let first = inbound
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("session closed before its hello"))?;
        if !matches!(first.body, Some(worker_message::Body::Hello(_))) {
            return Err(Status::invalid_argument("a session must start with hello"));
        }
        let (rank, generation) = (first.rank as usize, first.generation);
        let (tx, rx) = mpsc::channel(16);
        {
            let mut st = lock(&self.state);
            if generation != st.assignment.generation || rank >= st.slots.len() {
                return Err(Status::aborted(
                    "this worker belongs to an earlier generation",
                ));
            }
            st.commands.insert(rank, tx);
        }
        let events = self.events.clone();
        let state = self.state.clone();
        tokio::spawn(async move {
            while let Some(Ok(msg)) = inbound.next().await {
                if events.send(Event::Message(msg)).is_err() {
                    break;
                }
            }
            let mut st = lock(&state);
            if st.assignment.generation == generation {
                st.commands.remove(&rank);
            }
            drop(st);
            let _ = events.send(Event::SessionClosed { rank, generation });
        });
        let out = ReceiverStream::new(rx).map(Ok);
        Ok(Response::new(Box::pin(out)))
    }
}
