//! The signals a run obeys: SIGTERM (Slurm preemption, Kubernetes eviction), SIGUSR1 (Slurm's
//! warning signal) and Ctrl-C, as one stream.

pub struct Signals {
    term: tokio::signal::unix::Signal,
    usr1: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    pub fn new() -> anyhow::Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Self {
            term: signal(SignalKind::terminate())?,
            usr1: signal(SignalKind::user_defined1())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    /// The next signal's name.
    pub async fn next(&mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.usr1.recv() => "SIGUSR1",
            _ = self.int.recv() => "SIGINT",
        }
    }
}
