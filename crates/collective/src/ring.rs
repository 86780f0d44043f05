//! The ring all-reduce and broadcast, written once over a [`RingLink`].

use crate::wire::{round_bf16, Wire};
use crate::CollectiveError;

/// Elements per message. Large enough to amortise per-message overhead, small enough that the
/// next segment is in flight while the previous one is being added (pipelining).
pub const SEGMENT: usize = 256 * 1024;

/// A rank's two neighbours: it sends to `rank + 1` and receives from `rank - 1` (mod world).
pub trait RingLink {
    /// This rank.
    fn rank(&self) -> usize;
    /// Number of ranks.
    fn world(&self) -> usize;
    /// Sends `data` to the next rank. Must not wait for the receiver (buffered or threaded), or
    /// a ring where everyone sends first would deadlock.
    fn send(&mut self, data: &[f32]) -> Result<(), CollectiveError>;
    /// Receives exactly `out.len()` elements from the previous rank.
    fn recv(&mut self, out: &mut [f32]) -> Result<(), CollectiveError>;
    /// Sends `data` as bfloat16: the receiver's [`Self::recv_bf16`] gets [`round_bf16`] of
    /// every value. This default rounds and sends f32 (a link between threads has no wire to
    /// save); the TCP ring puts 2 bytes an element on the wire, with the same values.
    fn send_bf16(&mut self, data: &[f32]) -> Result<(), CollectiveError> {
        let rounded: Vec<f32> = data.iter().map(|&v| round_bf16(v)).collect();
        self.send(&rounded)
    }
    /// Receives what the previous rank's [`Self::send_bf16`] sent.
    fn recv_bf16(&mut self, out: &mut [f32]) -> Result<(), CollectiveError> {
        self.recv(out)
    }
}

fn send_as<L: RingLink>(link: &mut L, data: &[f32], wire: Wire) -> Result<(), CollectiveError> {
    match wire {
        Wire::F32 => link.send(data),
        Wire::Bf16 => link.send_bf16(data),
    }
}

fn recv_as<L: RingLink>(link: &mut L, out: &mut [f32], wire: Wire) -> Result<(), CollectiveError> {
    match wire {
        Wire::F32 => link.recv(out),
        Wire::Bf16 => link.recv_bf16(out),
    }
}

/// Chunk `i` of `n` over `len` elements: `[i*len/n, (i+1)*len/n)`. Sizes differ by at most one
/// and may be zero when `len < n`.
pub fn chunk(len: usize, n: usize, i: usize) -> std::ops::Range<usize> {
    (i * len / n)..((i + 1) * len / n)
}

/// In-place ring all-reduce (sum). Reduce-scatter: in step `s`, send chunk `r - s`, receive chunk
/// `r - s - 1` and add it in; afterwards rank `r` holds the complete sum of chunk `r + 1`.
/// All-gather: in step `s`, send chunk `r + 1 - s`, receive chunk `r - s` and overwrite it.
///
/// Sends never block (see [`RingLink::send`]), so each step queues its chunk's segments and then
/// consumes the predecessor's: the transfer of later segments overlaps the addition of earlier ones.
pub fn all_reduce_sum<L: RingLink>(link: &mut L, buf: &mut [f32]) -> Result<(), CollectiveError> {
    all_reduce_sum_wire(link, buf, Wire::F32)
}

/// [`all_reduce_sum`] with every transfer in `wire`'s element type. With bfloat16 each hop of
/// the reduce-scatter rounds the partial sum it sends and the receiver adds its own f32 values
/// in f32; the owner of a finished chunk rounds it once more before the all-gather, so every
/// rank ends with the same (bfloat16-representable) values, bit for bit.
pub fn all_reduce_sum_wire<L: RingLink>(
    link: &mut L,
    buf: &mut [f32],
    wire: Wire,
) -> Result<(), CollectiveError> {
    let (n, len) = (link.world(), buf.len());
    reduce_in_chunks(link, buf, |k| chunk(len, n, k), wire)
}

/// The all-reduce (sum) of one bucket of a flat buffer: `bucket` holds elements
/// `offset..offset + bucket.len()` of a buffer of `total` elements, and every element ends
/// **bit-identical** to what [`all_reduce_sum_wire`] of the whole buffer gives it. The bucket is
/// cut at the flat buffer's chunk boundaries and each piece travels, and is added, exactly as
/// its chunk does in the flat ring (same ranks, same order of additions, same roundings), so
/// buckets reduced one by one, in any order, as the backward pass finishes them, reproduce the
/// flat all-reduce (the exactness #21's overlap needs). Every rank must call it with the same
/// `offset`, length and `total`.
pub fn all_reduce_sum_bucket<L: RingLink>(
    link: &mut L,
    bucket: &mut [f32],
    offset: usize,
    total: usize,
    wire: Wire,
) -> Result<(), CollectiveError> {
    let end = offset + bucket.len();
    if end > total {
        return Err(CollectiveError::Unsupported(format!(
            "bucket {offset}..{end} lies outside the flat buffer of {total} elements"
        )));
    }
    let n = link.world();
    reduce_in_chunks(
        link,
        bucket,
        |k| {
            let c = chunk(total, n, k);
            let (a, b) = (c.start.clamp(offset, end), c.end.clamp(offset, end));
            (a - offset)..(b - offset)
        },
        wire,
    )
}

/// The ring over `buf` with chunk `k` at `at(k)` (`k` in `0..world`; ranges in order, disjoint,
/// covering `buf`, possibly empty).
fn reduce_in_chunks<L: RingLink>(
    link: &mut L,
    buf: &mut [f32],
    at: impl Fn(usize) -> std::ops::Range<usize>,
    wire: Wire,
) -> Result<(), CollectiveError> {
    let (n, r) = (link.world(), link.rank());
    if n <= 1 {
        return Ok(());
    }
    let at = |k: isize| at(k.rem_euclid(n as isize) as usize);
    let widest = (0..n as isize).map(|k| at(k).len()).max().unwrap_or(0);
    let mut scratch = vec![0f32; SEGMENT.min(widest)];
    for s in 0..n as isize - 1 {
        for seg in segments(at(r as isize - s)) {
            send_as(link, &buf[seg], wire)?;
        }
        for seg in segments(at(r as isize - s - 1)) {
            let tmp = &mut scratch[..seg.len()];
            recv_as(link, tmp, wire)?;
            for (d, v) in buf[seg].iter_mut().zip(tmp.iter()) {
                *d += *v;
            }
        }
    }
    if wire == Wire::Bf16 {
        // The chunk this rank completed goes out rounded; its own copy must hold the same.
        for v in &mut buf[at(r as isize + 1)] {
            *v = round_bf16(*v);
        }
    }
    for s in 0..n as isize - 1 {
        for seg in segments(at(r as isize + 1 - s)) {
            send_as(link, &buf[seg], wire)?;
        }
        for seg in segments(at(r as isize - s)) {
            recv_as(link, &mut buf[seg], wire)?;
        }
    }
    Ok(())
}

/// A range cut into [`SEGMENT`]-sized pieces.
fn segments(r: std::ops::Range<usize>) -> impl Iterator<Item = std::ops::Range<usize>> {
    let end = r.end;
    (r.start..end)
        .step_by(SEGMENT)
        .map(move |s| s..(s + SEGMENT).min(end))
}

/// Pipelined broadcast along the ring from `root`: each rank receives a segment from its
/// predecessor and forwards it, except the rank just before the root.
pub fn broadcast<L: RingLink>(
    link: &mut L,
    buf: &mut [f32],
    root: usize,
) -> Result<(), CollectiveError> {
    let (n, r) = (link.world(), link.rank());
    if n <= 1 {
        return Ok(());
    }
    let last = (root + n - 1) % n;
    for seg in segments(0..buf.len()) {
        if r != root {
            link.recv(&mut buf[seg.clone()])?;
        }
        if r != last {
            link.send(&buf[seg])?;
        }
    }
    Ok(())
}
