//! The ring all-reduce over TCP: reduce-scatter, then all-gather, one chunk per rank.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::ops::Range;

use super::error::RingError;
use crate::sync::GradDtype;

/// Bytes received per read-and-add pass; large enough to amortize syscalls, small enough to stay
/// in cache while adding.
const SEGMENT_BYTES: usize = 256 * 1024;

/// The two ring sockets: to rank + 1 and from rank - 1.
pub(crate) struct Links<'a> {
    pub next: &'a mut TcpStream,
    pub prev: &'a mut TcpStream,
}

/// Replaces `buf` by the reduction over ranks: `world - 1` reduce-scatter steps leave rank r
/// owning the complete sum of chunk r + 1, `finish_owned` turns that into final values, and
/// `world - 1` all-gather steps pass the owned chunks around. Every element is reduced by
/// exactly one rank and copied to the rest, so replicas stay bit-identical.
pub(crate) fn all_reduce(
    links: &mut Links<'_>,
    rank: usize,
    world: usize,
    buf: &mut [f32],
    wire: GradDtype,
    finish_owned: &dyn Fn(&mut [f32]),
) -> Result<(), RingError> {
    let n = world;
    let chunks = chunk_ranges(buf.len(), n);
    let r = rank;
    // Reduce-scatter: at step s send chunk (r - s), receive and add chunk (r - s - 1).
    for s in 0..n - 1 {
        let send = chunks[(r + n - s) % n].clone();
        let recv = chunks[(r + 2 * n - s - 1) % n].clone();
        exchange(links, rank, world, buf, send, recv, wire, true)?;
    }
    // Rank r now owns the complete chunk (r + 1).
    let owned = chunks[(r + 1) % n].clone();
    finish_owned(&mut buf[owned]);
    // All-gather: at step s send chunk (r + 1 - s), receive chunk (r - s).
    for s in 0..n - 1 {
        let send = chunks[(r + 1 + n - s) % n].clone();
        let recv = chunks[(r + n - s) % n].clone();
        exchange(links, rank, world, buf, send, recv, wire, false)?;
    }
    Ok(())
}

/// Sends `buf[send]` forward while receiving into `buf[recv]` from behind (adding when
/// `add`), both in `wire` format. The two ranges never overlap.
#[allow(clippy::too_many_arguments)]
fn exchange(
    links: &mut Links<'_>,
    rank: usize,
    n: usize,
    buf: &mut [f32],
    send: Range<usize>,
    recv: Range<usize>,
    wire: GradDtype,
    add: bool,
) -> Result<(), RingError> {
    let (send_buf, recv_buf) = disjoint(buf, send, recv);
    let (next, prev) = (&mut *links.next, &mut *links.prev);
    std::thread::scope(|scope| {
        let sender = scope.spawn(move || match wire {
            GradDtype::F32 => next.write_all(bytemuck::cast_slice(send_buf)),
            GradDtype::Bf16 => send_bf16(next, send_buf),
        });
        let received = match wire {
            GradDtype::F32 => receive_into(prev, recv_buf, add),
            GradDtype::Bf16 => receive_bf16_into(prev, recv_buf, add),
        }
        .map_err(|source| RingError::PeerLost {
            rank,
            peer: (rank + n - 1) % n,
            source,
        });
        let sent = match sender.join() {
            Ok(r) => r.map_err(|source| RingError::PeerLost {
                rank,
                peer: (rank + 1) % n,
                source,
            }),
            Err(_) => Err(RingError::Refused {
                rank,
                reason: "sender thread panicked".into(),
            }),
        };
        received.and(sent)
    })
}

/// Reads `out.len()` floats, adding them into `out` or overwriting it.
fn receive_into(stream: &mut TcpStream, out: &mut [f32], add: bool) -> std::io::Result<()> {
    if !add {
        return stream.read_exact(bytemuck::cast_slice_mut(out));
    }
    let mut staging = vec![0f32; (SEGMENT_BYTES / 4).min(out.len())];
    for dst in out.chunks_mut(staging.len().max(1)) {
        let seg = &mut staging[..dst.len()];
        stream.read_exact(bytemuck::cast_slice_mut(seg))?;
        for (d, s) in dst.iter_mut().zip(seg.iter()) {
            *d += *s;
        }
    }
    Ok(())
}

/// Writes `src` as bf16 (round to nearest even), a segment at a time: rounded in an f32
/// copy (vectorized where the CPU has AVX-512), then the high halves.
fn send_bf16(stream: &mut TcpStream, src: &[f32]) -> std::io::Result<()> {
    let len = (SEGMENT_BYTES / 2).min(src.len());
    let mut rounded = vec![0f32; len];
    let mut staging = vec![0u16; len];
    for piece in src.chunks(len.max(1)) {
        let r = &mut rounded[..piece.len()];
        r.copy_from_slice(piece);
        kernels::precision::round_slice(kernels::Precision::Bf16Mixed, r);
        let seg = &mut staging[..piece.len()];
        for (d, &x) in seg.iter_mut().zip(r.iter()) {
            *d = (x.to_bits() >> 16) as u16;
        }
        stream.write_all(bytemuck::cast_slice(seg))?;
    }
    Ok(())
}

/// Reads `out.len()` bf16 values, adding them into `out` (in f32) or overwriting it.
fn receive_bf16_into(stream: &mut TcpStream, out: &mut [f32], add: bool) -> std::io::Result<()> {
    let mut staging = vec![0u16; (SEGMENT_BYTES / 2).min(out.len())];
    for dst in out.chunks_mut(staging.len().max(1)) {
        let seg = &mut staging[..dst.len()];
        stream.read_exact(bytemuck::cast_slice_mut(seg))?;
        let widen = |s: u16| f32::from_bits(u32::from(s) << 16);
        // Two loops rather than a branch per element, so each vectorizes.
        if add {
            dst.iter_mut()
                .zip(seg.iter())
                .for_each(|(d, &s)| *d += widen(s));
        } else {
            dst.iter_mut()
                .zip(seg.iter())
                .for_each(|(d, &s)| *d = widen(s));
        }
    }
    Ok(())
}

/// Splits `len` elements into `n` contiguous ranges whose sizes differ by at most one.
pub fn chunk_ranges(len: usize, n: usize) -> Vec<Range<usize>> {
    let (base, extra) = (len / n, len % n);
    let mut start = 0;
    (0..n)
        .map(|i| {
            let size = base + usize::from(i < extra);
            let r = start..start + size;
            start += size;
            r
        })
        .collect()
}

/// Borrows two non-overlapping ranges of one slice, one shared and one mutable.
fn disjoint(buf: &mut [f32], a: Range<usize>, b: Range<usize>) -> (&[f32], &mut [f32]) {
    debug_assert!(a.end <= b.start || b.end <= a.start);
    if a.start < b.start {
        let (left, right) = buf.split_at_mut(b.start);
        (&left[a], &mut right[..b.end - b.start])
    } else {
        let (left, right) = buf.split_at_mut(a.start);
        (&right[..a.end - a.start], &mut left[b])
    }
}
