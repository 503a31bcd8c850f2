//! Gradient all-reduce between CPU workers: a ring of ranks (reduce-scatter, then all-gather).
//!
//! Each rank connects to the next rank and accepts from the previous one ([`handshake`]: peers
//! authenticate with the run token; a peer without it, for another run, or at the wrong place
//! in the ring is refused with a message saying which). A buffer is cut into `world` chunks;
//! in `world - 1` reduce-scatter steps every rank sends one chunk forward while adding the
//! chunk arriving from behind, so each rank ends owning the full sum of one chunk. The owner
//! scales it to the mean, and `world - 1` all-gather steps pass the owned chunks around
//! ([`tcp`]). Per rank, 2(n-1)/n of the buffer crosses the wire each way, which is optimal.
//!
//! When every rank runs on the same host, the data moves through shared memory instead
//! ([`shm`]) and the TCP sockets only carry barriers; `ANVIL_RING_SHM=0` forces TCP. All
//! ranks agree on the path while forming the ring, and results agree with the TCP path up to
//! floating-point reduction order.

mod error;
mod handshake;
mod shm;
mod tcp;

use std::net::{SocketAddr, TcpListener, TcpStream};
#[cfg(test)]
use std::path::PathBuf;
#[cfg(test)]
use std::time::Duration;

pub use error::RingError;
pub use handshake::RingTimeouts;
use shm::{Outcome, SharedMemory};
pub use tcp::chunk_ranges;
use tcp::Links;

use crate::sync::GradDtype;

/// One rank's place in the ring, connected to its neighbours.
pub struct Ring {
    rank: usize,
    world: usize,
    /// To rank + 1.
    next: Option<TcpStream>,
    /// From rank - 1.
    prev: Option<TcpStream>,
    /// Set when all ranks share a host: data goes through shared memory, barriers over TCP.
    shm: Option<SharedMemory>,
    /// What [`Ring::grad_dtype`] reports: the format gradients are averaged in.
    grad_dtype: GradDtype,
}

/// How to form a ring, beyond the public arguments.
#[derive(Debug, Clone)]
struct Options {
    /// Whether this rank agrees to shared memory (every rank must).
    shm: bool,
    /// This rank's host identity; `None` detects it.
    host: Option<String>,
}

impl Ring {
    /// Forms the ring. `listener` is this rank's bound data-plane socket, `addrs[r]` the
    /// data-plane address of rank r (from the rendezvous), `token` the run token.
    pub fn connect(
        rank: usize,
        world: usize,
        listener: &TcpListener,
        addrs: &[SocketAddr],
        token: &str,
        timeouts: RingTimeouts,
    ) -> Result<Ring, RingError> {
        let env = std::env::var("ANVIL_RING_SHM").ok();
        let options = Options {
            shm: shm::wanted_by_env(env.as_deref()),
            host: None,
        };
        Self::connect_with(rank, world, listener, addrs, token, timeouts, options)
    }

    fn connect_with(
        rank: usize,
        world: usize,
        listener: &TcpListener,
        addrs: &[SocketAddr],
        token: &str,
        timeouts: RingTimeouts,
        options: Options,
    ) -> Result<Ring, RingError> {
        if world == 0 || rank >= world || addrs.len() != world {
            return Err(RingError::BadShape {
                rank,
                world,
                addrs: addrs.len(),
            });
        }
        if world == 1 {
            return Ok(Ring {
                rank,
                world,
                next: None,
                prev: None,
                shm: None,
                grad_dtype: GradDtype::F32,
            });
        }
        let next_rank = (rank + 1) % world;
        let prev_rank = (rank + world - 1) % world;

        // Connect forward on a helper thread while accepting from behind here; with two ranks
        // both neighbours are the same peer, on two separate sockets.
        let next_addr = addrs[next_rank];
        let token_owned = token.to_string();
        let connector = std::thread::spawn(move || {
            handshake::connect_forward(rank, world, next_rank, next_addr, &token_owned, timeouts)
        });
        let prev = handshake::accept_backward(rank, world, prev_rank, listener, token, timeouts);
        let next = connector.join().map_err(|_| RingError::Refused {
            rank,
            reason: "connector thread panicked".into(),
        })??;
        let mut prev = prev?;
        let mut next = next;
        for s in [&next, &prev] {
            s.set_nodelay(true)
                .map_err(|e| RingError::Socket(e, rank))?;
            s.set_read_timeout(Some(timeouts.io))
                .map_err(|e| RingError::Socket(e, rank))?;
            s.set_write_timeout(Some(timeouts.io))
                .map_err(|e| RingError::Socket(e, rank))?;
        }
        // Every rank takes part even when it does not want shared memory, so that all agree.
        let host = if options.shm {
            options.host.or_else(shm::host_identity)
        } else {
            None
        };
        let mut links = Links {
            next: &mut next,
            prev: &mut prev,
        };
        let shm =
            SharedMemory::negotiate(rank, world, token, addrs, options.shm, host, &mut links)?;
        Ok(Ring {
            rank,
            world,
            next: Some(next),
            prev: Some(prev),
            shm,
            grad_dtype: GradDtype::F32,
        })
    }

    /// Whether all-reduces move data through same-host shared memory rather than TCP.
    pub fn uses_shared_memory(&self) -> bool {
        self.shm.is_some()
    }

    pub fn rank(&self) -> usize {
        self.rank
    }

    pub fn world(&self) -> usize {
        self.world
    }

    /// The format gradients are averaged in (set from the run's launch options; fp32 unless
    /// `--grad-reduce-dtype bf16`).
    pub fn grad_dtype(&self) -> GradDtype {
        self.grad_dtype
    }

    pub fn set_grad_dtype(&mut self, dtype: GradDtype) {
        self.grad_dtype = dtype;
    }

    /// Replaces `buf` on every rank by the element-wise mean over ranks.
    pub fn all_reduce_mean(&mut self, buf: &mut [f32]) -> Result<(), RingError> {
        self.all_reduce_mean_as(buf, GradDtype::F32)
    }

    /// The mean with the data in `dtype` on the way. Under bf16 each rank's values are rounded
    /// to bf16 first, partial sums cross TCP as bf16, and the owner rounds the mean to bf16
    /// before passing it on, so every rank ends with the same bf16 values (held in f32).
    pub fn all_reduce_mean_as(
        &mut self,
        buf: &mut [f32],
        dtype: GradDtype,
    ) -> Result<(), RingError> {
        let scale = 1.0 / self.world as f32;
        match dtype {
            GradDtype::F32 => self.all_reduce(buf, dtype, &|owned: &mut [f32]| {
                owned.iter_mut().for_each(|v| *v *= scale)
            }),
            GradDtype::Bf16 => {
                kernels::precision::round_slice(kernels::Precision::Bf16Mixed, buf);
                self.all_reduce(buf, dtype, &|owned: &mut [f32]| {
                    owned.iter_mut().for_each(|v| *v *= scale);
                    kernels::precision::round_slice(kernels::Precision::Bf16Mixed, owned);
                })
            }
        }
    }

    /// Replaces `buf` on every rank by the element-wise sum over ranks.
    pub fn all_reduce_sum(&mut self, buf: &mut [f32]) -> Result<(), RingError> {
        self.all_reduce(buf, GradDtype::F32, &|_: &mut [f32]| {})
    }

    /// `finish_owned` turns fully reduced elements into final ones, element by element.
    fn all_reduce(
        &mut self,
        buf: &mut [f32],
        wire: GradDtype,
        finish_owned: &dyn Fn(&mut [f32]),
    ) -> Result<(), RingError> {
        if self.world == 1 {
            finish_owned(buf);
            return Ok(());
        }
        let result = self.all_reduce_any(buf, wire, finish_owned);
        if let Err(e) = &result {
            if !matches!(e, RingError::Mismatch { .. }) {
                // The ring is out of step now. Closing both sockets makes the neighbours fail
                // at once (and theirs in turn) instead of waiting out the I/O timeout.
                for s in [&self.next, &self.prev].into_iter().flatten() {
                    let _ = s.shutdown(std::net::Shutdown::Both);
                }
            }
        }
        result
    }

    /// Shared memory when the ring has it (and every rank can use it for this call), else TCP.
    /// `wire` is the format on TCP; shared memory moves f32 (under bf16 the inputs and results
    /// are bf16 values already, so only the partial sums are exact there).
    fn all_reduce_any(
        &mut self,
        buf: &mut [f32],
        wire: GradDtype,
        finish_owned: &dyn Fn(&mut [f32]),
    ) -> Result<(), RingError> {
        let (Some(next), Some(prev)) = (self.next.as_mut(), self.prev.as_mut()) else {
            finish_owned(buf);
            return Ok(());
        };
        let mut links = Links { next, prev };
        if let Some(shm) = self.shm.as_mut() {
            if let Outcome::Done = shm.all_reduce(&mut links, buf, finish_owned)? {
                return Ok(());
            }
        }
        tcp::all_reduce(&mut links, self.rank, self.world, buf, wire, finish_owned)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMEOUTS: RingTimeouts = RingTimeouts {
        connect: Duration::from_secs(3),
        io: Duration::from_secs(10),
    };

    /// How the test forms its ring.
    #[derive(Clone)]
    struct Setup {
        tokens: Vec<String>,
        /// Per rank: whether it agrees to shared memory; `None` goes through `Ring::connect`.
        shm: Option<Vec<bool>>,
        /// Per rank host identity (defaults to the real one).
        hosts: Option<Vec<String>>,
        timeouts: RingTimeouts,
    }

    impl Setup {
        fn new(world: usize) -> Setup {
            Setup {
                tokens: vec!["tok".into(); world],
                shm: None,
                hosts: None,
                timeouts: TIMEOUTS,
            }
        }

        fn via(world: usize, transport: Transport) -> Setup {
            Setup {
                shm: Some(vec![transport == Transport::Shm; world]),
                ..Setup::new(world)
            }
        }
    }

    #[derive(Debug, Clone, Copy, PartialEq)]
    enum Transport {
        Shm,
        Tcp,
    }

    fn bind(world: usize) -> (Vec<TcpListener>, Vec<SocketAddr>) {
        let listeners: Vec<TcpListener> = (0..world)
            .map(|_| TcpListener::bind("127.0.0.1:0").unwrap())
            .collect();
        let addrs = listeners.iter().map(|l| l.local_addr().unwrap()).collect();
        (listeners, addrs)
    }

    /// Forms a ring on loopback threads as `setup` says and runs `f(rank, ring)` on each rank.
    fn run_ranks<T: Send + 'static>(
        listeners: Vec<TcpListener>,
        addrs: Vec<SocketAddr>,
        setup: Setup,
        f: impl Fn(usize, Result<Ring, RingError>) -> T + Send + Sync + Copy + 'static,
    ) -> Vec<T> {
        let world = listeners.len();
        let handles: Vec<_> = listeners
            .into_iter()
            .enumerate()
            .map(|(rank, listener)| {
                let addrs = addrs.clone();
                let setup = setup.clone();
                std::thread::spawn(move || {
                    let token = &setup.tokens[rank];
                    let ring = match &setup.shm {
                        None => {
                            Ring::connect(rank, world, &listener, &addrs, token, setup.timeouts)
                        }
                        Some(shm) => Ring::connect_with(
                            rank,
                            world,
                            &listener,
                            &addrs,
                            token,
                            setup.timeouts,
                            Options {
                                shm: shm[rank],
                                host: setup.hosts.as_ref().map(|h| h[rank].clone()),
                            },
                        ),
                    };
                    f(rank, ring)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    }

    fn with_setup<T: Send + 'static>(
        world: usize,
        setup: Setup,
        f: impl Fn(usize, Result<Ring, RingError>) -> T + Send + Sync + Copy + 'static,
    ) -> Vec<T> {
        let (listeners, addrs) = bind(world);
        run_ranks(listeners, addrs, setup, f)
    }

    /// Forms a ring of `world` ranks through `Ring::connect` and runs `f` on each.
    fn with_ring<T: Send + 'static>(
        world: usize,
        tokens: Vec<String>,
        f: impl Fn(Result<Ring, RingError>) -> T + Send + Sync + Copy + 'static,
    ) -> Vec<T> {
        let setup = Setup {
            tokens,
            ..Setup::new(world)
        };
        with_setup(world, setup, move |_, ring| f(ring))
    }

    fn input(rank: usize, len: usize) -> Vec<f32> {
        (0..len)
            .map(|i| ((i * 7 + rank * 13) % 101) as f32 * 0.25 - 3.0)
            .collect()
    }

    /// Asserts `results` (one buffer per rank) are bit-identical and equal to the mean of the
    /// inputs within float tolerance.
    fn check_mean(results: &[Vec<f32>], len: usize, what: &str) {
        let world = results.len();
        let inputs: Vec<Vec<f32>> = (0..world).map(|r| input(r, len)).collect();
        for (rank, got) in results.iter().enumerate() {
            assert_eq!(got.len(), len, "{what}: rank {rank} length");
            for (i, g) in got.iter().enumerate() {
                let e = inputs.iter().map(|v| v[i] as f64).sum::<f64>() / world as f64;
                assert!(
                    (*g as f64 - e).abs() <= 1e-5 * e.abs().max(1.0),
                    "{what} rank {rank} [{i}]: {g} vs {e}"
                );
            }
            // Replicas must be bit-identical, not merely close.
            assert_eq!(got, &results[0], "{what}: rank {rank} differs from rank 0");
        }
    }

    /// Runs one mean all-reduce of `input(rank, len)` per rank over `transport`.
    fn mean_via(world: usize, len: usize, transport: Transport) -> Vec<Vec<f32>> {
        with_setup(world, Setup::via(world, transport), move |rank, ring| {
            let mut ring = ring.unwrap();
            assert_eq!(
                ring.uses_shared_memory(),
                transport == Transport::Shm && world > 1,
                "world {world}: wrong transport"
            );
            let mut buf = input(rank, len);
            ring.all_reduce_mean(&mut buf).unwrap();
            buf
        })
    }

    /// Under bf16 (the wire format of `--grad-reduce-dtype bf16`), over TCP and shared memory:
    /// every rank holds the same bf16 values, each within bf16 rounding of the exact mean, and
    /// they are not simply the fp32 result (the rounding really happens).
    #[test]
    fn bf16_mean_is_a_bf16_value_near_the_exact_mean_on_every_rank() {
        fn bf16_input(rank: usize, len: usize) -> Vec<f32> {
            input(rank, len).iter().map(|x| x * 1.0031).collect()
        }
        for transport in [Transport::Tcp, Transport::Shm] {
            for world in [2, 3] {
                for len in [5, 1000, 100_003] {
                    let results =
                        with_setup(world, Setup::via(world, transport), move |rank, ring| {
                            let mut ring = ring.unwrap();
                            let mut buf = bf16_input(rank, len);
                            ring.all_reduce_mean_as(&mut buf, GradDtype::Bf16).unwrap();
                            buf
                        });
                    let what = format!("{transport:?} world {world} len {len}");
                    let inputs: Vec<Vec<f32>> = (0..world).map(|r| bf16_input(r, len)).collect();
                    let mut differs_from_f32 = 0;
                    for (i, g) in results[0].iter().enumerate() {
                        let e = inputs.iter().map(|v| v[i] as f64).sum::<f64>() / world as f64;
                        let scale = inputs
                            .iter()
                            .map(|v| v[i].abs() as f64)
                            .fold(e.abs(), f64::max);
                        // One rounding of each input, world - 1 of partial sums, one of the mean.
                        let bound = (world as f64 + 1.0) * scale * 2f64.powi(-8);
                        assert!((*g as f64 - e).abs() <= bound, "{what} [{i}]: {g} vs {e}");
                        assert_eq!(g.to_bits() & 0xFFFF, 0, "{what} [{i}]: {g} is not bf16");
                        differs_from_f32 += usize::from((*g as f64 - e).abs() > 1e-5 * e.abs());
                    }
                    for (rank, got) in results.iter().enumerate() {
                        assert_eq!(got, &results[0], "{what}: rank {rank} differs from rank 0");
                    }
                    assert!(differs_from_f32 > 0, "{what}: no element was rounded");
                }
            }
        }
    }

    #[test]
    fn mean_matches_a_direct_sum_for_many_shapes() {
        for world in [1, 2, 3, 4] {
            for len in [0, 1, 3, 5, 1000, 100_003] {
                let results = with_ring(world, vec!["tok".into(); world], move |ring| {
                    let mut ring = ring.unwrap();
                    let mut buf = input(ring.rank(), len);
                    ring.all_reduce_mean(&mut buf).unwrap();
                    buf
                });
                check_mean(&results, len, &format!("connect, world {world} len {len}"));
            }
        }
    }

    #[test]
    fn shm_and_tcp_paths_give_the_same_mean() {
        for world in [2, 3, 4] {
            // Lengths below, at and not divisible by the world size, one beyond a piece.
            for len in [0, 1, 2, 3, 5, 1000, 16 * 1024 + 3, 100_003] {
                let shm = mean_via(world, len, Transport::Shm);
                let tcp = mean_via(world, len, Transport::Tcp);
                check_mean(&shm, len, &format!("shm world {world} len {len}"));
                check_mean(&tcp, len, &format!("tcp world {world} len {len}"));
                if world == 2 {
                    // Two addends sum the same in either order, so the paths agree exactly.
                    assert_eq!(shm[0], tcp[0], "world 2 len {len}: shm and tcp differ");
                }
            }
        }
    }

    #[test]
    fn buffers_of_changing_size_reuse_and_grow_the_segments() {
        for transport in [Transport::Shm, Transport::Tcp] {
            let results = with_setup(3, Setup::via(3, transport), move |rank, ring| {
                let mut ring = ring.unwrap();
                assert_eq!(ring.uses_shared_memory(), transport == Transport::Shm);
                [10, 1000, 5, 300_001, 0, 7, 1_000_000, 64]
                    .into_iter()
                    .map(|len| {
                        let mut buf = input(rank, len);
                        ring.all_reduce_mean(&mut buf).unwrap();
                        buf
                    })
                    .collect::<Vec<_>>()
            });
            for call in 0..results[0].len() {
                let per_rank: Vec<Vec<f32>> = results.iter().map(|r| r[call].clone()).collect();
                let len = per_rank[0].len();
                check_mean(&per_rank, len, &format!("{transport:?} call {call}"));
            }
        }
    }

    #[test]
    fn repeated_reductions_reuse_the_ring() {
        for transport in [Transport::Shm, Transport::Tcp] {
            let results = with_setup(3, Setup::via(3, transport), |_, ring| {
                let mut ring = ring.unwrap();
                let mut total = 0.0;
                for step in 0..20 {
                    let mut buf = vec![(ring.rank() + step) as f32; 17];
                    ring.all_reduce_sum(&mut buf).unwrap();
                    total += buf[16];
                }
                total
            });
            // sum over steps of (0+1+2 + 3*step) = 20*3 + 3*190
            assert!(
                results.iter().all(|t| *t == 630.0),
                "{transport:?}: {results:?}"
            );
        }
    }

    /// One all-reduce of `len` floats per rank under `setup`: every rank must have fallen back
    /// to TCP, and the mean must be right.
    fn assert_tcp_mean(world: usize, setup: Setup, len: usize, what: &str) {
        let results = with_setup(world, setup, move |rank, ring| {
            let mut ring = ring.unwrap();
            let mut buf = input(rank, len);
            ring.all_reduce_mean(&mut buf).unwrap();
            (ring.uses_shared_memory(), buf)
        });
        assert!(results.iter().all(|(shm, _)| !shm), "{what}");
        let bufs: Vec<Vec<f32>> = results.into_iter().map(|(_, b)| b).collect();
        check_mean(&bufs, len, what);
    }

    #[test]
    fn ranks_on_different_hosts_use_tcp() {
        let setup = Setup {
            hosts: Some(vec!["a/1".into(), "a/1".into(), "b/1".into()]),
            ..Setup::via(3, Transport::Shm)
        };
        assert_tcp_mean(3, setup, 1001, "mixed hosts");
    }

    #[test]
    fn one_rank_declining_shared_memory_makes_all_use_tcp() {
        let setup = Setup {
            shm: Some(vec![true, false, true, true]),
            ..Setup::new(4)
        };
        assert_tcp_mean(4, setup, 999, "one rank declined");
    }

    #[test]
    fn the_env_switch_forces_tcp() {
        for off in ["0", "false", "OFF", " no "] {
            assert!(!shm::wanted_by_env(Some(off)), "{off}");
        }
        for on in [None, Some("1"), Some("yes"), Some("")] {
            assert!(shm::wanted_by_env(on), "{on:?}");
        }
    }

    /// Is `e` a lost peer noticed through a closed connection (not a timeout)?
    fn lost_by_disconnect(e: &RingError) -> bool {
        match e {
            RingError::PeerLost { source, .. } => !matches!(
                source.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ),
            _ => false,
        }
    }

    #[test]
    fn a_peer_that_dies_mid_all_reduce_is_reported_as_lost() {
        // A long I/O timeout: the survivors must notice the closed sockets, not time out.
        let timeouts = RingTimeouts {
            connect: Duration::from_secs(3),
            io: Duration::from_secs(60),
        };
        for transport in [Transport::Shm, Transport::Tcp] {
            let setup = Setup {
                timeouts,
                ..Setup::via(4, transport)
            };
            let results = with_setup(4, setup, move |rank, ring| {
                let mut ring = ring.unwrap();
                let mut buf = input(rank, 300_000);
                // A first all-reduce that everyone finishes.
                ring.all_reduce_mean(&mut buf).unwrap();
                if rank == 2 {
                    if let (Some(shm), Some(next), Some(prev)) =
                        (ring.shm.as_mut(), ring.next.as_mut(), ring.prev.as_mut())
                    {
                        // Gets past the first barrier of the next all-reduce, then dies.
                        let mut links = Links { next, prev };
                        assert!(shm.fill_only(&mut links, &buf).unwrap());
                    }
                    drop(ring);
                    return None;
                }
                Some(ring.all_reduce_mean(&mut buf).err())
            });
            for (rank, r) in results.iter().enumerate() {
                if rank == 2 {
                    continue;
                }
                match r {
                    Some(Some(e)) => assert!(
                        lost_by_disconnect(e),
                        "{transport:?} rank {rank}: expected PeerLost by disconnect, got {e}"
                    ),
                    other => panic!("{transport:?} rank {rank}: expected an error, got {other:?}"),
                }
            }
        }
    }

    #[test]
    fn a_stalled_peer_times_out_instead_of_hanging() {
        for transport in [Transport::Shm, Transport::Tcp] {
            let setup = Setup {
                timeouts: RingTimeouts {
                    connect: Duration::from_secs(3),
                    io: Duration::from_millis(300),
                },
                ..Setup::via(2, transport)
            };
            let results = with_setup(2, setup, |rank, ring| {
                let mut ring = ring.unwrap();
                let mut buf = input(rank, 1000);
                if rank == 1 {
                    std::thread::sleep(Duration::from_millis(1500));
                }
                ring.all_reduce_mean(&mut buf).err().map(|e| e.to_string())
            });
            assert!(
                results[0]
                    .as_deref()
                    .is_some_and(|e| e.contains("lost rank 1")),
                "{transport:?}: {results:?}"
            );
            // The late rank finds the ring closed rather than waiting for its own timeout.
            assert!(results[1].is_some(), "{transport:?}: {results:?}");
        }
    }

    #[test]
    fn ranks_passing_different_lengths_get_an_error_not_a_crash() {
        let results = with_setup(3, Setup::via(3, Transport::Shm), |rank, ring| {
            let mut ring = ring.unwrap();
            assert!(ring.uses_shared_memory());
            // Rank 1's buffer is far longer than the others' segments.
            let len = if rank == 1 { 1_000_000 } else { 10 };
            let mut buf = input(rank, len);
            let err = ring.all_reduce_mean(&mut buf).err();
            // Every rank learned of the disagreement, so the ring is still in step.
            let mut again = input(rank, 77);
            ring.all_reduce_mean(&mut again).unwrap();
            (err.map(|e| e.to_string()), again)
        });
        for (rank, (err, _)) in results.iter().enumerate() {
            assert!(
                err.as_deref().is_some_and(|e| e.contains("disagree")),
                "rank {rank}: {err:?}"
            );
        }
        let bufs: Vec<Vec<f32>> = results.into_iter().map(|(_, b)| b).collect();
        check_mean(&bufs, 77, "after a disagreement");
    }

    #[test]
    fn segments_replace_stale_files_and_leave_no_names_behind() {
        let (listeners, addrs) = bind(3);
        let paths: Vec<PathBuf> = (0..3)
            .map(|r| shm::segment_path("tok", 3, &addrs, r))
            .collect();
        // A crashed earlier incarnation of this ring left rank 0's segment behind.
        std::fs::write(&paths[0], b"stale").unwrap();
        let results = run_ranks(
            listeners,
            addrs,
            Setup::via(3, Transport::Shm),
            |rank, ring| {
                let mut ring = ring.unwrap();
                let mut buf = input(rank, 5000);
                ring.all_reduce_mean(&mut buf).unwrap();
                (ring.uses_shared_memory(), buf)
            },
        );
        assert!(results.iter().all(|(shm, _)| *shm));
        for p in &paths {
            assert!(!p.exists(), "{} still exists", p.display());
        }
        let bufs: Vec<Vec<f32>> = results.into_iter().map(|(_, b)| b).collect();
        check_mean(&bufs, 5000, "after replacing a stale segment");
    }

    #[test]
    fn a_peer_with_the_wrong_token_is_refused_with_a_reason() {
        let results = with_ring(2, vec!["right".into(), "wrong".into()], |ring| {
            ring.err().map(|e| e.to_string())
        });
        let all = format!("{results:?}");
        assert!(all.contains("wrong run token"), "{all}");
    }

    #[test]
    fn a_missing_peer_times_out_naming_it() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let dead = TcpListener::bind("127.0.0.1:0").unwrap();
        let addrs = vec![listener.local_addr().unwrap(), dead.local_addr().unwrap()];
        drop(dead);
        let timeouts = RingTimeouts {
            connect: Duration::from_millis(300),
            io: Duration::from_secs(1),
        };
        let err = Ring::connect(0, 2, &listener, &addrs, "t", timeouts)
            .err()
            .expect("must fail");
        let msg = err.to_string();
        assert!(msg.contains("rank 1"), "{msg}");
    }

    #[test]
    fn chunks_cover_exactly() {
        for (len, n) in [(10, 3), (2, 4), (0, 2), (7, 7)] {
            let c = chunk_ranges(len, n);
            assert_eq!(c.len(), n);
            assert_eq!(c[0].start, 0);
            assert_eq!(c[n - 1].end, len);
            assert!(c.windows(2).all(|w| w[0].end == w[1].start));
        }
    }
}
