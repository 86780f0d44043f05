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

/// The longest stripe: 64 Ki elements (256 KiB of f32).
pub const STRIPE: usize = 64 * 1024;

/// The stripe length of a buffer of `len` elements over `n` ranks: `len / n` rounded up (so a
/// small buffer is cut into `n` contiguous chunks, as the textbook ring does), at most
/// [`STRIPE`].
pub fn stripe_len(len: usize, n: usize) -> usize {
    len.div_ceil(n.max(1)).clamp(1, STRIPE)
}

/// The pieces of chunk `k` of `n` that lie in elements `start..end` of a buffer of `len`: chunk
/// `k` is every stripe `j` ([`stripe_len`] elements) with `j % n == k`. Interleaving the chunks
/// (rather than cutting the buffer into `n` contiguous ones) means any large enough part of the
/// buffer — a bucket of the overlapped all-reduce — holds some of every chunk, so reducing it
/// keeps every link of the ring busy in both directions (with contiguous chunks and two ranks,
/// a bucket inside one chunk travels one way, then back: half the bandwidth).
pub fn chunk_pieces(
    len: usize,
    n: usize,
    k: usize,
    start: usize,
    end: usize,
) -> impl Iterator<Item = std::ops::Range<usize>> {
    let l = stripe_len(len, n);
    let (first, last) = (start / l, end.div_ceil(l));
    (first..last)
        .filter(move |j| j % n.max(1) == k)
        .map(move |j| (j * l).max(start)..((j + 1) * l).min(end))
        .filter(|r| !r.is_empty())
}

/// In-place ring all-reduce (sum) over the chunks of [`chunk_pieces`]. Reduce-scatter: in step
/// `s`, send chunk `r - s`, receive chunk `r - s - 1` and add it in; afterwards rank `r` holds
/// the complete sum of chunk `r + 1`.
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
    reduce_in_chunks(
        link,
        buf,
        |k| chunk_pieces(len, n, k, 0, len).collect(),
        wire,
    )
}

/// The all-reduce (sum) of one bucket of a flat buffer: `bucket` holds elements
/// `offset..offset + bucket.len()` of a buffer of `total` elements, and every element ends
/// **bit-identical** to what [`all_reduce_sum_wire`] of the whole buffer gives it. The bucket is
/// cut into the flat buffer's chunk pieces ([`chunk_pieces`]) and each piece travels, and is
/// added, exactly as in the flat ring (same ranks, same order of additions, same roundings), so
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
            chunk_pieces(total, n, k, offset, end)
                .map(|r| (r.start - offset)..(r.end - offset))
                .collect()
        },
        wire,
    )
}

/// The ring over `buf` with chunk `k` at the ranges `at(k)` (`k` in `0..world`; disjoint,
/// together covering `buf`, any may be empty).
fn reduce_in_chunks<L: RingLink>(
    link: &mut L,
    buf: &mut [f32],
    at: impl Fn(usize) -> Vec<std::ops::Range<usize>>,
    wire: Wire,
) -> Result<(), CollectiveError> {
    let (n, r) = (link.world(), link.rank());
    if n <= 1 {
        return Ok(());
    }
    let chunks: Vec<Vec<std::ops::Range<usize>>> = (0..n).map(&at).collect();
    let at = |k: isize| {
        chunks[k.rem_euclid(n as isize) as usize]
            .iter()
            .cloned()
            .flat_map(segments)
    };
    let widest = (0..n as isize)
        .flat_map(at)
        .map(|s| s.len())
        .max()
        .unwrap_or(0);
    let mut scratch = vec![0f32; widest];
    for s in 0..n as isize - 1 {
        for seg in at(r as isize - s) {
            send_as(link, &buf[seg], wire)?;
        }
        for seg in at(r as isize - s - 1) {
            let tmp = &mut scratch[..seg.len()];
            recv_as(link, tmp, wire)?;
            for (d, v) in buf[seg].iter_mut().zip(tmp.iter()) {
                *d += *v;
            }
        }
    }
    if wire == Wire::Bf16 {
        // The chunk this rank completed goes out rounded; its own copy must hold the same.
        for seg in at(r as isize + 1) {
            for v in &mut buf[seg] {
                *v = round_bf16(*v);
            }
        }
    }
    for s in 0..n as isize - 1 {
        for seg in at(r as isize + 1 - s) {
            send_as(link, &buf[seg], wire)?;
        }
        for seg in at(r as isize - s) {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn pieces(len: usize, n: usize, k: usize, start: usize, end: usize) -> Vec<(usize, usize)> {
        chunk_pieces(len, n, k, start, end)
            .map(|r| (r.start, r.end))
            .collect()
    }

    #[test]
    fn small_buffers_get_contiguous_chunks_large_ones_interleaved_stripes() {
        // 10 elements over 3 ranks: stripes of 4, one per rank (the textbook ring).
        assert_eq!(stripe_len(10, 3), 4);
        assert_eq!(pieces(10, 3, 0, 0, 10), [(0, 4)]);
        assert_eq!(pieces(10, 3, 1, 0, 10), [(4, 8)]);
        assert_eq!(pieces(10, 3, 2, 0, 10), [(8, 10)]);
        // Fewer elements than ranks: the last chunks are empty.
        assert_eq!(stripe_len(2, 4), 1);
        assert!(pieces(2, 4, 3, 0, 2).is_empty());
        // 5 stripes over 2 ranks: chunk 0 holds stripes 0, 2, 4 and chunk 1 stripes 1, 3.
        let s = STRIPE;
        assert_eq!(stripe_len(5 * s, 2), s);
        assert_eq!(
            pieces(5 * s, 2, 0, 0, 5 * s),
            [(0, s), (2 * s, 3 * s), (4 * s, 5 * s)]
        );
        assert_eq!(pieces(5 * s, 2, 1, 0, 5 * s), [(s, 2 * s), (3 * s, 4 * s)]);
        // A bucket straddling three stripes holds pieces of both chunks.
        let (a, b) = (s / 2, 5 * s / 2);
        assert_eq!(pieces(5 * s, 2, 0, a, b), [(a, s), (2 * s, b)]);
        assert_eq!(pieces(5 * s, 2, 1, a, b), [(s, 2 * s)]);
        assert!(pieces(5 * s, 2, 1, 0, 0).is_empty());
    }
}
