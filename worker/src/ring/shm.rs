//! Same-host shared-memory transport for the ring's all-reduce.
//!
//! When every rank of a ring runs on one host, moving gradients through TCP costs two kernel
//! copies per hop and 2(n-1) scheduling rounds; with more processes than cores that is mostly
//! context switching. Instead each rank owns a segment in `/dev/shm` that its peers map
//! read-only, and an all-reduce is:
//!
//! 1. copy the buffer into the own segment; barrier (which also checks that every rank passed
//!    the same length);
//! 2. rank r sums chunk r over all segments in rank order 0..n-1 (so every element is reduced by
//!    exactly one rank and replicas stay bit-identical), scales it and writes it back into its
//!    own segment; barrier;
//! 3. every rank copies chunk j from rank j's segment for all j; barrier, so no segment is
//!    overwritten by the next call while a peer still reads it.
//!
//! Barriers are a 24-byte message passed around the existing TCP ring twice: blocking reads,
//! no spinning (spinning loses badly with four processes on two cores), and a dead peer shows
//! up as EOF or a timeout on the socket, reported as [`RingError::PeerLost`].
//!
//! Setup happens once, over the already authenticated ring: ranks exchange a host identity and
//! only if all match (and none disabled shared memory) create their segments (mode 0600, a
//! stale file of the same name is replaced), exchange random nonces written into the segment
//! headers, open and verify each other's segments (this catches containers that share a kernel
//! but not `/dev/shm`), and then unlink the names: the memory lives exactly as long as the
//! processes holding it, even if they are killed. Any local failure makes every rank agree on
//! TCP instead; growing a segment that fails (say, a small `/dev/shm`) falls back to TCP for
//! that call.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::ops::Range;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{fence, Ordering};

use sha2::{Digest, Sha256};

use super::error::RingError;
use super::tcp::{chunk_ranges, Links};

/// Segment bytes before the data: a header page, so the data is page- and f32-aligned.
const HEADER: usize = 4096;
const HEADER_MAGIC: &[u8; 8] = b"ANVSHM01";
/// Floats reduced per pass: the accumulator (64 KiB) stays in cache while every peer's piece
/// is added into it.
const PIECE: usize = 16 * 1024;
/// Longest setup record accepted from a peer.
const MAX_RECORD: usize = 4096;

/// Barrier phases ("ANV" and a number, so a stray message is unlikely to match).
const TAG_FILLED: u32 = 0x414e_5601;
const TAG_REDUCED: u32 = 0x414e_5602;
const TAG_GATHERED: u32 = 0x414e_5603;
/// Barrier flag bits: `ALL_OK` survives only if every rank set it; `DISAGREE` is set by any rank
/// that saw a different length, phase or call number than its own.
const ALL_OK: u32 = 1;
const DISAGREE: u32 = 2;

/// Whether the environment allows shared memory: `ANVIL_RING_SHM=0` (or `false`, `off`, `no`)
/// forces TCP.
pub(crate) fn wanted_by_env(value: Option<&str>) -> bool {
    !matches!(
        value.map(|v| v.trim().to_ascii_lowercase()).as_deref(),
        Some("0" | "false" | "off" | "no")
    )
}

/// Identifies the kernel instance this process runs on; `None` where it cannot be told.
pub(crate) fn host_identity() -> Option<String> {
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").ok()?;
    Some(format!("{}/{}", host.trim(), boot.trim()))
}

/// `/dev/shm` path of `rank`'s segment for one ring; the same ring formed again after a crash
/// gets the same names, so a stale segment is found and replaced.
pub(crate) fn segment_path(
    token: &str,
    world: usize,
    addrs: &[SocketAddr],
    rank: usize,
) -> PathBuf {
    let mut h = Sha256::new();
    h.update(b"anvil ring shm\0");
    h.update(token.as_bytes());
    h.update((world as u64).to_le_bytes());
    for a in addrs {
        h.update([0]);
        h.update(a.to_string().as_bytes());
    }
    let digest = h.finalize();
    let hex: String = digest[..12].iter().map(|b| format!("{b:02x}")).collect();
    PathBuf::from(format!("/dev/shm/anvil-ring-{hex}-r{rank}"))
}

fn random_nonce() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    h.write_u128(now);
    h.write_u32(std::process::id());
    h.finish()
}

/// One `mmap`ed shared region, unmapped on drop. Empty (`len == 0`) maps nothing.
struct Mapping {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: the mapping is plain shared memory owned by this value; which process may touch which
// bytes when is ordered by the barriers, and mutation only happens through `&mut` owners.
unsafe impl Send for Mapping {}
unsafe impl Sync for Mapping {}

#[cfg(any(target_os = "linux", target_os = "android"))]
const POPULATE: libc::c_int = libc::MAP_POPULATE;
#[cfg(not(any(target_os = "linux", target_os = "android")))]
const POPULATE: libc::c_int = 0;

impl Mapping {
    fn empty() -> Mapping {
        Mapping {
            ptr: std::ptr::null_mut(),
            len: 0,
        }
    }

    fn new(file: &File, len: usize, writable: bool) -> std::io::Result<Mapping> {
        if len == 0 {
            return Ok(Mapping::empty());
        }
        let prot = if writable {
            libc::PROT_READ | libc::PROT_WRITE
        } else {
            libc::PROT_READ
        };
        // SAFETY: a fresh shared mapping of `len` bytes of an open file; the kernel picks the
        // address. Pre-faulting (MAP_POPULATE) keeps page faults out of the timed all-reduces.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                prot,
                libc::MAP_SHARED | POPULATE,
                file.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Mapping {
            ptr: ptr.cast(),
            len,
        })
    }

    /// How many floats of data the mapping holds.
    fn floats(&self) -> usize {
        self.len.saturating_sub(HEADER) / 4
    }

    /// The data floats in `range`.
    ///
    /// SAFETY: `range.end <= self.floats()`, and no process writes these bytes while the slice
    /// lives (the barriers guarantee it).
    unsafe fn slice(&self, range: Range<usize>) -> &[f32] {
        debug_assert!(range.start <= range.end && range.end <= self.floats());
        if range.is_empty() {
            return &[];
        }
        std::slice::from_raw_parts(
            self.ptr.add(HEADER).cast::<f32>().add(range.start),
            range.len(),
        )
    }

    /// Copies `src` into the data floats starting at `start`.
    ///
    /// SAFETY: the mapping is writable, `start + src.len() <= self.floats()`, and nobody reads
    /// or writes these bytes meanwhile.
    unsafe fn write(&self, start: usize, src: &[f32]) {
        debug_assert!(start + src.len() <= self.floats());
        if src.is_empty() {
            return;
        }
        std::ptr::copy_nonoverlapping(
            src.as_ptr(),
            self.ptr.add(HEADER).cast::<f32>().add(start),
            src.len(),
        );
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        if self.len > 0 {
            // SAFETY: exactly the region this value mapped; no slices into it outlive `self`.
            unsafe {
                libc::munmap(self.ptr.cast(), self.len);
            }
        }
    }
}

/// This rank's segment: created here, written here, read by the peers.
struct OwnSegment {
    file: File,
    path: PathBuf,
    /// (device, inode) of the file we created, so we never unlink someone else's.
    id: (u64, u64),
    linked: bool,
    map: Mapping,
}

impl OwnSegment {
    fn create(path: &Path, nonce: u64) -> std::io::Result<OwnSegment> {
        match std::fs::remove_file(path) {
            Ok(()) => tracing::info!(path = %path.display(), "removed a stale ring segment"),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)?;
        let meta = file.metadata()?;
        let mut seg = OwnSegment {
            file,
            path: path.to_path_buf(),
            id: (meta.dev(), meta.ino()),
            linked: true,
            map: Mapping::empty(),
        };
        // From here on, dropping `seg` removes the file again.
        seg.file.set_len(HEADER as u64)?;
        let mut header = [0u8; 16];
        header[..8].copy_from_slice(HEADER_MAGIC);
        header[8..].copy_from_slice(&nonce.to_le_bytes());
        seg.file.write_all_at(&header, 0)?;
        seg.map = Mapping::new(&seg.file, HEADER, true)?;
        Ok(seg)
    }

    /// Grows the segment so it holds at least `floats` floats. Space is reserved with
    /// `posix_fallocate`, so a full `/dev/shm` is an error here rather than a SIGBUS later.
    fn ensure_floats(&mut self, floats: usize) -> std::io::Result<()> {
        if floats <= self.map.floats() {
            return Ok(());
        }
        let too_big = || std::io::Error::other("buffer too large for a shared segment");
        let data = floats
            .checked_mul(4)
            .and_then(|b| b.checked_next_multiple_of(HEADER))
            .ok_or_else(too_big)?;
        let total = data.checked_add(HEADER).ok_or_else(too_big)?;
        let total_off = libc::off_t::try_from(total).map_err(|_| too_big())?;
        // SAFETY: plain syscall on our own open file descriptor.
        let rc = unsafe { libc::posix_fallocate(self.file.as_raw_fd(), 0, total_off) };
        if rc != 0 {
            return Err(std::io::Error::from_raw_os_error(rc));
        }
        // Map the new size before unmapping the old one, so a failure leaves a usable segment.
        self.map = Mapping::new(&self.file, total, true)?;
        Ok(())
    }

    /// Removes the name if it is still ours; the memory stays until every mapping is gone.
    fn unlink(&mut self) {
        if !self.linked {
            return;
        }
        self.linked = false;
        if let Ok(meta) = std::fs::symlink_metadata(&self.path) {
            if (meta.dev(), meta.ino()) == self.id {
                let _ = std::fs::remove_file(&self.path);
            }
        }
    }
}

impl Drop for OwnSegment {
    fn drop(&mut self) {
        self.unlink();
    }
}

/// A peer's segment, mapped read-only.
struct PeerSegment {
    file: File,
    map: Mapping,
}

impl PeerSegment {
    fn open(path: &Path, nonce: u64) -> std::io::Result<PeerSegment> {
        let file = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)?;
        let meta = file.metadata()?;
        // SAFETY: geteuid has no preconditions.
        if meta.uid() != unsafe { libc::geteuid() } {
            return Err(std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                format!("{} belongs to another user", path.display()),
            ));
        }
        let mut header = [0u8; 16];
        file.read_exact_at(&mut header, 0)?;
        if &header[..8] != HEADER_MAGIC || header[8..] != nonce.to_le_bytes() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!(
                    "{} is not the segment the peer announced (a different /dev/shm?)",
                    path.display()
                ),
            ));
        }
        let map = Mapping::new(&file, HEADER, false)?;
        Ok(PeerSegment { file, map })
    }

    /// Maps at least `floats` floats; the peer grew its file before the barrier that let us
    /// get here, so a shorter file is an error, never a read past its end.
    fn ensure_floats(&mut self, floats: usize) -> std::io::Result<()> {
        if floats <= self.map.floats() {
            return Ok(());
        }
        let size = usize::try_from(self.file.metadata()?.len())
            .map_err(|_| std::io::Error::other("peer segment size does not fit in memory"))?;
        let needed = floats
            .checked_mul(4)
            .and_then(|b| b.checked_add(HEADER))
            .ok_or_else(|| std::io::Error::other("buffer too large for a shared segment"))?;
        if size < needed {
            return Err(std::io::Error::other(format!(
                "peer segment holds {size} bytes, {needed} needed"
            )));
        }
        self.map = Mapping::new(&self.file, size, false)?;
        Ok(())
    }
}

/// What the shared-memory all-reduce did.
pub(crate) enum Outcome {
    Done,
    /// Every rank agreed to run this call over TCP instead (a segment could not grow).
    UseTcp,
}

/// The shared-memory state of one rank of a same-host ring.
pub(crate) struct SharedMemory {
    rank: usize,
    world: usize,
    own: OwnSegment,
    /// Indexed by rank; `None` at our own rank.
    peers: Vec<Option<PeerSegment>>,
    scratch: Vec<f32>,
    /// Calls so far; barriers compare it so ranks that fell out of step fail instead of mixing
    /// up two calls' data.
    calls: u64,
}

impl SharedMemory {
    /// Agrees with the peers on using shared memory and sets it up. `Ok(None)`: use TCP (all
    /// ranks reach the same answer). Errors only when a peer is lost meanwhile.
    pub(crate) fn negotiate(
        rank: usize,
        world: usize,
        token: &str,
        addrs: &[SocketAddr],
        wanted: bool,
        host: Option<String>,
        links: &mut Links<'_>,
    ) -> Result<Option<SharedMemory>, RingError> {
        let host = if wanted { host } else { None };
        let mut record = vec![u8::from(host.is_some())];
        record.extend_from_slice(host.unwrap_or_default().as_bytes());
        let records = allgather(rank, world, links, record)?;
        let first_host = records[0].get(1..);
        let same_host = records
            .iter()
            .all(|r| r.first() == Some(&1) && r.get(1..) == first_host);
        if !same_host {
            tracing::debug!(
                rank,
                "ring over TCP: not all ranks share a host and want shm"
            );
            return Ok(None);
        }

        let nonce = random_nonce();
        let own = OwnSegment::create(&segment_path(token, world, addrs, rank), nonce);
        if let Err(e) = &own {
            tracing::warn!(rank, error = %e, "cannot create a shared-memory segment; ring over TCP");
        }
        let mut record = vec![u8::from(own.is_ok())];
        record.extend_from_slice(&nonce.to_le_bytes());
        let records = allgather(rank, world, links, record)?;
        let nonces: Option<Vec<u64>> = records
            .iter()
            .map(|r| match r.as_slice() {
                [1, rest @ ..] => Some(u64::from_le_bytes(rest.try_into().ok()?)),
                _ => None,
            })
            .collect();
        let (Ok(mut own), Some(nonces)) = (own, nonces) else {
            return Ok(None);
        };

        let peers: std::io::Result<Vec<Option<PeerSegment>>> = (0..world)
            .map(|j| {
                if j == rank {
                    return Ok(None);
                }
                PeerSegment::open(&segment_path(token, world, addrs, j), nonces[j]).map(Some)
            })
            .collect();
        if let Err(e) = &peers {
            tracing::warn!(rank, error = %e, "cannot open a peer's shared-memory segment; ring over TCP");
        }
        let records = allgather(rank, world, links, vec![u8::from(peers.is_ok())])?;
        let peers = match peers {
            Ok(p) if records.iter().all(|r| r.as_slice() == [1]) => p,
            _ => return Ok(None),
        };
        // Everyone holds everyone's file open now; the names are no longer needed.
        own.unlink();
        tracing::info!(rank, world, "ring all-reduce through shared memory");
        Ok(Some(SharedMemory {
            rank,
            world,
            own,
            peers,
            scratch: vec![0.0; PIECE],
            calls: 0,
        }))
    }

    /// All-reduces `buf`; `finish` turns a fully reduced piece into its final value and must act
    /// element by element (it sees the owned chunk in pieces).
    pub(crate) fn all_reduce(
        &mut self,
        links: &mut Links<'_>,
        buf: &mut [f32],
        finish: &dyn Fn(&mut [f32]),
    ) -> Result<Outcome, RingError> {
        self.calls += 1;
        let len = buf.len();
        let (rank, n) = (self.rank, self.world);

        // 1. Fill our segment.
        let filled = match self.own.ensure_floats(len) {
            Ok(()) => {
                // SAFETY: the segment holds `len` floats and peers do not read it until the
                // barrier below.
                unsafe { self.own.map.write(0, buf) };
                true
            }
            Err(e) => {
                tracing::warn!(rank, floats = len, error = %e, "shared segment cannot grow; this all-reduce goes over TCP");
                false
            }
        };
        if !self.barrier(links, TAG_FILLED, len, filled)? {
            return Ok(Outcome::UseTcp);
        }

        // 2. Reduce our chunk from everyone's segment into ours.
        let chunks = chunk_ranges(len, n);
        let mapped = self
            .peers
            .iter_mut()
            .flatten()
            .try_for_each(|p| p.ensure_floats(len));
        let reduced = match mapped {
            Ok(()) => {
                self.reduce_owned(chunks[rank].clone(), finish);
                true
            }
            Err(e) => {
                tracing::warn!(rank, error = %e, "cannot map a peer's segment; this all-reduce goes over TCP");
                false
            }
        };
        // `buf` is untouched so far, so falling back to TCP here is still correct.
        if !self.barrier(links, TAG_REDUCED, len, reduced)? {
            return Ok(Outcome::UseTcp);
        }

        // 3. Gather every chunk from its owner.
        for (j, chunk) in chunks.iter().enumerate() {
            let map = self.map_of(j);
            // SAFETY: every segment holds `len` floats (checked above); owner j wrote chunk j
            // before the last barrier and nobody writes it until the next one.
            let src = unsafe { map.slice(chunk.clone()) };
            buf[chunk.clone()].copy_from_slice(src);
        }
        // Nobody may refill their segment while others still copy out of it.
        self.barrier(links, TAG_GATHERED, len, true)?;
        Ok(Outcome::Done)
    }

    fn map_of(&self, rank: usize) -> &Mapping {
        match self.peers.get(rank) {
            Some(Some(p)) => &p.map,
            _ => &self.own.map,
        }
    }

    /// Sums `chunk` over all segments in rank order, applies `finish`, and writes the result
    /// into our own segment, a cache-sized piece at a time.
    fn reduce_owned(&mut self, chunk: Range<usize>, finish: &dyn Fn(&mut [f32])) {
        let mut scratch = std::mem::take(&mut self.scratch);
        let mut start = chunk.start;
        while start < chunk.end {
            let end = (start + PIECE).min(chunk.end);
            let acc = &mut scratch[..end - start];
            for j in 0..self.world {
                // SAFETY: all segments hold the buffer (ensured before); during this phase each
                // rank writes only its own chunk of its own segment, and ours is written below,
                // after this borrow ends.
                let src = unsafe { self.map_of(j).slice(start..end) };
                if j == 0 {
                    acc.copy_from_slice(src);
                } else {
                    acc.iter_mut().zip(src).for_each(|(a, s)| *a += *s);
                }
            }
            finish(acc);
            // SAFETY: our own, writable segment; peers read chunk `rank` only after the next
            // barrier.
            unsafe { self.own.map.write(start, acc) };
            start = end;
        }
        self.scratch = scratch;
    }

    /// Waits until every rank has called it for the same phase of the same call. Returns
    /// whether every rank passed `ok`; errors if a peer is lost or the ranks disagree.
    fn barrier(
        &mut self,
        links: &mut Links<'_>,
        tag: u32,
        len: usize,
        ok: bool,
    ) -> Result<bool, RingError> {
        let (rank, n) = (self.rank, self.world);
        let mine = BarrierMsg {
            tag,
            flags: if ok { ALL_OK } else { 0 },
            len: len as u64,
            call: self.calls,
        };
        // Our segment writes must be visible before peers hear we arrived, and theirs before we
        // read after hearing back.
        fence(Ordering::SeqCst);
        // Lap one collects everyone's arrival and flags at rank 0; lap two tells everyone.
        let result = if rank == 0 {
            send(links, rank, n, &mine)?;
            let mut all = recv(links, rank, n)?;
            all.absorb(&mine);
            send(links, rank, n, &all)?;
            all
        } else {
            let mut partial = recv(links, rank, n)?;
            partial.absorb(&mine);
            send(links, rank, n, &partial)?;
            let mut all = recv(links, rank, n)?;
            all.absorb(&mine);
            if rank + 1 < n {
                send(links, rank, n, &all)?;
            }
            all
        };
        fence(Ordering::SeqCst);
        if result.flags & DISAGREE != 0 {
            return Err(RingError::Mismatch {
                rank,
                reason: format!(
                    "ranks disagree about the all-reduce (this rank has {len} floats, call \
                     {}): buffer lengths differ or a rank skipped a call",
                    self.calls
                ),
            });
        }
        Ok(result.flags & ALL_OK != 0)
    }

    /// Runs phase 1 and its barrier only, as a rank that dies mid all-reduce would.
    #[cfg(test)]
    pub(crate) fn fill_only(
        &mut self,
        links: &mut Links<'_>,
        buf: &[f32],
    ) -> Result<bool, RingError> {
        self.calls += 1;
        self.own
            .ensure_floats(buf.len())
            .map_err(|e| RingError::Socket(e, self.rank))?;
        // SAFETY: as in `all_reduce`.
        unsafe { self.own.map.write(0, buf) };
        self.barrier(links, TAG_FILLED, buf.len(), true)
    }
}

struct BarrierMsg {
    tag: u32,
    flags: u32,
    len: u64,
    call: u64,
}

impl BarrierMsg {
    fn absorb(&mut self, mine: &BarrierMsg) {
        if (self.tag, self.len, self.call) != (mine.tag, mine.len, mine.call) {
            self.flags |= DISAGREE;
        }
        if mine.flags & ALL_OK == 0 {
            self.flags &= !ALL_OK;
        }
    }
}

fn lost_next(rank: usize, n: usize) -> impl Fn(std::io::Error) -> RingError {
    move |source| RingError::PeerLost {
        rank,
        peer: (rank + 1) % n,
        source,
    }
}

fn lost_prev(rank: usize, n: usize) -> impl Fn(std::io::Error) -> RingError {
    move |source| RingError::PeerLost {
        rank,
        peer: (rank + n - 1) % n,
        source,
    }
}

fn send(links: &mut Links<'_>, rank: usize, n: usize, m: &BarrierMsg) -> Result<(), RingError> {
    let mut bytes = [0u8; 24];
    bytes[..4].copy_from_slice(&m.tag.to_le_bytes());
    bytes[4..8].copy_from_slice(&m.flags.to_le_bytes());
    bytes[8..16].copy_from_slice(&m.len.to_le_bytes());
    bytes[16..].copy_from_slice(&m.call.to_le_bytes());
    links.next.write_all(&bytes).map_err(lost_next(rank, n))
}

fn recv(links: &mut Links<'_>, rank: usize, n: usize) -> Result<BarrierMsg, RingError> {
    let mut b = [0u8; 24];
    links.prev.read_exact(&mut b).map_err(lost_prev(rank, n))?;
    let (tag, rest) = b.split_at(4);
    let (flags, rest) = rest.split_at(4);
    let (len, call) = rest.split_at(8);
    // The splits have exactly these lengths, so the conversions cannot fail.
    let u32_of = |s: &[u8]| s.try_into().map(u32::from_le_bytes).unwrap_or(0);
    let u64_of = |s: &[u8]| s.try_into().map(u64::from_le_bytes).unwrap_or(u64::MAX);
    Ok(BarrierMsg {
        tag: u32_of(tag),
        flags: u32_of(flags),
        len: u64_of(len),
        call: u64_of(call),
    })
}

/// Every rank's `mine`, indexed by rank, passed around the ring in `world - 1` steps.
fn allgather(
    rank: usize,
    world: usize,
    links: &mut Links<'_>,
    mine: Vec<u8>,
) -> Result<Vec<Vec<u8>>, RingError> {
    let mut records = vec![Vec::new(); world];
    let mut passing = mine.clone();
    records[rank] = mine;
    for step in 0..world - 1 {
        // Records are tiny, so the write completes before the peer reads; no helper thread.
        let len = (passing.len() as u32).to_le_bytes();
        links
            .next
            .write_all(&len)
            .and_then(|()| links.next.write_all(&passing))
            .map_err(lost_next(rank, world))?;
        let mut len = [0u8; 4];
        links
            .prev
            .read_exact(&mut len)
            .map_err(lost_prev(rank, world))?;
        let len = u32::from_le_bytes(len) as usize;
        if len > MAX_RECORD {
            return Err(RingError::Refused {
                rank,
                reason: format!("shared-memory setup record of {len} bytes"),
            });
        }
        let mut record = vec![0u8; len];
        links
            .prev
            .read_exact(&mut record)
            .map_err(lost_prev(rank, world))?;
        // At step s the record arriving from behind started at rank - s - 1.
        let origin = (rank + world - step - 1) % world;
        records[origin] = record.clone();
        passing = record;
    }
    Ok(records)
}
