//! Forming the ring's links: each rank connects forward to rank + 1 and accepts from rank - 1,
//! and both ends check a handshake (magic, protocol version, ranks, run token) so that a peer
//! of another run, or at the wrong place in the ring, is refused with a message saying which.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use super::error::RingError;

const MAGIC: &[u8; 4] = b"ANVR";
/// 2: after the handshake, ranks negotiate the shared-memory path.
const VERSION: u32 = 2;

#[derive(Debug, Clone, Copy)]
pub struct RingTimeouts {
    pub connect: Duration,
    pub io: Duration,
}

impl Default for RingTimeouts {
    fn default() -> Self {
        Self {
            connect: Duration::from_secs(30),
            io: Duration::from_secs(120),
        }
    }
}

fn handshake_bytes(rank: usize, world: usize, token: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(20 + token.len());
    out.extend_from_slice(MAGIC);
    for v in [VERSION, rank as u32, world as u32, token.len() as u32] {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out.extend_from_slice(token.as_bytes());
    out
}

pub(super) fn connect_forward(
    rank: usize,
    world: usize,
    peer: usize,
    addr: SocketAddr,
    token: &str,
    timeouts: RingTimeouts,
) -> Result<TcpStream, RingError> {
    let start = Instant::now();
    let mut stream = loop {
        match TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
            Ok(s) => break s,
            Err(e) if start.elapsed() >= timeouts.connect => {
                return Err(RingError::Connect {
                    rank,
                    peer,
                    addr,
                    waited: start.elapsed(),
                    source: e,
                })
            }
            // The peer may not be listening yet.
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    };
    let io = |e| RingError::Socket(e, rank);
    stream
        .set_read_timeout(Some(timeouts.connect))
        .map_err(io)?;
    stream
        .write_all(&handshake_bytes(rank, world, token))
        .map_err(io)?;
    // The acceptor answers with a status byte and, when refusing, a reason.
    let mut status = [0u8; 1];
    stream.read_exact(&mut status).map_err(io)?;
    if status[0] != 0 {
        let mut reason = String::new();
        let _ = stream.read_to_string(&mut reason);
        return Err(RingError::RefusedByPeer { rank, peer, reason });
    }
    Ok(stream)
}

pub(super) fn accept_backward(
    rank: usize,
    world: usize,
    expected_peer: usize,
    listener: &TcpListener,
    token: &str,
    timeouts: RingTimeouts,
) -> Result<TcpStream, RingError> {
    let start = Instant::now();
    listener
        .set_nonblocking(true)
        .map_err(|e| RingError::Socket(e, rank))?;
    loop {
        match listener.accept() {
            Ok((mut stream, _)) => {
                stream
                    .set_nonblocking(false)
                    .map_err(|e| RingError::Socket(e, rank))?;
                stream
                    .set_read_timeout(Some(Duration::from_secs(5)))
                    .map_err(|e| RingError::Socket(e, rank))?;
                match check_handshake(&mut stream, world, expected_peer, token) {
                    Ok(()) => {
                        stream
                            .write_all(&[0])
                            .map_err(|e| RingError::Socket(e, rank))?;
                        return Ok(stream);
                    }
                    Err(reason) => {
                        // Tell the caller why, then keep waiting for the right peer.
                        let mut answer = vec![1u8];
                        answer.extend_from_slice(reason.as_bytes());
                        let _ = stream.write_all(&answer);
                        if timeouts.connect <= start.elapsed() {
                            return Err(RingError::Refused { rank, reason });
                        }
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if start.elapsed() >= timeouts.connect {
                    return Err(RingError::AcceptTimeout {
                        rank,
                        peer: expected_peer,
                        waited: start.elapsed(),
                    });
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => return Err(RingError::Socket(e, rank)),
        }
    }
}

fn check_handshake(
    stream: &mut TcpStream,
    world: usize,
    expected_peer: usize,
    token: &str,
) -> Result<(), String> {
    let mut header = [0u8; 20];
    stream
        .read_exact(&mut header)
        .map_err(|e| format!("incomplete handshake: {e}"))?;
    if &header[..4] != MAGIC {
        return Err("not an anvil ring connection".into());
    }
    let word =
        |i: usize| u32::from_le_bytes([header[i], header[i + 1], header[i + 2], header[i + 3]]);
    let (version, peer, peer_world, token_len) = (word(4), word(8), word(12), word(16));
    if version != VERSION {
        return Err(format!(
            "ring protocol version {version}, expected {VERSION}"
        ));
    }
    if token_len as usize > 4096 {
        return Err("run token too long".into());
    }
    let mut peer_token = vec![0u8; token_len as usize];
    stream
        .read_exact(&mut peer_token)
        .map_err(|e| format!("incomplete handshake: {e}"))?;
    if !proto::auth::constant_time_eq(&peer_token, token.as_bytes()) {
        return Err(
            "wrong run token (a worker of another run, or not started by this coordinator)".into(),
        );
    }
    if peer_world as usize != world || peer as usize != expected_peer {
        return Err(format!(
            "expected rank {expected_peer} of {world}, got rank {peer} of {peer_world}"
        ));
    }
    Ok(())
}
