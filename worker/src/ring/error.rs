//! Why a ring could not form or an all-reduce failed; every variant names the rank.

use std::net::SocketAddr;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum RingError {
    #[error("rank {rank}: could not reach rank {peer} at {addr} within {waited:?}: {source}")]
    Connect {
        rank: usize,
        peer: usize,
        addr: SocketAddr,
        waited: Duration,
        source: std::io::Error,
    },
    #[error("rank {rank}: no connection from rank {peer} within {waited:?}")]
    AcceptTimeout {
        rank: usize,
        peer: usize,
        waited: Duration,
    },
    #[error("rank {rank}: refused a ring connection: {reason}")]
    Refused { rank: usize, reason: String },
    #[error("rank {rank}: rank {peer} refused our connection: {reason}")]
    RefusedByPeer {
        rank: usize,
        peer: usize,
        reason: String,
    },
    #[error("rank {rank}: lost rank {peer} during all-reduce: {source}")]
    PeerLost {
        rank: usize,
        peer: usize,
        source: std::io::Error,
    },
    #[error("rank {rank}: {reason}")]
    Mismatch { rank: usize, reason: String },
    #[error("invalid ring: rank {rank} of world {world}, {addrs} addresses")]
    BadShape {
        rank: usize,
        world: usize,
        addrs: usize,
    },
    #[error("rank {rank}: socket setup failed: {0}", rank = .1)]
    Socket(std::io::Error, usize),
}
